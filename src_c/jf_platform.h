/* jf_platform.h -- everything of the C core that differs by platform.
 *
 * The only C file that knows the platform: the scheduler (jf_pool.h), the
 * completion tracker (jf_order.h) and the Cython modules use these names
 * and nothing of pthreads, Win32 or a compiler's builtins.  Plain C99, no
 * Python.h.  One section per mechanism, the implementations side by side:
 *
 *   mutex, condition variable   pthreads (Linux, BSD, macOS), SRWLOCK and
 *                               CONDITION_VARIABLE (Windows, Vista on)
 *   timed waits                 absolute on a monotonic clock where the
 *                               condition variable can use one
 *                               (pthread_condattr_setclock), relative
 *                               elsewhere (macOS' pthread_cond_timedwait_
 *                               relative_np, Windows' milliseconds)
 *   clocks                      monotonic wall time, a thread's CPU time
 *                               (its own, or another's while it runs)
 *   atomics                     GCC/Clang __atomic builtins (MinGW too),
 *                               Interlocked* for MSVC
 *   thread-local storage, yield, spin-pause, process id, thread start,
 *   a count of the shared libraries loaded
 *
 * Functions returning int give 0 or an errno value; JF_TIMEDOUT is what a
 * timed wait returns once its deadline has passed.
 */
#ifndef JF_PLATFORM_H
#define JF_PLATFORM_H

/* dl_iterate_phdr (jf_loaded_images) is a GNU extension in glibc: this
 * takes effect when no system header came before (Python.h defines it). */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#  define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(_WIN32)
#  define JF_WINDOWS 1
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  ifndef NOMINMAX
#    define NOMINMAX
#  endif
#  include <windows.h>
#  include <process.h>
#  if defined(_WIN32_WINNT) && _WIN32_WINNT < 0x0600
#    error "joblib_fast needs Windows Vista or later (SRWLOCK, CONDITION_VARIABLE)"
#  endif
#else
#  include <pthread.h>
#  include <sched.h>
#  include <time.h>
#  include <unistd.h>
#  if defined(__APPLE__)
#    define JF_DARWIN 1
#    include <mach/mach.h>
#    if defined(__ENVIRONMENT_MAC_OS_X_VERSION_MIN_REQUIRED__) && \
        __ENVIRONMENT_MAC_OS_X_VERSION_MIN_REQUIRED__ < 101200
#      error "joblib_fast needs macOS 10.12 or later (clock_gettime)"
#    endif
#  endif
#endif

/* The atomics: compiler builtins wherever the compiler is GCC or Clang
 * (Linux, macOS, MinGW, clang-cl); Interlocked* under MSVC.
 * JF_FORCE_INTERLOCKED selects the latter under MinGW too, so that the
 * MSVC branch is compiled and run by the cross-compiled stress test. */
#if defined(_WIN32) && (defined(JF_FORCE_INTERLOCKED) || \
    (defined(_MSC_VER) && !defined(__clang__)))
#  define JF_INTERLOCKED 1
#elif !defined(__GNUC__) && !defined(__clang__)
#  error "jf_platform.h: no atomics for this compiler (GCC, Clang or MSVC)"
#endif

#define JF_TIMEDOUT ETIMEDOUT

/* ------------------------------------------------------------- clocks */

#if defined(JF_WINDOWS)

/* Seconds on the monotonic clock: immune to wall-clock changes. */
static inline double jf_clock_now(void)
{
    /* The frequency is fixed at boot and cheap to read: no cached copy
     * for threads to race on. */
    LARGE_INTEGER now, freq;
    QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&now);
    return (double)now.QuadPart / (double)freq.QuadPart;
}

/* Kernel + user time, counted in scheduler ticks by Windows: coarser than
 * elsewhere, so short stretches read as 0 or a whole tick. */
