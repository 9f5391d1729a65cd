/* test_enforce.c - liballot in-process: the rate algorithm on a fake clock,
 * slots, per-key tables, health, rule swaps under concurrent decisions, the
 * reclamation scheme, the file on disk. Built with liballot's sources, so
 * the ASan and TSan builds check liballot itself.
 *
 *   gcra_exact            over T simulated seconds a rule admits
 *                         rate*T + burst (+-1 request), for several rates
 *                         and bursts; bytes: the same in units (+- one cost)
 *   gcra_retry_after      a rejected request passes exactly retry_after_ns
 *                         later, not 1 ns earlier
 *   delay_mode            waits grow by 1/rate; beyond max_delay_ms rejected
 *                         with the time until the wait would fit
 *   shadow_mode           never rejects, flags and counts, does not charge
 *   per_key               keys limited separately; the keyless tenant; a
 *                         tiny table under 1000 keys: evictions counted,
 *                         memory fixed
 *   too_big_and_kinds     cost > burst never passes; no rule -> not_found
 *                         (allowed), later rule seen by the same handle;
 *                         kind mismatches; bad paths
 *   health_curve          saturation sheds low priorities first, normal
 *                         ones partly, critical never
 *   slots_basic           max_apps/memory/vcores, idempotent release,
 *                         shadow capacity, the pool running out
 *   slots_two_threads     two threads never hold more than max_apps
 *   swaps_under_checks    rules replaced, removed and toggled 2000 times
 *                         while two threads decide (ASan/TSan: no
 *                         use-after-free, no race), with and without
 *                         keys; no thread sees a rule go back to an older
 *                         version (the fast path's copy and the table)
 *   epoch_waits_reader    epoch_synchronize() does not return while a read
 *                         section that began before it is open
 *   changes_and_replays   watch records: versions, replays skipped, other
 *                         ops, a record without its value asks a resync
 *   wait_version          times out, then returns once a change arrives
 *   lkg_restart           rules saved on disk are enforced at once by a
 *                         new instance whose servers are all down; stats
 *                         show where they came from; a corrupt file is
 *                         moved aside; one instance per data dir
 *   windows               usage windows roll: counts per window, peak
 *   options               bad options are refused */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../enforce/epoch.h"
#include "../../enforce/internal.h"
#include "../../enforce/lkg.h"
#include "../../gossip/gossip.h"
#include "../../proto/wire.h"

/* --- Helpers -------------------------------------------------------------- */

static char scratch[256];

static void scratch_make(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(scratch, sizeof scratch, "%s/allot-enforce-XXXXXX",
             tmp != NULL ? tmp : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(scratch));
}

static void scratch_remove(void)
{
    DIR *d = opendir(scratch);
    if (d == NULL) {
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            char p[512];
            snprintf(p, sizeof p, "%s/%s", scratch, e->d_name);
            unlink(p);
        }
    }
    closedir(d);
    rmdir(scratch);
}

static struct allot *open_manual(uint32_t per_key_max, uint32_t max_slots)
{
    struct allot_options o = {.data_dir = scratch,
                              .per_key_max = per_key_max,
                              .max_slots = max_slots};
    struct enf_test_hooks h = {.manual_clock = true, .no_threads = true};
    struct allot *a;
    ck_assert_int_eq(enf_open(&o, &h, &a), 0);
    enf_set_now_ns(a, 1000000000u);
    return a;
}

static struct quota rate_q(const char *path, double rate, uint64_t burst,
                           uint8_t on_exceed, uint64_t max_delay_ms,
                           bool per_key, uint64_t version)
{
    struct quota q;
    memset(&q, 0, sizeof q);
    q.path = (char *)path;
    q.version = version;
    q.f.kind = QUOTA_KIND_RATE;
    q.f.rate = rate;
    q.f.burst = burst;
    q.f.on_exceed = on_exceed;
    q.f.max_delay_ms = max_delay_ms;
    q.f.per_key = per_key;
    snprintf(q.f.fleet, sizeof q.f.fleet, "default");
    return q;
}

static struct quota cap_q(const char *path, uint64_t max_apps, uint64_t mem,
                          uint64_t vcores, uint8_t on_exceed, uint64_t version)
{
    struct quota q;
    memset(&q, 0, sizeof q);
    q.path = (char *)path;
    q.version = version;
    q.f.kind = QUOTA_KIND_CAPACITY;
    q.f.max_apps = max_apps;
    q.f.max_memory_mb = mem;
    q.f.max_vcores = vcores;
    q.f.on_exceed = on_exceed;
    return q;
}

/* Feed one watch record through the sink. */
static int apply(struct allot *a, uint64_t version, const char *op,
                 const char *path, const struct quota *q)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 9);
    wire_pack_kv_u64(&pk, "version", version);
    wire_pack_kv_u64(&pk, "time_ms", 0);
    wire_pack_kv_str(&pk, "principal", "test");
    wire_pack_kv_str(&pk, "op", op);
    wire_pack_kv_str(&pk, "path", path);
    wire_pack_str(&pk, "old");
    msgpack_pack_nil(&pk);
    wire_pack_str(&pk, "new");
    if (q != NULL) {
        quota_pack(&pk, q);
    } else {
        msgpack_pack_nil(&pk);
    }
    wire_pack_kv_u64(&pk, "client", 0);
    wire_pack_kv_u64(&pk, "seq", 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, msg), 0);
    int rv = rules_apply_change(a, &u.data, msg);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return rv;
}

static void set_quota(struct allot *a, uint64_t version, const struct quota *q)
{
    ck_assert_int_eq(apply(a, version, "quota.set", q->path, q), 0);
}

static struct allot_rule *rule(struct allot *a, const char *path)
{
    struct allot_rule *r;
    ck_assert_int_eq(allot_rule(a, path, &r), 0);
    return r;
}

static int check1(struct allot_rule *r, const char *key, uint64_t cost,
                  struct allot_decision *d)
{
    int rv = allot_check(r, key, cost, d);
    ck_assert_int_eq(rv, 0);
    return d->allowed;
}

/* --- GCRA ------------------------------------------------------------------
 */

/* Admitted units when requests of `cost` arrive `per_step` at a time every
 * `step_ns` for `seconds` simulated seconds. */
static uint64_t run_fake(struct allot *a, struct allot_rule *r, uint64_t cost,
                         uint64_t step_ns, unsigned per_step, double seconds)
{
    uint64_t t0 = 1000000000u, admitted = 0;
    uint64_t steps = (uint64_t)(seconds * 1e9 / (double)step_ns);
    for (uint64_t s = 0; s <= steps; s++) {
        enf_set_now_ns(a, t0 + s * step_ns);
        for (unsigned k = 0; k < per_step; k++) {
            struct allot_decision d;
            if (check1(r, NULL, cost, &d)) {
                admitted += cost;
            }
        }
    }
    return admitted;
}

