/* Writes the binary seeds of the fuzz harnesses (run by tests/test_fuzz.sh before fuzzing):
 *   fuzz_seeds DIR   ->  DIR/ckpt/{full,weights}.h5   tiny checkpoints (seed_config.h), with and without
 *                                                   the AdamW moments (~tens of KB each, so generated, not
 *                                                   committed)
 *                        DIR/shard/NAME.bin           small valid shards (2- and 4-byte tokens, BOS/no BOS)
 *                        DIR/tokenizer/synthetic.tok the synthetic tokenizer of fuzz_util.c
 * The shard and tokenizer seeds are also committed under tests/fuzz/corpus/ (they are a few hundred
 * bytes); writing them here keeps them in step with the format. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../../src/checkpoint.h"
#include "../../src/common.h"
#include "../../src/data.h"
#include "fuzz_util.h"
#include "seed_config.h"

static void mkdir_p(const char *dir) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) mg_fatal("cannot create '%s': %s", dir, strerror(errno));
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    char path[4096], err[4096];
    const char *dir = argv[1];
    mkdir_p(dir);
    snprintf(path, sizeof path, "%s/shard", dir);
    mkdir_p(path);
    snprintf(path, sizeof path, "%s/tokenizer", dir);
    mkdir_p(path);
    snprintf(path, sizeof path, "%s/ckpt", dir);
    mkdir_p(path);

    /* shards */
    int32_t tok[40];
    for (int i = 0; i < 40; i++) tok[i] = (i * 7 + 3) % 29;
    uint64_t docs[3] = {0, 11, 25};
    for (int i = 0; i < 3; i++) tok[docs[i]] = 1;
    snprintf(path, sizeof path, "%s/shard/bos16.bin", dir);
    if (mg_shard_write(path, tok, 40, docs, 3, 32, 1, 0x1234, err, sizeof err)) mg_fatal("%s", err);
    snprintf(path, sizeof path, "%s/shard/nobos16.bin", dir);
    if (mg_shard_write(path, tok, 17, docs, 1, 32, -1, 0, err, sizeof err)) mg_fatal("%s", err);
    for (int i = 0; i < 40; i++) tok[i] = (i * 7919 + 1) % 70000;
    for (int i = 0; i < 3; i++) tok[docs[i]] = 1;
    snprintf(path, sizeof path, "%s/shard/bos32.bin", dir);
    if (mg_shard_write(path, tok, 33, docs, 3, 70000, 1, 5, err, sizeof err)) mg_fatal("%s", err);

    /* tokenizer */
    static unsigned char buf[16384];
    size_t n = fz_synthetic_tokenizer(buf, sizeof buf);
    snprintf(path, sizeof path, "%s/tokenizer/synthetic.tok", dir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0) mg_fatal("cannot write '%s'", path);

    /* checkpoints */
    if (!mg_ckpt_available()) mg_fatal("this build has no HDF5: the checkpoint fuzzer needs it");
    MgConfig c;
    fz_seed_config(&c);
    MgParamTable t;
    mg_param_table_build(&c, &t);
    size_t np = (size_t)t.total;
    float *p = malloc(np * 4), *m = malloc(np * 4), *v = malloc(np * 4);
    for (size_t i = 0; i < np; i++) {
        p[i] = fz_seed_value(0, i);
        m[i] = fz_seed_value(1, i);
        v[i] = fz_seed_value(2, i);
    }
    MgCkptMeta meta;
    mg_ckpt_meta_init(&meta);
    char *text = mg_config_to_text(&c);
    mg_ckpt_meta_set_config(&meta, text);
    free(text);
    meta.step = 3;
    meta.tokens_seen = 48;
    int64_t st[3] = {1, 2, 3};
    mg_ckpt_meta_set_i64_array(&meta, "loader_state", st, 3);
    mg_ckpt_meta_set_str(&meta, "train_data", "data/x:1");
    mg_ckpt_meta_set_f64(&meta, "lr", 1e-3);
    mg_ckpt_meta_set_i64(&meta, "fuzz_seed", 1); /* fuzz_ckpt checks the values of what loads from it */
    snprintf(path, sizeof path, "%s/ckpt/full.h5", dir);
    if (mg_ckpt_save(path, &t, p, m, v, &meta, err, sizeof err)) mg_fatal("%s", err);
    snprintf(path, sizeof path, "%s/ckpt/weights.h5", dir);
    if (mg_ckpt_save(path, &t, p, NULL, NULL, &meta, err, sizeof err)) mg_fatal("%s", err);
    mg_ckpt_meta_free(&meta);
    free(p);
    free(m);
    free(v);
    mg_param_table_free(&t);
    printf("fuzz_seeds: wrote seeds under %s\n", dir);
    return 0;
}
