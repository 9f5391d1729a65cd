/* gossip.c - the gossip instance: receiving, sending, dissemination,
 * push-pull, and the public API (see gossip.h; membership is in swim.c).
 *
 * Receiving, happy path: the io hands over a sealed datagram or stream
 * message; it is opened under the keyring, every message in it is decoded
 * (gmsg_validate) and only then acted on, in order.
 *
 * Failure modes, each dropped whole and counted in stats.dropped[], never
 * acted on in part:
 *   - larger than GOSSIP_PACKET_MAX / GOSSIP_STREAM_MAX: OVERSIZE;
 *   - shorter than the envelope or of another version: MALFORMED;
 *   - no key of the ring opens it: AUTH;
 *   - opened, but a message in it is malformed: MALFORMED;
 *   - a bounded table (relays, keyed values, queue) is full: OVERLOAD.
 *
 * Sending: a datagram is built in g->out_plain, topped up with queued
 * broadcasts (least-sent first) and sealed into g->out_sealed. Broadcast-
 * only datagrams go to gossip_nodes random members every gossip_interval,
 * so news reaches N members in about log(N)/log(gossip_nodes + 1) intervals
 * even when probes carry nothing. */
#include "core.h"

#include <arpa/inet.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/lib.h"
#include "../proto/allot_error.h"

#define COMP "gossip"

/* Push-pull intervals start to grow past this many members, so the fleet's
 * total push-pull traffic grows like N log N, not N^2. */
#define PUSH_PULL_SCALE_THRESHOLD 32

/* --- Names -------------------------------------------------------------- */

const char *gossip_state_name(enum gossip_state s)
{
    switch (s) {
    case GOSSIP_ALIVE:
        return "alive";
    case GOSSIP_SUSPECT:
        return "suspect";
    case GOSSIP_DEAD:
        return "dead";
    case GOSSIP_LEFT:
        return "left";
    }
    return "unknown";
}

const char *gossip_role_name(enum gossip_role r)
{
    return r == GOSSIP_ROLE_SERVER ? "server" : "agent";
}

enum gossip_fleet_place gossip_fleet_place(const struct gossip_member *m,
                                           const char *fleet)
{
    if (m->meta.role != GOSSIP_ROLE_AGENT || m->state == GOSSIP_LEFT ||
        strcmp(m->meta.fleet, fleet) != 0) {
        return GOSSIP_FLEET_OUT;
    }
    return m->state == GOSSIP_ALIVE || m->state == GOSSIP_SUSPECT
               ? GOSSIP_FLEET_IN
               : GOSSIP_FLEET_DOWN;
}

const char *gossip_event_name(enum gossip_event ev)
{
    switch (ev) {
    case GOSSIP_EV_JOIN:
        return "join";
    case GOSSIP_EV_UPDATE:
        return "update";
    case GOSSIP_EV_SUSPECT:
        return "suspect";
    case GOSSIP_EV_ALIVE:
        return "alive";
    case GOSSIP_EV_DEAD:
        return "dead";
    case GOSSIP_EV_LEFT:
        return "left";
    }
    return "unknown";
}

/* --- Addresses ---------------------------------------------------------- */

int gossip_addr_parse(struct gossip_addr *out, const char *s, char *errmsg)
{
    /* Not lib's addr_parse(): port 0 ("any free port") is valid here. */
    const char *colon = strrchr(s, ':');
    char host[32];
    if (colon == NULL || colon == s || (size_t)(colon - s) >= sizeof host) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "\"%.64s\" is not HOST:PORT (an IPv4 address or "
                          "localhost, then a port 0-65535)",
                          s);
    }
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port < 0 || port > 65535) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "bad port in \"%.64s\": expected 0-65535", s);
    }
    struct in_addr in;
    if (strcmp(host, "localhost") == 0) {
        in.s_addr = htonl(INADDR_LOOPBACK);
    } else if (inet_pton(AF_INET, host, &in) != 1) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "bad host in \"%.64s\": expected an IPv4 address "
                          "or localhost",
                          s);
    }
    out->ip = ntohl(in.s_addr);
    out->port = (uint16_t)port;
    return 0;
}

int gossip_addr_parse_list(const char *list, struct gossip_addr *out,
                           size_t cap, size_t *n, char *errmsg)
{
    *n = 0;
    const char *p = list;
    while (p != NULL && *p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        char one[64];
        if (len == 0 || len >= sizeof one) {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "\"%.*s\" is not HOST:PORT", (int)len, p);
        }
        if (*n == cap) {
            return allot_errf(errmsg, ALLOT_EINVALID, "at most %zu addresses",
                              cap);
        }
        memcpy(one, p, len);
        one[len] = '\0';
        int rv = gossip_addr_parse(&out[*n], one, errmsg);
        if (rv != 0) {
            return rv;
        }
        (*n)++;
        p = end != NULL ? end + 1 : NULL;
    }
    return 0;
}

char *gossip_addr_format(const struct gossip_addr *a,
                         char buf[GOSSIP_ADDR_STRLEN])
{
    snprintf(buf, GOSSIP_ADDR_STRLEN, "%u.%u.%u.%u:%u", a->ip >> 24,
             (a->ip >> 16) & 0xff, (a->ip >> 8) & 0xff, a->ip & 0xff,
             (unsigned)a->port);
    return buf;
}

bool gossip_addr_eq(const struct gossip_addr *a, const struct gossip_addr *b)
{
    return a->ip == b->ip && a->port == b->port;
}

/* --- Small helpers
 * ------------------------------------------------------------ */

uint64_t core_now(struct gossip *g)
{
    return g->io->now(g->io);
}

uint64_t core_random(struct gossip *g, uint64_t bound)
{
    return bound > 0 ? g->io->random(g->io) % bound : 0;
}

void core_timer_start(struct gossip *g, struct gtimer *t, uint64_t at)
{
    if (gtimer_start(&g->timers, t, at) != 0) {
        gossip_count_drop(g, GOSSIP_DROP_OVERLOAD);
    }
}

/* Tell the io when to wake us, if that changed. */
static void core_arm(struct gossip *g)
{
    uint64_t next = gtimer_next(&g->timers);
    if (next != g->timer_asked) {
        g->timer_asked = next;
        g->io->set_timer(g->io, next);
    }
}

void gossip_count_drop(struct gossip *g, enum gossip_drop why)
{
    if (g != NULL && (unsigned)why < GOSSIP_DROP_COUNT) {
        g->stats.dropped[why]++;
    }
}

void core_view(struct gossip *g, const struct member *m, bool self,
               struct gossip_member *out)
{
    uint64_t now = core_now(g);
    out->name = m->name;
    out->addr = m->addr;
    out->state = (enum gossip_state)m->state;
    out->state_ms = now > m->state_change ? now - m->state_change : 0;
    out->incarnation = m->inc;
    out->meta.role = (enum gossip_role)m->role;
    out->meta.weight = m->weight;
    out->meta.fleet = member_fleet(m);
    out->meta.app = member_app(m);
    out->meta.app_len = m->app_len;
    out->self = self;
    out->returned = false;
}

uint32_t core_retransmit_limit(struct gossip *g)
{
    double n = (double)swim_live_count(g);
    return g->cfg.retransmit_mult * (uint32_t)ceil(log10(n + 1.0));
}

static size_t others_live(struct gossip *g)
{
    size_t n = swim_live_count(g);
    bool self_live =
        g->self->state == GOSSIP_ALIVE || g->self->state == GOSSIP_SUSPECT;
    return self_live && n > 0 ? n - 1 : n;
}

/* --- Sending ------------------------------------------------------------ */

void core_packet_begin(struct gossip *g, struct gbuf_w *w)
{
    gbuf_w_fixed(w, g->out_plain, g->cfg.packet_size - GCRYPT_OVERHEAD);
}

static void leave_done(struct gossip *g, int status);
static void on_leave_timer(struct gtimer *t, void *arg);

void core_packet_send(struct gossip *g, const struct gossip_addr *to,
                      struct gbuf_w *w, bool piggyback)
{
    core_packet_send_key(g, to, w, piggyback, g->keyring.keys[0]);
}

