/* `megalodon bench`: training-step throughput on random tokens (forward + backward + AdamW), the
 * FLOP convention of design.md, and the process's peak memory. One line per run is machine-readable:
 *   bench seq_len=L batch=B steps=k tokens_per_s=X ms_per_step=Y mfu=Z activation_mib=A peak_rss_mib=R */
#include <math.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "config.h"
#include "model.h"
#include "params.h"
#include "rng.h"
#include "run.h"
#ifdef MG_HAVE_CUDA
#include "../kernels/cuda/mg_cuda.h"
#endif

int cmd_bench(int argc, char **argv) {
    static const char *const extra[] = {"steps", "warmup", "profile", NULL};
    const char *vals[3] = {0};
    MgConfig c;
    mg_config_defaults(&c);
    mg_config_from_args(&c, argc, argv, extra, vals);
    if (c.max_steps <= 0) c.max_steps = 1; /* not used by bench; lets a model-only config validate */
    char err[4096];
    if (mg_config_validate(&c, err, sizeof err)) mg_fatal("%s", err);
    int steps = vals[0] ? atoi(vals[0]) : 3, warmup = vals[1] ? atoi(vals[1]) : 1;
    if (steps < 1) mg_fatal("--steps must be at least 1");
    mg_set_threads(c.threads);
    const MgBackend *be = mg_backend_for(&c);
    if (!strcmp(c.device, "cuda")) {
#ifdef MG_HAVE_CUDA
        /* the ceilings every figure below is read against (docs/performance.md) */
        char info[256];
        mg_cuda_device_info(be->device, info, sizeof info);
        printf("device: %s\n", info);
        double gbs = 0.0, tf = 0.0;
        mg_cuda_ceilings(be, (size_t)1 << 30, 8192, 5, &gbs, &tf);
        printf("ceilings: device-to-device copy %.0f GB/s (1 GiB, bytes read + written); %s matrix product 8192^3 "
               "%.1f TFLOP/s (cuBLASLt, fp32 accumulation; %.1f%% of the 989.4 TFLOP/s bf16 dense peak)\n",
               gbs, mg_dtype_name(be->dtype), tf, 100.0 * tf / 989.4);
        printf("bench_ceilings copy_gbs=%.1f gemm_tflops=%.2f dtype=%s\n", gbs, tf, mg_dtype_name(be->dtype));
        mg_profile_set_ceilings(gbs, tf); /* the --profile table's "of ceiling" column */
#endif
    }
    int profile = vals[2] && atoi(vals[2]);
    if (profile) be = mg_backend_profile_wrap(be);
    MgModel *m = mg_model_create(&c, be);
    mg_model_init_weights(m, c.seed);
    const MgParamTable *pt = mg_model_params_table(m);
    float *mom = be->alloc(be, sizeof(float) * (size_t)pt->total), *vel = be->alloc(be, sizeof(float) * (size_t)pt->total);
    const int B = c.batch_size, L = c.seq_len;
    int32_t *tok = mg_malloc(sizeof(int32_t) * (size_t)B * (L + 1)), *in = mg_malloc(sizeof(int32_t) * (size_t)B * L),
            *tg = mg_malloc(sizeof(int32_t) * (size_t)B * L);
    MgRng rng;
    mg_rng_seed(&rng, c.seed);
    char desc[256];
    double peak = mg_peak_flops(&c, desc, sizeof desc);
    double fpt = mg_flops_per_token(&c, pt);
    printf("bench: %lld parameters, batch %d x %d tokens, %d threads, backend %s\n", (long long)pt->total, B, L,
           mg_get_threads(), be->name);
    printf("FLOPs per token %.4g (6 x matmul params + causal attention); %s\n", fpt, desc);
    double best = 1e30, total = 0.0;
    for (int s = 0; s < warmup + steps; s++) {
        for (int i = 0; i < B * (L + 1); i++) tok[i] = (int32_t)(mg_rng_u64(&rng) % (uint64_t)c.vocab_size);
        for (int b = 0; b < B; b++) {
            memcpy(in + (size_t)b * L, tok + (size_t)b * (L + 1), sizeof(int32_t) * (size_t)L);
            memcpy(tg + (size_t)b * L, tok + (size_t)b * (L + 1) + 1, sizeof(int32_t) * (size_t)L);
        }
        double t0 = mg_now();
        mg_model_zero_grads(m);
        int64_t n = 0;
        MgForwardOpts opts = {.seed = (uint64_t)s, .training = 1};
        double loss = mg_model_forward_backward(m, in, tg, B, L, 1.0 / ((double)B * L), &opts, NULL, NULL, &n);
        double gn = sqrt(be->sum_squares(be, mg_model_grads(m), pt->total));
        MgAdamWArgs aw = {.n = pt->total, .param = mg_model_masters(m), .grad = mg_model_grads(m),
                          .param_out = mg_model_has_separate_masters(m) ? mg_model_params(m) : NULL, .m = mom, .v = vel,
                          .lr = 1e-4, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1,
                          .grad_scale = gn > 1.0 ? 1.0 / gn : 1.0, .step = s + 1};
        be->adamw_update(be, &aw);
        be->synchronize(be);
        double dt = mg_now() - t0;
        printf("  step %d%s: %.3f s, loss %.4f, %.0f tokens/s\n", s + 1, s < warmup ? " (warm-up)" : "", dt,
               loss / (double)n, (double)B * L / dt);
        fflush(stdout);
        if (s == warmup - 1 && profile) mg_profile_reset();
        if (s >= warmup) {
            total += dt;
            if (dt < best) best = dt;
        }
    }
    double tps = (double)B * L * steps / total;
    size_t act = mg_model_activation_bytes(m, B, L);
    const size_t ws = be->workspace_bytes(be, NULL);
    printf("bench seq_len=%d batch=%d steps=%d tokens_per_s=%.1f ms_per_step=%.1f best_ms=%.1f mfu=%.4f "
           "activation_mib=%.1f workspace_mib=%.1f peak_rss_mib=%.1f threads=%d\n",
           L, B, steps, tps, 1e3 * total / steps, 1e3 * best, fpt * tps / peak, (double)act / 1048576.0,
           (double)ws / 1048576.0, mg_peak_rss_bytes() / 1048576.0, mg_get_threads());
    if (profile) mg_profile_report(stdout, steps);
    be->free(be, mom);
    be->free(be, vel);
    free(tok);
    free(in);
    free(tg);
    mg_model_free(m);
    return 0;
}
