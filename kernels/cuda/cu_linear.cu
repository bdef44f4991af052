/* Matrix products (cuBLASLt on the GPU, a plain loop nest in the emulator) and the linear op. */
#include <string.h>

#include "cu_internal.cuh"

#ifndef MG_CUDA_EMU
#include <cublasLt.h>
#endif

namespace mgcu {

#ifndef MG_CUDA_EMU
static void blas_check(cublasStatus_t s, const char *what, const char *file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS)
        mg_fatal("cuBLASLt: %s failed at %s:%d: status %d (a shape or a leading dimension the library refuses; "
                 "rerun with CUBLASLT_LOG_LEVEL=2 to see why)",
                 what, file, line, (int)s);
}
#define BLAS_CHECK(call) blas_check((call), #call, __FILE__, __LINE__)

/* The algorithm cuBLASLt's heuristic picks for a problem, remembered (the heuristic costs tens of
 * microseconds; a training step asks for the same few dozen shapes every time). */
struct AlgoKey {
    int ta, tb, m, n, k, lda, ldb, ldc, dt, bias, beta0;
};
struct AlgoEntry {
    AlgoKey key;
    cublasLtMatmulAlgo_t algo;
    int used;
};
enum { ALGO_CACHE = 128 };
struct AlgoCache { /* per backend instance: instances on other threads or devices never share it */
    AlgoEntry e[ALGO_CACHE];
    int n;
};

static void gemm_lt(const MgBackend *be, bool ta, bool tb, int m, int n, int k, float alpha, const void *A, int lda,
                    const void *B, int ldb, float beta, void *C, int ldc, const void *bias) {
    Ctx *c = ctx(be);
    cublasLtHandle_t h = (cublasLtHandle_t)c->blas;
    const cudaDataType_t dt = be->dtype == MG_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasLtMatmulDesc_t op;
    BLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F)); /* fp32 accumulation, no TF32 */
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    BLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (bias) {
        cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        BLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        BLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    cublasLtMatrixLayout_t la, lb, lc;
    BLAS_CHECK(cublasLtMatrixLayoutCreate(&la, dt, ta ? k : m, ta ? m : k, lda));
    BLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, dt, tb ? n : k, tb ? k : n, ldb));
    BLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, dt, m, n, ldc));
    AlgoKey key = {ta, tb, m, n, k, lda, ldb, ldc, (int)dt, bias != NULL, beta == 0.0f};
    if (!c->algos) c->algos = mg_calloc(1, sizeof(AlgoCache));
    AlgoCache *cache = (AlgoCache *)c->algos;
    const cublasLtMatmulAlgo_t *algo = NULL;
    for (int i = 0; i < cache->n; i++)
        if (!memcmp(&cache->e[i].key, &key, sizeof key)) algo = &cache->e[i].algo;
    if (!algo) {
        cublasLtMatmulPreference_t pref;
        BLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        BLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &c->blas_ws_bytes, sizeof c->blas_ws_bytes));
        /* no split-K reductions through atomics: results must not depend on timing */
        uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_INPLACE |
                           CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE | CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
        BLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                                        sizeof schemes));
        cublasLtMatmulHeuristicResult_t res;
        int found = 0;
        BLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, 1, &res, &found));
        cublasLtMatmulPreferenceDestroy(pref);
        if (found < 1)
            mg_fatal("cuBLASLt: no algorithm for a %s product m=%d n=%d k=%d (ta=%d tb=%d lda=%d ldb=%d ldc=%d)",
                     be->dtype == MG_BF16 ? "bf16" : "fp32", m, n, k, ta, tb, lda, ldb, ldc);
        int slot = cache->n < ALGO_CACHE ? cache->n++ : (int)(((unsigned)m * 31u + (unsigned)n) % ALGO_CACHE);
        cache->e[slot].key = key;
        cache->e[slot].algo = res.algo;
        algo = &cache->e[slot].algo;
    }
    BLAS_CHECK(cublasLtMatmul(h, op, &alpha, A, la, B, lb, &beta, C, lc, C, lc, algo, c->blas_ws, c->blas_ws_bytes,
                              stream(be)));
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
}
#else
/* The emulator: column-major loops, fp32 accumulation in k order. */
template <class T>
static void gemm_host(bool ta, bool tb, int m, int n, int k, float alpha, const T *A, int lda, const T *B, int ldb,
                      float beta, T *C, int ldc, const T *bias) {
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float acc = 0.0f;
            for (int p = 0; p < k; p++) {
                float a = to_f(ta ? A[(size_t)i * lda + p] : A[(size_t)p * lda + i]);
                float b = to_f(tb ? B[(size_t)p * ldb + j] : B[(size_t)j * ldb + p]);
                acc += a * b;
            }
            float r = alpha * acc + (beta != 0.0f ? beta * to_f(C[(size_t)j * ldc + i]) : 0.0f);
            if (bias) r += to_f(bias[i]);
            C[(size_t)j * ldc + i] = from_f<T>(r);
        }
}
#endif

