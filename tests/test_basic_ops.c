/* Embedding, linear, elementwise activations, dropout, and the backend's small vector ops
 * (sum_squares, axpy, scale, adamw_update). Gradients are checked in float64 against finite differences
 * of L = sum(dy * y); float32 forwards against float64 forwards on the same (float-rounded) inputs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../kernels/cpu/cpu_ops.h"
#include "test_util.h"

static const MgBackend *B32 = &mg_cpu_backend_f32, *B64 = &mg_cpu_backend_f64;

/* ---------------------------------------------------------------------------------------------- */
/* helpers */

static float *falloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

/* Random doubles that are exactly representable in float (so the f32 and f64 runs see the same data). */
static void fill_f32exact(double *x, size_t n, double lo, double hi) {
    tu_fill_signed(x, n, lo, hi);
    for (size_t i = 0; i < n; i++) x[i] = (double)(float)x[i];
}

static double max_abs_diff(const double *a, const double *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (isnan(d)) return INFINITY;
        m = fmax(m, d);
    }
    return m;
}

/* f32 result vs f64 reference, normwise: max |a - ref| / max |ref|. (Elementwise relative errors are
 * meaningless where the f64 value itself comes out of a cancellation, e.g. silu'(x) near x = -1.28.) */
static double err_f32(const float *a, const double *ref, size_t n) {
    return tu_max_rel_err_f32(a, ref, n, fmax(tu_max_abs(ref, n), 1e-300));
}


/* ---------------------------------------------------------------------------------------------- */
/* embedding */

typedef struct {
    MgEmbeddingArgs a;
    const double *dout;
    size_t nout;
} EmbCtx;

static double emb_loss(void *p) {
    EmbCtx *c = p;
    cpu_embedding_forward_f64(B64, &c->a);
    return tu_dot(c->dout, c->a.out, c->nout);
}


static void test_embedding(void) {
    const int V = 11, D = 37, T = 60;
    int32_t *tok = malloc(sizeof(int32_t) * T);
    for (int t = 0; t < T; t++) tok[t] = t % 3 == 0 ? 2 : (int32_t)(tu_uniform() * V); /* token 2 repeats */
    tok[T - 1] = V - 1;
    tok[1] = 0;
    double *w = tu_dalloc((size_t)V * D), *out = tu_dalloc((size_t)T * D), *dout = tu_dalloc((size_t)T * D);
    double *dw = tu_dalloc((size_t)V * D), *ref = tu_dalloc((size_t)V * D);
    fill_f32exact(w, (size_t)V * D, 0.1, 2);
    tu_fill_signed(dout, (size_t)T * D, 0.1, 2);

    MgEmbeddingArgs a = {.T = T, .D = D, .V = V, .tokens = tok, .weight = w, .out = out, .dout = dout, .dweight = dw};
    cpu_embedding_forward_f64(B64, &a);
    int ok = 1;
    for (int t = 0; t < T; t++) ok &= !memcmp(out + (size_t)t * D, w + (size_t)tok[t] * D, sizeof(double) * D);
    tu_check(ok, "embedding_forward_f64 copies weight[token] rows exactly", "T=%d D=%d V=%d", T, D, V);

    float *w32 = falloc((size_t)V * D), *out32 = falloc((size_t)T * D);
    tu_to_f32(w32, w, (size_t)V * D);
    MgEmbeddingArgs a32 = a;
    a32.weight = w32, a32.out = out32;
    cpu_embedding_forward_f32(B32, &a32);
    ok = 1;
    for (int t = 0; t < T; t++) ok &= !memcmp(out32 + (size_t)t * D, w32 + (size_t)tok[t] * D, sizeof(float) * D);
    tu_check(ok, "embedding_forward_f32 copies weight[token] rows exactly", "bitwise");

    /* Backward accumulates onto existing dweight, in token order. */
    tu_fill_signed(dw, (size_t)V * D, 0.1, 1);
    memcpy(ref, dw, sizeof(double) * V * D);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < D; j++) ref[(size_t)tok[t] * D + j] += dout[(size_t)t * D + j];
    cpu_embedding_backward_f64(B64, &a);
    tu_check(max_abs_diff(dw, ref, (size_t)V * D) == 0, "embedding_backward_f64 == naive token-order accumulation",
             "bitwise, repeated tokens, onto non-zero dweight");

    memset(dw, 0, sizeof(double) * V * D);
    cpu_embedding_backward_f64(B64, &a);
    EmbCtx c = {a, dout, (size_t)T * D};
    tu_grad_check("embedding grad weight (f64 finite differences)", w, (size_t)V * D, dw, emb_loss, &c, 1e-6);

    /* Thread-count independence: enough columns for several blocks, many repeats of each token. */
    {
        const int V2 = 50, D2 = 300, T2 = 3000;
        int32_t *tk = malloc(sizeof(int32_t) * T2);
        for (int t = 0; t < T2; t++) tk[t] = (int32_t)(tu_uniform() * V2);
        double *g = tu_dalloc((size_t)T2 * D2);
        tu_fill_signed(g, (size_t)T2 * D2, 0.01, 1);
        float *g32 = falloc((size_t)T2 * D2), *d1 = falloc((size_t)V2 * D2), *d2 = falloc((size_t)V2 * D2);
        float *dn = falloc((size_t)V2 * D2);
        tu_to_f32(g32, g, (size_t)T2 * D2);
        for (int t = 0; t < T2; t++)
            for (int j = 0; j < D2; j++) dn[(size_t)tk[t] * D2 + j] += g32[(size_t)t * D2 + j];
        MgEmbeddingArgs b = {.T = T2, .D = D2, .V = V2, .tokens = tk, .dout = g32, .dweight = d1};
        int orig = mg_get_threads();
        mg_set_threads(1);
        cpu_embedding_backward_f32(B32, &b);
        mg_set_threads(2);
        b.dweight = d2;
        cpu_embedding_backward_f32(B32, &b);
        mg_set_threads(orig);
        size_t nv = (size_t)V2 * D2;
        tu_check(!memcmp(d1, d2, sizeof(float) * nv) && !memcmp(d1, dn, sizeof(float) * nv),
                 "embedding_backward_f32 identical with 1 and 2 threads and to naive float accumulation",
                 "T=%d D=%d V=%d, bitwise", T2, D2, V2);
        free(tk), free(g), free(g32), free(d1), free(d2), free(dn);
    }

    /* Ops do not scan data (ops.h): ids are checked on the host where they enter, by mg_check_ids, which
     * names the id and its position. */
    {
        char err[256] = "";
        tok[7] = V;
        int rc = mg_check_ids(tok, T, V, INT32_MIN, "token", err, sizeof err);
        tu_check(rc == -1 && strstr(err, "token id 11 at position 7"), "host id check refuses token id == V", "%s", err);
        tok[7] = 3;
        tok[0] = -1;
        rc = mg_check_ids(tok, T, V, INT32_MIN, "token", err, sizeof err);
        tu_check(rc == -1 && strstr(err, "token id -1 at position 0"), "host id check refuses a negative id", "%s", err);
        rc = mg_check_ids(tok, T, V, -1, "target", err, sizeof err);
        tu_check(rc == 0, "host id check accepts the ignore index", "rc %d", rc);
        tok[0] = 0;
    }
    free(tok), free(w), free(out), free(dout), free(dw), free(ref), free(w32), free(out32);
}

