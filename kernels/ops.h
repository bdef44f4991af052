/* The op interface every backend implements (CPU today, CUDA next).
 *
 * One op = one argument struct + one forward and one backward function in the backend table MgBackend.
 * The model (src/model/) only ever talks to a backend through this header, so it runs unchanged
 * on the CPU backend in float32 (training), the CPU backend in float64 (gradient checks), and later CUDA.
 *
 * Conventions (read these once; every op follows them):
 *  - Tensors are dense and row-major. Activations are "token-major": (B, L, features), T = B*L rows.
 *    Multi-head tensors are (B, L, H, d_head), i.e. exactly what a linear layer with H*d_head outputs gives.
 *  - Every pointer in an argument struct is backend memory (device memory on an accelerator, host memory
 *    on the CPU); no struct mixes host and device pointers. Scalars travel by value in the struct.
 *  - Two element types per backend. Activations, parameters and their gradients are in the compute dtype
 *    be->dtype (float32 or float64 on the CPU; bfloat16 on the GPU). Everything that must not lose
 *    precision is in be->state_dtype (float32; float64 on cpu-f64) whatever the compute dtype: carried
 *    states (CEMA h, TimestepNorm mean/var), every saved statistic ([saved] mean, rstd, log-sum-exp) and
 *    per-token losses. Counts are int64, tokens and targets int32.
 *  - Data validation: ops check shapes and arguments (and fail with a message naming the op and the
 *    value); they do NOT scan data. Token ids and targets are checked once on the host where they enter
 *    (the model's entry points, the data loader); an op given an out-of-range id has undefined results.
 *  - Ops do not allocate memory on the hot path: scratch comes from the backend's workspace, which grows
 *    to the largest size asked for and is then reused (be->workspace_bytes reports it).
 *  - Forward fields are marked [in]/[out]/[saved]. [saved] buffers are written by forward and read by
 *    backward; the caller owns them (sizes are given next to each field).
 *  - Backward: parameter gradients ALWAYS accumulate (+=), so gradient accumulation over micro-batches is
 *    free. Input gradients are overwritten, unless `accumulate` is set, in which case they are added (+=).
 *  - A NULL gradient output means "not needed" and the op skips that work where it can.
 *  - Ops are deterministic: no atomics, reductions in a fixed order, independent of the thread count.
 *  - Errors go through mg_fatal / MG_CHECK (the error hook of src/common.h), never from inside an OpenMP
 *    parallel region: ops validate their arguments before they start.
 */
#ifndef MG_OPS_H
#define MG_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "../src/common.h"

/* ---------------------------------------------------------------------------------------------- */
/* Embedding lookup: out[t, :] = weight[tokens[t], :].                                                */
typedef struct {
    int64_t T;            /* tokens */
    int D, V;             /* width, vocabulary size */
    const int32_t *tokens; /* [in] T, each in [0, V) (checked on the host by the caller) */
    const void *weight;   /* [in] V x D */
    void *out;            /* [out] T x D */
    /* backward */
    const void *dout;     /* [in] T x D */
    void *dweight;        /* [acc] V x D; rows are accumulated in token order (deterministic) */
} MgEmbeddingArgs;

/* Linear layer: y = x W^T (+ b). */
typedef struct {
    int64_t T;            /* rows */
    int in, out;          /* in_features, out_features */
    const void *x;        /* [in] T x in */
    const void *weight;   /* [in] out x in */
    const void *bias;     /* [in] out, or NULL */
    void *y;              /* [out] T x out */
    /* backward */
    const void *dy;       /* [in] T x out */
    void *dx;             /* [out] T x in (or NULL); += when accumulate */
    void *dweight;        /* [acc] out x in (or NULL) */
    void *dbias;          /* [acc] out (or NULL) */
    int accumulate;
} MgLinearArgs;

/* TimestepNorm (spec §3): grouped cumulative mean/variance over time with the block-Welford merge.
 * The carried state is (count, mean, var) per (batch row, group); a fresh sequence has count 0, mean 0,
 * var 1 (pass NULL for all three *_in pointers). Padded steps (pad_mask[b*L+t] != 0) output 0 and leave
 * the state unchanged. Statistics only: with y == NULL the forward computes just the carried-out state
 * (count/mean/var_out; saved_* may then be NULL too): a sequence-parallel rank's local summary. */