void core_packet_send_key(struct gossip *g, const struct gossip_addr *to,
                          struct gbuf_w *w, bool piggyback,
                          const uint8_t key[GOSSIP_KEY_SIZE])
{
    if (w->failed) {
        g->stats.send_errors++;
        return;
    }
    if (piggyback) {
        unsigned retired = 0;
        gbq_fill(&g->queue, core_retransmit_limit(g), w, &retired);
        if (retired > 0 && g->leave_req != NULL) {
            leave_done(g, 0);
        }
    }
    if (w->len == 0) {
        return;
    }
    size_t sealed = w->len + GCRYPT_OVERHEAD;
    gcrypt_seal(key, GCRYPT_PACKET, w->p, w->len, g->out_sealed);
    if (g->io->send_packet(g->io, to, g->out_sealed, sealed) != 0) {
        g->stats.send_errors++;
        return;
    }
    g->stats.packets_sent++;
    g->stats.bytes_sent += sealed;
}

int core_stream_send(struct gossip *g, const struct gossip_addr *to,
                     const uint8_t *plain, size_t len)
{
    if (len + GCRYPT_OVERHEAD > GOSSIP_STREAM_MAX) {
        g->stats.send_errors++;
        return ALLOT_ETOO_BIG;
    }
    uint8_t *sealed = malloc(len + GCRYPT_OVERHEAD);
    if (sealed == NULL) {
        g->stats.send_errors++;
        return ALLOT_ENOMEM;
    }
    gcrypt_seal(g->keyring.keys[0], GCRYPT_STREAM, plain, len, sealed);
    int rv = g->io->send_stream(g->io, to, sealed, len + GCRYPT_OVERHEAD);
    free(sealed);
    if (rv != 0) {
        g->stats.send_errors++;
        return rv;
    }
    g->stats.streams_sent++;
    g->stats.bytes_sent += len + GCRYPT_OVERHEAD;
    return 0;
}

void core_queue(struct gossip *g, const char *key, size_t key_len,
                const struct gbuf_w *msg, unsigned flags)
{
    if (msg->failed ||
        gbq_push(&g->queue, key, key_len, msg->p, msg->len, flags) != 0) {
        gossip_count_drop(g, GOSSIP_DROP_OVERLOAD);
    }
}

/* An application broadcast seen for the first time goes out in a gossip
 * round now rather than at the next tick, and again a quarter interval
 * later: each hop then costs a network delay, not up to a gossip interval.
 * One early round to gossip_nodes (3) members leaves about 6% of the
 * members unreached once every holder has forwarded once (x = 1 - e^-3x),
 * and those waited for a regular round, up to a whole interval: with 30
 * members the slowest heard of a broadcast ~300 ms late
 * (bench/gossip_vs_serf). A second round leaves about 0.25% (e^-6).
 * At most one round per quarter interval, so a burst of broadcasts cannot
 * multiply the packet rate by more than four; when the last round was less
 * than a quarter interval ago, the early one waits for the quarter. */
#define EARLY_ROUNDS 2

static void gossip_early_arm(struct gossip *g)
{
    uint64_t at = g->last_gossip + g->cfg.gossip_interval_ms / 4;
    uint64_t now = core_now(g);
    if (at < now) {
        at = now;
    }
    if (g->gossip_timer.at > at) {
        core_timer_start(g, &g->gossip_timer, at);
    }
}

static void gossip_soon(struct gossip *g)
{
    g->early_rounds = EARLY_ROUNDS;
    gossip_early_arm(g);
}

/* --- Dissemination ------------------------------------------------------ */

static bool seen_check_add(struct gossip *g, uint64_t id)
{
    if (ghash_get(&g->seen.set, &id, sizeof id) != NULL) {
        return true;
    }
    size_t slot = g->seen.next;
    if (g->seen.n == SEEN_MAX) {
        ghash_del(&g->seen.set, &g->seen.ids[slot], sizeof(uint64_t));
    } else {
        g->seen.n++;
    }
    g->seen.ids[slot] = id;
    g->seen.next = (slot + 1) % SEEN_MAX;
    if (ghash_put(&g->seen.set, &g->seen.ids[slot]) != 0) {
        gossip_count_drop(g, GOSSIP_DROP_OVERLOAD);
    }
    return false;
}

static void on_user(struct gossip *g, const struct gmsg_user *u)
{
    if (seen_check_add(g, u->id)) {
        return;
    }
    uint8_t buf[GOSSIP_BROADCAST_MAX + 32];
    struct gbuf_w w;
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_user(&w, u->id, u->payload, u->len);
    core_queue(g, NULL, 0, &w, GBQ_USER);
    gossip_soon(g);
    g->stats.broadcasts_recv++;
    if (g->cfg.cb.broadcast != NULL) {
        g->cfg.cb.broadcast(g->cfg.cb.data, NULL, 0, 0, u->payload, u->len);
    }
}

static const void *keyed_key(const void *val, size_t *len)
{
    const struct keyed_val *kv = val;
    *len = kv->key_len;
    return kv->key;
}

/* Store a keyed value newer than what we have. 1 when stored, 0 when stale,
 * or a negative error. */
static int keyed_store(struct gossip *g, const char *key, size_t key_len,
                       uint64_t version, const uint8_t *p, size_t len)
{
    struct keyed_val *old = ghash_get(&g->keyed, key, key_len);
    if (old != NULL && old->version >= version) {
        return 0;
    }
    if (old == NULL && g->keyed.n >= GOSSIP_KEYED_MAX) {
        return ALLOT_EUNAVAILABLE;
    }
    struct keyed_val *kv = malloc(sizeof *kv + len);
    if (kv == NULL) {
        return ALLOT_ENOMEM;
    }
    kv->version = version;
    kv->len = len;
    kv->key_len = (uint8_t)key_len;
    memcpy(kv->key, key, key_len);
    kv->key[key_len] = '\0';
    if (len > 0) {
        memcpy(kv->payload, p, len);
    }
    if (old != NULL) {
        ghash_del(&g->keyed, key, key_len);
    }
    if (ghash_put(&g->keyed, kv) != 0) {
        /* The delete freed room, so this fails only for a new key. */
        free(kv);
        return ALLOT_ENOMEM;
    }
    free(old);
    char qkey[1 + GOSSIP_KEY_NAME_MAX];
    qkey[0] = 'k';
    memcpy(qkey + 1, key, key_len);
    uint8_t buf[GOSSIP_BROADCAST_MAX + GOSSIP_KEY_NAME_MAX + 32];
    struct gbuf_w w;
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_keyed(&w, key, key_len, version, p, len);
    core_queue(g, qkey, 1 + key_len, &w, 0);
    gossip_soon(g);
    return 1;
}

static void on_keyed(struct gossip *g, const struct gmsg_keyed *k)
{
    int rv =
        keyed_store(g, k->key.p, k->key.len, k->version, k->payload, k->len);
    if (rv < 0) {
        gossip_count_drop(g, GOSSIP_DROP_OVERLOAD);
        return;
    }
    if (rv == 0) {
        g->stats.broadcasts_stale++;
        return;
    }
    g->stats.broadcasts_recv++;
    if (g->cfg.cb.broadcast != NULL) {
        g->cfg.cb.broadcast(g->cfg.cb.data, k->key.p, k->key.len, k->version,
                            k->payload, k->len);
    }
}

static void on_direct(struct gossip *g, const struct gmsg_direct *d)
{
    g->stats.messages_recv++;
    if (g->cfg.cb.message != NULL) {
        char from[GOSSIP_NAME_MAX + 1];
        memcpy(from, d->from.p, d->from.len);
        from[d->from.len] = '\0';
        g->cfg.cb.message(g->cfg.cb.data, from, d->payload, d->len);
    }
}

/* --- Push-pull ---------------------------------------------------------- */

static void push_pull_send(struct gossip *g, const struct gossip_addr *to,
                           uint8_t flags)
{
    struct gbuf_w w;
    size_t limit = GOSSIP_STREAM_MAX - GCRYPT_OVERHEAD;
    if (gbuf_w_dyn(&w, 256 + g->n_members * 48, limit) != 0) {
        g->stats.send_errors++;
        return;
    }
    size_t b =
        gmsg_pp_begin(&w, flags, g->self->name, &g->self->addr, g->n_members);
    for (size_t i = 0; i < g->n_members; i++) {
        const struct member *m = g->members[i];
        struct gmsg_alive a;
        swim_alive_of(m, &a);
        gmsg_pp_put_member(&w, (uint8_t)m->state, &a);
    }
    gmsg_pp_keyed_count(&w, g->keyed.n);
    for (size_t i = 0; i < g->keyed.cap; i++) {
        const struct keyed_val *kv = g->keyed.slots[i];
        if (kv != NULL) {
            gmsg_pp_put_keyed(&w, kv->key, kv->key_len, kv->version,
                              kv->payload, kv->len);
        }
    }
    void *app = NULL;
    size_t app_len = 0;
    if (g->cfg.cb.local_state != NULL) {
        g->cfg.cb.local_state(g->cfg.cb.data, (flags & GMSG_PP_JOIN) != 0, &app,
                              &app_len);
    }
    gmsg_pp_end(&w, b, app, app != NULL ? app_len : 0);
    free(app);
    if (w.failed) {
        g->stats.send_errors++;
    } else {
        core_stream_send(g, to, w.p, w.len);
    }
    free(w.p);
}

