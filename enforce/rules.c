/* rules.c - liballot's rule set: what the sources feed, what decisions see.
 *
 * Writers (rule sources, allot_rule) hold a->mu. They keep the mirror, an
 * ordered tree of every rule received (path -> params), and the handles
 * (path -> struct allot_rule, with a dense id each). Decisions never touch
 * either: they read the published table, an array from handle id to
 * params, reached through one atomic pointer.
 *
 * An update: build the new params outside the lock (allocation may fail
 * there and change nothing), then under the lock link them into the mirror,
 * put the params they replace on the retired list, build and publish a new
 * table, wait for a grace period (epoch_synchronize) and only then free
 * the old table and everything retired. A path no handle resolved has no
 * place in any table, so its replaced params are freed at once.
 *
 * Replays are harmless: every rule carries the version of its last change,
 * and a change at or below the version already held for that path is
 * skipped. That makes "pull every page, then watch from the first page's
 * version" converge to the server's state. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../gossip/gossip.h"
#include "../lib/lib.h"
#include "../proto/wire.h"
#include "internal.h"

static int params_cmp(const struct enf_params *x, const struct enf_params *y)
{
    return strcmp(x->path, y->path);
}

RB_GENERATE_STATIC(enf_mirror, enf_params, link, params_cmp)

/* --- Shares --------------------------------------------------------------- */

static uint64_t sat_mul_ticks(double units, double t)
{
    double x = units * t + 0.5;
    return x < 0x1p64 ? (uint64_t)x : UINT64_MAX;
}

/* The fraction of a fleet limit this host enforces for a rule: its part
 * of its own fleet's limits (1 until its gossip member has a view), and
 * the whole limit of a rule for a fleet it is not in. `demand` divides
 * like `weighted` until hosts gossip their demand. */
static struct enf_demand *demand_find(struct allot *a, uint32_t hash)
{
    for (unsigned i = 0; i < ENF_DEMAND_RULES; i++) {
        if (a->demand[i].hash == hash) {
            return &a->demand[i];
        }
    }
    return NULL;
}

static double share_fraction(struct allot *a, const struct enf_params *p)
{
    if (strcmp(p->fleet != NULL ? p->fleet : "default", a->fleet) != 0) {
        return 1.0;
    }
    double f = p->share == QUOTA_SHARE_EQUAL ? atomic_load(&a->frac_equal)
                                             : atomic_load(&a->frac_weighted);
    if (p->share == QUOTA_SHARE_DEMAND) {
        /* Its own part once the fleet's demands are known; until then
         * (and beyond ENF_DEMAND_RULES rules) by weight. */
        pthread_mutex_lock(&a->view_mu);
        const struct enf_demand *d = demand_find(a, shares_rule_hash(p->path));
        if (d != NULL && d->frac > 0) {
            f = d->frac;
        }
        pthread_mutex_unlock(&a->view_mu);
    }
    return f > 0 && f <= 1.0 ? f : 1.0;
}

/* This host's slots of a capacity limit (0 = none: no limit): its part by
 * weight over the last settled view of its fleet, by largest remainders
 * (shares_slots), or the whole limit without one. Takes view_mu. */
static uint64_t slots_local(struct allot *a, const struct enf_params *p,
                            uint64_t total)
{
    if (total == 0) {
        return UINT64_MAX;
    }
    if (strcmp(p->fleet != NULL ? p->fleet : "default", a->fleet) != 0) {
        return total;
    }
    pthread_mutex_lock(&a->view_mu);
    size_t n = a->view_n;
    if (n == 0) {
        pthread_mutex_unlock(&a->view_mu);
        return total;
    }
    double *w = malloc(n * sizeof *w);
    uint64_t *out = malloc(n * sizeof *out);
    uint64_t mine = total; /* out of memory: the whole limit, as before */
    if (w != NULL && out != NULL) {
        for (size_t i = 0; i < n; i++) {
            w[i] = a->view[i].weight;
        }
        if (shares_slots(w, total, a->view, n, out) == 0) {
            mine = out[a->view_self];
        }
    }
    pthread_mutex_unlock(&a->view_mu);
    free(w);
    free(out);
    return mine;
}

/* The fields that depend on this host's part: a rate rule's local rate
 * and burst and the GCRA parameters they give; a capacity rule's slots. */
static void params_local(struct allot *a, struct enf_params *p)
{
    uint64_t gen = atomic_load(&a->share_gen);
    if (p->kind != QUOTA_KIND_RATE) {
        p->share_gen = gen;
        p->max_apps = slots_local(a, p, p->total_apps);
        p->max_memory_mb = slots_local(a, p, p->total_memory_mb);
        p->max_vcores = slots_local(a, p, p->total_vcores);
        return;
    }
    double frac = share_fraction(a, p);
    double rate = p->rate > 0 ? p->rate : QUOTA_RATE_MIN;
    uint64_t burst = p->burst > 0 ? p->burst : (uint64_t)ceil(rate);
    p->share_gen = gen;
    p->local_rate = rate * frac;
    p->local_burst = burst;
    if (frac < 1.0) {
        /* shares_burst()'s rule: proportional, rounded up, at least 1. */
        double b = ceil((double)burst * frac - 1e-9);
        p->local_burst = b < 1 ? 1 : (uint64_t)b;
    }
    p->g.t = (double)GCRA_TICKS_PER_NS * 1e9 / p->local_rate;
    p->g.inv_t = 1.0 / p->g.t;
    p->g.tau = sat_mul_ticks((double)p->local_burst, p->g.t);
    p->g.max_delay =
        sat_mul_ticks((double)p->max_delay_ms, 1e6 * GCRA_TICKS_PER_NS);
    p->g.mode =
        p->on_exceed <= QUOTA_EXCEED_DELAY ? p->on_exceed : QUOTA_EXCEED_REJECT;
    uint64_t tick = (uint64_t)a->tick_us * 1000u * GCRA_TICKS_PER_NS;
    p->precise_clock = !a->manual_clock && p->g.tau < ENF_PRECISE_TICKS * tick;
    p->fast = !p->precise_clock;
    p->inc1 = gcra_cost_ticks(&p->g, 1);
    double u = ceil(0x1p32 / p->g.t);
    p->units_fp32 = u < 0x1p63 ? (uint64_t)u : (uint64_t)1 << 63;
}

