/* test_badinput.c - hostile bytes on a node's client port change nothing.
 *
 * Against a live 3-node cluster, over raw TCP to one node (a follower in
 * one run, the leader in the other):
 *   - framing: a truncated frame then close; a header announcing 2 GiB or
 *     1 MiB + 1 (the server closes the connection); exactly 1 MiB (served);
 *     a request sent one byte at a time; 100 requests in one write;
 *   - bodies that are not one msgpack map: garbage, empty, truncated,
 *     trailing bytes, containers announcing 2^32-1 elements (0xdd ff ff ff
 *     ff) at the root or inside a request, scalars and arrays at the root,
 *     nesting 17 deep (16 is still accepted);
 *   - envelopes and arguments: unknown ops, wrong types for id, op, args,
 *     client, seq, fwd and every kind of quota field, missing required
 *     fields, values out of range;
 *   - 1000 frames of seeded random bytes, 1000 mutated valid requests, and
 *     64 KiB of unframed random bytes; 100 connections left half-written.
 * Each malformed request must get exactly one error reply with the right
 * code and id (0 when the id could not be read), after which the same
 * connection still answers a ping. Afterwards: the node answers ping and
 * quota.get, every node's catalog_version and digest are what they were,
 * every node runs with the same PID, and SIGTERM stops each with status 0.
 *
 * ALLOT_ITEST_SEED overrides the random seed (printed either way). */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"
#include "wire.h"

#define PING_ID     999999u
#define SEEDED_PATH "seeded"

static unsigned g_target;   /* node the garbage goes to */
static bool g_target_leads; /* it is the leader (not a follower) */

/* --- Seeded PRNG (splitmix64) --------------------------------------------- */

static uint64_t g_rng;

static uint64_t rng_next(void)
{
    uint64_t z = (g_rng += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static size_t rng_below(size_t n)
{
    return (size_t)(rng_next() % n);
}

/* --- Building frames ------------------------------------------------------ */

static void frame_begin(msgpack_sbuffer *sb, msgpack_packer *pk)
{
    msgpack_sbuffer_init(sb);
    wire_frame_start(sb, pk);
}

static void frame_finish(msgpack_sbuffer *sb)
{
    ck_assert_int_eq(wire_frame_finish(sb), 0);
}

/* A frame whose body is the given bytes (the header is always right). */
static void frame_raw(msgpack_sbuffer *sb, const void *body, size_t len)
{
    char hdr[WIRE_HEADER_LEN];
    msgpack_sbuffer_init(sb);
    wire_frame_header(hdr, (uint32_t)len);
    msgpack_sbuffer_write(sb, hdr, sizeof hdr);
    msgpack_sbuffer_write(sb, body, len);
}

static void key(msgpack_packer *pk, const char *k)
{
    wire_pack_str(pk, k);
}

/* Appends a ping with id PING_ID to sb. */
static void append_ping(msgpack_sbuffer *sb, uint64_t id)
{
    msgpack_sbuffer p;
    msgpack_packer pk;
    frame_begin(&p, &pk);
    msgpack_pack_map(&pk, 2);
    wire_pack_kv_u64(&pk, "id", id);
    wire_pack_kv_str(&pk, "op", "ping");
    frame_finish(&p);
    msgpack_sbuffer_write(sb, p.data, p.size);
    msgpack_sbuffer_destroy(&p);
}

/* --- Expectations --------------------------------------------------------- */

static bool code_in(const char *code, const char *codes)
{
    size_t n = strlen(code);
    for (const char *p = codes; p != NULL && *p != '\0';) {
        const char *bar = strchr(p, '|');
        size_t len = bar != NULL ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, code, n) == 0) {
            return true;
        }
        p = bar != NULL ? bar + 1 : NULL;
    }
    return false;
}

static void assert_ping_reply(const struct harness_reply *rep, uint64_t id,
                              const char *label)
{
    ck_assert_msg(rep->ok, "%s: ping after it failed: %s: %s", label,
                  rep->error, rep->message);
    ck_assert_msg(rep->id == id, "%s: ping reply has id %" PRIu64, label,
                  rep->id);
}

/* Send frame then a ping on a new connection. The frame must get exactly
 * one reply: an error with a code in `codes` ('|'-separated) or, with
 * codes NULL, a success; carrying `id`. The ping must be answered too.
 * Replies are matched by id: a ping is answered at once, a read only after
 * a barrier or a round trip to the leader. */
static void expect_reply(const char *label, const msgpack_sbuffer *frame,
                         const char *codes, uint64_t id)
{
    int fd = harness_raw_connect(g_target);
    ck_assert_msg(fd >= 0, "%s: cannot connect", label);
    msgpack_sbuffer both;
    msgpack_sbuffer_init(&both);
    msgpack_sbuffer_write(&both, frame->data, frame->size);
    append_ping(&both, PING_ID);
    ck_assert_msg(harness_raw_send(fd, both.data, both.size) == 0,
                  "%s: send failed", label);
    msgpack_sbuffer_destroy(&both);

    bool got_case = false, got_ping = false;
    for (int k = 0; k < 2; k++) {
        struct harness_reply rep;
        int rv = harness_raw_recv(fd, HARNESS_IO_WAIT_MS, &rep);
        ck_assert_msg(rv == 1, "%s: %s reply (%s)", label,
                      k == 0 ? "no" : "only one",
                      rv == 0    ? "connection closed"
                      : rv == -1 ? "timeout"
                                 : "bad frame");
        if (rep.id == PING_ID && !got_ping) {
            assert_ping_reply(&rep, PING_ID, label);
            got_ping = true;
            harness_reply_destroy(&rep);
            continue;
        }
        ck_assert_msg(
            !got_case && rep.id == id,
            "%s: unexpected reply id %" PRIu64 " (%s %s), want %" PRIu64, label,
            rep.id, rep.ok ? "ok" : rep.error, rep.message, id);
        got_case = true;
        if (codes != NULL) {
            ck_assert_msg(!rep.ok, "%s: accepted, want error %s", label, codes);
            ck_assert_msg(code_in(rep.error, codes),
                          "%s: error %s (%s), want %s", label, rep.error,
                          rep.message, codes);
            ck_assert_msg(rep.message[0] != '\0', "%s: empty error message",
                          label);
        } else {
            ck_assert_msg(rep.ok, "%s: error %s: %s", label, rep.error,
                          rep.message);
        }
        harness_log("  %-44s -> %s%s%s", label, rep.ok ? "ok" : rep.error,
                    rep.ok ? "" : ": ", rep.ok ? "" : rep.message);
        harness_reply_destroy(&rep);
    }
    close(fd);
}

