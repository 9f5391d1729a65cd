/* gateway.c - client connections of allotd.
 *
 * Happy path: accept, read into the connection's wire_rbuf, cut frames,
 * decode each request once into a struct node_req with its arguments
 * checked, and route it: LOCAL operations are answered here; READ, WRITE and
 * ADMIN go to leader.c when this node leads, else to forward.c. Replies are
 * packed into the connection's output buffer and written once per loop turn
 * (gateway_flush), so a client with many requests in flight gets few writes.
 *
 * Failure modes:
 *   - a frame header over WIRE_FRAME_MAX: the stream cannot be trusted, close
 *     the connection;
 *   - a body that is not one well-formed msgpack map, an unknown op, a
 *     missing or mistyped field: an error reply (id 0 when the id could not
 *     be read) and nothing else happens;
 *   - a client that sends without reading: reading pauses at
 *     NODE_CONN_INFLIGHT_MAX requests or NODE_CONN_OUTBUF_MAX unsent bytes;
 *   - the client disconnects with requests in flight: they are detached and
 *     their answers dropped. */
#include <inttypes.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/lib.h"
#include "node.h"

struct write_req
{
    uv_write_t w;
    struct conn *conn;
    char *data;
    size_t len;
};

static void conn_close(struct conn *c);
static void conn_maybe_resume(struct conn *c);

/* --- Replies
 * ------------------------------------------------------------------ */

/* Offset of the frame being built in c->out. One reply is built at a time
 * (single-threaded loop), so one slot per node would do; per connection keeps
 * it obviously right. */
static size_t frame_begin(struct conn *c, msgpack_packer *pk)
{
    static const char zero[WIRE_HEADER_LEN];
    size_t start = c->out.size;
    msgpack_sbuffer_write(&c->out, zero, sizeof zero);
    msgpack_packer_init(pk, &c->out, msgpack_sbuffer_write);
    return start;
}

static void frame_end(struct conn *c, size_t start)
{
    size_t body = c->out.size - start - WIRE_HEADER_LEN;
    if (body > WIRE_FRAME_MAX) {
        /* Cannot happen with the page limits we use; if it ever does, replace
         * the reply rather than send a frame the client must refuse. */
        c->out.size = start;
        msgpack_packer pk;
        frame_begin(c, &pk);
        wire_pack_error(&pk, 0, ALLOT_ETOO_BIG, "reply too large");
        body = c->out.size - start - WIRE_HEADER_LEN;
    }
    wire_frame_header(c->out.data + start, (uint32_t)body);
    if (!c->dirty) {
        c->dirty = true;
        TAILQ_INSERT_TAIL(&c->node->dirty, c, dirty_link);
    }
}

static void strv_free(char **v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        free(v[i]);
    }
    free(v);
}

void node_req_free(struct node_req *r)
{
    struct conn *c = r->conn;
    if (c != NULL) {
        TAILQ_REMOVE(&c->reqs, r, conn_link);
        c->inflight--;
        conn_maybe_resume(c);
    }
    free(r->body);
    free(r->http_target);
    free(r->validator);
    usage_report_free(r->usage);
    free(r->args);
    free(r->key_cmd);
    sodium_memzero(r->gossip_key, sizeof r->gossip_key);
    strv_free(r->owners_add, r->n_owners_add);
    strv_free(r->owners_rm, r->n_owners_rm);
    strv_free(r->members, r->n_members);
    strv_free(r->label_keys, r->n_label_edits);
    strv_free(r->label_values, r->n_label_edits);
    free(r);
}

msgpack_packer *node_reply_begin(struct node_req *r, msgpack_packer *pk)
{
    if (r->conn == NULL || r->conn->closing) {
        return NULL;
    }
    r->reply_start = frame_begin(r->conn, pk);
    wire_pack_ok_head(pk, r->id);
    return pk;
}

void node_reply_done(struct node_req *r)
{
    metrics_observe(&r->node->metrics, r->op, 0,
                    clock_mono_ns() - r->arrived_ns);
    if (r->conn != NULL && !r->conn->closing) {
        frame_end(r->conn, r->reply_start);
    }
    node_req_free(r);
}

void node_reply_error(struct node_req *r, int code, const char *message)
{
    metrics_observe(&r->node->metrics, r->op, code,
                    clock_mono_ns() - r->arrived_ns);
    if (r->conn != NULL && !r->conn->closing) {
        msgpack_packer pk;
        size_t start = frame_begin(r->conn, &pk);
        wire_pack_error(&pk, r->id, code, message);
        frame_end(r->conn, start);
    }
    node_req_free(r);
}

/* An error that is not tied to a request we accepted (garbage frames). */
static void conn_error(struct conn *c, uint64_t id, int code, const char *msg)
{
    msgpack_packer pk;
    size_t start = frame_begin(c, &pk);
    wire_pack_error(&pk, id, code, msg);
    frame_end(c, start);
}

/* --- Writing -----------------------------------------------------------------
 */

static void write_cb(uv_write_t *w, int status)
{
    struct write_req *wr = w->data;
    struct conn *c = wr->conn;
    c->unsent -= wr->len;
    free(wr->data);
    free(wr);
    if (status != 0 && !c->closing) {
        conn_close(c);
        return;
    }
    conn_maybe_resume(c);
}

void gateway_flush(struct node *n)
{
    struct conn *c;
    while ((c = TAILQ_FIRST(&n->dirty)) != NULL) {
        TAILQ_REMOVE(&n->dirty, c, dirty_link);
        c->dirty = false;
        if (c->closing || c->out.size == 0) {
            continue;
        }
        if (c->sink != NULL) {
            /* A virtual connection (the HTTP API): frames go to its owner. */
            size_t len = c->out.size;
            char *data = msgpack_sbuffer_release(&c->out);
            c->sink(c, data, len);
            free(data);
            continue;
        }
        struct write_req *wr = malloc(sizeof *wr);
        if (wr == NULL) {
            conn_close(c);
            continue;
        }
        wr->conn = c;
        wr->len = c->out.size;
        wr->data = msgpack_sbuffer_release(&c->out);
        wr->w.data = wr;
        uv_buf_t buf = uv_buf_init(wr->data, (unsigned)wr->len);
        c->unsent += wr->len;
        if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &buf, 1, write_cb) != 0) {
            c->unsent -= wr->len;
            free(wr->data);
            free(wr);
            conn_close(c);
        }
    }
}

/* --- Reading -----------------------------------------------------------------
 */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    char *tail;
    size_t avail;
    (void)suggested;
    if (wire_rbuf_reserve(&c->rbuf, 65536, &tail, &avail) != 0) {
        *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
        return;
    }
    *buf =
        uv_buf_init(tail, (unsigned)(avail > UINT32_MAX ? UINT32_MAX : avail));
}

