/* agent.c - allot-agent: liballot behind a Unix socket, for local
 * applications that cannot embed it (docs/enforce.md, "The agent").
 *
 * One libuv loop. Each connection speaks frames of proto/wire.h (a 4-byte
 * big-endian length, then one msgpack map):
 *
 *   request  {"id": u64, "op": str, "args": map?}
 *   reply    {"id": u64, "ok": true, "result": ...}
 *            {"id": u64, "ok": false, "error": code, "message": str}
 *
 *   check    {path, key?, cost? = 1, prio? = 2}  -> {allowed, shadow,
 *            delayed, retry_after_ns, remaining, rule_version, reason}
 *   acquire  {path, key?, memory_mb? = 0, vcores? = 0, prio? = 2}
 *            -> {allowed, slot?, shadow, remaining, retry_after_ns,
 *                rule_version, reason}
 *   release  {slot}                           -> {released: true}
 *   stats    {path?}                          -> instance and rule figures
 *   ping     {}                               -> {catalog_version}
 *
 * Failure modes, none of which changes any state:
 *   - a length over AGENT_FRAME_MAX: the stream cannot be trusted; the
 *     connection is closed;
 *   - a body that is not one well-formed msgpack value: error `protocol`,
 *     id 0; the connection stays open;
 *   - a well-formed request with a missing or mistyped field, an unknown
 *     op, a bad path: error `invalid` naming the field;
 *   - a path without a rule: `not_found`; a slot this connection does not
 *     hold: `not_found`.
 * A connection that closes (or breaks) releases every slot it holds. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "allot.h"
#include "lib.h"
#include "quota.h"
#include "wire.h"

#define AGENT_FRAME_MAX      (64u * 1024u)
#define AGENT_KEY_MAX        1024u
#define AGENT_CONN_SLOTS_MAX 65536u
#define AGENT_WRITE_HIGH     (4u << 20) /* stop reading above this */
#define AGENT_WRITE_LOW      (1u << 20) /* resume below this */

struct agent
{
    uv_loop_t loop;
    uv_pipe_t listener;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    uv_timer_t trim;
    uint64_t pulls_trimmed; /* liballot's pull count at the last trim */
    struct allot *a;
    struct conn *conns; /* doubly linked */
    const char *socket_path;
    bool stopping;
    uint64_t conns_open;
};

struct conn
{
    uv_pipe_t pipe;
    struct agent *ag;
    struct conn *prev, *next;
    struct wire_rbuf rbuf;
    uintptr_t *slots; /* held slot handles */
    uint32_t n_slots;
    uint32_t cap_slots;
    size_t unsent;
    bool reading;
    bool closing;
};

struct write_req
{
    uv_write_t req;
    struct conn *c;
    char *data; /* owned */
    size_t len;
};

static void conn_resume(struct conn *c);

/* --- Replies -------------------------------------------------------------- */

static void write_cb(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = w->c;
    (void)status; /* a failed write shows up as a read error and closes */
    c->unsent -= w->len;
    free(w->data);
    free(w);
    if (!c->closing && !c->reading && c->unsent < AGENT_WRITE_LOW) {
        conn_resume(c);
    }
}

/* Send a finished frame (sb holds it, header included); takes sb's data. */
static void send_frame(struct conn *c, msgpack_sbuffer *sb)
{
    if (wire_frame_finish(sb) != 0 || c->closing) {
        msgpack_sbuffer_destroy(sb);
        return;
    }
    struct write_req *w = malloc(sizeof *w);
    if (w == NULL) {
        msgpack_sbuffer_destroy(sb);
        return;
    }
    w->c = c;
    w->len = sb->size;
    w->data = msgpack_sbuffer_release(sb);
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)w->len);
    c->unsent += w->len;
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, write_cb) != 0) {
        c->unsent -= w->len;
        free(w->data);
        free(w);
    }
}

static void reply_error(struct conn *c, uint64_t id, int code, const char *msg)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    wire_frame_start(&sb, &pk);
    wire_pack_error(&pk, id, code, msg);
    send_frame(c, &sb);
}

/* --- Requests ------------------------------------------------------------- */

struct req
{
    struct conn *c;
    uint64_t id;
    const msgpack_object *args; /* a map (an empty one when absent) */
    char msg[ALLOT_ERRMSG_SIZE];
};

