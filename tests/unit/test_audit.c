/* test_audit.c - the audit trail inside the state machine (raft/audit.c),
 * read back the way a node serves audit.ls: fsm_audit_pack().
 *
 *   records     one per accepted change: quota.set (old nil on create),
 *               quota.rm (one per removed quota, in path order, consecutive
 *               versions), capacity.set, audit.config; principal, time from
 *               the entry, client and seq; nothing for refusals, retries,
 *               leader announcements
 *   retention   by count and by age (the entries' clock, never the wall
 *               clock); lowering a bound drops the oldest records but keeps
 *               the record of that change
 *   query       after_version/limit paging with more/next; prefix (like
 *               quota ls), since_ms and principal filters
 *   snapshot    the trail and its bounds survive snapshot -> restore byte
 *               for byte, and expire alike afterwards */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../raft/audit.h"
#include "fsm_util.h"

#define DAY_MS (24ull * 3600 * 1000)

/* The principals these tests act as. */
static const char *const principals[] = {"alice", "bob",  "carol", "dave",
                                         "admin", "root", "ops",   NULL};

static struct fsm *F;
/* The catalog version once the principals are known (0 when making them
 * known takes no change): every version below is relative to it, and every
 * query starts after it. */
static uint64_t B;

static struct fsm *new_fsm(void)
{
    struct fsm *f;
    ck_assert_int_eq(fsm_init(&f), 0);
    fsm_util_principals(f, principals, T0 - 1000);
    return f;
}

static void setup(void)
{
    F = new_fsm();
    B = fsm_catalog_version(F);
}

static void teardown(void)
{
    fsm_close(F);
    F = NULL;
}

static const struct fsm_result *ok_at(struct fsm *f, struct fsm_cmd c,
                                      uint64_t t)
{
    const struct fsm_result *r = apply1(f, c, t);
    ck_assert_msg(r->code == 0, "%.*s refused: %s (%s)", (int)c.path_len,
                  c.path ? c.path : "", allot_error_name(r->code),
                  r->message ? r->message : "");
    return r;
}

/* --- Reading the trail ---------------------------------------------------- */

/* One answer of fsm_audit_pack(), decoded. */
struct page
{
    msgpack_sbuffer sb;
    msgpack_unpacked u;
    const msgpack_object *recs; /* array */
    uint32_t n;
    bool more;
    bool has_next;
    uint64_t next;
    uint64_t max_records;
    uint64_t max_age_ms;
};

/* q->after_version is relative to B (UINT64_MAX stays), and so is next. */
static void page_get(const struct fsm *f, const struct fsm_audit_query *q,
                     struct page *p)
{
    struct fsm_audit_query abs = *q;
    if (abs.after_version != UINT64_MAX) {
        abs.after_version += B;
    }
    audit_bytes(f, &abs, &p->sb);
    msgpack_unpacked_init(&p->u);
    ck_assert_int_eq(wire_unpack(p->sb.data, p->sb.size, &p->u, NULL), 0);
    const msgpack_object *root = &p->u.data;
    ck_assert_int_eq(root->type, MSGPACK_OBJECT_MAP);
    ck_assert_uint_eq(root->via.map.size, 5);
    p->recs = wire_map_get(root, "records");
    ck_assert_ptr_nonnull(p->recs);
    ck_assert_int_eq(p->recs->type, MSGPACK_OBJECT_ARRAY);
    p->n = p->recs->via.array.size;
    const msgpack_object *more = wire_map_get(root, "more");
    ck_assert(more != NULL && more->type == MSGPACK_OBJECT_BOOLEAN);
    p->more = more->via.boolean;
    const msgpack_object *next = wire_map_get(root, "next");
    ck_assert_ptr_nonnull(next);
    p->has_next = next->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
    ck_assert(p->has_next || next->type == MSGPACK_OBJECT_NIL);
    p->next = p->has_next ? next->via.u64 - B : 0;
    /* next is given exactly when there is more. */
    ck_assert_int_eq(p->has_next, p->more);
    ck_assert_int_eq(
        wire_get_u64(root, "max_records", true, &p->max_records, NULL), 0);
    ck_assert_int_eq(
        wire_get_u64(root, "max_age_ms", true, &p->max_age_ms, NULL), 0);
}

static void page_all(const struct fsm *f, struct page *p)
{
    struct fsm_audit_query q = {.limit = 1000};
    page_get(f, &q, p);
}

