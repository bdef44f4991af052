/* TimestepNorm (kernels/cpu/timestep_norm.c): forward against a naive cumulative mean/variance over all
 * scalars of the group, float64 gradient checks (inputs, parameters, carried-in state, with the loss also
 * depending on the carried-out state), padding masks, exact state carrying across 1..4 pieces, float32
 * against float64, accumulate semantics and thread-count determinism. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/cpu_ops.h"
#include "test_util.h"

typedef struct {
    int B, L, D, G;
    double eps;
    int carried;               /* pass count/mean/var in */
    double *x, *w, *bias;      /* B*L*D, D, D */
    uint8_t *mask;             /* B*L or NULL */
    int64_t *count_in;         /* B */
    double *mean_in, *var_in;  /* B*G */
    double *dy, *wm, *wv;      /* loss weights on y, mean_out, var_out */
    /* outputs of the last forward */
    double *y, *smean, *srstd, *mean_out, *var_out;
    int64_t *count_out;
} Tsn;


static Tsn tsn_new(int B, int L, int D, int G, int carried, int masked) {
    Tsn c = {.B = B, .L = L, .D = D, .G = G, .eps = 1e-5, .carried = carried};
    size_t n = (size_t)B * L * D;
    c.x = tu_dalloc(n);
    /* Per-row offset and a slow drift, so the running statistics keep moving. */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < L; t++)
            for (int i = 0; i < D; i++)
                c.x[((size_t)b * L + t) * D + i] =
                    0.7 * (b + 1) + 0.05 * t + (0.6 + 0.4 * tu_uniform()) * tu_normal();
    c.w = tu_dalloc(D);
    c.bias = tu_dalloc(D);
    tu_fill_normal(c.w, D, 0.3);
    tu_fill_normal(c.bias, D, 0.3);
    c.count_in = calloc(B, sizeof(int64_t));
    c.mean_in = tu_dalloc((size_t)B * G);
    c.var_in = tu_dalloc((size_t)B * G);
    for (int b = 0; b < B; b++) c.count_in[b] = 2 + 3 * b;
    tu_fill_normal(c.mean_in, (size_t)B * G, 1.0);
    tu_fill_uniform(c.var_in, (size_t)B * G, 0.5, 2.0);
    if (masked) {
        c.mask = calloc((size_t)B * L, 1);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < L; t++) c.mask[(size_t)b * L + t] = tu_uniform() < 0.3;
        c.mask[0] = 1; /* a padded first step */
        c.mask[1] = 0;
        if (B >= 3)    /* a row that is padding only: its state passes through unchanged */
            for (int t = 0; t < L; t++) c.mask[(size_t)2 * L + t] = 1;
    }
    c.dy = tu_dalloc(n);
    c.wm = tu_dalloc((size_t)B * G);
    c.wv = tu_dalloc((size_t)B * G);
    tu_fill_normal(c.dy, n, 1.0);
    tu_fill_normal(c.wm, (size_t)B * G, 1.0);
    tu_fill_normal(c.wv, (size_t)B * G, 1.0);
    c.y = tu_dalloc(n);
    c.smean = tu_dalloc((size_t)B * L * G);
    c.srstd = tu_dalloc((size_t)B * L * G);
    c.mean_out = tu_dalloc((size_t)B * G);
    c.var_out = tu_dalloc((size_t)B * G);
    c.count_out = calloc(B, sizeof(int64_t));
    return c;
}

static void tsn_free(Tsn *c) {
    free(c->x); free(c->w); free(c->bias); free(c->mask); free(c->count_in); free(c->mean_in);
    free(c->var_in); free(c->dy); free(c->wm); free(c->wv); free(c->y); free(c->smean); free(c->srstd);
    free(c->mean_out); free(c->var_out); free(c->count_out);
}

static MgTimestepNormArgs tsn_args(Tsn *c) {
    MgTimestepNormArgs a = {.B = c->B, .L = c->L, .D = c->D, .G = c->G, .eps = c->eps};
    a.x = c->x;
    a.pad_mask = c->mask;
    a.weight = c->w;
    a.bias = c->bias;
    if (c->carried) {
        a.count_in = c->count_in;
        a.mean_in = c->mean_in;
        a.var_in = c->var_in;
    }
    a.count_out = c->count_out;
    a.mean_out = c->mean_out;
    a.var_out = c->var_out;
    a.y = c->y;
    a.saved_mean = c->smean;
    a.saved_rstd = c->srstd;
    a.dy = c->dy;
    a.dmean_out = c->wm;
    a.dvar_out = c->wv;
    return a;
}

