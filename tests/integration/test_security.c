/* test_security.c - authentication and authorization on a real 3-node
 * cluster started WITHOUT --insecure, its first admin from --admin.
 *
 *   owners_story    the acceptance story through allotctl, as an admin and
 *                   two principals: the admin creates alice, bob and a
 *                   group, creates org owned by alice; alice creates org/a;
 *                   bob is refused (permission_denied, exit 1); the admin
 *                   may change org/a; once group:devs (bob) owns org/a, bob
 *                   may too; writes through a follower are forwarded and
 *                   the audit trail (-o json) names each principal; a
 *                   removed principal is no longer authenticated
 *   refusals        unsigned requests (allotctl without an identity, raw
 *                   frames; ping alone is allowed), an unknown identity, a
 *                   key that is not the principal's, a timestamp 10 minutes
 *                   off either way, a body changed after signing, the same
 *                   signed bytes sent twice (to the leader; through a
 *                   follower; a read), a signed write to a follower that
 *                   applies; ALLOT_IDENTITY
 *   replay_across_leaders  signed writes replayed to a new leader after a
 *                   leadership transfer never apply twice (with a client id
 *                   the sessions answer; without one, nothing else does)
 *   forward_untouched  a signed read carrying client/seq/ack, accepted by
 *                   the leader, is accepted through a follower too
 *   join            --join with the admin's --identity (through a follower)
 *                   makes a voter; without an identity the join is refused
 *                   (unauthenticated) and with a non-admin's identity
 *                   (permission_denied), the node never becomes a member,
 *                   and exits 0 on SIGTERM; cluster add/transfer by a
 *                   non-admin refused
 *   restart         principals, groups and owners survive a full restart
 *                   from disk (snapshots taken on the way)
 *   needs_admin     a new cluster without --insecure and without --admin,
 *                   or with a malformed --admin, does not start (exit 2)
 *
 * harness_end() checks that every node exits 0 on SIGTERM. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth.h"
#include "client.h"
#include "harness.h"
#include "lib.h"
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

/* Run allotctl as the principal of identity file `who`. */
#define AS(r, eps, who, ...)    CTL(r, eps, "--identity", (who), __VA_ARGS__)
#define AS_OK(r, eps, who, ...) CTL_OK(r, eps, "--identity", (who), __VA_ARGS__)

/* --- Identities ----------------------------------------------------------- */

struct ident
{
    char file[600];
    char hex[65];
    struct auth_identity id;
};

static struct ident Admin, Alice, Bob;
static char AdminArg[128];
static const char *ClusterArgs[8];

/* A new identity made with allotctl identity new; its public key read back
 * with allotctl identity pubkey; loaded for raw requests. */
static void make_identity(struct ident *who, const char *name)
{
    struct harness_ctl r;
    snprintf(who->file, sizeof who->file, "%s/%s.id", harness_dir(), name);
    CTL_OK(&r, NULL, "identity", "new", name, "--out", who->file);
    ck_assert_msg(strstr(r.out, who->file) != NULL, "%s", r.out);
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "identity", "pubkey", who->file);
    ck_assert_msg(strlen(r.out) == 65 && r.out[64] == '\n', "pubkey: %s",
                  r.out);
    memcpy(who->hex, r.out, 64);
    who->hex[64] = '\0';
    harness_ctl_free(&r);
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_msg(auth_identity_load(who->file, &who->id, msg) == 0, "%s", msg);
    char hex[65];
    auth_pubkey_hex(who->id.pk, hex);
    ck_assert_str_eq(hex, who->hex);
}

/* An identity file written directly (another key under a known name). */
static void write_identity(struct ident *who, const char *name,
                           const char *file)
{
    char msg[ALLOT_ERRMSG_SIZE];
    snprintf(who->file, sizeof who->file, "%s/%s", harness_dir(), file);
    ck_assert_int_eq(auth_identity_new(name, &who->id, msg), 0);
    ck_assert_int_eq(auth_identity_save(&who->id, who->file, msg), 0);
    auth_pubkey_hex(who->id.pk, who->hex);
}

/* --- Helpers -------------------------------------------------------------- */

static json_t *parse_json(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    ck_assert_msg(j != NULL, "not one JSON document (line %d: %s): %s", e.line,
                  e.text, text);
    return j;
}

static const char *json_str_at(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    ck_assert_msg(json_is_string(v), "\"%s\" is not a string", key);
    return json_string_value(v);
}

/* allotctl was refused with `code`: exit 1, one line "error: CODE: ..."
 * naming every string in `names` (NULL-terminated). */
static void assert_refused(const struct harness_ctl *r, const char *code,
                           const char *const *names)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "error: %s: ", code);
    ck_assert_msg(r->status == 1, "want exit 1 (%s), got %d; stderr: %s", code,
                  r->status, r->err);
    ck_assert_msg(strncmp(r->err, prefix, strlen(prefix)) == 0,
                  "stderr does not start with \"%s\": %s", prefix, r->err);
    for (unsigned i = 0; names != NULL && names[i] != NULL; i++) {
        ck_assert_msg(strstr(r->err, names[i]) != NULL,
                      "stderr does not name \"%s\": %s", names[i], r->err);
    }
}

/* The owners of path, read as `who`, joined with ",". */
static const char *owners_of(const struct ident *who, const char *path)
{
    static char buf[2048];
    struct harness_ctl r;
    AS_OK(&r, NULL, who->file, "-o", "json", "quota", "get", path);
    json_t *j = parse_json(r.out);
    json_t *o = json_object_get(j, "owners");
    ck_assert_msg(json_is_array(o), "no owners in %s", r.out);
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < json_array_size(o); i++) {
        const json_t *s = json_array_get(o, i);
        ck_assert(json_is_string(s));
        int w = snprintf(buf + off, sizeof buf - off, "%s%s", i ? "," : "",
                         json_string_value(s));
        off += w > 0 ? (size_t)w : 0;
    }
    json_decref(j);
    harness_ctl_free(&r);
    return buf;
}

static json_int_t max_apps_of(const struct ident *who, const char *path)
{
    struct harness_ctl r;
    AS_OK(&r, NULL, who->file, "-o", "json", "quota", "get", path);
    json_t *j = parse_json(r.out);
    const json_t *v = json_object_get(j, "max_apps");
    ck_assert_msg(json_is_integer(v), "no max_apps in %s", r.out);
    json_int_t n = json_integer_value(v);
    json_decref(j);
    harness_ctl_free(&r);
    return n;
}

