# A downstream module of joblib_fast's parallel_for, as a user writes it:
# built by tests/c_api/test_parallel_for.py in a temporary folder against the
# installed package only (include_dirs=[joblib_fast.get_include()]).
from cpython.exc cimport PyErr_SetString
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from libc.stdlib cimport free, malloc
from posix.unistd cimport usleep

from joblib_fast.parallel_for cimport (
    import_parallel_for,
    max_workers as c_max_workers,
    parallel_for,
)

import_parallel_for()


cdef extern from *:
    """
    #include <pthread.h>
    static unsigned long pfc_thread_id(void) { return (unsigned long)pthread_self(); }
    static long pfc_add(long *p, long v) {
        return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
    }
    static void pfc_inc(int *p) { __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    """
    unsigned long pfc_thread_id() nogil
    long pfc_add(long *p, long v) nogil
    void pfc_inc(int *p) nogil


cdef extern from "Python.h":
    # NULL with the exception set (and its traceback) when fn raises.
    PyObject *PyObject_CallObject(PyObject *fn, PyObject *args)


# One record per chunk: [start, stop), worker id, thread id.
cdef struct Log:
    int *counts               # per index: times visited
    Py_ssize_t offset         # index of counts[0]
    long n_chunks             # atomic
    long capacity
    Py_ssize_t *starts
    Py_ssize_t *stops
    int *workers
    unsigned long *threads
    long spin                 # busy work per index
    Py_ssize_t bad            # index whose chunk fails
    int has_bad               # 0: no chunk fails
    int code                  # what that chunk returns
    int nested                # run a nested parallel_for in each chunk
    int nested_ok             # atomic: nested calls that ran inline
    int nested_mw             # max_workers(-1) seen inside the body
    long in_flight            # atomic: bodies running now
    long entries              # atomic: bodies started


cdef double _sink = 0.0


cdef void _spin(long n) noexcept nogil:
    global _sink
    cdef double x = 1.0
    cdef long _k
    for _k in range(n):
        x = x * 1.0000001 + 1e-9
    _sink += x * 0.0


cdef int _inner(void *ctx, Py_ssize_t start, Py_ssize_t stop,
                int worker) noexcept nogil:
    cdef unsigned long *seen = <unsigned long *>ctx
    if worker != 0 or pfc_thread_id() != seen[0]:
        seen[1] = 1
    return 0


cdef int _body(void *ctx, Py_ssize_t start, Py_ssize_t stop,
               int worker) noexcept nogil:
    cdef Log *log = <Log *>ctx
    cdef long slot = pfc_add(&log.n_chunks, 1)
    cdef int rc = 0
    pfc_add(&log.entries, 1)
    pfc_add(&log.in_flight, 1)
    rc = _body_run(log, start, stop, worker, slot)
    pfc_add(&log.in_flight, -1)
    return rc


cdef int _body_run(Log *log, Py_ssize_t start, Py_ssize_t stop, int worker,
                   long slot) noexcept nogil:
    cdef Py_ssize_t i
    cdef unsigned long seen[2]
    if slot < log.capacity:
        log.starts[slot] = start
        log.stops[slot] = stop
        log.workers[slot] = worker
        log.threads[slot] = pfc_thread_id()
    if log.has_bad and log.bad >= start and log.bad < stop:
        # Fail at once, before visiting anything of this chunk.
        if log.code == -1:
            with gil:
                PyErr_SetString(ValueError, f"bad index {log.bad}".encode())
        return log.code
    for i in range(start, stop):
        pfc_inc(&log.counts[i - log.offset])
        if log.spin:
            _spin(log.spin)
    if log.nested:
        seen[0] = pfc_thread_id()
        seen[1] = 0
        log.nested_mw = c_max_workers(-1)
        if parallel_for(0, 1000, 0, _inner, seen, -1) == 0 and seen[1] == 0:
            pfc_inc(&log.nested_ok)
    return 0


def max_workers(int n_workers):
    return c_max_workers(n_workers)


def visit(Py_ssize_t start, Py_ssize_t stop, Py_ssize_t grain=0,
          int n_workers=-1, long spin=0, bad=None, int code=0,
          bint nested=False, bint gil=False, double linger=0.0):
    """Run the logging body over [start, stop).  Returns a dict: rc,
    counts (per index), chunks [(start, stop, worker, thread)], caller
    thread id, nested calls that ran inline, max_workers seen inside."""
    cdef Log log
    cdef Py_ssize_t n = stop - start if stop > start else 0
    cdef int rc = 0
    cdef long k, in_flight = 0, entries = 0, entries_later = 0
    log.counts = <int *>malloc((n + 1) * sizeof(int))
    log.capacity = 1 << 16
    log.starts = <Py_ssize_t *>malloc(log.capacity * sizeof(Py_ssize_t))
    log.stops = <Py_ssize_t *>malloc(log.capacity * sizeof(Py_ssize_t))
    log.workers = <int *>malloc(log.capacity * sizeof(int))
    log.threads = <unsigned long *>malloc(log.capacity * sizeof(unsigned long))
    if not (log.counts and log.starts and log.stops and log.workers
            and log.threads):
        raise MemoryError()
    try:
        for k in range(n + 1):
            log.counts[k] = 0
        log.offset = start
        log.n_chunks = 0
        log.spin = spin
        log.has_bad = bad is not None
        log.bad = bad if bad is not None else 0
        log.code = code
        log.nested = nested
        log.nested_ok = 0
        log.nested_mw = -1
        log.in_flight = 0
        log.entries = 0
        if gil:
            # Called with the GIL held: parallel_for releases it itself.
            rc = parallel_for(start, stop, grain, _body, &log, n_workers)
        else:
            with nogil:
                rc = parallel_for(start, stop, grain, _body, &log, n_workers)
                in_flight = pfc_add(&log.in_flight, 0)
                entries = pfc_add(&log.entries, 0)
                if linger > 0.0:
                    usleep(<unsigned int>(linger * 1e6))
                entries_later = pfc_add(&log.entries, 0)
        chunks = [(log.starts[k], log.stops[k], log.workers[k],
                   log.threads[k]) for k in range(min(log.n_chunks,
                                                      log.capacity))]
        return {"rc": rc, "counts": [log.counts[k] for k in range(n)],
                "chunks": chunks, "caller": pfc_thread_id(),
                "nested_ok": log.nested_ok, "nested_mw": log.nested_mw,
                "in_flight_after": in_flight,
                "started_after": entries_later - entries}
    finally:
        free(log.counts)
        free(log.starts)
        free(log.stops)
        free(log.workers)
        free(log.threads)


