/* shares.h - each host's part of a fleet-wide limit.
 *
 * A rate quota's `rate` and `burst`, and a capacity quota's slots, are
 * global for the rule's fleet; every host enforces its part locally. These
 * functions compute the parts from one view of the fleet. They are pure and
 * deterministic: hosts that hold the same view compute the same parts, bit
 * for bit, whatever order the view lists the members in (every sum runs in
 * name order). docs/shares.md gives the policies and bounds.
 *
 * Ownership: the caller owns every array; nothing is kept after a call.
 * No allocation beyond one index array of n entries (ALLOT_ENOMEM). */
#ifndef ALLOT_ENFORCE_SHARES_H
#define ALLOT_ENFORCE_SHARES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../proto/quota.h"

/* What shares_host_part did last (shares_host.state bits). */
#define SHARES_STATE_PROBATION 1u /* a newcomer held at the floor */
#define SHARES_STATE_HOLDING   2u /* growth held: loss, suspects, minority */

/* Every member of a view holds at least this fraction of an equal share
 * of a rate, whatever the policy: a host whose demand was zero when the
 * view was taken can still admit while its new demand spreads. */
#define SHARES_RATE_FLOOR 0.05

/* A newcomer's floor is taken over a view of at least this many members:
 * right after it starts it may know only itself, and the floor of a
 * view of one is a twentieth of the whole limit. */
#define SHARES_PROBATION_VIEW 20u

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
 * using (docs/shares.md, "While the fleet changes"):
 *   - probation: for probation_ms after it joined, a host takes at most
 *     the floor part (SHARES_RATE_FLOOR of an equal part, over a view of
 *     at least SHARES_PROBATION_VIEW members): the others do not count it
 *     yet, so a full part would overshoot;
 *   - no growth while the view moves: while a member of its view has
 *     been suspect for doubt_ms or longer, and for settle_ms after a
 *     member died or came back (shares_host_change), a host does not grow
 *     past its last part. A partition is seen as a trickle of suspicions,
 *     then of deaths, over a suspicion timeout or more; growing at the
 *     first deaths would let both sides grow before either knows how much
 *     it lost. Every death follows a suspicion at least as long as the
 *     smallest suspicion timeout, which doubt_ms does not exceed, so the
 *     hold covers it. A younger suspicion does not hold: under packet loss
 *     false ones (refuted within a second or two) are always somewhere in
 *     a large fleet, and holding for them stopped all growth. Its heal is
 *     a trickle of members coming back: growing when the first ones give
 *     back a majority would take the parts of those not seen yet, which
 *     still enforce theirs;
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
    uint64_t settle_ms;    /* quiet time after a change before growing */
    uint64_t doubt_ms;     /* a younger suspicion does not hold growth */
    uint64_t change_at;    /* the last change seen (0: none) */
    uint32_t state;        /* SHARES_STATE_* of the last part */
};

/* Set h's probation, quiet period and doubt for a view of n members, from
 * the gossip timings its members run with: probation = twice the time one
 * member keeps retransmitting an ALIVE message (retransmit_mult *
 * ceil(log10(n + 1)) sends, gossip_nodes per gossip round); quiet period = the
 * larger of the smallest suspicion timeout (suspicion_mult * ceil(log10(n))
 * probe intervals, n taken as at least 2) and one probe round of min(n, 20)
 * members: it bridges the gap between one member's death and the next
 * member's first suspicion in a partition; doubt = the smaller of twice the
 * probation (a suspicion's way to its member and the refutation's way
 * back) and the smallest suspicion timeout (docs/shares.md, "While the
 * fleet changes"). */
void shares_host_timing(struct shares_host *h, size_t n, uint32_t gossip_ms,
                        uint32_t gossip_nodes, uint32_t probe_ms,
                        uint32_t retransmit_mult, uint32_t suspicion_mult);

/* Give h the timings src was set to (shares_host_timing). */
void shares_host_timing_copy(struct shares_host *h,
                             const struct shares_host *src);

