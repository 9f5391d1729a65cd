/* test_gossip.c - gossip's pieces one at a time, and its receive path.
 *
 *   codec       varints and every message type round-trip; every
 *               truncation, over-long field, non-printable or empty name,
 *               unknown role/state and oversized count is refused
 *   crypt       seal/open under primary and secondary keys; a flipped bit,
 *               the wrong channel, another version or a short input fail
 *   keyring     file parsing (comments, CRLF, errors with line numbers),
 *               save/load round trip with mode 0600
 *   hash        random inserts/deletes against a reference
 *   timer       heap order, stop, re-arm
 *   queue       least-sent first, keyed replacement, retransmit limit,
 *               the cap on plain broadcasts, retirement notices
 *   receive     a member on a recording io: garbage, oversize, forged and
 *               malformed input is dropped whole and counted; good input
 *               acts; a ping is answered with an ack to the named address
 *   config      every check in gossip_new(), and the API's error codes
 *   leave       completes asynchronously; gossip_free() cancels it */
#include <check.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "allot_error.h"
#include "buf.h"
#include "crypt.h"
#include "gossip.h"
#include "hash.h"
#include "lib.h"
#include "msg.h"
#include "queue.h"
#include "timer.h"

/* --- Codec -------------------------------------------------------------- */

START_TEST(varint)
{
    static const uint64_t vals[] = {0,          1,          127,
                                    128,        16383,      16384,
                                    UINT32_MAX, 1ull << 35, UINT64_MAX - 1,
                                    UINT64_MAX};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        uint8_t buf[16];
        struct gbuf_w w;
        gbuf_w_fixed(&w, buf, sizeof buf);
        gbuf_put_uvarint(&w, vals[i]);
        ck_assert(!w.failed);
        ck_assert_uint_eq(w.len, gbuf_uvarint_len(vals[i]));
        struct gbuf_r r;
        gbuf_r_init(&r, buf, w.len);
        ck_assert_uint_eq(gbuf_get_uvarint(&r), vals[i]);
        ck_assert(!r.failed);
        /* Every shorter prefix is truncated. */
        for (size_t n = 0; n < w.len; n++) {
            gbuf_r_init(&r, buf, n);
            gbuf_get_uvarint(&r);
            ck_assert(r.failed);
        }
    }
    /* 11 bytes, and a 10th byte carrying more than bit 63. */
    uint8_t long_one[11];
    memset(long_one, 0x80, sizeof long_one);
    long_one[10] = 0;
    struct gbuf_r r;
    gbuf_r_init(&r, long_one, sizeof long_one);
    gbuf_get_uvarint(&r);
    ck_assert(r.failed);
    uint8_t over[10];
    memset(over, 0xff, 9);
    over[9] = 0x02;
    gbuf_r_init(&r, over, sizeof over);
    gbuf_get_uvarint(&r);
    ck_assert(r.failed);
    /* A fixed writer that overflows stays failed. */
    uint8_t small[2];
    struct gbuf_w w;
    gbuf_w_fixed(&w, small, sizeof small);
    gbuf_put_uvarint(&w, 1u << 20);
    ck_assert(w.failed);
    gbuf_put_u8(&w, 1);
    ck_assert_uint_eq(w.len, 0);
}
END_TEST

static const struct gossip_addr addr1 = {0x7f000001, 7946};

static size_t encode_all(uint8_t *buf, size_t cap)
{
    struct gbuf_w w;
    gbuf_w_fixed(&w, buf, cap);
    gmsg_put_ping(&w, 7, "target", "source", &addr1);
    gmsg_put_ping_req(&w, 8, "t", &addr1, true, "s", &addr1);
    gmsg_put_ack(&w, GMSG_ACK, UINT32_MAX);
    gmsg_put_ack(&w, GMSG_NACK, 0);
    struct gmsg_alive a = {.inc = 99,
                           .name = {"node-1", 6},
                           .addr = addr1,
                           .role = GOSSIP_ROLE_SERVER,
                           .weight = 5,
                           .fleet = {"blue", 4},
                           .app = (const uint8_t *)"\x00\x01\x02",
                           .app_len = 3};
    gmsg_put_alive(&w, &a);
    gmsg_put_suspect(&w, GMSG_SUSPECT, 3, "x", "y");
    gmsg_put_suspect(&w, GMSG_DEAD, 4, "x", "x");
    gmsg_put_user(&w, 1ull << 60, "hello", 5);
    gmsg_put_keyed(&w, "catalog", 7, 12345, "v", 1);
    gmsg_put_direct(&w, "from", "", 0);
    ck_assert(!w.failed);
    return w.len;
}

START_TEST(messages_round_trip)
{
    uint8_t buf[1024];
    size_t len = encode_all(buf, sizeof buf);
    ck_assert_int_eq(gmsg_validate(buf, len, false), 0);
    struct gbuf_r r;
    gbuf_r_init(&r, buf, len);
    uint8_t type;
    struct gbuf_r body;

    struct gmsg_ping p;
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(type, GMSG_PING);
    ck_assert_int_eq(gmsg_get_ping(&body, &p), 0);
    ck_assert_uint_eq(p.seq, 7);
    ck_assert(gmsg_str_eq(p.target, "target"));
    ck_assert(gmsg_str_eq(p.source, "source"));
    ck_assert(gossip_addr_eq(&p.source_addr, &addr1));

    struct gmsg_ping_req q;
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(gmsg_get_ping_req(&body, &q), 0);
    ck_assert(q.want_nack);
    ck_assert_uint_eq(q.seq, 8);

    struct gmsg_ack ack;
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(gmsg_get_ack(&body, &ack), 0);
    ck_assert_uint_eq(ack.seq, UINT32_MAX);
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(type, GMSG_NACK);

    struct gmsg_alive a;
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(gmsg_get_alive(&body, &a), 0);
    ck_assert_uint_eq(a.inc, 99);
    ck_assert(gmsg_str_eq(a.name, "node-1"));
    ck_assert(gmsg_str_eq(a.fleet, "blue"));
    ck_assert_uint_eq(a.weight, 5);
    ck_assert_uint_eq(a.role, GOSSIP_ROLE_SERVER);
    ck_assert_uint_eq(a.app_len, 3);
    ck_assert_mem_eq(a.app, "\x00\x01\x02", 3);

    struct gmsg_suspect s;
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(gmsg_get_suspect(&body, &s), 0);
    ck_assert_uint_eq(s.inc, 3);
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(type, GMSG_DEAD);

    struct gmsg_user u;
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(gmsg_get_user(&body, &u), 0);
    ck_assert_uint_eq(u.id, 1ull << 60);
    ck_assert_mem_eq(u.payload, "hello", 5);

    struct gmsg_keyed k;
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(gmsg_get_keyed(&body, &k), 0);
    ck_assert(gmsg_str_eq(k.key, "catalog"));
    ck_assert_uint_eq(k.version, 12345);

    struct gmsg_direct d;
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    ck_assert_int_eq(gmsg_get_direct(&body, &d), 0);
    ck_assert_uint_eq(d.len, 0);
    ck_assert_ptr_null(d.payload);

    ck_assert_int_eq(gmsg_next(&r, &type, &body), 0);
}
END_TEST

