/* The MPI worker of tests/test_parallel.sh (not a test_* program: it needs mpirun). Every rank runs the
 * same checks; the results are combined with an all-reduce and rank 0 prints one PASS/FAIL line per
 * check. Checks: the MPI transport (blocking and nonblocking send/recv in a ring, all-gather, all-reduce,
 * barrier, split), the process grid and its sub-transports, every scan algorithm x operator x element
 * type x direction (with and without init) on the world and on the SP groups against the serial fold
 * (chain, pipelined and all-gather bit-identical), and the agreement check.
 *
 *   mpi_scan_check [--sp N]              all checks (SP = N for the grid; default 2 if P is even, else 1)
 *   mpi_scan_check --grid-only --sp N    only build the grid: a bad SP prints "rank R: error: ..." on
 *                                        every rank and exits 1
 *   mpi_scan_check --config-mismatch R   the agreement check with rank R's config changed: every rank
 *                                        prints the error and exits 1
 *   mpi_scan_check --abort R             rank R calls abort_all: the whole job ends non-zero */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../parallel/grid.h"
#include "../../parallel/state_scan.h"
#include "../../src/hash.h"

static MgTransport *W;
static int n_pass, n_fail;

/* Collective: the check passes iff it passed on every rank; rank 0 prints the line. */
static void check(int ok, const char *name, const char *detail) {
    double bad = ok ? 0 : 1, who = ok ? 0 : (double)(W->rank + 1);
    double v[2] = {bad, who};
    mg_tp_all_reduce_sum(W, v, 2);
    if (v[0] == 0) {
        n_pass++;
        if (W->rank == 0) printf("PASS %s (%d ranks: %s)\n", name, W->size, detail);
    } else {
        n_fail++;
        if (W->rank == 0) printf("FAIL %s: failed on %.0f of %d ranks (%s)\n", name, v[0], W->size, detail);
        if (!ok) fprintf(stderr, "rank %d: %s failed\n", W->rank, name);
    }
    fflush(stdout);
}

static double urand(uint64_t seed, uint64_t i) { return (double)(mg_splitmix64(seed * 0x100000001ull + i) >> 11) * 0x1.0p-53; }