/* --- Params --------------------------------------------------------------- */

int rules_params_new(struct allot *a, const struct quota *q,
                     struct enf_params **out)
{
    struct enf_params *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return ALLOT_ENOMEM;
    }
    p->path = strdup(q->path);
    if (p->path == NULL) {
        free(p);
        return ALLOT_ENOMEM;
    }
    p->version = q->version;
    p->rate = q->f.rate;
    p->burst = q->f.burst;
    p->max_delay_ms = q->f.max_delay_ms;
    p->unit = q->f.unit;
    p->share = q->f.share;
    if (q->f.fleet[0] != '\0' && strcmp(q->f.fleet, "default") != 0) {
        p->fleet = strdup(q->f.fleet);
        if (p->fleet == NULL) {
            free(p->path);
            free(p);
            return ALLOT_ENOMEM;
        }
    }
    p->kind = q->f.kind;
    p->on_exceed = q->f.on_exceed;
    p->max_apps = p->max_memory_mb = p->max_vcores = UINT64_MAX;
    if (p->kind == QUOTA_KIND_RATE) {
        p->per_key = q->f.per_key;
        params_local(a, p);
    } else {
        p->total_apps = q->f.max_apps;
        p->total_memory_mb = q->f.max_memory_mb;
        p->total_vcores = q->f.max_vcores;
        params_local(a, p);
    }
    *out = p;
    return 0;
}

void rules_params_free(struct enf_params *p)
{
    if (p != NULL) {
        free(p->path);
        free(p->fleet);
        free(p);
    }
}

/* Retired params wait here (linked through their mirror link's left
 * pointer, unused once they leave the mirror) until a grace period passes
 * after the table that stopped referencing them was published. */
struct retired
{
    struct enf_params *head;
};

static void retire(struct retired *r, struct enf_params *p)
{
    RB_LEFT(p, link) = r->head;
    r->head = p;
}

static void free_retired(struct retired *r)
{
    while (r->head != NULL) {
        struct enf_params *p = r->head;
        r->head = RB_LEFT(p, link);
        rules_params_free(p);
    }
}

/* --- Tables --------------------------------------------------------------- */

/* The handle of path, or NULL. Under mu. */
static struct allot_rule *handle_find(struct allot *a, const char *path)
{
    if (a->by_path == NULL) {
        return NULL;
    }
    uint64_t h = keys_hash(0, path);
    for (uint32_t i = (uint32_t)h;; i++) {
        struct allot_rule *r = a->by_path[i & a->by_path_mask];
        if (r == NULL) {
            return NULL;
        }
        if (r->path_hash == h && strcmp(r->path, path) == 0) {
            return r;
        }
    }
}

static void by_path_put(struct allot_rule **slots, uint32_t mask,
                        struct allot_rule *r)
{
    uint32_t i = (uint32_t)r->path_hash;
    while (slots[i & mask] != NULL) {
        i++;
    }
    slots[i & mask] = r;
}

/* Room in the index for one more handle (kept at most half full). */
static int by_path_reserve(struct allot *a)
{
    uint32_t cap = a->by_path != NULL ? a->by_path_mask + 1u : 0;
    if ((a->n_handles + 1u) * 2u <= cap) {
        return 0;
    }
    uint32_t ncap = cap ? cap * 2u : 64u;
    struct allot_rule **slots = calloc(ncap, sizeof *slots);
    if (slots == NULL) {
        return ALLOT_ENOMEM;
    }
    for (uint32_t i = 0; i < a->n_handles; i++) {
        by_path_put(slots, ncap - 1u, a->handles[i]);
    }
    free(a->by_path);
    a->by_path = slots;
    a->by_path_mask = ncap - 1u;
    return 0;
}

static struct enf_params *mirror_find(struct allot *a, const char *path)
{
    struct enf_params key = {.path = (char *)path};
    return RB_FIND(enf_mirror, &a->mirror, &key);
}

/* A per_key rule needs its handle's key table before any decision can see
 * the rule: allocate it now (once; it is never freed before close). */
static void ensure_keys(struct allot *a, struct allot_rule *h,
                        const struct enf_params *p)
{
    if (p != NULL && p->per_key &&
        atomic_load_explicit(&h->keys, memory_order_relaxed) == NULL) {
        struct keys_table *k = keys_new(a->per_key_max);
        /* NULL (out of memory): decisions on this rule say ALLOT_ENOMEM. */
        atomic_store_explicit(&h->keys, k, memory_order_release);
    }
}

