/* The CPU backend's instance state (MgBackend.ctx): the op workspace and the trivial events.
 *
 * Workspace: ops ask for scratch by slot instead of calling malloc. A per-thread slot holds one buffer
 * per OpenMP thread (reserved outside the parallel region with the size each thread needs, fetched
 * inside it); a shared slot holds one buffer for the call. Buffers only grow (to the largest size any
 * call has asked for) and are reused, so after the first training step no op allocates: the count of
 * grows stops moving, which tests check. Growing happens outside parallel regions only, so an allocation
 * failure reaches the error hook from the calling thread.
 *
 * Precision-independent: compiled in the float32 pass only (this file is compiled twice like every file
 * of kernels/cpu/, the float64 object is empty). */
#ifndef MG_FP64
#include <string.h>

#include "cpu_real.h"

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    char *base;
    size_t stride;   /* bytes per thread (multiple of 64) */
    int nthreads;
} ThreadSlot;

typedef struct {
    char *base;
    size_t bytes;
} SharedSlot;

struct CpuCtx {
    ThreadSlot thread[CPU_WS_SLOTS];
    SharedSlot shared[CPU_WS_SLOTS];
    int64_t grows;
};

/* The default instances' contexts (mg_cpu_backend_f32 / _f64 point at these). */
CpuCtx cpu_default_ctx_f32, cpu_default_ctx_f64;

CpuCtx *cpu_ctx_create(void) { return mg_calloc(1, sizeof(CpuCtx)); }

void cpu_ctx_destroy(CpuCtx *c) {
    if (!c) return;
    for (int i = 0; i < CPU_WS_SLOTS; i++) {
        mg_free_aligned(c->thread[i].base);
        mg_free_aligned(c->shared[i].base);
    }
    free(c);
}

static CpuCtx *ctx_of(const MgBackend *be) {
    MG_CHECK(be && be->ctx, "cpu backend: no instance context (use mg_backend_create or mg_cpu_backend_f32/f64)");
    return be->ctx;
}

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void cpu_ws_reserve(const MgBackend *be, int slot, size_t bytes_per_thread) {
    MG_CHECK(slot >= 0 && slot < CPU_WS_SLOTS, "cpu workspace: slot %d out of range", slot);
#ifdef _OPENMP
    MG_CHECK(!omp_in_parallel(), "cpu workspace: reserve must be called outside parallel regions");
#endif
    CpuCtx *c = ctx_of(be);
    ThreadSlot *s = &c->thread[slot];
    const size_t stride = (bytes_per_thread + 63) & ~(size_t)63;
    const int nt = max_threads();
    if (s->base && stride <= s->stride && nt <= s->nthreads) return;
    const size_t new_stride = MG_MAX(stride, s->stride);
    const int new_nt = MG_MAX(nt, s->nthreads);
    mg_free_aligned(s->base);
    s->base = mg_malloc_aligned(new_stride * (size_t)new_nt);
    s->stride = new_stride;
    s->nthreads = new_nt;
    c->grows++;
}

void *cpu_ws_thread(const MgBackend *be, int slot) {
    const CpuCtx *c = be->ctx;
#ifdef _OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    const ThreadSlot *s = &c->thread[slot];
    /* A reserve for this slot precedes every use (checked in debug runs of the tests via the bounds). */
    if (t >= s->nthreads || !s->base) {
        /* Cannot raise an error from inside a parallel region; this is a programming error. */
        fprintf(stderr, "fatal: cpu workspace slot %d used by thread %d without a reserve\n", slot, t);
        abort();
    }
    return s->base + (size_t)t * s->stride;
}

void *cpu_ws_shared(const MgBackend *be, int slot, size_t bytes) {
    MG_CHECK(slot >= 0 && slot < CPU_WS_SLOTS, "cpu workspace: slot %d out of range", slot);
#ifdef _OPENMP
    MG_CHECK(!omp_in_parallel(), "cpu workspace: shared buffers are taken outside parallel regions");
#endif
    CpuCtx *c = ctx_of(be);
    SharedSlot *s = &c->shared[slot];
    if (!s->base || bytes > s->bytes) {
        mg_free_aligned(s->base);
        s->bytes = MG_MAX((bytes + 63) & ~(size_t)63, (size_t)64);
        s->base = mg_malloc_aligned(s->bytes);
        c->grows++;
    }
    return s->base;
}

void *cpu_ws_zeroed(const MgBackend *be, int slot, size_t bytes) {
    void *p = cpu_ws_shared(be, slot, bytes);
    memset(p, 0, bytes);
    return p;
}

size_t cpu_workspace_bytes(const MgBackend *be, int64_t *grows) {
    const CpuCtx *c = ctx_of(be);
    size_t total = 0;
    for (int i = 0; i < CPU_WS_SLOTS; i++) {
        total += c->thread[i].stride * (size_t)c->thread[i].nthreads;
        total += c->shared[i].bytes;
    }
    if (grows) *grows = c->grows;
    return total;
}
#endif
