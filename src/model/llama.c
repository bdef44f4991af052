/* The Llama-2 architecture (the baseline): per layer an RMSNorm pre-norm, multi-head causal attention with
 * optional grouped-query key/value heads and RoPE, over the whole sequence, then an RMSNorm pre-norm and a
 * SwiGLU FFN, each with a residual; a final RMSNorm. No biases, no dropout, no carried state. Its
 * parameters, activations and layer forward/backward, written against the same ops as Megalodon (rmsnorm,
 * linear, rope, attention, act); the driver (driver.c) does the rest. docs/model.md describes it.
 *
 * Conventions of this file:
 *  - Norm scales are stored as offsets, as everywhere in this project: the RMSNorm op scales by
 *    (1 + weight), so a stored weight of 0 is Llama's scale 1 (a checkpoint from elsewhere imports
 *    weight - 1).
 *  - RoPE is the project's rope op: interleaved pairs (2i, 2i+1) of each head, angle pos * base^(-2i/dh)
 *    (Meta's original Llama code pairs the same way). Hugging Face checkpoints rotate halves (i, i + dh/2)
 *    instead, and need their q/k rows permuted back on import (docs/model.md).
 *  - Attention is the chunk attention op with the chunk equal to the pass's length: full causal attention
 *    over the whole sequence, scale 1/sqrt(dh).
 *  - Grouped-query attention (num_kv_heads < num_heads): the keys and values of Hkv heads are expanded to
 *    the H query heads by repetition (query head h uses key/value head h / (H / Hkv)) before the attention
 *    op. The expansion is a linear op with a stacked-identity weight E (g*dh x dh, g = H / Hkv) applied to
 *    the (T*Hkv) x dh rows: exact in every dtype, and its backward (dy E) sums the gradients of the g copies
 *    back onto their key/value head. */
#include <math.h>
#include <string.h>

#include "../common.h"
#include "arch.h"

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

static int kv_heads(const MgConfig *c) { return c->num_kv_heads > 0 ? c->num_kv_heads : c->num_heads; }
static int head_dim(const MgConfig *c) { return c->model_dim / c->num_heads; }
/* query heads per key/value head */
static int group(const MgConfig *c) { return c->num_heads / kv_heads(c); }

