/* The model driver: everything every architecture shares (see model.h and arch.h). Parameters,
 * gradients and master weights; initialisation; the activation arena and its plan; the embedding; the
 * LM head and loss in row blocks; carried state and state gradients through the whole model; the
 * communication hooks; one training or evaluation pass. The architecture (arch.h) runs the layers. */
#include <math.h>
#include <string.h>

#include "../common.h"
#include "../rng.h"
#include "arch.h"

#define IGNORE_INDEX (-1)
/* Rows of the LM head + cross-entropy processed at once (bounds the logits buffer to HEAD_ROWS x V). */
#define HEAD_ROWS 512

/* ---- plans ----------------------------------------------------------------------------------------------- */
void mg_plan_init(MgPlan *p, MgDtype act, MgDtype stat) {
    memset(p, 0, sizeof *p);
    p->act = act;
    p->stat = stat;
}

void mg_plan_free(MgPlan *p) {
    free(p->e);
    memset(p, 0, sizeof *p);
}

void mg_plan_add(MgPlan *p, const char *name, MgBufKind kind, int64_t elems, void **slot) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 128;
        p->e = mg_realloc(p->e, sizeof(MgPlanEntry) * (size_t)p->cap);
    }
    const MgDtype dt = kind == MG_BUF_ACT ? p->act : kind == MG_BUF_STAT ? p->stat : MG_I32;
    p->e[p->n++] = (MgPlanEntry){name, dt, elems, ((size_t)elems * mg_dtype_size(dt) + 63) & ~(size_t)63, slot};
}

size_t mg_plan_bytes(const MgPlan *p) {
    size_t total = 0;
    for (int i = 0; i < p->n; i++) total += p->e[i].bytes;
    return total;
}

void mg_plan_place(const MgPlan *p, void *base) {
    size_t o = 0;
    for (int i = 0; i < p->n; i++) {
        if (p->e[i].slot) *p->e[i].slot = (char *)base + o;
        o += p->e[i].bytes;
    }
}

/* ---- architectures --------------------------------------------------------------------------------------- */
static const MgArch *const g_archs[] = {&mg_arch_megalodon, &mg_arch_llama};

const MgArch *mg_arch_find(const char *name) {
    for (size_t i = 0; i < sizeof g_archs / sizeof g_archs[0]; i++)
        if (!strcmp(g_archs[i]->name, name)) return g_archs[i];
    return NULL;
}

const char *mg_arch_names(void) { return "megalodon, llama"; }

/* ---- small helpers ---------------------------------------------------------------------------------------- */
void *mg_act_at(const MgModel *m, const void *base, int64_t elems) { return (char *)base + (size_t)elems * m->es; }
void *mg_stat_at(const MgModel *m, const void *base, int64_t elems) { return (char *)base + (size_t)elems * m->ss; }

const MgConfig *mg_model_config(const MgModel *m) { return &m->cfg; }
const MgParamTable *mg_model_params_table(const MgModel *m) { return &m->table; }
const MgBackend *mg_model_backend(const MgModel *m) { return m->be; }
void *mg_model_params(MgModel *m) { return m->params; }
void *mg_model_grads(MgModel *m) { return m->grads; }
float *mg_model_masters(MgModel *m) { return m->masters; }
int mg_model_has_separate_masters(const MgModel *m) { return (void *)m->masters != m->params; }
void *mg_model_param(MgModel *m, const char *name) {
    return mg_act_at(m, m->params, mg_param_get(&m->table, name)->offset);
}
void *mg_model_grad(MgModel *m, const char *name) { return mg_act_at(m, m->grads, mg_param_get(&m->table, name)->offset); }

void mg_model_masters_changed(MgModel *m) {
    if (!mg_model_has_separate_masters(m)) return;
    MgConvertArgs cv = {.n = m->table.total, .src_dtype = MG_F32, .dst_dtype = m->be->dtype, .src = m->masters,
                        .dst = m->params};
    m->be->convert(m->be, &cv);
}

int mg_state_per_layer(const MgModel *m, int l) { return l < m->cfg.n_layers ? m->n_lstate : m->n_fstate; }
int mg_state_index(const MgModel *m, int l, int k) { return l * m->n_lstate + k; }
const MgStateSpec *mg_state_spec(const MgModel *m, int l, int k) {
    return l < m->cfg.n_layers ? &m->lstate[k] : &m->fstate[k];
}

/* ---- gradient buckets: the layout's ranges in the order backward completes them -------------------------- */
static void build_buckets(MgModel *m) {
    const int nl = m->cfg.n_layers;
    const MgParamTable *t = &m->table;
    /* per layer [lo, hi); -1 entries: the embedding and the tail (final norm, LM head) */
    int64_t *lo = mg_malloc(sizeof(int64_t) * (size_t)(nl + 2)), *hi = mg_malloc(sizeof(int64_t) * (size_t)(nl + 2));
    for (int i = 0; i < nl + 2; i++) lo[i] = INT64_MAX, hi[i] = -1;
    for (int i = 0; i < t->count; i++) {
        const MgParam *p = &t->params[i];
        int b = p->layer >= 0 ? p->layer : !strcmp(p->name, "embed.weight") ? nl : nl + 1;
        lo[b] = MG_MIN(lo[b], p->offset);
        hi[b] = MG_MAX(hi[b], p->offset + p->numel);
    }
    /* every bucket must be one contiguous run of the layout with nothing else inside */
    int64_t covered = 0;
    for (int b = 0; b < nl + 2; b++) covered += hi[b] >= 0 ? hi[b] - lo[b] : 0;
    MG_CHECK(covered == t->total, "model: the parameter layout is not contiguous per layer (%lld of %lld)",
             (long long)covered, (long long)t->total);
    m->bucket_off = mg_malloc(sizeof(int64_t) * (size_t)(nl + 2));
    m->bucket_len = mg_malloc(sizeof(int64_t) * (size_t)(nl + 2));
    int n = 0;
    if (hi[nl + 1] >= 0) m->bucket_off[n] = lo[nl + 1], m->bucket_len[n++] = hi[nl + 1] - lo[nl + 1];
    m->bucket_layer0 = n;
    for (int l = nl - 1; l >= 0; l--) m->bucket_off[n] = lo[l], m->bucket_len[n++] = hi[l] >= 0 ? hi[l] - lo[l] : 0;
    if (hi[nl] >= 0) m->bucket_off[n] = lo[nl], m->bucket_len[n++] = hi[nl] - lo[nl];
    m->n_buckets = n;
    free(lo);
    free(hi);
}

