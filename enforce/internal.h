/* internal.h - liballot's private structures, shared by its modules.
 *
 *   allot.c         public API: open/close, decisions, stats, threads
 *   rules.c         the rule set: mirror, table swaps, handles, shares, the
 *                   sink rule sources feed (rules_replace/rules_apply_change)
 *   source_watch.c  rule source without gossip: pull + watch from allotd
 *   source_gossip.c rule source with gossip: announcements, checked deltas
 *   lkg.c           last-known-good file in data_dir
 *   epoch.c         safe reclamation of swapped tables
 *   keys.c slots.c  per-key table, slot pool
 *   gcra.h          the rate algorithm (pure)
 *
 * Data: `struct allot_rule` (a handle) is stable for the instance's life
 * and holds what must survive rule updates: GCRA words, slots in use,
 * usage counters. `struct enf_params` (one rule as received) is immutable
 * once published. `struct enf_table` maps handle ids to params; decisions
 * reach it through one atomic pointer, and every update publishes a new
 * table and retires the old one (and replaced params) after a grace period.
 * The common decision reads none of it: each handle keeps a copy of its
 * rule's hot fields (`struct enf_fast`) that allot_check reads with loads
 * only.
 */
#ifndef ALLOT_ENFORCE_INTERNAL_H
#define ALLOT_ENFORCE_INTERNAL_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../proto/quota.h"
#include "allot.h"
#include "epoch.h"
#include "gcra.h"
#include "keys.h"
#include "shares.h"
#include "slots.h"

/* lib/tree.h must come after every system header. */
#include "../lib/tree.h"

#define ENF_PER_KEY_DEFAULT     4096u
#define ENF_MAX_SLOTS_DEFAULT   65536u
#define ENF_MAX_HANDLES_DEFAULT 65536u
#define ENF_TICK_US_DEFAULT     1000u
#define ENF_WINDOW_MS_DEFAULT   10000u
/* A rule whose tolerance is below this many clock ticks reads the precise
 * clock: the cached one would quantize its burst away. */
#define ENF_PRECISE_TICKS 4u
/* A health-shed request is told to retry after this long. */
#define ENF_HEALTH_RETRY_NS 100000000u
/* Instances open at once in one process (slot handles carry the number). */
#define ENF_INSTANCES_MAX 255u
/* Demand-shared rules a host tracks and gossips (its metadata blob holds
 * one (hash, demand) pair for each: about 170 bytes at most). */
#define ENF_DEMAND_RULES SHARES_BLOB_RULES
/* Weight of the newest window in a rule's demand average: the last window
 * counts half, the one before a quarter, and so on, so one quiet or busy
 * window moves the demand only halfway (docs/shares.md). */
#define ENF_DEMAND_ALPHA 0.5

/* One rule as received, with what the hot path needs precomputed.
 * Immutable once published, except `link` (the mirror's, writer-only). */
struct enf_params
{
    RB_ENTRY(enf_params) link;
    char *path; /* owned */
    uint64_t version;
    /* The quota's fields enforcement uses (and writes back to disk). */
    double rate;
    uint64_t burst;
    uint64_t max_delay_ms;
    char *fleet;       /* owned; NULL = "default" (the common case) */
    uint8_t unit;      /* enum quota_unit */
    uint8_t share;     /* enum quota_share */
    uint8_t kind;      /* enum quota_kind */
    uint8_t on_exceed; /* enum quota_on_exceed */
    bool per_key;
    bool precise_clock;
    bool fast;            /* rate, cached clock: allot_check's fast path */
    struct gcra_params g; /* rate: this host's share */
    uint64_t inc1;        /* ticks charged for a cost of 1 */
    uint64_t units_fp32;  /* units per tick, 32.32 fixed point, rounded up */
    double local_rate;
    uint64_t local_burst;
    uint64_t share_gen; /* a->share_gen its local part was computed at */
    /* Capacity: the quota's limits (0 = none), and this host's slots of
     * them (UINT64_MAX = no limit). */
    uint64_t total_apps, total_memory_mb, total_vcores;
    uint64_t max_apps;
    uint64_t max_memory_mb;
    uint64_t max_vcores;
};

RB_HEAD(enf_mirror, enf_params);

/* Immutable once published, except that a writer may append entries past
 * `n` and then raise `n` (release): no reader can have seen them. Changing
 * an entry means publishing a new table. */
