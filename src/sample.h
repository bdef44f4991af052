/* Text generation with the recurrent decoder (constant memory in context length). */
#ifndef MG_SAMPLE_H
#define MG_SAMPLE_H

#include <stdio.h>

#include "config.h"
#include "model.h"
#include "rng.h"

typedef struct {
    double temperature; /* 0 = greedy */
    int top_k;          /* 0 = off */
    double top_p;       /* 1 = off */
} MgSamplerOpts;

/* Pick a token id from logits[0..V) (modified in place). */
int mg_sample_token(float *logits, int V, const MgSamplerOpts *o, MgRng *rng);

/* During training: print a short sample from a fixed prompt using cfg's tokenizer and sampling keys
 * (skipped with a note if the tokenizer cannot be loaded). */
void mg_sample_during_training(MgModel *m, const MgConfig *cfg, FILE *out);

#endif
