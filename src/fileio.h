/* Reading whole input files safely: what is opened must be a regular file of bounded size, so a
 * directory, a device such as /dev/zero or a FIFO given as a config, tokenizer, prompt or text input is
 * refused with a message that names the path and what it is, instead of an endless read or a hang. */
#ifndef MG_FILEIO_H
#define MG_FILEIO_H

#include <stddef.h>
#include <stdint.h>

/* "a directory", "a character device", "a FIFO (named pipe)", ... for st_mode. */
const char *mg_file_kind(unsigned mode);

/* Read all of `path` (`what` names it in messages, e.g. "config file") into a malloc'd, NUL-terminated
 * buffer. Refused (-1, message in err naming the path): a path that cannot be opened, anything but a
 * regular file (the open does not block on a FIFO), a file larger than max_bytes, a read error. */
int mg_read_regular_file(const char *path, const char *what, uint64_t max_bytes, char **data, size_t *len, char *err,
                         size_t errlen);

/* Open `path` for reading as a regular file (O_NONBLOCK during the open, so a FIFO cannot hang it):
 * returns the descriptor and its size, or -1 with a message. */
int mg_open_regular_file(const char *path, const char *what, uint64_t *size, char *err, size_t errlen);

#endif
