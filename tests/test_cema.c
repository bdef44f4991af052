/* CEMA (kernels/cpu/cema.c): the recurrence against the closed-form convolution kernel, state bias and
 * final-state formula of spec §2.3 (computed here independently with complex.h), float64 gradient checks
 * of every input including the carried state in and out, exact state carrying across 1..4 pieces forward
 * and backward, float32 against float64 (including a long sequence), accumulate semantics, thread-count
 * determinism, and the refusal of N outside [1, 64]. */
#include <complex.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../kernels/cpu/cpu_ops.h"
#include "test_util.h"

typedef struct {
    int B, L, D, N;
    int use_hin, use_dhout;
    double *x, *alpha, *delta, *theta, *gamma, *omega, *h_in; /* BLD, DN, DN, D, DN2, D, BDN2 */
    double *dy, *gh;                                         /* loss weights on y and h_out */
    double *y, *h_out;
} Cema;

typedef struct {
    double *dx, *dalpha, *ddelta, *dtheta, *dgamma, *domega, *dh_in;
} CemaGrads;


static Cema cema_new(int B, int L, int D, int N, int use_hin, int use_dhout) {
    Cema c = {.B = B, .L = L, .D = D, .N = N, .use_hin = use_hin, .use_dhout = use_dhout};
    size_t n = (size_t)B * L * D, dn = (size_t)D * N, st = (size_t)B * D * N * 2;
    c.x = tu_dalloc(n);
    c.alpha = tu_dalloc(dn);
    c.delta = tu_dalloc(dn);
    c.theta = tu_dalloc(D);
    c.gamma = tu_dalloc(2 * dn);
    c.omega = tu_dalloc(D);
    c.h_in = tu_dalloc(st);
    c.dy = tu_dalloc(n);
    c.gh = tu_dalloc(st);
    c.y = tu_dalloc(n);
    c.h_out = tu_dalloc(st);
    tu_fill_normal(c.x, n, 1.0);
    tu_fill_normal(c.alpha, dn, 0.5);
    tu_fill_normal(c.delta, dn, 0.5);
    tu_fill_normal(c.theta, D, 1.0);
    tu_fill_normal(c.gamma, 2 * dn, 1.0);
    tu_fill_signed(c.omega, D, 0.1, 0.5);
    tu_fill_normal(c.h_in, st, 1.0);
    tu_fill_normal(c.dy, n, 1.0);
    tu_fill_normal(c.gh, st, 1.0);
    return c;
}

static void cema_free(Cema *c) {
    free(c->x); free(c->alpha); free(c->delta); free(c->theta); free(c->gamma); free(c->omega);
    free(c->h_in); free(c->dy); free(c->gh); free(c->y); free(c->h_out);
}

static CemaGrads grads_new(const Cema *c) {
    size_t dn = (size_t)c->D * c->N;
    CemaGrads g = {tu_dalloc((size_t)c->B * c->L * c->D), tu_dalloc(dn), tu_dalloc(dn), tu_dalloc(c->D), tu_dalloc(2 * dn),
                   tu_dalloc(c->D), tu_dalloc((size_t)c->B * dn * 2)};
    return g;
}
static void grads_free(CemaGrads *g) {
    free(g->dx); free(g->dalpha); free(g->ddelta); free(g->dtheta); free(g->dgamma); free(g->domega);
    free(g->dh_in);
}

static MgCemaArgs cema_args(Cema *c) {
    MgCemaArgs a = {.B = c->B, .L = c->L, .D = c->D, .N = c->N};
    a.x = c->x;
    a.alpha = c->alpha;
    a.delta = c->delta;
    a.theta = c->theta;
    a.gamma = c->gamma;
    a.omega = c->omega;
    a.h_in = c->use_hin ? c->h_in : NULL;
    a.h_out = c->h_out;
    a.y = c->y;
    a.dy = c->dy;
    a.dh_out = c->use_dhout ? c->gh : NULL;
    return a;
}

