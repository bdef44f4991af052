/* One case per op of the backend table: its shapes (odd sizes, every documented option) and, for each
 * shape, the argument struct, its buffers and the op calls. Backward cases run the forward first on the
 * same backend (the backward reads its saved statistics) and check every output of both.
 *
 * When an argument struct changes, the edit is local to its case: a field that moves from host to
 * backend memory loses its bo_host() line, a buffer that changes dtype changes its BoKind. */
#include <math.h>

#include "../test_util.h"
#include "harness.h"

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Integer ids uniform in [0, V). */
static void fill_ids(double *x, size_t n, int V) {
    for (size_t i = 0; i < n; i++) x[i] = floor(tu_uniform() * V);
}

static double *normal(double *x, size_t n, double std) {
    tu_fill_normal(x, n, std);
    return x;
}

/* ---------------------------------------------------------------------------------------------- */
/* embedding */

static int embedding_case(BoCase *c, int v, int bwd) {
    /* T > V forces repeated ids (the backward's accumulation order); D = 257 spans 5 column blocks of
     * the CPU backward and crosses its parallel threshold; T = 0 must leave dweight alone. */
    static const struct {
        int T, D, V;
    } S[] = {{37, 23, 51}, {61, 7, 13}, {1, 1, 1}, {301, 257, 103}, {0, 5, 3}};
    if (v >= NELEM(S)) return 0;
    typedef MgEmbeddingArgs A;
    const int T = S[v].T, D = S[v].D, V = S[v].V;
    A *a = bo_args(c, sizeof *a);
    a->T = T;
    a->D = D;
    a->V = V;
    bo_shape(c, "T=%d D=%d V=%d", T, D, V);
    fill_ids(BO_IN_(c, A, tokens, BO_I32, T), T, V);
    normal(BO_IN_(c, A, weight, BO_ACT, (size_t)V * D), (size_t)V * D, 1.0);
    if (!bwd) {
        bo_tol(c, BO_TOL_EXACT); /* a gather */
        BO_OUT_(c, A, out, BO_ACT, (size_t)T * D);
        bo_call(c, BO_OP(embedding_forward));
        return 1;
    }
    normal(BO_IN_(c, A, dout, BO_ACT, (size_t)T * D), (size_t)T * D, 1.0);
    bo_tol(c, BO_TOL_ELEMENTWISE); /* short sums over repeated ids */
    normal(BO_ACC_(c, A, dweight, BO_ACT, (size_t)V * D), (size_t)V * D, 1.0);
    bo_call(c, BO_OP(embedding_backward));
    return 1;
}
static int case_embedding_forward(BoCase *c, int v) { return embedding_case(c, v, 0); }
static int case_embedding_backward(BoCase *c, int v) { return embedding_case(c, v, 1); }

/* ---------------------------------------------------------------------------------------------- */
/* linear */

static int linear_case(BoCase *c, int v, int bwd) {
    /* out = 259 spans two 256-column blocks of the CPU dbias; T = 0 must leave the accumulators alone. */
    static const struct {
        int T, in, out, bias, acc, dx;
    } S[] = {{37, 23, 51, 1, 0, 1}, {5, 1, 7, 0, 1, 1}, {131, 67, 259, 1, 1, 1}, {19, 33, 3, 1, 0, 0}, {0, 5, 3, 1, 1, 1}};
    if (v >= NELEM(S)) return 0;
    typedef MgLinearArgs A;
    const int T = S[v].T, in = S[v].in, out = S[v].out;
    A *a = bo_args(c, sizeof *a);
    a->T = T;
    a->in = in;
    a->out = out;
    a->accumulate = bwd && S[v].acc;
    bo_shape(c, "T=%d in=%d out=%d%s%s", T, in, out, S[v].bias ? " bias" : "",
             !bwd ? "" : !S[v].dx ? " no-dx" : S[v].acc ? " acc" : "");
    normal(BO_IN_(c, A, x, BO_ACT, (size_t)T * in), (size_t)T * in, 1.0);
    normal(BO_IN_(c, A, weight, BO_ACT, (size_t)out * in), (size_t)out * in, 0.5);
    if (S[v].bias) normal(BO_IN_(c, A, bias, BO_ACT, out), out, 1.0);
    bo_tol(c, BO_TOL_REDUCTION); /* dot products over in (forward), out (dx) and T (dweight, dbias) */
    BO_OUT_(c, A, y, BO_ACT, (size_t)T * out);
    bo_call(c, BO_OP(linear_forward));
    if (!bwd) return 1;
    normal(BO_IN_(c, A, dy, BO_ACT, (size_t)T * out), (size_t)T * out, 1.0);
    if (S[v].dx) normal(bo_buf(c, S[v].acc ? BO_ACC : BO_OUT, offsetof(A, dx), "dx", BO_ACT, (size_t)T * in), (size_t)T * in, 1.0);
    normal(BO_ACC_(c, A, dweight, BO_ACT, (size_t)out * in), (size_t)out * in, 1.0);
    if (S[v].bias) normal(BO_ACC_(c, A, dbias, BO_ACT, out), out, 1.0);
    bo_call(c, BO_OP(linear_backward));
    return 1;
}
static int case_linear_forward(BoCase *c, int v) { return linear_case(c, v, 0); }
static int case_linear_backward(BoCase *c, int v) { return linear_case(c, v, 1); }

/* ---------------------------------------------------------------------------------------------- */
/* TimestepNorm */

