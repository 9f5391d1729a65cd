/* test_catalog.c - the quota hierarchy and the built-in validation rules
 * (raft/catalog.c), driven through the state machine as raft drives it:
 * encoded entries handed to apply, snapshots handed to restore.
 *
 *   parent       a parent must exist before its child
 *   capacity     guaranteed <= max; the children's guaranteed sums <= the
 *                parent's; a child's max/max_apps <= the parent's (0: no
 *                maximum); a parent's max may not shrink below a child's;
 *                the top level's sums <= the declared cluster capacity
 *   rate         the children's rates of one unit summed <= the parent's
 *   kinds        rules hold only between a parent and children of its kind
 *   rm           a quota with children goes only recursively, one version
 *                per removed quota; the aggregates follow
 *   overflow     sums near UINT64_MAX are refused, never wrapped
 *   determinism  a replica restored from a snapshot midway reaches the same
 *                verdicts and the same state as one that never restored
 *
 * Every refusal is checked for its code, for a message naming the rule's
 * numbers and paths, and for changing nothing (digest, version, audit). */
#include <check.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../raft/catalog.h"
#include "fsm_util.h"

#define U64MAX_S "18446744073709551615"

static struct fsm *F;
static uint64_t now_ms;

static void setup(void)
{
    ck_assert_int_eq(fsm_init(&F), 0);
    now_ms = T0;
}

static void teardown(void)
{
    fsm_close(F);
    F = NULL;
}

/* Apply one command at the next millisecond. */
static const struct fsm_result *run(struct fsm_cmd c)
{
    return apply1(F, c, now_ms++);
}

/* Apply c and assert it succeeded; returns its result. */
static const struct fsm_result *ok_cmd(struct fsm_cmd c)
{
    const struct fsm_result *r = run(c);
    ck_assert_msg(r->code == 0, "%.*s refused: %s (%s)", (int)c.path_len,
                  c.path ? c.path : "", allot_error_name(r->code),
                  r->message ? r->message : "");
    return r;
}

static const struct fsm_result *ok_set(const char *path, const char *kvs)
{
    return ok_cmd(cmd_set(path, kvs));
}

/* Apply c, assert it was refused with code and a message holding each of
 * the NULL-terminated substrings, and that nothing changed. */
static void refused_cmd(struct fsm_cmd c, int code, ...)
{
    struct fsm_mark m;
    mark_take(F, &m);
    const struct fsm_result *r = run(c);
    ck_assert_msg(r->code == code, "%.*s: got %s (%s), want %s",
                  (int)c.path_len, c.path ? c.path : "",
                  allot_error_name(r->code), r->message ? r->message : "",
                  allot_error_name(code));
    ck_assert_uint_eq(r->version, 0);
    va_list ap;
    va_start(ap, code);
    for (const char *s = va_arg(ap, const char *); s != NULL;
         s = va_arg(ap, const char *)) {
        assert_has(r->message, s);
    }
    va_end(ap);
    mark_check(F, &m);
}

#define REFUSED(c, code, ...) refused_cmd((c), (code), __VA_ARGS__, NULL)
#define INVALID_SET(path, kvs, ...)                                            \
    refused_cmd(cmd_set((path), (kvs)), ALLOT_EVALIDATION_FAILED, __VA_ARGS__, \
                NULL)

/* --- Parent must exist ----------------------------------------------------
 */

/* The catalog digest's terms on known (path, version) pairs: the same
 * values tests/unit/test_enforce.c (digest_vectors) checks on the hosts'
 * side, computed apart (Python's hashlib BLAKE2b-128). */
START_TEST(digest_vectors)
{
    static const struct
    {
        const char *path;
        uint64_t version;
    } v[] = {{"org", 1}, {"org/a", 2}, {"org/b/c", 1234567890123ull}};
    struct catalog c;
    catalog_init(&c);
    char hex[33];
    catalog_digest_toggle(&c, v[0].path, strlen(v[0].path), v[0].version);
    sodium_bin2hex(hex, sizeof hex, c.digest, sizeof c.digest);
    ck_assert_str_eq(hex, "cf4e7531190d4479a96ee3395dde1d4f");
    for (unsigned i = 1; i < 3; i++) {
        catalog_digest_toggle(&c, v[i].path, strlen(v[i].path), v[i].version);
    }
    sodium_bin2hex(hex, sizeof hex, c.digest, sizeof c.digest);
    ck_assert_str_eq(hex, "7dd8265eedd37176e32ca2e9e59f49c3");
    /* Toggling a term again removes it. */
    catalog_digest_toggle(&c, v[0].path, strlen(v[0].path), v[0].version);
    catalog_digest_toggle(&c, v[2].path, strlen(v[2].path), v[2].version);
    sodium_bin2hex(hex, sizeof hex, c.digest, sizeof c.digest);
    ck_assert_str_eq(hex, "33d3108a3d58ceda3df2a53581f44ab8");
    catalog_free(&c);
}
END_TEST

START_TEST(parent_must_exist)
{
    REFUSED(cmd_set("org/ads", "max_apps=1"), ALLOT_ENOT_FOUND,
            "parent org does not exist; create it first");
    ok_set("org", "kind=capacity");
    REFUSED(cmd_set("org/ads/x", "max_apps=1"), ALLOT_ENOT_FOUND,
            "parent org/ads does not exist");
    /* A rate quota too, and a deep one. */
    REFUSED(cmd_set("org/a/b/c/d", "rate=5"), ALLOT_ENOT_FOUND,
            "parent org/a/b/c does not exist");
    ok_set("org/ads", "max_apps=1");
    const struct fsm_result *r = ok_set("org/ads/x", "max_apps=1");
    ck_assert_uint_eq(r->version, 3);
    ck_assert_uint_eq(fsm_quota_count(F), 3);

    /* In one entry: the parent first works, the child first does not. */
    struct fsm_cmd good[] = {cmd_set("t", "rate=10"), cmd_set("t/u", "rate=1")};
    const struct fsm_batch_result *b = apply_cmds(F, good, 2, now_ms++);
    ck_assert_int_eq(b->results[0].code, 0);
    ck_assert_int_eq(b->results[1].code, 0);
    struct fsm_cmd bad[] = {cmd_set("s/u", "rate=1"), cmd_set("s", "rate=10")};
    b = apply_cmds(F, bad, 2, now_ms++);
    ck_assert_int_eq(b->results[0].code, ALLOT_ENOT_FOUND);
    assert_has(b->results[0].message, "parent s does not exist");
    ck_assert_int_eq(b->results[1].code, 0);
    ck_assert_ptr_null(fsm_get(F, "s/u", 3));

    /* A sibling that shares the characters is not a parent. */
    ok_set("org-x", "max_apps=1");
    REFUSED(cmd_set("org-x/y/z", "max_apps=1"), ALLOT_ENOT_FOUND,
            "parent org-x/y does not exist");

    /* Once the parent is removed (with its subtree), a child cannot come
     * back on its own. */
    ok_cmd(cmd_rm("org", true));
    REFUSED(cmd_set("org/ads", "max_apps=1"), ALLOT_ENOT_FOUND,
            "parent org does not exist");
}
END_TEST

