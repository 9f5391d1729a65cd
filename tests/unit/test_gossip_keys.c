/* test_gossip_keys.c - keyring commands across the fleet (gossip_key_cmd),
 * in the deterministic simulation (gossip/sim.c) and on the decoder.
 *
 *   fleet_rotation     50 members: LIST, INSTALL K2, LIST, USE K2, LIST,
 *                      REMOVE K1, LIST from different members; every ring
 *                      checked after each step, LIST counts exact, the
 *                      cluster still converges and broadcasts, no message
 *                      fails authentication; re-running REMOVE changes
 *                      nothing and still succeeds
 *   remove_primary     refused locally (nothing sent, nobody changes) and
 *                      remotely (the member whose primary it is answers with
 *                      an error the results name; the others apply it)
 *   partitioned        a member cut off during INSTALL: ALLOT_ETIMEOUT,
 *                      acks N-1, the silent member named; after healing it
 *                      still lacks the key until the command is re-run
 *   lost_reply_retried a member whose answer is lost is asked again
 *                      directly and answers from memory (applied once)
 *   keyring_changed    fires on each change by the local API, not for
 *                      no-ops; a lone member's command completes from the
 *                      loop, not from inside the call
 *   limits             argument checks, the cap on outstanding commands,
 *                      gossip_free() completing them with ALLOT_ESHUTDOWN
 *   decoder            KEY_CMD / KEY_REPLY round trips; every truncation
 *                      and each out-of-bounds field refused; on the receive
 *                      path malformed ones are dropped and counted and change
 *                      nothing; a command is applied once per id, a retry
 *                      is answered again
 *   flood_bounded      hundreds of distinct commands: each applied, the
 *                      queue never holds more than GBQ_CMD_MAX (one past it
 *                      is refused); the id memory is bounded */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "buf.h"
#include "crypt.h"
#include "gossip.h"
#include "lib.h"
#include "msg.h"
#include "queue.h"
#include "sim.h"

#define MAX_NODES 64

/* --- A world of simulated members --------------------------------------- */

struct world;

struct node_ctx
{
    struct world *w;
    int id;
    unsigned keyring_changes;
    uint64_t keyed_recv;
    char name[16];
};

struct world
{
    struct sim *sim;
    int n;
    struct node_ctx ctx[MAX_NODES];
};

static uint8_t K1[GOSSIP_KEY_SIZE], K2[GOSSIP_KEY_SIZE], K3[GOSSIP_KEY_SIZE];

static void keys_init(void)
{
    memset(K1, 0x42, sizeof K1);
    memset(K2, 0x77, sizeof K2);
    memset(K3, 0x13, sizeof K3);
}

static void on_keyring_changed(void *data)
{
    struct node_ctx *c = data;
    c->keyring_changes++;
}

static void on_broadcast(void *data, const char *key, size_t key_len,
                         uint64_t version, const void *buf, size_t len)
{
    struct node_ctx *c = data;
    (void)key_len;
    (void)version;
    (void)buf;
    (void)len;
    c->keyed_recv += key != NULL;
}

static struct world *world_new(int n, uint64_t seed)
{
    ck_assert_int_le(n, MAX_NODES);
    struct world *w = calloc(1, sizeof *w);
    ck_assert_ptr_nonnull(w);
    w->sim = sim_new(seed);
    ck_assert_ptr_nonnull(w->sim);
    w->n = n;
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
    gossip_config_init(&cfg);
    cfg.name = w->ctx[i].name;
    cfg.keyring.n = 1;
    memcpy(cfg.keyring.keys[0], K1, GOSSIP_KEY_SIZE);
    cfg.cb = (struct gossip_callbacks){.data = &w->ctx[i],
                                       .broadcast = on_broadcast,
                                       .keyring_changed = on_keyring_changed};
    ck_assert_int_eq(sim_start(w->sim, i, &cfg), 0);
}

/* Start every member (joining through node 0) and wait for convergence. */
static struct world *world_up(int n, uint64_t seed)
{
    struct world *w = world_new(n, seed);
    struct gossip_addr seed_addr = sim_addr(w->sim, 0);
    for (int i = 0; i < n; i++) {
        world_start(w, i);
        ck_assert_int_eq(gossip_join(sim_gossip(w->sim, i), &seed_addr, 1), 0);
    }
    ck_assert(sim_run_until_true(w->sim, 120000, 100, sim_all_alive, w));
    return w;
}

static void world_free(struct world *w)
{
    sim_free(w->sim);
    free(w);
}

static struct gossip_keyring ring_of(struct world *w, int i)
{
    struct gossip_keyring kr;
    gossip_keyring_get(sim_gossip(w->sim, i), &kr);
    return kr;
}

static bool ring_has(const struct gossip_keyring *kr, const uint8_t *key)
{
    return gcrypt_find(kr, key) >= 0;
}

static bool ring_primary(const struct gossip_keyring *kr, const uint8_t *key)
{
    return gcrypt_find(kr, key) == 0;
}

