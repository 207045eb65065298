/* jf_pool.h -- the scheduler of joblib_fast's worker threads.
 *
 * Plain C99 (+ GCC/Clang __atomic builtins and thread-local storage), no
 * Python.h.  One jf_pool_t serves two kinds of job from one list:
 *
 *   jf_queue_t  a ring of opaque items (the threading backend's batches,
 *               Python objects the Cython layer runs with the GIL), at most
 *               `limit` of them running at once (the call's n_jobs);
 *   jf_range_t  one parallel_for call: an index range cut into chunks that
 *               the caller (worker 0) and up to `limit - 1` pool threads
 *               take dynamically (guided: a chunk is the remaining count
 *               divided by 2 * limit, at least `min_chunk`), without any
 *               lock or GIL per chunk.
 *
 * The worker threads themselves are started by the Cython layer (they are
 * Python threads, so that batches can take the GIL); they loop on
 * jf_pool_next().  Threads kept idle: `keep`; more threads than that exit
 * once idle (the pool grows for a threading call with many workers, and
 * shrinks back after it).
 *
 * Spinning: a thread that has just left a range polls the pool's `gen`
 * (bumped whenever work is listed) for a short while before it sleeps, and
 * a range's caller polls for its helpers' last chunks before it sleeps, as
 * OpenMP runtimes do: a loop that calls parallel_for again soon finds its
 * helper awake, with no wake-up to wait for.
 *
 * Locking: `lock` guards every field marked [lock], of the pool and of the
 * jobs listed in it.  A range's `next` and `rc` are atomics (touched per
 * chunk); everything else of a range is written by its caller before it is
 * listed, and read-only while listed.
 */
#ifndef JF_POOL_H
#define JF_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jf_sync.h"

#if defined(__unix__) || defined(__APPLE__)
#include <sched.h>
#define JF_YIELD() sched_yield()
#else
#define JF_YIELD() ((void)0)
#endif

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define JF_THREAD_LOCAL _Thread_local
#else
#define JF_THREAD_LOCAL __thread
#endif

#define JF_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define JF_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

typedef int (*jf_body_t)(void *ctx, ptrdiff_t start, ptrdiff_t stop, int worker);

enum { JF_JOB_QUEUE = 1, JF_JOB_RANGE = 2 };

/* What jf_pool_next hands a worker thread. */
enum { JF_NEXT_EXIT = 0, JF_NEXT_ITEM = 1, JF_NEXT_RANGE = 2 };

typedef struct jf_job {
    struct jf_job *prev, *next;     /* [lock] the pool's list */
    int kind;                       /* JF_JOB_QUEUE or JF_JOB_RANGE */
    int listed;                     /* [lock] in the pool's list */
    int limit;                      /* [lock] pool threads at once (queue; the
                                       feeding thread's taken items aside), in
                                       all (range) */
    int active;                     /* [lock] pool threads inside the job now */
} jf_job_t;

typedef struct {
    jf_job_t job;                   /* first: a jf_queue_t * is a jf_job_t * */
    void **items;                   /* [lock] ring of owned items */
    ptrdiff_t head, count, capacity;/* [lock] */
    int closing;                    /* [lock] no more pushes; unlisted once drained */
    int taken;                      /* [lock] items the feeding thread runs now */
    void *owner;                    /* the object the items belong to */
} jf_queue_t;

typedef struct {
    jf_job_t job;
    ptrdiff_t next;                 /* atomic: first index not handed out */
    ptrdiff_t stop;
    ptrdiff_t min_chunk;
    ptrdiff_t split;                /* guided: chunk = remaining / split */
    jf_body_t body;
    void *ctx;
    int joined;                     /* [lock] worker ids handed out (caller: 0) */
    int rc;                         /* atomic: first non-zero body result */
    void *error;                    /* set by the worker whose -1 won `rc` */
} jf_range_t;

