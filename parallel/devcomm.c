/* The staged device collectives (devcomm.h) and the constructor by kind. */
#include "devcomm.h"

#include <stdlib.h>
#include <string.h>

#include "shard.h"

typedef struct {
    void *host_in, *host_out;
    size_t cap_in, cap_out;
} Staged;

static void *grow(void **p, size_t *cap, size_t bytes) {
    if (bytes > *cap) {
        free(*p);
        *p = mg_malloc(bytes ? bytes : 1);
        *cap = bytes;
    }
    return *p;
}

static void staged_reduce_scatter(MgDevComm *c, const float *in, float *out, int64_t n) {
    Staged *s = c->ctx;
    int64_t off, len;
    mg_shard_range(n, c->size, c->rank, &off, &len);
    float *hin = grow(&s->host_in, &s->cap_in, sizeof(float) * (size_t)n);
    float *hout = grow(&s->host_out, &s->cap_out, sizeof(float) * (size_t)MG_MAX(len, 1));
    c->be->to_host(c->be, hin, in, sizeof(float) * (size_t)n);
    mg_reduce_scatter_sum(c->t, MG_F32, hin, n, hout);
    c->be->to_device(c->be, out, hout, sizeof(float) * (size_t)len);
}

static void staged_all_gather(MgDevComm *c, void *buf, int64_t n, size_t es) {
    Staged *s = c->ctx;
    void *h = grow(&s->host_in, &s->cap_in, es * (size_t)n);
    c->be->to_host(c->be, h, buf, es * (size_t)n);
    mg_all_gather_shards(c->t, es, h, n);
    c->be->to_device(c->be, buf, h, es * (size_t)n);
}

static void staged_destroy(MgDevComm *c) {
    Staged *s = c->ctx;
    free(s->host_in);
    free(s->host_out);
    free(s);
    free(c);
}

MgDevComm *mg_devcomm_create(const char *kind, MgTransport *t, const MgBackend *be, char *err, size_t errlen) {
    if (!strcmp(kind, "nccl")) return mg_devcomm_nccl_create(t, be, err, errlen);
    if (strcmp(kind, "staged") != 0) {
        mg_errf(err, errlen, "unknown device collective '%s' (nccl or staged)", kind);
        return NULL;
    }
    MgDevComm *c = mg_calloc(1, sizeof *c);
    c->kind = "staged";
    c->rank = t->rank;
    c->size = t->size;
    c->be = be;
    c->t = t;
    c->ctx = mg_calloc(1, sizeof(Staged));
    c->reduce_scatter_f32 = staged_reduce_scatter;
    c->all_gather = staged_all_gather;
    c->destroy = staged_destroy;
    return c;
}

void mg_devcomm_free(MgDevComm *c) {
    if (c) c->destroy(c);
}