static void page_free(struct page *p)
{
    msgpack_unpacked_destroy(&p->u);
    msgpack_sbuffer_destroy(&p->sb);
}

static const msgpack_object *rec_at(const struct page *p, uint32_t i)
{
    ck_assert_uint_lt(i, p->n);
    const msgpack_object *r = &p->recs->via.array.ptr[i];
    ck_assert_int_eq(r->type, MSGPACK_OBJECT_MAP);
    ck_assert_uint_eq(r->via.map.size, 9);
    return r;
}

static uint64_t rec_u64(const msgpack_object *r, const char *key)
{
    uint64_t v;
    ck_assert_msg(wire_get_u64(r, key, true, &v, NULL) == 0, "record field %s",
                  key);
    return v;
}

/* A record's version, relative to B. */
static uint64_t rec_version(const msgpack_object *r)
{
    uint64_t v = rec_u64(r, "version");
    ck_assert_uint_gt(v, B);
    return v - B;
}

/* A string field, copied (NUL-terminated) into buf. */
static const char *rec_str(const msgpack_object *r, const char *key, char *buf,
                           size_t size)
{
    const msgpack_object *o = wire_map_get(r, key);
    ck_assert_msg(o != NULL && o->type == MSGPACK_OBJECT_STR, "record field %s",
                  key);
    ck_assert_uint_lt(o->via.str.size, size);
    memcpy(buf, o->via.str.ptr, o->via.str.size);
    buf[o->via.str.size] = '\0';
    return buf;
}

#define REC_STR(r, key) rec_str((r), (key), (char[600]){0}, 600)

static const msgpack_object *rec_value(const msgpack_object *r, const char *key)
{
    const msgpack_object *o = wire_map_get(r, key);
    ck_assert_msg(o != NULL, "record without %s", key);
    return o->type == MSGPACK_OBJECT_NIL ? NULL : o;
}

/* The whole record: what, where, who, when and which request (version
 * relative to B). */
static void assert_record(const msgpack_object *r, uint64_t version,
                          uint64_t time_ms, const char *principal,
                          const char *op, const char *path, uint64_t client,
                          uint64_t seq)
{
    ck_assert_uint_eq(rec_version(r), version);
    ck_assert_uint_eq(rec_u64(r, "time_ms"), time_ms);
    ck_assert_str_eq(REC_STR(r, "principal"), principal);
    ck_assert_str_eq(REC_STR(r, "op"), op);
    ck_assert_str_eq(REC_STR(r, "path"), path);
    ck_assert_uint_eq(rec_u64(r, "client"), client);
    ck_assert_uint_eq(rec_u64(r, "seq"), seq);
}

/* A quota value of a record, decoded. */
static void quota_of(const msgpack_object *o, struct quota *q)
{
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_ptr_nonnull(o);
    ck_assert_msg(quota_unpack(o, q, msg) == 0, "%s", msg);
}

/* The versions of a page, relative to B, as "1,2,3". */
static void versions_of(const struct page *p, char *buf, size_t size)
{
    size_t off = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < p->n && off < size; i++) {
        int w = snprintf(buf + off, size - off, "%s%llu", i ? "," : "",
                         (unsigned long long)rec_version(rec_at(p, i)));
        off += w > 0 ? (size_t)w : 0;
    }
}

static void expect_versions(const struct fsm *f,
                            const struct fsm_audit_query *q, const char *want,
                            bool want_more)
{
    struct page p;
    page_get(f, q, &p);
    char got[4096];
    versions_of(&p, got, sizeof got);
    ck_assert_msg(strcmp(got, want) == 0 && p.more == want_more,
                  "prefix \"%.*s\" since %llu principal %s after %llu limit "
                  "%u: got [%s] more=%d, want [%s] more=%d",
                  (int)q->prefix_len, q->prefix ? q->prefix : "",
                  (unsigned long long)q->since_ms,
                  q->principal ? q->principal : "(any)",
                  (unsigned long long)q->after_version, q->limit, got, p.more,
                  want, want_more);
    page_free(&p);
}

/* --- Records -------------------------------------------------------------- */

