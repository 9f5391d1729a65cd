/* test_enforce_agent.c - allot-agent processes beside real allotd nodes.
 *
 *   agent_badinput     malformed frames and requests on the agent's socket
 *                      get `protocol` / `invalid` / `not_found` answers and
 *                      change nothing; an oversized length closes only that
 *                      connection; a frame split across writes is answered
 *   agent_disconnect   slots held by a connection are given back when it
 *                      closes; one connection cannot release another's
 *   e2e                3 allotd + 2 agents: a rule set through allotctl
 *                      reaches both agents and is enforced; a change
 *                      reaches both; every server is killed and enforcement
 *                      goes on; an agent restarted with every server down
 *                      enforces the rules it saved
 *   usage_report       an agent's usage windows reach the leader
 *                      (allotctl usage shows the counters); malformed
 *                      reports are refused whole and leave nothing
 *   gossip_e2e         3 allotd with gossip + 2 agents given only gossip
 *                      seeds: rules and a change arrive by announcement
 *                      (counted), checked against the digest; every server
 *                      killed, enforcement goes on
 *
 * The agent is $ALLOT_AGENT (set by meson). Rates are chosen so that no
 * refill happens within any test's run time (0.001/s), so counts are exact
 * however slow the machine. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"
#include "wire.h"

#define CTL_OK(...)                                                   \
    do {                                                              \
        struct harness_ctl r_;                                        \
        harness_ctl(&r_, NULL, __VA_ARGS__, (const char *)NULL);      \
        ck_assert_msg(r_.status == 0, "allotctl failed: %s", r_.err); \
        harness_ctl_free(&r_);                                        \
    } while (0)

#define WAIT_MS 60000

/* --- Agents ----------------------------------------------------------------
 */

struct agent
{
    char name[16];
    char data_dir[600];
    char socket[600];
    pid_t pid;
};

static const char *agent_bin(void)
{
    const char *p = getenv("ALLOT_AGENT");
    ck_assert_msg(p != NULL, "ALLOT_AGENT is not set");
    return p;
}

static void agent_start_args(struct agent *ag, const char *name,
                             const char *servers, const char *const *extra);

static void agent_start(struct agent *ag, const char *name, const char *servers)
{
    agent_start_args(ag, name, servers, NULL);
}

/* extra: more arguments, NULL-terminated (or NULL). */
static void agent_start_args(struct agent *ag, const char *name,
                             const char *servers, const char *const *extra)
{
    snprintf(ag->name, sizeof ag->name, "%s", name);
    snprintf(ag->data_dir, sizeof ag->data_dir, "%s/%s-data", harness_dir(),
             name);
    snprintf(ag->socket, sizeof ag->socket, "%s/%s.sock", harness_dir(), name);
    char *argv[24];
    int n = 0;
    argv[n++] = (char *)agent_bin();
    argv[n++] = "--data-dir";
    argv[n++] = ag->data_dir;
    argv[n++] = "--socket";
    argv[n++] = ag->socket;
    argv[n++] = "--fleet";
    argv[n++] = "web";
    if (servers != NULL) {
        argv[n++] = "--servers";
        argv[n++] = (char *)servers;
    }
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 23; i++) {
        argv[n++] = (char *)extra[i];
    }
    argv[n] = NULL;
    ag->pid = harness_proc_start(name, argv);
}

static void agent_stop(struct agent *ag)
{
    int status;
    ck_assert_msg(harness_proc_stop(ag->pid, SIGTERM, &status) == 0,
                  "%s did not exit after SIGTERM", ag->name);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "%s: %s after SIGTERM (want exited 0)", ag->name,
                  harness_status_text(status));
    harness_assert_log_clean(harness_proc_log(ag->name));
}

static int agent_connect(const struct agent *ag)
{
    int fd = harness_unix_connect(ag->socket, WAIT_MS);
    ck_assert_msg(fd >= 0, "cannot connect to %s", ag->socket);
    return fd;
}

/* A request frame {"id", "op", "args": {...}}; args packed by the caller
 * between begin and end. */
static void req_begin(msgpack_sbuffer *sb, msgpack_packer *pk, uint64_t id,
                      const char *op, uint32_t n_args)
{
    msgpack_sbuffer_init(sb);
    wire_frame_start(sb, pk);
    msgpack_pack_map(pk, 3);
    wire_pack_kv_u64(pk, "id", id);
    wire_pack_kv_str(pk, "op", op);
    wire_pack_str(pk, "args");
    msgpack_pack_map(pk, n_args);
}

/* Send sb (destroyed) and read the reply into rep; asserts one arrives. */
static void req_end(int fd, msgpack_sbuffer *sb, struct harness_reply *rep)
{
    ck_assert_int_eq(wire_frame_finish(sb), 0);
    ck_assert_int_eq(harness_raw_send(fd, sb->data, sb->size), 0);
    msgpack_sbuffer_destroy(sb);
    ck_assert_int_eq(harness_raw_recv(fd, WAIT_MS, rep), 1);
}

static bool get_bool(const msgpack_object *m, const char *k)
{
    const msgpack_object *v = wire_map_get(m, k);
    ck_assert_msg(v != NULL && v->type == MSGPACK_OBJECT_BOOLEAN,
                  "no boolean %s", k);
    return v->via.boolean;
}

static uint64_t get_u64(const msgpack_object *m, const char *k)
{
    const msgpack_object *v = wire_map_get(m, k);
    ck_assert_msg(v != NULL && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER,
                  "no integer %s", k);
    return v->via.u64;
}

static uint64_t next_id = 1;

/* check: 1 allowed, 0 rejected; asserts an ok reply. */
static int check(int fd, const char *path, const char *key)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    req_begin(&sb, &pk, next_id, "check", key ? 2 : 1);
    wire_pack_kv_str(&pk, "path", path);
    if (key != NULL) {
        wire_pack_kv_str(&pk, "key", key);
    }
    struct harness_reply rep;
    req_end(fd, &sb, &rep);
    ck_assert_msg(rep.ok, "check %s: %s %s", path, rep.error, rep.message);
    ck_assert_uint_eq(rep.id, next_id++);
    int allowed = get_bool(rep.result, "allowed");
    harness_reply_destroy(&rep);
    return allowed;
}

static int count_admitted(int fd, const char *path, int tries)
{
    int n = 0;
    for (int i = 0; i < tries; i++) {
        n += check(fd, path, NULL);
    }
    return n;
}

