/* The exclusive state scan across sequence-parallel ranks (state_scan.h, docs/parallelism.md).
 *
 * Every algorithm folds elements in fold form with one combine function, so that bits depend only on
 * the association order: the chain, the pipelined chain and the all-gather fold all compute
 * ((init (+) s_0) (+) s_1) (+) ... left to right, exactly as the serial reference, and are bit-identical
 * to it; recursive doubling associates differently and agrees within rounding. Reverse scans run the
 * same code on the ranks in reverse order (virtual rank v = P-1-r). */
#include "state_scan.h"

/* No fused multiply-add here (the Makefile compiles parallel/ with -ffp-contract=off and without
 * vectorisation: GCC 12 ignores the pragma below and emits vfmaddsub for the vectorised complex
 * products even with -ffp-contract=off): the pipelined chain combines slices of the channels, which
 * would otherwise be rounded differently in the vector loop and the scalar tail. With every operation
 * rounded on its own, the bits do not depend on how a range is split. */
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

#include <stdlib.h>
#include <string.h>

const char *mg_scan_algo_name(MgScanAlgo a) {
    switch (a) {
    case MG_SCAN_CHAIN: return "chain";
    case MG_SCAN_PIPELINED: return "pipelined";
    case MG_SCAN_ALLGATHER: return "allgather";
    case MG_SCAN_RECURSIVE_DOUBLING: return "recursive-doubling";
    }
    return "?";
}

const char *mg_scan_op_name(MgScanOp op) {
    return op == MG_SCAN_WELFORD ? "welford" : op == MG_SCAN_CEMA ? "cema" : op == MG_SCAN_NORM_ADJOINT ? "norm-adjoint" : "?";
}

int mg_scan_elem_scalars(MgScanOp op) { return op == MG_SCAN_WELFORD ? 3 : 4; }

static size_t scalar_bytes(const MgScanSpec *s) { return s->dtype == MG_SCAN_F64 ? sizeof(double) : sizeof(float); }

static size_t elem_bytes(const MgScanSpec *s) { return (size_t)mg_scan_elem_scalars(s->op) * scalar_bytes(s); }

size_t mg_scan_bytes(const MgScanSpec *s) { return (size_t)s->channels * elem_bytes(s); }

int mg_scan_check(const MgScanSpec *s, char *err, size_t errlen) {
    if ((int)s->op < 0 || (int)s->op >= MG_SCAN_N_OPS) return mg_errf(err, errlen, "state scan: unknown op %d", (int)s->op);
    if (s->dtype != MG_SCAN_F32 && s->dtype != MG_SCAN_F64)
        return mg_errf(err, errlen, "state scan: unknown dtype %d", (int)s->dtype);
    if (s->dir != MG_SCAN_FORWARD && s->dir != MG_SCAN_REVERSE)
        return mg_errf(err, errlen, "state scan: unknown direction %d", (int)s->dir);
    if ((int)s->algo < 0 || (int)s->algo >= MG_SCAN_N_ALGOS)
        return mg_errf(err, errlen, "state scan: unknown algorithm %d", (int)s->algo);
    if (s->channels < 1) return mg_errf(err, errlen, "state scan: channels=%lld must be >= 1", (long long)s->channels);
    if (s->algo == MG_SCAN_PIPELINED && (s->pieces < 1 || s->pieces > 1024 || s->pieces > s->channels))
        return mg_errf(err, errlen, "state scan: pieces=%d must be 1..min(channels=%lld, 1024)", s->pieces,
                       (long long)s->channels);
    if (s->tag < 0 || s->tag > MG_TP_TAG_USER_MAX - 1024)
        return mg_errf(err, errlen, "state scan: tag=%d must be 0..%d", s->tag, MG_TP_TAG_USER_MAX - 1024);
    return 0;
}

