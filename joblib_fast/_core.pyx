"""The dispatch core of joblib_fast.

One ``Parallel.__call__`` is one :class:`Call`.  Its data flow::

    user iterable --(caller thread only: Call._feed, at most pre_dispatch
                     batches in flight)--> Batch(id, start, tasks)
        --> pool.submit(batch)          ThreadPool: a lease on the worker
                                        threads (_threads.pyx), a C ring
                                        process pool: pickled over a pipe
        --> worker: Batch.run           takes the batch's tasks one at a
                                        time (a claim in the pool: an idle
                                        thread takes the unstarted rest of a
                                        batch that has started none for a
                                        while, a Piece), per task:
                                        f(*args, **kwargs), result stored
        --> Call._end_piece             under Call.lock: the last piece of a
                                        batch marks the order tracker
                                        (src_c/jf_order.h), `progress`
                                        signalled
    caller thread: Call._wait sleeps on `progress` in ``with nogil`` (in
    slices, so Ctrl-C and the timeout are seen), or, on threads with a list
    output and short tasks, runs queued batches itself (CallerHelp.run: n_jobs
    - 1 pool threads and the caller; the pool threads only when they take
    turns, CallerHelp.choose_team), then releases results: all at the end (list), the
    longest finished prefix (generator), or in completion order
    (generator_unordered).

The batch size is chosen per batch from the measured cost of a task so that
a batch lasts about ``target_duration`` seconds (BatchSizer), and grows
at most twofold per batch so that one fast first task cannot make one huge
batch.  Auto batches pull the next batch's tasks ahead, so the end of the
input is seen a batch early and the last batches shrink.  Call keeps the
call's state; BatchSizer and CallerHelp are the two policies it asks.

Locks: Call.lock and the worker pool's lock are C mutexes.  They are taken either
with the GIL held (and then released before the GIL is released) or without
the GIL (and then never held while acquiring the GIL), so they cannot
deadlock against the GIL, and they keep the shared state right without
relying on the GIL.
"""

import sys

from ._context import restore_config, swap_config
from .errors import ParallelTimeoutError, TaskError, abandons_running_tasks

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.object cimport PyObject, PyObject_Call, PyTypeObject
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.stdint cimport int64_t
from libc.math cimport INFINITY
from libc.stdlib cimport free, malloc

# in_worker_thread is re-exported: tests and users ask the core for it.
from ._threads import in_worker_thread, shared_workers  # no-cython-lint
from ._threads cimport (
    JF_STEAL_AFTER,
    enter_as_worker,
    jf_claim_init,
    jf_claim_next,
    jf_parts_add,
    leave_as_worker,
)

# The caller sleeps in C at most this long before it looks for Ctrl-C and
# for timed-out tasks again.
cdef double SIGNAL_POLL_SECONDS = 0.05

# Upper bound of an auto batch, whatever the measured task cost.
cdef Py_ssize_t MAX_AUTO_BATCH = 1 << 20
# The caller of a threading call runs batches itself (see CallerHelp.run) only
# while the tasks measured so far last at most this long on average: it
# feeds the pool threads between its batches only (and Ctrl-C reaches a
# task that runs no bytecode only between them), so its batches must be short.
cdef double HELP_MAX_TASK_SECONDS = 0.01
# See CallerHelp.choose_team.  Batches per thread in a window of the team's
# measure: more is a steadier figure, but later.  The caller tries to run alone
# only when the threads ran between TEAM_MIN_BUSY and ALONE_TRY_BELOW * n_jobs
# at once on average (tasks holding the GIL read a little under one, tasks that
# wait near none): a wider range tries more calls (each trial costs a window at
# one thread's speed when the team was right), a narrower one misses tasks
# whose GIL hand-overs burn CPU.  Short GIL-free kernels read a little under
# n_jobs (each thread waits for the GIL between tasks), so the bound sits well
# below it.  No trial before the call has run TRIAL_AFTER_BATCHES batch
# durations (short calls gain nothing from one).  Alone is kept when it beats
# the team by ALONE_MARGIN: a window of either can catch the machine busy
# elsewhere, and a wrong choice alone costs half the speed for as long as the
# call has run.  `python benchmarks/bench.py --only gil_sweep` checks them.
cdef int TEAM_WINDOW_BATCHES = 1
cdef double TEAM_MIN_BUSY = 0.5
cdef double ALONE_TRY_BELOW = 0.8
cdef double TRIAL_AFTER_BATCHES = 2.0
cdef double ALONE_MARGIN = 1.2
# The caller running a batch looks at its choice every this many + 1 tasks
# once one may be due (CallerHelp.check_at): a choice then waits for no
# batch to end, and a batch sized at one mode's speed can last several
# times longer in the other; it costs a clock read per 64 tasks otherwise.
cdef Py_ssize_t CHOOSE_EVERY_MASK = 63
# A window alone lasts this share of a batch duration: the caller's rate
# alone is steady over fewer tasks than a team's (no GIL hand-overs), and a
# trial the team wins costs the window at one thread's speed.
cdef double ALONE_WINDOW_SHARE = 0.5

cdef object _NO_ITEM = object()


# A list while a benchmark records how calls run (_record), else None.
cdef object _record_log = None


def _record(bint on):
    """Start recording (a new list, returned) or stop.  Recorded:
    ``("piece", start, end, tasks, by_caller)`` for every piece of a batch
    a thread ran, and ``("choice", time, event, rate, running)`` for every
    decision of CallerHelp.choose_team_now (times: jf_clock_now seconds;
    rate: tasks per second of the window just measured; running: threads
    on a CPU at once in it).  Private: for benchmarks/choice_trace.py."""
    global _record_log
    _record_log = [] if on else None
    return _record_log


cdef inline int _record_choice(double now, str event, double rate,
                               double running) except -1:
    if _record_log is not None:
        _record_log.append(("choice", now, event, rate, running))
    return 0


def _tuning(**values):
    """The choose_team constants, as a dict; given keywords set them first.

    Private: for benchmarks/choice_trace.py, which compares rules in one
    process (timings drift too much between builds on a shared machine)."""
    global TEAM_MIN_BUSY, ALONE_TRY_BELOW, TRIAL_AFTER_BATCHES, \
        ALONE_MARGIN, ALONE_WINDOW_SHARE
    known = {"TEAM_MIN_BUSY", "ALONE_TRY_BELOW", "TRIAL_AFTER_BATCHES",
             "ALONE_MARGIN", "ALONE_WINDOW_SHARE"}
    unknown = set(values) - known
    if unknown:
        raise TypeError(f"unknown tuning constants {sorted(unknown)}; "
                        f"known: {sorted(known)}")
    TEAM_MIN_BUSY = values.get("TEAM_MIN_BUSY", TEAM_MIN_BUSY)
    ALONE_TRY_BELOW = values.get("ALONE_TRY_BELOW", ALONE_TRY_BELOW)
    TRIAL_AFTER_BATCHES = values.get("TRIAL_AFTER_BATCHES",
                                     TRIAL_AFTER_BATCHES)
    ALONE_MARGIN = values.get("ALONE_MARGIN", ALONE_MARGIN)
    ALONE_WINDOW_SHARE = values.get("ALONE_WINDOW_SHARE", ALONE_WINDOW_SHARE)
    return {"TEAM_MIN_BUSY": TEAM_MIN_BUSY,
            "ALONE_TRY_BELOW": ALONE_TRY_BELOW,
            "TRIAL_AFTER_BATCHES": TRIAL_AFTER_BATCHES,
            "ALONE_MARGIN": ALONE_MARGIN,
            "ALONE_WINDOW_SHARE": ALONE_WINDOW_SHARE}


