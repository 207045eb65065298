/* jf_pool.h -- the scheduler of joblib_fast's worker threads.
 *
 * Plain C99, no Python.h; locks, atomics, thread-local storage and all
 * else that differs by platform come from jf_platform.h.  One jf_pool_t serves two kinds of job from one list:
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

#include "jf_platform.h"

typedef int (*jf_body_t)(void *ctx, ptrdiff_t start, ptrdiff_t stop, int worker);

enum { JF_JOB_QUEUE = 1, JF_JOB_RANGE = 2 };

/* What jf_pool_next hands a worker thread. */
enum { JF_NEXT_EXIT = 0, JF_NEXT_ITEM = 1, JF_NEXT_RANGE = 2, JF_NEXT_STEAL = 3,
       JF_NEXT_FEED = 4 };

/* A thread with nothing to do looks at the running pieces of the queues it
 * could serve this often, and takes the unstarted tasks of a piece that
 * has started none for this long.  Shorter: a task blocked on a partner
 * behind it waits less; longer: fewer wake-ups of idle threads at the end
 * of a call.  Checked by tests/threads (tasks meeting at barriers) and the
 * no-op and nogil rows of `python benchmarks/bench.py`. */
#define JF_STEAL_AFTER 0.002

/* When every running piece of a queue has started no task for this long
 * and their threads together used under JF_RESCUE_MAX_CPU of a CPU
 * meanwhile (the tasks holding the call's threads all wait), a thread
 * beyond the queue's limit runs one more task: the unstarted tasks of a
 * piece, else a queued item (jf_queue_rescue).  Far above a batch's target
 * duration, so that tasks that compute never bring more threads than the
 * limit.  Tasks that compute use a CPU between them even taking turns with
 * the GIL; on a machine busy with other processes, a share of one that
 * stays well above JF_RESCUE_MAX_CPU (tasks that wait use next to none).
 * Checked by tests/threads (waiting and computing tasks). */
#define JF_RESCUE_AFTER 0.05
#define JF_RESCUE_MAX_CPU 0.05

typedef struct jf_job {
    struct jf_job *prev, *next;     /* [lock] the pool's list */
    int kind;                       /* JF_JOB_QUEUE or JF_JOB_RANGE */
    int listed;                     /* [lock] in the pool's list */
    int limit;                      /* [lock] pool threads at once (queue; the
                                       feeding thread's taken items aside), in
                                       all (range) */
    int active;                     /* [lock] pool threads inside the job now */
} jf_job_t;

/* A running piece of a queued item: tasks [next, end) of it that no thread
 * has started yet.  The thread running the piece takes them one at a time
 * (jf_claim_next); a thread with nothing to do takes all of them at once
 * when the piece has started none for a while (jf_queue_steal): a task that
 * waits for a partner queued behind it in its own item (a barrier, a queue)
 * then never waits for a thread that could run the partner. */
typedef struct jf_claim {
    int64_t word;                   /* atomic: next | end << 32, item-relative */
    ptrdiff_t begin;                /* the piece's first task */
    int64_t seen;                   /* [lock] `next` when a look first saw it, or -1 */
    double seen_at;                 /* [lock] when that was */
    double seen_cpu;                /* [lock] the thread's CPU seconds then (< 0: unknown) */
    jf_cpu_clock_t clock;           /* the CPU clock of the piece's thread */
    jf_thread_id_t thread;          /* and its id (jf_thread_runnable) */
    int *parts;                     /* atomic: unfinished pieces of the item */
    void *owner;                    /* the item (borrowed: alive while parts > 0) */
    struct jf_claim *prev, *next;   /* [lock] the queue's running pieces */
    int linked;                     /* [lock] */
} jf_claim_t;

