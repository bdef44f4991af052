/* The CUDA backend's instance state and the functions its files share (kernels/cuda/README.md). */
#ifndef MG_CU_INTERNAL_CUH
#define MG_CU_INTERNAL_CUH

#include <stddef.h>

#include "cu_common.cuh"

namespace mgcu {

enum { WS_SLOTS = 8 };

struct Block {
    void *p;
    size_t bytes;
};

struct Ctx {
    int device;
    cudaStream_t stream[2];          /* MG_STREAM_COMPUTE, MG_STREAM_COMM */
    void *blas;                      /* cublasLtHandle_t (NULL in the emulator) */
    void *blas_ws;                   /* cuBLASLt workspace */
    size_t blas_ws_bytes;
    void *algos;                     /* cu_linear.cu: cuBLASLt's algorithm choices by shape (this instance's) */
    void *ws[WS_SLOTS];              /* op workspace: grow-only device buffers */
    size_t ws_bytes[WS_SLOTS];
    int64_t grows;
    double *red;                     /* device: sum_squares partials and result */
    double *red_host;                /* pinned host copy of the result */
    /* caching allocator: blocks handed out (live) and freed blocks kept for reuse (cache), by size class */
    Block *live, *cache;
    int nlive, ncache, cap_live, cap_cache;
    size_t live_bytes, cache_bytes, peak_bytes;
    char name[96];                   /* "cuda-bf16 on NVIDIA H200 (device 0)" */
};

inline Ctx *ctx(const MgBackend *be) { return (Ctx *)be->ctx; }
inline cudaStream_t stream(const MgBackend *be) { return ctx(be)->stream[MG_STREAM_COMPUTE]; }

/* Scratch device memory for one op call: slot 0 .. WS_SLOTS-1, at least `bytes`, grown (never shrunk)
 * to the largest request, contents undefined. Different slots of one call never overlap. */
void *ws(const MgBackend *be, int slot, size_t bytes);

/* Column-major C = alpha op(A) op(B) + beta C (cuBLAS conventions), A, B, C in be->dtype, fp32
 * accumulation (no TF32), deterministic. m x n result, k the inner size. */
void gemm(const MgBackend *be, bool ta, bool tb, int m, int n, int k, float alpha, const void *A, int lda,
          const void *B, int ldb, float beta, void *C, int ldc);

/* The ops of the table (one definition each, in the file of its group). */
#define MG_CU_DECL(name, Args) void name(const MgBackend *be, const Args *a);
MG_OP_LIST(MG_CU_DECL)
#undef MG_CU_DECL
double sum_squares(const MgBackend *be, const void *x, int64_t n);
void axpy(const MgBackend *be, int64_t n, double alpha, const void *x, void *y);
void scale(const MgBackend *be, int64_t n, double alpha, void *x);

} /* namespace mgcu */

/* Run `body` with T = the backend's compute element type (float for fp32, bf16 for bf16). */
#define MG_CU_DISPATCH(be, T, ...)                                                                         \
    do {                                                                                                   \
        if ((be)->dtype == MG_BF16) {                                                                      \
            typedef mgcu::bf16 T;                                                                          \
            __VA_ARGS__;                                                                                   \
        } else {                                                                                           \
            typedef float T;                                                                               \
            __VA_ARGS__;                                                                                   \
        }                                                                                                  \
    } while (0)

#endif
