/* test_gossip_allotd.c - allotd with --gossip, plus agents (gossip-demo
 * processes, role agent), all on 127.0.0.1.
 *
 *   servers_and_agents  3 servers and 2 agents: every server lists all 5
 *                       alive with the right roles and fleet; a write's
 *                       catalog version reaches both agents as the keyed
 *                       broadcast "catalog" with the digest the servers
 *                       report; a SIGKILLed server is declared dead, and
 *                       once restarted is alive again with a higher
 *                       incarnation; a server stopped with SIGTERM is
 *                       seen as left.
 *   key_rotation        install, use, remove a new key through one server:
 *                       every member (servers and agents) acknowledges
 *                       each step, every server's keyring file ends with
 *                       only the new key, the fleet still works (a write
 *                       still reaches the agents), an agent holding only
 *                       the new key is admitted and one holding only the
 *                       retired key is not; bad requests (removing the
 *                       primary, a malformed key) are refused and change
 *                       nothing.
 *
 * GOSSIP_DEMO names the agent binary (set by meson). Waits poll with a
 * bound; durations are printed, never asserted. */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "harness.h"
#include "wire.h"

#define WAIT_MS 60000
#define POLL_MS 100

/* --- Helpers ------------------------------------------------------------- */

static void new_key(char b64[64])
{
    unsigned char k[32];
    ck_assert_int_ge(sodium_init(), 0);
    randombytes_buf(k, sizeof k);
    sodium_bin2base64(b64, 64, k, sizeof k, sodium_base64_VARIANT_ORIGINAL);
}

/* Write a keyring file (one key per line, primary first) under the test
 * directory; returns its path (static buffer per slot). */
static const char *write_keyring(const char *name, const char *k1,
                                 const char *k2)
{
    static char paths[4][600];
    static unsigned slot;
    char *p = paths[slot++ % 4];
    snprintf(p, 600, "%s/%s", harness_dir(), name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%s\n", k1);
    if (k2 != NULL) {
        fprintf(f, "%s\n", k2);
    }
    ck_assert_int_eq(fclose(f), 0);
    return p;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return strdup("");
    }
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
            ck_assert_ptr_nonnull(buf);
        }
    }
    buf[len] = '\0';
    fclose(f);
    return buf;
}

struct agent
{
    pid_t pid;
    char name[16];
    char addr[32];
};

static void agent_start(struct agent *a, const char *name, const char *keyring,
                        const char *seed)
{
    snprintf(a->name, sizeof a->name, "%s", name);
    snprintf(a->addr, sizeof a->addr, "127.0.0.1:%u",
             (unsigned)harness_free_port());
    char *argv[] = {getenv("GOSSIP_DEMO"),
                    "--bind",
                    a->addr,
                    "--name",
                    a->name,
                    "--keyring",
                    (char *)keyring,
                    "--seeds",
                    (char *)seed,
                    "--role",
                    "agent",
                    "--fleet",
                    "eu",
                    "--weight",
                    "2",
                    NULL};
    ck_assert_msg(argv[0] != NULL, "GOSSIP_DEMO is not set");
    a->pid = harness_proc_start(a->name, argv);
}

static void agent_stop(struct agent *a)
{
    int status = 0;
    ck_assert_int_eq(harness_proc_stop(a->pid, SIGTERM, &status), 0);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: %s",
                  a->name, harness_status_text(status));
    harness_assert_log_clean(harness_proc_log(a->name));
}

/* Does the agent's output hold `needle`? */
static bool agent_saw(const struct agent *a, const char *needle)
{
    char *text = slurp(harness_proc_log(a->name));
    bool found = strstr(text, needle) != NULL;
    free(text);
    return found;
}

/* One member as node `id` sees it. */
struct view
{
    bool found;
    char state[16];
    char role[16];
    char fleet[32];
    uint64_t incarnation;
    unsigned alive; /* alive members in the whole list */
    unsigned total;
};

