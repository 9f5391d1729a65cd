/* msg.c - gossip message encoders and bounded decoders (see msg.h).
 *
 * Happy path: an encoder writes the type, leaves room for the length,
 * writes the body and then moves the body down behind the shortest varint
 * of its length. A decoder reads the type and length with gmsg_next(), gets
 * a reader over exactly that body, and reads fields in order.
 *
 * Failure modes (all ALLOT_EPROTOCOL, nothing allocated, nothing changed):
 * a length past the end of the buffer; a varint longer than 10 bytes or
 * above a field's bound (seq > 2^32-1, weight > 2^32-1); a blob over its
 * limit; an empty or non-printable name; an unknown role or state; a
 * push-pull whose entry count is larger than the bytes could hold; a key
 * command with an unknown op or flag or a key of the wrong length for its
 * op; a key reply with more keys than a keyring holds, a status beyond 255
 * or error text that is not printable. */
#include "msg.h"

#include <string.h>

#include "../proto/allot_error.h"

/* Room left for a body's length: 5 varint bytes cover 2^35, beyond any
 * limit in gossip.h. */
#define LEN_ROOM 5

static size_t begin(struct gbuf_w *w, uint8_t type)
{
    gbuf_put_u8(w, type);
    gbuf_reserve(w, LEN_ROOM);
    return w->len;
}

