/* test_gossip_uv.c - gossip on a real libuv loop over 127.0.0.1.
 *
 *   three_members  three members in one loop: join through the first,
 *                  converge, a keyed broadcast arrives everywhere, a 100 KB
 *                  direct message goes over a stream, a forged datagram and
 *                  an oversized stream header are dropped and counted, all
 *                  leave, every handle closes and uv_loop_close() == 0
 *   bind_errors    binding a port in use fails cleanly, with a message
 *
 * Waits are bounded by a watchdog timer; timings are printed, not
 * asserted. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "allot_error.h"
#include "gossip.h"
#include "lib.h"

#define MEMBERS 3
#define BIG     (100 * 1024)

struct member
{
    struct world *w;
    int id;
    char name[8];
    struct gossip_uv *u;
    struct gossip *g;
    struct gossip_leave leave;
    int keyed_recv;
    int big_recv;
    int left_status;
};

struct world
{
    uv_loop_t loop;
    uv_timer_t driver;
    uv_timer_t watchdog;
    struct member m[MEMBERS];
    int phase;
    int closed;
    uint64_t t0;
    uint8_t big[BIG];
};

static void on_member(void *data, enum gossip_event ev,
                      const struct gossip_member *m)
{
    (void)data;
    (void)ev;
    (void)m;
}

static void on_broadcast(void *data, const char *key, size_t key_len,
                         uint64_t version, const void *buf, size_t len)
{
    struct member *m = data;
    if (key != NULL && key_len == 7 && memcmp(key, "catalog", 7) == 0 &&
        version == 1 && len == 2 && memcmp(buf, "v1", 2) == 0) {
        m->keyed_recv++;
    }
}

static void on_message(void *data, const char *from, const void *buf,
                       size_t len)
{
    struct member *m = data;
    ck_assert_str_eq(from, "m1");
    ck_assert_uint_eq(len, BIG);
    ck_assert_mem_eq(buf, m->w->big, BIG);
    m->big_recv++;
}

static void on_uv_closed(void *data)
{
    struct world *w = data;
    w->closed++;
    if (w->closed == MEMBERS) {
        uv_close((uv_handle_t *)&w->driver, NULL);
        uv_close((uv_handle_t *)&w->watchdog, NULL);
    }
}

static void on_left(struct gossip_leave *req, int status)
{
    struct member *m = req->data;
    m->left_status = status;
    gossip_free(m->g);
    m->g = NULL;
    gossip_uv_close(m->u, on_uv_closed, m->w);
}

static bool converged(struct world *w)
{
    for (int i = 0; i < MEMBERS; i++) {
        if (gossip_member_count(w->m[i].g, GOSSIP_ALIVE) != MEMBERS) {
            return false;
        }
    }
    return true;
}

/* Send a datagram no key opens, and a stream header over the limit. */
static void forge(struct world *w)
{
    struct gossip_addr a = gossip_uv_addr(w->m[0].u);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons(a.port),
                             .sin_addr.s_addr = htonl(a.ip)};
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    ck_assert_int_ge(s, 0);
    uint8_t junk[100];
    memset(junk, 0, sizeof junk);
    junk[0] = 1; /* our version byte, so it gets as far as the tag check */
    ck_assert_int_eq(
        sendto(s, junk, sizeof junk, 0, (struct sockaddr *)&sa, sizeof sa),
        (ssize_t)sizeof junk);
    close(s);
    s = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(s, 0);
    ck_assert_int_eq(connect(s, (struct sockaddr *)&sa, sizeof sa), 0);
    static const uint8_t huge[4] = {0x04, 0x00, 0x00, 0x00}; /* 64 MiB */
    ck_assert_int_eq(write(s, huge, sizeof huge), 4);
    close(s);
}

