/* test_jepsen_checker.c - the fault-injection checker (jepsen-like/) on
 * hand-made histories: linearizable and not, lost writes, unknown
 * outcomes both ways, replica digests, and malformed input of every kind. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jl_history.h"

/* Load a history given as text (lines separated by \n). Returns 0 or -1
 * with the message in err. */
static int load_text(struct jl_history *h, const char *text, char *err)
{
    jl_history_init(h);
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    ck_assert_ptr_nonnull(f);
    int rv = jl_history_load(h, f, err);
    fclose(f);
    return rv;
}

static void load_ok(struct jl_history *h, const char *text)
{
    char err[JL_ERRMSG_SIZE] = "";
    int rv = load_text(h, text, err);
    ck_assert_msg(rv == 0, "load failed: %s", err);
}

/* Check all keys, returning the verdict and the report (caller frees). */
static enum jl_verdict check(const struct jl_history *h, char **report)
{
    size_t len;
    FILE *out = open_memstream(report, &len);
    ck_assert_ptr_nonnull(out);
    struct jl_stats st = {0};
    enum jl_verdict v = jl_check_linearizable(h, NULL, out, &st);
    fclose(out);
    return v;
}

static void load_final(struct jl_history *h, const char *text, unsigned *failed)
{
    char err[JL_ERRMSG_SIZE] = "";
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    ck_assert_ptr_nonnull(f);
    int rv = jl_history_load_final(h, f, NULL, failed, err);
    fclose(f);
    ck_assert_msg(rv == 0, "final load failed: %s", err);
}

#define INV_W(p, k, v, t)                                                  \
    "{\"process\":" #p ",\"type\":\"invoke\",\"f\":\"write\",\"key\":\"" k \
    "\",\"value\":" #v ",\"time_ns\":" #t "}\n"
#define INV_R(p, k, t)                                                    \
    "{\"process\":" #p ",\"type\":\"invoke\",\"f\":\"read\",\"key\":\"" k \
    "\",\"time_ns\":" #t "}\n"
#define INV_CAS(p, k, e, v, t)                                           \
    "{\"process\":" #p ",\"type\":\"invoke\",\"f\":\"cas\",\"key\":\"" k \
    "\",\"expected\":" #e ",\"value\":" #v ",\"time_ns\":" #t "}\n"
#define DONE(p, type, f, k, t)                                               \
    "{\"process\":" #p ",\"type\":\"" type "\",\"f\":\"" f "\",\"key\":\"" k \
    "\",\"time_ns\":" #t "}\n"
#define READ_OK(p, k, v, t)                                           \
    "{\"process\":" #p ",\"type\":\"ok\",\"f\":\"read\",\"key\":\"" k \
    "\",\"value\":" #v ",\"time_ns\":" #t "}\n"

/* --- Linearizable histories ---------------------------------------------- */

START_TEST(test_valid_concurrent)
{
    /* Three processes overlap on two keys: write 1 and write 2 race, a
     * read in the middle sees 2, a cas 2->3 succeeds, a later read sees 3;
     * key b is untouched by a and starts null. Only the order w1, w2, r,
     * cas, r works; the checker must find it although w2 is invoked last. */
    struct jl_history h;
    load_ok(&h,
            INV_W(0, "a", 1, 100) INV_W(1, "a", 2, 110) INV_R(2, "a", 120)
                READ_OK(2, "a", 2, 200) DONE(0, "ok", "write", "a", 210)
                    DONE(1, "ok", "write", "a", 220) INV_CAS(0, "a", 2, 3, 300)
                        INV_R(1, "b", 305) READ_OK(1, "b", null, 310)
                            DONE(0, "ok", "cas", "a", 400) INV_R(2, "a", 410)
                                READ_OK(2, "a", 3, 420)
                                    INV_CAS(1, "b", null, 7, 500)
                                        DONE(1, "ok", "cas", "b", 510)
                                            INV_R(1, "b", 520)
                                                READ_OK(1, "b", 7, 530));
    ck_assert_uint_eq(h.n_keys, 2);
    ck_assert_uint_eq(h.n_ops, 8);
    char *report = NULL;
    ck_assert_int_eq(check(&h, &report), JL_LINEARIZABLE);
    ck_assert_str_eq(report, "");
    free(report);
    jl_history_free(&h);
}
END_TEST

