/* The CUDA backend: instances (device, streams, cuBLASLt handle), device memory through a caching
 * allocator, events, the op workspace, the small vector ops, AdamW, dtype conversion, and the table.
 * Compiled by nvcc (the real backend) and by g++ -DMG_CUDA_EMU (the emulated one); see cu_common.cuh. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_internal.cuh"
#include "mg_cuda.h"

#ifndef MG_CUDA_EMU
#include <cublasLt.h>
#endif

namespace mgcu {

/* ---- checks -------------------------------------------------------------------------------------- */
static const char *hint_for(cudaError_t e) {
    if (e == cudaErrorMemoryAllocation)
        return "the GPU is out of memory: lower micro_batch_size or seq_len, or use more ranks (`megalodon info "
               "--config ...` estimates the memory of a config)";
    if (e == cudaErrorNoDevice) return "no GPU is visible: check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu";
    return "rerun with CUDA_LAUNCH_BLOCKING=1 to see which kernel failed";
}

void check_rt(cudaError_t e, const char *what, const char *file, int line) {
    if (e == cudaSuccess) return;
    (void)cudaGetLastError();
    mg_fatal("CUDA: %s failed at %s:%d: %s (%s)", what, file, line, cudaGetErrorString(e), hint_for(e));
}

void check_launch(const char *kernel, const char *file, int line) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        mg_fatal("CUDA: launch of kernel %s at %s:%d failed: %s (%s)", kernel, file, line, cudaGetErrorString(e),
                 hint_for(e));
}

/* ---- caching allocator --------------------------------------------------------------------------
 * Sizes are rounded to a class (powers of two up to 1 MiB, multiples of 2 MiB above); a freed block is
 * kept and handed out again for the same class, so a training loop that frees and reallocates its
 * buffers does not call cudaMalloc again. On an out-of-memory the cache is released and the call retried
 * once. */
static size_t size_class(size_t n) {
    if (n <= 512) return 512;
    if (n <= ((size_t)1 << 20)) {
        size_t c = 512;
        while (c < n) c <<= 1;
        return c;
    }
    const size_t g = (size_t)2 << 20;
    return (n + g - 1) / g * g;
}

static void push(Block **arr, int *n, int *cap, Block b) {
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *arr = (Block *)mg_realloc(*arr, sizeof(Block) * (size_t)*cap);
    }
    (*arr)[(*n)++] = b;
}

static void release_cache(Ctx *c) {
    for (int i = 0; i < c->ncache; i++) CU_CHECK(cudaFree(c->cache[i].p));
    c->ncache = 0;
    c->cache_bytes = 0;
}

static void *dev_alloc(Ctx *c, size_t bytes) {
    const size_t cls = size_class(bytes);
    for (int i = 0; i < c->ncache; i++)
        if (c->cache[i].bytes == cls) {
            Block b = c->cache[i];
            c->cache[i] = c->cache[--c->ncache];
            c->cache_bytes -= cls;
            push(&c->live, &c->nlive, &c->cap_live, b);
            c->live_bytes += cls;
            return b.p;
        }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, cls);
    if (e == cudaErrorMemoryAllocation && c->ncache > 0) {
        (void)cudaGetLastError();
        CU_CHECK(cudaDeviceSynchronize());
        release_cache(c);
        e = cudaMalloc(&p, cls);
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        (void)cudaMemGetInfo(&fr, &tot);
        mg_fatal("CUDA: cannot allocate %.1f MiB of device memory (%.1f MiB free of %.1f MiB; this backend holds "
                 "%.1f MiB): %s. %s",
                 (double)cls / 1048576.0, (double)fr / 1048576.0, (double)tot / 1048576.0,
                 (double)c->live_bytes / 1048576.0, cudaGetErrorString(e), hint_for(cudaErrorMemoryAllocation));
    }
    push(&c->live, &c->nlive, &c->cap_live, Block{p, cls});
    c->live_bytes += cls;
    if (c->live_bytes + c->cache_bytes > c->peak_bytes) c->peak_bytes = c->live_bytes + c->cache_bytes;
    return p;
}

