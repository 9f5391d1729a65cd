/* test_gossip_sim.c - the gossip protocol in a deterministic simulation.
 *
 * Every test runs the real protocol code (gossip/) on the fake io
 * (gossip/sim.c): a virtual clock and a fake network with loss, latency,
 * partitions and paused or crashed members. Times below are virtual; the
 * tests print them (convergence, detection) and assert only outcomes, each
 * within a generous virtual bound.
 *
 *   converge_1000     1,000 members join through one seed and all see all
 *                     alive; then a keyed broadcast reaches every member
 *   kill_detected     a crashed member is declared dead by every other,
 *                     and nobody else is
 *   detection_n30     detection time at N=30, default and 500 ms probes
 *   loss_no_false_dead  5% datagram loss for 10 virtual minutes: members
 *                     get suspected and refute, nobody is declared dead
 *   partition_heals   a 50/50 partition: each side declares the other dead;
 *                     after healing everyone is alive again everywhere
 *   pause_refutes     a paused member comes back, refutes the suspicion with
 *                     a higher incarnation, and is never declared dead; a
 *                     longer pause gets it declared dead, and it rejoins
 *   restart_rejoins   a crashed member restarted with incarnation 0 rejoins
 *                     above its old incarnation
 *   keyed_newest      keyed broadcasts reach every member; a newer version
 *                     replaces an older one, an older one is ignored
 *   plain_broadcast   a plain broadcast is delivered once to each member
 *   push_pull_repairs a member paused through a broadcast gets the value
 *                     by push-pull (and not without it: the control run)
 *   meta_spreads      a metadata change reaches every member
 *   leave             a member that leaves is marked left, not dead
 *   warm_start        sim_warm: members know each other at once, nothing
 *                     queued, and failure detection runs on from there
 *   join_catchup      a newcomer deaf while another member joins learns of
 *                     it by the push-pull its join schedules
 *   local_health      a member that cannot hear anyone raises its awareness
 *                     score and stretches its probe interval
 *   key_rotation      a member with only a new key is not admitted; once
 *                     everyone installed and used the key, it is */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "allot_error.h"
#include "gossip.h"
#include "lib.h"
#include "sim.h"

#define MAX_NODES 1000

/* Results go to stdout with the wall-clock time the test has taken so far,
 * so a slow simulation shows up in the log. */
static uint64_t wall0;
static void setup(void)
{
    wall0 = clock_mono_ns();
}
#define REPORT(...)                                                         \
    do {                                                                    \
        printf("[%5.2f s wall] ", (double)(clock_mono_ns() - wall0) / 1e9); \
        printf(__VA_ARGS__);                                                \
        fflush(stdout);                                                     \
    } while (0)

/* --- A world of simulated members --------------------------------------- */

struct world;

struct node_ctx
{
    struct world *w;
    int id;
    uint64_t dead_events; /* DEAD events this node emitted about others */
    uint64_t left_events;
    uint64_t update_events;
    uint64_t plain_recv;
    uint64_t keyed_recv;
    uint64_t last_version; /* newest keyed version delivered */
    uint64_t version_regressions;
    uint64_t merged; /* push-pull app states merged */
    char name[64];
};

struct world
{
    struct sim *sim;
    int n;
    struct gossip_keyring keyring;
    struct node_ctx ctx[MAX_NODES];
    uint64_t dead_about[MAX_NODES]; /* DEAD events about node i, by anyone */
    uint64_t suspect_about[MAX_NODES];
    uint64_t join_about[MAX_NODES];
    uint32_t probe_interval_ms;
    uint32_t push_pull_interval_ms;
};

static void on_member(void *data, enum gossip_event ev,
                      const struct gossip_member *m)
{
    struct node_ctx *c = data;
    int about = -1;
    if (sscanf(m->name, "n%d", &about) != 1 || about < 0 ||
        about >= MAX_NODES) {
        about = -1;
    }
    if (ev == GOSSIP_EV_DEAD) {
        c->dead_events++;
        if (about >= 0) {
            c->w->dead_about[about]++;
        }
    } else if (ev == GOSSIP_EV_SUSPECT) {
        if (about >= 0) {
            c->w->suspect_about[about]++;
        }
    } else if (ev == GOSSIP_EV_JOIN) {
        if (about >= 0) {
            c->w->join_about[about]++;
        }
    } else if (ev == GOSSIP_EV_LEFT) {
        c->left_events++;
    } else if (ev == GOSSIP_EV_UPDATE) {
        c->update_events++;
    }
}

static void on_broadcast(void *data, const char *key, size_t key_len,
                         uint64_t version, const void *buf, size_t len)
{
    struct node_ctx *c = data;
    (void)key_len;
    (void)buf;
    (void)len;
    if (key == NULL) {
        c->plain_recv++;
        return;
    }
    c->keyed_recv++;
    if (version <= c->last_version) {
        c->version_regressions++;
    }
    c->last_version = version;
}

static void on_local_state(void *data, bool join, void **buf, size_t *len)
{
    struct node_ctx *c = data;
    (void)join;
    size_t cap = sizeof "state-of-" + sizeof c->name;
    char *s = malloc(cap);
    if (s != NULL) {
        *len = (size_t)snprintf(s, cap, "state-of-%s", c->name);
        *buf = s;
    }
}

static void on_merge_state(void *data, bool join, const void *buf, size_t len)
{
    struct node_ctx *c = data;
    (void)join;
    if (len > 9 && memcmp(buf, "state-of-", 9) == 0) {
        c->merged++;
    }
}

static void test_key(uint8_t key[GOSSIP_KEY_SIZE], uint8_t fill)
{
    memset(key, fill, GOSSIP_KEY_SIZE);
}

