#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

#include <dirent.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/hash.h"

static const char *g_prog = "test";
static int g_pass = 0, g_fail = 0, g_skip = 0;
static uint64_t g_seed = 1234, g_state = 0;

void tu_init(const char *program_name) {
    g_prog = program_name;
    const char *s = getenv("MG_TEST_SEED");
    if (s && !strcmp(s, "random")) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        g_seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20);
    } else if (s && *s) {
        g_seed = strtoull(s, NULL, 10);
    }
    g_state = g_seed;
    printf("# %s: seed %llu (set MG_TEST_SEED to change)\n", g_prog, (unsigned long long)g_seed);
    fflush(stdout);
}

int tu_finish(void) {
    printf("# %s: %d passed, %d failed, %d skipped\n", g_prog, g_pass, g_fail, g_skip);
    fflush(stdout);
    return g_fail ? 1 : 0;
}

int tu_check(int cond, const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (cond) {
        g_pass++;
        printf("PASS %s", name);
        if (fmt && *fmt) {
            printf(" (");
            vprintf(fmt, ap);
            printf(")");
        }
    } else {
        g_fail++;
        printf("FAIL %s", name);
        if (fmt && *fmt) {
            printf(": ");
            vprintf(fmt, ap);
        }
    }
    printf("\n");
    va_end(ap);
    fflush(stdout);
    return cond;
}

void tu_skip(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    g_skip++;
    printf("SKIP %s (", name);
    vprintf(fmt, ap);
    printf(")\n");
    va_end(ap);
    fflush(stdout);
}

int tu_check_err(const char *name, double err, double tol) {
    return tu_check(err <= tol && !isnan(err), name, "error %.3e, tolerance %.1e", err, tol);
}

uint64_t tu_seed(void) { return g_seed; }
double tu_uniform(void) { return (double)(mg_splitmix64_next(&g_state) >> 11) * 0x1.0p-53; }
double tu_normal(void) {
    double u1 = tu_uniform(), u2 = tu_uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
void tu_fill_uniform(double *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * tu_uniform();
}
void tu_fill_normal(double *x, size_t n, double std) {
    for (size_t i = 0; i < n; i++) x[i] = std * tu_normal();
}
void tu_fill_signed(double *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) {
        double v = lo + (hi - lo) * tu_uniform();
        x[i] = tu_uniform() < 0.5 ? -v : v;
    }
}

double *tu_dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) {
        fprintf(stderr, "tu_dalloc: out of memory (%zu doubles)\n", n);
        exit(2);
    }
    return p;
}

float *tu_f32_of(const double *x, size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) {
        fprintf(stderr, "tu_f32_of: out of memory (%zu floats)\n", n);
        exit(2);
    }
    tu_to_f32(p, x, n);
    return p;
}

void tu_to_f32(float *dst, const double *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (float)src[i];
}
void tu_from_f32(double *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (double)src[i];
}

double tu_max_rel_err(const double *a, const double *b, size_t n, double floor) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        double s = fmax(fmax(fabs(a[i]), fabs(b[i])), floor);
        double e = s > 0 ? d / s : d;
        if (isnan(a[i]) || isnan(b[i])) return NAN;
        if (e > worst) worst = e;
    }
    return worst;
}

double tu_max_rel_err_f32(const float *a, const double *b, size_t n, double floor) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double ai = (double)a[i];
        double d = fabs(ai - b[i]);
        double s = fmax(fmax(fabs(ai), fabs(b[i])), floor);
        double e = s > 0 ? d / s : d;
        if (isnan(ai) || isnan(b[i])) return NAN;
        if (e > worst) worst = e;
    }
    return worst;
}

