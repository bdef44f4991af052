/* Safetensors files (the format of Hugging Face checkpoints): an 8-byte little-endian header length N, a
 * JSON header of N bytes ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 * optional "__metadata__": {string: string}}), then the raw little-endian tensor data, offsets relative to
 * its start. Reading checks every entry (dtype known, begin <= end, end - begin = elements x size, inside
 * the file, no two tensors overlapping); writing produces float32 tensors in the given order, the header
 * padded with spaces to a multiple of 8 bytes, atomically (temp file + rename). */
#ifndef MG_SAFETENSORS_H
#define MG_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../fsutil.h"

#define MG_ST_MAX_DIMS 8

typedef struct {
    char *name;
    char dtype[12];  /* F32, F16, BF16, F64, I64, I32, ... as in the file */
    int elem_size;   /* bytes per element */
    int ndim;
    int64_t shape[MG_ST_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end; /* relative to the data section */
} MgStTensor;

typedef struct {
    char *path;
    int fd;
    uint64_t data_start, file_size;
    int n;
    MgStTensor *t;
} MgStFile;

/* Open and validate a safetensors file. 0, or -1 with a message naming the file. */
int mg_st_open(const char *path, MgStFile *f, char *err, size_t errlen);
void mg_st_close(MgStFile *f);
/* The tensor called name, or NULL. */
const MgStTensor *mg_st_find(const MgStFile *f, const char *name);
/* Read a floating-point tensor (F32, F16, BF16 or F64) converted to float32 into dst[numel]. Any other
 * dtype is refused naming the tensor and the dtypes that are accepted. */
int mg_st_read_f32(const MgStFile *f, const MgStTensor *t, float *dst, char *err, size_t errlen);
/* Read an integer tensor (I64, I32, I16, I8, U8) into dst[numel]. */
int mg_st_read_i64(const MgStFile *f, const MgStTensor *t, int64_t *dst, char *err, size_t errlen);

/* Writing: begin with every tensor's name and shape (float32; order = order of the data), then
 * mg_st_write_data for each tensor in that order with exactly its elements, then commit. */
typedef struct {
    MgAtomicFile af;
    int n, next;
    int64_t *numel;
    char **names;
    int64_t written; /* elements of the current tensor written so far */
} MgStWriter;
int mg_st_write_begin(MgStWriter *w, const char *path, int n, const char *const *names, const int *ndims,
                      const int64_t (*shapes)[4], char *err, size_t errlen);
int mg_st_write_data(MgStWriter *w, const float *x, int64_t count, char *err, size_t errlen);
int mg_st_write_commit(MgStWriter *w, char *err, size_t errlen);
void mg_st_write_abort(MgStWriter *w);

#endif