/* op with one argument, path; asserts an ok reply. */
static void call_path(int fd, const char *op, const char *path,
                      struct harness_reply *rep)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    req_begin(&sb, &pk, next_id++, op, 1);
    wire_pack_kv_str(&pk, "path", path);
    req_end(fd, &sb, rep);
    ck_assert_msg(rep->ok, "%s %s: %s %s", op, path, rep->error, rep->message);
}

/* acquire: the slot, or 0 when refused. */
static uint64_t acquire(int fd, const char *path)
{
    struct harness_reply rep;
    call_path(fd, "acquire", path, &rep);
    uint64_t slot =
        get_bool(rep.result, "allowed") ? get_u64(rep.result, "slot") : 0;
    harness_reply_destroy(&rep);
    return slot;
}

/* release: 0 or the error code. */
static int release(int fd, uint64_t slot)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    req_begin(&sb, &pk, next_id++, "release", 1);
    wire_pack_kv_u64(&pk, "slot", slot);
    struct harness_reply rep;
    req_end(fd, &sb, &rep);
    int code = rep.code;
    harness_reply_destroy(&rep);
    return code;
}

/* The agent's stats, decoded into a few numbers. */
struct agent_stats
{
    uint64_t catalog_version;
    uint64_t rules;
    uint64_t slots_in_use;
    bool from_disk;
    uint64_t announced_version; /* the gossip source's figures */
    uint64_t announcements;
    uint64_t deltas;
    uint64_t pulls;
    uint64_t digest_mismatches;
    uint64_t gossip_servers;
    uint64_t admitted; /* of `path`, if given */
    uint64_t rejected;
};

static void stats(int fd, const char *path, struct agent_stats *st)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    req_begin(&sb, &pk, next_id++, "stats", path ? 1 : 0);
    if (path != NULL) {
        wire_pack_kv_str(&pk, "path", path);
    }
    struct harness_reply rep;
    req_end(fd, &sb, &rep);
    ck_assert_msg(rep.ok, "stats: %s %s", rep.error, rep.message);
    memset(st, 0, sizeof *st);
    st->catalog_version = get_u64(rep.result, "catalog_version");
    st->rules = get_u64(rep.result, "rules");
    st->slots_in_use = get_u64(rep.result, "slots_in_use");
    st->from_disk = get_bool(rep.result, "from_disk");
    st->announced_version = get_u64(rep.result, "announced_version");
    st->announcements = get_u64(rep.result, "announcements");
    st->deltas = get_u64(rep.result, "deltas");
    st->pulls = get_u64(rep.result, "pulls");
    st->digest_mismatches = get_u64(rep.result, "digest_mismatches");
    st->gossip_servers = get_u64(rep.result, "gossip_servers");
    const msgpack_object *rs = wire_map_get(rep.result, "rule_stats");
    ck_assert(rs != NULL && rs->type == MSGPACK_OBJECT_ARRAY);
    if (path != NULL) {
        ck_assert_uint_eq(rs->via.array.size, 1);
        const msgpack_object *total =
            wire_map_get(&rs->via.array.ptr[0], "total");
        st->admitted = get_u64(total, "admitted");
        st->rejected = get_u64(total, "rejected");
    }
    harness_reply_destroy(&rep);
}

/* Poll until the agent's rules reach catalog version v. */
static void wait_version(int fd, uint64_t v)
{
    double t0 = harness_now();
    struct agent_stats st;
    for (;;) {
        stats(fd, NULL, &st);
        if (st.catalog_version >= v) {
            break;
        }
        ck_assert_msg(harness_now() - t0 < WAIT_MS / 1000.0,
                      "agent stays at version %llu, want %llu",
                      (unsigned long long)st.catalog_version,
                      (unsigned long long)v);
        harness_sleep_ms(20);
    }
    harness_log("agent reached version %llu in %.3f s", (unsigned long long)v,
                harness_now() - t0);
}

static uint64_t cluster_version(void)
{
    struct harness_status st;
    ck_assert_int_eq(harness_wait_converged(WAIT_MS, &st), 0);
    return st.catalog_version;
}

/* A raw frame body (any bytes) with its header. */
static void send_raw_frame(int fd, const void *body, uint32_t len)
{
    char hdr[WIRE_HEADER_LEN];
    wire_frame_header(hdr, len);
    ck_assert_int_eq(harness_raw_send(fd, hdr, sizeof hdr), 0);
    if (len > 0) {
        ck_assert_int_eq(harness_raw_send(fd, body, len), 0);
    }
}

/* Read a reply and assert it is the error `code`. */
static void expect_error(int fd, const char *code, const char *what)
{
    struct harness_reply rep;
    ck_assert_int_eq(harness_raw_recv(fd, WAIT_MS, &rep), 1);
    ck_assert_msg(!rep.ok && strcmp(rep.error, code) == 0,
                  "%s: want error %s, got %s (%s)", what, code,
                  rep.ok ? "ok" : rep.error, rep.message);
    harness_reply_destroy(&rep);
}

/* Send a request whose args map holds one pair packed by the caller. */
typedef void (*arg_fn)(msgpack_packer *pk);

