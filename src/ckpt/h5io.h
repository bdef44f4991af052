/* Private to src/ckpt/: the HDF5 helpers the reader and the writer share (error capture, attributes,
 * element-range selections). Only built with HDF5 (MG_HAVE_HDF5). */
#ifndef MG_CKPT_H5IO_H
#define MG_CKPT_H5IO_H

#include <hdf5.h>

#include "internal.h"

#define MG_COMPACT_MAX 65535 /* the largest compact link / attribute count HDF5 accepts */

/* Called at the start of every public operation: the first call switches off HDF5's error printing and
 * its exit-time clean-up (H5dont_atexit); every call clears the error stack and the captured reason. */
void ckpt_h5_init(void);

/* Capture the reason behind the HDF5 error now on the stack (short: an OS error if a system call failed,
 * such as disk full or a file size limit, else HDF5's innermost message) before clean-up calls clear the
 * stack; with an empty stack the reason captured earlier is kept. */
void ckpt_h5_note(void);
/* ckpt_h5_note(), then the captured reason ("unknown HDF5 error" if none). */
const char *ckpt_h5_reason(void);
#define REASON() ckpt_h5_reason()

/* Close any HDF5 id by its type; negative ids are ignored. */
void ckpt_h5_close(hid_t id);

/* Attributes. The writers return 0 / -1 (reason noted). An array (is_array) of n == 0 elements gets a
 * null dataspace. Strings are fixed-length UTF-8 with their NUL (see h5io.c for why). */
int ckpt_h5_attr_write(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int is_array, int64_t n,
                       const void *data);
int ckpt_h5_attr_write_str(hid_t loc, const char *name, const char *s);
int ckpt_h5_attr_write_i64(hid_t loc, const char *name, int64_t v);
/* Every attribute of loc (names of 64 characters or more and types outside the format are skipped) into
 * all->extra, in creation order when the file records it. 0, or -1 with the failing attribute's name in
 * bad ("" if the iteration itself failed). */
int ckpt_h5_read_attrs(hid_t loc, MgCkptMeta *all, char *bad, size_t badlen);

/* Permute n elements of `size` bytes in `base` so that `order` ascends (if every order is known, i.e.
 * >= 0; otherwise the order is left as it is). */
void ckpt_sort_by_order(void *base, size_t size, int n, const int64_t *order);

/* 1 if the link path (e.g. "optimizer/m/x") exists, 0 if it does not, -1 if that could not be told (a
 * damaged header on the way; reason noted), testing level by level. */
int ckpt_h5_link_exists(hid_t loc, const char *path);

/* Select in `space` (a dataspace of the tensor's shape) exactly the row-major flat element range
 * [start, start + count), as a union of at most 2 ndim - 1 hyperslabs. HDF5 visits hyperslab selections in
 * row-major order, so a 1-D memory buffer of count elements maps onto the range element by element. */
int ckpt_h5_select_range(hid_t space, int ndim, const int64_t *shape, int64_t start, int64_t count);

#endif
