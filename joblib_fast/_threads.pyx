"""The worker threads, shared by the threading backend and parallel_for.

One process-wide :class:`WorkerPool` (created on first use, shut down at
exit, replaced in a forked child) runs two kinds of job from one list, in C
(``src_c/jf_pool.h``)::

    threading backend call --Lease.submit_item(batch)--> a queue of batches,
        at most n_jobs running at once; a thread takes the GIL to run one
    parallel_for(start, stop, ...) from Cython --> a range; the caller is
        worker 0 and idle threads join it: chunks are taken with an atomic
        compare-and-swap, bodies run without the GIL

A thread that runs a range never touches the GIL unless a body fails with a
Python exception.  The pool keeps ``base`` threads (the CPU cap) and grows
while threading calls reserve more (their n_jobs add up), then shrinks
back: a threading call gets its n_jobs threads (those helping a range join
it once the range has no chunk left), and parallel_for uses the threads
nobody else is using, so the two never oversubscribe.

Nesting: pool threads, and a thread inside parallel_for, have a C
thread-local depth > 0: a parallel_for there runs inline.

The C API for Cython code (``joblib_fast/parallel_for.pxd``) is the table
in the capsule ``parallel_for_api``.
"""

import atexit
import os
import threading
from time import monotonic as _monotonic

cimport cython
from cpython.exc cimport PyErr_Fetch, PyErr_NormalizeException
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_New
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.errno cimport ENOMEM
from libc.stdint cimport uint64_t

from ._cpu import cpu_count


cdef extern from "Python.h":
    # Declared here without exception checks: the nogil paths below call
    # them inside `with gil` and keep what they set for their caller.
    ctypedef struct PyThreadState:
        pass
    PyObject *PyExc_ValueError
    PyObject *PyExc_OverflowError
    PyObject *PyExc_SystemError
    PyThreadState *PyEval_SaveThread() nogil
    void PyEval_RestoreThread(PyThreadState *ts) nogil
    # Called between PyEval_RestoreThread and PyEval_SaveThread (GIL held).
    int _check_signals "PyErr_CheckSignals"() nogil
    PyObject *PyErr_Occurred()
    void PyErr_Clear()
    void PyErr_SetString(PyObject *exc, const char *message)
    void PyErr_Restore(PyObject *t, PyObject *v, PyObject *tb)
    PyObject *PyException_GetTraceback(PyObject *exc)
    int PyException_SetTraceback(PyObject *exc, PyObject *tb)
    PyObject *PyObject_Type(PyObject *o)
    void Py_XDECREF(PyObject *o)
    void PyErr_SetInterrupt()


cdef extern from "jf_platform.h" nogil:
    double jf_clock_now()
    long jf_process_id()
    int64_t jf_int64_load_relaxed(int64_t *p)
    int jf_int64_cas(int64_t *p, int64_t *expected, int64_t desired)
    long long jf_loaded_images()


cdef extern from *:
    """
    /* Whether this thread holds the GIL.  Not PyGILState_Check(): it says
     * 1 for every thread once a subinterpreter has been created. */
    static int jf_holds_gil(void)
    {
    #if PY_VERSION_HEX >= 0x030D0000
        return PyThreadState_GetUnchecked() != NULL;
    #else
        PyThreadState *ts = _PyThreadState_UncheckedGet();
        return ts != NULL && ts->thread_id == PyThread_get_thread_ident();
    #endif
    }
    """
    int jf_holds_gil() nogil


cdef extern from "joblib_fast/parallel_for.h":
    int JF_PFOR_ABI_VERSION
    const char *JF_PFOR_CAPSULE
    ctypedef int (*jf_pfor_body_t)(void *ctx, Py_ssize_t start,
                                   Py_ssize_t stop, int worker) noexcept nogil
    ctypedef struct jf_pfor_api_t:
        int abi_version
        int (*parallel_for)(Py_ssize_t start, Py_ssize_t stop,
                            Py_ssize_t grain, jf_pfor_body_t body, void *ctx,
                            int n_workers) noexcept nogil
        int (*max_workers)(int n_workers) noexcept nogil


PARALLEL_FOR_ABI_VERSION = JF_PFOR_ABI_VERSION

