/* allot.h - liballot: decide "serve or reject" locally, in nanoseconds.
 *
 * liballot keeps a copy of allot's rules (quotas) in the caller's process
 * and answers from it without any round trip: a rate decision is a lookup
 * and a compare-and-swap on one 64-bit word; a capacity decision reserves a
 * concurrency slot. Rules arrive in the background (announced by gossip and
 * read from a server, or by watching the servers), are swapped in whole, and
 * are kept on disk so a restarted host enforces its last-known-good rules
 * at once, even with every server down. docs/enforce.md has the algorithms
 * and the failure behaviour.
 *
 * Threads: allot_open() and allot_close() once; every other call may be
 * made from any thread at any time in between. The decision calls
 * (allot_check*, allot_acquire*, allot_release) take no lock, allocate
 * nothing and make no system call (except the first call from a new
 * thread, which registers the thread once). They are not async-signal-safe.
 *
 * Errors: every int-returning call returns 0 or a negative ALLOT_E... code
 * from allot_error.h (the table every allot binary shares);
 * allot_strerror() names it. liballot never aborts on a runtime failure.
 *
 * Ownership is stated at each declaration. Strings passed in are copied
 * when they must outlive the call. */
#ifndef ALLOT_H
#define ALLOT_H

#include <stddef.h>
#include <stdint.h>

#include "allot_error.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ALLOT_API __attribute__((visibility("default")))
#else
#define ALLOT_API
#endif

struct allot;
struct allot_rule;
struct allot_slot;

/* How allot_open() starts. Zero-initialize, then set what you need; every
 * field left 0 or NULL has the default written beside it. The first six
 * fields are the long-term contract; the rest were appended and more may
 * be appended later (zero stays the default). */
struct allot_options
{
    const char *data_dir;     /* last-known-good rules live here; required.
                                 Created (one level) if missing; one process
                                 at a time (locked). */
    const char *fleet;        /* fleet this host belongs to; NULL = "default" */
    double weight;            /* share weight; 0 = 1.0 */
    const char *gossip_bind;  /* HOST:PORT of the embedded gossip member */
    const char *gossip_seeds; /* "HOST:PORT,..." of any cluster members */
    const char *gossip_keyring; /* keyring file; required with gossip_bind
                                   (the gossip is always encrypted) */
    /* With gossip_bind, liballot runs a gossip member (role agent, fleet,
     * weight in thousandths) and brings its rules up to each catalog
     * version the servers announce, checked against the announced digest;
     * the servers to read from are found among the members. */

    /* --- Static servers ----------------------------------------------------
     */
    const char *servers;  /* "HOST:PORT,..." of allotd client endpoints
                             (1..16). Without gossip: the rule source
                             (pull, then watch). With gossip: a fallback
                             while gossip knows no server, and the first
                             read. NULL and no gossip: the rules on disk
                             only */
    const char *identity; /* identity file (allotctl identity new) to sign
                             requests with, for secure clusters; or */
    const char *token;    /* a bearer token (allotctl token create) */

    /* --- Limits and tuning ------------------------------------------------ */
    uint32_t per_key_max;     /* keys tracked per per_key rule, rounded up to
                                 a power of two; 0 = 4096 (16 bytes each) */
    uint32_t max_slots;       /* concurrency slots held at once, all rules;
                                 0 = 65536 (32 bytes each, touched on use) */
    uint32_t max_handles;     /* distinct paths allot_rule() may resolve;
                                 0 = 65536 */
    uint32_t clock_tick_us;   /* period of the cached clock the decisions
                                 read; 0 = 1000 (docs/enforce.md, "Time") */
    uint32_t window_ms;       /* usage window; 0 = 10000 */
    uint32_t counter_stripes; /* usage counters per rule, one per deciding
                                 thread (the first N threads; later ones
                                 share one with atomic adds); 0 = 8. 40
                                 bytes each per resolved rule: a
                                 single-threaded user wants 1 */
    const char *host_name;    /* the name usage reports carry (1..64
                                 printable characters, no spaces); NULL =
                                 the gossip member's name, else the
                                 system's host name */
};

