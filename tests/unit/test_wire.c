/* test_wire.c - framing, the msgpack pre-check, envelopes and the error table.
 *
 * Every rejection test also checks that the message says what went wrong: a
 * decoder that refuses the right input for the wrong reason is a bug too. */
#include <check.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "wire.h"

#define assert_has(msg, sub)                    \
    ck_assert_msg(strstr((msg), (sub)) != NULL, \
                  "message \"%s\" does not mention \"%s\"", (msg), (sub))

/* --- Helpers --- */

/* A packer writing into a fresh sbuffer. */
struct pack
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
};

static void pack_init(struct pack *p)
{
    msgpack_sbuffer_init(&p->sb);
    msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
}

static void pack_destroy(struct pack *p)
{
    msgpack_sbuffer_destroy(&p->sb);
}

/* Unpack what p holds (it must pass wire_unpack). */
static void pack_unpack(const struct pack *p, msgpack_unpacked *u)
{
    char msg[ALLOT_ERRMSG_SIZE] = "";
    msgpack_unpacked_init(u);
    int rv = wire_unpack(p->sb.data, p->sb.size, u, msg);
    ck_assert_msg(rv == 0, "wire_unpack: %d %s", rv, msg);
}

/* --- Framing --- */

START_TEST(frame_complete)
{
    char buf[64];
    wire_frame_header(buf, 3);
    memcpy(buf + 4, "abc", 3);
    /* A second frame right behind the first must not be swallowed. */
    wire_frame_header(buf + 7, 2);
    memcpy(buf + 11, "xy", 2);

    const char *body = NULL;
    size_t body_len = 0, frame_len = 0;
    ck_assert_int_eq(wire_frame_parse(buf, 13, &body, &body_len, &frame_len),
                     1);
    ck_assert_ptr_eq(body, buf + 4);
    ck_assert_uint_eq(body_len, 3);
    ck_assert_uint_eq(frame_len, 7);
    ck_assert_int_eq(wire_frame_parse(buf + frame_len, 13 - frame_len, &body,
                                      &body_len, &frame_len),
                     1);
    ck_assert_ptr_eq(body, buf + 11);
    ck_assert_uint_eq(body_len, 2);
    ck_assert_uint_eq(frame_len, 6);
    ck_assert_mem_eq(body, "xy", 2);
}
END_TEST

START_TEST(frame_incomplete)
{
    char buf[8];
    wire_frame_header(buf, 4);
    memcpy(buf + 4, "abcd", 4);
    for (size_t len = 0; len < sizeof buf; len++) {
        const char *body = NULL;
        size_t body_len = 99, frame_len = 99;
        ck_assert_msg(
            wire_frame_parse(buf, len, &body, &body_len, &frame_len) == 0,
            "%zu bytes of an 8-byte frame parsed as complete", len);
        ck_assert_ptr_null(body);
        ck_assert_uint_eq(body_len, 99);
        ck_assert_uint_eq(frame_len, 99);
    }
}
END_TEST

START_TEST(frame_too_big)
{
    char buf[WIRE_HEADER_LEN];
    const char *body;
    size_t body_len, frame_len;

    /* The header alone is enough to refuse: nobody waits for 4 GiB. */
    wire_frame_header(buf, WIRE_FRAME_MAX + 1);
    ck_assert_int_eq(
        wire_frame_parse(buf, sizeof buf, &body, &body_len, &frame_len),
        ALLOT_ETOO_BIG);
    wire_frame_header(buf, UINT32_MAX);
    ck_assert_int_eq(
        wire_frame_parse(buf, sizeof buf, &body, &body_len, &frame_len),
        ALLOT_ETOO_BIG);
    /* Exactly the maximum is allowed: more bytes are needed. */
    wire_frame_header(buf, WIRE_FRAME_MAX);
    ck_assert_int_eq(
        wire_frame_parse(buf, sizeof buf, &body, &body_len, &frame_len), 0);
    /* Three header bytes say nothing yet, whatever they are. */
    memset(buf, 0xff, sizeof buf);
    ck_assert_int_eq(wire_frame_parse(buf, 3, &body, &body_len, &frame_len), 0);
}
END_TEST

START_TEST(frame_max_accepted)
{
    size_t total = WIRE_HEADER_LEN + WIRE_FRAME_MAX;
    char *buf = calloc(1, total);
    ck_assert_ptr_nonnull(buf);
    wire_frame_header(buf, WIRE_FRAME_MAX);
    const char *body;
    size_t body_len, frame_len;
    ck_assert_int_eq(
        wire_frame_parse(buf, total - 1, &body, &body_len, &frame_len), 0);
    ck_assert_int_eq(wire_frame_parse(buf, total, &body, &body_len, &frame_len),
                     1);
    ck_assert_uint_eq(body_len, WIRE_FRAME_MAX);
    ck_assert_uint_eq(frame_len, total);
    free(buf);
}
END_TEST

START_TEST(frame_zero_length)
{
    char buf[WIRE_HEADER_LEN];
    wire_frame_header(buf, 0);
    const char *body = NULL;
    size_t body_len = 99, frame_len = 0;
    ck_assert_int_eq(
        wire_frame_parse(buf, sizeof buf, &body, &body_len, &frame_len), 1);
    ck_assert_uint_eq(body_len, 0);
    ck_assert_uint_eq(frame_len, WIRE_HEADER_LEN);
    ck_assert_ptr_eq(body, buf + WIRE_HEADER_LEN);
}
END_TEST

START_TEST(frame_header_big_endian)
{
    const uint32_t lens[] = {
        0, 1, 0xff, 0x100, 0x01020304, WIRE_FRAME_MAX, UINT32_MAX};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        unsigned char h[WIRE_HEADER_LEN];
        wire_frame_header((char *)h, lens[i]);
        uint32_t back = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 |
                        (uint32_t)h[2] << 8 | (uint32_t)h[3];
        ck_assert_uint_eq(back, lens[i]);
    }
    unsigned char h[WIRE_HEADER_LEN];
    wire_frame_header((char *)h, 0x01020304);
    ck_assert_uint_eq(h[0], 1);
    ck_assert_uint_eq(h[3], 4);
}
END_TEST

START_TEST(frame_build_round_trip)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    wire_frame_start(&sb, &pk);
    wire_pack_ok_head(&pk, 42);
    wire_pack_str(&pk, "pong");
    ck_assert_int_eq(wire_frame_finish(&sb), 0);

    const char *body;
    size_t body_len, frame_len;
    ck_assert_int_eq(
        wire_frame_parse(sb.data, sb.size, &body, &body_len, &frame_len), 1);
    ck_assert_uint_eq(frame_len, sb.size);
    ck_assert_uint_eq(body_len, sb.size - WIRE_HEADER_LEN);

    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_int_eq(wire_unpack(body, body_len, &u, msg), 0);
    struct wire_reply rep;
    ck_assert_int_eq(wire_reply_decode(&u.data, &rep, msg), 0);
    ck_assert_uint_eq(rep.id, 42);
    ck_assert_int_eq(rep.code, 0);
    ck_assert_ptr_nonnull(rep.result);
    ck_assert(wire_str_eq(rep.result, "pong"));
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

START_TEST(frame_finish_too_big)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    wire_frame_start(&sb, &pk);
    char *big = calloc(1, WIRE_FRAME_MAX);
    ck_assert_ptr_nonnull(big);
    msgpack_pack_bin(&pk, WIRE_FRAME_MAX);
    msgpack_pack_bin_body(&pk, big, WIRE_FRAME_MAX);
    ck_assert_int_eq(wire_frame_finish(&sb), ALLOT_ETOO_BIG);
    free(big);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* --- Receive buffer --- */

/* Three frames, one of them empty and one far larger than the initial 4 KiB
 * buffer, as one byte stream. */
struct stream
{
    char *data;
    size_t len;
    size_t body_len[3];
    char fill[3];
};