# How long a pool thread that helped with a parallel_for polls for the
# next one before it sleeps, and a parallel_for caller polls for its
# helpers' last chunks: JOBLIB_FAST_SPIN_US microseconds (0: never poll).
SPIN_US_DEFAULT = 1000


def _spin_from_env():
    value = os.environ.get("JOBLIB_FAST_SPIN_US", "").strip()
    if not value:
        return SPIN_US_DEFAULT * 1e-6
    try:
        us = float(value)
    except ValueError:
        us = -1.0
    if not 0.0 <= us <= 1e6:
        raise ValueError(
            f"JOBLIB_FAST_SPIN_US must be microseconds between 0 and "
            f"1000000, got {value!r}")
    return us * 1e-6


cdef double _spin_seconds = _spin_from_env()

_local = threading.local()


def in_worker_thread():
    """True when called from one of joblib_fast's worker threads."""
    return getattr(_local, "in_worker", False)


# ------------------------------------------------------------------ pool


@cython.final
cdef class WorkerPool:
    """Threads named ``name-0``, ``name-1``, ... serving jobs (see module
    docstring); ``base`` of them are kept while idle."""

    def __cinit__(self):
        self.c = NULL

    def __init__(self, str name, int base, initializer=None):
        self.c = jf_pool_new(base)
        if self.c == NULL:
            raise MemoryError()
        self.name = name
        self.base = base
        self.initializer = initializer
        self._threads = []
        self.plock = threading.Lock()
        self.pid = jf_process_id()

    def __dealloc__(self):
        # Only a pool whose threads have all exited is freed (a pool a
        # forked child abandoned is kept alive by _ABANDONED), and never the
        # shared pool's: a parallel_for caller may still hold its pointer.
        if self.c != NULL and not self.keep_c and \
                jf_pool_threads(self.c) == 0:
            jf_pool_free(self.c)

    @property
    def threads(self):
        """The threads alive now."""
        with self.plock:
            return [t for t in self._threads if t.is_alive()]

    @property
    def n_alive(self):
        return jf_pool_threads(self.c)

    cdef int ensure(self, int n) except -1:
        """Start threads until ``n`` run (GIL held)."""
        with self.plock:
            self._threads = [t for t in self._threads if t.is_alive()]
            while jf_pool_reserve_thread(self.c, n):
                t = threading.Thread(target=self._main, daemon=True,
                                     name=f"{self.name}-{self.counter}")
                self.counter += 1
                try:
                    t.start()
                except BaseException:
                    jf_pool_thread_gone(self.c)
                    raise
                self._threads.append(t)
        return 0

    cdef int reserve(self, int n) except -1:
        """A lease of ``n`` workers opens (n > 0) or is gone (n < 0)."""
        cdef int keep
        with self.plock:
            self.reserved += n
            keep = max(self.base, self.reserved)
            # Under plock: the pool's keep follows the order of the
            # reservations (two leases opening and closing at once).
            jf_pool_set_keep(self.c, keep)
        if n > 0:
            self.ensure(keep)
        return 0

    cdef int grow(self) except -1:
        """One thread more, kept while idle (a pool of its own: see
        Lease.rescue_if_stuck)."""
        cdef int keep
        with self.plock:
            self.base += 1
            keep = max(self.base, self.reserved)
            jf_pool_set_keep(self.c, keep)
        self.ensure(keep)
        return 0

    def _main(self):
        """A worker thread's loop."""
        cdef jf_pool_t *c = self.c
        cdef jf_job_t *job = NULL
        cdef void *item = NULL
        cdef int worker = 0, kind
        cdef Py_ssize_t span[2]
        cdef uint64_t last = 0
        cdef Lease lease
        cdef bint exited = False
        enter_as_worker()  # for the thread's life: never left
        try:
            if self.initializer is not None:
                try:
                    self.initializer()
                except BaseException:
                    # The thread still serves; the failure is reported.
                    _log_error("the initializer of a worker thread raised "
                               "(the thread still runs tasks)")
            while True:
                with nogil:
                    kind = jf_pool_next(c, &job, &item, &worker, span, 0.0)
                    while kind == JF_NEXT_RANGE:
                        _help(c, <jf_range_t *>job, worker)
                        # The caller may run another range soon: poll
                        # for a while instead of sleeping at once.
                        kind = jf_pool_next(c, &job, &item, &worker, span,
                                            _spin_seconds)
                if kind == JF_NEXT_EXIT:
                    exited = True
                    break
                lease = <Lease>(<jf_queue_t *>job).owner
                obj = <object>item if kind != JF_NEXT_FEED else None
                if kind == JF_NEXT_ITEM:
                    Py_DECREF(obj)  # the queue's reference; `obj` holds one
                if lease.serial != last:
                    last = lease.serial
                    if lease.enter is not None:
                        try:
                            lease.enter()
                        except BaseException:
                            _log_error("a worker thread's start for a call "
                                       "(its initializer) raised; the thread "
                                       "runs the call's tasks anyway")
                try:
                    if kind == JF_NEXT_ITEM:
                        lease.run_item(obj)
                    elif kind == JF_NEXT_FEED:
                        lease.feed()
                    else:
                        # Borrowed: the item is kept alive by the part
                        # counted for these tasks.
                        lease.run_stolen(obj, span[0], span[1])
                except BaseException:
                    _log_error("a worker thread failed to run a queued item")
                obj = None
                if jf_queue_done(c, &lease.q):
                    lease.unlisted()
                lease = None
        finally:
            if not exited:
                jf_pool_thread_gone(c)

    def shutdown(self, wait=True, timeout=None):
        """Threads finish the queued items, then exit; join them if
        `wait`.  True when every thread has exited (none of a pool that a
        forked child inherited runs in the child: nothing of it is touched)."""
        if self.pid != jf_process_id():
            return True
        jf_pool_close(self.c)
        me = threading.current_thread()
        threads = self.threads
        if wait:
            # One deadline for all: joined one after the other, each with
            # its own timeout, n stuck threads held the exit n times longer.
            deadline = None if timeout is None else _monotonic() + timeout
            for t in threads:
                if t is not me:
                    t.join(None if deadline is None
                           else max(0.0, deadline - _monotonic()))
        return not any(t.is_alive() for t in threads if t is not me)


