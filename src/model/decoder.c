/* The recurrent decoder harness, shared by every architecture: it feeds tokens in pieces the architecture
 * allows (Megalodon: never across an attention-chunk boundary), carries the state between pieces in a
 * double buffer (an op never reads and writes one buffer), runs the layers in decoding mode against the
 * architecture's per-layer cache, and applies the LM head to the positions asked for. All memory is
 * planned and allocated once, with the same plan functions as training (arch->plan_layer for one layer's
 * work buffers, reused by every layer); a step allocates nothing. */
#include <string.h>

#include "../common.h"
#include "../signals.h"
#include "arch.h"

struct MgDecoder {
    MgModel *m;
    int B, cap;              /* cap: the most tokens one piece may hold */
    MgModelState *st[2];
    int cur;
    int64_t pos;             /* tokens consumed per sequence */
    char *caches;            /* n_layers cache structs */
    void *act, *fin;         /* one layer's work buffers (reused by every layer) and the final norm's */
    void *x, *x2, *fn, *logits;
    int32_t *tok_dev;
    MgPlan plan;
    void *arena;
    int32_t *piece;          /* host: B x cap */
    float *last_logits;      /* host: B x V */
    double *tmp64;           /* host: V (float64 logits -> float) */
    size_t bytes;            /* backend bytes: arena and the two states */
};

/* The decoder's buffers for B sequences: every layer's attention cache, one layer's and the final norm's
 * work buffers for a piece of `cap` tokens, the residual streams, the logits and the token ids. The one
 * list of them, for mg_decoder_create and for mg_decoder_plan_bytes (the memory check). */
static void decoder_plan(const MgConfig *c, const MgArch *a, MgPlan *p, char *caches, void *act, void *fin, int B,
                         int cap, void **x, void **x2, void **fn, void **logits, int32_t **tok) {
    const int64_t T = (int64_t)B * cap, D = c->model_dim;
    for (int l = 0; l < c->n_layers; l++) a->plan_cache(c, p, caches + (size_t)l * a->cache_size, B);
    a->plan_layer(c, p, act, T, B);
    a->plan_final(c, p, fin, T, B);
    mg_plan_add(p, "residual stream", MG_BUF_ACT, T * D, x);
    mg_plan_add(p, "residual stream", MG_BUF_ACT, T * D, x2);
    mg_plan_add(p, "final norm", MG_BUF_ACT, T * D, fn);
    mg_plan_add(p, "lm head logits", MG_BUF_ACT, c->vocab_size, logits);
    mg_plan_add(p, "tokens", MG_BUF_I32, T, (void **)tok);
}

size_t mg_decoder_plan_bytes(const MgConfig *c, MgDtype compute, MgDtype state, int B) {
    const MgArch *a = mg_arch_find(c->arch);
    if (!a) mg_fatal("arch '%s' is not supported (known: %s)", c->arch, mg_arch_names());
    const int cap = a->decode_piece_max(c);
    char *caches = mg_calloc((size_t)MG_MAX(c->n_layers, 1), MG_MAX(a->cache_size, 1));
    void *act = mg_calloc(1, MG_MAX(a->act_size, 1)), *fin = mg_calloc(1, MG_MAX(a->final_size, 1));
    void *x, *x2, *fn, *logits;
    int32_t *tok;
    MgPlan p;
    mg_plan_init(&p, compute, state);
    decoder_plan(c, a, &p, caches, act, fin, B, cap, &x, &x2, &fn, &logits, &tok);
    const size_t bytes = mg_plan_bytes(&p);
    mg_plan_free(&p);
    free(caches);
    free(act);
    free(fin);
    return bytes;
}

MgDecoder *mg_decoder_create(MgModel *m, int B) {
    const MgConfig *c = &m->cfg;
    const MgArch *a = m->arch;
    MgDecoder *d = mg_calloc(1, sizeof(MgDecoder));
    d->m = m;
    d->B = B;
    d->cap = a->decode_piece_max(c);
    d->st[0] = mg_model_state_create(m, B);
    d->st[1] = mg_model_state_create(m, B);
    const int nl = c->n_layers;
    const int64_t T = (int64_t)B * d->cap;
    d->caches = mg_calloc((size_t)MG_MAX(nl, 1), MG_MAX(a->cache_size, 1));
    d->act = mg_calloc(1, MG_MAX(a->act_size, 1));
    d->fin = mg_calloc(1, MG_MAX(a->final_size, 1));
    mg_plan_init(&d->plan, m->be->dtype, m->be->state_dtype);
    decoder_plan(c, a, &d->plan, d->caches, d->act, d->fin, B, d->cap, &d->x, &d->x2, &d->fn, &d->logits, &d->tok_dev);
    const size_t bytes = mg_plan_bytes(&d->plan);
    d->arena = m->be->alloc(m->be, bytes);
    mg_plan_place(&d->plan, d->arena);
    d->bytes = bytes + 2 * d->st[0]->bytes;
    d->piece = mg_malloc(sizeof(int32_t) * (size_t)T);
    d->last_logits = mg_calloc((size_t)B * (size_t)c->vocab_size, sizeof(float));
    d->tmp64 = mg_malloc(sizeof(double) * (size_t)c->vocab_size);
    mg_decoder_reset(d);
    return d;
}

