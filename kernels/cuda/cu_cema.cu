/* CEMA, the complex exponential moving average (spec §2, gradients §11.1), as a chunked parallel scan:
 *     h_t = p x_t + q h_{t-1},   y_t = Re(sum_n gamma_n h_{t,n}) + omega x_t      per channel j, order n.
 *
 * Time is cut into chunks of CH steps (the last may be shorter). The recurrence is linear, so a chunk's
 * end state is q^len S + E, where S is the state entering the chunk and E the chunk's end state from a
 * zero start. Forward:
 *   k_coef    p, q, gamma (double, the CPU's formulas, rounded once to float) and q^CH, q^len_last per
 *             (channel, order) into scratch, laid out [n][j] so that warps read 32 consecutive channels.
 *   k_local   one block per (batch row, chunk, 32-channel group): the x tile goes to shared memory, each
 *             thread runs its orders (n = warp, warp + NW, ...) through the chunk from zero -> E.
 *   k_carry   one thread per (b, n, j): the short sequential pass over the L/CH chunk summaries,
 *             S_0 = h_in, S_{c+1} = q^len S_c + E_c; E is overwritten with S; the last one is h_out.
 *   k_out     the per-chunk fix-up, one block per (b, chunk, channel group): each thread reruns its
 *             orders (at most 4, in registers) from S_c, one sub-tile of ST steps at a time, writing
 *             per-step partial sums over its orders to shared memory; the block then adds omega x and the
 *             NW warps' partials in warp order and writes y. State-only calls (y == NULL) stop after
 *             k_carry.
 * Backward (nothing time-indexed saved; spec §11.1, complex gradients g = dL/dRe + i dL/dIm):
 *     lambda_t = dy_t conj(gamma) + conj(q) lambda_{t+1}  (lambda at L-1 seeded with dh_out),
 *     dx_t = omega dy_t + sum_n p Re(lambda_t),   dp = sum_t Re(lambda_t) x_t,
 *     dq = sum_t lambda_t conj(h_{t-1}),   dgamma = sum_t dy_t conj(h_t),   dh_in = conj(q) lambda_0.
 * The adjoint is the same kind of scan run backwards in time (multiplier conj(q), input weight
 * conj(gamma) on dy, output weight p), so it reuses k_local / k_carry / k_out: k_local also makes the
 * chunk-local adjoint carries F, k_carry also walks the chunks from the end (Lin_{c-1} = conj(q^len) Lin_c
 * + F_c, the last carry is dh_in), and k_out<BWD> writes dx. The parameter sums pair forward states with
 * adjoints inside each chunk: k_pgrad (one block per (b, chunk, channel group), one order at a time per
 * thread) keeps the states at the chunk's ST-step sub-tile starts in registers, and for each sub-tile
 * from the last recomputes its ST states (registers) and walks it backwards with lambda. Per-chunk
 * partials go to scratch; k_pfinal sums them over (b, chunk) in that fixed order (double) and chains them
 * to the raw parameters, k_pfinal_ch does the per-channel theta and omega sums.
 *
 * Determinism: no atomics; every sum has a fixed order (orders within a thread, then warps in order;
 * chunks and batch rows in index order), independent of scheduling.
 * Precision: states and products in fp32 (the CPU carries double); errors stay near m * 6e-8 relative for
 * a memory of m steps, and the chunk powers q^CH come from double. Parameter partials are fp32 within a
 * chunk, double across chunks.
 * Scratch (ws slots): 0 coefficients 9 N D floats; 1 and 2 the chunk summaries, B ceil(L/CH) N D complex
 * each; 3 the backward's parameter partials, 5 B ceil(L/CH) N D floats (335 MB at B=1, L=32K, D=2048,
 * N=16); 4 and 5 small. Aliasing: y may alias x and dx may alias dy (k_out's blocks overwrite only the
 * tile they have read, and runs last), h_out may alias h_in and dh_in dh_out (read before written by
 * the same thread). */
