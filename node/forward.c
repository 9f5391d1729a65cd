/* forward.c - a follower proxies reads, writes and membership changes to the
 * leader, so a client never has to find the leader itself.
 *
 * Happy path: raft tells us the leader's id; the state machine tells us its
 * client address (every leader records it in its first entry of a term). We
 * keep one connection to it, re-encode each request we decoded under a new
 * id with "fwd": true, and relay the reply under the client's id.
 *
 * Failure modes: no leader known, or its address not yet applied here ->
 * `unavailable` at once (the client backs off and retries); the leader
 * changes -> the old connection fails what it holds with `unavailable`;
 * connection error -> same; no reply within NODE_REQUEST_TIMEOUT_MS ->
 * `timeout`. A forwarded write that fails this way may still have been
 * applied: the client's retry carries the same (client, seq). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/lib.h"
#include "node.h"

static void fwd_fail_all(struct fwd *f, int code, const char *msg)
{
    struct node_req *r;
    while ((r = TAILQ_FIRST(&f->pending)) != NULL) {
        TAILQ_REMOVE(&f->pending, r, queue_link);
        node_reply_error(r, code, msg);
    }
}

static void fwd_free_cb(uv_handle_t *h)
{
    struct fwd *f = h->data;
    wire_rbuf_close(&f->rbuf);
    msgpack_sbuffer_destroy(&f->out);
    free(f);
}

/* Detach f from the node, fail its requests, close its handle. */
static void fwd_close(struct fwd *f, int code, const char *msg)
{
    if (f->closing) {
        return;
    }
    f->closing = true;
    if (f->node->fwd == f) {
        f->node->fwd = NULL;
    }
    fwd_fail_all(f, code, msg);
    uv_close((uv_handle_t *)&f->tcp, fwd_free_cb);
}

static struct node_req *fwd_take(struct fwd *f, uint64_t id)
{
    struct node_req *r;
    TAILQ_FOREACH(r, &f->pending, queue_link)
    {
        if (r->fwd_id == id) {
            TAILQ_REMOVE(&f->pending, r, queue_link);
            return r;
        }
    }
    return NULL;
}

static void relay_reply(struct fwd *f, const char *body, size_t len)
{
    char msg[ALLOT_ERRMSG_SIZE];
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    struct wire_reply rep;
    if (wire_unpack(body, len, &u, msg) != 0 ||
        wire_reply_decode(&u.data, &rep, msg) != 0) {
        msgpack_unpacked_destroy(&u);
        LOGW(NODE_COMP, "bad reply from leader, dropping connection", "%s", "");
        fwd_close(f, ALLOT_EUNAVAILABLE, "bad reply from the leader; retry");
        return;
    }
    struct node_req *r = fwd_take(f, rep.id);
    if (r == NULL) {
        msgpack_unpacked_destroy(&u); /* timed out here already */
        return;
    }
    if (rep.code != 0) {
        char m[ALLOT_ERRMSG_SIZE];
        size_t n =
            rep.message_len < sizeof m - 1 ? rep.message_len : sizeof m - 1;
        if (rep.message != NULL) {
            memcpy(m, rep.message, n);
        }
        m[rep.message != NULL ? n : 0] = '\0';
        node_reply_error(r, rep.code, m);
    } else {
        msgpack_packer pk;
        if (node_reply_begin(r, &pk) != NULL) {
            if (rep.result != NULL) {
                msgpack_pack_object(&pk, *rep.result);
            } else {
                msgpack_pack_nil(&pk);
            }
        }
        node_reply_done(r);
    }
    msgpack_unpacked_destroy(&u);
}

static void fwd_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct fwd *f = h->data;
    char *tail;
    size_t avail;
    (void)suggested;
    if (wire_rbuf_reserve(&f->rbuf, 65536, &tail, &avail) != 0) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf =
        uv_buf_init(tail, (unsigned)(avail > UINT32_MAX ? UINT32_MAX : avail));
}

static void fwd_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct fwd *f = s->data;
    (void)buf;
    if (nread < 0) {
        fwd_close(f, ALLOT_EUNAVAILABLE, "lost the connection to the leader");
        return;
    }
    f->rbuf.len += (size_t)nread;
    for (;;) {
        const char *body;
        size_t len;
        int rv = wire_rbuf_next(&f->rbuf, &body, &len);
        if (rv == 0) {
            return;
        }
        if (rv < 0) {
            fwd_close(f, ALLOT_EUNAVAILABLE, "bad frame from the leader");
            return;
        }
        relay_reply(f, body, len);
        if (f->closing) {
            return;
        }
    }
}

struct fwd_write
{
    uv_write_t w;
    char *data;
    struct fwd *f;
};

static void fwd_write_cb(uv_write_t *w, int status)
{
    struct fwd_write *fw = w->data;
    struct fwd *f = fw->f;
    free(fw->data);
    free(fw);
    if (status != 0 && !f->closing) {
        fwd_close(f, ALLOT_EUNAVAILABLE, "lost the connection to the leader");
    }
}

