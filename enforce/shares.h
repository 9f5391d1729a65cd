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

#endif /* ALLOT_ENFORCE_SHARES_H */
