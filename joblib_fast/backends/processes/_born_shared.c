/* Results born in shared memory: a NumPy data allocator (NEP 49,
 * PyDataMem_SetHandler) for process workers.
 *
 * Installed in a worker's main thread only (never in the user's process):
 * an array whose data is larger than the reply threshold (max_nbytes) is
 * allocated in a shared-memory segment (segment_memfd.h) instead of the
 * heap, so that returning it sends the segment's descriptor rather than a
 * copy of its bytes (arrays_out.ResultPacker).  Smaller arrays, and every
 * allocation when the threshold is "never", go to malloc as NumPy's own
 * allocator does.
 *
 *   worker: np.ones(n) --malloc hook--> segment: [header page | data]
 *   reply:  find(address) -> fd, offset --> dup(fd) sent with the reply
 *           make_private(segment): the worker's later writes stay its own
 *           (or lend(segment) when the worker holds no reference to the
 *           array any more: nothing can write to it, its mapping stays)
 *   parent: maps the data privately, the header shared
 *           (shm.attach_segment); when its array is collected it unmaps
 *           the data and sets the header's `released`
 *   worker: free hook --> the segment is "lent": kept (descriptor and
 *           mapping, its private pages dropped) until the parent released
 *           it, then reused, its pages already there, for the next large
 *           allocation of about its size
 *
 * A segment made private because the worker forked is never sent nor
 * reused (the child may still map it).  Before a fork every segment in
 * use is made private, so that a child and its parent never see each
 * other's writes, as with ordinary memory; cached and lent segments are
 * released (the child does not inherit them).
 *
 * A freed segment that was never sent is kept for the next large
 * allocation of about its size, as malloc keeps freed heap memory: a
 * worker's large temporaries then reuse pages instead of allocating new
 * ones each time.  Both kinds of kept segments are bounded (KEEP_*).
 *
 * Thread safety: one mutex guards the segment table (NumPy may free an
 * array in any thread; the handler lives in the arrays it allocated).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>

#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "segment_memfd.h"

enum {
    SEG_SHARED = 1,   /* in use, mapped by nobody else: may be sent */
    SEG_PRIVATE,      /* in use, sent (or forked) */
    SEG_CACHED,       /* freed, never sent: reusable at once */
    SEG_LENT,         /* freed, sent: reusable once the parent released it */
};

/* The first page of every segment: what the parent tells the worker.
 * The parent maps it shared (the data privately) and sets `released`
 * once its last array on the segment is gone. */
typedef struct {
    volatile uint32_t released;
} jf_header_t;

typedef struct {
    char *addr;       /* the data (what NumPy gets): the header before it */
    size_t size;      /* bytes of data */
    int fd;
    int state;
    int forked;       /* made private by a fork: never sent nor reused */
    int mapped_private;   /* this process's writes to it stay its own */
} jf_seg_t;

/* Freed segments kept for reuse, cached and lent ones together: at most
 * this many, of at most this many bytes in all (memory an idle worker
 * holds on to, against pages a worker allocates again for each large
 * result or temporary; `bench.py --only bigarray_out` checks it). */
#define KEEP_SEGMENTS 8
#define KEEP_BYTES ((size_t)512 << 20)

/* New segments up to this size get all their pages at once (the array
 * NumPy asked for is about to be written): cheaper than a fault per page.
 * Bigger ones get pages as they are touched, as heap memory does, so that
 * a huge np.empty of which a task uses a part takes no more memory than
 * that part. */
#define POPULATE_MAX_BYTES ((size_t)256 << 20)

/* Guards every static below except `threshold` (an atomic read). */
static pthread_mutex_t seg_lock = PTHREAD_MUTEX_INITIALIZER;
static jf_seg_t *segs = NULL;
static size_t n_segs = 0, cap_segs = 0;
static size_t n_kept = 0, kept_bytes = 0;
static size_t header = 4096;   /* a page: set at import */
/* Counters, for tests and diagnostics (stats()). */
static unsigned long long n_created = 0, n_freed = 0, n_sent = 0,
                          n_fallbacks = 0, n_moved_in = 0, n_resized = 0,
                          n_reused = 0, n_recycled = 0, n_lent_mapped = 0;

