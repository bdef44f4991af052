/* Safetensors reading and writing: see safetensors.h. */
#include "safetensors.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common.h"
#include "../fileio.h"
#include "json.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define MG_ST_HEADER_MAX ((uint64_t)100 << 20) /* the reference implementation's limit too */

static int dtype_size(const char *d) {
    static const struct {
        const char *n;
        int s;
    } T[] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
             {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},   {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (!strcmp(T[i].n, d)) return T[i].s;
    return 0;
}

static int cmp_begin(const void *a, const void *b) {
    const MgStTensor *x = *(const MgStTensor *const *)a, *y = *(const MgStTensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

int mg_st_open(const char *path, MgStFile *f, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    uint64_t size;
    int fd = mg_open_regular_file(path, "safetensors file", &size, err, errlen);
    if (fd < 0) return -1;
    f->fd = fd;
    f->path = mg_strdup(path);
    f->file_size = size;
    unsigned char lenb[8];
    if (size < 8 || pread(fd, lenb, 8, 0) != 8) {
        mg_st_close(f);
        return mg_errf(err, errlen, "'%s' is not a safetensors file: shorter than its 8-byte header length", path);
    }
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | lenb[i];
    if (hl > MG_ST_HEADER_MAX || hl > size - 8) {
        mg_st_close(f);
        return mg_errf(err, errlen,
                       "'%s' is not a safetensors file (or is truncated): its header claims %llu bytes, the file has "
                       "%llu",
                       path, (unsigned long long)hl, (unsigned long long)size);
    }
    char *h = mg_malloc(hl + 1);
    if (pread(fd, h, hl, 8) != (ssize_t)hl) {
        free(h);
        mg_st_close(f);
        return mg_errf(err, errlen, "cannot read the header of '%s': %s", path, strerror(errno));
    }
    h[hl] = 0;
    char jerr[256];
    MgJv *j = mg_jv_parse(h, hl, jerr, sizeof jerr);
    free(h);
    if (!j || j->type != MG_JV_OBJ) {
        mg_jv_free(j);
        mg_st_close(f);
        return mg_errf(err, errlen, "'%s' is not a safetensors file: its header is not a JSON object (%s)", path,
                       j ? "another JSON value" : jerr);
    }
    f->data_start = 8 + hl;
    uint64_t data_len = size - f->data_start;
    f->t = mg_calloc((size_t)j->n + 1, sizeof *f->t);
    int rc = 0;
    for (int i = 0; i < j->n && !rc; i++) {
        const char *name = j->keys[i];
        const MgJv *e = j->items[i];
        if (!strcmp(name, "__metadata__")) continue;
        MgStTensor *t = &f->t[f->n];
        t->name = mg_strdup(name);
        f->n++;
        const MgJv *dt = mg_jv_get(e, "dtype"), *sh = mg_jv_get(e, "shape"), *off = mg_jv_get(e, "data_offsets");
        if (!dt || dt->type != MG_JV_STR || !sh || sh->type != MG_JV_ARR || !off || off->type != MG_JV_ARR ||
            off->n != 2) {
            rc = mg_errf(err, errlen, "'%s': tensor '%s' lacks dtype, shape or data_offsets in the header (damaged file?)",
                         path, name);
            break;
        }
        snprintf(t->dtype, sizeof t->dtype, "%s", dt->str);
        t->elem_size = dtype_size(dt->str);
        if (!t->elem_size) {
            rc = mg_errf(err, errlen, "'%s': tensor '%s' has the unknown dtype '%s'", path, name, dt->str);
            break;
        }
        if (sh->n > MG_ST_MAX_DIMS) {
            rc = mg_errf(err, errlen, "'%s': tensor '%s' has %d dimensions (at most %d are supported)", path, name,
                         sh->n, MG_ST_MAX_DIMS);
            break;
        }
        t->ndim = sh->n;
        t->numel = 1;
        for (int k = 0; k < sh->n; k++) {
            int64_t v;
            if (mg_jv_int(sh->items[k], &v) || v < 0 || v > ((int64_t)1 << 40) ||
                (t->numel && v > ((int64_t)1 << 50) / (t->numel ? t->numel : 1))) {
                rc = mg_errf(err, errlen, "'%s': tensor '%s' has a bad shape in the header", path, name);
                break;
            }
            t->shape[k] = v;
            t->numel *= v;
        }
        if (rc) break;
        int64_t b, en;
        if (mg_jv_int(off->items[0], &b) || mg_jv_int(off->items[1], &en) || b < 0 || en < b) {
            rc = mg_errf(err, errlen, "'%s': tensor '%s' has bad data_offsets", path, name);
            break;
        }
        t->begin = (uint64_t)b;
        t->end = (uint64_t)en;
        if (t->end - t->begin != (uint64_t)t->numel * (uint64_t)t->elem_size) {
            rc = mg_errf(err, errlen,
                         "'%s': tensor '%s' has data_offsets [%llu, %llu] (%llu bytes) but its shape and dtype %s "
                         "need %llu bytes (damaged file?)",
                         path, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                         (unsigned long long)(t->end - t->begin), t->dtype,
                         (unsigned long long)t->numel * (unsigned long long)t->elem_size);
            break;
        }
        if (t->end > data_len) {
            rc = mg_errf(err, errlen,
                         "'%s' is truncated: tensor '%s' ends at byte %llu of the data section, which has %llu bytes",
                         path, name, (unsigned long long)t->end, (unsigned long long)data_len);
            break;
        }
    }
    mg_jv_free(j);
    if (!rc && f->n > 1) { /* no two tensors share bytes */
        MgStTensor **s = mg_malloc(sizeof *s * (size_t)f->n);
        for (int i = 0; i < f->n; i++) s[i] = &f->t[i];
        qsort(s, (size_t)f->n, sizeof *s, cmp_begin);
        for (int i = 1; i < f->n && !rc; i++)
            if (s[i]->begin < s[i - 1]->end && s[i]->end > s[i]->begin)
                rc = mg_errf(err, errlen, "'%s': tensors '%s' and '%s' overlap in the file (damaged file?)", path,
                             s[i - 1]->name, s[i]->name);
        free(s);
    }
    if (rc) mg_st_close(f);
    return rc;
}

void mg_st_close(MgStFile *f) {
    if (f->fd >= 0) close(f->fd);
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    free(f->path);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

const MgStTensor *mg_st_find(const MgStFile *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}

static int read_raw(const MgStFile *f, const MgStTensor *t, void *dst, char *err, size_t errlen) {
    uint64_t n = t->end - t->begin, done = 0;
    while (done < n) {
        size_t want = (size_t)((n - done) > ((uint64_t)1 << 30) ? ((uint64_t)1 << 30) : (n - done));
        ssize_t r = pread(f->fd, (char *)dst + done, want, (off_t)(f->data_start + t->begin + done));
        if (r <= 0)
            return mg_errf(err, errlen, "cannot read tensor '%s' from '%s': %s", t->name, f->path,
                           r < 0 ? strerror(errno) : "unexpected end of file");
        done += (uint64_t)r;
    }
    return 0;
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

int mg_st_read_f32(const MgStFile *f, const MgStTensor *t, float *dst, char *err, size_t errlen) {
    const char *d = t->dtype;
    if (!strcmp(d, "F32")) return read_raw(f, t, dst, err, errlen);
    if (strcmp(d, "F16") && strcmp(d, "BF16") && strcmp(d, "F64"))
        return mg_errf(err, errlen,
                       "tensor '%s' in '%s' has dtype %s; weights import reads F32, BF16, F16 and F64 tensors only "
                       "(convert the checkpoint, e.g. model.to(torch.bfloat16).save_pretrained(...))",
                       t->name, f->path, d);
    void *raw = malloc((size_t)(t->end - t->begin) + 1);
    if (!raw) return mg_errf(err, errlen, "out of memory reading tensor '%s' (%s)", t->name, f->path);
    if (read_raw(f, t, raw, err, errlen)) {
        free(raw);
        return -1;
    }
    if (!strcmp(d, "F64")) {
        const double *s = raw;
        for (int64_t i = 0; i < t->numel; i++) dst[i] = (float)s[i];
    } else if (!strcmp(d, "BF16")) {
        const uint16_t *s = raw;
        for (int64_t i = 0; i < t->numel; i++) {
            uint32_t b = (uint32_t)s[i] << 16;
            memcpy(&dst[i], &b, 4);
        }
    } else {
        const uint16_t *s = raw;
        for (int64_t i = 0; i < t->numel; i++) dst[i] = half_to_float(s[i]);
    }
    free(raw);
    return 0;
}

int mg_st_read_i64(const MgStFile *f, const MgStTensor *t, int64_t *dst, char *err, size_t errlen) {
    const char *d = t->dtype;
    int sz = t->elem_size;
    int sgn = d[0] == 'I';
    if ((d[0] != 'I' && d[0] != 'U') || !strcmp(d, "U64"))
        return mg_errf(err, errlen, "tensor '%s' in '%s' has dtype %s, not an integer type", t->name, f->path, d);
    unsigned char *raw = malloc((size_t)(t->end - t->begin) + 1);
    if (!raw) return mg_errf(err, errlen, "out of memory reading tensor '%s' (%s)", t->name, f->path);
    if (read_raw(f, t, raw, err, errlen)) {
        free(raw);
        return -1;
    }
    for (int64_t i = 0; i < t->numel; i++) {
        uint64_t u = 0;
        for (int k = sz - 1; k >= 0; k--) u = (u << 8) | raw[i * sz + k];
        if (sgn && sz < 8 && (u >> (8 * sz - 1))) u |= ~(uint64_t)0 << (8 * sz);
        dst[i] = (int64_t)u;
    }
    free(raw);
    return 0;
}

int mg_st_write_begin(MgStWriter *w, const char *path, int n, const char *const *names, const int *ndims,
                      const int64_t (*shapes)[4], char *err, size_t errlen) {
    memset(w, 0, sizeof *w);
    size_t cap = 256 + (size_t)n * 256, pos = 0;
    for (int i = 0; i < n; i++) cap += 2 * strlen(names[i]);
    char *h = mg_malloc(cap);
    w->numel = mg_malloc(sizeof *w->numel * (size_t)(n + 1));
    w->names = mg_malloc(sizeof *w->names * (size_t)(n + 1));
    uint64_t off = 0;
    pos += (size_t)snprintf(h + pos, cap - pos, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        int64_t ne = 1;
        pos += (size_t)snprintf(h + pos, cap - pos, ",");
        mg_jv_quote(h, cap, &pos, names[i]);
        pos += (size_t)snprintf(h + pos, cap - pos, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int k = 0; k < ndims[i]; k++) {
            pos += (size_t)snprintf(h + pos, cap - pos, "%s%lld", k ? "," : "", (long long)shapes[i][k]);
            ne *= shapes[i][k];
        }
        pos += (size_t)snprintf(h + pos, cap - pos, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                                (unsigned long long)(off + 4 * (uint64_t)ne));
        off += 4 * (uint64_t)ne;
        w->numel[i] = ne;
        w->names[i] = mg_strdup(names[i]);
    }
    pos += (size_t)snprintf(h + pos, cap - pos, "}");
    while (pos % 8) h[pos++] = ' ';
    w->n = n;
    if (!mg_fs_atomic_open(&w->af, path, err, errlen)) {
        free(h);
        for (int i = 0; i < n; i++) free(w->names[i]);
        free(w->names);
        free(w->numel);
        memset(w, 0, sizeof *w);
        return -1;
    }
    unsigned char lenb[8];
    for (int k = 0; k < 8; k++) lenb[k] = (unsigned char)(((uint64_t)pos >> (8 * k)) & 0xFF);
    int bad = fwrite(lenb, 1, 8, w->af.f) != 8 || fwrite(h, 1, pos, w->af.f) != pos;
    free(h);
    if (bad) {
        mg_errf(err, errlen, "cannot write '%s': %s", path, strerror(errno));
        mg_st_write_abort(w);
        return -1;
    }
    return 0;
}

int mg_st_write_data(MgStWriter *w, const float *x, int64_t count, char *err, size_t errlen) {
    if (w->next >= w->n || w->written + count > w->numel[w->next])
        return mg_errf(err, errlen, "safetensors writer: more data than the header declares (tensor %d)", w->next);
    if (fwrite(x, sizeof(float), (size_t)count, w->af.f) != (size_t)count)
        return mg_errf(err, errlen, "cannot write '%s': %s", w->af.path, strerror(errno));
    w->written += count;
    while (w->next < w->n && w->written == w->numel[w->next]) {
        w->next++;
        w->written = 0;
    }
    return 0;
}

static void writer_free(MgStWriter *w) {
    for (int i = 0; i < w->n; i++) free(w->names[i]);
    free(w->names);
    free(w->numel);
    w->names = NULL;
    w->numel = NULL;
}

int mg_st_write_commit(MgStWriter *w, char *err, size_t errlen) {
    while (w->next < w->n && w->numel[w->next] == 0) w->next++;
    if (w->next != w->n) {
        mg_errf(err, errlen, "safetensors writer: tensor '%s' was not written completely", w->names[w->next]);
        mg_st_write_abort(w);
        return -1;
    }
    writer_free(w);
    return mg_fs_atomic_commit(&w->af, 1, err, errlen);
}

void mg_st_write_abort(MgStWriter *w) {
    if (w->af.f) mg_fs_atomic_abort(&w->af);
    writer_free(w);
}
