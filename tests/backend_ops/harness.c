/* The backend-op harness machinery: buffers with guards, dtype conversion, running a case on a backend,
 * integrity checks and the comparison with the reference. See harness.h. */
#include "harness.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BO_MAX_BUFS 32
#define BO_MAX_CALLS 4
#define BO_MAX_FIELDS 3
#define BO_GUARD 64 /* bytes before and after every buffer; keeps the payload 64-byte aligned */

/* ---------------------------------------------------------------------------------------------- */
/* Ops */

static const char *const op_names[BO_OP_COUNT] = {
#define BO_OP_NAME(name, Args) #name,
    MG_OP_LIST(BO_OP_NAME)
#undef BO_OP_NAME
    "sum_squares", "axpy", "scale",
};

const char *bo_op_name(BoOp op) { return op >= 0 && op < BO_OP_COUNT ? op_names[op] : "?"; }

int bo_op_present(const MgBackend *be, BoOp op) {
    switch (op) {
#define BO_OP_PRESENT(name, Args)                                                                      \
    case BO_OP_##name: return be->name != NULL;
        MG_OP_LIST(BO_OP_PRESENT)
#undef BO_OP_PRESENT
    case BO_OP_sum_squares: return be->sum_squares != NULL;
    case BO_OP_axpy: return be->axpy != NULL;
    case BO_OP_scale: return be->scale != NULL;
    case BO_OP_COUNT: break;
    }
    return 0;
}

static void call_op(const MgBackend *be, BoOp op, const void *args) {
    switch (op) {
#define BO_OP_CALL(name, Args)                                                                         \
    case BO_OP_##name: be->name(be, (const Args *)args); return;
        MG_OP_LIST(BO_OP_CALL)
#undef BO_OP_CALL
    case BO_OP_sum_squares: {
        const BoSumSquaresArgs *a = args;
        const double s = be->sum_squares(be, a->x, a->n);
        *a->result = s;
        return;
    }
    case BO_OP_axpy: {
        const BoAxpyArgs *a = args;
        be->axpy(be, a->n, a->alpha, a->x, a->y);
        return;
    }
    case BO_OP_scale: {
        const BoScaleArgs *a = args;
        be->scale(be, a->n, a->alpha, a->x);
        return;
    }
    case BO_OP_COUNT: break;
    }
    mg_fatal("backend_ops: bad op id %d", (int)op);
}

/* ---------------------------------------------------------------------------------------------- */
/* Element types and conversions */

typedef enum { E_F32, E_F64, E_BF16, E_I32, E_I64, E_U8 } Elem;

static Elem elem_of_dtype(MgDtype t) {
    switch (t) {
    case MG_F32: return E_F32;
    case MG_F64: return E_F64;
    case MG_BF16: return E_BF16;
    case MG_I64: return E_I64;
    case MG_I32: return E_I32;
    }
    mg_fatal("backend_ops: unknown dtype %d", (int)t);
}

static Elem elem_of(BoKind k, const MgBackend *be) {
    switch (k) {
    case BO_ACT: return elem_of_dtype(be->dtype);
    case BO_STATE: return elem_of_dtype(be->state_dtype);
    case BO_F32: return E_F32;
    case BO_F64: return E_F64;
    case BO_I32: return E_I32;
    case BO_I64: return E_I64;
    case BO_U8: return E_U8;
    }
    mg_fatal("backend_ops: unknown kind %d", (int)k);
}

static size_t elem_size(Elem e) {
    switch (e) {
    case E_F32: return 4;
    case E_F64: return 8;
    case E_BF16: return 2;
    case E_I32: return 4;
    case E_I64: return 8;
    case E_U8: return 1;
    }
    return 0;
}

static int elem_is_float(Elem e) { return e == E_F32 || e == E_F64 || e == E_BF16; }

static const char *elem_name(Elem e) {
    static const char *const names[] = {"float32", "float64", "bfloat16", "int32", "int64", "uint8"};
    return names[e];
}

/* bfloat16 = the top 16 bits of a float32, rounded to nearest even. (double -> float -> bfloat16 rounds
 * twice; for the harness that only matters in that both sides see the same quantised value.) */
