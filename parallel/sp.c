/* Sequence parallelism: the model's communication hooks over the SP group (sp.h, docs/parallelism.md). */
#include "sp.h"

#include "shard.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Message tags: each scan uses up to 1024 tags from its base (pipelined pieces). */
enum { TAG_TSN = 0, TAG_CEMA = 1024, TAG_BWD = 2048, TAG_BWD_TSN = 4096, TAG_BWD_CEMA = 5120 };

typedef struct {
    MgTpRequest *req;
    void *buf;
} Pending;

struct MgSp {
    MgTransport *t;
    const MgBackend *be;
    MgScanAlgo algo;
    int pieces;
    MgModelHooks hooks;
    MgScanDtype sdt;   /* element type of the exchanged summaries: the state dtype (f32 or f64) */
    size_t ss;         /* bytes of one state scalar */
    /* host buffers, grown on demand */
    void *elem, *out, *tmp;
    size_t elem_cap, out_cap, tmp_cap;
    double *param;
    size_t param_cap;
    MgScanWork *work[4]; /* per group (TimestepNorm, CEMA) and direction: scratch and deferred chain sends */
    int scan_backward;   /* the backward by reverse scans (else the reverse chain) */
    Pending *pend;
    int n_pend, cap_pend;
    MgSpStats st;
    /* attention across ranks (a chunk longer than a slice) */
    MgTransport *cg;       /* the ranks sharing this rank's chunk (rank = position in the chunk) */
    int cg_k;              /* ranks per chunk */
    void **kctx, **vctx;   /* per layer: the chunk's keys and values up to this slice (backend memory) */
    size_t *ctx_bytes;     /* per layer: bytes of each */
    int n_ctx;
    void *dkctx, *dvctx;   /* the gradients of the context (one pair, reused by every layer) */
    size_t dctx_bytes;
    void *h_local, *h_all, *h_ctx; /* host staging */
    size_t h_local_cap, h_all_cap, h_ctx_cap;
    MgSpAttn attn_mode;
    /* all-to-all path, per layer: the chunk's head-split q, k, v, o (B x c x H/k x D) and lse (B x H/k x c) */
    void **hq, **hk, **hv, **ho, **hlse;
    size_t *h_bytes; /* per layer, 5 sizes */
    int n_heads_layers;
    void *hdo, *hdq, *hdk, *hdv; /* backward scratch (one set) */
    size_t hd_bytes[4];
    /* ring path (one set, reused by every layer): backend k, v, o, lse of a received block, the block's key
     * gradients and a received partial sum of them; host messages (two k|v, two dk|dv, one own partial) */
    void *rk, *rv, *ro, *rlse, *rdk, *rdv, *rtmp, *rlse_acc;
    size_t r_bytes[8];
    void *rh[5];
    size_t rh_cap[5];
};

static void *grow(void *p, size_t *cap, size_t need) {
    if (need <= *cap) return p;
    free(p);
    *cap = need + need / 4;
    return mg_malloc(*cap);
}

int mg_scan_algo_parse(const char *name, MgScanAlgo *out) {
    static const struct {
        const char *n;
        MgScanAlgo a;
    } names[] = {{"chain", MG_SCAN_CHAIN},
                 {"pipelined", MG_SCAN_PIPELINED},
                 {"allgather", MG_SCAN_ALLGATHER},
                 {"doubling", MG_SCAN_RECURSIVE_DOUBLING},
                 {"recursive-doubling", MG_SCAN_RECURSIVE_DOUBLING}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i].n)) {
            *out = names[i].a;
            return 0;
        }
    return -1;
}

