/* The Megalodon model graph: forward, backward, carried state, recurrent decoding. See model.h. */
#include "model.h"

#include <math.h>
#include <string.h>

#include "common.h"
#include "rng.h"

#define IGNORE_INDEX (-1)
/* Rows of the LM head + cross-entropy processed at once (bounds the logits buffer to HEAD_ROWS x V). */
#define HEAD_ROWS 512

/* Parameter (or gradient) pointers of one layer, resolved once from the table. */
typedef struct {
    void *tsn_w, *tsn_b, *alpha, *delta, *theta, *gamma, *omega, *rms_w, *wz, *bz, *wv, *bv, *wr, *br, *wh1,
        *bh1, *wh2, *qk_gamma, *qk_beta, *ln_w, *ln_b, *fc1, *fc3, *fc2;
} LayerW;

/* What forward keeps per layer for backward (T = B*L rows). */
typedef struct {
    void *xn, *tsn_mean, *tsn_rstd; /* TimestepNorm output and its running statistics */
    void *cema;                     /* CEMA output */
    void *m, *rms_rstd;             /* RMSNorm(CEMA) (after hidden dropout) */
    void *z, *q, *k, *qk_rstd;      /* shared Z; Q and K after normalisation and RoPE */
    void *vpre, *v;                 /* values before/after silu */
    void *rpre;                     /* reset gate before silu */
    void *o, *lse;                  /* attention output and its row log-sum-exp */
    void *og;                       /* O * silu(rpre) (after hidden dropout) */
    void *yhat;                     /* X + Hh: input of the FFN LayerNorm */
    void *u, *ln_mean, *ln_rstd;    /* LayerNorm output and statistics */
    void *f1, *f3, *hff;            /* fc1, fc3 outputs and the FFN hidden (after hidden dropout) */
} LayerAct;

typedef struct {
    const char *name;
    size_t bytes;
    void **slot;
} ArenaEntry;

struct MgModel {
    MgConfig cfg;
    const MgBackend *be;
    size_t es, ss; /* element size of the backend dtype and of the state dtype */
    MgParamTable table;
    void *params, *grads;
    LayerW *w, *gw;
    void *embed, *final_w, *final_b, *head;
    void *g_embed, *g_final_w, *g_final_b, *g_head;

    /* activations, sized for cap_T rows and cap_B sequences */
    int64_t cap_T;
    int cap_B;
    void *arena;
    size_t arena_bytes;
    ArenaEntry *entries;
    int n_entries, cap_entries;
    void **x;        /* n_layers + 1 residual-stream tensors (T x d) */
    LayerAct *a;
    void *fn_y, *fn_mean, *fn_rstd;
    /* backward scratch, reused by every layer */
    void *gx, *gB, *gC, *gm, *gxn;       /* T x d */
    void *ghff, *gf1, *gf3;              /* T x f */
    void *gog, *grpre, *go;              /* T x v */
    void *gq, *gk, *gz;                  /* T x z */
    void *logits, *losses;               /* HEAD_ROWS x V, HEAD_ROWS (state dtype) */
    int32_t *tokens_dev, *targets_dev;   /* T each, backend memory */
};

/* ------------------------------------------------------------------------------------------------ */
static inline void *off(const MgModel *m, void *base, int64_t elems) {
    return (char *)base + (size_t)elems * m->es;
}
static inline void *soff(const MgModel *m, void *base, int64_t elems) {
    return (char *)base + (size_t)elems * m->ss;
}

const MgConfig *mg_model_config(const MgModel *m) { return &m->cfg; }
const MgParamTable *mg_model_params_table(const MgModel *m) { return &m->table; }
const MgBackend *mg_model_backend(const MgModel *m) { return m->be; }
void *mg_model_params(MgModel *m) { return m->params; }
void *mg_model_grads(MgModel *m) { return m->grads; }
void *mg_model_param(MgModel *m, const char *name) {
    return off(m, m->params, mg_param_get(&m->table, name)->offset);
}
void *mg_model_grad(MgModel *m, const char *name) {
    return off(m, m->grads, mg_param_get(&m->table, name)->offset);
}

static void resolve_layer(MgModel *m, void *base, int i, LayerW *lw) {
    char name[128];
#define R(field, suffix)                                                                               \
    do {                                                                                               \
        snprintf(name, sizeof(name), "layers.%d.%s", i, suffix);                                       \
        int idx = mg_param_find(&m->table, name);                                                      \
        lw->field = idx >= 0 ? off(m, base, m->table.params[idx].offset) : NULL;                       \
    } while (0)
    R(tsn_w, "attn.norm.weight");
    R(tsn_b, "attn.norm.bias");
    R(alpha, "attn.cema.alpha");
    R(delta, "attn.cema.delta");
    R(theta, "attn.cema.theta");
    R(gamma, "attn.cema.gamma");
    R(omega, "attn.cema.omega");
    R(rms_w, "attn.rmsnorm.weight");
    R(wz, "attn.wz.weight");
    R(bz, "attn.wz.bias");
    R(wv, "attn.wv.weight");
    R(bv, "attn.wv.bias");
    R(wr, "attn.wr.weight");
    R(br, "attn.wr.bias");
    R(wh1, "attn.wh1.weight");
    R(bh1, "attn.wh1.bias");
    R(wh2, "attn.wh2.weight");
    R(qk_gamma, "attn.qk_gamma");
    R(qk_beta, "attn.qk_beta");
    R(ln_w, "ffn.norm.weight");
    R(ln_b, "ffn.norm.bias");
    R(fc1, "ffn.fc1.weight");
    R(fc3, "ffn.fc3.weight");
    R(fc2, "ffn.fc2.weight");
#undef R
}

MgModel *mg_model_create(const MgConfig *cfg, const MgBackend *be) {
    MG_CHECK(!strcmp(cfg->arch, "megalodon"), "arch '%s' is not supported yet (only megalodon)", cfg->arch);
    MgModel *m = mg_calloc(1, sizeof(MgModel));
    m->cfg = *cfg;
    m->be = be;
    m->es = mg_dtype_size(be->dtype);
    m->ss = mg_dtype_size(be->state_dtype);
    mg_param_table_build(cfg, &m->table);
    m->params = be->alloc(be, (size_t)m->table.total * m->es);
    m->grads = be->alloc(be, (size_t)m->table.total * m->es);
    int n = cfg->n_layers;
    m->w = mg_calloc((size_t)n, sizeof(LayerW));
    m->gw = mg_calloc((size_t)n, sizeof(LayerW));
    for (int i = 0; i < n; i++) {
        resolve_layer(m, m->params, i, &m->w[i]);
        resolve_layer(m, m->grads, i, &m->gw[i]);
    }
    m->embed = mg_model_param(m, "embed.weight");
    m->g_embed = mg_model_grad(m, "embed.weight");
    m->final_w = mg_model_param(m, "final_norm.weight");
    m->final_b = mg_model_param(m, "final_norm.bias");
    m->g_final_w = mg_model_grad(m, "final_norm.weight");
    m->g_final_b = mg_model_grad(m, "final_norm.bias");
    if (cfg->share_emb) {
        m->head = m->embed;
        m->g_head = m->g_embed;
    } else {
        m->head = mg_model_param(m, "lm_head.weight");
        m->g_head = mg_model_grad(m, "lm_head.weight");
    }
    return m;
}

