/* Whole-model tests: gradient check against finite differences in float64, carried state across pieces,
 * recurrent decoding against the full forward, and refusal of bad inputs. */
#include <math.h>
#include <string.h>

#include "../src/config.h"
#include "../src/model.h"
#include "../src/rng.h"
#include "test_util.h"

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
    cfg->attention_dropout = dropout;
    MgModel *m = mg_model_create(cfg, &mg_cpu_backend_f64);
    mg_model_init_weights(m, 7);
    tu_perturb_zero_init(mg_model_params_table(m), mg_model_params(m), 0.1);
    if (!strcmp(cfg->arch, "llama")) {
        /* Llama's N(0, 0.02^2) weights x 10: with entries of 0.02 the finite-difference steps below (1e-3
         * on every element of a tensor at once) would be 5 % of the values, far outside the stencils'
         * range; at 0.2 the model is also far from uniform attention and linear FFN gates. */
        const MgParamTable *pt = mg_model_params_table(m);
        for (int i = 0; i < pt->count; i++)
            if (pt->params[i].init == MG_INIT_NORMAL_0_02)
                for (int64_t j = 0; j < pt->params[i].numel; j++)
                    ((double *)mg_model_params(m))[pt->params[i].offset + j] *= 10.0;
    }
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
            for (int k = 0; k < 3; k++) {
                int32_t row = k % 2 ? tok[(int)(tu_uniform() * T)] : tgt[(int)(tu_uniform() * T)];
                if (row < 0) row = tok[0];
                picks[np++] = (int64_t)row * q->shape[1] + (int64_t)(tu_uniform() * q->shape[1]);
            }
        } else {
            for (int k = 0; k < 3; k++) picks[np++] = (int64_t)(tu_uniform() * q->numel);
        }
        double num[8], ana[8];
        for (int k = 0; k < np; k++) {
            /* 6-point stencil with h = 3e-3: truncation ~h^6 while the rounding noise of a loss summed
             * over a 32000-way softmax (~1e-15) stays ~1e-13 in the derivative. */
            tu_numeric_grad6(&p[q->offset + picks[k]], 1, model_loss, &ctx, 3e-3, &num[k]);
            ana[k] = g[q->offset + picks[k]];
        }
        /* floor: 1e-3 of the largest analytic gradient of the whole tensor */
        double floor = tu_grad_floor(g + q->offset, (size_t)q->numel);
        double e = tu_max_rel_err(ana, num, (size_t)np, floor);
        checked += np;
        if (!(e <= worst)) {
            worst = e;
            worst_name = q->name;
        }
    }
    /* Directional derivatives: for every tensor, perturb ALL its elements along a random +-1 direction u
     * and compare d/dh loss(x + h u) with <g, u>. This covers every element, and the derivative is large
     * compared with the loss's rounding noise, so the tolerance can be the op-level 1e-6. */
    double worst_dir = 0.0;
    const char *worst_dir_name = "";
    for (int i = 0; i < t->count; i++) {
        const MgParam *q = &t->params[i];
        double *u = mg_malloc(sizeof(double) * (size_t)q->numel), *x0 = mg_malloc(sizeof(double) * (size_t)q->numel);
        double *x = p + q->offset, ana = 0.0;
        memcpy(x0, x, sizeof(double) * (size_t)q->numel);
        for (int64_t j = 0; j < q->numel; j++) {
            u[j] = tu_uniform() < 0.5 ? -1.0 : 1.0;
            ana += g[q->offset + j] * u[j];
        }
        const double h = 1e-3, w[3] = {45.0, -9.0, 1.0};
        double acc = 0.0;
        for (int k = 1; k <= 3; k++) {
            for (int64_t j = 0; j < q->numel; j++) x[j] = x0[j] + k * h * u[j];
            double fp = model_loss(&ctx);
            for (int64_t j = 0; j < q->numel; j++) x[j] = x0[j] - k * h * u[j];
            double fm = model_loss(&ctx);
            acc += w[k - 1] * (fp - fm);
        }
        memcpy(x, x0, sizeof(double) * (size_t)q->numel);
        double num = acc / (60.0 * h);
        double e = fabs(ana - num) / fmax(fmax(fabs(ana), fabs(num)), 1e-300);
        if (!(e <= worst_dir)) {
            worst_dir = e;
            worst_dir_name = q->name;
        }
        free(u);
        free(x0);
    }
    char name[160];
    snprintf(name, sizeof name, "model directional derivatives, every tensor %s", tag);
    tu_check(worst_dir <= 1e-6, name, "worst relative error %.2e (%s) over %d tensors, tolerance 1e-6", worst_dir,
             worst_dir_name, t->count);
    snprintf(name, sizeof name, "model gradient check, sampled elements %s", tag);
    /* Tolerance 1e-5, not the op-level 1e-6: the loss of a whole model over a 32000-way softmax carries
     * ~1e-15 of rounding noise, i.e. ~5e-13 in a finite-difference derivative at the best step, and some
     * tensors' gradients are ~1e-4 at most (floor 1e-7). Typical worst errors are 2e-7..1e-6. */
    tu_check(worst <= 1e-5, name, "worst relative error %.2e (%s) over %d elements of %d tensors, tolerance 1e-5",
             worst, worst_name, checked, t->count);
    free(tok);
    free(tgt);
    mg_model_free(m);
}

