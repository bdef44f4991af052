/* The Megalodon architecture (spec §1-§5): per layer a TimestepNorm, CEMA, normalised chunk attention
 * with a reset gate, a two-hop residual and a SwiGLU FFN behind a LayerNorm; a final TimestepNorm. Its
 * parameters, activations, carried state (TimestepNorm statistics and CEMA state per layer, and the final
 * TimestepNorm's) and its layer forward/backward; the driver (driver.c) does the rest. */
#include <math.h>
#include <string.h>

#include "../common.h"
#include "arch.h"

/* ---- parameters (canonical names, spec initialisation) ------------------------------------------------- */
#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

static void declare_params(const MgConfig *c, MgParamTable *t) {
    const int64_t V = c->vocab_size, d = c->model_dim, N = c->cema_ndim, z = c->z_dim, v = c->value_dim,
                  f = c->ffn_hidden_dim;
    mg_param_add(t, -1, MG_INIT_EMBED, d, 0, 2, SHAPE(V, d), "embed.weight");
    for (int i = 0; i < c->n_layers; i++) {
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.attn.norm.weight", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.attn.norm.bias", i);
        mg_param_add(t, i, MG_INIT_CEMA_AD, 0, 0, 2, SHAPE(d, N), "layers.%d.attn.cema.alpha", i);
        mg_param_add(t, i, MG_INIT_CEMA_AD, 0, 0, 2, SHAPE(d, N), "layers.%d.attn.cema.delta", i);
        mg_param_add(t, i, MG_INIT_CEMA_THETA, 0, 0, 1, SHAPE(d), "layers.%d.attn.cema.theta", i);
        mg_param_add(t, i, MG_INIT_CEMA_GAMMA, 0, 0, 3, SHAPE(d, N, 2), "layers.%d.attn.cema.gamma", i);
        mg_param_add(t, i, MG_INIT_CEMA_OMEGA, 0, 0, 1, SHAPE(d), "layers.%d.attn.cema.omega", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.attn.rmsnorm.weight", i);
        mg_param_add(t, i, MG_INIT_HE, d, 1, 2, SHAPE(z, d), "layers.%d.attn.wz.weight", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(z), "layers.%d.attn.wz.bias", i);
        mg_param_add(t, i, MG_INIT_HE, d, 1, 2, SHAPE(v, d), "layers.%d.attn.wv.weight", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(v), "layers.%d.attn.wv.bias", i);
        mg_param_add(t, i, MG_INIT_HE, d, 1, 2, SHAPE(v, d), "layers.%d.attn.wr.weight", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(v), "layers.%d.attn.wr.bias", i);
        mg_param_add(t, i, MG_INIT_HE, d, 1, 2, SHAPE(d, d), "layers.%d.attn.wh1.weight", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.attn.wh1.bias", i);
        mg_param_add(t, i, MG_INIT_HE, v, 1, 2, SHAPE(d, v), "layers.%d.attn.wh2.weight", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 2, SHAPE(2, z), "layers.%d.attn.qk_gamma", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 2, SHAPE(2, z), "layers.%d.attn.qk_beta", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.ffn.norm.weight", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.ffn.norm.bias", i);
        mg_param_add(t, i, MG_INIT_HE, d, 1, 2, SHAPE(f, d), "layers.%d.ffn.fc1.weight", i);
        if (c->swiglu) mg_param_add(t, i, MG_INIT_HE, d, 1, 2, SHAPE(f, d), "layers.%d.ffn.fc3.weight", i);
        mg_param_add(t, i, MG_INIT_HE, f, 1, 2, SHAPE(d, f), "layers.%d.ffn.fc2.weight", i);
    }
    mg_param_add(t, -1, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "final_norm.weight");
    mg_param_add(t, -1, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "final_norm.bias");
    if (!c->share_emb) mg_param_add(t, -1, MG_INIT_EMBED, d, 1, 2, SHAPE(V, d), "lm_head.weight");
    else t->matmul_total += V * d; /* the tied embedding is used as the LM head matrix */
}

/* Parameter (or gradient) pointers of one layer, resolved once from the table. */
typedef struct {
    void *tsn_w, *tsn_b, *alpha, *delta, *theta, *gamma, *omega, *rms_w, *wz, *bz, *wv, *bv, *wr, *br, *wh1,
        *bh1, *wh2, *qk_gamma, *qk_beta, *ln_w, *ln_b, *fc1, *fc3, *fc2;
} LayerW;

/* The final TimestepNorm's parameters are found by name each pass (two lookups, negligible). */
typedef struct {
    void *w, *b, *gw, *gb;
} FinalW;

static void resolve_layer(const MgModel *m, void *arena, int i, void *view) {
    LayerW *lw = view;
    char name[128];
#define R(field, suffix)                                                                               \
    do {                                                                                               \
        snprintf(name, sizeof(name), "layers.%d.%s", i, suffix);                                       \
        int idx = mg_param_find(&m->table, name);                                                      \
        lw->field = idx >= 0 ? mg_act_at(m, arena, m->table.params[idx].offset) : NULL;                \
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

static FinalW final_weights(const MgModel *m) {
    FinalW f;
    f.w = mg_model_param((MgModel *)m, "final_norm.weight");
    f.b = mg_model_param((MgModel *)m, "final_norm.bias");
    f.gw = mg_model_grad((MgModel *)m, "final_norm.weight");
    f.gb = mg_model_grad((MgModel *)m, "final_norm.bias");
    return f;
}

/* ---- carried state ---------------------------------------------------------------------------------------- */
enum { S_COUNT = 0, S_MEAN, S_VAR, S_H };
enum { G_TSN = 0, G_CEMA = 1 };

static void tsn_specs(const MgConfig *c, MgStateSpec *s) {
    const int64_t G = c->norm_num_groups;
    s[S_COUNT] = (MgStateSpec){"timestep_norm.count", "count", G_TSN, "timestep_norm", 1, 1, 0.0};
    s[S_MEAN] = (MgStateSpec){"timestep_norm.mean", "mean", G_TSN, "timestep_norm", 0, G, 0.0};
    /* var = 1 (the fresh prior); it is overwritten by the first token because the count is 0. */
    s[S_VAR] = (MgStateSpec){"timestep_norm.var", "var", G_TSN, "timestep_norm", 0, G, 1.0};
}

static void describe_state(const MgConfig *c, MgStateSpec *layer, int *n_layer, MgStateSpec *final, int *n_final) {
    tsn_specs(c, layer);
    layer[S_H] = (MgStateSpec){"cema.h", "h", G_CEMA, "cema", 0, (int64_t)c->model_dim * c->cema_ndim * 2, 0.0};
    *n_layer = 4;
    tsn_specs(c, final);
    *n_final = 3;
}

/* Pieces of a sequence must hold whole attention chunks (attention never crosses a chunk boundary, so
 * chunks are independent); only then does carrying the state reproduce the whole sequence exactly. */
static int check_layout(const MgConfig *c, int L, int64_t pos0, int64_t Lg, int attn_split, char *err,
                        size_t errlen) {
    const int ch = c->chunk_size;
    if (L > ch && L % ch != 0)
        return mg_errf(err, errlen,
                       "sequence length %d cannot be split into attention chunks of %d: use a length below %d or a "
                       "multiple of it (e.g. %d or %d)",
                       L, ch, ch, (L / ch) * ch, (L / ch + 1) * ch);
    if (pos0 == 0 && Lg == L) return 0;
    const int64_t cg = MG_MIN((int64_t)ch, Lg); /* the chunk's length */
    if (attn_split && L < cg) { /* a piece of a chunk, its earlier keys and values brought by the hooks */
        if (cg % L || pos0 % L || Lg % cg)
            return mg_errf(err, errlen,
                           "a piece of %d tokens at position %lld of sequences of %lld does not divide the attention "
                           "chunk of %lld tokens: pieces shorter than a chunk must cut it into equal parts",
                           L, (long long)pos0, (long long)Lg, (long long)cg);
        return 0;
    }
    if (L % ch || pos0 % ch || Lg % ch)
        return mg_errf(err, errlen,
                       "a piece of %d tokens at position %lld of sequences of %lld is not made of whole attention "
                       "chunks of %d: cut sequences at multiples of chunk_size",
                       L, (long long)pos0, (long long)Lg, ch);
    return 0;
}

/* ---- activations ------------------------------------------------------------------------------------------ */
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
    void *mean, *rstd; /* the final TimestepNorm's running statistics */
} FinalAct;

/* Backward scratch, reused by every layer (with the driver's free T x d buffer ps->tmp_d). */
typedef struct {
    void *gB, *gm, *gxn;   /* T x d */
    void *ghff, *gf1, *gf3; /* T x f */
    void *gog, *grpre, *go; /* T x v */
    void *gq, *gk, *gz;    /* T x z */
} Scratch;

static void plan_layer(const MgConfig *c, MgPlan *p, void *act, int64_t T, int B) {
    (void)B;
    LayerAct *a = act;
    const int64_t d = c->model_dim, z = c->z_dim, v = c->value_dim, f = c->ffn_hidden_dim, G = c->norm_num_groups,
                  H = c->num_heads;
    mg_plan_add(p, "timestep norm out", MG_BUF_ACT, T * d, &a->xn);
    mg_plan_add(p, "timestep norm stats", MG_BUF_STAT, T * G, &a->tsn_mean);
    mg_plan_add(p, "timestep norm stats", MG_BUF_STAT, T * G, &a->tsn_rstd);
    mg_plan_add(p, "cema out", MG_BUF_ACT, T * d, &a->cema);
    mg_plan_add(p, "rmsnorm out", MG_BUF_ACT, T * d, &a->m);
    mg_plan_add(p, "rmsnorm stats", MG_BUF_STAT, T, &a->rms_rstd);
    mg_plan_add(p, "z", MG_BUF_ACT, T * z, &a->z);
    mg_plan_add(p, "q, k", MG_BUF_ACT, T * z, &a->q);
    mg_plan_add(p, "q, k", MG_BUF_ACT, T * z, &a->k);
    mg_plan_add(p, "qk norm stats", MG_BUF_STAT, T * H, &a->qk_rstd);
    mg_plan_add(p, "values", MG_BUF_ACT, T * v, &a->vpre);
    mg_plan_add(p, "values", MG_BUF_ACT, T * v, &a->v);
    mg_plan_add(p, "reset gate", MG_BUF_ACT, T * v, &a->rpre);
    mg_plan_add(p, "attention out", MG_BUF_ACT, T * v, &a->o);
    mg_plan_add(p, "attention lse", MG_BUF_STAT, T * H, &a->lse);
    mg_plan_add(p, "gated attention", MG_BUF_ACT, T * v, &a->og);
    mg_plan_add(p, "ffn norm in", MG_BUF_ACT, T * d, &a->yhat);
    mg_plan_add(p, "ffn norm out", MG_BUF_ACT, T * d, &a->u);
    mg_plan_add(p, "ffn norm stats", MG_BUF_STAT, T, &a->ln_mean);
    mg_plan_add(p, "ffn norm stats", MG_BUF_STAT, T, &a->ln_rstd);
    mg_plan_add(p, "ffn hidden", MG_BUF_ACT, T * f, &a->f1);
    if (c->swiglu) mg_plan_add(p, "ffn hidden", MG_BUF_ACT, T * f, &a->f3);
    mg_plan_add(p, "ffn hidden", MG_BUF_ACT, T * f, &a->hff);
}

static void plan_final(const MgConfig *c, MgPlan *p, void *fin, int64_t T, int B) {
    (void)B;
    FinalAct *a = fin;
    mg_plan_add(p, "final norm stats", MG_BUF_STAT, T * c->norm_num_groups, &a->mean);
    mg_plan_add(p, "final norm stats", MG_BUF_STAT, T * c->norm_num_groups, &a->rstd);
}

static void plan_scratch(const MgConfig *c, MgPlan *p, void *scratch, int64_t T, int B) {
    (void)B;
    Scratch *s = scratch;
    const int64_t d = c->model_dim, z = c->z_dim, v = c->value_dim, f = c->ffn_hidden_dim;
    const char *n = "backward scratch";
    mg_plan_add(p, n, MG_BUF_ACT, T * d, &s->gB);
    mg_plan_add(p, n, MG_BUF_ACT, T * d, &s->gm);
    mg_plan_add(p, n, MG_BUF_ACT, T * d, &s->gxn);
    mg_plan_add(p, n, MG_BUF_ACT, T * f, &s->ghff);
    mg_plan_add(p, n, MG_BUF_ACT, T * f, &s->gf1);
    if (c->swiglu) mg_plan_add(p, n, MG_BUF_ACT, T * f, &s->gf3);
    mg_plan_add(p, n, MG_BUF_ACT, T * v, &s->gog);
    mg_plan_add(p, n, MG_BUF_ACT, T * v, &s->grpre);
    mg_plan_add(p, n, MG_BUF_ACT, T * v, &s->go);
    mg_plan_add(p, n, MG_BUF_ACT, T * z, &s->gq);
    mg_plan_add(p, n, MG_BUF_ACT, T * z, &s->gk);
    mg_plan_add(p, n, MG_BUF_ACT, T * z, &s->gz);
}

/* ---- decoding: the keys and values of the current chunk ----------------------------------------------------- */
typedef struct {
    void *k, *v; /* B x chunk x z, B x chunk x v */
} Cache;

static void plan_cache(const MgConfig *c, MgPlan *p, void *cache, int B) {
    Cache *k = cache;
    mg_plan_add(p, "attention cache", MG_BUF_ACT, (int64_t)B * c->chunk_size * c->z_dim, &k->k);
    mg_plan_add(p, "attention cache", MG_BUF_ACT, (int64_t)B * c->chunk_size * c->value_dim, &k->v);
}

static int decode_piece_max(const MgConfig *c) { return c->chunk_size; }
/* A piece never crosses a chunk boundary: at the boundary attention starts afresh. */
static int decode_room(const MgConfig *c, int64_t pos) { return c->chunk_size - (int)(pos % c->chunk_size); }

/* Append the n new keys/values of each sequence (B x n x w, contiguous) at row cache_len of its cache. */
static void cache_append(const MgPass *ps, void *cache, const void *src, int n, int w, int cache_len) {
    const MgModel *m = ps->m;
    const int cap = ps->c->chunk_size;
    for (int b = 0; b < ps->B; b++) {
        void *dst = mg_act_at(m, cache, ((int64_t)b * cap + cache_len) * w);
        const void *s = mg_act_at(m, src, (int64_t)b * n * w);
        ps->be->copy(ps->be, dst, s, (size_t)((int64_t)n * w) * m->es);
    }
}

/* Attention of the n new queries of layer l against the current chunk's cached keys and values (the n
 * new ones appended first); one sequence at a time, since each sequence's cache rows are contiguous. */
static void decoder_attention(MgPass *ps, int l, const LayerAct *a, int n) {
    const MgConfig *c = ps->c;
    const MgModel *m = ps->m;
    const int z = c->z_dim, v = c->value_dim, H = c->num_heads, cap = c->chunk_size;
    Cache *k = (Cache *)((char *)ps->dec->caches + (size_t)l * sizeof(Cache));
    const int cache_len = (int)(ps->dec->pos % cap);
    cache_append(ps, k->k, a->k, n, z, cache_len);
    cache_append(ps, k->v, a->v, n, v, cache_len);
    for (int b = 0; b < ps->B; b++) {
        MgAttentionArgs at = {.B = 1, .H = H, .Dqk = z / H, .Dv = v / H, .Lq = n, .Lk = cache_len + n,
                              .chunk = cap, .scale = 1.0, .q = mg_act_at(m, a->q, (int64_t)b * n * z),
                              .k = mg_act_at(m, k->k, (int64_t)b * cap * z),
                              .v = mg_act_at(m, k->v, (int64_t)b * cap * v),
                              .o = mg_act_at(m, a->o, (int64_t)b * n * v)};
        ps->be->attention_forward(ps->be, &at);
    }
}

/* ---- the layer ------------------------------------------------------------------------------------------------ */
/* Dropout sites, numbered so each (layer, site) gets its own mask stream. */
enum { DROP_M = 1, DROP_OG, DROP_HH, DROP_HFF, DROP_FFN_OUT, DROP_ATTN };

static void tsn_args(const MgPass *ps, const void *x, const void *w, const void *b, MgTimestepNormArgs *a) {
    const MgConfig *c = ps->c;
    *a = (MgTimestepNormArgs){.B = ps->B, .L = ps->L, .D = c->model_dim, .G = c->norm_num_groups, .eps = c->norm_eps,
                              .x = x, .weight = w, .bias = b};
}

static void tsn_state(MgTimestepNormArgs *a, const MgLayerState *st) {
    a->count_in = st->in[S_COUNT];
    a->mean_in = st->in[S_MEAN];
    a->var_in = st->in[S_VAR];
    a->count_out = st->out[S_COUNT];
    a->mean_out = st->out[S_MEAN];
    a->var_out = st->out[S_VAR];
}

/* A TimestepNorm with its carried state and the state exchange around it (layer l; n_layers = final). */
static void tsn_forward(MgPass *ps, int l, MgTimestepNormArgs *a, const MgLayerState *st) {
    const MgBackend *be = ps->be;
    if (mg_pass_exchanges(ps)) {
        /* this slice's statistics from a fresh state, then the exchange gives the incoming state */
        MgTimestepNormArgs loc = *a;
        loc.count_out = mg_pass_local(ps, l, S_COUNT);
        loc.mean_out = mg_pass_local(ps, l, S_MEAN);
        loc.var_out = mg_pass_local(ps, l, S_VAR);
        be->timestep_norm_forward(be, &loc);
        mg_pass_state_begin(ps, l, G_TSN, st, a);
        mg_pass_state_end(ps, l, G_TSN, st, a);
    }
    tsn_state(a, st);
    be->timestep_norm_forward(be, a);
    mg_pass_state_done(ps, l, G_TSN, st, a);
}

static void tsn_backward(MgPass *ps, int l, MgTimestepNormArgs *a, MgLayerState *st) {
    const MgBackend *be = ps->be;
    a->count_in = st->in[S_COUNT];
    a->mean_in = st->in[S_MEAN];
    a->var_in = st->in[S_VAR];
    a->dmean_in = st->din[S_MEAN];
    a->dvar_in = st->din[S_VAR];
    if (mg_pass_scan_backward(ps)) {
        /* this slice's own part (zero outgoing-state gradient), the scan, then the outgoing part alone */
        a->dmean_out = a->dvar_out = NULL;
        be->timestep_norm_backward(be, a);
        mg_pass_dstate_scan(ps, l, G_TSN, st, a);
        MgTimestepNormArgs b = *a;
        b.dy = mg_pass_zeros(ps, (int64_t)ps->B * ps->L * a->D);
        b.dmean_out = st->dout[S_MEAN];
        b.dvar_out = st->dout[S_VAR];
        b.dmean_in = mg_pass_din_extra(ps, l, S_MEAN);
        b.dvar_in = mg_pass_din_extra(ps, l, S_VAR);
        b.accumulate = 1;
        be->timestep_norm_backward(be, &b);
        const int64_t n = (int64_t)ps->B * a->G;
        mg_state_axpy(ps, n, b.dmean_in, st->din[S_MEAN]);
        mg_state_axpy(ps, n, b.dvar_in, st->din[S_VAR]);
    } else {
        mg_pass_dstate_get(ps, l, G_TSN, st);
        a->dmean_out = st->dout[S_MEAN];
        a->dvar_out = st->dout[S_VAR];
        be->timestep_norm_backward(be, a);
    }
    mg_pass_dstate_done(ps, l, G_TSN, st);
}

/* One Megalodon block (spec §1.2, §4, §1.3): x -> xout, keeping its intermediate tensors in `act`.
 * In decoding (ps->dec) keys and values go to the current-chunk cache and the new queries attend to it,
 * with RoPE positions continuing inside the chunk. The value projection reads only the TimestepNorm
 * output, so it runs between the CEMA state exchange's begin and end. */
static void layer_forward(MgPass *ps, int l, void *actv, const void *x, void *xout, MgLayerState *st) {
    const MgConfig *c = ps->c;
    const MgBackend *be = ps->be;
    const int64_t T = ps->T;
    const int d = c->model_dim, z = c->z_dim, v = c->value_dim, f = c->ffn_hidden_dim, H = c->num_heads;
    const LayerW *w = mg_layer_w(ps->m, l);
    LayerAct *a = actv;

    MgTimestepNormArgs tsn;
    tsn_args(ps, x, w->tsn_w, w->tsn_b, &tsn);
    tsn.y = a->xn;
    tsn.saved_mean = a->tsn_mean;
    tsn.saved_rstd = a->tsn_rstd;
    tsn_forward(ps, l, &tsn, st);

    MgCemaArgs cema = {.B = ps->B, .L = ps->L, .D = d, .N = c->cema_ndim, .x = a->xn, .alpha = w->alpha,
                       .delta = w->delta, .theta = w->theta, .gamma = w->gamma, .omega = w->omega};
    const int xchg = mg_pass_exchanges(ps);
    if (xchg) {
        MgCemaArgs loc = cema; /* the state reached from h = 0 */
        loc.h_out = mg_pass_local(ps, l, S_H);
        be->cema_forward(be, &loc);
        mg_pass_state_begin(ps, l, G_CEMA, st, &cema);
    }
    mg_linear_fwd(ps, T, d, v, a->xn, w->wv, w->bv, a->vpre);
    mg_act_fwd(ps, MG_ACT_SILU, T * v, a->vpre, NULL, a->v);
    if (xchg) mg_pass_state_end(ps, l, G_CEMA, st, &cema);
    cema.h_in = st->in[S_H];
    cema.h_out = st->out[S_H];
    cema.y = a->cema;
    be->cema_forward(be, &cema);
    mg_pass_state_done(ps, l, G_CEMA, st, &cema);

    MgRMSNormArgs rms = {.T = T, .D = d, .eps = c->norm_eps, .x = a->cema, .weight = w->rms_w, .y = a->m,
                         .saved_rstd = a->rms_rstd};
    be->rmsnorm_forward(be, &rms);
    mg_dropout_fwd(ps, c->hidden_dropout, l, DROP_M, d, a->m);

    mg_linear_fwd(ps, T, d, z, a->m, w->wz, w->bz, a->z);
    MgQKNormArgs qk = {.T = T, .Z = z, .H = H, .eps = c->norm_eps, .z = a->z, .gamma = w->qk_gamma,
                       .beta = w->qk_beta, .q = a->q, .k = a->k, .saved_rstd = a->qk_rstd};
    be->qknorm_forward(be, &qk);
    MgRopeArgs rq = {.B = ps->B, .L = ps->L, .H = H, .dh = z / H, .chunk = c->chunk_size,
                     .pos_offset = ps->dec ? ps->dec->pos % c->chunk_size : mg_pass_rope_offset(ps) % c->chunk_size,
                     .base = c->rope_base, .x = a->q, .y = a->q};
    be->rope_forward(be, &rq);
    MgRopeArgs rk = rq;
    rk.x = rk.y = a->k;
    be->rope_forward(be, &rk);

    mg_linear_fwd(ps, T, d, v, a->m, w->wr, w->br, a->rpre);

    if (ps->dec) {
        decoder_attention(ps, l, a, ps->L);
    } else {
        MgAttentionArgs at = {.B = ps->B, .H = H, .Dqk = z / H, .Dv = v / H, .Lq = ps->L, .Lk = ps->L,
                              .chunk = c->chunk_size, .scale = 1.0, .q = a->q, .k = a->k, .v = a->v, .o = a->o,
                              .saved_lse = a->lse};
        mg_attention_dropout(ps, l, DROP_ATTN, &at);
        mg_pass_attention_forward(ps, l, &at); /* a chunk longer than this slice: across ranks */
    }
    mg_act_fwd(ps, MG_ACT_SWIGLU, T * v, a->rpre, a->o, a->og);
    mg_dropout_fwd(ps, c->hidden_dropout, l, DROP_OG, v, a->og);

    /* Hh = M Wh1^T + b + Og Wh2^T, computed into yhat (u is free until the LayerNorm), then
     * yhat = X + dropout(Hh). */
    mg_linear_fwd(ps, T, d, d, a->m, w->wh1, w->bh1, a->yhat);
    mg_linear_fwd(ps, T, v, d, a->og, w->wh2, NULL, a->u);
    be->axpy(be, T * d, 1.0, a->u, a->yhat);
    mg_dropout_fwd(ps, c->dropout, l, DROP_HH, d, a->yhat);
    be->axpy(be, T * d, 1.0, x, a->yhat);

    MgLayerNormArgs ln = {.T = T, .D = d, .eps = c->norm_eps, .x = a->yhat, .weight = w->ln_w,
                          .bias = w->ln_b, .y = a->u, .saved_mean = a->ln_mean, .saved_rstd = a->ln_rstd};
    be->layernorm_forward(be, &ln);
    mg_linear_fwd(ps, T, d, f, a->u, w->fc1, NULL, a->f1);
    if (c->swiglu) {
        mg_linear_fwd(ps, T, d, f, a->u, w->fc3, NULL, a->f3);
        mg_act_fwd(ps, MG_ACT_SWIGLU, T * f, a->f1, a->f3, a->hff);
    } else {
        mg_act_fwd(ps, MG_ACT_SILU, T * f, a->f1, NULL, a->hff);
    }
    mg_dropout_fwd(ps, c->hidden_dropout, l, DROP_HFF, f, a->hff);
    mg_linear_fwd(ps, T, f, d, a->hff, w->fc2, NULL, xout);
    mg_dropout_fwd(ps, c->dropout, l, DROP_FFN_OUT, d, xout);
    be->axpy(be, T * d, 1.0, x, xout); /* two-hop residual: the block input, not yhat */
}

static void layer_backward(MgPass *ps, int l, void *actv, const void *x, void *gx, void *scratch, MgLayerState *st) {
    const MgConfig *c = ps->c;
    const MgBackend *be = ps->be;
    const int64_t T = ps->T;
    const int d = c->model_dim, z = c->z_dim, v = c->value_dim, f = c->ffn_hidden_dim, H = c->num_heads;
    const LayerW *w = mg_layer_w(ps->m, l);
    const LayerW *gw = mg_layer_gw(ps->m, l);
    LayerAct *a = actv;
    Scratch *s = scratch;
    void *gC = ps->tmp_d;
    /* gx holds dL/d(x[l+1]); it becomes dL/d(x[l]) in place (both residual hops add into it). */

    /* FFN: x[l+1] = x[l] + dropout(fc2(hff)) */
    mg_dropout_bwd(ps, c->dropout, l, DROP_FFN_OUT, d, gx, s->gB);
    mg_linear_bwd(ps, T, f, d, a->hff, w->fc2, s->gB, s->ghff, gw->fc2, NULL, 0);
    mg_dropout_bwd(ps, c->hidden_dropout, l, DROP_HFF, f, s->ghff, s->ghff);
    if (c->swiglu) {
        mg_act_bwd(ps, MG_ACT_SWIGLU, T * f, a->f1, a->f3, s->ghff, s->gf1, s->gf3, 0);
        mg_linear_bwd(ps, T, d, f, a->u, w->fc1, s->gf1, s->gB, gw->fc1, NULL, 0);
        mg_linear_bwd(ps, T, d, f, a->u, w->fc3, s->gf3, s->gB, gw->fc3, NULL, 1);
    } else {
        mg_act_bwd(ps, MG_ACT_SILU, T * f, a->f1, NULL, s->ghff, s->gf1, NULL, 0);
        mg_linear_bwd(ps, T, d, f, a->u, w->fc1, s->gf1, s->gB, gw->fc1, NULL, 0);
    }
    MgLayerNormArgs ln = {.T = T, .D = d, .eps = c->norm_eps, .x = a->yhat, .weight = w->ln_w,
                          .bias = w->ln_b, .saved_mean = a->ln_mean, .saved_rstd = a->ln_rstd, .dy = s->gB,
                          .dx = gC, .dweight = gw->ln_w, .dbias = gw->ln_b};
    be->layernorm_backward(be, &ln);
    /* yhat = x + dropout(Hh): the residual part reaches x directly */
    be->axpy(be, T * d, 1.0, gC, gx);
    mg_dropout_bwd(ps, c->dropout, l, DROP_HH, d, gC, gC);

    /* Hh = M Wh1^T + b + Og Wh2^T */
    mg_linear_bwd(ps, T, d, d, a->m, w->wh1, gC, s->gm, gw->wh1, gw->bh1, 0);
    mg_linear_bwd(ps, T, v, d, a->og, w->wh2, gC, s->gog, gw->wh2, NULL, 0);
    mg_dropout_bwd(ps, c->hidden_dropout, l, DROP_OG, v, s->gog, s->gog);
    mg_act_bwd(ps, MG_ACT_SWIGLU, T * v, a->rpre, a->o, s->gog, s->grpre, s->go, 0);
    mg_linear_bwd(ps, T, d, v, a->m, w->wr, s->grpre, s->gm, gw->wr, gw->br, 1);

    /* attention: the value gradient goes to gog (free again) */
    void *gv = s->gog;
    MgAttentionArgs at = {.B = ps->B, .H = H, .Dqk = z / H, .Dv = v / H, .Lq = ps->L, .Lk = ps->L,
                          .chunk = c->chunk_size, .scale = 1.0, .q = a->q, .k = a->k, .v = a->v, .o = a->o,
                          .saved_lse = a->lse, .dout = s->go, .dq = s->gq, .dk = s->gk, .dv = gv};
    mg_attention_dropout(ps, l, DROP_ATTN, &at);
    mg_pass_attention_backward(ps, l, &at);
    MgRopeArgs rq = {.B = ps->B, .L = ps->L, .H = H, .dh = z / H, .chunk = c->chunk_size,
                     .pos_offset = mg_pass_rope_offset(ps) % c->chunk_size, .base = c->rope_base, .dy = s->gq,
                     .dx = s->gq};
    be->rope_backward(be, &rq);
    MgRopeArgs rk = rq;
    rk.dy = rk.dx = s->gk;
    be->rope_backward(be, &rk);
    MgQKNormArgs qk = {.T = T, .Z = z, .H = H, .eps = c->norm_eps, .z = a->z, .gamma = w->qk_gamma,
                       .beta = w->qk_beta, .saved_rstd = a->qk_rstd, .dq = s->gq, .dk = s->gk, .dz = s->gz,
                       .dgamma = gw->qk_gamma, .dbeta = gw->qk_beta};
    be->qknorm_backward(be, &qk);
    mg_linear_bwd(ps, T, d, z, a->m, w->wz, s->gz, s->gm, gw->wz, gw->bz, 1);

    /* values: V = silu(Xn Wv^T + bv) */
    mg_act_bwd(ps, MG_ACT_SILU, T * v, a->vpre, NULL, gv, gv, NULL, 0);
    mg_linear_bwd(ps, T, d, v, a->xn, w->wv, gv, s->gxn, gw->wv, gw->bv, 0);

    /* M = dropout(RMSNorm(CEMA(Xn))) */
    mg_dropout_bwd(ps, c->hidden_dropout, l, DROP_M, d, s->gm, s->gm);
    MgRMSNormArgs rms = {.T = T, .D = d, .eps = c->norm_eps, .x = a->cema, .weight = w->rms_w,
                         .saved_rstd = a->rms_rstd, .dy = s->gm, .dx = s->gB, .dweight = gw->rms_w};
    be->rmsnorm_backward(be, &rms);
    MgCemaArgs cema = {.B = ps->B, .L = ps->L, .D = d, .N = c->cema_ndim, .x = a->xn, .alpha = w->alpha,
                       .delta = w->delta, .theta = w->theta, .gamma = w->gamma, .omega = w->omega,
                       .h_in = st->in[S_H], .dy = s->gB, .dx = s->gxn, .dalpha = gw->alpha, .ddelta = gw->delta,
                       .dtheta = gw->theta, .dgamma = gw->gamma, .domega = gw->omega, .dh_in = st->din[S_H],
                       .accumulate = 1};
    if (mg_pass_scan_backward(ps)) {
        /* this slice's own part (zero outgoing-state gradient), the scan, then the outgoing part alone */
        be->cema_backward(be, &cema);
        mg_pass_dstate_scan(ps, l, G_CEMA, st, &cema);
        MgCemaArgs b = cema;
        b.dy = mg_pass_zeros(ps, T * d);
        b.dh_out = st->dout[S_H];
        b.dh_in = mg_pass_din_extra(ps, l, S_H);
        be->cema_backward(be, &b);
        mg_state_axpy(ps, (int64_t)ps->B * d * c->cema_ndim * 2, b.dh_in, st->din[S_H]);
    } else {
        mg_pass_dstate_get(ps, l, G_CEMA, st);
        cema.dh_out = st->dout[S_H];
        be->cema_backward(be, &cema);
    }
    mg_pass_dstate_done(ps, l, G_CEMA, st);

    MgTimestepNormArgs tsn;
    tsn_args(ps, x, w->tsn_w, w->tsn_b, &tsn);
    tsn.saved_mean = a->tsn_mean;
    tsn.saved_rstd = a->tsn_rstd;
    tsn.dy = s->gxn;
    tsn.dx = gx;
    tsn.dweight = gw->tsn_w;
    tsn.dbias = gw->tsn_b;
    tsn.accumulate = 1;
    tsn_backward(ps, l, &tsn, st);
}

/* ---- the final TimestepNorm ------------------------------------------------------------------------------------ */
static void final_forward(MgPass *ps, void *finv, const void *x, void *y, MgLayerState *st) {
    FinalAct *fa = finv;
    FinalW fw = final_weights(ps->m);
    MgTimestepNormArgs fn;
    tsn_args(ps, x, fw.w, fw.b, &fn);
    fn.y = y;
    fn.saved_mean = fa->mean;
    fn.saved_rstd = fa->rstd;
    tsn_forward(ps, ps->c->n_layers, &fn, st);
}

static void final_backward(MgPass *ps, void *finv, const void *x, const void *dy, void *dx, MgLayerState *st) {
    FinalAct *fa = finv;
    FinalW fw = final_weights(ps->m);
    MgTimestepNormArgs fn;
    tsn_args(ps, x, fw.w, fw.b, &fn);
    fn.saved_mean = fa->mean;
    fn.saved_rstd = fa->rstd;
    fn.dy = dy;
    fn.dx = dx;
    fn.dweight = fw.gw;
    fn.dbias = fw.gb;
    tsn_backward(ps, ps->c->n_layers, &fn, st);
}

/* Chunk attention, per layer 3 * 2 * (c/2) * (z + v) with c = min(chunk_size, seq_len) (design.md). */
static double attn_flops_per_token(const MgConfig *c) {
    double c_eff = (double)MG_MIN(c->chunk_size, c->seq_len > 0 ? c->seq_len : c->chunk_size);
    return 3.0 * 2.0 * (c_eff / 2.0) * (double)(c->z_dim + c->value_dim) * c->n_layers;
}

const MgArch mg_arch_megalodon = {
    .name = "megalodon",
    .declare_params = declare_params,
    .weights_size = sizeof(LayerW),
    .resolve_layer = resolve_layer,
    .describe_state = describe_state,
    .check_layout = check_layout,
    .act_size = sizeof(LayerAct),
    .final_size = sizeof(FinalAct),
    .scratch_size = sizeof(Scratch),
    .plan_layer = plan_layer,
    .plan_final = plan_final,
    .plan_scratch = plan_scratch,
    .layer_forward = layer_forward,
    .layer_backward = layer_backward,
    .final_forward = final_forward,
    .final_backward = final_backward,
    .cache_size = sizeof(Cache),
    .plan_cache = plan_cache,
    .decode_piece_max = decode_piece_max,
    .decode_room = decode_room,
    .attn_flops_per_token = attn_flops_per_token,
};
