/* shares.h - each host's part of a fleet-wide limit.
 *
 * A rate quota's `rate` and `burst`, and a capacity quota's slots, are
 * global for the rule's fleet; every host enforces its part locally. These
 * functions compute the parts from one view of the fleet. They are pure and
 * deterministic: hosts that hold the same view compute the same parts, bit
 * for bit, whatever order the view lists the members in (every sum runs in
 * name order). docs/enforce.md, "Shares", gives the policies and bounds.
 *
 * Ownership: the caller owns every array; nothing is kept after a call.
 * No allocation beyond one index array of n entries (ALLOT_ENOMEM). */
#ifndef ALLOT_ENFORCE_SHARES_H
#define ALLOT_ENFORCE_SHARES_H

#include <stddef.h>
#include <stdint.h>

#include "../proto/quota.h"

/* Every member of a view holds at least this fraction of an equal share
 * of a rate, whatever the policy: a host whose demand was zero when the
 * view was taken can still admit while its new demand spreads. */
#define SHARES_RATE_FLOOR 0.05

/* Members in one view: more is refused (ALLOT_EINVALID). */
#define SHARES_MEMBERS_MAX 100000u

struct shares_member
{
    const char *name; /* unique within the view; orders every tie */
    double weight;    /* > 0 (weighted policy) */
    double demand;    /* >= 0, units/s wanted lately (demand policy) */
};

/* Rate parts: out[i] is member i's part of limit (units/s). The parts sum
 * to limit (up to rounding of doubles), each is at least
 * SHARES_RATE_FLOOR * limit / n, and:
 *   QUOTA_SHARE_EQUAL     limit / n;
 *   QUOTA_SHARE_WEIGHTED  in proportion to weight;
 *   QUOTA_SHARE_DEMAND    max-min fair over demand: a member wanting less
 *                         than an equal part of what is left keeps what it
 *                         wants, the rest is divided among the others;
 *                         what nobody wants is divided equally.
 * 0; ALLOT_EINVALID for n == 0 or above SHARES_MEMBERS_MAX, a limit that
 * is not > 0, a weight not > 0 or a demand < 0 (or NaN), a duplicate or
 * NULL name, an unknown policy; ALLOT_ENOMEM. out is untouched on error. */
int shares_rate(enum quota_share policy, double limit,
                const struct shares_member *m, size_t n, double *out);

/* Burst parts, in whole units: member i's part of burst in proportion to
 * part[i] / limit, rounded up, and never below 1 (a bucket below one unit
 * admits nothing). The fleet's total burst may exceed burst by at most n
 * units when members outnumber units. 0 or ALLOT_EINVALID (n == 0, burst
 * 0, limit not > 0). */
int shares_burst(const double *part, double limit, uint64_t burst, size_t n,
                 uint64_t *out);

/* Slot parts (max_apps, memory, vcores: hard limits): total divided in
 * proportion to part[i] by largest remainders, so the parts sum to total
 * exactly; remainder ties go to the member whose name sorts first. No
 * floor: a member may get 0 when members outnumber slots. 0,
 * ALLOT_EINVALID (n == 0, a part < 0 or NaN, all parts 0, names as in
 * shares_rate) or ALLOT_ENOMEM. */
int shares_slots(const double *part, uint64_t total,
                 const struct shares_member *m, size_t n, uint64_t *out);

/* --- One host's part, from its own view, over time ---------------------
 * The parts above assume every host holds the same view. While the view
 * changes they do not, and a host must not take what another may still be
 * using (docs/enforce.md, "Shares while the fleet changes"):
 *   - probation: for probation_ms after it joined, a host takes at most
 *     the floor part (SHARES_RATE_FLOOR of an equal part): the others do
 *     not count it yet, so a full part would overshoot;
 *   - no growth while members are failing: for settle_ms after a member
 *     of its view turned suspect or dead (shares_host_loss), a host does
 *     not grow past its last part. A partition is seen as a trickle of
 *     deaths over a suspicion timeout or more; growing at the first ones
 *     would let both sides grow before either knows how much it lost;
 *   - no growth without a majority: when the members it can reach (alive
 *     or suspect, itself included) are not a strict majority of the members
 *     it knows that did not leave (dead ones included), the host is on the
 *     small side of a partition, or most of the fleet failed at once: it
 *     never grows past its last part (it may shrink). Members that left
 *     gracefully do not count: a scale-in shrinks `known` and the others
 *     grow at once. Dead members are known until the gossip library
 *     forgets them (dead_forget_ms, an hour by default). */
struct shares_host
{
    uint64_t joined_ms;    /* when this host joined, on now_ms's clock */
    uint64_t probation_ms; /* how long a newcomer stays on the floor */
    double last_part;      /* the part enforced last; < 0: none yet */
    uint64_t settle_ms;    /* quiet time after a loss before growing */
    uint64_t loss_at;      /* the last loss seen (0: none) */
};

/* Set h's probation and quiet period for a view of n members, from the
 * gossip timings its members run with: probation = twice the time an
 * ALIVE message takes to be retransmitted everywhere (retransmit_mult *
 * ceil(log10(n + 1)) gossip rounds); quiet period = twice the smallest
 * suspicion timeout (suspicion_mult * ceil(log10(n)) probe intervals, n
 * taken as at least 2). */
void shares_host_timing(struct shares_host *h, size_t n, uint32_t gossip_ms,
                        uint32_t probe_ms, uint32_t retransmit_mult,
                        uint32_t suspicion_mult);

/* A member of this host's view turned suspect or dead at now_ms. */
void shares_host_loss(struct shares_host *h, uint64_t now_ms);

/* This host's rate part. m[0..n) is its view of the rule's fleet (alive
 * and suspect members, itself at index self), known >= n the members it
 * knows that did not leave. Updates h->last_part. 0, or shares_rate()'s
 * refusals (and ALLOT_EINVALID for self >= n or known < n). */
int shares_host_part(struct shares_host *h, enum quota_share policy,
                     double limit, const struct shares_member *m, size_t n,
                     size_t self, size_t known, uint64_t now_ms, double *out);

#endif /* ALLOT_ENFORCE_SHARES_H */
