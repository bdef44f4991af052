/* Chunk-wise causal attention: float64 gradient checks of q, k, v (training with several chunks, and
 * decoding); forward, log-sum-exp and backward against a naive full-softmax implementation with a
 * block-diagonal causal mask; chunked attention equals L/c independent causal attentions; decoding equals
 * the last rows of the full chunk; invalid lengths are refused with a clear error; float32 vs float64;
 * accumulate / NULL-gradient / no-saved-lse paths; bitwise identical results for 1 and 2 threads; block mode
 * (ring attention) merged over key blocks equals the whole chunk, forward and backward, with DropKey. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../kernels/cpu/cpu_ops.h"
#include "test_util.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static const MgBackend *BE64 = &mg_cpu_backend_f64;
static const MgBackend *BE32 = &mg_cpu_backend_f32;

static double *drand(size_t n, double amp) {
    double *p = tu_dalloc(n);
    tu_fill_signed(p, n, 0.05 * amp, amp);
    return p;
}

/* One problem instance in float64 (inputs, outputs, gradients). */
typedef struct {
    int B, H, Dqk, Dv, Lq, Lk, chunk;
    double scale;
    double drop_p;      /* DropKey */
    uint64_t drop_seed;
    size_t nq, nk, nv, no, nl; /* element counts of q, k, v, o, lse */
    double *q, *k, *v, *o, *lse, *dout, *dq, *dk, *dv;
} Att;

static Att att_new(int B, int H, int Dqk, int Dv, int Lq, int Lk, int chunk, double scale, double amp) {
    Att t = {.B = B, .H = H, .Dqk = Dqk, .Dv = Dv, .Lq = Lq, .Lk = Lk, .chunk = chunk, .scale = scale};
    t.nq = (size_t)B * Lq * H * Dqk;
    t.nk = (size_t)B * Lk * H * Dqk;
    t.nv = (size_t)B * Lk * H * Dv;
    t.no = (size_t)B * Lq * H * Dv;
    t.nl = (size_t)B * H * Lq;
    t.q = drand(t.nq, amp);
    t.k = drand(t.nk, amp);
    t.v = drand(t.nv, 1.0);
    t.dout = drand(t.no, 1.0);
    t.o = tu_dalloc(t.no);
    t.lse = tu_dalloc(t.nl);
    t.dq = tu_dalloc(t.nq);
    t.dk = tu_dalloc(t.nk);
    t.dv = tu_dalloc(t.nv);
    return t;
}
static void att_free(Att *t) {
    free(t->q); free(t->k); free(t->v); free(t->o); free(t->lse); free(t->dout);
    free(t->dq); free(t->dk); free(t->dv);
}
static MgAttentionArgs att_args(const Att *t) {
    return (MgAttentionArgs){.B = t->B, .H = t->H, .Dqk = t->Dqk, .Dv = t->Dv, .Lq = t->Lq, .Lk = t->Lk,
                             .chunk = t->chunk, .scale = t->scale, .drop_p = t->drop_p,
                             .drop_seed = t->drop_seed, .q = t->q, .k = t->k, .v = t->v, .o = t->o,
                             .saved_lse = t->lse, .dout = t->dout, .dq = t->dq, .dk = t->dk, .dv = t->dv};
}
static void att_fwd(Att *t) {
    MgAttentionArgs a = att_args(t);
    cpu_attention_forward_f64(BE64, &a);
}
static void att_bwd(Att *t) {
    MgAttentionArgs a = att_args(t);
    cpu_attention_backward_f64(BE64, &a);
}

/* Visibility of key j to query i, written independently of the op: in training, same chunk and j <= i;
 * in decoding the queries are the last Lq of the Lk positions. */
static int visible(const Att *t, int i, int j) {
    if (t->Lq == t->Lk) {
        const int c = t->chunk < t->Lq ? t->chunk : t->Lq;
        return i / c == j / c && j <= i;
    }
    return j <= i + (t->Lk - t->Lq);
}

