/* Background saves (checkpoint.h, "background saves"): one writer thread at a time runs mg_ckpt_dir_save
 * on a snapshot the caller keeps unchanged (read in place: no staging copy). The thread is created per save and joined when the save is
 * collected; `finished` (set by the writer as its last act) lets the caller poll without blocking. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../common.h"
#include "internal.h"

struct MgCkptAsync {
    MgCkptAsyncDone done;
    void *ctx;
    int threads;
    int pending;            /* started, not collected (caller's thread only) */
    pthread_t thread;
    atomic_int finished;    /* the writer has stored `result` and called `done` */
    /* the job: owned by the writer between start and collection */
    char *out_dir;
    const MgParamTable *table;
    const float *params, *m, *v;
    MgCkptMeta meta;
    int keep;
    MgCkptAsyncResult result;
};

static void *writer_main(void *arg) {
    MgCkptAsync *a = arg;
#ifdef __linux__
    /* The lowest CPU priority, for this thread only (Linux: a thread id names one thread): where the caller's
     * threads keep every core busy, the write takes the cycles they leave, and once the caller waits for it
     * (the next save, the end) it has the machine. Measured on a 2-core VM training mega200m: the steps
     * during a write 1.5x slower instead of 3.4x at the default priority (docs/performance.md). */
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
#endif
#ifdef _OPENMP
    omp_set_num_threads(a->threads); /* this thread's own setting: the caller's teams keep theirs */
#endif
    MgCkptAsyncResult *r = &a->result;
    double t0 = mg_now();
    /* mg_ckpt_dir_save, reading the snapshot in place (it does not change until collected) */
    CkptHostArrays h = {{a->params, a->m, a->v}, {NULL, NULL, NULL}};
    MgCkptTensorIO io = ckpt_host_io_in_place(&h);
    if ((a->m == NULL) != (a->v == NULL)) {
        r->rc = mg_errf(r->err, sizeof r->err, "mg_ckpt_async_start('%s'): pass both optimizer moments m and v, or neither",
                        a->out_dir);
    } else {
        r->rc = mg_ckpt_dir_save_io(a->out_dir, a->table, &io, a->m != NULL, &a->meta, a->keep, r->path,
                                    sizeof r->path, r->err, sizeof r->err);
    }
    r->seconds = mg_now() - t0;
    r->stats = mg_ckpt_last_stats();
    if (r->rc == 0) r->err[0] = 0;
    if (a->done) a->done(r, a->ctx);
    atomic_store(&a->finished, 1);
    return NULL;
}

MgCkptAsync *mg_ckpt_async_create(MgCkptAsyncDone done, void *ctx, int threads) {
    MgCkptAsync *a = mg_calloc(1, sizeof *a);
    a->done = done;
    a->ctx = ctx;
    a->threads = threads > 0 ? threads : 1;
    mg_ckpt_meta_init(&a->meta);
    atomic_init(&a->finished, 0);
    return a;
}

int mg_ckpt_async_pending(const MgCkptAsync *a) { return a && a->pending; }

int mg_ckpt_async_start(MgCkptAsync *a, const char *out_dir, const MgParamTable *t, const float *params,
                        const float *m, const float *v, MgCkptMeta *meta, int keep, char *err, size_t errlen) {
    if (a->pending)
        return mg_errf(err, errlen,
                       "cannot start writing checkpoint %lld in the background: the write of checkpoint %lld has not "
                       "been collected (there is never more than one writer)",
                       (long long)meta->step, (long long)a->meta.step);
    mg_ckpt_meta_free(&a->meta);
    free(a->out_dir);
    a->out_dir = mg_strdup(out_dir);
    a->table = t;
    a->params = params;
    a->m = m;
    a->v = v;
    a->keep = keep;
    a->meta = *meta; /* moved */
    mg_ckpt_meta_init(meta);
    memset(&a->result, 0, sizeof a->result);
    a->result.rc = -1;
    a->result.step = a->meta.step;
    atomic_store(&a->finished, 0);
    /* The writer inherits this mask: the stop signals go to the caller's threads, whose handlers record
     * them; the write itself is never interrupted (nor its system calls). */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = pthread_create(&a->thread, NULL, writer_main, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        mg_ckpt_meta_free(&a->meta);
        return mg_errf(err, errlen, "cannot start a checkpoint writer thread: %s", strerror(rc));
    }
    a->pending = 1;
    return 0;
}

static void collect(MgCkptAsync *a, MgCkptAsyncResult *r) {
    pthread_join(a->thread, NULL);
    a->pending = 0;
    if (r) *r = a->result;
    mg_ckpt_meta_free(&a->meta);
}

int mg_ckpt_async_poll(MgCkptAsync *a, MgCkptAsyncResult *r) {
    if (!a || !a->pending || !atomic_load(&a->finished)) return 0;
    collect(a, r);
    return 1;
}

int mg_ckpt_async_wait(MgCkptAsync *a, MgCkptAsyncResult *r) {
    /* the writer itself cannot wait for itself (an exit handler run by a fatal error inside the write) */
    if (!a || !a->pending || pthread_equal(pthread_self(), a->thread)) return 0;
    collect(a, r);
    return 1;
}

void mg_ckpt_async_free(MgCkptAsync *a) {
    if (!a) return;
    mg_ckpt_async_wait(a, NULL);
    mg_ckpt_meta_free(&a->meta);
    free(a->out_dir);
    free(a);
}