static void stream_build(struct stream *s)
{
    s->body_len[0] = 5;
    s->body_len[1] = 0;
    s->body_len[2] = 10000;
    s->fill[0] = 'a';
    s->fill[1] = 'b';
    s->fill[2] = 'c';
    s->len = 0;
    for (int i = 0; i < 3; i++) {
        s->len += WIRE_HEADER_LEN + s->body_len[i];
    }
    s->data = malloc(s->len);
    ck_assert_ptr_nonnull(s->data);
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        wire_frame_header(s->data + off, (uint32_t)s->body_len[i]);
        off += WIRE_HEADER_LEN;
        for (size_t j = 0; j < s->body_len[i]; j++) {
            /* Vary the bytes so a misplaced copy would show. */
            s->data[off + j] = (char)(s->fill[i] + (char)(j % 7));
        }
        off += s->body_len[i];
    }
}

static const size_t chunk_sizes[] = {1, 2, 3, 5, 7, 4095, 4096, 10007, 100000};
#define N_CHUNK_SIZES (sizeof chunk_sizes / sizeof chunk_sizes[0])

/* Feed the stream in reads of at most `chunk` bytes, as a socket would, and
 * check that exactly the three frames come out, intact and in order. */
START_TEST(rbuf_split_reads)
{
    size_t chunk = chunk_sizes[_i];
    struct stream s;
    stream_build(&s);
    struct wire_rbuf b;
    wire_rbuf_init(&b);

    size_t fed = 0;
    int got = 0;
    size_t body_off[3];
    body_off[0] = WIRE_HEADER_LEN;
    body_off[1] = body_off[0] + s.body_len[0] + WIRE_HEADER_LEN;
    body_off[2] = body_off[1] + s.body_len[1] + WIRE_HEADER_LEN;
    while (fed < s.len) {
        char *tail;
        size_t avail;
        ck_assert_int_eq(wire_rbuf_reserve(&b, chunk, &tail, &avail), 0);
        ck_assert_uint_ge(avail, chunk);
        size_t n = s.len - fed < chunk ? s.len - fed : chunk;
        memcpy(tail, s.data + fed, n);
        b.len += n;
        fed += n;
        const char *body;
        size_t body_len;
        int rv;
        while ((rv = wire_rbuf_next(&b, &body, &body_len)) == 1) {
            ck_assert_int_lt(got, 3);
            ck_assert_uint_eq(body_len, s.body_len[got]);
            ck_assert_mem_eq(body, s.data + body_off[got], body_len);
            got++;
        }
        ck_assert_int_eq(rv, 0);
    }
    ck_assert_int_eq(got, 3);
    /* Everything consumed: the buffer is empty again. */
    ck_assert_uint_eq(b.len - b.off, 0);
    const char *body;
    size_t body_len;
    ck_assert_int_eq(wire_rbuf_next(&b, &body, &body_len), 0);
    wire_rbuf_close(&b);
    ck_assert_ptr_null(b.base);
    free(s.data);
}
END_TEST

/* A partial frame left behind is moved to the front on the next reserve. */
START_TEST(rbuf_compacts)
{
    struct wire_rbuf b;
    wire_rbuf_init(&b);
    char *tail;
    size_t avail;
    ck_assert_int_eq(wire_rbuf_reserve(&b, 64, &tail, &avail), 0);
    char frame[16];
    wire_frame_header(frame, 2);
    memcpy(frame + 4, "hi", 2);
    wire_frame_header(frame + 6, 3);
    memcpy(frame + 10, "yo", 2); /* one byte short */
    memcpy(tail, frame, 12);
    b.len += 12;

    const char *body;
    size_t body_len;
    ck_assert_int_eq(wire_rbuf_next(&b, &body, &body_len), 1);
    ck_assert_mem_eq(body, "hi", 2);
    ck_assert_int_eq(wire_rbuf_next(&b, &body, &body_len), 0);
    ck_assert_uint_eq(b.off, 6);

    ck_assert_int_eq(wire_rbuf_reserve(&b, 1, &tail, &avail), 0);
    ck_assert_uint_eq(b.off, 0);
    ck_assert_uint_eq(b.len, 6);
    *tail = '!';
    b.len++;
    ck_assert_int_eq(wire_rbuf_next(&b, &body, &body_len), 1);
    ck_assert_uint_eq(body_len, 3);
    ck_assert_mem_eq(body, "yo!", 3);
    wire_rbuf_close(&b);
}
END_TEST

/* Asking a buffer that never received anything: no frame, no crash (and
 * no arithmetic on its NULL base: clang's UBSan flags NULL + 0). */
START_TEST(rbuf_next_on_empty)
{
    struct wire_rbuf b;
    wire_rbuf_init(&b);
    const char *body = NULL;
    size_t body_len = 7;
    ck_assert_int_eq(wire_rbuf_next(&b, &body, &body_len), 0);
    ck_assert_ptr_null(body);
    ck_assert_uint_eq(body_len, 7);
    wire_rbuf_close(&b);
}
END_TEST

START_TEST(rbuf_too_big)
{
    struct wire_rbuf b;
    wire_rbuf_init(&b);
    char *tail;
    size_t avail;
    ck_assert_int_eq(wire_rbuf_reserve(&b, 4, &tail, &avail), 0);
    wire_frame_header(tail, WIRE_FRAME_MAX + 1);
    b.len += 4;
    const char *body;
    size_t body_len;
    ck_assert_int_eq(wire_rbuf_next(&b, &body, &body_len), ALLOT_ETOO_BIG);
    /* Nothing is consumed: the stream cannot be resynced. */
    ck_assert_uint_eq(b.off, 0);
    ck_assert_uint_eq(b.len, 4);
    wire_rbuf_close(&b);
}
END_TEST

/* --- Pre-check: every msgpack type --- */

static char filler[70000];