/* Naive full-length softmax attention with an explicit mask, forward (o, lse) and backward, in double. */
static void naive(const Att *t, double *o, double *lse, double *dq, double *dk, double *dv) {
    const int H = t->H, Dqk = t->Dqk, Dv = t->Dv, Lq = t->Lq, Lk = t->Lk;
    double *s = tu_dalloc(Lk), *p = tu_dalloc(Lk), *dp = tu_dalloc(Lk);
    if (dq) memset(dq, 0, sizeof(double) * t->nq);
    if (dk) memset(dk, 0, sizeof(double) * t->nk);
    if (dv) memset(dv, 0, sizeof(double) * t->nv);
    for (int b = 0; b < t->B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Lq; i++) {
                const double *qi = t->q + (((size_t)b * Lq + i) * H + h) * Dqk;
                double m = -INFINITY;
                for (int j = 0; j < Lk; j++) {
                    const double *kj = t->k + (((size_t)b * Lk + j) * H + h) * Dqk;
                    double d = 0;
                    for (int e = 0; e < Dqk; e++) d += qi[e] * kj[e];
                    s[j] = visible(t, i, j) ? t->scale * d : -INFINITY;
                    m = fmax(m, s[j]);
                }
                double z = 0;
                for (int j = 0; j < Lk; j++) z += (p[j] = exp(s[j] - m));
                for (int j = 0; j < Lk; j++) p[j] /= z;
                if (lse) lse[((size_t)b * H + h) * Lq + i] = m + log(z);
                double *oi = o + (((size_t)b * Lq + i) * H + h) * Dv;
                for (int e = 0; e < Dv; e++) {
                    double acc = 0;
                    for (int j = 0; j < Lk; j++) acc += p[j] * t->v[(((size_t)b * Lk + j) * H + h) * Dv + e];
                    oi[e] = acc;
                }
                if (!dq) continue;
                const double *gi = t->dout + (((size_t)b * Lq + i) * H + h) * Dv;
                double Di = 0;
                for (int j = 0; j < Lk; j++) {
                    const double *vj = t->v + (((size_t)b * Lk + j) * H + h) * Dv;
                    double d = 0;
                    for (int e = 0; e < Dv; e++) d += gi[e] * vj[e];
                    dp[j] = d;
                    Di += p[j] * d;
                }
                for (int j = 0; j < Lk; j++) {
                    const double ds = p[j] * (dp[j] - Di) * t->scale;
                    double *dvj = dv + (((size_t)b * Lk + j) * H + h) * Dv;
                    for (int e = 0; e < Dv; e++) dvj[e] += p[j] * gi[e];
                    const double *kj = t->k + (((size_t)b * Lk + j) * H + h) * Dqk;
                    double *dkj = dk + (((size_t)b * Lk + j) * H + h) * Dqk;
                    double *dqi = dq + (((size_t)b * Lq + i) * H + h) * Dqk;
                    for (int e = 0; e < Dqk; e++) {
                        dqi[e] += ds * kj[e];
                        dkj[e] += ds * qi[e];
                    }
                }
            }
    free(s);
    free(p);
    free(dp);
}

static double rel(const double *a, const double *b, size_t n) {
    return tu_max_rel_err(a, b, n, 1e-3 * fmax(tu_max_abs(a, n), tu_max_abs(b, n)));
}

/* ---------------------------------------------------------------------------------------------- */

static double att_loss(void *p) {
    Att *t = p;
    att_fwd(t);
    return tu_dot(t->dout, t->o, t->no);
}

static void gradcheck(Att *t, const char *tag) {
    char name[128];
    att_fwd(t);
    att_bwd(t);
    snprintf(name, sizeof name, "%s_grad_q", tag);
    tu_grad_check(name, t->q, t->nq, t->dq, att_loss, t, 1e-6);
    snprintf(name, sizeof name, "%s_grad_k", tag);
    tu_grad_check(name, t->k, t->nk, t->dk, att_loss, t, 1e-6);
    snprintf(name, sizeof name, "%s_grad_v", tag);
    tu_grad_check(name, t->v, t->nv, t->dv, att_loss, t, 1e-6);
}

static void test_gradchecks(void) {
    /* training: L = 12 in 3 chunks of 4, H = 2, Dqk != Dv */
    Att t = att_new(2, 2, 5, 3, 12, 12, 4, 0.7, 1.2);
    gradcheck(&t, "attention_train");
    att_free(&t);
    /* decoding: 3 queries at the end of 7 cached keys in a chunk of 8 */
    Att d = att_new(2, 2, 4, 6, 3, 7, 8, 1.0, 1.2);
    gradcheck(&d, "attention_decode");
    att_free(&d);
}

/* Forward, lse and backward against the naive implementation; two chunks of 160 tokens, so each chunk has
 * a full and a partial row block inside the op. */
