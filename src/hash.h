/* The project's hash functions. FNV-1a 64 (Fowler, Noll, Vo): the tokenizer's piece lookup and the
 * checksum of its file format (tokenizer.c, scripts/build_tokenizer.py, the fuzz harness's seeds).
 *
 * splitmix64 (Steele, Lea, Flood 2014; constants of Vigna's splitmix64.c): the one definition of the
 * 64-bit mixing used for seeding (rng.c), data order and train/val splits (data.c, cmd_prepare.c),
 * counter-based dropout masks (kernels/cpu/cpu_real.h, docs/ops/basic.md), test inputs and benchmark
 * data. Header-only, plain C with no dependencies, so host code, the CPU kernels and CUDA code
 * (where MG_HD marks the functions __host__ __device__) all compute the same bits.
 *
 * tests/test_attention.c keeps its own copy of the finaliser on purpose: it is an independent oracle for
 * the DropKey mask that the kernels build from this header. tests/test_hash.c pins the values to the
 * published splitmix64 outputs. */
#ifndef MG_HASH_H
#define MG_HASH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define MG_HD __host__ __device__
#else
#define MG_HD
#endif

/* The Weyl-sequence increment, 2^64 / golden ratio (odd). */
#define MG_SPLITMIX64_GAMMA 0x9E3779B97F4A7C15ull

/* splitmix64's output function (a variant of MurmurHash3's fmix64): a bijection of uint64. */
static inline MG_HD uint64_t mg_fmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The generator: advance the state by the gamma and return the mix of the new state. */
static inline MG_HD uint64_t mg_splitmix64_next(uint64_t *state) {
    *state += MG_SPLITMIX64_GAMMA;
    return mg_fmix64(*state);
}

/* Stateless: the first output of a generator whose state is z, i.e. mg_fmix64(z + gamma). */
static inline MG_HD uint64_t mg_splitmix64(uint64_t z) { return mg_fmix64(z + MG_SPLITMIX64_GAMMA); }

/* FNV-1a, 64 bits, of n bytes. */
static inline uint64_t mg_fnv1a64(const void *p, size_t n) {
    const unsigned char *s = (const unsigned char *)p;
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

#endif