static void pk_nil(msgpack_packer *pk)
{
    msgpack_pack_nil(pk);
}
static void pk_false(msgpack_packer *pk)
{
    msgpack_pack_false(pk);
}
static void pk_true(msgpack_packer *pk)
{
    msgpack_pack_true(pk);
}
static void pk_fixint(msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, 5);
}
static void pk_uint8(msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, 200);
}
static void pk_uint16(msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, 1000);
}
static void pk_uint32(msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, 70000);
}
static void pk_uint64(msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, UINT64_MAX);
}
static void pk_negfixint(msgpack_packer *pk)
{
    msgpack_pack_int64(pk, -5);
}
static void pk_int8(msgpack_packer *pk)
{
    msgpack_pack_int64(pk, -100);
}
static void pk_int16(msgpack_packer *pk)
{
    msgpack_pack_int64(pk, -1000);
}
static void pk_int32(msgpack_packer *pk)
{
    msgpack_pack_int64(pk, -70000);
}
static void pk_int64(msgpack_packer *pk)
{
    msgpack_pack_int64(pk, INT64_MIN);
}
static void pk_float32(msgpack_packer *pk)
{
    msgpack_pack_float(pk, 1.5f);
}
static void pk_float64(msgpack_packer *pk)
{
    msgpack_pack_double(pk, -2.25);
}
static void pk_str_n(msgpack_packer *pk, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, filler, n);
}
static void pk_fixstr_empty(msgpack_packer *pk)
{
    pk_str_n(pk, 0);
}
static void pk_fixstr(msgpack_packer *pk)
{
    pk_str_n(pk, 31);
}
static void pk_str8(msgpack_packer *pk)
{
    pk_str_n(pk, 40);
}
static void pk_str16(msgpack_packer *pk)
{
    pk_str_n(pk, 300);
}
static void pk_str32(msgpack_packer *pk)
{
    pk_str_n(pk, 70000);
}
static void pk_bin_n(msgpack_packer *pk, size_t n)
{
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, filler, n);
}
static void pk_bin8_empty(msgpack_packer *pk)
{
    pk_bin_n(pk, 0);
}
static void pk_bin8(msgpack_packer *pk)
{
    pk_bin_n(pk, 10);
}
static void pk_bin16(msgpack_packer *pk)
{
    pk_bin_n(pk, 300);
}
static void pk_bin32(msgpack_packer *pk)
{
    pk_bin_n(pk, 70000);
}
static void pk_array_n(msgpack_packer *pk, uint32_t n)
{
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        msgpack_pack_uint64(pk, i % 100);
    }
}
static void pk_fixarray_empty(msgpack_packer *pk)
{
    pk_array_n(pk, 0);
}
static void pk_fixarray(msgpack_packer *pk)
{
    pk_array_n(pk, 15);
}
static void pk_array16(msgpack_packer *pk)
{
    pk_array_n(pk, 20);
}
static void pk_array32(msgpack_packer *pk)
{
    pk_array_n(pk, 70000);
}
static void pk_map_n(msgpack_packer *pk, uint32_t n)
{
    msgpack_pack_map(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        /* One-byte keys: the map is exactly as long as its count allows,
         * so every cut is refused at the header. */
        msgpack_pack_uint64(pk, i % 100);
        msgpack_pack_nil(pk);
    }
}
static void pk_fixmap_empty(msgpack_packer *pk)
{
    pk_map_n(pk, 0);
}
static void pk_fixmap(msgpack_packer *pk)
{
    pk_map_n(pk, 15);
}
static void pk_map16(msgpack_packer *pk)
{
    pk_map_n(pk, 20);
}
static void pk_map32(msgpack_packer *pk)
{
    pk_map_n(pk, 70000);
}
static void pk_ext_n(msgpack_packer *pk, size_t n)
{
    msgpack_pack_ext(pk, n, 7);
    msgpack_pack_ext_body(pk, filler, n);
}
static void pk_fixext1(msgpack_packer *pk)
{
    pk_ext_n(pk, 1);
}
static void pk_fixext2(msgpack_packer *pk)
{
    pk_ext_n(pk, 2);
}
static void pk_fixext4(msgpack_packer *pk)
{
    pk_ext_n(pk, 4);
}
static void pk_fixext8(msgpack_packer *pk)
{
    pk_ext_n(pk, 8);
}
static void pk_fixext16(msgpack_packer *pk)
{
    pk_ext_n(pk, 16);
}
static void pk_ext8(msgpack_packer *pk)
{
    pk_ext_n(pk, 3);
}
static void pk_ext8_empty(msgpack_packer *pk)
{
    pk_ext_n(pk, 0);
}
static void pk_ext16(msgpack_packer *pk)
{
    pk_ext_n(pk, 300);
}
static void pk_ext32(msgpack_packer *pk)
{
    pk_ext_n(pk, 70000);
}

struct type_case
{
    const char *name;
    void (*build)(msgpack_packer *pk);
    unsigned char first; /* the type byte the packer must have chosen */
    msgpack_object_type type;
};

static const struct type_case type_cases[] = {
    {"nil", pk_nil, 0xc0, MSGPACK_OBJECT_NIL},
    {"false", pk_false, 0xc2, MSGPACK_OBJECT_BOOLEAN},
    {"true", pk_true, 0xc3, MSGPACK_OBJECT_BOOLEAN},
    {"positive fixint", pk_fixint, 0x05, MSGPACK_OBJECT_POSITIVE_INTEGER},
    {"uint8", pk_uint8, 0xcc, MSGPACK_OBJECT_POSITIVE_INTEGER},
    {"uint16", pk_uint16, 0xcd, MSGPACK_OBJECT_POSITIVE_INTEGER},
    {"uint32", pk_uint32, 0xce, MSGPACK_OBJECT_POSITIVE_INTEGER},
    {"uint64", pk_uint64, 0xcf, MSGPACK_OBJECT_POSITIVE_INTEGER},
    {"negative fixint", pk_negfixint, 0xfb, MSGPACK_OBJECT_NEGATIVE_INTEGER},
    {"int8", pk_int8, 0xd0, MSGPACK_OBJECT_NEGATIVE_INTEGER},
    {"int16", pk_int16, 0xd1, MSGPACK_OBJECT_NEGATIVE_INTEGER},
    {"int32", pk_int32, 0xd2, MSGPACK_OBJECT_NEGATIVE_INTEGER},
    {"int64", pk_int64, 0xd3, MSGPACK_OBJECT_NEGATIVE_INTEGER},
    {"float32", pk_float32, 0xca, MSGPACK_OBJECT_FLOAT32},
    {"float64", pk_float64, 0xcb, MSGPACK_OBJECT_FLOAT64},
    {"empty fixstr", pk_fixstr_empty, 0xa0, MSGPACK_OBJECT_STR},
    {"fixstr", pk_fixstr, 0xbf, MSGPACK_OBJECT_STR},
    {"str8", pk_str8, 0xd9, MSGPACK_OBJECT_STR},
    {"str16", pk_str16, 0xda, MSGPACK_OBJECT_STR},
    {"str32", pk_str32, 0xdb, MSGPACK_OBJECT_STR},
    {"empty bin8", pk_bin8_empty, 0xc4, MSGPACK_OBJECT_BIN},
    {"bin8", pk_bin8, 0xc4, MSGPACK_OBJECT_BIN},
    {"bin16", pk_bin16, 0xc5, MSGPACK_OBJECT_BIN},
    {"bin32", pk_bin32, 0xc6, MSGPACK_OBJECT_BIN},
    {"empty fixarray", pk_fixarray_empty, 0x90, MSGPACK_OBJECT_ARRAY},
    {"fixarray", pk_fixarray, 0x9f, MSGPACK_OBJECT_ARRAY},
    {"array16", pk_array16, 0xdc, MSGPACK_OBJECT_ARRAY},
    {"array32", pk_array32, 0xdd, MSGPACK_OBJECT_ARRAY},
    {"empty fixmap", pk_fixmap_empty, 0x80, MSGPACK_OBJECT_MAP},
    {"fixmap", pk_fixmap, 0x8f, MSGPACK_OBJECT_MAP},
    {"map16", pk_map16, 0xde, MSGPACK_OBJECT_MAP},
    {"map32", pk_map32, 0xdf, MSGPACK_OBJECT_MAP},
    {"fixext1", pk_fixext1, 0xd4, MSGPACK_OBJECT_EXT},
    {"fixext2", pk_fixext2, 0xd5, MSGPACK_OBJECT_EXT},
    {"fixext4", pk_fixext4, 0xd6, MSGPACK_OBJECT_EXT},
    {"fixext8", pk_fixext8, 0xd7, MSGPACK_OBJECT_EXT},
    {"fixext16", pk_fixext16, 0xd8, MSGPACK_OBJECT_EXT},
    {"empty ext8", pk_ext8_empty, 0xc7, MSGPACK_OBJECT_EXT},
    {"ext8", pk_ext8, 0xc7, MSGPACK_OBJECT_EXT},
    {"ext16", pk_ext16, 0xc8, MSGPACK_OBJECT_EXT},
    {"ext32", pk_ext32, 0xc9, MSGPACK_OBJECT_EXT},
};
#define N_TYPE_CASES (sizeof type_cases / sizeof type_cases[0])

/* A value built by the packer passes, reports its full length as used, and
 * unpacks to the right type. */
START_TEST(check_accepts_type)
{
    const struct type_case *tc = &type_cases[_i];
    struct pack p;
    pack_init(&p);
    tc->build(&p.pk);
    ck_assert_msg((unsigned char)p.sb.data[0] == tc->first,
                  "%s: packer wrote 0x%02x, test expects 0x%02x", tc->name,
                  (unsigned char)p.sb.data[0], tc->first);
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_msg(wire_check(p.sb.data, p.sb.size, msg) == 0, "%s: %s",
                  tc->name, msg);
    size_t used = 0;
    ck_assert_int_eq(wire_check_prefix(p.sb.data, p.sb.size, &used, msg), 0);
    ck_assert_uint_eq(used, p.sb.size);
    msgpack_unpacked u;
    pack_unpack(&p, &u);
    ck_assert_int_eq(u.data.type, tc->type);
    msgpack_unpacked_destroy(&u);
    pack_destroy(&p);
}
END_TEST

