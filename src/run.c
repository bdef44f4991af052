#include "run.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "../kernels/cpu/cpu_ops.h"
#include "common.h"
#include "memcheck.h"

/* The registry name of a config's backend: cpu -> cpu-f32; cuda / cuda-emu -> bf16 or -fp32 by precision. */
static const char *backend_name(const MgConfig *cfg, char *buf, size_t n) {
    const char *prec = mg_config_precision(cfg);
    if (!strcmp(cfg->device, "cpu")) {
        if (strcmp(prec, "fp32") != 0)
            mg_fatal("precision = %s needs device = cuda (the CPU backend computes in fp32): use precision = fp32 or "
                     "auto, or --device cuda",
                     prec);
        return "cpu-f32";
    }
    snprintf(buf, n, "%s%s", cfg->device, !strcmp(prec, "bf16") ? "" : "-fp32");
    return buf;
}

const MgBackend *mg_backend_for(const MgConfig *cfg) {
    char buf[MG_NAME_MAX + 16];
    return mg_backend_get(backend_name(cfg, buf, sizeof buf));
}

MgBackend *mg_backend_open(const MgConfig *cfg) {
    char err[1024], buf[MG_NAME_MAX + 16];
    MgBackendOptions o = {.threads = cfg->threads, .local_rank = strcmp(cfg->device, "cpu") ? mg_local_rank() : -1};
    MgBackend *be = mg_backend_create(backend_name(cfg, buf, sizeof buf), 0, &o, err, sizeof err);
    if (!be) mg_fatal("%s", err);
    return be;
}

static float *io_base(const MgModelCkptIO *c, int group) {
    return group == MG_CKPT_GROUP_MODEL ? c->masters : group == MG_CKPT_GROUP_M ? c->m : c->v;
}

static int io_get(void *ctx, int group, const MgParam *p, int64_t start, int64_t count, float *dst, char *err,
                  size_t errlen) {
    const MgModelCkptIO *c = ctx;
    const float *src = io_base(c, group);
    if (!src) return mg_errf(err, errlen, "no %s arena to save", mg_ckpt_group_name(group));
    c->be->to_host(c->be, dst, src + p->offset + start, sizeof(float) * (size_t)count);
    return 0;
}

static int io_put(void *ctx, int group, const MgParam *p, int64_t start, int64_t count, const float *src, char *err,
                  size_t errlen) {
    const MgModelCkptIO *c = ctx;
    float *dst = io_base(c, group);
    if (!dst) return mg_errf(err, errlen, "no %s arena to load into", mg_ckpt_group_name(group));
    c->be->to_device(c->be, dst + p->offset + start, src, sizeof(float) * (size_t)count);
    return 0;
}

MgCkptTensorIO mg_model_ckpt_io(MgModelCkptIO *ctx) {
    return (MgCkptTensorIO){.ctx = ctx, .get = io_get, .put = io_put, .stage_elems = 0};
}

double mg_peak_flops(const MgConfig *cfg, char *desc, size_t desc_len) {
    if (cfg->peak_tflops > 0) {
        snprintf(desc, desc_len, "peak %.1f TFLOP/s (peak_tflops)", cfg->peak_tflops);
        return cfg->peak_tflops * 1e12;
    }
    if (strcmp(cfg->device, "cpu") != 0) {
        snprintf(desc, desc_len, "peak 989.4 TFLOP/s (H100/H200 SXM bf16 dense, the convention for every precision)");
        return 989.4e12;
    }
    /* Measured: the best of ten 1024^3 float32 products (~0.15 s), the ceiling our matrix products can
     * reach on this machine and thread count; the best rather than the mean, so a busy moment during
     * start-up does not inflate the MFU. */
    const int n = 1024;
    float *a = mg_malloc_aligned(sizeof(float) * (size_t)n * n), *b = mg_malloc_aligned(sizeof(float) * (size_t)n * n),
          *c = mg_malloc_aligned(sizeof(float) * (size_t)n * n);
    for (size_t i = 0; i < (size_t)n * n; i++) {
        a[i] = (float)((i * 2654435761u) % 1000) * 1e-3f;
        b[i] = (float)((i * 40503u) % 1000) * 1e-3f;
    }
    double best = 1e30;
    for (int r = 0; r < 11; r++) {
        double t0 = mg_now();
        cpu_gemm_f32(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double t = mg_now() - t0;
        if (r > 0 && t < best) best = t;
    }
    mg_free_aligned(a);
    mg_free_aligned(b);
    mg_free_aligned(c);
    double flops = 2.0 * n * n * (double)n / best;
    snprintf(desc, desc_len, "peak %.1f GFLOP/s = measured float32 GEMM (1024^3, %d threads, %s)", flops * 1e-9,
             mg_get_threads(), cpu_blas_info());
    return flops;
}

double mg_peak_rss_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss * 1024.0;
}