/* ---- the operators ---------------------------------------------------------------------------------- */
#define DEFINE_COMBINE(T, SUF)                                                                              \
    static void welford_##SUF(const T *x, const T *y, T *o, int64_t c0, int64_t c1) {                      \
        for (int64_t c = c0; c < c1; c++) {                                                                 \
            T na = x[3 * c], ma = x[3 * c + 1], Ma = x[3 * c + 2];                                          \
            T nb = y[3 * c], mb = y[3 * c + 1], Mb = y[3 * c + 2];                                          \
            T n = na + nb, mean, m2;                                                                        \
            if (nb == 0) {                                                                                  \
                n = na, mean = ma, m2 = Ma;                                                                 \
            } else if (na == 0) {                                                                           \
                n = nb, mean = mb, m2 = Mb;                                                                 \
            } else {                                                                                        \
                T d = mb - ma;                                                                              \
                mean = ma + d * (nb / n);                                                                   \
                m2 = (Ma + Mb) + d * d * (na * nb / n);                                                     \
            }                                                                                               \
            o[3 * c] = n, o[3 * c + 1] = mean, o[3 * c + 2] = m2;                                           \
        }                                                                                                   \
    }                                                                                                       \
    /* (a1, b1) then (a2, b2): h -> a2*(a1*h + b1) + b2 */                                                  \
    static void cema_##SUF(const T *x, const T *y, T *o, int64_t c0, int64_t c1) {                         \
        for (int64_t c = c0; c < c1; c++) {                                                                 \
            T a1r = x[4 * c], a1i = x[4 * c + 1], b1r = x[4 * c + 2], b1i = x[4 * c + 3];                   \
            T a2r = y[4 * c], a2i = y[4 * c + 1], b2r = y[4 * c + 2], b2i = y[4 * c + 3];                   \
            o[4 * c] = a2r * a1r - a2i * a1i;                                                               \
            o[4 * c + 1] = a2r * a1i + a2i * a1r;                                                           \
            o[4 * c + 2] = (a2r * b1r - a2i * b1i) + b2r;                                                   \
            o[4 * c + 3] = (a2r * b1i + a2i * b1r) + b2i;                                                   \
        }                                                                                                   \
    }                                                                                                       \
    /* g -> A1 g + c1 then A2: A2 A1 g + (A2 c1 + c2), A = [[a, b], [0, a]] */                             \
    static void normadj_##SUF(const T *x, const T *y, T *o, int64_t c0, int64_t c1) {                      \
        for (int64_t c = c0; c < c1; c++) {                                                                 \
            T a1 = x[4 * c], b1 = x[4 * c + 1], m1 = x[4 * c + 2], v1 = x[4 * c + 3];                       \
            T a2 = y[4 * c], b2 = y[4 * c + 1], m2 = y[4 * c + 2], v2 = y[4 * c + 3];                       \
            o[4 * c] = a2 * a1;                                                                             \
            o[4 * c + 1] = a2 * b1 + b2 * a1;                                                               \
            o[4 * c + 2] = (a2 * m1 + b2 * v1) + m2;                                                        \
            o[4 * c + 3] = a2 * v1 + v2;                                                                    \
        }                                                                                                   \
    }
DEFINE_COMBINE(float, f32)
DEFINE_COMBINE(double, f64)

void mg_scan_combine(const MgScanSpec *s, const void *first, const void *second, void *out, int64_t c0,
                     int64_t c1) {
    if (s->dtype == MG_SCAN_F64) {
        if (s->op == MG_SCAN_WELFORD)
            welford_f64(first, second, out, c0, c1);
        else if (s->op == MG_SCAN_CEMA)
            cema_f64(first, second, out, c0, c1);
        else
            normadj_f64(first, second, out, c0, c1);
    } else {
        if (s->op == MG_SCAN_WELFORD)
            welford_f32(first, second, out, c0, c1);
        else if (s->op == MG_SCAN_CEMA)
            cema_f32(first, second, out, c0, c1);
        else
            normadj_f32(first, second, out, c0, c1);
    }
}

void mg_scan_to_fold_form(const MgScanSpec *s, const void *src, void *dst) {
    memmove(dst, src, mg_scan_bytes(s));
    if (s->op != MG_SCAN_CEMA || s->dir != MG_SCAN_REVERSE) return;
    for (int64_t c = 0; c < s->channels; c++) {
        if (s->dtype == MG_SCAN_F64)
            ((double *)dst)[4 * c + 1] = -((double *)dst)[4 * c + 1];
        else
            ((float *)dst)[4 * c + 1] = -((float *)dst)[4 * c + 1];
    }
}