static int arg_str(struct req *q, const char *key, bool required, char *buf,
                   size_t size, bool *present)
{
    const char *s;
    size_t len;
    int rv = wire_get_str(q->args, key, required, &s, &len, q->msg);
    *present = rv == 0;
    if (rv == ALLOT_ENOT_FOUND) {
        return 0;
    }
    if (rv != 0) {
        return rv;
    }
    if (len >= size || (len > 0 && memchr(s, '\0', len) != NULL)) {
        return allot_errf(q->msg, ALLOT_EINVALID,
                          "%s must be a string of 1 to %zu bytes without NUL",
                          key, size - 1);
    }
    wire_memcpy(buf, s, len);
    buf[len] = '\0';
    return 0;
}

static int arg_u64(struct req *q, const char *key, uint64_t dflt, uint64_t max,
                   uint64_t *out)
{
    *out = dflt;
    int rv = wire_get_u64(q->args, key, false, out, q->msg);
    if (rv == ALLOT_ENOT_FOUND) {
        *out = dflt;
        return 0;
    }
    if (rv == 0 && *out > max) {
        return allot_errf(q->msg, ALLOT_EINVALID, "%s must be at most %" PRIu64,
                          key, max);
    }
    return rv;
}

/* The handle of the request's "path". allot_rule() finds a resolved one
 * in a tree under a mutex: microseconds per request are not the point of
 * the agent, and a cache here would double the memory per rule. */
static int arg_rule(struct req *q, struct allot_rule **out)
{
    char path[QUOTA_PATH_MAX + 1];
    bool present;
    int rv = arg_str(q, "path", true, path, sizeof path, &present);
    if (rv != 0) {
        return rv;
    }
    rv = quota_path_check(path, strlen(path), q->msg);
    if (rv != 0) {
        return rv;
    }
    rv = allot_rule(q->c->ag->a, path, out);
    if (rv != 0) {
        return allot_errf(q->msg, rv, "cannot resolve %s: %s", path,
                          allot_strerror(rv));
    }
    return 0;
}

static int arg_prio(struct req *q, int *prio)
{
    uint64_t p;
    int rv = arg_u64(q, "prio", ALLOT_PRIO_NORMAL, ALLOT_PRIO_LOW, &p);
    *prio = (int)p;
    return rv;
}

static void pack_decision(msgpack_packer *pk, const struct allot_decision *d,
                          unsigned extra)
{
    msgpack_pack_map(pk, 7 + extra);
    wire_pack_str(pk, "allowed");
    d->allowed ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    wire_pack_str(pk, "shadow");
    d->shadow ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    wire_pack_str(pk, "delayed");
    d->delayed ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    wire_pack_kv_u64(pk, "retry_after_ns", d->retry_after_ns);
    wire_pack_kv_u64(pk, "remaining", d->remaining);
    wire_pack_kv_u64(pk, "rule_version", d->rule_version);
    wire_pack_kv_str(pk, "reason", allot_reason_name(d->reason));
}

static int decision_error(struct req *q, int rv, struct allot_rule *r,
                          const char *what)
{
    if (rv == ALLOT_ENOT_FOUND) {
        return allot_errf(q->msg, rv, "no rule at %s (yet)",
                          allot_rule_path(r));
    }
    if (rv == ALLOT_EINVALID) {
        return allot_errf(q->msg, rv, "%s is not a %s quota",
                          allot_rule_path(r), what);
    }
    return allot_errf(q->msg, rv, "%s: %s", allot_rule_path(r),
                      allot_strerror(rv));
}

static int op_check(struct req *q, msgpack_sbuffer *sb, msgpack_packer *pk)
{
    struct allot_rule *r;
    char key[AGENT_KEY_MAX + 1];
    bool has_key;
    uint64_t cost;
    int prio;
    int rv = arg_rule(q, &r);
    rv = rv ? rv : arg_str(q, "key", false, key, sizeof key, &has_key);
    rv = rv ? rv : arg_u64(q, "cost", 1, UINT64_MAX, &cost);
    rv = rv ? rv : arg_prio(q, &prio);
    if (rv != 0) {
        return rv;
    }
    struct allot_decision d;
    rv = allot_check_prio(r, has_key ? key : NULL, cost, prio, &d);
    if (rv != 0) {
        return decision_error(q, rv, r, "rate");
    }
    (void)sb;
    wire_pack_ok_head(pk, q->id);
    pack_decision(pk, &d, 0);
    return 0;
}

