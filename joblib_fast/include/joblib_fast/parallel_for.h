/* joblib_fast/parallel_for.h -- the C API of joblib_fast.parallel_for.
 *
 * Included by the C code Cython generates for a module that does
 *     from joblib_fast.parallel_for cimport import_parallel_for, parallel_for
 * (build it with include_dirs=[joblib_fast.get_include()]; nothing to link).
 *
 * The functions live in the installed joblib_fast; their table travels in
 * the capsule JF_PFOR_CAPSULE, fetched once by jf_pfor_import() (the .pxd's
 * import_parallel_for()).  Each extension module that includes this header
 * keeps its own pointer to the table.
 */
#ifndef JOBLIB_FAST_PARALLEL_FOR_H
#define JOBLIB_FAST_PARALLEL_FOR_H

#include <Python.h>

/* Bumped on any incompatible change of jf_pfor_api_t or of the rules. */
#define JF_PFOR_ABI_VERSION 1
#define JF_PFOR_CAPSULE "joblib_fast._threads.parallel_for_api"

typedef int (*jf_pfor_body_t)(void *ctx, Py_ssize_t start, Py_ssize_t stop,
                              int worker);

typedef struct {
    int abi_version;                /* JF_PFOR_ABI_VERSION of the package */
    /* 0, a body's first non-zero value, or -1 with an exception set. */
    int (*parallel_for)(Py_ssize_t start, Py_ssize_t stop, Py_ssize_t grain,
                        jf_pfor_body_t body, void *ctx, int n_workers);
    int (*max_workers)(int n_workers);
} jf_pfor_api_t;

static const jf_pfor_api_t *jf_pfor_api = NULL;

/* Fetch the table; 0, or -1 with ImportError set.  GIL held. */
static inline int jf_pfor_import(void)
{
    const jf_pfor_api_t *api;
    if (jf_pfor_api != NULL) return 0;
    api = (const jf_pfor_api_t *)PyCapsule_Import(JF_PFOR_CAPSULE, 0);
    if (api == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyErr_Format(PyExc_ImportError,
                     "joblib_fast.parallel_for: this module was built against "
                     "ABI version %d, and the installed joblib_fast has no "
                     "parallel_for table (%S): install a joblib_fast that "
                     "provides ABI version %d", JF_PFOR_ABI_VERSION,
                     value ? value : Py_None, JF_PFOR_ABI_VERSION);
        Py_XDECREF(type); Py_XDECREF(value); Py_XDECREF(tb);
        return -1;
    }
    if (api->abi_version != JF_PFOR_ABI_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "joblib_fast.parallel_for: this module was built against "
                     "ABI version %d (its joblib_fast/parallel_for.h), the "
                     "installed joblib_fast provides ABI version %d: rebuild "
                     "the module against the installed joblib_fast",
                     JF_PFOR_ABI_VERSION, api->abi_version);
        return -1;
    }
    jf_pfor_api = api;
    return 0;
}

static inline int jf_pfor_run(Py_ssize_t start, Py_ssize_t stop,
                              Py_ssize_t grain, jf_pfor_body_t body,
                              void *ctx, int n_workers)
{
    if (jf_pfor_api == NULL) {
        PyGILState_STATE gil = PyGILState_Ensure();
        PyErr_SetString(PyExc_RuntimeError,
                        "parallel_for() called before import_parallel_for()");
        PyGILState_Release(gil);
        return -1;
    }
    return jf_pfor_api->parallel_for(start, stop, grain, body, ctx, n_workers);
}

static inline int jf_pfor_max_workers(int n_workers)
{
    if (jf_pfor_api == NULL) return 1;
    return jf_pfor_api->max_workers(n_workers);
}

#endif /* JOBLIB_FAST_PARALLEL_FOR_H */