static void tsn_fwd(Tsn *c) {
    MgTimestepNormArgs a = tsn_args(c);
    cpu_timestep_norm_forward_f64(&mg_cpu_backend_f64, &a);
}

static double tsn_loss(void *ctx) {
    Tsn *c = ctx;
    tsn_fwd(c);
    size_t bg = (size_t)c->B * c->G;
    return tu_dot(c->dy, c->y, (size_t)c->B * c->L * c->D) + tu_dot(c->wm, c->mean_out, bg) +
           tu_dot(c->wv, c->var_out, bg);
}

typedef struct {
    double *dx, *dw, *db, *dmi, *dvi;
} TsnGrads;

static TsnGrads grads_new(const Tsn *c) {
    TsnGrads g = {tu_dalloc((size_t)c->B * c->L * c->D), tu_dalloc(c->D), tu_dalloc(c->D), tu_dalloc((size_t)c->B * c->G),
                  tu_dalloc((size_t)c->B * c->G)};
    return g;
}
static void grads_free(TsnGrads *g) { free(g->dx); free(g->dw); free(g->db); free(g->dmi); free(g->dvi); }

static void tsn_bwd(Tsn *c, TsnGrads *g) {
    tsn_fwd(c);
    MgTimestepNormArgs a = tsn_args(c);
    a.dx = g->dx;
    a.dweight = g->dw;
    a.dbias = g->db;
    a.dmean_in = g->dmi;
    a.dvar_in = g->dvi;
    cpu_timestep_norm_backward_f64(&mg_cpu_backend_f64, &a);
}

/* ---- naive forward: statistics of every scalar of the group up to t, plus the carried population ---- */
static void naive_forward(const Tsn *c, double *y, double *mean, double *rstd, double *mean_f, double *var_f,
                          int64_t *count_f) {
    const int B = c->B, L = c->L, D = c->D, G = c->G, dg = D / G;
    for (int b = 0; b < B; b++)
        for (int g = 0; g < G; g++) {
            double n0 = c->carried ? (double)c->count_in[b] * dg : 0.0;
            double mu0 = c->carried ? c->mean_in[b * G + g] : 0.0, v0 = c->carried ? c->var_in[b * G + g] : 1.0;
            int64_t tokens = c->carried ? c->count_in[b] : 0;
            double mu = mu0, var = v0;
            for (int t = 0; t < L; t++) {
                int pad = c->mask && c->mask[(size_t)b * L + t];
                tokens += !pad;
                /* two-pass over all valid scalars s <= t of this group */
                double sum = n0 * mu0, cnt = n0;
                for (int s = 0; s <= t; s++) {
                    if (c->mask && c->mask[(size_t)b * L + s]) continue;
                    for (int i = 0; i < dg; i++) sum += c->x[((size_t)b * L + s) * D + g * dg + i];
                    cnt += dg;
                }
                if (cnt > 0) {
                    double m = sum / cnt, ss = n0 * (v0 + (mu0 - m) * (mu0 - m));
                    for (int s = 0; s <= t; s++) {
                        if (c->mask && c->mask[(size_t)b * L + s]) continue;
                        for (int i = 0; i < dg; i++) {
                            double d = c->x[((size_t)b * L + s) * D + g * dg + i] - m;
                            ss += d * d;
                        }
                    }
                    mu = m;
                    var = ss / cnt;
                }
                double r = 1.0 / sqrt(var + c->eps);
                mean[((size_t)b * L + t) * G + g] = mu;
                rstd[((size_t)b * L + t) * G + g] = r;
                for (int i = 0; i < dg; i++) {
                    size_t k = ((size_t)b * L + t) * D + g * dg + i;
                    y[k] = pad ? 0.0 : (c->x[k] - mu) * r * (1.0 + c->w[g * dg + i]) + c->bias[g * dg + i];
                }
            }
            mean_f[b * G + g] = mu;
            var_f[b * G + g] = var;
            count_f[b] = tokens;
        }
}