/* ---- parameters ---------------------------------------------------------------------------------------- */
static void declare_params(const MgConfig *c, MgParamTable *t) {
    const int64_t V = c->vocab_size, d = c->model_dim, f = c->ffn_hidden_dim,
                  kv = (int64_t)kv_heads(c) * head_dim(c);
    const MgInit N = MG_INIT_NORMAL_0_02;
    mg_param_add(t, -1, N, 0, 0, 2, SHAPE(V, d), "embed.weight");
    for (int i = 0; i < c->n_layers; i++) {
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.attn_norm.weight", i);
        mg_param_add(t, i, N, d, 1, 2, SHAPE(d, d), "layers.%d.attn.wq.weight", i);
        mg_param_add(t, i, N, d, 1, 2, SHAPE(kv, d), "layers.%d.attn.wk.weight", i);
        mg_param_add(t, i, N, d, 1, 2, SHAPE(kv, d), "layers.%d.attn.wv.weight", i);
        mg_param_add(t, i, N, d, 1, 2, SHAPE(d, d), "layers.%d.attn.wo.weight", i);
        mg_param_add(t, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.ffn_norm.weight", i);
        mg_param_add(t, i, N, d, 1, 2, SHAPE(f, d), "layers.%d.ffn.fc1.weight", i); /* w1, gate */
        mg_param_add(t, i, N, d, 1, 2, SHAPE(f, d), "layers.%d.ffn.fc3.weight", i); /* w3, up */
        mg_param_add(t, i, N, f, 1, 2, SHAPE(d, f), "layers.%d.ffn.fc2.weight", i); /* w2, down */
    }
    mg_param_add(t, -1, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "final_norm.weight");
    if (!c->share_emb) mg_param_add(t, -1, N, d, 1, 2, SHAPE(V, d), "lm_head.weight");
    else t->matmul_total += V * d; /* the tied embedding is used as the LM head matrix */
}

typedef struct {
    void *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *fc1, *fc3, *fc2;
} LayerW;

static void resolve_layer(const MgModel *m, void *arena, int i, void *view) {
    LayerW *lw = view;
    char name[128];
#define R(field, suffix)                                                                                       \
    do {                                                                                                       \
        snprintf(name, sizeof(name), "layers.%d.%s", i, suffix);                                               \
        lw->field = mg_act_at(m, arena, mg_param_get(&m->table, name)->offset);                                \
    } while (0)
    R(attn_norm, "attn_norm.weight");
    R(wq, "attn.wq.weight");
    R(wk, "attn.wk.weight");
    R(wv, "attn.wv.weight");
    R(wo, "attn.wo.weight");
    R(ffn_norm, "ffn_norm.weight");
    R(fc1, "ffn.fc1.weight");
    R(fc3, "ffn.fc3.weight");
    R(fc2, "ffn.fc2.weight");
#undef R
}

/* ---- carried state: none (attention sees the whole sequence; nothing crosses a cut in time) ------------- */
static void describe_state(const MgConfig *c, MgStateSpec *layer, int *n_layer, MgStateSpec *final, int *n_final) {
    (void)c;
    (void)layer;
    (void)final;
    *n_layer = 0;
    *n_final = 0;
}

/* A pass holds whole sequences: without carried state, a piece of a sequence would not see the keys and
 * values of the pieces before it. Except across ranks (sequence parallelism): with the attention hooks
 * (attn_split) a pass holds one of Lg / L equal slices and its attention sees the earlier slices' keys and
 * values through them (the ring or all-to-all of parallel/sp.c: the whole sequence is one chunk). */
static int check_layout(const MgConfig *c, int L, int64_t pos0, int64_t Lg, int attn_split, char *err,
                        size_t errlen) {
    (void)c;
    if (attn_split && Lg % L == 0 && pos0 % L == 0) return 0;
    if (attn_split)
        return mg_errf(err, errlen,
                       "arch llama across ranks needs equal slices: a pass of %d tokens at position %lld of "
                       "sequences of %lld is not one of them (use an sp that divides seq_len)",
                       L, (long long)pos0, (long long)Lg);
    if (pos0 != 0 || Lg != L)
        return mg_errf(err, errlen,
                       "arch llama runs whole sequences only: a pass of %d tokens at position %lld of sequences of "
                       "%lld would need the keys and values of the tokens before it (llama carries no state "
                       "between pieces)",
                       L, (long long)pos0, (long long)Lg);
    return 0;
}

/* ---- activations ------------------------------------------------------------------------------------------ */
typedef struct {
    void *xn, *rstd1;       /* attention pre-norm output and its statistics */
    void *q, *k, *v;        /* after RoPE (q, k); k and v expanded to the H query heads */
    void *o, *lse;          /* attention output and its row log-sum-exp */
    void *h, *hn, *rstd2;   /* x + o Wo^T (the FFN's residual input), its pre-norm output and statistics */
    void *f1, *f3, *ffh;    /* fc1 (gate), fc3 (up) outputs and silu(f1) * f3 */
    void *expand;           /* grouped-query attention: the stacked identity E (g*dh x dh), else NULL */
    int expand_ready;       /* E written (host flag; the struct is re-made with the arena it points into) */
} LayerAct;

typedef struct {
    void *rstd; /* the final RMSNorm's statistics */
} FinalAct;

typedef struct {
    void *go, *gq, *gk, *gv;  /* T x d */
    void *gkk, *gvv;          /* T x Hkv*dh: key/value gradients before the expansion (grouped-query only;
                               * NULL otherwise) */
    void *gff, *gf1, *gf3;    /* T x f */
} Scratch;

static void plan_layer(const MgConfig *c, MgPlan *p, void *act, int64_t T, int B) {
    (void)B;
    LayerAct *a = act;
    const int64_t d = c->model_dim, f = c->ffn_hidden_dim, H = c->num_heads, dh = head_dim(c), g = group(c);
    mg_plan_add(p, "attention norm out", MG_BUF_ACT, T * d, &a->xn);
    mg_plan_add(p, "attention norm stats", MG_BUF_STAT, T, &a->rstd1);
    mg_plan_add(p, "q, k, v", MG_BUF_ACT, T * d, &a->q);
    mg_plan_add(p, "q, k, v", MG_BUF_ACT, T * d, &a->k);
    mg_plan_add(p, "q, k, v", MG_BUF_ACT, T * d, &a->v);
    mg_plan_add(p, "attention out", MG_BUF_ACT, T * d, &a->o);
    mg_plan_add(p, "attention lse", MG_BUF_STAT, T * H, &a->lse);
    mg_plan_add(p, "ffn residual in", MG_BUF_ACT, T * d, &a->h);
    mg_plan_add(p, "ffn norm out", MG_BUF_ACT, T * d, &a->hn);
    mg_plan_add(p, "ffn norm stats", MG_BUF_STAT, T, &a->rstd2);
    mg_plan_add(p, "ffn hidden", MG_BUF_ACT, T * f, &a->f1);
    mg_plan_add(p, "ffn hidden", MG_BUF_ACT, T * f, &a->f3);
    mg_plan_add(p, "ffn hidden", MG_BUF_ACT, T * f, &a->ffh);
    a->expand = NULL;
    a->expand_ready = 0;
    if (g > 1) mg_plan_add(p, "kv head expansion", MG_BUF_ACT, g * dh * dh, &a->expand);
}

static void plan_final(const MgConfig *c, MgPlan *p, void *fin, int64_t T, int B) {
    (void)c;
    (void)B;
    FinalAct *a = fin;
    mg_plan_add(p, "final norm stats", MG_BUF_STAT, T, &a->rstd);
}

static void plan_scratch(const MgConfig *c, MgPlan *p, void *scratch, int64_t T, int B) {
    (void)B;
    Scratch *s = scratch;
    const int64_t d = c->model_dim, f = c->ffn_hidden_dim, kv = (int64_t)kv_heads(c) * head_dim(c);
    const char *n = "backward scratch";
    mg_plan_add(p, n, MG_BUF_ACT, T * d, &s->go);
    mg_plan_add(p, n, MG_BUF_ACT, T * d, &s->gq);
    mg_plan_add(p, n, MG_BUF_ACT, T * d, &s->gk);
    mg_plan_add(p, n, MG_BUF_ACT, T * d, &s->gv);
    s->gkk = s->gvv = NULL; /* multi-head: the backward uses gk and gv */
    if (group(c) > 1) {
        mg_plan_add(p, n, MG_BUF_ACT, T * kv, &s->gkk);
        mg_plan_add(p, n, MG_BUF_ACT, T * kv, &s->gvv);
    }
    mg_plan_add(p, n, MG_BUF_ACT, T * f, &s->gff);
    mg_plan_add(p, n, MG_BUF_ACT, T * f, &s->gf1);
    mg_plan_add(p, n, MG_BUF_ACT, T * f, &s->gf3);
}

/* ---- grouped-query expansion ------------------------------------------------------------------------------- */
/* Write E = [I; I; ...; I] (g copies of the dh x dh identity, g*dh x dh) once per arena. */
static void ensure_expand(const MgPass *ps, LayerAct *a) {
    if (!a->expand || a->expand_ready) return;
    const MgConfig *c = ps->c;
    const int g = group(c), dh = head_dim(c);
    const size_t es = ps->m->es, n = (size_t)g * dh * dh;
    unsigned char *h = mg_calloc(n, es);
    for (int r = 0; r < g * dh; r++) {
        unsigned char *e = h + ((size_t)r * dh + (size_t)(r % dh)) * es;
        if (ps->be->dtype == MG_F64) {
            const double one = 1.0;
            memcpy(e, &one, es);
        } else if (ps->be->dtype == MG_F32) {
            const float one = 1.0f;
            memcpy(e, &one, es);
        } else {
            MG_CHECK(ps->be->dtype == MG_BF16, "llama: compute dtype %s is not supported",
                     mg_dtype_name(ps->be->dtype));
            const uint16_t one = 0x3F80; /* bfloat16 1.0 */
            memcpy(e, &one, es);
        }
    }
    ps->be->to_device(ps->be, a->expand, h, n * es);
    free(h);
    a->expand_ready = 1;
}

/* src: T x Hkv*dh -> dst: T x H*dh, key/value head j repeated for query heads j*g .. j*g + g - 1. */
static void expand_heads(const MgPass *ps, const LayerAct *a, const void *src, void *dst) {
    const MgConfig *c = ps->c;
    const int g = group(c), dh = head_dim(c);
    mg_linear_fwd(ps, ps->T * kv_heads(c), dh, g * dh, src, a->expand, NULL, dst);
}

/* The gradient of expand_heads: dsrc = the sum of the g copies' gradients. */
static void expand_heads_bwd(const MgPass *ps, const LayerAct *a, const void *ddst, void *dsrc) {
    const MgConfig *c = ps->c;
    const int g = group(c), dh = head_dim(c);
    mg_linear_bwd(ps, ps->T * kv_heads(c), dh, g * dh, NULL, a->expand, ddst, dsrc, NULL, NULL, 0);
}

/* ---- decoding: keys and values of every position so far (expanded to H heads) ------------------------------ */
typedef struct {
    void *k, *v; /* B x seq_len x d each */
} Cache;

static void plan_cache(const MgConfig *c, MgPlan *p, void *cache, int B) {
    Cache *k = cache;
    mg_plan_add(p, "attention cache", MG_BUF_ACT, (int64_t)B * c->seq_len * c->model_dim, &k->k);
    mg_plan_add(p, "attention cache", MG_BUF_ACT, (int64_t)B * c->seq_len * c->model_dim, &k->v);
}

static int decode_piece_max(const MgConfig *c) { return c->seq_len; }
static int decode_room(const MgConfig *c, int64_t pos) { return (int)MG_MAX((int64_t)c->seq_len - pos, 0); }
static int64_t decode_context(const MgConfig *c) { return c->seq_len; }

static void *layer_cache(const MgPass *ps, int l) { return (char *)ps->dec->caches + (size_t)l * sizeof(Cache); }

/* Append the n new keys and values of every sequence at row pos of its cache, then attend the n new queries
 * to rows 0 .. pos + n - 1 (one sequence at a time: each sequence's cache rows are contiguous). */
static void decoder_attention(MgPass *ps, int l, const LayerAct *a) {
    const MgConfig *c = ps->c;
    const MgModel *m = ps->m;
    const int d = c->model_dim, H = c->num_heads, dh = head_dim(c), cap = c->seq_len, n = ps->L;
    const int pos = (int)ps->dec->pos;
    Cache *k = layer_cache(ps, l);
    for (int b = 0; b < ps->B; b++) {
        const size_t row = (size_t)((int64_t)b * cap + pos) * d, piece = (size_t)((int64_t)b * n * d);
        ps->be->copy(ps->be, mg_act_at(m, k->k, (int64_t)row), mg_act_at(m, a->k, (int64_t)piece),
                     (size_t)n * d * m->es);
        ps->be->copy(ps->be, mg_act_at(m, k->v, (int64_t)row), mg_act_at(m, a->v, (int64_t)piece),
                     (size_t)n * d * m->es);
    }
    for (int b = 0; b < ps->B; b++) {
        MgAttentionArgs at = {.B = 1, .H = H, .Dqk = dh, .Dv = dh, .Lq = n, .Lk = pos + n, .chunk = cap,
                              .scale = 1.0 / sqrt((double)dh), .q = mg_act_at(m, a->q, (int64_t)b * n * d),
                              .k = mg_act_at(m, k->k, (int64_t)b * cap * d),
                              .v = mg_act_at(m, k->v, (int64_t)b * cap * d),
                              .o = mg_act_at(m, a->o, (int64_t)b * n * d)};
        ps->be->attention_forward(ps->be, &at);
    }
}

/* ---- the layer ------------------------------------------------------------------------------------------------ */
/* RoPE over a B x L x heads x dh tensor at the pass's positions: pos0.. in training (0 unless the pass is
 * a rank's slice; the chunk is the whole sequence), pos.. in decoding (the chunk is the cache's seq_len
 * positions). */
static MgRopeArgs rope_args(const MgPass *ps, int heads) {
    const MgConfig *c = ps->c;
    MgRopeArgs r = {.B = ps->B, .L = ps->L, .H = heads, .dh = head_dim(c), .base = c->rope_base};
    r.chunk = ps->dec ? c->seq_len : (int)mg_pass_global_len(ps);
    r.pos_offset = ps->dec ? ps->dec->pos : mg_pass_rope_offset(ps);
    return r;
}

/* RoPE in place over a B x L x heads x dh tensor (forward: x; backward: the gradient), in one call, or for a
 * two-piece pass (the zigzag layout: [0, L/2) at pos0, [L/2, L) at pos1) one call per row and piece. */
static void rope_run(const MgPass *ps, int heads, void *t, int backward) {
    MgRopeArgs r = rope_args(ps, heads);
    const int64_t pos1 = mg_pass_pos1(ps);
    const int n = pos1 > 0 ? 2 * ps->B : 1;
    for (int i = 0; i < n; i++) {
        void *p = t;
        if (pos1 > 0) { /* row i / 2, piece i % 2 */
            const int hl = ps->L / 2;
            r.B = 1;
            r.L = hl;
            r.pos_offset = i % 2 ? pos1 : mg_pass_rope_offset(ps);
            p = mg_act_at(ps->m, t, ((int64_t)(i / 2) * ps->L + (int64_t)(i % 2) * hl) * heads * head_dim(ps->c));
        }
        if (backward) {
            r.dy = r.dx = p;
            ps->be->rope_backward(ps->be, &r);
        } else {
            r.x = r.y = p;
            ps->be->rope_forward(ps->be, &r);
        }
    }
}

static MgAttentionArgs attn_args(const MgPass *ps, const LayerAct *a) {
    const MgConfig *c = ps->c;
    const int dh = head_dim(c);
    /* chunk = the whole sequence: a rank's slice (L < chunk) attends across ranks (mg_pass_attention_*) */
    MgAttentionArgs at = {.B = ps->B, .H = c->num_heads, .Dqk = dh, .Dv = dh, .Lq = ps->L, .Lk = ps->L,
                          .chunk = (int)mg_pass_global_len(ps), .scale = 1.0 / sqrt((double)dh), .q = a->q, .k = a->k, .v = a->v,
                          .o = a->o, .saved_lse = a->lse};
    return at;
}

/* x -> xout:  h = x + Attn(RMSNorm(x)) Wo^T;  xout = h + (silu(hn W1^T) * (hn W3^T)) W2^T, hn = RMSNorm(h). */
static void layer_forward(MgPass *ps, int l, void *actv, const void *x, void *xout, MgLayerState *st) {
    (void)st;
    const MgConfig *c = ps->c;
    const MgBackend *be = ps->be;
    const int64_t T = ps->T;
    const int d = c->model_dim, f = c->ffn_hidden_dim, kv = kv_heads(c) * head_dim(c);
    const LayerW *w = mg_layer_w(ps->m, l);
    LayerAct *a = actv;

    MgRMSNormArgs n1 = {.T = T, .D = d, .eps = c->norm_eps, .x = x, .weight = w->attn_norm, .y = a->xn,
                        .saved_rstd = a->rstd1};
    be->rmsnorm_forward(be, &n1);
    mg_linear_fwd(ps, T, d, d, a->xn, w->wq, NULL, a->q);
    /* grouped-query: the Hkv-head keys and values go to o and h first (free until the attention and the
     * residual write them), then are expanded into k and v */
    const int g = group(c);
    void *kk = g > 1 ? a->o : a->k, *vv = g > 1 ? a->h : a->v;
    mg_linear_fwd(ps, T, d, kv, a->xn, w->wk, NULL, kk);
    mg_linear_fwd(ps, T, d, kv, a->xn, w->wv, NULL, vv);
    rope_run(ps, c->num_heads, a->q, 0);
    rope_run(ps, kv_heads(c), kk, 0);
    if (g > 1) {
        ensure_expand(ps, a);
        expand_heads(ps, a, kk, a->k);
        expand_heads(ps, a, vv, a->v);
    }
    if (ps->dec) {
        decoder_attention(ps, l, a);
    } else {
        MgAttentionArgs at = attn_args(ps, a);
        mg_pass_attention_forward(ps, l, &at);
    }
    mg_linear_fwd(ps, T, d, d, a->o, w->wo, NULL, a->h);
    be->axpy(be, T * d, 1.0, x, a->h);

    MgRMSNormArgs n2 = {.T = T, .D = d, .eps = c->norm_eps, .x = a->h, .weight = w->ffn_norm, .y = a->hn,
                        .saved_rstd = a->rstd2};
    be->rmsnorm_forward(be, &n2);
    mg_linear_fwd(ps, T, d, f, a->hn, w->fc1, NULL, a->f1);
    mg_linear_fwd(ps, T, d, f, a->hn, w->fc3, NULL, a->f3);
    mg_act_fwd(ps, MG_ACT_SWIGLU, T * f, a->f1, a->f3, a->ffh);
    mg_linear_fwd(ps, T, f, d, a->ffh, w->fc2, NULL, xout);
    be->axpy(be, T * d, 1.0, a->h, xout);
}

static void layer_backward(MgPass *ps, int l, void *actv, const void *x, void *gx, void *scratch, MgLayerState *st) {
    (void)st;
    const MgConfig *c = ps->c;
    const MgBackend *be = ps->be;
    const int64_t T = ps->T;
    const int d = c->model_dim, f = c->ffn_hidden_dim, kv = kv_heads(c) * head_dim(c);
    const LayerW *w = mg_layer_w(ps->m, l);
    const LayerW *gw = mg_layer_gw(ps->m, l);
    LayerAct *a = actv;
    Scratch *s = scratch;
    void *gn = ps->tmp_d; /* gradient of a norm's output (the FFN's, then the attention's) */
    /* gx holds dL/d(xout); it becomes dL/dh, then dL/dx, in place. */

    /* FFN: xout = h + ffh W2^T, ffh = silu(f1) * f3 */
    mg_linear_bwd(ps, T, f, d, a->ffh, w->fc2, gx, s->gff, gw->fc2, NULL, 0);
    mg_act_bwd(ps, MG_ACT_SWIGLU, T * f, a->f1, a->f3, s->gff, s->gf1, s->gf3, 0);
    mg_linear_bwd(ps, T, d, f, a->hn, w->fc1, s->gf1, gn, gw->fc1, NULL, 0);
    mg_linear_bwd(ps, T, d, f, a->hn, w->fc3, s->gf3, gn, gw->fc3, NULL, 1);
    MgRMSNormArgs n2 = {.T = T, .D = d, .eps = c->norm_eps, .x = a->h, .weight = w->ffn_norm,
                        .saved_rstd = a->rstd2, .dy = gn, .dx = gx, .dweight = gw->ffn_norm, .accumulate = 1};
    be->rmsnorm_backward(be, &n2);

    /* attention: h = x + o Wo^T */
    mg_linear_bwd(ps, T, d, d, a->o, w->wo, gx, s->go, gw->wo, NULL, 0);
    MgAttentionArgs at = attn_args(ps, a);
    at.dout = s->go;
    at.dq = s->gq;
    at.dk = s->gk;
    at.dv = s->gv;
    mg_pass_attention_backward(ps, l, &at);
    void *gkk = s->gk, *gvv = s->gv; /* key/value gradients of the Hkv heads */
    if (group(c) > 1) {
        gkk = s->gkk;
        gvv = s->gvv;
        expand_heads_bwd(ps, a, s->gk, gkk);
        expand_heads_bwd(ps, a, s->gv, gvv);
    }
    rope_run(ps, c->num_heads, s->gq, 1);
    rope_run(ps, kv_heads(c), gkk, 1);
    mg_linear_bwd(ps, T, d, d, a->xn, w->wq, s->gq, gn, gw->wq, NULL, 0);
    mg_linear_bwd(ps, T, d, kv, a->xn, w->wk, gkk, gn, gw->wk, NULL, 1);
    mg_linear_bwd(ps, T, d, kv, a->xn, w->wv, gvv, gn, gw->wv, NULL, 1);
    MgRMSNormArgs n1 = {.T = T, .D = d, .eps = c->norm_eps, .x = x, .weight = w->attn_norm,
                        .saved_rstd = a->rstd1, .dy = gn, .dx = gx, .dweight = gw->attn_norm, .accumulate = 1};
    be->rmsnorm_backward(be, &n1);
}

/* ---- the final RMSNorm -------------------------------------------------------------------------------------- */
static void final_forward(MgPass *ps, void *finv, const void *x, void *y, MgLayerState *st) {
    (void)st;
    FinalAct *fa = finv;
    MgRMSNormArgs n = {.T = ps->T, .D = ps->c->model_dim, .eps = ps->c->norm_eps, .x = x,
                       .weight = mg_model_param(ps->m, "final_norm.weight"), .y = y, .saved_rstd = fa->rstd};
    ps->be->rmsnorm_forward(ps->be, &n);
}

static void final_backward(MgPass *ps, void *finv, const void *x, const void *dy, void *dx, MgLayerState *st) {
    (void)st;
    FinalAct *fa = finv;
    MgRMSNormArgs n = {.T = ps->T, .D = ps->c->model_dim, .eps = ps->c->norm_eps, .x = x,
                       .weight = mg_model_param(ps->m, "final_norm.weight"), .saved_rstd = fa->rstd, .dy = dy,
                       .dx = dx, .dweight = mg_model_grad(ps->m, "final_norm.weight")};
    ps->be->rmsnorm_backward(ps->be, &n);
}

/* Causal attention over the whole sequence, per layer 3 * 2 * (L/2) * (d + d): QK^T over the H query heads'
 * d = H*dh widths and PV over the same, L = seq_len (design.md convention). */
static double attn_flops_per_token(const MgConfig *c) {
    return 3.0 * 2.0 * ((double)c->seq_len / 2.0) * 2.0 * (double)c->model_dim * c->n_layers;
}

const MgArch mg_arch_llama = {
    .name = "llama",
    .declare_params = declare_params,
    .weights_size = sizeof(LayerW),
    .resolve_layer = resolve_layer,
    .describe_state = describe_state,
    .check_layout = check_layout,
    .two_pieces = 1,
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
    .decode_context = decode_context,
    .attn_flops_per_token = attn_flops_per_token,
};