static void gemm_bias(const MgBackend *be, bool ta, bool tb, int m, int n, int k, float alpha, const void *A, int lda,
                      const void *B, int ldb, float beta, void *C, int ldc, const void *bias) {
    if (m == 0 || n == 0) return;
#ifndef MG_CUDA_EMU
    if (k == 0) { /* C = beta C: cuBLASLt refuses k = 0 */
        if (beta == 0.0f) CU_CHECK(cudaMemset2DAsync(C, (size_t)ldc * mg_dtype_size(be->dtype), 0,
                                                     (size_t)m * mg_dtype_size(be->dtype), (size_t)n, stream(be)));
        if (!bias) return;
    }
    gemm_lt(be, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, bias);
#else
    MG_CU_DISPATCH(be, T,
                   gemm_host<T>(ta, tb, m, n, k, alpha, (const T *)A, lda, (const T *)B, ldb, beta, (T *)C, ldc,
                                (const T *)bias));
#endif
}

void gemm(const MgBackend *be, bool ta, bool tb, int m, int n, int k, float alpha, const void *A, int lda,
          const void *B, int ldb, float beta, void *C, int ldc) {
    gemm_bias(be, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
}

/* ---- linear -------------------------------------------------------------------------------------------
 * Row-major y (T x out) = x (T x in) W^T is column-major y^T = W x^T: gemm(T, N, out, T, in) with W and x
 * as stored. dx^T = W^T dy^T: gemm(N, N, in, T, out); dW^T += x^T dy: gemm(N, T, in, out, T, beta 1).
 * The bias gradient is a column sum of dy in two fixed stages (row blocks, then the blocks in order). */
static const int kBiasRowBlocks = 64;

template <class T> __global__ void k_bias_partial(const T *dy, int64_t rows, int cols, float *partial) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    const int64_t per = (rows + gridDim.y - 1) / gridDim.y, r0 = (int64_t)blockIdx.y * per;
    const int64_t r1 = r0 + per < rows ? r0 + per : rows;
    float s = 0.0f;
    for (int64_t r = r0; r < r1; r++) s += to_f(dy[r * cols + j]);
    partial[(int64_t)blockIdx.y * cols + j] = s;
}
template <class T> __global__ void k_bias_final(const float *partial, int nb, int cols, T *db) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float s = to_f(db[j]);
    float t = 0.0f;
    for (int b = 0; b < nb; b++) t += partial[(int64_t)b * cols + j];
    db[j] = from_f<T>(s + t);
}

static void check_linear(const MgLinearArgs *a, const char *op) {
    MG_CHECK(a->T >= 0 && a->in >= 1 && a->out >= 1, "%s: bad shape T=%lld in=%d out=%d", op, (long long)a->T, a->in,
             a->out);
    MG_CHECK(a->T <= INT32_MAX, "%s: T=%lld rows is more than one product takes (2^31 - 1)", op, (long long)a->T);
}

void linear_forward(const MgBackend *be, const MgLinearArgs *a) {
    check_linear(a, "linear_forward");
    if (a->T == 0) return;
    gemm_bias(be, true, false, a->out, (int)a->T, a->in, 1.0f, a->weight, a->in, a->x, a->in, 0.0f, a->y, a->out,
              a->bias);
}

void linear_backward(const MgBackend *be, const MgLinearArgs *a) {
    check_linear(a, "linear_backward");
    if (a->T == 0) {
        if (a->dx && !a->accumulate) return; /* nothing to write: 0 rows */
        return;
    }
    if (a->dx)
        gemm(be, false, false, a->in, (int)a->T, a->out, 1.0f, a->weight, a->in, a->dy, a->out,
             a->accumulate ? 1.0f : 0.0f, a->dx, a->in);
    if (a->dweight) gemm(be, false, true, a->in, a->out, (int)a->T, 1.0f, a->x, a->in, a->dy, a->out, 1.0f, a->dweight, a->in);
    if (a->dbias) {
        const int nb = (int)(a->T < kBiasRowBlocks ? a->T : kBiasRowBlocks);
        float *partial = (float *)ws(be, 0, sizeof(float) * (size_t)nb * (size_t)a->out);
        dim3 g1((unsigned)((a->out + 127) / 128), (unsigned)nb);
        MG_CU_DISPATCH(be, T, MG_LAUNCH((k_bias_partial<T>), g1, 128, 0, stream(be), (const T *)a->dy, a->T, a->out, partial);
                       MG_LAUNCH((k_bias_final<T>), (unsigned)((a->out + 127) / 128), 128, 0, stream(be), partial, nb,
                                 a->out, (T *)a->dbias));
    }
}

} /* namespace mgcu */
