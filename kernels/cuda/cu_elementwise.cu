/* Element-wise ops: activations, dropout, RoPE, and the embedding lookup and its gradient. */
#include <math.h>
#include <string.h>

#include "cu_internal.cuh"

namespace mgcu {

/* ---- activations (the CPU's formulas: sigma from exp(-|x|), so it never overflows) ---------------- */
MG_DEV float sigmoid_f(float x) {
    float e = expf(-fabsf(x));
    float r = 1.0f / (1.0f + e);
    return x >= 0.0f ? r : e * r;
}

template <class T> __global__ void k_act_fwd(int kind, int64_t n, const T *a, const T *b, T *y) {
    MG_GRID_LOOP(i, n) {
        float x = to_f(a[i]), r;
        switch (kind) {
        case MG_ACT_SILU: r = x * sigmoid_f(x); break;
        case MG_ACT_SWIGLU: r = x * sigmoid_f(x) * to_f(b[i]); break;
        case MG_ACT_MUL: r = x * to_f(b[i]); break;
        default: r = x + to_f(b[i]); break;
        }
        y[i] = from_f<T>(r);
    }
}

template <class T> MG_DEV void put(T *d, int64_t i, float v, int acc) { d[i] = from_f<T>(acc ? to_f(d[i]) + v : v); }

template <class T> __global__ void k_act_bwd(int kind, int64_t n, const T *a, const T *b, const T *dy, T *da, T *db, int acc) {
    MG_GRID_LOOP(i, n) {
        float x = to_f(a[i]), g = to_f(dy[i]), ga, gb = 0.0f;
        switch (kind) {
        case MG_ACT_SILU: {
            float s = sigmoid_f(x);
            ga = g * s * (1.0f + x * (1.0f - s));
            break;
        }
        case MG_ACT_SWIGLU: {
            float s = sigmoid_f(x), bv = to_f(b[i]);
            ga = g * bv * s * (1.0f + x * (1.0f - s));
            gb = g * x * s;
            break;
        }
        case MG_ACT_MUL: ga = g * to_f(b[i]), gb = g * x; break;
        default: ga = g, gb = g; break;
        }
        /* inputs are read before the outputs are written: da/db may alias dy */
        if (da) put(da, i, ga, acc);
        if (db) put(db, i, gb, acc);
    }
}

void act_forward(const MgBackend *be, const MgActArgs *a) {
    MG_CHECK(a->n >= 0, "act_forward: n=%lld must be >= 0", (long long)a->n);
    MG_CHECK(a->kind >= MG_ACT_SILU && a->kind <= MG_ACT_ADD,
             "act_forward: unknown activation kind %d (expected 0..3, see MgActKind)", (int)a->kind);
    MG_CHECK(a->kind == MG_ACT_SILU || a->b, "act_forward: kind %d needs a second input b (b is NULL)", (int)a->kind);
    if (a->n == 0) return;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_act_fwd<T>), grid_for(a->n, 256), 256, 0, stream(be), (int)a->kind, a->n,
                                    (const T *)a->a, (const T *)a->b, (T *)a->y));
}

void act_backward(const MgBackend *be, const MgActArgs *a) {
    MG_CHECK(a->n >= 0, "act_backward: n=%lld must be >= 0", (long long)a->n);
    MG_CHECK(a->kind >= MG_ACT_SILU && a->kind <= MG_ACT_ADD,
             "act_backward: unknown activation kind %d (expected 0..3, see MgActKind)", (int)a->kind);
    void *db = a->kind == MG_ACT_SILU ? NULL : a->db;
    if (!a->da && !db) return;
    MG_CHECK(a->kind == MG_ACT_SILU || a->b, "act_backward: kind %d needs a second input b (b is NULL)", (int)a->kind);
    if (a->n == 0) return;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_act_bwd<T>), grid_for(a->n, 256), 256, 0, stream(be), (int)a->kind, a->n,
                                    (const T *)a->a, (const T *)a->b, (const T *)a->dy, (T *)a->da, (T *)db,
                                    a->accumulate));
}