/* Every proper prefix of a valid value is refused, with a message. */
START_TEST(check_refuses_truncation)
{
    const struct type_case *tc = &type_cases[_i];
    struct pack p;
    pack_init(&p);
    tc->build(&p.pk);
    for (size_t len = 0; len < p.sb.size; len++) {
        char msg[ALLOT_ERRMSG_SIZE] = "";
        int rv = wire_check(p.sb.data, len, msg);
        ck_assert_msg(rv == ALLOT_EPROTOCOL,
                      "%s cut to %zu of %zu bytes: got %d", tc->name, len,
                      p.sb.size, rv);
        ck_assert_msg(msg[0] != '\0', "%s cut to %zu: no message", tc->name,
                      len);
        size_t used = 12345;
        ck_assert_int_eq(wire_check_prefix(p.sb.data, len, &used, NULL),
                         ALLOT_EPROTOCOL);
        ck_assert_uint_eq(used, 12345);
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        ck_assert_int_eq(wire_unpack(p.sb.data, len, &u, NULL),
                         ALLOT_EPROTOCOL);
        msgpack_unpacked_destroy(&u);
    }
    pack_destroy(&p);
}
END_TEST

/* One value holding every small type, nested: every cut is refused. */
static void pack_everything(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 3);
    wire_pack_str(pk, "scalars");
    msgpack_pack_array(pk, N_TYPE_CASES);
    for (size_t i = 0; i < N_TYPE_CASES; i++) {
        if (type_cases[i].build == pk_str32 ||
            type_cases[i].build == pk_bin32 ||
            type_cases[i].build == pk_array32 ||
            type_cases[i].build == pk_map32 ||
            type_cases[i].build == pk_ext32) {
            msgpack_pack_nil(pk);
        } else {
            type_cases[i].build(pk);
        }
    }
    wire_pack_str(pk, "nested");
    msgpack_pack_array(pk, 2);
    msgpack_pack_map(pk, 1);
    msgpack_pack_int64(pk, -1);
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 0);
    msgpack_pack_array(pk, 0);
    msgpack_pack_true(pk);
    msgpack_pack_nil(pk);
}

START_TEST(check_everything_every_cut)
{
    struct pack p;
    pack_init(&p);
    pack_everything(&p.pk);
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_msg(wire_check(p.sb.data, p.sb.size, msg) == 0, "%s", msg);
    for (size_t len = 0; len < p.sb.size; len++) {
        ck_assert_msg(wire_check(p.sb.data, len, msg) == ALLOT_EPROTOCOL,
                      "cut to %zu of %zu accepted", len, p.sb.size);
    }
    /* The check agrees with msgpack-c on where the value ends. */
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    ck_assert_int_eq(msgpack_unpack_next(&u, p.sb.data, p.sb.size, &off),
                     MSGPACK_UNPACK_SUCCESS);
    ck_assert_uint_eq(off, p.sb.size);
    msgpack_unpacked_destroy(&u);
    pack_destroy(&p);
}
END_TEST

START_TEST(check_refuses_reserved_c1)
{
    char msg[ALLOT_ERRMSG_SIZE] = "";
    const char lone[] = {(char)0xc1};
    ck_assert_int_eq(wire_check(lone, 1, msg), ALLOT_EPROTOCOL);
    assert_has(msg, "0xc1");
    /* Inside a container, after valid elements. */
    const char nested[] = {(char)0x93, 0x01, 0x02, (char)0xc1};
    ck_assert_int_eq(wire_check(nested, sizeof nested, msg), ALLOT_EPROTOCOL);
    assert_has(msg, "0xc1");
    assert_has(msg, "byte 3");
    /* As a map key. */
    const char key[] = {(char)0x81, (char)0xc1, 0x01};
    ck_assert_int_eq(wire_check(key, sizeof key, msg), ALLOT_EPROTOCOL);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(nested, sizeof nested, &u, msg),
                     ALLOT_EPROTOCOL);
    msgpack_unpacked_destroy(&u);
}
END_TEST

/* A 5-byte header claiming 4 billion elements must be refused before
 * anyone allocates for it, whatever follows. */
START_TEST(check_refuses_lying_containers)
{
    static const unsigned char heads[][5] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff}, /* array32 */
        {0xdf, 0xff, 0xff, 0xff, 0xff}, /* map32 */
        {0xdc, 0xff, 0xff, 0x00, 0x00}, /* array16 (3 bytes used) */
        {0xde, 0xff, 0xff, 0x00, 0x00}, /* map16 */
        {0xdb, 0xff, 0xff, 0xff, 0xff}, /* str32 */
        {0xc6, 0xff, 0xff, 0xff, 0xff}, /* bin32 */
        {0xc9, 0xff, 0xff, 0xff, 0xff}, /* ext32 */
    };
    size_t len = 5 + 1000;
    char *buf = malloc(len);
    ck_assert_ptr_nonnull(buf);
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        memcpy(buf, heads[i], 5);
        memset(buf + 5, 0xc0, 1000); /* 1000 nils */
        const size_t lens[] = {5, 6, len};
        for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
            size_t n = lens[k];
            char msg[ALLOT_ERRMSG_SIZE] = "";
            ck_assert_msg(wire_check(buf, n, msg) == ALLOT_EPROTOCOL,
                          "header 0x%02x with %zu bytes accepted", heads[i][0],
                          n);
            if (heads[i][0] == 0xdd || heads[i][0] == 0xdf) {
                assert_has(msg, "declares");
            }
            msgpack_unpacked u;
            msgpack_unpacked_init(&u);
            ck_assert_int_eq(wire_unpack(buf, n, &u, NULL), ALLOT_EPROTOCOL);
            msgpack_unpacked_destroy(&u);
        }
    }
    /* The map count is doubled: a map of 3 pairs needs 6 bytes, not 3. */
    const char map3[] = {(char)0x83, 0x01, 0x02, 0x03, 0x04};
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(wire_check(map3, sizeof map3, msg), ALLOT_EPROTOCOL);
    assert_has(msg, "declares 6 elements");
    /* One element more than bytes left is already refused by the count. */
    const char arr3[] = {(char)0x93, 0x01, 0x02};
    ck_assert_int_eq(wire_check(arr3, sizeof arr3, msg), ALLOT_EPROTOCOL);
    assert_has(msg, "declares 3 elements but only 2 bytes remain");
    free(buf);
}
END_TEST

static void nest(struct pack *p, int depth, bool maps)
{
    for (int i = 0; i < depth; i++) {
        if (maps && i % 2 == 1) {
            msgpack_pack_map(&p->pk, 1);
            wire_pack_str(&p->pk, "k");
        } else {
            msgpack_pack_array(&p->pk, 1);
        }
    }
    msgpack_pack_uint64(&p->pk, 1);
}

START_TEST(check_depth_limit)
{
    for (int maps = 0; maps <= 1; maps++) {
        struct pack ok, deep;
        pack_init(&ok);
        pack_init(&deep);
        nest(&ok, WIRE_MAX_DEPTH, maps);
        nest(&deep, WIRE_MAX_DEPTH + 1, maps);
        char msg[ALLOT_ERRMSG_SIZE] = "";
        ck_assert_msg(wire_check(ok.sb.data, ok.sb.size, msg) == 0, "%s", msg);
        ck_assert_int_eq(wire_check(deep.sb.data, deep.sb.size, msg),
                         ALLOT_EPROTOCOL);
        assert_has(msg, "deeper than 16");
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        ck_assert_int_eq(wire_unpack(deep.sb.data, deep.sb.size, &u, NULL),
                         ALLOT_EPROTOCOL);
        msgpack_unpacked_destroy(&u);
        pack_destroy(&ok);
        pack_destroy(&deep);
    }
    /* Far deeper: 100,000 array headers (a classic stack exhaustion). */
    size_t n = 100000;
    char *buf = malloc(n + 1);
    ck_assert_ptr_nonnull(buf);
    memset(buf, (char)0x91, n);
    buf[n] = 0x01;
    ck_assert_int_eq(wire_check(buf, n + 1, NULL), ALLOT_EPROTOCOL);
    free(buf);
}
END_TEST