static void bad_request(int fd, const char *op, arg_fn fn, const char *code,
                        const char *what)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    req_begin(&sb, &pk, next_id++, op, 2);
    wire_pack_kv_str(&pk, "path", "org/api");
    fn(&pk);
    ck_assert_int_eq(wire_frame_finish(&sb), 0);
    ck_assert_int_eq(harness_raw_send(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
    expect_error(fd, code, what);
}

static void a_cost_negative(msgpack_packer *pk)
{
    wire_pack_str(pk, "cost");
    msgpack_pack_int64(pk, -5);
}
static void a_cost_string(msgpack_packer *pk)
{
    wire_pack_kv_str(pk, "cost", "1");
}
static void a_prio_big(msgpack_packer *pk)
{
    wire_pack_kv_u64(pk, "prio", 7);
}
static void a_key_nul(msgpack_packer *pk)
{
    wire_pack_str(pk, "key");
    wire_pack_strn(pk, "a\0b", 3);
}
static void a_key_long(msgpack_packer *pk)
{
    static char k[2000];
    memset(k, 'k', sizeof k - 1);
    wire_pack_kv_str(pk, "key", k);
}
static void a_key_int(msgpack_packer *pk)
{
    wire_pack_kv_u64(pk, "key", 3);
}
static void a_mem_string(msgpack_packer *pk)
{
    wire_pack_kv_str(pk, "memory_mb", "lots");
}

/* --- Tests -----------------------------------------------------------------
 */

static void rules_setup(void)
{
    CTL_OK("quota", "set", "org", "kind=rate", "rate=1000");
    CTL_OK("quota", "set", "org/api", "rate=0.001", "burst=5");
    CTL_OK("quota", "set", "batch", "kind=capacity", "max_apps=2");
}

static void kill_servers(void)
{
    for (unsigned id = 1; id <= 3; id++) {
        harness_node_kill(id, SIGKILL);
        int status;
        ck_assert_int_eq(harness_wait_exit(id, &status), 0);
    }
    harness_log("every server killed");
}

START_TEST(agent_badinput)
{
    harness_begin("agent_badinput");
    harness_cluster_start(1);
    ck_assert_uint_ne(harness_wait_leader(WAIT_MS), 0);
    rules_setup();
    uint64_t v = cluster_version();
    struct agent ag;
    agent_start(&ag, "agent1", harness_endpoints(0));
    int fd = agent_connect(&ag);
    wait_version(fd, v);

    /* Not msgpack at all; truncated; trailing bytes: protocol, id 0. */
    const unsigned char junk[] = {0xc1};
    send_raw_frame(fd, junk, sizeof junk);
    expect_error(fd, "protocol", "reserved byte");
    const unsigned char truncated[] = {0x85, 0xa2, 'i', 'd'};
    send_raw_frame(fd, truncated, sizeof truncated);
    expect_error(fd, "protocol", "truncated map");
    const unsigned char huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    send_raw_frame(fd, huge_array, sizeof huge_array);
    expect_error(fd, "protocol", "array claiming 4G elements");
    send_raw_frame(fd, NULL, 0);
    expect_error(fd, "protocol", "empty body");
    /* Well-formed, not a request. */
    const unsigned char array[] = {0x91, 0x01};
    send_raw_frame(fd, array, sizeof array);
    expect_error(fd, "invalid", "an array");
    const unsigned char no_id[] = {0x81, 0xa2, 'o', 'p', 0xa4,
                                   'p',  'i',  'n', 'g'};
    send_raw_frame(fd, no_id, sizeof no_id);
    expect_error(fd, "invalid", "no id");
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    wire_frame_start(&sb, &pk);
    msgpack_pack_map(&pk, 3);
    wire_pack_kv_u64(&pk, "id", 77);
    wire_pack_kv_str(&pk, "op", "check");
    wire_pack_kv_u64(&pk, "args", 3);
    ck_assert_int_eq(wire_frame_finish(&sb), 0);
    ck_assert_int_eq(harness_raw_send(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
    expect_error(fd, "invalid", "args not a map");
    req_begin(&sb, &pk, next_id++, "frobnicate", 0);
    struct harness_reply rep;
    req_end(fd, &sb, &rep);
    ck_assert(!rep.ok && strcmp(rep.error, "invalid") == 0);
    ck_assert_uint_eq(rep.id, next_id - 1);
    harness_reply_destroy(&rep);
    /* Bad arguments. */
    req_begin(&sb, &pk, next_id++, "check", 0);
    req_end(fd, &sb, &rep);
    ck_assert_msg(!rep.ok && strcmp(rep.error, "invalid") == 0, "no path");
    harness_reply_destroy(&rep);
    const char *bad_paths[] = {"", "org//api", "../etc", "org/api/", "a b"};
    for (size_t i = 0; i < sizeof bad_paths / sizeof bad_paths[0]; i++) {
        req_begin(&sb, &pk, next_id++, "check", 1);
        wire_pack_kv_str(&pk, "path", bad_paths[i]);
        req_end(fd, &sb, &rep);
        ck_assert_msg(!rep.ok && strcmp(rep.error, "invalid") == 0,
                      "path \"%s\" accepted", bad_paths[i]);
        harness_reply_destroy(&rep);
    }
    bad_request(fd, "check", a_cost_negative, "invalid", "negative cost");
    bad_request(fd, "check", a_cost_string, "invalid", "string cost");
    bad_request(fd, "check", a_prio_big, "invalid", "prio 7");
    bad_request(fd, "check", a_key_nul, "invalid", "key with NUL");
    bad_request(fd, "check", a_key_long, "invalid", "2 KB key");
    bad_request(fd, "check", a_key_int, "invalid", "integer key");
    bad_request(fd, "acquire", a_mem_string, "invalid", "string memory_mb");
    /* Kinds and absent things. */
    req_begin(&sb, &pk, next_id++, "check", 1);
    wire_pack_kv_str(&pk, "path", "batch");
    req_end(fd, &sb, &rep);
    ck_assert_msg(!rep.ok && strcmp(rep.error, "invalid") == 0,
                  "check on a capacity quota");
    harness_reply_destroy(&rep);
    ck_assert_int_eq(release(fd, 12345), ALLOT_ENOT_FOUND);
    req_begin(&sb, &pk, next_id++, "release", 0);
    req_end(fd, &sb, &rep);
    ck_assert_msg(!rep.ok && strcmp(rep.error, "invalid") == 0, "no slot");
    harness_reply_destroy(&rep);
    req_begin(&sb, &pk, next_id++, "check", 1);
    wire_pack_kv_str(&pk, "path", "org/none");
    req_end(fd, &sb, &rep);
    ck_assert_msg(!rep.ok && strcmp(rep.error, "not_found") == 0,
                  "path without a rule");
    harness_reply_destroy(&rep);

    /* Nothing of that changed anything. */
    struct agent_stats st;
    stats(fd, "org/api", &st);
    ck_assert_uint_eq(st.admitted, 0);
    ck_assert_uint_eq(st.rejected, 0);
    ck_assert_uint_eq(st.slots_in_use, 0);
    ck_assert_uint_eq(st.catalog_version, v);

    /* A frame split in two writes is one request. */
    req_begin(&sb, &pk, next_id, "check", 1);
    wire_pack_kv_str(&pk, "path", "org/api");
    ck_assert_int_eq(wire_frame_finish(&sb), 0);
    ck_assert_int_eq(harness_raw_send(fd, sb.data, 7), 0);
    harness_sleep_ms(50);
    ck_assert_int_eq(harness_raw_send(fd, sb.data + 7, sb.size - 7), 0);
    msgpack_sbuffer_destroy(&sb);
    ck_assert_int_eq(harness_raw_recv(fd, WAIT_MS, &rep), 1);
    ck_assert(rep.ok && get_bool(rep.result, "allowed"));
    ck_assert_uint_eq(rep.id, next_id++);
    harness_reply_destroy(&rep);

    /* A length over the agent's limit closes that connection only. */
    int fd2 = agent_connect(&ag);
    const unsigned char big[] = {0x7f, 0xff, 0xff, 0xff};
    ck_assert_int_eq(harness_raw_send(fd2, big, sizeof big), 0);
    ck_assert_int_eq(harness_raw_wait_closed(fd2, WAIT_MS), 1);
    close(fd2);
    ck_assert_int_eq(count_admitted(fd, "org/api", 6), 4);
    stats(fd, "org/api", &st);
    ck_assert_uint_eq(st.admitted, 5);
    ck_assert_uint_eq(st.rejected, 2);
    close(fd);
    agent_stop(&ag);
    harness_end();
}
END_TEST

START_TEST(agent_disconnect)
{
    harness_begin("agent_disconnect");
    harness_cluster_start(1);
    ck_assert_uint_ne(harness_wait_leader(WAIT_MS), 0);
    rules_setup();
    uint64_t v = cluster_version();
    struct agent ag;
    agent_start(&ag, "agent1", harness_endpoints(0));
    int a = agent_connect(&ag), b = agent_connect(&ag);
    wait_version(a, v);
    uint64_t s1 = acquire(a, "batch"), s2 = acquire(a, "batch");
    ck_assert_uint_ne(s1, 0);
    ck_assert_uint_ne(s2, 0);
    ck_assert_uint_eq(acquire(a, "batch"), 0);
    ck_assert_uint_eq(acquire(b, "batch"), 0);
    /* b cannot give back what a holds. */
    ck_assert_int_eq(release(b, s1), ALLOT_ENOT_FOUND);
    ck_assert_uint_eq(acquire(b, "batch"), 0);
    /* a releases one itself, twice: the second is not_found. */
    ck_assert_int_eq(release(a, s2), 0);
    ck_assert_int_eq(release(a, s2), ALLOT_ENOT_FOUND);
    uint64_t s3 = acquire(b, "batch");
    ck_assert_uint_ne(s3, 0);
    /* a goes away holding s1: it comes back. */
    close(a);
    double t0 = harness_now();
    uint64_t s4 = 0;
    while (s4 == 0 && harness_now() - t0 < WAIT_MS / 1000.0) {
        s4 = acquire(b, "batch");
        if (s4 == 0) {
            harness_sleep_ms(20);
        }
    }
    ck_assert_msg(s4 != 0, "the closed connection's slot never came back");
    struct agent_stats st;
    stats(b, NULL, &st);
    ck_assert_uint_eq(st.slots_in_use, 2);
    close(b);
    /* b's slots too. */
    int c = agent_connect(&ag);
    t0 = harness_now();
    do {
        stats(c, NULL, &st);
        if (st.slots_in_use != 0) {
            harness_sleep_ms(20);
        }
    } while (st.slots_in_use != 0 && harness_now() - t0 < WAIT_MS / 1000.0);
    ck_assert_uint_eq(st.slots_in_use, 0);
    close(c);
    agent_stop(&ag);
    harness_end();
}
END_TEST

START_TEST(e2e)
{
    harness_begin("e2e");
    harness_cluster_start(3);
    ck_assert_uint_ne(harness_wait_leader(WAIT_MS), 0);
    rules_setup();
    uint64_t v = cluster_version();
    char servers[256];
    snprintf(servers, sizeof servers, "%s", harness_endpoints(0));
    struct agent ag[2];
    agent_start(&ag[0], "agent1", servers);
    agent_start(&ag[1], "agent2", servers);
    int fd[2];
    for (int i = 0; i < 2; i++) {
        fd[i] = agent_connect(&ag[i]);
        wait_version(fd[i], v);
        /* burst 5 at 0.001/s: exactly five, on each host (until the
         * fleet's membership exists, each host holds the whole rate). */
        ck_assert_int_eq(count_admitted(fd[i], "org/api", 8), 5);
        ck_assert_uint_ne(acquire(fd[i], "batch"), 0);
    }
    /* A change reaches both: burst 8 gives three more. */
    CTL_OK("quota", "set", "org/api", "burst=8");
    v = cluster_version();
    for (int i = 0; i < 2; i++) {
        wait_version(fd[i], v);
        ck_assert_int_eq(count_admitted(fd[i], "org/api", 5), 3);
    }
    /* Every server dies: decisions go on from the rules in memory. */
    kill_servers();
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(count_admitted(fd[i], "org/api", 3), 0);
        ck_assert_uint_ne(acquire(fd[i], "batch"), 0);
        ck_assert_uint_eq(acquire(fd[i], "batch"), 0);
        struct agent_stats st;
        stats(fd[i], "org/api", &st);
        ck_assert_uint_eq(st.catalog_version, v);
        ck_assert_uint_eq(st.admitted, 8);
        ck_assert_uint_eq(st.rejected, 3 + 2 + 3);
    }
    /* An agent restarted now finds no server: its saved rules rule. */
    close(fd[1]);
    agent_stop(&ag[1]);
    agent_start(&ag[1], "agent2", servers);
    fd[1] = agent_connect(&ag[1]);
    struct agent_stats st;
    stats(fd[1], NULL, &st);
    ck_assert_uint_eq(st.catalog_version, v);
    ck_assert_uint_eq(st.rules, 3);
    ck_assert(st.from_disk);
    /* A new process starts with full buckets: the new burst, 8. */
    ck_assert_int_eq(count_admitted(fd[1], "org/api", 10), 8);
    ck_assert_uint_ne(acquire(fd[1], "batch"), 0);
    for (int i = 0; i < 2; i++) {
        close(fd[i]);
        agent_stop(&ag[i]);
    }
    harness_end();
}
END_TEST

/* A keyring file with one fresh key (docs/gossip.md, "Keyring file"). */
static void write_keyring(const char *path)
{
    unsigned char key[32];
    char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
    ck_assert_int_ge(sodium_init(), 0);
    randombytes_buf(key, sizeof key);
    sodium_bin2base64(b64, sizeof b64, key, sizeof key,
                      sodium_base64_VARIANT_ORIGINAL);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%s\n", b64);
    ck_assert_int_eq(fclose(f), 0);
}

/* An agent of fleet "web" that knows no server, only gossip seeds. */
/* window_ms: the usage window (demand is measured over one), or NULL. */
static void gossip_agent_start_w(struct agent *ag, const char *name,
                                 const char *bind, const char *seeds,
                                 const char *keyring, const char *weight,
                                 const char *window_ms)
{
    const char *extra[] = {"--gossip",
                           bind,
                           "--gossip-seeds",
                           seeds,
                           "--gossip-keyring",
                           keyring,
                           "--weight",
                           weight,
                           window_ms != NULL ? "--window-ms" : NULL,
                           window_ms,
                           NULL};
    agent_start_args(ag, name, NULL, extra);
}

static void gossip_agent_start(struct agent *ag, const char *name,
                               const char *bind, const char *seeds,
                               const char *keyring, const char *weight)
{
    gossip_agent_start_w(ag, name, bind, seeds, keyring, weight, NULL);
}

/* A 3-server cluster that gossips: a fresh keyring at DIR/gossip.keys
 * (path into keyring), the gossip addresses of servers 1 and 2 (into
 * seeds) for agents to join through. */
struct gossip_cluster
{
    char keyring[600];
    char seeds[128];
};

static void gossip_cluster_begin(const char *test, struct gossip_cluster *gc)
{
    harness_begin(test);
    snprintf(gc->keyring, sizeof gc->keyring, "%s/gossip.keys", harness_dir());
    write_keyring(gc->keyring);
    harness_set_gossip(gc->keyring);
    harness_cluster_start(3);
    ck_assert_uint_ne(harness_wait_leader(WAIT_MS), 0);
    snprintf(gc->seeds, sizeof gc->seeds, "%s,%s", harness_node_gossip_addr(1),
             harness_node_gossip_addr(2));
}

/* n agents of fleet web (weight 1) named PREFIX1.., each on a gossip
 * address of its own (kept in bind[] for restarts), connected and holding
 * the cluster's current rules. window_ms: their usage window, or NULL. */
static void fleet_start(const struct gossip_cluster *gc, const char *prefix,
                        int n, const char *window_ms, struct agent *ag, int *fd,
                        char (*names)[16], char (*bind)[32])
{
    uint64_t v = cluster_version();
    for (int i = 0; i < n; i++) {
        snprintf(bind[i], sizeof bind[i], "127.0.0.1:%u",
                 (unsigned)harness_free_port());
        snprintf(names[i], sizeof names[i], "%s%d", prefix, i + 1);
        gossip_agent_start_w(&ag[i], names[i], bind[i], gc->seeds, gc->keyring,
                             "1", window_ms);
    }
    for (int i = 0; i < n; i++) {
        fd[i] = agent_connect(&ag[i]);
        wait_version(fd[i], v);
    }
}

/* 3 allotd and 2 agents that know no server address, only gossip seeds:
 * every rule reaches them by announcement, then a read from a server found
 * among the members, checked against the announced digest. */
START_TEST(gossip_e2e)
{
    struct gossip_cluster gc;
    gossip_cluster_begin("gossip_e2e", &gc);
    char bind[2][32];
    struct agent ag[2];
    int fd[2];
    for (int i = 0; i < 2; i++) {
        snprintf(bind[i], sizeof bind[i], "127.0.0.1:%u",
                 (unsigned)harness_free_port());
        gossip_agent_start(&ag[i], i == 0 ? "gagent1" : "gagent2", bind[i],
                           gc.seeds, gc.keyring, "2");
        fd[i] = agent_connect(&ag[i]);
    }
    /* Rules created after the agents started reach them by gossip. */
    rules_setup();
    uint64_t v = cluster_version();
    struct agent_stats st;
    for (int i = 0; i < 2; i++) {
        wait_version(fd[i], v);
        ck_assert_int_eq(count_admitted(fd[i], "org/api", 8), 5);
        ck_assert_uint_ne(acquire(fd[i], "batch"), 0);
        /* Learned from an announcement: no server address was given. A
         * read may land past the version announced so far (the catalog
         * moved on while it read); the announcement of v follows. */
        double t0 = harness_now();
        for (;;) {
            stats(fd[i], NULL, &st);
            if (st.announced_version >= v) {
                break;
            }
            ck_assert_msg(harness_now() - t0 < WAIT_MS / 1000.0,
                          "announced version stays at %llu, want %llu",
                          (unsigned long long)st.announced_version,
                          (unsigned long long)v);
            harness_sleep_ms(20);
        }
        ck_assert_uint_ge(st.announcements, 1);
        ck_assert_uint_ge(st.gossip_servers, 1);
        ck_assert_uint_eq(st.digest_mismatches, 0);
    }
    /* The servers see both agents with their fleet and their weight in
     * thousandths (--weight 2). */
    struct harness_ctl r;
    harness_ctl(&r, NULL, "gossip", "members", "-o", "json",
                (const char *)NULL);
    ck_assert_msg(r.status == 0, "gossip members: %s", r.err);
    json_error_t je;
    json_t *ms = json_loads(r.out, 0, &je);
    ck_assert_ptr_nonnull(ms);
    size_t k, agents = 0;
    json_t *m;
    json_array_foreach(ms, k, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "role")), "agent") ==
            0) {
            ck_assert_str_eq(json_string_value(json_object_get(m, "fleet")),
                             "web");
            ck_assert_int_eq(json_integer_value(json_object_get(m, "weight")),
                             2000);
            agents++;
        }
    }
    json_decref(ms);
    harness_ctl_free(&r);
    ck_assert_uint_eq(agents, 2);
    /* A change reaches both, as a checked delta. */
    CTL_OK("quota", "set", "org/api", "burst=8");
    v = cluster_version();
    for (int i = 0; i < 2; i++) {
        wait_version(fd[i], v);
        ck_assert_int_eq(count_admitted(fd[i], "org/api", 5), 3);
        stats(fd[i], NULL, &st);
        ck_assert_uint_ge(st.deltas, 1);
        ck_assert_uint_eq(st.digest_mismatches, 0);
        harness_log("agent %d: announcements=%llu deltas=%llu pulls=%llu", i,
                    (unsigned long long)st.announcements,
                    (unsigned long long)st.deltas,
                    (unsigned long long)st.pulls);
    }
    /* Every server dies: decisions go on. */
    kill_servers();
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(count_admitted(fd[i], "org/api", 3), 0);
        ck_assert_uint_ne(acquire(fd[i], "batch"), 0);
        ck_assert_uint_eq(acquire(fd[i], "batch"), 0);
        stats(fd[i], "org/api", &st);
        ck_assert_uint_eq(st.catalog_version, v);
        ck_assert_uint_eq(st.admitted, 8);
        close(fd[i]);
        agent_stop(&ag[i]);
    }
    harness_end();
}
END_TEST

