/* An osu-style point-to-point sweep over the project's transport (parallel/transport.h), and timings of
 * the state scan itself (parallel/state_scan.h). Not a test: it asserts nothing about time; it needs
 * mpirun (scripts/bench_transport.sh runs it). Every call goes through the transport interface
 * (mg_tp_send/recv/isend/irecv/wait, all_gather, barrier), never through MPI directly, so the figures are
 * what the scan would see.
 *
 *   latency    ping-pong between rank 0 and rank --peer: half the round trip, microseconds
 *   bandwidth  rank 0 posts a window of nonblocking sends of one size, the peer a window of nonblocking
 *              receives, then the peer answers with a 4-byte acknowledgement; bytes moved / time, GB/s
 *              (1e9 bytes per second)
 *   scan       for each algorithm, mg_state_scan of one summary of C channels (CEMA or Welford, fp32,
 *              forward) across all ranks: before each iteration a barrier, then every rank times its own
 *              scan; an iteration's time is the maximum over ranks (the last rank to have its state)
 *
 * Sizes are --min times powers of --factor, and --max itself last; every size gets warm-up iterations
 * first. The number of timed iterations shrinks for large messages (at most 1 GiB moved per size and
 * direction, at least 10 ping-pongs and 5 windows). The tables show medians (a shared machine has
 * outliers); with --csv FILE rank 0 also writes one CSV with the columns
 *   kind,ranks,peer,algo,channels,bytes,iters,mean_us,median_us,min_us,max_us,gbps
 * (kind pingpong: half round trip; bandwidth: time per message within a window; scan: per-iteration
 * maximum over ranks; gbps = bytes / median time, empty for scans). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../parallel/state_scan.h"
#include "../../parallel/transport.h"

#define TAG_PING 1
#define TAG_PONG 2
#define TAG_BW 3
#define TAG_ACK 4
#define TAG_SCAN 100
#define MAX_MESSAGE ((long long)1 << 30)       /* 1 GiB: the MPI transport's count is an int */
#define RECV_WINDOW_BYTES ((size_t)256 << 20)  /* receive buffers of one window: at most 256 MiB */
#define BYTES_PER_SIZE ((long long)1 << 30)    /* timed bytes per size and direction */
#define MAX_CHANNEL_LIST 16

typedef struct {
    long long min_bytes, max_bytes;
    int factor, iters, warmup, window, peer;
    int scan_iters, scan_warmup, pieces;
    int do_p2p, do_scan;
    MgScanOp scan_op;
    long long channels[MAX_CHANNEL_LIST];
    int n_channels;
    const char *csv;
} Opts;

static const char *USAGE =
    "usage: mpirun -np P tp_sweep [options]\n"
    "  --min BYTES           smallest message (default 8; suffixes K, M, G = KiB, MiB, GiB)\n"
    "  --max BYTES           largest message (default 64M; at most 1G)\n"
    "  --factor 2|4          ratio between consecutive sizes (default 2)\n"
    "  --iters N             timed iterations per size, fewer for large messages (default 1000)\n"
    "  --warmup N            warm-up iterations per size, fewer for large messages (default 100)\n"
    "  --window N            nonblocking sends in flight in the bandwidth test (default 64)\n"
    "  --peer R              the partner of rank 0 in the point-to-point tests (default 1)\n"
    "  --scan-channels LIST  channels of the timed scans, comma-separated (default 128,4096,65536)\n"
    "  --scan-op cema|welford  operator of the timed scans (default cema: 16 bytes per channel)\n"
    "  --scan-iters N        timed scans per algorithm and size (default 200)\n"
    "  --scan-warmup N       untimed scans first (default 20)\n"
    "  --pieces K            pieces of the pipelined chain (default 8; at most the channels)\n"
    "  --no-p2p              only the scans\n"
    "  --no-scan             only the point-to-point tests\n"
    "  --csv FILE            also write every figure to FILE (rank 0)\n";