struct enf_table
{
    uint64_t version;             /* catalog version it reflects */
    _Atomic uint32_t n;           /* handle ids covered */
    uint32_t cap;                 /* entries allocated */
    const struct enf_params *p[]; /* by handle id; NULL = no rule */
};

/* What allot_check's fast path reads of a handle's rule: a copy of the hot
 * fields of the params the published table holds for the handle, kept in
 * the handle itself (on the TAT's cache line) under a sequence lock, so the
 * fast path reads the rule with loads only: no read section, no store, and
 * nothing it reads is ever freed. rules.c writes it under a->mu, its
 * sequence odd from before the table holding the new params is published
 * until every field is written (rules.c, fast_begin, has the argument). */
struct enf_fast
{
    /* Bits 0-31: the sequence, odd while being rewritten; bits 32-63:
     * ENF_FAST_* flags (no ENF_FAST_ON: take the general path). One word,
     * so one load gives both. */
    _Atomic uint64_t gen;
    _Atomic uint64_t inc1;       /* p->inc1 */
    _Atomic uint64_t tau;        /* p->g.tau */
    _Atomic uint64_t units_fp32; /* p->units_fp32 */
    _Atomic uint64_t version;    /* p->version */
};

/* p->fast: a rate rule on the cached clock */
#define ENF_FAST_ON      ((uint64_t)1 << 32)
#define ENF_FAST_PER_KEY ((uint64_t)2 << 32) /* p->per_key */
#define ENF_FAST_BUSY    ((uint64_t)1)       /* the sequence is odd */

/* Handles are carved from slabs (cache-line aligned, never freed before
 * close), so a handle costs its size, not an aligned allocation's. */
struct enf_slab
{
    struct enf_slab *next;
    uint32_t used;
    uint32_t cap;
    alignas(64) unsigned char mem[];
};

/* Usage counters of one stripe (see epoch.h): monotonic. */
struct enf_ctr
{
    _Atomic uint64_t admitted;
    _Atomic uint64_t rejected;
    _Atomic uint64_t shadowed;
    _Atomic uint64_t delayed;
    /* Units admitted beyond one per admitted or shadowed decision: the
     * total cost is admitted + shadowed + cost_extra, so a decision of
     * cost 1 (every request-counting rule) writes one counter, not two. */
    _Atomic uint64_t cost_extra;
};

struct allot_rule
{
    /* One cache line: what a fast-path decision reads and writes. */
    alignas(64) _Atomic uint64_t tat; /* rule-wide GCRA word */
    struct enf_fast fast;
    struct allot *a;
    uint32_t id;
    struct keys_table *_Atomic keys; /* per_key rules; set before the
                                        table that needs it is published */
    _Atomic uint64_t apps;           /* capacity held now */
    _Atomic uint64_t memory_mb;
    _Atomic uint64_t vcores;
    _Atomic uint64_t peak; /* most apps held in this window */
    char *path;            /* owned */
    uint64_t path_hash;    /* keys_hash(0, path): the by_path index */
    /* Windows, under a->stats_mu (the housekeeping thread rolls them). */
    struct allot_usage win_base; /* totals when the current window began */
    struct allot_usage win_last; /* the last complete window */
    /* What this host wanted of the rule, units/s: a moving average over
     * the complete windows (ENF_DEMAND_ALPHA), -1 before the first. */
    double demand_avg;
    /* Usage counters: a->stripes owned stripes, then the shared one. */
    struct enf_ctr ctr[];
};

struct enf_source;
struct enf_gossip;

struct allot
{
    /* --- Read by every decision --------------------------------------- */
    alignas(64) struct enf_table *_Atomic table;
    _Atomic uint64_t now;     /* cached clock, ticks since base_ns */
    _Atomic uint64_t reserve; /* health: 16-bit reserve per priority */
    uint64_t base_ns;         /* CLOCK_MONOTONIC at open, minus 1 s */
    uint64_t keys_seed;
    unsigned inst;      /* 1..ENF_INSTANCES_MAX */
    uint32_t slot_salt; /* xor'd into handle generations: a handle of a
                           closed instance never matches a new one's */
    bool manual_clock;  /* tests: `now` is set by hand, no clock thread */
    struct slot_pool slots;

    /* --- Configuration (read-only after open) -------------------------- */
    char *data_dir;
    char *fleet;
    char *servers;
    char *identity;
    char *token;
    double weight;
    uint32_t per_key_max;
    uint32_t max_handles;
    uint32_t stripes; /* counter stripes per rule (the shared one apart) */
    uint32_t tick_us;
    uint32_t window_ms;
    bool gossip_configured;
    char host_name[65]; /* usage reports: host_name, the gossip member's
                           name, or the system's host name */

