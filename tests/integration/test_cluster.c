/* test_cluster.c - a real 3-node allot cluster on 127.0.0.1.
 *
 *   acceptance      write through a follower, read through another node,
 *                   SIGKILL the leader, a new leader, writes go on, the
 *                   killed node restarts and catches up (digests equal), a
 *                   4th node joins as a voter, replicates, is removed
 *   sigterm         every node exits 0 on SIGTERM, in any order, with
 *                   clients connected
 *   cas_and_errors  --if-version conflicts name both versions; not_found
 *   ctl_exit_status 2 for a bad command line, 1 for a refused command
 *   json_output     -o json of quota set/get/ls and cluster status
 *   exactly_once    one (client, seq) sent to three nodes applies once,
 *                   also after the leader is killed
 *   ctl_failover    allotctl with a dead first endpoint still works
 *   snapshot_catchup a node behind a snapshot catches up; a full restart
 *                   keeps the catalog and the client sessions
 *   validation_and_audit  capacity set; a quota tree refused where it
 *                   breaks a rule; a child without a parent; rm without and
 *                   with --recursive; the audit trail (-o json, --since, a
 *                   prefix, --principal), audit-retention; the same trail
 *                   through another node after SIGKILL of the leader
 *
 * Durations (election, failover, catch-up) are printed, never asserted. */
#include <check.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"
#include "wire.h"

#define CTL(r, eps, ...) \
    harness_ctl((r), (eps), __VA_ARGS__, (const char *)NULL)

/* Run allotctl and assert it succeeded. */
#define CTL_OK(r, eps, ...)                                                  \
    do {                                                                     \
        CTL(r, eps, __VA_ARGS__);                                            \
        ck_assert_msg((r)->status == 0,                                      \
                      "allotctl %s failed with status %d: %s", #__VA_ARGS__, \
                      (r)->status, (r)->err);                                \
    } while (0)

/* --- Helpers -------------------------------------------------------------- */

static json_t *parse_json(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    ck_assert_msg(j != NULL, "not one JSON document (line %d: %s): %s", e.line,
                  e.text, text);
    return j;
}

static json_int_t json_int_at(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    ck_assert_msg(json_is_integer(v), "\"%s\" is not an integer", key);
    return json_integer_value(v);
}

static const char *json_str_at(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    ck_assert_msg(json_is_string(v), "\"%s\" is not a string", key);
    return json_string_value(v);
}

/* The nodes that are neither `a` nor `b`, in id order. */
static unsigned other_node(unsigned n, unsigned a, unsigned b)
{
    for (unsigned id = 1; id <= n; id++) {
        if (id != a && id != b && harness_node_running(id)) {
            return id;
        }
    }
    ck_abort_msg("no running node other than %u and %u", a, b);
    return 0;
}

/* Does text hold n as a whole decimal number? */
static bool has_number(const char *text, unsigned long long n)
{
    char want[32];
    snprintf(want, sizeof want, "%llu", n);
    size_t len = strlen(want);
    for (const char *p = strstr(text, want); p != NULL;
         p = strstr(p + 1, want)) {
        bool left = p == text || p[-1] < '0' || p[-1] > '9';
        bool right = p[len] < '0' || p[len] > '9';
        if (left && right) {
            return true;
        }
    }
    return false;
}

static unsigned count_lines(const char *text)
{
    unsigned n = 0;
    for (const char *p = text; *p != '\0'; p++) {
        n += *p == '\n';
    }
    return n;
}

/* Version of quota `path` read with -o json through endpoints. */
static json_int_t quota_version(const char *endpoints, const char *path)
{
    struct harness_ctl r;
    CTL_OK(&r, endpoints, "-o", "json", "quota", "get", path);
    json_t *j = parse_json(r.out);
    json_int_t v = json_int_at(j, "version");
    json_decref(j);
    harness_ctl_free(&r);
    return v;
}

static unsigned start_cluster(void)
{
    harness_cluster_start(3);
    double t = harness_now();
    unsigned leader = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
    ck_assert_msg(leader != 0, "no ready leader within %d ms",
                  HARNESS_LEADER_WAIT_MS);
    harness_log("first election: node %u ready as leader %.3f s after start",
                leader, harness_now() - t);
    return leader;
}

static void converge(struct harness_status *leader_st)
{
    double t = harness_now();
    int rv = harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, leader_st);
    ck_assert_msg(rv == 0, "nodes did not converge within %d ms",
                  HARNESS_CONVERGE_WAIT_MS);
    harness_log("converged in %.3f s", harness_now() - t);
}

/* `cluster status --digest -o json` of each running node through allotctl:
 * every digest and applied_index equal. */
static void check_digests_with_ctl(void)
{
    char first_digest[80] = "";
    json_int_t first_applied = -1;
    unsigned checked = 0;
    for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
        if (!harness_node_running(id)) {
            continue;
        }
        struct harness_ctl r;
        CTL_OK(&r, harness_node_client_addr(id), "-o", "json", "cluster",
               "status", "--digest");
        json_t *j = parse_json(r.out);
        ck_assert_int_eq(json_int_at(j, "id"), id);
        const char *digest = json_str_at(j, "digest");
        json_int_t applied = json_int_at(j, "applied_index");
        ck_assert_uint_eq(strlen(digest), 64);
        if (checked == 0) {
            snprintf(first_digest, sizeof first_digest, "%s", digest);
            first_applied = applied;
        } else {
            ck_assert_msg(strcmp(digest, first_digest) == 0,
                          "node %u digest %s differs from %s", id, digest,
                          first_digest);
            ck_assert_msg(applied == first_applied,
                          "node %u applied_index %lld differs from %lld", id,
                          (long long)applied, (long long)first_applied);
        }
        checked++;
        json_decref(j);
        harness_ctl_free(&r);
    }
    harness_log("allotctl cluster status --digest: %u nodes agree on %.16s... "
                "at applied index %lld",
                checked, first_digest, (long long)first_applied);
}

/* Poll `cluster status -o json` on node `ask` until member `id` is present
 * with role `role` (want=true) or absent (want=false). */
static bool wait_member(unsigned ask, uint64_t id, const char *role, bool want)
{
    double deadline = harness_now() + HARNESS_CONVERGE_WAIT_MS / 1000.0;
    for (int round = 0; round < HARNESS_CONVERGE_WAIT_MS / 200 + 1; round++) {
        struct harness_ctl r;
        CTL_OK(&r, harness_node_client_addr(ask), "-o", "json", "cluster",
               "status");
        json_t *j = parse_json(r.out);
        json_t *ms = json_object_get(j, "members");
        ck_assert(json_is_array(ms));
        bool found = false;
        for (size_t i = 0; i < json_array_size(ms); i++) {
            json_t *m = json_array_get(ms, i);
            if (json_int_at(m, "id") == (json_int_t)id &&
                (role == NULL || strcmp(json_str_at(m, "role"), role) == 0)) {
                found = true;
            }
        }
        json_decref(j);
        harness_ctl_free(&r);
        if (found == want) {
            return true;
        }
        if (harness_now() >= deadline) {
            break;
        }
        harness_sleep_ms(200);
    }
    return false;
}