/* "64M" -> 67108864. Returns 0, or -1 with a message. */
static int parse_bytes(const char *opt, const char *s, long long *out, char *err, size_t errlen) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno) return mg_errf(err, errlen, "%s: '%s' is not a byte count (e.g. 8, 4K, 64M)", opt, s);
    int shift = 0;
    if (*end == 'k' || *end == 'K') shift = 10, end++;
    else if (*end == 'm' || *end == 'M') shift = 20, end++;
    else if (*end == 'g' || *end == 'G') shift = 30, end++;
    if (*end) return mg_errf(err, errlen, "%s: '%s' has trailing characters '%s' (suffixes: K, M, G)", opt, s, end);
    if (v < 1 || v > (MAX_MESSAGE >> shift))
        return mg_errf(err, errlen, "%s: %s is out of range: a message is 1 byte to 1G", opt, s);
    *out = v << shift;
    return 0;
}

static int parse_int(const char *opt, const char *s, int lo, int hi, int *out, char *err, size_t errlen) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno) return mg_errf(err, errlen, "%s: '%s' is not an integer", opt, s);
    if (v < lo || v > hi) return mg_errf(err, errlen, "%s: %ld is out of range %d..%d", opt, v, lo, hi);
    *out = (int)v;
    return 0;
}

static int parse_channels(const char *s, Opts *o, char *err, size_t errlen) {
    o->n_channels = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || (*end && *end != ','))
            return mg_errf(err, errlen, "--scan-channels: '%s' is not a comma-separated list of integers", s);
        if (v < 1 || v > ((long long)1 << 24))
            return mg_errf(err, errlen, "--scan-channels: %lld is out of range 1..16777216", v);
        if (o->n_channels == MAX_CHANNEL_LIST)
            return mg_errf(err, errlen, "--scan-channels: at most %d sizes", MAX_CHANNEL_LIST);
        o->channels[o->n_channels++] = v;
        if (!*end) break;
        p = end + 1;
    }
    return 0;
}

/* Returns 0 to run, 1 for --help, -1 with a message in err. Every rank parses the same arguments and so
 * reaches the same verdict. */
