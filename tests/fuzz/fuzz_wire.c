/* fuzz_wire.c - libFuzzer target for everything that reads untrusted bytes.
 *
 * Every input goes through every reader, and each reader is checked against
 * an oracle, not only for crashes:
 *   - framing: wire_frame_parse() in a loop and a wire_rbuf fed in uneven
 *     reads must cut the stream into the same frames;
 *   - msgpack: wire_check() and msgpack-c must agree on what is one valid
 *     value (a value the pre-check passes must unpack);
 *   - envelopes: wire_request_decode() / wire_reply_decode() on every
 *     decoded value, with the invariants they promise;
 *   - quotas: quota_patch_unpack() and quota_unpack() on every map found at
 *     any depth; what they accept must pack and decode back to the same;
 *   - the state machine: the input as a log entry (apply must return 0 and
 *     leave a consistent catalog) and as a snapshot (a refused snapshot
 *     changes nothing; an accepted one snapshots and restores identically).
 *
 * Build and run with tests/fuzz/run. */
#include <msgpack.h>
#include <raft.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "quota.h"
#include "raft_fsm.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                  \
            abort();                                                         \
        }                                                                    \
    } while (0)

/* An error path must leave a terminated, non-empty message. */
static void check_msg(const char *msg)
{
    size_t n = strnlen(msg, ALLOT_ERRMSG_SIZE);
    CHECK(n > 0 && n < ALLOT_ERRMSG_SIZE);
}

/* --- Quotas --------------------------------------------------------------- */

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
        return 0;
    }
    return 0;
}

static bool field_eq(const struct quota_field_desc *d,
                     const struct quota_fields *a, const struct quota_fields *b)
{
    const char *x = (const char *)a + d->offset;
    const char *y = (const char *)b + d->offset;
    if (d->type == QFT_NAME) {
        return strcmp(x, y) == 0;
    }
    return memcmp(x, y, field_size(d)) == 0;
}

/* Unpack the msgpack in sb (must be valid) into u. */
static void unpack_sb(const msgpack_sbuffer *sb, msgpack_unpacked *u)
{
    char msg[ALLOT_ERRMSG_SIZE];
    msgpack_unpacked_init(u);
    CHECK(wire_unpack(sb->data, sb->size, u, msg) == 0);
}

static void check_patch(const msgpack_object *map)
{
    char msg[ALLOT_ERRMSG_SIZE] = "";
    struct quota_fields p;
    int rv = quota_patch_unpack(map, &p, msg);
    if (rv != 0) {
        CHECK(rv == ALLOT_EINVALID);
        check_msg(msg);
        return;
    }
    /* Whatever is accepted packs and decodes back to exactly the same. */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    unsigned n = quota_fields_pack(NULL, &p, true);
    msgpack_pack_map(&pk, n);
    CHECK(quota_fields_pack(&pk, &p, true) == n);
    msgpack_unpacked u;
    unpack_sb(&sb, &u);
    struct quota_fields back;
    CHECK(quota_patch_unpack(&u.data, &back, msg) == 0);
    CHECK(back.set == p.set);
    for (unsigned i = 0; i < QF_COUNT; i++) {
        if (p.set & (1u << i)) {
            CHECK(field_eq(&quota_field_table[i], &p, &back));
        }
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);

    /* The rules run on anything a client can send. */
    msg[0] = '\0';
    if (quota_patch_check(&p, msg) != 0) {
        check_msg(msg);
    }
    struct quota_fields q;
    if (quota_fields_defaults(&p, &q, msg) == 0) {
        struct quota_fields before;
        memcpy(&before, &q, sizeof q);
        rv = quota_fields_merge(&q, &p, msg);
        if (rv != 0) {
            CHECK(rv == ALLOT_EINVALID);
            check_msg(msg);
            CHECK(memcmp(&before, &q, sizeof q) == 0);
        } else {
            CHECK(q.set == 0);
            if (q.kind == QUOTA_KIND_RATE) {
                CHECK(q.rate > 0 && q.burst >= 1);
            } else {
                CHECK(q.on_exceed != QUOTA_EXCEED_DELAY);
            }
        }
    }
    for (unsigned i = 0; i < QF_COUNT; i++) {
        char text[128];
        quota_field_format(&quota_field_table[i], &p, text, sizeof text);
    }
}

