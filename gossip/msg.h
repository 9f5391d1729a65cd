/* msg.h - gossip message formats (private).
 *
 * A datagram or stream message, once opened (crypt.h), is one or more
 * messages back to back, each
 *
 *   u8 type | uvarint body length | body
 *
 * so a reader can bound every body before looking inside it, and a member
 * can skip a type it does not know (a newer peer's). Bodies are fields in a
 * fixed order: uvarint integers, blobs (uvarint length + bytes), addresses
 * (4 bytes IPv4 + 2 bytes port, big-endian), single bytes. The layout of
 * each type is in docs/gossip.md and next to its struct below.
 *
 * Decoders check every length against what is left and against the limits
 * in gossip.h, check names are printable, and never allocate: strings and
 * blobs point into the input. gmsg_validate() decodes every message of a
 * buffer, so a caller can refuse a buffer whole before acting on any of it.
 *
 * Why not msgpack: a datagram is filled with as many piggybacked messages
 * as fit, which needs the exact encoded size of each; the formats are small
 * and fixed, and a hand-written bounded reader has no allocation to guard
 * (msgpack-c's unpacker needs proto's wire_check first). */
#ifndef ALLOT_GOSSIP_MSG_H
#define ALLOT_GOSSIP_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "gossip.h"

enum gmsg_type {
    GMSG_PING = 1,
    GMSG_PING_REQ = 2,
    GMSG_ACK = 3,
    GMSG_NACK = 4,
    GMSG_ALIVE = 5,
    GMSG_SUSPECT = 6,
    GMSG_DEAD = 7,
    GMSG_USER = 8,
    GMSG_KEYED = 9,
    GMSG_DIRECT = 10,
    GMSG_PUSHPULL = 11,
    GMSG_KEY_CMD = 12,
    GMSG_KEY_REPLY = 13,
};

/* A string in a message (not NUL-terminated). */
struct gmsg_str
{
    const char *p;
    size_t len;
};

/* PING: seq, target name, source name, source address (acks go there). */
struct gmsg_ping
{
    uint32_t seq;
    struct gmsg_str target;
    struct gmsg_str source;
    struct gossip_addr source_addr;
};

/* PING_REQ: seq, target name, target address, u8 want_nack, source name,
 * source address. */
struct gmsg_ping_req
{
    uint32_t seq;
    struct gmsg_str target;
    struct gossip_addr target_addr;
    bool want_nack;
    struct gmsg_str source;
    struct gossip_addr source_addr;
};

/* ACK and NACK: seq. */
struct gmsg_ack
{
    uint32_t seq;
};

/* ALIVE: incarnation, name, address, u8 role, weight, fleet, app blob.
 * Push-pull member entries are a u8 state followed by the same fields. */
struct gmsg_alive
{
    uint64_t inc;
    struct gmsg_str name;
    struct gossip_addr addr;
    uint8_t role;
    uint32_t weight;
    struct gmsg_str fleet;
    const uint8_t *app;
    size_t app_len;
};

/* SUSPECT and DEAD: incarnation, name, from (who accuses; DEAD with from ==
 * name means the member left). */
struct gmsg_suspect
{
    uint64_t inc;
    struct gmsg_str name;
    struct gmsg_str from;
};

/* USER: a random 64-bit id, payload blob. */
struct gmsg_user
{
    uint64_t id;
    const uint8_t *payload;
    size_t len;
};

/* KEYED: key, version, payload blob. */
struct gmsg_keyed
{
    struct gmsg_str key;
    uint64_t version;
    const uint8_t *payload;
    size_t len;
};

/* DIRECT: from name, payload blob (<= GOSSIP_MESSAGE_MAX). */
struct gmsg_direct
{
    struct gmsg_str from;
    const uint8_t *payload;
    size_t len;
};

#define GMSG_PP_JOIN  1u
#define GMSG_PP_REPLY 2u

/* PUSHPULL (streams only): u8 flags, from name, from address,
 * uvarint n_members, n_members entries (u8 state + ALIVE fields),
 * uvarint n_keyed, n_keyed entries (KEYED fields), app blob.
 * Decoding walks and checks every entry; the sections are kept as readers
 * for gmsg_pp_next_member() / gmsg_pp_next_keyed(). */
struct gmsg_pushpull
{
    uint8_t flags;
    struct gmsg_str from;
    struct gossip_addr from_addr;
    uint64_t n_members;
    uint64_t n_keyed;
    struct gbuf_r members;
    struct gbuf_r keyed;
    const uint8_t *app;
    size_t app_len;
};

/* KEY_CMD: a keyring command for every member (gossip_key_cmd):
 * uvarint id, u8 flags, origin name, origin address, u8 op
 * (enum gossip_key_op), 8-byte reply key id, key blob (0 bytes for LIST, 32
 * otherwise). The reply key id names the originator's primary key
 * (gcrypt_key_id), so each member seals its reply with a key the originator
 * holds, whichever key carried the command to it. */
#define GMSG_KC_RETRY   1u /* sent directly to a member that has not answered */
#define GMSG_KEY_ID_LEN 8u
struct gmsg_key_cmd
{
    uint64_t id;
    uint8_t flags;
    struct gmsg_str origin;
    struct gossip_addr origin_addr;
    uint8_t op;
    const uint8_t *reply_key_id; /* GMSG_KEY_ID_LEN bytes */
    const uint8_t *key;          /* GOSSIP_KEY_SIZE bytes; NULL for LIST */
};