static struct gossip_stats stats_of(struct world *w, int i)
{
    struct gossip_stats st;
    gossip_stats(sim_gossip(w->sim, i), &st);
    return st;
}

static uint64_t total_auth_drops(struct world *w)
{
    uint64_t n = 0;
    for (int i = 0; i < w->n; i++) {
        if (sim_gossip(w->sim, i) != NULL) {
            n += stats_of(w, i).dropped[GOSSIP_DROP_AUTH];
        }
    }
    return n;
}

/* --- Running a command --------------------------------------------------- */

struct cmd
{
    struct gossip_key_cmd req;
    int calls;
    int status;
    uint64_t done_at;
    struct sim *sim;
};

static void on_cmd_done(struct gossip_key_cmd *req, int status)
{
    struct cmd *c = req->data;
    c->calls++;
    c->status = status;
    c->done_at = sim_now(c->sim);
}

static bool cmd_done(struct sim *s, void *data)
{
    (void)s;
    return ((struct cmd *)data)->calls > 0;
}

/* Start op from node `from` and run until its callback; returns the status.
 * The callback must run exactly once and never from inside the call. */
static int run_cmd(struct world *w, int from, struct cmd *c,
                   enum gossip_key_op op, const uint8_t *key,
                   uint32_t timeout_ms)
{
    memset(c, 0, sizeof *c);
    c->req.data = c;
    c->sim = w->sim;
    uint64_t t0 = sim_now(w->sim);
    ck_assert_int_eq(gossip_key_cmd(sim_gossip(w->sim, from), &c->req, op, key,
                                    timeout_ms, on_cmd_done),
                     0);
    ck_assert_int_eq(c->calls, 0);
    ck_assert(sim_run_until_true(w->sim, (uint64_t)timeout_ms + 1000, 1,
                                 cmd_done, c));
    ck_assert_ptr_eq(c->req.data, c);
    ck_assert_int_eq(c->req.op, op);
    printf("  %s from n%d: status %s, asked %u, acks %u, errors %u, "
           "%" PRIu64 " ms (virtual)\n",
           gossip_key_op_name(op), from, allot_error_name(c->status),
           c->req.asked, c->req.acks, c->req.errors, c->done_at - t0);
    /* Exactly once. */
    sim_run_for(w->sim, 100);
    ck_assert_int_eq(c->calls, 1);
    return c->status;
}

static const struct gossip_key_count *count_of(const struct gossip_key_cmd *r,
                                               const uint8_t *key)
{
    for (unsigned i = 0; i < r->n_keys; i++) {
        if (memcmp(r->keys[i].key, key, GOSSIP_KEY_SIZE) == 0) {
            return &r->keys[i];
        }
    }
    return NULL;
}

static void check_list(struct world *w, int from, unsigned n_keys,
                       const uint8_t *k_a, uint32_t a_members,
                       uint32_t a_primary, const uint8_t *k_b,
                       uint32_t b_members, uint32_t b_primary)
{
    struct cmd c;
    ck_assert_int_eq(run_cmd(w, from, &c, GOSSIP_KEY_LIST, NULL, 10000), 0);
    ck_assert_uint_eq(c.req.asked, (unsigned)w->n);
    ck_assert_uint_eq(c.req.acks, (unsigned)w->n);
    ck_assert_uint_eq(c.req.errors, 0);
    ck_assert_str_eq(c.req.silent_member, "");
    ck_assert_uint_eq(c.req.n_keys, n_keys);
    ck_assert(!c.req.keys_truncated);
    const struct gossip_key_count *a = count_of(&c.req, k_a);
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq(a->members, a_members);
    ck_assert_uint_eq(a->primary, a_primary);
    if (k_b != NULL) {
        const struct gossip_key_count *b = count_of(&c.req, k_b);
        ck_assert_ptr_nonnull(b);
        ck_assert_uint_eq(b->members, b_members);
        ck_assert_uint_eq(b->primary, b_primary);
    }
}

static void check_changes(struct world *w, unsigned want)
{
    for (int i = 0; i < w->n; i++) {
        ck_assert_msg(w->ctx[i].keyring_changes == want,
                      "n%d: %u keyring changes, want %u", i,
                      w->ctx[i].keyring_changes, want);
    }
}

struct keyed_goal
{
    struct world *w;
    uint64_t version;
};

static bool all_have(struct sim *s, void *data)
{
    struct keyed_goal *k = data;
    for (int i = 0; i < k->w->n; i++) {
        uint64_t v = 0;
        if (gossip_keyed_get(sim_gossip(s, i), "catalog", &v, NULL, 0, NULL) !=
                0 ||
            v != k->version) {
            return false;
        }
    }
    return true;
}

/* A keyed broadcast from node `from` reaches everyone. */
static void check_broadcast(struct world *w, int from, uint64_t version)
{
    ck_assert_int_eq(gossip_broadcast_keyed(sim_gossip(w->sim, from), "catalog",
                                            version, "v", 1),
                     0);
    struct keyed_goal k = {w, version};
    ck_assert(sim_run_until_true(w->sim, 30000, 10, all_have, &k));
}