typedef struct {
    jf_mutex_t lock;
    jf_cond_t work;                 /* work became runnable, or threads must exit */
    jf_cond_t left;                 /* a thread left a range, or a queue drained */
    jf_job_t *first, *last;         /* [lock] listed jobs, oldest first */
    int n_threads;                  /* [lock] threads started and not exited */
    int n_idle;                     /* [lock] threads waiting on `work` */
    int n_spinning;                 /* [lock] threads polling `gen` */
    int spin_credit;                /* [lock] of those, the ones no wake-up
                                       has counted on yet */
    unsigned long gen;              /* atomic, written under lock: bumped
                                       when work is listed or threads must
                                       look again (close, fewer kept) */
    int keep;                       /* [lock] threads kept while idle */
    int closing;                    /* [lock] every thread exits once idle */
} jf_pool_t;

static inline void jf_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int jf_int_load(int *p) { return JF_LOAD(p); }
static inline void jf_int_store(int *p, int v) { JF_STORE(p, v); }
static inline void *jf_ptr_load(void **p) { return JF_LOAD(p); }
static inline void jf_ptr_store(void **p, void *v) { JF_STORE(p, v); }

/* -------------------------------------------------- per-thread nesting */

/* > 0 in pool threads and inside a parallel_for: nested calls run inline.
 * A forked child starts at 0 in every thread (jf_depth_forked): the thread
 * that forked may have been a pool thread or inside a body, and its depth
 * means nothing in the child's process; the leaves that follow are clamped
 * at 0. */
static JF_THREAD_LOCAL int jf_tls_depth = 0;
static JF_THREAD_LOCAL unsigned jf_tls_forks = 0;
static unsigned jf_forks = 0;

static inline int jf_depth_get(void)
{
    return jf_tls_forks == jf_forks ? jf_tls_depth : 0;
}

static inline void jf_depth_add(int d)
{
    if (jf_tls_forks != jf_forks) {
        jf_tls_forks = jf_forks;
        jf_tls_depth = 0;
    }
    jf_tls_depth += d;
    if (jf_tls_depth < 0) jf_tls_depth = 0;
}

/* In a forked child (its only thread), before anything else runs. */
static inline void jf_depth_forked(void) { jf_forks++; }

/* ------------------------------------------------------------- the pool */

static inline jf_pool_t *jf_pool_new(int keep)
{
    jf_pool_t *p = (jf_pool_t *)calloc(1, sizeof(jf_pool_t));
    if (p == NULL) return NULL;
    if (jf_mutex_init(&p->lock)) { free(p); return NULL; }
    if (jf_cond_init(&p->work)) { jf_mutex_destroy(&p->lock); free(p); return NULL; }
    if (jf_cond_init(&p->left)) {
        jf_cond_destroy(&p->work); jf_mutex_destroy(&p->lock); free(p); return NULL;
    }
    p->keep = keep;
    return p;
}

/* Only once every thread has exited and no job is listed. */
static inline void jf_pool_free(jf_pool_t *p)
{
    jf_cond_destroy(&p->left);
    jf_cond_destroy(&p->work);
    jf_mutex_destroy(&p->lock);
    free(p);
}

static inline void jf_pool_link(jf_pool_t *p, jf_job_t *j)
{
    j->prev = p->last;
    j->next = NULL;
    if (p->last) p->last->next = j; else p->first = j;
    p->last = j;
    j->listed = 1;
}

static inline void jf_pool_unlink(jf_pool_t *p, jf_job_t *j)
{
    if (!j->listed) return;
    if (j->prev) j->prev->next = j->next; else p->first = j->next;
    if (j->next) j->next->prev = j->prev; else p->last = j->prev;
    j->prev = j->next = NULL;
    j->listed = 0;
}

/* Reserve room for one more thread the caller is about to start: returns
 * 1 when it should start one (the count then includes it), 0 when the
 * pool has `want` threads already, or `keep` (a thread started above it
 * would exit at once, and a caller looping until `want` would start
 * threads forever), or is closing. */
static inline int jf_pool_reserve_thread(jf_pool_t *p, int want)
{
    int go;
    jf_mutex_lock(&p->lock);
    go = !p->closing && p->n_threads < want && p->n_threads < p->keep;
    if (go) p->n_threads++;
    jf_mutex_unlock(&p->lock);
    return go;
}

