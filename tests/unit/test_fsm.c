/* test_fsm.c - the replicated state machine, first on its own (entries fed
 * straight to apply), then under canonical/raft's raft_fixture: three
 * servers with in-memory I/O and simulated time, each with its own FSM.
 *
 * Time in these tests is always the time_ms carried in an entry or the
 * fixture's simulated clock, never the wall clock. */
#include <check.h>
#include <msgpack.h>
#include <raft.h>
#include <raft/fixture.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "quota.h"
#include "raft_fsm.h"
#include "wire.h"

#define assert_has(msg, sub)                                     \
    ck_assert_msg((msg) != NULL && strstr((msg), (sub)) != NULL, \
                  "message \"%s\" does not mention \"%s\"",      \
                  (msg) ? (msg) : "(null)", (sub))

#define T0 1000000u /* an arbitrary leader clock to start from */

/* --- Commands --- */

/* QUOTA_SET for path with space-separated KEY=VALUE fields. The path must
 * outlive the command (string literals in these tests). */
static struct fsm_cmd cmd_set(const char *path, const char *kvs)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_QUOTA_SET;
    c.path = path;
    c.path_len = strlen(path);
    char buf[512];
    snprintf(buf, sizeof buf, "%s", kvs);
    char *save = NULL;
    for (char *kv = strtok_r(buf, " ", &save); kv != NULL;
         kv = strtok_r(NULL, " ", &save)) {
        char msg[ALLOT_ERRMSG_SIZE] = "";
        ck_assert_msg(quota_patch_parse_kv(&c.patch, kv, msg) == 0, "%s: %s",
                      kv, msg);
    }
    return c;
}

static struct fsm_cmd cmd_rm(const char *path)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_QUOTA_RM;
    c.path = path;
    c.path_len = strlen(path);
    return c;
}

static struct fsm_cmd cmd_leader(uint64_t id, const char *addr)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_LEADER;
    c.node_id = id;
    c.node_addr = addr;
    return c;
}

static struct fsm_cmd sess(struct fsm_cmd c, uint64_t client, uint64_t seq,
                           uint64_t ack)
{
    c.client = client;
    c.seq = seq;
    c.ack = ack;
    return c;
}

static struct fsm_cmd rm_recursive(struct fsm_cmd c)
{
    c.recursive = true;
    return c;
}

static struct fsm_cmd if_version(struct fsm_cmd c, uint64_t v)
{
    c.has_if_version = true;
    c.if_version = v;
    return c;
}

/* --- Applying entries directly --- */

/* Apply a buffer exactly len bytes long (so ASan sees any over-read). */
static const struct fsm_batch_result *apply_raw(struct fsm *f, const void *data,
                                                size_t len)
{
    struct raft_buffer buf;
    buf.len = len;
    buf.base = malloc(len > 0 ? len : 1);
    ck_assert_ptr_nonnull(buf.base);
    if (len > 0) {
        memcpy(buf.base, data, len);
    }
    void *result = NULL;
    struct raft_fsm *rf = fsm_raft(f);
    /* A non-zero return would stall raft for good: never allowed. */
    ck_assert_int_eq(rf->apply(rf, &buf, &result), 0);
    ck_assert_ptr_nonnull(result);
    free(buf.base);
    return result;
}

static const struct fsm_batch_result *
apply_cmds(struct fsm *f, const struct fsm_cmd *cmds, unsigned n, uint64_t t)
{
    struct raft_buffer buf;
    ck_assert_int_eq(fsm_batch_encode(cmds, n, t, &buf), 0);
    ck_assert_uint_eq(buf.len % 8, 0);
    const struct fsm_batch_result *b = apply_raw(f, buf.base, buf.len);
    raft_free(buf.base);
    ck_assert_uint_eq(b->n, n);
    return b;
}

static const struct fsm_result *apply1(struct fsm *f, struct fsm_cmd c,
                                       uint64_t t)
{
    return &apply_cmds(f, &c, 1, t)->results[0];
}

/* Announce a leader's address. Another command follows it in the entry, so
 * the address never ends the buffer (see leader_addr_ends_entry). */
static void announce(struct fsm *f, uint64_t id, const char *addr, uint64_t t)
{
    struct fsm_cmd cmds[] = {cmd_leader(id, addr), cmd_rm("not-there")};
    const struct fsm_batch_result *b = apply_cmds(f, cmds, 2, t);
    ck_assert_int_eq(b->results[0].code, 0);
    ck_assert_int_eq(b->results[1].code, ALLOT_ENOT_FOUND);
}

static void digest(const struct fsm *f, char hex[65])
{
    fsm_digest(f, hex);
    ck_assert_uint_eq(strlen(hex), 64);
}

/* The whole audit answer (every record, oldest first, and the bounds) as
 * bytes, to compare replicas. Destroy sb. */
static void audit_bytes(const struct fsm *f, msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    struct fsm_audit_query q = {.limit = 1000};
    fsm_audit_pack(f, &q, &pk);
}

static void assert_same_audit(const struct fsm *a, const struct fsm *b)
{
    msgpack_sbuffer x, y;
    audit_bytes(a, &x);
    audit_bytes(b, &y);
    ck_assert_uint_eq(x.size, y.size);
    ck_assert_mem_eq(x.data, y.data, x.size);
    msgpack_sbuffer_destroy(&x);
    msgpack_sbuffer_destroy(&y);
}

/* A snapshot as raft would hand it to restore: one raft_malloc'd buffer. */
static struct raft_buffer snapshot_take(struct fsm *f)
{
    struct raft_fsm *rf = fsm_raft(f);
    struct raft_buffer *bufs = NULL;
    unsigned n = 0;
    ck_assert_int_eq(rf->snapshot(rf, &bufs, &n), 0);
    ck_assert_uint_eq(n, 1);
    struct raft_buffer copy;
    copy.len = bufs[0].len;
    copy.base = raft_malloc(copy.len);
    ck_assert_ptr_nonnull(copy.base);
    memcpy(copy.base, bufs[0].base, copy.len);
    ck_assert_int_eq(rf->snapshot_finalize(rf, &bufs, &n), 0);
    ck_assert_ptr_null(bufs);
    return copy;
}

/* Restore buf into f. On success f owns buf; on failure it is freed here. */
static int snapshot_restore(struct fsm *f, struct raft_buffer buf)
{
    struct raft_fsm *rf = fsm_raft(f);
    int rv = rf->restore(rf, &buf);
    if (rv != 0) {
        raft_free(buf.base);
    }
    return rv;
}

/* Number of remembered results for client, read from a snapshot:
 * {"sessions": [[client, ack, last_ms, [results...]], ...], ...}. Returns -1
 * if the client has no session. */
static int session_results(struct fsm *f, uint64_t client)
{
    struct raft_buffer snap = snapshot_take(f);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(snap.base, snap.len, &u, NULL), 0);
    const msgpack_object *sessions = wire_map_get(&u.data, "sessions");
    ck_assert_ptr_nonnull(sessions);
    int n = -1;
    for (uint32_t i = 0; i < sessions->via.array.size; i++) {
        const msgpack_object *s = &sessions->via.array.ptr[i];
        if (s->via.array.ptr[0].via.u64 == client) {
            n = (int)s->via.array.ptr[3].via.array.size;
        }
    }
    msgpack_unpacked_destroy(&u);
    raft_free(snap.base);
    return n;
}

static struct fsm *F;

static void fsm_setup(void)
{
    ck_assert_int_eq(fsm_init(&F), 0);
}

static void fsm_teardown(void)
{
    fsm_close(F);
    F = NULL;
}

/* --- Encoding --- */

START_TEST(encode_pads_to_8)
{
    /* Every padding length 0..7 shows up across these path lengths. */
    static const char paths[] = "abcdefghijklmnopqrstuvwxyz";
    unsigned seen = 0;
    for (size_t len = 1; len <= 16; len++) {
        struct fsm_cmd c = cmd_rm(paths);
        c.path_len = len;
        struct raft_buffer buf;
        ck_assert_int_eq(fsm_batch_encode(&c, 1, T0, &buf), 0);
        ck_assert_uint_eq(buf.len % 8, 0);
        size_t used = 0;
        ck_assert_int_eq(wire_check_prefix(buf.base, buf.len, &used, NULL), 0);
        ck_assert_uint_lt(buf.len - used, 8);
        seen |= 1u << (buf.len - used);
        for (size_t i = used; i < buf.len; i++) {
            ck_assert_int_eq(((const char *)buf.base)[i], 0);
        }
        raft_free(buf.base);
    }
    ck_assert_uint_eq(seen, 0xff);
}
END_TEST

START_TEST(encode_refuses)
{
    struct raft_buffer buf = {NULL, 0};
    struct fsm_cmd c = cmd_rm("a");
    ck_assert_int_eq(fsm_batch_encode(&c, 0, T0, &buf), ALLOT_EINVALID);
    struct fsm_cmd *many = calloc(FSM_BATCH_MAX + 1, sizeof *many);
    ck_assert_ptr_nonnull(many);
    for (unsigned i = 0; i <= FSM_BATCH_MAX; i++) {
        many[i] = cmd_rm("a");
    }
    ck_assert_int_eq(fsm_batch_encode(many, FSM_BATCH_MAX + 1, T0, &buf),
                     ALLOT_EINVALID);
    ck_assert_int_eq(fsm_batch_encode(many, FSM_BATCH_MAX, T0, &buf), 0);
    raft_free(buf.base);
    free(many);
    c.type = (enum fsm_cmd_type)99;
    buf.base = NULL;
    ck_assert_int_eq(fsm_batch_encode(&c, 1, T0, &buf), ALLOT_EINVALID);
    ck_assert_ptr_null(buf.base);
}
END_TEST

/* --- Catalog --- */

START_TEST(create_update_rm)
{
    const struct fsm_result *r =
        apply1(F, cmd_set("org", "kind=capacity max_apps=5"), T0);
    ck_assert_int_eq(r->code, 0);
    ck_assert_ptr_null(r->message);
    ck_assert(!r->duplicate);
    ck_assert_uint_eq(r->version, 1);
    ck_assert_uint_eq(r->created_ms, T0);
    ck_assert_uint_eq(r->updated_ms, T0);
    ck_assert_uint_eq(r->fields.kind, QUOTA_KIND_CAPACITY);
    ck_assert_uint_eq(r->fields.max_apps, 5);
    ck_assert_uint_eq(fsm_catalog_version(F), 1);
    ck_assert_uint_eq(fsm_quota_count(F), 1);

    const struct quota *q = fsm_get(F, "org", 3);
    ck_assert_ptr_nonnull(q);
    ck_assert_str_eq(q->path, "org");
    ck_assert_uint_eq(q->version, 1);
    ck_assert_uint_eq(q->f.max_apps, 5);
    ck_assert_ptr_null(fsm_get(F, "or", 2));
    ck_assert_ptr_null(fsm_get(F, "org/x", 5));

    r = apply1(F, cmd_set("org", "max_apps=7"), T0 + 10);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 2);
    ck_assert_uint_eq(r->created_ms, T0);
    ck_assert_uint_eq(r->updated_ms, T0 + 10);
    q = fsm_get(F, "org", 3);
    ck_assert_uint_eq(q->version, 2);
    ck_assert_uint_eq(q->f.max_apps, 7);
    ck_assert_uint_eq(q->updated_ms, T0 + 10);

    r = apply1(F, cmd_set("org/team", "rate=10.5"), T0 + 20);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 3);
    ck_assert_uint_eq(r->fields.kind, QUOTA_KIND_RATE);
    ck_assert_uint_eq(r->fields.burst, 11);
    ck_assert_str_eq(r->fields.fleet, "default");
    /* A sibling's change leaves the other quota's version alone. */
    ck_assert_uint_eq(fsm_get(F, "org", 3)->version, 2);
    ck_assert_uint_eq(fsm_get(F, "org/team", 8)->version, 3);
    ck_assert_uint_eq(fsm_quota_count(F), 2);

    r = apply1(F, cmd_rm("org/team"), T0 + 30);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 4);
    ck_assert_uint_eq(fsm_catalog_version(F), 4);
    ck_assert_uint_eq(fsm_quota_count(F), 1);
    ck_assert_ptr_null(fsm_get(F, "org/team", 8));

    /* Created again: a new quota, with a new creation time. */
    r = apply1(F, cmd_set("org/team", "max_apps=1"), T0 + 40);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 5);
    ck_assert_uint_eq(r->created_ms, T0 + 40);
    ck_assert_uint_eq(fsm_get(F, "org/team", 8)->f.kind, QUOTA_KIND_CAPACITY);
}
END_TEST

START_TEST(batch_results_in_order)
{
    struct fsm_cmd cmds[] = {
        cmd_set("a", "max_apps=1"),       cmd_set("b//x", "max_apps=1"),
        cmd_set("c", "rate=2"),           cmd_rm("zz"),
        cmd_set("a", "max_apps=9"),       cmd_set("c", "max_apps=1"),
        cmd_set("d", "on_exceed=shadow"),
    };
    unsigned n = sizeof cmds / sizeof cmds[0];
    const struct fsm_batch_result *b = apply_cmds(F, cmds, n, T0);
    ck_assert_int_eq(b->results[0].code, 0);
    ck_assert_uint_eq(b->results[0].version, 1);
    ck_assert_int_eq(b->results[1].code, ALLOT_EINVALID);
    assert_has(b->results[1].message, "bad path segment");
    ck_assert_int_eq(b->results[2].code, 0);
    ck_assert_uint_eq(b->results[2].version, 2);
    ck_assert_int_eq(b->results[3].code, ALLOT_ENOT_FOUND);
    assert_has(b->results[3].message, "zz");
    ck_assert_int_eq(b->results[4].code, 0);
    ck_assert_uint_eq(b->results[4].version, 3);
    ck_assert_uint_eq(b->results[4].fields.max_apps, 9);
    ck_assert_int_eq(b->results[5].code, ALLOT_EINVALID);
    assert_has(b->results[5].message, "cannot change kind from rate");
    ck_assert_int_eq(b->results[6].code, ALLOT_EINVALID);
    assert_has(b->results[6].message, "kind=capacity or kind=rate");
    ck_assert_uint_eq(fsm_catalog_version(F), 3);
    ck_assert_uint_eq(fsm_quota_count(F), 2);
    ck_assert_ptr_null(fsm_get(F, "d", 1));
}
END_TEST

