/* wire.h - allot's client protocol: frames, msgpack helpers, operations.
 *
 * A frame is a 4-byte big-endian body length followed by that many bytes of
 * one msgpack value (docs/protocol.md). Requests and replies are maps:
 *
 *   request: {"id": u64, "op": str, "args": map,
 *             "client": u64, "seq": u64, "ack": u64}   (last three: writes)
 *   signed:  the same with "body": bin (the args map, encoded) instead of
 *            "args", and "auth": {"principal","ts","nonce","sig"} (auth.h)
 *   reply:   {"id": u64, "ok": true,  "result": value}
 *            {"id": u64, "ok": false, "error": code name, "message": str}
 *
 * Every decoder here checks bounds and types before it trusts a byte: msgpack
 * input is first walked by wire_check(), which refuses containers that
 * declare more elements than bytes remain and nesting deeper than
 * WIRE_MAX_DEPTH. Only then is it handed to msgpack-c, whose unpacker would
 * otherwise allocate whatever a 5-byte header asks for. */
#ifndef ALLOT_WIRE_H
#define ALLOT_WIRE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "allot_error.h"

/* Largest frame body a peer may send. Big enough for a page of 1,000 quotas,
 * small enough that a hostile length costs at most this much memory. */
#define WIRE_FRAME_MAX  (1u << 20)
#define WIRE_HEADER_LEN 4u
/* Deepest nesting accepted in a msgpack value. */
#define WIRE_MAX_DEPTH 16

/* Operations. Flags say where an operation runs:
 *   LOCAL  - answered by the node that received it, from its own view;
 *   READ   - linearizable read, served by the leader after a barrier;
 *   WRITE  - replicated command, deduplicated by (client, seq);
 *   ADMIN  - membership change, run by the leader (not deduplicated: each
 *            is idempotent in effect and reports the resulting state). */
enum wire_op_flags {
    WIRE_OP_LOCAL = 1,
    WIRE_OP_READ = 2,
    WIRE_OP_WRITE = 4,
    WIRE_OP_ADMIN = 8,
};

#define WIRE_OP_MAP(X)                                     \
    X(PING, "ping", WIRE_OP_LOCAL)                         \
    X(CLUSTER_STATUS, "cluster.status", WIRE_OP_LOCAL)     \
    X(CLUSTER_ADD, "cluster.add", WIRE_OP_ADMIN)           \
    X(CLUSTER_REMOVE, "cluster.remove", WIRE_OP_ADMIN)     \
    X(CLUSTER_TRANSFER, "cluster.transfer", WIRE_OP_ADMIN) \
    X(QUOTA_SET, "quota.set", WIRE_OP_WRITE)               \
    X(QUOTA_RM, "quota.rm", WIRE_OP_WRITE)                 \
    X(QUOTA_GET, "quota.get", WIRE_OP_READ)                \
    X(QUOTA_LS, "quota.ls", WIRE_OP_READ)                  \
    X(CAPACITY_SET, "capacity.set", WIRE_OP_WRITE)         \
    X(CAPACITY_GET, "capacity.get", WIRE_OP_READ)          \
    X(AUDIT_LS, "audit.ls", WIRE_OP_READ)                  \
    X(AUDIT_CONFIG, "audit.config", WIRE_OP_WRITE)         \
    X(PRINCIPAL_ADD, "principal.add", WIRE_OP_WRITE)       \
    X(PRINCIPAL_RM, "principal.rm", WIRE_OP_WRITE)         \
    X(PRINCIPAL_LS, "principal.ls", WIRE_OP_READ)          \
    X(GROUP_ADD, "group.add", WIRE_OP_WRITE)               \
    X(GROUP_RM, "group.rm", WIRE_OP_WRITE)                 \
    X(GROUP_LS, "group.ls", WIRE_OP_READ)                  \
    X(QUOTA_WATCH, "quota.watch", WIRE_OP_LOCAL)           \
    X(TOKEN_CREATE, "token.create", WIRE_OP_WRITE)         \
    X(TOKEN_REVOKE, "token.revoke", WIRE_OP_WRITE)         \
    X(TOKEN_LS, "token.ls", WIRE_OP_READ)                  \
    X(VALIDATOR_ADD, "validator.add", WIRE_OP_WRITE)       \
    X(VALIDATOR_RM, "validator.rm", WIRE_OP_WRITE)         \
    X(VALIDATOR_LS, "validator.ls", WIRE_OP_READ)          \
    X(GOSSIP_MEMBERS, "gossip.members", WIRE_OP_LOCAL)     \
    X(GOSSIP_KEYS, "gossip.keys", WIRE_OP_LOCAL)           \
    X(USAGE_REPORT, "usage.report", WIRE_OP_READ)          \
    X(USAGE_LS, "usage.ls", WIRE_OP_READ)                  \
    X(SHARE_SHOW, "share.show", WIRE_OP_LOCAL)