void core_push_pull(struct gossip *g, const struct gossip_addr *to, bool join)
{
    g->stats.push_pulls++;
    push_pull_send(g, to, join ? GMSG_PP_JOIN : 0);
}

/* The catch-up push-pull (core.h): twice the time one member keeps
 * sending a message (retransmit limit sends, gossip_nodes a round) after
 * the join, when every member that will hear of us by gossip has, and the
 * ALIVEs we may have missed have spread everywhere else. */
static void catchup_arm(struct gossip *g)
{
    uint64_t fan = g->cfg.gossip_nodes > 0 ? g->cfg.gossip_nodes : 1;
    uint64_t rounds = (core_retransmit_limit(g) + fan - 1) / fan;
    core_timer_start(g, &g->catchup_timer,
                     core_now(g) + 2 * rounds * g->cfg.gossip_interval_ms);
}

static void on_catchup_timer(struct gtimer *t, void *arg)
{
    (void)t;
    struct gossip *g = arg;
    struct member *m;
    if (!g->leaving && swim_pick(g, SWIM_PICK_ALIVE, 1, NULL, &m) == 1) {
        g->stats.catchups++;
        core_push_pull(g, &m->addr, false);
    }
}

static void on_push_pull(struct gossip *g, struct gmsg_pushpull *pp)
{
    if (gmsg_str_eq(pp->from, g->self->name)) {
        return; /* our own seed list led us to ourselves */
    }
    bool join = (pp->flags & GMSG_PP_JOIN) != 0;
    bool first_reply = join && (pp->flags & GMSG_PP_REPLY) != 0 && !g->joined;
    if (join && (pp->flags & GMSG_PP_REPLY) != 0) {
        g->joined = true;
    }
    /* Counts were checked against the bytes when the message was decoded. */
    for (uint64_t i = 0; i < pp->n_members; i++) {
        uint8_t state;
        struct gmsg_alive a;
        if (gmsg_pp_next_member(pp, &state, &a) != 1) {
            break;
        }
        switch (state) {
        case GOSSIP_ALIVE:
            swim_on_alive(g, &a);
            break;
        case GOSSIP_SUSPECT:
        case GOSSIP_DEAD:
            /* Someone else's verdict of dead is only a suspicion here: we
             * check for ourselves before we agree. */
            swim_on_suspect(g, a.inc, a.name, pp->from);
            break;
        default:
            swim_on_dead(g, a.inc, a.name, a.name);
            break;
        }
    }
    for (uint64_t i = 0; i < pp->n_keyed; i++) {
        struct gmsg_keyed k;
        if (gmsg_pp_next_keyed(pp, &k) != 1) {
            break;
        }
        on_keyed(g, &k);
    }
    if (g->cfg.cb.merge_state != NULL) {
        g->cfg.cb.merge_state(g->cfg.cb.data, join, pp->app, pp->app_len);
    }
    if (first_reply) {
        catchup_arm(g); /* timed for the fleet the seed told us of */
    }
    /* Merged first, so the reply already carries any refutation. */
    if ((pp->flags & GMSG_PP_REPLY) == 0) {
        push_pull_send(g, &pp->from_addr,
                       (uint8_t)(GMSG_PP_REPLY | (join ? GMSG_PP_JOIN : 0)));
    }
}

/* --- Receiving ---------------------------------------------------------- */

static void on_key_cmd(struct gossip *g, const struct gmsg_key_cmd *m);
static void on_key_reply(struct gossip *g, const struct gmsg_key_reply *m);

static void dispatch(struct gossip *g, const uint8_t *plain, size_t len)
{
    struct gbuf_r r;
    gbuf_r_init(&r, plain, len);
    /* gmsg_validate() accepted the buffer: this loop only acts. Each
     * message takes at least 2 bytes. */
    for (size_t guard = 0; guard <= len / 2; guard++) {
        uint8_t type;
        struct gbuf_r body;
        if (gmsg_next(&r, &type, &body) != 1) {
            return;
        }
        switch (type) {
        case GMSG_PING: {
            struct gmsg_ping m;
            if (gmsg_get_ping(&body, &m) == 0) {
                swim_on_ping(g, &m);
            }
            break;
        }
        case GMSG_PING_REQ: {
            struct gmsg_ping_req m;
            if (gmsg_get_ping_req(&body, &m) == 0) {
                swim_on_ping_req(g, &m);
            }
            break;
        }
        case GMSG_ACK:
        case GMSG_NACK: {
            struct gmsg_ack m;
            if (gmsg_get_ack(&body, &m) == 0) {
                if (type == GMSG_ACK) {
                    swim_on_ack(g, m.seq);
                } else {
                    swim_on_nack(g, m.seq);
                }
            }
            break;
        }
        case GMSG_ALIVE: {
            struct gmsg_alive m;
            if (gmsg_get_alive(&body, &m) == 0) {
                swim_on_alive(g, &m);
            }
            break;
        }
        case GMSG_SUSPECT:
        case GMSG_DEAD: {
            struct gmsg_suspect m;
            if (gmsg_get_suspect(&body, &m) == 0) {
                if (type == GMSG_SUSPECT) {
                    swim_on_suspect(g, m.inc, m.name, m.from);
                } else {
                    swim_on_dead(g, m.inc, m.name, m.from);
                }
            }
            break;
        }
        case GMSG_USER: {
            struct gmsg_user m;
            if (gmsg_get_user(&body, &m) == 0) {
                on_user(g, &m);
            }
            break;
        }
        case GMSG_KEYED: {
            struct gmsg_keyed m;
            if (gmsg_get_keyed(&body, &m) == 0) {
                on_keyed(g, &m);
            }
            break;
        }
        case GMSG_DIRECT: {
            struct gmsg_direct m;
            if (gmsg_get_direct(&body, &m) == 0) {
                on_direct(g, &m);
            }
            break;
        }
        case GMSG_PUSHPULL: {
            struct gmsg_pushpull m;
            if (gmsg_get_pushpull(&body, &m) == 0) {
                on_push_pull(g, &m);
            }
            break;
        }
        case GMSG_KEY_CMD: {
            struct gmsg_key_cmd m;
            if (gmsg_get_key_cmd(&body, &m) == 0) {
                on_key_cmd(g, &m);
            }
            break;
        }
        case GMSG_KEY_REPLY: {
            struct gmsg_key_reply m;
            if (gmsg_get_key_reply(&body, &m) == 0) {
                on_key_reply(g, &m);
            }
            break;
        }
        default:
            break;
        }
    }
}

/* Open and check; 0 with the plaintext, or counted and refused. */
static int open_checked(struct gossip *g, enum gcrypt_channel ch,
                        const uint8_t *buf, size_t len, uint8_t *plain,
                        size_t *plain_len)
{
    int rv = gcrypt_open(&g->keyring, ch, buf, len, plain, plain_len);
    if (rv == ALLOT_EUNAUTHENTICATED) {
        gossip_count_drop(g, GOSSIP_DROP_AUTH);
        return rv;
    }
    if (rv != 0 || gmsg_validate(plain, *plain_len, ch == GCRYPT_STREAM) != 0) {
        gossip_count_drop(g, GOSSIP_DROP_MALFORMED);
        return ALLOT_EPROTOCOL;
    }
    return 0;
}

void gossip_recv_packet(struct gossip *g, const struct gossip_addr *from,
                        const void *buf, size_t len)
{
    (void)from;
    if (g == NULL) {
        return;
    }
    g->stats.packets_recv++;
    g->stats.bytes_recv += len;
    if (len > GOSSIP_PACKET_MAX) {
        gossip_count_drop(g, GOSSIP_DROP_OVERSIZE);
        return;
    }
    size_t plain_len;
    if (open_checked(g, GCRYPT_PACKET, buf, len, g->in_plain, &plain_len) ==
        0) {
        dispatch(g, g->in_plain, plain_len);
    }
    core_arm(g);
}

