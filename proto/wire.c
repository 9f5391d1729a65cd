/* wire.c - framing, the msgpack pre-check, and typed field readers.
 *
 * Happy path: a connection reserves tail space in its wire_rbuf, the socket
 * fills it, wire_rbuf_next() hands out whole frames, wire_unpack() checks and
 * unpacks each body, and wire_request_decode() reads the envelope.
 *
 * Failure modes, each answered without touching state:
 *   - header announces > WIRE_FRAME_MAX: ALLOT_ETOO_BIG, caller closes;
 *   - body is not exactly one msgpack value, is nested too deep, or declares
 *     more elements than it has bytes: ALLOT_EPROTOCOL;
 *   - envelope lacks "id"/"op" or has wrong types: ALLOT_EINVALID naming the
 *     field; an unknown op is ALLOT_EINVALID listing none (the op table is
 *     in docs/protocol.md). */
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- Operations ---------------------------------------------------------- */

static const struct
{
    const char *name;
    unsigned flags;
} op_table[WIRE_OP_COUNT] = {[WIRE_OP_UNKNOWN] = {"unknown", 0},
#define OP_ENTRY(name, str, flags) [WIRE_OP_##name] = {str, flags},
                             WIRE_OP_MAP(OP_ENTRY)
#undef OP_ENTRY
};

enum wire_op wire_op_from_name(const char *name, size_t len)
{
    for (unsigned i = 1; i < WIRE_OP_COUNT; i++) {
        if (strlen(op_table[i].name) == len &&
            memcmp(op_table[i].name, name, len) == 0) {
            return (enum wire_op)i;
        }
    }
    return WIRE_OP_UNKNOWN;
}

const char *wire_op_name(enum wire_op op)
{
    return (unsigned)op < WIRE_OP_COUNT ? op_table[op].name : "unknown";
}

unsigned wire_op_flags(enum wire_op op)
{
    return (unsigned)op < WIRE_OP_COUNT ? op_table[op].flags : 0;
}

/* --- Framing ------------------------------------------------------------- */

static uint32_t load_be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 |
           (uint32_t)u[3];
}

void wire_frame_header(char out[WIRE_HEADER_LEN], uint32_t len)
{
    out[0] = (char)(len >> 24);
    out[1] = (char)(len >> 16);
    out[2] = (char)(len >> 8);
    out[3] = (char)len;
}

int wire_frame_parse(const char *buf, size_t len, const char **body,
                     size_t *body_len, size_t *frame_len)
{
    if (len < WIRE_HEADER_LEN) {
        return 0;
    }
    uint32_t n = load_be32(buf);
    if (n > WIRE_FRAME_MAX) {
        return ALLOT_ETOO_BIG;
    }
    if (len - WIRE_HEADER_LEN < n) {
        return 0;
    }
    *body = buf + WIRE_HEADER_LEN;
    *body_len = n;
    *frame_len = WIRE_HEADER_LEN + n;
    return 1;
}

void wire_rbuf_init(struct wire_rbuf *b)
{
    memset(b, 0, sizeof *b);
}

void wire_rbuf_close(struct wire_rbuf *b)
{
    free(b->base);
    memset(b, 0, sizeof *b);
}

int wire_rbuf_reserve(struct wire_rbuf *b, size_t want, char **tail,
                      size_t *avail)
{
    if (b->off > 0) {
        /* Compact: the parsed prefix is dead. Frames are small, so the move
         * is cheap next to the syscall that follows. */
        memmove(b->base, b->base + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->cap - b->len < want) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < want) {
            cap *= 2;
        }
        char *p = realloc(b->base, cap);
        if (p == NULL) {
            return ALLOT_ENOMEM;
        }
        b->base = p;
        b->cap = cap;
    }
    *tail = b->base + b->len;
    *avail = b->cap - b->len;
    return 0;
}

int wire_rbuf_next(struct wire_rbuf *b, const char **body, size_t *body_len)
{
    size_t frame_len;
    if (b->len - b->off < WIRE_HEADER_LEN) {
        return 0; /* also: base may still be NULL */
    }
    int rv = wire_frame_parse(b->base + b->off, b->len - b->off, body, body_len,
                              &frame_len);
    if (rv == 1) {
        b->off += frame_len;
        if (b->off == b->len) {
            b->off = b->len = 0;
        }
    }
    return rv;
}

/* --- Encoding ------------------------------------------------------------ */

void wire_frame_start(msgpack_sbuffer *sb, msgpack_packer *pk)
{
    static const char zero[WIRE_HEADER_LEN];
    msgpack_sbuffer_write(sb, zero, sizeof zero);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
}

