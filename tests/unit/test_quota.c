/* test_quota.c - paths, KEY=VALUE parsing, patch and quota codecs, defaults
 * and merge rules, all driven through quota_field_table so a field added to
 * the table is covered without touching this file. */
#include <check.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "quota.h"
#include "wire.h"

#define assert_has(msg, sub)                    \
    ck_assert_msg(strstr((msg), (sub)) != NULL, \
                  "message \"%s\" does not mention \"%s\"", (msg), (sub))
#define assert_lacks(msg, sub)                  \
    ck_assert_msg(strstr((msg), (sub)) == NULL, \
                  "message \"%s\" should not mention \"%s\"", (msg), (sub))

#define BIT(id)    (1u << (id))
#define ALL_FIELDS ((1u << QF_COUNT) - 1)

/* --- Helpers --- */

static const void *field_cptr(const struct quota_fields *f,
                              const struct quota_field_desc *d)
{
    return (const char *)f + d->offset;
}

static size_t field_size(const struct quota_field_desc *d)
{
    switch (d->type) {
    case QFT_U64:
        return sizeof(uint64_t);
    case QFT_DOUBLE:
        return sizeof(double);
    case QFT_BOOL:
        return sizeof(bool);
    case QFT_ENUM:
        return sizeof(uint8_t);
    case QFT_NAME:
        return QUOTA_FLEET_MAX + 1;
    }
    return 0;
}

static bool field_eq(const struct quota_field_desc *d,
                     const struct quota_fields *a, const struct quota_fields *b)
{
    if (d->type == QFT_NAME) {
        return strcmp(field_cptr(a, d), field_cptr(b, d)) == 0;
    }
    return memcmp(field_cptr(a, d), field_cptr(b, d), field_size(d)) == 0;
}

static bool field_is_zero(const struct quota_field_desc *d,
                          const struct quota_fields *f)
{
    static const struct quota_fields zero;
    return field_eq(d, f, &zero);
}

/* Every field of a and b equal (the `set` masks aside). */
static void assert_fields_eq(const struct quota_fields *a,
                             const struct quota_fields *b)
{
    for (unsigned i = 0; i < QF_COUNT; i++) {
        const struct quota_field_desc *d = &quota_field_table[i];
        char x[128], y[128];
        quota_field_format(d, a, x, sizeof x);
        quota_field_format(d, b, y, sizeof y);
        ck_assert_msg(field_eq(d, a, b), "field %s: %s != %s", d->name, x, y);
    }
}

/* Parse NULL-terminated KEY=VALUE strings into a zeroed patch. */
static void parse(struct quota_fields *p, ...)
{
    va_list ap;
    memset(p, 0, sizeof *p);
    va_start(ap, p);
    const char *kv;
    while ((kv = va_arg(ap, const char *)) != NULL) {
        char msg[ALLOT_ERRMSG_SIZE] = "";
        ck_assert_msg(quota_patch_parse_kv(p, kv, msg) == 0, "%s: %s", kv, msg);
    }
    va_end(ap);
}

static const struct quota_field_desc *field(enum quota_field_id id)
{
    return &quota_field_table[id];
}

/* --- Table sanity --- */

START_TEST(table_consistent)
{
    for (unsigned i = 0; i < QF_COUNT; i++) {
        const struct quota_field_desc *d = &quota_field_table[i];
        ck_assert_ptr_nonnull(d->name);
        ck_assert_ptr_nonnull(d->leaf);
        ck_assert_uint_ne(d->kinds, 0);
        ck_assert_uint_eq(d->kinds & ~QUOTA_KINDS_ALL, 0);
        if (d->group == NULL) {
            ck_assert_str_eq(d->name, d->leaf);
        } else {
            char full[128];
            snprintf(full, sizeof full, "%s.%s", d->group, d->leaf);
            ck_assert_str_eq(d->name, full);
        }
        ck_assert((d->type == QFT_ENUM) == (d->enum_names != NULL));
        ck_assert_uint_le(d->offset + field_size(d),
                          sizeof(struct quota_fields));
        for (unsigned j = 0; j < i; j++) {
            ck_assert_str_ne(quota_field_table[j].name, d->name);
        }
    }
    ck_assert_str_eq(field(QF_KIND)->name, "kind");
    ck_assert_str_eq(quota_kind_name(QUOTA_KIND_CAPACITY), "capacity");
    ck_assert_str_eq(quota_kind_name(QUOTA_KIND_RATE), "rate");
    ck_assert_str_eq(quota_kind_name(QUOTA_KIND_UNSET), "unset");
    ck_assert_str_eq(quota_kind_name(7), "unknown");
}
END_TEST

/* --- Paths --- */

static int path_check(const char *path, char *msg)
{
    msg[0] = '\0';
    return quota_path_check(path, strlen(path), msg);
}

START_TEST(path_valid)
{
    char seg64[QUOTA_SEGMENT_MAX + 1];
    memset(seg64, 'x', QUOTA_SEGMENT_MAX);
    seg64[QUOTA_SEGMENT_MAX] = '\0';
    char msg[ALLOT_ERRMSG_SIZE];
    const char *ok[] = {"a",          "org/team", "A-z_09/x-Y_1",    "0",
                        "-",          "_/_",      "a/b/c/d/e/f/g/h", "UPPER",
                        "with-dash_", seg64};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ck_assert_msg(path_check(ok[i], msg) == 0, "%s: %s", ok[i], msg);
    }
    /* The longest path: 8 segments of 64 characters. */
    char longest[QUOTA_PATH_MAX + 1];
    size_t off = 0;
    for (int i = 0; i < QUOTA_DEPTH_MAX; i++) {
        if (i > 0) {
            longest[off++] = '/';
        }
        memset(longest + off, 'a' + i, QUOTA_SEGMENT_MAX);
        off += QUOTA_SEGMENT_MAX;
    }
    longest[off] = '\0';
    ck_assert_uint_eq(off, QUOTA_PATH_MAX - 1);
    ck_assert_msg(path_check(longest, msg) == 0, "%s", msg);
    /* Only len bytes count. */
    ck_assert_int_eq(quota_path_check("a/b//", 3, msg), 0);
    ck_assert_int_eq(quota_path_check("ab*", 2, msg), 0);
}
END_TEST