/* Data larger than this many bytes goes to a segment; SIZE_MAX: never. */
static volatile size_t threshold = SIZE_MAX;

static int kept(const jf_seg_t *e)
{
    return e->state == SEG_CACHED || e->state == SEG_LENT;
}

static jf_header_t *header_of(const jf_seg_t *e)
{
    return (jf_header_t *)(e->addr - header);
}

/* The segment in use that starts at p. */
static jf_seg_t *find_exact(void *p)
{
    for (size_t i = 0; i < n_segs; i++)
        if (segs[i].addr == p && !kept(&segs[i]))
            return &segs[i];
    return NULL;
}

static jf_seg_t *find_containing(uintptr_t p)
{
    for (size_t i = 0; i < n_segs; i++) {
        uintptr_t a = (uintptr_t)segs[i].addr;
        if (p >= a && p < a + segs[i].size && !kept(&segs[i]))
            return &segs[i];
    }
    return NULL;
}

static void unkeep(jf_seg_t *e)
{
    n_kept--;
    kept_bytes -= e->size;
}

static void seg_release(jf_seg_t *e)
{
    if (kept(e))
        unkeep(e);
    jf_segment_release(e->fd, e->addr - header, header + e->size);
    segs[e - segs] = segs[--n_segs];
}

/* A kept segment for `size` bytes, back in use: at least that big, less
 * than twice (a bigger one would hold memory nobody uses); a lent one
 * only once the parent released it. */
static jf_seg_t *take_kept(size_t size)
{
    for (size_t i = 0; i < n_segs; i++) {
        jf_seg_t *e = &segs[i];
        if (!kept(e) || e->size < size || e->size / 2 >= size)
            continue;
        if (e->state == SEG_LENT) {
            if (!header_of(e)->released)
                continue;
            if (e->mapped_private &&
                    jf_segment_make_shared(e->fd, e->addr, e->size, header)
                    != 0) {
                seg_release(e);   /* the last entry moved to i */
                i--;
                continue;
            }
            e->mapped_private = 0;
            header_of(e)->released = 0;
            n_recycled++;
        } else {
            n_reused++;
        }
        unkeep(e);
        e->state = SEG_SHARED;
        return e;
    }
    return NULL;
}

/* A segment of `size` bytes (zeroed if `zero`), or NULL (then the caller
 * uses malloc).  seg_lock held. */
static void *seg_new(size_t size, int zero)
{
    jf_seg_t *again = take_kept(size);
    if (again != NULL) {
        if (zero)
            memset(again->addr, 0, size);
        return again->addr;
    }
    if (n_segs == cap_segs) {
        size_t cap = cap_segs ? 2 * cap_segs : 16;
        jf_seg_t *grown = realloc(segs, cap * sizeof(*segs));
        if (grown == NULL)
            return NULL;
        segs = grown;
        cap_segs = cap;
    }
    int fd;
    void *base;
    if (size > SIZE_MAX - header ||
            jf_segment_create(header + size,
                              !zero && size <= POPULATE_MAX_BYTES,
                              &fd, &base) != 0) {
        n_fallbacks++;   /* out of descriptors or memory: the heap then */
        return NULL;
    }
    jf_seg_t *e = &segs[n_segs++];
    e->addr = (char *)base + header;
    e->size = size;
    e->fd = fd;
    e->state = SEG_SHARED;
    e->forked = 0;
    e->mapped_private = 0;
    n_created++;
    return e->addr;
}

/* Make room for `size` more kept bytes: release kept segments, those the
 * parent released first.  False if it cannot. */