static void cema_fwd(Cema *c) {
    MgCemaArgs a = cema_args(c);
    cpu_cema_forward_f64(&mg_cpu_backend_f64, &a);
}

static double cema_loss(void *ctx) {
    Cema *c = ctx;
    cema_fwd(c);
    double l = tu_dot(c->dy, c->y, (size_t)c->B * c->L * c->D);
    if (c->use_dhout) l += tu_dot(c->gh, c->h_out, (size_t)c->B * c->D * c->N * 2);
    return l;
}

static void cema_bwd(Cema *c, CemaGrads *g) {
    MgCemaArgs a = cema_args(c);
    a.dx = g->dx;
    a.dalpha = g->dalpha;
    a.ddelta = g->ddelta;
    a.dtheta = g->dtheta;
    a.dgamma = g->dgamma;
    a.domega = g->domega;
    a.dh_in = g->dh_in;
    cpu_cema_backward_f64(&mg_cpu_backend_f64, &a);
}

/* ---- refusal of bad N, in a child process (the op exits through mg_fatal) ------------------------ */
typedef struct {
    int N, backward;
} RefuseCtx;

static void refuse_child(void *vctx) {
    const RefuseCtx *c = vctx;
    double dummy[16] = {0};
    MgCemaArgs a = {.B = 1, .L = 1, .D = 1, .N = c->N, .x = dummy, .alpha = dummy, .delta = dummy,
                    .theta = dummy, .gamma = dummy, .omega = dummy, .y = dummy, .dy = dummy};
    if (c->backward) cpu_cema_backward_f64(&mg_cpu_backend_f64, &a);
    else cpu_cema_forward_f64(&mg_cpu_backend_f64, &a);
}

static void test_refuse(int N, int backward) {
    RefuseCtx c = {N, backward};
    char want[32], name[64];
    snprintf(want, sizeof want, "N=%d", N);
    snprintf(name, sizeof name, "cema_%s_refuses_N_%d", backward ? "backward" : "forward", N);
    const char *needles[] = {want, "cema", NULL};
    tu_expect_failure_all(name, refuse_child, &c, needles);
}

/* ---- closed form (spec §2.3), independent of the kernel's coefficient code ------------------------ */
static double sig(double v) { return 1.0 / (1.0 + exp(-v)); }

static void coefs(const Cema *c, int j, int n, double *p, double complex *q, double complex *g) {
    size_t i = (size_t)j * c->N + n;
    double al = sig(c->alpha[i]), de = sig(c->delta[i]), om = sig(c->theta[j]);
    *p = al;
    *q = (1.0 - al * de) * cexp(I * (double)(n + 1) * 2.0 * M_PI / c->N * om);
    *g = (c->gamma[2 * i] + I * c->gamma[2 * i + 1]) / sqrt((double)c->N);
}

/* y_t = sum_{s<=t} k[t-s] x_s + b_t + omega x_t, h = q^L h0 + p sum_s q^{L-1-s} x_s, with powers by cpow. */
static void closed_form(const Cema *c, double *y, double *h) {
    const int B = c->B, L = c->L, D = c->D, N = c->N;
    double *k = tu_dalloc(L), *bias = tu_dalloc(L);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < D; j++) {
            for (int m = 0; m < L; m++) {
                double complex sk = 0, sb = 0;
                for (int n = 0; n < N; n++) {
                    double p;
                    double complex q, g;
                    coefs(c, j, n, &p, &q, &g);
                    size_t si = (((size_t)b * D + j) * N + n) * 2;
                    double complex h0 = c->use_hin ? c->h_in[si] + I * c->h_in[si + 1] : 0;
                    sk += p * g * cpow(q, m);
                    sb += g * cpow(q, m + 1) * h0;
                }
                k[m] = creal(sk);
                bias[m] = creal(sb);
            }
            for (int t = 0; t < L; t++) {
                double s = 0;
                for (int u = 0; u <= t; u++) s += k[t - u] * c->x[((size_t)b * L + u) * D + j];
                double xt = c->x[((size_t)b * L + t) * D + j];
                y[((size_t)b * L + t) * D + j] = s + bias[t] + c->omega[j] * xt;
            }
            for (int n = 0; n < N; n++) {
                double p;
                double complex q, g;
                coefs(c, j, n, &p, &q, &g);
                size_t si = (((size_t)b * D + j) * N + n) * 2;
                double complex h0 = c->use_hin ? c->h_in[si] + I * c->h_in[si + 1] : 0;
                double complex hs = cpow(q, L) * h0, acc = 0;
                for (int s = 0; s < L; s++) acc += cpow(q, L - 1 - s) * c->x[((size_t)b * L + s) * D + j];
                hs += p * acc;
                h[si] = creal(hs);
                h[si + 1] = cimag(hs);
            }
        }
    free(k);
    free(bias);
}