/* The audit trail (as the admin), one "op principal path;" per record,
 * for records under prefix ("" for all). */
static const char *audit_summary(const char *endpoints, const char *prefix,
                                 const char *principal)
{
    static char buf[16384];
    struct harness_ctl r;
    if (principal != NULL) {
        AS_OK(&r, endpoints, Admin.file, "-o", "json", "audit", prefix,
              "--principal", principal);
    } else {
        AS_OK(&r, endpoints, Admin.file, "-o", "json", "audit", prefix);
    }
    json_t *j = parse_json(r.out);
    json_t *recs = json_object_get(j, "records");
    ck_assert_msg(json_is_array(recs), "%s", r.out);
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < json_array_size(recs); i++) {
        json_t *rec = json_array_get(recs, i);
        int w = snprintf(buf + off, sizeof buf - off, "%s %s %s;",
                         json_str_at(rec, "op"), json_str_at(rec, "principal"),
                         json_str_at(rec, "path"));
        off += w > 0 ? (size_t)w : 0;
    }
    json_decref(j);
    harness_ctl_free(&r);
    return buf;
}

/* A running node other than `a` and `b`. */
static unsigned other_node(unsigned a, unsigned b)
{
    for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
        if (id != a && id != b && harness_node_running(id)) {
            return id;
        }
    }
    ck_abort_msg("no running node other than %u and %u", a, b);
    return 0;
}

/* Start nodes 1-3 as a new secure cluster whose first admin is "admin",
 * with `extra` more allotd arguments (NULL-terminated, static), and return
 * the leader's id. The harness signs its status calls as the admin. */
static unsigned secure_cluster(const char *const *extra)
{
    unsetenv("ALLOT_IDENTITY"); /* unsigned means unsigned here */
    make_identity(&Admin, "admin");
    make_identity(&Alice, "alice");
    make_identity(&Bob, "bob");
    snprintf(AdminArg, sizeof AdminArg, "admin=%s", Admin.hex);
    unsigned k = 0;
    ClusterArgs[k++] = "--admin";
    ClusterArgs[k++] = AdminArg;
    for (unsigned i = 0; extra != NULL && extra[i] != NULL && k < 7; i++) {
        ClusterArgs[k++] = extra[i];
    }
    ClusterArgs[k] = NULL;
    harness_set_secure(true);
    harness_set_node_args(ClusterArgs);
    double t = harness_now();
    harness_cluster_start(3);
    harness_set_identity(&Admin.id);
    unsigned leader = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
    ck_assert_msg(leader != 0, "no leader");
    harness_log("secure cluster: node %u leads after %.3f s", leader,
                harness_now() - t);
    return leader;
}

/* The admin adds alice and bob (not admins) with allotctl. */
static void add_alice_and_bob(void)
{
    struct harness_ctl r;
    AS_OK(&r, NULL, Admin.file, "principal", "add", "alice", "--pubkey",
          Alice.hex);
    ck_assert_msg(strstr(r.out, "added principal alice") != NULL, "%s", r.out);
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Admin.file, "principal", "add", "bob", "--pubkey", Bob.hex);
    harness_ctl_free(&r);
}

/* Whole file (owned), "" if it cannot be read. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return strdup("");
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap + 1);
    ck_assert_ptr_nonnull(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
            ck_assert_ptr_nonnull(buf);
        }
    }
    buf[len] = '\0';
    fclose(f);
    return buf;
}

/* Lines of text holding both a and b. */
static unsigned count_lines_with(const char *text, const char *a, const char *b)
{
    unsigned n = 0;
    for (const char *line = text; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        char *l = strndup(line, len);
        ck_assert_ptr_nonnull(l);
        n += strstr(l, a) != NULL && strstr(l, b) != NULL;
        free(l);
        line += len + (end != NULL);
    }
    return n;
}

/* Poll node id's log until `want` lines hold both a and b. */
static bool wait_log_lines(unsigned id, const char *a, const char *b,
                           unsigned want)
{
    double deadline = harness_now() + HARNESS_CONVERGE_WAIT_MS / 1000.0;
    for (int round = 0; round < HARNESS_CONVERGE_WAIT_MS / 200 + 1; round++) {
        char *text = slurp(harness_node_log(id));
        unsigned n = count_lines_with(text, a, b);
        free(text);
        if (n >= want) {
            return true;
        }
        if (harness_now() >= deadline) {
            break;
        }
        harness_sleep_ms(200);
    }
    return false;
}

/* Poll the leader's view until member id is (or is not) listed with role. */
static bool wait_member(uint64_t id, const char *role, bool want)
{
    double deadline = harness_now() + HARNESS_CONVERGE_WAIT_MS / 1000.0;
    for (int round = 0; round < HARNESS_CONVERGE_WAIT_MS / 200 + 1; round++) {
        unsigned leader = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
        struct harness_status st;
        if (leader != 0 && harness_status(leader, false, &st, 5000) == 0) {
            const struct harness_member *m = harness_member(&st, id);
            bool found =
                m != NULL && (role == NULL || strcmp(m->role, role) == 0);
            if (found == want) {
                return true;
            }
        }
        if (harness_now() >= deadline) {
            break;
        }
        harness_sleep_ms(200);
    }
    return false;
}

/* --- Raw signed frames ---------------------------------------------------- */

/* The args of a request, packed on their own (a signed request's body). */
static void body_set(msgpack_sbuffer *sb, const char *path, uint64_t max_apps)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    wire_pack_kv_str(&pk, "path", path);
    wire_pack_str(&pk, "fields");
    msgpack_pack_map(&pk, 1);
    wire_pack_kv_u64(&pk, "max_apps", max_apps); /* last byte: a fixint */
}

static void body_path(msgpack_sbuffer *sb, const char *path)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    if (path == NULL) {
        msgpack_pack_map(&pk, 0);
        return;
    }
    msgpack_pack_map(&pk, 1);
    wire_pack_kv_str(&pk, "path", path);
}

enum {
    FRAME_PLAIN = 0,
    FRAME_TAMPER_BODY = 1, /* change the body's last byte after signing */
};