/* --- Capacity: guaranteed <= max ----------------------------------------- */

START_TEST(guaranteed_le_max)
{
    INVALID_SET("q", "guaranteed.memory_mb=10 max.memory_mb=9",
                "guaranteed.memory_mb 10 > max.memory_mb 9 at q");
    INVALID_SET("q", "guaranteed.vcores=3 max.vcores=2",
                "guaranteed.vcores 3 > max.vcores 2 at q");
    ok_set("q", "guaranteed.memory_mb=10 max.memory_mb=10 guaranteed.vcores=2 "
                "max.vcores=2");
    /* Raising guaranteed above max, or lowering max below guaranteed. */
    INVALID_SET("q", "guaranteed.memory_mb=11",
                "guaranteed.memory_mb 11 > max.memory_mb 10 at q");
    INVALID_SET("q", "max.vcores=1", "guaranteed.vcores 2 > max.vcores 1 at q");
    /* max 0: no maximum. */
    ok_set("q", "max.memory_mb=0 guaranteed.memory_mb=" U64MAX_S);
    ok_set("q2", "guaranteed.vcores=1000000");
    ck_assert_uint_eq(fsm_get(F, "q2", 2)->f.guaranteed_vcores, 1000000);
    /* And back: a max below the current guaranteed is refused. */
    INVALID_SET("q", "max.memory_mb=5",
                "guaranteed.memory_mb " U64MAX_S " > max.memory_mb 5 at q");
}
END_TEST

/* --- Capacity: children's guaranteed sums <= parent's --------------------
 */

START_TEST(children_guaranteed_sum)
{
    ok_set("org", "guaranteed.vcores=1000 guaranteed.memory_mb=10000");
    ok_set("org/ads", "guaranteed.vcores=100 guaranteed.memory_mb=1000");
    ok_set("org/ads/x", "guaranteed.vcores=60");
    INVALID_SET("org/ads/y", "guaranteed.vcores=61",
                "children guaranteed.vcores 121 > parent org/ads 100");
    INVALID_SET("org/ads/x", "guaranteed.vcores=120",
                "children guaranteed.vcores 120 > parent org/ads 100");
    /* Exactly the parent's: allowed. */
    ok_set("org/ads/y", "guaranteed.vcores=40");
    INVALID_SET("org/ads/z", "guaranteed.vcores=1",
                "children guaranteed.vcores 101 > parent org/ads 100");
    /* Memory on its own. */
    ok_set("org/ads/z", "guaranteed.memory_mb=999");
    INVALID_SET("org/ads/w", "guaranteed.memory_mb=2",
                "children guaranteed.memory_mb 1001 > parent org/ads 1000");
    ok_set("org/ads/w", "guaranteed.memory_mb=1");
    /* A parent that guarantees nothing: a child may guarantee nothing. */
    ok_set("org/ads/x/leaf", "max_apps=1");
    INVALID_SET("org/ads/x/leaf2", "guaranteed.memory_mb=1",
                "children guaranteed.memory_mb 1 > parent org/ads/x 0");

    /* Lowering the parent below what its children guarantee. */
    INVALID_SET("org/ads", "guaranteed.vcores=99",
                "children guaranteed.vcores 100 > parent org/ads 99");
    INVALID_SET("org/ads", "guaranteed.memory_mb=999",
                "children guaranteed.memory_mb 1000 > parent org/ads 999");
    ok_set("org/ads", "guaranteed.vcores=100 guaranteed.memory_mb=1000");
    ok_set("org/ads", "guaranteed.vcores=150");
}
END_TEST

/* An update replaces the quota's own contribution to its parent's sums: it
 * is not counted twice, and raising it is checked against its siblings. */
START_TEST(update_replaces_own_contribution)
{
    ok_set("p", "guaranteed.vcores=100 guaranteed.memory_mb=100");
    ok_set("p/x", "guaranteed.vcores=60 guaranteed.memory_mb=50");
    ok_set("p/y", "guaranteed.vcores=40 guaranteed.memory_mb=50");
    /* At the limit: updates that keep x's share apply (x counted once). */
    ok_set("p/x", "guaranteed.vcores=60");
    ok_set("p/x", "max_apps=3");
    ok_set("p/y", "guaranteed.memory_mb=50 max.memory_mb=60");
    /* Raising x while y holds the rest. */
    INVALID_SET("p/x", "guaranteed.vcores=61",
                "children guaranteed.vcores 101 > parent p 100");
    INVALID_SET("p/x", "guaranteed.memory_mb=51",
                "children guaranteed.memory_mb 101 > parent p 100");
    /* Moving 10 from y to x. */
    ok_set("p/y", "guaranteed.vcores=30");
    ok_set("p/x", "guaranteed.vcores=70");
    INVALID_SET("p/y", "guaranteed.vcores=31",
                "children guaranteed.vcores 101 > parent p 100");
    /* Lowering, then raising back to where it was. */
    ok_set("p/x", "guaranteed.vcores=0");
    ok_set("p/y", "guaranteed.vcores=100");
    ok_set("p/y", "guaranteed.vcores=0");
    ok_set("p/x", "guaranteed.vcores=100");
}
END_TEST

/* --- Capacity: child max <= parent max ----------------------------------- */

START_TEST(child_max_le_parent)
{
    ok_set("p", "max.memory_mb=100 max.vcores=10 max_apps=5");
    INVALID_SET("p/c", "max.memory_mb=101",
                "max.memory_mb 101 > parent p max.memory_mb 100");
    INVALID_SET("p/c", "max.vcores=11",
                "max.vcores 11 > parent p max.vcores 10");
    INVALID_SET("p/c", "max_apps=6", "max_apps 6 > parent p max_apps 5");
    ok_set("p/c", "max.memory_mb=100 max.vcores=10 max_apps=5");
    INVALID_SET("p/c", "max_apps=6", "max_apps 6 > parent p max_apps 5");
    /* 0: no maximum of its own (the parent's applies). */
    ok_set("p/d", "max.memory_mb=0 max.vcores=0 max_apps=0");
    /* A parent without a maximum bounds nothing. */
    ok_set("u", "kind=capacity");
    ok_set("u/c", "max.memory_mb=" U64MAX_S " max.vcores=7 max_apps=1000");
}
END_TEST