static void test_closed_form(void) {
    const int B = 2, L = 200, D = 6, N = 5;
    const size_t n = (size_t)B * L * D, st = (size_t)B * D * N * 2;
    double *y = tu_dalloc(n), *h = tu_dalloc(st);

    /* impulse response, zero state: y = k[t] + omega [t == 0] (the convolution kernel itself) */
    Cema c = cema_new(B, L, D, N, 0, 0);
    memset(c.x, 0, n * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int j = 0; j < D; j++) c.x[(size_t)b * L * D + j] = 1.0;
    cema_fwd(&c);
    closed_form(&c, y, h);
    tu_check_err("cema_impulse_response_equals_kernel_k", tu_max_rel_err(c.y, y, n, tu_grad_floor(y, n)), 1e-12);

    /* zero input, carried state: y = b_t (the state bias), h = q^L h0 */
    c.use_hin = 1;
    memset(c.x, 0, n * sizeof(double));
    cema_fwd(&c);
    closed_form(&c, y, h);
    tu_check_err("cema_zero_input_equals_state_bias_b", tu_max_rel_err(c.y, y, n, tu_grad_floor(y, n)), 1e-12);
    tu_check_err("cema_zero_input_final_state_qL_h0",
                 tu_max_rel_err(c.h_out, h, st, tu_grad_floor(h, st)), 1e-12);

    /* everything together */
    tu_fill_normal(c.x, n, 1.0);
    cema_fwd(&c);
    closed_form(&c, y, h);
    tu_check_err("cema_forward_vs_closed_form_y", tu_max_rel_err(c.y, y, n, tu_grad_floor(y, n)), 1e-12);
    tu_check_err("cema_forward_vs_closed_form_final_state",
                 tu_max_rel_err(c.h_out, h, st, tu_grad_floor(h, st)), 1e-12);
    cema_free(&c);
    free(y);
    free(h);
}