static int timestep_norm_case(BoCase *c, int v, int bwd) {
    /* carried: count/mean/var in and out and the gradient of the state out; din: the gradient of the
     * state in (also of a fresh state); mask: padded steps, including a left-padded start (lead steps,
     * 3 unless given). The shape L=131 crosses the CPU kernel's parallel threshold. The CUDA kernels scan
     * over time chunks of 32 steps: L = 2111 and 1100 give more chunks than a warp has lanes (several per
     * lane in its scans), with a whole padded first chunk and more (lead = 70) in a fresh row; D/G = 260
     * and D/G = 1 exercise the widest and narrowest per-step reductions. lite: the forward computes the
     * carried-out state only (y and saved statistics NULL); the backward has no dx. */
    static const struct {
        int B, L, D, G, carried, din, mask, acc, lead, lite;
    } S[] = {{3, 37, 21, 3, 0, 0, 0, 0, 0, 0},
             {2, 23, 15, 5, 1, 1, 1, 1, 0, 0},
             {1, 7, 23, 1, 1, 1, 0, 0, 0, 0},
             {5, 131, 63, 9, 1, 1, 1, 1, 0, 0},
             {2, 19, 12, 4, 0, 1, 1, 0, 0, 0},
             {2, 2111, 10, 2, 1, 1, 1, 0, 70, 0},
             {1, 1100, 260, 1, 0, 1, 0, 1, 0, 0},
             {3, 77, 16, 16, 1, 1, 1, 0, 40, 1},
             {2, 50, 12, 3, 0, 1, 0, 0, 0, 1}};
    if (v >= NELEM(S)) return 0;
    typedef MgTimestepNormArgs A;
    const int B = S[v].B, L = S[v].L, D = S[v].D, G = S[v].G;
    const size_t n = (size_t)B * L * D, nbg = (size_t)B * G, nstat = (size_t)B * L * G;
    A *a = bo_args(c, sizeof *a);
    a->B = B;
    a->L = L;
    a->D = D;
    a->G = G;
    a->eps = 1e-5;
    a->accumulate = bwd && S[v].acc;
    const int lite = S[v].lite, lead = S[v].lead ? S[v].lead : 3;
    bo_shape(c, "B=%d L=%d D=%d G=%d%s%s%s%s%s", B, L, D, G, S[v].carried ? " state" : "",
             bwd && S[v].din ? " dstate_in" : "", S[v].mask ? " mask" : "", bwd && S[v].acc ? " acc" : "",
             !lite ? "" : bwd ? " no-dx" : " stats-only");
    bo_tol(c, BO_TOL_REDUCTION); /* row statistics; the running state is carried in double on the CPU */
    double *x = normal(BO_IN_(c, A, x, BO_ACT, n), n, 1.0);
    for (size_t i = 0; i < n; i++) x[i] += 0.5 * (double)(i % D) / D; /* channel-dependent means */
    normal(BO_IN_(c, A, weight, BO_ACT, D), D, 0.3);
    normal(BO_IN_(c, A, bias, BO_ACT, D), D, 0.3);
    if (S[v].mask) {
        double *m = BO_IN_(c, A, pad_mask, BO_U8, (size_t)B * L);
        for (int i = 0; i < B * L; i++) m[i] = tu_uniform() < 0.3;
        for (int t = 0; t < L && t < lead; t++) m[t] = 1; /* row 0 starts with padding */
    }
    if (S[v].carried) {
        double *cnt = BO_IN_(c, A, count_in, BO_I64, B);
        for (int b = 0; b < B; b++) cnt[b] = b == 0 ? 0 : floor(1 + 40 * tu_uniform()); /* 0 = fresh row */
        normal(BO_IN_(c, A, mean_in, BO_STATE, nbg), nbg, 0.5);
        tu_fill_uniform(BO_IN_(c, A, var_in, BO_STATE, nbg), nbg, 0.5, 2.0);
    }
    if (S[v].carried || (lite && !bwd)) {
        BO_OUT_(c, A, count_out, BO_I64, B);
        BO_OUT_(c, A, mean_out, BO_STATE, nbg);
        BO_OUT_(c, A, var_out, BO_STATE, nbg);
    }
    if (!(lite && !bwd)) {
        BO_OUT_(c, A, y, BO_ACT, n);
        BO_OUT_(c, A, saved_mean, BO_STATE, nstat);
        BO_OUT_(c, A, saved_rstd, BO_STATE, nstat);
    }
    bo_call(c, BO_OP(timestep_norm_forward));
    if (!bwd) return 1;
    normal(BO_IN_(c, A, dy, BO_ACT, n), n, 1.0);
    if (!lite) normal(bo_buf(c, S[v].acc ? BO_ACC : BO_OUT, offsetof(A, dx), "dx", BO_ACT, n), n, 1.0);
    normal(BO_ACC_(c, A, dweight, BO_ACT, D), D, 1.0);
    normal(BO_ACC_(c, A, dbias, BO_ACT, D), D, 1.0);
    if (S[v].carried) {
        normal(BO_IN_(c, A, dmean_out, BO_STATE, nbg), nbg, 1.0);
        normal(BO_IN_(c, A, dvar_out, BO_STATE, nbg), nbg, 1.0);
    }
    if (S[v].din) {
        BO_OUT_(c, A, dmean_in, BO_STATE, nbg);
        BO_OUT_(c, A, dvar_in, BO_STATE, nbg);
    }
    bo_call(c, BO_OP(timestep_norm_backward));
    return 1;
}
static int case_timestep_norm_forward(BoCase *c, int v) { return timestep_norm_case(c, v, 0); }
static int case_timestep_norm_backward(BoCase *c, int v) { return timestep_norm_case(c, v, 1); }

/* ---------------------------------------------------------------------------------------------- */
/* CEMA */