/* One request frame signed by id with timestamp ts: {"id","op","body",
 * "auth"} plus, when client != 0, "client","seq","ack" (ack = seq). */
static void signed_frame(msgpack_sbuffer *sb, const struct auth_identity *id,
                         uint64_t ts, uint64_t req_id, const char *op,
                         uint64_t client, uint64_t seq,
                         const msgpack_sbuffer *body, int how)
{
    struct auth_claim claim;
    uint64_t ack = client != 0 ? seq : 0;
    auth_sign(id, ts, op, client, client != 0 ? seq : 0, ack, body->data,
              body->size, &claim);
    msgpack_packer pk;
    wire_frame_start(sb, &pk);
    msgpack_pack_map(&pk, client != 0 ? 7 : 4);
    wire_pack_kv_u64(&pk, "id", req_id);
    wire_pack_kv_str(&pk, "op", op);
    wire_pack_str(&pk, "body");
    msgpack_pack_bin(&pk, body->size);
    size_t at = sb->size;
    msgpack_pack_bin_body(&pk, body->data, body->size);
    if (how == FRAME_TAMPER_BODY) {
        sb->data[at + body->size - 1] ^= 0x01;
    }
    wire_pack_str(&pk, "auth");
    auth_pack_claim(&pk, &claim);
    if (client != 0) {
        wire_pack_kv_u64(&pk, "client", client);
        wire_pack_kv_u64(&pk, "seq", seq);
        wire_pack_kv_u64(&pk, "ack", ack);
    }
    ck_assert_int_eq(wire_frame_finish(sb), 0);
}

/* The same request unsigned: {"id","op","args"}. */
static void unsigned_frame(msgpack_sbuffer *sb, uint64_t req_id, const char *op,
                           const msgpack_sbuffer *args)
{
    msgpack_packer pk;
    wire_frame_start(sb, &pk);
    msgpack_pack_map(&pk, 3);
    wire_pack_kv_u64(&pk, "id", req_id);
    wire_pack_kv_str(&pk, "op", op);
    wire_pack_str(&pk, "args");
    msgpack_sbuffer_write(sb, args->data, args->size);
    ck_assert_int_eq(wire_frame_finish(sb), 0);
}

/* Send frame on a new connection to node id and read one reply into rep
 * (destroy it). Returns rep->code. */
static int raw_call(unsigned id, const msgpack_sbuffer *frame,
                    struct harness_reply *rep)
{
    int fd = harness_raw_connect(id);
    ck_assert_msg(fd >= 0, "cannot connect to node %u", id);
    ck_assert_int_eq(harness_raw_send(fd, frame->data, frame->size), 0);
    int rv = harness_raw_recv(fd, HARNESS_IO_WAIT_MS, rep);
    close(fd);
    ck_assert_msg(rv == 1, "no reply from node %u (%d)", id, rv);
    return rep->code;
}

/* A raw call expected to be refused as unauthenticated, the message
 * holding `why`. */
static void raw_unauthenticated(unsigned id, const msgpack_sbuffer *frame,
                                const char *why)
{
    struct harness_reply rep;
    int code = raw_call(id, frame, &rep);
    ck_assert_msg(code == ALLOT_EUNAUTHENTICATED,
                  "node %u: want unauthenticated, got %s: %s", id,
                  allot_error_name(code), rep.message);
    ck_assert_str_eq(rep.error, "unauthenticated");
    ck_assert_msg(strstr(rep.message, why) != NULL,
                  "message \"%s\" does not mention \"%s\"", rep.message, why);
    harness_reply_destroy(&rep);
}

static void raw_ok(unsigned id, const msgpack_sbuffer *frame)
{
    struct harness_reply rep;
    int code = raw_call(id, frame, &rep);
    ck_assert_msg(code == 0, "node %u: refused: %s: %s", id, rep.error,
                  rep.message);
    harness_reply_destroy(&rep);
}

/* quota.get of path as the admin: 0 or the error code. */
static int quota_exists(const char *path)
{
    struct harness_ctl r;
    AS(&r, NULL, Admin.file, "quota", "get", path);
    int status = r.status;
    bool not_found = strncmp(r.err, "error: not_found: ", 18) == 0;
    ck_assert_msg(status == 0 || not_found, "quota get %s: %s", path, r.err);
    harness_ctl_free(&r);
    return status == 0;
}

/* --- owners_story --------------------------------------------------------- */