static void test_vs_naive(void) {
    Att t = att_new(2, 2, 24, 16, 320, 320, 160, 0.4, 1.0);
    att_fwd(&t);
    att_bwd(&t);
    double *o = tu_dalloc(t.no), *lse = tu_dalloc(t.nl), *dq = tu_dalloc(t.nq), *dk = tu_dalloc(t.nk), *dv = tu_dalloc(t.nv);
    naive(&t, o, lse, dq, dk, dv);
    tu_check_err("attention_forward_vs_naive", rel(t.o, o, t.no), 1e-12);
    tu_check_err("attention_lse_vs_naive", rel(t.lse, lse, t.nl), 1e-12);
    tu_check_err("attention_backward_dq_vs_naive", rel(t.dq, dq, t.nq), 1e-11);
    tu_check_err("attention_backward_dk_vs_naive", rel(t.dk, dk, t.nk), 1e-11);
    tu_check_err("attention_backward_dv_vs_naive", rel(t.dv, dv, t.nv), 1e-11);

    /* short sequence (L < chunk: one chunk of L) */
    Att s = att_new(1, 3, 8, 8, 37, 37, 4096, 1.0, 1.0);
    att_fwd(&s);
    naive(&s, o, lse, NULL, NULL, NULL);
    tu_check_err("attention_forward_vs_naive_L_below_chunk", rel(s.o, o, s.no), 1e-12);
    att_free(&s);

    /* accumulate: gradients added onto random contents */
    double *q0 = drand(t.nq, 1.0), *k0 = drand(t.nk, 1.0), *v0 = drand(t.nv, 1.0);
    MgAttentionArgs a = att_args(&t);
    double *gq = tu_dalloc(t.nq), *gk = tu_dalloc(t.nk), *gv = tu_dalloc(t.nv);
    memcpy(gq, q0, sizeof(double) * t.nq);
    memcpy(gk, k0, sizeof(double) * t.nk);
    memcpy(gv, v0, sizeof(double) * t.nv);
    a.dq = gq;
    a.dk = gk;
    a.dv = gv;
    a.accumulate = 1;
    cpu_attention_backward_f64(BE64, &a);
    for (size_t i = 0; i < t.nq; i++) q0[i] += t.dq[i];
    for (size_t i = 0; i < t.nk; i++) k0[i] += t.dk[i];
    for (size_t i = 0; i < t.nv; i++) v0[i] += t.dv[i];
    double e = fmax(fmax(rel(gq, q0, t.nq), rel(gk, k0, t.nk)), rel(gv, v0, t.nv));
    tu_check_err("attention_accumulate_dq_dk_dv", e, 1e-12);

    /* one gradient at a time (others NULL), and no saved lse (recomputed inside backward) */
    a = att_args(&t);
    a.dq = gq;
    a.dk = a.dv = NULL;
    cpu_attention_backward_f64(BE64, &a);
    a.dq = NULL;
    a.dk = gk;
    a.saved_lse = NULL;
    cpu_attention_backward_f64(BE64, &a);
    a.dk = NULL;
    a.dv = gv;
    cpu_attention_backward_f64(BE64, &a);
    e = fmax(fmax(rel(gq, t.dq, t.nq), rel(gk, t.dk, t.nk)), rel(gv, t.dv, t.nv));
    tu_check_err("attention_single_grads_and_no_saved_lse", e, 1e-13);

    free(q0); free(k0); free(v0); free(gq); free(gk); free(gv);
    free(o); free(lse); free(dq); free(dk); free(dv);
    att_free(&t);
}

/* Copies rows [r0, r0+n) of every batch row of a (B, L, W) tensor into a (B, n, W) tensor, or back. */
static void rows_copy(double *dst, const double *src, int B, int Ldst, int Lsrc, int r0dst, int r0src, int n,
                      int W) {
    for (int b = 0; b < B; b++)
        memcpy(dst + ((size_t)b * Ldst + r0dst) * W, src + ((size_t)b * Lsrc + r0src) * W,
               sizeof(double) * (size_t)n * W);
}