static inline double jf_thread_cpu_now(void)
{
    FILETIME created, exited, kernel, user;
    unsigned long long ticks;       /* 100 ns units */
    if (!GetThreadTimes(GetCurrentThread(), &created, &exited, &kernel, &user))
        return 0.0;
    ticks = ((unsigned long long)kernel.dwHighDateTime << 32) | kernel.dwLowDateTime;
    ticks += ((unsigned long long)user.dwHighDateTime << 32) | user.dwLowDateTime;
    return (double)ticks * 1e-7;
}

#else

/* Seconds on the monotonic clock: immune to wall-clock changes. */
static inline double jf_clock_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

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

#endif

/* The CPU clock of a thread, readable from other threads while it runs:
 * how much a thread that has not finished its task computed meanwhile (a
 * task waiting for another uses next to none).  jf_cpu_clock_self names
 * the calling thread's; jf_cpu_clock_read returns its seconds, or -1.0
 * where the platform gives no such clock (the thread has exited, say). */
#if defined(JF_WINDOWS)

/* The thread's id: a handle is opened for each read (GetCurrentThread()
 * names only the caller, and a duplicated handle would need closing). */
typedef DWORD jf_cpu_clock_t;

static inline jf_cpu_clock_t jf_cpu_clock_self(void) { return GetCurrentThreadId(); }

static inline double jf_cpu_clock_read(jf_cpu_clock_t c)
{
    FILETIME created, exited, kernel, user;
    unsigned long long ticks;       /* 100 ns units */
    HANDLE h = OpenThread(THREAD_QUERY_LIMITED_INFORMATION, FALSE, c);
    BOOL ok;
    if (h == NULL) return -1.0;
    ok = GetThreadTimes(h, &created, &exited, &kernel, &user);
    CloseHandle(h);
    if (!ok) return -1.0;
    ticks = ((unsigned long long)kernel.dwHighDateTime << 32) | kernel.dwLowDateTime;
    ticks += ((unsigned long long)user.dwHighDateTime << 32) | user.dwLowDateTime;
    return (double)ticks * 1e-7;
}

#elif defined(JF_DARWIN)

/* No pthread_getcpuclockid on macOS: the thread's Mach port, valid while
 * the thread lives, and its basic info. */
typedef mach_port_t jf_cpu_clock_t;

static inline jf_cpu_clock_t jf_cpu_clock_self(void)
{
    return pthread_mach_thread_np(pthread_self());
}

static inline double jf_cpu_clock_read(jf_cpu_clock_t c)
{
    thread_basic_info_data_t info;
    mach_msg_type_number_t count = THREAD_BASIC_INFO_COUNT;
    if (thread_info(c, THREAD_BASIC_INFO, (thread_info_t)&info, &count)
            != KERN_SUCCESS)
        return -1.0;
    return (double)info.user_time.seconds + (double)info.system_time.seconds
        + (double)(info.user_time.microseconds + info.system_time.microseconds) * 1e-6;
}

#else

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

#endif

/* Whether a thread of this process (jf_thread_id() of it) is running or
 * waiting for a CPU (1), or asleep: blocked on a lock, a condition, I/O
 * (0); -1 where the platform does not tell.  A thread that computes but
 * got no CPU for a while (a busy machine) used no CPU time either: this
 * tells it from one that waits. */
#if defined(__linux__)

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>

typedef long jf_thread_id_t;

static inline jf_thread_id_t jf_thread_id(void) { return (long)syscall(SYS_gettid); }

static inline int jf_thread_runnable(jf_thread_id_t tid)
{
    char path[64], buf[256], *end;
    ssize_t n;
    int fd;
    snprintf(path, sizeof(path), "/proc/self/task/%ld/stat", tid);
    fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    end = strrchr(buf, ')');        /* the name may hold spaces and ')' */
    if (end == NULL || end[1] == '\0' || end[2] == '\0') return -1;
    return end[2] == 'R';
}

#elif defined(JF_DARWIN)

typedef mach_port_t jf_thread_id_t;

