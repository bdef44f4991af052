/* The CPU backend table, host memory, and the small vector ops (compiled once per precision). */
#include <string.h>

#include "cpu_real.h"

static void *cpu_alloc(const MgBackend *be, size_t bytes) {
    (void)be;
    void *p = mg_malloc_aligned(bytes);
    memset(p, 0, bytes);
    return p;
}
static void cpu_free(const MgBackend *be, void *p) {
    (void)be;
    mg_free_aligned(p);
}
static void cpu_memset0(const MgBackend *be, void *p, size_t bytes) {
    (void)be;
    memset(p, 0, bytes);
}
static void cpu_copy(const MgBackend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (dst != src) memmove(dst, src, bytes);
}
static void cpu_synchronize(const MgBackend *be) { (void)be; }

/* Sum of squares in a fixed order: fixed-size blocks summed in double, then the block sums in order,
 * so the result does not depend on the thread count. */
static double CPU_FN(sum_squares)(const MgBackend *be, const void *xv, int64_t n) {
    (void)be;
    const real *x = xv;
    const int64_t block = 1 << 14;
    int64_t nb = (n + block - 1) / block;
    double *partial = mg_malloc((size_t)(nb > 0 ? nb : 1) * sizeof(double));
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * block, hi = MG_MIN(n, lo + block);
        double s = 0.0;
        for (int64_t i = lo; i < hi; i++) s += (double)x[i] * (double)x[i];
        partial[b] = s;
    }
    double total = 0.0;
    for (int64_t b = 0; b < nb; b++) total += partial[b];
    free(partial);
    return total;
}

static void CPU_FN(axpy)(const MgBackend *be, int64_t n, double alpha, const void *xv, void *yv) {
    (void)be;
    const real *x = xv;
    real *y = yv;
    const real a = (real)alpha;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void CPU_FN(scale)(const MgBackend *be, int64_t n, double alpha, void *xv) {
    (void)be;
    real *x = xv;
    const real a = (real)alpha;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] *= a;
}

#ifndef MG_FP64
void cpu_adamw_update(const MgBackend *be, const MgAdamWArgs *a) {
    (void)be;
    MG_CHECK(a->step >= 1, "adamw_update: step must be >= 1 (got %lld)", (long long)a->step);
    const double bc1 = 1.0 - pow(a->beta1, (double)a->step);
    const double bc2 = 1.0 - pow(a->beta2, (double)a->step);
    const float b1 = (float)a->beta1, b2 = (float)a->beta2, eps = (float)a->eps;
    /* 1 - beta in double: (1.0f - (float)0.999) is off by 1.3e-5 relative, which biases v against the
     * double-precision bias correction below. */
    const float omb1 = (float)(1.0 - a->beta1), omb2 = (float)(1.0 - a->beta2);
    const float lr = (float)a->lr, wd = (float)a->weight_decay, gs = (float)a->grad_scale;
    const float inv_bc1 = (float)(1.0 / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float *p = a->param, *m = a->m, *v = a->v;
    const float *g = a->grad;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < a->n; i++) {
        float gi = g[i] * gs;
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float update = (mi * inv_bc1) / (sqrtf(vi) * inv_sqrt_bc2 + eps);
        p[i] -= lr * (update + wd * p[i]);
    }
}
#endif

#define MG_CPU_TABLE_ENTRY(name, Args) .name = CPU_FN(name),

const MgBackend
#ifdef MG_FP64
    mg_cpu_backend_f64
#else
    mg_cpu_backend_f32
#endif
    = {
        .name = "cpu-" CPU_PREC,
        .dtype = MG_REAL_DTYPE,
        .state_dtype = MG_REAL_DTYPE,
        .ctx = NULL,
        .alloc = cpu_alloc,
        .free = cpu_free,
        .memset0 = cpu_memset0,
        .to_device = cpu_copy,
        .to_host = cpu_copy,
        .copy = cpu_copy,
        .synchronize = cpu_synchronize,
        MG_OP_LIST(MG_CPU_TABLE_ENTRY)
        .adamw_update = cpu_adamw_update,
        .sum_squares = CPU_FN(sum_squares),
        .axpy = CPU_FN(axpy),
        .scale = CPU_FN(scale),
};
