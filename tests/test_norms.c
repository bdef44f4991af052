/* RMSNorm, LayerNorm and Q/K normalisation: forward against naive formulas, float64 gradient checks of
 * every input and parameter, float32 vs float64 forward, the accumulate flag, recomputation when nothing
 * was saved, and bitwise determinism of the parameter gradients for 1 vs 2 threads. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/cpu_ops.h"
#include "test_util.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static const MgBackend *BE64 = &mg_cpu_backend_f64;
static const MgBackend *BE32 = &mg_cpu_backend_f32;

static double *drand(size_t n, double lo, double hi) {
    double *p = tu_dalloc(n);
    tu_fill_signed(p, n, lo, hi);
    return p;
}

/* ---------------------------------------------------------------------------------------------- */
/* RMSNorm                                                                                           */

typedef struct {
    int64_t T;
    int D;
    double eps;
    double *x, *w, *y, *dy, *rstd;
} RmsCtx;

static double rms_loss(void *p) {
    RmsCtx *c = p;
    MgRMSNormArgs a = {.T = c->T, .D = c->D, .eps = c->eps, .x = c->x, .weight = c->w, .y = c->y,
                       .saved_rstd = c->rstd};
    cpu_rmsnorm_forward_f64(BE64, &a);
    return tu_dot(c->dy, c->y, (size_t)c->T * c->D);
}

static void test_rmsnorm(int with_weight) {
    const int64_t T = 6;
    const int D = 11;
    const size_t n = (size_t)T * D;
    const char *tag = with_weight ? "rmsnorm" : "rmsnorm_noweight";
    char name[128];
    RmsCtx c = {.T = T, .D = D, .eps = 1e-5};
    c.x = drand(n, 0.2, 2.0);
    c.w = with_weight ? drand(D, 0.05, 0.8) : NULL;
    c.y = tu_dalloc(n);
    c.dy = drand(n, 0.1, 1.0);
    c.rstd = tu_dalloc(T);
    rms_loss(&c);

    /* forward against the naive formula */
    double *ref = tu_dalloc(n), *rref = tu_dalloc(T);
    for (int64_t t = 0; t < T; t++) {
        double ss = 0;
        for (int j = 0; j < D; j++) ss += c.x[t * D + j] * c.x[t * D + j];
        rref[t] = 1.0 / sqrt(ss / D + c.eps);
        for (int j = 0; j < D; j++) ref[t * D + j] = c.x[t * D + j] * rref[t] * (1 + (c.w ? c.w[j] : 0));
    }
    snprintf(name, sizeof name, "%s_forward_vs_naive", tag);
    tu_check_err(name, tu_max_rel_err(c.y, ref, n, 1e-12), 1e-13);
    snprintf(name, sizeof name, "%s_saved_rstd", tag);
    tu_check_err(name, tu_max_rel_err(c.rstd, rref, (size_t)T, 1e-12), 1e-13);

    /* analytic gradients */
    double *dx = tu_dalloc(n), *dw = tu_dalloc(D);
    MgRMSNormArgs a = {.T = T, .D = D, .eps = c.eps, .x = c.x, .weight = c.w, .y = c.y, .saved_rstd = c.rstd,
                       .dy = c.dy, .dx = dx, .dweight = dw};
    cpu_rmsnorm_backward_f64(BE64, &a);
    snprintf(name, sizeof name, "%s_grad_x", tag);
    tu_grad_check(name, c.x, n, dx, rms_loss, &c, 1e-6);
    if (c.w) {
        snprintf(name, sizeof name, "%s_grad_weight", tag);
        tu_grad_check(name, c.w, D, dw, rms_loss, &c, 1e-6);
    }

    /* accumulate: dx += and dweight += onto random initial contents */
    double *dx2 = drand(n, 0.1, 1.0), *dw2 = drand(D, 0.1, 1.0), *exp_dx = tu_dalloc(n), *exp_dw = tu_dalloc(D);
    for (size_t i = 0; i < n; i++) exp_dx[i] = dx2[i] + dx[i];
    for (int j = 0; j < D; j++) exp_dw[j] = dw2[j] + dw[j];
    rms_loss(&c);
    a.dx = dx2;
    a.dweight = dw2;
    a.accumulate = 1;
    cpu_rmsnorm_backward_f64(BE64, &a);
    snprintf(name, sizeof name, "%s_accumulate_dx", tag);
    tu_check_err(name, tu_max_rel_err(dx2, exp_dx, n, 1e-12), 1e-14);
    if (c.w) {
        snprintf(name, sizeof name, "%s_accumulate_dweight", tag);
        tu_check_err(name, tu_max_rel_err(dw2, exp_dw, D, 1e-12), 1e-14);
    }

    /* no saved rstd: backward recomputes it */
    double *dx3 = tu_dalloc(n), *dw3 = tu_dalloc(D);
    a.dx = dx3;
    a.dweight = dw3;
    a.accumulate = 0;
    a.saved_rstd = NULL;
    cpu_rmsnorm_backward_f64(BE64, &a);
    snprintf(name, sizeof name, "%s_backward_recomputes_rstd", tag);
    tu_check_err(name, fmax(tu_max_rel_err(dx3, dx, n, 1e-12), tu_max_rel_err(dw3, dw, D, 1e-12)), 1e-13);

    free(c.x); free(c.w); free(c.y); free(c.dy); free(c.rstd); free(ref); free(rref);
    free(dx); free(dw); free(dx2); free(dw2); free(exp_dx); free(exp_dw); free(dx3); free(dw3);
}

