/* The trainer's distributed runtime (dist.h, docs/parallelism.md). */
#define _POSIX_C_SOURCE 200809L
#include "dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../parallel/devcomm.h"
#include "../../parallel/shard.h"
#include "../common.h"
#include "../launch.h"
#include "../params.h"

/* A fatal error on one rank ends every rank. Before the run is configured, most errors (a bad key, a
 * missing file) are found by every rank alike: the other ranks wait 5 s so that rank 0's abort,
 * which prints the message once, ends them first; an error only one rank sees is still printed by it. */
static void dist_error_hook(const char *msg, const char *file, int line, void *ctx) {
    (void)file;
    (void)line;
    MgDist *d = ctx;
    fflush(stdout);
    if (!d->is_root && !d->configured) { /* 5 s, whatever signals mpirun's kill sequence sends meanwhile */
        struct timespec ts = {5, 0}, rem;
        while (nanosleep(&ts, &rem) != 0) ts = rem;
    }
    mg_tp_abort_all(d->world, "%s", msg);
}

void mg_dist_start(MgDist *d, int *argc, char ***argv) {
    memset(d, 0, sizeof *d);
    MgLaunch l;
    if (mg_launch_detect(&l) && mg_transport_mpi_available()) {
        char err[512];
        d->world = mg_transport_mpi_init(argc, argv, err, sizeof err);
        if (!d->world) mg_fatal("%s", err);
        d->mpi = 1;
    } else {
        d->world = mg_transport_self();
    }
    d->P = d->world->size;
    d->rank = d->world->rank;
    d->is_root = d->rank == 0;
    if (d->P > 1) {
        mg_set_error_hook(dist_error_hook, d, NULL);
        if (!d->is_root && !freopen("/dev/null", "w", stdout)) mg_fatal("rank %d: cannot silence stdout", d->rank);
    }
}

MG_NORETURN void mg_dist_fail(MgDist *d, const char *msg) {
    if (d->is_root) fprintf(stderr, "error: %s\n", msg);
    fflush(stdout);
    fflush(stderr);
    if (d->mpi) mg_transport_mpi_finalize(d->world);
    exit(1);
}

/* Do P, sp, seq_len, chunk_size and the batch fit together? Every rank computes the same answer. */
static int check_layout(const MgConfig *c, int P, char *err, size_t n) {
    int dp;
    if (mg_grid_shape(P, c->sp, &dp, err, n)) return -1;
    const int S = c->sp, L = c->seq_len, ch = c->chunk_size;
    if (S > 1) {
        if (L % S && !strcmp(c->arch, "llama"))
            return mg_errf(err, n,
                           "seq_len %d cannot be cut into sp = %d equal slices: use a seq_len that is a multiple of "
                           "sp, or another sp",
                           L, S);
        if (L % S)
            return mg_errf(err, n,
                           "seq_len %d cannot be cut into sp = %d equal slices: use a seq_len that is a multiple of "
                           "sp x chunk_size = %lld, or another sp",
                           L, S, (long long)S * ch);
        /* the slice; the attention chunk's length (llama: the whole sequence) */
        const int Ls = L / S, cg = mg_config_attention_span(c);
        if (Ls >= cg ? Ls % cg != 0 : cg % Ls != 0)
            return mg_errf(err, n,
                           "with sp = %d each rank holds %d tokens of every sequence, which neither is a whole number "
                           "of attention chunks of %d nor cuts one into equal parts: use an sp for which seq_len / sp "
                           "is a multiple or a divisor of %d",
                           S, Ls, cg, cg);
        if (!strcmp(c->sp_layout, "zigzag")) {
            if (strcmp(c->arch, "llama"))
                return mg_errf(err, n,
                               "sp_layout zigzag gives each rank two separate blocks of every sequence, which arch %s "
                               "cannot run: its CEMA and TimestepNorm carry state along the sequence, so a rank "
                               "holding two pieces would need two state passes per layer; use sp_layout contiguous "
                               "(sp_attention auto balances the attention with all-to-all when the heads allow)",
                               c->arch);
            if (L % (2 * S))
                return mg_errf(err, n,
                               "sp_layout zigzag cuts seq_len %d into 2 x sp = %d equal blocks, which it does not "
                               "divide: use a seq_len that is a multiple of %d",
                               L, 2 * S, 2 * S);
            if (strcmp(c->sp_attention, "ring") && strcmp(c->sp_attention, "auto"))
                return mg_errf(err, n,
                               "sp_layout zigzag runs the attention by the ring only: use sp_attention ring or auto "
                               "(not %s)",
                               c->sp_attention);
        }
        if (Ls < cg && !strcmp(c->sp_attention, "alltoall") && c->num_heads % (cg / Ls))
            return mg_errf(err, n,
                           "sp_attention alltoall splits the %d attention heads over the %d ranks that share each "
                           "chunk, which do not divide them: use sp_attention ring (or auto), or an sp with "
                           "%d / (seq_len / sp) dividing %d",
                           c->num_heads, cg / Ls, cg, c->num_heads);
    }
    const int64_t micro = (int64_t)c->batch_size * L;
    const int64_t global_micro = c->batch_tokens > 0 ? c->batch_tokens / micro : dp;
    if (global_micro % dp)
        return mg_errf(err, n,
                       "batch_tokens = %lld is %lld micro-batches of batch_size x seq_len = %lld tokens, which the %d "
                       "data-parallel groups (P / sp = %d / %d) cannot share equally: use a batch_tokens that is a "
                       "multiple of %lld (data-parallel groups x batch_size x seq_len)",
                       (long long)c->batch_tokens, (long long)global_micro, (long long)micro, dp, P, S,
                       (long long)dp * micro);
    return 0;
}

