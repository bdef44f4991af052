/* MgCkptMeta: the root attributes of a checkpoint (step, tokens, config text and the trainer's extras)
 * as they live in memory; reading and writing them to HDF5 is in h5io.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "internal.h"

static const char *const RESERVED[] = {"format", "format_version", "step", "tokens_seen", "config", MG_CKPT_ATTR_COUNTS};

int ckpt_is_reserved(const char *name) {
    for (size_t i = 0; i < sizeof(RESERVED) / sizeof(RESERVED[0]); i++)
        if (!strcmp(name, RESERVED[i])) return 1;
    return 0;
}

void mg_ckpt_meta_init(MgCkptMeta *m) {
    memset(m, 0, sizeof(*m));
    m->format_version = MG_CKPT_FORMAT_VERSION;
}

void ckpt_entry_free(MgMetaEntry *e) {
    free(e->i64);
    free(e->f64);
    free(e->str);
    memset(e, 0, sizeof(*e));
}

void mg_ckpt_meta_free(MgCkptMeta *m) {
    for (int i = 0; i < m->n_extra; i++) ckpt_entry_free(&m->extra[i]);
    free(m->extra);
    free(m->config_text);
    mg_ckpt_meta_init(m);
}

void mg_ckpt_meta_set_config(MgCkptMeta *m, const char *config_text) {
    free(m->config_text);
    m->config_text = config_text ? mg_strdup(config_text) : NULL;
}

const MgMetaEntry *mg_ckpt_meta_find(const MgCkptMeta *m, const char *name) {
    for (int i = 0; i < m->n_extra; i++)
        if (!strcmp(m->extra[i].name, name)) return &m->extra[i];
    return NULL;
}

/* A slot for `name` (existing entries are emptied and reused so the order stays stable). */
MgMetaEntry *ckpt_meta_slot(MgCkptMeta *m, const char *name, int check) {
    if (check) {
        MG_CHECK(name && name[0] && strlen(name) < MG_CKPT_META_NAME_MAX && !strchr(name, '/'),
                 "checkpoint attribute name '%s' is invalid (1..%d characters, no '/')", name ? name : "(null)",
                 MG_CKPT_META_NAME_MAX - 1);
        MG_CHECK(!ckpt_is_reserved(name), "checkpoint attribute name '%s' is reserved; pick another name", name);
    }
    for (int i = 0; i < m->n_extra; i++)
        if (!strcmp(m->extra[i].name, name)) {
            ckpt_entry_free(&m->extra[i]);
            snprintf(m->extra[i].name, sizeof(m->extra[i].name), "%s", name);
            return &m->extra[i];
        }
    if (m->n_extra == m->cap_extra) {
        m->cap_extra = m->cap_extra ? 2 * m->cap_extra : 8;
        m->extra = mg_realloc(m->extra, sizeof(MgMetaEntry) * (size_t)m->cap_extra);
    }
    MgMetaEntry *e = &m->extra[m->n_extra++];
    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", name);
    return e;
}

void mg_ckpt_meta_set_i64_array(MgCkptMeta *m, const char *name, const int64_t *values, int64_t n) {
    MG_CHECK(n >= 0, "checkpoint attribute '%s': negative length", name);
    MgMetaEntry *e = ckpt_meta_slot(m, name, 1);
    e->type = MG_META_I64;
    e->is_array = 1;
    e->n = n;
    e->i64 = mg_malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    if (n) memcpy(e->i64, values, sizeof(int64_t) * (size_t)n);
}

void mg_ckpt_meta_set_i64(MgCkptMeta *m, const char *name, int64_t value) {
    mg_ckpt_meta_set_i64_array(m, name, &value, 1);
    ((MgMetaEntry *)mg_ckpt_meta_find(m, name))->is_array = 0;
}

void mg_ckpt_meta_set_f64_array(MgCkptMeta *m, const char *name, const double *values, int64_t n) {
    MG_CHECK(n >= 0, "checkpoint attribute '%s': negative length", name);
    MgMetaEntry *e = ckpt_meta_slot(m, name, 1);
    e->type = MG_META_F64;
    e->is_array = 1;
    e->n = n;
    e->f64 = mg_malloc(sizeof(double) * (size_t)(n ? n : 1));
    if (n) memcpy(e->f64, values, sizeof(double) * (size_t)n);
}

void mg_ckpt_meta_set_f64(MgCkptMeta *m, const char *name, double value) {
    mg_ckpt_meta_set_f64_array(m, name, &value, 1);
    ((MgMetaEntry *)mg_ckpt_meta_find(m, name))->is_array = 0;
}

void mg_ckpt_meta_set_str(MgCkptMeta *m, const char *name, const char *value) {
    MgMetaEntry *e = ckpt_meta_slot(m, name, 1);
    e->type = MG_META_STR;
    e->n = 1;
    e->str = mg_strdup(value ? value : "");
}

static const MgMetaEntry *meta_get(const MgCkptMeta *m, const char *name, MgMetaType type, int64_t n, char *err,
                                   size_t errlen) {
    static const char *tn[] = {"int64", "double", "string"};
    const MgMetaEntry *e = mg_ckpt_meta_find(m, name);
    if (!e) {
        mg_errf(err, errlen, "checkpoint has no attribute '%s'", name);
        return NULL;
    }
    if (e->type != type) {
        mg_errf(err, errlen, "checkpoint attribute '%s' is a %s, expected a %s", name, tn[e->type], tn[type]);
        return NULL;
    }
    if (n >= 0 && e->n != n) {
        mg_errf(err, errlen, "checkpoint attribute '%s' holds %lld values, expected %lld", name, (long long)e->n,
               (long long)n);
        return NULL;
    }
    return e;
}

int mg_ckpt_meta_get_i64(const MgCkptMeta *m, const char *name, int64_t *out, char *err, size_t errlen) {
    const MgMetaEntry *e = meta_get(m, name, MG_META_I64, 1, err, errlen);
    if (!e) return -1;
    *out = e->i64[0];
    return 0;
}

int mg_ckpt_meta_get_i64_array(const MgCkptMeta *m, const char *name, int64_t *out, int64_t n, char *err,
                               size_t errlen) {
    const MgMetaEntry *e = meta_get(m, name, MG_META_I64, n, err, errlen);
    if (!e) return -1;
    if (n) memcpy(out, e->i64, sizeof(int64_t) * (size_t)n);
    return 0;
}

int mg_ckpt_meta_get_f64(const MgCkptMeta *m, const char *name, double *out, char *err, size_t errlen) {
    const MgMetaEntry *e = meta_get(m, name, MG_META_F64, 1, err, errlen);
    if (!e) return -1;
    *out = e->f64[0];
    return 0;
}

int mg_ckpt_meta_get_f64_array(const MgCkptMeta *m, const char *name, double *out, int64_t n, char *err,
                               size_t errlen) {
    const MgMetaEntry *e = meta_get(m, name, MG_META_F64, n, err, errlen);
    if (!e) return -1;
    if (n) memcpy(out, e->f64, sizeof(double) * (size_t)n);
    return 0;
}

const char *mg_ckpt_meta_get_str(const MgCkptMeta *m, const char *name) {
    const MgMetaEntry *e = mg_ckpt_meta_find(m, name);
    return e && e->type == MG_META_STR ? e->str : NULL;
}

int64_t mg_ckpt_size_estimate(const MgParamTable *t, int with_optimizer) {
    return t->total * 4 * (with_optimizer ? 3 : 1);
}
