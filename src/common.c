#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

void mg_fatal_at(const char *file, int line, const char *fmt, ...) {
    fflush(stdout);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (getenv("MG_DEBUG_LOCATIONS")) fprintf(stderr, " [%s:%d]", file, line);
    fprintf(stderr, "\n");
    exit(1);
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

void *mg_malloc_at(size_t bytes, const char *file, int line) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) mg_fatal_at(file, line, "out of memory allocating %zu bytes (%s:%d)", bytes, file, line);
    return p;
}

void *mg_calloc_at(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) mg_fatal_at(file, line, "out of memory allocating %zu x %zu bytes (%s:%d)", n, size, file, line);
    return p;
}

void *mg_realloc_at(void *p, size_t bytes, const char *file, int line) {
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) mg_fatal_at(file, line, "out of memory reallocating %zu bytes (%s:%d)", bytes, file, line);
    return q;
}

void *mg_malloc_aligned_at(size_t bytes, const char *file, int line) {
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
    }
    return 0;
}

const char *mg_dtype_name(MgDtype t) {
    switch (t) {
    case MG_F32: return "float32";
    case MG_F64: return "float64";
    case MG_BF16: return "bfloat16";
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