START_TEST(messages_truncated)
{
    uint8_t buf[1024];
    size_t len = encode_all(buf, sizeof buf);
    /* Cutting anywhere but at a message boundary is refused. */
    size_t boundaries[32];
    size_t nb = 0;
    struct gbuf_r r;
    gbuf_r_init(&r, buf, len);
    uint8_t type;
    struct gbuf_r body;
    while (gmsg_next(&r, &type, &body) == 1) {
        boundaries[nb++] = r.off;
    }
    for (size_t cut = 0; cut < len; cut++) {
        bool at_boundary = false;
        for (size_t i = 0; i < nb; i++) {
            at_boundary |= boundaries[i] == cut;
        }
        int rv = gmsg_validate(buf, cut, false);
        ck_assert_msg(at_boundary ? rv == 0 : rv == ALLOT_EPROTOCOL,
                      "cut at %zu: %d", cut, rv);
    }
}
END_TEST

/* Build one message with a hand-written body. */
static size_t one(uint8_t *buf, uint8_t type, const uint8_t *body, size_t n)
{
    buf[0] = type;
    buf[1] = (uint8_t)n; /* bodies here are < 128 bytes */
    memcpy(buf + 2, body, n);
    return n + 2;
}

START_TEST(messages_refused)
{
    uint8_t buf[512];
    /* PING: seq, target, source, addr. */
    static const uint8_t empty_name[] = {1, 0, 1, 's', 1, 2, 3, 4, 0, 1};
    static const uint8_t ctrl_name[] = {1, 1, '\n', 1, 's', 1, 2, 3, 4, 0, 1};
    static const uint8_t space_name[] = {1, 1, ' ', 1, 's', 1, 2, 3, 4, 0, 1};
    static const uint8_t seq_too_big[] = {
        0x80, 0x80, 0x80, 0x80, 0x10, 1, 't', 1, 's', 1, 2, 3, 4, 0, 1};
    ck_assert_int_eq(
        gmsg_validate(buf, one(buf, GMSG_PING, empty_name, sizeof empty_name),
                      false),
        ALLOT_EPROTOCOL);
    ck_assert_int_eq(
        gmsg_validate(buf, one(buf, GMSG_PING, ctrl_name, sizeof ctrl_name),
                      false),
        ALLOT_EPROTOCOL);
    ck_assert_int_eq(
        gmsg_validate(buf, one(buf, GMSG_PING, space_name, sizeof space_name),
                      false),
        ALLOT_EPROTOCOL);
    ck_assert_int_eq(
        gmsg_validate(buf, one(buf, GMSG_PING, seq_too_big, sizeof seq_too_big),
                      false),
        ALLOT_EPROTOCOL);
    /* A 65-byte name. */
    struct gbuf_w w;
    gbuf_w_fixed(&w, buf, sizeof buf);
    char long_name[GOSSIP_NAME_MAX + 2];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    gmsg_put_ping(&w, 1, long_name, "s", &addr1);
    ck_assert_int_eq(gmsg_validate(buf, w.len, false), ALLOT_EPROTOCOL);
    /* ALIVE with role 2. */
    struct gmsg_alive a = {
        .inc = 1, .name = {"n", 1}, .addr = addr1, .role = 2};
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_alive(&w, &a);
    ck_assert_int_eq(gmsg_validate(buf, w.len, false), ALLOT_EPROTOCOL);
    /* An app blob over GOSSIP_APP_MAX. */
    static uint8_t app[GOSSIP_APP_MAX + 1];
    a.role = 0;
    a.app = app;
    a.app_len = sizeof app;
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_alive(&w, &a);
    ck_assert(!w.failed);
    ck_assert_int_eq(gmsg_validate(buf, w.len, false), ALLOT_EPROTOCOL);
    /* A body length past the end, an empty buffer. */
    static const uint8_t past[] = {GMSG_ACK, 5, 1};
    ck_assert_int_eq(gmsg_validate(past, sizeof past, false), ALLOT_EPROTOCOL);
    ck_assert_int_eq(gmsg_validate(buf, 0, false), ALLOT_EPROTOCOL);
    /* An unknown type is skipped, not refused (a newer peer's). */
    static const uint8_t unknown[] = {200, 2, 9, 9, GMSG_ACK, 1, 5};
    ck_assert_int_eq(gmsg_validate(unknown, sizeof unknown, false), 0);
    /* A trailing field in a body is allowed. */
    static const uint8_t trailing[] = {GMSG_ACK, 2, 5, 0xff};
    ck_assert_int_eq(gmsg_validate(trailing, sizeof trailing, false), 0);
}
END_TEST

