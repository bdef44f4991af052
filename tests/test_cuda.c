/* The CUDA backend through the whole model, against the CPU: for each CUDA backend that can run here
 * (cuda-emu-fp32 and cuda-emu, the kernels on the CPU emulator, always; cuda-fp32 and cuda on a GPU):
 *   - the loss and every parameter gradient of one training step (dropout and DropKey on) against the
 *     float64 CPU backend holding exactly the same weights (the backend's compute-dtype values), for
 *     Megalodon and Llama (grouped-query heads);
 *   - carried state: the sequence in 2, 3 and 4 pieces, the CEMA and TimestepNorm states passed forward
 *     and their gradients backward, gives the loss and gradients of the whole sequence;
 *   - determinism: the same step twice gives the same bits;
 *   - an AdamW step through the model's arenas (masters, bf16 copy) equals the CPU's update.
 * Tolerances (stated per check): fp32 loss 1e-5 and gradients 5e-5 (per tensor, max |a - b| / max |b|);
 * bf16 loss 2e-2 and gradients 1e-1 (bf16 keeps 8 bits; errors grow through the layers). A real GPU
 * that is absent prints one skip line per backend with the reason. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../src/config.h"
#include "../src/model.h"
#include "test_util.h"

enum { B = 2, CHUNK = 16, L = 48, SEED = 11 };

typedef struct {
    const char *name;
    MgBackend *be;
} Under;

static double *to_double(const MgBackend *be, const void *p, int64_t n, MgDtype dt) {
    double *d = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    void *h = malloc(mg_dtype_size(dt) * (size_t)(n > 0 ? n : 1));
    be->to_host(be, h, p, mg_dtype_size(dt) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        if (dt == MG_F64) d[i] = ((double *)h)[i];
        else if (dt == MG_F32) d[i] = ((float *)h)[i];
        else {
            uint32_t u = (uint32_t)((uint16_t *)h)[i] << 16;
            float f;
            memcpy(&f, &u, 4);
            d[i] = f;
        }
    }
    free(h);
    return d;
}

static double *grads_of(MgModel *m) {
    const MgBackend *be = mg_model_backend(m);
    return to_double(be, mg_model_grads(m), mg_model_params_table(m)->total, be->dtype);
}

/* The reference gets the weights the backend computes with (its compute-dtype parameters). */
static void copy_weights(MgModel *src, MgModel *dst) {
    const MgBackend *sb = mg_model_backend(src), *db = mg_model_backend(dst);
    const int64_t n = mg_model_params_table(src)->total;
    double *w = to_double(sb, mg_model_params(src), n, sb->dtype);
    float *f = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) f[i] = (float)w[i]; /* exact: bf16 and fp32 values are floats */
    db->to_device(db, mg_model_masters(dst), f, sizeof(float) * (size_t)n);
    mg_model_masters_changed(dst);
    free(f);
    free(w);
}