START_TEST(set_records_old_and_new)
{
    ck_assert_uint_eq(
        ok_at(F,
              sess(by(cmd_set("org", "kind=capacity max_apps=1"), "alice"), 77,
                   3, 1),
              T0)
            ->version,
        B + 1);
    ok_at(F, by(cmd_set("org", "max_apps=2 guaranteed.vcores=4"), "bob"),
          T0 + 10);
    /* A command without a principal (an unsigned request to a cluster run
     * --insecure) records "anonymous". */
    ok_at(F, cmd_set("org/api", "rate=2.5"), T0 + 20);

    struct page p;
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 3);
    ck_assert(!p.more);
    ck_assert_uint_eq(p.max_records, AUDIT_MAX_RECORDS_DEFAULT);
    ck_assert_uint_eq(p.max_age_ms, 7 * DAY_MS);

    /* Create: old nil, new the quota as stored. */
    const msgpack_object *r = rec_at(&p, 0);
    assert_record(r, 1, T0, "alice", "quota.set", "org", 77, 3);
    ck_assert_ptr_null(rec_value(r, "old"));
    struct quota q;
    quota_of(rec_value(r, "new"), &q);
    ck_assert_str_eq(q.path, "org");
    ck_assert_uint_eq(q.version, B + 1);
    ck_assert_uint_eq(q.created_ms, T0);
    ck_assert_uint_eq(q.f.kind, QUOTA_KIND_CAPACITY);
    ck_assert_uint_eq(q.f.max_apps, 1);
    quota_free(&q);

    /* Update: old and new. */
    r = rec_at(&p, 1);
    assert_record(r, 2, T0 + 10, "bob", "quota.set", "org", 0, 0);
    quota_of(rec_value(r, "old"), &q);
    ck_assert_uint_eq(q.version, B + 1);
    ck_assert_uint_eq(q.f.max_apps, 1);
    ck_assert_uint_eq(q.f.guaranteed_vcores, 0);
    ck_assert_uint_eq(q.updated_ms, T0);
    quota_free(&q);
    quota_of(rec_value(r, "new"), &q);
    ck_assert_uint_eq(q.version, B + 2);
    ck_assert_uint_eq(q.f.max_apps, 2);
    ck_assert_uint_eq(q.f.guaranteed_vcores, 4);
    ck_assert_uint_eq(q.created_ms, T0);
    ck_assert_uint_eq(q.updated_ms, T0 + 10);
    quota_free(&q);

    r = rec_at(&p, 2);
    assert_record(r, 3, T0 + 20, "anonymous", "quota.set", "org/api", 0, 0);
    ck_assert_ptr_null(rec_value(r, "old"));
    quota_of(rec_value(r, "new"), &q);
    ck_assert_double_eq(q.f.rate, 2.5);
    ck_assert_uint_eq(q.f.burst, 3);
    quota_free(&q);
    page_free(&p);
}
END_TEST

START_TEST(rm_records_one_per_quota)
{
    const char *const paths[] = {"a",     "a/b", "a/c", "a/b/z",
                                 "a/b-2", "a-x", "ab",  "a/0"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        ok_at(F, cmd_set(paths[i], "max_apps=1"), T0 + i);
    }
    /* A leaf: one record, old the quota, new nil. */
    ok_at(F, by(cmd_rm("ab", false), "carol"), T0 + 100);
    /* A subtree: one record per quota, in path order, versions
     * consecutive, the same request and time on each. */
    const struct fsm_result *res =
        ok_at(F, sess(by(cmd_rm("a", true), "dave"), 42, 7, 7), T0 + 200);
    ck_assert_uint_eq(res->removed, 6);
    ck_assert_uint_eq(res->version, B + 15);

    struct page p;
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 8 + 1 + 6);
    const msgpack_object *r = rec_at(&p, 8);
    assert_record(r, 9, T0 + 100, "carol", "quota.rm", "ab", 0, 0);
    ck_assert_ptr_null(rec_value(r, "new"));
    struct quota q;
    quota_of(rec_value(r, "old"), &q);
    ck_assert_str_eq(q.path, "ab");
    ck_assert_uint_eq(q.version, B + 7);
    quota_free(&q);

    const char *const order[] = {"a", "a/0", "a/b", "a/b-2", "a/b/z", "a/c"};
    for (uint32_t i = 0; i < 6; i++) {
        r = rec_at(&p, 9 + i);
        assert_record(r, 10 + i, T0 + 200, "dave", "quota.rm", order[i], 42, 7);
        ck_assert_ptr_null(rec_value(r, "new"));
        quota_of(rec_value(r, "old"), &q);
        ck_assert_str_eq(q.path, order[i]);
        quota_free(&q);
    }
    page_free(&p);
    /* a-x, untouched, has only its creation record. */
    struct fsm_audit_query qx = {.prefix = "a-x", .prefix_len = 3, .limit = 10};
    expect_versions(F, &qx, "6", false);
}
END_TEST

