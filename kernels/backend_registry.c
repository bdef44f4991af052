/* Backend lookup, creation and destruction by name, and thread control. */
#include <string.h>

#include "cpu/cpu_ops.h"
#include "ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef MG_HAVE_BLAS
void openblas_set_num_threads(int num_threads);
#endif

/* The CPU template for a name, or NULL (err says why). */
static const MgBackend *cpu_template(const char *name, char *err, size_t errlen) {
    if (!strcmp(name, "cpu") || !strcmp(name, "cpu-f32")) return &mg_cpu_backend_f32;
    if (!strcmp(name, "cpu-f64")) return &mg_cpu_backend_f64;
    if (!strcmp(name, "cuda") || !strncmp(name, "cuda-", 5))
        mg_errf(err, errlen,
                "device '%s': the CUDA backend is not implemented yet (it is the next milestone); use --device cpu",
                name);
    else
        mg_errf(err, errlen, "unknown device '%s' (expected one of: cpu, cpu-f32, cpu-f64)", name);
    return NULL;
}

MgBackend *mg_backend_create(const char *name, int device, const MgBackendOptions *opts, char *err, size_t errlen) {
    const MgBackend *tmpl = cpu_template(name, err, errlen);
    if (!tmpl) return NULL;
    if (device != 0) {
        mg_errf(err, errlen, "device '%s' has one device (id 0); got device id %d", name, device);
        return NULL;
    }
    if (opts && opts->threads > 0) mg_set_threads(opts->threads);
    MgBackend *be = mg_malloc(sizeof(MgBackend));
    *be = *tmpl;
    be->device = device;
    be->ctx = cpu_ctx_create();
    return be;
}

void mg_backend_destroy(MgBackend *be) {
    if (!be) return;
    MG_CHECK(be != &mg_cpu_backend_f32 && be != &mg_cpu_backend_f64,
             "mg_backend_destroy: the default instances are never destroyed");
    cpu_ctx_destroy(be->ctx);
    free(be);
}

const MgBackend *mg_backend_get(const char *name) {
    char err[512];
    const MgBackend *be = cpu_template(name, err, sizeof err);
    if (!be) mg_fatal("%s", err);
    return be;
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