static void test_forward_naive(const char *tag, int carried, int masked) {
    Tsn c = tsn_new(3, 17, 12, 3, carried, masked);
    tsn_fwd(&c);
    size_t n = (size_t)c.B * c.L * c.D, nbl = (size_t)c.B * c.L * c.G, bg = (size_t)c.B * c.G;
    double *y = tu_dalloc(n), *m = tu_dalloc(nbl), *r = tu_dalloc(nbl), *mf = tu_dalloc(bg), *vf = tu_dalloc(bg);
    int64_t *cf = calloc(c.B, sizeof(int64_t));
    naive_forward(&c, y, m, r, mf, vf, cf);
    char name[128];
    double e;
    snprintf(name, sizeof name, "tsn_forward_vs_naive_%s_y", tag);
    e = tu_max_rel_err(c.y, y, n, tu_grad_floor(y, n));
    tu_check_err(name, e, 1e-11);
    snprintf(name, sizeof name, "tsn_forward_vs_naive_%s_saved_mean_rstd", tag);
    e = fmax(tu_max_rel_err(c.smean, m, nbl, tu_grad_floor(m, nbl)), tu_max_rel_err(c.srstd, r, nbl, 1e-12));
    tu_check_err(name, e, 1e-11);
    snprintf(name, sizeof name, "tsn_forward_vs_naive_%s_state_out", tag);
    e = fmax(tu_max_rel_err(c.mean_out, mf, bg, tu_grad_floor(mf, bg)), tu_max_rel_err(c.var_out, vf, bg, 1e-12));
    tu_check_err(name, e, 1e-11);
    int same = 1;
    for (int b = 0; b < c.B; b++) same &= c.count_out[b] == cf[b];
    snprintf(name, sizeof name, "tsn_forward_vs_naive_%s_count_out", tag);
    tu_check(same, name, "count_out[0]=%lld", (long long)c.count_out[0]);
    if (masked) {
        int zero = 1;
        for (size_t k = 0; k < n; k++)
            if (c.mask[k / c.D]) zero &= c.y[k] == 0.0;
        snprintf(name, sizeof name, "tsn_forward_%s_padded_outputs_zero", tag);
        tu_check(zero, name, "%s", "");
    }
    free(y); free(m); free(r); free(mf); free(vf); free(cf);
    tsn_free(&c);
}

static void test_gradcheck(const char *tag, int B, int L, int D, int G, int carried, int masked) {
    Tsn c = tsn_new(B, L, D, G, carried, masked);
    TsnGrads g = grads_new(&c);
    tsn_bwd(&c, &g);
    char name[128];
    size_t n = (size_t)B * L * D, bg = (size_t)B * G;
    snprintf(name, sizeof name, "tsn_grad_%s_x", tag);
    tu_grad_check(name, c.x, n, g.dx, tsn_loss, &c, 1e-6);
    snprintf(name, sizeof name, "tsn_grad_%s_weight", tag);
    tu_grad_check(name, c.w, D, g.dw, tsn_loss, &c, 1e-6);
    snprintf(name, sizeof name, "tsn_grad_%s_bias", tag);
    tu_grad_check(name, c.bias, D, g.db, tsn_loss, &c, 1e-6);
    if (carried) {
        snprintf(name, sizeof name, "tsn_grad_%s_mean_in", tag);
        tu_grad_check(name, c.mean_in, bg, g.dmi, tsn_loss, &c, 1e-6);
        snprintf(name, sizeof name, "tsn_grad_%s_var_in", tag);
        tu_grad_check(name, c.var_in, bg, g.dvi, tsn_loss, &c, 1e-6);
    }
    if (masked) {
        int zero = 1;
        for (size_t k = 0; k < n; k++)
            if (c.mask[k / D]) zero &= g.dx[k] == 0.0;
        snprintf(name, sizeof name, "tsn_grad_%s_padded_dx_zero", tag);
        tu_check(zero, name, "%s", "");
        if (B >= 3 && carried) { /* all-padding row: the state gradient passes through unchanged */
            int pass = 1;
            for (int k = 0; k < G; k++)
                pass &= g.dmi[2 * G + k] == c.wm[2 * G + k] && g.dvi[2 * G + k] == c.wv[2 * G + k];
            snprintf(name, sizeof name, "tsn_grad_%s_all_padded_row_passes_state_grad", tag);
            tu_check(pass, name, "%s", "");
        }
    }
    grads_free(&g);
    tsn_free(&c);
}