/* --- Tests -------------------------------------------------------------- */

START_TEST(fleet_rotation)
{
    struct world *w = world_up(50, 21);
    uint64_t auth0 = total_auth_drops(w);
    struct cmd c;

    check_list(w, 3, 1, K1, 50, 50, NULL, 0, 0);
    check_changes(w, 0);

    /* Install K2 everywhere. */
    ck_assert_int_eq(run_cmd(w, 3, &c, GOSSIP_KEY_INSTALL, K2, 10000), 0);
    ck_assert_uint_eq(c.req.asked, 50);
    ck_assert_uint_eq(c.req.acks, 50);
    ck_assert_uint_eq(c.req.errors, 0);
    ck_assert_uint_eq(c.req.n_keys, 0); /* LIST only */
    for (int i = 0; i < w->n; i++) {
        struct gossip_keyring kr = ring_of(w, i);
        ck_assert_uint_eq(kr.n, 2);
        ck_assert(ring_primary(&kr, K1));
        ck_assert(ring_has(&kr, K2));
        ck_assert_uint_eq(stats_of(w, i).key_cmds_recv, i == 3 ? 0 : 2);
    }
    check_changes(w, 1);
    check_list(w, 28, 2, K1, 50, 50, K2, 50, 0);

    /* Use K2 everywhere. */
    ck_assert_int_eq(run_cmd(w, 17, &c, GOSSIP_KEY_USE, K2, 10000), 0);
    ck_assert_uint_eq(c.req.acks, 50);
    for (int i = 0; i < w->n; i++) {
        struct gossip_keyring kr = ring_of(w, i);
        ck_assert_uint_eq(kr.n, 2);
        ck_assert(ring_primary(&kr, K2));
        ck_assert(ring_has(&kr, K1));
    }
    check_changes(w, 2);
    check_list(w, 41, 2, K2, 50, 50, K1, 50, 0);
    check_broadcast(w, 9, 1);
    sim_run_for(w->sim, 10000);
    ck_assert(sim_all_alive(w->sim, w));

    /* Remove K1 everywhere. */
    ck_assert_int_eq(run_cmd(w, 0, &c, GOSSIP_KEY_REMOVE, K1, 10000), 0);
    ck_assert_uint_eq(c.req.acks, 50);
    for (int i = 0; i < w->n; i++) {
        struct gossip_keyring kr = ring_of(w, i);
        ck_assert_uint_eq(kr.n, 1);
        ck_assert(ring_primary(&kr, K2));
        ck_assert(!ring_has(&kr, K1));
    }
    check_changes(w, 3);
    check_list(w, 49, 1, K2, 50, 50, NULL, 0, 0);

    /* Running it again is safe: everyone acks, nothing changes. */
    ck_assert_int_eq(run_cmd(w, 5, &c, GOSSIP_KEY_REMOVE, K1, 10000), 0);
    ck_assert_uint_eq(c.req.acks, 50);
    check_changes(w, 3);

    /* The cluster lives on under K2 alone, and at no point did a message
     * fail authentication. */
    check_broadcast(w, 33, 2);
    sim_run_for(w->sim, 30000);
    ck_assert(sim_all_alive(w->sim, w));
    ck_assert_uint_eq(total_auth_drops(w), auth0);
    world_free(w);
}
END_TEST

START_TEST(remove_primary)
{
    struct world *w = world_up(10, 22);
    struct gossip *g0 = sim_gossip(w->sim, 0);
    struct cmd c;
    memset(&c, 0, sizeof c);
    c.req.data = &c;

    /* Locally refused: no callback, nothing queued, nothing changes. */
    uint32_t q0 = stats_of(w, 0).queue_len;
    ck_assert_int_eq(
        gossip_key_cmd(g0, &c.req, GOSSIP_KEY_REMOVE, K1, 10000, on_cmd_done),
        ALLOT_EINVALID);
    ck_assert_uint_eq(stats_of(w, 0).queue_len, q0);
    ck_assert_int_eq(
        gossip_key_cmd(g0, &c.req, GOSSIP_KEY_USE, K3, 10000, on_cmd_done),
        ALLOT_ENOT_FOUND);
    sim_run_for(w->sim, 10000);
    ck_assert_int_eq(c.calls, 0);
    check_changes(w, 0);
    for (int i = 0; i < w->n; i++) {
        ck_assert_uint_eq(stats_of(w, i).key_cmds_recv, 0);
        ck_assert_uint_eq(ring_of(w, i).n, 1);
    }

    /* Remotely: n5 makes K2 its primary on its own; n0 (primary K1) then
     * removes K2 from the fleet. n5 refuses; its answer still reaches n0
     * (sealed with K1, which the command named). */
    ck_assert_int_eq(run_cmd(w, 2, &c, GOSSIP_KEY_INSTALL, K2, 10000), 0);
    ck_assert_uint_eq(c.req.acks, 10);
    ck_assert_int_eq(gossip_key_use(sim_gossip(w->sim, 5), K2), 0);
    ck_assert_uint_eq(w->ctx[5].keyring_changes, 2);
    ck_assert_int_eq(run_cmd(w, 0, &c, GOSSIP_KEY_REMOVE, K2, 10000),
                     ALLOT_EINVALID);
    ck_assert_uint_eq(c.req.asked, 10);
    ck_assert_uint_eq(c.req.acks, 9);
    ck_assert_uint_eq(c.req.errors, 1);
    ck_assert_str_eq(c.req.error_member, "n5");
    ck_assert_ptr_nonnull(strstr(c.req.error, "primary"));
    ck_assert_str_eq(c.req.silent_member, "");
    for (int i = 0; i < w->n; i++) {
        struct gossip_keyring kr = ring_of(w, i);
        if (i == 5) {
            ck_assert_uint_eq(kr.n, 2);
            ck_assert(ring_primary(&kr, K2));
        } else {
            ck_assert_uint_eq(kr.n, 1);
            ck_assert(ring_primary(&kr, K1));
        }
        ck_assert_uint_eq(w->ctx[i].keyring_changes, 2);
    }
    /* n5 still accepts K1, so LIST shows who uses what. */
    check_list(w, 7, 2, K1, 10, 9, K2, 1, 1);
    world_free(w);
}
END_TEST

