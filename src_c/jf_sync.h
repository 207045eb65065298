/* jf_sync.h -- mutex, condition variable with timeouts, monotonic clock.
 *
 * Plain C99 + POSIX threads, no Python.h: the dispatch core calls these from
 * `with nogil:` sections.  Every function returns 0 on success or an errno
 * value; JF_TIMEDOUT is returned by a timed wait whose deadline passed.
 */
#ifndef JF_SYNC_H
#define JF_SYNC_H

#include <errno.h>
#include <pthread.h>
#include <time.h>

#define JF_TIMEDOUT ETIMEDOUT

typedef pthread_mutex_t jf_mutex_t;

typedef struct {
    pthread_cond_t cond;
} jf_cond_t;

static inline int jf_mutex_init(jf_mutex_t *m) { return pthread_mutex_init(m, NULL); }
static inline int jf_mutex_destroy(jf_mutex_t *m) { return pthread_mutex_destroy(m); }
static inline int jf_mutex_lock(jf_mutex_t *m) { return pthread_mutex_lock(m); }
static inline int jf_mutex_unlock(jf_mutex_t *m) { return pthread_mutex_unlock(m); }

/* Seconds of CPU the calling thread has used: with jf_clock_now, it tells
 * how much of a stretch of wall time the thread ran rather than waited
 * (for the GIL, say).  0.0 where the clock is missing. */
static inline double jf_thread_cpu_now(void)
{
#ifdef CLOCK_THREAD_CPUTIME_ID
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
#endif
    return 0.0;
}

/* The CPU clock of a thread, readable from other threads while it runs:
 * how much a thread that has not finished its task computed meanwhile (a
 * task waiting for another uses next to none).  jf_cpu_clock_read returns
 * seconds, or -1.0 where the platform gives no such clock. */
#if defined(__linux__)
typedef clockid_t jf_cpu_clock_t;
static inline jf_cpu_clock_t jf_cpu_clock_self(void)
{
    clockid_t c;
    if (pthread_getcpuclockid(pthread_self(), &c) != 0) return (clockid_t)-1;
    return c;
}
static inline double jf_cpu_clock_read(jf_cpu_clock_t c)
{
    struct timespec ts;
    if (c == (clockid_t)-1 || clock_gettime(c, &ts) != 0) return -1.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
#else
typedef int jf_cpu_clock_t;
static inline jf_cpu_clock_t jf_cpu_clock_self(void) { return 0; }
static inline double jf_cpu_clock_read(jf_cpu_clock_t c) { (void)c; return -1.0; }
#endif

/* Seconds on the monotonic clock: immune to wall-clock changes. */
static inline double jf_clock_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int jf_cond_init(jf_cond_t *c)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc) return rc;
    /* Timed waits are measured on the monotonic clock, like jf_clock_now. */
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (!rc) rc = pthread_cond_init(&c->cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

static inline int jf_cond_destroy(jf_cond_t *c) { return pthread_cond_destroy(&c->cond); }
static inline int jf_cond_signal(jf_cond_t *c) { return pthread_cond_signal(&c->cond); }
static inline int jf_cond_broadcast(jf_cond_t *c) { return pthread_cond_broadcast(&c->cond); }
static inline int jf_cond_wait(jf_cond_t *c, jf_mutex_t *m) { return pthread_cond_wait(&c->cond, m); }

/* Wait until signalled or until the monotonic clock reaches `deadline`
 * (seconds, as returned by jf_clock_now).  Returns 0 or JF_TIMEDOUT. */
static inline int jf_cond_wait_until(jf_cond_t *c, jf_mutex_t *m, double deadline)
{
    struct timespec ts;
    double whole;
    if (deadline <= 0.0) return JF_TIMEDOUT;
    whole = (double)(long long)deadline;
    ts.tv_sec = (time_t)whole;
    ts.tv_nsec = (long)((deadline - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
    if (ts.tv_nsec < 0) ts.tv_nsec = 0;
    return pthread_cond_timedwait(&c->cond, m, &ts);
}

#endif /* JF_SYNC_H */