static void pack_quota(msgpack_sbuffer *sb, const struct quota *q)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    quota_pack(&pk, q);
}

static void check_quota(const msgpack_object *map)
{
    char msg[ALLOT_ERRMSG_SIZE] = "";
    struct quota q;
    int rv = quota_unpack(map, &q, msg);
    if (rv != 0) {
        CHECK(rv == ALLOT_EINVALID);
        check_msg(msg);
        CHECK(q.path == NULL && q.owners == NULL);
        return;
    }
    CHECK(quota_path_check(q.path, strlen(q.path), msg) == 0);
    /* An accepted quota packs, decodes and packs again to the same bytes. */
    msgpack_sbuffer sb1, sb2;
    pack_quota(&sb1, &q);
    msgpack_unpacked u;
    unpack_sb(&sb1, &u);
    struct quota back;
    rv = quota_unpack(&u.data, &back, msg);
    if (rv != 0) {
        fprintf(stderr, "accepted quota does not decode once packed: %s\n",
                msg);
    }
    CHECK(rv == 0);
    pack_quota(&sb2, &back);
    CHECK(sb1.size == sb2.size && memcmp(sb1.data, sb2.data, sb1.size) == 0);
    quota_free(&back);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb1);
    msgpack_sbuffer_destroy(&sb2);
    quota_free(&q);
}

/* Every map at every depth is tried as a patch and as a quota. */
static void visit(const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_MAP) {
        check_patch(o);
        check_quota(o);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            visit(&o->via.map.ptr[i].key);
            visit(&o->via.map.ptr[i].val);
        }
    } else if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            visit(&o->via.array.ptr[i]);
        }
    }
}

/* --- Messages --------------------------------------------------------------
 */

static void check_envelopes(const msgpack_object *root)
{
    char msg[ALLOT_ERRMSG_SIZE] = "";
    struct wire_request req;
    int rv = wire_request_decode(root, &req, msg);
    if (rv == 0) {
        CHECK(req.op > WIRE_OP_UNKNOWN && req.op < WIRE_OP_COUNT);
        CHECK(req.args == NULL || req.args->type == MSGPACK_OBJECT_MAP);
        if ((wire_op_flags(req.op) & WIRE_OP_WRITE) && req.client != 0) {
            CHECK(req.seq >= 1);
        }
        const char *name = wire_op_name(req.op);
        CHECK(wire_op_from_name(name, strlen(name)) == req.op);
    } else {
        CHECK(rv == ALLOT_EINVALID);
        check_msg(msg);
    }
    msg[0] = '\0';
    struct wire_reply rep;
    rv = wire_reply_decode(root, &rep, msg);
    if (rv == 0) {
        CHECK(rep.code <= 0 && rep.code >= ALLOT_EMIN);
        CHECK(rep.code == 0 || rep.result == NULL);
        CHECK(allot_strerror(rep.code) != NULL);
        CHECK(allot_error_name(rep.code) != NULL);
    } else {
        CHECK(rv == ALLOT_EPROTOCOL);
    }
}

/* One msgpack body, as a frame would carry it. */
static void consume_body(const char *body, size_t len)
{
    char msg[ALLOT_ERRMSG_SIZE] = "";
    int chk = wire_check(body, len, msg);
    if (chk != 0) {
        CHECK(chk == ALLOT_EPROTOCOL);
        check_msg(msg);
    }
    size_t used = 0;
    int pre = wire_check_prefix(body, len, &used, msg);
    if (pre == 0) {
        CHECK(used <= len);
        CHECK(wire_check(body, used, msg) == 0);
        CHECK((chk == 0) == (used == len));
    } else {
        CHECK(chk != 0);
    }

    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rv = wire_unpack(body, len, &u, msg);
    /* The pre-check and msgpack-c agree on what one value is. */
    if (rv != ALLOT_ENOMEM) {
        if ((chk == 0) != (rv == 0)) {
            fprintf(stderr, "wire_check %d but wire_unpack %d (%s)\n", chk, rv,
                    msg);
        }
        CHECK((chk == 0) == (rv == 0));
    }
    if (rv == 0) {
        check_envelopes(&u.data);
        visit(&u.data);
    }
    msgpack_unpacked_destroy(&u);
}