static int keep_room(size_t size)
{
    if (size > KEEP_BYTES)
        return 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t i = 0;
        while (i < n_segs && (n_kept >= KEEP_SEGMENTS ||
                              kept_bytes + size > KEEP_BYTES)) {
            jf_seg_t *e = &segs[i];
            int idle = e->state == SEG_CACHED ||
                (e->state == SEG_LENT && header_of(e)->released);
            if (kept(e) && (pass == 1 || idle))
                seg_release(e);   /* the last entry moved to i */
            else
                i++;
        }
    }
    return n_kept < KEEP_SEGMENTS && kept_bytes + size <= KEEP_BYTES;
}

/* A segment in use is freed: kept for reuse when it can be, else
 * released. */
static void seg_free(jf_seg_t *e)
{
    n_freed++;
    int state = e->state == SEG_SHARED ? SEG_CACHED
        : (e->state == SEG_PRIVATE && !e->forked ? SEG_LENT : 0);
    if (state == 0) {
        seg_release(e);
        return;
    }
    char *addr = e->addr;
    int room = keep_room(e->size);
    e = find_exact(addr);   /* keep_room released others: entries moved */
    if (!room) {
        seg_release(e);
        return;
    }
    if (state == SEG_LENT && e->mapped_private)
        jf_segment_drop_private(e->addr, e->size);   /* of no more use */
    e->state = state;
    n_kept++;
    kept_bytes += e->size;
}

/* Release every kept segment: cached ones, and lent ones whether or not
 * the parent released them (it keeps its mapping: only the reuse is
 * given up). */
static void trim_kept(void)
{
    size_t i = 0;
    while (i < n_segs) {
        if (kept(&segs[i]))
            seg_release(&segs[i]);   /* the last entry moves to i */
        else
            i++;
    }
}

/* ------------------------------------------------------ NEP 49 hooks */

static void *hook_malloc(void *ctx, size_t size)
{
    (void)ctx;
    if (size > threshold && size > 0) {
        pthread_mutex_lock(&seg_lock);
        void *p = seg_new(size, 0);
        pthread_mutex_unlock(&seg_lock);
        if (p != NULL)
            return p;
    }
    return malloc(size);
}

static void *hook_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    if (elsize != 0 && nelem > SIZE_MAX / elsize)
        return NULL;
    size_t size = nelem * elsize;
    if (size > threshold && size > 0) {
        pthread_mutex_lock(&seg_lock);
        void *p = seg_new(size, 1);
        pthread_mutex_unlock(&seg_lock);
        if (p != NULL)
            return p;
    }
    return calloc(nelem, elsize);
}

static void *hook_realloc(void *ctx, void *ptr, size_t new_size)
{
    if (ptr == NULL)
        return hook_malloc(ctx, new_size);
    pthread_mutex_lock(&seg_lock);
    jf_seg_t *e = find_exact(ptr);
    if (e != NULL) {
        void *base = e->addr - header;
        if (new_size > threshold && new_size > 0 && e->state == SEG_SHARED &&
                new_size <= SIZE_MAX - header &&
                jf_segment_resize(e->fd, &base, header + e->size,
                                  header + new_size) == 0) {
            e->addr = (char *)base + header;
            e->size = new_size;
            n_resized++;
            pthread_mutex_unlock(&seg_lock);
            return e->addr;
        }
        /* A private segment (another process maps its file) is never
         * resized: its data moves, to a new segment or to the heap. */
        size_t old_size = e->size;
        void *q = NULL;
        if (new_size > threshold && new_size > 0) {
            q = seg_new(new_size, 0);
            e = find_exact(ptr);   /* the table may have moved */
        }
        if (q == NULL)
            q = malloc(new_size ? new_size : 1);
        if (q == NULL) {
            pthread_mutex_unlock(&seg_lock);
            return NULL;   /* the old block stays valid, as realloc's */
        }
        memcpy(q, ptr, old_size < new_size ? old_size : new_size);
        seg_free(e);
        pthread_mutex_unlock(&seg_lock);
        return q;
    }
    if (new_size > threshold && new_size > 0) {
        /* Heap data growing past the threshold moves into a segment. */
        void *q = seg_new(new_size, 0);
        if (q != NULL) {
            size_t old = malloc_usable_size(ptr);
            n_moved_in++;
            pthread_mutex_unlock(&seg_lock);
            memcpy(q, ptr, old < new_size ? old : new_size);
            free(ptr);
            return q;
        }
    }
    pthread_mutex_unlock(&seg_lock);
    return realloc(ptr, new_size);
}