static void fwd_flush(struct fwd *f)
{
    if (!f->connected || f->closing || f->out.size == 0) {
        return;
    }
    struct fwd_write *fw = malloc(sizeof *fw);
    if (fw == NULL) {
        return;
    }
    size_t len = f->out.size;
    fw->data = msgpack_sbuffer_release(&f->out);
    fw->f = f;
    fw->w.data = fw;
    uv_buf_t buf = uv_buf_init(fw->data, (unsigned)len);
    if (uv_write(&fw->w, (uv_stream_t *)&f->tcp, &buf, 1, fwd_write_cb) != 0) {
        free(fw->data);
        free(fw);
        fwd_close(f, ALLOT_EUNAVAILABLE, "lost the connection to the leader");
    }
}

static void fwd_connect_cb(uv_connect_t *req, int status)
{
    struct fwd *f = req->data;
    if (f->closing) {
        return;
    }
    if (status != 0) {
        fwd_close(f, ALLOT_EUNAVAILABLE, "cannot reach the leader; retry");
        return;
    }
    f->connected = true;
    uv_tcp_nodelay(&f->tcp, 1);
    uv_read_start((uv_stream_t *)&f->tcp, fwd_alloc_cb, fwd_read_cb);
    fwd_flush(f);
}

static struct fwd *fwd_open(struct node *n, uint64_t leader_id,
                            const char *addr)
{
    struct sockaddr_in sa;
    char why[160];
    if (addr_parse(addr, &sa, why, sizeof why) != 0) {
        return NULL;
    }
    struct fwd *f = calloc(1, sizeof *f);
    if (f == NULL) {
        return NULL;
    }
    f->node = n;
    f->leader_id = leader_id;
    f->next_id = 1;
    wire_rbuf_init(&f->rbuf);
    msgpack_sbuffer_init(&f->out);
    TAILQ_INIT(&f->pending);
    uv_tcp_init(n->loop, &f->tcp);
    f->tcp.data = f;
    f->connect.data = f;
    if (uv_tcp_connect(&f->connect, &f->tcp, (const struct sockaddr *)&sa,
                       fwd_connect_cb) != 0) {
        f->closing = true;
        uv_close((uv_handle_t *)&f->tcp, fwd_free_cb);
        return NULL;
    }
    n->fwd = f;
    return f;
}

/* A signed request travels as it came: its body and claim, which the
 * leader verifies; only the id is ours. */
static void pack_signed(msgpack_packer *pk, const struct node_req *r)
{
    /* client/seq/ack are signed: send them whenever the client did. */
    bool write = (wire_op_flags(r->op) & WIRE_OP_WRITE) != 0 ||
                 r->cmd.client != 0 || r->cmd.seq != 0 || r->cmd.ack != 0;
    msgpack_pack_map(pk, write ? 8 : 5);
    wire_pack_kv_u64(pk, "id", r->fwd_id);
    wire_pack_kv_str(pk, "op", wire_op_name(r->op));
    wire_pack_str(pk, "fwd");
    msgpack_pack_true(pk);
    if (write) {
        wire_pack_kv_u64(pk, "client", r->cmd.client);
        wire_pack_kv_u64(pk, "seq", r->cmd.seq);
        wire_pack_kv_u64(pk, "ack", r->cmd.ack);
    }
    wire_pack_str(pk, "body");
    msgpack_pack_bin(pk, r->body_len);
    msgpack_pack_bin_body(pk, r->body, r->body_len);
    wire_pack_str(pk, "auth");
    auth_pack_claim(pk, &r->claim);
}

/* Credentials that travel with a re-encoded request: a bearer token, or an
 * HTTP signature with its target and raw body. */
static unsigned credential_fields(const struct node_req *r)
{
    return (r->token[0] != '\0' ? 1u : 0u) + (r->http_signed ? 1u : 0u);
}

static void pack_credentials(msgpack_packer *pk, const struct node_req *r)
{
    if (r->token[0] != '\0') {
        wire_pack_kv_str(pk, "token", r->token);
    }
    if (r->http_signed) {
        wire_pack_str(pk, "http_auth");
        msgpack_pack_map(pk, 6);
        wire_pack_kv_str(pk, "principal", r->claim.principal);
        wire_pack_kv_u64(pk, "ts", r->claim.ts_ms);
        wire_pack_str(pk, "nonce");
        msgpack_pack_bin(pk, AUTH_NONCE_LEN);
        msgpack_pack_bin_body(pk, r->claim.nonce, AUTH_NONCE_LEN);
        wire_pack_str(pk, "sig");
        msgpack_pack_bin(pk, AUTH_SIG_LEN);
        msgpack_pack_bin_body(pk, r->claim.sig, AUTH_SIG_LEN);
        wire_pack_kv_str(pk, "target", r->http_target);
        wire_pack_str(pk, "raw");
        msgpack_pack_bin(pk, r->body_len);
        msgpack_pack_bin_body(pk, r->body != NULL ? r->body : "", r->body_len);
    }
}