static int cema_case(BoCase *c, int v, int bwd) {
    /* L = 131 spans three 64-step tiles (the backward's checkpoints) and D = 17 two 16-channel blocks,
     * the second partial; N = 64 is the largest order; L = 1 a single step. h_out doubles as "dh_out
     * given" in the backward, dh_in is the gradient of the state in (also of a zero state). */
    static const struct {
        int B, L, D, N, h_in, h_out, dh_in, acc, state_only;
    } S[] = {{3, 37, 23, 5, 0, 0, 0, 0, 0},
             {2, 131, 17, 3, 1, 1, 1, 1, 0},
             {1, 9, 5, 64, 1, 1, 1, 0, 0},
             {2, 1, 3, 1, 1, 0, 1, 1, 0},
             {2, 70, 33, 2, 0, 1, 1, 0, 0},
             /* many time chunks of the CUDA scan (64 steps), N = 20 not a multiple of its 16 warps */
             {2, 600, 40, 20, 1, 1, 1, 1, 0},
             /* state only (y == NULL, forward): a sequence-parallel rank's local pass */
             {2, 150, 9, 7, 1, 1, 1, 0, 1}};
    if (v >= NELEM(S)) return 0;
    typedef MgCemaArgs A;
    const int B = S[v].B, L = S[v].L, D = S[v].D, N = S[v].N;
    const size_t n = (size_t)B * L * D, nh = (size_t)B * D * N * 2, dn = (size_t)D * N;
    A *a = bo_args(c, sizeof *a);
    a->B = B;
    a->L = L;
    a->D = D;
    a->N = N;
    a->accumulate = bwd && S[v].acc;
    const int state_only = !bwd && S[v].state_only;
    bo_shape(c, "B=%d L=%d D=%d N=%d%s%s%s%s%s", B, L, D, N, S[v].h_in ? " h_in" : "", S[v].h_out ? " h_out" : "",
             bwd && S[v].dh_in ? " dh_in" : "", bwd && S[v].acc ? " acc" : "", state_only ? " state_only" : "");
    bo_tol(c, BO_TOL_REDUCTION); /* sums over time; the CPU carries the recurrence in double */
    normal(BO_IN_(c, A, x, BO_ACT, n), n, 1.0);
    normal(BO_IN_(c, A, alpha, BO_ACT, dn), dn, 1.0);
    normal(BO_IN_(c, A, delta, BO_ACT, dn), dn, 1.0);
    normal(BO_IN_(c, A, theta, BO_ACT, D), D, 1.0);
    normal(BO_IN_(c, A, gamma, BO_ACT, 2 * dn), 2 * dn, 1.0);
    normal(BO_IN_(c, A, omega, BO_ACT, D), D, 1.0);
    if (S[v].h_in) normal(BO_IN_(c, A, h_in, BO_STATE, nh), nh, 0.5);
    if (S[v].h_out || bwd) BO_OUT_(c, A, h_out, BO_STATE, nh);
    if (!state_only) BO_OUT_(c, A, y, BO_ACT, n);
    bo_call(c, BO_OP(cema_forward));
    if (!bwd) return 1;
    normal(BO_IN_(c, A, dy, BO_ACT, n), n, 1.0);
    if (S[v].h_out) normal(BO_IN_(c, A, dh_out, BO_STATE, nh), nh, 1.0);
    normal(bo_buf(c, S[v].acc ? BO_ACC : BO_OUT, offsetof(A, dx), "dx", BO_ACT, n), n, 1.0);
    normal(BO_ACC_(c, A, dalpha, BO_ACT, dn), dn, 1.0);
    normal(BO_ACC_(c, A, ddelta, BO_ACT, dn), dn, 1.0);
    normal(BO_ACC_(c, A, dtheta, BO_ACT, D), D, 1.0);
    normal(BO_ACC_(c, A, dgamma, BO_ACT, 2 * dn), 2 * dn, 1.0);
    normal(BO_ACC_(c, A, domega, BO_ACT, D), D, 1.0);
    if (S[v].dh_in) BO_OUT_(c, A, dh_in, BO_STATE, nh);
    bo_call(c, BO_OP(cema_backward));
    return 1;
}
static int case_cema_forward(BoCase *c, int v) { return cema_case(c, v, 0); }
static int case_cema_backward(BoCase *c, int v) { return cema_case(c, v, 1); }

/* ---------------------------------------------------------------------------------------------- */
/* RMSNorm, LayerNorm */

/* T = 129 makes 9 row blocks of the CPU's deterministic parameter-gradient reduction, the last partial.
 * D > 1024 takes the CUDA backend's block-per-row kernels; nosave passes no saved statistics (backward
 * recomputes them). */
static const struct {
    int T, D, affine, acc, nosave;
} norm_shapes[] = {{37, 23, 1, 0, 0}, {5, 3, 0, 1, 0},      {129, 51, 1, 1, 0}, {3, 301, 0, 0, 0},
                   {0, 7, 1, 1, 0},   {6, 2100, 1, 1, 0},   {41, 1100, 0, 0, 1}, {70, 45, 1, 1, 1}};

static int rmsnorm_case(BoCase *c, int v, int bwd) {
    if (v >= NELEM(norm_shapes)) return 0;
    typedef MgRMSNormArgs A;
    const int T = norm_shapes[v].T, D = norm_shapes[v].D, w = norm_shapes[v].affine, acc = norm_shapes[v].acc;
    const size_t n = (size_t)T * D;
    A *a = bo_args(c, sizeof *a);
    a->T = T;
    a->D = D;
    a->eps = 1e-6;
    a->accumulate = bwd && acc;
    bo_shape(c, "T=%d D=%d%s%s%s", T, D, w ? " weight" : "", bwd && acc ? " acc" : "",
             norm_shapes[v].nosave ? " nosave" : "");
    bo_tol(c, BO_TOL_REDUCTION); /* row sums of squares; dx needs mean(g * xh) */
    normal(BO_IN_(c, A, x, BO_ACT, n), n, 1.0);
    if (w) normal(BO_IN_(c, A, weight, BO_ACT, D), D, 0.3);
    BO_OUT_(c, A, y, BO_ACT, n);
    if (!norm_shapes[v].nosave) BO_OUT_(c, A, saved_rstd, BO_STATE, T);
    bo_call(c, BO_OP(rmsnorm_forward));
    if (!bwd) return 1;
    normal(BO_IN_(c, A, dy, BO_ACT, n), n, 1.0);
    normal(bo_buf(c, acc ? BO_ACC : BO_OUT, offsetof(A, dx), "dx", BO_ACT, n), n, 1.0);
    if (w) normal(BO_ACC_(c, A, dweight, BO_ACT, D), D, 1.0);
    bo_call(c, BO_OP(rmsnorm_backward));
    return 1;
}
static int case_rmsnorm_forward(BoCase *c, int v) { return rmsnorm_case(c, v, 0); }
static int case_rmsnorm_backward(BoCase *c, int v) { return rmsnorm_case(c, v, 1); }