# ----------------------------------------------------------------- leases


cdef uint64_t _next_serial = 0


cdef class Lease:
    """Items run by a :class:`WorkerPool`'s threads, ``limit`` at once.

    Subclasses say how an item runs (:meth:`run_item`, GIL held)."""

    def __cinit__(self):
        jf_queue_init(&self.q, 1, <void *>self)

    def __dealloc__(self):
        jf_queue_free(&self.q)

    cdef int open(self, WorkerPool workers, int limit, object enter,
                  bint reserve) except -1:
        global _next_serial
        if limit < 1:
            raise ValueError(f"a lease needs at least 1 worker, got {limit}")
        self.workers = workers
        self.q.job.limit = limit
        self.enter = enter
        _next_serial += 1
        self.serial = _next_serial
        if reserve:
            workers.reserve(limit)
            self.reserved = limit
        Py_INCREF(self)  # the pool's reference while the queue is listed
        jf_queue_start(workers.c, &self.q)
        return 0

    cdef int submit_item(self, object item) except -1:
        cdef int rc
        if self.foreign():
            raise RuntimeError(
                "this thread pool belongs to the process this one was "
                "forked from; its threads do not run here")
        Py_INCREF(item)
        rc = jf_queue_push(self.workers.c, &self.q, <void *>item)
        if rc:
            Py_DECREF(item)
            if rc == ENOMEM:
                raise MemoryError()
            raise RuntimeError("the thread pool is shut down")
        return 0

    cdef object take_item(self, int most):
        """The oldest queued item, taken by the feeding thread to run it
        itself (then :meth:`taken_done`), or None (none queued, or `most`
        run already, the feeding thread's included)."""
        cdef void *item = NULL
        if self.workers is None or self.foreign() or \
                not jf_queue_take(self.workers.c, &self.q, most, &item):
            return None
        obj = <object>item
        Py_DECREF(obj)  # the queue's reference; `obj` holds one
        return obj

    cdef int taken_done(self) except -1:
        """After an item take_item returned has run (GIL held)."""
        if jf_queue_taken_done(self.workers.c, &self.q):
            self.unlisted()
        return 0

    cdef int set_limit(self, int limit) except -1:
        """Pool threads running items at once (the feeding thread may run
        more itself, see take_item)."""
        if limit < 0:
            raise ValueError(f"a lease limit is at least 0, got {limit}")
        if self.workers is None:
            raise RuntimeError("the lease is not open")
        if self.foreign():
            return 0
        jf_queue_set_limit(self.workers.c, &self.q, limit)
        return 0

    cdef int active(self):
        """Pool threads running the lease's items now (0 when closed)."""
        if self.workers is None or self.foreign():
            return 0
        return jf_queue_count(self.workers.c, &self.q, 0)

    cdef Py_ssize_t queued(self):
        """The lease's items waiting in its queue, taken by no thread yet
        (0 when closed)."""
        if self.workers is None or self.foreign():
            return 0
        return jf_queue_queued(self.workers.c, &self.q)

    cdef int rescues(self):
        """How often tasks of the lease waited for tasks that no thread
        under its limit could reach, so far: a thread beyond it ran one (a
        pool thread's rescue, see jf_queue_rescue), or the feeding thread
        started one more (rescue_if_stuck)."""
        if self.workers is None or self.foreign():
            return self.rescued
        return self.rescued + jf_queue_count(self.workers.c, &self.q, 1)

    cdef int64_t started(self):
        """Tasks started so far in the running pieces of the lease's items
        (see jf_claim_t; 0 when closed)."""
        if self.workers is None or self.foreign():
            return 0
        return jf_queue_started(self.workers.c, &self.q)

    cdef int run_item(self, object item) except -1:
        raise NotImplementedError

    cdef int run_stolen(self, object item, Py_ssize_t a,
                        Py_ssize_t b) except -1:
        """Run tasks [a, b) of `item`, taken from the thread running it
        (see jf_queue_steal); items of leases that never add claims are
        never stolen from."""
        raise NotImplementedError

    cdef int claim_add(self, jf_claim_t *c) except -1:
        """A running piece of an item whose unstarted tasks idle threads
        may take (until claim_remove, which the piece's thread calls
        before it counts its part finished)."""
        jf_queue_claim_add(self.workers.c, &self.q, c)
        return 0

    cdef int claim_remove(self, jf_claim_t *c) except -1:
        jf_queue_claim_remove(self.workers.c, &self.q, c)
        return 0

    cdef object take_stolen(self, int most, Py_ssize_t *a, Py_ssize_t *b,
                            int *spare, bint any_piece=False):
        """The feeding thread takes the unstarted tasks [*a, *b) of a
        stalled piece (`any_piece`: of a running piece, stalled or not),
        as take_item takes an item (then taken_done); the item, or None.
        *spare: whether any piece has tasks to spare."""
        cdef void *owner = NULL
        spare[0] = 0
        if self.workers is None or self.foreign() or \
                not jf_queue_take_stolen(self.workers.c, &self.q, most,
                                         0.0 if any_piece else JF_STEAL_AFTER,
                                         &owner, a, b, spare):
            return None
        return <object>owner

    cdef int rescue_if_stuck(self) except -1:
        """The feeding thread sees no progress.  When the items running
        all wait, with unstarted tasks behind one of them, and no thread
        is idle to run those (see jf_queue_rescue_wanted), one thread more
        is started for them: the lease's threads, or the pool of its own,
        keep it until the lease closes."""
        if self.workers is None or self.foreign() or \
                self.rescued >= max(self.q.job.limit, 1) or \
                not jf_queue_rescue_wanted(self.workers.c, &self.q):
            # At most as many more threads as the lease's own: more than
            # the tasks batching can have put out of joblib's order (tasks
            # that wait for ever, a bug of theirs, get no thread per task).
            return 0
        self.rescued += 1
        if self.reserved:
            self.reserved += 1
            self.workers.reserve(1)
        else:
            self.workers.grow()
        return 0

    cdef int want_feed(self, bint wanted) except -1:
        """The feeding thread runs an item itself (or no more): while the
        items running all wait, a pool thread is to feed() in its place."""
        if self.workers is not None and not self.foreign():
            jf_queue_want_feed(self.workers.c, &self.q, wanted)
        return 0

    cdef int feed(self) except -1:
        """Feed the queue in the feeding thread's place (see want_feed)."""
        return 0

    cdef int unlisted(self) except -1:
        """The queue left the pool's list (once; GIL held)."""
        cdef int n = self.reserved
        self.reserved = 0
        try:
            if n:
                self.workers.reserve(-n)
        finally:
            Py_DECREF(self)
        return 0

    cdef int alive(self):
        if self.foreign():
            return 0
        return jf_pool_threads(self.workers.c)

    cdef bint foreign(self):
        """The lease's pool belongs to the process this one was forked
        from: its threads do not exist here and its lock may be held by one
        of them, so nothing of it is touched."""
        return self.workers is not None and self.workers.pid != jf_process_id()

    @property
    def closed(self):
        """No more items (closed, or inherited by a forked child: a
        ``with`` block's next call then gets a pool of this process)."""
        return bool(self.q.closing) or self.foreign()

    @property
    def n_alive(self):
        return self.alive()

    def close(self, wait=True, timeout=None):
        """Accept no more items; those queued still run.  With `wait`,
        wait (GIL released) until they have.  True once drained."""
        cdef double deadline = 0.0
        cdef int done
        if self.workers is None or self.foreign():
            return True
        if jf_queue_close(self.workers.c, &self.q):
            self.unlisted()
            return True
        if not wait or in_worker_thread():
            # A worker waiting for its own lease would wait forever.
            return False
        if timeout is not None:
            deadline = jf_clock_now() + max(float(timeout), 1e-9)
        with nogil:
            done = jf_queue_wait_drained(self.workers.c, &self.q, deadline)
        return bool(done)


