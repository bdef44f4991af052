/* Learning-rate schedules: warm-up, cosine, linear, constant, re-warm. */
#include <math.h>

#include "../src/schedule.h"
#include "test_util.h"

int main(void) {
    tu_init("test_schedule");
    MgSchedule s = {.kind = MG_SCHED_COSINE, .peak_lr = 1e-3, .warmup_init_ratio = 0.0, .min_lr_ratio = 0.1,
                    .warmup_steps = 10, .max_steps = 110};
    tu_check(fabs(mg_schedule_lr(&s, 1) - 1e-4) < 1e-15, "warm-up step 1 = lr/10", "%g", mg_schedule_lr(&s, 1));
    tu_check(fabs(mg_schedule_lr(&s, 10) - 1e-3) < 1e-15, "warm-up reaches the peak at warmup_steps", "%g",
             mg_schedule_lr(&s, 10));
    double worst = 0;
    for (int64_t k = 1; k <= 10; k++) worst = fmax(worst, fabs(mg_schedule_lr(&s, k) - 1e-3 * k / 10.0));
    tu_check_err("warm-up is linear", worst, 1e-15);
    tu_check(fabs(mg_schedule_lr(&s, 60) - 1e-3 * (0.1 + 0.9 * 0.5)) < 1e-15, "cosine midpoint = (peak + floor)/2",
             "%g", mg_schedule_lr(&s, 60));
    tu_check(fabs(mg_schedule_lr(&s, 110) - 1e-4) < 1e-15, "cosine ends at min_lr_ratio * lr", "%g",
             mg_schedule_lr(&s, 110));
    tu_check(fabs(mg_schedule_lr(&s, 500) - 1e-4) < 1e-15, "after max_steps the floor holds", "%g",
             mg_schedule_lr(&s, 500));
    int mono = 1;
    for (int64_t k = 11; k < 110; k++) mono &= mg_schedule_lr(&s, k + 1) <= mg_schedule_lr(&s, k);
    tu_check(mono, "cosine decays monotonically", "ok");
    s.kind = MG_SCHED_LINEAR;
    tu_check(fabs(mg_schedule_lr(&s, 60) - 1e-3 * (1 - 0.9 * 0.5)) < 1e-15, "linear midpoint", "%g",
             mg_schedule_lr(&s, 60));
    tu_check(fabs(mg_schedule_lr(&s, 110) - 1e-4) < 1e-15, "linear ends at the floor", "%g", mg_schedule_lr(&s, 110));
    s.kind = MG_SCHED_CONSTANT;
    tu_check(mg_schedule_lr(&s, 11) == 1e-3 && mg_schedule_lr(&s, 110) == 1e-3, "constant after warm-up", "ok");
    /* Re-warm for continual pre-training: start at warmup_init_ratio * lr. */
    MgSchedule r = {.kind = MG_SCHED_COSINE, .peak_lr = 5e-4, .warmup_init_ratio = 0.2, .min_lr_ratio = 0.0,
                    .warmup_steps = 4, .max_steps = 8};
    tu_check(fabs(mg_schedule_lr(&r, 1) - 5e-4 * (0.2 + 0.8 / 4)) < 1e-15, "re-warm starts from warmup_init_ratio",
             "%g", mg_schedule_lr(&r, 1));
    tu_check(fabs(mg_schedule_lr(&r, 8)) < 1e-15, "re-decay to 0 with min_lr_ratio 0", "%g", mg_schedule_lr(&r, 8));
    MgSchedKind k;
    tu_check(mg_schedule_kind("cosine", &k) == 0 && k == MG_SCHED_COSINE && mg_schedule_kind("exp", &k) == -1,
             "schedule names parse, unknown refused", "ok");
    return tu_finish();
}
