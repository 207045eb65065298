/* Shared-memory segments for results born in shared memory (Linux):
 * the OS half of the segment interface of ``backends/processes/shm.py``.
 *
 * A segment is an anonymous memory file (memfd_create: no name in any
 * file system, freed with its last descriptor or mapping) mapped shared
 * in the worker.  Another platform puts its own header beside this one
 * with the same five functions (shm_open + shm_unlink on macOS, a
 * CreateFileMapping section on Windows) and _born_shared.c includes it.
 *
 * Plain C, no Python.h.  Every function returns 0 on success, -1 with
 * errno set on failure.
 */
#ifndef JF_SEGMENT_MEMFD_H
#define JF_SEGMENT_MEMFD_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stddef.h>
#include <sys/mman.h>
#include <unistd.h>

/* The name a worker's born-shared segments show in /proc/<pid>/maps
 * ("memfd:joblib_fast_result", as the segments results are copied into). */
#define JF_SEGMENT_NAME "joblib_fast_result"

#if defined(__linux__) && defined(MFD_CLOEXEC)
#define JF_SEGMENT_SUPPORTED 1
#else
#define JF_SEGMENT_SUPPORTED 0
#endif

/* MADV_POPULATE_WRITE (Linux 5.14): all the pages of a range allocated
 * and mapped writable in one call, far cheaper than one fault per page. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* A new segment of `size` bytes (zero-filled), mapped shared at *addr;
 * its descriptor in *fd.  `populate`: allocate its pages now (the caller
 * writes them all: NumPy's malloc), else as they are touched (calloc:
 * untouched pages cost nothing). */
static int jf_segment_create(size_t size, int populate, int *fd, void **addr)
{
#if JF_SEGMENT_SUPPORTED
    int f = memfd_create(JF_SEGMENT_NAME, MFD_CLOEXEC);
    if (f < 0)
        return -1;
    if (ftruncate(f, (off_t)size) != 0) {
        int err = errno;
        close(f);
        errno = err;
        return -1;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        close(f);
        errno = err;
        return -1;
    }
    if (populate)
        (void)madvise(p, size, MADV_POPULATE_WRITE);  /* else: faults */
    *fd = f;
    *addr = p;
    return 0;
#else
    (void)size; (void)populate; (void)fd; (void)addr;
    errno = ENOSYS;
    return -1;
#endif
}

/* Grow or shrink a segment that nobody else maps; it may move. */
static int jf_segment_resize(int fd, void **addr, size_t old_size,
                             size_t new_size)
{
#if JF_SEGMENT_SUPPORTED
    if (new_size > old_size && ftruncate(fd, (off_t)new_size) != 0)
        return -1;
    void *p = mremap(*addr, old_size, new_size, MREMAP_MAYMOVE);
    if (p == MAP_FAILED)
        return -1;
    if (new_size < old_size && ftruncate(fd, (off_t)new_size) != 0)
        return -1;   /* still mapped and usable: only memory is not freed */
    *addr = p;
    return 0;
#else
    (void)fd; (void)addr; (void)old_size; (void)new_size;
    errno = ENOSYS;
    return -1;
#endif
}

/* From now on this process's writes to `size` bytes of the segment from
 * `offset` on (mapped at addr) stay its own (copy-on-write pages): whoever
 * else maps the segment keeps its bytes as they are now.  The mapping
 * stays at the same address. */
static int jf_segment_make_private(int fd, void *addr, size_t size,
                                   size_t offset)
{
#if JF_SEGMENT_SUPPORTED
    void *p = mmap(addr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_FIXED, fd, (off_t)offset);
    return p == MAP_FAILED ? -1 : 0;
#else
    (void)fd; (void)addr; (void)size; (void)offset;
    errno = ENOSYS;
    return -1;
#endif
}

/* The reverse, for a segment nobody else maps any more: this process's
 * writes reach the segment again (its private pages are dropped), its
 * pages mapped at once. */
static int jf_segment_make_shared(int fd, void *addr, size_t size,
                                  size_t offset)
{
#if JF_SEGMENT_SUPPORTED
    /* MAP_POPULATE maps pages that exist far faster than one fault
     * each (and than MADV_POPULATE_WRITE, which is for new pages). */
    void *p = mmap(addr, size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd, (off_t)offset);
    return p == MAP_FAILED ? -1 : 0;
#else
    (void)fd; (void)addr; (void)size; (void)offset;
    errno = ENOSYS;
    return -1;
#endif
}

/* Drop this process's private copies of a range (it reads the segment's
 * bytes again): memory given back while a segment waits for reuse. */
static void jf_segment_drop_private(void *addr, size_t size)
{
#if JF_SEGMENT_SUPPORTED
    (void)madvise(addr, size, MADV_DONTNEED);
#else
    (void)addr; (void)size;
#endif
}

/* Unmap a segment and close its descriptor. */
static int jf_segment_release(int fd, void *addr, size_t size)
{
#if JF_SEGMENT_SUPPORTED
    int rc = munmap(addr, size);
    close(fd);
    return rc;
#else
    (void)fd; (void)addr; (void)size;
    errno = ENOSYS;
    return -1;
#endif
}

#endif /* JF_SEGMENT_MEMFD_H */