static int conn_hold(struct conn *c, uintptr_t slot)
{
    if (c->n_slots == c->cap_slots) {
        uint32_t cap = c->cap_slots ? c->cap_slots * 2 : 16;
        uintptr_t *s = realloc(c->slots, cap * sizeof *s);
        if (s == NULL) {
            return ALLOT_ENOMEM;
        }
        c->slots = s;
        c->cap_slots = cap;
    }
    c->slots[c->n_slots++] = slot;
    return 0;
}

static int op_acquire(struct req *q, msgpack_sbuffer *sb, msgpack_packer *pk)
{
    struct allot_rule *r;
    char key[AGENT_KEY_MAX + 1];
    bool has_key;
    uint64_t mem, vcores;
    int prio;
    int rv = arg_rule(q, &r);
    rv = rv ? rv : arg_str(q, "key", false, key, sizeof key, &has_key);
    rv = rv ? rv : arg_u64(q, "memory_mb", 0, UINT64_MAX, &mem);
    rv = rv ? rv : arg_u64(q, "vcores", 0, UINT64_MAX, &vcores);
    rv = rv ? rv : arg_prio(q, &prio);
    if (rv != 0) {
        return rv;
    }
    if (q->c->n_slots >= AGENT_CONN_SLOTS_MAX) {
        return allot_errf(q->msg, ALLOT_ETOO_BIG,
                          "this connection holds %u slots already (the most "
                          "one connection may)",
                          AGENT_CONN_SLOTS_MAX);
    }
    /* Room to remember the slot first, so holding cannot fail after. */
    if (q->c->n_slots == q->c->cap_slots) {
        if (conn_hold(q->c, 0) != 0) {
            return allot_errf(q->msg, ALLOT_ENOMEM, "out of memory");
        }
        q->c->n_slots--;
    }
    struct allot_slot *s;
    struct allot_decision d;
    rv = allot_acquire_res(r, has_key ? key : NULL, mem, vcores, prio, &s, &d);
    if (rv != 0) {
        return decision_error(q, rv, r, "capacity");
    }
    (void)sb;
    wire_pack_ok_head(pk, q->id);
    pack_decision(pk, &d, s != NULL ? 1 : 0);
    if (s != NULL) {
        conn_hold(q->c, (uintptr_t)s);
        wire_pack_kv_u64(pk, "slot", (uint64_t)(uintptr_t)s);
    }
    return 0;
}

static int op_release(struct req *q, msgpack_sbuffer *sb, msgpack_packer *pk)
{
    uint64_t slot;
    int rv = wire_get_u64(q->args, "slot", true, &slot, q->msg);
    if (rv != 0) {
        return rv;
    }
    struct conn *c = q->c;
    for (uint32_t i = 0; i < c->n_slots; i++) {
        if ((uint64_t)c->slots[i] == slot) {
            allot_release((struct allot_slot *)c->slots[i]);
            c->slots[i] = c->slots[--c->n_slots];
            (void)sb;
            wire_pack_ok_head(pk, q->id);
            msgpack_pack_map(pk, 1);
            wire_pack_str(pk, "released");
            msgpack_pack_true(pk);
            return 0;
        }
    }
    return allot_errf(q->msg, ALLOT_ENOT_FOUND,
                      "slot %" PRIu64 " is not held by this connection", slot);
}

static void pack_usage(msgpack_packer *pk, const char *name,
                       const struct allot_usage *u)
{
    wire_pack_str(pk, name);
    msgpack_pack_map(pk, 6);
    wire_pack_usage(pk, u->admitted, u->rejected, u->shadowed, u->delayed,
                    u->cost, u->peak);
}