/* The local rate `path` is enforced at on this agent (its part). */
static double local_rate(int fd, const char *path)
{
    struct harness_reply rep;
    call_path(fd, "stats", path, &rep);
    const msgpack_object *rs = wire_map_get(rep.result, "rule_stats");
    ck_assert(rs != NULL && rs->type == MSGPACK_OBJECT_ARRAY &&
              rs->via.array.size == 1);
    const msgpack_object *v = wire_map_get(&rs->via.array.ptr[0], "local_rate");
    ck_assert(v != NULL);
    double r =
        v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32
            ? v->via.f64
        : v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (double)v->via.u64
                                                     : -1;
    harness_reply_destroy(&rep);
    return r;
}

/* Poll until every agent of fds enforces `want` for path. */
static void wait_parts(const int *fds, int n, const char *path, double want)
{
    double t0 = harness_now();
    for (;;) {
        int at = 0;
        double seen = 0;
        for (int i = 0; i < n; i++) {
            seen = local_rate(fds[i], path);
            at += seen > want - 1e-6 && seen < want + 1e-6;
        }
        if (at == n) {
            break;
        }
        ck_assert_msg(harness_now() - t0 < WAIT_MS / 1000.0,
                      "%d of %d agents at %.3f/s for %s (one has %.3f)", at, n,
                      want, path, seen);
        harness_sleep_ms(50);
    }
    harness_log("%d agents enforce %.1f/s of %s after %.2f s", n, want, path,
                harness_now() - t0);
}

