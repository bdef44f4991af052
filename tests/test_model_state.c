/* The model as a sequence-parallel rank uses it: carried state forward and state gradients backward
 * through the whole model, the communication hooks, dropout masks that do not depend on the layout, and
 * the claims "a training step allocates nothing" and "decoder memory is constant", measured.
 *
 * float64 exactness checks use a tiny Megalodon with a 512-token vocabulary (the head's size does not
 * matter for what is tested, and it keeps the float64 runs fast). */
#include <math.h>
#include <string.h>

#include "../src/config.h"
#include "../src/model.h"
#include "test_util.h"

/* Columns [t0, t0 + len) of each of the B rows of a B x L array. */
static int32_t *slice_cols(const int32_t *x, int B, int L, int t0, int len) {
    int32_t *o = malloc(sizeof(int32_t) * (size_t)B * (size_t)len);
    for (int b = 0; b < B; b++) memcpy(o + (size_t)b * len, x + (size_t)b * L + t0, sizeof(int32_t) * (size_t)len);
    return o;
}

/* Normwise relative difference of two float64 arrays: max |a - b| / max |b| (absolute when b is all 0). */
static double normwise(const double *a, const double *b, int64_t n) {
    double d = 0.0, s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        d = fmax(d, fabs(a[i] - b[i]));
        s = fmax(s, fabs(b[i]));
    }
    return s > 0 ? d / s : d;
}

/* Worst per-tensor normwise difference of two gradient arenas. */
static double grads_diff(const MgModel *m, const double *a, const double *b, const char **worst) {
    const MgParamTable *t = mg_model_params_table(m);
    double w = 0.0;
    for (int i = 0; i < t->count; i++) {
        double e = normwise(a + t->params[i].offset, b + t->params[i].offset, t->params[i].numel);
        if (!(e <= w)) {
            w = e;
            if (worst) *worst = t->params[i].name;
        }
    }
    return w;
}

/* Worst normwise difference over the float tensors of two states (counts compared exactly). */
static double state_diff(const MgModel *m, const MgModelState *a, const MgModelState *b, int with_counts) {
    double w = 0.0;
    for (int i = 0; i < mg_model_state_count(m); i++) {
        MgDtype dt;
        int64_t n;
        const void *pa = mg_model_state_tensor(m, a, i, NULL, NULL, &dt, &n);
        const void *pb = mg_model_state_tensor(m, b, i, NULL, NULL, NULL, NULL);
        if (dt == MG_I64) {
            if (with_counts && memcmp(pa, pb, sizeof(int64_t) * (size_t)n)) w = INFINITY;
            continue;
        }
        w = fmax(w, normwise(pa, pb, n));
    }
    return w;
}

/* ---- state gradients: 1 piece vs 2, 3, 4 pieces ------------------------------------------------------------ */
typedef struct {
    MgModel *m;
    const int32_t *tok, *tgt;
    int B, L;
    MgForwardOpts opts;
    double scale; /* 1 / counted targets of the whole sequence */
} Seq;

/* The whole sequence in one step from state0: loss, gradients (copied to g) and dstate_in. */
static double whole_step(const Seq *s, const MgModelState *state0, double *g, MgModelState *dstate_in) {
    MgModel *m = s->m;
    mg_model_zero_grads(m);
    MgPassArgs a = {.tokens = s->tok, .targets = s->tgt, .B = s->B, .L = s->L, .grad_scale = s->scale,
                    .opts = s->opts, .state_in = state0, .dstate_in = dstate_in};
    a.opts.pos0 = 0;
    a.opts.seq_len = s->L;
    double loss = mg_model_step(m, &a, NULL);
    memcpy(g, mg_model_grads(m), sizeof(double) * (size_t)mg_model_params_table(m)->total);
    return loss;
}

/* The same sequence cut into pieces: a forward sweep passing the state (what each piece receives), then
 * the pieces' steps from the last to the first, each taking the next piece's state gradient as the
 * gradient of its outgoing state. Exactly a sequence-parallel rank's work, one rank after the other. */