/* Send bytes on a new connection; the server must close it. */
static void expect_close(const char *label, const void *bytes, size_t len)
{
    int fd = harness_raw_connect(g_target);
    ck_assert_msg(fd >= 0, "%s: cannot connect", label);
    /* The server may close before it has read everything: a failed send
     * is expected then. */
    (void)harness_raw_send(fd, bytes, len);
    double t = harness_now();
    ck_assert_msg(harness_raw_wait_closed(fd, HARNESS_IO_WAIT_MS) == 1,
                  "%s: the server kept the connection open", label);
    harness_log("  %-44s -> closed by the server after %.3f s", label,
                harness_now() - t);
    close(fd);
}

/* --- Cases: bodies -------------------------------------------------------- */

struct raw_case
{
    const char *label;
    const char *bytes;
    size_t len;
    const char *codes;
};

#define RAW(label, lit, codes)            \
    {                                     \
        label, lit, sizeof lit - 1, codes \
    }

static const struct raw_case raw_cases[] = {
    RAW("empty body", "", "protocol"),
    RAW("reserved type 0xc1", "\xc1", "protocol"),
    RAW("text", "hello, allot!", "protocol"),
    RAW("truncated map", "\x83\xa2id", "protocol"),
    RAW("truncated str8",
        "\xd9\x20"
        "abc",
        "protocol"),
    RAW("array32 of 2^32-1 at the root", "\xdd\xff\xff\xff\xff", "protocol"),
    RAW("map32 of 2^32-1 at the root", "\xdf\xff\xff\xff\xff", "protocol"),
    RAW("str32 of 2^32-1", "\xdb\xff\xff\xff\xff", "protocol"),
    RAW("bin32 of 2^32-1", "\xc6\xff\xff\xff\xff", "protocol"),
    RAW("ext32 of 2^32-1", "\xc9\xff\xff\xff\xff\x01", "protocol"),
    RAW("map16 of 65535 with 2 bytes", "\xde\xff\xff\x01\x02", "protocol"),
    /* Well-formed msgpack that is not a map: refused as a request. */
    RAW("array at the root", "\x93\x01\x02\x03", "invalid|protocol"),
    RAW("string at the root", "\xa4ping", "invalid|protocol"),
    RAW("integer at the root", "\x07", "invalid|protocol"),
    RAW("nil at the root", "\xc0", "invalid|protocol"),
    RAW("true at the root", "\xc3", "invalid|protocol"),
    RAW("float64 at the root", "\xcb\x40\x09\x21\xfb\x54\x44\x2d\x18",
        "invalid|protocol"),
    RAW("bin at the root",
        "\xc4\x03"
        "abc",
        "invalid|protocol"),
    RAW("fixext at the root", "\xd4\x01\x00", "invalid|protocol"),
    RAW("empty map", "\x80", "invalid"),
};

/* --- Cases: envelopes and arguments --------------------------------------- */

typedef void (*pack_fn)(msgpack_packer *pk);

struct req_case
{
    const char *label;
    pack_fn pack;
    const char *codes; /* NULL: must succeed */
    uint64_t id;       /* the reply's id */
};

/* {"id": id, "op": op, "args": {...}} with args packed by the caller:
 * the helpers below open the envelope and leave `args` to fill. */
static void env(msgpack_packer *pk, uint64_t id, const char *op,
                uint32_t n_args)
{
    msgpack_pack_map(pk, 3);
    wire_pack_kv_u64(pk, "id", id);
    wire_pack_kv_str(pk, "op", op);
    key(pk, "args");
    msgpack_pack_map(pk, n_args);
}

/* quota.set {"path": "ghost", "fields": {...}} with `n` field entries. */
static void set_env(msgpack_packer *pk, uint64_t id, uint32_t n)
{
    env(pk, id, "quota.set", 2);
    wire_pack_kv_str(pk, "path", "ghost");
    key(pk, "fields");
    msgpack_pack_map(pk, n);
}

static void c_unknown_op(msgpack_packer *pk)
{
    env(pk, 101, "quota.destroy", 0);
}
static void c_empty_op(msgpack_packer *pk)
{
    env(pk, 102, "", 0);
}
static void c_long_op(msgpack_packer *pk)
{
    char op[301];
    memset(op, 'x', 300);
    op[300] = '\0';
    env(pk, 103, op, 0);
}
static void c_op_case(msgpack_packer *pk)
{
    env(pk, 104, "PING", 0);
}
static void c_id_str(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    wire_pack_kv_str(pk, "id", "7");
    wire_pack_kv_str(pk, "op", "ping");
}
static void c_id_neg(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    key(pk, "id");
    msgpack_pack_int64(pk, -1);
    wire_pack_kv_str(pk, "op", "ping");
}
static void c_id_float(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    key(pk, "id");
    msgpack_pack_double(pk, 1.5);
    wire_pack_kv_str(pk, "op", "ping");
}
static void c_id_nil(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    key(pk, "id");
    msgpack_pack_nil(pk);
    wire_pack_kv_str(pk, "op", "ping");
}
static void c_id_map(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    key(pk, "id");
    msgpack_pack_map(pk, 0);
    wire_pack_kv_str(pk, "op", "ping");
}
static void c_op_int(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    wire_pack_kv_u64(pk, "id", 105);
    wire_pack_kv_u64(pk, "op", 1);
}
static void c_op_nil(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    wire_pack_kv_u64(pk, "id", 106);
    key(pk, "op");
    msgpack_pack_nil(pk);
}
static void c_op_bin(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    wire_pack_kv_u64(pk, "id", 107);
    key(pk, "op");
    msgpack_pack_bin(pk, 4);
    msgpack_pack_bin_body(pk, "ping", 4);
}
static void c_args_array(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 3);
    wire_pack_kv_u64(pk, "id", 108);
    wire_pack_kv_str(pk, "op", "quota.get");
    key(pk, "args");
    msgpack_pack_array(pk, 1);
    wire_pack_str(pk, SEEDED_PATH);
}
static void c_args_str(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 3);
    wire_pack_kv_u64(pk, "id", 109);
    wire_pack_kv_str(pk, "op", "quota.get");
    wire_pack_kv_str(pk, "args", SEEDED_PATH);
}
static void c_args_nil(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 3);
    wire_pack_kv_u64(pk, "id", 110);
    wire_pack_kv_str(pk, "op", "ping");
    key(pk, "args");
    msgpack_pack_nil(pk);
}
/* A complete, valid quota.set of "ghost" plus the extra envelope fields
 * given; used to show that a bad dedup field stops the write. */
