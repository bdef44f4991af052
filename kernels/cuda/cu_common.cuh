/* What every CUDA kernel file of the backend includes: the CUDA subset the kernels may use, the element
 * types, loads and stores with conversion, warp and block reductions, the launch macro and call checks.
 *
 * The same sources compile two ways:
 *   nvcc            the real backend ("cuda", "cuda-fp32"), for sm_80 and sm_90;
 *   g++ -DMG_CUDA_EMU  the emulated backend ("cuda-emu", "cuda-emu-fp32"): every thread of a block is a
 *                   fiber on the CPU (kernels/cuda/emu/), so the kernels' indexing, barriers and shuffles
 *                   run, and are tested against the CPU backend, on machines without a GPU.
 * Kernels therefore stick to this subset: __global__/__device__ functions, threadIdx/blockIdx/blockDim/
 * gridDim (x, y, z), __shared__ arrays (static size) and MG_DYN_SMEM, __syncthreads, the warp helpers
 * below (full warps only: blockDim.x a multiple of 32, every lane taking part), float math from <cmath>,
 * and MG_LAUNCH. No floating-point atomics (ops are deterministic; integer atomicAdd only where the result
 * cannot depend on the order, like a histogram), no cooperative groups, no inline PTX outside
 * `#ifndef MG_CUDA_EMU`. */
#ifndef MG_CU_COMMON_CUH
#define MG_CU_COMMON_CUH

#include <stdint.h>

#ifdef MG_CUDA_EMU
#include "emu/cuda_emu.h"
#define mgcu mgcu_emu /* the emulated build's symbols live in their own namespace */
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

extern "C" {
#include "../../src/hash.h"
#include "../ops.h"
}

#ifndef MG_CUDA_EMU
#define MG_DEV __device__ __forceinline__
#else
#define MG_DEV inline
#endif

namespace mgcu {

typedef __nv_bfloat16 bf16;

/* ---- element access: compute dtype T is float or bf16, arithmetic in float ---------------------- */
MG_DEV float to_f(float x) { return x; }
MG_DEV float to_f(bf16 x) { return __bfloat162float(x); }
template <class T> MG_DEV T from_f(float x);
template <> MG_DEV float from_f<float>(float x) { return x; }
template <> MG_DEV bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

/* ---- reductions (the whole warp / block must call them; results in a fixed order) ---------------- */
MG_DEV float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
MG_DEV double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
MG_DEV float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum (or max) over the block (blockDim.x threads, a multiple of 32, 1-D blocks), returned to every
 * thread. scratch: __shared__ float[32] (or double[32]). Starts and ends with a barrier, so it may be
 * called repeatedly with the same scratch. */
template <class V> MG_DEV V block_sum(V v, V *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    V t = lane < nw ? scratch[lane] : (V)0;
    return warp_sum(t);
}
MG_DEV float block_max(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : -INFINITY;
    return warp_max(t);
}

/* ---- the dropout / DropKey stream (the CPU's mg_mask_keep, bit for bit) --------------------------- */
MG_DEV bool mask_keep(uint64_t key, uint64_t index, uint64_t threshold) {
    return (mg_fmix64(key + index * MG_SPLITMIX64_GAMMA) >> 11) >= threshold;
}

/* Grid-stride loop over n elements. */
#define MG_GRID_LOOP(i, n)                                                                                  \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* Blocks for n elements with `threads` per block, capped (grid-stride loops cover the rest). */
static inline unsigned grid_for(int64_t n, int threads, int64_t cap = 65535 * 8) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > cap) b = cap;
    return (unsigned)b;
}

} /* namespace mgcu */

/* ---- dynamic shared memory: MG_DYN_SMEM(float, buf); declares `float *buf` -------------------------- */
#ifndef MG_CUDA_EMU
#define MG_DYN_SMEM(T, name)                                                                               \
    extern __shared__ __align__(16) unsigned char mg_dyn_smem_raw[];                                      \
    T *name = reinterpret_cast<T *>(mg_dyn_smem_raw)
#else
#define MG_DYN_SMEM(T, name) T *name = reinterpret_cast<T *>(emu::dyn_smem())
#endif

/* ---- launch and checks ----------------------------------------------------------------------------
 * MG_LAUNCH(kernel, grid, block, smem_bytes, stream, args...); a template kernel goes in parentheses:
 * MG_LAUNCH((k<float, 4>), ...). Every launch is checked (cudaGetLastError) with the kernel's name. */
#ifndef MG_CUDA_EMU
#define MG_LAUNCH(kernel, grid, block, smem, stream, ...)                                                  \
    do {                                                                                                   \
        kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__);                                        \
        mgcu::check_launch(#kernel, __FILE__, __LINE__);                                                    \
    } while (0)
#else
#define MG_LAUNCH(kernel, grid, block, smem, stream, ...)                                                  \
    do {                                                                                                   \
        (void)(stream);                                                                                    \
        emu::launch(dim3(grid), dim3(block), (size_t)(smem), #kernel, [&]() { kernel(__VA_ARGS__); });     \
    } while (0)
#endif

/* CU_CHECK(call): a failed CUDA runtime call ends the run with the call, file:line and a hint. */
#define CU_CHECK(call) mgcu::check_rt((call), #call, __FILE__, __LINE__)
namespace mgcu {
void check_rt(cudaError_t e, const char *what, const char *file, int line);
void check_launch(const char *kernel, const char *file, int line);
}

#endif
