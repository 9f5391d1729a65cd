/* swim.c - membership and failure detection: SWIM with Lifeguard.
 *
 * Happy path, once per probe interval: pick the next member in a shuffled
 * round-robin, send it a PING (with queued news piggybacked), get an ACK
 * within probe_timeout. Every member is probed once per round, so a failed
 * member is probed within about N intervals at worst, one on average.
 *
 * Failure modes and what they lead to:
 *   - no ACK within probe_timeout: ask indirect_checks other members to
 *     probe it for us (PING_REQ). Each relay answers with the target's ACK,
 *     or with a NACK when it heard nothing within 80% of its timeout;
 *   - still no ACK by the end of the interval: suspect the member and tell
 *     everyone. Missing NACKs mean the trouble may be ours (Lifeguard's
 *     local health): each missing one raises our awareness score, which
 *     stretches our probe interval and timeouts, so a slow member stops
 *     accusing healthy ones. Every successful probe lowers it by one;
 *   - a suspected member that hears of it refutes with a higher incarnation;
 *     otherwise the suspicion times out into dead. The timeout starts at
 *     max and falls towards min as independent members confirm the
 *     suspicion (Lifeguard's dynamic suspicion);
 *   - a message claiming this member is suspect, dead or carries other data
 *     at our incarnation or above is refuted the same way, which is also how
 *     a restarted member gets an incarnation above its old one.
 *
 * An update about a member is accepted only with a higher incarnation, or
 * at the same incarnation when it is worse news (alive < suspect < dead):
 * stale news can therefore never resurrect a member. */
#include "core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/lib.h"
#include "../proto/allot_error.h"

#define COMP "gossip"