/* ---- state carrying: one piece vs several, forward and backward ----------------------------------- */
static void slice_rows(const double *src, double *dst, int B, int L, int W, int off, int len) {
    for (int b = 0; b < B; b++)
        memcpy(dst + (size_t)b * len * W, src + ((size_t)b * L + off) * W, sizeof(double) * (size_t)len * W);
}
static void unslice_rows(const double *src, double *dst, int B, int L, int W, int off, int len) {
    for (int b = 0; b < B; b++)
        memcpy(dst + ((size_t)b * L + off) * W, src + (size_t)b * len * W, sizeof(double) * (size_t)len * W);
}

static void test_pieces(int npieces, const int *lens) {
    const int B = 3, D = 12, G = 3;
    int L = 0;
    for (int k = 0; k < npieces; k++) L += lens[k];
    Tsn c = tsn_new(B, L, D, G, 1, 1);
    TsnGrads ref = grads_new(&c);
    tsn_bwd(&c, &ref);
    const size_t n = (size_t)B * L * D, nbl = (size_t)B * L * G, bg = (size_t)B * G;

    double *y = tu_dalloc(n), *sm = tu_dalloc(nbl), *sr = tu_dalloc(nbl), *dx = tu_dalloc(n), *dw = tu_dalloc(D), *db = tu_dalloc(D);
    /* per-piece state buffers: state[k] enters piece k */
    int64_t *cnt = calloc((size_t)(npieces + 1) * B, sizeof(int64_t));
    double *mean = tu_dalloc((size_t)(npieces + 1) * bg), *var = tu_dalloc((size_t)(npieces + 1) * bg);
    memcpy(cnt, c.count_in, sizeof(int64_t) * B);
    memcpy(mean, c.mean_in, sizeof(double) * bg);
    memcpy(var, c.var_in, sizeof(double) * bg);
    double **px = calloc(npieces, sizeof(double *)), **psm = calloc(npieces, sizeof(double *)),
           **psr = calloc(npieces, sizeof(double *));
    uint8_t **pm = calloc(npieces, sizeof(uint8_t *));
    int off = 0;
    for (int k = 0; k < npieces; k++) {
        int len = lens[k];
        px[k] = tu_dalloc((size_t)B * len * D);
        psm[k] = tu_dalloc((size_t)B * len * G);
        psr[k] = tu_dalloc((size_t)B * len * G);
        pm[k] = calloc((size_t)B * len, 1);
        double *py = tu_dalloc((size_t)B * len * D);
        slice_rows(c.x, px[k], B, L, D, off, len);
        for (int b = 0; b < B; b++) memcpy(pm[k] + (size_t)b * len, c.mask + (size_t)b * L + off, len);
        MgTimestepNormArgs a = {.B = B, .L = len, .D = D, .G = G, .eps = c.eps};
        a.x = px[k];
        a.pad_mask = pm[k];
        a.weight = c.w;
        a.bias = c.bias;
        a.count_in = cnt + (size_t)k * B;
        a.mean_in = mean + k * bg;
        a.var_in = var + k * bg;
        a.count_out = cnt + (size_t)(k + 1) * B;
        a.mean_out = mean + (k + 1) * bg;
        a.var_out = var + (k + 1) * bg;
        a.y = py;
        a.saved_mean = psm[k];
        a.saved_rstd = psr[k];
        cpu_timestep_norm_forward_f64(&mg_cpu_backend_f64, &a);
        unslice_rows(py, y, B, L, D, off, len);
        unslice_rows(psm[k], sm, B, L, G, off, len);
        unslice_rows(psr[k], sr, B, L, G, off, len);
        free(py);
        off += len;
    }
    /* backward from the last piece: dL/d(state out of piece k) = dL/d(state into piece k+1) */
    double *dmo = tu_dalloc(bg), *dvo = tu_dalloc(bg), *dmi = tu_dalloc(bg), *dvi = tu_dalloc(bg);
    memcpy(dmo, c.wm, sizeof(double) * bg);
    memcpy(dvo, c.wv, sizeof(double) * bg);
    for (int k = npieces - 1; k >= 0; k--) {
        int len = lens[k];
        off -= len;
        double *pdy = tu_dalloc((size_t)B * len * D), *pdx = tu_dalloc((size_t)B * len * D);
        slice_rows(c.dy, pdy, B, L, D, off, len);
        MgTimestepNormArgs a = {.B = B, .L = len, .D = D, .G = G, .eps = c.eps};
        a.x = px[k];
        a.pad_mask = pm[k];
        a.weight = c.w;
        a.bias = c.bias;
        a.count_in = cnt + (size_t)k * B;
        a.mean_in = mean + k * bg;
        a.var_in = var + k * bg;
        a.saved_mean = psm[k];
        a.saved_rstd = psr[k];
        a.dy = pdy;
        a.dmean_out = dmo;
        a.dvar_out = dvo;
        a.dx = pdx;
        a.dweight = dw;
        a.dbias = db;
        a.dmean_in = dmi;
        a.dvar_in = dvi;
        cpu_timestep_norm_backward_f64(&mg_cpu_backend_f64, &a);
        unslice_rows(pdx, dx, B, L, D, off, len);
        memcpy(dmo, dmi, sizeof(double) * bg);
        memcpy(dvo, dvi, sizeof(double) * bg);
        free(pdy);
        free(pdx);
    }
    double e = 0;
    e = fmax(e, tu_max_rel_err(y, c.y, n, tu_grad_floor(c.y, n)));
    e = fmax(e, tu_max_rel_err(sm, c.smean, nbl, tu_grad_floor(c.smean, nbl)));
    e = fmax(e, tu_max_rel_err(sr, c.srstd, nbl, tu_grad_floor(c.srstd, nbl)));
    e = fmax(e, tu_max_rel_err(mean + npieces * bg, c.mean_out, bg, tu_grad_floor(c.mean_out, bg)));
    e = fmax(e, tu_max_rel_err(var + npieces * bg, c.var_out, bg, tu_grad_floor(c.var_out, bg)));
    int cnt_ok = 1;
    for (int b = 0; b < B; b++) cnt_ok &= cnt[(size_t)npieces * B + b] == c.count_out[b];
    double eb = 0;
    eb = fmax(eb, tu_max_rel_err(dx, ref.dx, n, tu_grad_floor(ref.dx, n)));
    eb = fmax(eb, tu_max_rel_err(dw, ref.dw, D, tu_grad_floor(ref.dw, D)));
    eb = fmax(eb, tu_max_rel_err(db, ref.db, D, tu_grad_floor(ref.db, D)));
    eb = fmax(eb, tu_max_rel_err(dmi, ref.dmi, bg, tu_grad_floor(ref.dmi, bg)));
    eb = fmax(eb, tu_max_rel_err(dvi, ref.dvi, bg, tu_grad_floor(ref.dvi, bg)));
    char name[96], lbuf[48] = "";
    for (int k = 0; k < npieces; k++)
        snprintf(lbuf + strlen(lbuf), sizeof lbuf - strlen(lbuf), "%s%d", k ? "_" : "", lens[k]);
    snprintf(name, sizeof name, "tsn_pieces_%d_(%s)_forward_and_state", npieces, lbuf);
    tu_check(e <= 1e-12 && cnt_ok, name, "worst relative error %.3e, tolerance 1e-12, counts %s", e,
             cnt_ok ? "equal" : "DIFFER");
    snprintf(name, sizeof name, "tsn_pieces_%d_(%s)_backward", npieces, lbuf);
    tu_check_err(name, eb, 1e-12);

    for (int k = 0; k < npieces; k++) {
        free(px[k]); free(psm[k]); free(psr[k]); free(pm[k]);
    }
    free(px); free(psm); free(psr); free(pm);
    free(y); free(sm); free(sr); free(dx); free(dw); free(db); free(cnt); free(mean); free(var);
    free(dmo); free(dvo); free(dmi); free(dvi);
    grads_free(&ref);
    tsn_free(&c);
}