/* The stream cut by wire_frame_parse() directly ... */
struct frames
{
    size_t n;
    size_t off[64];
    size_t len[64];
    int end; /* 0: needs more bytes; ALLOT_ETOO_BIG */
};

static void cut_frames(const char *buf, size_t size, struct frames *fr)
{
    size_t off = 0;
    fr->n = 0;
    for (;;) {
        const char *body;
        size_t body_len, frame_len;
        int rv = wire_frame_parse(buf + off, size - off, &body, &body_len,
                                  &frame_len);
        if (rv != 1) {
            CHECK(rv == 0 || rv == ALLOT_ETOO_BIG);
            fr->end = rv;
            return;
        }
        CHECK(body == buf + off + WIRE_HEADER_LEN);
        CHECK(frame_len == WIRE_HEADER_LEN + body_len);
        CHECK(body_len <= WIRE_FRAME_MAX && frame_len <= size - off);
        if (fr->n < 64) {
            fr->off[fr->n] = (size_t)(body - buf);
            fr->len[fr->n] = body_len;
        }
        fr->n++;
        consume_body(body, body_len);
        off += frame_len;
    }
}

/* ... and by a receive buffer fed in uneven reads must agree. */
static void check_rbuf(const char *buf, size_t size, const struct frames *fr)
{
    struct wire_rbuf b;
    wire_rbuf_init(&b);
    /* A connection reserves before its first read; wire_rbuf_next() on a
     * never-reserved buffer computes NULL + 0 (reported separately). */
    char *tail0;
    size_t avail0;
    CHECK(wire_rbuf_reserve(&b, 1, &tail0, &avail0) == 0);
    size_t fed = 0, got = 0;
    uint32_t x = (uint32_t)size * 2654435761u + 1;
    int end = 0;
    while (end == 0) {
        x = x * 1103515245u + 12345u;
        size_t want = 1 + (x >> 16) % 97;
        if (fed < size) {
            char *tail;
            size_t avail;
            CHECK(wire_rbuf_reserve(&b, want, &tail, &avail) == 0);
            CHECK(avail >= want);
            size_t n = size - fed < want ? size - fed : want;
            memcpy(tail, buf + fed, n);
            b.len += n;
            fed += n;
        }
        const char *body;
        size_t body_len;
        int rv;
        while ((rv = wire_rbuf_next(&b, &body, &body_len)) == 1) {
            if (got < 64 && got < fr->n) {
                CHECK(body_len == fr->len[got]);
                CHECK(memcmp(body, buf + fr->off[got], body_len) == 0);
            }
            got++;
        }
        if (rv != 0) {
            end = rv;
        } else if (fed == size) {
            break;
        }
    }
    CHECK(got == fr->n);
    CHECK(end == fr->end);
    wire_rbuf_close(&b);
}

/* --- State machine
 * ------------------------------------------------------------ */

static struct raft_buffer baseline; /* malloc'd snapshot of a populated FSM */

static const struct fsm_batch_result *
apply_or_die(struct fsm *f, const struct fsm_cmd *cmds, unsigned n, uint64_t t)
{
    struct raft_buffer buf;
    CHECK(fsm_batch_encode(cmds, n, t, &buf) == 0);
    void *result = NULL;
    CHECK(fsm_raft(f)->apply(fsm_raft(f), &buf, &result) == 0);
    raft_free(buf.base);
    CHECK(result != NULL && ((const struct fsm_batch_result *)result)->n == n);
    return result;
}

static struct fsm_cmd set_cmd(const char *path, const char *const *kvs,
                              uint64_t client, uint64_t seq)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_QUOTA_SET;
    c.path = path;
    c.path_len = strlen(path);
    c.client = client;
    c.seq = seq;
    for (; *kvs != NULL; kvs++) {
        CHECK(quota_patch_parse_kv(&c.patch, *kvs, NULL) == 0);
    }
    return c;
}

/* A catalog the inputs can act on: paths org, org/api, org/batch; clients
 * 7 and 8 with remembered results; node 1's address; a declared capacity
 * and a small audit bound (so inputs reach expiry). */
