/* Pieces shared by the run-time subcommands (train, eval, sample, bench). */
#ifndef MG_RUN_H
#define MG_RUN_H

#include <stdint.h>

#include "checkpoint.h"
#include "config.h"
#include "model.h"

/* Peak FLOP/s used for MFU and the sentence that states it. cfg->peak_tflops > 0 wins; otherwise on the
 * CPU the float32 GEMM throughput is measured once (a few 1024^3 products on the configured threads). */
double mg_peak_flops(const MgConfig *cfg, char *desc, size_t desc_len);

/* Peak resident set size of this process in bytes. */
double mg_peak_rss_bytes(void);

/* Build a model from the checkpoint named by `--ckpt` (extra_keys[0] must be "ckpt"): its stored config
 * with every `--key value` of argv applied on top, and its weights. The subcommand's own flags
 * (extra_keys, NULL-terminated) land in extra_values. Exits with a clear message on any problem; `cmd`
 * names the subcommand in it. The resolved config is written to cfg_out. Returns NULL (nothing left
 * allocated) if a stop request (signals.h) ended the loading. (src/train/ckpt.c) */
MgModel *mg_model_from_checkpoint(const char *cmd, int argc, char **argv, const char *const *extra_keys,
                                  const char **extra_values, MgConfig *cfg_out);

/* Backend for a config's device (the float32 backend on the CPU): the process-wide default instance. */
const MgBackend *mg_backend_for(const MgConfig *cfg);
/* A new backend instance for a config's device (device id 0, cfg->threads); exits with the backend's
 * message if it cannot be created. Free with mg_backend_destroy after the models using it. */
MgBackend *mg_backend_open(const MgConfig *cfg);

/* Checkpoint tensor I/O over a model's fp32 master weights and (optionally) AdamW moments in backend
 * memory: each tensor is staged through the host with be->to_host / be->to_device, so it works wherever
 * the arenas live. After a load into the masters, call mg_model_masters_changed. */
typedef struct {
    const MgBackend *be;
    float *masters, *m, *v;
} MgModelCkptIO;
MgCkptTensorIO mg_model_ckpt_io(MgModelCkptIO *ctx);

#endif