/* ---- gradient checks ----------------------------------------------------------------------------- */
static void test_gradcheck(const char *tag, int B, int L, int D, int N, int use_hin, int use_dhout) {
    Cema c = cema_new(B, L, D, N, use_hin, use_dhout);
    CemaGrads g = grads_new(&c);
    cema_bwd(&c, &g);
    const size_t n = (size_t)B * L * D, dn = (size_t)D * N, st = (size_t)B * dn * 2;
    char name[96];
#define GC(field, arr, len)                                                                            \
    snprintf(name, sizeof name, "cema_grad_%s_%s", tag, #field);                                      \
    tu_grad_check(name, c.arr, len, g.field, cema_loss, &c, 1e-6)
    GC(dx, x, n);
    GC(dalpha, alpha, dn);
    GC(ddelta, delta, dn);
    GC(dtheta, theta, (size_t)D);
    GC(dgamma, gamma, 2 * dn);
    GC(domega, omega, (size_t)D);
    if (use_hin) {
        GC(dh_in, h_in, st);
    } else {
        /* h_in NULL means zeros: the gradient w.r.t. that zero state is still defined; check it. */
        c.use_hin = 1;
        memset(c.h_in, 0, st * sizeof(double));
        GC(dh_in, h_in, st);
    }
#undef GC
    grads_free(&g);
    cema_free(&c);
}

/* ---- state carrying across pieces ------------------------------------------------------------------ */
static void slice_rows(const double *src, double *dst, int B, int L, int W, int off, int len) {
    for (int b = 0; b < B; b++)
        memcpy(dst + (size_t)b * len * W, src + ((size_t)b * L + off) * W, sizeof(double) * (size_t)len * W);
}
static void unslice_rows(const double *src, double *dst, int B, int L, int W, int off, int len) {
    for (int b = 0; b < B; b++)
        memcpy(dst + ((size_t)b * L + off) * W, src + (size_t)b * len * W, sizeof(double) * (size_t)len * W);
}

static double rel(const double *a, const double *ref, size_t n) {
    return tu_max_rel_err(a, ref, n, tu_grad_floor(ref, n));
}

static void test_pieces(int npieces, const int *lens) {
    const int B = 2, D = 20, N = 8;
    int L = 0;
    for (int k = 0; k < npieces; k++) L += lens[k];
    Cema c = cema_new(B, L, D, N, 1, 1);
    CemaGrads ref = grads_new(&c);
    cema_fwd(&c);
    cema_bwd(&c, &ref);
    const size_t n = (size_t)B * L * D, dn = (size_t)D * N, st = (size_t)B * dn * 2;

    CemaGrads g = grads_new(&c);
    double *y = tu_dalloc(n), *states = tu_dalloc((size_t)(npieces + 1) * st);
    memcpy(states, c.h_in, st * sizeof(double));
    int off = 0;
    for (int k = 0; k < npieces; k++) {
        int len = lens[k];
        double *px = tu_dalloc((size_t)B * len * D), *py = tu_dalloc((size_t)B * len * D);
        slice_rows(c.x, px, B, L, D, off, len);
        MgCemaArgs a = {.B = B, .L = len, .D = D, .N = N, .x = px, .alpha = c.alpha, .delta = c.delta,
                        .theta = c.theta, .gamma = c.gamma, .omega = c.omega};
        a.h_in = states + k * st;
        a.h_out = states + (k + 1) * st;
        a.y = py;
        cpu_cema_forward_f64(&mg_cpu_backend_f64, &a);
        unslice_rows(py, y, B, L, D, off, len);
        free(px);
        free(py);
        off += len;
    }
    double *dho = tu_dalloc(st);
    memcpy(dho, c.gh, st * sizeof(double));
    for (int k = npieces - 1; k >= 0; k--) {
        int len = lens[k];
        off -= len;
        double *px = tu_dalloc((size_t)B * len * D), *pdy = tu_dalloc((size_t)B * len * D),
               *pdx = tu_dalloc((size_t)B * len * D);
        slice_rows(c.x, px, B, L, D, off, len);
        slice_rows(c.dy, pdy, B, L, D, off, len);
        MgCemaArgs a = {.B = B, .L = len, .D = D, .N = N, .x = px, .alpha = c.alpha, .delta = c.delta,
                        .theta = c.theta, .gamma = c.gamma, .omega = c.omega};
        a.h_in = states + k * st;
        a.dy = pdy;
        a.dh_out = dho;
        a.dx = pdx;
        a.dalpha = g.dalpha;
        a.ddelta = g.ddelta;
        a.dtheta = g.dtheta;
        a.dgamma = g.dgamma;
        a.domega = g.domega;
        a.dh_in = g.dh_in;
        cpu_cema_backward_f64(&mg_cpu_backend_f64, &a);
        unslice_rows(pdx, g.dx, B, L, D, off, len);
        memcpy(dho, g.dh_in, st * sizeof(double));
        free(px);
        free(pdy);
        free(pdx);
    }
    double ef = fmax(rel(y, c.y, n), rel(states + npieces * st, c.h_out, st));
    double eb = 0;
    eb = fmax(eb, rel(g.dx, ref.dx, n));
    eb = fmax(eb, rel(g.dalpha, ref.dalpha, dn));
    eb = fmax(eb, rel(g.ddelta, ref.ddelta, dn));
    eb = fmax(eb, rel(g.dtheta, ref.dtheta, D));
    eb = fmax(eb, rel(g.dgamma, ref.dgamma, 2 * dn));
    eb = fmax(eb, rel(g.domega, ref.domega, D));
    eb = fmax(eb, rel(g.dh_in, ref.dh_in, st));
    char name[96], lbuf[48] = "";
    for (int k = 0; k < npieces; k++)
        snprintf(lbuf + strlen(lbuf), sizeof lbuf - strlen(lbuf), "%s%d", k ? "_" : "", lens[k]);
    snprintf(name, sizeof name, "cema_pieces_%d_(%s)_forward_and_state", npieces, lbuf);
    tu_check_err(name, ef, 1e-12);
    snprintf(name, sizeof name, "cema_pieces_%d_(%s)_backward", npieces, lbuf);
    tu_check_err(name, eb, 1e-12);
    free(y);
    free(states);
    free(dho);
    grads_free(&g);
    grads_free(&ref);
    cema_free(&c);
}

/* ---- float32 against float64 ----------------------------------------------------------------------- */
typedef struct {
    float *x, *alpha, *delta, *theta, *gamma, *omega, *h_in, *dy, *gh, *y, *h_out;
    float *dx, *dalpha, *ddelta, *dtheta, *dgamma, *domega, *dh_in;
} Cema32;

/* Round the float64 inputs to float so both precisions see identical data. */
static float *round32(double *src, size_t n) {
    float *d = tu_f32_of(src, n);
    tu_from_f32(src, d, n);
    return d;
}

static void run_f32(Cema *c, int backward, double *err_fwd, double *err_bwd, double *err_first, double *err_last) {
    const int B = c->B, L = c->L, D = c->D, N = c->N;
    const size_t n = (size_t)B * L * D, dn = (size_t)D * N, st = (size_t)B * dn * 2;
    Cema32 f = {0};
    f.x = round32(c->x, n); f.alpha = round32(c->alpha, dn); f.delta = round32(c->delta, dn);
    f.theta = round32(c->theta, D); f.gamma = round32(c->gamma, 2 * dn); f.omega = round32(c->omega, D);
    f.h_in = round32(c->h_in, st); f.dy = round32(c->dy, n); f.gh = round32(c->gh, st);
    f.y = calloc(n, sizeof(float)); f.h_out = calloc(st, sizeof(float));
    f.dx = calloc(n, sizeof(float)); f.dalpha = calloc(dn, sizeof(float)); f.ddelta = calloc(dn, sizeof(float));
    f.dtheta = calloc(D, sizeof(float)); f.dgamma = calloc(2 * dn, sizeof(float));
    f.domega = calloc(D, sizeof(float)); f.dh_in = calloc(st, sizeof(float));
    cema_fwd(c);
    MgCemaArgs a = {.B = B, .L = L, .D = D, .N = N, .x = f.x, .alpha = f.alpha, .delta = f.delta,
                    .theta = f.theta, .gamma = f.gamma, .omega = f.omega, .h_in = c->use_hin ? f.h_in : NULL,
                    .h_out = f.h_out, .y = f.y, .dy = f.dy, .dh_out = c->use_dhout ? f.gh : NULL,
                    .dx = f.dx, .dalpha = f.dalpha, .ddelta = f.ddelta, .dtheta = f.dtheta,
                    .dgamma = f.dgamma, .domega = f.domega, .dh_in = f.dh_in};
    cpu_cema_forward_f32(&mg_cpu_backend_f32, &a);
    double fl = tu_grad_floor(c->y, n);
    *err_fwd = fmax(tu_max_rel_err_f32(f.y, c->y, n, fl), tu_max_rel_err_f32(f.h_out, c->h_out, st,
                                                                             tu_grad_floor(c->h_out, st)));
    if (err_first) { /* error over the first and the last eighth of the sequence, same floor */
        double e0 = 0, e1 = 0;
        int w = L / 8;
        for (int b = 0; b < B; b++) {
            e0 = fmax(e0, tu_max_rel_err_f32(f.y + (size_t)b * L * D, c->y + (size_t)b * L * D, (size_t)w * D, fl));
            size_t o = ((size_t)b * L + L - w) * D;
            e1 = fmax(e1, tu_max_rel_err_f32(f.y + o, c->y + o, (size_t)w * D, fl));
        }
        *err_first = e0;
        *err_last = e1;
    }
    if (backward) {
        CemaGrads g = grads_new(c);
        cema_bwd(c, &g);
        cpu_cema_backward_f32(&mg_cpu_backend_f32, &a);
        double e = 0;
        e = fmax(e, tu_max_rel_err_f32(f.dx, g.dx, n, tu_grad_floor(g.dx, n)));
        e = fmax(e, tu_max_rel_err_f32(f.dalpha, g.dalpha, dn, tu_grad_floor(g.dalpha, dn)));
        e = fmax(e, tu_max_rel_err_f32(f.ddelta, g.ddelta, dn, tu_grad_floor(g.ddelta, dn)));
        e = fmax(e, tu_max_rel_err_f32(f.dtheta, g.dtheta, D, tu_grad_floor(g.dtheta, D)));
        e = fmax(e, tu_max_rel_err_f32(f.dgamma, g.dgamma, 2 * dn, tu_grad_floor(g.dgamma, 2 * dn)));
        e = fmax(e, tu_max_rel_err_f32(f.domega, g.domega, D, tu_grad_floor(g.domega, D)));
        e = fmax(e, tu_max_rel_err_f32(f.dh_in, g.dh_in, st, tu_grad_floor(g.dh_in, st)));
        *err_bwd = e;
        grads_free(&g);
    }
    float **all = (float **)&f;
    for (size_t k = 0; k < sizeof(f) / sizeof(float *); k++) free(all[k]);
}

static void test_f32(void) {
    Cema c = cema_new(2, 300, 24, 16, 1, 1);
    double ef, eb;
    run_f32(&c, 1, &ef, &eb, NULL, NULL);
    tu_check_err("cema_f32_forward_vs_f64", ef, 1e-6);
    tu_check_err("cema_f32_backward_vs_f64", eb, 1e-6);
    cema_free(&c);

    /* Long sequence with long memory (|q| up to ~0.998): the float32 recurrence must not drift. */
    Cema l = cema_new(1, 4096, 32, 16, 1, 1);
    for (int j = 0; j < l.D; j++)
        for (int k = 0; k < l.N; k++) l.delta[(size_t)j * l.N + k] = j % 2 ? -6.0 + 0.5 * tu_normal() : 0.5 * tu_normal();
    double e0, e1;
    run_f32(&l, 1, &ef, &eb, &e0, &e1);
    char msg[160];
    snprintf(msg, sizeof msg, "cema_f32_long_L4096_forward_vs_f64 (first 512 steps %.2e, last 512 steps %.2e)", e0,
             e1);
    tu_check_err(msg, ef, 1e-6);
    tu_check_err("cema_f32_long_L4096_backward_vs_f64", eb, 1e-6);
    tu_check(e1 <= fmax(10 * e0, 1e-5), "cema_f32_long_no_drift", "last-eighth error %.2e vs first-eighth %.2e", e1, e0);
    cema_free(&l);
}

/* ---- accumulate flag and thread-count determinism ---------------------------------------------------- */
static void test_accumulate_and_threads(void) {
    Cema c = cema_new(3, 150, 40, 16, 1, 1);
    CemaGrads g1 = grads_new(&c), g2 = grads_new(&c), g3 = grads_new(&c);
    const size_t n = (size_t)c.B * c.L * c.D, dn = (size_t)c.D * c.N, st = (size_t)c.B * dn * 2;
    int nt = mg_get_threads();
    mg_set_threads(1);
    cema_bwd(&c, &g1);
    mg_set_threads(nt > 1 ? nt : 2);
    cema_bwd(&c, &g2);
    mg_set_threads(nt);
    int same = !memcmp(g1.dx, g2.dx, n * 8) && !memcmp(g1.dalpha, g2.dalpha, dn * 8) &&
               !memcmp(g1.ddelta, g2.ddelta, dn * 8) && !memcmp(g1.dtheta, g2.dtheta, c.D * 8) &&
               !memcmp(g1.dgamma, g2.dgamma, 2 * dn * 8) && !memcmp(g1.domega, g2.domega, c.D * 8) &&
               !memcmp(g1.dh_in, g2.dh_in, st * 8);
    tu_check(same, "cema_backward_bitwise_identical_1_vs_N_threads", "%s", "");

    double *pre = tu_dalloc(n);
    tu_fill_normal(pre, n, 1.0);
    memcpy(g3.dx, pre, n * 8);
    memcpy(g3.dalpha, g1.dalpha, dn * 8);
    memcpy(g3.dgamma, g1.dgamma, 2 * dn * 8);
    memcpy(g3.dtheta, g1.dtheta, c.D * 8);
    MgCemaArgs a = cema_args(&c);
    a.dx = g3.dx; a.dalpha = g3.dalpha; a.dgamma = g3.dgamma; a.dtheta = g3.dtheta; a.dh_in = g3.dh_in;
    a.accumulate = 1; /* ddelta, domega NULL: not needed */
    cpu_cema_backward_f64(&mg_cpu_backend_f64, &a);
    double e = 0;
    for (size_t k = 0; k < n; k++) e = fmax(e, fabs(g3.dx[k] - (pre[k] + g1.dx[k])));
    for (size_t k = 0; k < dn; k++) e = fmax(e, fabs(g3.dalpha[k] - 2 * g1.dalpha[k]));
    for (size_t k = 0; k < 2 * dn; k++) e = fmax(e, fabs(g3.dgamma[k] - 2 * g1.dgamma[k]));
    for (int k = 0; k < c.D; k++) e = fmax(e, fabs(g3.dtheta[k] - 2 * g1.dtheta[k]));
    for (size_t k = 0; k < st; k++) e = fmax(e, fabs(g3.dh_in[k] - g1.dh_in[k]));
    tu_check_err("cema_backward_accumulate_semantics", e, 1e-12);
    free(pre);
    grads_free(&g1);
    grads_free(&g2);
    grads_free(&g3);
    cema_free(&c);
}

int main(void) {
    tu_init("test_cema");
    /* first, before any OpenMP thread pool exists in this process */
    test_refuse(65, 0);
    test_refuse(65, 1);
    test_refuse(0, 0);

    test_closed_form();

    /* L spans several 64-step checkpoint segments with a partial last one; D leaves a partial block */
    test_gradcheck("N3_L150_D18", 2, 150, 18, 3, 1, 1);
    test_gradcheck("N64_L70_D6", 1, 70, 6, 64, 1, 1);
    test_gradcheck("N16_L64_D17_zero_state", 2, 64, 17, 16, 0, 0);
    test_gradcheck("N1_L5_D3", 2, 5, 3, 1, 1, 1);

    const int p1[] = {200}, p2[] = {100, 100}, p3[] = {64, 1, 135}, p4[] = {37, 64, 50, 49}, p2b[] = {199, 1};
    test_pieces(1, p1);
    test_pieces(2, p2);
    test_pieces(2, p2b);
    test_pieces(3, p3);
    test_pieces(4, p4);

    test_f32();
    test_accumulate_and_threads();
    return tu_finish();
}
