/* A profiling backend: wraps another backend, forwards every call and accumulates wall time per op
 * (synchronising after each call, so on an accelerator the time is the op's own). Used by
 * `megalodon bench --profile 1`; costs nothing when not used. */
#include <string.h>

#include "ops.h"

#define MG_PROFILE_MAX 64
typedef struct {
    const char *name;
    double seconds;
    int64_t calls;
} ProfEntry;

static ProfEntry g_prof[MG_PROFILE_MAX];
static int g_nprof = 0;
static MgBackend g_wrapped;
static const MgBackend *g_inner = NULL;

static ProfEntry *prof_entry(const char *name) {
    for (int i = 0; i < g_nprof; i++)
        if (g_prof[i].name == name) return &g_prof[i];
    MG_CHECK(g_nprof < MG_PROFILE_MAX, "profile: too many ops");
    g_prof[g_nprof] = (ProfEntry){name, 0.0, 0};
    return &g_prof[g_nprof++];
}

#define MG_PROF_WRAP(name, Args)                                                                        \
    static void prof_##name(const MgBackend *be, const Args *a) {                                       \
        (void)be;                                                                                       \
        double t0 = mg_now();                                                                           \
        g_inner->name(g_inner, a);                                                                      \
        g_inner->synchronize(g_inner);                                                                  \
        ProfEntry *e = prof_entry(#name);                                                               \
        e->seconds += mg_now() - t0;                                                                    \
        e->calls++;                                                                                     \
    }
MG_OP_LIST(MG_PROF_WRAP)

static double prof_sum_squares(const MgBackend *be, const void *x, int64_t n) {
    (void)be;
    double t0 = mg_now();
    double r = g_inner->sum_squares(g_inner, x, n);
    ProfEntry *e = prof_entry("sum_squares");
    e->seconds += mg_now() - t0;
    e->calls++;
    return r;
}

static void prof_axpy(const MgBackend *be, int64_t n, double alpha, const void *x, void *y) {
    (void)be;
    double t0 = mg_now();
    g_inner->axpy(g_inner, n, alpha, x, y);
    ProfEntry *e = prof_entry("axpy");
    e->seconds += mg_now() - t0;
    e->calls++;
}

const MgBackend *mg_backend_profile_wrap(const MgBackend *inner) {
    g_inner = inner;
    g_wrapped = *inner;
#define MG_PROF_SET(name, Args) g_wrapped.name = prof_##name;
    MG_OP_LIST(MG_PROF_SET)
#undef MG_PROF_SET
    g_wrapped.sum_squares = prof_sum_squares;
    g_wrapped.axpy = prof_axpy;
    return &g_wrapped;
}

void mg_profile_reset(void) { g_nprof = 0; }

static int by_time(const void *a, const void *b) {
    double x = ((const ProfEntry *)a)->seconds, y = ((const ProfEntry *)b)->seconds;
    return x < y ? 1 : x > y ? -1 : 0;
}

void mg_profile_report(FILE *f, int steps) {
    ProfEntry sorted[MG_PROFILE_MAX];
    memcpy(sorted, g_prof, sizeof(ProfEntry) * (size_t)g_nprof);
    qsort(sorted, (size_t)g_nprof, sizeof(ProfEntry), by_time);
    double total = 0.0;
    for (int i = 0; i < g_nprof; i++) total += sorted[i].seconds;
    fprintf(f, "profile (per step, %d steps):\n", steps);
    for (int i = 0; i < g_nprof; i++)
        fprintf(f, "  %-24s %8.1f ms  %5.1f%%  %6lld calls\n", sorted[i].name, 1e3 * sorted[i].seconds / steps,
                100.0 * sorted[i].seconds / (total > 0 ? total : 1), (long long)(sorted[i].calls / steps));
    fprintf(f, "  %-24s %8.1f ms\n", "total in ops", 1e3 * total / steps);
}