int mg_model_grad_buckets(const MgModel *m, int64_t *offsets, int64_t *counts, int max) {
    for (int i = 0; i < m->n_buckets && i < max; i++) {
        offsets[i] = m->bucket_off[i];
        counts[i] = m->bucket_len[i];
    }
    return m->n_buckets;
}

static void grads_ready(const MgPass *ps, int bucket) {
    const MgModel *m = ps->m;
    if (ps->hooks && ps->hooks->grads_ready && bucket >= 0 && bucket < m->n_buckets && m->bucket_len[bucket] > 0)
        ps->hooks->grads_ready(ps->hooks->grads_ctx ? ps->hooks->grads_ctx : ps->hooks->ctx, m->bucket_off[bucket],
                               m->bucket_len[bucket]);
}

/* ---- create / free ------------------------------------------------------------------------------------------ */
MgModel *mg_model_create(const MgConfig *cfg, const MgBackend *be) {
    const MgArch *arch = mg_arch_find(cfg->arch);
    if (!arch) mg_fatal("arch '%s' is not supported (known: %s)", cfg->arch, mg_arch_names());
    MgModel *m = mg_calloc(1, sizeof(MgModel));
    m->cfg = *cfg;
    m->arch = arch;
    m->be = be;
    m->es = mg_dtype_size(be->dtype);
    m->ss = mg_dtype_size(be->state_dtype);
    arch->describe_state(cfg, m->lstate, &m->n_lstate, m->fstate, &m->n_fstate);
    MG_CHECK(m->n_lstate <= MG_STATE_MAX && m->n_fstate <= MG_STATE_MAX, "model: too many state tensors");
    m->n_state = cfg->n_layers * m->n_lstate + m->n_fstate;
    mg_param_table_build(cfg, &m->table);
    build_buckets(m);
    const size_t n = (size_t)m->table.total;
    m->params = be->alloc(be, n * m->es);
    m->grads = be->alloc(be, n * m->es);
    m->masters = be->dtype == MG_F32 ? (float *)m->params : be->alloc(be, n * sizeof(float));
    const int nl = cfg->n_layers;
    m->w = mg_calloc((size_t)MG_MAX(nl, 1), arch->weights_size);
    m->gw = mg_calloc((size_t)MG_MAX(nl, 1), arch->weights_size);
    for (int i = 0; i < nl; i++) {
        arch->resolve_layer(m, m->params, i, mg_layer_w(m, i));
        arch->resolve_layer(m, m->grads, i, mg_layer_gw(m, i));
    }
    m->embed = mg_model_param(m, "embed.weight");
    m->g_embed = mg_model_grad(m, "embed.weight");
    if (cfg->share_emb) {
        m->head = m->embed;
        m->g_head = m->g_embed;
    } else {
        m->head = mg_model_param(m, "lm_head.weight");
        m->g_head = mg_model_grad(m, "lm_head.weight");
    }
    return m;
}

static void free_activations(MgModel *m) {
    if (m->arena) m->be->free(m->be, m->arena);
    m->arena = NULL;
    mg_plan_free(&m->plan);
    free(m->x);
    free(m->act);
    free(m->fin);
    free(m->scratch);
    m->x = NULL, m->act = NULL, m->fin = NULL, m->scratch = NULL;
}

void mg_model_free(MgModel *m) {
    if (!m) return;
    const MgBackend *be = m->be;
    if (mg_model_has_separate_masters(m)) be->free(be, m->masters);
    be->free(be, m->params);
    be->free(be, m->grads);
    free_activations(m);
    mg_model_state_free(m, m->x_in);
    mg_model_state_free(m, m->x_local);
    mg_model_state_free(m, m->x_dout);
    mg_model_state_free(m, m->x_din);
    mg_model_state_free(m, m->x_din2);
    if (m->zeros) m->be->free(m->be, m->zeros);
    free(m->w);
    free(m->gw);
    free(m->bucket_off);
    free(m->bucket_len);
    mg_param_table_free(&m->table);
    free(m);
}

void mg_model_zero_grads(MgModel *m) { m->be->memset0(m->be, m->grads, (size_t)m->table.total * m->es); }

/* ---- initialisation (spec §1.5, §2.2) ------------------------------------------------------------------------ */
static void init_values(const MgParam *p, int64_t d, MgRng *rng, double *h) {
    switch (p->init) {
    case MG_INIT_ZERO:
        memset(h, 0, sizeof(double) * (size_t)p->numel);
        break;
    case MG_INIT_HE: {
        double std = 1.0 / sqrt(3.0 * (double)p->fan_in);
        for (int64_t i = 0; i < p->numel; i++) h[i] = std * mg_rng_normal(rng);
        break;
    }
    case MG_INIT_EMBED: {
        double std = 1.0 / sqrt((double)d);
        for (int64_t i = 0; i < p->numel; i++) h[i] = mg_rng_trunc_normal(rng, std, -3 * std, 3 * std);
        break;
    }
    case MG_INIT_CEMA_AD:
        for (int64_t i = 0; i < p->numel; i++) h[i] = 0.2 * mg_rng_normal(rng);
        break;
    case MG_INIT_CEMA_THETA: {
        /* f_k = d^(-k/d), k = 1..d, randomly permuted over channels; theta = logit(f). */
        int64_t n = p->numel;
        int64_t *perm = mg_malloc(sizeof(int64_t) * (size_t)n);
        for (int64_t i = 0; i < n; i++) perm[i] = i;
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = (int64_t)(mg_rng_u64(rng) % (uint64_t)(i + 1));
            int64_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        for (int64_t i = 0; i < n; i++) {
            double k = (double)(perm[i] + 1);
            double f = exp(-k * log((double)n) / (double)n);
            h[i] = log(f / (1.0 - f));
        }
        free(perm);
        break;
    }
    case MG_INIT_CEMA_GAMMA:
        for (int64_t i = 0; i < p->numel; i += 2) {
            h[i] = mg_rng_normal(rng);
            h[i + 1] = 0.0;
        }
        break;
    case MG_INIT_CEMA_OMEGA:
        for (int64_t i = 0; i < p->numel; i++) h[i] = mg_rng_trunc_normal(rng, 0.25, -1.0, 1.0);
        break;
    case MG_INIT_NORMAL_0_02:
        for (int64_t i = 0; i < p->numel; i++) h[i] = 0.02 * mg_rng_normal(rng);
        break;
    }
}