void gossip_recv_stream(struct gossip *g, const struct gossip_addr *from,
                        const void *buf, size_t len)
{
    (void)from;
    if (g == NULL) {
        return;
    }
    g->stats.streams_recv++;
    g->stats.bytes_recv += len;
    if (len > GOSSIP_STREAM_MAX) {
        gossip_count_drop(g, GOSSIP_DROP_OVERSIZE);
        return;
    }
    if (len < GCRYPT_OVERHEAD) {
        gossip_count_drop(g, GOSSIP_DROP_MALFORMED);
        return;
    }
    uint8_t *plain = malloc(len - GCRYPT_OVERHEAD + 1);
    if (plain == NULL) {
        gossip_count_drop(g, GOSSIP_DROP_OVERLOAD);
        return;
    }
    size_t plain_len;
    if (open_checked(g, GCRYPT_STREAM, buf, len, plain, &plain_len) == 0) {
        dispatch(g, plain, plain_len);
    }
    free(plain);
    core_arm(g);
}

/* --- Periodic work ------------------------------------------------------ */

void gossip_tick(struct gossip *g)
{
    if (g == NULL) {
        return;
    }
    /* The io's timer fired, so it is no longer armed. */
    g->timer_asked = UINT64_MAX;
    uint64_t now = core_now(g);
    /* Every callback re-arms its timer in the future, so this ends; the
     * bound only guards against a bug turning it into a spin. */
    for (unsigned i = 0; i < 100000; i++) {
        struct gtimer *t = gtimer_pop_due(&g->timers, now);
        if (t == NULL) {
            break;
        }
        t->fn(t, g);
    }
    core_arm(g);
    if (g->leave_fire) {
        struct gossip_leave *req = g->leave_req;
        g->leave_fire = false;
        g->leave_req = NULL;
        req->cb(req, g->leave_status); /* g may be gone now */
    }
}

static void on_gossip_timer(struct gtimer *t, void *arg)
{
    struct gossip *g = arg;
    g->last_gossip = core_now(g);
    core_timer_start(g, t, g->last_gossip + g->cfg.gossip_interval_ms);
    if (g->early_rounds > 0 && --g->early_rounds > 0) {
        gossip_early_arm(g);
    }
    if (g->leave_req != NULL && others_live(g) == 0) {
        leave_done(g, 0); /* nobody left to tell */
        return;
    }
    if (g->queue.n == 0) {
        return;
    }
    struct member *to[16];
    size_t k = g->cfg.gossip_nodes < 16 ? g->cfg.gossip_nodes : 16;
    size_t n = swim_pick(g, SWIM_PICK_GOSSIP, k, NULL, to);
    for (size_t i = 0; i < n && g->queue.n > 0; i++) {
        struct gbuf_w w;
        core_packet_begin(g, &w);
        core_packet_send(g, &to[i]->addr, &w, true);
    }
}

static uint64_t push_pull_interval(struct gossip *g)
{
    uint64_t base = g->cfg.push_pull_interval_ms;
    size_t n = swim_live_count(g);
    if (n <= PUSH_PULL_SCALE_THRESHOLD) {
        return base;
    }
    double mult =
        ceil(log2((double)n) - log2((double)PUSH_PULL_SCALE_THRESHOLD)) + 1.0;
    return base * (uint64_t)mult;
}

static void on_push_pull_timer(struct gtimer *t, void *arg)
{
    struct gossip *g = arg;
    core_timer_start(g, t, core_now(g) + push_pull_interval(g));
    struct member *m;
    if (!g->leaving && swim_pick(g, SWIM_PICK_ALIVE, 1, NULL, &m) == 1) {
        core_push_pull(g, &m->addr, false);
    }
}

static void on_reconnect_timer(struct gtimer *t, void *arg)
{
    struct gossip *g = arg;
    core_timer_start(g, t, core_now(g) + g->cfg.reconnect_interval_ms);
    struct member *m;
    /* A dead member that is in fact alive behind a healed partition learns
     * from our state that it was declared dead, refutes, and the refutation
     * spreads through both sides. */
    if (!g->leaving && swim_pick(g, SWIM_PICK_DEAD, 1, NULL, &m) == 1) {
        core_push_pull(g, &m->addr, false);
    }
}

static void on_join_timer(struct gtimer *t, void *arg)
{
    struct gossip *g = arg;
    core_timer_start(g, t, core_now(g) + g->cfg.join_retry_ms);
    if (g->leaving || (g->joined && others_live(g) > 0)) {
        return;
    }
    for (size_t i = 0; i < g->n_seeds; i++) {
        if (!gossip_addr_eq(&g->seeds[i], &g->self->addr)) {
            core_push_pull(g, &g->seeds[i], true);
        }
    }
}

/* --- Lifecycle ---------------------------------------------------------- */

void gossip_config_init(struct gossip_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->meta.fleet = "";
    /* 400 ms probes (Serf's LAN profile: 1 s) detect a crash in under half
     * Serf's time; the last-chance probe before a verdict (swim.c) keeps
     * them free of false deaths under 5% loss (docs/gossip.md,
     * "Timeouts"). */
    cfg->probe_interval_ms = 400;
    cfg->probe_timeout_ms = 200;
    cfg->indirect_checks = 3;
    cfg->suspicion_mult = 4;
    cfg->suspicion_max_mult = 6;
    cfg->retransmit_mult = 4;
    cfg->gossip_interval_ms = 200;
    cfg->gossip_nodes = 3;
    cfg->gossip_to_dead_ms = 30000;
    cfg->push_pull_interval_ms = 30000;
    cfg->reconnect_interval_ms = 30000;
    cfg->join_retry_ms = 2000;
    cfg->awareness_max = 8;
    cfg->dead_forget_ms = 3600000;
    cfg->leave_timeout_ms = 3000;
    cfg->packet_size = 1400;
}

static int check_meta(const struct gossip_meta *m, char *errmsg)
{
    size_t fleet = m->fleet != NULL ? strlen(m->fleet) : 0;
    if (fleet > GOSSIP_FLEET_MAX ||
        !gbuf_printable((const uint8_t *)m->fleet, fleet)) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "gossip: fleet must be at most %d printable "
                          "characters",
                          GOSSIP_FLEET_MAX);
    }
    if (m->app_len > GOSSIP_APP_MAX || (m->app_len > 0 && m->app == NULL)) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "gossip: application metadata is %zu bytes, at "
                          "most %d",
                          m->app_len, GOSSIP_APP_MAX);
    }
    if (m->role != GOSSIP_ROLE_AGENT && m->role != GOSSIP_ROLE_SERVER) {
        return allot_errf(errmsg, ALLOT_EINVALID, "gossip: unknown role");
    }
    return 0;
}

static int check_config(const struct gossip_config *c, char *errmsg)
{
    size_t name = c->name != NULL ? strlen(c->name) : 0;
    if (name == 0 || name > GOSSIP_NAME_MAX ||
        !gbuf_printable((const uint8_t *)c->name, name)) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "gossip: name must be 1-%d printable characters",
                          GOSSIP_NAME_MAX);
    }
    if (c->keyring.n == 0 || c->keyring.n > GOSSIP_KEYRING_MAX) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "gossip: the keyring needs 1-%d keys",
                          GOSSIP_KEYRING_MAX);
    }
    if (c->packet_size < 512 || c->packet_size > GOSSIP_PACKET_MAX) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "gossip: packet_size %u outside 512-%d",
                          c->packet_size, GOSSIP_PACKET_MAX);
    }
    if (c->probe_interval_ms == 0 || c->probe_timeout_ms == 0 ||
        c->probe_timeout_ms >= c->probe_interval_ms) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "gossip: need 0 < probe_timeout_ms < "
                          "probe_interval_ms");
    }
    if (c->gossip_interval_ms == 0 || c->join_retry_ms == 0 ||
        c->leave_timeout_ms == 0) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "gossip: gossip_interval_ms, join_retry_ms and "
                          "leave_timeout_ms must be positive");
    }
    if (c->indirect_checks > 16 || c->gossip_nodes == 0 ||
        c->gossip_nodes > 16) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "gossip: indirect_checks 0-16, gossip_nodes 1-16");
    }
    if (c->suspicion_mult == 0 || c->suspicion_mult > SUSP_CONFIRM_MAX + 2 ||
        c->suspicion_max_mult == 0 || c->retransmit_mult == 0 ||
        c->retransmit_mult > 16) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "gossip: suspicion_mult 1-%d, suspicion_max_mult "
                          ">= 1, retransmit_mult 1-16",
                          SUSP_CONFIRM_MAX + 2);
    }
    if (c->awareness_max == 0 || c->awareness_max > 64) {
        return allot_errf(errmsg, ALLOT_EINVALID, "gossip: awareness_max 1-64");
    }
    return check_meta(&c->meta, errmsg);
}