START_TEST(batch_max_commands)
{
    struct fsm_cmd *cmds = calloc(FSM_BATCH_MAX, sizeof *cmds);
    ck_assert_ptr_nonnull(cmds);
    for (unsigned i = 0; i < FSM_BATCH_MAX; i++) {
        cmds[i] = cmd_set("hot", "max_apps=1");
    }
    const struct fsm_batch_result *b = apply_cmds(F, cmds, FSM_BATCH_MAX, T0);
    for (unsigned i = 0; i < FSM_BATCH_MAX; i++) {
        ck_assert_int_eq(b->results[i].code, 0);
        ck_assert_uint_eq(b->results[i].version, i + 1);
    }
    ck_assert_uint_eq(fsm_catalog_version(F), FSM_BATCH_MAX);
    free(cmds);
}
END_TEST

START_TEST(invalid_sets_change_nothing)
{
    apply1(F, cmd_set("r", "rate=5"), T0);
    char before[65], after[65];
    digest(F, before);
    struct
    {
        struct fsm_cmd c;
        const char *says;
    } cases[] = {
        {cmd_set("/bad", "max_apps=1"), "bad path segment"},
        {cmd_set("a/b/c/d/e/f/g/h/i", "max_apps=1"), "deeper than 8"},
        {cmd_set("x", ""), "nothing to set"},
        {cmd_set("r", "kind=capacity"), "cannot change kind"},
        {cmd_set("r", "max_apps=1"), "cannot change kind"},
        {cmd_set("r", "rate=0"), "rate must be > 0"},
        {cmd_set("r", "burst=0"), "burst must be >= 1"},
        {cmd_set("n", "kind=capacity on_exceed=delay"), "delay"},
        {cmd_set("n", "rate=1 max_apps=1"), "different kinds"},
        {cmd_rm("/bad"), "bad path segment"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct fsm_result *r = apply1(F, cases[i].c, T0 + 1 + i);
        ck_assert_msg(r->code == ALLOT_EINVALID, "case %zu: %d", i, r->code);
        assert_has(r->message, cases[i].says);
        ck_assert_uint_eq(r->version, 0);
    }
    digest(F, after);
    ck_assert_str_eq(before, after);
    ck_assert_uint_eq(fsm_catalog_version(F), 1);
    ck_assert_uint_eq(fsm_quota_count(F), 1);
    ck_assert_double_eq(fsm_get(F, "r", 1)->f.rate, 5);
}
END_TEST

START_TEST(if_version_rules)
{
    char d0[65], d1[65];
    const struct fsm_result *r =
        apply1(F, if_version(cmd_set("q", "max_apps=1"), 0), T0);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 1);

    /* 0 means "must not exist". */
    digest(F, d0);
    r = apply1(F, if_version(cmd_set("q", "max_apps=2"), 0), T0 + 1);
    ck_assert_int_eq(r->code, ALLOT_ECONFLICT);
    assert_has(r->message, "quota q is at version 1, not 0");
    digest(F, d1);
    ck_assert_str_eq(d0, d1);

    apply1(F, cmd_set("other", "max_apps=1"), T0 + 2); /* catalog at 2 */
    digest(F, d0);
    r = apply1(F, if_version(cmd_set("q", "max_apps=3"), 2), T0 + 3);
    ck_assert_int_eq(r->code, ALLOT_ECONFLICT);
    assert_has(r->message, "at version 1, not 2");
    r = apply1(F, if_version(cmd_set("missing", "max_apps=3"), 5), T0 + 4);
    ck_assert_int_eq(r->code, ALLOT_ECONFLICT);
    assert_has(r->message, "missing does not exist (version 0), not version 5");
    ck_assert_ptr_null(fsm_get(F, "missing", 7));
    r = apply1(F, if_version(cmd_rm("q"), 2), T0 + 5);
    ck_assert_int_eq(r->code, ALLOT_ECONFLICT);
    assert_has(r->message, "at version 1, not 2");
    digest(F, d1);
    ck_assert_str_eq(d0, d1);
    ck_assert_uint_eq(fsm_get(F, "q", 1)->f.max_apps, 1);

    r = apply1(F, if_version(cmd_set("q", "max_apps=3"), 1), T0 + 6);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 3);
    r = apply1(F, if_version(cmd_rm("q"), 1), T0 + 7);
    ck_assert_int_eq(r->code, ALLOT_ECONFLICT);
    assert_has(r->message, "at version 3, not 1");
    r = apply1(F, if_version(cmd_rm("q"), 3), T0 + 8);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 4);
    ck_assert_ptr_null(fsm_get(F, "q", 1));
    /* Gone: must-not-exist holds again. */
    r = apply1(F, if_version(cmd_set("q", "rate=1"), 0), T0 + 9);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 5);
}
END_TEST

START_TEST(rm_missing)
{
    apply1(F, cmd_set("here", "max_apps=1"), T0);
    const struct fsm_result *r = apply1(F, cmd_rm("gone/away"), T0 + 1);
    ck_assert_int_eq(r->code, ALLOT_ENOT_FOUND);
    assert_has(r->message, "gone/away");
    ck_assert_uint_eq(r->version, 0);
    r = apply1(F, if_version(cmd_rm("gone"), 0), T0 + 2);
    ck_assert_int_eq(r->code, ALLOT_ENOT_FOUND);
    ck_assert_uint_eq(fsm_catalog_version(F), 1);
    /* Removing twice: the second is not found. */
    ck_assert_int_eq(apply1(F, cmd_rm("here"), T0 + 3)->code, 0);
    ck_assert_int_eq(apply1(F, cmd_rm("here"), T0 + 4)->code, ALLOT_ENOT_FOUND);
    ck_assert_uint_eq(fsm_catalog_version(F), 2);
}
END_TEST

START_TEST(clock_never_goes_back)
{
    apply1(F, cmd_set("a", "max_apps=1"), T0 + 500);
    /* A new leader with a slower clock. */
    const struct fsm_result *r = apply1(F, cmd_set("a", "max_apps=2"), T0);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->updated_ms, T0 + 500);
    r = apply1(F, cmd_set("b", "max_apps=2"), T0 + 100);
    ck_assert_uint_eq(r->created_ms, T0 + 500);
}
END_TEST

/* --- Sessions --- */

START_TEST(dedup_retry)
{
    const struct fsm_result *r =
        apply1(F, sess(cmd_set("a", "max_apps=1"), 9, 1, 0), T0);
    ck_assert_int_eq(r->code, 0);
    ck_assert(!r->duplicate);
    ck_assert_uint_eq(r->version, 1);
    ck_assert_uint_eq(fsm_session_count(F), 1);

    /* The retry (even with other content) returns the first answer. */
    char d0[65], d1[65];
    digest(F, d0);
    r = apply1(F, sess(cmd_set("a", "max_apps=2"), 9, 1, 0), T0 + 50);
    ck_assert_int_eq(r->code, 0);
    ck_assert(r->duplicate);
    ck_assert_uint_eq(r->version, 1);
    ck_assert_uint_eq(r->fields.max_apps, 1);
    ck_assert_uint_eq(r->created_ms, T0);
    ck_assert_uint_eq(r->updated_ms, T0);
    digest(F, d1);
    ck_assert_str_eq(d0, d1);
    ck_assert_uint_eq(fsm_catalog_version(F), 1);
    ck_assert_uint_eq(fsm_get(F, "a", 1)->f.max_apps, 1);

    /* Errors are remembered too. */
    r = apply1(F, sess(cmd_rm("b"), 9, 2, 0), T0 + 60);
    ck_assert_int_eq(r->code, ALLOT_ENOT_FOUND);
    ck_assert(!r->duplicate);
    ck_assert_int_eq(
        apply1(F, sess(cmd_set("b", "max_apps=1"), 10, 1, 0), T0 + 70)->code,
        0);
    r = apply1(F, sess(cmd_rm("b"), 9, 2, 0), T0 + 80);
    ck_assert_int_eq(r->code, ALLOT_ENOT_FOUND);
    ck_assert(r->duplicate);
    assert_has(r->message, "no quota at b");
    ck_assert_ptr_nonnull(fsm_get(F, "b", 1));
    ck_assert_uint_eq(fsm_catalog_version(F), 2);

    /* Another client with the same seq is another request. */
    r = apply1(F, sess(cmd_set("a", "max_apps=3"), 11, 1, 0), T0 + 90);
    ck_assert(!r->duplicate);
    ck_assert_uint_eq(r->version, 3);
    ck_assert_uint_eq(fsm_session_count(F), 3);
}
END_TEST

START_TEST(dedup_within_one_entry)
{
    struct fsm_cmd cmds[] = {
        sess(cmd_set("a", "max_apps=1"), 9, 1, 0),
        sess(cmd_set("a", "max_apps=2"), 9, 1, 0),
        sess(cmd_set("a", "max_apps=3"), 9, 2, 0),
    };
    const struct fsm_batch_result *b = apply_cmds(F, cmds, 3, T0);
    ck_assert(!b->results[0].duplicate);
    ck_assert(b->results[1].duplicate);
    ck_assert_uint_eq(b->results[1].version, 1);
    ck_assert(!b->results[2].duplicate);
    ck_assert_uint_eq(b->results[2].version, 2);
    ck_assert_uint_eq(fsm_get(F, "a", 1)->f.max_apps, 3);
}
END_TEST

START_TEST(no_client_no_dedup)
{
    apply1(F, cmd_set("a", "max_apps=1"), T0);
    const struct fsm_result *r = apply1(F, cmd_set("a", "max_apps=1"), T0);
    ck_assert(!r->duplicate);
    ck_assert_uint_eq(r->version, 2);
    ck_assert_uint_eq(fsm_session_count(F), 0);
}
END_TEST

START_TEST(ack_prunes_and_refuses)
{
    for (uint64_t seq = 1; seq <= 3; seq++) {
        const struct fsm_result *r =
            apply1(F, sess(cmd_set("a", "max_apps=1"), 9, seq, 0), T0);
        ck_assert_int_eq(r->code, 0);
        ck_assert_uint_eq(r->version, seq);
    }
    ck_assert_int_eq(session_results(F, 9), 3);
    /* ack 3: seqs 1 and 2 answered, forget them. */
    const struct fsm_result *r =
        apply1(F, sess(cmd_set("a", "max_apps=2"), 9, 4, 3), T0);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 4);
    ck_assert_int_eq(session_results(F, 9), 2);

    r = apply1(F, sess(cmd_set("a", "max_apps=5"), 9, 2, 3), T0);
    ck_assert_int_eq(r->code, ALLOT_EINVALID);
    ck_assert(!r->duplicate);
    assert_has(r->message, "already acknowledged");
    /* A stale ack never moves the window back. */
    r = apply1(F, sess(cmd_set("a", "max_apps=5"), 9, 1, 0), T0);
    ck_assert_int_eq(r->code, ALLOT_EINVALID);
    ck_assert_uint_eq(fsm_catalog_version(F), 4);
    ck_assert_uint_eq(fsm_get(F, "a", 1)->f.max_apps, 2);

    /* Still unacknowledged: answered from memory. */
    r = apply1(F, sess(cmd_set("a", "max_apps=5"), 9, 3, 3), T0);
    ck_assert(r->duplicate);
    ck_assert_uint_eq(r->version, 3);
    r = apply1(F, sess(cmd_set("a", "max_apps=5"), 9, 4, 0), T0);
    ck_assert(r->duplicate);
    ck_assert_uint_eq(r->version, 4);

    /* Out of order arrival: both apply once. */
    r = apply1(F, sess(cmd_set("b", "max_apps=1"), 9, 6, 3), T0);
    ck_assert(!r->duplicate);
    ck_assert_uint_eq(r->version, 5);
    r = apply1(F, sess(cmd_set("c", "max_apps=1"), 9, 5, 3), T0);
    ck_assert(!r->duplicate);
    ck_assert_uint_eq(r->version, 6);
    ck_assert(apply1(F, sess(cmd_rm("b"), 9, 6, 3), T0)->duplicate);
    ck_assert(apply1(F, sess(cmd_rm("c"), 9, 5, 3), T0)->duplicate);
    ck_assert_uint_eq(fsm_quota_count(F), 3);

    /* Acknowledging everything leaves nothing remembered. */
    apply1(F, sess(cmd_set("a", "max_apps=1"), 9, 7, 7), T0);
    ck_assert_int_eq(session_results(F, 9), 1);
}
END_TEST

/* What proto/client.c sends: every write carries ack = seq, from seq 1, so
 * a new client's first command already acknowledges. */
START_TEST(first_write_carries_ack)
{
    const struct fsm_result *r =
        apply1(F, sess(cmd_set("a", "max_apps=1"), 77, 1, 1), T0);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 1);
    r = apply1(F, sess(cmd_set("a", "max_apps=2"), 77, 2, 2), T0);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, 2);
    ck_assert(
        apply1(F, sess(cmd_set("a", "max_apps=3"), 77, 2, 2), T0)->duplicate);
    ck_assert_int_eq(
        apply1(F, sess(cmd_set("a", "max_apps=3"), 77, 1, 2), T0)->code,
        ALLOT_EINVALID);
    ck_assert_uint_eq(fsm_get(F, "a", 1)->f.max_apps, 2);
    ck_assert_int_eq(session_results(F, 77), 1);
}
END_TEST