static void pack_rule_stats(msgpack_packer *pk, struct allot_rule *r)
{
    struct allot_rule_stats rs;
    allot_rule_stats(r, &rs);
    msgpack_pack_map(pk, 15);
    wire_pack_kv_str(pk, "path", allot_rule_path(r));
    wire_pack_kv_u64(pk, "rule_version", rs.rule_version);
    wire_pack_kv_str(pk, "kind",
                     rs.kind == 2   ? "rate"
                     : rs.kind == 1 ? "capacity"
                                    : "none");
    wire_pack_str(pk, "local_rate");
    msgpack_pack_double(pk, rs.local_rate);
    wire_pack_kv_u64(pk, "local_burst", rs.local_burst);
    wire_pack_kv_u64(pk, "local_max_apps", rs.local_max_apps);
    wire_pack_kv_u64(pk, "local_max_memory_mb", rs.local_max_memory_mb);
    wire_pack_kv_u64(pk, "local_max_vcores", rs.local_max_vcores);
    wire_pack_kv_u64(pk, "in_use_apps", rs.in_use_apps);
    wire_pack_kv_u64(pk, "in_use_memory_mb", rs.in_use_memory_mb);
    wire_pack_kv_u64(pk, "in_use_vcores", rs.in_use_vcores);
    pack_usage(pk, "total", &rs.total);
    pack_usage(pk, "window", &rs.window);
    wire_pack_kv_u64(pk, "window_start_ms", rs.window_start_ms);
    wire_pack_kv_u64(pk, "window_ms", rs.window_ms);
}

static int op_stats(struct req *q, msgpack_sbuffer *sb, msgpack_packer *pk)
{
    struct agent *ag = q->c->ag;
    struct allot_rule *only = NULL;
    if (wire_map_get(q->args, "path") != NULL) {
        int rv = arg_rule(q, &only);
        if (rv != 0) {
            return rv;
        }
    }
    struct allot_stats st;
    allot_stats(ag->a, &st);
    (void)sb;
    wire_pack_ok_head(pk, q->id);
    msgpack_pack_map(pk, 32);
    wire_pack_kv_u64(pk, "catalog_version", st.catalog_version);
    wire_pack_kv_u64(pk, "server_version", st.server_version);
    wire_pack_kv_u64(pk, "versions_behind", st.versions_behind);
    wire_pack_kv_u64(pk, "rules", st.rules);
    wire_pack_kv_u64(pk, "handles", st.handles);
    wire_pack_kv_u64(pk, "confirmed_ms", st.confirmed_ms);
    wire_pack_kv_u64(pk, "age_ms", st.age_ms);
    wire_pack_str(pk, "from_disk");
    st.from_disk ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    wire_pack_str(pk, "source_connected");
    st.source_connected ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    wire_pack_kv_u64(pk, "disk_saved_ms", st.disk_saved_ms);
    wire_pack_kv_u64(pk, "disk_version", st.disk_version);
    wire_pack_kv_u64(pk, "pulls", st.pulls);
    wire_pack_kv_u64(pk, "changes", st.changes);
    wire_pack_kv_u64(pk, "resyncs", st.resyncs);
    wire_pack_kv_u64(pk, "persist_errors", st.persist_errors);
    wire_pack_kv_u64(pk, "slots_in_use", st.slots_in_use);
    wire_pack_kv_u64(pk, "stale_releases", st.stale_releases);
    wire_pack_str(pk, "gossip");
    st.gossip_configured ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    wire_pack_kv_u64(pk, "announced_version", st.announced_version);
    wire_pack_kv_u64(pk, "announcements", st.announcements);
    wire_pack_kv_u64(pk, "deltas", st.deltas);
    wire_pack_kv_u64(pk, "digest_mismatches", st.digest_mismatches);
    wire_pack_kv_u64(pk, "gossip_members", st.gossip_members);
    wire_pack_kv_u64(pk, "gossip_servers", st.gossip_servers);
    wire_pack_kv_u64(pk, "usage_reports", st.usage_reports);
    wire_pack_kv_u64(pk, "usage_errors", st.usage_errors);
    wire_pack_kv_u64(pk, "connections", ag->conns_open);
    wire_pack_kv_u64(pk, "fleet_members", st.fleet_members);
    wire_pack_kv_u64(pk, "view_version", st.view_version);
    wire_pack_kv_u64(pk, "share_state", st.share_state);
    wire_pack_str(pk, "health");
    msgpack_pack_double(pk, st.health);
    wire_pack_str(pk, "rule_stats");
    if (only != NULL) {
        msgpack_pack_array(pk, 1);
        pack_rule_stats(pk, only);
        return 0;
    }
    size_t n = allot_rules(ag->a, NULL, 0);
    struct allot_rule **rs = n > 0 ? malloc(n * sizeof *rs) : NULL;
    if (n > 0 && rs == NULL) {
        n = 0; /* out of memory: the figures without the rules */
    }
    n = n > 0 ? allot_rules(ag->a, rs, n) : 0;
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        pack_rule_stats(pk, rs[i]);
    }
    free(rs);
    return 0;
}

