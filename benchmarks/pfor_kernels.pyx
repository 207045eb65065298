# The kernels of benchmarks/bench_pfor.py: one loop body run as a serial C
# loop, with joblib_fast's parallel_for, with Cython's prange (OpenMP, when
# built with -fopenmp) and in chunks on the threading backend.  Built at
# bench time against the installed joblib_fast, as a user would.
# cython: boundscheck=False, wraparound=False, cdivision=True
from cython.parallel cimport prange

from joblib_fast.parallel_for cimport import_parallel_for, parallel_for

import_parallel_for()


cdef extern from *:
    """
    #include <time.h>
    static double pk_now(void)
    {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    #ifdef _OPENMP
    #define PK_OPENMP 1
    #else
    #define PK_OPENMP 0
    #endif
    """
    double pk_now() nogil
    int PK_OPENMP


cdef struct Job:
    double *out
    long reps          # work per index (the mean, for the triangular load)
    long n
    int tri            # index i costs 2 * reps * i / n


cdef inline long reps_at(Job *j, long i) noexcept nogil:
    if j.tri:
        return (2 * j.reps * i) // j.n
    return j.reps


cdef inline double work(long i, long reps) noexcept nogil:
    # A dependent chain: a fixed amount of work per step.
    cdef double x = i * 1e-9 + 1.0
    cdef long _k
    for _k in range(reps):
        x = x * 0.999999 + 1e-7
    return x


cdef int body(void *ctx, Py_ssize_t a, Py_ssize_t b,
              int worker) noexcept nogil:
    cdef Job *j = <Job *>ctx
    cdef Py_ssize_t i
    for i in range(a, b):
        j.out[i] = work(i, reps_at(j, i))
    return 0


cdef int empty(void *ctx, Py_ssize_t a, Py_ssize_t b,
               int worker) noexcept nogil:
    return 0


cdef Job _job(double[::1] out, long reps, bint tri):
    cdef Job j
    j.out = &out[0]
    j.reps = reps
    j.n = out.shape[0]
    j.tri = tri
    return j


def has_openmp():
    return bool(PK_OPENMP)


def serial(double[::1] out, long reps, bint tri):
    """Seconds the plain C loop takes."""
    cdef Job j = _job(out, reps, tri)
    cdef double t0 = pk_now()
    with nogil:
        body(&j, 0, j.n, 0)
    return pk_now() - t0


def pfor(double[::1] out, long reps, bint tri, int n_workers):
    cdef Job j = _job(out, reps, tri)
    cdef double t0 = pk_now()
    with nogil:
        parallel_for(0, j.n, 0, body, &j, n_workers)
    return pk_now() - t0


def prange_loop(double[::1] out, long reps, bint tri, int n_threads):
    """prange, static schedule for even work, guided for the triangle."""
    cdef Job j = _job(out, reps, tri)
    cdef Py_ssize_t i, n = j.n
    cdef double t0 = pk_now()
    if tri:
        for i in prange(n, nogil=True, num_threads=n_threads,
                        schedule="guided"):
            j.out[i] = work(i, reps_at(&j, i))
    else:
        for i in prange(n, nogil=True, num_threads=n_threads,
                        schedule="static"):
            j.out[i] = work(i, reps_at(&j, i))
    return pk_now() - t0


def calls_serial(double[::1] out, long reps, long calls):
    """Seconds per call of `calls` serial loops over `out`, back to back."""
    cdef Job j = _job(out, reps, False)
    cdef long _c
    cdef double t0 = pk_now()
    with nogil:
        for _c in range(calls):
            body(&j, 0, j.n, 0)
    return (pk_now() - t0) / calls


def calls_pfor(double[::1] out, long reps, long calls, int n_workers):
    """The same, each loop a parallel_for."""
    cdef Job j = _job(out, reps, False)
    cdef long _c
    cdef double t0 = pk_now()
    with nogil:
        for _c in range(calls):
            parallel_for(0, j.n, 0, body, &j, n_workers)
    return (pk_now() - t0) / calls


def calls_prange(double[::1] out, long reps, long calls, int n_threads):
    """The same, each loop a prange (static schedule)."""
    cdef Job j = _job(out, reps, False)
    cdef long _c
    cdef Py_ssize_t i, n = j.n
    cdef double t0 = pk_now()
    with nogil:
        for _c in range(calls):
            for i in prange(n, num_threads=n_threads, schedule="static"):
                j.out[i] = work(i, reps_at(&j, i))
    return (pk_now() - t0) / calls


def chunk(double[::1] out, Py_ssize_t a, Py_ssize_t b, long reps, bint tri):
    """Indices [a, b), GIL released: a task of the threading backend."""
    cdef Job j = _job(out, reps, tri)
    with nogil:
        body(&j, a, b, 0)


def empty_pfor(long calls, Py_ssize_t n, int n_workers):
    """Seconds per parallel_for call of an empty body over [0, n)."""
    cdef long _c
    cdef double t0 = pk_now()
    with nogil:
        for _c in range(calls):
            parallel_for(0, n, 0, empty, NULL, n_workers)
    return (pk_now() - t0) / calls


def empty_prange(long calls, Py_ssize_t n, int n_threads):
    """Seconds per prange loop of an empty body over [0, n)."""
    cdef long _c
    cdef Py_ssize_t _i
    cdef double sink = 0.0
    cdef double t0 = pk_now()
    with nogil:
        for _c in range(calls):
            for _i in prange(n, num_threads=n_threads, schedule="static"):
                sink += 0.0
    return (pk_now() - t0) / calls
