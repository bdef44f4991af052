/* Token shards and the data loader: round trips, every refusal with its message, and the loader's
 * ordering guarantees (seeded determinism, epochs as permutations, exact resume, disjoint data-parallel
 * ranks, mixture fractions, fixed validation order). Uses its own synthetic shards in a temp directory. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/common.h"
#include "../src/data.h"
#include "test_util.h"

static char g_dir[128];
static char g_err[2048];

static char *pathf(const char *fmt, const char *a) {
    static char buf[8][512];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/", g_dir);
    size_t n = strlen(buf[k]);
    snprintf(buf[k] + n, sizeof buf[k] - n, fmt, a);
    return buf[k];
}

static uint32_t rnd_below(uint32_t n) { return (uint32_t)(tu_uniform() * n) % n; }

/* Random tokens in [2, V) with documents of random length, each starting with BOS = 1. */
static int32_t *random_docs(uint64_t n, int V, uint64_t **starts, uint64_t *n_docs) {
    int32_t *t = mg_malloc(n * sizeof(int32_t));
    uint64_t *s = mg_malloc((n + 1) * sizeof(uint64_t));
    uint64_t d = 0;
    for (uint64_t i = 0; i < n;) {
        uint64_t len = 1 + rnd_below(200);
        if (len > n - i) len = n - i;
        s[d++] = i;
        t[i] = 1;
        for (uint64_t j = 1; j < len; j++) t[i + j] = 2 + (int32_t)rnd_below((uint32_t)V - 2);
        i += len;
    }
    *starts = s;
    *n_docs = d;
    return t;
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = mg_malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static void spit(const char *path, const unsigned char *b, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

static int has(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

/* Shard i of a "position" source: token at stream position p is (base + p) (so every window names its
 * own position), V = 1<<20 (uint32 storage), no BOS marking. */
static void write_pos_shard(const char *path, uint64_t base, uint64_t n) {
    int32_t *t = mg_malloc(n * sizeof(int32_t));
    for (uint64_t i = 0; i < n; i++) t[i] = (int32_t)(base + i);
    uint64_t s0 = 0;
    if (mg_shard_write(path, t, n, &s0, 1, 1 << 20, -1, 0, g_err, sizeof g_err)) {
        printf("setup failed: %s\n", g_err);
        exit(1);
    }
    free(t);
}

static void test_shards(void) {
    /* round trip, uint16 and uint32 token widths */
    int vocabs[2] = {32000, 70000};
    for (int k = 0; k < 2; k++) {
        int V = vocabs[k];
        uint64_t n = 10007, nd, *starts;
        int32_t *t = random_docs(n, V, &starts, &nd);
        char *p = pathf("rt_%s.bin", k ? "u32" : "u16");
        int rc = mg_shard_write(p, t, n, starts, nd, V, 1, 0x1234567890abcdefull, g_err, sizeof g_err);
        MgShard s;
        int rc2 = rc ? -1 : mg_shard_open(&s, p, V, g_err, sizeof g_err);
        int ok = rc == 0 && rc2 == 0 && s.info.n_tokens == n && s.info.n_docs == nd && s.info.vocab_size == (uint32_t)V &&
                 s.info.token_bytes == (V <= 65536 ? 2u : 4u) && s.info.bos_id == 1 &&
                 s.info.tokenizer_fingerprint == 0x1234567890abcdefull;
        uint64_t bad = 0;
        if (ok) {
            for (uint64_t i = 0; i < n; i++) bad += mg_shard_token(&s, i) != t[i];
            for (uint64_t d = 0; d < nd; d++) bad += s.doc_starts[d] != starts[d];
        }
        struct stat st;
        stat(p, &st);
        tu_check(ok && bad == 0 && (uint64_t)st.st_size == mg_shard_file_bytes(n, nd, V <= 65536 ? 2 : 4),
                 k ? "shard_roundtrip_uint32" : "shard_roundtrip_uint16",
                 "V=%d, %llu tokens, %llu docs, %llu mismatches, file %lld bytes%s%s", V, (unsigned long long)n,
                 (unsigned long long)nd, (unsigned long long)bad, (long long)st.st_size, ok ? "" : "; ", ok ? "" : g_err);
        if (rc2 == 0) mg_shard_close(&s);
        free(t);
        free(starts);
    }

    /* corruptions of a valid uint16 shard */
    char *good = pathf("rt_%s.bin", "u16");
    size_t n = 0;
    unsigned char *b = slurp(good, &n);
    char *bad = pathf("%s", "bad.bin");
    MgShard s;
    struct {
        const char *name;
        int expect_vocab;
        const char *needles[3];
    } cases[] = {
        {"shard_refuses_truncated", 32000, {"truncated", "bad.bin", "prepare"}},
        {"shard_refuses_bad_magic", 32000, {"not a megalodon token shard", "bad.bin", "magic"}},
        {"shard_refuses_newer_version", 32000, {"version 2", "newer", "bad.bin"}},
        {"shard_refuses_vocab_mismatch", 50000, {"32000", "50000", "bad.bin"}},
        {"shard_refuses_token_out_of_range", 32000, {"token id 40000", "position 123", "bad.bin"}},
        {"shard_refuses_tiny_file", 32000, {"truncated", "bad.bin", "64"}},
        {"shard_refuses_longer_file", 32000, {"longer than its header", "bad.bin", "prepare"}},
    };
    for (int c = 0; c < (int)(sizeof cases / sizeof cases[0]); c++) {
        unsigned char *m = mg_malloc(n + 16);
        memcpy(m, b, n);
        size_t mn = n;
        switch (c) {
        case 0: mn = n - 10; break;
        case 1: m[0] = 'X'; break;
        case 2: m[8] = 2; break;
        case 3: break;
        case 4: { /* header vocab 32000: put 40000 at token 123 */
            m[64 + 2 * 123] = 40000 & 0xFF;
            m[64 + 2 * 123 + 1] = 40000 >> 8;
            break;
        }
        case 5: mn = 10; break;
        case 6: memset(m + n, 0, 8); mn = n + 8; break;
        }
        spit(bad, m, mn);
        g_err[0] = 0;
        int rc = mg_shard_open(&s, bad, cases[c].expect_vocab, g_err, sizeof g_err);
        int ok = rc != 0;
        for (int k = 0; k < 3; k++) ok = ok && has(g_err, cases[c].needles[k]);
        tu_check(ok, cases[c].name, "message: %s", g_err);
        if (rc == 0) mg_shard_close(&s);
        free(m);
    }
    free(b);

    /* the writer refuses bad input */
    int32_t t[4] = {1, 5, 32000, 7};
    uint64_t st0 = 0;
    int rc = mg_shard_write(bad, t, 4, &st0, 1, 32000, 1, 0, g_err, sizeof g_err);
    tu_check(rc != 0 && has(g_err, "32000") && has(g_err, "position 2"), "shard_writer_refuses_bad_token", "message: %s",
             g_err);
    t[2] = 3;
    uint64_t st1 = 1;
    rc = mg_shard_write(bad, t, 4, &st1, 1, 32000, 1, 0, g_err, sizeof g_err);
    tu_check(rc != 0 && has(g_err, "out of order or range"), "shard_writer_refuses_bad_doc_start", "message: %s", g_err);
}

/* Read `calls` batches of B from a loader; returns a malloc'd array of calls*B*T inputs. */
static int32_t *draw(MgLoader *l, int calls, int B, int32_t **targets_out) {
    int T = mg_loader_seq_len(l);
    int32_t *in = mg_malloc((size_t)calls * B * T * sizeof(int32_t));
    int32_t *tg = mg_malloc((size_t)calls * B * T * sizeof(int32_t));
    for (int c = 0; c < calls; c++) mg_loader_next(l, B, in + (size_t)c * B * T, tg + (size_t)c * B * T);
    if (targets_out) *targets_out = tg;
    else free(tg);
    return in;
}

static MgLoader *must_open(const char *spec, int V, int T, uint64_t seed, int r, int dp) {
    MgLoader *l = mg_loader_open(spec, V, T, seed, r, dp, g_err, sizeof g_err);
    if (!l) {
        printf("FAIL loader_open: %s\n", g_err);
        exit(1);
    }
    return l;
}

static void test_loader(void) {
    const int V = 1 << 20;
    /* source A: 3 shards (stream positions 0..), B: 1 shard, C: 1 shard (values offset so sources differ) */
    char dA[200], dB[200], dC[200];
    snprintf(dA, sizeof dA, "%s", pathf("%s", "A"));
    snprintf(dB, sizeof dB, "%s", pathf("%s", "B"));
    snprintf(dC, sizeof dC, "%s", pathf("%s", "C"));
    mkdir(dA, 0755);
    mkdir(dB, 0755);
    mkdir(dC, 0755);
    write_pos_shard(pathf("%s", "A/s0.bin"), 0, 5000);
    write_pos_shard(pathf("%s", "A/s1.bin"), 5000, 3001);
    write_pos_shard(pathf("%s", "A/s2.bin"), 8001, 4000);
    write_pos_shard(pathf("%s", "B/s0.bin"), 300000, 9000);
    write_pos_shard(pathf("%s", "C/s0.bin"), 600000, 7000);
    const int T = 16, B = 4;
    const uint64_t S0 = tu_seed();
    uint64_t nA = 12001, WA = (nA - 1) / T;

    /* windows, targets shifted by one, crossing shard boundaries */
    MgLoader *l = must_open(dA, V, T, S0 + 7, 0, 1);
    int32_t *tg;
    int calls = (int)(WA / B);
    int32_t *in = draw(l, calls, B, &tg);
    int bad = 0;
    char *seen = mg_calloc(WA, 1);
    for (int r = 0; r < calls * B; r++) {
        int32_t *x = in + (size_t)r * T, *y = tg + (size_t)r * T;
        if (x[0] % T != 0) bad++;
        for (int i = 0; i < T; i++) bad += (x[i] != x[0] + i) + (y[i] != x[0] + i + 1);
        if (x[0] / T < (int)WA) seen[x[0] / T]++;
    }
    int dup = 0, distinct = 0;
    for (uint64_t w = 0; w < WA; w++) distinct += seen[w] == 1, dup += seen[w] > 1;
    tu_check(bad == 0 && dup == 0 && distinct == calls * B && mg_loader_source_windows(l, 0) == (int64_t)WA &&
                 mg_loader_source_tokens(l, 0) == (int64_t)nA,
             "loader_windows_and_targets", "%d windows of %llu drawn, %d bad tokens, %d repeated in one epoch", distinct,
             (unsigned long long)WA, bad, dup);
    /* finish the epoch: every window exactly once; the next epoch is another order */
    int rest = (int)(WA - (uint64_t)calls * B);
    int32_t *in2 = draw(l, 1, rest, NULL);
    for (int r = 0; r < rest; r++) seen[in2[(size_t)r * T] / T]++;
    int once = 0;
    for (uint64_t w = 0; w < WA; w++) once += seen[w] == 1;
    int32_t *e2 = draw(l, calls, B, NULL);
    int same_order = memcmp(e2, in, (size_t)calls * B * T * sizeof(int32_t)) == 0;
    tu_check(once == (int)WA && !same_order, "loader_epoch_is_permutation", "%d of %llu windows seen exactly once; epoch 2 order %s",
             once, (unsigned long long)WA, same_order ? "SAME as epoch 1" : "differs");
    free(in);
    free(in2);
    free(e2);
    free(seen);
    free(tg);
    mg_loader_close(l);

    /* tiny sources: each epoch of W windows is a permutation, for W = 1, 2, 3, 5, 17 */
    {
        int Ws[5] = {1, 2, 3, 5, 17}, allok = 1;
        for (int k = 0; k < 5; k++) {
            char d[256], f[300];
            snprintf(d, sizeof d, "%s/tiny%d", g_dir, Ws[k]);
            mkdir(d, 0755);
            snprintf(f, sizeof f, "%s/s.bin", d);
            write_pos_shard(f, 0, (uint64_t)Ws[k] * T + 1 + (uint64_t)(T - 1) * (k % 2));
            MgLoader *tl = must_open(d, V, T, S0 + (uint64_t)k, 0, 1);
            int32_t *x = draw(tl, 4, Ws[k], NULL);
            for (int e = 0; e < 4; e++) {
                int cnt[17] = {0};
                for (int i = 0; i < Ws[k]; i++) cnt[x[((size_t)e * Ws[k] + i) * T] / T]++;
                for (int w = 0; w < Ws[k]; w++) allok = allok && cnt[w] == 1;
            }
            free(x);
            mg_loader_close(tl);
        }
        tu_check(allok, "loader_small_epochs_are_permutations", "W = 1, 2, 3, 5, 17; 4 epochs each");
    }

    /* determinism and seed dependence */
    MgLoader *l1 = must_open(dA, V, T, S0 + 7, 0, 1), *l2 = must_open(dA, V, T, S0 + 7, 0, 1), *l3 = must_open(dA, V, T, S0 + 8, 0, 1);
    int32_t *a1 = draw(l1, 20, B, NULL), *a2 = draw(l2, 20, B, NULL), *a3 = draw(l3, 20, B, NULL);
    size_t bytes = (size_t)20 * B * T * sizeof(int32_t);
    tu_check(memcmp(a1, a2, bytes) == 0, "loader_same_seed_same_stream", "%d batches of %dx%d identical", 20, B, T);
    tu_check(memcmp(a1, a3, bytes) != 0, "loader_other_seed_other_stream", "seeds 7 and 8 differ");
    free(a1);
    free(a2);
    free(a3);
    mg_loader_close(l1);
    mg_loader_close(l2);
    mg_loader_close(l3);

    /* cursor save/restore on a mixture, including across an epoch boundary of the small source */
    char spec[1024];
    snprintf(spec, sizeof spec, "%s:0.5,%s:0.3,%s:0.2", dA, dB, dC);
    l1 = must_open(spec, V, T, S0 + 11, 0, 1);
    int32_t *pre = draw(l1, 200, B, NULL);
    int n = mg_loader_state_len(l1);
    int64_t *st = mg_malloc((size_t)n * sizeof(int64_t));
    mg_loader_state_get(l1, st);
    int32_t *cont = draw(l1, 50, B, NULL);
    l2 = must_open(spec, V, T, S0 + 11, 0, 1);
    int rc = mg_loader_state_set(l2, st, n, g_err, sizeof g_err);
    int32_t *cont2 = draw(l2, 50, B, NULL);
    tu_check(rc == 0 && memcmp(cont, cont2, (size_t)50 * B * T * sizeof(int32_t)) == 0, "loader_resume_exact",
             "state of %d values after %lld samples; %s", n, (long long)st[5], rc ? g_err : "identical continuation");
    free(pre);
    free(cont);
    free(cont2);
    mg_loader_close(l2);
    /* refusals */
    l2 = must_open(spec, V, T, S0 + 12, 0, 1);
    rc = mg_loader_state_set(l2, st, n, g_err, sizeof g_err);
    char sd1[64], sd2[64];
    snprintf(sd1, sizeof sd1, "seed %llu", (unsigned long long)(S0 + 11));
    snprintf(sd2, sizeof sd2, "seed is %llu", (unsigned long long)(S0 + 12));
    tu_check(rc != 0 && has(g_err, sd1) && has(g_err, sd2), "loader_resume_refuses_other_seed", "message: %s", g_err);
    mg_loader_close(l2);
    l2 = must_open(spec, V, T + 1, S0 + 11, 0, 1);
    rc = mg_loader_state_set(l2, st, mg_loader_state_len(l2), g_err, sizeof g_err);
    tu_check(rc != 0 && has(g_err, "seq_len"), "loader_resume_refuses_other_seq_len", "message: %s", g_err);
    mg_loader_close(l2);
    char spec2[1024];
    snprintf(spec2, sizeof spec2, "%s:0.5,%s:0.5", dA, dB);
    l2 = must_open(spec2, V, T, S0 + 11, 0, 1);
    rc = mg_loader_state_set(l2, st, n, g_err, sizeof g_err);
    tu_check(rc != 0 && has(g_err, "3 sources") && has(g_err, "has 2"), "loader_resume_refuses_other_spec", "message: %s",
             g_err);
    mg_loader_close(l2);
    snprintf(spec2, sizeof spec2, "%s:0.6,%s:0.2,%s:0.2", dA, dB, dC);
    l2 = must_open(spec2, V, T, S0 + 11, 0, 1);
    rc = mg_loader_state_set(l2, st, n, g_err, sizeof g_err);
    tu_check(rc != 0 && has(g_err, "weight"), "loader_resume_refuses_other_weights", "message: %s", g_err);
    mg_loader_close(l2);
    write_pos_shard(pathf("%s", "C/s1.bin"), 700000, 500); /* the data changed */
    l2 = must_open(spec, V, T, S0 + 11, 0, 1);
    rc = mg_loader_state_set(l2, st, n, g_err, sizeof g_err);
    tu_check(rc != 0 && has(g_err, "windows") && has(g_err, "data changed"), "loader_resume_refuses_changed_data",
             "message: %s", g_err);
    mg_loader_close(l2);
    remove(pathf("%s", "C/s1.bin"));
    free(st);
    mg_loader_close(l1);

    /* data parallel: 3 ranks are disjoint, their union is the 1-rank stream, cursors agree */
    const int DP = 3, CALLS = 40;
    MgLoader *one = must_open(spec, V, T, S0 + 5, 0, 1);
    int32_t *ref = draw(one, CALLS * DP, B, NULL); /* CALLS*DP*B samples */
    MgLoader *rk[3];
    int32_t *got[3];
    for (int r = 0; r < DP; r++) {
        rk[r] = must_open(spec, V, T, S0 + 5, r, DP);
        got[r] = draw(rk[r], CALLS, B, NULL);
    }
    int mism = 0, overlap = 0;
    for (int c = 0; c < CALLS; c++)
        for (int b = 0; b < B; b++)
            for (int r = 0; r < DP; r++) {
                int64_t g = ((int64_t)c * B + b) * DP + r; /* global sample index */
                mism += memcmp(got[r] + ((size_t)c * B + b) * T, ref + (size_t)g * T, (size_t)T * sizeof(int32_t)) != 0;
            }
    /* disjointness: window first tokens are unique stream positions within an epoch */
    for (int r = 0; r < DP; r++)
        for (int q = r + 1; q < DP; q++)
            for (int i = 0; i < CALLS * B; i++)
                for (int j = 0; j < CALLS * B; j++) overlap += got[r][(size_t)i * T] == got[q][(size_t)j * T];
    int64_t s0[64], s1[64];
    mg_loader_state_get(rk[0], s0);
    mg_loader_state_get(rk[2], s1);
    int64_t sref[64];
    mg_loader_state_get(one, sref);
    int same_state = memcmp(s0, s1, (size_t)mg_loader_state_len(rk[0]) * 8) == 0 &&
                     memcmp(s0, sref, (size_t)mg_loader_state_len(rk[0]) * 8) == 0;
    tu_check(mism == 0 && overlap == 0 && same_state, "loader_dp_ranks_partition_stream",
             "%d ranks x %d samples: %d differ from the 1-rank stream, %d shared windows, cursors %s", DP, CALLS * B, mism,
             overlap, same_state ? "equal" : "DIFFER");
    /* a 3-rank checkpoint resumes on 1 rank */
    int32_t *more_ref = draw(one, 10, B, NULL);
    MgLoader *re = must_open(spec, V, T, S0 + 5, 0, 1);
    rc = mg_loader_state_set(re, s0, mg_loader_state_len(re), g_err, sizeof g_err);
    int32_t *more = draw(re, 10, B, NULL);
    tu_check(rc == 0 && memcmp(more, more_ref, (size_t)10 * B * T * 4) == 0, "loader_resume_across_dp_sizes", "%s",
             rc ? g_err : "3-rank cursor continues the 1-rank stream");
    free(more);
    free(more_ref);
    mg_loader_close(re);
    for (int r = 0; r < DP; r++) {
        free(got[r]);
        mg_loader_close(rk[r]);
    }
    free(ref);
    mg_loader_close(one);

    /* realised mixture fractions (global counts; windows are tagged by their value range) */
    {
        snprintf(spec2, sizeof spec2, "%s:7,%s:2,%s:1", dA, dB, dC);
        MgLoader *m = must_open(spec2, V, 4, S0 + 99, 0, 1);
        const int N = 200000, MB = 500;
        int32_t *x = mg_malloc((size_t)MB * 4 * sizeof(int32_t));
        int64_t tag[3] = {0, 0, 0};
        for (int k = 0; k < N / MB; k++) {
            mg_loader_next(m, MB, x, NULL);
            for (int b = 0; b < MB; b++) tag[x[(size_t)b * 4] >= 600000 ? 2 : x[(size_t)b * 4] >= 300000 ? 1 : 0]++;
        }
        double worst = 0;
        int agree = 1;
        for (int s = 0; s < 3; s++) {
            double p = mg_loader_source_weight(m, s);
            double z = fabs((double)tag[s] - N * p) / sqrt(N * p * (1 - p));
            worst = fmax(worst, z);
            agree = agree && tag[s] == mg_loader_source_count(m, s);
        }
        tu_check(worst < 5 && agree && fabs(mg_loader_source_weight(m, 0) - 0.7) < 1e-12,
                 "loader_mixture_fractions", "counts %lld/%lld/%lld of %d for weights 0.7/0.2/0.1: worst %.2f sigma (< 5)",
                 (long long)tag[0], (long long)tag[1], (long long)tag[2], N, worst);
        char want[1024];
        snprintf(want, sizeof want, "%s:0.7,%s:0.2,%s:0.1", dA, dB, dC);
        tu_check(strcmp(mg_loader_spec_normalised(m), want) == 0, "loader_spec_normalised", "'%s'",
                 mg_loader_spec_normalised(m));
        /* the normalised text opens the same loader */
        MgLoader *m2 = must_open(mg_loader_spec_normalised(m), V, 4, S0 + 99, 0, 1);
        MgLoader *m3 = must_open(spec2, V, 4, S0 + 99, 0, 1);
        int32_t *y2 = draw(m2, 10, 8, NULL), *y3 = draw(m3, 10, 8, NULL);
        tu_check(memcmp(y2, y3, 10 * 8 * 4 * 4) == 0, "loader_spec_normalised_reopens_same_stream", "80 samples identical");
        free(y2);
        free(y3);
        mg_loader_close(m2);
        mg_loader_close(m3);
        free(x);
        mg_loader_close(m);
    }

    /* validation mode: fixed order, same every pass, ranks split it */
    {
        MgLoader *e = mg_loader_open_eval(spec, V, T, 0, 1, g_err, sizeof g_err);
        int64_t W = mg_loader_total_windows(e);
        int32_t *p1 = draw(e, 30, B, NULL);
        mg_loader_rewind(e);
        int32_t *p2 = draw(e, 30, B, NULL);
        int inorder = 1;
        for (int i = 0; i < 30 * B; i++) {
            int64_t w = i % W; /* windows of A, then B, then C */
            int64_t expect = w < (int64_t)WA ? w * T : w < (int64_t)WA + 8999 / T ? 300000 + (w - (int64_t)WA) * T
                                                                                : 600000 + (w - (int64_t)WA - 8999 / T) * T;
            inorder = inorder && p1[(size_t)i * T] == expect;
        }
        tu_check(e && memcmp(p1, p2, (size_t)30 * B * T * 4) == 0 && inorder, "loader_eval_repeats_exactly",
                 "%lld windows in the fixed list", (long long)W);
        /* wrap-around */
        mg_loader_rewind(e);
        int32_t *full = draw(e, 1, (int)W + 3, NULL);
        tu_check(memcmp(full + (size_t)W * T, full, (size_t)3 * T * 4) == 0, "loader_eval_wraps_around", "window %lld is window 0 again", (long long)W);
        free(full);
        MgLoader *e0 = mg_loader_open_eval(spec, V, T, 0, 2, g_err, sizeof g_err);
        MgLoader *e1 = mg_loader_open_eval(spec, V, T, 1, 2, g_err, sizeof g_err);
        int32_t *q0 = draw(e0, 15, B, NULL), *q1 = draw(e1, 15, B, NULL);
        int ok = 1;
        for (int i = 0; i < 15 * B; i++)
            ok = ok && !memcmp(q0 + (size_t)i * T, p1 + (size_t)(2 * i) * T, (size_t)T * 4) &&
                 !memcmp(q1 + (size_t)i * T, p1 + (size_t)(2 * i + 1) * T, (size_t)T * 4);
        tu_check(ok, "loader_eval_dp_ranks_split_list", "2 ranks take the even and odd windows of the list");
        free(q0);
        free(q1);
        free(p1);
        free(p2);
        mg_loader_close(e0);
        mg_loader_close(e1);
        mg_loader_close(e);
    }

    /* spec and data errors */
    typedef struct {
        const char *name;
        char spec[700];
        int T;
        const char *needle1, *needle2;
    } ErrCase;
    ErrCase errs[6];
    int ne = 0;
    errs[ne] = (ErrCase){"loader_refuses_missing_source", "", 16, "no_such_dir", "prepare"};
    snprintf(errs[ne++].spec, 700, "%s", pathf("%s", "no_such_dir"));
    mkdir(pathf("%s", "empty"), 0755);
    errs[ne] = (ErrCase){"loader_refuses_empty_dir", "", 16, "no *.bin shards", "empty"};
    snprintf(errs[ne++].spec, 700, "%s", pathf("%s", "empty"));
    errs[ne] = (ErrCase){"loader_refuses_bad_weight", "", 16, "must be a number > 0", "-1"};
    snprintf(errs[ne++].spec, 700, "%s:0.5,%s:-1", dA, dB);
    errs[ne] = (ErrCase){"loader_refuses_empty_entry", "", 16, "empty entry", ","};
    snprintf(errs[ne++].spec, 700, "%s,,%s", dA, dB);
    errs[ne] = (ErrCase){"loader_refuses_too_little_data", "", 20000, "too few", "20001"};
    snprintf(errs[ne++].spec, 700, "%s", dA);
    for (int i = 0; i < ne; i++) {
        g_err[0] = 0;
        MgLoader *x = mg_loader_open(errs[i].spec, V, errs[i].T, 1, 0, 1, g_err, sizeof g_err);
        tu_check(!x && has(g_err, errs[i].needle1) && has(g_err, errs[i].needle2), errs[i].name, "message: %s", g_err);
        mg_loader_close(x);
    }
    g_err[0] = 0;
    MgLoader *x = mg_loader_open(dA, 32000, T, 1, 0, 1, g_err, sizeof g_err);
    tu_check(!x && has(g_err, "1048576") && has(g_err, "32000"), "loader_refuses_vocab_mismatch", "message: %s", g_err);
    mg_loader_close(x);
    /* shards from different tokenizers */
    mkdir(pathf("%s", "D"), 0755);
    int32_t tk[40];
    for (int i = 0; i < 40; i++) tk[i] = i % 5 ? 7 : 1;
    uint64_t ds[8] = {0, 5, 10, 15, 20, 25, 30, 35};
    mg_shard_write(pathf("%s", "D/a.bin"), tk, 40, ds, 8, 32000, 1, 111, g_err, sizeof g_err);
    mg_shard_write(pathf("%s", "D/b.bin"), tk, 40, ds, 8, 32000, 1, 222, g_err, sizeof g_err);
    x = mg_loader_open(pathf("%s", "D"), 32000, 8, 1, 0, 1, g_err, sizeof g_err);
    tu_check(!x && has(g_err, "different tokenizers"), "loader_refuses_mixed_tokenizers", "message: %s", g_err);
    mg_loader_close(x);
}

/* Found by the shard fuzzer (tests/fuzz/fuzz_shard.c): a header with a vocabulary above INT32_MAX and
 * 4-byte tokens was accepted, and its ids >= 2^31 reached the loader as negative int32 token ids. */
static void test_shard_vocab_above_int32(void) {
    unsigned char m[80] = {0};
    memcpy(m, "MGSHARD", 8);
    m[8] = 1;                          /* version */
    memset(m + 12, 0xFF, 4);           /* vocab_size 4294967295 */
    m[16] = 4;                         /* token_bytes */
    memset(m + 20, 0xFF, 4);           /* bos_id -1 */
    m[24] = 2;                         /* n_tokens */
    m[32] = 1;                         /* n_docs */
    m[64 + 3] = 0x80;                  /* token 0 = 0x80000000, token 1 = 0; doc_starts[0] = 0 at byte 72 */
    char *bad = pathf("%s", "vocab_huge.bin");
    spit(bad, m, sizeof m);
    MgShard s;
    g_err[0] = 0;
    int rc = mg_shard_open(&s, bad, 0, g_err, sizeof g_err);
    tu_check(rc != 0 && has(g_err, "corrupt header") && has(g_err, "4294967295"), "shard_refuses_vocab_above_int32",
             "message: %s", rc == 0 ? "(accepted)" : g_err);
    if (rc == 0) mg_shard_close(&s);
}

int main(void) {
    tu_init("test_data");
    snprintf(g_dir, sizeof g_dir, "/tmp/mg_test_data_XXXXXX");
    if (!mkdtemp(g_dir)) {
        printf("FAIL setup: cannot create a temporary directory\n");
        return 1;
    }
    test_shards();
    test_shard_vocab_above_int32();
    test_loader();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", g_dir);
    return tu_finish();
}