START_TEST(parent_max_shrink)
{
    ok_set("p", "max.memory_mb=100 max.vcores=10 max_apps=5");
    ok_set("p/c", "max.memory_mb=80 max.vcores=8 max_apps=4");
    ok_set("p/d", "max.memory_mb=0");
    INVALID_SET("p", "max.memory_mb=79",
                "descendant p/c max.memory_mb 80 > parent p 79");
    INVALID_SET("p", "max.vcores=7",
                "descendant p/c max.vcores 8 > parent p 7");
    INVALID_SET("p", "max_apps=3", "descendant p/c max_apps 4 > parent p 3");
    ok_set("p", "max.memory_mb=80 max.vcores=8 max_apps=4");
    /* 0 on the parent: no maximum, so nothing to exceed. */
    ok_set("p", "max.memory_mb=0 max.vcores=0 max_apps=0");
    ok_set("p/c", "max.memory_mb=500");
    /* From no maximum to one below a child's. */
    INVALID_SET("p", "max.memory_mb=400",
                "descendant p/c max.memory_mb 500 > parent p 400");
    ok_set("p", "max.memory_mb=500");
}
END_TEST

/* --- Capacity: the top level and the declared cluster capacity ----------- */

/* A max of 0 inherits: a grandchild is bounded by the nearest ancestor
 * that sets one, and shrinking that ancestor looks at every descendant. */
START_TEST(inherited_max)
{
    ok_set("g", "kind=capacity max.memory_mb=100 max_apps=10");
    ok_set("g/c", "kind=capacity");
    INVALID_SET("g/c/d", "kind=capacity max.memory_mb=500",
                "max.memory_mb 500 > parent g max.memory_mb 100");
    INVALID_SET("g/c/d", "kind=capacity max_apps=11",
                "max_apps 11 > parent g max_apps 10");
    ok_set("g/c/d", "kind=capacity max.memory_mb=90 max_apps=10");
    INVALID_SET("g", "max.memory_mb=80",
                "descendant g/c/d max.memory_mb 90 > parent g 80");
    /* A nearer maximum bounds before a farther one. */
    ok_set("g/c", "max.memory_mb=95");
    INVALID_SET("g/c/e", "kind=capacity max.memory_mb=96",
                "max.memory_mb 96 > parent g/c max.memory_mb 95");
}
END_TEST

START_TEST(cluster_capacity)
{
    /* Nothing declared: nothing checked. */
    ok_set("big", "guaranteed.memory_mb=1000000 guaranteed.vcores=1000");
    struct fsm_capacity cap = fsm_capacity(F);
    ck_assert(!cap.has_memory_mb && !cap.has_vcores);

    /* Declaring less than the top level already guarantees: refused. */
    REFUSED(cmd_capacity(true, 999999, false, 0), ALLOT_EVALIDATION_FAILED,
            "top-level guaranteed.memory_mb 1000000 > cluster capacity 999999");
    REFUSED(cmd_capacity(true, 2000000, true, 999), ALLOT_EVALIDATION_FAILED,
            "top-level guaranteed.vcores 1000 > cluster capacity 999");
    cap = fsm_capacity(F);
    ck_assert(!cap.has_memory_mb && !cap.has_vcores);

    /* Exactly enough. */
    uint64_t v0 = fsm_catalog_version(F);
    const struct fsm_result *r =
        ok_cmd(cmd_capacity(true, 1000000, true, 1000));
    ck_assert_uint_eq(r->version, v0 + 1);
    ck_assert_uint_eq(fsm_catalog_version(F), v0 + 1);
    cap = fsm_capacity(F);
    ck_assert(cap.has_memory_mb && cap.has_vcores);
    ck_assert_uint_eq(cap.memory_mb, 1000000);
    ck_assert_uint_eq(cap.vcores, 1000);

    /* Full: another top-level guarantee is refused, a child's is not
     * counted against the cluster (its parent holds it). */
    INVALID_SET("more", "guaranteed.memory_mb=1",
                "top-level guaranteed.memory_mb 1000001 > cluster capacity "
                "1000000");
    INVALID_SET("more", "guaranteed.vcores=1",
                "top-level guaranteed.vcores 1001 > cluster capacity 1000");
    ok_set("more", "max_apps=5"); /* guarantees nothing */
    ok_set("big/child", "guaranteed.memory_mb=1000000 guaranteed.vcores=1000");
    ok_set("rate", "rate=1000000000"); /* rate quotas hold no resources */
    uint64_t mem, vc;
    fsm_top_guaranteed(F, &mem, &vc);
    ck_assert_uint_eq(mem, 1000000);
    ck_assert_uint_eq(vc, 1000);

    /* Raise the capacity, then the top level may grow into it. */
    ok_cmd(cmd_capacity(true, 1500000, true, 1000));
    ok_set("more", "guaranteed.memory_mb=500000");
    INVALID_SET("more", "guaranteed.memory_mb=500001",
                "top-level guaranteed.memory_mb 1500001 > cluster capacity "
                "1500000");
    /* Lowering below the sum is refused; to the sum is fine. */
    REFUSED(cmd_capacity(true, 1499999, false, 0), ALLOT_EVALIDATION_FAILED,
            "top-level guaranteed.memory_mb 1500000 > cluster capacity "
            "1499999");
    ok_cmd(cmd_capacity(true, 1500000, false, 0));

    /* A partial declaration changes only what it names. */
    ok_cmd(cmd_capacity(false, 0, true, 5000));
    cap = fsm_capacity(F);
    ck_assert(cap.has_memory_mb && cap.has_vcores);
    ck_assert_uint_eq(cap.memory_mb, 1500000);
    ck_assert_uint_eq(cap.vcores, 5000);
    ok_set("vc", "guaranteed.vcores=4000");
    INVALID_SET("vc", "guaranteed.vcores=4001",
                "top-level guaranteed.vcores 5001 > cluster capacity 5000");
    /* Shrinking the top level frees capacity (once its children let it). */
    INVALID_SET("big", "guaranteed.vcores=0",
                "children guaranteed.vcores 1000 > parent big 0");
    ok_cmd(cmd_rm("big/child", false));
    ok_set("big", "guaranteed.vcores=0");
    ok_set("vc", "guaranteed.vcores=5000");
    uint64_t mem2, vc2;
    fsm_top_guaranteed(F, &mem2, &vc2);
    ck_assert_uint_eq(mem2, 1500000);
    ck_assert_uint_eq(vc2, 5000);
}
END_TEST