static int parse_args(int argc, char **argv, Opts *o, char *err, size_t errlen) {
    *o = (Opts){.min_bytes = 8, .max_bytes = 64ll << 20, .factor = 2, .iters = 1000, .warmup = 100, .window = 64,
                .peer = 1, .scan_iters = 200, .scan_warmup = 20, .pieces = 8, .do_p2p = 1, .do_scan = 1,
                .scan_op = MG_SCAN_CEMA, .channels = {128, 4096, 65536}, .n_channels = 3};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        if (!strcmp(a, "--no-p2p")) {
            o->do_p2p = 0;
            continue;
        }
        if (!strcmp(a, "--no-scan")) {
            o->do_scan = 0;
            continue;
        }
        static const char *const WITH_VALUE[] = {"--min", "--max", "--factor", "--iters", "--warmup", "--window",
                                                 "--peer", "--scan-channels", "--scan-op", "--scan-iters",
                                                 "--scan-warmup", "--pieces", "--csv"};
        int known = 0;
        for (size_t k = 0; k < sizeof WITH_VALUE / sizeof *WITH_VALUE; k++) known |= !strcmp(a, WITH_VALUE[k]);
        if (!known) return mg_errf(err, errlen, "unknown argument '%s' (--help lists the options)", a);
        if (i + 1 >= argc) return mg_errf(err, errlen, "%s needs a value", a);
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(a, "--min")) rc = parse_bytes(a, v, &o->min_bytes, err, errlen);
        else if (!strcmp(a, "--max")) rc = parse_bytes(a, v, &o->max_bytes, err, errlen);
        else if (!strcmp(a, "--factor")) {
            rc = parse_int(a, v, 0, 1 << 20, &o->factor, err, errlen);
            if (!rc && o->factor != 2 && o->factor != 4)
                rc = mg_errf(err, errlen, "--factor: %d is not allowed: sizes are powers of 2 or 4", o->factor);
        } else if (!strcmp(a, "--iters")) rc = parse_int(a, v, 1, 10000000, &o->iters, err, errlen);
        else if (!strcmp(a, "--warmup")) rc = parse_int(a, v, 0, 10000000, &o->warmup, err, errlen);
        else if (!strcmp(a, "--window")) rc = parse_int(a, v, 1, 1024, &o->window, err, errlen);
        else if (!strcmp(a, "--peer")) rc = parse_int(a, v, 1, 1 << 20, &o->peer, err, errlen);
        else if (!strcmp(a, "--scan-channels")) rc = parse_channels(v, o, err, errlen);
        else if (!strcmp(a, "--scan-op")) {
            if (!strcmp(v, "cema")) o->scan_op = MG_SCAN_CEMA;
            else if (!strcmp(v, "welford")) o->scan_op = MG_SCAN_WELFORD;
            else rc = mg_errf(err, errlen, "--scan-op: '%s' is not an operator (cema or welford)", v);
        } else if (!strcmp(a, "--scan-iters")) rc = parse_int(a, v, 1, 1000000, &o->scan_iters, err, errlen);
        else if (!strcmp(a, "--scan-warmup")) rc = parse_int(a, v, 0, 1000000, &o->scan_warmup, err, errlen);
        else if (!strcmp(a, "--pieces")) rc = parse_int(a, v, 1, 1024, &o->pieces, err, errlen);
        else if (!strcmp(a, "--csv")) {
            if (!*v) rc = mg_errf(err, errlen, "--csv needs a file name");
            o->csv = v;
        }
        if (rc) return -1;
    }
    if (o->min_bytes > o->max_bytes)
        return mg_errf(err, errlen, "--min %lld is larger than --max %lld", o->min_bytes, o->max_bytes);
    if (!o->do_p2p && !o->do_scan) return mg_errf(err, errlen, "--no-p2p and --no-scan together leave nothing to do");
    return 0;
}

/* ---- statistics ------------------------------------------------------------------------------------ */
typedef struct {
    double mean, median, min, max;
} Stats;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts x. */
static Stats stats_of(double *x, int n) {
    Stats s = {0, 0, 0, 0};
    for (int i = 0; i < n; i++) s.mean += x[i];
    s.mean /= n;
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    s.min = x[0], s.max = x[n - 1];
    s.median = n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
    return s;
}

static int iters_for(long long bytes, int cap) {
    long long n = BYTES_PER_SIZE / bytes;
    if (n > cap) n = cap;
    if (n < 10) n = 10;
    return (int)n;
}

static int warmup_for(long long bytes, int cap) {
    long long n = BYTES_PER_SIZE / 8 / bytes;
    if (n > cap) n = cap;
    if (n < 2 && cap >= 2) n = 2;
    return (int)n;
}

/* ---- point-to-point -------------------------------------------------------------------------------- */
/* Ping-pong between rank 0 and the peer; on rank 0, t[i] = half the round trip of iteration i (seconds). */
static void pingpong(MgTransport *W, int peer, char *sbuf, char *rbuf, size_t n, int warm, int iters, double *t) {
    for (int i = -warm; i < iters; i++) {
        if (W->rank == 0) {
            double t0 = mg_now();
            mg_tp_send(W, peer, TAG_PING, sbuf, n);
            mg_tp_recv(W, peer, TAG_PONG, rbuf, n);
            if (i >= 0) t[i] = (mg_now() - t0) / 2;
        } else {
            mg_tp_recv(W, 0, TAG_PING, rbuf, n);
            mg_tp_send(W, 0, TAG_PONG, sbuf, n);
        }
    }
}

/* Windows of nonblocking sends (rank 0) and receives (peer); on rank 0, t[i] = time per message within
 * window i (seconds), the window closed by the peer's acknowledgement. */