/* --- acceptance ----------------------------------------------------------- */

START_TEST(test_acceptance)
{
    struct harness_ctl r;
    struct harness_status st;
    int status;
    harness_begin("acceptance");
    unsigned leader = start_cluster();
    unsigned f1 = other_node(3, leader, 0);
    unsigned f2 = other_node(3, leader, f1);

    /* A write through a follower: it forwards to the leader. */
    CTL_OK(&r, harness_node_client_addr(f1), "quota", "set", "team-a",
           "kind=capacity", "guaranteed.memory_mb=1024", "max.memory_mb=2048",
           "max_apps=10");
    ck_assert_msg(strstr(r.out, "set team-a version 1") != NULL, "stdout: %s",
                  r.out);
    harness_log("write through follower %u took %.3f s", f1, r.seconds);
    harness_ctl_free(&r);

    /* Read it through the other follower. */
    CTL_OK(&r, harness_node_client_addr(f2), "-o", "json", "quota", "get",
           "team-a");
    json_t *q = parse_json(r.out);
    ck_assert_str_eq(json_str_at(q, "path"), "team-a");
    ck_assert_str_eq(json_str_at(q, "kind"), "capacity");
    ck_assert_int_eq(json_int_at(q, "version"), 1);
    ck_assert_int_eq(json_int_at(json_object_get(q, "guaranteed"), "memory_mb"),
                     1024);
    ck_assert_int_eq(json_int_at(json_object_get(q, "max"), "memory_mb"), 2048);
    ck_assert_int_eq(json_int_at(q, "max_apps"), 10);
    json_decref(q);
    harness_ctl_free(&r);
    converge(&st);

    /* kill -9 the leader; a survivor takes over. */
    harness_node_kill(leader, SIGKILL);
    double t_kill = harness_now();
    ck_assert_int_eq(harness_wait_exit(leader, &status), 0);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s",
                  harness_status_text(status));
    unsigned new_leader = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
    ck_assert_msg(new_leader != 0, "no new leader after killing node %u",
                  leader);
    ck_assert_uint_ne(new_leader, leader);
    harness_log("FAILOVER: node %u ready as leader %.3f s after SIGKILL of "
                "leader %u",
                new_leader, harness_now() - t_kill, leader);

    /* Writes go on through the survivors. */
    const char *survivors = harness_endpoints(0);
    char eps[256];
    snprintf(eps, sizeof eps, "%s", survivors);
    CTL_OK(&r, eps, "quota", "set", "team-b", "kind=capacity",
           "guaranteed.memory_mb=512", "max.memory_mb=512");
    harness_log("first write after failover took %.3f s", r.seconds);
    harness_ctl_free(&r);
    CTL_OK(&r, eps, "quota", "set", "team-a", "max_apps=20");
    harness_ctl_free(&r);
    CTL_OK(&r, eps, "quota", "set", "api", "kind=rate", "rate=100", "burst=20",
           "unit=requests");
    harness_ctl_free(&r);
    CTL_OK(&r, eps, "quota", "set", "scratch", "kind=capacity",
           "max.memory_mb=1");
    harness_ctl_free(&r);
    CTL_OK(&r, eps, "quota", "rm", "scratch");
    harness_ctl_free(&r);
    ck_assert_int_eq(quota_version(eps, "team-a"), 3);
    struct harness_status before_restart;
    converge(&before_restart);
    ck_assert_uint_eq(before_restart.catalog_version, 6);
    ck_assert_uint_eq(before_restart.quotas, 3);

    /* The killed node restarts from its data directory and catches up. */
    harness_node_restart(leader);
    double t_restart = harness_now();
    double deadline = t_restart + HARNESS_CONVERGE_WAIT_MS / 1000.0;
    bool caught_up = false;
    for (int i = 0; i < HARNESS_CONVERGE_WAIT_MS / 50 + 1 && !caught_up &&
                    harness_now() < deadline;
         i++) {
        struct harness_status s;
        if (harness_status(leader, false, &s, 2000) == 0 &&
            s.applied_index >= before_restart.applied_index) {
            caught_up = true;
            harness_log("CATCH-UP: restarted node %u applied index %llu "
                        "(leader's was %llu) %.3f s after restart",
                        leader, (unsigned long long)s.applied_index,
                        (unsigned long long)before_restart.applied_index,
                        harness_now() - t_restart);
        } else {
            harness_sleep_ms(50);
        }
    }
    ck_assert_msg(caught_up, "node %u did not catch up", leader);
    converge(&st);
    ck_assert_uint_eq(st.catalog_version, before_restart.catalog_version);
    ck_assert_str_eq(st.digest, before_restart.digest);
    check_digests_with_ctl();
    ck_assert_int_eq(quota_version(harness_node_client_addr(leader), "team-a"),
                     3);

    /* A 4th node joins through a member's client address. */
    unsigned via = other_node(3, new_leader, 0);
    double t_join = harness_now();
    harness_node_join(4, via);
    ck_assert_msg(wait_member(new_leader, 4, "voter", true),
                  "node 4 never showed up as a voter");
    harness_log("JOIN: node 4 is a voter %.3f s after its start",
                harness_now() - t_join);
    CTL_OK(&r, harness_node_client_addr(4), "quota", "set", "team-c",
           "kind=capacity", "guaranteed.memory_mb=64", "max.memory_mb=128");
    harness_ctl_free(&r);
    converge(&st);
    ck_assert_uint_eq(st.catalog_version, 7);
    ck_assert_msg(harness_member(&st, 4) != NULL &&
                      strcmp(harness_member(&st, 4)->role, "voter") == 0,
                  "leader does not list node 4 as a voter");
    check_digests_with_ctl();

    /* ... and is removed again. */
    CTL_OK(&r, NULL, "cluster", "remove", "4");
    ck_assert_msg(strstr(r.out, "removed node 4") != NULL, "stdout: %s", r.out);
    harness_ctl_free(&r);
    for (unsigned id = 1; id <= 3; id++) {
        ck_assert_msg(wait_member(id, 4, NULL, false),
                      "node %u still lists node 4", id);
    }
    harness_node_kill(4, SIGTERM);
    ck_assert_int_eq(harness_wait_exit(4, &status), 0);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "removed node 4 %s after SIGTERM",
                  harness_status_text(status));

    /* The three remaining nodes still take writes. */
    CTL_OK(&r, NULL, "quota", "set", "team-d", "kind=capacity",
           "max.memory_mb=8");
    harness_ctl_free(&r);
    converge(&st);
    ck_assert_uint_eq(st.catalog_version, 8);
    ck_assert_uint_eq(st.n_members, 3);
    harness_end();
}
END_TEST