static void dev_free(Ctx *c, void *p) {
    if (!p) return;
    for (int i = c->nlive - 1; i >= 0; i--)
        if (c->live[i].p == p) {
            Block b = c->live[i];
            c->live[i] = c->live[--c->nlive];
            c->live_bytes -= b.bytes;
            push(&c->cache, &c->ncache, &c->cap_cache, b);
            c->cache_bytes += b.bytes;
            return;
        }
    mg_fatal("cuda backend: free of a pointer this backend did not allocate (%p)", p);
}

/* ---- the table's memory functions ---------------------------------------------------------------- */
static void *be_alloc(const MgBackend *be, size_t bytes) {
    Ctx *c = ctx(be);
    void *p = dev_alloc(c, bytes);
    CU_CHECK(cudaMemsetAsync(p, 0, bytes, c->stream[0]));
    return p;
}
static void be_free(const MgBackend *be, void *p) {
    Ctx *c = ctx(be);
    /* work queued on the streams may still use p; the block goes back to the cache, and the next
     * allocation of it is ordered after that work on the same stream */
    dev_free(c, p);
}
static void be_memset0(const MgBackend *be, void *p, size_t bytes) {
    if (bytes) CU_CHECK(cudaMemsetAsync(p, 0, bytes, stream(be)));
}
static void be_to_device(const MgBackend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream(be)));
    CU_CHECK(cudaStreamSynchronize(stream(be))); /* the caller may reuse src at once */
}
static void be_to_host(const MgBackend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream(be)));
    CU_CHECK(cudaStreamSynchronize(stream(be)));
}
static void be_copy(const MgBackend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream(be)));
}
static void be_synchronize(const MgBackend *be) {
    Ctx *c = ctx(be);
    CU_CHECK(cudaStreamSynchronize(c->stream[0]));
    CU_CHECK(cudaStreamSynchronize(c->stream[1]));
}

static MgEvent *be_event_create(const MgBackend *be) {
    (void)be;
    cudaEvent_t e;
    CU_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return (MgEvent *)e;
}
static void be_event_destroy(const MgBackend *be, MgEvent *ev) {
    (void)be;
    if (ev) CU_CHECK(cudaEventDestroy((cudaEvent_t)ev));
}
static void be_event_record(const MgBackend *be, MgEvent *ev, int s) {
    MG_CHECK(s == MG_STREAM_COMPUTE || s == MG_STREAM_COMM, "cuda backend: stream %d does not exist", s);
    CU_CHECK(cudaEventRecord((cudaEvent_t)ev, ctx(be)->stream[s]));
}
static void be_stream_wait(const MgBackend *be, int s, MgEvent *ev) {
    MG_CHECK(s == MG_STREAM_COMPUTE || s == MG_STREAM_COMM, "cuda backend: stream %d does not exist", s);
    CU_CHECK(cudaStreamWaitEvent(ctx(be)->stream[s], (cudaEvent_t)ev, 0));
}
static void be_event_synchronize(const MgBackend *be, MgEvent *ev) {
    (void)be;
    CU_CHECK(cudaEventSynchronize((cudaEvent_t)ev));
}
static void *be_native_stream(const MgBackend *be, int s) {
    MG_CHECK(s == MG_STREAM_COMPUTE || s == MG_STREAM_COMM, "cuda backend: stream %d does not exist", s);
    return (void *)ctx(be)->stream[s];
}

void *ws(const MgBackend *be, int slot, size_t bytes) {
    Ctx *c = ctx(be);
    MG_CHECK(slot >= 0 && slot < WS_SLOTS, "cuda workspace: slot %d out of range", slot);
    if (!c->ws[slot] || bytes > c->ws_bytes[slot]) {
        if (c->ws[slot]) {
            /* kernels queued earlier may still read the old buffer */
            CU_CHECK(cudaStreamSynchronize(c->stream[0]));
            dev_free(c, c->ws[slot]);
        }
        c->ws_bytes[slot] = size_class(bytes ? bytes : 1);
        c->ws[slot] = dev_alloc(c, c->ws_bytes[slot]);
        c->grows++;
    }
    return c->ws[slot];
}

static size_t be_workspace_bytes(const MgBackend *be, int64_t *grows) {
    const Ctx *c = ctx(be);
    size_t t = c->blas_ws_bytes;
    for (int i = 0; i < WS_SLOTS; i++) t += c->ws_bytes[i];
    if (grows) *grows = c->grows;
    return t;
}