/* The fast path's copy of a handle's rule (internal.h, struct enf_fast) is
 * a sequence lock with one writer, this file under a->mu. publish() calls
 * fast_begin() for every handle whose params change before it publishes the
 * table, and fast_end() after:
 *
 *   writer: seq = s+1; each field = ... (release); seq = s+2 (release)
 *   reader: s0 = seq (acquire); each field (acquire); s1 = seq
 *           and uses the fields only if s0 == s1 and s0 is even.
 *
 * (seq is the low half of enf_fast.gen, whose high half holds the flags,
 * so both come in one load and are covered alike.) Why a reader that
 * passes sees the fields of one update, never a mix: if a field load read
 * the value of update k, its acquire synchronizes with that release store,
 * so update k's odd seq, stored before it, happens before the s1 load,
 * which then reads that odd value or a later one; s1 == s0 with s0 even
 * means s0 was update k's final value or later, so no field comes from a
 * later update. And s0's acquire load of update j's final value makes
 * every field of update j visible, so none comes from an earlier one.
 * No fences: ThreadSanitizer sees all of it, and on x86-64 acquire loads
 * and release stores are plain loads and stores.
 *
 * The odd seq is stored before the table (a release store) and the even one
 * after, so a thread never sees a rule go backwards between the two paths:
 * a fast path that read the new fields will find the new table (or a newer
 * one) in the general path, and a general path that read the new table
 * orders the odd seq before any later fast path's seq load, which then
 * sees the odd value or the even one after it. A reader that finds seq odd
 * or changed does not retry: it takes the general path, which reads the
 * table in an epoch read section. Fields never point to memory that could
 * be freed, so the fast path needs no read section. */
_Static_assert(offsetof(struct allot_rule, id) + sizeof(uint32_t) <= 64,
               "a fast-path decision reads and writes one line of its handle");

static void fast_begin(struct allot_rule *h)
{
    uint64_t g = atomic_load_explicit(&h->fast.gen, memory_order_relaxed);
    atomic_store_explicit(&h->fast.gen, g + ENF_FAST_BUSY,
                          memory_order_relaxed);
}

static void fast_end(struct allot_rule *h, const struct enf_params *p)
{
    struct enf_fast *f = &h->fast;
    uint64_t g = atomic_load_explicit(&f->gen, memory_order_relaxed);
    uint64_t flags = 0;
    if (p != NULL && p->fast) {
        flags = ENF_FAST_ON | (p->per_key ? ENF_FAST_PER_KEY : 0u);
    }
    atomic_store_explicit(&f->inc1, p != NULL ? p->inc1 : 0,
                          memory_order_release);
    atomic_store_explicit(&f->tau, p != NULL ? p->g.tau : 0,
                          memory_order_release);
    atomic_store_explicit(&f->units_fp32, p != NULL ? p->units_fp32 : 0,
                          memory_order_release);
    atomic_store_explicit(&f->version, p != NULL ? p->version : 0,
                          memory_order_release);
    atomic_store_explicit(&f->gen, flags | (uint32_t)(g + ENF_FAST_BUSY),
                          memory_order_release);
}

/* Did handle i's params change from old to t? */
static bool entry_changed(const struct enf_table *old, uint32_t old_n,
                          const struct enf_table *t, uint32_t i)
{
    return old == NULL || i >= old_n || old->p[i] != t->p[i];
}

static uint32_t table_cap(uint32_t n)
{
    uint32_t cap = 16;
    while (cap < n && cap < (1u << 31)) {
        cap <<= 1;
    }
    return cap;
}

/* Publish a table for every handle, built from the mirror (changed ==
 * NULL), or from the current table with one handle's entry replaced. Then
 * wait out readers and free the old table and the retired params. Under
 * mu. On ALLOT_ENOMEM nothing is published; retired params stay retired
 * (the old table may still point to them) until the next publish.
 *
 * A handle just created (id == the table's n) whose entry fits in the
 * table's spare capacity is appended in place instead: nothing a reader
 * could see changes, so no copy and no grace period. */
static int publish(struct allot *a, struct allot_rule *changed,
                   const struct enf_params *p_changed, struct retired *r)
{
    struct enf_table *old =
        atomic_load_explicit(&a->table, memory_order_relaxed);
    uint32_t n = a->n_handles;
    uint32_t old_n = old != NULL ? atomic_load(&old->n) : 0;
    if (changed != NULL && old != NULL && changed->id == old_n &&
        n == old_n + 1 && old_n < old->cap && r->head == NULL) {
        ensure_keys(a, changed, p_changed);
        old->p[old_n] = p_changed;
        fast_begin(changed);
        atomic_store_explicit(&old->n, n, memory_order_release);
        fast_end(changed, p_changed);
        return 0;
    }
    uint32_t cap = table_cap(n);
    struct enf_table *t = malloc(sizeof *t + (size_t)cap * sizeof t->p[0]);
    if (t == NULL) {
        return ALLOT_ENOMEM;
    }
    t->cap = cap;
    t->version = atomic_load_explicit(&a->version, memory_order_relaxed);
    if (changed != NULL && old != NULL && old_n <= n) {
        memcpy(t->p, old->p, (size_t)old_n * sizeof t->p[0]);
        for (uint32_t i = old_n; i < n; i++) {
            t->p[i] = mirror_find(a, a->handles[i]->path);
            ensure_keys(a, a->handles[i], t->p[i]);
        }
        ensure_keys(a, changed, p_changed);
        t->p[changed->id] = p_changed;
    } else {
        for (uint32_t i = 0; i < n; i++) {
            t->p[i] = mirror_find(a, a->handles[i]->path);
            ensure_keys(a, a->handles[i], t->p[i]);
        }
    }
    atomic_init(&t->n, n);
    /* Only the handles whose params change: rewriting the others would
     * send their decisions to the general path and pull their (hot) TAT
     * lines away from the threads deciding on them. */
    for (uint32_t i = 0; i < n; i++) {
        if (entry_changed(old, old_n, t, i)) {
            fast_begin(a->handles[i]);
        }
    }
    atomic_store_explicit(&a->table, t, memory_order_seq_cst); /* epoch.h */
    for (uint32_t i = 0; i < n; i++) {
        if (entry_changed(old, old_n, t, i)) {
            fast_end(a->handles[i], t->p[i]);
        }
    }
    epoch_synchronize();
    free(old);
    free_retired(r);
    return 0;
}