typedef struct {
    int B, L, D, G;             /* G groups of D/G channels; D % G == 0 */
    double eps;                 /* inside the square root */
    const void *x;              /* [in] B x L x D */
    const uint8_t *pad_mask;    /* [in] B x L, nonzero = padding; NULL = no padding */
    const void *weight, *bias;  /* [in] D each; scale is (1 + weight) */
    const int64_t *count_in;    /* [in] B, backend memory (NULL = fresh state) */
    const void *mean_in, *var_in; /* [in] B x G, state dtype (NULL = fresh) */
    int64_t *count_out;         /* [out] B, backend memory (may be NULL) */
    void *mean_out, *var_out;   /* [out] B x G, state dtype (may be NULL) */
    void *y;                    /* [out] B x L x D (NULL: statistics only, see above) */
    void *saved_mean, *saved_rstd; /* [saved] B x L x G, state dtype: running mean and (var+eps)^-1/2 after step t */
    /* backward */
    const void *dy;             /* [in] B x L x D */
    const void *dmean_out, *dvar_out; /* [in] B x G, gradient w.r.t. the carried-out state (NULL = 0) */
    void *dx;                   /* [out] B x L x D; += when accumulate */
    void *dweight, *dbias;      /* [acc] D each */
    void *dmean_in, *dvar_in;   /* [out] B x G, gradient w.r.t. the carried-in state (may be NULL) */
    int accumulate;
} MgTimestepNormArgs;

/* CEMA (spec §2): per channel j and order n,
 *   h_t = p x_t + q h_{t-1},  y_t = Re(sum_n gamma_n h_{t,n}) + omega x_t,
 * with p, q, gamma computed from the raw parameters inside the op. State h is complex, stored as
 * (B, D, N, 2) = (re, im) in the state dtype; NULL h_in = zero state. Requires 1 <= N <= 64.
 * State only: with y == NULL the forward computes just h_out (a sequence-parallel rank's local pass). */
typedef struct {
    int B, L, D, N;
    const void *x;              /* [in] B x L x D */
    const void *alpha, *delta;  /* [in] D x N raw (sigmoid applied inside) */
    const void *theta;          /* [in] D raw */
    const void *gamma;          /* [in] D x N x 2 raw (re, im); scaled by 1/sqrt(N) inside */
    const void *omega;          /* [in] D (skip weight) */
    const void *h_in;           /* [in] B x D x N x 2 or NULL (zeros) */
    void *h_out;                /* [out] B x D x N x 2 final state, or NULL if not needed */
    void *y;                    /* [out] B x L x D (NULL: state only) */
    /* backward (recomputes the recurrence; nothing time-indexed is saved) */
    const void *dy;             /* [in] B x L x D */
    const void *dh_out;         /* [in] B x D x N x 2 gradient of h_out (complex gradient), NULL = 0 */
    void *dx;                   /* [out] B x L x D; += when accumulate */
    void *dalpha, *ddelta, *dtheta, *dgamma, *domega; /* [acc] raw-parameter gradients */
    void *dh_in;                /* [out] B x D x N x 2 (may be NULL) */
    int accumulate;
} MgCemaArgs;

/* RMSNorm over the last dimension: y = x / sqrt(mean(x^2) + eps) * (1 + weight); weight NULL = no affine. */
typedef struct {
    int64_t T;
    int D;
    double eps;
    const void *x;              /* [in] T x D */
    const void *weight;         /* [in] D or NULL */
    void *y;                    /* [out] T x D */
    void *saved_rstd;           /* [saved] T, state dtype */
    const void *dy;             /* [in] */
    void *dx;                   /* [out]; += when accumulate */
    void *dweight;              /* [acc] D (ignored when weight is NULL) */
    int accumulate;
} MgRMSNormArgs;

/* LayerNorm over the last dimension: y = (x - mean) * rstd * (1 + weight) + bias. */
typedef struct {
    int64_t T;
    int D;
    double eps;
    const void *x, *weight, *bias; /* [in] T x D, D, D */
    void *y;                    /* [out] T x D */
    void *saved_mean, *saved_rstd; /* [saved] T each, state dtype */
    const void *dy;
    void *dx;                   /* += when accumulate */
    void *dweight, *dbias;      /* [acc] */
    int accumulate;
} MgLayerNormArgs;

/* Shared-Z normalisation into Q and K (spec §4): per head h of width dz = Z/H,
 *   zh = z_h / sqrt(mean(z_h^2) + eps),  q = zh * (1 + gamma[0]) / sqrt(dz) + beta[0],
 *                                        k = zh * (1 + gamma[1]) / sqrt(dz) + beta[1]. */