static void world_config(struct world *w, int i, struct gossip_config *cfg)
{
    gossip_config_init(cfg);
    cfg->name = w->ctx[i].name;
    cfg->keyring = w->keyring;
    cfg->cb = (struct gossip_callbacks){.data = &w->ctx[i],
                                        .member = on_member,
                                        .broadcast = on_broadcast,
                                        .local_state = on_local_state,
                                        .merge_state = on_merge_state};
    if (w->probe_interval_ms != 0) {
        cfg->probe_interval_ms = w->probe_interval_ms;
        cfg->probe_timeout_ms = w->probe_interval_ms / 2;
    }
    if (w->push_pull_interval_ms != 0) {
        cfg->push_pull_interval_ms = w->push_pull_interval_ms;
        cfg->reconnect_interval_ms = w->push_pull_interval_ms;
    }
}

static struct world *world_new(int n, uint64_t seed)
{
    ck_assert_int_le(n, MAX_NODES);
    struct world *w = calloc(1, sizeof *w);
    ck_assert_ptr_nonnull(w);
    w->sim = sim_new(seed);
    ck_assert_ptr_nonnull(w->sim);
    w->n = n;
    w->keyring.n = 1;
    test_key(w->keyring.keys[0], 0x42);
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(sim_add(w->sim), i);
        w->ctx[i].w = w;
        w->ctx[i].id = i;
        snprintf(w->ctx[i].name, sizeof w->ctx[i].name, "n%d", i);
    }
    return w;
}

static void world_start(struct world *w, int i)
{
    struct gossip_config cfg;
    world_config(w, i, &cfg);
    ck_assert_int_eq(sim_start(w->sim, i, &cfg), 0);
}

/* Start every member; each joins through node 0. */
static void world_start_all(struct world *w)
{
    struct gossip_addr seed = sim_addr(w->sim, 0);
    for (int i = 0; i < w->n; i++) {
        world_start(w, i);
        ck_assert_int_eq(gossip_join(sim_gossip(w->sim, i), &seed, 1), 0);
    }
}

static void world_free(struct world *w)
{
    sim_free(w->sim);
    free(w);
}

static enum gossip_state state_at(struct world *w, int observer, int about)
{
    struct gossip_member m;
    int rv = gossip_member_find(sim_gossip(w->sim, observer),
                                w->ctx[about].name, &m);
    return rv == 0 ? m.state : (enum gossip_state) - 1;
}

struct verdict
{
    struct world *w;
    int about;
    enum gossip_state state;
    int from, to; /* observers [from, to) */
};

static bool all_see(struct sim *s, void *data)
{
    struct verdict *v = data;
    for (int i = v->from; i < v->to; i++) {
        if (i != v->about && sim_gossip(s, i) != NULL &&
            state_at(v->w, i, v->about) != v->state) {
            return false;
        }
    }
    return true;
}

static uint64_t total_dead_events(struct world *w)
{
    uint64_t n = 0;
    for (int i = 0; i < w->n; i++) {
        n += w->ctx[i].dead_events;
    }
    return n;
}

static struct gossip_stats stats_of(struct world *w, int i)
{
    struct gossip_stats st;
    gossip_stats(sim_gossip(w->sim, i), &st);
    return st;
}

/* --- Tests -------------------------------------------------------------- */

START_TEST(converge_small)
{
    struct world *w = world_new(10, 1);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    REPORT("converge_small: 10 members all alive at %" PRIu64 " ms\n",
           sim_now(w->sim));
    ck_assert_uint_eq(total_dead_events(w), 0);
    world_free(w);
}
END_TEST

/* Members started before their seed: n1 asks n0 (not up yet) and n2..n3
 * join through n1, so n1 is not alone when n0 comes up. n1 keeps asking
 * its seed until the seed answers, so the two groups meet instead of
 * living on as islands (what happened when allotd nodes started at once). */
START_TEST(late_seed_no_islands)
{
    struct world *w = world_new(5, 14);
    struct gossip_addr seed0 = sim_addr(w->sim, 0);
    struct gossip_addr seed1 = sim_addr(w->sim, 1);
    world_start(w, 1);
    ck_assert_int_eq(gossip_join(sim_gossip(w->sim, 1), &seed0, 1), 0);
    for (int i = 2; i < 4; i++) {
        world_start(w, i);
        ck_assert_int_eq(gossip_join(sim_gossip(w->sim, i), &seed1, 1), 0);
    }
    sim_run_for(w->sim, 5000);
    ck_assert_uint_eq(gossip_member_count(sim_gossip(w->sim, 1), GOSSIP_ALIVE),
                      3);
    world_start(w, 0); /* the seed, up at last, with a member of its own */
    world_start(w, 4);
    ck_assert_int_eq(gossip_join(sim_gossip(w->sim, 4), &seed0, 1), 0);
    ck_assert(sim_run_until_true(w->sim, 30000, 100, sim_all_alive, w));
    REPORT("late_seed_no_islands: 5 members all alive at %" PRIu64 " ms\n",
           sim_now(w->sim));
    world_free(w);
}
END_TEST