static int layernorm_case(BoCase *c, int v, int bwd) {
    if (v >= NELEM(norm_shapes)) return 0;
    typedef MgLayerNormArgs A;
    const int T = norm_shapes[v].T, D = norm_shapes[v].D, acc = norm_shapes[v].acc;
    const size_t n = (size_t)T * D;
    A *a = bo_args(c, sizeof *a);
    a->T = T;
    a->D = D;
    a->eps = 1e-5;
    a->accumulate = bwd && acc;
    bo_shape(c, "T=%d D=%d%s%s", T, D, bwd && acc ? " acc" : "", norm_shapes[v].nosave ? " nosave" : "");
    bo_tol(c, BO_TOL_REDUCTION); /* row mean and variance */
    double *x = normal(BO_IN_(c, A, x, BO_ACT, n), n, 1.0);
    for (size_t i = 0; i < n; i++) x[i] += 0.7; /* a mean to remove */
    normal(BO_IN_(c, A, weight, BO_ACT, D), D, 0.3);
    normal(BO_IN_(c, A, bias, BO_ACT, D), D, 0.3);
    BO_OUT_(c, A, y, BO_ACT, n);
    if (!norm_shapes[v].nosave) {
        BO_OUT_(c, A, saved_mean, BO_STATE, T);
        BO_OUT_(c, A, saved_rstd, BO_STATE, T);
    }
    bo_call(c, BO_OP(layernorm_forward));
    if (!bwd) return 1;
    normal(BO_IN_(c, A, dy, BO_ACT, n), n, 1.0);
    normal(bo_buf(c, acc ? BO_ACC : BO_OUT, offsetof(A, dx), "dx", BO_ACT, n), n, 1.0);
    normal(BO_ACC_(c, A, dweight, BO_ACT, D), D, 1.0);
    normal(BO_ACC_(c, A, dbias, BO_ACT, D), D, 1.0);
    bo_call(c, BO_OP(layernorm_backward));
    return 1;
}
static int case_layernorm_forward(BoCase *c, int v) { return layernorm_case(c, v, 0); }
static int case_layernorm_backward(BoCase *c, int v) { return layernorm_case(c, v, 1); }

/* ---------------------------------------------------------------------------------------------- */
/* Q/K norm */

static int qknorm_case(BoCase *c, int v, int bwd) {
    static const struct {
        int T, Z, H, acc, nosave;
    } S[] = {{37, 21, 3, 0, 0}, {13, 10, 5, 1, 0}, {67, 35, 7, 1, 0}, {1, 9, 1, 0, 0},
             {5, 2200, 2, 1, 0}, {41, 12, 4, 0, 1}, {0, 6, 2, 1, 0}}; /* dz 1100: block per row */
    if (v >= NELEM(S)) return 0;
    typedef MgQKNormArgs A;
    const int T = S[v].T, Z = S[v].Z, H = S[v].H;
    const size_t n = (size_t)T * Z;
    A *a = bo_args(c, sizeof *a);
    a->T = T;
    a->Z = Z;
    a->H = H;
    a->eps = 1e-6;
    a->accumulate = bwd && S[v].acc;
    bo_shape(c, "T=%d Z=%d H=%d%s%s", T, Z, H, bwd && S[v].acc ? " acc" : "", S[v].nosave ? " nosave" : "");
    bo_tol(c, BO_TOL_REDUCTION); /* per-head sums of squares */
    normal(BO_IN_(c, A, z, BO_ACT, n), n, 1.0);
    normal(BO_IN_(c, A, gamma, BO_ACT, 2 * (size_t)Z), 2 * (size_t)Z, 0.3);
    normal(BO_IN_(c, A, beta, BO_ACT, 2 * (size_t)Z), 2 * (size_t)Z, 0.3);
    BO_OUT_(c, A, q, BO_ACT, n);
    BO_OUT_(c, A, k, BO_ACT, n);
    if (!S[v].nosave) BO_OUT_(c, A, saved_rstd, BO_STATE, (size_t)T * H);
    bo_call(c, BO_OP(qknorm_forward));
    if (!bwd) return 1;
    normal(BO_IN_(c, A, dq, BO_ACT, n), n, 1.0);
    normal(BO_IN_(c, A, dk, BO_ACT, n), n, 1.0);
    normal(bo_buf(c, S[v].acc ? BO_ACC : BO_OUT, offsetof(A, dz), "dz", BO_ACT, n), n, 1.0);
    normal(BO_ACC_(c, A, dgamma, BO_ACT, 2 * (size_t)Z), 2 * (size_t)Z, 1.0);
    normal(BO_ACC_(c, A, dbeta, BO_ACT, 2 * (size_t)Z), 2 * (size_t)Z, 1.0);
    bo_call(c, BO_OP(qknorm_backward));
    return 1;
}
static int case_qknorm_forward(BoCase *c, int v) { return qknorm_case(c, v, 0); }
static int case_qknorm_backward(BoCase *c, int v) { return qknorm_case(c, v, 1); }

/* ---------------------------------------------------------------------------------------------- */
/* RoPE */