START_TEST(gcra_exact)
{
    static const struct
    {
        double rate;
        uint64_t burst;
        double seconds;
    } cases[] = {
        {1, 1, 50},     {3, 5, 20},    {100, 1, 10},
        {100, 100, 10}, {1000, 7, 10}, {123456.7, 1000, 0.5},
        {0.5, 2, 60},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        scratch_make();
        struct allot *a = open_manual(0, 0);
        char path[32];
        snprintf(path, sizeof path, "org/r%zu", i);
        struct quota q = rate_q(path, cases[i].rate, cases[i].burst,
                                QUOTA_EXCEED_REJECT, 0, false, 1);
        set_quota(a, 1, &q);
        struct allot_rule *r = rule(a, path);
        /* Two arrivals per emission interval, two at a time: always more
         * demand than the limit. */
        uint64_t step = (uint64_t)(1e9 / cases[i].rate / 2);
        uint64_t got = run_fake(a, r, 1, step, 2, cases[i].seconds);
        double want = cases[i].rate * cases[i].seconds + (double)cases[i].burst;
        ck_assert_msg(fabs((double)got - want) <= 1.0,
                      "rate %g burst %llu over %g s: admitted %llu, "
                      "expected %.1f +- 1",
                      cases[i].rate, (unsigned long long)cases[i].burst,
                      cases[i].seconds, (unsigned long long)got, want);
        allot_close(a);
        scratch_remove();
    }
    /* Bytes: 10,000 B/s, burst 1,500 B, requests of 100 B. */
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct quota q =
        rate_q("org/bytes", 10000, 1500, QUOTA_EXCEED_REJECT, 0, false, 1);
    q.f.unit = QUOTA_UNIT_BYTES;
    set_quota(a, 1, &q);
    struct allot_rule *r = rule(a, "org/bytes");
    uint64_t got = run_fake(a, r, 100, 1000000, 3, 10);
    double want = 10000.0 * 10 + 1500;
    ck_assert_msg(fabs((double)got - want) <= 100.0,
                  "bytes: admitted %llu, expected %.0f +- 100",
                  (unsigned long long)got, want);
    struct allot_rule_stats rs;
    ck_assert_int_eq(allot_rule_stats(r, &rs), 0);
    ck_assert_uint_eq(rs.total.cost, got);
    ck_assert_uint_eq(rs.total.admitted, got / 100);
    allot_close(a);
    scratch_remove();
}
END_TEST

START_TEST(gcra_retry_after)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct quota q = rate_q("org/a", 10, 2, QUOTA_EXCEED_REJECT, 0, false, 4);
    set_quota(a, 4, &q);
    struct allot_rule *r = rule(a, "org/a");
    struct allot_decision d;
    uint64_t t0 = 5000000000u;
    enf_set_now_ns(a, t0);
    ck_assert_int_eq(check1(r, NULL, 1, &d), 1);
    ck_assert_uint_eq(d.remaining, 1);
    ck_assert_uint_eq(d.rule_version, 4);
    ck_assert_int_eq(check1(r, NULL, 1, &d), 1);
    ck_assert_uint_eq(d.remaining, 0);
    ck_assert_int_eq(check1(r, NULL, 1, &d), 0);
    ck_assert_int_eq(d.reason, ALLOT_REASON_LIMIT);
    ck_assert_uint_eq(d.retry_after_ns, 100000000u);
    enf_set_now_ns(a, t0 + d.retry_after_ns - 1);
    ck_assert_int_eq(check1(r, NULL, 1, &d), 0);
    ck_assert_uint_eq(d.retry_after_ns, 1);
    enf_set_now_ns(a, t0 + 100000000u);
    ck_assert_int_eq(check1(r, NULL, 1, &d), 1);
    allot_close(a);
    scratch_remove();
}
END_TEST

START_TEST(delay_mode)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct quota q = rate_q("org/d", 10, 1, QUOTA_EXCEED_DELAY, 250, false, 1);
    set_quota(a, 1, &q);
    struct allot_rule *r = rule(a, "org/d");
    struct allot_decision d;
    ck_assert_int_eq(check1(r, NULL, 1, &d), 1);
    ck_assert_int_eq(d.delayed, 0);
    for (uint64_t k = 1; k <= 2; k++) {
        ck_assert_int_eq(check1(r, NULL, 1, &d), 1);
        ck_assert_int_eq(d.delayed, 1);
        ck_assert_uint_eq(d.retry_after_ns, k * 100000000u);
    }
    /* The next would wait 300 ms > 250 ms: rejected; in 50 ms the wait
     * would fit. */
    ck_assert_int_eq(check1(r, NULL, 1, &d), 0);
    ck_assert_int_eq(d.delayed, 0);
    ck_assert_uint_eq(d.retry_after_ns, 50000000u);
    struct allot_rule_stats rs;
    allot_rule_stats(r, &rs);
    ck_assert_uint_eq(rs.total.admitted, 3);
    ck_assert_uint_eq(rs.total.delayed, 2);
    ck_assert_uint_eq(rs.total.rejected, 1);
    allot_close(a);
    scratch_remove();
}
END_TEST

START_TEST(shadow_mode)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct quota q = rate_q("org/s", 10, 2, QUOTA_EXCEED_SHADOW, 0, false, 1);
    set_quota(a, 1, &q);
    struct allot_rule *r = rule(a, "org/s");
    struct allot_decision d;
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(check1(r, NULL, 1, &d), 1);
        ck_assert_int_eq(d.shadow, i >= 2);
    }
    struct allot_rule_stats rs;
    allot_rule_stats(r, &rs);
    ck_assert_uint_eq(rs.total.admitted, 2);
    ck_assert_uint_eq(rs.total.shadowed, 3);
    ck_assert_uint_eq(rs.total.rejected, 0);
    ck_assert_uint_eq(rs.total.cost, 5);
    /* Shadowed requests were not charged: 100 ms later one more fits. */
    enf_set_now_ns(a, 1000000000u + 100000000u);
    ck_assert_int_eq(check1(r, NULL, 1, &d), 1);
    ck_assert_int_eq(d.shadow, 0);
    allot_close(a);
    scratch_remove();
}
END_TEST

START_TEST(per_key)
{
    scratch_make();
    struct allot *a = open_manual(16, 0);
    struct quota q = rate_q("org/k", 10, 2, QUOTA_EXCEED_REJECT, 0, true, 1);
    set_quota(a, 1, &q);
    struct allot_rule *r = rule(a, "org/k");
    struct allot_decision d;
    const char *keys[] = {"alice", "bob", NULL};
    for (int k = 0; k < 3; k++) {
        int admitted = 0;
        for (int i = 0; i < 4; i++) {
            admitted += check1(r, keys[k], 1, &d);
        }
        ck_assert_msg(admitted == 2, "key %s: %d admitted",
                      keys[k] ? keys[k] : "(none)", admitted);
    }
    /* 1000 keys through a 16-entry table with the clock stopped: every
     * entry is busy, so each new key takes over the least busy one and
     * inherits its debt (refused a little early, never admitted beyond a
     * limit); nothing grows. */
    int admitted = 0;
    for (int i = 0; i < 1000; i++) {
        char key[32];
        snprintf(key, sizeof key, "tenant-%d", i);
        admitted += check1(r, key, 1, &d);
    }
    ck_assert_int_gt(admitted, 0);
    ck_assert_int_le(admitted, 1000);
    struct allot_stats st;
    allot_stats(a, &st);
    ck_assert_uint_ge(st.key_evictions, 1000 - 16);
    /* Idle keys are taken over without loss: after the buckets refill,
     * a new key still gets a whole burst. */
    enf_set_now_ns(a, 1000000000u + 10000000000u);
    ck_assert_int_eq(check1(r, "late", 1, &d), 1);
    ck_assert_int_eq(check1(r, "late", 1, &d), 1);
    ck_assert_int_eq(check1(r, "late", 1, &d), 0);
    allot_close(a);
    scratch_remove();
}
END_TEST