void mg_scan_identity(const MgScanSpec *s, void *out) {
    memset(out, 0, mg_scan_bytes(s)); /* Welford: count 0; CEMA, norm adjoint: b = 0, c = 0 */
    if (s->op == MG_SCAN_WELFORD) return;
    for (int64_t c = 0; c < s->channels; c++) {
        if (s->dtype == MG_SCAN_F64)
            ((double *)out)[4 * c] = 1.0;
        else
            ((float *)out)[4 * c] = 1.0f;
    }
}

void mg_scan_cema_apply(int64_t C, const double *e, const double *h0, double *h) {
    for (int64_t c = 0; c < C; c++) {
        double ar = e[4 * c], ai = e[4 * c + 1], hr = h0 ? h0[2 * c] : 0, hi = h0 ? h0[2 * c + 1] : 0;
        h[2 * c] = (ar * hr - ai * hi) + e[4 * c + 2];
        h[2 * c + 1] = (ar * hi + ai * hr) + e[4 * c + 3];
    }
}

void mg_scan_cema_adjoint_apply(int64_t C, const double *own, const double *g_out, double *g_in) {
    for (int64_t c = 0; c < C; c++) {
        double ar = own[4 * c], ai = -own[4 * c + 1], gr = g_out ? g_out[2 * c] : 0, gi = g_out ? g_out[2 * c + 1] : 0;
        g_in[2 * c] = (ar * gr - ai * gi) + own[4 * c + 2];
        g_in[2 * c + 1] = (ar * gi + ai * gr) + own[4 * c + 3];
    }
}

/* ---- the serial reference ------------------------------------------------------------------------------ */
void mg_state_scan_serial(const MgScanSpec *s, int P, const void *all, const void *init, void *out) {
    size_t S = mg_scan_bytes(s);
    int64_t C = s->channels;
    unsigned char *acc = mg_malloc(S), *el = mg_malloc(S);
    int have = 0;
    if (init) memcpy(acc, init, S), have = 1;
    for (int v = 0; v < P; v++) {
        int r = s->dir == MG_SCAN_FORWARD ? v : P - 1 - v;
        if (have)
            memcpy((char *)out + (size_t)r * S, acc, S);
        else
            mg_scan_identity(s, (char *)out + (size_t)r * S);
        mg_scan_to_fold_form(s, (const char *)all + (size_t)r * S, el);
        if (have)
            mg_scan_combine(s, acc, el, acc, 0, C);
        else
            memcpy(acc, el, S);
        have = 1;
    }
    free(acc);
    free(el);
}

/* ---- the distributed algorithms -------------------------------------------------------------------------- */
struct MgScanWork {
    unsigned char *el, *incl, *sendb, *recvb, *all;
    size_t cap_el, cap_incl, cap_sendb, cap_recvb, cap_all;
    MgTpRequest **reqs, **rreq; /* MG_SCAN_PIPELINED: 1024 each */
    MgTpRequest *pending[1024];  /* deferred sends out of incl */
    int n_pending;
    MgTransport *pending_t;
    MgTpRequest *early_recv;     /* mg_state_scan_begin's receive of the chain's prefix */
    MgTransport *early_t;
};

MgScanWork *mg_scan_work_create(void) {
    MgScanWork *w = mg_calloc(1, sizeof *w);
    w->reqs = mg_calloc(1024, sizeof *w->reqs);
    w->rreq = mg_calloc(1024, sizeof *w->rreq);
    return w;
}

void mg_scan_work_flush(MgScanWork *w) {
    for (int i = 0; i < w->n_pending; i++) mg_tp_wait(w->pending_t, w->pending[i]);
    w->n_pending = 0;
}

void mg_scan_work_free(MgScanWork *w) {
    if (!w) return;
    mg_scan_work_flush(w);
    if (w->early_recv) mg_tp_wait(w->early_t, w->early_recv); /* a begin without its finish */
    free(w->el);
    free(w->incl);
    free(w->sendb);
    free(w->recvb);
    free(w->all);
    free(w->reqs);
    free(w->rreq);
    free(w);
}

/* A buffer of the work, grown (never shrunk) to `need` bytes. */
static unsigned char *buf(unsigned char **p, size_t *cap, size_t need) {
    if (need > *cap) {
        free(*p);
        *p = mg_malloc(need);
        *cap = need;
    }
    return *p;
}

