/* parallel/state_scan: the two operators against their definitions (Welford merge vs two-pass statistics
 * of the concatenated data; CEMA composition vs the recurrence run across slice boundaries; the adjoint
 * vs finite differences), then the four scan algorithms with P = 1..8 ranks as threads over the local
 * transport against the serial fold (chain, pipelined, all-gather bit-identical; recursive doubling
 * within rounding), forward and reverse, float32 and float64, with and without an initial element; and
 * the process grid (shape messages, coordinates, sub-transports, the agreement check) on the local and
 * self transports. The same under MPI: tests/test_parallel.sh. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../parallel/grid.h"
#include "../parallel/state_scan.h"
#include "test_util.h"

#define MAXP 8

static double get(const MgScanSpec *s, const void *p, size_t i) {
    return s->dtype == MG_SCAN_F64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static void put(const MgScanSpec *s, void *p, size_t i, double v) {
    if (s->dtype == MG_SCAN_F64)
        ((double *)p)[i] = v;
    else
        ((float *)p)[i] = (float)v;
}
static size_t nscal(const MgScanSpec *s) { return (size_t)s->channels * (size_t)mg_scan_elem_scalars(s->op); }

/* max |x - y| / max(1e-3, |y|) over the scalars */
static double rel_err(const MgScanSpec *s, const void *x, const double *y, size_t n) {
    double e = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(get(s, x, i) - y[i]) / fmax(1e-3, fabs(y[i]));
        if (!(d <= e)) e = d;
    }
    return e;
}

/* ---- Welford: the scan of per-slice (n, mean, M2) vs two-pass statistics of the data before each rank */
static void test_welford(MgScanDtype dt) {
    const int P = 6, C = 5;
    int len[6] = {7, 0, 13, 1, 29, 4};
    MgScanSpec s = {.op = MG_SCAN_WELFORD, .dtype = dt, .channels = C};
    size_t S = mg_scan_bytes(&s), n = nscal(&s);
    double *data[6];
    unsigned char *all = mg_malloc(S * P), *out = mg_malloc(S * P);
    for (int r = 0; r < P; r++) {
        data[r] = tu_dalloc((size_t)len[r] * C);
        for (int i = 0; i < len[r] * C; i++) data[r][i] = 3.0 + 0.5 * (i % C) + tu_normal();
        for (int c = 0; c < C; c++) {
            double m = 0, m2 = 0;
            for (int i = 0; i < len[r]; i++) m += data[r][i * C + c];
            m = len[r] ? m / len[r] : 0;
            for (int i = 0; i < len[r]; i++) m2 += (data[r][i * C + c] - m) * (data[r][i * C + c] - m);
            put(&s, all + r * S, 3 * c, len[r]), put(&s, all + r * S, 3 * c + 1, m), put(&s, all + r * S, 3 * c + 2, m2);
        }
    }
    mg_state_scan_serial(&s, P, all, NULL, out);
    double err = 0, *ref = tu_dalloc(n);
    for (int r = 0; r <= P; r++) {
        unsigned char *got = out + (r < P ? r : P - 1) * S, *incl = mg_malloc(S);
        if (r == P) mg_scan_combine(&s, got, all + (P - 1) * S, incl, 0, C), got = incl;
        for (int c = 0; c < C; c++) {
            double cnt = 0, m = 0, m2 = 0;
            for (int q = 0; q < r; q++)
                for (int i = 0; i < len[q]; i++) m += data[q][i * C + c], cnt++;
            m = cnt ? m / cnt : 0;
            for (int q = 0; q < r; q++)
                for (int i = 0; i < len[q]; i++) m2 += (data[q][i * C + c] - m) * (data[q][i * C + c] - m);
            ref[3 * c] = cnt, ref[3 * c + 1] = m, ref[3 * c + 2] = m2;
        }
        err = fmax(err, rel_err(&s, got, ref, n));
        free(incl);
    }
    char name[64];
    snprintf(name, sizeof name, "welford_merge_vs_two_pass_%s", dt == MG_SCAN_F64 ? "f64" : "f32");
    tu_check_err(name, err, dt == MG_SCAN_F64 ? 1e-12 : 2e-6);
    for (int r = 0; r < P; r++) free(data[r]);
    free(all), free(out), free(ref);
}