/* Entries every 30 s after `from`, the last one at `to`: the session clock
 * follows the leaders' clock only in steps of at most FSM_SESSION_STEP_MAX_MS
 * per entry, so idle time is walked, not jumped. */
static void walk_clock(struct fsm *f, uint64_t from, uint64_t to)
{
    for (uint64_t t = from + 30000; t < to; t += 30000) {
        apply1(f, cmd_rm("idle"), t);
    }
    apply1(f, cmd_rm("idle"), to);
}

START_TEST(session_expires_after_ttl)
{
    apply1(F, sess(cmd_set("a", "max_apps=1"), 9, 1, 0), T0);
    walk_clock(F, T0, T0 + FSM_SESSION_TTL_MS / 2);
    apply1(F, sess(cmd_set("b", "max_apps=1"), 10, 1, 0),
           T0 + FSM_SESSION_TTL_MS / 2);
    ck_assert_uint_eq(fsm_session_count(F), 2);

    /* Exactly the TTL idle: still remembered. */
    walk_clock(F, T0 + FSM_SESSION_TTL_MS / 2, T0 + FSM_SESSION_TTL_MS);
    ck_assert_uint_eq(fsm_session_count(F), 2);
    /* One millisecond more: client 9 is forgotten, client 10 is not. */
    apply1(F, cmd_rm("idle"), T0 + FSM_SESSION_TTL_MS + 1);
    ck_assert_uint_eq(fsm_session_count(F), 1);
    ck_assert_int_eq(session_results(F, 9), -1);

    const struct fsm_result *r = apply1(
        F, sess(cmd_set("b", "max_apps=2"), 10, 1, 0), T0 + FSM_SESSION_TTL_MS);
    ck_assert(r->duplicate);
    /* A forgotten client's retry applies again: the documented bound. */
    r = apply1(F, sess(cmd_set("a", "max_apps=1"), 9, 1, 0),
               T0 + FSM_SESSION_TTL_MS + 2);
    ck_assert(!r->duplicate);
    ck_assert_uint_eq(r->version, 3);

    /* Using a session keeps it alive. */
    uint64_t t = T0 + FSM_SESSION_TTL_MS + 2;
    apply1(F, sess(cmd_set("c", "max_apps=1"), 11, 1, 0), t);
    for (int i = 1; i <= 4; i++) {
        uint64_t now = t + (uint64_t)i * (FSM_SESSION_TTL_MS - 1);
        walk_clock(F, now - (FSM_SESSION_TTL_MS - 1), now);
        ck_assert(apply1(F, sess(cmd_rm("c"), 11, 1, 0), now)->duplicate);
    }
    ck_assert_int_eq(session_results(F, 11), 1);
    /* And idling past the TTL forgets it. */
    uint64_t end = t + 4 * (FSM_SESSION_TTL_MS - 1);
    walk_clock(F, end, end + FSM_SESSION_TTL_MS + 1);
    ck_assert_int_eq(session_results(F, 11), -1);
}
END_TEST

/* F2 in docs/fault-testing.md: one entry from a leader whose wall clock is
 * 11 minutes ahead must not forget the sessions, or a write retried across
 * it applies twice. */
START_TEST(session_survives_clock_jump)
{
    apply1(F, sess(cmd_set("a", "max_apps=1"), 42, 1, 0), T0);
    apply1(F, cmd_rm("idle"), T0 + 11 * 60 * 1000);
    ck_assert_uint_eq(fsm_session_count(F), 1);
    const struct fsm_result *r = apply1(
        F, sess(cmd_set("a", "max_apps=1"), 42, 1, 0), T0 + 11 * 60 * 1000);
    ck_assert(r->duplicate);
    ck_assert_uint_eq(r->version, 1);
    /* The retry used the session: it lives TTL more of steady time. */
    uint64_t t = T0 + 11 * 60 * 1000;
    walk_clock(F, t, t + FSM_SESSION_TTL_MS);
    ck_assert_uint_eq(fsm_session_count(F), 1);
    apply1(F, cmd_rm("idle"), t + FSM_SESSION_TTL_MS + 1);
    ck_assert_uint_eq(fsm_session_count(F), 0);
}
END_TEST

START_TEST(sessions_bounded)
{
    /* One more client than remembered: the least recently used goes. */
    unsigned total = FSM_SESSIONS_MAX + 1;
    struct fsm_cmd *cmds = calloc(FSM_BATCH_MAX, sizeof *cmds);
    ck_assert_ptr_nonnull(cmds);
    for (unsigned done = 0; done < total;) {
        unsigned n =
            total - done < FSM_BATCH_MAX ? total - done : FSM_BATCH_MAX;
        for (unsigned i = 0; i < n; i++) {
            cmds[i] = sess(cmd_set("hot", "max_apps=1"), done + i + 1, 1, 0);
        }
        apply_cmds(F, cmds, n, T0);
        done += n;
    }
    free(cmds);
    ck_assert_uint_eq(fsm_session_count(F), FSM_SESSIONS_MAX);
    ck_assert_int_eq(session_results(F, 1), -1);
    ck_assert_int_eq(session_results(F, 2), 1);
    ck_assert(apply1(F, sess(cmd_set("hot", "max_apps=1"), total, 1, 0), T0)
                  ->duplicate);
}
END_TEST

START_TEST(session_results_bounded)
{
    /* A client that never acknowledges: memory stays bounded. */
    unsigned total = FSM_SESSION_RESULTS_MAX + 1;
    struct fsm_cmd *cmds = calloc(FSM_BATCH_MAX, sizeof *cmds);
    ck_assert_ptr_nonnull(cmds);
    for (unsigned done = 0; done < total;) {
        unsigned n =
            total - done < FSM_BATCH_MAX ? total - done : FSM_BATCH_MAX;
        for (unsigned i = 0; i < n; i++) {
            cmds[i] = sess(cmd_set("hot", "max_apps=1"), 9, done + i + 1, 0);
        }
        apply_cmds(F, cmds, n, T0);
        done += n;
    }
    free(cmds);
    ck_assert_int_eq(session_results(F, 9), FSM_SESSION_RESULTS_MAX);
    const struct fsm_result *r =
        apply1(F, sess(cmd_set("hot", "max_apps=1"), 9, 2, 0), T0);
    ck_assert(r->duplicate);
    ck_assert_uint_eq(r->version, 2);
    r = apply1(F, sess(cmd_set("hot", "max_apps=1"), 9, total, 0), T0);
    ck_assert(r->duplicate);
    ck_assert_uint_eq(r->version, total);
}
END_TEST

/* --- Corrupt input --- */

/* Pack [1, time, [cmds...]] around raw command packing done by fn. */
static void pack_entry_head(msgpack_packer *pk, uint32_t n_cmds)
{
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint64(pk, 1);
    msgpack_pack_uint64(pk, T0);
    msgpack_pack_array(pk, n_cmds);
}