/* KEY_REPLY: uvarint id, from name, uvarint status (0 or minus an ALLOT_E
 * code, <= 255), error text (0..GOSSIP_KEYCMD_ERROR_MAX - 1 bytes of
 * 0x20-0x7e), u8 n_keys (<= GOSSIP_KEYRING_MAX), n_keys * 32 bytes of keys,
 * the first one primary (LIST replies only; others carry none). */
struct gmsg_key_reply
{
    uint64_t id;
    struct gmsg_str from;
    int status;
    struct gmsg_str error;
    unsigned n_keys;
    const uint8_t *keys; /* n_keys * GOSSIP_KEY_SIZE bytes */
};

/* --- Encoding: each appends one whole message to w (w->failed when it
 * does not fit). Strings are NUL-terminated or given with a length. */

void gmsg_put_ping(struct gbuf_w *w, uint32_t seq, const char *target,
                   const char *source, const struct gossip_addr *source_addr);
void gmsg_put_ping_req(struct gbuf_w *w, uint32_t seq, const char *target,
                       const struct gossip_addr *target_addr, bool want_nack,
                       const char *source,
                       const struct gossip_addr *source_addr);
void gmsg_put_ack(struct gbuf_w *w, enum gmsg_type type, uint32_t seq);
void gmsg_put_alive(struct gbuf_w *w, const struct gmsg_alive *a);
void gmsg_put_suspect(struct gbuf_w *w, enum gmsg_type type, uint64_t inc,
                      const char *name, const char *from);
void gmsg_put_user(struct gbuf_w *w, uint64_t id, const void *p, size_t len);
void gmsg_put_keyed(struct gbuf_w *w, const char *key, size_t key_len,
                    uint64_t version, const void *p, size_t len);
void gmsg_put_direct(struct gbuf_w *w, const char *from, const void *p,
                     size_t len);
/* key is NULL for LIST. */
void gmsg_put_key_cmd(struct gbuf_w *w, uint64_t id, uint8_t flags,
                      const char *origin, const struct gossip_addr *origin_addr,
                      uint8_t op, const uint8_t reply_key_id[GMSG_KEY_ID_LEN],
                      const uint8_t *key);
/* error may be NULL; keys holds n_keys keys, primary first. */
void gmsg_put_key_reply(struct gbuf_w *w, uint64_t id, const char *from,
                        int status, const char *error, const uint8_t *keys,
                        unsigned n_keys);

/* Push-pull is written in parts: head, the member entries, the keyed
 * entries, then the tail with the app blob; counts come first, so the
 * caller knows them before it starts. */
size_t gmsg_pp_begin(struct gbuf_w *w, uint8_t flags, const char *from,
                     const struct gossip_addr *from_addr, uint64_t n_members);
void gmsg_pp_put_member(struct gbuf_w *w, uint8_t state,
                        const struct gmsg_alive *a);
void gmsg_pp_keyed_count(struct gbuf_w *w, uint64_t n_keyed);
void gmsg_pp_put_keyed(struct gbuf_w *w, const char *key, size_t key_len,
                       uint64_t version, const void *p, size_t len);
void gmsg_pp_end(struct gbuf_w *w, size_t body_start, const void *app,
                 size_t app_len);

/* --- Decoding ----------------------------------------------------------- */

/* Next message of r: 1 with its type and a reader over its body, 0 at the
 * end, ALLOT_EPROTOCOL when the framing is broken. */
int gmsg_next(struct gbuf_r *r, uint8_t *type, struct gbuf_r *body);

/* Decode one body. 0, or ALLOT_EPROTOCOL when it is truncated, a field is
 * out of its bounds or a name is not printable. Trailing bytes in a body
 * are allowed (fields a newer version appends). */
int gmsg_get_ping(struct gbuf_r *body, struct gmsg_ping *m);
int gmsg_get_ping_req(struct gbuf_r *body, struct gmsg_ping_req *m);
int gmsg_get_ack(struct gbuf_r *body, struct gmsg_ack *m);
int gmsg_get_alive(struct gbuf_r *body, struct gmsg_alive *m);
int gmsg_get_suspect(struct gbuf_r *body, struct gmsg_suspect *m);
int gmsg_get_user(struct gbuf_r *body, struct gmsg_user *m);
int gmsg_get_keyed(struct gbuf_r *body, struct gmsg_keyed *m);
int gmsg_get_direct(struct gbuf_r *body, struct gmsg_direct *m);
int gmsg_get_pushpull(struct gbuf_r *body, struct gmsg_pushpull *m);
int gmsg_get_key_cmd(struct gbuf_r *body, struct gmsg_key_cmd *m);
int gmsg_get_key_reply(struct gbuf_r *body, struct gmsg_key_reply *m);
/* Iterate a decoded push-pull (already checked): 1 with the next entry, 0
 * at the end of the section. */
int gmsg_pp_next_member(struct gmsg_pushpull *m, uint8_t *state,
                        struct gmsg_alive *a);
int gmsg_pp_next_keyed(struct gmsg_pushpull *m, struct gmsg_keyed *k);

/* Decode every message in buf (0 when all are well-formed and there is at
 * least one; ALLOT_EPROTOCOL otherwise). stream says whether the buffer came
 * on a stream: PUSHPULL is refused in datagrams. */
int gmsg_validate(const uint8_t *buf, size_t len, bool stream);

/* Equal to a NUL-terminated string. */
bool gmsg_str_eq(struct gmsg_str s, const char *z);

#endif /* ALLOT_GOSSIP_MSG_H */