typedef struct {
    int64_t T;
    int Z, H;
    double eps;
    const void *z;              /* [in] T x Z */
    const void *gamma, *beta;   /* [in] 2 x Z each (row 0 for Q, row 1 for K) */
    void *q, *k;                /* [out] T x Z each */
    void *saved_rstd;           /* [saved] T x H, state dtype */
    const void *dq, *dk;        /* [in] */
    void *dz;                   /* [out]; += when accumulate */
    void *dgamma, *dbeta;       /* [acc] 2 x Z */
    int accumulate;
} MgQKNormArgs;

/* Rotary embedding, interleaved pairs (2i, 2i+1), chunk-local positions:
 * position of token t = (pos_offset + t) mod chunk; angle = pos * base^(-2i/dh). In place allowed. */
typedef struct {
    int B, L, H, dh;            /* dh even */
    int chunk;                  /* positions restart every `chunk` tokens */
    int64_t pos_offset;         /* absolute position of t = 0 (decoding); 0 in training */
    double base;
    const void *x;              /* [in] B x L x H x dh */
    void *y;                    /* [out] same (may equal x) */
    const void *dy;             /* [in] */
    void *dx;                   /* [out] (may equal dy); += when accumulate */
    int accumulate;
} MgRopeArgs;

/* Chunk-wise causal softmax attention (spec §5), scale applied to QK^T (Megalodon: 1.0).
 * Training: Lq == Lk == L; the sequence is cut into chunks of c = min(chunk, L) tokens (L % c == 0) and
 * each chunk attends causally to itself only. Decoding: Lq < Lk <= chunk; one chunk, the Lq queries are
 * the last Lq positions of the Lk keys. Never holds more than one c x c score block per head per thread:
 * backward recomputes the scores from the saved log-sum-exp. */
typedef struct {
    int B, H, Dqk, Dv;
    int Lq, Lk, chunk;
    double scale;
    /* DropKey (attention dropout, MEGA/Megalodon style): before the softmax each visible score is set to
     * -inf with probability drop_p (no rescaling), except a query's own position, so no row is empty.
     * The mask is the counter-based stream of drop_seed with index = (task * nq + i) * nk + j and
     * task = ((drop_seq0 + b * stride) * chunks + drop_chunk0 + chunk) * H + h, stride = drop_seq_stride if
     * > 0 else 1, chunks = drop_chunks if > 0 else the chunks of this call: with the global sequence index
     * and chunk index (a sequence-parallel rank holds chunks drop_chunk0.. of sequences drop_seq0,
     * drop_seq0 + stride, ...: a data-parallel rank holds every DP-th sequence) every layout draws the same
     * mask as one process. drop_chunk_len > 0: the chunk's global length C when this call holds part of
     * one chunk (a rank whose slice is shorter than a chunk: its Lq queries are rows off .. off + Lq - 1
     * of the chunk, off = Lk - Lq, and its keys rows 0 .. Lk - 1); the index is then
     * (task * C + off + i) * C + j, the index one process gives that query and key. drop_heads > 0: the
     * model's head count when this call holds heads drop_head0 .. drop_head0 + H - 1 of it (a rank of the
     * all-to-all attention path): task uses the global head and head count.
     * Backward regenerates it. drop_p = 0: off. */
    double drop_p;
    uint64_t drop_seed;
    int64_t drop_seq0, drop_chunk0, drop_chunks, drop_seq_stride, drop_chunk_len, drop_heads, drop_head0;
    /* Block mode (ring attention across ranks): block = 1: each of the B rows holds queries q_row0 ..
     * q_row0 + Lq - 1 and keys k_row0 .. k_row0 + Lk - 1 of one chunk (chunk rows, k_row0 <= q_row0, any Lq and
     * Lk); query i sees key j iff k_row0 + j <= q_row0 + i (a block of keys wholly before the queries is
     * seen whole). With drop_p > 0, drop_chunk_len must be the chunk's length C: the DropKey index is
     * (task * C + q_row0 + i) * C + k_row0 + j, the one a whole-chunk call gives that query and key, and
     * only the query's own key (k_row0 + j == q_row0 + i) is never dropped. The forward writes o and lse of
     * this block alone (a row whose keys are all dropped: o = 0, lse = -inf); attention_merge combines the
     * blocks of a row. The backward reads saved_lse and o of the whole row (merged over every block) and
     * adds this block's share: dq (+= when accumulate), and dk, dv of this block's keys. */
    int block;
    int64_t q_row0, k_row0;
    const void *q;              /* [in] B x Lq x H x Dqk */
    const void *k;              /* [in] B x Lk x H x Dqk */
    const void *v;              /* [in] B x Lk x H x Dv */
    void *o;                    /* [out] B x Lq x H x Dv */
    void *saved_lse;            /* [saved] B x H x Lq, state dtype: log-sum-exp of each score row (may be NULL
                                 * when no backward) */
    const void *dout;           /* [in] B x Lq x H x Dv */
    void *dq, *dk, *dv;         /* [out]; += when accumulate */
    int accumulate;
} MgAttentionArgs;

