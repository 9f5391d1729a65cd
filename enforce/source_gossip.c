/* source_gossip.c - the gossip rule source (source.h, docs/enforce.md).
 *
 * Two threads. The loop thread runs the embedded gossip member (role agent,
 * this host's fleet and weight) on its own libuv loop: it hears the
 * servers' catalog announcements (keyed value "catalog": {version, digest})
 * as broadcasts or through push-pull, and every LIST_PERIOD_MS it lists the
 * alive servers' client addresses from their metadata. The pull thread
 * waits for an announcement newer than the rules held and then:
 *
 *   1. asks one of those servers (any that answers; the static `servers`
 *      option when gossip knows none) for the changes after our version,
 *      with the same quota.watch the watch source uses, stopping at the
 *      announced version;
 *   2. computes the digest the rules would have after those changes and
 *      compares it with the announced one;
 *   3. match: applies the changes (the sink swaps the table). Otherwise,
 *      and when the history after our version is gone: reads every rule
 *      (quota.ls), checked against the digest when read at the announced
 *      version.
 *
 * Failure modes:
 *   - no server reachable: the rules in force stay; retried with backoff
 *     (up to 5 s), on the next announcement at the latest;
 *   - a server that never reaches the announced version (cut off from the
 *     leader): the loop thread's watchdog cancels a request older than
 *     PULL_DEADLINE_MS; the next attempt starts on another server;
 *   - digest mismatch: counted (digest_mismatches), nothing applied, a
 *     full read follows; a full read that mismatches too is not installed
 *     and is retried with backoff. A change record that cannot be read or
 *     applied leads to a full read the same way (not to the same delta
 *     again);
 *   - every server and every seed gone: decisions go on from memory and
 *     the file on disk; the member keeps trying its seeds.
 *
 * Rules read at a version other than the announced one (the catalog moved
 * on during the read) cannot be compared; they are installed, and checked
 * when the announcement of the version held arrives (a mismatch then
 * counts and forces a full read). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "../gossip/gossip.h"
#include "../lib/lib.h"
#include "../proto/client.h"
#include "../proto/wire.h"
#include "internal.h"
#include "source.h"

#define ANNOUNCE_KEY   "catalog"
#define LIST_PERIOD_MS 500u
/* The view is re-read this often when it changed (RESHARE_MS divides
 * LIST_PERIOD_MS): a host shrinks for a newcomer within one tick of
 * hearing of it, as bench_shares_sim's hosts do within one 100 ms step.
 * An unchanged view is still re-read every LIST_PERIOD_MS, for the
 * probation and quiet periods that end with time. */
#define RESHARE_MS       100u
#define PULL_DEADLINE_MS 10000u
#define CALL_TIMEOUT_MS  5000
#define BACKOFF_MIN_MS   100
#define BACKOFF_MAX_MS   5000
#define SEEDS_MAX        16
#define SERVERS_MAX      16
/* A delta longer than this is read whole instead (its check is quadratic
 * in the number of changes, and a full read is as cheap by then). */
#define DELTA_MAX 4096u
/* The gossip weight is an integer: this host's weight in thousandths. */
#define WEIGHT_SCALE 1000.0
/* The shares blob (view, state, demand) goes out at most this often
 * (docs/shares.md, "What hosts publish"). */
#define PUBLISH_MS 5000u

struct enf_gossip
{
    struct allot *a;
    /* Loop thread; everything gossip belongs to it. */
    pthread_t loop_thr;
    bool loop_started;
    uv_loop_t loop;
    uv_async_t stop_async;
    uv_timer_t timer;
    struct gossip_uv *guv;
    struct gossip *g;
    struct gossip_leave leave;
    /* Pull thread. */
    pthread_t pull_thr;
    bool pull_started;
    int kick_fd; /* eventfd: cancels the pull thread's request */
    /* Shared, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    bool have_ann;
    struct source_expect ann; /* newest announcement */
    char servers[SERVERS_MAX * 64];
    uint64_t busy_since_ms; /* the pull thread's request began; 0 idle */
    /* Loop thread: the demand last published, and when. */
    uint32_t weight; /* this member's gossip weight (thousandths) */
    struct shares_blob published;
    uint64_t published_at;
    bool view_changed; /* a member event since the last reshare */
    unsigned ticks;    /* of RESHARE_MS */
};