/* Values are drawn in double on the host, tensor by tensor in table order. fp32 masters get them rounded
 * to float; the compute parameters are the masters converted (bf16), or the values at full precision when
 * the compute dtype is float64 (gradient checks). */
void mg_model_init_weights(MgModel *m, uint64_t seed) {
    MgRng rng;
    mg_rng_seed(&rng, seed);
    const MgBackend *be = m->be;
    for (int pi = 0; pi < m->table.count; pi++) {
        const MgParam *p = &m->table.params[pi];
        double *h = mg_malloc(sizeof(double) * (size_t)p->numel);
        init_values(p, m->cfg.model_dim, &rng, h);
        float *f = mg_malloc(sizeof(float) * (size_t)p->numel);
        for (int64_t i = 0; i < p->numel; i++) f[i] = (float)h[i];
        be->to_device(be, m->masters + p->offset, f, sizeof(float) * (size_t)p->numel);
        if (be->dtype == MG_F64) be->to_device(be, mg_act_at(m, m->params, p->offset), h, sizeof(double) * (size_t)p->numel);
        free(f);
        free(h);
    }
    if (be->dtype != MG_F32 && be->dtype != MG_F64) mg_model_masters_changed(m);
}

/* ---- activation arena ------------------------------------------------------------------------------------------ */
/* Lay out every activation buffer for T rows / B sequences into p; the slots are the model's (or a scratch
 * model's, for planning without one). */
static void plan_all(MgModel *m, MgPlan *p, int64_t T, int B) {
    const MgConfig *c = &m->cfg;
    const MgArch *a = m->arch;
    const int nl = c->n_layers;
    const int64_t d = c->model_dim;
    free(m->x);
    free(m->act);
    free(m->fin);
    free(m->scratch);
    m->x = mg_calloc((size_t)nl + 1, sizeof(void *));
    m->act = mg_calloc((size_t)MG_MAX(nl, 1), a->act_size);
    m->fin = mg_calloc(1, MG_MAX(a->final_size, 1));
    m->scratch = mg_calloc(1, MG_MAX(a->scratch_size, 1));
    for (int l = 0; l <= nl; l++) mg_plan_add(p, "residual stream", MG_BUF_ACT, T * d, &m->x[l]);
    for (int l = 0; l < nl; l++) a->plan_layer(c, p, m->act + (size_t)l * a->act_size, T, B);
    mg_plan_add(p, "final norm", MG_BUF_ACT, T * d, &m->fn_y);
    a->plan_final(c, p, m->fin, T, B);
    mg_plan_add(p, "backward scratch", MG_BUF_ACT, T * d, &m->gx);
    mg_plan_add(p, "backward scratch", MG_BUF_ACT, T * d, &m->gC);
    a->plan_scratch(c, p, m->scratch, T, B);
    mg_plan_add(p, "lm head logits block", MG_BUF_ACT, MG_MIN(T, HEAD_ROWS) * c->vocab_size, &m->logits);
    mg_plan_add(p, "lm head losses", MG_BUF_STAT, MG_MIN(T, HEAD_ROWS), &m->losses);
    mg_plan_add(p, "tokens", MG_BUF_I32, T, (void **)&m->tokens_dev);
    mg_plan_add(p, "tokens", MG_BUF_I32, T, (void **)&m->targets_dev);
}

static void ensure_arena(MgModel *m, int B, int L) {
    int64_t T = (int64_t)B * L;
    if (m->arena && T <= m->cap_T && B <= m->cap_B) return;
    free_activations(m);
    mg_plan_init(&m->plan, m->be->dtype, m->be->state_dtype);
    plan_all(m, &m->plan, T, B);
    m->arena_bytes = mg_plan_bytes(&m->plan);
    m->arena = m->be->alloc(m->be, m->arena_bytes);
    mg_plan_place(&m->plan, m->arena);
    m->cap_T = T;
    m->cap_B = B;
}

/* The plan of a (B, L) step for a config and dtypes, without a model: a scratch model owns nothing but
 * the slot structs plan_all fills. */
static void plan_without_model(const MgConfig *cfg, MgDtype compute, MgDtype state, int B, int L, MgPlan *p) {
    MgModel tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.cfg = *cfg;
    tmp.arch = mg_arch_find(cfg->arch);
    if (!tmp.arch) mg_fatal("arch '%s' is not supported (known: %s)", cfg->arch, mg_arch_names());
    mg_plan_init(p, compute, state);
    plan_all(&tmp, p, (int64_t)B * L, B);
    free(tmp.x);
    free(tmp.act);
    free(tmp.fin);
    free(tmp.scratch);
}

size_t mg_activation_plan_bytes(const MgConfig *cfg, MgDtype compute, MgDtype state, int B, int L) {
    MgPlan p;
    plan_without_model(cfg, compute, state, B, L, &p);
    size_t total = mg_plan_bytes(&p);
    mg_plan_free(&p);
    return total;
}

size_t mg_model_activation_bytes(MgModel *m, int B, int L) {
    return mg_activation_plan_bytes(&m->cfg, m->be->dtype, m->be->state_dtype, B, L);
}