void enf_version_advanced(struct allot *a)
{
    pthread_cond_broadcast(&a->cv);
}

/* --- The sink ------------------------------------------------------------- */

int rules_replace(struct allot *a, const struct quota *qs, size_t n,
                  uint64_t version, bool from_disk)
{
    struct retired fresh = {NULL};
    for (size_t i = 0; i < n; i++) {
        struct enf_params *p;
        if (rules_params_new(a, &qs[i], &p) != 0) {
            free_retired(&fresh);
            return ALLOT_ENOMEM;
        }
        retire(&fresh, p); /* a plain list for now */
    }
    pthread_mutex_lock(&a->mu);
    struct retired r = {NULL};
    struct enf_params *p, *next;
    for (p = RB_MIN(enf_mirror, &a->mirror); p != NULL; p = next) {
        next = RB_NEXT(enf_mirror, &a->mirror, p);
        RB_REMOVE(enf_mirror, &a->mirror, p);
        retire(&r, p);
    }
    a->n_rules = 0;
    while (fresh.head != NULL) {
        p = fresh.head;
        fresh.head = RB_LEFT(p, link);
        struct enf_params *dup = RB_INSERT(enf_mirror, &a->mirror, p);
        if (dup != NULL) { /* the same path twice: keep the newer */
            if (dup->version >= p->version) {
                rules_params_free(p);
                continue;
            }
            RB_REMOVE(enf_mirror, &a->mirror, dup);
            retire(&r, dup);
            RB_INSERT(enf_mirror, &a->mirror, p);
        } else {
            a->n_rules++;
        }
    }
    atomic_store(&a->version, version);
    a->need_resync = false;
    int rv = publish(a, NULL, NULL, &r);
    if (rv != 0) {
        /* Tables and mirror disagree until the next publish succeeds; the
         * old table still points to r's params, so they must stay. */
        a->need_resync = true;
        LOGE("enforce", "rule table not published", "err=%s",
             allot_error_name(rv));
    }
    if (from_disk) {
        atomic_store(&a->from_disk, 1);
    } else {
        a->dirty = true;
        atomic_store(&a->from_disk, 0);
    }
    enf_version_advanced(a);
    pthread_mutex_unlock(&a->mu);
    return rv;
}

/* Replace or remove (p == NULL) the rule at path. Under mu. */
static int set_rule(struct allot *a, const char *path, struct enf_params *p,
                    uint64_t version)
{
    struct enf_params *cur = mirror_find(a, path);
    if (cur != NULL && cur->version > version) {
        rules_params_free(p); /* a replay of an older change */
        return 0;
    }
    struct retired r = {NULL};
    if (cur != NULL) {
        RB_REMOVE(enf_mirror, &a->mirror, cur);
        a->n_rules--;
    }
    if (p != NULL) {
        RB_INSERT(enf_mirror, &a->mirror, p);
        a->n_rules++;
    }
    a->dirty = true;
    struct allot_rule *h = handle_find(a, path);
    if (h == NULL) {
        rules_params_free(cur); /* in no table */
        return 0;
    }
    if (cur != NULL) {
        retire(&r, cur);
    }
    int rv = publish(a, h, p, &r);
    if (rv != 0) {
        a->need_resync = true;
        /* Unreachable from any table but the old one, which stays. */
    }
    return rv;
}

static bool str_is(const msgpack_object *o, const char *s)
{
    return o != NULL && wire_str_eq(o, s);
}

int rules_apply_change(struct allot *a, const msgpack_object *change,
                       char *errmsg)
{
    uint64_t version;
    const char *path;
    size_t path_len;
    int rv = wire_get_u64(change, "version", true, &version, errmsg);
    if (rv == 0) {
        rv = wire_get_str(change, "path", true, &path, &path_len, errmsg);
    }
    if (rv != 0) {
        return rv;
    }
    const msgpack_object *op = wire_map_get(change, "op");
    const msgpack_object *nv = wire_map_get(change, "new");
    bool is_set = str_is(op, "quota.set"), is_rm = str_is(op, "quota.rm");
    struct enf_params *p = NULL;
    char pathbuf[QUOTA_PATH_MAX + 1];
    if (is_set || is_rm) {
        if (quota_path_check(path, path_len, errmsg) != 0) {
            return ALLOT_EINVALID;
        }
        memcpy(pathbuf, path, path_len);
        pathbuf[path_len] = '\0';
    }
    bool unusable = false;
    if (is_set && nv != NULL && nv->type == MSGPACK_OBJECT_MAP) {
        struct quota q;
        rv = quota_unpack(nv, &q, errmsg);
        if (rv == 0 && strcmp(q.path, pathbuf) != 0) {
            rv = allot_errf(errmsg, ALLOT_EINVALID,
                            "change at %s carries quota %s", pathbuf, q.path);
        }
        if (rv == 0) {
            rv = rules_params_new(a, &q, &p);
        }
        quota_free(&q);
        if (rv != 0) {
            return rv;
        }
    } else if (is_set) {
        /* The server could not encode the new value (it records none when
         * out of memory): only a full read can tell what it is. */
        unusable = true;
    }
    pthread_mutex_lock(&a->mu);
    if (version <= atomic_load(&a->version)) {
        pthread_mutex_unlock(&a->mu);
        rules_params_free(p);
        return 0; /* already applied */
    }
    if (is_set && !unusable) {
        rv = set_rule(a, pathbuf, p, version);
    } else if (is_rm) {
        rv = set_rule(a, pathbuf, NULL, version);
    }
    if (unusable) {
        a->need_resync = true;
    }
    atomic_store(&a->version, version);
    atomic_fetch_add(&a->changes, 1);
    atomic_store(&a->from_disk, 0);
    enf_version_advanced(a);
    pthread_mutex_unlock(&a->mu);
    rules_confirm(a, version);
    return rv;
}