START_TEST(partitioned)
{
    struct world *w = world_up(20, 23);
    struct cmd c;
    sim_set_group(w->sim, 7, 1);
    ck_assert_int_eq(run_cmd(w, 0, &c, GOSSIP_KEY_INSTALL, K2, 5000),
                     ALLOT_ETIMEOUT);
    ck_assert_uint_eq(c.req.asked, 20);
    ck_assert_uint_eq(c.req.acks, 19);
    ck_assert_uint_eq(c.req.errors, 0);
    ck_assert_str_eq(c.req.silent_member, "n7");
    ck_assert_str_eq(c.req.error_member, "");
    for (int i = 0; i < w->n; i++) {
        struct gossip_keyring kr = ring_of(w, i);
        ck_assert(ring_has(&kr, K2) == (i != 7));
    }

    /* Healed: n7 is back, but nobody tells it about the command. */
    sim_heal(w->sim);
    ck_assert(sim_run_until_true(w->sim, 120000, 100, sim_all_alive, w));
    sim_run_for(w->sim, 60000);
    struct gossip_keyring kr7 = ring_of(w, 7);
    ck_assert_uint_eq(kr7.n, 1);
    ck_assert_uint_eq(w->ctx[7].keyring_changes, 0);

    /* Re-run: everyone acks, only n7 changes. */
    ck_assert_int_eq(run_cmd(w, 11, &c, GOSSIP_KEY_INSTALL, K2, 5000), 0);
    ck_assert_uint_eq(c.req.asked, 20);
    ck_assert_uint_eq(c.req.acks, 20);
    kr7 = ring_of(w, 7);
    ck_assert(ring_has(&kr7, K2));
    check_changes(w, 1);
    world_free(w);
}
END_TEST

START_TEST(lost_reply_retried)
{
    struct world *w = world_up(20, 24);
    /* Everything n4 sends to n0 is lost for the first second: its answer
     * (and its acks) never arrive; later gossip copies of the command are
     * dropped as already seen, so only a direct retry can fix it. */
    ck_assert_int_eq(sim_set_link_loss(w->sim, 4, 0, 1.0), 0);
    struct cmd c;
    memset(&c, 0, sizeof c);
    c.req.data = &c;
    c.sim = w->sim;
    ck_assert_int_eq(gossip_key_cmd(sim_gossip(w->sim, 0), &c.req,
                                    GOSSIP_KEY_INSTALL, K2, 8000, on_cmd_done),
                     0);
    uint64_t t0 = sim_now(w->sim);
    sim_run_for(w->sim, 1000);
    ck_assert_int_eq(c.calls, 0);
    struct gossip_keyring kr4 = ring_of(w, 4);
    ck_assert(ring_has(&kr4, K2));
    ck_assert_int_eq(sim_set_link_loss(w->sim, 4, 0, 0.0), 0);
    /* The first retry is at 2 s (a quarter of the timeout). */
    ck_assert(sim_run_until_true(w->sim, 8000, 1, cmd_done, &c));
    ck_assert_int_eq(c.status, 0);
    ck_assert_uint_eq(c.req.acks, 20);
    ck_assert_uint_ge(c.done_at - t0, 2000);
    ck_assert_uint_eq(stats_of(w, 4).key_cmds_recv, 1);
    ck_assert_uint_eq(w->ctx[4].keyring_changes, 1);
    world_free(w);
}
END_TEST