typedef struct {
    jf_job_t job;                   /* first: a jf_queue_t * is a jf_job_t * */
    void **items;                   /* [lock] ring of owned items */
    ptrdiff_t head, count, capacity;/* [lock] */
    int closing;                    /* [lock] no more pushes; unlisted once drained */
    int taken;                      /* [lock] items the feeding thread runs now */
    jf_claim_t *claims;             /* [lock] the running pieces of its items */
    int n_claims;                   /* [lock] how many */
    int feed_wanted;                /* [lock] the feeding thread runs an item
                                       itself: a rescue may feed in its place */
    int rescues;                    /* [lock] rescues so far (jf_queue_rescue) */
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
    int n_looking;                  /* [lock] of those, the ones waiting to look
                                       at running pieces again (timed) */
    int n_spinning;                 /* [lock] threads polling `gen` */
    int spin_credit;                /* [lock] of those, the ones no wake-up
                                       has counted on yet */
    unsigned long gen;              /* atomic, written under lock: bumped
                                       when work is listed or threads must
                                       look again (close, fewer kept) */
    int keep;                       /* [lock] threads kept while idle */
    int closing;                    /* [lock] every thread exits once idle */
} jf_pool_t;

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

/* ------------------------------------------------------------ claims */

static inline int64_t jf_claim_pack(ptrdiff_t next, ptrdiff_t end)
{
    return (int64_t)(((uint64_t)(uint32_t)end << 32) | (uint32_t)next);
}

static inline ptrdiff_t jf_claim_next_of(int64_t w) { return (uint32_t)w; }
static inline ptrdiff_t jf_claim_end_of(int64_t w) { return (uint32_t)((uint64_t)w >> 32); }

/* A piece of tasks [begin, end) (below 2**31) of `owner`, one of the
 * item's `*parts` unfinished pieces, run by the calling thread. */
static inline void jf_claim_init(jf_claim_t *c, ptrdiff_t begin, ptrdiff_t end,
                                 int *parts, void *owner)
{
    memset(c, 0, sizeof(*c));
    c->word = jf_claim_pack(begin, end);
    c->begin = begin;
    c->seen = -1;
    c->clock = jf_cpu_clock_self();
    c->thread = jf_thread_id();
    c->parts = parts;
    c->owner = owner;
}

/* The next task of the piece for the thread running it, or -1. */
static inline ptrdiff_t jf_claim_next(jf_claim_t *c)
{
    int64_t w = jf_int64_load_relaxed(&c->word);
    do {
        if (jf_claim_next_of(w) >= jf_claim_end_of(w)) return -1;
    } while (!jf_int64_cas(&c->word, &w, w + 1));
    return jf_claim_next_of(w);
}

static inline int jf_parts_add(int *parts, int d)
{
    return jf_int_add(parts, d);
}

/* One look at a piece (lock held): how long it has started no task (0.0
 * when it just did), and *cpu, the CPU seconds its thread used meanwhile
 * (< 0: unknown). */
static inline double jf_claim_look(jf_claim_t *c, double now, double *cpu)
{
    ptrdiff_t next = jf_claim_next_of(jf_int64_load(&c->word));
    double used;
    if (c->seen != next) {
        c->seen = next;
        c->seen_at = now;
        c->seen_cpu = jf_cpu_clock_read(c->clock);
        *cpu = 0.0;
        return 0.0;
    }
    used = jf_cpu_clock_read(c->clock);
    *cpu = (used >= 0.0 && c->seen_cpu >= 0.0) ? used - c->seen_cpu : -1.0;
    return now - c->seen_at;
}

/* Take the unstarted tasks of `c`, which has some (lock held): 1 with
 * *owner, [*a, *b) and one more part counted on the owner; the piece's
 * thread stops before them.  0 when it took one meanwhile. */
static inline int jf_claim_split(jf_claim_t *c, void **owner, ptrdiff_t *a,
                                 ptrdiff_t *b)
{
    int64_t w = jf_int64_load(&c->word);
    ptrdiff_t next = jf_claim_next_of(w), end = jf_claim_end_of(w);
    if (next >= end) return 0;
    /* Counted first: the piece's thread finishes its part only after
     * unlinking the claim, which needs the lock held here. */
    jf_parts_add(c->parts, 1);
    if (!jf_int64_cas(&c->word, &w, jf_claim_pack(next, next))) {
        jf_parts_add(c->parts, -1);
        return 0;
    }
    *owner = c->owner;
    *a = next;
    *b = end;
    return 1;
}

