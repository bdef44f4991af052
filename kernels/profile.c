/* A profiling backend: wraps another backend, forwards every call and accumulates, per op, wall time
 * (synchronising after each call, so on an accelerator the time is the op's own), calls, and a model of
 * the op's memory traffic and arithmetic. Used by `megalodon bench --profile 1`; costs nothing when not used.
 *
 * The traffic model is the MINIMUM bytes an op must move: every input read once, every output written
 * once, in the backend's element sizes (be->dtype for activations, parameters and gradients,
 * be->state_dtype for carried states, saved statistics and losses, int32 tokens/targets, int64 counts,
 * uint8 padding masks). NULL pointers count 0. An output that is accumulated into ([acc] parameter
 * gradients always, input gradients when `accumulate` is set) is read as well as written. A real kernel
 * may move more (a second pass, a recomputation, a workspace round trip); GB/s below the copy ceiling
 * means exactly that, or latency.
 *
 * The FLOP model: matrix products count 2 FLOPs per multiply-add (linear forward 2*T*in*out, backward
 * 2*T*in*out per gradient asked for: dx, dweight). Attention forward counts 2*(Dqk + Dv) FLOPs per
 * visible query-key pair per head (Q K^T and P V; the softmax is not counted), with the visible pairs of
 * the CPU op's geometry (kernels/cpu/attention.c): per chunk, query i sees keys j <= i + off, j < nk.
 * Attention backward is counted as 2.5x its forward (S and dP recomputed, dV, dQ, dK: five products of
 * the forward's size, of which the forward has two). CEMA forward is 8*N FLOPs per (token, channel) (one
 * complex multiply-add per order plus the real part of gamma h), backward 3x that (recompute, adjoint
 * recurrence, parameter gradients). Element-wise ops (norms, activations, dropout, RoPE, AdamW,
 * cross-entropy) count a few FLOPs per element, stated next to each; transcendentals count 1. Only
 * linear, attention and CEMA report TFLOP/s; for the rest the FLOP count is too small to matter. */
#include <string.h>

#include "ops.h"

#define MG_PROFILE_MAX 64
/* what an op is measured against: the matrix-product ceiling (TFLOP/s) or the copy ceiling (GB/s) */
enum { PROF_MEM = 0, PROF_FLOPS = 1, PROF_GEMM = 2 };
typedef struct {
    const char *name;
    double seconds, bytes, flops;
    int64_t calls;
    int kind; /* PROF_GEMM: TFLOP/s vs the gemm ceiling; PROF_FLOPS: TFLOP/s shown, GB/s vs copy; PROF_MEM: GB/s */
} ProfEntry;

static ProfEntry g_prof[MG_PROFILE_MAX];
static int g_nprof = 0;
static MgBackend g_wrapped;
static const MgBackend *g_inner = NULL;
static double g_copy_gbs = 0.0, g_gemm_tflops = 0.0;

static ProfEntry *prof_entry(const char *name) {
    for (int i = 0; i < g_nprof; i++)
        if (g_prof[i].name == name) return &g_prof[i];
    MG_CHECK(g_nprof < MG_PROFILE_MAX, "profile: too many ops");
    g_prof[g_nprof] = (ProfEntry){name, 0.0, 0.0, 0.0, 0, PROF_MEM};
    return &g_prof[g_nprof++];
}

/* ---- cost models: bytes (minimum traffic) and FLOPs of one call -------------------------------- */
typedef struct {
    double bytes, flops;
    int kind;
} Cost;

static double esz(void) { return (double)mg_dtype_size(g_inner->dtype); }
static double ssz(void) { return (double)mg_dtype_size(g_inner->state_dtype); }
/* n elements of size s if p is not NULL */
static double nb(const void *p, double n, double s) { return p ? n * s : 0.0; }
/* an output: written once, and read too when accumulated into */
static double outb(const void *p, double n, double s, int acc) { return p ? n * s * (acc ? 2.0 : 1.0) : 0.0; }
static double dmin(double x, double y) { return x < y ? x : y; }