START_TEST(test_owners_story)
{
    struct harness_ctl r;
    harness_begin("owners_story");
    unsigned leader = secure_cluster(NULL);
    unsigned follower = other_node(leader, 0);
    char f_ep[64];
    snprintf(f_ep, sizeof f_ep, "%s", harness_node_client_addr(follower));

    /* The admin creates the principals; principal ls shows them. */
    add_alice_and_bob();
    AS_OK(&r, NULL, Admin.file, "-o", "json", "principal", "ls");
    json_t *j = parse_json(r.out);
    ck_assert_msg(json_is_array(j) && json_array_size(j) == 3, "%s", r.out);
    const char *want[3][2] = {
        {"admin", "true"}, {"alice", "false"}, {"bob", "false"}};
    const char *keys[3] = {Admin.hex, Alice.hex, Bob.hex};
    for (size_t i = 0; i < 3; i++) {
        json_t *p = json_array_get(j, i);
        ck_assert_str_eq(json_str_at(p, "name"), want[i][0]);
        ck_assert_str_eq(json_str_at(p, "pubkey"), keys[i]);
        ck_assert_int_eq(json_is_true(json_object_get(p, "admin")),
                         strcmp(want[i][1], "true") == 0);
    }
    json_decref(j);
    harness_ctl_free(&r);

    /* The admin creates org, owned by alice too. */
    AS_OK(&r, NULL, Admin.file, "quota", "set", "org", "max_apps=100",
          "--owner", "user:alice");
    harness_ctl_free(&r);
    ck_assert_str_eq(owners_of(&Admin, "org"), "user:admin,user:alice");

    /* Owner can: alice creates org/a (and owns it). */
    AS_OK(&r, NULL, Alice.file, "quota", "set", "org/a", "max_apps=10");
    harness_ctl_free(&r);
    ck_assert_str_eq(owners_of(&Alice, "org/a"), "user:alice");

    /* Non-owner cannot: bob, on org/a, below it, beside it, at the top. */
    const char *bob_a[] = {"bob", "org/a", NULL};
    AS(&r, NULL, Bob.file, "quota", "set", "org/a", "max_apps=11");
    assert_refused(&r, "permission_denied", bob_a);
    harness_ctl_free(&r);
    AS(&r, NULL, Bob.file, "quota", "rm", "org/a");
    assert_refused(&r, "permission_denied", bob_a);
    harness_ctl_free(&r);
    AS(&r, NULL, Bob.file, "quota", "set", "org/a", "--owner", "user:bob");
    assert_refused(&r, "permission_denied", bob_a);
    harness_ctl_free(&r);
    const char *bob_b[] = {"bob", "org/b", NULL};
    AS(&r, NULL, Bob.file, "quota", "set", "org/b", "max_apps=1");
    assert_refused(&r, "permission_denied", bob_b);
    harness_ctl_free(&r);
    const char *alice_top[] = {"alice", "alices", NULL};
    AS(&r, NULL, Alice.file, "quota", "set", "alices", "max_apps=1");
    assert_refused(&r, "permission_denied", alice_top);
    harness_ctl_free(&r);
    ck_assert_int_eq(max_apps_of(&Bob, "org/a"), 10);
    ck_assert_str_eq(owners_of(&Bob, "org/a"), "user:alice");

    /* Nor may a non-admin manage principals or groups. */
    const char *alice_only[] = {"alice", NULL};
    AS(&r, NULL, Alice.file, "principal", "add", "eve", "--pubkey", Bob.hex,
       "--admin");
    assert_refused(&r, "permission_denied", alice_only);
    harness_ctl_free(&r);
    AS(&r, NULL, Alice.file, "group", "add", "devs", "--member", "alice");
    assert_refused(&r, "permission_denied", alice_only);
    harness_ctl_free(&r);

    /* Admin can. */
    AS_OK(&r, NULL, Admin.file, "quota", "set", "org/a", "max_apps=12");
    harness_ctl_free(&r);
    ck_assert_int_eq(max_apps_of(&Alice, "org/a"), 12);

    /* Group owner can: the admin makes group devs of bob, alice gives it
     * org/a. */
    AS_OK(&r, NULL, Admin.file, "group", "add", "devs", "--member", "bob");
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Admin.file, "-o", "json", "group", "ls");
    j = parse_json(r.out);
    ck_assert_msg(json_is_array(j) && json_array_size(j) == 1, "%s", r.out);
    ck_assert_str_eq(json_str_at(json_array_get(j, 0), "name"), "devs");
    json_t *members = json_object_get(json_array_get(j, 0), "members");
    ck_assert(json_is_array(members) && json_array_size(members) == 1);
    ck_assert_str_eq(json_string_value(json_array_get(members, 0)), "bob");
    json_decref(j);
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Alice.file, "quota", "set", "org/a", "--owner",
          "group:devs");
    harness_ctl_free(&r);
    ck_assert_str_eq(owners_of(&Alice, "org/a"), "user:alice,group:devs");
    AS_OK(&r, NULL, Bob.file, "quota", "set", "org/a", "max_apps=13");
    harness_ctl_free(&r);
    ck_assert_int_eq(max_apps_of(&Bob, "org/a"), 13);
    /* ...and below it, but still not above it. */
    AS_OK(&r, NULL, Bob.file, "quota", "set", "org/a/x", "max_apps=1");
    harness_ctl_free(&r);
    const char *bob_org[] = {"bob", "org", NULL};
    AS(&r, NULL, Bob.file, "quota", "set", "org", "max_apps=1");
    assert_refused(&r, "permission_denied", bob_org);
    harness_ctl_free(&r);

    /* Signed writes through a follower are forwarded untouched and apply
     * as their signer; a refusal through a follower is the same refusal. */
    AS_OK(&r, f_ep, Alice.file, "quota", "set", "org/f", "max_apps=2");
    harness_ctl_free(&r);
    AS_OK(&r, f_ep, Bob.file, "quota", "set", "org/a", "max_apps=14");
    harness_ctl_free(&r);
    const char *bob_f[] = {"bob", "org/f", NULL};
    AS(&r, f_ep, Bob.file, "quota", "set", "org/f", "max_apps=3");
    assert_refused(&r, "permission_denied", bob_f);
    harness_ctl_free(&r);
    ck_assert_str_eq(owners_of(&Admin, "org/f"), "user:alice");

    /* Alice removes group:devs again: bob loses org/a. */
    AS_OK(&r, f_ep, Alice.file, "quota", "set", "org/a", "--remove-owner",
          "group:devs");
    harness_ctl_free(&r);
    AS(&r, NULL, Bob.file, "quota", "set", "org/a", "max_apps=15");
    assert_refused(&r, "permission_denied", bob_a);
    harness_ctl_free(&r);

    /* The audit trail names each principal (read through a follower). */
    const char *all = audit_summary(f_ep, "org", NULL);
    ck_assert_str_eq(all, "quota.set admin org;"
                          "quota.set alice org/a;"
                          "quota.set admin org/a;"
                          "quota.set alice org/a;"
                          "quota.set bob org/a;"
                          "quota.set bob org/a/x;"
                          "quota.set alice org/f;"
                          "quota.set bob org/a;"
                          "quota.set alice org/a;");
    ck_assert_str_eq(audit_summary(NULL, "", "bob"), "quota.set bob org/a;"
                                                     "quota.set bob org/a/x;"
                                                     "quota.set bob org/a;");
    const char *cluster_wide = audit_summary(NULL, "", "admin");
    ck_assert_msg(strstr(cluster_wide, "principal.add admin ;"
                                       "principal.add admin ;") != NULL,
                  "%s", cluster_wide);
    ck_assert_msg(strstr(cluster_wide, "group.add admin ;") != NULL, "%s",
                  cluster_wide);
    const char *boot = audit_summary(NULL, "", "bootstrap");
    ck_assert_str_eq(boot, "principal.add bootstrap ;");

    /* A removed principal is no longer authenticated anywhere. */
    AS_OK(&r, NULL, Admin.file, "principal", "rm", "bob");
    harness_ctl_free(&r);
    const char *bob_only[] = {"bob", NULL};
    AS(&r, NULL, Bob.file, "quota", "get", "org/a");
    assert_refused(&r, "unauthenticated", bob_only);
    harness_ctl_free(&r);
    AS(&r, f_ep, Bob.file, "quota", "set", "org/a/x", "max_apps=2");
    assert_refused(&r, "unauthenticated", bob_only);
    harness_ctl_free(&r);

    ck_assert_int_eq(harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, NULL), 0);
    harness_end();
}
END_TEST

