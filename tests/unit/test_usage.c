/* test_usage.c - the leader's store of hosts' usage windows (node/usage.c).
 *
 *   decode_checks    every malformed report is refused with a message and
 *                    yields nothing; a good one decodes whole
 *   windows_bounded  the latest USAGE_WINDOWS windows per host are kept;
 *                    reports for one window add up; a window over
 *                    USAGE_RULES_MAX rules is refused and changes nothing
 *   hosts_bounded    a new host beyond USAGE_HOSTS_MAX forgets the one
 *                    heard from least recently; entries never exceed
 *                    USAGE_ENTRIES_MAX
 *   listing          usage.ls filters by prefix and host */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../node/usage.h"
#include "../../proto/allot_error.h"
#include "../../proto/wire.h"

/* A report built directly (decoding is tested apart). */
static struct usage_report *report(const char *host, uint64_t start, uint32_t n,
                                   const char *prefix)
{
    struct usage_report *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    snprintf(r->host, sizeof r->host, "%s", host);
    r->window_start_ms = start;
    r->window_ms = 1000;
    r->rules = calloc(n ? n : 1, sizeof *r->rules);
    for (uint32_t i = 0; i < n; i++) {
        char path[64];
        snprintf(path, sizeof path, "%s/r%u", prefix, i);
        r->rules[i].path = strdup(path);
        r->rules[i].admitted = 1;
    }
    r->n_rules = n;
    return r;
}

static int put(struct usage_store *s, struct usage_report *r, uint64_t now)
{
    int rv = usage_store_put(s, r, now);
    usage_report_free(r);
    return rv;
}

/* Decode args packed by fn. */
static int decode(void (*fn)(msgpack_packer *), struct usage_report **out,
                  char *msg)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    fn(&pk);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, msg), 0);
    int rv = usage_report_decode(&u.data, out, msg);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return rv;
}

static void head(msgpack_packer *pk, unsigned n, const char *host)
{
    msgpack_pack_map(pk, n);
    wire_pack_kv_str(pk, "host", host);
    wire_pack_kv_u64(pk, "window_start_ms", 5000);
    wire_pack_kv_u64(pk, "window_ms", 1000);
}

static void rule(msgpack_packer *pk, const char *path)
{
    msgpack_pack_map(pk, 7);
    wire_pack_kv_str(pk, "path", path);
    wire_pack_usage(pk, 1, 2, 3, 4, 5, 6);
}

static void p_good(msgpack_packer *pk)
{
    head(pk, 4, "h1");
    wire_pack_str(pk, "rules");
    msgpack_pack_array(pk, 2);
    rule(pk, "org/b");
    msgpack_pack_map(pk, 5);
    wire_pack_kv_str(pk, "path", "org/a");
    wire_pack_kv_u64(pk, "admitted", 7);
    wire_pack_kv_u64(pk, "rejected", 0);
    wire_pack_kv_u64(pk, "shadowed", 0);
    wire_pack_kv_u64(pk, "cost", 7);
}

static void p_no_cost(msgpack_packer *pk)
{
    head(pk, 4, "h1");
    wire_pack_str(pk, "rules");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 4);
    wire_pack_kv_str(pk, "path", "org/a");
    wire_pack_kv_u64(pk, "admitted", 7);
    wire_pack_kv_u64(pk, "rejected", 0);
    wire_pack_kv_u64(pk, "shadowed", 0);
}

static void p_space_host(msgpack_packer *pk)
{
    head(pk, 4, "h 1");
    wire_pack_str(pk, "rules");
    msgpack_pack_array(pk, 0);
}

static void p_rules_map(msgpack_packer *pk)
{
    head(pk, 4, "h1");
    wire_pack_str(pk, "rules");
    msgpack_pack_map(pk, 0);
}

static void p_zero_window(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 4);
    wire_pack_kv_str(pk, "host", "h1");
    wire_pack_kv_u64(pk, "window_start_ms", 5000);
    wire_pack_kv_u64(pk, "window_ms", 0);
    wire_pack_str(pk, "rules");
    msgpack_pack_array(pk, 0);
}