START_TEST(path_invalid)
{
    char seg65[QUOTA_SEGMENT_MAX + 2];
    memset(seg65, 'x', QUOTA_SEGMENT_MAX + 1);
    seg65[QUOTA_SEGMENT_MAX + 1] = '\0';
    char deep_long[100];
    snprintf(deep_long, sizeof deep_long, "a/%s", seg65);
    const char *bad[] = {"",
                         seg65,
                         deep_long,
                         "a/b/c/d/e/f/g/h/i",
                         "a//b",
                         "/a",
                         "a/",
                         "/",
                         "//",
                         "a b",
                         "a.b",
                         "a\\b",
                         "caf\xc3\xa9",
                         "a/b*",
                         "a\tb",
                         "a/../b",
                         "a:b",
                         " a",
                         "a/\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[ALLOT_ERRMSG_SIZE];
        ck_assert_msg(path_check(bad[i], msg) == ALLOT_EINVALID,
                      "\"%s\" accepted", bad[i]);
        /* Every refusal says what a path may be. */
        assert_has(msg, "[A-Za-z0-9_-]{1,64}");
        assert_has(msg, "1 to 8 segments");
    }
    char msg[ALLOT_ERRMSG_SIZE];
    path_check("a/b/c/d/e/f/g/h/i", msg);
    assert_has(msg, "deeper than 8");
    path_check("a//b", msg);
    assert_has(msg, "bad path segment \"\"");
    path_check("ok/a b", msg);
    assert_has(msg, "\"a b\"");
    path_check("", msg);
    assert_has(msg, "empty path");
    /* An embedded NUL inside len is a bad character, not an end. */
    ck_assert_int_eq(quota_path_check("a\0b", 3, msg), ALLOT_EINVALID);
    /* A 9-deep path whose segments are all fine otherwise. */
    ck_assert_int_eq(quota_path_check("a/b/c/d/e/f/g/h/i", 15, msg), 0);
    ck_assert_int_eq(quota_path_check("a/b/c/d/e/f/g/h/i", 17, msg),
                     ALLOT_EINVALID);
}
END_TEST

/* --- KEY=VALUE --- */

/* Good values for a field, with what they must store. */
static void check_good_values(const struct quota_field_desc *d)
{
    char kv[200];
    char msg[ALLOT_ERRMSG_SIZE];
    struct quota_fields p;
    unsigned id = (unsigned)(d - quota_field_table);

    switch (d->type) {
    case QFT_U64: {
        static const struct
        {
            const char *text;
            uint64_t value;
        } cases[] = {{"0", 0},
                     {"42", 42},
                     {"007", 7},
                     {"18446744073709551615", UINT64_MAX}};
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            snprintf(kv, sizeof kv, "%s=%s", d->name, cases[i].text);
            memset(&p, 0, sizeof p);
            ck_assert_msg(quota_patch_parse_kv(&p, kv, msg) == 0, "%s: %s", kv,
                          msg);
            uint64_t v;
            memcpy(&v, field_cptr(&p, d), sizeof v);
            ck_assert_uint_eq(v, cases[i].value);
            ck_assert_uint_eq(p.set, BIT(id));
        }
        break;
    }
    case QFT_DOUBLE: {
        static const struct
        {
            const char *text;
            double value;
        } cases[] = {
            {"0", 0}, {"2.5", 2.5}, {"1e3", 1000}, {"0.001", 0.001}, {"7", 7}};
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            snprintf(kv, sizeof kv, "%s=%s", d->name, cases[i].text);
            memset(&p, 0, sizeof p);
            ck_assert_msg(quota_patch_parse_kv(&p, kv, msg) == 0, "%s: %s", kv,
                          msg);
            double v;
            memcpy(&v, field_cptr(&p, d), sizeof v);
            ck_assert_double_eq(v, cases[i].value);
            ck_assert_uint_eq(p.set, BIT(id));
        }
        break;
    }
    case QFT_BOOL: {
        static const struct
        {
            const char *text;
            bool value;
        } cases[] = {
            {"true", true}, {"1", true}, {"false", false}, {"0", false}};
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            snprintf(kv, sizeof kv, "%s=%s", d->name, cases[i].text);
            memset(&p, 0, sizeof p);
            /* Start from the opposite, so a no-op parse cannot pass. */
            *(bool *)((char *)&p + d->offset) = !cases[i].value;
            ck_assert_msg(quota_patch_parse_kv(&p, kv, msg) == 0, "%s: %s", kv,
                          msg);
            ck_assert(*(const bool *)field_cptr(&p, d) == cases[i].value);
            ck_assert_uint_eq(p.set, BIT(id));
        }
        break;
    }
    case QFT_ENUM: {
        /* "unset" (index 0 of kind) is not for users. */
        int first =
            d->enum_names[0] != NULL && strcmp(d->enum_names[0], "unset") == 0
                ? 1
                : 0;
        for (int i = first; d->enum_names[i] != NULL; i++) {
            snprintf(kv, sizeof kv, "%s=%s", d->name, d->enum_names[i]);
            memset(&p, 0xff, sizeof p);
            p.set = 0;
            ck_assert_msg(quota_patch_parse_kv(&p, kv, msg) == 0, "%s: %s", kv,
                          msg);
            ck_assert_uint_eq(*(const uint8_t *)field_cptr(&p, d), (unsigned)i);
            ck_assert_uint_eq(p.set, BIT(id));
        }
        break;
    }
    case QFT_NAME: {
        char name64[QUOTA_SEGMENT_MAX + 1];
        memset(name64, 'n', QUOTA_SEGMENT_MAX);
        name64[QUOTA_SEGMENT_MAX] = '\0';
        const char *cases[] = {"a", "edge-EU_1", name64};
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            snprintf(kv, sizeof kv, "%s=%s", d->name, cases[i]);
            memset(&p, 0, sizeof p);
            ck_assert_msg(quota_patch_parse_kv(&p, kv, msg) == 0, "%s: %s", kv,
                          msg);
            ck_assert_str_eq(field_cptr(&p, d), cases[i]);
            ck_assert_uint_eq(p.set, BIT(id));
        }
        break;
    }
    }
}

/* Bad values: refused, the patch untouched, and the message naming the key
 * and what is allowed. */
