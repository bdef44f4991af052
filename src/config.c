/* Configuration keys: one static table (KEYS) drives defaults, parsing of config files and command-line
 * overrides, range checks, the usage text and the resolved-config text. Adding a key = one struct field
 * in config.h + one row here (+ a cross-key check in mg_config_validate if it relates to others). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common.h"
#include "fileio.h"

typedef enum { T_INT, T_INT64, T_UINT64, T_DOUBLE, T_BOOL, T_STRING, T_CHOICE } KeyType;

/* Value ranges checked when a key is set (and again by mg_config_validate for structs filled in code). */
typedef enum {
    R_ANY,
    R_NONNEG,   /* >= 0 */
    R_POS,      /* > 0 */
    R_PROB,     /* [0, 1) */
    R_UNIT,     /* [0, 1] */
    R_UNIT_POS, /* (0, 1] */
    R_GE_M1,    /* >= -1 (-1 = "use another key's value") */
} Range;

typedef struct {
    const char *name;
    KeyType type;
    size_t offset, size;
    const char *def;     /* default, as text (parsed by the same code as user values) */
    const char *group;
    Range range;
    const char *choices; /* T_CHOICE: allowed values separated by '|' */
    const char *help;
} KeyDef;

#define F(field) offsetof(MgConfig, field), sizeof(((MgConfig *)0)->field)

static const char *const GROUPS[] = {"model", "data", "optim", "eval", "run", "ckpt"};
#define NGROUPS ((int)(sizeof(GROUPS) / sizeof(GROUPS[0])))