START_TEST(check_trailing_bytes)
{
    struct pack p;
    pack_init(&p);
    msgpack_pack_map(&p.pk, 1);
    wire_pack_kv_u64(&p.pk, "id", 1);
    size_t first = p.sb.size;
    msgpack_pack_nil(&p.pk);
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_int_eq(wire_check(p.sb.data, p.sb.size, msg), ALLOT_EPROTOCOL);
    assert_has(msg, "1 trailing byte");
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(p.sb.data, p.sb.size, &u, msg),
                     ALLOT_EPROTOCOL);
    msgpack_unpacked_destroy(&u);
    /* The prefix check stops after the first value and says where. */
    size_t used = 0;
    ck_assert_int_eq(wire_check_prefix(p.sb.data, p.sb.size, &used, msg), 0);
    ck_assert_uint_eq(used, first);
    ck_assert_int_eq(
        wire_check_prefix(p.sb.data + used, p.sb.size - used, &used, msg), 0);
    ck_assert_uint_eq(used, 1);
    ck_assert_int_eq(wire_check(p.sb.data, first, msg), 0);
    /* Nothing at all is not a value. */
    ck_assert_int_eq(wire_check(p.sb.data, 0, msg), ALLOT_EPROTOCOL);
    ck_assert_int_eq(wire_check_prefix(p.sb.data, 0, &used, msg),
                     ALLOT_EPROTOCOL);
    pack_destroy(&p);
}
END_TEST

START_TEST(check_prefix_sequence)
{
    /* Several values back to back: walk them one by one. */
    struct pack p;
    pack_init(&p);
    size_t ends[N_TYPE_CASES];
    for (size_t i = 0; i < N_TYPE_CASES; i++) {
        type_cases[i].build(&p.pk);
        ends[i] = p.sb.size;
    }
    size_t off = 0;
    for (size_t i = 0; i < N_TYPE_CASES; i++) {
        size_t used = 0;
        char msg[ALLOT_ERRMSG_SIZE] = "";
        ck_assert_msg(wire_check_prefix(p.sb.data + off, p.sb.size - off, &used,
                                        msg) == 0,
                      "%s: %s", type_cases[i].name, msg);
        ck_assert_uint_eq(off + used, ends[i]);
        off += used;
    }
    ck_assert_uint_eq(off, p.sb.size);
    pack_destroy(&p);
}
END_TEST

/* --- Field readers --- */

START_TEST(getters)
{
    struct pack p;
    pack_init(&p);
    msgpack_pack_map(&p.pk, 8);
    wire_pack_kv_u64(&p.pk, "u", 7);
    wire_pack_str(&p.pk, "neg");
    msgpack_pack_int64(&p.pk, -3);
    wire_pack_str(&p.pk, "f32");
    msgpack_pack_float(&p.pk, 0.5f);
    wire_pack_str(&p.pk, "f64");
    msgpack_pack_double(&p.pk, 2.75);
    wire_pack_str(&p.pk, "b");
    msgpack_pack_true(&p.pk);
    wire_pack_kv_str(&p.pk, "s", "hello");
    wire_pack_str(&p.pk, "m");
    msgpack_pack_map(&p.pk, 0);
    wire_pack_str(&p.pk, "nil");
    msgpack_pack_nil(&p.pk);
    msgpack_unpacked u;
    pack_unpack(&p, &u);
    const msgpack_object *m = &u.data;
    char msg[ALLOT_ERRMSG_SIZE] = "";

    uint64_t x = 99;
    ck_assert_int_eq(wire_get_u64(m, "u", true, &x, msg), 0);
    ck_assert_uint_eq(x, 7);
    x = 99;
    ck_assert_int_eq(wire_get_u64(m, "absent", false, &x, msg),
                     ALLOT_ENOT_FOUND);
    ck_assert_uint_eq(x, 99);
    ck_assert_int_eq(wire_get_u64(m, "absent", true, &x, msg), ALLOT_EINVALID);
    ck_assert_str_eq(msg, "missing field absent");
    ck_assert_int_eq(wire_get_u64(m, "neg", true, &x, msg), ALLOT_EINVALID);
    assert_has(msg, "neg");
    assert_has(msg, "non-negative integer");
    ck_assert_int_eq(wire_get_u64(m, "nil", false, &x, msg), ALLOT_EINVALID);
    ck_assert_uint_eq(x, 99);

    double d = 0;
    ck_assert_int_eq(wire_get_double(m, "f32", true, &d, msg), 0);
    ck_assert_double_eq(d, 0.5);
    ck_assert_int_eq(wire_get_double(m, "f64", true, &d, msg), 0);
    ck_assert_double_eq(d, 2.75);
    ck_assert_int_eq(wire_get_double(m, "u", true, &d, msg), 0);
    ck_assert_double_eq(d, 7.0);
    ck_assert_int_eq(wire_get_double(m, "neg", true, &d, msg), 0);
    ck_assert_double_eq(d, -3.0);
    ck_assert_int_eq(wire_get_double(m, "s", true, &d, msg), ALLOT_EINVALID);
    assert_has(msg, "field s must be a number");

    bool b = false;
    ck_assert_int_eq(wire_get_bool(m, "b", true, &b, msg), 0);
    ck_assert(b);
    ck_assert_int_eq(wire_get_bool(m, "u", true, &b, msg), ALLOT_EINVALID);
    assert_has(msg, "field u must be a boolean");

    const char *s;
    size_t len;
    ck_assert_int_eq(wire_get_str(m, "s", true, &s, &len, msg), 0);
    ck_assert_uint_eq(len, 5);
    ck_assert_mem_eq(s, "hello", 5);
    ck_assert_int_eq(wire_get_str(m, "b", true, &s, &len, msg), ALLOT_EINVALID);
    assert_has(msg, "field b must be a string");

    const msgpack_object *o = NULL;
    ck_assert_int_eq(wire_get_map(m, "m", true, &o, msg), 0);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(o->type, MSGPACK_OBJECT_MAP);
    ck_assert_int_eq(wire_get_map(m, "s", true, &o, msg), ALLOT_EINVALID);
    assert_has(msg, "field s must be a map");

    /* Not a map: nothing is found in it. */
    ck_assert_ptr_null(wire_map_get(&m->via.map.ptr[0].val, "u"));
    ck_assert_ptr_null(wire_map_get(NULL, "u"));
    ck_assert(wire_str_eq(&m->via.map.ptr[0].key, "u"));
    ck_assert(!wire_str_eq(&m->via.map.ptr[0].key, "uu"));
    ck_assert(!wire_str_eq(&m->via.map.ptr[0].key, ""));
    ck_assert(!wire_str_eq(&m->via.map.ptr[0].val, "u"));
    msgpack_unpacked_destroy(&u);
    pack_destroy(&p);
}
END_TEST

/* --- Operations --- */

