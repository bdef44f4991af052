/* The fiber scheduler and runtime stand-ins of the CUDA emulator (cuda_emu.h says what it is for). */
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

/* Switching between fibers. On x86-64 a few instructions that save the callee-saved registers and the
 * floating-point control words (ucontext's swapcontext also saves the signal mask, a system call per
 * switch, which made the emulator ten times slower); elsewhere ucontext. */
#if defined(__x86_64__) && !defined(MG_EMU_UCONTEXT)
#define EMU_FAST_SWITCH 1
extern "C" void mg_emu_switch(void **save_sp, void *new_sp);
asm(".text\n"
    ".globl mg_emu_switch\n"
    ".type mg_emu_switch,@function\n"
    "mg_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size mg_emu_switch,.-mg_emu_switch\n");
#endif

namespace emu {

thread_local const uint3 *cur_tid;
thread_local uint3 cur_bid, cur_bdim, cur_gdim;

namespace {

enum State { READY, AT_BLOCK, AT_WARP, DONE };

/* 256 KiB per fiber: kernels keep small per-thread arrays; mmap commits only the pages touched. */
const size_t kStack = 256 * 1024;

struct Fiber {
#ifdef EMU_FAST_SWITCH
    void *sp;
#else
    ucontext_t ctx;
#endif
    uint3 tid;
    int lane, warp;
    State state;
    char *stack;
};

struct BlockRun {
    std::vector<Fiber> fibers;
    std::vector<unsigned char> smem;
#ifdef EMU_FAST_SWITCH
    void *sched_sp;
#else
    ucontext_t sched;
#endif
    const std::function<void()> *body;
    const char *name;
    Fiber *cur;
    uint64_t xbuf[32][32]; /* warp exchange: [warp][lane] */
};

thread_local BlockRun *g_run;
thread_local std::vector<char *> g_stacks; /* a pool, reused by every launch of this OS thread */
int64_t g_launches, g_threads;

void die(const char *fmt, const char *name, unsigned bx, unsigned by, unsigned bz, const char *extra) {
    std::fprintf(stderr, "cuda-emu: kernel %s, block (%u,%u,%u): ", name, bx, by, bz);
    std::fprintf(stderr, fmt, extra);
    std::fprintf(stderr, "\n");
    std::abort();
}

/* fiber -> scheduler, and scheduler -> fiber */
inline void to_sched(BlockRun *r, Fiber *f) {
#ifdef EMU_FAST_SWITCH
    mg_emu_switch(&f->sp, r->sched_sp);
#else
    swapcontext(&f->ctx, &r->sched);
#endif
}
inline void to_fiber(BlockRun *r, Fiber *f) {
#ifdef EMU_FAST_SWITCH
    mg_emu_switch(&r->sched_sp, f->sp);
#else
    swapcontext(&r->sched, &f->ctx);
#endif
}

void fiber_entry() {
    BlockRun *r = g_run;
    (*r->body)();
    Fiber *f = r->cur;
    f->state = DONE;
    to_sched(r, f);
    std::abort(); /* a finished fiber is never resumed */
}

void fiber_init(Fiber &f) {
#ifdef EMU_FAST_SWITCH
    /* the frame mg_emu_switch pops: control words, r15..rbp, then `ret` into fiber_entry with the stack
     * aligned as after a call */
    uintptr_t top = ((uintptr_t)f.stack + kStack) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)top;
    *--sp = 0;                          /* fiber_entry's return address: never used */
    *--sp = (uint64_t)(uintptr_t)&fiber_entry;
    for (int i = 0; i < 6; i++) *--sp = 0; /* rbp rbx r12 r13 r14 r15 */
    uint32_t csr[2];
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(csr[1]));
    *--sp = (uint64_t)csr[0] | ((uint64_t)(csr[1] & 0xffff) << 32);
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
#endif
}