START_TEST(too_big_and_kinds)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct allot_rule *r = rule(a, "org/later");
    ck_assert_ptr_eq(rule(a, "org/later"), r);
    struct allot_decision d;
    d.allowed = 0;
    ck_assert_int_eq(allot_check(r, NULL, 1, &d), ALLOT_ENOT_FOUND);
    ck_assert_int_eq(d.allowed, 1);
    ck_assert_int_eq(d.reason, ALLOT_REASON_NO_RULE);
    struct quota q =
        rate_q("org/later", 10, 5, QUOTA_EXCEED_REJECT, 0, false, 3);
    set_quota(a, 3, &q);
    ck_assert_int_eq(check1(r, NULL, 6, &d), 0);
    ck_assert_int_eq(d.reason, ALLOT_REASON_TOO_BIG);
    ck_assert_uint_eq(d.retry_after_ns, UINT64_MAX);
    ck_assert_int_eq(check1(r, NULL, 5, &d), 1);
    ck_assert_int_eq(apply(a, 4, "quota.rm", "org/later", NULL), 0);
    ck_assert_int_eq(allot_check(r, NULL, 1, &d), ALLOT_ENOT_FOUND);
    set_quota(a, 5, &q); /* back (its own version is older: still taken) */
    ck_assert_int_eq(allot_check(r, NULL, 0, &d), 0);

    struct quota c = cap_q("org/batch", 2, 0, 0, QUOTA_EXCEED_REJECT, 6);
    set_quota(a, 6, &c);
    struct allot_rule *rc = rule(a, "org/batch");
    struct allot_slot *s;
    ck_assert_int_eq(allot_check(rc, NULL, 1, &d), ALLOT_EINVALID);
    ck_assert_int_eq(allot_acquire(r, NULL, &s), ALLOT_EINVALID);
    ck_assert_int_eq(allot_check_prio(r, NULL, 1, 4, &d), ALLOT_EINVALID);
    struct allot_rule *bad;
    ck_assert_int_eq(allot_rule(a, "org//x", &bad), ALLOT_EINVALID);
    ck_assert_int_eq(allot_rule(a, "", &bad), ALLOT_EINVALID);
    ck_assert_int_eq(allot_rule(a, NULL, &bad), ALLOT_EINVALID);
    ck_assert_int_eq(allot_check(NULL, NULL, 1, &d), ALLOT_EINVALID);
    allot_release(NULL);
    allot_release((struct allot_slot *)(uintptr_t)0x12345);
    allot_close(a);
    scratch_remove();
}
END_TEST

START_TEST(health_curve)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct quota q = rate_q("org/h", 10, 10, QUOTA_EXCEED_REJECT, 0, false, 1);
    set_quota(a, 1, &q);
    struct allot_rule *r = rule(a, "org/h");
    struct allot_decision d;
    allot_set_health(a, 0.8);
    /* Low: fully shed at 0.8 (from 0.7), though the bucket is full. */
    ck_assert_int_eq(allot_check_prio(r, NULL, 1, ALLOT_PRIO_LOW, &d), 0);
    ck_assert_int_eq(d.allowed, 0);
    ck_assert_int_eq(d.reason, ALLOT_REASON_HEALTH);
    ck_assert_uint_eq(d.retry_after_ns, ENF_HEALTH_RETRY_NS);
    /* Normal: half the burst is kept back at 0.8 (0.7 -> 0.9). */
    int normal = 0;
    for (int i = 0; i < 10; i++) {
        allot_check_prio(r, NULL, 1, ALLOT_PRIO_NORMAL, &d);
        normal += d.allowed;
    }
    ck_assert_int_eq(normal, 5);
    ck_assert_int_eq(d.reason, ALLOT_REASON_HEALTH);
    /* Critical uses the rest, then meets the rule's own limit. */
    int critical = 0;
    for (int i = 0; i < 10; i++) {
        allot_check_prio(r, NULL, 1, ALLOT_PRIO_CRITICAL, &d);
        critical += d.allowed;
    }
    ck_assert_int_eq(critical, 5);
    ck_assert_int_eq(d.reason, ALLOT_REASON_LIMIT);
    struct allot_stats st;
    allot_stats(a, &st);
    ck_assert(fabs(st.health - 0.8) < 1e-9);
    /* Healthy again: nothing is kept back. */
    allot_set_health(a, 0.0);
    enf_set_now_ns(a, 1000000000u + 2000000000u);
    int low = 0;
    for (int i = 0; i < 12; i++) {
        allot_check_prio(r, NULL, 1, ALLOT_PRIO_LOW, &d);
        low += d.allowed;
    }
    ck_assert_int_eq(low, 10);
    allot_set_health(a, NAN); /* treated as healthy */
    allot_close(a);
    scratch_remove();
}
END_TEST

/* --- Slots -----------------------------------------------------------------
 */

START_TEST(slots_basic)
{
    scratch_make();
    struct allot *a = open_manual(0, 8);
    struct quota c = cap_q("org/b", 3, 100, 0, QUOTA_EXCEED_REJECT, 1);
    set_quota(a, 1, &c);
    struct allot_rule *r = rule(a, "org/b");
    struct allot_slot *s[4];
    struct allot_decision d;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(allot_acquire(r, NULL, &s[i]), 0);
        ck_assert_ptr_nonnull(s[i]);
    }
    ck_assert_int_eq(
        allot_acquire_res(r, NULL, 0, 0, ALLOT_PRIO_NORMAL, &s[3], &d), 0);
    ck_assert_ptr_null(s[3]);
    ck_assert_int_eq(d.reason, ALLOT_REASON_LIMIT);
    allot_release(s[1]);
    allot_release(s[1]); /* idempotent */
    struct allot_stats st;
    allot_stats(a, &st);
    ck_assert_uint_eq(st.stale_releases, 1);
    ck_assert_uint_eq(st.slots_in_use, 2);
    ck_assert_int_eq(allot_acquire(r, NULL, &s[1]), 0);
    ck_assert_ptr_nonnull(s[1]);
    for (int i = 0; i < 3; i++) {
        allot_release(s[i]);
    }
    /* Memory: 60 + 60 > 100; 200 can never fit. */
    ck_assert_int_eq(
        allot_acquire_res(r, NULL, 60, 1, ALLOT_PRIO_NORMAL, &s[0], &d), 0);
    ck_assert_ptr_nonnull(s[0]);
    ck_assert_int_eq(
        allot_acquire_res(r, NULL, 60, 1, ALLOT_PRIO_NORMAL, &s[1], &d), 0);
    ck_assert_ptr_null(s[1]);
    ck_assert_int_eq(d.reason, ALLOT_REASON_LIMIT);
    ck_assert_int_eq(
        allot_acquire_res(r, NULL, 200, 0, ALLOT_PRIO_NORMAL, &s[1], &d), 0);
    ck_assert_int_eq(d.reason, ALLOT_REASON_TOO_BIG);
    struct allot_rule_stats rs;
    allot_rule_stats(r, &rs);
    ck_assert_uint_eq(rs.in_use_apps, 1);
    ck_assert_uint_eq(rs.in_use_memory_mb, 60);
    ck_assert_uint_eq(rs.in_use_vcores, 1);
    ck_assert_uint_eq(rs.total.peak, 3);
    allot_release(s[0]);
    allot_rule_stats(r, &rs);
    ck_assert_uint_eq(rs.in_use_memory_mb, 0);

    /* Shadow: over the limit, still admitted, flagged and held. */
    struct quota sc = cap_q("org/sh", 1, 0, 0, QUOTA_EXCEED_SHADOW, 2);
    set_quota(a, 2, &sc);
    struct allot_rule *rsh = rule(a, "org/sh");
    struct allot_slot *x, *y;
    ck_assert_int_eq(allot_acquire(rsh, NULL, &x), 0);
    ck_assert_int_eq(
        allot_acquire_res(rsh, NULL, 0, 0, ALLOT_PRIO_NORMAL, &y, &d), 0);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(d.shadow, 1);
    allot_rule_stats(rsh, &rs);
    ck_assert_uint_eq(rs.total.shadowed, 1);
    ck_assert_uint_eq(rs.in_use_apps, 2);

    /* The pool (8 slots) runs out: ALLOT_ETOO_BIG, nothing held. */
    struct quota big = cap_q("org/many", 0, 0, 0, QUOTA_EXCEED_REJECT, 3);
    set_quota(a, 3, &big);
    struct allot_rule *rm = rule(a, "org/many");
    struct allot_slot *m[8];
    int got = 0;
    for (int i = 0; i < 8; i++) {
        int rv = allot_acquire(rm, NULL, &m[i]);
        if (rv == 0) {
            got++;
        } else {
            ck_assert_int_eq(rv, ALLOT_ETOO_BIG);
            m[i] = NULL;
        }
    }
    ck_assert_int_eq(got, 6); /* 8 minus x and y */
    allot_rule_stats(rm, &rs);
    ck_assert_uint_eq(rs.in_use_apps, 6);
    for (int i = 0; i < 8; i++) {
        allot_release(m[i]);
    }
    allot_release(x);
    allot_release(y);
    allot_stats(a, &st);
    ck_assert_uint_eq(st.slots_in_use, 0);
    allot_close(a);
    scratch_remove();
}
END_TEST