/* Only the resources declared are checked. */
START_TEST(cluster_capacity_partial)
{
    ok_cmd(cmd_capacity(false, 0, true, 10));
    struct fsm_capacity cap = fsm_capacity(F);
    ck_assert(!cap.has_memory_mb && cap.has_vcores);
    ok_set("a", "guaranteed.memory_mb=" U64MAX_S " guaranteed.vcores=10");
    INVALID_SET("b", "guaranteed.vcores=1",
                "top-level guaranteed.vcores 11 > cluster capacity 10");
    /* Declaring memory now: the sum is already all of it. */
    REFUSED(cmd_capacity(true, 1000, false, 0), ALLOT_EVALIDATION_FAILED,
            "top-level guaranteed.memory_mb " U64MAX_S
            " > cluster capacity 1000");
    ok_cmd(cmd_capacity(true, UINT64_MAX, false, 0));
    cap = fsm_capacity(F);
    ck_assert(cap.has_memory_mb && cap.has_vcores);
    ck_assert_uint_eq(cap.memory_mb, UINT64_MAX);
    ck_assert_uint_eq(cap.vcores, 10);
    /* Removing "a" frees everything. */
    ok_cmd(cmd_rm("a", false));
    uint64_t mem, vc;
    fsm_top_guaranteed(F, &mem, &vc);
    ck_assert_uint_eq(mem, 0);
    ck_assert_uint_eq(vc, 0);
    ok_cmd(cmd_capacity(true, 0, true, 0));
    INVALID_SET("b", "guaranteed.vcores=1",
                "top-level guaranteed.vcores 1 > cluster capacity 0");
    ok_set("b", "max.vcores=1");
}
END_TEST

/* --- Rate ----------------------------------------------------------------- */

START_TEST(rate_children_sum)
{
    ok_set("t", "rate=100");
    ok_set("t/a", "rate=60");
    INVALID_SET("t/b", "rate=40.001", "children rate 100.001 > parent t 100");
    ok_set("t/b", "rate=40");
    INVALID_SET("t/c", "rate=0.001", "children rate 100.001 > parent t 100");
    /* Another unit is not summed with the parent's. */
    ok_set("t/bytes", "rate=1000000 unit=bytes");
    /* Raising a child: its old rate is replaced, not added. */
    ok_set("t/a", "rate=60 burst=7");
    INVALID_SET("t/a", "rate=61", "children rate 101 > parent t 100");
    ok_set("t/b", "rate=10");
    ok_set("t/a", "rate=90");
    /* A child moving into the parent's unit is counted from then on. */
    INVALID_SET("t/bytes", "unit=requests",
                "children rate 1000100 > parent t 100");
    ok_set("t/bytes", "rate=0.5");
    INVALID_SET("t/bytes", "unit=requests",
                "children rate 100.5 > parent t 100");
    /* Lowering the parent below its children. */
    INVALID_SET("t", "rate=99.999", "children rate 100 > parent t 99.999");
    ok_set("t", "rate=100");
    /* The parent changing unit: the children of the new unit count, the
     * others no longer do. */
    INVALID_SET("t", "unit=bytes rate=0.4", "children rate 0.5 > parent t 0.4");
    ok_set("t", "unit=bytes rate=0.5");
    ok_set("t/a", "rate=1000");
    INVALID_SET("t/bytes", "rate=0.501", "children rate 0.501 > parent t 0.5");
}
END_TEST

START_TEST(rate_fractions)
{
    /* 0.1 + 0.2 is not 0.3 in binary floating point; in thousandths it
     * is, and it must be, on every replica. */
    ok_set("f", "rate=0.3");
    ok_set("f/a", "rate=0.1");
    ok_set("f/b", "rate=0.2");
    INVALID_SET("f/c", "rate=0.001", "children rate 0.301 > parent f 0.3");
    /* 1.001 * 1000 is 1000.9999999999999 in binary: rounded to the nearest
     * thousandth it is 1 + 0.001. */
    ok_set("g", "rate=1.001");
    ok_set("g/a", "rate=1");
    ok_set("g/b", "rate=0.001");
    INVALID_SET("g/c", "rate=0.001", "children rate 1.002 > parent g 1.001");
    INVALID_SET("g", "rate=1", "children rate 1.001 > parent g 1");
    /* Thousandths: the smallest step. */
    ok_set("m", "rate=0.003");
    ok_set("m/a", "rate=0.001");
    ok_set("m/b", "rate=0.001");
    ok_set("m/c", "rate=0.001");
    INVALID_SET("m/d", "rate=0.001", "children rate 0.004 > parent m 0.003");
    INVALID_SET("m", "rate=0.002", "children rate 0.003 > parent m 0.002");
    /* Sums of many fractions stay exact: ten children of 0.7 fill 7. */
    ok_set("s", "rate=7");
    char path[16];
    for (int i = 0; i < 10; i++) {
        snprintf(path, sizeof path, "s/%d", i);
        ok_set(path, "rate=0.7");
    }
    INVALID_SET("s/x", "rate=0.001", "children rate 7.001 > parent s 7");
    /* The largest rate. */
    ok_set("big", "rate=1e12");
    ok_set("big/a", "rate=999999999999.999");
    ok_set("big/b", "rate=0.001");
    refused_cmd(cmd_set("big/c", "rate=0.001"), ALLOT_EVALIDATION_FAILED,
                "children rate", "> parent big 1000000000000", NULL);
    refused_cmd(cmd_set("big2", "rate=1000000000000.01"), ALLOT_EINVALID,
                "at most 1e12", NULL);
    /* Two maximal siblings under a maximal parent. */
    ok_set("top", "rate=1e12");
    ok_set("top/a", "rate=1e12");
    refused_cmd(cmd_set("top/b", "rate=1e12"), ALLOT_EVALIDATION_FAILED,
                "children rate 2000000000000 > parent top 1000000000000", NULL);
}
END_TEST

/* The numbers in a rate message are the numbers compared. Near 1e12 the
 * thousandths need 16 significant digits. */
START_TEST(rate_message_precision)
{
    ok_set("big", "rate=1e12");
    ok_set("big/a", "rate=1e12");
    INVALID_SET("big/b", "rate=0.001",
                "children rate 1000000000000.001 > parent big "
                "1000000000000");
}
END_TEST

/* --- Same kind only ------------------------------------------------------- */

