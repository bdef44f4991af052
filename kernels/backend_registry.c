/* Backend lookup by name and thread control. */
#include <string.h>

#include "ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef MG_HAVE_BLAS
void openblas_set_num_threads(int num_threads);
#endif

const MgBackend *mg_backend_get(const char *name) {
    if (!strcmp(name, "cpu") || !strcmp(name, "cpu-f32")) return &mg_cpu_backend_f32;
    if (!strcmp(name, "cpu-f64")) return &mg_cpu_backend_f64;
    if (!strcmp(name, "cuda") || !strncmp(name, "cuda-", 5))
        mg_fatal("device '%s': the CUDA backend is not implemented yet (it is the next milestone); "
                 "use --device cpu",
                 name);
    mg_fatal("unknown device '%s' (expected one of: cpu, cpu-f32, cpu-f64)", name);
}

void mg_set_threads(int n) {
    if (n <= 0) return;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
#ifdef MG_HAVE_BLAS
    openblas_set_num_threads(n);
#endif
}

int mg_get_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