static int op_ping(struct req *q, msgpack_sbuffer *sb, msgpack_packer *pk)
{
    (void)sb;
    wire_pack_ok_head(pk, q->id);
    msgpack_pack_map(pk, 1);
    wire_pack_kv_u64(pk, "catalog_version", allot_catalog_version(q->c->ag->a));
    return 0;
}

static const struct
{
    const char *name;
    int (*fn)(struct req *q, msgpack_sbuffer *sb, msgpack_packer *pk);
} ops[] = {
    {"check", op_check}, {"acquire", op_acquire}, {"release", op_release},
    {"stats", op_stats}, {"ping", op_ping},
};

static void handle_frame(struct conn *c, const char *body, size_t len)
{
    struct req q = {.c = c};
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rv = wire_unpack(body, len, &u, q.msg);
    if (rv != 0) {
        reply_error(c, 0, ALLOT_EPROTOCOL, q.msg);
        goto out;
    }
    const msgpack_object *root = &u.data;
    if (root->type != MSGPACK_OBJECT_MAP) {
        reply_error(c, 0, ALLOT_EINVALID, "a request must be a map");
        goto out;
    }
    rv = wire_get_u64(root, "id", true, &q.id, q.msg);
    const char *op = NULL;
    size_t op_len = 0;
    if (rv == 0) {
        rv = wire_get_str(root, "op", true, &op, &op_len, q.msg);
    }
    static const msgpack_object empty = {.type = MSGPACK_OBJECT_MAP};
    q.args = wire_map_get(root, "args");
    if (rv == 0 && q.args == NULL) {
        q.args = &empty;
    } else if (rv == 0 && q.args->type != MSGPACK_OBJECT_MAP) {
        rv = allot_errf(q.msg, ALLOT_EINVALID, "args must be a map");
    }
    if (rv != 0) {
        reply_error(c, q.id, rv, q.msg);
        goto out;
    }
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        if (strlen(ops[i].name) == op_len &&
            memcmp(ops[i].name, op, op_len) == 0) {
            msgpack_sbuffer sb;
            msgpack_packer pk;
            msgpack_sbuffer_init(&sb);
            wire_frame_start(&sb, &pk);
            rv = ops[i].fn(&q, &sb, &pk);
            if (rv != 0) {
                msgpack_sbuffer_destroy(&sb);
                reply_error(c, q.id, rv, q.msg);
            } else {
                send_frame(c, &sb);
            }
            goto out;
        }
    }
    allot_errf(q.msg, ALLOT_EINVALID,
               "unknown op \"%.*s\": expected check, acquire, release, "
               "stats or ping",
               (int)(op_len > 64 ? 64 : op_len), op);
    reply_error(c, q.id, ALLOT_EINVALID, q.msg);
out:
    msgpack_unpacked_destroy(&u);
}

/* --- Connections ---------------------------------------------------------- */

static void conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    wire_rbuf_close(&c->rbuf);
    free(c->slots);
    free(c);
}

static void conn_close(struct conn *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    /* A client that goes away gives back what it held. */
    for (uint32_t i = 0; i < c->n_slots; i++) {
        allot_release((struct allot_slot *)c->slots[i]);
    }
    c->n_slots = 0;
    struct agent *ag = c->ag;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        ag->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    ag->conns_open--;
    uv_close((uv_handle_t *)&c->pipe, conn_closed);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct conn *c = h->data;
    char *tail;
    size_t avail;
    (void)hint;
    if (wire_rbuf_reserve(&c->rbuf, 16384, &tail, &avail) != 0) {
        *buf = uv_buf_init(NULL, 0); /* UV_ENOBUFS: the read fails */
        return;
    }
    *buf = uv_buf_init(tail, (unsigned)(avail > 65536 ? 65536 : avail));
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
    while (!c->closing) {
        size_t have = c->rbuf.len - c->rbuf.off;
        if (have >= WIRE_HEADER_LEN) {
            const unsigned char *h =
                (const unsigned char *)c->rbuf.base + c->rbuf.off;
            uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 |
                           (uint32_t)h[2] << 8 | h[3];
            if (len > AGENT_FRAME_MAX) {
                LOGW("agent", "frame too large; closing the connection",
                     "len=%u max=%u", len, AGENT_FRAME_MAX);
                conn_close(c);
                return;
            }
        }
        const char *body;
        size_t len;
        int rv = wire_rbuf_next(&c->rbuf, &body, &len);
        if (rv < 0) {
            conn_close(c);
            return;
        }
        if (rv == 0) {
            break;
        }
        handle_frame(c, body, len);
    }
    if (!c->closing && c->unsent > AGENT_WRITE_HIGH) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->reading = false;
    }
}