START_TEST(test_failed_ops_are_ignored)
{
    /* A cas that failed (expected 5, register held 1) and a read that
     * failed change nothing. */
    struct jl_history h;
    load_ok(&h, INV_W(0, "a", 1, 10) DONE(0, "ok", "write", "a", 20)
                    INV_CAS(0, "a", 5, 6, 30) DONE(0, "fail", "cas", "a", 40)
                        INV_R(1, "a", 50) DONE(1, "fail", "read", "a", 60)
                            INV_R(1, "a", 70) READ_OK(1, "a", 1, 80));
    char *report = NULL;
    ck_assert_int_eq(check(&h, &report), JL_LINEARIZABLE);
    free(report);
    jl_history_free(&h);
}
END_TEST

/* --- Anomalies
 * ---------------------------------------------------------------- */

START_TEST(test_stale_read)
{
    /* Write 1, then write 2 completes, then a read begins and returns 1. */
    struct jl_history h;
    load_ok(&h, INV_W(0, "a", 1, 100) DONE(0, "ok", "write", "a", 200)
                    INV_W(1, "a", 2, 300) DONE(1, "ok", "write", "a", 400)
                        INV_R(2, "a", 500) READ_OK(2, "a", 1, 600));
    char *report = NULL;
    ck_assert_int_eq(check(&h, &report), JL_NOT_LINEARIZABLE);
    ck_assert_ptr_nonnull(strstr(report, "NOT linearizable: key \"a\""));
    /* The smallest window: write 2 and the stale read (lines 3-6), not the
     * first write. */
    ck_assert_ptr_nonnull(strstr(report, "2 operations"));
    ck_assert_ptr_nonnull(strstr(report, "line 3-4"));
    ck_assert_ptr_nonnull(strstr(report, "=> line 5-6"));
    ck_assert_ptr_null(strstr(report, "line 1-2"));
    free(report);
    jl_history_free(&h);
}
END_TEST

START_TEST(test_lost_write)
{
    /* Write 3 acknowledged; every later read, and the final reads through
     * both nodes, see the older 1. */
    struct jl_history h;
    load_ok(&h, INV_W(0, "a", 1, 100) DONE(0, "ok", "write", "a", 200)
                    INV_W(0, "a", 3, 300) DONE(0, "ok", "write", "a", 400)
                        INV_R(1, "a", 500) READ_OK(1, "a", 1, 600));
    unsigned failed = 99;
    load_final(&h,
               "{\"node\":1,\"key\":\"a\",\"value\":1,\"invoke_ns\":1000,"
               "\"time_ns\":1100}\n"
               "{\"node\":2,\"key\":\"a\",\"value\":3,\"invoke_ns\":1200,"
               "\"time_ns\":1300}\n"
               "{\"node\":3,\"key\":\"a\",\"error\":\"timeout: no answer\"}\n",
               &failed);
    ck_assert_uint_eq(failed, 1);
    char *report = NULL;
    size_t len;
    FILE *out = open_memstream(&report, &len);
    ck_assert_uint_eq(jl_check_final(&h, out), 1); /* node 1 only */
    fclose(out);
    ck_assert_ptr_nonnull(strstr(report, "lost write: key \"a\""));
    ck_assert_ptr_nonnull(strstr(report, "through node 1 returned 1"));
    ck_assert_ptr_nonnull(strstr(report, "write 3"));
    free(report);
    ck_assert_int_eq(check(&h, &report), JL_NOT_LINEARIZABLE);
    free(report);
    jl_history_free(&h);
}
END_TEST