/* Chunked attention over L = nc * c equals nc independent causal attentions over sequences of length c. */
static void test_chunks_independent(void) {
    const int B = 2, H = 2, Dqk = 16, Dv = 12, c = 136, nc = 3, L = nc * c;
    Att t = att_new(B, H, Dqk, Dv, L, L, c, 0.5, 1.0);
    att_fwd(&t);
    att_bwd(&t);
    Att s = att_new(B, H, Dqk, Dv, c, c, 1 << 20, 0.5, 1.0); /* chunk >> c: one plain causal attention */
    double *o = tu_dalloc(t.no), *dq = tu_dalloc(t.nq), *dk = tu_dalloc(t.nk), *dv = tu_dalloc(t.nv);
    double *lse = tu_dalloc(t.nl);
    for (int ci = 0; ci < nc; ci++) {
        rows_copy(s.q, t.q, B, c, L, 0, ci * c, c, H * Dqk);
        rows_copy(s.k, t.k, B, c, L, 0, ci * c, c, H * Dqk);
        rows_copy(s.v, t.v, B, c, L, 0, ci * c, c, H * Dv);
        rows_copy(s.dout, t.dout, B, c, L, 0, ci * c, c, H * Dv);
        att_fwd(&s);
        att_bwd(&s);
        rows_copy(o, s.o, B, L, c, ci * c, 0, c, H * Dv);
        rows_copy(dq, s.dq, B, L, c, ci * c, 0, c, H * Dqk);
        rows_copy(dk, s.dk, B, L, c, ci * c, 0, c, H * Dqk);
        rows_copy(dv, s.dv, B, L, c, ci * c, 0, c, H * Dv);
        rows_copy(lse, s.lse, B * H, L, c, ci * c, 0, c, 1); /* lse is (B, H, L) */
    }
    tu_check_err("attention_chunks_equal_independent_forward", fmax(rel(t.o, o, t.no), rel(t.lse, lse, t.nl)),
                 1e-14);
    double e = fmax(fmax(rel(t.dq, dq, t.nq), rel(t.dk, dk, t.nk)), rel(t.dv, dv, t.nv));
    tu_check_err("attention_chunks_equal_independent_backward", e, 1e-14);
    /* and the chunking matters: without it the later chunks' outputs differ */
    Att u = att_new(B, H, Dqk, Dv, L, L, L, 0.5, 1.0);
    memcpy(u.q, t.q, sizeof(double) * t.nq);
    memcpy(u.k, t.k, sizeof(double) * t.nk);
    memcpy(u.v, t.v, sizeof(double) * t.nv);
    att_fwd(&u);
    tu_check(rel(u.o, t.o, t.no) > 1e-3, "attention_chunking_changes_output", "%s", "");
    att_free(&u);
    free(o); free(dq); free(dk); free(dv); free(lse);
    att_free(&s);
    att_free(&t);
}

/* Decoding (Lq < Lk <= chunk) equals the last Lq rows of the full attention over the Lk tokens. */
static void test_decode(int Lk, int Lq, int chunk) {
    const int B = 2, H = 2, Dqk = 8, Dv = 6;
    char name[128];
    Att f = att_new(B, H, Dqk, Dv, Lk, Lk, chunk, 1.0, 1.0);
    /* only the last Lq rows receive an output gradient, so the full run's dk, dv equal the decode run's */
    for (int b = 0; b < B; b++)
        memset(f.dout + (size_t)b * Lk * H * Dv, 0, sizeof(double) * (size_t)(Lk - Lq) * H * Dv);
    att_fwd(&f);
    att_bwd(&f);
    Att d = att_new(B, H, Dqk, Dv, Lq, Lk, chunk, 1.0, 1.0);
    memcpy(d.k, f.k, sizeof(double) * f.nk);
    memcpy(d.v, f.v, sizeof(double) * f.nv);
    rows_copy(d.q, f.q, B, Lq, Lk, 0, Lk - Lq, Lq, H * Dqk);
    rows_copy(d.dout, f.dout, B, Lq, Lk, 0, Lk - Lq, Lq, H * Dv);
    att_fwd(&d);
    att_bwd(&d);
    double *o = tu_dalloc(d.no), *lse = tu_dalloc(d.nl), *dq = tu_dalloc(d.nq);
    rows_copy(o, f.o, B, Lq, Lk, 0, Lk - Lq, Lq, H * Dv);
    rows_copy(dq, f.dq, B, Lq, Lk, 0, Lk - Lq, Lq, H * Dqk);
    rows_copy(lse, f.lse, B * H, Lq, Lk, 0, Lk - Lq, Lq, 1);
    snprintf(name, sizeof name, "attention_decode_equals_full_rows_forward_Lq%d_Lk%d_chunk%d", Lq, Lk, chunk);
    tu_check_err(name, fmax(rel(d.o, o, d.no), rel(d.lse, lse, d.nl)), 1e-13);
    snprintf(name, sizeof name, "attention_decode_equals_full_rows_backward_Lq%d_Lk%d_chunk%d", Lq, Lk, chunk);
    tu_check_err(name, fmax(fmax(rel(d.dq, dq, d.nq), rel(d.dk, f.dk, d.nk)), rel(d.dv, f.dv, d.nv)), 1e-12);
    free(o); free(lse); free(dq);
    att_free(&f);
    att_free(&d);
}