int gossip_new(struct gossip **out, struct gossip_io *io,
               const struct gossip_config *cfg, char *errmsg)
{
    if (sodium_init() < 0) {
        return allot_errf(errmsg, ALLOT_EINTERNAL,
                          "gossip: libsodium failed to initialize");
    }
    int rv = check_config(cfg, errmsg);
    if (rv != 0) {
        return rv;
    }
    struct gossip *g = calloc(1, sizeof *g);
    if (g == NULL) {
        return allot_errf(errmsg, ALLOT_ENOMEM, "gossip: out of memory");
    }
    g->io = io;
    g->cfg = *cfg;
    g->keyring = cfg->keyring;
    sodium_memzero(&g->cfg.keyring, sizeof g->cfg.keyring);
    gbq_init(&g->queue, swim_encode_news, g);
    gtimer_heap_init(&g->timers);
    ghash_init(&g->seen.set, ghash_key_u64);
    ghash_init(&g->keyed, keyed_key);
    ghash_init(&g->cmd_seen.set, ghash_key_u64);
    g->timer_asked = UINT64_MAX;
    rv = swim_init(g);
    if (rv != 0) {
        gossip_free(g);
        return allot_errf(errmsg, rv, "gossip: out of memory");
    }
    /* Only the member's own copies are kept (g->self->name is the name;
     * the record moves when its metadata changes size). */
    g->cfg.name = NULL;
    g->cfg.meta.fleet = NULL;
    g->cfg.meta.app = NULL;
    gtimer_init(&g->gossip_timer, on_gossip_timer);
    gtimer_init(&g->pushpull_timer, on_push_pull_timer);
    gtimer_init(&g->reconnect_timer, on_reconnect_timer);
    gtimer_init(&g->join_timer, on_join_timer);
    gtimer_init(&g->catchup_timer, on_catchup_timer);
    gtimer_init(&g->leave_timer, on_leave_timer);
    uint64_t now = core_now(g);
    swim_start(g);
    core_timer_start(g, &g->gossip_timer,
                     now + 1 + core_random(g, g->cfg.gossip_interval_ms));
    if (g->cfg.push_pull_interval_ms > 0) {
        core_timer_start(g, &g->pushpull_timer,
                         now + 1 +
                             core_random(g, g->cfg.push_pull_interval_ms));
    }
    if (g->cfg.reconnect_interval_ms > 0) {
        core_timer_start(g, &g->reconnect_timer,
                         now + 1 +
                             core_random(g, g->cfg.reconnect_interval_ms));
    }
    io->owner = g;
    core_arm(g);
    *out = g;
    return 0;
}

int gossip_join(struct gossip *g, const struct gossip_addr *seeds, size_t n)
{
    if (n == 0 || n > 1024) {
        return ALLOT_EINVALID;
    }
    struct gossip_addr *copy = malloc(n * sizeof *copy);
    if (copy == NULL) {
        return ALLOT_ENOMEM;
    }
    memcpy(copy, seeds, n * sizeof *copy);
    free(g->seeds);
    g->seeds = copy;
    g->n_seeds = n;
    g->joined = false;
    for (size_t i = 0; i < n; i++) {
        if (!gossip_addr_eq(&seeds[i], &g->self->addr)) {
            core_push_pull(g, &seeds[i], true);
        }
    }
    core_timer_start(g, &g->join_timer, core_now(g) + g->cfg.join_retry_ms);
    core_arm(g);
    return 0;
}

static void keycmd_finish(struct gossip *g, unsigned slot, int status);

static void leave_done(struct gossip *g, int status)
{
    /* Completed from the timer, never from deep inside a send. */
    g->leave_status = status;
    core_timer_start(g, &g->leave_timer, core_now(g));
}

static void on_leave_timer(struct gtimer *t, void *arg)
{
    (void)t;
    struct gossip *g = arg;
    /* The callback runs last in gossip_tick(), so it may free g. */
    g->leave_fire = g->leave_req != NULL;
}

int gossip_leave(struct gossip *g, struct gossip_leave *req, gossip_leave_cb cb)
{
    if (g->leaving || cb == NULL) {
        return ALLOT_EINVALID;
    }
    g->leaving = true;
    req->cb = cb;
    g->leave_req = req;
    gtimer_stop(&g->timers, &g->pushpull_timer);
    gtimer_stop(&g->timers, &g->reconnect_timer);
    gtimer_stop(&g->timers, &g->join_timer);
    gtimer_stop(&g->timers, &g->catchup_timer);
    swim_leave(g);
    if (others_live(g) == 0) {
        leave_done(g, 0);
    } else {
        g->leave_status = ALLOT_ETIMEOUT;
        core_timer_start(g, &g->leave_timer,
                         core_now(g) + g->cfg.leave_timeout_ms);
    }
    core_arm(g);
    return 0;
}

void gossip_free(struct gossip *g)
{
    if (g == NULL) {
        return;
    }
    g->freeing = true;
    if (g->leave_req != NULL) {
        struct gossip_leave *req = g->leave_req;
        g->leave_req = NULL;
        req->cb(req, ALLOT_ESHUTDOWN);
    }
    for (unsigned i = 0; i < GOSSIP_KEYCMD_MAX; i++) {
        if (g->keycmds[i] != NULL) {
            keycmd_finish(g, i, ALLOT_ESHUTDOWN);
        }
    }
    if (g->io->owner == g) {
        g->io->owner = NULL;
        if (g->timer_asked != UINT64_MAX) {
            g->io->set_timer(g->io, UINT64_MAX);
        }
    }
    /* Timers first: they point into members; the queue next: it holds
     * items embedded in members. */
    gtimer_heap_free(&g->timers);
    gbq_free(&g->queue);
    swim_free(g);
    for (size_t i = 0; i < g->keyed.cap; i++) {
        free(g->keyed.slots[i]);
    }
    ghash_free(&g->keyed);
    ghash_free(&g->seen.set);
    ghash_free(&g->cmd_seen.set);
    free(g->seeds);
    sodium_memzero(&g->keyring, sizeof g->keyring);
    free(g);
}

/* --- Using it ----------------------------------------------------------- */

int gossip_broadcast(struct gossip *g, const void *buf, size_t len)
{
    if (len > GOSSIP_BROADCAST_MAX) {
        return ALLOT_ETOO_BIG;
    }
    uint64_t id = g->io->random(g->io);
    uint8_t tmp[GOSSIP_BROADCAST_MAX + 32];
    struct gbuf_w w;
    gbuf_w_fixed(&w, tmp, sizeof tmp);
    gmsg_put_user(&w, id, buf, len);
    int rv = gbq_push(&g->queue, NULL, 0, w.p, w.len, GBQ_USER);
    if (rv == 0) {
        seen_check_add(g, id);
        gossip_soon(g);
    }
    core_arm(g);
    return rv;
}

static bool key_ok(const char *key, size_t len)
{
    return len > 0 && len <= GOSSIP_KEY_NAME_MAX &&
           gbuf_printable((const uint8_t *)key, len);
}

int gossip_broadcast_keyed(struct gossip *g, const char *key, uint64_t version,
                           const void *buf, size_t len)
{
    size_t klen = key != NULL ? strlen(key) : 0;
    if (!key_ok(key, klen)) {
        return ALLOT_EINVALID;
    }
    if (len > GOSSIP_BROADCAST_MAX) {
        return ALLOT_ETOO_BIG;
    }
    int rv = keyed_store(g, key, klen, version, buf, len);
    core_arm(g);
    return rv < 0 ? rv : rv == 0 ? ALLOT_ECONFLICT : 0;
}