static const KeyDef KEYS[] = {
    /* ---- model (defaults: official ModelConf where it has one; sizes have none and must be set) ---- */
    {"arch", T_CHOICE, F(arch), "megalodon", "model", R_ANY, "megalodon|llama", "model family: megalodon, or llama (the Llama-2 baseline; docs/model.md)"},
    {"vocab_size", T_INT, F(vocab_size), "32000", "model", R_NONNEG, NULL, "vocabulary size V (32000 = Llama-2 tokenizer)"},
    {"n_layers", T_INT, F(n_layers), "0", "model", R_NONNEG, NULL, "number of blocks (must be set)"},
    {"model_dim", T_INT, F(model_dim), "0", "model", R_NONNEG, NULL, "model width d (must be set)"},
    {"num_heads", T_INT, F(num_heads), "0", "model", R_NONNEG, NULL, "attention heads H (must be set)"},
    {"num_kv_heads", T_INT, F(num_kv_heads), "0", "model", R_NONNEG, NULL, "llama: key/value heads (grouped-query attention), dividing num_heads; 0 = num_heads"},
    {"z_dim", T_INT, F(z_dim), "0", "model", R_NONNEG, NULL, "megalodon: shared Q/K width z; per head z/H, even (must be set)"},
    {"value_dim", T_INT, F(value_dim), "0", "model", R_NONNEG, NULL, "megalodon: value width v; per head v/H (must be set)"},
    {"ffn_hidden_dim", T_INT, F(ffn_hidden_dim), "0", "model", R_NONNEG, NULL, "FFN hidden width f (must be set)"},
    {"cema_ndim", T_INT, F(cema_ndim), "16", "model", R_NONNEG, NULL, "megalodon: CEMA order N per channel, 1..64"},
    {"norm_num_groups", T_INT, F(norm_num_groups), "0", "model", R_NONNEG, NULL, "megalodon: TimestepNorm groups G; divides d (must be set)"},
    {"chunk_size", T_INT, F(chunk_size), "2048", "model", R_NONNEG, NULL, "megalodon: attention chunk c; seq_len < c or seq_len % c == 0 (llama attends over the whole sequence)"},
    {"rope_base", T_DOUBLE, F(rope_base), "10000", "model", R_POS, NULL, "RoPE base (paper 7B: 100000)"},
    {"norm_eps", T_DOUBLE, F(norm_eps), "1e-5", "model", R_POS, NULL, "epsilon of every normalization"},
    {"swiglu", T_BOOL, F(swiglu), "false", "model", R_ANY, NULL, "megalodon: SwiGLU FFN (fc1, fc3, fc2) instead of silu (fc1, fc2); llama always uses SwiGLU"},
    {"scale_emb", T_BOOL, F(scale_emb), "false", "model", R_ANY, NULL, "multiply embeddings by sqrt(d)"},
    {"share_emb", T_BOOL, F(share_emb), "false", "model", R_ANY, NULL, "tie the LM head to the embedding"},
    {"dropout", T_DOUBLE, F(dropout), "0", "model", R_PROB, NULL, "dropout on embeddings and residual branches, [0, 1)"},
    {"attention_dropout", T_DOUBLE, F(attention_dropout), "0", "model", R_PROB, NULL, "DropKey: probability of masking an attention score before the softmax, [0, 1)"},
    {"hidden_dropout", T_DOUBLE, F(hidden_dropout), "0", "model", R_PROB, NULL, "dropout inside the attention and FFN branches, [0, 1)"},

    /* ---- data ---- */
    {"train_data", T_STRING, F(train_data), "data/corpus/train", "data", R_ANY, NULL, "training shards: a directory or file, or a mixture \"dirA:0.95,dirB:0.05\""},
    {"val_data", T_STRING, F(val_data), "data/corpus/val", "data", R_ANY, NULL, "validation shards (same syntax as train_data)"},
    {"seq_len", T_INT, F(seq_len), "0", "data", R_NONNEG, NULL, "tokens per sequence (must be set)"},
    {"batch_size", T_INT, F(batch_size), "0", "data", R_NONNEG, NULL, "sequences per micro-batch (must be set)"},
    {"batch_tokens", T_INT64, F(batch_tokens), "0", "data", R_NONNEG, NULL, "tokens per optimizer step, a multiple of batch_size*seq_len (gradient accumulation); 0 = one micro-batch"},

    /* ---- optimizer and schedule ---- */
    {"lr", T_DOUBLE, F(lr), "1e-3", "optim", R_POS, NULL, "peak learning rate"},
    {"lr_schedule", T_CHOICE, F(lr_schedule), "cosine", "optim", R_ANY, "cosine|constant|linear", "decay after warm-up"},
    {"warmup_steps", T_INT64, F(warmup_steps), "0", "optim", R_NONNEG, NULL, "linear warm-up steps, <= max_steps"},
    {"warmup_init_ratio", T_DOUBLE, F(warmup_init_ratio), "0", "optim", R_UNIT, NULL, "warm-up starts at lr * this, [0, 1]"},
    {"min_lr_ratio", T_DOUBLE, F(min_lr_ratio), "0.1", "optim", R_UNIT, NULL, "floor of the cosine/linear decay as a fraction of lr, [0, 1]"},
    {"beta1", T_DOUBLE, F(beta1), "0.9", "optim", R_PROB, NULL, "AdamW beta1, [0, 1)"},
    {"beta2", T_DOUBLE, F(beta2), "0.95", "optim", R_PROB, NULL, "AdamW beta2, [0, 1)"},
    {"adam_eps", T_DOUBLE, F(adam_eps), "1e-8", "optim", R_POS, NULL, "AdamW epsilon"},
    {"weight_decay", T_DOUBLE, F(weight_decay), "0.1", "optim", R_NONNEG, NULL, "AdamW decoupled weight decay (all parameters, as the official code)"},
    {"grad_clip", T_DOUBLE, F(grad_clip), "1.0", "optim", R_NONNEG, NULL, "global gradient-norm clip; 0 = off"},
    {"max_steps", T_INT64, F(max_steps), "0", "optim", R_NONNEG, NULL, "optimizer steps of the run (must be set)"},

    /* ---- evaluation, logging, sampling ---- */
    {"eval_every", T_INT64, F(eval_every), "0", "eval", R_NONNEG, NULL, "steps between validation passes; 0 = only at the end"},
    {"eval_batches", T_INT, F(eval_batches), "8", "eval", R_NONNEG, NULL, "micro-batches per validation pass"},
    {"log_every", T_INT64, F(log_every), "1", "eval", R_POS, NULL, "steps between log lines"},
    {"sample_every", T_INT, F(sample_every), "0", "eval", R_NONNEG, NULL, "steps between samples printed during training; 0 = off"},
    {"temperature", T_DOUBLE, F(temperature), "1.0", "eval", R_NONNEG, NULL, "sampling temperature; 0 = greedy"},
    {"top_k", T_INT, F(top_k), "0", "eval", R_NONNEG, NULL, "sample from the k most likely tokens; 0 = off"},
    {"top_p", T_DOUBLE, F(top_p), "1.0", "eval", R_UNIT_POS, NULL, "nucleus sampling mass, (0, 1]; 1 = off"},
    {"max_new_tokens", T_INT, F(max_new_tokens), "64", "eval", R_NONNEG, NULL, "tokens generated per sample"},

    /* ---- run ---- */
    {"out_dir", T_STRING, F(out_dir), "runs/default", "run", R_ANY, NULL, "directory for logs and checkpoints"},
    {"seed", T_UINT64, F(seed), "1", "run", R_ANY, NULL, "random seed (initialisation, data order, dropout, sampling)"},
    {"threads", T_INT, F(threads), "0", "run", R_NONNEG, NULL, "CPU threads; 0 = OpenMP default"},
    {"device", T_CHOICE, F(device), "cpu", "run", R_ANY, "cpu|cuda|cuda-emu", "compute device: cpu, cuda (an NVIDIA GPU; under mpirun each rank takes the GPU of its local rank), or cuda-emu (the CUDA kernels on the CPU emulator: for tests, slow)"},
    {"precision", T_CHOICE, F(precision), "auto", "run", R_ANY, "auto|fp32|bf16", "storage/compute precision: bf16 = bf16 parameters, activations and gradients with fp32 accumulation, fp32 master weights, moments, states and losses (CUDA only); fp32 = everything fp32; auto = bf16 on cuda, fp32 on cpu"},
    {"tokenizer", T_STRING, F(tokenizer), "data/tokenizer/llama2.tok", "run", R_ANY, NULL, "tokenizer file"},
    {"stop_at", T_INT64, F(stop_at), "0", "run", R_NONNEG, NULL, "stop with a checkpoint once this step is done (resume later); 0 = run to max_steps"},
    {"peak_tflops", T_DOUBLE, F(peak_tflops), "0", "run", R_NONNEG, NULL, "peak TFLOP/s for MFU; 0 = measured sgemm peak (cpu) or 989.4 (H100/H200 bf16 dense, cuda)"},

    {"sp", T_INT, F(sp), "1", "run", R_POS, NULL, "sequence-parallel ranks per data-parallel group: mpirun -np P runs P/sp groups (docs/parallelism.md)"},
    {"sp_scan", T_CHOICE, F(sp_scan), "chain", "run", R_ANY, "chain|pipelined|allgather|doubling", "algorithm of the sequence-parallel state scan (docs/parallelism.md: the chain is the fastest across layers)"},
    {"sp_scan_pieces", T_INT, F(sp_scan_pieces), "4", "run", R_POS, NULL, "sp_scan pipelined: pieces the state is cut into"},
    {"sp_backward", T_CHOICE, F(sp_backward), "chain", "run", R_ANY, "chain|scan", "state gradients across ranks: the reverse chain, or reverse scans with sp_scan's algorithm (each state op's backward then runs twice)"},
    {"dp_comm", T_CHOICE, F(dp_comm), "auto", "run", R_ANY, "auto|host|nccl|staged", "data-parallel gradient reduce-scatter and parameter all-gather: host = through host memory over MPI, overlapped with the backward; nccl = GPU to GPU (device = cuda); staged = the nccl path's code through host memory (tests); auto = nccl on cuda when built with NCCL, else host"},
    {"sp_layout", T_CHOICE, F(sp_layout), "contiguous", "run", R_ANY, "contiguous|zigzag", "where a rank's tokens sit in the sequence: one contiguous slice, or (arch llama, with the ring) blocks r and 2 sp - 1 - r of 2 sp, which balances the causal attention's work"},
    {"sp_attention", T_CHOICE, F(sp_attention), "auto", "run", R_ANY, "auto|ring|alltoall|gather", "attention chunks longer than a rank's slice: ring (key/value blocks passed rank to rank), all-to-all over heads, or gather keys/values (auto: all-to-all when the chunk's ranks divide num_heads, else ring)"},

    /* ---- checkpoints and continual pre-training ---- */
    {"ckpt_every", T_INT64, F(ckpt_every), "0", "ckpt", R_NONNEG, NULL, "steps between checkpoints; 0 = only at the end (and on SIGINT/SIGTERM)"},
    {"ckpt_keep", T_INT, F(ckpt_keep), "3", "ckpt", R_NONNEG, NULL, "newest checkpoints kept; 0 = keep all"},
    {"ckpt_async", T_BOOL, F(ckpt_async), "true", "ckpt", R_ANY, NULL, "write periodic checkpoints in a background thread from a host snapshot (12 bytes per parameter); false = the step loop waits for each write"},
    {"resume", T_STRING, F(resume), "", "ckpt", R_ANY, NULL, "\"\" = fresh run, auto = newest checkpoint in out_dir if any, or a checkpoint path"},
    {"init_from", T_STRING, F(init_from), "", "ckpt", R_ANY, NULL, "start a new run from this checkpoint's weights (continual pre-training)"},
    {"init_optimizer", T_BOOL, F(init_optimizer), "false", "ckpt", R_ANY, NULL, "with init_from: also load the AdamW moments"},
    {"rewarm_steps", T_INT64, F(rewarm_steps), "-1", "ckpt", R_GE_M1, NULL, "with init_from: steps to re-warm to lr; -1 = warmup_steps"},
};
#define NKEYS ((int)(sizeof(KEYS) / sizeof(KEYS[0])))

/* Upper bounds of the numeric keys. They are generous (far beyond any model this trainer can hold) but
 * finite, and chosen so that every size computed from a config is exact in int64 and size_t: parameter
 * counts (V x d, d x f, ... per layer x n_layers), activation plans (tokens x width x buffers x layers),
 * checkpoint sizes and token counters. Products of keys are bounded too (mg_config_validate):
 * batch_size x seq_len (tokens per micro-batch), batch_tokens / (batch_size x seq_len) (micro-batches per
 * step) and max_steps x tokens per step. docs/config.md lists them. */