static void on_drive(uv_timer_t *t)
{
    struct world *w = t->data;
    uint64_t now = uv_now(&w->loop);
    struct gossip_stats st;
    switch (w->phase) {
    case 0:
        if (!converged(w)) {
            return;
        }
        printf("three_members: converged after %llu ms\n",
               (unsigned long long)(now - w->t0));
        ck_assert_int_eq(
            gossip_broadcast_keyed(w->m[0].g, "catalog", 1, "v1", 2), 0);
        w->t0 = now;
        w->phase = 1;
        return;
    case 1:
        if (w->m[1].keyed_recv == 0 || w->m[2].keyed_recv == 0) {
            return;
        }
        printf("three_members: keyed broadcast everywhere after %llu ms\n",
               (unsigned long long)(now - w->t0));
        ck_assert_int_eq(gossip_send(w->m[1].g, "m2", w->big, BIG), 0);
        forge(w);
        w->t0 = now;
        w->phase = 2;
        return;
    case 2:
        gossip_stats(w->m[0].g, &st);
        if (w->m[2].big_recv == 0 || st.dropped[GOSSIP_DROP_AUTH] == 0 ||
            st.dropped[GOSSIP_DROP_OVERSIZE] == 0) {
            return;
        }
        printf("three_members: 100 KB over a stream after %llu ms; "
               "dropped auth=%llu oversize=%llu\n",
               (unsigned long long)(now - w->t0),
               (unsigned long long)st.dropped[GOSSIP_DROP_AUTH],
               (unsigned long long)st.dropped[GOSSIP_DROP_OVERSIZE]);
        ck_assert_int_eq(w->m[2].big_recv, 1);
        for (int i = 0; i < MEMBERS; i++) {
            w->m[i].leave.data = &w->m[i];
            ck_assert_int_eq(gossip_leave(w->m[i].g, &w->m[i].leave, on_left),
                             0);
        }
        w->phase = 3;
        uv_timer_stop(t);
        return;
    default:
        return;
    }
}

static void on_watchdog(uv_timer_t *t)
{
    struct world *w = t->data;
    ck_abort_msg("stuck in phase %d", w->phase);
}

START_TEST(three_members)
{
    static struct world w;
    memset(&w, 0, sizeof w);
    for (size_t i = 0; i < BIG; i++) {
        w.big[i] = (uint8_t)(i * 7);
    }
    ck_assert_int_eq(uv_loop_init(&w.loop), 0);
    struct gossip_keyring kr = {.n = 1};
    ck_assert_int_eq(gossip_key_generate(kr.keys[0]), 0);
    char msg[ALLOT_ERRMSG_SIZE];
    struct gossip_addr any = {0x7f000001, 0};
    for (int i = 0; i < MEMBERS; i++) {
        struct member *m = &w.m[i];
        m->w = &w;
        m->id = i;
        m->left_status = 1;
        snprintf(m->name, sizeof m->name, "m%d", i);
        ck_assert_int_eq(gossip_uv_new(&m->u, &w.loop, &any, msg), 0);
        struct gossip_config cfg;
        gossip_config_init(&cfg);
        cfg.name = m->name;
        cfg.addr = gossip_uv_addr(m->u);
        ck_assert_uint_ne(cfg.addr.port, 0);
        cfg.keyring = kr;
        cfg.probe_interval_ms = 200;
        cfg.probe_timeout_ms = 100;
        cfg.gossip_interval_ms = 50;
        cfg.cb = (struct gossip_callbacks){.data = m,
                                           .member = on_member,
                                           .broadcast = on_broadcast,
                                           .message = on_message};
        ck_assert_int_eq(gossip_new(&m->g, gossip_uv_io(m->u), &cfg, msg), 0);
    }
    gossip_keyring_wipe(&kr);
    struct gossip_addr seed = gossip_uv_addr(w.m[0].u);
    for (int i = 1; i < MEMBERS; i++) {
        ck_assert_int_eq(gossip_join(w.m[i].g, &seed, 1), 0);
    }
    uv_timer_init(&w.loop, &w.driver);
    uv_timer_init(&w.loop, &w.watchdog);
    w.driver.data = w.watchdog.data = &w;
    w.t0 = uv_now(&w.loop);
    uv_timer_start(&w.driver, on_drive, 20, 20);
    uv_timer_start(&w.watchdog, on_watchdog, 60000, 0);
    ck_assert_int_eq(uv_run(&w.loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(w.closed, MEMBERS);
    for (int i = 0; i < MEMBERS; i++) {
        ck_assert_int_eq(w.m[i].left_status, 0);
    }
    ck_assert_int_eq(uv_loop_close(&w.loop), 0);
}
END_TEST

START_TEST(bind_errors)
{
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    char msg[ALLOT_ERRMSG_SIZE];
    struct gossip_uv *a, *b;
    struct gossip_addr any = {0x7f000001, 0};
    ck_assert_int_eq(gossip_uv_new(&a, &loop, &any, msg), 0);
    struct gossip_addr taken = gossip_uv_addr(a);
    ck_assert_int_eq(gossip_uv_new(&b, &loop, &taken, msg), ALLOT_EIO);
    ck_assert_ptr_nonnull(strstr(msg, "bind"));
    gossip_uv_close(a, NULL, NULL);
    ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

static Suite *gossip_uv_suite(void)
{
    Suite *s = suite_create("gossip_uv");
    TCase *tc = tcase_create("uv");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, three_members);
    tcase_add_test(tc, bind_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    log_set_level(LOG_WARN);
    SRunner *sr = srunner_create(gossip_uv_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