/* ---- sum of squares, axpy, scale ----------------------------------------------------------------
 * sum_squares: a fixed grid of kSumBlocks blocks x 256 threads, each thread summing a grid-stride set
 * of elements in double, each block reducing in a fixed tree, then one block summing the block results
 * in order: the result depends on n only, never on timing. */
static const int kSumBlocks = 512;

template <class T> __global__ void k_sum_squares(const T *x, int64_t n, double *partial) {
    __shared__ double scratch[32];
    double s = 0.0;
    MG_GRID_LOOP(i, n) {
        double v = (double)to_f(x[i]);
        s += v * v;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void k_sum_final(const double *partial, int nb, double *out) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < nb; i += blockDim.x) s += partial[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) *out = s;
}

double sum_squares(const MgBackend *be, const void *x, int64_t n) {
    MG_CHECK(n >= 0, "sum_squares: n=%lld must be >= 0", (long long)n);
    if (n == 0) return 0.0;
    Ctx *c = ctx(be);
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_sum_squares<T>), kSumBlocks, 256, 0, c->stream[0], (const T *)x, n, c->red));
    MG_LAUNCH(k_sum_final, 1, 256, 0, c->stream[0], c->red, kSumBlocks, c->red + kSumBlocks);
    CU_CHECK(cudaMemcpyAsync(c->red_host, c->red + kSumBlocks, sizeof(double), cudaMemcpyDeviceToHost, c->stream[0]));
    CU_CHECK(cudaStreamSynchronize(c->stream[0]));
    return *c->red_host;
}

template <class T> __global__ void k_axpy(int64_t n, float alpha, const T *x, T *y) {
    MG_GRID_LOOP(i, n) y[i] = from_f<T>(to_f(y[i]) + alpha * to_f(x[i]));
}
template <class T> __global__ void k_scale(int64_t n, float alpha, T *x) {
    MG_GRID_LOOP(i, n) x[i] = from_f<T>(to_f(x[i]) * alpha);
}

void axpy(const MgBackend *be, int64_t n, double alpha, const void *x, void *y) {
    MG_CHECK(n >= 0, "axpy: n=%lld must be >= 0", (long long)n);
    if (n == 0) return;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_axpy<T>), grid_for(n, 256), 256, 0, stream(be), n, (float)alpha, (const T *)x, (T *)y));
}
void scale(const MgBackend *be, int64_t n, double alpha, void *x) {
    MG_CHECK(n >= 0, "scale: n=%lld must be >= 0", (long long)n);
    if (n == 0) return;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_scale<T>), grid_for(n, 256), 256, 0, stream(be), n, (float)alpha, (T *)x));
}

/* ---- AdamW: the CPU backend's float32 arithmetic, element by element ----------------------------- */
template <class T>
__global__ void k_adamw(int64_t n, float *p, const T *g, T *out, float *m, float *v, float b1, float b2, float omb1,
                        float omb2, float lr, float wd, float gs, float inv_bc1, float inv_sqrt_bc2, float eps) {
    MG_GRID_LOOP(i, n) {
        float gi = to_f(g[i]) * gs;
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float update = (mi * inv_bc1) / (sqrtf(vi) * inv_sqrt_bc2 + eps);
        float pi = p[i] - lr * (update + wd * p[i]);
        p[i] = pi;
        if (out) out[i] = from_f<T>(pi);
    }
}

void adamw_update(const MgBackend *be, const MgAdamWArgs *a) {
    MG_CHECK(a->step >= 1, "adamw_update: step must be >= 1 (got %lld)", (long long)a->step);
    MG_CHECK(a->n >= 0 && (a->n == 0 || (a->param && a->grad && a->m && a->v)),
             "adamw_update: param, grad, m and v must not be NULL");
    if (a->n == 0) return;
    const double bc1 = 1.0 - pow(a->beta1, (double)a->step), bc2 = 1.0 - pow(a->beta2, (double)a->step);
    MG_CU_DISPATCH(be, T,
                   MG_LAUNCH((k_adamw<T>), grid_for(a->n, 256), 256, 0, stream(be), a->n, a->param, (const T *)a->grad,
                             (T *)a->param_out, a->m, a->v, (float)a->beta1, (float)a->beta2, (float)(1.0 - a->beta1),
                             (float)(1.0 - a->beta2), (float)a->lr, (float)a->weight_decay, (float)a->grad_scale,
                             (float)(1.0 / bc1), (float)(1.0 / sqrt(bc2)), (float)a->eps));
}

