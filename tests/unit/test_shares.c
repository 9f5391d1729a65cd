/* test_shares.c - enforce/shares.c: each host's part of a fleet limit.
 *
 *   equal_parts            L/N each, summing to L
 *   order_free             the same view listed in any order gives every
 *                          member bit-identical parts (rates, bursts, slots)
 *   weighted_parts         above the floor, in proportion to weight
 *   demand_max_min         small demands met in full, the rest divided
 *                          equally among the others
 *   demand_all_met         what nobody wants is divided equally
 *   demand_floor           a member with no demand still holds the floor
 *   burst_parts            proportional, rounded up, never below 1; the
 *                          overshoot when members outnumber units
 *   slot_parts             integer parts summing to the total exactly,
 *                          remainder ties to the first name, no floor
 *   host_rules             probation, the quiet period after losses, no
 *                          growth without a majority, shrinking at once
 *   refusals               bad views are refused and change nothing */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../enforce/shares.h"
#include "allot_error.h"

#define MAXN 64

static double sum_d(const double *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
    }
    return s;
}

static uint64_t sum_u(const uint64_t *x, size_t n)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
    }
    return s;
}

static void view(struct shares_member *m, size_t n, char names[][16])
{
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], 16, "host-%02zu", i);
        m[i] = (struct shares_member){names[i], 1.0, 0.0};
    }
}

START_TEST(equal_parts)
{
    char names[3][16];
    struct shares_member m[3];
    view(m, 3, names);
    double out[3];
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_EQUAL, 10, m, 3, out), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert_double_eq(out[i], 10.0 / 3);
    }
    ck_assert_double_eq_tol(sum_d(out, 3), 10, 1e-9);
}
END_TEST

START_TEST(order_free)
{
    /* 40 members with mixed weights and demands; the view reversed and
     * rotated must give each member exactly the same parts. */
    enum { N = 40 };
    char names[N][16];
    struct shares_member m[N], r[N];
    view(m, N, names);
    for (size_t i = 0; i < N; i++) {
        m[i].weight = 1.0 + (double)(i % 7) * 0.37;
        m[i].demand = (double)((i * 7919) % 113) * 0.731;
    }
    for (size_t i = 0; i < N; i++) {
        r[i] = m[(N - 1 - i + 13) % N];
    }
    const enum quota_share pol[] = {QUOTA_SHARE_EQUAL, QUOTA_SHARE_WEIGHTED,
                                    QUOTA_SHARE_DEMAND};
    for (size_t p = 0; p < 3; p++) {
        double a[N], b[N];
        uint64_t ba[N], bb[N], sa[N], sb[N];
        ck_assert_int_eq(shares_rate(pol[p], 1234.5, m, N, a), 0);
        ck_assert_int_eq(shares_rate(pol[p], 1234.5, r, N, b), 0);
        ck_assert_int_eq(shares_burst(a, 1234.5, 77, N, ba), 0);
        ck_assert_int_eq(shares_burst(b, 1234.5, 77, N, bb), 0);
        ck_assert_int_eq(shares_slots(a, 1001, m, N, sa), 0);
        ck_assert_int_eq(shares_slots(b, 1001, r, N, sb), 0);
        ck_assert_uint_eq(sum_u(sa, N), 1001);
        for (size_t i = 0; i < N; i++) {
            size_t j = 0;
            while (strcmp(r[j].name, m[i].name) != 0) {
                j++;
            }
            ck_assert_mem_eq(&a[i], &b[j], sizeof a[i]);
            ck_assert_uint_eq(ba[i], bb[j]);
            ck_assert_uint_eq(sa[i], sb[j]);
        }
        ck_assert_double_eq_tol(sum_d(a, N), 1234.5, 1e-6);
    }
}
END_TEST

