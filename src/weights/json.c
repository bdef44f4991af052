/* A small JSON reader: see json.h. */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"

typedef struct {
    const char *s;
    size_t len, pos;
    int depth;
    char *err;
    size_t errlen;
    int failed;
} P;

static void fail(P *p, const char *what) {
    if (p->failed) return;
    p->failed = 1;
    int line = 1, col = 1;
    for (size_t i = 0; i < p->pos && i < p->len; i++) {
        if (p->s[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    mg_errf(p->err, p->errlen, "line %d, column %d: %s", line, col, what);
}

static void ws(P *p) {
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' ||
                               p->s[p->pos] == '\r'))
        p->pos++;
}

static MgJv *node(MgJvType t) {
    MgJv *j = mg_calloc(1, sizeof *j);
    j->type = t;
    return j;
}

static int hex4(P *p, unsigned *out) {
    if (p->pos + 4 > p->len) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos + i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static char *parse_string(P *p) {
    /* at the opening quote */
    p->pos++;
    size_t cap = 32, n = 0;
    char *out = mg_malloc(cap);
    for (;;) {
        if (p->pos >= p->len) {
            fail(p, "unterminated string");
            free(out);
            return NULL;
        }
        unsigned char c = (unsigned char)p->s[p->pos++];
        unsigned cp = 0;
        int utf = 0;
        if (c == '"') break;
        if (c < 0x20) {
            p->pos--;
            fail(p, "control character inside a string");
            free(out);
            return NULL;
        }
        if (c == '\\') {
            if (p->pos >= p->len) {
                fail(p, "unterminated string");
                free(out);
                return NULL;
            }
            char e = p->s[p->pos++];
            switch (e) {
            case '"': c = '"'; break;
            case '\\': c = '\\'; break;
            case '/': c = '/'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u':
                if (hex4(p, &cp)) {
                    fail(p, "bad \\u escape");
                    free(out);
                    return NULL;
                }
                if (cp >= 0xD800 && cp < 0xDC00) { /* a surrogate pair */
                    unsigned lo;
                    if (p->pos + 2 <= p->len && p->s[p->pos] == '\\' && p->s[p->pos + 1] == 'u') {
                        p->pos += 2;
                        if (hex4(p, &lo) || lo < 0xDC00 || lo >= 0xE000) {
                            fail(p, "bad surrogate pair");
                            free(out);
                            return NULL;
                        }
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    }
                }
                utf = 1;
                break;
            default:
                p->pos--;
                fail(p, "bad escape in a string");
                free(out);
                return NULL;
            }
        }
        if (n + 5 > cap) {
            cap *= 2;
            out = mg_realloc(out, cap);
        }
        if (!utf) {
            out[n++] = (char)c;
        } else if (cp < 0x80) {
            out[n++] = (char)cp;
        } else if (cp < 0x800) {
            out[n++] = (char)(0xC0 | (cp >> 6));
            out[n++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[n++] = (char)(0xE0 | (cp >> 12));
            out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[n++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[n++] = (char)(0xF0 | (cp >> 18));
            out[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[n++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[n] = 0;
    return out;
}

static MgJv *parse_value(P *p);

static MgJv *parse_container(P *p, int obj) {
    MgJv *j = node(obj ? MG_JV_OBJ : MG_JV_ARR);
    if (++p->depth > 64) {
        fail(p, "nested more than 64 levels deep");
        return j;
    }
    p->pos++;
    ws(p);
    int cap = 0;
    if (p->pos < p->len && p->s[p->pos] == (obj ? '}' : ']')) {
        p->pos++;
        p->depth--;
        return j;
    }
    for (;;) {
        char *key = NULL;
        ws(p);
        if (obj) {
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                fail(p, "expected a member name in quotes");
                return j;
            }
            key = parse_string(p);
            if (!key) return j;
            ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                free(key);
                fail(p, "expected ':' after a member name");
                return j;
            }
            p->pos++;
        }
        MgJv *v = parse_value(p);
        if (j->n == cap) {
            cap = cap ? 2 * cap : 8;
            j->items = mg_realloc(j->items, sizeof *j->items * (size_t)cap);
            if (obj) j->keys = mg_realloc(j->keys, sizeof *j->keys * (size_t)cap);
        }
        j->items[j->n] = v;
        if (obj) j->keys[j->n] = key;
        j->n++;
        if (p->failed) return j;
        ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == (obj ? '}' : ']')) {
            p->pos++;
            p->depth--;
            return j;
        }
        fail(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        return j;
    }
}

static MgJv *parse_value(P *p) {
    ws(p);
    if (p->pos >= p->len) {
        fail(p, "unexpected end of the text");
        return node(MG_JV_NULL);
    }
    char c = p->s[p->pos];
    if (c == '{') return parse_container(p, 1);
    if (c == '[') return parse_container(p, 0);
    if (c == '"') {
        MgJv *j = node(MG_JV_STR);
        j->str = parse_string(p);
        return j;
    }
    static const char *const words[3] = {"null", "true", "false"};
    for (int w = 0; w < 3; w++) {
        size_t l = strlen(words[w]);
        if (p->pos + l <= p->len && !memcmp(p->s + p->pos, words[w], l)) {
            p->pos += l;
            MgJv *j = node(w ? MG_JV_BOOL : MG_JV_NULL);
            j->boolean = w == 1;
            return j;
        }
    }
    /* a number: -? int frac? exp? */
    size_t st = p->pos, i = p->pos;
    if (i < p->len && p->s[i] == '-') i++;
    size_t d0 = i;
    while (i < p->len && p->s[i] >= '0' && p->s[i] <= '9') i++;
    if (i == d0) {
        fail(p, "unexpected character (not a JSON value)");
        return node(MG_JV_NULL);
    }
    if (i < p->len && p->s[i] == '.') {
        i++;
        size_t f0 = i;
        while (i < p->len && p->s[i] >= '0' && p->s[i] <= '9') i++;
        if (i == f0) {
            p->pos = i;
            fail(p, "bad number");
            return node(MG_JV_NULL);
        }
    }
    if (i < p->len && (p->s[i] == 'e' || p->s[i] == 'E')) {
        i++;
        if (i < p->len && (p->s[i] == '+' || p->s[i] == '-')) i++;
        size_t e0 = i;
        while (i < p->len && p->s[i] >= '0' && p->s[i] <= '9') i++;
        if (i == e0) {
            p->pos = i;
            fail(p, "bad number");
            return node(MG_JV_NULL);
        }
    }
    MgJv *j = node(MG_JV_NUM);
    j->str = mg_malloc(i - st + 1);
    memcpy(j->str, p->s + st, i - st);
    j->str[i - st] = 0;
    j->num = strtod(j->str, NULL);
    p->pos = i;
    return j;
}

MgJv *mg_jv_parse(const char *text, size_t len, char *err, size_t errlen) {
    P p = {text, len, 0, 0, err, errlen, 0};
    MgJv *j = parse_value(&p);
    if (!p.failed) {
        ws(&p);
        if (p.pos != p.len) fail(&p, "text after the end of the JSON value");
    }
    if (p.failed) {
        mg_jv_free(j);
        return NULL;
    }
    return j;
}

void mg_jv_free(MgJv *j) {
    if (!j) return;
    for (int i = 0; i < j->n; i++) {
        mg_jv_free(j->items[i]);
        if (j->keys) free(j->keys[i]);
    }
    free(j->items);
    free(j->keys);
    free(j->str);
    free(j);
}

const MgJv *mg_jv_get(const MgJv *j, const char *key) {
    if (!j || j->type != MG_JV_OBJ) return NULL;
    for (int i = j->n - 1; i >= 0; i--)
        if (!strcmp(j->keys[i], key)) return j->items[i];
    return NULL;
}

int mg_jv_int(const MgJv *j, int64_t *out) {
    if (!j || j->type != MG_JV_NUM) return -1;
    if (!strpbrk(j->str, ".eE")) {
        errno = 0;
        char *end;
        long long v = strtoll(j->str, &end, 10);
        if (errno || *end) return -1;
        *out = v;
        return 0;
    }
    if (!isfinite(j->num) || j->num != floor(j->num) || fabs(j->num) > 9.0e18) return -1;
    *out = (int64_t)j->num;
    return 0;
}

void mg_jv_quote(char *buf, size_t cap, size_t *pos, const char *s) {
    size_t k = *pos;
#define PUT(ch)                                                                                        \
    do {                                                                                               \
        if (k + 1 < cap) buf[k] = (ch);                                                                \
        k++;                                                                                           \
    } while (0)
    PUT('"');
    for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
        if (*q == '"' || *q == '\\') {
            PUT('\\');
            PUT((char)*q);
        } else if (*q < 0x20) {
            char tmp[8];
            snprintf(tmp, sizeof tmp, "\\u%04x", *q);
            for (int i = 0; tmp[i]; i++) PUT(tmp[i]);
        } else {
            PUT((char)*q);
        }
    }
    PUT('"');
#undef PUT
    if (cap) buf[k < cap ? k : cap - 1] = 0;
    *pos = k;
}