/* Open an instance: load the last-known-good rules from data_dir (they are
 * enforced from this moment), then start the background threads (clock,
 * rule source, housekeeping). Never waits for a server. On 0 *out is the
 * caller's, to free with allot_close(); on error nothing is left open.
 * ALLOT_EINVALID: bad options (NULL data_dir, weight < 0, a bad server
 * list, an unreadable identity); ALLOT_EEXISTS: another process uses
 * data_dir; ALLOT_EIO: data_dir cannot be created or locked; ALLOT_ENOMEM. */
ALLOT_API int allot_open(const struct allot_options *opts, struct allot **out);

/* Stop the threads, release every slot still held, free everything. Rule
 * and slot handles of a must not be used after (or during) this call. NULL
 * is ignored. */
ALLOT_API void allot_close(struct allot *a);

/* Resolve a quota path ("org/api") once, into a handle owned by a (valid
 * until allot_close, never freed before). The handle always sees the
 * newest rule for its path: it may be resolved before the rule exists
 * (decisions then return ALLOT_ENOT_FOUND) and keeps working when the rule
 * changes, is removed or comes back. Calling it again for the same path
 * returns the same handle. This call takes a lock and may allocate: resolve
 * at start-up, not per request. ALLOT_EINVALID: not a valid quota path;
 * ALLOT_ETOO_BIG: max_handles paths resolved already; ALLOT_ENOMEM. */
ALLOT_API int allot_rule(struct allot *a, const char *path,
                         struct allot_rule **out);

/* The decision. Filled by every decision call that returns 0 (and by
 * ALLOT_ENOT_FOUND, see allot_check). The first five fields are the
 * contract; `delayed` and `reason` were appended. */
struct allot_decision
{
    int allowed;             /* 1 serve, 0 reject */
    int shadow;              /* 1: over the limit but the rule is in shadow
                                mode (allowed is then 1) */
    uint64_t retry_after_ns; /* rejected: when a request of this cost could
                                pass (UINT64_MAX: never at this cost);
                                delayed: how long the caller must wait
                                before serving; 0 otherwise */
    uint64_t remaining;      /* units left in the burst now (rate rules);
                                slots left (capacity rules) */
    uint64_t rule_version;   /* version of the rule that decided */
    int delayed;             /* 1: on_exceed=delay; allowed is 1 but the
                                caller must first sleep retry_after_ns */
    int reason;              /* enum allot_reason */
};

enum allot_reason {
    ALLOT_REASON_OK = 0,      /* under the limit */
    ALLOT_REASON_LIMIT = 1,   /* over the rule's limit */
    ALLOT_REASON_HEALTH = 2,  /* shed for local health (allot_set_health) */
    ALLOT_REASON_TOO_BIG = 3, /* the cost exceeds the whole burst (or the
                                 resources exceed the maximum) */
    ALLOT_REASON_NO_RULE = 4, /* no rule at this path (ALLOT_ENOT_FOUND) */
};

/* Name of a reason ("limit"); "unknown" outside the enum. */
ALLOT_API const char *allot_reason_name(int reason);

/* Priorities for allot_check_prio() / allot_acquire_res(): 0 is the most
 * important. As the host saturates, lower priorities lose access to part
 * of each burst, then to all of it (docs/enforce.md, "Health"). */
enum allot_prio {
    ALLOT_PRIO_CRITICAL = 0, /* never shed for health */
    ALLOT_PRIO_HIGH = 1,
    ALLOT_PRIO_NORMAL = 2, /* allot_check() and allot_acquire() */
    ALLOT_PRIO_LOW = 3,
};

