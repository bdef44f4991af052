/* Sharded collectives over a flat array of n elements (docs/parallelism.md, "Data parallelism and
 * ZeRO-1"): the array is cut into P contiguous shards, shard r = [r * ceil(n/P), min(n, (r+1) * ceil(n/P)))
 * owned by rank r. The data-parallel gradient reduction is a reduce-scatter into the shards (each rank
 * gets the sum of its shard over every rank, added in rank order, so the bits do not depend on timing
 * and every element is reduced exactly once), the optimizer updates its shard only (ZeRO-1: AdamW
 * moments exist for the shard alone), and an all-gather of the shards gives every rank the updated
 * parameters. Collective over t; every rank passes the same n and dtype. */
#ifndef MG_PARALLEL_SHARD_H
#define MG_PARALLEL_SHARD_H

#include <stdint.h>

#include "transport.h"

/* Rank r's shard of n elements over P ranks (len may be 0 when n < P). */
void mg_shard_range(int64_t n, int P, int r, int64_t *off, int64_t *len);

/* out[0 .. len_r) = sum over ranks q = 0, 1, ..., P-1 (in that order) of q's in[off_r .. off_r + len_r).
 * dtype: MG_F32, MG_F64 or MG_BF16 (host memory; bf16 is summed in float and rounded once). in is not modified. */
void mg_reduce_scatter_sum(MgTransport *t, MgDtype dtype, const void *in, int64_t n, void *out);

/* In place: buf[shard q] receives rank q's buf[shard q], for every q (elements of es bytes). */
void mg_all_gather_shards(MgTransport *t, size_t es, void *buf, int64_t n);

/* The reduce-scatter in pieces, started while the backward pass still runs: each time a range of the
 * array is final on this rank (the model's grads_ready buckets, in the same order on every rank), its parts
 * go to their shards' owners (nonblocking) and this rank's part of every other rank's range is received;
 * finish waits and sums in rank order: the same result as mg_reduce_scatter_sum, bit for bit. Every
 * element must be reported exactly once per round. */
typedef struct MgShardReducer MgShardReducer;
MgShardReducer *mg_shard_reducer_create(MgTransport *t, MgDtype dtype, int64_t n);
/* host: the whole array (host memory; [off, off + len) must stay unchanged until finish). */
void mg_shard_reducer_ready(MgShardReducer *r, const void *host, int64_t off, int64_t len);
/* out: this rank's shard (len_r elements). Resets the reducer for the next round. */
void mg_shard_reducer_finish(MgShardReducer *r, void *out);
int64_t mg_shard_reducer_pending(const MgShardReducer *r); /* elements reported this round */
void mg_shard_reducer_free(MgShardReducer *r);

/* Rank 0 assembles the whole array in root_buf (n elements of es bytes): its own shard from `mine`, the
 * others' received; every other rank sends `mine` (its shard, len_r elements; root_buf unused). */
void mg_gather_shards_to_root(MgTransport *t, size_t es, const void *mine, void *root_buf, int64_t n);

#endif