typedef struct {
    int Lq, Lk, chunk;
    Att t; /* owned by the caller, which frees it after the error unwound refused_run */
} RefuseCtx;

static void refused_run(void *vctx) {
    RefuseCtx *c = vctx;
    c->t = att_new(1, 1, 2, 2, c->Lq, c->Lk, c->chunk, 1.0, 1.0);
    att_fwd(&c->t);
}

/* Runs the forward under the test error hook and returns 1 if it raised an error whose message contains
 * `expect`; the message is echoed as a comment line. */
static int refused(int Lq, int Lk, int chunk, const char *expect) {
    RefuseCtx c = {Lq, Lk, chunk, {0}};
    char msg[1024];
    int raised = tu_catch_error(refused_run, &c, msg, sizeof msg);
    att_free(&c.t);
    for (char *p = msg; *p; p++)
        if (*p == '\n') *p = ' ';
    printf("# said: %s\n", msg);
    return raised && strstr(msg, expect) != NULL;
}

/* The DropKey mask as documented in ops.h, re-implemented here: splitmix64's finaliser, index
 * ((task * nq + i) * nk + j), task = (b * chunks + chunk) * H + h; kept iff (h >> 11) >= ceil(p 2^53).
 * This copy of the finaliser is deliberately independent of src/hash.h (the one the kernels use): it is
 * the oracle, written from the documented constants, so a wrong constant or shift in the shared header
 * would make the kernel's mask disagree with it instead of agreeing with itself. (tests/test_hash.c pins
 * the shared header to the published splitmix64 outputs.) */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static int dk_kept(const Att *t, int b, int h, int i, int j) {
    const int c = t->chunk < t->Lq ? t->chunk : t->Lq, nch = t->Lq / c, ci = i / c, il = i % c, jl = j % c;
    if (jl == il) return 1; /* a query's own key is never dropped */
    uint64_t task = ((uint64_t)b * nch + ci) * t->H + h, idx = (task * c + il) * c + jl;
    uint64_t hsh = mix64(mix64(t->drop_seed) + idx * 0x9E3779B97F4A7C15ull);
    return (hsh >> 11) >= (uint64_t)ceil(t->drop_p * 0x1.0p53);
}