START_TEST(test_final_reads_accept_later_or_unknown)
{
    /* Final value 5 from an info write (may have applied any time), and 4
     * from a write concurrent with the last acknowledged one: both are
     * fine. A null final read after an acknowledged write is not. */
    struct jl_history h;
    load_ok(&h, INV_W(0, "a", 3, 100) INV_W(1, "a", 4, 110) DONE(
                    0, "ok", "write", "a", 200) DONE(1, "ok", "write", "a", 210)
                    INV_W(2, "a", 5, 300) DONE(2, "info", "write", "a", 400)
                        INV_W(3, "b", 1, 500) DONE(3, "ok", "write", "b", 600));
    unsigned failed;
    load_final(&h,
               "{\"node\":1,\"key\":\"a\",\"value\":5,\"invoke_ns\":1000,"
               "\"time_ns\":1100}\n"
               "{\"node\":2,\"key\":\"a\",\"value\":5,\"invoke_ns\":1200,"
               "\"time_ns\":1300}\n",
               &failed);
    ck_assert_uint_eq(jl_check_final(&h, NULL), 0);
    char *report = NULL;
    ck_assert_int_eq(check(&h, &report), JL_LINEARIZABLE);
    free(report);
    load_final(&h,
               "{\"node\":1,\"key\":\"b\",\"value\":null,\"invoke_ns\":2000,"
               "\"time_ns\":2100}\n",
               &failed);
    ck_assert_uint_eq(jl_check_final(&h, NULL), 1);
    jl_history_free(&h);

    /* Value 3 is fine when write 4 ran concurrently with write 3. */
    load_ok(&h, INV_W(0, "a", 3, 100) INV_W(1, "a", 4, 110)
                    DONE(0, "ok", "write", "a", 200)
                        DONE(1, "ok", "write", "a", 210));
    load_final(&h,
               "{\"node\":1,\"key\":\"a\",\"value\":3,\"invoke_ns\":1000,"
               "\"time_ns\":1100}\n",
               &failed);
    ck_assert_uint_eq(jl_check_final(&h, NULL), 0);
    ck_assert_int_eq(check(&h, &report), JL_LINEARIZABLE);
    free(report);
    jl_history_free(&h);
}
END_TEST

START_TEST(test_cas_applied_twice)
{
    /* cas 1->2 succeeds once; another process writes 1 again; a read sees
     * 2 although no second cas or write 2 exists: the first cas took
     * effect twice. */
    struct jl_history h;
    load_ok(&h, INV_W(0, "a", 1, 100) DONE(0, "ok", "write", "a", 200)
                    INV_CAS(1, "a", 1, 2, 300) DONE(1, "ok", "cas", "a", 400)
                        INV_W(0, "a", 1, 500) DONE(0, "ok", "write", "a", 600)
                            INV_R(2, "a", 700) READ_OK(2, "a", 2, 800));
    char *report = NULL;
    ck_assert_int_eq(check(&h, &report), JL_NOT_LINEARIZABLE);
    ck_assert_ptr_nonnull(strstr(report, "=> line 7-8"));
    free(report);
    jl_history_free(&h);
}
END_TEST

START_TEST(test_failed_write_visible)
{
    /* A write that failed (surely not applied) is later read. */
    struct jl_history h;
    load_ok(&h, INV_W(0, "a", 1, 100) DONE(0, "ok", "write", "a", 200)
                    INV_W(1, "a", 9, 300) DONE(1, "fail", "write", "a", 400)
                        INV_R(2, "a", 500) READ_OK(2, "a", 9, 600));
    char *report = NULL;
    ck_assert_int_eq(check(&h, &report), JL_NOT_LINEARIZABLE);
    ck_assert_ptr_nonnull(strstr(report, "read -> 9"));
    free(report);
    jl_history_free(&h);
}
END_TEST