static double piece_steps(const Seq *s, const MgModelState *state0, const int *lens, int np, double *g,
                          MgModelState *dstate_in) {
    MgModel *m = s->m;
    MgModelState *st[5] = {0}, *dst[5] = {0};
    for (int k = 0; k <= np; k++) {
        st[k] = mg_model_state_create(m, s->B);
        dst[k] = mg_model_state_create(m, s->B);
    }
    mg_model_state_copy(m, st[0], state0);
    int t0s[5];
    int32_t *tok[4], *tgt[4];
    for (int k = 0, t0 = 0; k < np; t0 += lens[k], k++) {
        t0s[k] = t0;
        tok[k] = slice_cols(s->tok, s->B, s->L, t0, lens[k]);
        tgt[k] = slice_cols(s->tgt, s->B, s->L, t0, lens[k]);
        MgPassArgs a = {.tokens = tok[k], .targets = tgt[k], .B = s->B, .L = lens[k], .opts = s->opts,
                        .state_in = st[k], .state_out = st[k + 1]};
        a.opts.pos0 = t0;
        a.opts.seq_len = s->L;
        mg_model_eval(m, &a, NULL);
    }
    mg_model_zero_grads(m);
    double loss = 0.0;
    for (int k = np - 1; k >= 0; k--) {
        MgPassArgs a = {.tokens = tok[k], .targets = tgt[k], .B = s->B, .L = lens[k], .grad_scale = s->scale,
                        .opts = s->opts, .state_in = st[k], .dstate_out = k + 1 < np ? dst[k + 1] : NULL,
                        .dstate_in = dst[k]};
        a.opts.pos0 = t0s[k];
        a.opts.seq_len = s->L;
        loss += mg_model_step(m, &a, NULL);
    }
    memcpy(g, mg_model_grads(m), sizeof(double) * (size_t)mg_model_params_table(m)->total);
    mg_model_state_copy(m, dstate_in, dst[0]);
    for (int k = 0; k < np; k++) free(tok[k]), free(tgt[k]);
    for (int k = 0; k <= np; k++) {
        mg_model_state_free(m, st[k]);
        mg_model_state_free(m, dst[k]);
    }
    return loss;
}

/* A non-fresh starting state: the state after a random prefix of 32 tokens. */
static MgModelState *prefix_state(MgModel *m, int B, int V) {
    MgModelState *s = mg_model_state_create(m, B);
    int32_t pre[2 * 32], pt[2 * 32];
    tu_random_ids(pre, B * 32, V);
    tu_random_ids(pt, B * 32, V);
    mg_model_forward_loss(m, pre, pt, B, 32, NULL, NULL, s, NULL);
    return s;
}

static void test_state_gradients(double dropout) {
    MgConfig cfg;
    tu_tiny_megalodon(&cfg, 512);
    cfg.dropout = cfg.hidden_dropout = cfg.attention_dropout = dropout;
    MgModel *m = mg_model_create(&cfg, &mg_cpu_backend_f64);
    mg_model_init_weights(m, 21);
    tu_perturb_zero_init(mg_model_params_table(m), mg_model_params(m), 0.1);
    const int B = 2, L = 64, V = cfg.vocab_size;
    const int64_t P = mg_model_params_table(m)->total;
    int32_t tok[2 * 64], tgt[2 * 64];
    tu_random_ids(tok, B * L, V);
    tu_random_ids(tgt, B * L, V);
    tgt[5] = -1;
    Seq s = {m, tok, tgt, B, L, {.seed = 77, .training = dropout > 0}, 1.0 / (B * L - 1)};
    MgModelState *state0 = prefix_state(m, B, V);

    double *gw = malloc(sizeof(double) * (size_t)P), *gp = malloc(sizeof(double) * (size_t)P);
    MgModelState *dw = mg_model_state_create(m, B), *dp = mg_model_state_create(m, B);
    const double lw = whole_step(&s, state0, gw, dw);
    {
        double mx = 0.0;
        for (int i = 0; i < mg_model_state_count(m); i++) {
            MgDtype dt;
            int64_t n;
            const double *p = mg_model_state_tensor(m, dw, i, NULL, NULL, &dt, &n);
            for (int64_t j = 0; dt != MG_I64 && j < n; j++) mx = fmax(mx, fabs(p[j]));
        }
        tu_check(mx > 1e-6, "the gradient of a non-fresh incoming state is not zero", "max %.3e", mx);
    }
    const int splits[3][4] = {{32, 32}, {16, 16, 32}, {16, 16, 16, 16}};
    const int nps[3] = {2, 3, 4};
    for (int k = 0; k < 3; k++) {
        const double lp = piece_steps(&s, state0, splits[k], nps[k], gp, dp);
        const char *worst = "";
        char name[200];
        snprintf(name, sizeof name, "state gradients: %d pieces = 1 (float64%s): loss", nps[k],
                 dropout > 0 ? ", all dropouts 0.1" : "");
        tu_check_err(name, fabs(lp - lw) / fabs(lw), 1e-12);
        const double eg = grads_diff(m, gp, gw, &worst);
        snprintf(name, sizeof name, "state gradients: %d pieces = 1 (float64%s): every parameter gradient, worst %s",
                 nps[k], dropout > 0 ? ", all dropouts 0.1" : "", worst);
        tu_check_err(name, eg, 1e-12);
        snprintf(name, sizeof name, "state gradients: %d pieces = 1 (float64%s): gradient of the incoming state",
                 nps[k], dropout > 0 ? ", all dropouts 0.1" : "");
        tu_check_err(name, state_diff(m, dp, dw, 0), 1e-12);
    }
    free(gw);
    free(gp);
    mg_model_state_free(m, dw);
    mg_model_state_free(m, dp);
    mg_model_state_free(m, state0);
    mg_model_free(m);
}

/* dL/d(state_in) against finite differences: a directional derivative over every float tensor of a
 * non-fresh incoming state (relative steps, so the variances stay positive). */
