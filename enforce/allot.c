/* allot.c - liballot's public API: the instance, its threads, decisions.
 *
 * An instance runs three threads besides its callers':
 *   clock   stores CLOCK_MONOTONIC (as ticks) into a->now every tick_us, so
 *           a decision reads time with one load instead of a system call
 *           or a vDSO call (docs/enforce.md, "Time", has the measurements);
 *   house   saves the rule set to data_dir when it changed, rolls the usage
 *           windows, asks a server its catalog version (staleness) and
 *           restarts the rule source if it stays behind;
 *   source  pulls and watches the rules (source_watch.c).
 * Decisions run on the caller's thread: an epoch read section around a
 * table lookup and one atomic word (rate) or a few (capacity); the common
 * rate decision reads the handle's copy of its rule instead, with no read
 * section. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../lib/lib.h"
#include "../proto/auth.h"
#include "../proto/client.h"
#include "internal.h"
#include "lkg.h"
#include "source.h"

#define HOUSE_PERIOD_MS      100u
#define PERSIST_MAX_DELAY_MS 1000u /* save at least this often while dirty */
#define PROBE_PERIOD_MS      5000u
#define PROBE_TIMEOUT_MS     2000
#define PROBE_LAG_RESTART    3u /* probes behind in a row before a new pull */

/* --- Instances ------------------------------------------------------------ */

/* Slot handles name their instance by number, so allot_release() can find
 * it without a pointer. */
static struct allot *_Atomic instances[ENF_INSTANCES_MAX + 1];
static pthread_mutex_t instances_mu = PTHREAD_MUTEX_INITIALIZER;

static int instance_register(struct allot *a)
{
    pthread_mutex_lock(&instances_mu);
    for (unsigned i = 1; i <= ENF_INSTANCES_MAX; i++) {
        if (atomic_load(&instances[i]) == NULL) {
            a->inst = i;
            atomic_store(&instances[i], a);
            pthread_mutex_unlock(&instances_mu);
            return 0;
        }
    }
    pthread_mutex_unlock(&instances_mu);
    return ALLOT_ETOO_BIG;
}

static void instance_unregister(struct allot *a)
{
    if (a->inst != 0) {
        pthread_mutex_lock(&instances_mu);
        atomic_store(&instances[a->inst], NULL);
        pthread_mutex_unlock(&instances_mu);
    }
}

/* --- Time ----------------------------------------------------------------- */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t precise_now(const struct allot *a)
{
    return (mono_ns() - a->base_ns) * GCRA_TICKS_PER_NS;
}

void enf_set_now_ns(struct allot *a, uint64_t ns)
{
    atomic_store_explicit(&a->now, ns * GCRA_TICKS_PER_NS,
                          memory_order_relaxed);
}

static void *clock_main(void *arg)
{
    struct allot *a = arg;
    struct timespec tick = {.tv_sec = (time_t)(a->tick_us / 1000000u),
                            .tv_nsec = (long)(a->tick_us % 1000000u) * 1000};
    while (!atomic_load_explicit(&a->stopping, memory_order_relaxed)) {
        atomic_store_explicit(&a->now, precise_now(a), memory_order_relaxed);
        nanosleep(&tick, NULL);
    }
    return NULL;
}

/* Absolute CLOCK_MONOTONIC deadline ms from now (the condvar's clock). */
static struct timespec deadline_in(uint64_t ms)
{
    uint64_t ns = mono_ns() + ms * 1000000u;
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    return ts;
}

/* --- Health --------------------------------------------------------------- */

/* The reserve each priority loses as the host saturates: none below s0,
 * rising linearly to rmax at s1 (docs/enforce.md, "Health"). A reserve of
 * 1 sheds the priority entirely. */
static const struct
{
    double s0, s1, rmax;
} health_curve[4] = {
    [ALLOT_PRIO_CRITICAL] = {2.0, 3.0, 0.0},
    [ALLOT_PRIO_HIGH] = {0.90, 1.00, 0.5},
    [ALLOT_PRIO_NORMAL] = {0.70, 0.90, 1.0},
    [ALLOT_PRIO_LOW] = {0.50, 0.70, 1.0},
};

#define RESERVE_FULL 0xffffu

void allot_set_health(struct allot *a, double saturation)
{
    if (a == NULL) {
        return;
    }
    double s = saturation;
    if (!(s > 0)) {
        s = 0; /* also NaN */
    } else if (s > 1) {
        s = 1;
    }
    uint64_t packed = 0;
    for (unsigned p = 0; p < 4; p++) {
        double x = (s - health_curve[p].s0) /
                   (health_curve[p].s1 - health_curve[p].s0);
        x = x < 0 ? 0 : x > 1 ? 1 : x;
        double r = x * health_curve[p].rmax;
        uint64_t r16 = (uint64_t)(r * RESERVE_FULL + 0.5);
        packed |= (r16 > RESERVE_FULL ? RESERVE_FULL : r16) << (16 * p);
    }
    uint64_t bits;
    memcpy(&bits, &s, sizeof bits);
    atomic_store(&a->health_bits, bits);
    atomic_store_explicit(&a->reserve, packed, memory_order_relaxed);
}

/* What is left of `full` for a priority with reserve r16. */
static inline uint64_t after_reserve(uint64_t full, uint64_t r16)
{
    if (r16 == 0) {
        return full;
    }
    if (r16 >= RESERVE_FULL) {
        return 0;
    }
    if (full == UINT64_MAX) {
        return full; /* no limit: only a full reserve sheds */
    }
    return full - (uint64_t)((double)full * (double)r16 / 65536.0);
}

/* --- Counters ------------------------------------------------------------- */