/* Merge of two partial attentions over disjoint key blocks of the same query rows (online softmax):
 *   lse' = log(exp(lse) + exp(lse_b)),  o' = o * exp(lse - lse') + o_b * exp(lse_b - lse')
 * written over o and lse. A row with lse = -inf (no visible key yet) takes the other side as is. */
typedef struct {
    int B, Lq, H, Dv;
    void *o;           /* [in/out] B x Lq x H x Dv */
    void *lse;         /* [in/out] B x H x Lq, state dtype (like MgAttentionArgs.saved_lse) */
    const void *o_b;   /* [in] B x Lq x H x Dv */
    const void *lse_b; /* [in] B x H x Lq */
} MgAttnMergeArgs;

/* Elementwise activations on n elements.
 *   SILU:   y = silu(a)
 *   SWIGLU: y = silu(a) * b    (FFN SwiGLU, and the reset gate: O * silu(r) = SWIGLU(r, O))
 *   MUL:    y = a * b
 *   ADD:    y = a + b
 * Backward writes da (and db for binary ops) from dy; += when accumulate. */
typedef enum { MG_ACT_SILU = 0, MG_ACT_SWIGLU, MG_ACT_MUL, MG_ACT_ADD } MgActKind;
typedef struct {
    MgActKind kind;
    int64_t n;
    const void *a, *b;          /* [in] (b unused for SILU) */
    void *y;                    /* [out] */
    const void *dy;
    void *da, *db;              /* [out] (may be NULL); += when accumulate */
    int accumulate;
} MgActArgs;

/* Dropout with a counter-based RNG: element i is kept iff hash(seed, counter(i)) >= p, and scaled by
 * 1/(1-p). Backward regenerates the same mask, so nothing is saved. p == 0 is an exact copy.
 * counter(i) = offset + i when seg_len == 0; otherwise the n elements are segments of seg_len elements
 * placed seg_stride apart in the counter space: counter(i) = offset + (i / seg_len) * seg_stride +
 * i % seg_len. This is how a slice of a larger tensor draws the mask the whole tensor would (e.g. the rows
 * of a sequence-parallel slice: seg_len = L_local * D, seg_stride = L_global * D). */
typedef struct {
    int64_t n;
    double p;
    uint64_t seed, offset;
    int64_t seg_len, seg_stride;
    const void *x;              /* [in] */
    void *y;                    /* [out] (may equal x) */
    const void *dy;
    void *dx;                   /* [out] (may equal dy); += when accumulate */
    int accumulate;
} MgDropoutArgs;

/* Softmax cross-entropy over the vocabulary, fused with its backward.
 * Forward writes per-token losses (0 at ignored targets). If dlogits is non-NULL the gradient
 * grad_scale * (softmax(logits) - onehot(target)) is written there (it may alias logits: in place), and
 * rows with target == ignore_index get 0. Targets are validated on the host by the caller (see the
 * conventions); a target outside [0, V) that reaches the op is treated as ignored (never read out of bounds). */
typedef struct {
    int64_t T;
    int V;
    int ignore_index;
    const void *logits;         /* [in] T x V */
    const int32_t *targets;     /* [in] T */
    double grad_scale;          /* usually 1 / (number of counted tokens) */
    void *losses;               /* [out] T, in the backend's state dtype (fp32, or fp64 on cpu-f64) */
    void *dlogits;              /* [out] T x V or NULL */
} MgCrossEntropyArgs;

/* AdamW with decoupled weight decay on the fp32 master weights (moments fp32 too):
 *   g = grad * grad_scale;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   master -= lr * ( (m / (1-b1^step)) / (sqrt(v / (1-b2^step)) + eps) + weight_decay * master )
 * The gradient is in the compute dtype. When the compute parameters are a separate copy (bf16 on the GPU,
 * float64 on cpu-f64), param_out receives the updated masters in the compute dtype; when the masters ARE
 * the parameters (float32), param_out is NULL. */
