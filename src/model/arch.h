/* What an architecture provides to the model driver, and the driver's internals they share.
 *
 * An architecture (megalodon.c, llama.c) is a table of functions and sizes (MgArch):
 *   - its parameters (declare_params: names, shapes, initialisation kinds; the driver lays them out);
 *   - per-layer views of the parameter/gradient arenas (resolve_layer into a struct of its own);
 *   - its carried state (a list of per-layer and final tensors with their fresh values and groups);
 *   - its activations (plan_layer / plan_final / plan_scratch add named, typed buffers to a plan; the
 *     same functions size the training arena, the decoder's work buffers and `megalodon info`);
 *   - the graph: layer_forward / layer_backward over the residual stream, and the final norm;
 *   - decoding: a per-layer attention cache and how many tokens the next decoder piece may hold.
 * The driver (driver.c) does everything else; adding an architecture never copies it. */
#ifndef MG_MODEL_ARCH_H
#define MG_MODEL_ARCH_H

#include "../model.h"

#define MG_STATE_MAX 4 /* carried-state tensors per layer */

/* ---- plans: named, typed buffers laid out in one arena ------------------------------------------------- */
typedef enum {
    MG_BUF_ACT,  /* compute dtype: activations and their gradients */
    MG_BUF_STAT, /* state dtype: saved statistics, log-sum-exp, losses */
    MG_BUF_I32,  /* tokens, targets */
} MgBufKind;

typedef struct {
    const char *name;
    MgDtype dtype;
    int64_t elems;
    size_t bytes; /* rounded up to 64 */
    void **slot;  /* where the pointer goes (NULL: size only) */
} MgPlanEntry;

typedef struct {
    MgDtype act, stat;
    MgPlanEntry *e;
    int n, cap;
} MgPlan;

void mg_plan_init(MgPlan *p, MgDtype act, MgDtype stat);
void mg_plan_free(MgPlan *p);
void mg_plan_add(MgPlan *p, const char *name, MgBufKind kind, int64_t elems, void **slot);
size_t mg_plan_bytes(const MgPlan *p);
/* Point every slot into base (which holds mg_plan_bytes bytes). */
void mg_plan_place(const MgPlan *p, void *base);

/* ---- carried state ---------------------------------------------------------------------------------------- */
typedef struct {
    const char *name;   /* "timestep_norm.count" */
    const char *tensor; /* its short name within the group ("count") */
    int group;          /* exchange group within the layer (see MgStateExchange) */
    const char *group_name;
    int is_count;       /* int64 (no gradient) instead of the state dtype */
    int64_t per_seq;    /* elements per sequence */
    double fresh;       /* value of a fresh state */
} MgStateSpec;

/* One layer's carried state for a pass: entry k of the architecture's spec list. */
typedef struct {
    const void *in[MG_STATE_MAX];   /* NULL: fresh */
    void *out[MG_STATE_MAX];        /* NULL: not wanted */
    const void *dout[MG_STATE_MAX]; /* backward: gradient of out (NULL: 0) */
    void *din[MG_STATE_MAX];        /* backward: gradient of in (NULL: not wanted) */
} MgLayerState;

/* ---- one pass -------------------------------------------------------------------------------------------- */
typedef struct MgDecodeStep MgDecodeStep;

typedef struct {
    MgModel *m;
    const MgConfig *c;
    const MgBackend *be;
    int B, L;
    int64_t T;                  /* B * L rows */
    const MgForwardOpts *opts;  /* dropout and layout; NULL or !training: no dropout */
    const MgModelHooks *hooks;  /* NULL: none */
    MgDecodeStep *dec;          /* decoding: the step's cache and position; NULL in training */
    void *tmp_d;                /* backward: a free T x d compute-dtype buffer the layer may use */
} MgPass;

/* Decoding: where the layers' caches are and how far the sequence has come. */
struct MgDecodeStep {
    void *caches;               /* n_layers cache structs of arch->cache_size bytes each */
    int64_t pos;                /* tokens consumed before this piece */
};

/* The state exchange of one layer and group, run by the architecture around its state ops; these call
 * the hooks (no-ops without them). The architecture runs the local pass (fresh state, statistics or
 * state only) into mg_pass_local's buffers before state_begin. op_args: the op's argument struct, handed
 * to the hook (its parameters). */
int mg_pass_exchanges(const MgPass *ps);   /* 1 when state_begin/state_end hooks are set */
void mg_pass_state_begin(MgPass *ps, int layer, int group, const MgLayerState *st, const void *op_args);
void mg_pass_state_end(MgPass *ps, int layer, int group, const MgLayerState *st, const void *op_args);
void mg_pass_state_done(MgPass *ps, int layer, int group, const MgLayerState *st, const void *op_args);
void mg_pass_dstate_get(MgPass *ps, int layer, int group, MgLayerState *st);
/* Backward by scan (MgModelHooks.dstate_scan): 1 when the pass runs it. mg_pass_dstate_scan hands the
 * slice's own din over and gets dout into st->dout; mg_pass_din_extra is where the second backward (for
 * dout alone) writes its share of din (k: the state entry), mg_pass_zeros a zero T x width buffer (compute
 * dtype) for its output gradient. */