void park(State s) {
    BlockRun *r = g_run;
    if (!r) {
        std::fprintf(stderr, "cuda-emu: a barrier or warp operation outside a kernel\n");
        std::abort();
    }
    Fiber *f = r->cur;
    f->state = s;
    to_sched(r, f);
}

uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void run_block(BlockRun &r, uint64_t block_linear) {
    const unsigned nt = cur_bdim.x * cur_bdim.y * cur_bdim.z;
    while (g_stacks.size() < nt) {
        void *p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            std::fprintf(stderr, "cuda-emu: cannot map a fiber stack\n");
            std::abort();
        }
        g_stacks.push_back((char *)p);
    }
    r.fibers.resize(nt);
    for (unsigned i = 0; i < nt; i++) {
        Fiber &f = r.fibers[i];
        f.tid = {i % cur_bdim.x, (i / cur_bdim.x) % cur_bdim.y, i / (cur_bdim.x * cur_bdim.y)};
        f.lane = (int)(i % 32);
        f.warp = (int)(i / 32);
        f.state = READY;
        f.stack = g_stacks[i];
        fiber_init(f);
    }
    /* poison the dynamic shared memory: a read before a write shows up as NaN */
    if (!r.smem.empty()) std::memset(r.smem.data(), 0xff, r.smem.size());
    std::vector<unsigned> order(nt);
    const unsigned nwarps = (nt + 31) / 32;
    for (uint64_t round = 0;; round++) {
        for (unsigned i = 0; i < nt; i++) order[i] = i;
        uint64_t s = mix(block_linear * 0x9E3779B97F4A7C15ull + round + 1);
        for (unsigned i = nt; i > 1; i--) { /* Fisher-Yates */
            s = mix(s);
            unsigned j = (unsigned)(s % i);
            unsigned t = order[i - 1];
            order[i - 1] = order[j];
            order[j] = t;
        }
        for (unsigned k = 0; k < nt; k++) {
            Fiber &f = r.fibers[order[k]];
            if (f.state != READY) continue;
            r.cur = &f;
            cur_tid = &f.tid;
            to_fiber(&r, &f);
        }
        unsigned alive = 0, at_block = 0;
        for (unsigned i = 0; i < nt; i++) {
            alive += r.fibers[i].state != DONE;
            at_block += r.fibers[i].state == AT_BLOCK;
        }
        if (alive == 0) break;
        bool released = false;
        for (unsigned w = 0; w < nwarps; w++) {
            unsigned lo = w * 32, hi = lo + 32 < nt ? lo + 32 : nt, at_warp = 0, done = 0;
            for (unsigned i = lo; i < hi; i++) {
                at_warp += r.fibers[i].state == AT_WARP;
                done += r.fibers[i].state == DONE;
            }
            if (at_warp == 0) continue;
            if (at_warp + done == hi - lo && done > 0)
                die("a warp operation (shuffle/ballot/__syncwarp) in warp %s has lanes that already exited", r.name,
                    cur_bid.x, cur_bid.y, cur_bid.z, std::to_string(w).c_str());
            if (at_warp == hi - lo) {
                for (unsigned i = lo; i < hi; i++) r.fibers[i].state = READY;
                released = true;
            }
        }
        if (!released && at_block == alive) {
            for (unsigned i = 0; i < nt; i++)
                if (r.fibers[i].state == AT_BLOCK) r.fibers[i].state = READY;
            released = true;
        }
        if (!released)
            die("deadlock: threads wait at different barriers (%s); a __syncthreads or warp operation is not reached "
                "by every thread",
                r.name, cur_bid.x, cur_bid.y, cur_bid.z, "block/warp");
    }
}

} /* namespace */

void syncthreads() { park(AT_BLOCK); }
void syncwarp() {
    uint64_t all[32];
    warp_exchange(0, all);
}
int lane_id() { return g_run->cur->lane; }

