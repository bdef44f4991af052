#include "params.h"

#include <stdarg.h>
#include <string.h>

#include "common.h"

static MgParam *add(MgParamTable *t, int *cap, int layer, MgInit init, int64_t fan_in, int matmul, int ndim,
                    const int64_t *shape, const char *fmt, ...) MG_PRINTF(9, 10);

static MgParam *add(MgParamTable *t, int *cap, int layer, MgInit init, int64_t fan_in, int matmul, int ndim,
                    const int64_t *shape, const char *fmt, ...) {
    if (t->count == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        t->params = mg_realloc(t->params, sizeof(MgParam) * (size_t)*cap);
    }
    MgParam *p = &t->params[t->count++];
    memset(p, 0, sizeof(*p));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof(p->name), fmt, ap);
    va_end(ap);
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        p->numel *= shape[i];
    }
    p->offset = t->total;
    p->layer = layer;
    p->init = init;
    p->fan_in = fan_in;
    p->matmul = matmul;
    t->total += p->numel;
    if (matmul) t->matmul_total += p->numel;
    return p;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

void mg_param_table_build(const MgConfig *c, MgParamTable *t) {
    memset(t, 0, sizeof(*t));
    int cap = 0;
    const int64_t V = c->vocab_size, d = c->model_dim, N = c->cema_ndim, z = c->z_dim, v = c->value_dim,
                  f = c->ffn_hidden_dim;
    add(t, &cap, -1, MG_INIT_EMBED, d, 0, 2, SHAPE(V, d), "embed.weight");
    for (int i = 0; i < c->n_layers; i++) {
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.attn.norm.weight", i);
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.attn.norm.bias", i);
        add(t, &cap, i, MG_INIT_CEMA_AD, 0, 0, 2, SHAPE(d, N), "layers.%d.attn.cema.alpha", i);
        add(t, &cap, i, MG_INIT_CEMA_AD, 0, 0, 2, SHAPE(d, N), "layers.%d.attn.cema.delta", i);
        add(t, &cap, i, MG_INIT_CEMA_THETA, 0, 0, 1, SHAPE(d), "layers.%d.attn.cema.theta", i);
        add(t, &cap, i, MG_INIT_CEMA_GAMMA, 0, 0, 3, SHAPE(d, N, 2), "layers.%d.attn.cema.gamma", i);
        add(t, &cap, i, MG_INIT_CEMA_OMEGA, 0, 0, 1, SHAPE(d), "layers.%d.attn.cema.omega", i);
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.attn.rmsnorm.weight", i);
        add(t, &cap, i, MG_INIT_HE, d, 1, 2, SHAPE(z, d), "layers.%d.attn.wz.weight", i);
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(z), "layers.%d.attn.wz.bias", i);
        add(t, &cap, i, MG_INIT_HE, d, 1, 2, SHAPE(v, d), "layers.%d.attn.wv.weight", i);
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(v), "layers.%d.attn.wv.bias", i);
        add(t, &cap, i, MG_INIT_HE, d, 1, 2, SHAPE(v, d), "layers.%d.attn.wr.weight", i);
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(v), "layers.%d.attn.wr.bias", i);
        add(t, &cap, i, MG_INIT_HE, d, 1, 2, SHAPE(d, d), "layers.%d.attn.wh1.weight", i);
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.attn.wh1.bias", i);
        add(t, &cap, i, MG_INIT_HE, v, 1, 2, SHAPE(d, v), "layers.%d.attn.wh2.weight", i);
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 2, SHAPE(2, z), "layers.%d.attn.qk_gamma", i);
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 2, SHAPE(2, z), "layers.%d.attn.qk_beta", i);
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.ffn.norm.weight", i);
        add(t, &cap, i, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "layers.%d.ffn.norm.bias", i);
        add(t, &cap, i, MG_INIT_HE, d, 1, 2, SHAPE(f, d), "layers.%d.ffn.fc1.weight", i);
        if (c->swiglu) add(t, &cap, i, MG_INIT_HE, d, 1, 2, SHAPE(f, d), "layers.%d.ffn.fc3.weight", i);
        add(t, &cap, i, MG_INIT_HE, f, 1, 2, SHAPE(d, f), "layers.%d.ffn.fc2.weight", i);
    }
    add(t, &cap, -1, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "final_norm.weight");
    add(t, &cap, -1, MG_INIT_ZERO, 0, 0, 1, SHAPE(d), "final_norm.bias");
    if (!c->share_emb) add(t, &cap, -1, MG_INIT_EMBED, d, 1, 2, SHAPE(V, d), "lm_head.weight");
    else t->matmul_total += V * d; /* the tied embedding is used as the LM head matrix */
}

void mg_param_table_free(MgParamTable *t) {
    free(t->params);
    memset(t, 0, sizeof(*t));
}

int mg_param_find(const MgParamTable *t, const char *name) {
    for (int i = 0; i < t->count; i++)
        if (!strcmp(t->params[i].name, name)) return i;
    return -1;
}

const MgParam *mg_param_get(const MgParamTable *t, const char *name) {
    int i = mg_param_find(t, name);
    MG_CHECK(i >= 0, "internal error: no parameter named '%s'", name);
    return &t->params[i];
}

double mg_flops_per_token(const MgConfig *c, const MgParamTable *t) {
    double c_eff = (double)MG_MIN(c->chunk_size, c->seq_len > 0 ? c->seq_len : c->chunk_size);
    double attn = 3.0 * 2.0 * (c_eff / 2.0) * (double)(c->z_dim + c->value_dim) * c->n_layers;
    return 6.0 * (double)t->matmul_total + attn;
}