static uint16_t bf16_of_float(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays a quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float float_of_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void store_elems(Elem e, void *dst, const double *src, size_t n) {
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++) {
        switch (e) {
        case E_F32: {
            float v = (float)src[i];
            memcpy(d + 4 * i, &v, 4);
            break;
        }
        case E_F64: memcpy(d + 8 * i, &src[i], 8); break;
        case E_BF16: {
            uint16_t v = bf16_of_float((float)src[i]);
            memcpy(d + 2 * i, &v, 2);
            break;
        }
        case E_I32: {
            int32_t v = (int32_t)src[i];
            memcpy(d + 4 * i, &v, 4);
            break;
        }
        case E_I64: {
            int64_t v = (int64_t)src[i];
            memcpy(d + 8 * i, &v, 8);
            break;
        }
        case E_U8: d[i] = (unsigned char)src[i]; break;
        }
    }
}

static void load_elems(Elem e, double *dst, const void *src, size_t n) {
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        switch (e) {
        case E_F32: {
            float v;
            memcpy(&v, s + 4 * i, 4);
            dst[i] = v;
            break;
        }
        case E_F64: memcpy(&dst[i], s + 8 * i, 8); break;
        case E_BF16: {
            uint16_t v;
            memcpy(&v, s + 2 * i, 2);
            dst[i] = float_of_bf16(v);
            break;
        }
        case E_I32: {
            int32_t v;
            memcpy(&v, s + 4 * i, 4);
            dst[i] = v;
            break;
        }
        case E_I64: {
            int64_t v;
            memcpy(&v, s + 8 * i, 8);
            dst[i] = (double)v;
            break;
        }
        case E_U8: dst[i] = s[i]; break;
        }
    }
}

void bo_store(MgDtype t, void *dst, const double *src, size_t n) { store_elems(elem_of_dtype(t), dst, src, n); }
void bo_load(MgDtype t, double *dst, const void *src, size_t n) { load_elems(elem_of_dtype(t), dst, src, n); }

/* The pre-fill of BO_OUT buffers: a NaN with a recognisable payload (integers: an unlikely value). */
static void fill_unwritten(Elem e, unsigned char *d, size_t n) {
    static const uint32_t f32 = 0x7fc0deadu;
    static const uint64_t f64 = 0x7ff8deadbeefdeadull;
    static const uint16_t bf16 = 0x7fdeu;
    static const int32_t i32 = INT32_MIN + 7;
    static const int64_t i64 = INT64_MIN + 7;
    const void *pat = NULL;
    switch (e) {
    case E_F32: pat = &f32; break;
    case E_F64: pat = &f64; break;
    case E_BF16: pat = &bf16; break;
    case E_I32: pat = &i32; break;
    case E_I64: pat = &i64; break;
    case E_U8: memset(d, 0xa5, n); return;
    }
    const size_t es = elem_size(e);
    for (size_t i = 0; i < n; i++) memcpy(d + i * es, pat, es);
}

static unsigned char guard_byte(size_t i) { return (unsigned char)(0x5a + 37 * i); }

/* ---------------------------------------------------------------------------------------------- */
/* Case description */

typedef struct {
    char name[32];
    BoRole role;
    BoKind kind;
    size_t n;
    size_t fields[BO_MAX_FIELDS];
    int nfields;
    int host;
    BoTolClass tol;
    double *init; /* n host values */
} BoBuf;

struct BoCase {
    void *args;
    size_t args_size;
    char shape[160];
    BoBuf bufs[BO_MAX_BUFS];
    int nbufs;
    BoOp calls[BO_MAX_CALLS];
    int ncalls;
    BoTolClass tol;
    double floor_frac;
    char error[256]; /* a mistake in the case description, reported as a FAIL */
    double *spill[BO_MAX_BUFS]; /* values handed out for rejected declarations */
    int nspill;
};