static void conn_pause(struct conn *c)
{
    if (c->reading && c->sink == NULL) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static bool conn_congested(const struct conn *c)
{
    return c->inflight >= NODE_CONN_INFLIGHT_MAX ||
           c->unsent + c->out.size >= NODE_CONN_OUTBUF_MAX;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_maybe_resume(struct conn *c)
{
    if (c->sink == NULL && !c->reading && !c->closing && !c->node->stopping &&
        c->inflight < NODE_CONN_INFLIGHT_MAX / 2 &&
        c->unsent + c->out.size < NODE_CONN_OUTBUF_MAX / 2) {
        c->reading = true;
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    }
}

/* --- Argument decoding
 * -------------------------------------------------------- */

static int arg_path(struct node_req *r, const msgpack_object *args,
                    const char *key, bool required, char *msg)
{
    const char *p;
    size_t len;
    int rv = wire_get_str(args, key, required, &p, &len, msg);
    if (rv == ALLOT_ENOT_FOUND) {
        r->path_len = 0;
        r->path[0] = '\0';
        return 0;
    }
    if (rv != 0) {
        return rv;
    }
    if (len == 0 && !required) {
        r->path_len = 0;
        r->path[0] = '\0';
        return 0;
    }
    rv = quota_path_check(p, len, msg);
    if (rv != 0) {
        return rv;
    }
    memcpy(r->path, p, len);
    r->path[len] = '\0';
    r->path_len = len;
    return 0;
}

static int arg_if_version(struct node_req *r, const msgpack_object *args,
                          char *msg)
{
    int rv = wire_get_u64(args, "if_version", false, &r->cmd.if_version, msg);
    if (rv == ALLOT_ENOT_FOUND) {
        return 0;
    }
    if (rv == 0) {
        r->cmd.has_if_version = true;
    }
    return rv;
}

/* "name": a principal or group name, into r->subject (and cmd.subject). */
static int arg_name(struct node_req *r, const msgpack_object *args, char *msg)
{
    const char *name;
    size_t len;
    int rv = wire_get_str(args, "name", true, &name, &len, msg);
    if (rv != 0) {
        return rv;
    }
    if (!auth_name_valid(name, len)) {
        return allot_errf(msg, ALLOT_EINVALID,
                          "name must be 1 to 64 of [A-Za-z0-9_.@-]");
    }
    memcpy(r->subject, name, len);
    r->subject[len] = '\0';
    r->cmd.subject = r->subject;
    return 0;
}

/* An optional array of at most max strings: owners (user:NAME, group:NAME)
 * or principal names. Copies them (owned by the request). */
static int arg_strv(const msgpack_object *args, const char *key, uint32_t max,
                    bool owners, char ***out, uint32_t *n, char *msg)
{
    const msgpack_object *a = wire_map_get(args, key);
    *out = NULL;
    *n = 0;
    if (a == NULL) {
        return 0;
    }
    if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size > max) {
        return allot_errf(msg, ALLOT_EINVALID,
                          "%s must be an array of at most %u strings", key,
                          max);
    }
    if (a->via.array.size == 0) {
        return 0;
    }
    char **v = calloc(a->via.array.size, sizeof *v);
    if (v == NULL) {
        return allot_errf(msg, ALLOT_ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < a->via.array.size; i++) {
        const msgpack_object *o = &a->via.array.ptr[i];
        bool ok = o->type == MSGPACK_OBJECT_STR &&
                  (owners ? quota_owner_valid(o->via.str.ptr, o->via.str.size)
                          : auth_name_valid(o->via.str.ptr, o->via.str.size));
        if (ok) {
            v[i] = malloc(o->via.str.size + 1);
        }
        if (!ok || v[i] == NULL) {
            strv_free(v, i + (ok ? 0 : 0));
            return allot_errf(msg, ALLOT_EINVALID,
                              owners
                                  ? "%s: an owner is user:NAME or "
                                    "group:NAME (NAME: [A-Za-z0-9_.@-]{1,64})"
                                  : "%s: names are 1 to 64 of "
                                    "[A-Za-z0-9_.@-]",
                              key);
        }
        wire_memcpy(v[i], o->via.str.ptr, o->via.str.size);
        v[i][o->via.str.size] = '\0';
    }
    *out = v;
    *n = a->via.array.size;
    return 0;
}

/* "labels": {key: value, key: nil (remove)}, copied into the request. */
static int arg_labels(struct node_req *r, const msgpack_object *args, char *msg)
{
    const msgpack_object *m = wire_map_get(args, "labels");
    if (m == NULL || (m->type == MSGPACK_OBJECT_MAP && m->via.map.size == 0)) {
        return 0;
    }
    if (m->type != MSGPACK_OBJECT_MAP || m->via.map.size > QUOTA_LABELS_MAX) {
        return allot_errf(msg, ALLOT_EINVALID,
                          "labels must be a map of at most %d entries",
                          QUOTA_LABELS_MAX);
    }
    uint32_t n = m->via.map.size;
    r->label_keys = calloc(n, sizeof *r->label_keys);
    r->label_values = calloc(n, sizeof *r->label_values);
    if (r->label_keys == NULL || r->label_values == NULL) {
        return allot_errf(msg, ALLOT_ENOMEM, "out of memory");
    }
    r->n_label_edits = n;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        const msgpack_object *v = &m->via.map.ptr[i].val;
        bool remove = v->type == MSGPACK_OBJECT_NIL;
        if (k->type != MSGPACK_OBJECT_STR ||
            (!remove && v->type != MSGPACK_OBJECT_STR) ||
            !quota_label_valid(k->via.str.ptr, k->via.str.size,
                               remove ? "" : v->via.str.ptr,
                               remove ? 0 : v->via.str.size)) {
            return allot_errf(msg, ALLOT_EINVALID,
                              "labels: a key is [A-Za-z0-9_./-]{1,63}, a "
                              "value a string of up to 255 printable bytes "
                              "or null (remove)");
        }
        r->label_keys[i] = malloc(k->via.str.size + 1);
        if (r->label_keys[i] == NULL) {
            return allot_errf(msg, ALLOT_ENOMEM, "out of memory");
        }
        wire_memcpy(r->label_keys[i], k->via.str.ptr, k->via.str.size);
        r->label_keys[i][k->via.str.size] = '\0';
        if (!remove) {
            r->label_values[i] = malloc(v->via.str.size + 1);
            if (r->label_values[i] == NULL) {
                return allot_errf(msg, ALLOT_ENOMEM, "out of memory");
            }
            wire_memcpy(r->label_values[i], v->via.str.ptr, v->via.str.size);
            r->label_values[i][v->via.str.size] = '\0';
        }
    }
    return 0;
}

/* gossip.keys {action, key}: key (base64 of 32 bytes) for every action
 * but list. */
static int arg_gossip_keys(struct node_req *r, const msgpack_object *args,
                           char *msg)
{
    static const char *const actions[] = {"list", "install", "use", "remove"};
    const char *s;
    size_t len;
    int rv = wire_get_str(args, "action", true, &s, &len, msg);
    if (rv != 0) {
        return rv;
    }
    bool known = false;
    for (unsigned i = 0; i < 4 && !known; i++) {
        known = len == strlen(actions[i]) && memcmp(s, actions[i], len) == 0;
    }
    if (!known) {
        return allot_errf(msg, ALLOT_EINVALID,
                          "action must be list, install, use or remove");
    }
    memcpy(r->gossip_action, s, len);
    r->gossip_action[len] = '\0';
    rv = wire_get_str(args, "key", strcmp(r->gossip_action, "list") != 0, &s,
                      &len, msg);
    if (rv == ALLOT_ENOT_FOUND) {
        return 0;
    }
    if (rv != 0) {
        return rv;
    }
    size_t bin_len = 0;
    if (sodium_base642bin(r->gossip_key, sizeof r->gossip_key, s, len, NULL,
                          &bin_len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        bin_len != sizeof r->gossip_key) {
        return allot_errf(msg, ALLOT_EINVALID,
                          "key must be the base64 of 32 bytes (allotctl "
                          "gossip keygen prints one)");
    }
    return 0;
}

static int decode_args(struct node_req *r, const struct wire_request *wr,
                       char *msg)
{
    static const msgpack_object empty = {.type = MSGPACK_OBJECT_MAP};
    const msgpack_object *args = wr->args != NULL ? wr->args : &empty;
    int rv;
    r->cmd.client = wr->client;
    r->cmd.seq = wr->seq;
    r->cmd.ack = wr->ack;
    r->cmd.path = r->path;
    r->principal[0] = '\0'; /* set by node_verify() for signed requests */
    r->cmd.principal = r->principal;
    switch (r->op) {
    case WIRE_OP_QUOTA_SET: {
        const msgpack_object *fields = NULL;
        r->cmd.type = FSM_CMD_QUOTA_SET;
        rv = arg_path(r, args, "path", true, msg);
        if (rv == 0) {
            rv = arg_strv(args, "owners_add", QUOTA_OWNERS_MAX, true,
                          &r->owners_add, &r->n_owners_add, msg);
        }
        if (rv == 0) {
            rv = arg_strv(args, "owners_rm", QUOTA_OWNERS_MAX, true,
                          &r->owners_rm, &r->n_owners_rm, msg);
        }
        if (rv == 0) {
            rv = arg_labels(r, args, msg);
        }
        bool owners_only =
            r->n_owners_add + r->n_owners_rm > 0 || r->n_label_edits > 0;
        if (rv == 0) {
            /* Only owners may change without fields. */
            rv = wire_get_map(args, "fields", !owners_only, &fields, msg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        if (rv == 0 && fields != NULL) {
            rv = quota_patch_unpack(fields, &r->cmd.patch, msg);
        }
        if (rv == 0 && (r->cmd.patch.set != 0 || !owners_only)) {
            rv = quota_patch_check(&r->cmd.patch, msg);
        }
        if (rv == 0) {
            rv = arg_if_version(r, args, msg);
        }
        r->cmd.path_len = r->path_len;
        r->cmd.owners_add = (const char *const *)r->owners_add;
        r->cmd.n_owners_add = r->n_owners_add;
        r->cmd.owners_rm = (const char *const *)r->owners_rm;
        r->cmd.n_owners_rm = r->n_owners_rm;
        r->cmd.label_keys = (const char *const *)r->label_keys;
        r->cmd.label_values = (const char *const *)r->label_values;
        r->cmd.n_label_edits = r->n_label_edits;
        return rv;
    }
    case WIRE_OP_PRINCIPAL_ADD: {
        const char *hex;
        size_t hex_len;
        char hexz[65];
        r->cmd.type = FSM_CMD_PRINCIPAL_ADD;
        rv = arg_name(r, args, msg);
        if (rv == 0) {
            rv = wire_get_str(args, "pubkey", true, &hex, &hex_len, msg);
        }
        if (rv == 0 && hex_len != 64) {
            rv = allot_errf(msg, ALLOT_EINVALID,
                            "pubkey is 64 hex digits (allotctl identity "
                            "pubkey FILE)");
        }
        if (rv == 0) {
            memcpy(hexz, hex, 64);
            hexz[64] = '\0';
            rv = auth_pubkey_parse(hexz, r->cmd.pubkey, msg);
        }
        if (rv == 0) {
            rv = wire_get_bool(args, "admin", false, &r->cmd.admin, msg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        return rv;
    }
    case WIRE_OP_PRINCIPAL_RM:
        r->cmd.type = FSM_CMD_PRINCIPAL_RM;
        return arg_name(r, args, msg);
    case WIRE_OP_VALIDATOR_ADD: {
        const char *prefix, *exec = NULL, *url = NULL;
        size_t prefix_len, exec_len = 0, url_len = 0;
        uint64_t timeout = 2000;
        bool fail_open = false;
        r->cmd.type = FSM_CMD_VALIDATOR_ADD;
        rv = arg_name(r, args, msg);
        if (rv == 0) {
            rv = wire_get_str(args, "prefix", true, &prefix, &prefix_len, msg);
        }
        if (rv == 0 && prefix_len > 0) {
            rv = quota_path_check(prefix, prefix_len, msg);
        }
        if (rv == 0) {
            rv = wire_get_str(args, "exec", false, &exec, &exec_len, msg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        if (rv == 0) {
            rv = wire_get_str(args, "url", false, &url, &url_len, msg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        if (rv == 0) {
            rv = wire_get_u64(args, "timeout_ms", false, &timeout, msg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        if (rv == 0) {
            rv = wire_get_bool(args, "fail_open", false, &fail_open, msg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        if (rv != 0) {
            return rv;
        }
        if ((exec == NULL) == (url == NULL)) {
            return allot_errf(msg, ALLOT_EINVALID,
                              "give exec (a shell command) or url "
                              "(http://HOST:PORT/PATH), not both");
        }
        const char *target = exec != NULL ? exec : url;
        size_t target_len = exec != NULL ? exec_len : url_len;
        if (target_len == 0 || target_len > FSM_VALIDATOR_TARGET_MAX ||
            memchr(target, '\0', target_len) != NULL) {
            return allot_errf(msg, ALLOT_EINVALID,
                              "the command or URL is 1 to %d characters",
                              FSM_VALIDATOR_TARGET_MAX);
        }
        if (url != NULL && (url_len < 8 || memcmp(url, "http://", 7) != 0)) {
            return allot_errf(msg, ALLOT_EINVALID,
                              "url must be http://HOST:PORT/PATH (plain HTTP, "
                              "an IPv4 address or localhost)");
        }
        if (timeout == 0 || timeout > 60000) {
            return allot_errf(msg, ALLOT_EINVALID,
                              "timeout_ms must be from 1 to 60000");
        }
        r->validator = calloc(1, sizeof *r->validator);
        if (r->validator == NULL) {
            return allot_errf(msg, ALLOT_ENOMEM, "out of memory");
        }
        struct fsm_validator *v = r->validator;
        snprintf(v->name, sizeof v->name, "%s", r->subject);
        memcpy(v->prefix, prefix, prefix_len);
        v->is_url = url != NULL;
        memcpy(v->target, target, target_len);
        v->timeout_ms = (uint32_t)timeout;
        v->fail_open = fail_open;
        r->cmd.validator = v;
        return 0;
    }
    case WIRE_OP_VALIDATOR_RM:
        r->cmd.type = FSM_CMD_VALIDATOR_RM;
        return arg_name(r, args, msg);
    case WIRE_OP_TOKEN_CREATE: {
        const msgpack_object *h = wire_map_get(args, "hash");
        r->cmd.type = FSM_CMD_TOKEN_CREATE;
        rv = arg_name(r, args, msg);
        if (rv == 0 && (h == NULL || h->type != MSGPACK_OBJECT_BIN ||
                        h->via.bin.size != 32)) {
            rv = allot_errf(msg, ALLOT_EINVALID,
                            "hash: the 32-byte BLAKE2b hash of the token");
        }
        if (rv == 0) {
            wire_memcpy(r->cmd.token_hash, h->via.bin.ptr, 32);
            rv = wire_get_u64(args, "ttl_ms", true, &r->cmd.ttl_ms, msg);
        }
        return rv;
    }
    case WIRE_OP_TOKEN_REVOKE: {
        const char *id;
        size_t len;
        char hex[17];
        size_t got = 0;
        r->cmd.type = FSM_CMD_TOKEN_REVOKE;
        rv = wire_get_str(args, "id", true, &id, &len, msg);
        if (rv == 0) {
            if (len != 16) {
                return allot_errf(msg, ALLOT_EINVALID,
                                  "a token id is 16 hex digits");
            }
            memcpy(hex, id, 16);
            hex[16] = '\0';
            if (sodium_hex2bin(r->cmd.token_hash, 8, hex, 16, NULL, &got,
                               NULL) != 0 ||
                got != 8) {
                return allot_errf(msg, ALLOT_EINVALID,
                                  "a token id is 16 hex digits");
            }
        }
        return rv;
    }
    case WIRE_OP_GROUP_ADD:
        r->cmd.type = FSM_CMD_GROUP_ADD;
        rv = arg_name(r, args, msg);
        if (rv == 0) {
            rv = arg_strv(args, "members", 1024, false, &r->members,
                          &r->n_members, msg);
        }
        r->cmd.members = (const char *const *)r->members;
        r->cmd.n_members = r->n_members;
        return rv;
    case WIRE_OP_GROUP_RM:
        r->cmd.type = FSM_CMD_GROUP_RM;
        return arg_name(r, args, msg);
    case WIRE_OP_QUOTA_RM:
        r->cmd.type = FSM_CMD_QUOTA_RM;
        rv = arg_path(r, args, "path", true, msg);
        if (rv == 0) {
            rv = arg_if_version(r, args, msg);
        }
        if (rv == 0) {
            rv =
                wire_get_bool(args, "recursive", false, &r->cmd.recursive, msg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        r->cmd.path_len = r->path_len;
        return rv;
    case WIRE_OP_CAPACITY_SET: {
        struct fsm_capacity *cap = &r->cmd.capacity;
        r->cmd.type = FSM_CMD_CAPACITY_SET;
        rv = wire_get_u64(args, "memory_mb", false, &cap->memory_mb, msg);
        cap->has_memory_mb = rv == 0;
        if (rv != 0 && rv != ALLOT_ENOT_FOUND) {
            return rv;
        }
        rv = wire_get_u64(args, "vcores", false, &cap->vcores, msg);
        cap->has_vcores = rv == 0;
        if (rv != 0 && rv != ALLOT_ENOT_FOUND) {
            return rv;
        }
        if (!cap->has_memory_mb && !cap->has_vcores) {
            return allot_errf(msg, ALLOT_EINVALID,
                              "give memory_mb, vcores or both");
        }
        return 0;
    }
    case WIRE_OP_QUOTA_GET:
    case WIRE_OP_SHARE_SHOW:
        return arg_path(r, args, "path", true, msg);
    case WIRE_OP_QUOTA_LS: {
        uint64_t limit = NODE_LS_LIMIT_DEFAULT;
        rv = arg_path(r, args, "prefix", false, msg);
        if (rv != 0) {
            return rv;
        }
        const char *after;
        size_t after_len;
        rv = wire_get_str(args, "after", false, &after, &after_len, msg);
        if (rv == 0) {
            if (after_len > QUOTA_PATH_MAX) {
                return allot_errf(msg, ALLOT_EINVALID,
                                  "after: longer than a path can be");
            }
            memcpy(r->after, after, after_len);
            r->after[after_len] = '\0';
            r->after_len = after_len;
            r->has_after = true;
        } else if (rv != ALLOT_ENOT_FOUND) {
            return rv;
        }
        rv = wire_get_u64(args, "limit", false, &limit, msg);
        if (rv != 0 && rv != ALLOT_ENOT_FOUND) {
            return rv;
        }
        if (limit == 0 || limit > NODE_LS_LIMIT_MAX) {
            return allot_errf(msg, ALLOT_EINVALID, "limit must be from 1 to %d",
                              NODE_LS_LIMIT_MAX);
        }
        r->limit = (unsigned)limit;
        return 0;
    }
    case WIRE_OP_CLUSTER_ADD: {
        const char *addr;
        size_t len;
        struct sockaddr_in sa;
        char why[160];
        rv = wire_get_u64(args, "id", true, &r->target_id, msg);
        if (rv == 0 && r->target_id == 0) {
            rv = allot_errf(msg, ALLOT_EINVALID, "id must be 1 or more");
        }
        if (rv == 0) {
            rv = wire_get_str(args, "raft_addr", true, &addr, &len, msg);
        }
        if (rv != 0) {
            return rv;
        }
        if (len >= sizeof r->target_addr) {
            return allot_errf(msg, ALLOT_EINVALID, "raft_addr too long");
        }
        memcpy(r->target_addr, addr, len);
        r->target_addr[len] = '\0';
        if (addr_parse(r->target_addr, &sa, why, sizeof why) != 0) {
            return allot_errf(msg, ALLOT_EINVALID, "raft_addr: %s", why);
        }
        return 0;
    }
    case WIRE_OP_CLUSTER_REMOVE:
        rv = wire_get_u64(args, "id", true, &r->target_id, msg);
        if (rv == 0 && r->target_id == 0) {
            rv = allot_errf(msg, ALLOT_EINVALID, "id must be 1 or more");
        }
        return rv;
    case WIRE_OP_AUDIT_LS: {
        uint64_t limit = NODE_LS_LIMIT_DEFAULT;
        const char *who;
        size_t who_len;
        rv = arg_path(r, args, "prefix", false, msg);
        if (rv == 0) {
            rv = wire_get_u64(args, "since_ms", false, &r->since_ms, msg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        if (rv == 0) {
            rv = wire_get_u64(args, "after", false, &r->after_version, msg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        if (rv == 0) {
            rv = wire_get_u64(args, "limit", false, &limit, msg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        if (rv != 0) {
            return rv;
        }
        if (limit == 0 || limit > NODE_LS_LIMIT_MAX) {
            return allot_errf(msg, ALLOT_EINVALID, "limit must be from 1 to %d",
                              NODE_LS_LIMIT_MAX);
        }
        r->limit = (unsigned)limit;
        rv = wire_get_str(args, "principal", false, &who, &who_len, msg);
        if (rv == 0) {
            if (who_len == 0 || who_len >= sizeof r->principal_filter) {
                return allot_errf(msg, ALLOT_EINVALID,
                                  "principal must be 1 to 64 characters");
            }
            memcpy(r->principal_filter, who, who_len);
            r->principal_filter[who_len] = '\0';
            r->has_principal_filter = true;
        } else if (rv != ALLOT_ENOT_FOUND) {
            return rv;
        }
        return 0;
    }
    case WIRE_OP_QUOTA_WATCH:
        rv = arg_path(r, args, "prefix", false, msg);
        if (rv == 0) {
            rv = wire_get_u64(args, "from_version", false, &r->after_version,
                              msg);
            r->has_after_version = rv == 0;
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        return rv;
    case WIRE_OP_AUDIT_CONFIG: {
        struct fsm_audit_config *a = &r->cmd.audit;
        r->cmd.type = FSM_CMD_AUDIT_CONFIG;
        rv = wire_get_u64(args, "max_records", false, &a->max_records, msg);
        a->has_max_records = rv == 0;
        if (rv != 0 && rv != ALLOT_ENOT_FOUND) {
            return rv;
        }
        rv = wire_get_u64(args, "max_age_ms", false, &a->max_age_ms, msg);
        a->has_max_age_ms = rv == 0;
        if (rv != 0 && rv != ALLOT_ENOT_FOUND) {
            return rv;
        }
        if (!a->has_max_records && !a->has_max_age_ms) {
            return allot_errf(msg, ALLOT_EINVALID,
                              "give max_records, max_age_ms or both");
        }
        if (a->has_max_records && a->max_records > 10000000) {
            return allot_errf(msg, ALLOT_EINVALID,
                              "max_records must be at most 10000000");
        }
        return 0;
    }
    case WIRE_OP_USAGE_REPORT:
        return usage_report_decode(args, &r->usage, msg);
    case WIRE_OP_USAGE_LS: {
        const char *h;
        size_t hlen;
        rv = arg_path(r, args, "prefix", false, msg);
        if (rv == 0) {
            rv = wire_get_str(args, "host", false, &h, &hlen, msg);
            if (rv == 0 && hlen > USAGE_HOST_MAX) {
                rv = allot_errf(msg, ALLOT_EINVALID,
                                "host must be at most %u characters",
                                USAGE_HOST_MAX);
            }
            if (rv == 0) {
                memcpy(r->usage_host, h, hlen);
                r->usage_host[hlen] = '\0';
            }
        }
        return rv == ALLOT_ENOT_FOUND ? 0 : rv;
    }
    case WIRE_OP_CLUSTER_STATUS:
        rv = wire_get_bool(args, "digest", false, &r->want_digest, msg);
        return rv == ALLOT_ENOT_FOUND ? 0 : rv;
    case WIRE_OP_GOSSIP_KEYS:
        return arg_gossip_keys(r, args, msg);
    case WIRE_OP_CLUSTER_TRANSFER:
        /* id 0 (or absent) lets raft pick the most up-to-date voter. */
        rv = wire_get_u64(args, "id", false, &r->target_id, msg);
        return rv == ALLOT_ENOT_FOUND ? 0 : rv;
    default:
        return 0;
    }
}

/* --- Dispatch
 * ------------------------------------------------------------------ */

static int keep_args(struct node_req *r, const msgpack_object *args, char *msg)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_object(&pk, *args);
    r->args_len = sb.size;
    r->args = malloc(sb.size);
    if (r->args == NULL) {
        msgpack_sbuffer_destroy(&sb);
        return allot_errf(msg, ALLOT_ENOMEM, "out of memory");
    }
    memcpy(r->args, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}

/* Bearer token or HTTP signature material carried in the request. */
static int decode_credentials(struct node_req *r, const msgpack_object *root,
                              char *msg)
{
    const char *tok;
    size_t len;
    int rv = wire_get_str(root, "token", false, &tok, &len, msg);
    if (rv == 0) {
        if (len == 0 || len > NODE_TOKEN_MAX) {
            return allot_errf(msg, ALLOT_EUNAUTHENTICATED,
                              "a token is 1 to %d characters", NODE_TOKEN_MAX);
        }
        memcpy(r->token, tok, len);
        r->token[len] = '\0';
    } else if (rv != ALLOT_ENOT_FOUND) {
        return rv;
    }
    const msgpack_object *ha = wire_map_get(root, "http_auth");
    if (ha == NULL) {
        return 0;
    }
    const char *target;
    size_t target_len;
    const msgpack_object *raw = wire_map_get(ha, "raw");
    if (r->is_signed || auth_unpack_claim(ha, &r->claim, msg) != 0 ||
        wire_get_str(ha, "target", true, &target, &target_len, msg) != 0 ||
        target_len > 8192 || raw == NULL || raw->type != MSGPACK_OBJECT_BIN) {
        return allot_errf(msg, ALLOT_EUNAUTHENTICATED,
                          "malformed HTTP signature");
    }
    r->http_target = malloc(target_len + 1);
    free(r->body);
    r->body = malloc(raw->via.bin.size + 1);
    if (r->http_target == NULL || r->body == NULL) {
        return allot_errf(msg, ALLOT_ENOMEM, "out of memory");
    }
    memcpy(r->http_target, target, target_len);
    r->http_target[target_len] = '\0';
    wire_memcpy(r->body, raw->via.bin.ptr, raw->via.bin.size);
    r->body_len = raw->via.bin.size;
    r->is_signed = true;
    r->http_signed = true;
    return 0;
}

static int verify_token(struct node *n, struct node_req *r, char *msg)
{
    unsigned char hash[32];
    char who[AUTH_NAME_MAX + 1];
    uint64_t expires;
    crypto_generichash(hash, sizeof hash, (const unsigned char *)r->token,
                       strlen(r->token), NULL, 0);
    if (!fsm_token(n->fsm, hash, who, &expires)) {
        return allot_errf(msg, ALLOT_EUNAUTHENTICATED,
                          "unknown or revoked token");
    }
    if (clock_wall_ms() >= expires) {
        return allot_errf(msg, ALLOT_EUNAUTHENTICATED, "the token expired");
    }
    unsigned char pk[AUTH_PUBKEY_LEN];
    bool admin;
    if (!fsm_principal(n->fsm, who, pk, &admin)) {
        return allot_errf(msg, ALLOT_EUNAUTHENTICATED,
                          "the token's principal %s no longer exists", who);
    }
    strcpy(r->principal, who);
    return 0;
}

int node_verify(struct node *n, struct node_req *r, char *msg)
{
    if (r->token[0] != '\0') {
        return verify_token(n, r, msg);
    }
    const struct auth_claim *cl = &r->claim;
    unsigned char pk[AUTH_PUBKEY_LEN];
    bool admin;
    if (!fsm_principal(n->fsm, cl->principal, pk, &admin)) {
        return allot_errf(msg, ALLOT_EUNAUTHENTICATED,
                          "unknown principal %s (an admin adds it with "
                          "allotctl principal add)",
                          cl->principal);
    }
    uint64_t now = clock_wall_ms();
    uint64_t skew = now > cl->ts_ms ? now - cl->ts_ms : cl->ts_ms - now;
    if (skew > AUTH_CLOCK_SKEW_MS) {
        return allot_errf(msg, ALLOT_EUNAUTHENTICATED,
                          "request timestamp is %llu s from this server's "
                          "clock (allowed: %u s); check the client's clock",
                          (unsigned long long)(skew / 1000),
                          AUTH_CLOCK_SKEW_MS / 1000);
    }
    const char *body = r->body != NULL ? r->body : "";
    /* An HTTP signature covers "METHOD TARGET" with client = seq = ack = 0
     * (docs/http.md), whatever ids the HTTP layer gave the request. */
    bool http = r->http_signed;
    int rv = auth_verify(pk, cl, http ? r->http_target : wire_op_name(r->op),
                         http ? 0 : r->cmd.client, http ? 0 : r->cmd.seq,
                         http ? 0 : r->cmd.ack, body, r->body_len, msg);
    if (rv != 0) {
        return rv;
    }
    /* Only after the signature holds: junk must not fill the cache. */
    if (nonce_cache_check(n->nonces, cl->nonce, now) != 0) {
        return allot_errf(msg, ALLOT_EUNAUTHENTICATED,
                          "replayed request: this nonce was seen before");
    }
    strcpy(r->principal, cl->principal);
    return 0;
}

static void handle_ping(struct node_req *r)
{
    msgpack_packer pk;
    if (node_reply_begin(r, &pk) != NULL) {
        msgpack_pack_map(&pk, 1);
        wire_pack_kv_u64(&pk, "id", r->node->cfg.id);
    }
    node_reply_done(r);
}

void gateway_dispatch(struct conn *c, const char *body, size_t len)
{
    struct node *n = c->node;
    char msg[ALLOT_ERRMSG_SIZE] = "";
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rv = wire_unpack(body, len, &u, msg);
    if (rv != 0) {
        conn_error(c, 0, rv, msg);
        msgpack_unpacked_destroy(&u);
        return;
    }
    struct wire_request wr;
    rv = wire_request_decode(&u.data, &wr, msg);
    if (rv != 0) {
        conn_error(c, wr.id, rv, msg);
        msgpack_unpacked_destroy(&u);
        return;
    }
    struct node_req *r = calloc(1, sizeof *r);
    if (r == NULL) {
        conn_error(c, wr.id, ALLOT_ENOMEM, "out of memory");
        msgpack_unpacked_destroy(&u);
        return;
    }
    r->node = n;
    r->conn = c;
    r->id = wr.id;
    r->op = wr.op;
    r->arrived_ns = clock_mono_ns();
    TAILQ_INSERT_TAIL(&c->reqs, r, conn_link);
    c->inflight++;

    /* A signed request carries its args as bytes: keep them (a follower
     * forwards them unchanged) and decode them. */
    msgpack_unpacked ub;
    msgpack_unpacked_init(&ub);
    if (wr.body != NULL) {
        r->body_len = wr.body->via.bin.size;
        r->body = malloc(r->body_len + 1);
        if (r->body == NULL) {
            rv = allot_errf(msg, ALLOT_ENOMEM, "out of memory");
        } else {
            wire_memcpy(r->body, wr.body->via.bin.ptr, r->body_len);
            rv = wire_unpack(r->body, r->body_len, &ub, msg);
        }
        if (rv == 0 && ub.data.type != MSGPACK_OBJECT_MAP) {
            rv = allot_errf(msg, ALLOT_EINVALID, "body must hold a map");
        }
        wr.args = rv == 0 ? &ub.data : NULL;
        if (rv == 0) {
            rv = auth_unpack_claim(wr.auth, &r->claim, msg);
            r->is_signed = rv == 0;
        }
    }
    if (rv == 0) {
        rv = decode_credentials(r, &u.data, msg);
    }
    if (rv == 0) {
        rv = decode_args(r, &wr, msg);
    }
    if (rv == 0 && wr.args != NULL && wr.body == NULL &&
        raft_state(&n->raft) != RAFT_LEADER &&
        !(wire_op_flags(r->op) & WIRE_OP_LOCAL)) {
        /* Headed for the leader: keep the args exactly as they came, so
         * forwarding never re-encodes (and never drifts from) any op. */
        rv = keep_args(r, wr.args, msg);
    }
    msgpack_unpacked_destroy(&ub);
    msgpack_unpacked_destroy(&u);
    if (rv != 0) {
        node_reply_error(r, rv, msg);
        return;
    }
    unsigned flags = wire_op_flags(r->op);
    bool leading = raft_state(&n->raft) == RAFT_LEADER;
    if (r->is_signed && !r->http_signed && (flags & WIRE_OP_WRITE) &&
        r->cmd.client == 0) {
        /* Nonces are remembered per node: after a leader change only the
         * state machine's (client, seq) memory stops a replayed write. */
        node_reply_error(r, ALLOT_EINVALID,
                         "a signed write needs client and seq (exactly-once "
                         "ids; the client library sets them)");
        return;
    }
    bool credentials = r->is_signed || r->token[0] != '\0';
    if (credentials && (leading || (flags & WIRE_OP_LOCAL))) {
        /* Verified where the principals are authoritative (the leader),
         * or here for what this node answers itself. A follower forwards
         * signed requests untouched for the leader to verify. */
        rv = node_verify(n, r, msg);
    } else if (!credentials && !n->cfg.insecure && r->op != WIRE_OP_PING) {
        rv = allot_errf(msg, ALLOT_EUNAUTHENTICATED,
                        "this cluster accepts signed requests only: use "
                        "allotctl --identity FILE (allotctl identity new)");
    }
    if (rv != 0) {
        node_reply_error(r, rv, msg);
        return;
    }
    if (flags & WIRE_OP_LOCAL) {
        if (r->op == WIRE_OP_PING) {
            handle_ping(r);
        } else if (r->op == WIRE_OP_QUOTA_WATCH) {
            gateway_watch_start(r);
        } else if (r->op == WIRE_OP_GOSSIP_MEMBERS ||
                   r->op == WIRE_OP_GOSSIP_KEYS) {
            announce_handle(r);
        } else if (r->op == WIRE_OP_SHARE_SHOW) {
            share_handle(r);
        } else {
            gateway_handle_status(r);
        }
    } else if (leading) {
        leader_submit(r);
    } else if (wr.forwarded) {
        /* Forward once, never twice: a stale leader view on both sides must
         * not bounce a request around. The client retries elsewhere. */
        node_reply_error(r, ALLOT_EUNAVAILABLE,
                         "not the leader (forwarded request)");
    } else {
        forward_submit(r);
    }
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    (void)buf;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->rbuf.len += (size_t)nread;
    for (;;) {
        const char *body;
        size_t len;
        int rv = wire_rbuf_next(&c->rbuf, &body, &len);
        if (rv == 0) {
            break;
        }
        if (rv < 0) {
            LOGW(NODE_COMP, "closing client: frame too large", "limit=%u",
                 WIRE_FRAME_MAX);
            conn_close(c);
            return;
        }
        gateway_dispatch(c, body, len);
        if (c->closing) {
            return;
        }
        if (conn_congested(c)) {
            conn_pause(c);
            break;
        }
    }
}

/* --- Connections
 * -------------------------------------------------------------- */

static void conn_free_cb(uv_handle_t *h)
{
    struct conn *c = h->data;
    wire_rbuf_close(&c->rbuf);
    msgpack_sbuffer_destroy(&c->out);
    free(c);
}

static void conn_close(struct conn *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    struct node_req *r;
    while ((r = TAILQ_FIRST(&c->reqs)) != NULL) {
        TAILQ_REMOVE(&c->reqs, r, conn_link);
        r->conn = NULL;
    }
    c->inflight = 0;
    if (c->dirty) {
        TAILQ_REMOVE(&c->node->dirty, c, dirty_link);
        c->dirty = false;
    }
    TAILQ_REMOVE(&c->node->conns, c, link);
    uv_close((uv_handle_t *)&c->tcp, conn_free_cb);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct node *n = server->data;
    if (status != 0 || n->stopping) {
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return;
    }
    c->node = n;
    wire_rbuf_init(&c->rbuf);
    msgpack_sbuffer_init(&c->out);
    TAILQ_INIT(&c->reqs);
    uv_tcp_init(n->loop, &c->tcp);
    c->tcp.data = c;
    TAILQ_INSERT_TAIL(&n->conns, c, link);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->reading = true;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

int gateway_listen(struct node *n)
{
    struct sockaddr_in sa;
    char why[160];
    if (addr_parse(n->cfg.client_addr, &sa, why, sizeof why) != 0) {
        LOGE(NODE_COMP, "bad --client address", "why=\"%s\"", why);
        return -1;
    }
    uv_tcp_init(n->loop, &n->listener);
    n->listener.data = n;
    int rv = uv_tcp_bind(&n->listener, (const struct sockaddr *)&sa, 0);
    if (rv == 0) {
        rv = uv_listen((uv_stream_t *)&n->listener, 511, on_connection);
    }
    if (rv != 0) {
        LOGE(NODE_COMP, "cannot listen for clients", "addr=%s err=\"%s\"",
             n->cfg.client_addr, uv_strerror(rv));
        uv_close((uv_handle_t *)&n->listener, NULL);
        n->listener.data = NULL;
        return -1;
    }
    return 0;
}

void gateway_close_all(struct node *n)
{
    if (n->listener.data != NULL) {
        uv_close((uv_handle_t *)&n->listener, NULL);
        n->listener.data = NULL;
    }
    struct conn *c;
    while ((c = TAILQ_FIRST(&n->conns)) != NULL) {
        conn_close(c);
    }
}

/* --- cluster.status ----------------------------------------------------------
 */

static const char *state_name(int state)
{
    switch (state) {
    case RAFT_FOLLOWER:
        return "follower";
    case RAFT_CANDIDATE:
        return "candidate";
    case RAFT_LEADER:
        return "leader";
    default:
        return "unavailable";
    }
}

static const char *role_name(int role)
{
    switch (role) {
    case RAFT_VOTER:
        return "voter";
    case RAFT_STANDBY:
        return "standby";
    default:
        return "spare";
    }
}

void gateway_handle_status(struct node_req *r)
{
    struct node *n = r->node;
    struct raft *raft = &n->raft;
    msgpack_packer pk;
    if (node_reply_begin(r, &pk) == NULL) {
        node_reply_done(r);
        return;
    }
    raft_id leader_id;
    const char *leader_addr;
    raft_leader(raft, &leader_id, &leader_addr);
    bool leading = raft_state(raft) == RAFT_LEADER;
    char digest[65] = "";
    if (r->want_digest) {
        /* O(quotas): computed only when asked (tests, fault checks). */
        fsm_digest(n->fsm, digest);
    }

    char catalog_digest[33];
    fsm_catalog_digest(n->fsm, catalog_digest);
    msgpack_pack_map(&pk, r->want_digest ? 13 : 12);
    wire_pack_kv_u64(&pk, "id", n->cfg.id);
    wire_pack_kv_str(&pk, "state", state_name(raft_state(raft)));
    wire_pack_str(&pk, "leader");
    if (leader_id != 0) {
        msgpack_pack_uint64(&pk, leader_id);
    } else {
        msgpack_pack_nil(&pk);
    }
    wire_pack_kv_u64(&pk, "term", raft->current_term);
    wire_pack_kv_u64(&pk, "commit_index", raft->commit_index);
    wire_pack_kv_u64(&pk, "applied_index", raft_last_applied(raft));
    wire_pack_kv_u64(&pk, "last_index", raft_last_index(raft));
    wire_pack_kv_u64(&pk, "catalog_version", fsm_catalog_version(n->fsm));
    wire_pack_kv_str(&pk, "catalog_digest", catalog_digest);
    wire_pack_kv_u64(&pk, "quotas", fsm_quota_count(n->fsm));
    if (r->want_digest) {
        wire_pack_kv_str(&pk, "digest", digest);
    }
    wire_pack_str(&pk, "ready");
    if (leading && n->ready_term == raft->current_term) {
        msgpack_pack_true(&pk);
    } else {
        msgpack_pack_false(&pk);
    }
    wire_pack_str(&pk, "members");
    msgpack_pack_array(&pk, raft->configuration.n);
    for (unsigned i = 0; i < raft->configuration.n; i++) {
        const struct raft_server *s = &raft->configuration.servers[i];
        const char *client = fsm_node_addr(n->fsm, s->id);
        const char *st;
        if (s->id == leader_id) {
            st = "leader";
        } else if (leading) {
            /* Only the leader knows who answers it. */
            st = raft->leader_state.progress[i].recent_recv ? "follower"
                                                            : "unreachable";
        } else {
            st = "follower";
        }
        msgpack_pack_map(&pk, leading ? 6 : 5);
        wire_pack_kv_u64(&pk, "id", s->id);
        wire_pack_kv_str(&pk, "raft_addr", s->address);
        wire_pack_kv_str(&pk, "role", role_name(s->role));
        wire_pack_kv_str(&pk, "state", st);
        wire_pack_str(&pk, "client_addr");
        if (client != NULL) {
            wire_pack_str(&pk, client);
        } else {
            msgpack_pack_nil(&pk);
        }
        if (leading) {
            wire_pack_kv_u64(&pk, "match_index",
                             s->id == n->cfg.id
                                 ? raft->last_stored
                                 : raft->leader_state.progress[i].match_index);
        }
    }
    node_reply_done(r);
}

/* --- quota.watch ------------------------------------------------------------
 *
 * The first frame says where the stream starts ({"watch": prefix,
 * "version": V}); every later frame carries one change (an audit record:
 * version, time_ms, principal, op, path, old, new). If the changes after the
 * cursor are no longer kept, a not_found error ends the stream: re-read,
 * then watch from the current version. */

#define WATCH_BATCH 256

static void watch_free(struct node *n, struct watch *w)
{
    TAILQ_REMOVE(&n->watches, w, link);
    node_req_free(w->r);
    free(w);
}

static void watch_frame_begin(void *arg, msgpack_packer **pk)
{
    struct node_req *r = arg;
    static msgpack_packer packer;
    r->reply_start = frame_begin(r->conn, &packer);
    wire_pack_ok_head(&packer, r->id);
    *pk = &packer;
}

static void watch_frame_end(void *arg, msgpack_packer **pk)
{
    struct node_req *r = arg;
    (void)pk;
    frame_end(r->conn, r->reply_start);
}

void gateway_watch_start(struct node_req *r)
{
    struct node *n = r->node;
    struct watch *w = calloc(1, sizeof *w);
    if (w == NULL) {
        node_reply_error(r, ALLOT_ENOMEM, "out of memory");
        return;
    }
    w->r = r;
    uint64_t now = fsm_catalog_version(n->fsm);
    w->cursor = r->has_after_version ? r->after_version : now;
    if (w->cursor > now) {
        /* A version this node has not applied yet: start from what it has
         * and let the stream catch up; never skip. */
        w->cursor = r->after_version;
    }
    msgpack_packer pk;
    size_t start = frame_begin(r->conn, &pk);
    wire_pack_ok_head(&pk, r->id);
    msgpack_pack_map(&pk, 2);
    wire_pack_kv_str(&pk, "watch", r->path);
    wire_pack_kv_u64(&pk, "version", w->cursor);
    frame_end(r->conn, start);
    TAILQ_INSERT_TAIL(&n->watches, w, link);
}

void gateway_watch_tick(struct node *n)
{
    struct watch *w, *next;
    for (w = TAILQ_FIRST(&n->watches); w != NULL; w = next) {
        next = TAILQ_NEXT(w, link);
        struct node_req *r = w->r;
        if (r->conn == NULL || r->conn->closing) {
            watch_free(n, w);
            continue;
        }
        if (conn_congested(r->conn)) {
            continue; /* the client reads slowly: wait for it */
        }
        int rv =
            fsm_watch_next(n->fsm, r->path, r->path_len, &w->cursor,
                           WATCH_BATCH, watch_frame_begin, watch_frame_end, r);
        if (rv == ALLOT_ENOT_FOUND) {
            char msg[ALLOT_ERRMSG_SIZE];
            allot_errf(msg, ALLOT_ENOT_FOUND,
                       "changes after version %llu are no longer kept (audit "
                       "retention); read the quotas again and watch from the "
                       "current version",
                       (unsigned long long)w->cursor);
            TAILQ_REMOVE(&n->watches, w, link);
            node_reply_error(r, ALLOT_ENOT_FOUND, msg);
            free(w);
        }
    }
}

void gateway_watch_close_all(struct node *n)
{
    struct watch *w;
    while ((w = TAILQ_FIRST(&n->watches)) != NULL) {
        watch_free(n, w);
    }
}

/* --- Virtual connections
 * ------------------------------------------------------
 *
 * The HTTP API speaks to the gateway as a client would: it builds msgpack
 * requests, hands them to gateway_dispatch() on a connection without a
 * socket, and receives the reply frames through `sink` once per loop turn.
 * Everything a msgpack client gets (forwarding, authentication, batching,
 * metrics) an HTTP client gets the same way. */

struct conn *gateway_conn_virtual(struct node *n, gateway_sink_fn sink,
                                  void *owner)
{
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    c->node = n;
    c->sink = sink;
    c->owner = owner;
    wire_rbuf_init(&c->rbuf);
    msgpack_sbuffer_init(&c->out);
    TAILQ_INIT(&c->reqs);
    return c;
}

void gateway_conn_virtual_close(struct conn *c)
{
    struct node_req *r;
    while ((r = TAILQ_FIRST(&c->reqs)) != NULL) {
        TAILQ_REMOVE(&c->reqs, r, conn_link);
        r->conn = NULL;
    }
    if (c->dirty) {
        TAILQ_REMOVE(&c->node->dirty, c, dirty_link);
    }
    wire_rbuf_close(&c->rbuf);
    msgpack_sbuffer_destroy(&c->out);
    free(c);
}
