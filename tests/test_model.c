/* Whole-model tests: gradient check against finite differences in float64, carried state across pieces,
 * recurrent decoding against the full forward, and refusal of bad inputs. */
#include <math.h>
#include <string.h>

#include "../src/config.h"
#include "../src/model.h"
#include "../src/rng.h"
#include "test_util.h"

/* The architecture of configs/tiny.conf, filled in by hand so this test does not depend on parsing. */
static void tiny_config(MgConfig *c) {
    memset(c, 0, sizeof(*c));
    strcpy(c->arch, "megalodon");
    c->vocab_size = 32000;
    c->n_layers = 2;
    c->model_dim = 64;
    c->num_heads = 2;
    c->z_dim = 32;
    c->value_dim = 64;
    c->ffn_hidden_dim = 128;
    c->cema_ndim = 4;
    c->norm_num_groups = 4;
    c->chunk_size = 16;
    c->rope_base = 10000.0;
    c->norm_eps = 1e-5;
    c->swiglu = 1;
    c->seq_len = 32;
    c->batch_size = 1;
}

static void random_tokens(int32_t *t, int64_t n, int V) {
    for (int64_t i = 0; i < n; i++) t[i] = (int32_t)(tu_uniform() * V);
}

/* Perturb the initial weights so that zero-initialised offsets (norm scales, biases, qk gamma/beta) are
 * exercised with non-zero values in the gradient check. */
static void perturb_params(MgModel *m, double scale) {
    const MgParamTable *t = mg_model_params_table(m);
    double *p = mg_model_params(m);
    for (int i = 0; i < t->count; i++) {
        const MgParam *q = &t->params[i];
        if (q->init == MG_INIT_ZERO)
            for (int64_t j = 0; j < q->numel; j++) p[q->offset + j] = scale * tu_normal();
    }
}

typedef struct {
    MgModel *m;
    const int32_t *tok, *tgt;
    int B, L;
    MgForwardOpts opts;
} LossCtx;

static double model_loss(void *vctx) {
    LossCtx *c = vctx;
    int64_t n = 0;
    double s = mg_model_forward_loss(c->m, c->tok, c->tgt, c->B, c->L, &c->opts, NULL, NULL, &n);
    return s / (double)n;
}

/* Check a few elements of every parameter tensor (all elements of small ones). */
static void gradcheck_model(const char *tag, MgConfig *cfg, int B, int L, double dropout) {
    cfg->dropout = dropout;
    cfg->hidden_dropout = dropout;
    MgModel *m = mg_model_create(cfg, &mg_cpu_backend_f64);
    mg_model_init_weights(m, 7);
    perturb_params(m, 0.1);
    int64_t T = (int64_t)B * L;
    int32_t *tok = mg_malloc(sizeof(int32_t) * (size_t)T), *tgt = mg_malloc(sizeof(int32_t) * (size_t)T);
    /* A small set of token ids so embedding and head rows get several contributions. */
    for (int64_t i = 0; i < T; i++) {
        tok[i] = (int32_t)(tu_uniform() * 50) * 613 % cfg->vocab_size;
        tgt[i] = (int32_t)(tu_uniform() * 50) * 613 % cfg->vocab_size;
    }
    tgt[3] = -1; /* an ignored target */
    LossCtx ctx = {m, tok, tgt, B, L, {.seed = 99, .training = 1}};
    mg_model_zero_grads(m);
    int64_t n = 0;
    mg_model_forward_backward(m, tok, tgt, B, L, 1.0 / (double)(T - 1), &ctx.opts, NULL, NULL, &n);
    tu_check(n == T - 1, "model counts non-ignored targets", "%lld of %lld", (long long)n, (long long)T);

    const MgParamTable *t = mg_model_params_table(m);
    double *p = mg_model_params(m), *g = mg_model_grads(m);
    double worst = 0.0;
    const char *worst_name = "";
    int checked = 0;
    for (int i = 0; i < t->count; i++) {
        const MgParam *q = &t->params[i];
        int64_t picks[8];
        int np = 0;
        if (q->numel <= 8) {
            for (int64_t j = 0; j < q->numel; j++) picks[np++] = j;
        } else if (!strcmp(q->name, "embed.weight") || !strcmp(q->name, "lm_head.weight")) {
            /* rows that appear in the batch */
            for (int k = 0; k < 6; k++) {
                int32_t row = k % 2 ? tok[(int)(tu_uniform() * T)] : tgt[(int)(tu_uniform() * T)];
                if (row < 0) row = tok[0];
                picks[np++] = (int64_t)row * q->shape[1] + (int64_t)(tu_uniform() * q->shape[1]);
            }
        } else {
            for (int k = 0; k < 6; k++) picks[np++] = (int64_t)(tu_uniform() * q->numel);
        }
        double num[8], ana[8], xs[8];
        for (int k = 0; k < np; k++) {
            double *x = &p[q->offset + picks[k]];
            xs[k] = *x;
            tu_numeric_grad(x, 1, model_loss, &ctx, 1e-4, &num[k]);
            ana[k] = g[q->offset + picks[k]];
        }
        (void)xs;
        /* floor: 1e-3 of the largest gradient of this tensor seen among the picks, or 1e-9 */
        double floor = fmax(1e-3 * fmax(tu_max_abs(num, (size_t)np), tu_max_abs(ana, (size_t)np)), 1e-9);
        double e = tu_max_rel_err(ana, num, (size_t)np, floor);
        checked += np;
        if (!(e <= worst)) {
            worst = e;
            worst_name = q->name;
        }
    }
    char name[128];
    snprintf(name, sizeof name, "model gradient check %s", tag);
    tu_check(worst <= 1e-6, name, "worst relative error %.2e (%s) over %d elements of %d tensors, tolerance 1e-6",
             worst, worst_name, checked, t->count);
    free(tok);
    free(tgt);
    mg_model_free(m);
}