static void bandwidth(MgTransport *W, int peer, char *sbuf, char *rbuf, size_t n, int window, int warm, int iters,
                      double *t, MgTpRequest **req) {
    int ack = 0;
    for (int i = -warm; i < iters; i++) {
        if (W->rank == 0) {
            double t0 = mg_now();
            for (int w = 0; w < window; w++) req[w] = mg_tp_isend(W, peer, TAG_BW, sbuf, n);
            for (int w = 0; w < window; w++) mg_tp_wait(W, req[w]);
            mg_tp_recv(W, peer, TAG_ACK, &ack, sizeof ack);
            if (i >= 0) t[i] = (mg_now() - t0) / window;
        } else {
            for (int w = 0; w < window; w++) req[w] = mg_tp_irecv(W, 0, TAG_BW, rbuf + (size_t)w * n, n);
            for (int w = 0; w < window; w++) mg_tp_wait(W, req[w]);
            mg_tp_send(W, 0, TAG_ACK, &ack, sizeof ack);
        }
    }
}

static void run_p2p(MgTransport *W, const Opts *o, FILE *csv) {
    int P = W->size, me = W->rank, peer = o->peer;
    if (P < 2) {
        if (me == 0) printf("# point-to-point: skipped (1 rank; run it under mpirun -np 2 or more)\n\n");
        return;
    }
    int active = me == 0 || me == peer;
    size_t maxn = (size_t)o->max_bytes;
    char *sbuf = NULL, *rbuf = NULL;
    double *t = NULL;
    MgTpRequest **req = NULL;
    if (active) {
        /* the peer receives a window into distinct buffers: window(n) * n <= max(n, min(256 MiB, W * n)) */
        size_t rbytes = MG_MAX(maxn, MG_MIN(RECV_WINDOW_BYTES, (size_t)o->window * maxn));
        sbuf = mg_malloc(maxn);
        rbuf = mg_malloc(me == 0 ? maxn : rbytes);
        memset(sbuf, 0x5a, maxn); /* touch every page before timing */
        memset(rbuf, 0, me == 0 ? maxn : rbytes);
        t = mg_malloc(sizeof(double) * (size_t)MG_MAX(o->iters, 10));
        req = mg_malloc(sizeof *req * (size_t)o->window);
    }
    if (me == 0) {
        printf("# point-to-point between ranks 0 and %d of %d (transport %s); warm-up first at every size\n", peer, P,
               W->kind);
        printf("# latency: ping-pong, half the round trip; bandwidth: windows of up to %d nonblocking sends "
               "(at most %zu MiB in flight), then an acknowledgement; GB/s = 1e9 bytes/s\n",
               o->window, RECV_WINDOW_BYTES >> 20);
        printf("# medians over the iterations (a shared machine has outliers; the CSV has the means too)\n");
        printf("%12s %7s %12s %12s %6s %7s %14s %14s\n", "bytes", "iters", "latency_us", "min_us", "window", "windows",
               "bandwidth_GBps", "best_GBps");
    }
    for (long long n = o->min_bytes;; n = MG_MIN(n * o->factor, o->max_bytes)) {
        int iters = iters_for(n, o->iters), warm = warmup_for(n, o->warmup);
        Stats lat = {0, 0, 0, 0}, bw = {0, 0, 0, 0};
        int window = (int)MG_MIN((long long)o->window, MG_MAX(1ll, (long long)RECV_WINDOW_BYTES / n));
        /* windows: at most a quarter of --iters, at most 1 GiB moved, at least 5 */
        int bw_iters = (int)MG_MAX(5ll, MG_MIN((long long)o->iters / 4, BYTES_PER_SIZE / (n * window)));
        int bw_warm = MG_MAX(1, MG_MIN(warm, bw_iters / 5));
        mg_tp_barrier(W);
        if (active) {
            pingpong(W, peer, sbuf, rbuf, (size_t)n, warm, iters, t);
            if (me == 0) lat = stats_of(t, iters);
            bandwidth(W, peer, sbuf, rbuf, (size_t)n, window, bw_warm, bw_iters, t, req);
            if (me == 0) bw = stats_of(t, bw_iters);
        }
        if (me == 0) {
            printf("%12lld %7d %12.2f %12.2f %6d %7d %14.3f %14.3f\n", n, iters, lat.median * 1e6, lat.min * 1e6,
                   window, bw_iters, n / bw.median * 1e-9, n / bw.min * 1e-9);
            fflush(stdout);
            if (csv) {
                fprintf(csv, "pingpong,%d,%d,,,%lld,%d,%.4f,%.4f,%.4f,%.4f,%.6f\n", P, peer, n, iters, lat.mean * 1e6,
                        lat.median * 1e6, lat.min * 1e6, lat.max * 1e6, n / lat.median * 1e-9);
                fprintf(csv, "bandwidth,%d,%d,,,%lld,%d,%.4f,%.4f,%.4f,%.4f,%.6f\n", P, peer, n, bw_iters * window,
                        bw.mean * 1e6, bw.median * 1e6, bw.min * 1e6, bw.max * 1e6, n / bw.median * 1e-9);
            }
        }
        if (n == o->max_bytes) break; /* the last size is --max itself, whether a power of the factor or not */
    }
    mg_tp_barrier(W);
    if (me == 0) printf("\n");
    free(sbuf), free(rbuf), free(t), free(req);
}