/* Rate decision for cost units (requests: 1; bytes: the size) against the
 * rule of r: GCRA on one 64-bit word. key is NULL for a rule-wide limit and
 * names the tenant for per_key rules (hashed, not kept). A key on a rule
 * that is not per_key is ignored, and a per_key rule given no key limits
 * the keyless requests together as one more tenant, so callers keep
 * working when an operator toggles per_key. The rule's on_exceed decides over
 * the limit: reject (allowed 0), shadow (allowed 1, shadow 1, the request is
 * not charged), delay (allowed 1, delayed 1, retry_after_ns = the wait, at most
 * max_delay_ms; beyond it, rejected). Returns 0 with *d filled;
 * ALLOT_ENOT_FOUND when the path has no rule now (*d: allowed 1, reason
 * NO_RULE: no rule, no limit; fail closed by testing the return code);
 * ALLOT_EINVALID for a capacity rule or a bad argument. Same as
 * allot_check_prio(..., ALLOT_PRIO_NORMAL, d). */
ALLOT_API int allot_check(struct allot_rule *r, const char *key, uint64_t cost,
                          struct allot_decision *d);

/* allot_check with a priority 0..3 (enum allot_prio). */
ALLOT_API int allot_check_prio(struct allot_rule *r, const char *key,
                               uint64_t cost, int prio,
                               struct allot_decision *d);

/* Capacity decision: take one concurrency slot (one of max_apps) with no
 * memory or vcores. Same as allot_acquire_res(r, key, 0, 0,
 * ALLOT_PRIO_NORMAL, out, NULL). */
ALLOT_API int allot_acquire(struct allot_rule *r, const char *key,
                            struct allot_slot **out);

/* Take one slot holding memory_mb and vcores against the rule's max_apps,
 * max.memory_mb and max.vcores (0 in the rule: no limit on that resource).
 * key is accepted for symmetry and ignored (capacity quotas are not
 * per_key). Returns 0 with *out set when admitted (also in shadow mode over
 * the limit: the slot then counts as shadowed), and 0 with *out NULL when
 * refused; d (may be NULL) tells which. ALLOT_ENOT_FOUND: no rule;
 * ALLOT_EINVALID: a rate rule or prio outside 0..3; ALLOT_ETOO_BIG: every
 * slot of the instance (max_slots) is held. The slot is the caller's: give
 * it back with allot_release(). */
ALLOT_API int allot_acquire_res(struct allot_rule *r, const char *key,
                                uint64_t memory_mb, uint64_t vcores, int prio,
                                struct allot_slot **out,
                                struct allot_decision *d);

/* Give a slot back. Idempotent-safe: a slot handle is an opaque,
 * generation-checked token, so releasing it twice, or releasing a stale
 * handle whose slot was re-used since, does nothing (counted in stats as
 * stale_releases). NULL is ignored. */
ALLOT_API void allot_release(struct allot_slot *s);

/* Catalog version of the rules in force (0: none yet). */
ALLOT_API uint64_t allot_catalog_version(struct allot *a);

/* Wait until the rules in force reach catalog version `version`: 0 when
 * they have, ALLOT_ETIMEOUT after timeout_ms (< 0: wait without bound),
 * ALLOT_ESHUTDOWN if allot_close() began. */
ALLOT_API int allot_wait_version(struct allot *a, uint64_t version,
                                 int timeout_ms);

/* Local health: how saturated this host is, 0 (idle) to 1 (saturated);
 * values outside are clamped, NaN is 0. Takes effect on the next decision.
 */
ALLOT_API void allot_set_health(struct allot *a, double saturation);