START_TEST(keyring_changed)
{
    struct world *w = world_new(1, 25);
    world_start(w, 0);
    struct gossip *g = sim_gossip(w->sim, 0);
    struct node_ctx *c0 = &w->ctx[0];
    ck_assert_int_eq(gossip_key_install(g, K2), 0);
    ck_assert_uint_eq(c0->keyring_changes, 1);
    ck_assert_int_eq(gossip_key_install(g, K2), ALLOT_EEXISTS);
    ck_assert_uint_eq(c0->keyring_changes, 1);
    ck_assert_int_eq(gossip_key_use(g, K2), 0);
    ck_assert_uint_eq(c0->keyring_changes, 2);
    ck_assert_int_eq(gossip_key_use(g, K2), 0); /* already primary */
    ck_assert_uint_eq(c0->keyring_changes, 2);
    ck_assert_int_eq(gossip_key_remove(g, K1), 0);
    ck_assert_uint_eq(c0->keyring_changes, 3);
    ck_assert_int_eq(gossip_key_remove(g, K1), ALLOT_ENOT_FOUND);
    ck_assert_int_eq(gossip_key_remove(g, K2), ALLOT_EINVALID);
    ck_assert_uint_eq(c0->keyring_changes, 3);

    /* Alone: the command completes from the loop, counting only itself. */
    struct cmd c;
    ck_assert_int_eq(run_cmd(w, 0, &c, GOSSIP_KEY_INSTALL, K1, 1000), 0);
    ck_assert_uint_eq(c.req.asked, 1);
    ck_assert_uint_eq(c.req.acks, 1);
    ck_assert_uint_eq(c0->keyring_changes, 4);
    ck_assert_int_eq(run_cmd(w, 0, &c, GOSSIP_KEY_LIST, NULL, 1000), 0);
    ck_assert_uint_eq(c.req.n_keys, 2);
    ck_assert_mem_eq(c.req.keys[0].key, K2, GOSSIP_KEY_SIZE);
    ck_assert_uint_eq(c.req.keys[0].primary, 1);
    ck_assert_mem_eq(c.req.keys[1].key, K1, GOSSIP_KEY_SIZE);
    ck_assert_uint_eq(c.req.keys[1].members, 1);
    ck_assert_uint_eq(c.req.keys[1].primary, 0);
    ck_assert_uint_eq(c0->keyring_changes, 4);
    world_free(w);
}
END_TEST

START_TEST(limits)
{
    struct world *w = world_up(5, 26);
    struct gossip *g = sim_gossip(w->sim, 0);
    struct cmd c[GOSSIP_KEYCMD_MAX + 1];
    memset(c, 0, sizeof c);
    for (int i = 0; i <= GOSSIP_KEYCMD_MAX; i++) {
        c[i].req.data = &c[i];
        c[i].sim = w->sim;
    }
    ck_assert_int_eq(gossip_key_cmd(g, &c[0].req, (enum gossip_key_op)4, K2,
                                    1000, on_cmd_done),
                     ALLOT_EINVALID);
    ck_assert_int_eq(gossip_key_cmd(g, &c[0].req, GOSSIP_KEY_INSTALL, NULL,
                                    1000, on_cmd_done),
                     ALLOT_EINVALID);
    ck_assert_int_eq(
        gossip_key_cmd(g, &c[0].req, GOSSIP_KEY_LIST, NULL, 0, on_cmd_done),
        ALLOT_EINVALID);
    ck_assert_int_eq(gossip_key_cmd(g, &c[0].req, GOSSIP_KEY_LIST, NULL,
                                    3600001, on_cmd_done),
                     ALLOT_EINVALID);
    ck_assert_int_eq(
        gossip_key_cmd(g, &c[0].req, GOSSIP_KEY_LIST, NULL, 1000, NULL),
        ALLOT_EINVALID);
    for (int i = 0; i < GOSSIP_KEYCMD_MAX; i++) {
        ck_assert_int_eq(gossip_key_cmd(g, &c[i].req, GOSSIP_KEY_LIST, NULL,
                                        60000, on_cmd_done),
                         0);
    }
    ck_assert_int_eq(gossip_key_cmd(g, &c[GOSSIP_KEYCMD_MAX].req,
                                    GOSSIP_KEY_LIST, NULL, 60000, on_cmd_done),
                     ALLOT_EUNAVAILABLE);
    /* Cut n0 off so they stay outstanding, then free it. */
    sim_set_group(w->sim, 0, 1);
    sim_run_for(w->sim, 1000);
    sim_kill(w->sim, 0);
    for (int i = 0; i < GOSSIP_KEYCMD_MAX; i++) {
        ck_assert_int_eq(c[i].calls, 1);
        ck_assert_int_eq(c[i].status, ALLOT_ESHUTDOWN);
        ck_assert_uint_eq(c[i].req.asked, 5);
        ck_assert_uint_eq(c[i].req.acks, 1);
        ck_assert_str_ne(c[i].req.silent_member, "");
    }
    ck_assert_int_eq(c[GOSSIP_KEYCMD_MAX].calls, 0);
    world_free(w);
}
END_TEST

/* --- Decoder and receive path ------------------------------------------- */

static const struct gossip_addr origin_addr = {0x0a000063, 7946};

static size_t put_cmd(uint8_t *buf, size_t cap, uint64_t id, uint8_t flags,
                      uint8_t op, const uint8_t *key)
{
    struct gbuf_w w;
    gbuf_w_fixed(&w, buf, cap);
    uint8_t kid[GCRYPT_KEY_ID];
    gcrypt_key_id(K1, kid);
    gmsg_put_key_cmd(&w, id, flags, "origin", &origin_addr, op, kid, key);
    ck_assert(!w.failed);
    return w.len;
}