START_TEST(push_pull_bounds)
{
    struct gbuf_w w;
    ck_assert_int_eq(gbuf_w_dyn(&w, 16, 1 << 20), 0);
    size_t b = gmsg_pp_begin(&w, GMSG_PP_JOIN, "me", &addr1, 2);
    struct gmsg_alive a = {.inc = 1, .name = {"a", 1}, .addr = addr1};
    gmsg_pp_put_member(&w, GOSSIP_ALIVE, &a);
    a.name.p = "b";
    gmsg_pp_put_member(&w, GOSSIP_LEFT, &a);
    gmsg_pp_keyed_count(&w, 1);
    gmsg_pp_put_keyed(&w, "catalog", 7, 9, "x", 1);
    gmsg_pp_end(&w, b, "app", 3);
    ck_assert(!w.failed);
    /* Streams only. */
    ck_assert_int_eq(gmsg_validate(w.p, w.len, false), ALLOT_EPROTOCOL);
    ck_assert_int_eq(gmsg_validate(w.p, w.len, true), 0);
    struct gbuf_r r, body;
    uint8_t type;
    gbuf_r_init(&r, w.p, w.len);
    ck_assert_int_eq(gmsg_next(&r, &type, &body), 1);
    struct gmsg_pushpull pp;
    ck_assert_int_eq(gmsg_get_pushpull(&body, &pp), 0);
    ck_assert_uint_eq(pp.n_members, 2);
    ck_assert_uint_eq(pp.n_keyed, 1);
    uint8_t state;
    ck_assert_int_eq(gmsg_pp_next_member(&pp, &state, &a), 1);
    ck_assert_int_eq(gmsg_pp_next_member(&pp, &state, &a), 1);
    ck_assert_int_eq(state, GOSSIP_LEFT);
    ck_assert(gmsg_str_eq(a.name, "b"));
    ck_assert_int_eq(gmsg_pp_next_member(&pp, &state, &a), 0);
    struct gmsg_keyed k;
    ck_assert_int_eq(gmsg_pp_next_keyed(&pp, &k), 1);
    ck_assert_uint_eq(k.version, 9);
    ck_assert_uint_eq(pp.app_len, 3);
    for (size_t cut = 0; cut < w.len; cut++) {
        ck_assert_int_eq(gmsg_validate(w.p, cut, true), ALLOT_EPROTOCOL);
    }
    free(w.p);

    /* A count of members the bytes cannot hold is refused before any
     * walk: 2^40 members in a few bytes. */
    ck_assert_int_eq(gbuf_w_dyn(&w, 16, 1 << 20), 0);
    b = gmsg_pp_begin(&w, 0, "me", &addr1, 1ull << 40);
    gmsg_pp_keyed_count(&w, 0);
    gmsg_pp_end(&w, b, NULL, 0);
    ck_assert_int_eq(gmsg_validate(w.p, w.len, true), ALLOT_EPROTOCOL);
    free(w.p);
    /* A state beyond left, unknown flags. */
    struct gmsg_alive c = {.inc = 1, .name = {"c", 1}, .addr = addr1};
    ck_assert_int_eq(gbuf_w_dyn(&w, 16, 1 << 20), 0);
    b = gmsg_pp_begin(&w, 0, "me", &addr1, 1);
    gmsg_pp_put_member(&w, 4, &c);
    gmsg_pp_keyed_count(&w, 0);
    gmsg_pp_end(&w, b, NULL, 0);
    ck_assert_int_eq(gmsg_validate(w.p, w.len, true), ALLOT_EPROTOCOL);
    free(w.p);
    ck_assert_int_eq(gbuf_w_dyn(&w, 16, 1 << 20), 0);
    b = gmsg_pp_begin(&w, 4, "me", &addr1, 0);
    gmsg_pp_keyed_count(&w, 0);
    gmsg_pp_end(&w, b, NULL, 0);
    ck_assert_int_eq(gmsg_validate(w.p, w.len, true), ALLOT_EPROTOCOL);
    free(w.p);
}
END_TEST

START_TEST(messages_bit_flips)
{
    /* Every single-bit corruption is either refused or decodes within the
     * bounds; none crashes or reads outside (ASan watches). */
    uint8_t buf[1024], copy[1024];
    size_t len = encode_all(buf, sizeof buf);
    unsigned refused = 0;
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, buf, len);
            copy[i] ^= (uint8_t)(1u << bit);
            refused += gmsg_validate(copy, len, false) != 0;
        }
    }
    ck_assert_uint_gt(refused, 0);
}
END_TEST

/* --- Crypt and keyrings ------------------------------------------------- */

START_TEST(seal_open)
{
    struct gossip_keyring kr = {.n = 2};
    memset(kr.keys[0], 1, GOSSIP_KEY_SIZE);
    memset(kr.keys[1], 2, GOSSIP_KEY_SIZE);
    uint8_t sealed[64 + GCRYPT_OVERHEAD], plain[64];
    size_t n;
    for (unsigned k = 0; k < 2; k++) {
        gcrypt_seal(kr.keys[k], GCRYPT_PACKET, (const uint8_t *)"secret", 6,
                    sealed);
        ck_assert_int_eq(gcrypt_open(&kr, GCRYPT_PACKET, sealed,
                                     6 + GCRYPT_OVERHEAD, plain, &n),
                         0);
        ck_assert_uint_eq(n, 6);
        ck_assert_mem_eq(plain, "secret", 6);
        /* Not as a stream message. */
        ck_assert_int_eq(gcrypt_open(&kr, GCRYPT_STREAM, sealed,
                                     6 + GCRYPT_OVERHEAD, plain, &n),
                         ALLOT_EUNAUTHENTICATED);
    }
    /* Any flipped bit of nonce, ciphertext or tag. */
    for (size_t i = 1; i < 6 + GCRYPT_OVERHEAD; i++) {
        sealed[i] ^= 0x10;
        ck_assert_int_eq(gcrypt_open(&kr, GCRYPT_PACKET, sealed,
                                     6 + GCRYPT_OVERHEAD, plain, &n),
                         ALLOT_EUNAUTHENTICATED);
        sealed[i] ^= 0x10;
    }
    sealed[0] = 2;
    ck_assert_int_eq(
        gcrypt_open(&kr, GCRYPT_PACKET, sealed, 6 + GCRYPT_OVERHEAD, plain, &n),
        ALLOT_EPROTOCOL);
    ck_assert_int_eq(
        gcrypt_open(&kr, GCRYPT_PACKET, sealed, GCRYPT_OVERHEAD - 1, plain, &n),
        ALLOT_EPROTOCOL);
    /* A key nobody has. */
    uint8_t other[GOSSIP_KEY_SIZE];
    memset(other, 3, sizeof other);
    gcrypt_seal(other, GCRYPT_PACKET, (const uint8_t *)"x", 1, sealed);
    ck_assert_int_eq(
        gcrypt_open(&kr, GCRYPT_PACKET, sealed, 1 + GCRYPT_OVERHEAD, plain, &n),
        ALLOT_EUNAUTHENTICATED);
}
END_TEST