typedef struct {
    MgTransport *t;
    const MgScanSpec *s;
    int P, v; /* virtual rank: position in fold order */
    MgScanWork *w;
} Ctx;

static int real_rank(const Ctx *x, int v) { return x->s->dir == MG_SCAN_FORWARD ? v : x->P - 1 - v; }

/* Rank v's prefix (exclusive) is `prefix` if have, else nothing; writes the inclusive fold to incl. */
static void inclusive(const Ctx *x, int have, const void *prefix, const void *el, void *incl, int64_t c0, int64_t c1) {
    size_t eb = elem_bytes(x->s);
    if (have)
        mg_scan_combine(x->s, prefix, el, incl, c0, c1);
    else
        memcpy((char *)incl + (size_t)c0 * eb, (const char *)el + (size_t)c0 * eb, (size_t)(c1 - c0) * eb);
}

/* Hand a send out of the work's incl buffer over to be completed later. */
static void defer(const Ctx *x, MgTpRequest *r) {
    x->w->pending_t = x->t;
    x->w->pending[x->w->n_pending++] = r;
}

static void scan_chain(const Ctx *x, const void *el, const void *init, void *out) {
    const MgScanSpec *s = x->s;
    size_t S = mg_scan_bytes(s);
    int have = 0;
    if (x->v > 0) {
        if (x->w->early_recv) { /* posted by mg_state_scan_begin */
            mg_tp_wait(x->t, x->w->early_recv);
            x->w->early_recv = NULL;
        } else {
            mg_tp_recv(x->t, real_rank(x, x->v - 1), s->tag, out, S);
        }
        have = 1;
    } else if (init) {
        memcpy(out, init, S);
        have = 1;
    }
    if (x->v + 1 < x->P) {
        unsigned char *incl = buf(&x->w->incl, &x->w->cap_incl, S);
        inclusive(x, have, out, el, incl, 0, s->channels);
        defer(x, mg_tp_isend(x->t, real_rank(x, x->v + 1), s->tag, incl, S));
    }
    if (!have) mg_scan_identity(s, out);
}

static void scan_pipelined(const Ctx *x, const void *el, const void *init, void *out) {
    const MgScanSpec *s = x->s;
    size_t S = mg_scan_bytes(s), eb = elem_bytes(s);
    int K = s->pieces;
    int64_t C = s->channels;
    int have = x->v > 0 || init;
    int send = x->v + 1 < x->P;
    if (x->v == 0 && init) memcpy(out, init, S);
    unsigned char *incl = send ? buf(&x->w->incl, &x->w->cap_incl, S) : NULL;
    MgTpRequest **rreq = x->w->rreq;
    /* Post every receive first, then combine and forward each piece as it arrives. */
    for (int k = 0; k < K; k++) {
        int64_t c0 = C * k / K, c1 = C * (k + 1) / K;
        rreq[k] = x->v > 0 ? mg_tp_irecv(x->t, real_rank(x, x->v - 1), s->tag + k, (char *)out + (size_t)c0 * eb,
                                         (size_t)(c1 - c0) * eb)
                           : NULL;
    }
    for (int k = 0; k < K; k++) {
        int64_t c0 = C * k / K, c1 = C * (k + 1) / K;
        if (rreq[k]) mg_tp_wait(x->t, rreq[k]);
        if (!send) continue;
        inclusive(x, have, out, el, incl, c0, c1);
        defer(x, mg_tp_isend(x->t, real_rank(x, x->v + 1), s->tag + k, incl + (size_t)c0 * eb, (size_t)(c1 - c0) * eb));
    }
    if (!have) mg_scan_identity(s, out);
}

static void scan_allgather(const Ctx *x, const void *el, const void *init, void *out) {
    const MgScanSpec *s = x->s;
    size_t S = mg_scan_bytes(s);
    unsigned char *all = buf(&x->w->all, &x->w->cap_all, S * (size_t)x->P);
    mg_tp_all_gather(x->t, el, all, S); /* in real rank order; el is already in fold form */
    int have = 0;
    if (init) memcpy(out, init, S), have = 1;
    for (int v = 0; v < x->v; v++) {
        const unsigned char *e = all + (size_t)real_rank(x, v) * S;
        if (have)
            mg_scan_combine(s, out, e, out, 0, s->channels);
        else
            memcpy(out, e, S);
        have = 1;
    }
    if (!have) mg_scan_identity(s, out);
}