cdef object enter_as_worker():
    """This thread runs items as a pool thread does, until
    leave_as_worker(the value returned)."""
    token = getattr(_local, "in_worker", False)
    _local.in_worker = True
    jf_depth_add(1)
    return token


cdef int leave_as_worker(object token) except -1:
    jf_depth_add(-1)
    _local.in_worker = token
    return 0


# ------------------------------------------------------ the shared pool


cdef WorkerPool _shared = None
cdef void *_shared_c = NULL          # _shared.c, read without the GIL
cdef int _thread_cap = 0             # 0: not computed yet
_shared_lock = threading.Lock()
# Pools a forked child inherited: their locks may be held by threads that
# do not exist in the child, so they are never touched (nor freed) again.
_ABANDONED = []
SHARED_THREAD_NAME = "joblib_fast-thread"


def thread_cap():
    """Workers ``n_jobs=-1`` means for parallel_for here: cpu_count(); in a
    worker process (started by multiprocessing: joblib_fast's process
    backend, loky, dask), capped by OMP_NUM_THREADS, the cap the process
    backend sets there and the one OpenMP's prange obeys.  Not in the
    user's own process, where a library may set it for its own reasons
    (importing dask.distributed sets OMP_NUM_THREADS=1)."""
    import multiprocessing
    cap = cpu_count()
    if multiprocessing.parent_process() is not None:
        value = os.environ.get("OMP_NUM_THREADS", "").strip()
        try:
            omp = int(value)
        except ValueError:
            omp = 0
        if omp > 0:
            cap = min(cap, omp)
    return max(cap, 1)