/* ---- dtype conversion ----------------------------------------------------------------------------- */
template <class S> MG_DEV double ld_d(const S *p, int64_t i) { return (double)p[i]; }
template <> MG_DEV double ld_d<bf16>(const bf16 *p, int64_t i) { return (double)__bfloat162float(p[i]); }
template <class D> MG_DEV void st_d(D *p, int64_t i, double v) { p[i] = (D)v; }
template <> MG_DEV void st_d<bf16>(bf16 *p, int64_t i, double v) { p[i] = __float2bfloat16_rn((float)v); }

template <class S, class D> __global__ void k_convert(int64_t n, const S *src, D *dst) {
    MG_GRID_LOOP(i, n) st_d(dst, i, ld_d(src, i));
}

template <class S> static void convert_from(const MgBackend *be, const MgConvertArgs *a) {
    const unsigned g = grid_for(a->n, 256);
    switch (a->dst_dtype) {
    case MG_F32: MG_LAUNCH((k_convert<S, float>), g, 256, 0, stream(be), a->n, (const S *)a->src, (float *)a->dst); break;
    case MG_F64: MG_LAUNCH((k_convert<S, double>), g, 256, 0, stream(be), a->n, (const S *)a->src, (double *)a->dst); break;
    case MG_BF16: MG_LAUNCH((k_convert<S, bf16>), g, 256, 0, stream(be), a->n, (const S *)a->src, (bf16 *)a->dst); break;
    default: break;
    }
}

void convert(const MgBackend *be, const MgConvertArgs *a) {
    MG_CHECK(a->n >= 0, "convert: n=%lld must be >= 0", (long long)a->n);
    MG_CHECK(a->src_dtype != MG_I64 && a->dst_dtype != MG_I64 && a->src_dtype != MG_I32 && a->dst_dtype != MG_I32,
             "convert: integer dtypes are not converted (floating point only)");
    MG_CHECK(a->src != a->dst || mg_dtype_size(a->src_dtype) == mg_dtype_size(a->dst_dtype),
             "convert: in place needs dtypes of the same size (%s -> %s)", mg_dtype_name(a->src_dtype),
             mg_dtype_name(a->dst_dtype));
    if (a->n == 0) return;
    if (a->src_dtype == a->dst_dtype) {
        be_copy(be, a->dst, a->src, (size_t)a->n * mg_dtype_size(a->src_dtype));
        return;
    }
    switch (a->src_dtype) {
    case MG_F32: convert_from<float>(be, a); break;
    case MG_F64: convert_from<double>(be, a); break;
    case MG_BF16: convert_from<bf16>(be, a); break;
    default: break;
    }
}

/* ---- instances -------------------------------------------------------------------------------------- */
static int fail(char *err, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return -1;
}

#ifdef MG_CUDA_EMU
#define BACKEND_PREFIX "cuda-emu"
#else
#define BACKEND_PREFIX "cuda"
#endif