START_TEST(keyring_files)
{
    char msg[ALLOT_ERRMSG_SIZE];
    struct gossip_keyring kr;
    /* base64 of 32 bytes of 0x00 and of 0x01. */
    const char *k0 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const char *k1 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    char text[512];
    snprintf(text, sizeof text, "# primary first\r\n%s\r\n\n  %s  \n", k1, k0);
    ck_assert_int_eq(gossip_keyring_parse(&kr, text, strlen(text), msg), 0);
    ck_assert_uint_eq(kr.n, 2);
    ck_assert_uint_eq(kr.keys[0][0], 1);
    ck_assert_uint_eq(kr.keys[1][31], 0);

    snprintf(text, sizeof text, "%s\n%s\n", k0, k0);
    ck_assert_int_eq(gossip_keyring_parse(&kr, text, strlen(text), msg),
                     ALLOT_EINVALID);
    ck_assert_ptr_nonnull(strstr(msg, "line 2"));
    ck_assert_ptr_nonnull(strstr(msg, "twice"));
    snprintf(text, sizeof text, "%s\nnot base64!\n", k0);
    ck_assert_int_eq(gossip_keyring_parse(&kr, text, strlen(text), msg),
                     ALLOT_EINVALID);
    ck_assert_ptr_nonnull(strstr(msg, "line 2"));
    /* 16 bytes is not a key. */
    snprintf(text, sizeof text, "AAAAAAAAAAAAAAAAAAAAAA==\n");
    ck_assert_int_eq(gossip_keyring_parse(&kr, text, strlen(text), msg),
                     ALLOT_EINVALID);
    /* URL-safe base64 is another variant. */
    snprintf(text, sizeof text,
             "_____________________________________"
             "______=\n");
    ck_assert_int_eq(gossip_keyring_parse(&kr, text, strlen(text), msg),
                     ALLOT_EINVALID);
    ck_assert_int_eq(gossip_keyring_parse(&kr, "# none\n", 7, msg),
                     ALLOT_EINVALID);
    ck_assert_ptr_nonnull(strstr(msg, "no key"));
    /* Nine keys. */
    size_t len = 0;
    for (int i = 0; i < 9; i++) {
        char b64[64];
        uint8_t key[GOSSIP_KEY_SIZE];
        memset(key, i + 10, sizeof key);
        sodium_bin2base64(b64, sizeof b64, key, sizeof key,
                          sodium_base64_VARIANT_ORIGINAL);
        len += (size_t)snprintf(text + len, sizeof text - len, "%s\n", b64);
    }
    ck_assert_int_eq(gossip_keyring_parse(&kr, text, len, msg), ALLOT_EINVALID);
    ck_assert_ptr_nonnull(strstr(msg, "line 9"));

    /* Save, load, same keys, mode 0600. */
    char dir[] = "/tmp/gossip-keyring-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/keys", dir);
    struct gossip_keyring out = {.n = 2};
    ck_assert_int_eq(gossip_key_generate(out.keys[0]), 0);
    ck_assert_int_eq(gossip_key_generate(out.keys[1]), 0);
    ck_assert_int_eq(gossip_keyring_save(&out, path, msg), 0);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    ck_assert_int_eq(gossip_keyring_load(&kr, path, msg), 0);
    ck_assert_uint_eq(kr.n, 2);
    ck_assert_mem_eq(kr.keys[0], out.keys[0], GOSSIP_KEY_SIZE);
    ck_assert_mem_eq(kr.keys[1], out.keys[1], GOSSIP_KEY_SIZE);
    unlink(path);
    ck_assert_int_eq(gossip_keyring_load(&kr, path, msg), ALLOT_ENOT_FOUND);
    rmdir(dir);
}
END_TEST

/* --- Hash, timers, queue ------------------------------------------------ */

static const void *str_key(const void *val, size_t *len)
{
    *len = strlen(val);
    return val;
}

START_TEST(hash_random)
{
    enum { KEYS = 2000 };
    static char keys[KEYS][12];
    static bool present[KEYS];
    memset(present, 0, sizeof present);
    struct ghash h;
    ghash_init(&h, str_key);
    uint64_t x = 12345;
    size_t n = 0;
    for (int op = 0; op < 50000; op++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t k = (size_t)(x >> 33) % KEYS;
        int len = snprintf(keys[k], sizeof keys[k], "k%zu", k);
        if ((x >> 20) & 1) {
            ck_assert_int_eq(ghash_put(&h, keys[k]), 0);
            n += !present[k];
            present[k] = true;
        } else {
            void *v = ghash_del(&h, keys[k], (size_t)len);
            ck_assert(present[k] ? v == keys[k] : v == NULL);
            n -= present[k];
            present[k] = false;
        }
        ck_assert_uint_eq(h.n, n);
        /* At most 3/4 full; at least 1/8 once grown. */
        ck_assert_uint_le(h.n * 4, h.cap * 3);
        ck_assert(h.cap <= 16 || h.n * 8 > h.cap);
    }
    for (size_t k = 0; k < KEYS; k++) {
        char key[12];
        int len = snprintf(key, sizeof key, "k%zu", k);
        void *v = ghash_get(&h, key, (size_t)len);
        ck_assert(present[k] ? v == keys[k] : v == NULL);
    }
    /* Emptied, it gives its memory back. */
    for (size_t k = 0; k < KEYS; k++) {
        if (present[k]) {
            ck_assert_ptr_eq(ghash_del(&h, keys[k], strlen(keys[k])), keys[k]);
        }
    }
    ck_assert_uint_eq(h.n, 0);
    ck_assert_uint_le(h.cap, 16);
    ghash_free(&h);
}
END_TEST