int gossip_keyed_get(struct gossip *g, const char *key, uint64_t *version,
                     void *buf, size_t cap, size_t *len)
{
    size_t klen = key != NULL ? strlen(key) : 0;
    const struct keyed_val *kv =
        key_ok(key, klen) ? ghash_get(&g->keyed, key, klen) : NULL;
    if (kv == NULL) {
        return ALLOT_ENOT_FOUND;
    }
    *version = kv->version;
    if (buf != NULL) {
        if (kv->len > 0) {
            memcpy(buf, kv->payload, kv->len < cap ? kv->len : cap);
        }
        *len = kv->len;
    }
    return 0;
}

int gossip_send(struct gossip *g, const char *name, const void *buf, size_t len)
{
    if (len > GOSSIP_MESSAGE_MAX) {
        return ALLOT_ETOO_BIG;
    }
    struct member *m = swim_find(g, name, strlen(name));
    if (m == NULL || m == g->self ||
        (m->state != GOSSIP_ALIVE && m->state != GOSSIP_SUSPECT)) {
        return ALLOT_ENOT_FOUND;
    }
    struct gbuf_w w;
    core_packet_begin(g, &w);
    gmsg_put_direct(&w, g->self->name, buf, len);
    int rv = 0;
    if (!w.failed) {
        core_packet_send(g, &m->addr, &w, true);
    } else {
        /* Too big for a datagram: a stream of its own. */
        rv = gbuf_w_dyn(&w, len + 128, GOSSIP_STREAM_MAX);
        if (rv == 0) {
            gmsg_put_direct(&w, g->self->name, buf, len);
            rv = w.failed ? ALLOT_ETOO_BIG
                          : core_stream_send(g, &m->addr, w.p, w.len);
        }
        free(w.p);
    }
    core_arm(g);
    return rv;
}

int gossip_set_meta(struct gossip *g, const struct gossip_meta *meta)
{
    /* After gossip_leave() a new incarnation would announce the member
     * alive again, and would replace its queued leave (one queued message
     * per member): the leave would time out and read as a death. */
    if (g->leaving) {
        return ALLOT_ESHUTDOWN;
    }
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = check_meta(meta, msg);
    if (rv != 0) {
        return rv;
    }
    struct gmsg_alive a;
    swim_alive_of(g->self, &a);
    a.role = (uint8_t)meta->role;
    a.weight = meta->weight;
    a.fleet.p = meta->fleet != NULL ? meta->fleet : "";
    a.fleet.len = strlen(a.fleet.p);
    a.app = meta->app;
    a.app_len = meta->app_len;
    rv = swim_update_self(g, &a);
    core_arm(g);
    return rv;
}

int gossip_member_find(struct gossip *g, const char *name,
                       struct gossip_member *out)
{
    struct member *m = swim_find(g, name, strlen(name));
    if (m == NULL) {
        return ALLOT_ENOT_FOUND;
    }
    core_view(g, m, m == g->self, out);
    return 0;
}

void gossip_member_foreach(struct gossip *g,
                           void (*fn)(void *data, const struct gossip_member *),
                           void *data)
{
    for (size_t i = 0; i < g->n_members; i++) {
        struct gossip_member v;
        core_view(g, g->members[i], g->members[i] == g->self, &v);
        fn(data, &v);
    }
}

size_t gossip_member_count(struct gossip *g, enum gossip_state s)
{
    return (unsigned)s <= GOSSIP_LEFT ? g->n_state[s] : 0;
}

void gossip_self(struct gossip *g, struct gossip_member *out)
{
    core_view(g, g->self, true, out);
}

/* --- Keys --------------------------------------------------------------- */

/* Apply op to kr. 0 when done (*changed says whether anything moved), or
 * the refusal: ALLOT_EEXISTS (install, already there), ALLOT_EUNAVAILABLE
 * (install, ring full), ALLOT_ENOT_FOUND (use or remove, absent),
 * ALLOT_EINVALID (remove the primary). The fleet command turns EEXISTS and
 * a removal's ENOT_FOUND into success: it must be safe to run again. */
static int keyring_apply(struct gossip_keyring *kr, enum gossip_key_op op,
                         const uint8_t *key, bool *changed)
{
    *changed = false;
    if (op == GOSSIP_KEY_LIST) {
        return 0;
    }
    int i = gcrypt_find(kr, key);
    switch (op) {
    case GOSSIP_KEY_INSTALL:
        if (i >= 0) {
            return ALLOT_EEXISTS;
        }
        if (kr->n >= GOSSIP_KEYRING_MAX) {
            return ALLOT_EUNAVAILABLE;
        }
        memcpy(kr->keys[kr->n++], key, GOSSIP_KEY_SIZE);
        break;
    case GOSSIP_KEY_USE: {
        if (i < 0) {
            return ALLOT_ENOT_FOUND;
        }
        if (i == 0) {
            return 0;
        }
        uint8_t tmp[GOSSIP_KEY_SIZE];
        memcpy(tmp, kr->keys[0], sizeof tmp);
        memcpy(kr->keys[0], kr->keys[i], sizeof tmp);
        memcpy(kr->keys[i], tmp, sizeof tmp);
        sodium_memzero(tmp, sizeof tmp);
        break;
    }
    case GOSSIP_KEY_REMOVE: {
        if (i < 0) {
            return ALLOT_ENOT_FOUND;
        }
        if (i == 0) {
            return ALLOT_EINVALID;
        }
        unsigned last = kr->n - 1;
        memmove(kr->keys[i], kr->keys[i + 1],
                (last - (unsigned)i) * GOSSIP_KEY_SIZE);
        sodium_memzero(kr->keys[last], GOSSIP_KEY_SIZE);
        kr->n = last;
        break;
    }
    default:
        return ALLOT_EINVALID;
    }
    *changed = true;
    return 0;
}

static void keyring_notify(struct gossip *g)
{
    if (g->cfg.cb.keyring_changed != NULL) {
        g->cfg.cb.keyring_changed(g->cfg.cb.data);
    }
}

static int key_local(struct gossip *g, enum gossip_key_op op,
                     const uint8_t key[GOSSIP_KEY_SIZE])
{
    bool changed;
    int rv = keyring_apply(&g->keyring, op, key, &changed);
    if (changed) {
        keyring_notify(g);
    }
    return rv;
}

int gossip_key_install(struct gossip *g, const uint8_t key[GOSSIP_KEY_SIZE])
{
    return key_local(g, GOSSIP_KEY_INSTALL, key);
}

int gossip_key_use(struct gossip *g, const uint8_t key[GOSSIP_KEY_SIZE])
{
    return key_local(g, GOSSIP_KEY_USE, key);
}

int gossip_key_remove(struct gossip *g, const uint8_t key[GOSSIP_KEY_SIZE])
{
    return key_local(g, GOSSIP_KEY_REMOVE, key);
}

/* --- Keys across the fleet ------------------------------------------------
 * Happy path (gossip_key_cmd): the originator applies the op to a copy of
 * its keyring, queues a KEY_CMD (spread like any broadcast), commits the
 * copy, and waits. Each member that opens the command applies it, forwards
 * it (once: the id is remembered) and sends a KEY_REPLY straight to the
 * originator's address, sealed with the key the command names (the
 * originator's primary): a member whose primary is another key, or that
 * got the command from a member still sending with an old key, can still
 * be heard. When every member asked has answered, the callback runs.
 *
 * Failure modes:
 *   - the originator refuses the op itself: the call fails, nothing is
 *     queued, the keyring is untouched;
 *   - a member refuses (its primary, a full ring, an absent key): it
 *     answers with the code and a text; the first one is reported;
 *   - the command or the answer is lost: members still silent at 1/4, 2/4
 *     and 3/4 of the timeout get the command again directly (flag RETRY),
 *     and a member that already applied it answers again with the result it
 *     remembered; still silent at the timeout: ALLOT_ETIMEOUT;
 *   - a member holds none of the keys the command travels under, is down or
 *     partitioned away: silent, never told later (re-run the command);
 *   - more than GBQ_CMD_MAX commands waiting to be spread, or replies and
 *     commands for unknown ids: refused or ignored, bounded either way. */

_Static_assert(GMSG_KEY_ID_LEN == GCRYPT_KEY_ID, "one key id size");

const char *gossip_key_op_name(enum gossip_key_op op)
{
    switch (op) {
    case GOSSIP_KEY_LIST:
        return "list";
    case GOSSIP_KEY_INSTALL:
        return "install";
    case GOSSIP_KEY_USE:
        return "use";
    case GOSSIP_KEY_REMOVE:
        return "remove";
    }
    return "unknown";
}