START_TEST(cluster_records)
{
    ok_at(F, sess(by(cmd_capacity(true, 100, false, 0), "admin"), 5, 1, 1), T0);
    ok_at(F, by(cmd_capacity(false, 0, true, 8), "admin"), T0 + 1);
    ok_at(F, sess(by(cmd_audit_config(true, 50, false, 0), "root"), 5, 2, 2),
          T0 + 2);
    ok_at(F, by(cmd_audit_config(false, 0, true, 3600000), "root"), T0 + 3);

    struct page p;
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 4);
    ck_assert_uint_eq(p.max_records, 50);
    ck_assert_uint_eq(p.max_age_ms, 3600000);
    uint64_t v;

    const msgpack_object *r = rec_at(&p, 0);
    assert_record(r, 1, T0, "admin", "capacity.set", "", 5, 1);
    const msgpack_object *old = rec_value(r, "old");
    const msgpack_object *nv = rec_value(r, "new");
    ck_assert_ptr_nonnull(old);
    ck_assert_ptr_nonnull(nv);
    ck_assert_int_eq(wire_map_get(old, "memory_mb")->type, MSGPACK_OBJECT_NIL);
    ck_assert_int_eq(wire_map_get(old, "vcores")->type, MSGPACK_OBJECT_NIL);
    ck_assert_int_eq(wire_get_u64(nv, "memory_mb", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 100);
    ck_assert_int_eq(wire_map_get(nv, "vcores")->type, MSGPACK_OBJECT_NIL);

    r = rec_at(&p, 1);
    assert_record(r, 2, T0 + 1, "admin", "capacity.set", "", 0, 0);
    ck_assert_int_eq(
        wire_get_u64(rec_value(r, "old"), "memory_mb", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 100);
    ck_assert_int_eq(
        wire_get_u64(rec_value(r, "new"), "memory_mb", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 100);
    ck_assert_int_eq(
        wire_get_u64(rec_value(r, "new"), "vcores", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 8);

    r = rec_at(&p, 2);
    assert_record(r, 3, T0 + 2, "root", "audit.config", "", 5, 2);
    ck_assert_int_eq(
        wire_get_u64(rec_value(r, "old"), "max_records", true, &v, NULL), 0);
    ck_assert_uint_eq(v, AUDIT_MAX_RECORDS_DEFAULT);
    ck_assert_int_eq(
        wire_get_u64(rec_value(r, "old"), "max_age_ms", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 7 * DAY_MS);
    ck_assert_int_eq(
        wire_get_u64(rec_value(r, "new"), "max_records", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 50);
    ck_assert_int_eq(
        wire_get_u64(rec_value(r, "new"), "max_age_ms", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 7 * DAY_MS);

    r = rec_at(&p, 3);
    assert_record(r, 4, T0 + 3, "root", "audit.config", "", 0, 0);
    ck_assert_int_eq(
        wire_get_u64(rec_value(r, "new"), "max_age_ms", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 3600000);
    ck_assert_int_eq(
        wire_get_u64(rec_value(r, "new"), "max_records", true, &v, NULL), 0);
    ck_assert_uint_eq(v, 50);
    page_free(&p);
}
END_TEST

/* Only accepted changes leave a record. */
START_TEST(no_record_without_change)
{
    ok_at(F, sess(cmd_set("p", "guaranteed.vcores=1"), 9, 1, 0), T0);
    struct fsm_mark m;
    mark_take(F, &m);
    struct fsm_cmd cmds[] = {
        cmd_set("p/c", "guaranteed.vcores=2"),      /* validation */
        cmd_set("x/y", "max_apps=1"),               /* no parent */
        cmd_set("p", "rate=1"),                     /* invalid */
        if_version(cmd_set("p", "max_apps=1"), 9),  /* conflict */
        cmd_rm("nope", false),                      /* not found */
        sess(cmd_set("p", "max_apps=5"), 9, 1, 0),  /* a retry */
        cmd_leader(1, "127.0.0.1:7001"),            /* not a change */
        cmd_audit_config(true, 10000001, false, 0), /* beyond the limit */
        cmd_capacity(false, 0, true, 0),            /* below the sum */
    };
    unsigned n = sizeof cmds / sizeof cmds[0];
    const struct fsm_batch_result *b = apply_cmds(F, cmds, n, T0 + 1);
    for (unsigned i = 0; i < n; i++) {
        if (cmds[i].type == FSM_CMD_LEADER) {
            ck_assert_int_eq(b->results[i].code, 0);
        } else if (i == 5) {
            ck_assert(b->results[i].duplicate);
        } else {
            ck_assert_msg(b->results[i].code != 0, "command %u applied", i);
        }
    }
    mark_check(F, &m);
    struct page p;
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 1);
    page_free(&p);
}
END_TEST

/* --- Retention ------------------------------------------------------------ */

START_TEST(retention_by_count)
{
    ok_at(F, cmd_audit_config(true, 100, false, 0), T0);
    char path[16];
    /* 350 changes through a ring of 100: the newest 100, in order. */
    for (unsigned i = 0; i < 350; i++) {
        snprintf(path, sizeof path, "q%u", i % 7);
        ok_at(F, cmd_set(path, "max_apps=1"), T0 + 1 + i);
    }
    struct page p;
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 100);
    for (uint32_t i = 0; i < p.n; i++) {
        ck_assert_uint_eq(rec_version(rec_at(&p, i)), 252 + i);
    }
    page_free(&p);

    /* More room: the ring grows from full and wrapped, order kept. */
    ok_at(F, cmd_audit_config(true, 1000, false, 0), T0 + 400);
    for (unsigned i = 0; i < 200; i++) {
        snprintf(path, sizeof path, "q%u", i % 7);
        ok_at(F, cmd_set(path, "max_apps=2"), T0 + 401 + i);
    }
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 301);
    for (uint32_t i = 0; i < p.n; i++) {
        ck_assert_uint_eq(rec_version(rec_at(&p, i)), 252 + i);
    }
    page_free(&p);

    /* Lowering the bound drops the oldest, never the change itself. */
    const struct fsm_result *r =
        ok_at(F, by(cmd_audit_config(true, 3, false, 0), "ops"), T0 + 700);
    uint64_t v = r->version - B;
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 3);
    ck_assert_uint_eq(p.max_records, 3);
    ck_assert_uint_eq(rec_version(rec_at(&p, 0)), v - 2);
    ck_assert_uint_eq(rec_version(rec_at(&p, 1)), v - 1);
    assert_record(rec_at(&p, 2), v, T0 + 700, "ops", "audit.config", "", 0, 0);
    page_free(&p);
    r = ok_at(F, cmd_audit_config(true, 1, false, 0), T0 + 701);
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 1);
    assert_record(rec_at(&p, 0), r->version - B, T0 + 701, "anonymous",
                  "audit.config", "", 0, 0);
    page_free(&p);
    /* At one record, each change replaces the last. */
    r = ok_at(F, cmd_set("q0", "max_apps=3"), T0 + 702);
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 1);
    assert_record(rec_at(&p, 0), r->version - B, T0 + 702, "anonymous",
                  "quota.set", "q0", 0, 0);
    page_free(&p);
}
END_TEST

/* A recursive removal larger than the bound keeps its newest records. */
START_TEST(retention_by_count_recursive)
{
    ok_at(F, cmd_set("t", "max_apps=0"), T0);
    char path[16];
    for (unsigned i = 0; i < 10; i++) {
        snprintf(path, sizeof path, "t/%u", i);
        ok_at(F, cmd_set(path, "max_apps=0"), T0 + 1);
    }
    ok_at(F, cmd_audit_config(true, 4, false, 0), T0 + 2);
    const struct fsm_result *r = ok_at(F, cmd_rm("t", true), T0 + 3);
    ck_assert_uint_eq(r->removed, 11);
    struct fsm_audit_query q = {.limit = 100};
    expect_versions(F, &q, "20,21,22,23", false);
    struct page p;
    page_all(F, &p);
    ck_assert_str_eq(REC_STR(rec_at(&p, 3), "path"), "t/9");
    ck_assert_str_eq(REC_STR(rec_at(&p, 0), "path"), "t/6");
    page_free(&p);
}
END_TEST

START_TEST(retention_by_age)
{
    /* The entries' clock: T0 is in 1970, so a wall clock would have
     * expired everything. */
    ok_at(F, cmd_audit_config(false, 0, true, 1000), T0);
    ok_at(F, cmd_set("a", "max_apps=1"), T0 + 500);
    ok_at(F, cmd_set("b", "max_apps=1"), T0 + 1000);
    struct fsm_audit_query q = {.limit = 100};
    expect_versions(F, &q, "1,2,3", false);
    /* Exactly max_age old: kept. */
    ok_at(F, cmd_set("c", "max_apps=1"), T0 + 1000);
    expect_versions(F, &q, "1,2,3,4", false);
    /* One millisecond more: the record at T0 goes. */
    ok_at(F, cmd_set("c", "max_apps=2"), T0 + 1001);
    expect_versions(F, &q, "2,3,4,5", false);
    /* A slower leader's clock does not move time back: the records at
     * T0 + 500 are 1001 ms old at the next change. */
    ok_at(F, cmd_set("c", "max_apps=3"), T0 + 100);
    expect_versions(F, &q, "2,3,4,5,6", false);
    ok_at(F, cmd_set("c", "max_apps=4"), T0 + 1501);
    expect_versions(F, &q, "3,4,5,6,7", false);
    struct page p;
    page_all(F, &p);
    /* Records carry the state machine's time, never earlier than before. */
    ck_assert_uint_eq(rec_u64(rec_at(&p, 3), "time_ms"), T0 + 1001);
    page_free(&p);

    /* Lowering the age bound drops the old records at once, and keeps its
     * own. */
    const struct fsm_result *r =
        ok_at(F, cmd_audit_config(false, 0, true, 10), T0 + 100001);
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 1);
    ck_assert_uint_eq(p.max_age_ms, 10);
    assert_record(rec_at(&p, 0), r->version - B, T0 + 100001, "anonymous",
                  "audit.config", "", 0, 0);
    page_free(&p);
    /* And ages out like any other. */
    r = ok_at(F, cmd_set("c", "max_apps=5"), T0 + 100012);
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 1);
    ck_assert_uint_eq(rec_version(rec_at(&p, 0)), r->version - B);
    page_free(&p);

    /* The default is seven days. */
    struct fsm *g = new_fsm();
    ok_at(g, cmd_set("a", "max_apps=1"), T0);
    ok_at(g, cmd_set("a", "max_apps=2"), T0 + 7 * DAY_MS);
    q.limit = 10;
    expect_versions(g, &q, "1,2", false);
    ok_at(g, cmd_set("a", "max_apps=3"), T0 + 7 * DAY_MS + 1);
    expect_versions(g, &q, "2,3", false);
    fsm_close(g);
}
END_TEST