static void check_bad_values(const struct quota_field_desc *d)
{
    static char too_long[100];
    memset(too_long, '1', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    static char name65[QUOTA_SEGMENT_MAX + 2];
    memset(name65, 'n', QUOTA_SEGMENT_MAX + 1);
    name65[QUOTA_SEGMENT_MAX + 1] = '\0';

    const char *u64_bad[] = {"-1",
                             "18446744073709551616",
                             "99999999999999999999999",
                             "1.5",
                             "",
                             "abc",
                             "+1",
                             " 1",
                             "1 ",
                             "0x10",
                             "nan",
                             "inf",
                             "1e3",
                             NULL};
    const char *double_bad[] = {"nan",      "NaN", "-nan", "inf",   "-inf",
                                "infinity", "-1",  "-0.5", "1e999", "",
                                "abc",      "1x",  "1 ",   "--1",   NULL};
    const char *bool_bad[] = {"yes", "", "TRUE", "2", "truex", "f", NULL};
    const char *enum_bad[] = {"bogus", "", "REJECT", "Rate", "unset", NULL};
    const char *name_bad[] = {"", name65, "a/b", "a b", "a.b", "é", NULL};
    const char **bad = NULL;
    const char *says = NULL;
    switch (d->type) {
    case QFT_U64:
        bad = u64_bad;
        says = "whole number from 0 to 18446744073709551615";
        break;
    case QFT_DOUBLE:
        bad = double_bad;
        says = "finite number >= 0";
        break;
    case QFT_BOOL:
        bad = bool_bad;
        says = "is not true or false";
        break;
    case QFT_ENUM:
        bad = enum_bad;
        says = "is not one of";
        break;
    case QFT_NAME:
        bad = name_bad;
        says = "[A-Za-z0-9_-]{1,64}";
        break;
    }
    for (size_t i = 0; bad[i] != NULL; i++) {
        if (d->type == QFT_ENUM && strcmp(bad[i], "unset") == 0 &&
            strcmp(d->enum_names[0], "unset") != 0) {
            continue;
        }
        char kv[200];
        char msg[ALLOT_ERRMSG_SIZE] = "";
        snprintf(kv, sizeof kv, "%s=%s", d->name, bad[i]);
        struct quota_fields p, before;
        memset(&p, 0, sizeof p);
        p.set = BIT(QF_KIND); /* an earlier KEY=VALUE stays as it was */
        p.kind = QUOTA_KIND_RATE;
        memcpy(&before, &p, sizeof p);
        ck_assert_msg(quota_patch_parse_kv(&p, kv, msg) == ALLOT_EINVALID,
                      "%s accepted", kv);
        ck_assert_msg(memcmp(&p, &before, sizeof p) == 0,
                      "%s changed the patch", kv);
        assert_has(msg, d->name);
        assert_has(msg, says);
        if (d->type == QFT_ENUM) {
            /* Lists every value a user may give, and only those. */
            for (int j = 0; d->enum_names[j] != NULL; j++) {
                if (strcmp(d->enum_names[j], "unset") == 0) {
                    assert_lacks(msg, "unset,");
                } else {
                    assert_has(msg, d->enum_names[j]);
                }
            }
        }
    }
    /* Far too long for any number. */
    if (d->type != QFT_NAME) {
        char kv[200];
        char msg[ALLOT_ERRMSG_SIZE] = "";
        snprintf(kv, sizeof kv, "%s=%s", d->name, too_long);
        struct quota_fields p;
        memset(&p, 0, sizeof p);
        ck_assert_int_eq(quota_patch_parse_kv(&p, kv, msg), ALLOT_EINVALID);
        ck_assert_uint_eq(p.set, 0);
        assert_has(msg, d->name);
    }
}

START_TEST(kv_every_field)
{
    const struct quota_field_desc *d = &quota_field_table[_i];
    check_good_values(d);
    check_bad_values(d);
}
END_TEST

START_TEST(kv_enum_lists)
{
    char msg[ALLOT_ERRMSG_SIZE];
    struct quota_fields p;
    memset(&p, 0, sizeof p);
    ck_assert_int_eq(quota_patch_parse_kv(&p, "kind=unset", msg),
                     ALLOT_EINVALID);
    assert_has(msg, "is not one of capacity, rate");
    ck_assert_int_eq(quota_patch_parse_kv(&p, "on_exceed=drop", msg),
                     ALLOT_EINVALID);
    assert_has(msg, "reject, shadow, delay");
    ck_assert_int_eq(quota_patch_parse_kv(&p, "unit=bits", msg),
                     ALLOT_EINVALID);
    assert_has(msg, "requests, bytes");
    ck_assert_int_eq(quota_patch_parse_kv(&p, "share=fair", msg),
                     ALLOT_EINVALID);
    assert_has(msg, "equal, weighted, demand");
    ck_assert_uint_eq(p.set, 0);
}
END_TEST

START_TEST(kv_unknown_key)
{
    const char *bad[] = {
        "bogus=1",     "=1",         "Rate=1",  "guaranteed=5",
        "memory_mb=5", "max.apps=1", "rate =1", "guaranteed.memory_mb.x=1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char msg[ALLOT_ERRMSG_SIZE] = "";
        struct quota_fields p;
        memset(&p, 0, sizeof p);
        ck_assert_msg(quota_patch_parse_kv(&p, bad[i], msg) == ALLOT_EINVALID,
                      "%s accepted", bad[i]);
        ck_assert_uint_eq(p.set, 0);
        assert_has(msg, "unknown field");
        assert_has(msg, "allowed:");
        for (unsigned j = 0; j < QF_COUNT; j++) {
            assert_has(msg, quota_field_table[j].name);
        }
    }
    char msg[ALLOT_ERRMSG_SIZE];
    struct quota_fields p;
    memset(&p, 0, sizeof p);
    ck_assert_int_eq(quota_patch_parse_kv(&p, "rate", msg), ALLOT_EINVALID);
    assert_has(msg, "is not KEY=VALUE");
    ck_assert_int_eq(quota_patch_parse_kv(&p, "", msg), ALLOT_EINVALID);
    /* The first '=' splits: the rest is the value. */
    ck_assert_int_eq(quota_patch_parse_kv(&p, "fleet=a=b", msg),
                     ALLOT_EINVALID);
    assert_has(msg, "\"a=b\"");
    ck_assert_uint_eq(p.set, 0);
}
END_TEST

START_TEST(kv_accumulates)
{
    struct quota_fields p;
    parse(&p, "kind=rate", "rate=100", "burst=5", "rate=50", NULL);
    ck_assert_uint_eq(p.set, BIT(QF_KIND) | BIT(QF_RATE) | BIT(QF_BURST));
    ck_assert_double_eq(p.rate, 50); /* the last one wins */
    ck_assert_uint_eq(p.burst, 5);
    ck_assert_uint_eq(p.kind, QUOTA_KIND_RATE);
}
END_TEST

/* --- Patch check --- */

START_TEST(patch_check_rules)
{
    char msg[ALLOT_ERRMSG_SIZE];
    struct quota_fields p;

    memset(&p, 0, sizeof p);
    ck_assert_int_eq(quota_patch_check(&p, msg), ALLOT_EINVALID);
    assert_has(msg, "nothing to set");

    parse(&p, "rate=5", "max_apps=3", NULL);
    ck_assert_int_eq(quota_patch_check(&p, msg), ALLOT_EINVALID);
    assert_has(msg, "max_apps");
    assert_has(msg, "rate");
    assert_has(msg, "different kinds");

    parse(&p, "guaranteed.vcores=2", "burst=3", NULL);
    ck_assert_int_eq(quota_patch_check(&p, msg), ALLOT_EINVALID);
    assert_has(msg, "guaranteed.vcores");
    assert_has(msg, "burst");

    parse(&p, "kind=capacity", "rate=5", NULL);
    ck_assert_int_eq(quota_patch_check(&p, msg), ALLOT_EINVALID);
    assert_has(msg, "rate does not apply to kind capacity");

    parse(&p, "kind=rate", "max.memory_mb=5", NULL);
    ck_assert_int_eq(quota_patch_check(&p, msg), ALLOT_EINVALID);
    assert_has(msg, "max.memory_mb does not apply to kind rate");

    /* Fields common to both kinds go with either. */
    parse(&p, "on_exceed=shadow", NULL);
    ck_assert_int_eq(quota_patch_check(&p, msg), 0);
    parse(&p, "kind=capacity", "on_exceed=shadow", "max_apps=1", NULL);
    ck_assert_int_eq(quota_patch_check(&p, msg), 0);
    parse(&p, "kind=rate", "rate=1", "burst=2", "unit=bytes", "fleet=x",
          "share=weighted", "per_key=true", "on_exceed=delay",
          "max_delay_ms=10", NULL);
    ck_assert_int_eq(quota_patch_check(&p, msg), 0);
    parse(&p, "guaranteed.memory_mb=1", "guaranteed.vcores=1",
          "max.memory_mb=2", "max.vcores=2", "max_apps=3", NULL);
    ck_assert_int_eq(quota_patch_check(&p, msg), 0);
}
END_TEST

/* --- Patch codec --- */

/* Distinct non-zero values in every field. */
static void full_patch(struct quota_fields *p)
{
    memset(p, 0, sizeof *p);
    p->kind = QUOTA_KIND_RATE;
    p->guaranteed_memory_mb = 1001;
    p->guaranteed_vcores = 1002;
    p->max_memory_mb = 1003;
    p->max_vcores = 1004;
    p->max_apps = 1005;
    p->rate = 12.625;
    p->burst = UINT64_MAX;
    p->unit = QUOTA_UNIT_BYTES;
    p->share = QUOTA_SHARE_DEMAND;
    p->per_key = true;
    strcpy(p->fleet, "edge-eu_1");
    p->on_exceed = QUOTA_EXCEED_DELAY;
    p->max_delay_ms = 1007;
    p->set = ALL_FIELDS;
}

/* Pack p as a patch, unpack it into *out; returns the top-level count. */
static unsigned patch_round_trip(const struct quota_fields *p,
                                 struct quota_fields *out)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    unsigned n = quota_fields_pack(NULL, p, true);
    msgpack_pack_map(&pk, n);
    ck_assert_uint_eq(quota_fields_pack(&pk, p, true), n);

    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_msg(wire_unpack(sb.data, sb.size, &u, msg) == 0, "%s", msg);
    ck_assert_uint_eq(u.data.via.map.size, n);
    memset(out, 0xee, sizeof *out);
    ck_assert_msg(quota_patch_unpack(&u.data, out, msg) == 0, "set %#x: %s",
                  p->set, msg);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return n;
}

