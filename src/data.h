/* Token shards (the on-disk format written by `megalodon prepare`) and the training/validation loader.
 *
 * ---- Shards ----------------------------------------------------------------------------------------
 * A shard is one little-endian file (byte layout in docs/data.md): a 64-byte header (magic "MGSHARD\0",
 * format version, vocabulary size, token width 2 or 4 bytes, BOS id, token count, document count,
 * tokenizer fingerprint), the tokens, zero padding to a multiple of 8 bytes, then one uint64 start offset
 * per document (every document starts with BOS). Opening a shard checks everything (magic, version, that
 * the size matches the header, the vocabulary size, every token id < vocabulary size, the document
 * offsets) and fails with a message that names the file, what is wrong and what to do.
 *
 * ---- Loader ----------------------------------------------------------------------------------------
 * spec: a shard file, a directory of *.bin shards (used in name order, concatenated into one token
 * stream), or a weighted mixture "dirA:0.95,dirB:0.05": comma-separated sources, each optionally
 * followed by ":weight" (default 1; weights must be > 0 and are normalised to sum to 1). A path may
 * contain ':' (only a final ":number" is read as a weight) but not ','.
 *
 * Each source is cut into non-overlapping windows of seq_len + 1 tokens with stride seq_len (window w
 * covers tokens [w*seq_len, w*seq_len + seq_len]; inputs = its first seq_len tokens, targets = the last
 * seq_len), so every token after the first is a target exactly once per epoch. Windows may cross
 * document and shard boundaries (documents are separated by their BOS token).
 *
 * Training order: global sample g (g = 0, 1, 2, ...) picks its source with a counter-based hash of
 * (seed, g) against the cumulative weights, then takes that source's next window: the c-th window a
 * source hands out is window perm_e(c mod W) of epoch e = c / W, where perm_e is a seeded bijection of
 * [0, W) (a Feistel network keyed by (seed, source, epoch)), so each epoch visits every window once in a
 * fresh order. Data parallel: one call of mg_loader_next(B) consumes B rounds of dp_size global samples;
 * rank r gets samples r, r + dp_size, ... . Ranks never overlap, their union is the dp_size = 1 stream,
 * and the cursor (samples consumed, windows taken per source) is the same on every rank, so a checkpoint
 * saved on any rank resumes any dp_size exactly where it stopped.
 *
 * Validation (mg_loader_open_eval): no shuffling, no weights. The windows of all sources in spec order
 * form one fixed list; rank r takes windows r, r + dp_size, ...; the list wraps around when it ends.
 * mg_loader_rewind restarts it, so every validation pass sees the same sequences.
 *
 * Not thread-safe; one loader per rank. All functions that can fail return NULL/-1 and write a message
 * to err (if err is not NULL). */
#ifndef MG_DATA_H
#define MG_DATA_H

#include <stddef.h>
#include <stdint.h>

/* ---- shards ------------------------------------------------------------------------------------ */

#define MG_SHARD_MAGIC "MGSHARD" /* 8 bytes on disk: these 7 and a NUL */
#define MG_SHARD_VERSION 1u
#define MG_SHARD_HEADER_BYTES 64

typedef struct {
    uint32_t version;
    uint32_t vocab_size;
    uint32_t token_bytes; /* 2 when vocab_size <= 65536, else 4 */
    int32_t bos_id;       /* -1: documents are not marked */
    uint64_t n_tokens;
    uint64_t n_docs;
    uint64_t tokenizer_fingerprint; /* 0 = unknown */
} MgShardInfo;

/* Expected file size for a header. */
uint64_t mg_shard_file_bytes(uint64_t n_tokens, uint64_t n_docs, uint32_t token_bytes);

/* Write a shard (atomically: PATH.tmp, then rename). doc_starts: ascending token offsets, the first 0;
 * tokens[doc_starts[i]] must be bos_id (if bos_id >= 0); every token must be in [0, vocab_size).
 * Returns 0, or -1 with a message. */
int mg_shard_write(const char *path, const int32_t *tokens, uint64_t n_tokens, const uint64_t *doc_starts,
                   uint64_t n_docs, int vocab_size, int bos_id, uint64_t tokenizer_fingerprint, char *err,
                   size_t errlen);

typedef struct {
    char *path;
    MgShardInfo info;
    const unsigned char *tokens; /* n_tokens x token_bytes, little-endian */
    const uint64_t *doc_starts;  /* n_docs */
    void *map;
    size_t map_bytes;
} MgShard;

/* Read only the header (checks magic, version and file size). */
int mg_shard_read_info(const char *path, MgShardInfo *info, char *err, size_t errlen);
/* Map and validate a whole shard. expect_vocab > 0 requires header vocab_size == expect_vocab. */
int mg_shard_open(MgShard *s, const char *path, int expect_vocab, char *err, size_t errlen);
void mg_shard_close(MgShard *s);
static inline int32_t mg_shard_token(const MgShard *s, uint64_t i) {
    const unsigned char *p = s->tokens + i * s->info.token_bytes;
    return s->info.token_bytes == 2 ? (int32_t)(p[0] | p[1] << 8)
                                    : (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                                (uint32_t)p[3] << 24);
}

/* ---- loader ------------------------------------------------------------------------------------ */

typedef struct MgLoader MgLoader;

/* Training loader (shuffled, weighted, data-parallel). vocab_size > 0 must equal every shard's. */
MgLoader *mg_loader_open(const char *spec, int vocab_size, int seq_len, uint64_t seed, int dp_rank, int dp_size,
                         char *err, size_t errlen);
/* Validation loader: the same fixed sequence of windows on every pass (see above). */
MgLoader *mg_loader_open_eval(const char *spec, int vocab_size, int seq_len, int dp_rank, int dp_size, char *err,
                              size_t errlen);
void mg_loader_close(MgLoader *l);

/* Fill B sequences of this rank: inputs and targets are B x seq_len, row-major (either may be NULL). */
void mg_loader_next(MgLoader *l, int B, int32_t *inputs, int32_t *targets);
/* Back to the first sample (eval: the start of the fixed list; train: sample 0, epoch 0). */
void mg_loader_rewind(MgLoader *l);

/* Cursor for checkpoints: an int64 array of mg_loader_state_len(l) values. state_set refuses (-1, message)
 * a state made for another spec (number of sources, weights, windows per source), seq_len or seed. */
int mg_loader_state_len(const MgLoader *l);
void mg_loader_state_get(const MgLoader *l, int64_t *out);
int mg_loader_state_set(MgLoader *l, const int64_t *in, int n, char *err, size_t errlen);
/* The spec with normalised weights, e.g. "data/a:0.95,data/b:0.05" (for logs and checkpoints). */
const char *mg_loader_spec_normalised(const MgLoader *l);

/* Introspection (logging and tests). Counts are global: windows taken by all ranks together. */
int mg_loader_seq_len(const MgLoader *l);
int mg_loader_num_sources(const MgLoader *l);
const char *mg_loader_source_path(const MgLoader *l, int s);
double mg_loader_source_weight(const MgLoader *l, int s);
int64_t mg_loader_source_tokens(const MgLoader *l, int s);
int64_t mg_loader_source_docs(const MgLoader *l, int s);
int64_t mg_loader_source_windows(const MgLoader *l, int s);
int64_t mg_loader_source_count(const MgLoader *l, int s); /* windows drawn so far */
int64_t mg_loader_samples(const MgLoader *l);             /* global samples consumed so far */
int64_t mg_loader_total_windows(const MgLoader *l);       /* sum over sources (eval: one full pass) */

#endif