static void digest_mirror(struct allot *a, uint8_t d[QUOTA_DIGEST_SIZE])
{
    memset(d, 0, QUOTA_DIGEST_SIZE);
    struct enf_params *p;
    RB_FOREACH(p, enf_mirror, &a->mirror)
    {
        quota_digest_toggle(d, p->path, strlen(p->path), p->version);
    }
}

void rules_digest(struct allot *a, uint8_t d[QUOTA_DIGEST_SIZE],
                  uint64_t *version)
{
    pthread_mutex_lock(&a->mu);
    digest_mirror(a, d);
    *version = atomic_load(&a->version);
    pthread_mutex_unlock(&a->mu);
}

/* Where a path stands while a delta is simulated: the last change to it
 * earlier in the delta, else the mirror. */
struct delta_state
{
    bool present;
    uint64_t version;
};

static struct delta_state delta_lookup(struct allot *a,
                                       const msgpack_object *const *changes,
                                       const struct delta_state *states,
                                       size_t i, const char *path,
                                       size_t path_len)
{
    while (i-- > 0) {
        const char *p;
        size_t len;
        char msg[ALLOT_ERRMSG_SIZE];
        if (wire_get_str(changes[i], "path", true, &p, &len, msg) == 0 &&
            len == path_len && memcmp(p, path, len) == 0) {
            return states[i];
        }
    }
    char buf[QUOTA_PATH_MAX + 1];
    memcpy(buf, path, path_len);
    buf[path_len] = '\0';
    const struct enf_params *cur = mirror_find(a, buf);
    return (struct delta_state){.present = cur != NULL,
                                .version = cur != NULL ? cur->version : 0};
}

int rules_delta_digest(struct allot *a, const msgpack_object *const *changes,
                       size_t n, uint8_t d[QUOTA_DIGEST_SIZE], char *errmsg)
{
    struct delta_state *states = calloc(n ? n : 1, sizeof *states);
    if (states == NULL) {
        return allot_errf(errmsg, ALLOT_ENOMEM, "out of memory");
    }
    int rv = 0;
    pthread_mutex_lock(&a->mu);
    digest_mirror(a, d);
    uint64_t held = atomic_load(&a->version);
    /* The same decisions rules_apply_change() and set_rule() make, on
     * (path, version) pairs only. */
    for (size_t i = 0; i < n && rv == 0; i++) {
        uint64_t version, qv = 0;
        const char *path;
        size_t len;
        rv = wire_get_u64(changes[i], "version", true, &version, errmsg);
        if (rv == 0) {
            rv = wire_get_str(changes[i], "path", true, &path, &len, errmsg);
        }
        if (rv != 0) {
            break;
        }
        const msgpack_object *op = wire_map_get(changes[i], "op");
        const msgpack_object *nv = wire_map_get(changes[i], "new");
        bool is_set = str_is(op, "quota.set"), is_rm = str_is(op, "quota.rm");
        struct delta_state cur = delta_lookup(a, changes, states, i, path, len);
        states[i] = cur;
        if (version <= held || !(is_set || is_rm) ||
            (cur.present && cur.version > version)) {
            continue;
        }
        if (is_set) {
            if (nv == NULL || nv->type != MSGPACK_OBJECT_MAP ||
                wire_get_u64(nv, "version", true, &qv, errmsg) != 0) {
                rv = allot_errf(errmsg, ALLOT_EINVALID,
                                "change %llu at %.*s has no quota version",
                                (unsigned long long)version, (int)len, path);
                break;
            }
        }
        if (cur.present) {
            quota_digest_toggle(d, path, len, cur.version);
        }
        if (is_set) {
            quota_digest_toggle(d, path, len, qv);
        }
        states[i] = (struct delta_state){.present = is_set, .version = qv};
        held = version;
    }
    pthread_mutex_unlock(&a->mu);
    free(states);
    return rv;
}

void rules_confirm(struct allot *a, uint64_t server_version)
{
    uint64_t sv = atomic_load(&a->server_version);
    while (sv < server_version &&
           !atomic_compare_exchange_weak(&a->server_version, &sv,
                                         server_version)) {
    }
    uint64_t now = clock_wall_ms();
    atomic_store(&a->last_contact_ms, now);
    if (atomic_load(&a->version) >= server_version) {
        atomic_store(&a->confirmed_ms, now);
        atomic_store(&a->from_disk, 0);
    }
}

/* --- Handles -------------------------------------------------------------- */

#define SLAB_HANDLES 64u

static size_t handle_stride(const struct allot *a)
{
    size_t size = offsetof(struct allot_rule, ctr) +
                  (a->stripes + 1u) * sizeof(struct enf_ctr);
    return (size + 63u) & ~(size_t)63u;
}

/* A zeroed, cache-line aligned handle from the current slab (a new slab
 * when it is full). Under mu. */
