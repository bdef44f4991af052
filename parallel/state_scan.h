/* Exact exclusive scan of per-rank state summaries across the sequence-parallel ranks
 * (docs/parallelism.md). Each rank holds the summary of its slice of the sequence; rank r receives the
 * combination of the summaries of ranks 0..r-1 (forward) or, for the backward pass, of ranks P-1..r+1
 * (reverse). A summary is an array of `channels` independent elements, each a few scalars of the
 * element type (float or double), stored channel after channel:
 *
 *   MG_SCAN_WELFORD  (count, mean, M2) per channel: TimestepNorm statistics. Combining merges the
 *                    statistics of two disjoint sets (Chan et al.'s pairwise update).
 *   MG_SCAN_CEMA     (a_re, a_im, b_re, b_im) per channel (channel = one dimension x one order of the
 *                    complex EMA): the affine map h -> a*h + b that a slice applies to its incoming state
 *                    (a = product of the slice's decays q, b = the state reached from h = 0). Combining
 *                    "first, then second" gives (a2*a1, a2*b1 + b2).
 *   MG_SCAN_NORM_ADJOINT  (a, b, c_mean, c_var) per channel: the affine map g -> [[a, b], [0, a]] g + c on
 *                    the gradient g = (dL/dmean, dL/dvar) of TimestepNorm statistics: how a slice maps the
 *                    gradient of its outgoing statistics to that of its incoming ones (with a = n_in / n,
 *                    b = 2 a (1 - a) (mean_in - mean_slice), c: its own outputs' part). "First, then
 *                    second" composes the maps (second after first), like CEMA's.
 *
 * Forward: out = s_0 (+) s_1 (+) ... (+) s_{r-1}, folded left to right, starting from `init` if given
 * (init (+) s_0 (+) ...), else from s_0 itself; the identity (count 0 / a = 1, b = 0) where nothing is
 * left of rank r (rank 0 without init). For CEMA the incoming state of rank r is then out_a*h0 + out_b
 * (mg_scan_cema_apply); with init = (0, h0) out_b is the state itself.
 *
 * Reverse (MG_SCAN_REVERSE): rank r gets the fold of ranks P-1, P-2, ..., r+1 (init, if given, first).
 * For CEMA this is the adjoint: a rank's slice maps the gradient of its outgoing state g_out to that of
 * its incoming state as g_in = conj(a)*g_out + c, where c is the gradient of the incoming state from
 * the slice's own outputs (its backward run with g_out = 0). The element passed in is (a, c) with the
 * FORWARD decay a; the scan conjugates it. Rank r receives (alpha, beta) with
 * dL/dh_out(r) = alpha*g_final + beta (g_final: the gradient of the last rank's outgoing state), and
 * then dL/dh_in(r) = conj(a_r)*dL/dh_out(r) + c_r (mg_scan_cema_adjoint_apply). The convention for a
 * complex h with a real loss is dL/dh = dL/dRe(h) + i dL/dIm(h); with it, h_out = a*h_in + b gives
 * dL/dh_in = conj(a) * dL/dh_out.
 *
 * Algorithms (all exact; which are bit-identical to the serial fold and why: docs/parallelism.md):
 *   MG_SCAN_CHAIN            rank r receives the prefix from r-1, combines, sends to r+1.
 *   MG_SCAN_PIPELINED        the chain on `pieces` slices of the channels; each slice is forwarded as soon
 *                            as it is combined, so the ranks work on different slices at once.
 *   MG_SCAN_ALLGATHER        all-gather of every summary, then a local ordered fold (memory P summaries).
 *   MG_SCAN_RECURSIVE_DOUBLING  Hillis-Steele: ceil(log2 P) rounds, rank r receives from r - 2^k;
 *                            memory 4 summaries whatever P. Not bit-identical (another association). */
#ifndef MG_PARALLEL_STATE_SCAN_H
#define MG_PARALLEL_STATE_SCAN_H

#include <stddef.h>
#include <stdint.h>

#include "transport.h"