static const struct {
    const char *name;
    double max;
} BOUNDS[] = {
    {"vocab_size", 16777216},     {"n_layers", 1024},           {"model_dim", 65536},
    {"num_heads", 1024},          {"num_kv_heads", 1024},       {"z_dim", 65536},             {"value_dim", 262144},
    {"ffn_hidden_dim", 262144},   {"cema_ndim", 64},            {"norm_num_groups", 65536},
    {"chunk_size", 65536},        {"rope_base", 1e12},          {"norm_eps", 1},
    {"seq_len", 1048576},         {"batch_size", 65536},        {"batch_tokens", 1099511627776.0},
    {"lr", 10},                   {"warmup_steps", 1e12},       {"adam_eps", 1},
    {"weight_decay", 100},        {"grad_clip", 1e12},          {"max_steps", 1e12},
    {"eval_every", 1e12},         {"eval_batches", 16777216},   {"log_every", 1e12},
    {"sample_every", 1e9},        {"temperature", 100},         {"top_k", 16777216},
    {"max_new_tokens", 1048576},  {"threads", 4096},            {"stop_at", 1e12},
    {"peak_tflops", 1e9},         {"sp", 65536},                {"sp_scan_pieces", 1024},         {"ckpt_every", 1e12},         {"ckpt_keep", 1000000},
    {"rewarm_steps", 1e12},
};
#define MG_MAX_MICRO_TOKENS 16777216LL   /* batch_size x seq_len */
#define MG_MAX_MICRO_BATCHES 1048576LL   /* batch_tokens / (batch_size x seq_len) */
#define MG_MAX_RUN_TOKENS (1LL << 62)    /* max_steps x tokens per step */

/* The upper bound of key `name`, or 0 when it has none (strings, choices, bools, seed). */
static double key_max(const char *name) {
    for (size_t i = 0; i < sizeof BOUNDS / sizeof BOUNDS[0]; i++)
        if (!strcmp(BOUNDS[i].name, name)) return BOUNDS[i].max;
    return 0;
}

/* "1048576", "1e12" */
static void bound_text(double v, char *buf, size_t n) {
    if (v < 1e9) snprintf(buf, n, "%.0f", v);
    else if (v == 1099511627776.0) snprintf(buf, n, "1099511627776 (2^40)");
    else snprintf(buf, n, "%g", v);
}


static const KeyDef *find_key(const char *name) {
    for (int i = 0; i < NKEYS; i++)
        if (!strcmp(KEYS[i].name, name)) return &KEYS[i];
    return NULL;
}

/* Levenshtein distance, for "did you mean" suggestions. */
static int edit_distance(const char *a, const char *b) {
    int la = (int)MG_MIN(strlen(a), 63), lb = (int)MG_MIN(strlen(b), 63);
    int prev[64], cur[64];
    for (int j = 0; j <= lb; j++) prev[j] = j;
    for (int i = 1; i <= la; i++) {
        cur[0] = i;
        for (int j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            cur[j] = MG_MIN(sub, MG_MIN(prev[j] + 1, cur[j - 1] + 1));
        }
        memcpy(prev, cur, sizeof(int) * (size_t)(lb + 1));
    }
    return prev[lb];
}

/* Names other frameworks use for our keys (Hugging Face, nanoGPT, Megatron, fairseq, ...): an unknown key
 * that is one of these (or close to one) is answered with our key. */
static const struct {
    const char *alias, *key;
} ALIASES[] = {
    {"learning_rate", "lr"}, {"max_lr", "lr"}, {"peak_lr", "lr"}, {"base_lr", "lr"},
    {"lr_scheduler", "lr_schedule"}, {"lr_scheduler_type", "lr_schedule"}, {"scheduler", "lr_schedule"},
    {"min_lr", "min_lr_ratio"}, {"num_layers", "n_layers"}, {"n_layer", "n_layers"},
    {"num_hidden_layers", "n_layers"}, {"layers", "n_layers"}, {"depth", "n_layers"},
    {"hidden_size", "model_dim"}, {"d_model", "model_dim"}, {"n_embd", "model_dim"}, {"dim", "model_dim"},
    {"embed_dim", "model_dim"}, {"emb_dim", "model_dim"}, {"width", "model_dim"},
    {"num_key_value_heads", "num_kv_heads"}, {"n_kv_heads", "num_kv_heads"}, {"kv_heads", "num_kv_heads"},
    {"n_heads", "num_heads"}, {"n_head", "num_heads"}, {"num_attention_heads", "num_heads"}, {"heads", "num_heads"},
    {"intermediate_size", "ffn_hidden_dim"}, {"ffn_dim", "ffn_hidden_dim"}, {"d_ff", "ffn_hidden_dim"},
    {"ffn_hidden_size", "ffn_hidden_dim"}, {"hidden_dim", "ffn_hidden_dim"}, {"mlp_dim", "ffn_hidden_dim"},
    {"vocab", "vocab_size"}, {"n_vocab", "vocab_size"}, {"vocabulary_size", "vocab_size"},
    {"max_seq_len", "seq_len"}, {"max_position_embeddings", "seq_len"}, {"context_length", "seq_len"},
    {"block_size", "seq_len"}, {"seq_length", "seq_len"}, {"n_ctx", "seq_len"}, {"sequence_length", "seq_len"},
    {"max_seq_length", "seq_len"}, {"micro_batch_size", "batch_size"}, {"per_device_train_batch_size", "batch_size"},
    {"batch", "batch_size"}, {"global_batch_size", "batch_tokens"}, {"tokens_per_batch", "batch_tokens"},
    {"gradient_accumulation_steps", "batch_tokens"}, {"grad_accum", "batch_tokens"},
    {"max_grad_norm", "grad_clip"}, {"gradient_clipping", "grad_clip"}, {"clip_grad", "grad_clip"},
    {"clip_grad_norm", "grad_clip"}, {"clip_norm", "grad_clip"}, {"warmup", "warmup_steps"},
    {"num_warmup_steps", "warmup_steps"}, {"warmup_iters", "warmup_steps"}, {"max_iters", "max_steps"},
    {"train_steps", "max_steps"}, {"total_steps", "max_steps"}, {"num_train_steps", "max_steps"},
    {"max_train_steps", "max_steps"}, {"steps", "max_steps"}, {"adam_beta1", "beta1"}, {"adam_beta2", "beta2"},
    {"adam_epsilon", "adam_eps"}, {"eps", "adam_eps"}, {"epsilon", "adam_eps"}, {"wd", "weight_decay"},
    {"output_dir", "out_dir"}, {"save_dir", "out_dir"}, {"checkpoint_dir", "out_dir"}, {"ckpt_dir", "out_dir"},
    {"random_seed", "seed"}, {"num_threads", "threads"}, {"n_threads", "threads"}, {"omp_num_threads", "threads"},
    {"dtype", "precision"}, {"mixed_precision", "precision"}, {"tie_word_embeddings", "share_emb"},
    {"tie_embeddings", "share_emb"}, {"tied_embeddings", "share_emb"}, {"rope_theta", "rope_base"},
    {"layer_norm_eps", "norm_eps"}, {"rms_norm_eps", "norm_eps"}, {"layer_norm_epsilon", "norm_eps"},
    {"attn_dropout", "attention_dropout"}, {"attention_probs_dropout_prob", "attention_dropout"},
    {"attn_pdrop", "attention_dropout"}, {"resid_pdrop", "dropout"}, {"embd_pdrop", "dropout"},
    {"hidden_dropout_prob", "hidden_dropout"}, {"save_every", "ckpt_every"}, {"save_steps", "ckpt_every"},
    {"checkpoint_every", "ckpt_every"}, {"save_interval", "ckpt_every"}, {"eval_interval", "eval_every"},
    {"eval_steps", "eval_every"}, {"eval_iters", "eval_batches"}, {"log_interval", "log_every"},
    {"logging_steps", "log_every"}, {"save_total_limit", "ckpt_keep"}, {"keep_checkpoints", "ckpt_keep"},
    {"resume_from_checkpoint", "resume"}, {"init_checkpoint", "init_from"}, {"pretrained", "init_from"},
    {"train_file", "train_data"}, {"train_path", "train_data"}, {"data_path", "train_data"},
    {"val_file", "val_data"}, {"valid_data", "val_data"}, {"eval_data", "val_data"},
    {"tokenizer_path", "tokenizer"}, {"tokenizer_model", "tokenizer"}, {"qk_dim", "z_dim"},
    {"v_dim", "value_dim"}, {"chunk_len", "chunk_size"}, {"ema_dim", "cema_ndim"}, {"ndim", "cema_ndim"},
    {"norm_groups", "norm_num_groups"}, {"num_groups", "norm_num_groups"}, {"max_length", "max_new_tokens"},
    {"max_tokens", "max_new_tokens"}, {"topk", "top_k"}, {"topp", "top_p"}, {"temp", "temperature"},
};
#define NALIASES ((int)(sizeof(ALIASES) / sizeof(ALIASES[0])))