/* A thread that owns its stripe is the only writer: a plain add. */
static inline void bump(_Atomic uint64_t *f, uint64_t v, bool excl)
{
    if (excl) {
        atomic_store_explicit(f,
                              atomic_load_explicit(f, memory_order_relaxed) + v,
                              memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(f, v, memory_order_relaxed);
    }
}

static void usage_total(struct allot_rule *r, struct allot_usage *u)
{
    memset(u, 0, sizeof *u);
    for (unsigned i = 0; i <= r->a->stripes; i++) {
        const struct enf_ctr *c = &r->ctr[i];
        u->admitted += atomic_load_explicit(&c->admitted, memory_order_relaxed);
        u->rejected += atomic_load_explicit(&c->rejected, memory_order_relaxed);
        u->shadowed += atomic_load_explicit(&c->shadowed, memory_order_relaxed);
        u->delayed += atomic_load_explicit(&c->delayed, memory_order_relaxed);
        u->cost += atomic_load_explicit(&c->cost_extra, memory_order_relaxed);
    }
    u->cost += u->admitted + u->shadowed;
}

/* --- Decisions ------------------------------------------------------------ */

/* r's params in the published table (inside a read section). */
static inline const struct enf_params *params_of(const struct allot_rule *r)
{
    struct enf_table *t =
        atomic_load_explicit(&r->a->table, memory_order_seq_cst); /* epoch.h */
    uint32_t n = atomic_load_explicit(&t->n, memory_order_acquire);
    return r->id < n ? t->p[r->id] : NULL;
}

static void decision_no_rule(struct allot_decision *d)
{
    memset(d, 0, sizeof *d);
    d->allowed = 1;
    d->reason = ALLOT_REASON_NO_RULE;
}

/* The calling thread's counters on r: its own stripe if the instance has
 * one for it (a plain add), else the shared one (atomic adds). */
static inline struct enf_ctr *ctr_of(struct allot_rule *r,
                                     const struct epoch_reader *rd, bool *excl)
{
    uint32_t n = r->a->stripes;
    *excl = rd->stripe < n;
    return &r->ctr[*excl ? rd->stripe : n];
}

/* (d before prio: allot_check's own arguments stay in their registers on
 * the way to it.) */
static int check_slow(struct allot_rule *r, const char *key, uint64_t cost,
                      struct allot_decision *d, int prio);

/* The common case inline: a rate rule on the cached clock, no key table,
 * no health reserve for this priority, a cost of 1, admitted. It reads the
 * rule from the handle's copy (internal.h, struct enf_fast) with loads
 * only, so it enters no read section: its only stores are the TAT's
 * compare-and-swap, the thread's counter and the decision (on x86 every
 * store before a locked instruction must drain before it completes, so
 * each one counts). Anything else (including every refusal) takes
 * check_slow(), which decides from scratch. Every call out is a tail call,
 * so no value lives across a call, and the code keeps few values live at
 * once: each callee-saved register the compiler needs costs a push (a
 * store) and a pop (gcc 12 -O3 keeps two). */
static inline __attribute__((always_inline)) int
check_fast(struct allot_rule *r, const char *key, int prio,
           struct allot_decision *d)
{
    struct allot *a = r->a;
    /* The sequence lock's reader (rules.c, fast_begin, has the argument);
     * on x86-64 every one of these is a plain load. */
    uint64_t g0 = atomic_load_explicit(&r->fast.gen, memory_order_acquire);
    uint64_t inc = atomic_load_explicit(&r->fast.inc1, memory_order_acquire);
    uint64_t tau = atomic_load_explicit(&r->fast.tau, memory_order_acquire);
    uint64_t ufp =
        atomic_load_explicit(&r->fast.units_fp32, memory_order_acquire);
    uint64_t version =
        atomic_load_explicit(&r->fast.version, memory_order_acquire);
    uint64_t g1 = atomic_load_explicit(&r->fast.gen, memory_order_relaxed);
    uint64_t check =
        ENF_FAST_BUSY | ENF_FAST_ON | (key != NULL ? ENF_FAST_PER_KEY : 0u);
    uint64_t reserve = atomic_load_explicit(&a->reserve, memory_order_relaxed);
    /* The thread's record gives its counter stripe; none yet: the general
     * path registers it. */
    if (__builtin_expect(g0 != g1 || (g0 & check) != ENF_FAST_ON ||
                             ((reserve >> (16 * prio)) & RESERVE_FULL) != 0 ||
                             epoch_tls_reader == NULL,
                         0)) {
        return check_slow(r, key, 1, d, prio);
    }
    /* From here the key is absent or ignored (not per_key). */
    uint64_t now = atomic_load_explicit(&a->now, memory_order_relaxed);
    uint64_t limit, next;
    /* Overflow (a tolerance or cost near 2^64 ticks) is the general
     * path's, which saturates. */
    if (__builtin_expect(__builtin_add_overflow(now, tau, &limit), 0)) {
        return check_slow(r, NULL, 1, d, prio);
    }
    uint64_t old = atomic_load_explicit(&r->tat, memory_order_relaxed);
    do {
        if (__builtin_expect(
                __builtin_add_overflow(old > now ? old : now, inc, &next), 0)) {
            return check_slow(r, NULL, 1, d, prio);
        }
        if (__builtin_expect(next > limit, 0)) {
            /* Over the limit: reject, delay or shadow. */
            return check_slow(r, NULL, 1, d, prio);
        }
    } while (!atomic_compare_exchange_weak_explicit(
        &r->tat, &old, next, memory_order_relaxed, memory_order_relaxed));
    /* Read the thread's record again rather than keep it in a register
     * across the loop (one push fewer). */
    atomic_signal_fence(memory_order_seq_cst);
    bool excl;
    struct enf_ctr *c = ctr_of(r, epoch_tls_reader, &excl);
    bump(&c->admitted, 1, excl);
    __extension__ typedef unsigned __int128 u128;
    /* Field by field: the compiler merges them into five 8-byte stores. */
    d->allowed = 1;
    d->shadow = 0;
    d->retry_after_ns = 0;
    d->remaining = (uint64_t)(((u128)(limit - next) * ufp) >> 32);
    d->rule_version = version;
    d->delayed = 0;
    d->reason = ALLOT_REASON_OK;
    return 0;
}

static inline __attribute__((always_inline)) int
check_impl(struct allot_rule *r, const char *key, uint64_t cost, int prio,
           struct allot_decision *d)
{
    if (__builtin_expect(r == NULL || d == NULL || (unsigned)prio > 3u, 0)) {
        return ALLOT_EINVALID;
    }
    if (__builtin_expect(cost != 1, 0)) {
        return check_slow(r, key, cost, d, prio); /* bytes: it multiplies */
    }
    /* Two copies: without a key (the common case) the fast path keeps no
     * register for it. */
    if (key == NULL) {
        return check_fast(r, NULL, prio, d);
    }
    return check_fast(r, key, prio, d);
}

int allot_check(struct allot_rule *r, const char *key, uint64_t cost,
                struct allot_decision *d)
{
    return check_impl(r, key, cost, ALLOT_PRIO_NORMAL, d);
}

int allot_check_prio(struct allot_rule *r, const char *key, uint64_t cost,
                     int prio, struct allot_decision *d)
{
    return check_impl(r, key, cost, prio, d);
}

/* Every case, inside the caller's read section. */
static int check_decide(struct allot_rule *r, const struct enf_params *p,
                        const char *key, uint64_t cost, int prio,
                        struct epoch_reader *rd, struct allot_decision *d);

/* The general path: a read section around the table's params. */
static __attribute__((noinline)) int check_slow(struct allot_rule *r,
                                                const char *key, uint64_t cost,
                                                struct allot_decision *d,
                                                int prio)
{
    struct epoch_reader *rd = epoch_enter();
    if (rd == NULL) {
        return ALLOT_ENOMEM;
    }
    int rv = check_decide(r, params_of(r), key, cost, prio, rd, d);
    epoch_exit(rd);
    return rv;
}

static int check_decide(struct allot_rule *r, const struct enf_params *p,
                        const char *key, uint64_t cost, int prio,
                        struct epoch_reader *rd, struct allot_decision *d)
{
    struct allot *a = r->a;
    int rv = 0;
    if (p == NULL) {
        decision_no_rule(d);
        rv = ALLOT_ENOT_FOUND;
        goto out;
    }
    if (p->kind != QUOTA_KIND_RATE) {
        rv = ALLOT_EINVALID;
        goto out;
    }
    uint64_t now = p->precise_clock
                       ? precise_now(a)
                       : atomic_load_explicit(&a->now, memory_order_relaxed);
    _Atomic uint64_t *tat = &r->tat;
    if (p->per_key && key != NULL) {
        struct keys_table *k =
            atomic_load_explicit(&r->keys, memory_order_acquire);
        if (k == NULL) {
            rv = ALLOT_ENOMEM;
            goto out;
        }
        tat = keys_lookup(k, keys_hash(a->keys_seed, key), now);
    }
    uint64_t r16 = (atomic_load_explicit(&a->reserve, memory_order_relaxed) >>
                    (16 * prio)) &
                   RESERVE_FULL;
    uint64_t tau = after_reserve(p->g.tau, r16);
    uint64_t inc = gcra_cost_ticks(&p->g, cost);
    struct gcra_result g;
    gcra_decide(tat, now, &p->g, inc, tau, &g);

    bool excl;
    struct enf_ctr *c = ctr_of(r, rd, &excl);
    d->rule_version = p->version;
    d->remaining = g.remaining;
    d->shadow = 0;
    d->delayed = 0;
    d->retry_after_ns = 0;
    d->reason = ALLOT_REASON_OK;
    switch (g.outcome) {
    case GCRA_ADMIT:
        d->allowed = 1;
        bump(&c->admitted, 1, excl);
        bump(&c->cost_extra, cost - 1, excl);
        break;
    case GCRA_DELAY:
        d->allowed = 1;
        d->delayed = 1;
        d->retry_after_ns = gcra_ticks_to_ns(g.wait);
        bump(&c->admitted, 1, excl);
        bump(&c->delayed, 1, excl);
        bump(&c->cost_extra, cost - 1, excl);
        break;
    default: {
        /* Over the limit: by the rule's own tolerance, or only by the
         * reserve health keeps back from this priority? */
        bool health = r16 != 0 && !g.too_big && g.wait <= p->g.tau - tau;
        health = health || (r16 != 0 && g.too_big && inc <= p->g.tau);
        d->reason = health      ? ALLOT_REASON_HEALTH
                    : g.too_big ? ALLOT_REASON_TOO_BIG
                                : ALLOT_REASON_LIMIT;
        d->retry_after_ns =
            health ? ENF_HEALTH_RETRY_NS : gcra_ticks_to_ns(g.wait);
        if (g.outcome == GCRA_SHADOW) {
            d->allowed = 1;
            d->shadow = 1;
            bump(&c->shadowed, 1, excl);
            bump(&c->cost_extra, cost - 1, excl);
        } else {
            d->allowed = 0;
            bump(&c->rejected, 1, excl);
        }
        break;
    }
    }
out:
    return rv;
}

/* Add `amount` to *ctr unless that passes `limit`. */
static bool take(_Atomic uint64_t *ctr, uint64_t amount, uint64_t limit)
{
    uint64_t cur = atomic_load_explicit(ctr, memory_order_relaxed);
    do {
        if (amount > limit || cur > limit - amount) {
            return false;
        }
    } while (!atomic_compare_exchange_weak_explicit(
        ctr, &cur, cur + amount, memory_order_acq_rel, memory_order_relaxed));
    return true;
}

int allot_acquire(struct allot_rule *r, const char *key,
                  struct allot_slot **out)
{
    return allot_acquire_res(r, key, 0, 0, ALLOT_PRIO_NORMAL, out, NULL);
}

int allot_acquire_res(struct allot_rule *r, const char *key, uint64_t memory_mb,
                      uint64_t vcores, int prio, struct allot_slot **out,
                      struct allot_decision *d)
{
    (void)key;
    if (r == NULL || out == NULL || prio < 0 || prio > 3) {
        return ALLOT_EINVALID;
    }
    *out = NULL;
    struct allot_decision dummy;
    if (d == NULL) {
        d = &dummy;
    }
    memset(d, 0, sizeof *d);
    struct allot *a = r->a;
    struct epoch_reader *rd = epoch_enter();
    if (rd == NULL) {
        return ALLOT_ENOMEM;
    }
    int rv = 0;
    const struct enf_params *p = params_of(r);
    if (p == NULL) {
        decision_no_rule(d);
        rv = ALLOT_ENOT_FOUND;
        goto out;
    }
    if (p->kind != QUOTA_KIND_CAPACITY) {
        rv = ALLOT_EINVALID;
        goto out;
    }
    d->rule_version = p->version;
    uint32_t idx = slot_pool_get(&a->slots);
    if (idx == SLOT_NONE) {
        rv = ALLOT_ETOO_BIG;
        goto out;
    }
    uint64_t r16 = (atomic_load_explicit(&a->reserve, memory_order_relaxed) >>
                    (16 * prio)) &
                   RESERVE_FULL;
    uint64_t lim_apps = after_reserve(p->max_apps, r16);
    uint64_t lim_mem = after_reserve(p->max_memory_mb, r16);
    uint64_t lim_vc = after_reserve(p->max_vcores, r16);
    bool ok = take(&r->apps, 1, lim_apps);
    if (ok && !take(&r->memory_mb, memory_mb, lim_mem)) {
        atomic_fetch_sub(&r->apps, 1);
        ok = false;
    }
    if (ok && !take(&r->vcores, vcores, lim_vc)) {
        atomic_fetch_sub(&r->apps, 1);
        atomic_fetch_sub(&r->memory_mb, memory_mb);
        ok = false;
    }
    bool shadow = false;
    bool excl;
    struct enf_ctr *c = ctr_of(r, rd, &excl);
    if (!ok) {
        bool too_big = memory_mb > p->max_memory_mb || vcores > p->max_vcores;
        bool would_fit_full =
            !too_big && r16 != 0 && atomic_load(&r->apps) + 1 <= p->max_apps &&
            atomic_load(&r->memory_mb) + memory_mb <= p->max_memory_mb &&
            atomic_load(&r->vcores) + vcores <= p->max_vcores;
        d->reason = would_fit_full ? ALLOT_REASON_HEALTH
                    : too_big      ? ALLOT_REASON_TOO_BIG
                                   : ALLOT_REASON_LIMIT;
        if (p->on_exceed != QUOTA_EXCEED_SHADOW) {
            slot_pool_put(&a->slots, idx);
            d->allowed = 0;
            d->retry_after_ns = would_fit_full ? ENF_HEALTH_RETRY_NS : 0;
            bump(&c->rejected, 1, excl);
            goto out;
        }
        /* Shadow: hold the resources anyway, so the counts stay true. */
        atomic_fetch_add(&r->apps, 1);
        atomic_fetch_add(&r->memory_mb, memory_mb);
        atomic_fetch_add(&r->vcores, vcores);
        shadow = true;
    }
    uint64_t held = atomic_load_explicit(&r->apps, memory_order_relaxed);
    uint64_t peak = atomic_load_explicit(&r->peak, memory_order_relaxed);
    while (peak < held &&
           !atomic_compare_exchange_weak(&r->peak, &peak, held)) {
    }
    struct slot_entry *e = &a->slots.e[idx];
    uint64_t st = atomic_load_explicit(&e->state, memory_order_relaxed);
    uint32_t gen = (uint32_t)((st >> 1) + 1u);
    e->rule = r;
    e->memory_mb = memory_mb;
    e->vcores = vcores;
    e->shadow = shadow;
    atomic_store_explicit(&e->state, ((uint64_t)gen << 1) | 1u,
                          memory_order_release);
    atomic_fetch_add_explicit(&a->slots.in_use, 1, memory_order_relaxed);
    *out =
        (struct allot_slot *)slot_handle_make(a->inst, idx, gen ^ a->slot_salt);
    d->allowed = 1;
    d->shadow = shadow;
    d->remaining = lim_apps == UINT64_MAX ? UINT64_MAX
                   : held >= lim_apps     ? 0
                                          : lim_apps - held;
    if (shadow) {
        bump(&c->shadowed, 1, excl);
    } else {
        bump(&c->admitted, 1, excl);
    }
out:
    epoch_exit(rd);
    return rv;
}

void allot_release(struct allot_slot *s)
{
    unsigned inst;
    uint32_t idx, hgen;
    if (s == NULL || !slot_handle_parse((uintptr_t)s, &inst, &idx, &hgen) ||
        inst == 0) {
        return;
    }
    struct allot *a = atomic_load(&instances[inst]);
    if (a == NULL || idx >= a->slots.cap) {
        return;
    }
    struct slot_entry *e = &a->slots.e[idx];
    uint32_t gen = hgen ^ a->slot_salt;
    uint64_t held = ((uint64_t)gen << 1) | 1u;
    /* Only the holder of this generation may flip it: a second release
     * (or a stale handle) finds another value and changes nothing. */
    if (!atomic_compare_exchange_strong_explicit(
            &e->state, &held, (uint64_t)gen << 1, memory_order_acq_rel,
            memory_order_relaxed)) {
        atomic_fetch_add(&a->slots.stale_releases, 1);
        return;
    }
    struct allot_rule *r = e->rule;
    atomic_fetch_sub(&r->apps, 1);
    atomic_fetch_sub(&r->memory_mb, e->memory_mb);
    atomic_fetch_sub(&r->vcores, e->vcores);
    atomic_fetch_sub_explicit(&a->slots.in_use, 1, memory_order_relaxed);
    slot_pool_put(&a->slots, idx);
}

/* --- Rules and versions --------------------------------------------------- */

int allot_rule(struct allot *a, const char *path, struct allot_rule **out)
{
    if (a == NULL || out == NULL) {
        return ALLOT_EINVALID;
    }
    return rules_handle(a, path, out);
}

size_t allot_rules(struct allot *a, struct allot_rule **out, size_t cap)
{
    if (a == NULL) {
        return 0;
    }
    pthread_mutex_lock(&a->mu);
    size_t n = a->n_handles;
    for (size_t i = 0; i < n && i < cap && out != NULL; i++) {
        out[i] = a->handles[i];
    }
    pthread_mutex_unlock(&a->mu);
    return n;
}

const char *allot_rule_path(const struct allot_rule *r)
{
    return r != NULL ? r->path : "";
}

uint64_t allot_catalog_version(struct allot *a)
{
    return a != NULL ? atomic_load(&a->version) : 0;
}

int allot_wait_version(struct allot *a, uint64_t version, int timeout_ms)
{
    if (a == NULL) {
        return ALLOT_EINVALID;
    }
    struct timespec dl = deadline_in(timeout_ms > 0 ? (uint64_t)timeout_ms : 0);
    int rv = 0;
    pthread_mutex_lock(&a->mu);
    while (atomic_load(&a->version) < version) {
        if (atomic_load(&a->stopping)) {
            rv = ALLOT_ESHUTDOWN;
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&a->cv, &a->mu);
        } else if (pthread_cond_timedwait(&a->cv, &a->mu, &dl) == ETIMEDOUT) {
            rv = atomic_load(&a->version) >= version ? 0 : ALLOT_ETIMEOUT;
            break;
        }
    }
    pthread_mutex_unlock(&a->mu);
    return rv;
}