START_TEST(corrupt_entries_yield_nothing)
{
    /* Something applied first, so stale results would show. */
    apply1(F, sess(cmd_set("a", "max_apps=1"), 9, 1, 0), T0);
    char d0[65];
    digest(F, d0);

    struct fsm_cmd good = cmd_set("b", "max_apps=1");
    struct raft_buffer valid;
    ck_assert_int_eq(fsm_batch_encode(&good, 1, T0, &valid), 0);
    size_t used = 0;
    ck_assert_int_eq(wire_check_prefix(valid.base, valid.len, &used, NULL), 0);

    enum { N_CASES = 20 };
    msgpack_sbuffer sb[N_CASES];
    msgpack_packer pk;
    for (int i = 0; i < N_CASES; i++) {
        msgpack_sbuffer_init(&sb[i]);
    }
    int k = 0;
    /* 0: nothing */
    k++;
    /* 1: pseudo-random bytes */
    uint32_t x = 12345;
    for (int i = 0; i < 256; i++) {
        x = x * 1103515245u + 12345u;
        char c = (char)(x >> 16);
        msgpack_sbuffer_write(&sb[k], &c, 1);
    }
    k++;
    /* 2: the reserved byte */
    msgpack_sbuffer_write(&sb[k++], "\xc1", 1);
    /* 3: a lying array32 */
    msgpack_sbuffer_write(&sb[k++], "\xdd\xff\xff\xff\xff\x01\x02\x03", 8);
    /* 4: a map */
    msgpack_packer_init(&pk, &sb[k++], msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    wire_pack_kv_u64(&pk, "a", 1);
    /* 5: two elements */
    msgpack_packer_init(&pk, &sb[k++], msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, T0);
    /* 6: format 2 */
    msgpack_packer_init(&pk, &sb[k++], msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, 2);
    msgpack_pack_uint64(&pk, T0);
    msgpack_pack_array(&pk, 0);
    /* 7: time as a string */
    msgpack_packer_init(&pk, &sb[k++], msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, 1);
    wire_pack_str(&pk, "now");
    msgpack_pack_array(&pk, 0);
    /* 8: commands as a map */
    msgpack_packer_init(&pk, &sb[k++], msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, T0);
    msgpack_pack_map(&pk, 0);
    /* 9: more commands than a batch may hold */
    msgpack_packer_init(&pk, &sb[k++], msgpack_sbuffer_write);
    pack_entry_head(&pk, FSM_BATCH_MAX + 1);
    for (int i = 0; i <= FSM_BATCH_MAX; i++) {
        msgpack_pack_nil(&pk);
    }
    /* 10: a valid entry followed by 8 bytes of zeros (too much padding) */
    msgpack_sbuffer_write(&sb[k], valid.base, used);
    msgpack_sbuffer_write(&sb[k++], "\0\0\0\0\0\0\0\0", 8);
    /* 11: non-zero padding */
    msgpack_sbuffer_write(&sb[k], valid.base, used);
    msgpack_sbuffer_write(&sb[k++], "\0\x01", 2);
    /* 12: a valid entry cut short */
    msgpack_sbuffer_write(&sb[k++], valid.base, used - 1);
    /* 13: nested too deep */
    for (int i = 0; i < 40; i++) {
        msgpack_sbuffer_write(&sb[k], "\x91", 1);
    }
    msgpack_sbuffer_write(&sb[k++], "\x01", 1);
    /* 14: a negative format */
    msgpack_packer_init(&pk, &sb[k++], msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_int64(&pk, -1);
    msgpack_pack_uint64(&pk, T0);
    msgpack_pack_array(&pk, 0);
    /* 15: only padding */
    msgpack_sbuffer_write(&sb[k++], "\0\0\0\0\0\0\0\0", 8);
    /* 16: a bare integer */
    msgpack_sbuffer_write(&sb[k++], "\x07", 1);
    ck_assert_int_le(k, N_CASES);

    for (int i = 0; i < k; i++) {
        const struct fsm_batch_result *b = apply_raw(F, sb[i].data, sb[i].size);
        ck_assert_msg(b->n == 0, "case %d: %u results", i, b->n);
        char d1[65];
        digest(F, d1);
        ck_assert_str_eq(d0, d1);
        ck_assert_uint_eq(fsm_catalog_version(F), 1);
        ck_assert_uint_eq(fsm_session_count(F), 1);
        /* Re-prime results so the next case starts from a full batch. */
        apply1(F, sess(cmd_set("a", "max_apps=1"), 9, 1, 0), T0);
    }
    for (int i = 0; i < N_CASES; i++) {
        msgpack_sbuffer_destroy(&sb[i]);
    }

    /* An entry without any padding is fine. */
    const struct fsm_batch_result *b = apply_raw(F, valid.base, used);
    ck_assert_uint_eq(b->n, 1);
    ck_assert_int_eq(b->results[0].code, 0);
    raft_free(valid.base);
}
END_TEST

/* Commands as fsm_batch_encode() writes them, [type, client, seq, ack,
 * principal, args...], broken one way each: an element replaced, one more
 * element, or the array cut short. Built from the encoder's own output so
 * that every other element stays well-formed. */
enum { HDR = 5 }; /* elements before the arguments */

enum mut_kind { MUT_NONE, MUT_REPLACE, MUT_APPEND, MUT_TRUNCATE };

enum val_kind { V_NIL, V_INT, V_STR, V_TRUE, V_EMPTY_ARRAY, V_FAST_RATE };

struct val
{
    enum val_kind kind;
    int64_t i;
    const char *s;
};

static void pack_val(msgpack_packer *pk, struct val v)
{
    switch (v.kind) {
    case V_NIL:
        msgpack_pack_nil(pk);
        break;
    case V_INT:
        msgpack_pack_int64(pk, v.i);
        break;
    case V_STR:
        wire_pack_str(pk, v.s);
        break;
    case V_TRUE:
        msgpack_pack_true(pk);
        break;
    case V_EMPTY_ARRAY:
        msgpack_pack_array(pk, 0);
        break;
    case V_FAST_RATE:
        msgpack_pack_map(pk, 1);
        wire_pack_kv_str(pk, "rate", "fast");
        break;
    }
}

/* Pack c as the encoder would, changed by m at element idx (MUT_TRUNCATE:
 * keep the first idx elements). */
static void pack_cmd_mut(msgpack_packer *pk, struct fsm_cmd c, enum mut_kind m,
                         uint32_t idx, struct val v)
{
    struct raft_buffer buf;
    ck_assert_int_eq(fsm_batch_encode(&c, 1, T0, &buf), 0);
    size_t used = 0;
    ck_assert_int_eq(wire_check_prefix(buf.base, buf.len, &used, NULL), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(buf.base, used, &u, NULL), 0);
    const msgpack_object *cmd = &u.data.via.array.ptr[2].via.array.ptr[0];
    uint32_t n = cmd->via.array.size;
    ck_assert_uint_lt(idx, n + (m == MUT_TRUNCATE));
    uint32_t out = m == MUT_APPEND ? n + 1 : m == MUT_TRUNCATE ? idx : n;
    msgpack_pack_array(pk, out);
    for (uint32_t i = 0; i < n && i < out; i++) {
        if (m == MUT_REPLACE && i == idx) {
            pack_val(pk, v);
        } else {
            msgpack_pack_object(pk, cmd->via.array.ptr[i]);
        }
    }
    if (m == MUT_APPEND) {
        pack_val(pk, v);
    }
    msgpack_unpacked_destroy(&u);
    raft_free(buf.base);
}

static const struct val NIL = {V_NIL, 0, NULL};

static struct val vint(int64_t i)
{
    return (struct val){V_INT, i, NULL};
}

static struct val vstr(const char *s)
{
    return (struct val){V_STR, 0, s};
}

START_TEST(malformed_commands_yield_errors)
{
    char addr300[301];
    memset(addr300, 'x', 300);
    addr300[300] = '\0';
    char who256[257];
    memset(who256, 'p', 256);
    who256[256] = '\0';
    struct fsm_cmd set = cmd_set("a", "max_apps=1");
    struct fsm_cmd rm = cmd_rm("a");
    struct fsm_cmd leader = cmd_leader(1, "127.0.0.1:7001");
    struct fsm_cmd cap = cmd_set("a", "max_apps=1");
    memset(&cap, 0, sizeof cap);
    cap.type = FSM_CMD_CAPACITY_SET;
    cap.capacity.has_vcores = true;
    cap.capacity.vcores = 64;
    struct fsm_cmd audit;
    memset(&audit, 0, sizeof audit);
    audit.type = FSM_CMD_AUDIT_CONFIG;
    audit.audit.has_max_records = true;
    audit.audit.max_records = 10;
    enum { N = 33 };
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack_entry_head(&pk, N);
    /* 0: not an array */
    msgpack_pack_uint64(&pk, 5);
    /* 1: unknown type */
    pack_cmd_mut(&pk, rm, MUT_REPLACE, 0, vint(99));
    /* 2: set with an extra element */
    pack_cmd_mut(&pk, set, MUT_APPEND, 0, NIL);
    /* 3: path not a string */
    pack_cmd_mut(&pk, set, MUT_REPLACE, HDR, vint(7));
    /* 4: a bad patch value */
    pack_cmd_mut(&pk, set, MUT_REPLACE, HDR + 1,
                 (struct val){V_FAST_RATE, 0, NULL});
    /* 5: patch not a map */
    pack_cmd_mut(&pk, set, MUT_REPLACE, HDR + 1,
                 (struct val){V_EMPTY_ARRAY, 0, NULL});
    /* 6: if_version a string */
    pack_cmd_mut(&pk, set, MUT_REPLACE, HDR + 2, vstr("1"));
    /* 7: rm with a bad if_version (the rest well-formed) */
    pack_cmd_mut(&pk, rm, MUT_REPLACE, HDR + 1, (struct val){V_TRUE, 0, NULL});
    /* 8: rm too short: no recursive flag */
    pack_cmd_mut(&pk, rm, MUT_TRUNCATE, HDR + 2, NIL);
    /* 9: leader without an address */
    pack_cmd_mut(&pk, leader, MUT_TRUNCATE, HDR + 1, NIL);
    /* 10: leader with an address far too long (the rest well-formed) */
    pack_cmd_mut(&pk, leader, MUT_REPLACE, HDR + 1, vstr(addr300));
    /* 11: a negative client id */
    pack_cmd_mut(&pk, sess(rm, 1, 1, 0), MUT_REPLACE, 1, vint(-1));
    /* 12: an empty command */
    msgpack_pack_array(&pk, 0);
    /* 13: a malformed command from a client: remembered like any result */
    pack_cmd_mut(&pk, sess(rm, 77, 1, 0), MUT_REPLACE, 0, vint(99));
    /* 14: its retry */
    pack_cmd_mut(&pk, sess(rm, 77, 1, 0), MUT_REPLACE, 0, vint(99));
    /* 15: the header before principals, [1, 0, 0, 0, path, patch,
     * if_version]: "a" reads as the principal, the arguments fall short */
    msgpack_pack_array(&pk, 7);
    msgpack_pack_uint64(&pk, FSM_CMD_QUOTA_SET);
    for (int i = 0; i < 3; i++) {
        msgpack_pack_uint64(&pk, 0);
    }
    wire_pack_str(&pk, "a");
    msgpack_pack_map(&pk, 1);
    wire_pack_kv_u64(&pk, "max_apps", 1);
    msgpack_pack_nil(&pk);
    /* 16: principal not a string (the rest well-formed) */
    pack_cmd_mut(&pk, set, MUT_REPLACE, 4, NIL);
    /* 17: principal longer than 255 bytes */
    struct fsm_cmd long_who = set;
    long_who.principal = who256;
    pack_cmd_mut(&pk, long_who, MUT_NONE, 0, NIL);
    /* 18: only a header */
    pack_cmd_mut(&pk, set, MUT_TRUNCATE, HDR, NIL);
    /* 19: rm with recursive not a boolean */
    pack_cmd_mut(&pk, rm, MUT_REPLACE, HDR + 2, vint(1));
    /* 20: rm with an extra element */
    pack_cmd_mut(&pk, rm, MUT_APPEND, 0, NIL);
    /* 21: capacity with a string */
    pack_cmd_mut(&pk, cap, MUT_REPLACE, HDR, vstr("10"));
    /* 22: capacity with one argument */
    pack_cmd_mut(&pk, cap, MUT_TRUNCATE, HDR + 1, NIL);
    /* 23: capacity with a negative number */
    pack_cmd_mut(&pk, cap, MUT_REPLACE, HDR + 1, vint(-3));
    /* 24: audit config with a boolean */
    pack_cmd_mut(&pk, audit, MUT_REPLACE, HDR, (struct val){V_TRUE, 0, NULL});
    /* 25: audit config with three arguments */
    pack_cmd_mut(&pk, audit, MUT_APPEND, 0, NIL);
    /* 26: audit config beyond the record limit: well-formed, invalid */
    struct fsm_cmd big = audit;
    big.audit.max_records = 10000001; /* the limit is 10,000,000 */
    pack_cmd_mut(&pk, big, MUT_NONE, 0, NIL);
    /* 27: a type that is negative */
    pack_cmd_mut(&pk, rm, MUT_REPLACE, 0, vint(-1));
    /* 28: set with owners to add not an array */
    pack_cmd_mut(&pk, set, MUT_REPLACE, HDR + 3, vstr("user:alice"));
    /* 29: set with only path, patch and if_version (before owners) */
    pack_cmd_mut(&pk, set, MUT_TRUNCATE, HDR + 3, NIL);
    /* 30: leader without its admins list */
    pack_cmd_mut(&pk, leader, MUT_TRUNCATE, HDR + 2, NIL);
    /* 31: and a good command, which still applies */
    struct fsm_cmd good = cmd_set("ok", "max_apps=1");
    pack_cmd_mut(&pk, good, MUT_NONE, 0, NIL);
    /* 32: and a good capacity declaration */
    pack_cmd_mut(&pk, cap, MUT_NONE, 0, NIL);

    const struct fsm_batch_result *b = apply_raw(F, sb.data, sb.size);
    ck_assert_uint_eq(b->n, N);
    static const int want[N] = {ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINVALID,
                                ALLOT_EINVALID,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINVALID,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                ALLOT_EINTERNAL,
                                0,
                                0};
    for (int i = 0; i < N; i++) {
        ck_assert_msg(b->results[i].code == want[i], "command %d: %d (%s)", i,
                      b->results[i].code,
                      b->results[i].message ? b->results[i].message : "");
        if (want[i] != 0) {
            ck_assert_ptr_nonnull(b->results[i].message);
            ck_assert_uint_eq(b->results[i].version, 0);
        }
    }
    assert_has(b->results[4].message, "rate must be a number");
    assert_has(b->results[26].message, "max_records must be at most");
    ck_assert(!b->results[13].duplicate);
    ck_assert(b->results[14].duplicate);
    ck_assert_uint_eq(b->results[31].version, 1);
    ck_assert_uint_eq(b->results[32].version, 2);
    ck_assert_uint_eq(fsm_catalog_version(F), 2);
    ck_assert_uint_eq(fsm_quota_count(F), 1);
    ck_assert_ptr_null(fsm_get(F, "a", 1));
    ck_assert_ptr_null(fsm_node_addr(F, 1));
    struct fsm_capacity c = fsm_capacity(F);
    ck_assert(!c.has_memory_mb);
    ck_assert(c.has_vcores);
    ck_assert_uint_eq(c.vcores, 64);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* --- Node addresses --- */

START_TEST(node_addresses)
{
    ck_assert_ptr_null(fsm_node_addr(F, 1));
    announce(F, 1, "10.0.0.1:7001", T0);
    ck_assert_str_eq(fsm_node_addr(F, 1), "10.0.0.1:7001");
    announce(F, 1, "10.0.0.9:7001", T0);
    ck_assert_str_eq(fsm_node_addr(F, 1), "10.0.0.9:7001");
    ck_assert_ptr_null(fsm_node_addr(F, 2));
    /* The catalog is not touched by announcements. */
    ck_assert_uint_eq(fsm_catalog_version(F), 0);
    /* Bounded: the oldest announcement goes first. */
    char addr[32];
    for (uint64_t id = 2; id <= FSM_NODES_MAX + 1; id++) {
        snprintf(addr, sizeof addr, "n%llu", (unsigned long long)id);
        announce(F, id, addr, T0);
    }
    ck_assert_ptr_null(fsm_node_addr(F, 1));
    ck_assert_str_eq(fsm_node_addr(F, 2), "n2");
    ck_assert_str_eq(fsm_node_addr(F, FSM_NODES_MAX + 1), "n65");
}
END_TEST

/* Empty strings in an entry whose every earlier value fits in one byte:
 * msgpack-c 4.0 then gives the string a NULL pointer (with size 0), and
 * the state machine must not hand that pointer to memcpy (undefined
 * behaviour, which the sanitizer build reports). The leader's own entries
 * carry a large time first, so this takes a crafted or corrupt entry. */
START_TEST(empty_strings_in_small_entry)
{
    struct fsm_cmd cmds[3];
    cmds[0] = cmd_leader(1, ""); /* an empty principal and address */
    memset(&cmds[1], 0, sizeof cmds[1]);
    cmds[1].type = FSM_CMD_CAPACITY_SET;
    cmds[1].capacity.has_memory_mb = true;
    cmds[1].capacity.memory_mb = 7;
    cmds[2] = cmd_set("", "max_apps=1"); /* an empty path */
    struct raft_buffer buf;
    /* A time of 5 ms: one byte, like everything before the strings. */
    ck_assert_int_eq(fsm_batch_encode(cmds, 3, 5, &buf), 0);
    const struct fsm_batch_result *b = apply_raw(F, buf.base, buf.len);
    raft_free(buf.base);
    ck_assert_uint_eq(b->n, 3);
    ck_assert_int_eq(b->results[0].code, 0);
    ck_assert_int_eq(b->results[1].code, 0);
    ck_assert_int_eq(b->results[2].code, ALLOT_EINVALID);
    assert_has(b->results[2].message, "empty path");
    ck_assert_str_eq(fsm_node_addr(F, 1), "");
    ck_assert_uint_eq(fsm_capacity(F).memory_mb, 7);
}
END_TEST

/* A LEADER command alone in an entry: for some address length the entry
 * needs no padding and the address string ends the buffer. */
START_TEST(leader_addr_ends_entry)
{
    static const char addrs[] = "0123456789abcdef";
    unsigned unpadded = 0;
    for (size_t len = 1; len <= 16; len++) {
        char addr[17];
        memcpy(addr, addrs, len);
        addr[len] = '\0';
        struct fsm_cmd c = cmd_leader(len, addr);
        struct raft_buffer buf;
        ck_assert_int_eq(fsm_batch_encode(&c, 1, T0, &buf), 0);
        size_t used;
        ck_assert_int_eq(wire_check_prefix(buf.base, buf.len, &used, NULL), 0);
        unpadded += used == buf.len;
        const struct fsm_batch_result *b = apply_raw(F, buf.base, buf.len);
        raft_free(buf.base);
        ck_assert_uint_eq(b->n, 1);
        ck_assert_int_eq(b->results[0].code, 0);
        ck_assert_str_eq(fsm_node_addr(F, len), addr);
    }
    ck_assert_uint_ge(unpadded, 1);
}
END_TEST

/* --- Listing --- */

struct ls_out
{
    char paths[32][64];
    unsigned n;
};

static void ls_cb(void *arg, const struct quota *q)
{
    struct ls_out *o = arg;
    ck_assert_uint_lt(o->n, 32);
    snprintf(o->paths[o->n++], sizeof o->paths[0], "%s", q->path);
}

/* List and compare with the expected comma-separated paths. */
static void ls_expect(const char *prefix, const char *after, unsigned limit,
                      const char *want, bool want_more)
{
    struct ls_out o = {.n = 0};
    bool more = !want_more;
    fsm_ls(F, prefix, strlen(prefix), after, after ? strlen(after) : 0, limit,
           ls_cb, &o, &more);
    char got[1024] = "";
    for (unsigned i = 0; i < o.n; i++) {
        strcat(got, i ? "," : "");
        strcat(got, o.paths[i]);
    }
    ck_assert_msg(strcmp(got, want) == 0 && more == want_more,
                  "ls(\"%s\", after %s, limit %u): got [%s] more=%d, want "
                  "[%s] more=%d",
                  prefix, after ? after : "NULL", limit, got, more, want,
                  want_more);
}

static void ls_populate(void)
{
    const char *paths[] = {"a",  "a-x", "a/b", "a/b/c", "a/b-2", "a/c",
                           "ab", "b",   "b/a", "0",     "_z"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        struct fsm_cmd c = cmd_set(paths[i], "max_apps=1");
        ck_assert_int_eq(apply1(F, c, T0)->code, 0);
    }
}

START_TEST(ls_prefix)
{
    ls_populate();
    ls_expect("", NULL, 100, "0,_z,a,a-x,a/b,a/b-2,a/b/c,a/c,ab,b,b/a", false);
    /* A prefix is itself and what lies under it, not "a-x" or "ab". */
    ls_expect("a", NULL, 100, "a,a/b,a/b-2,a/b/c,a/c", false);
    ls_expect("a/b", NULL, 100, "a/b,a/b/c", false);
    ls_expect("a-x", NULL, 100, "a-x", false);
    ls_expect("b", NULL, 100, "b,b/a", false);
    ls_expect("a/b/c", NULL, 100, "a/b/c", false);
    /* A prefix that is not itself a quota. A parent must exist before its
     * children, so under a missing quota nothing exists either: removing
     * "a" (recursively) empties the prefix and leaves "a-x" and "ab". */
    const struct fsm_result *r = apply1(F, rm_recursive(cmd_rm("a")), T0);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->removed, 5);
    ls_expect("a", NULL, 100, "", false);
    ls_expect("a/b", NULL, 100, "", false);
    ls_expect("", NULL, 100, "0,_z,a-x,ab,b,b/a", false);
    ls_expect("zz", NULL, 100, "", false);
    ls_expect("c", NULL, 100, "", false);
}
END_TEST

START_TEST(ls_paging)
{
    ls_populate();
    ls_expect("a", NULL, 2, "a,a/b", true);
    ls_expect("a", "a/b", 2, "a/b-2,a/b/c", true);
    ls_expect("a", "a/b/c", 2, "a/c", false);
    ls_expect("a", "a/c", 2, "", false);
    /* A page that exactly fits says there is no more. */
    ls_expect("a", NULL, 5, "a,a/b,a/b-2,a/b/c,a/c", false);
    ls_expect("a", NULL, 4, "a,a/b,a/b-2,a/b/c", true);
    ls_expect("a", NULL, 0, "", true);
    ls_expect("zz", NULL, 0, "", false);
    /* "after" need not exist. */
    ls_expect("a", "a/b0", 10, "a/c", false);
    ls_expect("a", "a/b-1", 10, "a/b-2,a/b/c,a/c", false);
    /* Skips siblings sharing the characters after the prefix itself. */
    ls_expect("a", "a", 10, "a/b,a/b-2,a/b/c,a/c", false);
    ls_expect("", "a/c", 10, "ab,b,b/a", false);

    /* Walking the whole catalog page by page visits each quota once. */
    char after[64] = "";
    bool have_after = false;
    char all[1024] = "";
    unsigned pages = 0;
    for (;;) {
        struct ls_out o = {.n = 0};
        bool more;
        fsm_ls(F, "", 0, have_after ? after : NULL,
               have_after ? strlen(after) : 0, 3, ls_cb, &o, &more);
        for (unsigned i = 0; i < o.n; i++) {
            strcat(all, *all ? "," : "");
            strcat(all, o.paths[i]);
        }
        pages++;
        if (!more) {
            break;
        }
        ck_assert_uint_eq(o.n, 3);
        snprintf(after, sizeof after, "%s", o.paths[o.n - 1]);
        have_after = true;
    }
    ck_assert_str_eq(all, "0,_z,a,a-x,a/b,a/b-2,a/b/c,a/c,ab,b,b/a");
    ck_assert_uint_eq(pages, 4);
}
END_TEST

/* The header promises the quotas under prefix "starting after `after`":
 * an `after` that sorts before the prefix (a client's choice, or an empty
 * string) must not hide the prefix's quotas. */
START_TEST(ls_after_before_prefix)
{
    ls_populate();
    ls_expect("b", "a", 10, "b,b/a", false);
    ls_expect("b", "", 10, "b,b/a", false);
    ls_expect("a/b", "a", 10, "a/b,a/b/c", false);
}
END_TEST

/* --- Snapshots --- */

/* A catalog with both kinds, a removed quota and sessions with kept results
 * (one of them an error). Ends at time T0 + 100. No node addresses: those
 * have their own test (snapshot_restore_node_addresses). */
static void populate(struct fsm *f)
{
    apply1(f,
           cmd_set("org", "kind=capacity guaranteed.memory_mb=1024 "
                          "guaranteed.vcores=2 max.memory_mb=4096 "
                          "max.vcores=8 max_apps=20 on_exceed=shadow"),
           T0);
    apply1(f,
           sess(cmd_set("org/api", "rate=0.1 burst=3 unit=bytes fleet=eu "
                                   "share=demand per_key=true "
                                   "on_exceed=delay max_delay_ms=25"),
                9, 1, 0),
           T0 + 10);
    apply1(f, sess(cmd_set("org/tmp", "max_apps=1"), 9, 2, 0), T0 + 20);
    apply1(f, sess(cmd_rm("org/tmp"), 9, 3, 2), T0 + 30);
    apply1(f, sess(cmd_rm("nothing"), 10, 1, 0), T0 + 40);
    apply1(f, cmd_rm("nothing"), T0 + 100);
}

static void assert_same_state(struct fsm *a, struct fsm *b);

/* A snapshot ends with the node addresses: the last one ends the buffer. */
START_TEST(snapshot_restore_node_addresses)
{
    populate(F);
    announce(F, 1, "10.0.0.1:7001", T0 + 50);
    announce(F, 2, "10.0.0.2:7001", T0 + 60);
    struct fsm *g;
    ck_assert_int_eq(fsm_init(&g), 0);
    ck_assert_int_eq(snapshot_restore(g, snapshot_take(F)), 0);
    assert_same_state(F, g);
    ck_assert_str_eq(fsm_node_addr(g, 1), "10.0.0.1:7001");
    ck_assert_str_eq(fsm_node_addr(g, 2), "10.0.0.2:7001");
    ck_assert_ptr_null(fsm_node_addr(g, 3));
    fsm_close(g);
}
END_TEST

static void assert_same_state(struct fsm *a, struct fsm *b)
{
    char da[65], db[65];
    digest(a, da);
    digest(b, db);
    ck_assert_str_eq(da, db);
    assert_same_audit(a, b);
    fsm_catalog_digest(a, da);
    fsm_catalog_digest(b, db);
    ck_assert_str_eq(da, db);
    ck_assert_uint_eq(fsm_catalog_version(a), fsm_catalog_version(b));
    ck_assert_uint_eq(fsm_quota_count(a), fsm_quota_count(b));
    ck_assert_uint_eq(fsm_session_count(a), fsm_session_count(b));
}

START_TEST(snapshot_restore_round_trip)
{
    populate(F);
    struct fsm *g;
    ck_assert_int_eq(fsm_init(&g), 0);
    struct raft_buffer snap = snapshot_take(F);
    ck_assert_int_eq(snapshot_restore(g, snap), 0);

    assert_same_state(F, g);
    ck_assert_uint_eq(fsm_catalog_version(g), 4);
    ck_assert_uint_eq(fsm_quota_count(g), 2);
    ck_assert_uint_eq(fsm_session_count(g), 2);
    const struct quota *qa = fsm_get(F, "org/api", 7);
    const struct quota *qb = fsm_get(g, "org/api", 7);
    ck_assert_ptr_nonnull(qb);
    ck_assert_double_eq(qb->f.rate, 0.1);
    ck_assert_uint_eq(qb->f.max_delay_ms, 25);
    ck_assert_str_eq(qb->f.fleet, "eu");
    ck_assert_uint_eq(qb->created_ms, qa->created_ms);
    ck_assert_uint_eq(qb->version, qa->version);

    /* The restored state snapshots to the very same bytes. */
    struct raft_buffer s1 = snapshot_take(F);
    struct raft_buffer s2 = snapshot_take(g);
    ck_assert_uint_eq(s1.len, s2.len);
    ck_assert_mem_eq(s1.base, s2.base, s1.len);
    raft_free(s1.base);
    raft_free(s2.base);

    /* And behaves the same from here on: every entry gives the same
     * results on both. */
    struct fsm_cmd next[] = {
        sess(cmd_set("org/api", "rate=99"), 9, 1, 2),     /* acked: refused */
        sess(cmd_set("org/api", "rate=99"), 9, 3, 2),     /* kept: duplicate */
        sess(cmd_set("nothing", "max_apps=1"), 10, 1, 0), /* kept error */
        sess(cmd_set("org/new", "max_apps=2"), 9, 4, 3),  /* new */
        sess(cmd_set("org/new", "max_apps=3"), 9, 4, 3),  /* its retry */
        cmd_set("org", "max_apps=21"),
    };
    unsigned n = sizeof next / sizeof next[0];
    int codes[8];
    bool dups[8];
    uint64_t versions[8];
    const struct fsm_batch_result *b = apply_cmds(F, next, n, T0 + 200);
    for (unsigned i = 0; i < n; i++) {
        codes[i] = b->results[i].code;
        dups[i] = b->results[i].duplicate;
        versions[i] = b->results[i].version;
    }
    b = apply_cmds(g, next, n, T0 + 200);
    for (unsigned i = 0; i < n; i++) {
        ck_assert_int_eq(b->results[i].code, codes[i]);
        ck_assert_int_eq(b->results[i].duplicate, dups[i]);
        ck_assert_uint_eq(b->results[i].version, versions[i]);
    }
    ck_assert_int_eq(codes[0], ALLOT_EINVALID);
    ck_assert(dups[1]);
    ck_assert_uint_eq(versions[1], 4); /* the rm of org/tmp */
    ck_assert_int_eq(codes[2], ALLOT_ENOT_FOUND);
    ck_assert(dups[2]);
    ck_assert(!dups[3]);
    ck_assert(dups[4]);
    ck_assert_uint_eq(versions[4], versions[3]);
    assert_same_state(F, g);

    /* Session time carries over: both forget at the same entry. */
    uint64_t late = T0 + 200 + FSM_SESSION_TTL_MS + 1;
    walk_clock(F, T0 + 200, late);
    walk_clock(g, T0 + 200, late);
    ck_assert_uint_eq(fsm_session_count(F), 0);
    ck_assert_uint_eq(fsm_session_count(g), 0);
    fsm_close(g);
}
END_TEST

/* The digest a host would compute from (path, version) pairs alone. */
static void host_digest(struct fsm *f, const char *const *paths, unsigned n,
                        char hex[33])
{
    unsigned char x[16] = {0};
    for (unsigned i = 0; i < n; i++) {
        const struct quota *q = fsm_get(f, paths[i], strlen(paths[i]));
        ck_assert_ptr_nonnull(q);
        unsigned char h[16], term[9] = {0};
        for (unsigned b = 0; b < 8; b++) {
            term[1 + b] = (unsigned char)(q->version >> (8 * b));
        }
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, sizeof h);
        crypto_generichash_update(&st, (const unsigned char *)paths[i],
                                  strlen(paths[i]));
        crypto_generichash_update(&st, term, sizeof term);
        crypto_generichash_final(&st, h, sizeof h);
        for (unsigned b = 0; b < 16; b++) {
            x[b] ^= h[b];
        }
    }
    sodium_bin2hex(hex, 33, x, sizeof x);
}

START_TEST(catalog_digest_follows_changes)
{
    static const char zero[] = "00000000000000000000000000000000";
    char hex[33], want[33];
    fsm_catalog_digest(F, hex);
    ck_assert_str_eq(hex, zero);
    apply1(F, cmd_set("org", "max_apps=10"), T0);
    apply1(F, cmd_set("org/a", "max_apps=2"), T0 + 1);
    apply1(F, cmd_set("org/b", "max_apps=3"), T0 + 2);
    const char *const all[] = {"org", "org/a", "org/b"};
    fsm_catalog_digest(F, hex);
    host_digest(F, all, 3, want);
    ck_assert_str_eq(hex, want);
    /* An update changes it (new version) ... */
    char before[33];
    memcpy(before, hex, sizeof before);
    apply1(F, cmd_set("org/a", "max_apps=4"), T0 + 3);
    fsm_catalog_digest(F, hex);
    ck_assert_str_ne(hex, before);
    host_digest(F, all, 3, want);
    ck_assert_str_eq(hex, want);
    /* ... a refused write does not ... */
    memcpy(before, hex, sizeof before);
    apply1(F, cmd_set("org/a", "max_apps=40"), T0 + 4); /* > parent's 10 */
    fsm_catalog_digest(F, hex);
    ck_assert_str_eq(hex, before);
    /* ... a restored replica has the same ... */
    struct fsm *g;
    ck_assert_int_eq(fsm_init(&g), 0);
    ck_assert_int_eq(snapshot_restore(g, snapshot_take(F)), 0);
    fsm_catalog_digest(g, want);
    ck_assert_str_eq(hex, want);
    fsm_close(g);
    /* ... and removing everything brings it back to zero. */
    struct fsm_cmd rm = cmd_rm("org");
    rm.recursive = true;
    apply1(F, rm, T0 + 5);
    fsm_catalog_digest(F, hex);
    ck_assert_str_eq(hex, zero);
}
END_TEST

START_TEST(snapshot_of_empty)
{
    struct fsm *g;
    ck_assert_int_eq(fsm_init(&g), 0);
    populate(g);
    announce(g, 1, "10.0.0.1:7001", T0 + 300);
    /* Restoring an empty state over a full one empties it. */
    ck_assert_int_eq(snapshot_restore(g, snapshot_take(F)), 0);
    assert_same_state(F, g);
    ck_assert_uint_eq(fsm_quota_count(g), 0);
    ck_assert_ptr_null(fsm_node_addr(g, 1));
    fsm_close(g);
}
END_TEST

/* Hand-built snapshots, valid (SN_OK) or broken one way each. */
enum {
    SN_OK,
    SN_FORMAT2,
    SN_VERSION_STR,
    SN_NO_SESSIONS,
    SN_QUOTAS_NOT_ARRAY,
    SN_DUP_PATH,
    SN_BAD_PATH,
    SN_NO_KIND,
    SN_SESSION_CLIENT0,
    SN_SESSION_DUP,
    SN_SESSION_SHORT,
    SN_RESULT_POS_CODE,
    SN_RESULT_LOW_CODE,
    SN_RESULT_BAD_FIELDS,
    SN_RESULT_MSG_INT,
    SN_TOO_MANY_RESULTS,
    SN_NODES_TOO_MANY,
    SN_NODE_NOT_ARRAY,
    SN_NODE_ADDR_INT,
    SN_ORPHAN,            /* a quota whose parent is not in the snapshot */
    SN_NO_CAPACITY,       /* no "capacity" key */
    SN_CAPACITY_STR,      /* capacity [str, nil] */
    SN_CAPACITY_SHORT,    /* capacity [n] */
    SN_NO_AUDIT,          /* no "audit" key */
    SN_AUDIT_TOO_MANY,    /* more records than its own max_records */
    SN_AUDIT_LIMIT,       /* max_records beyond the limit */
    SN_AUDIT_NO_OP,       /* a record without its op */
    SN_AUDIT_NOT_ARRAY,   /* records a map */
    SN_AUDIT_VERSION_STR, /* a record's version a string */
    SN_RESULT_SHORT,      /* a result without removed and owners */
    SN_COUNT
};

/* Every capacity field, as quota_pack() writes them: 4 entries. */
static void sn_capacity_fields(msgpack_packer *pk)
{
    const char *groups[] = {"guaranteed", "max"};
    for (int i = 0; i < 2; i++) {
        wire_pack_str(pk, groups[i]);
        msgpack_pack_map(pk, 2);
        wire_pack_kv_u64(pk, "memory_mb", 512);
        wire_pack_kv_u64(pk, "vcores", 1);
    }
    wire_pack_kv_u64(pk, "max_apps", 4);
    wire_pack_kv_str(pk, "on_exceed", "reject");
}

static void sn_quota(msgpack_packer *pk, const char *path, bool kind)
{
    msgpack_pack_map(pk, kind ? 10 : 9);
    wire_pack_kv_str(pk, "path", path);
    wire_pack_kv_u64(pk, "version", 2);
    wire_pack_kv_u64(pk, "created_ms", T0);
    wire_pack_kv_u64(pk, "updated_ms", T0);
    if (kind) {
        wire_pack_kv_str(pk, "kind", "capacity");
    }
    sn_capacity_fields(pk);
    wire_pack_str(pk, "owners");
    msgpack_pack_array(pk, 0);
}

/* [seq, code, message|nil, version, created_ms, updated_ms, fields,
 * removed, owners, labels] */
static void sn_result(msgpack_packer *pk, int mode, uint64_t seq)
{
    msgpack_pack_array(pk, mode == SN_RESULT_SHORT ? 7 : 10);
    msgpack_pack_uint64(pk, seq);
    msgpack_pack_int64(pk, mode == SN_RESULT_POS_CODE   ? 5
                           : mode == SN_RESULT_LOW_CODE ? -99
                                                        : 0);
    if (mode == SN_RESULT_MSG_INT) {
        msgpack_pack_uint64(pk, 1);
    } else {
        msgpack_pack_nil(pk);
    }
    msgpack_pack_uint64(pk, 2);
    msgpack_pack_uint64(pk, T0);
    msgpack_pack_uint64(pk, T0);
    if (mode == SN_RESULT_BAD_FIELDS) {
        msgpack_pack_map(pk, 1);
        wire_pack_kv_u64(pk, "colour", 1);
    } else {
        msgpack_pack_map(pk, 5);
        wire_pack_kv_str(pk, "kind", "capacity");
        sn_capacity_fields(pk);
    }
    if (mode != SN_RESULT_SHORT) {
        msgpack_pack_uint64(pk, 0);
        msgpack_pack_array(pk, 0);
        msgpack_pack_array(pk, 0);
    }
}

static void sn_session(msgpack_packer *pk, int mode, uint64_t client)
{
    if (mode == SN_SESSION_SHORT) {
        msgpack_pack_array(pk, 3);
    } else {
        msgpack_pack_array(pk, 4);
    }
    msgpack_pack_uint64(pk, client);
    msgpack_pack_uint64(pk, 0);
    msgpack_pack_uint64(pk, T0);
    if (mode == SN_SESSION_SHORT) {
        return;
    }
    uint32_t n = mode == SN_TOO_MANY_RESULTS ? FSM_SESSION_RESULTS_MAX + 1 : 1;
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        sn_result(pk, mode, i + 1);
    }
}