static void test_dropkey(void) {
    /* forward and lse against a naive attention whose visibility also excludes the dropped keys */
    Att t = att_new(2, 2, 5, 3, 12, 12, 4, 0.8, 1.2);
    t.drop_p = 0.4;
    t.drop_seed = 77;
    att_fwd(&t);
    double worst = 0;
    int dropped = 0, visible_pairs = 0;
    for (int b = 0; b < t.B; b++)
        for (int h = 0; h < t.H; h++)
            for (int i = 0; i < t.Lq; i++) {
                const double *qi = t.q + (((size_t)b * t.Lq + i) * t.H + h) * t.Dqk;
                double s[64], m = -INFINITY, z = 0;
                for (int j = 0; j < t.Lk; j++) {
                    int vis = visible(&t, i, j) && dk_kept(&t, b, h, i, j);
                    if (visible(&t, i, j)) visible_pairs++, dropped += !vis;
                    double d = 0;
                    for (int e = 0; e < t.Dqk; e++) d += qi[e] * t.k[(((size_t)b * t.Lk + j) * t.H + h) * t.Dqk + e];
                    s[j] = vis ? t.scale * d : -INFINITY;
                    m = fmax(m, s[j]);
                }
                for (int j = 0; j < t.Lk; j++) z += exp(s[j] - m);
                worst = fmax(worst, fabs(t.lse[((size_t)b * t.H + h) * t.Lq + i] - (m + log(z))));
                for (int e = 0; e < t.Dv; e++) {
                    double acc = 0;
                    for (int j = 0; j < t.Lk; j++) acc += exp(s[j] - m) / z * t.v[(((size_t)b * t.Lk + j) * t.H + h) * t.Dv + e];
                    worst = fmax(worst, fabs(t.o[(((size_t)b * t.Lq + i) * t.H + h) * t.Dv + e] - acc));
                }
            }
    tu_check(dropped > 0 && dropped < visible_pairs, "attention_dropkey_drops_some_keys", "%d of %d visible scores",
             dropped, visible_pairs);
    tu_check_err("attention_dropkey_forward_equals_naive_with_the_documented_mask", worst, 1e-13);
    gradcheck(&t, "attention_dropkey");
    /* drop_p = 0 is exactly no dropout; a high rate stays finite (the diagonal is never dropped) */
    Att u = att_new(1, 2, 4, 4, 16, 16, 8, 1.0, 1.0);
    att_fwd(&u);
    double *o0 = tu_dalloc(u.no);
    memcpy(o0, u.o, sizeof(double) * u.no);
    u.drop_seed = 5;
    att_fwd(&u);
    tu_check(!memcmp(o0, u.o, sizeof(double) * u.no), "attention_dropkey_p0_is_identity", "bitwise");
    u.drop_p = 0.95;
    att_fwd(&u);
    int finite = 1;
    for (size_t i = 0; i < u.no; i++) finite &= isfinite(u.o[i]);
    tu_check(finite && memcmp(o0, u.o, sizeof(double) * u.no), "attention_dropkey_p095_finite_and_different", "ok");
    free(o0);
    att_free(&u);
    att_free(&t);
}


/* Block mode (ring attention): a chunk of C = k * Lb rows cut into k query blocks and k key blocks, as k
 * ranks hold it. Each query block attends to its own key block (causal) and to every earlier one (whole),
 * the partial results merged by attention_merge in the ring's order (own block, then j - 1 .. 0); the
 * backward adds each block's share with the merged lse and output. Everything must equal the whole-chunk
 * op (itself checked against finite differences and the naive attention above), DropKey masks included. */
