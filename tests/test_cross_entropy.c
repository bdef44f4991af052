/* Fused softmax cross-entropy: loss against a naive log-softmax, the fused gradient against finite
 * differences of L = grad_scale * sum(losses) in float64, ignore_index rows, in-place gradient, large
 * logits in float32, float32 vs float64 at vocabulary width 32000, thread independence, bad targets. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../kernels/cpu/cpu_ops.h"
#include "test_util.h"

static const MgBackend *B32 = &mg_cpu_backend_f32, *B64 = &mg_cpu_backend_f64;
#define IGNORE (-100)

static float *falloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }


/* Reference loss of one row in long double: logsumexp - x[target]. */
static double naive_loss(const double *x, int V, int target) {
    long double m = x[0], s = 0;
    for (int j = 1; j < V; j++) m = x[j] > m ? x[j] : m;
    for (int j = 0; j < V; j++) s += expl((long double)x[j] - m);
    return (double)(m + logl(s) - (long double)x[target]);
}

typedef struct {
    MgCrossEntropyArgs a;
    double *losses;
} CeCtx;

/* L = grad_scale * sum_t loss_t: the function whose gradient the fused backward writes. */
static double ce_loss(void *p) {
    CeCtx *c = p;
    MgCrossEntropyArgs a = c->a;
    a.dlogits = NULL;
    a.losses = c->losses;
    cpu_cross_entropy_f64(B64, &a);
    double s = 0;
    for (int64_t t = 0; t < a.T; t++) s += c->losses[t];
    return a.grad_scale * s;
}


