/* The staged tensor I/O (MgCkptTensorIO, checkpoint.h): group names, the staging bound, and the host-memory
 * implementation behind mg_ckpt_save / mg_ckpt_load / mg_ckpt_dir_save. */
#include <string.h>

#include "../common.h"
#include "internal.h"

const char *mg_ckpt_group_name(int group) {
    static const char *const names[3] = {"model", "optimizer/m", "optimizer/v"};
    return group >= 0 && group < 3 ? names[group] : "?";
}

int64_t mg_ckpt_stage_elems(const MgParamTable *t, const MgCkptTensorIO *io) {
    int64_t bound = io && io->stage_elems > 0 ? io->stage_elems : MG_CKPT_STAGE_DEFAULT, largest = 0;
    for (int i = 0; i < t->count; i++) largest = MG_MAX(largest, t->params[i].numel);
    return MG_MAX(MG_MIN(bound, largest), 1);
}

/* n floats, in parallel over 1 MiB blocks for large ranges (the copy into the staging buffer is one more
 * pass over memory than reading the arenas in place; spread over the cores it stays small next to disk time). */
static void copy_f32(float *dst, const float *src, int64_t n) {
    const int64_t B = (int64_t)1 << 18;
    int64_t nb = (n + B - 1) / B;
#pragma omp parallel for schedule(static) if (nb > 4)
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * B, len = MG_MIN(B, n - lo);
        memcpy(dst + lo, src + lo, sizeof(float) * (size_t)len);
    }
}

/* Host arenas: plain copies. A NULL arena (a group the caller did not pass) is a programming error that
 * the wrappers rule out, reported rather than dereferenced. */
static int host_get(void *ctx, int group, const MgParam *p, int64_t start, int64_t count, float *dst, char *err,
                    size_t errlen) {
    const CkptHostArrays *h = ctx;
    if (group < 0 || group > 2 || !h->src[group])
        return mg_errf(err, errlen, "no host array for group '%s'", mg_ckpt_group_name(group));
    copy_f32(dst, h->src[group] + p->offset + start, count);
    return 0;
}

static int host_put(void *ctx, int group, const MgParam *p, int64_t start, int64_t count, const float *src,
                    char *err, size_t errlen) {
    const CkptHostArrays *h = ctx;
    if (group < 0 || group > 2 || !h->dst[group])
        return mg_errf(err, errlen, "no host array for group '%s'", mg_ckpt_group_name(group));
    copy_f32(h->dst[group] + p->offset + start, src, count);
    return 0;
}

static const float *host_view(void *ctx, int group, const MgParam *p) {
    const CkptHostArrays *h = ctx;
    return group >= 0 && group <= 2 && h->src[group] ? h->src[group] + p->offset : NULL;
}

MgCkptTensorIO ckpt_host_io(CkptHostArrays *h) {
    MgCkptTensorIO io = {h, host_get, host_put, 0, NULL};
    return io;
}

MgCkptTensorIO ckpt_host_io_in_place(CkptHostArrays *h) {
    MgCkptTensorIO io = {h, host_get, host_put, 0, host_view};
    return io;
}
