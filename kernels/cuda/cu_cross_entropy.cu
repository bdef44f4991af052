/* Softmax cross-entropy over the vocabulary, fused with its gradient (MgCrossEntropyArgs in ops.h; the CPU
 * reference is kernels/cpu/cross_entropy.c, whose numerics this follows).
 *
 * Per row t with target y (a target equal to ignore_index or outside [0, V) is ignored: loss 0, zero
 * gradient row, x[y] never read):
 *   m    = max_j x_j                                 (fp32)
 *   rest = sum_{j: x_j != m} exp(x_j - m) + (ties - 1)   (exp in fp32, the sum in double; the maxima, each
 *          exactly exp(0) = 1, are counted apart so that a confident row keeps its digits)
 *   s    = 1 + rest,  loss = (m - x_y) + log1p(rest)     (double, rounded once to the fp32 loss)
 *   d_j  = grad_scale * exp(x_j - m) / s  for j != y,  d_y = -grad_scale * other / s, where other = rest when
 *          x_y == m, else s - exp(x_y - m) (p_y - 1 without forming it)
 *
 * Parallelism: rows are independent. V <= 1024: one warp per row (8 rows per 256-thread block), reductions
 * with warp shuffles. Larger V: one block (128..512 threads) per row, block_max/block_sum. Blocks stride over
 * the rows when there are more rows than blocks. Within a row every thread owns a fixed strided set of
 * elements and reads them as 16-byte packs (4 floats or 8 bf16) after a short unaligned head (rows of odd V
 * start at any phase); the tail is read element-wise. Three passes over the row: max, sum of exps, and (with
 * dlogits) the gradient, which recomputes exp(x_j - m) in fp32 and rounds once to T. The second and third
 * reads hit L2 (one row is at most a few hundred KiB, and only the rows in flight are live), so DRAM
 * traffic is one read of the logits and one write of dlogits; there is no fp32 copy of the logits.
 *
 * In place (dlogits == logits): x_y is read by every thread before the first reduction, and every
 * gradient element is written by the thread that read it, after the last reduction's barrier (a
 * __syncwarp in the warp path), so nothing is overwritten before it is read.
 *
 * Determinism: the element-to-thread assignment and the reduction trees depend only on V (which picks the
 * block size) and the pointers' 16-byte phase, never on timing; no atomics. */
#include <math.h>
#include <stdint.h>

#include "cu_internal.cuh"