int main(void) {
    tu_init("test_cross_entropy");

    /* --- small float64 case: loss, gradient, ignore_index, in place ------------------------------- */
    {
        const int T = 7, V = 13;
        const size_t n = (size_t)T * V;
        double *x = tu_dalloc(n), *d = tu_dalloc(n), *loss = tu_dalloc(T), *tmp = tu_dalloc(T), *xi = tu_dalloc(n), *li = tu_dalloc(T);
        int32_t tg[7] = {3, 0, IGNORE, 12, 5, IGNORE, 7};
        tu_fill_normal(x, n, 2.0);
        for (size_t i = 0; i < n; i++) d[i] = 9.0; /* must be overwritten, including ignored rows */
        MgCrossEntropyArgs a = {.T = T, .V = V, .ignore_index = IGNORE, .logits = x, .targets = tg, .grad_scale = 0.37,
                                .losses = loss, .dlogits = d};
        cpu_cross_entropy_f64(B64, &a);
        double le = 0;
        int ign_ok = 1;
        for (int t = 0; t < T; t++) {
            if (tg[t] == IGNORE) {
                ign_ok &= loss[t] == 0;
                for (int j = 0; j < V; j++) ign_ok &= d[t * V + j] == 0;
                continue;
            }
            double r = naive_loss(x + t * V, V, tg[t]);
            le = fmax(le, fabs(loss[t] - r) / fabs(r));
        }
        tu_check_err("cross_entropy_f64 loss vs naive log-softmax (relative)", le, 1e-14);
        tu_check(ign_ok, "cross_entropy ignore_index rows: loss 0 and gradient row 0", "2 of 7 rows ignored");
        CeCtx c = {a, tmp};
        tu_grad_check("cross_entropy grad logits = d(grad_scale * sum losses)/dlogits (f64)", x, n, d, ce_loss, &c,
                      1e-6);
        /* Each counted row of the gradient sums to 0 (softmax - onehot). */
        double rs = 0;
        for (int t = 0; t < T; t++) {
            double s = 0;
            for (int j = 0; j < V; j++) s += d[t * V + j];
            rs = fmax(rs, fabs(s));
        }
        tu_check_err("cross_entropy gradient rows sum to 0", rs, 1e-15);
        /* In place: dlogits == logits. */
        memcpy(xi, x, sizeof(double) * n);
        MgCrossEntropyArgs ai = a;
        ai.logits = xi, ai.dlogits = xi, ai.losses = li;
        cpu_cross_entropy_f64(B64, &ai);
        double ie = fmax(tu_max_rel_err(xi, d, n, 1e-300), tu_max_rel_err(li, loss, T, 1e-300));
        tu_check_err("cross_entropy in place (dlogits == logits) equals out of place", ie, 0);
        /* dlogits == NULL: losses only, same values. */
        MgCrossEntropyArgs an = a;
        an.dlogits = NULL, an.losses = li;
        cpu_cross_entropy_f64(B64, &an);
        tu_check_err("cross_entropy with dlogits = NULL gives the same losses", tu_max_rel_err(li, loss, T, 1e-300), 0);
        free(x), free(d), free(loss), free(tmp), free(xi), free(li);
    }

    /* --- confident rows: p_target -> 1, the gradient (p - 1) is tiny but must keep its precision ---- */
    {
        const int V = 50;
        double x[50], d[50], loss[1];
        for (int j = 0; j < V; j++) x[j] = -5.0 + 0.1 * j;
        x[17] = 25.0; /* p_17 = 1 - ~2.4e-11 */
        int32_t tg = 17;
        MgCrossEntropyArgs a = {.T = 1, .V = V, .ignore_index = IGNORE, .logits = x, .targets = &tg, .grad_scale = 1.0,
                                .losses = loss, .dlogits = d};
        cpu_cross_entropy_f64(B64, &a);
        long double other = 0, m = 25.0L, s;
        for (int j = 0; j < V; j++)
            if (j != 17) other += expl((long double)x[j] - m);
        s = 1.0L + other;
        double ref_d = (double)(-other / s), ref_l = (double)log1pl(other);
        double e = fmax(fabs(d[17] - ref_d) / fabs(ref_d), fabs(loss[0] - ref_l) / ref_l);
        tu_check_err("cross_entropy f64 confident row: loss ~2e-11 and p_t - 1 relative error", e, 1e-13);
        float x32[50], d32[50], l32[1];
        for (int j = 0; j < V; j++) x32[j] = (float)x[j];
        a.logits = x32, a.dlogits = d32, a.losses = l32;
        x32[17] = 12.0f; /* p_17 - 1 ~ -4e-6 in float */
        cpu_cross_entropy_f32(B32, &a);
        other = 0, m = 12.0L;
        for (int j = 0; j < V; j++)
            if (j != 17) other += expl((long double)x32[j] - m);
        ref_d = (double)(-other / (1.0L + other));
        e = fabs(d32[17] - ref_d) / fabs(ref_d);
        tu_check_err("cross_entropy f32 confident row: p_t - 1 ~ -4e-6 relative error", e, 1e-6);
    }

    /* --- float32 vs float64 at V = 32000 (the paper's vocabulary), with large logits --------------- */
    {
        const int T = 6, V = 32000;
        const size_t n = (size_t)T * V;
        double *x = tu_dalloc(n), *d = tu_dalloc(n), *loss = tu_dalloc(T);
        float *x32 = falloc(n), *d32 = falloc(n), *l32 = falloc(T);
        int32_t tg[6] = {0, 31999, 12345, IGNORE, 777, 4};
        tu_fill_normal(x, n, 3.0);
        /* rows 4 and 5: logits up to +-1e4 (exp overflows without the max subtraction) */
        for (int j = 0; j < V; j++) x[4 * V + j] = 1e4 * (2 * tu_uniform() - 1), x[5 * V + j] = -1e4 + 50 * tu_uniform();
        x[4 * V + 777] = 1e4;
        tu_to_f32(x32, x, n);
        tu_from_f32(x, x32, n);
        MgCrossEntropyArgs a = {.T = T, .V = V, .ignore_index = IGNORE, .logits = x, .targets = tg,
                                .grad_scale = 1.0 / 5, .losses = loss, .dlogits = d};
        MgCrossEntropyArgs a32 = a;
        a32.logits = x32, a32.dlogits = d32, a32.losses = l32;
        cpu_cross_entropy_f64(B64, &a);
        cpu_cross_entropy_f32(B32, &a32);
        double le = 0, ref_err = 0;
        int finite = 1;
        for (int t = 0; t < T; t++) {
            finite &= isfinite(l32[t]) && isfinite(loss[t]);
            le = fmax(le, fabs(l32[t] - loss[t]) / fmax(fabs(loss[t]), 1e-3));
            if (tg[t] != IGNORE) ref_err = fmax(ref_err, fabs(loss[t] - naive_loss(x + (size_t)t * V, V, tg[t])) /
                                                             fabs(naive_loss(x + (size_t)t * V, V, tg[t])));
        }
        for (size_t i = 0; i < n; i++) finite &= isfinite(d32[i]) && isfinite(d[i]);
        tu_check(finite, "cross_entropy logits up to +-1e4: losses and gradients finite (f32 and f64)", "no inf/NaN");
        tu_check_err("cross_entropy_f64 V=32000 loss vs naive (relative)", ref_err, 1e-13);
        tu_check_err("cross_entropy losses f32 vs f64, V=32000, incl. +-1e4 logits (relative)", le, 1e-6);
        /* Gradient rows: each entry of a row is relative to that row's largest (softmax mass concentrates). */
        double ge = 0;
        for (int t = 0; t < T; t++) {
            double mx = tu_max_abs(d + (size_t)t * V, V);
            if (mx == 0) continue;
            for (int j = 0; j < V; j++) ge = fmax(ge, fabs(d32[(size_t)t * V + j] - d[(size_t)t * V + j]) / mx);
        }
        tu_check_err("cross_entropy dlogits f32 vs f64, V=32000 (error / row max)", ge, 1e-6);

        /* Threads: rows are independent, so the result must be bitwise identical. */
        float *d32b = falloc(n), *l32b = falloc(T);
        int orig = mg_get_threads();
        mg_set_threads(1);
        a32.dlogits = d32b, a32.losses = l32b;
        cpu_cross_entropy_f32(B32, &a32);
        mg_set_threads(orig);
        tu_check(!memcmp(d32b, d32, sizeof(float) * n) && !memcmp(l32b, l32, sizeof(float) * T),
                 "cross_entropy f32 identical with 1 thread and the default", "%d threads", orig);
        free(x), free(d), free(loss), free(x32), free(d32), free(l32), free(d32b), free(l32b);
    }

    /* --- targets outside the vocabulary ----------------------------------------------------------
     * Target ids are validated on the host where they enter (mg_check_ids); the op never reads out of
     * bounds for one: such a row counts as ignored (loss 0, gradient 0). */
    {
        float x[4 * 5], d[4 * 5], l[4];
        for (int i = 0; i < 20; i++) x[i] = (float)(0.1 * i);
        int32_t tg[4] = {1, 5, -7, 0};
        MgCrossEntropyArgs a = {.T = 4, .V = 5, .ignore_index = IGNORE, .logits = x, .targets = tg, .grad_scale = 1,
                                .losses = l, .dlogits = d};
        cpu_cross_entropy_f32(B32, &a);
        int zero = l[1] == 0 && l[2] == 0 && l[0] > 0 && l[3] > 0;
        for (int j = 5; j < 15; j++) zero &= d[j] == 0;
        tu_check(zero, "cross_entropy treats a target outside [0, V) as ignored (no out-of-bounds read)",
                 "losses %g %g %g %g", l[0], l[1], l[2], l[3]);
        char err[256] = "";
        int rc = mg_check_ids(tg, 4, 5, IGNORE, "target", err, sizeof err);
        tu_check(rc == -1 && strstr(err, "target id 5 at position 1"), "host target check names the bad id", "%s", err);
    }
    return tu_finish();
}