/* The key an unknown name most likely means, or NULL when nothing is close: an alias from another
 * framework (exactly or within a small edit distance), our key up to case and '-'/'.' for '_', the
 * nearest key by edit distance, or a key that contains the name (e.g. "layers" -> "n_layers"). A guess
 * further than about a third of the name's length is not offered. */
static const char *closest_key(const char *name) {
    char norm[64];
    size_t n = 0;
    for (; name[n] && n + 1 < sizeof norm; n++) {
        char ch = (char)tolower((unsigned char)name[n]);
        norm[n] = ch == '-' || ch == '.' ? '_' : ch;
    }
    norm[n] = 0;
    for (int i = 0; i < NALIASES; i++)
        if (!strcmp(norm, ALIASES[i].alias)) return ALIASES[i].key;
    const char *best = NULL;
    int bestd = INT_MAX;
    for (int i = 0; i < NKEYS; i++) {
        int d = edit_distance(norm, KEYS[i].name);
        /* A key that contains the typed name (e.g. "layers" -> "n_layers") is a better guess than one that
         * is merely short. */
        if (n >= 3 && strstr(KEYS[i].name, norm)) d = MG_MIN(d, 2);
        if (d < bestd) bestd = d, best = KEYS[i].name;
    }
    for (int i = 0; i < NALIASES; i++) {
        int d = edit_distance(norm, ALIASES[i].alias);
        if (d < bestd) bestd = d, best = ALIASES[i].key;
    }
    int limit = MG_MAX(2, (int)n / 3);
    return bestd <= limit ? best : NULL;
}

static const char *range_text(Range r) {
    switch (r) {
    case R_NONNEG: return "must be >= 0";
    case R_POS: return "must be > 0";
    case R_PROB: return "must be in [0, 1)";
    case R_UNIT: return "must be in [0, 1]";
    case R_UNIT_POS: return "must be in (0, 1]";
    case R_GE_M1: return "must be >= -1";
    case R_ANY: break;
    }
    return "";
}

static int in_range(Range r, double x) {
    switch (r) {
    case R_ANY: return 1;
    case R_NONNEG: return x >= 0;
    case R_POS: return x > 0;
    case R_PROB: return x >= 0 && x < 1;
    case R_UNIT: return x >= 0 && x <= 1;
    case R_UNIT_POS: return x > 0 && x <= 1;
    case R_GE_M1: return x >= -1;
    }
    return 1;
}

static int choice_ok(const KeyDef *k, const char *v) {
    const char *p = k->choices;
    size_t n = strlen(v);
    while (*p) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, v, n)) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

/* "a|b|c" -> "a, b, c" */
static const char *choices_list(const KeyDef *k, char *buf, size_t n) {
    size_t j = 0;
    for (const char *p = k->choices; *p && j + 3 < n; p++) {
        if (*p == '|') {
            buf[j++] = ',';
            buf[j++] = ' ';
        } else {
            buf[j++] = *p;
        }
    }
    buf[j] = 0;
    return buf;
}

static int parse_int64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!*s || isspace((unsigned char)*s)) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end) return 0;
    if (errno == ERANGE || v < lo || v > hi) return -1;
    *out = v;
    return 1;
}

