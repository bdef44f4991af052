/* The MPI worker of tests/test_dist.sh (not a test_* program: it needs mpirun): one training step of a
 * small Megalodon split over the process grid, against one process running the whole global batch, on
 * every rank. With P ranks and --sp S (DP = P / S): each DP group takes every DP-th sequence, each SP
 * rank its slice of two or more attention chunks, with the state-scan hooks (parallel/sp.h) and dropout
 * on; the gradients are reduce-scattered into ZeRO-1 shards (parallel/shard.h), AdamW updates each
 * shard and the shards are all-gathered: the same pieces `megalodon train` uses (src/train/dist.c, step.c).
 * For every scan algorithm, in float32 and float64:
 *   loss         sum over ranks = the one-process loss (f32 1e-6, f64 1e-12 relative)
 *   gradients    each rank's reduced shard = the one-process gradient, per tensor normwise (f32 1e-5,
 *                f64 1e-12)
 *   bucketed     the reduce-scatter started bucket by bucket from the backward's grads_ready (what train
 *                runs) = the reduce-scatter of the finished arena, bitwise
 *   ZeRO-1 step  the all-gathered weights after AdamW on each shard are bitwise those of one AdamW over
 *                the whole arena with the same reduced gradient (AdamW is element-wise; comparing with
 *                the one-process gradient instead would measure AdamW's conditioning: its first step
 *                is nearly sign(g), so gradients near 0 that differ in the last bits move far)
 * Results are combined with an all-reduce; rank 0 prints one PASS/FAIL line per check.
 *
 *   mpi_train_check --sp S [--span K] [--attention gather|alltoall] [--scan-backward]
 * --span K: attention chunks of K slices (K ranks share each chunk: the attention-across-ranks path);
 * default: two chunks per rank. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../parallel/shard.h"
#include "../../parallel/sp.h"
#include "../../src/hash.h"
#include "../../src/train/dist.h"

enum { B = 2, SLICE = 32, VOCAB = 512 };
static int SPAN; /* 0: chunks of SLICE / 2 (two per rank); K: chunks of K slices */
static MgSpAttn ATTN = MG_SP_ATTN_AUTO;
static int SCAN_BWD; /* --scan-backward: state gradients by reverse scans */
static MgTransport *W;
static int n_pass, n_fail;

static void check(int ok, const char *name, const char *detail) {
    double v = ok ? 0 : 1;
    mg_tp_all_reduce_sum(W, &v, 1);
    if (v == 0) {
        n_pass++;
        if (W->rank == 0) printf("PASS %s (%d ranks: %s)\n", name, W->size, detail);
    } else {
        n_fail++;
        if (W->rank == 0) printf("FAIL %s: failed on %.0f of %d ranks (%s)\n", name, v, W->size, detail);
    }
    fflush(stdout);
}

static void tiny(MgConfig *c, int L, int chunk) {
    mg_config_defaults(c);
    c->vocab_size = VOCAB;
    c->n_layers = 2;
    c->model_dim = 64;
    c->num_heads = 2;
    c->z_dim = 32;
    c->value_dim = 64;
    c->ffn_hidden_dim = 128;
    c->cema_ndim = 4;
    c->norm_num_groups = 4;
    c->chunk_size = chunk;
    c->swiglu = 1;
    c->seq_len = L;
    c->batch_size = B;
    c->dropout = c->hidden_dropout = c->attention_dropout = 0.1;
}

static void to_double(const MgBackend *be, const void *p, int64_t n, double *out) {
    for (int64_t i = 0; i < n; i++) out[i] = be->dtype == MG_F64 ? ((const double *)p)[i] : ((const float *)p)[i];
}

/* Max over ranks of a[i], element-wise (every rank gets the same). */
static void max_over_ranks(double *a, int n) {
    double *all = malloc(sizeof(double) * (size_t)n * (size_t)W->size);
    mg_tp_all_gather(W, a, all, sizeof(double) * (size_t)n);
    for (int i = 0; i < n; i++)
        for (int r = 0; r < W->size; r++) a[i] = fmax(a[i], all[(size_t)r * n + i]);
    free(all);
}