/* The fleet command's result for op: success when there is nothing to do. */
static int keycmd_apply(struct gossip_keyring *kr, enum gossip_key_op op,
                        const uint8_t *key, bool *changed)
{
    int rv = keyring_apply(kr, op, key, changed);
    if ((op == GOSSIP_KEY_INSTALL && rv == ALLOT_EEXISTS) ||
        (op == GOSSIP_KEY_REMOVE && rv == ALLOT_ENOT_FOUND)) {
        rv = 0;
    }
    return rv;
}

/* What a member says when it refuses. */
static const char *keycmd_refusal(enum gossip_key_op op, int status)
{
    switch (status) {
    case 0:
        return "";
    case ALLOT_EUNAVAILABLE:
        return "keyring full: remove a key first";
    case ALLOT_ENOT_FOUND:
        return "key not installed here: install it first";
    case ALLOT_EINVALID:
        return op == GOSSIP_KEY_REMOVE
                   ? "key is this member's primary key: use another first"
                   : "invalid key command";
    default:
        return allot_strerror(status);
    }
}

static struct keycmd_seen *cmd_seen_find(struct gossip *g, uint64_t id)
{
    return ghash_get(&g->cmd_seen.set, &id, sizeof id);
}

static void cmd_seen_add(struct gossip *g, uint64_t id, int status)
{
    size_t slot = g->cmd_seen.next;
    if (g->cmd_seen.n == KEYCMD_SEEN_MAX) {
        ghash_del(&g->cmd_seen.set, &g->cmd_seen.ent[slot].id,
                  sizeof(uint64_t));
    } else {
        g->cmd_seen.n++;
    }
    g->cmd_seen.ent[slot] = (struct keycmd_seen){id, status};
    g->cmd_seen.next = (slot + 1) % KEYCMD_SEEN_MAX;
    if (ghash_put(&g->cmd_seen.set, &g->cmd_seen.ent[slot]) != 0) {
        /* Forgotten at once: a copy arriving later is applied again, which
         * the ops' idempotence makes harmless. */
        gossip_count_drop(g, GOSSIP_DROP_OVERLOAD);
    }
}

static void keycmd_encode(struct gbuf_w *w, struct gossip *g,
                          const struct keycmd *kc, uint8_t flags)
{
    gmsg_put_key_cmd(w, kc->id, flags, g->self->name, &g->self->addr, kc->op,
                     kc->reply_key_id, kc->has_key ? kc->key : NULL);
}

/* Queue key "c" + id: one entry per command, droppable by id. */
static void keycmd_qkey(uint64_t id, char qkey[1 + sizeof(uint64_t)])
{
    qkey[0] = 'c';
    memcpy(qkey + 1, &id, sizeof id);
}

/* LIST: count one member's keys (primary first) into the results. */
static void keycmd_count_keys(struct gossip_key_cmd *req, const uint8_t *keys,
                              unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        const uint8_t *k = keys + (size_t)i * GOSSIP_KEY_SIZE;
        bool dup = false;
        /* A member that lists a key twice still holds it once. */
        for (unsigned j = 0; j < i && !dup; j++) {
            dup = sodium_memcmp(k, keys + (size_t)j * GOSSIP_KEY_SIZE,
                                GOSSIP_KEY_SIZE) == 0;
        }
        if (dup) {
            continue;
        }
        unsigned at = 0;
        while (at < req->n_keys &&
               sodium_memcmp(req->keys[at].key, k, GOSSIP_KEY_SIZE) != 0) {
            at++;
        }
        if (at == req->n_keys) {
            if (req->n_keys == GOSSIP_KEY_LIST_MAX) {
                req->keys_truncated = true;
                continue;
            }
            memcpy(req->keys[at].key, k, GOSSIP_KEY_SIZE);
            req->n_keys++;
        }
        req->keys[at].members++;
        req->keys[at].primary += i == 0;
    }
}

static void keycmd_free(struct gossip *g, struct keycmd *kc)
{
    gtimer_stop(&g->timers, &kc->timer);
    ghash_free(&kc->by_name);
    free(kc->peers);
    sodium_memzero(kc->key, sizeof kc->key);
    free(kc);
}

/* Fill the last results, release the slot, call back. */
static void keycmd_finish(struct gossip *g, unsigned slot, int status)
{
    struct keycmd *kc = g->keycmds[slot];
    struct gossip_key_cmd *req = kc->req;
    for (size_t i = 0; i < kc->n_peers; i++) {
        if (!kc->peers[i].answered) {
            snprintf(req->silent_member, sizeof req->silent_member, "%s",
                     kc->peers[i].name);
            break;
        }
    }
    if (status == 0) {
        status = kc->first_error != 0           ? kc->first_error
                 : kc->n_answered < kc->n_peers ? ALLOT_ETIMEOUT
                                                : 0;
    }
    LOGI(COMP, "key command done",
         "name=%s op=%s asked=%u acks=%u errors=%u status=%s", g->self->name,
         gossip_key_op_name(req->op), req->asked, req->acks, req->errors,
         allot_error_name(status));
    /* Released first: the callback may start the next command. */
    g->keycmds[slot] = NULL;
    keycmd_free(g, kc);
    req->priv = NULL;
    req->cb(req, status);
}

static uint64_t keycmd_next_at(const struct keycmd *kc)
{
    if (kc->retries >= KEYCMD_RETRIES) {
        return kc->start + kc->timeout;
    }
    return kc->start + kc->timeout * (kc->retries + 1) / (KEYCMD_RETRIES + 1);
}

/* Send the command straight to up to KEYCMD_RETRY_BATCH silent members. */
static void keycmd_retry(struct gossip *g, struct keycmd *kc)
{
    size_t sent = 0;
    for (size_t n = 0; n < kc->n_peers && sent < KEYCMD_RETRY_BATCH; n++) {
        struct keycmd_peer *p = &kc->peers[kc->retry_next];
        kc->retry_next = (kc->retry_next + 1) % kc->n_peers;
        if (p->answered) {
            continue;
        }
        struct member *m = swim_find(g, p->name, strlen(p->name));
        if (m == NULL ||
            (m->state != GOSSIP_ALIVE && m->state != GOSSIP_SUSPECT)) {
            continue;
        }
        struct gbuf_w w;
        core_packet_begin(g, &w);
        keycmd_encode(&w, g, kc, GMSG_KC_RETRY);
        core_packet_send(g, &m->addr, &w, true);
        sent++;
    }
}

static void on_keycmd_timer(struct gtimer *t, void *arg)
{
    struct gossip *g = arg;
    struct keycmd *kc = container_of(t, struct keycmd, timer);
    uint64_t now = core_now(g);
    unsigned slot = 0;
    while (slot < GOSSIP_KEYCMD_MAX && g->keycmds[slot] != kc) {
        slot++;
    }
    if (slot == GOSSIP_KEYCMD_MAX) {
        return; /* cannot happen: a finished command's timer is stopped */
    }
    if (kc->n_answered == kc->n_peers || now >= kc->start + kc->timeout) {
        keycmd_finish(g, slot, 0);
        return;
    }
    if (now >= keycmd_next_at(kc)) {
        keycmd_retry(g, kc);
        kc->retries++;
    }
    core_timer_start(g, &kc->timer, keycmd_next_at(kc));
}

static const void *keycmd_peer_key(const void *val, size_t *len)
{
    const struct keycmd_peer *p = val;
    *len = strlen(p->name);
    return p->name;
}

/* Members asked: every other member alive or suspect now. */
static int keycmd_peers(struct gossip *g, struct keycmd *kc)
{
    size_t n = 0;
    for (size_t i = 0; i < g->n_members; i++) {
        const struct member *m = g->members[i];
        n += m != g->self &&
             (m->state == GOSSIP_ALIVE || m->state == GOSSIP_SUSPECT);
    }
    ghash_init(&kc->by_name, keycmd_peer_key);
    if (n == 0) {
        return 0;
    }
    kc->peers = calloc(n, sizeof *kc->peers);
    if (kc->peers == NULL) {
        return ALLOT_ENOMEM;
    }
    for (size_t i = 0; i < g->n_members; i++) {
        const struct member *m = g->members[i];
        if (m == g->self ||
            (m->state != GOSSIP_ALIVE && m->state != GOSSIP_SUSPECT)) {
            continue;
        }
        struct keycmd_peer *p = &kc->peers[kc->n_peers];
        memcpy(p->name, m->name, (size_t)m->name_len + 1);
        if (ghash_put(&kc->by_name, p) != 0) {
            return ALLOT_ENOMEM;
        }
        kc->n_peers++;
    }
    return 0;
}