cdef int _count_only(void *ctx, Py_ssize_t start, Py_ssize_t stop,
                     int worker) noexcept nogil:
    pfc_add(<long *>ctx, stop - start)
    return 0


def count(Py_ssize_t n, int n_workers=-1, Py_ssize_t grain=0):
    """Indices visited by a cheap body over [0, n) (a fast loop for calls
    repeated many times)."""
    cdef long total = 0
    with nogil:
        parallel_for(0, n, grain, _count_only, &total, n_workers)
    return total


cdef int _minus_one(void *ctx, Py_ssize_t start, Py_ssize_t stop,
                    int worker) noexcept nogil:
    return -1


def minus_one_without_exception(Py_ssize_t n):
    with nogil:
        parallel_for(0, n, 1, _minus_one, NULL, -1)


def bad_call(Py_ssize_t grain, int n_workers, Py_ssize_t start=0,
             Py_ssize_t stop=10):
    cdef long total = 0
    with nogil:
        parallel_for(start, stop, grain, _count_only, &total, n_workers)
    return total


# A body that calls a Python function on the pool threads only (the
# caller, worker 0, keeps busy so that a helper joins): what a pool thread
# does with the body's exception, and with the code it returns.
cdef struct Helpers:
    PyObject *fn
    int code                  # returned when fn raised
    int always                # returned when it did not, too
    int helper_ran            # a worker != 0 called fn
    long spin


cdef int _helpers_body(void *ctx, Py_ssize_t start, Py_ssize_t stop,
                       int worker) noexcept nogil:
    cdef Helpers *h = <Helpers *>ctx
    cdef PyObject *result
    cdef Py_ssize_t _i
    if worker == 0:
        for _i in range(start, stop):
            _spin(h.spin)
        return 0
    h.helper_ran = 1
    with gil:
        result = PyObject_CallObject(h.fn, NULL)
        if result == NULL:
            return h.code
        Py_DECREF(<object>result)
    return h.code if h.always else 0


def on_helpers(fn, int code=-1, Py_ssize_t n=400, long spin=20_000,
               bint gil=False, bint always=False):
    """parallel_for over [0, n) whose pool-thread bodies call fn(); its
    result and whether a pool thread ran fn (the caller only spins)."""
    cdef Helpers h
    cdef int rc
    h.fn = <PyObject *>fn
    h.code = code
    h.always = always
    h.helper_ran = 0
    h.spin = spin
    if gil:
        rc = parallel_for(0, n, 1, _helpers_body, &h, -1)
    else:
        with nogil:
            rc = parallel_for(0, n, 1, _helpers_body, &h, -1)
    return rc, bool(h.helper_ran)


# A range whose first indices cost nothing (its cost in its tail, as in
# rows sorted by cost): what the automatic grain makes of the rest.
cdef struct CheapStart:
    Py_ssize_t cheap_below
    long spin
    long largest               # the largest chunk at or above cheap_below
    int helper_ran
    long visited               # atomic: indices at or above cheap_below


cdef int _cheap_start_body(void *ctx, Py_ssize_t start, Py_ssize_t stop,
                           int worker) noexcept nogil:
    cdef CheapStart *c = <CheapStart *>ctx
    cdef Py_ssize_t _i
    if stop <= c.cheap_below:
        return 0
    if start < c.cheap_below:
        start = c.cheap_below
    if worker != 0:
        c.helper_ran = 1
    if stop - start > c.largest:
        c.largest = stop - start   # racy max: may miss a close race only
    for _i in range(start, stop):
        _spin(c.spin)
    pfc_add(&c.visited, stop - start)
    return 0


def cheap_start(Py_ssize_t n, Py_ssize_t cheap_below, long spin):
    """parallel_for over [0, n), grain automatic, with free indices below
    cheap_below: (the most indices at or above it in one chunk, a helper
    ran some of them, indices visited at or above it)."""
    cdef CheapStart c
    c.cheap_below = cheap_below
    c.spin = spin
    c.largest = 0
    c.helper_ran = 0
    c.visited = 0
    with nogil:
        parallel_for(0, n, 0, _cheap_start_body, &c, -1)
    return c.largest, bool(c.helper_ran), c.visited


cdef long _visited_before_raise = 0


cdef int _spin_count(void *ctx, Py_ssize_t start, Py_ssize_t stop,
                     int worker) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, stop):
        _spin(<long>ctx)
        pfc_add(&_visited_before_raise, 1)
    return 0


def spin_with_the_gil(Py_ssize_t n, long spin):
    """parallel_for over [0, n), called with the GIL held (as from plain
    Python): Ctrl-C meanwhile raises KeyboardInterrupt here."""
    global _visited_before_raise
    _visited_before_raise = 0
    return parallel_for(0, n, 1, _spin_count, <void *>spin, -1)


def visited_so_far():
    """Indices spin_with_the_gil visited (also after it raised)."""
    return pfc_add(&_visited_before_raise, 0)