struct tmark
{
    struct gtimer t;
    int fired;
};

static void tmark_fire(struct gtimer *t, void *arg)
{
    (void)arg;
    ((struct tmark *)(void *)t)->fired++;
}

START_TEST(timer_heap)
{
    enum { N = 500 };
    static struct tmark ts[N];
    struct gtimer_heap h;
    gtimer_heap_init(&h);
    uint64_t x = 99;
    for (int i = 0; i < N; i++) {
        x = x * 6364136223846793005ull + 1;
        gtimer_init(&ts[i].t, tmark_fire);
        ts[i].fired = 0;
        ck_assert_int_eq(gtimer_start(&h, &ts[i].t, (x >> 40) % 10000), 0);
    }
    /* Stop every third, re-arm every fifth later. */
    for (int i = 0; i < N; i += 3) {
        gtimer_stop(&h, &ts[i].t);
        ck_assert(!gtimer_armed(&ts[i].t));
    }
    for (int i = 0; i < N; i += 5) {
        ck_assert_int_eq(gtimer_start(&h, &ts[i].t, 20000 + (uint64_t)i), 0);
    }
    uint64_t last = 0;
    int fired = 0;
    struct gtimer *t;
    while ((t = gtimer_pop_due(&h, UINT64_MAX)) != NULL) {
        ck_assert_uint_ge(t->at, last);
        last = t->at;
        t->fn(t, NULL);
        fired++;
    }
    int want = 0;
    for (int i = 0; i < N; i++) {
        want += (i % 3 != 0 || i % 5 == 0);
        ck_assert_int_eq(ts[i].fired, (i % 3 != 0 || i % 5 == 0) ? 1 : 0);
    }
    ck_assert_int_eq(fired, want);
    ck_assert_uint_eq(gtimer_next(&h), UINT64_MAX);
    gtimer_heap_free(&h);
}
END_TEST

static void qpush(struct gbq *q, const char *key, const char *body,
                  unsigned flags)
{
    ck_assert_int_eq(gbq_push(q, key, key != NULL ? strlen(key) : 0,
                              (const uint8_t *)body, strlen(body), flags),
                     0);
}

/* Fill a packet with room for one 2-byte message (limit 3): want's. */
static void qfill_one(struct gbq *q, const char *want)
{
    uint8_t buf[2];
    struct gbuf_w w;
    unsigned notify = 0;
    gbuf_w_fixed(&w, buf, sizeof buf);
    ck_assert_uint_eq(gbq_fill(q, 3, &w, &notify), 1);
    ck_assert_mem_eq(buf, want, 2);
}

START_TEST(queue_order_and_limits)
{
    struct gbq q;
    gbq_init(&q, NULL, NULL);
    qpush(&q, "ka", "a1", 0);
    qpush(&q, "kb", "b1", 0);
    qpush(&q, "ka", "a2", 0); /* replaces a1 */
    ck_assert_uint_eq(q.n, 2);
    uint8_t buf[64];
    struct gbuf_w w;
    unsigned notify = 0;
    /* Room for one: the newest least-sent goes first. */
    qfill_one(&q, "a2");
    /* Next, b1 (sent 0 times) before a2 (sent once). */
    qfill_one(&q, "b1");
    /* Limit 3: two more rounds of both, then both are retired. */
    for (int i = 0; i < 2; i++) {
        gbuf_w_fixed(&w, buf, sizeof buf);
        ck_assert_uint_eq(gbq_fill(&q, 3, &w, &notify), 2);
    }
    ck_assert_uint_eq(q.n, 0);
    gbuf_w_fixed(&w, buf, sizeof buf);
    ck_assert_uint_eq(gbq_fill(&q, 3, &w, &notify), 0);

    /* Plain broadcasts are capped; a notice comes when one is retired. */
    for (int i = 0; i < GBQ_USER_MAX; i++) {
        qpush(&q, NULL, "u", GBQ_USER);
    }
    ck_assert_int_eq(gbq_push(&q, NULL, 0, (const uint8_t *)"u", 1, GBQ_USER),
                     ALLOT_EUNAVAILABLE);
    qpush(&q, "leave", "L", GBQ_NOTIFY);
    /* Shrinking the limit to 1 retires everything as it is sent. */
    size_t sent = 0;
    for (int i = 0; i < 2 * GBQ_USER_MAX && q.n > 0; i++) {
        gbuf_w_fixed(&w, buf, sizeof buf);
        sent += gbq_fill(&q, 1, &w, &notify);
    }
    ck_assert_uint_eq(sent, GBQ_USER_MAX + 1);
    ck_assert_uint_eq(notify, 1);
    ck_assert_uint_eq(q.n_user, 0);
    qpush(&q, "x", "x", 0);
    gbq_drop(&q, "x", 1);
    ck_assert_uint_eq(q.n, 0);
    gbq_free(&q);
}
END_TEST

/* An item embedded in its owner, encoded each time it is sent. */
struct qowner
{
    struct gbq_item it;
    char body[8];
};