/* --- sigterm -------------------------------------------------------------- */

START_TEST(test_sigterm)
{
    struct harness_ctl r;
    int status;
    harness_begin("sigterm");
    unsigned leader = start_cluster();
    for (int i = 0; i < 5; i++) {
        char path[32];
        snprintf(path, sizeof path, "q%d", i);
        CTL_OK(&r, NULL, "quota", "set", path, "kind=capacity",
               "max.memory_mb=100");
        harness_ctl_free(&r);
    }
    converge(NULL);
    /* Idle clients, one with half a frame sent, must not hold shutdown. */
    int fds[4];
    for (unsigned id = 1; id <= 3; id++) {
        fds[id] = harness_raw_connect(id);
        ck_assert_int_ge(fds[id], 0);
    }
    static const char half[] = {0, 0, 0, 50, (char)0x82};
    ck_assert_int_eq(harness_raw_send(fds[leader], half, sizeof half), 0);

    /* A follower first, then the leader, then the last node (alone). */
    unsigned order[3];
    order[0] = other_node(3, leader, 0);
    order[1] = leader;
    order[2] = other_node(3, leader, order[0]);
    for (unsigned k = 0; k < 3; k++) {
        unsigned id = order[k];
        double t = harness_now();
        harness_node_kill(id, SIGTERM);
        ck_assert_int_eq(harness_wait_exit(id, &status), 0);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "node %u %s after SIGTERM (want exited 0)", id,
                      harness_status_text(status));
        ck_assert_msg(harness_raw_wait_closed(fds[id], HARNESS_IO_WAIT_MS),
                      "node %u exited but its client connection is open", id);
        close(fds[id]);
        harness_log("node %u (%s) exited 0 %.3f s after SIGTERM", id,
                    id == leader ? "leader" : "follower", harness_now() - t);
    }
    harness_end();
}
END_TEST

/* --- cas_and_errors ------------------------------------------------------- */

static void assert_error(const struct harness_ctl *r, const char *prefix)
{
    ck_assert_msg(r->status == 1, "status %d (want 1), stderr: %s", r->status,
                  r->err);
    ck_assert_msg(strncmp(r->err, prefix, strlen(prefix)) == 0,
                  "stderr does not start with \"%s\": %s", prefix, r->err);
    ck_assert_msg(count_lines(r->err) == 1, "stderr is not one line: %s",
                  r->err);
    ck_assert_msg(r->out[0] == '\0', "stdout not empty on error: %s", r->out);
}

START_TEST(test_cas_and_errors)
{
    struct harness_ctl r;
    harness_begin("cas_and_errors");
    start_cluster();
    CTL_OK(&r, NULL, "quota", "set", "proj", "kind=capacity",
           "guaranteed.memory_mb=10", "max.memory_mb=20");
    harness_ctl_free(&r);
    json_int_t v1 = quota_version(NULL, "proj");

    /* Mismatch: exit 1, `error: conflict: ` naming both versions. */
    json_int_t wrong = v1 + 41;
    char wrong_s[24], v1_s[24];
    snprintf(wrong_s, sizeof wrong_s, "%lld", (long long)wrong);
    snprintf(v1_s, sizeof v1_s, "%lld", (long long)v1);
    CTL(&r, NULL, "quota", "set", "proj", "max_apps=3", "--if-version",
        wrong_s);
    assert_error(&r, "error: conflict: ");
    ck_assert_msg(has_number(r.err, (unsigned long long)v1) &&
                      has_number(r.err, (unsigned long long)wrong),
                  "conflict message does not name versions %lld and %lld: %s",
                  (long long)v1, (long long)wrong, r.err);
    harness_ctl_free(&r);
    ck_assert_int_eq(quota_version(NULL, "proj"), v1);

    /* --if-version 0 means "must not exist". */
    CTL(&r, NULL, "quota", "set", "proj", "max_apps=3", "--if-version", "0");
    assert_error(&r, "error: conflict: ");
    ck_assert_msg(has_number(r.err, (unsigned long long)v1), "%s", r.err);
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "quota", "set", "fresh", "kind=rate", "rate=5",
           "--if-version", "0");
    harness_ctl_free(&r);

    /* The right version wins. */
    CTL_OK(&r, NULL, "-o", "json", "quota", "set", "proj", "max_apps=3",
           "--if-version", v1_s);
    json_t *j = parse_json(r.out);
    json_int_t v2 = json_int_at(j, "version");
    ck_assert_int_gt(v2, v1);
    ck_assert_int_eq(json_int_at(j, "max_apps"), 3);
    json_decref(j);
    harness_ctl_free(&r);

    /* rm with a stale version: conflict, the quota stays. */
    CTL(&r, NULL, "quota", "rm", "proj", "--if-version", v1_s);
    assert_error(&r, "error: conflict: ");
    ck_assert_msg(has_number(r.err, (unsigned long long)v1) &&
                      has_number(r.err, (unsigned long long)v2),
                  "%s", r.err);
    harness_ctl_free(&r);
    ck_assert_int_eq(quota_version(NULL, "proj"), v2);
    char v2_s[24];
    snprintf(v2_s, sizeof v2_s, "%lld", (long long)v2);
    CTL_OK(&r, NULL, "quota", "rm", "proj", "--if-version", v2_s);
    harness_ctl_free(&r);

    /* Missing paths: not_found, through every node. */
    for (unsigned id = 1; id <= 3; id++) {
        CTL(&r, harness_node_client_addr(id), "quota", "get", "proj");
        assert_error(&r, "error: not_found: ");
        harness_ctl_free(&r);
    }
    CTL(&r, NULL, "quota", "get", "no-such/path");
    assert_error(&r, "error: not_found: ");
    harness_ctl_free(&r);
    CTL(&r, NULL, "quota", "rm", "no-such");
    assert_error(&r, "error: not_found: ");
    harness_ctl_free(&r);
    CTL(&r, NULL, "-o", "json", "quota", "get", "no-such");
    assert_error(&r, "error: not_found: ");
    harness_ctl_free(&r);

    /* A bad command line is status 2 and never reaches a node. */
    CTL(&r, NULL, "quota", "set", "bad path!", "max_apps=1");
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strncmp(r.err, "error: invalid: ", 16) == 0, "%s", r.err);
    harness_ctl_free(&r);
    harness_end();
}
END_TEST

/* --- ctl_exit_status ------------------------------------------------------ */

/* allotctl's contract: status 2 for a command line it could not understand,
 * 1 for every error after that, whatever the code. A well-formed command
 * the cluster refuses with `invalid` is the second kind. */