cdef int _cap() noexcept nogil:
    cdef int cap = jf_int_load(&_thread_cap)
    if cap == 0:
        with gil:
            try:
                _install_hooks()
                cap = thread_cap()
            except BaseException:
                cap = 1
            jf_int_store(&_thread_cap, cap)
    return cap


def shared_workers():
    """The process-wide pool (created on first use)."""
    global _shared
    _install_hooks()
    with _shared_lock:
        if _shared is None:
            _shared = WorkerPool(SHARED_THREAD_NAME, _cap())
            _shared.keep_c = True
            jf_ptr_store(&_shared_c, <void *>_shared.c)
        return _shared


def shared_pool_threads():
    """The shared pool's threads alive now."""
    pool = _shared
    return [] if pool is None else pool.threads


def shutdown_shared_pool(timeout=None):
    """Stop the shared pool's threads (after what is queued) and join
    them; the next use starts a new pool.  True when all have exited."""
    global _shared
    with _shared_lock:
        pool, _shared = _shared, None
        jf_ptr_store(&_shared_c, NULL)
    if pool is None:
        return True
    return pool.shutdown(wait=True, timeout=timeout)


cdef jf_pool_t *_pool_for(int helpers) noexcept nogil:
    """The shared pool with threads for `helpers` (at most its base), or
    NULL when it cannot be had."""
    cdef jf_pool_t *p = <jf_pool_t *>jf_ptr_load(&_shared_c)
    cdef int want = helpers
    if want > _cap():
        want = _cap()
    if p != NULL and jf_pool_threads(p) >= want:
        return p
    with gil:
        try:
            pool = shared_workers()
            (<WorkerPool>pool).ensure(want)
            p = (<WorkerPool>pool).c
        except BaseException:
            _log_error("the shared worker threads could not be had "
                       "(the caller runs the range alone)")
            p = NULL
    return p