void mg_model_free(MgModel *m) {
    if (!m) return;
    const MgBackend *be = m->be;
    be->free(be, m->params);
    be->free(be, m->grads);
    if (m->arena) be->free(be, m->arena);
    free(m->entries);
    free(m->x);
    free(m->a);
    free(m->w);
    free(m->gw);
    mg_param_table_free(&m->table);
    free(m);
}

void mg_model_zero_grads(MgModel *m) { m->be->memset0(m->be, m->grads, (size_t)m->table.total * m->es); }

/* ---- initialisation (spec §1.5, §2.2) ------------------------------------------------------------ */
void mg_model_init_weights(MgModel *m, uint64_t seed) {
    MgRng rng;
    mg_rng_seed(&rng, seed);
    const int64_t d = m->cfg.model_dim;
    for (int pi = 0; pi < m->table.count; pi++) {
        const MgParam *p = &m->table.params[pi];
        double *h = mg_malloc(sizeof(double) * (size_t)p->numel);
        switch (p->init) {
        case MG_INIT_ZERO:
            memset(h, 0, sizeof(double) * (size_t)p->numel);
            break;
        case MG_INIT_HE: {
            double std = 1.0 / sqrt(3.0 * (double)p->fan_in);
            for (int64_t i = 0; i < p->numel; i++) h[i] = std * mg_rng_normal(&rng);
            break;
        }
        case MG_INIT_EMBED: {
            double std = 1.0 / sqrt((double)d);
            for (int64_t i = 0; i < p->numel; i++) h[i] = mg_rng_trunc_normal(&rng, std, -3 * std, 3 * std);
            break;
        }
        case MG_INIT_CEMA_AD:
            for (int64_t i = 0; i < p->numel; i++) h[i] = 0.2 * mg_rng_normal(&rng);
            break;
        case MG_INIT_CEMA_THETA: {
            /* f_k = d^(-k/d), k = 1..d, randomly permuted over channels; theta = logit(f). */
            int64_t n = p->numel;
            int64_t *perm = mg_malloc(sizeof(int64_t) * (size_t)n);
            for (int64_t i = 0; i < n; i++) perm[i] = i;
            for (int64_t i = n - 1; i > 0; i--) {
                int64_t j = (int64_t)(mg_rng_u64(&rng) % (uint64_t)(i + 1));
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
                h[i] = mg_rng_normal(&rng);
                h[i + 1] = 0.0;
            }
            break;
        case MG_INIT_CEMA_OMEGA:
            for (int64_t i = 0; i < p->numel; i++) h[i] = mg_rng_trunc_normal(&rng, 0.25, -1.0, 1.0);
            break;
        }
        void *dst = off(m, m->params, p->offset);
        if (m->be->dtype == MG_F64) {
            m->be->to_device(m->be, dst, h, sizeof(double) * (size_t)p->numel);
        } else {
            MG_CHECK(m->be->dtype == MG_F32, "init: unsupported parameter dtype %s", mg_dtype_name(m->be->dtype));
            float *f = mg_malloc(sizeof(float) * (size_t)p->numel);
            for (int64_t i = 0; i < p->numel; i++) f[i] = (float)h[i];
            m->be->to_device(m->be, dst, f, sizeof(float) * (size_t)p->numel);
            free(f);
        }
        free(h);
    }
}

/* ---- activation arena ---------------------------------------------------------------------------- */
static void plan(MgModel *m, const char *name, size_t bytes, void **slot) {
    if (m->n_entries == m->cap_entries) {
        m->cap_entries = m->cap_entries ? 2 * m->cap_entries : 128;
        m->entries = mg_realloc(m->entries, sizeof(ArenaEntry) * (size_t)m->cap_entries);
    }
    m->entries[m->n_entries++] = (ArenaEntry){name, (bytes + 63) & ~(size_t)63, slot};
}

/* Lay out every activation buffer for T rows / B sequences. With slots == 0 only sizes are computed. */
static size_t plan_arena(MgModel *m, int64_t T, int B) {
    const MgConfig *c = &m->cfg;
    const size_t es = m->es, ss = m->ss;
    const int64_t d = c->model_dim, z = c->z_dim, v = c->value_dim, f = c->ffn_hidden_dim, G = c->norm_num_groups,
                  H = c->num_heads, V = c->vocab_size;
    (void)B;
    m->n_entries = 0;
    m->x = mg_realloc(m->x, sizeof(void *) * (size_t)(c->n_layers + 1));
    m->a = mg_realloc(m->a, sizeof(LayerAct) * (size_t)(c->n_layers > 0 ? c->n_layers : 1));
    memset(m->a, 0, sizeof(LayerAct) * (size_t)(c->n_layers > 0 ? c->n_layers : 1));
    for (int l = 0; l <= c->n_layers; l++) plan(m, "residual stream", T * d * es, &m->x[l]);
    for (int l = 0; l < c->n_layers; l++) {
        LayerAct *a = &m->a[l];
        plan(m, "timestep norm out", T * d * es, &a->xn);
        plan(m, "timestep norm stats", T * G * es, &a->tsn_mean);
        plan(m, "timestep norm stats", T * G * es, &a->tsn_rstd);
        plan(m, "cema out", T * d * es, &a->cema);
        plan(m, "rmsnorm out", T * d * es, &a->m);
        plan(m, "rmsnorm stats", T * es, &a->rms_rstd);
        plan(m, "z", T * z * es, &a->z);
        plan(m, "q, k", T * z * es, &a->q);
        plan(m, "q, k", T * z * es, &a->k);
        plan(m, "qk norm stats", T * H * es, &a->qk_rstd);
        plan(m, "values", T * v * es, &a->vpre);
        plan(m, "values", T * v * es, &a->v);
        plan(m, "reset gate", T * v * es, &a->rpre);
        plan(m, "attention out", T * v * es, &a->o);
        plan(m, "attention lse", T * H * es, &a->lse);
        plan(m, "gated attention", T * v * es, &a->og);
        plan(m, "ffn norm in", T * d * es, &a->yhat);
        plan(m, "ffn norm out", T * d * es, &a->u);
        plan(m, "ffn norm stats", T * es, &a->ln_mean);
        plan(m, "ffn norm stats", T * es, &a->ln_rstd);
        plan(m, "ffn hidden", T * f * es, &a->f1);
        if (c->swiglu) plan(m, "ffn hidden", T * f * es, &a->f3);
        plan(m, "ffn hidden", T * f * es, &a->hff);
    }
    plan(m, "final norm", T * d * es, &m->fn_y);
    plan(m, "final norm stats", T * G * es, &m->fn_mean);
    plan(m, "final norm stats", T * G * es, &m->fn_rstd);
    const char *scratch = "backward scratch";
    plan(m, scratch, T * d * es, &m->gx);
    plan(m, scratch, T * d * es, &m->gB);
    plan(m, scratch, T * d * es, &m->gC);
    plan(m, scratch, T * d * es, &m->gm);
    plan(m, scratch, T * d * es, &m->gxn);
    plan(m, scratch, T * f * es, &m->ghff);
    plan(m, scratch, T * f * es, &m->gf1);
    if (c->swiglu) plan(m, scratch, T * f * es, &m->gf3);
    plan(m, scratch, T * v * es, &m->gog);
    plan(m, scratch, T * v * es, &m->grpre);
    plan(m, scratch, T * v * es, &m->go);
    plan(m, scratch, T * z * es, &m->gq);
    plan(m, scratch, T * z * es, &m->gk);
    plan(m, scratch, T * z * es, &m->gz);
    plan(m, "lm head logits block", (size_t)MG_MIN(T, HEAD_ROWS) * V * es, &m->logits);
    plan(m, "lm head logits block", (size_t)MG_MIN(T, HEAD_ROWS) * ss, &m->losses);
    plan(m, "tokens", T * sizeof(int32_t), (void **)&m->tokens_dev);
    plan(m, "tokens", T * sizeof(int32_t), (void **)&m->targets_dev);
    size_t total = 0;
    for (int i = 0; i < m->n_entries; i++) total += m->entries[i].bytes;
    return total;
}

static void ensure_arena(MgModel *m, int B, int L) {
    int64_t T = (int64_t)B * L;
    if (m->arena && T <= m->cap_T && B <= m->cap_B) return;
    if (m->arena) m->be->free(m->be, m->arena);
    size_t total = plan_arena(m, T, B);
    m->arena = m->be->alloc(m->be, total);
    m->arena_bytes = total;
    size_t o = 0;
    for (int i = 0; i < m->n_entries; i++) {
        *m->entries[i].slot = (char *)m->arena + o;
        o += m->entries[i].bytes;
    }
    m->cap_T = T;
    m->cap_B = B;
}

size_t mg_activation_plan_bytes(const MgConfig *cfg, int act_bytes, int state_bytes, int B, int L) {
    /* Plan on a scratch model that owns nothing but the slot arrays plan_arena fills. */
    MgModel tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.cfg = *cfg;
    tmp.es = (size_t)act_bytes;
    tmp.ss = (size_t)state_bytes;
    size_t total = plan_arena(&tmp, (int64_t)B * L, B);
    free(tmp.x);
    free(tmp.a);
    free(tmp.entries);
    return total;
}

size_t mg_model_activation_bytes(MgModel *m, int B, int L) {
    return mg_activation_plan_bytes(&m->cfg, (int)m->es, (int)m->ss, B, L);
}

void mg_model_print_memory(MgModel *m, int B, int L) {
    char b1[32], b2[32], b3[32];
    size_t pbytes = (size_t)m->table.total * m->es;
    size_t abytes = mg_model_activation_bytes(m, B, L);
    printf("memory: parameters %s, gradients %s, activations %s (batch %d x %d tokens)\n",
           mg_format_bytes((double)pbytes, b1, sizeof b1), mg_format_bytes((double)pbytes, b2, sizeof b2),
           mg_format_bytes((double)abytes, b3, sizeof b3), B, L);
}

/* ---- helpers over the backend -------------------------------------------------------------------- */
static void linear_fwd(MgModel *m, int64_t T, int in, int out, const void *x, const void *w, const void *b,
                       void *y) {
    MgLinearArgs a = {.T = T, .in = in, .out = out, .x = x, .weight = w, .bias = b, .y = y};
    m->be->linear_forward(m->be, &a);
}

static void linear_bwd(MgModel *m, int64_t T, int in, int out, const void *x, const void *w, const void *dy,
                       void *dx, void *dw, void *db, int accumulate) {
    MgLinearArgs a = {.T = T, .in = in, .out = out, .x = x, .weight = w, .dy = dy, .dx = dx, .dweight = dw,
                      .dbias = db, .accumulate = accumulate};
    m->be->linear_backward(m->be, &a);
}

static void act_fwd(MgModel *m, MgActKind kind, int64_t n, const void *a, const void *b, void *y) {
    MgActArgs args = {.kind = kind, .n = n, .a = a, .b = b, .y = y};
    m->be->act_forward(m->be, &args);
}

static void act_bwd(MgModel *m, MgActKind kind, int64_t n, const void *a, const void *b, const void *dy, void *da,
                    void *db, int accumulate) {
    MgActArgs args = {.kind = kind, .n = n, .a = a, .b = b, .dy = dy, .da = da, .db = db, .accumulate = accumulate};
    m->be->act_backward(m->be, &args);
}

/* Dropout sites, numbered so each (layer, site) gets its own mask stream. */
enum { DROP_EMBED = 0, DROP_M, DROP_OG, DROP_HH, DROP_HFF, DROP_FFN_OUT, DROP_ATTN };

static uint64_t drop_seed(const MgForwardOpts *o, int layer, int site) {
    return mg_hash64(o->seed, (uint64_t)(layer + 1) * 16u + (uint64_t)site);
}

static void dropout_fwd(MgModel *m, const MgForwardOpts *o, double p, int layer, int site, int64_t n, void *x) {
    if (!o || !o->training || p <= 0.0) return;
    MgDropoutArgs a = {.n = n, .p = p, .seed = drop_seed(o, layer, site), .offset = 0, .x = x, .y = x};
    m->be->dropout_forward(m->be, &a);
}

static void dropout_bwd(MgModel *m, const MgForwardOpts *o, double p, int layer, int site, int64_t n,
                        const void *dy, void *dx) {
    if (!o || !o->training || p <= 0.0) {
        if (dx != dy) m->be->copy(m->be, dx, dy, (size_t)n * m->es);
        return;
    }
    MgDropoutArgs a = {.n = n, .p = p, .seed = drop_seed(o, layer, site), .offset = 0, .dy = dy, .dx = dx};
    m->be->dropout_backward(m->be, &a);
}

/* DropKey on the attention scores (attention_dropout), only while training. */
static void attn_dropout(const MgConfig *c, const MgForwardOpts *o, int layer, MgAttentionArgs *at) {
    if (!o || !o->training || c->attention_dropout <= 0.0) return;
    at->drop_p = c->attention_dropout;
    at->drop_seed = drop_seed(o, layer, DROP_ATTN);
}

/* State pointers of layer l (l == n_layers: the final norm) inside an MgModelState. */
typedef struct {
    const int64_t *count_in;
    const void *mean_in, *var_in, *h_in;
    int64_t *count_out;
    void *mean_out, *var_out, *h_out;
} LayerState;

static LayerState layer_state(const MgModel *m, const MgModelState *in, MgModelState *out, int l, int B) {
    LayerState s = {0};
    const int64_t G = m->cfg.norm_num_groups, DN2 = (int64_t)m->cfg.model_dim * m->cfg.cema_ndim * 2;
    if (in) {
        s.count_in = in->tsn_count + (int64_t)l * B;
        s.mean_in = (char *)in->tsn_mean + (size_t)((int64_t)l * B * G) * m->ss;
        s.var_in = (char *)in->tsn_var + (size_t)((int64_t)l * B * G) * m->ss;
        if (l < m->cfg.n_layers) s.h_in = (char *)in->cema_h + (size_t)((int64_t)l * B * DN2) * m->ss;
    }
    if (out) {
        s.count_out = out->tsn_count + (int64_t)l * B;
        s.mean_out = (char *)out->tsn_mean + (size_t)((int64_t)l * B * G) * m->ss;
        s.var_out = (char *)out->tsn_var + (size_t)((int64_t)l * B * G) * m->ss;
        if (l < m->cfg.n_layers) s.h_out = (char *)out->cema_h + (size_t)((int64_t)l * B * DN2) * m->ss;
    }
    return s;
}

/* ---- forward ------------------------------------------------------------------------------------- */
static void check_tokens(const MgModel *m, const int32_t *tokens, const int32_t *targets, int64_t T) {
    const int V = m->cfg.vocab_size;
    for (int64_t i = 0; i < T; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            mg_fatal("token id %d at position %lld is outside the vocabulary [0, %d): the data does not match "
                     "this model's vocab_size",
                     tokens[i], (long long)i, V);
        if (targets && targets[i] != IGNORE_INDEX && (targets[i] < 0 || targets[i] >= V))
            mg_fatal("target id %d at position %lld is outside the vocabulary [0, %d)", targets[i], (long long)i, V);
    }
}

static void check_shape(const MgModel *m, int B, int L) {
    const int c = m->cfg.chunk_size;
    MG_CHECK(B >= 1 && L >= 1, "model: batch %d x length %d must be positive", B, L);
    if (L > c && L % c != 0)
        mg_fatal("sequence length %d cannot be split into attention chunks of %d: use a length below %d or a "
                 "multiple of it (e.g. %d or %d)",
                 L, c, c, (L / c) * c, (L / c + 1) * c);
}

/* One Megalodon block (spec §1.2, §4, §1.3): x -> xout, keeping its intermediate tensors in `a`.
 * Training passes dec = NULL (chunk attention over the whole length, dropout when opts->training);
 * the recurrent decoder passes itself: keys and values are appended to its current-chunk cache and the
 * n new queries attend to the cache, with RoPE positions continuing inside the chunk. */
static void decoder_attention(MgDecoder *d, int l, const LayerAct *a, int n);
static int64_t decoder_chunk_pos(const MgDecoder *d);

static void layer_forward(MgModel *m, int l, LayerAct *a, const void *x, void *xout, int B, int L,
                          const LayerState *st, const MgForwardOpts *opts, MgDecoder *dec) {
    const MgConfig *c = &m->cfg;
    const MgBackend *be = m->be;
    const int64_t T = (int64_t)B * L;
    const int d = c->model_dim, z = c->z_dim, v = c->value_dim, f = c->ffn_hidden_dim, H = c->num_heads;
    const LayerW *w = &m->w[l];

    MgTimestepNormArgs tsn = {.B = B, .L = L, .D = d, .G = c->norm_num_groups, .eps = c->norm_eps, .x = x,
                              .weight = w->tsn_w, .bias = w->tsn_b, .count_in = st->count_in,
                              .mean_in = st->mean_in, .var_in = st->var_in, .count_out = st->count_out,
                              .mean_out = st->mean_out, .var_out = st->var_out, .y = a->xn,
                              .saved_mean = a->tsn_mean, .saved_rstd = a->tsn_rstd};
    be->timestep_norm_forward(be, &tsn);

    MgCemaArgs cema = {.B = B, .L = L, .D = d, .N = c->cema_ndim, .x = a->xn, .alpha = w->alpha,
                       .delta = w->delta, .theta = w->theta, .gamma = w->gamma, .omega = w->omega,
                       .h_in = st->h_in, .h_out = st->h_out, .y = a->cema};
    be->cema_forward(be, &cema);

    MgRMSNormArgs rms = {.T = T, .D = d, .eps = c->norm_eps, .x = a->cema, .weight = w->rms_w, .y = a->m,
                         .saved_rstd = a->rms_rstd};
    be->rmsnorm_forward(be, &rms);
    dropout_fwd(m, opts, c->hidden_dropout, l, DROP_M, T * d, a->m);

    linear_fwd(m, T, d, z, a->m, w->wz, w->bz, a->z);
    MgQKNormArgs qk = {.T = T, .Z = z, .H = H, .eps = c->norm_eps, .z = a->z, .gamma = w->qk_gamma,
                       .beta = w->qk_beta, .q = a->q, .k = a->k, .saved_rstd = a->qk_rstd};
    be->qknorm_forward(be, &qk);
    MgRopeArgs rq = {.B = B, .L = L, .H = H, .dh = z / H, .chunk = c->chunk_size,
                     .pos_offset = dec ? decoder_chunk_pos(dec) : 0, .base = c->rope_base, .x = a->q, .y = a->q};
    be->rope_forward(be, &rq);
    MgRopeArgs rk = rq;
    rk.x = rk.y = a->k;
    be->rope_forward(be, &rk);

    linear_fwd(m, T, d, v, a->xn, w->wv, w->bv, a->vpre);
    act_fwd(m, MG_ACT_SILU, T * v, a->vpre, NULL, a->v);
    linear_fwd(m, T, d, v, a->m, w->wr, w->br, a->rpre);

    if (dec) {
        decoder_attention(dec, l, a, L);
    } else {
        MgAttentionArgs at = {.B = B, .H = H, .Dqk = z / H, .Dv = v / H, .Lq = L, .Lk = L,
                              .chunk = c->chunk_size, .scale = 1.0, .q = a->q, .k = a->k, .v = a->v, .o = a->o,
                              .saved_lse = a->lse};
        attn_dropout(c, opts, l, &at);
        be->attention_forward(be, &at);
    }
    act_fwd(m, MG_ACT_SWIGLU, T * v, a->rpre, a->o, a->og);
    dropout_fwd(m, opts, c->hidden_dropout, l, DROP_OG, T * v, a->og);

    /* Hh = M Wh1^T + b + Og Wh2^T, computed into yhat (u is free until the LayerNorm), then
     * yhat = X + dropout(Hh). */
    linear_fwd(m, T, d, d, a->m, w->wh1, w->bh1, a->yhat);
    linear_fwd(m, T, v, d, a->og, w->wh2, NULL, a->u);
    be->axpy(be, T * d, 1.0, a->u, a->yhat);
    dropout_fwd(m, opts, c->dropout, l, DROP_HH, T * d, a->yhat);
    be->axpy(be, T * d, 1.0, x, a->yhat);

    MgLayerNormArgs ln = {.T = T, .D = d, .eps = c->norm_eps, .x = a->yhat, .weight = w->ln_w,
                          .bias = w->ln_b, .y = a->u, .saved_mean = a->ln_mean, .saved_rstd = a->ln_rstd};
    be->layernorm_forward(be, &ln);
    linear_fwd(m, T, d, f, a->u, w->fc1, NULL, a->f1);
    if (c->swiglu) {
        linear_fwd(m, T, d, f, a->u, w->fc3, NULL, a->f3);
        act_fwd(m, MG_ACT_SWIGLU, T * f, a->f1, a->f3, a->hff);
    } else {
        act_fwd(m, MG_ACT_SILU, T * f, a->f1, NULL, a->hff);
    }
    dropout_fwd(m, opts, c->hidden_dropout, l, DROP_HFF, T * f, a->hff);
    linear_fwd(m, T, f, d, a->hff, w->fc2, NULL, xout);
    dropout_fwd(m, opts, c->dropout, l, DROP_FFN_OUT, T * d, xout);
    be->axpy(be, T * d, 1.0, x, xout); /* two-hop residual: the block input, not yhat */
}

/* X0 = E[tokens] (* sqrt(d) if scale_emb), then embedding dropout when training. */
static void embed_forward(MgModel *m, const int32_t *tokens_dev, int64_t T, const MgForwardOpts *opts, void *out) {
    const MgConfig *c = &m->cfg;
    const int d = c->model_dim;
    MgEmbeddingArgs emb = {.T = T, .D = d, .V = c->vocab_size, .tokens = tokens_dev, .weight = m->embed, .out = out};
    m->be->embedding_forward(m->be, &emb);
    if (c->scale_emb) m->be->scale(m->be, T * d, sqrt((double)d), out);
    dropout_fwd(m, opts, c->dropout, -1, DROP_EMBED, T * d, out);
}

/* The final TimestepNorm (its state is the last slot of MgModelState). */
static void final_norm_forward(MgModel *m, const void *x, int B, int L, const LayerState *st, void *y, void *mean,
                               void *rstd) {
    const MgConfig *c = &m->cfg;
    MgTimestepNormArgs fn = {.B = B, .L = L, .D = c->model_dim, .G = c->norm_num_groups, .eps = c->norm_eps,
                             .x = x, .weight = m->final_w, .bias = m->final_b, .count_in = st->count_in,
                             .mean_in = st->mean_in, .var_in = st->var_in, .count_out = st->count_out,
                             .mean_out = st->mean_out, .var_out = st->var_out, .y = y, .saved_mean = mean,
                             .saved_rstd = rstd};
    m->be->timestep_norm_forward(m->be, &fn);
}

/* Runs embedding + all blocks + final norm, keeping everything backward needs. */
static void forward_body(MgModel *m, const int32_t *tokens, int B, int L, const MgForwardOpts *opts,
                         const MgModelState *state_in, MgModelState *state_out) {
    const MgConfig *c = &m->cfg;
    const int64_t T = (int64_t)B * L;
    m->be->to_device(m->be, m->tokens_dev, tokens, (size_t)T * sizeof(int32_t));
    embed_forward(m, m->tokens_dev, T, opts, m->x[0]);
    for (int l = 0; l < c->n_layers; l++) {
        LayerState st = layer_state(m, state_in, state_out, l, B);
        layer_forward(m, l, &m->a[l], m->x[l], m->x[l + 1], B, L, &st, opts, NULL);
    }
    LayerState st = layer_state(m, state_in, state_out, c->n_layers, B);
    final_norm_forward(m, m->x[c->n_layers], B, L, &st, m->fn_y, m->fn_mean, m->fn_rstd);
}

static double sum_losses(MgModel *m, int64_t rows) {
    double s = 0.0;
    if (m->be->state_dtype == MG_F64) {
        double buf[HEAD_ROWS];
        m->be->to_host(m->be, buf, m->losses, (size_t)rows * sizeof(double));
        for (int64_t i = 0; i < rows; i++) s += buf[i];
    } else {
        float buf[HEAD_ROWS];
        m->be->to_host(m->be, buf, m->losses, (size_t)rows * sizeof(float));
        for (int64_t i = 0; i < rows; i++) s += (double)buf[i];
    }
    return s;
}

/* LM head + cross-entropy in blocks of HEAD_ROWS rows; with backward, the head's input gradient goes
 * to gC (T x d) and the head weight gradient accumulates. Returns the summed loss. */
static double head_loss(MgModel *m, int64_t T, double grad_scale, int backward) {
    const MgConfig *c = &m->cfg;
    const int d = c->model_dim, V = c->vocab_size;
    double total = 0.0;
    for (int64_t r0 = 0; r0 < T; r0 += HEAD_ROWS) {
        int64_t R = MG_MIN((int64_t)HEAD_ROWS, T - r0);
        void *xr = off(m, m->fn_y, r0 * d);
        linear_fwd(m, R, d, V, xr, m->head, NULL, m->logits);
        MgCrossEntropyArgs ce = {.T = R, .V = V, .ignore_index = IGNORE_INDEX, .logits = m->logits,
                                 .targets = m->targets_dev + r0, .grad_scale = grad_scale, .losses = m->losses,
                                 .dlogits = backward ? m->logits : NULL};
        m->be->cross_entropy(m->be, &ce);
        total += sum_losses(m, R);
        if (backward)
            linear_bwd(m, R, d, V, xr, m->head, m->logits, off(m, m->gC, r0 * d), m->g_head, NULL, 0);
    }
    return total;
}

static int64_t count_targets(const int32_t *targets, int64_t T) {
    int64_t n = 0;
    for (int64_t i = 0; i < T; i++) n += targets[i] != IGNORE_INDEX;
    return n;
}

/* ---- backward ------------------------------------------------------------------------------------ */
static void backward_body(MgModel *m, int B, int L, const MgForwardOpts *opts, const MgModelState *state_in) {
    const MgConfig *c = &m->cfg;
    const MgBackend *be = m->be;
    const int64_t T = (int64_t)B * L;
    const int d = c->model_dim, z = c->z_dim, v = c->value_dim, f = c->ffn_hidden_dim, H = c->num_heads;

    /* final norm: d(fn_y) is in gC -> gx = d(x[n]) */
    {
        LayerState st = layer_state(m, state_in, NULL, c->n_layers, B);
        MgTimestepNormArgs fn = {.B = B, .L = L, .D = d, .G = c->norm_num_groups, .eps = c->norm_eps,
                                 .x = m->x[c->n_layers], .weight = m->final_w, .bias = m->final_b,
                                 .count_in = st.count_in, .mean_in = st.mean_in, .var_in = st.var_in,
                                 .saved_mean = m->fn_mean, .saved_rstd = m->fn_rstd, .dy = m->gC, .dx = m->gx,
                                 .dweight = m->g_final_w, .dbias = m->g_final_b};
        be->timestep_norm_backward(be, &fn);
    }

    for (int l = c->n_layers - 1; l >= 0; l--) {
        const LayerW *w = &m->w[l];
        const LayerW *gw = &m->gw[l];
        LayerAct *a = &m->a[l];
        LayerState st = layer_state(m, state_in, NULL, l, B);
        void *x = m->x[l];
        /* gx holds dL/d(x[l+1]); it becomes dL/d(x[l]) in place (both residual hops add into it). */

        /* FFN: x[l+1] = x[l] + dropout(fc2(hff)) */
        dropout_bwd(m, opts, c->dropout, l, DROP_FFN_OUT, T * d, m->gx, m->gB);
        linear_bwd(m, T, f, d, a->hff, w->fc2, m->gB, m->ghff, gw->fc2, NULL, 0);
        dropout_bwd(m, opts, c->hidden_dropout, l, DROP_HFF, T * f, m->ghff, m->ghff);
        if (c->swiglu) {
            act_bwd(m, MG_ACT_SWIGLU, T * f, a->f1, a->f3, m->ghff, m->gf1, m->gf3, 0);
            linear_bwd(m, T, d, f, a->u, w->fc1, m->gf1, m->gB, gw->fc1, NULL, 0);
            linear_bwd(m, T, d, f, a->u, w->fc3, m->gf3, m->gB, gw->fc3, NULL, 1);
        } else {
            act_bwd(m, MG_ACT_SILU, T * f, a->f1, NULL, m->ghff, m->gf1, NULL, 0);
            linear_bwd(m, T, d, f, a->u, w->fc1, m->gf1, m->gB, gw->fc1, NULL, 0);
        }
        MgLayerNormArgs ln = {.T = T, .D = d, .eps = c->norm_eps, .x = a->yhat, .weight = w->ln_w,
                              .bias = w->ln_b, .saved_mean = a->ln_mean, .saved_rstd = a->ln_rstd, .dy = m->gB,
                              .dx = m->gC, .dweight = gw->ln_w, .dbias = gw->ln_b};
        be->layernorm_backward(be, &ln);
        /* yhat = x + dropout(Hh): the residual part reaches x directly */
        be->axpy(be, T * d, 1.0, m->gC, m->gx);
        dropout_bwd(m, opts, c->dropout, l, DROP_HH, T * d, m->gC, m->gC);

        /* Hh = M Wh1^T + b + Og Wh2^T */
        linear_bwd(m, T, d, d, a->m, w->wh1, m->gC, m->gm, gw->wh1, gw->bh1, 0);
        linear_bwd(m, T, v, d, a->og, w->wh2, m->gC, m->gog, gw->wh2, NULL, 0);
        dropout_bwd(m, opts, c->hidden_dropout, l, DROP_OG, T * v, m->gog, m->gog);
        act_bwd(m, MG_ACT_SWIGLU, T * v, a->rpre, a->o, m->gog, m->grpre, m->go, 0);
        linear_bwd(m, T, d, v, a->m, w->wr, m->grpre, m->gm, gw->wr, gw->br, 1);

        /* attention: the value gradient goes to gog (free again) */
        void *gv = m->gog;
        MgAttentionArgs at = {.B = B, .H = H, .Dqk = z / H, .Dv = v / H, .Lq = L, .Lk = L,
                              .chunk = c->chunk_size, .scale = 1.0, .q = a->q, .k = a->k, .v = a->v, .o = a->o,
                              .saved_lse = a->lse, .dout = m->go, .dq = m->gq, .dk = m->gk, .dv = gv};
        attn_dropout(c, opts, l, &at);
        be->attention_backward(be, &at);
        MgRopeArgs rq = {.B = B, .L = L, .H = H, .dh = z / H, .chunk = c->chunk_size, .pos_offset = 0,
                         .base = c->rope_base, .dy = m->gq, .dx = m->gq};
        be->rope_backward(be, &rq);
        MgRopeArgs rk = rq;
        rk.dy = rk.dx = m->gk;
        be->rope_backward(be, &rk);
        MgQKNormArgs qk = {.T = T, .Z = z, .H = H, .eps = c->norm_eps, .z = a->z, .gamma = w->qk_gamma,
                           .beta = w->qk_beta, .saved_rstd = a->qk_rstd, .dq = m->gq, .dk = m->gk, .dz = m->gz,
                           .dgamma = gw->qk_gamma, .dbeta = gw->qk_beta};
        be->qknorm_backward(be, &qk);
        linear_bwd(m, T, d, z, a->m, w->wz, m->gz, m->gm, gw->wz, gw->bz, 1);

        /* values: V = silu(Xn Wv^T + bv) */
        act_bwd(m, MG_ACT_SILU, T * v, a->vpre, NULL, gv, gv, NULL, 0);
        linear_bwd(m, T, d, v, a->xn, w->wv, gv, m->gxn, gw->wv, gw->bv, 0);

        /* M = dropout(RMSNorm(CEMA(Xn))) */
        dropout_bwd(m, opts, c->hidden_dropout, l, DROP_M, T * d, m->gm, m->gm);
        MgRMSNormArgs rms = {.T = T, .D = d, .eps = c->norm_eps, .x = a->cema, .weight = w->rms_w,
                             .saved_rstd = a->rms_rstd, .dy = m->gm, .dx = m->gB, .dweight = gw->rms_w};
        be->rmsnorm_backward(be, &rms);
        MgCemaArgs cema = {.B = B, .L = L, .D = d, .N = c->cema_ndim, .x = a->xn, .alpha = w->alpha,
                           .delta = w->delta, .theta = w->theta, .gamma = w->gamma, .omega = w->omega,
                           .h_in = st.h_in, .dy = m->gB, .dx = m->gxn, .dalpha = gw->alpha, .ddelta = gw->delta,
                           .dtheta = gw->theta, .dgamma = gw->gamma, .domega = gw->omega, .accumulate = 1};
        be->cema_backward(be, &cema);
        MgTimestepNormArgs tsn = {.B = B, .L = L, .D = d, .G = c->norm_num_groups, .eps = c->norm_eps, .x = x,
                                  .weight = w->tsn_w, .bias = w->tsn_b, .count_in = st.count_in,
                                  .mean_in = st.mean_in, .var_in = st.var_in, .saved_mean = a->tsn_mean,
                                  .saved_rstd = a->tsn_rstd, .dy = m->gxn, .dx = m->gx, .dweight = gw->tsn_w,
                                  .dbias = gw->tsn_b, .accumulate = 1};
        be->timestep_norm_backward(be, &tsn);
    }

    dropout_bwd(m, opts, c->dropout, -1, DROP_EMBED, T * d, m->gx, m->gx);
    if (c->scale_emb) be->scale(be, T * d, sqrt((double)d), m->gx);
    MgEmbeddingArgs emb = {.T = T, .D = d, .V = c->vocab_size, .tokens = m->tokens_dev, .weight = m->embed,
                           .dout = m->gx, .dweight = m->g_embed};
    be->embedding_backward(be, &emb);
}

double mg_model_forward_backward(MgModel *m, const int32_t *tokens, const int32_t *targets, int B, int L,
                                 double grad_scale, const MgForwardOpts *opts, const MgModelState *state_in,
                                 MgModelState *state_out, int64_t *n_counted) {
    check_shape(m, B, L);
    const int64_t T = (int64_t)B * L;
    check_tokens(m, tokens, targets, T);
    ensure_arena(m, B, L);
    MgForwardOpts train = opts ? *opts : (MgForwardOpts){.seed = 0, .training = 1};
    forward_body(m, tokens, B, L, &train, state_in, state_out);
    m->be->to_device(m->be, m->targets_dev, targets, (size_t)T * sizeof(int32_t));
    double loss = head_loss(m, T, grad_scale, 1);
    backward_body(m, B, L, &train, state_in);
    if (n_counted) *n_counted = count_targets(targets, T);
    return loss;
}

double mg_model_forward_loss(MgModel *m, const int32_t *tokens, const int32_t *targets, int B, int L,
                             const MgForwardOpts *opts, const MgModelState *state_in, MgModelState *state_out,
                             int64_t *n_counted) {
    check_shape(m, B, L);
    const int64_t T = (int64_t)B * L;
    check_tokens(m, tokens, targets, T);
    ensure_arena(m, B, L);
    MgForwardOpts eval = {.seed = 0, .training = 0};
    forward_body(m, tokens, B, L, opts ? opts : &eval, state_in, state_out);
    m->be->to_device(m->be, m->targets_dev, targets, (size_t)T * sizeof(int32_t));
    double loss = head_loss(m, T, 1.0, 0);
    if (n_counted) *n_counted = count_targets(targets, T);
    return loss;
}

void mg_model_forward_logits(MgModel *m, const int32_t *tokens, int B, int L, const MgModelState *state_in,
                             MgModelState *state_out, void *logits_host) {
    check_shape(m, B, L);
    const int64_t T = (int64_t)B * L;
    check_tokens(m, tokens, NULL, T);
    ensure_arena(m, B, L);
    MgForwardOpts eval = {.seed = 0, .training = 0};
    forward_body(m, tokens, B, L, &eval, state_in, state_out);
    const int d = m->cfg.model_dim, V = m->cfg.vocab_size;
    for (int64_t r0 = 0; r0 < T; r0 += HEAD_ROWS) {
        int64_t R = MG_MIN((int64_t)HEAD_ROWS, T - r0);
        linear_fwd(m, R, d, V, off(m, m->fn_y, r0 * d), m->head, NULL, m->logits);
        m->be->to_host(m->be, (char *)logits_host + (size_t)(r0 * V) * m->es, m->logits, (size_t)(R * V) * m->es);
    }
}

/* ---- carried state ------------------------------------------------------------------------------- */
MgModelState *mg_model_state_create(const MgModel *m, int B) {
    const MgBackend *be = m->be;
    MgModelState *s = mg_calloc(1, sizeof(MgModelState));
    s->B = B;
    s->n_layers = m->cfg.n_layers;
    s->G = m->cfg.norm_num_groups;
    s->D = m->cfg.model_dim;
    s->N = m->cfg.cema_ndim;
    int64_t nl1 = s->n_layers + 1;
    s->tsn_count = mg_calloc((size_t)(nl1 * B), sizeof(int64_t));
    s->tsn_mean = be->alloc(be, (size_t)(nl1 * B * s->G) * m->ss);
    s->tsn_var = be->alloc(be, (size_t)(nl1 * B * s->G) * m->ss);
    s->cema_h = be->alloc(be, (size_t)((int64_t)(s->n_layers > 0 ? s->n_layers : 1) * B * s->D * s->N * 2) * m->ss);
    mg_model_state_reset(m, s);
    return s;
}

void mg_model_state_free(const MgModel *m, MgModelState *s) {
    if (!s) return;
    free(s->tsn_count);
    m->be->free(m->be, s->tsn_mean);
    m->be->free(m->be, s->tsn_var);
    m->be->free(m->be, s->cema_h);
    free(s);
}

void mg_model_state_reset(const MgModel *m, MgModelState *s) {
    const MgBackend *be = m->be;
    int64_t nl1 = s->n_layers + 1, nstat = nl1 * s->B * s->G;
    memset(s->tsn_count, 0, sizeof(int64_t) * (size_t)(nl1 * s->B));
    be->memset0(be, s->tsn_mean, (size_t)nstat * m->ss);
    /* var = 1 (the fresh prior); it is overwritten by the first token because the count is 0. */
    void *ones = mg_malloc((size_t)nstat * m->ss);
    for (int64_t i = 0; i < nstat; i++) {
        if (m->ss == 8) ((double *)ones)[i] = 1.0;
        else ((float *)ones)[i] = 1.0f;
    }
    be->to_device(be, s->tsn_var, ones, (size_t)nstat * m->ss);
    free(ones);
    be->memset0(be, s->cema_h, (size_t)((int64_t)(s->n_layers > 0 ? s->n_layers : 1) * s->B * s->D * s->N * 2) * m->ss);
}

void mg_model_state_copy(const MgModel *m, MgModelState *dst, const MgModelState *src) {
    const MgBackend *be = m->be;
    MG_CHECK(dst->B == src->B, "state copy: batch sizes differ (%d vs %d)", dst->B, src->B);
    int64_t nl1 = src->n_layers + 1, nstat = nl1 * src->B * src->G;
    memcpy(dst->tsn_count, src->tsn_count, sizeof(int64_t) * (size_t)(nl1 * src->B));
    be->copy(be, dst->tsn_mean, src->tsn_mean, (size_t)nstat * m->ss);
    be->copy(be, dst->tsn_var, src->tsn_var, (size_t)nstat * m->ss);
    be->copy(be, dst->cema_h, src->cema_h,
             (size_t)((int64_t)(src->n_layers > 0 ? src->n_layers : 1) * src->B * src->D * src->N * 2) * m->ss);
}

/* ---- recurrent decoding -------------------------------------------------------------------------- */
struct MgDecoder {
    MgModel *m;
    int B, cap;              /* cap = chunk size: the most tokens one piece can hold */
    MgModelState *st[2];     /* double-buffered carried state (ops never read and write one buffer) */
    int cur;
    int64_t pos;             /* tokens consumed per sequence */
    int cache_len;           /* keys/values of the current chunk held in the cache */
    void **kcache, **vcache; /* per layer: B x c x H x dz / dv (backend memory) */
    /* work buffers for one piece of at most cap tokens per sequence, reused by every layer */
    LayerAct act;
    void *x, *x2, *fn, *fn_mean, *fn_rstd, *logits;
    int32_t *tok_dev;
    float *last_logits;      /* B x V host */
    void **owned;            /* every backend allocation, for freeing */
    int n_owned;
    size_t bytes;
};

static void *dec_alloc(MgDecoder *d, size_t bytes) {
    d->bytes += bytes;
    d->owned = mg_realloc(d->owned, sizeof(void *) * (size_t)(d->n_owned + 1));
    return d->owned[d->n_owned++] = d->m->be->alloc(d->m->be, bytes);
}

MgDecoder *mg_decoder_create(MgModel *m, int B) {
    const MgConfig *c = &m->cfg;
    MgDecoder *d = mg_calloc(1, sizeof(MgDecoder));
    d->m = m;
    d->B = B;
    d->cap = c->chunk_size;
    d->st[0] = mg_model_state_create(m, B);
    d->st[1] = mg_model_state_create(m, B);
    const size_t es = m->es;
    const int64_t cap = d->cap, Dd = c->model_dim, z = c->z_dim, v = c->value_dim, f = c->ffn_hidden_dim,
                  G = c->norm_num_groups, H = c->num_heads;
    d->kcache = mg_calloc((size_t)MG_MAX(c->n_layers, 1), sizeof(void *));
    d->vcache = mg_calloc((size_t)MG_MAX(c->n_layers, 1), sizeof(void *));
    for (int l = 0; l < c->n_layers; l++) {
        d->kcache[l] = dec_alloc(d, (size_t)(B * cap * z) * es);
        d->vcache[l] = dec_alloc(d, (size_t)(B * cap * v) * es);
    }
    const int64_t T = (int64_t)B * cap;
    LayerAct *a = &d->act;
    a->xn = dec_alloc(d, (size_t)(T * Dd) * es);
    a->tsn_mean = dec_alloc(d, (size_t)(T * G) * es);
    a->tsn_rstd = dec_alloc(d, (size_t)(T * G) * es);
    a->cema = dec_alloc(d, (size_t)(T * Dd) * es);
    a->m = dec_alloc(d, (size_t)(T * Dd) * es);
    a->rms_rstd = dec_alloc(d, (size_t)T * es);
    a->z = dec_alloc(d, (size_t)(T * z) * es);
    a->q = dec_alloc(d, (size_t)(T * z) * es);
    a->k = dec_alloc(d, (size_t)(T * z) * es);
    a->qk_rstd = dec_alloc(d, (size_t)(T * H) * es);
    a->vpre = dec_alloc(d, (size_t)(T * v) * es);
    a->v = dec_alloc(d, (size_t)(T * v) * es);
    a->rpre = dec_alloc(d, (size_t)(T * v) * es);
    a->o = dec_alloc(d, (size_t)(T * v) * es);
    a->og = dec_alloc(d, (size_t)(T * v) * es);
    a->yhat = dec_alloc(d, (size_t)(T * Dd) * es);
    a->u = dec_alloc(d, (size_t)(T * Dd) * es);
    a->ln_mean = dec_alloc(d, (size_t)T * es);
    a->ln_rstd = dec_alloc(d, (size_t)T * es);
    a->f1 = dec_alloc(d, (size_t)(T * f) * es);
    if (c->swiglu) a->f3 = dec_alloc(d, (size_t)(T * f) * es);
    a->hff = dec_alloc(d, (size_t)(T * f) * es);
    d->x = dec_alloc(d, (size_t)(T * Dd) * es);
    d->x2 = dec_alloc(d, (size_t)(T * Dd) * es);
    d->fn = dec_alloc(d, (size_t)(T * Dd) * es);
    d->fn_mean = dec_alloc(d, (size_t)(T * G) * es);
    d->fn_rstd = dec_alloc(d, (size_t)(T * G) * es);
    d->logits = dec_alloc(d, (size_t)c->vocab_size * es);
    d->tok_dev = dec_alloc(d, (size_t)T * sizeof(int32_t));
    d->last_logits = mg_calloc((size_t)B * (size_t)c->vocab_size, sizeof(float));
    mg_decoder_reset(d);
    return d;
}

void mg_decoder_free(MgDecoder *d) {
    if (!d) return;
    MgModel *m = d->m;
    for (int i = 0; i < d->n_owned; i++) m->be->free(m->be, d->owned[i]);
    free(d->owned);
    free(d->kcache);
    free(d->vcache);
    mg_model_state_free(m, d->st[0]);
    mg_model_state_free(m, d->st[1]);
    free(d->last_logits);
    free(d);
}

void mg_decoder_reset(MgDecoder *d) {
    mg_model_state_reset(d->m, d->st[0]);
    mg_model_state_reset(d->m, d->st[1]);
    d->cur = 0;
    d->pos = 0;
    d->cache_len = 0;
}

int64_t mg_decoder_position(const MgDecoder *d) { return d->pos; }
size_t mg_decoder_bytes(const MgDecoder *d) { return d->bytes; }
const float *mg_decoder_last_logits(const MgDecoder *d) { return d->last_logits; }
static int64_t decoder_chunk_pos(const MgDecoder *d) { return d->cache_len; }

/* Copy rows [0, n) of each sequence's piece (B x n x w, contiguous) into the cache at [cache_len, +n). */
static void cache_append(MgDecoder *d, void *cache, const void *src, int n, int w) {
    MgModel *m = d->m;
    for (int b = 0; b < d->B; b++) {
        void *dst = off(m, cache, ((int64_t)b * d->cap + d->cache_len) * w);
        const void *s = off(m, (void *)src, (int64_t)b * n * w);
        m->be->copy(m->be, dst, s, (size_t)((int64_t)n * w) * m->es);
    }
}

/* Attention of the n new queries of layer l against the current chunk's cached keys and values (the n
 * new ones appended first); one sequence at a time, since each sequence's cache rows are contiguous. */
static void decoder_attention(MgDecoder *d, int l, const LayerAct *a, int n) {
    MgModel *m = d->m;
    const MgConfig *c = &m->cfg;
    const int z = c->z_dim, v = c->value_dim, H = c->num_heads;
    cache_append(d, d->kcache[l], a->k, n, z);
    cache_append(d, d->vcache[l], a->v, n, v);
    for (int b = 0; b < d->B; b++) {
        MgAttentionArgs at = {.B = 1, .H = H, .Dqk = z / H, .Dv = v / H, .Lq = n, .Lk = d->cache_len + n,
                              .chunk = c->chunk_size, .scale = 1.0, .q = off(m, a->q, (int64_t)b * n * z),
                              .k = off(m, d->kcache[l], (int64_t)b * d->cap * z),
                              .v = off(m, d->vcache[l], (int64_t)b * d->cap * v),
                              .o = off(m, a->o, (int64_t)b * n * v)};
        m->be->attention_forward(m->be, &at);
    }
}

/* One piece of n tokens that does not cross a chunk boundary. logits_out: B x n x V host, or NULL. */
static void decode_piece(MgDecoder *d, const int32_t *tokens, int n, void *logits_out, int64_t logits_stride,
                         int64_t logits_col) {
    MgModel *m = d->m;
    const MgConfig *c = &m->cfg;
    const MgBackend *be = m->be;
    const int B = d->B, Dd = c->model_dim, V = c->vocab_size;
    const int64_t T = (int64_t)B * n;
    const MgModelState *sin = d->st[d->cur];
    MgModelState *sout = d->st[1 - d->cur];

    be->to_device(be, d->tok_dev, tokens, (size_t)T * sizeof(int32_t));
    embed_forward(m, d->tok_dev, T, NULL, d->x);
    for (int l = 0; l < c->n_layers; l++) {
        LayerState st = layer_state(m, sin, sout, l, B);
        layer_forward(m, l, &d->act, d->x, d->x2, B, n, &st, NULL, d);
        void *t = d->x;
        d->x = d->x2;
        d->x2 = t;
    }
    LayerState st = layer_state(m, sin, sout, c->n_layers, B);
    final_norm_forward(m, d->x, B, n, &st, d->fn, d->fn_mean, d->fn_rstd);

    /* logits of every position when asked, else only of the last one per sequence */
    for (int b = 0; b < B; b++) {
        int first = logits_out ? 0 : n - 1;
        for (int t = first; t < n; t++) {
            linear_fwd(m, 1, Dd, V, off(m, d->fn, ((int64_t)b * n + t) * Dd), m->head, NULL, d->logits);
            if (logits_out)
                be->to_host(be, (char *)logits_out + (size_t)((b * logits_stride + logits_col + t) * V) * m->es,
                            d->logits, (size_t)V * m->es);
            if (t == n - 1) {
                if (m->es == 4) {
                    be->to_host(be, d->last_logits + (size_t)b * V, d->logits, (size_t)V * 4);
                } else {
                    double *tmp = mg_malloc(sizeof(double) * (size_t)V);
                    be->to_host(be, tmp, d->logits, (size_t)V * 8);
                    for (int i = 0; i < V; i++) d->last_logits[(size_t)b * V + i] = (float)tmp[i];
                    free(tmp);
                }
            }
        }
    }

    d->cur = 1 - d->cur;
    d->pos += n;
    d->cache_len += n;
    if (d->cache_len == d->cap) d->cache_len = 0; /* chunk complete: attention starts afresh */
}

void mg_decoder_step(MgDecoder *d, const int32_t *tokens, int n, void *logits_host) {
    MgModel *m = d->m;
    check_tokens(m, tokens, NULL, (int64_t)d->B * n);
    const int B = d->B;
    int done = 0;
    int32_t *piece = mg_malloc(sizeof(int32_t) * (size_t)B * (size_t)d->cap);
    while (done < n) {
        int len = MG_MIN(n - done, d->cap - d->cache_len);
        for (int b = 0; b < B; b++) memcpy(piece + (size_t)b * len, tokens + (size_t)b * n + done, sizeof(int32_t) * (size_t)len);
        decode_piece(d, piece, len, logits_host, (int64_t)n, done);
        done += len;
    }
    free(piece);
}
