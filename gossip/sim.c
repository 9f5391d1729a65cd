/* sim.c - the deterministic fake io (see sim.h).
 *
 * One binary min-heap of events ordered by (time, sequence). A node's timer
 * request becomes an event tagged with a generation number; a newer
 * request bumps the generation, so stale timer events are skipped when
 * they come up instead of being searched for and removed. */
#include "sim.h"

#include <stdlib.h>
#include <string.h>

#include "../proto/allot_error.h"
#include "core.h"

#define SIM_PORT    7946
#define SIM_BASE_IP ((uint32_t)10 << 24) /* 10.0.0.0 */

enum ev_kind { EV_TIMER, EV_PACKET, EV_STREAM };

struct event
{
    uint64_t at;
    uint64_t seq;
    enum ev_kind kind;
    int node;
    uint64_t gen; /* EV_TIMER */
    struct gossip_addr from;
    uint8_t *data; /* owned (EV_PACKET, EV_STREAM) */
    size_t len;
};

struct node
{
    struct sim *sim;
    int id;
    struct gossip_io io;
    struct gossip *g;
    uint64_t timer_gen;
    uint64_t paused_until;
    int group;
    uint64_t rng;
};

struct link
{
    int from;
    int to;
    double loss;
};

struct sim
{
    uint64_t now;
    uint64_t seq;
    uint64_t rng;
    struct node **nodes;
    int n;
    int cap;
    struct event *heap;
    size_t heap_n;
    size_t heap_cap;
    double loss;
    uint32_t lat_min;
    uint32_t lat_max;
    struct link *links;
    size_t n_links;
    struct sim_stats stats;
};

/* splitmix64: small, fast, good enough for simulation choices. */
static uint64_t next_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rand_unit(uint64_t *state)
{
    return (double)(next_rand(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* --- Event heap --------------------------------------------------------- */

static bool ev_less(const struct event *a, const struct event *b)
{
    return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static int push_event(struct sim *s, struct event ev)
{
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 1024;
        struct event *h = realloc(s->heap, cap * sizeof *h);
        if (h == NULL) {
            return ALLOT_ENOMEM;
        }
        s->heap = h;
        s->heap_cap = cap;
    }
    ev.seq = s->seq++;
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ev_less(&ev, &s->heap[p])) {
            break;
        }
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = ev;
    return 0;
}

static struct event pop_event(struct sim *s)
{
    struct event top = s->heap[0];
    struct event last = s->heap[--s->heap_n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= s->heap_n) {
            break;
        }
        size_t c = l;
        if (l + 1 < s->heap_n && ev_less(&s->heap[l + 1], &s->heap[l])) {
            c = l + 1;
        }
        if (!ev_less(&s->heap[c], &last)) {
            break;
        }
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->heap_n > 0) {
        s->heap[i] = last;
    }
    return top;
}

/* --- The io ------------------------------------------------------------- */

static int node_of(const struct sim *s, const struct gossip_addr *a)
{
    if (a->port != SIM_PORT || a->ip < SIM_BASE_IP) {
        return -1;
    }
    uint32_t i = a->ip - SIM_BASE_IP;
    return i < (uint32_t)s->n ? (int)i : -1;
}

static double link_loss(const struct sim *s, int from, int to)
{
    for (size_t i = 0; i < s->n_links; i++) {
        if (s->links[i].from == from && s->links[i].to == to) {
            return s->links[i].loss;
        }
    }
    return s->loss;
}

static int send_any(struct gossip_io *io, const struct gossip_addr *to,
                    const void *buf, size_t len, enum ev_kind kind)
{
    struct node *src = io->impl;
    struct sim *s = src->sim;
    int dst = node_of(s, to);
    if (dst < 0) {
        s->stats.unreachable++;
        return 0;
    }
    if (kind == EV_PACKET) {
        s->stats.packets++;
        double loss = link_loss(s, src->id, dst);
        if (loss > 0 && rand_unit(&s->rng) < loss) {
            s->stats.lost++;
            return 0;
        }
    } else {
        s->stats.streams++;
    }
    uint32_t span = s->lat_max - s->lat_min;
    uint64_t lat = s->lat_min + (span ? next_rand(&s->rng) % (span + 1) : 0);
    if (kind == EV_STREAM) {
        lat *= 3; /* connect, then the message */
    }
    uint8_t *copy = malloc(len > 0 ? len : 1);
    if (copy == NULL) {
        return ALLOT_ENOMEM;
    }
    memcpy(copy, buf, len);
    struct event ev = {.at = s->now + (lat > 0 ? lat : 1),
                       .kind = kind,
                       .node = dst,
                       .from = {SIM_BASE_IP + (uint32_t)src->id, SIM_PORT},
                       .data = copy,
                       .len = len};
    if (push_event(s, ev) != 0) {
        free(copy);
        return ALLOT_ENOMEM;
    }
    return 0;
}

static int io_send_packet(struct gossip_io *io, const struct gossip_addr *to,
                          const void *buf, size_t len)
{
    return send_any(io, to, buf, len, EV_PACKET);
}

static int io_send_stream(struct gossip_io *io, const struct gossip_addr *to,
                          const void *buf, size_t len)
{
    return send_any(io, to, buf, len, EV_STREAM);
}

static uint64_t io_now(struct gossip_io *io)
{
    struct node *n = io->impl;
    return n->sim->now;
}

static void io_set_timer(struct gossip_io *io, uint64_t at)
{
    struct node *n = io->impl;
    n->timer_gen++;
    if (at == UINT64_MAX) {
        return;
    }
    struct event ev = {.at = at > n->sim->now ? at : n->sim->now,
                       .kind = EV_TIMER,
                       .node = n->id,
                       .gen = n->timer_gen};
    /* Out of memory here would lose the node's clock; tests allocate far
     * less than that, and a lost timer shows up as a failed test. */
    (void)push_event(n->sim, ev);
}

static uint64_t io_random(struct gossip_io *io)
{
    struct node *n = io->impl;
    return next_rand(&n->rng);
}

/* --- Nodes
 * --------------------------------------------------------------------- */

struct sim *sim_new(uint64_t seed)
{
    struct sim *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return NULL;
    }
    s->rng = seed;
    s->lat_min = 1;
    s->lat_max = 5;
    return s;
}