START_TEST(test_ctl_exit_status)
{
    struct harness_ctl r;
    harness_begin("ctl_exit_status");
    start_cluster();
    CTL_OK(&r, NULL, "quota", "set", "cap", "kind=capacity",
           "max.memory_mb=10");
    harness_ctl_free(&r);

    /* Refused by allotctl itself: 2. */
    CTL(&r, NULL, "quota", "set", "cap", "bogus=1");
    ck_assert_int_eq(r.status, 2);
    ck_assert_msg(strncmp(r.err, "error: invalid: ", 16) == 0, "%s", r.err);
    harness_ctl_free(&r);
    CTL(&r, NULL, "quota", "frobnicate");
    ck_assert_int_eq(r.status, 2);
    harness_ctl_free(&r);

    /* Well-formed, refused by the cluster with `invalid`: 1. */
    CTL(&r, NULL, "quota", "set", "cap", "rate=5");
    ck_assert_msg(strncmp(r.err, "error: invalid: ", 16) == 0, "%s", r.err);
    ck_assert_msg(r.status == 1,
                  "a command the cluster refused exited %d, want 1 (2 is "
                  "for a command line allotctl cannot understand): %s",
                  r.status, r.err);
    harness_ctl_free(&r);
    CTL(&r, NULL, "cluster", "remove", "99");
    ck_assert_int_eq(r.status, 1);
    ck_assert_msg(strncmp(r.err, "error: not_found: ", 18) == 0, "%s", r.err);
    harness_ctl_free(&r);
    harness_end();
}
END_TEST

/* --- json_output ---------------------------------------------------------- */

START_TEST(test_json_output)
{
    struct harness_ctl r;
    harness_begin("json_output");
    unsigned leader = start_cluster();

    CTL_OK(&r, NULL, "-o", "json", "quota", "set", "org", "kind=capacity",
           "guaranteed.memory_mb=4096", "guaranteed.vcores=8",
           "max.memory_mb=8192", "max.vcores=16", "max_apps=50");
    json_t *set = parse_json(r.out);
    ck_assert_str_eq(json_str_at(set, "path"), "org");
    ck_assert_str_eq(json_str_at(set, "kind"), "capacity");
    json_int_t version = json_int_at(set, "version");
    json_decref(set);
    harness_ctl_free(&r);

    CTL_OK(&r, NULL, "-o", "json", "quota", "set", "svc", "kind=rate",
           "rate=250.5", "burst=100", "unit=bytes");
    harness_ctl_free(&r);

    CTL_OK(&r, NULL, "-o", "json", "quota", "get", "org");
    json_t *q = parse_json(r.out);
    ck_assert(json_is_object(q));
    ck_assert_str_eq(json_str_at(q, "path"), "org");
    ck_assert_str_eq(json_str_at(q, "kind"), "capacity");
    ck_assert_int_eq(json_int_at(q, "version"), version);
    json_t *g = json_object_get(q, "guaranteed");
    json_t *m = json_object_get(q, "max");
    ck_assert(json_is_object(g) && json_is_object(m));
    ck_assert_int_eq(json_int_at(g, "memory_mb"), 4096);
    ck_assert_int_eq(json_int_at(g, "vcores"), 8);
    ck_assert_int_eq(json_int_at(m, "memory_mb"), 8192);
    ck_assert_int_eq(json_int_at(m, "vcores"), 16);
    ck_assert_int_eq(json_int_at(q, "max_apps"), 50);
    ck_assert(json_is_array(json_object_get(q, "owners")));
    json_decref(q);
    harness_ctl_free(&r);

    CTL_OK(&r, NULL, "-o", "json", "quota", "get", "svc");
    q = parse_json(r.out);
    ck_assert_str_eq(json_str_at(q, "path"), "svc");
    ck_assert_str_eq(json_str_at(q, "kind"), "rate");
    ck_assert_int_gt(json_int_at(q, "version"), version);
    ck_assert(json_is_number(json_object_get(q, "rate")));
    ck_assert(json_number_value(json_object_get(q, "rate")) == 250.5);
    ck_assert_int_eq(json_int_at(q, "burst"), 100);
    ck_assert_str_eq(json_str_at(q, "unit"), "bytes");
    json_decref(q);
    harness_ctl_free(&r);

    CTL_OK(&r, NULL, "-o", "json", "quota", "ls");
    json_t *ls = parse_json(r.out);
    ck_assert_int_eq(json_int_at(ls, "catalog_version"), version + 1);
    json_t *qs = json_object_get(ls, "quotas");
    ck_assert(json_is_array(qs));
    ck_assert_uint_eq(json_array_size(qs), 2);
    ck_assert_str_eq(json_str_at(json_array_get(qs, 0), "path"), "org");
    ck_assert_str_eq(json_str_at(json_array_get(qs, 1), "path"), "svc");
    json_decref(ls);
    harness_ctl_free(&r);

    converge(NULL);
    for (unsigned id = 1; id <= 3; id++) {
        CTL_OK(&r, harness_node_client_addr(id), "-o", "json", "cluster",
               "status");
        json_t *s = parse_json(r.out);
        ck_assert_int_eq(json_int_at(s, "leader"), leader);
        ck_assert_int_ge(json_int_at(s, "commit_index"), 1);
        ck_assert_int_ge(json_int_at(s, "applied_index"), 1);
        json_t *ms = json_object_get(s, "members");
        ck_assert(json_is_array(ms));
        ck_assert_uint_eq(json_array_size(ms), 3);
        for (size_t i = 0; i < 3; i++) {
            json_t *mm = json_array_get(ms, i);
            json_int_t mid = json_int_at(mm, "id");
            ck_assert_int_ge(mid, 1);
            ck_assert_int_le(mid, 3);
            ck_assert_str_eq(json_str_at(mm, "raft_addr"),
                             harness_node_raft_addr((unsigned)mid));
            ck_assert_str_eq(json_str_at(mm, "role"), "voter");
            const char *state = json_str_at(mm, "state");
            if (mid == leader) {
                ck_assert_str_eq(state, "leader");
            } else if (id == leader) {
                /* The leader reports "unreachable" for a follower that has
                 * not answered since its last quorum check (at most one
                 * heartbeat after each election timeout). */
                ck_assert_msg(strcmp(state, "follower") == 0 ||
                                  strcmp(state, "unreachable") == 0,
                              "state %s", state);
            } else {
                ck_assert_str_eq(state, "follower");
            }
        }
        json_decref(s);
        harness_ctl_free(&r);
    }
    harness_end();
}
END_TEST

/* --- exactly_once --------------------------------------------------------- */

/* A quota.set built by hand, so that the same (client, seq) can be sent
 * twice. */
