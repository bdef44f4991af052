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

/* Build a model from a checkpoint: its stored config (with `overrides` applied, argc/argv style
 * `--key value` pairs, may be 0) and its weights. Exits with a clear message on any problem. The resolved
 * config is written to cfg_out. */
MgModel *mg_model_from_checkpoint(const char *path, int argc, char **argv, const char *const *extra_keys,
                                  MgConfig *cfg_out);

/* Backend for a config's device (the float32 backend on the CPU). */
const MgBackend *mg_backend_for(const MgConfig *cfg);

#endif