static struct allot_rule *handle_alloc(struct allot *a)
{
    size_t stride = handle_stride(a);
    struct enf_slab *s = a->slabs;
    if (s == NULL || s->used == s->cap) {
        size_t bytes = sizeof *s + SLAB_HANDLES * stride;
        s = aligned_alloc(64, (bytes + 63u) & ~(size_t)63u);
        if (s == NULL) {
            return NULL;
        }
        memset(s, 0, sizeof *s);
        s->cap = SLAB_HANDLES;
        s->next = a->slabs;
        a->slabs = s;
    }
    struct allot_rule *h =
        (struct allot_rule *)(void *)(s->mem + s->used * stride);
    memset(h, 0, stride);
    h->demand_avg = -1; /* no complete window yet */
    s->used++;
    return h;
}

/* Give back the handle handle_alloc() returned last. Under mu. */
static void handle_unalloc(struct allot *a)
{
    a->slabs->used--;
}

int rules_handle(struct allot *a, const char *path, struct allot_rule **out)
{
    char msg[ALLOT_ERRMSG_SIZE];
    if (path == NULL || quota_path_check(path, strlen(path), msg) != 0) {
        return ALLOT_EINVALID;
    }
    pthread_mutex_lock(&a->mu);
    struct allot_rule *h = handle_find(a, path);
    if (h != NULL) {
        pthread_mutex_unlock(&a->mu);
        *out = h;
        return 0;
    }
    int rv = ALLOT_ETOO_BIG;
    if (a->n_handles >= a->max_handles) {
        goto err_unlock;
    }
    rv = ALLOT_ENOMEM;
    if (by_path_reserve(a) != 0) {
        goto err_unlock;
    }
    if (a->n_handles == a->cap_handles) {
        uint32_t cap = a->cap_handles ? a->cap_handles * 2u : 64u;
        struct allot_rule **hs = realloc(a->handles, cap * sizeof *hs);
        if (hs == NULL) {
            goto err_unlock;
        }
        a->handles = hs;
        a->cap_handles = cap;
    }
    h = handle_alloc(a);
    if (h == NULL) {
        goto err_unlock;
    }
    h->path = strdup(path);
    if (h->path == NULL) {
        goto err_after_handle;
    }
    h->a = a;
    h->id = a->n_handles;
    a->handles[a->n_handles++] = h;
    h->path_hash = keys_hash(0, path);
    by_path_put(a->by_path, a->by_path_mask, h);
    struct retired r = {NULL};
    rv = publish(a, h, mirror_find(a, path), &r);
    if (rv != 0) {
        /* Keep the handle (ids are dense); the next publish covers it.
         * Decisions on it see no rule until then. */
        a->need_resync = true;
    }
    pthread_mutex_unlock(&a->mu);
    *out = h;
    return 0;

err_after_handle:
    handle_unalloc(a);
err_unlock:
    pthread_mutex_unlock(&a->mu);
    return rv;
}

/* --- Disk and close ------------------------------------------------------- */

int rules_pack_for_disk(struct allot *a, msgpack_sbuffer *sb, uint64_t *version)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    *version = atomic_load(&a->version);
    if (a->n_rules > UINT32_MAX) {
        return ALLOT_ETOO_BIG;
    }
    msgpack_pack_array(&pk, (uint32_t)a->n_rules);
    struct enf_params *p;
    RB_FOREACH(p, enf_mirror, &a->mirror)
    {
        struct quota q = {.path = p->path, .version = p->version};
        q.f.kind = p->kind;
        q.f.on_exceed = p->on_exceed;
        q.f.max_delay_ms = p->max_delay_ms;
        if (p->kind == QUOTA_KIND_RATE) {
            q.f.rate = p->rate;
            q.f.burst = p->burst;
            q.f.unit = p->unit;
            q.f.share = p->share;
            q.f.per_key = p->per_key;
            snprintf(q.f.fleet, sizeof q.f.fleet, "%s",
                     p->fleet != NULL ? p->fleet : "default");
        } else {
            /* The quota's limits, not this host's slots of them. */
            q.f.max_apps = p->total_apps;
            q.f.max_memory_mb = p->total_memory_mb;
            q.f.max_vcores = p->total_vcores;
        }
        quota_pack(&pk, &q);
    }
    return 0;
}

void rules_close(struct allot *a)
{
    free(a->view);
    free(a->view_names);
    a->view = NULL;
    a->view_names = NULL;
    a->view_n = a->view_cap = 0;
    struct enf_params *p, *next;
    for (p = RB_MIN(enf_mirror, &a->mirror); p != NULL; p = next) {
        next = RB_NEXT(enf_mirror, &a->mirror, p);
        RB_REMOVE(enf_mirror, &a->mirror, p);
        rules_params_free(p);
    }
    for (uint32_t i = 0; i < a->n_handles; i++) {
        struct allot_rule *h = a->handles[i];
        free(atomic_load(&h->keys));
        free(h->path);
    }
    while (a->slabs != NULL) {
        struct enf_slab *s = a->slabs;
        a->slabs = s->next;
        free(s);
    }
    free(a->handles);
    a->handles = NULL;
    free(a->by_path);
    a->by_path = NULL;
    a->n_handles = a->cap_handles = 0;
    free(atomic_load(&a->table));
    atomic_store(&a->table, NULL);
}

/* --- Shares: a new view of the fleet -------------------------------------- */

/* A copy of p with its local fields recomputed at the current fractions. */
static int params_reshared(struct allot *a, const struct enf_params *p,
                           struct enf_params **out)
{
    struct enf_params *np = malloc(sizeof *np);
    if (np == NULL) {
        return ALLOT_ENOMEM;
    }
    *np = *p;
    np->path = strdup(p->path);
    np->fleet = p->fleet != NULL ? strdup(p->fleet) : NULL;
    if (np->path == NULL || (p->fleet != NULL && np->fleet == NULL)) {
        free(np->path);
        free(np->fleet);
        free(np);
        return ALLOT_ENOMEM;
    }
    params_local(a, np);
    *out = np;
    return 0;
}