/* Every subset of the fields survives pack and unpack: exactly the set
 * fields come back, with their values, and nothing else. */
START_TEST(patch_round_trip_every_subset)
{
    struct quota_fields full;
    full_patch(&full);
    for (uint32_t mask = 0; mask <= ALL_FIELDS; mask++) {
        struct quota_fields p = full, back;
        p.set = mask;
        patch_round_trip(&p, &back);
        ck_assert_uint_eq(back.set, mask);
        for (unsigned i = 0; i < QF_COUNT; i++) {
            const struct quota_field_desc *d = &quota_field_table[i];
            if (mask & BIT(i)) {
                ck_assert_msg(field_eq(d, &p, &back), "mask %#x: %s differs",
                              mask, d->name);
            } else {
                ck_assert_msg(field_is_zero(d, &back),
                              "mask %#x: unset %s came back", mask, d->name);
            }
        }
    }
    /* Groups pack as one entry each. */
    struct quota_fields p = full, back;
    p.set = BIT(QF_GUARANTEED_MEMORY_MB) | BIT(QF_GUARANTEED_VCORES) |
            BIT(QF_MAX_VCORES);
    ck_assert_uint_eq(patch_round_trip(&p, &back), 2);
}
END_TEST

START_TEST(patch_round_trip_edge_values)
{
    struct quota_fields p, back;
    memset(&p, 0, sizeof p);
    p.set = ALL_FIELDS;
    p.kind = QUOTA_KIND_CAPACITY;
    strcpy(p.fleet, "f");
    p.rate = 0.1; /* not exact in binary: must still round trip */
    patch_round_trip(&p, &back);
    ck_assert_uint_eq(back.set, ALL_FIELDS);
    assert_fields_eq(&p, &back);
    p.rate = 1e300;
    p.burst = UINT64_MAX;
    patch_round_trip(&p, &back);
    assert_fields_eq(&p, &back);
}
END_TEST

/* Build a map with packer calls in `build` and run quota_patch_unpack. */
static int unpack_built(void (*build)(msgpack_packer *), char *msg)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    build(&pk);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, msg), 0);
    struct quota_fields p;
    msg[0] = '\0';
    int rv = quota_patch_unpack(&u.data, &p, msg);
    if (rv != 0) {
        ck_assert_int_eq(rv, ALLOT_EINVALID);
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return rv;
}

static void b_not_map(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 0);
}
static void b_int_key(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    msgpack_pack_uint64(pk, 1);
    msgpack_pack_uint64(pk, 1);
}
static void b_unknown(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "bogus_key", 1);
}
static void b_meta(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "path", "a/b");
}
static void b_group_not_map(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "guaranteed", 5);
}
static void b_group_unknown_leaf(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "max");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "disk_gb", 5);
}
static void b_group_nested_group(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "max");
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "guaranteed");
    msgpack_pack_map(pk, 0);
}
static void b_leaf_at_top(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "memory_mb", 5);
}
static void b_burst_str(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "burst", "5");
}
static void b_burst_neg(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "burst");
    msgpack_pack_int64(pk, -5);
}
static void b_burst_float(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "burst");
    msgpack_pack_double(pk, 5.0);
}
static void b_rate_str(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "rate", "5");
}
static void b_rate_neg(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "rate");
    msgpack_pack_double(pk, -1.0);
}
static void b_rate_neg_int(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "rate");
    msgpack_pack_int64(pk, -1);
}
static void b_rate_nan(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "rate");
    msgpack_pack_double(pk, NAN);
}
static void b_rate_inf(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "rate");
    msgpack_pack_float(pk, INFINITY);
}
static void b_per_key_int(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "per_key", 1);
}
static void b_unit_int(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "unit", 1);
}
static void b_unit_bogus(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "unit", "bits");
}
static void b_kind_unset(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "kind", "unset");
}
static void b_fleet_bad(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "fleet", "a/b");
}
static void b_fleet_bin(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "fleet");
    msgpack_pack_bin(pk, 1);
    msgpack_pack_bin_body(pk, "a", 1);
}
static void b_rate_int(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    wire_pack_kv_u64(pk, "rate", 7);
    wire_pack_str(pk, "guaranteed");
    msgpack_pack_map(pk, 0);
}