/* Set key k from text value s; `where` prefixes error messages ("file:line" or "command line"). */
static int set_value(MgConfig *c, const KeyDef *k, const char *s, const char *where, char *err, size_t errlen) {
    char *dst = (char *)c + k->offset;
    if (k->type != T_STRING && !*s)
        return mg_errf(err, errlen, "%s: %s: missing value (write %s = <value>)", where, k->name, k->name);
    switch (k->type) {
    case T_INT:
    case T_INT64: {
        int64_t v;
        int r = k->type == T_INT ? parse_int64(s, INT_MIN, INT_MAX, &v) : parse_int64(s, INT64_MIN, INT64_MAX, &v);
        if (r == 0)
            return mg_errf(err, errlen, "%s: %s: malformed integer '%s' (expected a whole number such as 12)", where,
                        k->name, s);
        if (r < 0)
            return mg_errf(err, errlen, "%s: %s: integer '%s' is too large for this key (at most %s)", where, k->name,
                        s, k->type == T_INT ? "2147483647" : "9223372036854775807");
        if (!in_range(k->range, (double)v))
            return mg_errf(err, errlen, "%s: %s: %s is out of range: %s", where, k->name, s, range_text(k->range));
        if (key_max(k->name) > 0 && (double)v > key_max(k->name)) {
            char b[48];
            bound_text(key_max(k->name), b, sizeof b);
            return mg_errf(err, errlen, "%s: %s: %s is out of range: at most %s (docs/config.md lists every bound)",
                           where, k->name, s, b);
        }
        if (k->type == T_INT) {
            int iv = (int)v;
            memcpy(dst, &iv, sizeof(iv));
        } else {
            memcpy(dst, &v, sizeof(v));
        }
        return 0;
    }
    case T_UINT64: {
        char *end;
        errno = 0;
        if (!*s || *s == '-' || *s == '+' || isspace((unsigned char)*s))
            return mg_errf(err, errlen, "%s: %s: malformed unsigned integer '%s' (expected a whole number >= 0)",
                        where, k->name, s);
        unsigned long long v = strtoull(s, &end, 10);
        if (*end)
            return mg_errf(err, errlen, "%s: %s: malformed unsigned integer '%s' (expected a whole number >= 0)",
                        where, k->name, s);
        if (errno == ERANGE)
            return mg_errf(err, errlen, "%s: %s: '%s' is too large (at most 18446744073709551615)", where, k->name, s);
        uint64_t u = v;
        memcpy(dst, &u, sizeof(u));
        return 0;
    }
    case T_DOUBLE: {
        char *end;
        errno = 0;
        if (isspace((unsigned char)*s))
            return mg_errf(err, errlen, "%s: %s: malformed number '%s'", where, k->name, s);
        double v = strtod(s, &end);
        if (*end || end == s)
            return mg_errf(err, errlen, "%s: %s: malformed number '%s' (expected e.g. 0.1 or 3e-4)", where, k->name, s);
        if (!isfinite(v))
            return mg_errf(err, errlen, "%s: %s: '%s' is not a finite number", where, k->name, s);
        if (!in_range(k->range, v))
            return mg_errf(err, errlen, "%s: %s: %s is out of range: %s", where, k->name, s, range_text(k->range));
        if (key_max(k->name) > 0 && v > key_max(k->name)) {
            char b[48];
            bound_text(key_max(k->name), b, sizeof b);
            return mg_errf(err, errlen, "%s: %s: %s is out of range: at most %s (docs/config.md lists every bound)",
                           where, k->name, s, b);
        }
        memcpy(dst, &v, sizeof(v));
        return 0;
    }
    case T_BOOL: {
        static const char *const T[] = {"true", "1", "yes"}, *const Fv[] = {"false", "0", "no"};
        int v = -1;
        for (int i = 0; i < 3; i++) {
            if (!strcasecmp(s, T[i])) v = 1;
            if (!strcasecmp(s, Fv[i])) v = 0;
        }
        if (v < 0)
            return mg_errf(err, errlen, "%s: %s: '%s' is not a bool (use true/false, 1/0 or yes/no)", where, k->name, s);
        memcpy(dst, &v, sizeof(v));
        return 0;
    }
    case T_CHOICE:
    case T_STRING: {
        if (k->type == T_CHOICE && !choice_ok(k, s)) {
            char buf[256];
            return mg_errf(err, errlen, "%s: %s: '%s' is not one of: %s", where, k->name, s,
                        choices_list(k, buf, sizeof(buf)));
        }
        size_t n = strlen(s);
        if (n >= k->size)
            return mg_errf(err, errlen, "%s: %s: value is %zu characters long, the limit is %zu", where, k->name, n,
                        k->size - 1);
        for (size_t i = 0; i < n; i++)
            if (s[i] == '\n' || s[i] == '\r')
                return mg_errf(err, errlen, "%s: %s: value contains a line break", where, k->name);
        /* Zero-fill the whole buffer so that two configs with equal values compare equal byte for byte. */
        memset(dst, 0, k->size);
        memcpy(dst, s, n);
        return 0;
    }
    }
    return mg_errf(err, errlen, "%s: %s: internal error (unknown key type)", where, k->name);
}

void mg_config_defaults(MgConfig *c) {
    memset(c, 0, sizeof(*c));
    char err[512];
    for (int i = 0; i < NKEYS; i++) {
        int r = set_value(c, &KEYS[i], KEYS[i].def, "default", err, sizeof(err));
        MG_CHECK(r == 0, "internal error in the key table: %s", err);
    }
}

/* The error message for a name that is not a key. */
static int unknown_key(const char *name, const char *where, char *err, size_t errlen) {
    const char *guess = closest_key(name);
    if (!guess)
        return mg_errf(err, errlen, "%s: unknown key '%s' (no key is close to it; `megalodon info --help` lists every key)",
                       where, name);
    return mg_errf(err, errlen, "%s: unknown key '%s' (did you mean '%s'? `megalodon info --help` lists every key)",
                where, name, guess);
}

int mg_config_set(MgConfig *c, const char *key, const char *value, const char *origin, char *err, size_t errlen) {
    const KeyDef *k = find_key(key);
    if (!k) return unknown_key(key, origin, err, errlen);
    return set_value(c, k, value, origin, err, errlen);
}

/* Parse one value: quoted ("..." with \" and \\ escapes, or '...' literal) or bare up to a '#' comment.
 * Writes the value into out (NUL-terminated); returns 0, or -1 with a message. */
static int parse_value(const char *p, char *out, size_t outlen, const char *where, const char *key, char *err,
                       size_t errlen) {
    size_t j = 0;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '"' || *p == '\'') {
        char q = *p++;
        for (;; p++) {
            if (!*p) return mg_errf(err, errlen, "%s: %s: unterminated %c-quoted value", where, key, q);
            if (*p == q) break;
            char ch = *p;
            if (q == '"' && *p == '\\' && (p[1] == '"' || p[1] == '\\')) ch = *++p;
            if (j + 1 >= outlen) return mg_errf(err, errlen, "%s: %s: value too long", where, key);
            out[j++] = ch;
        }
        p++;
        while (*p == ' ' || *p == '\t') p++;
        if (*p && *p != '#')
            return mg_errf(err, errlen, "%s: %s: unexpected text after the closing quote: '%s'", where, key, p);
    } else {
        const char *e = strchr(p, '#');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
        if (n + 1 >= outlen) return mg_errf(err, errlen, "%s: %s: value too long", where, key);
        memcpy(out, p, n);
        j = n;
    }
    out[j] = 0;
    return 0;
}

int mg_config_load_text(MgConfig *c, const char *text, const char *origin, char *err, size_t errlen) {
    int first_line[sizeof(KEYS) / sizeof(KEYS[0])] = {0}; /* duplicate detection: line where each key was set */
    char line[4 * MG_PATH_MAX], value[2 * MG_PATH_MAX], where[MG_PATH_MAX + 32];
    const char *p = text;
    for (int lineno = 1; *p; lineno++) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        snprintf(where, sizeof(where), "%s:%d", origin, lineno);
        if (n >= sizeof(line))
            return mg_errf(err, errlen, "%s: line too long (%zu characters; a line holds at most %zu)", where, n,
                           sizeof(line) - 1);
        memcpy(line, p, n);
        line[n] = 0;
        p = e ? e + 1 : p + n;
        if (n && line[n - 1] == '\r') line[--n] = 0;

        char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        char *hash = strchr(s, '#');
        if (!eq || (hash && hash < eq)) {
            if (hash) *hash = 0;
            size_t m = strlen(s);
            while (m && (s[m - 1] == ' ' || s[m - 1] == '\t')) s[--m] = 0;
            return mg_errf(err, errlen, "%s: missing '=' in '%s' (write key = value)", where, s);
        }
        char *k = s, *ke = eq;
        while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t')) ke--;
        *ke = 0;
        if (!*k) return mg_errf(err, errlen, "%s: missing key before '='", where);
        for (char *q = k; *q; q++)
            if (!(isalnum((unsigned char)*q) || *q == '_'))
                return mg_errf(err, errlen, "%s: malformed key '%s' (keys are letters, digits and '_')", where, k);
        const KeyDef *kd = find_key(k);
        if (!kd) return unknown_key(k, where, err, errlen);
        int idx = (int)(kd - KEYS);
        if (first_line[idx])
            return mg_errf(err, errlen, "%s: duplicate key '%s' (already set on line %d)", where, k, first_line[idx]);
        first_line[idx] = lineno;
        if (parse_value(eq + 1, value, sizeof(value), where, k, err, errlen)) return -1;
        if (set_value(c, kd, value, where, err, errlen)) return -1;
    }
    return 0;
}