typedef enum { MG_SCAN_WELFORD = 0, MG_SCAN_CEMA = 1, MG_SCAN_NORM_ADJOINT = 2 } MgScanOp;
#define MG_SCAN_N_OPS 3
typedef enum { MG_SCAN_F32 = 0, MG_SCAN_F64 = 1 } MgScanDtype;
typedef enum { MG_SCAN_FORWARD = 0, MG_SCAN_REVERSE = 1 } MgScanDir;
typedef enum {
    MG_SCAN_CHAIN = 0,
    MG_SCAN_PIPELINED = 1,
    MG_SCAN_ALLGATHER = 2,
    MG_SCAN_RECURSIVE_DOUBLING = 3,
} MgScanAlgo;
#define MG_SCAN_N_ALGOS 4

typedef struct {
    MgScanOp op;
    MgScanDtype dtype;
    MgScanDir dir;
    MgScanAlgo algo;
    int64_t channels; /* >= 1 */
    int pieces;       /* MG_SCAN_PIPELINED: slices of the channels (1..min(channels, 1024)); else ignored */
    int tag;          /* base message tag (0..MG_TP_TAG_USER_MAX - 1024); concurrent scans need distinct tags */
} MgScanSpec;

const char *mg_scan_algo_name(MgScanAlgo a);
const char *mg_scan_op_name(MgScanOp op);
/* Scalars per channel (3 or 4) and bytes of one summary. */
int mg_scan_elem_scalars(MgScanOp op);
size_t mg_scan_bytes(const MgScanSpec *s);
/* Validate a spec; returns 0, or -1 with a message in err. */
int mg_scan_check(const MgScanSpec *s, char *err, size_t errlen);

/* The exclusive scan (collective over t; every rank passes the same spec). local: this rank's summary;
 * init: NULL or the element folded in first (only the first rank in fold order reads it); out: the
 * result (mg_scan_bytes; may not alias local or init). Fatal on a bad spec. */
void mg_state_scan(MgTransport *t, const MgScanSpec *s, const void *local, const void *init, void *out);

/* The same scan with reusable scratch: w's buffers grow to the largest scan seen and are kept, so a warm
 * sequence of scans allocates nothing; and the sends of the chains (to the next rank) are not waited for
 * here but at the next scan with the same w, or at mg_scan_work_flush / _free, so a rank goes on with its
 * work while the next rank is still on its way to the receive (the wavefront across layers: docs/
 * parallelism.md). Concurrent scans need distinct works (and tags). */
typedef struct MgScanWork MgScanWork;
MgScanWork *mg_scan_work_create(void);
void mg_state_scan_ws(MgTransport *t, const MgScanSpec *s, const void *local, const void *init, void *out,
                      MgScanWork *w);
void mg_scan_work_flush(MgScanWork *w); /* complete the deferred sends */
/* The same scan in two halves, so that work can run while the data is on its way: begin posts what does
 * not need this rank's summary (the chain's receive of the prefix, into out), finish completes the scan
 * (for the other algorithms all of it). Same spec, out and w in both; nothing else with w in between. */
void mg_state_scan_begin(MgTransport *t, const MgScanSpec *s, void *out, MgScanWork *w);
void mg_state_scan_finish(MgTransport *t, const MgScanSpec *s, const void *local, const void *init, void *out,
                          MgScanWork *w);
void mg_scan_work_free(MgScanWork *w);  /* flushes first */

/* The same result for all P ranks at once in one process: the serial left-to-right fold (the reference).
 * all: P summaries one after another; out: P summaries. */
void mg_state_scan_serial(const MgScanSpec *s, int P, const void *all, const void *init, void *out);

/* out[c0..c1) = first (+) second on channels [c0, c1) for the spec's op and dtype: the plain operator on
 * elements in fold form (a reverse CEMA scan first conjugates each rank's a: mg_scan_to_fold_form).
 * out may alias first or second. */
void mg_scan_combine(const MgScanSpec *s, const void *first, const void *second, void *out, int64_t c0,
                     int64_t c1);
/* dst = src in fold form: a copy, except the reverse CEMA scan's (a, c) -> (conj(a), c). */
void mg_scan_to_fold_form(const MgScanSpec *s, const void *src, void *dst);
/* The identity element on every channel. */
void mg_scan_identity(const MgScanSpec *s, void *out);

/* CEMA helpers in double (C channels, elements as above; h, g, res: interleaved re, im). */
void mg_scan_cema_apply(int64_t C, const double *elem, const double *h0, double *h);            /* a*h0 + b */
void mg_scan_cema_adjoint_apply(int64_t C, const double *own, const double *g_out, double *g_in); /* conj(a)g + c */

#endif