typedef struct {
    MgModel *m;
    const int32_t *tok, *tgt;
    MgModelState *st;
    double scale;
} StateLoss;

static double state_loss(void *v) {
    StateLoss *c = v;
    return c->scale * mg_model_forward_loss(c->m, c->tok, c->tgt, 2, 32, NULL, c->st, NULL, NULL);
}

static void test_state_gradient_fd(void) {
    MgConfig cfg;
    tu_tiny_megalodon(&cfg, 512);
    MgModel *m = mg_model_create(&cfg, &mg_cpu_backend_f64);
    mg_model_init_weights(m, 5);
    tu_perturb_zero_init(mg_model_params_table(m), mg_model_params(m), 0.1);
    const int B = 2, L = 32;
    int32_t tok[64], tgt[64];
    tu_random_ids(tok, B * L, cfg.vocab_size);
    tu_random_ids(tgt, B * L, cfg.vocab_size);
    MgModelState *st = prefix_state(m, B, cfg.vocab_size), *dst = mg_model_state_create(m, B);
    StateLoss c = {m, tok, tgt, st, 1.0 / (B * L)};
    mg_model_zero_grads(m);
    MgPassArgs a = {.tokens = tok, .targets = tgt, .B = B, .L = L, .grad_scale = c.scale, .state_in = st,
                    .dstate_in = dst};
    mg_model_step(m, &a, NULL);
    double worst = 0.0;
    const char *worst_name = "";
    for (int i = 0; i < mg_model_state_count(m); i++) {
        MgDtype dt;
        int64_t n;
        const char *name;
        double *x = mg_model_state_tensor(m, st, i, NULL, &name, &dt, &n);
        const double *g = mg_model_state_tensor(m, dst, i, NULL, NULL, NULL, NULL);
        if (dt == MG_I64) continue;
        double *x0 = malloc(sizeof(double) * (size_t)n), *u = malloc(sizeof(double) * (size_t)n);
        memcpy(x0, x, sizeof(double) * (size_t)n);
        double ana = 0.0;
        for (int64_t j = 0; j < n; j++) {
            u[j] = (tu_uniform() < 0.5 ? -1.0 : 1.0) * fmax(fabs(x0[j]), 1e-2);
            ana += g[j] * u[j];
        }
        const double h = 1e-3, w[3] = {45.0, -9.0, 1.0};
        double acc = 0.0;
        for (int k = 1; k <= 3; k++) {
            for (int64_t j = 0; j < n; j++) x[j] = x0[j] + k * h * u[j];
            double fp = state_loss(&c);
            for (int64_t j = 0; j < n; j++) x[j] = x0[j] - k * h * u[j];
            double fm = state_loss(&c);
            acc += w[k - 1] * (fp - fm);
        }
        memcpy(x, x0, sizeof(double) * (size_t)n);
        const double num = acc / (60.0 * h);
        const double e = fabs(ana - num) / fmax(fmax(fabs(ana), fabs(num)), 1e-300);
        if (!(e <= worst)) worst = e, worst_name = name;
        free(x0);
        free(u);
    }
    char nm[160];
    snprintf(nm, sizeof nm, "gradient of the incoming state vs finite differences, every state tensor (worst: %s)",
             worst_name);
    tu_check_err(nm, worst, 1e-6);
    mg_model_state_free(m, st);
    mg_model_state_free(m, dst);
    mg_model_free(m);
}

/* A batch of 4 sequences as one pass, or as two micro-batches of 2 (seq0 = 0, 2): the same masks, so the
 * same gradients with every dropout on. */
static void test_dropout_microbatch_layout(void) {
    MgConfig cfg;
    tu_tiny_megalodon(&cfg, 512);
    cfg.dropout = cfg.hidden_dropout = cfg.attention_dropout = 0.2;
    MgModel *m = mg_model_create(&cfg, &mg_cpu_backend_f64);
    mg_model_init_weights(m, 9);
    const int L = 32, V = cfg.vocab_size;
    const int64_t P = mg_model_params_table(m)->total;
    int32_t tok[4 * 32], tgt[4 * 32];
    tu_random_ids(tok, 4 * L, V);
    tu_random_ids(tgt, 4 * L, V);
    double *g1 = malloc(sizeof(double) * (size_t)P), *g2 = malloc(sizeof(double) * (size_t)P);
    MgForwardOpts o = {.seed = 4242, .training = 1};
    mg_model_zero_grads(m);
    double l1 = mg_model_forward_backward(m, tok, tgt, 4, L, 1.0 / (4 * L), &o, NULL, NULL, NULL);
    memcpy(g1, mg_model_grads(m), sizeof(double) * (size_t)P);
    mg_model_zero_grads(m);
    double l2 = 0.0;
    for (int mb = 0; mb < 2; mb++) {
        MgForwardOpts om = o;
        om.seq0 = 2 * mb;
        l2 += mg_model_forward_backward(m, tok + 2 * mb * L, tgt + 2 * mb * L, 2, L, 1.0 / (4 * L), &om, NULL, NULL,
                                        NULL);
    }
    memcpy(g2, mg_model_grads(m), sizeof(double) * (size_t)P);
    const char *worst = "";
    tu_check_err("dropout masks follow the global sequence: 1 pass of 4 = 2 micro-batches of 2 (loss)",
                 fabs(l1 - l2) / fabs(l1), 1e-12);
    double e = grads_diff(m, g2, g1, &worst);
    tu_check_err("dropout masks follow the global sequence: 1 pass of 4 = 2 micro-batches of 2 (gradients)", e, 1e-12);
    /* and the masks do depend on the sequence: the same two sequences as sequences 0, 1 instead of 2, 3 */
    mg_model_zero_grads(m);
    double l3 = mg_model_forward_backward(m, tok + 2 * L, tgt + 2 * L, 2, L, 1.0 / (4 * L), &o, NULL, NULL, NULL);
    MgForwardOpts o2 = o;
    o2.seq0 = 2;
    double l4 = mg_model_forward_backward(m, tok + 2 * L, tgt + 2 * L, 2, L, 1.0 / (4 * L), &o2, NULL, NULL, NULL);
    tu_check(l3 != l4, "dropout masks differ between sequence indices", "loss %.12f vs %.12f", l3, l4);
    free(g1);
    free(g2);
    mg_model_free(m);
}