/* ---- CEMA: slices of the recurrence h_t = q_t h_{t-1} + u_t (complex, per channel) ----------------------- */
typedef struct {
    int P, C, len[MAXP];
    double *q[MAXP], *u[MAXP], *w[MAXP]; /* [len][C][2]: decay, input, loss weight */
    double *h0, *wf;                     /* [C][2]: the initial state, the weight of the final state */
    double *delta;                       /* [P][C][2]: added to each slice's incoming state */
} Seq;

static void cmul(double ar, double ai, double br, double bi, double *r, double *i) {
    *r = ar * br - ai * bi;
    *i = ar * bi + ai * br;
}

static Seq make_seq(int P, int C) {
    Seq q = {.P = P, .C = C};
    for (int r = 0; r < P; r++) {
        q.len[r] = 1 + (int)(tu_uniform() * 9);
        size_t n = (size_t)q.len[r] * C * 2;
        q.q[r] = tu_dalloc(n), q.u[r] = tu_dalloc(n), q.w[r] = tu_dalloc(n);
        for (size_t i = 0; i < n; i += 2) {
            double rad = 0.5 + 0.49 * tu_uniform(), th = 6.283185307179586 * tu_uniform();
            q.q[r][i] = rad * cos(th), q.q[r][i + 1] = rad * sin(th);
        }
        tu_fill_normal(q.u[r], n, 1.0);
        tu_fill_normal(q.w[r], n, 1.0);
    }
    q.h0 = tu_dalloc(2 * C), q.wf = tu_dalloc(2 * C), q.delta = tu_dalloc((size_t)P * C * 2);
    tu_fill_normal(q.h0, 2 * C, 1.0);
    tu_fill_normal(q.wf, 2 * C, 1.0);
    return q;
}
static void free_seq(Seq *q) {
    for (int r = 0; r < q->P; r++) free(q->q[r]), free(q->u[r]), free(q->w[r]);
    free(q->h0), free(q->wf), free(q->delta);
}

/* Runs the whole sequence from h0; hin[r] (if not NULL) receives slice r's incoming state (before delta).
 * Returns L = sum_t Re(conj(w_t) h_t) + Re(conj(wf) h_final). */
static double run_seq(const Seq *q, double *hin) {
    double L = 0;
    for (int c = 0; c < q->C; c++) {
        double hr = q->h0[2 * c], hi = q->h0[2 * c + 1];
        for (int r = 0; r < q->P; r++) {
            if (hin) hin[(r * q->C + c) * 2] = hr, hin[(r * q->C + c) * 2 + 1] = hi;
            hr += q->delta[(r * q->C + c) * 2], hi += q->delta[(r * q->C + c) * 2 + 1];
            for (int t = 0; t < q->len[r]; t++) {
                size_t i = ((size_t)t * q->C + c) * 2;
                double nr, ni;
                cmul(q->q[r][i], q->q[r][i + 1], hr, hi, &nr, &ni);
                hr = nr + q->u[r][i], hi = ni + q->u[r][i + 1];
                L += q->w[r][i] * hr + q->w[r][i + 1] * hi;
            }
        }
        L += q->wf[2 * c] * hr + q->wf[2 * c + 1] * hi;
    }
    return L;
}
static double seq_loss(void *ctx) { return run_seq(ctx, NULL); }

/* Slice r's forward element (a, b) and its adjoint element (a, c) (c: the gradient of the incoming state
 * from the slice's own loss terms, with a zero outgoing gradient). */
