/* Every op of every backend against the float64 CPU reference (in the spirit of ggml's
 * test-backend-ops). The cases are in tests/backend_ops/cases.c, the machinery in
 * tests/backend_ops/harness.c; this file picks the backends, checks that every op has a case, checks
 * that the harness itself catches broken ops, and prints one line per (backend, op, shape):
 *
 *   PASS backend_ops cpu-f32 linear_backward T=37,in=23,out=51,bias max_rel_err=1.2e-06 (...)
 *
 * A backend that is not built or has no device prints "SKIP backend_ops <name> (<reason>)".
 * Usage: test_backend_ops [backend-name-or-op-substring ...] restricts the run (all by default). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_ops/harness.h"
#include "test_util.h"

/* The backends under test, by registry name. Adding a backend = adding its name here (and to
 * kernels/backend_registry.c). The reference is always cpu-f64. */
static const char *const backends_under_test[] = {"cpu-f32", "cpu-f64", "cuda", "cuda-fp32", "cuda-emu", "cuda-emu-fp32"};

#define REFERENCE_BACKEND "cpu-f64"

/* ---------------------------------------------------------------------------------------------- */
/* Backend availability: mg_backend_create returns NULL and says why when a backend is not built in or
 * has no device; the reason becomes the SKIP line. Each backend under test is its own instance. */

static MgBackend *backend_or_skip(const char *name) {
    char why[1024];
    MgBackend *be = mg_backend_create(name, 0, NULL, why, sizeof why);
    if (!be) {
        /* an accelerator backend that is absent is the one skip the strict suite allows (TU_NO_GPU) */
        printf("SKIP backend_ops %s (%s%s)\n", name, strncmp(name, "cuda", 4) ? "" : TU_NO_GPU ": ", why);
        fflush(stdout);
    }
    return be;
}

/* ---------------------------------------------------------------------------------------------- */
/* Coverage: generated from MG_OP_LIST (via BoOp), so an op without a case fails here. */

static void check_coverage(void) {
    int missing = 0;
    for (int op = 0; op < BO_OP_COUNT; op++) {
        int n = 0;
        for (int i = 0; i < bo_ncases; i++) n += bo_cases[i].op == (BoOp)op;
        if (n == 0) {
            missing++;
            tu_check(0, "backend_ops coverage", "no harness case for op %s", bo_op_name((BoOp)op));
        } else if (n > 1) {
            missing++;
            tu_check(0, "backend_ops coverage", "op %s has %d case entries (expected 1)", bo_op_name((BoOp)op), n);
        }
    }
    if (!missing)
        tu_check(1, "backend_ops coverage", "every one of the %d ops of MG_OP_LIST and the table has a case",
                 (int)BO_OP_COUNT);
}

/* ---------------------------------------------------------------------------------------------- */
/* Self-test: the harness must notice broken ops. Each broken backend is cpu-f32 with one op replaced by
 * a faulty version; the check passes when the harness reports the expected kind of problem. */

static const MgBackend *real32(void) { return &mg_cpu_backend_f32; }

static void act_fwd_oob(const MgBackend *be, const MgActArgs *a) {
    real32()->act_forward(be, a);
    ((float *)a->y)[a->n] = 0.0f; /* one element past the end */
}
static void act_fwd_short(const MgBackend *be, const MgActArgs *a) {
    MgActArgs b = *a;
    b.n = a->n - 1; /* the last element is never written */
    real32()->act_forward(be, &b);
}
static void act_fwd_clobber(const MgBackend *be, const MgActArgs *a) {
    real32()->act_forward(be, a);
    ((float *)(void *)a->a)[1] = 1.0f; /* writes into an input */
}
static void act_fwd_inexact(const MgBackend *be, const MgActArgs *a) {
    real32()->act_forward(be, a);
    float *y = a->y;
    int64_t big = 0; /* the largest element, so the floor of the relative error does not hide it */
    for (int64_t i = 1; i < a->n; i++)
        if (fabsf(y[i]) > fabsf(y[big])) big = i;
    y[big] *= 1.0f + 1e-4f; /* one element off by 1e-4 relative */
}
static void act_bwd_no_acc(const MgBackend *be, const MgActArgs *a) {
    MgActArgs b = *a;
    b.accumulate = 0; /* overwrites instead of adding */
    real32()->act_backward(be, &b);
}
static void lin_bwd_overwrite_dw(const MgBackend *be, const MgLinearArgs *a) {
    /* dweight overwritten instead of accumulated (a classic beta = 0 slip). */
    size_t n = (size_t)a->out * a->in;
    float *dw = a->dweight;
    for (size_t i = 0; i < n; i++) dw[i] = 0.0f;
    real32()->linear_backward(be, a);
}

typedef struct {
    const char *what;
    BoOp op;
    int variant;
    const char *expect; /* substring of the harness's message */
    void (*patch)(MgBackend *be);
} SelfTest;

