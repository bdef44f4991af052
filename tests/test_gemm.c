/* cpu_gemm_f32 / cpu_gemm_f64 against a naive triple loop: all four transpose combinations, non-square
 * shapes, strided rows (lda/ldb/ldc wider than the matrix), beta in {0, 1, 0.5}, alpha != 1, K = 0,
 * and calls from inside an OpenMP parallel region. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/cpu_ops.h"
#include "test_util.h"

#define SENTINEL 12345.0
/* Tolerances on |C - ref| / (|alpha| sum_k |a b| + |beta c0|), per unit of (K + 2): the classical
 * worst-case summation bound is about K * unit roundoff. */
#define TOL64 4e-16
#define TOL32 2e-7

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    double alpha, beta;
    /* buffers */
    double *A, *B, *C0, *ref, *bound, *C64;
    float *A32, *B32, *C32;
} Case;

static double at(const double *A, int trans, int ld, int i, int k) {
    return trans ? A[(size_t)k * ld + i] : A[(size_t)i * ld + k];
}

/* Draws the inputs (serially: the test generator is not thread-safe) and the naive reference. */
static void case_setup(Case *c) {
    size_t na = (size_t)(c->ta ? c->K : c->M) * c->lda, nb = (size_t)(c->tb ? c->N : c->K) * c->ldb;
    size_t nc = (size_t)c->M * c->ldc;
    c->A = malloc(sizeof(double) * (na + 1)), c->B = malloc(sizeof(double) * (nb + 1));
    c->C0 = malloc(sizeof(double) * nc), c->ref = malloc(sizeof(double) * nc);
    c->bound = malloc(sizeof(double) * nc), c->C64 = malloc(sizeof(double) * nc);
    c->A32 = malloc(sizeof(float) * (na + 1)), c->B32 = malloc(sizeof(float) * (nb + 1));
    c->C32 = malloc(sizeof(float) * nc);
    tu_fill_uniform(c->A, na, -1, 1);
    tu_fill_uniform(c->B, nb, -1, 1);
    tu_fill_uniform(c->C0, nc, -1, 1);
    /* Inputs rounded to float so both precisions multiply the same numbers. */
    tu_to_f32(c->A32, c->A, na), tu_from_f32(c->A, c->A32, na);
    tu_to_f32(c->B32, c->B, nb), tu_from_f32(c->B, c->B32, nb);
    for (int i = 0; i < c->M; i++) {
        for (int j = c->N; j < c->ldc; j++) c->C0[(size_t)i * c->ldc + j] = SENTINEL;
        /* beta == 0 must not read C (BLAS semantics): poison it. */
        if (c->beta == 0)
            for (int j = 0; j < c->N; j++) c->C0[(size_t)i * c->ldc + j] = NAN;
    }
    tu_to_f32(c->C32, c->C0, nc), tu_from_f32(c->C0, c->C32, nc);
    memcpy(c->C64, c->C0, sizeof(double) * nc);
    for (int i = 0; i < c->M; i++)
        for (int j = 0; j < c->N; j++) {
            double s = 0, sa = 0;
            for (int k = 0; k < c->K; k++) {
                double p = at(c->A, c->ta, c->lda, i, k) * at(c->B, c->tb, c->ldb, k, j);
                s += p;
                sa += fabs(p);
            }
            size_t q = (size_t)i * c->ldc + j;
            double c0 = c->beta == 0 ? 0 : c->C0[q];
            c->ref[q] = c->alpha * s + c->beta * c0;
            c->bound[q] = fabs(c->alpha) * sa + fabs(c->beta * c0) + 1e-300;
        }
}

static void case_run(Case *c) {
    cpu_gemm_f64(c->ta, c->tb, c->M, c->N, c->K, c->alpha, c->A, c->lda, c->B, c->ldb, c->beta, c->C64, c->ldc);
    cpu_gemm_f32(c->ta, c->tb, c->M, c->N, c->K, (float)c->alpha, c->A32, c->lda, c->B32, c->ldb, (float)c->beta,
                 c->C32, c->ldc);
}

/* Worst normalised errors of both precisions; *pad_ok = padding columns of C untouched. Frees buffers. */
static void case_finish(Case *c, double *e32, double *e64, int *pad_ok) {
    double w32 = 0, w64 = 0;
    int ok = 1;
    for (int i = 0; i < c->M; i++) {
        for (int j = 0; j < c->N; j++) {
            size_t q = (size_t)i * c->ldc + j;
            double d64 = fabs(c->C64[q] - c->ref[q]) / c->bound[q];
            double d32 = fabs((double)c->C32[q] - c->ref[q]) / c->bound[q];
            w64 = (isnan(d64) || d64 > w64) ? (isnan(d64) ? INFINITY : d64) : w64;
            w32 = (isnan(d32) || d32 > w32) ? (isnan(d32) ? INFINITY : d32) : w32;
        }
        for (int j = c->N; j < c->ldc; j++) {
            size_t q = (size_t)i * c->ldc + j;
            if (c->C64[q] != SENTINEL || c->C32[q] != (float)SENTINEL) ok = 0;
        }
    }
    *e32 = w32, *e64 = w64, *pad_ok = ok;
    free(c->A), free(c->B), free(c->C0), free(c->ref), free(c->bound), free(c->C64);
    free(c->A32), free(c->B32), free(c->C32);
}