int wire_frame_finish(msgpack_sbuffer *sb)
{
    size_t body = sb->size - WIRE_HEADER_LEN;
    if (body > WIRE_FRAME_MAX) {
        return ALLOT_ETOO_BIG;
    }
    wire_frame_header(sb->data, (uint32_t)body);
    return 0;
}

void wire_pack_strn(msgpack_packer *pk, const char *s, size_t len)
{
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

void wire_pack_str(msgpack_packer *pk, const char *s)
{
    wire_pack_strn(pk, s, strlen(s));
}

void wire_pack_kv_str(msgpack_packer *pk, const char *key, const char *val)
{
    wire_pack_str(pk, key);
    wire_pack_str(pk, val);
}

void wire_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t val)
{
    wire_pack_str(pk, key);
    msgpack_pack_uint64(pk, val);
}

void wire_pack_usage(msgpack_packer *pk, uint64_t admitted, uint64_t rejected,
                     uint64_t shadowed, uint64_t delayed, uint64_t cost,
                     uint64_t peak)
{
    wire_pack_kv_u64(pk, "admitted", admitted);
    wire_pack_kv_u64(pk, "rejected", rejected);
    wire_pack_kv_u64(pk, "shadowed", shadowed);
    wire_pack_kv_u64(pk, "delayed", delayed);
    wire_pack_kv_u64(pk, "cost", cost);
    wire_pack_kv_u64(pk, "peak", peak);
}

void wire_pack_error(msgpack_packer *pk, uint64_t id, int code,
                     const char *message)
{
    msgpack_pack_map(pk, 4);
    wire_pack_kv_u64(pk, "id", id);
    wire_pack_str(pk, "ok");
    msgpack_pack_false(pk);
    wire_pack_kv_str(pk, "error", allot_error_name(code));
    wire_pack_kv_str(
        pk, "message",
        message != NULL && message[0] != '\0' ? message : allot_strerror(code));
}

void wire_pack_ok_head(msgpack_packer *pk, uint64_t id)
{
    msgpack_pack_map(pk, 3);
    wire_pack_kv_u64(pk, "id", id);
    wire_pack_str(pk, "ok");
    msgpack_pack_true(pk);
    wire_pack_str(pk, "result");
}

/* --- Pre-check ------------------------------------------------------------ */

/* Size of the fixed part that follows a type byte, and for variable-length
 * types the width of the length field. Returns -1 for the reserved 0xc1. */
static int scan_header(unsigned char t, size_t *fixed, size_t *len_width,
                       int *container, uint32_t *count)
{
    *fixed = 0;
    *len_width = 0;
    *container = 0;
    *count = 0;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) {
        return 0;
    }
    if (t >= 0x80 && t <= 0x8f) {
        *container = 2;
        *count = t & 0x0fu;
        return 0;
    }
    if (t >= 0x90 && t <= 0x9f) {
        *container = 1;
        *count = t & 0x0fu;
        return 0;
    }
    if (t >= 0xa0 && t <= 0xbf) {
        *fixed = t & 0x1fu;
        return 0;
    }
    switch (t) {
    case 0xc4: /* bin8 */
    case 0xd9: /* str8 */
        *len_width = 1;
        return 0;
    case 0xc5:
    case 0xda:
        *len_width = 2;
        return 0;
    case 0xc6:
    case 0xdb:
        *len_width = 4;
        return 0;
    case 0xc7: /* ext8: len, type byte, data */
        *len_width = 1;
        *fixed = 1;
        return 0;
    case 0xc8:
        *len_width = 2;
        *fixed = 1;
        return 0;
    case 0xc9:
        *len_width = 4;
        *fixed = 1;
        return 0;
    case 0xca:
        *fixed = 4;
        return 0;
    case 0xcb:
        *fixed = 8;
        return 0;
    case 0xcc:
    case 0xd0:
        *fixed = 1;
        return 0;
    case 0xcd:
    case 0xd1:
        *fixed = 2;
        return 0;
    case 0xce:
    case 0xd2:
        *fixed = 4;
        return 0;
    case 0xcf:
    case 0xd3:
        *fixed = 8;
        return 0;
    case 0xd4:
        *fixed = 2;
        return 0;
    case 0xd5:
        *fixed = 3;
        return 0;
    case 0xd6:
        *fixed = 5;
        return 0;
    case 0xd7:
        *fixed = 9;
        return 0;
    case 0xd8:
        *fixed = 17;
        return 0;
    case 0xdc:
        *container = 1;
        *len_width = 2;
        return 0;
    case 0xdd:
        *container = 1;
        *len_width = 4;
        return 0;
    case 0xde:
        *container = 2;
        *len_width = 2;
        return 0;
    case 0xdf:
        *container = 2;
        *len_width = 4;
        return 0;
    default: /* 0xc1 is never used */
        return -1;
    }
}