/* ---------------------------------------------------------------------------------------------- */
/* LayerNorm                                                                                         */

typedef struct {
    int64_t T;
    int D;
    double eps;
    double *x, *w, *b, *y, *dy, *mean, *rstd;
} LnCtx;

static double ln_loss(void *p) {
    LnCtx *c = p;
    MgLayerNormArgs a = {.T = c->T, .D = c->D, .eps = c->eps, .x = c->x, .weight = c->w, .bias = c->b,
                         .y = c->y, .saved_mean = c->mean, .saved_rstd = c->rstd};
    cpu_layernorm_forward_f64(BE64, &a);
    return tu_dot(c->dy, c->y, (size_t)c->T * c->D);
}

static void test_layernorm(void) {
    const int64_t T = 6;
    const int D = 10;
    const size_t n = (size_t)T * D;
    LnCtx c = {.T = T, .D = D, .eps = 1e-5};
    c.x = drand(n, 0.2, 2.0);
    for (size_t i = 0; i < n; i++) c.x[i] += 0.7; /* nonzero mean */
    c.w = drand(D, 0.05, 0.8);
    c.b = drand(D, 0.05, 0.8);
    c.y = tu_dalloc(n);
    c.dy = drand(n, 0.1, 1.0);
    c.mean = tu_dalloc(T);
    c.rstd = tu_dalloc(T);
    ln_loss(&c);

    double *ref = tu_dalloc(n);
    for (int64_t t = 0; t < T; t++) {
        double mu = 0, var = 0;
        for (int j = 0; j < D; j++) mu += c.x[t * D + j];
        mu /= D;
        for (int j = 0; j < D; j++) var += (c.x[t * D + j] - mu) * (c.x[t * D + j] - mu);
        var /= D;
        for (int j = 0; j < D; j++)
            ref[t * D + j] = (c.x[t * D + j] - mu) / sqrt(var + c.eps) * (1 + c.w[j]) + c.b[j];
    }
    tu_check_err("layernorm_forward_vs_naive", tu_max_rel_err(c.y, ref, n, 1e-12), 1e-13);

    double *dx = tu_dalloc(n), *dw = tu_dalloc(D), *db = tu_dalloc(D);
    MgLayerNormArgs a = {.T = T, .D = D, .eps = c.eps, .x = c.x, .weight = c.w, .bias = c.b, .y = c.y,
                         .saved_mean = c.mean, .saved_rstd = c.rstd, .dy = c.dy, .dx = dx, .dweight = dw,
                         .dbias = db};
    cpu_layernorm_backward_f64(BE64, &a);
    tu_grad_check("layernorm_grad_x", c.x, n, dx, ln_loss, &c, 1e-6);
    tu_grad_check("layernorm_grad_weight", c.w, D, dw, ln_loss, &c, 1e-6);
    tu_grad_check("layernorm_grad_bias", c.b, D, db, ln_loss, &c, 1e-6);

    double *dx2 = drand(n, 0.1, 1.0), *exp_dx = tu_dalloc(n), *db2 = drand(D, 0.1, 1.0), *exp_db = tu_dalloc(D);
    for (size_t i = 0; i < n; i++) exp_dx[i] = dx2[i] + dx[i];
    for (int j = 0; j < D; j++) exp_db[j] = db2[j] + db[j];
    ln_loss(&c);
    a.dx = dx2;
    a.dweight = NULL;
    a.dbias = db2;
    a.accumulate = 1;
    cpu_layernorm_backward_f64(BE64, &a);
    tu_check_err("layernorm_accumulate_dx", tu_max_rel_err(dx2, exp_dx, n, 1e-12), 1e-14);
    tu_check_err("layernorm_accumulate_dbias", tu_max_rel_err(db2, exp_db, D, 1e-12), 1e-14);

    free(c.x); free(c.w); free(c.b); free(c.y); free(c.dy); free(c.mean); free(c.rstd); free(ref);
    free(dx); free(dw); free(db); free(dx2); free(exp_dx); free(db2); free(exp_db);
}