def _log_error(what):
    """Log the exception being handled on the "joblib_fast" logger, where
    an application can filter or redirect it (with no logging configured,
    Python prints it on stderr).  logging is imported here: importing it
    registers an exit hook, and importing the package registers none."""
    import logging
    logging.getLogger("joblib_fast").error(what, exc_info=True)


_OWNER_PID = os.getpid()


def _shutdown_at_exit():
    if os.getpid() == _OWNER_PID:
        # Daemon threads: a task stuck for long does not hold up the exit.
        shutdown_shared_pool(timeout=1.0)


def _forget_pool_in_child():
    global _shared, _shared_lock, _OWNER_PID
    _OWNER_PID = os.getpid()
    _shared_lock = threading.Lock()
    if _shared is not None:
        _ABANDONED.append(_shared)
    _shared = None
    jf_ptr_store(&_shared_c, NULL)
    jf_int_store(&_thread_cap, 0)  # the child may run under other caps
    # The forking thread may have been a pool thread or inside a body: in
    # the child it is neither (a parallel_for there uses the child's pool).
    jf_depth_forked()
    _local.in_worker = False
    jf_cap_after_fork_child()


_hooks_installed = False


def _install_hooks():
    """At the first use, not at import (importing patches nothing): the
    pool stops at exit, and a forked child forgets it and the cap."""
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_shutdown_at_exit)
        if hasattr(os, "register_at_fork"):  # no fork on Windows
            os.register_at_fork(after_in_child=_forget_pool_in_child)


# ---------------------------------------------- native thread pools' cap


cdef extern from "jf_cap.h" nogil:
    ctypedef void (*jf_cap_set_t)(int n)
    ctypedef int (*jf_cap_get_t)()
    ctypedef struct jf_cap_t:
        int n_libs
        int n_held
        int applied
        long holds
    jf_cap_t jf_cap
    int jf_cap_init()
    int jf_cap_register(jf_cap_set_t set, jf_cap_get_t get)
    int jf_cap_hold(int limit)
    void jf_cap_release(int token)
    void jf_cap_after_fork_child()


if jf_cap_init() != 0:
    raise MemoryError("the native thread pools' cap could not be set up")

# Called (GIL held, no argument) when the process may have loaded a library
# with a thread pool: it registers them (cap_register).  Set by
# _native_threads, which knows how to find them.
_cap_scanner = None
cdef int _cap_scanning = 0            # a scanner is set
cdef int64_t _cap_loads_seen = -2     # jf_loaded_images() at the last scan
cdef int64_t _cap_next_check = 0      # microseconds of jf_clock_now
# How often, at most, a parallel_for asks whether libraries were loaded
# (one dl_iterate_phdr step): a library loaded just now is capped from the
# next parallel_for this long after.
cdef double CAP_CHECK_SECONDS = 0.01


def set_cap_scanner(scanner):
    """``scanner()`` registers the loaded libraries' pools; parallel_for
    calls it when the process has loaded libraries since the last call."""
    global _cap_scanner, _cap_scanning
    _cap_scanner = scanner
    _cap_scanning = scanner is not None


def cap_register(size_t set_address, size_t get_address):
    """Cap, from now on, the pool of a library whose ``void set(int)`` and
    ``int get(void)`` functions are at these addresses (idempotent)."""
    if not set_address or not get_address:
        raise ValueError("cap_register: a function address is 0")
    if jf_cap_register(<jf_cap_set_t><void *>set_address,
                       <jf_cap_get_t><void *>get_address) != 0:
        return False  # the table is full: that library is not capped
    _install_hooks()
    return True


def cap_hold(int limit):
    """Hold a cap of ``limit`` threads; the token to give cap_release (0:
    nothing registered to cap)."""
    with nogil:
        token = jf_cap_hold(limit)
    return token


def cap_release(int token):
    with nogil:
        jf_cap_release(token)