static void hook_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)size;
    if (ptr == NULL)
        return;
    pthread_mutex_lock(&seg_lock);
    jf_seg_t *e = find_exact(ptr);
    if (e != NULL) {
        seg_free(e);
        pthread_mutex_unlock(&seg_lock);
        return;
    }
    pthread_mutex_unlock(&seg_lock);
    free(ptr);
}

static PyDataMem_Handler handler = {
    "joblib_fast_born_shared",
    1,
    {NULL, hook_malloc, hook_calloc, hook_realloc, hook_free},
};

/* ------------------------------------------------------------- fork */

/* Before a fork: every segment private in this process, so the child
 * (which inherits the mappings) and this process never share writes.
 * The lock is held across the fork and released on both sides. */
static void before_fork(void)
{
    pthread_mutex_lock(&seg_lock);
    trim_kept();
    for (size_t i = 0; i < n_segs; i++) {
        jf_seg_t *e = &segs[i];
        if (!e->mapped_private &&
                jf_segment_make_private(e->fd, e->addr, e->size, header)
                    == 0) {
            e->mapped_private = 1;
            if (e->state == SEG_SHARED)
                e->state = SEG_PRIVATE;
        }
        e->forked = 1;
    }
}

static void after_fork(void)
{
    pthread_mutex_unlock(&seg_lock);
}

/* --------------------------------------------------- Python functions */

static int installed = 0;

static PyObject *py_install(PyObject *self, PyObject *noargs)
{
    if (!JF_SEGMENT_SUPPORTED)
        Py_RETURN_FALSE;
    if (!installed) {
        if (pthread_atfork(before_fork, after_fork, after_fork) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
            return NULL;
        }
        installed = 1;
    }
    PyObject *capsule = PyCapsule_New(&handler, "mem_handler", NULL);
    if (capsule == NULL)
        return NULL;
    PyObject *old = PyDataMem_SetHandler(capsule);
    Py_DECREF(capsule);
    if (old == NULL)
        return NULL;
    Py_DECREF(old);
    Py_RETURN_TRUE;
}