static void p_rule_not_map(msgpack_packer *pk)
{
    head(pk, 4, "h1");
    wire_pack_str(pk, "rules");
    msgpack_pack_array(pk, 1);
    msgpack_pack_uint64(pk, 3);
}

static void p_negative(msgpack_packer *pk)
{
    head(pk, 4, "h1");
    wire_pack_str(pk, "rules");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 5);
    wire_pack_kv_str(pk, "path", "org/a");
    wire_pack_str(pk, "admitted");
    msgpack_pack_int64(pk, -1);
    wire_pack_kv_u64(pk, "rejected", 0);
    wire_pack_kv_u64(pk, "shadowed", 0);
    wire_pack_kv_u64(pk, "cost", 0);
}

static void p_too_many(msgpack_packer *pk)
{
    head(pk, 4, "h1");
    wire_pack_str(pk, "rules");
    msgpack_pack_array(pk, USAGE_RULES_MAX + 1);
    for (unsigned i = 0; i <= USAGE_RULES_MAX; i++) {
        char path[32];
        snprintf(path, sizeof path, "org/r%u", i);
        rule(pk, path);
    }
}

/* usage.ls's reply for (prefix, host). The unpacked value points into the
 * buffer: ls_done() frees both. */
struct ls_reply
{
    msgpack_sbuffer sb;
    msgpack_unpacked u;
};

static const msgpack_object *ls(const struct usage_store *s, const char *prefix,
                                const char *host, struct ls_reply *r)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(&r->sb);
    msgpack_packer_init(&pk, &r->sb, msgpack_sbuffer_write);
    usage_store_pack(s, prefix, strlen(prefix), host, &pk);
    msgpack_unpacked_init(&r->u);
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(wire_unpack(r->sb.data, r->sb.size, &r->u, msg), 0);
    const msgpack_object *hs = wire_map_get(&r->u.data, "hosts");
    ck_assert(hs != NULL && hs->type == MSGPACK_OBJECT_ARRAY);
    return hs;
}

static void ls_done(struct ls_reply *r)
{
    msgpack_unpacked_destroy(&r->u);
    msgpack_sbuffer_destroy(&r->sb);
}

START_TEST(decode_checks)
{
    char msg[ALLOT_ERRMSG_SIZE];
    struct usage_report *r;
    ck_assert_int_eq(decode(p_good, &r, msg), 0);
    ck_assert_uint_eq(r->n_rules, 2);
    ck_assert_str_eq(r->rules[0].path, "org/a"); /* sorted */
    ck_assert_uint_eq(r->rules[0].admitted, 7);
    ck_assert_uint_eq(r->rules[1].peak, 6);
    usage_report_free(r);
    static void (*const bad[])(msgpack_packer *) = {
        p_no_cost,     p_space_host,   p_rules_map,
        p_zero_window, p_rule_not_map, p_negative,
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = (struct usage_report *)1;
        msg[0] = '\0';
        ck_assert_int_eq(decode(bad[i], &r, msg), ALLOT_EINVALID);
        ck_assert_ptr_null(r);
        ck_assert_msg(msg[0] != '\0', "case %zu: no message", i);
    }
    ck_assert_int_eq(decode(p_too_many, &r, msg), ALLOT_ETOO_BIG);
    ck_assert_ptr_null(r);
}
END_TEST

START_TEST(windows_bounded)
{
    struct usage_store *s;
    ck_assert_int_eq(usage_store_new(&s), 0);
    for (uint64_t w = 1; w <= USAGE_WINDOWS + 1; w++) {
        ck_assert_int_eq(put(s, report("h1", w * 1000, 2, "org"), w), 0);
    }
    ck_assert_uint_eq(usage_store_entries(s), 2 * USAGE_WINDOWS);
    /* Older than every window kept: ignored. */
    ck_assert_int_eq(put(s, report("h1", 1000, 2, "org"), 9), 0);
    ck_assert_uint_eq(usage_store_entries(s), 2 * USAGE_WINDOWS);
    /* A second report for the newest window adds up ... */
    uint64_t last = (USAGE_WINDOWS + 1) * 1000;
    ck_assert_int_eq(put(s, report("h1", last, 3, "other"), 10), 0);
    ck_assert_uint_eq(usage_store_entries(s), 2 * USAGE_WINDOWS + 3);
    /* ... up to the bound, and past it nothing changes. */
    ck_assert_int_eq(
        put(s, report("h1", last, USAGE_RULES_MAX - 4, "more"), 11),
        ALLOT_ETOO_BIG);
    ck_assert_uint_eq(usage_store_entries(s), 2 * USAGE_WINDOWS + 3);
    usage_store_free(s);
}
END_TEST