static void write_with(msgpack_packer *pk, uint64_t id, uint32_t extra)
{
    msgpack_pack_map(pk, 3 + extra);
    wire_pack_kv_u64(pk, "id", id);
    wire_pack_kv_str(pk, "op", "quota.set");
    key(pk, "args");
    msgpack_pack_map(pk, 2);
    wire_pack_kv_str(pk, "path", "ghost");
    key(pk, "fields");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "kind", "capacity");
}
static void c_client_str(msgpack_packer *pk)
{
    write_with(pk, 111, 2);
    wire_pack_kv_str(pk, "client", "me");
    wire_pack_kv_u64(pk, "seq", 1);
}
static void c_seq_str(msgpack_packer *pk)
{
    write_with(pk, 112, 2);
    wire_pack_kv_u64(pk, "client", 42);
    wire_pack_kv_str(pk, "seq", "1");
}
static void c_seq_zero(msgpack_packer *pk)
{
    write_with(pk, 113, 2);
    wire_pack_kv_u64(pk, "client", 42);
    wire_pack_kv_u64(pk, "seq", 0);
}
static void c_ack_neg(msgpack_packer *pk)
{
    write_with(pk, 114, 3);
    wire_pack_kv_u64(pk, "client", 42);
    wire_pack_kv_u64(pk, "seq", 1);
    key(pk, "ack");
    msgpack_pack_int64(pk, -3);
}
static void c_fwd_int(msgpack_packer *pk)
{
    write_with(pk, 115, 1);
    wire_pack_kv_u64(pk, "fwd", 1);
}
static void c_path_int(msgpack_packer *pk)
{
    env(pk, 120, "quota.set", 2);
    wire_pack_kv_u64(pk, "path", 5);
    key(pk, "fields");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "kind", "capacity");
}
static void path_case(msgpack_packer *pk, uint64_t id, const char *path)
{
    env(pk, id, "quota.set", 2);
    wire_pack_kv_str(pk, "path", path);
    key(pk, "fields");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "kind", "capacity");
}
static void c_path_empty(msgpack_packer *pk)
{
    path_case(pk, 121, "");
}
static void c_path_dots(msgpack_packer *pk)
{
    path_case(pk, 122, "../etc/passwd");
}
static void c_path_long(msgpack_packer *pk)
{
    char p[700];
    memset(p, 'a', sizeof p - 1);
    p[sizeof p - 1] = '\0';
    path_case(pk, 123, p);
}
static void c_path_deep(msgpack_packer *pk)
{
    path_case(pk, 124, "a/b/c/d/e/f/g/h/i");
}
static void c_path_slash(msgpack_packer *pk)
{
    path_case(pk, 125, "a//b");
}
static void c_path_nul(msgpack_packer *pk)
{
    env(pk, 126, "quota.set", 2);
    key(pk, "path");
    wire_pack_strn(pk, "a\0b", 3);
    key(pk, "fields");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "kind", "capacity");
}
static void c_fields_str(msgpack_packer *pk)
{
    env(pk, 127, "quota.set", 2);
    wire_pack_kv_str(pk, "path", "ghost");
    wire_pack_kv_str(pk, "fields", "kind=capacity");
}
static void c_fields_nil(msgpack_packer *pk)
{
    env(pk, 128, "quota.set", 2);
    wire_pack_kv_str(pk, "path", "ghost");
    key(pk, "fields");
    msgpack_pack_nil(pk);
}
static void c_fields_empty(msgpack_packer *pk)
{
    set_env(pk, 129, 0);
}
static void c_group_int(msgpack_packer *pk)
{
    set_env(pk, 130, 1);
    wire_pack_kv_u64(pk, "guaranteed", 5);
}
static void c_mem_str(msgpack_packer *pk)
{
    set_env(pk, 131, 1);
    key(pk, "guaranteed");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "memory_mb", "lots");
}
static void c_mem_neg(msgpack_packer *pk)
{
    set_env(pk, 132, 1);
    key(pk, "max");
    msgpack_pack_map(pk, 1);
    key(pk, "memory_mb");
    msgpack_pack_int64(pk, -5);
}
static void c_mem_float(msgpack_packer *pk)
{
    set_env(pk, 133, 1);
    key(pk, "max");
    msgpack_pack_map(pk, 1);
    key(pk, "vcores");
    msgpack_pack_double(pk, 1.5);
}
static void c_rate_str(msgpack_packer *pk)
{
    set_env(pk, 134, 1);
    wire_pack_kv_str(pk, "rate", "fast");
}
static void c_rate_neg(msgpack_packer *pk)
{
    set_env(pk, 135, 1);
    key(pk, "rate");
    msgpack_pack_double(pk, -1.0);
}
static void c_rate_nan(msgpack_packer *pk)
{
    set_env(pk, 136, 1);
    key(pk, "rate");
    msgpack_pack_double(pk, __builtin_nan(""));
}
static void c_rate_inf(msgpack_packer *pk)
{
    set_env(pk, 137, 1);
    key(pk, "rate");
    msgpack_pack_double(pk, __builtin_inf());
}
static void c_kind_bogus(msgpack_packer *pk)
{
    set_env(pk, 138, 1);
    wire_pack_kv_str(pk, "kind", "bogus");
}
static void c_kind_int(msgpack_packer *pk)
{
    set_env(pk, 139, 1);
    wire_pack_kv_u64(pk, "kind", 1);
}
static void c_field_unknown(msgpack_packer *pk)
{
    set_env(pk, 140, 2);
    wire_pack_kv_str(pk, "kind", "capacity");
    wire_pack_kv_str(pk, "color", "blue");
}
static void c_field_key_int(msgpack_packer *pk)
{
    set_env(pk, 141, 1);
    msgpack_pack_uint64(pk, 1);
    msgpack_pack_uint64(pk, 2);
}
static void c_kinds_mixed(msgpack_packer *pk)
{
    set_env(pk, 142, 2);
    wire_pack_kv_u64(pk, "max_apps", 3);
    wire_pack_kv_u64(pk, "burst", 3);
}
static void c_kind_mismatch(msgpack_packer *pk)
{
    set_env(pk, 143, 2);
    wire_pack_kv_str(pk, "kind", "rate");
    wire_pack_kv_u64(pk, "max_apps", 3);
}
static void c_per_key_str(msgpack_packer *pk)
{
    set_env(pk, 144, 1);
    wire_pack_kv_str(pk, "per_key", "yes");
}
static void c_fleet_bad(msgpack_packer *pk)
{
    set_env(pk, 145, 1);
    wire_pack_kv_str(pk, "fleet", "bad name!");
}
static void c_unit_bogus(msgpack_packer *pk)
{
    set_env(pk, 146, 1);
    wire_pack_kv_str(pk, "unit", "parsecs");
}
static void c_if_version_str(msgpack_packer *pk)
{
    env(pk, 147, "quota.set", 3);
    wire_pack_kv_str(pk, "path", SEEDED_PATH);
    key(pk, "fields");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "max_apps", 9);
    wire_pack_kv_str(pk, "if_version", "1");
}
static void c_if_version_neg(msgpack_packer *pk)
{
    env(pk, 148, "quota.rm", 2);
    wire_pack_kv_str(pk, "path", SEEDED_PATH);
    key(pk, "if_version");
    msgpack_pack_int64(pk, -1);
}
static void c_get_path_int(msgpack_packer *pk)
{
    env(pk, 150, "quota.get", 1);
    wire_pack_kv_u64(pk, "path", 1);
}
static void c_get_path_nil(msgpack_packer *pk)
{
    env(pk, 151, "quota.get", 1);
    key(pk, "path");
    msgpack_pack_nil(pk);
}
static void c_rm_path_array(msgpack_packer *pk)
{
    env(pk, 152, "quota.rm", 1);
    key(pk, "path");
    msgpack_pack_array(pk, 1);
    wire_pack_str(pk, SEEDED_PATH);
}
static void c_ls_prefix_int(msgpack_packer *pk)
{
    env(pk, 153, "quota.ls", 1);
    wire_pack_kv_u64(pk, "prefix", 1);
}
static void c_ls_limit_zero(msgpack_packer *pk)
{
    env(pk, 154, "quota.ls", 1);
    wire_pack_kv_u64(pk, "limit", 0);
}
static void c_ls_limit_big(msgpack_packer *pk)
{
    env(pk, 155, "quota.ls", 1);
    wire_pack_kv_u64(pk, "limit", UINT64_MAX);
}
static void c_ls_limit_str(msgpack_packer *pk)
{
    env(pk, 156, "quota.ls", 1);
    wire_pack_kv_str(pk, "limit", "10");
}
static void c_ls_after_int(msgpack_packer *pk)
{
    env(pk, 157, "quota.ls", 1);
    wire_pack_kv_u64(pk, "after", 3);
}
static void c_ls_after_long(msgpack_packer *pk)
{
    char a[2001];
    memset(a, 'z', sizeof a - 1);
    a[sizeof a - 1] = '\0';
    env(pk, 158, "quota.ls", 1);
    wire_pack_kv_str(pk, "after", a);
}
static void c_status_digest_str(msgpack_packer *pk)
{
    env(pk, 160, "cluster.status", 1);
    wire_pack_kv_str(pk, "digest", "yes");
}
static void c_add_id_zero(msgpack_packer *pk)
{
    env(pk, 161, "cluster.add", 2);
    wire_pack_kv_u64(pk, "id", 0);
    wire_pack_kv_str(pk, "raft_addr", "127.0.0.1:1");
}
static void c_add_id_str(msgpack_packer *pk)
{
    env(pk, 162, "cluster.add", 2);
    wire_pack_kv_str(pk, "id", "9");
    wire_pack_kv_str(pk, "raft_addr", "127.0.0.1:1");
}
static void c_add_addr_int(msgpack_packer *pk)
{
    env(pk, 163, "cluster.add", 2);
    wire_pack_kv_u64(pk, "id", 9);
    wire_pack_kv_u64(pk, "raft_addr", 80);
}
static void c_add_addr_bad(msgpack_packer *pk)
{
    env(pk, 164, "cluster.add", 2);
    wire_pack_kv_u64(pk, "id", 9);
    wire_pack_kv_str(pk, "raft_addr", "nowhere");
}
static void c_add_addr_long(msgpack_packer *pk)
{
    char a[200];
    memset(a, '1', sizeof a - 1);
    a[sizeof a - 1] = '\0';
    env(pk, 165, "cluster.add", 2);
    wire_pack_kv_u64(pk, "id", 9);
    wire_pack_kv_str(pk, "raft_addr", a);
}
static void c_remove_id_str(msgpack_packer *pk)
{
    env(pk, 166, "cluster.remove", 1);
    wire_pack_kv_str(pk, "id", "2");
}
static void c_remove_id_zero(msgpack_packer *pk)
{
    env(pk, 167, "cluster.remove", 1);
    wire_pack_kv_u64(pk, "id", 0);
}
static void c_transfer_id_str(msgpack_packer *pk)
{
    env(pk, 168, "cluster.transfer", 1);
    wire_pack_kv_str(pk, "id", "1");
}
/* Missing required fields. */
static void c_no_id(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "op", "ping");
}
static void c_no_op(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "id", 170);
}
static void c_set_no_path(msgpack_packer *pk)
{
    env(pk, 171, "quota.set", 1);
    key(pk, "fields");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "kind", "capacity");
}
static void c_set_no_fields(msgpack_packer *pk)
{
    env(pk, 172, "quota.set", 1);
    wire_pack_kv_str(pk, "path", "ghost");
}
static void c_set_no_args(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    wire_pack_kv_u64(pk, "id", 173);
    wire_pack_kv_str(pk, "op", "quota.set");
}
static void c_get_no_args(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    wire_pack_kv_u64(pk, "id", 174);
    wire_pack_kv_str(pk, "op", "quota.get");
}
static void c_rm_no_path(msgpack_packer *pk)
{
    env(pk, 175, "quota.rm", 1);
    wire_pack_kv_u64(pk, "if_version", 1);
}
static void c_add_no_addr(msgpack_packer *pk)
{
    env(pk, 176, "cluster.add", 1);
    wire_pack_kv_u64(pk, "id", 9);
}
static void c_add_no_args(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    wire_pack_kv_u64(pk, "id", 177);
    wire_pack_kv_str(pk, "op", "cluster.add");
}
static void c_remove_no_args(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    wire_pack_kv_u64(pk, "id", 178);
    wire_pack_kv_str(pk, "op", "cluster.remove");
}