START_TEST(converge_1000)
{
    struct world *w = world_new(1000, 2);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 600000, 250, sim_all_alive, w));
    uint64_t t_conv = sim_now(w->sim);
    struct sim_stats ss;
    sim_stats(w->sim, &ss);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    REPORT("converge_1000: 1000 members all alive at %" PRIu64
           " ms (virtual); %" PRIu64 " datagrams, %" PRIu64
           " streams; peak RSS %ld MB for all 1000 (%ld KB each)\n",
           t_conv, ss.packets, ss.streams, ru.ru_maxrss / 1024,
           ru.ru_maxrss / 1000);
    ck_assert_uint_eq(total_dead_events(w), 0);

    /* A rule version announced by one member: time to 99% and to all. */
    uint64_t t0 = sim_now(w->sim);
    ck_assert_int_eq(gossip_broadcast_keyed(sim_gossip(w->sim, 500), "catalog",
                                            42, "v42", 3),
                     0);
    uint64_t t99 = 0, t100 = 0;
    for (int step = 0; step < 6000 && t100 == 0; step++) {
        sim_run_for(w->sim, 10);
        int have = 0;
        for (int i = 0; i < w->n; i++) {
            uint64_t v = 0;
            have += gossip_keyed_get(sim_gossip(w->sim, i), "catalog", &v, NULL,
                                     0, NULL) == 0 &&
                    v == 42;
        }
        if (t99 == 0 && have * 100 >= w->n * 99) {
            t99 = sim_now(w->sim) - t0;
        }
        if (have == w->n) {
            t100 = sim_now(w->sim) - t0;
        }
    }
    REPORT("converge_1000: keyed broadcast reached 99%% in %" PRIu64
           " ms, 100%% in %" PRIu64 " ms (virtual)\n",
           t99, t100);
    ck_assert_uint_gt(t100, 0);
    world_free(w);
}
END_TEST

/* Start every member, wait until all are alive and kill `victim`: the
 * time until every other member holds it dead. */
static uint64_t time_to_bury(struct world *w, int victim)
{
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 120000, 100, sim_all_alive, w));
    uint64_t t0 = sim_now(w->sim);
    sim_kill(w->sim, victim);
    struct verdict v = {w, victim, GOSSIP_DEAD, 0, w->n};
    ck_assert(sim_run_until_true(w->sim, 120000, 10, all_see, &v));
    return sim_now(w->sim) - t0;
}

/* Kill one of n members probing every probe_ms; the time until all the
 * others declare it dead. */
static uint64_t detection_ms(int n, uint32_t probe_ms, uint64_t seed)
{
    struct world *w = world_new(n, seed);
    w->probe_interval_ms = probe_ms;
    uint64_t t = time_to_bury(w, 1);
    ck_assert_uint_eq(total_dead_events(w), (uint64_t)n - 1);
    world_free(w);
    return t;
}

START_TEST(detection_n30)
{
    /* Serf 0.9 (memberlist's LAN defaults) takes 7.5-9.5 s at N=30. */
    uint64_t worst[2] = {0, 0};
    uint32_t probe[2] = {1000, 500};
    for (int p = 0; p < 2; p++) {
        for (uint64_t seed = 1; seed <= 5; seed++) {
            uint64_t t = detection_ms(30, probe[p], 100 + seed);
            worst[p] = t > worst[p] ? t : worst[p];
        }
    }
    REPORT("detection_n30: slowest of 5 runs: %" PRIu64
           " ms with a 1000 ms probe interval, %" PRIu64
           " ms with 500 ms (virtual)\n",
           worst[0], worst[1]);
}
END_TEST

START_TEST(kill_detected)
{
    struct world *w = world_new(50, 3);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 120000, 100, sim_all_alive, w));
    uint64_t t0 = sim_now(w->sim);
    sim_kill(w->sim, 7);
    struct verdict v = {w, 7, GOSSIP_DEAD, 0, w->n};
    uint64_t first = 0;
    for (int step = 0; step < 1200 && !all_see(w->sim, &v); step++) {
        sim_run_for(w->sim, 100);
        if (first == 0 && w->dead_about[7] > 0) {
            first = sim_now(w->sim) - t0;
        }
    }
    ck_assert_msg(all_see(w->sim, &v), "n7 not dead everywhere");
    REPORT("kill_detected: N=50, first dead verdict after %" PRIu64
           " ms, all 49 after %" PRIu64 " ms (virtual)\n",
           first, sim_now(w->sim) - t0);
    uint64_t all_dead = sim_now(w->sim);
    sim_run_for(w->sim, 30000);
    /* How long each has stood in its state: n7 dead since the observer's
     * verdict (after the kill, by the time all agreed), n0 alive since
     * it started. */
    struct gossip_member m;
    ck_assert_int_eq(
        gossip_member_find(sim_gossip(w->sim, 0), w->ctx[7].name, &m), 0);
    ck_assert_uint_ge(m.state_ms, sim_now(w->sim) - all_dead);
    ck_assert_uint_lt(m.state_ms, sim_now(w->sim) - t0);
    ck_assert_int_eq(
        gossip_member_find(sim_gossip(w->sim, 1), w->ctx[0].name, &m), 0);
    ck_assert_uint_ge(m.state_ms, sim_now(w->sim) - t0);
    /* Exactly one verdict per observer, and about n7 only. */
    ck_assert_uint_eq(w->dead_about[7], 49);
    ck_assert_uint_eq(total_dead_events(w), 49);
    world_free(w);
}
END_TEST

/* An accuser whose name is too long for the suspicion to keep
 * (SUSP_NEWS_FROM_MAX) has its SUSPECT relayed as a queued copy instead of
 * encoded from the record. With every member so named, a killed member is
 * declared dead exactly once by every other, and sooner than the longest
 * suspicion timeout (6 x 4 x log10(N) probe intervals, 14 s here), and
 * every one of them suspected it first: the relayed accusations reach
 * them all. Without the copies only its own probe of the victim makes a
 * member suspect it, and most hear of the death before that. */
START_TEST(long_names)
{
    struct world *w = world_new(30, 21);
    for (int i = 0; i < w->n; i++) {
        snprintf(w->ctx[i].name, sizeof w->ctx[i].name,
                 "n%d-named-longer-than-a-suspicion-keeps", i);
    }
    uint64_t t = time_to_bury(w, 3);
    REPORT("long_names: %" PRIu64 " of %d suspected it first, all dead "
           "after %" PRIu64 " ms\n",
           w->suspect_about[3], w->n - 1, t);
    ck_assert_uint_eq(w->suspect_about[3], (uint64_t)w->n - 1);
    ck_assert_uint_lt(t, 14000);
    sim_run_for(w->sim, 20000);
    ck_assert_uint_eq(w->dead_about[3], (uint64_t)w->n - 1);
    world_free(w);
}
END_TEST