/* Running the model over L tokens at once, or in pieces passing the carried state, gives the same logits. */
static void test_state_carry(void) {
    MgConfig cfg;
    tu_tiny_megalodon(&cfg, 32000);
    MgModel *m = mg_model_create(&cfg, &mg_cpu_backend_f64);
    mg_model_init_weights(m, 3);
    tu_perturb_zero_init(mg_model_params_table(m), mg_model_params(m), 0.1);
    const int B = 2, L = 64, V = cfg.vocab_size;
    int32_t tok[2 * 64];
    tu_random_ids(tok, B * L, V);
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
        /* normwise: max |difference| / max |logit| (BLAS blocks by row count, so pieces round differently) */
        double e = tu_max_rel_err(pieces, full, (size_t)B * L * V, tu_max_abs(full, (size_t)B * L * V));
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
    tu_tiny_megalodon(&cfg, 32000);
    MgModel *m = mg_model_create(&cfg, &mg_cpu_backend_f32);
    mg_model_init_weights(m, 5);
    /* Decode 56 tokens (3.5 chunks of 16) and compare with a causal full forward over 64. */
    const int B = 2, L = 56, LF = 64, V = cfg.vocab_size;
    int32_t tok[2 * 56], tokf[2 * 64];
    tu_random_ids(tokf, B * LF, V);
    for (int b = 0; b < B; b++) memcpy(tok + b * L, tokf + b * LF, sizeof(int32_t) * L);
    float *fullf = mg_malloc(sizeof(float) * (size_t)B * LF * V), *full = mg_malloc(sizeof(float) * (size_t)B * L * V);
    mg_model_forward_logits(m, tokf, B, LF, NULL, NULL, fullf);
    for (int b = 0; b < B; b++) memcpy(full + (size_t)b * L * V, fullf + (size_t)b * LF * V, sizeof(float) * (size_t)L * V);
    free(fullf);

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
    /* normwise relative error: max |difference| / max |logit| */
    double floor = tu_max_abs(fd, (size_t)B * L * V);
    double e = tu_max_rel_err_f32(step, fd, (size_t)B * L * V, floor);
    tu_check_err("decoder token-by-token logits == full forward (fp32, 3.5 chunks, normwise)", e, 1e-4);
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
    tu_check_err("decoder prefill across chunk boundaries + single steps == full forward (normwise)", worst, 1e-4);

    /* (Decoder memory is measured against real allocations in tests/test_model_state.c.) */
    mg_decoder_free(d);
    free(full);
    free(step);
    free(fd);
    free(pre);
    mg_model_free(m);
}

/* ---- llama --------------------------------------------------------------------------------------------- */
/* Grouped-query attention is multi-head attention whose key/value heads repeat: a model with kv heads
 * equals the kv = H model whose wk, wv rows of head h are those of key/value head h / (H / kv). */