    /* --- Rule set, under mu -------------------------------------------- */
    alignas(64) pthread_mutex_t mu;
    pthread_cond_t cv; /* version advanced, or stopping */
    struct enf_mirror mirror;
    uint64_t n_rules;
    struct allot_rule **by_path; /* open addressing on path_hash */
    uint32_t by_path_mask;       /* capacity - 1 (a power of two) */
    struct allot_rule **handles; /* by id */
    struct enf_slab *slabs;      /* where handles live */
    uint32_t n_handles;
    uint32_t cap_handles;
    bool dirty;       /* the rule set changed since it was saved */
    bool need_resync; /* a change could not be applied: pull again */
    _Atomic uint64_t version;
    /* This host's part of its fleet's limits (docs/shares.md),
     * as fractions of a limit: 1 until a gossip view exists. Written under
     * mu; read without it by rules_params_new (a stale read is caught by
     * share_gen at the next rules_reshare). */
    struct shares_host share_equal, share_weighted;
    _Atomic double frac_equal, frac_weighted;
    _Atomic uint64_t share_gen;
    _Atomic uint64_t fleet_members; /* alive or suspect, this host included */
    _Atomic uint32_t view_version;  /* shares_view_version of the last view */
    /* The last view for dividing slots (capacity rules): names
     * and weights of the fleet's members, this host at view_self; n 0
     * until a settled view exists (slots are not divided before). */
    pthread_mutex_t view_mu; /* the view and demand parts; after mu */
    /* Demand rules of this host's fleet: each one's part-keeping state
     * and this host's fraction, by hash of the path (ENF_DEMAND_RULES at
     * most; more divide like weighted). */
    struct enf_demand
    {
        uint32_t hash; /* 0: free */
        struct shares_host sh;
        double frac;
    } demand[ENF_DEMAND_RULES];
    struct shares_member *view;
    char (*view_names)[65];
    size_t view_n, view_cap, view_self;

    /* --- Status (atomics, any thread) ---------------------------------- */
    _Atomic uint64_t server_version;
    _Atomic uint64_t confirmed_ms;
    _Atomic uint64_t disk_saved_ms;
    _Atomic uint64_t disk_version;
    _Atomic uint64_t pulls;
    _Atomic uint64_t changes;
    _Atomic uint64_t resyncs;
    _Atomic uint64_t persist_errors;
    _Atomic uint64_t health_bits; /* the double given to allot_set_health */
    _Atomic uint64_t last_contact_ms;
    _Atomic int from_disk;
    /* The gossip source (source_gossip.c). */
    _Atomic uint64_t announced_version;
    _Atomic uint64_t announcements;
    _Atomic uint64_t digest_mismatches;
    _Atomic uint64_t deltas;
    _Atomic uint64_t gossip_members;
    _Atomic uint64_t gossip_servers;
    _Atomic uint64_t usage_reports;
    _Atomic uint64_t usage_errors;

    /* --- Threads -------------------------------------------------------- */
    pthread_t clock_thr;
    pthread_t house_thr;
    bool clock_started;
    bool house_started;
    _Atomic int stopping;
    int cancel_fd; /* eventfd: readable once stopping (ends blocking I/O) */
    int lock_fd;   /* flock on data_dir/.lock */
    struct enf_source *source;
    struct enf_gossip *gossip;
    pthread_mutex_t stats_mu;   /* windows */
    uint64_t win_start_ms;      /* the current window's start */
    uint64_t win_last_start_ms; /* the last complete one's */
};

/* --- rules.c -------------------------------------------------------------- */

/* The fleet as far as this host knows it. Until the shares issue feeds the
 * gossip member's view in, the host knows only itself. */
/* A new view of this host's fleet from its gossip member: m[0..n) alive or
 * suspect members with their weights (self at index self), `known` the
 * members that did not leave. Recomputes this host's fractions with
 * shares_host_part() and rebuilds every rate rule of its fleet whose local
 * rate is stale. Takes a->mu. */
void rules_reshare(struct allot *a, const struct shares_view *v,
                   uint64_t now_ms);

/* This host's demand (units/s over the last complete usage window) for
 * up to cap demand-shared rate rules of its fleet that it has resolved,
 * the largest first (hashes by shares_rule_hash). Takes a->mu and
 * a->stats_mu. */