const char *allot_reason_name(int reason)
{
    switch (reason) {
    case ALLOT_REASON_OK:
        return "ok";
    case ALLOT_REASON_LIMIT:
        return "limit";
    case ALLOT_REASON_HEALTH:
        return "health";
    case ALLOT_REASON_TOO_BIG:
        return "too_big";
    case ALLOT_REASON_NO_RULE:
        return "no_rule";
    default:
        return "unknown";
    }
}

/* --- Stats and windows ---------------------------------------------------- */

int allot_stats(struct allot *a, struct allot_stats *st)
{
    if (a == NULL || st == NULL) {
        return ALLOT_EINVALID;
    }
    memset(st, 0, sizeof *st);
    st->catalog_version = atomic_load(&a->version);
    st->server_version = atomic_load(&a->server_version);
    st->versions_behind = st->server_version > st->catalog_version
                              ? st->server_version - st->catalog_version
                              : 0;
    pthread_mutex_lock(&a->mu);
    st->rules = a->n_rules;
    st->handles = a->n_handles;
    for (uint32_t i = 0; i < a->n_handles; i++) {
        struct keys_table *k = atomic_load(&a->handles[i]->keys);
        if (k != NULL) {
            st->key_evictions += atomic_load(&k->evictions);
        }
    }
    pthread_mutex_unlock(&a->mu);
    uint64_t now = clock_wall_ms();
    st->confirmed_ms = atomic_load(&a->confirmed_ms);
    st->disk_saved_ms = atomic_load(&a->disk_saved_ms);
    st->disk_version = atomic_load(&a->disk_version);
    st->from_disk = atomic_load(&a->from_disk);
    uint64_t since = st->confirmed_ms;
    if (st->from_disk || since == 0) {
        since = st->disk_saved_ms;
    }
    st->age_ms = since != 0 && now > since ? now - since : 0;
    uint64_t contact = atomic_load(&a->last_contact_ms);
    st->source_connected =
        contact != 0 && now < contact + 2u * PROBE_PERIOD_MS + 1000u;
    st->pulls = atomic_load(&a->pulls);
    st->changes = atomic_load(&a->changes);
    st->resyncs = atomic_load(&a->resyncs);
    st->persist_errors = atomic_load(&a->persist_errors);
    st->slots_in_use = atomic_load(&a->slots.in_use);
    st->stale_releases = atomic_load(&a->slots.stale_releases);
    uint64_t bits = atomic_load(&a->health_bits);
    memcpy(&st->health, &bits, sizeof bits);
    st->weight = a->weight;
    st->total_weight = a->weight;
    st->gossip_configured = a->gossip_configured;
    st->announced_version = atomic_load(&a->announced_version);
    st->announcements = atomic_load(&a->announcements);
    st->deltas = atomic_load(&a->deltas);
    st->digest_mismatches = atomic_load(&a->digest_mismatches);
    st->gossip_members = atomic_load(&a->gossip_members);
    st->gossip_servers = atomic_load(&a->gossip_servers);
    st->usage_reports = atomic_load(&a->usage_reports);
    st->usage_errors = atomic_load(&a->usage_errors);
    st->fleet_members = atomic_load(&a->fleet_members);
    rules_view_state(a, &st->view_version, &st->share_state);
    if (st->announced_version > st->server_version) {
        st->server_version = st->announced_version;
        st->versions_behind = st->server_version > st->catalog_version
                                  ? st->server_version - st->catalog_version
                                  : 0;
    }
    return 0;
}