/* Whether a running piece of `q` has unstarted tasks (lock held).  Only
 * a new piece adds some, and it wakes a thread to look (claim_add). */
static inline int jf_queue_has_spare(jf_queue_t *q)
{
    jf_claim_t *c;
    for (c = q->claims; c != NULL; c = c->next) {
        int64_t w = jf_int64_load(&c->word);
        if (jf_claim_next_of(w) < jf_claim_end_of(w)) return 1;
    }
    return 0;
}

/* Take the unstarted tasks of a piece of `q` that has started none for
 * `after` seconds (JF_STEAL_AFTER, or 0: any running piece; lock held;
 * see jf_claim_split). */
static inline int jf_queue_steal(jf_queue_t *q, double now, double after,
                                 void **owner, ptrdiff_t *a, ptrdiff_t *b)
{
    jf_claim_t *c;
    double cpu;
    for (c = q->claims; c != NULL; c = c->next) {
        int64_t w = jf_int64_load(&c->word);
        if (jf_claim_look(c, now, &cpu) >= after
                && jf_claim_next_of(w) < jf_claim_end_of(w)
                && jf_claim_split(c, owner, a, b))
            return 1;
    }
    return 0;
}

/* What a rescue of `q` (see JF_RESCUE_AFTER) would run, lock held: 2 for
 * the unstarted tasks of *pick, 1 for the oldest queued item, 3 for feeding
 * the queue in the place of its feeding thread (feed_wanted: it runs an
 * item itself, which may wait for tasks not fed yet), 0 when no rescue is
 * due.  Unstarted tasks first: they come before any queued item.
 * Where a thread's CPU time is unknown, only those (a queued item would
 * bring one more thread to tasks that may all compute). */
static inline int jf_queue_rescue_due(jf_queue_t *q, double now, jf_claim_t **pick)
{
    jf_claim_t *c;
    double cpu, used = 0.0, since = 0.0, stalled;
    int known = 1;
    *pick = NULL;
    /* Every running item is a listed piece (the feeding thread's too). */
    if (q->claims == NULL || q->n_claims < q->job.active + q->taken) return 0;
    for (c = q->claims; c != NULL; c = c->next) {
        int64_t w = jf_int64_load(&c->word);
        stalled = jf_claim_look(c, now, &cpu);
        if (stalled < JF_RESCUE_AFTER) return 0;
        if (cpu < 0.0) known = 0; else used += cpu;
        if (since == 0.0 || stalled < since) since = stalled;
        if (*pick == NULL && jf_claim_next_of(w) < jf_claim_end_of(w)) *pick = c;
    }
    if (used > JF_RESCUE_MAX_CPU * since) return 0;
    /* No CPU: waiting, unless waiting for a CPU (a busy machine). */
    for (c = q->claims; c != NULL; c = c->next)
        if (jf_thread_runnable(c->thread) == 1) return 0;
    if (*pick != NULL) return 2;
    if (known && q->count > 0) return 1;
    return q->feed_wanted ? 3 : 0;
}

/* Pop the oldest queued item of `q` for a pool thread (lock held). */
static inline void *jf_queue_pop(jf_queue_t *q)
{
    void *item = q->items[q->head];
    q->head = (q->head + 1) % q->capacity;
    q->count--;
    q->job.active++;
    return item;
}

/* A rescue by a pool thread (lock held): JF_NEXT_STEAL or JF_NEXT_ITEM as
 * jf_pool_next returns them, or 0. */
static inline int jf_queue_rescue(jf_queue_t *q, double now, void **item,
                                  ptrdiff_t *span)
{
    jf_claim_t *pick;
    switch (jf_queue_rescue_due(q, now, &pick)) {
    case 2:
        if (!jf_claim_split(pick, item, &span[0], &span[1])) return 0;
        q->job.active++;
        q->rescues++;
        return JF_NEXT_STEAL;
    case 1:
        *item = jf_queue_pop(q);
        q->rescues++;
        return JF_NEXT_ITEM;
    case 3:
        q->feed_wanted = 0;         /* the feed asks again if it fed some */
        q->job.active++;
        q->rescues++;
        return JF_NEXT_FEED;
    default:
        return 0;
    }
}