#define SLOT_LIMIT 5

struct slot_worker
{
    struct allot_rule *r;
    _Atomic int *held;
    _Atomic int *max_seen;
    unsigned iterations;
    unsigned admitted;
};

static void *slot_worker_main(void *arg)
{
    struct slot_worker *w = arg;
    struct allot_slot *mine[3];
    for (unsigned i = 0; i < w->iterations; i++) {
        /* Take up to three, then give them back: plenty of contention. */
        int n = 0;
        for (int k = 0; k < 3; k++) {
            struct allot_slot *s;
            ck_assert_int_eq(allot_acquire(w->r, NULL, &s), 0);
            if (s == NULL) {
                break;
            }
            int h = atomic_fetch_add(w->held, 1) + 1;
            int m = atomic_load(w->max_seen);
            while (h > m && !atomic_compare_exchange_weak(w->max_seen, &m, h)) {
            }
            mine[n++] = s;
            w->admitted++;
        }
        for (int k = 0; k < n; k++) {
            atomic_fetch_sub(w->held, 1);
            allot_release(mine[k]);
        }
    }
    return NULL;
}

START_TEST(slots_two_threads)
{
    scratch_make();
    struct allot *a = open_manual(0, 64);
    struct quota c = cap_q("org/t", SLOT_LIMIT, 0, 0, QUOTA_EXCEED_REJECT, 1);
    set_quota(a, 1, &c);
    struct allot_rule *r = rule(a, "org/t");
    _Atomic int held = 0, max_seen = 0;
    struct slot_worker w[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        w[i] = (struct slot_worker){
            .r = r, .held = &held, .max_seen = &max_seen, .iterations = 20000};
        ck_assert_int_eq(pthread_create(&t[i], NULL, slot_worker_main, &w[i]),
                         0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    ck_assert_int_le(atomic_load(&max_seen), SLOT_LIMIT);
    ck_assert_int_gt(w[0].admitted + w[1].admitted, 0);
    struct allot_rule_stats rs;
    allot_rule_stats(r, &rs);
    ck_assert_uint_eq(rs.in_use_apps, 0);
    ck_assert_uint_le(rs.total.peak, SLOT_LIMIT);
    ck_assert_uint_eq(rs.total.admitted, w[0].admitted + w[1].admitted);
    allot_close(a);
    scratch_remove();
}
END_TEST

/* --- Swaps and reclamation -------------------------------------------------
 */

struct checker
{
    struct allot_rule *r[2];
    _Atomic int *stop;
    unsigned long decisions;
    unsigned long bad;
    unsigned long backwards; /* a decision by an older rule than before */
    _Atomic int running;     /* set once it decided at least once */
};

static void *checker_main(void *arg)
{
    struct checker *c = arg;
    char key[16];
    uint64_t seen[2] = {0, 0};
    for (unsigned long i = 0; !atomic_load(c->stop) && i < 50000000ul; i++) {
        struct allot_decision d;
        snprintf(key, sizeof key, "k%lu", i % 50);
        /* With and without a key: per_key rules take the general path with
         * one and the fast path without, so a thread goes back and forth
         * between the handle's copy and the table. */
        int rv = allot_check(c->r[i & 1], (i & 2) ? key : NULL, 1, &d);
        /* EINVALID while the rule is a capacity one. */
        if (rv != 0 && rv != ALLOT_ENOT_FOUND && rv != ALLOT_EINVALID) {
            c->bad++;
        }
        if (rv == 0) {
            c->backwards += d.rule_version < seen[i & 1];
            seen[i & 1] = d.rule_version;
        }
        struct allot_slot *s;
        rv = allot_acquire(c->r[i & 1], NULL, &s);
        if (rv == 0) {
            allot_release(s);
        } else if (rv != ALLOT_EINVALID && rv != ALLOT_ENOT_FOUND) {
            c->bad++;
        }
        c->decisions++;
        atomic_store_explicit(&c->running, 1, memory_order_relaxed);
    }
    return NULL;
}

START_TEST(swaps_under_checks)
{
    scratch_make();
    struct allot *a = open_manual(64, 0);
    struct allot_rule *r1 = rule(a, "org/x");
    struct allot_rule *r2 = rule(a, "org/y");
    _Atomic int stop = 0;
    struct checker c[2] = {{.r = {r1, r2}, .stop = &stop},
                           {.r = {r2, r1}, .stop = &stop}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(pthread_create(&t[i], NULL, checker_main, &c[i]), 0);
    }
    /* Swap only once both threads decide: on a loaded machine (a CI run
     * beside other work) a thread may not be scheduled before a quick
     * swap loop ends, and the test would check nothing. */
    for (int i = 0; i < 2; i++) {
        for (int w = 0; !atomic_load(&c[i].running) && w < 60000; w++) {
            usleep(1000);
        }
        ck_assert_msg(atomic_load(&c[i].running),
                      "checker %d never ran in 60 s", i);
    }
    uint64_t v = 0;
    for (int i = 0; i < 2000; i++) {
        const char *path = (i & 1) ? "org/x" : "org/y";
        switch (i % 5) {
        case 0: {
            struct quota q =
                rate_q(path, 100 + i, 10, QUOTA_EXCEED_REJECT, 0, false, v + 1);
            set_quota(a, ++v, &q);
            break;
        }
        case 1: {
            struct quota q =
                rate_q(path, 50, 5, QUOTA_EXCEED_SHADOW, 0, true, v + 1);
            set_quota(a, ++v, &q);
            break;
        }
        case 2: {
            struct quota q = cap_q(path, 3, 0, 0, QUOTA_EXCEED_REJECT, v + 1);
            set_quota(a, ++v, &q);
            break;
        }
        case 3:
            ck_assert_int_eq(apply(a, ++v, "quota.rm", path, NULL), 0);
            break;
        default: {
            /* A whole new set, as a pull makes. */
            struct quota qs[2] = {
                rate_q("org/x", 7, 2, QUOTA_EXCEED_DELAY, 100, false, v + 1),
                rate_q("org/y", 9, 3, QUOTA_EXCEED_REJECT, 0, true, v + 1)};
            ck_assert_int_eq(rules_replace(a, qs, 2, ++v, false), 0);
            break;
        }
        }
        enf_set_now_ns(a, 1000000000u + (uint64_t)i * 1000000u);
        /* New handles mid-run too (they extend the table). */
        if (i % 200 == 0) {
            char p[32];
            snprintf(p, sizeof p, "org/n%d", i);
            rule(a, p);
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        ck_assert_uint_eq(c[i].bad, 0);
        ck_assert_uint_eq(c[i].backwards, 0);
        ck_assert_uint_gt(c[i].decisions, 0);
    }
    ck_assert_uint_eq(allot_catalog_version(a), v);
    allot_close(a);
    scratch_remove();
}
END_TEST

struct reader_arg
{
    _Atomic int inside;
    _Atomic int release;
};

static void *reader_main(void *arg)
{
    struct reader_arg *ra = arg;
    struct epoch_reader *rd = epoch_enter();
    ck_assert_ptr_nonnull(rd);
    atomic_store(&ra->inside, 1);
    for (int i = 0; i < 10000 && !atomic_load(&ra->release); i++) {
        usleep(1000);
    }
    epoch_exit(rd);
    return NULL;
}

static _Atomic int sync_done;

static void *sync_main(void *arg)
{
    (void)arg;
    epoch_synchronize();
    atomic_store(&sync_done, 1);
    return NULL;
}

START_TEST(epoch_waits_reader)
{
    ck_assert_int_eq(epoch_global_init(), 0);
    struct reader_arg ra = {0};
    pthread_t reader, writer;
    ck_assert_int_eq(pthread_create(&reader, NULL, reader_main, &ra), 0);
    for (int i = 0; i < 10000 && !atomic_load(&ra.inside); i++) {
        usleep(1000);
    }
    ck_assert(atomic_load(&ra.inside));
    ck_assert_int_eq(pthread_create(&writer, NULL, sync_main, NULL), 0);
    usleep(100000);
    /* The reader entered before synchronize began: it must still wait. */
    ck_assert_int_eq(atomic_load(&sync_done), 0);
    atomic_store(&ra.release, 1);
    pthread_join(reader, NULL);
    pthread_join(writer, NULL);
    ck_assert_int_eq(atomic_load(&sync_done), 1);
    /* An idle registry does not hold a writer up. */
    epoch_synchronize();
    unsigned records, in_use;
    epoch_registry_counts(&records, &in_use);
    ck_assert_uint_ge(records, 1);
}
END_TEST

/* --- The sink ---------------------------------------------------------------
 */

/* The gossip view reaches the rule table: rules of this host's fleet
 * enforce this host's part (equal or weighted), others the whole rate;
 * the part follows probation, the quiet period after a loss, and a change
 * of view, and a rule arriving later is computed at the current part. */
START_TEST(fleet_parts)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct allot_rule *eq = rule(a, "org/eq");
    struct allot_rule *w = rule(a, "org/w");
    struct allot_rule *other = rule(a, "org/other");
    struct quota qs[3] = {
        rate_q("org/eq", 300, 30, QUOTA_EXCEED_REJECT, 0, false, 1),
        rate_q("org/w", 400, 40, QUOTA_EXCEED_REJECT, 0, false, 1),
        rate_q("org/other", 500, 50, QUOTA_EXCEED_REJECT, 0, false, 1)};
    qs[1].f.share = QUOTA_SHARE_WEIGHTED;
    snprintf(qs[2].f.fleet, sizeof qs[2].f.fleet, "batch");
    ck_assert_int_eq(rules_replace(a, qs, 3, 1, false), 0);
    struct allot_rule_stats rs;
    allot_rule_stats(eq, &rs);
    ck_assert_double_eq_tol(rs.local_rate, 300, 1e-9); /* no view yet */

    /* Three hosts of fleet "default", weights 1, 1, 2; this one first. */
    struct shares_member m[4] = {
        {"host-a", 1, 0}, {"host-b", 1, 0}, {"host-c", 2, 0}, {"host-d", 1, 0}};
    uint64_t t0 = a->share_equal.joined_ms;
    rules_reshare(a, &(struct shares_view){m, 3, 0, 0, 3, 0},
                  t0 + 100); /* on probation: the floor */
    allot_rule_stats(eq, &rs);
    ck_assert_double_eq_tol(
        rs.local_rate, 300 * SHARES_RATE_FLOOR / SHARES_PROBATION_VIEW, 1e-9);
    rules_reshare(a, &(struct shares_view){m, 3, 0, 0, 3, 0}, t0 + 60000);
    allot_rule_stats(eq, &rs);
    ck_assert_double_eq_tol(rs.local_rate, 100, 1e-9);
    ck_assert_uint_eq(rs.local_burst, 10);
    allot_rule_stats(w, &rs);
    double wpart =
        400 * (SHARES_RATE_FLOOR / 3 + (1 - SHARES_RATE_FLOOR) * 1.0 / 4.0);
    ck_assert_double_eq_tol(rs.local_rate, wpart, 1e-9);
    allot_rule_stats(other, &rs);
    ck_assert_double_eq_tol(rs.local_rate, 500, 1e-9); /* not our fleet */

    /* A fourth host: the parts shrink at once. */
    rules_reshare(a, &(struct shares_view){m, 4, 0, 0, 4, 0}, t0 + 61000);
    allot_rule_stats(eq, &rs);
    ck_assert_double_eq_tol(rs.local_rate, 75, 1e-9);
    /* It dies: no growth while it has been suspect for long (2 s: past
     * the doubt period), nor during the quiet period after its death,
     * then 100 again. */
    rules_fleet_change(a, t0 + 69000);
    rules_reshare(a, &(struct shares_view){m, 4, 0, 1, 4, 2000}, t0 + 69500);
    allot_rule_stats(eq, &rs);
    ck_assert_double_eq_tol(rs.local_rate, 75, 1e-9);
    rules_fleet_change(a, t0 + 70000);
    rules_reshare(a, &(struct shares_view){m, 3, 0, 0, 4, 0}, t0 + 70000);
    allot_rule_stats(eq, &rs);
    ck_assert_double_eq_tol(rs.local_rate, 75, 1e-9);
    rules_reshare(a, &(struct shares_view){m, 3, 0, 0, 4, 0},
                  t0 + 70000 + 60000);
    allot_rule_stats(eq, &rs);
    ck_assert_double_eq_tol(rs.local_rate, 100, 1e-9);

    /* Capacity: slots by weight over the settled view, largest remainders
     * (10 apps over weights 1, 1, 2 -> 2.5, 2.5, 5: the tie for the last
     * slot goes to the first name, this host); memory divides exactly. */
    struct quota cq = cap_q("batch", 10, 1000, 0, QUOTA_EXCEED_REJECT, 3);
    set_quota(a, 3, &cq);
    struct allot_rule *cap = rule(a, "batch");
    allot_rule_stats(cap, &rs);
    ck_assert_uint_eq(rs.local_max_apps, 3);
    ck_assert_uint_eq(rs.local_max_memory_mb, 250);
    ck_assert_uint_eq(rs.local_max_vcores, UINT64_MAX);
    struct allot_slot *s1, *s2, *s3, *s4;
    ck_assert_int_eq(allot_acquire(cap, NULL, &s1), 0);
    ck_assert_int_eq(allot_acquire(cap, NULL, &s2), 0);
    ck_assert_int_eq(allot_acquire(cap, NULL, &s3), 0);
    ck_assert(s1 != NULL && s2 != NULL && s3 != NULL);
    ck_assert_int_eq(allot_acquire(cap, NULL, &s4), 0);
    ck_assert_ptr_null(s4); /* the fourth is over this host's 3 */
    allot_release(s1);
    allot_release(s2);
    allot_release(s3);
    /* The fourth member back: 10 over 1, 1, 2, 1 -> 2 each, 4 for host-c. */
    rules_reshare(a, &(struct shares_view){m, 4, 0, 0, 4, 0}, t0 + 200000);
    allot_rule_stats(cap, &rs);
    ck_assert_uint_eq(rs.local_max_apps, 2);
    ck_assert_uint_eq(rs.local_max_memory_mb, 200);

    /* A rule that arrives now is computed at the current part (a quarter,
     * four members). */
    struct quota q4 =
        rate_q("org/late", 600, 60, QUOTA_EXCEED_REJECT, 0, false, 4);
    set_quota(a, 4, &q4);
    allot_rule_stats(rule(a, "org/late"), &rs);
    ck_assert_double_eq_tol(rs.local_rate, 150, 1e-9);
    /* The file holds the quota's limits, not this host's slots: reopened
     * without a view, the whole limit. */
    allot_close(a);
    a = open_manual(0, 0);
    allot_rule_stats(rule(a, "batch"), &rs);
    ck_assert_uint_eq(rs.local_max_apps, 10);
    ck_assert_uint_eq(rs.local_max_memory_mb, 1000);
    allot_close(a);
    scratch_remove();
}
END_TEST

/* Demand shares: each host's wanted rate (its last usage window) goes
 * out in its gossip metadata as (hash, demand) pairs; every host divides a
 * demand rule max-min fair over the demands its view carries. */
START_TEST(demand_parts)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct quota q = rate_q("org/d", 100, 10, QUOTA_EXCEED_REJECT, 0, false, 1);
    q.f.share = QUOTA_SHARE_DEMAND;
    ck_assert_int_eq(rules_replace(a, &q, 1, 1, false), 0);
    struct allot_rule *r = rule(a, "org/d");

    /* What this host wanted: 20 decisions in the window (some refused). */
    struct allot_decision d;
    for (int i = 0; i < 20; i++) {
        allot_check(r, NULL, 1, &d);
    }
    enf_roll_windows(a);
    struct shares_demand it[ENF_DEMAND_RULES];
    ck_assert_uint_eq(rules_demands(a, it, ENF_DEMAND_RULES), 1);
    ck_assert_uint_eq(it[0].hash, shares_rule_hash("org/d"));
    ck_assert_double_eq_tol(it[0].demand, 20.0 / 10.0, 1e-9); /* 10 s */
    /* A quiet window moves the demand halfway (a moving average), a
     * second one halfway again. */
    enf_roll_windows(a);
    ck_assert_uint_eq(rules_demands(a, it, ENF_DEMAND_RULES), 1);
    ck_assert_double_eq_tol(it[0].demand, 1.0, 1e-9);
    enf_roll_windows(a);
    ck_assert_uint_eq(rules_demands(a, it, ENF_DEMAND_RULES), 1);
    ck_assert_double_eq_tol(it[0].demand, 0.5, 1e-9);

    /* The blobs three hosts publish (the format: test_shares). */
    uint8_t blob[3][GOSSIP_APP_MAX];
    size_t len[3];
    const double want[3] = {200, 10, 20}; /* this host wants the most */
    for (int i = 0; i < 3; i++) {
        struct shares_blob b = {.n = 1,
                                .d = {{shares_rule_hash("org/d"), want[i]}}};
        len[i] = shares_blob_encode(&b, blob[i], sizeof blob[i]);
        ck_assert_uint_gt(len[i], 0);
    }
    /* This host's published view and state follow its last view. */
    uint32_t view, state;
    rules_view_state(a, &view, &state);
    ck_assert_uint_eq(view, 0);

    /* Three hosts: floor 5/3 each; of the 95 left, 10 and 20 are met and
     * this host gets the other 65. */
    struct shares_member m[3] = {
        {"host-a", 1, 0}, {"host-b", 1, 0}, {"host-c", 1, 0}};
    const uint8_t *app[3] = {blob[0], blob[1], blob[2]};
    uint64_t t0 = a->share_weighted.joined_ms;
    rules_reshare(a, &(struct shares_view){m, 3, 0, 0, 3, 0}, t0 + 60000);
    rules_reshare_demand(a, &(struct shares_view){m, 3, 0, 0, 3, 0}, app, len,
                         t0 + 60000);
    struct allot_rule_stats rs;
    allot_rule_stats(r, &rs);
    ck_assert_double_eq_tol(rs.local_rate, 5.0 / 3 + 65, 1e-4);
    rules_view_state(a, &view, &state);
    struct shares_view sv = {m, 3, 0, 0, 3, 0};
    ck_assert_uint_eq(view, shares_view_version(&sv));
    ck_assert_uint_eq(state, 0);
    struct allot_stats st;
    ck_assert_int_eq(allot_stats(a, &st), 0);
    ck_assert_uint_eq(st.view_version, view);
    ck_assert_uint_eq(st.fleet_members, 3);
    /* A member's garbage blob reads as no demand. */
    const uint8_t junk[] = {0x93, 0x01, 0xc1, 0xff};
    const uint8_t *bad[3] = {blob[0], junk, blob[2]};
    size_t bad_len[3] = {len[0], sizeof junk, len[2]};
    rules_reshare_demand(a, &sv, bad, bad_len, t0 + 60500);
    allot_rule_stats(r, &rs);
    ck_assert_double_eq_tol(rs.local_rate, 5.0 / 3 + 75, 1e-4);
    /* Without demand blobs every host wants nothing: equal thirds. */
    const uint8_t *none[3] = {NULL, NULL, NULL};
    size_t zero[3] = {0, 0, 0};
    rules_reshare_demand(a, &(struct shares_view){m, 3, 0, 0, 3, 0}, none, zero,
                         t0 + 61000);
    allot_rule_stats(r, &rs);
    ck_assert_double_eq_tol(rs.local_rate, 100.0 / 3, 1e-4);
    allot_close(a);
    scratch_remove();
}
END_TEST

START_TEST(changes_and_replays)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct allot_rule *r = rule(a, "org/p");
    /* A pull at V=10 whose later page held org/p at version 12. */
    struct quota q12 =
        rate_q("org/p", 12, 12, QUOTA_EXCEED_REJECT, 0, false, 12);
    ck_assert_int_eq(rules_replace(a, &q12, 1, 10, false), 0);
    ck_assert_uint_eq(allot_catalog_version(a), 10);
    /* The watch from 10 replays 11 (older than the rule held): skipped. */
    struct quota q11 =
        rate_q("org/p", 11, 11, QUOTA_EXCEED_REJECT, 0, false, 11);
    set_quota(a, 11, &q11);
    struct allot_rule_stats rs;
    allot_rule_stats(r, &rs);
    ck_assert_uint_eq(rs.rule_version, 12);
    ck_assert_uint_eq(allot_catalog_version(a), 11);
    /* 12 is the same change: still 12. Then a real newer one. */
    set_quota(a, 12, &q12);
    struct quota q13 =
        rate_q("org/p", 13, 13, QUOTA_EXCEED_REJECT, 0, false, 13);
    set_quota(a, 13, &q13);
    allot_rule_stats(r, &rs);
    ck_assert_uint_eq(rs.rule_version, 13);
    ck_assert(fabs(rs.local_rate - 13) < 1e-9);
    /* A version at or below the catalog's is ignored entirely. */
    set_quota(a, 5, &q11);
    allot_rule_stats(r, &rs);
    ck_assert_uint_eq(rs.rule_version, 13);
    /* Other operations only move the version. */
    ck_assert_int_eq(apply(a, 14, "principal.add", "", NULL), 0);
    ck_assert_uint_eq(allot_catalog_version(a), 14);
    /* A quota.set without its value cannot be applied: resync wanted. */
    ck_assert_int_eq(apply(a, 15, "quota.set", "org/p", NULL), 0);
    pthread_mutex_lock(&a->mu);
    ck_assert(a->need_resync);
    pthread_mutex_unlock(&a->mu);
    /* A malformed record is refused and changes nothing. */
    ck_assert_int_eq(apply(a, 16, "quota.set", "bad//path", &q13),
                     ALLOT_EINVALID);
    ck_assert_int_eq(apply(a, 16, "quota.set", "org/other", &q13),
                     ALLOT_EINVALID);
    ck_assert_uint_eq(allot_catalog_version(a), 15);
    struct allot_stats st;
    allot_stats(a, &st);
    ck_assert_uint_eq(st.rules, 1);
    allot_close(a);
    scratch_remove();
}
END_TEST

