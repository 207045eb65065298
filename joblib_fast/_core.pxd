# Declarations of the dispatch core (see _core.pyx for the data flow).
from libc.stdint cimport int64_t
from cpython.object cimport PyObject

from ._threads cimport Lease, WorkerPool, jf_claim_t


cdef extern from "jf_platform.h" nogil:
    ctypedef struct jf_mutex_t:
        pass

    ctypedef struct jf_cond_t:
        pass

    int JF_TIMEDOUT
    int jf_mutex_init(jf_mutex_t *m)
    int jf_mutex_destroy(jf_mutex_t *m)
    int jf_mutex_lock(jf_mutex_t *m)
    int jf_mutex_unlock(jf_mutex_t *m)
    double jf_clock_now()
    double jf_thread_cpu_now()
    int jf_cond_init(jf_cond_t *c)
    int jf_cond_destroy(jf_cond_t *c)
    int jf_cond_signal(jf_cond_t *c)
    int jf_cond_broadcast(jf_cond_t *c)
    int jf_cond_wait(jf_cond_t *c, jf_mutex_t *m)
    int jf_cond_wait_until(jf_cond_t *c, jf_mutex_t *m, double deadline)


cdef extern from "jf_order.h" nogil:
    ctypedef struct jf_order_t:
        unsigned char *done
        int64_t *completed
        int64_t capacity
        int64_t n_batches
        int64_t n_done
        int64_t prefix

    void jf_order_init(jf_order_t *o)
    void jf_order_free(jf_order_t *o)
    int jf_order_add(jf_order_t *o, int64_t *out_id)
    int jf_order_mark_done(jf_order_t *o, int64_t id)


cdef class Batch:
    cdef readonly Call call
    cdef readonly int64_t id
    cdef readonly Py_ssize_t start
    cdef readonly list tasks
    cdef public object results
    # The batch's own error, kept only when its call has stop_on_error off.
    cdef object error
    # Monotonic time the task now running started, 0.0 when none runs.
    # Written by the worker, read by the caller's timeout check (a benign race
    # on an aligned double: it is only compared against a deadline).
    cdef double task_started
    # The tasks the thread that took the batch runs: it takes them one at a
    # time; an idle thread may take the unstarted rest (a Piece) when one
    # of them blocks (see jf_queue_steal in src_c/jf_pool.h).
    cdef jf_claim_t claim
    cdef int parts                   # atomic: pieces not finished
    cdef int failed                  # a task raised: no piece starts another
    cdef Py_ssize_t ran              # [call.lock] tasks run to the end
    cdef list pieces                 # [call.lock] stolen Pieces, or None
    # Batch.run has begun (GIL held): by the thread that took the batch
    # from the queue, or by the caller in its place (Call._unstarted_taken).
    cdef bint begun

    cdef int run(self) except -1
    cdef int run_piece(self, jf_claim_t *claim, double *started,
                       bint linked) except -1


cdef class Piece:
    # Tasks of a Batch taken by another thread than the one running it.
    cdef Batch batch
    cdef jf_claim_t claim
    cdef double task_started         # as Batch.task_started


cdef class BatchSizer:
    cdef readonly Py_ssize_t fixed   # batch_size, or 0: automatic
    cdef Py_ssize_t size             # the last automatic size chosen
    cdef double target               # seconds an automatic batch should last
    cdef Py_ssize_t n_workers        # 0 when unknown

    cdef Py_ssize_t auto_size(self, double per_task, Py_ssize_t total,
                              Py_ssize_t n_tasks)


cdef class CallerHelp:
    # Caller-only fields, but the window, guarded by the call's lock.
    cdef bint may_help               # a threading call that allows it
    cdef bint helping                # it does now (pool limit lowered)
    cdef bint in_list                # may_help, in run_list
    cdef bint alone                  # the caller runs every batch (limit 0)
    cdef bint trial                  # alone to measure it, not yet chosen
    cdef bint alone_barred           # never alone again in this call
    cdef int rescues_before          # the lease's rescues when the call began
    cdef double started              # when the caller first chose (clock)
    cdef double mode_until           # when the alone stretch ends
    cdef double next_trial           # before which no trial starts
    # Tasks per second of the team and of the caller alone, last measured
    # (< 0: not yet); the current window's start (time < 0: none yet).
    cdef double rate_team
    cdef double rate_team_before     # the team's window before that one
    cdef double rate_alone
    cdef double alone_lost           # the rate alone when it last lost
    cdef double window_time
    cdef double check_at             # the caller looks again from then on
    cdef int64_t window_tasks
    cdef readonly int alone_stretches  # times it chose to run alone
    cdef readonly int alone_trials   # times it tried running alone
    cdef bint spare_pieces           # running pieces had tasks to spare
    cdef bint pool_drained           # alone: pool threads had no task left
    # [call.lock] batch wall and CPU seconds, batches, since the team's
    # window began (see choose_team)
    cdef double team_time
    cdef double team_cpu
    cdef int64_t team_batches

    cdef bint short_tasks(self, Call call)
    cdef int run(self, Call call) except -1
    cdef int64_t progress(self, Call call)
    cdef int new_window(self, Call call) except -1
    cdef int set_alone(self, Call call, bint alone) except -1
    cdef int choose_team(self, Call call) except -1
    cdef int choose_team_now(self, Call call) except -1
    cdef double window_length(self, Call call)
    cdef int stop(self, Call call) except -1