static uint64_t name_hash(const char *p, size_t len)
{
    /* FNV-1a: a collision only loses one confirmation. */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t scaled(struct gossip *g, uint32_t ms)
{
    return (uint64_t)ms * (g->awareness + 1);
}

static void awareness_add(struct gossip *g, int delta)
{
    int64_t a = (int64_t)g->awareness + delta;
    int64_t max = (int64_t)g->cfg.awareness_max - 1;
    if (a < 0) {
        a = 0;
    }
    if (a > max) {
        a = max;
    }
    if ((uint32_t)a != g->awareness) {
        LOGD(COMP, "local health changed", "name=%s awareness=%lld",
             g->self->name, (long long)a);
    }
    g->awareness = (uint32_t)a;
}

size_t swim_live_count(struct gossip *g)
{
    return g->n_state[GOSSIP_ALIVE] + g->n_state[GOSSIP_SUSPECT];
}

struct member *swim_find(struct gossip *g, const char *name, size_t len)
{
    return ghash_get(&g->by_name, name, len);
}

static struct member *find_str(struct gossip *g, struct gmsg_str s)
{
    return swim_find(g, s.p, s.len);
}

static void set_state(struct gossip *g, struct member *m, enum gossip_state s)
{
    if (m->state != s) {
        g->n_state[m->state]--;
        g->n_state[s]++;
        m->state = (uint8_t)s;
        m->state_change = core_now(g);
    }
}

/* Tell the application that m changed; returned: a GOSSIP_EV_JOIN of a
 * member known before, dead or left. */
static void notify_as(struct gossip *g, enum gossip_event ev,
                      const struct member *m, bool returned)
{
    char a[GOSSIP_ADDR_STRLEN];
    LOGD(COMP, "member changed", "name=%s member=%s event=%s addr=%s inc=%llu",
         g->self->name, m->name, gossip_event_name(ev),
         gossip_addr_format(&m->addr, a), (unsigned long long)m->inc);
    if (g->cfg.cb.member != NULL) {
        struct gossip_member view;
        core_view(g, m, false, &view);
        view.returned = returned;
        g->cfg.cb.member(g->cfg.cb.data, ev, &view);
    }
}

static void notify(struct gossip *g, enum gossip_event ev,
                   const struct member *m)
{
    notify_as(g, ev, m, false);
}

void swim_alive_of(const struct member *m, struct gmsg_alive *a)
{
    a->inc = m->inc;
    a->name.p = m->name;
    a->name.len = m->name_len;
    a->addr = m->addr;
    a->role = m->role;
    a->weight = m->weight;
    a->fleet.p = member_fleet(m);
    a->fleet.len = strlen(a->fleet.p);
    a->app = member_app(m);
    a->app_len = m->app_len;
}

/* The queue holds at most one message about each member, the newest:
 * mostly an item embedded in its record (m->news), encoded when sent from
 * the member as it is then: ALIVE while alive; SUSPECT while suspect,
 * naming the accuser its suspicion keeps; DEAD once dead (naming this
 * member as the one who says so) or left (naming the member itself, which
 * is how receivers tell a leave from a death: the only use they make of
 * the name). Every change of its state, incarnation, address or metadata
 * queues the news again. A copy under the key "m" + name stands in where
 * the record cannot say it: an accuser's name too long for the suspicion,
 * or this member's own leave, whose sends are counted (GBQ_NOTIFY).
 * Queuing one drops the other. Embedding is what lets 10,000 simulated
 * members split 50/50 fit in memory: each then has 5,000 accusations
 * queued at once. */
static void queue_key(const struct member *m, char key[1 + GOSSIP_NAME_MAX])
{
    key[0] = 'm';
    memcpy(key + 1, m->name, m->name_len);
}

/* Queue an accusation about member m (replacing older news about it). */
static void queue_about(struct gossip *g, struct member *m,
                        const struct gbuf_w *w, unsigned flags)
{
    char key[1 + GOSSIP_NAME_MAX];
    queue_key(m, key);
    gbq_remove_item(&g->queue, &m->news);
    core_queue(g, key, 1u + m->name_len, w, flags);
}

static void broadcast_news(struct gossip *g, struct member *m)
{
    if (g->queue.by_key.n > 0) {
        char key[1 + GOSSIP_NAME_MAX];
        queue_key(m, key);
        gbq_drop(&g->queue, key, 1u + m->name_len);
    }
    gbq_push_item(&g->queue, &m->news);
}

size_t swim_encode_news(void *arg, const struct gbq_item *it, uint8_t *buf,
                        size_t cap)
{
    const struct gossip *g = arg;
    const struct member *m = container_of(it, const struct member, news);
    struct gbuf_w w;
    gbuf_w_fixed(&w, buf, cap);
    switch (m->state) {
    case GOSSIP_SUSPECT:
        /* Queued embedded only with the accuser in the suspicion, which
         * lives as long as the state (broadcast_accusation). */
        gmsg_put_suspect(&w, GMSG_SUSPECT, m->inc, m->name,
                         m->susp != NULL ? m->susp->news_from : g->self->name);
        break;
    case GOSSIP_DEAD:
        gmsg_put_suspect(&w, GMSG_DEAD, m->inc, m->name, g->self->name);
        break;
    case GOSSIP_LEFT:
        gmsg_put_suspect(&w, GMSG_DEAD, m->inc, m->name, m->name);
        break;
    default: {
        struct gmsg_alive a;
        swim_alive_of(m, &a);
        gmsg_put_alive(&w, &a);
        break;
    }
    }
    return w.failed ? 0 : w.len;
}

/* Can m's record say this accusation when it is sent (swim_encode_news)?
 * Then the accuser of a SUSPECT is kept in its suspicion. */
static bool news_embeds(struct member *m, enum gmsg_type type, uint64_t inc,
                        const char *from, unsigned flags)
{
    if (flags != 0 || inc != m->inc) {
        return false;
    }
    if (type == GMSG_DEAD) {
        return m->state == GOSSIP_LEFT
                   ? strcmp(from, m->name) == 0
                   : m->state == GOSSIP_DEAD && strcmp(from, m->name) != 0;
    }
    size_t len = strlen(from);
    if (type != GMSG_SUSPECT || m->state != GOSSIP_SUSPECT || m->susp == NULL ||
        len > SUSP_NEWS_FROM_MAX) {
        return false;
    }
    memcpy(m->susp->news_from, from, len + 1);
    return true;
}

static void broadcast_accusation(struct gossip *g, enum gmsg_type type,
                                 struct member *m, uint64_t inc,
                                 const char *from, unsigned flags)
{
    if (news_embeds(m, type, inc, from, flags)) {
        broadcast_news(g, m);
        return;
    }
    uint8_t buf[256];
    struct gbuf_w w;
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_suspect(&w, type, inc, m->name, from);
    queue_about(g, m, &w, flags);
}

/* --- The member table --------------------------------------------------- */

static const void *member_key(const void *val, size_t *len)
{
    const struct member *m = val;
    *len = m->name_len;
    return m->name;
}

static size_t member_size(size_t name_len, size_t fleet_len, size_t app_len)
{
    return offsetof(struct member, name) + name_len + 1 + fleet_len + 1 +
           app_len;
}

/* Write a's metadata into m, which has room for it. */
static void put_meta(struct member *m, const struct gmsg_alive *a)
{
    char *fleet = m->name + m->name_len + 1;
    if (a->fleet.len > 0) {
        memcpy(fleet, a->fleet.p, a->fleet.len);
    }
    fleet[a->fleet.len] = '\0';
    if (a->app_len > 0) {
        memcpy(fleet + a->fleet.len + 1, a->app, a->app_len);
    }
    m->app_len = (uint16_t)a->app_len;
    m->role = a->role;
    m->weight = a->weight;
    m->addr = a->addr;
}

/* Take a's metadata. When its size differs the record moves, and every
 * pointer to it (the table, the array, its suspicion, g->self) follows;
 * its queued ALIVE is dropped, for the caller queues a new one. Returns
 * the record, or NULL when out of memory (m unchanged). */
static struct member *set_meta(struct gossip *g, struct member *m,
                               const struct gmsg_alive *a)
{
    const char *fleet = member_fleet(m);
    if (member_size(m->name_len, a->fleet.len, a->app_len) !=
        member_size(m->name_len, strlen(fleet), m->app_len)) {
        struct member *n =
            malloc(member_size(m->name_len, a->fleet.len, a->app_len));
        if (n == NULL) {
            return NULL;
        }
        memcpy(n, m, offsetof(struct member, name) + m->name_len + 1u);
        gbq_item_init(&n->news);
        /* The same key: replaces m in its slot, and fails only before. */
        if (ghash_put(&g->by_name, n) != 0) {
            free(n);
            return NULL;
        }
        gbq_remove_item(&g->queue, &m->news);
        if (n->susp != NULL) {
            n->susp->m = n;
        }
        if (g->self == m) {
            g->self = n;
        }
        /* Metadata of a given size changes rarely: a scan is cheaper than
         * keeping every member's position in the record. */
        for (size_t i = 0; i < g->n_members; i++) {
            if (g->members[i] == m) {
                g->members[i] = n;
                break;
            }
        }
        free(m);
        m = n;
    }
    put_meta(m, a);
    return m;
}

static bool same_data(const struct member *m, const struct gmsg_alive *a)
{
    const char *fleet = member_fleet(m);
    return gossip_addr_eq(&m->addr, &a->addr) && m->role == a->role &&
           m->weight == a->weight && strlen(fleet) == a->fleet.len &&
           memcmp(fleet, a->fleet.p != NULL ? a->fleet.p : "", a->fleet.len) ==
               0 &&
           m->app_len == a->app_len &&
           (a->app_len == 0 || memcmp(member_app(m), a->app, a->app_len) == 0);
}

static void member_free(struct member *m)
{
    free(m->susp);
    free(m);
}

static struct member *member_add(struct gossip *g, const struct gmsg_alive *a)
{
    if (g->n_members == g->cap_members) {
        size_t cap = g->cap_members ? g->cap_members * 2 : 16;
        struct member **p = realloc(g->members, cap * sizeof *p);
        if (p == NULL) {
            return NULL;
        }
        g->members = p;
        g->cap_members = cap;
    }
    struct member *m =
        calloc(1, member_size(a->name.len, a->fleet.len, a->app_len));
    if (m == NULL) {
        return NULL;
    }
    gbq_item_init(&m->news);
    memcpy(m->name, a->name.p, a->name.len);
    m->name_len = (uint8_t)a->name.len;
    m->inc = a->inc;
    m->state = GOSSIP_ALIVE;
    m->state_change = core_now(g);
    put_meta(m, a);
    if (ghash_put(&g->by_name, m) != 0) {
        member_free(m);
        return NULL;
    }
    /* A random place, so a new member is probed within one round on
     * average, not only at the end of the current one. */
    size_t n = g->n_members++;
    size_t at = (size_t)core_random(g, n + 1);
    g->members[n] = m;
    if (at != n) {
        g->members[n] = g->members[at];
        g->members[at] = m;
    }
    g->n_state[GOSSIP_ALIVE]++;
    return m;
}

static void suspicion_stop(struct gossip *g, struct member *m)
{
    if (m->susp != NULL) {
        gtimer_stop(&g->timers, &m->susp->timer);
        free(m->susp);
        m->susp = NULL;
    }
}

/* Forget the member at position i of g->members. */
static void member_remove(struct gossip *g, size_t i)
{
    struct member *m = g->members[i];
    suspicion_stop(g, m);
    ghash_del(&g->by_name, m->name, m->name_len);
    char key[1 + GOSSIP_NAME_MAX];
    queue_key(m, key);
    gbq_drop(&g->queue, key, 1u + m->name_len);
    gbq_remove_item(&g->queue, &m->news);
    size_t last = --g->n_members;
    g->members[i] = g->members[last];
    g->n_state[m->state]--;
    member_free(m);
}

/* Forget members dead or left for longer than dead_forget_ms, and shuffle
 * for the next probe round. */
static void new_round(struct gossip *g)
{
    uint64_t now = core_now(g);
    for (size_t i = 0; i < g->n_members;) {
        struct member *m = g->members[i];
        if (m != g->self &&
            (m->state == GOSSIP_DEAD || m->state == GOSSIP_LEFT) &&
            now - m->state_change >= g->cfg.dead_forget_ms) {
            member_remove(g, i);
            continue;
        }
        i++;
    }
    for (size_t i = g->n_members; i > 1; i--) {
        size_t j = (size_t)core_random(g, i);
        struct member *t = g->members[i - 1];
        g->members[i - 1] = g->members[j];
        g->members[j] = t;
    }
    g->probe_idx = 0;
}

size_t swim_pick(struct gossip *g, enum swim_pick which, size_t k,
                 const struct member *exclude, struct member **out)
{
    size_t n = g->n_members;
    size_t got = 0;
    if (n == 0 || k == 0) {
        return 0;
    }
    uint64_t now = core_now(g);
    /* Random draws, bounded: with few eligible members some rounds pick
     * fewer than k, which the protocol tolerates. */
    size_t tries = 3 * n < 256 ? 3 * n : 256;
    for (size_t t = 0; t < tries && got < k; t++) {
        struct member *m = g->members[core_random(g, n)];
        if (m == g->self || m == exclude) {
            continue;
        }
        bool ok;
        switch (which) {
        case SWIM_PICK_ALIVE:
            ok = m->state == GOSSIP_ALIVE;
            break;
        case SWIM_PICK_GOSSIP:
            ok = m->state == GOSSIP_ALIVE || m->state == GOSSIP_SUSPECT ||
                 (m->state == GOSSIP_DEAD &&
                  now - m->state_change < g->cfg.gossip_to_dead_ms);
            break;
        default:
            ok = m->state == GOSSIP_DEAD;
            break;
        }
        for (size_t j = 0; ok && j < got; j++) {
            ok = out[j] != m;
        }
        if (ok) {
            out[got++] = m;
        }
    }
    return got;
}

/* --- Refuting ----------------------------------------------------------- */

static void refute(struct gossip *g, uint64_t claimed)
{
    struct member *s = g->self;
    uint64_t inc = claimed >= s->inc ? claimed + 1 : s->inc + 1;
    s->inc = inc;
    g->stats.refutes++;
    LOGD(COMP, "refuting", "name=%s inc=%llu", s->name,
         (unsigned long long)inc);
    broadcast_news(g, s);
}

int swim_update_self(struct gossip *g, const struct gmsg_alive *a)
{
    if (set_meta(g, g->self, a) == NULL) {
        return ALLOT_ENOMEM;
    }
    g->self->inc++;
    broadcast_news(g, g->self);
    return 0;
}

/* --- Suspicion ---------------------------------------------------------- */

static uint64_t suspicion_timeout(const struct suspicion *s)
{
    if (s->k < 1) {
        return s->min_ms;
    }
    double frac = log((double)s->n + 1.0) / log((double)s->k + 1.0);
    double raw = (double)s->max_ms - frac * (double)(s->max_ms - s->min_ms);
    uint64_t t = raw > 0 ? (uint64_t)raw : 0;
    return t < s->min_ms ? s->min_ms : t;
}

static void suspicion_arm(struct gossip *g, struct suspicion *s)
{
    core_timer_start(g, &s->timer, s->start + suspicion_timeout(s));
}

static void declare_dead(struct gossip *g, struct member *m, uint64_t inc,
                         const char *from, bool left);

static void send_ping(struct gossip *g, const struct member *target,
                      uint32_t seq, const struct gossip_addr *addr,
                      const char *target_name);
static size_t send_ping_reqs(struct gossip *g, const struct member *target,
                             uint32_t seq, bool want_nack);

/* A suspicion ran out: the member has not refuted in time, as far as we
 * heard. Refutations travel by gossip like everything else, and under
 * loss one member can miss every copy of one (measured: 1 in ~50
 * suspicions at 5% loss with 400-500 ms probes) and declare a healthy
 * member dead. So first ping it once more (with the suspicion piggybacked,
 * as every ping to a suspect carries, and through relays): an ack is
 * proof of life, and the suspicion starts over; silence for a probe
 * interval is death. A crash costs one probe interval more; with every
 * final slot busy, the old rule (dead at once) applies. */
static void final_free(struct gossip *g, struct final_probe *f)
{
    gtimer_stop(&g->timers, &f->timer);
    f->used = false;
}

static void on_final_timeout(struct gtimer *t, void *arg)
{
    struct gossip *g = arg;
    struct final_probe *f = container_of(t, struct final_probe, timer);
    struct member *m = swim_find(g, f->name, strlen(f->name));
    uint64_t inc = f->inc;
    final_free(g, f);
    if (m == NULL || m->state != GOSSIP_SUSPECT || m->inc != inc) {
        return; /* refuted or settled meanwhile */
    }
    LOGI(COMP, "suspicion expired", "name=%s member=%s confirmations=%u",
         g->self->name, m->name, m->susp != NULL ? m->susp->n : 0);
    g->stats.deaths++;
    declare_dead(g, m, m->inc, g->self->name, false);
}

static void on_suspicion_timeout(struct gtimer *t, void *arg)
{
    struct gossip *g = arg;
    struct suspicion *s = container_of(t, struct suspicion, timer);
    struct member *m = s->m;
    if (m->state != GOSSIP_SUSPECT || m->inc != s->inc) {
        return;
    }
    struct final_probe *f = NULL;
    for (size_t i = 0; i < FINAL_MAX && f == NULL; i++) {
        f = g->finals[i].used ? NULL : &g->finals[i];
    }
    if (f == NULL) {
        LOGI(COMP, "suspicion expired", "name=%s member=%s confirmations=%u",
             g->self->name, m->name, s->n);
        g->stats.deaths++;
        declare_dead(g, m, m->inc, g->self->name, false);
        return;
    }
    f->used = true;
    f->seq = ++g->seq;
    f->inc = m->inc;
    memcpy(f->name, m->name, m->name_len + 1u);
    /* A whole probe at once, direct and through indirect_checks relays
     * (whose acks come back under f->seq): one lost datagram must not be
     * the difference between alive and dead. */
    core_timer_start(g, &f->timer,
                     core_now(g) + scaled(g, g->cfg.probe_interval_ms));
    send_ping(g, m, f->seq, &m->addr, m->name);
    send_ping_reqs(g, m, f->seq, false);
}

/* An ack for a last-chance probe: the suspicion starts over. true when seq
 * was one. */
static bool final_acked(struct gossip *g, uint32_t seq)
{
    for (size_t i = 0; i < FINAL_MAX; i++) {
        struct final_probe *f = &g->finals[i];
        if (!f->used || f->seq != seq) {
            continue;
        }
        struct member *m = swim_find(g, f->name, strlen(f->name));
        if (m != NULL && m->state == GOSSIP_SUSPECT && m->inc == f->inc &&
            m->susp != NULL) {
            g->stats.final_acks++;
            m->susp->start = core_now(g);
            suspicion_arm(g, m->susp);
        }
        final_free(g, f);
        return true;
    }
    return false;
}

static void suspicion_start(struct gossip *g, struct member *m,
                            struct gmsg_str from)
{
    size_t n = swim_live_count(g);
    uint32_t mult = g->cfg.suspicion_mult;
    /* gossip_config_check bounds mult to SUSP_CONFIRM_MAX + 2. */
    uint32_t k = mult > 2 ? mult - 2 : 0;
    if (n < (size_t)k + 2) {
        /* Too few members to expect confirmations: use min directly. */
        k = 0;
    }
    struct suspicion *s = calloc(1, sizeof *s + (k + 1) * sizeof s->from[0]);
    if (s == NULL) {
        return; /* no timer: the member stays suspect until it refutes */
    }
    double scale = n > 10 ? log10((double)n) : 1.0;
    double min_ms = mult * scale * g->cfg.probe_interval_ms;
    s->m = m;
    s->inc = m->inc;
    s->start = core_now(g);
    s->min_ms = min_ms < UINT32_MAX ? (uint32_t)min_ms : UINT32_MAX;
    uint64_t max_ms = (uint64_t)s->min_ms * g->cfg.suspicion_max_mult;
    s->max_ms = max_ms < UINT32_MAX ? (uint32_t)max_ms : UINT32_MAX;
    s->k = (uint8_t)k;
    s->from[s->n_from++] = name_hash(from.p, from.len);
    gtimer_init(&s->timer, on_suspicion_timeout);
    m->susp = s;
    suspicion_arm(g, s);
}

/* A new accuser confirms the suspicion: true when it counted. */
static bool suspicion_confirm(struct gossip *g, struct suspicion *s,
                              struct gmsg_str from)
{
    if (s->n >= s->k) {
        return false; /* also keeps n_from <= k + 1, the size of from[] */
    }
    uint64_t h = name_hash(from.p, from.len);
    for (uint32_t i = 0; i < s->n_from; i++) {
        if (s->from[i] == h) {
            return false;
        }
    }
    s->from[s->n_from++] = h;
    s->n++;
    suspicion_arm(g, s);
    return true;
}

/* --- Handling news ------------------------------------------------------ */

void swim_on_alive(struct gossip *g, const struct gmsg_alive *a)
{
    struct member *m = find_str(g, a->name);
    if (m == g->self) {
        if (g->leaving || a->inc < m->inc ||
            (a->inc == m->inc && same_data(m, a))) {
            return; /* our own news coming back, or old news */
        }
        /* Someone claims other data for us at our incarnation or above: a
         * previous run of this member, or a forgery by a key holder. */
        refute(g, a->inc);
        return;
    }
    if (m == NULL) {
        m = member_add(g, a);
        if (m == NULL) {
            gossip_count_drop(g, GOSSIP_DROP_OVERLOAD);
            return;
        }
        broadcast_news(g, m);
        notify(g, GOSSIP_EV_JOIN, m);
        return;
    }
    if (a->inc <= m->inc) {
        return;
    }
    bool changed = !same_data(m, a);
    if (changed && (m = set_meta(g, m, a)) == NULL) {
        gossip_count_drop(g, GOSSIP_DROP_OVERLOAD);
        return;
    }
    enum gossip_state prev = m->state;
    m->inc = a->inc;
    suspicion_stop(g, m);
    set_state(g, m, GOSSIP_ALIVE);
    broadcast_news(g, m);
    if (prev == GOSSIP_DEAD || prev == GOSSIP_LEFT) {
        notify_as(g, GOSSIP_EV_JOIN, m, true);
    } else if (prev == GOSSIP_SUSPECT) {
        notify(g, GOSSIP_EV_ALIVE, m);
        if (changed) {
            notify(g, GOSSIP_EV_UPDATE, m);
        }
    } else if (changed) {
        notify(g, GOSSIP_EV_UPDATE, m);
    }
}

int swim_seed(struct gossip *g, const struct gmsg_alive *a)
{
    if (find_str(g, a->name) != NULL) {
        return ALLOT_EEXISTS;
    }
    struct member *m = member_add(g, a);
    if (m == NULL) {
        return ALLOT_ENOMEM;
    }
    /* Known for long: its news spread long ago, so none is queued. */
    notify(g, GOSSIP_EV_JOIN, m);
    return 0;
}

void swim_on_suspect(struct gossip *g, uint64_t inc, struct gmsg_str name,
                     struct gmsg_str from)
{
    struct member *m = find_str(g, name);
    if (m == NULL || inc < m->inc) {
        return;
    }
    if (m == g->self) {
        if (!g->leaving) {
            /* Others think we are slow: maybe we are (Lifeguard). */
            awareness_add(g, 1);
            refute(g, inc);
        }
        return;
    }
    if (m->state == GOSSIP_SUSPECT) {
        if (m->susp != NULL && suspicion_confirm(g, m->susp, from)) {
            /* Spread the confirmation so others shorten their timers. */
            char f[GOSSIP_NAME_MAX + 1];
            memcpy(f, from.p, from.len);
            f[from.len] = '\0';
            broadcast_accusation(g, GMSG_SUSPECT, m, m->inc, f, 0);
        }
        return;
    }
    if (m->state != GOSSIP_ALIVE) {
        return;
    }
    m->inc = inc;
    set_state(g, m, GOSSIP_SUSPECT);
    suspicion_start(g, m, from);
    char f[GOSSIP_NAME_MAX + 1];
    memcpy(f, from.p, from.len);
    f[from.len] = '\0';
    broadcast_accusation(g, GMSG_SUSPECT, m, inc, f, 0);
    notify(g, GOSSIP_EV_SUSPECT, m);
}

static void declare_dead(struct gossip *g, struct member *m, uint64_t inc,
                         const char *from, bool left)
{
    suspicion_stop(g, m);
    m->inc = inc;
    set_state(g, m, left ? GOSSIP_LEFT : GOSSIP_DEAD);
    broadcast_accusation(g, GMSG_DEAD, m, inc, from, 0);
    notify(g, left ? GOSSIP_EV_LEFT : GOSSIP_EV_DEAD, m);
}

void swim_on_dead(struct gossip *g, uint64_t inc, struct gmsg_str name,
                  struct gmsg_str from)
{
    struct member *m = find_str(g, name);
    if (m == NULL || inc < m->inc) {
        return;
    }
    bool left = from.len == name.len && memcmp(from.p, name.p, name.len) == 0;
    if (m == g->self) {
        if (!g->leaving) {
            awareness_add(g, 1);
            refute(g, inc);
        }
        return;
    }
    /* Left is final; a dead member may still be reported as having left. */
    if (m->state == GOSSIP_LEFT || (m->state == GOSSIP_DEAD && !left)) {
        return;
    }
    char f[GOSSIP_NAME_MAX + 1];
    memcpy(f, from.p, from.len);
    f[from.len] = '\0';
    declare_dead(g, m, inc, f, left);
}

/* --- Probing ------------------------------------------------------------ */

static void send_ping(struct gossip *g, const struct member *target,
                      uint32_t seq, const struct gossip_addr *addr,
                      const char *target_name)
{
    struct gbuf_w w;
    core_packet_begin(g, &w);
    if (target != NULL && target->state == GOSSIP_SUSPECT) {
        /* Lifeguard's buddy system: tell a suspect directly, so it can
         * refute before gossip would have reached it. */
        gmsg_put_suspect(&w, GMSG_SUSPECT, target->inc, target->name,
                         g->self->name);
    }
    gmsg_put_ping(&w, seq, target_name, g->self->name, &g->self->addr);
    core_packet_send(g, addr, &w, true);
}

/* Ask indirect_checks alive members to ping target for us; their acks
 * come back under seq. Returns how many were asked. */
static size_t send_ping_reqs(struct gossip *g, const struct member *target,
                             uint32_t seq, bool want_nack)
{
    struct member *relays[16];
    size_t k = g->cfg.indirect_checks < 16 ? g->cfg.indirect_checks : 16;
    size_t n = swim_pick(g, SWIM_PICK_ALIVE, k, target, relays);
    for (size_t i = 0; i < n; i++) {
        struct gbuf_w w;
        core_packet_begin(g, &w);
        gmsg_put_ping_req(&w, seq, target->name, &target->addr, want_nack,
                          g->self->name, &g->self->addr);
        core_packet_send(g, &relays[i]->addr, &w, true);
        g->stats.indirect_probes++;
    }
    return n;
}

static void probe_finish(struct gossip *g)
{
    g->probe.active = false;
    gtimer_stop(&g->timers, &g->probe.ack_timer);
    if (g->probe.acked) {
        return;
    }
    g->stats.probe_failures++;
    /* Lifeguard: nacks expected but missing point at our own slowness. */
    unsigned missing = g->probe.expected_nacks > 0
                           ? g->probe.expected_nacks -
                                 (g->probe.nacks < g->probe.expected_nacks
                                      ? g->probe.nacks
                                      : g->probe.expected_nacks)
                           : 1;
    awareness_add(g, (int)missing);
    struct member *m = swim_find(g, g->probe.target, strlen(g->probe.target));
    if (m == NULL || m == g->self ||
        (m->state != GOSSIP_ALIVE && m->state != GOSSIP_SUSPECT)) {
        return;
    }
    struct gmsg_str name = {m->name, m->name_len};
    struct gmsg_str self = {g->self->name, g->self->name_len};
    enum gossip_state prev = m->state;
    LOGD(COMP, "probe failed", "name=%s member=%s nacks=%u/%u", g->self->name,
         m->name, g->probe.nacks, g->probe.expected_nacks);
    swim_on_suspect(g, g->probe.inc, name, self);
    if (prev == GOSSIP_ALIVE && m->state == GOSSIP_SUSPECT) {
        g->stats.suspicions++;
    }
}

static void on_ack_timeout(struct gtimer *t, void *arg)
{
    (void)t;
    struct gossip *g = arg;
    if (!g->probe.active || g->probe.acked) {
        return;
    }
    struct member *target =
        swim_find(g, g->probe.target, strlen(g->probe.target));
    if (target == NULL) {
        return;
    }
    g->probe.expected_nacks =
        (unsigned)send_ping_reqs(g, target, g->probe.seq, true);
}

static void probe_start(struct gossip *g)
{
    uint64_t now = core_now(g);
    uint64_t interval = scaled(g, g->cfg.probe_interval_ms);
    struct member *target = NULL;
    bool wrapped = false;
    /* The rest of this round, then at most one whole new round. */
    for (size_t i = 0; i <= 2 * g->n_members && target == NULL; i++) {
        if (g->probe_idx >= g->n_members) {
            if (wrapped) {
                break;
            }
            new_round(g);
            wrapped = true;
        }
        struct member *m = g->members[g->probe_idx++];
        if (m != g->self &&
            (m->state == GOSSIP_ALIVE || m->state == GOSSIP_SUSPECT)) {
            target = m;
        }
    }
    core_timer_start(g, &g->probe_timer, now + interval);
    if (target == NULL) {
        return;
    }
    g->probe.active = true;
    g->probe.acked = false;
    g->probe.seq = ++g->seq;
    g->probe.inc = target->inc;
    g->probe.expected_nacks = 0;
    g->probe.nacks = 0;
    memcpy(g->probe.target, target->name, target->name_len + 1u);
    g->stats.probes++;
    core_timer_start(g, &g->probe.ack_timer,
                     now + scaled(g, g->cfg.probe_timeout_ms));
    send_ping(g, target, g->probe.seq, &target->addr, target->name);
}

static void on_probe_timer(struct gtimer *t, void *arg)
{
    (void)t;
    struct gossip *g = arg;
    if (g->probe.active) {
        probe_finish(g);
    }
    if (!g->leaving) {
        probe_start(g);
    }
}

void swim_on_ping(struct gossip *g, const struct gmsg_ping *p)
{
    /* A ping meant for a previous owner of this address is not ours to
     * answer: our ack would vouch for a member that is gone. */
    if (!gmsg_str_eq(p->target, g->self->name)) {
        return;
    }
    struct gbuf_w w;
    core_packet_begin(g, &w);
    gmsg_put_ack(&w, GMSG_ACK, p->seq);
    core_packet_send(g, &p->source_addr, &w, true);
}

static void relay_free(struct gossip *g, struct relay *r)
{
    gtimer_stop(&g->timers, &r->nack_timer);
    gtimer_stop(&g->timers, &r->expire_timer);
    r->used = false;
}

static void on_relay_nack(struct gtimer *t, void *arg)
{
    struct gossip *g = arg;
    struct relay *r = container_of(t, struct relay, nack_timer);
    struct gbuf_w w;
    core_packet_begin(g, &w);
    gmsg_put_ack(&w, GMSG_NACK, r->origin_seq);
    core_packet_send(g, &r->origin, &w, false);
}

static void on_relay_expire(struct gtimer *t, void *arg)
{
    struct gossip *g = arg;
    relay_free(g, container_of(t, struct relay, expire_timer));
}

void swim_on_ping_req(struct gossip *g, const struct gmsg_ping_req *p)
{
    struct relay *r = NULL;
    for (size_t i = 0; i < RELAY_MAX; i++) {
        if (!g->relays[i].used) {
            r = &g->relays[i];
            break;
        }
    }
    if (r == NULL) {
        gossip_count_drop(g, GOSSIP_DROP_OVERLOAD);
        return;
    }
    uint64_t now = core_now(g);
    r->used = true;
    r->seq = ++g->seq;
    r->origin_seq = p->seq;
    r->origin = p->source_addr;
    r->want_nack = p->want_nack;
    if (p->want_nack) {
        core_timer_start(g, &r->nack_timer,
                         now + g->cfg.probe_timeout_ms * 4u / 5u);
    }
    core_timer_start(g, &r->expire_timer, now + g->cfg.probe_interval_ms);
    char target[GOSSIP_NAME_MAX + 1];
    memcpy(target, p->target.p, p->target.len);
    target[p->target.len] = '\0';
    send_ping(g, find_str(g, p->target), r->seq, &p->target_addr, target);
}

void swim_on_ack(struct gossip *g, uint32_t seq)
{
    if (final_acked(g, seq)) {
        return;
    }
    if (g->probe.active && seq == g->probe.seq) {
        if (!g->probe.acked) {
            g->probe.acked = true;
            gtimer_stop(&g->timers, &g->probe.ack_timer);
            awareness_add(g, -1);
        }
        return;
    }
    for (size_t i = 0; i < RELAY_MAX; i++) {
        struct relay *r = &g->relays[i];
        if (r->used && r->seq == seq) {
            struct gbuf_w w;
            core_packet_begin(g, &w);
            gmsg_put_ack(&w, GMSG_ACK, r->origin_seq);
            core_packet_send(g, &r->origin, &w, false);
            relay_free(g, r);
            return;
        }
    }
}

void swim_on_nack(struct gossip *g, uint32_t seq)
{
    if (g->probe.active && seq == g->probe.seq) {
        g->stats.nacks_recv++;
        g->probe.nacks++;
    }
}

/* --- Lifecycle
 * ---------------------------------------------------------------- */

int swim_init(struct gossip *g)
{
    ghash_init(&g->by_name, member_key);
    gtimer_init(&g->probe_timer, on_probe_timer);
    gtimer_init(&g->probe.ack_timer, on_ack_timeout);
    for (size_t i = 0; i < RELAY_MAX; i++) {
        gtimer_init(&g->relays[i].nack_timer, on_relay_nack);
        gtimer_init(&g->relays[i].expire_timer, on_relay_expire);
    }
    for (size_t i = 0; i < FINAL_MAX; i++) {
        gtimer_init(&g->finals[i].timer, on_final_timeout);
    }
    struct gmsg_alive a = {
        .inc = 0,
        .name = {g->cfg.name, strlen(g->cfg.name)},
        .addr = g->cfg.addr,
        .role = (uint8_t)g->cfg.meta.role,
        .weight = g->cfg.meta.weight,
        .fleet = {g->cfg.meta.fleet != NULL ? g->cfg.meta.fleet : "",
                  g->cfg.meta.fleet != NULL ? strlen(g->cfg.meta.fleet) : 0},
        .app = g->cfg.meta.app,
        .app_len = g->cfg.meta.app_len,
    };
    g->self = member_add(g, &a);
    if (g->self == NULL) {
        return ALLOT_ENOMEM;
    }
    return 0;
}

void swim_start(struct gossip *g)
{
    /* Desynchronize members started together: the first probe comes at a
     * random point of the first interval. */
    uint64_t now = core_now(g);
    core_timer_start(g, &g->probe_timer,
                     now + core_random(g, g->cfg.probe_interval_ms) + 1);
}

void swim_free(struct gossip *g)
{
    for (size_t i = 0; i < g->n_members; i++) {
        member_free(g->members[i]);
    }
    free(g->members);
    g->members = NULL;
    g->n_members = g->cap_members = 0;
    ghash_free(&g->by_name);
}

void swim_leave(struct gossip *g)
{
    struct member *s = g->self;
    s->inc++;
    set_state(g, s, GOSSIP_LEFT);
    gtimer_stop(&g->timers, &g->probe_timer);
    gtimer_stop(&g->timers, &g->probe.ack_timer);
    g->probe.active = false;
    broadcast_accusation(g, GMSG_DEAD, s, s->inc, s->name, GBQ_NOTIFY);
}