/* sim_warm: 100 members know each other at once (one JOIN event each
 * about each other, nothing queued: 10 s of gossip then costs only the
 * probes and their acks, 2 x 100 x 25 datagrams at the 400 ms default),
 * and the protocol runs on from there: a killed member is found dead by
 * all. */
START_TEST(warm_start)
{
    struct world *w = world_new(100, 5);
    for (int i = 0; i < w->n; i++) {
        world_start(w, i);
    }
    ck_assert(!sim_all_alive(w->sim, w));
    ck_assert_int_eq(sim_warm(w->sim), 0);
    ck_assert(sim_all_alive(w->sim, w));
    for (int i = 0; i < w->n; i++) {
        ck_assert_uint_eq(w->join_about[i], (uint64_t)w->n - 1);
    }
    ck_assert_int_eq(sim_warm(w->sim), 0); /* again: nothing new */
    ck_assert_uint_eq(w->join_about[0], (uint64_t)w->n - 1);
    struct sim_stats st;
    sim_stats(w->sim, &st);
    ck_assert_uint_eq(st.packets, 0);
    sim_run_for(w->sim, 10000);
    sim_stats(w->sim, &st);
    REPORT("warm_start: N=100, %" PRIu64 " datagrams in 10 s\n", st.packets);
    ck_assert_uint_le(st.packets, 6000);
    ck_assert(sim_all_alive(w->sim, w));
    ck_assert_uint_eq(total_dead_events(w), 0);
    sim_kill(w->sim, 9);
    struct verdict v = {w, 9, GOSSIP_DEAD, 0, w->n};
    ck_assert(sim_run_until_true(w->sim, 60000, 100, all_see, &v));
    ck_assert_uint_eq(total_dead_events(w), 99);
    world_free(w);
}
END_TEST

/* A newcomer that hears no datagram while another member joins right
 * after it (every datagram to it lost for 3 s, as when nobody knows it
 * yet) misses that member's ALIVE for good: regular push-pull is pushed
 * out to 10 minutes here. The catch-up push-pull its join schedules
 * (twice the 0.6 s the fleet keeps sending an ALIVE) brings it in. */
START_TEST(join_catchup)
{
    struct world *w = world_new(22, 9);
    w->push_pull_interval_ms = 600000;
    for (int i = 0; i < 20; i++) {
        world_start(w, i);
    }
    ck_assert_int_eq(sim_warm(w->sim), 0);
    for (int i = 0; i < 22; i++) {
        ck_assert_int_eq(sim_set_link_loss(w->sim, i, 20, 1.0), 0);
    }
    struct gossip_addr seed0 = sim_addr(w->sim, 0);
    struct gossip_addr seed1 = sim_addr(w->sim, 1);
    world_start(w, 20);
    ck_assert_int_eq(gossip_join(sim_gossip(w->sim, 20), &seed0, 1), 0);
    sim_run_for(w->sim, 50);
    world_start(w, 21);
    ck_assert_int_eq(gossip_join(sim_gossip(w->sim, 21), &seed1, 1), 0);
    sim_run_for(w->sim, 900);
    /* n21 is everywhere but at n20, which has not been asked yet. */
    ck_assert_int_eq(state_at(w, 5, 21), GOSSIP_ALIVE);
    ck_assert_int_eq((int)state_at(w, 20, 21), -1);
    ck_assert_uint_eq(stats_of(w, 20).catchups, 0);
    sim_run_for(w->sim, 2000);
    for (int i = 0; i < 22; i++) {
        ck_assert_int_eq(sim_set_link_loss(w->sim, i, 20, 0.0), 0);
    }
    struct verdict v = {w, 21, GOSSIP_ALIVE, 20, 21};
    ck_assert(all_see(w->sim, &v));
    ck_assert_uint_eq(stats_of(w, 20).catchups, 1);
    ck_assert_uint_eq(stats_of(w, 20).push_pulls, 2); /* join, catch-up */
    REPORT("join_catchup: the newcomer learned of a later joiner by its "
           "catch-up push-pull\n");
    world_free(w);
}
END_TEST

START_TEST(loss_no_false_dead)
{
    struct world *w = world_new(50, 4);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 120000, 100, sim_all_alive, w));
    sim_set_loss(w->sim, 0.05);
    sim_run_for(w->sim, 600000);
    uint64_t suspicions = 0, refutes = 0, probes = 0;
    uint32_t max_aw = 0;
    for (int i = 0; i < w->n; i++) {
        struct gossip_stats st = stats_of(w, i);
        suspicions += st.suspicions;
        refutes += st.refutes;
        probes += st.probes;
        if (st.awareness > max_aw) {
            max_aw = st.awareness;
        }
    }
    struct sim_stats ss;
    sim_stats(w->sim, &ss);
    REPORT("loss_no_false_dead: N=50, 5%% loss, 600 s (virtual): %" PRIu64
           " probes, %" PRIu64 " datagrams lost, %" PRIu64
           " suspicions, %" PRIu64 " refutations, 0 dead expected, %" PRIu64
           " seen; max awareness %u\n",
           probes, ss.lost, suspicions, refutes, total_dead_events(w), max_aw);
    ck_assert_uint_eq(total_dead_events(w), 0);
    sim_set_loss(w->sim, 0);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    world_free(w);
}
END_TEST