static void end(struct gbuf_w *w, size_t body_start)
{
    if (w->failed) {
        return;
    }
    size_t body = w->len - body_start;
    uint8_t tmp[10];
    size_t n = 0;
    uint64_t v = body;
    while (v >= 0x80) {
        tmp[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    tmp[n++] = (uint8_t)v;
    uint8_t *len_at = w->p + body_start - LEN_ROOM;
    memcpy(len_at, tmp, n);
    memmove(len_at + n, w->p + body_start, body);
    w->len -= LEN_ROOM - n;
}

static void put_str(struct gbuf_w *w, const char *s)
{
    gbuf_put_blob(w, s, strlen(s));
}

void gmsg_put_ping(struct gbuf_w *w, uint32_t seq, const char *target,
                   const char *source, const struct gossip_addr *source_addr)
{
    size_t b = begin(w, GMSG_PING);
    gbuf_put_uvarint(w, seq);
    put_str(w, target);
    put_str(w, source);
    gbuf_put_addr(w, source_addr);
    end(w, b);
}

void gmsg_put_ping_req(struct gbuf_w *w, uint32_t seq, const char *target,
                       const struct gossip_addr *target_addr, bool want_nack,
                       const char *source,
                       const struct gossip_addr *source_addr)
{
    size_t b = begin(w, GMSG_PING_REQ);
    gbuf_put_uvarint(w, seq);
    put_str(w, target);
    gbuf_put_addr(w, target_addr);
    gbuf_put_u8(w, want_nack ? 1 : 0);
    put_str(w, source);
    gbuf_put_addr(w, source_addr);
    end(w, b);
}

void gmsg_put_ack(struct gbuf_w *w, enum gmsg_type type, uint32_t seq)
{
    size_t b = begin(w, (uint8_t)type);
    gbuf_put_uvarint(w, seq);
    end(w, b);
}

static void put_alive_fields(struct gbuf_w *w, const struct gmsg_alive *a)
{
    gbuf_put_uvarint(w, a->inc);
    gbuf_put_blob(w, a->name.p, a->name.len);
    gbuf_put_addr(w, &a->addr);
    gbuf_put_u8(w, a->role);
    gbuf_put_uvarint(w, a->weight);
    gbuf_put_blob(w, a->fleet.p, a->fleet.len);
    gbuf_put_blob(w, a->app, a->app_len);
}

void gmsg_put_alive(struct gbuf_w *w, const struct gmsg_alive *a)
{
    size_t b = begin(w, GMSG_ALIVE);
    put_alive_fields(w, a);
    end(w, b);
}

void gmsg_put_suspect(struct gbuf_w *w, enum gmsg_type type, uint64_t inc,
                      const char *name, const char *from)
{
    size_t b = begin(w, (uint8_t)type);
    gbuf_put_uvarint(w, inc);
    put_str(w, name);
    put_str(w, from);
    end(w, b);
}

void gmsg_put_user(struct gbuf_w *w, uint64_t id, const void *p, size_t len)
{
    size_t b = begin(w, GMSG_USER);
    gbuf_put_uvarint(w, id);
    gbuf_put_blob(w, p, len);
    end(w, b);
}

static void put_keyed_fields(struct gbuf_w *w, const char *key, size_t key_len,
                             uint64_t version, const void *p, size_t len)
{
    gbuf_put_blob(w, key, key_len);
    gbuf_put_uvarint(w, version);
    gbuf_put_blob(w, p, len);
}

void gmsg_put_keyed(struct gbuf_w *w, const char *key, size_t key_len,
                    uint64_t version, const void *p, size_t len)
{
    size_t b = begin(w, GMSG_KEYED);
    put_keyed_fields(w, key, key_len, version, p, len);
    end(w, b);
}

void gmsg_put_direct(struct gbuf_w *w, const char *from, const void *p,
                     size_t len)
{
    size_t b = begin(w, GMSG_DIRECT);
    put_str(w, from);
    gbuf_put_blob(w, p, len);
    end(w, b);
}

void gmsg_put_key_cmd(struct gbuf_w *w, uint64_t id, uint8_t flags,
                      const char *origin, const struct gossip_addr *origin_addr,
                      uint8_t op, const uint8_t reply_key_id[GMSG_KEY_ID_LEN],
                      const uint8_t *key)
{
    size_t b = begin(w, GMSG_KEY_CMD);
    gbuf_put_uvarint(w, id);
    gbuf_put_u8(w, flags);
    put_str(w, origin);
    gbuf_put_addr(w, origin_addr);
    gbuf_put_u8(w, op);
    gbuf_put_bytes(w, reply_key_id, GMSG_KEY_ID_LEN);
    gbuf_put_blob(w, key, key != NULL ? GOSSIP_KEY_SIZE : 0);
    end(w, b);
}

void gmsg_put_key_reply(struct gbuf_w *w, uint64_t id, const char *from,
                        int status, const char *error, const uint8_t *keys,
                        unsigned n_keys)
{
    size_t b = begin(w, GMSG_KEY_REPLY);
    gbuf_put_uvarint(w, id);
    put_str(w, from);
    gbuf_put_uvarint(w, (uint64_t)(status < 0 ? -(int64_t)status : 0));
    put_str(w, error != NULL ? error : "");
    gbuf_put_u8(w, (uint8_t)n_keys);
    gbuf_put_bytes(w, keys, (size_t)n_keys * GOSSIP_KEY_SIZE);
    end(w, b);
}

size_t gmsg_pp_begin(struct gbuf_w *w, uint8_t flags, const char *from,
                     const struct gossip_addr *from_addr, uint64_t n_members)
{
    size_t b = begin(w, GMSG_PUSHPULL);
    gbuf_put_u8(w, flags);
    put_str(w, from);
    gbuf_put_addr(w, from_addr);
    gbuf_put_uvarint(w, n_members);
    return b;
}

void gmsg_pp_put_member(struct gbuf_w *w, uint8_t state,
                        const struct gmsg_alive *a)
{
    gbuf_put_u8(w, state);
    put_alive_fields(w, a);
}

void gmsg_pp_keyed_count(struct gbuf_w *w, uint64_t n_keyed)
{
    gbuf_put_uvarint(w, n_keyed);
}

void gmsg_pp_put_keyed(struct gbuf_w *w, const char *key, size_t key_len,
                       uint64_t version, const void *p, size_t len)
{
    put_keyed_fields(w, key, key_len, version, p, len);
}

void gmsg_pp_end(struct gbuf_w *w, size_t body_start, const void *app,
                 size_t app_len)
{
    gbuf_put_blob(w, app, app_len);
    end(w, body_start);
}

/* --- Decoding ----------------------------------------------------------- */

int gmsg_next(struct gbuf_r *r, uint8_t *type, struct gbuf_r *body)
{
    if (r->failed) {
        return ALLOT_EPROTOCOL;
    }
    if (gbuf_left(r) == 0) {
        return 0;
    }
    *type = gbuf_get_u8(r);
    uint64_t n = gbuf_get_uvarint(r);
    if (r->failed || n > gbuf_left(r)) {
        r->failed = true;
        return ALLOT_EPROTOCOL;
    }
    gbuf_get_sub(r, (size_t)n, body);
    return 1;
}

/* A name-like string: 1..max printable bytes (0..max when may_be_empty). */
static void get_str(struct gbuf_r *r, size_t max, bool may_be_empty,
                    struct gmsg_str *s)
{
    const uint8_t *p;
    size_t len;
    gbuf_get_blob(r, max, &p, &len);
    s->p = (const char *)p;
    s->len = len;
    if (r->failed) {
        return;
    }
    if ((len == 0 && !may_be_empty) || !gbuf_printable(p, len)) {
        r->failed = true;
    }
}

static int done(const struct gbuf_r *r)
{
    return r->failed ? ALLOT_EPROTOCOL : 0;
}

int gmsg_get_ping(struct gbuf_r *r, struct gmsg_ping *m)
{
    m->seq = (uint32_t)gbuf_get_uvarint_max(r, UINT32_MAX);
    get_str(r, GOSSIP_NAME_MAX, false, &m->target);
    get_str(r, GOSSIP_NAME_MAX, false, &m->source);
    gbuf_get_addr(r, &m->source_addr);
    return done(r);
}

int gmsg_get_ping_req(struct gbuf_r *r, struct gmsg_ping_req *m)
{
    m->seq = (uint32_t)gbuf_get_uvarint_max(r, UINT32_MAX);
    get_str(r, GOSSIP_NAME_MAX, false, &m->target);
    gbuf_get_addr(r, &m->target_addr);
    uint8_t nack = gbuf_get_u8(r);
    if (nack > 1) {
        r->failed = true;
    }
    m->want_nack = nack == 1;
    get_str(r, GOSSIP_NAME_MAX, false, &m->source);
    gbuf_get_addr(r, &m->source_addr);
    return done(r);
}

int gmsg_get_ack(struct gbuf_r *r, struct gmsg_ack *m)
{
    m->seq = (uint32_t)gbuf_get_uvarint_max(r, UINT32_MAX);
    return done(r);
}

static void get_alive_fields(struct gbuf_r *r, struct gmsg_alive *m)
{
    m->inc = gbuf_get_uvarint(r);
    get_str(r, GOSSIP_NAME_MAX, false, &m->name);
    gbuf_get_addr(r, &m->addr);
    m->role = gbuf_get_u8(r);
    if (m->role > GOSSIP_ROLE_SERVER) {
        r->failed = true;
    }
    m->weight = (uint32_t)gbuf_get_uvarint_max(r, UINT32_MAX);
    get_str(r, GOSSIP_FLEET_MAX, true, &m->fleet);
    gbuf_get_blob(r, GOSSIP_APP_MAX, &m->app, &m->app_len);
}

int gmsg_get_alive(struct gbuf_r *r, struct gmsg_alive *m)
{
    get_alive_fields(r, m);
    return done(r);
}

int gmsg_get_suspect(struct gbuf_r *r, struct gmsg_suspect *m)
{
    m->inc = gbuf_get_uvarint(r);
    get_str(r, GOSSIP_NAME_MAX, false, &m->name);
    get_str(r, GOSSIP_NAME_MAX, false, &m->from);
    return done(r);
}

int gmsg_get_user(struct gbuf_r *r, struct gmsg_user *m)
{
    m->id = gbuf_get_uvarint(r);
    gbuf_get_blob(r, GOSSIP_BROADCAST_MAX, &m->payload, &m->len);
    return done(r);
}

static void get_keyed_fields(struct gbuf_r *r, struct gmsg_keyed *m)
{
    get_str(r, GOSSIP_KEY_NAME_MAX, false, &m->key);
    m->version = gbuf_get_uvarint(r);
    gbuf_get_blob(r, GOSSIP_BROADCAST_MAX, &m->payload, &m->len);
}

int gmsg_get_keyed(struct gbuf_r *r, struct gmsg_keyed *m)
{
    get_keyed_fields(r, m);
    return done(r);
}

int gmsg_get_direct(struct gbuf_r *r, struct gmsg_direct *m)
{
    get_str(r, GOSSIP_NAME_MAX, false, &m->from);
    gbuf_get_blob(r, GOSSIP_MESSAGE_MAX, &m->payload, &m->len);
    return done(r);
}

/* The smallest encodings, to refuse counts the bytes cannot hold before
 * walking them: state 1 + inc 1 + name 2 + addr 6 + role 1 + weight 1 +
 * fleet 1 + app 1; key 2 + version 1 + payload 1. */
#define PP_MEMBER_MIN 14u
#define PP_KEYED_MIN  4u

int gmsg_get_pushpull(struct gbuf_r *r, struct gmsg_pushpull *m)
{
    memset(m, 0, sizeof *m);
    m->flags = gbuf_get_u8(r);
    if ((m->flags & ~(GMSG_PP_JOIN | GMSG_PP_REPLY)) != 0) {
        r->failed = true;
    }
    get_str(r, GOSSIP_NAME_MAX, false, &m->from);
    gbuf_get_addr(r, &m->from_addr);
    m->n_members = gbuf_get_uvarint_max(r, gbuf_left(r) / PP_MEMBER_MIN);
    if (r->failed) {
        return ALLOT_EPROTOCOL;
    }
    size_t start = r->off;
    for (uint64_t i = 0; i < m->n_members && !r->failed; i++) {
        struct gmsg_alive a;
        uint8_t state = gbuf_get_u8(r);
        if (state > GOSSIP_LEFT) {
            r->failed = true;
        }
        get_alive_fields(r, &a);
    }
    if (r->failed) {
        return ALLOT_EPROTOCOL;
    }
    gbuf_r_init(&m->members, r->p + start, r->off - start);
    m->n_keyed = gbuf_get_uvarint_max(r, gbuf_left(r) / PP_KEYED_MIN);
    start = r->off;
    for (uint64_t i = 0; i < m->n_keyed && !r->failed; i++) {
        struct gmsg_keyed k;
        get_keyed_fields(r, &k);
    }
    if (r->failed) {
        return ALLOT_EPROTOCOL;
    }
    gbuf_r_init(&m->keyed, r->p + start, r->off - start);
    gbuf_get_blob(r, GOSSIP_STREAM_MAX, &m->app, &m->app_len);
    return done(r);
}

int gmsg_get_key_cmd(struct gbuf_r *r, struct gmsg_key_cmd *m)
{
    memset(m, 0, sizeof *m);
    m->id = gbuf_get_uvarint(r);
    m->flags = gbuf_get_u8(r);
    if ((m->flags & ~GMSG_KC_RETRY) != 0) {
        r->failed = true;
    }
    get_str(r, GOSSIP_NAME_MAX, false, &m->origin);
    gbuf_get_addr(r, &m->origin_addr);
    m->op = gbuf_get_u8(r);
    if (m->op > GOSSIP_KEY_REMOVE) {
        r->failed = true;
    }
    struct gbuf_r id;
    gbuf_get_sub(r, GMSG_KEY_ID_LEN, &id);
    m->reply_key_id = id.p;
    size_t key_len;
    gbuf_get_blob(r, GOSSIP_KEY_SIZE, &m->key, &key_len);
    /* LIST names no key; every other op exactly one. */
    if (key_len != (m->op == GOSSIP_KEY_LIST ? 0 : GOSSIP_KEY_SIZE)) {
        r->failed = true;
    }
    return done(r);
}

/* Error text: it goes into logs and command output as it is. */
static bool text_ok(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] < 0x20 || p[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

int gmsg_get_key_reply(struct gbuf_r *r, struct gmsg_key_reply *m)
{
    memset(m, 0, sizeof *m);
    m->id = gbuf_get_uvarint(r);
    get_str(r, GOSSIP_NAME_MAX, false, &m->from);
    m->status = -(int)gbuf_get_uvarint_max(r, 255);
    const uint8_t *p;
    size_t len;
    gbuf_get_blob(r, GOSSIP_KEYCMD_ERROR_MAX - 1, &p, &len);
    if (!r->failed && !text_ok(p, len)) {
        r->failed = true;
    }
    m->error.p = (const char *)p;
    m->error.len = len;
    m->n_keys = gbuf_get_u8(r);
    if (m->n_keys > GOSSIP_KEYRING_MAX) {
        r->failed = true;
    }
    struct gbuf_r keys;
    gbuf_get_sub(r, (size_t)m->n_keys * GOSSIP_KEY_SIZE, &keys);
    m->keys = keys.p;
    return done(r);
}

int gmsg_pp_next_member(struct gmsg_pushpull *m, uint8_t *state,
                        struct gmsg_alive *a)
{
    if (gbuf_left(&m->members) == 0) {
        return 0;
    }
    *state = gbuf_get_u8(&m->members);
    get_alive_fields(&m->members, a);
    return m->members.failed ? ALLOT_EPROTOCOL : 1;
}

int gmsg_pp_next_keyed(struct gmsg_pushpull *m, struct gmsg_keyed *k)
{
    if (gbuf_left(&m->keyed) == 0) {
        return 0;
    }
    get_keyed_fields(&m->keyed, k);
    return m->keyed.failed ? ALLOT_EPROTOCOL : 1;
}

int gmsg_validate(const uint8_t *buf, size_t len, bool stream)
{
    struct gbuf_r r;
    gbuf_r_init(&r, buf, len);
    unsigned count = 0;
    /* Each message takes at least 2 bytes, so len/2 + 1 bounds the loop. */
    for (size_t guard = 0; guard <= len / 2 + 1; guard++) {
        uint8_t type;
        struct gbuf_r body;
        int rv = gmsg_next(&r, &type, &body);
        if (rv < 0) {
            return rv;
        }
        if (rv == 0) {
            return count > 0 ? 0 : ALLOT_EPROTOCOL;
        }
        count++;
        union {
            struct gmsg_ping ping;
            struct gmsg_ping_req req;
            struct gmsg_ack ack;
            struct gmsg_alive alive;
            struct gmsg_suspect suspect;
            struct gmsg_user user;
            struct gmsg_keyed keyed;
            struct gmsg_direct direct;
            struct gmsg_pushpull pp;
            struct gmsg_key_cmd key_cmd;
            struct gmsg_key_reply key_reply;
        } u;
        switch (type) {
        case GMSG_PING:
            rv = gmsg_get_ping(&body, &u.ping);
            break;
        case GMSG_PING_REQ:
            rv = gmsg_get_ping_req(&body, &u.req);
            break;
        case GMSG_ACK:
        case GMSG_NACK:
            rv = gmsg_get_ack(&body, &u.ack);
            break;
        case GMSG_ALIVE:
            rv = gmsg_get_alive(&body, &u.alive);
            break;
        case GMSG_SUSPECT:
        case GMSG_DEAD:
            rv = gmsg_get_suspect(&body, &u.suspect);
            break;
        case GMSG_USER:
            rv = gmsg_get_user(&body, &u.user);
            break;
        case GMSG_KEYED:
            rv = gmsg_get_keyed(&body, &u.keyed);
            break;
        case GMSG_DIRECT:
            rv = gmsg_get_direct(&body, &u.direct);
            break;
        case GMSG_PUSHPULL:
            rv = stream ? gmsg_get_pushpull(&body, &u.pp) : ALLOT_EPROTOCOL;
            break;
        case GMSG_KEY_CMD:
            rv = gmsg_get_key_cmd(&body, &u.key_cmd);
            break;
        case GMSG_KEY_REPLY:
            rv = gmsg_get_key_reply(&body, &u.key_reply);
            break;
        default:
            /* A newer peer's type: skipped by the receiver. */
            rv = 0;
            break;
        }
        if (rv < 0) {
            return rv;
        }
    }
    return ALLOT_EPROTOCOL;
}

bool gmsg_str_eq(struct gmsg_str s, const char *z)
{
    size_t n = strlen(z);
    return n == s.len && (n == 0 || memcmp(s.p, z, n) == 0);
}