/* ---------------------------------------------------------------------------------------------- */
/* linear */

typedef struct {
    MgLinearArgs a;
    const double *dy;
    size_t ny;
} LinCtx;

static double lin_loss(void *p) {
    LinCtx *c = p;
    cpu_linear_forward_f64(B64, &c->a);
    return tu_dot(c->dy, c->a.y, c->ny);
}

static void test_linear_grad(int with_bias) {
    const int T = 6, in = 5, out = 4;
    double *x = tu_dalloc((size_t)T * in), *w = tu_dalloc((size_t)out * in), *b = tu_dalloc(out), *y = tu_dalloc((size_t)T * out);
    double *dy = tu_dalloc((size_t)T * out), *dx = tu_dalloc((size_t)T * in), *dw = tu_dalloc((size_t)out * in), *db = tu_dalloc(out);
    tu_fill_signed(x, (size_t)T * in, 0.1, 1);
    tu_fill_signed(w, (size_t)out * in, 0.1, 1);
    tu_fill_signed(b, out, 0.1, 1);
    tu_fill_signed(dy, (size_t)T * out, 0.1, 1);
    for (size_t i = 0; i < (size_t)T * in; i++) dx[i] = 7.0; /* must be overwritten */
    MgLinearArgs a = {.T = T, .in = in, .out = out, .x = x, .weight = w, .bias = with_bias ? b : NULL, .y = y,
                      .dy = dy, .dx = dx, .dweight = dw, .dbias = with_bias ? db : NULL};
    cpu_linear_forward_f64(B64, &a);
    /* Forward against the definition. */
    double werr = 0;
    for (int t = 0; t < T; t++)
        for (int o = 0; o < out; o++) {
            double s = with_bias ? b[o] : 0;
            for (int i = 0; i < in; i++) s += x[t * in + i] * w[o * in + i];
            werr = fmax(werr, fabs(s - y[t * out + o]));
        }
    char name[128];
    snprintf(name, sizeof name, "linear_forward_f64 == x W^T%s (max abs error)", with_bias ? " + b" : "");
    tu_check_err(name, werr, 1e-14);
    cpu_linear_backward_f64(B64, &a);
    LinCtx c = {a, dy, (size_t)T * out};
    const char *sfx = with_bias ? "with bias" : "no bias";
    snprintf(name, sizeof name, "linear grad x (%s)", sfx);
    tu_grad_check(name, x, (size_t)T * in, dx, lin_loss, &c, 1e-6);
    snprintf(name, sizeof name, "linear grad W (%s)", sfx);
    tu_grad_check(name, w, (size_t)out * in, dw, lin_loss, &c, 1e-6);
    if (with_bias) tu_grad_check("linear grad b", b, out, db, lin_loss, &c, 1e-6);

    if (with_bias) {
        /* accumulate: dx += ..., and parameter gradients always accumulate. */
        double *dx0 = tu_dalloc((size_t)T * in), *dw1 = tu_dalloc((size_t)out * in), *db1 = tu_dalloc(out);
        double *r = tu_dalloc((size_t)T * in), *expect = tu_dalloc((size_t)T * in);
        memcpy(dx0, dx, sizeof(double) * T * in);
        memcpy(dw1, dw, sizeof(double) * out * in);
        memcpy(db1, db, sizeof(double) * out);
        tu_fill_signed(r, (size_t)T * in, 0.1, 1);
        for (int i = 0; i < T * in; i++) expect[i] = r[i] + dx0[i], dx[i] = r[i];
        a.accumulate = 1;
        cpu_linear_backward_f64(B64, &a);
        double e = tu_max_rel_err(dx, expect, (size_t)T * in, 1e-12);
        for (int i = 0; i < out * in; i++) dw1[i] *= 2;
        for (int i = 0; i < out; i++) db1[i] *= 2;
        e = fmax(e, tu_max_rel_err(dw, dw1, (size_t)out * in, 1e-12));
        e = fmax(e, tu_max_rel_err(db, db1, out, 1e-12));
        tu_check_err("linear_backward accumulate: dx += dy W, dW/db accumulate on a second call", e, 1e-14);
        /* NULL outputs are skipped: only dbias requested. */
        double *db2 = tu_dalloc(out);
        MgLinearArgs a2 = a;
        a2.dx = NULL, a2.dweight = NULL, a2.dbias = db2, a2.x = NULL, a2.weight = NULL;
        cpu_linear_backward_f64(B64, &a2);
        for (int i = 0; i < out; i++) db1[i] /= 2;
        tu_check_err("linear_backward with dx = dW = NULL (x, W unused) computes db only",
                     tu_max_rel_err(db2, db1, out, 1e-12), 1e-15);
        free(dx0), free(dw1), free(db1), free(r), free(expect), free(db2);
    }
    free(x), free(w), free(b), free(y), free(dy), free(dx), free(dw), free(db);
}