/* Running the model over L tokens at once, or in pieces passing the carried state, gives the same logits. */
static void test_state_carry(void) {
    MgConfig cfg;
    tiny_config(&cfg);
    MgModel *m = mg_model_create(&cfg, &mg_cpu_backend_f64);
    mg_model_init_weights(m, 3);
    perturb_params(m, 0.1);
    const int B = 2, L = 64, V = cfg.vocab_size;
    int32_t tok[2 * 64];
    random_tokens(tok, B * L, V);
    double *full = mg_malloc(sizeof(double) * (size_t)B * L * V);
    mg_model_forward_logits(m, tok, B, L, NULL, NULL, full);

    const int splits[][4] = {{32, 32, 0, 0}, {16, 48, 0, 0}, {16, 16, 32, 0}, {16, 16, 16, 16}};
    for (int s = 0; s < 4; s++) {
        MgModelState *st[2] = {mg_model_state_create(m, B), mg_model_state_create(m, B)};
        double *pieces = mg_malloc(sizeof(double) * (size_t)B * L * V);
        int t0 = 0, cur = 0, np = 0;
        for (int k = 0; k < 4 && splits[s][k]; k++) {
            int len = splits[s][k];
            int32_t *pt = mg_malloc(sizeof(int32_t) * (size_t)B * len);
            for (int b = 0; b < B; b++) memcpy(pt + b * len, tok + b * L + t0, sizeof(int32_t) * (size_t)len);
            double *pl = mg_malloc(sizeof(double) * (size_t)B * len * V);
            mg_model_forward_logits(m, pt, B, len, k == 0 ? NULL : st[cur], st[1 - cur], pl);
            cur = 1 - cur;
            for (int b = 0; b < B; b++)
                memcpy(pieces + ((size_t)b * L + t0) * V, pl + (size_t)b * len * V, sizeof(double) * (size_t)len * V);
            free(pt);
            free(pl);
            t0 += len;
            np++;
        }
        double e = tu_max_rel_err(pieces, full, (size_t)B * L * V, 1e-6);
        char name[96];
        snprintf(name, sizeof name, "model state carrying, %d pieces (%d..)", np, splits[s][0]);
        tu_check_err(name, e, 1e-12);
        free(pieces);
        mg_model_state_free(m, st[0]);
        mg_model_state_free(m, st[1]);
    }
    free(full);
    mg_model_free(m);
}