typedef struct {
    int64_t n;
    float *param;               /* [in/out] fp32 masters */
    const void *grad;           /* [in] compute dtype */
    void *param_out;            /* [out] compute dtype, or NULL */
    float *m, *v;
    double lr, beta1, beta2, eps, weight_decay, grad_scale;
    int64_t step;               /* 1-based, after increment */
} MgAdamWArgs;

/* Element-wise conversion between dtypes (float32, float64, bfloat16 with round-to-nearest-even). */
typedef struct {
    int64_t n;
    MgDtype src_dtype, dst_dtype;
    const void *src;            /* [in] */
    void *dst;                  /* [out]; may equal src only when the dtypes have the same size */
} MgConvertArgs;

/* ---------------------------------------------------------------------------------------------- */
/* The one op list: (name, argument struct) of every op with the signature void(const MgBackend*, const Args*).
 * Backend tables, the profiling wrapper and the op harness are generated from it, so an op added here is
 * an op every backend must provide. */
#define MG_OP_LIST(X)                                                                                  \
    X(embedding_forward, MgEmbeddingArgs)                                                              \
    X(embedding_backward, MgEmbeddingArgs)                                                             \
    X(linear_forward, MgLinearArgs)                                                                    \
    X(linear_backward, MgLinearArgs)                                                                   \
    X(timestep_norm_forward, MgTimestepNormArgs)                                                       \
    X(timestep_norm_backward, MgTimestepNormArgs)                                                      \
    X(cema_forward, MgCemaArgs)                                                                        \
    X(cema_backward, MgCemaArgs)                                                                       \
    X(rmsnorm_forward, MgRMSNormArgs)                                                                  \
    X(rmsnorm_backward, MgRMSNormArgs)                                                                 \
    X(layernorm_forward, MgLayerNormArgs)                                                              \
    X(layernorm_backward, MgLayerNormArgs)                                                             \
    X(qknorm_forward, MgQKNormArgs)                                                                    \
    X(qknorm_backward, MgQKNormArgs)                                                                   \
    X(rope_forward, MgRopeArgs)                                                                        \
    X(rope_backward, MgRopeArgs)                                                                       \
    X(attention_forward, MgAttentionArgs)                                                              \
    X(attention_backward, MgAttentionArgs)                                                             \
    X(attention_merge, MgAttnMergeArgs)                                                                \
    X(act_forward, MgActArgs)                                                                          \
    X(act_backward, MgActArgs)                                                                         \
    X(dropout_forward, MgDropoutArgs)                                                                  \
    X(dropout_backward, MgDropoutArgs)                                                                 \
    X(cross_entropy, MgCrossEntropyArgs)                                                                \
    X(adamw_update, MgAdamWArgs)                                                                       \
    X(convert, MgConvertArgs)

typedef struct MgBackend MgBackend;
typedef struct MgEvent MgEvent;

/* Streams: ops run in order on the compute stream; a transport may use the comm stream so that
 * communication overlaps compute. Events order work across streams and with the host. */
enum { MG_STREAM_COMPUTE = 0, MG_STREAM_COMM = 1 };

struct MgBackend {
    const char *name;           /* "cpu-f32", "cpu-f64", "cuda-bf16", "cuda-fp32", "cuda-emu-bf16", ... */
    MgDtype dtype;              /* compute dtype: activations, parameters and their gradients */
    MgDtype state_dtype;        /* carried states, saved statistics, losses (see the conventions above) */
    int device;                 /* device id this instance drives (0 on the CPU) */
    void *ctx;                  /* backend private (streams, handles, workspace) */

    /* memory (device memory on accelerators; plain host memory on the CPU) */
    void *(*alloc)(const MgBackend *be, size_t bytes);   /* zero-filled */
    void (*free)(const MgBackend *be, void *p);
    void (*memset0)(const MgBackend *be, void *p, size_t bytes);
    void (*to_device)(const MgBackend *be, void *dst, const void *src_host, size_t bytes);
    void (*to_host)(const MgBackend *be, void *dst_host, const void *src, size_t bytes);
    void (*copy)(const MgBackend *be, void *dst, const void *src, size_t bytes);
    void (*synchronize)(const MgBackend *be);   /* host waits for all work of this backend */