enum wire_op {
    WIRE_OP_UNKNOWN = 0,
#define WIRE__OP_ENUM(name, str, flags) WIRE_OP_##name,
    WIRE_OP_MAP(WIRE__OP_ENUM)
#undef WIRE__OP_ENUM
        WIRE_OP_COUNT
};

/* Operation for a name, WIRE_OP_UNKNOWN if there is none. */
enum wire_op wire_op_from_name(const char *name, size_t len);
const char *wire_op_name(enum wire_op op);
unsigned wire_op_flags(enum wire_op op);

/* --- Framing ------------------------------------------------------------ */

/* Look for one frame at the start of buf[0..len).
 * Returns 1 and sets *body, *body_len and *frame_len when a whole frame is
 * there; 0 when more bytes are needed; ALLOT_ETOO_BIG when the header
 * announces a body larger than WIRE_FRAME_MAX (the stream cannot be resynced:
 * close the connection). */
int wire_frame_parse(const char *buf, size_t len, const char **body,
                     size_t *body_len, size_t *frame_len);

/* Write the 4-byte header for a body of len bytes into out[0..4). */
void wire_frame_header(char out[WIRE_HEADER_LEN], uint32_t len);

/* A growable receive buffer for a stream connection. Bytes [off, len) are
 * unparsed. Owned by the connection; wire_rbuf_close() frees it. */
struct wire_rbuf
{
    char *base;
    size_t off;
    size_t len;
    size_t cap;
};

void wire_rbuf_init(struct wire_rbuf *b);
void wire_rbuf_close(struct wire_rbuf *b);
/* Ensure at least `want` free bytes at the tail (compacting first); sets
 * tail and avail to the free region. ALLOT_ENOMEM on allocation failure. */
int wire_rbuf_reserve(struct wire_rbuf *b, size_t want, char **tail,
                      size_t *avail);
/* Next whole frame in the buffer, as wire_frame_parse(); on 1 the frame is
 * consumed (the body pointer stays valid until the next reserve). */
int wire_rbuf_next(struct wire_rbuf *b, const char **body, size_t *body_len);

/* --- Encoding ----------------------------------------------------------- */

/* A frame being built: a msgpack_sbuffer whose first 4 bytes are the header,
 * filled in by wire_frame_finish(). */
void wire_frame_start(msgpack_sbuffer *sb, msgpack_packer *pk);
/* Fill in the header. ALLOT_ETOO_BIG if the body exceeds WIRE_FRAME_MAX. */
int wire_frame_finish(msgpack_sbuffer *sb);

void wire_pack_str(msgpack_packer *pk, const char *s);
void wire_pack_strn(msgpack_packer *pk, const char *s, size_t len);
/* Pack "key" then the string value. */
void wire_pack_kv_str(msgpack_packer *pk, const char *key, const char *val);
void wire_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t val);
/* The six usage counters of one rule as key/value pairs (no map header):
 * the shape usage.report, usage.ls and the agent's stats share. */