START_TEST(patch_unpack_errors)
{
    static const struct
    {
        void (*build)(msgpack_packer *);
        const char *says[2];
    } cases[] = {
        {b_not_map, {"must be a map", NULL}},
        {b_int_key, {"field names must be strings", NULL}},
        {b_unknown, {"unknown field \"bogus_key\"", "allowed: kind"}},
        {b_meta, {"unknown field \"path\"", NULL}},
        {b_group_not_map, {"guaranteed must be a map", NULL}},
        {b_group_unknown_leaf, {"unknown field \"max.disk_gb\"", NULL}},
        {b_group_nested_group, {"unknown field \"max.guaranteed\"", NULL}},
        {b_leaf_at_top, {"unknown field \"memory_mb\"", NULL}},
        {b_burst_str, {"burst", "non-negative integer"}},
        {b_burst_neg, {"burst", "non-negative integer"}},
        {b_burst_float, {"burst", "non-negative integer"}},
        {b_rate_str, {"rate must be a number", NULL}},
        {b_rate_neg, {"rate", "finite number >= 0"}},
        {b_rate_neg_int, {"rate", NULL}},
        {b_rate_nan, {"rate", "finite number >= 0"}},
        {b_rate_inf, {"rate", "finite number >= 0"}},
        {b_per_key_int, {"per_key must be a boolean", NULL}},
        {b_unit_int, {"unit must be a string", NULL}},
        {b_unit_bogus, {"unit", "requests, bytes"}},
        {b_kind_unset, {"kind", "capacity, rate"}},
        {b_fleet_bad, {"fleet", "[A-Za-z0-9_-]{1,64}"}},
        {b_fleet_bin, {"fleet must be a string", NULL}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char msg[ALLOT_ERRMSG_SIZE];
        ck_assert_msg(unpack_built(cases[i].build, msg) == ALLOT_EINVALID,
                      "case %zu accepted", i);
        for (int j = 0; j < 2; j++) {
            if (cases[i].says[j] != NULL) {
                assert_has(msg, cases[i].says[j]);
            }
        }
    }
    /* An integer rate is a number; an empty group is no field at all. */
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(unpack_built(b_rate_int, msg), 0);
}
END_TEST

/* --- Whole quotas --- */

static void quota_round_trip(const struct quota *q, struct quota *back)
{
    msgpack_sbuffer sb, sb2;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    quota_pack(&pk, q);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_msg(wire_unpack(sb.data, sb.size, &u, msg) == 0, "%s", msg);
    ck_assert_msg(quota_unpack(&u.data, back, msg) == 0, "%s", msg);
    msgpack_unpacked_destroy(&u);

    /* Packing what came back gives the same bytes. */
    msgpack_sbuffer_init(&sb2);
    msgpack_packer_init(&pk, &sb2, msgpack_sbuffer_write);
    quota_pack(&pk, back);
    ck_assert_uint_eq(sb2.size, sb.size);
    ck_assert_mem_eq(sb2.data, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb2);
    msgpack_sbuffer_destroy(&sb);
}

static void assert_quota_eq(const struct quota *a, const struct quota *b)
{
    ck_assert_str_eq(a->path, b->path);
    ck_assert_uint_eq(a->version, b->version);
    ck_assert_uint_eq(a->created_ms, b->created_ms);
    ck_assert_uint_eq(a->updated_ms, b->updated_ms);
    ck_assert_uint_eq(b->f.set, 0);
    ck_assert_uint_eq(a->f.kind, b->f.kind);
    for (unsigned i = 0; i < QF_COUNT; i++) {
        const struct quota_field_desc *d = &quota_field_table[i];
        if (quota_field_applies(d, a->f.kind)) {
            ck_assert_msg(field_eq(d, &a->f, &b->f), "%s differs", d->name);
        } else {
            ck_assert_msg(field_is_zero(d, &b->f), "%s not zero", d->name);
        }
    }
    ck_assert_uint_eq(a->n_owners, b->n_owners);
    for (uint32_t i = 0; i < a->n_owners; i++) {
        ck_assert_str_eq(a->owners[i], b->owners[i]);
    }
}

START_TEST(quota_round_trip_capacity)
{
    char *owners[] = {"user:alice", "group:infra"};
    struct quota q = {.path = "org/team-1/batch_x",
                      .version = 17,
                      .created_ms = 1700000000000ull,
                      .updated_ms = 1700000000999ull,
                      .owners = owners,
                      .n_owners = 2};
    char msg[ALLOT_ERRMSG_SIZE];
    struct quota_fields patch;
    parse(&patch, "kind=capacity", "guaranteed.memory_mb=4096",
          "guaranteed.vcores=4", "max.memory_mb=8192", "max.vcores=8",
          "max_apps=12", "on_exceed=shadow", NULL);
    ck_assert_int_eq(quota_fields_defaults(&patch, &q.f, msg), 0);
    ck_assert_int_eq(quota_fields_merge(&q.f, &patch, msg), 0);
    struct quota back;
    quota_round_trip(&q, &back);
    assert_quota_eq(&q, &back);
    quota_free(&back);
    ck_assert_ptr_null(back.path);
    ck_assert_ptr_null(back.owners);
}
END_TEST

START_TEST(quota_round_trip_rate)
{
    struct quota q = {.path = "tenant", .version = 1, .updated_ms = 5};
    char msg[ALLOT_ERRMSG_SIZE];
    struct quota_fields patch;
    parse(&patch, "rate=0.1", "burst=3", "unit=bytes", "fleet=eu-west",
          "share=weighted", "per_key=true", "on_exceed=delay",
          "max_delay_ms=250", NULL);
    ck_assert_int_eq(quota_fields_defaults(&patch, &q.f, msg), 0);
    ck_assert_int_eq(quota_fields_merge(&q.f, &patch, msg), 0);
    struct quota back;
    quota_round_trip(&q, &back);
    assert_quota_eq(&q, &back);
    ck_assert_uint_eq(back.n_owners, 0);
    quota_free(&back);
}
END_TEST

static int unpack_quota_built(void (*build)(msgpack_packer *), char *msg)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    build(&pk);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, msg), 0);
    struct quota q;
    msg[0] = '\0';
    int rv = quota_unpack(&u.data, &q, msg);
    if (rv == 0) {
        quota_free(&q);
    } else {
        /* Nothing half-built is left to free. */
        ck_assert_ptr_null(q.path);
        ck_assert_ptr_null(q.owners);
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return rv;
}

/* A quota map with optional breakage. */
static int qb_mode;
enum {
    QB_OK,
    QB_NO_PATH,
    QB_BAD_PATH,
    QB_NO_VERSION,
    QB_NO_KIND,
    QB_OWNERS_NOT_ARRAY,
    QB_OWNERS_TOO_MANY,
    QB_OWNER_NOT_STR,
    QB_OWNER_NO_KIND,    /* "alice": neither user: nor group: */
    QB_OWNER_EMPTY_NAME, /* "user:" */
    QB_OWNER_BAD_NAME,   /* "group:a b" */
    QB_UNKNOWN_FIELD,
    QB_COUNT
};