cdef object _bad_task(object item, Py_ssize_t index):
    return TaskError(
        "Parallel expects an iterable of delayed(func)(*args, **kwargs) "
        f"calls, i.e. (func, args, kwargs) tuples; item {index} is "
        f"{type(item).__name__}: {item!r:.80}")


cdef extern from "Python.h":
    # On borrowed pointers: the checks of every task take no reference.
    PyTypeObject *_type_of "Py_TYPE"(PyObject *o)
    bint _is_callable "PyCallable_Check"(PyObject *o)
    PyObject *_item_of "PyTuple_GET_ITEM"(PyObject *t, Py_ssize_t i)
    object _call "PyObject_Call"(PyObject *func, PyObject *args,
                                 PyObject *kwargs)


cdef inline object _check_task(object item, Py_ssize_t index):
    """Return the task as a (callable, tuple, dict) triple or raise."""
    cdef PyObject *p = <PyObject *>item
    if _type_of(p) == <PyTypeObject *>tuple and PyTuple_GET_SIZE(item) == 3 \
            and _is_callable(_item_of(p, 0)) \
            and _type_of(_item_of(p, 1)) == <PyTypeObject *>tuple \
            and _type_of(_item_of(p, 2)) == <PyTypeObject *>dict:
        return item
    return _check_other_task(item, index)


cdef object _check_other_task(object item, Py_ssize_t index):
    """_check_task for what delayed() does not make: a list of arguments,
    None for no keyword arguments, or no task at all."""
    cdef tuple t
    if type(item) is not tuple or len(<tuple>item) != 3:
        raise _bad_task(item, index)
    t = <tuple>item
    if not callable(t[0]):
        raise TaskError(
            f"task {index}: {t[0]!r:.80} is not callable; wrap the function "
            "with delayed(func)(*args, **kwargs)")
    if type(t[1]) is tuple and type(t[2]) is dict:
        return t
    if t[2] is None:
        kwargs = {}
    elif isinstance(t[2], dict):
        kwargs = t[2]
    else:
        raise _bad_task(item, index)
    try:
        args = tuple(t[1])
    except TypeError:
        raise _bad_task(item, index) from None
    return (t[0], args, kwargs)


@cython.freelist(16)
cdef class DelayedCall:
    # ``delayed(func)``: calling it captures ``(func, args, kwargs)``.  No
    # class docstring: __doc__ (like __module__) is the wrapped function's.

    cdef readonly object func

    def __init__(self, func):
        if not callable(func):
            raise TypeError(
                f"delayed() expects a callable, got {type(func).__name__}: "
                f"{func!r:.80}")
        self.func = func

    def __call__(self, *args, **kwargs):
        return (self.func, args, kwargs)

    @property
    def __wrapped__(self):
        return self.func

    @property
    def __doc__(self):
        return getattr(self.func, "__doc__", None)

    @property
    def __module__(self):
        return getattr(self.func, "__module__", None)

    def __getattr__(self, name):
        # Like functools.wraps in joblib: __name__, __doc__, ... of func.
        if name.startswith("__") and name not in (
                "__name__", "__qualname__", "__doc__", "__module__"):
            raise AttributeError(name)
        return getattr(self.func, name)

    def __reduce__(self):
        return (DelayedCall, (self.func,))

    def __repr__(self):
        return f"delayed({self.func!r})"


# ``(func, DelayedCall(func))`` of the last delayed() call on a function
# that its module holds by name: in ``delayed(f)(x) for x in xs`` one
# wrapper then serves every item (the wrapper is immutable, so sharing it
# is invisible; making one per item is a tenth of a no-op task's cost:
# `python benchmarks/per_task_instructions.py`).  Only plain functions
# (Python, builtin, Cython) that their module holds: a closure, a lambda,
# a bound method or a partial kept here would keep what it holds alive
# after the user dropped it, and other
# callables could run code of theirs when asked for a name.  Dropped when a
# call ends (forget_delayed), so a function its module lets go of (del,
# reload) is not kept past the next call either.
cdef object _last_delayed = None
cdef frozenset _PLAIN_FUNCTIONS = frozenset({
    "function", "builtin_function_or_method", "cython_function_or_method",
    "fused_cython_function"})


cdef bint _held_by_its_module(object func):
    cdef object name, module
    if type(func).__name__ not in _PLAIN_FUNCTIONS:
        return False
    try:
        name = func.__qualname__
        if type(name) is not str or "." in <str>name:
            return False  # nested (a closure, a method) or no name
        module = sys.modules.get(func.__module__)
        # The module's namespace itself: no module __getattr__ runs.
        return module is not None and \
            getattr(module, "__dict__", {}).get(name) is func
    except Exception:
        return False


def forget_delayed():
    """Drop the wrapper delayed() keeps for reuse (at the end of a call)."""
    global _last_delayed
    _last_delayed = None


def delayed(func):
    """Capture the arguments of a call to ``func`` for ``Parallel``.

    ``delayed(f)(*args, **kwargs)`` returns the task ``(f, args, kwargs)``.
    Usable as a decorator too.
    """
    global _last_delayed
    cdef object last = _last_delayed
    if last is not None and (<tuple>last)[0] is func:
        return (<tuple>last)[1]
    wrapper = DelayedCall(func)
    if _held_by_its_module(func):
        _last_delayed = (func, wrapper)
    return wrapper


# Tasks in one batch at most (a batch's tasks are numbered in 32 bits where
# threads take them, see jf_claim_t).
cdef Py_ssize_t MAX_BATCH = 1 << 30