static void slice_elems(const Seq *q, int r, double *fwd, double *adj) {
    for (int c = 0; c < q->C; c++) {
        double ar = 1, ai = 0, br = 0, bi = 0;
        for (int t = 0; t < q->len[r]; t++) {
            size_t i = ((size_t)t * q->C + c) * 2;
            double nr, ni;
            cmul(q->q[r][i], q->q[r][i + 1], ar, ai, &nr, &ni), ar = nr, ai = ni;
            cmul(q->q[r][i], q->q[r][i + 1], br, bi, &nr, &ni), br = nr + q->u[r][i], bi = ni + q->u[r][i + 1];
        }
        double gr = 0, gi = 0;
        for (int t = q->len[r] - 1; t >= 0; t--) {
            size_t i = ((size_t)t * q->C + c) * 2;
            gr += q->w[r][i], gi += q->w[r][i + 1];
            double nr, ni;
            cmul(q->q[r][i], -q->q[r][i + 1], gr, gi, &nr, &ni), gr = nr, gi = ni; /* conj(q) g */
        }
        fwd[4 * c] = ar, fwd[4 * c + 1] = ai, fwd[4 * c + 2] = br, fwd[4 * c + 3] = bi;
        adj[4 * c] = ar, adj[4 * c + 1] = ai, adj[4 * c + 2] = gr, adj[4 * c + 3] = gi;
    }
}

static void test_cema(void) {
    const int P = 5, C = 4;
    Seq q = make_seq(P, C);
    double *fwd = tu_dalloc((size_t)P * C * 4), *adj = tu_dalloc((size_t)P * C * 4);
    for (int r = 0; r < P; r++) slice_elems(&q, r, fwd + r * C * 4, adj + r * C * 4);
    double *hin = tu_dalloc((size_t)P * C * 2), *h = tu_dalloc(2 * C);
    run_seq(&q, hin);

    /* forward: the incoming state of every slice, with init = NULL (applied to h0 after) and init = (0, h0) */
    MgScanSpec s = {.op = MG_SCAN_CEMA, .dtype = MG_SCAN_F64, .channels = C};
    double *out = tu_dalloc((size_t)P * C * 4), *init = tu_dalloc((size_t)C * 4);
    for (int c = 0; c < C; c++) init[4 * c + 2] = q.h0[2 * c], init[4 * c + 3] = q.h0[2 * c + 1];
    double e1 = 0, e2 = 0;
    mg_state_scan_serial(&s, P, fwd, NULL, out);
    for (int r = 0; r < P; r++) {
        mg_scan_cema_apply(C, out + r * C * 4, q.h0, h);
        e1 = fmax(e1, tu_max_rel_err(h, hin + r * C * 2, 2 * C, 1e-3));
    }
    mg_state_scan_serial(&s, P, fwd, init, out);
    for (int r = 0; r < P; r++) {
        mg_scan_cema_apply(C, out + r * C * 4, NULL, h);
        e2 = fmax(e2, tu_max_rel_err(h, hin + r * C * 2, 2 * C, 1e-3));
    }
    tu_check_err("cema_composition_vs_recurrence_f64", fmax(e1, e2), 1e-12);
    /* float32 composition */
    MgScanSpec s32 = s;
    s32.dtype = MG_SCAN_F32;
    float *fwd32 = tu_f32_of(fwd, (size_t)P * C * 4), *out32 = mg_malloc(sizeof(float) * P * C * 4);
    float *init32 = tu_f32_of(init, (size_t)C * 4);
    mg_state_scan_serial(&s32, P, fwd32, init32, out32);
    double e3 = 0, *o64 = tu_dalloc((size_t)C * 4);
    for (int r = 0; r < P; r++) {
        tu_from_f32(o64, out32 + r * C * 4, (size_t)C * 4);
        mg_scan_cema_apply(C, o64, NULL, h);
        e3 = fmax(e3, tu_max_rel_err(h, hin + r * C * 2, 2 * C, 1e-2));
    }
    tu_check_err("cema_composition_vs_recurrence_f32", e3, 1e-5);

    /* reverse: the adjoint scan vs finite differences of L w.r.t. a perturbation of each incoming state */
    MgScanSpec sr = s;
    sr.dir = MG_SCAN_REVERSE;
    double *g_init = tu_dalloc((size_t)C * 4), *rout = tu_dalloc((size_t)P * C * 4);
    double *ana = tu_dalloc((size_t)P * C * 2), *num = tu_dalloc((size_t)P * C * 2), *g = tu_dalloc(2 * C);
    for (int c = 0; c < C; c++) g_init[4 * c + 2] = q.wf[2 * c], g_init[4 * c + 3] = q.wf[2 * c + 1];
    mg_state_scan_serial(&sr, P, adj, g_init, rout);
    for (int r = 0; r < P; r++) {
        mg_scan_cema_apply(C, rout + r * C * 4, NULL, g); /* dL/dh_out(r) */
        mg_scan_cema_adjoint_apply(C, adj + r * C * 4, g, ana + r * C * 2);
    }
    tu_grad_check("cema_adjoint_vs_finite_differences_f64", q.delta, (size_t)P * C * 2, ana, seq_loss, &q, 1e-8);
    /* without init: (alpha, beta) applied to g_final gives the same */
    double e4 = 0;
    mg_state_scan_serial(&sr, P, adj, NULL, rout);
    for (int r = 0; r < P; r++) {
        double gi[64];
        mg_scan_cema_apply(C, rout + r * C * 4, q.wf, g);
        mg_scan_cema_adjoint_apply(C, adj + r * C * 4, g, gi);
        e4 = fmax(e4, tu_max_rel_err(gi, ana + r * C * 2, 2 * C, 1e-3));
    }
    tu_check_err("cema_adjoint_without_init_applied_to_final_gradient", e4, 1e-12);
    free_seq(&q);
    free(fwd), free(adj), free(hin), free(h), free(out), free(init), free(fwd32), free(out32), free(init32);
    free(o64), free(g_init), free(rout), free(ana), free(num), free(g);
}

