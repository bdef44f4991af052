/* The tiny model of the checkpoint fuzzer's seeds and their values (fuzz_seeds.c writes them; fuzz_ckpt.c
 * falls back to this model and checks what it loads from a seed against these values). */
#ifndef MG_FUZZ_SEED_CONFIG_H
#define MG_FUZZ_SEED_CONFIG_H

#include <string.h>

#include "../../src/config.h"

static inline void fz_seed_config(MgConfig *c) {
    mg_config_defaults(c);
    c->vocab_size = 32;
    c->n_layers = 1;
    c->model_dim = 16;
    c->num_heads = 2;
    c->z_dim = 8;
    c->value_dim = 16;
    c->ffn_hidden_dim = 16;
    c->cema_ndim = 2;
    c->norm_num_groups = 2;
    c->chunk_size = 8;
    c->seq_len = 16;
    c->batch_size = 1;
}

/* Element i of the seed checkpoint's parameters (group 0), AdamW m (1) and v (2): exact in float32. */
static inline float fz_seed_value(int group, size_t i) {
    return group == 0 ? (float)((int)(i % 17) - 8) * 0.125f : group == 1 ? (float)(i % 5) * 1e-3f : (float)(i % 3) * 1e-6f;
}

#endif