/* Everything else travels as it came too: the args bytes the gateway kept
 * (keep_args()), the request ids, and the credentials. */
static void pack_request(msgpack_packer *pk, const struct node_req *r)
{
    if (r->is_signed && !r->http_signed) {
        pack_signed(pk, r);
        return;
    }
    bool write = (wire_op_flags(r->op) & WIRE_OP_WRITE) != 0;
    msgpack_pack_map(pk, (write ? 7u : 4u) + credential_fields(r));
    pack_credentials(pk, r);
    wire_pack_kv_u64(pk, "id", r->fwd_id);
    wire_pack_kv_str(pk, "op", wire_op_name(r->op));
    wire_pack_str(pk, "fwd");
    msgpack_pack_true(pk);
    if (write) {
        wire_pack_kv_u64(pk, "client", r->cmd.client);
        wire_pack_kv_u64(pk, "seq", r->cmd.seq);
        wire_pack_kv_u64(pk, "ack", r->cmd.ack);
    }
    wire_pack_str(pk, "args");
    if (r->args != NULL) {
        pk->callback(pk->data, r->args, r->args_len);
    } else {
        msgpack_pack_map(pk, 0);
    }
}

void forward_submit(struct node_req *r)
{
    struct node *n = r->node;
    raft_id leader;
    const char *raft_addr;
    char msg[ALLOT_ERRMSG_SIZE];
    raft_leader(&n->raft, &leader, &raft_addr);
    if (leader == 0 || leader == n->cfg.id) {
        node_reply_error(r, ALLOT_EUNAVAILABLE, "no leader elected yet; retry");
        return;
    }
    const char *addr = fsm_node_addr(n->fsm, leader);
    if (addr == NULL) {
        allot_errf(msg, ALLOT_EUNAVAILABLE,
                   "leader %llu has not yet announced its client address "
                   "here; retry",
                   leader);
        node_reply_error(r, ALLOT_EUNAVAILABLE, msg);
        return;
    }
    struct fwd *f = n->fwd;
    if (f != NULL && f->leader_id != leader) {
        fwd_close(f, ALLOT_EUNAVAILABLE, "the leader changed; retry");
        f = NULL;
    }
    if (f == NULL) {
        f = fwd_open(n, leader, addr);
        if (f == NULL) {
            node_reply_error(r, ALLOT_EUNAVAILABLE,
                             "cannot reach the leader; retry");
            return;
        }
    }
    r->fwd_id = f->next_id++;
    r->state = REQ_FORWARDED;
    n->metrics.forwarded++;
    TAILQ_INSERT_TAIL(&f->pending, r, queue_link);
    msgpack_packer pk;
    size_t start = f->out.size;
    static const char zero[WIRE_HEADER_LEN];
    msgpack_sbuffer_write(&f->out, zero, sizeof zero);
    msgpack_packer_init(&pk, &f->out, msgpack_sbuffer_write);
    pack_request(&pk, r);
    size_t body = f->out.size - start - WIRE_HEADER_LEN;
    if (body > WIRE_FRAME_MAX) {
        /* The envelope we add pushed a request near the limit over it: the
         * leader would refuse the frame and drop the connection. */
        f->out.size = start;
        TAILQ_REMOVE(&f->pending, r, queue_link);
        n->metrics.forwarded--;
        node_reply_error(r, ALLOT_ETOO_BIG,
                         "request too large to forward to the leader (1 MiB "
                         "with the forwarding envelope): make it smaller");
        return;
    }
    wire_frame_header(f->out.data + start, (uint32_t)body);
}

void forward_tick(struct node *n)
{
    if (n->fwd != NULL) {
        fwd_flush(n->fwd);
    }
}

void forward_close(struct node *n)
{
    if (n->fwd != NULL) {
        fwd_close(n->fwd, ALLOT_ESHUTDOWN, "node is shutting down");
    }
}

void forward_sweep(struct node *n, uint64_t now_ns)
{
    struct fwd *f = n->fwd;
    if (f == NULL) {
        return;
    }
    /* A leader that stopped answering (paused, partitioned) must not hold
     * requests forever; a leader change also resets the connection. */
    raft_id leader;
    const char *addr;
    raft_leader(&n->raft, &leader, &addr);
    if (leader != f->leader_id) {
        fwd_close(f, ALLOT_EUNAVAILABLE, "the leader changed; retry");
        return;
    }
    struct node_req *r, *next;
    for (r = TAILQ_FIRST(&f->pending); r != NULL; r = next) {
        next = TAILQ_NEXT(r, queue_link);
        if (now_ns - r->arrived_ns > NODE_REQUEST_TIMEOUT_MS * 1000000ull) {
            TAILQ_REMOVE(&f->pending, r, queue_link);
            node_reply_error(r, ALLOT_ETIMEOUT,
                             "the leader did not answer in time; the request "
                             "may or may not have been applied");
        }
    }
}