/* float32 forward/backward against float64 on the same inputs; dbias thread independence. */
static void test_linear_f32(void) {
    const int T = 64, in = 96, out = 80;
    size_t nx = (size_t)T * in, nw = (size_t)out * in, ny = (size_t)T * out;
    double *x = tu_dalloc(nx), *w = tu_dalloc(nw), *b = tu_dalloc(out), *dy = tu_dalloc(ny);
    double *y = tu_dalloc(ny), *dx = tu_dalloc(nx), *dw = tu_dalloc(nw), *db = tu_dalloc(out);
    fill_f32exact(x, nx, 0.01, 1);
    fill_f32exact(w, nw, 0.01, 0.2);
    fill_f32exact(b, out, 0.01, 1);
    fill_f32exact(dy, ny, 0.01, 1);
    float *x32 = falloc(nx), *w32 = falloc(nw), *b32 = falloc(out), *dy32 = falloc(ny);
    float *y32 = falloc(ny), *dx32 = falloc(nx), *dw32 = falloc(nw), *db32 = falloc(out);
    tu_to_f32(x32, x, nx), tu_to_f32(w32, w, nw), tu_to_f32(b32, b, out), tu_to_f32(dy32, dy, ny);
    MgLinearArgs a = {.T = T, .in = in, .out = out, .x = x, .weight = w, .bias = b, .y = y, .dy = dy, .dx = dx,
                      .dweight = dw, .dbias = db};
    MgLinearArgs a32 = {.T = T, .in = in, .out = out, .x = x32, .weight = w32, .bias = b32, .y = y32, .dy = dy32,
                        .dx = dx32, .dweight = dw32, .dbias = db32};
    cpu_linear_forward_f64(B64, &a), cpu_linear_backward_f64(B64, &a);
    cpu_linear_forward_f32(B32, &a32), cpu_linear_backward_f32(B32, &a32);
    tu_check_err("linear_forward f32 vs f64 (T=64 in=96 out=80)", err_f32(y32, y, ny), 2e-6);
    double e = fmax(err_f32(dx32, dx, nx), fmax(err_f32(dw32, dw, nw), err_f32(db32, db, out)));
    tu_check_err("linear_backward f32 vs f64 (dx, dW, db)", e, 2e-6);
    free(x), free(w), free(b), free(dy), free(y), free(dx), free(dw), free(db);
    free(x32), free(w32), free(b32), free(dy32), free(y32), free(dx32), free(dw32), free(db32);

    /* dbias: many rows, several column blocks; summed in double in row order. */
    const int T2 = 4000, out2 = 600;
    size_t n2 = (size_t)T2 * out2;
    double *g = tu_dalloc(n2), *ref = tu_dalloc(out2);
    tu_fill_uniform(g, n2, -1, 1.2); /* non-zero mean: the sum is large, rounding errors accumulate */
    float *g32 = falloc(n2), *d1 = falloc(out2), *d2 = falloc(out2);
    tu_to_f32(g32, g, n2);
    tu_from_f32(g, g32, n2);
    for (int t = 0; t < T2; t++)
        for (int o = 0; o < out2; o++) ref[o] += g[(size_t)t * out2 + o];
    MgLinearArgs b2 = {.T = T2, .in = 1, .out = out2, .dy = g32, .dbias = d1};
    int orig = mg_get_threads();
    mg_set_threads(1);
    cpu_linear_backward_f32(B32, &b2);
    mg_set_threads(2);
    b2.dbias = d2;
    cpu_linear_backward_f32(B32, &b2);
    mg_set_threads(orig);
    tu_check(!memcmp(d1, d2, sizeof(float) * out2), "linear dbias f32 identical with 1 and 2 threads",
             "T=%d out=%d, bitwise", T2, out2);
    /* One final rounding to float (<= 6e-8 relative) means the sum was carried in double. */
    tu_check_err("linear dbias f32 summed in double (relative error vs exact sum)",
                 tu_max_rel_err_f32(d1, ref, out2, 1e-30), 7e-8);
    free(g), free(ref), free(g32), free(d1), free(d2);
}

