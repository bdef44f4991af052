/* Shared helpers for every part of the project: checked allocation, fatal errors that say file:line
 * and what to do, and small numeric utilities. Host code only (C11). */
#ifndef MG_COMMON_H
#define MG_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__GNUC__)
#define MG_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define MG_NORETURN __attribute__((noreturn))
#define MG_MAYBE_UNUSED __attribute__((unused))
#else
#define MG_PRINTF(a, b)
#define MG_NORETURN
#define MG_MAYBE_UNUSED
#endif

/* Fatal errors. Library code never calls exit() itself: it formats one message and hands it to the
 * error hook. The default hook prints "error: <message>" to stderr (with [file:line] when the environment
 * sets MG_DEBUG_LOCATIONS) and exits with status 1. A distributed run installs a hook that prints the
 * message once and aborts every rank (MPI_Abort); tests install one that records the message and
 * longjmps back, so error paths can be tested without fork() (which is unsafe once a GPU context exists).
 * A hook must not return; if it does, the process exits with status 1.
 *
 * Ops call mg_fatal only outside OpenMP parallel regions (they validate their arguments first), so a
 * hook that unwinds never leaves a parallel region half-finished. */
typedef void (*MgErrorHook)(const char *message, const char *file, int line, void *ctx);
/* Install a hook (NULL restores the default); returns the previous one and its ctx via *prev_ctx. */
MgErrorHook mg_set_error_hook(MgErrorHook hook, void *ctx, void **prev_ctx);

MG_NORETURN void mg_fatal_at(const char *file, int line, const char *fmt, ...) MG_PRINTF(3, 4);
#define mg_fatal(...) mg_fatal_at(__FILE__, __LINE__, __VA_ARGS__)

/* Hard invariant (a programming error, or a bad argument to an op): the message is followed by the
 * failed condition and its file:line, e.g.
 *   error: attention_forward: chunk=0 must be >= 1 (check `a->chunk >= 1` failed at kernels/cpu/attention.c:41) */
MG_NORETURN void mg_check_failed(const char *cond, const char *file, int line, const char *fmt, ...) MG_PRINTF(4, 5);
#define MG_CHECK(cond, ...)                                                                            \
    do {                                                                                               \
        if (!(cond)) mg_check_failed(#cond, __FILE__, __LINE__, __VA_ARGS__);                          \
    } while (0)

/* Format a one-line message into err (if err is not NULL) and return -1: the error convention of every
 * function that reports problems to its caller instead of exiting. */
int mg_errf(char *err, size_t errlen, const char *fmt, ...) MG_PRINTF(3, 4);

void *mg_malloc_at(size_t bytes, const char *file, int line);
void *mg_calloc_at(size_t n, size_t size, const char *file, int line);
void *mg_realloc_at(void *p, size_t bytes, const char *file, int line);
/* 64-byte aligned, for SIMD-friendly activation/parameter arenas. Free with mg_free_aligned. */
void *mg_malloc_aligned_at(size_t bytes, const char *file, int line);
void mg_free_aligned(void *p);
char *mg_strdup_at(const char *s, const char *file, int line);
#define mg_malloc(bytes) mg_malloc_at((bytes), __FILE__, __LINE__)
#define mg_calloc(n, size) mg_calloc_at((n), (size), __FILE__, __LINE__)
#define mg_realloc(p, bytes) mg_realloc_at((p), (bytes), __FILE__, __LINE__)
#define mg_malloc_aligned(bytes) mg_malloc_aligned_at((bytes), __FILE__, __LINE__)
#define mg_strdup(s) mg_strdup_at((s), __FILE__, __LINE__)

/* Number of mg_malloc / mg_calloc / mg_realloc / mg_malloc_aligned calls so far in this process
 * (relaxed atomic counter): tests use it to prove that a training step allocates nothing. */
int64_t mg_alloc_calls(void);

/* fopen that exits with a clear message naming the path and the reason. */
FILE *mg_fopen_at(const char *path, const char *mode, const char *file, int line);
#define mg_fopen(path, mode) mg_fopen_at((path), (mode), __FILE__, __LINE__)

/* The one place token ids and targets are validated (ops never scan data, see kernels/ops.h): every
 * ids[i] must be in [0, V) or equal `ignore` (INT32_MIN: nothing is ignored). Returns 0, or -1 with
 * "<what> id X at position P is outside the vocabulary [0, V)" in err. */
int mg_check_ids(const int32_t *ids, int64_t n, int V, int32_t ignore, const char *what, char *err, size_t errlen);

/* Wall-clock seconds (monotonic). */
double mg_now(void);

/* Element types understood by backends and checkpoints. */
typedef enum { MG_F32 = 0, MG_F64 = 1, MG_BF16 = 2, MG_I64 = 3, MG_I32 = 4 } MgDtype;
size_t mg_dtype_size(MgDtype t);
const char *mg_dtype_name(MgDtype t);

/* Human-readable byte counts ("12.3 MiB"). Returns buf. */
char *mg_format_bytes(double bytes, char *buf, size_t n);

#define MG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MG_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