/* The keys these hand-built snapshots spell out. Every other key (the
 * principals, groups and whatever else the state machine keeps besides the
 * catalog) is copied from the snapshot of an empty state machine, so the
 * snapshots stay valid as that state grows. */
static const char *const sn_keys[] = {"format",   "version",  "now_ms",
                                      "capacity", "audit",    "quotas",
                                      "nodes",    "sessions", NULL};

static bool sn_key_handled(const msgpack_object *k)
{
    for (int i = 0; sn_keys[i] != NULL; i++) {
        if (wire_str_eq(k, sn_keys[i])) {
            return true;
        }
    }
    return false;
}

/* The other keys of an empty state machine's snapshot: how many (pk NULL),
 * or packed into pk. *format (if not NULL) is the snapshot's format. */
static uint32_t sn_extra_format(msgpack_packer *pk, uint64_t *format)
{
    struct fsm *e;
    ck_assert_int_eq(fsm_init(&e), 0);
    struct raft_buffer snap = snapshot_take(e);
    fsm_close(e);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(snap.base, snap.len, &u, NULL), 0);
    ck_assert_int_eq(u.data.type, MSGPACK_OBJECT_MAP);
    uint32_t n = 0;
    if (format != NULL) {
        ck_assert_int_eq(wire_get_u64(&u.data, "format", true, format, NULL),
                         0);
    }
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
        if (sn_key_handled(&kv->key)) {
            continue;
        }
        if (pk != NULL) {
            msgpack_pack_object(pk, kv->key);
            msgpack_pack_object(pk, kv->val);
        }
        n++;
    }
    msgpack_unpacked_destroy(&u);
    raft_free(snap.base);
    return n;
}