@cython.final
cdef class Batch:
    """Consecutive tasks ``start .. start+len(tasks)-1`` of one call."""

    def __init__(self, Call call, int64_t batch_id, Py_ssize_t start,
                 list tasks):
        self.call = call
        self.id = batch_id
        self.start = start
        self.tasks = tasks
        self.results = None
        self.error = None
        self.task_started = 0.0
        self.parts = 0
        self.failed = 0
        self.ran = 0
        self.pieces = None

    cdef int run(self) except -1:
        """Run the tasks in the current thread (the one that took the
        batch), but those another thread takes meanwhile; the last piece
        to end reports the batch to the call."""
        cdef Call call = self.call
        cdef Py_ssize_t n
        cdef bint linked = False
        if self.begun:
            # Another thread began it: the caller, while the thread that
            # took it from the queue waited for the GIL, or that thread
            # while the caller, having found it unstarted, was on its way
            # (Call._unstarted_taken).
            return 0
        self.begun = True
        n = len(self.tasks)
        self.parts = 1
        jf_claim_init(&self.claim, 0, n, &self.parts, <void *>self)
        if call.aborted:
            return call._end_piece(self, 0, 0.0, 0.0, None, -1)
        self.results = [None] * n
        if call.thread_pool:
            # Idle threads may take the tasks not started yet, should one
            # of them wait for another (Lease.claim_add).
            (<ThreadPool>call.pool).claim_add(&self.claim)
            linked = True
        return self.run_piece(&self.claim, &self.task_started, linked)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int run_piece(self, jf_claim_t *claim, double *started,
                       bint linked) except -1:
        """Run the tasks of `claim` one at a time, in this thread."""
        cdef Call call = self.call
        cdef list tasks = self.tasks
        cdef list results = self.results
        cdef Py_ssize_t i = -1, ran = 0
        cdef tuple t
        cdef object error = None
        cdef Py_ssize_t error_index = -1
        cdef int track = call.track_start
        cdef double t0, t1, cpu0 = 0.0
        cdef CallerHelp helper = call.helper
        # The caller looks at its choice between the team and alone within
        # its batches too (choose_team), when one may be due.
        cdef bint chooses = helper.helping and \
            PyThread_get_thread_ident() == call.caller_thread
        if helper.may_help:
            cpu0 = jf_thread_cpu_now()
        t0 = jf_clock_now()
        # One try around the loop, and the task's parts read from the tuple
        # (held by `t`) without taking references.
        try:
            while not call.aborted and not self.failed:
                i = jf_claim_next(claim)
                if i < 0:
                    break
                t = <tuple>tasks[i]
                if track:
                    started[0] = jf_clock_now()
                results[i] = _call(_item_of(<PyObject *>t, 0),
                                   _item_of(<PyObject *>t, 1),
                                   _item_of(<PyObject *>t, 2))
                ran += 1
                if chooses and (ran & CHOOSE_EVERY_MASK) == 0 and \
                        jf_clock_now() >= helper.check_at:
                    helper.choose_team(call)
        except BaseException as exc:
            error = exc
            error_index = self.start + i
            self.failed = 1
        started[0] = 0.0
        t1 = jf_clock_now()
        if helper.may_help:
            cpu0 = jf_thread_cpu_now() - cpu0
        if linked:
            # Before the part ends: no thread takes tasks of it any more.
            (<ThreadPool>call.pool).claim_remove(claim)
        call._end_piece(self, ran, t1 - t0, cpu0, error, error_index)
        log = _record_log
        if log is not None:
            # After the piece is accounted for: this may raise.
            log.append(("piece", t0, t1, ran, PyThread_get_thread_ident()
                        == call.caller_thread))
        return 0

    def run_here(self):
        """Run this batch in the calling thread (used by process workers'
        tests and by backends that execute batches themselves)."""
        self.run()

    def task_list(self):
        return self.tasks


@cython.final
cdef class Piece:
    """Tasks of a :class:`Batch` that another thread took from the thread
    running it (see Call._run_stolen)."""

    def __cinit__(self, Batch batch):
        self.batch = batch
        self.task_started = 0.0