int wire_check_prefix(const char *data, size_t len, size_t *used, char *errmsg)
{
    /* pending[d]: values still expected at depth d. */
    uint64_t pending[WIRE_MAX_DEPTH + 1];
    unsigned depth = 0;
    size_t pos = 0;
    pending[0] = 1;

    while (depth > 0 || pending[0] > 0) {
        if (pending[depth] == 0) {
            depth--;
            continue;
        }
        if (pos >= len) {
            return allot_errf(errmsg, ALLOT_EPROTOCOL,
                              "truncated msgpack value at byte %zu", pos);
        }
        unsigned char t = (unsigned char)data[pos++];
        size_t fixed, width;
        int container;
        uint32_t count;
        if (scan_header(t, &fixed, &width, &container, &count) != 0) {
            return allot_errf(errmsg, ALLOT_EPROTOCOL,
                              "reserved msgpack type 0x%02x at byte %zu", t,
                              pos - 1);
        }
        uint64_t n = 0;
        if (width > 0) {
            if (len - pos < width) {
                return allot_errf(errmsg, ALLOT_EPROTOCOL,
                                  "truncated msgpack length at byte %zu", pos);
            }
            for (size_t i = 0; i < width; i++) {
                n = n << 8 | (unsigned char)data[pos + i];
            }
            pos += width;
        }
        pending[depth]--;
        if (container) {
            uint64_t elems = width > 0 ? n : count;
            if (container == 2) {
                elems *= 2;
            }
            /* Every element takes at least one byte: a count larger than
             * what is left is a lie, refused before anyone allocates. */
            if (elems > len - pos) {
                return allot_errf(errmsg, ALLOT_EPROTOCOL,
                                  "msgpack container at byte %zu declares %llu "
                                  "elements but only %zu bytes remain",
                                  pos, (unsigned long long)elems, len - pos);
            }
            if (elems > 0) {
                if (depth == WIRE_MAX_DEPTH) {
                    return allot_errf(errmsg, ALLOT_EPROTOCOL,
                                      "msgpack nested deeper than %d",
                                      WIRE_MAX_DEPTH);
                }
                pending[++depth] = elems;
            }
            continue;
        }
        uint64_t skip = fixed + n;
        if (skip > len - pos) {
            return allot_errf(errmsg, ALLOT_EPROTOCOL,
                              "truncated msgpack value at byte %zu", pos);
        }
        pos += skip;
    }
    *used = pos;
    return 0;
}

int wire_check(const char *data, size_t len, char *errmsg)
{
    size_t used;
    int rv = wire_check_prefix(data, len, &used, errmsg);
    if (rv == 0 && used != len) {
        return allot_errf(errmsg, ALLOT_EPROTOCOL,
                          "%zu trailing bytes after msgpack value", len - used);
    }
    return rv;
}

int wire_unpack(const char *data, size_t len, msgpack_unpacked *out,
                char *errmsg)
{
    int rv = wire_check(data, len, errmsg);
    if (rv != 0) {
        return rv;
    }
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(out, data, len, &off);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        return allot_errf(errmsg, ALLOT_ENOMEM, "out of memory decoding");
    }
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        return allot_errf(errmsg, ALLOT_EPROTOCOL, "malformed msgpack value");
    }
    return 0;
}

/* --- Field readers ---------------------------------------------------------
 */

bool wire_str_eq(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

const msgpack_object *wire_map_get(const msgpack_object *map, const char *key)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) {
        return NULL;
    }
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        if (wire_str_eq(&map->via.map.ptr[i].key, key)) {
            return &map->via.map.ptr[i].val;
        }
    }
    return NULL;
}

static int field_lookup(const msgpack_object *map, const char *key,
                        bool required, const msgpack_object **out, char *errmsg)
{
    *out = wire_map_get(map, key);
    if (*out != NULL) {
        return 0;
    }
    if (required) {
        return allot_errf(errmsg, ALLOT_EINVALID, "missing field %s", key);
    }
    return ALLOT_ENOT_FOUND;
}

int wire_get_u64(const msgpack_object *map, const char *key, bool required,
                 uint64_t *out, char *errmsg)
{
    const msgpack_object *o;
    int rv = field_lookup(map, key, required, &o, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "field %s must be a non-negative integer", key);
    }
    *out = o->via.u64;
    return 0;
}

int wire_get_bool(const msgpack_object *map, const char *key, bool required,
                  bool *out, char *errmsg)
{
    const msgpack_object *o;
    int rv = field_lookup(map, key, required, &o, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (o->type != MSGPACK_OBJECT_BOOLEAN) {
        return allot_errf(errmsg, ALLOT_EINVALID, "field %s must be a boolean",
                          key);
    }
    *out = o->via.boolean;
    return 0;
}

int wire_get_double(const msgpack_object *map, const char *key, bool required,
                    double *out, char *errmsg)
{
    const msgpack_object *o;
    int rv = field_lookup(map, key, required, &o, errmsg);
    if (rv != 0) {
        return rv;
    }
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = o->via.f64;
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = (double)o->via.u64;
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (double)o->via.i64;
        return 0;
    default:
        return allot_errf(errmsg, ALLOT_EINVALID, "field %s must be a number",
                          key);
    }
}