size_t rules_demands(struct allot *a, struct shares_demand *out, size_t cap);
/* The version of the view this host last computed its parts from and
 * its state (SHARES_STATE_*), as it publishes them. */
void rules_view_state(struct allot *a, uint32_t *view, uint32_t *state);
/* Members' blobs for rules_reshare_demand: app[i], app_len[i] of member
 * i of the view (NULL, 0: none; decoded by shares_blob_decode). Recomputes the
 * demand rules' parts; call after rules_reshare with the same view. Takes
 * a->mu. */
void rules_reshare_demand(struct allot *a, const struct shares_view *v,
                          const uint8_t *const *app, const size_t *app_len,
                          uint64_t now_ms);
/* A member of this host's fleet turned suspect or dead, or came back
 * (shares_host_change). Takes a->mu. */
void rules_fleet_change(struct allot *a, uint64_t now_ms);

/* Build the params of quota q for this host. ALLOT_ENOMEM. */
int rules_params_new(struct allot *a, const struct quota *q,
                     struct enf_params **out);
void rules_params_free(struct enf_params *p);

/* The sink every rule source feeds (source.h). All take a->mu. */

/* Replace the whole rule set by qs[0..n) at catalog version `version`
 * (quotas are borrowed). `from_disk`: loaded from data_dir (not marked
 * dirty, staleness counted from the file's save time). */
int rules_replace(struct allot *a, const struct quota *qs, size_t n,
                  uint64_t version, bool from_disk);

/* Apply one change record of a watch ({version, op, path, old, new}).
 * Versions at or below the rule's own are skipped; records of other
 * operations only advance the catalog version. A record that cannot be
 * applied (a quota.set without its new value) sets need_resync. 0 or
 * ALLOT_EINVALID/ALLOT_ENOMEM. */
int rules_apply_change(struct allot *a, const msgpack_object *change,
                       char *errmsg);

/* The catalog digest over the rules held (docs/gossip.md), and the
 * catalog version it belongs to. Takes a->mu; O(rules). */
void rules_digest(struct allot *a, uint8_t d[QUOTA_DIGEST_SIZE],
                  uint64_t *version);

/* The digest the rules held would have after applying changes[0..n) (watch
 * records, in version order) with rules_apply_change(), without applying
 * anything: so a delta is checked against an announcement before it is
 * swapped in. ALLOT_EINVALID for a record that cannot be read, ENOMEM. */
int rules_delta_digest(struct allot *a, const msgpack_object *const *changes,
                       size_t n, uint8_t d[QUOTA_DIGEST_SIZE], char *errmsg);

/* A server reports its catalog at server_version. */
void rules_confirm(struct allot *a, uint64_t server_version);

/* Find or create the handle of path (allot_rule). */
int rules_handle(struct allot *a, const char *path, struct allot_rule **out);

/* Free everything of the rule set (allot_close; no reader may remain). */
void rules_close(struct allot *a);

/* Pack the current rule set for the file on disk (under mu). */
struct msgpack_sbuffer;
int rules_pack_for_disk(struct allot *a, struct msgpack_sbuffer *sb,
                        uint64_t *version);

/* --- report.c ------------------------------------------------------------ */

/* This system's host name, made printable (the default host_name). */
void report_default_host(char *out, size_t cap);

/* Send the last complete usage window to a server (usage.report): the
 * number of reports sent (0 when nothing was active), or a negative error
 * with a message. Blocks up to
 * a couple of seconds per server; the housekeeping thread calls it. */
int report_usage(struct allot *a, char *errmsg);

/* --- allot.c -------------------------------------------------------------- */

/* For tests: open with a hand-driven clock (no clock thread) and, when
 * no_threads, no housekeeping thread and no rule source. */
struct enf_test_hooks
{
    bool manual_clock;
    bool no_threads;
};

int enf_open(const struct allot_options *opts, const struct enf_test_hooks *h,
             struct allot **out);

/* Hand-driven clock: set `now` in nanoseconds since the instance's base. */
void enf_set_now_ns(struct allot *a, uint64_t ns);

/* Roll the usage windows now (the housekeeping thread's work). */
void enf_roll_windows(struct allot *a);

/* Save the rule set to data_dir now if it changed (0 or ALLOT_EIO). */
int enf_persist(struct allot *a, bool force);

/* Wake allot_wait_version() callers (after a publish, under mu). */
void enf_version_advanced(struct allot *a);

#endif /* ALLOT_ENFORCE_INTERNAL_H */