static MgBackend *create(const char *name, int device, char *err, size_t errlen) {
    MgDtype dt;
    const size_t np = strlen(BACKEND_PREFIX);
    if (!strcmp(name, BACKEND_PREFIX) || !strcmp(name, BACKEND_PREFIX "-bf16")) dt = MG_BF16;
    else if (!strcmp(name, BACKEND_PREFIX "-fp32") || !strcmp(name, BACKEND_PREFIX "-f32")) dt = MG_F32;
    else {
        fail(err, errlen, "unknown device '%s' (the CUDA backends are %s, %s-fp32)", name, BACKEND_PREFIX, BACKEND_PREFIX);
        return NULL;
    }
    (void)np;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        fail(err, errlen,
             "device '%s': no usable NVIDIA GPU on this machine (%s); the CUDA backend is built in, but it needs a GPU "
             "and its driver (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use --device cpu",
             name, e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
        return NULL;
    }
    if (device < 0 || device >= count) {
        fail(err, errlen, "device '%s': device id %d does not exist (this machine has %d GPU%s, ids 0..%d)", name,
             device, count, count == 1 ? "" : "s", count - 1);
        return NULL;
    }
    if ((e = cudaSetDevice(device)) != cudaSuccess) {
        (void)cudaGetLastError();
        fail(err, errlen, "device '%s': cannot select GPU %d: %s", name, device, cudaGetErrorString(e));
        return NULL;
    }
    cudaDeviceProp prop;
    CU_CHECK(cudaGetDeviceProperties(&prop, device));
    Ctx *c = (Ctx *)mg_calloc(1, sizeof(Ctx));
    c->device = device;
    snprintf(c->name, sizeof c->name, "%s-%s", BACKEND_PREFIX, dt == MG_BF16 ? "bf16" : "fp32");
    CU_CHECK(cudaStreamCreateWithFlags(&c->stream[0], cudaStreamNonBlocking));
    CU_CHECK(cudaStreamCreateWithFlags(&c->stream[1], cudaStreamNonBlocking));
    c->red = (double *)dev_alloc(c, sizeof(double) * (kSumBlocks + 1));
    CU_CHECK(cudaMallocHost((void **)&c->red_host, sizeof(double)));
#ifndef MG_CUDA_EMU
    cublasLtHandle_t h;
    cublasStatus_t st = cublasLtCreate(&h);
    if (st != CUBLAS_STATUS_SUCCESS) {
        fail(err, errlen, "device '%s': cuBLASLt could not be initialised (status %d)", name, (int)st);
        return NULL;
    }
    c->blas = (void *)h;
    c->blas_ws_bytes = (size_t)32 << 20;
    c->blas_ws = dev_alloc(c, c->blas_ws_bytes);
#endif
    MgBackend *be = (MgBackend *)mg_calloc(1, sizeof(MgBackend));
    be->name = c->name;
    be->dtype = dt;
    be->state_dtype = MG_F32;
    be->device = device;
    be->ctx = c;
    be->alloc = be_alloc;
    be->free = be_free;
    be->memset0 = be_memset0;
    be->to_device = be_to_device;
    be->to_host = be_to_host;
    be->copy = be_copy;
    be->synchronize = be_synchronize;
    be->event_create = be_event_create;
    be->event_destroy = be_event_destroy;
    be->event_record = be_event_record;
    be->stream_wait = be_stream_wait;
    be->event_synchronize = be_event_synchronize;
    be->native_stream = be_native_stream;
    be->workspace_bytes = be_workspace_bytes;
#define MG_CU_SET(name, Args) be->name = mgcu::name;
    MG_OP_LIST(MG_CU_SET)
#undef MG_CU_SET
    be->sum_squares = mgcu::sum_squares;
    be->axpy = mgcu::axpy;
    be->scale = mgcu::scale;
    return be;
}

static void destroy(MgBackend *be) {
    if (!be) return;
    Ctx *c = ctx(be);
    CU_CHECK(cudaStreamSynchronize(c->stream[0]));
    CU_CHECK(cudaStreamSynchronize(c->stream[1]));
#ifndef MG_CUDA_EMU
    if (c->blas) cublasLtDestroy((cublasLtHandle_t)c->blas);
#endif
    for (int i = 0; i < c->nlive; i++) CU_CHECK(cudaFree(c->live[i].p));
    release_cache(c);
    CU_CHECK(cudaFreeHost(c->red_host));
    CU_CHECK(cudaStreamDestroy(c->stream[0]));
    CU_CHECK(cudaStreamDestroy(c->stream[1]));
    free(c->live);
    free(c->cache);
    free(c->algos);
    free(c);
    free(be);
}