void mg_decoder_free(MgDecoder *d) {
    if (!d) return;
    MgModel *m = d->m;
    m->be->free(m->be, d->arena);
    mg_plan_free(&d->plan);
    mg_model_state_free(m, d->st[0]);
    mg_model_state_free(m, d->st[1]);
    free(d->caches);
    free(d->act);
    free(d->fin);
    free(d->piece);
    free(d->last_logits);
    free(d->tmp64);
    free(d);
}

void mg_decoder_reset(MgDecoder *d) {
    mg_model_state_reset(d->m, d->st[0]);
    mg_model_state_reset(d->m, d->st[1]);
    d->cur = 0;
    d->pos = 0;
}

int64_t mg_decoder_position(const MgDecoder *d) { return d->pos; }
int64_t mg_model_context(const MgModel *m) { return m->arch->decode_context ? m->arch->decode_context(&m->cfg) : 0; }
int64_t mg_decoder_context(const MgDecoder *d) { return mg_model_context(d->m); }
size_t mg_decoder_bytes(const MgDecoder *d) { return d->bytes; }
const float *mg_decoder_last_logits(const MgDecoder *d) { return d->last_logits; }

/* Layer l's state inside the decoder's double buffer. */
static MgLayerState dec_state(const MgDecoder *d, int l) {
    const MgModel *m = d->m;
    MgLayerState s;
    memset(&s, 0, sizeof s);
    for (int k = 0; k < mg_state_per_layer(m, l); k++) {
        const int i = mg_state_index(m, l, k);
        s.in[k] = d->st[d->cur]->ptr[i];
        s.out[k] = d->st[1 - d->cur]->ptr[i];
    }
    return s;
}

/* One piece of n tokens the architecture allows at the current position. logits_out: B x stride x V host
 * (this piece at column col), or NULL. */
static void decode_piece(MgDecoder *d, const int32_t *tokens, int n, void *logits_out, int64_t stride, int64_t col) {
    MgModel *m = d->m;
    const MgConfig *c = &m->cfg;
    const MgBackend *be = m->be;
    const MgArch *a = m->arch;
    const int B = d->B, D = c->model_dim, V = c->vocab_size;
    MgDecodeStep step = {.caches = d->caches, .pos = d->pos};
    MgPass ps = {.m = m, .c = c, .be = be, .B = B, .L = n, .T = (int64_t)B * n, .opts = NULL, .hooks = NULL,
                 .dec = &step, .tmp_d = NULL};

    be->to_device(be, d->tok_dev, tokens, (size_t)ps.T * sizeof(int32_t));
    mg_embed_forward(&ps, d->tok_dev, d->x);
    for (int l = 0; l < c->n_layers; l++) {
        MgLayerState st = dec_state(d, l);
        a->layer_forward(&ps, l, d->act, d->x, d->x2, &st);
        void *t = d->x;
        d->x = d->x2;
        d->x2 = t;
    }
    MgLayerState st = dec_state(d, c->n_layers);
    a->final_forward(&ps, d->fin, d->x, d->fn, &st);

    /* logits of every position when asked, else only of the last one per sequence */
    for (int b = 0; b < B; b++) {
        for (int t = logits_out ? 0 : n - 1; t < n; t++) {
            mg_linear_fwd(&ps, 1, D, V, mg_act_at(m, d->fn, ((int64_t)b * n + t) * D), m->head, NULL, d->logits);
            if (logits_out)
                be->to_host(be, (char *)logits_out + (size_t)((b * stride + col + t) * V) * m->es, d->logits,
                            (size_t)V * m->es);
            if (t == n - 1) {
                if (m->es == 4) {
                    be->to_host(be, d->last_logits + (size_t)b * V, d->logits, (size_t)V * 4);
                } else {
                    be->to_host(be, d->tmp64, d->logits, (size_t)V * 8);
                    for (int i = 0; i < V; i++) d->last_logits[(size_t)b * V + i] = (float)d->tmp64[i];
                }
            }
        }
    }
    d->cur = 1 - d->cur;
    d->pos += n;
}

void mg_decoder_step(MgDecoder *d, const int32_t *tokens, int n, void *logits_host) {
    MgModel *m = d->m;
    char err[256];
    if (mg_check_ids(tokens, (int64_t)d->B * n, m->cfg.vocab_size, INT32_MIN, "token", err, sizeof err))
        mg_fatal("%s: the prompt does not match this model's vocab_size", err);
    const int64_t ctx = mg_decoder_context(d);
    if (ctx > 0 && d->pos + n > ctx)
        mg_fatal("decoding: %lld tokens per sequence would pass the context of this %s model (%lld positions, "
                 "seq_len: its key/value cache holds no more); use a shorter prompt or fewer new tokens",
                 (long long)(d->pos + n), m->cfg.arch, (long long)ctx);
    const int B = d->B;
    int done = 0;
    while (done < n && !mg_stop_requested()) {
        const int len = MG_MIN(n - done, MG_MIN(d->cap, m->arch->decode_room(&m->cfg, d->pos)));
        for (int b = 0; b < B; b++)
            memcpy(d->piece + (size_t)b * len, tokens + (size_t)b * n + done, sizeof(int32_t) * (size_t)len);
        decode_piece(d, d->piece, len, logits_host, (int64_t)n, done);
        done += len;
    }
}
