# Declarations of the worker threads (see _threads.pyx).
from libc.stdint cimport int64_t, uint64_t


cdef extern from "jf_pool.h" nogil:
    ctypedef int (*jf_body_t)(void *ctx, Py_ssize_t start, Py_ssize_t stop,
                              int worker) noexcept nogil

    ctypedef struct jf_job_t:
        int limit

    ctypedef struct jf_queue_t:
        jf_job_t job
        int closing
        void *owner

    ctypedef struct jf_range_t:
        jf_job_t job
        int rc
        void *error

    ctypedef struct jf_pool_t:
        pass

    ctypedef struct jf_claim_t:
        pass

    int JF_NEXT_EXIT
    int JF_NEXT_ITEM
    int JF_NEXT_RANGE
    int JF_NEXT_STEAL
    int JF_NEXT_FEED
    double JF_STEAL_AFTER

    int jf_int_load(int *p)
    void jf_int_store(int *p, int v)
    void *jf_ptr_load(void **p)
    void jf_ptr_store(void **p, void *v)
    int jf_depth_get()
    void jf_depth_add(int d)
    void jf_depth_forked()

    jf_pool_t *jf_pool_new(int keep)
    void jf_pool_free(jf_pool_t *p)
    int jf_pool_reserve_thread(jf_pool_t *p, int want)
    void jf_pool_thread_gone(jf_pool_t *p)
    int jf_pool_threads(jf_pool_t *p)
    void jf_pool_set_keep(jf_pool_t *p, int keep)
    void jf_pool_close(jf_pool_t *p)
    int jf_pool_next(jf_pool_t *p, jf_job_t **job, void **item, int *worker,
                     Py_ssize_t *span, double spin)

    void jf_claim_init(jf_claim_t *c, Py_ssize_t begin, Py_ssize_t end,
                       int *parts, void *owner)
    Py_ssize_t jf_claim_next(jf_claim_t *c)
    int jf_parts_add(int *parts, int d)
    void jf_queue_claim_add(jf_pool_t *p, jf_queue_t *q, jf_claim_t *c)
    void jf_queue_claim_remove(jf_pool_t *p, jf_queue_t *q, jf_claim_t *c)
    int jf_queue_rescue_wanted(jf_pool_t *p, jf_queue_t *q)
    void jf_queue_want_feed(jf_pool_t *p, jf_queue_t *q, int wanted)
    int jf_queue_take_stolen(jf_pool_t *p, jf_queue_t *q, int most,
                             double after, void **owner, Py_ssize_t *a,
                             Py_ssize_t *b, int *spare)

    void jf_queue_init(jf_queue_t *q, int limit, void *owner)
    void jf_queue_free(jf_queue_t *q)
    void jf_queue_start(jf_pool_t *p, jf_queue_t *q)
    int jf_queue_push(jf_pool_t *p, jf_queue_t *q, void *item)
    int jf_queue_done(jf_pool_t *p, jf_queue_t *q)
    int jf_queue_take(jf_pool_t *p, jf_queue_t *q, int most, void **item)
    int jf_queue_taken_done(jf_pool_t *p, jf_queue_t *q)
    void jf_queue_set_limit(jf_pool_t *p, jf_queue_t *q, int limit)
    int jf_queue_count(jf_pool_t *p, jf_queue_t *q, int rescues)
    Py_ssize_t jf_queue_queued(jf_pool_t *p, jf_queue_t *q)
    int64_t jf_queue_started(jf_pool_t *p, jf_queue_t *q)
    int jf_queue_close(jf_pool_t *p, jf_queue_t *q)
    int jf_queue_wait_drained(jf_pool_t *p, jf_queue_t *q, double deadline)

    void jf_range_init(jf_range_t *r, Py_ssize_t start, Py_ssize_t stop,
                       Py_ssize_t grain, int n_workers, jf_body_t body,
                       void *ctx)
    int jf_range_work(jf_range_t *r, int worker, int *won)
    int jf_range_work_until(jf_range_t *r, int worker, int *won,
                            double deadline, int *paused)
    int jf_range_stop(jf_range_t *r, int rc)
    int jf_range_start(jf_pool_t *p, jf_range_t *r)
    void jf_range_leave(jf_pool_t *p, jf_range_t *r)
    void jf_range_finish(jf_pool_t *p, jf_range_t *r, double spin)


cdef class WorkerPool:
    # The threads: Python threads (so that items can take the GIL) looping
    # on jf_pool_next.  `c` is freed only once every thread has exited.
    cdef jf_pool_t *c
    cdef readonly str name
    cdef object initializer          # run first in each thread, or None
    cdef list _threads               # [plock] started Thread objects
    cdef int counter                 # [plock] names threads name-0, name-1...
    cdef readonly int base           # threads kept while idle, at least
    cdef int reserved                # [plock] sum of the limits of leases
    cdef object plock                # a threading.Lock for the [plock] fields
    cdef bint keep_c                 # never free `c` (the shared pool's)
    cdef readonly long pid           # the process whose threads these are

    cdef int ensure(self, int n) except -1
    cdef int reserve(self, int n) except -1
    cdef int grow(self) except -1


cdef class Lease:
    # A queue of items on a WorkerPool, `limit` of them running at once.
    # While listed in the pool, the pool holds a reference to the lease.
    cdef jf_queue_t q
    cdef readonly WorkerPool workers
    cdef uint64_t serial             # tells threads when they change lease
    cdef int reserved                # threads reserved in `workers` (or 0)
    cdef object enter                # run in a thread before its first item
    cdef int rescued                 # threads started by rescue_if_stuck

    cdef int open(self, WorkerPool workers, int limit, object enter,
                  bint reserve) except -1
    cdef int submit_item(self, object item) except -1
    cdef object take_item(self, int most)
    cdef int taken_done(self) except -1
    cdef int set_limit(self, int limit) except -1
    cdef int active(self)
    cdef Py_ssize_t queued(self)
    cdef int rescues(self)
    cdef int64_t started(self)
    cdef int run_item(self, object item) except -1
    cdef int run_stolen(self, object item, Py_ssize_t a,
                        Py_ssize_t b) except -1
    cdef int claim_add(self, jf_claim_t *c) except -1
    cdef int claim_remove(self, jf_claim_t *c) except -1
    cdef object take_stolen(self, int most, Py_ssize_t *a, Py_ssize_t *b,
                            int *spare, bint any_piece=*)
    cdef int rescue_if_stuck(self) except -1
    cdef int want_feed(self, bint wanted) except -1
    cdef int feed(self) except -1
    cdef int unlisted(self) except -1
    cdef int alive(self)
    cdef bint foreign(self)


# A thread that is not a pool thread runs items as one (the caller of a
# threading call running batches): in_worker_thread() is true there and a
# nested parallel_for runs inline, until it leaves.
cdef object enter_as_worker()
cdef int leave_as_worker(object token) except -1