/* A fleet-wide rate divided by the agents' own gossip view: three agents
 * of fleet "web" each enforce a third; one leaves and the other two take
 * half each; it comes back and they shrink again; with every server dead
 * they keep their parts (docs/enforce.md, "Shares"). */
/* `allotctl share show PATH -o json` until every one of the n hosts
 * published the view the server computed from (hosts republish at most
 * every 5 s) and each part is `part`; each agent of fds reports that view
 * in its own stats; then a bad path is refused. */
static void wait_share_show(const char *path, size_t n, double part,
                            const int *fds)
{
    double t0 = harness_now();
    for (;;) {
        struct harness_ctl r;
        harness_ctl(&r, NULL, "share", "show", path, "-o", "json",
                    (const char *)NULL);
        ck_assert_msg(r.status == 0, "share show failed: %s", r.err);
        json_error_t je;
        json_t *j = json_loads(r.out, 0, &je);
        ck_assert_msg(j != NULL, "share show: not JSON: %s", r.out);
        json_t *hs = json_object_get(j, "hosts"), *h;
        size_t i, same = 0, right = 0;
        json_array_foreach(hs, i, h)
        {
            same += json_is_true(json_object_get(h, "same_view"));
            right +=
                fabs(json_real_value(json_object_get(h, "part")) - part) < 1e-6;
        }
        bool done =
            json_array_size(hs) == n && same == n && right == n &&
            json_integer_value(json_object_get(j, "members")) == (json_int_t)n;
        uint64_t view =
            (uint64_t)json_integer_value(json_object_get(j, "view"));
        json_decref(j);
        for (size_t k = 0; done && k < n; k++) {
            struct harness_reply rep;
            call_path(fds[k], "stats", path, &rep);
            done = get_u64(rep.result, "view_version") == view &&
                   get_u64(rep.result, "fleet_members") == n;
            harness_reply_destroy(&rep);
        }
        if (done) {
            harness_ctl_free(&r);
            break;
        }
        ck_assert_msg(harness_now() - t0 < 30.0,
                      "share show never showed %zu hosts at %.1f on one "
                      "view: %s",
                      n, part, r.out);
        harness_ctl_free(&r);
        harness_sleep_ms(250);
    }
    struct harness_ctl r;
    harness_ctl(&r, NULL, "share", "show", path, (const char *)NULL);
    ck_assert_msg(r.status == 0 && strstr(r.out, "PART/S") != NULL &&
                      strstr(r.out, "other view") == NULL,
                  "share show: %s%s", r.out, r.err);
    harness_log("share show %s:\n%s", path, r.out);
    harness_ctl_free(&r);
    harness_ctl(&r, NULL, "share", "show", "no/such/rule", (const char *)NULL);
    ck_assert_int_eq(r.status, 1);
    ck_assert_msg(strstr(r.err, "no quota at no/such/rule") != NULL, "%s",
                  r.err);
    harness_ctl_free(&r);
}

