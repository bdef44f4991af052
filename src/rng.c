#include "rng.h"

#include <math.h>

#include "hash.h"

void mg_rng_seed(MgRng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = mg_splitmix64_next(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t mg_rng_u64(MgRng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double mg_rng_uniform(MgRng *r) { return (double)(mg_rng_u64(r) >> 11) * 0x1.0p-53; }

double mg_rng_normal(MgRng *r) {
    /* Box-Muller without caching the second value, so the stream position is simple to reason about. */
    double u1 = mg_rng_uniform(r), u2 = mg_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

double mg_rng_trunc_normal(MgRng *r, double std, double lo, double hi) {
    for (;;) {
        double v = std * mg_rng_normal(r);
        if (v >= lo && v <= hi) return v;
    }
}

uint64_t mg_hash64(uint64_t seed, uint64_t counter) {
    return mg_splitmix64(seed ^ (counter * 0xD1B54A32D192ED03ull));
}