static void put(const MgScanSpec *s, void *p, size_t i, double v) {
    if (s->dtype == MG_SCAN_F64)
        ((double *)p)[i] = v;
    else
        ((float *)p)[i] = (float)v;
}
static double get(const MgScanSpec *s, const void *p, size_t i) {
    return s->dtype == MG_SCAN_F64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

/* The same P summaries on every rank (seeded). */
static void make_summaries(const MgScanSpec *s, int P, uint64_t seed, unsigned char *all) {
    size_t S = mg_scan_bytes(s);
    uint64_t k = 0;
    for (int r = 0; r < P; r++)
        for (int64_t c = 0; c < s->channels; c++) {
            void *p = all + (size_t)r * S;
            if (s->op == MG_SCAN_WELFORD) {
                double n = urand(seed, k++) < 0.15 ? 0 : (double)(1 + (int)(urand(seed, k++) * 50));
                put(s, p, 3 * c, n), put(s, p, 3 * c + 1, n ? 2 + 2 * urand(seed, k++) - 1 : 0);
                put(s, p, 3 * c + 2, n > 1 ? n * urand(seed, k++) : 0);
            } else {
                double rad = 0.3 + 0.69 * urand(seed, k++), th = 6.283185307179586 * urand(seed, k++);
                put(s, p, 4 * c, rad * cos(th)), put(s, p, 4 * c + 1, rad * sin(th));
                put(s, p, 4 * c + 2, 2 * urand(seed, k++) - 1), put(s, p, 4 * c + 3, 2 * urand(seed, k++) - 1);
            }
        }
}

/* Every combination on transport t; returns 1 if this rank's results all matched. */
static int scan_all(MgTransport *t, int64_t C, int pieces, uint64_t seed, double *worst) {
    int ok = 1;
    for (int op = 0; op < 2; op++)
        for (int dt = 0; dt < 2; dt++)
            for (int dir = 0; dir < 2; dir++)
                for (int algo = 0; algo < MG_SCAN_N_ALGOS; algo++)
                    for (int with_init = 0; with_init < 2; with_init++) {
                        MgScanSpec s = {.op = op, .dtype = dt, .dir = dir, .algo = algo, .channels = C,
                                        .pieces = pieces, .tag = 11};
                        size_t S = mg_scan_bytes(&s), n = S / (dt ? 8 : 4);
                        int P = t->size;
                        unsigned char *all = mg_malloc(S * (P + 1)), *ref = mg_malloc(S * P), *got = mg_malloc(S);
                        make_summaries(&s, P + 1, seed++, all);
                        const void *init = with_init ? all + S * P : NULL;
                        mg_state_scan_serial(&s, P, all, init, ref);
                        mg_state_scan(t, &s, all + S * t->rank, init, got);
                        const unsigned char *mine = ref + S * t->rank;
                        if (algo != MG_SCAN_RECURSIVE_DOUBLING) {
                            ok &= !memcmp(got, mine, S);
                        } else {
                            double e = 0, tol = dt ? 1e-12 : op == MG_SCAN_CEMA ? 1e-4 : 1e-5;
                            for (size_t i = 0; i < n; i++)
                                e = fmax(e, fabs(get(&s, got, i) - get(&s, mine, i)) / fmax(1e-3, fabs(get(&s, mine, i))));
                            ok &= e <= tol;
                            if (dt) *worst = fmax(*worst, e);
                        }
                        free(all), free(ref), free(got);
                    }
    return ok;
}

static void check_transport(void) {
    int P = W->size, me = W->rank;
    /* ring: blocking send to the right after a nonblocking receive from the left, then the reverse
     * direction with isend + blocking recv */
    int ok = 1;
    if (P > 1) {
        double out[3] = {me, me * 2.5, -me}, in[3] = {0};
        MgTpRequest *rq = mg_tp_irecv(W, (me + P - 1) % P, 5, in, sizeof in);
        mg_tp_send(W, (me + 1) % P, 5, out, sizeof out);
        mg_tp_wait(W, rq);
        int l = (me + P - 1) % P;
        ok &= in[0] == l && in[1] == l * 2.5 && in[2] == -l;
        int x = 1000 + me, y = -1;
        MgTpRequest *sq = mg_tp_isend(W, (me + P - 1) % P, 6, &x, sizeof x);
        mg_tp_recv(W, (me + 1) % P, 6, &y, sizeof y);
        mg_tp_wait(W, sq);
        ok &= y == 1000 + (me + 1) % P;
    }
    check(ok, "mpi_send_recv_ring", "irecv+send, isend+recv");

    int64_t mine[2] = {me, (int64_t)me * me}, *all = mg_malloc(sizeof mine * (size_t)P);
    mg_tp_all_gather(W, mine, all, sizeof mine);
    ok = 1;
    for (int r = 0; r < P; r++) ok &= all[2 * r] == r && all[2 * r + 1] == (int64_t)r * r;
    free(all);
    double v[2] = {me, 0.1};
    mg_tp_all_reduce_sum(W, v, 2);
    ok &= v[0] == P * (P - 1) / 2.0 && fabs(v[1] - 0.1 * P) < 1e-15;
    mg_tp_barrier(W);
    check(ok, "mpi_all_gather_all_reduce_barrier", "16-byte blocks; sums");

    /* split: even and odd ranks, reversed order by key */
    MgTransport *sub = mg_tp_split(W, me % 2, -me);
    int n_color = (P - me % 2 + 1) / 2, expect_rank = (n_color - 1) - me / 2;
    double s = me;
    mg_tp_all_reduce_sum(sub, &s, 1);
    double es = 0;
    for (int r = me % 2; r < P; r += 2) es += r;
    ok = sub->size == n_color && sub->rank == expect_rank && s == es;
    mg_tp_free(sub);
    check(ok, "mpi_split_even_odd", "sizes, ranks by key, all-reduce inside");
}

static void check_agreement(void) {
    char err[1024], detail[256];
    int ok = mg_grid_agree(W, "same config", err, sizeof err) == 0;
    check(ok, "mpi_agreement_same", "same executable and config");

    int P = W->size, bad = P - 1;
    int rc = mg_grid_agree(W, W->rank == bad ? "other config" : "same config", err, sizeof err);
    uint64_t h = mg_fnv1a64(err, strlen(err)), *all = mg_malloc(8 * (size_t)P);
    mg_tp_all_gather(W, &h, all, 8);
    int same = 1;
    for (int r = 0; r < P; r++) same &= all[r] == all[0];
    char want[64];
    snprintf(want, sizeof want, "rank %d (config hash", bad);
    ok = P == 1 ? rc == 0 : (rc == -1 && same && strstr(err, want) && !strstr(err, "executable hash"));
    snprintf(detail, sizeof detail, "config of rank %d changed: the same message on every rank", bad);
    check(ok, "mpi_agreement_config_mismatch", detail);

    rc = mg_grid_agree_hashes(W, W->rank == bad ? 0x1234 : 0x5678, 42, err, sizeof err);
    h = mg_fnv1a64(err, strlen(err));
    mg_tp_all_gather(W, &h, all, 8);
    same = 1;
    for (int r = 0; r < P; r++) same &= all[r] == all[0];
    snprintf(want, sizeof want, "rank %d (executable hash", bad);
    ok = P == 1 ? rc == 0 : (rc == -1 && same && strstr(err, want) && !strstr(err, "config hash"));
    check(ok, "mpi_agreement_executable_mismatch", "executable hash of the last rank changed");
    free(all);
}

int main(int argc, char **argv) {
    char err[1024];
    W = mg_transport_mpi_init(&argc, &argv, err, sizeof err);
    if (!W) {
        printf("SKIP mpi_scan_check (%s)\n", err);
        return 0;
    }
    int sp = W->size % 2 == 0 ? 2 : 1, grid_only = 0, mismatch = -1, abort_rank = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--sp") && i + 1 < argc)
            sp = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--grid-only"))
            grid_only = 1;
        else if (!strcmp(argv[i], "--config-mismatch") && i + 1 < argc)
            mismatch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--abort") && i + 1 < argc)
            abort_rank = atoi(argv[++i]);
        else {
            fprintf(stderr, "mpi_scan_check: unknown argument %s\n", argv[i]);
            mg_transport_mpi_finalize(W);
            return 2;
        }
    }
    if (abort_rank >= 0) {
        if (W->rank == abort_rank) mg_tp_abort_all(W, "test abort requested on rank %d", abort_rank);
        mg_tp_barrier(W); /* the others wait here until the abort ends them */
        mg_transport_mpi_finalize(W);
        return 0;
    }
    if (mismatch >= 0) {
        int rc = mg_grid_agree(W, W->rank == mismatch ? "seq_len = 4096" : "seq_len = 2048", err, sizeof err);
        if (rc) fprintf(stderr, "rank %d: error: %s\n", W->rank, err);
        mg_transport_mpi_finalize(W);
        return rc ? 1 : 0;
    }
    MgGrid g;
    if (mg_grid_create(W, sp, &g, err, sizeof err)) {
        fprintf(stderr, "rank %d: error: %s\n", W->rank, err);
        mg_transport_mpi_finalize(W);
        return 1;
    }
    if (grid_only) {
        printf("rank %d: grid %d x %d: dp %d sp %d\n", W->rank, g.dp_size, g.sp_size, g.dp, g.sp);
        mg_grid_destroy(&g);
        mg_transport_mpi_finalize(W);
        return 0;
    }

    check_transport();

    /* the grid: coordinates and the sub-transports */
    double v = W->rank;
    mg_tp_all_reduce_sum(g.sp_group, &v, 1);
    int S = g.sp_size;
    int ok = g.dp * S + g.sp == W->rank && g.sp_group->size == S && g.sp_group->rank == g.sp &&
             g.dp_group->size == g.dp_size && g.dp_group->rank == g.dp && v == (double)g.dp * S * S + S * (S - 1) / 2.0;
    char detail[256];
    snprintf(detail, sizeof detail, "DP %d x SP %d: coordinates, group ranks, all-reduce in the SP group", g.dp_size, S);
    check(ok, "mpi_grid", detail);

    double worst = 0;
    ok = scan_all(W, 37, 3, 1000, &worst) && scan_all(W, 1000, 8, 2000, &worst);
    snprintf(detail, sizeof detail, "4 algorithms x 2 ops x f32/f64 x forward/reverse x init, C=37 K=3 and C=1000 K=8; "
             "chain/pipelined/allgather bit-identical, recursive doubling f64 max rel err %.2g", worst);
    check(ok, "mpi_scan_world_vs_serial", detail);
    if (S > 1) {
        worst = 0;
        ok = scan_all(g.sp_group, 37, 3, 3000 + (uint64_t)g.dp * 100, &worst);
        snprintf(detail, sizeof detail, "the same on each SP group of %d ranks, concurrently", S);
        check(ok, "mpi_scan_sp_groups_vs_serial", detail);
    }
    check_agreement();
    mg_grid_destroy(&g);
    if (W->rank == 0) printf("# mpi_scan_check: %d passed, %d failed\n", n_pass, n_fail);
    mg_transport_mpi_finalize(W);
    return n_fail ? 1 : 0;
}