START_TEST(test_info_both_ways)
{
    /* An info write of 9: a later read may see it ... */
    struct jl_history h;
    const char *base = INV_W(0, "a", 1, 100) DONE(0, "ok", "write", "a", 200)
        INV_W(1, "a", 9, 300) DONE(1, "info", "write", "a", 400);
    char text[4096];
    snprintf(text, sizeof text, "%s%s%s", base, INV_R(2, "a", 500),
             READ_OK(2, "a", 9, 600));
    load_ok(&h, text);
    char *report = NULL;
    ck_assert_int_eq(check(&h, &report), JL_LINEARIZABLE);
    free(report);
    jl_history_free(&h);
    /* ... or not see it (it never happened) ... */
    snprintf(text, sizeof text, "%s%s%s", base, INV_R(2, "a", 500),
             READ_OK(2, "a", 1, 600));
    load_ok(&h, text);
    ck_assert_int_eq(check(&h, &report), JL_LINEARIZABLE);
    free(report);
    jl_history_free(&h);
    /* ... or see it late, after a read of the old value (it applied after
     * its own timeout) ... */
    snprintf(text, sizeof text, "%s%s%s%s%s", base, INV_R(2, "a", 500),
             READ_OK(2, "a", 1, 600), INV_R(2, "a", 700),
             READ_OK(2, "a", 9, 800));
    load_ok(&h, text);
    ck_assert_int_eq(check(&h, &report), JL_LINEARIZABLE);
    free(report);
    jl_history_free(&h);
    /* ... but once seen it cannot vanish again, and it cannot apply before
     * it was invoked. */
    snprintf(text, sizeof text, "%s%s%s%s%s", base, INV_R(2, "a", 500),
             READ_OK(2, "a", 9, 600), INV_R(2, "a", 700),
             READ_OK(2, "a", 1, 800));
    load_ok(&h, text);
    ck_assert_int_eq(check(&h, &report), JL_NOT_LINEARIZABLE);
    free(report);
    jl_history_free(&h);
    load_ok(&h, INV_R(2, "a", 10) READ_OK(2, "a", 9, 20) INV_W(1, "a", 9, 300)
                    DONE(1, "info", "write", "a", 400));
    ck_assert_int_eq(check(&h, &report), JL_NOT_LINEARIZABLE);
    free(report);
    jl_history_free(&h);
}
END_TEST

START_TEST(test_open_invoke_is_info)
{
    /* An invoke never completed counts as info: both outcomes valid. */
    struct jl_history h;
    load_ok(&h, INV_CAS(0, "a", null, 4, 100) INV_R(1, "a", 500) READ_OK(
                    1, "a", 4, 600) INV_R(1, "a", 700) READ_OK(1, "a", 4, 800));
    ck_assert(h.ops[0].open);
    ck_assert_int_eq(h.ops[0].outcome, JL_INFO);
    char *report = NULL;
    ck_assert_int_eq(check(&h, &report), JL_LINEARIZABLE);
    free(report);
    jl_history_free(&h);
}
END_TEST

START_TEST(test_budget_gives_unknown)
{
    /* Concurrent info writes and a read of a value none wrote: deciding
     * "no" means trying every subset of them (2^12 here), so a tiny budget
     * gives up. (This is why the workload retires a key after a few info
     * operations.) */
    char text[16384] = "";
    size_t off = 0;
    for (int p = 0; p < 12; p++) {
        off += (size_t)snprintf(text + off, sizeof text - off,
                                "{\"process\":%d,\"type\":\"invoke\",\"f\":"
                                "\"write\",\"key\":\"a\",\"value\":%d,"
                                "\"time_ns\":%d}\n",
                                p, p + 1, 10 + p);
    }
    snprintf(text + off, sizeof text - off,
             "{\"process\":99,\"type\":\"invoke\",\"f\":\"read\",\"key\":"
             "\"a\",\"time_ns\":100}\n"
             "{\"process\":99,\"type\":\"ok\",\"f\":\"read\",\"key\":\"a\","
             "\"value\":77,\"time_ns\":200}\n");
    struct jl_history h;
    load_ok(&h, text);
    struct jl_limits lim = {.max_configs = 5};
    ck_assert_int_eq(jl_check_linearizable(&h, &lim, NULL, NULL), JL_UNKNOWN);
    /* With the default budget: read 77 was never written. */
    ck_assert_int_eq(jl_check_linearizable(&h, NULL, NULL, NULL),
                     JL_NOT_LINEARIZABLE);
    jl_history_free(&h);
}
END_TEST

