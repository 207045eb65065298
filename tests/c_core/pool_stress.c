/* pool_stress.c -- the C core's scheduler (jf_pool.h) under load, in C.
 *
 *     pool_stress [ROUNDS]
 *
 * Plain C on jf_platform.h only, so that the same file runs natively and,
 * cross-compiled, on the other platforms' threading layers (a Windows .exe
 * under Wine in ci/cross_check.sh).  The pool's threads here are C threads
 * looping on jf_pool_next as the Cython layer's do; several caller threads
 * at once run, ROUNDS times each:
 *
 *   queues   items pushed while pool threads and the caller run them, the
 *            limit lowered to 0 and raised mid-way, closed, drained with
 *            timed waits: every item runs once, never more pool threads at
 *            once than the limit allows, the queue unlisted exactly once,
 *            a push after the close refused;
 *   steals   items whose tasks meet in pairs (a task waits for the next
 *            one, queued behind it in its own item): the waiting thread's
 *            unstarted tasks must be taken by an idle pool thread or the
 *            caller (jf_queue_steal: after timed looks, or at once),
 *            every task once;
 *   ranges   parallel_for ranges of random sizes, grains and worker
 *            counts, some with a failing body: every index once (at most
 *            once after a failure), chunks of at least the grain, each
 *            worker id held by one thread, the first failure reported and
 *            won by exactly one worker; the caller pausing after each
 *            chunk, or stopping the range there (as for Ctrl-C).
 *
 * Before and after: the clocks, timed waits (a passed deadline, a wait
 * that times out, a wait that is signalled), thread-local storage, keep
 * (surplus threads exit, the pool grows back) and close (every thread
 * exits; a range on a closed pool runs in its caller alone).
 *
 * Prints one line and exits 0 when every check held; otherwise names the
 * failed check and exits 1.  Bounded: a wait for threads gives up (and
 * fails) after WAIT_LIMIT seconds.
 */
/* The core's headers first: jf_platform.h picks feature macros. */
#include "jf_pool.h"
#include "jf_cap.h"

#include <stdio.h>
#include <string.h>

#define POOL_THREADS 3
#define CALLERS 3
#define WAIT_LIMIT 60.0

#define CHECK(cond) do { if (!(cond)) fail(__LINE__, #cond); } while (0)

static void fail(int line, const char *what)
{
    fprintf(stderr, "pool_stress.c:%d: check failed: %s\n", line, what);
    fflush(stderr);
    exit(1);
}

static jf_pool_t *pool;
static double spin_seconds;     /* the helpers' polling, varied by round */
static int failures_seen;       /* atomic: ranges whose body failed */
static int items_by_pool;       /* atomic: queue items pool threads ran */
static int chunks_by_helpers;   /* atomic: range chunks pool threads ran */
static int steals_seen;         /* atomic: pieces taken from running ones */
static int stops_seen;          /* atomic: ranges stopped by their caller */

static JF_THREAD_LOCAL int tls_thread_no = 0;
static int thread_numbers;      /* atomic: hands out tls_thread_no */