START_TEST(hosts_bounded)
{
    struct usage_store *s;
    ck_assert_int_eq(usage_store_new(&s), 0);
    char name[32];
    for (unsigned h = 0; h < USAGE_HOSTS_MAX; h++) {
        snprintf(name, sizeof name, "h%u", h);
        ck_assert_int_eq(put(s, report(name, 1000, 1, "org"), 100 + h), 0);
    }
    ck_assert_uint_eq(usage_store_hosts(s), USAGE_HOSTS_MAX);
    /* h0 reports again: h1 is now the stalest and goes for a new host. */
    ck_assert_int_eq(put(s, report("h0", 2000, 1, "org"), 5000), 0);
    ck_assert_int_eq(put(s, report("new", 2000, 1, "org"), 5001), 0);
    ck_assert_uint_eq(usage_store_hosts(s), USAGE_HOSTS_MAX);
    struct ls_reply r;
    ck_assert_uint_eq(ls(s, "", "h1", &r)->via.array.size, 0);
    ls_done(&r);
    /* Entries: full windows from many hosts never pass the bound. */
    for (unsigned h = 0; h < USAGE_ENTRIES_MAX / USAGE_RULES_MAX + 4; h++) {
        snprintf(name, sizeof name, "big%u", h);
        ck_assert_int_eq(
            put(s, report(name, 3000, USAGE_RULES_MAX, "org"), 6000 + h), 0);
        ck_assert_uint_le(usage_store_entries(s), USAGE_ENTRIES_MAX);
    }
    usage_store_free(s);
}
END_TEST

START_TEST(listing)
{
    struct usage_store *s;
    ck_assert_int_eq(usage_store_new(&s), 0);
    ck_assert_int_eq(put(s, report("h1", 1000, 3, "org/a"), 1), 0);
    ck_assert_int_eq(put(s, report("h1", 2000, 2, "org/ab"), 2), 0);
    ck_assert_int_eq(put(s, report("h2", 1000, 1, "org/a"), 3), 0);
    static const struct
    {
        const char *prefix;
        const char *host;
        uint32_t hosts, rules;
    } cases[] = {
        {"", NULL, 2, 6},       {"org/a", NULL, 2, 4}, /* not org/ab */
        {"org/ab", NULL, 1, 2}, {"org/a", "h2", 1, 1}, {"nothing", NULL, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct ls_reply r;
        const msgpack_object *hs = ls(s, cases[i].prefix, cases[i].host, &r);
        ck_assert_uint_eq(hs->via.array.size, cases[i].hosts);
        uint32_t rules = 0;
        for (uint32_t h = 0; h < hs->via.array.size; h++) {
            const msgpack_object *ws =
                wire_map_get(&hs->via.array.ptr[h], "windows");
            for (uint32_t w = 0; w < ws->via.array.size; w++) {
                rules += wire_map_get(&ws->via.array.ptr[w], "rules")
                             ->via.array.size;
            }
        }
        ck_assert_msg(rules == cases[i].rules, "case %zu: %u rules, want %u", i,
                      rules, cases[i].rules);
        ls_done(&r);
    }
    usage_store_free(s);
}
END_TEST

static Suite *usage_suite(void)
{
    Suite *s = suite_create("usage");
    TCase *tc = tcase_create("store");
    tcase_add_test(tc, decode_checks);
    tcase_add_test(tc, windows_bounded);
    tcase_add_test(tc, hosts_bounded);
    tcase_add_test(tc, listing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(usage_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