static void conn_resume(struct conn *c)
{
    if (uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb) == 0) {
        c->reading = true;
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct agent *ag = server->data;
    if (status != 0 || ag->stopping) {
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return;
    }
    c->ag = ag;
    wire_rbuf_init(&c->rbuf);
    uv_pipe_init(&ag->loop, &c->pipe, 0);
    c->pipe.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
        uv_close((uv_handle_t *)&c->pipe, conn_closed);
        return;
    }
    c->next = ag->conns;
    if (ag->conns != NULL) {
        ag->conns->prev = c;
    }
    ag->conns = c;
    ag->conns_open++;
    conn_resume(c);
}

/* --- Start and stop ------------------------------------------------------- */

/* A full read of the rules (at start, or after a lost watch history)
 * leaves its decoding memory free but mapped; give it back to the system
 * so the agent's resident size stays that of the rules it keeps. */
static void on_trim(uv_timer_t *t)
{
    struct agent *ag = t->data;
    struct allot_stats st;
    if (allot_stats(ag->a, &st) == 0 && st.pulls != ag->pulls_trimmed) {
        ag->pulls_trimmed = st.pulls;
        malloc_trim(0);
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct agent *ag = h->data;
    LOGI("agent", "stopping", "signal=%d", signum);
    ag->stopping = true;
    uv_close((uv_handle_t *)&ag->listener, NULL);
    uv_close((uv_handle_t *)&ag->trim, NULL);
    while (ag->conns != NULL) {
        conn_close(ag->conns);
    }
    uv_close((uv_handle_t *)&ag->sigint, NULL);
    uv_close((uv_handle_t *)&ag->sigterm, NULL);
}

/* A socket file left by an agent that died: nobody answers on it. One that
 * answers belongs to a live agent and is never taken over. */
static int claim_socket_path(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        return 0;
    }
    if (!S_ISSOCK(st.st_mode)) {
        fprintf(stderr, "error: exists: %s exists and is not a socket\n", path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        close(fd);
        fprintf(stderr, "error: exists: another agent listens on %s\n", path);
        return -1;
    }
    if (fd >= 0) {
        close(fd);
    }
    unlink(path);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: allot-agent --data-dir DIR --socket PATH [--fleet NAME]\n"
            "                   [--weight W] [--servers HOST:PORT,...]\n"
            "                   [--identity FILE | --token T]\n"
            "                   [--gossip HOST:PORT --gossip-seeds "
            "HOST:PORT,...\n"
            "                    --gossip-keyring FILE]\n"
            "                   [--per-key-max N] [--max-slots N] "
            "[--window-ms MS]\n"
            "                   [--host NAME]  (the name usage reports "
            "carry)\n"
            "                   [--log-level debug|info|warn|error]\n");
}