/* ---------------------------------------------------------------------------------------------- */
/* activations */

static const char *act_name[] = {"SILU", "SWIGLU", "MUL", "ADD"};

typedef struct {
    MgActArgs a;
    const double *dy;
} ActCtx;

static double act_loss(void *p) {
    ActCtx *c = p;
    cpu_act_forward_f64(B64, &c->a);
    return tu_dot(c->dy, c->a.y, (size_t)c->a.n);
}

static double silu_ref(double x) { return x >= 0 ? x / (1 + exp(-x)) : x * exp(x) / (1 + exp(x)); }
static double dsilu_ref(double x) {
    double s = x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x));
    return s * (1 + x * (1 - s));
}

static void test_act(MgActKind kind) {
    const int n = 257;
    const int binary = kind != MG_ACT_SILU;
    double *x = tu_dalloc(n), *b = tu_dalloc(n), *y = tu_dalloc(n), *dy = tu_dalloc(n), *da = tu_dalloc(n), *db = tu_dalloc(n);
    tu_fill_signed(x, n, 0.01, 3);
    x[0] = 12, x[1] = -12, x[2] = 30, x[3] = -30; /* saturated sigmoid */
    tu_fill_signed(b, n, 0.1, 2);
    tu_fill_signed(dy, n, 0.1, 1);
    for (int i = 0; i < n; i++) da[i] = db[i] = 5.0; /* must be overwritten */
    MgActArgs a = {.kind = kind, .n = n, .a = x, .b = binary ? b : NULL, .y = y, .dy = dy, .da = da,
                   .db = binary ? db : NULL};
    cpu_act_forward_f64(B64, &a);
    double fe = 0;
    for (int i = 0; i < n; i++) {
        double r = kind == MG_ACT_SILU ? silu_ref(x[i]) : kind == MG_ACT_SWIGLU ? silu_ref(x[i]) * b[i]
                   : kind == MG_ACT_MUL ? x[i] * b[i] : x[i] + b[i];
        fe = fmax(fe, fabs(y[i] - r) / fmax(fabs(r), 1e-300));
    }
    char name[128];
    snprintf(name, sizeof name, "act_forward_f64 %s vs definition (relative)", act_name[kind]);
    tu_check_err(name, fe, 1e-15);
    cpu_act_backward_f64(B64, &a);
    ActCtx c = {a, dy};
    snprintf(name, sizeof name, "act %s grad a", act_name[kind]);
    tu_grad_check(name, x, n, da, act_loss, &c, 1e-6);
    if (binary) {
        snprintf(name, sizeof name, "act %s grad b", act_name[kind]);
        tu_grad_check(name, b, n, db, act_loss, &c, 1e-6);
    }
    /* accumulate, and NULL da with db requested */
    double *r = tu_dalloc(n), *ea = tu_dalloc(n), *eb = tu_dalloc(n), *da0 = tu_dalloc(n), *db0 = tu_dalloc(n);
    memcpy(da0, da, sizeof(double) * n), memcpy(db0, db, sizeof(double) * n);
    tu_fill_signed(r, n, 0.1, 1);
    for (int i = 0; i < n; i++) ea[i] = r[i] + da0[i], eb[i] = -r[i] + db0[i], da[i] = r[i], db[i] = -r[i];
    a.accumulate = 1;
    cpu_act_backward_f64(B64, &a);
    double e = tu_max_rel_err(da, ea, n, 1e-12);
    if (binary) e = fmax(e, tu_max_rel_err(db, eb, n, 1e-12));
    snprintf(name, sizeof name, "act_backward %s accumulate adds to da%s", act_name[kind], binary ? ", db" : "");
    tu_check_err(name, e, 1e-15);
    if (binary) {
        memset(db, 0, sizeof(double) * n);
        a.accumulate = 0, a.da = NULL;
        cpu_act_backward_f64(B64, &a);
        snprintf(name, sizeof name, "act_backward %s with da = NULL gives the same db", act_name[kind]);
        tu_check_err(name, tu_max_rel_err(db, db0, n, 1e-12), 0);
    }
    free(r), free(ea), free(eb), free(da0), free(db0);
    free(x), free(b), free(y), free(dy), free(da), free(db);
}