/* Worst per-tensor normwise difference of the shard [off, off + len) of `got` against `ref`, over all
 * ranks' shards (max |diff| and max |ref| per tensor are combined across ranks first). */
static double shard_diff(const MgParamTable *t, const double *got, const double *ref, int64_t off, int64_t len,
                         const char **worst) {
    double *v = calloc((size_t)(2 * t->count), sizeof(double));
    for (int i = 0; i < t->count; i++) {
        const int64_t a = MG_MAX(off, t->params[i].offset), e = MG_MIN(off + len, t->params[i].offset + t->params[i].numel);
        for (int64_t j = a; j < e; j++) {
            v[2 * i] = fmax(v[2 * i], fabs(got[j - off] - ref[j]));
            v[2 * i + 1] = fmax(v[2 * i + 1], fabs(ref[j]));
        }
    }
    max_over_ranks(v, 2 * t->count);
    double w = 0;
    for (int i = 0; i < t->count; i++) {
        const double e = v[2 * i + 1] > 0 ? v[2 * i] / v[2 * i + 1] : v[2 * i];
        if (!(e <= w)) {
            w = e;
            *worst = t->params[i].name;
        }
    }
    free(v);
    return w;
}

static void run(const char *backend, int S, MgScanAlgo algo) {
    const int P = W->size, DP = P / S, L = S * SLICE, Bg = DP * B;
    MgConfig cfg;
    tiny(&cfg, L, SPAN ? SPAN * SLICE : SLICE / 2);
    if (SPAN == 4) cfg.num_heads = 4; /* the all-to-all path needs the chunk's ranks to divide the heads */
    char err[512];
    MgBackendOptions bo = {.threads = 1};
    MgBackend *be = mg_backend_create(backend, 0, &bo, err, sizeof err);
    if (!be) mg_fatal("%s", err);
    const int f64 = be->dtype == MG_F64;
    const double tol_loss = f64 ? 1e-12 : 1e-6, tol_grad = f64 ? 1e-12 : 1e-5;

    /* the global batch, the same on every rank */
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)Bg * L), *tgt = malloc(sizeof(int32_t) * (size_t)Bg * L);
    for (int64_t i = 0; i < (int64_t)Bg * L; i++) {
        tok[i] = (int32_t)(mg_splitmix64(0x70c + (uint64_t)i) % VOCAB);
        tgt[i] = (int32_t)(mg_splitmix64(0x7a6 + (uint64_t)i) % VOCAB);
    }
    tgt[3] = -1;
    const double scale = 1.0 / (double)((int64_t)Bg * L - 1);
    const uint64_t seed = 0xd5;

    /* one process, the whole batch (every rank computes it) */
    MgModel *ref = mg_model_create(&cfg, be);
    mg_model_init_weights(ref, 11);
    const MgParamTable *pt = mg_model_params_table(ref);
    const int64_t n = pt->total;
    mg_model_zero_grads(ref);
    MgPassArgs ra = {.tokens = tok, .targets = tgt, .B = Bg, .L = L, .grad_scale = scale,
                     .opts = {.seed = seed, .training = 1, .seq_len = L}};
    const double loss_ref = mg_model_step(ref, &ra, NULL);
    double *g_ref = malloc(sizeof(double) * (size_t)n);
    to_double(be, mg_model_grads(ref), n, g_ref);

    /* the grid */
    MgDist d;
    memset(&d, 0, sizeof d);
    d.world = W;
    d.P = P;
    d.rank = W->rank;
    if (mg_grid_create(W, S, &d.grid, err, sizeof err)) mg_fatal("%s", err);
    d.configured = 1;
    d.sp = S > 1 ? mg_sp_create(d.grid.sp_group, be, algo, 3) : NULL;
    if (d.sp) mg_sp_set_attention(d.sp, ATTN);
    if (d.sp) mg_sp_set_scan_backward(d.sp, SCAN_BWD);
    d.be = be;

    /* this rank's rows (every DP-th sequence) and columns (its slice) */
    const int Ls = L / S;
    int32_t *rows_t = malloc(sizeof(int32_t) * (size_t)B * L), *rows_g = malloc(sizeof(int32_t) * (size_t)B * L);
    for (int b = 0; b < B; b++) {
        memcpy(rows_t + (size_t)b * L, tok + (size_t)(b * DP + d.grid.dp) * L, sizeof(int32_t) * (size_t)L);
        memcpy(rows_g + (size_t)b * L, tgt + (size_t)(b * DP + d.grid.dp) * L, sizeof(int32_t) * (size_t)L);
    }
    int32_t *lt = malloc(sizeof(int32_t) * (size_t)B * Ls), *lg = malloc(sizeof(int32_t) * (size_t)B * Ls);
    mg_dist_slice(&d, &cfg, B, rows_t, lt);
    mg_dist_slice(&d, &cfg, B, rows_g, lg);
    MgModel *m = mg_model_create(&cfg, be);
    mg_model_init_weights(m, 11);
    mg_model_zero_grads(m);
    const int64_t n_m = mg_model_params_table(m)->total;
    d.reducer = mg_shard_reducer_create(W, be->dtype, n_m);
    d.host_grads = malloc((size_t)n_m * mg_dtype_size(be->dtype));
    MgPassArgs a = {.tokens = lt, .targets = lg, .B = B, .L = Ls, .grad_scale = scale,
                    .opts = mg_dist_opts(&d, &cfg, seed, 1, 0, B), .hooks = mg_dist_last_hooks(&d, mg_model_grads(m))};
    double loss = mg_model_step(m, &a, NULL);
    mg_dist_pass_done(&d);
    mg_tp_all_reduce_sum(W, &loss, 1);

    char name[200], detail[200];
    char an[64];
    snprintf(an, sizeof an, "%s%s%s", S > 1 ? mg_scan_algo_name(algo) : "no",
             !SPAN ? "" : ATTN == MG_SP_ATTN_ALLTOALL ? "_chunk_alltoall" : "_chunk_gather", SCAN_BWD ? "_fwd_bwd" : "");
    snprintf(name, sizeof name, "%s_dp%d_sp%d_%s_scan_loss", backend, DP, S, an);
    const double el = fabs(loss - loss_ref) / fabs(loss_ref);
    snprintf(detail, sizeof detail, "relative error %.3e, tolerance %.0e", el, tol_loss);
    check(el <= tol_loss, name, detail);

    /* gradients: reduce-scatter into the shards */
    const size_t es = mg_dtype_size(be->dtype);
    int64_t off, len;
    mg_shard_range(n, P, W->rank, &off, &len);
    void *host = malloc((size_t)n * es);
    memcpy(host, mg_model_grads(m), (size_t)n * es);
    mg_reduce_scatter_sum(W, be->dtype, host, n, host);
    void *bucketed = malloc((size_t)MG_MAX(len, 1) * es);
    mg_dist_reduce_finish(&d, bucketed);
    snprintf(name, sizeof name, "%s_dp%d_sp%d_%s_scan_bucketed_reduction", backend, DP, S, an);
    snprintf(detail, sizeof detail, "shard of %lld values bitwise equal to the reduce-scatter after the backward",
             (long long)len);
    check(!memcmp(bucketed, host, (size_t)len * es), name, detail);
    free(bucketed);
    double *g = malloc(sizeof(double) * (size_t)MG_MAX(len, 1));
    to_double(be, host, len, g);
    const char *worst = "-";
    const double eg = shard_diff(pt, g, g_ref, off, len, &worst);
    snprintf(name, sizeof name, "%s_dp%d_sp%d_%s_scan_gradients", backend, DP, S, an);
    snprintf(detail, sizeof detail, "worst %s %.3e, tolerance %.0e", worst, eg, tol_grad);
    check(eg <= tol_grad, name, detail);

    /* ZeRO-1: AdamW on the shard, all-gather the weights; the reference: the whole reduced gradient (the
     * shards all-gathered) in the one-process model, one AdamW over the whole arena */
    float *m0 = be->alloc(be, sizeof(float) * (size_t)n), *v0 = be->alloc(be, sizeof(float) * (size_t)n);
    memcpy((char *)mg_model_grads(ref) + (size_t)off * es, host, (size_t)len * es);
    mg_all_gather_shards(W, es, mg_model_grads(ref), n);
    mg_model_masters_changed(ref); /* no-op for fp32; the f64 copy from the same initial masters */
    MgAdamWArgs aw = {.n = n, .param = mg_model_masters(ref), .grad = mg_model_grads(ref),
                      .param_out = mg_model_has_separate_masters(ref) ? mg_model_params(ref) : NULL, .m = m0, .v = v0,
                      .lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .grad_scale = 1.0,
                      .step = 1};
    be->adamw_update(be, &aw);
    float *ms = be->alloc(be, sizeof(float) * (size_t)MG_MAX(len, 1)), *vs = be->alloc(be, sizeof(float) * (size_t)MG_MAX(len, 1));
    void *gs = be->alloc(be, (size_t)MG_MAX(len, 1) * es);
    memcpy(gs, host, (size_t)len * es);
    float *masters = mg_model_masters(m);
    if (len > 0) {
        MgAdamWArgs sw = aw;
        sw.n = len;
        sw.param = masters + off;
        sw.grad = gs;
        sw.param_out = mg_model_has_separate_masters(m) ? (char *)mg_model_params(m) + (size_t)off * es : NULL;
        sw.m = ms;
        sw.v = vs;
        be->adamw_update(be, &sw);
    }
    mg_all_gather_shards(W, sizeof(float), masters, n);
    const int sep = mg_model_has_separate_masters(m);
    if (sep) mg_all_gather_shards(W, es, mg_model_params(m), n);
    int same = !memcmp(masters, mg_model_masters(ref), sizeof(float) * (size_t)n);
    if (sep) same &= !memcmp(mg_model_params(m), mg_model_params(ref), (size_t)n * es);
    snprintf(name, sizeof name, "%s_dp%d_sp%d_%s_scan_zero1_step", backend, DP, S, an);
    snprintf(detail, sizeof detail, "shard %lld of %lld values; masters%s bitwise", (long long)len, (long long)n,
             sep ? " and compute copy" : "");
    check(same, name, detail);

    be->free(be, ms);
    be->free(be, vs);
    be->free(be, gs);
    be->free(be, m0);
    be->free(be, v0);
    free(host);
    free(g);
    free(g_ref);
    free(rows_t);
    free(rows_g);
    free(lt);
    free(lg);
    free(tok);
    free(tgt);
    mg_sp_free(d.sp);
    mg_shard_reducer_free(d.reducer);
    free(d.host_grads);
    mg_grid_destroy(&d.grid);
    mg_model_free(m);
    mg_model_free(ref);
    mg_backend_destroy(be);
}