/* Every prefix that is not the whole message is refused. */
static void refuse_cuts(const uint8_t *buf, size_t len)
{
    for (size_t cut = 0; cut < len; cut++) {
        ck_assert_msg(gmsg_validate(buf, cut, false) == ALLOT_EPROTOCOL,
                      "cut at %zu accepted", cut);
    }
    ck_assert_int_eq(gmsg_validate(buf, len, false), 0);
}

START_TEST(decoder)
{
    uint8_t buf[1024];
    struct gbuf_r r, body;
    uint8_t type;

    /* KEY_CMD round trip. */
    size_t len = put_cmd(buf, sizeof buf, 1ull << 62, GMSG_KC_RETRY,
                         GOSSIP_KEY_INSTALL, K2);
    refuse_cuts(buf, len);
    gbuf_r_init(&r, buf, len);
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(type, GMSG_KEY_CMD);
    struct gmsg_key_cmd kc;
    ck_assert_int_eq(gmsg_get_key_cmd(&body, &kc), 0);
    ck_assert_uint_eq(kc.id, 1ull << 62);
    ck_assert_uint_eq(kc.flags, GMSG_KC_RETRY);
    ck_assert(gmsg_str_eq(kc.origin, "origin"));
    ck_assert(gossip_addr_eq(&kc.origin_addr, &origin_addr));
    ck_assert_uint_eq(kc.op, GOSSIP_KEY_INSTALL);
    ck_assert_mem_eq(kc.key, K2, GOSSIP_KEY_SIZE);
    uint8_t kid[GCRYPT_KEY_ID];
    gcrypt_key_id(K1, kid);
    ck_assert_mem_eq(kc.reply_key_id, kid, GCRYPT_KEY_ID);
    len = put_cmd(buf, sizeof buf, 5, 0, GOSSIP_KEY_LIST, NULL);
    refuse_cuts(buf, len);

    /* KEY_REPLY round trip. */
    uint8_t keys[2 * GOSSIP_KEY_SIZE];
    memcpy(keys, K2, GOSSIP_KEY_SIZE);
    memcpy(keys + GOSSIP_KEY_SIZE, K1, GOSSIP_KEY_SIZE);
    struct gbuf_w w;
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_key_reply(&w, 9, "member-1", ALLOT_EINVALID, "no: primary key",
                       keys, 2);
    ck_assert(!w.failed);
    refuse_cuts(buf, w.len);
    gbuf_r_init(&r, buf, w.len);
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(type, GMSG_KEY_REPLY);
    struct gmsg_key_reply kr;
    ck_assert_int_eq(gmsg_get_key_reply(&body, &kr), 0);
    ck_assert_uint_eq(kr.id, 9);
    ck_assert(gmsg_str_eq(kr.from, "member-1"));
    ck_assert_int_eq(kr.status, ALLOT_EINVALID);
    ck_assert(gmsg_str_eq(kr.error, "no: primary key"));
    ck_assert_uint_eq(kr.n_keys, 2);
    ck_assert_mem_eq(kr.keys, keys, sizeof keys);

    /* Out of bounds: op 4, an unknown flag, a key on LIST, no key or a
     * short one on INSTALL, an empty origin. */
    static const uint8_t zeros[GOSSIP_KEY_SIZE];
    struct
    {
        uint8_t flags, op;
        const char *origin;
        size_t key_len;
    } bad[] = {
        {0, 4, "o", GOSSIP_KEY_SIZE},
        {2, GOSSIP_KEY_INSTALL, "o", GOSSIP_KEY_SIZE},
        {0, GOSSIP_KEY_LIST, "o", GOSSIP_KEY_SIZE},
        {0, GOSSIP_KEY_INSTALL, "o", 0},
        {0, GOSSIP_KEY_REMOVE, "o", GOSSIP_KEY_SIZE - 1},
        {0, GOSSIP_KEY_USE, "", GOSSIP_KEY_SIZE},
        {0, GOSSIP_KEY_USE, "o o", GOSSIP_KEY_SIZE},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* Written field by field, to reach what the encoder never makes. */
        gbuf_w_fixed(&w, buf, sizeof buf);
        gbuf_put_u8(&w, GMSG_KEY_CMD);
        gbuf_put_u8(&w, 0); /* body length, patched below */
        gbuf_put_uvarint(&w, 7);
        gbuf_put_u8(&w, bad[i].flags);
        gbuf_put_blob(&w, bad[i].origin, strlen(bad[i].origin));
        gbuf_put_addr(&w, &origin_addr);
        gbuf_put_u8(&w, bad[i].op);
        gbuf_put_bytes(&w, kid, sizeof kid);
        gbuf_put_blob(&w, zeros, bad[i].key_len);
        ck_assert(!w.failed && w.len - 2 < 128);
        buf[1] = (uint8_t)(w.len - 2);
        ck_assert_msg(gmsg_validate(buf, w.len, false) == ALLOT_EPROTOCOL,
                      "bad key command %zu accepted", i);
    }
    /* Replies: 9 keys, status 256, a control character, text too long. */
    char long_text[GOSSIP_KEYCMD_ERROR_MAX + 1];
    memset(long_text, 'x', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    struct
    {
        uint64_t status;
        const char *text;
        uint8_t n_keys;
    } bad_reply[] = {
        {0, "", GOSSIP_KEYRING_MAX + 1},
        {256, "", 0},
        {1, "line\nbreak", 0},
        {1, long_text, 0},
    };
    static uint8_t big[4096];
    for (size_t i = 0; i < sizeof bad_reply / sizeof bad_reply[0]; i++) {
        gbuf_w_fixed(&w, big, sizeof big);
        gbuf_put_u8(&w, GMSG_KEY_REPLY);
        gbuf_put_uvarint(&w, 0); /* placeholder, below */
        size_t b = w.len;
        gbuf_put_uvarint(&w, 7);
        gbuf_put_blob(&w, "m", 1);
        gbuf_put_uvarint(&w, bad_reply[i].status);
        gbuf_put_blob(&w, bad_reply[i].text, strlen(bad_reply[i].text));
        gbuf_put_u8(&w, bad_reply[i].n_keys);
        for (unsigned k = 0; k < bad_reply[i].n_keys; k++) {
            gbuf_put_bytes(&w, zeros, sizeof zeros);
        }
        ck_assert(!w.failed);
        /* Rewrite with the real two-byte varint length. */
        size_t n = w.len - b;
        memmove(big + 3, big + b, n);
        big[1] = (uint8_t)(0x80 | (n & 0x7f));
        big[2] = (uint8_t)(n >> 7);
        ck_assert_msg(gmsg_validate(big, n + 3, false) == ALLOT_EPROTOCOL,
                      "bad key reply %zu accepted", i);
    }

    /* Every single-bit flip is refused or decodes within bounds. */
    len = put_cmd(buf, sizeof buf, 3, 0, GOSSIP_KEY_REMOVE, K2);
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            uint8_t copy[256];
            memcpy(copy, buf, len);
            copy[i] ^= (uint8_t)(1u << bit);
            (void)gmsg_validate(copy, len, false);
        }
    }
}
END_TEST

