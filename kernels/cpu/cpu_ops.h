/* Declarations of the CPU backend's functions in both precisions (see cpu_real.h). Code outside
 * kernels/cpu/ should go through the MgBackend table in kernels/ops.h instead; tests may call these
 * directly. */
#ifndef MG_CPU_OPS_H
#define MG_CPU_OPS_H

#include "../ops.h"

#define MG_CPU_DECLARE(name, Args)                                                                     \
    void cpu_##name##_f32(const MgBackend *be, const Args *a);                                         \
    void cpu_##name##_f64(const MgBackend *be, const Args *a);
MG_OP_LIST(MG_CPU_DECLARE)
#undef MG_CPU_DECLARE

/* Precision-independent helpers (kernels/cpu/backend_common.c). */
void cpu_adamw_update(const MgBackend *be, const MgAdamWArgs *a);

/* Matrix product C = alpha * op(A) op(B) + beta * C, row-major, op = transpose when trans_* != 0.
 * OpenBLAS when built with it, otherwise a blocked OpenMP fallback. Safe to call inside OpenMP regions
 * (runs single-threaded there). */
void cpu_gemm_f32(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);
void cpu_gemm_f64(int trans_a, int trans_b, int M, int N, int K, double alpha, const double *A, int lda,
                  const double *B, int ldb, double beta, double *C, int ldc);

/* What the build linked for matrix products ("OpenBLAS 0.3.21 (openmp)", "built-in fallback"). */
const char *cpu_blas_info(void);

#endif