/* A config file is a few kilobytes; anything beyond 1 MiB is not one (e.g. a data file given by mistake). */
#define MG_CONFIG_FILE_MAX (1u << 20)

int mg_config_load_file(MgConfig *c, const char *path, char *err, size_t errlen) {
    char *buf;
    size_t n;
    if (mg_read_regular_file(path, "config file", MG_CONFIG_FILE_MAX, &buf, &n, err, errlen)) return -1;
    if (strlen(buf) != n) {
        free(buf);
        return mg_errf(err, errlen, "config file '%s' contains a NUL byte (is it a text file?)", path);
    }
    int r = mg_config_load_text(c, buf, path, err, errlen);
    free(buf);
    return r;
}

/* ---- printing --------------------------------------------------------------------------------------- */

/* Shortest text that reads back as exactly the same double: integers up to 2^53 as plain digits, anything
 * else the shortest %.Ng (N <= 17) that round-trips, with the exponent tidied ("1e-05" -> "1e-5"). */
static void format_double(double v, char *buf, size_t n) {
    if (v == floor(v) && fabs(v) < 9007199254740992.0 && !(v == 0 && signbit(v))) {
        snprintf(buf, n, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    char *e = strchr(buf, 'e');
    if (e) {
        char *src = e + 1, *dst = e + 1;
        if (*src == '+') src++;
        else if (*src == '-') *dst++ = *src++;
        while (*src == '0' && src[1]) src++;
        memmove(dst, src, strlen(src) + 1);
    }
}

/* The value of key k as config text (strings quoted and escaped). */
static void format_value(const MgConfig *c, const KeyDef *k, char *buf, size_t n) {
    const char *src = (const char *)c + k->offset;
    switch (k->type) {
    case T_INT: {
        int v;
        memcpy(&v, src, sizeof(v));
        snprintf(buf, n, "%d", v);
        break;
    }
    case T_INT64: {
        int64_t v;
        memcpy(&v, src, sizeof(v));
        snprintf(buf, n, "%" PRId64, v);
        break;
    }
    case T_UINT64: {
        uint64_t v;
        memcpy(&v, src, sizeof(v));
        snprintf(buf, n, "%" PRIu64, v);
        break;
    }
    case T_DOUBLE: {
        double v;
        memcpy(&v, src, sizeof(v));
        format_double(v, buf, n);
        break;
    }
    case T_BOOL: {
        int v;
        memcpy(&v, src, sizeof(v));
        snprintf(buf, n, "%s", v ? "true" : "false");
        break;
    }
    case T_CHOICE: snprintf(buf, n, "%.*s", (int)k->size, src); break;
    case T_STRING: {
        size_t j = 0;
        buf[j++] = '"';
        for (size_t i = 0; i < k->size && src[i] && j + 3 < n; i++) {
            if (src[i] == '"' || src[i] == '\\') buf[j++] = '\\';
            buf[j++] = src[i];
        }
        buf[j++] = '"';
        buf[j] = 0;
        break;
    }
    }
}

/* Appends to a growing string. */
typedef struct {
    char *s;
    size_t len, cap;
} Buf;

static void buf_printf(Buf *b, const char *fmt, ...) MG_PRINTF(2, 3);
static void buf_printf(Buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->len + (size_t)need + 1 > b->cap) {
        b->cap = MG_MAX(b->cap * 2, b->len + (size_t)need + 1 + 1024);
        b->s = mg_realloc(b->s, b->cap);
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)need + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)need;
}

char *mg_config_to_text(const MgConfig *c) {
    Buf b = {0};
    char val[3 * MG_PATH_MAX];
    for (int g = 0; g < NGROUPS; g++) {
        buf_printf(&b, "%s# ---- %s ----\n", g ? "\n" : "", GROUPS[g]);
        for (int i = 0; i < NKEYS; i++) {
            if (strcmp(KEYS[i].group, GROUPS[g])) continue;
            format_value(c, &KEYS[i], val, sizeof(val));
            buf_printf(&b, "%-18s = %s\n", KEYS[i].name, val);
        }
    }
    if (!b.s) b.s = mg_strdup("");
    return b.s;
}

void mg_config_print(const MgConfig *c, FILE *f) {
    char *t = mg_config_to_text(c);
    fputs(t, f);
    free(t);
}

static const char *type_name(const KeyDef *k, char *buf, size_t n) {
    switch (k->type) {
    case T_INT: return "INT";
    case T_INT64: return "INT";
    case T_UINT64: return "UINT";
    case T_DOUBLE: return "NUM";
    case T_BOOL: return "BOOL";
    case T_STRING: return "STR";
    case T_CHOICE: snprintf(buf, n, "%s", k->choices); return buf;
    }
    return "?";
}

void mg_config_usage(FILE *f) {
    char tb[128], def[3 * MG_PATH_MAX], lhs[160];
    MgConfig d;
    mg_config_defaults(&d);
    for (int g = 0; g < NGROUPS; g++) {
        fprintf(f, "%s%s:\n", g ? "\n" : "", GROUPS[g]);
        for (int i = 0; i < NKEYS; i++) {
            const KeyDef *k = &KEYS[i];
            if (strcmp(k->group, GROUPS[g])) continue;
            format_value(&d, k, def, sizeof(def));
            snprintf(lhs, sizeof(lhs), "--%s %s", k->name, type_name(k, tb, sizeof(tb)));
            fprintf(f, "  %-38s %s (default %s)\n", lhs, k->help, def);
        }
    }
}

/* ---- command line ----------------------------------------------------------------------------------- */

static void args_usage(FILE *f, const char *cmd, const char *const *extra_keys) {
    fprintf(f, "usage: megalodon %s [--config FILE] [--KEY VALUE | --KEY=VALUE ...]\n\n", cmd);
    fprintf(f, "--config FILE is read first (key = value lines, # comments); every --KEY VALUE then overrides\n"
               "in the order given.\n");
    if (extra_keys && extra_keys[0]) {
        fprintf(f, "\noptions of `%s`:", cmd);
        for (int i = 0; extra_keys[i]; i++) fprintf(f, " --%s VALUE", extra_keys[i]);
        fprintf(f, "\n");
    }
    fprintf(f, "\nconfiguration keys:\n");
    mg_config_usage(f);
}

void mg_config_from_args(MgConfig *c, int argc, char **argv, const char *const *extra_keys,
                         const char **extra_values) {
    const char *cmd = argc > 0 ? argv[0] : "megalodon";
    int nextra = 0;
    if (extra_keys)
        while (extra_keys[nextra]) nextra++;
    for (int i = 0; i < nextra; i++) extra_values[i] = NULL;
    char err[2 * MG_PATH_MAX + 512];

    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            args_usage(stdout, cmd, extra_keys);
            exit(0);
        }

    /* --config first, wherever it appears. */
    const char *config_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *path = NULL;
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2))
                mg_fatal("--config needs a value: --config FILE (see `megalodon %s --help`)", cmd);
            path = argv[i + 1];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            path = argv[i] + 9;
        }
        if (path) {
            if (config_path) mg_fatal("--config given twice ('%s' and '%s'); give one config file", config_path, path);
            config_path = path;
        }
    }
    if (config_path && mg_config_load_file(c, config_path, err, sizeof(err))) mg_fatal("%s", err);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) || !a[2])
            mg_fatal("unexpected argument '%s': options are --KEY VALUE (see `megalodon %s --help`)", a, cmd);
        char name[128];
        const char *value;
        const char *eq = strchr(a + 2, '=');
        size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (n >= sizeof(name)) mg_fatal("unknown option '%.60s...'", a);
        memcpy(name, a + 2, n);
        name[n] = 0;
        /* --model-dim works as well as --model_dim. */
        for (char *q = name; *q; q++)
            if (*q == '-') *q = '_';
        if (eq) {
            value = eq + 1;
        } else {
            if (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2))
                mg_fatal("option --%s needs a value: --%s VALUE (or --%s=VALUE)", name, name, name);
            value = argv[++i];
        }
        if (!strcmp(name, "config")) continue;
        int handled = 0;
        for (int e = 0; e < nextra; e++)
            if (!strcmp(name, extra_keys[e])) {
                extra_values[e] = value;
                handled = 1;
            }
        if (handled) continue;
        if (mg_config_set(c, name, value, "command line", err, sizeof(err))) mg_fatal("%s", err);
    }
}