/* --- refusals ------------------------------------------------------------- */

static void pack_empty(msgpack_packer *pk, void *arg)
{
    (void)arg;
    msgpack_pack_map(pk, 0);
}

START_TEST(test_refusals)
{
    struct harness_ctl r;
    struct harness_reply rep;
    harness_begin("refusals");
    unsigned leader = secure_cluster(NULL);
    unsigned follower = other_node(leader, 0);
    add_alice_and_bob();
    AS_OK(&r, NULL, Admin.file, "quota", "set", "org", "max_apps=100",
          "--owner", "user:alice");
    harness_ctl_free(&r);

    /* Unsigned: refused, reads and writes, leader and followers, local
     * ones too; ping alone answers. */
    const char *signed_only[] = {"signed requests only", NULL};
    for (unsigned id = 1; id <= 3; id++) {
        const char *ep = harness_node_client_addr(id);
        CTL(&r, ep, "quota", "get", "org");
        assert_refused(&r, "unauthenticated", signed_only);
        harness_ctl_free(&r);
        CTL(&r, ep, "quota", "set", "org", "max_apps=1");
        assert_refused(&r, "unauthenticated", signed_only);
        harness_ctl_free(&r);
        CTL(&r, ep, "cluster", "status");
        assert_refused(&r, "unauthenticated", signed_only);
        harness_ctl_free(&r);
    }
    CTL(&r, NULL, "principal", "add", "eve", "--pubkey", Alice.hex, "--admin");
    assert_refused(&r, "unauthenticated", signed_only);
    harness_ctl_free(&r);
    harness_set_identity(NULL);
    ck_assert_int_eq(harness_call(follower, "ping", NULL, NULL, &rep, 10000),
                     0);
    harness_reply_destroy(&rep);
    ck_assert_int_eq(
        harness_call(leader, "cluster.status", pack_empty, NULL, &rep, 10000),
        ALLOT_EUNAUTHENTICATED);
    harness_reply_destroy(&rep);
    harness_set_identity(&Admin.id);
    msgpack_sbuffer body, frame;
    body_set(&body, "org/unsigned", 1);
    msgpack_sbuffer_init(&frame);
    unsigned_frame(&frame, 1, "quota.set", &body);
    raw_unauthenticated(leader, &frame, "signed requests only");
    raw_unauthenticated(follower, &frame, "signed requests only");
    msgpack_sbuffer_destroy(&frame);
    msgpack_sbuffer_destroy(&body);
    ck_assert_int_eq(max_apps_of(&Admin, "org"), 100);

    /* ALLOT_IDENTITY signs when --identity is absent. */
    setenv("ALLOT_IDENTITY", Alice.file, 1);
    CTL_OK(&r, NULL, "quota", "set", "org/env", "max_apps=1");
    harness_ctl_free(&r);
    unsetenv("ALLOT_IDENTITY");
    ck_assert_str_eq(owners_of(&Admin, "org/env"), "user:alice");

    /* An identity the cluster does not know. */
    struct ident mallory, impostor;
    make_identity(&mallory, "mallory");
    const char *unknown[] = {"unknown principal mallory", NULL};
    AS(&r, NULL, mallory.file, "quota", "get", "org");
    assert_refused(&r, "unauthenticated", unknown);
    harness_ctl_free(&r);
    AS(&r, harness_node_client_addr(follower), mallory.file, "cluster",
       "status");
    assert_refused(&r, "unauthenticated", unknown);
    harness_ctl_free(&r);
    /* A known name with another key. */
    write_identity(&impostor, "alice", "impostor.id");
    const char *bad_sig[] = {"bad signature", "alice", NULL};
    AS(&r, NULL, impostor.file, "quota", "set", "org/imp", "max_apps=1");
    assert_refused(&r, "unauthenticated", bad_sig);
    harness_ctl_free(&r);
    ck_assert_int_eq(quota_exists("org/imp"), 0);

    /* Raw frames signed by hand. The control first: now, accepted. */
    uint64_t now = clock_wall_ms();
    uint64_t ten_min = 10ull * 60 * 1000;
    uint64_t client = 0x5ec0000000000001ull;
    body_set(&body, "org/raw", 3);
    msgpack_sbuffer_init(&frame);
    signed_frame(&frame, &Alice.id, now, 10, "quota.set", client, 1, &body,
                 FRAME_PLAIN);
    raw_ok(leader, &frame);
    msgpack_sbuffer_destroy(&frame);
    msgpack_sbuffer_destroy(&body);
    ck_assert_int_eq(max_apps_of(&Admin, "org/raw"), 3);

    /* A timestamp 10 minutes behind, then ahead: refused, nothing done. */
    for (int sign = -1; sign <= 1; sign += 2) {
        uint64_t ts =
            sign < 0 ? clock_wall_ms() - ten_min : clock_wall_ms() + ten_min;
        body_set(&body, "org/skew", 4);
        msgpack_sbuffer_init(&frame);
        signed_frame(&frame, &Alice.id, ts, 11, "quota.set", client,
                     sign < 0 ? 2 : 3, &body, FRAME_PLAIN);
        raw_unauthenticated(leader, &frame, "timestamp");
        raw_unauthenticated(follower, &frame, "timestamp");
        msgpack_sbuffer_destroy(&frame);
        msgpack_sbuffer_destroy(&body);
        /* Also for what a follower answers itself. */
        body_path(&body, NULL);
        msgpack_sbuffer_init(&frame);
        signed_frame(&frame, &Alice.id, ts, 12, "cluster.status", 0, 0, &body,
                     FRAME_PLAIN);
        raw_unauthenticated(follower, &frame, "timestamp");
        msgpack_sbuffer_destroy(&frame);
        msgpack_sbuffer_destroy(&body);
    }
    ck_assert_int_eq(quota_exists("org/skew"), 0);

    /* A body changed after signing (max_apps 5 -> 4). */
    body_set(&body, "org/tamper", 5);
    msgpack_sbuffer_init(&frame);
    signed_frame(&frame, &Alice.id, clock_wall_ms(), 13, "quota.set", client, 4,
                 &body, FRAME_TAMPER_BODY);
    raw_unauthenticated(leader, &frame, "bad signature");
    raw_unauthenticated(follower, &frame, "bad signature");
    msgpack_sbuffer_destroy(&frame);
    msgpack_sbuffer_destroy(&body);
    ck_assert_int_eq(quota_exists("org/tamper"), 0);

    /* A replay: the same signed bytes twice to the leader (each on its own
     * connection). The second is refused although (client, seq) would have
     * made it a harmless duplicate. */
    body_set(&body, "org/replay", 6);
    msgpack_sbuffer_init(&frame);
    signed_frame(&frame, &Alice.id, clock_wall_ms(), 14, "quota.set", client, 5,
                 &body, FRAME_PLAIN);
    raw_ok(leader, &frame);
    raw_unauthenticated(leader, &frame, "replayed");
    /* The same bytes through a follower: the leader has seen them. */
    raw_unauthenticated(follower, &frame, "replayed");
    msgpack_sbuffer_destroy(&frame);
    msgpack_sbuffer_destroy(&body);

    /* A signed write to a follower: forwarded, applied, recorded as its
     * signer; sent again through the same follower, refused. */
    body_set(&body, "org/via-follower", 7);
    msgpack_sbuffer_init(&frame);
    signed_frame(&frame, &Alice.id, clock_wall_ms(), 15, "quota.set", client, 6,
                 &body, FRAME_PLAIN);
    raw_ok(follower, &frame);
    raw_unauthenticated(follower, &frame, "replayed");
    raw_unauthenticated(leader, &frame, "replayed");
    msgpack_sbuffer_destroy(&frame);
    msgpack_sbuffer_destroy(&body);
    ck_assert_int_eq(max_apps_of(&Admin, "org/via-follower"), 7);
    ck_assert_str_eq(owners_of(&Admin, "org/via-follower"), "user:alice");
    ck_assert_str_eq(audit_summary(NULL, "org/via-follower", NULL),
                     "quota.set alice org/via-follower;");

    /* A read replayed. */
    body_path(&body, "org");
    msgpack_sbuffer_init(&frame);
    signed_frame(&frame, &Bob.id, clock_wall_ms(), 16, "quota.get", 0, 0, &body,
                 FRAME_PLAIN);
    raw_ok(leader, &frame);
    raw_unauthenticated(leader, &frame, "replayed");
    msgpack_sbuffer_destroy(&frame);
    msgpack_sbuffer_destroy(&body);

    /* A signature moved onto another operation: a read signed by alice
     * (whose args would make a fine write) turned into that write. */
    body_set(&body, "org/raw", 9);
    msgpack_sbuffer_init(&frame);
    signed_frame(&frame, &Alice.id, clock_wall_ms(), 17, "quota.get", client, 7,
                 &body, FRAME_PLAIN);
    char *op = memmem(frame.data, frame.size, "quota.get", 9);
    ck_assert_ptr_nonnull(op);
    memcpy(op, "quota.set", 9); /* the op comes before the body */
    raw_unauthenticated(leader, &frame, "bad signature");
    raw_unauthenticated(follower, &frame, "bad signature");
    msgpack_sbuffer_destroy(&frame);
    msgpack_sbuffer_destroy(&body);

    ck_assert_int_eq(max_apps_of(&Admin, "org/raw"), 3);
    ck_assert_str_eq(audit_summary(NULL, "org", "alice"),
                     "quota.set alice org/env;"
                     "quota.set alice org/raw;"
                     "quota.set alice org/replay;"
                     "quota.set alice org/via-follower;");
    ck_assert_int_eq(harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, NULL), 0);
    harness_end();
}
END_TEST