/* ---- the state scan -------------------------------------------------------------------------------- */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float frand(uint64_t *s) { return (float)((double)(rng_next(s) >> 11) * 0x1.0p-53); }

/* A plausible summary (the values do not change the time, as long as nothing is subnormal): CEMA decays of
 * modulus 0.9..0.999 (products over 256 ranks stay normal) and states in [-1, 1), Welford counts 1..64. */
static void fill_summary(MgScanOp op, int64_t C, float *x, uint64_t seed) {
    for (int64_t c = 0; c < C; c++) {
        if (op == MG_SCAN_CEMA) {
            float r = 0.9f + 0.099f * frand(&seed), th = 6.2831853f * frand(&seed);
            x[4 * c] = r * cosf(th), x[4 * c + 1] = r * sinf(th);
            x[4 * c + 2] = 2 * frand(&seed) - 1, x[4 * c + 3] = 2 * frand(&seed) - 1;
        } else {
            x[3 * c] = (float)(1 + (int)(64 * frand(&seed))), x[3 * c + 1] = frand(&seed), x[3 * c + 2] = frand(&seed);
        }
    }
}

static void run_scan(MgTransport *W, const Opts *o, FILE *csv) {
    int P = W->size, me = W->rank;
    if (me == 0) {
        printf("# state scan: %s fp32, forward, %d ranks (transport %s); %d timed scans after %d warm-up per line\n",
               mg_scan_op_name(o->scan_op), P, W->kind, o->scan_iters, o->scan_warmup);
        printf("# each scan: barrier, then every rank times its own mg_state_scan; a scan's time is the maximum over "
               "ranks; mean, median, min, max over the scans\n");
        printf("%10s %12s %-19s %6s %11s %11s %11s %11s\n", "channels", "bytes", "algorithm", "pieces", "mean_us",
               "median_us", "min_us", "max_us");
    }
    int n = o->scan_iters;
    double *mine = mg_malloc(sizeof(double) * (size_t)n), *all = mg_malloc(sizeof(double) * (size_t)n * (size_t)P),
           *worst = mg_malloc(sizeof(double) * (size_t)n);
    for (int ci = 0; ci < o->n_channels; ci++) {
        int64_t C = o->channels[ci];
        for (int algo = 0; algo < MG_SCAN_N_ALGOS; algo++) {
            MgScanSpec s = {.op = o->scan_op, .dtype = MG_SCAN_F32, .dir = MG_SCAN_FORWARD, .algo = (MgScanAlgo)algo,
                            .channels = C, .pieces = (int)MG_MIN((int64_t)o->pieces, C), .tag = TAG_SCAN};
            size_t S = mg_scan_bytes(&s);
            float *local = mg_malloc(S), *out = mg_malloc(S);
            fill_summary(s.op, C, local, 1000 + (uint64_t)me);
            memset(out, 0, S);
            for (int i = -o->scan_warmup; i < n; i++) {
                mg_tp_barrier(W);
                double t0 = mg_now();
                mg_state_scan(W, &s, local, NULL, out);
                if (i >= 0) mine[i] = mg_now() - t0;
            }
            mg_tp_all_gather(W, mine, all, sizeof(double) * (size_t)n);
            for (int i = 0; i < n; i++) {
                worst[i] = all[i];
                for (int r = 1; r < P; r++) worst[i] = MG_MAX(worst[i], all[(size_t)r * (size_t)n + (size_t)i]);
            }
            Stats st = stats_of(worst, n);
            if (me == 0) {
                char pieces[16] = "-";
                if (algo == MG_SCAN_PIPELINED) snprintf(pieces, sizeof pieces, "%d", s.pieces);
                printf("%10lld %12zu %-19s %6s %11.2f %11.2f %11.2f %11.2f\n", (long long)C, S, mg_scan_algo_name(s.algo),
                       pieces, st.mean * 1e6, st.median * 1e6, st.min * 1e6, st.max * 1e6);
                fflush(stdout);
                if (csv)
                    fprintf(csv, "scan,%d,,%s,%lld,%zu,%d,%.4f,%.4f,%.4f,%.4f,\n", P, mg_scan_algo_name(s.algo),
                            (long long)C, S, n, st.mean * 1e6, st.median * 1e6, st.min * 1e6, st.max * 1e6);
            }
            free(local), free(out);
        }
    }
    if (me == 0) printf("\n");
    free(mine), free(all), free(worst);
}