static void str_of(const msgpack_object *m, const char *k, char *buf,
                   size_t size)
{
    const msgpack_object *o = wire_map_get(m, k);
    buf[0] = '\0';
    if (o != NULL && o->type == MSGPACK_OBJECT_STR) {
        snprintf(buf, size, "%.*s", (int)o->via.str.size, o->via.str.ptr);
    }
}

static int members_view(unsigned id, const char *name, struct view *v)
{
    memset(v, 0, sizeof *v);
    struct harness_reply rep;
    int rv = harness_call(id, "gossip.members", NULL, NULL, &rep, 5000);
    if (rv == 0) {
        const msgpack_object *arr = rep.result;
        ck_assert_int_eq(arr->type, MSGPACK_OBJECT_ARRAY);
        v->total = arr->via.array.size;
        for (uint32_t i = 0; i < arr->via.array.size; i++) {
            const msgpack_object *m = &arr->via.array.ptr[i];
            char n[80], st[16];
            str_of(m, "name", n, sizeof n);
            str_of(m, "state", st, sizeof st);
            v->alive += strcmp(st, "alive") == 0;
            if (strcmp(n, name) == 0) {
                v->found = true;
                memcpy(v->state, st, sizeof v->state);
                str_of(m, "role", v->role, sizeof v->role);
                str_of(m, "fleet", v->fleet, sizeof v->fleet);
                const msgpack_object *inc = wire_map_get(m, "incarnation");
                ck_assert_ptr_nonnull(inc);
                v->incarnation = inc->via.u64;
            }
        }
    }
    harness_reply_destroy(&rep);
    return rv;
}

/* Poll node id until member `name` is in `state` (and, when min_inc > 0,
 * at an incarnation >= min_inc). Returns the seconds it took. */
static double wait_member(unsigned id, const char *name, const char *state,
                          uint64_t min_inc, struct view *out)
{
    double t0 = harness_now();
    struct view v;
    for (;;) {
        if (members_view(id, name, &v) == 0 && v.found &&
            strcmp(v.state, state) == 0 && v.incarnation >= min_inc) {
            break;
        }
        ck_assert_msg(harness_now() - t0 < WAIT_MS / 1000.0,
                      "node %u never saw %s %s (last: found=%d state=%s)", id,
                      name, state, v.found, v.state);
        harness_sleep_ms(POLL_MS);
    }
    if (out != NULL) {
        *out = v;
    }
    return harness_now() - t0;
}

static void wait_alive_count(unsigned id, unsigned want)
{
    double t0 = harness_now();
    struct view v;
    while (members_view(id, "", &v) != 0 || v.alive != want) {
        ck_assert_msg(harness_now() - t0 < WAIT_MS / 1000.0,
                      "node %u: %u alive, want %u", id, v.alive, want);
        harness_sleep_ms(POLL_MS);
    }
}

struct set_args
{
    const char *path;
    uint64_t max_apps;
};

static void pack_set(msgpack_packer *pk, void *arg)
{
    const struct set_args *a = arg;
    msgpack_pack_map(pk, 2);
    wire_pack_kv_str(pk, "path", a->path);
    wire_pack_str(pk, "fields");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "max_apps", a->max_apps);
}

/* Write a quota through node 1; return the catalog version and digest
 * node 1 then reports. */
static uint64_t write_quota(const char *path, uint64_t max_apps,
                            char digest[33])
{
    struct set_args a = {path, max_apps};
    struct harness_reply rep;
    ck_assert_int_eq(harness_call(1, "quota.set", pack_set, &a, &rep, 30000),
                     0);
    harness_reply_destroy(&rep);
    ck_assert_int_eq(harness_wait_converged(WAIT_MS, NULL), 0);
    ck_assert_int_eq(harness_call(1, "cluster.status", NULL, NULL, &rep, 30000),
                     0);
    const msgpack_object *v = wire_map_get(rep.result, "catalog_version");
    ck_assert_ptr_nonnull(v);
    uint64_t version = v->via.u64;
    str_of(rep.result, "catalog_digest", digest, 33);
    ck_assert_uint_eq(strlen(digest), 32);
    harness_reply_destroy(&rep);
    return version;
}

