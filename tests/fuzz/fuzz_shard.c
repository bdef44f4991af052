/* libFuzzer harness: the token-shard opener and the loader (src/data.c).
 *
 * Input: the bytes of one shard file (docs/data.md). It is written to a scratch file, then
 * mg_shard_read_info and mg_shard_open must agree on whether the header is acceptable, an opened shard
 * must hold only ids below its vocabulary size and documents that start in order at BOS tokens, and the
 * evaluation and training loaders over it (seq_len from the shard, 1..8) must hand out only tokens of the
 * shard, survive a cursor save/restore and a rewind. Outcomes: rejected with a message, or accepted with
 * those properties. */
#include <stdlib.h>
#include <string.h>

#include "../../src/common.h"
#include "../../src/data.h"
#include "fuzz_util.h"

static void check_batch(const MgShard *s, const int32_t *x, int n) {
    for (int i = 0; i < n; i++)
        fz_assert(x[i] >= 0 && (uint32_t)x[i] < s->info.vocab_size, "loader returned id %d (vocab %u)", x[i],
                  s->info.vocab_size);
}

static void run_loaders(const char *path, const MgShard *s, int seq_len) {
    char err[4096];
    enum { B = 3 };
    int32_t in[B * 8], tg[B * 8];
    MgLoader *ev = mg_loader_open_eval(path, 0, seq_len, 0, 1, err, sizeof err);
    if (!ev) {
        fz_assert(err[0] != 0, "eval loader refused without a message");
    } else {
        fz_assert(mg_loader_total_windows(ev) > 0, "an eval loader without windows");
        mg_loader_next(ev, B, in, tg);
        check_batch(s, in, B * seq_len);
        check_batch(s, tg, B * seq_len);
        int32_t again[B * 8];
        mg_loader_rewind(ev);
        mg_loader_next(ev, B, again, NULL);
        fz_assert(memcmp(in, again, sizeof(int32_t) * B * (size_t)seq_len) == 0, "eval rewind changed the data");
        mg_loader_close(ev);
    }
    MgLoader *tr = mg_loader_open(path, 0, seq_len, 7, 0, 1, err, sizeof err);
    if (!tr) {
        fz_assert(err[0] != 0, "train loader refused without a message");
        return;
    }
    mg_loader_next(tr, B, in, tg);
    check_batch(s, in, B * seq_len);
    check_batch(s, tg, B * seq_len);
    int n = mg_loader_state_len(tr);
    int64_t *st = malloc(sizeof(int64_t) * (size_t)n);
    mg_loader_state_get(tr, st);
    int32_t a[B * 8], b[B * 8];
    mg_loader_next(tr, B, a, NULL);
    MgLoader *tr2 = mg_loader_open(path, 0, seq_len, 7, 0, 1, err, sizeof err);
    fz_assert(tr2 != NULL, "the second open of the same shard failed: %s", err);
    fz_assert(mg_loader_state_set(tr2, st, n, err, sizeof err) == 0, "own cursor refused: %s", err);
    mg_loader_next(tr2, B, b, NULL);
    fz_assert(memcmp(a, b, sizeof(int32_t) * B * (size_t)seq_len) == 0, "a restored cursor gives other data");
    /* a damaged cursor must be refused or accepted, never crash */
    for (int i = 0; i < n; i++) {
        int64_t save = st[i];
        st[i] = save ^ (int64_t)0x4000000000000001ll;
        if (mg_loader_state_set(tr2, st, n, err, sizeof err) == 0) mg_loader_next(tr2, 1, b, b + 8);
        st[i] = save;
    }
    free(st);
    mg_loader_close(tr2);
    mg_loader_close(tr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_scratch_file(data, size, ".bin");
    char err[4096];
    MgShardInfo info;
    int rc_info = mg_shard_read_info(path, &info, err, sizeof err);
    MgShard s;
    int rc = mg_shard_open(&s, path, 0, err, sizeof err);
    if (rc != 0) {
        fz_assert(err[0] != 0, "shard refused without a message");
        return 0;
    }
    fz_assert(rc_info == 0, "mg_shard_open accepted a shard whose header mg_shard_read_info refuses");
    for (uint64_t i = 0; i < s.info.n_tokens; i++)
        fz_assert((uint32_t)mg_shard_token(&s, i) < s.info.vocab_size, "token %llu out of range",
                  (unsigned long long)i);
    for (uint64_t d = 0; d < s.info.n_docs; d++) {
        fz_assert(s.doc_starts[d] < s.info.n_tokens && (d == 0 || s.doc_starts[d] > s.doc_starts[d - 1]),
                  "document %llu out of order", (unsigned long long)d);
        if (s.info.bos_id >= 0)
            fz_assert(mg_shard_token(&s, s.doc_starts[d]) == s.info.bos_id, "document %llu not at BOS",
                      (unsigned long long)d);
    }
    int seq_len = 1 + (int)(s.info.tokenizer_fingerprint % 8);
    run_loaders(path, &s, seq_len);
    mg_shard_close(&s);
    return 0;
}