/* A thread counted by jf_pool_reserve_thread did not start, or left its
 * loop other than through JF_NEXT_EXIT. */
static inline void jf_pool_thread_gone(jf_pool_t *p)
{
    jf_mutex_lock(&p->lock);
    p->n_threads--;
    jf_cond_broadcast(&p->left);
    jf_mutex_unlock(&p->lock);
}

static inline int jf_pool_threads(jf_pool_t *p)
{
    int n;
    jf_mutex_lock(&p->lock);
    n = p->n_threads;
    jf_mutex_unlock(&p->lock);
    return n;
}

/* Work for `want` more threads was listed (lock held), or, want < 0,
 * every thread must look again.  Spinning threads see it at once; for each
 * place they leave, two sleeping threads are woken: the kernel may put a
 * woken thread on the caller's own (busy) CPU, where it waits for a time
 * slice or a migration (2-3 ms measured on a 2-CPU VM, a quarter of a
 * 20 ms loop), while the other one, on an idle CPU, joins at once; the
 * thread left without a place goes back to sleep. */
static inline void jf_pool_wake(jf_pool_t *p, int want)
{
    int wake, spinners;
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_RELEASE);
    if (want < 0) {
        if (p->n_idle > 0) jf_cond_broadcast(&p->work);
        return;
    }
    /* Each spinner is counted on by one wake-up only: two items pushed
     * before a spinner gets the lock back must not both leave it to that
     * one thread (tasks waiting for each other would wait forever). */
    spinners = want < p->spin_credit ? want : p->spin_credit;
    p->spin_credit -= spinners;
    want -= spinners;               /* want may be up to INT_MAX - 1 */
    if (want <= 0 || p->n_idle == 0) return;
    if (want > p->n_idle) want = p->n_idle;
    wake = 2 * want;
    if (wake >= p->n_idle) {
        jf_cond_broadcast(&p->work);
    } else {
        while (wake-- > 0) jf_cond_signal(&p->work);
    }
}

/* Threads kept while idle; surplus idle threads are woken to exit. */
static inline void jf_pool_set_keep(jf_pool_t *p, int keep)
{
    jf_mutex_lock(&p->lock);
    p->keep = keep;
    if (p->n_threads > keep) jf_pool_wake(p, -1);
    jf_mutex_unlock(&p->lock);
}

static inline void jf_pool_close(jf_pool_t *p)
{
    jf_mutex_lock(&p->lock);
    p->closing = 1;
    jf_pool_wake(p, -1);
    jf_mutex_unlock(&p->lock);
}

static inline int jf_range_has_chunks(jf_range_t *r)
{
    return JF_LOAD(&r->rc) == 0 && JF_LOAD(&r->next) < r->stop;
}

/* Block until there is something for a worker thread to do.  An item
 * (JF_NEXT_ITEM: *job is its queue, *item the owned item) or a range to
 * help with (JF_NEXT_RANGE: *worker is this thread's id in it), else
 * JF_NEXT_EXIT once the pool closes or this thread is surplus.  With
 * nothing to do, the thread polls for up to `spin` seconds before it
 * sleeps. */