static Cost cost_embedding_forward(const MgEmbeddingArgs *a) {
    const double T = (double)a->T, D = a->D, E = esz();
    /* tokens, the looked-up rows (at most V distinct), the output; no arithmetic */
    return (Cost){nb(a->tokens, T, 4) + dmin(T, a->V) * D * E + nb(a->out, T * D, E), 0.0, PROF_MEM};
}
static Cost cost_embedding_backward(const MgEmbeddingArgs *a) {
    const double T = (double)a->T, D = a->D, E = esz();
    /* dout, tokens, and the touched rows of dweight read and written; 1 add per element */
    return (Cost){nb(a->tokens, T, 4) + nb(a->dout, T * D, E) + outb(a->dweight, dmin(T, a->V) * D, E, 1), T * D,
                  PROF_MEM};
}
static Cost cost_linear_forward(const MgLinearArgs *a) {
    const double T = (double)a->T, I = a->in, O = a->out, E = esz();
    return (Cost){nb(a->x, T * I, E) + nb(a->weight, O * I, E) + nb(a->bias, O, E) + nb(a->y, T * O, E),
                  2.0 * T * I * O + (a->bias ? T * O : 0.0), PROF_GEMM};
}
static Cost cost_linear_backward(const MgLinearArgs *a) {
    const double T = (double)a->T, I = a->in, O = a->out, E = esz();
    double b = nb(a->dy, T * O, E), f = 0.0;
    if (a->dx) b += nb(a->weight, O * I, E) + outb(a->dx, T * I, E, a->accumulate), f += 2.0 * T * I * O;
    if (a->dweight) b += nb(a->x, T * I, E) + outb(a->dweight, O * I, E, 1), f += 2.0 * T * I * O;
    if (a->dbias) b += outb(a->dbias, O, E, 1), f += T * O;
    return (Cost){b, f, PROF_GEMM};
}
static Cost cost_timestep_norm_forward(const MgTimestepNormArgs *a) {
    const double BL = (double)a->B * a->L, n = BL * a->D, BG = (double)a->B * a->G, E = esz(), S = ssz();
    double b = nb(a->x, n, E) + nb(a->pad_mask, BL, 1) + nb(a->weight, a->D, E) + nb(a->bias, a->D, E) +
               nb(a->count_in, a->B, 8) + nb(a->mean_in, BG, S) + nb(a->var_in, BG, S) + nb(a->count_out, a->B, 8) +
               nb(a->mean_out, BG, S) + nb(a->var_out, BG, S) + nb(a->y, n, E) + nb(a->saved_mean, BL * a->G, S) +
               nb(a->saved_rstd, BL * a->G, S);
    /* statistics: 3 per element (sum, square, add); output: 4 (subtract, scale, scale, shift) */
    return (Cost){b, a->y ? 7.0 * n : 3.0 * n, PROF_MEM};
}
static Cost cost_timestep_norm_backward(const MgTimestepNormArgs *a) {
    const double BL = (double)a->B * a->L, n = BL * a->D, BG = (double)a->B * a->G, E = esz(), S = ssz();
    double b = nb(a->x, n, E) + nb(a->dy, n, E) + nb(a->pad_mask, BL, 1) + nb(a->weight, a->D, E) +
               nb(a->saved_mean, BL * a->G, S) + nb(a->saved_rstd, BL * a->G, S) + nb(a->count_in, a->B, 8) +
               nb(a->mean_in, BG, S) + nb(a->var_in, BG, S) + nb(a->dmean_out, BG, S) + nb(a->dvar_out, BG, S) +
               outb(a->dx, n, E, a->accumulate) + outb(a->dweight, a->D, E, 1) + outb(a->dbias, a->D, E, 1) +
               nb(a->dmean_in, BG, S) + nb(a->dvar_in, BG, S);
    return (Cost){b, 12.0 * n, PROF_MEM}; /* ~12 per element: normalised x, dweight/dbias, two reductions, dx */
}
static Cost cost_cema_forward(const MgCemaArgs *a) {
    const double n = (double)a->B * a->L * a->D, DN = (double)a->D * a->N, H = (double)a->B * DN * 2, E = esz(), S = ssz();
    double b = nb(a->x, n, E) + nb(a->alpha, DN, E) + nb(a->delta, DN, E) + nb(a->theta, a->D, E) +
               nb(a->gamma, 2 * DN, E) + nb(a->omega, a->D, E) + nb(a->h_in, H, S) + nb(a->h_out, H, S) + nb(a->y, n, E);
    return (Cost){b, 8.0 * a->N * n, PROF_FLOPS};
}
static Cost cost_cema_backward(const MgCemaArgs *a) {
    const double n = (double)a->B * a->L * a->D, DN = (double)a->D * a->N, H = (double)a->B * DN * 2, E = esz(), S = ssz();
    double b = nb(a->x, n, E) + nb(a->dy, n, E) + nb(a->alpha, DN, E) + nb(a->delta, DN, E) + nb(a->theta, a->D, E) +
               nb(a->gamma, 2 * DN, E) + nb(a->omega, a->D, E) + nb(a->h_in, H, S) + nb(a->dh_out, H, S) +
               outb(a->dx, n, E, a->accumulate) + outb(a->dalpha, DN, E, 1) + outb(a->ddelta, DN, E, 1) +
               outb(a->dtheta, a->D, E, 1) + outb(a->dgamma, 2 * DN, E, 1) + outb(a->domega, a->D, E, 1) +
               nb(a->dh_in, H, S);
    return (Cost){b, 3.0 * 8.0 * a->N * n, PROF_FLOPS};
}
static Cost cost_rmsnorm_forward(const MgRMSNormArgs *a) {
    const double n = (double)a->T * a->D, E = esz();
    return (Cost){nb(a->x, n, E) + nb(a->weight, a->D, E) + nb(a->y, n, E) + nb(a->saved_rstd, (double)a->T, ssz()),
                  4.0 * n, PROF_MEM}; /* square-add, scale, scale */
}
static Cost cost_rmsnorm_backward(const MgRMSNormArgs *a) {
    const double n = (double)a->T * a->D, E = esz();
    return (Cost){nb(a->x, n, E) + nb(a->dy, n, E) + nb(a->weight, a->D, E) + nb(a->saved_rstd, (double)a->T, ssz()) +
                      outb(a->dx, n, E, a->accumulate) + (a->weight ? outb(a->dweight, a->D, E, 1) : 0.0),
                  8.0 * n, PROF_MEM};
}
static Cost cost_layernorm_forward(const MgLayerNormArgs *a) {
    const double n = (double)a->T * a->D, E = esz(), S = ssz();
    return (Cost){nb(a->x, n, E) + nb(a->weight, a->D, E) + nb(a->bias, a->D, E) + nb(a->y, n, E) +
                      nb(a->saved_mean, (double)a->T, S) + nb(a->saved_rstd, (double)a->T, S),
                  7.0 * n, PROF_MEM};
}
static Cost cost_layernorm_backward(const MgLayerNormArgs *a) {
    const double n = (double)a->T * a->D, E = esz(), S = ssz();
    return (Cost){nb(a->x, n, E) + nb(a->dy, n, E) + nb(a->weight, a->D, E) + nb(a->saved_mean, (double)a->T, S) +
                      nb(a->saved_rstd, (double)a->T, S) + outb(a->dx, n, E, a->accumulate) +
                      outb(a->dweight, a->D, E, 1) + outb(a->dbias, a->D, E, 1),
                  10.0 * n, PROF_MEM};
}
static Cost cost_qknorm_forward(const MgQKNormArgs *a) {
    const double n = (double)a->T * a->Z, E = esz();
    return (Cost){nb(a->z, n, E) + nb(a->gamma, 2.0 * a->Z, E) + nb(a->beta, 2.0 * a->Z, E) + nb(a->q, n, E) +
                      nb(a->k, n, E) + nb(a->saved_rstd, (double)a->T * a->H, ssz()),
                  8.0 * n, PROF_MEM}; /* square-add, normalise, two scale-shifts */
}
static Cost cost_qknorm_backward(const MgQKNormArgs *a) {
    const double n = (double)a->T * a->Z, E = esz();
    return (Cost){nb(a->z, n, E) + nb(a->dq, n, E) + nb(a->dk, n, E) + nb(a->gamma, 2.0 * a->Z, E) +
                      nb(a->saved_rstd, (double)a->T * a->H, ssz()) + outb(a->dz, n, E, a->accumulate) +
                      outb(a->dgamma, 2.0 * a->Z, E, 1) + outb(a->dbeta, 2.0 * a->Z, E, 1),
                  14.0 * n, PROF_MEM};
}
static Cost cost_rope_forward(const MgRopeArgs *a) {
    const double n = (double)a->B * a->L * a->H * a->dh, E = esz();
    return (Cost){nb(a->x, n, E) + nb(a->y, n, E), 3.0 * n, PROF_MEM}; /* a 2x2 rotation: 6 per pair */
}
static Cost cost_rope_backward(const MgRopeArgs *a) {
    const double n = (double)a->B * a->L * a->H * a->dh, E = esz();
    return (Cost){nb(a->dy, n, E) + outb(a->dx, n, E, a->accumulate), 3.0 * n, PROF_MEM};
}
/* Visible query-key pairs of one (batch row, head), summed over its chunks: the CPU op's geometry. */
static double attn_pairs(const MgAttentionArgs *a) {
    int64_t nchunks, nq, nk, off;
    if (a->block) {
        nchunks = 1, nq = a->Lq, nk = a->Lk, off = a->q_row0 - a->k_row0;
    } else if (a->Lq == a->Lk) {
        const int64_t c = MG_MIN(a->chunk, a->Lq) > 0 ? MG_MIN(a->chunk, a->Lq) : 1;
        nchunks = a->Lq / c, nq = nk = c, off = 0;
    } else {
        nchunks = 1, nq = a->Lq, nk = a->Lk, off = a->Lk - a->Lq;
    }
    /* query i sees min(nk, i + off + 1) keys: a triangle up to row nk - off - 1, full rows after it */
    const int64_t tri = MG_MAX((int64_t)0, MG_MIN(nq, nk - off)); /* rows i < tri see i + off + 1 <= nk keys */
    const double p = (double)tri * (double)(off + 1) + 0.5 * (double)tri * (double)(tri - 1) + (double)(nq - tri) * (double)nk;
    return (double)nchunks * p;
}
static Cost cost_attention_forward(const MgAttentionArgs *a) {
    const double BH = (double)a->B * a->H, E = esz();
    double b = nb(a->q, BH * a->Lq * a->Dqk, E) + nb(a->k, BH * a->Lk * a->Dqk, E) + nb(a->v, BH * a->Lk * a->Dv, E) +
               nb(a->o, BH * a->Lq * a->Dv, E) + nb(a->saved_lse, BH * a->Lq, ssz());
    return (Cost){b, 2.0 * (a->Dqk + a->Dv) * attn_pairs(a) * BH, PROF_GEMM};
}
static Cost cost_attention_backward(const MgAttentionArgs *a) {
    const double BH = (double)a->B * a->H, E = esz(), nq = BH * a->Lq, nk = BH * a->Lk;
    double b = nb(a->q, nq * a->Dqk, E) + nb(a->k, nk * a->Dqk, E) + nb(a->v, nk * a->Dv, E) + nb(a->o, nq * a->Dv, E) +
               nb(a->dout, nq * a->Dv, E) + nb(a->saved_lse, nq, ssz()) + outb(a->dq, nq * a->Dqk, E, a->accumulate) +
               outb(a->dk, nk * a->Dqk, E, a->accumulate) + outb(a->dv, nk * a->Dv, E, a->accumulate);
    return (Cost){b, 2.5 * 2.0 * (a->Dqk + a->Dv) * attn_pairs(a) * BH, PROF_GEMM};
}
static Cost cost_attention_merge(const MgAttnMergeArgs *a) {
    const double rows = (double)a->B * a->Lq * a->H, n = rows * a->Dv, E = esz(), S = ssz();
    return (Cost){outb(a->o, n, E, 1) + outb(a->lse, rows, S, 1) + nb(a->o_b, n, E) + nb(a->lse_b, rows, S),
                  3.0 * n + 6.0 * rows, PROF_MEM}; /* two scales and an add per element; lse: exp, log */
}
static Cost cost_act_forward(const MgActArgs *a) {
    const double n = (double)a->n, E = esz();
    static const double fl[] = {4.0, 5.0, 1.0, 1.0}; /* silu = a / (1 + exp(-a)): 4; swiglu +1; mul; add */
    const int binary = a->kind != MG_ACT_SILU;
    return (Cost){nb(a->a, n, E) + (binary ? nb(a->b, n, E) : 0.0) + nb(a->y, n, E),
                  (a->kind >= 0 && a->kind <= MG_ACT_ADD ? fl[a->kind] : 1.0) * n, PROF_MEM};
}
static Cost cost_act_backward(const MgActArgs *a) {
    const double n = (double)a->n, E = esz();
    /* the inputs each gradient needs: silu' needs a; swiglu: da needs a and b, db needs a; mul: da needs b,
     * db needs a; add: neither */
    int need_a = 0, need_b = 0;
    double f = 0.0;
    switch (a->kind) {
    case MG_ACT_SILU: need_a = a->da != NULL, f = 7.0; break;
    case MG_ACT_SWIGLU: need_a = a->da || a->db, need_b = a->da != NULL, f = 9.0; break;
    case MG_ACT_MUL: need_a = a->db != NULL, need_b = a->da != NULL, f = 2.0; break;
    default: f = 0.0; break;
    }
    return (Cost){nb(a->dy, n, E) + (need_a ? nb(a->a, n, E) : 0.0) + (need_b ? nb(a->b, n, E) : 0.0) +
                      outb(a->da, n, E, a->accumulate) + outb(a->db, n, E, a->accumulate),
                  f * n, PROF_MEM};
}
static Cost cost_dropout_forward(const MgDropoutArgs *a) {
    const double n = (double)a->n, E = esz();
    return (Cost){nb(a->x, n, E) + nb(a->y, n, E), a->p > 0.0 ? 2.0 * n : 0.0, PROF_MEM}; /* compare, scale (hash not counted) */
}
static Cost cost_dropout_backward(const MgDropoutArgs *a) {
    const double n = (double)a->n, E = esz();
    return (Cost){nb(a->dy, n, E) + outb(a->dx, n, E, a->accumulate), a->p > 0.0 ? 2.0 * n : 0.0, PROF_MEM};
}
static Cost cost_cross_entropy(const MgCrossEntropyArgs *a) {
    const double T = (double)a->T, n = T * a->V, E = esz();
    /* logits read once (max, exp-sum), gradient written once; 3 per logit forward (max, exp, add), +3 for the
     * gradient (exp, subtract, scale) */
    return (Cost){nb(a->logits, n, E) + nb(a->targets, T, 4) + nb(a->losses, T, ssz()) + nb(a->dlogits, n, E),
                  (a->dlogits ? 6.0 : 3.0) * n, PROF_MEM};
}
static Cost cost_adamw_update(const MgAdamWArgs *a) {
    const double n = (double)a->n, E = esz();
    /* fp32 masters and moments read and written, the gradient read, the compute copy written: ~16 per element */
    return (Cost){outb(a->param, n, 4, 1) + nb(a->grad, n, E) + nb(a->param_out, n, E) + outb(a->m, n, 4, 1) +
                      outb(a->v, n, 4, 1),
                  16.0 * n, PROF_MEM};
}
static Cost cost_convert(const MgConvertArgs *a) {
    const double n = (double)a->n;
    return (Cost){nb(a->src, n, (double)mg_dtype_size(a->src_dtype)) + nb(a->dst, n, (double)mg_dtype_size(a->dst_dtype)),
                  0.0, PROF_MEM};
}