void sim_free(struct sim *s)
{
    if (s == NULL) {
        return;
    }
    for (int i = 0; i < s->n; i++) {
        gossip_free(s->nodes[i]->g);
        free(s->nodes[i]);
    }
    for (size_t i = 0; i < s->heap_n; i++) {
        free(s->heap[i].data);
    }
    free(s->heap);
    free(s->nodes);
    free(s->links);
    free(s);
}

int sim_add(struct sim *s)
{
    if (s->n >= 65536) {
        return -1;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 64;
        struct node **p = realloc(s->nodes, (size_t)cap * sizeof *p);
        if (p == NULL) {
            return -1;
        }
        s->nodes = p;
        s->cap = cap;
    }
    struct node *n = calloc(1, sizeof *n);
    if (n == NULL) {
        return -1;
    }
    n->sim = s;
    n->id = s->n;
    n->rng = s->rng ^ (0x5851f42d4c957f2dull * ((uint64_t)n->id + 1u));
    n->io = (struct gossip_io){.impl = n,
                               .send_packet = io_send_packet,
                               .send_stream = io_send_stream,
                               .now = io_now,
                               .set_timer = io_set_timer,
                               .random = io_random};
    s->nodes[s->n] = n;
    return s->n++;
}

int sim_count(const struct sim *s)
{
    return s->n;
}

struct gossip_addr sim_addr(const struct sim *s, int i)
{
    (void)s;
    return (struct gossip_addr){SIM_BASE_IP + (uint32_t)i, SIM_PORT};
}

int sim_start(struct sim *s, int i, struct gossip_config *cfg)
{
    struct node *n = s->nodes[i];
    if (n->g != NULL) {
        return ALLOT_EEXISTS;
    }
    cfg->addr = sim_addr(s, i);
    char msg[ALLOT_ERRMSG_SIZE];
    n->paused_until = 0;
    return gossip_new(&n->g, &n->io, cfg, msg);
}

int sim_warm(struct sim *s)
{
    for (int k = 0; k < s->n; k++) {
        struct gossip *gk = s->nodes[k]->g;
        if (gk == NULL) {
            continue;
        }
        struct gmsg_alive a;
        swim_alive_of(gk->self, &a);
        for (int i = 0; i < s->n; i++) {
            struct gossip *gi = s->nodes[i]->g;
            if (gi == NULL || i == k) {
                continue;
            }
            int rv = swim_seed(gi, &a);
            if (rv != 0 && rv != ALLOT_EEXISTS) {
                return rv;
            }
        }
    }
    return 0;
}