static inline jf_thread_id_t jf_thread_id(void) { return pthread_mach_thread_np(pthread_self()); }

static inline int jf_thread_runnable(jf_thread_id_t t)
{
    thread_basic_info_data_t info;
    mach_msg_type_number_t count = THREAD_BASIC_INFO_COUNT;
    if (thread_info(t, THREAD_BASIC_INFO, (thread_info_t)&info, &count)
            != KERN_SUCCESS)
        return -1;
    return info.run_state == TH_STATE_RUNNING;
}

#else

typedef long jf_thread_id_t;

static inline jf_thread_id_t jf_thread_id(void) { return 0; }

static inline int jf_thread_runnable(jf_thread_id_t t) { (void)t; return -1; }

#endif

/* --------------------------------------- mutex and condition variable */

#if defined(JF_WINDOWS)

typedef SRWLOCK jf_mutex_t;

typedef struct {
    CONDITION_VARIABLE cond;
} jf_cond_t;

static inline int jf_mutex_init(jf_mutex_t *m) { InitializeSRWLock(m); return 0; }
static inline int jf_mutex_destroy(jf_mutex_t *m) { (void)m; return 0; }
static inline int jf_mutex_lock(jf_mutex_t *m) { AcquireSRWLockExclusive(m); return 0; }
static inline int jf_mutex_unlock(jf_mutex_t *m) { ReleaseSRWLockExclusive(m); return 0; }

static inline int jf_cond_init(jf_cond_t *c) { InitializeConditionVariable(&c->cond); return 0; }
static inline int jf_cond_destroy(jf_cond_t *c) { (void)c; return 0; }
static inline int jf_cond_signal(jf_cond_t *c) { WakeConditionVariable(&c->cond); return 0; }
static inline int jf_cond_broadcast(jf_cond_t *c) { WakeAllConditionVariable(&c->cond); return 0; }

static inline int jf_cond_wait(jf_cond_t *c, jf_mutex_t *m)
{
    return SleepConditionVariableSRW(&c->cond, m, INFINITE, 0) ? 0 : EINVAL;
}

#else

typedef pthread_mutex_t jf_mutex_t;

typedef struct {
    pthread_cond_t cond;
} jf_cond_t;

static inline int jf_mutex_init(jf_mutex_t *m) { return pthread_mutex_init(m, NULL); }
static inline int jf_mutex_destroy(jf_mutex_t *m) { return pthread_mutex_destroy(m); }
static inline int jf_mutex_lock(jf_mutex_t *m) { return pthread_mutex_lock(m); }
static inline int jf_mutex_unlock(jf_mutex_t *m) { return pthread_mutex_unlock(m); }

static inline int jf_cond_init(jf_cond_t *c)
{
#if defined(JF_DARWIN)
    /* No clock to choose: timed waits are relative (jf_cond_wait_until). */
    return pthread_cond_init(&c->cond, NULL);
#else
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc) return rc;
    /* Timed waits are measured on the monotonic clock, like jf_clock_now. */
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (!rc) rc = pthread_cond_init(&c->cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
#endif
}

static inline int jf_cond_destroy(jf_cond_t *c) { return pthread_cond_destroy(&c->cond); }
static inline int jf_cond_signal(jf_cond_t *c) { return pthread_cond_signal(&c->cond); }
static inline int jf_cond_broadcast(jf_cond_t *c) { return pthread_cond_broadcast(&c->cond); }
static inline int jf_cond_wait(jf_cond_t *c, jf_mutex_t *m) { return pthread_cond_wait(&c->cond, m); }

#endif

/* Wait until signalled or until the monotonic clock reaches `deadline`
 * (seconds, as returned by jf_clock_now; <= 0 has passed).  Returns 0 or
 * JF_TIMEDOUT; like any wait it may return 0 early, so callers loop on
 * their condition.  Where the wait is relative, a timeout that the
 * system's timer ends before the deadline is such an early 0, so that
 * JF_TIMEDOUT always means the deadline has passed. */