int mg_pass_scan_backward(const MgPass *ps);
void mg_pass_dstate_scan(MgPass *ps, int layer, int group, MgLayerState *st, const void *op_args);
void *mg_pass_din_extra(MgPass *ps, int layer, int k);
void *mg_pass_zeros(MgPass *ps, int64_t elems);
/* y += x over n elements of the state dtype (backend memory). */
void mg_state_axpy(MgPass *ps, int64_t n, const void *x, void *y);
void mg_pass_dstate_done(MgPass *ps, int layer, int group, const MgLayerState *st);
/* The buffer a local pass writes entry k of layer `layer`'s summary to. */
void *mg_pass_local(MgPass *ps, int layer, int k);

/* Dropout helpers over the pass's layout (no-ops when not training or p == 0). `site` numbers the
 * dropout sites of a layer; `width` is the feature count of a T x width tensor. */
void mg_dropout_fwd(const MgPass *ps, double p, int layer, int site, int64_t width, void *x);
void mg_dropout_bwd(const MgPass *ps, double p, int layer, int site, int64_t width, const void *dy, void *dx);
/* DropKey fields of an attention call (only while training with attention_dropout > 0). */
void mg_attention_dropout(const MgPass *ps, int layer, int site, MgAttentionArgs *at);
/* Attention across ranks (MgModelHooks.attn_kv): with the hooks, point at's keys and values (and, in the
 * backward, their gradient buffers) at the chunk's context and set Lk; after the backward hand the
 * gradients back (into dk, dv: this slice's). No-ops without the hooks. RoPE positions of a pass start at
 * mg_pass_rope_offset. */
/* The attention of a layer: the op, or, when this pass holds part of a chunk, the hooks' path
 * (attn_run, or attn_kv + the op). */
void mg_pass_attention_forward(MgPass *ps, int layer, MgAttentionArgs *at);
void mg_pass_attention_backward(MgPass *ps, int layer, MgAttentionArgs *at);
int64_t mg_pass_rope_offset(const MgPass *ps);
/* The length of the pass's sequences (MgForwardOpts.seq_len when set, else the pass's own L). */
int64_t mg_pass_global_len(const MgPass *ps);
/* The position of the second piece of a two-piece pass (MgForwardOpts.pos1), 0 for one piece. */
int64_t mg_pass_pos1(const MgPass *ps);

/* Shorthands over the backend. */
void mg_linear_fwd(const MgPass *ps, int64_t T, int in, int out, const void *x, const void *w, const void *b,
                   void *y);
void mg_linear_bwd(const MgPass *ps, int64_t T, int in, int out, const void *x, const void *w, const void *dy,
                   void *dx, void *dw, void *db, int accumulate);
void mg_act_fwd(const MgPass *ps, MgActKind kind, int64_t n, const void *a, const void *b, void *y);
void mg_act_bwd(const MgPass *ps, MgActKind kind, int64_t n, const void *a, const void *b, const void *dy, void *da,
                void *db, int accumulate);
/* base + elems elements of the compute / state dtype. */
void *mg_act_at(const MgModel *m, const void *base, int64_t elems);
void *mg_stat_at(const MgModel *m, const void *base, int64_t elems);