static void send_sealed(struct gossip *g, const uint8_t *plain, size_t len)
{
    static uint8_t sealed[GOSSIP_PACKET_MAX];
    gcrypt_seal(K1, GCRYPT_PACKET, plain, len, sealed);
    const struct gossip_addr from = {0x0a000063, 7946};
    gossip_recv_packet(g, &from, sealed, len + GCRYPT_OVERHEAD);
}

START_TEST(receive_path)
{
    struct world *w = world_new(1, 27);
    world_start(w, 0);
    struct gossip *g = sim_gossip(w->sim, 0);
    uint8_t buf[512];
    struct sim_stats ss0, ss1;

    /* Authentic but malformed: a short key on INSTALL, then a good command
     * followed by garbage in the same datagram. Both dropped whole. */
    size_t len = put_cmd(buf, sizeof buf, 11, 0, GOSSIP_KEY_INSTALL, K2);
    size_t key_at = len - GOSSIP_KEY_SIZE - 1;
    ck_assert_uint_eq(buf[key_at], GOSSIP_KEY_SIZE);
    buf[key_at] = GOSSIP_KEY_SIZE - 1;
    send_sealed(g, buf, len);
    len = put_cmd(buf, sizeof buf, 12, 0, GOSSIP_KEY_INSTALL, K2);
    buf[len++] = GMSG_KEY_REPLY;
    buf[len++] = 40;
    send_sealed(g, buf, len);
    struct gossip_stats st;
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.dropped[GOSSIP_DROP_MALFORMED], 2);
    ck_assert_uint_eq(st.key_cmds_recv, 0);
    ck_assert_uint_eq(ring_of(w, 0).n, 1);
    ck_assert_uint_eq(w->ctx[0].keyring_changes, 0);

    /* Good: applied once, answered (to the origin's address: in the
     * simulation that is unreachable, which counts it). */
    sim_stats(w->sim, &ss0);
    len = put_cmd(buf, sizeof buf, 12, 0, GOSSIP_KEY_INSTALL, K2);
    send_sealed(g, buf, len);
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.key_cmds_recv, 1);
    struct gossip_keyring kr0 = ring_of(w, 0);
    ck_assert(ring_has(&kr0, K2));
    ck_assert_uint_eq(w->ctx[0].keyring_changes, 1);
    sim_stats(w->sim, &ss1);
    ck_assert_uint_eq(ss1.unreachable - ss0.unreachable, 1);
    /* The same id again: ignored, no answer. */
    send_sealed(g, buf, len);
    sim_stats(w->sim, &ss0);
    ck_assert_uint_eq(ss0.unreachable, ss1.unreachable);
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.key_cmds_recv, 1);
    /* Asked again directly: answered again, not applied again. */
    len = put_cmd(buf, sizeof buf, 12, GMSG_KC_RETRY, GOSSIP_KEY_INSTALL, K2);
    send_sealed(g, buf, len);
    sim_stats(w->sim, &ss1);
    ck_assert_uint_eq(ss1.unreachable - ss0.unreachable, 1);
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.key_cmds_recv, 1);
    ck_assert_uint_eq(w->ctx[0].keyring_changes, 1);
    /* A remote REMOVE of its primary is refused, and changes nothing. */
    len = put_cmd(buf, sizeof buf, 13, 0, GOSSIP_KEY_REMOVE, K1);
    send_sealed(g, buf, len);
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.key_cmds_recv, 2);
    ck_assert_uint_eq(ring_of(w, 0).n, 2);
    /* A reply for no command of ours is ignored. */
    struct gbuf_w wr;
    gbuf_w_fixed(&wr, buf, sizeof buf);
    gmsg_put_key_reply(&wr, 12, "origin", 0, NULL, NULL, 0);
    send_sealed(g, buf, wr.len);
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.dropped[GOSSIP_DROP_MALFORMED], 2);
    world_free(w);
}
END_TEST