static void case_error(BoCase *c, const char *fmt, ...) MG_PRINTF(2, 3);
static void case_error(BoCase *c, const char *fmt, ...) {
    if (c->error[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
}

void *bo_args(BoCase *c, size_t size) {
    free(c->args);
    c->args = mg_calloc(1, size);
    c->args_size = size;
    return c->args;
}

void bo_shape(BoCase *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->shape, sizeof c->shape, fmt, ap);
    va_end(ap);
    for (char *p = c->shape; *p; p++)
        if (*p == ' ') *p = ',';
}

static BoBuf *find_buf(BoCase *c, const char *name) {
    for (int i = 0; i < c->nbufs; i++)
        if (!strcmp(c->bufs[i].name, name)) return &c->bufs[i];
    return NULL;
}

static int field_ok(BoCase *c, size_t field, const char *name) {
    if (!c->args) {
        case_error(c, "buffer %s declared before bo_args", name);
        return 0;
    }
    if (field + sizeof(void *) > c->args_size) {
        case_error(c, "field offset %zu of %s is outside the argument struct (%zu bytes)", field, name,
                   c->args_size);
        return 0;
    }
    return 1;
}

double *bo_buf(BoCase *c, BoRole role, size_t field, const char *name, BoKind kind, size_t n) {
    if (c->nbufs == BO_MAX_BUFS || !field_ok(c, field, name) || find_buf(c, name)) {
        /* The case is reported as broken; it still gets somewhere to write its values. */
        case_error(c, "cannot declare buffer %s (too many buffers, bad field or duplicate name)", name);
        if (c->nspill == BO_MAX_BUFS) mg_fatal("backend_ops: case declares far too many buffers");
        return c->spill[c->nspill++] = mg_calloc(n ? n : 1, sizeof(double));
    }
    BoBuf *b = &c->bufs[c->nbufs++];
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->role = role;
    b->kind = kind;
    b->n = n;
    b->fields[0] = field;
    b->nfields = 1;
    b->tol = c->tol;
    b->init = mg_calloc(n ? n : 1, sizeof(double));
    return b->init;
}

void bo_alias(BoCase *c, size_t field, const char *name) {
    BoBuf *b = find_buf(c, name);
    if (!b || b->nfields == BO_MAX_FIELDS || !field_ok(c, field, name)) {
        case_error(c, "cannot alias a field to buffer %s", name);
        return;
    }
    b->fields[b->nfields++] = field;
}

void bo_host(BoCase *c, const char *name) {
    BoBuf *b = find_buf(c, name);
    if (!b) case_error(c, "bo_host: no buffer %s", name);
    else b->host = 1;
}

void bo_call(BoCase *c, BoOp op) {
    if (c->ncalls == BO_MAX_CALLS || op < 0 || op >= BO_OP_COUNT) {
        case_error(c, "cannot add op call %d", (int)op);
        return;
    }
    c->calls[c->ncalls++] = op;
}

void bo_tol(BoCase *c, BoTolClass cls) { c->tol = cls; }

BoCase *bo_case_new(const BoCaseEntry *e, int v) {
    BoCase *c = mg_calloc(1, sizeof *c);
    c->tol = BO_TOL_ELEMENTWISE;
    c->floor_frac = 1e-2; /* see the tolerances below */
    if (!e->fn(c, v)) {
        bo_case_free(c);
        return NULL;
    }
    if (!c->shape[0]) snprintf(c->shape, sizeof c->shape, "variant%d", v);
    if (!c->args) case_error(c, "the case set no argument struct");
    if (c->ncalls == 0 || c->calls[c->ncalls - 1] != e->op)
        case_error(c, "the case's last op call is not %s (the op under test)", bo_op_name(e->op));
    return c;
}

void bo_case_free(BoCase *c) {
    if (!c) return;
    for (int i = 0; i < c->nbufs; i++) free(c->bufs[i].init);
    for (int i = 0; i < c->nspill; i++) free(c->spill[i]);
    free(c->args);
    free(c);
}

const char *bo_case_shape(const BoCase *c) { return c->shape; }

/* ---------------------------------------------------------------------------------------------- */
/* Tolerances.
 *
 * Both figures of every output must be within the tolerance: the worst element-wise relative error
 * |a - r| / max(|a|, |r|, floor) with floor = 1% of max|r| over the buffer (elements that come out of a
 * cancellation, e.g. accumulator + gradient or silu'(x) near x = -1.28, are judged against the buffer's
 * scale), and the normwise relative error ||a - r|| / ||r||. The reference is float64 on the same
 * quantised inputs, so the figures only cover the backend's own rounding (u = 2^-24 in float32):
 *  - EXACT: gathers and copies compute nothing, so nothing may differ.
 *  - ELEMENTWISE 5e-5 (float32): a few roundings of operands at the buffer's scale, seen against the
 *    1% floor: ~8 u / 0.01. Worst measured over 100 seeds: 1.5e-5 (SiLU backward into an accumulator).
 *  - REDUCTION 2e-4: sums of up to a few hundred rounded terms (GEMMs, row statistics, log-sum-exp).
 *    Worst measured: 3.8e-5 (linear backward). A GEMM in TF32 (10-bit mantissa) would exceed it.
 *    TimestepNorm's and CEMA's recurrences are in this class too (the CPU carries them in double).
 *  - CHAINED 1e-3: attention's backward, a chain of reductions with a cancellation inside
 *    (dS = P (dP - D), on top of the softmax recomputed from the saved log-sum-exp). Worst measured:
 *    2.0e-4 (DropKey with chunk 5).
 * Normwise errors are far smaller (<= 2e-6 in float32 over 100 seeds), and have a tighter bound of their own
 * (norm_tolerance): 1e-5 for float32, 2e-2 for bfloat16, the bounds the CUDA backend is held to.
 * float64 against the float64 reference allows summation-order differences of another implementation
 * (the CPU against itself is bitwise equal).
 * bfloat16 keeps 8 bits (u = 2^-8); measured on the CUDA kernels (emulated, 3 seeds): worst element-wise
 * 7.7e-3 (TimestepNorm backward), worst normwise 3.1e-3. */
/* The normwise bound: the class tolerance, at most 1e-5 (float32) or 2e-2 (bfloat16). */
static double norm_tolerance(double tol, Elem e) {
    return e == E_F32 ? fmin(tol, 1e-5) : e == E_BF16 ? fmin(tol, 2e-2) : tol;
}

static double tolerance(BoTolClass cls, Elem e) {
    static const double f32[] = {0.0, 5e-5, 2e-4, 1e-3};
    static const double bf16[] = {0.0, 5e-2, 1e-1, 2e-1};
    static const double f64[] = {0.0, 1e-12, 1e-11, 1e-10};
    switch (e) {
    case E_F32: return f32[cls];
    case E_BF16: return bf16[cls];
    case E_F64: return f64[cls];
    default: return 0.0; /* integers: exact */
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Running a case on one backend */

typedef struct {
    unsigned char *dev;   /* allocation (backend or host memory), BO_GUARD + bytes + BO_GUARD */
    unsigned char *stage; /* what was uploaded */
    unsigned char *back;  /* what came back */
    size_t bytes;
    Elem elem;
} Live;

static void msg_add(char *msg, size_t len, const char *fmt, ...) MG_PRINTF(3, 4);
static void msg_add(char *msg, size_t len, const char *fmt, ...) {
    size_t used = strlen(msg);
    if (used + 1 >= len) return;
    if (used) {
        snprintf(msg + used, len - used, "; ");
        used = strlen(msg);
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + used, len - used, fmt, ap);
    va_end(ap);
}

static void set_field(void *args, size_t off, BoKind k, unsigned char *p) {
    char *dst = (char *)args + off;
    switch (k) {
    case BO_ACT:
    case BO_STATE: {
        void *v = p;
        memcpy(dst, &v, sizeof v);
        break;
    }
    case BO_F32: {
        float *v = (float *)(void *)p;
        memcpy(dst, &v, sizeof v);
        break;
    }
    case BO_F64: {
        double *v = (double *)(void *)p;
        memcpy(dst, &v, sizeof v);
        break;
    }
    case BO_I32: {
        int32_t *v = (int32_t *)(void *)p;
        memcpy(dst, &v, sizeof v);
        break;
    }
    case BO_I64: {
        int64_t *v = (int64_t *)(void *)p;
        memcpy(dst, &v, sizeof v);
        break;
    }
    case BO_U8: {
        uint8_t *v = p;
        memcpy(dst, &v, sizeof v);
        break;
    }
    }
}

/* Run the case's calls on `be` with host values `vals` (already quantised); zero_acc = start BO_ACC buffers
 * from zeros instead of their values. Returns the values of every buffer after the calls in out[i]
 * (malloc'd), and appends integrity problems (prefixed with `who`) to msg. */
/* Round what an earlier call wrote (every buffer that is not a pure input) to the element types the
 * backend under test stores it in, so that a later call of the reference reads what the backend's later
 * call reads (the forward's bf16 output o, say, read back by the backward). */
static void quantise_between_calls(const BoCase *c, const MgBackend *be, const MgBackend *like, Live *live) {
    for (int i = 0; i < c->nbufs; i++) {
        const BoBuf *b = &c->bufs[i];
        if (b->role == BO_IN || !b->n) continue;
        Live *l = &live[i];
        const Elem e = elem_of(b->kind, like);
        if (e == l->elem || !elem_is_float(e)) continue;
        unsigned char *host = mg_malloc(l->bytes), *tmp = mg_malloc(b->n * elem_size(e));
        double *d = mg_malloc(b->n * sizeof(double));
        if (b->host) memcpy(host, l->dev + BO_GUARD, l->bytes);
        else be->to_host(be, host, l->dev + BO_GUARD, l->bytes);
        load_elems(l->elem, d, host, b->n);
        store_elems(e, tmp, d, b->n);
        load_elems(e, d, tmp, b->n);
        store_elems(l->elem, host, d, b->n);
        if (b->host) memcpy(l->dev + BO_GUARD, host, l->bytes);
        else be->to_device(be, l->dev + BO_GUARD, host, l->bytes);
        free(host);
        free(tmp);
        free(d);
    }
}

/* like: the backend under test when `be` is the reference (see quantise_between_calls), else NULL. */
static void run_on(const BoCase *c, const MgBackend *be, const MgBackend *like, double *const *vals, int zero_acc,
                   double **out, const char *who, char *msg, size_t msglen) {
    Live live[BO_MAX_BUFS];
    void *args = mg_malloc(c->args_size);
    memcpy(args, c->args, c->args_size);
    for (int i = 0; i < c->nbufs; i++) {
        const BoBuf *b = &c->bufs[i];
        Live *l = &live[i];
        l->elem = elem_of(b->kind, be);
        l->bytes = b->n * elem_size(l->elem);
        const size_t total = l->bytes + 2 * BO_GUARD;
        l->stage = mg_malloc(total);
        l->back = mg_malloc(total);
        for (size_t g = 0; g < BO_GUARD; g++) {
            l->stage[g] = guard_byte(g);
            l->stage[BO_GUARD + l->bytes + g] = guard_byte(BO_GUARD + g);
        }
        unsigned char *payload = l->stage + BO_GUARD;
        if (b->role == BO_OUT) {
            fill_unwritten(l->elem, payload, b->n);
        } else if (b->role == BO_ACC && zero_acc) {
            double *z = mg_calloc(b->n ? b->n : 1, sizeof(double));
            store_elems(l->elem, payload, z, b->n);
            free(z);
        } else {
            store_elems(l->elem, payload, vals[i], b->n);
        }
        if (b->host) {
            l->dev = mg_malloc_aligned(total);
            memcpy(l->dev, l->stage, total);
        } else {
            l->dev = be->alloc(be, total);
            MG_CHECK(l->dev, "backend_ops: %s alloc of %zu bytes failed", be->name, total);
            be->to_device(be, l->dev, l->stage, total);
        }
        for (int f = 0; f < b->nfields; f++) set_field(args, b->fields[f], b->kind, l->dev + BO_GUARD);
    }

    for (int k = 0; k < c->ncalls; k++) {
        if (k > 0 && like) quantise_between_calls(c, be, like, live);
        call_op(be, c->calls[k], args);
    }
    be->synchronize(be);

    for (int i = 0; i < c->nbufs; i++) {
        const BoBuf *b = &c->bufs[i];
        Live *l = &live[i];
        const size_t total = l->bytes + 2 * BO_GUARD;
        if (b->host) memcpy(l->back, l->dev, total);
        else be->to_host(be, l->back, l->dev, total);
        size_t bad = 0, first = 0;
        for (size_t g = 0; g < BO_GUARD; g++) {
            if (l->back[g] != l->stage[g] && !bad++) first = g;
        }
        if (bad)
            msg_add(msg, msglen, "%s: guard before %s overwritten (%zu of %d bytes, first at byte -%zu)", who,
                    b->name, bad, BO_GUARD, BO_GUARD - first);
        bad = 0;
        for (size_t g = BO_GUARD + l->bytes; g < total; g++) {
            if (l->back[g] != l->stage[g] && !bad++) first = g - BO_GUARD - l->bytes;
        }
        if (bad)
            msg_add(msg, msglen, "%s: guard after %s overwritten (%zu of %d bytes, first at byte +%zu past the end)",
                    who, b->name, bad, BO_GUARD, first);
        const unsigned char *pb = l->back + BO_GUARD;
        if (b->role == BO_IN && memcmp(pb, l->stage + BO_GUARD, l->bytes) != 0) {
            size_t e = 0;
            const size_t es = elem_size(l->elem);
            while (e < b->n && !memcmp(pb + e * es, l->stage + BO_GUARD + e * es, es)) e++;
            msg_add(msg, msglen, "%s: input %s was modified (first at element %zu)", who, b->name, e);
        }
        out[i] = mg_calloc(b->n ? b->n : 1, sizeof(double));
        load_elems(l->elem, out[i], pb, b->n);
        if (b->role != BO_IN) {
            /* Every element written, and nothing NaN. */
            unsigned char *pat = mg_malloc(elem_size(l->elem));
            fill_unwritten(l->elem, pat, 1);
            const size_t es = elem_size(l->elem);
            size_t unwritten = 0, nans = 0, fu = 0, fn = 0;
            for (size_t e = 0; e < b->n; e++) {
                if (b->role == BO_OUT && !memcmp(pb + e * es, pat, es)) {
                    if (!unwritten++) fu = e;
                } else if (elem_is_float(l->elem) && isnan(out[i][e])) {
                    if (!nans++) fn = e;
                }
            }
            free(pat);
            if (unwritten)
                msg_add(msg, msglen, "%s: %zu of %zu elements of output %s not written (first at %zu)", who,
                        unwritten, b->n, b->name, fu);
            if (nans) msg_add(msg, msglen, "%s: %zu NaN in output %s (first at %zu)", who, nans, b->name, fn);
        }
        if (b->host) mg_free_aligned(l->dev);
        else be->free(be, l->dev);
        free(l->stage);
        free(l->back);
    }
    free(args);
}

/* Errors of a against the reference r: worst element-wise |a - r| / max(|a|, |r|, floor) with
 * floor = floor_frac * max|r|, and normwise ||a - r|| / ||r|| (absolute when r == 0). NaN gives NaN. */
static void errors(const double *a, const double *r, size_t n, double floor_frac, double *max_rel,
                   double *norm_rel) {
    double rmax = 0, num = 0, den = 0, worst = 0;
    for (size_t i = 0; i < n; i++) rmax = fmax(rmax, fabs(r[i]));
    const double floor = fmax(floor_frac * rmax, 1e-300);
    for (size_t i = 0; i < n; i++) {
        const double d = fabs(a[i] - r[i]);
        if (isnan(d)) {
            *max_rel = *norm_rel = NAN;
            return;
        }
        const double e = d / fmax(fmax(fabs(a[i]), fabs(r[i])), floor);
        worst = fmax(worst, e);
        num += d * d;
        den += r[i] * r[i];
    }
    *max_rel = worst;
    *norm_rel = den > 0 ? sqrt(num / den) : sqrt(num);
}

static int has_acc(const BoCase *c) {
    for (int i = 0; i < c->nbufs; i++)
        if (c->bufs[i].role == BO_ACC) return 1;
    return 0;
}

static void free_vals(const BoCase *c, double **v) {
    for (int i = 0; i < c->nbufs; i++) free(v[i]);
}

/* Accumulating outputs: the run from the case's values must equal those values plus the run from zeros. */
static void check_accumulation(const BoCase *c, const MgBackend *be, const MgBackend *like, double *const *q,
                               double *const *full, const char *who, char *msg, size_t msglen) {
    double *zero[BO_MAX_BUFS];
    char scratch[1024] = "";
    run_on(c, be, like, q, 1, zero, who, scratch, sizeof scratch); /* integrity was reported by the full run */
    for (int i = 0; i < c->nbufs; i++) {
        const BoBuf *b = &c->bufs[i];
        if (b->role != BO_ACC) continue;
        const Elem e = elem_of(b->kind, be);
        /* Rounding the sum p + z costs up to u (|p| + |z|), which is far more than u |p + z| where the two
         * nearly cancel: each element's error is measured against |p| + |z| (and the usual floor). */
        double rmax = 0.0, mr = 0.0;
        for (size_t k = 0; k < b->n; k++) rmax = fmax(rmax, fabs(q[i][k] + zero[i][k]));
        const double floor = fmax(c->floor_frac * rmax, 1e-300);
        for (size_t k = 0; k < b->n; k++) {
            const double want = q[i][k] + zero[i][k], d = fabs(full[i][k] - want);
            const double den = fmax(fmax(fabs(full[i][k]), fabs(q[i][k]) + fabs(zero[i][k])), floor);
            mr = isnan(d) ? NAN : fmax(mr, d / den);
            if (isnan(mr)) break;
        }
        const double tol = tolerance(b->tol, e);
        /* Adding to a value costs one more rounding of the sum even for exact ops. */
        const double tol_acc = fmax(tol, e == E_F64 ? 1e-15 : e == E_F32 ? 1e-6 : 1e-2);
        if (!(mr <= tol_acc))
            msg_add(msg, msglen, "%s: %s does not accumulate (result - prefill differs from the result from zeros: "
                    "max_rel_err=%.2e, tol %.0e)", who, b->name, mr, tol_acc);
    }
    free_vals(c, zero);
}

void bo_case_check(const BoCase *c, const MgBackend *be, const MgBackend *ref, BoResult *r) {
    memset(r, 0, sizeof *r);
    snprintf(r->worst, sizeof r->worst, "-");
    if (c->error[0]) {
        snprintf(r->msg, sizeof r->msg, "bad harness case: %s", c->error);
        return;
    }
    for (int k = 0; k < c->ncalls; k++) {
        if (!bo_op_present(be, c->calls[k])) msg_add(r->msg, sizeof r->msg, "%s has no %s", be->name, bo_op_name(c->calls[k]));
        if (!bo_op_present(ref, c->calls[k])) msg_add(r->msg, sizeof r->msg, "%s has no %s", ref->name, bo_op_name(c->calls[k]));
    }
    if (r->msg[0]) return;

    /* Host values quantised to the dtype under test; the reference runs on exactly these values. */
    double *q[BO_MAX_BUFS];
    for (int i = 0; i < c->nbufs; i++) {
        const BoBuf *b = &c->bufs[i];
        const Elem e = elem_of(b->kind, be);
        unsigned char *tmp = mg_malloc(b->n * elem_size(e) + 1);
        q[i] = mg_calloc(b->n ? b->n : 1, sizeof(double));
        store_elems(e, tmp, b->init, b->n);
        load_elems(e, q[i], tmp, b->n);
        free(tmp);
    }

    char who_ref[64], who_be[64];
    snprintf(who_ref, sizeof who_ref, "reference %s", ref->name);
    snprintf(who_be, sizeof who_be, "%s", be->name);
    double *rv[BO_MAX_BUFS], *bv[BO_MAX_BUFS];
    run_on(c, ref, be, q, 0, rv, who_ref, r->msg, sizeof r->msg);
    if (has_acc(c)) check_accumulation(c, ref, be, q, rv, who_ref, r->msg, sizeof r->msg);
    run_on(c, be, NULL, q, 0, bv, who_be, r->msg, sizeof r->msg);
    if (has_acc(c)) check_accumulation(c, be, NULL, q, bv, who_be, r->msg, sizeof r->msg);

    double worst_ratio = -1;
    for (int i = 0; i < c->nbufs; i++) {
        const BoBuf *b = &c->bufs[i];
        if (b->role == BO_IN) continue;
        const Elem e = elem_of(b->kind, be);
        const double tol = tolerance(b->tol, e);
        double mr, nr;
        errors(bv[i], rv[i], b->n, c->floor_frac, &mr, &nr);
        if (!elem_is_float(e) && mr != 0) {
            msg_add(r->msg, sizeof r->msg, "%s (%s) differs from the reference", b->name, elem_name(e));
        } else if (!(mr <= tol && nr <= norm_tolerance(tol, e))) {
            msg_add(r->msg, sizeof r->msg, "%s: max_rel_err=%.2e norm_rel_err=%.2e over tol %.0e (normwise %.0e, %s)",
                    b->name, mr, nr, tol, norm_tolerance(tol, e), elem_name(e));
        }
        /* The reported buffer is the one closest to its tolerance (the largest error where tol = 0). */
        const double ratio = isnan(mr) ? INFINITY : tol > 0 ? mr / tol : (mr > 0 ? INFINITY : 0);
        if (ratio > worst_ratio || (ratio == worst_ratio && mr > r->max_rel)) {
            worst_ratio = ratio;
            r->max_rel = mr;
            r->norm_rel = nr;
            r->tol = tol;
            snprintf(r->worst, sizeof r->worst, "%s", b->name);
        }
    }
    free_vals(c, rv);
    free_vals(c, bv);
    free_vals(c, q);
    r->ok = r->msg[0] == 0;
}