/* ---- hooks ------------------------------------------------------------------------------------------------------ */
typedef struct {
    MgModel *m;
    const MgModelState *prev;   /* the previous slice's outgoing state (what an exclusive scan delivers) */
    MgModelState *capture_din;  /* dstate_done copies the state gradients here */
    const MgModelState *supply_dout; /* dstate_get copies these */
    int begins, ends, dones, gets, dins;
    double worst_tsn, worst_cema; /* local summary merged with prev vs the outgoing state */
    int counts_ok;
    /* the local summaries and incoming states seen at begin/end, per layer and group */
    const void *local[8][2][4];
} HookCtx;

/* Index of layer l, group g, tensor t of the group in an MgModelState (Megalodon: count, mean, var, h). */
static int state_index(const MgModel *m, int layer, int group, int t) {
    const int per_layer = 4, nl = mg_model_config(m)->n_layers;
    (void)nl;
    return layer * per_layer + (group == 0 ? t : 3);
}

static void h_begin(void *vc, const MgStateExchange *x) {
    HookCtx *c = vc;
    c->begins++;
    for (int i = 0; i < x->n; i++) c->local[x->layer][x->group][i] = x->local[i];
}

static void h_end(void *vc, const MgStateExchange *x) {
    HookCtx *c = vc;
    c->ends++;
    for (int i = 0; i < x->n; i++) {
        const void *src = mg_model_state_tensor(c->m, c->prev, state_index(c->m, x->layer, x->group, i), NULL, NULL,
                                                NULL, NULL);
        memcpy(x->in[i], src, (size_t)x->numel[i] * (x->dtype[i] == MG_I64 ? sizeof(int64_t) : sizeof(double)));
    }
}

/* The outgoing state must be the incoming one merged with the local summary: the Welford merge for
 * TimestepNorm, h_out = q^L h_in + h_local for CEMA (q from the layer's raw parameters in op_args). */
static void h_done(void *vc, const MgStateExchange *x) {
    HookCtx *c = vc;
    c->dones++;
    const MgConfig *cfg = mg_model_config(c->m);
    const int B = x->B, L = x->L;
    if (x->group == 0) {
        const int G = cfg->norm_num_groups;
        const int64_t *na = mg_model_state_tensor(c->m, c->prev, state_index(c->m, x->layer, 0, 0), 0, 0, 0, 0);
        const double *ma = mg_model_state_tensor(c->m, c->prev, state_index(c->m, x->layer, 0, 1), 0, 0, 0, 0);
        const double *va = mg_model_state_tensor(c->m, c->prev, state_index(c->m, x->layer, 0, 2), 0, 0, 0, 0);
        const int64_t *nb = c->local[x->layer][0][0], *no = x->out[0];
        const double *mb = c->local[x->layer][0][1], *vb = c->local[x->layer][0][2];
        const double *mo = x->out[1], *vo = x->out[2];
        for (int b = 0; b < B; b++) {
            c->counts_ok &= nb[b] == L && no[b] == na[b] + L;
            const double n = (double)(na[b] + nb[b]);
            for (int g = 0; g < G; g++) {
                const int i = b * G + g;
                const double delta = mb[i] - ma[i];
                const double mean = ma[i] + delta * (double)nb[b] / n;
                const double var = ((double)na[b] * va[i] + (double)nb[b] * vb[i]) / n +
                                   delta * delta * (double)na[b] * (double)nb[b] / (n * n);
                c->worst_tsn = fmax(c->worst_tsn, fabs(mean - mo[i]) / fmax(fabs(mo[i]), 1e-3));
                c->worst_tsn = fmax(c->worst_tsn, fabs(var - vo[i]) / fabs(vo[i]));
            }
        }
    } else {
        const MgCemaArgs *a = x->op_args;
        const int D = a->D, N = a->N;
        const double *alpha = a->alpha, *delta = a->delta, *theta = a->theta;
        const double *hin = mg_model_state_tensor(c->m, c->prev, state_index(c->m, x->layer, 1, 0), 0, 0, 0, 0);
        const double *hloc = c->local[x->layer][1][0], *hout = x->out[0];
        double scale = 0.0;
        for (int64_t i = 0; i < x->numel[0]; i++) scale = fmax(scale, fabs(hout[i]));
        for (int b = 0; b < B; b++)
            for (int j = 0; j < D; j++)
                for (int n = 0; n < N; n++) {
                    const double al = 1.0 / (1.0 + exp(-alpha[j * N + n])), de = 1.0 / (1.0 + exp(-delta[j * N + n]));
                    const double om = 1.0 / (1.0 + exp(-theta[j]));
                    const double r = pow(1.0 - al * de, L), th = L * (n + 1) * (2.0 * M_PI / N) * om;
                    const double qr = r * cos(th), qi = r * sin(th);
                    const size_t o = (((size_t)b * D + j) * N + n) * 2;
                    const double er = qr * hin[o] - qi * hin[o + 1] + hloc[o];
                    const double ei = qr * hin[o + 1] + qi * hin[o] + hloc[o + 1];
                    c->worst_cema = fmax(c->worst_cema, fmax(fabs(er - hout[o]), fabs(ei - hout[o + 1])) / scale);
                }
    }
}