/* Hillis-Steele: in round k (d = 2^k) rank v sends its inclusive fold of ranks v-2d+1..v (so far
 * v-d+1..v) to v+d and receives that of v-d, prepending it to both its inclusive and exclusive folds. */
static void scan_doubling(const Ctx *x, const void *el, const void *init, void *out) {
    const MgScanSpec *s = x->s;
    size_t S = mg_scan_bytes(s);
    int64_t C = s->channels;
    unsigned char *incl = buf(&x->w->incl, &x->w->cap_incl, S), *sendb = buf(&x->w->sendb, &x->w->cap_sendb, S),
                  *recvb = buf(&x->w->recvb, &x->w->cap_recvb, S);
    memcpy(incl, el, S);
    int have = 0; /* out holds a fold of ranks before v */
    for (int d = 1; d < x->P; d *= 2) {
        MgTpRequest *rq = NULL;
        if (x->v + d < x->P) {
            memcpy(sendb, incl, S);
            rq = mg_tp_isend(x->t, real_rank(x, x->v + d), s->tag, sendb, S);
        }
        if (x->v - d >= 0) {
            mg_tp_recv(x->t, real_rank(x, x->v - d), s->tag, recvb, S);
            if (have)
                mg_scan_combine(s, recvb, out, out, 0, C);
            else
                memcpy(out, recvb, S);
            have = 1;
            mg_scan_combine(s, recvb, incl, incl, 0, C);
        }
        mg_tp_wait(x->t, rq);
    }
    if (init) {
        if (have)
            mg_scan_combine(s, init, out, out, 0, C);
        else
            memcpy(out, init, S);
        have = 1;
    }
    if (!have) mg_scan_identity(s, out);
}

void mg_state_scan_begin(MgTransport *t, const MgScanSpec *s, void *out, MgScanWork *w) {
    char err[256];
    if (mg_scan_check(s, err, sizeof err)) mg_fatal("%s", err);
    MG_CHECK(!w->early_recv, "state scan: mg_state_scan_begin twice without finish");
    mg_scan_work_flush(w);
    const int v = s->dir == MG_SCAN_FORWARD ? t->rank : t->size - 1 - t->rank;
    if (s->algo == MG_SCAN_CHAIN && v > 0) {
        const int from = s->dir == MG_SCAN_FORWARD ? v - 1 : t->size - v; /* real rank of v - 1 */
        w->early_recv = mg_tp_irecv(t, from, s->tag, out, mg_scan_bytes(s));
        w->early_t = t;
    }
}

void mg_state_scan_finish(MgTransport *t, const MgScanSpec *s, const void *local, const void *init, void *out,
                          MgScanWork *w) {
    mg_state_scan_ws(t, s, local, init, out, w);
}

void mg_state_scan_ws(MgTransport *t, const MgScanSpec *s, const void *local, const void *init, void *out,
                      MgScanWork *w) {
    char err[256];
    if (mg_scan_check(s, err, sizeof err)) mg_fatal("%s", err);
    mg_scan_work_flush(w); /* the previous scan's sends out of w's buffers */
    Ctx x = {.t = t, .s = s, .P = t->size, .v = 0, .w = w};
    x.v = s->dir == MG_SCAN_FORWARD ? t->rank : t->size - 1 - t->rank;
    unsigned char *el = buf(&w->el, &w->cap_el, mg_scan_bytes(s));
    mg_scan_to_fold_form(s, local, el);
    switch (s->algo) {
    case MG_SCAN_CHAIN: scan_chain(&x, el, init, out); break;
    case MG_SCAN_PIPELINED: scan_pipelined(&x, el, init, out); break;
    case MG_SCAN_ALLGATHER: scan_allgather(&x, el, init, out); break;
    case MG_SCAN_RECURSIVE_DOUBLING: scan_doubling(&x, el, init, out); break;
    }
}

void mg_state_scan(MgTransport *t, const MgScanSpec *s, const void *local, const void *init, void *out) {
    MgScanWork *w = mg_scan_work_create();
    mg_state_scan_ws(t, s, local, init, out, w);
    mg_scan_work_free(w);
}