double tu_max_abs(const double *a, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

double tu_grad_floor(const double *ref, size_t n) { return fmax(1e-3 * tu_max_abs(ref, n), 1e-12); }

double tu_dot(const double *a, const double *b, size_t n) {
    double sum = 0.0, comp = 0.0;
    for (size_t i = 0; i < n; i++) {
        double v = a[i] * b[i];
        double t = sum + v;
        if (fabs(sum) >= fabs(v)) comp += (sum - t) + v;
        else comp += (v - t) + sum;
        sum = t;
    }
    return sum + comp;
}

void tu_numeric_grad(double *x, size_t n, tu_loss_fn loss, void *ctx, double rel_h, double *num) {
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        double h = rel_h * fmax(1.0, fabs(x0));
        x[i] = x0 + h;
        double fp1 = loss(ctx);
        x[i] = x0 - h;
        double fm1 = loss(ctx);
        x[i] = x0 + 2 * h;
        double fp2 = loss(ctx);
        x[i] = x0 - 2 * h;
        double fm2 = loss(ctx);
        x[i] = x0;
        num[i] = (fm2 - 8.0 * fm1 + 8.0 * fp1 - fp2) / (12.0 * h);
    }
}

double tu_grad_check(const char *name, double *x, size_t n, const double *analytic, tu_loss_fn loss,
                     void *ctx, double tol) {
    double *num = malloc(sizeof(double) * (n ? n : 1));
    tu_numeric_grad(x, n, loss, ctx, 1e-4, num);
    double err = tu_max_rel_err(analytic, num, n, tu_grad_floor(num, n));
    tu_check(err <= tol && !isnan(err), name, "worst relative error %.3e over %zu elements, tolerance %.0e",
             err, n, tol);
    free(num);
    return err;
}

void tu_tiny_megalodon(MgConfig *c, int vocab) {
    memset(c, 0, sizeof(*c));
    strcpy(c->arch, "megalodon");
    c->vocab_size = vocab;
    c->n_layers = 2;
    c->model_dim = 64;
    c->num_heads = 2;
    c->z_dim = 32;
    c->value_dim = 64;
    c->ffn_hidden_dim = 128;
    c->cema_ndim = 4;
    c->norm_num_groups = 4;
    c->chunk_size = 16;
    c->rope_base = 10000.0;
    c->norm_eps = 1e-5;
    c->swiglu = 1;
    c->seq_len = 32;
    c->batch_size = 1;
}

void tu_tiny_llama(MgConfig *c, int vocab, int kv_heads) {
    memset(c, 0, sizeof(*c));
    strcpy(c->arch, "llama");
    c->vocab_size = vocab;
    c->n_layers = 2;
    c->model_dim = 32;
    c->num_heads = 4;
    c->num_kv_heads = kv_heads;
    c->ffn_hidden_dim = 48;
    c->rope_base = 10000.0;
    c->norm_eps = 1e-5;
    c->seq_len = 32;
    c->batch_size = 1;
}

void tu_random_ids(int32_t *ids, int64_t n, int V) {
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)(tu_uniform() * V);
}

void tu_perturb_zero_init(const MgParamTable *t, double *params, double scale) {
    for (int i = 0; i < t->count; i++) {
        const MgParam *q = &t->params[i];
        if (q->init == MG_INIT_ZERO)
            for (int64_t j = 0; j < q->numel; j++) params[q->offset + j] = scale * tu_normal();
    }
}

/* ---- counting backend ---- */
static MgBackend g_count_be;
static const MgBackend *g_count_inner;
static TuMemStats g_count;
static struct {
    void *p;
    size_t bytes;
} *g_count_live;
static int g_count_n, g_count_cap;

static void *count_alloc(const MgBackend *be, size_t bytes) {
    (void)be;
    void *p = g_count_inner->alloc(g_count_inner, bytes);
    if (g_count_n == g_count_cap) {
        g_count_cap = g_count_cap ? 2 * g_count_cap : 64;
        g_count_live = realloc(g_count_live, sizeof(*g_count_live) * (size_t)g_count_cap);
    }
    g_count_live[g_count_n].p = p;
    g_count_live[g_count_n++].bytes = bytes;
    g_count.allocs++;
    g_count.live += bytes;
    if (g_count.live > g_count.peak) g_count.peak = g_count.live;
    return p;
}

static void count_free(const MgBackend *be, void *p) {
    (void)be;
    if (!p) return;
    for (int i = 0; i < g_count_n; i++)
        if (g_count_live[i].p == p) {
            g_count.live -= g_count_live[i].bytes;
            g_count_live[i] = g_count_live[--g_count_n];
            break;
        }
    g_count.frees++;
    g_count_inner->free(g_count_inner, p);
}

