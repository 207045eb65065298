"""Small GIL-releasing kernels for the tests and benchmarks/bench.py.

``burn(n)`` does ``n`` dependent floating-point steps without the GIL: a
stand-in for a numeric Cython kernel.  Its cost is a fixed amount of work,
not a wall-clock wait, so a preempted thread does not count as progress.
``calibrate(seconds)`` finds the ``n`` that lasts about that long here.
"""
from libc.math cimport sqrt

cdef extern from "jf_platform.h" nogil:
    double jf_clock_now()


cdef double _burn(long n) noexcept nogil:
    cdef double x = 1.0
    cdef long _i
    for _i in range(n):
        x = sqrt(x + 1.000001) * 0.999999
    return x


cpdef double burn(long n):
    """Run ``n`` dependent sqrt steps with the GIL released; return the value."""
    cdef double x
    with nogil:
        x = _burn(n)
    return x


cpdef double burn_with_gil(long n):
    """The same work as :func:`burn` while holding the GIL."""
    return _burn(n)


def calibrate(double seconds, int repeat=5):
    """Return ``n`` such that ``burn(n)`` lasts about ``seconds`` here."""
    cdef long n = 1000
    cdef double t0, dt, best
    while True:
        best = 1e9
        for _ in range(repeat):
            t0 = jf_clock_now()
            burn(n)
            dt = jf_clock_now() - t0
            if dt < best:
                best = dt
        if best > 2e-3 or n > (1L << 40):
            break
        n *= 4
    return max(1, <long>(n * seconds / best))


def sleep_nogil(double seconds):
    """Block the calling thread ``seconds`` without the GIL (a busy wait)."""
    cdef double end = jf_clock_now() + seconds
    with nogil:
        while jf_clock_now() < end:
            pass