START_TEST(rules_between_same_kind_only)
{
    /* A project's API rate limit under the project's capacity: not summed
     * with the capacity children, not bounded by the capacity. */
    ok_set("proj", "guaranteed.vcores=10 guaranteed.memory_mb=100 "
                   "max.memory_mb=100 max_apps=1");
    ok_set("proj/api", "rate=1000000");
    ok_set("proj/api2", "rate=1e12 unit=bytes");
    ok_set("proj/batch", "guaranteed.vcores=10");
    INVALID_SET("proj/batch2", "guaranteed.vcores=1",
                "children guaranteed.vcores 11 > parent proj 10");
    INVALID_SET("proj/batch2", "max_apps=2",
                "max_apps 2 > parent proj max_apps 1");
    /* Shrinking the capacity parent looks at capacity children only. */
    ok_set("proj", "max_apps=1 guaranteed.memory_mb=0 max.memory_mb=1");
    INVALID_SET("proj", "guaranteed.vcores=9",
                "children guaranteed.vcores 10 > parent proj 9");
    /* The rate children among themselves: the rule needs a rate parent. */
    ok_set("proj/api/eu", "rate=1");
    INVALID_SET("proj/api/us", "rate=1000000",
                "children rate 1000001 > parent proj/api 1000000");

    /* A capacity quota may not sit under a rate quota: there it would
     * escape every guaranteed sum above it, the cluster capacity too. */
    ok_set("svc", "rate=1");
    INVALID_SET("svc/pool", "guaranteed.vcores=1000 max_apps=50",
                "a capacity quota cannot sit under rate quota svc");
    ok_set("svc", "rate=0.001");
    ok_set("svc/r", "rate=0.001");
    INVALID_SET("svc/r2", "rate=0.001",
                "children rate 0.002 > parent svc 0.001");
}
END_TEST

/* --- Removal -------------------------------------------------------------- */

/* a, its subtree, and siblings that share its characters. */
static void rm_tree(void)
{
    const char *const paths[] = {"a",   "a/b", "a/b/c", "a/b-2", "a/c",
                                 "a-x", "ab",  "a-x/y", "b",     "0"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        ok_set(paths[i], "max_apps=1");
    }
}

START_TEST(rm_needs_recursive)
{
    rm_tree();
    REFUSED(cmd_rm("a", false), ALLOT_EVALIDATION_FAILED,
            "a has 3 children; remove them first or remove recursively");
    REFUSED(cmd_rm("a/b", false), ALLOT_EVALIDATION_FAILED,
            "a/b has 1 child; remove it first or remove recursively");
    REFUSED(cmd_rm("a-x", false), ALLOT_EVALIDATION_FAILED, "a-x has 1 child");
    /* A conflicting if_version refuses a recursive removal as a whole. */
    REFUSED(if_version(cmd_rm("a", true), 99), ALLOT_ECONFLICT,
            "quota a is at version 1, not 99");
    REFUSED(cmd_rm("nope", true), ALLOT_ENOT_FOUND, "no quota at nope");
    /* A leaf goes either way, as one change. */
    uint64_t v = fsm_catalog_version(F);
    const struct fsm_result *r = ok_cmd(cmd_rm("a/b/c", false));
    ck_assert_uint_eq(r->removed, 1);
    ck_assert_uint_eq(r->version, v + 1);
    r = ok_cmd(cmd_rm("0", true));
    ck_assert_uint_eq(r->removed, 1);
    ck_assert_uint_eq(r->version, v + 2);
    /* Its parent has no child left. */
    r = ok_cmd(cmd_rm("a/b", false));
    ck_assert_uint_eq(r->removed, 1);
}
END_TEST

START_TEST(rm_recursive_subtree)
{
    rm_tree();
    ok_set("a/b/c/d", "max_apps=1");
    uint64_t v0 = fsm_catalog_version(F);
    uint64_t n0 = fsm_quota_count(F);
    uint64_t vx = fsm_get(F, "a-x", 3)->version;
    uint64_t vab = fsm_get(F, "ab", 2)->version;
    uint64_t vy = fsm_get(F, "a-x/y", 5)->version;

    const struct fsm_result *r = ok_cmd(if_version(cmd_rm("a", true), 1));
    /* a, a/b, a/b-2, a/b/c, a/b/c/d, a/c: six quotas, six versions. */
    ck_assert_uint_eq(r->removed, 6);
    ck_assert_uint_eq(r->version, v0 + 6);
    ck_assert_uint_eq(fsm_catalog_version(F), v0 + 6);
    ck_assert_uint_eq(fsm_quota_count(F), n0 - 6);
    const char *const gone[] = {"a", "a/b", "a/b-2", "a/b/c", "a/b/c/d", "a/c"};
    for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++) {
        ck_assert_msg(fsm_get(F, gone[i], strlen(gone[i])) == NULL, "%s left",
                      gone[i]);
    }
    /* Siblings that share the characters are untouched. */
    ck_assert_uint_eq(fsm_get(F, "a-x", 3)->version, vx);
    ck_assert_uint_eq(fsm_get(F, "ab", 2)->version, vab);
    ck_assert_uint_eq(fsm_get(F, "a-x/y", 5)->version, vy);
    ck_assert_ptr_nonnull(fsm_get(F, "b", 1));
    ck_assert_ptr_nonnull(fsm_get(F, "0", 1));

    /* A subtree in the middle: its parent keeps its other children. */
    ok_set("a", "max_apps=1");
    ok_set("a/b", "max_apps=1");
    ok_set("a/b/c", "max_apps=1");
    ok_set("a/c", "max_apps=1");
    r = ok_cmd(cmd_rm("a/b", true));
    ck_assert_uint_eq(r->removed, 2);
    REFUSED(cmd_rm("a", false), ALLOT_EVALIDATION_FAILED, "a has 1 child");
    ok_cmd(cmd_rm("a/c", false));
    r = ok_cmd(cmd_rm("a", false));
    ck_assert_uint_eq(r->removed, 1);
}
END_TEST