cdef class Call:
    """The state of one ``Parallel.__call__``; driven by the caller thread.

    ``pool`` runs batches: a :class:`ThreadPool`, or any object with
    ``submit(batch)`` and ``wait(call, seconds)`` (the process backend),
    whose ``wait`` delivers finished batches with :meth:`complete`.
    """

    def __cinit__(self):
        jf_mutex_init(&self.lock)
        jf_cond_init(&self.progress)
        jf_order_init(&self.order)

    def __dealloc__(self):
        jf_order_free(&self.order)
        jf_cond_destroy(&self.progress)
        jf_mutex_destroy(&self.lock)

    def __init__(self, pool, iterable, *, Py_ssize_t pre_dispatch,
                 Py_ssize_t batch_size=0, double target_duration=0.002,
                 timeout=None, on_result=None, Py_ssize_t n_workers=0,
                 Py_ssize_t total=-1, bint stop_on_error=True,
                 on_batch=None):
        if pre_dispatch < 1:
            raise ValueError("pre_dispatch must be at least 1")
        self.sizer = BatchSizer(batch_size, target_duration, n_workers)
        self.caller_thread = PyThread_get_thread_ident()
        self.pool = pool
        self.thread_pool = isinstance(pool, ThreadPool)
        self.iterator = iter(iterable)
        self.ahead = []
        self.batches = []
        self.pre_dispatch = pre_dispatch
        self.timeout = float(timeout) if timeout is not None else 0.0
        self.track_start = 1 if self.timeout > 0.0 else 0
        self.on_result = on_result
        # Told how many tasks ended, once per handful of batches (a progress
        # bar): unlike on_result, it does not wake the caller per batch.
        self.on_batch = on_batch
        self.error_index = -1
        self.n_workers = n_workers
        self.total = total
        self.stop_on_error = stop_on_error
        # The caller may run batches itself (a threading call with at least
        # two workers, no timeout to watch, no per-thread initializer) while
        # it waits for a list of results (run_list).
        self.helper = CallerHelp(
            self.thread_pool and stop_on_error and self.timeout == 0.0
            and (<ThreadPool>pool).n_threads >= 2
            and (<ThreadPool>pool).caller_config is not None)
        if self.helper.may_help:
            self.helper.rescues_before = (<ThreadPool>pool).rescues()

    # ----------------------------------------------------------- workers

    cdef int _finish_batch(self, Batch batch, object results, double duration,
                           double cpu, object error,
                           Py_ssize_t error_index) except -1:
        """Record a batch run elsewhere (a process): its results, or its
        error.  Any thread, GIL held."""
        cdef int rc
        batch.results = results
        batch.tasks = None
        if not self.stop_on_error:
            batch.error = error
        jf_mutex_lock(&self.lock)
        if error is not None and self.error is None and self.stop_on_error:
            self.error = error
            self.error_index = error_index
            self.aborted = 1
        if results is not None:
            self.busy_time += duration
            self.busy_tasks += len(results)
            self.helper.team_time += duration
            self.helper.team_cpu += cpu
            self.helper.team_batches += 1
        rc = self._mark_done(batch)
        jf_mutex_unlock(&self.lock)
        if rc:
            raise SystemError(f"batch {batch.id} finished twice")
        return 0

    cdef int _end_piece(self, Batch batch, Py_ssize_t ran, double duration,
                        double cpu, object error,
                        Py_ssize_t error_index) except -1:
        """A piece of `batch` run in this process ended after `ran` tasks
        (`error`: the exception of the task after them).  The last piece
        records the batch: its results when every task ran.  Any thread,
        GIL held.  `cpu`: the seconds of `duration` the thread was on a
        CPU (measured when the caller may run batches, see CallerHelp)."""
        cdef int rc = 0
        jf_mutex_lock(&self.lock)
        if error is not None:
            if not self.stop_on_error:
                if batch.error is None:
                    batch.error = error
            elif self.error is None:
                self.error = error
                self.error_index = error_index
                self.aborted = 1
        if ran:
            self.busy_time += duration
            self.busy_tasks += ran
            self.helper.team_time += duration
            self.helper.team_cpu += cpu
            self.helper.team_batches += 1
            if PyThread_get_thread_ident() == self.caller_thread:
                self.caller_tasks += ran
        batch.ran += ran
        if jf_parts_add(&batch.parts, -1) == 0:
            if batch.failed or batch.ran != len(batch.tasks):
                batch.results = None
            batch.tasks = None
            batch.pieces = None
            rc = self._mark_done(batch)
        jf_mutex_unlock(&self.lock)
        if rc:
            raise SystemError(f"batch {batch.id} finished twice")
        return 0

    cdef int _feed_for_caller(self) except -1:
        """Feed the pool in the caller's place while it runs a task that
        waits, as every running task does (a pool thread's rescue, see
        ThreadPool.feed): the task may wait for tasks the input has not
        yielded yet, which the caller alone would never pull.  The only
        time the input is pulled by another thread than the caller."""
        jf_mutex_lock(&self.lock)
        if not self.caller_in_task or self.worker_feeding:
            jf_mutex_unlock(&self.lock)
            return 0
        self.worker_feeding = 1
        jf_mutex_unlock(&self.lock)
        before = self.order.n_batches
        try:
            self._feed()
        except BaseException as exc:
            # The input raised (or yielded a non-task): the caller raises it.
            self.abort(exc)
        finally:
            jf_mutex_lock(&self.lock)
            self.worker_feeding = 0
            rearm = self.caller_in_task and not self.exhausted and \
                self.order.n_batches != before
            jf_cond_broadcast(&self.progress)
            jf_mutex_unlock(&self.lock)
        if rearm:
            # Fed some while everything waited: look again at the next
            # rescue (none fed: in-flight batches are at pre_dispatch, and
            # the next batch to end feeds).
            (<ThreadPool>self.pool).want_feed(True)
        return 0

    cdef Batch _unstarted_taken(self):
        """A batch a pool thread took from the queue and has not begun to
        run, or None (caller thread, GIL held, between its batches).

        A pool thread takes a batch without the GIL and then waits for it.
        A thread that holds the GIL and lets go of it only briefly, as the
        caller running tasks that hold it does (once per batch), can keep
        that waiter out for many switch intervals: each brief release
        restarts the waiter's wait for a forced switch.  Until the batch
        begins its tasks are nobody's to take (no piece is linked yet), so
        the caller would finish the call's other batches and then wait for
        that one to run on its own; it runs it itself instead (the waiter
        then finds it begun and leaves it)."""
        cdef int64_t b, end
        cdef object batch
        # The queue holds the newest batches submitted (pushed in order,
        # taken oldest first; no thread feeds while the caller is here,
        # see _run_taken): the ones before them were taken.  A pool thread
        # taking one meanwhile only makes this miss it.  Tasks a pool
        # thread took from a running piece (jf_queue_steal) are not seen
        # here: they are not a batch of their own.
        end = self.order.n_batches - (<ThreadPool>self.pool).queued()
        for b in range(self.order.prefix, end):
            if not self.order.done[b]:
                batch = self.batches[b]
                if batch is not None and not (<Batch>batch).begun:
                    return <Batch>batch
        return None

    cdef int _run_taken(self, object item, bint stolen, Py_ssize_t a,
                        Py_ssize_t b) except -1:
        """The caller runs a batch it took, or tasks it took from one
        (`stolen`: [a, b)); workers feed the pool meanwhile."""
        cdef ThreadPool pool = <ThreadPool>self.pool
        jf_mutex_lock(&self.lock)
        self.caller_in_task = 1
        jf_mutex_unlock(&self.lock)
        if not self.exhausted:
            pool.feeding_call = self
            pool.want_feed(True)
        try:
            if stolen:
                self._run_stolen(<Batch>item, a, b, True)
            else:
                (<Batch>item).run()
        finally:
            pool.want_feed(False)
            pool.feeding_call = None
            with nogil:
                # Back to feeding: after any worker that feeds now.
                jf_mutex_lock(&self.lock)
                self.caller_in_task = 0
                while self.worker_feeding:
                    jf_cond_wait(&self.progress, &self.lock)
                jf_mutex_unlock(&self.lock)
        return 0

    cdef int _mark_done(self, Batch batch) except -1:
        """`batch` is done (self.lock held): nonzero if it was already."""
        cdef int rc = jf_order_mark_done(&self.order, batch.id)
        # Wake the caller only when it has something to do: each wake-up
        # costs a context switch on a core the workers need.
        if self.order.n_done >= self.wake_at or self.aborted:
            jf_cond_broadcast(&self.progress)
        return rc

    cdef int _run_stolen(self, Batch batch, Py_ssize_t a, Py_ssize_t b,
                         bint taken) except -1:
        """Run tasks [a, b) of `batch`, which this thread took from the
        thread running it (a pool thread, or the caller when `taken`); one
        part of the batch is already counted for them."""
        cdef Piece piece = Piece(batch)
        jf_claim_init(&piece.claim, a, b, &batch.parts, <void *>batch)
        jf_mutex_lock(&self.lock)
        try:
            if batch.pieces is None:
                batch.pieces = [piece]
            else:
                batch.pieces.append(piece)
        finally:
            jf_mutex_unlock(&self.lock)
        (<ThreadPool>self.pool).claim_add(&piece.claim)
        return batch.run_piece(&piece.claim, &piece.task_started, True)

    def complete(self, Batch batch, results, double duration=0.0,
                 error=None, Py_ssize_t error_index=-1):
        """Deliver a batch run elsewhere (a process): results or error."""
        self._finish_batch(batch, results, duration, duration, error,
                           error_index)

    def close_input(self):
        """The call has ended early (the caller's thread, after abort): the
        user's input and the tasks pulled ahead of the batches are let go
        now, not when the threads have skipped the queued batches."""
        self._close_input()

    cdef int _close_input(self) except -1:
        with nogil:
            # After a pool thread feeding in the caller's place (only while
            # the caller runs a task: not any more once it ends the call).
            jf_mutex_lock(&self.lock)
            while self.worker_feeding:
                jf_cond_wait(&self.progress, &self.lock)
            jf_mutex_unlock(&self.lock)
        self.iterator = None
        self.ahead = []
        self.exhausted = True
        return 0

    def abort(self, error=None):
        """Stop starting tasks of this call; optionally record `error`."""
        jf_mutex_lock(&self.lock)
        self.aborted = 1
        if error is not None and self.error is None:
            self.error = error
        jf_cond_broadcast(&self.progress)
        jf_mutex_unlock(&self.lock)

    # ------------------------------------------------------------ caller

    @property
    def aborted(self):
        return bool(self.aborted)

    @property
    def timeout_seconds(self):
        return self.timeout

    @property
    def n_batches(self):
        return self.order.n_batches

    @property
    def n_done(self):
        return self.order.n_done

    @property
    def batch_size(self):
        """The size the next auto batch would have (for tests, verbose)."""
        return self.sizer.size

    @property
    def alone_stretches(self):
        """Times the caller chose to run every batch itself
        (CallerHelp.choose_team)."""
        return self.helper.alone_stretches

    @property
    def alone_trials(self):
        """Times the caller ran alone to compare with the team
        (CallerHelp.choose_team), kept or not."""
        return self.helper.alone_trials

    cdef Py_ssize_t _auto_size(self):
        cdef double per_task = -1.0
        jf_mutex_lock(&self.lock)
        if self.busy_tasks > 0:
            per_task = self.busy_time / self.busy_tasks
        jf_mutex_unlock(&self.lock)
        return self.sizer.auto_size(per_task, self.total, self.n_tasks)

    def pending_batches(self):
        """Batches submitted and not finished, oldest first."""
        cdef int64_t b, n = 0, first, end
        cdef int64_t *ids
        jf_mutex_lock(&self.lock)
        first = self.order.prefix
        end = self.order.n_batches
        ids = <int64_t *>malloc((end - first + 1) * sizeof(int64_t))
        if ids != NULL:
            for b in range(first, end):
                if not self.order.done[b]:
                    ids[n] = b
                    n += 1
        jf_mutex_unlock(&self.lock)
        if ids == NULL:
            raise MemoryError()
        # Python objects are built after the lock is released.
        try:
            return [self.batches[ids[b]] for b in range(n)]
        finally:
            free(ids)

    cdef Batch _make_batch(self):
        """Pull the next batch from the user's iterator (caller thread).

        Auto batches look one batch ahead: the next batch's tasks are
        pulled with this one, so the end of an input of unknown length is
        seen a batch early and the last batches shrink (_auto_size's tail
        rule) instead of one worker finishing a full batch alone."""
        cdef Py_ssize_t size, want, k
        cdef list tasks, ahead = self.ahead
        cdef object item
        if self.sizer.fixed:
            size = want = self.sizer.fixed
        else:
            size = self._auto_size()
            want = 2 * size
        k = len(ahead)
        while k < want and self.iterator is not None:
            item = next(self.iterator, _NO_ITEM)
            if item is _NO_ITEM:
                self.iterator = None
                if self.total < 0:
                    self.total = self.n_tasks + k
                    if not self.sizer.fixed:
                        size = self._auto_size()
                break
            ahead.append(_check_task(item, self.n_tasks + k))
            k += 1
        if not self.sizer.fixed:
            self.sizer.size = size
        if k <= size:
            tasks, self.ahead = ahead, []
        else:
            tasks = ahead[:size]
            del ahead[:size]
        if self.iterator is None and not self.ahead:
            self.exhausted = True
        if not tasks:
            return None
        return self._add_batch(tasks)

    cdef Batch _add_batch(self, list tasks):
        """Register the next batch of the call (caller thread)."""
        cdef int64_t batch_id
        cdef Batch batch
        cdef int rc
        jf_mutex_lock(&self.lock)
        rc = jf_order_add(&self.order, &batch_id)
        jf_mutex_unlock(&self.lock)
        if rc:
            raise MemoryError()
        batch = Batch(self, batch_id, self.n_tasks, tasks)
        self.n_tasks += len(tasks)
        self.batches.append(batch)
        return batch

    cdef int _submit(self, Batch batch) except -1:
        if self.thread_pool:
            (<ThreadPool>self.pool).submit(batch)
        else:
            self.pool.submit(batch)
        return 0

    cdef int _feed(self) except -1:
        """Submit batches until pre_dispatch are in flight or input ends."""
        cdef Batch batch
        cdef int64_t in_flight
        while not self.exhausted and not self.aborted:
            jf_mutex_lock(&self.lock)
            in_flight = self.order.n_batches - self.order.n_done
            jf_mutex_unlock(&self.lock)
            if in_flight >= self.pre_dispatch:
                break
            try:
                batch = self._make_batch()
            except BaseException:
                # The iterator raised, or an item is not a task: nothing
                # more may start; the caller re-raises.
                self.exhausted = True
                self.iterator = None
                self.ahead = []
                raise
            if batch is None:
                break
            self._submit(batch)
        return 0

    cdef int _check_error(self) except -1:
        cdef object error
        jf_mutex_lock(&self.lock)
        error = self.error
        jf_mutex_unlock(&self.lock)
        if error is not None:
            raise error
        return 0

    def _check_timeout(self):
        cdef list pieces
        now = jf_clock_now()
        for batch in self.pending_batches():
            started = (<Batch>batch).task_started
            jf_mutex_lock(&self.lock)
            pieces = list((<Batch>batch).pieces or ())
            jf_mutex_unlock(&self.lock)
            for piece in pieces:
                # A stolen piece's task counts as its batch's: the oldest.
                other = (<Piece>piece).task_started
                if other > 0.0 and (started == 0.0 or other < started):
                    started = other
            if started > 0.0 and now - started > self.timeout:
                raise ParallelTimeoutError(
                    f"a task of Parallel ran longer than timeout="
                    f"{self.timeout:g} s (tasks {batch.start}.."
                    f"{batch.start + len(batch.tasks or ()) - 1} "
                    "in that batch)")
        error = self.pool.check_timeout(self, now)
        if error is not None:
            raise error

    cdef bint _sleep_until(self, int64_t target, double deadline):
        """Sleep, GIL released, until `target` batches are done, the call
        aborts or `deadline` passes.  True when a batch finished beyond the
        handled ones, or the call aborted."""
        cdef int64_t seen = self.seen_done
        cdef bint got
        with nogil:
            jf_mutex_lock(&self.lock)
            self.wake_at = target
            while self.order.n_done < target and not self.aborted:
                if jf_cond_wait_until(&self.progress, &self.lock,
                                      deadline) == JF_TIMEDOUT:
                    break
            self.wake_at = 0
            got = self.order.n_done != seen or self.aborted
            jf_mutex_unlock(&self.lock)
        return got

    cdef int _wait(self, int64_t need) except -1:
        """Sleep until `need` batches finish beyond the handled ones (or one
        does, when the wait is sliced for Ctrl-C), or the call aborts."""
        cdef int64_t seen = self.seen_done
        cdef int64_t target
        cdef bint got = False
        cdef CallerHelp helper = self.helper
        if helper.helping:
            need = 1  # the caller runs the next batch as soon as it can
        target = seen + (need if need > 0 else 1)
        while True:
            if helper.in_list and helper.run(self):
                got = True
            elif self.thread_pool:
                # While it runs batches, the caller looks for stalled
                # pieces as often as an idle pool thread does.
                got = self._sleep_until(
                    target, jf_clock_now() + (
                        0.5 * JF_STEAL_AFTER
                        if helper.helping and helper.spare_pieces
                        else SIGNAL_POLL_SECONDS))
                if not got:
                    # Maybe every thread of the call waits in a task, with
                    # the tasks they wait for queued behind one of them.
                    (<ThreadPool>self.pool).rescue_if_stuck()
            else:
                self.pool.wait(self, SIGNAL_POLL_SECONDS)
                jf_mutex_lock(&self.lock)
                got = self.order.n_done != seen or self.aborted
                jf_mutex_unlock(&self.lock)
            PyErr_CheckSignals()
            if self.timeout > 0.0:
                # Also when batches keep finishing: a stuck task must not
                # hide behind the progress of the others.
                self._check_timeout()
            if got:
                return 0
            if self.thread_pool and (<ThreadPool>self.pool).alive() == 0:
                raise RuntimeError(
                    "every worker thread of the pool has exited")

    cdef list _newly_done(self):
        """Batch ids finished since the last call, in completion order."""
        cdef int64_t i, end
        cdef list out = []
        jf_mutex_lock(&self.lock)
        end = self.order.n_done
        jf_mutex_unlock(&self.lock)
        # Entries below n_done never change, and only this (the caller)
        # thread reallocates the array: no lock needed to read them, and
        # no Python object is built while the lock is held.
        for i in range(self.seen_done, end):
            out.append(self.order.completed[i])
        self.seen_done = end
        return out

    cdef bint _all_done(self):
        cdef bint done
        jf_mutex_lock(&self.lock)
        done = self.order.n_done == self.order.n_batches
        jf_mutex_unlock(&self.lock)
        return done and self.exhausted

    cdef int _notify(self, list batch_ids) except -1:
        cdef Batch batch
        cdef Py_ssize_t k, n = 0
        if self.on_batch is not None:
            for b in batch_ids:
                batch = <Batch>self.batches[b]
                if batch is not None and batch.results is not None:
                    n += len(batch.results)
            if n:
                self.on_batch(n)
        if self.on_result is None:
            return 0
        for b in batch_ids:
            batch = <Batch>self.batches[b]
            if batch is not None and batch.results is not None:
                for k, value in enumerate(batch.results):
                    self.on_result(batch.start + k, value)
        return 0

    # ------------------------------------------------------ push-style

    def push(self, list tasks):
        """Make one batch of ``tasks`` and submit it to the pool, for a
        caller that hands batches over itself instead of giving an
        iterable (``joblib_backend``: joblib's Parallel decides the
        batches).  Returns the :class:`Batch`; :meth:`take_done` reports
        it once it has finished.  Any thread, one at a time.  Each task is
        checked as a pulled one is (TaskError when it is not one)."""
        cdef Py_ssize_t k
        cdef Batch batch
        if len(tasks) > MAX_BATCH:
            raise ValueError(
                f"a batch holds at most {MAX_BATCH} tasks, got {len(tasks)}")
        tasks = [_check_task(tasks[k], self.n_tasks + k)
                 for k in range(len(tasks))]
        batch = self._add_batch(tasks)
        self._submit(batch)
        return batch

    def take_done(self):
        """The pushed batches finished since the last call, in completion
        order, as ``(batch, results, error)``: ``results`` is None when the
        batch did not run to the end, and ``error`` is then its error (with
        ``stop_on_error``: the first error of the call), or None when the
        call was aborted before the batch ran.  The batches are released.
        One thread at a time."""
        cdef list out = []
        cdef Batch batch
        cdef object error
        for b in self._newly_done():
            batch = <Batch>self.batches[b]
            self.batches[b] = None
            results, batch.results = batch.results, None
            error, batch.error = batch.error, None
            if results is None and error is None:
                jf_mutex_lock(&self.lock)
                error = self.error
                jf_mutex_unlock(&self.lock)
            out.append((batch, results, error))
        return out

    def start(self):
        """Dispatch the first batches (before the user asks for results)."""
        self._feed()

    def _step(self, bint all_at_end=False):
        """Feed, wait for progress, check errors.

        Returns ``(ids, finished)``: the batches finished since the last
        step in completion order, and whether every task is done.  With
        `all_at_end` (results wanted only at the end) the caller sleeps
        until half the pre-dispatched batches are done, or all of them
        once the input is exhausted, rather than waking per batch."""
        cdef int64_t in_flight, need = 1
        self._check_error()
        if self.aborted:
            raise RuntimeError("this Parallel call was aborted")
        self._feed()
        finished = self._all_done()
        if not finished:
            if all_at_end and self.on_result is None:
                jf_mutex_lock(&self.lock)
                in_flight = self.order.n_batches - self.order.n_done
                jf_mutex_unlock(&self.lock)
                if self.exhausted:
                    need = in_flight
                else:
                    need = in_flight - self.pre_dispatch // 2
            self._wait(need)
            self._check_error()
        done = self._newly_done()
        self._notify(done)
        return done, finished

    def run_list(self):
        """Run every task; return the results in input order."""
        cdef list out
        cdef Batch batch
        # Only here may the caller run batches: in a generator, the user's
        # code runs in this thread between results, and a task run here
        # that waited for that code would never return.
        self.helper.in_list = self.helper.may_help
        try:
            while not self._step(True)[1]:
                pass
        except BaseException:
            self.abort()
            raise
        finally:
            self.helper.stop(self)
        out = []
        for batch in self.batches:
            out.extend(batch.results)
            batch.results = None
        self.batches = []
        return out

    def iter_ordered(self):
        """Yield results in input order as the finished prefix grows."""
        cdef Batch batch
        cdef int64_t prefix
        cdef bint finished = False
        try:
            while True:
                jf_mutex_lock(&self.lock)
                prefix = self.order.prefix
                jf_mutex_unlock(&self.lock)
                # Report every batch finished so far before any is released
                # (released batches are dropped): `prefix` was read first,
                # so all its batches are among those reported here.
                self._notify(self._newly_done())
                while self.released < prefix:
                    self._check_error()
                    batch = <Batch>self.batches[self.released]
                    self.batches[self.released] = None
                    self.released += 1
                    results = batch.results
                    batch.results = None
                    for value in results:
                        yield value
                    # Keep workers fed while the user consumes.
                    self._feed()
                if finished:
                    break
                finished = self._step()[1]
        except BaseException:
            self.abort()
            raise

    def iter_unordered(self):
        """Yield results in the order tasks finish."""
        cdef Batch batch
        cdef bint finished = False
        try:
            while not finished:
                done, finished = self._step()
                for b in done:
                    batch = <Batch>self.batches[b]
                    self.batches[b] = None
                    results = batch.results
                    batch.results = None
                    self._check_error()
                    if results is None:
                        continue
                    for value in results:
                        yield value
                    self._feed()
        except BaseException:
            self.abort()
            raise