/* ---- dropout: the counter-based mask of ops.h, bit for bit the CPU's ------------------------------- */
template <class T>
__global__ void k_dropout(int64_t n, uint64_t key, uint64_t base, uint64_t thr, float scale, int64_t seg_len,
                          uint64_t seg_stride, const T *src, T *dst, int acc) {
    MG_GRID_LOOP(i, n) {
        const uint64_t ctr = seg_len > 0 ? base + (uint64_t)(i / seg_len) * seg_stride + (uint64_t)(i % seg_len)
                                         : base + (uint64_t)i;
        float v = mask_keep(key, ctr, thr) ? to_f(src[i]) * scale : 0.0f;
        put(dst, i, v, acc);
    }
}

template <class T> __global__ void k_copy_acc(int64_t n, const T *src, T *dst) {
    MG_GRID_LOOP(i, n) dst[i] = from_f<T>(to_f(dst[i]) + to_f(src[i]));
}

static void check_p(const char *op, const MgDropoutArgs *a) {
    MG_CHECK(a->p >= 0.0 && a->p < 1.0, "%s: probability p=%g must be in [0, 1)", op, a->p);
    MG_CHECK(a->n >= 0, "%s: n=%lld must be >= 0", op, (long long)a->n);
    MG_CHECK(a->seg_len >= 0 && (a->seg_len == 0 || a->seg_stride >= a->seg_len),
             "%s: segments of seg_len=%lld must not overlap (seg_stride=%lld must be >= seg_len)", op,
             (long long)a->seg_len, (long long)a->seg_stride);
}

static void dropout_apply(const MgBackend *be, const MgDropoutArgs *a, const void *src, void *dst, int acc) {
    const uint64_t key = mg_fmix64(a->seed), thr = (uint64_t)ceil(a->p * 0x1.0p53);
    const float scale = (float)(1.0 / (1.0 - a->p));
    const int64_t seg = a->seg_len > 0 && a->seg_len < a->n ? a->seg_len : 0;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_dropout<T>), grid_for(a->n, 256), 256, 0, stream(be), a->n, key, a->offset, thr,
                                    scale, seg, (uint64_t)a->seg_stride, (const T *)src, (T *)dst, acc));
}

void dropout_forward(const MgBackend *be, const MgDropoutArgs *a) {
    check_p("dropout_forward", a);
    if (a->n == 0) return;
    if (a->p == 0.0) {
        if (a->y != a->x) CU_CHECK(cudaMemcpyAsync(a->y, a->x, (size_t)a->n * mg_dtype_size(be->dtype),
                                                   cudaMemcpyDeviceToDevice, stream(be)));
        return;
    }
    dropout_apply(be, a, a->x, a->y, 0);
}

void dropout_backward(const MgBackend *be, const MgDropoutArgs *a) {
    check_p("dropout_backward", a);
    if (!a->dx || a->n == 0) return;
    if (a->p == 0.0) {
        if (a->accumulate)
            MG_CU_DISPATCH(be, T, MG_LAUNCH((k_copy_acc<T>), grid_for(a->n, 256), 256, 0, stream(be), a->n,
                                            (const T *)a->dy, (T *)a->dx));
        else if (a->dx != a->dy)
            CU_CHECK(cudaMemcpyAsync(a->dx, a->dy, (size_t)a->n * mg_dtype_size(be->dtype), cudaMemcpyDeviceToDevice,
                                     stream(be)));
        return;
    }
    dropout_apply(be, a, a->dy, a->dx, a->accumulate);
}

/* ---- RoPE: a cos/sin table (angles in double, rounded once) then the rotation ------------------- */
__global__ void k_rope_table(int rows, int half, int64_t off, int chunk, double base, int dh, float *cs) {
    MG_GRID_LOOP(idx, (int64_t)rows * half) {
        const int r = (int)(idx / half), i = (int)(idx % half);
        const double pos = (double)((off + r) % chunk);
        const double ang = pos * pow(base, -2.0 * i / dh);
        cs[idx * 2] = (float)cos(ang);
        cs[idx * 2 + 1] = (float)sin(ang);
    }
}