/* --- replay_across_leaders ----------------------------------------------- */

/* Audit records of path (as the admin). */
static unsigned audit_count(const char *path)
{
    const char *all = audit_summary(NULL, path, NULL);
    unsigned n = 0;
    for (const char *p = all; (p = strchr(p, ';')) != NULL; p++) {
        n++;
    }
    return n;
}

/* Move leadership away from `from` and return the new ready leader. */
static unsigned transfer_leadership(unsigned from)
{
    struct harness_ctl r;
    for (int attempt = 0; attempt < 20; attempt++) {
        AS(&r, harness_node_client_addr(from), Admin.file, "cluster",
           "transfer");
        harness_log("cluster transfer: exit %d %s", r.status, r.err);
        harness_ctl_free(&r);
        unsigned l = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
        if (l != 0 && l != from) {
            return l;
        }
        harness_sleep_ms(500);
    }
    ck_abort_msg("leadership never left node %u", from);
    return 0;
}

/* Each node remembers the nonces it has seen on its own. The same signed
 * write sent to the leader, then (after a leader change) to the new
 * leader, must not apply twice: with a client id the state machine's
 * sessions answer the replay; without one (the protocol allows a write
 * without client, "applied each time it arrives") nothing else stands in
 * the way. */
START_TEST(test_replay_across_leaders)
{
    struct harness_ctl r;
    harness_begin("replay_across_leaders");
    unsigned leader = secure_cluster(NULL);
    AS_OK(&r, NULL, Admin.file, "quota", "set", "org", "max_apps=100");
    harness_ctl_free(&r);

    msgpack_sbuffer body, with_client, without_client;
    body_set(&body, "org/with-client", 1);
    msgpack_sbuffer_init(&with_client);
    signed_frame(&with_client, &Admin.id, clock_wall_ms(), 1, "quota.set",
                 0x5ec0000000000002ull, 1, &body, FRAME_PLAIN);
    msgpack_sbuffer_destroy(&body);
    body_set(&body, "org/without-client", 1);
    msgpack_sbuffer_init(&without_client);
    signed_frame(&without_client, &Admin.id, clock_wall_ms(), 2, "quota.set", 0,
                 0, &body, FRAME_PLAIN);
    msgpack_sbuffer_destroy(&body);

    raw_ok(leader, &with_client);
    ck_assert_uint_eq(audit_count("org/with-client"), 1);
    /* A node may refuse a signed write without client id outright; if it
     * takes it, it applies it once and refuses the same bytes again. */
    struct harness_reply rep;
    int first = raw_call(leader, &without_client, &rep);
    ck_assert_msg(first == 0 || first == ALLOT_EINVALID, "%s: %s", rep.error,
                  rep.message);
    harness_log("signed write without client id: %s %s",
                allot_error_name(first), rep.message);
    harness_reply_destroy(&rep);
    unsigned applied = first == 0 ? 1 : 0;
    if (first == 0) {
        raw_unauthenticated(leader, &without_client, "replayed");
    }
    ck_assert_uint_eq(audit_count("org/without-client"), applied);

    unsigned next = transfer_leadership(leader);
    harness_log("leadership moved from node %u to node %u", leader, next);

    /* The same bytes to the new leader, well inside the clock window. */
    int code = raw_call(next, &with_client, &rep);
    harness_log("replay with client id to the new leader: %s %s",
                allot_error_name(code), rep.message);
    harness_reply_destroy(&rep);
    code = raw_call(next, &without_client, &rep);
    harness_log("replay without client id to the new leader: %s %s",
                allot_error_name(code), rep.message);
    harness_reply_destroy(&rep);
    ck_assert_uint_eq(audit_count("org/with-client"), 1);
    ck_assert_msg(audit_count("org/without-client") == applied,
                  "a replayed signed write (no client id) applied again on "
                  "the new leader: %s",
                  audit_summary(NULL, "org/without-client", NULL));
    msgpack_sbuffer_destroy(&with_client);
    msgpack_sbuffer_destroy(&without_client);
    harness_end();
}
END_TEST