/* float32 vs float64 on a large n (parallel path). */
static void test_act_f32(void) {
    const size_t n = (size_t)1 << 18;
    double *x = tu_dalloc(n), *b = tu_dalloc(n), *dy = tu_dalloc(n), *y = tu_dalloc(n), *da = tu_dalloc(n), *db = tu_dalloc(n);
    fill_f32exact(x, n, 0.001, 8);
    fill_f32exact(b, n, 0.01, 2);
    fill_f32exact(dy, n, 0.01, 1);
    float *x32 = falloc(n), *b32 = falloc(n), *dy32 = falloc(n), *y32 = falloc(n), *da32 = falloc(n), *db32 = falloc(n);
    tu_to_f32(x32, x, n), tu_to_f32(b32, b, n), tu_to_f32(dy32, dy, n);
    double worst_f = 0, worst_b = 0;
    for (int k = 0; k < 4; k++) {
        MgActArgs a = {.kind = (MgActKind)k, .n = (int64_t)n, .a = x, .b = b, .y = y, .dy = dy, .da = da, .db = db};
        MgActArgs a32 = {.kind = (MgActKind)k, .n = (int64_t)n, .a = x32, .b = b32, .y = y32, .dy = dy32, .da = da32,
                         .db = db32};
        cpu_act_forward_f64(B64, &a), cpu_act_backward_f64(B64, &a);
        cpu_act_forward_f32(B32, &a32), cpu_act_backward_f32(B32, &a32);
        worst_f = fmax(worst_f, err_f32(y32, y, n));
        worst_b = fmax(worst_b, err_f32(da32, da, n));
        if (k != MG_ACT_SILU) worst_b = fmax(worst_b, err_f32(db32, db, n));
    }
    tu_check_err("act_forward f32 vs f64, all kinds, n=2^18", worst_f, 1e-6);
    tu_check_err("act_backward f32 vs f64, all kinds, n=2^18", worst_b, 5e-6);

    /* Extreme inputs: no overflow/NaN from exp(-x), correct limits (silu(x) -> x, -> -0). */
    const double ext[] = {1e4, -1e4, 1e3, -1e3, 100, -100, 88.8, -88.8, 710, -710, 746, -746, 40, -40, 0.0};
    const int ne = (int)(sizeof ext / sizeof ext[0]);
    double ey[16], eda[16], one[16];
    float fx[16], fy[16], fda[16], fone[16];
    for (int i = 0; i < ne; i++) one[i] = 1, fone[i] = 1, fx[i] = (float)ext[i];
    MgActArgs a = {.kind = MG_ACT_SILU, .n = ne, .a = ext, .y = ey, .dy = one, .da = eda};
    MgActArgs a32 = {.kind = MG_ACT_SILU, .n = ne, .a = fx, .y = fy, .dy = fone, .da = fda};
    cpu_act_forward_f64(B64, &a), cpu_act_backward_f64(B64, &a);
    cpu_act_forward_f32(B32, &a32), cpu_act_backward_f32(B32, &a32);
    double e64 = 0, e32 = 0;
    for (int i = 0; i < ne; i++) {
        double r = silu_ref(ext[i]), dr = dsilu_ref(ext[i]);
        e64 = fmax(e64, fmax(fabs(ey[i] - r) / fmax(fabs(r), 1e-300), fabs(eda[i] - dr) / fmax(fabs(dr), 1e-300)));
        /* float: values below ~1e-38 are subnormal/zero, so the relative measure gets an absolute floor. */
        e32 = fmax(e32, fmax(fabs(fy[i] - r) / fmax(fabs(r), 1e-30), fabs(fda[i] - dr) / fmax(fabs(dr), 1e-30)));
        if (!isfinite(ey[i]) || !isfinite(eda[i]) || !isfinite(fy[i]) || !isfinite(fda[i])) e64 = e32 = INFINITY;
    }
    tu_check_err("silu f64 at |x| up to 1e4: finite, relative error of y and dy/dx", e64, 1e-15);
    tu_check_err("silu f32 at |x| up to 1e4: finite, relative error of y and dy/dx", e32, 1e-6);
    free(x), free(b), free(dy), free(y), free(da), free(db);
    free(x32), free(b32), free(dy32), free(y32), free(da32), free(db32);
}

/* ---------------------------------------------------------------------------------------------- */
/* dropout */

static void drop_bad_p(void *p) { cpu_dropout_forward_f32(B32, p); }