/* ---- float32 forward and backward against float64 ------------------------------------------------- */
static void test_f32(void) {
    const int B = 2, L = 96, D = 32, G = 4;
    Tsn c = tsn_new(B, L, D, G, 1, 1);
    TsnGrads g = grads_new(&c);
    tsn_bwd(&c, &g);
    const size_t n = (size_t)B * L * D, nbl = (size_t)B * L * G, bg = (size_t)B * G;
    /* float32 copies of the (already rounded-to-float) inputs would hide nothing: round the float64
     * inputs to float first so both runs see identical data. */
    float *x = tu_f32_of(c.x, n), *w = tu_f32_of(c.w, D), *bi = tu_f32_of(c.bias, D), *mi = tu_f32_of(c.mean_in, bg),
          *vi = tu_f32_of(c.var_in, bg), *dy = tu_f32_of(c.dy, n), *wm = tu_f32_of(c.wm, bg), *wv = tu_f32_of(c.wv, bg);
    tu_from_f32(c.x, x, n); tu_from_f32(c.w, w, D); tu_from_f32(c.bias, bi, D);
    tu_from_f32(c.mean_in, mi, bg); tu_from_f32(c.var_in, vi, bg); tu_from_f32(c.dy, dy, n);
    tu_from_f32(c.wm, wm, bg); tu_from_f32(c.wv, wv, bg);
    memset(g.dw, 0, sizeof(double) * D);
    memset(g.db, 0, sizeof(double) * D);
    tsn_bwd(&c, &g);
    float *y = calloc(n, sizeof(float)), *sm = calloc(nbl, sizeof(float)), *sr = calloc(nbl, sizeof(float));
    float *mo = calloc(bg, sizeof(float)), *vo = calloc(bg, sizeof(float));
    float *dx = calloc(n, sizeof(float)), *dw = calloc(D, sizeof(float)), *db = calloc(D, sizeof(float));
    float *dmi = calloc(bg, sizeof(float)), *dvi = calloc(bg, sizeof(float));
    MgTimestepNormArgs a = {.B = B, .L = L, .D = D, .G = G, .eps = c.eps};
    a.x = x; a.pad_mask = c.mask; a.weight = w; a.bias = bi;
    a.count_in = c.count_in; a.mean_in = mi; a.var_in = vi;
    a.mean_out = mo; a.var_out = vo; a.y = y; a.saved_mean = sm; a.saved_rstd = sr;
    a.dy = dy; a.dmean_out = wm; a.dvar_out = wv;
    a.dx = dx; a.dweight = dw; a.dbias = db; a.dmean_in = dmi; a.dvar_in = dvi;
    cpu_timestep_norm_forward_f32(&mg_cpu_backend_f32, &a);
    double ef = 0;
    ef = fmax(ef, tu_max_rel_err_f32(y, c.y, n, tu_grad_floor(c.y, n)));
    ef = fmax(ef, tu_max_rel_err_f32(sm, c.smean, nbl, tu_grad_floor(c.smean, nbl)));
    ef = fmax(ef, tu_max_rel_err_f32(sr, c.srstd, nbl, tu_grad_floor(c.srstd, nbl)));
    ef = fmax(ef, tu_max_rel_err_f32(mo, c.mean_out, bg, tu_grad_floor(c.mean_out, bg)));
    ef = fmax(ef, tu_max_rel_err_f32(vo, c.var_out, bg, tu_grad_floor(c.var_out, bg)));
    tu_check_err("tsn_f32_forward_vs_f64", ef, 1e-6);
    cpu_timestep_norm_backward_f32(&mg_cpu_backend_f32, &a);
    double eb = 0;
    eb = fmax(eb, tu_max_rel_err_f32(dx, g.dx, n, tu_grad_floor(g.dx, n)));
    eb = fmax(eb, tu_max_rel_err_f32(dw, g.dw, D, tu_grad_floor(g.dw, D)));
    eb = fmax(eb, tu_max_rel_err_f32(db, g.db, D, tu_grad_floor(g.db, D)));
    eb = fmax(eb, tu_max_rel_err_f32(dmi, g.dmi, bg, tu_grad_floor(g.dmi, bg)));
    eb = fmax(eb, tu_max_rel_err_f32(dvi, g.dvi, bg, tu_grad_floor(g.dvi, bg)));
    tu_check_err("tsn_f32_backward_vs_f64", eb, 3e-5);
    free(x); free(w); free(bi); free(mi); free(vi); free(dy); free(wm); free(wv);
    free(y); free(sm); free(sr); free(mo); free(vo); free(dx); free(dw); free(db); free(dmi); free(dvi);
    grads_free(&g);
    tsn_free(&c);
}