/* ---- the algorithms over threads ------------------------------------------------------------------------- */
typedef struct {
    MgTransport *t;
    const MgScanSpec *s;
    const void *local, *init;
    void *out;
} RankArgs;

static void *rank_main(void *p) {
    RankArgs *a = p;
    mg_state_scan(a->t, a->s, a->local, a->init, a->out);
    return NULL;
}

static void random_summary(const MgScanSpec *s, void *p) {
    for (int64_t c = 0; c < s->channels; c++) {
        if (s->op == MG_SCAN_WELFORD) {
            double n = tu_uniform() < 0.15 ? 0 : (double)(1 + (int)(tu_uniform() * 50));
            put(s, p, 3 * c, n), put(s, p, 3 * c + 1, n ? 2 + tu_normal() : 0), put(s, p, 3 * c + 2, n > 1 ? n * tu_uniform() : 0);
        } else if (s->op == MG_SCAN_NORM_ADJOINT) {
            double a = tu_uniform();
            put(s, p, 4 * c, a), put(s, p, 4 * c + 1, 2 * a * (1 - a) * tu_normal());
            put(s, p, 4 * c + 2, tu_normal()), put(s, p, 4 * c + 3, tu_normal());
        } else {
            double rad = 0.3 + 0.69 * tu_uniform(), th = 6.283185307179586 * tu_uniform();
            put(s, p, 4 * c, rad * cos(th)), put(s, p, 4 * c + 1, rad * sin(th));
            put(s, p, 4 * c + 2, tu_normal()), put(s, p, 4 * c + 3, tu_normal());
        }
    }
}