/* ---- the architecture ------------------------------------------------------------------------------------ */
typedef struct MgArch {
    const char *name;
    void (*declare_params)(const MgConfig *c, MgParamTable *t);
    size_t weights_size; /* bytes of the per-layer parameter view */
    void (*resolve_layer)(const MgModel *m, void *arena, int l, void *view);

    /* Carried state: the tensors of every layer (the same list for each) and of the final norm. */
    void (*describe_state)(const MgConfig *c, MgStateSpec *layer, int *n_layer, MgStateSpec *final, int *n_final);
    /* Refuse a pass layout the graph cannot run: local length L at global position pos0 of sequences of
     * global length Lg (Megalodon: pieces of whole attention chunks; with attention across ranks
     * (attn_split: the hooks bring the chunk's earlier keys and values) also a piece that divides a chunk).
     * 0 or -1 with err. */
    int (*check_layout)(const MgConfig *c, int L, int64_t pos0, int64_t Lg, int attn_split, char *err,
                        size_t errlen);
    /* 1: a pass may hold two pieces of its sequences (MgForwardOpts.pos1, with the attention hooks): only
     * an architecture that carries no state along the sequence (llama) */
    int two_pieces;

    size_t act_size, final_size, scratch_size; /* bytes of the per-layer / final / scratch structs */
    void (*plan_layer)(const MgConfig *c, MgPlan *p, void *act, int64_t T, int B);
    void (*plan_final)(const MgConfig *c, MgPlan *p, void *fin, int64_t T, int B);
    void (*plan_scratch)(const MgConfig *c, MgPlan *p, void *scratch, int64_t T, int B);

    /* x -> xout (T x d); st: the layer's carried state. */
    void (*layer_forward)(MgPass *ps, int l, void *act, const void *x, void *xout, MgLayerState *st);
    /* gx: dL/dxout on entry, dL/dx on return (in place). */
    void (*layer_backward)(MgPass *ps, int l, void *act, const void *x, void *gx, void *scratch, MgLayerState *st);
    void (*final_forward)(MgPass *ps, void *fin, const void *x, void *y, MgLayerState *st);
    void (*final_backward)(MgPass *ps, void *fin, const void *x, const void *dy, void *dx, MgLayerState *st);

    /* Decoding: per-layer cache (planned for B sequences), the most tokens one piece may hold, and how
     * many the next piece may hold at position pos. */
    size_t cache_size;
    void (*plan_cache)(const MgConfig *c, MgPlan *p, void *cache, int B);
    int (*decode_piece_max)(const MgConfig *c);
    int (*decode_room)(const MgConfig *c, int64_t pos);
    /* The most tokens a decoder can consume per sequence (Llama: its KV cache of seq_len positions); NULL =
     * unlimited (Megalodon: the state carries the context). */
    int64_t (*decode_context)(const MgConfig *c);

    /* Training FLOPs per token of the attention (design.md convention: causal useful FLOPs of QK^T and PV,
     * forward + 2x backward); mg_flops_per_token adds 6 x the matrix-product parameters. */
    double (*attn_flops_per_token)(const MgConfig *c);
} MgArch;

extern const MgArch mg_arch_megalodon;
extern const MgArch mg_arch_llama;
/* The architecture of a name, or NULL; the known names as "megalodon, llama". */
const MgArch *mg_arch_find(const char *name);
const char *mg_arch_names(void);

/* ---- the driver's model (shared with the decoder) ---------------------------------------------------------- */
struct MgModel {
    MgConfig cfg;
    const MgArch *arch;
    const MgBackend *be;
    size_t es, ss; /* element size of the compute and state dtypes */
    MgParamTable table;
    void *params, *grads;
    float *masters;   /* == params when the compute dtype is fp32 */
    char *w, *gw;     /* n_layers per-layer views of params / grads (arch->weights_size each) */
    void *embed, *head, *g_embed, *g_head;

    /* gradient buckets in backward order */
    int n_buckets;
    int64_t *bucket_off, *bucket_len;
    int bucket_layer0;  /* index of layer n_layers-1's bucket (layers follow in descending order) */

    /* activations, sized for cap_T rows and cap_B sequences */
    int64_t cap_T;
    int cap_B;
    void *arena;
    size_t arena_bytes;
    MgPlan plan;
    void **x;         /* n_layers + 1 residual-stream tensors (T x d) */
    char *act;        /* n_layers per-layer activation structs */
    void *fin;        /* the final norm's struct */
    void *scratch;    /* the backward scratch struct */
    void *fn_y;       /* final norm output (T x d) */
    void *gx, *gC;    /* backward: residual gradient and a free T x d buffer */
    void *logits, *losses;
    int32_t *tokens_dev, *targets_dev;

    /* carried state: the architecture's per-layer and final tensors */
    MgStateSpec lstate[MG_STATE_MAX], fstate[MG_STATE_MAX];
    int n_lstate, n_fstate;
    int n_state;      /* tensors in an MgModelState: n_layers * n_lstate + n_fstate */
    /* hooks: buffers for exchanged state (allocated for the batch size on first use) */
    MgModelState *x_in, *x_local, *x_dout, *x_din, *x_din2;
    void *zeros;            /* backward by scan: a zero buffer (compute dtype) */
    int64_t zeros_elems;
};

struct MgModelState {
    int B;
    int n;
    void **ptr;
    void *arena;
    size_t bytes;
};

/* Index of layer l's (l == n_layers: final) state entry k in an MgModelState, and its spec. */
int mg_state_index(const MgModel *m, int l, int k);
const MgStateSpec *mg_state_spec(const MgModel *m, int l, int k);
int mg_state_per_layer(const MgModel *m, int l);

/* Layer l's parameter / gradient view. */
static inline void *mg_layer_w(const MgModel *m, int l) { return m->w + (size_t)l * m->arch->weights_size; }
static inline void *mg_layer_gw(const MgModel *m, int l) { return m->gw + (size_t)l * m->arch->weights_size; }

/* Embedding forward (lookup, scale, dropout) of T host-checked device tokens into out. */
void mg_embed_forward(MgPass *ps, const int32_t *tokens_dev, void *out);

#endif