struct later_arg
{
    struct allot *a;
};

static void *apply_later(void *arg)
{
    struct later_arg *la = arg;
    usleep(20000);
    struct quota q = rate_q("org/w", 1, 1, QUOTA_EXCEED_REJECT, 0, false, 5);
    set_quota(la->a, 5, &q);
    return NULL;
}

START_TEST(wait_version)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    ck_assert_int_eq(allot_wait_version(a, 5, 30), ALLOT_ETIMEOUT);
    ck_assert_int_eq(allot_wait_version(a, 0, 0), 0);
    struct later_arg la = {a};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, apply_later, &la), 0);
    ck_assert_int_eq(allot_wait_version(a, 5, 60000), 0);
    pthread_join(t, NULL);
    allot_close(a);
    scratch_remove();
}
END_TEST

/* --- Last-known-good -------------------------------------------------------
 */

/* Files whose digest is right but whose body is not a rule set (a writer
 * bug, or a file someone re-hashed): each is refused whole, with nothing
 * loaded and nothing allocated for a lying count. */
START_TEST(lkg_bad_bodies)
{
    scratch_make();
    static const struct
    {
        const char *why;
        const char *quotas;
        size_t len;
    } cases[] = {
        {"a lying count", "\xdd\x7f\xff\xff\xff", 5},
        {"not an array", "\x05", 1},
        {"an element that is not a quota", "\x91\x05", 2},
        {"a truncated element", "\x91\x82\xa4path", 7},
        {"an element short of its count", "\x92\x80", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char msg[ALLOT_ERRMSG_SIZE];
        ck_assert_int_eq(
            lkg_save(scratch, cases[i].quotas, cases[i].len, 3, 1000, msg), 0);
        struct lkg_doc doc;
        int rv = lkg_load(scratch, &doc, msg);
        ck_assert_msg(rv == ALLOT_EPROTOCOL, "%s: %d", cases[i].why, rv);
        ck_assert_uint_eq(doc.n, 0);
        ck_assert_ptr_null(doc.quotas);
    }
    /* And a good one still loads (an empty set, then two quotas). */
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(lkg_save(scratch, "\x90", 1, 4, 1000, msg), 0);
    struct lkg_doc doc;
    ck_assert_int_eq(lkg_load(scratch, &doc, msg), 0);
    ck_assert_uint_eq(doc.version, 4);
    ck_assert_uint_eq(doc.n, 0);
    lkg_free(&doc);
    scratch_remove();
}
END_TEST

START_TEST(lkg_restart)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct quota qs[2] = {
        rate_q("org/api", 0.01, 3, QUOTA_EXCEED_REJECT, 0, false, 6),
        cap_q("org/batch", 1, 0, 0, QUOTA_EXCEED_REJECT, 7)};
    ck_assert_int_eq(rules_replace(a, qs, 2, 7, false), 0);
    /* A second instance on the same directory is refused. */
    struct allot_options o2 = {.data_dir = scratch};
    struct allot *a2;
    ck_assert_int_eq(allot_open(&o2, &a2), ALLOT_EEXISTS);
    allot_close(a); /* saves the changed rules */

    /* Every server down (nothing listens on port 1): the rules on disk are
     * in force before allot_open returns. */
    struct allot_options o = {.data_dir = scratch, .servers = "127.0.0.1:1"};
    ck_assert_int_eq(allot_open(&o, &a), 0);
    ck_assert_uint_eq(allot_catalog_version(a), 7);
    struct allot_rule *r = rule(a, "org/api");
    struct allot_decision d;
    int admitted = 0;
    for (int i = 0; i < 5; i++) {
        admitted += check1(r, NULL, 1, &d);
    }
    ck_assert_int_eq(admitted, 3);
    ck_assert_uint_eq(d.rule_version, 6);
    struct allot_slot *s1, *s2;
    struct allot_rule *rb = rule(a, "org/batch");
    ck_assert_int_eq(allot_acquire(rb, NULL, &s1), 0);
    ck_assert_ptr_nonnull(s1);
    ck_assert_int_eq(allot_acquire(rb, NULL, &s2), 0);
    ck_assert_ptr_null(s2);
    allot_release(s1);
    struct allot_stats st;
    ck_assert_int_eq(allot_stats(a, &st), 0);
    ck_assert_int_eq(st.from_disk, 1);
    ck_assert_uint_eq(st.disk_version, 7);
    ck_assert_uint_eq(st.rules, 2);
    ck_assert_uint_ne(st.disk_saved_ms, 0);
    ck_assert_uint_eq(st.confirmed_ms, 0);
    ck_assert_int_eq(st.source_connected, 0);
    allot_close(a);

    /* A corrupt file is moved aside; the instance starts empty. */
    char path[512], bad[512];
    snprintf(path, sizeof path, "%s/%s", scratch, LKG_FILE);
    snprintf(bad, sizeof bad, "%s/%s.bad", scratch, LKG_FILE);
    FILE *f = fopen(path, "r+");
    ck_assert_ptr_nonnull(f);
    fseek(f, 60, SEEK_SET);
    fputc('X', f);
    fclose(f);
    a = open_manual(0, 0);
    ck_assert_uint_eq(allot_catalog_version(a), 0);
    struct stat sb;
    ck_assert_int_eq(stat(bad, &sb), 0);
    ck_assert_int_eq(allot_check(rule(a, "org/api"), NULL, 1, &d),
                     ALLOT_ENOT_FOUND);
    allot_close(a);
    scratch_remove();
}
END_TEST

