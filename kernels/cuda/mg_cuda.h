/* The CUDA backend's entry points for the registry (kernels/backend_registry.c), callable from C.
 * Names: "cuda" (= "cuda-bf16": bf16 storage, fp32 accumulation) and "cuda-fp32" (everything fp32: the
 * parity path); the emulated builds of the same kernels (CPU fibers, for tests without a GPU) are
 * "cuda-emu" and "cuda-emu-fp32". */
#ifndef MG_CUDA_H
#define MG_CUDA_H

#include <stddef.h>

#include "../ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* NULL with a message in err (no GPU, bad device id, initialisation failed) */
MgBackend *mg_cuda_backend_create(const char *name, int device, char *err, size_t errlen);
void mg_cuda_backend_destroy(MgBackend *be);
MgBackend *mg_cuda_emu_backend_create(const char *name, int device, char *err, size_t errlen);
void mg_cuda_emu_backend_destroy(MgBackend *be);
/* The ceilings `megalodon bench` measures first on a CUDA backend: device-to-device copy bandwidth (GB/s,
 * counting bytes read + written, of a bytes-sized buffer) and the backend's matrix product on n x n x n
 * in its compute dtype (TFLOP/s, 2 n^3 per product), each the best of `reps` timed with CUDA events. */
void mg_cuda_ceilings(const MgBackend *be, size_t bytes, int n, int reps, double *copy_gbs, double *gemm_tflops);
/* Free and total memory of a GPU (cudaMemGetInfo after selecting it); 0 on success, -1 without a GPU. */
int mg_cuda_memory_info(int device, double *free_bytes, double *total_bytes);
/* local_rank % (GPUs of this machine), or 0 when no GPU can be counted (create then says why). */
int mg_cuda_device_for_local_rank(int local_rank);
/* One line about the device (name, memory, compute capability), or why there is none. */
void mg_cuda_device_info(int device, char *out, size_t len);

#ifdef __cplusplus
}
#endif
#endif
