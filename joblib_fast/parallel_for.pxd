# The C API of joblib_fast's parallel-for, for Cython code.
#
#     from joblib_fast.parallel_for cimport import_parallel_for, parallel_for
#     import_parallel_for()    # once, at module import
#
# Build with include_dirs=[joblib_fast.get_include()]; nothing to link.
# The rules are in docs/user_guide/parallel_for.md.

# A loop body: runs indices [start, stop) as worker `worker`; returns 0, a
# non-zero code that stops the loop, or -1 with a Python exception set
# (PyErr_SetString inside `with gil`).
ctypedef int (*body_t)(void *ctx, Py_ssize_t start, Py_ssize_t stop,
                       int worker) noexcept nogil

cdef extern from "joblib_fast/parallel_for.h":
    int PARALLEL_FOR_ABI_VERSION "JF_PFOR_ABI_VERSION"

    # Fetch the function table from the installed joblib_fast; ImportError
    # naming both ABI versions when they differ.
    int import_parallel_for "jf_pfor_import"() except -1

    # Run body over [start, stop) in chunks of at least `grain` indices (0:
    # automatic) on the calling thread (worker 0) and the pool's threads.
    int parallel_for "jf_pfor_run"(
        Py_ssize_t start, Py_ssize_t stop, Py_ssize_t grain, body_t body,
        void *ctx, int n_workers) except -1 nogil

    # Workers parallel_for(..., n_workers) may use from this thread: worker
    # ids are in [0, max_workers(n_workers)); 0 for n_workers == 0.
    int max_workers "jf_pfor_max_workers"(int n_workers) nogil
