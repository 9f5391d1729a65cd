/* timer.h - many protocol timers behind the io's single wakeup (private).
 *
 * The io offers one timer (set_timer); the protocol needs one per probe
 * phase, per relayed probe, per suspected member, plus the periodic ones.
 * They live in a binary min-heap here; the io is asked to wake the core at
 * the earliest deadline. A struct gtimer is embedded in whatever it times
 * (a member's suspicion, a relay slot) and costs no allocation. */
#ifndef ALLOT_GOSSIP_TIMER_H
#define ALLOT_GOSSIP_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gtimer;
struct gtimer_heap;
typedef void (*gtimer_fn)(struct gtimer *t, void *arg);

struct gtimer
{
    uint64_t at;
    size_t idx; /* position in the heap, GTIMER_IDLE when not armed */
    gtimer_fn fn;
};

#define GTIMER_IDLE ((size_t)-1)

struct gtimer_heap
{
    struct gtimer **items;
    size_t n;
    size_t cap;
};

void gtimer_heap_init(struct gtimer_heap *h);
void gtimer_heap_free(struct gtimer_heap *h);

void gtimer_init(struct gtimer *t, gtimer_fn fn);
/* Arm (or re-arm) t for at. ALLOT_ENOMEM when the heap cannot grow (the
 * timer is then idle). */
int gtimer_start(struct gtimer_heap *h, struct gtimer *t, uint64_t at);
void gtimer_stop(struct gtimer_heap *h, struct gtimer *t);
static inline bool gtimer_armed(const struct gtimer *t)
{
    return t->idx != GTIMER_IDLE;
}
/* Earliest deadline, UINT64_MAX when none. */
uint64_t gtimer_next(const struct gtimer_heap *h);
/* Pop the earliest timer due at or before now (it is idle when returned),
 * NULL when none is due. */
struct gtimer *gtimer_pop_due(struct gtimer_heap *h, uint64_t now);

#endif /* ALLOT_GOSSIP_TIMER_H */