static int rope_case(BoCase *c, int v, int bwd) {
    /* chunk 7 with L = 37 (positions restart mid-sequence), a decoding offset, in place (y == x,
     * dx == dy), an offset past the chunk and dh = 2 (one pair). */
    static const struct {
        int B, L, H, dh, chunk;
        long long pos_offset;
        int inplace, acc;
    } S[] = {{2, 37, 3, 10, 7, 0, 0, 0},
             {1, 3, 5, 2, 13, 45, 0, 1},
             {3, 21, 1, 6, 21, 0, 1, 0},
             {2, 11, 2, 4, 64, 1000003, 0, 1}};
    if (v >= NELEM(S)) return 0;
    typedef MgRopeArgs A;
    const size_t n = (size_t)S[v].B * S[v].L * S[v].H * S[v].dh;
    A *a = bo_args(c, sizeof *a);
    a->B = S[v].B;
    a->L = S[v].L;
    a->H = S[v].H;
    a->dh = S[v].dh;
    a->chunk = S[v].chunk;
    a->pos_offset = S[v].pos_offset;
    a->base = 10000.0;
    a->accumulate = bwd && S[v].acc;
    bo_shape(c, "B=%d L=%d H=%d dh=%d chunk=%d offset=%lld%s%s", a->B, a->L, a->H, a->dh, a->chunk,
             S[v].pos_offset, S[v].inplace ? " in-place" : "", bwd && S[v].acc ? " acc" : "");
    if (!bwd) {
        if (S[v].inplace) {
            normal(BO_INOUT_(c, A, x, BO_ACT, n), n, 1.0);
            bo_alias(c, offsetof(A, y), "x");
        } else {
            normal(BO_IN_(c, A, x, BO_ACT, n), n, 1.0);
            BO_OUT_(c, A, y, BO_ACT, n);
        }
        bo_call(c, BO_OP(rope_forward));
        return 1;
    }
    if (S[v].inplace) {
        normal(BO_INOUT_(c, A, dy, BO_ACT, n), n, 1.0);
        bo_alias(c, offsetof(A, dx), "dy");
    } else {
        normal(BO_IN_(c, A, dy, BO_ACT, n), n, 1.0);
        normal(bo_buf(c, S[v].acc ? BO_ACC : BO_OUT, offsetof(A, dx), "dx", BO_ACT, n), n, 1.0);
    }
    bo_call(c, BO_OP(rope_backward));
    return 1;
}
static int case_rope_forward(BoCase *c, int v) { return rope_case(c, v, 0); }
static int case_rope_backward(BoCase *c, int v) { return rope_case(c, v, 1); }

/* ---------------------------------------------------------------------------------------------- */
/* attention */

static int attention_case(BoCase *c, int v, int bwd) {
    /* Training (Lq == Lk): chunk 7 with L = 21, one chunk larger than L, chunk 5 with L = 35, and 131
     * rows (past the CPU's 128-row blocks); decoding (Lq < Lk <= chunk); DropKey in several. */
    static const struct {
        int B, H, Dqk, Dv, Lq, Lk, chunk;
        double scale, drop_p;
        int acc, lse;  /* lse = 0: no saved log-sum-exp (the backward recomputes it) */
        int blk, q0, k0, C; /* block mode (ring attention): chunk rows of query 0 and key 0, chunk length */
    } S[] = {{2, 3, 5, 9, 21, 21, 7, 1.0, 0.0, 0, 1, 0, 0, 0, 0},
             {1, 2, 7, 3, 37, 37, 64, 0.37, 0.3, 1, 1, 0, 0, 0, 0},
             {2, 1, 4, 6, 35, 35, 5, 1.0, 0.2, 0, 1, 0, 0, 0, 0},
             {1, 3, 5, 5, 3, 11, 13, 1.0, 0.0, 1, 1, 0, 0, 0, 0},
             {2, 2, 3, 4, 1, 21, 21, 0.5, 0.25, 0, 1, 0, 0, 0, 0},
             {1, 1, 3, 4, 131, 131, 131, 1.0, 0.1, 1, 1, 0, 0, 0, 0},
             {2, 2, 6, 5, 12, 12, 4, 0.8, 0.15, 1, 0, 0, 0, 0, 0},
             /* block mode: partly causal (off 5 < Lk), the diagonal block, a whole earlier block */
             {2, 2, 5, 4, 9, 7, 48, 0.9, 0.3, 1, 1, 1, 10, 5, 48},
             {1, 3, 4, 6, 6, 6, 48, 1.0, 0.2, 0, 1, 1, 12, 12, 48},
             {2, 1, 3, 5, 7, 8, 48, 1.0, 0.2, 1, 1, 1, 30, 0, 48},
             {1, 2, 4, 4, 140, 133, 300, 1.0, 0.0, 0, 1, 1, 150, 10, 0},
             /* wide heads: several 32-column and 64-column slices (CUDA tiles), a partial 64-row tile */
             {1, 2, 70, 130, 67, 67, 67, 0.3, 0.1, 1, 1, 0, 0, 0, 0},
             /* several 64-row tiles per chunk and several chunks, without a saved lse */
             {2, 1, 8, 8, 260, 260, 130, 1.0, 0.2, 0, 0, 0, 0, 0, 0},
             /* decoding over two query tiles; a rank's part of a longer chunk (drop_chunk_len) */
             {1, 1, 4, 4, 70, 100, 128, 1.0, 0.2, 1, 1, 0, 0, 0, 0},
             {1, 2, 5, 6, 5, 20, 20, 1.0, 0.3, 0, 1, 0, 0, 0, 40},
             /* DropKey with global sequence, chunk and head indices (a DP / SP / head-parallel rank) */
             {2, 2, 3, 5, 24, 24, 8, 1.0, 0.25, 0, 1, 0, 0, 0, 0}};
    if (v >= NELEM(S)) return 0;
    typedef MgAttentionArgs A;
    const int B = S[v].B, H = S[v].H, Dqk = S[v].Dqk, Dv = S[v].Dv, Lq = S[v].Lq, Lk = S[v].Lk;
    const size_t nq = (size_t)B * Lq * H * Dqk, nk = (size_t)B * Lk * H * Dqk, nv = (size_t)B * Lk * H * Dv,
                 no = (size_t)B * Lq * H * Dv;
    A *a = bo_args(c, sizeof *a);
    a->B = B;
    a->H = H;
    a->Dqk = Dqk;
    a->Dv = Dv;
    a->Lq = Lq;
    a->Lk = Lk;
    a->chunk = S[v].chunk;
    a->scale = S[v].scale;
    a->drop_p = S[v].drop_p;
    a->drop_seed = 0x5eed0000u + (unsigned)v;
    a->accumulate = bwd && S[v].acc;
    a->block = S[v].blk;
    a->q_row0 = S[v].q0;
    a->k_row0 = S[v].k0;
    a->drop_chunk_len = S[v].C;
    if (v == 15) {
        a->drop_seq0 = 3;
        a->drop_seq_stride = 2;
        a->drop_chunks = 5;
        a->drop_chunk0 = 1;
        a->drop_heads = 4;
        a->drop_head0 = 1;
    }
    bo_shape(c, "B=%d H=%d Dqk=%d Dv=%d Lq=%d Lk=%d chunk=%d scale=%g drop_p=%g%s%s%s", B, H, Dqk, Dv, Lq, Lk,
             S[v].chunk, S[v].scale, S[v].drop_p, S[v].lse ? "" : " no-lse", bwd && S[v].acc ? " acc" : "",
             S[v].blk ? " block" : "");
    normal(BO_IN_(c, A, q, BO_ACT, nq), nq, 1.0);
    normal(BO_IN_(c, A, k, BO_ACT, nk), nk, 1.0);
    normal(BO_IN_(c, A, v, BO_ACT, nv), nv, 1.0);
    bo_tol(c, BO_TOL_REDUCTION); /* softmax over the visible keys, then P V */
    BO_OUT_(c, A, o, BO_ACT, no);
    if (S[v].lse) BO_OUT_(c, A, saved_lse, BO_STATE, (size_t)B * H * Lq);
    bo_call(c, BO_OP(attention_forward));
    if (!bwd) return 1;
    normal(BO_IN_(c, A, dout, BO_ACT, no), no, 1.0);
    bo_tol(c, BO_TOL_CHAINED); /* dS = P (dP - D): a cancellation after the recomputed softmax */
    const BoRole r = S[v].acc ? BO_ACC : BO_OUT;
    normal(bo_buf(c, r, offsetof(A, dq), "dq", BO_ACT, nq), nq, 1.0);
    normal(bo_buf(c, r, offsetof(A, dk), "dk", BO_ACT, nk), nk, 1.0);
    normal(bo_buf(c, r, offsetof(A, dv), "dv", BO_ACT, nv), nv, 1.0);
    bo_call(c, BO_OP(attention_backward));
    return 1;
}
static int case_attention_forward(BoCase *c, int v) { return attention_case(c, v, 0); }
static int case_attention_backward(BoCase *c, int v) { return attention_case(c, v, 1); }