static double grads_diff(const MgParamTable *t, const double *a, const double *b, const char **worst) {
    double w = 0.0;
    *worst = "-";
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

static void make_config(MgConfig *cfg, int llama) {
    if (llama) {
        tu_tiny_llama(cfg, 97, 1);
        cfg->num_heads = 2;
    } else {
        tu_tiny_megalodon(cfg, 97);
        cfg->chunk_size = CHUNK;
        cfg->num_heads = 2;
        cfg->dropout = cfg->hidden_dropout = cfg->attention_dropout = 0.1;
    }
    cfg->seq_len = L;
}

static MgForwardOpts train_opts(int llama, int64_t pos0) {
    return (MgForwardOpts){.seed = 0x5eed, .training = !llama, .seq0 = 0, .pos0 = pos0, .seq_len = L};
}

static void ids(int32_t *tok, int32_t *tgt, int V) {
    tu_random_ids(tok, (int64_t)B * L, V);
    tu_random_ids(tgt, (int64_t)B * L, V);
    tgt[3] = -1; /* an ignored target */
}

/* ---- loss and gradients against cpu-f64, and determinism ------------------------------------------- */
static void check_parity(const Under *u, int llama) {
    MgConfig cfg;
    make_config(&cfg, llama);
    const char *arch = llama ? "llama" : "megalodon";
    const int bf16 = u->be->dtype == MG_BF16;
    MgModel *m = mg_model_create(&cfg, u->be);
    mg_model_init_weights(m, SEED);
    char err[512];
    MgBackend *rb = mg_backend_create("cpu-f64", 0, NULL, err, sizeof err);
    MgModel *r = mg_model_create(&cfg, rb);
    copy_weights(m, r);
    int32_t tok[B * L], tgt[B * L];
    ids(tok, tgt, cfg.vocab_size);
    const double scale = 1.0 / (B * L - 1);
    MgPassArgs a = {.tokens = tok, .targets = tgt, .B = B, .L = L, .grad_scale = scale, .opts = train_opts(llama, 0)};
    int64_t n1 = 0, n2 = 0, nr = 0;
    mg_model_zero_grads(m);
    const double loss = mg_model_step(m, &a, &n1);
    double *g = grads_of(m);
    mg_model_zero_grads(r);
    const double loss_ref = mg_model_step(r, &a, &nr);
    double *gr = grads_of(r);
    const MgParamTable *pt = mg_model_params_table(m);
    const char *worst;
    const double el = fabs(loss - loss_ref) / fabs(loss_ref), eg = grads_diff(pt, g, gr, &worst);
    char name[160];
    snprintf(name, sizeof name, "cuda %s %s step vs cpu-f64 loss", u->name, arch);
    tu_check(el <= (bf16 ? 2e-2 : 1e-5) && n1 == nr, name, "loss %.9g vs %.9g: rel err %.2e (tol %.0e), counted %lld/%lld",
             loss, loss_ref, el, bf16 ? 2e-2 : 1e-5, (long long)n1, (long long)nr);
    snprintf(name, sizeof name, "cuda %s %s step vs cpu-f64 gradients", u->name, arch);
    tu_check(eg <= (bf16 ? 1e-1 : 5e-5), name, "worst tensor %s: %.2e (tol %.0e, %d tensors)", worst, eg,
             bf16 ? 1e-1 : 5e-5, pt->count);
    /* the same step again: the same bits */
    mg_model_zero_grads(m);
    const double loss2 = mg_model_step(m, &a, &n2);
    double *g2 = grads_of(m);
    int same = loss2 == loss && !memcmp(g, g2, sizeof(double) * (size_t)pt->total);
    snprintf(name, sizeof name, "cuda %s %s step is deterministic", u->name, arch);
    tu_check(same, name, "loss %.17g then %.17g", loss, loss2);
    /* AdamW through the model's arenas: the fp32 masters move as the formula says (in double here), and the
     * compute copy is the masters in the compute dtype */
    {
        const int64_t N = pt->total;
        const MgBackend *be = u->be;
        double *m0 = to_double(be, mg_model_masters(m), N, MG_F32);
        float *mom = be->alloc(be, sizeof(float) * (size_t)N), *vel = be->alloc(be, sizeof(float) * (size_t)N);
        const int sep = mg_model_has_separate_masters(m);
        MgAdamWArgs aw = {.n = N, .param = mg_model_masters(m), .grad = mg_model_grads(m),
                          .param_out = sep ? mg_model_params(m) : NULL, .m = mom, .v = vel, .lr = 1e-3, .beta1 = 0.9,
                          .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .grad_scale = 0.5, .step = 1};
        be->adamw_update(be, &aw);
        double *m1 = to_double(be, mg_model_masters(m), N, MG_F32), *p1 = to_double(be, mg_model_params(m), N, be->dtype);
        double em = 0.0, ep = 0.0;
        for (int64_t i = 0; i < N; i++) {
            const double gi = g2[i] * 0.5, mi = 0.1 * gi, vi = 0.05 * gi * gi;
            const double want = m0[i] - 1e-3 * ((mi / 0.1) / (sqrt(vi / 0.05) + 1e-8) + 0.1 * m0[i]);
            em = fmax(em, fabs(m1[i] - want) / fmax(fabs(want), 1e-3));
            ep = fmax(ep, fabs(p1[i] - m1[i]) / fmax(fabs(m1[i]), 1e-30));
        }
        snprintf(name, sizeof name, "cuda %s %s AdamW through the arenas", u->name, arch);
        tu_check(em <= 1e-5 && ep <= (bf16 ? 0x1p-8 : 0.0), name,
                 "masters vs the formula in double %.2e (tol 1e-5); compute copy vs masters %.2e (tol %s)", em, ep,
                 bf16 ? "2^-8, one bf16 rounding" : "0, the same buffer");
        be->free(be, mom);
        be->free(be, vel);
        free(m0);
        free(m1);
        free(p1);
    }
    free(g);
    free(g2);
    free(gr);
    mg_model_free(r);
    mg_backend_destroy(rb);
    mg_model_free(m);
}

/* ---- carried state: 2, 3 and 4 pieces with the states passed on equal the whole sequence ------------- */
static void check_pieces(const Under *u, int P) {
    MgConfig cfg;
    make_config(&cfg, 0);
    cfg.chunk_size = 4; /* pieces of 24, 16 and 12 tokens hold whole chunks */
    const int bf16 = u->be->dtype == MG_BF16, LP = L / P;
    MgModel *m = mg_model_create(&cfg, u->be);
    mg_model_init_weights(m, SEED);
    int32_t tok[B * L], tgt[B * L];
    ids(tok, tgt, cfg.vocab_size);
    const double scale = 1.0 / (B * L - 1);
    int64_t n = 0;
    mg_model_zero_grads(m);
    MgPassArgs a = {.tokens = tok, .targets = tgt, .B = B, .L = L, .grad_scale = scale, .opts = train_opts(0, 0)};
    const double whole = mg_model_step(m, &a, &n);
    double *gw = grads_of(m);
    /* forward pieces to collect the states, then backward from the last piece with the state gradients */
    MgModelState *st[5], *dst[5];
    for (int i = 0; i <= P; i++) {
        st[i] = mg_model_state_create(m, B);
        dst[i] = mg_model_state_create(m, B);
        mg_model_state_reset(m, st[i]);
        mg_model_state_zero(m, dst[i]);
    }
    int32_t *pt_ = malloc(sizeof(int32_t) * B * L), *pg = malloc(sizeof(int32_t) * B * L); /* piece p at p * B * LP */
    for (int p = 0; p < P; p++)
        for (int b = 0; b < B; b++) {
            memcpy(pt_ + (size_t)p * B * LP + b * LP, tok + b * L + p * LP, sizeof(int32_t) * LP);
            memcpy(pg + (size_t)p * B * LP + b * LP, tgt + b * L + p * LP, sizeof(int32_t) * LP);
        }
    for (int p = 0; p < P; p++) {
        MgPassArgs q = {.tokens = pt_ + (size_t)p * B * LP, .targets = pg + (size_t)p * B * LP, .B = B, .L = LP,
                        .opts = train_opts(0, p * LP), .state_in = st[p], .state_out = st[p + 1]};
        int64_t c;
        (void)mg_model_eval(m, &q, &c);
    }
    mg_model_zero_grads(m);
    double sum = 0.0;
    for (int p = P - 1; p >= 0; p--) {
        MgPassArgs q = {.tokens = pt_ + (size_t)p * B * LP, .targets = pg + (size_t)p * B * LP, .B = B, .L = LP,
                        .grad_scale = scale, .opts = train_opts(0, p * LP), .state_in = st[p],
                        .dstate_out = p == P - 1 ? NULL : dst[p + 1], .dstate_in = dst[p]};
        int64_t c;
        sum += mg_model_step(m, &q, &c);
    }
    double *gp = grads_of(m);
    const char *worst;
    const double el = fabs(sum - whole) / fabs(whole), eg = grads_diff(mg_model_params_table(m), gp, gw, &worst);
    char name[160];
    snprintf(name, sizeof name, "cuda %s megalodon %d pieces with carried state = whole sequence", u->name, P);
    tu_check(el <= (bf16 ? 1e-2 : 1e-5) && eg <= (bf16 ? 1e-1 : 5e-5), name,
             "loss rel err %.2e (tol %.0e), gradients %.2e in %s (tol %.0e)", el, bf16 ? 1e-2 : 1e-5, eg, worst,
             bf16 ? 1e-1 : 5e-5);
    for (int i = 0; i <= P; i++) {
        mg_model_state_free(m, st[i]);
        mg_model_state_free(m, dst[i]);
    }
    free(pt_);
    free(pg);
    free(gw);
    free(gp);
    mg_model_free(m);
}

int main(int argc, char **argv) {
    (void)argc;
    tu_init(argv[0]);
    static const char *const names[] = {"cuda-emu-fp32", "cuda-emu", "cuda-fp32", "cuda"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char why[1024];
        Under u = {names[i], mg_backend_create(names[i], 0, NULL, why, sizeof why)};
        if (!u.be) {
            tu_skip(names[i], "%s%s", strncmp(names[i], "cuda-emu", 8) ? TU_NO_GPU ": " : "", why);
            continue;
        }
        check_parity(&u, 0);
        check_parity(&u, 1);
        for (int P = 2; P <= 4; P++) check_pieces(&u, P);
        mg_backend_destroy(u.be);
    }
    return tu_finish();
}