static bool sides_dead(struct sim *s, void *data)
{
    struct world *w = data;
    int half = w->n / 2;
    for (int i = 0; i < w->n; i++) {
        for (int j = 0; j < w->n; j++) {
            bool other = (i < half) != (j < half);
            if (other && sim_gossip(s, i) != NULL &&
                state_at(w, i, j) != GOSSIP_DEAD) {
                return false;
            }
        }
    }
    return true;
}

START_TEST(partition_heals)
{
    struct world *w = world_new(40, 5);
    w->push_pull_interval_ms = 10000;
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 120000, 100, sim_all_alive, w));
    uint64_t t0 = sim_now(w->sim);
    for (int i = w->n / 2; i < w->n; i++) {
        sim_set_group(w->sim, i, 1);
    }
    ck_assert(sim_run_until_true(w->sim, 180000, 250, sides_dead, w));
    uint64_t t_split = sim_now(w->sim) - t0;
    /* Each side still sees itself whole. */
    for (int i = 0; i < w->n; i++) {
        ck_assert_uint_eq(
            gossip_member_count(sim_gossip(w->sim, i), GOSSIP_ALIVE),
            (size_t)w->n / 2);
    }
    /* Long enough that nobody gossips to the other side any more: only
     * push-pulls with dead members (reconnect) can find it again. */
    sim_run_for(w->sim, 60000);
    sim_heal(w->sim);
    uint64_t t1 = sim_now(w->sim);
    ck_assert(sim_run_until_true(w->sim, 300000, 250, sim_all_alive, w));
    REPORT("partition_heals: N=40 split 20/20: each side declared the other "
           "dead after %" PRIu64 " ms; healed and all alive after %" PRIu64
           " ms (virtual)\n",
           t_split, sim_now(w->sim) - t1);
    world_free(w);
}
END_TEST

START_TEST(pause_refutes)
{
    struct world *w = world_new(20, 6);
    w->push_pull_interval_ms = 10000;
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 120000, 100, sim_all_alive, w));

    /* Short pause: suspected, refuted, never dead. Shorter than the
     * smallest suspicion timeout with the defaults (4 * log10(20) * 400 ms
     * = 2.1 s), longer than a probe and its timeout (0.6 s). */
    sim_pause(w->sim, 5, 1500);
    sim_run_for(w->sim, 1500);
    ck_assert_uint_gt(w->suspect_about[5], 0);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    struct gossip_stats st = stats_of(w, 5);
    REPORT("pause_refutes: a 1.5 s pause: %" PRIu64
           " suspect events, refuted at incarnation %" PRIu64
           ", 0 dead verdicts\n",
           w->suspect_about[5], st.incarnation);
    ck_assert_uint_eq(w->dead_about[5], 0);
    ck_assert_uint_ge(st.refutes, 1);
    ck_assert_uint_gt(st.incarnation, 0);

    /* Long pause: declared dead; on waking it refutes and rejoins. */
    uint64_t t0 = sim_now(w->sim);
    sim_pause(w->sim, 6, 60000);
    struct verdict v = {w, 6, GOSSIP_DEAD, 0, w->n};
    ck_assert(sim_run_until_true(w->sim, 59000, 100, all_see, &v));
    uint64_t t_dead = sim_now(w->sim) - t0;
    uint64_t dead_inc = 0;
    struct gossip_member m;
    ck_assert_int_eq(gossip_member_find(sim_gossip(w->sim, 0), "n6", &m), 0);
    dead_inc = m.incarnation;
    sim_run_until(w->sim, t0 + 60000);
    ck_assert(sim_run_until_true(w->sim, 120000, 100, sim_all_alive, w));
    ck_assert_int_eq(gossip_member_find(sim_gossip(w->sim, 0), "n6", &m), 0);
    REPORT("pause_refutes: a 60 s pause: dead everywhere after %" PRIu64
           " ms; alive again %" PRIu64 " ms after waking, incarnation %" PRIu64
           " -> %" PRIu64 "\n",
           t_dead, sim_now(w->sim) - t0 - 60000, dead_inc, m.incarnation);
    ck_assert_uint_gt(m.incarnation, dead_inc);
    world_free(w);
}
END_TEST

START_TEST(restart_rejoins)
{
    struct world *w = world_new(10, 7);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    /* Give n3 an incarnation above 0 first, so the restart must beat it. */
    struct gossip_meta meta = {.role = GOSSIP_ROLE_AGENT, .fleet = "a"};
    ck_assert_int_eq(gossip_set_meta(sim_gossip(w->sim, 3), &meta), 0);
    ck_assert_int_eq(gossip_set_meta(sim_gossip(w->sim, 3), &meta), 0);
    sim_run_for(w->sim, 5000);
    sim_kill(w->sim, 3);
    struct verdict v = {w, 3, GOSSIP_DEAD, 0, w->n};
    ck_assert(sim_run_until_true(w->sim, 120000, 100, all_see, &v));
    struct gossip_member m;
    ck_assert_int_eq(gossip_member_find(sim_gossip(w->sim, 0), "n3", &m), 0);
    uint64_t old_inc = m.incarnation;
    ck_assert_uint_eq(old_inc, 2);
    uint64_t joins_before = w->join_about[3];
    world_start(w, 3);
    struct gossip_addr seed = sim_addr(w->sim, 0);
    ck_assert_int_eq(gossip_join(sim_gossip(w->sim, 3), &seed, 1), 0);
    uint64_t t0 = sim_now(w->sim);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    ck_assert_int_eq(gossip_member_find(sim_gossip(w->sim, 0), "n3", &m), 0);
    REPORT("restart_rejoins: restarted at incarnation 0, alive everywhere "
           "after %" PRIu64 " ms at incarnation %" PRIu64 " (was %" PRIu64
           ")\n",
           sim_now(w->sim) - t0, m.incarnation, old_inc);
    ck_assert_uint_gt(m.incarnation, old_inc);
    ck_assert_uint_eq(w->join_about[3] - joins_before, 9);
    world_free(w);
}
END_TEST