/* ---------------------------------------------------------------------------------------------- */
/* Q/K normalisation                                                                                 */

typedef struct {
    int64_t T;
    int Z, H;
    double eps;
    double *z, *gamma, *beta, *q, *k, *dq, *dk, *rstd;
} QkCtx;

static double qk_loss(void *p) {
    QkCtx *c = p;
    MgQKNormArgs a = {.T = c->T, .Z = c->Z, .H = c->H, .eps = c->eps, .z = c->z, .gamma = c->gamma,
                      .beta = c->beta, .q = c->q, .k = c->k, .saved_rstd = c->rstd};
    cpu_qknorm_forward_f64(BE64, &a);
    const size_t n = (size_t)c->T * c->Z;
    return tu_dot(c->dq, c->q, n) + tu_dot(c->dk, c->k, n);
}

static void test_qknorm(void) {
    const int64_t T = 5;
    const int Z = 12, H = 3, dz = Z / H;
    const size_t n = (size_t)T * Z;
    QkCtx c = {.T = T, .Z = Z, .H = H, .eps = 1e-5};
    c.z = drand(n, 0.2, 2.0);
    c.gamma = drand(2 * Z, 0.05, 0.8);
    c.beta = drand(2 * Z, 0.05, 0.8);
    c.q = tu_dalloc(n);
    c.k = tu_dalloc(n);
    c.dq = drand(n, 0.1, 1.0);
    c.dk = drand(n, 0.1, 1.0);
    c.rstd = tu_dalloc((size_t)T * H);
    qk_loss(&c);

    double *rq = tu_dalloc(n), *rk = tu_dalloc(n);
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            const double *zh = c.z + t * Z + h * dz;
            double ss = 0;
            for (int j = 0; j < dz; j++) ss += zh[j] * zh[j];
            const double r = 1.0 / sqrt(ss / dz + c.eps);
            for (int j = 0; j < dz; j++) {
                const int col = h * dz + j;
                rq[t * Z + col] = zh[j] * r * (1 + c.gamma[col]) / sqrt(dz) + c.beta[col];
                rk[t * Z + col] = zh[j] * r * (1 + c.gamma[Z + col]) / sqrt(dz) + c.beta[Z + col];
            }
        }
    tu_check_err("qknorm_forward_q_vs_naive", tu_max_rel_err(c.q, rq, n, 1e-12), 1e-13);
    tu_check_err("qknorm_forward_k_vs_naive", tu_max_rel_err(c.k, rk, n, 1e-12), 1e-13);

    double *dzv = tu_dalloc(n), *dg = tu_dalloc(2 * Z), *dbt = tu_dalloc(2 * Z);
    MgQKNormArgs a = {.T = T, .Z = Z, .H = H, .eps = c.eps, .z = c.z, .gamma = c.gamma, .beta = c.beta,
                      .q = c.q, .k = c.k, .saved_rstd = c.rstd, .dq = c.dq, .dk = c.dk, .dz = dzv, .dgamma = dg,
                      .dbeta = dbt};
    cpu_qknorm_backward_f64(BE64, &a);
    tu_grad_check("qknorm_grad_z", c.z, n, dzv, qk_loss, &c, 1e-6);
    tu_grad_check("qknorm_grad_gamma", c.gamma, 2 * Z, dg, qk_loss, &c, 1e-6);
    tu_grad_check("qknorm_grad_beta", c.beta, 2 * Z, dbt, qk_loss, &c, 1e-6);

    double *dz2 = drand(n, 0.1, 1.0), *exp_dz = tu_dalloc(n);
    for (size_t i = 0; i < n; i++) exp_dz[i] = dz2[i] + dzv[i];
    qk_loss(&c);
    a.dz = dz2;
    a.dgamma = a.dbeta = NULL;
    a.accumulate = 1;
    cpu_qknorm_backward_f64(BE64, &a);
    tu_check_err("qknorm_accumulate_dz", tu_max_rel_err(dz2, exp_dz, n, 1e-12), 1e-14);

    free(c.z); free(c.gamma); free(c.beta); free(c.q); free(c.k); free(c.dq); free(c.dk); free(c.rstd);
    free(rq); free(rk); free(dzv); free(dg); free(dbt); free(dz2); free(exp_dz);
}