static char *config_text(const MgConfig *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) mg_fatal("cannot format the config for the agreement check");
    mg_config_print(c, f);
    fclose(f);
    return buf;
}

void mg_dist_configure(MgDist *d, const MgConfig *c, const MgBackend *be, int64_t n_params) {
    char err[2048];
    if (check_layout(c, d->P, err, sizeof err)) mg_dist_fail(d, err);
    char *text = config_text(c);
    int bad = mg_grid_agree(d->world, text, err, sizeof err);
    free(text);
    if (bad) mg_dist_fail(d, err);
    if (mg_grid_create(d->world, c->sp, &d->grid, err, sizeof err)) mg_dist_fail(d, err);
    if (c->sp > 1) {
        MgScanAlgo algo;
        if (mg_scan_algo_parse(c->sp_scan, &algo)) mg_fatal("unknown sp_scan '%s'", c->sp_scan);
        d->sp = mg_sp_create(d->grid.sp_group, be, algo, c->sp_scan_pieces);
        MgSpAttn attn;
        if (mg_sp_attention_parse(c->sp_attention, &attn)) mg_fatal("unknown sp_attention '%s'", c->sp_attention);
        mg_sp_set_attention(d->sp, attn);
        mg_sp_set_scan_backward(d->sp, !strcmp(c->sp_backward, "scan"));
    }
    if (d->P > 1) {
        const int64_t total = n_params;
        const size_t es = mg_dtype_size(be->dtype);
        mg_shard_range(total, d->P, d->rank, &d->shard_off, &d->shard_len);
        d->gshard = be->alloc(be, (size_t)MG_MAX(d->shard_len, 1) * es);
        d->be = be;
        const char *kind = c->dp_comm;
        if (!strcmp(kind, "auto")) kind = !strcmp(c->device, "cuda") && mg_devcomm_nccl_built() ? "nccl" : "host";
        if (strcmp(kind, "host") != 0) {
            d->dc = mg_devcomm_create(kind, d->world, be, err, sizeof err);
            if (!d->dc) mg_fatal("%s", err);
            if (be->dtype != MG_F32) {
                d->g32 = be->alloc(be, sizeof(float) * (size_t)total);
                d->gs32 = be->alloc(be, sizeof(float) * (size_t)MG_MAX(d->shard_len, 1));
            }
        } else {
            d->host_grads = mg_malloc((size_t)total * es);
            d->reducer = mg_shard_reducer_create(d->world, be->dtype, total);
        }
    }
    d->configured = 1;
}

void mg_dist_end(MgDist *d) {
    if (d->g32) d->be->free(d->be, d->g32);
    if (d->gs32) d->be->free(d->be, d->gs32);
    mg_devcomm_free(d->dc);
    mg_shard_reducer_free(d->reducer);
    mg_sp_free(d->sp);
    free(d->host_grads);
    if (d->configured) mg_grid_destroy(&d->grid);
    if (d->mpi) mg_transport_mpi_finalize(d->world);
    else if (d->world) mg_tp_free(d->world);
    memset(d, 0, sizeof *d);
}

int mg_dist_local_len(const MgDist *d, const MgConfig *c) { return c->seq_len / (d->configured ? d->grid.sp_size : 1); }

static int zigzag(const MgDist *d, const MgConfig *c) {
    return d->configured && d->grid.sp_size > 1 && !strcmp(c->sp_layout, "zigzag");
}