START_TEST(weighted_parts)
{
    char names[3][16];
    struct shares_member m[3];
    view(m, 3, names);
    m[0].weight = 1;
    m[1].weight = 2;
    m[2].weight = 1;
    double out[3];
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_WEIGHTED, 100, m, 3, out), 0);
    double floor_each = SHARES_RATE_FLOOR * 100 / 3;
    ck_assert_double_eq_tol(out[0] - floor_each, 95.0 / 4, 1e-9);
    ck_assert_double_eq_tol(out[1] - floor_each, 95.0 / 2, 1e-9);
    ck_assert_double_eq_tol(out[2], out[0], 1e-12);
    ck_assert_double_eq_tol(sum_d(out, 3), 100, 1e-9);
}
END_TEST

START_TEST(demand_max_min)
{
    char names[4][16];
    struct shares_member m[4];
    view(m, 4, names);
    const double want[] = {300, 10, 200, 20};
    for (int i = 0; i < 4; i++) {
        m[i].demand = want[i];
    }
    double out[4];
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_DEMAND, 100, m, 4, out), 0);
    /* Floor 1.25 each; of the 95 left, 10 and 20 are met, 65 is split. */
    ck_assert_double_eq_tol(out[1], 11.25, 1e-9);
    ck_assert_double_eq_tol(out[3], 21.25, 1e-9);
    ck_assert_double_eq_tol(out[0], 33.75, 1e-9);
    ck_assert_double_eq_tol(out[2], 33.75, 1e-9);
    ck_assert_double_eq_tol(sum_d(out, 4), 100, 1e-9);
}
END_TEST

START_TEST(demand_all_met)
{
    char names[3][16];
    struct shares_member m[3];
    view(m, 3, names);
    m[0].demand = 1;
    m[1].demand = 2;
    m[2].demand = 3;
    double out[3];
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_DEMAND, 60, m, 3, out), 0);
    /* Floor 1 each; 57 left, 6 wanted, 51 spread: 17 each. */
    ck_assert_double_eq_tol(out[0], 19, 1e-9);
    ck_assert_double_eq_tol(out[1], 20, 1e-9);
    ck_assert_double_eq_tol(out[2], 21, 1e-9);
}
END_TEST

START_TEST(demand_floor)
{
    char names[5][16];
    struct shares_member m[5];
    view(m, 5, names);
    for (int i = 1; i < 5; i++) {
        m[i].demand = 1000;
    }
    double out[5];
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_DEMAND, 50, m, 5, out), 0);
    ck_assert_double_eq_tol(out[0], SHARES_RATE_FLOOR * 50 / 5, 1e-12);
    ck_assert(out[0] > 0);
    ck_assert_double_eq_tol(sum_d(out, 5), 50, 1e-9);
}
END_TEST

START_TEST(burst_parts)
{
    double part[5] = {2, 2, 2, 2, 2};
    uint64_t b[5];
    ck_assert_int_eq(shares_burst(part, 10, 10, 5, b), 0);
    for (int i = 0; i < 5; i++) {
        ck_assert_uint_eq(b[i], 2);
    }
    /* Members outnumber units: each keeps one, the fleet holds n > burst. */
    double tiny[10];
    uint64_t bt[10];
    for (int i = 0; i < 10; i++) {
        tiny[i] = 0.5;
    }
    ck_assert_int_eq(shares_burst(tiny, 5, 3, 10, bt), 0);
    for (int i = 0; i < 10; i++) {
        ck_assert_uint_eq(bt[i], 1);
    }
    ck_assert_uint_le(sum_u(bt, 10), 3 + 10);
    /* Uneven parts round up. */
    double uneven[2] = {7.5, 2.5};
    ck_assert_int_eq(shares_burst(uneven, 10, 10, 2, b), 0);
    ck_assert_uint_eq(b[0], 8);
    ck_assert_uint_eq(b[1], 3);
}
END_TEST

