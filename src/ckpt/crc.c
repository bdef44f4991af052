/* CRC32 (the zlib polynomial: the values of Python's zlib.crc32) and the per-tensor scan that pairs it
 * with a NaN/Inf count. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "internal.h"

/* Reflected, polynomial 0xEDB88320 (the zlib / PNG / Python zlib.crc32 CRC), slice-by-8. */

#define CRC_POLY 0xedb88320u
static uint32_t crc_tab[8][256];
static uint32_t crc_x2n[32]; /* x^(2^n) mod P, for combining */
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

/* a(x) * b(x) mod P(x), bit-reflected representation (zlib's multmodp). */
static uint32_t crc_multmodp(uint32_t a, uint32_t b) {
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0) break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ CRC_POLY : b >> 1;
    }
    return p;
}

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ CRC_POLY : c >> 1;
        crc_tab[0][i] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++) crc_tab[k][i] = (crc_tab[k - 1][i] >> 8) ^ crc_tab[0][crc_tab[k - 1][i] & 0xff];
    uint32_t p = 1u << 30; /* x^1 */
    crc_x2n[0] = p;
    for (int n = 1; n < 32; n++) crc_x2n[n] = p = crc_multmodp(p, p);
}

uint32_t mg_crc32_update(uint32_t crc, const void *data, size_t len) {
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        uint32_t lo = (uint32_t)w ^ crc, hi = (uint32_t)(w >> 32);
        crc = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^ crc_tab[5][(lo >> 16) & 0xff] ^
              crc_tab[4][lo >> 24] ^ crc_tab[3][hi & 0xff] ^ crc_tab[2][(hi >> 8) & 0xff] ^
              crc_tab[1][(hi >> 16) & 0xff] ^ crc_tab[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--) crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

uint32_t mg_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
    pthread_once(&crc_once, crc_init);
    /* crc(A||B) = crc(A) * x^(8 len_b) mod P  xor  crc(B) */
    uint32_t p = 1u << 31; /* x^0 */
    unsigned k = 3;        /* 8 len_b = len_b * 2^3 */
    for (uint64_t n = len_b; n; n >>= 1, k++)
        if (n & 1) p = crc_multmodp(crc_x2n[k & 31], p);
    return crc_multmodp(p, crc_a) ^ crc_b;
}

CkptScan ckpt_scan_f32(const float *x, int64_t n) {
    const int64_t B = (int64_t)1 << 20;
    int64_t nb = (n + B - 1) / B;
    CkptScan s = {0, 0, -1};
    if (nb == 0) return s;
    uint32_t *crcs = mg_malloc(sizeof(uint32_t) * (size_t)nb);
    int64_t *bad = mg_malloc(sizeof(int64_t) * (size_t)nb), *first = mg_malloc(sizeof(int64_t) * (size_t)nb);
    pthread_once(&crc_once, crc_init);
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