static void prof_add(const char *name, double seconds, Cost c) {
    ProfEntry *e = prof_entry(name);
    e->seconds += seconds;
    e->bytes += c.bytes;
    e->flops += c.flops;
    e->kind = c.kind;
    e->calls++;
}

#define MG_PROF_WRAP(name, Args)                                                                        \
    static void prof_##name(const MgBackend *be, const Args *a) {                                       \
        (void)be;                                                                                       \
        double t0 = mg_now();                                                                           \
        g_inner->name(g_inner, a);                                                                      \
        g_inner->synchronize(g_inner);                                                                  \
        prof_add(#name, mg_now() - t0, cost_##name(a));                                                 \
    }
MG_OP_LIST(MG_PROF_WRAP)

static double prof_sum_squares(const MgBackend *be, const void *x, int64_t n) {
    (void)be;
    double t0 = mg_now();
    double r = g_inner->sum_squares(g_inner, x, n);
    prof_add("sum_squares", mg_now() - t0, (Cost){nb(x, (double)n, esz()), 2.0 * (double)n, PROF_MEM});
    return r;
}

static void prof_axpy(const MgBackend *be, int64_t n, double alpha, const void *x, void *y) {
    (void)be;
    double t0 = mg_now();
    g_inner->axpy(g_inner, n, alpha, x, y);
    g_inner->synchronize(g_inner);
    prof_add("axpy", mg_now() - t0, (Cost){nb(x, (double)n, esz()) + outb(y, (double)n, esz(), 1), 2.0 * (double)n, PROF_MEM});
}