static void pack_set(msgpack_sbuffer *sb, uint64_t id, uint64_t client,
                     uint64_t seq, uint64_t ack, const char *path,
                     uint64_t memory_mb)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    wire_frame_start(sb, &pk);
    msgpack_pack_map(&pk, 6);
    wire_pack_kv_u64(&pk, "id", id);
    wire_pack_kv_str(&pk, "op", "quota.set");
    wire_pack_str(&pk, "args");
    msgpack_pack_map(&pk, 2);
    wire_pack_kv_str(&pk, "path", path);
    wire_pack_str(&pk, "fields");
    msgpack_pack_map(&pk, 2);
    wire_pack_kv_str(&pk, "kind", "capacity");
    wire_pack_str(&pk, "guaranteed");
    msgpack_pack_map(&pk, 1);
    wire_pack_kv_u64(&pk, "memory_mb", memory_mb);
    wire_pack_kv_u64(&pk, "client", client);
    wire_pack_kv_u64(&pk, "seq", seq);
    wire_pack_kv_u64(&pk, "ack", ack);
    ck_assert_int_eq(wire_frame_finish(sb), 0);
}

/* Send one frame to node id on a new connection and read the reply. */
static void send_once(unsigned id, const msgpack_sbuffer *sb,
                      struct harness_reply *rep)
{
    int fd = harness_raw_connect(id);
    ck_assert_msg(fd >= 0, "cannot connect to node %u", id);
    ck_assert_int_eq(harness_raw_send(fd, sb->data, sb->size), 0);
    int rv = harness_raw_recv(fd, HARNESS_CALL_TIMEOUT_MS, rep);
    ck_assert_msg(rv == 1, "no reply from node %u (%d)", id, rv);
    close(fd);
}

static uint64_t result_version(const struct harness_reply *rep)
{
    ck_assert_msg(rep->ok, "error reply %s: %s", rep->error, rep->message);
    const msgpack_object *v = wire_map_get(rep->result, "version");
    ck_assert(v != NULL && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER);
    return v->via.u64;
}

START_TEST(test_exactly_once)
{
    struct harness_status st;
    harness_begin("exactly_once");
    unsigned leader = start_cluster();
    unsigned a = other_node(3, leader, 0);
    unsigned b = other_node(3, leader, a);
    struct harness_ctl r;
    CTL_OK(&r, NULL, "quota", "set", "base", "kind=capacity",
           "max.memory_mb=1");
    harness_ctl_free(&r);
    converge(&st);
    uint64_t v0 = st.catalog_version;

    uint64_t client = UINT64_C(0x5eed000000000000) | (uint64_t)getpid();
    msgpack_sbuffer req;
    pack_set(&req, 77, client, 1, 1, "once", 1);

    /* First delivery through follower a (forwarded to the leader). */
    struct harness_reply first, second, third;
    send_once(a, &req, &first);
    ck_assert_uint_eq(first.id, 77);
    uint64_t v1 = result_version(&first);
    ck_assert_uint_eq(v1, v0 + 1);
    converge(&st);
    ck_assert_uint_eq(st.catalog_version, v0 + 1);
    char digest[65];
    snprintf(digest, sizeof digest, "%s", st.digest);

    /* The same bytes to follower b, then to the leader: the remembered
     * answer, nothing applied. */
    send_once(b, &req, &second);
    ck_assert_uint_eq(second.id, 77);
    ck_assert_uint_eq(result_version(&second), v1);
    ck_assert_msg(msgpack_object_equal(*first.result, *second.result),
                  "the retry's result differs from the first one");
    send_once(leader, &req, &third);
    ck_assert_uint_eq(result_version(&third), v1);
    ck_assert(msgpack_object_equal(*first.result, *third.result));
    harness_reply_destroy(&second);
    harness_reply_destroy(&third);
    msgpack_sbuffer_destroy(&req);
    converge(&st);
    ck_assert_uint_eq(st.catalog_version, v0 + 1);
    ck_assert_str_eq(st.digest, digest);
    harness_log("same (client, seq) sent to nodes %u, %u and %u: applied "
                "once at version %" PRIu64,
                a, b, leader, v1);

    /* Same (client, seq) with other content: still the first answer. */
    pack_set(&req, 78, client, 1, 1, "once", 999);
    send_once(leader, &req, &second);
    ck_assert_uint_eq(second.id, 78);
    ck_assert(msgpack_object_equal(*first.result, *second.result));
    harness_reply_destroy(&second);
    msgpack_sbuffer_destroy(&req);
    ck_assert_int_eq(quota_version(NULL, "once"), (json_int_t)v1);

    /* The next seq applies; the acknowledged one is refused, not redone. */
    pack_set(&req, 79, client, 2, 2, "once", 2);
    send_once(b, &req, &second);
    ck_assert_uint_eq(result_version(&second), v0 + 2);
    harness_reply_destroy(&second);
    msgpack_sbuffer_destroy(&req);
    pack_set(&req, 80, client, 1, 1, "once", 1);
    send_once(a, &req, &second);
    ck_assert_msg(!second.ok, "a write acknowledged by its client was "
                              "applied again");
    ck_assert_str_eq(second.error, "invalid");
    harness_reply_destroy(&second);
    msgpack_sbuffer_destroy(&req);
    converge(&st);
    ck_assert_uint_eq(st.catalog_version, v0 + 2);
    harness_reply_destroy(&first);

    /* The sessions are replicated state: after the leader dies, the new
     * leader still answers a retry of seq 2 from memory. */
    harness_node_kill(leader, SIGKILL);
    int status;
    ck_assert_int_eq(harness_wait_exit(leader, &status), 0);
    unsigned next = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
    ck_assert_msg(next != 0 && next != leader, "no new leader");
    pack_set(&req, 81, client, 2, 2, "once", 2);
    send_once(next, &req, &second);
    ck_assert_uint_eq(result_version(&second), v0 + 2);
    harness_reply_destroy(&second);
    msgpack_sbuffer_destroy(&req);
    converge(&st);
    ck_assert_uint_eq(st.catalog_version, v0 + 2);
    harness_log("retry of seq 2 to the new leader %u after SIGKILL of %u: "
                "answered from the session, not applied again",
                next, leader);
    harness_end();
}
END_TEST

/* --- ctl_failover --------------------------------------------------------- */