START_TEST(slot_parts)
{
    char names[MAXN][16];
    struct shares_member m[MAXN];
    view(m, MAXN, names);
    uint64_t s[MAXN];
    double eq[MAXN];
    for (int i = 0; i < MAXN; i++) {
        eq[i] = 1;
    }
    /* 10 over 3: the remainder goes to the first name. */
    ck_assert_int_eq(shares_slots(eq, 10, m, 3, s), 0);
    ck_assert_uint_eq(s[0], 4);
    ck_assert_uint_eq(s[1], 3);
    ck_assert_uint_eq(s[2], 3);
    /* 2 over 5: no floor, the sum is exact. */
    ck_assert_int_eq(shares_slots(eq, 2, m, 5, s), 0);
    ck_assert_uint_eq(sum_u(s, 5), 2);
    ck_assert_uint_eq(s[0], 1);
    ck_assert_uint_eq(s[1], 1);
    ck_assert_uint_eq(s[4], 0);
    /* Uneven parts over many totals: always exact, each within one slot
     * of its proportional value. */
    double p[MAXN];
    for (int i = 0; i < MAXN; i++) {
        p[i] = 0.1 + (double)((i * 37) % 17);
    }
    double ps = sum_d(p, MAXN);
    for (uint64_t total = 0; total < 3000; total += 7) {
        ck_assert_int_eq(shares_slots(p, total, m, MAXN, s), 0);
        ck_assert_uint_eq(sum_u(s, MAXN), total);
        for (int i = 0; i < MAXN; i++) {
            double q = (double)total * p[i] / ps;
            ck_assert(fabs((double)s[i] - q) < 1.0 + 1e-9);
        }
    }
}
END_TEST

/* age: how long the oldest suspect has been suspect (ms). */
static int host_part(struct shares_host *h, const struct shares_member *m,
                     size_t n, size_t self, size_t suspect, uint64_t age,
                     size_t known, uint64_t now, double *p)
{
    struct shares_view v = {.m = m,
                            .n = n,
                            .self = self,
                            .suspect = suspect,
                            .known = known,
                            .suspect_age_ms = age};
    return shares_host_part(h, QUOTA_SHARE_EQUAL, 100, &v, now, p);
}