START_TEST(op_table)
{
    for (unsigned op = 1; op < WIRE_OP_COUNT; op++) {
        const char *name = wire_op_name((enum wire_op)op);
        ck_assert_str_ne(name, "unknown");
        ck_assert_int_eq(wire_op_from_name(name, strlen(name)), op);
        unsigned fl = wire_op_flags((enum wire_op)op);
        /* Exactly one place an operation runs. */
        ck_assert_msg(fl != 0 && (fl & (fl - 1)) == 0, "%s: flags %u", name,
                      fl);
    }
    ck_assert_uint_eq(wire_op_flags(WIRE_OP_QUOTA_SET), WIRE_OP_WRITE);
    ck_assert_uint_eq(wire_op_flags(WIRE_OP_QUOTA_RM), WIRE_OP_WRITE);
    ck_assert_uint_eq(wire_op_flags(WIRE_OP_QUOTA_GET), WIRE_OP_READ);
    ck_assert_uint_eq(wire_op_flags(WIRE_OP_QUOTA_LS), WIRE_OP_READ);
    ck_assert_uint_eq(wire_op_flags(WIRE_OP_PING), WIRE_OP_LOCAL);
    ck_assert_uint_eq(wire_op_flags(WIRE_OP_CLUSTER_ADD), WIRE_OP_ADMIN);
    ck_assert_int_eq(wire_op_from_name("quota.se", 8), WIRE_OP_UNKNOWN);
    ck_assert_int_eq(wire_op_from_name("quota.sets", 10), WIRE_OP_UNKNOWN);
    ck_assert_int_eq(wire_op_from_name("quota.set", 8), WIRE_OP_UNKNOWN);
    ck_assert_int_eq(wire_op_from_name("unknown", 7), WIRE_OP_UNKNOWN);
    ck_assert_int_eq(wire_op_from_name("", 0), WIRE_OP_UNKNOWN);
    ck_assert_str_eq(wire_op_name(WIRE_OP_COUNT), "unknown");
    ck_assert_str_eq(wire_op_name((enum wire_op)1000), "unknown");
    ck_assert_uint_eq(wire_op_flags((enum wire_op)1000), 0);
}
END_TEST

/* --- Request envelopes --- */

/* Which fields a test request carries, and how. */
enum field_form {
    F_ABSENT = 0,
    F_GOOD,
    F_STR,   /* a string where another type belongs */
    F_NEG,   /* a negative integer */
    F_BOOL,  /* a boolean */
    F_ARRAY, /* an array */
    F_FLOAT, /* a float */
    F_ZERO,  /* integer 0 */
};

struct req_spec
{
    enum field_form id, op, args, client, seq, ack, fwd;
    const char *op_name;
};

static void pack_form(msgpack_packer *pk, enum field_form form,
                      uint64_t good_u64)
{
    switch (form) {
    case F_STR:
        wire_pack_str(pk, "x");
        break;
    case F_NEG:
        msgpack_pack_int64(pk, -1);
        break;
    case F_BOOL:
        msgpack_pack_true(pk);
        break;
    case F_ARRAY:
        msgpack_pack_array(pk, 0);
        break;
    case F_FLOAT:
        msgpack_pack_double(pk, 1.0);
        break;
    case F_ZERO:
        msgpack_pack_uint64(pk, 0);
        break;
    default:
        msgpack_pack_uint64(pk, good_u64);
        break;
    }
}

static void pack_request(struct pack *p, const struct req_spec *r)
{
    enum field_form forms[] = {r->id,  r->op,  r->args, r->client,
                               r->seq, r->ack, r->fwd};
    uint32_t n = 0;
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        n += forms[i] != F_ABSENT;
    }
    msgpack_pack_map(&p->pk, n);
    if (r->id) {
        wire_pack_str(&p->pk, "id");
        pack_form(&p->pk, r->id, 77);
    }
    if (r->op) {
        wire_pack_str(&p->pk, "op");
        if (r->op == F_GOOD) {
            wire_pack_str(&p->pk, r->op_name ? r->op_name : "quota.set");
        } else {
            pack_form(&p->pk, r->op, 1);
        }
    }
    if (r->args) {
        wire_pack_str(&p->pk, "args");
        if (r->args == F_GOOD) {
            msgpack_pack_map(&p->pk, 1);
            wire_pack_kv_str(&p->pk, "path", "org/team");
        } else {
            pack_form(&p->pk, r->args, 1);
        }
    }
    if (r->client) {
        wire_pack_str(&p->pk, "client");
        pack_form(&p->pk, r->client, 5);
    }
    if (r->seq) {
        wire_pack_str(&p->pk, "seq");
        pack_form(&p->pk, r->seq, 9);
    }
    if (r->ack) {
        wire_pack_str(&p->pk, "ack");
        pack_form(&p->pk, r->ack, 8);
    }
    if (r->fwd) {
        wire_pack_str(&p->pk, "fwd");
        if (r->fwd == F_GOOD) {
            msgpack_pack_true(&p->pk);
        } else {
            pack_form(&p->pk, r->fwd, 1);
        }
    }
}

static int decode_spec(const struct req_spec *r, struct wire_request *req,
                       char *msg)
{
    struct pack p;
    pack_init(&p);
    pack_request(&p, r);
    msgpack_unpacked u;
    pack_unpack(&p, &u);
    msg[0] = '\0';
    int rv = wire_request_decode(&u.data, req, msg);
    if (req->args != NULL) {
        /* args points into u: check it while u lives. */
        ck_assert(wire_str_eq(wire_map_get(req->args, "path"), "org/team"));
    }
    msgpack_unpacked_destroy(&u);
    pack_destroy(&p);
    return rv;
}

START_TEST(request_full)
{
    struct req_spec r = {F_GOOD, F_GOOD, F_GOOD, F_GOOD,
                         F_GOOD, F_GOOD, F_GOOD, "quota.set"};
    struct wire_request req;
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(decode_spec(&r, &req, msg), 0);
    ck_assert_uint_eq(req.id, 77);
    ck_assert_int_eq(req.op, WIRE_OP_QUOTA_SET);
    ck_assert_ptr_nonnull(req.args);
    ck_assert_uint_eq(req.client, 5);
    ck_assert_uint_eq(req.seq, 9);
    ck_assert_uint_eq(req.ack, 8);
    ck_assert(req.forwarded);
}
END_TEST

START_TEST(request_minimal)
{
    struct req_spec r = {.id = F_GOOD, .op = F_GOOD, .op_name = "ping"};
    struct wire_request req;
    char msg[ALLOT_ERRMSG_SIZE];
    memset(&req, 0xa5, sizeof req);
    ck_assert_int_eq(decode_spec(&r, &req, msg), 0);
    ck_assert_uint_eq(req.id, 77);
    ck_assert_int_eq(req.op, WIRE_OP_PING);
    ck_assert_ptr_null(req.args);
    ck_assert_uint_eq(req.client, 0);
    ck_assert_uint_eq(req.seq, 0);
    ck_assert_uint_eq(req.ack, 0);
    ck_assert(!req.forwarded);
    /* A write without a client id carries no dedup information: fine. */
    r.op_name = "quota.rm";
    ck_assert_int_eq(decode_spec(&r, &req, msg), 0);
    ck_assert_int_eq(req.op, WIRE_OP_QUOTA_RM);
}
END_TEST