void mg_model_print_memory(MgModel *m, int B, int L) {
    char b1[32], b2[32], b3[32], b4[32];
    size_t pbytes = (size_t)m->table.total * m->es;
    size_t abytes = mg_model_activation_bytes(m, B, L);
    printf("memory: parameters %s, gradients %s", mg_format_bytes((double)pbytes, b1, sizeof b1),
           mg_format_bytes((double)pbytes, b2, sizeof b2));
    if (mg_model_has_separate_masters(m))
        printf(", fp32 masters %s", mg_format_bytes(4.0 * (double)m->table.total, b4, sizeof b4));
    printf(", activations %s (batch %d x %d tokens, %s activations)\n", mg_format_bytes((double)abytes, b3, sizeof b3),
           B, L, mg_dtype_name(m->be->dtype));
}

void mg_activation_plan_print(const MgConfig *cfg, MgDtype compute, MgDtype state, int B, int L, FILE *f) {
    MgPlan p;
    plan_without_model(cfg, compute, state, B, L, &p);
    /* group equal names and dtypes (first appearance order) */
    char *done = mg_calloc((size_t)MG_MAX(p.n, 1), 1);
    char b[32];
    for (int i = 0; i < p.n; i++) {
        if (done[i]) continue;
        size_t bytes = 0;
        int count = 0;
        for (int j = i; j < p.n; j++)
            if (!done[j] && !strcmp(p.e[j].name, p.e[i].name) && p.e[j].dtype == p.e[i].dtype) {
                bytes += p.e[j].bytes;
                count++;
                done[j] = 1;
            }
        fprintf(f, "  %-22s %-8s %5d buffers %12s\n", p.e[i].name, mg_dtype_name(p.e[i].dtype), count,
                mg_format_bytes((double)bytes, b, sizeof b));
    }
    fprintf(f, "  %-22s %-8s %5d buffers %12s\n", "total", "", p.n, mg_format_bytes((double)mg_plan_bytes(&p), b, sizeof b));
    free(done);
    mg_plan_free(&p);
}

/* ---- pass helpers over the backend ----------------------------------------------------------------------------- */
void mg_linear_fwd(const MgPass *ps, int64_t T, int in, int out, const void *x, const void *w, const void *b,
                   void *y) {
    MgLinearArgs a = {.T = T, .in = in, .out = out, .x = x, .weight = w, .bias = b, .y = y};
    ps->be->linear_forward(ps->be, &a);
}

void mg_linear_bwd(const MgPass *ps, int64_t T, int in, int out, const void *x, const void *w, const void *dy,
                   void *dx, void *dw, void *db, int accumulate) {
    MgLinearArgs a = {.T = T, .in = in, .out = out, .x = x, .weight = w, .dy = dy, .dx = dx, .dweight = dw,
                      .dbias = db, .accumulate = accumulate};
    ps->be->linear_backward(ps->be, &a);
}

void mg_act_fwd(const MgPass *ps, MgActKind kind, int64_t n, const void *a, const void *b, void *y) {
    MgActArgs args = {.kind = kind, .n = n, .a = a, .b = b, .y = y};
    ps->be->act_forward(ps->be, &args);
}

void mg_act_bwd(const MgPass *ps, MgActKind kind, int64_t n, const void *a, const void *b, const void *dy, void *da,
                void *db, int accumulate) {
    MgActArgs args = {.kind = kind, .n = n, .a = a, .b = b, .dy = dy, .da = da, .db = db, .accumulate = accumulate};
    ps->be->act_backward(ps->be, &args);
}

/* ---- dropout over the global layout ---------------------------------------------------------------------------- */
static int dropping(const MgPass *ps, double p) { return ps->opts && ps->opts->training && p > 0.0; }

static uint64_t site_seed(const MgPass *ps, int layer, int site) {
    return mg_hash64(ps->opts->seed, (uint64_t)(layer + 1) * 16u + (uint64_t)site);
}

static int64_t global_len(const MgPass *ps) { return ps->opts->seq_len > 0 ? ps->opts->seq_len : ps->L; }

static int64_t seq_stride(const MgPass *ps) { return ps->opts->seq_stride > 0 ? ps->opts->seq_stride : 1; }

/* Element (b, t, j) of a B x L x width tensor is element ((seq0 + b * seq_stride) * Lg + pos0 + t) * width + j
 * of the site's mask stream: the counter the whole global batch would give it. */
static void dropout_layout(const MgPass *ps, int64_t width, MgDropoutArgs *a) {
    const int64_t Lg = global_len(ps);
    a->offset = (uint64_t)((ps->opts->seq0 * Lg + ps->opts->pos0) * width);
    a->seg_len = (int64_t)ps->L * width;
    a->seg_stride = seq_stride(ps) * Lg * width;
}

void mg_dropout_fwd(const MgPass *ps, double p, int layer, int site, int64_t width, void *x) {
    if (!dropping(ps, p)) return;
    MgDropoutArgs a = {.n = ps->T * width, .p = p, .seed = site_seed(ps, layer, site), .x = x, .y = x};
    dropout_layout(ps, width, &a);
    ps->be->dropout_forward(ps->be, &a);
}

void mg_dropout_bwd(const MgPass *ps, double p, int layer, int site, int64_t width, const void *dy, void *dx) {
    if (!dropping(ps, p)) {
        if (dx != dy) ps->be->copy(ps->be, dx, dy, (size_t)(ps->T * width) * ps->m->es);
        return;
    }
    MgDropoutArgs a = {.n = ps->T * width, .p = p, .seed = site_seed(ps, layer, site), .dy = dy, .dx = dx};
    dropout_layout(ps, width, &a);
    ps->be->dropout_backward(ps->be, &a);
}

void mg_attention_dropout(const MgPass *ps, int layer, int site, MgAttentionArgs *at) {
    if (!dropping(ps, ps->c->attention_dropout) || ps->dec) return;
    const int64_t c = MG_MIN((int64_t)at->chunk, global_len(ps));
    at->drop_p = ps->c->attention_dropout;
    at->drop_seed = site_seed(ps, layer, site);
    at->drop_seq0 = ps->opts->seq0;
    at->drop_seq_stride = seq_stride(ps);
    at->drop_chunk0 = ps->opts->pos0 / c;
    at->drop_chunks = global_len(ps) / c;
    at->drop_chunk_len = at->Lq < c ? c : 0; /* this pass holds part of a chunk (attention across ranks) */
}