void mg_dist_slice(const MgDist *d, const MgConfig *c, int B, const int32_t *full, int32_t *out) {
    const int L = c->seq_len, Ls = mg_dist_local_len(d, c), t0 = d->configured ? d->grid.sp * Ls : 0;
    if (zigzag(d, c)) { /* blocks sp and 2 S - 1 - sp of Ls / 2 tokens */
        const int h = Ls / 2, S = d->grid.sp_size, r = d->grid.sp;
        for (int b = 0; b < B; b++) {
            memcpy(out + (size_t)b * Ls, full + (size_t)b * L + (size_t)r * h, sizeof(int32_t) * (size_t)h);
            memcpy(out + (size_t)b * Ls + h, full + (size_t)b * L + (size_t)(2 * S - 1 - r) * h, sizeof(int32_t) * (size_t)h);
        }
        return;
    }
    for (int b = 0; b < B; b++) memcpy(out + (size_t)b * Ls, full + (size_t)b * L + t0, sizeof(int32_t) * (size_t)Ls);
}

MgForwardOpts mg_dist_opts(const MgDist *d, const MgConfig *c, uint64_t seed, int training, int micro, int B) {
    const int DP = d->configured ? d->grid.dp_size : 1, dp = d->configured ? d->grid.dp : 0;
    const int Ls = mg_dist_local_len(d, c), sp = d->configured ? d->grid.sp : 0;
    /* the loader gives DP group dp the step's sequences dp, dp + DP, ... */
    MgForwardOpts o = {.seed = seed, .training = training, .seq0 = (int64_t)micro * B * DP + dp,
                       .seq_stride = DP, .pos0 = (int64_t)sp * Ls, .seq_len = c->seq_len};
    if (zigzag(d, c)) {
        o.pos0 = (int64_t)sp * (Ls / 2);
        o.pos1 = (int64_t)(2 * d->grid.sp_size - 1 - sp) * (Ls / 2);
    }
    return o;
}

const MgModelHooks *mg_dist_hooks(const MgDist *d) { return d->sp ? mg_sp_hooks(d->sp) : NULL; }

/* A bucket of gradients is final: stage it to the host and start its part of the reduce-scatter. */
static void on_grads_ready(void *ctx, int64_t off, int64_t count) {
    MgDist *d = ctx;
    const size_t es = mg_dtype_size(d->be->dtype);
    d->be->to_host(d->be, (char *)d->host_grads + (size_t)off * es, (const char *)d->grads + (size_t)off * es,
                   (size_t)count * es);
    mg_shard_reducer_ready(d->reducer, d->host_grads, off, count);
}

const MgModelHooks *mg_dist_last_hooks(MgDist *d, void *grads) {
    if (d->P == 1) return NULL;
    if (d->dc) return mg_dist_hooks(d); /* the device collectives run after the backward, on its stream */
    d->last_hooks = d->sp ? *mg_sp_hooks(d->sp) : (MgModelHooks){0};
    d->last_hooks.grads_ready = on_grads_ready;
    d->last_hooks.grads_ctx = d;
    d->grads = grads;
    return &d->last_hooks;
}

void mg_dist_reduce_finish(MgDist *d, void *out) { mg_shard_reducer_finish(d->reducer, out); }

void mg_dist_pass_done(MgDist *d) {
    if (d->sp) mg_sp_finish(d->sp);
}

void mg_dist_report(MgDist *d, int64_t steps, int n_layers, FILE *f) {
    if (!d->sp || steps <= 0) return;
    const MgSpStats s = mg_sp_stats(d->sp);
    const int P = d->P;
    double mine[4] = {s.fwd_seconds, s.bwd_seconds, (double)s.bytes_sent, (double)(s.fwd_scans + s.bwd_messages)};
    double *all = mg_malloc(sizeof mine * (size_t)P);
    mg_tp_all_gather(d->world, mine, all, sizeof mine);
    double sum[4] = {0}, mx[2] = {0};
    for (int r = 0; r < P; r++) {
        for (int k = 0; k < 4; k++) sum[k] += all[4 * r + k];
        for (int k = 0; k < 2; k++) mx[k] = all[4 * r + k] > mx[k] ? all[4 * r + k] : mx[k];
    }
    free(all);
    if (d->is_root) {
        const double st = (double)steps;
        fprintf(f,
                "sequence parallel exchange (sp_scan %s): forward %.4f s/step (max %.4f), backward %.4f s/step (max "
                "%.4f), mean over %d ranks; %.0f bytes of state summaries and gradients and %.1f exchanges per step and rank (%d layers + final "
                "norm)\n",
                mg_scan_algo_name(mg_sp_algo(d->sp)), sum[0] / P / st, mx[0] / st, sum[1] / P / st, mx[1] / st, P,
                sum[2] / P / st, sum[3] / P / st, n_layers);
        fflush(f);
    }
}

void mg_dist_sum(MgDist *d, double *v, int n) {
    if (d->P > 1) mg_tp_all_reduce_sum(d->world, v, (size_t)n);
}