static int parse_u32(const char *s, const char *name, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || v > UINT32_MAX) {
        fprintf(stderr, "error: invalid: %s must be a number, got \"%s\"\n",
                name, s);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

int main(int argc, char **argv)
{
    struct allot_options o = {0};
    const char *socket_path = NULL;
    static const struct option longopts[] = {
        {"data-dir", required_argument, NULL, 'd'},
        {"fleet", required_argument, NULL, 'f'},
        {"weight", required_argument, NULL, 'w'},
        {"socket", required_argument, NULL, 's'},
        {"servers", required_argument, NULL, 'S'},
        {"identity", required_argument, NULL, 'i'},
        {"token", required_argument, NULL, 't'},
        {"gossip", required_argument, NULL, 'g'},
        {"gossip-seeds", required_argument, NULL, 'G'},
        {"gossip-keyring", required_argument, NULL, 'k'},
        {"per-key-max", required_argument, NULL, 'K'},
        {"max-slots", required_argument, NULL, 'M'},
        {"window-ms", required_argument, NULL, 'W'},
        {"host", required_argument, NULL, 'H'},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case 'd':
            o.data_dir = optarg;
            break;
        case 'f':
            o.fleet = optarg;
            break;
        case 'w':
            o.weight = strtod(optarg, &end);
            if (*optarg == '\0' || *end != '\0' || !(o.weight > 0)) {
                fprintf(stderr,
                        "error: invalid: --weight must be a number > 0\n");
                return 2;
            }
            break;
        case 's':
            socket_path = optarg;
            break;
        case 'S':
            o.servers = optarg;
            break;
        case 'i':
            o.identity = optarg;
            break;
        case 't':
            o.token = optarg;
            break;
        case 'g':
            o.gossip_bind = optarg;
            break;
        case 'G':
            o.gossip_seeds = optarg;
            break;
        case 'k':
            o.gossip_keyring = optarg;
            break;
        case 'K':
            if (parse_u32(optarg, "--per-key-max", &o.per_key_max) != 0) {
                return 2;
            }
            break;
        case 'M':
            if (parse_u32(optarg, "--max-slots", &o.max_slots) != 0) {
                return 2;
            }
            break;
        case 'H':
            o.host_name = optarg;
            break;
        case 'W':
            if (parse_u32(optarg, "--window-ms", &o.window_ms) != 0) {
                return 2;
            }
            break;
        case 'l': {
            int lvl = log_level_parse(optarg);
            if (lvl < 0) {
                fprintf(stderr, "error: invalid: --log-level %s\n", optarg);
                return 2;
            }
            log_set_level((enum log_level)lvl);
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || o.data_dir == NULL || socket_path == NULL) {
        fprintf(stderr, "error: invalid: --data-dir and --socket are "
                        "required\n");
        usage(stderr);
        return 2;
    }
    if (o.identity != NULL && o.token != NULL) {
        fprintf(stderr, "error: invalid: --identity or --token, not both\n");
        return 2;
    }
    struct sockaddr_un sun;
    if (strlen(socket_path) >= sizeof sun.sun_path) {
        fprintf(stderr, "error: invalid: --socket path longer than %zu\n",
                sizeof sun.sun_path - 1);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    static struct agent ag;
    ag.socket_path = socket_path;
    /* One thread decides here: one counter stripe per rule is enough. */
    o.counter_stripes = 1;
    int rv = allot_open(&o, &ag.a);
    if (rv != 0) {
        fprintf(stderr, "error: %s: cannot open liballot: %s\n",
                allot_error_name(rv), allot_strerror(rv));
        return 1;
    }
    int status = 1;
    uv_loop_init(&ag.loop);
    uv_pipe_init(&ag.loop, &ag.listener, 0);
    ag.listener.data = &ag;
    if (claim_socket_path(socket_path) != 0) {
        uv_close((uv_handle_t *)&ag.listener, NULL);
        goto out;
    }
    int uv_rv = uv_pipe_bind(&ag.listener, socket_path);
    if (uv_rv == 0) {
        chmod(socket_path, 0660);
        uv_rv = uv_listen((uv_stream_t *)&ag.listener, 128, on_connection);
    }
    if (uv_rv != 0) {
        fprintf(stderr, "error: io: cannot listen on %s: %s\n", socket_path,
                uv_strerror(uv_rv));
        uv_close((uv_handle_t *)&ag.listener, NULL);
        goto out;
    }
    malloc_trim(0); /* what decoding the rules on disk left behind */
    uv_timer_init(&ag.loop, &ag.trim);
    ag.trim.data = &ag;
    uv_timer_start(&ag.trim, on_trim, 1000, 5000);
    uv_signal_init(&ag.loop, &ag.sigint);
    uv_signal_init(&ag.loop, &ag.sigterm);
    ag.sigint.data = ag.sigterm.data = &ag;
    uv_signal_start(&ag.sigint, on_signal, SIGINT);
    uv_signal_start(&ag.sigterm, on_signal, SIGTERM);
    LOGI("agent", "listening", "socket=%s data_dir=%s servers=%s version=%llu",
         socket_path, o.data_dir, o.servers ? o.servers : "",
         (unsigned long long)allot_catalog_version(ag.a));
    uv_run(&ag.loop, UV_RUN_DEFAULT);
    unlink(socket_path);
    status = 0;
out:
    uv_run(&ag.loop, UV_RUN_DEFAULT); /* let the closes finish */
    if (uv_loop_close(&ag.loop) != 0) {
        LOGE("agent", "handles left open at exit", "%s", "");
        status = 3;
    }
    allot_close(ag.a);
    return status;
}