/* --- Queries -------------------------------------------------------------- */

/* 25 records, 100 ms apart from T0: "a" by alice (v1); a-x, ab, b, a/x,
 * a/x/y, a, ... in turn by bob and alice (v2..v21); a capacity change
 * (v22) and an audit change (v23) by carol; alice's recursive removal of
 * a/x (v24, v25, at the same time). */
static void populate(struct fsm *f)
{
    static const char *const paths[] = {"a", "a-x", "ab", "b", "a/x", "a/x/y"};
    static const char *const who[] = {"alice", "bob"};
    uint64_t t = T0;
    ok_at(f, by(cmd_set("a", "max_apps=1"), "alice"), t);
    for (unsigned i = 1; i < 21; i++) {
        t += 100;
        ok_at(f, by(cmd_set(paths[i % 6], "max_apps=1"), who[i % 2]), t);
    }
    t += 100;
    ok_at(f, by(cmd_capacity(true, 10, true, 10), "carol"), t); /* v22 */
    t += 100;
    ok_at(f, by(cmd_audit_config(true, 1000, false, 0), "carol"), t); /* 23 */
    t += 100;
    ok_at(f, by(cmd_rm("a/x", true), "alice"), t); /* v24, v25 */
}

START_TEST(query_paging)
{
    populate(F);
    struct fsm_audit_query q = {.limit = 10};
    expect_versions(F, &q, "1,2,3,4,5,6,7,8,9,10", true);
    struct page p;
    page_get(F, &q, &p);
    ck_assert_uint_eq(p.next, 10);
    page_free(&p);
    q.after_version = 10;
    expect_versions(F, &q, "11,12,13,14,15,16,17,18,19,20", true);
    q.after_version = 20;
    expect_versions(F, &q, "21,22,23,24,25", false);
    /* A page that exactly fits says there is no more. */
    q.after_version = 15;
    expect_versions(F, &q, "16,17,18,19,20,21,22,23,24,25", false);
    q.after_version = 25;
    expect_versions(F, &q, "", false);
    q.after_version = UINT64_MAX;
    expect_versions(F, &q, "", false);
    /* Limits: 0 and anything above 1000 mean 1000. */
    q.after_version = 0;
    q.limit = 0;
    page_get(F, &q, &p);
    ck_assert_uint_eq(p.n, 25);
    page_free(&p);
    q.limit = 5000;
    page_get(F, &q, &p);
    ck_assert_uint_eq(p.n, 25);
    page_free(&p);
    q.limit = 1;
    expect_versions(F, &q, "1", true);

    /* Walking every page of 3 visits each record once, in order. */
    char all[4096] = "";
    uint64_t after = 0;
    unsigned pages = 0;
    for (int guard = 0; guard < 100; guard++) {
        pages++;
        struct fsm_audit_query w = {.after_version = after, .limit = 3};
        page_get(F, &w, &p);
        char part[256];
        versions_of(&p, part, sizeof part);
        if (part[0] != '\0') {
            strcat(all, all[0] ? "," : "");
            strcat(all, part);
        }
        bool more = p.more;
        after = p.next;
        page_free(&p);
        if (!more) {
            break;
        }
    }
    ck_assert_str_eq(all, "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,"
                          "20,21,22,23,24,25");
    ck_assert_uint_eq(pages, 9);
}
END_TEST