static void baseline_build(void)
{
    struct fsm *f;
    CHECK(fsm_init(&f) == 0);
    static const char *const cap[] = {"kind=capacity",
                                      "guaranteed.memory_mb=1024",
                                      "max.memory_mb=2048", "max_apps=4", NULL};
    static const char *const rate[] = {
        "rate=12.5",       "unit=bytes",     "fleet=edge", "per_key=true",
        "on_exceed=delay", "max_delay_ms=5", NULL};
    static const char *const small[] = {"max_apps=1", NULL};
    struct fsm_cmd cmds[7];
    memset(cmds, 0, sizeof cmds);
    cmds[0].type = FSM_CMD_LEADER;
    cmds[0].node_id = 1;
    cmds[0].node_addr = "127.0.0.1:7001";
    cmds[1] = set_cmd("org", cap, 7, 1);
    cmds[2] = set_cmd("org/api", rate, 7, 2);
    cmds[3] = set_cmd("org/batch", small, 8, 1);
    cmds[4].type = FSM_CMD_QUOTA_RM;
    cmds[4].path = "nothing";
    cmds[4].path_len = 7;
    cmds[4].client = 8;
    cmds[4].seq = 2;
    cmds[5].type = FSM_CMD_CAPACITY_SET;
    cmds[5].capacity.has_memory_mb = true;
    cmds[5].capacity.memory_mb = 4096;
    cmds[6].type = FSM_CMD_AUDIT_CONFIG;
    cmds[6].audit.has_max_records = true;
    cmds[6].audit.max_records = 8;
    const struct fsm_batch_result *br = apply_or_die(f, cmds, 7, 1000000);
    for (unsigned i = 0; i < 7; i++) {
        /* Everything applies but the removal of "nothing". */
        CHECK((br->results[i].code == 0) == (i != 4));
    }

    struct raft_buffer *bufs;
    unsigned n;
    CHECK(fsm_raft(f)->snapshot(fsm_raft(f), &bufs, &n) == 0 && n == 1);
    baseline.len = bufs[0].len;
    baseline.base = malloc(baseline.len);
    CHECK(baseline.base != NULL);
    memcpy(baseline.base, bufs[0].base, baseline.len);
    CHECK(fsm_raft(f)->snapshot_finalize(fsm_raft(f), &bufs, &n) == 0);
    fsm_close(f);
}

static struct raft_buffer raft_copy(const void *data, size_t len)
{
    struct raft_buffer b = {raft_malloc(len > 0 ? len : 1), len};
    CHECK(b.base != NULL);
    if (len > 0) {
        memcpy(b.base, data, len);
    }
    return b;
}

static struct raft_buffer snapshot_copy(struct fsm *f)
{
    struct raft_buffer *bufs;
    unsigned n;
    CHECK(fsm_raft(f)->snapshot(fsm_raft(f), &bufs, &n) == 0 && n == 1);
    struct raft_buffer copy = raft_copy(bufs[0].base, bufs[0].len);
    CHECK(fsm_raft(f)->snapshot_finalize(fsm_raft(f), &bufs, &n) == 0);
    return copy;
}

struct ls_count
{
    uint64_t n;
    char last[QUOTA_PATH_MAX + 1];
};

static void ls_cb(void *arg, const struct quota *q)
{
    struct ls_count *c = arg;
    /* Path order, each quota once. */
    CHECK(c->n == 0 || strcmp(c->last, q->path) < 0);
    snprintf(c->last, sizeof c->last, "%s", q->path);
    c->n++;
}

/* The catalog stays self-consistent whatever was applied. */
static void check_catalog(struct fsm *f)
{
    struct ls_count all = {0, ""};
    bool more = true;
    fsm_ls(f, "", 0, NULL, 0, UINT32_MAX, ls_cb, &all, &more);
    CHECK(!more);
    CHECK(all.n == fsm_quota_count(f));
    /* Paging by 2 sees the same quotas. */
    struct ls_count paged = {0, ""};
    do {
        struct ls_count page = {0, ""};
        char after[QUOTA_PATH_MAX + 1];
        snprintf(after, sizeof after, "%s", paged.last);
        fsm_ls(f, "", 0, paged.n ? after : NULL, paged.n ? strlen(after) : 0, 2,
               ls_cb, &page, &more);
        CHECK(page.n <= 2);
        if (page.n > 0) {
            CHECK(paged.n == 0 || strcmp(paged.last, page.last) < 0);
            snprintf(paged.last, sizeof paged.last, "%s", page.last);
        }
        paged.n += page.n;
    } while (more);
    CHECK(paged.n == all.n);
    char hex[65];
    fsm_digest(f, hex);
    CHECK(strlen(hex) == 64);
}