/* A piece starts running: idle threads that could serve its queue look at
 * it from now on (one is woken to start looking). */
static inline void jf_queue_claim_add(jf_pool_t *p, jf_queue_t *q, jf_claim_t *c)
{
    jf_mutex_lock(&p->lock);
    c->prev = NULL;
    c->next = q->claims;
    if (q->claims) q->claims->prev = c;
    q->claims = c;
    q->n_claims++;
    c->linked = 1;
    /* An idle thread that could take its tasks starts looking, or one
     * starts looking for a rescue if none is (see jf_pool_next). */
    if (p->n_idle > 0 && (p->n_looking == 0
            || (q->count == 0 && q->job.active < q->job.limit)))
        jf_cond_signal(&p->work);
    jf_mutex_unlock(&p->lock);
}

/* The piece's thread is done with it: no thread takes tasks from it any
 * more.  Before the piece's part is counted finished (see jf_claim_split). */
static inline void jf_queue_claim_remove(jf_pool_t *p, jf_queue_t *q, jf_claim_t *c)
{
    jf_mutex_lock(&p->lock);
    if (c->linked) {
        if (c->prev) c->prev->next = c->next; else q->claims = c->next;
        if (c->next) c->next->prev = c->prev;
        c->prev = c->next = NULL;
        c->linked = 0;
        q->n_claims--;
    }
    jf_mutex_unlock(&p->lock);
}

/* The feeding thread runs an item itself (1), or no more (0). */
static inline void jf_queue_want_feed(jf_pool_t *p, jf_queue_t *q, int wanted)
{
    jf_mutex_lock(&p->lock);
    q->feed_wanted = wanted;
    jf_mutex_unlock(&p->lock);
}

/* The feeding thread's look at `q` while its call makes no progress: when
 * a rescue is due, an idle thread is woken to make it, or, with none idle,
 * 1 is returned: the feeding thread then starts a thread for it. */
static inline int jf_queue_rescue_wanted(jf_pool_t *p, jf_queue_t *q)
{
    jf_claim_t *pick;
    int wanted = 0;
    jf_mutex_lock(&p->lock);
    if (jf_queue_rescue_due(q, jf_clock_now(), &pick)) {
        if (p->n_idle > 0) jf_cond_broadcast(&p->work);
        else wanted = 1;
    }
    jf_mutex_unlock(&p->lock);
    return wanted;
}

/* The thread feeding `q` takes the unstarted tasks of a piece stalled
 * for `after` seconds (0: of any running piece) to run them itself, as
 * jf_queue_take takes an item (then jf_queue_taken_done); unless `most`
 * items run already.  *spare: whether `q` has running pieces at all
 * (worth looking again soon). */
static inline int jf_queue_take_stolen(jf_pool_t *p, jf_queue_t *q, int most,
                                       double after, void **owner,
                                       ptrdiff_t *a, ptrdiff_t *b, int *spare)
{
    int got = 0;
    jf_mutex_lock(&p->lock);
    *spare = jf_queue_has_spare(q);
    if (*spare && q->job.active + q->taken < most
            && jf_queue_steal(q, jf_clock_now(), after, owner, a, b)) {
        q->taken++;
        got = 1;
    }
    jf_mutex_unlock(&p->lock);
    return got;
}

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
 * slice or a migration (milliseconds: much of a short loop), while the
 * other one, on an idle CPU, joins at once; the thread left without a
 * place goes back to sleep.  `python benchmarks/bench.py --only pfor`
 * (short calls) checks it. */
static inline void jf_pool_wake(jf_pool_t *p, int want)
{
    int wake, spinners;
    jf_ulong_add(&p->gen, 1);
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
    return jf_int_load(&r->rc) == 0 && jf_ssize_load(&r->next) < r->stop;
}