START_TEST(test_many_ops_fast)
{
    /* 3,000 sequential operations with a few info writes in between: the
     * memo keeps the search linear. */
    size_t cap = 3000 * 200, off = 0;
    char *text = malloc(cap);
    ck_assert_ptr_nonnull(text);
    long t = 1000, val = 0;
    int p = 0;
    for (int i = 0; i < 3000; i++) {
        int kind = i % 3;
        if (kind == 0) {
            val = i % 7 + 1;
            off += (size_t)snprintf(text + off, cap - off,
                                    INV_W(% d, "a", % ld, % ld), p, val, t);
            off += (size_t)snprintf(text + off, cap - off,
                                    "{\"process\":%d,\"type\":\"%s\","
                                    "\"f\":\"write\",\"key\":\"a\","
                                    "\"time_ns\":%ld}\n",
                                    p, i % 60 == 0 ? "info" : "ok", t + 5);
            if (i % 60 == 0) {
                p++;
                val = -1; /* unknown: the next read decides */
            }
        } else {
            off += (size_t)snprintf(text + off, cap - off,
                                    INV_R(% d, "a", % ld), p, t);
            if (val < 0) {
                val = (i / 3 * 3) % 7 + 1; /* it did apply */
            }
            off +=
                (size_t)snprintf(text + off, cap - off,
                                 READ_OK(% d, "a", % ld, % ld), p, val, t + 5);
        }
        t += 10;
    }
    struct jl_history h;
    load_ok(&h, text);
    free(text);
    struct jl_stats st = {0};
    ck_assert_int_eq(jl_check_linearizable(&h, NULL, NULL, &st),
                     JL_LINEARIZABLE);
    ck_assert_uint_lt(st.configs, 100000);
    jl_history_free(&h);
}
END_TEST

/* --- Replica digests ------------------------------------------------------ */

static int digests(const char *text, unsigned *replicas, char **report)
{
    char err[JL_ERRMSG_SIZE] = "";
    size_t len;
    FILE *in = fmemopen((void *)text, strlen(text), "r");
    FILE *out = open_memstream(report, &len);
    int rv = jl_check_digests(in, out, replicas, err);
    fclose(in);
    fclose(out);
    return rv;
}

START_TEST(test_digests)
{
    unsigned n = 0;
    char *report = NULL;
    ck_assert_int_eq(digests("{\"node\":1,\"digest\":\"aa\",\"applied_index\":"
                             "9}\n{\"node\":2,\"digest\":\"aa\"}\n",
                             &n, &report),
                     0);
    ck_assert_uint_eq(n, 2);
    free(report);
    ck_assert_int_eq(digests("{\"node\":1,\"digest\":\"aa\"}\n{\"node\":2,"
                             "\"digest\":\"bb\"}\n{\"node\":3,\"digest\":"
                             "\"aa\"}\n{\"node\":4,\"error\":\"down\"}\n",
                             &n, &report),
                     2);
    ck_assert_ptr_nonnull(strstr(report, "node 2 has bb"));
    ck_assert_ptr_nonnull(strstr(report, "node 4 gave none: down"));
    free(report);
    /* Same digest, but one replica stuck behind: not converged. */
    ck_assert_int_eq(digests("{\"node\":1,\"digest\":\"aa\",\"applied_index\":"
                             "9}\n{\"node\":2,\"digest\":\"aa\","
                             "\"applied_index\":7}\n",
                             &n, &report),
                     1);
    ck_assert_ptr_nonnull(strstr(report, "node 2 applied index 7"));
    free(report);
    ck_assert_int_eq(digests("{\"node\":1}\n", &n, &report), -1);
    free(report);
    ck_assert_int_eq(digests("not json\n", &n, &report), -1);
    free(report);
}
END_TEST

/* --- Malformed input
 * ---------------------------------------------------------- */

