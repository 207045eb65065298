/* jf_cap.h -- the native thread pools' cap, in C.
 *
 * While n threads of this process run work that may call a multithreaded
 * library (BLAS), each such library's process-wide pool is capped at a
 * limit, so that n threads times the pool's threads do not oversubscribe
 * the cores.  Two kinds of holder share one count here: a parallel_for
 * that runs on the pool (no GIL, no Python: a hold is a mutex and, on the
 * first and last holder, the libraries' set functions), and the threading
 * backend's calls (through _threads.cap_hold).  The lowest limit held
 * wins; the libraries get their own sizes back when the last holder lets
 * go, whichever kind it is.
 *
 * The libraries are registered from Python (joblib_fast._native_threads
 * finds them with threadpoolctl): a set and a get function each, for the
 * libraries whose pool is process-wide and sized by a `void set(int)` /
 * `int get(void)` pair (OpenBLAS with its own threads, MKL).  Until one is
 * registered a hold is one atomic load.
 *
 * Plain C99 on jf_platform.h; no Python.h.
 */
#ifndef JF_CAP_H
#define JF_CAP_H

#include <string.h>

#include "jf_platform.h"

#define JF_CAP_MAX_LIBS 8
/* Limits above this are held as this (no machine here has pools that
 * large, and the count is a small array). */
#define JF_CAP_MAX_LIMIT 256

typedef void (*jf_cap_set_t)(int n);
typedef int (*jf_cap_get_t)(void);

typedef struct {
    jf_cap_set_t set;
    jf_cap_get_t get;
    int original;      /* its size before the first hold; 0: not saved */
} jf_cap_lib_t;

typedef struct {
    jf_mutex_t lock;
    int n_libs;                       /* atomic: read without the lock */
    jf_cap_lib_t libs[JF_CAP_MAX_LIBS];
    int held[JF_CAP_MAX_LIMIT + 1];   /* limit -> holders */
    int n_held;                       /* holders, all limits */
    int applied;                      /* the limit the libraries have; 0 */
    long holds;                       /* holds taken (for the tests) */
} jf_cap_t;

static jf_cap_t jf_cap;

static inline int jf_cap_init(void)
{
    memset(&jf_cap, 0, sizeof(jf_cap));
    return jf_mutex_init(&jf_cap.lock);
}

/* A library's size as the cap reads it (at least 1). */
static inline int jf_cap_size(const jf_cap_lib_t *lib)
{
    int n = lib->get();
    return n < 1 ? 1 : n;
}

/* Give the libraries the lowest limit held, or their sizes back (lock
 * held).  A library already below the limit keeps its size. */
static inline void jf_cap_apply(void)
{
    int want = 0, i, target;
    jf_cap_lib_t *lib;
    if (jf_cap.n_held > 0) {
        for (want = 1; want <= JF_CAP_MAX_LIMIT && !jf_cap.held[want]; want++)
            ;
    }
    if (want == jf_cap.applied) return;
    for (i = 0; i < jf_cap.n_libs; i++) {
        lib = &jf_cap.libs[i];
        if (want == 0) {
            if (lib->original) lib->set(lib->original);
            lib->original = 0;
            continue;
        }
        if (!lib->original) lib->original = jf_cap_size(lib);
        target = want < lib->original ? want : lib->original;
        if (jf_cap_size(lib) != target) lib->set(target);
    }
    jf_cap.applied = want;
}

/* Add a library (idempotent): 0, or ENOSPC when the table is full.
 * Holds already running cap it at once. */
static inline int jf_cap_register(jf_cap_set_t set, jf_cap_get_t get)
{
    int i, rc = 0, target;
    jf_cap_lib_t *lib;
    jf_mutex_lock(&jf_cap.lock);
    for (i = 0; i < jf_cap.n_libs; i++)
        if (jf_cap.libs[i].set == set) goto done;
    if (jf_cap.n_libs == JF_CAP_MAX_LIBS) { rc = ENOSPC; goto done; }
    lib = &jf_cap.libs[i];
    lib->set = set;
    lib->get = get;
    lib->original = 0;
    if (jf_cap.applied > 0) {
        lib->original = jf_cap_size(lib);
        target = jf_cap.applied < lib->original ? jf_cap.applied
                                                : lib->original;
        if (target != lib->original) lib->set(target);
    }
    jf_int_store(&jf_cap.n_libs, i + 1);
done:
    jf_mutex_unlock(&jf_cap.lock);
    return rc;
}

/* Hold a cap of `limit` threads (>= 1); returns what to pass to
 * jf_cap_release: 0 when there is nothing to cap (no library). */
static inline int jf_cap_hold(int limit)
{
    if (jf_int_load(&jf_cap.n_libs) == 0) return 0;
    if (limit < 1) limit = 1;
    if (limit > JF_CAP_MAX_LIMIT) limit = JF_CAP_MAX_LIMIT;
    jf_mutex_lock(&jf_cap.lock);
    jf_cap.held[limit]++;
    jf_cap.n_held++;
    jf_cap.holds++;
    jf_cap_apply();
    jf_mutex_unlock(&jf_cap.lock);
    return limit;
}

static inline void jf_cap_release(int token)
{
    if (token <= 0) return;
    jf_mutex_lock(&jf_cap.lock);
    if (jf_cap.held[token] > 0) {
        jf_cap.held[token]--;
        jf_cap.n_held--;
        jf_cap_apply();
    }
    jf_mutex_unlock(&jf_cap.lock);
}

/* In a child just forked: no holder of the parent runs here, the lock may
 * have been taken by a thread that does not exist here.  The libraries get
 * their sizes back (a process worker then caps its own for good). */
static inline void jf_cap_after_fork_child(void)
{
    jf_mutex_init(&jf_cap.lock);
    memset(jf_cap.held, 0, sizeof(jf_cap.held));
    jf_cap.n_held = 0;
    jf_cap_apply();
}

#endif /* JF_CAP_H */