/* A member of this host's view died, or came back after it was dead or
 * left, at now_ms. A graceful leave is not a change (the others may grow
 * at once), nor is a newcomer (it only shrinks parts, and quieting every
 * host at each join would hold a scaling fleet's newcomers on the floor
 * until the joins stop), nor a suspicion (the view's suspect_age_ms
 * covers it). */
void shares_host_change(struct shares_host *h, uint64_t now_ms);

/* One host's view of a rule's fleet: m[0..n) the members alive or
 * suspect (the host itself at index self), suspect of them suspect now,
 * known >= n the members it knows that did not leave (dead ones
 * included), suspect_age_ms how long the longest-standing of the suspects
 * has been suspect (0 when none). The caller owns m. */
struct shares_view
{
    const struct shares_member *m;
    size_t n, self, suspect, known;
    uint64_t suspect_age_ms;
};

/* This host's rate part from its view v. Updates h->last_part. 0, or
 * shares_rate()'s refusals (and ALLOT_EINVALID for self >= n, suspect > n
 * or known < n). */
int shares_host_part(struct shares_host *h, enum quota_share policy,
                     double limit, const struct shares_view *v, uint64_t now_ms,
                     double *out);

/* FNV-1a over p[0..len) from h (SHARES_FNV_SEED to start): hashes that
 * hosts exchange (rule names in demand blobs, view versions) must be the
 * same on every host and build. */
#define SHARES_FNV_SEED 2166136261u
uint32_t shares_fnv1a(uint32_t h, const void *p, size_t len);

/* The version of a view, as hosts publish it: a 32-bit digest of its
 * members' names and weights that does not depend on their order. Two
 * hosts with the same version compute the same parts (demand aside). */
uint32_t shares_view_version(const struct shares_view *v);

/* --- What a host publishes --------------------------------------------
 * Every host puts one blob in its gossip metadata (the member's `app`):
 * the version of the view it computed its parts from, its state, and its
 * demand for up to SHARES_BLOB_RULES demand-shared rules (docs/shares.md,
 * "Published"). On the wire a msgpack array [view, state, [[hash,
 * demand], ...]] with hash a uint32 (shares_rule_hash) and demand a
 * float32 in units/s. */
#define SHARES_BLOB_RULES 16u

struct shares_demand
{
    uint32_t hash; /* shares_rule_hash of the rule's path */
    double demand; /* >= 0, units/s */
};

struct shares_blob
{
    uint32_t view;  /* shares_view_version of the host's last view */
    uint32_t state; /* SHARES_STATE_* */
    size_t n;
    struct shares_demand d[SHARES_BLOB_RULES];
};

/* The 32-bit name of a rule path in blobs; never 0 (callers use 0 as
 * "free"). */
uint32_t shares_rule_hash(const char *path);

/* Encode b into buf[0..cap); the length, or 0 when it does not fit. */
size_t shares_blob_encode(const struct shares_blob *b, uint8_t *buf,
                          size_t cap);

/* Decode a blob: 0, or ALLOT_EINVALID for anything that is not one
 * (bounds-checked; trailing bytes, wrong types, a negative, NaN or
 * infinite demand, more than SHARES_BLOB_RULES pairs). out is zeroed
 * first, so a refused blob reads as "no view, no demand". */
int shares_blob_decode(const uint8_t *buf, size_t len, struct shares_blob *out);

/* Member i's demand for the rule hashed `hash` in a decoded blob; 0 when
 * it published none. */
double shares_blob_demand(const struct shares_blob *b, uint32_t hash);

/* Is a demand that moved from `was` to `now` worth publishing again? Every
 * publication is a broadcast to the whole fleet, so small moves are not:
 * true when it moved by more than a fifth of the larger of the two (and of
 * QUOTA_RATE_MIN, so noise around zero stays quiet). Relative, not in
 * units: with 10,000 hosts sharing 1,000 units/s each host's demand is a
 * tenth of a unit, and a threshold of a fifth of a unit kept every such
 * demand from ever being published (a 10,000-host demand shift stayed at
 * equal parts). */
bool shares_demand_moved(double was, double now);

#endif /* ALLOT_ENFORCE_SHARES_H */