static void test_dropout(void) {
    const size_t n = (size_t)1 << 20;
    double *xd = tu_dalloc(n);
    fill_f32exact(xd, n, 0.1, 2);
    float *x = falloc(n), *y = falloc(n), *y2 = falloc(n), *dy = falloc(n), *dx = falloc(n);
    tu_to_f32(x, xd, n);
    tu_fill_signed(xd, n, 0.1, 2);
    tu_to_f32(dy, xd, n);

    /* p = 0: exact copy, both directions, and accumulate adds. */
    MgDropoutArgs a = {.n = (int64_t)n, .p = 0.0, .seed = 42, .offset = 0, .x = x, .y = y, .dy = dy, .dx = dx};
    cpu_dropout_forward_f32(B32, &a);
    cpu_dropout_backward_f32(B32, &a);
    tu_check(!memcmp(x, y, sizeof(float) * n) && !memcmp(dx, dy, sizeof(float) * n), "dropout p=0 is an exact copy",
             "forward and backward, n=%zu", n);
    a.accumulate = 1;
    cpu_dropout_backward_f32(B32, &a);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= dx[i] == dy[i] + dy[i];
    tu_check(ok, "dropout p=0 backward accumulate: dx += dy", "bitwise");

    const double ps[] = {0.1, 0.3, 0.5, 0.9};
    for (int pi = 0; pi < 4; pi++) {
        const double p = ps[pi];
        const float scale = (float)(1.0 / (1.0 - p));
        MgDropoutArgs d = {.n = (int64_t)n, .p = p, .seed = 1234 + pi, .offset = 977, .x = x, .y = y, .dy = dy, .dx = dx};
        cpu_dropout_forward_f32(B32, &d);
        size_t kept = 0, pairs = 0, bad = 0;
        double sum_y = 0, sum_x = 0;
        for (size_t i = 0; i < n; i++) {
            int k = y[i] != 0;
            kept += k;
            if (k && y[i] != x[i] * scale) bad++;
            if (i + 1 < n && k && y[i + 1] != 0) pairs++;
            sum_y += fabs((double)y[i]), sum_x += fabs((double)x[i]);
        }
        double frac = (double)kept / n, sd = sqrt(p * (1 - p) / n);
        char name[160];
        snprintf(name, sizeof name, "dropout p=%.1f keep fraction within 5 sigma of 1-p", p);
        tu_check(fabs(frac - (1 - p)) < 5 * sd && bad == 0, name, "kept %.5f, expected %.5f, sigma %.1e; %zu kept values "
                 "!= x/(1-p)", frac, 1 - p, sd, bad);
        double pf = (double)pairs / (n - 1), q = (1 - p) * (1 - p), sdq = sqrt(q * (1 - q) / n) * 2;
        snprintf(name, sizeof name, "dropout p=%.1f neighbours independent: P(keep i, keep i+1) = (1-p)^2", p);
        tu_check(fabs(pf - q) < 5 * sdq, name, "%.5f vs %.5f", pf, q);
        /* E[y] = x: mean of |y| / mean of |x| (sampling noise ~ sqrt(p/((1-p) n))). */
        double ratio = sum_y / sum_x, sdr = sqrt(p / ((1 - p) * n)) * 1.5;
        snprintf(name, sizeof name, "dropout p=%.1f preserves the expectation (sum|y| / sum|x|)", p);
        tu_check(fabs(ratio - 1) < 5 * sdr, name, "ratio %.5f, 5 sigma %.1e", ratio, 5 * sdr);

        /* Backward applies the same mask and scale. */
        cpu_dropout_backward_f32(B32, &d);
        size_t mism = 0;
        for (size_t i = 0; i < n; i++) {
            float expect = y[i] != 0 ? dy[i] * scale : 0.0f;
            mism += dx[i] != expect;
        }
        snprintf(name, sizeof name, "dropout p=%.1f backward uses the forward mask", p);
        tu_check(mism == 0, name, "%zu mismatches", mism);
        /* Same seed/offset: same output; in place (y == x) too. */
        cpu_dropout_forward_f32(B32, &d);
        memcpy(y2, x, sizeof(float) * n);
        MgDropoutArgs d2 = d;
        d2.x = y2, d2.y = y2;
        cpu_dropout_forward_f32(B32, &d2);
        snprintf(name, sizeof name, "dropout p=%.1f deterministic for the same seed/offset, also in place", p);
        tu_check(!memcmp(y, y2, sizeof(float) * n), name, "bitwise");
    }

    /* Counter semantics: a slice [s, n) with offset + s reproduces the tail of the full mask; another seed
     * gives a different mask (agreement ~ p^2 + (1-p)^2, not 1). */
    {
        const size_t s = 12345;
        MgDropoutArgs d = {.n = (int64_t)n, .p = 0.3, .seed = 7, .offset = 100, .x = x, .y = y};
        cpu_dropout_forward_f32(B32, &d);
        MgDropoutArgs d2 = {.n = (int64_t)(n - s), .p = 0.3, .seed = 7, .offset = 100 + s, .x = x + s, .y = y2 + s};
        cpu_dropout_forward_f32(B32, &d2);
        tu_check(!memcmp(y + s, y2 + s, sizeof(float) * (n - s)), "dropout mask of a slice = slice of the mask",
                 "offset + start");
        d2 = d, d2.seed = 8, d2.y = y2;
        cpu_dropout_forward_f32(B32, &d2);
        size_t agree = 0;
        for (size_t i = 0; i < n; i++) agree += (y[i] != 0) == (y2[i] != 0);
        double fa = (double)agree / n;
        tu_check(fabs(fa - 0.58) < 0.01, "dropout with another seed gives an independent mask",
                 "agreement %.4f, expected 0.58", fa);
    }

    /* f64 path: same mask as f32 (the hash does not depend on the precision). */
    {
        const size_t m = 4096;
        double *x64 = tu_dalloc(m), *y64 = tu_dalloc(m);
        for (size_t i = 0; i < m; i++) x64[i] = x[i];
        MgDropoutArgs d = {.n = (int64_t)m, .p = 0.25, .seed = 99, .offset = 5, .x = x64, .y = y64};
        cpu_dropout_forward_f64(B64, &d);
        d.x = x, d.y = y;
        cpu_dropout_forward_f32(B32, &d);
        size_t mism = 0;
        for (size_t i = 0; i < m; i++) mism += (y64[i] != 0) != (y[i] != 0) || fabs(y64[i] - x64[i] / 0.75) * (y64[i] != 0) > 1e-15;
        tu_check(mism == 0, "dropout f64 uses the same mask as f32 and scales by 1/(1-p)", "%zu mismatches", mism);
        free(x64), free(y64);
    }

    MgDropoutArgs bad = {.n = 4, .p = 1.0, .x = x, .y = y};
    tu_expect_failure_all("dropout refuses p = 1", drop_bad_p, &bad, (const char *const[]){"p=1", "[0, 1)", NULL});
    MgDropoutArgs bad2 = {.n = 4, .p = -0.1, .x = x, .y = y};
    tu_expect_failure_all("dropout refuses p < 0", drop_bad_p, &bad2, (const char *const[]){"p=-0.1", NULL});
    free(xd), free(x), free(y), free(y2), free(dy), free(dx);
}

