/* slots.c - slot pool (see slots.h). */
#include "slots.h"

#include <stdlib.h>

#include "../proto/allot_error.h"

_Static_assert(sizeof(uintptr_t) == 8,
               "slot handles pack 64 bits into a pointer-sized value");

int slot_pool_init(struct slot_pool *p, uint32_t cap)
{
    /* calloc of a large array maps zero pages: memory is only touched as
     * entries are used (the bump pointer hands them out in order). */
    p->e = calloc(cap, sizeof *p->e);
    if (p->e == NULL) {
        return ALLOT_ENOMEM;
    }
    p->cap = cap;
    atomic_init(&p->bump, 0);
    atomic_init(&p->free_head, 0);
    atomic_init(&p->in_use, 0);
    atomic_init(&p->stale_releases, 0);
    return 0;
}

void slot_pool_close(struct slot_pool *p)
{
    free(p->e);
    p->e = NULL;
    p->cap = 0;
}

uint32_t slot_pool_get(struct slot_pool *p)
{
    uint64_t head = atomic_load_explicit(&p->free_head, memory_order_acquire);
    while ((head & 0xffffffffu) != 0) {
        uint32_t idx = (uint32_t)(head & 0xffffffffu) - 1u;
        uint32_t next =
            atomic_load_explicit(&p->e[idx].next, memory_order_relaxed);
        /* The tag changes on every push and pop, so a head that went away
         * and came back with another successor fails this CAS. */
        uint64_t tag = (head >> 32) + 1u;
        uint64_t want = (tag << 32) | next;
        if (atomic_compare_exchange_weak_explicit(&p->free_head, &head, want,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire)) {
            return idx;
        }
    }
    uint32_t b = atomic_load_explicit(&p->bump, memory_order_relaxed);
    while (b < p->cap) {
        if (atomic_compare_exchange_weak_explicit(&p->bump, &b, b + 1u,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed)) {
            return b;
        }
    }
    return SLOT_NONE;
}

void slot_pool_put(struct slot_pool *p, uint32_t index)
{
    uint64_t head = atomic_load_explicit(&p->free_head, memory_order_relaxed);
    for (;;) {
        atomic_store_explicit(&p->e[index].next, (uint32_t)(head & 0xffffffffu),
                              memory_order_relaxed);
        uint64_t tag = (head >> 32) + 1u;
        uint64_t want = (tag << 32) | (uint64_t)(index + 1u);
        if (atomic_compare_exchange_weak_explicit(&p->free_head, &head, want,
                                                  memory_order_release,
                                                  memory_order_relaxed)) {
            return;
        }
    }
}