/* --- forward_untouched ---------------------------------------------------- */

/* A follower forwards a signed request as it came: whatever the leader
 * accepts directly, it accepts through a follower. */
START_TEST(test_forward_untouched)
{
    harness_begin("forward_untouched");
    unsigned leader = secure_cluster(NULL);
    unsigned follower = other_node(leader, 0);
    struct harness_ctl r;
    AS_OK(&r, NULL, Admin.file, "quota", "set", "org", "max_apps=100");
    harness_ctl_free(&r);
    msgpack_sbuffer body, frame;

    /* A read that carries client/seq/ack (signed with them): the leader
     * accepts it; so must a follower that forwards it. */
    for (int via = 0; via < 2; via++) {
        body_path(&body, "org");
        msgpack_sbuffer_init(&frame);
        signed_frame(&frame, &Admin.id, clock_wall_ms(), 2, "quota.get",
                     0x5ec0000000000003ull, 9, &body, FRAME_PLAIN);
        struct harness_reply rep;
        unsigned to = via == 0 ? leader : follower;
        int code = raw_call(to, &frame, &rep);
        ck_assert_msg(code == 0,
                      "signed read with client/seq/ack sent to the %s: %s: "
                      "%s",
                      via == 0 ? "leader" : "follower", rep.error, rep.message);
        harness_reply_destroy(&rep);
        msgpack_sbuffer_destroy(&frame);
        msgpack_sbuffer_destroy(&body);
    }
    harness_end();
}
END_TEST

/* --- join ----------------------------------------------------------------- */

static char JoinIdentity[600], JoinBobIdentity[600];
static const char *JoinAdminArgs[] = {"--identity", JoinIdentity, NULL};
static const char *JoinBobArgs[] = {"--identity", JoinBobIdentity, NULL};

START_TEST(test_join)
{
    struct harness_ctl r;
    int status;
    harness_begin("join");
    unsigned leader = secure_cluster(NULL);
    unsigned follower = other_node(leader, 0);
    add_alice_and_bob();

    /* Membership is the admins': alice may not add, remove or transfer. */
    const char *alice_only[] = {"alice", NULL};
    AS(&r, NULL, Alice.file, "cluster", "add", "7", "127.0.0.1:9");
    assert_refused(&r, "permission_denied", alice_only);
    harness_ctl_free(&r);
    char fid[16];
    snprintf(fid, sizeof fid, "%u", follower);
    AS(&r, NULL, Alice.file, "cluster", "remove", fid);
    assert_refused(&r, "permission_denied", alice_only);
    harness_ctl_free(&r);
    AS(&r, NULL, Alice.file, "cluster", "transfer");
    assert_refused(&r, "permission_denied", alice_only);
    harness_ctl_free(&r);

    /* Node 4 joins through a follower, signed as the admin. */
    snprintf(JoinIdentity, sizeof JoinIdentity, "%s", Admin.file);
    harness_set_node_args(JoinAdminArgs);
    double t = harness_now();
    harness_node_join(4, follower);
    ck_assert_msg(wait_member(4, "voter", true),
                  "node 4 (joined with the admin's identity) never became a "
                  "voter");
    harness_log("node 4 is a voter %.3f s after its start", harness_now() - t);
    ck_assert_int_eq(harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, NULL), 0);
    /* It serves signed requests like any member. */
    AS_OK(&r, harness_node_client_addr(4), Admin.file, "quota", "set", "org",
          "max_apps=5", "--owner", "user:alice");
    harness_ctl_free(&r);
    AS_OK(&r, harness_node_client_addr(4), Alice.file, "quota", "get", "org");
    harness_ctl_free(&r);

    /* Node 5 without an identity, node 6 with bob's (not an admin). */
    harness_set_node_args(NULL);
    harness_node_join(5, leader);
    snprintf(JoinBobIdentity, sizeof JoinBobIdentity, "%s", Bob.file);
    harness_set_node_args(JoinBobArgs);
    harness_node_join(6, follower);
    /* Each keeps asking and is refused every time. */
    ck_assert_msg(
        wait_log_lines(5, "join attempt failed", "err=unauthenticated", 3),
        "node 5's join was not refused as unauthenticated (see "
        "%s)",
        harness_node_log(5));
    ck_assert_msg(
        wait_log_lines(6, "join attempt failed", "err=permission_denied", 3),
        "node 6's join was not refused as permission_denied (see "
        "%s)",
        harness_node_log(6));
    char *log5 = slurp(harness_node_log(5));
    ck_assert_msg(strstr(log5, "joined the cluster") == NULL,
                  "node 5 says it joined");
    free(log5);
    /* Neither is a member, by the leader's account, after those refusals. */
    ck_assert(wait_member(5, NULL, false));
    ck_assert(wait_member(6, NULL, false));
    struct harness_status st;
    unsigned l = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
    ck_assert_uint_ne(l, 0);
    ck_assert_int_eq(harness_status(l, false, &st, 5000), 0);
    ck_assert_uint_eq(st.n_members, 4);
    ck_assert_ptr_null(harness_member(&st, 5));
    ck_assert_ptr_null(harness_member(&st, 6));

    /* Both stop cleanly while still asking. */
    harness_node_kill(5, SIGTERM);
    harness_node_kill(6, SIGTERM);
    ck_assert_int_eq(harness_wait_exit(5, &status), 0);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "node 5 %s after SIGTERM", harness_status_text(status));
    ck_assert_int_eq(harness_wait_exit(6, &status), 0);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "node 6 %s after SIGTERM", harness_status_text(status));
    harness_end();
}
END_TEST

