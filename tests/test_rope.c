/* Rotary embedding: forward against a naive complex multiplication with chunk-local positions (positions
 * restart every chunk, pos_offset honoured), backward gradient check, norm preservation, in place forward
 * and backward, the accumulate flag, and float32 vs float64. */
#include <complex.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/cpu_ops.h"
#include "test_util.h"

static const MgBackend *BE64 = &mg_cpu_backend_f64;
static const MgBackend *BE32 = &mg_cpu_backend_f32;

static double *drand(size_t n) {
    double *p = tu_dalloc(n);
    tu_fill_signed(p, n, 0.1, 1.5);
    return p;
}

/* y_t = x_t * e^{i pos(t) base^(-2k/dh)} for each complex pair (x[2k], x[2k+1]), pos(t) = (off + t) mod c. */
static void rope_naive(const MgRopeArgs *a, const double *x, double *y) {
    for (int b = 0; b < a->B; b++)
        for (int t = 0; t < a->L; t++) {
            const long long pos = (a->pos_offset + t) % a->chunk;
            for (int h = 0; h < a->H; h++)
                for (int k = 0; k < a->dh / 2; k++) {
                    const size_t o = (((size_t)b * a->L + t) * a->H + h) * a->dh + 2 * k;
                    const double complex z = x[o] + I * x[o + 1];
                    const double complex r = cexp(I * (double)pos * pow(a->base, -2.0 * k / a->dh));
                    const double complex w = z * r;
                    y[o] = creal(w);
                    y[o + 1] = cimag(w);
                }
        }
}

typedef struct {
    MgRopeArgs a;
    double *x, *y, *dy;
    size_t n;
} RopeCtx;

static double rope_loss(void *p) {
    RopeCtx *c = p;
    MgRopeArgs a = c->a;
    a.x = c->x;
    a.y = c->y;
    cpu_rope_forward_f64(BE64, &a);
    return tu_dot(c->dy, c->y, c->n);
}

static void test_forward_naive(int B, int L, int H, int dh, int chunk, long long off, double base,
                               const char *name) {
    const size_t n = (size_t)B * L * H * dh;
    MgRopeArgs a = {.B = B, .L = L, .H = H, .dh = dh, .chunk = chunk, .pos_offset = off, .base = base};
    double *x = drand(n), *y = tu_dalloc(n), *ref = tu_dalloc(n);
    a.x = x;
    a.y = y;
    cpu_rope_forward_f64(BE64, &a);
    rope_naive(&a, x, ref);
    tu_check_err(name, tu_max_rel_err(y, ref, n, 1e-12), 1e-12);
    free(x);
    free(y);
    free(ref);
}