/* Each bad field: EINVALID and a message naming that field. */
START_TEST(request_bad_fields)
{
    static const struct
    {
        struct req_spec r;
        const char *says[2];
        bool id_known;
    } cases[] = {
        {{.op = F_GOOD}, {"missing field id", NULL}, false},
        {{.id = F_GOOD}, {"missing field op", NULL}, true},
        {{.id = F_STR, .op = F_GOOD},
         {"field id", "non-negative integer"},
         false},
        {{.id = F_NEG, .op = F_GOOD},
         {"field id", "non-negative integer"},
         false},
        {{.id = F_FLOAT, .op = F_GOOD}, {"field id", NULL}, false},
        {{.id = F_GOOD, .op = F_BOOL}, {"field op", "string"}, true},
        {{.id = F_GOOD, .op = F_ARRAY}, {"field op", "string"}, true},
        {{.id = F_GOOD, .op = F_GOOD, .args = F_ARRAY},
         {"field args", "map"},
         true},
        {{.id = F_GOOD, .op = F_GOOD, .args = F_STR},
         {"field args", "map"},
         true},
        {{.id = F_GOOD, .op = F_GOOD, .client = F_STR},
         {"field client", "non-negative integer"},
         true},
        {{.id = F_GOOD, .op = F_GOOD, .client = F_NEG},
         {"field client", NULL},
         true},
        {{.id = F_GOOD, .op = F_GOOD, .client = F_GOOD, .seq = F_BOOL},
         {"field seq", NULL},
         true},
        {{.id = F_GOOD, .op = F_GOOD, .client = F_GOOD, .seq = F_FLOAT},
         {"field seq", NULL},
         true},
        {{.id = F_GOOD,
          .op = F_GOOD,
          .client = F_GOOD,
          .seq = F_GOOD,
          .ack = F_STR},
         {"field ack", NULL},
         true},
        {{.id = F_GOOD, .op = F_GOOD, .fwd = F_ZERO},
         {"field fwd", "boolean"},
         true},
        /* A write with a client needs a sequence number >= 1. */
        {{.id = F_GOOD, .op = F_GOOD, .client = F_GOOD, .seq = F_ZERO},
         {"seq", NULL},
         true},
        {{.id = F_GOOD, .op = F_GOOD, .client = F_GOOD}, {"seq", NULL}, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct wire_request req;
        char msg[ALLOT_ERRMSG_SIZE];
        int rv = decode_spec(&cases[i].r, &req, msg);
        ck_assert_msg(rv == ALLOT_EINVALID, "case %zu: got %d (%s)", i, rv,
                      msg);
        for (int j = 0; j < 2; j++) {
            if (cases[i].says[j] != NULL) {
                assert_has(msg, cases[i].says[j]);
            }
        }
        /* The reply to a bad request still carries its id when readable. */
        ck_assert_uint_eq(req.id, cases[i].id_known ? 77 : 0);
    }
}
END_TEST

START_TEST(request_unknown_op)
{
    struct req_spec r = {.id = F_GOOD, .op = F_GOOD, .op_name = "quota.nuke"};
    struct wire_request req;
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(decode_spec(&r, &req, msg), ALLOT_EINVALID);
    assert_has(msg, "unknown operation \"quota.nuke\"");
    ck_assert_uint_eq(req.id, 77);
    ck_assert_int_eq(req.op, WIRE_OP_UNKNOWN);

    /* A very long name is cut in the message, not overflowed. */
    char longop[1000];
    memset(longop, 'z', sizeof longop - 1);
    longop[sizeof longop - 1] = '\0';
    r.op_name = longop;
    ck_assert_int_eq(decode_spec(&r, &req, msg), ALLOT_EINVALID);
    ck_assert_uint_lt(strlen(msg), ALLOT_ERRMSG_SIZE);
    assert_has(msg, "unknown operation");
}
END_TEST

START_TEST(request_seq_zero_only_for_writes)
{
    /* Reads and admin operations ignore dedup fields. */
    const char *ops[] = {"quota.get", "quota.ls", "ping", "cluster.add"};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        struct req_spec r = {.id = F_GOOD,
                             .op = F_GOOD,
                             .client = F_GOOD,
                             .seq = F_ZERO,
                             .op_name = ops[i]};
        struct wire_request req;
        char msg[ALLOT_ERRMSG_SIZE];
        ck_assert_msg(decode_spec(&r, &req, msg) == 0, "%s: %s", ops[i], msg);
        ck_assert_uint_eq(req.client, 5);
    }
}
END_TEST

START_TEST(request_not_a_map)
{
    struct pack p;
    pack_init(&p);
    msgpack_pack_array(&p.pk, 2);
    wire_pack_str(&p.pk, "id");
    msgpack_pack_uint64(&p.pk, 1);
    msgpack_unpacked u;
    pack_unpack(&p, &u);
    struct wire_request req;
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_int_eq(wire_request_decode(&u.data, &req, msg), ALLOT_EINVALID);
    assert_has(msg, "map");
    msgpack_unpacked_destroy(&u);
    pack_destroy(&p);
}
END_TEST

/* --- Reply envelopes --- */

START_TEST(reply_round_trip)
{
    /* Every code survives the trip through its wire name. */
    for (int code = -1; code >= ALLOT_EMIN; code--) {
        struct pack p;
        pack_init(&p);
        wire_pack_error(&p.pk, 12, code, "quota x is at version 3, not 2");
        msgpack_unpacked u;
        pack_unpack(&p, &u);
        struct wire_reply rep;
        char msg[ALLOT_ERRMSG_SIZE] = "";
        ck_assert_int_eq(wire_reply_decode(&u.data, &rep, msg), 0);
        ck_assert_uint_eq(rep.id, 12);
        ck_assert_int_eq(rep.code, code);
        ck_assert_ptr_null(rep.result);
        ck_assert_uint_eq(rep.message_len, 30);
        ck_assert_mem_eq(rep.message, "quota x is at version 3, not 2", 30);
        msgpack_unpacked_destroy(&u);
        pack_destroy(&p);
    }
    /* No message: the default one for the code travels instead. */
    struct pack p;
    pack_init(&p);
    wire_pack_error(&p.pk, 1, ALLOT_ECONFLICT, NULL);
    msgpack_unpacked u;
    pack_unpack(&p, &u);
    struct wire_reply rep;
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_int_eq(wire_reply_decode(&u.data, &rep, msg), 0);
    ck_assert_int_eq(rep.code, ALLOT_ECONFLICT);
    ck_assert_uint_eq(rep.message_len, strlen("version conflict"));
    ck_assert_mem_eq(rep.message, "version conflict", rep.message_len);
    msgpack_unpacked_destroy(&u);
    pack_destroy(&p);
}
END_TEST

static int decode_reply_bytes(struct pack *p, struct wire_reply *rep)
{
    msgpack_unpacked u;
    pack_unpack(p, &u);
    char msg[ALLOT_ERRMSG_SIZE] = "";
    int rv = wire_reply_decode(&u.data, rep, msg);
    msgpack_unpacked_destroy(&u);
    pack_destroy(p);
    pack_init(p);
    return rv;
}

START_TEST(reply_errors)
{
    struct pack p;
    struct wire_reply rep;
    pack_init(&p);

    /* Unknown error name: our bug or a newer server, never "ok". */
    msgpack_pack_map(&p.pk, 3);
    wire_pack_kv_u64(&p.pk, "id", 1);
    wire_pack_str(&p.pk, "ok");
    msgpack_pack_false(&p.pk);
    wire_pack_kv_str(&p.pk, "error", "bogus_code");
    ck_assert_int_eq(decode_reply_bytes(&p, &rep), 0);
    ck_assert_int_eq(rep.code, ALLOT_EINTERNAL);
    ck_assert_ptr_null(rep.message);

    /* Missing id. */
    msgpack_pack_map(&p.pk, 1);
    wire_pack_str(&p.pk, "ok");
    msgpack_pack_true(&p.pk);
    ck_assert_int_eq(decode_reply_bytes(&p, &rep), ALLOT_EPROTOCOL);

    /* ok is not a boolean. */
    msgpack_pack_map(&p.pk, 2);
    wire_pack_kv_u64(&p.pk, "id", 1);
    wire_pack_kv_u64(&p.pk, "ok", 1);
    ck_assert_int_eq(decode_reply_bytes(&p, &rep), ALLOT_EPROTOCOL);

    /* ok missing. */
    msgpack_pack_map(&p.pk, 1);
    wire_pack_kv_u64(&p.pk, "id", 1);
    ck_assert_int_eq(decode_reply_bytes(&p, &rep), ALLOT_EPROTOCOL);

    /* An error reply without its code. */
    msgpack_pack_map(&p.pk, 2);
    wire_pack_kv_u64(&p.pk, "id", 1);
    wire_pack_str(&p.pk, "ok");
    msgpack_pack_false(&p.pk);
    ck_assert_int_eq(decode_reply_bytes(&p, &rep), ALLOT_EPROTOCOL);

    /* A message that is not a string. */
    msgpack_pack_map(&p.pk, 4);
    wire_pack_kv_u64(&p.pk, "id", 1);
    wire_pack_str(&p.pk, "ok");
    msgpack_pack_false(&p.pk);
    wire_pack_kv_str(&p.pk, "error", "conflict");
    wire_pack_kv_u64(&p.pk, "message", 3);
    ck_assert_int_eq(decode_reply_bytes(&p, &rep), ALLOT_EPROTOCOL);

    /* Not a map. */
    msgpack_pack_uint64(&p.pk, 1);
    ck_assert_int_eq(decode_reply_bytes(&p, &rep), ALLOT_EPROTOCOL);

    /* ok without a result: allowed, result NULL. */
    msgpack_pack_map(&p.pk, 2);
    wire_pack_kv_u64(&p.pk, "id", 3);
    wire_pack_str(&p.pk, "ok");
    msgpack_pack_true(&p.pk);
    ck_assert_int_eq(decode_reply_bytes(&p, &rep), 0);
    ck_assert_uint_eq(rep.id, 3);
    ck_assert_int_eq(rep.code, 0);
    ck_assert_ptr_null(rep.result);
    pack_destroy(&p);
}
END_TEST