static void h_dget(void *vc, const MgStateExchange *x) {
    HookCtx *c = vc;
    c->gets++;
    for (int i = 0; i < x->n; i++) {
        if (!x->dout[i]) continue;
        const void *src = mg_model_state_tensor(c->m, c->supply_dout, state_index(c->m, x->layer, x->group, i), NULL,
                                                NULL, NULL, NULL);
        memcpy(x->dout[i], src, (size_t)x->numel[i] * sizeof(double));
    }
}

static void h_ddone(void *vc, const MgStateExchange *x) {
    HookCtx *c = vc;
    c->dins++;
    for (int i = 0; i < x->n; i++) {
        if (!x->din[i]) continue;
        void *dst = mg_model_state_tensor(c->m, c->capture_din, state_index(c->m, x->layer, x->group, i), NULL, NULL,
                                          NULL, NULL);
        memcpy(dst, x->din[i], (size_t)x->numel[i] * sizeof(double));
    }
}

/* Two "ranks" of one sequence, one after the other in this process: rank 1 receives every layer's incoming
 * state through the forward hooks (as from an exclusive scan) and hands its state gradients out through
 * dstate_done; rank 0 takes them through dstate_get. Each must equal the plain state-passing run bit for
 * bit, and the local summaries must merge into the outgoing states. */