#include <math.h>

#include "cu_internal.cuh"

namespace mgcu {

enum {
    CH = 64,       /* time steps per chunk */
    ST = 16,       /* sub-tile of a chunk (k_out's shared partials, k_pgrad's recompute window) */
    NSUB = CH / ST,
    MAXK = 4,      /* orders per thread in k_out: N <= 64 over at most 16 warps */
    CEMA_MAX_N = 64
};
enum { C_P = 0, C_QR, C_QI, C_GR, C_GI, C_QCR, C_QCI, C_QLR, C_QLI, C_COUNT }; /* k_coef's outputs */
enum { G_P = 0, G_QR, G_QI, G_GR, G_GI, G_COUNT };                            /* k_pgrad's partials */

#define CEMA_PI 3.14159265358979323846

/* A complex value in scratch (8-byte aligned: one load or store on the GPU). */
struct __align__(8) cf2 {
    float x, y;
};
MG_DEV cf2 mk_cf2(float x, float y) {
    cf2 v;
    v.x = x, v.y = y;
    return v;
}

MG_DEV int imin(int a, int b) { return a < b ? a : b; }
MG_DEV double sigmoid_d(double v) { return 1.0 / (1.0 + exp(-v)); }

/* Coefficients per (j, n), stored at v * N * D + n * D + j. */
template <class T>
__global__ void k_coef(int D, int N, int len_last, const T *alpha, const T *delta, const T *theta, const T *gamma,
                       float *coef) {
    const int64_t ND = (int64_t)N * D;
    MG_GRID_LOOP(idx, ND) {
        const int n = (int)(idx / D), j = (int)(idx % D);
        const int64_t i = (int64_t)j * N + n;
        const double inv_sqrt_n = 1.0 / sqrt((double)N), base = 2.0 * CEMA_PI / N;
        const double om = sigmoid_d((double)to_f(theta[j]));
        const double al = sigmoid_d((double)to_f(alpha[i])), de = sigmoid_d((double)to_f(delta[i]));
        const double r = 1.0 - al * de, th = (n + 1) * base * om;
        const double rc = pow(r, (double)CH), rl = pow(r, (double)len_last);
        float *o = coef + idx;
        o[C_P * ND] = (float)al;
        o[C_QR * ND] = (float)(r * cos(th));
        o[C_QI * ND] = (float)(r * sin(th));
        o[C_GR * ND] = (float)((double)to_f(gamma[2 * i]) * inv_sqrt_n);
        o[C_GI * ND] = (float)((double)to_f(gamma[2 * i + 1]) * inv_sqrt_n);
        o[C_QCR * ND] = (float)(rc * cos(CH * th));
        o[C_QCI * ND] = (float)(rc * sin(CH * th));
        o[C_QLR * ND] = (float)(rl * cos(len_last * th));
        o[C_QLI * ND] = (float)(rl * sin(len_last * th));
    }
}

/* Rows t0 .. t0+CH-1 of channels j0 .. j0+31 of a (B, L, D) tensor into tile[tt][lane], zeros outside. */
template <class T> MG_DEV void load_tile(const T *src, int L, int D, int b, int t0, int j0, float (*tile)[32]) {
    for (int k = threadIdx.x; k < CH * 32; k += blockDim.x) {
        const int tt = k >> 5, l = k & 31, t = t0 + tt, j = j0 + l;
        tile[tt][l] = t < L && j < D ? to_f(src[((int64_t)b * L + t) * D + j]) : 0.0f;
    }
}

/* Chunk-local summaries from a zero start, per (b, chunk, n, j) at ((b * nch + c) * N + n) * D + j:
 * E = end state of the forward recurrence over x (if E), F = carry leaving the chunk's first step of the
 * adjoint recurrence over dy (if F). Grid (nch, channel groups, B), block 32 x NW. */
template <class T>
__global__ void k_local(int L, int D, int N, int nch, const T *x, const T *dy, const float *coef, cf2 *E, cf2 *F) {
    __shared__ float xs[CH][32];
    __shared__ float ds[CH][32];
    const int c = blockIdx.x, b = blockIdx.z, j0 = blockIdx.y * 32, t0 = c * CH, len = imin(CH, L - t0);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5, j = j0 + lane;
    if (E) load_tile(x, L, D, b, t0, j0, xs);
    if (F) load_tile(dy, L, D, b, t0, j0, ds);
    __syncthreads();
    if (j >= D) return;
    const int64_t ND = (int64_t)N * D;
    for (int n = w; n < N; n += nw) {
        const int64_t ci = (int64_t)n * D + j, oi = ((int64_t)b * nch + c) * ND + ci;
        const float qr = coef[C_QR * ND + ci], qi = coef[C_QI * ND + ci];
        if (E) {
            const float p = coef[C_P * ND + ci];
            float hr = 0.0f, hi = 0.0f;
            for (int tt = 0; tt < len; tt++) {
                const float r = qr * hr - qi * hi + p * xs[tt][lane];
                hi = qr * hi + qi * hr;
                hr = r;
            }
            E[oi] = mk_cf2(hr, hi);
        }
        if (F) {
            const float gr = coef[C_GR * ND + ci], gi = coef[C_GI * ND + ci];
            float cr = 0.0f, cim = 0.0f;
            for (int tt = len - 1; tt >= 0; tt--) {
                const float u = ds[tt][lane];
                const float lr = cr + gr * u, li = cim - gi * u; /* lambda_t */
                cr = qr * lr + qi * li;                          /* conj(q) lambda_t */
                cim = qr * li - qi * lr;
            }
            F[oi] = mk_cf2(cr, cim);
        }
    }
}

/* The sequential pass over chunk summaries, one thread per (b, n, j). Forward (E != NULL): E[c] becomes
 * S_c, the state entering chunk c (S_0 = h_in), and h_out gets the final state. Backward (F != NULL):
 * F[c] becomes Lin_c, the adjoint carry entering chunk c from its end (dh_out for the last chunk), and
 * dh_in gets the carry after the first step. States are (B, D, N, 2). The summaries are read CARRY_BATCH
 * at a time ahead of the dependent chain, so several loads per thread are in flight. */
enum { CARRY_BATCH = 8 };

__global__ void k_carry(int B, int D, int N, int nch, const float *coef, cf2 *E, const float *h_in, float *h_out,
                        cf2 *F, const float *dh_out, float *dh_in) {
    const int64_t ND = (int64_t)N * D;
    MG_GRID_LOOP(idx, (int64_t)B * ND) {
        const int64_t ci = idx % ND, b = idx / ND;
        const int n = (int)(ci / D), j = (int)(ci % D);
        const int64_t si = ((b * D + j) * N + n) * 2;
        const float cr = coef[C_QCR * ND + ci], cim = coef[C_QCI * ND + ci];
        const float lr = coef[C_QLR * ND + ci], lim = coef[C_QLI * ND + ci];
        if (E) {
            float sr = h_in ? h_in[si] : 0.0f, sim = h_in ? h_in[si + 1] : 0.0f;
            for (int c0 = 0; c0 < nch; c0 += CARRY_BATCH) {
                cf2 v[CARRY_BATCH];
#pragma unroll
                for (int k = 0; k < CARRY_BATCH; k++)
                    v[k] = c0 + k < nch ? E[(b * nch + c0 + k) * ND + ci] : mk_cf2(0.0f, 0.0f);
#pragma unroll
                for (int k = 0; k < CARRY_BATCH; k++) {
                    const int c = c0 + k;
                    if (c >= nch) break;
                    E[(b * nch + c) * ND + ci] = mk_cf2(sr, sim);
                    const float ar = c == nch - 1 ? lr : cr, ai = c == nch - 1 ? lim : cim; /* q^len */
                    const float r = ar * sr - ai * sim + v[k].x;
                    sim = ar * sim + ai * sr + v[k].y;
                    sr = r;
                }
            }
            if (h_out) {
                h_out[si] = sr;
                h_out[si + 1] = sim;
            }
        }
        if (F) {
            float sr = dh_out ? dh_out[si] : 0.0f, sim = dh_out ? dh_out[si + 1] : 0.0f;
            for (int c0 = nch - 1; c0 >= 0; c0 -= CARRY_BATCH) {
                cf2 v[CARRY_BATCH];
#pragma unroll
                for (int k = 0; k < CARRY_BATCH; k++)
                    v[k] = c0 - k >= 0 ? F[(b * nch + c0 - k) * ND + ci] : mk_cf2(0.0f, 0.0f);
#pragma unroll
                for (int k = 0; k < CARRY_BATCH; k++) {
                    const int c = c0 - k;
                    if (c < 0) break;
                    F[(b * nch + c) * ND + ci] = mk_cf2(sr, sim);
                    const float ar = c == nch - 1 ? lr : cr, ai = c == nch - 1 ? lim : cim; /* conj(q^len) */
                    const float r = ar * sr + ai * sim + v[k].x;
                    sim = ar * sim - ai * sr + v[k].y;
                    sr = r;
                }
            }
            if (dh_in) {
                dh_in[si] = sr;
                dh_in[si + 1] = sim;
            }
        }
    }
}

/* The per-chunk fix-up. Forward: y_t = omega x_t + sum_n Re(gamma h_t), from S_c. Backward (BWD): dx_t =
 * omega dy_t + sum_n p Re(lambda_t), backwards from Lin_c; += when acc. Generic form per order: the carry
 * m (q S for the forward, Lin for the backward), then per step s = m + Bw u, out += Re(Cw s), m = A s.
 * Grid (nch, channel groups, B), block 32 x NW with NW * MAXK >= N. */
template <class T, bool BWD>
__global__ void k_out(int L, int D, int N, int nch, const T *u, const T *omega, const float *coef, const cf2 *init,
                      T *out, int acc) {
    __shared__ float us[CH][32];
    MG_DYN_SMEM(float, part); /* [NW][ST][32]: per-step partial sums over each thread's orders */
    const int c = blockIdx.x, b = blockIdx.z, j0 = blockIdx.y * 32, t0 = c * CH, len = imin(CH, L - t0);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5, j = j0 + lane;
    load_tile(u, L, D, b, t0, j0, us);
    const int64_t ND = (int64_t)N * D;
    float Ar[MAXK], Ai[MAXK], Br[MAXK], Bi[MAXK], Cr[MAXK], Ci[MAXK], mr[MAXK], mi[MAXK];
#pragma unroll
    for (int k = 0; k < MAXK; k++) {
        const int n = w + k * nw;
        Ar[k] = Ai[k] = Br[k] = Bi[k] = Cr[k] = Ci[k] = mr[k] = mi[k] = 0.0f;
        if (n < N && j < D) {
            const int64_t ci = (int64_t)n * D + j;
            const float p = coef[C_P * ND + ci], qr = coef[C_QR * ND + ci], qi = coef[C_QI * ND + ci];
            const float gr = coef[C_GR * ND + ci], gi = coef[C_GI * ND + ci];
            const cf2 s0 = init[((int64_t)b * nch + c) * ND + ci];
            if (BWD) {
                Ar[k] = qr, Ai[k] = -qi, Br[k] = gr, Bi[k] = -gi, Cr[k] = p;
                mr[k] = s0.x, mi[k] = s0.y;
            } else {
                Ar[k] = qr, Ai[k] = qi, Br[k] = p, Cr[k] = gr, Ci[k] = gi;
                mr[k] = qr * s0.x - qi * s0.y, mi[k] = qr * s0.y + qi * s0.x;
            }
        }
    }
    __syncthreads();
    const int nsub = (len + ST - 1) / ST;
    for (int sub = 0; sub < nsub; sub++) {
        const int base = (BWD ? nsub - 1 - sub : sub) * ST, cnt = imin(ST, len - base);
        for (int i = 0; i < cnt; i++) {
            const int r = BWD ? cnt - 1 - i : i;
            const float x = us[base + r][lane];
            float o = 0.0f;
#pragma unroll
            for (int k = 0; k < MAXK; k++) {
                const float sr = mr[k] + Br[k] * x, si = mi[k] + Bi[k] * x;
                o += Cr[k] * sr - Ci[k] * si;
                mr[k] = Ar[k] * sr - Ai[k] * si;
                mi[k] = Ar[k] * si + Ai[k] * sr;
            }
            part[(w * ST + r) * 32 + lane] = o;
        }
        __syncthreads();
        for (int k = threadIdx.x; k < cnt * 32; k += blockDim.x) {
            const int r = k >> 5, l = k & 31, jj = j0 + l;
            if (jj >= D) continue;
            float s = to_f(omega[jj]) * us[base + r][l];
            for (int v = 0; v < nw; v++) s += part[(v * ST + r) * 32 + l];
            T *dst = out + ((int64_t)b * L + t0 + base + r) * D + jj;
            *dst = from_f<T>(acc ? to_f(*dst) + s : s);
        }
        __syncthreads();
    }
}

/* Per-chunk parameter-gradient partials, at (((b * nch + c) * G_COUNT + v) * N + n) * D + j, and the
 * omega partial sum_t dy x at (b * nch + c) * D + j. S: the forward states entering each chunk, Lin: the
 * adjoint carries (both from k_carry). Grid (nch, channel groups, B), block 32 x NW. */
template <class T>
__global__ void k_pgrad(int L, int D, int N, int nch, const T *x, const T *dy, const float *coef, const cf2 *S,
                        const cf2 *Lin, float *part, float *part_om) {
    __shared__ float xs[CH][32];
    __shared__ float ds[CH][32];
    const int c = blockIdx.x, b = blockIdx.z, j0 = blockIdx.y * 32, t0 = c * CH, len = imin(CH, L - t0);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5, j = j0 + lane;
    load_tile(x, L, D, b, t0, j0, xs);
    load_tile(dy, L, D, b, t0, j0, ds);
    __syncthreads();
    if (j >= D) return;
    const int64_t ND = (int64_t)N * D, bc = (int64_t)b * nch + c;
    if (w == 0) {
        float so = 0.0f;
        for (int tt = 0; tt < len; tt++) so += ds[tt][lane] * xs[tt][lane];
        part_om[bc * D + j] = so;
    }
    for (int n = w; n < N; n += nw) {
        const int64_t ci = (int64_t)n * D + j;
        const float p = coef[C_P * ND + ci], qr = coef[C_QR * ND + ci], qi = coef[C_QI * ND + ci];
        const float gr = coef[C_GR * ND + ci], gi = coef[C_GI * ND + ci];
        /* states entering each sub-tile */
        float ckr[NSUB], cki[NSUB];
        const cf2 s0 = S[bc * ND + ci];
        float hr = s0.x, hi = s0.y;
#pragma unroll
        for (int s = 0; s < NSUB; s++) {
            ckr[s] = hr, cki[s] = hi;
            const int end = imin(len, (s + 1) * ST);
            for (int tt = s * ST; tt < end; tt++) {
                const float r = qr * hr - qi * hi + p * xs[tt][lane];
                hi = qr * hi + qi * hr;
                hr = r;
            }
        }
        const cf2 l0 = Lin[bc * ND + ci];
        float mr = l0.x, mi = l0.y; /* conj(q) lambda_{t+1}, or the carry entering the chunk */
        float gp = 0.0f, gqr = 0.0f, gqi = 0.0f, ggr = 0.0f, ggi = 0.0f;
#pragma unroll
        for (int s = NSUB - 1; s >= 0; s--) {
            const int base = s * ST, cnt = imin(ST, len - base);
            if (cnt <= 0) continue;
            float sr[ST], si[ST];
            hr = ckr[s], hi = cki[s];
#pragma unroll
            for (int i = 0; i < ST; i++) {
                if (i < cnt) {
                    const float r = qr * hr - qi * hi + p * xs[base + i][lane];
                    hi = qr * hi + qi * hr;
                    hr = r;
                }
                sr[i] = hr, si[i] = hi;
            }
#pragma unroll
            for (int i = ST - 1; i >= 0; i--) {
                if (i < cnt) {
                    const float u = ds[base + i][lane], xv = xs[base + i][lane];
                    const float ar = i > 0 ? sr[i - 1] : ckr[s], ai = i > 0 ? si[i - 1] : cki[s];
                    const float lre = mr + gr * u, lim = mi - gi * u; /* lambda_t */
                    gp += lre * xv;
                    gqr += lre * ar + lim * ai;
                    gqi += lim * ar - lre * ai;
                    ggr += u * sr[i];
                    ggi -= u * si[i];
                    mr = qr * lre + qi * lim;
                    mi = qr * lim - qi * lre;
                }
            }
        }
        float *o = part + bc * G_COUNT * ND + ci;
        o[G_P * ND] = gp;
        o[G_QR * ND] = gqr;
        o[G_QI * ND] = gqi;
        o[G_GR * ND] = ggr;
        o[G_GI * ND] = ggi;
    }
}

/* Sum the partials over (b, chunk) in order and chain p, q, gamma to the raw parameters (§11.1, with
 * q = r e^{i theta}, r = 1 - alpha delta), one thread per (n, j); theta's per-order terms go to dth. */
template <class T>
__global__ void k_pfinal(int D, int N, int nbc, const T *alpha, const T *delta, const T *theta, const float *part,
                         T *dalpha, T *ddelta, T *dgamma, float *dth) {
    const int64_t ND = (int64_t)N * D;
    MG_GRID_LOOP(ci, ND) {
        const int n = (int)(ci / D), j = (int)(ci % D);
        const int64_t i = (int64_t)j * N + n;
        double g[G_COUNT] = {0, 0, 0, 0, 0};
        for (int k = 0; k < nbc; k++) {
            const float *src = part + (int64_t)k * G_COUNT * ND + ci;
            for (int v = 0; v < G_COUNT; v++) g[v] += (double)src[v * ND];
        }
        const double inv_sqrt_n = 1.0 / sqrt((double)N), base = 2.0 * CEMA_PI / N;
        const double om = sigmoid_d((double)to_f(theta[j]));
        const double al = sigmoid_d((double)to_f(alpha[i])), de = sigmoid_d((double)to_f(delta[i]));
        const double r = 1.0 - al * de, th = (n + 1) * base * om;
        const double cs = cos(th), sn = sin(th);
        const double d_r = g[G_QR] * cs + g[G_QI] * sn;
        const double d_th = g[G_QI] * (r * cs) - g[G_QR] * (r * sn); /* Im(gq conj(q)) */
        if (dalpha) dalpha[i] = from_f<T>((float)((double)to_f(dalpha[i]) + (g[G_P] - de * d_r) * al * (1.0 - al)));
        if (ddelta) ddelta[i] = from_f<T>((float)((double)to_f(ddelta[i]) - al * d_r * de * (1.0 - de)));
        if (dgamma) {
            dgamma[2 * i] = from_f<T>((float)((double)to_f(dgamma[2 * i]) + g[G_GR] * inv_sqrt_n));
            dgamma[2 * i + 1] = from_f<T>((float)((double)to_f(dgamma[2 * i + 1]) + g[G_GI] * inv_sqrt_n));
        }
        dth[ci] = (float)(d_th * (n + 1) * base);
    }
}

/* Per channel: dtheta += sigma'(theta) sum_n dth (orders in order), domega += sum over (b, chunk). */
template <class T>
__global__ void k_pfinal_ch(int D, int N, int nbc, const T *theta, const float *dth, const float *part_om, T *dtheta,
                            T *domega) {
    MG_GRID_LOOP(j, (int64_t)D) {
        if (dtheta) {
            double s = 0.0;
            for (int n = 0; n < N; n++) s += (double)dth[(int64_t)n * D + j];
            const double om = sigmoid_d((double)to_f(theta[j]));
            dtheta[j] = from_f<T>((float)((double)to_f(dtheta[j]) + s * om * (1.0 - om)));
        }
        if (domega) {
            double s = 0.0;
            for (int k = 0; k < nbc; k++) s += (double)part_om[(int64_t)k * D + j];
            domega[j] = from_f<T>((float)((double)to_f(domega[j]) + s));
        }
    }
}

/* ---- host side ---------------------------------------------------------------------------------- */

static void cema_validate(const MgCemaArgs *a, const char *op, int backward) {
    MG_CHECK(a->N >= 1 && a->N <= CEMA_MAX_N,
             "%s: CEMA order N=%d is outside [1, %d] (the CPU kernel sizes its per-thread state buffers "
             "for at most %d; use cema_order <= %d)",
             op, a->N, (int)CEMA_MAX_N, (int)CEMA_MAX_N, (int)CEMA_MAX_N);
    MG_CHECK(a->B >= 1 && a->L >= 1 && a->D >= 1, "%s: B, L and D must all be >= 1 (got B=%d L=%d D=%d)", op,
             a->B, a->L, a->D);
    MG_CHECK(a->x && a->alpha && a->delta && a->theta && a->gamma && a->omega,
             "%s: x, alpha, delta, theta, gamma and omega must not be NULL", op);
    if (!backward) MG_CHECK(a->y || a->h_out, "%s: nothing to compute (y and h_out are both NULL)", op);
    else MG_CHECK(a->dy, "%s: dy must not be NULL", op);
}

/* Warps per block: enough that MAXK orders per thread cover N (at most 16 warps). */
static int cema_warps(int N) { return N < 16 ? N : 16; }

/* Blocks per (chunk, 32-channel group, batch row): grid.y and grid.z are limited to 65535. */
static dim3 cema_grid(const MgCemaArgs *a, const char *op, int nch) {
    MG_CHECK(a->B <= 65535 && (a->D + 31) / 32 <= 65535, "%s: B=%d or D=%d is too large for the CUDA grid", op, a->B,
             a->D);
    return dim3((unsigned)nch, (unsigned)((a->D + 31) / 32), (unsigned)a->B);
}

static size_t out_smem(int nw) { return (size_t)nw * ST * 32 * sizeof(float); }

static float *cema_coef(const MgBackend *be, const MgCemaArgs *a, int nch) {
    const int64_t ND = (int64_t)a->N * a->D;
    float *coef = (float *)ws(be, 0, (size_t)C_COUNT * ND * sizeof(float));
    const int len_last = a->L - (nch - 1) * CH;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_coef<T>), grid_for(ND, 256), 256, 0, stream(be), a->D, a->N, len_last,
                                    (const T *)a->alpha, (const T *)a->delta, (const T *)a->theta,
                                    (const T *)a->gamma, coef));
    return coef;
}

