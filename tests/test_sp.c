/* Sequence parallelism through the model (parallel/sp.h): P ranks, as threads exchanging over the `local`
 * transport, each run a slice of whole attention chunks of the same sequences with the state-scan hooks;
 * their losses and gradients summed must equal one process running the whole sequences. Every scan
 * algorithm, P = 2, 3, 4 (two chunks per rank), dropout on, in float64 (exactness) and float32 (the
 * training precision, at the tolerances of distributed training: loss 1e-6, gradients 1e-5 relative);
 * and attention across ranks: a chunk spanning 2, 3 or 4 ranks (each rank's queries see the earlier
 * slices' keys and values, whose gradients go back to their ranks) by each path (gather, all-to-all,
 * ring), with DropKey on. */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "../parallel/sp.h"
#include "../src/config.h"
#include "../src/model.h"
#include "test_util.h"

enum { B = 2, CHUNK = 16, PER_RANK = 2 * CHUNK, SEED = 7 };

typedef struct {
    const MgConfig *cfg;
    const char *backend;
    MgTransport *tp;
    MgScanAlgo algo;
    MgSpAttn attn;
    int scan_bwd;
    int pieces, P, L, train;
    const int32_t *tok, *tgt;
    double scale;
    /* results */
    double loss;
    int64_t counted;
    double *grads;
    MgSpStats st;
} Rank;

static MgModel *make_model(const MgConfig *cfg, const char *backend, MgBackend **be_out) {
    char err[512];
    MgBackendOptions o = {.threads = 1};
    MgBackend *be = mg_backend_create(backend, 0, &o, err, sizeof err);
    MG_CHECK(be, "%s", err);
    MgModel *m = mg_model_create(cfg, be);
    mg_model_init_weights(m, SEED);
    *be_out = be;
    return m;
}

static void grads_to_double(MgModel *m, double *out) {
    const MgBackend *be = mg_model_backend(m);
    const int64_t n = mg_model_params_table(m)->total;
    if (be->dtype == MG_F64) {
        be->to_host(be, out, mg_model_grads(m), sizeof(double) * (size_t)n);
    } else {
        float *g = malloc(sizeof(float) * (size_t)n);
        be->to_host(be, g, mg_model_grads(m), sizeof(float) * (size_t)n);
        for (int64_t i = 0; i < n; i++) out[i] = g[i];
        free(g);
    }
}

static int32_t *slice_cols(const int32_t *x, int L, int t0, int len) {
    int32_t *o = malloc(sizeof(int32_t) * (size_t)B * (size_t)len);
    for (int b = 0; b < B; b++) memcpy(o + (size_t)b * len, x + (size_t)b * L + t0, sizeof(int32_t) * (size_t)len);
    return o;
}

static int g_zigzag; /* the zigzag layout (llama): rank r holds blocks r and 2P - 1 - r of L / (2P) tokens */

static MgForwardOpts opts_for(const Rank *r, int pos0) {
    return (MgForwardOpts){.seed = 0x1234, .training = r->train, .seq0 = 0, .pos0 = pos0, .seq_len = r->L};
}

/* rank's share of B x L ids: its slice, or (zigzag) its two blocks one after the other */
static int32_t *rank_cols(const int32_t *x, int L, int P, int rank) {
    if (!g_zigzag) return slice_cols(x, L, rank * (L / P), L / P);
    const int h = L / (2 * P);
    int32_t *a = slice_cols(x, L, rank * h, h), *b = slice_cols(x, L, (2 * P - 1 - rank) * h, h);
    int32_t *o = malloc(sizeof(int32_t) * (size_t)B * 2 * h);
    for (int i = 0; i < B; i++) {
        memcpy(o + (size_t)i * 2 * h, a + (size_t)i * h, sizeof(int32_t) * (size_t)h);
        memcpy(o + (size_t)i * 2 * h + h, b + (size_t)i * h, sizeof(int32_t) * (size_t)h);
    }
    free(a);
    free(b);
    return o;
}

static void *rank_main(void *v) {
    Rank *r = v;
    MgBackend *be;
    MgModel *m = make_model(r->cfg, r->backend, &be);
    const int rank = r->tp->rank, Ls = r->L / r->P;
    int32_t *tok = rank_cols(r->tok, r->L, r->P, rank), *tgt = rank_cols(r->tgt, r->L, r->P, rank);
    MgSp *sp = mg_sp_create(r->tp, be, r->algo, r->pieces);
    mg_sp_set_attention(sp, r->attn);
    mg_sp_set_scan_backward(sp, r->scan_bwd);
    mg_model_zero_grads(m);
    MgPassArgs a = {.tokens = tok, .targets = tgt, .B = B, .L = Ls, .grad_scale = r->scale,
                    .opts = opts_for(r, g_zigzag ? rank * (Ls / 2) : rank * Ls), .hooks = mg_sp_hooks(sp)};
    if (g_zigzag) a.opts.pos1 = (int64_t)(2 * r->P - 1 - rank) * (Ls / 2);
    r->loss = mg_model_step(m, &a, &r->counted);
    mg_sp_finish(sp);
    r->grads = malloc(sizeof(double) * (size_t)mg_model_params_table(m)->total);
    grads_to_double(m, r->grads);
    r->st = mg_sp_stats(sp);
    mg_sp_free(sp);
    free(tok);
    free(tgt);
    mg_model_free(m);
    mg_backend_destroy(be);
    return NULL;
}