/* --- Error table --- */

static const struct
{
    int code;
    const char *name;
    const char *message;
} error_map[] = {
#define ENTRY(suffix, value, wire, msg) {ALLOT_E##suffix, wire, msg},
    ALLOT_ERROR_MAP(ENTRY)
#undef ENTRY
};
#define N_ERRORS (sizeof error_map / sizeof error_map[0])

START_TEST(error_table_round_trip)
{
    /* Dense from -1 to ALLOT_EMIN, every one named. */
    ck_assert_int_eq((int)N_ERRORS, -ALLOT_EMIN);
    for (size_t i = 0; i < N_ERRORS; i++) {
        int code = error_map[i].code;
        ck_assert_int_eq(code, -(int)i - 1);
        const char *name = allot_error_name(code);
        ck_assert_str_eq(name, error_map[i].name);
        ck_assert_int_eq(allot_error_from_name(name, strlen(name)), code);
        ck_assert_str_eq(allot_strerror(code), error_map[i].message);
        ck_assert_str_ne(allot_strerror(code), "unknown error");
        /* Names are unique. */
        for (size_t j = 0; j < i; j++) {
            ck_assert_str_ne(error_map[j].name, name);
        }
    }
    /* The codes the CLI contract lists by name. */
    const char *contract[] = {
        "invalid",     "not_found",         "exists",
        "conflict",    "permission_denied", "unauthenticated",
        "unavailable", "validation_failed", "timeout"};
    for (size_t i = 0; i < sizeof contract / sizeof contract[0]; i++) {
        int code = allot_error_from_name(contract[i], strlen(contract[i]));
        ck_assert_str_eq(allot_error_name(code), contract[i]);
        ck_assert_int_ne(code, ALLOT_EINTERNAL);
    }
}
END_TEST

START_TEST(error_table_unknown)
{
    ck_assert_str_eq(allot_strerror(0), "ok");
    ck_assert_str_eq(allot_error_name(0), "ok");
    ck_assert_str_eq(allot_strerror(1), "unknown error");
    ck_assert_str_eq(allot_strerror(ALLOT_EMIN - 1), "unknown error");
    ck_assert_str_eq(allot_strerror(-1000000), "unknown error");
    ck_assert_str_eq(allot_error_name(ALLOT_EMIN - 1), "internal");
    ck_assert_str_eq(allot_error_name(42), "internal");
    ck_assert_int_eq(allot_error_from_name("bogus", 5), ALLOT_EINTERNAL);
    ck_assert_int_eq(allot_error_from_name("", 0), ALLOT_EINTERNAL);
    ck_assert_int_eq(allot_error_from_name("ok", 2), ALLOT_EINTERNAL);
    /* Length, not NUL, delimits the name. */
    ck_assert_int_eq(allot_error_from_name("conflict", 7), ALLOT_EINTERNAL);
    ck_assert_int_eq(allot_error_from_name("conflicts", 9), ALLOT_EINTERNAL);
    ck_assert_int_eq(allot_error_from_name("conflicts", 8), ALLOT_ECONFLICT);
    ck_assert_int_eq(allot_error_from_name("CONFLICT", 8), ALLOT_EINTERNAL);
}
END_TEST

START_TEST(error_errf)
{
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(allot_errf(msg, ALLOT_ECONFLICT, "at %d, not %d", 3, 2),
                     ALLOT_ECONFLICT);
    ck_assert_str_eq(msg, "at 3, not 2");
    ck_assert_int_eq(allot_errf(NULL, ALLOT_EIO, "ignored %s", "x"), ALLOT_EIO);
    /* A long message is cut to the buffer, NUL-terminated. */
    char big[1000];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char guarded[ALLOT_ERRMSG_SIZE + 16];
    memset(guarded, 'G', sizeof guarded);
    allot_errf(guarded, ALLOT_EINVALID, "%s", big);
    ck_assert_uint_eq(strlen(guarded), ALLOT_ERRMSG_SIZE - 1);
    for (size_t i = ALLOT_ERRMSG_SIZE; i < sizeof guarded; i++) {
        ck_assert_int_eq(guarded[i], 'G');
    }
}
END_TEST

/* --- Suite --- */

static Suite *wire_suite(void)
{
    Suite *s = suite_create("wire");

    TCase *tc = tcase_create("frame");
    tcase_add_test(tc, frame_complete);
    tcase_add_test(tc, frame_incomplete);
    tcase_add_test(tc, frame_too_big);
    tcase_add_test(tc, frame_max_accepted);
    tcase_add_test(tc, frame_zero_length);
    tcase_add_test(tc, frame_header_big_endian);
    tcase_add_test(tc, frame_build_round_trip);
    tcase_add_test(tc, frame_finish_too_big);
    suite_add_tcase(s, tc);

    tc = tcase_create("rbuf");
    tcase_add_loop_test(tc, rbuf_split_reads, 0, (int)N_CHUNK_SIZES);
    tcase_add_test(tc, rbuf_compacts);
    tcase_add_test(tc, rbuf_too_big);
    tcase_add_test(tc, rbuf_next_on_empty);
    suite_add_tcase(s, tc);

    tc = tcase_create("check");
    tcase_add_loop_test(tc, check_accepts_type, 0, (int)N_TYPE_CASES);
    tcase_add_loop_test(tc, check_refuses_truncation, 0, (int)N_TYPE_CASES);
    tcase_add_test(tc, check_everything_every_cut);
    tcase_add_test(tc, check_refuses_reserved_c1);
    tcase_add_test(tc, check_refuses_lying_containers);
    tcase_add_test(tc, check_depth_limit);
    tcase_add_test(tc, check_trailing_bytes);
    tcase_add_test(tc, check_prefix_sequence);
    suite_add_tcase(s, tc);

    tc = tcase_create("envelope");
    tcase_add_test(tc, getters);
    tcase_add_test(tc, op_table);
    tcase_add_test(tc, request_full);
    tcase_add_test(tc, request_minimal);
    tcase_add_test(tc, request_bad_fields);
    tcase_add_test(tc, request_unknown_op);
    tcase_add_test(tc, request_seq_zero_only_for_writes);
    tcase_add_test(tc, request_not_a_map);
    tcase_add_test(tc, reply_round_trip);
    tcase_add_test(tc, reply_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("error");
    tcase_add_test(tc, error_table_round_trip);
    tcase_add_test(tc, error_table_unknown);
    tcase_add_test(tc, error_errf);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    memset(filler, 'f', sizeof filler);
    SRunner *sr = srunner_create(wire_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
