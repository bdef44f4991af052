/* Minimal test harness shared by every C test program.
 *
 * Each check prints one line, "PASS <name> ..." or "FAIL <name>: ...", which scripts/run_tests.sh counts.
 * A check that cannot run prints "SKIP <name> (<reason>)" (tu_skip) instead of passing silently; the
 * runner counts and lists skips, and under `make test` (MG_TEST_STRICT=1) every skip is a failure except
 * a GPU test's on a machine without a GPU, whose reason starts with TU_NO_GPU (tests/README.md).
 * A test program ends with `return tu_finish();` (exit status 1 if anything failed).
 * Random inputs come from a seeded generator: the seed is printed at start-up and can be changed with
 * MG_TEST_SEED=<n> (or MG_TEST_SEED=random for a time-based seed). */
#ifndef MG_TEST_UTIL_H
#define MG_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/ops.h"
#include "../src/config.h"
#include "../src/params.h"

void tu_init(const char *program_name);
int tu_finish(void);

/* Record one check; returns cond. */
int tu_check(int cond, const char *name, const char *fmt, ...) MG_PRINTF(3, 4);
/* Record a check that could not run here, and why: prints "SKIP <name> (<reason>)"; the reason should
 * name what is missing and how to get it. Under MG_TEST_STRICT=1 (`make test`, after installing every
 * package) any skip whose reason does not start with TU_NO_GPU fails the suite. */
void tu_skip(const char *name, const char *fmt, ...) MG_PRINTF(2, 3);
/* The reason prefix of the one skip strict mode allows: a GPU test on a machine without a GPU, e.g.
 * tu_skip("cuda_gemm", TU_NO_GPU ": no CUDA device (cudaGetDeviceCount: %s)", msg). */
#define TU_NO_GPU "no GPU"
/* Check that err <= tol and print the measured error either way. */
int tu_check_err(const char *name, double err, double tol);

/* Random numbers (seeded per program). */
uint64_t tu_seed(void);
double tu_uniform(void);                 /* [0, 1) */
double tu_normal(void);                  /* N(0, 1) */
void tu_fill_uniform(double *x, size_t n, double lo, double hi);
void tu_fill_normal(double *x, size_t n, double std);
/* Uniform in [lo, hi] with a random sign, i.e. |x| >= lo: keeps values away from 0 when that matters. */
void tu_fill_signed(double *x, size_t n, double lo, double hi);

/* Zero-filled double buffer (never NULL, also for n == 0); free with free(). */
double *tu_dalloc(size_t n);
/* A malloc'd float32 copy of x; free with free(). */
float *tu_f32_of(const double *x, size_t n);

/* Conversions between the double test data and a backend's storage dtype. */
void tu_to_f32(float *dst, const double *src, size_t n);
void tu_from_f32(double *dst, const float *src, size_t n);

/* max_i |a_i - b_i| / max(|a_i|, |b_i|, floor). floor guards elements that are (nearly) zero in both. */
double tu_max_rel_err(const double *a, const double *b, size_t n, double floor);
double tu_max_rel_err_f32(const float *a, const double *b, size_t n, double floor);
double tu_max_abs(const double *a, size_t n);
/* The floor used by gradient checks: 1e-3 * max|reference| (never below 1e-12). */
double tu_grad_floor(const double *ref, size_t n);

/* Compensated (Neumaier) dot product; used to build scalar losses L = sum(dy * y) whose finite
 * differences are not swamped by summation round-off. */
double tu_dot(const double *a, const double *b, size_t n);

/* Central finite differences in float64 of loss(ctx) with respect to every element of x[0..n)
 * (x is perturbed in place and restored). Writes the numerical gradient to num (length n). Uses the
 * 4-point stencil (f(-2h) - 8f(-h) + 8f(h) - f(2h)) / 12h, with h = rel_h * max(1, |x_i|). */
typedef double (*tu_loss_fn)(void *ctx);
void tu_numeric_grad(double *x, size_t n, tu_loss_fn loss, void *ctx, double rel_h, double *num);

/* 6-point stencil (error O(h^6)): allows a larger step, so it suits losses whose rounding noise is large
 * (e.g. a whole model with a 32000-way softmax). */
void tu_numeric_grad6(double *x, size_t n, tu_loss_fn loss, void *ctx, double rel_h, double *num);

/* Convenience: numeric gradient of x, compare with `analytic`, record a check named `name` with
 * tolerance tol (worst elementwise relative error, floor tu_grad_floor). Returns the error. */
double tu_grad_check(const char *name, double *x, size_t n, const double *analytic, tu_loss_fn loss,
                     void *ctx, double tol);



/* The architecture of configs/tiny.conf (2 layers, d 64, chunk 16) with the given vocabulary, filled in
 * by hand so model tests do not depend on parsing; seq_len 32, batch 1. */
void tu_tiny_megalodon(MgConfig *c, int vocab);
/* A tiny Llama (arch = llama): 2 layers, d 32, 4 heads, kv_heads key/value heads (0 = 4), f 48,
 * context (seq_len) 32. */
void tu_tiny_llama(MgConfig *c, int vocab, int kv_heads);
/* n random token ids in [0, V). */
void tu_random_ids(int32_t *ids, int64_t n, int V);
/* Entries of dir whose name matches the POSIX basic regular expression `re` (as grep would: anywhere in the
 * name unless anchored); names starting with '.' only if with_hidden. -1 if dir or re is unusable. */
int tu_count_files(const char *dir, const char *re, int with_hidden);
/* Give the zero-initialised parameters of a float64 arena laid out by t (norm offsets, biases, qk gamma
 * and beta) N(0, scale^2) values, so a gradient check exercises them with non-zero values. */
void tu_perturb_zero_init(const MgParamTable *t, double *params, double scale);

/* A backend that forwards to `inner` and counts its memory calls (one process-wide instance; calling
 * tu_counting_backend again resets the counters and re-targets it). For tests that must measure what a
 * model or decoder really allocates, not what it plans. */
typedef struct {
    int64_t allocs, frees; /* be->alloc / be->free calls */
    size_t live, peak;     /* bytes currently allocated and the most at once */
} TuMemStats;
const MgBackend *tu_counting_backend(const MgBackend *inner);
TuMemStats tu_counting_stats(void);

/* Run fn(ctx) in a forked child with its stdout and stderr captured into out (NUL-terminated, at most
 * outlen - 1 bytes kept). Returns the child's exit status (fn returning normally = 0; 128 + signal if it
 * was killed; -1 if the child could not be started). */
int tu_run_child(void (*fn)(void *ctx), void *ctx, char *out, size_t outlen);

/* Run fn(ctx) in this process with an error hook installed (src/common.h): returns 1 if it raised an
 * error through mg_fatal / MG_CHECK, with the message as the default hook prints it ("error: ...") in
 * msg; 0 if it returned normally. No fork, so it keeps working once a GPU context exists. Whatever the
 * failing code had allocated is leaked. Not reentrant. */
int tu_catch_error(void (*fn)(void *ctx), void *ctx, char *msg, size_t msglen);

/* Check that fn(ctx) raises an error (tu_catch_error) whose message contains `expect` (NULL = any
 * message). Records one check named `name`. */
int tu_expect_failure(const char *name, void (*fn)(void *ctx), void *ctx, const char *expect);
/* The same with every string of the NULL-terminated list `needles` required in the output. */
int tu_expect_failure_all(const char *name, void (*fn)(void *ctx), void *ctx, const char *const *needles);
#endif