static size_t qowner_encode(void *arg, const struct gbq_item *it, uint8_t *buf,
                            size_t cap)
{
    int *calls = arg;
    const struct qowner *o = (const struct qowner *)(const void *)it;
    size_t len = strlen(o->body);
    (*calls)++;
    if (len > cap) {
        return 0;
    }
    memcpy(buf, o->body, len);
    return len;
}

START_TEST(queue_embedded_items)
{
    int calls = 0;
    struct gbq q;
    gbq_init(&q, qowner_encode, &calls);
    struct qowner a = {.body = "e1"}, b = {.body = "f1"};
    gbq_item_init(&a.it);
    gbq_item_init(&b.it);
    gbq_push_item(&q, &a.it);
    qpush(&q, "kb", "b1", 0);
    ck_assert_uint_eq(q.n, 2);
    uint8_t buf[64];
    struct gbuf_w w;
    unsigned notify = 0;
    /* The newest first, as for copied messages. */
    qfill_one(&q, "b1");
    /* Encoded when sent: the owner's current content goes out. */
    strcpy(a.body, "e2");
    qfill_one(&q, "e2");
    ck_assert_int_ge(calls, 1);
    /* Pushed again: counted as new, queued once. */
    gbq_push_item(&q, &a.it);
    gbq_push_item(&q, &a.it);
    ck_assert_uint_eq(q.n, 2);
    ck_assert_uint_eq(a.it.transmits, 0);
    /* Removing twice is harmless; an item never queued is no-op. */
    gbq_remove_item(&q, &a.it);
    gbq_remove_item(&q, &a.it);
    gbq_remove_item(&q, &b.it);
    ck_assert_uint_eq(q.n, 1);
    /* Retired after limit sends, and then out of the queue. */
    gbq_push_item(&q, &b.it);
    for (int i = 0; i < 3; i++) {
        gbuf_w_fixed(&w, buf, sizeof buf);
        gbq_fill(&q, 3, &w, &notify);
    }
    ck_assert_uint_eq(q.n, 0);
    ck_assert_uint_eq(b.it.flags, GBQ_EMBEDDED);
    /* gbq_free forgets embedded items without freeing them. */
    gbq_push_item(&q, &a.it);
    qpush(&q, "kc", "c1", 0);
    gbq_free(&q);
    ck_assert_uint_eq(a.it.flags, GBQ_EMBEDDED);
}
END_TEST

/* The queue's key table shrinks back once a burst of keyed news is gone. */
START_TEST(queue_table_shrinks)
{
    struct gbq q;
    gbq_init(&q, NULL, NULL);
    char key[16];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "m%d", i);
        qpush(&q, key, "x", 0);
    }
    ck_assert_uint_ge(q.by_key.cap, 5000);
    uint8_t buf[1024];
    struct gbuf_w w;
    unsigned notify = 0;
    while (q.n > 0) {
        gbuf_w_fixed(&w, buf, sizeof buf);
        gbq_fill(&q, 1, &w, &notify);
    }
    ck_assert_uint_le(q.by_key.cap, 16);
    gbq_free(&q);
}
END_TEST

/* --- A member on a recording io
 * ------------------------------------------------ */

struct rec_io
{
    struct gossip_io io;
    uint64_t now;
    uint64_t timer;
    uint64_t rng;
    int packets;
    int streams;
    struct gossip_addr last_to;
    uint8_t last[GOSSIP_PACKET_MAX];
    size_t last_len;
};

static int rec_packet(struct gossip_io *io, const struct gossip_addr *to,
                      const void *buf, size_t len)
{
    struct rec_io *r = io->impl;
    r->packets++;
    r->last_to = *to;
    r->last_len = len < sizeof r->last ? len : sizeof r->last;
    memcpy(r->last, buf, r->last_len);
    return 0;
}

static int rec_stream(struct gossip_io *io, const struct gossip_addr *to,
                      const void *buf, size_t len)
{
    (void)buf;
    (void)len;
    struct rec_io *r = io->impl;
    r->streams++;
    r->last_to = *to;
    return 0;
}

static uint64_t rec_now(struct gossip_io *io)
{
    return ((struct rec_io *)io->impl)->now;
}

static void rec_set_timer(struct gossip_io *io, uint64_t at)
{
    ((struct rec_io *)io->impl)->timer = at;
}

static uint64_t rec_random(struct gossip_io *io)
{
    struct rec_io *r = io->impl;
    r->rng = r->rng * 6364136223846793005ull + 1442695040888963407ull;
    return r->rng >> 11;
}

static void rec_init(struct rec_io *r)
{
    memset(r, 0, sizeof *r);
    r->now = 1000;
    r->io = (struct gossip_io){.impl = r,
                               .send_packet = rec_packet,
                               .send_stream = rec_stream,
                               .now = rec_now,
                               .set_timer = rec_set_timer,
                               .random = rec_random};
}

static void test_config(struct gossip_config *cfg, const char *name)
{
    gossip_config_init(cfg);
    cfg->name = name;
    cfg->addr = (struct gossip_addr){0x0a000001, 7946};
    cfg->keyring.n = 1;
    memset(cfg->keyring.keys[0], 0x42, GOSSIP_KEY_SIZE);
}

/* Seal plaintext with the test key, as a peer would. */
static size_t seal_test(const uint8_t *plain, size_t len, uint8_t *out,
                        enum gcrypt_channel ch)
{
    uint8_t key[GOSSIP_KEY_SIZE];
    memset(key, 0x42, sizeof key);
    gcrypt_seal(key, ch, plain, len, out);
    return len + GCRYPT_OVERHEAD;
}

