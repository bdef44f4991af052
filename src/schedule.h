/* Learning-rate schedules: linear warm-up from lr*warmup_init_ratio to lr over warmup_steps, then
 *   cosine:   lr * (m + (1-m) * (1 + cos(pi * p)) / 2)
 *   linear:   lr * (1 - (1-m) * p)
 *   constant: lr
 * where p = (step - warmup) / (max_steps - warmup) in [0, 1] and m = min_lr_ratio.
 * Continual pre-training (init_from) starts a new schedule whose warm-up ("re-warm") lasts rewarm_steps
 * and rises to the new peak lr, then re-decays; see docs/training.md. */
#ifndef MG_SCHEDULE_H
#define MG_SCHEDULE_H

#include <stdint.h>

typedef enum { MG_SCHED_COSINE = 0, MG_SCHED_LINEAR, MG_SCHED_CONSTANT } MgSchedKind;

typedef struct {
    MgSchedKind kind;
    double peak_lr, warmup_init_ratio, min_lr_ratio;
    int64_t warmup_steps, max_steps;
} MgSchedule;

/* Parse "cosine" | "linear" | "constant"; returns -1 if unknown. */
int mg_schedule_kind(const char *name, MgSchedKind *out);
/* Learning rate for optimizer step `step` (1-based). */
double mg_schedule_lr(const MgSchedule *s, int64_t step);

#endif