namespace mgcu {

/* N elements of T in one 16-byte load or store. */
template <class T, int N> struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

/* Elements of row x before its first 16-byte boundary (0 for the element-wise variant N = 1). */
template <class T, int N> MG_DEV int row_head(const T *x, int V) {
    if (N == 1) return 0;
    const int h = (int)(((16u - ((unsigned)(uintptr_t)x & 15u)) & 15u) / sizeof(T));
    return h < V ? h : V;
}

/* f(j, x_j) for the elements of x[0 .. V) that thread tid of nth owns. */
template <class T, int N, class F> MG_DEV void row_read(const T *x, int V, int head, int tid, int nth, F &&f) {
    for (int j = tid; j < head; j += nth) f(j, to_f(x[j]));
    const int nvec = (V - head) / N;
    const Pack<T, N> *xv = reinterpret_cast<const Pack<T, N> *>(x + head);
    for (int i = tid; i < nvec; i += nth) {
        const Pack<T, N> p = xv[i];
#pragma unroll
        for (int k = 0; k < N; k++) f(head + i * N + k, to_f(p.v[k]));
    }
    for (int j = head + nvec * N + tid; j < V; j += nth) f(j, to_f(x[j]));
}

/* d_j = g(j, x_j) over the same ownership; d has the same 16-byte phase as x (it may be x). */
template <class T, int N, class G>
MG_DEV void row_map(const T *x, T *d, int V, int head, int tid, int nth, G &&g) {
    for (int j = tid; j < head; j += nth) d[j] = from_f<T>(g(j, to_f(x[j])));
    const int nvec = (V - head) / N;
    const Pack<T, N> *xv = reinterpret_cast<const Pack<T, N> *>(x + head);
    Pack<T, N> *dv = reinterpret_cast<Pack<T, N> *>(d + head);
    for (int i = tid; i < nvec; i += nth) {
        const Pack<T, N> p = xv[i];
        Pack<T, N> o;
#pragma unroll
        for (int k = 0; k < N; k++) o.v[k] = from_f<T>(g(head + i * N + k, to_f(p.v[k])));
        dv[i] = o;
    }
    for (int j = head + nvec * N + tid; j < V; j += nth) d[j] = from_f<T>(g(j, to_f(x[j])));
}

template <class T, int N> MG_DEV void row_zero(T *d, int V, int head, int tid, int nth) {
    for (int j = tid; j < head; j += nth) d[j] = from_f<T>(0.0f);
    const int nvec = (V - head) / N;
    Pack<T, N> z;
#pragma unroll
    for (int k = 0; k < N; k++) z.v[k] = from_f<T>(0.0f);
    Pack<T, N> *dv = reinterpret_cast<Pack<T, N> *>(d + head);
    for (int i = tid; i < nvec; i += nth) dv[i] = z;
    for (int j = head + nvec * N + tid; j < V; j += nth) d[j] = from_f<T>(0.0f);
}

/* WARP: one warp per row (rows = blockIdx.x * warps + warp); else one block per row. */
template <class T, int N, bool WARP>
__global__ void __launch_bounds__(512) k_cross_entropy(int64_t rows, int V, int ign, const T *logits,
                                                       const int32_t *targets, double gs, float *losses, T *dlogits) {
    __shared__ float s_max[32];
    __shared__ double s_sum[32];
    int tid, nth;
    int64_t row, step;
    if (WARP) {
        tid = threadIdx.x & 31, nth = 32;
        row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        step = (int64_t)gridDim.x * (blockDim.x >> 5);
    } else {
        tid = threadIdx.x, nth = blockDim.x;
        row = blockIdx.x, step = gridDim.x;
    }
    /* The row loop is uniform over the warp (WARP) or the block, so every reduction has all its threads. */
    for (; row < rows; row += step) {
        const T *x = logits + (size_t)row * V;
        T *d = dlogits ? dlogits + (size_t)row * V : nullptr;
        const int head = row_head<T, N>(x, V);
        const int32_t y = targets[row];
        if (y == ign || y < 0 || y >= V) {
            if (tid == 0) losses[row] = 0.0f;
            if (d) row_zero<T, N>(d, V, head, tid, nth);
            continue;
        }
        const float xy = to_f(x[y]); /* before any thread overwrites the row (in place) */
        float m = -INFINITY;
        row_read<T, N>(x, V, head, tid, nth, [&](int, float v) { m = fmaxf(m, v); });
        m = WARP ? warp_max(m) : block_max(m, s_max);
        float part = 0.0f;
        int nt = 0;
        row_read<T, N>(x, V, head, tid, nth, [&](int, float v) {
            if (v == m) nt++;
            else part += expf(v - m);
        });
        double rest = WARP ? warp_sum((double)part) : block_sum((double)part, s_sum);
        const double ties = WARP ? warp_sum((double)nt) : block_sum((double)nt, s_sum);
        rest += ties - 1.0;
        const double s = 1.0 + rest;
        if (tid == 0) losses[row] = (float)(((double)m - (double)xy) + log1p(rest));
        if (d) {
            if (WARP) __syncwarp(); /* every lane's reads of the row (x_y included) precede the writes */
            const float r = (float)(gs / s);
            const double other = xy == m ? rest : s - (double)expf(xy - m);
            const float gy = (float)(-gs * (other / s));
            row_map<T, N>(x, d, V, head, tid, nth, [&](int j, float v) { return j == y ? gy : expf(v - m) * r; });
        }
    }
}

enum { XENT_WARP_MAX_V = 1024, XENT_WARP_ROWS = 8 };

template <class T, int N>
static void launch_xent(const MgBackend *be, int64_t rows, int V, int ign, const T *x, const int32_t *tg, double gs,
                        float *losses, T *d) {
    if (V <= XENT_WARP_MAX_V) {
        const int64_t blocks = (rows + XENT_WARP_ROWS - 1) / XENT_WARP_ROWS;
        MG_LAUNCH((k_cross_entropy<T, N, true>), grid_for(blocks, 1, 1 << 20), 32 * XENT_WARP_ROWS, 0, stream(be),
                  rows, V, ign, x, tg, gs, losses, d);
    } else {
        /* about four 16-byte packs per thread, 128..512 threads */
        const int per = 4 * (int)(16 / sizeof(T));
        int nth = (V + per - 1) / per;
        nth = (nth + 31) / 32 * 32;
        nth = nth < 128 ? 128 : nth > 512 ? 512 : nth;
        MG_LAUNCH((k_cross_entropy<T, N, false>), grid_for(rows, 1, 1 << 20), nth, 0, stream(be), rows, V, ign, x, tg,
                  gs, losses, d);
    }
}

void cross_entropy(const MgBackend *be, const MgCrossEntropyArgs *a) {
    const int64_t rows = a->T;
    const int V = a->V;
    MG_CHECK(rows >= 0 && V > 0, "cross_entropy: bad shape T=%lld V=%d (need T >= 0, V > 0)", (long long)rows, V);
    MG_CHECK(rows == 0 || (a->logits && a->targets && a->losses), "cross_entropy: logits, targets and losses must "
             "not be NULL");
    if (rows == 0) return;
    /* 16-byte packs when dlogits (if any) has the logits' 16-byte phase (always so in place or for buffers
     * from the allocator); element-wise otherwise. */
    const bool packs = !a->dlogits || ((uintptr_t)a->dlogits - (uintptr_t)a->logits) % 16 == 0;
    MG_CU_DISPATCH(be, T, {
        const T *x = (const T *)a->logits;
        T *d = (T *)a->dlogits;
        if (packs)
            launch_xent<T, 16 / sizeof(T)>(be, rows, V, a->ignore_index, x, a->targets, a->grad_scale,
                                           (float *)a->losses, d);
        else launch_xent<T, 1>(be, rows, V, a->ignore_index, x, a->targets, a->grad_scale, (float *)a->losses, d);
    });
}

} /* namespace mgcu */