/* Block until there is something for a worker thread to do.  An item
 * (JF_NEXT_ITEM: *job is its queue, *item the owned item), a range to
 * help with (JF_NEXT_RANGE: *worker is this thread's id in it), tasks
 * taken from a running item (JF_NEXT_STEAL: *item is the item, borrowed,
 * span[0..1] the tasks; finished with jf_queue_done as an item is), else
 * JF_NEXT_FEED: *job's owner is to feed its queue (see jf_queue_rescue_due;
 * finished with jf_queue_done too), else
 * JF_NEXT_EXIT once the pool closes or this thread is surplus.  With
 * nothing to do, the thread polls for up to `spin` seconds before it
 * sleeps; while a queue it could serve has running pieces with unstarted
 * tasks, it sleeps JF_STEAL_AFTER at a time and looks at them. */
static inline int jf_pool_next(jf_pool_t *p, jf_job_t **job, void **item,
                               int *worker, ptrdiff_t *span, double spin)
{
    jf_job_t *j;
    jf_queue_t *spare, *stuck;
    unsigned long gen;
    double deadline = spin > 0.0 ? jf_clock_now() + spin : 0.0;
    double now;
    int polls;
    jf_mutex_lock(&p->lock);
    for (;;) {
        spare = stuck = NULL;
        for (j = p->first; j != NULL; j = j->next) {
            if (j->kind == JF_JOB_QUEUE) {
                jf_queue_t *q = (jf_queue_t *)j;
                int room = j->active < j->limit;
                if (!room || q->count == 0) {
                    /* Running pieces to take tasks from (room), or to
                     * watch for a rescue (see jf_queue_rescue_due). */
                    if (q->claims == NULL) continue;
                    if (room && spare == NULL && jf_queue_has_spare(q)) spare = q;
                    else if (stuck == NULL) stuck = q;
                    continue;
                }
                *item = jf_queue_pop(q);
                *job = j;
                jf_mutex_unlock(&p->lock);
                return JF_NEXT_ITEM;
            } else {
                jf_range_t *r = (jf_range_t *)j;
                if (j->active >= j->limit || r->joined >= j->limit
                        || !jf_range_has_chunks(r))
                    continue;
                *worker = r->joined++;
                /* Atomic: the range's caller polls it (jf_range_finish). */
                jf_int_add(&j->active, 1);
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
            gen = jf_ulong_load(&p->gen);
            p->n_spinning++;
            p->spin_credit++;
            jf_mutex_unlock(&p->lock);
            polls = 0;
            while (jf_ulong_load(&p->gen) == gen) {
                jf_cpu_relax();
                if (++polls % 64 == 0) {
                    if (jf_clock_now() >= deadline) break;
                    jf_yield();     /* to a thread waiting for this CPU */
                }
            }
            jf_mutex_lock(&p->lock);
            p->n_spinning--;
            if (p->spin_credit > p->n_spinning) p->spin_credit = p->n_spinning;
            if (jf_ulong_load(&p->gen) == gen) deadline = 0.0;   /* timed out */
            continue;
        }
        if (spare != NULL || stuck != NULL) {
            /* Running pieces to look at: a stalled one's unstarted tasks
             * (spare: room under the limit), or a rescue (stuck); else
             * look again in half the period. */
            jf_queue_t *q = spare != NULL ? spare : stuck;
            double period = spare != NULL ? JF_STEAL_AFTER : JF_RESCUE_AFTER;
            int kind = 0;
            now = jf_clock_now();
            if (spare == NULL) {
                kind = jf_queue_rescue(q, now, item, span);
            } else if (jf_queue_steal(q, now, JF_STEAL_AFTER, item, &span[0],
                                      &span[1])) {
                q->job.active++;
                kind = JF_NEXT_STEAL;
            }
            if (kind) {
                *job = &q->job;
                jf_mutex_unlock(&p->lock);
                return kind;
            }
            p->n_idle++;
            p->n_looking++;
            jf_cond_wait_until(&p->work, &p->lock, now + 0.5 * period);
            p->n_looking--;
            p->n_idle--;
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

/* Tasks started so far in the queue's running pieces (a measure of
 * progress finer than whole items). */
static inline int64_t jf_queue_started(jf_pool_t *p, jf_queue_t *q)
{
    int64_t n = 0;
    jf_claim_t *c;
    jf_mutex_lock(&p->lock);
    for (c = q->claims; c != NULL; c = c->next)
        n += jf_claim_next_of(jf_int64_load(&c->word)) - c->begin;
    jf_mutex_unlock(&p->lock);
    return n;
}

/* Pool threads running the queue's items now (the feeding thread's
 * taken items aside), or with `rescues`, the rescues so far. */
static inline int jf_queue_count(jf_pool_t *p, jf_queue_t *q, int rescues)
{
    int n;
    jf_mutex_lock(&p->lock);
    n = rescues ? q->rescues : q->job.active;
    jf_mutex_unlock(&p->lock);
    return n;
}

/* Items of `q` waiting in the queue now (none taken yet). */
static inline ptrdiff_t jf_queue_queued(jf_pool_t *p, jf_queue_t *q)
{
    ptrdiff_t n;
    jf_mutex_lock(&p->lock);
    n = q->count;
    jf_mutex_unlock(&p->lock);
    return n;
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
     * memory both CPUs write); a larger floor leaves uneven ranges
     * unbalanced.  A fixed floor, not one from timing the first chunk: that
     * one let a range whose cost sits in its last indices run them on one
     * thread.  `python benchmarks/bench.py --only pfor` checks it. */
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
    ptrdiff_t cur = jf_ssize_load_relaxed(&r->next), left, size, end;
    do {
        if (cur >= r->stop || jf_int_load(&r->rc) != 0) return 0;
        left = r->stop - cur;
        size = left / r->split;
        if (size < r->min_chunk) size = r->min_chunk;
        /* No remainder shorter than the grain left behind. */
        end = (left - size < r->min_chunk) ? r->stop : cur + size;
    } while (!jf_ssize_cas(&r->next, &cur, end));
    *a = cur;
    *b = end;
    return 1;
}

/* Run chunks as `worker` until none is left or a body returns non-zero,
 * or (deadline > 0) return early, *paused = 1, after a chunk that ends at
 * or past the monotonic `deadline`: the caller then looks for Ctrl-C and
 * goes on, or stops the range (jf_range_stop).  Returns 0, or the body's
 * value; *won is 1 when that value is the one the range reports (the
 * first non-zero). */
static inline int jf_range_work_until(jf_range_t *r, int worker, int *won,
                                      double deadline, int *paused)
{
    ptrdiff_t a, b;
    int rc, zero;
    *won = 0;
    *paused = 0;
    while (jf_range_grab(r, &a, &b)) {
        rc = r->body(r->ctx, a, b, worker);
        if (rc != 0) {
            zero = 0;
            *won = jf_int_cas(&r->rc, &zero, rc);
            return rc;
        }
        if (deadline > 0.0 && jf_clock_now() >= deadline) {
            *paused = 1;
            return 0;
        }
    }
    return 0;
}

/* jf_range_work_until without a deadline. */
static inline int jf_range_work(jf_range_t *r, int worker, int *won)
{
    int paused;
    return jf_range_work_until(r, worker, won, 0.0, &paused);
}

/* Stop the range with `rc` as its result unless a body failed first: no
 * chunk starts any more.  1 when `rc` is the range's result. */
static inline int jf_range_stop(jf_range_t *r, int rc)
{
    int zero = 0;
    return jf_int_cas(&r->rc, &zero, rc);
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
    if (jf_int_add(&r->job.active, -1) == 0 && !listed)
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
        while (jf_int_load(&r->job.active) > 0) {
            /* Yielding: the helper may be waiting for this very CPU. */
            jf_yield();
            if (++polls % 16 == 0 && jf_clock_now() >= deadline) break;
        }
        jf_mutex_lock(&p->lock);
    }
    while (r->job.active > 0) jf_cond_wait(&p->left, &p->lock);
    jf_mutex_unlock(&p->lock);
}

#endif /* JF_POOL_H */
