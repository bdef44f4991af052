/* Carried state (and state gradients): one backend allocation holding the architecture's tensors for B
 * sequences, layer by layer, then the final norm's. Counts are int64; the rest is in the state dtype. */
#include <string.h>

#include "../common.h"
#include "arch.h"

static size_t tensor_bytes(const MgModel *m, const MgStateSpec *s, int B) {
    const size_t es = s->is_count ? sizeof(int64_t) : m->ss;
    return ((size_t)s->per_seq * (size_t)B * es + 63) & ~(size_t)63;
}

MgModelState *mg_model_state_create(const MgModel *m, int B) {
    MG_CHECK(B >= 1, "model state: batch %d must be >= 1", B);
    MgModelState *s = mg_calloc(1, sizeof(MgModelState));
    s->B = B;
    s->n = m->n_state;
    s->ptr = mg_calloc((size_t)MG_MAX(s->n, 1), sizeof(void *));
    const int nl = m->cfg.n_layers;
    size_t total = 0;
    for (int l = 0; l <= nl; l++)
        for (int k = 0; k < mg_state_per_layer(m, l); k++) total += tensor_bytes(m, mg_state_spec(m, l, k), B);
    s->bytes = total;
    s->arena = m->be->alloc(m->be, MG_MAX(total, (size_t)64));
    size_t o = 0;
    for (int l = 0; l <= nl; l++)
        for (int k = 0; k < mg_state_per_layer(m, l); k++) {
            s->ptr[mg_state_index(m, l, k)] = (char *)s->arena + o;
            o += tensor_bytes(m, mg_state_spec(m, l, k), B);
        }
    mg_model_state_reset(m, s);
    return s;
}

void mg_model_state_free(const MgModel *m, MgModelState *s) {
    if (!s) return;
    m->be->free(m->be, s->arena);
    free(s->ptr);
    free(s);
}

/* Fill every tensor with its spec's fresh value (fresh = 0) or with zeros (fresh = 0 for all). */
static void fill(const MgModel *m, MgModelState *s, int fresh) {
    const MgBackend *be = m->be;
    be->memset0(be, s->arena, s->bytes);
    if (!fresh) return;
    const int nl = m->cfg.n_layers;
    for (int l = 0; l <= nl; l++)
        for (int k = 0; k < mg_state_per_layer(m, l); k++) {
            const MgStateSpec *sp = mg_state_spec(m, l, k);
            if (sp->fresh == 0.0) continue;
            const int64_t n = sp->per_seq * s->B;
            void *h = mg_malloc((size_t)n * (sp->is_count ? sizeof(int64_t) : m->ss));
            for (int64_t i = 0; i < n; i++) {
                if (sp->is_count) ((int64_t *)h)[i] = (int64_t)sp->fresh;
                else if (m->ss == 8) ((double *)h)[i] = sp->fresh;
                else ((float *)h)[i] = (float)sp->fresh;
            }
            be->to_device(be, s->ptr[mg_state_index(m, l, k)], h, (size_t)n * (sp->is_count ? sizeof(int64_t) : m->ss));
            free(h);
        }
}

void mg_model_state_reset(const MgModel *m, MgModelState *s) { fill(m, s, 1); }
void mg_model_state_zero(const MgModel *m, MgModelState *s) { fill(m, s, 0); }

void mg_model_state_copy(const MgModel *m, MgModelState *dst, const MgModelState *src) {
    MG_CHECK(dst->B == src->B, "state copy: batch sizes differ (%d vs %d)", dst->B, src->B);
    m->be->copy(m->be, dst->arena, src->arena, src->bytes);
}

int mg_model_state_batch(const MgModelState *s) { return s->B; }
int mg_model_state_count(const MgModel *m) { return m->n_state; }

void *mg_model_state_tensor(const MgModel *m, const MgModelState *s, int i, int *layer, const char **name,
                            MgDtype *dtype, int64_t *numel) {
    MG_CHECK(i >= 0 && i < m->n_state, "model state: tensor %d of %d", i, m->n_state);
    const int nl = m->cfg.n_layers;
    const int l = i < nl * m->n_lstate ? i / m->n_lstate : nl;
    const int k = l < nl ? i % m->n_lstate : i - nl * m->n_lstate;
    const MgStateSpec *sp = mg_state_spec(m, l, k);
    if (layer) *layer = l;
    if (name) *name = sp->name;
    if (dtype) *dtype = sp->is_count ? MG_I64 : m->be->state_dtype;
    if (numel) *numel = sp->per_seq * s->B;
    return s->ptr[i];
}