static unsigned next_random(unsigned *state)
{
    unsigned x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

/* Sleeps `seconds` on a condition variable nobody signals: a timed wait
 * that must run out. */
static void nap(double seconds)
{
    jf_mutex_t m;
    jf_cond_t c;
    double deadline = jf_clock_now() + seconds;
    CHECK(jf_mutex_init(&m) == 0);
    CHECK(jf_cond_init(&c) == 0);
    jf_mutex_lock(&m);
    while (jf_cond_wait_until(&c, &m, deadline) != JF_TIMEDOUT) {
    }
    CHECK(jf_clock_now() >= deadline);
    jf_mutex_unlock(&m);
    jf_cond_destroy(&c);
    jf_mutex_destroy(&m);
}

static void wait_for_threads(int n)
{
    double give_up = jf_clock_now() + WAIT_LIMIT;
    while (jf_pool_threads(pool) != n) {
        CHECK(jf_clock_now() < give_up);
        nap(0.001);
    }
}

/* ---------------------------------------------------------- the queues */

#define MAX_ITEMS 400

typedef struct queue_state {
    jf_queue_t q;
    struct queue_state *next;   /* [list_lock] the finished queues */
    int counts[MAX_ITEMS];      /* atomic: runs of each item */
    int items[MAX_ITEMS];       /* what is pushed: &items[i] */
    int running;                /* atomic: pool threads in an item now */
    int most_running;           /* atomic: the largest `running` seen */
    int unlisted;               /* atomic: times a call said it unlisted */
} queue_state_t;

/* A pool thread that unlisted a queue says so after the pool's lock is
 * released, possibly after its caller saw the queue drained: the queues
 * are checked for that, and freed, once every thread has been joined. */
static jf_mutex_t list_lock;
static queue_state_t *finished;

static void queue_finished(queue_state_t *s)
{
    jf_mutex_lock(&list_lock);
    s->next = finished;
    finished = s;
    jf_mutex_unlock(&list_lock);
}

static int check_finished_queues(void)
{
    int n = 0;
    while (finished != NULL) {
        queue_state_t *s = finished;
        finished = s->next;
        CHECK(jf_int_load(&s->unlisted) == 1);
        jf_queue_free(&s->q);
        free(s);
        n++;
    }
    return n;
}

static void run_item(queue_state_t *s, int *item, int by_pool)
{
    int i = (int)(item - s->items), seen, now;
    if (by_pool) {
        now = jf_int_add(&s->running, 1);
        seen = jf_int_load(&s->most_running);
        while (now > seen && !jf_int_cas(&s->most_running, &seen, now)) {
        }
    }
    CHECK(jf_int_add(&s->counts[i], 1) == 1);
    if (by_pool) {
        jf_int_add(&s->running, -1);
        jf_int_add(&items_by_pool, 1);
    }
}

static void queue_round(unsigned *rnd)
{
    queue_state_t *s = (queue_state_t *)calloc(1, sizeof(queue_state_t));
    int n = (int)(next_random(rnd) % MAX_ITEMS), i, limit, top;
    void *item;
    CHECK(s != NULL);
    limit = 1 + (int)(next_random(rnd) % POOL_THREADS);
    top = limit;
    jf_queue_init(&s->q, limit, s);
    jf_queue_start(pool, &s->q);
    for (i = 0; i < n; i++) {
        CHECK(jf_queue_push(pool, &s->q, &s->items[i]) == 0);
        if (i == n / 3) {
            jf_queue_set_limit(pool, &s->q, 0);     /* the caller alone */
            limit = 0;
        } else if (i == n / 2) {
            limit = 1 + (int)(next_random(rnd) % POOL_THREADS);
            if (limit > top) top = limit;
            jf_queue_set_limit(pool, &s->q, limit);
        }
        if (i % 7 == 0 && jf_queue_take(pool, &s->q, limit + 1, &item)) {
            run_item(s, (int *)item, 0);
            if (jf_queue_taken_done(pool, &s->q)) jf_int_add(&s->unlisted, 1);
        }
    }
    if (jf_queue_close(pool, &s->q)) jf_int_add(&s->unlisted, 1);
    CHECK(jf_queue_push(pool, &s->q, &s->items[0]) == EPIPE);
    for (;;) {
        if (jf_queue_take(pool, &s->q, limit + 1, &item)) {
            run_item(s, (int *)item, 0);
            if (jf_queue_taken_done(pool, &s->q)) jf_int_add(&s->unlisted, 1);
            continue;
        }
        /* A short deadline: the wait runs out while pool threads still
         * run items, as the Cython layer's sliced waits do. */
        if (jf_queue_wait_drained(pool, &s->q, jf_clock_now() + 0.002)) break;
    }
    for (i = 0; i < n; i++) CHECK(jf_int_load(&s->counts[i]) == 1);
    CHECK(jf_int_load(&s->most_running) <= top);
    CHECK(jf_int_load(&s->running) == 0);
    queue_finished(s);
}

/* ---------------------------------------------------------- the steals */

#define MAX_TASKS 6

/* One item: tasks 0..n-1, run as pieces (claims) by whichever threads
 * take them; task 2k waits until task 2k+1 has run. */
typedef struct {
    int n;
    int parts;                  /* atomic: pieces not finished */
    int ran[MAX_TASKS];         /* atomic */
    int finished;               /* atomic: the last piece ended */
} steal_item_t;

typedef struct steal_state {
    jf_queue_t q;               /* first: a steal round's queue is its state */
    steal_item_t items[8];
    int n_items;
    int stolen;                 /* atomic: pieces taken from a running one */
    struct steal_state *next;   /* [list_lock] the finished rounds */
} steal_state_t;

/* The owner of every steal round's queue: tells pool threads its kind. */
static int steal_tag;
static steal_state_t *finished_steals;

static void steal_finished(steal_state_t *s)
{
    jf_mutex_lock(&list_lock);
    s->next = finished_steals;
    finished_steals = s;
    jf_mutex_unlock(&list_lock);
}

static int free_finished_steals(void)
{
    int n = 0;
    while (finished_steals != NULL) {
        steal_state_t *s = finished_steals;
        finished_steals = s->next;
        jf_queue_free(&s->q);
        free(s);
        n++;
    }
    return n;
}

static void run_piece(steal_item_t *it, ptrdiff_t a, ptrdiff_t b, int first,
                      jf_queue_t *q)
{
    jf_claim_t claim;
    ptrdiff_t i;
    double give_up;
    jf_claim_init(&claim, first ? 0 : a, first ? it->n : b, &it->parts, it);
    jf_queue_claim_add(pool, q, &claim);
    while ((i = jf_claim_next(&claim)) >= 0) {
        CHECK(i < it->n);
        if (i % 2 == 0 && i + 1 < it->n) {
            /* Its partner is behind it in this piece: some other thread
             * must take it (bounded, so that a hang fails the check). */
            give_up = jf_clock_now() + WAIT_LIMIT;
            while (jf_int_load(&it->ran[i + 1]) == 0) {
                CHECK(jf_clock_now() < give_up);
                /* Asleep between looks: a rescue counts on waiting
                 * tasks using next to no CPU (JF_RESCUE_MAX_CPU). */
                nap(0.005);
            }
        }
        CHECK(jf_int_add(&it->ran[i], 1) == 1);
    }
    jf_queue_claim_remove(pool, q, &claim);
    if (jf_int_add(&it->parts, -1) == 0) CHECK(jf_int_add(&it->finished, 1) == 1);
}

/* One steal round at a time: each steal frees the thread it took the
 * partner from, but each item a pool thread starts ties one up, and the
 * C pool (unlike the Cython layer's) does not grow: rounds of several
 * callers at once could tie up every thread. */
static jf_mutex_t steal_lock;

static void steal_round(unsigned *rnd)
{
    steal_state_t *s = (steal_state_t *)calloc(1, sizeof(steal_state_t));
    int i, k, spare;
    void *owner;
    ptrdiff_t a, b;
    double after;
    CHECK(s != NULL);
    jf_mutex_lock(&steal_lock);
    s->n_items = 1 + (int)(next_random(rnd) % 3);
    /* Half the rounds take from any running piece at once, as a caller
     * running alone does; the others only from a stalled one. */
    after = (next_random(rnd) % 2) ? JF_STEAL_AFTER : 0.0;
    /* Two pool threads at once: one may wait in a task while the other
     * takes its partner. */
    jf_queue_init(&s->q, 2, &steal_tag);
    jf_queue_start(pool, &s->q);
    for (i = 0; i < s->n_items; i++) {
        s->items[i].n = 2 + (int)(next_random(rnd) % (MAX_TASKS - 1));
        s->items[i].parts = 1;
        CHECK(jf_queue_push(pool, &s->q, &s->items[i]) == 0);
    }
    jf_queue_close(pool, &s->q);
    for (;;) {
        /* The caller helps as the Cython layer's does: unstarted tasks
         * of a running piece first, never more than 3 items at once. */
        if (jf_queue_take_stolen(pool, &s->q, 3, after, &owner, &a, &b,
                                 &spare)) {
            jf_int_add(&s->stolen, 1);
            run_piece((steal_item_t *)owner, a, b, 0, &s->q);
            jf_queue_taken_done(pool, &s->q);
            continue;
        }
        if (jf_queue_wait_drained(pool, &s->q, jf_clock_now() + 0.002)) break;
    }
    for (i = 0; i < s->n_items; i++) {
        CHECK(jf_int_load(&s->items[i].finished) == 1);
        for (k = 0; k < s->items[i].n; k++) CHECK(jf_int_load(&s->items[i].ran[k]) == 1);
    }
    /* Every item with a waiting pair was split at least once. */
    CHECK(jf_int_load(&s->stolen) >= s->n_items);
    jf_int_add(&steals_seen, jf_int_load(&s->stolen));
    jf_mutex_unlock(&steal_lock);
    steal_finished(s);
}

/* ---------------------------------------------------------- the ranges */

typedef struct {
    int *counts;                /* atomic: visits of each index */
    int owner[8];               /* atomic: tls_thread_no holding each worker id */
    ptrdiff_t start, stop, min_size;
    int n_workers;
    ptrdiff_t fail_at;          /* the body fails on the chunk holding it */
    int wins;                   /* atomic: workers whose failure was reported */
    int rendezvous;             /* worker 0 waits for a helper's chunk */
    int how;                    /* RUN_AT_ONCE, RUN_PAUSING, RUN_STOPPING */
    int stopped;                /* jf_range_stop's STOPPED won */
} range_state_t;

static int range_body(void *ctx, ptrdiff_t a, ptrdiff_t b, int worker)
{
    range_state_t *s = (range_state_t *)ctx;
    ptrdiff_t i;
    int mine = 0;
    CHECK(s->start <= a && a < b && b <= s->stop);
    CHECK(b - a >= s->min_size || b == s->stop);
    CHECK(worker >= 0 && worker < s->n_workers);
    CHECK(jf_depth_get() > 0);
    if (!jf_int_cas(&s->owner[worker], &mine, tls_thread_no))
        CHECK(mine == tls_thread_no);
    for (i = a; i < b; i++) CHECK(jf_int_add(&s->counts[i - s->start], 1) == 1);
    if (worker > 0) jf_int_add(&chunks_by_helpers, 1);
    if (s->rendezvous && worker == 0) {
        /* Worker 0 holds its chunk until a helper has run the other one:
         * fails unless a pool thread is woken for the range. */
        double give_up = jf_clock_now() + WAIT_LIMIT;
        while (jf_int_load(&s->counts[s->stop - 1 - s->start]) == 0) {
            CHECK(jf_clock_now() < give_up);
            jf_yield();
        }
    }
    if (a <= s->fail_at && s->fail_at < b) return 100 + worker;
    return 0;
}

/* How the caller runs its share: at once, or pausing after every chunk
 * (as it does to look for Ctrl-C), or pausing and then stopping the
 * range with STOPPED (as Ctrl-C does). */
enum { RUN_AT_ONCE, RUN_PAUSING, RUN_STOPPING };
#define STOPPED 55

static void range_run(range_state_t *s, jf_range_t *r, ptrdiff_t grain)
{
    int rc, won = 0, listed, paused = 1;
    jf_range_init(r, s->start, s->stop, grain, s->n_workers, range_body, s);
    s->min_size = grain > 0 ? grain : 1;
    jf_depth_add(1);
    listed = jf_range_start(pool, r) == 0;
    if (s->how == RUN_AT_ONCE) {
        rc = jf_range_work(r, 0, &won);
    } else {
        /* A deadline that has passed: back after each chunk. */
        rc = 0;
        while (paused && rc == 0) {
            rc = jf_range_work_until(r, 0, &won, jf_clock_now(), &paused);
            if (paused && s->how == RUN_STOPPING) {
                s->stopped = jf_range_stop(r, STOPPED);
                break;
            }
        }
    }
    if (won) jf_int_add(&s->wins, 1);
    CHECK(rc == 0 || rc == 100);
    if (listed) jf_range_finish(pool, r, spin_seconds);
    jf_depth_add(-1);
    CHECK(jf_depth_get() == 0);
}

static void range_round(unsigned *rnd)
{
    range_state_t s;
    jf_range_t r;
    ptrdiff_t n, i, grain;
    int rc;
    memset(&s, 0, sizeof(s));
    n = (ptrdiff_t)(next_random(rnd) % 20000);
    s.start = (ptrdiff_t)(next_random(rnd) % 1000) - 500;
    s.stop = s.start + n;
    s.n_workers = 1 + (int)(next_random(rnd) % (POOL_THREADS + 1));
    grain = (ptrdiff_t)(next_random(rnd) % 4 == 0 ? 0 : next_random(rnd) % 50);
    s.fail_at = next_random(rnd) % 5 == 0 && n > 0
        ? s.start + (ptrdiff_t)(next_random(rnd) % (unsigned)n) : s.start - 1;
    s.how = (int)(next_random(rnd) % 3);
    s.counts = (int *)calloc((size_t)n + 1, sizeof(int));
    CHECK(s.counts != NULL);
    range_run(&s, &r, grain);
    rc = jf_int_load(&r.rc);
    if (s.stopped) {
        /* Stopped before any body failed: no chunk started after, none
         * ran twice. */
        CHECK(rc == STOPPED && jf_int_load(&s.wins) == 0);
        for (i = 0; i < n; i++) CHECK(jf_int_load(&s.counts[i]) <= 1);
        jf_int_add(&stops_seen, 1);
    } else if (s.fail_at >= s.start) {
        CHECK(rc >= 100 && rc < 100 + s.n_workers);
        CHECK(jf_int_load(&s.wins) == 1);
        CHECK(jf_int_load(&s.counts[s.fail_at - s.start]) == 1);
        for (i = 0; i < n; i++) CHECK(jf_int_load(&s.counts[i]) <= 1);
        jf_int_add(&failures_seen, 1);
    } else {
        CHECK(rc == 0);
        CHECK(jf_int_load(&s.wins) == 0);
        for (i = 0; i < n; i++) CHECK(jf_int_load(&s.counts[i]) == 1);
    }
    free(s.counts);
}

/* ------------------------------------------------------------- threads */

static void pool_thread(void *arg)
{
    jf_job_t *job = NULL;
    void *item = NULL;
    ptrdiff_t span[2];
    int worker = 0, kind, won;
    (void)arg;
    tls_thread_no = jf_int_add(&thread_numbers, 1);
    jf_depth_add(1);                /* as the Cython layer's pool threads */
    for (;;) {
        kind = jf_pool_next(pool, &job, &item, &worker, span, 0.0);
        while (kind == JF_NEXT_RANGE) {
            jf_range_t *r = (jf_range_t *)job;
            range_state_t *s = (range_state_t *)r->ctx;
            int rc = jf_range_work(r, worker, &won);
            if (won) jf_int_add(&s->wins, 1);
            CHECK(rc == 0 || rc == 100 + worker);
            jf_range_leave(pool, r);
            kind = jf_pool_next(pool, &job, &item, &worker, span, spin_seconds);
        }
        if (kind == JF_NEXT_EXIT) break;
        CHECK(kind == JF_NEXT_ITEM || kind == JF_NEXT_STEAL);
        if (((jf_queue_t *)job)->owner == &steal_tag) {
            jf_queue_t *q = (jf_queue_t *)job;
            steal_state_t *s = (steal_state_t *)q;
            if (kind == JF_NEXT_STEAL) jf_int_add(&s->stolen, 1);
            run_piece((steal_item_t *)item, span[0], span[1],
                      kind == JF_NEXT_ITEM, q);
            jf_queue_done(pool, q);
        } else {
            jf_queue_t *q = (jf_queue_t *)job;
            queue_state_t *s = (queue_state_t *)q->owner;
            CHECK(kind == JF_NEXT_ITEM);
            run_item(s, (int *)item, 1);
            if (jf_queue_done(pool, q)) jf_int_add(&s->unlisted, 1);
        }
    }
}

/* A pool thread must be woken (or find the work while polling): one
 * queued item that only a pool thread may run, then a range of two
 * one-index chunks whose first waits for the second. */
static void check_wake_ups(void)
{
    queue_state_t *q = (queue_state_t *)calloc(1, sizeof(queue_state_t));
    range_state_t s;
    jf_range_t r;
    CHECK(q != NULL);
    jf_queue_init(&q->q, 1, q);
    jf_queue_start(pool, &q->q);
    CHECK(jf_queue_push(pool, &q->q, &q->items[0]) == 0);
    if (jf_queue_close(pool, &q->q)) jf_int_add(&q->unlisted, 1);
    CHECK(jf_queue_wait_drained(pool, &q->q, jf_clock_now() + WAIT_LIMIT));
    CHECK(jf_int_load(&q->counts[0]) == 1);
    queue_finished(q);

    memset(&s, 0, sizeof(s));
    s.stop = 2;
    s.n_workers = 2;
    s.fail_at = -1;
    s.rendezvous = 1;
    s.counts = (int *)calloc(2, sizeof(int));
    CHECK(s.counts != NULL);
    range_run(&s, &r, 1);
    CHECK(jf_int_load(&r.rc) == 0);
    CHECK(s.counts[0] == 1 && s.counts[1] == 1);
    CHECK(s.owner[1] != 0 && s.owner[1] != s.owner[0]);
    free(s.counts);
}

typedef struct {
    int rounds;
    unsigned seed;
} caller_t;

static void caller_thread(void *arg)
{
    caller_t *c = (caller_t *)arg;
    int i;
    tls_thread_no = jf_int_add(&thread_numbers, 1);
    for (i = 0; i < c->rounds; i++) {
        /* Steal rounds wait for timed looks (milliseconds each): fewer. */
        if (i % 16 == 15) steal_round(&c->seed);
        else if (next_random(&c->seed) % 2) queue_round(&c->seed);
        else range_round(&c->seed);
    }
}

#define MAX_POOL_THREADS 64
static jf_thread_t pool_threads[MAX_POOL_THREADS];
static int n_started;

static void grow_pool(int want)
{
    while (jf_pool_reserve_thread(pool, want)) {
        CHECK(n_started < MAX_POOL_THREADS);
        CHECK(jf_thread_start(&pool_threads[n_started], pool_thread, NULL) == 0);
        n_started++;
    }
}

/* ----------------------------------------------- the platform's pieces */

typedef struct {
    jf_mutex_t m;
    jf_cond_t c;
    int flag;
    int tls_ok;                 /* atomic */
} signal_state_t;

static void signaller(void *arg)
{
    signal_state_t *s = (signal_state_t *)arg;
    tls_thread_no = 1000;
    nap(0.01);
    jf_mutex_lock(&s->m);
    s->flag = 1;
    jf_cond_signal(&s->c);
    jf_mutex_unlock(&s->m);
    if (tls_thread_no == 1000) jf_int_add(&s->tls_ok, 1);
}

static void check_platform(void)
{
    signal_state_t s;
    jf_thread_t t;
    double t0, t1, cpu0, cpu1, deadline;
    volatile double x = 1.0;
    long i;
    void *p = NULL;
    unsigned long u = 0;
    ptrdiff_t z = 5, expected = 5;

    CHECK(jf_process_id() > 0);
    /* The asking thread runs: never reported asleep (-1: not told). */
    CHECK(jf_thread_runnable(jf_thread_id()) != 0);
    t0 = jf_clock_now();
    t1 = jf_clock_now();
    CHECK(t1 >= t0);
    cpu0 = jf_thread_cpu_now();
    for (i = 0; i < 2000000; i++) x = x * 1.0000001;
    cpu1 = jf_thread_cpu_now();
    CHECK(cpu0 >= 0.0 && cpu1 >= cpu0);

    /* The atomics' contracts, on one thread. */
    jf_ptr_store(&p, &s);
    CHECK(jf_ptr_load(&p) == (void *)&s);
    CHECK(jf_ulong_add(&u, 3) == 3 && jf_ulong_load(&u) == 3);
    CHECK(jf_ssize_cas(&z, &expected, 9) || jf_ssize_load(&z) == 5);
    expected = 7;
    CHECK(!jf_ssize_cas(&z, &expected, 11) && expected == jf_ssize_load(&z));

    memset(&s, 0, sizeof(s));
    CHECK(jf_mutex_init(&s.m) == 0);
    CHECK(jf_cond_init(&s.c) == 0);
    jf_mutex_lock(&s.m);
    /* A deadline that has passed, and the "no deadline" value. */
    CHECK(jf_cond_wait_until(&s.c, &s.m, jf_clock_now() - 1.0) == JF_TIMEDOUT);
    CHECK(jf_cond_wait_until(&s.c, &s.m, 0.0) == JF_TIMEDOUT);
    jf_mutex_unlock(&s.m);
    nap(0.02);                      /* a wait that runs out */

    /* A wait that is signalled long before its deadline. */
    tls_thread_no = 1;
    CHECK(jf_thread_start(&t, signaller, &s) == 0);
    deadline = jf_clock_now() + WAIT_LIMIT;
    jf_mutex_lock(&s.m);
    while (!s.flag) CHECK(jf_cond_wait_until(&s.c, &s.m, deadline) == 0);
    jf_mutex_unlock(&s.m);
    CHECK(jf_clock_now() < deadline);
    CHECK(jf_thread_join(t) == 0);
    CHECK(jf_int_load(&s.tls_ok) == 1 && tls_thread_no == 1);
    jf_cond_destroy(&s.c);
    jf_mutex_destroy(&s.m);
    tls_thread_no = 0;
}

/* ------------------------------------------------ the pools' cap (jf_cap.h)
 * Two stand-in libraries: "big" (8 threads) and "small" (2: the cap only
 * lowers).  Callers hold random limits at once: while one holds limit k,
 * big's size is at most k; once all have let go both have their sizes.
 * "small" is registered while holds run. */

static int big_size = 8, small_size = 2;   /* atomic */
static void big_set(int n) { jf_int_store(&big_size, n); }
static int big_get(void) { return jf_int_load(&big_size); }
static void small_set(int n) { jf_int_store(&small_size, n); }
static int small_get(void) { return jf_int_load(&small_size); }

static void cap_caller(void *arg)
{
    unsigned rnd = *(unsigned *)arg;
    int i, limit, token;
    for (i = 0; i < 2000; i++) {
        limit = 1 + (int)(next_random(&rnd) % 4);
        token = jf_cap_hold(limit);
        CHECK(token == limit);
        CHECK(big_get() <= limit && small_get() <= 2);
        if (next_random(&rnd) % 8 == 0) jf_yield();
        jf_cap_release(token);
    }
}

static void cap_stress(void)
{
    jf_thread_t threads[CALLERS];
    unsigned seeds[CALLERS];
    int k, token;
    CHECK(jf_cap_init() == 0);
    CHECK(jf_cap_hold(1) == 0);              /* nothing registered: free */
    CHECK(jf_cap_register(big_set, big_get) == 0);
    CHECK(jf_cap_register(big_set, big_get) == 0);   /* idempotent */
    token = jf_cap_hold(3);
    CHECK(big_get() == 3);
    CHECK(jf_cap_register(small_set, small_get) == 0);  /* joins capped */
    CHECK(small_get() == 2);
    for (k = 0; k < CALLERS; k++) {
        seeds[k] = 977u * (unsigned)(k + 1);
        CHECK(jf_thread_start(&threads[k], cap_caller, &seeds[k]) == 0);
    }
    for (k = 0; k < CALLERS; k++) CHECK(jf_thread_join(threads[k]) == 0);
    CHECK(big_get() == 3);                   /* the first hold remains */
    jf_cap_release(token);
    CHECK(big_get() == 8 && small_get() == 2 && jf_cap.n_held == 0);
    jf_cap_release(token);                   /* a second release: no-op */
    CHECK(big_get() == 8 && jf_cap.n_held == 0);
    CHECK(jf_cap.holds == 1 + CALLERS * 2000);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 200, i;
    caller_t callers[CALLERS];
    jf_thread_t caller_threads[CALLERS];
    jf_range_t r;
    range_state_t s;
    int won = 0, n_queues, n_steal_rounds;

    if (rounds < 1) {
        fprintf(stderr, "usage: pool_stress [ROUNDS >= 1]\n");
        return 2;
    }
    CHECK(jf_mutex_init(&list_lock) == 0);
    CHECK(jf_mutex_init(&steal_lock) == 0);
    check_platform();
    tls_thread_no = jf_int_add(&thread_numbers, 1);   /* main: a caller */

    pool = jf_pool_new(POOL_THREADS);
    CHECK(pool != NULL);
    grow_pool(POOL_THREADS + 2);   /* keep caps it */
    CHECK(n_started == POOL_THREADS && jf_pool_threads(pool) == POOL_THREADS);

    /* Two phases: helpers that sleep at once, then helpers that poll. */
    for (i = 0; i < 2; i++) {
        int k;
        spin_seconds = i == 0 ? 0.0 : 0.0002;
        check_wake_ups();
        for (k = 0; k < CALLERS; k++) {
            callers[k].rounds = rounds / 2 + 1;
            callers[k].seed = 2463534242u + 7919u * (unsigned)(k + 10 * i);
            CHECK(jf_thread_start(&caller_threads[k], caller_thread,
                                  &callers[k]) == 0);
        }
        for (k = 0; k < CALLERS; k++) CHECK(jf_thread_join(caller_threads[k]) == 0);
        if (i == 0) {
            /* keep: surplus threads exit once idle; the pool grows back. */
            jf_pool_set_keep(pool, 1);
            wait_for_threads(1);
            jf_pool_set_keep(pool, POOL_THREADS);
            grow_pool(POOL_THREADS);
            CHECK(jf_pool_threads(pool) == POOL_THREADS);
        }
    }

    /* close: every thread exits, joined; nothing more is listed. */
    jf_pool_close(pool);
    wait_for_threads(0);
    for (i = 0; i < n_started; i++) CHECK(jf_thread_join(pool_threads[i]) == 0);
    n_queues = check_finished_queues();
    n_steal_rounds = free_finished_steals();
    CHECK(!jf_pool_reserve_thread(pool, 1));
    memset(&s, 0, sizeof(s));
    s.stop = 1000;
    s.n_workers = 4;
    s.fail_at = -1;
    s.counts = (int *)calloc(1000, sizeof(int));
    CHECK(s.counts != NULL);
    jf_range_init(&r, 0, 1000, 1, 4, range_body, &s);
    CHECK(jf_range_start(pool, &r) == EPIPE);
    jf_depth_add(1);
    CHECK(jf_range_work(&r, 0, &won) == 0 && !won);   /* the caller alone */
    jf_depth_add(-1);
    for (i = 0; i < 1000; i++) CHECK(s.counts[i] == 1);
    CHECK(s.owner[0] == tls_thread_no && s.owner[1] == 0);
    free(s.counts);
    jf_pool_free(pool);
    cap_stress();

    /* How much the pool threads ran beside the callers depends on the
     * machine's load: said, not checked (check_wake_ups makes sure that
     * they are woken). */
    jf_mutex_destroy(&list_lock);
    jf_mutex_destroy(&steal_lock);
    printf("pool_stress: %d callers x %d rounds on %d threads (%d started): "
           "%d queues, %d items and %d chunks run by pool threads, %d steal "
           "rounds (%d pieces taken), %d failing ranges, %d stopped; %ld cap "
           "holds: ok\n",
           CALLERS, 2 * (rounds / 2 + 1), POOL_THREADS, n_started, n_queues,
           jf_int_load(&items_by_pool), jf_int_load(&chunks_by_helpers),
           n_steal_rounds, jf_int_load(&steals_seen),
           jf_int_load(&failures_seen), jf_int_load(&stops_seen),
           jf_cap.holds);
    return 0;
}