static void test_blocks(double drop_p, const char *tag) {
    const int B = 2, H = 3, Dqk = 5, Dv = 4, k = 4, Lb = 6, C = k * Lb;
    Att t = att_new(B, H, Dqk, Dv, C, C, C, 0.9, 1.5);
    t.drop_p = drop_p;
    t.drop_seed = 4242;
    att_fwd(&t);
    att_bwd(&t);
    const size_t nqb = (size_t)B * Lb * H * Dqk, nvb = (size_t)B * Lb * H * Dv, nlb = (size_t)B * H * Lb;
    double *qb = tu_dalloc(nqb), *kb = tu_dalloc(nqb), *vb = tu_dalloc(nvb), *dob = tu_dalloc(nvb);
    double *o = tu_dalloc(nvb), *lse = tu_dalloc(nlb), *ob = tu_dalloc(nvb), *lseb = tu_dalloc(nlb);
    double *dq = tu_dalloc(nqb), *dkb = tu_dalloc(nqb), *dvb = tu_dalloc(nvb);
    double *O = tu_dalloc(t.no), *LSE = tu_dalloc(t.nl), *DQ = tu_dalloc(t.nq), *DK = tu_dalloc(t.nk),
           *DV = tu_dalloc(t.nv);
    int empty_rows = 0;
    for (int j = 0; j < k; j++) {
        rows_copy(qb, t.q, B, Lb, C, 0, j * Lb, Lb, H * Dqk);
        rows_copy(dob, t.dout, B, Lb, C, 0, j * Lb, Lb, H * Dv);
        MgAttentionArgs a = {.B = B, .H = H, .Dqk = Dqk, .Dv = Dv, .Lq = Lb, .Lk = Lb, .chunk = C, .scale = t.scale,
                             .drop_p = drop_p, .drop_seed = t.drop_seed, .drop_chunk_len = C, .block = 1,
                             .q_row0 = (int64_t)j * Lb, .q = qb, .k = kb, .v = vb};
        for (int s = 0; s <= j; s++) { /* forward: own block, then j - 1 .. 0 */
            const int blk = j - s;
            rows_copy(kb, t.k, B, Lb, C, 0, blk * Lb, Lb, H * Dqk);
            rows_copy(vb, t.v, B, Lb, C, 0, blk * Lb, Lb, H * Dv);
            a.k_row0 = (int64_t)blk * Lb;
            a.o = s == 0 ? o : ob;
            a.saved_lse = s == 0 ? lse : lseb;
            cpu_attention_forward_f64(BE64, &a);
            for (size_t i = 0; i < nlb && s > 0; i++) empty_rows += lseb[i] == -INFINITY;
            if (s > 0) {
                MgAttnMergeArgs m = {.B = B, .Lq = Lb, .H = H, .Dv = Dv, .o = o, .lse = lse, .o_b = ob, .lse_b = lseb};
                cpu_attention_merge_f64(BE64, &m);
            }
        }
        rows_copy(O, o, B, C, Lb, j * Lb, 0, Lb, H * Dv);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                memcpy(LSE + ((size_t)b * H + h) * C + (size_t)j * Lb, lse + ((size_t)b * H + h) * Lb, sizeof(double) * Lb);
        memset(dq, 0, sizeof(double) * nqb);
        a.o = o;
        a.saved_lse = lse;
        a.dout = dob;
        a.dq = dq;
        a.dk = dkb;
        a.dv = dvb;
        a.accumulate = 1;
        for (int s = 0; s <= j; s++) { /* backward: dq summed here, dk and dv added to their block's rows */
            const int blk = j - s;
            rows_copy(kb, t.k, B, Lb, C, 0, blk * Lb, Lb, H * Dqk);
            rows_copy(vb, t.v, B, Lb, C, 0, blk * Lb, Lb, H * Dv);
            a.k_row0 = (int64_t)blk * Lb;
            memset(dkb, 0, sizeof(double) * nqb);
            memset(dvb, 0, sizeof(double) * nvb);
            cpu_attention_backward_f64(BE64, &a);
            for (int b = 0; b < B; b++) {
                for (size_t e = 0; e < (size_t)Lb * H * Dqk; e++)
                    DK[((size_t)b * C + (size_t)blk * Lb) * H * Dqk + e] += dkb[(size_t)b * Lb * H * Dqk + e];
                for (size_t e = 0; e < (size_t)Lb * H * Dv; e++)
                    DV[((size_t)b * C + (size_t)blk * Lb) * H * Dv + e] += dvb[(size_t)b * Lb * H * Dv + e];
            }
        }
        rows_copy(DQ, dq, B, C, Lb, j * Lb, 0, Lb, H * Dqk);
    }
    char name[128];
    snprintf(name, sizeof name, "attention_blocks_%s_o", tag);
    tu_check_err(name, rel(O, t.o, t.no), 1e-13);
    snprintf(name, sizeof name, "attention_blocks_%s_lse", tag);
    tu_check_err(name, rel(LSE, t.lse, t.nl), 1e-13);
    snprintf(name, sizeof name, "attention_blocks_%s_dq", tag);
    tu_check_err(name, rel(DQ, t.dq, t.nq), 1e-12);
    snprintf(name, sizeof name, "attention_blocks_%s_dk", tag);
    tu_check_err(name, rel(DK, t.dk, t.nk), 1e-12);
    snprintf(name, sizeof name, "attention_blocks_%s_dv", tag);
    tu_check_err(name, rel(DV, t.dv, t.nv), 1e-12);
    if (drop_p >= 0.5) /* the merge of a block whose keys were all dropped (lse -inf, o 0) is exercised */
        tu_check(empty_rows > 0, "attention_blocks_dropkey_has_empty_block_rows", "%d rows", empty_rows);
    free(qb); free(kb); free(vb); free(dob); free(o); free(lse); free(ob); free(lseb); free(dq); free(dkb); free(dvb);
    free(O); free(LSE); free(DQ); free(DK); free(DV);
    att_free(&t);
}

static void test_errors(void) {
    tu_check(refused(10, 10, 4, "not a multiple of the attention chunk size"), "attention_refuses_L_not_multiple",
             "L=10 chunk=4");
    tu_check(refused(2, 9, 8, "decoding needs Lq < Lk <= chunk"), "attention_refuses_decode_beyond_chunk",
             "Lq=2 Lk=9 chunk=8");
    tu_check(refused(5, 3, 8, "decoding needs"), "attention_refuses_Lq_above_Lk", "Lq=5 Lk=3");
}

/* float32 vs float64 (forward and backward), and bitwise equality of the float32 results for 1 and 2
 * threads. */