/* Keep the view slots are divided by, in name order (so comparing two
 * views is comparing arrays). Only a settled view is kept: off probation
 * and with a majority of the known members (the rules of
 * shares_host_part); otherwise the last one stays. true when it changed.
 * Under mu. */
static bool view_store(struct allot *a, const struct shares_view *v,
                       uint64_t now_ms)
{
    const struct shares_host *h = &a->share_weighted;
    const struct shares_member *m = v->m;
    size_t n = v->n, self = v->self;
    if (now_ms - h->joined_ms < h->probation_ms || 2 * n <= v->known) {
        return false;
    }
    size_t *order = malloc(n * sizeof *order);
    if (order == NULL) {
        return false; /* the last view stays */
    }
    /* Insertion by name: views are small and this runs twice a second. */
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        while (j > 0 && strcmp(m[order[j - 1]].name, m[i].name) > 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    pthread_mutex_lock(&a->view_mu);
    bool changed = false;
    if (n > a->view_cap) {
        struct shares_member *nv = realloc(a->view, n * sizeof *nv);
        if (nv != NULL) {
            a->view = nv;
        }
        char(*names)[65] = realloc(a->view_names, n * sizeof *names);
        if (names != NULL) {
            a->view_names = names;
        }
        if (nv == NULL || names == NULL) {
            goto out; /* the last view stays */
        }
        a->view_cap = n;
    }
    changed = n != a->view_n;
    for (size_t i = 0; i < n; i++) {
        const struct shares_member *x = &m[order[i]];
        if (!changed && (strcmp(a->view_names[i], x->name) != 0 ||
                         a->view[i].weight != x->weight)) {
            changed = true;
        }
        snprintf(a->view_names[i], sizeof a->view_names[i], "%s", x->name);
        a->view[i] = (struct shares_member){a->view_names[i], x->weight, 0};
        if (order[i] == self) {
            a->view_self = i;
        }
    }
    a->view_n = n;
out:
    pthread_mutex_unlock(&a->view_mu);
    free(order);
    return changed;
}

/* Every rule computed at another generation of the fractions (a change,
 * or a rule built while one was under way) is rebuilt, in one table.
 * Under mu. */
static void rebuild_stale(struct allot *a)
{
    uint64_t gen = atomic_load(&a->share_gen);
    struct retired r = {NULL};
    bool changed = false;
    struct enf_params *p, *next;
    for (p = RB_MIN(enf_mirror, &a->mirror); p != NULL; p = next) {
        next = RB_NEXT(enf_mirror, &a->mirror, p);
        if (p->share_gen == gen) {
            continue;
        }
        struct enf_params *np;
        if (params_reshared(a, p, &np) != 0) {
            break; /* retried at the next view */
        }
        RB_REMOVE(enf_mirror, &a->mirror, p);
        RB_INSERT(enf_mirror, &a->mirror, np);
        retire(&r, p);
        changed = true;
    }
    if (changed && publish(a, NULL, NULL, &r) != 0) {
        a->need_resync = true; /* the old table still points to r's */
    }
}

void rules_reshare(struct allot *a, const struct shares_view *v,
                   uint64_t now_ms)
{
    size_t n = v->n;
    pthread_mutex_lock(&a->mu);
    /* The member runs with the library's default timings (source_gossip.c
     * changes only its leave timeout). */
    struct gossip_config gc;
    gossip_config_init(&gc);
    shares_host_timing(&a->share_weighted, n, gc.gossip_interval_ms,
                       gc.gossip_nodes, gc.probe_interval_ms,
                       gc.retransmit_mult, gc.suspicion_mult);
    shares_host_timing_copy(&a->share_equal, &a->share_weighted);
    double fe, fw;
    if (shares_host_part(&a->share_equal, QUOTA_SHARE_EQUAL, 1.0, v, now_ms,
                         &fe) != 0 ||
        shares_host_part(&a->share_weighted, QUOTA_SHARE_WEIGHTED, 1.0, v,
                         now_ms, &fw) != 0) {
        pthread_mutex_unlock(&a->mu); /* a bad view changes nothing */
        return;
    }
    atomic_store(&a->fleet_members, n);
    atomic_store(&a->view_version, shares_view_version(v));
    bool view_changed = view_store(a, v, now_ms);
    if (view_changed || fe != atomic_load(&a->frac_equal) ||
        fw != atomic_load(&a->frac_weighted)) {
        atomic_store(&a->frac_equal, fe);
        atomic_store(&a->frac_weighted, fw);
        atomic_fetch_add(&a->share_gen, 1);
        LOGI("enforce", "fleet part changed",
             "fleet=%s members=%zu known=%zu equal=%.4f weighted=%.4f",
             a->fleet, n, v->known, fe, fw);
    }
    rebuild_stale(a);
    pthread_mutex_unlock(&a->mu);
}

void rules_fleet_change(struct allot *a, uint64_t now_ms)
{
    pthread_mutex_lock(&a->mu);
    shares_host_change(&a->share_equal, now_ms);
    shares_host_change(&a->share_weighted, now_ms);
    pthread_mutex_lock(&a->view_mu);
    for (unsigned i = 0; i < ENF_DEMAND_RULES; i++) {
        if (a->demand[i].hash != 0) {
            shares_host_change(&a->demand[i].sh, now_ms);
        }
    }
    pthread_mutex_unlock(&a->view_mu);
    pthread_mutex_unlock(&a->mu);
}

/* --- Demand: what each host wanted, gossiped, divided max-min fair -------- */

void rules_view_state(struct allot *a, uint32_t *view, uint32_t *state)
{
    pthread_mutex_lock(&a->mu);
    *view = atomic_load(&a->view_version);
    *state = a->share_equal.state | a->share_weighted.state;
    pthread_mutex_unlock(&a->mu);
}

static bool demand_rule(const struct allot *a, const struct enf_params *p)
{
    return p != NULL && p->kind == QUOTA_KIND_RATE &&
           p->share == QUOTA_SHARE_DEMAND &&
           strcmp(p->fleet != NULL ? p->fleet : "default", a->fleet) == 0;
}

static int demand_desc(const void *x, const void *y)
{
    const struct shares_demand *a = x, *b = y;
    return a->demand > b->demand ? -1 : a->demand < b->demand ? 1 : 0;
}

size_t rules_demands(struct allot *a, struct shares_demand *out, size_t cap)
{
    /* Which handles are demand rules (under mu), then their last windows
     * (under stats_mu): the two locks are never held together here. */
    pthread_mutex_lock(&a->mu);
    uint32_t n = a->n_handles;
    struct allot_rule **hs = malloc((n > 0 ? n : 1) * sizeof *hs);
    size_t k = 0;
    for (uint32_t i = 0; hs != NULL && i < n; i++) {
        if (demand_rule(a, mirror_find(a, a->handles[i]->path))) {
            hs[k++] = a->handles[i];
        }
    }
    pthread_mutex_unlock(&a->mu);
    if (hs == NULL) {
        return 0;
    }
    struct shares_demand *all = malloc((k > 0 ? k : 1) * sizeof *all);
    if (all == NULL) {
        free(hs);
        return 0;
    }
    pthread_mutex_lock(&a->stats_mu);
    for (size_t i = 0; i < k; i++) {
        double d = hs[i]->demand_avg; /* enf_roll_windows */
        all[i] = (struct shares_demand){shares_rule_hash(hs[i]->path),
                                        d > 0 ? d : 0};
    }
    pthread_mutex_unlock(&a->stats_mu);
    qsort(all, k, sizeof *all, demand_desc);
    size_t m = k < cap ? k : cap;
    memcpy(out, all, m * sizeof *out);
    free(all);
    free(hs);
    return m;
}

/* The slot of a demand rule, taken when free (a new one starts on
 * probation like the host). NULL when every slot is in use. Under mu
 * and view_mu. */
static struct enf_demand *demand_slot(struct allot *a, uint32_t hash)
{
    struct enf_demand *d = demand_find(a, hash);
    if (d == NULL && (d = demand_find(a, 0)) != NULL) {
        *d = (struct enf_demand){
            .hash = hash, .sh = a->share_weighted, .frac = 0};
        d->sh.last_part = -1;
    }
    return d;
}

void rules_reshare_demand(struct allot *a, const struct shares_view *view,
                          const uint8_t *const *app, const size_t *app_len,
                          uint64_t now_ms)
{
    size_t n = view->n;
    struct shares_blob *blobs = calloc(n > 0 ? n : 1, sizeof *blobs);
    struct shares_member *v = calloc(n > 0 ? n : 1, sizeof *v);
    if (blobs == NULL || v == NULL || view->self >= n) {
        free(blobs);
        free(v);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        /* A refused blob reads as no demand: that member gets the floor
         * or what is left, never a crash or a stale value. */
        (void)shares_blob_decode(app[i], app_len[i], &blobs[i]);
        v[i] = view->m[i];
    }
    struct shares_view dv = *view;
    dv.m = v;
    pthread_mutex_lock(&a->mu);
    bool changed = false;
    uint32_t seen[ENF_DEMAND_RULES];
    size_t n_seen = 0;
    for (struct enf_params *p = RB_MIN(enf_mirror, &a->mirror); p != NULL;
         p = RB_NEXT(enf_mirror, &a->mirror, p)) {
        if (!demand_rule(a, p)) {
            continue;
        }
        uint32_t h = shares_rule_hash(p->path);
        if (n_seen < ENF_DEMAND_RULES) {
            seen[n_seen++] = h;
        }
        for (size_t i = 0; i < n; i++) {
            v[i].demand = shares_blob_demand(&blobs[i], h);
        }
        double rate = p->rate > 0 ? p->rate : QUOTA_RATE_MIN;
        pthread_mutex_lock(&a->view_mu);
        struct enf_demand *d = demand_slot(a, h);
        double part;
        if (d != NULL) {
            shares_host_timing_copy(&d->sh, &a->share_weighted);
            if (shares_host_part(&d->sh, QUOTA_SHARE_DEMAND, rate, &dv, now_ms,
                                 &part) == 0 &&
                part / rate != d->frac) {
                d->frac = part / rate;
                changed = true;
            }
        }
        pthread_mutex_unlock(&a->view_mu);
    }
    /* Slots of rules that are gone (or no longer demand-shared) free up. */
    pthread_mutex_lock(&a->view_mu);
    for (unsigned i = 0; i < ENF_DEMAND_RULES; i++) {
        bool keep = false;
        for (size_t j = 0; j < n_seen && !keep; j++) {
            keep = a->demand[i].hash == seen[j];
        }
        if (!keep) {
            a->demand[i].hash = 0;
        }
    }
    pthread_mutex_unlock(&a->view_mu);
    if (changed) {
        atomic_fetch_add(&a->share_gen, 1);
        rebuild_stale(a);
    }
    pthread_mutex_unlock(&a->mu);
    free(blobs);
    free(v);
}
