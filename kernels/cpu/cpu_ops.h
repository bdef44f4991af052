/* Declarations of the CPU backend's functions in both precisions (see cpu_real.h). Code outside
 * kernels/cpu/ should go through the MgBackend table in kernels/ops.h instead; tests may call these
 * directly. */
#ifndef MG_CPU_OPS_H
#define MG_CPU_OPS_H

#include "../ops.h"

/* (name, argument struct) for every op that has the signature void(const MgBackend*, const Args*). */
#define MG_CPU_OP_LIST(X)                                                                              \
    X(embedding_forward, MgEmbeddingArgs)                                                              \
    X(embedding_backward, MgEmbeddingArgs)                                                             \
    X(linear_forward, MgLinearArgs)                                                                    \
    X(linear_backward, MgLinearArgs)                                                                   \
    X(timestep_norm_forward, MgTimestepNormArgs)                                                       \
    X(timestep_norm_backward, MgTimestepNormArgs)                                                      \
    X(cema_forward, MgCemaArgs)                                                                        \
    X(cema_backward, MgCemaArgs)                                                                       \
    X(rmsnorm_forward, MgRMSNormArgs)                                                                  \
    X(rmsnorm_backward, MgRMSNormArgs)                                                                 \
    X(layernorm_forward, MgLayerNormArgs)                                                              \
    X(layernorm_backward, MgLayerNormArgs)                                                             \
    X(qknorm_forward, MgQKNormArgs)                                                                    \
    X(qknorm_backward, MgQKNormArgs)                                                                   \
    X(rope_forward, MgRopeArgs)                                                                        \
    X(rope_backward, MgRopeArgs)                                                                       \
    X(attention_forward, MgAttentionArgs)                                                              \
    X(attention_backward, MgAttentionArgs)                                                             \
    X(act_forward, MgActArgs)                                                                          \
    X(act_backward, MgActArgs)                                                                         \
    X(dropout_forward, MgDropoutArgs)                                                                  \
    X(dropout_backward, MgDropoutArgs)                                                                 \
    X(cross_entropy, MgCrossEntropyArgs)

#define MG_CPU_DECLARE(name, Args)                                                                     \
    void cpu_##name##_f32(const MgBackend *be, const Args *a);                                         \
    void cpu_##name##_f64(const MgBackend *be, const Args *a);
MG_CPU_OP_LIST(MG_CPU_DECLARE)
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