/* ---------------------------------------------------------------------------------------------- */
/* sum_squares, axpy, scale */

static void test_vector_ops(void) {
    const size_t n = 100003;
    double *x = tu_dalloc(n), *yv = tu_dalloc(n), *y0 = tu_dalloc(n);
    fill_f32exact(x, n, 0.001, 3);
    fill_f32exact(y0, n, 0.001, 3);
    float *x32 = falloc(n), *y32 = falloc(n);
    tu_to_f32(x32, x, n);
    double ref = tu_dot(x, x, n); /* products of floats are exact in double; compensated sum */
    int orig = mg_get_threads();
    mg_set_threads(1);
    double s64a = B64->sum_squares(B64, x, (int64_t)n), s32a = B32->sum_squares(B32, x32, (int64_t)n);
    mg_set_threads(2);
    double s64b = B64->sum_squares(B64, x, (int64_t)n), s32b = B32->sum_squares(B32, x32, (int64_t)n);
    mg_set_threads(orig);
    double e = fmax(fabs(s64a - ref), fabs(s32a - ref)) / ref;
    tu_check_err("sum_squares f32/f64 vs compensated sum, n=100003 (relative)", e, 1e-13);
    tu_check(s64a == s64b && s32a == s32b, "sum_squares identical with 1 and 2 threads", "bitwise");
    tu_check(B64->sum_squares(B64, x, 0) == 0 && B32->sum_squares(B32, x32, 3) == (double)x32[0] * x32[0] +
             (double)x32[1] * x32[1] + (double)x32[2] * x32[2], "sum_squares n=0 and n=3", "exact");

    /* axpy / scale against the round-to-nearest bounds, u = 2^-24 (f32) or 2^-53 (f64): scale is one
     * rounding (error <= u |alpha x|), axpy two (error <= 2u (|y| + |alpha x|)). The f32 reference uses
     * the float-rounded alpha, as the op does. */
    const double alpha = -0.3721;
    const float a32 = (float)alpha;
    memcpy(yv, y0, sizeof(double) * n);
    tu_to_f32(y32, y0, n);
    B64->axpy(B64, (int64_t)n, alpha, x, yv);
    B32->axpy(B32, (int64_t)n, alpha, x32, y32);
    double e64 = 0, e32 = 0;
    for (size_t i = 0; i < n; i++) {
        double b64 = fabs(y0[i]) + fabs(alpha * x[i]), b32 = fabs(y0[i]) + fabs((double)a32 * x[i]);
        e64 = fmax(e64, fabs(yv[i] - (y0[i] + alpha * x[i])) / b64);
        e32 = fmax(e32, fabs((double)y32[i] - (y0[i] + (double)a32 * x[i])) / b32);
    }
    tu_check_err("axpy f64: y += alpha x (error / (|y| + |alpha x|))", e64, 2.5e-16);
    tu_check_err("axpy f32: y += alpha x (error / (|y| + |alpha x|))", e32, 1.3e-7);
    memcpy(yv, x, sizeof(double) * n);
    tu_to_f32(y32, x, n);
    B64->scale(B64, (int64_t)n, alpha, yv);
    B32->scale(B32, (int64_t)n, alpha, y32);
    e64 = e32 = 0;
    for (size_t i = 0; i < n; i++) {
        e64 = fmax(e64, fabs(yv[i] - alpha * x[i]) / fabs(alpha * x[i]));
        e32 = fmax(e32, fabs((double)y32[i] - (double)a32 * x[i]) / fabs((double)a32 * x[i]));
    }
    tu_check_err("scale f64: x *= alpha (relative)", e64, 1.2e-16);
    tu_check_err("scale f32: x *= alpha (relative)", e32, 6e-8);
    free(x), free(yv), free(y0), free(x32), free(y32);
}