/* Nesting: the request map is level 1, args level 2, then `extra` more
 * levels of single-entry maps around a leaf. */
static void nested_ping(msgpack_packer *pk, uint64_t id, unsigned extra)
{
    msgpack_pack_map(pk, 3);
    wire_pack_kv_u64(pk, "id", id);
    wire_pack_kv_str(pk, "op", "ping");
    key(pk, "args");
    msgpack_pack_map(pk, 1);
    for (unsigned i = 0; i < extra; i++) {
        key(pk, "n");
        msgpack_pack_map(pk, 1);
    }
    key(pk, "leaf");
    msgpack_pack_uint64(pk, 1);
}
static void c_depth_16(msgpack_packer *pk)
{
    nested_ping(pk, 180, 14); /* 2 + 14 = 16 levels: accepted */
}
static void c_depth_17(msgpack_packer *pk)
{
    nested_ping(pk, 181, 15); /* 17 levels: refused */
}
static void c_depth_17_array(msgpack_packer *pk)
{
    /* request, args, then 15 nested arrays = 17 */
    env(pk, 182, "ping", 1);
    key(pk, "a");
    for (unsigned i = 0; i < 15; i++) {
        msgpack_pack_array(pk, 1);
    }
    msgpack_pack_uint64(pk, 1);
}
static void c_depth_17_fields(msgpack_packer *pk)
{
    /* request, args, fields, then 14 maps (the first is guaranteed's) */
    env(pk, 183, "quota.set", 2);
    wire_pack_kv_str(pk, "path", "ghost");
    key(pk, "fields");
    msgpack_pack_map(pk, 1);
    key(pk, "guaranteed");
    for (unsigned i = 0; i < 14; i++) {
        msgpack_pack_map(pk, 1);
        key(pk, "memory_mb");
    }
    msgpack_pack_uint64(pk, 1);
}
static void c_dd_in_args(msgpack_packer *pk)
{
    env(pk, 184, "quota.get", 2);
    wire_pack_kv_str(pk, "path", SEEDED_PATH);
    key(pk, "x");
    /* 0xdd ff ff ff ff: an array32 announcing 2^32-1 elements. */
    msgpack_pack_array(pk, UINT32_MAX);
}
static void c_dd_as_id(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    wire_pack_kv_str(pk, "op", "ping");
    key(pk, "id");
    msgpack_pack_array(pk, UINT32_MAX);
}