int allot_rule_stats(struct allot_rule *r, struct allot_rule_stats *st)
{
    if (r == NULL || st == NULL) {
        return ALLOT_EINVALID;
    }
    memset(st, 0, sizeof *st);
    struct epoch_reader *rd = epoch_enter();
    if (rd == NULL) {
        return ALLOT_ENOMEM;
    }
    const struct enf_params *p = params_of(r);
    if (p != NULL) {
        st->rule_version = p->version;
        st->kind = p->kind;
        st->local_rate = p->local_rate;
        st->local_burst = p->local_burst;
        st->local_max_apps = p->max_apps;
        st->local_max_memory_mb = p->max_memory_mb;
        st->local_max_vcores = p->max_vcores;
    }
    epoch_exit(rd);
    st->in_use_apps = atomic_load(&r->apps);
    st->in_use_memory_mb = atomic_load(&r->memory_mb);
    st->in_use_vcores = atomic_load(&r->vcores);
    usage_total(r, &st->total);
    st->total.peak = atomic_load(&r->peak);
    struct allot *a = r->a;
    pthread_mutex_lock(&a->stats_mu);
    st->window = r->win_last;
    st->window_start_ms = a->win_last_start_ms;
    st->window_ms = a->window_ms;
    pthread_mutex_unlock(&a->stats_mu);
    return 0;
}

