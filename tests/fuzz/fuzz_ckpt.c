/* libFuzzer harness: the checkpoint reader (src/ckpt/reader.c) on the path a resume takes.
 *
 * Input: the bytes of one checkpoint file (HDF5, docs/checkpoint.md), written to a scratch file. Then,
 * as `train --resume` and `sample --ckpt` do: mg_ckpt_read_meta; the stored config text is parsed
 * (mg_config_load_text on the defaults) and validated; the parameter table is built from it (or, when the
 * stored config is refused or its model has more than FZ_MAX_PARAMS parameters, from the fixed tiny
 * config the seed checkpoint was written with); then mg_ckpt_load reads every tensor (with the AdamW
 * moments when the file says it has them), and `ckpt info`'s listing runs over the three groups.
 * Outcomes: refused with a message, or loaded, and a loaded checkpoint holds only finite values (the
 * reader's NaN/Inf guarantee). The seed is written by fuzz_seeds (a tiny model, with optimizer state). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/checkpoint.h"
#include "../../src/common.h"
#include "../../src/config.h"
#include "../../src/params.h"
#include "fuzz_util.h"
#include "seed_config.h"

#define FZ_MAX_PARAMS (1 << 20)

/* HDF5 (Debian's libhdf5, not instrumented) loses some of its own allocations when it meets a damaged
 * object header (found by this harness: H5Oget_info_by_name1 -> H5O_protect -> H5FL_blk_malloc, on an
 * error path inside the library). Those are HDF5's bugs, not ours, and would stop every fuzzing run, so
 * leaks whose allocation stack passes through libhdf5 are not reported. (The library has no frame
 * pointers, so the stack cannot be matched more narrowly. Leaks of our own code are still reported,
 * except allocations made in a callback that HDF5 calls; HDF5 objects we fail to close are not leaks
 * anyway, HDF5's id table still holds them.) */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libhdf5\n"; }

typedef struct {
    const MgConfig *cfg;
    MgParamTable *t;
} BuildCtx;

static void build_table(void *p) {
    BuildCtx *b = p;
    mg_param_table_build(b->cfg, b->t);
}

/* 1 if cfg's parameter table differs from the seed model's (then the values are not the seed's). */
static int use_stored_differs(const MgConfig *cfg) {
    MgConfig seed;
    fz_seed_config(&seed);
    MgParamTable a, b;
    mg_param_table_build(cfg, &a);
    mg_param_table_build(&seed, &b);
    int differs = a.count != b.count || a.total != b.total;
    for (int i = 0; !differs && i < a.count; i++)
        differs = strcmp(a.params[i].name, b.params[i].name) != 0 || a.params[i].offset != b.params[i].offset ||
                  a.params[i].numel != b.params[i].numel;
    mg_param_table_free(&a);
    mg_param_table_free(&b);
    return differs;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_scratch_file(data, size, ".h5");
    char err[4096];
    MgCkptMeta meta;
    mg_ckpt_meta_init(&meta);
    if (mg_ckpt_read_meta(path, &meta, err, sizeof err) != 0) {
        fz_assert(err[0] != 0, "checkpoint refused without a message");
        return 0;
    }
    MgConfig cfg;
    mg_config_defaults(&cfg);
    int use_stored = mg_config_load_text(&cfg, meta.config_text ? meta.config_text : "", "stored", err, sizeof err) == 0 &&
                     mg_config_validate(&cfg, err, sizeof err) == 0;
    MgParamTable t;
    memset(&t, 0, sizeof t);
    if (use_stored) {
        BuildCtx b = {&cfg, &t};
        if (fz_try(build_table, &b) != 0) {
            use_stored = 0; /* an architecture refused the config: what resume reports as an error */
            memset(&t, 0, sizeof t);
        } else if (t.total > FZ_MAX_PARAMS || t.total <= 0) {
            mg_param_table_free(&t);
            use_stored = 0;
        }
    }
    if (!use_stored) {
        fz_seed_config(&cfg);
        mg_param_table_build(&cfg, &t);
    }
    int with_opt = meta.has_optimizer;
    int64_t seed_mark = 0;
    int from_seed = mg_ckpt_meta_get_i64(&meta, "fuzz_seed", &seed_mark, err, sizeof err) == 0 && seed_mark == 1;
    mg_ckpt_meta_free(&meta);

    size_t n = (size_t)t.total;
    float *p = calloc(n, sizeof(float)), *m = NULL, *v = NULL;
    if (with_opt) {
        m = calloc(n, sizeof(float));
        v = calloc(n, sizeof(float));
    }
    MgCkptMeta back;
    int loaded = mg_ckpt_load(path, &t, p, m, v, &back, err, sizeof err) == 0;
    if (loaded) {
        for (size_t i = 0; i < n; i++)
            fz_assert(isfinite(p[i]) && (!m || (isfinite(m[i]) && isfinite(v[i]))), "non-finite value %zu loaded", i);
        /* Damage is never read as other values: what loads from (a mutation of) a seed of fuzz_seeds with
         * the seed's model is exactly the seed's data (every tensor has a CRC32). */
        if (from_seed && !use_stored_differs(&cfg))
            for (size_t i = 0; i < n; i++)
                fz_assert(p[i] == fz_seed_value(0, i) && (!m || (m[i] == fz_seed_value(1, i) && v[i] == fz_seed_value(2, i))),
                          "element %zu of a seed checkpoint loaded as a different value", i);
        mg_ckpt_meta_free(&back);
    } else {
        fz_assert(err[0] != 0, "load refused without a message");
    }
    free(p);
    free(m);
    free(v);
    mg_param_table_free(&t);

    /* `ckpt info` on a file that does not load: list every group (a loaded file was listed by the load;
     * each HDF5 open costs, so it is not repeated) */
    MgCkptReader *r = loaded ? NULL : mg_ckpt_open(path, NULL, err, sizeof err);
    if (r) {
        static const char *const groups[3] = {"model", "optimizer/m", "optimizer/v"};
        for (int g = 0; g < 3; g++) {
            MgCkptTensorInfo *list = NULL;
            int cnt = 0;
            (void)mg_ckpt_has_group(r, groups[g]);
            if (mg_ckpt_list(r, groups[g], &list, &cnt, err, sizeof err) == 0)
                for (int i = 0; i < cnt; i++)
                    fz_assert(list[i].ndim >= 0 && list[i].ndim <= 4, "tensor %s has %d dimensions", list[i].name,
                              list[i].ndim);
            free(list);
        }
        mg_ckpt_close(r);
    }
    return 0;
}
