/* The CUDA subset of kernels/cuda/cu_common.cuh, emulated on the CPU (g++ -DMG_CUDA_EMU).
 *
 * A launch runs its blocks one after another; the threads of a block are fibers (ucontext) run by a
 * scheduler that switches at every barrier: __syncthreads parks a thread until every live thread of the
 * block has arrived, a warp operation (shuffle, ballot, __syncwarp) until every lane of its warp has.
 * Between barriers the scheduler runs the threads in a shuffled order (seeded by block and round), so a
 * kernel that reads what another thread writes without a barrier between them gives wrong results here
 * too. A barrier that can never complete (threads of one block at different barriers, a warp operation
 * with an exited lane) stops the program with the kernel's name. Device memory is host memory; streams
 * and events are trivial (every call completes before it returns).
 *
 * This is a test vehicle: it checks the kernels' indexing, synchronisation and arithmetic against the
 * CPU backend on machines without a GPU. It says nothing about speed, and it cannot see what only a GPU
 * has (memory coalescing, occupancy, real concurrency between warps, device intrinsics' rounding). */
#ifndef MG_CUDA_EMU_H
#define MG_CUDA_EMU_H

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
/* Static shared memory: one object per kernel function, shared by the fibers of the block that runs. */
#define __shared__ static thread_local

namespace emu {
/* The running thread's indices. Plain structs (no constructor): a thread_local of a class type with
 * one is reached through a wrapper function, which the sanitizers' checks trip over inside a fiber. */
extern thread_local const uint3 *cur_tid;
extern thread_local uint3 cur_bid, cur_bdim, cur_gdim;
void syncthreads();
void syncwarp();
/* Every lane of the warp contributes v; all[i] receives lane i's value. */
void warp_exchange(uint64_t v, uint64_t all[32]);
int lane_id();
void *dyn_smem();
void launch(dim3 grid, dim3 block, size_t smem, const char *name, const std::function<void()> &body);
/* Launch statistics (kernels and threads run since the start), for the tests of the emulator. */
void stats(int64_t *launches, int64_t *threads);

template <class T> inline T shfl_mode(T v, int arg, int mode, int width) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t u = 0, all[32];
    std::memcpy(&u, &v, sizeof(T));
    warp_exchange(u, all);
    const int lane = lane_id(), base = lane - lane % width, l = lane % width;
    int src = lane;
    switch (mode) {
    case 0: src = base + ((arg % width) + width) % width; break;            /* idx */
    case 1: src = base + ((l ^ arg) < width ? (l ^ arg) : l); break;        /* xor */
    case 2: src = l + arg < width ? lane + arg : lane; break;               /* down */
    case 3: src = l - arg >= 0 ? lane - arg : lane; break;                  /* up */
    }
    T r;
    std::memcpy(&r, &all[src], sizeof(T));
    return r;
}
} /* namespace emu */

#define threadIdx (*emu::cur_tid)
#define blockIdx (emu::cur_bid)
#define blockDim (emu::cur_bdim)
#define gridDim (emu::cur_gdim)
#define warpSize 32

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    emu::syncwarp();
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    (void)mask;
    return emu::shfl_mode(v, src, 0, width);
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lm, int width = 32) {
    (void)mask;
    return emu::shfl_mode(v, lm, 1, width);
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    (void)mask;
    return emu::shfl_mode(v, (int)d, 2, width);
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    (void)mask;
    return emu::shfl_mode(v, (int)d, 3, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    (void)mask;
    uint64_t all[32];
    emu::warp_exchange(pred ? 1u : 0u, all);
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= (all[i] ? 1u : 0u) << i;
    return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == 0xffffffffu; }

/* ---- math the kernels use (device intrinsics at full precision) ----------------------------------- */
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
/* Integer atomics (fibers never run at the same time: a plain read-modify-write is atomic here). */
inline int atomicAdd(int *p, int v) {
    int o = *p;
    *p = o + v;
    return o;
}
inline unsigned atomicAdd(unsigned *p, unsigned v) {
    unsigned o = *p;
    *p = o + v;
    return o;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
using std::fmaxf;
using std::fminf;
using std::isinf;
using std::isnan;

/* ---- bfloat16 (round to nearest even, like the hardware conversion) ------------------------------- */
struct __nv_bfloat16 {
    uint16_t x;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) h.x = (uint16_t)((u >> 16) | 0x40);
    else h.x = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.x << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

/* ---- the runtime API subset the backend's host code calls -------------------------------------- */
typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorNoDevice = 100 };
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
typedef struct emu_stream_s *cudaStream_t;
typedef struct emu_event_s *cudaEvent_t;
#define cudaStreamNonBlocking 1u
#define cudaEventDisableTiming 2u
#define cudaEventDefault 0u
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem, sharedMemPerBlockOptin;
};
const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t n);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t st = 0);
cudaError_t cudaMemset(void *d, int v, size_t n);
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st = 0);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);
template <class F> inline cudaError_t cudaFuncSetAttribute(F, int, int) { return cudaSuccess; }
#define cudaFuncAttributeMaxDynamicSharedMemorySize 8

#endif
