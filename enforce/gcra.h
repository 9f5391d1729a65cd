/* gcra.h - the Generic Cell Rate Algorithm on one 64-bit word.
 *
 * A rate limit of r units per second with a burst of b units keeps one
 * number per bucket, the theoretical arrival time (TAT): the time at which
 * the bucket would be full again if nothing else arrived. With T = 1/r (the
 * emission interval) and tau = b * T (the tolerance), a request of cost c
 * arriving at `now` is conforming when
 *
 *     next = max(TAT, now) + c * T   satisfies   next - now <= tau,
 *
 * and then TAT becomes next. An idle bucket (TAT <= now) admits b units at
 * once; after that, exactly r units per second. Over any interval of
 * length D a bucket admits at most b + r * D units (docs/enforce.md has the
 * derivation and the rounding bounds). A rejected request changes nothing,
 * so rejection costs one load; admission one compare-and-swap.
 *
 * Time is in ticks of 1/16 ns (GCRA_TICKS_PER_NS) counted from the
 * instance's start, so a 64-bit TAT lasts 36 years and T keeps sub-ns
 * precision for byte rates. T is a double; a cost is charged
 * round(c * T) ticks, so rounding never accumulates in one direction.
 *
 * Pure: no clock, no globals. The caller passes `now`, which is what lets
 * the tests drive it with a fake clock. */
#ifndef ALLOT_ENFORCE_GCRA_H
#define ALLOT_ENFORCE_GCRA_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define GCRA_TICKS_PER_NS 16u

enum gcra_mode {
    GCRA_MODE_REJECT = 0, /* same values as enum quota_on_exceed */
    GCRA_MODE_SHADOW = 1,
    GCRA_MODE_DELAY = 2,
};

struct gcra_params
{
    double t;           /* ticks per unit (this host's share) */
    double inv_t;       /* units per tick */
    uint64_t tau;       /* tolerance in ticks: burst * t */
    uint64_t max_delay; /* ticks a delayed request may wait */
    uint8_t mode;       /* enum gcra_mode */
};

enum gcra_outcome {
    GCRA_ADMIT = 0,
    GCRA_DELAY = 1,  /* admitted after `wait` ticks */
    GCRA_SHADOW = 2, /* over the limit, admitted uncharged (shadow mode) */
    GCRA_REJECT = 3,
};

struct gcra_result
{
    int outcome;        /* enum gcra_outcome */
    bool too_big;       /* the cost can never pass at this tolerance */
    uint64_t wait;      /* ticks: delay, or until a retry could pass;
                           UINT64_MAX = never */
    uint64_t remaining; /* whole units left in the burst after this */
};

static inline uint64_t gcra_sat_add(uint64_t a, uint64_t b)
{
    uint64_t s = a + b;
    return s < a ? UINT64_MAX : s;
}

/* Ticks charged for cost units: round(cost * t), saturating. */
static inline uint64_t gcra_cost_ticks(const struct gcra_params *g,
                                       uint64_t cost)
{
    double x = (double)cost * g->t + 0.5;
    if (!(x < 0x1p64)) {
        return UINT64_MAX;
    }
    return (uint64_t)x;
}

static inline uint64_t gcra_units(const struct gcra_params *g, uint64_t ticks)
{
    /* The tiny bias keeps an exact multiple (3 * T) from flooring to 2. */
    double u = (double)ticks * g->inv_t + 1e-9;
    return u < 0x1p64 ? (uint64_t)u : UINT64_MAX;
}

/* Ticks as nanoseconds, rounded up (a retry never comes too early). */
static inline uint64_t gcra_ticks_to_ns(uint64_t ticks)
{
    if (ticks == UINT64_MAX) {
        return UINT64_MAX;
    }
    return ticks / GCRA_TICKS_PER_NS + (ticks % GCRA_TICKS_PER_NS != 0);
}

/* Decide a request that costs `inc` ticks at time `now` against the bucket
 * *tat, with tolerance tau_eff (g->tau, or less when local health keeps a
 * reserve back from this priority). */
static inline void gcra_decide(_Atomic uint64_t *tat, uint64_t now,
                               const struct gcra_params *g, uint64_t inc,
                               uint64_t tau_eff, struct gcra_result *res)
{
    uint64_t limit = gcra_sat_add(now, tau_eff);
    uint64_t old = atomic_load_explicit(tat, memory_order_relaxed);
    for (;;) {
        uint64_t base = old > now ? old : now;
        uint64_t next = gcra_sat_add(base, inc);
        if (next <= limit) {
            if (!atomic_compare_exchange_weak_explicit(tat, &old, next,
                                                       memory_order_relaxed,
                                                       memory_order_relaxed)) {
                continue; /* another request moved the TAT: decide again */
            }
            res->outcome = GCRA_ADMIT;
            res->too_big = false;
            res->wait = 0;
            res->remaining = gcra_units(g, limit - next);
            return;
        }
        uint64_t over = next - limit; /* ticks until it would conform */
        if (g->mode == GCRA_MODE_DELAY && over <= g->max_delay) {
            if (!atomic_compare_exchange_weak_explicit(tat, &old, next,
                                                       memory_order_relaxed,
                                                       memory_order_relaxed)) {
                continue;
            }
            res->outcome = GCRA_DELAY;
            res->too_big = false;
            res->wait = over;
            res->remaining = 0;
            return;
        }
        res->remaining = base < limit ? gcra_units(g, limit - base) : 0;
        res->outcome = g->mode == GCRA_MODE_SHADOW ? GCRA_SHADOW : GCRA_REJECT;
        uint64_t slack = g->mode == GCRA_MODE_DELAY ? g->max_delay : 0;
        /* Even an idle bucket could not take it: never, at this cost. */
        res->too_big = inc == UINT64_MAX || inc > gcra_sat_add(tau_eff, slack);
        res->wait = res->too_big ? UINT64_MAX : over - slack;
        return;
    }
}

#endif /* ALLOT_ENFORCE_GCRA_H */