typedef struct {
    float *q, *k, *v, *o, *lse, *dout, *dq, *dk, *dv;
} Att32;

static void run32(const Att *t, Att32 *f) {
    MgAttentionArgs a = att_args(t);
    a.q = f->q;
    a.k = f->k;
    a.v = f->v;
    a.o = f->o;
    a.saved_lse = f->lse;
    a.dout = f->dout;
    a.dq = f->dq;
    a.dk = f->dk;
    a.dv = f->dv;
    cpu_attention_forward_f32(BE32, &a);
    cpu_attention_backward_f32(BE32, &a);
}

static double rel32(const float *a, const double *b, size_t n) {
    return tu_max_rel_err_f32(a, b, n, 1e-2 * tu_max_abs(b, n));
}

static void test_f32_and_threads(void) {
    Att t = att_new(2, 3, 32, 24, 512, 512, 256, 1.0, 0.4);
    Att32 f[2];
    for (int r = 0; r < 2; r++) {
        f[r].q = tu_f32_of(t.q, t.nq);
        f[r].k = tu_f32_of(t.k, t.nk);
        f[r].v = tu_f32_of(t.v, t.nv);
        f[r].dout = tu_f32_of(t.dout, t.no);
        f[r].o = calloc(t.no, sizeof(float));
        f[r].lse = calloc(t.nl, sizeof(float));
        f[r].dq = calloc(t.nq, sizeof(float));
        f[r].dk = calloc(t.nk, sizeof(float));
        f[r].dv = calloc(t.nv, sizeof(float));
    }
    /* the float64 reference sees the float32-rounded inputs */
    tu_from_f32(t.q, f[0].q, t.nq);
    tu_from_f32(t.k, f[0].k, t.nk);
    tu_from_f32(t.v, f[0].v, t.nv);
    tu_from_f32(t.dout, f[0].dout, t.no);
    att_fwd(&t);
    att_bwd(&t);
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    run32(&t, &f[0]);
#ifdef _OPENMP
    omp_set_num_threads(2);
#endif
    run32(&t, &f[1]);
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    /* most outputs average ~256 random values and are far below max|o| ~ 1 (rows with few keys), so the
     * floor 1e-2 max|o| leaves them a relative error of a few 1e-6 */
    tu_check_err("attention_f32_vs_f64_forward_o", rel32(f[0].o, t.o, t.no), 2e-5);
    tu_check_err("attention_f32_vs_f64_forward_lse", rel32(f[0].lse, t.lse, t.nl), 1e-5);
    double e = fmax(fmax(rel32(f[0].dq, t.dq, t.nq), rel32(f[0].dk, t.dk, t.nk)), rel32(f[0].dv, t.dv, t.nv));
    tu_check_err("attention_f32_vs_f64_backward", e, 1e-4);
    int same = !memcmp(f[0].o, f[1].o, sizeof(float) * t.no) && !memcmp(f[0].lse, f[1].lse, sizeof(float) * t.nl) &&
               !memcmp(f[0].dq, f[1].dq, sizeof(float) * t.nq) && !memcmp(f[0].dk, f[1].dk, sizeof(float) * t.nk) &&
               !memcmp(f[0].dv, f[1].dv, sizeof(float) * t.nv);
#ifdef _OPENMP
    tu_check(same, "attention_f32_bitwise_1_vs_2_threads", "o, lse, dq, dk, dv; B=2 H=3 L=512 chunk=256");
#else
    (void)same;
    tu_skip("attention_f32_bitwise_1_vs_2_threads", "this build has no OpenMP, so both runs used one thread");
#endif
    for (int r = 0; r < 2; r++) {
        free(f[r].q); free(f[r].k); free(f[r].v); free(f[r].o); free(f[r].lse); free(f[r].dout);
        free(f[r].dq); free(f[r].dk); free(f[r].dv);
    }
    att_free(&t);
}

int main(void) {
    tu_init("test_attention");
    test_gradchecks();
    test_vs_naive();
    test_chunks_independent();
    test_decode(16, 3, 16); /* full chunk in the cache */
    test_decode(10, 4, 16); /* partial chunk */
    test_decode(9, 1, 16);  /* token by token */
    test_dropkey();
    test_blocks(0.0, "plain");
    test_blocks(0.7, "dropkey");
    test_errors();
    test_f32_and_threads();
    return tu_finish();
}