void enf_roll_windows(struct allot *a)
{
    uint64_t now = clock_wall_ms();
    double secs = (double)a->window_ms / 1000.0;
    pthread_mutex_lock(&a->mu);
    pthread_mutex_lock(&a->stats_mu);
    for (uint32_t i = 0; i < a->n_handles; i++) {
        struct allot_rule *r = a->handles[i];
        struct allot_usage t;
        usage_total(r, &t);
        r->win_last.admitted = t.admitted - r->win_base.admitted;
        r->win_last.rejected = t.rejected - r->win_base.rejected;
        r->win_last.shadowed = t.shadowed - r->win_base.shadowed;
        r->win_last.delayed = t.delayed - r->win_base.delayed;
        r->win_last.cost = t.cost - r->win_base.cost;
        /* The peak restarts from what is held as the new window opens. */
        r->win_last.peak = atomic_exchange(&r->peak, atomic_load(&r->apps));
        r->win_base = t;
        /* Wanted = admitted units + refused requests (a refused request's
         * size is not counted: bytes rules under-report refused demand). */
        double wanted = (double)(r->win_last.cost + r->win_last.rejected) /
                        (secs > 0 ? secs : 1);
        r->demand_avg = r->demand_avg < 0
                            ? wanted
                            : ENF_DEMAND_ALPHA * wanted +
                                  (1 - ENF_DEMAND_ALPHA) * r->demand_avg;
    }
    a->win_last_start_ms = a->win_start_ms;
    a->win_start_ms = now;
    pthread_mutex_unlock(&a->stats_mu);
    pthread_mutex_unlock(&a->mu);
}