static void test_state_hooks(void) {
    MgConfig cfg;
    tu_tiny_megalodon(&cfg, 512);
    MgModel *m = mg_model_create(&cfg, &mg_cpu_backend_f64);
    mg_model_init_weights(m, 13);
    tu_perturb_zero_init(mg_model_params_table(m), mg_model_params(m), 0.1);
    const int B = 2, L = 32, V = cfg.vocab_size;
    const int64_t P = mg_model_params_table(m)->total;
    int32_t tok[2][64], tgt[2][64];
    for (int r = 0; r < 2; r++) tu_random_ids(tok[r], B * L, V), tu_random_ids(tgt[r], B * L, V);
    const double scale = 1.0 / (2 * B * L);
    MgModelState *S0 = mg_model_state_create(m, B), *D1 = mg_model_state_create(m, B);
    MgModelState *S1 = mg_model_state_create(m, B), *S1h = mg_model_state_create(m, B);
    MgModelState *D1h = mg_model_state_create(m, B);
    double *g_ref = malloc(sizeof(double) * (size_t)P), *g_hook = malloc(sizeof(double) * (size_t)P);
    MgForwardOpts o0 = {.pos0 = 0, .seq_len = 2 * L}, o1 = {.pos0 = L, .seq_len = 2 * L};

    /* reference: rank 0 forward (its outgoing state S0), rank 1 step from S0, rank 0 step with D1 */
    mg_model_forward_loss(m, tok[0], tgt[0], B, L, &o0, NULL, S0, NULL);
    mg_model_zero_grads(m);
    MgPassArgs r1 = {.tokens = tok[1], .targets = tgt[1], .B = B, .L = L, .grad_scale = scale, .opts = o1,
                     .state_in = S0, .state_out = S1, .dstate_in = D1};
    const double l1_ref = mg_model_step(m, &r1, NULL);
    memcpy(g_ref, mg_model_grads(m), sizeof(double) * (size_t)P);

    HookCtx hc = {.m = m, .prev = S0, .capture_din = D1h, .counts_ok = 1};
    MgModelHooks hooks = {.ctx = &hc, .state_begin = h_begin, .state_end = h_end, .state_done = h_done,
                          .dstate_done = h_ddone};
    mg_model_zero_grads(m);
    MgPassArgs r1h = {.tokens = tok[1], .targets = tgt[1], .B = B, .L = L, .grad_scale = scale, .opts = o1,
                      .state_out = S1h, .hooks = &hooks};
    const double l1_hook = mg_model_step(m, &r1h, NULL);
    memcpy(g_hook, mg_model_grads(m), sizeof(double) * (size_t)P);
    const int nl = cfg.n_layers, groups = 2 * nl + 1;
    tu_check(hc.begins == groups && hc.ends == groups && hc.dones == groups && hc.dins == groups,
             "state hooks are called once per layer and state group", "begin %d end %d done %d dstate_done %d of %d",
             hc.begins, hc.ends, hc.dones, hc.dins, groups);
    tu_check(l1_hook == l1_ref && !memcmp(g_hook, g_ref, sizeof(double) * (size_t)P) && state_diff(m, S1h, S1, 1) == 0.0,
             "a rank fed its incoming state by the hooks = the state-passing run (loss, gradients, outgoing state, "
             "bitwise)", "loss %.15g vs %.15g", l1_hook, l1_ref);
    tu_check(state_diff(m, D1h, D1, 0) == 0.0, "dstate_done hands out the gradient of the incoming state (bitwise)",
             "worst %.2e", state_diff(m, D1h, D1, 0));
    tu_check(hc.counts_ok, "TimestepNorm local summary: counts of the slice alone, merged counts add up", " ");
    tu_check_err("TimestepNorm local summary merged with the incoming state (Welford) = the outgoing state",
                 hc.worst_tsn, 1e-12);
    tu_check_err("CEMA local state: h_out = q^L h_in + h_local (q from the raw parameters)", hc.worst_cema, 1e-12);

    /* rank 0: the plain run with dstate_out = D1, and the hooked run with dstate_get supplying D1h */
    mg_model_zero_grads(m);
    MgPassArgs r0 = {.tokens = tok[0], .targets = tgt[0], .B = B, .L = L, .grad_scale = scale, .opts = o0,
                     .dstate_out = D1};
    const double l0_ref = mg_model_step(m, &r0, NULL);
    memcpy(g_ref, mg_model_grads(m), sizeof(double) * (size_t)P);
    HookCtx hc0 = {.m = m, .supply_dout = D1h};
    MgModelHooks bh = {.ctx = &hc0, .dstate_get = h_dget};
    mg_model_zero_grads(m);
    MgPassArgs r0h = {.tokens = tok[0], .targets = tgt[0], .B = B, .L = L, .grad_scale = scale, .opts = o0,
                      .hooks = &bh};
    const double l0_hook = mg_model_step(m, &r0h, NULL);
    memcpy(g_hook, mg_model_grads(m), sizeof(double) * (size_t)P);
    tu_check(hc0.gets == groups && l0_hook == l0_ref && !memcmp(g_hook, g_ref, sizeof(double) * (size_t)P),
             "dstate_get supplies the gradient of the outgoing state (gradients bitwise equal to dstate_out)",
             "%d calls", hc0.gets);

    /* and together the two ranks give the whole sequence's gradients */
    int32_t tw[2 * 64], gw_[2 * 64];
    for (int b = 0; b < B; b++)
        for (int r = 0; r < 2; r++) {
            memcpy(tw + b * 2 * L + r * L, tok[r] + b * L, sizeof(int32_t) * L);
            memcpy(gw_ + b * 2 * L + r * L, tgt[r] + b * L, sizeof(int32_t) * L);
        }
    mg_model_zero_grads(m);
    const double lw = mg_model_forward_loss(m, tw, gw_, B, 2 * L, NULL, NULL, NULL, NULL);
    double *g_sum = malloc(sizeof(double) * (size_t)P);
    /* g_hook holds rank 0's gradients; rank 1's again (the hooked run above) */
    mg_model_zero_grads(m);
    mg_model_step(m, &r1h, NULL);
    for (int64_t i = 0; i < P; i++) g_sum[i] = ((double *)mg_model_grads(m))[i] + g_hook[i];
    double *gw = malloc(sizeof(double) * (size_t)P);
    mg_model_zero_grads(m);
    mg_model_forward_backward(m, tw, gw_, B, 2 * L, scale, &(MgForwardOpts){0}, NULL, NULL, NULL);
    memcpy(gw, mg_model_grads(m), sizeof(double) * (size_t)P);
    tu_check_err("two hooked ranks together = the whole sequence (loss)", fabs(l0_hook + l1_hook - lw) / fabs(lw), 1e-12);
    tu_check_err("two hooked ranks together = the whole sequence (every gradient)", grads_diff(m, g_sum, gw, NULL),
                 1e-12);
    free(g_sum);
    free(gw);
    free(g_ref);
    free(g_hook);
    mg_model_state_free(m, S0);
    mg_model_state_free(m, S1);
    mg_model_state_free(m, S1h);
    mg_model_state_free(m, D1);
    mg_model_state_free(m, D1h);
    mg_model_free(m);
}