static void test_llama_gqa_equals_repeated_mha(void) {
    MgConfig cg, cm;
    tu_tiny_llama(&cg, 512, 2);
    tu_tiny_llama(&cm, 512, 0);
    MgModel *g = mg_model_create(&cg, &mg_cpu_backend_f64), *m = mg_model_create(&cm, &mg_cpu_backend_f64);
    mg_model_init_weights(g, 21);
    tu_perturb_zero_init(mg_model_params_table(g), mg_model_params(g), 0.1);
    const MgParamTable *tm = mg_model_params_table(m);
    const int d = cg.model_dim, dh = d / cg.num_heads, grp = cg.num_heads / cg.num_kv_heads;
    for (int i = 0; i < tm->count; i++) {
        const MgParam *q = &tm->params[i];
        double *dst = (double *)mg_model_params(m) + q->offset;
        const double *src = mg_model_param(g, q->name);
        if (strstr(q->name, ".attn.wk.") || strstr(q->name, ".attn.wv.")) {
            for (int h = 0; h < cm.num_heads; h++)
                memcpy(dst + (size_t)h * dh * d, src + (size_t)(h / grp) * dh * d, sizeof(double) * (size_t)dh * d);
        } else {
            memcpy(dst, src, sizeof(double) * (size_t)q->numel);
        }
    }
    const int B = 2, L = 24, V = cg.vocab_size;
    int32_t tok[2 * 24];
    tu_random_ids(tok, B * L, V);
    double *a = mg_malloc(sizeof(double) * (size_t)B * L * V), *b = mg_malloc(sizeof(double) * (size_t)B * L * V);
    mg_model_forward_logits(g, tok, B, L, NULL, NULL, a);
    mg_model_forward_logits(m, tok, B, L, NULL, NULL, b);
    double e = tu_max_rel_err(a, b, (size_t)B * L * V, tu_max_abs(b, (size_t)B * L * V));
    tu_check_err("llama grouped-query (4 heads, 2 kv heads) == multi-head with repeated wk/wv rows (float64 logits)",
                 e, 1e-13);
    free(a);
    free(b);
    mg_model_free(g);
    mg_model_free(m);
}

/* Token-by-token decoding with the KV cache, and a prefill followed by single tokens, equal the full
 * causal forward (fp32, normwise); the cache holds seq_len positions. */
static void test_llama_decoder(int kv) {
    MgConfig cfg;
    tu_tiny_llama(&cfg, 2000, kv);
    MgModel *m = mg_model_create(&cfg, &mg_cpu_backend_f32);
    mg_model_init_weights(m, 5);
    const MgParamTable *pt = mg_model_params_table(m);
    for (int i = 0; i < pt->count; i++) /* norm scales other than 1 */
        if (pt->params[i].init == MG_INIT_ZERO)
            for (int64_t j = 0; j < pt->params[i].numel; j++)
                ((float *)mg_model_params(m))[pt->params[i].offset + j] = (float)(0.1 * tu_normal());
    const int B = 2, L = cfg.seq_len, V = cfg.vocab_size;
    int32_t *tok = mg_malloc(sizeof(int32_t) * (size_t)B * L);
    tu_random_ids(tok, B * L, V);
    float *full = mg_malloc(sizeof(float) * (size_t)B * L * V);
    mg_model_forward_logits(m, tok, B, L, NULL, NULL, full);
    double *fd = mg_malloc(sizeof(double) * (size_t)B * L * V);
    tu_from_f32(fd, full, (size_t)B * L * V);
    const double floor = tu_max_abs(fd, (size_t)B * L * V);

    MgDecoder *d = mg_decoder_create(m, B);
    tu_check(mg_decoder_context(d) == L, "llama decoder context is seq_len", "%lld", (long long)mg_decoder_context(d));
    float *lg = mg_malloc(sizeof(float) * (size_t)B * V);
    double worst = 0.0;
    for (int t = 0; t < L; t++) { /* the whole context, one token at a time */
        int32_t one[2] = {tok[t], tok[L + t]};
        mg_decoder_step(d, one, 1, lg);
        for (int b = 0; b < B; b++)
            worst = fmax(worst, tu_max_rel_err_f32(lg + (size_t)b * V, fd + ((size_t)b * L + t) * V, (size_t)V, floor));
    }
    char name[160];
    snprintf(name, sizeof name, "llama decoder (kv heads %d) token-by-token over the whole context == full forward "
                                "(fp32, normwise)", kv ? kv : cfg.num_heads);
    tu_check_err(name, worst, 1e-4);

    mg_decoder_reset(d);
    const int P = 13;
    int32_t pre[2 * 13];
    for (int b = 0; b < B; b++) memcpy(pre + b * P, tok + b * L, sizeof(int32_t) * P);
    float *pl = mg_malloc(sizeof(float) * (size_t)B * P * V);
    mg_decoder_step(d, pre, P, pl);
    worst = 0.0;
    for (int b = 0; b < B; b++)
        worst = fmax(worst, tu_max_rel_err_f32(pl + (size_t)b * P * V, fd + (size_t)b * L * V, (size_t)P * V, floor));
    for (int t = P; t < L; t++) {
        int32_t one[2] = {tok[t], tok[L + t]};
        mg_decoder_step(d, one, 1, NULL);
        const float *last = mg_decoder_last_logits(d);
        for (int b = 0; b < B; b++)
            worst = fmax(worst, tu_max_rel_err_f32(last + (size_t)b * V, fd + ((size_t)b * L + t) * V, (size_t)V, floor));
    }
    snprintf(name, sizeof name, "llama decoder (kv heads %d) prefill of %d + single steps == full forward (normwise)",
             kv ? kv : cfg.num_heads, P);
    tu_check_err(name, worst, 1e-4);
    mg_decoder_free(d);
    free(pl);
    free(lg);
    free(fd);
    free(full);
    free(tok);
    mg_model_free(m);
}