/* Wait until the agent printed the catalog broadcast of `version` carrying
 * `digest`. */
static double wait_catalog(const struct agent *a, uint64_t version,
                           const char *digest)
{
    char needle[64];
    snprintf(needle, sizeof needle, "broadcast key=catalog version=%" PRIu64,
             version);
    double t0 = harness_now();
    for (;;) {
        char *text = slurp(harness_proc_log(a->name));
        char *line = strstr(text, needle);
        bool ok = false;
        if (line != NULL) {
            char *eol = strchr(line, '\n');
            if (eol != NULL) {
                *eol = '\0';
            }
            /* The payload is {"version", "digest"} in msgpack; the demo
             * prints it with non-printable bytes escaped. */
            ck_assert_msg(strstr(line, digest) != NULL,
                          "%s got version %" PRIu64 " with another digest: "
                          "%s (want %s)",
                          a->name, version, line, digest);
            ok = true;
        }
        free(text);
        if (ok) {
            return harness_now() - t0;
        }
        ck_assert_msg(harness_now() - t0 < WAIT_MS / 1000.0,
                      "%s never got catalog version %" PRIu64, a->name,
                      version);
        harness_sleep_ms(POLL_MS);
    }
}

/* --- servers_and_agents --------------------------------------------------- */

START_TEST(servers_and_agents)
{
    harness_begin("servers_and_agents");
    char k1[64];
    new_key(k1);
    harness_set_gossip(write_keyring("fleet.keyring", k1, NULL));
    harness_cluster_start(3);
    ck_assert_uint_ne(harness_wait_leader(WAIT_MS), 0);
    struct agent ag[2];
    const char *kr = write_keyring("agent.keyring", k1, NULL);
    agent_start(&ag[0], "agent-1", kr, harness_node_gossip_addr(1));
    agent_start(&ag[1], "agent-2", kr, harness_node_gossip_addr(2));

    /* Everyone, as each server sees it. */
    double t = harness_now();
    for (unsigned id = 1; id <= 3; id++) {
        wait_alive_count(id, 5);
        struct view v;
        ck_assert_int_eq(members_view(id, "server-1", &v), 0);
        ck_assert(v.found);
        ck_assert_str_eq(v.role, "server");
        ck_assert_int_eq(members_view(id, "agent-2", &v), 0);
        ck_assert_str_eq(v.role, "agent");
        ck_assert_str_eq(v.fleet, "eu");
        ck_assert_uint_eq(v.total, 5);
    }
    harness_log("all 3 servers list 5 alive members after %.2f s",
                harness_now() - t);

    /* A write's version reaches both agents, with the servers' digest. */
    char digest[33];
    uint64_t v1 = write_quota("org", 10, digest);
    for (unsigned i = 0; i < 2; i++) {
        harness_log("%s got catalog version %" PRIu64 " in %.2f s", ag[i].name,
                    v1, wait_catalog(&ag[i], v1, digest));
    }
    /* Every server reports the same digest. */
    for (unsigned id = 2; id <= 3; id++) {
        struct harness_reply rep;
        ck_assert_int_eq(
            harness_call(id, "cluster.status", NULL, NULL, &rep, 30000), 0);
        char d[33];
        str_of(rep.result, "catalog_digest", d, sizeof d);
        ck_assert_str_eq(d, digest);
        harness_reply_destroy(&rep);
    }

    /* SIGKILL server 3: dead to the others; restarted: alive again, with a
     * higher incarnation (it refutes its own death). */
    struct view before;
    ck_assert_int_eq(members_view(1, "server-3", &before), 0);
    harness_node_kill(3, SIGKILL);
    int status;
    ck_assert_int_eq(harness_wait_exit(3, &status), 0);
    harness_log("server-3 declared dead by server-1 after %.2f s",
                wait_member(1, "server-3", "dead", 0, NULL));
    wait_member(2, "server-3", "dead", 0, NULL);
    harness_node_restart(3);
    struct view after;
    harness_log(
        "server-3 alive again after %.2f s",
        wait_member(1, "server-3", "alive", before.incarnation + 1, &after));
    ck_assert_uint_gt(after.incarnation, before.incarnation);
    ck_assert_int_eq(harness_wait_converged(WAIT_MS, NULL), 0);

    /* A graceful stop is a leave, not a death. */
    harness_node_kill(2, SIGTERM);
    ck_assert_int_eq(harness_wait_exit(2, &status), 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    wait_member(1, "server-2", "left", 0, NULL);
    wait_member(3, "server-2", "left", 0, NULL);

    for (unsigned i = 0; i < 2; i++) {
        ck_assert(agent_saw(&ag[i], "member event=join name=server-1"));
        agent_stop(&ag[i]);
    }
    harness_end();
}
END_TEST

/* --- key_rotation -----------------------------------------------------------
 */

struct keys_args
{
    const char *action;
    const char *key;
};

static void pack_keys(msgpack_packer *pk, void *arg)
{
    const struct keys_args *a = arg;
    msgpack_pack_map(pk, a->key != NULL ? 2 : 1);
    wire_pack_kv_str(pk, "action", a->action);
    if (a->key != NULL) {
        wire_pack_kv_str(pk, "key", a->key);
    }
}

static uint64_t u64_of(const msgpack_object *m, const char *k)
{
    const msgpack_object *o = wire_map_get(m, k);
    ck_assert_msg(o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER,
                  "no %s", k);
    return o->via.u64;
}

/* Run a fleet key action through node 1 until every one of `fleet`
 * members acknowledges it (a member that joined a moment ago may not have
 * been asked yet). Returns the reply (caller destroys). */
static void keys_all(const char *action, const char *key, unsigned fleet,
                     struct harness_reply *rep)
{
    struct keys_args a = {action, key};
    double t0 = harness_now();
    for (;;) {
        int rv = harness_call(1, "gossip.keys", pack_keys, &a, rep, 30000);
        ck_assert_msg(rv == 0, "gossip.keys %s: %s %s", action, rep->error,
                      rep->message);
        char st[32];
        str_of(rep->result, "status", st, sizeof st);
        if (strcmp(st, "ok") == 0 && u64_of(rep->result, "acks") == fleet &&
            u64_of(rep->result, "asked") == fleet) {
            ck_assert_uint_eq(u64_of(rep->result, "errors"), 0);
            return;
        }
        ck_assert_msg(harness_now() - t0 < WAIT_MS / 1000.0,
                      "gossip.keys %s: status %s, acks %" PRIu64 " of %u",
                      action, st, u64_of(rep->result, "acks"), fleet);
        harness_reply_destroy(rep);
        harness_sleep_ms(500);
    }
}

/* LIST through node 1: how many members hold key, and use it as primary. */
static void key_counts(const char *key, uint64_t *members, uint64_t *primary)
{
    struct harness_reply rep;
    keys_all("list", NULL, 5, &rep);
    const msgpack_object *ks = wire_map_get(rep.result, "keys");
    ck_assert_ptr_nonnull(ks);
    *members = *primary = 0;
    for (uint32_t i = 0; i < ks->via.array.size; i++) {
        char k[64];
        str_of(&ks->via.array.ptr[i], "key", k, sizeof k);
        if (strcmp(k, key) == 0) {
            *members = u64_of(&ks->via.array.ptr[i], "members");
            *primary = u64_of(&ks->via.array.ptr[i], "primary");
        }
    }
    harness_reply_destroy(&rep);
}

START_TEST(key_rotation)
{
    harness_begin("key_rotation");
    char k1[64], k2[64];
    new_key(k1);
    new_key(k2);
    harness_set_gossip(write_keyring("fleet.keyring", k1, NULL));
    harness_cluster_start(3);
    ck_assert_uint_ne(harness_wait_leader(WAIT_MS), 0);
    struct agent ag[2];
    const char *kr = write_keyring("agent.keyring", k1, NULL);
    agent_start(&ag[0], "agent-1", kr, harness_node_gossip_addr(1));
    agent_start(&ag[1], "agent-2", kr, harness_node_gossip_addr(1));
    wait_alive_count(1, 5);

    uint64_t m, p;
    key_counts(k1, &m, &p);
    ck_assert_uint_eq(m, 5);
    ck_assert_uint_eq(p, 5);

    /* Bad requests change nothing. */
    struct harness_reply rep;
    struct keys_args bad = {"remove", k1}; /* the primary */
    ck_assert_int_eq(
        harness_call(1, "gossip.keys", pack_keys, &bad, &rep, 30000),
        ALLOT_EINVALID);
    harness_reply_destroy(&rep);
    bad = (struct keys_args){"install", "not-base64!"};
    ck_assert_int_eq(
        harness_call(1, "gossip.keys", pack_keys, &bad, &rep, 30000),
        ALLOT_EINVALID);
    harness_reply_destroy(&rep);
    bad = (struct keys_args){"rotate", NULL};
    ck_assert_int_eq(
        harness_call(1, "gossip.keys", pack_keys, &bad, &rep, 30000),
        ALLOT_EINVALID);
    harness_reply_destroy(&rep);
    key_counts(k1, &m, &p);
    ck_assert_uint_eq(m, 5);

    /* install, use, remove: each acknowledged by all 5. */
    keys_all("install", k2, 5, &rep);
    harness_reply_destroy(&rep);
    key_counts(k2, &m, &p);
    ck_assert_uint_eq(m, 5);
    ck_assert_uint_eq(p, 0);
    keys_all("use", k2, 5, &rep);
    harness_reply_destroy(&rep);
    key_counts(k2, &m, &p);
    ck_assert_uint_eq(p, 5);
    keys_all("remove", k1, 5, &rep);
    harness_reply_destroy(&rep);
    key_counts(k1, &m, &p);
    ck_assert_uint_eq(m, 0);

    /* Every server rewrote its keyring file: the new key only. */
    for (unsigned id = 1; id <= 3; id++) {
        char *text = slurp(harness_node_gossip_keyring(id));
        ck_assert_msg(strstr(text, k2) != NULL && strstr(text, k1) == NULL,
                      "node %u keyring: %s", id, text);
        free(text);
    }

    /* The fleet still works under the new key. */
    char digest[33];
    uint64_t v = write_quota("org", 5, digest);
    wait_catalog(&ag[0], v, digest);
    wait_catalog(&ag[1], v, digest);

    /* A newcomer with the new key is admitted; one with only the retired
     * key is not (its messages fail authentication everywhere). */
    struct agent fresh, stale;
    agent_start(&fresh, "agent-new", write_keyring("new.keyring", k2, NULL),
                harness_node_gossip_addr(2));
    agent_start(&stale, "agent-old", write_keyring("old.keyring", k1, NULL),
                harness_node_gossip_addr(2));
    wait_member(1, "agent-new", "alive", 0, NULL);
    /* By the time the newcomer is in, the stale one has had as long. */
    struct view sv;
    ck_assert_int_eq(members_view(1, "agent-old", &sv), 0);
    ck_assert_msg(!sv.found, "a member with only a retired key was admitted");
    ck_assert_int_eq(members_view(2, "agent-old", &sv), 0);
    ck_assert(!sv.found);

    /* A restarted server reads the rewritten file and rejoins. */
    harness_node_kill(3, SIGTERM);
    int status;
    ck_assert_int_eq(harness_wait_exit(3, &status), 0);
    harness_node_restart(3);
    wait_member(1, "server-3", "alive", 0, NULL);
    wait_alive_count(3, 6);

    agent_stop(&fresh);
    agent_stop(&stale);
    for (unsigned i = 0; i < 2; i++) {
        agent_stop(&ag[i]);
    }
    harness_end();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gossip_allotd");
    TCase *tc = tcase_create("gossip");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, servers_and_agents);
    tcase_add_test(tc, key_rotation);
    suite_add_tcase(s, tc);
    return harness_main(s);
}