/* grads_ready: the buckets tile the layout exactly once, from the top of the table down, and at each
 * call the bucket's gradients are already final. */
typedef struct {
    MgModel *m;
    double *snap;
    int64_t covered, prev_off;
    int calls, ordered;
} BucketCtx;

static void on_ready(void *vc, int64_t off, int64_t count) {
    BucketCtx *c = vc;
    c->ordered &= off + count <= c->prev_off;
    c->prev_off = off;
    c->covered += count;
    c->calls++;
    memcpy(c->snap + off, (double *)mg_model_grads(c->m) + off, sizeof(double) * (size_t)count);
}

static void test_grad_buckets(int share_emb) {
    MgConfig cfg;
    tu_tiny_megalodon(&cfg, 512);
    cfg.share_emb = share_emb;
    MgModel *m = mg_model_create(&cfg, &mg_cpu_backend_f64);
    mg_model_init_weights(m, 3);
    const int64_t P = mg_model_params_table(m)->total;
    int32_t tok[2 * 32], tgt[2 * 32];
    tu_random_ids(tok, 64, cfg.vocab_size);
    tu_random_ids(tgt, 64, cfg.vocab_size);
    BucketCtx bc = {m, calloc((size_t)P, sizeof(double)), 0, P, 0, 1};
    MgModelHooks h = {.ctx = &bc, .grads_ready = on_ready};
    mg_model_zero_grads(m);
    MgPassArgs a = {.tokens = tok, .targets = tgt, .B = 2, .L = 32, .grad_scale = 1.0 / 64, .hooks = &h};
    mg_model_step(m, &a, NULL);
    int64_t offs[64], lens[64];
    const int nb = mg_model_grad_buckets(m, offs, lens, 64);
    char name[160];
    snprintf(name, sizeof name, "grads_ready buckets tile the layout once, top down%s", share_emb ? " (tied embedding)" : "");
    tu_check(bc.covered == P && bc.ordered && bc.calls == nb, name, "%d calls covering %lld of %lld elements", bc.calls,
             (long long)bc.covered, (long long)P);
    snprintf(name, sizeof name, "grads_ready: each bucket's gradients are final when reported%s",
             share_emb ? " (tied embedding)" : "");
    tu_check(!memcmp(bc.snap, mg_model_grads(m), sizeof(double) * (size_t)P), name, "%d buckets", nb);
    free(bc.snap);
    mg_model_free(m);
}

/* ---- nothing is allocated on the hot path ------------------------------------------------------------------------ */
static void test_step_allocates_nothing(void) {
    MgConfig cfg;
    tu_tiny_megalodon(&cfg, 32000);
    cfg.dropout = cfg.hidden_dropout = cfg.attention_dropout = 0.1;
    char err[256];
    MgBackend *inst = mg_backend_create("cpu", 0, NULL, err, sizeof err);
    const MgBackend *be = tu_counting_backend(inst);
    MgModel *m = mg_model_create(&cfg, be);
    mg_model_init_weights(m, 1);
    const int64_t P = mg_model_params_table(m)->total;
    float *mom = be->alloc(be, sizeof(float) * (size_t)P), *vel = be->alloc(be, sizeof(float) * (size_t)P);
    int32_t tok[2 * 32], tgt[2 * 32];
    tu_random_ids(tok, 64, cfg.vocab_size);
    tu_random_ids(tgt, 64, cfg.vocab_size);
    int64_t host0 = 0, grows0 = 0;
    TuMemStats dev0 = {0};
    for (int step = 1; step <= 4; step++) {
        if (step == 2) {
            host0 = mg_alloc_calls();
            be->workspace_bytes(be, &grows0);
            dev0 = tu_counting_stats();
        }
        mg_model_zero_grads(m);
        MgForwardOpts o = {.seed = (uint64_t)step, .training = 1};
        mg_model_forward_backward(m, tok, tgt, 2, 32, 1.0 / 64, &o, NULL, NULL, NULL);
        double gn = sqrt(be->sum_squares(be, mg_model_grads(m), P));
        MgAdamWArgs aw = {.n = P, .param = mg_model_masters(m), .grad = mg_model_grads(m), .m = mom, .v = vel,
                          .lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1,
                          .grad_scale = gn > 1 ? 1 / gn : 1, .step = step};
        be->adamw_update(be, &aw);
    }
    int64_t grows1 = 0;
    size_t ws = be->workspace_bytes(be, &grows1);
    TuMemStats dev1 = tu_counting_stats();
    tu_check(mg_alloc_calls() == host0 && grows1 == grows0 && dev1.allocs == dev0.allocs,
             "a training step allocates nothing after the first (host mallocs, op workspace, backend memory)",
             "3 steps: %lld host allocations, %lld workspace grows (workspace %zu bytes), %lld backend allocations",
             (long long)(mg_alloc_calls() - host0), (long long)(grows1 - grows0), ws, (long long)(dev1.allocs - dev0.allocs));
    be->free(be, mom);
    be->free(be, vel);
    mg_model_free(m);
    mg_backend_destroy(inst);
}

