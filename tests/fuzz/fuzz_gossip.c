/* fuzz_gossip.c - libFuzzer target for gossip's receive path: open, check,
 * decode, act.
 *
 * Each input goes to a fresh member (fixed test key, an io that sends
 * nothing and a clock the target moves) that already knows one peer, in
 * four ways, each checked against an oracle, not only for crashes:
 *   - as it arrived, as a datagram and as a stream message: it cannot carry
 *     a valid tag, so each is dropped and counted exactly once (AUTH,
 *     MALFORMED or OVERSIZE) and the membership does not change;
 *   - sealed with the test key, as a datagram and as a stream message: it
 *     is dropped as MALFORMED exactly when gmsg_validate() refuses it (and,
 *     then, changes nothing); otherwise it is acted on;
 * then the clock jumps an hour and the member's timers run, so whatever
 * state the input created (suspicions, relayed probes, queued broadcasts)
 * is driven to its end. LeakSanitizer checks gossip_free() frees it all.
 *
 * Build and run with tests/fuzz/run-gossip. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "buf.h"
#include "crypt.h"
#include "gossip.h"
#include "lib.h"
#include "msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                  \
            abort();                                                         \
        }                                                                    \
    } while (0)

struct null_io
{
    struct gossip_io io;
    uint64_t now;
    uint64_t rng;
};

static int null_send(struct gossip_io *io, const struct gossip_addr *to,
                     const void *buf, size_t len)
{
    (void)io;
    (void)to;
    (void)buf;
    (void)len;
    return 0;
}

static uint64_t null_now(struct gossip_io *io)
{
    return ((struct null_io *)io->impl)->now;
}

static void null_timer(struct gossip_io *io, uint64_t at)
{
    (void)io;
    (void)at;
}

static uint64_t null_random(struct gossip_io *io)
{
    struct null_io *n = io->impl;
    n->rng = n->rng * 6364136223846793005ull + 1442695040888963407ull;
    return n->rng >> 11;
}

static uint8_t test_key[GOSSIP_KEY_SIZE];

static size_t seal(const uint8_t *plain, size_t len, uint8_t *out,
                   enum gcrypt_channel ch)
{
    gcrypt_seal(test_key, ch, plain, len, out);
    return len + GCRYPT_OVERHEAD;
}

static uint64_t drops(struct gossip *g)
{
    struct gossip_stats st;
    gossip_stats(g, &st);
    uint64_t n = 0;
    for (int i = 0; i < GOSSIP_DROP_COUNT; i++) {
        n += st.dropped[i];
    }
    return n;
}

static uint64_t malformed(struct gossip *g)
{
    struct gossip_stats st;
    gossip_stats(g, &st);
    return st.dropped[GOSSIP_DROP_MALFORMED];
}

static size_t members(struct gossip *g)
{
    size_t n = 0;
    for (int s = GOSSIP_ALIVE; s <= GOSSIP_LEFT; s++) {
        n += gossip_member_count(g, (enum gossip_state)s);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool init;
    if (!init) {
        memset(test_key, 0x42, sizeof test_key);
        log_set_level(LOG_ERROR);
        init = true;
    }
    if (size > GOSSIP_PACKET_MAX + 64) {
        return 0;
    }
    struct null_io n = {.now = 1000, .rng = 1};
    n.io = (struct gossip_io){.impl = &n,
                              .send_packet = null_send,
                              .send_stream = null_send,
                              .now = null_now,
                              .set_timer = null_timer,
                              .random = null_random};
    struct gossip_config cfg;
    gossip_config_init(&cfg);
    cfg.name = "me";
    cfg.addr = (struct gossip_addr){0x0a000001, 7946};
    cfg.keyring.n = 1;
    memcpy(cfg.keyring.keys[0], test_key, GOSSIP_KEY_SIZE);
    struct gossip *g;
    char msg[ALLOT_ERRMSG_SIZE];
    CHECK(gossip_new(&g, &n.io, &cfg, msg) == 0);
    const struct gossip_addr from = {0x0a000002, 7946};

    /* A known peer, so suspicion, refutation and probes have a target. */
    static uint8_t plain[GOSSIP_PACKET_MAX + 64];
    static uint8_t sealed[GOSSIP_PACKET_MAX + 64 + GCRYPT_OVERHEAD];
    struct gbuf_w w;
    gbuf_w_fixed(&w, plain, sizeof plain);
    struct gmsg_alive a = {.inc = 3, .name = {"peer", 4}, .addr = from};
    gmsg_put_alive(&w, &a);
    gossip_recv_packet(g, &from, sealed,
                       seal(plain, w.len, sealed, GCRYPT_PACKET));
    CHECK(members(g) == 2);

    /* As it arrived: never authentic. */
    size_t before = members(g);
    uint64_t d = drops(g);
    gossip_recv_packet(g, &from, data, size);
    CHECK(drops(g) == d + 1);
    gossip_recv_stream(g, &from, data, size);
    CHECK(drops(g) == d + 2);
    CHECK(members(g) == before);

    /* Sealed: refused exactly when the decoder refuses it. */
    bool ok_packet = gmsg_validate(data, size, false) == 0;
    bool ok_stream = gmsg_validate(data, size, true) == 0;
    CHECK(!ok_packet || ok_stream); /* streams accept more, never less */
    size_t len = seal(data, size, sealed, GCRYPT_PACKET);
    uint64_t m = malformed(g);
    before = members(g);
    if (len <= GOSSIP_PACKET_MAX) {
        gossip_recv_packet(g, &from, sealed, len);
        CHECK(malformed(g) == m + (ok_packet ? 0 : 1));
        if (!ok_packet) {
            CHECK(members(g) == before);
        }
    }
    m = malformed(g);
    before = members(g);
    len = seal(data, size, sealed, GCRYPT_STREAM);
    gossip_recv_stream(g, &from, sealed, len);
    CHECK(malformed(g) == m + (ok_stream ? 0 : 1));
    if (!ok_stream) {
        CHECK(members(g) == before);
    }

    /* Let every timer the input armed run to its end. */
    for (int i = 0; i < 4; i++) {
        n.now += 3600 * 1000;
        gossip_tick(g);
    }
    gossip_free(g);
    return 0;
}
