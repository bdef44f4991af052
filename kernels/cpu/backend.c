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

/* Events: every op has finished when it returns, so an event is complete when recorded. One static
 * object serves as every event. */
static char cpu_event_obj;
static MgEvent *cpu_event_create(const MgBackend *be) {
    (void)be;
    return (MgEvent *)&cpu_event_obj;
}
static void cpu_event_destroy(const MgBackend *be, MgEvent *ev) { (void)be, (void)ev; }
static void cpu_event_record(const MgBackend *be, MgEvent *ev, int stream) { (void)be, (void)ev, (void)stream; }
static void cpu_stream_wait(const MgBackend *be, int stream, MgEvent *ev) { (void)be, (void)ev, (void)stream; }
static void cpu_event_synchronize(const MgBackend *be, MgEvent *ev) { (void)be, (void)ev; }
static void *cpu_native_stream(const MgBackend *be, int stream) {
    (void)be, (void)stream;
    return NULL;
}

/* Sum of squares in a fixed order: fixed-size blocks summed in double, then the block sums in order,
 * so the result does not depend on the thread count. */
static double CPU_FN(sum_squares)(const MgBackend *be, const void *xv, int64_t n) {
    const real *x = xv;
    const int64_t block = 1 << 14;
    int64_t nb = (n + block - 1) / block;
    double *partial = cpu_ws_shared(be, 0, (size_t)(nb > 0 ? nb : 1) * sizeof(double));
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * block, hi = MG_MIN(n, lo + block);
        double s = 0.0;
        for (int64_t i = lo; i < hi; i++) s += (double)x[i] * (double)x[i];
        partial[b] = s;
    }
    double total = 0.0;
    for (int64_t b = 0; b < nb; b++) total += partial[b];
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

/* AdamW on fp32 masters; the gradient is in this backend's dtype, param_out (if any) receives the new
 * masters in it. The float32 arithmetic is the same in both builds. */
void CPU_FN(adamw_update)(const MgBackend *be, const MgAdamWArgs *a) {
    (void)be;
    MG_CHECK(a->step >= 1, "adamw_update: step must be >= 1 (got %lld)", (long long)a->step);
    MG_CHECK(a->n >= 0 && (a->n == 0 || (a->param && a->grad && a->m && a->v)),
             "adamw_update: param, grad, m and v must not be NULL");
    const double bc1 = 1.0 - pow(a->beta1, (double)a->step);
    const double bc2 = 1.0 - pow(a->beta2, (double)a->step);
    const float b1 = (float)a->beta1, b2 = (float)a->beta2, eps = (float)a->eps;
    /* 1 - beta in double: (1.0f - (float)0.999) is off by 1.3e-5 relative, which biases v against the
     * double-precision bias correction below. */
    const float omb1 = (float)(1.0 - a->beta1), omb2 = (float)(1.0 - a->beta2);
    const float lr = (float)a->lr, wd = (float)a->weight_decay, gs = (float)a->grad_scale;
    const float inv_bc1 = (float)(1.0 / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float *p = a->param, *m = a->m, *v = a->v;
    const real *g = a->grad;
    real *out = a->param_out;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < a->n; i++) {
        float gi = (float)g[i] * gs;
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float update = (mi * inv_bc1) / (sqrtf(vi) * inv_sqrt_bc2 + eps);
        p[i] -= lr * (update + wd * p[i]);
        if (out) out[i] = (real)p[i];
    }
}

/* bfloat16 <-> float32 (round to nearest even; NaN stays NaN). */
static inline uint16_t f32_to_bf16(float f) {
    union {
        float f;
        uint32_t u;
    } x = {f};
    if ((x.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x.u >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((x.u + 0x7fffu + ((x.u >> 16) & 1u)) >> 16);
}
static inline float bf16_to_f32(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } x = {(uint32_t)h << 16};
    return x.f;
}

static double load_as_double(MgDtype t, const void *p, int64_t i) {
    switch (t) {
    case MG_F32: return (double)((const float *)p)[i];
    case MG_F64: return ((const double *)p)[i];
    case MG_BF16: return (double)bf16_to_f32(((const uint16_t *)p)[i]);
    case MG_I64: return (double)((const int64_t *)p)[i];
    case MG_I32: return (double)((const int32_t *)p)[i];
    }
    return 0.0;
}

static void store_from_double(MgDtype t, void *p, int64_t i, double v) {
    switch (t) {
    case MG_F32: ((float *)p)[i] = (float)v; break;
    case MG_F64: ((double *)p)[i] = v; break;
    case MG_BF16: ((uint16_t *)p)[i] = f32_to_bf16((float)v); break; /* via float32: bf16(float(v)) */
    case MG_I64: ((int64_t *)p)[i] = (int64_t)v; break;
    case MG_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    }
}

void CPU_FN(convert)(const MgBackend *be, const MgConvertArgs *a) {
    (void)be;
    MG_CHECK(a->n >= 0, "convert: n=%lld must be >= 0", (long long)a->n);
    MG_CHECK(a->src_dtype != MG_I64 && a->dst_dtype != MG_I64 && a->src_dtype != MG_I32 && a->dst_dtype != MG_I32,
             "convert: integer dtypes are not converted (floating point only)");
    MG_CHECK(a->src != a->dst || mg_dtype_size(a->src_dtype) == mg_dtype_size(a->dst_dtype),
             "convert: in place needs dtypes of the same size (%s -> %s)", mg_dtype_name(a->src_dtype),
             mg_dtype_name(a->dst_dtype));
    if (a->src_dtype == a->dst_dtype) {
        if (a->dst != a->src) memmove(a->dst, a->src, (size_t)a->n * mg_dtype_size(a->src_dtype));
        return;
    }
    const MgDtype st = a->src_dtype, dt = a->dst_dtype;
#pragma omp parallel for schedule(static) if (a->n > 65536)
    for (int64_t i = 0; i < a->n; i++) store_from_double(dt, a->dst, i, load_as_double(st, a->src, i));
}

static size_t cpu_ws_bytes(const MgBackend *be, int64_t *grows) { return cpu_workspace_bytes(be, grows); }

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
        .device = 0,
#ifdef MG_FP64
        .ctx = &cpu_default_ctx_f64,
#else
        .ctx = &cpu_default_ctx_f32,
#endif
        .alloc = cpu_alloc,
        .free = cpu_free,
        .memset0 = cpu_memset0,
        .to_device = cpu_copy,
        .to_host = cpu_copy,
        .copy = cpu_copy,
        .synchronize = cpu_synchronize,
        .event_create = cpu_event_create,
        .event_destroy = cpu_event_destroy,
        .event_record = cpu_event_record,
        .stream_wait = cpu_stream_wait,
        .event_synchronize = cpu_event_synchronize,
        .native_stream = cpu_native_stream,
        .workspace_bytes = cpu_ws_bytes,
        MG_OP_LIST(MG_CPU_TABLE_ENTRY)
        .sum_squares = CPU_FN(sum_squares),
        .axpy = CPU_FN(axpy),
        .scale = CPU_FN(scale),
};