START_TEST(host_rules)
{
    char names[20][16];
    struct shares_member m[20];
    view(m, 20, names);
    struct shares_host h = {.joined_ms = 0,
                            .probation_ms = 5000,
                            .last_part = -1,
                            .settle_ms = 1000,
                            .doubt_ms = 500};
    double p;
    /* Probation: the floor of its view, then the full part. */
    ck_assert_int_eq(host_part(&h, m, 10, 0, 0, 0, 10, 1000, &p), 0);
    ck_assert_double_eq_tol(p, SHARES_RATE_FLOOR * 100 / SHARES_PROBATION_VIEW,
                            1e-12);
    ck_assert_uint_eq(h.state, SHARES_STATE_PROBATION);
    ck_assert_int_eq(host_part(&h, m, 10, 0, 0, 0, 10, 6000, &p), 0);
    ck_assert_double_eq_tol(p, 10, 1e-12);
    ck_assert_uint_eq(h.state, 0);
    /* A member dies: no growth during the quiet period after it, nor
     * while another member has been suspect for doubt_ms or longer; a
     * younger suspicion (maybe false, soon refuted) does not hold. */
    shares_host_change(&h, 20000);
    ck_assert_int_eq(host_part(&h, m, 9, 0, 0, 0, 10, 20999, &p), 0);
    ck_assert_double_eq_tol(p, 10, 1e-12); /* quiet period */
    ck_assert_uint_eq(h.state, SHARES_STATE_HOLDING);
    ck_assert_int_eq(host_part(&h, m, 9, 0, 1, 500, 10, 30000, &p), 0);
    ck_assert_double_eq_tol(p, 10, 1e-12); /* another one suspect */
    ck_assert_uint_eq(h.state, SHARES_STATE_HOLDING);
    ck_assert_int_eq(host_part(&h, m, 9, 0, 1, 499, 10, 30000, &p), 0);
    ck_assert_double_eq_tol(p, 100.0 / 9, 1e-12);
    ck_assert_uint_eq(h.state, 0);
    /* Half the fleet unreachable, long after the losses: no majority, the
     * last part is kept. */
    ck_assert_int_eq(host_part(&h, m, 5, 0, 0, 0, 10, 90000, &p), 0);
    ck_assert_double_eq_tol(p, 100.0 / 9, 1e-12);
    ck_assert_uint_eq(h.state, SHARES_STATE_HOLDING);
    /* More members: the part shrinks at once, suspects or not. */
    ck_assert_int_eq(host_part(&h, m, 20, 0, 3, 0, 20, 90100, &p), 0);
    ck_assert_double_eq_tol(p, 5, 1e-12);
    ck_assert_int_eq(host_part(&h, m, 20, 20, 0, 0, 20, 0, &p), ALLOT_EINVALID);
    ck_assert_int_eq(host_part(&h, m, 20, 0, 21, 0, 20, 0, &p), ALLOT_EINVALID);
    /* Timings from the gossip settings: 100 members, 200 ms rounds to 3
     * members, 1 s probes, multipliers 4: probation twice the rounds one
     * member sends an ALIVE, 2*ceil(4*ceil(log10 101)/3)*200 ms; quiet
     * period the larger of the smallest suspicion timeout
     * (4*ceil(log10 n)*1 s) and a probe round of at most 20 members. */
    shares_host_timing(&h, 100, 200, 3, 1000, 4, 4);
    ck_assert_uint_eq(h.probation_ms, 1600);
    ck_assert_uint_eq(h.settle_ms, 20000);
    /* Doubt: twice the probation, at most the smallest suspicion
     * timeout (8 s here). */
    ck_assert_uint_eq(h.doubt_ms, 3200);
    shares_host_timing(&h, 1000, 200, 3, 400, 4, 4);
    ck_assert_uint_eq(h.probation_ms, 2400); /* 16 sends: 6 rounds */
    ck_assert_uint_eq(h.settle_ms, 8000);    /* 20 probes of 400 ms > 4.8 s */
    ck_assert_uint_eq(h.doubt_ms, 4800);
    shares_host_timing(&h, 10000, 200, 3, 400, 4, 4);
    ck_assert_uint_eq(h.probation_ms, 2800); /* 20 sends: 7 rounds */
    ck_assert_uint_eq(h.doubt_ms, 5600);
    shares_host_timing(&h, 10, 200, 3, 400, 4, 4);
    ck_assert_uint_eq(h.settle_ms, 4000); /* a round of 10 > 1.6 s */
    ck_assert_uint_eq(h.doubt_ms, 1600);  /* the suspicion timeout */
    shares_host_timing(&h, 1, 200, 1, 1000, 4, 4);
    ck_assert_uint_eq(h.probation_ms, 1600); /* one member a round */
    ck_assert_uint_eq(h.settle_ms, 4000);
    ck_assert_int_eq(host_part(&h, m, 20, 0, 0, 0, 19, 0, &p), ALLOT_EINVALID);
}
END_TEST

START_TEST(view_versions)
{
    char names[4][16];
    struct shares_member m[4], r[4];
    view(m, 4, names);
    for (int i = 0; i < 4; i++) {
        r[i] = m[3 - i];
    }
    struct shares_view a = {.m = m, .n = 4}, b = {.m = r, .n = 4};
    ck_assert_uint_eq(shares_view_version(&a), shares_view_version(&b));
    b.n = 3; /* a member fewer */
    ck_assert_uint_ne(shares_view_version(&a), shares_view_version(&b));
    r[0].weight += 1; /* another weight */
    b.n = 4;
    ck_assert_uint_ne(shares_view_version(&a), shares_view_version(&b));
    /* The hash of a path is FNV-1a 32 (the same on every host). */
    ck_assert_uint_eq(shares_rule_hash("a"), 0xe40c292cu);
    ck_assert_uint_ne(shares_rule_hash("org/a"), shares_rule_hash("org/b"));
}
END_TEST