const MgBackend *tu_counting_backend(const MgBackend *inner) {
    g_count_inner = inner;
    g_count_be = *inner;
    g_count_be.alloc = count_alloc;
    g_count_be.free = count_free;
    memset(&g_count, 0, sizeof g_count);
    g_count_n = 0;
    return &g_count_be;
}

TuMemStats tu_counting_stats(void) { return g_count; }

#include <sys/wait.h>
#include <unistd.h>

int tu_run_child(void (*fn)(void *ctx), void *ctx, char *out, size_t outlen) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        fn(ctx);
        fflush(stdout);
        fflush(stderr);
        _exit(0);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t r;
    char sink[4096];
    /* Keep reading to the end so the child never blocks on a full pipe. */
    while ((r = read(fds[0], len + 1 < outlen ? out + len : sink,
                     len + 1 < outlen ? outlen - 1 - len : sizeof sink)) > 0)
        if (len + 1 < outlen) len += (size_t)r;
    if (outlen) out[len] = 0;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

#include <setjmp.h>

static jmp_buf g_catch_jmp;
static char *g_catch_msg;
static size_t g_catch_len;

static void catch_hook(const char *message, const char *file, int line, void *ctx) {
    (void)file, (void)line, (void)ctx;
    if (g_catch_msg && g_catch_len) snprintf(g_catch_msg, g_catch_len, "error: %s", message);
    longjmp(g_catch_jmp, 1);
}

int tu_catch_error(void (*fn)(void *ctx), void *ctx, char *msg, size_t msglen) {
    if (msglen) msg[0] = 0;
    g_catch_msg = msg;
    g_catch_len = msglen;
    void *prev_ctx = NULL;
    MgErrorHook prev = mg_set_error_hook(catch_hook, NULL, &prev_ctx);
    volatile int raised = 0;
    if (setjmp(g_catch_jmp) == 0) fn(ctx);
    else raised = 1;
    mg_set_error_hook(prev, prev_ctx, NULL);
    g_catch_msg = NULL;
    fflush(stdout);
    return raised;
}

int tu_expect_failure_all(const char *name, void (*fn)(void *ctx), void *ctx, const char *const *needles) {
    char buf[8192];
    int raised = tu_catch_error(fn, ctx, buf, sizeof buf);
    int has_all = 1;
    for (int i = 0; needles && needles[i]; i++) has_all &= strstr(buf, needles[i]) != NULL;
    for (char *p = buf; *p; p++)
        if (*p == '\n') *p = ' ';
    return tu_check(raised && has_all, name, "%s; message: \"%.300s\"", raised ? "refused" : "NOT refused", buf);
}

int tu_expect_failure(const char *name, void (*fn)(void *ctx), void *ctx, const char *expect) {
    const char *needles[2] = {expect, NULL};
    return tu_expect_failure_all(name, fn, ctx, needles);
}

void tu_numeric_grad6(double *x, size_t n, tu_loss_fn loss, void *ctx, double rel_h, double *num) {
    static const double w[3] = {45.0, -9.0, 1.0};
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        double h = rel_h * fmax(1.0, fabs(x0));
        double acc = 0.0;
        for (int k = 1; k <= 3; k++) {
            x[i] = x0 + k * h;
            double fp = loss(ctx);
            x[i] = x0 - k * h;
            double fm = loss(ctx);
            acc += w[k - 1] * (fp - fm);
        }
        x[i] = x0;
        num[i] = acc / (60.0 * h);
    }
}

int tu_count_files(const char *dir, const char *re, int with_hidden) {
    regex_t rx;
    if (regcomp(&rx, re, REG_NOSUB) != 0) return -1;
    DIR *d = opendir(dir);
    int n = d ? 0 : -1;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || (e->d_name[0] == '.' && !with_hidden)) continue;
        n += regexec(&rx, e->d_name, 0, NULL, 0) == 0;
    }
    if (d) closedir(d);
    regfree(&rx);
    return n;
}