static inline int jf_pool_next(jf_pool_t *p, jf_job_t **job, void **item,
                               int *worker, double spin)
{
    jf_job_t *j;
    unsigned long gen;
    double deadline = spin > 0.0 ? jf_clock_now() + spin : 0.0;
    int polls;
    jf_mutex_lock(&p->lock);
    for (;;) {
        for (j = p->first; j != NULL; j = j->next) {
            if (j->active >= j->limit) continue;
            if (j->kind == JF_JOB_QUEUE) {
                jf_queue_t *q = (jf_queue_t *)j;
                if (q->count == 0) continue;
                *item = q->items[q->head];
                q->head = (q->head + 1) % q->capacity;
                q->count--;
                j->active++;
                *job = j;
                jf_mutex_unlock(&p->lock);
                return JF_NEXT_ITEM;
            } else {
                jf_range_t *r = (jf_range_t *)j;
                if (r->joined >= j->limit || !jf_range_has_chunks(r)) continue;
                *worker = r->joined++;
                /* Atomic: the range's caller polls it (jf_range_finish). */
                __atomic_add_fetch(&j->active, 1, __ATOMIC_ACQ_REL);
                *job = j;
                jf_mutex_unlock(&p->lock);
                return JF_NEXT_RANGE;
            }
        }
        if (p->closing || p->n_threads > p->keep) {
            p->n_threads--;
            jf_cond_broadcast(&p->left);
            jf_mutex_unlock(&p->lock);
            return JF_NEXT_EXIT;
        }
        if (deadline > 0.0) {
            /* Poll `gen` without the lock: any work listed from now on
             * bumps it.  Then look again (the work may be for others). */
            gen = JF_LOAD(&p->gen);
            p->n_spinning++;
            p->spin_credit++;
            jf_mutex_unlock(&p->lock);
            polls = 0;
            while (JF_LOAD(&p->gen) == gen) {
                jf_cpu_relax();
                if (++polls % 64 == 0) {
                    if (jf_clock_now() >= deadline) break;
                    JF_YIELD();     /* to a thread waiting for this CPU */
                }
            }
            jf_mutex_lock(&p->lock);
            p->n_spinning--;
            if (p->spin_credit > p->n_spinning) p->spin_credit = p->n_spinning;
            if (JF_LOAD(&p->gen) == gen) deadline = 0.0;   /* timed out */
            continue;
        }
        p->n_idle++;
        jf_cond_wait(&p->work, &p->lock);
        p->n_idle--;
    }
}

/* ------------------------------------------------------------ the queue */

static inline void jf_queue_init(jf_queue_t *q, int limit, void *owner)
{
    memset(q, 0, sizeof(*q));
    q->job.kind = JF_JOB_QUEUE;
    q->job.limit = limit;
    q->owner = owner;
}

static inline void jf_queue_free(jf_queue_t *q)
{
    free(q->items);
    q->items = NULL;
}

static inline void jf_queue_start(jf_pool_t *p, jf_queue_t *q)
{
    jf_mutex_lock(&p->lock);
    jf_pool_link(p, &q->job);
    jf_mutex_unlock(&p->lock);
}

/* Append an owned item.  0, ENOMEM, or EPIPE when the queue or the pool
 * is closing (the item is then not taken). */
static inline int jf_queue_push(jf_pool_t *p, jf_queue_t *q, void *item)
{
    jf_mutex_lock(&p->lock);
    if (q->closing || p->closing || !q->job.listed) {
        jf_mutex_unlock(&p->lock);
        return EPIPE;
    }
    if (q->count == q->capacity) {
        ptrdiff_t i, cap = q->capacity ? 2 * q->capacity : 64;
        void **grown = (void **)malloc((size_t)cap * sizeof(void *));
        if (grown == NULL) { jf_mutex_unlock(&p->lock); return ENOMEM; }
        for (i = 0; i < q->count; i++)
            grown[i] = q->items[(q->head + i) % q->capacity];
        free(q->items);
        q->items = grown;
        q->head = 0;
        q->capacity = cap;
    }
    q->items[(q->head + q->count) % q->capacity] = item;
    q->count++;
    if (q->job.active < q->job.limit) jf_pool_wake(p, 1);
    jf_mutex_unlock(&p->lock);
    return 0;
}

static inline int jf_queue_drained(jf_queue_t *q)
{
    return q->count == 0 && q->job.active == 0 && q->taken == 0;
}

/* An item of `q` counted in `*running` finished.  Returns 1 when this
 * unlisted the queue (closing and drained): the caller then drops the
 * pool's reference to the queue's owner. */
static inline int jf_queue_finish(jf_pool_t *p, jf_queue_t *q, int *running)
{
    int unlisted = 0;
    jf_mutex_lock(&p->lock);
    (*running)--;
    if (q->closing && jf_queue_drained(q)) {
        unlisted = q->job.listed;
        jf_pool_unlink(p, &q->job);
        jf_cond_broadcast(&p->left);
    }
    jf_mutex_unlock(&p->lock);
    return unlisted;
}