static const struct req_case req_cases[] = {
    {"unknown op", c_unknown_op, "invalid", 101},
    {"empty op", c_empty_op, "invalid", 102},
    {"300-byte op", c_long_op, "invalid", 103},
    {"op in capitals", c_op_case, "invalid", 104},
    {"id is a string", c_id_str, "invalid", 0},
    {"id is negative", c_id_neg, "invalid", 0},
    {"id is a float", c_id_float, "invalid", 0},
    {"id is nil", c_id_nil, "invalid", 0},
    {"id is a map", c_id_map, "invalid", 0},
    {"op is an integer", c_op_int, "invalid", 105},
    {"op is nil", c_op_nil, "invalid", 106},
    {"op is bin", c_op_bin, "invalid", 107},
    {"args is an array", c_args_array, "invalid", 108},
    {"args is a string", c_args_str, "invalid", 109},
    {"args is nil", c_args_nil, "invalid", 110},
    {"write: client is a string", c_client_str, "invalid", 111},
    {"write: seq is a string", c_seq_str, "invalid", 112},
    {"write: client without seq", c_seq_zero, "invalid", 113},
    {"write: ack is negative", c_ack_neg, "invalid", 114},
    {"write: fwd is an integer", c_fwd_int, "invalid", 115},
    {"set: path is an integer", c_path_int, "invalid", 120},
    {"set: path is empty", c_path_empty, "invalid", 121},
    {"set: path ../etc/passwd", c_path_dots, "invalid", 122},
    {"set: path of 699 bytes", c_path_long, "invalid", 123},
    {"set: path 9 deep", c_path_deep, "invalid", 124},
    {"set: path a//b", c_path_slash, "invalid", 125},
    {"set: path with NUL", c_path_nul, "invalid", 126},
    {"set: fields is a string", c_fields_str, "invalid", 127},
    {"set: fields is nil", c_fields_nil, "invalid", 128},
    {"set: fields is empty", c_fields_empty, "invalid", 129},
    {"set: guaranteed is an integer", c_group_int, "invalid", 130},
    {"set: memory_mb is a string", c_mem_str, "invalid", 131},
    {"set: memory_mb is negative", c_mem_neg, "invalid", 132},
    {"set: vcores is a float", c_mem_float, "invalid", 133},
    {"set: rate is a string", c_rate_str, "invalid", 134},
    {"set: rate is negative", c_rate_neg, "invalid", 135},
    {"set: rate is NaN", c_rate_nan, "invalid", 136},
    {"set: rate is infinite", c_rate_inf, "invalid", 137},
    {"set: kind bogus", c_kind_bogus, "invalid", 138},
    {"set: kind is an integer", c_kind_int, "invalid", 139},
    {"set: unknown field", c_field_unknown, "invalid", 140},
    {"set: field name is an integer", c_field_key_int, "invalid", 141},
    {"set: fields of both kinds", c_kinds_mixed, "invalid", 142},
    {"set: field of the other kind", c_kind_mismatch, "invalid", 143},
    {"set: per_key is a string", c_per_key_str, "invalid", 144},
    {"set: fleet with a space", c_fleet_bad, "invalid", 145},
    {"set: unit bogus", c_unit_bogus, "invalid", 146},
    {"set: if_version is a string", c_if_version_str, "invalid", 147},
    {"rm: if_version is negative", c_if_version_neg, "invalid", 148},
    {"get: path is an integer", c_get_path_int, "invalid", 150},
    {"get: path is nil", c_get_path_nil, "invalid", 151},
    {"rm: path is an array", c_rm_path_array, "invalid", 152},
    {"ls: prefix is an integer", c_ls_prefix_int, "invalid", 153},
    {"ls: limit 0", c_ls_limit_zero, "invalid", 154},
    {"ls: limit 2^64-1", c_ls_limit_big, "invalid", 155},
    {"ls: limit is a string", c_ls_limit_str, "invalid", 156},
    {"ls: after is an integer", c_ls_after_int, "invalid", 157},
    {"ls: after of 2000 bytes", c_ls_after_long, "invalid", 158},
    {"status: digest is a string", c_status_digest_str, "invalid", 160},
    {"add: id 0", c_add_id_zero, "invalid", 161},
    {"add: id is a string", c_add_id_str, "invalid", 162},
    {"add: raft_addr is an integer", c_add_addr_int, "invalid", 163},
    {"add: raft_addr nowhere", c_add_addr_bad, "invalid", 164},
    {"add: raft_addr of 199 bytes", c_add_addr_long, "invalid", 165},
    {"remove: id is a string", c_remove_id_str, "invalid", 166},
    {"remove: id 0", c_remove_id_zero, "invalid", 167},
    {"transfer: id is a string", c_transfer_id_str, "invalid", 168},
    {"missing id", c_no_id, "invalid", 0},
    {"missing op", c_no_op, "invalid", 170},
    {"set: missing path", c_set_no_path, "invalid", 171},
    {"set: missing fields", c_set_no_fields, "invalid", 172},
    {"set: missing args", c_set_no_args, "invalid", 173},
    {"get: missing args", c_get_no_args, "invalid", 174},
    {"rm: missing path", c_rm_no_path, "invalid", 175},
    {"add: missing raft_addr", c_add_no_addr, "invalid", 176},
    {"add: missing args", c_add_no_args, "invalid", 177},
    {"remove: missing args", c_remove_no_args, "invalid", 178},
    {"nesting 16 deep (the limit)", c_depth_16, NULL, 180},
    {"nesting 17 deep", c_depth_17, "protocol", 0},
    {"nesting 17 deep (arrays)", c_depth_17_array, "protocol", 0},
    {"nesting 17 deep in fields", c_depth_17_fields, "protocol", 0},
    {"0xdd ff ff ff ff inside args", c_dd_in_args, "protocol", 0},
    {"0xdd ff ff ff ff as the id", c_dd_as_id, "protocol", 0},
};