START_TEST(fleet_shares)
{
    struct gossip_cluster gc;
    gossip_cluster_begin("fleet_shares", &gc);
    CTL_OK("quota", "set", "web", "kind=rate", "rate=300", "burst=30",
           "fleet=web", "share=equal");
    struct agent ag[3];
    int fd[3];
    char names[3][16], bind[3][32];
    fleet_start(&gc, "sagent", 3, NULL, ag, fd, names, bind);
    wait_parts(fd, 3, "web", 100);
    /* The servers see the same parts, and that every host computed them
     * from the same view (allotctl share show). */
    wait_share_show("web", 3, 100, fd);
    /* A graceful stop is a leave: the other two grow at once. */
    close(fd[2]);
    agent_stop(&ag[2]);
    wait_parts(fd, 2, "web", 150);
    /* Back (same data, same address): the others shrink as soon as they
     * see it; it takes its third once its probation is over. */
    gossip_agent_start(&ag[2], names[2], bind[2], gc.seeds, gc.keyring, "1");
    fd[2] = agent_connect(&ag[2]);
    wait_parts(fd, 3, "web", 100);
    /* Every server dies: the parts stay. */
    kill_servers();
    harness_sleep_ms(2000);
    for (int i = 0; i < 3; i++) {
        double r = local_rate(fd[i], "web");
        ck_assert_msg(fabs(r - 100) < 1e-6, "%s enforces %.3f/s, want 100",
                      names[i], r);
    }
    /* (Checked for all before any stops: a leaving agent grows the rest.) */
    for (int i = 0; i < 3; i++) {
        close(fd[i]);
        agent_stop(&ag[i]);
    }
    harness_end();
}
END_TEST

/* Offer every agent of fds about `per_agent` checks a second of path for
 * `seconds`, round robin from this thread; returns the checks admitted
 * and sets *offered. */