/* ---------------------------------------------------------------------------------------------- */
/* AdamW against the formula of ops.h, carried in double. */

static void adamw_bad_step(void *p) { cpu_adamw_update_f32(B32, p); }

static void test_adamw(void) {
    const int n = 1000, steps = 6;
    const struct {
        double lr, b1, b2, eps, wd, gs;
    } cfgs[] = {{1e-2, 0.9, 0.999, 1e-8, 0.1, 0.5}, {3e-3, 0.8, 0.95, 1e-3, 0.0, 2.0}};
    for (int ci = 0; ci < 2; ci++) {
        float *p = falloc(n), *m = falloc(n), *v = falloc(n), *g = falloc(n);
        double *pd = tu_dalloc(n), *md = tu_dalloc(n), *vd = tu_dalloc(n), *gd = tu_dalloc(n);
        fill_f32exact(pd, n, 0.05, 1);
        tu_to_f32(p, pd, n);
        for (int s = 1; s <= steps; s++) {
            fill_f32exact(gd, n, 1e-3, 1);
            tu_to_f32(g, gd, n);
            MgAdamWArgs a = {.n = n, .param = p, .grad = g, .m = m, .v = v, .lr = cfgs[ci].lr, .beta1 = cfgs[ci].b1,
                             .beta2 = cfgs[ci].b2, .eps = cfgs[ci].eps, .weight_decay = cfgs[ci].wd,
                             .grad_scale = cfgs[ci].gs, .step = s};
            cpu_adamw_update_f32(B32, &a);
            const double b1 = cfgs[ci].b1, b2 = cfgs[ci].b2;
            for (int i = 0; i < n; i++) {
                double gi = gd[i] * cfgs[ci].gs;
                md[i] = b1 * md[i] + (1 - b1) * gi;
                vd[i] = b2 * vd[i] + (1 - b2) * gi * gi;
                double mh = md[i] / (1 - pow(b1, s)), vh = vd[i] / (1 - pow(b2, s));
                pd[i] -= cfgs[ci].lr * (mh / (sqrt(vh) + cfgs[ci].eps) + cfgs[ci].wd * pd[i]);
            }
        }
        double ep = err_f32(p, pd, n);
        double em = fmax(err_f32(m, md, n), err_f32(v, vd, n));
        char name[160];
        snprintf(name, sizeof name, "adamw_update vs double formula, %d steps (lr=%g b1=%g b2=%g eps=%g wd=%g gs=%g): "
                 "param", steps, cfgs[ci].lr, cfgs[ci].b1, cfgs[ci].b2, cfgs[ci].eps, cfgs[ci].wd, cfgs[ci].gs);
        tu_check_err(name, ep, 1e-6);
        snprintf(name, sizeof name, "adamw_update vs double formula, config %d: moments m, v", ci);
        tu_check_err(name, em, 1e-6);
        free(p), free(m), free(v), free(g), free(pd), free(md), free(vd), free(gd);
    }
    /* Separate compute-dtype parameters (cpu-f64: float64 params, fp32 masters): the masters follow the
     * same float32 arithmetic bit for bit, and param_out receives them exactly. */
    {
        float *p = falloc(n), *m = falloc(n), *v = falloc(n), *p2 = falloc(n), *m2 = falloc(n), *v2 = falloc(n);
        double *pd = tu_dalloc(n), *gd = tu_dalloc(n), *out = tu_dalloc(n);
        fill_f32exact(pd, n, 0.05, 1);
        tu_to_f32(p, pd, n);
        tu_to_f32(p2, pd, n);
        float *g32 = falloc(n);
        int same = 1;
        for (int s = 1; s <= 3; s++) {
            fill_f32exact(gd, n, 1e-3, 1);
            tu_to_f32(g32, gd, n);
            MgAdamWArgs a = {.n = n, .param = p, .grad = g32, .m = m, .v = v, .lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99,
                             .eps = 1e-8, .weight_decay = 0.1, .grad_scale = 1.0, .step = s};
            cpu_adamw_update_f32(B32, &a);
            MgAdamWArgs b = a;
            b.param = p2, b.m = m2, b.v = v2, b.grad = gd, b.param_out = out;
            cpu_adamw_update_f64(B64, &b);
            for (int i = 0; i < n; i++) same &= p[i] == p2[i] && m[i] == m2[i] && (double)p2[i] == out[i];
        }
        tu_check(same, "adamw_update with a float64 gradient and param_out: masters identical, param_out = masters",
                 "3 steps, %d elements", n);
        free(p), free(m), free(v), free(p2), free(m2), free(v2), free(pd), free(gd), free(out), free(g32);
    }
    MgAdamWArgs bad = {.n = 0, .step = 0};
    tu_expect_failure_all("adamw_update refuses step 0", adamw_bad_step, &bad, (const char *const[]){"step", NULL});
}

int main(void) {
    tu_init("test_basic_ops");
    test_embedding();
    test_linear_grad(1);
    test_linear_grad(0);
    test_linear_f32();
    for (int k = 0; k < 4; k++) test_act((MgActKind)k);
    test_act_f32();
    test_dropout();
    test_vector_ops();
    test_adamw();
    return tu_finish();
}