/* Token-by-token decoding (carried state + current-chunk KV cache) equals the full forward in fp32. */
static void test_decoder(void) {
    MgConfig cfg;
    tiny_config(&cfg);
    MgModel *m = mg_model_create(&cfg, &mg_cpu_backend_f32);
    mg_model_init_weights(m, 5);
    const int B = 2, L = 56, V = cfg.vocab_size; /* 3.5 chunks of 16 */
    int32_t tok[2 * 56];
    random_tokens(tok, B * L, V);
    float *full = mg_malloc(sizeof(float) * (size_t)B * L * V);
    mg_model_forward_logits(m, tok, B, L, NULL, NULL, full);

    MgDecoder *d = mg_decoder_create(m, B);
    float *step = mg_malloc(sizeof(float) * (size_t)B * L * V);
    for (int t = 0; t < L; t++) {
        int32_t one[2] = {tok[t], tok[L + t]};
        float *lg = mg_malloc(sizeof(float) * (size_t)B * V);
        mg_decoder_step(d, one, 1, lg);
        for (int b = 0; b < B; b++) memcpy(step + ((size_t)b * L + t) * V, lg + (size_t)b * V, sizeof(float) * V);
        free(lg);
    }
    double *fd = mg_malloc(sizeof(double) * (size_t)B * L * V);
    tu_from_f32(fd, full, (size_t)B * L * V);
    double floor = 1e-3 * tu_max_abs(fd, (size_t)B * L * V);
    double e = tu_max_rel_err_f32(step, fd, (size_t)B * L * V, floor);
    tu_check_err("decoder token-by-token logits == full forward (fp32, 3.5 chunks)", e, 1e-4);
    tu_check(mg_decoder_position(d) == L, "decoder position counts tokens", "%lld", (long long)mg_decoder_position(d));

    /* A prefill that crosses chunk boundaries, then single tokens. */
    mg_decoder_reset(d);
    float *pre = mg_malloc(sizeof(float) * (size_t)B * 37 * V);
    int32_t p37[2 * 37];
    for (int b = 0; b < B; b++) memcpy(p37 + b * 37, tok + b * L, sizeof(int32_t) * 37);
    mg_decoder_step(d, p37, 37, pre);
    double worst = 0.0;
    for (int b = 0; b < B; b++) {
        float *a = pre + (size_t)b * 37 * V;
        double *r = fd + (size_t)b * L * V;
        worst = fmax(worst, tu_max_rel_err_f32(a, r, (size_t)37 * V, floor));
    }
    for (int t = 37; t < L; t++) {
        int32_t one[2] = {tok[t], tok[L + t]};
        mg_decoder_step(d, one, 1, NULL);
        const float *last = mg_decoder_last_logits(d);
        for (int b = 0; b < B; b++)
            worst = fmax(worst, tu_max_rel_err_f32(last + (size_t)b * V, fd + ((size_t)b * L + t) * V, (size_t)V, floor));
    }
    tu_check_err("decoder prefill across chunk boundaries + single steps == full forward", worst, 1e-4);

    /* Memory does not depend on the number of tokens consumed. */
    size_t before = mg_decoder_bytes(d);
    for (int t = 0; t < 200; t++) {
        int32_t one[2] = {tok[t % L], tok[(t * 7) % L]};
        mg_decoder_step(d, one, 1, NULL);
    }
    tu_check(mg_decoder_bytes(d) == before, "decoder memory is constant in context length",
             "%zu bytes after %lld tokens", mg_decoder_bytes(d), (long long)mg_decoder_position(d));
    mg_decoder_free(d);
    free(full);
    free(step);
    free(fd);
    free(pre);
    mg_model_free(m);
}

static MgModel *g_bad_model;
static void run_bad_token(void *ctx) {
    (void)ctx;
    int32_t tok[32], tgt[32];
    for (int i = 0; i < 32; i++) tok[i] = tgt[i] = i;
    tok[5] = 32000;
    int64_t n;
    mg_model_forward_loss(g_bad_model, tok, tgt, 1, 32, NULL, NULL, NULL, &n);
}
static void run_bad_length(void *ctx) {
    (void)ctx;
    int32_t tok[40], tgt[40];
    for (int i = 0; i < 40; i++) tok[i] = tgt[i] = i;
    int64_t n;
    mg_model_forward_loss(g_bad_model, tok, tgt, 1, 40, NULL, NULL, NULL, &n);
}

int main(void) {
    tu_init("test_model");
    MgConfig cfg;
    tiny_config(&cfg);
    gradcheck_model("(tiny, float64, B=1 L=32, 2 chunks)", &cfg, 1, 32, 0.0);
    tiny_config(&cfg);
    cfg.swiglu = 0;
    cfg.share_emb = 1;
    cfg.scale_emb = 1;
    gradcheck_model("(tiny without SwiGLU, tied + scaled embedding, dropout 0.1)", &cfg, 2, 16, 0.1);
    test_state_carry();
    test_decoder();

    tiny_config(&cfg);
    g_bad_model = mg_model_create(&cfg, &mg_cpu_backend_f32);
    mg_model_init_weights(g_bad_model, 1);
    tu_expect_failure("token id outside the vocabulary is refused", run_bad_token, NULL, "outside the vocabulary");
    tu_expect_failure("sequence length the chunk size cannot split is refused", run_bad_length, NULL,
                      "cannot be split into attention chunks");
    mg_model_free(g_bad_model);
    return tu_finish();
}