static uint64_t offer_load(const int *fds, int n, const char *path,
                           double per_agent, double seconds, uint64_t *offered)
{
    uint64_t admitted = 0, sent = 0;
    double t0 = harness_now(), gap = 1.0 / (per_agent * n);
    while (harness_now() - t0 < seconds) {
        admitted += (uint64_t)check(fds[sent % (uint64_t)n], path, NULL);
        sent++;
        double next = t0 + (double)sent * gap, now = harness_now();
        if (next > now) {
            harness_sleep_ms((int)((next - now) * 1000.0));
        }
    }
    *offered = sent;
    return admitted;
}

/* One load phase: the fleet never admits more than L * T plus its hosts'
 * bursts (GCRA's bound on each host, summed), and admits most of what it
 * can when the offer is above L (the offer is what this thread managed
 * to send: a slow machine lowers both). */
static void load_phase(const char *what, const int *fds, int n, double rate,
                       uint64_t burst_each)
{
    const double seconds = 4.0;
    uint64_t offered;
    uint64_t admitted =
        offer_load(fds, n, "api", 3.0 * rate / n, seconds, &offered);
    double bound = rate * seconds + (double)(burst_each * (uint64_t)n) + n;
    harness_log("%s: %d agents, offered %.1f/s, admitted %.1f/s (L = %.0f/s)",
                what, n, (double)offered / seconds, (double)admitted / seconds,
                rate);
    ck_assert_msg((double)admitted <= bound,
                  "%s: admitted %llu > L*T + bursts = %.0f", what,
                  (unsigned long long)admitted, bound);
    double can =
        (double)offered < rate * seconds ? (double)offered : rate * seconds;
    ck_assert_msg((double)admitted >= 0.5 * can,
                  "%s: admitted %llu, under half of %.0f", what,
                  (unsigned long long)admitted, can);
}

/* The shares issue's process test: 3 allotd and 12 agents of fleet web,
 * each offered 3x its part of L = 120/s. The fleet admits about L; half
 * the agents stop and the rest double their parts (the fleet still admits
 * about L); they come back and the parts halve; every server dies and
 * the parts stay. */
START_TEST(fleet_load)
{
    enum { N = 12 };
    const double rate = 120;
    struct gossip_cluster gc;
    gossip_cluster_begin("fleet_load", &gc);
    CTL_OK("quota", "set", "api", "kind=rate", "rate=120", "burst=12",
           "fleet=web", "share=equal");
    char bind[N][32], names[N][16];
    struct agent ag[N];
    int fd[N];
    fleet_start(&gc, "lagent", N, NULL, ag, fd, names, bind);
    wait_parts(fd, N, "api", rate / N);
    load_phase("12 agents", fd, N, rate, 1);
    /* Half stop (scale-in): the others double their parts. */
    for (int i = N / 2; i < N; i++) {
        close(fd[i]);
        agent_stop(&ag[i]);
    }
    wait_parts(fd, N / 2, "api", rate / (N / 2));
    load_phase("6 agents", fd, N / 2, rate, 2);
    /* They come back: the parts halve again. */
    for (int i = N / 2; i < N; i++) {
        gossip_agent_start(&ag[i], names[i], bind[i], gc.seeds, gc.keyring,
                           "1");
    }
    for (int i = N / 2; i < N; i++) {
        fd[i] = agent_connect(&ag[i]);
    }
    wait_parts(fd, N, "api", rate / N);
    load_phase("12 agents again", fd, N, rate, 1);
    /* Every server dies: the parts, and the fleet's limit, stay. */
    kill_servers();
    load_phase("12 agents, no server", fd, N, rate, 1);
    for (int i = 0; i < N; i++) {
        double r = local_rate(fd[i], "api");
        ck_assert_msg(fabs(r - rate / N) < 1e-6, "%s enforces %.3f/s", names[i],
                      r);
    }
    for (int i = 0; i < N; i++) {
        close(fd[i]);
        agent_stop(&ag[i]);
    }
    harness_end();
}
END_TEST

/* Demand shares between real agents: three agents of fleet web share a
 * demand rule of 90/s; one is offered 60/s, the others 5/s each. Each
 * measures what it wanted over a 1 s usage window and gossips it, and the
 * parts move from a third each towards what each wants: the busy agent
 * ends with most of the limit, the quiet ones with about what they use. */
START_TEST(fleet_demand)
{
    struct gossip_cluster gc;
    gossip_cluster_begin("fleet_demand", &gc);
    CTL_OK("quota", "set", "dem", "kind=rate", "rate=90", "burst=9",
           "fleet=web", "share=demand");
    struct agent ag[3];
    int fd[3];
    char names[3][16], bind[3][32];
    fleet_start(&gc, "dagent", 3, "1000", ag, fd, names, bind);
    /* No demand known yet: by weight, a third each. */
    wait_parts(fd, 3, "dem", 30);
    /* 60/s to the first, 5/s to each other, until the parts follow. */
    double t0 = harness_now();
    double p0 = 0, p1 = 0, p2 = 0;
    for (int tick = 0;; tick++) {
        for (int k = 0; k < 6; k++) {
            check(fd[0], "dem", NULL);
        }
        if (tick % 2 == 0) {
            check(fd[1], "dem", NULL);
            check(fd[2], "dem", NULL);
        }
        harness_sleep_ms(100);
        if (tick % 10 == 9) {
            p0 = local_rate(fd[0], "dem");
            p1 = local_rate(fd[1], "dem");
            p2 = local_rate(fd[2], "dem");
            if (p0 > 60 && p1 < 15 && p2 < 15) {
                break;
            }
        }
        ck_assert_msg(harness_now() - t0 < WAIT_MS / 1000.0,
                      "parts stay at %.1f, %.1f, %.1f", p0, p1, p2);
    }
    harness_log("demand parts after %.1f s: %.1f, %.1f, %.1f /s",
                harness_now() - t0, p0, p1, p2);
    /* They still add up to the limit (within the floor's rounding). */
    ck_assert_msg(fabs(p0 + p1 + p2 - 90) < 0.5, "parts sum to %.2f",
                  p0 + p1 + p2);
    for (int i = 0; i < 3; i++) {
        close(fd[i]);
    }
    for (int i = 0; i < 3; i++) {
        agent_stop(&ag[i]);
    }
    harness_end();
}
END_TEST

/* --- Usage reports ----------------------------------------------------- */

/* Sum a rule's counter over every window `host` reported, from
 * `allotctl usage PATH --host HOST -o json`. */