/* Worst per-tensor normwise difference (max |a - b| / max |b|). */
static double grads_diff(const MgParamTable *t, const double *a, const double *b, const char **worst) {
    double w = 0.0;
    for (int i = 0; i < t->count; i++) {
        double d = 0.0, s = 0.0;
        for (int64_t j = t->params[i].offset; j < t->params[i].offset + t->params[i].numel; j++) {
            d = fmax(d, fabs(a[j] - b[j]));
            s = fmax(s, fabs(b[j]));
        }
        const double e = s > 0 ? d / s : d;
        if (!(e <= w)) {
            w = e;
            *worst = t->params[i].name;
        }
    }
    return w;
}

static int g_scan_bwd; /* the backward by reverse scans instead of the reverse chain */
static int g_llama = -1; /* >= 0: arch llama with this many key/value heads (0 = every head), no dropout */

static void run_case(const char *backend, int P, MgScanAlgo algo, int chunk, MgSpAttn attn, int heads, double tol_loss,
                     double tol_grad) {
    MgConfig cfg;
    const int L = P * PER_RANK;
    if (g_llama >= 0) { /* the attention spans the whole sequence: a chunk over every rank */
        tu_tiny_llama(&cfg, 512, g_llama);
        cfg.num_heads = heads;
        chunk = L;
    } else {
        tu_tiny_megalodon(&cfg, 512);
        cfg.chunk_size = chunk;
        cfg.num_heads = heads;
        cfg.dropout = cfg.hidden_dropout = cfg.attention_dropout = 0.1;
    }
    cfg.seq_len = L;
    int32_t *tok = malloc(sizeof(int32_t) * B * (size_t)L), *tgt = malloc(sizeof(int32_t) * B * (size_t)L);
    tu_random_ids(tok, (int64_t)B * L, cfg.vocab_size);
    tu_random_ids(tgt, (int64_t)B * L, cfg.vocab_size);
    tgt[5] = -1; /* an ignored target */
    const double scale = 1.0 / (double)(B * L - 1);

    /* one process, the whole sequences */
    MgBackend *be;
    MgModel *m = make_model(&cfg, backend, &be);
    const MgParamTable *pt = mg_model_params_table(m);
    double *g_ref = malloc(sizeof(double) * (size_t)pt->total), *g_sum = calloc((size_t)pt->total, sizeof(double));
    Rank proto = {.cfg = &cfg, .backend = backend, .algo = algo, .attn = attn, .scan_bwd = g_scan_bwd, .pieces = 3, .P = P, .L = L, .train = 1, .tok = tok,
                  .tgt = tgt, .scale = scale};
    mg_model_zero_grads(m);
    MgPassArgs a = {.tokens = tok, .targets = tgt, .B = B, .L = L, .grad_scale = scale, .opts = opts_for(&proto, 0)};
    int64_t n_ref = 0;
    const double loss_ref = mg_model_step(m, &a, &n_ref);
    grads_to_double(m, g_ref);

    /* P ranks */
    MgTransport *tp[8];
    mg_transport_local_create(P, tp);
    Rank r[8];
    pthread_t th[8];
    for (int i = 0; i < P; i++) {
        r[i] = proto;
        r[i].tp = tp[i];
        pthread_create(&th[i], NULL, rank_main, &r[i]);
    }
    double loss = 0.0;
    int64_t n = 0;
    for (int i = 0; i < P; i++) {
        pthread_join(th[i], NULL);
        loss += r[i].loss;
        n += r[i].counted;
        for (int64_t j = 0; j < pt->total; j++) g_sum[j] += r[i].grads[j];
    }
    char name[200], what[96];
    if (g_llama >= 0)
        snprintf(what, sizeof what, "%s, llama (%d heads, %d key/value heads), SP %d (%s)", backend, heads,
                 g_llama ? g_llama : heads, P,
                 g_zigzag ? "zigzag ring" : attn == MG_SP_ATTN_ALLTOALL ? "all-to-all" : attn == MG_SP_ATTN_RING ? "ring" : attn == MG_SP_ATTN_AUTO ? "auto" : "gather");
    else if (chunk > PER_RANK)
        snprintf(what, sizeof what, "%s, SP %d, %s scan, a chunk over %d ranks (%s, %d heads)", backend, P,
                 mg_scan_algo_name(algo), chunk / PER_RANK,
                 attn == MG_SP_ATTN_ALLTOALL ? "all-to-all" : attn == MG_SP_ATTN_RING ? "ring" : attn == MG_SP_ATTN_AUTO ? "auto: ring" : "gather",
                 heads);
    else
        snprintf(what, sizeof what, "%s, SP %d, %s scan%s", backend, P, mg_scan_algo_name(algo),
                 g_scan_bwd ? " forward and backward" : "");
    snprintf(name, sizeof name, "%s: loss = one process", what);
    tu_check_err(name, fabs(loss - loss_ref) / fabs(loss_ref), tol_loss);
    snprintf(name, sizeof name, "%s: targets counted = one process", what);
    tu_check(n == n_ref, name, "%lld vs %lld", (long long)n, (long long)n_ref);
    const char *worst = "?";
    const double e = grads_diff(pt, g_sum, g_ref, &worst);
    snprintf(name, sizeof name, "%s: every gradient = one process (worst: %s)", what, worst);
    tu_check_err(name, e, tol_grad);
    /* traffic: every rank ran one scan per layer and group forward; all but rank 0 sent one gradient
     * message per layer and group backward */
    const int groups = g_llama >= 0 ? 0 : 2 * cfg.n_layers + 1; /* llama carries no state */
    int ok = 1;
    for (int i = 0; i < P; i++)
        ok &= r[i].st.fwd_scans == groups && r[i].st.bwd_messages == (i == 0 && !g_scan_bwd ? 0 : groups);
    snprintf(name, sizeof name, "%s: one scan per layer and state group, one gradient message back", what);
    tu_check(ok, name, "rank 1: %lld scans, %lld messages", (long long)r[1].st.fwd_scans,
             (long long)r[1].st.bwd_messages);
    /* the ring path ran: the j-th rank of a chunk attended to the j earlier blocks per layer, forward and
     * backward (and no other path did) */
    if (chunk > PER_RANK) {
        const int span = chunk / PER_RANK, ring = attn == MG_SP_ATTN_RING || (attn == MG_SP_ATTN_AUTO && heads % span);
        ok = 1;
        for (int i = 0; i < P; i++)
            ok &= r[i].st.ring_blocks == (g_zigzag ? 2 * cfg.n_layers * (P - 1) : ring ? 2 * cfg.n_layers * (i % span) : 0);
        snprintf(name, sizeof name, "%s: ring blocks attended as expected", what);
        tu_check(ok, name, "last rank: %lld blocks (%s)", (long long)r[P - 1].st.ring_blocks, ring ? "ring" : "no ring");
    }
    for (int i = 0; i < P; i++) {
        free(r[i].grads);
        mg_tp_free(tp[i]);
    }
    free(g_ref);
    free(g_sum);
    free(tok);
    free(tgt);
    mg_model_free(m);
    mg_backend_destroy(be);
}

