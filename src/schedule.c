#include "schedule.h"

#include <math.h>
#include <string.h>

int mg_schedule_kind(const char *name, MgSchedKind *out) {
    if (!strcmp(name, "cosine")) *out = MG_SCHED_COSINE;
    else if (!strcmp(name, "linear")) *out = MG_SCHED_LINEAR;
    else if (!strcmp(name, "constant")) *out = MG_SCHED_CONSTANT;
    else return -1;
    return 0;
}

double mg_schedule_lr(const MgSchedule *s, int64_t step) {
    if (s->warmup_steps > 0 && step <= s->warmup_steps) {
        double frac = (double)step / (double)s->warmup_steps;
        return s->peak_lr * (s->warmup_init_ratio + (1.0 - s->warmup_init_ratio) * frac);
    }
    if (s->kind == MG_SCHED_CONSTANT) return s->peak_lr;
    int64_t span = s->max_steps - s->warmup_steps;
    double p = span > 0 ? (double)(step - s->warmup_steps) / (double)span : 1.0;
    if (p < 0) p = 0;
    if (p > 1) p = 1;
    double m = s->min_lr_ratio;
    if (s->kind == MG_SCHED_LINEAR) return s->peak_lr * (1.0 - (1.0 - m) * p);
    return s->peak_lr * (m + (1.0 - m) * 0.5 * (1.0 + cos(M_PI * p)));
}