cdef class Call:
    # `lock` guards every field marked [lock]; it is taken with the GIL held
    # by workers and released before any GIL acquisition, so it never
    # deadlocks against the GIL.
    cdef jf_mutex_t lock
    cdef jf_cond_t progress          # signalled on each batch end and on abort
    cdef jf_order_t order            # [lock] which batches are done
    cdef list batches                # [lock] Batch by id (None once released)
    cdef object error                # [lock] first exception raised by a task
    cdef Py_ssize_t error_index      # [lock] its task index
    cdef int aborted                 # [lock] no new task may start
    cdef double busy_time            # [lock] worker seconds spent in tasks
    cdef int64_t busy_tasks          # [lock] tasks those seconds cover
    # [lock] tasks the calling thread ran itself (see CallerHelp), and
    # that thread (the one that made the Call)
    cdef readonly int64_t caller_tasks
    cdef unsigned long caller_thread
    # [lock] signal `progress` once n_done reaches this (the caller's need)
    cdef int64_t wake_at
    cdef int64_t seen_done           # caller only: completions already handled
    cdef int64_t released            # caller only: batches handed to the user

    # [lock] The caller runs a task itself (Call._help): should every
    # running task wait meanwhile, a pool thread feeds the pool in its
    # place (one at a time: worker_feeding; see _feed_for_caller).  The
    # caller-only fields of the feed below are then the feeding thread's.
    cdef int caller_in_task
    cdef int worker_feeding

    cdef readonly object pool
    cdef object iterator                 # None once the input has ended
    cdef list ahead                      # tasks pulled for the next batch
    cdef readonly Py_ssize_t n_tasks     # tasks in batches so far
    cdef readonly bint exhausted
    cdef Py_ssize_t pre_dispatch
    cdef BatchSizer sizer                # the size of each batch
    cdef CallerHelp helper               # the caller running batches itself
    cdef Py_ssize_t n_workers            # 0 when unknown
    cdef Py_ssize_t total                # input length, -1 when unknown
    cdef double timeout                  # 0.0 means none
    cdef readonly int track_start        # workers record task start times
    cdef object on_result                # callback(index, value) or None
    cdef object on_batch                 # callback(tasks finished) or None
    cdef bint thread_pool                # pool is a ThreadPool: fast submit
    # False for push-style calls: a batch's error is the batch's, it does
    # not abort the call (see push / take_done).
    cdef bint stop_on_error

    cdef Py_ssize_t _auto_size(self)
    cdef list _newly_done(self)
    cdef bint _all_done(self)
    cdef int _notify(self, list batch_ids) except -1
    cdef Batch _make_batch(self)
    cdef Batch _add_batch(self, list tasks)
    cdef int _submit(self, Batch batch) except -1
    cdef int _feed(self) except -1
    cdef bint _sleep_until(self, int64_t target, double deadline)
    cdef int _wait(self, int64_t need) except -1
    cdef int _check_error(self) except -1
    cdef int _finish_batch(self, Batch batch, object results, double duration,
                           double cpu, object error,
                           Py_ssize_t error_index) except -1
    cdef int _end_piece(self, Batch batch, Py_ssize_t ran, double duration,
                        double cpu, object error,
                        Py_ssize_t error_index) except -1
    cdef int _mark_done(self, Batch batch) except -1
    cdef int _close_input(self) except -1
    cdef int _feed_for_caller(self) except -1
    cdef Batch _unstarted_taken(self)
    cdef int _run_taken(self, object item, bint stolen, Py_ssize_t a,
                        Py_ssize_t b) except -1
    cdef int _run_stolen(self, Batch batch, Py_ssize_t a, Py_ssize_t b,
                         bint taken) except -1


cdef class ThreadPool(Lease):
    cdef readonly int n_threads
    cdef readonly bint shared        # a lease on the process-wide pool
    cdef readonly object caller_config   # see ThreadPool's docstring
    # The call whose caller runs an item itself now (Call._run_taken), fed
    # by a pool thread in its place when everything waits (feed()).
    cdef object feeding_call

    cdef int submit(self, Batch batch) except -1
