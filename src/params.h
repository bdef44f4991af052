/* The parameter table: every model tensor's canonical name (docs: ../shared/docs/design.md), shape,
 * offset in the flat parameter arena, and how it is initialised. The same table names checkpoint
 * datasets, gradient buffers and optimizer state, so all of them share one layout. */
#ifndef MG_PARAMS_H
#define MG_PARAMS_H

#include <stdint.h>

#include "common.h"
#include "config.h"

typedef enum {
    MG_INIT_ZERO = 0,
    MG_INIT_HE,           /* Kaiming-normal a=sqrt(5), fan_in: std = 1/sqrt(3 fan_in) */
    MG_INIT_EMBED,        /* truncated normal, std 1/sqrt(d), cut at +-3 std */
    MG_INIT_CEMA_AD,      /* alpha, delta: N(0, 0.2^2) */
    MG_INIT_CEMA_THETA,   /* logit of a random permutation of d^(-k/d), k = 1..d */
    MG_INIT_CEMA_GAMMA,   /* real part N(0,1), imaginary part 0 */
    MG_INIT_CEMA_OMEGA,   /* truncated normal std 0.25 on [-1, 1] */
    MG_INIT_NORMAL_0_02,  /* normal, std 0.02 (Llama-2: every matrix and the embedding) */
} MgInit;

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[4];
    int64_t numel;
    int64_t offset;       /* in elements, into the flat arena */
    int layer;            /* -1 for embed / final_norm / lm_head */
    MgInit init;
    int64_t fan_in;       /* for MG_INIT_HE */
    int matmul;           /* 1 if used as a matrix in a matrix product (counts in 6N FLOPs) */
} MgParam;

typedef struct {
    MgParam *params;
    int count, cap;
    int64_t total;        /* elements */
    int64_t matmul_total; /* elements of matmul weights (incl. the LM head, excl. the embedding) */
} MgParamTable;

/* Build the table for a config (no allocation of the tensors themselves): the architecture of cfg->arch
 * declares its parameters (src/model/<arch>.c). */
void mg_param_table_build(const MgConfig *c, MgParamTable *t);
/* Append a tensor (name printf-style) at the end of the layout; used by the architectures. */
MgParam *mg_param_add(MgParamTable *t, int layer, MgInit init, int64_t fan_in, int matmul, int ndim,
                      const int64_t *shape, const char *fmt, ...) MG_PRINTF(8, 9);
void mg_param_table_free(MgParamTable *t);
/* Index of a parameter by name, or -1. */
int mg_param_find(const MgParamTable *t, const char *name);
/* Like mg_param_find, but a missing name is a fatal programming error. */
const MgParam *mg_param_get(const MgParamTable *t, const char *name);

/* Training FLOPs per token (design.md convention): 6 * matmul parameters + the architecture's attention
 * (Megalodon: per layer 3 * 2 * (c_eff/2) * (z + v) for chunk attention, c_eff = min(chunk_size, seq_len);
 * Llama: per layer 3 * 2 * (seq_len/2) * 2d for causal attention over the whole sequence). */
double mg_flops_per_token(const MgConfig *c, const MgParamTable *t);

#endif