/* the online-softmax merge of two partial attentions (finite log-sum-exps; -inf rows: test_attention) */
static int case_attention_merge(BoCase *c, int v) {
    static const struct {
        int B, Lq, H, Dv;
    } S[] = {{1, 1, 1, 1}, {2, 7, 3, 5}, {1, 33, 2, 129}};
    if (v >= NELEM(S)) return 0;
    typedef MgAttnMergeArgs A;
    A *a = bo_args(c, sizeof *a);
    a->B = S[v].B;
    a->Lq = S[v].Lq;
    a->H = S[v].H;
    a->Dv = S[v].Dv;
    const size_t no = (size_t)a->B * a->Lq * a->H * a->Dv, nl = (size_t)a->B * a->H * a->Lq;
    bo_shape(c, "B=%d Lq=%d H=%d Dv=%d", a->B, a->Lq, a->H, a->Dv);
    bo_tol(c, BO_TOL_REDUCTION);
    normal(BO_INOUT_(c, A, o, BO_ACT, no), no, 1.0);
    normal(BO_INOUT_(c, A, lse, BO_STATE, nl), nl, 3.0);
    normal(BO_IN_(c, A, o_b, BO_ACT, no), no, 1.0);
    normal(BO_IN_(c, A, lse_b, BO_STATE, nl), nl, 3.0);
    bo_call(c, BO_OP(attention_merge));
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* elementwise activations */

static const char *act_name(MgActKind k) {
    static const char *const names[] = {"silu", "swiglu", "mul", "add"};
    return names[k];
}

static int act_case(BoCase *c, int v, int bwd) {
    /* grads: 1 = da, 2 = db. n = 40009 crosses the CPU's parallel threshold. */
    static const struct {
        MgActKind kind;
        int n, acc, grads;
    } S[] = {{MG_ACT_SILU, 37, 0, 1},    {MG_ACT_SWIGLU, 37, 1, 3}, {MG_ACT_SWIGLU, 41, 0, 1},
             {MG_ACT_SWIGLU, 43, 1, 2},  {MG_ACT_MUL, 37, 0, 3},    {MG_ACT_ADD, 37, 1, 3},
             {MG_ACT_SWIGLU, 40009, 0, 3}, {MG_ACT_MUL, 40009, 1, 1}, {MG_ACT_SILU, 40009, 1, 1},
             {MG_ACT_ADD, 40009, 0, 2},  {MG_ACT_SWIGLU, 0, 1, 3}};
    if (v >= NELEM(S)) return 0;
    typedef MgActArgs A;
    const int n = S[v].n, binary = S[v].kind != MG_ACT_SILU;
    A *a = bo_args(c, sizeof *a);
    a->kind = S[v].kind;
    a->n = n;
    a->accumulate = bwd && S[v].acc;
    if (bwd)
        bo_shape(c, "kind=%s n=%d%s%s%s", act_name(S[v].kind), n, S[v].grads & 1 ? " da" : "",
                 S[v].grads & 2 ? " db" : "", S[v].acc ? " acc" : "");
    else bo_shape(c, "kind=%s n=%d", act_name(S[v].kind), n);
    normal(BO_IN_(c, A, a, BO_ACT, n), n, 2.0);
    if (binary) normal(BO_IN_(c, A, b, BO_ACT, n), n, 1.0);
    if (!bwd) {
        BO_OUT_(c, A, y, BO_ACT, n);
        bo_call(c, BO_OP(act_forward));
        return 1;
    }
    normal(BO_IN_(c, A, dy, BO_ACT, n), n, 1.0);
    const BoRole r = S[v].acc ? BO_ACC : BO_OUT;
    if (S[v].grads & 1) normal(bo_buf(c, r, offsetof(A, da), "da", BO_ACT, n), n, 1.0);
    if ((S[v].grads & 2) && binary) normal(bo_buf(c, r, offsetof(A, db), "db", BO_ACT, n), n, 1.0);
    bo_call(c, BO_OP(act_backward));
    return 1;
}
static int case_act_forward(BoCase *c, int v) { return act_case(c, v, 0); }
static int case_act_backward(BoCase *c, int v) { return act_case(c, v, 1); }

/* ---------------------------------------------------------------------------------------------- */
/* dropout */

static int dropout_case(BoCase *c, int v, int bwd) {
    /* p = 0 (a copy), p > 0 with an offset into the mask stream, in place (y == x, dx == dy), and a slice
     * of a larger tensor (segments of seg_len placed seg_stride apart in the counter space). */
    static const struct {
        int n;
        double p;
        unsigned offset;
        int inplace, acc;
        int seg_len, seg_stride;
    } S[] = {{37, 0.0, 0, 0, 1, 0, 0},    {40009, 0.3, 0, 0, 0, 0, 0},  {1001, 0.9, 77, 1, 0, 0, 0},
             {41, 0.5, 12345, 0, 1, 0, 0}, {1003, 0.4, 9, 0, 0, 17, 51}, {70001, 0.2, 5, 0, 1, 7000, 21000}};
    if (v >= NELEM(S)) return 0;
    typedef MgDropoutArgs A;
    const int n = S[v].n;
    A *a = bo_args(c, sizeof *a);
    a->n = n;
    a->p = S[v].p;
    a->seed = 0xd0d0cafeu + (unsigned)v;
    a->offset = S[v].offset;
    a->seg_len = S[v].seg_len;
    a->seg_stride = S[v].seg_stride;
    a->accumulate = bwd && S[v].acc;
    bo_shape(c, "n=%d p=%g offset=%u seg=%d/%d%s%s", n, S[v].p, S[v].offset, S[v].seg_len, S[v].seg_stride,
             S[v].inplace ? " in-place" : "", bwd && S[v].acc ? " acc" : "");
    /* Tolerance: element-wise (the default); the mask is an integer compare, so it must match exactly,
     * and the scale 1/(1-p) is rounded to the storage dtype. */
    if (!bwd) {
        if (S[v].inplace) {
            normal(BO_INOUT_(c, A, x, BO_ACT, n), n, 1.0);
            bo_alias(c, offsetof(A, y), "x");
        } else {
            normal(BO_IN_(c, A, x, BO_ACT, n), n, 1.0);
            BO_OUT_(c, A, y, BO_ACT, n);
        }
        bo_call(c, BO_OP(dropout_forward));
        return 1;
    }
    if (S[v].inplace) {
        normal(BO_INOUT_(c, A, dy, BO_ACT, n), n, 1.0);
        bo_alias(c, offsetof(A, dx), "dy");
    } else {
        normal(BO_IN_(c, A, dy, BO_ACT, n), n, 1.0);
        normal(bo_buf(c, S[v].acc ? BO_ACC : BO_OUT, offsetof(A, dx), "dx", BO_ACT, n), n, 1.0);
    }
    bo_call(c, BO_OP(dropout_backward));
    return 1;
}
static int case_dropout_forward(BoCase *c, int v) { return dropout_case(c, v, 0); }
static int case_dropout_backward(BoCase *c, int v) { return dropout_case(c, v, 1); }

/* ---------------------------------------------------------------------------------------------- */
/* cross-entropy */

static int case_cross_entropy(BoCase *c, int v) {
    /* dl: 0 = losses only, 1 = dlogits, 2 = dlogits in place over the logits. std 10 makes confident
     * rows; V = 1 is a single class (loss 0); 67 x 601 crosses the CPU's parallel threshold. oob: some
     * targets outside [0, V) that are not ignore_index (treated as ignored, never read). V > 1024 takes the
     * CUDA block-per-row path (odd V: rows start at every 16-byte phase); 32000 is a real vocabulary. */
    static const struct {
        int T, V;
        double std, ignore_frac;
        int dl, oob;
    } S[] = {{37, 51, 1.0, 0.2, 1, 0},   {13, 1001, 10.0, 0.1, 2, 0}, {5, 1, 1.0, 0.0, 1, 0},
             {29, 300, 3.0, 0.3, 0, 0},  {67, 601, 2.0, 0.1, 1, 0},   {0, 7, 1.0, 0.0, 1, 0},
             {19, 33, 2.0, 0.1, 2, 1},   {9, 4099, 3.0, 0.2, 2, 1},   {11, 2053, 1.0, 0.0, 1, 1},
             {3, 32000, 5.0, 0.0, 1, 0}, {5, 1025, 10.0, 0.2, 0, 1}};
    if (v >= NELEM(S)) return 0;
    typedef MgCrossEntropyArgs A;
    const int T = S[v].T, V = S[v].V;
    const size_t n = (size_t)T * V;
    A *a = bo_args(c, sizeof *a);
    a->T = T;
    a->V = V;
    a->ignore_index = -100;
    bo_shape(c, "T=%d V=%d std=%g ignored=%g%s%s", T, V, S[v].std, S[v].ignore_frac,
             S[v].dl == 0 ? " no-dlogits" : S[v].dl == 2 ? " in-place" : "", S[v].oob ? " out-of-range" : "");
    double *tg = BO_IN_(c, A, targets, BO_I32, T);
    fill_ids(tg, T, V);
    int counted = 0;
    for (int t = 0; t < T; t++) {
        if (tu_uniform() < S[v].ignore_frac) tg[t] = -100;
        if (S[v].oob && t % 4 == 1) tg[t] = t % 3 == 0 ? V : t % 3 == 1 ? -1 : V + 1000000;
        counted += tg[t] >= 0 && tg[t] < V;
    }
    a->grad_scale = 1.0 / (counted ? counted : 1);
    bo_tol(c, BO_TOL_REDUCTION); /* log-sum-exp over V */
    BO_OUT_(c, A, losses, BO_STATE, T);
    if (S[v].dl == 2) {
        normal(BO_INOUT_(c, A, logits, BO_ACT, n), n, S[v].std);
        bo_alias(c, offsetof(A, dlogits), "logits");
    } else {
        normal(BO_IN_(c, A, logits, BO_ACT, n), n, S[v].std);
        if (S[v].dl == 1) BO_OUT_(c, A, dlogits, BO_ACT, n);
    }
    bo_call(c, BO_OP(cross_entropy));
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* table functions outside the op list */

static int case_adamw_update(BoCase *c, int v) {
    static const struct {
        int n;
        long long step;
        double wd;
        int param_out; /* separate compute-dtype parameters receive the masters */
    } S[] = {{37, 1, 0.1, 0}, {40009, 7, 0.0, 1}, {1, 1000, 0.01, 1}};
    if (v >= NELEM(S)) return 0;
    typedef MgAdamWArgs A;
    const int n = S[v].n;
    A *a = bo_args(c, sizeof *a);
    a->n = n;
    a->lr = 1e-3;
    a->beta1 = 0.9;
    a->beta2 = 0.999;
    a->eps = 1e-8;
    a->weight_decay = S[v].wd;
    a->grad_scale = 0.5;
    a->step = S[v].step;
    bo_shape(c, "n=%d step=%lld wd=%g%s", n, S[v].step, S[v].wd, S[v].param_out ? " param_out" : "");
    normal(BO_INOUT_(c, A, param, BO_F32, n), n, 1.0);
    normal(BO_IN_(c, A, grad, BO_ACT, n), n, 1.0); /* the gradient is in the compute dtype */
    if (S[v].param_out) BO_OUT_(c, A, param_out, BO_ACT, n);
    normal(BO_INOUT_(c, A, m, BO_F32, n), n, 0.1);
    tu_fill_uniform(BO_INOUT_(c, A, v, BO_F32, n), n, 0.0, 0.01);
    bo_call(c, BO_OP(adamw_update));
    return 1;
}

static int case_convert(BoCase *c, int v) {
    /* float64 -> float32 (rounding), float32 -> float64 (exact), float32 -> float32 (a copy) */
    static const struct {
        int n;
        MgDtype src, dst;
    } S[] = {{37, MG_F64, MG_F32}, {70001, MG_F32, MG_F64}, {5, MG_F32, MG_F32}};
    if (v >= NELEM(S)) return 0;
    typedef MgConvertArgs A;
    const int n = S[v].n;
    A *a = bo_args(c, sizeof *a);
    a->n = n;
    a->src_dtype = S[v].src;
    a->dst_dtype = S[v].dst;
    bo_shape(c, "n=%d %s->%s", n, mg_dtype_name(S[v].src), mg_dtype_name(S[v].dst));
    bo_tol(c, BO_TOL_EXACT); /* one correctly rounded conversion: every backend must agree bit for bit */
    normal(BO_IN_(c, A, src, S[v].src == MG_F64 ? BO_F64 : BO_F32, n), n, 3.0);
    BO_OUT_(c, A, dst, S[v].dst == MG_F64 ? BO_F64 : BO_F32, n);
    bo_call(c, BO_OP(convert));
    return 1;
}

static const int vec_sizes[] = {37, 40009, 1};

static int case_sum_squares(BoCase *c, int v) {
    if (v >= NELEM(vec_sizes)) return 0;
    typedef BoSumSquaresArgs A;
    const int n = vec_sizes[v];
    A *a = bo_args(c, sizeof *a);
    a->n = n;
    bo_shape(c, "n=%d", n);
    normal(BO_IN_(c, A, x, BO_ACT, n), n, 1.0);
    BO_OUT_(c, A, result, BO_F64, 1);
    bo_host(c, "result");
    /* Element-wise tolerance: the sum is in double, so only the inputs' rounding (shared with the
     * reference) and the summation order remain. */
    bo_call(c, BO_OP(sum_squares));
    return 1;
}

static int case_axpy(BoCase *c, int v) {
    if (v >= NELEM(vec_sizes)) return 0;
    typedef BoAxpyArgs A;
    const int n = vec_sizes[v];
    A *a = bo_args(c, sizeof *a);
    a->n = n;
    a->alpha = v == 1 ? 1.3 : -0.7;
    bo_shape(c, "n=%d alpha=%g", n, a->alpha);
    normal(BO_IN_(c, A, x, BO_ACT, n), n, 1.0);
    normal(BO_ACC_(c, A, y, BO_ACT, n), n, 1.0);
    bo_call(c, BO_OP(axpy));
    return 1;
}

static int case_scale(BoCase *c, int v) {
    if (v >= NELEM(vec_sizes)) return 0;
    typedef BoScaleArgs A;
    const int n = vec_sizes[v];
    A *a = bo_args(c, sizeof *a);
    a->n = n;
    a->alpha = v == 1 ? -2.5 : 0.3;
    bo_shape(c, "n=%d alpha=%g", n, a->alpha);
    normal(BO_INOUT_(c, A, x, BO_ACT, n), n, 1.0);
    bo_call(c, BO_OP(scale));
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */

const BoCaseEntry bo_cases[] = {
    {BO_OP(embedding_forward), case_embedding_forward},
    {BO_OP(embedding_backward), case_embedding_backward},
    {BO_OP(linear_forward), case_linear_forward},
    {BO_OP(linear_backward), case_linear_backward},
    {BO_OP(timestep_norm_forward), case_timestep_norm_forward},
    {BO_OP(timestep_norm_backward), case_timestep_norm_backward},
    {BO_OP(cema_forward), case_cema_forward},
    {BO_OP(cema_backward), case_cema_backward},
    {BO_OP(rmsnorm_forward), case_rmsnorm_forward},
    {BO_OP(rmsnorm_backward), case_rmsnorm_backward},
    {BO_OP(layernorm_forward), case_layernorm_forward},
    {BO_OP(layernorm_backward), case_layernorm_backward},
    {BO_OP(qknorm_forward), case_qknorm_forward},
    {BO_OP(qknorm_backward), case_qknorm_backward},
    {BO_OP(rope_forward), case_rope_forward},
    {BO_OP(rope_backward), case_rope_backward},
    {BO_OP(attention_forward), case_attention_forward},
    {BO_OP(attention_backward), case_attention_backward},
    {BO_OP(attention_merge), case_attention_merge},
    {BO_OP(act_forward), case_act_forward},
    {BO_OP(act_backward), case_act_backward},
    {BO_OP(dropout_forward), case_dropout_forward},
    {BO_OP(dropout_backward), case_dropout_backward},
    {BO_OP(cross_entropy), case_cross_entropy},
    {BO_OP(adamw_update), case_adamw_update},
    {BO_OP(convert), case_convert},
    {BO_OP(sum_squares), case_sum_squares},
    {BO_OP(axpy), case_axpy},
    {BO_OP(scale), case_scale},
};
const int bo_ncases = NELEM(bo_cases);