START_TEST(test_ctl_failover)
{
    struct harness_ctl r;
    char eps[512];
    harness_begin("ctl_failover");
    unsigned leader = start_cluster();

    /* First endpoint: a port nobody listens on. */
    uint16_t dead = harness_free_port();
    snprintf(eps, sizeof eps, "127.0.0.1:%u,%s", (unsigned)dead,
             harness_endpoints(0));
    CTL_OK(&r, eps, "quota", "set", "fo", "kind=capacity", "max.memory_mb=1");
    harness_log("set with a closed port first took %.3f s", r.seconds);
    harness_ctl_free(&r);
    CTL_OK(&r, eps, "quota", "get", "fo");
    harness_ctl_free(&r);
    CTL_OK(&r, eps, "quota", "ls");
    ck_assert_msg(strstr(r.out, "fo") != NULL, "%s", r.out);
    harness_ctl_free(&r);
    CTL_OK(&r, eps, "cluster", "status");
    harness_ctl_free(&r);

    /* First endpoint: a follower killed with SIGKILL. */
    unsigned f = other_node(3, leader, 0);
    unsigned g = other_node(3, leader, f);
    snprintf(eps, sizeof eps, "%s,%s,%s", harness_node_client_addr(f),
             harness_node_client_addr(leader), harness_node_client_addr(g));
    harness_node_kill(f, SIGKILL);
    int status;
    ck_assert_int_eq(harness_wait_exit(f, &status), 0);
    CTL_OK(&r, eps, "quota", "set", "fo", "max_apps=2");
    harness_log("set with a dead follower first took %.3f s", r.seconds);
    harness_ctl_free(&r);
    CTL_OK(&r, eps, "-o", "json", "quota", "get", "fo");
    json_t *q = parse_json(r.out);
    ck_assert_int_eq(json_int_at(q, "max_apps"), 2);
    json_decref(q);
    harness_ctl_free(&r);

    /* First endpoint: the leader, killed; the survivors elect (the
     * restarted follower makes a quorum) and the write gets through. */
    harness_node_restart(f);
    converge(NULL);
    snprintf(eps, sizeof eps, "%s,%s,%s", harness_node_client_addr(leader),
             harness_node_client_addr(f), harness_node_client_addr(g));
    harness_node_kill(leader, SIGKILL);
    ck_assert_int_eq(harness_wait_exit(leader, &status), 0);
    CTL_OK(&r, eps, "quota", "set", "fo", "max_apps=3");
    harness_log("set with the killed leader first took %.3f s (includes the "
                "election)",
                r.seconds);
    harness_ctl_free(&r);
    CTL_OK(&r, eps, "-o", "json", "quota", "get", "fo");
    q = parse_json(r.out);
    ck_assert_int_eq(json_int_at(q, "max_apps"), 3);
    json_decref(q);
    harness_ctl_free(&r);
    harness_end();
}
END_TEST

/* --- snapshot_catchup ----------------------------------------------------- */

struct set_arg
{
    const char *path;
    uint64_t memory_mb;
};

static void pack_set_args(msgpack_packer *pk, void *arg)
{
    const struct set_arg *s = arg;
    msgpack_pack_map(pk, 2);
    wire_pack_kv_str(pk, "path", s->path);
    wire_pack_str(pk, "fields");
    msgpack_pack_map(pk, 2);
    wire_pack_kv_str(pk, "kind", "capacity");
    wire_pack_str(pk, "max");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "memory_mb", s->memory_mb);
}

START_TEST(test_snapshot_catchup)
{
    static const char *const args[] = {"--snapshot-threshold", "32",
                                       "--snapshot-trailing", "16", NULL};
    struct harness_status st;
    int status;
    harness_begin("snapshot_catchup");
    harness_set_node_args(args);
    unsigned leader = start_cluster();
    unsigned f = other_node(3, leader, 0);
    harness_node_kill(f, SIGKILL);
    ck_assert_int_eq(harness_wait_exit(f, &status), 0);

    /* A write with a known (client, seq), so that its session ends up in
     * the snapshots below. */
    uint64_t client = UINT64_C(0x5a5a000000000000) | (uint64_t)getpid();
    msgpack_sbuffer pinned;
    struct harness_reply first, retry;
    pack_set(&pinned, 5, client, 1, 1, "pinned", 5);
    send_once(leader, &pinned, &first);
    uint64_t pinned_version = result_version(&first);
    ck_assert_uint_eq(pinned_version, 1);

    /* Enough writes for several snapshots while f is down, so the log it
     * needs is gone and it must install a snapshot. */
    struct allot_client *c;
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(allot_client_open(harness_endpoints(0),
                                       HARNESS_CALL_TIMEOUT_MS, &c, msg),
                     0);
    enum { N_WRITES = 200 };
    double t = harness_now();
    for (unsigned i = 0; i < N_WRITES; i++) {
        char path[32];
        snprintf(path, sizeof path, "bulk-%03u", i % 50);
        struct set_arg sa = {.path = path, .memory_mb = i + 1};
        struct allot_reply rep;
        int rv = allot_client_call(c, "quota.set", pack_set_args, &sa, &rep);
        ck_assert_msg(rv == 0, "write %u: %s: %s", i, allot_error_name(rv),
                      rep.message);
        allot_reply_destroy(&rep);
    }
    allot_client_close(c);
    harness_log("%d writes with node %u down took %.3f s", N_WRITES, f,
                harness_now() - t);
    struct harness_status before;
    converge(&before);
    ck_assert_uint_eq(before.catalog_version, N_WRITES + 1);
    ck_assert_uint_eq(before.quotas, 51);

    harness_node_restart(f);
    t = harness_now();
    converge(&st);
    harness_log("CATCH-UP (snapshot): node %u reached applied index %llu "
                "%.3f s after restart",
                f, (unsigned long long)st.applied_index, harness_now() - t);
    ck_assert_str_eq(st.digest, before.digest);
    check_digests_with_ctl();

    /* Stop everything, start everything: the catalog comes back from the
     * snapshots and logs on disk. */
    for (unsigned id = 1; id <= 3; id++) {
        harness_node_kill(id, SIGTERM);
    }
    for (unsigned id = 1; id <= 3; id++) {
        ck_assert_int_eq(harness_wait_exit(id, &status), 0);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "node %u %s", id, harness_status_text(status));
    }
    for (unsigned id = 1; id <= 3; id++) {
        harness_node_restart(id);
    }
    t = harness_now();
    ck_assert_uint_ne(harness_wait_leader(HARNESS_LEADER_WAIT_MS), 0);
    converge(&st);
    harness_log("full restart: ready and converged in %.3f s",
                harness_now() - t);
    ck_assert_uint_eq(st.catalog_version, before.catalog_version);
    ck_assert_str_eq(st.digest, before.digest);
    ck_assert_uint_eq(st.quotas, 51);

    /* The session came back from disk: the retry is answered, not
     * applied. */
    send_once(harness_wait_leader(HARNESS_LEADER_WAIT_MS), &pinned, &retry);
    ck_assert_uint_eq(result_version(&retry), pinned_version);
    ck_assert(msgpack_object_equal(*first.result, *retry.result));
    harness_reply_destroy(&first);
    harness_reply_destroy(&retry);
    msgpack_sbuffer_destroy(&pinned);
    converge(&st);
    ck_assert_uint_eq(st.catalog_version, before.catalog_version);
    struct harness_ctl r;
    CTL_OK(&r, NULL, "-o", "json", "quota", "get", "bulk-049");
    json_t *q = parse_json(r.out);
    ck_assert_int_eq(json_int_at(json_object_get(q, "max"), "memory_mb"),
                     N_WRITES);
    json_decref(q);
    harness_ctl_free(&r);
    harness_end();
}
END_TEST

/* --- validation_and_audit ------------------------------------------------- */

/* `allotctl -o json audit ARGS...` through endpoints: its "records" array
 * (a new reference). */