START_TEST(windows)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct quota q = rate_q("org/u", 10, 4, QUOTA_EXCEED_REJECT, 0, false, 1);
    struct quota c = cap_q("org/c", 5, 0, 0, QUOTA_EXCEED_REJECT, 2);
    set_quota(a, 1, &q);
    set_quota(a, 2, &c);
    struct allot_rule *r = rule(a, "org/u"), *rc = rule(a, "org/c");
    struct allot_decision d;
    for (int i = 0; i < 6; i++) {
        allot_check(r, NULL, 1, &d);
    }
    struct allot_slot *s[3];
    for (int i = 0; i < 3; i++) {
        allot_acquire(rc, NULL, &s[i]);
    }
    allot_release(s[0]);
    enf_roll_windows(a);
    struct allot_rule_stats rs;
    allot_rule_stats(r, &rs);
    ck_assert_uint_eq(rs.window.admitted, 4);
    ck_assert_uint_eq(rs.window.rejected, 2);
    ck_assert_uint_eq(rs.window.cost, 4);
    allot_rule_stats(rc, &rs);
    ck_assert_uint_eq(rs.window.admitted, 3);
    ck_assert_uint_eq(rs.window.peak, 3);
    enf_roll_windows(a); /* a quiet window: the peak is what is held */
    allot_rule_stats(r, &rs);
    ck_assert_uint_eq(rs.window.admitted, 0);
    ck_assert_uint_eq(rs.total.admitted, 4);
    allot_rule_stats(rc, &rs);
    ck_assert_uint_eq(rs.window.admitted, 0);
    ck_assert_uint_eq(rs.window.peak, 2);
    allot_release(s[1]);
    allot_release(s[2]);
    allot_close(a);
    scratch_remove();
}
END_TEST