static void test_algo_names(void) {
    MgScanAlgo a;
    int ok = !mg_scan_algo_parse("chain", &a) && a == MG_SCAN_CHAIN && !mg_scan_algo_parse("pipelined", &a) &&
             a == MG_SCAN_PIPELINED && !mg_scan_algo_parse("allgather", &a) && a == MG_SCAN_ALLGATHER &&
             !mg_scan_algo_parse("doubling", &a) && a == MG_SCAN_RECURSIVE_DOUBLING &&
             mg_scan_algo_parse("ring", &a) == -1;
    tu_check(ok, "scan algorithm names parse (and an unknown one is refused)", "%s", "chain pipelined allgather doubling");
}

int main(void) {
    tu_init("test_sp");
    test_algo_names();
    for (int P = 2; P <= 4; P++)
        for (int algo = 0; algo < MG_SCAN_N_ALGOS; algo++) {
            run_case("cpu-f64", P, (MgScanAlgo)algo, CHUNK, MG_SP_ATTN_AUTO, 2, 1e-12, 1e-12);
            run_case("cpu-f32", P, (MgScanAlgo)algo, CHUNK, MG_SP_ATTN_AUTO, 2, 1e-6, 1e-5);
        }
    /* the backward by reverse scans (CEMA adjoint, TimestepNorm statistics' adjoint), every algorithm */
    g_scan_bwd = 1;
    for (int P = 2; P <= 4; P++)
        for (int algo = 0; algo < MG_SCAN_N_ALGOS; algo++) {
            run_case("cpu-f64", P, (MgScanAlgo)algo, CHUNK, MG_SP_ATTN_AUTO, 2, 1e-12, 1e-12);
            run_case("cpu-f32", P, (MgScanAlgo)algo, CHUNK, MG_SP_ATTN_AUTO, 2, 1e-6, 1e-5);
        }
    g_scan_bwd = 0;
    /* llama: no state; its attention over the whole sequence crosses every rank (P, ranks, path, heads;
     * key/value heads: 2 = grouped-query, 0 = one per head) */
    const struct {
        int P;
        MgSpAttn attn;
        int heads, kv;
    } lla[] = {{2, MG_SP_ATTN_RING, 4, 2}, {4, MG_SP_ATTN_RING, 4, 0}, {3, MG_SP_ATTN_AUTO, 4, 2},
               {2, MG_SP_ATTN_ALLTOALL, 4, 2}, {4, MG_SP_ATTN_GATHER, 4, 2}};
    for (size_t i = 0; i < sizeof lla / sizeof lla[0]; i++) {
        g_llama = lla[i].kv;
        run_case("cpu-f64", lla[i].P, MG_SCAN_CHAIN, 0, lla[i].attn, lla[i].heads, 1e-12, 1e-12);
        run_case("cpu-f32", lla[i].P, MG_SCAN_CHAIN, 0, lla[i].attn, lla[i].heads, 1e-6, 1e-5);
    }
    /* the zigzag layout: every rank attends to 2P - 1 whole blocks and 2 diagonal ones */
    g_zigzag = 1;
    for (int P = 2; P <= 4; P++) {
        g_llama = P == 3 ? 0 : 2;
        run_case("cpu-f64", P, MG_SCAN_CHAIN, 0, MG_SP_ATTN_RING, 4, 1e-12, 1e-12);
        run_case("cpu-f32", P, MG_SCAN_CHAIN, 0, MG_SP_ATTN_RING, 4, 1e-6, 1e-5);
    }
    g_zigzag = 0;
    g_llama = -1;
    /* attention across ranks: chunks of 2, 3 and 4 slices, gathering keys and values, all-to-all over
     * heads, or the ring (auto with 2 heads over 3 ranks: the ring) (P, ranks per chunk, path, heads) */
    const struct {
        int P, span;
        MgSpAttn attn;
        int heads;
    } spans[] = {{2, 2, MG_SP_ATTN_GATHER, 2},   {2, 2, MG_SP_ATTN_ALLTOALL, 2}, {3, 3, MG_SP_ATTN_GATHER, 2},
                 {4, 2, MG_SP_ATTN_ALLTOALL, 2}, {4, 4, MG_SP_ATTN_GATHER, 2},   {4, 4, MG_SP_ATTN_ALLTOALL, 4},
                 {2, 2, MG_SP_ATTN_RING, 2},     {3, 3, MG_SP_ATTN_RING, 2},     {4, 2, MG_SP_ATTN_RING, 2},
                 {4, 4, MG_SP_ATTN_RING, 2},     {3, 3, MG_SP_ATTN_AUTO, 2}};
    for (size_t i = 0; i < sizeof spans / sizeof spans[0]; i++) {
        run_case("cpu-f64", spans[i].P, MG_SCAN_CHAIN, spans[i].span * PER_RANK, spans[i].attn, spans[i].heads, 1e-12,
                 1e-12);
        run_case("cpu-f32", spans[i].P, MG_SCAN_CHAIN, spans[i].span * PER_RANK, spans[i].attn, spans[i].heads, 1e-6,
                 1e-5);
    }
    /* the CUDA backend's kernels (fp32, on the CPU emulator) under the same layouts: the state scans forward
     * and backward, the ring and all-to-all across a chunk, and llama's zigzag ring */
    const char *cu = "cuda-emu-fp32";
    run_case(cu, 2, MG_SCAN_CHAIN, CHUNK, MG_SP_ATTN_AUTO, 2, 1e-6, 1e-5);
    run_case(cu, 3, MG_SCAN_PIPELINED, CHUNK, MG_SP_ATTN_AUTO, 2, 1e-6, 1e-5);
    g_scan_bwd = 1;
    run_case(cu, 4, MG_SCAN_RECURSIVE_DOUBLING, CHUNK, MG_SP_ATTN_AUTO, 2, 1e-6, 1e-5);
    g_scan_bwd = 0;
    run_case(cu, 3, MG_SCAN_CHAIN, 3 * PER_RANK, MG_SP_ATTN_RING, 2, 1e-6, 1e-5);
    run_case(cu, 4, MG_SCAN_CHAIN, 2 * PER_RANK, MG_SP_ATTN_ALLTOALL, 2, 1e-6, 1e-5);
    g_zigzag = 1;
    g_llama = 2;
    run_case(cu, 2, MG_SCAN_CHAIN, 0, MG_SP_ATTN_RING, 4, 1e-6, 1e-5);
    g_zigzag = 0;
    g_llama = -1;
    return tu_finish();
}
