/* Rotary embedding with interleaved pairs and chunk-local positions (spec §1.4).
 *
 * Token t of every batch row has position p(t) = (pos_offset + t) mod chunk, which depends only on
 * t mod chunk, so a cos/sin table over min(L, chunk) rows covers the whole call. Angles and their
 * cos/sin are computed in double and rounded once to the storage dtype. Forward rotates each pair by
 * +angle, backward by -angle (the transpose of a rotation). Both read a pair before writing it, so
 * y == x and dx == dy (in place) are fine. */
#include "cpu_real.h"

typedef struct {
    int rows, half;      /* rows = min(L, chunk), half = dh / 2 */
    real *cs;            /* rows x half x (cos, sin) */
} RopeTable;

static void rope_validate(const MgRopeArgs *a, const char *who) {
    MG_CHECK(a->B >= 0 && a->L >= 0 && a->H >= 1, "%s: bad shape B=%d L=%d H=%d", who, a->B, a->L, a->H);
    MG_CHECK(a->dh >= 2 && a->dh % 2 == 0, "%s: head width dh=%d must be even and >= 2 (pairs (2i, 2i+1))",
             who, a->dh);
    MG_CHECK(a->chunk >= 1, "%s: chunk=%d must be >= 1 (positions restart every chunk tokens)", who, a->chunk);
    MG_CHECK(a->pos_offset >= 0, "%s: pos_offset=%lld must be >= 0", who, (long long)a->pos_offset);
    MG_CHECK(a->base > 0, "%s: base=%g must be > 0", who, a->base);
}

static RopeTable rope_table(const MgBackend *be, const MgRopeArgs *a) {
    RopeTable tb;
    tb.rows = MG_MIN(a->L, a->chunk);
    tb.half = a->dh / 2;
    tb.cs = cpu_ws_shared(be, 0, sizeof(real) * 2 * (size_t)(tb.rows > 0 ? tb.rows : 1) * tb.half);
    const int64_t off = a->pos_offset % a->chunk;
    for (int r = 0; r < tb.rows; r++) {
        const double pos = (double)((off + r) % a->chunk);
        for (int i = 0; i < tb.half; i++) {
            const double freq = pow(a->base, -2.0 * i / a->dh);
            const double ang = pos * freq;
            tb.cs[((size_t)r * tb.half + i) * 2] = (real)cos(ang);
            tb.cs[((size_t)r * tb.half + i) * 2 + 1] = (real)sin(ang);
        }
    }
    return tb;
}

/* out = R(sign * angle) in (+= when acc). */
static void rope_apply(const MgBackend *be, const MgRopeArgs *a, const real *in, real *out, real sign, int acc) {
    RopeTable tb = rope_table(be, a);
    const int H = a->H, dh = a->dh, half = tb.half, chunk = a->chunk;
    const int64_t rows = (int64_t)a->B * a->L;
#pragma omp parallel for schedule(static)
    for (int64_t bt = 0; bt < rows; bt++) {
        const int t = (int)(bt % a->L);
        const real *cs = tb.cs + (size_t)(t % chunk) * half * 2;
        for (int h = 0; h < H; h++) {
            const size_t o = ((size_t)bt * H + h) * dh;
            const real *xi = in + o;
            real *yo = out + o;
            for (int i = 0; i < half; i++) {
                const real c = cs[2 * i], s = sign * cs[2 * i + 1];
                const real x0 = xi[2 * i], x1 = xi[2 * i + 1];
                const real y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
                if (acc) {
                    yo[2 * i] += y0;
                    yo[2 * i + 1] += y1;
                } else {
                    yo[2 * i] = y0;
                    yo[2 * i + 1] = y1;
                }
            }
        }
    }
}

void CPU_FN(rope_forward)(const MgBackend *be, const MgRopeArgs *a) {
    rope_validate(a, "rope_forward");
    if (a->B == 0 || a->L == 0) return;
    rope_apply(be, a, a->x, a->y, (real)1, 0);
}

void CPU_FN(rope_backward)(const MgBackend *be, const MgRopeArgs *a) {
    rope_validate(a, "rope_backward");
    if (a->B == 0 || a->L == 0 || !a->dx) return;
    rope_apply(be, a, a->dy, a->dx, (real)-1, a->accumulate);
}