/* The capacity fields besides kind and max_apps, as quota_pack() writes
 * them: three map entries. */
static void pack_capacity_rest(msgpack_packer *pk)
{
    const char *groups[] = {"guaranteed", "max"};
    for (int i = 0; i < 2; i++) {
        wire_pack_str(pk, groups[i]);
        msgpack_pack_map(pk, 2);
        wire_pack_kv_u64(pk, "memory_mb", 512);
        wire_pack_kv_u64(pk, "vcores", 1);
    }
    wire_pack_kv_str(pk, "on_exceed", "reject");
}

static void qb_build(msgpack_packer *pk)
{
    uint32_t n = 7 + 3;
    if (qb_mode == QB_NO_PATH || qb_mode == QB_NO_VERSION ||
        qb_mode == QB_NO_KIND) {
        n--;
    }
    if (qb_mode == QB_UNKNOWN_FIELD) {
        n++;
    }
    msgpack_pack_map(pk, n);
    if (qb_mode != QB_NO_PATH) {
        wire_pack_kv_str(pk, "path", qb_mode == QB_BAD_PATH ? "a//b" : "a/b");
    }
    if (qb_mode != QB_NO_VERSION) {
        wire_pack_kv_u64(pk, "version", 3);
    }
    wire_pack_kv_u64(pk, "created_ms", 1);
    wire_pack_kv_u64(pk, "updated_ms", 2);
    if (qb_mode != QB_NO_KIND) {
        wire_pack_kv_str(pk, "kind", "capacity");
    }
    wire_pack_kv_u64(pk, "max_apps", 4);
    pack_capacity_rest(pk);
    wire_pack_str(pk, "owners");
    switch (qb_mode) {
    case QB_OWNERS_NOT_ARRAY:
        wire_pack_str(pk, "user:a");
        break;
    case QB_OWNERS_TOO_MANY:
        msgpack_pack_array(pk, QUOTA_OWNERS_MAX + 1);
        for (int i = 0; i <= QUOTA_OWNERS_MAX; i++) {
            wire_pack_str(pk, "user:a");
        }
        break;
    case QB_OWNER_NOT_STR:
        msgpack_pack_array(pk, 2);
        wire_pack_str(pk, "user:a");
        msgpack_pack_uint64(pk, 1);
        break;
    case QB_OWNER_NO_KIND:
    case QB_OWNER_EMPTY_NAME:
    case QB_OWNER_BAD_NAME:
        msgpack_pack_array(pk, 2);
        wire_pack_str(pk, "group:infra");
        wire_pack_str(pk, qb_mode == QB_OWNER_NO_KIND      ? "alice"
                          : qb_mode == QB_OWNER_EMPTY_NAME ? "user:"
                                                           : "group:a b");
        break;
    default:
        msgpack_pack_array(pk, QUOTA_OWNERS_MAX);
        for (int i = 0; i < QUOTA_OWNERS_MAX; i++) {
            wire_pack_str(pk, "user:a");
        }
        break;
    }
    if (qb_mode == QB_UNKNOWN_FIELD) {
        wire_pack_kv_u64(pk, "colour", 1);
    }
}

/* A rate quota from a peer that leaves out fields of its kind: whatever
 * quota_unpack() accepts, quota_pack() must write back in a form that
 * quota_unpack() accepts again (a replica restores what it snapshots). */
static void b_rate_quota_no_fleet(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 7);
    wire_pack_kv_str(pk, "path", "tenant");
    wire_pack_kv_u64(pk, "version", 1);
    wire_pack_kv_u64(pk, "created_ms", 1);
    wire_pack_kv_u64(pk, "updated_ms", 1);
    wire_pack_kv_str(pk, "kind", "rate");
    wire_pack_kv_u64(pk, "rate", 5);
    wire_pack_str(pk, "owners");
    msgpack_pack_array(pk, 0);
}

START_TEST(quota_unpack_accepts_only_what_packs_back)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    b_rate_quota_no_fleet(&pk);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, msg), 0);
    struct quota q;
    int rv = quota_unpack(&u.data, &q, msg);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    if (rv != 0) {
        /* Refusing an incomplete quota is one fix. */
        ck_assert_int_eq(rv, ALLOT_EINVALID);
        ck_assert_str_ne(msg, "");
        return;
    }
    /* Accepted: then it must survive its own encoding. */
    struct quota back;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    quota_pack(&pk, &q);
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, msg), 0);
    rv = quota_unpack(&u.data, &back, msg);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    quota_free(&q);
    ck_assert_msg(rv == 0, "accepted, packed, then refused: %s", msg);
    quota_free(&back);
}
END_TEST

START_TEST(quota_unpack_errors)
{
    static const char *says[QB_COUNT] = {
        [QB_NO_PATH] = "missing field path",
        [QB_BAD_PATH] = "bad path segment",
        [QB_NO_VERSION] = "missing field version",
        [QB_NO_KIND] = "quota without a kind",
        [QB_OWNERS_NOT_ARRAY] = "owners must be an array of at most 32",
        [QB_OWNERS_TOO_MANY] = "owners must be an array of at most 32",
        [QB_OWNER_NOT_STR] = "owners are user:NAME or group:NAME",
        [QB_OWNER_NO_KIND] = "owners are user:NAME or group:NAME",
        [QB_OWNER_EMPTY_NAME] = "owners are user:NAME or group:NAME",
        [QB_OWNER_BAD_NAME] = "owners are user:NAME or group:NAME",
        [QB_UNKNOWN_FIELD] = "unknown field \"colour\"",
    };
    for (qb_mode = 0; qb_mode < QB_COUNT; qb_mode++) {
        char msg[ALLOT_ERRMSG_SIZE];
        int rv = unpack_quota_built(qb_build, msg);
        if (qb_mode == QB_OK) {
            ck_assert_msg(rv == 0, "%s", msg);
            continue;
        }
        ck_assert_msg(rv == ALLOT_EINVALID, "mode %d: %d", qb_mode, rv);
        assert_has(msg, says[qb_mode]);
    }
}
END_TEST

/* --- Defaults --- */

