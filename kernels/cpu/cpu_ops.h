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

/* Instance state and op workspace (kernels/cpu/workspace.c). Per-thread slots: cpu_ws_reserve (outside
 * a parallel region, with the bytes each thread needs) then cpu_ws_thread (inside it). Shared slots: one
 * buffer per call, taken outside parallel regions. Buffers are 64-byte aligned and not zeroed; they only
 * grow. An op may use every slot; ops never call each other while holding one. */
enum { CPU_WS_SLOTS = 4 };
typedef struct CpuCtx CpuCtx;
extern CpuCtx cpu_default_ctx_f32, cpu_default_ctx_f64;
CpuCtx *cpu_ctx_create(void);
void cpu_ctx_destroy(CpuCtx *c);
void cpu_ws_reserve(const MgBackend *be, int slot, size_t bytes_per_thread);
void *cpu_ws_thread(const MgBackend *be, int slot);
void *cpu_ws_shared(const MgBackend *be, int slot, size_t bytes);
void *cpu_ws_zeroed(const MgBackend *be, int slot, size_t bytes); /* cpu_ws_shared, filled with zeros */
size_t cpu_workspace_bytes(const MgBackend *be, int64_t *grows);

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
