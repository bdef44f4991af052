/* Pieces shared by the run-time subcommands (train, eval, sample, bench). */
#ifndef MG_RUN_H
#define MG_RUN_H

#include <stdint.h>

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
 * names the subcommand in it. The resolved config is written to cfg_out. (src/train/ckpt.c) */
MgModel *mg_model_from_checkpoint(const char *cmd, int argc, char **argv, const char *const *extra_keys,
                                  const char **extra_values, MgConfig *cfg_out);

/* Backend for a config's device (the float32 backend on the CPU). */
const MgBackend *mg_backend_for(const MgConfig *cfg);

#endif
