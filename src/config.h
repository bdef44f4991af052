/* Run configuration: one struct holding every key, filled from a config file (`key = value` lines,
 * `#` comments) and `--key value` command-line overrides. One table of keys (config.c) drives parsing,
 * validation, the usage text, the start-up print and the resolved-config text stored in checkpoints. */
#ifndef MG_CONFIG_H
#define MG_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common.h"

#define MG_PATH_MAX 1024
#define MG_NAME_MAX 64

typedef struct {
    /* ---- model ---- */
    char arch[MG_NAME_MAX];      /* "megalodon" | "llama" (the Llama-2 baseline, src/model/llama.c) */
    int vocab_size;              /* 32000 for the Llama-2 tokenizer */
    int n_layers;
    int model_dim;               /* d */
    int num_heads;               /* H */
    int num_kv_heads;            /* llama: key/value heads (grouped-query attention); 0 = num_heads */
    int z_dim;                   /* shared Q/K width z (per head z/H) */
    int value_dim;               /* v (per head v/H) */
    int ffn_hidden_dim;          /* f */
    int cema_ndim;               /* N */
    int norm_num_groups;         /* G (TimestepNorm groups) */
    int chunk_size;              /* c (attention chunk) */
    double rope_base;
    double norm_eps;
    int swiglu;                  /* bool */
    int scale_emb;               /* bool: multiply embeddings by sqrt(d) */
    int share_emb;               /* bool: tie lm_head to embed */
    double dropout;              /* residual-branch dropout */
    double attention_dropout;    /* on attention probabilities */
    double hidden_dropout;       /* inside the attention and FFN branches */

    /* ---- data ---- */
    char train_data[MG_PATH_MAX]; /* shard directory/file, or a mixture "dirA:0.95,dirB:0.05" */
    char val_data[MG_PATH_MAX];
    int seq_len;                 /* tokens per sequence (the model sees seq_len inputs, seq_len targets) */
    int batch_size;              /* sequences per micro-batch */
    int64_t batch_tokens;        /* global batch in tokens; gradient accumulation = batch_tokens / (batch_size*seq_len); 0 = one micro-batch */

    /* ---- optimizer and schedule ---- */
    double lr;                   /* peak learning rate */
    char lr_schedule[MG_NAME_MAX]; /* cosine | constant | linear */
    int64_t warmup_steps;
    double warmup_init_ratio;    /* warm-up starts at lr * this */
    double min_lr_ratio;         /* floor of cosine/linear decay, as a fraction of lr */
    double beta1, beta2, adam_eps, weight_decay;
    double grad_clip;            /* global-norm clip; 0 = off */
    int64_t max_steps;

    /* ---- evaluation, logging, sampling ---- */
    int64_t eval_every;          /* steps between validation passes; 0 = only at the end */
    int eval_batches;            /* micro-batches per validation pass */
    int64_t log_every;
    int sample_every;            /* steps between samples printed during training; 0 = off */
    double temperature;
    int top_k;
    double top_p;
    int max_new_tokens;

    /* ---- run ---- */
    char out_dir[MG_PATH_MAX];
    uint64_t seed;
    int threads;                 /* 0 = OpenMP default */
    char device[MG_NAME_MAX];    /* cpu (cuda later) */
    char precision[MG_NAME_MAX]; /* auto | fp32 | bf16 (bf16: CUDA only); mg_config_precision resolves auto */
    char tokenizer[MG_PATH_MAX]; /* tokenizer file (see docs/data.md) */
    int64_t stop_at;             /* stop (with a checkpoint) once this step is done; 0 = run to max_steps */
    double peak_tflops;          /* peak used for MFU; 0 = measured sgemm peak on cpu, 989.4 (H100 bf16) on cuda */
    int sp;                      /* sequence-parallel ranks per data-parallel group (docs/parallelism.md) */
    char sp_scan[MG_NAME_MAX];   /* chain | pipelined | allgather | doubling */
    int sp_scan_pieces;          /* pipelined: pieces the state is cut into */
    char sp_attention[MG_NAME_MAX]; /* auto | ring | alltoall | gather: a chunk longer than a rank's slice */
    char sp_layout[MG_NAME_MAX];    /* contiguous | zigzag (llama: two blocks per rank, balanced ring) */
    char dp_comm[MG_NAME_MAX];      /* auto | host | nccl | staged: the data-parallel collectives (parallel/devcomm.h) */
    char sp_backward[MG_NAME_MAX];  /* chain | scan: how state gradients cross ranks */

    /* ---- checkpoints and continual pre-training ---- */
    int64_t ckpt_every;          /* 0 = only at the end (and on SIGINT/SIGTERM) */
    int ckpt_keep;
    int ckpt_async;              /* bool: periodic checkpoints written by a background thread from a host snapshot */
    char resume[MG_PATH_MAX];    /* "" | auto | path */
    char init_from[MG_PATH_MAX]; /* start a new run from these weights */
    int init_optimizer;          /* bool: also load optimizer moments with init_from */
    int64_t rewarm_steps;        /* continual pre-training: steps to re-warm to lr (default warmup_steps) */
} MgConfig;

/* Fill with the defaults of every key. */
void mg_config_defaults(MgConfig *c);

/* Parse a config file into c (on top of whatever is there). On error, writes a message naming the
 * file, line and key into err and returns -1. */
int mg_config_load_file(MgConfig *c, const char *path, char *err, size_t errlen);
/* Parse "key = value" text (e.g. the resolved config stored in a checkpoint); `origin` names it in errors. */
int mg_config_load_text(MgConfig *c, const char *text, const char *origin, char *err, size_t errlen);
/* Set one key from a string value (command-line override). */
int mg_config_set(MgConfig *c, const char *key, const char *value, const char *origin, char *err, size_t errlen);

/* The usual command-line handling: `--config F` (loaded first, may appear once) and then every other
 * `--key value` in order. Unknown keys / bad values exit with a message. Arguments that are not config
 * keys but are listed in `extra_keys` (NULL-terminated) are returned in extra_values in the same order
 * (NULL when absent). */
void mg_config_from_args(MgConfig *c, int argc, char **argv, const char *const *extra_keys,
                         const char **extra_values);

/* Cross-key validation (divisibility of heads, groups, chunk vs seq_len, ...). Returns -1 with a message
 * that says what to change. */
int mg_config_validate(const MgConfig *c, char *err, size_t errlen);
/* The length of one causal attention block of a training sequence: megalodon min(chunk_size, seq_len),
 * llama the whole seq_len (what sequence parallelism splits across ranks when a slice is shorter). */
int mg_config_attention_span(const MgConfig *c);
/* The precision a run computes in: "fp32" or "bf16" (precision = auto resolved by the device). */
const char *mg_config_precision(const MgConfig *c);
/* The compute dtype of that precision (MG_BF16 or MG_F32), without creating a backend. */
MgDtype mg_config_compute_dtype(const MgConfig *c);

/* Print every key = value (resolved), grouped, to f; or into a malloc'd string. */
void mg_config_print(const MgConfig *c, FILE *f);
char *mg_config_to_text(const MgConfig *c);

/* Print the key table (name, default, help) as usage text. */
void mg_config_usage(FILE *f);

#endif