static void test_algorithms(void) {
    const int C = 7;
    for (int op = 0; op < MG_SCAN_N_OPS; op++)
        for (int dt = 0; dt < 2; dt++)
            for (int dir = 0; dir < 2; dir++)
                for (int algo = 0; algo < MG_SCAN_N_ALGOS; algo++) {
                    MgScanSpec s = {.op = op, .dtype = dt, .dir = dir, .algo = algo, .channels = C, .pieces = 3, .tag = 7};
                    size_t S = mg_scan_bytes(&s), n = nscal(&s);
                    int bit_ok = 1, runs = 0;
                    double err = 0;
                    for (int P = 1; P <= MAXP; P++)
                        for (int with_init = 0; with_init < 2; with_init++) {
                            unsigned char *all = mg_malloc(S * P), *ref = mg_malloc(S * P), *got = mg_malloc(S * P);
                            unsigned char *init = mg_malloc(S);
                            for (int r = 0; r < P; r++) random_summary(&s, all + r * S);
                            random_summary(&s, init);
                            const void *ini = with_init ? init : NULL;
                            mg_state_scan_serial(&s, P, all, ini, ref);
                            MgTransport *ep[MAXP];
                            pthread_t th[MAXP];
                            RankArgs ra[MAXP];
                            mg_transport_local_create(P, ep);
                            for (int r = 0; r < P; r++) {
                                ra[r] = (RankArgs){ep[r], &s, all + r * S, ini, got + r * S};
                                pthread_create(&th[r], NULL, rank_main, &ra[r]);
                            }
                            for (int r = 0; r < P; r++) pthread_join(th[r], NULL);
                            for (int r = 0; r < P; r++) mg_tp_free(ep[r]);
                            if (algo != MG_SCAN_RECURSIVE_DOUBLING) bit_ok &= !memcmp(got, ref, S * P);
                            double *refd = tu_dalloc(n);
                            for (int r = 0; r < P; r++) {
                                for (size_t i = 0; i < n; i++) refd[i] = get(&s, ref + r * S, i);
                                err = fmax(err, rel_err(&s, got + r * S, refd, n));
                            }
                            runs++;
                            free(refd), free(all), free(ref), free(got), free(init);
                        }
                    char name[128];
                    snprintf(name, sizeof name, "scan_%s_%s_%s_%s_vs_serial", mg_scan_algo_name(algo),
                             mg_scan_op_name(op), dt ? "f64" : "f32", dir ? "reverse" : "forward");
                    /* float32 CEMA and norm adjoint: products of up to 8 maps and sums with cancellation */
                    double tol = dt ? 1e-12 : op != MG_SCAN_WELFORD ? 1e-4 : 1e-5;
                    if (algo != MG_SCAN_RECURSIVE_DOUBLING)
                        tu_check(bit_ok && err == 0, name, "P=1..%d with and without init (%d runs): bit-identical", MAXP, runs);
                    else
                        tu_check(err <= tol, name, "P=1..%d with and without init (%d runs): max rel err %.3g (tol %g)",
                                 MAXP, runs, err, tol);
                }
}

/* ---- the grid -------------------------------------------------------------------------------------------- */
typedef struct {
    MgTransport *t;
    int sp;
    int ok, agree_rc;
    char msg[512];
    const char *text;
} GridArgs;

static void *grid_main(void *p) {
    GridArgs *a = p;
    MgGrid g;
    char err[256];
    a->ok = 0;
    if (mg_grid_create(a->t, a->sp, &g, err, sizeof err)) return NULL;
    int dp, sp;
    mg_grid_coords(a->t->rank, a->sp, &dp, &sp);
    /* the SP group sums its world ranks: dp*SP*SP + SP(SP-1)/2 */
    double v = a->t->rank;
    mg_tp_all_reduce_sum(g.sp_group, &v, 1);
    double w = a->t->rank;
    mg_tp_all_reduce_sum(g.dp_group, &w, 1); /* sum over dp of dp*SP + sp */
    int D = g.dp_size, S = g.sp_size;
    a->ok = g.dp == dp && g.sp == sp && dp * S + sp == a->t->rank && g.sp_group->rank == sp && g.dp_group->rank == dp &&
            v == (double)dp * S * S + S * (S - 1) / 2.0 && w == (double)S * D * (D - 1) / 2.0 + (double)D * sp;
    /* point to point inside the SP group: a ring shift */
    if (S > 1) {
        int mine = a->t->rank, got = -1;
        MgTpRequest *rq = mg_tp_irecv(g.sp_group, (sp + S - 1) % S, 3, &got, sizeof got);
        mg_tp_send(g.sp_group, (sp + 1) % S, 3, &mine, sizeof mine);
        mg_tp_wait(g.sp_group, rq);
        a->ok &= got == dp * S + (sp + S - 1) % S;
    }
    mg_tp_barrier(a->t);
    a->agree_rc = mg_grid_agree(a->t, a->text, a->msg, sizeof a->msg);
    mg_grid_destroy(&g);
    return NULL;
}

static void run_grid(int P, int sp, const char **texts, GridArgs *ga) {
    MgTransport *ep[MAXP];
    pthread_t th[MAXP];
    mg_transport_local_create(P, ep);
    for (int r = 0; r < P; r++) {
        ga[r] = (GridArgs){.t = ep[r], .sp = sp, .text = texts ? texts[r] : "cfg"};
        pthread_create(&th[r], NULL, grid_main, &ga[r]);
    }
    for (int r = 0; r < P; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < P; r++) mg_tp_free(ep[r]);
}

