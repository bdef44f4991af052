/* CRC32 (the zlib polynomial: the values of Python's zlib.crc32), computed by zlib, and the per-tensor
 * scan that pairs it with a NaN/Inf count. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "internal.h"

#ifdef MG_HAVE_ZLIB
#include <zlib.h>
#elif defined(MG_HAVE_HDF5)
#error "checkpoints need zlib for their CRC32: install zlib1g-dev (the Makefile turns HDF5 off without it)"
#endif

#ifdef MG_HAVE_ZLIB

int mg_crc32_available(void) { return 1; }

uint32_t mg_crc32_update(uint32_t crc, const void *data, size_t len) {
    /* zlib returns its initial value (0) for a NULL buffer instead of crc unchanged */
    if (len == 0) return crc;
#if ZLIB_VERNUM >= 0x1290
    return (uint32_t)crc32_z(crc, data, len);
#else /* zlib before 1.2.9: no size_t variant */
    const unsigned char *p = data;
    while (len) {
        uInt n = len > UINT_MAX ? UINT_MAX : (uInt)len;
        crc = (uint32_t)crc32(crc, p, n);
        p += n;
        len -= n;
    }
    return crc;
#endif
}

/* zlib's combine takes a signed offset type; longer lengths are split, using crc(A||0^n) = combine(crc(A), 0,
 * n) and combine(combine(a, 0, n1), b, n2) = combine(a, b, n1 + n2). */
#ifdef Z_LARGE64
typedef z_off64_t ZLen;
#define ZCOMBINE crc32_combine64
#else
typedef z_off_t ZLen;
#define ZCOMBINE crc32_combine
#endif

uint32_t mg_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
    const uint64_t max = ((uint64_t)1 << (8 * sizeof(ZLen) - 1)) - 1;
    while (len_b > max) {
        crc_a = (uint32_t)ZCOMBINE(crc_a, 0, (ZLen)max);
        len_b -= max;
    }
    return (uint32_t)ZCOMBINE(crc_a, crc_b, (ZLen)len_b);
}

#else /* no zlib: nothing in this build reads or writes checkpoints (HDF5 is off too) */

int mg_crc32_available(void) { return 0; }

uint32_t mg_crc32_update(uint32_t crc, const void *data, size_t len) {
    (void)crc, (void)data, (void)len;
    mg_fatal("mg_crc32_update: this build has no zlib; install zlib1g-dev and rebuild");
}

uint32_t mg_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
    (void)crc_a, (void)crc_b, (void)len_b;
    mg_fatal("mg_crc32_combine: this build has no zlib; install zlib1g-dev and rebuild");
}

#endif

CkptScan ckpt_scan_f32(const float *x, int64_t n) {
    const int64_t B = (int64_t)1 << 20;
    int64_t nb = (n + B - 1) / B;
    CkptScan s = {0, 0, -1};
    if (nb == 0) return s;
    uint32_t *crcs = mg_malloc(sizeof(uint32_t) * (size_t)nb);
    int64_t *bad = mg_malloc(sizeof(int64_t) * (size_t)nb), *first = mg_malloc(sizeof(int64_t) * (size_t)nb);
#pragma omp parallel for schedule(dynamic, 1) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * B, hi = MG_MIN(n, lo + B);
        const uint32_t *u = (const uint32_t *)(const void *)(x + lo);
        int64_t cnt = 0;
        for (int64_t i = 0; i < hi - lo; i++) cnt += (u[i] & 0x7f800000u) == 0x7f800000u;
        int64_t f = -1;
        if (cnt)
            for (int64_t i = 0; i < hi - lo; i++)
                if ((u[i] & 0x7f800000u) == 0x7f800000u) {
                    f = lo + i;
                    break;
                }
        bad[b] = cnt;
        first[b] = f;
        crcs[b] = mg_crc32_update(0, x + lo, (size_t)(hi - lo) * 4);
    }
    for (int64_t b = 0; b < nb; b++) {
        int64_t len = MG_MIN(n, (b + 1) * B) - b * B;
        s.crc = b == 0 ? crcs[0] : mg_crc32_combine(s.crc, crcs[b], (uint64_t)len * 4);
        if (bad[b] && s.first_bad < 0) s.first_bad = first[b];
        s.nonfinite += bad[b];
    }
    free(crcs);
    free(bad);
    free(first);
    return s;
}

void ckpt_scan_append(CkptScan *s, int64_t done, CkptScan next, int64_t n) {
    s->crc = mg_crc32_combine(s->crc, next.crc, (uint64_t)n * 4);
    if (next.nonfinite && s->first_bad < 0) s->first_bad = done + next.first_bad;
    s->nonfinite += next.nonfinite;
}