static uint32_t sn_extra(msgpack_packer *pk)
{
    return sn_extra_format(pk, NULL);
}

/* The snapshot format this state machine writes. */
static uint64_t sn_format(void)
{
    uint64_t format;
    sn_extra_format(NULL, &format);
    return format;
}

/* The audit trail of the hand-built snapshot: one record, at most 5 kept. */
static void sn_audit(msgpack_packer *pk, int mode)
{
    msgpack_pack_map(pk, 3);
    wire_pack_kv_u64(pk, "max_records", mode == SN_AUDIT_LIMIT ? 10000001 : 5);
    wire_pack_kv_u64(pk, "max_age_ms", 3600000);
    wire_pack_str(pk, "records");
    if (mode == SN_AUDIT_NOT_ARRAY) {
        msgpack_pack_map(pk, 0);
        return;
    }
    uint32_t n = mode == SN_AUDIT_TOO_MANY ? 6 : 1;
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        msgpack_pack_map(pk, mode == SN_AUDIT_NO_OP ? 8 : 9);
        if (mode == SN_AUDIT_VERSION_STR) {
            wire_pack_kv_str(pk, "version", "2");
        } else {
            wire_pack_kv_u64(pk, "version", 2 + i);
        }
        wire_pack_kv_u64(pk, "time_ms", T0);
        wire_pack_kv_str(pk, "principal", "alice");
        if (mode != SN_AUDIT_NO_OP) {
            wire_pack_kv_str(pk, "op", "quota.set");
        }
        wire_pack_kv_str(pk, "path", "snap/q");
        wire_pack_str(pk, "old");
        msgpack_pack_nil(pk);
        wire_pack_str(pk, "new");
        msgpack_pack_map(pk, 1);
        wire_pack_kv_u64(pk, "max_apps", 4);
        wire_pack_kv_u64(pk, "client", 42);
        wire_pack_kv_u64(pk, "seq", 1);
    }
}

static void sn_build(msgpack_sbuffer *sb, int mode)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    uint32_t keys = 8 + sn_extra(NULL);
    keys -= mode == SN_NO_SESSIONS;
    keys -= mode == SN_NO_CAPACITY;
    keys -= mode == SN_NO_AUDIT;
    msgpack_pack_map(&pk, keys);
    sn_extra(&pk);
    wire_pack_kv_u64(&pk, "format",
                     mode == SN_FORMAT2 ? sn_format() + 1 : sn_format());
    if (mode == SN_VERSION_STR) {
        wire_pack_kv_str(&pk, "version", "2");
    } else {
        wire_pack_kv_u64(&pk, "version", 2);
    }
    wire_pack_kv_u64(&pk, "now_ms", T0 + 5);
    if (mode != SN_NO_CAPACITY) {
        /* [memory_mb|nil, vcores|nil] */
        wire_pack_str(&pk, "capacity");
        msgpack_pack_array(&pk, mode == SN_CAPACITY_SHORT ? 1 : 2);
        if (mode == SN_CAPACITY_STR) {
            wire_pack_str(&pk, "4096");
        } else {
            msgpack_pack_uint64(&pk, 4096);
        }
        if (mode != SN_CAPACITY_SHORT) {
            msgpack_pack_nil(&pk);
        }
    }
    if (mode != SN_NO_AUDIT) {
        wire_pack_str(&pk, "audit");
        sn_audit(&pk, mode);
    }
    wire_pack_str(&pk, "quotas");
    if (mode == SN_QUOTAS_NOT_ARRAY) {
        msgpack_pack_map(&pk, 0);
    } else {
        /* The parent "snap" first (a parent must exist), then "snap/q". */
        bool parent = mode != SN_ORPHAN;
        bool two = mode == SN_DUP_PATH;
        msgpack_pack_array(&pk, (parent ? 1u : 0u) + (two ? 2u : 1u));
        if (parent) {
            sn_quota(&pk, "snap", true);
        }
        sn_quota(&pk, mode == SN_BAD_PATH ? "a//b" : "snap/q",
                 mode != SN_NO_KIND);
        if (two) {
            sn_quota(&pk, "snap/q", true);
        }
    }
    /* Nodes before sessions: the reader goes by key, and an address that
     * ends the buffer has its own test (snapshot_restore_node_addresses). */
    wire_pack_str(&pk, "nodes");
    uint32_t n_nodes = mode == SN_NODES_TOO_MANY ? FSM_NODES_MAX + 1 : 1;
    msgpack_pack_array(&pk, n_nodes);
    for (uint32_t i = 0; i < n_nodes; i++) {
        if (mode == SN_NODE_NOT_ARRAY) {
            wire_pack_str(&pk, "7=a:1");
            continue;
        }
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint64(&pk, 7 + i);
        if (mode == SN_NODE_ADDR_INT) {
            msgpack_pack_uint64(&pk, 1);
        } else {
            wire_pack_str(&pk, "10.9.9.9:7001");
        }
    }
    if (mode != SN_NO_SESSIONS) {
        wire_pack_str(&pk, "sessions");
        bool two = mode == SN_SESSION_DUP;
        msgpack_pack_array(&pk, two ? 2 : 1);
        sn_session(&pk, mode, mode == SN_SESSION_CLIENT0 ? 0 : 42);
        if (two) {
            sn_session(&pk, mode, 42);
        }
    }
}

static struct raft_buffer raft_copy(const void *data, size_t len)
{
    struct raft_buffer b = {raft_malloc(len > 0 ? len : 1), len};
    ck_assert_ptr_nonnull(b.base);
    if (len > 0) {
        memcpy(b.base, data, len);
    }
    return b;
}