static const struct
{
    const char *text;
    const char *msg; /* expected in the error */
} bad_inputs[] = {
    {"{\"process\":0,\"type\":\"ok\"\n", "line 1: not JSON"},
    {"[1,2,3]\n", "line 1: expected a JSON object"},
    {"\"x\"\n", "line 1: not JSON"},
    {"{}\n", "missing field \"process\""},
    {"{\"process\":-1,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"a\","
     "\"time_ns\":1}\n",
     "\"process\" must be an integer >= 0"},
    {"{\"process\":\"0\",\"type\":\"invoke\",\"f\":\"read\",\"key\":\"a\","
     "\"time_ns\":1}\n",
     "\"process\" must be an integer"},
    {"{\"process\":0,\"type\":\"start\",\"f\":\"read\",\"key\":\"a\","
     "\"time_ns\":1}\n",
     "\"type\" must be invoke"},
    {"{\"process\":0,\"type\":\"invoke\",\"f\":\"append\",\"key\":\"a\","
     "\"time_ns\":1}\n",
     "\"f\" must be read"},
    {"{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"\","
     "\"time_ns\":1}\n",
     "\"key\" must be 1 to"},
    {"{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":5,"
     "\"time_ns\":1}\n",
     "\"key\" must be a string"},
    {"{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"a\","
     "\"time_ns\":1.5}\n",
     "\"time_ns\" must be an integer"},
    {"{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"a\","
     "\"time_ns\":1,\"colour\":1}\n",
     "unknown field \"colour\""},
    {"{\"process\":0,\"process\":1,\"type\":\"invoke\",\"f\":\"read\","
     "\"key\":\"a\",\"time_ns\":1}\n",
     "line 1: not JSON: duplicate"},
    {"{\"process\":0,\"type\":\"invoke\",\"f\":\"write\",\"key\":\"a\","
     "\"time_ns\":1}\n",
     "a write invoke needs an integer \"value\""},
    {"{\"process\":0,\"type\":\"invoke\",\"f\":\"write\",\"key\":\"a\","
     "\"value\":\"7\",\"time_ns\":1}\n",
     "\"value\" must be an integer or null"},
    {"{\"process\":0,\"type\":\"invoke\",\"f\":\"cas\",\"key\":\"a\","
     "\"value\":2,\"time_ns\":1}\n",
     "a cas invoke needs \"expected\""},
    {"{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"a\","
     "\"value\":2,\"time_ns\":1}\n",
     "a read invoke carries no"},
    {INV_R(0, "a", 1) INV_R(0, "a", 2), "line 2: process 0 invokes while"},
    {DONE(0, "ok", "write", "a", 1), "line 1: process 0 completes an "
                                     "operation it never invoked"},
    {INV_W(0, "a", 1, 10) DONE(0, "info", "write", "a", 20) INV_R(0, "a", 30),
     "line 3: process 0 is used again after its operation ended info "
     "(line 2)"},
    {INV_W(0, "a", 1, 10) DONE(0, "ok", "write", "b", 20),
     "line 2: completion (write of \"b\") does not match"},
    {INV_W(0, "a", 1, 10) DONE(0, "ok", "read", "a", 20),
     "does not match the invoke"},
    {INV_W(0, "a", 1, 10) DONE(0, "ok", "write", "a", 5),
     "line 2: completion stamped at 5 ns, before its invoke"},
    {INV_R(0, "a", 10) DONE(0, "ok", "read", "a", 20),
     "a read ok needs \"value\""},
    {INV_R(0, "a", 10) "{\"process\":0,\"type\":\"fail\",\"f\":\"read\","
                       "\"key\":\"a\",\"value\":1,\"time_ns\":20}\n",
     "only a read ok carries a \"value\""},
    {INV_W(0, "a", 1, 10) "{\"process\":0,\"type\":\"ok\",\"f\":\"write\","
                          "\"key\":\"a\",\"value\":2,\"time_ns\":20}\n",
     "may repeat its invoke's \"value\" but not change it"},
    {"{\"process\":99999999999999999999,\"type\":\"invoke\"}\n",
     "line 1: not JSON"},
    {"\n\n" INV_R(0, "a", 10) "\x01\x02garbage\n", "line 4: not JSON"},
};

START_TEST(test_malformed)
{
    struct jl_history h;
    char err[JL_ERRMSG_SIZE] = "";
    ck_assert_int_ne(load_text(&h, bad_inputs[_i].text, err), 0);
    ck_assert_msg(strstr(err, bad_inputs[_i].msg) != NULL,
                  "input %d: expected \"%s\" in \"%s\"", _i, bad_inputs[_i].msg,
                  err);
    jl_history_free(&h);
}
END_TEST

START_TEST(test_malformed_long_line_and_nul)
{
    struct jl_history h;
    char err[JL_ERRMSG_SIZE] = "";
    size_t n = JL_LINE_MAX + 100;
    char *text = malloc(n + 1);
    ck_assert_ptr_nonnull(text);
    memset(text, ' ', n);
    text[n] = '\0';
    ck_assert_int_ne(load_text(&h, text, err), 0);
    ck_assert_ptr_nonnull(strstr(err, "line 1: line longer than"));
    jl_history_free(&h);
    free(text);

    /* A NUL byte inside a line. */
    static const char nul[] = "{\"process\":0,\0\"type\":\"invoke\"}\n";
    jl_history_init(&h);
    FILE *f = fmemopen((void *)nul, sizeof nul - 1, "r");
    ck_assert_int_ne(jl_history_load(&h, f, err), 0);
    fclose(f);
    ck_assert_ptr_nonnull(strstr(err, "line 1:"));
    jl_history_free(&h);
}
END_TEST