/* A pool thread finished an item of `q` (see jf_queue_finish). */
static inline int jf_queue_done(jf_pool_t *p, jf_queue_t *q)
{
    return jf_queue_finish(p, q, &q->job.active);
}

/* The thread that feeds the queue takes its oldest item to run it itself
 * (a call's caller helping its workers), unless `most` items of the queue
 * run already.  Not counted in `active`: the limit is the pool threads'
 * (the caller lowers it to make room for itself).  1 when it got one. */
static inline int jf_queue_take(jf_pool_t *p, jf_queue_t *q, int most,
                                void **item)
{
    int got = 0;
    jf_mutex_lock(&p->lock);
    if (q->count > 0 && q->job.active + q->taken < most) {
        *item = q->items[q->head];
        q->head = (q->head + 1) % q->capacity;
        q->count--;
        q->taken++;
        got = 1;
    }
    jf_mutex_unlock(&p->lock);
    return got;
}

/* The feeding thread finished an item it took (see jf_queue_finish). */
static inline int jf_queue_taken_done(jf_pool_t *p, jf_queue_t *q)
{
    return jf_queue_finish(p, q, &q->taken);
}

/* At most `limit` pool threads run the queue's items at once from now on
 * (0: none, the feeding thread runs them all).  Raising it wakes idle
 * threads for the queued items. */
static inline void jf_queue_set_limit(jf_pool_t *p, jf_queue_t *q, int limit)
{
    jf_mutex_lock(&p->lock);
    if (limit > q->job.limit && q->count > 0) jf_pool_wake(p, -1);
    q->job.limit = limit;
    jf_mutex_unlock(&p->lock);
}

/* No more pushes.  Returns 1 when this unlisted the queue (it was already
 * drained); otherwise the worker finishing its last item unlists it. */
static inline int jf_queue_close(jf_pool_t *p, jf_queue_t *q)
{
    int unlisted = 0;
    jf_mutex_lock(&p->lock);
    q->closing = 1;
    if (jf_queue_drained(q)) {
        unlisted = q->job.listed;
        jf_pool_unlink(p, &q->job);
    }
    jf_mutex_unlock(&p->lock);
    return unlisted;
}

/* Wait until the queue is unlisted (drained after jf_queue_close) or the
 * monotonic clock reaches `deadline` (<= 0: no deadline).  1 when drained. */
static inline int jf_queue_wait_drained(jf_pool_t *p, jf_queue_t *q,
                                        double deadline)
{
    int done;
    jf_mutex_lock(&p->lock);
    while (q->job.listed) {
        if (deadline > 0.0) {
            if (jf_cond_wait_until(&p->left, &p->lock, deadline) == JF_TIMEDOUT)
                break;
        } else {
            jf_cond_wait(&p->left, &p->lock);
        }
    }
    done = !q->job.listed;
    jf_mutex_unlock(&p->lock);
    return done;
}

/* ------------------------------------------------------------ the range */

static inline void jf_range_init(jf_range_t *r, ptrdiff_t start, ptrdiff_t stop,
                                 ptrdiff_t grain, int n_workers,
                                 jf_body_t body, void *ctx)
{
    memset(r, 0, sizeof(*r));
    r->job.kind = JF_JOB_RANGE;
    r->job.limit = n_workers;
    r->next = start;
    r->stop = stop;
    /* Automatic (grain 0): chunks of at least 8 indices, but at most a
     * sixteenth of a worker's share.  Chunks of one index at the end of a
     * range cost more than they balance (each is a compare-and-swap on
     * memory both CPUs write): 1,000 indices of 50 ns on 2 workers ran at
     * 1.62-1.70x the serial loop with them, 1.79-1.84x with 8-index chunks.  A
     * small fixed floor, not one from timing the first chunk: that one let
     * a range whose cost sits in its last indices run them on one thread. */
    if (grain > 0) {
        r->min_chunk = grain;
    } else {
        r->min_chunk = (stop - start) / (16 * (ptrdiff_t)n_workers);
        if (r->min_chunk > 8) r->min_chunk = 8;
        if (r->min_chunk < 1) r->min_chunk = 1;
    }
    r->split = 2 * (ptrdiff_t)n_workers;
    r->body = body;
    r->ctx = ctx;
    r->joined = 1;                  /* the caller is worker 0 */
}