struct keyed_goal
{
    struct world *w;
    const char *key;
    uint64_t version;
    int skip; /* a node not to wait for, -1 for none */
};

static bool all_have(struct sim *s, void *data)
{
    struct keyed_goal *k = data;
    for (int i = 0; i < k->w->n; i++) {
        uint64_t v = 0;
        if (i == k->skip || sim_gossip(s, i) == NULL) {
            continue;
        }
        if (gossip_keyed_get(sim_gossip(s, i), k->key, &v, NULL, 0, NULL) !=
                0 ||
            v != k->version) {
            return false;
        }
    }
    return true;
}

START_TEST(keyed_newest)
{
    struct world *w = world_new(30, 8);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    struct gossip *g4 = sim_gossip(w->sim, 4);
    struct gossip *g9 = sim_gossip(w->sim, 9);
    uint64_t t0 = sim_now(w->sim);
    ck_assert_int_eq(gossip_broadcast_keyed(g4, "catalog", 1, "one", 3), 0);
    struct keyed_goal k = {w, "catalog", 1, -1};
    ck_assert(sim_run_until_true(w->sim, 30000, 10, all_have, &k));
    REPORT("keyed_newest: N=30, version 1 everywhere after %" PRIu64 " ms\n",
           sim_now(w->sim) - t0);
    /* Nobody may go back, not even the origin. */
    ck_assert_int_eq(gossip_broadcast_keyed(g9, "catalog", 1, "uno", 3),
                     ALLOT_ECONFLICT);
    ck_assert_int_eq(gossip_broadcast_keyed(g9, "catalog", 3, "three", 5), 0);
    ck_assert_int_eq(gossip_broadcast_keyed(g4, "catalog", 2, "two", 3), 0);
    k.version = 3;
    ck_assert(sim_run_until_true(w->sim, 30000, 10, all_have, &k));
    sim_run_for(w->sim, 10000);
    uint64_t stale = 0;
    for (int i = 0; i < w->n; i++) {
        uint64_t v;
        char buf[16];
        size_t len = 0;
        ck_assert_int_eq(gossip_keyed_get(sim_gossip(w->sim, i), "catalog", &v,
                                          buf, sizeof buf, &len),
                         0);
        ck_assert_uint_eq(v, 3);
        ck_assert_uint_eq(len, 5);
        ck_assert_mem_eq(buf, "three", 5);
        ck_assert_uint_eq(w->ctx[i].version_regressions, 0);
        stale += stats_of(w, i).broadcasts_stale;
    }
    REPORT("keyed_newest: version 3 everywhere, %" PRIu64
           " stale copies ignored\n",
           stale);
    ck_assert_int_eq(gossip_broadcast_keyed(g4, "bad key", 9, "x", 1),
                     ALLOT_EINVALID);
    world_free(w);
}
END_TEST

START_TEST(plain_broadcast)
{
    struct world *w = world_new(30, 9);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    ck_assert_int_eq(gossip_broadcast(sim_gossip(w->sim, 2), "hello", 5), 0);
    ck_assert_int_eq(gossip_broadcast(sim_gossip(w->sim, 3), "again", 5), 0);
    sim_run_for(w->sim, 20000);
    for (int i = 0; i < w->n; i++) {
        uint64_t want = (i == 2 || i == 3) ? 1 : 2;
        ck_assert_msg(w->ctx[i].plain_recv == want,
                      "n%d got %" PRIu64 " broadcasts, want %" PRIu64, i,
                      w->ctx[i].plain_recv, want);
    }
    char big[GOSSIP_BROADCAST_MAX + 1] = {0};
    ck_assert_int_eq(gossip_broadcast(sim_gossip(w->sim, 2), big, sizeof big),
                     ALLOT_ETOO_BIG);
    world_free(w);
}
END_TEST

/* Pause n8 while n1 announces a version; returns whether n8 has it 30 s
 * after waking. */
static bool repair_run(uint32_t push_pull_ms, uint64_t *when)
{
    struct world *w = world_new(20, 10);
    w->push_pull_interval_ms = push_pull_ms;
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    /* Past the push-pull each member makes a while after its join (a
     * paused member's would fire when it wakes, and repair it). */
    sim_run_for(w->sim, 3000);
    sim_pause(w->sim, 8, 3000);
    ck_assert_int_eq(
        gossip_broadcast_keyed(sim_gossip(w->sim, 1), "catalog", 7, "v7", 2),
        0);
    sim_run_for(w->sim, 3000);
    struct keyed_goal k = {w, "catalog", 7, 8};
    ck_assert(all_have(w->sim, &k));
    /* The others no longer carry it: only a push-pull can help n8. */
    k.skip = -1;
    uint64_t t0 = sim_now(w->sim);
    bool got = sim_run_until_true(w->sim, 30000, 50, all_have, &k);
    *when = sim_now(w->sim) - t0;
    if (got) {
        ck_assert_uint_gt(w->ctx[8].merged, 0);
    }
    world_free(w);
    return got;
}

START_TEST(push_pull_repairs)
{
    uint64_t t;
    /* A 30 s interval would leave this to chance within the bound. */
    ck_assert(repair_run(10000, &t));
    REPORT("push_pull_repairs: the paused member got the version %" PRIu64
           " ms after waking\n",
           t);
    /* Control: without push-pull the version never reaches it. */
    ck_assert(!repair_run(UINT32_MAX / 2, &t));
}
END_TEST

