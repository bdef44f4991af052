/* Row-major GEMM for the CPU backend: OpenBLAS when the build found it (MG_HAVE_BLAS), otherwise a
 * cache-blocked fallback parallelised with OpenMP over row blocks. Compiled once per precision. */
#include <string.h>

#include "cpu_real.h"

#ifdef MG_HAVE_BLAS
#include <cblas.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef MG_HAVE_BLAS
/* C[i,j] = beta*C[i,j] + alpha * sum_k A(i,k) B(k,j), with A(i,k) = ta ? A[k*lda+i] : A[i*lda+k] etc.
 * Blocks of 64 rows x 256 k; the innermost loop runs over contiguous j for the common (ta=0, tb=0)
 * and (ta=1, tb=0) cases; B^T cases read B with a stride (this is the no-BLAS fallback). */
static void gemm_fallback(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda,
                          const real *B, int ldb, real beta, real *C, int ldc) {
    const int MB = 64, KB = 256;
    int nblocks = (M + MB - 1) / MB;
#ifdef _OPENMP
    int in_par = omp_in_parallel();
#else
    int in_par = 1;
#endif
    (void)in_par; /* unused without OpenMP */
#pragma omp parallel for schedule(dynamic, 1) if (!in_par && (double)M * N * K > 1e6)
    for (int bi = 0; bi < nblocks; bi++) {
        int i0 = bi * MB, i1 = MG_MIN(M, i0 + MB);
        for (int i = i0; i < i1; i++) {
            real *c = C + (size_t)i * ldc;
            if (beta == 0) memset(c, 0, sizeof(real) * (size_t)N);
            else if (beta != 1)
                for (int j = 0; j < N; j++) c[j] *= beta;
        }
        for (int k0 = 0; k0 < K; k0 += KB) {
            int k1 = MG_MIN(K, k0 + KB);
            for (int i = i0; i < i1; i++) {
                real *c = C + (size_t)i * ldc;
                for (int k = k0; k < k1; k++) {
                    real aik = alpha * (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
                    if (aik == 0) continue;
                    if (!tb) {
                        const real *b = B + (size_t)k * ldb;
#pragma omp simd
                        for (int j = 0; j < N; j++) c[j] += aik * b[j];
                    } else { /* B^T: strided reads (this fallback only runs in builds without BLAS) */
                        for (int j = 0; j < N; j++) c[j] += aik * B[(size_t)j * ldb + k];
                    }
                }
            }
        }
    }
}
#endif

void CPU_FN(gemm)(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda, const real *B,
                  int ldb, real beta, real *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * C[(size_t)i * ldc + j];
        return;
    }
#ifdef MG_HAVE_BLAS
#ifdef MG_FP64
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha,
                A, lda, B, ldb, beta, C, ldc);
#else
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha,
                A, lda, B, ldb, beta, C, ldc);
#endif
#else
    gemm_fallback(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

#ifndef MG_FP64
const char *cpu_blas_info(void) {
#ifdef MG_HAVE_BLAS
#ifdef MG_BLAS_NAME
    return MG_BLAS_NAME;
#else
    return "BLAS";
#endif
#else
    return "built-in fallback GEMM (no BLAS found at build time)";
#endif
}
#endif