START_TEST(query_filters)
{
    populate(F);
    /* Prefix: the quota and what lies under it, like quota ls; a prefix
     * leaves out the cluster-wide records. a/x was set at i = 4, 10, 16
     * (versions 5, 11, 17), a/x/y at 5, 11, 17 (6, 12, 18), a at 0, 6, 12,
     * 18 (1, 7, 13, 19), removed at 24, 25. */
    struct fsm_audit_query q = {.prefix = "a", .prefix_len = 1, .limit = 100};
    expect_versions(F, &q, "1,5,6,7,11,12,13,17,18,19,24,25", false);
    q.prefix = "a/x";
    q.prefix_len = 3;
    expect_versions(F, &q, "5,6,11,12,17,18,24,25", false);
    q.prefix = "a/x/y";
    q.prefix_len = 5;
    expect_versions(F, &q, "6,12,18,25", false);
    q.prefix = "a-x";
    q.prefix_len = 3;
    expect_versions(F, &q, "2,8,14,20", false);
    q.prefix = "ab";
    q.prefix_len = 2;
    expect_versions(F, &q, "3,9,15,21", false);
    q.prefix = "zz";
    q.prefix_len = 2;
    expect_versions(F, &q, "", false);
    /* Prefix length counts, not a terminator. */
    q.prefix = "a/xyz";
    q.prefix_len = 3;
    expect_versions(F, &q, "5,6,11,12,17,18,24,25", false);

    /* Since: time >= since_ms (v1 at T0, then 100 ms apart). */
    struct fsm_audit_query s = {.since_ms = T0 + 2000, .limit = 100};
    expect_versions(F, &s, "21,22,23,24,25", false);
    s.since_ms = T0 + 2001;
    expect_versions(F, &s, "22,23,24,25", false);
    s.since_ms = T0 + 2300; /* the recursive rm: both records */
    expect_versions(F, &s, "24,25", false);
    s.since_ms = T0 + 2301;
    expect_versions(F, &s, "", false);

    /* Principal: exact. */
    struct fsm_audit_query w = {.principal = "carol", .limit = 100};
    expect_versions(F, &w, "22,23", false);
    w.principal = "alice";
    expect_versions(F, &w, "1,3,5,7,9,11,13,15,17,19,21,24,25", false);
    w.principal = "alic";
    expect_versions(F, &w, "", false);
    w.principal = "";
    expect_versions(F, &w, "", false);
    /* Unsigned changes are anonymous: here only those the tests make
     * without a principal. */
    ok_at(F, cmd_set("b", "max_apps=2"), T0 + 3000);
    w.principal = "anonymous";
    expect_versions(F, &w, "26", false);

    /* Combined, and paged: `more` looks only at matching records. */
    struct fsm_audit_query c = {.prefix = "a",
                                .prefix_len = 1,
                                .principal = "bob",
                                .since_ms = T0 + 600,
                                .limit = 2};
    expect_versions(F, &c, "12,18", false);
    c.principal = "alice";
    expect_versions(F, &c, "7,11", true);
    c.after_version = 11;
    expect_versions(F, &c, "13,17", true);
    c.after_version = 17;
    expect_versions(F, &c, "19,24", true);
    c.after_version = 24;
    expect_versions(F, &c, "25", false);
}
END_TEST