/* ---- ceilings for the benchmark ------------------------------------------------------------------- */
#ifndef MG_CUDA_EMU
static void ceilings(const MgBackend *be, size_t bytes, int n, int reps, double *copy_gbs, double *gemm_tflops) {
    Ctx *c = ctx(be);
    cudaEvent_t e0, e1;
    CU_CHECK(cudaEventCreate(&e0));
    CU_CHECK(cudaEventCreate(&e1));
    void *a = be_alloc(be, bytes), *b = be_alloc(be, bytes);
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        CU_CHECK(cudaEventRecord(e0, c->stream[0]));
        CU_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, c->stream[0]));
        CU_CHECK(cudaEventRecord(e1, c->stream[0]));
        CU_CHECK(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CU_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (r > 0 && ms > 0 && ms < best) best = ms; /* r = 0 warms up */
    }
    *copy_gbs = 2.0 * (double)bytes / (best * 1e-3) / 1e9;
    dev_free(c, a);
    dev_free(c, b);
    const size_t es = mg_dtype_size(be->dtype), nn = (size_t)n * (size_t)n;
    void *A = be_alloc(be, nn * es), *B = be_alloc(be, nn * es), *C = be_alloc(be, nn * es);
    /* small non-zero values: the product's speed does not depend on them, but zeros could be special-cased */
    MgConvertArgs fill;
    memset(&fill, 0, sizeof fill);
    fill.n = (int64_t)nn;
    fill.src_dtype = MG_F32;
    fill.dst_dtype = be->dtype;
    float *h = (float *)malloc(sizeof(float) * nn);
    for (size_t i = 0; i < nn; i++) h[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    void *tmp = be_alloc(be, sizeof(float) * nn);
    be_to_device(be, tmp, h, sizeof(float) * nn);
    fill.src = tmp;
    fill.dst = A;
    convert(be, &fill);
    fill.dst = B;
    convert(be, &fill);
    dev_free(c, tmp);
    free(h);
    best = 1e30;
    for (int r = 0; r <= reps; r++) {
        CU_CHECK(cudaEventRecord(e0, c->stream[0]));
        gemm(be, true, false, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
        CU_CHECK(cudaEventRecord(e1, c->stream[0]));
        CU_CHECK(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CU_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (r > 0 && ms > 0 && ms < best) best = ms;
    }
    *gemm_tflops = 2.0 * (double)n * n * n / (best * 1e-3) / 1e12;
    dev_free(c, A);
    dev_free(c, B);
    dev_free(c, C);
    CU_CHECK(cudaEventDestroy(e0));
    CU_CHECK(cudaEventDestroy(e1));
}
#endif

} /* namespace mgcu */

#ifdef MG_CUDA_EMU
extern "C" MgBackend *mg_cuda_emu_backend_create(const char *name, int device, char *err, size_t errlen) {
    return mgcu::create(name, device, err, errlen);
}
extern "C" void mg_cuda_emu_backend_destroy(MgBackend *be) { mgcu::destroy(be); }
#else
extern "C" MgBackend *mg_cuda_backend_create(const char *name, int device, char *err, size_t errlen) {
    return mgcu::create(name, device, err, errlen);
}
extern "C" void mg_cuda_backend_destroy(MgBackend *be) { mgcu::destroy(be); }
extern "C" void mg_cuda_ceilings(const MgBackend *be, size_t bytes, int n, int reps, double *copy_gbs,
                                 double *gemm_tflops) {
    mgcu::ceilings(be, bytes, n, reps, copy_gbs, gemm_tflops);
}
extern "C" int mg_cuda_memory_info(int device, double *free_bytes, double *total_bytes) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count || cudaSetDevice(device) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    *free_bytes = (double)f;
    *total_bytes = (double)t;
    return 0;
}
extern "C" int mg_cuda_device_for_local_rank(int local_rank) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count <= 0) {
        (void)cudaGetLastError();
        return 0;
    }
    return local_rank % count;
}
extern "C" void mg_cuda_device_info(int device, char *out, size_t len) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        snprintf(out, len, "no GPU (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
        return;
    }
    cudaDeviceProp p;
    if (device < 0 || device >= count || cudaGetDeviceProperties(&p, device) != cudaSuccess) {
        snprintf(out, len, "GPU %d of %d: no properties", device, count);
        return;
    }
    snprintf(out, len, "%s, %.1f GiB, compute capability %d.%d, %d SMs (GPU %d of %d)", p.name,
             (double)p.totalGlobalMem / 1073741824.0, p.major, p.minor, p.multiProcessorCount, device, count);
}
#endif