/* ---- attention across ranks -------------------------------------------------------------------------------- */
int64_t mg_pass_rope_offset(const MgPass *ps) { return ps->opts ? ps->opts->pos0 : 0; }
int64_t mg_pass_global_len(const MgPass *ps) { return ps->opts ? global_len(ps) : ps->L; }
int64_t mg_pass_pos1(const MgPass *ps) { return ps->opts && !ps->dec ? ps->opts->pos1 : 0; }

static int attn_split(const MgPass *ps) {
    return ps->hooks && ((ps->hooks->attn_kv && ps->hooks->attn_kv_grad) ||
                         (ps->hooks->attn_run && ps->hooks->attn_run_backward));
}

static MgAttnExchange attn_desc(const MgPass *ps, int layer, const MgAttentionArgs *at) {
    MgAttnExchange x = {.layer = layer, .B = at->B, .L = at->Lq, .H = at->H, .Dqk = at->Dqk, .Dv = at->Dv,
                        .pos0 = ps->opts ? ps->opts->pos0 : 0, .pos1 = mg_pass_pos1(ps), .k = at->k, .v = at->v};
    x.chunk = MG_MIN((int64_t)at->chunk, global_len(ps));
    return x;
}

void mg_pass_attention_forward(MgPass *ps, int layer, MgAttentionArgs *at) {
    const MgBackend *be = ps->be;
    if (!attn_split(ps) || ps->dec) {
        be->attention_forward(be, at);
        return;
    }
    MgAttnExchange x = attn_desc(ps, layer, at);
    if (x.chunk <= x.L) { /* whole chunks: nothing crosses ranks */
        be->attention_forward(be, at);
        return;
    }
    if (ps->hooks->attn_run && ps->hooks->attn_run(ps->hooks->ctx, &x, at)) return;
    ps->hooks->attn_kv(ps->hooks->ctx, &x); /* the chunk's earlier keys and values */
    MgAttentionArgs a = *at;
    a.k = x.kctx;
    a.v = x.vctx;
    a.Lk = x.Lk;
    be->attention_forward(be, &a);
}

void mg_pass_attention_backward(MgPass *ps, int layer, MgAttentionArgs *at) {
    const MgBackend *be = ps->be;
    MgAttnExchange x = attn_desc(ps, layer, at);
    if (!attn_split(ps) || x.chunk <= x.L) {
        be->attention_backward(be, at);
        return;
    }
    if (ps->hooks->attn_run_backward && ps->hooks->attn_run_backward(ps->hooks->ctx, &x, at)) return;
    ps->hooks->attn_kv_grad(ps->hooks->ctx, &x, 0);
    MgAttentionArgs a = *at;
    a.k = x.kctx;
    a.v = x.vctx;
    a.Lk = x.Lk;
    a.dk = x.dkctx;
    a.dv = x.dvctx;
    be->attention_backward(be, &a);
    x.dk = at->dk;
    x.dv = at->dv;
    ps->hooks->attn_kv_grad(ps->hooks->ctx, &x, 1);
}

/* ---- hooks ------------------------------------------------------------------------------------------------------ */
int mg_pass_exchanges(const MgPass *ps) { return ps->hooks && ps->hooks->state_begin && ps->hooks->state_end; }

void *mg_pass_local(MgPass *ps, int layer, int k) {
    const MgModel *m = ps->m;
    return m->x_local->ptr[mg_state_index(m, layer, k)];
}

/* Fill the description of (layer, group) with the tensors of that group. */
static void exchange_desc(const MgPass *ps, int layer, int group, MgStateExchange *x, int *ks) {
    const MgModel *m = ps->m;
    memset(x, 0, sizeof *x);
    x->layer = layer;
    x->group = group;
    x->B = ps->B;
    x->L = ps->L;
    const int n = mg_state_per_layer(m, layer);
    for (int k = 0; k < n; k++) {
        const MgStateSpec *s = mg_state_spec(m, layer, k);
        if (s->group != group) continue;
        MG_CHECK(x->n < MG_STATE_GROUP_MAX, "model: state group %d has too many tensors", group);
        x->name = s->group_name;
        x->tensor[x->n] = s->tensor;
        x->dtype[x->n] = s->is_count ? MG_I64 : m->be->state_dtype;
        x->numel[x->n] = s->per_seq * ps->B;
        ks[x->n++] = k;
    }
}

void mg_pass_state_begin(MgPass *ps, int layer, int group, const MgLayerState *st, const void *op_args) {
    (void)st;
    MgStateExchange x;
    int ks[MG_STATE_GROUP_MAX];
    exchange_desc(ps, layer, group, &x, ks);
    for (int i = 0; i < x.n; i++) x.local[i] = mg_pass_local(ps, layer, ks[i]);
    x.op_args = op_args;
    ps->hooks->state_begin(ps->hooks->ctx, &x);
}

void mg_pass_state_end(MgPass *ps, int layer, int group, const MgLayerState *st, const void *op_args) {
    MgStateExchange x;
    int ks[MG_STATE_GROUP_MAX];
    exchange_desc(ps, layer, group, &x, ks);
    for (int i = 0; i < x.n; i++) {
        x.local[i] = mg_pass_local(ps, layer, ks[i]);
        x.in[i] = (void *)st->in[ks[i]];
    }
    x.op_args = op_args;
    ps->hooks->state_end(ps->hooks->ctx, &x);
}

void mg_pass_state_done(MgPass *ps, int layer, int group, const MgLayerState *st, const void *op_args) {
    if (!ps->hooks || !ps->hooks->state_done) return;
    MgStateExchange x;
    int ks[MG_STATE_GROUP_MAX];
    exchange_desc(ps, layer, group, &x, ks);
    for (int i = 0; i < x.n; i++) x.out[i] = st->out[ks[i]];
    x.op_args = op_args;
    ps->hooks->state_done(ps->hooks->ctx, &x);
}