def cap_state():
    """The cap's state: libraries registered, holders, the limit applied
    (0: none), holds taken since the start."""
    return {"libraries": jf_int_load(&jf_cap.n_libs),
            "holders": jf_cap.n_held, "applied": jf_cap.applied,
            "holds": jf_cap.holds}


cdef void _cap_scanned(int64_t loads) noexcept nogil:
    """Record the loader's count the scanner ran for."""
    cdef int64_t seen = jf_int64_load_relaxed(&_cap_loads_seen)
    while not jf_int64_cas(&_cap_loads_seen, &seen, loads):
        pass


cdef void _cap_refresh() noexcept nogil:
    """Run the scanner if the process loaded libraries since it last ran
    (asked at most every CAP_CHECK_SECONDS, by one thread at a time)."""
    cdef int64_t now, due, loads
    if not _cap_scanning:
        return
    now = <int64_t>(jf_clock_now() * 1e6)
    due = jf_int64_load_relaxed(&_cap_next_check)
    if now < due or not jf_int64_cas(&_cap_next_check, &due,
                                     now + <int64_t>(CAP_CHECK_SECONDS * 1e6)):
        return
    loads = jf_loaded_images()
    if loads == jf_int64_load_relaxed(&_cap_loads_seen):
        return
    with gil:
        try:
            if _cap_scanner is not None:
                _cap_scanner()
        except KeyboardInterrupt:
            # Ctrl-C during the scan: raised again as a signal, for the
            # caller's own check (or Python's next one) to raise.
            PyErr_SetInterrupt()
        except BaseException:
            _log_error("looking for native thread pools failed")
    # What was loaded before the scan was seen by it (a library loaded
    # during the scan is looked for at the next check).
    _cap_scanned(loads)


# ------------------------------------------------------------ parallel_for


cdef int _max_workers(int n_workers) noexcept nogil:
    cdef int n
    if n_workers == 0:
        return 0
    if jf_depth_get() > 0:
        return 1  # nested: inline
    if n_workers > 0:
        return n_workers
    n = _cap() + 1 + n_workers
    return n if n > 1 else 1


def max_workers(int n_workers):
    """Python view of the C API's ``max_workers`` (for tests)."""
    return _max_workers(n_workers)


cdef void _capture_error(jf_range_t *r, int won) noexcept nogil:
    """A body returned -1 in this thread: keep its exception for the caller
    when its -1 is the range's result, else drop it."""
    cdef PyObject *t = NULL
    cdef PyObject *v = NULL
    cdef PyObject *tb = NULL
    with gil:
        if not won:
            PyErr_Clear()
        elif PyErr_Occurred() != NULL:
            PyErr_Fetch(&t, &v, &tb)
            PyErr_NormalizeException(&t, &v, &tb)
            if tb != NULL:
                PyException_SetTraceback(v, tb)  # the exception keeps it
            r.error = <void *>v
            Py_XDECREF(t)
            Py_XDECREF(tb)


cdef void _drop_stray_error() noexcept nogil:
    """A body returned a code other than -1: an exception it set anyway
    is dropped, not left pending in this thread for unrelated code."""
    with gil:
        PyErr_Clear()


cdef void _after_work(jf_range_t *r, int rc, int won) noexcept nogil:
    """This thread's bodies returned `rc` (see jf_range_work)."""
    if rc == -1:
        _capture_error(r, won)
    elif rc != 0:
        _drop_stray_error()


cdef void _help(jf_pool_t *c, jf_range_t *r, int worker) noexcept nogil:
    """A pool thread runs chunks of `r`, then leaves it."""
    cdef int won = 0
    cdef int rc = jf_range_work(r, worker, &won)   # sets won: not an argument beside it
    _after_work(r, rc, won)
    jf_range_leave(c, r)


cdef void _set_error(PyObject *exc, const char *message) noexcept nogil:
    with gil:
        PyErr_SetString(exc, message)


cdef void _no_exception_set() noexcept nogil:
    with gil:
        if PyErr_Occurred() == NULL:
            PyErr_SetString(
                PyExc_SystemError,
                b"a parallel_for body returned -1 without setting a Python "
                b"exception")