/* After a removal the parent's sums no longer hold what was removed. */
START_TEST(rm_updates_aggregates)
{
    ok_cmd(cmd_capacity(true, 100, true, 100));
    ok_set("p", "guaranteed.vcores=100 guaranteed.memory_mb=100 max_apps=4");
    ok_set("p/x", "guaranteed.vcores=60");
    ok_set("p/y", "guaranteed.vcores=40");
    ok_set("p/y/leaf", "guaranteed.vcores=40");
    INVALID_SET("p/x", "guaranteed.vcores=61",
                "children guaranteed.vcores 101 > parent p 100");
    /* Removing y (and its child) frees its 40 for x. */
    const struct fsm_result *r = ok_cmd(cmd_rm("p/y", true));
    ck_assert_uint_eq(r->removed, 2);
    ok_set("p/x", "guaranteed.vcores=100");
    INVALID_SET("p/z", "guaranteed.vcores=1",
                "children guaranteed.vcores 101 > parent p 100");
    ok_cmd(cmd_rm("p/x", false));
    ok_set("p/z", "guaranteed.vcores=100");
    /* A new y starts from nothing: the removed leaf does not linger. */
    ok_set("p/z/w", "guaranteed.vcores=100");

    /* The top level: removing p frees the cluster's capacity. */
    INVALID_SET("q", "guaranteed.vcores=1",
                "top-level guaranteed.vcores 101 > cluster capacity 100");
    r = ok_cmd(cmd_rm("p", true));
    ck_assert_uint_eq(r->removed, 3);
    uint64_t mem, vc;
    fsm_top_guaranteed(F, &mem, &vc);
    ck_assert_uint_eq(mem, 0);
    ck_assert_uint_eq(vc, 0);
    ok_set("q", "guaranteed.vcores=100 guaranteed.memory_mb=100");

    /* Rates alike. */
    ok_set("t", "rate=10");
    ok_set("t/a", "rate=7.5");
    ok_set("t/b", "rate=2.5");
    ok_set("t/b/c", "rate=2.5");
    INVALID_SET("t/a", "rate=7.501", "children rate 10.001 > parent t 10");
    ok_cmd(cmd_rm("t/b", true));
    ok_set("t/a", "rate=10");
    ok_cmd(cmd_rm("t/a", false));
    ok_set("t", "rate=0.001");
}
END_TEST

/* A retried recursive removal gets the original answer, on every replica:
 * also on one that restored the session from a snapshot. */
START_TEST(rm_retry_answers_removed)
{
    rm_tree();
    const struct fsm_result *r = ok_cmd(sess(cmd_rm("a", true), 9, 1, 1));
    ck_assert_uint_eq(r->removed, 5);
    uint64_t version = r->version;
    r = run(sess(cmd_rm("a", true), 9, 1, 1));
    ck_assert(r->duplicate);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, version);
    ck_assert_uint_eq(r->removed, 5);

    struct fsm *g = fsm_clone(F);
    r = apply1(g, sess(cmd_rm("a", true), 9, 1, 1), now_ms);
    ck_assert(r->duplicate);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->version, version);
    ck_assert_msg(r->removed == 5,
                  "a replica restored from a snapshot answers the retried "
                  "recursive rm with removed=%llu (the original said 5)",
                  (unsigned long long)r->removed);
    fsm_close(g);
}
END_TEST

/* --- Overflow ------------------------------------------------------------- */

START_TEST(overflow_refused)
{
    /* A parent just below the top of the range: children whose sum passes
     * 2^64 must not wrap around to something small. */
    ok_set("p", "guaranteed.memory_mb=18446744073709551614 "
                "guaranteed.vcores=18446744073709551614");
    ok_set("p/a", "guaranteed.memory_mb=18446744073709551613");
    INVALID_SET("p/b", "guaranteed.memory_mb=3",
                "children guaranteed.memory_mb",
                "> parent p "
                "18446744073709551614");
    INVALID_SET("p/b", "guaranteed.memory_mb=" U64MAX_S,
                "children guaranteed.memory_mb", "> parent p");
    ok_set("p/b", "guaranteed.memory_mb=1");
    ok_set("p/c", "guaranteed.vcores=18446744073709551614");
    INVALID_SET("p/d", "guaranteed.vcores=" U64MAX_S,
                "children guaranteed.vcores", "> parent p");
    /* Still full: the refusals left the sums alone. */
    INVALID_SET("p/d", "guaranteed.memory_mb=1",
                "children guaranteed.memory_mb " U64MAX_S
                " > parent p 18446744073709551614");

    /* The cluster capacity alike: p holds all of it. */
    ok_cmd(cmd_capacity(true, UINT64_MAX - 1, false, 0));
    INVALID_SET("r", "guaranteed.memory_mb=" U64MAX_S,
                "top-level guaranteed.memory_mb",
                "> cluster capacity 18446744073709551614");
    INVALID_SET("r", "guaranteed.memory_mb=1",
                "top-level guaranteed.memory_mb " U64MAX_S
                " > cluster capacity 18446744073709551614");
}
END_TEST

/* A parent guaranteeing all of UINT64_MAX: one more than that is more. */
START_TEST(overflow_parent_at_max)
{
    ok_set("p", "guaranteed.memory_mb=" U64MAX_S);
    ok_set("p/a", "guaranteed.memory_mb=" U64MAX_S);
    INVALID_SET("p/b", "guaranteed.memory_mb=1",
                "children guaranteed.memory_mb", "> parent p " U64MAX_S);
    INVALID_SET("p/b", "guaranteed.memory_mb=" U64MAX_S,
                "children guaranteed.memory_mb", "> parent p " U64MAX_S);
}
END_TEST

/* Top-level sums grow without a declared capacity; declaring one later must
 * see the true sum, not a wrapped one. */
START_TEST(overflow_top_level_before_capacity)
{
    ok_set("a", "guaranteed.memory_mb=18446744073709551614");
    const struct fsm_result *r = run(cmd_set("b", "guaranteed.memory_mb=3"));
    if (r->code != 0) {
        /* Refusing a sum that does not fit in 64 bits is fine too. */
        ck_assert_int_eq(r->code, ALLOT_EVALIDATION_FAILED);
        return;
    }
    REFUSED(cmd_capacity(true, 10, false, 0), ALLOT_EVALIDATION_FAILED,
            "top-level guaranteed.memory_mb");
    REFUSED(cmd_capacity(true, UINT64_MAX, false, 0), ALLOT_EVALIDATION_FAILED,
            "top-level guaranteed.memory_mb");
    uint64_t mem, vc;
    fsm_top_guaranteed(F, &mem, &vc);
    ck_assert_msg(mem >= UINT64_MAX - 1,
                  "top-level guaranteed.memory_mb reads %llu after "
                  "18446744073709551614 + 3",
                  (unsigned long long)mem);
}
END_TEST

/* Rates of another unit than the parent's are not checked, but their sum
 * is kept: at 1e12 (10^15 thousandths) each, 18,447 of them pass 2^64. The
 * parent switching to their unit must see the true sum. */