/* --- Snapshots ------------------------------------------------------------ */

/* Query answers to compare between replicas, byte for byte. */
static void assert_same_answers(const struct fsm *a, const struct fsm *b)
{
    struct fsm_audit_query qs[] = {
        {.limit = 1000},
        {.limit = 3, .after_version = 4},
        {.prefix = "a", .prefix_len = 1, .limit = 1000},
        {.principal = "alice", .since_ms = T0 + 500, .limit = 2},
    };
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        msgpack_sbuffer x, y;
        audit_bytes(a, &qs[i], &x);
        audit_bytes(b, &qs[i], &y);
        ck_assert_msg(x.size == y.size && memcmp(x.data, y.data, x.size) == 0,
                      "query %zu answers differ", i);
        msgpack_sbuffer_destroy(&x);
        msgpack_sbuffer_destroy(&y);
    }
}

START_TEST(snapshot_keeps_trail)
{
    populate(F);
    ok_at(F, cmd_audit_config(true, 20, true, 2000), T0 + 2500);
    struct page p;
    page_all(F, &p);
    ck_assert_uint_eq(p.n, 20);
    page_free(&p);

    struct fsm *g = fsm_clone(F);
    assert_same_answers(F, g);
    assert_same_state(F, g);
    /* The restored trail snapshots to the same bytes. */
    struct raft_buffer s1 = snapshot_take(F);
    struct raft_buffer s2 = snapshot_take(g);
    ck_assert_uint_eq(s1.len, s2.len);
    ck_assert_mem_eq(s1.base, s2.base, s1.len);
    raft_free(s1.base);
    raft_free(s2.base);

    /* And expires alike afterwards: by count, then by age. */
    struct fsm *both[2] = {F, g};
    for (int k = 0; k < 2; k++) {
        ok_at(both[k], by(cmd_set("b", "max_apps=9"), "alice"), T0 + 2600);
        ok_at(both[k], cmd_set("ab", "max_apps=9"), T0 + 2700);
    }
    assert_same_answers(F, g);
    page_all(g, &p);
    ck_assert_uint_eq(p.n, 20);
    page_free(&p);
    for (int k = 0; k < 2; k++) {
        ok_at(both[k], cmd_set("b", "max_apps=8"), T0 + 4600);
    }
    assert_same_answers(F, g);
    assert_same_state(F, g);
    page_all(g, &p);
    /* Records older than T0 + 2600 are gone. */
    ck_assert_uint_eq(p.n, 3);
    ck_assert_uint_eq(rec_u64(rec_at(&p, 0), "time_ms"), T0 + 2600);
    page_free(&p);
    fsm_close(g);
}
END_TEST

