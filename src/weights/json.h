/* A small JSON reader (RFC 8259) for the files weights import reads: Hugging Face `config.json`,
 * `model.safetensors.index.json` and safetensors headers. The whole document becomes a tree; nothing is
 * streamed. Strings are decoded (escapes, \uXXXX with surrogate pairs, to UTF-8); numbers are kept as a
 * double and as their text (so integers up to 2^63 are exact). Nesting is bounded (64 levels). */
#ifndef MG_JV_H
#define MG_JV_H

#include <stddef.h>
#include <stdint.h>

typedef enum { MG_JV_NULL, MG_JV_BOOL, MG_JV_NUM, MG_JV_STR, MG_JV_ARR, MG_JV_OBJ } MgJvType;

typedef struct MgJv {
    MgJvType type;
    int boolean;
    double num;
    char *str;             /* STR: the decoded string; NUM: the number's text */
    int n;                 /* ARR, OBJ: number of children */
    char **keys;           /* OBJ: the members' names (n) */
    struct MgJv **items; /* ARR, OBJ: the children (n) */
} MgJv;

/* Parse text[0..len). Returns the tree, or NULL with "line L, column C: what" in err. */
MgJv *mg_jv_parse(const char *text, size_t len, char *err, size_t errlen);
void mg_jv_free(MgJv *j);
/* The member `key` of an object (the last one if repeated), or NULL (also if j is not an object). */
const MgJv *mg_jv_get(const MgJv *j, const char *key);
/* An integer value: 0 and *out, or -1 if j is not a number with an integral value in int64 range. */
int mg_jv_int(const MgJv *j, int64_t *out);
/* The JSON text of a string (quotes and escapes added) appended to buf at *pos (bounded by cap). */
void mg_jv_quote(char *buf, size_t cap, size_t *pos, const char *s);

#endif