/* When a demand is worth a broadcast: a fifth of the larger value, at any
 * scale (a tenth of a unit is a host's demand in a 10,000-host fleet). */
START_TEST(demand_moves)
{
    ck_assert(!shares_demand_moved(100, 110));
    ck_assert(shares_demand_moved(100, 130));
    ck_assert(shares_demand_moved(130, 100));
    ck_assert(!shares_demand_moved(0.1, 0.11));
    ck_assert(shares_demand_moved(0.036, 0.144)); /* units below 1 count */
    ck_assert(shares_demand_moved(0, 0.036));
    ck_assert(shares_demand_moved(0.036, 0));
    ck_assert(!shares_demand_moved(0, 0.0001)); /* below QUOTA_RATE_MIN */
    ck_assert(!shares_demand_moved(0, 0));
}
END_TEST

START_TEST(blobs)
{
    struct shares_blob b = {.view = 0xdeadbeefu,
                            .state = SHARES_STATE_HOLDING,
                            .n = SHARES_BLOB_RULES};
    for (unsigned i = 0; i < SHARES_BLOB_RULES; i++) {
        b.d[i] = (struct shares_demand){shares_rule_hash("org/x") + i,
                                        1000.5 * (i + 1)};
    }
    uint8_t buf[512];
    size_t len = shares_blob_encode(&b, buf, sizeof buf);
    ck_assert_uint_gt(len, 0);
    ck_assert_uint_le(len, 200); /* fits a gossip member's metadata */
    ck_assert_uint_eq(shares_blob_encode(&b, buf, 10), 0);
    struct shares_blob o;
    ck_assert_int_eq(shares_blob_decode(buf, len, &o), 0);
    ck_assert_uint_eq(o.view, b.view);
    ck_assert_uint_eq(o.state, b.state);
    ck_assert_uint_eq(o.n, b.n);
    ck_assert_double_eq_tol(shares_blob_demand(&o, b.d[3].hash), 4002, 1e-3);
    ck_assert_double_eq(shares_blob_demand(&o, 7), 0);
    /* Every truncation and every single-byte change either decodes to a
     * well-formed blob or is refused with nothing kept. */
    for (size_t k = 0; k < len; k++) {
        ck_assert_int_eq(shares_blob_decode(buf, k, &o), ALLOT_EINVALID);
        ck_assert_uint_eq(o.n, 0);
        uint8_t x[512];
        memcpy(x, buf, len);
        x[k] ^= 0xff;
        if (shares_blob_decode(x, len, &o) == 0) {
            ck_assert_uint_le(o.n, SHARES_BLOB_RULES);
            for (size_t i = 0; i < o.n; i++) {
                ck_assert(o.d[i].demand >= 0 && !isinf(o.d[i].demand));
            }
        } else {
            ck_assert_uint_eq(o.n, 0);
            ck_assert_uint_eq(o.view, 0);
        }
    }
    /* Well-formed msgpack that is not a blob: a negative, a NaN, too many
     * pairs, a wrong shape. */
    static const uint8_t neg[] = {0x93, 0x01, 0x00, 0x91, 0x92, 0x05,
                                  0xca, 0xbf, 0x80, 0x00, 0x00};
    static const uint8_t nan[] = {0x93, 0x01, 0x00, 0x91, 0x92, 0x05,
                                  0xca, 0x7f, 0xc0, 0x00, 0x00};
    static const uint8_t two[] = {0x92, 0x01, 0x00};
    ck_assert_int_eq(shares_blob_decode(neg, sizeof neg, &o), ALLOT_EINVALID);
    ck_assert_int_eq(shares_blob_decode(nan, sizeof nan, &o), ALLOT_EINVALID);
    ck_assert_int_eq(shares_blob_decode(two, sizeof two, &o), ALLOT_EINVALID);
    ck_assert_int_eq(shares_blob_decode(NULL, 0, &o), ALLOT_EINVALID);
    uint8_t many[600];
    size_t ml = 0;
    many[ml++] = 0x93;
    many[ml++] = 0x01;
    many[ml++] = 0x00;
    many[ml++] = 0xdc; /* array 16 */
    many[ml++] = 0x00;
    many[ml++] = SHARES_BLOB_RULES + 1;
    for (unsigned i = 0; i <= SHARES_BLOB_RULES; i++) {
        static const uint8_t pair[] = {0x92, 0x05, 0xca, 0x3f, 0x80, 0, 0};
        memcpy(many + ml, pair, sizeof pair);
        ml += sizeof pair;
    }
    ck_assert_int_eq(shares_blob_decode(many, ml, &o), ALLOT_EINVALID);
}
END_TEST