/* ---- accumulate flag and thread-count determinism ------------------------------------------------- */
static void test_accumulate_and_threads(void) {
    Tsn c = tsn_new(4, 128, 64, 4, 1, 1); /* large enough for the kernel to use threads */
    TsnGrads g1 = grads_new(&c), g2 = grads_new(&c);
    const size_t n = (size_t)c.B * c.L * c.D, bg = (size_t)c.B * c.G;
    int nt = mg_get_threads();
    mg_set_threads(1);
    tsn_bwd(&c, &g1);
    mg_set_threads(nt > 1 ? nt : 2);
    tsn_bwd(&c, &g2);
    mg_set_threads(nt);
    int same = !memcmp(g1.dx, g2.dx, n * sizeof(double)) && !memcmp(g1.dw, g2.dw, c.D * sizeof(double)) &&
               !memcmp(g1.db, g2.db, c.D * sizeof(double)) && !memcmp(g1.dmi, g2.dmi, bg * sizeof(double)) &&
               !memcmp(g1.dvi, g2.dvi, bg * sizeof(double));
    tu_check(same, "tsn_backward_bitwise_identical_1_vs_N_threads", "%s", "");

    /* accumulate: dx += ..., parameter grads always +=; a second pass must double them */
    double *pre = tu_dalloc(n);
    tu_fill_normal(pre, n, 1.0);
    TsnGrads g3 = grads_new(&c);
    memcpy(g3.dx, pre, n * sizeof(double));
    memcpy(g3.dw, g1.dw, c.D * sizeof(double));
    memcpy(g3.db, g1.db, c.D * sizeof(double));
    tsn_fwd(&c);
    MgTimestepNormArgs a = tsn_args(&c);
    a.dx = g3.dx; a.dweight = g3.dw; a.dbias = g3.db; a.dmean_in = g3.dmi; a.dvar_in = g3.dvi;
    a.accumulate = 1;
    cpu_timestep_norm_backward_f64(&mg_cpu_backend_f64, &a);
    double e = 0;
    for (size_t k = 0; k < n; k++) e = fmax(e, fabs(g3.dx[k] - (pre[k] + g1.dx[k])));
    for (int i = 0; i < c.D; i++) {
        e = fmax(e, fabs(g3.dw[i] - 2 * g1.dw[i]));
        e = fmax(e, fabs(g3.db[i] - 2 * g1.db[i]));
    }
    for (size_t k = 0; k < bg; k++) e = fmax(e, fabs(g3.dmi[k] - g1.dmi[k]) + fabs(g3.dvi[k] - g1.dvi[k]));
    tu_check_err("tsn_backward_accumulate_semantics", e, 1e-12);
    free(pre);
    grads_free(&g1);
    grads_free(&g2);
    grads_free(&g3);
    tsn_free(&c);
}

int main(void) {
    tu_init("test_timestep_norm");
    test_forward_naive("fresh", 0, 0);
    test_forward_naive("carried", 1, 0);
    test_forward_naive("carried_masked", 1, 1);
    test_forward_naive("fresh_masked", 0, 1);

    test_gradcheck("fresh", 2, 6, 8, 2, 0, 0);
    test_gradcheck("carried", 2, 7, 8, 2, 1, 0);
    test_gradcheck("carried_masked", 3, 9, 6, 3, 1, 1);
    test_gradcheck("fresh_masked", 2, 8, 6, 2, 0, 1);
    test_gradcheck("groups_eq_D", 2, 6, 4, 4, 1, 0);

    const int p1[] = {23}, p2[] = {11, 12}, p3[] = {5, 9, 9}, p4[] = {3, 8, 1, 11}, p2b[] = {1, 22};
    test_pieces(1, p1);
    test_pieces(2, p2);
    test_pieces(2, p2b);
    test_pieces(3, p3);
    test_pieces(4, p4);

    test_f32();
    test_accumulate_and_threads();
    return tu_finish();
}