START_TEST(overflow_rates_other_unit)
{
    enum { N = 18447 };
    ok_set("p", "rate=1e12 unit=requests");
    struct fsm_cmd *cmds = calloc(FSM_BATCH_MAX, sizeof *cmds);
    char(*paths)[16] = calloc(FSM_BATCH_MAX, sizeof *paths);
    ck_assert_ptr_nonnull(cmds);
    ck_assert_ptr_nonnull(paths);
    unsigned accepted = 0;
    for (unsigned done = 0; done < N;) {
        unsigned n = N - done < FSM_BATCH_MAX ? N - done : FSM_BATCH_MAX;
        for (unsigned i = 0; i < n; i++) {
            snprintf(paths[i], sizeof paths[i], "p/c%05u", done + i);
            cmds[i] = cmd_set(paths[i], "rate=1e12 unit=bytes");
        }
        const struct fsm_batch_result *b = apply_cmds(F, cmds, n, now_ms++);
        for (unsigned i = 0; i < n; i++) {
            /* Refusing the sum that does not fit is fine too. */
            ck_assert_msg(b->results[i].code == 0 ||
                              b->results[i].code == ALLOT_EVALIDATION_FAILED,
                          "%s", b->results[i].message);
            accepted += b->results[i].code == 0;
        }
        done += n;
    }
    free(cmds);
    free(paths);
    ck_assert_uint_ge(accepted, 2);
    INVALID_SET("p", "unit=bytes", "children rate", "> parent p 1000000000000");
}
END_TEST

/* --- Determinism ---------------------------------------------------------- */

/* A pseudo-random workload over a small tree of both kinds, with rates in
 * fractions that floating point would sum differently in different orders,
 * sums at their limits, recursive removals, capacity declarations, audit
 * settings and retried writes. */
struct path_kind
{
    const char *path;
    bool rate;
};

static const struct path_kind paths[] = {
    {"a", false},     {"a/x", false},   {"a/y", false},   {"a/z", false},
    {"a/x/1", false}, {"a/x/2", false}, {"a/y/1", false}, {"a/r", true},
    {"a/r/1", true},  {"b", true},      {"b/x", true},    {"b/y", true},
    {"b/z", true},    {"b/x/1", true},  {"b/x/2", true},  {"b/c", false},
    {"c", false},     {"c/x", false},   {"d", true},      {"d/x", true},
};
#define N_PATHS (sizeof paths / sizeof paths[0])

static uint32_t rng_next(uint32_t *x)
{
    *x = *x * 1103515245u + 12345u;
    return *x >> 8;
}

static const char *const rate_values[] = {
    "0.1", "0.2", "0.3", "0.7", "0.001", "0.999", "1", "1.5", "2.001", "3.3",
};

/* One random command. */
static struct fsm_cmd random_cmd(uint32_t *x, uint64_t *next_seq)
{
    struct fsm_cmd c;
    const struct path_kind *pk = &paths[rng_next(x) % N_PATHS];
    uint32_t op = rng_next(x) % 100;
    char kvs[256];
    if (op < 62) {
        if (pk->rate) {
            snprintf(kvs, sizeof kvs, "rate=%s%s",
                     rate_values[rng_next(x) % 10],
                     rng_next(x) % 6 == 0
                         ? (rng_next(x) % 2 ? " unit=bytes" : " unit=requests")
                         : "");
        } else {
            static const unsigned maxes[] = {0, 50, 100, 200};
            snprintf(kvs, sizeof kvs,
                     "guaranteed.memory_mb=%u guaranteed.vcores=%u "
                     "max.memory_mb=%u max_apps=%u",
                     rng_next(x) % 11 * 10, rng_next(x) % 21,
                     maxes[rng_next(x) % 4], rng_next(x) % 6);
        }
        if (rng_next(x) % 12 == 0) {
            /* The other kind's fields: refused (kind change or new kind). */
            snprintf(kvs, sizeof kvs, "%s",
                     pk->rate ? "kind=capacity" : "kind=rate");
        }
        c = cmd_set(pk->path, kvs);
    } else if (op < 80) {
        c = cmd_rm(pk->path, rng_next(x) % 2 == 0);
    } else if (op < 90) {
        static const uint64_t caps[] = {100, 200, 300, 1000};
        uint32_t which = rng_next(x) % 3;
        c = cmd_capacity(which != 1, caps[rng_next(x) % 4], which != 0,
                         caps[rng_next(x) % 4] / 10);
    } else if (op < 95) {
        c = cmd_audit_config(true, 20 + rng_next(x) % 200, rng_next(x) % 2,
                             1000 + rng_next(x) % 100000);
    } else {
        c = cmd_leader(1 + rng_next(x) % 3, "127.0.0.1:7000");
    }
    static const char *const principal[] = {"alice", "bob", "", "rightsizer"};
    c.principal = principal[rng_next(x) % 4];
    if (c.type != FSM_CMD_LEADER && rng_next(x) % 3 == 0) {
        /* Client 5 with a session; sometimes a retry of an earlier seq. */
        uint64_t seq = *next_seq;
        if (seq > 3 && rng_next(x) % 4 == 0) {
            seq -= 1 + rng_next(x) % 3;
        } else {
            (*next_seq)++;
        }
        c = sess(c, 5, seq, *next_seq > 8 ? *next_seq - 8 : 0);
    }
    return c;
}

struct verdict
{
    int code;
    bool duplicate;
    uint64_t version;
    uint64_t removed;
    char message[ALLOT_ERRMSG_SIZE];
};

static void verdict_of(const struct fsm_result *r, struct verdict *v)
{
    v->code = r->code;
    v->duplicate = r->duplicate;
    v->version = r->version;
    v->removed = r->removed;
    snprintf(v->message, sizeof v->message, "%s", r->message ? r->message : "");
}

enum { DET_ENTRIES = 400, DET_PER_ENTRY = 4, DET_FORKS = 4 };