START_TEST(restore_hand_built)
{
    /* The valid one restores, and means what it says. */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    sn_build(&sb, SN_OK);
    ck_assert_int_eq(snapshot_restore(F, raft_copy(sb.data, sb.size)), 0);
    msgpack_sbuffer_destroy(&sb);
    ck_assert_uint_eq(fsm_catalog_version(F), 2);
    ck_assert_uint_eq(fsm_get(F, "snap/q", 6)->f.max_apps, 4);
    ck_assert_str_eq(fsm_node_addr(F, 7), "10.9.9.9:7001");
    ck_assert_uint_eq(fsm_session_count(F), 1);
    const struct fsm_result *r =
        apply1(F, sess(cmd_set("snap/q", "max_apps=9"), 42, 1, 0), T0 + 6);
    ck_assert(r->duplicate);
    ck_assert_uint_eq(r->version, 2);
    ck_assert_uint_eq(r->fields.max_apps, 4);
    ck_assert_uint_eq(fsm_get(F, "snap/q", 6)->f.max_apps, 4);

    /* The declared capacity came back, and the aggregates were rebuilt:
     * "snap" guarantees 512 MB of 4096, and its child all of its 512. */
    struct fsm_capacity cap = fsm_capacity(F);
    ck_assert(cap.has_memory_mb && !cap.has_vcores);
    ck_assert_uint_eq(cap.memory_mb, 4096);
    uint64_t mem, vc;
    fsm_top_guaranteed(F, &mem, &vc);
    ck_assert_uint_eq(mem, 512);
    ck_assert_uint_eq(vc, 1);
    r = apply1(F, cmd_set("snap/q", "guaranteed.memory_mb=513 max.memory_mb=0"),
               T0 + 7);
    ck_assert_int_eq(r->code, ALLOT_EVALIDATION_FAILED);
    assert_has(r->message,
               "children guaranteed.memory_mb 513 > parent snap 512");
    r = apply1(F, cmd_set("big", "guaranteed.memory_mb=3585"), T0 + 8);
    ck_assert_int_eq(r->code, ALLOT_EVALIDATION_FAILED);
    assert_has(r->message, "4097 > cluster capacity 4096");
    ck_assert_uint_eq(fsm_catalog_version(F), 2);

    /* And the audit trail with its bounds. */
    msgpack_sbuffer out;
    msgpack_packer pk;
    msgpack_sbuffer_init(&out);
    msgpack_packer_init(&pk, &out, msgpack_sbuffer_write);
    struct fsm_audit_query q = {.limit = 1000};
    fsm_audit_pack(F, &q, &pk);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(out.data, out.size, &u, NULL), 0);
    uint64_t v;
    ck_assert_int_eq(wire_get_u64(&u.data, "max_records", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 5);
    ck_assert_int_eq(wire_get_u64(&u.data, "max_age_ms", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 3600000);
    const msgpack_object *recs = wire_map_get(&u.data, "records");
    ck_assert_ptr_nonnull(recs);
    ck_assert_uint_eq(recs->via.array.size, 1);
    const msgpack_object *rec = &recs->via.array.ptr[0];
    ck_assert(wire_str_eq(wire_map_get(rec, "principal"), "alice"));
    ck_assert(wire_str_eq(wire_map_get(rec, "path"), "snap/q"));
    ck_assert_int_eq(wire_get_u64(rec, "seq", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 1);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&out);
}
END_TEST

/* Every broken snapshot, and garbage, is refused and changes nothing. */
START_TEST(restore_garbage_keeps_state)
{
    populate(F);
    char d0[65];
    digest(F, d0);
    struct raft_buffer good = snapshot_take(F);
    msgpack_sbuffer audit0;
    audit_bytes(F, &audit0);

    for (int mode = SN_OK + 1; mode < SN_COUNT + 6; mode++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        if (mode < SN_COUNT) {
            sn_build(&sb, mode);
        } else if (mode == SN_COUNT) {
            /* A real snapshot cut short. */
            msgpack_sbuffer_write(&sb, good.base, good.len - 1);
        } else if (mode == SN_COUNT + 1) {
            /* A real snapshot with a byte after it. */
            msgpack_sbuffer_write(&sb, good.base, good.len);
            msgpack_sbuffer_write(&sb, "\0", 1);
        } else if (mode == SN_COUNT + 2) {
            uint32_t x = 7;
            for (int i = 0; i < 300; i++) {
                x = x * 1103515245u + 12345u;
                char c = (char)(x >> 16);
                msgpack_sbuffer_write(&sb, &c, 1);
            }
        } else if (mode == SN_COUNT + 3) {
            msgpack_sbuffer_write(&sb, "\xdf\xff\xff\xff\xff", 5);
        } else if (mode == SN_COUNT + 4) {
            /* A log entry is not a snapshot. */
            struct fsm_cmd c = cmd_rm("a");
            struct raft_buffer e;
            ck_assert_int_eq(fsm_batch_encode(&c, 1, T0, &e), 0);
            size_t used;
            ck_assert_int_eq(wire_check_prefix(e.base, e.len, &used, NULL), 0);
            msgpack_sbuffer_write(&sb, e.base, used);
            raft_free(e.base);
        } else {
            /* Empty. */
        }
        int rv = snapshot_restore(F, raft_copy(sb.data, sb.size));
        ck_assert_msg(rv != 0, "broken snapshot %d restored", mode);
        msgpack_sbuffer_destroy(&sb);

        char d1[65];
        digest(F, d1);
        ck_assert_str_eq(d0, d1);
        ck_assert_uint_eq(fsm_session_count(F), 2);
        ck_assert_ptr_null(fsm_node_addr(F, 7));
        ck_assert(!fsm_capacity(F).has_memory_mb);
        msgpack_sbuffer audit1;
        audit_bytes(F, &audit1);
        ck_assert_uint_eq(audit1.size, audit0.size);
        ck_assert_mem_eq(audit1.data, audit0.data, audit0.size);
        msgpack_sbuffer_destroy(&audit1);
    }
    msgpack_sbuffer_destroy(&audit0);
    /* Sessions survived too. */
    const struct fsm_result *r =
        apply1(F, sess(cmd_set("x", "max_apps=1"), 10, 1, 0), T0 + 200);
    ck_assert(r->duplicate);
    ck_assert_int_eq(r->code, ALLOT_ENOT_FOUND);
    /* And the good snapshot still restores afterwards. */
    ck_assert_int_eq(snapshot_restore(F, good), 0);
    char d1[65];
    digest(F, d1);
    ck_assert_str_eq(d0, d1);
}
END_TEST

/* A snapshot with one rate quota "tenant": complete, or leaving out every
 * field but its rate (fleet, burst, ...). */
static void sn_tenant(msgpack_sbuffer *sb, bool complete)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 8 + sn_extra(NULL));
    sn_extra(&pk);
    wire_pack_kv_u64(&pk, "format", sn_format());
    wire_pack_kv_u64(&pk, "version", 1);
    wire_pack_kv_u64(&pk, "now_ms", T0);
    wire_pack_str(&pk, "capacity");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_nil(&pk);
    msgpack_pack_nil(&pk);
    wire_pack_str(&pk, "audit");
    msgpack_pack_map(&pk, 3);
    wire_pack_kv_u64(&pk, "max_records", 20000);
    wire_pack_kv_u64(&pk, "max_age_ms", 604800000);
    wire_pack_str(&pk, "records");
    msgpack_pack_array(&pk, 0);
    wire_pack_str(&pk, "quotas");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, complete ? 14 : 7);
    wire_pack_kv_str(&pk, "path", "tenant");
    wire_pack_kv_u64(&pk, "version", 1);
    wire_pack_kv_u64(&pk, "created_ms", T0);
    wire_pack_kv_u64(&pk, "updated_ms", T0);
    wire_pack_kv_str(&pk, "kind", "rate");
    wire_pack_kv_u64(&pk, "rate", 5);
    if (complete) {
        wire_pack_kv_u64(&pk, "burst", 5);
        wire_pack_kv_str(&pk, "unit", "requests");
        wire_pack_kv_str(&pk, "fleet", "default");
        wire_pack_kv_str(&pk, "share", "equal");
        wire_pack_str(&pk, "per_key");
        msgpack_pack_false(&pk);
        wire_pack_kv_str(&pk, "on_exceed", "reject");
        wire_pack_kv_u64(&pk, "max_delay_ms", 0);
    }
    wire_pack_str(&pk, "owners");
    msgpack_pack_array(&pk, 0);
    wire_pack_str(&pk, "sessions");
    msgpack_pack_array(&pk, 0);
    wire_pack_str(&pk, "nodes");
    msgpack_pack_array(&pk, 0);
}

/* A snapshot restore accepts must be one this replica can snapshot and a
 * follower restore again: here a rate quota that leaves out its fleet
 * (refusing it is fine), and the same quota complete (accepted). */
START_TEST(restored_snapshot_restores_again)
{
    for (int complete = 0; complete <= 1; complete++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        sn_tenant(&sb, complete);
        int rv = snapshot_restore(F, raft_copy(sb.data, sb.size));
        msgpack_sbuffer_destroy(&sb);
        if (complete) {
            ck_assert_msg(rv == 0, "complete snapshot refused: %d", rv);
            ck_assert_double_eq(fsm_get(F, "tenant", 6)->f.rate, 5);
        } else if (rv != 0) {
            continue; /* refusing it is fine */
        }
        struct fsm *g;
        ck_assert_int_eq(fsm_init(&g), 0);
        rv = snapshot_restore(g, snapshot_take(F));
        ck_assert_msg(rv == 0, "own snapshot refused by a fresh replica: %d",
                      rv);
        assert_same_state(F, g);
        fsm_close(g);
    }
}
END_TEST

/* --- Under raft_fixture --- */

/* Each server's raft_fsm forwards to a real FSM and counts what raft does
 * with it. */
struct wrap
{
    struct raft_fsm raft;
    struct fsm *fsm;
    unsigned n_apply;
    unsigned n_empty; /* entries that yielded no results at all */
    unsigned n_snapshot;
    unsigned n_restore;
};

static int wrap_apply(struct raft_fsm *rf, const struct raft_buffer *buf,
                      void **result)
{
    struct wrap *w = rf->data;
    struct raft_fsm *real = fsm_raft(w->fsm);
    int rv = real->apply(real, buf, result);
    w->n_apply++;
    if (((const struct fsm_batch_result *)*result)->n == 0) {
        w->n_empty++;
    }
    return rv;
}

static int wrap_snapshot(struct raft_fsm *rf, struct raft_buffer *bufs[],
                         unsigned *n)
{
    struct wrap *w = rf->data;
    struct raft_fsm *real = fsm_raft(w->fsm);
    w->n_snapshot++;
    return real->snapshot(real, bufs, n);
}

static int wrap_finalize(struct raft_fsm *rf, struct raft_buffer *bufs[],
                         unsigned *n)
{
    struct wrap *w = rf->data;
    struct raft_fsm *real = fsm_raft(w->fsm);
    return real->snapshot_finalize(real, bufs, n);
}

static int wrap_restore(struct raft_fsm *rf, struct raft_buffer *buf)
{
    struct wrap *w = rf->data;
    struct raft_fsm *real = fsm_raft(w->fsm);
    int rv = real->restore(real, buf);
    if (rv == 0) {
        w->n_restore++;
    }
    return rv;
}

#define N_SERVERS 3

struct cluster
{
    struct raft_fixture fx;
    struct wrap w[N_SERVERS];
    uint64_t clock; /* leader clock carried in entries */
};

static struct cluster C;

static void cluster_start(unsigned threshold, unsigned trailing)
{
    memset(&C, 0, sizeof C);
    C.clock = T0;
    ck_assert_int_eq(raft_fixture_initialize(&C.fx), 0);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        struct wrap *w = &C.w[i];
        ck_assert_int_eq(fsm_init(&w->fsm), 0);
        w->raft.version = 2;
        w->raft.data = w;
        w->raft.apply = wrap_apply;
        w->raft.snapshot = wrap_snapshot;
        w->raft.snapshot_finalize = wrap_finalize;
        w->raft.restore = wrap_restore;
        ck_assert_int_eq(raft_fixture_grow(&C.fx, &w->raft), 0);
        struct raft *r = raft_fixture_get(&C.fx, i);
        /* As allotd runs it: a partitioned server cannot disrupt. */
        raft_set_pre_vote(r, true);
        if (threshold > 0) {
            raft_set_snapshot_threshold(r, threshold);
            raft_set_snapshot_trailing(r, trailing);
        }
    }
    struct raft_configuration conf;
    ck_assert_int_eq(raft_fixture_configuration(&C.fx, N_SERVERS, &conf), 0);
    ck_assert_int_eq(raft_fixture_bootstrap(&C.fx, &conf), 0);
    raft_configuration_close(&conf);
    ck_assert_int_eq(raft_fixture_start(&C.fx), 0);
}

static void cluster_stop(void)
{
    raft_fixture_close(&C.fx);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        ck_assert_uint_eq(C.w[i].n_empty, 0);
        fsm_close(C.w[i].fsm);
    }
}

/* What an apply callback saw on the leader. */
struct applied
{
    struct raft_apply req;
    bool fired;
    int status;
    unsigned n;
    int code[8];
    bool dup[8];
    uint64_t version[8];
};

static void applied_cb(struct raft_apply *req, int status, void *result)
{
    struct applied *a = req->data;
    ck_assert(!a->fired);
    a->fired = true;
    a->status = status;
    if (status != 0) {
        return;
    }
    const struct fsm_batch_result *b = result;
    a->n = b->n;
    for (unsigned i = 0; i < b->n && i < 8; i++) {
        a->code[i] = b->results[i].code;
        a->dup[i] = b->results[i].duplicate;
        a->version[i] = b->results[i].version;
    }
}

/* Submit cmds on server i; returns the entry's index. */
static raft_index submit(unsigned i, const struct fsm_cmd *cmds, unsigned n,
                         struct applied *a)
{
    struct raft_buffer buf;
    ck_assert_int_eq(fsm_batch_encode(cmds, n, C.clock++, &buf), 0);
    memset(a, 0, sizeof *a);
    a->req.data = a;
    struct raft *r = raft_fixture_get(&C.fx, i);
    int rv = raft_apply(r, &a->req, &buf, 1, applied_cb);
    if (rv != 0) {
        raft_free(buf.base);
        ck_abort_msg("raft_apply on server %u: %s", i, raft_strerror(rv));
    }
    return raft_last_index(r);
}

/* Submit on the leader and wait until the servers in mask applied it. */
static void commit(unsigned leader, const struct fsm_cmd *cmds, unsigned n,
                   unsigned mask, struct applied *a)
{
    raft_index idx = submit(leader, cmds, n, a);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        if (mask & (1u << i)) {
            ck_assert_msg(raft_fixture_step_until_applied(&C.fx, i, idx, 10000),
                          "server %u did not apply index %llu", i,
                          (unsigned long long)idx);
        }
    }
    ck_assert(a->fired);
    ck_assert_int_eq(a->status, 0);
    ck_assert_uint_eq(a->n, n);
}

static struct fsm *fsm_of(unsigned i)
{
    return C.w[i].fsm;
}