/* --- Persistence ---------------------------------------------------------- */

int enf_persist(struct allot *a, bool force)
{
    pthread_mutex_lock(&a->mu);
    if (!a->dirty && !force) {
        pthread_mutex_unlock(&a->mu);
        return 0;
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    uint64_t version;
    int rv = rules_pack_for_disk(a, &sb, &version);
    a->dirty = false;
    pthread_mutex_unlock(&a->mu);
    char msg[ALLOT_ERRMSG_SIZE];
    uint64_t now = clock_wall_ms();
    if (rv == 0) {
        rv = lkg_save(a->data_dir, sb.data, sb.size, version, now, msg);
    } else {
        allot_errf(msg, rv, "cannot pack the rules");
    }
    msgpack_sbuffer_destroy(&sb);
    if (rv != 0) {
        atomic_fetch_add(&a->persist_errors, 1);
        pthread_mutex_lock(&a->mu);
        a->dirty = true; /* try again later */
        pthread_mutex_unlock(&a->mu);
        LOGE("enforce", "cannot save the rules", "err=%s msg=\"%s\"",
             allot_error_name(rv), msg);
        return rv;
    }
    atomic_store(&a->disk_saved_ms, now);
    atomic_store(&a->disk_version, version);
    return 0;
}

/* --- Housekeeping --------------------------------------------------------- */

static void *house_main(void *arg)
{
    struct allot *a = arg;
    uint64_t last_change_seen = 0, dirty_since = 0, next_probe = 0;
    unsigned behind = 0;
    bool report_failing = false; /* log once per streak of failures */
    struct allot_client *probe = NULL;
    pthread_mutex_lock(&a->stats_mu);
    a->win_start_ms = clock_wall_ms();
    pthread_mutex_unlock(&a->stats_mu);
    uint64_t next_roll = clock_wall_ms() + a->window_ms;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        struct timespec dl = deadline_in(HOUSE_PERIOD_MS);
        while (!atomic_load(&a->stopping) &&
               pthread_cond_timedwait(&a->cv, &a->mu, &dl) != ETIMEDOUT) {
        }
        bool dirty = a->dirty;
        pthread_mutex_unlock(&a->mu);
        if (atomic_load(&a->stopping)) {
            break;
        }
        uint64_t now = clock_wall_ms();
        /* Save once a period passes without a change (or every second
         * under a steady stream), not once per change. */
        uint64_t changes = atomic_load(&a->changes) + atomic_load(&a->pulls);
        if (dirty && dirty_since == 0) {
            dirty_since = now;
        }
        if (dirty && (changes == last_change_seen ||
                      now >= dirty_since + PERSIST_MAX_DELAY_MS)) {
            if (enf_persist(a, false) == 0) {
                dirty_since = 0;
            }
        }
        last_change_seen = changes;
        if (now >= next_roll) {
            enf_roll_windows(a);
            next_roll = now + a->window_ms;
            char msg[ALLOT_ERRMSG_SIZE];
            int rv = report_usage(a, msg);
            if (rv >= 0) {
                report_failing = false;
                atomic_fetch_add(&a->usage_reports, (uint64_t)rv);
            } else if (!atomic_load(&a->stopping)) {
                atomic_fetch_add(&a->usage_errors, 1);
                if (!report_failing) {
                    LOGW("enforce", "usage window not reported",
                         "err=%s msg=\"%s\"", allot_error_name(rv), msg);
                }
                report_failing = true;
            }
        }
        if (a->servers != NULL && now >= next_probe) {
            next_probe = now + PROBE_PERIOD_MS;
            char msg[ALLOT_ERRMSG_SIZE];
            if (probe == NULL &&
                source_client_open(a, PROBE_TIMEOUT_MS, &probe, msg) != 0) {
                continue;
            }
            uint64_t sv;
            if (source_probe(probe, &sv) == 0) {
                rules_confirm(a, sv);
                behind = atomic_load(&a->version) < sv ? behind + 1 : 0;
                if (behind >= PROBE_LAG_RESTART) {
                    /* The watch's node may be cut off from the leader:
                     * read everything again, wherever the client lands. */
                    LOGW("enforce",
                         "rules stay behind the servers; reading again",
                         "version=%llu server_version=%llu",
                         (unsigned long long)atomic_load(&a->version),
                         (unsigned long long)sv);
                    pthread_mutex_lock(&a->mu);
                    a->need_resync = true;
                    pthread_mutex_unlock(&a->mu);
                    source_watch_kick(a->source);
                    behind = 0;
                }
            }
        }
    }
    allot_client_close(probe);
    return NULL;
}