void mg_pass_dstate_get(MgPass *ps, int layer, int group, MgLayerState *st) {
    if (!ps->hooks || !ps->hooks->dstate_get) return;
    MgModel *m = ps->m;
    MgStateExchange x;
    int ks[MG_STATE_GROUP_MAX];
    exchange_desc(ps, layer, group, &x, ks);
    for (int i = 0; i < x.n; i++) {
        const MgStateSpec *s = mg_state_spec(m, layer, ks[i]);
        x.dout[i] = s->is_count ? NULL : m->x_dout->ptr[mg_state_index(m, layer, ks[i])];
        st->dout[ks[i]] = x.dout[i];
    }
    ps->hooks->dstate_get(ps->hooks->ctx, &x);
}

int mg_pass_scan_backward(const MgPass *ps) {
    return mg_pass_exchanges(ps) && ps->hooks->dstate_scan && ps->hooks->dstate_done;
}

void mg_pass_dstate_scan(MgPass *ps, int layer, int group, MgLayerState *st, const void *op_args) {
    MgModel *m = ps->m;
    MgStateExchange x;
    int ks[MG_STATE_GROUP_MAX];
    exchange_desc(ps, layer, group, &x, ks);
    for (int i = 0; i < x.n; i++) {
        const MgStateSpec *s = mg_state_spec(m, layer, ks[i]);
        x.local[i] = mg_pass_local(ps, layer, ks[i]);
        x.in[i] = (void *)st->in[ks[i]];
        x.din[i] = st->din[ks[i]];
        x.dout[i] = s->is_count ? NULL : m->x_dout->ptr[mg_state_index(m, layer, ks[i])];
        st->dout[ks[i]] = x.dout[i];
    }
    x.op_args = op_args;
    ps->hooks->dstate_scan(ps->hooks->ctx, &x);
}

void *mg_pass_din_extra(MgPass *ps, int layer, int k) { return ps->m->x_din2->ptr[mg_state_index(ps->m, layer, k)]; }

void *mg_pass_zeros(MgPass *ps, int64_t elems) {
    MgModel *m = ps->m;
    if (m->zeros_elems < elems) {
        if (m->zeros) m->be->free(m->be, m->zeros);
        m->zeros = m->be->alloc(m->be, (size_t)elems * m->es); /* zero-filled, and never written */
        m->zeros_elems = elems;
    }
    return m->zeros;
}

void mg_state_axpy(MgPass *ps, int64_t n, const void *x, void *y) {
    const MgBackend *be = ps->be;
    if (be->state_dtype == be->dtype) {
        be->axpy(be, n, 1.0, x, y);
        return;
    }
    MG_CHECK(be->state_dtype == MG_F32, "model: state dtype %s is not supported here", mg_dtype_name(be->state_dtype));
    float *hx = mg_malloc(sizeof(float) * (size_t)n), *hy = mg_malloc(sizeof(float) * (size_t)n);
    be->to_host(be, hx, x, sizeof(float) * (size_t)n);
    be->to_host(be, hy, y, sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) hy[i] += hx[i];
    be->to_device(be, y, hy, sizeof(float) * (size_t)n);
    free(hx);
    free(hy);
}

void mg_pass_dstate_done(MgPass *ps, int layer, int group, const MgLayerState *st) {
    if (!ps->hooks || !ps->hooks->dstate_done) return;
    MgStateExchange x;
    int ks[MG_STATE_GROUP_MAX];
    exchange_desc(ps, layer, group, &x, ks);
    for (int i = 0; i < x.n; i++) x.din[i] = st->din[ks[i]];
    ps->hooks->dstate_done(ps->hooks->ctx, &x);
}

/* Exchange buffers for B sequences (kept across passes; re-made when B changes). */
static void ensure_exchange_buffers(MgModel *m, const MgModelHooks *h, int B) {
    if (!h) return;
    const int fwd = h->state_begin && h->state_end, bwd = h->dstate_get != NULL;
    if (fwd && (!m->x_in || m->x_in->B != B)) {
        mg_model_state_free(m, m->x_in);
        mg_model_state_free(m, m->x_local);
        m->x_in = mg_model_state_create(m, B);
        m->x_local = mg_model_state_create(m, B);
    }
    if (bwd && (!m->x_dout || m->x_dout->B != B)) {
        mg_model_state_free(m, m->x_dout);
        m->x_dout = mg_model_state_create(m, B);
        mg_model_state_zero(m, m->x_dout);
    }
    if (h->dstate_scan && (!m->x_din2 || m->x_din2->B != B)) {
        mg_model_state_free(m, m->x_din2);
        m->x_din2 = mg_model_state_create(m, B);
    }
    if (h->dstate_done && (!m->x_din || m->x_din->B != B)) {
        mg_model_state_free(m, m->x_din);
        m->x_din = mg_model_state_create(m, B);
    }
}

/* ---- one pass --------------------------------------------------------------------------------------------------- */
/* Layer l's (l == n_layers: final) carried state within the pass's states. */
static MgLayerState layer_state(const MgModel *m, const MgPassArgs *a, const MgPass *ps, int l) {
    MgLayerState s;
    memset(&s, 0, sizeof s);
    const int n = mg_state_per_layer(m, l), xchg = mg_pass_exchanges(ps);
    for (int k = 0; k < n; k++) {
        const int i = mg_state_index(m, l, k);
        const int grad = !mg_state_spec(m, l, k)->is_count;
        if (xchg) s.in[k] = m->x_in->ptr[i];
        else if (a->state_in) s.in[k] = a->state_in->ptr[i];
        if (a->state_out) s.out[k] = a->state_out->ptr[i];
        if (grad && a->dstate_out) s.dout[k] = a->dstate_out->ptr[i];
        if (grad && a->dstate_in) s.din[k] = a->dstate_in->ptr[i];
        else if (grad && a->hooks && a->hooks->dstate_done) s.din[k] = m->x_din->ptr[i]; /* the hook reads it */
    }
    return s;
}

static void check_state(const MgModelState *s, int B, const char *what) {
    if (s && s->B != B) mg_fatal("model: %s holds state for %d sequences but the batch has %d", what, s->B, B);
}