void sim_kill(struct sim *s, int i)
{
    struct node *n = s->nodes[i];
    gossip_free(n->g);
    n->g = NULL;
}

struct gossip *sim_gossip(struct sim *s, int i)
{
    return i >= 0 && i < s->n ? s->nodes[i]->g : NULL;
}

void sim_pause(struct sim *s, int i, uint64_t ms)
{
    s->nodes[i]->paused_until = s->now + ms;
}

void sim_set_loss(struct sim *s, double loss)
{
    s->loss = loss;
}

void sim_set_latency(struct sim *s, uint32_t min_ms, uint32_t max_ms)
{
    s->lat_min = min_ms;
    s->lat_max = max_ms >= min_ms ? max_ms : min_ms;
}

int sim_set_link_loss(struct sim *s, int from, int to, double loss)
{
    for (size_t i = 0; i < s->n_links; i++) {
        if (s->links[i].from == from && s->links[i].to == to) {
            s->links[i].loss = loss;
            return 0;
        }
    }
    struct link *p = realloc(s->links, (s->n_links + 1) * sizeof *p);
    if (p == NULL) {
        return ALLOT_ENOMEM;
    }
    s->links = p;
    s->links[s->n_links++] = (struct link){from, to, loss};
    return 0;
}

void sim_set_group(struct sim *s, int i, int grp)
{
    s->nodes[i]->group = grp;
}

void sim_heal(struct sim *s)
{
    for (int i = 0; i < s->n; i++) {
        s->nodes[i]->group = 0;
    }
}

uint64_t sim_now(const struct sim *s)
{
    return s->now;
}

static void deliver(struct sim *s, struct event *ev)
{
    struct node *n = s->nodes[ev->node];
    int src = node_of(s, &ev->from);
    if (n->g == NULL || n->paused_until > s->now) {
        s->stats.unreachable++;
        return;
    }
    if (src >= 0 && s->nodes[src]->group != n->group) {
        s->stats.cut++;
        return;
    }
    s->stats.delivered++;
    if (ev->kind == EV_PACKET) {
        gossip_recv_packet(n->g, &ev->from, ev->data, ev->len);
    } else {
        gossip_recv_stream(n->g, &ev->from, ev->data, ev->len);
    }
}

void sim_run_until(struct sim *s, uint64_t t)
{
    while (s->heap_n > 0 && s->heap[0].at <= t) {
        struct event ev = pop_event(s);
        s->now = ev.at;
        s->stats.events++;
        struct node *n = s->nodes[ev.node];
        if (ev.kind == EV_TIMER) {
            if (ev.gen != n->timer_gen || n->g == NULL) {
                continue;
            }
            if (n->paused_until > s->now) {
                ev.at = n->paused_until;
                (void)push_event(s, ev);
                continue;
            }
            gossip_tick(n->g);
        } else {
            deliver(s, &ev);
            free(ev.data);
        }
    }
    if (t > s->now) {
        s->now = t;
    }
}

void sim_run_for(struct sim *s, uint64_t ms)
{
    sim_run_until(s, s->now + ms);
}

bool sim_run_until_true(struct sim *s, uint64_t max_ms, uint64_t step_ms,
                        bool (*pred)(struct sim *s, void *data), void *data)
{
    uint64_t end = s->now + max_ms;
    if (step_ms == 0) {
        step_ms = 1;
    }
    while (!pred(s, data)) {
        if (s->now >= end) {
            return false;
        }
        uint64_t next = s->now + step_ms;
        sim_run_until(s, next < end ? next : end);
    }
    return true;
}

void sim_stats(const struct sim *s, struct sim_stats *out)
{
    *out = s->stats;
}

bool sim_all_alive(struct sim *s, void *data)
{
    (void)data;
    size_t running = 0;
    for (int i = 0; i < sim_count(s); i++) {
        running += sim_gossip(s, i) != NULL;
    }
    for (int i = 0; i < sim_count(s); i++) {
        struct gossip *g = sim_gossip(s, i);
        if (g != NULL && (gossip_member_count(g, GOSSIP_ALIVE) != running ||
                          gossip_member_count(g, GOSSIP_SUSPECT) != 0)) {
            return false;
        }
    }
    return true;
}
