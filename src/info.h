/* `megalodon info`: what a config costs before anything is allocated: exact parameter count with a
 * per-module breakdown, training FLOPs per token and per step, and the memory of one training step. */
#ifndef MG_INFO_H
#define MG_INFO_H

#include <stdio.h>

#include "config.h"
#include "params.h"

/* Bytes of activations the trainer keeps for one micro-batch of B sequences of L tokens, with act_bytes
 * bytes per stored activation (4 fp32, 2 bf16; statistics stay fp32): the trainer's own arena plan
 * (mg_activation_plan_bytes, src/model/driver.c and the architecture's plan): per layer the TimestepNorm, CEMA, RMSNorm, Z, Q, K, values, gate, attention output,
 * gated output, FFN input/norm/hidden tensors and their statistics; the residual stream; the final norm;
 * the backward scratch reused by every layer; the LM head's 512-row logits block. */
double mg_activation_bytes(const MgConfig *c, int B, int L, int act_bytes);

typedef struct {
    double params, grads, moments, master, activations, total; /* bytes per device */
    int param_bytes, act_bytes;                                 /* bytes per value for this precision */
} MgMemoryEstimate;

/* Memory of one training step for the configured micro-batch (batch_size x seq_len) and precision:
 * parameters and gradients in the compute precision, AdamW moments in fp32, fp32 master weights when
 * bf16, activations from mg_activation_bytes. One device holds the whole model (no sharding). */
void mg_memory_estimate(const MgConfig *c, const MgParamTable *t, MgMemoryEstimate *m);

/* The full `info` report for a validated config. */
void mg_info_print(const MgConfig *c, FILE *f);

#endif