START_TEST(receive_drops)
{
    struct rec_io r;
    rec_init(&r);
    struct gossip_config cfg;
    test_config(&cfg, "me");
    struct gossip *g;
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(gossip_new(&g, &r.io, &cfg, msg), 0);
    ck_assert_ptr_eq(r.io.owner, g);
    ck_assert_uint_ne(r.timer, UINT64_MAX);
    const struct gossip_addr from = {0x0a000002, 7946};
    struct gossip_stats st;
    static uint8_t big[GOSSIP_PACKET_MAX + 1];

    /* Garbage: not our version byte, then our version byte. */
    gossip_recv_packet(g, &from, "garbage!", 8);
    memset(big, 0, sizeof big);
    big[0] = GCRYPT_VERSION;
    gossip_recv_packet(g, &from, big, 100);
    gossip_recv_packet(g, &from, big, sizeof big);
    gossip_recv_stream(g, &from, big, 10);
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.dropped[GOSSIP_DROP_MALFORMED], 2);
    ck_assert_uint_eq(st.dropped[GOSSIP_DROP_AUTH], 1);
    ck_assert_uint_eq(st.dropped[GOSSIP_DROP_OVERSIZE], 1);

    /* Authentic but malformed, and authentic with one good message
     * followed by a bad one: both dropped whole. */
    uint8_t plain[256], sealed[512];
    struct gbuf_w w;
    gbuf_w_fixed(&w, plain, sizeof plain);
    struct gmsg_alive a = {.inc = 1, .name = {"peer", 4}, .addr = from};
    gmsg_put_alive(&w, &a);
    size_t good = w.len;
    plain[w.len++] = GMSG_ACK;
    plain[w.len++] = 9;
    gossip_recv_packet(g, &from, sealed,
                       seal_test(plain, w.len, sealed, GCRYPT_PACKET));
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.dropped[GOSSIP_DROP_MALFORMED], 3);
    ck_assert_uint_eq(gossip_member_count(g, GOSSIP_ALIVE), 1);
    /* The good part alone acts; on the wrong channel it would not. */
    gossip_recv_stream(g, &from, sealed,
                       seal_test(plain, good, sealed, GCRYPT_PACKET));
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.dropped[GOSSIP_DROP_AUTH], 2);
    ck_assert_uint_eq(gossip_member_count(g, GOSSIP_ALIVE), 1);
    gossip_recv_packet(g, &from, sealed,
                       seal_test(plain, good, sealed, GCRYPT_PACKET));
    ck_assert_uint_eq(gossip_member_count(g, GOSSIP_ALIVE), 2);
    struct gossip_member m;
    ck_assert_int_eq(gossip_member_find(g, "peer", &m), 0);
    ck_assert_uint_eq(m.incarnation, 1);

    /* A ping for us is acked to the address it names. */
    const struct gossip_addr reply_to = {0x0a000009, 1234};
    gbuf_w_fixed(&w, plain, sizeof plain);
    gmsg_put_ping(&w, 77, "me", "peer", &reply_to);
    int before = r.packets;
    gossip_recv_packet(g, &from, sealed,
                       seal_test(plain, w.len, sealed, GCRYPT_PACKET));
    ck_assert_int_eq(r.packets, before + 1);
    ck_assert(gossip_addr_eq(&r.last_to, &reply_to));
    struct gossip_keyring kr = {.n = 1};
    memset(kr.keys[0], 0x42, GOSSIP_KEY_SIZE);
    size_t n;
    ck_assert_int_eq(
        gcrypt_open(&kr, GCRYPT_PACKET, r.last, r.last_len, plain, &n), 0);
    ck_assert_int_eq(gmsg_validate(plain, n, false), 0);
    struct gbuf_r rd, body;
    uint8_t type;
    gbuf_r_init(&rd, plain, n);
    ck_assert_int_eq(gmsg_next(&rd, &type, &body), 1);
    ck_assert_int_eq(type, GMSG_ACK);
    struct gmsg_ack ack;
    ck_assert_int_eq(gmsg_get_ack(&body, &ack), 0);
    ck_assert_uint_eq(ack.seq, 77);
    /* A ping for someone else is not. */
    gbuf_w_fixed(&w, plain, sizeof plain);
    gmsg_put_ping(&w, 78, "not-me", "peer", &reply_to);
    before = r.packets;
    gossip_recv_packet(g, &from, sealed,
                       seal_test(plain, w.len, sealed, GCRYPT_PACKET));
    ck_assert_int_eq(r.packets, before);

    /* Claims that we are dead are refuted with a higher incarnation. */
    gbuf_w_fixed(&w, plain, sizeof plain);
    gmsg_put_suspect(&w, GMSG_DEAD, 5, "me", "peer");
    gossip_recv_packet(g, &from, sealed,
                       seal_test(plain, w.len, sealed, GCRYPT_PACKET));
    gossip_stats(g, &st);
    ck_assert_uint_eq(st.incarnation, 6);
    ck_assert_uint_eq(st.refutes, 1);
    gossip_free(g);
}
END_TEST