void cema_forward(const MgBackend *be, const MgCemaArgs *a) {
    cema_validate(a, "cema_forward", 0);
    const int B = a->B, L = a->L, D = a->D, N = a->N, nch = (L + CH - 1) / CH, nw = cema_warps(N);
    const int64_t ND = (int64_t)N * D;
    const dim3 grid = cema_grid(a, "cema_forward", nch);
    float *coef = cema_coef(be, a, nch);
    cf2 *E = (cf2 *)ws(be, 1, (size_t)B * nch * ND * sizeof(cf2));
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_local<T>), grid, 32 * nw, 0, stream(be), L, D, N, nch, (const T *)a->x,
                                    (const T *)NULL, coef, E, (cf2 *)NULL));
    MG_LAUNCH(k_carry, grid_for((int64_t)B * ND, 256), 256, 0, stream(be), B, D, N, nch, coef, E,
              (const float *)a->h_in, (float *)a->h_out, (cf2 *)NULL, (const float *)NULL, (float *)NULL);
    if (!a->y) return;
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_out<T, false>), grid, 32 * nw, out_smem(nw), stream(be), L, D, N, nch,
                                    (const T *)a->x, (const T *)a->omega, coef, (const cf2 *)E, (T *)a->y, 0));
}

void cema_backward(const MgBackend *be, const MgCemaArgs *a) {
    cema_validate(a, "cema_backward", 1);
    const int B = a->B, L = a->L, D = a->D, N = a->N, nch = (L + CH - 1) / CH, nw = cema_warps(N);
    const dim3 grid = cema_grid(a, "cema_backward", nch);
    const int64_t ND = (int64_t)N * D, nbc = (int64_t)B * nch;
    const int need_params = a->dalpha || a->ddelta || a->dtheta || a->dgamma || a->domega;
    if (!need_params && !a->dx && !a->dh_in) return;
    float *coef = cema_coef(be, a, nch);
    cf2 *S = need_params ? (cf2 *)ws(be, 1, (size_t)nbc * ND * sizeof(cf2)) : NULL;
    cf2 *F = (cf2 *)ws(be, 2, (size_t)nbc * ND * sizeof(cf2));
    MG_CU_DISPATCH(be, T, MG_LAUNCH((k_local<T>), grid, 32 * nw, 0, stream(be), L, D, N, nch, (const T *)a->x,
                                    (const T *)a->dy, coef, S, F));
    MG_LAUNCH(k_carry, grid_for((int64_t)B * ND, 256), 256, 0, stream(be), B, D, N, nch, coef, S,
              (const float *)a->h_in, (float *)NULL, F, (const float *)a->dh_out, (float *)a->dh_in);
    if (need_params) {
        /* before dx is written: dx may alias dy (k_out only overwrites the tile its block has read) */
        float *part = (float *)ws(be, 3, (size_t)nbc * G_COUNT * ND * sizeof(float));
        float *part_om = (float *)ws(be, 4, (size_t)nbc * D * sizeof(float));
        float *dth = (float *)ws(be, 5, (size_t)ND * sizeof(float));
        MG_CU_DISPATCH(be, T, {
            MG_LAUNCH((k_pgrad<T>), grid, 32 * nw, 0, stream(be), L, D, N, nch, (const T *)a->x, (const T *)a->dy,
                      coef, (const cf2 *)S, (const cf2 *)F, part, part_om);
            MG_LAUNCH((k_pfinal<T>), grid_for(ND, 128), 128, 0, stream(be), D, N, (int)nbc, (const T *)a->alpha,
                      (const T *)a->delta, (const T *)a->theta, (const float *)part, (T *)a->dalpha,
                      (T *)a->ddelta, (T *)a->dgamma, dth);
            MG_LAUNCH((k_pfinal_ch<T>), grid_for(D, 128), 128, 0, stream(be), D, N, (int)nbc,
                      (const T *)a->theta, (const float *)dth, (const float *)part_om, (T *)a->dtheta,
                      (T *)a->domega);
        });
    }
    if (a->dx)
        MG_CU_DISPATCH(be, T, MG_LAUNCH((k_out<T, true>), grid, 32 * nw, out_smem(nw), stream(be), L, D, N, nch,
                                        (const T *)a->dy, (const T *)a->omega, coef, (const cf2 *)F, (T *)a->dx,
                                        a->accumulate));
}

} /* namespace mgcu */