int main(int argc, char **argv) {
    char err[1024];
    MgTransport *W = mg_transport_mpi_init(&argc, &argv, err, sizeof err);
    if (!W) {
        fprintf(stderr, "tp_sweep: %s\n", err);
        return 1;
    }
    Opts o;
    int rc = parse_args(argc, argv, &o, err, sizeof err);
    if (rc == 0 && o.do_p2p && W->size > 1 && o.peer >= W->size)
        rc = mg_errf(err, sizeof err, "--peer %d: there are only %d ranks (the peer must be 1..%d)", o.peer, W->size,
                     W->size - 1);
    if (rc) {
        if (W->rank == 0) {
            if (rc > 0) fputs(USAGE, stdout);
            else fprintf(stderr, "tp_sweep: error: %s\n%s", err, USAGE);
        }
        mg_transport_mpi_finalize(W);
        return rc > 0 ? 0 : 2;
    }
    /* rank 0 opens the CSV; every rank learns whether it could */
    FILE *csv = NULL;
    double bad = 0;
    if (W->rank == 0 && o.csv) {
        csv = fopen(o.csv, "w");
        if (!csv) {
            fprintf(stderr, "tp_sweep: error: cannot write --csv %s: %s\n", o.csv, strerror(errno));
            bad = 1;
        } else {
            fprintf(csv, "kind,ranks,peer,algo,channels,bytes,iters,mean_us,median_us,min_us,max_us,gbps\n");
        }
    }
    mg_tp_all_reduce_sum(W, &bad, 1);
    if (bad) {
        mg_transport_mpi_finalize(W);
        return 2;
    }
    if (o.do_p2p) run_p2p(W, &o, csv);
    if (o.do_scan) run_scan(W, &o, csv);
    if (csv && fclose(csv)) {
        fprintf(stderr, "tp_sweep: error: writing %s failed\n", o.csv);
        bad = 1;
    }
    mg_transport_mpi_finalize(W);
    return bad ? 1 : 0;
}
