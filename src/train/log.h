/* The trainer's step log: a console line for logged steps and one JSON object per step appended to
 * out_dir/log.jsonl (docs/training.md lists the fields). */
#ifndef MG_TRAIN_LOG_H
#define MG_TRAIN_LOG_H

#include <stdint.h>
#include <stdio.h>

/* A JSON object built in memory (one log line). Keys and string values are escaped (", \\, control
 * characters; bytes that are not valid UTF-8 become U+FFFD); numbers that are not finite (inf, -inf,
 * nan) are written as null, since JSON has no such numbers. Members are separated by ", " and keys from
 * values by ": ". */
typedef struct {
    char *buf;
    size_t len, cap;
    int members;
} MgJson;

void mg_json_begin(MgJson *j);
void mg_json_int(MgJson *j, const char *key, int64_t v);
void mg_json_fixed(MgJson *j, const char *key, double v, int decimals); /* printf "%.*f" */
void mg_json_sci(MgJson *j, const char *key, double v, int decimals);   /* printf "%.*e" */
void mg_json_str(MgJson *j, const char *key, const char *s);
/* Close the object and return its text (no newline), valid until mg_json_free. */
const char *mg_json_end(MgJson *j);
void mg_json_free(MgJson *j);

/* One step as logged. */
typedef struct {
    int64_t step, tokens; /* tokens: trained on so far */
    double loss, lr, grad_norm, tokens_per_s, mfu, elapsed;
    int has_val;          /* a validation step: val_loss and val_ppl are set */
    double val_loss, val_ppl;
} MgLogRecord;

/* "step 40/400 | loss 6.9123 | lr ... | val loss ... ppl ..." */
void mg_log_print(FILE *out, const MgLogRecord *r, int64_t max_steps);
/* Append r to the log as one JSON line (fields in docs/training.md; non-finite values as null) and flush. */
void mg_log_write(FILE *log, const MgLogRecord *r);

/* Open out_dir/log.jsonl: a new log for a new run (a new file renamed over whatever was there, a symlink
 * included); for a run resumed at step resume_step, the old log without the lines of steps after
 * resume_step (those steps run again), opened for appending only if it is a regular file (a symlink
 * there is refused with a fatal error naming it). */
FILE *mg_log_open(const char *out_dir, int resume, int64_t resume_step);

/* The step of a log line: the integer value of the "step" member of the JSON object on the line (any
 * spacing, any member order; nested objects do not count; a repeated key: the last). A line cut short
 * after its step member (a crash while writing it) still yields that step. Returns -1 if the line has no
 * readable step. */
int mg_log_parse_step(const char *line, size_t len, int64_t *step);

typedef struct {
    int64_t kept, dropped; /* lines */
    int64_t unparsed;      /* kept lines without a readable step */
} MgLogTrim;

/* Drop the lines of steps after last_step from the log at path (a resumed run writes them again). Lines
 * without a readable step are kept, and a newline is added to a last line that lacks one. The file is
 * replaced through a temp file with a unique name next to it, created exclusively (written, fsynced,
 * renamed), so a crash leaves the old or the new log. A missing log is not an error; a log that is not a
 * regular file (a symlink, a directory) is refused (-1), never read or written through. Returns 0, or -1
 * with a message in err and the log unchanged. */
int mg_log_trim(const char *path, int64_t last_step, MgLogTrim *st, char *err, size_t errlen);

#endif