/* --- Open and close ------------------------------------------------------- */

static int dup_opt(const char *s, char **out)
{
    *out = NULL;
    if (s == NULL) {
        return 0;
    }
    *out = strdup(s);
    return *out != NULL ? 0 : ALLOT_ENOMEM;
}

static int check_options(const struct allot_options *o)
{
    if (o->data_dir == NULL || o->data_dir[0] == '\0') {
        return ALLOT_EINVALID;
    }
    if (!(o->weight >= 0) || isinf(o->weight)) {
        return ALLOT_EINVALID;
    }
    if (o->max_slots > SLOT_CAP_MAX || o->per_key_max > (1u << 24) ||
        (o->clock_tick_us != 0 && o->clock_tick_us > 1000000u) ||
        (o->identity != NULL && o->token != NULL)) {
        return ALLOT_EINVALID;
    }
    if (o->host_name != NULL) {
        size_t n = strlen(o->host_name);
        for (size_t i = 0; i < n; i++) {
            if (o->host_name[i] <= 0x20 || o->host_name[i] > 0x7e) {
                return ALLOT_EINVALID;
            }
        }
        if (n == 0 || n > 64) {
            return ALLOT_EINVALID;
        }
    }
    if (o->fleet != NULL) {
        size_t n = strlen(o->fleet);
        if (n == 0 || n > QUOTA_FLEET_MAX) {
            return ALLOT_EINVALID;
        }
    }
    return 0;
}

static void free_config(struct allot *a)
{
    free(a->data_dir);
    free(a->fleet);
    free(a->servers);
    free(a->identity);
    free(a->token);
}

static int open_data_dir(struct allot *a)
{
    if (mkdir(a->data_dir, 0700) != 0 && errno != EEXIST) {
        LOGE("enforce", "cannot create the data dir", "dir=%s err=\"%s\"",
             a->data_dir, strerror(errno));
        return ALLOT_EIO;
    }
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/.lock", a->data_dir) >=
        sizeof path) {
        return ALLOT_EINVALID;
    }
    a->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (a->lock_fd < 0) {
        LOGE("enforce", "cannot open the lock file", "path=%s err=\"%s\"", path,
             strerror(errno));
        return ALLOT_EIO;
    }
    if (flock(a->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(a->lock_fd);
        a->lock_fd = -1;
        if (e == EWOULDBLOCK) {
            LOGE("enforce", "data dir in use by another instance", "dir=%s",
                 a->data_dir);
            return ALLOT_EEXISTS;
        }
        return ALLOT_EIO;
    }
    return 0;
}

static void load_disk(struct allot *a)
{
    struct lkg_doc doc;
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = lkg_load(a->data_dir, &doc, msg);
    if (rv == ALLOT_ENOT_FOUND) {
        return;
    }
    if (rv != 0) {
        LOGE("enforce", "rules on disk ignored", "err=%s msg=\"%s\"",
             allot_error_name(rv), msg);
        return;
    }
    rv = rules_replace(a, doc.quotas, doc.n, doc.version, true);
    if (rv == 0) {
        atomic_store(&a->disk_saved_ms, doc.saved_ms);
        atomic_store(&a->disk_version, doc.version);
        LOGI("enforce", "rules loaded from disk",
             "version=%llu rules=%zu saved_ms=%llu",
             (unsigned long long)doc.version, doc.n,
             (unsigned long long)doc.saved_ms);
    }
    lkg_free(&doc);
}

static void stop_threads(struct allot *a)
{
    atomic_store(&a->stopping, 1);
    if (a->cancel_fd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(a->cancel_fd, &one, sizeof one);
        (void)w; /* an eventfd write of 1 cannot fail short of overflow */
    }
    pthread_mutex_lock(&a->mu);
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    /* The housekeeping thread first: it reaches into the sources (a kick,
     * the gossip's server list for usage reports), so they must outlive
     * it. The cancel fd above ends any call it is blocked in. */
    if (a->house_started) {
        pthread_join(a->house_thr, NULL);
        a->house_started = false;
    }
    source_watch_stop(a->source);
    a->source = NULL;
    source_gossip_stop(a->gossip);
    a->gossip = NULL;
    if (a->clock_started) {
        pthread_join(a->clock_thr, NULL);
        a->clock_started = false;
    }
}