int main(void) {
    tu_init("test_gemm");
    printf("# gemm backend: %s\n", cpu_blas_info());
    const int shapes[][3] = {{7, 5, 3}, {33, 17, 65}, {1, 9, 4}, {70, 130, 45}, {5, 1, 200}, {129, 67, 300}};
    const double betas[] = {0.0, 1.0, 0.5};
    const double alphas[] = {1.0, -1.75};
    double worst32 = 0, worst64 = 0;
    int all_pad = 1, ncases = 0, nbad = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int bi = 0; bi < 3; bi++)
                    for (int ai = 0; ai < 2; ai++) {
                        Case c = {.ta = ta, .tb = tb, .M = shapes[s][0], .N = shapes[s][1], .K = shapes[s][2],
                                  .alpha = alphas[ai], .beta = betas[bi]};
                        int pad = (int)(s % 3) * 3; /* 0, 3, 6: contiguous and strided layouts */
                        c.lda = (ta ? c.M : c.K) + pad;
                        c.ldb = (tb ? c.K : c.N) + pad + (s % 3 ? 1 : 0);
                        c.ldc = c.N + pad + (s % 3 ? 2 : 0);
                        double e32, e64;
                        int pad_ok;
                        case_setup(&c);
                        case_run(&c);
                        case_finish(&c, &e32, &e64, &pad_ok);
                        e32 /= c.K + 2, e64 /= c.K + 2;
                        if (e64 > TOL64 || e32 > TOL32 || !pad_ok) {
                            /* Only failing cases get their own line; the summaries below cover the rest. */
                            char name[160];
                            snprintf(name, sizeof name, "gemm ta=%d tb=%d M=%d N=%d K=%d lda=%d ldb=%d ldc=%d alpha=%g "
                                     "beta=%g", ta, tb, c.M, c.N, c.K, c.lda, c.ldb, c.ldc, c.alpha, c.beta);
                            tu_check(0, name, "f64 error %.2e (tol %.0e), f32 error %.2e (tol %.0e), padding %s", e64,
                                     TOL64, e32, TOL32, pad_ok ? "ok" : "overwritten");
                            nbad++;
                        }
                        worst32 = fmax(worst32, e32);
                        worst64 = fmax(worst64, e64);
                        all_pad &= pad_ok;
                        ncases++;
                    }
    printf("# %d gemm cases (6 shapes x 4 transposes x 3 betas x 2 alphas), %d failing\n", ncases, nbad);
    tu_check_err("gemm_f64 vs naive, all cases (worst error / (K+2))", worst64, TOL64);
    tu_check_err("gemm_f32 vs naive, all cases (worst error / (K+2))", worst32, TOL32);
    tu_check(all_pad, "gemm leaves the padding columns of strided C untouched", "%d cases", ncases);

    /* K = 0: C = beta C; with beta = 0 C is not read (it holds NaN). */
    for (int bi = 0; bi < 2; bi++) {
        Case c = {.M = 4, .N = 3, .K = 0, .lda = 1, .ldb = 3, .ldc = 5, .alpha = 2.0, .beta = bi ? 0.5 : 0.0};
        double e32, e64;
        int pad_ok;
        case_setup(&c);
        case_run(&c);
        case_finish(&c, &e32, &e64, &pad_ok);
        tu_check(e64 == 0 && e32 == 0 && pad_ok, bi ? "gemm K=0 gives C = beta*C" : "gemm K=0 beta=0 gives C = 0",
                 "errors %.1e %.1e", e64, e32);
    }

    /* Inside a parallel region every thread runs its own product. */
    {
        enum { NJ = 8 };
        Case cs[NJ];
        for (int j = 0; j < NJ; j++) {
            Case c = {.ta = j & 1, .tb = (j >> 1) & 1, .M = 40 + j, .N = 31, .K = 77, .alpha = 0.75,
                      .beta = j % 3 == 0 ? 0.0 : 0.5};
            c.lda = (c.ta ? c.M : c.K) + 1;
            c.ldb = (c.tb ? c.K : c.N) + 2;
            c.ldc = c.N + 3;
            cs[j] = c;
            case_setup(&cs[j]);
        }
#pragma omp parallel for schedule(static, 1) num_threads(2)
        for (int j = 0; j < NJ; j++) case_run(&cs[j]);
        double w = 0;
        int ok = 1;
        for (int j = 0; j < NJ; j++) {
            double e32, e64;
            int pad_ok;
            case_finish(&cs[j], &e32, &e64, &pad_ok);
            w = fmax(w, fmax(e64 / TOL64, e32 / TOL32) / (cs[j].K + 2));
            ok &= pad_ok;
        }
        tu_check(w <= 1 && ok, "gemm called from inside an OpenMP parallel region", "worst error / tolerance %.2e", w);
    }
    return tu_finish();
}