START_TEST(refusals)
{
    char names[3][16];
    struct shares_member m[3];
    view(m, 3, names);
    double out[3] = {-1, -1, -1};
    uint64_t s[3] = {7, 7, 7};
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_EQUAL, 10, m, 0, out),
                     ALLOT_EINVALID);
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_EQUAL, 0, m, 3, out),
                     ALLOT_EINVALID);
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_EQUAL, NAN, m, 3, out),
                     ALLOT_EINVALID);
    ck_assert_int_eq(shares_rate((enum quota_share)9, 10, m, 3, out),
                     ALLOT_EINVALID);
    m[1].weight = 0;
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_WEIGHTED, 10, m, 3, out),
                     ALLOT_EINVALID);
    m[1].weight = 1;
    m[2].demand = -1;
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_DEMAND, 10, m, 3, out),
                     ALLOT_EINVALID);
    m[2].demand = NAN;
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_DEMAND, 10, m, 3, out),
                     ALLOT_EINVALID);
    m[2].demand = 0;
    m[2].name = m[0].name; /* duplicate */
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_EQUAL, 10, m, 3, out),
                     ALLOT_EINVALID);
    m[2].name = names[2];
    m[1].name = m[0].name; /* duplicate next to it: not in name order */
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_EQUAL, 10, m, 3, out),
                     ALLOT_EINVALID);
    m[1].name = names[1];
    m[2].name = m[0].name;
    double part[3] = {1, 1, 1};
    ck_assert_int_eq(shares_slots(part, 5, m, 3, s), ALLOT_EINVALID);
    m[2].name = NULL;
    ck_assert_int_eq(shares_rate(QUOTA_SHARE_EQUAL, 10, m, 3, out),
                     ALLOT_EINVALID);
    m[2].name = names[2];
    part[1] = -1;
    ck_assert_int_eq(shares_slots(part, 5, m, 3, s), ALLOT_EINVALID);
    double zero[3] = {0, 0, 0};
    ck_assert_int_eq(shares_slots(zero, 5, m, 3, s), ALLOT_EINVALID);
    uint64_t b[3] = {7, 7, 7};
    ck_assert_int_eq(shares_burst(part, 10, 0, 3, b), ALLOT_EINVALID);
    for (int i = 0; i < 3; i++) {
        ck_assert_double_eq(out[i], -1);
        ck_assert_uint_eq(s[i], 7);
        ck_assert_uint_eq(b[i], 7);
    }
}
END_TEST

int main(void)
{
    Suite *su = suite_create("shares");
    TCase *tc = tcase_create("shares");
    tcase_add_test(tc, equal_parts);
    tcase_add_test(tc, order_free);
    tcase_add_test(tc, weighted_parts);
    tcase_add_test(tc, demand_max_min);
    tcase_add_test(tc, demand_all_met);
    tcase_add_test(tc, demand_floor);
    tcase_add_test(tc, burst_parts);
    tcase_add_test(tc, slot_parts);
    tcase_add_test(tc, host_rules);
    tcase_add_test(tc, view_versions);
    tcase_add_test(tc, demand_moves);
    tcase_add_test(tc, blobs);
    tcase_add_test(tc, refusals);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