/* --- Loop thread ---------------------------------------------------------- */

/* An announcement {"version": V, "digest": 32 hex}. */
static int parse_announcement(const void *buf, size_t len,
                              struct source_expect *out)
{
    msgpack_unpacked u;
    char msg[ALLOT_ERRMSG_SIZE];
    const char *hex;
    size_t hex_len;
    msgpack_unpacked_init(&u);
    int rv = wire_unpack(buf, len, &u, msg);
    if (rv == 0) {
        rv = wire_get_u64(&u.data, "version", true, &out->version, msg);
    }
    if (rv == 0) {
        rv = wire_get_str(&u.data, "digest", true, &hex, &hex_len, msg);
    }
    if (rv == 0 && (hex_len != 2 * QUOTA_DIGEST_SIZE ||
                    sodium_hex2bin(out->digest, sizeof out->digest, hex,
                                   hex_len, NULL, NULL, NULL) != 0)) {
        rv = ALLOT_EINVALID;
    }
    msgpack_unpacked_destroy(&u);
    return rv;
}

static void take_announcement(struct enf_gossip *s, uint64_t version,
                              const void *buf, size_t len)
{
    struct source_expect e;
    if (parse_announcement(buf, len, &e) != 0 || e.version != version) {
        LOGW("enforce", "catalog announcement ignored: malformed",
             "version=%llu", (unsigned long long)version);
        return;
    }
    pthread_mutex_lock(&s->mu);
    if (!s->have_ann || e.version > s->ann.version) {
        s->ann = e;
        s->have_ann = true;
        atomic_store(&s->a->announced_version, e.version);
        atomic_fetch_add(&s->a->announcements, 1);
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
}

static void on_broadcast(void *data, const char *key, size_t key_len,
                         uint64_t version, const void *buf, size_t len)
{
    if (key != NULL && key_len == strlen(ANNOUNCE_KEY) &&
        memcmp(key, ANNOUNCE_KEY, key_len) == 0) {
        take_announcement(data, version, buf, len);
    }
}

struct server_list
{
    char *buf;
    size_t cap, len;
    unsigned n, alive;
};

/* A server's metadata names its client address: {"id", "client", ...}. */
static void add_server(void *data, const struct gossip_member *m)
{
    struct server_list *l = data;
    if (m->state != GOSSIP_ALIVE) {
        return;
    }
    l->alive++;
    if (m->meta.role != GOSSIP_ROLE_SERVER || m->meta.app_len == 0 ||
        l->n == SERVERS_MAX) {
        return;
    }
    msgpack_unpacked u;
    char msg[ALLOT_ERRMSG_SIZE];
    const char *addr;
    size_t alen;
    msgpack_unpacked_init(&u);
    if (wire_unpack((const char *)m->meta.app, m->meta.app_len, &u, msg) == 0 &&
        wire_get_str(&u.data, "client", true, &addr, &alen, msg) == 0 &&
        alen > 0 && alen < 64 && memchr(addr, ',', alen) == NULL &&
        l->len + alen + 2 <= l->cap) {
        if (l->len > 0) {
            l->buf[l->len++] = ',';
        }
        memcpy(l->buf + l->len, addr, alen);
        l->len += alen;
        l->buf[l->len] = '\0';
        l->n++;
    }
    msgpack_unpacked_destroy(&u);
}

/* This host's fleet as its member sees it: agents of its fleet, alive or
 * suspect (weights in thousandths), and how many did not leave. Names are
 * the library's only during the callback: copied. */
struct fleet_view
{
    const char *fleet;
    struct shares_member *m;
    char (*names)[GOSSIP_NAME_MAX + 1];
    uint8_t (*apps)[GOSSIP_APP_MAX]; /* demand blobs */
    const uint8_t **app;
    size_t *app_len;
    size_t n, cap, known, self, suspect;
    uint64_t suspect_age_ms;
    bool have_self, full;
};

static void add_fleet_member(void *data, const struct gossip_member *m)
{
    struct fleet_view *v = data;
    enum gossip_fleet_place at = gossip_fleet_place(m, v->fleet);
    v->known += at != GOSSIP_FLEET_OUT;
    if (at != GOSSIP_FLEET_IN) {
        return;
    }
    if (v->n == v->cap) {
        v->full = true;
        return;
    }
    if (m->self) {
        v->self = v->n;
        v->have_self = true;
    }
    if (m->state == GOSSIP_SUSPECT) {
        v->suspect++;
        if (m->state_ms > v->suspect_age_ms) {
            v->suspect_age_ms = m->state_ms;
        }
    }
    snprintf(v->names[v->n], sizeof v->names[0], "%s", m->name);
    size_t alen = m->meta.app_len <= GOSSIP_APP_MAX ? m->meta.app_len : 0;
    if (alen > 0) {
        memcpy(v->apps[v->n], m->meta.app, alen);
    }
    v->app[v->n] = v->apps[v->n];
    v->app_len[v->n] = alen;
    v->m[v->n] = (struct shares_member){
        v->names[v->n],
        m->meta.weight > 0 ? (double)m->meta.weight / WEIGHT_SCALE
                           : 1.0 / WEIGHT_SCALE,
        0};
    v->n++;
}

static void reshare(struct enf_gossip *s)
{
    size_t cap = gossip_member_count(s->g, GOSSIP_ALIVE) +
                 gossip_member_count(s->g, GOSSIP_SUSPECT) + 1;
    struct fleet_view v = {.fleet = s->a->fleet, .cap = cap};
    v.m = calloc(cap, sizeof *v.m);
    v.names = calloc(cap, sizeof *v.names);
    v.apps = calloc(cap, sizeof *v.apps);
    v.app = calloc(cap, sizeof *v.app);
    v.app_len = calloc(cap, sizeof *v.app_len);
    if (v.m != NULL && v.names != NULL && v.apps != NULL && v.app != NULL &&
        v.app_len != NULL) {
        gossip_member_foreach(s->g, add_fleet_member, &v);
        if (v.have_self && !v.full) {
            uint64_t now = clock_mono_ns() / 1000000u;
            struct shares_view sv = {
                .m = v.m,
                .n = v.n,
                .self = v.self,
                .suspect = v.suspect,
                .suspect_age_ms = v.suspect_age_ms,
                .known = v.known,
            };
            rules_reshare(s->a, &sv, now);
            rules_reshare_demand(s->a, &sv, v.app, v.app_len, now);
        }
    }
    free(v.m);
    free(v.names);
    free(v.apps);
    free(v.app);
    free(v.app_len);
}

/* What this host publishes in its metadata (shares.h, "What a host
 * publishes"): the version of its view, its state and its demand for its
 * demand-shared rules. At most every PUBLISH_MS, and only when the view or
 * state changed or a demand moved by more than a fifth: every change is a
 * broadcast to the whole fleet. */
static bool blob_moved(const struct shares_blob *o, const struct shares_blob *b)
{
    if (o->view != b->view || o->state != b->state || o->n != b->n) {
        return true;
    }
    for (size_t i = 0; i < b->n; i++) {
        if (o->d[i].hash != b->d[i].hash ||
            shares_demand_moved(o->d[i].demand, b->d[i].demand)) {
            return true;
        }
    }
    return false;
}

static void publish(struct enf_gossip *s)
{
    uint64_t now = clock_mono_ns() / 1000000u;
    if (now - s->published_at < PUBLISH_MS) {
        return;
    }
    struct shares_blob b = {0};
    b.n = rules_demands(s->a, b.d, SHARES_BLOB_RULES);
    rules_view_state(s->a, &b.view, &b.state);
    if (!blob_moved(&s->published, &b)) {
        return;
    }
    uint8_t buf[GOSSIP_APP_MAX];
    size_t len = shares_blob_encode(&b, buf, sizeof buf);
    struct gossip_meta meta = {.role = GOSSIP_ROLE_AGENT,
                               .weight = s->weight,
                               .fleet = s->a->fleet,
                               .app = len > 0 ? buf : NULL,
                               .app_len = len};
    if (gossip_set_meta(s->g, &meta) == 0) {
        s->published = b;
        s->published_at = now;
    }
}

static void on_member(void *data, enum gossip_event ev,
                      const struct gossip_member *m)
{
    struct enf_gossip *s = data;
    s->view_changed = true;
    if ((ev == GOSSIP_EV_DEAD || (ev == GOSSIP_EV_JOIN && m->returned)) &&
        m->meta.role == GOSSIP_ROLE_AGENT && !m->self &&
        strcmp(m->meta.fleet, s->a->fleet) == 0) {
        rules_fleet_change(s->a, clock_mono_ns() / 1000000u);
    }
}

static void kick(struct enf_gossip *s)
{
    uint64_t one = 1;
    ssize_t w = write(s->kick_fd, &one, sizeof one);
    (void)w; /* cannot fail short of 2^64 - 1 pending kicks */
}

static void timer_cb(uv_timer_t *t)
{
    struct enf_gossip *s = t->data;
    bool full = s->ticks++ % (LIST_PERIOD_MS / RESHARE_MS) == 0;
    if (!full) {
        if (s->view_changed) {
            s->view_changed = false;
            reshare(s);
        }
        return;
    }
    s->view_changed = false;
    char list[sizeof s->servers];
    struct server_list l = {.buf = list, .cap = sizeof list};
    list[0] = '\0';
    gossip_member_foreach(s->g, add_server, &l);
    atomic_store(&s->a->gossip_members, l.alive);
    atomic_store(&s->a->gossip_servers, l.n);
    reshare(s);
    publish(s);
    /* Push-pull delivers keyed values through the broadcast callback too;
     * reading the store as well costs nothing and covers any path. */
    uint8_t buf[GOSSIP_BROADCAST_MAX];
    uint64_t version;
    size_t len;
    if (gossip_keyed_get(s->g, ANNOUNCE_KEY, &version, buf, sizeof buf, &len) ==
            0 &&
        len <= sizeof buf && version > atomic_load(&s->a->announced_version)) {
        take_announcement(s, version, buf, len);
    }
    uint64_t now = clock_wall_ms();
    pthread_mutex_lock(&s->mu);
    if (l.n > 0 && strcmp(s->servers, list) != 0) {
        bool first = s->servers[0] == '\0';
        snprintf(s->servers, sizeof s->servers, "%s", list);
        if (first) {
            pthread_cond_broadcast(&s->cv); /* a pull may wait for one */
        }
    }
    bool stuck =
        s->busy_since_ms != 0 && now > s->busy_since_ms + PULL_DEADLINE_MS;
    if (stuck) {
        s->busy_since_ms = now; /* one kick per deadline */
    }
    pthread_mutex_unlock(&s->mu);
    if (stuck) {
        LOGW("enforce", "rule read takes too long; trying another server",
             "deadline_ms=%u", PULL_DEADLINE_MS);
        kick(s);
    }
}

static void closed_cb(uv_handle_t *h)
{
    (void)h;
}

static void guv_closed_cb(void *data)
{
    (void)data;
}

static void free_member(struct enf_gossip *s)
{
    gossip_free(s->g);
    s->g = NULL;
    gossip_uv_close(s->guv, guv_closed_cb, NULL);
    s->guv = NULL;
    uv_close((uv_handle_t *)&s->timer, closed_cb);
    uv_close((uv_handle_t *)&s->stop_async, closed_cb);
}

static void left_cb(struct gossip_leave *req, int status)
{
    (void)status;
    free_member(req->data);
}

/* Leave, so the others mark this host left at once instead of suspecting
 * it (bounded by the member's leave_timeout_ms). */
static void stop_cb(uv_async_t *h)
{
    struct enf_gossip *s = h->data;
    uv_timer_stop(&s->timer);
    s->leave.data = s;
    if (gossip_leave(s->g, &s->leave, left_cb) != 0) {
        free_member(s);
    }
}

static void *loop_main(void *arg)
{
    struct enf_gossip *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* --- Pull thread ---------------------------------------------------------- */

struct delta
{
    struct allot *a;
    uint64_t target;
    msgpack_sbuffer sb; /* the changes, packed back to back */
    size_t n;
    bool too_long;
};

static int collect_change(void *arg, const msgpack_object *change)
{
    struct delta *d = arg;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &d->sb, msgpack_sbuffer_write);
    if (msgpack_pack_object(&pk, *change) != 0) {
        d->too_long = true; /* out of memory: read everything instead */
        return 1;
    }
    d->n++;
    const msgpack_object *v = wire_map_get(change, "version");
    uint64_t version = v != NULL && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                           ? v->via.u64
                           : 0;
    if (d->n >= DELTA_MAX) {
        d->too_long = true;
        return 1;
    }
    return version >= d->target || atomic_load(&d->a->stopping) ? 1 : 0;
}

/* Check the collected changes against the announcement, then apply them.
 * 0 when applied; ALLOT_ECONFLICT on a mismatch (nothing applied). */
static int apply_delta(struct allot *a, struct delta *d,
                       const struct source_expect *e, char *errmsg)
{
    msgpack_unpacked *us = calloc(d->n ? d->n : 1, sizeof *us);
    const msgpack_object **cs = calloc(d->n ? d->n : 1, sizeof *cs);
    size_t n = 0, off = 0;
    int rv = us == NULL || cs == NULL
                 ? allot_errf(errmsg, ALLOT_ENOMEM, "out of memory")
                 : 0;
    while (rv == 0 && n < d->n) {
        msgpack_unpacked_init(&us[n]);
        if (msgpack_unpack_next(&us[n], d->sb.data, d->sb.size, &off) !=
            MSGPACK_UNPACK_SUCCESS) {
            msgpack_unpacked_destroy(&us[n]);
            rv = allot_errf(errmsg, ALLOT_EINTERNAL, "cannot read a change");
            break;
        }
        cs[n] = &us[n].data;
        n++;
    }
    uint8_t digest[QUOTA_DIGEST_SIZE];
    if (rv == 0) {
        rv = rules_delta_digest(a, cs, n, digest, errmsg);
    }
    if (rv == 0 && memcmp(digest, e->digest, sizeof digest) != 0) {
        rv = allot_errf(errmsg, ALLOT_ECONFLICT,
                        "changes up to version %llu do not match the "
                        "announced digest",
                        (unsigned long long)e->version);
    }
    for (size_t i = 0; rv == 0 && i < n; i++) {
        rv = rules_apply_change(a, cs[i], errmsg);
    }
    for (size_t i = 0; i < n; i++) {
        msgpack_unpacked_destroy(&us[i]);
    }
    free(us);
    free(cs);
    return rv;
}

static void set_busy(struct enf_gossip *s, bool busy)
{
    pthread_mutex_lock(&s->mu);
    s->busy_since_ms = busy ? clock_wall_ms() : 0;
    pthread_mutex_unlock(&s->mu);
}

/* Bring the rules from *held up to e (a delta, else a full read). */
static int catch_up(struct enf_gossip *s, struct allot_client *c,
                    const struct source_expect *e, bool full, char *errmsg)
{
    struct allot *a = s->a;
    uint64_t held = atomic_load(&a->version);
    int rv;
    if (!full && held > 0) {
        struct delta d = {.a = a, .target = e->version};
        msgpack_sbuffer_init(&d.sb);
        struct allot_reply rep;
        uint64_t last = held;
        bool read_all = false;
        rv = allot_client_watch(c, "", &held, collect_change, &d, &last, &rep);
        if (rv == 0 && !d.too_long && last >= e->version) {
            rv = apply_delta(a, &d, e, errmsg);
            if (rv == ALLOT_ECONFLICT) {
                atomic_fetch_add(&a->digest_mismatches, 1);
                LOGW("enforce", "delta does not match the announcement",
                     "version=%llu msg=\"%s\"", (unsigned long long)e->version,
                     errmsg);
            }
            if (rv == 0) {
                atomic_fetch_add(&a->deltas, 1);
                rules_confirm(a, e->version);
            }
            /* Whatever went wrong with the changes themselves (a
             * mismatch, a record that cannot be read, no memory), reading
             * every rule is the remedy; retrying the same delta is not. */
            read_all = rv != 0 && rv != ALLOT_ESHUTDOWN;
        } else if (rv == 0) {
            read_all = true; /* too long or cut short */
        } else {
            allot_errf(errmsg, rv, "changes after %llu: %s",
                       (unsigned long long)held, rep.message);
            /* A lost history calls for a full read; any other failure is
             * the server's, to retry later. */
            read_all = rv == ALLOT_ENOT_FOUND;
        }
        allot_reply_destroy(&rep);
        msgpack_sbuffer_destroy(&d.sb);
        if (!read_all) {
            return rv;
        }
        atomic_fetch_add(&a->resyncs, 1);
    }
    uint64_t version;
    rv = source_pull_checked(a, c, e, &version, errmsg);
    if (rv == ALLOT_ECONFLICT) {
        atomic_fetch_add(&a->digest_mismatches, 1);
    }
    return rv;
}

/* The list starting at its k-th address (mod its length): each attempt
 * starts on another server, so one that never catches up is left behind. */
static void rotate(char *list, size_t cap, unsigned k)
{
    unsigned n = 1;
    for (const char *p = list; *p != '\0'; p++) {
        n += *p == ',';
    }
    k %= n;
    const char *p = list;
    for (unsigned i = 0; i < k; i++) {
        p = strchr(p, ',') + 1;
    }
    if (k == 0) {
        return;
    }
    char tmp[SERVERS_MAX * 64];
    size_t head = (size_t)(p - list) - 1; /* without the comma */
    snprintf(tmp, sizeof tmp, "%s,%.*s", p, (int)head, list);
    snprintf(list, cap, "%s", tmp);
}

static void wait_ms(struct enf_gossip *s, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)ms * 1000000u;
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    pthread_mutex_lock(&s->mu);
    if (!s->stop) {
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
}

static void *pull_main(void *arg)
{
    struct enf_gossip *s = arg;
    struct allot *a = s->a;
    int backoff = BACKOFF_MIN_MS;
    /* With static servers and no rules at all, read them at once rather
     * than wait for an announcement (bootstrap). */
    bool full = a->servers != NULL && atomic_load(&a->version) == 0;
    uint64_t checked = 0; /* the version held whose digest was compared */
    unsigned attempt = (unsigned)lib_random_u64();
    for (;;) {
        pthread_mutex_lock(&s->mu);
        bool need_resync = false;
        while (!s->stop) {
            pthread_mutex_lock(&a->mu);
            need_resync = a->need_resync;
            a->need_resync = false;
            pthread_mutex_unlock(&a->mu);
            uint64_t held = atomic_load(&a->version);
            if (full || need_resync || (s->have_ann && s->ann.version > held) ||
                (s->have_ann && s->ann.version == held && checked != held)) {
                break;
            }
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1; /* need_resync is set without a signal */
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        if (s->stop) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        struct source_expect e = s->ann;
        bool have_ann = s->have_ann;
        char servers[sizeof s->servers];
        snprintf(servers, sizeof servers, "%s",
                 s->servers[0] != '\0' ? s->servers
                 : a->servers != NULL  ? a->servers
                                       : "");
        pthread_mutex_unlock(&s->mu);
        full = full || need_resync;

        uint64_t held = atomic_load(&a->version);
        if (!full && have_ann && e.version == held) {
            /* Nothing to read: check what we hold against the servers'
             * word for it (rules from disk, or read at a version no
             * announcement could check yet). */
            uint8_t d[QUOTA_DIGEST_SIZE];
            uint64_t v;
            rules_digest(a, d, &v);
            if (v == e.version) {
                checked = v;
                if (memcmp(d, e.digest, sizeof d) == 0) {
                    rules_confirm(a, v);
                    continue;
                }
                atomic_fetch_add(&a->digest_mismatches, 1);
                LOGW("enforce",
                     "rules held do not match the announcement; reading all",
                     "version=%llu", (unsigned long long)v);
                full = true;
            }
            continue;
        }
        if (servers[0] == '\0') {
            wait_ms(s, BACKOFF_MAX_MS); /* no server known yet */
            continue;
        }
        rotate(servers, sizeof servers, attempt++);
        uint64_t drain;
        ssize_t r = read(s->kick_fd, &drain, sizeof drain);
        (void)r; /* EAGAIN when nothing was pending */
        char msg[ALLOT_ERRMSG_SIZE] = "";
        struct allot_client *c;
        int rv = source_client_open_at(a, servers, CALL_TIMEOUT_MS, s->kick_fd,
                                       &c, msg);
        if (rv == 0) {
            set_busy(s, true);
            if (have_ann) {
                rv = catch_up(s, c, &e, full, msg);
            } else {
                uint64_t v;
                rv = source_pull(a, c, &v, msg);
            }
            set_busy(s, false);
            allot_client_close(c);
        }
        if (atomic_load(&a->stopping)) {
            break;
        }
        if (rv == 0) {
            full = false;
            backoff = BACKOFF_MIN_MS;
            checked = 0;
            LOGI("enforce", "rules updated from a server",
                 "version=%llu announced=%llu",
                 (unsigned long long)atomic_load(&a->version),
                 (unsigned long long)e.version);
            continue;
        }
        full = full || rv == ALLOT_ECONFLICT;
        LOGW("enforce",
             "cannot bring the rules up to date; keeping those "
             "in force",
             "err=%s msg=\"%s\" retry_ms=%d", allot_error_name(rv), msg,
             backoff);
        wait_ms(s, backoff);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    return NULL;
}

/* --- Start and stop ------------------------------------------------------- */

/* "agent-<host>-<port>": unique per host and bound port, printable. */
static void member_name(char *out, size_t cap, uint16_t port)
{
    char host[40];
    report_default_host(host, sizeof host);
    snprintf(out, cap, "agent-%s-%u", host, (unsigned)port);
}

static void destroy(struct enf_gossip *s)
{
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    close(s->kick_fd);
    free(s);
}

int source_gossip_start(struct allot *a, const struct allot_options *o,
                        struct enf_gossip **out, char *errmsg)
{
    struct gossip_addr seeds[SEEDS_MAX];
    size_t n_seeds = 0;
    struct gossip_config gc;
    gossip_config_init(&gc);
    if (o->gossip_keyring == NULL) {
        /* The gossip is always encrypted (allotd refuses --gossip without
         * a keyring too): there is no insecure mode to fall back to. */
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "gossip_bind needs gossip_keyring");
    }
    int rv = gossip_addr_parse(&gc.addr, o->gossip_bind, errmsg);
    if (rv == 0) {
        rv = gossip_addr_parse_list(o->gossip_seeds, seeds, SEEDS_MAX, &n_seeds,
                                    errmsg);
    }
    if (rv == 0) {
        rv = gossip_keyring_load(&gc.keyring, o->gossip_keyring, errmsg);
    }
    if (rv != 0) {
        return rv;
    }
    struct enf_gossip *s = calloc(1, sizeof *s);
    if (s == NULL) {
        gossip_keyring_wipe(&gc.keyring);
        return allot_errf(errmsg, ALLOT_ENOMEM, "out of memory");
    }
    s->a = a;
    s->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (s->kick_fd < 0 || uv_loop_init(&s->loop) != 0) {
        gossip_keyring_wipe(&gc.keyring);
        destroy(s);
        return allot_errf(errmsg, ALLOT_ENOMEM, "cannot create a loop");
    }
    uv_async_init(&s->loop, &s->stop_async, stop_cb);
    s->stop_async.data = s;
    uv_timer_init(&s->loop, &s->timer);
    s->timer.data = s;
    rv = gossip_uv_new(&s->guv, &s->loop, &gc.addr, errmsg);
    char name[GOSSIP_NAME_MAX + 1];
    if (rv == 0) {
        gc.addr = gossip_uv_addr(s->guv);
        member_name(name, sizeof name, gc.addr.port);
        if (a->host_name[0] == '\0') {
            snprintf(a->host_name, sizeof a->host_name, "%s", name);
        }
        double w = a->weight * WEIGHT_SCALE;
        gc.name = name;
        gc.meta.role = GOSSIP_ROLE_AGENT;
        gc.meta.weight = w >= 4294967295.0 ? UINT32_MAX
                         : w < 1.0         ? 1u
                                           : (uint32_t)lround(w);
        s->weight = gc.meta.weight;
        gc.meta.fleet = a->fleet;
        gc.cb.data = s;
        gc.cb.broadcast = on_broadcast;
        gc.cb.member = on_member;
        gc.leave_timeout_ms = 1000; /* bounds allot_close() */
        rv = gossip_new(&s->g, gossip_uv_io(s->guv), &gc, errmsg);
        if (rv != 0) {
            gossip_uv_close(s->guv, guv_closed_cb, NULL);
            s->guv = NULL;
        }
    }
    gossip_keyring_wipe(&gc.keyring);
    if (rv == 0 && n_seeds > 0) {
        rv = gossip_join(s->g, seeds, n_seeds);
        if (rv != 0) {
            allot_errf(errmsg, rv, "cannot join the gossip seeds");
        }
    }
    if (rv == 0) {
        uv_timer_start(&s->timer, timer_cb, 0, RESHARE_MS);
        if (pthread_create(&s->loop_thr, NULL, loop_main, s) != 0) {
            rv = allot_errf(errmsg, ALLOT_ENOMEM, "cannot start a thread");
        } else {
            s->loop_started = true;
        }
    }
    if (rv == 0) {
        if (pthread_create(&s->pull_thr, NULL, pull_main, s) != 0) {
            rv = allot_errf(errmsg, ALLOT_ENOMEM, "cannot start a thread");
        } else {
            s->pull_started = true;
        }
    }
    if (rv != 0) {
        source_gossip_stop(s);
        return rv;
    }
    char addr[GOSSIP_ADDR_STRLEN];
    LOGI("enforce", "gossip member started", "name=%s addr=%s seeds=%zu", name,
         gossip_addr_format(&gc.addr, addr), n_seeds);
    *out = s;
    return 0;
}

void source_gossip_servers(struct enf_gossip *s, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (s != NULL) {
        pthread_mutex_lock(&s->mu);
        snprintf(buf, cap, "%s", s->servers);
        pthread_mutex_unlock(&s->mu);
    }
}

void source_gossip_stop(struct enf_gossip *s)
{
    if (s == NULL) {
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    kick(s);
    if (s->pull_started) {
        pthread_join(s->pull_thr, NULL);
    }
    if (s->loop_started) {
        uv_async_send(&s->stop_async);
        pthread_join(s->loop_thr, NULL);
    } else {
        /* Never ran: close what was opened, on this thread. */
        if (s->g != NULL) {
            gossip_free(s->g);
            s->g = NULL;
        }
        if (s->guv != NULL) {
            gossip_uv_close(s->guv, guv_closed_cb, NULL);
        }
        uv_close((uv_handle_t *)&s->timer, closed_cb);
        uv_close((uv_handle_t *)&s->stop_async, closed_cb);
        uv_run(&s->loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(&s->loop) != 0) {
        LOGW("enforce", "gossip loop closed with handles open", "%s", "");
    }
    destroy(s);
}
