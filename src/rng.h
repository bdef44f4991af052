/* Deterministic random numbers for initialisation, data order and sampling: xoshiro256** seeded with
 * splitmix64. The whole state is four uint64 words, saved in checkpoints for exact resume. */
#ifndef MG_RNG_H
#define MG_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} MgRng;

void mg_rng_seed(MgRng *r, uint64_t seed);
uint64_t mg_rng_u64(MgRng *r);
double mg_rng_uniform(MgRng *r);             /* [0, 1) with 53 random bits */
double mg_rng_normal(MgRng *r);              /* N(0, 1) */
/* Normal(0, std) truncated to [lo, hi] by rejection. */
double mg_rng_trunc_normal(MgRng *r, double std, double lo, double hi);
/* Stateless hash of (seed, counter) to a 64-bit value; used for counter-based streams. */
uint64_t mg_hash64(uint64_t seed, uint64_t counter);

#endif