/* Take the next chunk [*a, *b); 0 when none is left or a body failed. */
static inline int jf_range_grab(jf_range_t *r, ptrdiff_t *a, ptrdiff_t *b)
{
    ptrdiff_t cur = __atomic_load_n(&r->next, __ATOMIC_RELAXED), left, size, end;
    do {
        if (cur >= r->stop || JF_LOAD(&r->rc) != 0) return 0;
        left = r->stop - cur;
        size = left / r->split;
        if (size < r->min_chunk) size = r->min_chunk;
        /* No remainder shorter than the grain left behind. */
        end = (left - size < r->min_chunk) ? r->stop : cur + size;
    } while (!__atomic_compare_exchange_n(&r->next, &cur, end, 1,
                                          __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
    *a = cur;
    *b = end;
    return 1;
}

/* Run chunks as `worker` until none is left or a body returns non-zero.
 * Returns 0, or the body's value; *won is 1 when that value is the one
 * the range reports (the first non-zero). */
static inline int jf_range_work(jf_range_t *r, int worker, int *won)
{
    ptrdiff_t a, b;
    int rc, zero;
    *won = 0;
    while (jf_range_grab(r, &a, &b)) {
        rc = r->body(r->ctx, a, b, worker);
        if (rc != 0) {
            zero = 0;
            *won = __atomic_compare_exchange_n(&r->rc, &zero, rc, 0,
                                               __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
            return rc;
        }
    }
    return 0;
}

/* List the range and wake threads for its `limit - 1` places.  EPIPE
 * when the pool is closing (the caller then runs the range alone). */
static inline int jf_range_start(jf_pool_t *p, jf_range_t *r)
{
    jf_mutex_lock(&p->lock);
    if (p->closing) {
        jf_mutex_unlock(&p->lock);
        return EPIPE;
    }
    jf_pool_link(p, &r->job);
    jf_pool_wake(p, r->job.limit - 1);
    jf_mutex_unlock(&p->lock);
    return 0;
}

/* A pool thread is done with the range.  Once `active` reads 0 the caller
 * may return (the range lives on its stack): nothing of `r` is touched
 * after the decrement. */
static inline void jf_range_leave(jf_pool_t *p, jf_range_t *r)
{
    int listed;
    jf_mutex_lock(&p->lock);
    listed = r->job.listed;
    if (__atomic_sub_fetch(&r->job.active, 1, __ATOMIC_ACQ_REL) == 0 && !listed)
        jf_cond_broadcast(&p->left);
    jf_mutex_unlock(&p->lock);
}

/* The caller is out of chunks: unlist the range (no thread joins any
 * more) and wait until every thread that joined has left, polling for up
 * to `spin` seconds before it sleeps. */
static inline void jf_range_finish(jf_pool_t *p, jf_range_t *r, double spin)
{
    jf_mutex_lock(&p->lock);
    jf_pool_unlink(p, &r->job);
    if (spin > 0.0 && r->job.active > 0) {
        double deadline = jf_clock_now() + spin;
        int polls = 0;
        jf_mutex_unlock(&p->lock);
        while (JF_LOAD(&r->job.active) > 0) {
            /* Yielding: the helper may be waiting for this very CPU. */
            JF_YIELD();
            if (++polls % 16 == 0 && jf_clock_now() >= deadline) break;
        }
        jf_mutex_lock(&p->lock);
    }
    while (r->job.active > 0) jf_cond_wait(&p->left, &p->lock);
    jf_mutex_unlock(&p->lock);
}

#endif /* JF_POOL_H */