int enf_open(const struct allot_options *opts, const struct enf_test_hooks *h,
             struct allot **out)
{
    if (opts == NULL || out == NULL) {
        return ALLOT_EINVALID;
    }
    int rv = check_options(opts);
    if (rv != 0) {
        return rv;
    }
    if (auth_init() != 0 || epoch_global_init() != 0) {
        return ALLOT_EINTERNAL;
    }
    struct allot *a = aligned_alloc(64, (sizeof *a + 63u) & ~(size_t)63u);
    if (a == NULL) {
        return ALLOT_ENOMEM;
    }
    memset(a, 0, sizeof *a);
    a->lock_fd = -1;
    a->cancel_fd = -1;
    a->manual_clock = h != NULL && h->manual_clock;
    a->weight = opts->weight > 0 ? opts->weight : 1.0;
    /* The whole of every limit until a gossip view says otherwise. */
    atomic_init(&a->frac_equal, 1.0);
    atomic_init(&a->frac_weighted, 1.0);
    uint64_t start_ms = clock_mono_ns() / 1000000u;
    a->share_equal =
        (struct shares_host){.joined_ms = start_ms, .last_part = -1};
    a->share_weighted = a->share_equal;
    a->per_key_max =
        opts->per_key_max ? opts->per_key_max : ENF_PER_KEY_DEFAULT;
    a->max_handles =
        opts->max_handles ? opts->max_handles : ENF_MAX_HANDLES_DEFAULT;
    a->tick_us =
        opts->clock_tick_us ? opts->clock_tick_us : ENF_TICK_US_DEFAULT;
    a->window_ms = opts->window_ms ? opts->window_ms : ENF_WINDOW_MS_DEFAULT;
    a->stripes = opts->counter_stripes == 0 ? EPOCH_STRIPES
                 : opts->counter_stripes > EPOCH_STRIPES
                     ? EPOCH_STRIPES
                     : opts->counter_stripes;
    a->gossip_configured = opts->gossip_bind != NULL;
    if (opts->host_name != NULL) {
        snprintf(a->host_name, sizeof a->host_name, "%s", opts->host_name);
    }
    rv = dup_opt(opts->data_dir, &a->data_dir);
    rv = rv ? rv : dup_opt(opts->fleet ? opts->fleet : "default", &a->fleet);
    rv = rv ? rv : dup_opt(opts->servers, &a->servers);
    rv = rv ? rv : dup_opt(opts->identity, &a->identity);
    rv = rv ? rv : dup_opt(opts->token, &a->token);
    if (rv != 0) {
        goto err_after_config;
    }
    rv = open_data_dir(a);
    if (rv != 0) {
        goto err_after_config;
    }
    rv = ALLOT_ENOMEM;
    a->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (a->cancel_fd < 0) {
        goto err_after_lock;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&a->mu, NULL);
    pthread_mutex_init(&a->view_mu, NULL);
    pthread_mutex_init(&a->stats_mu, NULL);
    pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);
    RB_INIT(&a->mirror);
    uint32_t max_slots =
        opts->max_slots ? opts->max_slots : ENF_MAX_SLOTS_DEFAULT;
    if (slot_pool_init(&a->slots, max_slots) != 0) {
        goto err_after_sync;
    }
    struct enf_table *t = calloc(1, sizeof *t);
    if (t == NULL) {
        goto err_after_slots;
    }
    atomic_init(&t->n, 0);
    atomic_store(&a->table, t);
    a->base_ns = mono_ns() - 1000000000u;
    atomic_store(&a->now, precise_now(a));
    a->keys_seed = lib_random_u64();
    a->slot_salt = (uint32_t)lib_random_u64();
    rv = instance_register(a);
    if (rv != 0) {
        goto err_after_table;
    }
    load_disk(a);

    char msg[ALLOT_ERRMSG_SIZE] = "";
    rv = ALLOT_ENOMEM;
    if (!a->manual_clock) {
        if (pthread_create(&a->clock_thr, NULL, clock_main, a) != 0) {
            goto err_after_threads;
        }
        a->clock_started = true;
    }
    if (h == NULL || !h->no_threads) {
        if (pthread_create(&a->house_thr, NULL, house_main, a) != 0) {
            goto err_after_threads;
        }
        a->house_started = true;
        if (a->gossip_configured) {
            rv = source_gossip_start(a, opts, &a->gossip, msg);
            if (rv != 0) {
                LOGE("enforce", "cannot start the gossip member",
                     "err=%s msg=\"%s\"", allot_error_name(rv), msg);
                goto err_after_threads;
            }
        } else if (a->servers != NULL) {
            rv = source_watch_start(a, &a->source, msg);
            if (rv != 0) {
                LOGE("enforce", "cannot start the rule source",
                     "err=%s msg=\"%s\"", allot_error_name(rv), msg);
                goto err_after_threads;
            }
        }
    }
    if (a->host_name[0] == '\0') {
        report_default_host(a->host_name, sizeof a->host_name);
    }
    if (!a->gossip_configured &&
        (opts->gossip_seeds != NULL || opts->gossip_keyring != NULL)) {
        LOGW("enforce", "gossip_seeds and gossip_keyring need gossip_bind",
             "%s", "ignored=1");
    }
    *out = a;
    return 0;

err_after_threads:
    stop_threads(a);
    instance_unregister(a);
err_after_table:
    rules_close(a);
err_after_slots:
    slot_pool_close(&a->slots);
err_after_sync:
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->stats_mu);
    pthread_mutex_destroy(&a->mu);
    pthread_mutex_destroy(&a->view_mu);
    close(a->cancel_fd);
err_after_lock:
    close(a->lock_fd);
err_after_config:
    free_config(a);
    free(a);
    return rv;
}

int allot_open(const struct allot_options *opts, struct allot **out)
{
    return enf_open(opts, NULL, out);
}

void allot_close(struct allot *a)
{
    if (a == NULL) {
        return;
    }
    stop_threads(a);
    enf_persist(a, false);
    instance_unregister(a);
    rules_close(a);
    slot_pool_close(&a->slots);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->stats_mu);
    pthread_mutex_destroy(&a->mu);
    pthread_mutex_destroy(&a->view_mu);
    close(a->cancel_fd);
    close(a->lock_fd);
    free_config(a);
    free(a);
}
