#include "params.h"

#include <stdarg.h>
#include <string.h>

#include "common.h"
#include "model/arch.h"

MgParam *mg_param_add(MgParamTable *t, int layer, MgInit init, int64_t fan_in, int matmul, int ndim,
                      const int64_t *shape, const char *fmt, ...) {
    if (t->count == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->params = mg_realloc(t->params, sizeof(MgParam) * (size_t)t->cap);
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

void mg_param_table_build(const MgConfig *c, MgParamTable *t) {
    memset(t, 0, sizeof(*t));
    const MgArch *a = mg_arch_find(c->arch);
    if (!a) mg_fatal("arch '%s' is not supported (known: %s)", c->arch, mg_arch_names());
    a->declare_params(c, t);
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
    const MgArch *a = mg_arch_find(c->arch);
    if (!a) mg_fatal("arch '%s' is not supported (known: %s)", c->arch, mg_arch_names());
    return 6.0 * (double)t->matmul_total + a->attn_flops_per_token(c);
}
