/* slots.h - the pool of concurrency slots behind allot_acquire().
 *
 * A slot records what one holder reserved (one app, memory, vcores) on one
 * rule, so that releasing it gives back exactly that. Slots live in one
 * array per instance (max_slots entries, allocated zeroed and touched only
 * as they are first used) with a lock-free free list: a Treiber stack whose
 * head carries a 32-bit tag against ABA. Acquire and release allocate
 * nothing and take no lock.
 *
 * The handle a caller gets is not a pointer: it packs the instance number,
 * the entry index and the entry's generation (bumped on every acquire), so
 * a second release of the same handle, or a release of a handle whose entry
 * was re-used since, finds another generation and does nothing. That is
 * what makes allot_release() idempotent-safe. */
#ifndef ALLOT_ENFORCE_SLOTS_H
#define ALLOT_ENFORCE_SLOTS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define SLOT_INDEX_BITS 23u
#define SLOT_CAP_MAX    ((1u << SLOT_INDEX_BITS) - 1u)
#define SLOT_NONE       UINT32_MAX

struct allot_rule;

struct slot_entry
{
    _Atomic uint64_t state;  /* generation << 1 | held */
    _Atomic uint32_t next;   /* free list: index + 1 of the next, 0 = end */
    bool shadow;             /* admitted over the limit by shadow mode */
    struct allot_rule *rule; /* what it holds: set while held */
    uint64_t memory_mb;
    uint64_t vcores;
};

struct slot_pool
{
    struct slot_entry *e; /* owned */
    uint32_t cap;
    _Atomic uint32_t bump;      /* entries [bump, cap) never used yet */
    _Atomic uint64_t free_head; /* tag << 32 | (index + 1); index 0 = empty */
    _Atomic uint64_t in_use;
    _Atomic uint64_t stale_releases;
};

/* 0 or ALLOT_ENOMEM. cap in 1..SLOT_CAP_MAX. */
int slot_pool_init(struct slot_pool *p, uint32_t cap);
void slot_pool_close(struct slot_pool *p);

/* An unused entry, or SLOT_NONE when all cap are held. */
uint32_t slot_pool_get(struct slot_pool *p);
/* Give an entry back to the free list. */
void slot_pool_put(struct slot_pool *p, uint32_t index);

/* The opaque handle of entry `index` at generation `gen` of instance
 * `inst` (1..255), and back. */
static inline uintptr_t slot_handle_make(unsigned inst, uint32_t index,
                                         uint32_t gen)
{
    return ((uintptr_t)gen << 32) | ((uintptr_t)(inst & 0xffu) << 24) |
           ((uintptr_t)index << 1) | 1u;
}

static inline bool slot_handle_parse(uintptr_t h, unsigned *inst,
                                     uint32_t *index, uint32_t *gen)
{
    if ((h & 1u) == 0) {
        return false;
    }
    *index = (uint32_t)((h >> 1) & SLOT_CAP_MAX);
    *inst = (unsigned)((h >> 24) & 0xffu);
    *gen = (uint32_t)(h >> 32);
    return true;
}

#endif /* ALLOT_ENFORCE_SLOTS_H */
