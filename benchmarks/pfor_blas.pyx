# A parallel_for body that calls BLAS (benchmarks/bench_pfor.py's "BLAS
# body" load): each index multiplies two n x n matrices with SciPy's dgemm,
# the BLAS a Cython user reaches (scipy.linalg.cython_blas: SciPy's own
# OpenBLAS, multithreaded).  Built apart from pfor_kernels.pyx, only where
# SciPy is installed.
# cython: boundscheck=False, wraparound=False
from scipy.linalg.cython_blas cimport dgemm

from joblib_fast.parallel_for cimport import_parallel_for, parallel_for

import_parallel_for()


cdef struct Gemm:
    double *a          # n x n, shared by every index
    double *c          # one n x n output per index
    int n


cdef inline void gemm(Gemm *g, Py_ssize_t i) noexcept nogil:
    cdef char t = b"N"
    cdef double one = 1.0, zero = 0.0
    dgemm(&t, &t, &g.n, &g.n, &g.n, &one, g.a, &g.n, g.a, &g.n, &zero,
          g.c + i * g.n * g.n, &g.n)


cdef int body(void *ctx, Py_ssize_t a, Py_ssize_t b,
              int worker) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(a, b):
        gemm(<Gemm *>ctx, i)
    return 0


cdef Gemm _gemm(double[::1] a, double[::1] c, int n):
    cdef Gemm g
    g.a = &a[0]
    g.c = &c[0]
    g.n = n
    return g


def serial(double[::1] a, double[::1] c, int n, Py_ssize_t count):
    cdef Gemm g = _gemm(a, c, n)
    cdef Py_ssize_t i
    with nogil:
        for i in range(count):
            gemm(&g, i)


def pfor(double[::1] a, double[::1] c, int n, Py_ssize_t count,
         int n_workers):
    cdef Gemm g = _gemm(a, c, n)
    with nogil:
        parallel_for(0, count, 1, body, &g, n_workers)