static MgModel *g_llama;
static void run_llama_past_context(void *ctx) {
    MgDecoder **d = ctx; /* freed by the caller: the refusal leaves this function without returning */
    *d = mg_decoder_create(g_llama, 1);
    int32_t tok[40] = {0};
    mg_decoder_step(*d, tok, 40, NULL);
}
static void run_llama_piece(void *ctx) {
    (void)ctx;
    int32_t tok[16] = {0}, tgt[16] = {0};
    MgForwardOpts o = {.pos0 = 16, .seq_len = 32};
    int64_t n;
    mg_model_forward_loss(g_llama, tok, tgt, 1, 16, &o, NULL, NULL, &n);
}

static void test_llama(void) {
    MgConfig cfg;
    tu_tiny_llama(&cfg, 512, 2);
    gradcheck_model("(llama tiny, 4 heads sharing 2 kv heads, float64, B=2 L=12)", &cfg, 2, 12, 0.0);
    tu_tiny_llama(&cfg, 512, 0);
    cfg.share_emb = 1;
    cfg.scale_emb = 1;
    gradcheck_model("(llama tiny, multi-head, tied + scaled embedding, float64, B=1 L=16)", &cfg, 1, 16, 0.0);
    test_llama_gqa_equals_repeated_mha();
    test_llama_decoder(2);
    test_llama_decoder(0);
    tu_tiny_llama(&cfg, 512, 1);
    g_llama = mg_model_create(&cfg, &mg_cpu_backend_f32);
    mg_model_init_weights(g_llama, 1);
    MgDecoder *dec = NULL;
    tu_expect_failure("llama decoding past its context (seq_len) is refused", run_llama_past_context, &dec,
                      "context");
    if (dec) mg_decoder_free(dec);
    tu_expect_failure("llama pass over a piece of a sequence is refused", run_llama_piece, NULL,
                      "whole sequences only");
    mg_model_free(g_llama);
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
    tu_tiny_megalodon(&cfg, 32000);
    gradcheck_model("(tiny, float64, B=1 L=32, 2 chunks)", &cfg, 1, 32, 0.0);
    tu_tiny_megalodon(&cfg, 32000);
    cfg.swiglu = 0;
    cfg.vocab_size = 512; /* the variant check covers architecture switches; a small head keeps it fast */
    cfg.share_emb = 1;
    cfg.scale_emb = 1;
    gradcheck_model("(tiny without SwiGLU, tied + scaled embedding, all three dropouts 0.1)", &cfg, 2, 16, 0.1);
    test_state_carry();
    test_decoder();
    test_llama();

    tu_tiny_megalodon(&cfg, 32000);
    g_bad_model = mg_model_create(&cfg, &mg_cpu_backend_f32);
    mg_model_init_weights(g_bad_model, 1);
    tu_expect_failure("token id outside the vocabulary is refused", run_bad_token, NULL, "outside the vocabulary");
    tu_expect_failure("sequence length the chunk size cannot split is refused", run_bad_length, NULL,
                      "cannot be split into attention chunks");
    mg_model_free(g_bad_model);
    return tu_finish();
}
