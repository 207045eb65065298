/* jf_order.h -- the ordered completion tracker of the dispatch core.
 *
 * Batches are numbered 0, 1, 2, ... in input order as the calling thread
 * forms them.  Workers finish them in any order.  The tracker records which
 * are done, the longest finished prefix (what an ordered consumer may
 * release) and the completion order (what an unordered consumer releases).
 *
 * Not thread-safe by itself: the caller holds the call's jf_mutex_t.
 * Plain C99, no Python.h.  Functions returning int give 0 or ENOMEM/EINVAL.
 */
#ifndef JF_ORDER_H
#define JF_ORDER_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    unsigned char *done;     /* done[b] != 0 once batch b finished */
    int64_t *completed;      /* batch ids in completion order */
    int64_t capacity;        /* allocated slots in both arrays */
    int64_t n_batches;       /* batches registered so far */
    int64_t n_done;          /* batches finished so far (= entries in completed) */
    int64_t prefix;          /* batches 0 .. prefix-1 are all done */
} jf_order_t;

static inline void jf_order_init(jf_order_t *o)
{
    memset(o, 0, sizeof(*o));
}

static inline void jf_order_free(jf_order_t *o)
{
    free(o->done);
    free(o->completed);
    memset(o, 0, sizeof(*o));
}

/* Register one more batch; returns its id in *out_id. */
static inline int jf_order_add(jf_order_t *o, int64_t *out_id)
{
    if (o->n_batches == o->capacity) {
        int64_t cap = o->capacity ? o->capacity * 2 : 64;
        unsigned char *d = (unsigned char *)realloc(o->done, (size_t)cap);
        if (!d) return ENOMEM;
        o->done = d;
        int64_t *c = (int64_t *)realloc(o->completed, (size_t)cap * sizeof(int64_t));
        if (!c) return ENOMEM;
        o->completed = c;
        memset(o->done + o->capacity, 0, (size_t)(cap - o->capacity));
        o->capacity = cap;
    }
    *out_id = o->n_batches++;
    return 0;
}

/* Mark batch `id` finished and advance the prefix. */
static inline int jf_order_mark_done(jf_order_t *o, int64_t id)
{
    if (id < 0 || id >= o->n_batches || o->done[id]) return EINVAL;
    o->done[id] = 1;
    o->completed[o->n_done++] = id;
    while (o->prefix < o->n_batches && o->done[o->prefix]) o->prefix++;
    return 0;
}

#endif /* JF_ORDER_H */