void warp_exchange(uint64_t v, uint64_t all[32]) {
    BlockRun *r = g_run;
    if (!r) {
        std::fprintf(stderr, "cuda-emu: a warp operation outside a kernel\n");
        std::abort();
    }
    Fiber *f = r->cur;
    const int w = f->warp;
    r->xbuf[w][f->lane] = v;
    park(AT_WARP); /* every lane has written */
    std::memcpy(all, r->xbuf[w], sizeof(uint64_t) * 32);
    park(AT_WARP); /* every lane has read: the buffer may be reused */
}

void *dyn_smem() { return g_run ? g_run->smem.data() : nullptr; }

void launch(dim3 grid, dim3 block, size_t smem, const char *name, const std::function<void()> &body) {
    const uint64_t nt = (uint64_t)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nt == 0 || nt > 1024 || block.z > 64 || grid.y > 65535 ||
        grid.z > 65535) {
        std::fprintf(stderr, "cuda-emu: kernel %s: invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u)\n",
                     name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        std::abort();
    }
    if (smem > 227 * 1024) {
        std::fprintf(stderr, "cuda-emu: kernel %s asks for %zu bytes of shared memory (more than 227 KiB)\n", name, smem);
        std::abort();
    }
    if (g_run) {
        std::fprintf(stderr, "cuda-emu: kernel %s launched from inside a kernel\n", name);
        std::abort();
    }
    BlockRun r;
    r.body = &body;
    r.name = name;
    r.smem.resize(smem);
    cur_bdim = {block.x, block.y, block.z};
    cur_gdim = {grid.x, grid.y, grid.z};
    g_run = &r;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                cur_bid = {x, y, z};
                run_block(r, ((uint64_t)z * grid.y + y) * grid.x + x);
            }
    g_run = nullptr;
    cur_tid = nullptr;
    __atomic_add_fetch(&g_launches, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&g_threads, (int64_t)(nt * grid.x * grid.y * grid.z), __ATOMIC_RELAXED);
}

void stats(int64_t *launches, int64_t *threads) {
    if (launches) *launches = __atomic_load_n(&g_launches, __ATOMIC_RELAXED);
    if (threads) *threads = __atomic_load_n(&g_threads, __ATOMIC_RELAXED);
}

} /* namespace emu */

/* ---- runtime stand-ins --------------------------------------------------------------------------- */
struct emu_event_s {
    double t;
};
static thread_local cudaError_t g_last = cudaSuccess;
static cudaError_t ret(cudaError_t e) {
    if (e != cudaSuccess) g_last = e;
    return e;
}
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    }
    return "unknown error";
}
cudaError_t cudaGetLastError() {
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError() { return g_last; }
cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return ret(d == 0 ? cudaSuccess : cudaErrorInvalidValue); }
cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    if (d != 0) return ret(cudaErrorInvalidValue);
    std::memset(p, 0, sizeof *p);
    std::snprintf(p->name, sizeof p->name, "CUDA emulator (CPU fibers)");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 2;
    p->totalGlobalMem = (size_t)4 << 30;
    p->sharedMemPerBlockOptin = 227 * 1024;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaMalloc(void **p, size_t n) {
    *p = std::malloc(n ? n : 1);
    return ret(*p ? cudaSuccess : cudaErrorMemoryAllocation);
}
cudaError_t cudaFree(void *p) {
    std::free(p);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t n) { return cudaMalloc(p, n); }
cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    *free_b = (size_t)4 << 30;
    *total_b = (size_t)4 << 30;
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind) {
    if (n && d != s) std::memmove(d, s, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t) { return cudaMemcpy(d, s, n, k); }
cudaError_t cudaMemset(void *d, int v, size_t n) {
    if (n) std::memset(d, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t) { return cudaMemset(d, v, n); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    static char dummy;
    *s = (cudaStream_t)&dummy;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) {
    *e = new emu_event_s{0.0};
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
    e->t = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = (float)((b->t - a->t) * 1e3);
    return cudaSuccess;
}
