/* transport.c - raft_uv_tcp with TCP_NODELAY (see transport.h).
 *
 * Each operation of the outer transport forwards to raft_uv_tcp. Accepted
 * streams get TCP_NODELAY before raft_uv sees them. Connects go through a
 * small request of ours that remembers raft_uv's request, so the option is
 * set on the stream before raft_uv's callback runs; it is freed in our
 * callback, which raft_uv_tcp fires exactly once (success, failure or
 * RAFT_CANCELED at close). */
#include "transport.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

struct connect_req
{
    struct raft_uv_connect inner;
    struct raft_uv_connect *outer;
};

static struct transport *of(struct raft_uv_transport *outer)
{
    return outer->impl;
}

static int t_init(struct raft_uv_transport *outer, raft_id id,
                  const char *address)
{
    struct transport *t = of(outer);
    int rv = t->tcp.init(&t->tcp, id, address);
    if (rv != 0) {
        memcpy(outer->errmsg, t->tcp.errmsg, sizeof outer->errmsg);
    }
    return rv;
}

static void t_accept(struct raft_uv_transport *tcp, raft_id id,
                     const char *address, struct uv_stream_s *stream)
{
    struct transport *t = tcp->data;
    uv_tcp_nodelay((uv_tcp_t *)stream, 1);
    t->accept_cb(&t->outer, id, address, stream);
}

static int t_listen(struct raft_uv_transport *outer, raft_uv_accept_cb cb)
{
    struct transport *t = of(outer);
    t->accept_cb = cb;
    int rv = t->tcp.listen(&t->tcp, t_accept);
    if (rv != 0) {
        memcpy(outer->errmsg, t->tcp.errmsg, sizeof outer->errmsg);
    }
    return rv;
}

static void t_connect_cb(struct raft_uv_connect *inner,
                         struct uv_stream_s *stream, int status)
{
    struct connect_req *req = inner->data;
    struct raft_uv_connect *outer = req->outer;
    free(req);
    if (status == 0) {
        uv_tcp_nodelay((uv_tcp_t *)stream, 1);
    }
    outer->cb(outer, stream, status);
}

static int t_connect(struct raft_uv_transport *outer,
                     struct raft_uv_connect *req, raft_id id,
                     const char *address, raft_uv_connect_cb cb)
{
    struct transport *t = of(outer);
    struct connect_req *r = malloc(sizeof *r);
    if (r == NULL) {
        return RAFT_NOMEM;
    }
    req->cb = cb;
    r->outer = req;
    r->inner.data = r;
    int rv = t->tcp.connect(&t->tcp, &r->inner, id, address, t_connect_cb);
    if (rv != 0) {
        /* The callback will not fire: libuv's and raft's rule. */
        memcpy(outer->errmsg, t->tcp.errmsg, sizeof outer->errmsg);
        free(r);
    }
    return rv;
}

static void t_close_cb(struct raft_uv_transport *tcp)
{
    struct transport *t = tcp->data;
    if (t->close_cb != NULL) {
        t->close_cb(&t->outer);
    }
}

static void t_close(struct raft_uv_transport *outer,
                    raft_uv_transport_close_cb cb)
{
    struct transport *t = of(outer);
    t->close_cb = cb;
    t->tcp.close(&t->tcp, t_close_cb);
}

int transport_init(struct transport *t, struct uv_loop_s *loop)
{
    memset(t, 0, sizeof *t);
    int rv = raft_uv_tcp_init(&t->tcp, loop);
    if (rv != 0) {
        return rv;
    }
    t->tcp.data = t;
    t->outer.impl = t;
    t->outer.init = t_init;
    t->outer.listen = t_listen;
    t->outer.connect = t_connect;
    t->outer.close = t_close;
    return 0;
}

void transport_close(struct transport *t)
{
    raft_uv_tcp_close(&t->tcp);
}