# A parallel_for called with the GIL held looks for Ctrl-C (and other
# signals Python handles) this often, between the caller's chunks: each
# look takes the GIL back.  Shorter: Ctrl-C is acted on sooner; longer:
# fewer GIL round trips (checked by tests/c_api: a long loop interrupted).
cdef double SIGNAL_CHECK_SECONDS = 0.01


cdef int _work_watching_signals(jf_range_t *r, PyThreadState *saved,
                                int *won) noexcept nogil:
    """The caller's chunks of `r`, its GIL released (`saved`): between
    chunks, every SIGNAL_CHECK_SECONDS, it takes the GIL to run Python's
    signal handlers.  One that raises (KeyboardInterrupt) stops the range:
    no chunk starts any more, and the exception is the range's (-1)."""
    cdef int rc, paused = 1, stopped
    while paused:
        rc = jf_range_work_until(r, 0, won, jf_clock_now()
                                 + SIGNAL_CHECK_SECONDS, &paused)
        if not paused:
            return rc
        PyEval_RestoreThread(saved)
        stopped = _check_signals() != 0
        PyEval_SaveThread()
        if stopped:
            # The exception stays set in this thread: _after_work keeps it
            # for the caller when -1 is the range's result.
            won[0] = jf_range_stop(r, -1)
            return -1
    return rc


cdef int _parallel_for(Py_ssize_t start, Py_ssize_t stop, Py_ssize_t grain,
                       jf_pfor_body_t body, void *ctx,
                       int n_workers) noexcept nogil:
    cdef int n, rc, won = 0, cap_token
    cdef bint listed
    cdef jf_pool_t *pool
    cdef jf_range_t r
    cdef PyThreadState *saved = NULL
    cdef PyObject *v
    if n_workers == 0:
        _set_error(PyExc_ValueError,
                   b"parallel_for: n_workers == 0 has no meaning (-1: every "
                   b"worker, -2: all but one, k > 0: k workers)")
        return -1
    if grain < 0:
        _set_error(PyExc_ValueError,
                   b"parallel_for: grain must be >= 0 (0: automatic)")
        return -1
    if body == NULL:
        _set_error(PyExc_ValueError, b"parallel_for: body is NULL")
        return -1
    if stop <= start:
        return 0
    if start < 0 and stop > PY_SSIZE_T_MAX + start:
        _set_error(PyExc_OverflowError,
                   b"parallel_for: stop - start is larger than PY_SSIZE_T_MAX")
        return -1
    n = _max_workers(n_workers)
    pool = NULL
    if n > 1 and stop - start > (grain if grain > 1 else 1):
        pool = _pool_for(n - 1)
    if pool == NULL:
        # Inline: nested, one worker, or one chunk.
        jf_depth_add(1)
        rc = body(ctx, start, stop, 0)
        jf_depth_add(-1)
        if rc == -1:
            _no_exception_set()
        elif rc != 0:
            _drop_stray_error()
        return rc
    # n threads run the bodies: the libraries they call get a share of
    # the cores each, as in a threading call.
    _cap_refresh()
    cap_token = jf_cap_hold(_cap() // n)
    if jf_holds_gil():
        saved = PyEval_SaveThread()
    jf_range_init(&r, start, stop, grain, n, <jf_body_t>body, ctx)
    jf_depth_add(1)
    listed = jf_range_start(pool, &r) == 0
    if saved != NULL:
        rc = _work_watching_signals(&r, saved, &won)
    else:
        rc = jf_range_work(&r, 0, &won)
    _after_work(&r, rc, won)
    if listed:
        jf_range_finish(pool, &r, _spin_seconds)
    jf_depth_add(-1)
    jf_cap_release(cap_token)
    if saved != NULL:
        PyEval_RestoreThread(saved)
    rc = jf_int_load(&r.rc)
    if rc == -1:
        with gil:
            v = <PyObject *>r.error
            if v == NULL:
                PyErr_SetString(
                    PyExc_SystemError,
                    b"a parallel_for body returned -1 without setting a "
                    b"Python exception")
            else:
                PyErr_Restore(PyObject_Type(v), v, PyException_GetTraceback(v))
    return rc


cdef jf_pfor_api_t _API
_API.abi_version = JF_PFOR_ABI_VERSION
_API.parallel_for = _parallel_for
_API.max_workers = _max_workers

parallel_for_api = PyCapsule_New(<void *>&_API, JF_PFOR_CAPSULE, NULL)
