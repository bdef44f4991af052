/* The backend-op harness (tests/test_backend_ops.c): every op of every backend against the float64 CPU
 * reference.
 *
 * An op's test is one small "case" function that describes one shape of it: it fills a zeroed argument
 * struct with the scalar fields, declares every pointer field as a buffer (role, element kind, element
 * count, host values), and lists the op calls to run (e.g. the forward, then the backward under test).
 * The machinery (harness.c) does everything else, identically for every op:
 *
 *  - quantises the host values to the dtype of the backend under test (inputs of kind BO_ACT to
 *    be->dtype, BO_STATE to be->state_dtype), so the reference computes on exactly the same inputs;
 *  - allocates every buffer through the backend (be->alloc) with guard regions before and after,
 *    pre-fills outputs with a NaN pattern and accumulators with known values, uploads with be->to_device;
 *  - binds the device pointers into a copy of the argument struct (at the declared field offsets) and
 *    calls the ops through the backend table;
 *  - copies everything back (be->to_host) and checks guards, unchanged inputs, fully written outputs and
 *    (with a second run from zeroed accumulators) that accumulating outputs really accumulate;
 *  - compares every output with the reference (cpu-f64) run of the same case.
 *
 * The harness is C11 and uses only the MgBackend table, so a new backend plugs in by name. */
#ifndef MG_TEST_BACKEND_OPS_HARNESS_H
#define MG_TEST_BACKEND_OPS_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "../../kernels/ops.h"

/* ---------------------------------------------------------------------------------------------- */
/* Ops: every entry of MG_OP_LIST plus the table functions outside it. Generated, so an op added to the
 * list is an op the harness knows about (and must have a case for). */
#define BO_OP_ENUM(name, Args) BO_OP_##name,
typedef enum {
    MG_OP_LIST(BO_OP_ENUM) BO_OP_sum_squares,
    BO_OP_axpy,
    BO_OP_scale,
    BO_OP_COUNT
} BoOp;
#undef BO_OP_ENUM
#define BO_OP(name) BO_OP_##name

/* Argument structs of the table functions that take plain arguments (harness-local). */
typedef struct {
    int64_t n;
    const void *x;   /* [in] n, storage dtype */
    double *result;  /* [out] 1, host: sum_squares' return value */
} BoSumSquaresArgs;
typedef struct {
    int64_t n;
    double alpha;
    const void *x;   /* [in] n */
    void *y;         /* [acc] n: y += alpha x */
} BoAxpyArgs;
typedef struct {
    int64_t n;
    double alpha;
    void *x;         /* [in/out] n: x *= alpha */
} BoScaleArgs;

const char *bo_op_name(BoOp op);
/* 1 if the backend's table has the function (non-NULL). */
int bo_op_present(const MgBackend *be, BoOp op);

/* ---------------------------------------------------------------------------------------------- */
/* Buffers */

typedef enum {
    BO_ACT,   /* be->dtype (activations, parameters, gradients) */
    BO_STATE, /* be->state_dtype (carried CEMA/TimestepNorm state, cross-entropy losses) */
    BO_F32,   /* always float32 (optimizer buffers) */
    BO_F64,   /* always float64 (harness-local results such as sum_squares') */
    BO_I32,   /* int32 (tokens, targets) */
    BO_I64,   /* int64 (counts) */
    BO_U8     /* uint8 (padding masks) */
} BoKind;

typedef enum {
    BO_IN,    /* read only: must come back bitwise unchanged */
    BO_OUT,   /* overwritten: pre-filled with a NaN pattern (integers: a sentinel), every element must be written */
    BO_ACC,   /* accumulated into: pre-filled with the case's values; checked against a run from zeros */
    BO_INOUT  /* read and overwritten in place (aliasing fields, x *= alpha, AdamW's param/m/v) */
} BoRole;