static bool meta_everywhere(struct sim *s, void *data)
{
    struct world *w = data;
    for (int i = 0; i < w->n; i++) {
        struct gossip_member m;
        if (gossip_member_find(sim_gossip(s, i), "n11", &m) != 0 ||
            strcmp(m.meta.fleet, "blue") != 0) {
            return false;
        }
    }
    return true;
}

START_TEST(meta_spreads)
{
    struct world *w = world_new(30, 11);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    struct gossip_meta meta = {.role = GOSSIP_ROLE_SERVER,
                               .weight = 7,
                               .fleet = "blue",
                               .app = (const uint8_t *)"xyz",
                               .app_len = 3};
    uint64_t t0 = sim_now(w->sim);
    ck_assert_int_eq(gossip_set_meta(sim_gossip(w->sim, 11), &meta), 0);
    ck_assert(sim_run_until_true(w->sim, 30000, 10, meta_everywhere, w));
    REPORT("meta_spreads: N=30, new metadata everywhere after %" PRIu64 " ms\n",
           sim_now(w->sim) - t0);
    uint64_t updates = 0;
    for (int i = 0; i < w->n; i++) {
        struct gossip_member m;
        ck_assert_int_eq(gossip_member_find(sim_gossip(w->sim, i), "n11", &m),
                         0);
        ck_assert_int_eq(m.meta.role, GOSSIP_ROLE_SERVER);
        ck_assert_uint_eq(m.meta.weight, 7);
        ck_assert_uint_eq(m.meta.app_len, 3);
        ck_assert_mem_eq(m.meta.app, "xyz", 3);
        updates += w->ctx[i].update_events;
    }
    ck_assert_uint_eq(updates, 29);
    /* Smaller metadata: every record of n11 moves to a smaller block (the
     * name, fleet and app share one), and is still found by name. */
    struct gossip_meta small = {.role = GOSSIP_ROLE_AGENT, .fleet = ""};
    ck_assert_int_eq(gossip_set_meta(sim_gossip(w->sim, 11), &small), 0);
    sim_run_for(w->sim, 10000);
    for (int i = 0; i < w->n; i++) {
        struct gossip_member m;
        ck_assert_int_eq(gossip_member_find(sim_gossip(w->sim, i), "n11", &m),
                         0);
        ck_assert_str_eq(m.name, "n11");
        ck_assert_int_eq(m.meta.role, GOSSIP_ROLE_AGENT);
        ck_assert_str_eq(m.meta.fleet, "");
        ck_assert_uint_eq(m.meta.app_len, 0);
        ck_assert_int_eq(m.state, GOSSIP_ALIVE);
    }
    meta.app_len = GOSSIP_APP_MAX + 1;
    ck_assert_int_eq(gossip_set_meta(sim_gossip(w->sim, 11), &meta),
                     ALLOT_EINVALID);
    world_free(w);
}
END_TEST

static int leave_status = 1;
static void on_left(struct gossip_leave *req, int status)
{
    (void)req;
    leave_status = status;
}

START_TEST(leave)
{
    struct world *w = world_new(10, 12);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    struct gossip_leave req;
    uint64_t t0 = sim_now(w->sim);
    leave_status = 1;
    ck_assert_int_eq(gossip_leave(sim_gossip(w->sim, 2), &req, on_left), 0);
    ck_assert_int_eq(leave_status, 1); /* never from inside the call */
    ck_assert_int_eq(gossip_leave(sim_gossip(w->sim, 2), &req, on_left),
                     ALLOT_EINVALID);
    struct verdict v = {w, 2, GOSSIP_LEFT, 0, w->n};
    ck_assert(sim_run_until_true(w->sim, 30000, 10, all_see, &v));
    REPORT("leave: left everywhere after %" PRIu64 " ms\n",
           sim_now(w->sim) - t0);
    sim_run_for(w->sim, 5000);
    ck_assert_int_eq(leave_status, 0);
    sim_kill(w->sim, 2);
    sim_run_for(w->sim, 60000);
    ck_assert_uint_eq(total_dead_events(w), 0);
    for (int i = 0; i < w->n; i++) {
        if (i != 2) {
            ck_assert_uint_eq(w->ctx[i].left_events, 1);
        }
    }
    world_free(w);
}
END_TEST

/* A member that keeps publishing metadata (its demand, say) after it
 * called gossip_leave(): refused, so its leave is not replaced by news of
 * it alive, completes, and is seen as a leave, not a death, even while
 * every other member republishes its own metadata each second. */
START_TEST(leave_under_churn)
{
    struct world *w = world_new(100, 15);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 120000, 100, sim_all_alive, w));
    uint8_t app[8] = {0};
    struct gossip_meta meta = {
        .role = GOSSIP_ROLE_AGENT, .app = app, .app_len = sizeof app};
    struct gossip_leave req;
    leave_status = 1;
    for (uint32_t sec = 0; sec < 20; sec++) {
        for (int i = 0; i < w->n; i++) {
            app[0] = (uint8_t)sec;
            app[1] = (uint8_t)i;
            int rv = gossip_set_meta(sim_gossip(w->sim, i), &meta);
            ck_assert_int_eq(rv, i == 7 && sec > 5 ? ALLOT_ESHUTDOWN : 0);
        }
        if (sec == 5) {
            ck_assert_int_eq(gossip_leave(sim_gossip(w->sim, 7), &req, on_left),
                             0);
        }
        sim_run_for(w->sim, 1000);
    }
    ck_assert_int_eq(leave_status, 0);
    sim_kill(w->sim, 7);
    struct verdict v = {w, 7, GOSSIP_LEFT, 0, w->n};
    ck_assert(sim_run_until_true(w->sim, 30000, 100, all_see, &v));
    ck_assert_uint_eq(total_dead_events(w), 0);
    world_free(w);
}
END_TEST