static PyObject *py_set_threshold(PyObject *self, PyObject *arg)
{
    unsigned long long value = PyLong_AsUnsignedLongLong(arg);
    if (value == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    threshold = value >= SIZE_MAX ? SIZE_MAX : (size_t)value;
    Py_RETURN_NONE;
}

/* find(address) -> (fd, start, size, shared, offset) of the segment
 * holding `address` (its data starts at `offset` in the segment), or
 * None. */
static PyObject *py_find(PyObject *self, PyObject *arg)
{
    uintptr_t p = (uintptr_t)PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    pthread_mutex_lock(&seg_lock);
    jf_seg_t *e = find_containing(p);
    PyObject *out = NULL;
    if (e == NULL) {
        pthread_mutex_unlock(&seg_lock);
        Py_RETURN_NONE;
    }
    int fd = e->fd, shared = e->state == SEG_SHARED;
    unsigned long long start = (uintptr_t)e->addr, size = e->size;
    pthread_mutex_unlock(&seg_lock);
    out = Py_BuildValue("(iKKOK)", fd, start, size,
                        shared ? Py_True : Py_False,
                        (unsigned long long)header);
    return out;
}

/* The segment at `start` (`arg`) was sent: made private (its later
 * writes here stay this process's own), or lent (nothing here refers to
 * its arrays any more: it stays mapped as it is, to be reused as it is
 * once the parent released it).  True if done. */
static PyObject *mark_sent(PyObject *arg, int lend)
{
    void *p = (void *)(uintptr_t)PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    int done = 0;
    pthread_mutex_lock(&seg_lock);
    jf_seg_t *e = find_exact(p);
    if (e != NULL && e->state == SEG_SHARED) {
        if (lend) {
            n_lent_mapped++;
            done = 1;
        } else if (jf_segment_make_private(e->fd, e->addr, e->size,
                                           header) == 0) {
            e->mapped_private = 1;
            done = 1;
        }
        if (done) {
            e->state = SEG_PRIVATE;
            n_sent++;
        }
    }
    pthread_mutex_unlock(&seg_lock);
    return PyBool_FromLong(done);
}

/* make_private(start): see mark_sent. */
static PyObject *py_make_private(PyObject *self, PyObject *arg)
{
    return mark_sent(arg, 0);
}

/* lend(start): the caller checked that nothing here refers to the
 * segment's arrays; see mark_sent. */
static PyObject *py_lend(PyObject *self, PyObject *arg)
{
    return mark_sent(arg, 1);
}

static PyObject *py_trim(PyObject *self, PyObject *noargs)
{
    pthread_mutex_lock(&seg_lock);
    trim_kept();
    pthread_mutex_unlock(&seg_lock);
    Py_RETURN_NONE;
}

static PyObject *py_kept(PyObject *self, PyObject *noargs)
{
    pthread_mutex_lock(&seg_lock);
    size_t n = n_kept;
    pthread_mutex_unlock(&seg_lock);
    return PyLong_FromSize_t(n);
}

static PyObject *py_stats(PyObject *self, PyObject *noargs)
{
    pthread_mutex_lock(&seg_lock);
    unsigned long long live = 0, bytes = 0, shared = 0, lent = 0;
    for (size_t i = 0; i < n_segs; i++) {
        lent += segs[i].state == SEG_LENT;
        if (kept(&segs[i]))
            continue;
        live++;
        bytes += segs[i].size;
        shared += segs[i].state == SEG_SHARED;
    }
    PyObject *out = Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsKsKsKsKsKsK}", "created", n_created,
        "freed", n_freed, "sent", n_sent, "fallbacks", n_fallbacks,
        "moved_in", n_moved_in, "resized", n_resized, "reused", n_reused,
        "recycled", n_recycled, "sent_unreferenced", n_lent_mapped,
        "live", live, "live_bytes", bytes,
        "live_shared", shared, "kept", (unsigned long long)n_kept,
        "kept_bytes", (unsigned long long)kept_bytes, "lent", lent,
        "segments", (unsigned long long)n_segs);
    pthread_mutex_unlock(&seg_lock);
    return out;
}

static PyMethodDef methods[] = {
    {"install", py_install, METH_NOARGS,
     "install() -> bool: this thread's NumPy allocations go through the "
     "hook (False where segments are not supported)."},
    {"set_threshold", py_set_threshold, METH_O,
     "set_threshold(n): data above n bytes is allocated in a segment "
     "(2**64-1 or more: never)."},
    {"find", py_find, METH_O,
     "find(address) -> (fd, start, size, shared) or None."},
    {"make_private", py_make_private, METH_O,
     "make_private(start) -> bool: the segment was sent; this process's "
     "later writes stay its own."},
    {"trim", py_trim, METH_NOARGS,
     "trim(): release the freed segments kept for reuse (cached and "
     "lent)."},
    {"lend", py_lend, METH_O,
     "lend(start) -> bool: the segment was sent and nothing here refers "
     "to it: its mapping is kept for reuse."},
    {"kept", py_kept, METH_NOARGS,
     "kept() -> int: freed segments kept for reuse."},
    {"stats", py_stats, METH_NOARGS, "stats() -> dict of counters."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_born_shared",
    "NumPy allocator of process workers: large arrays born in shared "
    "memory (see the C file's opening comment).", -1, methods,
};

PyMODINIT_FUNC PyInit__born_shared(void)
{
    import_array();
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0)
        header = (size_t)page;
    return PyModule_Create(&module);
}