START_TEST(options)
{
    scratch_make();
    struct allot *a;
    struct allot_options o = {0};
    ck_assert_int_eq(allot_open(&o, &a), ALLOT_EINVALID);
    ck_assert_int_eq(allot_open(NULL, &a), ALLOT_EINVALID);
    o.data_dir = scratch;
    o.weight = -1;
    ck_assert_int_eq(allot_open(&o, &a), ALLOT_EINVALID);
    o.weight = NAN;
    ck_assert_int_eq(allot_open(&o, &a), ALLOT_EINVALID);
    o.weight = 2;
    o.identity = "/nonexistent";
    o.token = "t";
    ck_assert_int_eq(allot_open(&o, &a), ALLOT_EINVALID);
    o.token = NULL;
    o.servers = "127.0.0.1:1";
    ck_assert_int_ne(allot_open(&o, &a), 0); /* unreadable identity */
    o.identity = NULL;
    o.servers = "not an address";
    ck_assert_int_eq(allot_open(&o, &a), ALLOT_EINVALID);
    o.servers = NULL;
    /* The gossip is always encrypted: a keyring is required. */
    o.gossip_bind = "127.0.0.1:0";
    ck_assert_int_eq(allot_open(&o, &a), ALLOT_EINVALID);
    char keys[300];
    snprintf(keys, sizeof keys, "%s.keys", scratch);
    struct gossip_keyring kr = {.n = 1};
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(gossip_key_generate(kr.keys[0]), 0);
    ck_assert_int_eq(gossip_keyring_save(&kr, keys, msg), 0);
    o.gossip_keyring = keys;
    o.gossip_seeds = "nonsense";
    ck_assert_int_eq(allot_open(&o, &a), ALLOT_EINVALID);
    o.gossip_seeds = "127.0.0.1:1";
    ck_assert_int_eq(allot_open(&o, &a), 0);
    struct allot_stats st;
    allot_stats(a, &st);
    ck_assert_int_eq(st.gossip_configured, 1);
    ck_assert_uint_eq(st.announced_version, 0);
    unlink(keys);
    ck_assert(fabs(st.weight - 2) < 1e-9);
    ck_assert_str_eq(allot_strerror(ALLOT_ENOT_FOUND), "not found");
    ck_assert_str_eq(allot_reason_name(ALLOT_REASON_HEALTH), "health");
    allot_close(a);
    allot_close(NULL);
    scratch_remove();
}
END_TEST