const MgBackend *mg_backend_profile_wrap(const MgBackend *inner) {
    g_inner = inner;
    g_wrapped = *inner;
#define MG_PROF_SET(name, Args) g_wrapped.name = prof_##name;
    MG_OP_LIST(MG_PROF_SET)
#undef MG_PROF_SET
    g_wrapped.sum_squares = prof_sum_squares;
    g_wrapped.axpy = prof_axpy;
    return &g_wrapped;
}

void mg_profile_reset(void) { g_nprof = 0; }

void mg_profile_set_ceilings(double copy_gbs, double gemm_tflops) {
    g_copy_gbs = copy_gbs;
    g_gemm_tflops = gemm_tflops;
}

static int by_time(const void *a, const void *b) {
    double x = ((const ProfEntry *)a)->seconds, y = ((const ProfEntry *)b)->seconds;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* three significant digits without an exponent above 1 (4310, 87.2, 1.45), %.3g below (0.0283, 2.01e-05) */
static void fmt3(char *buf, size_t n, double x) {
    if (x >= 100.0) snprintf(buf, n, "%.0f", x);
    else if (x >= 10.0) snprintf(buf, n, "%.1f", x);
    else if (x >= 1.0) snprintf(buf, n, "%.2f", x);
    else snprintf(buf, n, "%.3g", x);
}

void mg_profile_report(FILE *f, int steps) {
    ProfEntry sorted[MG_PROFILE_MAX];
    memcpy(sorted, g_prof, sizeof(ProfEntry) * (size_t)g_nprof);
    qsort(sorted, (size_t)g_nprof, sizeof(ProfEntry), by_time);
    double total = 0.0, tbytes = 0.0, tflops = 0.0;
    for (int i = 0; i < g_nprof; i++) total += sorted[i].seconds, tbytes += sorted[i].bytes, tflops += sorted[i].flops;
    const int ceil = g_copy_gbs > 0.0 && g_gemm_tflops > 0.0;
    fprintf(f, "profile (per step, %d steps):\n", steps);
    fprintf(f, "  # GB/s: minimum bytes moved (inputs read once, outputs written once, accumulated outputs read too) / time\n"
               "  # TFLOP/s: 2 per multiply-add; attention 2(Dqk+Dv) per visible pair, backward 2.5x; CEMA 8N per token and "
               "channel, backward 3x; '-': negligible FLOPs\n");
    if (ceil)
        fprintf(f, "  # of ceiling: mm = TFLOP/s / %.1f TFLOP/s (gemm), cp = GB/s / %.0f GB/s (device copy)\n", g_gemm_tflops,
                g_copy_gbs);
    fprintf(f, "  %-24s %11s  %6s  %6s %9s %9s%s\n", "op", "ms", "%", "calls", "GB/s", "TFLOP/s", ceil ? "  of ceiling" : "");
    for (int i = 0; i < g_nprof; i++) {
        const ProfEntry *e = &sorted[i];
        const double s = e->seconds > 0 ? e->seconds : 1e-30, gbs = e->bytes / s * 1e-9, tfs = e->flops / s * 1e-12;
        char gb[32], tf[32] = "-", frac[32] = "";
        fmt3(gb, sizeof gb, gbs);
        if (e->kind != PROF_MEM) fmt3(tf, sizeof tf, tfs);
        if (ceil) {
            if (e->kind == PROF_GEMM) snprintf(frac, sizeof frac, "  %6.1f%% mm", 100.0 * tfs / g_gemm_tflops);
            else snprintf(frac, sizeof frac, "  %6.1f%% cp", 100.0 * gbs / g_copy_gbs);
        }
        fprintf(f, "  %-24s %8.1f ms  %5.1f%%  %6lld %9s %9s%s\n", e->name, 1e3 * e->seconds / steps,
                100.0 * e->seconds / (total > 0 ? total : 1), (long long)(e->calls / steps), gb, tf, frac);
    }
    fprintf(f, "  %-24s %8.1f ms  (%.3g GB and %.3g TFLOP per step in the model above)\n", "total in ops", 1e3 * total / steps,
            tbytes / steps * 1e-9, tflops / steps * 1e-12);
}