/* ---- decoder memory, measured ---------------------------------------------------------------------------------- */
static void test_decoder_memory(void) {
    MgConfig cfg;
    tu_tiny_megalodon(&cfg, 32000);
    const MgBackend *be = tu_counting_backend(&mg_cpu_backend_f32);
    MgModel *m = mg_model_create(&cfg, be);
    mg_model_init_weights(m, 2);
    const TuMemStats s0 = tu_counting_stats();
    MgDecoder *d = mg_decoder_create(m, 2);
    const TuMemStats s1 = tu_counting_stats();
    tu_check(s1.live - s0.live == mg_decoder_bytes(d), "decoder bytes = what it allocated on the backend",
             "%zu reported, %zu allocated", mg_decoder_bytes(d), s1.live - s0.live);
    int32_t pre[2 * 37];
    tu_random_ids(pre, 74, cfg.vocab_size);
    /* warm-up: a prefill and one chunk of single tokens grow the op workspace to its largest size */
    mg_decoder_step(d, pre, 37, NULL);
    for (int t = 0; t < 16; t++) mg_decoder_step(d, pre + t, 1, NULL);
    const int64_t host0 = mg_alloc_calls();
    int64_t grows0 = 0, grows1 = 0;
    be->workspace_bytes(be, &grows0);
    for (int t = 0; t < 500; t++) {
        int32_t one[2] = {(int32_t)(t * 31 % 32000), (int32_t)(t * 17 % 32000)};
        mg_decoder_step(d, one, 1, NULL);
    }
    const TuMemStats s2 = tu_counting_stats();
    be->workspace_bytes(be, &grows1);
    tu_check(s2.allocs == s1.allocs && s2.live == s1.live && mg_alloc_calls() == host0 && grows1 == grows0,
             "decoder memory is constant: 500 more tokens (31 chunks) allocate nothing, on the backend or the host",
             "%lld backend allocations, %lld host allocations, %lld workspace grows, %zu live bytes before and %zu "
             "after",
             (long long)(s2.allocs - s1.allocs), (long long)(mg_alloc_calls() - host0), (long long)(grows1 - grows0),
             s1.live, s2.live);
    /* the model-free count the memory check uses: the same buffers, without the two carried states */
    const TuMemStats before_state = tu_counting_stats();
    MgModelState *st = mg_model_state_create(m, 2);
    const size_t state_bytes = tu_counting_stats().live - before_state.live;
    mg_model_state_free(m, st);
    const size_t plan = mg_decoder_plan_bytes(&cfg, be->dtype, be->state_dtype, 2);
    tu_check(plan == mg_decoder_bytes(d) - 2 * state_bytes, "decoder plan bytes without a model = the decoder's",
             "%zu from the config, %zu allocated less 2 x %zu of state", plan, mg_decoder_bytes(d), state_bytes);
    mg_decoder_free(d);
    tu_check(tu_counting_stats().live == s0.live, "decoder frees everything it allocated", "%zu bytes left",
             tu_counting_stats().live - s0.live);
    mg_model_free(m);
}

/* ---- bad layouts are refused ----------------------------------------------------------------------------------- */
static MgModel *g_model;
static MgModelState *g_bad_state; /* freed by main after the refusal unwound run_bad_state_batch */
static void run_bad_piece(void *ctx) {
    (void)ctx;
    int32_t tok[16] = {0}, tgt[16] = {0};
    MgForwardOpts o = {.pos0 = 8, .seq_len = 64};
    mg_model_forward_loss(g_model, tok, tgt, 1, 16, &o, NULL, NULL, NULL);
}
static void run_bad_state_batch(void *ctx) {
    (void)ctx;
    int32_t tok[32] = {0}, tgt[32] = {0};
    g_bad_state = mg_model_state_create(g_model, 2);
    mg_model_forward_loss(g_model, tok, tgt, 1, 32, NULL, g_bad_state, NULL, NULL);
}

int main(void) {
    tu_init("test_model_state");
    test_state_gradients(0.0);
    test_state_gradients(0.1);
    test_state_gradient_fd();
    test_dropout_microbatch_layout();
    test_state_hooks();
    test_grad_buckets(0);
    test_grad_buckets(1);
    test_step_allocates_nothing();
    test_decoder_memory();
    MgConfig cfg;
    tu_tiny_megalodon(&cfg, 512);
    g_model = mg_model_create(&cfg, &mg_cpu_backend_f32);
    tu_expect_failure("a piece that is not whole attention chunks is refused", run_bad_piece, NULL,
                      "not made of whole attention chunks");
    tu_expect_failure("a state for another batch size is refused", run_bad_state_batch, NULL, "holds state for 2");
    mg_model_state_free(g_model, g_bad_state);
    mg_model_free(g_model);
    return tu_finish();
}