/* Shapes, layout, ids and states of a pass, checked on the host before anything runs. */
static void check_pass(const MgModel *m, const MgPassArgs *a, int need_targets) {
    const MgConfig *c = &m->cfg;
    const int B = a->B, L = a->L;
    MG_CHECK(B >= 1 && L >= 1, "model: batch %d x length %d must be positive", B, L);
    char err[1024];
    const int64_t Lg = a->opts.seq_len > 0 ? a->opts.seq_len : L;
    if (a->opts.pos0 < 0 || a->opts.seq0 < 0 || a->opts.pos0 + L > Lg)
        mg_fatal("model: pass at position %lld (sequence %lld) with %d tokens does not fit sequences of %lld",
                 (long long)a->opts.pos0, (long long)a->opts.seq0, L, (long long)Lg);
    const int split = a->hooks && ((a->hooks->attn_kv && a->hooks->attn_kv_grad) ||
                                   (a->hooks->attn_run && a->hooks->attn_run_backward));
    if (a->opts.pos1 > 0) { /* two pieces: [0, L/2) at pos0, [L/2, L) at pos1 */
        if (!m->arch->two_pieces || !split)
            mg_fatal("model: a pass in two pieces (the zigzag layout) needs an architecture without carried state "
                     "(arch %s %s) and the attention hooks of sequence parallelism",
                     m->arch->name, m->arch->two_pieces ? "has none" : "carries state along the sequence");
        const int h = L / 2;
        if (L % 2 || Lg % h || a->opts.pos0 % h || a->opts.pos1 % h || a->opts.pos1 < a->opts.pos0 + h ||
            a->opts.pos1 + h > Lg)
            mg_fatal("model: a two-piece pass of %d tokens at positions %lld and %lld does not fit sequences of %lld "
                     "in blocks of %d",
                     L, (long long)a->opts.pos0, (long long)a->opts.pos1, (long long)Lg, h);
    } else if (m->arch->check_layout && m->arch->check_layout(c, L, a->opts.pos0, Lg, split, err, sizeof err)) {
        mg_fatal("%s", err);
    }
    const int64_t T = (int64_t)B * L;
    if (mg_check_ids(a->tokens, T, c->vocab_size, INT32_MIN, "token", err, sizeof err))
        mg_fatal("%s: the data does not match this model's vocab_size", err);
    if (need_targets) {
        MG_CHECK(a->targets != NULL, "model: targets are needed for the loss");
        if (mg_check_ids(a->targets, T, c->vocab_size, IGNORE_INDEX, "target", err, sizeof err)) mg_fatal("%s", err);
    }
    check_state(a->state_in, B, "state_in");
    check_state(a->state_out, B, "state_out");
    check_state(a->dstate_out, B, "dstate_out");
    check_state(a->dstate_in, B, "dstate_in");
    if (a->hooks && (a->hooks->state_begin || a->hooks->state_end)) {
        MG_CHECK(a->hooks->state_begin && a->hooks->state_end, "model: state_begin and state_end go together");
        MG_CHECK(!a->state_in, "model: with state exchange hooks the incoming state comes from the hooks (state_in "
                               "must be NULL)");
    }
}

static MgPass make_pass(MgModel *m, const MgPassArgs *a, const MgForwardOpts *opts) {
    MgPass ps = {.m = m, .c = &m->cfg, .be = m->be, .B = a->B, .L = a->L, .T = (int64_t)a->B * a->L, .opts = opts,
                 .hooks = a->hooks, .dec = NULL, .tmp_d = m->gC};
    return ps;
}

/* X0 = E[tokens] (* sqrt(d) if scale_emb), then embedding dropout when training. */
void mg_embed_forward(MgPass *ps, const int32_t *tokens_dev, void *out) {
    const MgConfig *c = ps->c;
    const int d = c->model_dim;
    MgEmbeddingArgs emb = {.T = ps->T, .D = d, .V = c->vocab_size, .tokens = tokens_dev, .weight = ps->m->embed,
                           .out = out};
    ps->be->embedding_forward(ps->be, &emb);
    if (c->scale_emb) ps->be->scale(ps->be, ps->T * d, sqrt((double)d), out);
    mg_dropout_fwd(ps, c->dropout, -1, 0, d, out);
}

/* Embedding + all layers + final norm, keeping everything backward needs. */
static void forward_body(MgModel *m, MgPass *ps, const MgPassArgs *a) {
    const MgConfig *c = &m->cfg;
    m->be->to_device(m->be, m->tokens_dev, a->tokens, (size_t)ps->T * sizeof(int32_t));
    mg_embed_forward(ps, m->tokens_dev, m->x[0]);
    for (int l = 0; l < c->n_layers; l++) {
        MgLayerState st = layer_state(m, a, ps, l);
        m->arch->layer_forward(ps, l, m->act + (size_t)l * m->arch->act_size, m->x[l], m->x[l + 1], &st);
    }
    MgLayerState st = layer_state(m, a, ps, c->n_layers);
    m->arch->final_forward(ps, m->fin, m->x[c->n_layers], m->fn_y, &st);
}

/* The sum of a block's per-row losses; each of them also goes to out (host) when it is not NULL. */
static double sum_losses(MgModel *m, int64_t rows, double *out) {
    double s = 0.0;
    if (m->be->state_dtype == MG_F64) {
        double buf[HEAD_ROWS];
        m->be->to_host(m->be, buf, m->losses, (size_t)rows * sizeof(double));
        for (int64_t i = 0; i < rows; i++) s += buf[i];
        if (out) memcpy(out, buf, (size_t)rows * sizeof(double));
    } else {
        float buf[HEAD_ROWS];
        m->be->to_host(m->be, buf, m->losses, (size_t)rows * sizeof(float));
        for (int64_t i = 0; i < rows; i++) s += (double)buf[i];
        if (out)
            for (int64_t i = 0; i < rows; i++) out[i] = (double)buf[i];
    }
    return s;
}

/* LM head + cross-entropy in blocks of HEAD_ROWS rows; with backward, the head's input gradient goes to
 * gC (T x d) and the head weight gradient accumulates. Returns the summed loss. */
