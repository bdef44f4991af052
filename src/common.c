#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define MG_LEAK_CHECKED_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MG_LEAK_CHECKED_BUILD 1
#endif
#endif

static void default_error_hook(const char *message, const char *file, int line, void *ctx) {
    (void)ctx;
    fflush(stdout);
    if (getenv("MG_DEBUG_LOCATIONS")) fprintf(stderr, "error: %s [%s:%d]\n", message, file, line);
    else fprintf(stderr, "error: %s\n", message);
#ifdef MG_LEAK_CHECKED_BUILD
    /* Leak policy (tests/README.md): a fatal error ends the process where it stands, with whatever the
     * commands above it still hold; LeakSanitizer's exit-time check applies to normal and signal exits,
     * where every command frees what it allocated, so here the process ends without the atexit pass. */
    fflush(NULL);
    _exit(1);
#else
    exit(1);
#endif
}

static MgErrorHook g_error_hook = default_error_hook;
static void *g_error_ctx = NULL;

MgErrorHook mg_set_error_hook(MgErrorHook hook, void *ctx, void **prev_ctx) {
    MgErrorHook prev = g_error_hook;
    if (prev_ctx) *prev_ctx = g_error_ctx;
    g_error_hook = hook ? hook : default_error_hook;
    g_error_ctx = hook ? ctx : NULL;
    return prev == default_error_hook ? NULL : prev;
}

static MG_NORETURN void raise_error(const char *file, int line, const char *message) {
    g_error_hook(message, file, line, g_error_ctx);
    exit(1); /* a hook must not return */
}

void mg_fatal_at(const char *file, int line, const char *fmt, ...) {
    char msg[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    raise_error(file, line, msg);
}

void mg_check_failed(const char *cond, const char *file, int line, const char *fmt, ...) {
    char msg[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n < sizeof msg)
        snprintf(msg + n, sizeof msg - (size_t)n, " (check `%s` failed at %s:%d)", cond, file, line);
    raise_error(file, line, msg);
}

int mg_errf(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int64_t g_alloc_calls = 0;
int64_t mg_alloc_calls(void) { return __atomic_load_n(&g_alloc_calls, __ATOMIC_RELAXED); }
static void count_alloc(void) { __atomic_fetch_add(&g_alloc_calls, 1, __ATOMIC_RELAXED); }

void *mg_malloc_at(size_t bytes, const char *file, int line) {
    count_alloc();
    void *p = malloc(bytes ? bytes : 1);
    if (!p) mg_fatal_at(file, line, "out of memory allocating %zu bytes (%s:%d)", bytes, file, line);
    return p;
}

void *mg_calloc_at(size_t n, size_t size, const char *file, int line) {
    count_alloc();
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) mg_fatal_at(file, line, "out of memory allocating %zu x %zu bytes (%s:%d)", n, size, file, line);
    return p;
}

void *mg_realloc_at(void *p, size_t bytes, const char *file, int line) {
    count_alloc();
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) mg_fatal_at(file, line, "out of memory reallocating %zu bytes (%s:%d)", bytes, file, line);
    return q;
}

void *mg_malloc_aligned_at(size_t bytes, const char *file, int line) {
    count_alloc();
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0 || !p)
        mg_fatal_at(file, line, "out of memory allocating %zu bytes (%s:%d)", bytes, file, line);
    return p;
}

void mg_free_aligned(void *p) { free(p); }

char *mg_strdup_at(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *d = mg_malloc_at(n, file, line);
    memcpy(d, s, n);
    return d;
}

FILE *mg_fopen_at(const char *path, const char *mode, const char *file, int line) {
    FILE *f = fopen(path, mode);
    if (!f)
        mg_fatal_at(file, line, "cannot open '%s' for %s: %s", path, mode[0] == 'r' ? "reading" : "writing",
                    strerror(errno));
    return f;
}

int mg_check_ids(const int32_t *ids, int64_t n, int V, int32_t ignore, const char *what, char *err, size_t errlen) {
    for (int64_t i = 0; i < n; i++)
        if ((ids[i] < 0 || ids[i] >= V) && ids[i] != ignore)
            return mg_errf(err, errlen, "%s id %d at position %lld is outside the vocabulary [0, %d)", what, (int)ids[i],
                           (long long)i, V);
    return 0;
}

double mg_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t mg_dtype_size(MgDtype t) {
    switch (t) {
    case MG_F32: return 4;
    case MG_F64: return 8;
    case MG_BF16: return 2;
    case MG_I64: return 8;
    case MG_I32: return 4;
    }
    return 0;
}

const char *mg_dtype_name(MgDtype t) {
    switch (t) {
    case MG_F32: return "float32";
    case MG_F64: return "float64";
    case MG_BF16: return "bfloat16";
    case MG_I64: return "int64";
    case MG_I32: return "int32";
    }
    return "?";
}

char *mg_format_bytes(double bytes, char *buf, size_t n) {
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        u++;
    }
    snprintf(buf, n, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
    return buf;
}