/* ---- cross-key validation --------------------------------------------------------------------------- */

typedef struct {
    char *err;
    size_t errlen, used;
    int count;
} Problems;

static void problem(Problems *p, const char *fmt, ...) MG_PRINTF(2, 3);
static void problem(Problems *p, const char *fmt, ...) {
    p->count++;
    if (!p->err || p->used + 8 >= p->errlen) return;
    int w = snprintf(p->err + p->used, p->errlen - p->used, "%s", p->count == 1 ? "" : "\n  ");
    if (w > 0) p->used = MG_MIN(p->used + (size_t)w, p->errlen - 1);
    va_list ap;
    va_start(ap, fmt);
    w = vsnprintf(p->err + p->used, p->errlen - p->used, fmt, ap);
    va_end(ap);
    if (w > 0) p->used = MG_MIN(p->used + (size_t)w, p->errlen - 1);
}

/* Divisors of n nearest to `near` (one below or equal, one above), for suggestions. */
static void near_divisors(int n, int near, int *below, int *above) {
    *below = 1;
    *above = n;
    for (int x = MG_MIN(near, n); x >= 1; x--)
        if (n % x == 0) {
            *below = x;
            break;
        }
    for (int x = MG_MAX(near, 1); x <= n; x++)
        if (n % x == 0) {
            *above = x;
            break;
        }
}

/* The checks of Megalodon-only keys (TimestepNorm groups, CEMA order, the shared Q/K and value widths, chunks). */
static void megalodon_checks(const MgConfig *c, Problems *p) {
    const int H = c->num_heads;
    if (c->cema_ndim < 1 || c->cema_ndim > 64)
        problem(p, "cema_ndim = %d is out of range: the CEMA order N must be in [1, 64] (the official configs use 16)",
                c->cema_ndim);
    if (c->model_dim > 0 && c->norm_num_groups > 0 && c->model_dim % c->norm_num_groups) {
        int lo, hi;
        near_divisors(c->model_dim, c->norm_num_groups, &lo, &hi);
        problem(p,
                "model_dim %d is not divisible by norm_num_groups %d (TimestepNorm splits d into G equal groups): "
                "set norm_num_groups to a divisor of %d, e.g. %d or %d",
                c->model_dim, c->norm_num_groups, c->model_dim, lo, hi);
    }
    if (H > 0 && c->z_dim > 0 && c->z_dim % H)
        problem(p, "z_dim %d is not divisible by num_heads %d: set z_dim to a multiple of %d (e.g. %d or %lld) or change num_heads",
                c->z_dim, H, H, MG_MAX(H, c->z_dim / H * H), (long long)(c->z_dim / H + 1) * H);
    if (H > 0 && c->value_dim > 0 && c->value_dim % H)
        problem(p, "value_dim %d is not divisible by num_heads %d: set value_dim to a multiple of %d (e.g. %d or %lld) or change num_heads",
                c->value_dim, H, H, MG_MAX(H, c->value_dim / H * H), (long long)(c->value_dim / H + 1) * H);
    if (H > 0 && c->z_dim > 0 && c->z_dim % H == 0 && (c->z_dim / H) % 2)
        problem(p, "the per-head Q/K width z_dim/num_heads = %d/%d = %d is odd; RoPE rotates pairs of coordinates, so it "
                "must be even: e.g. z_dim %lld",
                c->z_dim, H, c->z_dim / H, (long long)c->z_dim + H);
    if (c->seq_len > 0 && c->chunk_size > 0 && c->seq_len >= c->chunk_size && c->seq_len % c->chunk_size) {
        int s = c->seq_len, ch = c->chunk_size;
        int below = 1;
        for (int x = ch; x >= 1; x--)
            if (s % x == 0) {
                below = x;
                break;
            }
        problem(p,
                "seq_len %d does not fit chunk_size %d: attention works on whole chunks, so seq_len must be smaller "
                "than chunk_size (one partial chunk) or a multiple of it: e.g. seq_len %d, %d or anything below %d "
                "(or chunk_size %d, a divisor of %d)",
                s, ch, s / ch * ch, (int)MG_MIN((int64_t)(s / ch + 1) * ch, INT_MAX), ch, below, s);
    }
}

const char *mg_config_precision(const MgConfig *c) {
    if (!strcmp(c->precision, "auto")) return strncmp(c->device, "cuda", 4) ? "fp32" : "bf16";
    return c->precision;
}

MgDtype mg_config_compute_dtype(const MgConfig *c) { return !strcmp(mg_config_precision(c), "bf16") ? MG_BF16 : MG_F32; }

int mg_config_attention_span(const MgConfig *c) {
    return !strcmp(c->arch, "llama") || c->seq_len < c->chunk_size ? c->seq_len : c->chunk_size;
}