START_TEST(local_health)
{
    struct world *w = world_new(10, 13);
    world_start_all(w);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    /* n0 can send but hears nothing: no acks, no nacks. */
    for (int i = 1; i < w->n; i++) {
        ck_assert_int_eq(sim_set_link_loss(w->sim, i, 0, 1.0), 0);
    }
    uint64_t p0 = stats_of(w, 0).probes, p1 = stats_of(w, 1).probes;
    sim_run_for(w->sim, 60000);
    struct gossip_stats s0 = stats_of(w, 0), s1 = stats_of(w, 1);
    REPORT("local_health: deaf n0: awareness %u, %" PRIu64
           " probes in 60 s vs %" PRIu64 " for a healthy member\n",
           s0.awareness, s0.probes - p0, s1.probes - p1);
    ck_assert_uint_ge(s0.awareness, 4);
    ck_assert_uint_lt((s0.probes - p0) * 2, s1.probes - p1);
    ck_assert_uint_eq(s1.awareness, 0);
    /* The others cannot get an ack from n0, so they rightly declare it
     * dead (more than once: push-pull replies arrive over streams, so it
     * learns of it and refutes); its own accusations of the others were
     * refuted: nobody else is ever declared dead. */
    ck_assert_uint_ge(w->dead_about[0], (uint64_t)w->n - 1);
    for (int i = 1; i < w->n; i++) {
        ck_assert_uint_eq(w->dead_about[i], 0);
    }
    world_free(w);
}
END_TEST

START_TEST(key_rotation)
{
    struct world *w = world_new(7, 14);
    world_start_all(w);
    /* n6 is restarted below with only the new key. */
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    uint8_t old_key[GOSSIP_KEY_SIZE], new_key[GOSSIP_KEY_SIZE];
    test_key(old_key, 0x42);
    test_key(new_key, 0x77);
    sim_kill(w->sim, 6);
    struct verdict v = {w, 6, GOSSIP_DEAD, 0, 6};
    ck_assert(sim_run_until_true(w->sim, 120000, 100, all_see, &v));

    struct gossip_config cfg;
    world_config(w, 6, &cfg);
    cfg.keyring.n = 1;
    memcpy(cfg.keyring.keys[0], new_key, GOSSIP_KEY_SIZE);
    ck_assert_int_eq(sim_start(w->sim, 6, &cfg), 0);
    struct gossip_addr seed = sim_addr(w->sim, 0);
    ck_assert_int_eq(gossip_join(sim_gossip(w->sim, 6), &seed, 1), 0);
    uint64_t auth0 = stats_of(w, 0).dropped[GOSSIP_DROP_AUTH];
    sim_run_for(w->sim, 20000);
    /* Not admitted: the seed dropped its join, it knows only itself. */
    ck_assert_uint_gt(stats_of(w, 0).dropped[GOSSIP_DROP_AUTH], auth0);
    ck_assert_uint_eq(gossip_member_count(sim_gossip(w->sim, 6), GOSSIP_ALIVE),
                      1);
    ck_assert_int_eq(state_at(w, 0, 6), GOSSIP_DEAD);

    /* Rotation: install everywhere, then use everywhere. */
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(gossip_key_install(sim_gossip(w->sim, i), new_key), 0);
        ck_assert_int_eq(gossip_key_install(sim_gossip(w->sim, i), new_key),
                         ALLOT_EEXISTS);
    }
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(gossip_key_use(sim_gossip(w->sim, i), new_key), 0);
    }
    uint64_t t0 = sim_now(w->sim);
    ck_assert(sim_run_until_true(w->sim, 60000, 100, sim_all_alive, w));
    REPORT("key_rotation: the new-key member admitted %" PRIu64
           " ms after the others switched\n",
           sim_now(w->sim) - t0);
    /* Then the old key goes; a member with only the old one is out. */
    for (int i = 0; i < 6; i++) {
        struct gossip *g = sim_gossip(w->sim, i);
        ck_assert_int_eq(gossip_key_remove(g, new_key), ALLOT_EINVALID);
        ck_assert_int_eq(gossip_key_remove(g, old_key), 0);
        ck_assert_int_eq(gossip_key_remove(g, old_key), ALLOT_ENOT_FOUND);
        struct gossip_keyring kr;
        gossip_keyring_get(g, &kr);
        ck_assert_uint_eq(kr.n, 1);
        ck_assert_mem_eq(kr.keys[0], new_key, GOSSIP_KEY_SIZE);
    }
    sim_run_for(w->sim, 10000);
    ck_assert(sim_all_alive(w->sim, w));
    world_free(w);
}
END_TEST

static Suite *gossip_sim_suite(void)
{
    Suite *s = suite_create("gossip_sim");
    TCase *tc = tcase_create("sim");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, converge_small);
    tcase_add_test(tc, late_seed_no_islands);
    tcase_add_test(tc, kill_detected);
    tcase_add_test(tc, long_names);
    tcase_add_test(tc, warm_start);
    tcase_add_test(tc, join_catchup);
    tcase_add_test(tc, detection_n30);
    tcase_add_test(tc, loss_no_false_dead);
    tcase_add_test(tc, partition_heals);
    tcase_add_test(tc, pause_refutes);
    tcase_add_test(tc, restart_rejoins);
    tcase_add_test(tc, keyed_newest);
    tcase_add_test(tc, plain_broadcast);
    tcase_add_test(tc, push_pull_repairs);
    tcase_add_test(tc, meta_spreads);
    tcase_add_test(tc, leave);
    tcase_add_test(tc, leave_under_churn);
    tcase_add_test(tc, local_health);
    tcase_add_test(tc, key_rotation);
    tcase_add_test(tc, converge_1000);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    log_set_level(LOG_WARN);
    SRunner *sr = srunner_create(gossip_sim_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