/* Tolerance classes (see bo_tolerance() in harness.c for the numbers per dtype and why). */
typedef enum {
    BO_TOL_EXACT,       /* copies, gathers, masks: bitwise equal to the reference */
    BO_TOL_ELEMENTWISE, /* one rounding of a few operations per element */
    BO_TOL_REDUCTION,   /* dot products, row statistics, softmax, recurrences carried in double */
    BO_TOL_CHAINED      /* a chain of reductions with a cancellation inside (attention's backward) */
} BoTolClass;

typedef struct BoCase BoCase;

/* Argument struct of the case: `size` bytes, zeroed, owned by the case (set the scalar fields). */
void *bo_args(BoCase *c, size_t size);
/* Shape label printed in the PASS/FAIL line (one token, no spaces). */
void bo_shape(BoCase *c, const char *fmt, ...) MG_PRINTF(2, 3);
/* Declare a buffer bound to the pointer field at byte offset `field` of the argument struct. Returns
 * its n host values (zeroed) for the case to fill: the inputs for BO_IN/BO_INOUT, the pre-fill for BO_ACC
 * (ignored for BO_OUT). The field must be the pointer type of `kind`: void * for BO_ACT and BO_STATE,
 * float *, double *, int32_t *, int64_t *, uint8_t * for the others (const or not). */
double *bo_buf(BoCase *c, BoRole role, size_t field, const char *name, BoKind kind, size_t n);
/* Bind another pointer field to the same buffer (in-place variants: y == x, dlogits == logits). */
void bo_alias(BoCase *c, size_t field, const char *name);
/* The buffer lives in host memory (malloc with the same guards) instead of backend memory: pointer
 * fields the op interface documents as host pointers. */
void bo_host(BoCase *c, const char *name);
/* Tolerance class of the buffers declared from now on (BO_TOL_ELEMENTWISE until set). */
void bo_tol(BoCase *c, BoTolClass cls);
/* Append an op call; the last call is the op under test. */
void bo_call(BoCase *c, BoOp op);

/* Shorthands inside a case whose argument struct type is `A` (typedef it locally). */
#define BO_IN_(c, A, f, kind, n) bo_buf((c), BO_IN, offsetof(A, f), #f, (kind), (n))
#define BO_OUT_(c, A, f, kind, n) bo_buf((c), BO_OUT, offsetof(A, f), #f, (kind), (n))
#define BO_ACC_(c, A, f, kind, n) bo_buf((c), BO_ACC, offsetof(A, f), #f, (kind), (n))
#define BO_INOUT_(c, A, f, kind, n) bo_buf((c), BO_INOUT, offsetof(A, f), #f, (kind), (n))

/* A case function declares variant `v` of its op into c and returns 1, or returns 0 when v is past its
 * last variant. */
typedef int (*BoCaseFn)(BoCase *c, int v);
typedef struct {
    BoOp op;
    BoCaseFn fn;
} BoCaseEntry;

/* The case table (cases.c). */
extern const BoCaseEntry bo_cases[];
extern const int bo_ncases;

/* ---------------------------------------------------------------------------------------------- */
/* Running */

/* Outcome of one case on one backend against the reference. */
typedef struct {
    int ok;
    double max_rel, norm_rel; /* worst elementwise (with floor) and normwise relative error over outputs */
    double tol;               /* the tolerance of the buffer with the worst max_rel */
    char worst[32];           /* name of that buffer */
    char msg[1024];           /* what went wrong (empty when ok) */
} BoResult;

/* Build variant v of case entry e; NULL when v is past the last variant. Free with bo_case_free. */
BoCase *bo_case_new(const BoCaseEntry *e, int v);
void bo_case_free(BoCase *c);
const char *bo_case_shape(const BoCase *c);
/* Run the case on `be` and on the reference `ref`, with inputs quantised to be's dtypes, and compare. */
void bo_case_check(const BoCase *c, const MgBackend *be, const MgBackend *ref, BoResult *r);

/* Conversions between double and a storage dtype (float32, float64, bfloat16 with round-to-nearest-even). */
void bo_store(MgDtype t, void *dst, const double *src, size_t n);
void bo_load(MgDtype t, double *dst, const void *src, size_t n);

#endif