template <class T>
__global__ void k_rope(int64_t npairs, int L, int H, int half, int chunk, const float *cs, float sign, const T *in, T *out,
                       int acc) {
    MG_GRID_LOOP(idx, npairs) {
        const int i = (int)(idx % half);
        const int64_t bt = idx / half / H;
        const int t = (int)(bt % L);
        const float *c = cs + ((int64_t)(t % chunk) * half + i) * 2;
        const float co = c[0], si = sign * c[1];
        const float x0 = to_f(in[idx * 2]), x1 = to_f(in[idx * 2 + 1]);
        const float y0 = x0 * co - x1 * si, y1 = x0 * si + x1 * co;
        put(out, idx * 2, y0, acc);
        put(out, idx * 2 + 1, y1, acc);
    }
}

static void rope_validate(const MgRopeArgs *a, const char *who) {
    MG_CHECK(a->B >= 0 && a->L >= 0 && a->H >= 1, "%s: bad shape B=%d L=%d H=%d", who, a->B, a->L, a->H);
    MG_CHECK(a->dh >= 2 && a->dh % 2 == 0, "%s: head width dh=%d must be even and >= 2 (pairs (2i, 2i+1))", who, a->dh);
    MG_CHECK(a->chunk >= 1, "%s: chunk=%d must be >= 1 (positions restart every chunk tokens)", who, a->chunk);
    MG_CHECK(a->pos_offset >= 0, "%s: pos_offset=%lld must be >= 0", who, (long long)a->pos_offset);
    MG_CHECK(a->base > 0, "%s: base=%g must be > 0", who, a->base);
}

static void rope_apply(const MgBackend *be, const MgRopeArgs *a, const void *in, void *out, float sign, int acc) {
    const int rows = a->L < a->chunk ? a->L : a->chunk, half = a->dh / 2;
    float *cs = (float *)ws(be, 0, sizeof(float) * 2 * (size_t)rows * (size_t)half);
    MG_LAUNCH(k_rope_table, grid_for((int64_t)rows * half, 128), 128, 0, stream(be), rows, half,
              a->pos_offset % a->chunk, a->chunk, a->base, a->dh, cs);
    const int64_t npairs = (int64_t)a->B * a->L * a->H * half;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_rope<T>), grid_for(npairs, 256), 256, 0, stream(be), npairs, a->L, a->H, half,
                                    a->chunk, cs, sign, (const T *)in, (T *)out, acc));
}

void rope_forward(const MgBackend *be, const MgRopeArgs *a) {
    rope_validate(a, "rope_forward");
    if (a->B == 0 || a->L == 0) return;
    rope_apply(be, a, a->x, a->y, 1.0f, 0);
}

void rope_backward(const MgBackend *be, const MgRopeArgs *a) {
    rope_validate(a, "rope_backward");
    if (a->B == 0 || a->L == 0 || !a->dx) return;
    rope_apply(be, a, a->dy, a->dx, -1.0f, a->accumulate);
}

/* ---- embedding ---------------------------------------------------------------------------------------
 * Forward: a row copy per token. Backward, deterministic without floating-point atomics: the positions
 * are grouped by token (an integer histogram, its prefix sum, a scatter, then each group sorted by
 * position: integer results that do not depend on timing), and one block per token present sums its
 * positions' gradient rows in position order in fp32 and adds the sum to the weight row once. */
template <class T> __global__ void k_emb_fwd(int64_t T_, int D, const int32_t *tok, const T *w, T *out) {
    MG_GRID_LOOP(idx, T_ * D) {
        const int64_t t = idx / D;
        const int j = (int)(idx % D);
        out[idx] = w[(int64_t)tok[t] * D + j];
    }
}

__global__ void k_emb_hist(int64_t T_, int V, const int32_t *tok, int *count) {
    MG_GRID_LOOP(t, T_) {
        const int v = tok[t];
        if (v >= 0 && v < V) atomicAdd(&count[v], 1);
    }
}

/* Exclusive prefix sum of count[0..V) into start[0..V], one block (a sequential pass per thread's
 * stripe, then a scan of the stripe totals). */
