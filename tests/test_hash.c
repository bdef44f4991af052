/* src/hash.h, the one splitmix64 of the code base, against the published splitmix64 outputs (Vigna's
 * splitmix64.c; the seed-1234567 vector is the one other implementations test against), and its users
 * against the documented definitions built on it: mg_rng_seed (four outputs from the seed), mg_hash64,
 * and the dropout mask of docs/ops/basic.md. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/cpu_ops.h"
#include "../src/hash.h"
#include "../src/rng.h"
#include "test_util.h"

static const uint64_t SEED_1234567[5] = {6457827717110365317ull, 3203168211198807973ull, 9817491932198370423ull,
                                         4593380528125082431ull, 16408922859458223821ull};

int main(void) {
    tu_init("test_hash");

    uint64_t s = 1234567;
    int ok = 1;
    for (int i = 0; i < 5; i++) ok &= mg_splitmix64_next(&s) == SEED_1234567[i];
    tu_check(ok && s == 1234567 + 5 * MG_SPLITMIX64_GAMMA, "splitmix64_published_outputs_seed_1234567",
             "5 outputs and the state after them");
    s = 0;
    tu_check(mg_splitmix64_next(&s) == 0xE220A8397B1DCDAFull, "splitmix64_published_output_seed_0", "0xE220A8397B1DCDAF");

    /* the stateless form is the first output of a generator in that state; fmix64 is the output function */
    ok = 1;
    for (int i = 0; i < 1000; i++) {
        uint64_t z = (uint64_t)(tu_uniform() * 0x1.0p53) * 2048u + (uint64_t)i, st = z;
        ok &= mg_splitmix64(z) == mg_splitmix64_next(&st) && mg_splitmix64(z) == mg_fmix64(z + MG_SPLITMIX64_GAMMA);
    }
    tu_check(ok && mg_fmix64(0) == 0, "splitmix64_stateless_and_fmix64_consistent", "1000 random states; fmix64(0) == 0");

    /* rng.c: xoshiro256** state = the first four splitmix64 outputs of the seed; mg_hash64 = one
     * splitmix64 step of seed ^ counter * 0xD1B54A32D192ED03 */
    MgRng r;
    mg_rng_seed(&r, 1234567);
    tu_check(!memcmp(r.s, SEED_1234567, sizeof r.s), "rng_seed_is_splitmix64", "state words = published outputs");
    ok = 1;
    for (uint64_t c = 0; c < 100; c++) ok &= mg_hash64(1234567, c) == mg_splitmix64(1234567 ^ (c * 0xD1B54A32D192ED03ull));
    tu_check(ok && mg_hash64(1234567, 0) == SEED_1234567[0], "hash64_is_splitmix64", "100 counters");

    /* The CPU dropout kernel's mask is the documented function of (seed, offset + i). */
    const int n = 4096;
    const double p = 0.3;
    const uint64_t seed = 987654321, offset = 12345;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) x[i] = 1.0f + (float)i;
    MgDropoutArgs d = {.n = n, .p = p, .seed = seed, .offset = offset, .x = x, .y = y};
    cpu_dropout_forward_f32(&mg_cpu_backend_f32, &d);
    const uint64_t key = mg_fmix64(seed), thr = (uint64_t)ceil(p * 0x1.0p53);
    int bad = 0, kept = 0;
    for (int i = 0; i < n; i++) {
        const int keep = (mg_fmix64(key + (offset + (uint64_t)i) * MG_SPLITMIX64_GAMMA) >> 11) >= thr;
        kept += keep;
        bad += keep != (y[i] != 0.0f);
    }
    tu_check(bad == 0 && kept > 0 && kept < n, "dropout_mask_is_the_documented_hash", "%d of %d kept, %d differ", kept, n, bad);
    free(x);
    free(y);
    return tu_finish();
}