/* A replica restored from a snapshot taken before any change keeps the
 * default bounds; changed bounds survive a snapshot. */
START_TEST(snapshot_bounds_only)
{
    struct fsm *g = fsm_clone(F);
    struct page p;
    page_all(g, &p);
    ck_assert_uint_eq(p.n, 0);
    ck_assert_uint_eq(p.max_records, AUDIT_MAX_RECORDS_DEFAULT);
    ck_assert_uint_eq(p.max_age_ms, 7 * DAY_MS);
    page_free(&p);
    fsm_close(g);

    ok_at(F, cmd_audit_config(true, 7, true, 5), T0);
    g = fsm_clone(F);
    assert_same_answers(F, g);
    page_all(g, &p);
    ck_assert_uint_eq(p.max_records, 7);
    ck_assert_uint_eq(p.max_age_ms, 5);
    ck_assert_uint_eq(p.n, 1);
    page_free(&p);
    fsm_close(g);
}
END_TEST

static Suite *audit_suite(void)
{
    Suite *s = suite_create("audit");
    TCase *tc = tcase_create("records");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, set_records_old_and_new);
    tcase_add_test(tc, rm_records_one_per_quota);
    tcase_add_test(tc, cluster_records);
    tcase_add_test(tc, no_record_without_change);
    suite_add_tcase(s, tc);

    tc = tcase_create("retention");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, retention_by_count);
    tcase_add_test(tc, retention_by_count_recursive);
    tcase_add_test(tc, retention_by_age);
    suite_add_tcase(s, tc);

    tc = tcase_create("query");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, query_paging);
    tcase_add_test(tc, query_filters);
    suite_add_tcase(s, tc);

    tc = tcase_create("snapshot");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, snapshot_keeps_trail);
    tcase_add_test(tc, snapshot_bounds_only);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(audit_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