__global__ void k_emb_scan(int V, const int *count, int *start) {
    __shared__ int tot[1024];
    const int nt = blockDim.x, per = (V + nt - 1) / nt, lo = threadIdx.x * per;
    const int hi = lo + per < V ? lo + per : V;
    int s = 0;
    for (int v = lo; v < hi; v++) s += count[v];
    tot[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        int run = 0;
        for (int i = 0; i < nt; i++) {
            int c = tot[i];
            tot[i] = run;
            run += c;
        }
        start[V] = run;
    }
    __syncthreads();
    int run = tot[threadIdx.x];
    for (int v = lo; v < hi; v++) {
        start[v] = run;
        run += count[v];
    }
}

__global__ void k_emb_scatter(int64_t T_, int V, const int32_t *tok, const int *start, int *cursor, int *pos) {
    MG_GRID_LOOP(t, T_) {
        const int v = tok[t];
        if (v >= 0 && v < V) pos[start[v] + atomicAdd(&cursor[v], 1)] = (int)t;
    }
}

/* One block per token id with a non-empty group: sort the group (insertion sort by one thread; groups
 * are short except for the most frequent tokens), then every thread sums its columns. */
template <class T>
__global__ void k_emb_bwd(int V, int D, const int *start, int *pos, const T *dout, T *dw) {
    for (int v = blockIdx.x; v < V; v += gridDim.x) {
        const int s0 = start[v], s1 = start[v + 1];
        if (s0 == s1) continue; /* uniform over the block */
        if (threadIdx.x == 0)
            for (int i = s0 + 1; i < s1; i++) {
                int x = pos[i], j = i - 1;
                while (j >= s0 && pos[j] > x) {
                    pos[j + 1] = pos[j];
                    j--;
                }
                pos[j + 1] = x;
            }
        __syncthreads();
        for (int j = threadIdx.x; j < D; j += blockDim.x) {
            float acc = 0.0f;
            for (int i = s0; i < s1; i++) acc += to_f(dout[(int64_t)pos[i] * D + j]);
            T *row = dw + (int64_t)v * D;
            row[j] = from_f<T>(to_f(row[j]) + acc);
        }
        __syncthreads();
    }
}

static void check_tokens(const char *op, const MgEmbeddingArgs *a) {
    MG_CHECK(a->T >= 0 && a->D > 0 && a->V > 0, "%s: bad shape T=%lld D=%d V=%d (need T >= 0, D > 0, V > 0)", op,
             (long long)a->T, a->D, a->V);
    MG_CHECK(a->T == 0 || a->tokens, "%s: tokens is NULL", op);
    MG_CHECK(a->T <= INT32_MAX, "%s: T=%lld tokens is more than the op takes (2^31 - 1)", op, (long long)a->T);
}

void embedding_forward(const MgBackend *be, const MgEmbeddingArgs *a) {
    check_tokens("embedding_forward", a);
    if (a->T == 0) return;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_emb_fwd<T>), grid_for(a->T * a->D, 256), 256, 0, stream(be), a->T, a->D, a->tokens,
                                    (const T *)a->weight, (T *)a->out));
}

void embedding_backward(const MgBackend *be, const MgEmbeddingArgs *a) {
    check_tokens("embedding_backward", a);
    if (!a->dweight || a->T == 0) return;
    const int V = a->V;
    int *count = (int *)ws(be, 0, sizeof(int) * (size_t)V * 2);
    int *cursor = count + V;
    int *start = (int *)ws(be, 1, sizeof(int) * ((size_t)V + 1));
    int *pos = (int *)ws(be, 2, sizeof(int) * (size_t)a->T);
    CU_CHECK(cudaMemsetAsync(count, 0, sizeof(int) * (size_t)V * 2, stream(be)));
    MG_LAUNCH(k_emb_hist, grid_for(a->T, 256), 256, 0, stream(be), a->T, V, a->tokens, count);
    MG_LAUNCH(k_emb_scan, 1, 1024, 0, stream(be), V, count, start);
    MG_LAUNCH(k_emb_scatter, grid_for(a->T, 256), 256, 0, stream(be), a->T, V, a->tokens, start, cursor, pos);
    const int threads = a->D >= 256 ? 256 : 32 * ((a->D + 31) / 32);
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_emb_bwd<T>), (unsigned)(V < 4096 ? V : 4096), threads, 0, stream(be), V, a->D,
                                    start, pos, (const T *)a->dout, (T *)a->dweight));
}

} /* namespace mgcu */