/* ---------------------------------------------------------------------------------------------- */
/* float32 vs float64 forward, and thread-count independence of the float32 parameter gradients    */

static void test_f32(void) {
    const int64_t T = 200;
    const int D = 96, H = 4;
    const size_t n = (size_t)T * D;
    double *x = drand(n, 0.05, 2.0), *w = drand(2 * D, 0.05, 0.8), *b = drand(2 * D, 0.05, 0.8);
    double *dy = drand(n, 0.1, 1.0), *dy2 = drand(n, 0.1, 1.0);
    double *y64 = tu_dalloc(n), *k64 = tu_dalloc(n);
    float *xf = tu_f32_of(x, n), *wf = tu_f32_of(w, 2 * D), *bf = tu_f32_of(b, 2 * D), *dyf = tu_f32_of(dy, n),
          *dy2f = tu_f32_of(dy2, n);
    float *yf = calloc(n, sizeof(float)), *kf = calloc(n, sizeof(float)), *sf = calloc((size_t)T * H, sizeof(float)),
          *mf = calloc(T, sizeof(float));
    /* the float64 reference sees the same (float32-rounded) inputs, so only the op's arithmetic differs */
    tu_from_f32(x, xf, n);
    tu_from_f32(w, wf, 2 * D);
    tu_from_f32(b, bf, 2 * D);

    MgRMSNormArgs r64 = {.T = T, .D = D, .eps = 1e-5, .x = x, .weight = w, .y = y64};
    MgRMSNormArgs r32 = {.T = T, .D = D, .eps = 1e-5, .x = xf, .weight = wf, .y = yf, .saved_rstd = sf};
    cpu_rmsnorm_forward_f64(BE64, &r64);
    cpu_rmsnorm_forward_f32(BE32, &r32);
    tu_check_err("rmsnorm_f32_vs_f64_forward", tu_max_rel_err_f32(yf, y64, n, 1e-2 * tu_max_abs(y64, n)), 1e-5);

    MgLayerNormArgs l64 = {.T = T, .D = D, .eps = 1e-5, .x = x, .weight = w, .bias = b, .y = y64};
    MgLayerNormArgs l32 = {.T = T, .D = D, .eps = 1e-5, .x = xf, .weight = wf, .bias = bf, .y = yf,
                           .saved_mean = mf, .saved_rstd = sf};
    cpu_layernorm_forward_f64(BE64, &l64);
    cpu_layernorm_forward_f32(BE32, &l32);
    /* outputs near zero come from cancellation of the normalised term with the bias, so their float32
     * error is one ulp of the terms: hence the floor of 1e-2 * max|y| and a tolerance of 3e-5 */
    tu_check_err("layernorm_f32_vs_f64_forward", tu_max_rel_err_f32(yf, y64, n, 1e-2 * tu_max_abs(y64, n)),
                 3e-5);

    MgQKNormArgs q64 = {.T = T, .Z = D, .H = H, .eps = 1e-5, .z = x, .gamma = w, .beta = b, .q = y64, .k = k64};
    MgQKNormArgs q32 = {.T = T, .Z = D, .H = H, .eps = 1e-5, .z = xf, .gamma = wf, .beta = bf, .q = yf, .k = kf,
                        .saved_rstd = sf};
    cpu_qknorm_forward_f64(BE64, &q64);
    cpu_qknorm_forward_f32(BE32, &q32);
    double e = fmax(tu_max_rel_err_f32(yf, y64, n, 1e-2 * tu_max_abs(y64, n)),
                    tu_max_rel_err_f32(kf, k64, n, 1e-2 * tu_max_abs(k64, n)));
    tu_check_err("qknorm_f32_vs_f64_forward", e, 3e-5);

#ifdef _OPENMP
    /* Parameter gradients (cross-row reductions) must be bitwise identical for 1 and 2 threads. */
    const int saved_threads = omp_get_max_threads();
    float *g[2][5];
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run + 1);
        for (int i = 0; i < 5; i++) g[run][i] = calloc((size_t)(i == 0 ? n : 2 * D), sizeof(float));
        /* dx (g[.][0]) written by qknorm, then dweight of rmsnorm, dweight/dbias of layernorm, dgamma/dbeta */
        cpu_rmsnorm_forward_f32(BE32, &r32);
        MgRMSNormArgs rb = r32;
        rb.dy = dyf;
        rb.dx = g[run][0];
        rb.dweight = g[run][1];
        cpu_rmsnorm_backward_f32(BE32, &rb);
        cpu_layernorm_forward_f32(BE32, &l32);
        MgLayerNormArgs lb = l32;
        lb.dy = dyf;
        lb.dx = g[run][0];
        lb.accumulate = 1;
        lb.dweight = g[run][2];
        lb.dbias = g[run][2] + D;
        cpu_layernorm_backward_f32(BE32, &lb);
        cpu_qknorm_forward_f32(BE32, &q32);
        MgQKNormArgs qb = q32;
        qb.dq = dyf;
        qb.dk = dy2f;
        qb.dz = g[run][0];
        qb.accumulate = 1;
        qb.dgamma = g[run][3];
        qb.dbeta = g[run][4];
        cpu_qknorm_backward_f32(BE32, &qb);
    }
    omp_set_num_threads(saved_threads);
    int same = 1;
    for (int i = 0; i < 5; i++)
        same &= !memcmp(g[0][i], g[1][i], sizeof(float) * (i == 0 ? n : 2 * D));
    tu_check(same, "norms_f32_backward_bitwise_1_vs_2_threads", "T=%lld, dx and all parameter gradients",
             (long long)T);
    for (int run = 0; run < 2; run++)
        for (int i = 0; i < 5; i++) free(g[run][i]);
#else
    tu_skip("norms_f32_backward_bitwise_1_vs_2_threads", "this build has no OpenMP, so there is one thread only");
#endif
    free(x); free(w); free(b); free(dy); free(dy2); free(y64); free(k64);
    free(xf); free(wf); free(bf); free(dyf); free(dy2f); free(yf); free(kf); free(sf); free(mf);
}

int main(void) {
    tu_init("test_norms");
    test_rmsnorm(1);
    test_rmsnorm(0);
    test_layernorm();
    test_qknorm();
    test_f32();
    return tu_finish();
}