START_TEST(flood_bounded)
{
    struct world *w = world_new(1, 28);
    world_start(w, 0);
    struct gossip *g = sim_gossip(w->sim, 0);
    uint8_t buf[256];
    /* 200 distinct commands at once: each applied (a LIST: no change) and
     * queued to be passed on. Each answer to the (unreachable) originator
     * carries queued messages too, so the queue drains as it fills; it
     * never holds more than GBQ_CMD_MAX commands. */
    for (uint64_t id = 1; id <= 200; id++) {
        size_t len = put_cmd(buf, sizeof buf, id, 0, GOSSIP_KEY_LIST, NULL);
        send_sealed(g, buf, len);
    }
    struct gossip_stats st;
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.key_cmds_recv, 200);
    ck_assert_uint_le(st.queue_len, GBQ_CMD_MAX + 1);
    /* The bound itself, on a queue nobody drains: the command past
     * GBQ_CMD_MAX is refused, other messages still fit. */
    {
        struct gbq q;
        gbq_init(&q, NULL, NULL);
        const uint8_t msg[3] = {1, 2, 3};
        for (uint64_t id = 0; id < GBQ_CMD_MAX; id++) {
            ck_assert_int_eq(
                gbq_push(&q, (const char *)&id, sizeof id, msg, 3, GBQ_CMD), 0);
        }
        uint64_t id = GBQ_CMD_MAX;
        ck_assert_int_eq(
            gbq_push(&q, (const char *)&id, sizeof id, msg, 3, GBQ_CMD),
            ALLOT_EUNAVAILABLE);
        ck_assert_int_eq(gbq_push(&q, NULL, 0, msg, 3, 0), 0);
        gbq_free(&q);
    }
    /* Ids are remembered up to KEYCMD_SEEN_MAX (1,024): id 1 is still
     * known with 1,023 newer ones, forgotten with 1,024. */
    size_t len = put_cmd(buf, sizeof buf, 1, 0, GOSSIP_KEY_LIST, NULL);
    send_sealed(g, buf, len);
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.key_cmds_recv, 200);
    for (uint64_t id = 201; id <= 1024; id++) {
        len = put_cmd(buf, sizeof buf, id, 0, GOSSIP_KEY_LIST, NULL);
        send_sealed(g, buf, len);
    }
    len = put_cmd(buf, sizeof buf, 1, 0, GOSSIP_KEY_LIST, NULL);
    send_sealed(g, buf, len);
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.key_cmds_recv, 1024);
    len = put_cmd(buf, sizeof buf, 1025, 0, GOSSIP_KEY_LIST, NULL);
    send_sealed(g, buf, len);
    len = put_cmd(buf, sizeof buf, 1, 0, GOSSIP_KEY_LIST, NULL);
    send_sealed(g, buf, len);
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.key_cmds_recv, 1026);
    fprintf(stderr, "DBG q %u drop %llu\n", st.queue_len,
            (unsigned long long)st.dropped[GOSSIP_DROP_OVERLOAD]);
    ck_assert_uint_le(st.queue_len, GBQ_CMD_MAX + 1);
    world_free(w);
}
END_TEST

static Suite *gossip_keys_suite(void)
{
    Suite *s = suite_create("gossip_keys");
    TCase *tc = tcase_create("keys");
    tcase_set_timeout(tc, 120);
    tcase_add_unchecked_fixture(tc, keys_init, NULL);
    tcase_add_test(tc, decoder);
    tcase_add_test(tc, receive_path);
    tcase_add_test(tc, flood_bounded);
    tcase_add_test(tc, keyring_changed);
    tcase_add_test(tc, limits);
    tcase_add_test(tc, remove_primary);
    tcase_add_test(tc, partitioned);
    tcase_add_test(tc, lost_reply_retried);
    tcase_add_test(tc, fleet_rotation);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    log_set_level(LOG_WARN);
    SRunner *sr = srunner_create(gossip_keys_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