static json_t *audit_json(const char *endpoints, const char *a1, const char *a2,
                          const char *a3)
{
    struct harness_ctl r;
    CTL_OK(&r, endpoints, "-o", "json", "audit", a1, a2, a3);
    json_t *doc = parse_json(r.out);
    harness_ctl_free(&r);
    json_t *recs = json_object_get(doc, "records");
    ck_assert_msg(json_is_array(recs), "no records array");
    json_incref(recs);
    json_decref(doc);
    return recs;
}

/* Record i: its version, principal, op and path. */
static void assert_audit_record(const json_t *recs, size_t i,
                                json_int_t version, const char *op,
                                const char *path)
{
    const json_t *r = json_array_get(recs, i);
    ck_assert_msg(json_is_object(r), "no record %zu", i);
    ck_assert_int_eq(json_int_at(r, "version"), version);
    ck_assert_str_eq(json_str_at(r, "principal"), "anonymous");
    ck_assert_str_eq(json_str_at(r, "op"), op);
    ck_assert_str_eq(json_str_at(r, "path"), path);
    ck_assert_int_gt(json_int_at(r, "time_ms"), 0);
    ck_assert_int_ne(json_int_at(r, "client"), 0); /* allotctl's own id */
    ck_assert_int_ge(json_int_at(r, "seq"), 1);
}