int wire_get_str(const msgpack_object *map, const char *key, bool required,
                 const char **out, size_t *len, char *errmsg)
{
    const msgpack_object *o;
    int rv = field_lookup(map, key, required, &o, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (o->type != MSGPACK_OBJECT_STR) {
        return allot_errf(errmsg, ALLOT_EINVALID, "field %s must be a string",
                          key);
    }
    *out = o->via.str.ptr;
    *len = o->via.str.size;
    return 0;
}

int wire_get_map(const msgpack_object *map, const char *key, bool required,
                 const msgpack_object **out, char *errmsg)
{
    const msgpack_object *o;
    int rv = field_lookup(map, key, required, &o, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (o->type != MSGPACK_OBJECT_MAP) {
        return allot_errf(errmsg, ALLOT_EINVALID, "field %s must be a map",
                          key);
    }
    *out = o;
    return 0;
}

/* --- Envelopes ---------------------------------------------------------------
 */

int wire_request_decode(const msgpack_object *root, struct wire_request *req,
                        char *errmsg)
{
    memset(req, 0, sizeof *req);
    if (root->type != MSGPACK_OBJECT_MAP) {
        return allot_errf(errmsg, ALLOT_EINVALID, "request must be a map");
    }
    int rv = wire_get_u64(root, "id", true, &req->id, errmsg);
    if (rv != 0) {
        return rv;
    }
    const char *op;
    size_t op_len;
    rv = wire_get_str(root, "op", true, &op, &op_len, errmsg);
    if (rv != 0) {
        return rv;
    }
    req->op = wire_op_from_name(op, op_len);
    if (req->op == WIRE_OP_UNKNOWN) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "unknown operation \"%.*s\" (see docs/protocol.md)",
                          (int)(op_len > 64 ? 64 : op_len), op);
    }
    rv = wire_get_map(root, "args", false, &req->args, errmsg);
    if (rv != 0 && rv != ALLOT_ENOT_FOUND) {
        return rv;
    }
    req->body = wire_map_get(root, "body");
    req->auth = wire_map_get(root, "auth");
    if (req->body != NULL && req->body->type != MSGPACK_OBJECT_BIN) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "field body must be binary (the encoded args)");
    }
    if (req->body != NULL && req->args != NULL) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "give args or body, not both");
    }
    if ((req->auth != NULL) != (req->body != NULL)) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "a signed request has both body and auth");
    }
    const char *names[] = {"client", "seq", "ack"};
    uint64_t *dst[] = {&req->client, &req->seq, &req->ack};
    for (int i = 0; i < 3; i++) {
        rv = wire_get_u64(root, names[i], false, dst[i], errmsg);
        if (rv != 0 && rv != ALLOT_ENOT_FOUND) {
            return rv;
        }
    }
    rv = wire_get_bool(root, "fwd", false, &req->forwarded, errmsg);
    if (rv != 0 && rv != ALLOT_ENOT_FOUND) {
        return rv;
    }
    if ((wire_op_flags(req->op) & WIRE_OP_WRITE) && req->client != 0 &&
        req->seq == 0) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "a write with a client id needs seq >= 1");
    }
    return 0;
}

int wire_reply_decode(const msgpack_object *root, struct wire_reply *rep,
                      char *errmsg)
{
    memset(rep, 0, sizeof *rep);
    if (root->type != MSGPACK_OBJECT_MAP) {
        return allot_errf(errmsg, ALLOT_EPROTOCOL, "reply must be a map");
    }
    int rv = wire_get_u64(root, "id", true, &rep->id, errmsg);
    if (rv != 0) {
        return ALLOT_EPROTOCOL;
    }
    bool ok;
    rv = wire_get_bool(root, "ok", true, &ok, errmsg);
    if (rv != 0) {
        return ALLOT_EPROTOCOL;
    }
    if (ok) {
        rep->result = wire_map_get(root, "result");
        return 0;
    }
    const char *name;
    size_t name_len;
    rv = wire_get_str(root, "error", true, &name, &name_len, errmsg);
    if (rv != 0) {
        return ALLOT_EPROTOCOL;
    }
    rep->code = allot_error_from_name(name, name_len);
    rv = wire_get_str(root, "message", false, &rep->message, &rep->message_len,
                      errmsg);
    if (rv != 0 && rv != ALLOT_ENOT_FOUND) {
        return ALLOT_EPROTOCOL;
    }
    return 0;
}