START_TEST(test_malformed_random_bytes)
{
    /* Random garbage, and valid lines with random bytes flipped: always a
     * clean error or a clean load, never a crash (ASan/UBSan in CI). */
    static const char good[] = INV_W(0, "a", 1, 100) INV_CAS(1, "a", 1, 2, 110)
        DONE(0, "ok", "write", "a", 200) DONE(1, "info", "cas", "a", 220)
            INV_R(2, "a", 300) READ_OK(2, "a", 2, 400);
    unsigned seed = 12345;
    for (int round = 0; round < 2000; round++) {
        char buf[sizeof good];
        memcpy(buf, good, sizeof good);
        int flips = 1 + (int)(rand_r(&seed) % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = (size_t)rand_r(&seed) % (sizeof good - 1);
            buf[at] = (char)(rand_r(&seed) & 0xff);
        }
        struct jl_history h;
        jl_history_init(&h);
        char err[JL_ERRMSG_SIZE];
        FILE *f = fmemopen(buf, sizeof good - 1, "r");
        if (jl_history_load(&h, f, err) == 0) {
            jl_check_linearizable(&h, NULL, NULL, NULL);
        } else {
            ck_assert_ptr_nonnull(strstr(err, "line "));
        }
        fclose(f);
        jl_history_free(&h);
    }
}
END_TEST

START_TEST(test_malformed_final)
{
    struct jl_history h;
    load_ok(&h, INV_W(0, "a", 1, 100) DONE(0, "ok", "write", "a", 200));
    static const char *const bad[] = {
        "{\"key\":\"a\",\"value\":1,\"invoke_ns\":1,\"time_ns\":2}\n",
        "{\"node\":1,\"value\":1,\"invoke_ns\":1,\"time_ns\":2}\n",
        "{\"node\":1,\"key\":\"a\",\"value\":\"x\",\"invoke_ns\":1,"
        "\"time_ns\":2}\n",
        "{\"node\":1,\"key\":\"a\",\"value\":1,\"invoke_ns\":5,"
        "\"time_ns\":2}\n",
        "{\"node\":1,\"key\":\"a\",\"error\":7}\n",
        "nonsense\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[JL_ERRMSG_SIZE] = "";
        FILE *f = fmemopen((void *)bad[i], strlen(bad[i]), "r");
        ck_assert_int_ne(jl_history_load_final(&h, f, NULL, NULL, err), 0);
        fclose(f);
        ck_assert_msg(strstr(err, "line 1: final reads:") != NULL,
                      "case %zu: %s", i, err);
    }
    jl_history_free(&h);
}
END_TEST

static Suite *checker_suite(void)
{
    Suite *s = suite_create("jepsen_checker");
    TCase *tc = tcase_create("linearizable");
    tcase_add_test(tc, test_valid_concurrent);
    tcase_add_test(tc, test_failed_ops_are_ignored);
    tcase_add_test(tc, test_info_both_ways);
    tcase_add_test(tc, test_open_invoke_is_info);
    tcase_add_test(tc, test_many_ops_fast);
    tcase_add_test(tc, test_budget_gives_unknown);
    suite_add_tcase(s, tc);
    tc = tcase_create("anomalies");
    tcase_add_test(tc, test_stale_read);
    tcase_add_test(tc, test_lost_write);
    tcase_add_test(tc, test_final_reads_accept_later_or_unknown);
    tcase_add_test(tc, test_cas_applied_twice);
    tcase_add_test(tc, test_failed_write_visible);
    tcase_add_test(tc, test_digests);
    suite_add_tcase(s, tc);
    tc = tcase_create("malformed");
    tcase_add_loop_test(tc, test_malformed, 0,
                        (int)(sizeof bad_inputs / sizeof bad_inputs[0]));
    tcase_add_test(tc, test_malformed_long_line_and_nul);
    tcase_add_test(tc, test_malformed_random_bytes);
    tcase_add_test(tc, test_malformed_final);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(checker_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