void wire_pack_usage(msgpack_packer *pk, uint64_t admitted, uint64_t rejected,
                     uint64_t shadowed, uint64_t delayed, uint64_t cost,
                     uint64_t peak);

/* Start an error reply {"id","ok":false,"error","message"} (complete map). */
void wire_pack_error(msgpack_packer *pk, uint64_t id, int code,
                     const char *message);
/* Start a success reply: packs {"id", "ok": true, "result": and leaves the
 * result value for the caller to pack. */
void wire_pack_ok_head(msgpack_packer *pk, uint64_t id);

/* --- Decoding ----------------------------------------------------------- */

/* Check that data[0..len) holds exactly one well-formed msgpack value within
 * the limits above. ALLOT_EPROTOCOL (with a message) if not. */
int wire_check(const char *data, size_t len, char *errmsg);

/* Like wire_check() for the first value in data[0..len): sets *used to its
 * length and leaves what follows to the caller. */
int wire_check_prefix(const char *data, size_t len, size_t *used, char *errmsg);

/* wire_check() then unpack into *out (which the caller initialized with
 * msgpack_unpacked_init and destroys with msgpack_unpacked_destroy). */
int wire_unpack(const char *data, size_t len, msgpack_unpacked *out,
                char *errmsg);

/* Value for `key` in a map object, NULL if absent or obj is not a map. */
const msgpack_object *wire_map_get(const msgpack_object *map, const char *key);

/* Typed field readers. Each returns 0 and sets *out; when the key is absent
 * returns ALLOT_ENOT_FOUND if !required (leaving *out alone) or ALLOT_EINVALID
 * with "missing field KEY" if required; wrong type is ALLOT_EINVALID with a
 * message naming the field and the expected type. */
int wire_get_u64(const msgpack_object *map, const char *key, bool required,
                 uint64_t *out, char *errmsg);
int wire_get_bool(const msgpack_object *map, const char *key, bool required,
                  bool *out, char *errmsg);
int wire_get_double(const msgpack_object *map, const char *key, bool required,
                    double *out, char *errmsg);
/* The string is not NUL-terminated: it points into the unpacked object. */
int wire_get_str(const msgpack_object *map, const char *key, bool required,
                 const char **out, size_t *len, char *errmsg);
int wire_get_map(const msgpack_object *map, const char *key, bool required,
                 const msgpack_object **out, char *errmsg);

/* memcpy for msgpack strings and binaries: msgpack-c gives an empty one a
 * NULL pointer, which memcpy must not see even with n == 0. */
static inline void wire_memcpy(void *dst, const void *src, size_t n)
{
    if (n > 0) {
        memcpy(dst, src, n);
    }
}

/* Object equals the string s. */
bool wire_str_eq(const msgpack_object *o, const char *s);

/* Decoded request envelope. Pointers point into the unpacked object. */
struct wire_request
{
    uint64_t id;
    enum wire_op op;
    const msgpack_object *args; /* a map, or NULL when absent */
    const msgpack_object *body; /* signed requests: bin holding the args */
    const msgpack_object *auth; /* signed requests: the claim map */
    uint64_t client;            /* 0: no dedup information */
    uint64_t seq;
    uint64_t ack;
    bool forwarded; /* sent by a follower on a client's behalf */
};

/* Decode the envelope of a request. On error, *id is still set when the id
 * could be read, so the reply can carry it. */
int wire_request_decode(const msgpack_object *root, struct wire_request *req,
                        char *errmsg);

/* Decoded reply envelope. */
struct wire_reply
{
    uint64_t id;
    int code;            /* 0 or ALLOT_E... */
    const char *message; /* not NUL-terminated */
    size_t message_len;
    const msgpack_object *result; /* NULL on error */
};

int wire_reply_decode(const msgpack_object *root, struct wire_reply *rep,
                      char *errmsg);

#endif /* ALLOT_WIRE_H */