START_TEST(defaults_rate)
{
    static const struct
    {
        const char *rate;
        uint64_t burst;
        bool valid; /* defaults plus patch make a valid quota */
    } cases[] = {{"rate=10", 10, true},
                 {"rate=10.2", 11, true},
                 {"rate=0.3", 1, true},
                 {"rate=0.999", 1, true},
                 {"rate=1", 1, true},
                 {"rate=1.0001", 2, true},
                 {"rate=1e12", 1000000000000ull, true},
                 /* Beyond QUOTA_RATE_MAX: the default burst is still
                  * capped at 1e18, but merge refuses the rate itself. */
                 {"rate=1e30", 1000000000000000000ull, false}};
    char msg[ALLOT_ERRMSG_SIZE];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct quota_fields p, out;
        parse(&p, cases[i].rate, NULL);
        memset(&out, 0xee, sizeof out);
        ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), 0);
        ck_assert_uint_eq(out.kind, QUOTA_KIND_RATE);
        ck_assert_msg(out.burst == cases[i].burst, "%s: burst %llu",
                      cases[i].rate, (unsigned long long)out.burst);
        ck_assert_str_eq(out.fleet, "default");
        ck_assert_uint_eq(out.unit, QUOTA_UNIT_REQUESTS);
        ck_assert_uint_eq(out.share, QUOTA_SHARE_EQUAL);
        ck_assert_uint_eq(out.on_exceed, QUOTA_EXCEED_REJECT);
        ck_assert(!out.per_key);
        ck_assert_uint_eq(out.max_delay_ms, 0);
        ck_assert_uint_eq(out.set, 0);
        if (!cases[i].valid) {
            struct quota_fields before;
            memcpy(&before, &out, sizeof out);
            ck_assert_int_eq(quota_fields_merge(&out, &p, msg), ALLOT_EINVALID);
            assert_has(msg, "at most 1e12");
            ck_assert_mem_eq(&before, &out, sizeof out);
            continue;
        }
        /* The defaults plus the patch make a valid quota. */
        ck_assert_msg(quota_fields_merge(&out, &p, msg) == 0, "%s", msg);
        ck_assert_uint_eq(out.burst, cases[i].burst);
    }
    /* An explicit burst wins over the default. */
    struct quota_fields p, out;
    parse(&p, "rate=100", "burst=7", NULL);
    ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), 0);
    ck_assert_int_eq(quota_fields_merge(&out, &p, msg), 0);
    ck_assert_uint_eq(out.burst, 7);
    ck_assert_double_eq(out.rate, 100);
    /* kind=rate alone: defaults exist, but a quota needs a rate. */
    parse(&p, "kind=rate", NULL);
    ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), 0);
    ck_assert_uint_eq(out.burst, 1);
    ck_assert_int_eq(quota_fields_merge(&out, &p, msg), ALLOT_EINVALID);
    assert_has(msg, "rate must be > 0");
    /* The kind can be implied by any rate-only field. */
    parse(&p, "fleet=x", NULL);
    ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), 0);
    ck_assert_uint_eq(out.kind, QUOTA_KIND_RATE);
}
END_TEST

START_TEST(defaults_capacity)
{
    char msg[ALLOT_ERRMSG_SIZE];
    struct quota_fields p, out;
    parse(&p, "max_apps=3", NULL);
    memset(&out, 0xee, sizeof out);
    ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), 0);
    ck_assert_uint_eq(out.kind, QUOTA_KIND_CAPACITY);
    for (unsigned i = 1; i < QF_COUNT; i++) {
        ck_assert_msg(field_is_zero(&quota_field_table[i], &out), "%s not zero",
                      quota_field_table[i].name);
    }
    ck_assert_uint_eq(out.on_exceed, QUOTA_EXCEED_REJECT);
    ck_assert_int_eq(quota_fields_merge(&out, &p, msg), 0);
    ck_assert_uint_eq(out.max_apps, 3);

    parse(&p, "kind=capacity", NULL);
    ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), 0);
    ck_assert_uint_eq(out.kind, QUOTA_KIND_CAPACITY);
    ck_assert_int_eq(quota_fields_merge(&out, &p, msg), 0);
}
END_TEST

START_TEST(defaults_need_a_kind)
{
    char msg[ALLOT_ERRMSG_SIZE];
    struct quota_fields p, out;
    parse(&p, "on_exceed=shadow", NULL);
    ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), ALLOT_EINVALID);
    assert_has(msg, "kind=capacity or kind=rate");
    parse(&p, "rate=1", "max_apps=1", NULL);
    ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), ALLOT_EINVALID);
    assert_has(msg, "different kinds");
    memset(&p, 0, sizeof p);
    ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), ALLOT_EINVALID);
}
END_TEST

/* --- Merge --- */

static void make_quota(struct quota_fields *q, ...)
{
    struct quota_fields p;
    char msg[ALLOT_ERRMSG_SIZE];
    va_list ap;
    memset(&p, 0, sizeof p);
    va_start(ap, q);
    const char *kv;
    while ((kv = va_arg(ap, const char *)) != NULL) {
        ck_assert_msg(quota_patch_parse_kv(&p, kv, msg) == 0, "%s", msg);
    }
    va_end(ap);
    ck_assert_msg(quota_fields_defaults(&p, q, msg) == 0, "%s", msg);
    ck_assert_msg(quota_fields_merge(q, &p, msg) == 0, "%s", msg);
}

/* Merge must fail with EINVALID, saying `says`, and leave q as it was. */
static void merge_refused(const struct quota_fields *q0,
                          const struct quota_fields *patch, const char *says)
{
    struct quota_fields q;
    memcpy(&q, q0, sizeof q);
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_int_eq(quota_fields_merge(&q, patch, msg), ALLOT_EINVALID);
    assert_has(msg, says);
    ck_assert_msg(memcmp(&q, q0, sizeof q) == 0, "refused merge changed q");
}

START_TEST(merge_updates_only_set_fields)
{
    struct quota_fields q, before, p;
    char msg[ALLOT_ERRMSG_SIZE];
    make_quota(&q, "rate=10", "burst=20", "unit=bytes", "fleet=f1",
               "per_key=true", NULL);
    before = q;
    parse(&p, "rate=5", "share=demand", NULL);
    ck_assert_int_eq(quota_fields_merge(&q, &p, msg), 0);
    ck_assert_uint_eq(q.set, 0);
    ck_assert_double_eq(q.rate, 5);
    ck_assert_uint_eq(q.share, QUOTA_SHARE_DEMAND);
    for (unsigned i = 0; i < QF_COUNT; i++) {
        if (i == QF_RATE || i == QF_SHARE) {
            continue;
        }
        const struct quota_field_desc *d = &quota_field_table[i];
        ck_assert_msg(field_eq(d, &q, &before), "%s changed", d->name);
    }
    /* Restating the kind is fine. */
    parse(&p, "kind=rate", "burst=1", NULL);
    ck_assert_int_eq(quota_fields_merge(&q, &p, msg), 0);
    ck_assert_uint_eq(q.burst, 1);
    /* Fields common to both kinds go into either. */
    struct quota_fields c;
    make_quota(&c, "kind=capacity", NULL);
    parse(&p, "on_exceed=shadow", NULL);
    ck_assert_int_eq(quota_fields_merge(&c, &p, msg), 0);
    ck_assert_uint_eq(c.on_exceed, QUOTA_EXCEED_SHADOW);
}
END_TEST

