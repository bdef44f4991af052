/* Precision-generic CPU code. Every file in kernels/cpu/ is compiled twice: once as float32 (the
 * training build) and once with -DMG_FP64 as float64 (gradient checks, state-carrying exactness tests).
 * Write kernels with `real` and name every external function CPU_FN(name): it becomes
 * cpu_<name>_f32 or cpu_<name>_f64, so both precisions link into one binary side by side.
 * <tgmath.h> makes exp/sqrt/... pick the float or double version from the argument type. */
#ifndef MG_CPU_REAL_H
#define MG_CPU_REAL_H

#include <math.h>
#include <stdint.h>
#include <tgmath.h>

#include "../ops.h"
#include "cpu_ops.h"

#ifdef MG_FP64
typedef double real;
#define MG_REAL_DTYPE MG_F64
#define CPU_FN(name) cpu_##name##_f64
#define CPU_PREC "f64"
#else
typedef float real;
#define MG_REAL_DTYPE MG_F32
#define CPU_FN(name) cpu_##name##_f32
#define CPU_PREC "f32"
#endif

/* Accumulator type for reductions that must not lose precision in the float32 build. */
typedef double acc_t;

#endif