/* --- restart -------------------------------------------------------------- */

/* Snapshot files in node id's raft directory. */
static unsigned snapshots_in(unsigned id)
{
    char dir[700];
    snprintf(dir, sizeof dir, "%s/node%u/raft", harness_dir(), id);
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "%s: %s", dir, strerror(errno));
    unsigned n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        n += strncmp(e->d_name, "snapshot-", 9) == 0 &&
             strstr(e->d_name, ".meta") == NULL;
    }
    closedir(d);
    return n;
}

static const char *SnapshotArgs[] = {"--snapshot-threshold", "16",
                                     "--snapshot-trailing", "4", NULL};

START_TEST(test_restart)
{
    struct harness_ctl r;
    int status;
    harness_begin("restart");
    secure_cluster(SnapshotArgs);
    add_alice_and_bob();
    AS_OK(&r, NULL, Admin.file, "group", "add", "devs", "--member", "bob");
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Admin.file, "quota", "set", "org", "max_apps=100",
          "--owner", "user:alice");
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Alice.file, "quota", "set", "org/a", "max_apps=10",
          "--owner", "group:devs");
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Alice.file, "quota", "set", "org/b", "max_apps=10");
    harness_ctl_free(&r);
    /* Enough entries for every node to take snapshots. */
    for (int i = 0; i < 40; i++) {
        char v[32];
        snprintf(v, sizeof v, "max_apps=%d", 20 + i);
        AS_OK(&r, NULL, Alice.file, "quota", "set", "org/b", v);
        harness_ctl_free(&r);
    }
    ck_assert_int_eq(harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, NULL), 0);

    /* Every node stops, every node starts again from its disk. */
    for (unsigned id = 1; id <= 3; id++) {
        harness_node_kill(id, SIGTERM);
    }
    for (unsigned id = 1; id <= 3; id++) {
        ck_assert_int_eq(harness_wait_exit(id, &status), 0);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "node %u %s after SIGTERM", id,
                      harness_status_text(status));
    }
    for (unsigned id = 1; id <= 3; id++) {
        ck_assert_msg(snapshots_in(id) > 0,
                      "node %u took no snapshot: the restart would not "
                      "restore one",
                      id);
        harness_node_restart(id);
    }
    ck_assert_uint_ne(harness_wait_leader(HARNESS_LEADER_WAIT_MS), 0);

    /* The same principals, groups, owners and verdicts. */
    ck_assert_str_eq(owners_of(&Alice, "org/a"), "user:alice,group:devs");
    AS_OK(&r, NULL, Bob.file, "quota", "set", "org/a", "max_apps=11");
    harness_ctl_free(&r);
    const char *bob_b[] = {"bob", "org/b", NULL};
    AS(&r, NULL, Bob.file, "quota", "set", "org/b", "max_apps=1");
    assert_refused(&r, "permission_denied", bob_b);
    harness_ctl_free(&r);
    const char *alice_top[] = {"alice", "top", NULL};
    AS(&r, NULL, Alice.file, "quota", "set", "top", "max_apps=1");
    assert_refused(&r, "permission_denied", alice_top);
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Admin.file, "-o", "json", "group", "ls");
    ck_assert_msg(strstr(r.out, "\"devs\"") != NULL, "%s", r.out);
    harness_ctl_free(&r);
    /* The --admin flags of the restarted nodes added nobody. */
    AS_OK(&r, NULL, Admin.file, "-o", "json", "principal", "ls");
    json_t *j = parse_json(r.out);
    ck_assert_uint_eq(json_array_size(j), 3);
    json_decref(j);
    harness_ctl_free(&r);
    ck_assert_int_eq(harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, NULL), 0);
    harness_end();
}
END_TEST

/* --- needs_admin ---------------------------------------------------------- */

static const char *BadAdminArgs[] = {"--admin", "admin=not-a-key", NULL};

START_TEST(test_needs_admin)
{
    int status;
    harness_begin("needs_admin");
    harness_set_secure(true);
    harness_cluster_start(1);
    ck_assert_int_eq(harness_wait_exit(1, &status), 0);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 2, "node 1 %s",
                  harness_status_text(status));
    char *log = slurp(harness_node_log(1));
    ck_assert_msg(strstr(log, "error: invalid: ") != NULL &&
                      strstr(log, "--admin") != NULL,
                  "%s", log);
    free(log);
    harness_end();
}
END_TEST

START_TEST(test_bad_admin_flag)
{
    int status;
    harness_begin("bad_admin_flag");
    harness_set_secure(true);
    harness_set_node_args(BadAdminArgs);
    harness_cluster_start(1);
    ck_assert_int_eq(harness_wait_exit(1, &status), 0);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 2, "node 1 %s",
                  harness_status_text(status));
    char *log = slurp(harness_node_log(1));
    ck_assert_msg(strstr(log, "error: invalid: --admin admin") != NULL, "%s",
                  log);
    free(log);
    harness_end();
}
END_TEST

static Suite *security_suite(void)
{
    Suite *s = suite_create("security");
    TCase *tc = tcase_create("security");
    tcase_set_timeout(tc, 400);
    tcase_add_test(tc, test_owners_story);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_replay_across_leaders);
    tcase_add_test(tc, test_forward_untouched);
    tcase_add_test(tc, test_join);
    tcase_add_test(tc, test_restart);
    tcase_add_test(tc, test_needs_admin);
    tcase_add_test(tc, test_bad_admin_flag);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return harness_main(security_suite());
}