    /* Events: record marks the current end of `stream`; stream_wait makes later work of `stream` wait
     * for it; event_synchronize makes the host wait. The CPU backend runs every op synchronously in the
     * caller's thread: its events are complete when recorded and waiting is free. */
    MgEvent *(*event_create)(const MgBackend *be);
    void (*event_destroy)(const MgBackend *be, MgEvent *ev);
    void (*event_record)(const MgBackend *be, MgEvent *ev, int stream);
    void (*stream_wait)(const MgBackend *be, int stream, MgEvent *ev);
    void (*event_synchronize)(const MgBackend *be, MgEvent *ev);
    /* The native handle of a stream for a transport (cudaStream_t for NCCL); NULL on the CPU. */
    void *(*native_stream)(const MgBackend *be, int stream);

    /* Bytes the op workspace holds now, and (grows != NULL) how many times it has grown since creation. */
    size_t (*workspace_bytes)(const MgBackend *be, int64_t *grows);

    /* one function pointer per entry of MG_OP_LIST */
#define MG_OP_FIELD(name, Args) void (*name)(const MgBackend *be, const Args *a);
    MG_OP_LIST(MG_OP_FIELD)
#undef MG_OP_FIELD

    /* Sum of squares of n elements of x (storage dtype), accumulated in double, fixed order. */
    double (*sum_squares)(const MgBackend *be, const void *x, int64_t n);
    /* y[i] += alpha * x[i] (storage dtype). */
    void (*axpy)(const MgBackend *be, int64_t n, double alpha, const void *x, void *y);
    /* x[i] *= alpha (storage dtype). */
    void (*scale)(const MgBackend *be, int64_t n, double alpha, void *x);
};

/* ---- lifecycle ----------------------------------------------------------------------------------
 * A backend instance drives one device and owns its workspace (and, on a GPU, its streams, handles and
 * memory pool). Create one per process and device, destroy it after every model using it is freed. */
typedef struct {
    int threads;                /* CPU: OpenMP/BLAS threads (0 = leave the default) */
    /* GPU: when > 0, the device is local_rank % (GPUs of this machine) instead of the `device` argument
     * (one GPU per rank of an mpirun job; rank 0 of a node takes GPU 0). 0 or negative: `device`. */
    int local_rank;
} MgBackendOptions;

/* name: "cpu" (= "cpu-f32"), "cpu-f64", "cuda" (bf16) / "cuda-fp32", "cuda-emu" / "cuda-emu-fp32" (the CUDA
 * kernels on the CPU emulator, kernels/cuda/emu/). device: which device of that
 * kind (must be 0 for the CPU). opts may be NULL. Returns NULL with a message in err (naming what to do)
 * if the backend is not built in, the device does not exist, or it cannot be initialised. */
MgBackend *mg_backend_create(const char *name, int device, const MgBackendOptions *opts, char *err, size_t errlen);
void mg_backend_destroy(MgBackend *be);

/* Process-wide default instances, created on first use and never destroyed (tools, tests). Exits with a
 * clear message if the backend is not built in or no device is present. */
const MgBackend *mg_backend_get(const char *name);

/* The CPU backends' default instances (the same objects mg_backend_get returns for "cpu-f32"/"cpu-f64";
 * tests call ops through them directly). Thread count comes from OpenMP (OMP_NUM_THREADS / mg_set_threads). */
extern const MgBackend mg_cpu_backend_f32;
extern const MgBackend mg_cpu_backend_f64;

/* Argument checks shared by the backends (kernels/validate.c): fatal with the op's message on bad
 * arguments. The attention geometry: chunks per batch row, queries and keys per chunk, and the causal
 * offset (query i sees keys j <= i + off). */
typedef struct {
    int nchunks;
    int nq, nk, off;
} MgAttGeom;
MgAttGeom mg_attention_geometry(const MgAttentionArgs *a, const char *who);
void mg_timestep_norm_validate(const MgTimestepNormArgs *a, const char *op, int backward);

/* Profiling: a backend that forwards to `inner` and times every op (kernels/profile.c). */
const MgBackend *mg_backend_profile_wrap(const MgBackend *inner);
void mg_profile_reset(void);
/* Per op: ms, %, calls per step, GB/s of the minimum-traffic model and TFLOP/s (kernels/profile.c states
 * the conventions); with ceilings set (> 0), also the fraction of the ceiling each op is bound by. */
void mg_profile_report(FILE *f, int steps);
/* The measured ceilings (device-to-device copy GB/s, matrix-product TFLOP/s) the report is read against. */
void mg_profile_set_ceilings(double copy_gbs, double gemm_tflops);

/* Set the number of CPU threads used by OpenMP regions and BLAS (0 = leave the default). */
void mg_set_threads(int n);
int mg_get_threads(void);

#endif