static inline int jf_cond_wait_until(jf_cond_t *c, jf_mutex_t *m, double deadline)
{
#if defined(JF_WINDOWS)
    double left;
    DWORD ms;
    if (deadline <= 0.0) return JF_TIMEDOUT;
    left = deadline - jf_clock_now();
    if (left <= 0.0) return JF_TIMEDOUT;
    /* Rounded up; at most just under INFINITE (about 49 days). */
    ms = left < 4.0e6 ? (DWORD)(left * 1000.0) + 1 : (DWORD)0xFFFFFFFEu;
    if (SleepConditionVariableSRW(&c->cond, m, ms, 0)) return 0;
    if (GetLastError() != ERROR_TIMEOUT) return EINVAL;
    return jf_clock_now() >= deadline ? JF_TIMEDOUT : 0;
#elif defined(JF_DARWIN)
    struct timespec ts;
    double left;
    int rc;
    if (deadline <= 0.0) return JF_TIMEDOUT;
    left = deadline - jf_clock_now();
    if (left <= 0.0) return JF_TIMEDOUT;
    if (left > 1.0e9) left = 1.0e9;         /* decades: keeps tv_sec in range */
    ts.tv_sec = (time_t)left;
    ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
    if (ts.tv_nsec < 0) ts.tv_nsec = 0;
    rc = pthread_cond_timedwait_relative_np(&c->cond, m, &ts);
    if (rc == ETIMEDOUT) return jf_clock_now() >= deadline ? JF_TIMEDOUT : 0;
    return rc;
#else
    struct timespec ts;
    double whole;
    if (deadline <= 0.0) return JF_TIMEDOUT;
    whole = (double)(long long)deadline;
    ts.tv_sec = (time_t)whole;
    ts.tv_nsec = (long)((deadline - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
    if (ts.tv_nsec < 0) ts.tv_nsec = 0;
    return pthread_cond_timedwait(&c->cond, m, &ts);
#endif
}

/* ------------------------------------------------------------ atomics */

/* Loads acquire, stores release, read-modify-writes acquire-release (a
 * failed compare-and-swap: acquire).  One set of functions per type the
 * core shares between threads: int, ptrdiff_t, int64_t, unsigned long,
 * pointers.
 * Under MSVC every operation, loads included, is an Interlocked call: a
 * locked instruction per load (a plain load elsewhere) in exchange for
 * correctness that does not hang on /volatile settings or the CPU. */

#if defined(JF_INTERLOCKED)

static inline int jf_int_load(int *p)
{
    return (int)InterlockedCompareExchange((volatile LONG *)p, 0, 0);
}
static inline void jf_int_store(int *p, int v)
{
    InterlockedExchange((volatile LONG *)p, (LONG)v);
}
/* Adds d; returns the new value. */
static inline int jf_int_add(int *p, int d)
{
    return (int)InterlockedExchangeAdd((volatile LONG *)p, (LONG)d) + d;
}
/* 1 when *p was *expected and is now desired; else 0, *expected = *p. */
static inline int jf_int_cas(int *p, int *expected, int desired)
{
    LONG seen = InterlockedCompareExchange((volatile LONG *)p, (LONG)desired,
                                           (LONG)*expected);
    if (seen == (LONG)*expected) return 1;
    *expected = (int)seen;
    return 0;
}

#if defined(_WIN64)
#  define JF_SSIZE_CAS(p, v, e) InterlockedCompareExchange64((volatile LONG64 *)(p), (v), (e))
#else
#  define JF_SSIZE_CAS(p, v, e) InterlockedCompareExchange((volatile LONG *)(p), (v), (e))
#endif

static inline ptrdiff_t jf_ssize_load(ptrdiff_t *p)
{
    return (ptrdiff_t)JF_SSIZE_CAS(p, 0, 0);
}
/* No ordering: the value only (a compare-and-swap follows). */
static inline ptrdiff_t jf_ssize_load_relaxed(ptrdiff_t *p)
{
    return (ptrdiff_t)JF_SSIZE_CAS(p, 0, 0);
}
/* May fail spuriously elsewhere (call it in a loop). */
static inline int jf_ssize_cas(ptrdiff_t *p, ptrdiff_t *expected, ptrdiff_t desired)
{
    ptrdiff_t seen = (ptrdiff_t)JF_SSIZE_CAS(p, desired, *expected);
    if (seen == *expected) return 1;
    *expected = seen;
    return 0;
}

static inline int64_t jf_int64_load(int64_t *p)
{
    return (int64_t)InterlockedCompareExchange64((volatile LONG64 *)p, 0, 0);
}
static inline int64_t jf_int64_load_relaxed(int64_t *p)
{
    return (int64_t)InterlockedCompareExchange64((volatile LONG64 *)p, 0, 0);
}
static inline int jf_int64_cas(int64_t *p, int64_t *expected, int64_t desired)
{
    int64_t seen = (int64_t)InterlockedCompareExchange64(
        (volatile LONG64 *)p, (LONG64)desired, (LONG64)*expected);
    if (seen == *expected) return 1;
    *expected = seen;
    return 0;
}

static inline unsigned long jf_ulong_load(unsigned long *p)
{
    /* unsigned long is 32 bits on Windows, like LONG. */
    return (unsigned long)InterlockedCompareExchange((volatile LONG *)p, 0, 0);
}
static inline unsigned long jf_ulong_add(unsigned long *p, unsigned long d)
{
    return (unsigned long)InterlockedExchangeAdd((volatile LONG *)p, (LONG)d) + d;
}

static inline void *jf_ptr_load(void **p)
{
    return InterlockedCompareExchangePointer((PVOID volatile *)p, NULL, NULL);
}
static inline void jf_ptr_store(void **p, void *v)
{
    InterlockedExchangePointer((PVOID volatile *)p, v);
}

#else

static inline int jf_int_load(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void jf_int_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
/* Adds d; returns the new value. */
static inline int jf_int_add(int *p, int d)
{
    return __atomic_add_fetch(p, d, __ATOMIC_ACQ_REL);
}
/* 1 when *p was *expected and is now desired; else 0, *expected = *p. */
static inline int jf_int_cas(int *p, int *expected, int desired)
{
    return __atomic_compare_exchange_n(p, expected, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static inline ptrdiff_t jf_ssize_load(ptrdiff_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
/* No ordering: the value only (a compare-and-swap follows). */
static inline ptrdiff_t jf_ssize_load_relaxed(ptrdiff_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
/* May fail spuriously (call it in a loop). */
static inline int jf_ssize_cas(ptrdiff_t *p, ptrdiff_t *expected, ptrdiff_t desired)
{
    return __atomic_compare_exchange_n(p, expected, desired, 1,
                                       __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

static inline int64_t jf_int64_load(int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
/* No ordering: the value only (a compare-and-swap follows). */
static inline int64_t jf_int64_load_relaxed(int64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
/* Strong; a failure is relaxed (the loop or caller reads again). */
static inline int jf_int64_cas(int64_t *p, int64_t *expected, int64_t desired)
{
    return __atomic_compare_exchange_n(p, expected, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

static inline unsigned long jf_ulong_load(unsigned long *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline unsigned long jf_ulong_add(unsigned long *p, unsigned long d)
{
    return __atomic_add_fetch(p, d, __ATOMIC_ACQ_REL);
}

static inline void *jf_ptr_load(void **p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void jf_ptr_store(void **p, void *v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

#endif

/* ----------------------------------------------- thread-local storage */

#if defined(_MSC_VER)
#  define JF_THREAD_LOCAL __declspec(thread)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#  define JF_THREAD_LOCAL _Thread_local
#else
#  define JF_THREAD_LOCAL __thread
#endif

/* ------------------------------------------------ yield and spin-pause */

/* Give the CPU to another runnable thread, if any. */
static inline void jf_yield(void)
{
#if defined(JF_WINDOWS)
    SwitchToThread();
#else
    sched_yield();
#endif
}

/* One step of a busy-wait: tells the CPU (and a hyperthread sibling). */
static inline void jf_cpu_relax(void)
{
#if defined(JF_WINDOWS)
    YieldProcessor();
#elif defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---------------------------------------------------------- processes */

static inline long jf_process_id(void)
{
#if defined(JF_WINDOWS)
    return (long)GetCurrentProcessId();
#else
    return (long)getpid();
#endif
}

/* ------------------------------------------------- loaded libraries */

/* A number that changes when the process loads a shared library (glibc,
 * FreeBSD: dl_iterate_phdr's load counter; macOS: the image count), -1
 * where there is no cheap way to tell.  One step of the loader's list:
 * tens of nanoseconds. */
#if defined(__linux__) || defined(__FreeBSD__)
#  include <link.h>
#endif
#if (defined(__linux__) && (!defined(__GLIBC__) || defined(__USE_GNU))) || \
    defined(__FreeBSD__)
static int jf_loads_cb(struct dl_phdr_info *info, size_t size, void *out)
{
    (void)size;
    *(long long *)out = (long long)info->dlpi_adds;
    return 1;  /* the counter is the same in every entry: stop */
}
static inline long long jf_loaded_images(void)
{
    long long adds = -1;
    dl_iterate_phdr(jf_loads_cb, &adds);
    return adds;
}
#elif defined(JF_DARWIN)
#  include <mach-o/dyld.h>
static inline long long jf_loaded_images(void) { return (long long)_dyld_image_count(); }
#else
static inline long long jf_loaded_images(void) { return -1; }
#endif

/* ------------------------------------------------------------ threads */

/* Plain C threads, for the C tests of the core (the pool's own threads
 * are Python threads).  jf_thread_start: 0 or an errno value. */

typedef struct {
    void (*fn)(void *);
    void *arg;
} jf_thread_start_t;

#if defined(JF_WINDOWS)

typedef HANDLE jf_thread_t;

static inline unsigned __stdcall jf_thread_main(void *start)
{
    jf_thread_start_t s = *(jf_thread_start_t *)start;
    free(start);
    s.fn(s.arg);
    return 0;
}

static inline int jf_thread_start(jf_thread_t *t, void (*fn)(void *), void *arg)
{
    uintptr_t h;
    jf_thread_start_t *s = (jf_thread_start_t *)malloc(sizeof(*s));
    if (s == NULL) return ENOMEM;
    s->fn = fn;
    s->arg = arg;
    h = _beginthreadex(NULL, 0, jf_thread_main, s, 0, NULL);
    if (h == 0) { free(s); return EAGAIN; }
    *t = (HANDLE)h;
    return 0;
}

static inline int jf_thread_join(jf_thread_t t)
{
    DWORD rc = WaitForSingleObject(t, INFINITE);
    CloseHandle(t);
    return rc == WAIT_OBJECT_0 ? 0 : EINVAL;
}

#else

typedef pthread_t jf_thread_t;

static inline void *jf_thread_main(void *start)
{
    jf_thread_start_t s = *(jf_thread_start_t *)start;
    free(start);
    s.fn(s.arg);
    return NULL;
}

static inline int jf_thread_start(jf_thread_t *t, void (*fn)(void *), void *arg)
{
    int rc;
    jf_thread_start_t *s = (jf_thread_start_t *)malloc(sizeof(*s));
    if (s == NULL) return ENOMEM;
    s->fn = fn;
    s->arg = arg;
    rc = pthread_create(t, NULL, jf_thread_main, s);
    if (rc) free(s);
    return rc;
}

static inline int jf_thread_join(jf_thread_t t) { return pthread_join(t, NULL); }

#endif

#endif /* JF_PLATFORM_H */