START_TEST(test_validation_and_audit)
{
    struct harness_ctl r;
    int status;
    harness_begin("validation_and_audit");
    unsigned leader = start_cluster();
    unsigned f1 = other_node(3, leader, 0);
    const char *via_f1 = harness_node_client_addr(f1);

    /* Cluster capacity (v1), through a follower. */
    CTL_OK(&r, via_f1, "capacity", "set", "memory_mb=10000", "vcores=200");
    ck_assert_msg(strstr(r.out, "catalog version 1") != NULL, "%s", r.out);
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "-o", "json", "capacity", "get");
    json_t *cap = parse_json(r.out);
    ck_assert_int_eq(json_int_at(cap, "memory_mb"), 10000);
    ck_assert_int_eq(json_int_at(cap, "vcores"), 200);
    ck_assert_int_eq(json_int_at(json_object_get(cap, "guaranteed"), "vcores"),
                     0);
    json_decref(cap);
    harness_ctl_free(&r);

    /* A tree: org (v2) -> org/ads (v3) -> org/ads/x (v4). */
    CTL_OK(&r, via_f1, "quota", "set", "org", "kind=capacity",
           "guaranteed.memory_mb=4000", "guaranteed.vcores=150");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "quota", "set", "org/ads", "guaranteed.memory_mb=1000",
           "guaranteed.vcores=100");
    harness_ctl_free(&r);
    CTL(&r, via_f1, "quota", "set", "org/ads/x", "guaranteed.vcores=120");
    assert_error(&r, "error: validation_failed: children guaranteed.vcores ");
    ck_assert_msg(has_number(r.err, 120) && has_number(r.err, 100) &&
                      strstr(r.err, "org/ads") != NULL,
                  "the refusal does not name 120, 100 and org/ads: %s", r.err);
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "quota", "set", "org/ads/x", "guaranteed.vcores=60");
    harness_ctl_free(&r);

    /* The top level against the declared capacity; lowering it below what
     * the top level guarantees. */
    CTL(&r, NULL, "quota", "set", "big", "guaranteed.vcores=51");
    assert_error(&r, "error: validation_failed: top-level guaranteed.vcores ");
    ck_assert_msg(has_number(r.err, 201) && has_number(r.err, 200), "%s",
                  r.err);
    harness_ctl_free(&r);
    CTL(&r, NULL, "capacity", "set", "vcores=149");
    assert_error(&r, "error: validation_failed: top-level guaranteed.vcores ");
    ck_assert_msg(has_number(r.err, 150) && has_number(r.err, 149), "%s",
                  r.err);
    harness_ctl_free(&r);

    /* A child without its parent. */
    CTL(&r, NULL, "quota", "set", "nope/child", "max_apps=1");
    assert_error(&r, "error: not_found: ");
    ck_assert_msg(strstr(r.err, "parent nope does not exist") != NULL, "%s",
                  r.err);
    harness_ctl_free(&r);

    /* rm of a quota with children needs --recursive. */
    CTL(&r, NULL, "quota", "rm", "org");
    assert_error(&r, "error: validation_failed: ");
    ck_assert_msg(strstr(r.err, "--recursive") != NULL, "%s", r.err);
    harness_ctl_free(&r);
    ck_assert_int_eq(quota_version(NULL, "org/ads/x"), 4);
    /* ... removes all three with it (v5, v6, v7). */
    CTL_OK(&r, via_f1, "quota", "rm", "org", "--recursive");
    ck_assert_msg(strstr(r.out, "removed org (3 quotas, catalog version 7)") !=
                      NULL,
                  "stdout: %s", r.out);
    harness_ctl_free(&r);
    for (unsigned id = 1; id <= 3; id++) {
        CTL(&r, harness_node_client_addr(id), "quota", "get", "org/ads/x");
        assert_error(&r, "error: not_found: ");
        harness_ctl_free(&r);
    }
    CTL_OK(&r, NULL, "-o", "json", "quota", "ls");
    json_t *ls = parse_json(r.out);
    ck_assert_uint_eq(json_array_size(json_object_get(ls, "quotas")), 0);
    ck_assert_int_eq(json_int_at(ls, "catalog_version"), 7);
    json_decref(ls);
    harness_ctl_free(&r);

    /* The audit trail: every change, oldest first, nothing refused. */
    json_t *all = audit_json(NULL, NULL, NULL, NULL);
    ck_assert_uint_eq(json_array_size(all), 7);
    assert_audit_record(all, 0, 1, "capacity.set", "");
    assert_audit_record(all, 1, 2, "quota.set", "org");
    assert_audit_record(all, 2, 3, "quota.set", "org/ads");
    assert_audit_record(all, 3, 4, "quota.set", "org/ads/x");
    assert_audit_record(all, 4, 5, "quota.rm", "org");
    assert_audit_record(all, 5, 6, "quota.rm", "org/ads");
    assert_audit_record(all, 6, 7, "quota.rm", "org/ads/x");
    /* Values: created from nothing, removed to nothing. */
    const json_t *rec = json_array_get(all, 1);
    ck_assert(json_is_null(json_object_get(rec, "old")));
    ck_assert_str_eq(json_str_at(json_object_get(rec, "new"), "path"), "org");
    rec = json_array_get(all, 3);
    ck_assert_int_eq(
        json_int_at(json_object_get(json_object_get(rec, "new"), "guaranteed"),
                    "vcores"),
        60);
    rec = json_array_get(all, 5);
    ck_assert_str_eq(json_str_at(json_object_get(rec, "old"), "path"),
                     "org/ads");
    ck_assert(json_is_null(json_object_get(rec, "new")));
    rec = json_array_get(all, 0);
    ck_assert_int_eq(json_int_at(json_object_get(rec, "new"), "vcores"), 200);
    ck_assert(
        json_is_null(json_object_get(json_object_get(rec, "old"), "vcores")));
    /* One recursive removal: one request, one time. */
    json_int_t t_rm = json_int_at(json_array_get(all, 4), "time_ms");
    for (size_t i = 5; i < 7; i++) {
        ck_assert_int_eq(json_int_at(json_array_get(all, i), "time_ms"), t_rm);
        ck_assert_int_eq(json_int_at(json_array_get(all, i), "seq"),
                         json_int_at(json_array_get(all, 4), "seq"));
        ck_assert_int_eq(json_int_at(json_array_get(all, i), "client"),
                         json_int_at(json_array_get(all, 4), "client"));
    }

    /* --since: the records at or after a time (epoch milliseconds, or a
     * date). */
    char since[32];
    size_t n_since = 0;
    for (size_t i = 0; i < 7; i++) {
        n_since += json_int_at(json_array_get(all, i), "time_ms") >= t_rm;
    }
    snprintf(since, sizeof since, "%lld", (long long)t_rm);
    json_t *recs = audit_json(NULL, "--since", since, NULL);
    ck_assert_uint_eq(json_array_size(recs), n_since);
    ck_assert_uint_ge(n_since, 3);
    ck_assert(
        json_equal(json_array_get(recs, n_since - 1), json_array_get(all, 6)));
    json_decref(recs);
    json_int_t t_last = json_int_at(json_array_get(all, 6), "time_ms");
    snprintf(since, sizeof since, "%lld", (long long)t_last + 1);
    recs = audit_json(NULL, "--since", since, NULL);
    ck_assert_uint_eq(json_array_size(recs), 0);
    json_decref(recs);
    recs = audit_json(NULL, "--since", "2000-01-01T00:00:00Z", NULL);
    ck_assert(json_equal(recs, all));
    json_decref(recs);

    /* A prefix: itself and what lies under it, like quota ls. */
    recs = audit_json(via_f1, "org/ads", NULL, NULL);
    ck_assert_uint_eq(json_array_size(recs), 4);
    assert_audit_record(recs, 0, 3, "quota.set", "org/ads");
    assert_audit_record(recs, 1, 4, "quota.set", "org/ads/x");
    assert_audit_record(recs, 2, 6, "quota.rm", "org/ads");
    assert_audit_record(recs, 3, 7, "quota.rm", "org/ads/x");
    json_decref(recs);
    recs = audit_json(NULL, "org/ad", NULL, NULL);
    ck_assert_uint_eq(json_array_size(recs), 0);
    json_decref(recs);
    /* --principal. */
    recs = audit_json(NULL, "--principal", "anonymous", NULL);
    ck_assert(json_equal(recs, all));
    json_decref(recs);
    recs = audit_json(NULL, "--principal", "nobody", NULL);
    ck_assert_uint_eq(json_array_size(recs), 0);
    json_decref(recs);
    /* The table: a header and one line per record. */
    CTL_OK(&r, NULL, "audit");
    ck_assert_uint_eq(count_lines(r.out), 8);
    ck_assert_msg(strstr(r.out, "(cluster)") != NULL, "%s", r.out);
    ck_assert_msg(strstr(r.out, "quota.rm") != NULL, "%s", r.out);
    harness_ctl_free(&r);
    json_decref(all);

    /* Retention: set (v8), then read back. */
    CTL_OK(&r, via_f1, "audit-retention", "max_records=500", "max_age=2d");
    ck_assert_msg(strstr(r.out, "catalog version 8") != NULL, "%s", r.out);
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "audit-retention");
    ck_assert_msg(strstr(r.out, "max_records 500") != NULL &&
                      has_number(r.out, 172800000),
                  "%s", r.out);
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "-o", "json", "audit-retention");
    json_t *ret = parse_json(r.out);
    ck_assert_int_eq(json_int_at(ret, "max_records"), 500);
    ck_assert_int_eq(json_int_at(ret, "max_age_ms"), 172800000);
    ck_assert_ptr_null(json_object_get(ret, "records"));
    json_decref(ret);
    harness_ctl_free(&r);
    CTL(&r, NULL, "audit-retention", "max_age=forever");
    ck_assert_int_eq(r.status, 2);
    harness_ctl_free(&r);

    all = audit_json(via_f1, NULL, NULL, NULL);
    ck_assert_uint_eq(json_array_size(all), 8);
    assert_audit_record(all, 7, 8, "audit.config", "");
    ck_assert_int_eq(json_int_at(json_object_get(json_array_get(all, 7), "new"),
                                 "max_records"),
                     500);
    converge(NULL);

    /* SIGKILL the leader: the new leader serves the same trail, read
     * through another node. */
    harness_node_kill(leader, SIGKILL);
    ck_assert_int_eq(harness_wait_exit(leader, &status), 0);
    unsigned next = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
    ck_assert_msg(next != 0 && next != leader, "no new leader");
    unsigned other = other_node(3, leader, next);
    char eps[64];
    snprintf(eps, sizeof eps, "%s", harness_node_client_addr(other));
    recs = audit_json(eps, NULL, NULL, NULL);
    ck_assert_msg(json_equal(recs, all),
                  "the audit trail differs after the leader changed");
    json_decref(recs);
    /* ... and goes on from there. */
    CTL_OK(&r, eps, "quota", "set", "after", "kind=rate", "rate=5");
    harness_ctl_free(&r);
    recs = audit_json(eps, NULL, NULL, NULL);
    ck_assert_uint_eq(json_array_size(recs), 9);
    for (size_t i = 0; i < 8; i++) {
        ck_assert(json_equal(json_array_get(recs, i), json_array_get(all, i)));
    }
    assert_audit_record(recs, 8, 9, "quota.set", "after");
    json_decref(recs);
    json_decref(all);
    harness_log("audit trail identical through node %u after SIGKILL of "
                "leader %u (new leader %u)",
                other, leader, next);
    harness_end();
}
END_TEST

static Suite *cluster_suite(void)
{
    Suite *s = suite_create("cluster");
    TCase *tc = tcase_create("cluster");
    /* A bound against a hung test, not an expectation: the waits inside are
     * bounded by themselves. */
    tcase_set_timeout(tc, 400);
    tcase_add_test(tc, test_acceptance);
    tcase_add_test(tc, test_sigterm);
    tcase_add_test(tc, test_cas_and_errors);
    tcase_add_test(tc, test_ctl_exit_status);
    tcase_add_test(tc, test_json_output);
    tcase_add_test(tc, test_exactly_once);
    tcase_add_test(tc, test_ctl_failover);
    tcase_add_test(tc, test_snapshot_catchup);
    tcase_add_test(tc, test_validation_and_audit);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return harness_main(cluster_suite());
}