static void assert_replicas_equal(unsigned mask)
{
    char d0[65] = "", d[65];
    int first = -1;
    for (unsigned i = 0; i < N_SERVERS; i++) {
        if (!(mask & (1u << i))) {
            continue;
        }
        digest(fsm_of(i), d);
        if (first < 0) {
            first = (int)i;
            memcpy(d0, d, sizeof d);
            continue;
        }
        ck_assert_msg(strcmp(d0, d) == 0, "server %u differs from %d", i,
                      first);
        ck_assert_uint_eq(fsm_catalog_version(fsm_of(i)),
                          fsm_catalog_version(fsm_of((unsigned)first)));
        ck_assert_uint_eq(fsm_session_count(fsm_of(i)),
                          fsm_session_count(fsm_of((unsigned)first)));
    }
}

#define ALL ((1u << N_SERVERS) - 1)

START_TEST(fixture_replicates)
{
    cluster_start(0, 0);
    raft_fixture_elect(&C.fx, 0);
    ck_assert_uint_eq(raft_fixture_leader_index(&C.fx), 0);

    struct applied a;
    struct fsm_cmd first[] = {
        cmd_leader(1, "127.0.0.1:9001"),
        cmd_set("org", "max_apps=10"),
        cmd_set("org/api", "rate=100"),
        cmd_rm("missing"),
    };
    commit(0, first, 4, ALL, &a);
    ck_assert_int_eq(a.code[0], 0);
    ck_assert_int_eq(a.code[1], 0);
    ck_assert_uint_eq(a.version[1], 1);
    ck_assert_int_eq(a.code[2], 0);
    ck_assert_uint_eq(a.version[2], 2);
    ck_assert_int_eq(a.code[3], ALLOT_ENOT_FOUND);
    assert_replicas_equal(ALL);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        ck_assert_str_eq(fsm_node_addr(fsm_of(i), 1), "127.0.0.1:9001");
        ck_assert_uint_eq(fsm_catalog_version(fsm_of(i)), 2);
        ck_assert_ptr_nonnull(fsm_get(fsm_of(i), "org/api", 7));
    }

    /* A retried write through raft: answered once, on every replica. */
    struct fsm_cmd w = sess(cmd_set("org", "max_apps=11"), 9, 1, 0);
    commit(0, &w, 1, ALL, &a);
    ck_assert(!a.dup[0]);
    ck_assert_uint_eq(a.version[0], 3);
    commit(0, &w, 1, ALL, &a);
    ck_assert(a.dup[0]);
    ck_assert_uint_eq(a.version[0], 3);
    assert_replicas_equal(ALL);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        ck_assert_uint_eq(fsm_catalog_version(fsm_of(i)), 3);
    }
    cluster_stop();
}
END_TEST

/* A leader among the servers other than *arg, whether or not the fixture
 * considers it stable (it cannot while the old leader is partitioned). */
static bool leader_other_than(struct raft_fixture *fx, void *arg)
{
    unsigned *io = arg;
    for (unsigned i = 0; i < N_SERVERS; i++) {
        if (i != io[0] && raft_fixture_alive(fx, i) &&
            raft_state(raft_fixture_get(fx, i)) == RAFT_LEADER) {
            io[1] = i;
            return true;
        }
    }
    return false;
}

static bool new_leader_in(struct raft_fixture *fx, void *arg)
{
    unsigned old = *(unsigned *)arg;
    unsigned l = raft_fixture_leader_index(fx);
    return l < N_SERVERS && l != old;
}

static bool has_fired(struct raft_fixture *fx, void *arg)
{
    (void)fx;
    return ((struct applied *)arg)->fired;
}

START_TEST(fixture_partition)
{
    cluster_start(0, 0);
    raft_fixture_elect(&C.fx, 0);
    struct applied a, minority;
    struct fsm_cmd w1 = cmd_set("before", "max_apps=1");
    commit(0, &w1, 1, ALL, &a);

    /* Cut the leader off from both followers. */
    raft_fixture_disconnect(&C.fx, 0, 1);
    raft_fixture_disconnect(&C.fx, 1, 0);
    raft_fixture_disconnect(&C.fx, 0, 2);
    raft_fixture_disconnect(&C.fx, 2, 0);
    struct fsm_cmd w2 = cmd_set("minority", "max_apps=1");
    raft_index lost = submit(0, &w2, 1, &minority);

    /* The majority side elects a leader of its own and commits. */
    unsigned io[2] = {0, N_SERVERS};
    ck_assert(raft_fixture_step_until(&C.fx, leader_other_than, io, 20000));
    unsigned leader = io[1];
    ck_assert(leader == 1 || leader == 2);
    struct fsm_cmd w3 = cmd_set("majority", "max_apps=1");
    commit(leader, &w3, 1, (1u << 1) | (1u << 2), &a);
    ck_assert_int_eq(a.code[0], 0);

    /* The old leader never committed its write, and gives up on it. */
    ck_assert(raft_fixture_step_until(&C.fx, has_fired, &minority, 20000));
    ck_assert_int_ne(minority.status, 0);
    ck_assert_uint_lt(raft_last_applied(raft_fixture_get(&C.fx, 0)), lost);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        ck_assert_ptr_null(fsm_get(fsm_of(i), "minority", 8));
    }
    ck_assert_ptr_null(fsm_get(fsm_of(0), "majority", 8));

    /* Heal: the old leader catches up and every replica is equal. */
    raft_fixture_reconnect(&C.fx, 0, 1);
    raft_fixture_reconnect(&C.fx, 1, 0);
    raft_fixture_reconnect(&C.fx, 0, 2);
    raft_fixture_reconnect(&C.fx, 2, 0);
    struct fsm_cmd w4 = cmd_set("after", "max_apps=1");
    ck_assert(raft_fixture_step_until_has_leader(&C.fx, 20000));
    leader = raft_fixture_leader_index(&C.fx);
    ck_assert_uint_lt(leader, N_SERVERS);
    commit(leader, &w4, 1, ALL, &a);
    assert_replicas_equal(ALL);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        ck_assert_ptr_null(fsm_get(fsm_of(i), "minority", 8));
        ck_assert_ptr_nonnull(fsm_get(fsm_of(i), "majority", 8));
        ck_assert_ptr_nonnull(fsm_get(fsm_of(i), "after", 5));
        ck_assert_uint_eq(fsm_catalog_version(fsm_of(i)), 3);
    }
    cluster_stop();
}
END_TEST

START_TEST(fixture_snapshot_catch_up)
{
    cluster_start(8, 2);
    raft_fixture_elect(&C.fx, 0);
    struct applied a;
    struct fsm_cmd w[] = {cmd_set("base", "kind=rate rate=5"),
                          cmd_set("q", "kind=capacity")};
    commit(0, w, 2, ALL, &a);
    ck_assert_int_eq(a.code[0], 0);
    ck_assert_int_eq(a.code[1], 0); /* the parent of q/0..q/59 */

    /* Server 2 goes down while far more entries than the threshold are
     * applied; every write carries a session. */
    raft_fixture_kill(&C.fx, 2);
    static char paths[60][16];
    uint64_t seq = 0;
    uint64_t last_version = 0;
    for (int i = 0; i < 60; i++) {
        snprintf(paths[i], sizeof paths[i], "q/%d", i);
        struct fsm_cmd c;
        if (i % 10 == 9) {
            c = cmd_rm(paths[i - 1]);
        } else {
            c = cmd_set(paths[i], "max_apps=3");
        }
        seq++;
        c = sess(c, 9, seq, seq > 2 ? seq - 2 : 0);
        commit(0, &c, 1, (1u << 0) | (1u << 1), &a);
        ck_assert_int_eq(a.code[0], 0);
        last_version = a.version[0];
    }
    ck_assert_uint_gt(C.w[0].n_snapshot, 0);
    ck_assert_uint_gt(C.w[1].n_snapshot, 0);
    ck_assert_uint_eq(C.w[2].n_restore, 0);
    assert_replicas_equal((1u << 0) | (1u << 1));

    /* Back up: the leader's log no longer reaches back far enough, so the
     * follower gets a snapshot and restores it. */
    raft_fixture_revive(&C.fx, 2);
    raft_index idx = raft_last_index(raft_fixture_get(&C.fx, 0));
    ck_assert(raft_fixture_step_until_applied(&C.fx, 2, idx, 20000));
    ck_assert_uint_ge(raft_fixture_n_recv(&C.fx, 2, RAFT_IO_INSTALL_SNAPSHOT),
                      1);
    ck_assert_uint_ge(C.w[2].n_restore, 1);
    assert_replicas_equal(ALL);
    ck_assert_ptr_nonnull(fsm_get(fsm_of(2), "q/57", 4));
    ck_assert_ptr_null(fsm_get(fsm_of(2), "q/58", 4));

    /* The restored sessions answer retries exactly like the others: the
     * last write is a duplicate everywhere, an acknowledged one is refused
     * everywhere, and no replica's catalog moves. */
    struct fsm_cmd retry[] = {
        sess(cmd_rm(paths[58]), 9, seq, seq - 2),
        sess(cmd_set("q/0", "max_apps=9"), 9, seq - 1, seq - 2),
        sess(cmd_set("q/0", "max_apps=9"), 9, 1, seq - 2),
    };
    commit(0, retry, 3, ALL, &a);
    ck_assert(a.dup[0]);
    ck_assert_uint_eq(a.version[0], last_version);
    ck_assert(a.dup[1]);
    ck_assert_int_eq(a.code[2], ALLOT_EINVALID);
    assert_replicas_equal(ALL);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        ck_assert_uint_eq(fsm_catalog_version(fsm_of(i)), last_version);
        ck_assert_uint_eq(fsm_get(fsm_of(i), "q/0", 3)->f.max_apps, 3);
    }

    /* Lose the leader: a restored follower can lead and is caught up. */
    raft_fixture_kill(&C.fx, 0);
    unsigned old = 0;
    ck_assert(raft_fixture_step_until(&C.fx, new_leader_in, &old, 20000));
    unsigned leader = raft_fixture_leader_index(&C.fx);
    for (int i = 0; i < 20; i++) {
        struct fsm_cmd c = sess(cmd_set("late", "max_apps=4"), 10,
                                (uint64_t)i + 1, (uint64_t)i);
        commit(leader, &c, 1, (1u << 1) | (1u << 2), &a);
        ck_assert_int_eq(a.code[0], 0);
    }
    assert_replicas_equal((1u << 1) | (1u << 2));
    raft_fixture_revive(&C.fx, 0);
    idx = raft_last_index(raft_fixture_get(&C.fx, leader));
    ck_assert(raft_fixture_step_until_applied(&C.fx, N_SERVERS, idx, 20000));
    assert_replicas_equal(ALL);
    ck_assert_uint_eq(fsm_get(fsm_of(0), "late", 4)->f.max_apps, 4);
    cluster_stop();
}
END_TEST

/* --- Suite --- */

static Suite *fsm_suite(void)
{
    Suite *s = suite_create("fsm");

    TCase *tc = tcase_create("encode");
    tcase_add_test(tc, encode_pads_to_8);
    tcase_add_test(tc, encode_refuses);
    suite_add_tcase(s, tc);

    tc = tcase_create("catalog");
    tcase_add_checked_fixture(tc, fsm_setup, fsm_teardown);
    tcase_add_test(tc, create_update_rm);
    tcase_add_test(tc, batch_results_in_order);
    tcase_add_test(tc, batch_max_commands);
    tcase_add_test(tc, invalid_sets_change_nothing);
    tcase_add_test(tc, if_version_rules);
    tcase_add_test(tc, rm_missing);
    tcase_add_test(tc, clock_never_goes_back);
    tcase_add_test(tc, node_addresses);
    tcase_add_test(tc, leader_addr_ends_entry);
    suite_add_tcase(s, tc);

    tc = tcase_create("sessions");
    tcase_add_checked_fixture(tc, fsm_setup, fsm_teardown);
    tcase_add_test(tc, dedup_retry);
    tcase_add_test(tc, dedup_within_one_entry);
    tcase_add_test(tc, no_client_no_dedup);
    tcase_add_test(tc, ack_prunes_and_refuses);
    tcase_add_test(tc, first_write_carries_ack);
    tcase_add_test(tc, session_expires_after_ttl);
    tcase_add_test(tc, session_survives_clock_jump);
    tcase_add_test(tc, sessions_bounded);
    tcase_add_test(tc, session_results_bounded);
    suite_add_tcase(s, tc);

    tc = tcase_create("corrupt");
    tcase_add_checked_fixture(tc, fsm_setup, fsm_teardown);
    tcase_add_test(tc, corrupt_entries_yield_nothing);
    tcase_add_test(tc, malformed_commands_yield_errors);
    tcase_add_test(tc, empty_strings_in_small_entry);
    suite_add_tcase(s, tc);

    tc = tcase_create("ls");
    tcase_add_checked_fixture(tc, fsm_setup, fsm_teardown);
    tcase_add_test(tc, ls_prefix);
    tcase_add_test(tc, ls_paging);
    tcase_add_test(tc, ls_after_before_prefix);
    suite_add_tcase(s, tc);

    tc = tcase_create("snapshot");
    tcase_add_checked_fixture(tc, fsm_setup, fsm_teardown);
    tcase_add_test(tc, snapshot_restore_round_trip);
    tcase_add_test(tc, catalog_digest_follows_changes);
    tcase_add_test(tc, snapshot_of_empty);
    tcase_add_test(tc, snapshot_restore_node_addresses);
    tcase_add_test(tc, restore_hand_built);
    tcase_add_test(tc, restore_garbage_keeps_state);
    tcase_add_test(tc, restored_snapshot_restores_again);
    suite_add_tcase(s, tc);

    tc = tcase_create("fixture");
    tcase_add_test(tc, fixture_replicates);
    tcase_add_test(tc, fixture_partition);
    tcase_add_test(tc, fixture_snapshot_catch_up);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(fsm_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