/* Instance-wide figures (a snapshot; counters are monotonic). */
struct allot_stats
{
    uint64_t catalog_version; /* rules in force */
    uint64_t server_version;  /* newest catalog version a server reported;
                                 0 = unknown */
    uint64_t versions_behind; /* server_version - catalog_version when
                                 known and positive, else 0 */
    uint64_t rules;           /* rules in force */
    uint64_t handles;         /* paths resolved by allot_rule */
    uint64_t confirmed_ms;    /* wall clock when a server last confirmed the
                                 rules current; 0 = never (this run) */
    uint64_t age_ms;          /* how old the rules may be: now minus
                                 confirmed_ms, or minus the save time of the
                                 file they were loaded from */
    int from_disk;            /* 1: loaded from data_dir and not confirmed by
                                 a server since */
    int source_connected;     /* 1: the rule source reached a server within
                                 the last probe period */
    uint64_t disk_saved_ms;   /* when the rules on disk were written; 0 none */
    uint64_t disk_version;    /* catalog version of the rules on disk */
    uint64_t pulls;           /* full reads of the rules from a server */
    uint64_t changes;         /* changes applied one by one (watch) */
    uint64_t resyncs;         /* full reads forced by a lost history */
    uint64_t persist_errors;  /* failed writes of the file on disk */
    uint64_t slots_in_use;
    uint64_t stale_releases;
    uint64_t key_evictions; /* per_key entries taken over by another key */
    double health;          /* last allot_set_health() */
    double weight;          /* this host's share weight */
    double total_weight;    /* fleet weight known (own weight until
                               membership exists) */
    int gossip_configured;  /* the gossip member runs (gossip_bind) */
    /* Appended: the gossip source and usage reports. */
    uint64_t announced_version; /* newest catalog version announced by
                                   gossip; 0 = none heard */
    uint64_t announcements;     /* newer announcements heard */
    uint64_t deltas;            /* checked deltas applied */
    uint64_t digest_mismatches; /* reads that did not match an
                                   announcement (not applied) */
    uint64_t gossip_members;    /* alive members known, this one included */
    uint64_t gossip_servers;    /* alive servers among them */
    uint64_t usage_reports;     /* usage windows a server accepted */
    uint64_t usage_errors;      /* usage windows not delivered */
    /* Appended: shares (docs/shares.md). */
    uint64_t fleet_members; /* alive or suspect members of this host's fleet
                               in its last gossip view (0: none yet) */
    uint32_t view_version;  /* version of that view, as this host publishes
                               it (allotctl share show, column VIEW) */
    uint32_t share_state;   /* 1: on probation, 2: holding its last part */
};

ALLOT_API int allot_stats(struct allot *a, struct allot_stats *st);

/* Usage of one rule: cumulative counters since allot_open, and the last
 * complete window (window_ms long) of the same, pre-aggregated locally. */
struct allot_usage
{
    uint64_t admitted; /* decisions or slots admitted (shadowed excluded) */
    uint64_t rejected; /* refused (limit, health or too big) */
    uint64_t shadowed; /* over the limit, admitted by shadow mode */
    uint64_t delayed;  /* admitted after a wait (on_exceed=delay) */
    uint64_t cost;     /* units admitted (requests or bytes), shadowed
                          included */
    uint64_t peak;     /* capacity rules: most slots held at once */
};

struct allot_rule_stats
{
    uint64_t rule_version; /* 0: no rule now */
    int kind;              /* 0 none, 1 capacity, 2 rate */
    double local_rate;     /* rate rules: this host's share, units/s */
    uint64_t local_burst;
    /* Capacity rules: this host's slots of each limit (its part of the
     * fleet's; UINT64_MAX = no limit). */
    uint64_t local_max_apps, local_max_memory_mb, local_max_vcores;
    uint64_t in_use_apps; /* capacity rules: held now */
    uint64_t in_use_memory_mb;
    uint64_t in_use_vcores;
    struct allot_usage total;  /* since allot_open */
    struct allot_usage window; /* the last complete window */
    uint64_t window_start_ms;  /* wall clock of that window's start */
    uint64_t window_ms;        /* its length */
};

ALLOT_API int allot_rule_stats(struct allot_rule *r,
                               struct allot_rule_stats *st);

/* The handles resolved so far, in resolution order: up to cap of them
 * into out (which may be NULL when cap is 0); returns how many exist. The
 * handles stay a's. */
ALLOT_API size_t allot_rules(struct allot *a, struct allot_rule **out,
                             size_t cap);

/* The path of a handle (owned by the handle). */
ALLOT_API const char *allot_rule_path(const struct allot_rule *r);

/* Default message of an error code ("version conflict"); never NULL.
 * Declared in allot_error.h, exported by liballot, as is
 * allot_error_name() (the wire name, "conflict"). */

#ifdef __cplusplus
}
#endif

#endif /* ALLOT_H */