static void test_grid(void) {
    char err[256];
    int dp = 0;
    int bad = mg_grid_shape(4, 3, &dp, err, sizeof err);
    tu_check(bad == -1 && strstr(err, "sequence parallel size 3 does not divide the 4 ranks"), "grid_refuses_sp_not_dividing_p",
             "%s", err);
    bad = mg_grid_shape(2, 4, &dp, err, sizeof err);
    tu_check(bad == -1 && strstr(err, "more than the 2 ranks"), "grid_refuses_sp_above_p", "%s", err);
    bad = mg_grid_shape(8, 0, &dp, err, sizeof err);
    tu_check(bad == -1 && strstr(err, "must be >= 1"), "grid_refuses_sp_0", "%s", err);
    bad = mg_grid_shape(8, 4, &dp, err, sizeof err);
    tu_check(bad == 0 && dp == 2, "grid_shape_8_sp4", "dp=%d", dp);

    int all_ok = 1;
    const int shapes[][2] = {{1, 1}, {2, 2}, {4, 2}, {6, 3}, {6, 2}, {8, 4}, {8, 1}, {8, 8}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        GridArgs ga[MAXP];
        run_grid(shapes[k][0], shapes[k][1], NULL, ga);
        for (int r = 0; r < shapes[k][0]; r++) all_ok &= ga[r].ok && ga[r].agree_rc == 0 && ga[r].msg[0] == 0;
    }
    tu_check(all_ok, "grid_coords_and_sub_transports_local", "P x SP in {1x1,2x2,4x2,6x3,6x2,8x4,8x1,8x8}: coordinates, "
             "SP/DP group ranks, all-reduce and ring shift within the SP group, agreement");

    /* a config that differs on ranks 2 and 5: every rank gets the same message naming them */
    const char *texts[6] = {"cfg", "cfg", "cfg-other", "cfg", "cfg", "cfg-x"};
    GridArgs ga[6];
    run_grid(6, 3, texts, ga);
    int same = 1;
    for (int r = 1; r < 6; r++) same &= !strcmp(ga[r].msg, ga[0].msg);
    tu_check(same && strstr(ga[0].msg, "2 of 6 ranks disagree") && strstr(ga[0].msg, "rank 2 (config hash") &&
                 strstr(ga[0].msg, "rank 5 (config hash") && !strstr(ga[0].msg, "executable hash") && ga[0].agree_rc == -1,
             "grid_agreement_names_differing_ranks", "%s", ga[0].msg);

    /* the self transport: a one-rank grid, the scan of every algorithm returns the identity or init */
    MgTransport *self = mg_transport_self();
    MgGrid g;
    int ok = mg_grid_create(self, 1, &g, err, sizeof err) == 0 && g.dp_size == 1 && g.sp_group->size == 1;
    if (ok) mg_grid_destroy(&g);
    ok &= mg_grid_agree(self, "x", err, sizeof err) == 0;
    uint64_t h = mg_grid_file_hash("/proc/self/exe", err, sizeof err);
    ok &= h != 0;
    for (int algo = 0; algo < MG_SCAN_N_ALGOS; algo++) {
        MgScanSpec s = {.op = MG_SCAN_CEMA, .dtype = MG_SCAN_F64, .algo = algo, .channels = 2, .pieces = 2};
        double loc[8] = {0.5, 0.1, 1, 2, 0.3, 0.2, 3, 4}, init[8] = {1, 0, 5, 6, 1, 0, 7, 8}, out[8];
        mg_state_scan(self, &s, loc, NULL, out);
        ok &= out[0] == 1 && out[1] == 0 && out[2] == 0 && out[3] == 0;
        mg_state_scan(self, &s, loc, init, out);
        ok &= !memcmp(out, init, sizeof out);
    }
    char buf[4] = "abc", dst[4] = "";
    mg_tp_all_gather(self, buf, dst, 4);
    ok &= !strcmp(dst, "abc");
    mg_tp_free(self);
    tu_check(ok, "self_transport_grid_agree_scan", "exe hash 0x%016llx", (unsigned long long)h);
}

int main(void) {
    tu_init("test_state_scan");
    test_welford(MG_SCAN_F64);
    test_welford(MG_SCAN_F32);
    test_cema();
    test_algorithms();
    test_grid();
    return tu_finish();
}