static void consume_fsm(const uint8_t *data, size_t size)
{
    struct fsm *f;
    CHECK(fsm_init(&f) == 0);
    struct raft_fsm *rf = fsm_raft(f);
    struct raft_buffer b = raft_copy(baseline.base, baseline.len);
    CHECK(rf->restore(rf, &b) == 0);

    /* As a log entry: apply never fails, results are sane. */
    uint64_t v0 = fsm_catalog_version(f);
    struct raft_buffer in = {malloc(size > 0 ? size : 1), size};
    CHECK(in.base != NULL);
    if (size > 0) {
        memcpy(in.base, data, size);
    }
    void *result = NULL;
    CHECK(rf->apply(rf, &in, &result) == 0);
    free(in.base);
    CHECK(result != NULL);
    const struct fsm_batch_result *br = result;
    CHECK(br->n <= FSM_BATCH_MAX);
    /* Each applied command advances the version by one at most, a
     * recursive removal by one per quota it removed. */
    uint64_t changes = 0;
    for (unsigned i = 0; i < br->n; i++) {
        const struct fsm_result *r = &br->results[i];
        CHECK(r->code <= 0 && r->code >= ALLOT_EMIN);
        if (r->code != 0) {
            CHECK(r->message == NULL || strlen(r->message) > 0);
            CHECK(r->removed == 0);
        } else if (!r->duplicate) {
            changes += r->removed > 0 ? r->removed : 1;
        }
        CHECK(r->version <= fsm_catalog_version(f));
    }
    CHECK(fsm_catalog_version(f) - v0 <= changes);
    check_catalog(f);

    /* As a snapshot. */
    char d0[65], d1[65];
    fsm_digest(f, d0);
    uint64_t version = fsm_catalog_version(f);
    uint64_t count = fsm_quota_count(f);
    unsigned sessions = fsm_session_count(f);
    struct raft_buffer snap = raft_copy(data, size);
    int rv = rf->restore(rf, &snap);
    if (rv != 0) {
        /* Refused: the buffer is still ours and nothing changed. */
        raft_free(snap.base);
        fsm_digest(f, d1);
        CHECK(strcmp(d0, d1) == 0);
        CHECK(fsm_catalog_version(f) == version);
        CHECK(fsm_quota_count(f) == count);
        CHECK(fsm_session_count(f) == sessions);
    } else {
        /* Accepted: what it holds snapshots and restores identically. */
        check_catalog(f);
        struct raft_buffer s1 = snapshot_copy(f);
        struct fsm *g;
        CHECK(fsm_init(&g) == 0);
        struct raft_buffer s1c = raft_copy(s1.base, s1.len);
        rv = fsm_raft(g)->restore(fsm_raft(g), &s1c);
        if (rv != 0) {
            fprintf(stderr, "accepted snapshot re-snapshots to one that "
                            "restore refuses\n");
            raft_free(s1c.base);
        }
        CHECK(rv == 0);
        fsm_digest(f, d0);
        fsm_digest(g, d1);
        CHECK(strcmp(d0, d1) == 0);
        CHECK(fsm_session_count(f) == fsm_session_count(g));
        struct raft_buffer s2 = snapshot_copy(g);
        CHECK(s1.len == s2.len && memcmp(s1.base, s2.base, s1.len) == 0);
        raft_free(s1.base);
        raft_free(s2.base);
        fsm_close(g);
    }
    fsm_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (baseline.base == NULL) {
        baseline_build();
    }
    const char *buf = (const char *)data;
    /* The whole input as one message body. */
    consume_body(buf, size);
    /* The input as a stream of frames. */
    struct frames fr;
    cut_frames(buf, size, &fr);
    check_rbuf(buf, size, &fr);
    /* The input as a log entry and as a snapshot. */
    consume_fsm(data, size);
    return 0;
}