int gossip_key_cmd(struct gossip *g, struct gossip_key_cmd *req,
                   enum gossip_key_op op, const uint8_t *key,
                   uint32_t timeout_ms, gossip_key_cmd_cb cb)
{
    if (req == NULL || cb == NULL || (unsigned)op > GOSSIP_KEY_REMOVE ||
        (op != GOSSIP_KEY_LIST && key == NULL) || timeout_ms == 0 ||
        timeout_ms > 3600000) {
        return ALLOT_EINVALID;
    }
    if (g->freeing) {
        return ALLOT_ESHUTDOWN;
    }
    unsigned slot = 0;
    while (slot < GOSSIP_KEYCMD_MAX && g->keycmds[slot] != NULL) {
        slot++;
    }
    if (slot == GOSSIP_KEYCMD_MAX || g->queue.n_cmd >= GBQ_CMD_MAX) {
        return ALLOT_EUNAVAILABLE;
    }
    /* Refused here: nothing is sent, nothing changes. The change is made on
     * a copy and committed once the command is queued. */
    struct gossip_keyring kr = g->keyring;
    bool changed;
    int rv = keycmd_apply(&kr, op, key, &changed);
    if (rv != 0) {
        gossip_keyring_wipe(&kr);
        return rv;
    }
    struct keycmd *kc = calloc(1, sizeof *kc);
    if (kc == NULL) {
        gossip_keyring_wipe(&kr);
        return ALLOT_ENOMEM;
    }
    kc->req = req;
    kc->op = (uint8_t)op;
    kc->has_key = op != GOSSIP_KEY_LIST;
    if (kc->has_key) {
        memcpy(kc->key, key, GOSSIP_KEY_SIZE);
    }
    /* The key this member will send with, so answers use one it holds. */
    gcrypt_key_id(kr.keys[0], kc->reply_key_id);
    kc->start = core_now(g);
    kc->timeout = timeout_ms;
    gtimer_init(&kc->timer, on_keycmd_timer);
    /* A fresh id: never one this member has seen or is waiting on. */
    do {
        kc->id = g->io->random(g->io);
    } while (cmd_seen_find(g, kc->id) != NULL);
    rv = keycmd_peers(g, kc);
    char qkey[1 + sizeof(uint64_t)];
    keycmd_qkey(kc->id, qkey);
    if (rv == 0) {
        uint8_t buf[256];
        struct gbuf_w w;
        gbuf_w_fixed(&w, buf, sizeof buf);
        keycmd_encode(&w, g, kc, 0);
        rv = w.failed
                 ? ALLOT_EINTERNAL
                 : gbq_push(&g->queue, qkey, sizeof qkey, w.p, w.len, GBQ_CMD);
    }
    if (rv != 0) {
        gossip_keyring_wipe(&kr);
        keycmd_free(g, kc);
        return rv;
    }
    g->keyring = kr;
    gossip_keyring_wipe(&kr);
    cmd_seen_add(g, kc->id, 0);
    g->keycmds[slot] = kc;

    void *data = req->data;
    memset(req, 0, sizeof *req);
    req->data = data;
    req->op = op;
    req->asked = (uint32_t)kc->n_peers + 1;
    req->acks = 1; /* this member applied it */
    req->cb = cb;
    req->priv = kc;
    if (op == GOSSIP_KEY_LIST) {
        keycmd_count_keys(req, g->keyring.keys[0], g->keyring.n);
    }
    LOGI(COMP, "key command sent", "name=%s op=%s asked=%zu", g->self->name,
         gossip_key_op_name(op), kc->n_peers + 1);
    /* Never from inside this call, even when nobody else is there. */
    core_timer_start(g, &kc->timer,
                     kc->n_peers == 0 ? kc->start : keycmd_next_at(kc));
    gossip_soon(g);
    core_arm(g);
    if (changed) {
        keyring_notify(g);
    }
    return 0;
}

static void key_reply_send(struct gossip *g, const struct gmsg_key_cmd *m,
                           int status)
{
    struct gbuf_w w;
    core_packet_begin(g, &w);
    bool list = m->op == GOSSIP_KEY_LIST && status == 0;
    gmsg_put_key_reply(&w, m->id, g->self->name, status,
                       keycmd_refusal((enum gossip_key_op)m->op, status),
                       list ? g->keyring.keys[0] : NULL,
                       list ? g->keyring.n : 0);
    /* Sealed with the originator's primary when we hold it: the command may
     * have reached us through a member still sending with another key. */
    int k = gcrypt_find_id(&g->keyring, m->reply_key_id);
    core_packet_send_key(g, &m->origin_addr, &w, true,
                         g->keyring.keys[k >= 0 ? k : 0]);
}

static void on_key_cmd(struct gossip *g, const struct gmsg_key_cmd *m)
{
    if (gmsg_str_eq(m->origin, g->self->name)) {
        return; /* our own, coming back */
    }
    const struct keycmd_seen *seen = cmd_seen_find(g, m->id);
    if (seen != NULL) {
        /* Asked again directly: our answer was lost, or the command was. */
        if (m->flags & GMSG_KC_RETRY) {
            key_reply_send(g, m, seen->status);
        }
        return;
    }
    bool changed;
    int status =
        keycmd_apply(&g->keyring, (enum gossip_key_op)m->op, m->key, &changed);
    cmd_seen_add(g, m->id, status);
    g->stats.key_cmds_recv++;
    LOGI(COMP, "key command applied", "name=%s op=%s from=%.*s status=%s",
         g->self->name, gossip_key_op_name((enum gossip_key_op)m->op),
         (int)m->origin.len, m->origin.p, allot_error_name(status));
    /* Passed on as received, minus the retry flag. */
    uint8_t buf[256];
    struct gbuf_w w;
    gbuf_w_fixed(&w, buf, sizeof buf);
    char origin[GOSSIP_NAME_MAX + 1];
    memcpy(origin, m->origin.p, m->origin.len);
    origin[m->origin.len] = '\0';
    gmsg_put_key_cmd(&w, m->id, 0, origin, &m->origin_addr, m->op,
                     m->reply_key_id, m->key);
    char qkey[1 + sizeof(uint64_t)];
    keycmd_qkey(m->id, qkey);
    core_queue(g, qkey, sizeof qkey, &w, GBQ_CMD);
    gossip_soon(g);
    key_reply_send(g, m, status);
    if (changed) {
        keyring_notify(g);
    }
}

static void on_key_reply(struct gossip *g, const struct gmsg_key_reply *m)
{
    struct keycmd *kc = NULL;
    for (unsigned i = 0; i < GOSSIP_KEYCMD_MAX && kc == NULL; i++) {
        if (g->keycmds[i] != NULL && g->keycmds[i]->id == m->id) {
            kc = g->keycmds[i];
        }
    }
    /* Late (the command is done), or not one of ours. */
    if (kc == NULL) {
        return;
    }
    struct keycmd_peer *p = ghash_get(&kc->by_name, m->from.p, m->from.len);
    /* Not asked (it joined since), or heard already. */
    if (p == NULL || p->answered) {
        return;
    }
    p->answered = true;
    kc->n_answered++;
    struct gossip_key_cmd *req = kc->req;
    if (m->status == 0) {
        req->acks++;
        if (kc->op == GOSSIP_KEY_LIST) {
            keycmd_count_keys(req, m->keys, m->n_keys);
        }
    } else {
        req->errors++;
        if (kc->first_error == 0) {
            kc->first_error = m->status;
            snprintf(req->error_member, sizeof req->error_member, "%s",
                     p->name);
            snprintf(req->error, sizeof req->error, "%.*s", (int)m->error.len,
                     m->error.p != NULL ? m->error.p : "");
        }
    }
    if (kc->n_answered == kc->n_peers) {
        core_timer_start(g, &kc->timer, core_now(g));
    }
}

void gossip_keyring_get(struct gossip *g, struct gossip_keyring *out)
{
    *out = g->keyring;
}

void gossip_stats(struct gossip *g, struct gossip_stats *out)
{
    *out = g->stats;
    out->awareness = g->awareness;
    out->queue_len = (uint32_t)g->queue.n;
    out->incarnation = g->self->inc;
}