# ------------------------------------------------------------- policies


@cython.final
cdef class BatchSizer:
    """How many tasks a call's next batch gets: ``batch_size`` when fixed;
    automatic batches last about ``target`` seconds at the measured cost
    of a task, grow at most twofold per batch (one fast first task cannot
    make one huge batch), and shrink near the end of an input of known
    length (no worker idles while another finishes a long last batch)."""

    def __init__(self, Py_ssize_t fixed, double target, Py_ssize_t n_workers):
        if fixed < 0:
            raise ValueError("batch_size must be positive or 0 for auto")
        self.fixed = min(fixed, MAX_BATCH)
        self.size = self.fixed if self.fixed else 1
        self.target = target
        self.n_workers = n_workers

    cdef Py_ssize_t auto_size(self, double per_task, Py_ssize_t total,
                              Py_ssize_t n_tasks):
        """The next automatic batch's size, a task costing `per_task`
        seconds (< 0: not measured yet), `n_tasks` of `total` (< 0:
        unknown) in batches so far."""
        cdef Py_ssize_t ideal, tail, size = self.size
        if per_task < 0.0:
            return size
        if per_task * MAX_AUTO_BATCH <= self.target:
            ideal = MAX_AUTO_BATCH
        else:
            ideal = <Py_ssize_t>(self.target / per_task)
        if ideal > 2 * size:
            ideal = 2 * size
        if total >= 0 and self.n_workers > 0:
            # Known input length: near the end, smaller batches so that no
            # worker idles while another finishes a long last batch.
            tail = (total - n_tasks) // (2 * self.n_workers)
            if ideal > tail:
                ideal = tail
        if ideal < 1:
            ideal = 1
        return ideal