static uint64_t usage_sum(const char *host, const char *path, const char *field)
{
    struct harness_ctl r;
    harness_ctl(&r, NULL, "usage", path, "--host", host, "-o", "json",
                (const char *)NULL);
    ck_assert_msg(r.status == 0, "allotctl usage failed: %s", r.err);
    json_error_t e;
    json_t *j = json_loads(r.out, 0, &e);
    ck_assert_msg(j != NULL, "usage: not JSON: %s", r.out);
    uint64_t sum = 0;
    size_t i, k, m;
    json_t *h, *w, *rule;
    json_array_foreach(json_object_get(j, "hosts"), i, h)
    {
        ck_assert_str_eq(json_string_value(json_object_get(h, "host")), host);
        json_array_foreach(json_object_get(h, "windows"), k, w)
        {
            json_array_foreach(json_object_get(w, "rules"), m, rule)
            {
                const char *p =
                    json_string_value(json_object_get(rule, "path"));
                if (p != NULL && strcmp(p, path) == 0) {
                    sum += (uint64_t)json_integer_value(
                        json_object_get(rule, field));
                }
            }
        }
    }
    json_decref(j);
    harness_ctl_free(&r);
    return sum;
}

/* Poll until host's windows show `want` of field for path. */
static void wait_usage(const char *host, const char *path, const char *field,
                       uint64_t want)
{
    double t0 = harness_now();
    uint64_t got;
    while ((got = usage_sum(host, path, field)) != want) {
        ck_assert_msg(got < want && harness_now() - t0 < WAIT_MS / 1000.0,
                      "usage %s %s: %llu, want %llu", path, field,
                      (unsigned long long)got, (unsigned long long)want);
        harness_sleep_ms(100);
    }
    harness_log("usage %s %s = %llu after %.3f s", path, field,
                (unsigned long long)want, harness_now() - t0);
}

struct bad_report
{
    const char *what;
    int n_rules;      /* rules to pack (valid ones) */
    bool no_host;     /* leave out "host" */
    bool bad_path;    /* one rule with an invalid path */
    bool str_counter; /* "admitted" as a string */
    bool dup;         /* the same path twice */
};

static void pack_bad_report(msgpack_packer *pk, void *arg)
{
    const struct bad_report *b = arg;
    msgpack_pack_map(pk, b->no_host ? 3 : 4);
    if (!b->no_host) {
        wire_pack_kv_str(pk, "host", "badhost");
    }
    wire_pack_kv_u64(pk, "window_start_ms", 1000);
    wire_pack_kv_u64(pk, "window_ms", 1000);
    wire_pack_str(pk, "rules");
    msgpack_pack_array(pk, (uint32_t)b->n_rules);
    for (int i = 0; i < b->n_rules; i++) {
        char path[64];
        snprintf(path, sizeof path,
                 b->bad_path && i == 0 ? "bad//path"
                 : b->dup              ? "org/dup"
                                       : "org/r%d",
                 i);
        msgpack_pack_map(pk, 5);
        wire_pack_kv_str(pk, "path", path);
        wire_pack_kv_u64(pk, "cost", 5);
        if (b->str_counter) {
            wire_pack_kv_str(pk, "admitted", "5");
        } else {
            wire_pack_kv_u64(pk, "admitted", 5);
        }
        wire_pack_kv_u64(pk, "rejected", 0);
        wire_pack_kv_u64(pk, "shadowed", 0);
    }
}

/* An agent reports its windows; allotctl usage shows them. Bad reports
 * are refused whole and leave nothing behind. */
START_TEST(usage_report)
{
    harness_begin("usage_report");
    harness_cluster_start(3);
    unsigned leader = harness_wait_leader(WAIT_MS);
    ck_assert_uint_ne(leader, 0);
    rules_setup();
    uint64_t v = cluster_version();
    char servers[256];
    snprintf(servers, sizeof servers, "%s", harness_endpoints(0));
    struct agent ag;
    const char *extra[] = {"--window-ms", "300", "--host", "hostA", NULL};
    agent_start_args(&ag, "uagent", servers, extra);
    int fd = agent_connect(&ag);
    wait_version(fd, v);
    ck_assert_int_eq(count_admitted(fd, "org/api", 8), 5);
    ck_assert_uint_ne(acquire(fd, "batch"), 0);
    wait_usage("hostA", "org/api", "admitted", 5);
    wait_usage("hostA", "org/api", "rejected", 3);
    wait_usage("hostA", "org/api", "cost", 5);
    ck_assert_uint_ge(usage_sum("hostA", "batch", "peak"), 1);

    static const struct bad_report bad[] = {
        {.what = "no host", .n_rules = 1, .no_host = true},
        {.what = "bad path", .n_rules = 2, .bad_path = true},
        {.what = "string counter", .n_rules = 1, .str_counter = true},
        {.what = "path twice", .n_rules = 2, .dup = true},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct harness_reply rep;
        int rv = harness_call(leader, "usage.report", pack_bad_report,
                              (void *)&bad[i], &rep, HARNESS_CALL_TIMEOUT_MS);
        ck_assert_msg(rv == ALLOT_EINVALID, "%s: %s (want invalid)",
                      bad[i].what, allot_error_name(rv));
        harness_log("bad report (%s): %s", bad[i].what, rep.message);
        harness_reply_destroy(&rep);
    }
    struct bad_report big = {.what = "too many rules", .n_rules = 1025};
    struct harness_reply rep;
    ck_assert_int_eq(harness_call(leader, "usage.report", pack_bad_report, &big,
                                  &rep, HARNESS_CALL_TIMEOUT_MS),
                     ALLOT_ETOO_BIG);
    harness_reply_destroy(&rep);
    ck_assert_uint_eq(usage_sum("badhost", "", "admitted"), 0);
    /* A good one through a follower reaches the leader's store. */
    struct bad_report good = {.what = "good", .n_rules = 1};
    unsigned follower = leader == 1 ? 2 : 1;
    ck_assert_int_eq(harness_call(follower, "usage.report", pack_bad_report,
                                  &good, &rep, HARNESS_CALL_TIMEOUT_MS),
                     0);
    harness_reply_destroy(&rep);
    ck_assert_uint_eq(usage_sum("badhost", "org/r0", "admitted"), 5);

    close(fd);
    agent_stop(&ag);
    harness_end();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("enforce_agent");
    TCase *tc = tcase_create("agent");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, agent_badinput);
    tcase_add_test(tc, agent_disconnect);
    tcase_add_test(tc, e2e);
    tcase_add_test(tc, gossip_e2e);
    tcase_add_test(tc, fleet_shares);
    tcase_add_test(tc, fleet_load);
    tcase_add_test(tc, fleet_demand);
    tcase_add_test(tc, usage_report);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return harness_main(suite());
}