static void patch_oob(MgBackend *be) { be->act_forward = act_fwd_oob; }
static void patch_short(MgBackend *be) { be->act_forward = act_fwd_short; }
static void patch_clobber(MgBackend *be) { be->act_forward = act_fwd_clobber; }
static void patch_inexact(MgBackend *be) { be->act_forward = act_fwd_inexact; }
static void patch_no_acc(MgBackend *be) { be->act_backward = act_bwd_no_acc; }
static void patch_lin(MgBackend *be) { be->linear_backward = lin_bwd_overwrite_dw; }
static void patch_missing(MgBackend *be) { be->rope_forward = NULL; }

static const BoCaseEntry *entry_for(BoOp op) {
    for (int i = 0; i < bo_ncases; i++)
        if (bo_cases[i].op == op) return &bo_cases[i];
    return NULL;
}

static void self_test(const MgBackend *ref) {
    static const SelfTest tests[] = {
        {"out-of-bounds write", BO_OP(act_forward), 0, "guard after y overwritten", patch_oob},
        {"unwritten output element", BO_OP(act_forward), 0, "not written", patch_short},
        {"modified input", BO_OP(act_forward), 1, "input a was modified", patch_clobber},
        {"1e-4 error in one element", BO_OP(act_forward), 6, "over tol", patch_inexact},
        {"accumulate ignored", BO_OP(act_backward), 1, "does not accumulate", patch_no_acc},
        {"parameter gradient overwritten", BO_OP(linear_backward), 0, "dweight does not accumulate", patch_lin},
        {"missing op", BO_OP(rope_forward), 0, "has no rope_forward", patch_missing},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        const SelfTest *t = &tests[i];
        MgBackend broken = mg_cpu_backend_f32;
        broken.name = "cpu-f32-broken";
        t->patch(&broken);
        BoCase *c = bo_case_new(entry_for(t->op), t->variant);
        BoResult r;
        bo_case_check(c, &broken, ref, &r);
        char name[160];
        snprintf(name, sizeof name, "backend_ops self-test catches %s (%s %s)", t->what, bo_op_name(t->op),
                 bo_case_shape(c));
        tu_check(!r.ok && strstr(r.msg, t->expect) != NULL, name, "harness said: %.300s", r.msg);
        bo_case_free(c);
    }
}

/* ---------------------------------------------------------------------------------------------- */

static int is_backend_name(const char *s) {
    for (size_t b = 0; b < sizeof backends_under_test / sizeof backends_under_test[0]; b++)
        if (!strcmp(s, backends_under_test[b])) return 1;
    return 0;
}

/* Arguments that name a backend select backends; the others select ops by substring. */
static int backend_selected(int argc, char **argv, const char *name) {
    int any = 0;
    for (int i = 1; i < argc; i++) {
        if (!is_backend_name(argv[i])) continue;
        any = 1;
        if (!strcmp(argv[i], name)) return 1;
    }
    return !any;
}
static int op_selected(int argc, char **argv, const char *op) {
    int any = 0;
    for (int i = 1; i < argc; i++) {
        if (is_backend_name(argv[i])) continue;
        any = 1;
        if (strstr(op, argv[i])) return 1;
    }
    return !any;
}

int main(int argc, char **argv) {
    tu_init("test_backend_ops");
    const MgBackend *ref = mg_backend_get(REFERENCE_BACKEND);

    enum { NB = sizeof backends_under_test / sizeof backends_under_test[0] };
    MgBackend *bes[NB];
    for (size_t bi = 0; bi < NB; bi++)
        bes[bi] = backend_selected(argc, argv, backends_under_test[bi]) ? backend_or_skip(backends_under_test[bi])
                                                                        : NULL;
    check_coverage();
    self_test(ref);

    for (size_t bi = 0; bi < NB; bi++) {
        const MgBackend *be = bes[bi];
        if (!be) continue;
        for (int i = 0; i < bo_ncases; i++) {
            const BoCaseEntry *e = &bo_cases[i];
            if (!op_selected(argc, argv, bo_op_name(e->op))) continue;
            for (int v = 0;; v++) {
                BoCase *c = bo_case_new(e, v);
                if (!c) break;
                BoResult r;
                bo_case_check(c, be, ref, &r);
                char name[320];
                snprintf(name, sizeof name, "backend_ops %s %s %s max_rel_err=%.2e", be->name, bo_op_name(e->op),
                         bo_case_shape(c), r.max_rel);
                if (r.ok)
                    tu_check(1, name, "worst in %s, tol %.0e; normwise %.2e", r.worst, r.tol, r.norm_rel);
                else
                    tu_check(0, name, "%s", r.msg);
                bo_case_free(c);
            }
        }
    }
    for (size_t bi = 0; bi < NB; bi++) mg_backend_destroy(bes[bi]);
    return tu_finish();
}