int mg_config_validate(const MgConfig *c, char *err, size_t errlen) {
    Problems P = {err, errlen, 0, 0};
    if (err && errlen) err[0] = 0;

    /* Every key's own range (the parser checks these too; structs filled in code get them here). */
    for (int i = 0; i < NKEYS; i++) {
        const KeyDef *k = &KEYS[i];
        const char *src = (const char *)c + k->offset;
        char val[3 * MG_PATH_MAX];
        if (k->type == T_CHOICE) {
            char s[MG_NAME_MAX + 1] = {0}, buf[256];
            memcpy(s, src, MG_MIN(k->size, sizeof(s) - 1));
            if (!choice_ok(k, s)) problem(&P, "%s '%s' is not one of: %s", k->name, s, choices_list(k, buf, sizeof(buf)));
            continue;
        }
        if (k->range == R_ANY) continue;
        double x = 0;
        if (k->type == T_INT) {
            int v;
            memcpy(&v, src, sizeof(v));
            x = v;
        } else if (k->type == T_INT64) {
            int64_t v;
            memcpy(&v, src, sizeof(v));
            x = (double)v;
        } else if (k->type == T_DOUBLE) {
            memcpy(&x, src, sizeof(x));
        } else {
            continue;
        }
        if (!in_range(k->range, x) || (k->type == T_DOUBLE && !isfinite(x))) {
            format_value(c, k, val, sizeof(val));
            problem(&P, "%s = %s is out of range: %s", k->name, val, range_text(k->range));
        } else if (key_max(k->name) > 0 && x > key_max(k->name)) {
            char b[48];
            format_value(c, k, val, sizeof(val));
            bound_text(key_max(k->name), b, sizeof b);
            problem(&P, "%s = %s is out of range: at most %s", k->name, val, b);
        }
    }

    if (c->vocab_size <= 0) problem(&P, "set vocab_size (32000 for the Llama-2 tokenizer)");
    /* Llama (src/model/llama.c) has no z_dim, value_dim, CEMA, TimestepNorm groups or chunks: those keys are
     * Megalodon's and ignored for it, so they are neither needed nor checked. */
    const int llama = !strcmp(c->arch, "llama");
    struct {
        const char *name;
        long long v;
        int megalodon_only;
    } need[] = {{"n_layers", c->n_layers, 0},           {"model_dim", c->model_dim, 0},
                {"num_heads", c->num_heads, 0},         {"z_dim", c->z_dim, 1},
                {"value_dim", c->value_dim, 1},         {"ffn_hidden_dim", c->ffn_hidden_dim, 0},
                {"norm_num_groups", c->norm_num_groups, 1}, {"chunk_size", c->chunk_size, 1},
                {"seq_len", c->seq_len, 0},             {"batch_size", c->batch_size, 0},
                {"max_steps", c->max_steps, 0}};
    /* One message for all unset sizes: a config without any model gets one line, not ten. */
    char unset[512] = "";
    int nunset = 0;
    const char *last_unset = "";
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
        if (need[i].v <= 0 && !(llama && need[i].megalodon_only)) {
            size_t u = strlen(unset);
            snprintf(unset + u, sizeof(unset) - u, "%s%s", nunset ? ", " : "", need[i].name);
            last_unset = need[i].name;
            nunset++;
        }
    if (nunset == 1)
        problem(&P, "set %s (e.g. in a config file from configs/, or --%s VALUE)", unset, last_unset);
    else if (nunset > 1)
        problem(&P, "set %s (e.g. in a config file from configs/, or --KEY VALUE)", unset);

    const int H = c->num_heads;
    if (llama) {
        const int kv = c->num_kv_heads > 0 ? c->num_kv_heads : H;
        if (H > 0 && c->model_dim > 0 && c->model_dim % H)
            problem(&P, "model_dim %d is not divisible by num_heads %d: with arch = llama the head width is "
                    "model_dim / num_heads; set model_dim to a multiple of %d (e.g. %d or %lld) or change num_heads",
                    c->model_dim, H, H, MG_MAX(H, c->model_dim / H * H), (long long)(c->model_dim / H + 1) * H);
        else if (H > 0 && c->model_dim > 0 && (c->model_dim / H) % 2)
            problem(&P, "the head width model_dim/num_heads = %d/%d = %d is odd; RoPE rotates pairs of coordinates, "
                    "so it must be even: e.g. model_dim %lld",
                    c->model_dim, H, c->model_dim / H, (long long)c->model_dim + H);
        if (H > 0 && (kv > H || H % kv)) {
            int lo, hi;
            near_divisors(H, MG_MIN(kv, H), &lo, &hi);
            problem(&P, "num_kv_heads %d does not divide num_heads %d: grouped-query attention shares each key/value "
                    "head among num_heads / num_kv_heads query heads; use a divisor of %d, e.g. %d or %d (0 = %d, "
                    "plain multi-head attention)",
                    kv, H, H, lo, hi, H);
        }
        if (c->dropout > 0 || c->attention_dropout > 0 || c->hidden_dropout > 0)
            problem(&P, "arch = llama has no dropout (Llama-2 trains without it): set dropout, attention_dropout and "
                    "hidden_dropout to 0");
    } else if (c->num_kv_heads > 0 && c->num_kv_heads != H) {
        problem(&P, "num_kv_heads = %d is a llama key (grouped-query attention); megalodon has one shared Q/K "
                "projection: leave num_kv_heads at 0",
                c->num_kv_heads);
    }
    if (!llama) megalodon_checks(c, &P);
    if (c->batch_tokens > 0 && c->batch_size > 0 && c->seq_len > 0) {
        int64_t mb = (int64_t)c->batch_size * c->seq_len;
        if (c->batch_tokens % mb) {
            int64_t lo = c->batch_tokens / mb * mb, hi = lo + mb;
            if (lo == 0) lo = mb;
            problem(&P,
                    "batch_tokens %" PRId64 " is not a multiple of batch_size*seq_len = %d*%d = %" PRId64
                    " (one micro-batch): use e.g. batch_tokens %" PRId64 " or %" PRId64
                    ", or 0 for one micro-batch per step",
                    c->batch_tokens, c->batch_size, c->seq_len, mb, lo, hi);
        }
    }
    /* Products of keys: tokens per micro-batch, micro-batches per step, tokens of the whole run. */
    if (c->batch_size > 0 && c->seq_len > 0) {
        const int64_t mb = (int64_t)c->batch_size * c->seq_len; /* < 2^31 after the per-key bounds */
        if (mb > MG_MAX_MICRO_TOKENS)
            problem(&P,
                    "batch_size x seq_len = %d x %d = %" PRId64 " tokens per micro-batch is more than %lld: lower "
                    "batch_size or seq_len (use batch_tokens for larger steps)",
                    c->batch_size, c->seq_len, mb, MG_MAX_MICRO_TOKENS);
        else if (c->batch_tokens / mb > MG_MAX_MICRO_BATCHES)
            problem(&P,
                    "batch_tokens %" PRId64 " is %" PRId64 " micro-batches of batch_size x seq_len = %" PRId64
                    " tokens, more than %lld: lower batch_tokens or raise batch_size",
                    c->batch_tokens, c->batch_tokens / mb, mb, MG_MAX_MICRO_BATCHES);
        else if (c->max_steps > 0) {
            int64_t step_tokens = c->batch_tokens > 0 ? c->batch_tokens : mb, run;
            if (__builtin_mul_overflow(step_tokens, c->max_steps, &run) || run > MG_MAX_RUN_TOKENS)
                problem(&P,
                        "max_steps x tokens per step = %" PRId64 " x %" PRId64 " overflows the token counters "
                        "(at most 2^62): lower max_steps or batch_tokens",
                        c->max_steps, step_tokens);
        }
    }
    if (c->max_steps > 0 && c->warmup_steps > c->max_steps)
        problem(&P, "warmup_steps %" PRId64 " exceeds max_steps %" PRId64 ": lower warmup_steps or raise max_steps",
                c->warmup_steps, c->max_steps);
    if (c->max_steps > 0 && c->rewarm_steps > c->max_steps)
        problem(&P, "rewarm_steps %" PRId64 " exceeds max_steps %" PRId64 ": lower rewarm_steps or raise max_steps",
                c->rewarm_steps, c->max_steps);
    if (c->init_optimizer && !c->init_from[0])
        problem(&P, "init_optimizer = true needs init_from (the checkpoint whose weights and AdamW moments to load)");

    if (P.count == 0) return 0;
    if (P.count > 1 && err && errlen) {
        /* Prefix a count so that a long list reads as one message. */
        char *copy = mg_strdup(err);
        snprintf(err, errlen, "%d problems in the configuration:\n  %s", P.count, copy);
        free(copy);
    }
    return -1;
}