START_TEST(config_checks)
{
    struct rec_io r;
    rec_init(&r);
    struct gossip_config cfg;
    struct gossip *g = NULL;
    char msg[ALLOT_ERRMSG_SIZE];
    test_config(&cfg, "bad name");
    ck_assert_int_eq(gossip_new(&g, &r.io, &cfg, msg), ALLOT_EINVALID);
    ck_assert_ptr_nonnull(strstr(msg, "name"));
    test_config(&cfg, "ok");
    cfg.keyring.n = 0;
    ck_assert_int_eq(gossip_new(&g, &r.io, &cfg, msg), ALLOT_EINVALID);
    ck_assert_ptr_nonnull(strstr(msg, "keyring"));
    test_config(&cfg, "ok");
    cfg.probe_timeout_ms = cfg.probe_interval_ms;
    ck_assert_int_eq(gossip_new(&g, &r.io, &cfg, msg), ALLOT_EINVALID);
    test_config(&cfg, "ok");
    cfg.packet_size = 100;
    ck_assert_int_eq(gossip_new(&g, &r.io, &cfg, msg), ALLOT_EINVALID);
    test_config(&cfg, "ok");
    cfg.meta.fleet = "has space";
    ck_assert_int_eq(gossip_new(&g, &r.io, &cfg, msg), ALLOT_EINVALID);
    ck_assert_ptr_nonnull(strstr(msg, "fleet"));
    test_config(&cfg, "ok");
    cfg.meta.app_len = GOSSIP_APP_MAX + 1;
    cfg.meta.app = (const uint8_t *)msg;
    ck_assert_int_eq(gossip_new(&g, &r.io, &cfg, msg), ALLOT_EINVALID);
    ck_assert_ptr_null(g);

    test_config(&cfg, "ok");
    ck_assert_int_eq(gossip_new(&g, &r.io, &cfg, msg), 0);
    ck_assert_int_eq(gossip_send(g, "nobody", "x", 1), ALLOT_ENOT_FOUND);
    ck_assert_int_eq(gossip_send(g, "ok", "x", 1), ALLOT_ENOT_FOUND);
    uint64_t v;
    ck_assert_int_eq(gossip_keyed_get(g, "catalog", &v, NULL, 0, NULL),
                     ALLOT_ENOT_FOUND);
    for (int i = 0; i < GOSSIP_KEYED_MAX; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        ck_assert_int_eq(gossip_broadcast_keyed(g, key, 1, "x", 1), 0);
    }
    ck_assert_int_eq(gossip_broadcast_keyed(g, "one-too-many", 1, "x", 1),
                     ALLOT_EUNAVAILABLE);
    ck_assert_int_eq(
        gossip_broadcast_keyed(g, "k1", 2, "x", GOSSIP_BROADCAST_MAX + 1),
        ALLOT_ETOO_BIG);
    uint8_t key[GOSSIP_KEY_SIZE];
    memset(key, 0x42, sizeof key);
    ck_assert_int_eq(gossip_key_install(g, key), ALLOT_EEXISTS);
    for (int i = 1; i < GOSSIP_KEYRING_MAX; i++) {
        memset(key, i, sizeof key);
        ck_assert_int_eq(gossip_key_install(g, key), 0);
    }
    memset(key, 0x99, sizeof key);
    ck_assert_int_eq(gossip_key_install(g, key), ALLOT_EUNAVAILABLE);
    ck_assert_int_eq(gossip_key_use(g, key), ALLOT_ENOT_FOUND);
    gossip_free(g);
}
END_TEST

static int leave_calls;
static int leave_last;
static void on_leave(struct gossip_leave *req, int status)
{
    (void)req;
    leave_calls++;
    leave_last = status;
}

START_TEST(leave_async)
{
    struct rec_io r;
    rec_init(&r);
    struct gossip_config cfg;
    test_config(&cfg, "me");
    struct gossip *g;
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(gossip_new(&g, &r.io, &cfg, msg), 0);
    struct gossip_leave req;
    leave_calls = 0;
    ck_assert_int_eq(gossip_leave(g, &req, on_leave), 0);
    ck_assert_int_eq(leave_calls, 0);
    /* Alone: done at the next tick. */
    gossip_tick(g);
    ck_assert_int_eq(leave_calls, 1);
    ck_assert_int_eq(leave_last, 0);
    struct gossip_member self;
    gossip_self(g, &self);
    ck_assert_int_eq(self.state, GOSSIP_LEFT);
    gossip_free(g);

    /* Freed while leaving: cancelled. */
    ck_assert_int_eq(gossip_new(&g, &r.io, &cfg, msg), 0);
    ck_assert_int_eq(gossip_leave(g, &req, on_leave), 0);
    gossip_free(g);
    ck_assert_int_eq(leave_calls, 2);
    ck_assert_int_eq(leave_last, ALLOT_ESHUTDOWN);
    ck_assert_ptr_null(r.io.owner);
    ck_assert_uint_eq(r.timer, UINT64_MAX);
}
END_TEST

START_TEST(addresses)
{
    struct gossip_addr a;
    char msg[ALLOT_ERRMSG_SIZE], buf[GOSSIP_ADDR_STRLEN];
    ck_assert_int_eq(gossip_addr_parse(&a, "127.0.0.1:0", msg), 0);
    ck_assert_uint_eq(a.port, 0);
    ck_assert_int_eq(gossip_addr_parse(&a, "localhost:7946", msg), 0);
    ck_assert_str_eq(gossip_addr_format(&a, buf), "127.0.0.1:7946");
    ck_assert_int_eq(gossip_addr_parse(&a, "10.1.2.3:65535", msg), 0);
    ck_assert_str_eq(gossip_addr_format(&a, buf), "10.1.2.3:65535");
    ck_assert_int_eq(gossip_addr_parse(&a, "10.1.2.3", msg), ALLOT_EINVALID);
    ck_assert_int_eq(gossip_addr_parse(&a, "10.1.2.3:65536", msg),
                     ALLOT_EINVALID);
    ck_assert_int_eq(gossip_addr_parse(&a, "host:1", msg), ALLOT_EINVALID);
}
END_TEST

static Suite *gossip_suite(void)
{
    Suite *s = suite_create("gossip");
    TCase *tc = tcase_create("units");
    tcase_add_test(tc, varint);
    tcase_add_test(tc, messages_round_trip);
    tcase_add_test(tc, messages_truncated);
    tcase_add_test(tc, messages_refused);
    tcase_add_test(tc, push_pull_bounds);
    tcase_add_test(tc, messages_bit_flips);
    tcase_add_test(tc, seal_open);
    tcase_add_test(tc, keyring_files);
    tcase_add_test(tc, hash_random);
    tcase_add_test(tc, timer_heap);
    tcase_add_test(tc, queue_order_and_limits);
    tcase_add_test(tc, queue_embedded_items);
    tcase_add_test(tc, queue_table_shrinks);
    tcase_add_test(tc, receive_drops);
    tcase_add_test(tc, config_checks);
    tcase_add_test(tc, leave_async);
    tcase_add_test(tc, addresses);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    log_set_level(LOG_WARN);
    SRunner *sr = srunner_create(gossip_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