int main(void) {
    tu_init("test_rope");

    /* L = 3 chunks of 8, offset 0 (training), then decoding offsets inside and across chunks */
    test_forward_naive(2, 24, 3, 16, 8, 0, 10000.0, "rope_forward_vs_naive_chunked");
    test_forward_naive(1, 5, 2, 8, 8, 6, 100000.0, "rope_forward_vs_naive_offset_wraps");
    test_forward_naive(2, 3, 2, 6, 4096, 1000, 10000.0, "rope_forward_vs_naive_offset");
    test_forward_naive(1, 7, 1, 2, 1000000, 0, 10000.0, "rope_forward_vs_naive_dh2_unchunked");

    /* chunk-local positions: with chunk c, token t of a long sequence is rotated exactly like token
     * t mod c of a fresh one, and differently from token t of an unchunked sequence */
    {
        const int B = 1, L = 12, H = 2, dh = 8, c = 4;
        const size_t n = (size_t)B * L * H * dh, row = (size_t)H * dh;
        double *x = drand(n), *y = tu_dalloc(n), *y1 = tu_dalloc(n), *yfull = tu_dalloc(n);
        for (int t = 0; t < L; t++) memcpy(x + t * row, x + (t % c) * row, sizeof(double) * row);
        MgRopeArgs a = {.B = B, .L = L, .H = H, .dh = dh, .chunk = c, .base = 10000.0, .x = x, .y = y};
        cpu_rope_forward_f64(BE64, &a);
        int same = 1;
        for (int t = c; t < L; t++) same &= !memcmp(y + t * row, y + (t % c) * row, sizeof(double) * row);
        tu_check(same, "rope_positions_restart_every_chunk", "L=%d chunk=%d", L, c);
        MgRopeArgs f = a;
        f.chunk = L;
        f.y = yfull;
        cpu_rope_forward_f64(BE64, &f);
        tu_check(tu_max_rel_err(y + c * row, yfull + c * row, row, 1e-12) > 1e-3,
                 "rope_chunked_differs_from_unchunked", "%s", "");
        /* a decoding call with pos_offset = t continues the training positions */
        MgRopeArgs d = a;
        d.L = 1;
        d.pos_offset = 6;
        d.x = x + 6 * row;
        d.y = y1;
        cpu_rope_forward_f64(BE64, &d);
        tu_check(!memcmp(y1, y + 6 * row, sizeof(double) * row), "rope_decode_offset_matches_training_row",
                 "pos_offset=6, chunk=%d", c);
        free(x); free(y); free(y1); free(yfull);
    }

    /* gradient check (chunked, with offset) */
    {
        RopeCtx c;
        c.a = (MgRopeArgs){.B = 2, .L = 6, .H = 2, .dh = 6, .chunk = 4, .pos_offset = 3, .base = 10000.0};
        c.n = (size_t)c.a.B * c.a.L * c.a.H * c.a.dh;
        c.x = drand(c.n);
        c.y = tu_dalloc(c.n);
        c.dy = drand(c.n);
        double *dx = tu_dalloc(c.n);
        MgRopeArgs a = c.a;
        a.dy = c.dy;
        a.dx = dx;
        cpu_rope_backward_f64(BE64, &a);
        tu_grad_check("rope_grad_x", c.x, c.n, dx, rope_loss, &c, 1e-6);

        /* accumulate */
        double *dx2 = drand(c.n), *exp_dx = tu_dalloc(c.n);
        for (size_t i = 0; i < c.n; i++) exp_dx[i] = dx2[i] + dx[i];
        a.dx = dx2;
        a.accumulate = 1;
        cpu_rope_backward_f64(BE64, &a);
        tu_check_err("rope_accumulate_dx", tu_max_rel_err(dx2, exp_dx, c.n, 1e-12), 1e-15);

        /* in place backward (dx == dy) */
        double *g = tu_dalloc(c.n);
        memcpy(g, c.dy, sizeof(double) * c.n);
        a.dy = a.dx = g;
        a.accumulate = 0;
        cpu_rope_backward_f64(BE64, &a);
        tu_check(!memcmp(g, dx, sizeof(double) * c.n), "rope_backward_in_place", "%s", "");
        /* in place + accumulate: dx = dy + R^T dy */
        memcpy(g, c.dy, sizeof(double) * c.n);
        a.accumulate = 1;
        cpu_rope_backward_f64(BE64, &a);
        for (size_t i = 0; i < c.n; i++) exp_dx[i] = c.dy[i] + dx[i];
        tu_check_err("rope_backward_in_place_accumulate", tu_max_rel_err(g, exp_dx, c.n, 1e-12), 1e-15);

        /* norms preserved and in place forward */
        rope_loss(&c);
        double worst = 0;
        for (size_t p = 0; p < c.n; p += 2) {
            double n0 = hypot(c.x[p], c.x[p + 1]), n1 = hypot(c.y[p], c.y[p + 1]);
            worst = fmax(worst, fabs(n0 - n1) / n0);
        }
        tu_check_err("rope_preserves_pair_norms", worst, 1e-14);
        memcpy(g, c.x, sizeof(double) * c.n);
        a = c.a;
        a.x = a.y = g;
        cpu_rope_forward_f64(BE64, &a);
        tu_check(!memcmp(g, c.y, sizeof(double) * c.n), "rope_forward_in_place", "%s", "");
        /* backward is the inverse of forward */
        a.dy = a.dx = g;
        cpu_rope_backward_f64(BE64, &a);
        tu_check_err("rope_backward_inverts_forward", tu_max_rel_err(g, c.x, c.n, 1e-12), 1e-14);
        free(c.x); free(c.y); free(c.dy); free(dx); free(dx2); free(exp_dx); free(g);
    }

    /* float32 vs float64 (large positions: chunk 4096, offset near the end of the chunk) */
    {
        MgRopeArgs a = {.B = 2, .L = 64, .H = 4, .dh = 128, .chunk = 4096, .pos_offset = 4000, .base = 100000.0};
        const size_t n = (size_t)a.B * a.L * a.H * a.dh;
        double *x = drand(n), *y = tu_dalloc(n), *y32d = tu_dalloc(n);
        float *xf = malloc(sizeof(float) * n), *yf = malloc(sizeof(float) * n);
        tu_to_f32(xf, x, n);
        tu_from_f32(x, xf, n);
        a.x = x;
        a.y = y;
        cpu_rope_forward_f64(BE64, &a);
        a.x = xf;
        a.y = yf;
        cpu_rope_forward_f32(BE32, &a);
        tu_from_f32(y32d, yf, n);
        tu_check_err("rope_f32_vs_f64_forward", tu_max_rel_err(y32d, y, n, 1e-2 * tu_max_abs(y, n)), 2e-5);
        free(x); free(y); free(y32d); free(xf); free(yf);
    }
    return tu_finish();
}