@cython.final
cdef class CallerHelp:
    """The caller of a threading call running batches itself while it waits
    for a list of results (run): as one of a team of n_jobs threads, or
    alone when the team turns out slower than one thread (choose_team).
    Driven by the caller; the window of the team's batches is written by
    the threads that run them."""

    def __init__(self, bint may_help):
        self.may_help = may_help
        self.rate_team = -1.0
        self.rate_team_before = -1.0
        self.rate_alone = -1.0
        self.alone_lost = -1.0
        self.window_time = -1.0

    cdef bint short_tasks(self, Call call):
        cdef bint short
        jf_mutex_lock(&call.lock)
        short = (call.busy_tasks > 0 and call.busy_time
                 <= HELP_MAX_TASK_SECONDS * call.busy_tasks)
        jf_mutex_unlock(&call.lock)
        return short

    cdef int run(self, Call call) except -1:
        """Run a batch, or tasks of one, in the caller; 1 when it took
        some (the oldest queued batch, else see below).

        The caller would otherwise sleep while the workers run: with n_jobs
        threads and the caller, n_jobs + 1 threads take turns on n_jobs
        cores, and the caller's wake-ups preempt a worker.  While it helps,
        n_jobs - 1 pool threads run batches and the caller is the last
        worker, as an OpenMP master thread is.  Only while the measured
        tasks are short (HELP_MAX_TASK_SECONDS): between its batches the
        caller pulls the input (and a KeyboardInterrupt from Ctrl-C is
        raised in whatever it runs: between tasks, or inside a task made of
        bytecode)."""
        cdef ThreadPool pool = <ThreadPool>call.pool
        cdef object item
        cdef Py_ssize_t a = 0, b = 0
        cdef int spare = 0
        cdef bint stolen = False
        cdef bint unstarted = False
        cdef bint looked = False         # for a batch not begun, alone
        if self.short_tasks(call) != self.helping:
            self.helping = not self.helping
            self.alone = self.trial = False
            self.window_time = -1.0
            self.new_window(call)
            pool.set_limit(pool.n_threads - 1 if self.helping
                           else pool.n_threads)
        if not self.helping:
            return 0
        self.choose_team(call)
        item = None
        if self.alone and pool.active() > 0:
            # Alone, the pool threads' unstarted tasks are the caller's:
            # a pool thread stops after its current task, not a batch
            # later (a trial's window starts once none has tasks left).
            item = pool.take_stolen(pool.n_threads, &a, &b, &spare, True)
            stolen = item is not None
            if item is None:
                item = call._unstarted_taken()
                unstarted = item is not None
                looked = True
                # No task left for the pool threads to start (those
                # taking the GIL for a batch the caller took skip it).
                self.pool_drained = item is None and not spare
        if item is None:
            # At most n_jobs at once: pool threads that took batches
            # before the limit went down finish them first.
            item = pool.take_item(pool.n_threads)
        if item is None:
            # Nothing queued: the unstarted tasks of a batch whose thread
            # waits (for a task behind it, maybe) are the caller's to run.
            item = pool.take_stolen(pool.n_threads, &a, &b, &spare)
            self.spare_pieces = spare
            stolen = item is not None
        if item is None and not looked:
            # Or a batch whose thread has not begun it.
            item = call._unstarted_taken()
            unstarted = item is not None
        if item is None:
            return 0
        try:
            config = swap_config(pool.caller_config)
            token = enter_as_worker()
            try:
                call._run_taken(item, stolen, a, b)
            finally:
                leave_as_worker(token)
                restore_config(config)
        finally:
            if not unstarted:
                # Counted by the queue as the pool thread's, which took it.
                pool.taken_done()
        return 1

    cdef int64_t progress(self, Call call):
        """Tasks of the call started or done so far (the running pieces'
        started tasks counted: finer than whole batches)."""
        cdef int64_t done
        jf_mutex_lock(&call.lock)
        done = call.busy_tasks
        jf_mutex_unlock(&call.lock)
        return done + (<ThreadPool>call.pool).started()

    cdef int new_window(self, Call call) except -1:
        jf_mutex_lock(&call.lock)
        self.team_time = 0.0
        self.team_cpu = 0.0
        self.team_batches = 0
        jf_mutex_unlock(&call.lock)
        return 0

    cdef int set_alone(self, Call call, bint alone) except -1:
        """The caller runs every batch from now on (the pool threads finish
        the ones they have), or the team of n_jobs threads again."""
        cdef ThreadPool pool = <ThreadPool>call.pool
        self.alone = alone
        self.pool_drained = False
        self.window_time = -1.0
        self.new_window(call)
        pool.set_limit(0 if alone else pool.n_threads - 1)
        if not alone and self.rate_alone > 0.0:
            # The team measured again against a known rate alone: from
            # the switch on, from the tasks' progress (no batch need end).
            self.window_time = jf_clock_now()
            self.window_tasks = self.progress(call)
        if not alone and not call.sizer.fixed:
            # A batch sized at one thread's speed lasts longer in a team
            # that turns out slower, and the team's first window waits
            # for a batch to end: shorter ones (they grow back twofold
            # per batch) keep it near a batch's target duration.
            call.sizer.size = max(1, call.sizer.size // 4)
        return 0

    cdef int choose_team(self, Call call) except -1:
        """choose_team_now, then when the caller looks again (its next
        batch, or within a batch at check_at)."""
        self.choose_team_now(call)
        if self.alone_barred:
            self.check_at = INFINITY
        elif self.window_time < 0.0:
            self.check_at = 0.0     # a window to start: as soon as may be
        else:
            self.check_at = self.window_time + self.window_length(call)
        return 0

    cdef double window_length(self, Call call):
        """Seconds a window of the current mode lasts at least."""
        return call.sizer.target * (
            ALONE_WINDOW_SHARE if self.alone else 1.0)

    cdef int choose_team_now(self, Call call) except -1:
        """Whether the caller runs batches with n_jobs - 1 pool threads
        (the team) or alone, from the tasks per second of each.

        Tasks that release the GIL for a long enough share of their time
        run n_jobs at once.  Tasks that hold it run one at a time, and
        those releasing it for a few microseconds at a time (a thin Python
        function around a short GIL-free kernel) hand the GIL over between
        threads so often that the hand-overs cost more than the threads
        gain: the team is then slower than one thread.  Windows measure
        each: alone, half a batch's target duration from when no pool
        thread has a task left to start (the caller takes their unstarted
        tasks, and batches they took and have not begun, see run: each
        finishes at most the task it runs); the team, one batch duration
        from when a batch has ended since the switch, or, measured again
        against a rate alone, from the switch, by the tasks started.  A
        trial alone is kept when it does more tasks per second than the
        team did in either of its last two windows, by ALONE_MARGIN (one
        window can catch the machine busy elsewhere, or the team's first
        batches, and a wrong choice alone lasts as long as the call has
        run); no trial before the team has two.  The caller comes here between its
        batches and, from check_at on, every CHOOSE_EVERY_MASK + 1 tasks
        within them (Batch.run_piece).

        Alone is tried only when the team's CPU seconds / wall seconds
        over a window (how many threads ran at once, on average) is in
        [TEAM_MIN_BUSY, ALONE_TRY_BELOW * n_jobs): tasks that wait for
        I/O, a sleep or each other read near 0 and keep the team; GIL-free
        kernels of 10 us and more read about n_jobs and are not slowed by
        a trial.  Once alone has lost to the team in a call, it is tried
        again only when the team does fewer tasks per second than alone
        did then: short GIL-free kernels read well under n_jobs threads
        at once while the team still does far more than one thread, and
        each trial costs a window at one thread's speed.  A choice holds
        for as long as the call has run so far, then is measured again (a
        call whose tasks change speeds up within it).
        Never alone again once a rescue thread ran (tasks waiting for
        tasks that a thread alone may not reach)."""
        cdef ThreadPool pool = <ThreadPool>call.pool
        cdef double wall, cpu, running, rate, now
        cdef int64_t batches, progress
        cdef int n = pool.n_threads
        if not self.alone_barred and pool.rescues() > self.rescues_before:
            self.alone_barred = True
            if self.alone:
                self.trial = False
                self.set_alone(call, False)
        if self.alone_barred:
            return 0
        jf_mutex_lock(&call.lock)
        wall = self.team_time
        cpu = self.team_cpu
        batches = self.team_batches
        jf_mutex_unlock(&call.lock)
        now = jf_clock_now()
        if self.started == 0.0:
            self.started = now
            self.next_trial = now + TRIAL_AFTER_BATCHES * call.sizer.target
        if self.window_time < 0.0:
            # A window of either starts once the switch is behind it:
            # alone, when no pool thread has a task left to start; the team,
            # once a batch has ended since (the pool threads woken by then;
            # read with the counts above, not under the pool's lock: the
            # caller comes here on every wake-up while it waits).
            if (self.alone and (pool.active() == 0 or self.pool_drained)) or \
                    (not self.alone and batches > 0):
                self.window_time = now
                self.window_tasks = self.progress(call)
                self.new_window(call)
                _record_choice(now, "window starts", 0.0, 0.0)
            return 0
        if now - self.window_time < self.window_length(call):
            return 0
        if not self.alone and self.rate_alone <= 0.0 and \
                batches < TEAM_WINDOW_BATCHES * n:
            # The first measure of the team also reads how many threads
            # ran at once, known as batches end; a measure against a rate
            # alone needs only the tasks' progress.
            return 0
        progress = self.progress(call)
        rate = (progress - self.window_tasks) / (now - self.window_time)
        # Threads on a CPU at once, on average (the batches that straddle
        # the window's ends aside).
        running = cpu / (now - self.window_time)
        self.window_time = now
        self.window_tasks = progress
        if self.alone:
            if self.trial:
                self.trial = False
                if rate > ALONE_MARGIN * max(self.rate_team,
                                             self.rate_team_before):
                    self.rate_alone = rate
                    self.mode_until = 2 * now - self.started
                    self.alone_stretches += 1
                    _record_choice(now, "trial kept", rate, running)
                else:
                    self.set_alone(call, False)
                    self.next_trial = 2 * now - self.started
                    self.alone_lost = rate
                    _record_choice(now, "trial lost", rate, running)
            elif now >= self.mode_until:
                self.rate_alone = rate
                self.set_alone(call, False)     # measure the team again
                _record_choice(now, "stretch ends", rate, running)
            return 0
        self.new_window(call)
        if self.rate_alone > 0.0:
            # Back from a stretch alone: still the quicker?
            self.rate_team_before = self.rate_team
            self.rate_team = rate
            if self.rate_alone > ALONE_MARGIN * rate:
                self.set_alone(call, True)
                self.mode_until = 2 * now - self.started
                self.alone_stretches += 1
                _record_choice(now, "alone again", rate, running)
                return 0
            self.alone_lost = self.rate_alone
            self.rate_alone = -1.0
            self.next_trial = 2 * now - self.started
            _record_choice(now, "team again", rate, running)
            return 0
        if wall <= 0.0 or cpu <= 0.0 or \
                wall < batches * call.sizer.target * 0.25:
            # Short batches (growing at the start, shrinking at the end):
            # their fixed costs would be taken for lost concurrency.
            return 0
        self.rate_team_before = self.rate_team
        self.rate_team = rate
        if now >= self.next_trial and self.rate_team_before > 0.0 and \
                TEAM_MIN_BUSY <= running < ALONE_TRY_BELOW * n and \
                (self.alone_lost < 0.0 or rate < self.alone_lost):
            self.set_alone(call, True)
            self.trial = True
            self.alone_trials += 1
            _record_choice(now, "trial starts", rate, running)
        else:
            _record_choice(now, "team window", rate, running)
        return 0

    cdef int stop(self, Call call) except -1:
        """The list is complete (or failed): the pool threads' limit back."""
        self.in_list = False
        if self.helping:
            self.helping = self.alone = self.trial = False
            (<ThreadPool>call.pool).set_limit((<ThreadPool>call.pool).n_threads)
        return 0


# --------------------------------------------------------------- threads


@cython.final
cdef class ThreadPool(Lease):
    """The threading backend's pool: :class:`Batch` objects run by worker
    threads (``_threads.WorkerPool``), at most ``n_threads`` at once.

    ``shared=True``: a lease on the process-wide pool that parallel_for
    uses too (the threading backend's pools); ``initializer`` then runs in
    a thread before it runs this pool's first batch.  Otherwise the pool
    has threads of its own named ``name-0``, ``name-1``, ..., which run
    ``initializer`` when they start.

    ``caller_config``: the thread-local configuration tasks run under in
    a worker (``_context.nested_backend_config``); given, a call's caller
    may run batches itself under it (Call._help).  None: it never does
    (the pool's threads run an initializer the caller has not run).
    """

    def __init__(self, int n_threads, str name="joblib_fast-thread",
                 initializer=None, bint shared=False, caller_config=None):
        if n_threads < 1:
            raise ValueError(f"n_threads must be at least 1, got {n_threads}")
        self.n_threads = n_threads
        self.shared = shared
        self.caller_config = caller_config
        if shared:
            self.open(shared_workers(), n_threads, initializer, True)
        else:
            workers = WorkerPool(name, n_threads, initializer)
            try:
                workers.ensure(n_threads)
            except BaseException:
                workers.shutdown(wait=True)
                raise
            self.open(workers, n_threads, None, False)

    @property
    def threads(self):
        """The threads that may run this pool's batches, alive now."""
        return self.workers.threads

    @property
    def n_jobs(self):
        return self.n_threads

    def wait(self, Call call, double seconds):
        """The pool contract's wait: the core waits on a ThreadPool's
        calls itself (``Call._wait``, GIL released), so this only sleeps
        until a batch of ``call`` finishes or ``seconds`` pass."""
        call._sleep_until(call.seen_done + 1, jf_clock_now() + seconds)

    def check_timeout(self, call, double now):
        """Tasks run here are timed by the core itself (Batch.run)."""
        return None

    def end_call(self, error):
        """After a failed call the pool is not reused (a task of the call
        may still run); see abandons_running_tasks for when it is not
        waited for."""
        if error is not None:
            self.shutdown(wait=not abandons_running_tasks(error))

    cdef int submit(self, Batch batch) except -1:
        return self.submit_item(batch)

    cdef int run_item(self, object item) except -1:
        cdef Batch batch = <Batch>item
        try:
            batch.run()
        except BaseException as exc:
            # Only an internal failure gets here; never let the caller
            # wait for a batch that will not finish.
            batch.call.abort(exc)
        return 0

    cdef int feed(self) except -1:
        call = self.feeding_call
        if call is not None:
            (<Call>call)._feed_for_caller()
        return 0

    cdef int run_stolen(self, object item, Py_ssize_t a,
                        Py_ssize_t b) except -1:
        cdef Batch batch = <Batch>item
        try:
            batch.call._run_stolen(batch, a, b, False)
        except BaseException as exc:
            batch.call.abort(exc)
        return 0

    def shutdown(self, wait=True, timeout=None):
        """No more batches; the queued ones still run.  A pool of its own
        stops its threads (joined if `wait`).  True when done."""
        done = self.close(wait, timeout)
        if not self.shared:
            return self.workers.shutdown(wait, timeout)
        return done


# ------------------------------------------------------------ sequential


cdef inline object _run_one(object item, Py_ssize_t i, object on_result):
    """Task `i` of a sequential call, run in the caller."""
    cdef tuple t = <tuple>_check_task(item, i)
    value = PyObject_Call(t[0], t[1], t[2])
    if on_result is not None:
        on_result(i, value)
    return value


def run_sequential(iterable, on_result=None):
    """``n_jobs=1``: run every task in the caller; return the results."""
    cdef list out = []
    cdef Py_ssize_t i = 0
    try:
        for item in iterable:
            out.append(_run_one(item, i, on_result))
            i += 1
    finally:
        forget_delayed()
    return out


def iter_sequential(iterable, on_result=None):
    """``n_jobs=1`` with a generator output: run each task on demand."""
    cdef Py_ssize_t i = 0
    try:
        for item in iterable:
            value = _run_one(item, i, on_result)
            i += 1
            yield value
    finally:
        forget_delayed()


@cython.boundscheck(False)
@cython.wraparound(False)
def split_uniform(list tasks):
    """``(func, [args, ...])`` when every task of a batch calls the same
    function without keyword arguments (what process workers receive, as it
    pickles smaller), else None."""
    cdef Py_ssize_t i, n = len(tasks)
    cdef tuple t
    cdef list args
    if n == 0:
        return None
    func = (<tuple>tasks[0])[0]
    args = [None] * n
    for i in range(n):
        t = <tuple>tasks[i]
        if t[0] is not func or len(<dict>t[2]) != 0:
            return None
        args[i] = t[1]
    return (func, args)