START_TEST(determinism_across_restore)
{
    static const char *const who[] = {"alice", "bob", "rightsizer", NULL};
    fsm_util_principals(F, who, T0 - 1);
    static struct fsm_cmd cmds[DET_ENTRIES][DET_PER_ENTRY];
    static unsigned n_cmds[DET_ENTRIES];
    static uint64_t times[DET_ENTRIES];
    static struct verdict want[DET_ENTRIES][DET_PER_ENTRY];
    uint32_t x = 20261123;
    uint64_t next_seq = 1;
    uint64_t t = T0;
    for (unsigned e = 0; e < DET_ENTRIES; e++) {
        n_cmds[e] = 1 + rng_next(&x) % DET_PER_ENTRY;
        for (unsigned i = 0; i < n_cmds[e]; i++) {
            cmds[e][i] = random_cmd(&x, &next_seq);
        }
        t += rng_next(&x) % 700; /* audit ages and session idle times */
        times[e] = t;
    }

    /* Forks: replicas restored from a snapshot of F before these entries
     * (one of them restored twice over). */
    static const unsigned fork_at[DET_FORKS] = {1, 137, 200, 333};
    struct fsm *forks[DET_FORKS] = {NULL};
    for (unsigned e = 0; e < DET_ENTRIES; e++) {
        for (unsigned k = 0; k < DET_FORKS; k++) {
            if (fork_at[k] == e) {
                forks[k] = fsm_clone(F);
                if (k == 2) {
                    struct fsm *again = fsm_clone(forks[k]);
                    fsm_close(forks[k]);
                    forks[k] = again;
                }
                assert_same_state(F, forks[k]);
            }
        }
        const struct fsm_batch_result *b =
            apply_cmds(F, cmds[e], n_cmds[e], times[e]);
        for (unsigned i = 0; i < n_cmds[e]; i++) {
            verdict_of(&b->results[i], &want[e][i]);
        }
    }

    /* The workload exercised both verdicts, and each rule family. */
    unsigned accepted = 0, refused = 0, validation = 0, not_found = 0,
             recursive = 0, dups = 0;
    for (unsigned e = fork_at[1]; e < DET_ENTRIES; e++) {
        for (unsigned i = 0; i < n_cmds[e]; i++) {
            const struct verdict *v = &want[e][i];
            accepted += v->code == 0;
            refused += v->code != 0;
            validation += v->code == ALLOT_EVALIDATION_FAILED;
            not_found += v->code == ALLOT_ENOT_FOUND;
            recursive += v->code == 0 && v->removed > 1;
            dups += v->duplicate;
        }
    }
    ck_assert_msg(accepted >= 50 && refused >= 50 && validation >= 20 &&
                      not_found >= 10 && recursive >= 3 && dups >= 3,
                  "workload too tame: %u accepted, %u refused, %u validation, "
                  "%u not_found, %u recursive, %u duplicates",
                  accepted, refused, validation, not_found, recursive, dups);

    /* Each fork replays the rest of the log: same verdicts, same state. */
    for (unsigned k = 0; k < DET_FORKS; k++) {
        for (unsigned e = fork_at[k]; e < DET_ENTRIES; e++) {
            const struct fsm_batch_result *b =
                apply_cmds(forks[k], cmds[e], n_cmds[e], times[e]);
            for (unsigned i = 0; i < n_cmds[e]; i++) {
                struct verdict got;
                verdict_of(&b->results[i], &got);
                const struct verdict *w = &want[e][i];
                ck_assert_msg(
                    got.code == w->code && got.duplicate == w->duplicate &&
                        got.version == w->version &&
                        got.removed == w->removed &&
                        strcmp(got.message, w->message) == 0,
                    "fork at %u, entry %u, command %u: got %d dup=%d "
                    "v%llu removed %llu \"%s\", want %d dup=%d v%llu "
                    "removed %llu \"%s\"",
                    fork_at[k], e, i, got.code, got.duplicate,
                    (unsigned long long)got.version,
                    (unsigned long long)got.removed, got.message, w->code,
                    w->duplicate, (unsigned long long)w->version,
                    (unsigned long long)w->removed, w->message);
            }
        }
        assert_same_state(F, forks[k]);
        /* And their snapshots are the same bytes. */
        struct raft_buffer s1 = snapshot_take(F);
        struct raft_buffer s2 = snapshot_take(forks[k]);
        ck_assert_uint_eq(s1.len, s2.len);
        ck_assert_mem_eq(s1.base, s2.base, s1.len);
        raft_free(s1.base);
        raft_free(s2.base);
        fsm_close(forks[k]);
    }
}
END_TEST

/* Verdicts that hinge on rate sums built in different orders: the rebuilt
 * sums of a restored replica equal the incremental ones. */
START_TEST(determinism_rate_sums)
{
    ok_set("r", "rate=1");
    /* Added and changed in an order whose floating-point running sum
     * differs from the sum in path order. */
    static const char *const vals[] = {"0.1", "0.7", "0.1", "0.1"};
    char path[8];
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "r/%d", 3 - i);
        ok_set(path, "rate=0.001");
        char kv[32];
        snprintf(kv, sizeof kv, "rate=%s", vals[i]);
        ok_set(path, kv);
    }
    ok_cmd(cmd_rm("r/1", false));
    ok_set("r/1", "rate=0.1");
    struct fsm *g = fsm_clone(F);
    /* 0.1 + 0.7 + 0.1 + 0.1 = 1 exactly: full on both. */
    uint64_t t = now_ms + 10;
    struct fsm *both[2] = {F, g};
    for (int i = 0; i < 2; i++) {
        const struct fsm_result *r =
            apply1(both[i], cmd_set("r/9", "rate=0.001"), t);
        ck_assert_int_eq(r->code, ALLOT_EVALIDATION_FAILED);
        assert_has(r->message, "children rate 1.001 > parent r 1");
        r = apply1(both[i], cmd_set("r", "rate=1"), t + 1);
        ck_assert_int_eq(r->code, 0);
        r = apply1(both[i], cmd_set("r", "rate=0.999"), t + 2);
        ck_assert_int_eq(r->code, ALLOT_EVALIDATION_FAILED);
        assert_has(r->message, "children rate 1 > parent r 0.999");
    }
    assert_same_state(F, g);
    fsm_close(g);
}
END_TEST

static Suite *catalog_suite(void)
{
    Suite *s = suite_create("catalog");
    TCase *tc = tcase_create("hierarchy");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, parent_must_exist);
    tcase_add_test(tc, digest_vectors);
    tcase_add_test(tc, rm_needs_recursive);
    tcase_add_test(tc, rm_recursive_subtree);
    tcase_add_test(tc, rm_updates_aggregates);
    tcase_add_test(tc, rm_retry_answers_removed);
    suite_add_tcase(s, tc);

    tc = tcase_create("capacity");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, guaranteed_le_max);
    tcase_add_test(tc, children_guaranteed_sum);
    tcase_add_test(tc, update_replaces_own_contribution);
    tcase_add_test(tc, child_max_le_parent);
    tcase_add_test(tc, parent_max_shrink);
    tcase_add_test(tc, inherited_max);
    tcase_add_test(tc, cluster_capacity);
    tcase_add_test(tc, cluster_capacity_partial);
    suite_add_tcase(s, tc);

    tc = tcase_create("rate");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, rate_children_sum);
    tcase_add_test(tc, rate_fractions);
    tcase_add_test(tc, rate_message_precision);
    tcase_add_test(tc, rules_between_same_kind_only);
    suite_add_tcase(s, tc);

    tc = tcase_create("overflow");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, overflow_refused);
    tcase_add_test(tc, overflow_parent_at_max);
    tcase_add_test(tc, overflow_top_level_before_capacity);
    tcase_add_test(tc, overflow_rates_other_unit);
    suite_add_tcase(s, tc);

    tc = tcase_create("determinism");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, determinism_across_restore);
    tcase_add_test(tc, determinism_rate_sums);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(catalog_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