/* --- State before and after ----------------------------------------------- */

struct snapshot
{
    pid_t pid[4];
    uint64_t version[4];
    char digest[4][65];
};

static void take_snapshot(struct snapshot *s)
{
    struct harness_status st;
    ck_assert_msg(harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, &st) == 0,
                  "cluster did not converge");
    for (unsigned id = 1; id <= 3; id++) {
        ck_assert_msg(harness_node_running(id), "node %u is not running", id);
        s->pid[id] = harness_node_pid(id);
        ck_assert_int_eq(harness_status(id, true, &st, HARNESS_CALL_TIMEOUT_MS),
                         0);
        s->version[id] = st.catalog_version;
        snprintf(s->digest[id], sizeof s->digest[id], "%s", st.digest);
    }
}

/* --- Pieces of the test --------------------------------------------------- */

static void run_framing_cases(void)
{
    harness_log("framing:");
    /* A truncated frame, then close: nothing to answer. */
    int fd = harness_raw_connect(g_target);
    ck_assert_int_ge(fd, 0);
    static const char trunc[] = {0,          0,   0,   100, (char)0x82,
                                 (char)0xa2, 'i', 'd', 1,   (char)0xa2};
    ck_assert_int_eq(harness_raw_send(fd, trunc, sizeof trunc), 0);
    close(fd);
    fd = harness_raw_connect(g_target);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(harness_raw_send(fd, "\0\0", 2), 0); /* half a header */
    close(fd);
    harness_log("  %-44s -> sent and closed",
                "truncated frame, truncated header");

    static const char two_gib[] = {(char)0x80, 0, 0, 0, (char)0x80};
    expect_close("header announcing 2 GiB", two_gib, sizeof two_gib);
    static const char four_gib[] = {(char)0xff, (char)0xff, (char)0xff,
                                    (char)0xff};
    expect_close("header announcing 4 GiB - 1", four_gib, sizeof four_gib);

    /* 1 MiB + 1: one byte over the limit, with the whole body sent. */
    size_t over = WIRE_FRAME_MAX + 1u;
    char *big = calloc(1, WIRE_HEADER_LEN + over);
    ck_assert_ptr_nonnull(big);
    wire_frame_header(big, (uint32_t)over);
    memset(big + WIRE_HEADER_LEN, 0xa1, over);
    expect_close("body of 1 MiB + 1", big, WIRE_HEADER_LEN + over);
    free(big);

    /* Exactly 1 MiB: served. A quota.get padded to the limit (forwarded
     * when the target is a follower). */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t pad = WIRE_FRAME_MAX - 64;
    for (int round = 0; round < 2; round++) {
        frame_begin(&sb, &pk);
        env(&pk, 190, "quota.get", 2);
        wire_pack_kv_str(&pk, "path", SEEDED_PATH);
        key(&pk, "pad");
        msgpack_pack_str(&pk, pad);
        char *zeros = calloc(1, pad);
        ck_assert_ptr_nonnull(zeros);
        memset(zeros, 'p', pad);
        msgpack_pack_str_body(&pk, zeros, pad);
        free(zeros);
        size_t body = sb.size - WIRE_HEADER_LEN;
        if (body == WIRE_FRAME_MAX) {
            break;
        }
        pad += WIRE_FRAME_MAX - body; /* the str32 header is fixed size */
        msgpack_sbuffer_destroy(&sb);
    }
    ck_assert_uint_eq(sb.size - WIRE_HEADER_LEN, WIRE_FRAME_MAX);
    frame_finish(&sb);
    /* The leader serves it; a follower cannot forward it, since its own
     * envelope would push the frame over the limit: too_big, and the
     * connection stays usable (the ping after it is answered). */
    expect_reply("body of exactly 1 MiB", &sb,
                 g_target_leads ? NULL : "too_big", 190);
    msgpack_sbuffer_destroy(&sb);

    /* One byte at a time. */
    frame_begin(&sb, &pk);
    env(&pk, 191, "quota.get", 1);
    wire_pack_kv_str(&pk, "path", SEEDED_PATH);
    frame_finish(&sb);
    fd = harness_raw_connect(g_target);
    ck_assert_int_ge(fd, 0);
    for (size_t i = 0; i < sb.size; i++) {
        ck_assert_int_eq(harness_raw_send(fd, sb.data + i, 1), 0);
        harness_sleep_ms(2);
    }
    msgpack_sbuffer_destroy(&sb);
    struct harness_reply rep;
    ck_assert_int_eq(harness_raw_recv(fd, HARNESS_IO_WAIT_MS, &rep), 1);
    ck_assert_msg(rep.ok && rep.id == 191, "byte-at-a-time: %s %s", rep.error,
                  rep.message);
    harness_reply_destroy(&rep);
    close(fd);
    harness_log("  %-44s -> ok", "quota.get sent one byte at a time");

    /* 100 pipelined pings in one write: 100 replies, in order. */
    msgpack_sbuffer_init(&sb);
    for (uint64_t i = 0; i < 100; i++) {
        append_ping(&sb, 1000 + i);
    }
    fd = harness_raw_connect(g_target);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(harness_raw_send(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
    bool seen[100] = {false};
    for (unsigned i = 0; i < 100; i++) {
        ck_assert_int_eq(harness_raw_recv(fd, HARNESS_IO_WAIT_MS, &rep), 1);
        ck_assert_msg(rep.ok && rep.id >= 1000 && rep.id < 1100 &&
                          !seen[rep.id - 1000],
                      "pipelined pings: reply %u has id %" PRIu64 " (%s)", i,
                      rep.id, rep.ok ? "ok" : rep.error);
        seen[rep.id - 1000] = true;
        harness_reply_destroy(&rep);
    }
    close(fd);
    harness_log("  %-44s -> 100 replies, one per id", "100 pipelined pings");
}

static void run_body_cases(void)
{
    harness_log("bodies:");
    for (size_t i = 0; i < sizeof raw_cases / sizeof raw_cases[0]; i++) {
        const struct raw_case *c = &raw_cases[i];
        msgpack_sbuffer sb;
        frame_raw(&sb, c->bytes, c->len);
        expect_reply(c->label, &sb, c->codes, 0);
        msgpack_sbuffer_destroy(&sb);
    }
    /* A valid request followed by one stray byte in the same body. */
    msgpack_sbuffer body;
    msgpack_packer pk;
    msgpack_sbuffer_init(&body);
    msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    wire_pack_kv_u64(&pk, "id", 9);
    wire_pack_kv_str(&pk, "op", "ping");
    msgpack_pack_nil(&pk);
    msgpack_sbuffer sb;
    frame_raw(&sb, body.data, body.size);
    expect_reply("trailing byte after a valid request", &sb, "protocol", 0);
    msgpack_sbuffer_destroy(&sb);
    msgpack_sbuffer_destroy(&body);
}

static void run_request_cases(void)
{
    harness_log("envelopes and arguments:");
    for (size_t i = 0; i < sizeof req_cases / sizeof req_cases[0]; i++) {
        const struct req_case *c = &req_cases[i];
        msgpack_sbuffer sb;
        msgpack_packer pk;
        frame_begin(&sb, &pk);
        c->pack(&pk);
        frame_finish(&sb);
        expect_reply(c->label, &sb, c->codes, c->id);
        msgpack_sbuffer_destroy(&sb);
    }
}

struct tally
{
    unsigned ok;
    unsigned errors;
    unsigned codes[16]; /* by -code, for the log */
};

static void count_reply(void *arg, const struct harness_reply *rep)
{
    struct tally *t = arg;
    if (rep->ok) {
        t->ok++;
    } else {
        t->errors++;
        unsigned k = (unsigned)(-rep->code);
        t->codes[k < 16 ? k : 0]++;
    }
}

/* Send frames in one stream and require one reply per frame. */
static void exchange_all(const char *label, const msgpack_sbuffer *sb,
                         unsigned n, struct tally *t)
{
    int fd = harness_raw_connect(g_target);
    ck_assert_int_ge(fd, 0);
    bool closed;
    unsigned bad;
    double t0 = harness_now();
    unsigned got =
        harness_raw_exchange(fd, sb->data, sb->size, n, HARNESS_CALL_TIMEOUT_MS,
                             count_reply, t, &closed, &bad);
    ck_assert_msg(bad == 0, "%s: %u malformed reply frames", label, bad);
    ck_assert_msg(!closed, "%s: the server closed the connection", label);
    ck_assert_msg(got == n, "%s: %u replies to %u frames", label, got, n);
    /* Still usable afterwards. */
    msgpack_sbuffer ping;
    msgpack_sbuffer_init(&ping);
    append_ping(&ping, PING_ID);
    ck_assert_int_eq(harness_raw_send(fd, ping.data, ping.size), 0);
    msgpack_sbuffer_destroy(&ping);
    struct harness_reply rep;
    ck_assert_int_eq(harness_raw_recv(fd, HARNESS_IO_WAIT_MS, &rep), 1);
    assert_ping_reply(&rep, PING_ID, label);
    harness_reply_destroy(&rep);
    close(fd);
    harness_log("  %-44s -> %u replies in %.3f s (%u ok, %u errors: "
                "protocol %u, invalid %u, not_found %u)",
                label, got, harness_now() - t0, t->ok, t->errors,
                t->codes[-ALLOT_EPROTOCOL], t->codes[-ALLOT_EINVALID],
                t->codes[-ALLOT_ENOT_FOUND]);
}

static void run_random(void)
{
    harness_log("random:");
    enum { N = 1000 };
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    char body[512];
    for (unsigned i = 0; i < N; i++) {
        size_t len = rng_below(sizeof body);
        for (size_t k = 0; k < len; k++) {
            body[k] = (char)rng_next();
        }
        char hdr[WIRE_HEADER_LEN];
        wire_frame_header(hdr, (uint32_t)len);
        msgpack_sbuffer_write(&sb, hdr, sizeof hdr);
        msgpack_sbuffer_write(&sb, body, len);
    }
    struct tally t = {0};
    exchange_all("1000 frames of random bytes", &sb, N, &t);
    ck_assert_uint_eq(t.ok, 0);
    msgpack_sbuffer_destroy(&sb);

    /* Valid read-only requests with 1-4 random bytes replaced. None can
     * turn into a write that applies (a quota.get mutated into quota.set
     * lacks fields), so every reply is either served or an error. */
    msgpack_sbuffer base[3];
    msgpack_packer pk;
    msgpack_sbuffer_init(&base[0]);
    msgpack_packer_init(&pk, &base[0], msgpack_sbuffer_write);
    env(&pk, 200, "quota.get", 1);
    wire_pack_kv_str(&pk, "path", SEEDED_PATH);
    msgpack_sbuffer_init(&base[1]);
    msgpack_packer_init(&pk, &base[1], msgpack_sbuffer_write);
    env(&pk, 201, "cluster.status", 1);
    key(&pk, "digest");
    msgpack_pack_true(&pk);
    msgpack_sbuffer_init(&base[2]);
    msgpack_packer_init(&pk, &base[2], msgpack_sbuffer_write);
    env(&pk, 202, "ping", 0);
    msgpack_sbuffer_init(&sb);
    for (unsigned i = 0; i < N; i++) {
        const msgpack_sbuffer *b = &base[i % 3];
        memcpy(body, b->data, b->size);
        unsigned flips = 1 + (unsigned)rng_below(4);
        for (unsigned f = 0; f < flips; f++) {
            body[rng_below(b->size)] = (char)rng_next();
        }
        char hdr[WIRE_HEADER_LEN];
        wire_frame_header(hdr, (uint32_t)b->size);
        msgpack_sbuffer_write(&sb, hdr, sizeof hdr);
        msgpack_sbuffer_write(&sb, body, b->size);
    }
    for (int i = 0; i < 3; i++) {
        msgpack_sbuffer_destroy(&base[i]);
    }
    memset(&t, 0, sizeof t);
    exchange_all("1000 mutated valid requests", &sb, N, &t);
    msgpack_sbuffer_destroy(&sb);

    /* Unframed random bytes: whatever the server makes of them, it must
     * end by closing once we are done. */
    size_t n = 65536;
    char *junk = malloc(n);
    ck_assert_ptr_nonnull(junk);
    for (size_t k = 0; k < n; k++) {
        junk[k] = (char)rng_next();
    }
    int fd = harness_raw_connect(g_target);
    ck_assert_int_ge(fd, 0);
    (void)harness_raw_send(fd, junk, n);
    shutdown(fd, SHUT_WR);
    ck_assert_msg(harness_raw_wait_closed(fd, HARNESS_IO_WAIT_MS) == 1,
                  "unframed junk: connection never closed");
    close(fd);
    free(junk);
    harness_log("  %-44s -> closed", "64 KiB of unframed random bytes");

    /* Many connections, each left with half a frame. */
    int fds[100];
    for (int i = 0; i < 100; i++) {
        fds[i] = harness_raw_connect(g_target);
        ck_assert_int_ge(fds[i], 0);
        static const char half[] = {0, 0, 1, 0, (char)0x83};
        ck_assert_int_eq(harness_raw_send(fds[i], half, sizeof half), 0);
    }
    for (int i = 0; i < 100; i++) {
        close(fds[i]);
    }
    harness_log("  %-44s -> sent and closed",
                "100 connections with half a frame");
}

static void pack_get_seeded(msgpack_packer *pk, void *arg)
{
    (void)arg;
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "path", SEEDED_PATH);
}

static void pack_seed_set(msgpack_packer *pk, void *arg)
{
    (void)arg;
    msgpack_pack_map(pk, 2);
    wire_pack_kv_str(pk, "path", SEEDED_PATH);
    key(pk, "fields");
    msgpack_pack_map(pk, 2);
    wire_pack_kv_str(pk, "kind", "capacity");
    key(pk, "max");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "memory_mb", 77);
}