int main(int argc, char **argv) {
    int S = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--sp") && i + 1 < argc) S = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--span") && i + 1 < argc) SPAN = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--scan-backward")) SCAN_BWD = 1;
        else if (!strcmp(argv[i], "--attention") && i + 1 < argc) {
            if (mg_sp_attention_parse(argv[++i], &ATTN)) {
                fprintf(stderr, "--attention: auto, gather or alltoall\n");
                return 2;
            }
        }
        else {
            fprintf(stderr, "usage: mpi_train_check --sp S [--span K]\n");
            return 2;
        }
    }
    char err[512];
    W = mg_transport_mpi_init(&argc, &argv, err, sizeof err);
    if (!W) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    if (S < 1 || W->size % S) mg_fatal("--sp %d must divide the %d ranks", S, W->size);
    if (SPAN < 0 || (SPAN && S % SPAN)) mg_fatal("--span %d must divide --sp %d", SPAN, S);
    const char *backends[] = {"cpu-f32", "cpu-f64"};
    for (int k = 0; k < 2; k++)
        for (int algo = 0; algo < (S > 1 && !SPAN ? MG_SCAN_N_ALGOS : 1); algo++) run(backends[k], S, (MgScanAlgo)algo);
    if (W->rank == 0) printf("# mpi_train_check: %d passed, %d failed\n", n_pass, n_fail);
    const int rc = n_fail ? 1 : 0;
    mg_transport_mpi_finalize(W);
    return rc;
}