/* The catalog digest (docs/gossip.md) over known (path, version) pairs.
 * The expected terms were computed apart from this code (BLAKE2b-128 of
 * the path, a NUL byte and the version as 8 bytes little-endian, with
 * Python's hashlib); tests/unit/test_catalog.c checks the servers' side
 * (raft/catalog.c) against the same values. */
static const struct
{
    const char *path;
    uint64_t version;
    const char *hex;
} digest_vectors_tab[] = {
    {"org", 1, "cf4e7531190d4479a96ee3395dde1d4f"},
    {"org/a", 2, "33d3108a3d58ceda3df2a53581f44ab8"},
    {"org/b/c", 1234567890123ull, "814543e5c986fbd577b0e4e539b51e34"},
};
#define DIGEST_OF_ALL3 "7dd8265eedd37176e32ca2e9e59f49c3"

static void hex16(const uint8_t d[QUOTA_DIGEST_SIZE], char out[33])
{
    sodium_bin2hex(out, 33, d, QUOTA_DIGEST_SIZE);
}

START_TEST(digest_vectors)
{
    char hex[33];
    for (size_t i = 0; i < 3; i++) {
        uint8_t d[QUOTA_DIGEST_SIZE] = {0};
        quota_digest_toggle(d, digest_vectors_tab[i].path,
                            strlen(digest_vectors_tab[i].path),
                            digest_vectors_tab[i].version);
        hex16(d, hex);
        ck_assert_str_eq(hex, digest_vectors_tab[i].hex);
    }
    /* The rules held hash to the XOR of their terms, in any order. */
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct quota qs[3];
    for (size_t i = 0; i < 3; i++) {
        qs[2 - i] = cap_q(digest_vectors_tab[i].path, 1, 0, 0,
                          QUOTA_EXCEED_REJECT, digest_vectors_tab[i].version);
    }
    ck_assert_int_eq(rules_replace(a, qs, 3, 50, false), 0);
    uint8_t d[QUOTA_DIGEST_SIZE];
    uint64_t v;
    rules_digest(a, d, &v);
    hex16(d, hex);
    ck_assert_str_eq(hex, DIGEST_OF_ALL3);
    ck_assert_uint_eq(v, 50);
    allot_close(a);
    scratch_remove();
}
END_TEST

/* Pack one watch record for rules_delta_digest. */
static void pack_change(msgpack_sbuffer *sb, uint64_t version, const char *op,
                        const char *path, const struct quota *q)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    wire_pack_kv_u64(&pk, "version", version);
    wire_pack_kv_str(&pk, "op", op);
    wire_pack_kv_str(&pk, "path", path);
    wire_pack_str(&pk, "new");
    if (q != NULL) {
        quota_pack(&pk, q);
    } else {
        msgpack_pack_nil(&pk);
    }
}

/* A delta's predicted digest equals the digest after applying it, and a
 * delta that differs from what the servers hold predicts another one. */
START_TEST(delta_digest)
{
    scratch_make();
    struct allot *a = open_manual(0, 0);
    struct quota base[2] = {
        cap_q("org", 10, 0, 0, QUOTA_EXCEED_REJECT, 1),
        rate_q("org/p", 5, 5, QUOTA_EXCEED_REJECT, 0, false, 2),
    };
    ck_assert_int_eq(rules_replace(a, base, 2, 2, false), 0);
    struct quota p4 = rate_q("org/p", 6, 6, QUOTA_EXCEED_REJECT, 0, false, 4);
    struct quota q5 = rate_q("org/q", 7, 7, QUOTA_EXCEED_REJECT, 0, false, 5);
    struct quota q7 = rate_q("org/q", 8, 8, QUOTA_EXCEED_REJECT, 0, false, 7);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_change(&sb, 3, "principal.add", "", NULL);
    pack_change(&sb, 4, "quota.set", "org/p", &p4);
    pack_change(&sb, 5, "quota.set", "org/q", &q5);
    pack_change(&sb, 6, "quota.rm", "org/p", NULL);
    pack_change(&sb, 7, "quota.set", "org/q", &q7);
    msgpack_unpacked us[5];
    const msgpack_object *cs[5];
    size_t off = 0;
    for (size_t i = 0; i < 5; i++) {
        msgpack_unpacked_init(&us[i]);
        ck_assert_int_eq(msgpack_unpack_next(&us[i], sb.data, sb.size, &off),
                         MSGPACK_UNPACK_SUCCESS);
        cs[i] = &us[i].data;
    }
    char msg[ALLOT_ERRMSG_SIZE];
    uint8_t predicted[QUOTA_DIGEST_SIZE], part[QUOTA_DIGEST_SIZE];
    ck_assert_int_eq(rules_delta_digest(a, cs, 5, predicted, msg), 0);
    ck_assert_int_eq(rules_delta_digest(a, cs, 4, part, msg), 0);
    ck_assert_mem_ne(predicted, part, sizeof part);
    /* What the servers hold at 7: org@1, org/q@7. */
    uint8_t want[QUOTA_DIGEST_SIZE] = {0};
    quota_digest_toggle(want, "org", 3, 1);
    quota_digest_toggle(want, "org/q", 5, 7);
    ck_assert_mem_eq(predicted, want, sizeof want);
    /* Predicting applied nothing. */
    ck_assert_uint_eq(allot_catalog_version(a), 2);
    for (size_t i = 0; i < 5; i++) {
        ck_assert_int_eq(rules_apply_change(a, cs[i], msg), 0);
    }
    uint8_t held[QUOTA_DIGEST_SIZE];
    uint64_t v;
    rules_digest(a, held, &v);
    ck_assert_uint_eq(v, 7);
    ck_assert_mem_eq(held, want, sizeof want);
    /* A record without a readable quota cannot be predicted. */
    msgpack_sbuffer bad;
    msgpack_sbuffer_init(&bad);
    pack_change(&bad, 8, "quota.set", "org/r", NULL);
    msgpack_unpacked ub;
    msgpack_unpacked_init(&ub);
    off = 0;
    ck_assert_int_eq(msgpack_unpack_next(&ub, bad.data, bad.size, &off),
                     MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *cb = &ub.data;
    ck_assert_int_eq(rules_delta_digest(a, &cb, 1, part, msg), ALLOT_EINVALID);
    msgpack_unpacked_destroy(&ub);
    msgpack_sbuffer_destroy(&bad);
    for (size_t i = 0; i < 5; i++) {
        msgpack_unpacked_destroy(&us[i]);
    }
    msgpack_sbuffer_destroy(&sb);
    allot_close(a);
    scratch_remove();
}
END_TEST

static Suite *enforce_suite(void)
{
    Suite *s = suite_create("enforce");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, gcra_exact);
    tcase_add_test(tc, gcra_retry_after);
    tcase_add_test(tc, delay_mode);
    tcase_add_test(tc, shadow_mode);
    tcase_add_test(tc, per_key);
    tcase_add_test(tc, too_big_and_kinds);
    tcase_add_test(tc, health_curve);
    tcase_add_test(tc, slots_basic);
    tcase_add_test(tc, slots_two_threads);
    tcase_add_test(tc, swaps_under_checks);
    tcase_add_test(tc, epoch_waits_reader);
    tcase_add_test(tc, changes_and_replays);
    tcase_add_test(tc, fleet_parts);
    tcase_add_test(tc, demand_parts);
    tcase_add_test(tc, wait_version);
    tcase_add_test(tc, lkg_restart);
    tcase_add_test(tc, lkg_bad_bodies);
    tcase_add_test(tc, windows);
    tcase_add_test(tc, options);
    tcase_add_test(tc, digest_vectors);
    tcase_add_test(tc, delta_digest);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(enforce_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