START_TEST(test_garbage)
{
    bool to_leader = _i == 1;
    harness_begin(to_leader ? "garbage_to_leader" : "garbage_to_follower");
    const char *seed_env = getenv("ALLOT_ITEST_SEED");
    uint64_t seed =
        seed_env != NULL ? strtoull(seed_env, NULL, 0) : UINT64_C(20261123);
    g_rng = seed;
    harness_log("random seed %" PRIu64 " (ALLOT_ITEST_SEED)", seed);

    harness_cluster_start(3);
    unsigned leader = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
    ck_assert_msg(leader != 0, "no leader");
    g_target = leader;
    g_target_leads = to_leader;
    if (!to_leader) {
        g_target = leader == 1 ? 2 : 1;
    }
    harness_log("garbage goes to node %u (%s)", g_target,
                to_leader ? "leader" : "follower");

    struct harness_reply rep;
    ck_assert_msg(harness_call(leader, "quota.set", pack_seed_set, NULL, &rep,
                               HARNESS_CALL_TIMEOUT_MS) == 0,
                  "seed write: %s", rep.message);
    const msgpack_object *v = wire_map_get(rep.result, "version");
    ck_assert(v != NULL && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER);
    uint64_t seeded_version = v->via.u64;
    harness_reply_destroy(&rep);

    struct snapshot before, after;
    take_snapshot(&before);
    /* A connection that stays open through everything. */
    int witness = harness_raw_connect(g_target);
    ck_assert_int_ge(witness, 0);

    double t = harness_now();
    run_framing_cases();
    run_body_cases();
    run_request_cases();
    run_random();
    harness_log("all garbage sent in %.3f s", harness_now() - t);

    /* The witness connection and fresh clients are still served. */
    msgpack_sbuffer ping;
    msgpack_sbuffer_init(&ping);
    append_ping(&ping, PING_ID);
    ck_assert_int_eq(harness_raw_send(witness, ping.data, ping.size), 0);
    msgpack_sbuffer_destroy(&ping);
    ck_assert_int_eq(harness_raw_recv(witness, HARNESS_IO_WAIT_MS, &rep), 1);
    assert_ping_reply(&rep, PING_ID, "witness connection");
    harness_reply_destroy(&rep);
    close(witness);
    ck_assert_msg(harness_call(g_target, "ping", NULL, NULL, &rep,
                               HARNESS_CALL_TIMEOUT_MS) == 0,
                  "ping: %s", rep.message);
    harness_reply_destroy(&rep);
    ck_assert_msg(harness_call(g_target, "quota.get", pack_get_seeded, NULL,
                               &rep, HARNESS_CALL_TIMEOUT_MS) == 0,
                  "quota.get: %s: %s", rep.error, rep.message);
    v = wire_map_get(rep.result, "version");
    ck_assert(v != NULL && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER);
    ck_assert_uint_eq(v->via.u64, seeded_version);
    harness_reply_destroy(&rep);

    /* Nothing changed anywhere, nobody crashed or restarted. */
    take_snapshot(&after);
    for (unsigned id = 1; id <= 3; id++) {
        ck_assert_msg(after.pid[id] == before.pid[id], "node %u was restarted",
                      id);
        ck_assert_msg(after.version[id] == before.version[id],
                      "node %u catalog_version %" PRIu64 " -> %" PRIu64, id,
                      before.version[id], after.version[id]);
        ck_assert_msg(strcmp(after.digest[id], before.digest[id]) == 0,
                      "node %u digest changed", id);
    }
    harness_log("every node: catalog_version %" PRIu64 ", digest %.16s... "
                "unchanged",
                after.version[1], after.digest[1]);
    harness_end(); /* SIGTERM: each node must exit 0 */
}
END_TEST

static Suite *badinput_suite(void)
{
    Suite *s = suite_create("badinput");
    TCase *tc = tcase_create("badinput");
    tcase_set_timeout(tc, 400);
    /* 0: garbage to a follower, 1: to the leader. */
    tcase_add_loop_test(tc, test_garbage, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return harness_main(badinput_suite());
}