static double head_loss(MgModel *m, const MgPass *ps, double grad_scale, int backward, double *token_losses) {
    const MgConfig *c = &m->cfg;
    const int d = c->model_dim, V = c->vocab_size;
    double total = 0.0;
    for (int64_t r0 = 0; r0 < ps->T; r0 += HEAD_ROWS) {
        int64_t R = MG_MIN((int64_t)HEAD_ROWS, ps->T - r0);
        void *xr = mg_act_at(m, m->fn_y, r0 * d);
        mg_linear_fwd(ps, R, d, V, xr, m->head, NULL, m->logits);
        MgCrossEntropyArgs ce = {.T = R, .V = V, .ignore_index = IGNORE_INDEX, .logits = m->logits,
                                 .targets = m->targets_dev + r0, .grad_scale = grad_scale, .losses = m->losses,
                                 .dlogits = backward ? m->logits : NULL};
        m->be->cross_entropy(m->be, &ce);
        total += sum_losses(m, R, token_losses ? token_losses + r0 : NULL);
        if (backward)
            mg_linear_bwd(ps, R, d, V, xr, m->head, m->logits, mg_act_at(m, m->gC, r0 * d), m->g_head, NULL, 0);
    }
    return total;
}

static int64_t count_targets(const int32_t *targets, int64_t T) {
    int64_t n = 0;
    for (int64_t i = 0; i < T; i++) n += targets[i] != IGNORE_INDEX;
    return n;
}

static void backward_body(MgModel *m, MgPass *ps, const MgPassArgs *a) {
    const MgConfig *c = &m->cfg;
    const MgBackend *be = m->be;
    const int d = c->model_dim;
    const int nl = c->n_layers;
    /* final norm: d(fn_y) is in gC -> gx = d(x[n]) */
    MgLayerState st = layer_state(m, a, ps, nl);
    m->arch->final_backward(ps, m->fin, m->x[nl], m->gC, m->gx, &st);
    if (m->bucket_layer0 > 0) grads_ready(ps, 0); /* the tail: final norm and LM head */
    for (int l = nl - 1; l >= 0; l--) {
        MgLayerState ls = layer_state(m, a, ps, l);
        m->arch->layer_backward(ps, l, m->act + (size_t)l * m->arch->act_size, m->x[l], m->gx, m->scratch, &ls);
        grads_ready(ps, m->bucket_layer0 + (nl - 1 - l));
    }
    mg_dropout_bwd(ps, c->dropout, -1, 0, d, m->gx, m->gx);
    if (c->scale_emb) be->scale(be, ps->T * d, sqrt((double)d), m->gx);
    MgEmbeddingArgs emb = {.T = ps->T, .D = d, .V = c->vocab_size, .tokens = m->tokens_dev, .weight = m->embed,
                           .dout = m->gx, .dweight = m->g_embed};
    be->embedding_backward(be, &emb);
    grads_ready(ps, m->n_buckets - 1);
}

/* Check, size the arenas, run the forward and upload the targets: what a step and an evaluation share. */
static MgPass begin_pass(MgModel *m, const MgPassArgs *a) {
    check_pass(m, a, 1);
    ensure_arena(m, a->B, a->L);
    ensure_exchange_buffers(m, a->hooks, a->B);
    MgPass ps = make_pass(m, a, &a->opts);
    forward_body(m, &ps, a);
    m->be->to_device(m->be, m->targets_dev, a->targets, (size_t)ps.T * sizeof(int32_t));
    return ps;
}

double mg_model_step(MgModel *m, const MgPassArgs *a, int64_t *n_counted) {
    MgPass ps = begin_pass(m, a);
    double loss = head_loss(m, &ps, a->grad_scale, 1, a->token_losses);
    backward_body(m, &ps, a);
    if (n_counted) *n_counted = count_targets(a->targets, ps.T);
    return loss;
}

double mg_model_eval(MgModel *m, const MgPassArgs *a, int64_t *n_counted) {
    MgPass ps = begin_pass(m, a);
    double loss = head_loss(m, &ps, 1.0, 0, a->token_losses);
    if (n_counted) *n_counted = count_targets(a->targets, ps.T);
    return loss;
}

double mg_model_forward_backward(MgModel *m, const int32_t *tokens, const int32_t *targets, int B, int L,
                                 double grad_scale, const MgForwardOpts *opts, const MgModelState *state_in,
                                 MgModelState *state_out, int64_t *n_counted) {
    MgPassArgs a = {.tokens = tokens, .targets = targets, .B = B, .L = L, .grad_scale = grad_scale,
                    .state_in = state_in, .state_out = state_out};
    if (opts) a.opts = *opts;
    else a.opts.training = 1;
    return mg_model_step(m, &a, n_counted);
}

double mg_model_forward_loss(MgModel *m, const int32_t *tokens, const int32_t *targets, int B, int L,
                             const MgForwardOpts *opts, const MgModelState *state_in, MgModelState *state_out,
                             int64_t *n_counted) {
    MgPassArgs a = {.tokens = tokens, .targets = targets, .B = B, .L = L, .state_in = state_in,
                    .state_out = state_out};
    if (opts) a.opts = *opts;
    return mg_model_eval(m, &a, n_counted);
}

void mg_model_forward_logits(MgModel *m, const int32_t *tokens, int B, int L, const MgModelState *state_in,
                             MgModelState *state_out, void *logits_host) {
    MgPassArgs a = {.tokens = tokens, .B = B, .L = L, .state_in = state_in, .state_out = state_out};
    check_pass(m, &a, 0);
    ensure_arena(m, B, L);
    MgPass ps = make_pass(m, &a, &a.opts);
    forward_body(m, &ps, &a);
    const int d = m->cfg.model_dim, V = m->cfg.vocab_size;
    for (int64_t r0 = 0; r0 < ps.T; r0 += HEAD_ROWS) {
        int64_t R = MG_MIN((int64_t)HEAD_ROWS, ps.T - r0);
        mg_linear_fwd(&ps, R, d, V, mg_act_at(m, m->fn_y, r0 * d), m->head, NULL, m->logits);
        m->be->to_host(m->be, (char *)logits_host + (size_t)(r0 * V) * m->es, m->logits, (size_t)(R * V) * m->es);
    }
}