START_TEST(merge_refuses_kind_change)
{
    struct quota_fields rate, cap, p;
    make_quota(&rate, "rate=10", NULL);
    make_quota(&cap, "max_apps=1", NULL);
    parse(&p, "kind=capacity", NULL);
    merge_refused(&rate, &p, "cannot change kind from rate to capacity");
    parse(&p, "kind=rate", "rate=1", NULL);
    merge_refused(&cap, &p, "cannot change kind from capacity to rate");
}
END_TEST

START_TEST(merge_refuses_wrong_kind_fields)
{
    struct quota_fields rate, cap, p;
    make_quota(&rate, "rate=10", NULL);
    make_quota(&cap, "max_apps=1", NULL);
    const char *rate_only[] = {"rate=1",        "burst=2",     "unit=bytes",
                               "fleet=x",       "share=equal", "per_key=false",
                               "max_delay_ms=1"};
    for (size_t i = 0; i < sizeof rate_only / sizeof rate_only[0]; i++) {
        parse(&p, rate_only[i], NULL);
        merge_refused(&cap, &p, "capacity");
    }
    const char *cap_only[] = {"guaranteed.memory_mb=1", "guaranteed.vcores=1",
                              "max.memory_mb=1", "max.vcores=1", "max_apps=1"};
    for (size_t i = 0; i < sizeof cap_only / sizeof cap_only[0]; i++) {
        parse(&p, cap_only[i], NULL);
        merge_refused(&rate, &p, "rate");
    }
    /* A patch whose own fields disagree. */
    parse(&p, "burst=1", "max_apps=1", NULL);
    merge_refused(&rate, &p, "different kinds");
    /* A field that does not apply to the patch's own kind. */
    parse(&p, "kind=rate", "max_apps=1", NULL);
    merge_refused(&rate, &p, "does not apply to kind rate");
}
END_TEST

START_TEST(merge_rate_rules)
{
    struct quota_fields rate, p;
    char msg[ALLOT_ERRMSG_SIZE];
    make_quota(&rate, "rate=10", NULL);
    parse(&p, "rate=0", NULL);
    merge_refused(&rate, &p, "rate must be > 0");
    parse(&p, "burst=0", NULL);
    merge_refused(&rate, &p, "burst must be >= 1");
    parse(&p, "rate=0", "burst=0", NULL);
    merge_refused(&rate, &p, "must be");
    /* Boundaries that are allowed. */
    struct quota_fields q = rate;
    parse(&p, "rate=0.001", "burst=1", NULL);
    ck_assert_int_eq(quota_fields_merge(&q, &p, msg), 0);
    ck_assert_double_eq(q.rate, 0.001);
    ck_assert_uint_eq(q.burst, 1);
    /* Below a thousandth the rules could not count it: refused. */
    parse(&p, "rate=0.0009", NULL);
    merge_refused(&q, &p, "at least 0.001");
    /* QUOTA_RATE_MAX is allowed, anything above it is not. */
    parse(&p, "rate=1e12", NULL);
    ck_assert_int_eq(quota_fields_merge(&q, &p, msg), 0);
    ck_assert_double_eq(q.rate, QUOTA_RATE_MAX);
    parse(&p, "rate=1000000000000.001", NULL);
    merge_refused(&q, &p, "at most 1e12");
    parse(&p, "rate=1e13", NULL);
    merge_refused(&q, &p, "at most 1e12");
    ck_assert_double_eq(q.rate, QUOTA_RATE_MAX);
    /* A new rate quota built from kind=rate alone has no rate. */
    struct quota_fields out;
    parse(&p, "kind=rate", "burst=4", NULL);
    ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), 0);
    ck_assert_int_eq(quota_fields_merge(&out, &p, msg), ALLOT_EINVALID);
    assert_has(msg, "rate must be > 0");
}
END_TEST

START_TEST(merge_delay_only_for_rate)
{
    struct quota_fields rate, cap, p;
    char msg[ALLOT_ERRMSG_SIZE];
    make_quota(&rate, "rate=10", NULL);
    make_quota(&cap, "max_apps=1", NULL);
    parse(&p, "on_exceed=delay", NULL);
    merge_refused(&cap, &p, "on_exceed=delay applies to rate quotas only");
    parse(&p, "on_exceed=reject", NULL);
    ck_assert_int_eq(quota_fields_merge(&cap, &p, msg), 0);
    parse(&p, "on_exceed=delay", "max_delay_ms=50", NULL);
    ck_assert_int_eq(quota_fields_merge(&rate, &p, msg), 0);
    ck_assert_uint_eq(rate.on_exceed, QUOTA_EXCEED_DELAY);
    ck_assert_uint_eq(rate.max_delay_ms, 50);
    /* A new capacity quota cannot start with delay either. */
    struct quota_fields out;
    parse(&p, "kind=capacity", "on_exceed=delay", NULL);
    ck_assert_int_eq(quota_fields_defaults(&p, &out, msg), 0);
    ck_assert_int_eq(quota_fields_merge(&out, &p, msg), ALLOT_EINVALID);
    assert_has(msg, "delay");
}
END_TEST

/* --- Suite --- */

static Suite *quota_suite(void)
{
    Suite *s = suite_create("quota");
    TCase *tc = tcase_create("table");
    tcase_add_test(tc, table_consistent);
    suite_add_tcase(s, tc);

    tc = tcase_create("path");
    tcase_add_test(tc, path_valid);
    tcase_add_test(tc, path_invalid);
    suite_add_tcase(s, tc);

    tc = tcase_create("kv");
    tcase_add_loop_test(tc, kv_every_field, 0, QF_COUNT);
    tcase_add_test(tc, kv_enum_lists);
    tcase_add_test(tc, kv_unknown_key);
    tcase_add_test(tc, kv_accumulates);
    tcase_add_test(tc, patch_check_rules);
    suite_add_tcase(s, tc);

    tc = tcase_create("codec");
    tcase_add_test(tc, patch_round_trip_every_subset);
    tcase_add_test(tc, patch_round_trip_edge_values);
    tcase_add_test(tc, patch_unpack_errors);
    tcase_add_test(tc, quota_round_trip_capacity);
    tcase_add_test(tc, quota_round_trip_rate);
    tcase_add_test(tc, quota_unpack_errors);
    tcase_add_test(tc, quota_unpack_accepts_only_what_packs_back);
    suite_add_tcase(s, tc);

    tc = tcase_create("defaults_merge");
    tcase_add_test(tc, defaults_rate);
    tcase_add_test(tc, defaults_capacity);
    tcase_add_test(tc, defaults_need_a_kind);
    tcase_add_test(tc, merge_updates_only_set_fields);
    tcase_add_test(tc, merge_refuses_kind_change);
    tcase_add_test(tc, merge_refuses_wrong_kind_fields);
    tcase_add_test(tc, merge_rate_rules);
    tcase_add_test(tc, merge_delay_only_for_rate);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(quota_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