/* ---- element conversions --------------------------------------------------------------------------------- */
static double get(const MgSp *s, const void *p, int64_t i) {
    return s->sdt == MG_SCAN_F64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static void put(const MgSp *s, void *p, int64_t i, double v) {
    if (s->sdt == MG_SCAN_F64) ((double *)p)[i] = v;
    else ((float *)p)[i] = (float)v;
}

/* Index of the tensor called `name` in the exchange group (fatal if absent: a model this module does not
 * know). */
static int find(const MgStateExchange *x, const char *name) {
    for (int i = 0; i < x->n; i++)
        if (!strcmp(x->tensor[i], name)) return i;
    mg_fatal("sequence parallel: state group '%s' of layer %d has no tensor '%s'", x->name, x->layer, name);
}

/* Raw parameters (backend memory, compute dtype) to host doubles. */
static void params_to_host(MgSp *s, const void *p, int64_t n, double *d) {
    const MgBackend *be = s->be;
    const size_t es = mg_dtype_size(be->dtype);
    s->tmp = grow(s->tmp, &s->tmp_cap, (size_t)n * es);
    be->to_host(be, s->tmp, p, (size_t)n * es);
    for (int64_t i = 0; i < n; i++) {
        if (be->dtype == MG_F64) d[i] = ((const double *)s->tmp)[i];
        else if (be->dtype == MG_F32) d[i] = ((const float *)s->tmp)[i];
        else {
            uint32_t u = (uint32_t)((const uint16_t *)s->tmp)[i] << 16; /* bf16 */
            float f;
            memcpy(&f, &u, sizeof f);
            d[i] = f;
        }
    }
}

/* TimestepNorm statistics staged in s->tmp: counts (B), means and variances (B x G, state dtype). */
typedef struct {
    int ic, im, iv, B;
    int64_t BG, G;
    int64_t *cnt;
    char *mean, *var;
} TsnHost;

static TsnHost tsn_host(MgSp *s, const MgStateExchange *x) {
    TsnHost h = {.ic = find(x, "count"), .im = find(x, "mean"), .iv = find(x, "var"), .B = x->B};
    h.BG = x->numel[h.im];
    h.G = h.BG / h.B;
    s->tmp = grow(s->tmp, &s->tmp_cap, (size_t)h.B * sizeof(int64_t) + 2 * (size_t)h.BG * s->ss);
    h.cnt = s->tmp;
    h.mean = (char *)s->tmp + (size_t)h.B * sizeof(int64_t);
    h.var = h.mean + (size_t)h.BG * s->ss;
    return h;
}

/* TimestepNorm: (count, mean, var) per (sequence, group) -> Welford (count, mean, M2 = var * count). */
static int64_t tsn_elems(MgSp *s, const MgStateExchange *x) {
    const MgBackend *be = s->be;
    const TsnHost h = tsn_host(s, x);
    const int ic = h.ic, im = h.im, iv = h.iv, B = h.B;
    const int64_t BG = h.BG, G = h.G;
    int64_t *cnt = h.cnt;
    char *mean = h.mean, *var = h.var;
    be->to_host(be, cnt, x->local[ic], (size_t)B * sizeof(int64_t));
    be->to_host(be, mean, x->local[im], (size_t)BG * s->ss);
    be->to_host(be, var, x->local[iv], (size_t)BG * s->ss);
    s->elem = grow(s->elem, &s->elem_cap, (size_t)BG * 3 * s->ss);
    for (int64_t c = 0; c < BG; c++) {
        const double n = (double)cnt[c / G];
        put(s, s->elem, 3 * c, n);
        put(s, s->elem, 3 * c + 1, get(s, mean, c));
        put(s, s->elem, 3 * c + 2, get(s, var, c) * n);
    }
    return BG;
}

static void tsn_incoming(MgSp *s, const MgStateExchange *x) {
    const MgBackend *be = s->be;
    const TsnHost h = tsn_host(s, x);
    const int ic = h.ic, im = h.im, iv = h.iv, B = h.B;
    const int64_t BG = h.BG, G = h.G;
    int64_t *cnt = h.cnt;
    char *mean = h.mean, *var = h.var;
    for (int64_t c = 0; c < BG; c++) {
        const double n = get(s, s->out, 3 * c);
        if (c % G == 0) cnt[c / G] = (int64_t)llround(n);
        put(s, mean, c, get(s, s->out, 3 * c + 1));
        put(s, var, c, n > 0 ? get(s, s->out, 3 * c + 2) / n : 1.0); /* count 0: the fresh prior */
    }
    be->to_device(be, x->in[ic], cnt, (size_t)B * sizeof(int64_t));
    be->to_device(be, x->in[im], mean, (size_t)BG * s->ss);
    be->to_device(be, x->in[iv], var, (size_t)BG * s->ss);
}

/* CEMA: per (sequence, channel, order) the affine map h -> q^L h + h_local of the slice. q = r e^{i th}
 * with r = 1 - sigmoid(alpha) sigmoid(delta), th = (n + 1) (2 pi / N) sigmoid(theta) (kernels/ops.h). */
static int64_t cema_elems_from(MgSp *s, const MgStateExchange *x, const void *second);

static int64_t cema_elems(MgSp *s, const MgStateExchange *x) { return cema_elems_from(s, x, x->local[find(x, "h")]); }

/* (q^L, second) per channel; second: B x D x N x 2 (backend memory, state dtype) */
static int64_t cema_elems_from(MgSp *s, const MgStateExchange *x, const void *second) {
    const MgCemaArgs *a = x->op_args;
    MG_CHECK(a, "sequence parallel: the CEMA exchange needs the op's arguments");
    const int ih = find(x, "h");
    const int B = x->B, D = a->D, N = a->N;
    const int64_t DN = (int64_t)D * N, C = (int64_t)B * DN;
    MG_CHECK(x->numel[ih] == 2 * C, "sequence parallel: CEMA state of %lld values, expected %lld",
             (long long)x->numel[ih], (long long)(2 * C));
    s->param = grow(s->param, &s->param_cap, (size_t)(2 * DN + D) * sizeof(double));
    double *alpha = s->param, *delta = alpha + DN, *theta = delta + DN;
    params_to_host(s, a->alpha, DN, alpha);
    params_to_host(s, a->delta, DN, delta);
    params_to_host(s, a->theta, D, theta);
    s->tmp = grow(s->tmp, &s->tmp_cap, (size_t)(2 * C) * s->ss);
    s->be->to_host(s->be, s->tmp, second, (size_t)(2 * C) * s->ss);
    s->elem = grow(s->elem, &s->elem_cap, (size_t)(4 * C) * s->ss);
    const double base = 2.0 * M_PI / N, L = (double)x->L;
    for (int64_t jn = 0; jn < DN; jn++) {
        const int64_t j = jn / N, n = jn % N;
        const double al = 1.0 / (1.0 + exp(-alpha[jn])), de = 1.0 / (1.0 + exp(-delta[jn]));
        const double om = 1.0 / (1.0 + exp(-theta[j]));
        const double r = pow(1.0 - al * de, L), th = L * (double)(n + 1) * base * om;
        const double ar = r * cos(th), ai = r * sin(th);
        for (int b = 0; b < B; b++) {
            const int64_t c = (int64_t)b * DN + jn;
            put(s, s->elem, 4 * c, ar);
            put(s, s->elem, 4 * c + 1, ai);
            put(s, s->elem, 4 * c + 2, get(s, s->tmp, 2 * c));
            put(s, s->elem, 4 * c + 3, get(s, s->tmp, 2 * c + 1));
        }
    }
    return C;
}

static void cema_incoming(MgSp *s, const MgStateExchange *x, int64_t C) {
    const int ih = find(x, "h");
    s->tmp = grow(s->tmp, &s->tmp_cap, (size_t)(2 * C) * s->ss);
    for (int64_t c = 0; c < C; c++) { /* h0 = 0: the incoming state is the prefix's b */
        put(s, s->tmp, 2 * c, get(s, s->out, 4 * c + 2));
        put(s, s->tmp, 2 * c + 1, get(s, s->out, 4 * c + 3));
    }
    s->be->to_device(s->be, x->in[ih], s->tmp, (size_t)(2 * C) * s->ss);
}

/* ---- hooks ------------------------------------------------------------------------------------------------ */
/* The forward scan of a group: its spec from the tensor sizes alone (so that state_begin can post it). */
static MgScanSpec fwd_spec(const MgSp *s, const MgStateExchange *x, int cema) {
    const int64_t C = cema ? x->numel[find(x, "h")] / 2 : x->numel[find(x, "mean")];
    return (MgScanSpec){.op = cema ? MG_SCAN_CEMA : MG_SCAN_WELFORD, .dtype = s->sdt, .dir = MG_SCAN_FORWARD,
                        .algo = s->algo, .channels = C, .pieces = (int)MG_MIN((int64_t)s->pieces, C),
                        .tag = cema ? TAG_CEMA : TAG_TSN};
}

/* state_begin: post the part of the scan that does not need this slice's summary (the chain's receive),
 * so the prefix can arrive while the work between begin and end runs (the value projection for CEMA). */
static void h_begin(void *ctx, const MgStateExchange *x) {
    MgSp *s = ctx;
    const double t0 = mg_now();
    const int cema = !strcmp(x->name, "cema");
    const MgScanSpec spec = fwd_spec(s, x, cema);
    s->out = grow(s->out, &s->out_cap, mg_scan_bytes(&spec));
    mg_state_scan_begin(s->t, &spec, s->out, s->work[cema]);
    s->st.fwd_seconds += mg_now() - t0;
}

static void h_end(void *ctx, const MgStateExchange *x) {
    MgSp *s = ctx;
    const double t0 = mg_now();
    const int cema = !strcmp(x->name, "cema");
    MG_CHECK(cema || !strcmp(x->name, "timestep_norm"), "sequence parallel: unknown state group '%s'", x->name);
    const int64_t C = cema ? cema_elems(s, x) : tsn_elems(s, x);
    const MgScanSpec spec = fwd_spec(s, x, cema);
    MG_CHECK(spec.channels == C, "sequence parallel: %lld summary channels, expected %lld", (long long)C,
             (long long)spec.channels);
    mg_state_scan_finish(s->t, &spec, s->elem, NULL, s->out, s->work[cema]);
    if (cema) cema_incoming(s, x, C);
    else tsn_incoming(s, x);
    s->st.fwd_scans++;
    s->st.bytes_sent += (int64_t)mg_scan_bytes(&spec);
    s->st.fwd_seconds += mg_now() - t0;
}

/* Backward by reverse scans: the slice's gradient map g_in = A g_out + c per channel (CEMA: A = conj(q^L),
 * the scan conjugates; TimestepNorm: A = [[a, b], [0, a]] on (dmean, dvar) with a = n_in / n and
 * b = 2 a (1 - a) (mean_in - mean_slice)), c = this slice's own part (din from the model); the reverse
 * scan over the later slices gives dout = their fold applied to 0. */
static void h_dscan(void *ctx, const MgStateExchange *x) {
    MgSp *s = ctx;
    const double t0 = mg_now();
    const MgBackend *be = s->be;
    const int cema = !strcmp(x->name, "cema");
    int64_t C;
    if (cema) {
        C = cema_elems_from(s, x, x->din[find(x, "h")]);
    } else {
        const int ic = find(x, "count"), im = find(x, "mean"), iv = find(x, "var");
        const int B = x->B;
        const int64_t BG = x->numel[im], G = BG / B;
        const size_t bytes = 2 * (size_t)B * sizeof(int64_t) + 4 * (size_t)BG * s->ss;
        s->tmp = grow(s->tmp, &s->tmp_cap, bytes);
        int64_t *n_in = s->tmp, *n_s = n_in + B;
        char *m_in = (char *)(n_s + B), *m_s = m_in + (size_t)BG * s->ss, *c_m = m_s + (size_t)BG * s->ss,
             *c_v = c_m + (size_t)BG * s->ss;
        be->to_host(be, n_in, x->in[ic], (size_t)B * sizeof(int64_t));
        be->to_host(be, n_s, x->local[ic], (size_t)B * sizeof(int64_t));
        be->to_host(be, m_in, x->in[im], (size_t)BG * s->ss);
        be->to_host(be, m_s, x->local[im], (size_t)BG * s->ss);
        be->to_host(be, c_m, x->din[im], (size_t)BG * s->ss);
        be->to_host(be, c_v, x->din[iv], (size_t)BG * s->ss);
        s->elem = grow(s->elem, &s->elem_cap, (size_t)BG * 4 * s->ss);
        for (int64_t c = 0; c < BG; c++) {
            const double ni = (double)MG_MAX(n_in[c / G], 0), ns = (double)n_s[c / G], n = ni + ns;
            const double a = n > 0 ? ni / n : 0.0;
            put(s, s->elem, 4 * c, a);
            put(s, s->elem, 4 * c + 1, 2.0 * a * (1.0 - a) * (get(s, m_in, c) - get(s, m_s, c)));
            put(s, s->elem, 4 * c + 2, get(s, c_m, c));
            put(s, s->elem, 4 * c + 3, get(s, c_v, c));
        }
        C = BG;
    }
    MgScanSpec spec = {.op = cema ? MG_SCAN_CEMA : MG_SCAN_NORM_ADJOINT, .dtype = s->sdt, .dir = MG_SCAN_REVERSE,
                       .algo = s->algo, .channels = C, .pieces = (int)MG_MIN((int64_t)s->pieces, C),
                       .tag = cema ? TAG_BWD_CEMA : TAG_BWD_TSN};
    s->out = grow(s->out, &s->out_cap, mg_scan_bytes(&spec));
    mg_state_scan_ws(s->t, &spec, s->elem, NULL, s->out, s->work[2 + cema]);
    /* dout = the fold's constant part (its map applied to the last slice's zero gradient) */
    s->tmp = grow(s->tmp, &s->tmp_cap, (size_t)(4 * C) * s->ss); /* the pairs, then (TimestepNorm) two tensors */
    for (int64_t c = 0; c < C; c++) {
        put(s, s->tmp, 2 * c, get(s, s->out, 4 * c + 2));
        put(s, s->tmp, 2 * c + 1, get(s, s->out, 4 * c + 3));
    }
    if (cema) {
        be->to_device(be, x->dout[find(x, "h")], s->tmp, (size_t)(2 * C) * s->ss);
    } else { /* (dmean, dvar) interleaved -> two tensors */
        char *dm = (char *)s->tmp + (size_t)(2 * C) * s->ss, *dv = dm + (size_t)C * s->ss;
        for (int64_t c = 0; c < C; c++) {
            put(s, dm, c, get(s, s->tmp, 2 * c));
            put(s, dv, c, get(s, s->tmp, 2 * c + 1));
        }
        be->to_device(be, x->dout[find(x, "mean")], dm, (size_t)C * s->ss);
        be->to_device(be, x->dout[find(x, "var")], dv, (size_t)C * s->ss);
    }
    s->st.bwd_messages++;
    s->st.bytes_sent += (int64_t)mg_scan_bytes(&spec);
    s->st.bwd_seconds += mg_now() - t0;
}

void mg_sp_set_scan_backward(MgSp *s, int on) {
    s->scan_backward = on;
    s->hooks.dstate_scan = on ? h_dscan : NULL;
}

/* Bytes of a group's gradient message: its tensors that have a gradient (counts do not). */
static size_t grad_bytes(const MgSp *s, const MgStateExchange *x, int use_din) {
    size_t n = 0;
    for (int i = 0; i < x->n; i++)
        if (use_din ? x->din[i] != NULL : x->dout[i] != NULL) n += (size_t)x->numel[i] * s->ss;
    return n;
}

static void h_dget(void *ctx, const MgStateExchange *x) {
    MgSp *s = ctx;
    const double t0 = mg_now();
    const MgBackend *be = s->be;
    const size_t bytes = grad_bytes(s, x, 0);
    if (s->t->rank == s->t->size - 1) { /* the last slice: nothing after it */
        for (int i = 0; i < x->n; i++)
            if (x->dout[i]) be->memset0(be, x->dout[i], (size_t)x->numel[i] * s->ss);
    } else {
        s->tmp = grow(s->tmp, &s->tmp_cap, bytes);
        mg_tp_recv(s->t, s->t->rank + 1, TAG_BWD + x->group, s->tmp, bytes);
        size_t off = 0;
        for (int i = 0; i < x->n; i++) {
            if (!x->dout[i]) continue;
            be->to_device(be, x->dout[i], (char *)s->tmp + off, (size_t)x->numel[i] * s->ss);
            off += (size_t)x->numel[i] * s->ss;
        }
    }
    s->st.bwd_seconds += mg_now() - t0;
}

static void h_ddone(void *ctx, const MgStateExchange *x) {
    MgSp *s = ctx;
    if (s->scan_backward) return; /* the scan carried it */
    if (s->t->rank == 0) return; /* the first slice's incoming state is the fresh one */
    const double t0 = mg_now();
    const MgBackend *be = s->be;
    const size_t bytes = grad_bytes(s, x, 1);
    char *buf = mg_malloc(bytes);
    size_t off = 0;
    for (int i = 0; i < x->n; i++) {
        if (!x->din[i]) continue;
        be->to_host(be, buf + off, x->din[i], (size_t)x->numel[i] * s->ss);
        off += (size_t)x->numel[i] * s->ss;
    }
    if (s->n_pend == s->cap_pend) {
        s->cap_pend = s->cap_pend ? 2 * s->cap_pend : 16;
        s->pend = mg_realloc(s->pend, (size_t)s->cap_pend * sizeof *s->pend);
    }
    s->pend[s->n_pend++] = (Pending){mg_tp_isend(s->t, s->t->rank - 1, TAG_BWD + x->group, buf, bytes), buf};
    s->st.bwd_messages++;
    s->st.bytes_sent += (int64_t)bytes;
    s->st.bwd_seconds += mg_now() - t0;
}

/* ---- attention across ranks -------------------------------------------------------------------------------- */
static void attn_group(MgSp *s, const MgAttnExchange *x) {
    const int k = (int)(x->chunk / x->L);
    MG_CHECK(x->chunk % x->L == 0 && s->t->size % k == 0,
             "sequence parallel: a chunk of %lld tokens over slices of %d does not span whole ranks",
             (long long)x->chunk, x->L);
    if (s->cg && s->cg_k == k) return;
    if (s->cg) mg_tp_free(s->cg);
    s->cg = mg_tp_split(s->t, s->t->rank / k, s->t->rank); /* collective over the SP group */
    s->cg_k = k;
}

static void ensure_backend(const MgBackend *be, void **p, size_t *have, size_t need) {
    if (*p && *have >= need) return;
    if (*p) be->free(be, *p);
    *p = be->alloc(be, need);
    *have = need;
}

/* Gather this chunk's slices of one tensor (B x L x H x D per rank) and lay the first j + 1 of them out as
 * B x (j + 1) L x H x D in dst (backend memory). */
static void gather_ctx(MgSp *s, const MgAttnExchange *x, const void *local, int D, void *dst) {
    const MgBackend *be = s->be;
    const size_t es = mg_dtype_size(be->dtype), row = (size_t)x->L * x->H * D * es;
    const size_t slice = (size_t)x->B * row;
    const int k = s->cg_k, j = s->cg->rank;
    s->h_local = grow(s->h_local, &s->h_local_cap, slice);
    s->h_all = grow(s->h_all, &s->h_all_cap, slice * (size_t)k);
    s->h_ctx = grow(s->h_ctx, &s->h_ctx_cap, slice * (size_t)(j + 1));
    be->to_host(be, s->h_local, local, slice);
    mg_tp_all_gather(s->cg, s->h_local, s->h_all, slice);
    for (int b = 0; b < x->B; b++)
        for (int r = 0; r <= j; r++)
            memcpy((char *)s->h_ctx + ((size_t)b * (j + 1) + (size_t)r) * row, (char *)s->h_all + (size_t)r * slice + (size_t)b * row,
                   row);
    be->to_device(be, dst, s->h_ctx, slice * (size_t)(j + 1));
    s->st.bytes_sent += (int64_t)slice;
}

static void h_attn_kv(void *ctx, MgAttnExchange *x) {
    MgSp *s = ctx;
    const double t0 = mg_now();
    attn_group(s, x);
    if (x->layer >= s->n_ctx) {
        const int n = x->layer + 1;
        s->kctx = mg_realloc(s->kctx, sizeof(void *) * (size_t)n);
        s->vctx = mg_realloc(s->vctx, sizeof(void *) * (size_t)n);
        s->ctx_bytes = mg_realloc(s->ctx_bytes, sizeof(size_t) * (size_t)(2 * n));
        for (int i = s->n_ctx; i < n; i++) {
            s->kctx[i] = s->vctx[i] = NULL;
            s->ctx_bytes[2 * i] = s->ctx_bytes[2 * i + 1] = 0;
        }
        s->n_ctx = n;
    }
    const size_t es = mg_dtype_size(s->be->dtype), tok = (size_t)x->B * (size_t)x->chunk * x->H;
    ensure_backend(s->be, &s->kctx[x->layer], &s->ctx_bytes[2 * x->layer], tok * x->Dqk * es);
    ensure_backend(s->be, &s->vctx[x->layer], &s->ctx_bytes[2 * x->layer + 1], tok * x->Dv * es);
    gather_ctx(s, x, x->k, x->Dqk, s->kctx[x->layer]);
    gather_ctx(s, x, x->v, x->Dv, s->vctx[x->layer]);
    x->kctx = s->kctx[x->layer];
    x->vctx = s->vctx[x->layer];
    x->Lk = (s->cg->rank + 1) * x->L;
    s->st.fwd_seconds += mg_now() - t0;
}

/* dst (this slice's, B x L x H x D) = the sum over the chunk's ranks of their gradient for this slice:
 * each rank's context gradient (B x (j + 1) L x H x D) is cut into per-slice blocks, the blocks after it
 * are zero, and a reduce-scatter over the chunk's ranks sums block r onto rank r. */
static void reduce_ctx_grad(MgSp *s, const MgAttnExchange *x, const void *dctx, int D, void *dst) {
    const MgBackend *be = s->be;
    const size_t es = mg_dtype_size(be->dtype), row = (size_t)x->L * x->H * D * es;
    const size_t slice = (size_t)x->B * row;
    const int k = s->cg_k, j = s->cg->rank;
    s->h_ctx = grow(s->h_ctx, &s->h_ctx_cap, slice * (size_t)(j + 1));
    s->h_all = grow(s->h_all, &s->h_all_cap, slice * (size_t)k);
    be->to_host(be, s->h_ctx, dctx, slice * (size_t)(j + 1));
    memset(s->h_all, 0, slice * (size_t)k);
    for (int b = 0; b < x->B; b++)
        for (int r = 0; r <= j; r++)
            memcpy((char *)s->h_all + (size_t)r * slice + (size_t)b * row, (char *)s->h_ctx + ((size_t)b * (j + 1) + (size_t)r) * row,
                   row);
    mg_reduce_scatter_sum(s->cg, be->dtype, s->h_all, (int64_t)(slice / es) * k, s->h_all);
    be->to_device(be, dst, s->h_all, slice);
    s->st.bytes_sent += (int64_t)(slice * (size_t)(k - 1));
}

static void h_attn_kv_grad(void *ctx, MgAttnExchange *x, int done) {
    MgSp *s = ctx;
    const double t0 = mg_now();
    MG_CHECK(s->cg && x->layer < s->n_ctx && s->kctx[x->layer],
             "sequence parallel: attention backward of layer %d before its forward", x->layer);
    const size_t es = mg_dtype_size(s->be->dtype), tok = (size_t)x->B * (size_t)x->chunk * x->H;
    if (!done) {
        const size_t need = tok * (size_t)MG_MAX(x->Dqk, x->Dv) * es;
        size_t have = s->dctx_bytes;
        ensure_backend(s->be, &s->dkctx, &have, need);
        have = s->dctx_bytes;
        ensure_backend(s->be, &s->dvctx, &have, need);
        s->dctx_bytes = MG_MAX(s->dctx_bytes, need);
        x->kctx = s->kctx[x->layer];
        x->vctx = s->vctx[x->layer];
        x->dkctx = s->dkctx;
        x->dvctx = s->dvctx;
        x->Lk = (s->cg->rank + 1) * x->L;
    } else {
        reduce_ctx_grad(s, x, s->dkctx, x->Dqk, x->dk);
        reduce_ctx_grad(s, x, s->dvctx, x->Dv, x->dv);
    }
    s->st.bwd_seconds += mg_now() - t0;
}

/* ---- the all-to-all (Ulysses) path ---------------------------------------------------------------------------- */
enum { TAG_A2A = 3100 };

int mg_sp_attention_parse(const char *name, MgSpAttn *out) {
    if (!strcmp(name, "auto")) *out = MG_SP_ATTN_AUTO;
    else if (!strcmp(name, "gather")) *out = MG_SP_ATTN_GATHER;
    else if (!strcmp(name, "ring")) *out = MG_SP_ATTN_RING;
    else if (!strcmp(name, "alltoall")) *out = MG_SP_ATTN_ALLTOALL;
    else return -1;
    return 0;
}

void mg_sp_set_attention(MgSp *s, MgSpAttn mode) { s->attn_mode = mode; }

static int use_alltoall(MgSp *s, const MgAttnExchange *x) {
    const int k = (int)(x->chunk / x->L);
    if (s->attn_mode == MG_SP_ATTN_GATHER || s->attn_mode == MG_SP_ATTN_RING) return 0;
    if (x->H % k == 0) return 1;
    if (s->attn_mode == MG_SP_ATTN_ALLTOALL)
        mg_fatal("sp_attention alltoall needs the %d ranks of a chunk to divide the %d attention heads: use "
                 "sp_attention gather (or auto), or another sp",
                 k, x->H);
    return 0;
}

/* seq -> heads: this slice's B x L x H x D (backend) becomes the chunk's B x (k L) x H/k x D for this
 * rank's heads (backend). heads -> seq: the reverse. Staged through host memory, one message per peer. */
static void alltoall(MgSp *s, const MgAttnExchange *x, int D, const void *src, void *dst, int to_heads) {
    const MgBackend *be = s->be;
    const int k = s->cg_k, j = s->cg->rank, L = x->L, H = x->H, Hk = H / k;
    const size_t es = mg_dtype_size(be->dtype), piece = (size_t)x->B * L * Hk * D * es; /* one peer's share */
    const size_t total = piece * (size_t)k;
    s->h_local = grow(s->h_local, &s->h_local_cap, total); /* packed send buffers, peer after peer */
    s->h_all = grow(s->h_all, &s->h_all_cap, total);       /* received, peer after peer */
    s->h_ctx = grow(s->h_ctx, &s->h_ctx_cap, total);       /* staging of src / dst */
    char *send = s->h_local, *recv = s->h_all, *stage = s->h_ctx;
    be->to_host(be, stage, src, total);
    const size_t hrow = (size_t)Hk * D * es;
    for (int r = 0; r < k; r++) /* the part for peer r */
        for (int b = 0; b < x->B; b++)
            for (int t = 0; t < L; t++) {
                char *o = send + (size_t)r * piece + ((size_t)b * L + t) * hrow;
                if (to_heads) /* my slice's token t, heads of r */
                    memcpy(o, stage + (((size_t)b * L + t) * H + (size_t)r * Hk) * D * es, hrow);
                else /* my heads of slice r's token t */
                    memcpy(o, stage + (((size_t)b * k * L + (size_t)r * L + t) * Hk) * D * es, hrow);
            }
    MgTpRequest *req[2 * 1024];
    int n = 0;
    for (int r = 0; r < k; r++) {
        if (r == j) {
            memcpy(recv + (size_t)r * piece, send + (size_t)r * piece, piece);
            continue;
        }
        req[n++] = mg_tp_irecv(s->cg, r, TAG_A2A, recv + (size_t)r * piece, piece);
        req[n++] = mg_tp_isend(s->cg, r, TAG_A2A, send + (size_t)r * piece, piece);
    }
    for (int i = 0; i < n; i++) mg_tp_wait(s->cg, req[i]);
    for (int r = 0; r < k; r++) /* what peer r sent */
        for (int b = 0; b < x->B; b++)
            for (int t = 0; t < L; t++) {
                const char *in = recv + (size_t)r * piece + ((size_t)b * L + t) * hrow;
                if (to_heads) /* slice r's token t, my heads */
                    memcpy(stage + (((size_t)b * k * L + (size_t)r * L + t) * Hk) * D * es, in, hrow);
                else /* my token t, r's heads */
                    memcpy(stage + (((size_t)b * L + t) * H + (size_t)r * Hk) * D * es, in, hrow);
            }
    be->to_device(be, dst, stage, total);
    s->st.bytes_sent += (int64_t)(piece * (size_t)(k - 1));
}

static void ensure_layer_heads(MgSp *s, const MgAttnExchange *x) {
    if (x->layer >= s->n_heads_layers) {
        const int n = x->layer + 1;
        void ***arr[5] = {&s->hq, &s->hk, &s->hv, &s->ho, &s->hlse};
        for (int a = 0; a < 5; a++) {
            *arr[a] = mg_realloc(*arr[a], sizeof(void *) * (size_t)n);
            for (int i = s->n_heads_layers; i < n; i++) (*arr[a])[i] = NULL;
        }
        s->h_bytes = mg_realloc(s->h_bytes, sizeof(size_t) * (size_t)(5 * n));
        for (int i = 5 * s->n_heads_layers; i < 5 * n; i++) s->h_bytes[i] = 0;
        s->n_heads_layers = n;
    }
    const size_t es = mg_dtype_size(s->be->dtype), tok = (size_t)x->B * (size_t)x->chunk * (x->H / s->cg_k);
    const size_t need[5] = {tok * x->Dqk * es, tok * x->Dqk * es, tok * x->Dv * es, tok * x->Dv * es,
                            (size_t)x->B * (x->H / s->cg_k) * (size_t)x->chunk * s->ss};
    void **bufs[5] = {&s->hq[x->layer], &s->hk[x->layer], &s->hv[x->layer], &s->ho[x->layer], &s->hlse[x->layer]};
    for (int a = 0; a < 5; a++) ensure_backend(s->be, bufs[a], &s->h_bytes[5 * x->layer + a], need[a]);
}

/* The op's arguments for this rank's heads over the whole chunk. */
static MgAttentionArgs heads_args(const MgSp *s, const MgAttnExchange *x, const MgAttentionArgs *at) {
    MgAttentionArgs a = *at;
    a.H = x->H / s->cg_k;
    a.Lq = a.Lk = (int)x->chunk;
    a.q = s->hq[x->layer];
    a.k = s->hk[x->layer];
    a.v = s->hv[x->layer];
    a.o = s->ho[x->layer];
    a.saved_lse = s->hlse[x->layer];
    a.drop_chunk_len = 0; /* the whole chunk */
    a.drop_heads = x->H;
    a.drop_head0 = (int64_t)s->cg->rank * a.H;
    return a;
}


/* ---- the ring path ------------------------------------------------------------------------------------------- */
/* The k ranks of a chunk hold its query, key and value blocks 0 .. k - 1 in order. Causally, block j's
 * queries see key blocks 0 .. j, so of the ring only the forward edges carry anything: key/value blocks
 * travel j -> j + 1, each rank forwarding what it receives before attending to it (a pipeline; the
 * closing edge k - 1 -> 0 would carry blocks nobody needs). Rank j attends to its own block, then to
 * j - 1, ..., 0, merging the partial softmaxes (attention_merge) into the output and the log-sum-exp.
 * Backward: the blocks travel the same way again; rank j adds each block's share to dq, and the key and
 * value gradients of block b travel back k - 1 -> ... -> b, each rank adding its share (a fixed order,
 * so every run gives the same bits). Memory: two blocks in flight, nothing kept per layer beyond the
 * output and log-sum-exp the op keeps anyway. */
enum { TAG_RING_KV = 3200, TAG_RING_DKV = 3300, RING_MAX_K = 1000 };

static void ring_buffers(MgSp *s, const MgAttnExchange *x, int backward) {
    const size_t es = mg_dtype_size(s->be->dtype), tok = (size_t)x->B * x->L * x->H;
    const size_t nk = tok * x->Dqk * es, nv = tok * x->Dv * es, nl = tok * s->ss;
    const size_t need[8] = {nk, nv, nv, nl, backward ? nk : 0, backward ? nv : 0, backward ? MG_MAX(nk, nv) : 0, nl};
    void **b[8] = {&s->rk, &s->rv, &s->ro, &s->rlse, &s->rdk, &s->rdv, &s->rtmp, &s->rlse_acc};
    for (int i = 0; i < 8; i++)
        if (need[i]) ensure_backend(s->be, b[i], &s->r_bytes[i], need[i]);
    for (int i = 0; i < (backward ? 5 : 2); i++) s->rh[i] = grow(s->rh[i], &s->rh_cap[i], nk + nv);
}

/* Host message <-> backend k and v (or their gradients). */
static void ring_pack(MgSp *s, void *msg, const void *k, const void *v, size_t nk, size_t nv) {
    s->be->to_host(s->be, msg, k, nk);
    s->be->to_host(s->be, (char *)msg + nk, v, nv);
}
static void ring_unpack(MgSp *s, const void *msg, void *k, void *v, size_t nk, size_t nv) {
    s->be->to_device(s->be, k, msg, nk);
    s->be->to_device(s->be, v, (const char *)msg + nk, nv);
}

/* dk += the message's first nk bytes, dv += the next nv (a received key/value gradient, staged through
 * s->rtmp). */
static void ring_add(MgSp *s, const void *msg, void *dk, void *dv, size_t nk, size_t nv) {
    const MgBackend *be = s->be;
    const size_t es = mg_dtype_size(be->dtype);
    be->to_device(be, s->rtmp, msg, nk);
    be->axpy(be, (int64_t)(nk / es), 1.0, s->rtmp, dk);
    be->to_device(be, s->rtmp, (const char *)msg + nk, nv);
    be->axpy(be, (int64_t)(nv / es), 1.0, s->rtmp, dv);
}

static MgAttentionArgs ring_args(const MgSp *s, const MgAttnExchange *x, const MgAttentionArgs *at) {
    MgAttentionArgs a = *at;
    a.block = 1;
    a.q_row0 = (int64_t)s->cg->rank * x->L;
    a.k_row0 = a.q_row0;
    a.drop_chunk_len = a.drop_p > 0 ? x->chunk : 0;
    return a;
}

/* The key/value pipeline of a pass (two host buffers: the receive of the next block is posted while the
 * current one is in use and forwarded).
 *   contiguous  rank j sends its own block to j + 1, then receives blocks j - 1 .. 0 from j - 1 in turn,
 *               forwarding each to j + 1 before it is used (n = j steps; the last rank forwards nothing)
 *   zigzag      the whole ring: rank j sends its own pair of blocks to j + 1 (mod k) and receives those of
 *               j - 1, j - 2, ... (mod k) from j - 1 in turn, forwarding all but the last (n = k - 1) */
typedef struct {
    MgTpRequest *sreq, *rreq;
    size_t nk, nv, msg;
    int to, from, n, fwd_last;
} RingPipe;

static RingPipe ring_start(MgSp *s, const MgAttnExchange *x, const void *k, const void *v, int zigzag) {
    const size_t es = mg_dtype_size(s->be->dtype), tok = (size_t)x->B * x->L * x->H;
    const int j = s->cg->rank, K = s->cg_k;
    RingPipe p = {.nk = tok * x->Dqk * es, .nv = tok * x->Dv * es};
    p.msg = p.nk + p.nv;
    if (zigzag) {
        p.to = (j + 1) % K;
        p.from = (j - 1 + K) % K;
        p.n = K - 1;
    } else {
        p.to = j + 1 < K ? j + 1 : -1;
        p.from = j - 1;
        p.n = j;
        p.fwd_last = 1;
    }
    if (p.to >= 0) {
        ring_pack(s, s->rh[0], k, v, p.nk, p.nv);
        p.sreq = mg_tp_isend(s->cg, p.to, TAG_RING_KV, s->rh[0], p.msg);
        s->st.bytes_sent += (int64_t)p.msg;
    }
    if (p.n > 0) p.rreq = mg_tp_irecv(s->cg, p.from, TAG_RING_KV, s->rh[1], p.msg);
    return p;
}

/* Step st (1 .. n): the next block into s->rk, s->rv, forwarded on. */
static void ring_next(MgSp *s, RingPipe *p, int st) {
    const int cur = st % 2;
    mg_tp_wait(s->cg, p->rreq);
    p->rreq = NULL;
    if (p->to >= 0 && (st < p->n || p->fwd_last)) {
        mg_tp_wait(s->cg, p->sreq); /* the other buffer is free again */
        p->sreq = mg_tp_isend(s->cg, p->to, TAG_RING_KV, s->rh[cur], p->msg);
        s->st.bytes_sent += (int64_t)p->msg;
    }
    if (st < p->n) p->rreq = mg_tp_irecv(s->cg, p->from, TAG_RING_KV, s->rh[1 - cur], p->msg);
    ring_unpack(s, s->rh[cur], s->rk, s->rv, p->nk, p->nv);
}

static void ring_end(MgSp *s, RingPipe *p) {
    if (p->sreq) mg_tp_wait(s->cg, p->sreq);
    p->sreq = NULL;
}

static void ring_forward(MgSp *s, const MgAttnExchange *x, const MgAttentionArgs *at) {
    const MgBackend *be = s->be;
    const int k = s->cg_k, j = s->cg->rank;
    MG_CHECK(k <= RING_MAX_K, "sequence parallel: ring attention over %d ranks of a chunk (at most %d)", k, RING_MAX_K);
    ring_buffers(s, x, 0);
    double tc = mg_now();
    RingPipe p = ring_start(s, x, at->k, at->v, 0);
    s->st.fwd_seconds += mg_now() - tc;
    MgAttentionArgs a = ring_args(s, x, at);
    void *lse = at->saved_lse ? at->saved_lse : s->rlse_acc; /* the merge needs it even without a backward */
    a.saved_lse = lse;
    be->attention_forward(be, &a); /* own block: causal */
    for (int st = 1; st <= j; st++) {
        tc = mg_now();
        ring_next(s, &p, st); /* block j - st */
        s->st.fwd_seconds += mg_now() - tc;
        a.k = s->rk;
        a.v = s->rv;
        a.k_row0 = (int64_t)(j - st) * x->L;
        a.o = s->ro;
        a.saved_lse = s->rlse;
        be->attention_forward(be, &a);
        s->st.ring_blocks++;
        MgAttnMergeArgs m = {.B = x->B, .Lq = x->L, .H = x->H, .Dv = x->Dv, .o = at->o, .lse = lse, .o_b = s->ro,
                             .lse_b = s->rlse};
        be->attention_merge(be, &m);
    }
    tc = mg_now();
    ring_end(s, &p);
    s->st.fwd_seconds += mg_now() - tc;
}

static void ring_backward(MgSp *s, const MgAttnExchange *x, const MgAttentionArgs *at) {
    const MgBackend *be = s->be;
    const int k = s->cg_k, j = s->cg->rank;
    ring_buffers(s, x, 1);
    MG_CHECK(at->saved_lse && at->o && at->dq && at->dk && at->dv,
             "sequence parallel: ring attention backward needs the forward's lse and output and every gradient");
    double tc = mg_now();
    RingPipe p = ring_start(s, x, at->k, at->v, 0);
    const size_t nk = p.nk, nv = p.nv, msg = p.msg;
    MgTpRequest *own = NULL, *dsend[2] = {NULL, NULL};
    if (j + 1 < k) own = mg_tp_irecv(s->cg, j + 1, TAG_RING_DKV + j, s->rh[4], msg); /* the later ranks' share of my block */
    s->st.bwd_seconds += mg_now() - tc;
    MgAttentionArgs a = ring_args(s, x, at);
    be->attention_backward(be, &a); /* own block: dq, dk, dv (+= when at->accumulate) */
    a.dk = s->rdk;
    a.dv = s->rdv;
    a.accumulate = 1; /* dq sums over the blocks; rdk and rdv are zeroed per block */
    for (int st = 1; st <= j; st++) {
        const int cur = st % 2, blk = j - st;
        tc = mg_now();
        ring_next(s, &p, st);
        s->st.bwd_seconds += mg_now() - tc;
        a.k = s->rk;
        a.v = s->rv;
        a.k_row0 = (int64_t)blk * x->L;
        be->memset0(be, s->rdk, nk);
        be->memset0(be, s->rdv, nv);
        be->attention_backward(be, &a);
        s->st.ring_blocks++;
        tc = mg_now();
        if (dsend[cur]) mg_tp_wait(s->cg, dsend[cur]); /* its buffer is reused below */
        dsend[cur] = NULL;
        if (j + 1 < k) { /* add the share of ranks j + 1 .. k - 1 */
            mg_tp_recv(s->cg, j + 1, TAG_RING_DKV + blk, s->rh[2 + cur], msg);
            ring_add(s, s->rh[2 + cur], s->rdk, s->rdv, nk, nv);
        }
        ring_pack(s, s->rh[2 + cur], s->rdk, s->rdv, nk, nv);
        dsend[cur] = mg_tp_isend(s->cg, j - 1, TAG_RING_DKV + blk, s->rh[2 + cur], msg);
        s->st.bytes_sent += (int64_t)msg;
        s->st.bwd_seconds += mg_now() - tc;
    }
    tc = mg_now();
    if (own) { /* my block's key and value gradients from the later ranks */
        mg_tp_wait(s->cg, own);
        ring_add(s, s->rh[4], at->dk, at->dv, nk, nv);
    }
    ring_end(s, &p);
    for (int i = 0; i < 2; i++)
        if (dsend[i]) mg_tp_wait(s->cg, dsend[i]);
    s->st.bwd_seconds += mg_now() - tc;
}


/* ---- the zigzag ring (two-piece passes, MgAttnExchange.pos1 > 0: an architecture without carried state) ----
 * Rank r of the k ranks holds blocks r and 2k - 1 - r of h = L / 2 rows (its pass: block r, then block
 * 2k - 1 - r). Its query half qh is global block qb = r or 2k - 1 - r; key half kh of rank s is block s or
 * 2k - 1 - s. A query block sees an earlier key block whole and its own block causally, nothing later, so
 * every rank attends to 2 diagonal blocks and 2k - 1 whole ones: the work is balanced. The key/value pairs
 * travel the whole ring (k - 1 steps); in the backward their gradients travel with them, the rank before
 * the owner handing them back to the owner at the last step. */
enum { TAG_ZZ_DKV = TAG_RING_DKV + RING_MAX_K };

static int64_t zz_block(int r, int K, int half) { return half ? 2 * (int64_t)K - 1 - r : r; }

/* Queries of half qh (this rank) against key half kh of kt, vt (a whole pass, B x L x H x D) of rank src,
 * one block-mode call per sequence. Forward (dk == NULL): merged into at->o and the lse accumulator
 * (B x 2 x H x h), or written there when first. Backward: dq += (at->dq), dk, dv += (this half's rows). */
static void zz_attend(MgSp *s, const MgAttnExchange *x, const MgAttentionArgs *at, int qh, int kh, int src,
                      const void *kt, const void *vt, int first, void *dk, void *dv) {
    const MgBackend *be = s->be;
    const int K = s->cg_k, r = s->cg->rank, L = x->L, h = L / 2, H = x->H;
    const size_t es = mg_dtype_size(be->dtype), ss = s->ss;
    for (int b = 0; b < x->B; b++) {
        MgAttentionArgs a = *at;
        a.B = 1;
        a.Lq = a.Lk = h;
        a.block = 1;
        a.q_row0 = zz_block(r, K, qh) * h;
        a.k_row0 = zz_block(src, K, kh) * h;
        a.drop_chunk_len = a.drop_p > 0 ? x->chunk : 0;
        a.drop_seq0 = at->drop_seq0 + (int64_t)b * (at->drop_seq_stride > 0 ? at->drop_seq_stride : 1);
        const size_t qrow = (size_t)b * L + (size_t)qh * h, krow = (size_t)b * L + (size_t)kh * h;
        a.q = (const char *)at->q + qrow * H * x->Dqk * es;
        a.k = (const char *)kt + krow * H * x->Dqk * es;
        a.v = (const char *)vt + krow * H * x->Dv * es;
        void *o = (char *)at->o + qrow * H * x->Dv * es;
        void *lse = (char *)s->rlse_acc + ((size_t)b * 2 + (size_t)qh) * H * h * ss;
        if (!dk) {
            a.o = first ? o : s->ro;
            a.saved_lse = first ? lse : s->rlse;
            be->attention_forward(be, &a);
            if (!first) {
                MgAttnMergeArgs m = {.B = 1, .Lq = h, .H = H, .Dv = x->Dv, .o = o, .lse = lse, .o_b = s->ro,
                                     .lse_b = s->rlse};
                be->attention_merge(be, &m);
            }
        } else {
            a.o = o;
            a.saved_lse = lse;
            a.dout = (const char *)at->dout + qrow * H * x->Dv * es;
            a.dq = (char *)at->dq + qrow * H * x->Dqk * es;
            a.dk = (char *)dk + krow * H * x->Dqk * es;
            a.dv = (char *)dv + krow * H * x->Dv * es;
            a.accumulate = 1;
            be->attention_backward(be, &a);
        }
    }
}

/* The pairs of (query half, key half) that see each other: own blocks (src == r) and another rank's. */
static void zz_pairs(MgSp *s, const MgAttnExchange *x, const MgAttentionArgs *at, int src, const void *kt,
                     const void *vt, void *dk, void *dv) {
    const int r = s->cg->rank;
    if (src == r) {
        zz_attend(s, x, at, 0, 0, r, kt, vt, 1, dk, dv); /* block r, causal */
        zz_attend(s, x, at, 1, 1, r, kt, vt, 1, dk, dv); /* block 2k-1-r, causal */
        zz_attend(s, x, at, 1, 0, r, kt, vt, 0, dk, dv); /* block 2k-1-r sees block r whole */
        return;
    }
    if (src < r) zz_attend(s, x, at, 0, 0, src, kt, vt, 0, dk, dv);
    zz_attend(s, x, at, 1, 0, src, kt, vt, 0, dk, dv);
    if (src > r) zz_attend(s, x, at, 1, 1, src, kt, vt, 0, dk, dv);
}

/* The lse accumulator (B x 2 x H x h) <-> the op's saved lse (B x H x L). */
static void zz_lse(MgSp *s, const MgAttnExchange *x, void *saved, int to_saved) {
    const int L = x->L, h = L / 2, H = x->H;
    const size_t ss = s->ss;
    for (int b = 0; b < x->B; b++)
        for (int qh = 0; qh < 2; qh++)
            for (int hh = 0; hh < H; hh++) {
                char *sv = (char *)saved + (((size_t)b * H + hh) * L + (size_t)qh * h) * ss;
                char *ac = (char *)s->rlse_acc + ((((size_t)b * 2 + qh) * H + hh) * h) * ss;
                if (to_saved) s->be->copy(s->be, sv, ac, (size_t)h * ss);
                else s->be->copy(s->be, ac, sv, (size_t)h * ss);
            }
}

static void zz_forward(MgSp *s, const MgAttnExchange *x, const MgAttentionArgs *at) {
    const int K = s->cg_k, r = s->cg->rank;
    MG_CHECK(x->L % 2 == 0, "sequence parallel: a zigzag pass of %d tokens is not two equal pieces", x->L);
    ring_buffers(s, x, 0);
    double tc = mg_now();
    RingPipe p = ring_start(s, x, at->k, at->v, 1);
    s->st.fwd_seconds += mg_now() - tc;
    zz_pairs(s, x, at, r, at->k, at->v, NULL, NULL);
    for (int st = 1; st < K; st++) {
        tc = mg_now();
        ring_next(s, &p, st);
        s->st.fwd_seconds += mg_now() - tc;
        zz_pairs(s, x, at, (r - st + K) % K, s->rk, s->rv, NULL, NULL);
        s->st.ring_blocks++;
    }
    tc = mg_now();
    ring_end(s, &p);
    s->st.fwd_seconds += mg_now() - tc;
    if (at->saved_lse) zz_lse(s, x, at->saved_lse, 1);
}

static void zz_backward(MgSp *s, const MgAttnExchange *x, const MgAttentionArgs *at) {
    const MgBackend *be = s->be;
    const int K = s->cg_k, r = s->cg->rank;
    MG_CHECK(at->saved_lse && at->o && at->dq && at->dk && at->dv,
             "sequence parallel: zigzag attention backward needs the forward's lse and output and every gradient");
    ring_buffers(s, x, 1);
    zz_lse(s, x, at->saved_lse, 0);
    double tc = mg_now();
    RingPipe p = ring_start(s, x, at->k, at->v, 1);
    s->st.bwd_seconds += mg_now() - tc;
    if (!at->accumulate) {
        be->memset0(be, at->dq, p.nk);
        be->memset0(be, at->dk, p.nk);
        be->memset0(be, at->dv, p.nv);
    }
    zz_pairs(s, x, at, r, at->k, at->v, at->dk, at->dv);
    MgTpRequest *dsend[2] = {NULL, NULL};
    for (int st = 1; st < K; st++) {
        const int cur = st % 2;
        tc = mg_now();
        ring_next(s, &p, st);
        s->st.bwd_seconds += mg_now() - tc;
        be->memset0(be, s->rdk, p.nk);
        be->memset0(be, s->rdv, p.nv);
        zz_pairs(s, x, at, (r - st + K) % K, s->rk, s->rv, s->rdk, s->rdv);
        s->st.ring_blocks++;
        tc = mg_now();
        if (dsend[cur]) mg_tp_wait(s->cg, dsend[cur]); /* its buffer is reused below */
        dsend[cur] = NULL;
        if (st >= 2) { /* the share of the ranks this pair passed before */
            mg_tp_recv(s->cg, p.from, TAG_ZZ_DKV, s->rh[4], p.msg);
            ring_add(s, s->rh[4], s->rdk, s->rdv, p.nk, p.nv);
        }
        ring_pack(s, s->rh[2 + cur], s->rdk, s->rdv, p.nk, p.nv);
        dsend[cur] = mg_tp_isend(s->cg, p.to, TAG_ZZ_DKV, s->rh[2 + cur], p.msg); /* the last goes to the owner */
        s->st.bytes_sent += (int64_t)p.msg;
        s->st.bwd_seconds += mg_now() - tc;
    }
    tc = mg_now();
    if (K > 1) { /* my pair's gradients from every other rank */
        mg_tp_recv(s->cg, p.from, TAG_ZZ_DKV, s->rh[4], p.msg);
        ring_add(s, s->rh[4], at->dk, at->dv, p.nk, p.nv);
    }
    ring_end(s, &p);
    for (int i = 0; i < 2; i++)
        if (dsend[i]) mg_tp_wait(s->cg, dsend[i]);
    s->st.bwd_seconds += mg_now() - tc;
}

static int use_ring(const MgSp *s, const MgAttnExchange *x) {
    if (s->attn_mode == MG_SP_ATTN_RING) return 1;
    /* auto: all-to-all when the heads divide (balanced, two exchanges), else the ring (O(slice) memory) */
    return s->attn_mode == MG_SP_ATTN_AUTO && x->H % (int)(x->chunk / x->L) != 0;
}

static int h_attn_run(void *ctx, const MgAttnExchange *x, const MgAttentionArgs *at) {
    MgSp *s = ctx;
    attn_group(s, x);
    if (x->pos1 > 0) { /* a two-piece pass: the zigzag layout, only the ring serves it */
        zz_forward(s, x, at);
        return 1;
    }
    if (use_ring(s, x)) {
        ring_forward(s, x, at);
        return 1;
    }
    if (!use_alltoall(s, x)) return 0;
    const double t0 = mg_now();
    ensure_layer_heads(s, x);
    alltoall(s, x, x->Dqk, at->q, s->hq[x->layer], 1);
    alltoall(s, x, x->Dqk, at->k, s->hk[x->layer], 1);
    alltoall(s, x, x->Dv, at->v, s->hv[x->layer], 1);
    s->st.fwd_seconds += mg_now() - t0;
    MgAttentionArgs a = heads_args(s, x, at);
    s->be->attention_forward(s->be, &a);
    const double t1 = mg_now();
    alltoall(s, x, x->Dv, s->ho[x->layer], at->o, 0);
    s->st.fwd_seconds += mg_now() - t1;
    return 1;
}

static int h_attn_run_backward(void *ctx, const MgAttnExchange *x, const MgAttentionArgs *at) {
    MgSp *s = ctx;
    if (s->cg && x->pos1 > 0) {
        zz_backward(s, x, at);
        return 1;
    }
    if (s->cg && use_ring(s, x)) {
        ring_backward(s, x, at);
        return 1;
    }
    if (!s->cg || !use_alltoall(s, x)) return 0;
    MG_CHECK(x->layer < s->n_heads_layers && s->hq[x->layer],
             "sequence parallel: attention backward of layer %d before its forward", x->layer);
    const double t0 = mg_now();
    const size_t es = mg_dtype_size(s->be->dtype), tok = (size_t)x->B * (size_t)x->chunk * (x->H / s->cg_k);
    void **buf[4] = {&s->hdo, &s->hdq, &s->hdk, &s->hdv};
    const int D[4] = {x->Dv, x->Dqk, x->Dqk, x->Dv};
    for (int i = 0; i < 4; i++) ensure_backend(s->be, buf[i], &s->hd_bytes[i], tok * (size_t)D[i] * es);
    alltoall(s, x, x->Dv, at->dout, s->hdo, 1);
    s->st.bwd_seconds += mg_now() - t0;
    MgAttentionArgs a = heads_args(s, x, at);
    a.dout = s->hdo;
    a.dq = s->hdq;
    a.dk = s->hdk;
    a.dv = s->hdv;
    a.accumulate = 0;
    s->be->attention_backward(s->be, &a);
    const double t1 = mg_now();
    alltoall(s, x, x->Dqk, s->hdq, at->dq, 0);
    alltoall(s, x, x->Dqk, s->hdk, at->dk, 0);
    alltoall(s, x, x->Dv, s->hdv, at->dv, 0);
    s->st.bwd_seconds += mg_now() - t1;
    return 1;
}

void mg_sp_finish(MgSp *s) {
    const double t0 = mg_now();
    for (int i = 0; i < 4; i++) mg_scan_work_flush(s->work[i]);
    for (int i = 0; i < s->n_pend; i++) {
        mg_tp_wait(s->t, s->pend[i].req);
        free(s->pend[i].buf);
    }
    s->n_pend = 0;
    s->st.bwd_seconds += mg_now() - t0;
}

/* ---- lifecycle -------------------------------------------------------------------------------------------- */
MgSp *mg_sp_create(MgTransport *sp_group, const MgBackend *be, MgScanAlgo algo, int pieces) {
    MG_CHECK(be->state_dtype == MG_F32 || be->state_dtype == MG_F64,
             "sequence parallel: state dtype %s is not supported (float32 or float64)", mg_dtype_name(be->state_dtype));
    MgSp *s = mg_calloc(1, sizeof *s);
    s->t = sp_group;
    s->be = be;
    s->algo = algo;
    s->pieces = MG_MAX(1, MG_MIN(pieces, 1024));
    s->sdt = be->state_dtype == MG_F64 ? MG_SCAN_F64 : MG_SCAN_F32;
    s->ss = mg_dtype_size(be->state_dtype);
    for (int i = 0; i < 4; i++) s->work[i] = mg_scan_work_create();
    s->hooks = (MgModelHooks){.ctx = s, .state_begin = h_begin, .state_end = h_end, .dstate_get = h_dget,
                              .dstate_done = h_ddone, .attn_kv = h_attn_kv, .attn_kv_grad = h_attn_kv_grad,
                              .attn_run = h_attn_run, .attn_run_backward = h_attn_run_backward};
    return s;
}

void mg_sp_free(MgSp *s) {
    if (!s) return;
    mg_sp_finish(s);
    for (int i = 0; i < 4; i++) mg_scan_work_free(s->work[i]);
    for (int i = 0; i < s->n_ctx; i++) {
        if (s->kctx[i]) s->be->free(s->be, s->kctx[i]);
        if (s->vctx[i]) s->be->free(s->be, s->vctx[i]);
    }
    free(s->kctx);
    free(s->vctx);
    free(s->ctx_bytes);
    if (s->dkctx) s->be->free(s->be, s->dkctx);
    if (s->dvctx) s->be->free(s->be, s->dvctx);
    for (int i = 0; i < s->n_heads_layers; i++) {
        void *b[5] = {s->hq[i], s->hk[i], s->hv[i], s->ho[i], s->hlse[i]};
        for (int a = 0; a < 5; a++)
            if (b[a]) s->be->free(s->be, b[a]);
    }
    free(s->hq);
    free(s->hk);
    free(s->hv);
    free(s->ho);
    free(s->hlse);
    free(s->h_bytes);
    void *hd[4] = {s->hdo, s->hdq, s->hdk, s->hdv};
    for (int i = 0; i < 4; i++)
        if (hd[i]) s->be->free(s->be, hd[i]);
    void *rb[8] = {s->rk, s->rv, s->ro, s->rlse, s->rdk, s->rdv, s->rtmp, s->rlse_acc};
    for (int i = 0; i < 8; i++)
        if (rb[i]) s->be->free(s->be, rb[i]);
    for (int i = 0; i < 5; i++) free(s->rh[i]);
    free(s->h_local);
    free(s->h_all);
    free(s->h_ctx);
    if (s->cg) mg_tp_free(s->cg);
    free(s->elem);
    free(s->out);
    free(s->tmp);
    free(s->param);
    free(s->pend);
    free(s);
}

const MgModelHooks *mg_sp_hooks(MgSp *s) { return &s->hooks; }
MgSpStats mg_sp_stats(const MgSp *s) { return s->st; }
MgScanAlgo mg_sp_algo(const MgSp *s) { return s->algo; }
void mg_sp_stats_reset(MgSp *s) { memset(&s->st, 0, sizeof s->st); }
