/* uv.c - the libuv io: one UDP socket, one TCP listener, one timer.
 *
 * Datagrams: uv_udp_try_send() first (no allocation when the socket has
 * room), else a copy queued with uv_udp_send(). Received datagrams are
 * handed to the core from a buffer owned by this io.
 *
 * Streams: one TCP connection per message, `u32 length (big-endian) |
 * sealed message`, then the sender shuts down and closes. The receiver
 * reads frames until EOF.
 *
 * Failure modes, none of which reaches the core as anything but a dropped
 * message:
 *   - connect or write fails, or takes longer than STREAM_TIMEOUT_MS: the
 *     connection is closed, the message is lost (counted in send_errors);
 *   - more than OUT_MAX outgoing or IN_MAX incoming connections: new ones
 *     are refused / closed at once (OVERLOAD);
 *   - a frame header announcing more than GOSSIP_STREAM_MAX: OVERSIZE, the
 *     connection is closed (the stream cannot be resynchronized);
 *   - EOF inside a frame: MALFORMED; silence for STREAM_TIMEOUT_MS: closed;
 *   - a datagram truncated by the kernel (larger than our buffer): OVERSIZE.
 *
 * Closing is asynchronous like libuv's: gossip_uv_close() closes every
 * handle and calls back once the last close callback has run. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "../proto/allot_error.h"
#include "gossip.h"

#define STREAM_TIMEOUT_MS 10000
#define IN_MAX            64
#define OUT_MAX           128
/* Datagrams larger than GOSSIP_PACKET_MAX must be seen as too large, not
 * silently cut to size: the buffer is one byte larger, so they stand out. */
#define UDP_BUF    (GOSSIP_PACKET_MAX + 1)
#define READ_CHUNK 65536u

struct guv_conn
{
    struct gossip_uv *u;
    LIST_ENTRY(guv_conn) link;
    uv_tcp_t tcp;
    uv_timer_t timer;
    int handles; /* open handles; freed at 0 */
    bool inbound;
    bool closing;
    struct gossip_addr peer;
    /* inbound */
    uint8_t *buf;
    size_t len;
    size_t cap;
    /* outbound */
    uv_connect_t connect;
    uv_write_t write;
    uv_shutdown_t shutdown;
    uint8_t *out;
    size_t out_len;
};

struct gossip_uv
{
    struct gossip_io io;
    uv_loop_t *loop;
    uv_udp_t udp;
    uv_tcp_t listener;
    uv_timer_t timer;
    struct gossip_addr addr;
    LIST_HEAD(, guv_conn) conns;
    unsigned n_in;
    unsigned n_out;
    int handles; /* the three above, while open */
    bool closing;
    gossip_uv_close_cb close_cb;
    void *close_data;
    uint8_t udp_buf[UDP_BUF];
};

struct guv_send
{
    uv_udp_send_t req;
    uint8_t data[];
};

static struct sockaddr_in to_sockaddr(const struct gossip_addr *a)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(a->ip);
    sa.sin_port = htons(a->port);
    return sa;
}

static struct gossip_addr from_sockaddr(const struct sockaddr *sa)
{
    struct gossip_addr a = {0, 0};
    if (sa != NULL && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        a.ip = ntohl(in->sin_addr.s_addr);
        a.port = ntohs(in->sin_port);
    }
    return a;
}

static void drop(struct gossip_uv *u, enum gossip_drop why)
{
    gossip_count_drop(u->io.owner, why);
}

static void maybe_done(struct gossip_uv *u)
{
    if (u->closing && u->handles == 0 && LIST_EMPTY(&u->conns)) {
        gossip_uv_close_cb cb = u->close_cb;
        void *data = u->close_data;
        free(u);
        if (cb != NULL) {
            cb(data);
        }
    }
}

/* --- Connections -------------------------------------------------------- */

static void conn_closed(uv_handle_t *h)
{
    struct guv_conn *c = h->data;
    if (--c->handles > 0) {
        return;
    }
    struct gossip_uv *u = c->u;
    LIST_REMOVE(c, link);
    if (c->inbound) {
        u->n_in--;
    } else {
        u->n_out--;
    }
    free(c->buf);
    free(c->out);
    free(c);
    maybe_done(u);
}

static void conn_close(struct guv_conn *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
    uv_close((uv_handle_t *)&c->timer, conn_closed);
}

static void on_conn_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

/* A connection with both handles initialized, linked in u->conns. */
static struct guv_conn *conn_new(struct gossip_uv *u, bool inbound)
{
    struct guv_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    c->u = u;
    c->inbound = inbound;
    if (uv_tcp_init(u->loop, &c->tcp) != 0) {
        free(c);
        return NULL;
    }
    /* uv_timer_init cannot fail on a live loop. */
    uv_timer_init(u->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    LIST_INSERT_HEAD(&u->conns, c, link);
    if (inbound) {
        u->n_in++;
    } else {
        u->n_out++;
    }
    uv_timer_start(&c->timer, on_conn_timeout, STREAM_TIMEOUT_MS, 0);
    return c;
}

static uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           (uint32_t)p[3];
}

static void on_in_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct guv_conn *c = h->data;
    /* Room for the frame being read: its announced size once the header
     * is in (checked against the limit in on_in_read), a chunk before. */
    size_t want = c->len + READ_CHUNK;
    if (c->len >= 4) {
        size_t frame = 4 + (size_t)load_be32(c->buf);
        if (frame <= 4 + (size_t)GOSSIP_STREAM_MAX && frame > c->len) {
            want = frame;
        }
    }
    if (want > c->cap) {
        uint8_t *p = realloc(c->buf, want);
        if (p == NULL) {
            *buf = uv_buf_init(NULL, 0); /* read fails with UV_ENOBUFS */
            return;
        }
        c->buf = p;
        c->cap = want;
    }
    *buf = uv_buf_init((char *)c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void on_in_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    struct guv_conn *c = s->data;
    struct gossip_uv *u = c->u;
    if (n < 0) {
        if (n != UV_EOF) {
            drop(u, n == UV_ENOBUFS ? GOSSIP_DROP_OVERLOAD
                                    : GOSSIP_DROP_MALFORMED);
        } else if (c->len > 0) {
            drop(u, GOSSIP_DROP_MALFORMED); /* cut inside a frame */
        }
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    uv_timer_start(&c->timer, on_conn_timeout, STREAM_TIMEOUT_MS, 0);
    /* Every frame in the buffer; each pass consumes one or stops. */
    while (!c->closing && c->len >= 4) {
        uint32_t frame = load_be32(c->buf);
        if (frame > GOSSIP_STREAM_MAX) {
            drop(u, GOSSIP_DROP_OVERSIZE);
            conn_close(c);
            return;
        }
        if (c->len - 4 < frame) {
            break;
        }
        gossip_recv_stream(u->io.owner, &c->peer, c->buf + 4, frame);
        memmove(c->buf, c->buf + 4 + frame, c->len - 4 - frame);
        c->len -= 4 + (size_t)frame;
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct gossip_uv *u = server->data;
    if (status < 0 || u->closing) {
        return;
    }
    struct guv_conn *c = conn_new(u, true);
    if (c == NULL) {
        drop(u, GOSSIP_DROP_OVERLOAD);
        return; /* the pending connection waits in the backlog */
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    if (u->n_in > IN_MAX) {
        drop(u, GOSSIP_DROP_OVERLOAD);
        conn_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        c->peer = from_sockaddr((struct sockaddr *)&ss);
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, on_in_alloc, on_in_read) != 0) {
        conn_close(c);
    }
}

static void on_out_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    conn_close(req->data);
}

static void on_out_write(uv_write_t *req, int status)
{
    struct guv_conn *c = req->data;
    if (status < 0 || c->closing) {
        conn_close(c);
        return;
    }
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_out_shutdown) !=
        0) {
        conn_close(c);
    }
}

static void on_out_connect(uv_connect_t *req, int status)
{
    struct guv_conn *c = req->data;
    if (status < 0 || c->closing) {
        conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)c->out, (unsigned)c->out_len);
    c->write.data = c;
    if (uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, on_out_write) != 0) {
        conn_close(c);
    }
}

/* --- The io functions --------------------------------------------------- */

static void on_udp_sent(uv_udp_send_t *req, int status)
{
    (void)status;
    free((struct guv_send *)(void *)req); /* req is the first field */
}

static int io_send_packet(struct gossip_io *io, const struct gossip_addr *to,
                          const void *buf, size_t len)
{
    struct gossip_uv *u = io->impl;
    if (u->closing) {
        return ALLOT_ESHUTDOWN;
    }
    struct sockaddr_in sa = to_sockaddr(to);
    uv_buf_t b = uv_buf_init((char *)(uintptr_t)buf, (unsigned)len);
    int rv = uv_udp_try_send(&u->udp, &b, 1, (const struct sockaddr *)&sa);
    if (rv >= 0) {
        return 0;
    }
    if (rv != UV_EAGAIN && rv != UV_ENOSYS) {
        return ALLOT_EIO;
    }
    struct guv_send *s = malloc(sizeof *s + len);
    if (s == NULL) {
        return ALLOT_ENOMEM;
    }
    memcpy(s->data, buf, len);
    b = uv_buf_init((char *)s->data, (unsigned)len);
    if (uv_udp_send(&s->req, &u->udp, &b, 1, (const struct sockaddr *)&sa,
                    on_udp_sent) != 0) {
        free(s);
        return ALLOT_EIO;
    }
    return 0;
}

static int io_send_stream(struct gossip_io *io, const struct gossip_addr *to,
                          const void *buf, size_t len)
{
    struct gossip_uv *u = io->impl;
    if (u->closing) {
        return ALLOT_ESHUTDOWN;
    }
    if (len > GOSSIP_STREAM_MAX) {
        return ALLOT_ETOO_BIG;
    }
    if (u->n_out >= OUT_MAX) {
        return ALLOT_EUNAVAILABLE;
    }
    uint8_t *out = malloc(4 + len);
    if (out == NULL) {
        return ALLOT_ENOMEM;
    }
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    memcpy(out + 4, buf, len);
    struct guv_conn *c = conn_new(u, false);
    if (c == NULL) {
        free(out);
        return ALLOT_ENOMEM;
    }
    c->out = out;
    c->out_len = 4 + len;
    c->peer = *to;
    c->connect.data = c;
    struct sockaddr_in sa = to_sockaddr(to);
    int rv = uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&sa,
                            on_out_connect);
    if (rv != 0) {
        conn_close(c);
        return ALLOT_EIO;
    }
    return 0;
}

static uint64_t io_now(struct gossip_io *io)
{
    struct gossip_uv *u = io->impl;
    return uv_now(u->loop);
}

static void on_timer(uv_timer_t *t)
{
    struct gossip_uv *u = t->data;
    gossip_tick(u->io.owner);
}

static void io_set_timer(struct gossip_io *io, uint64_t at)
{
    struct gossip_uv *u = io->impl;
    if (u->closing) {
        return;
    }
    if (at == UINT64_MAX) {
        uv_timer_stop(&u->timer);
        return;
    }
    uint64_t now = uv_now(u->loop);
    uv_timer_start(&u->timer, on_timer, at > now ? at - now : 0, 0);
}

static uint64_t io_random(struct gossip_io *io)
{
    (void)io;
    uint64_t v;
    randombytes_buf(&v, sizeof v);
    return v;
}

static void on_udp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct gossip_uv *u = h->data;
    *buf = uv_buf_init((char *)u->udp_buf, sizeof u->udp_buf);
}

static void on_udp_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *buf,
                        const struct sockaddr *from, unsigned flags)
{
    (void)buf;
    struct gossip_uv *u = h->data;
    if (n <= 0 || from == NULL) {
        return; /* nothing read, or an error libuv already recovered from */
    }
    if ((flags & UV_UDP_PARTIAL) || (size_t)n > GOSSIP_PACKET_MAX) {
        drop(u, GOSSIP_DROP_OVERSIZE);
        return;
    }
    struct gossip_addr a = from_sockaddr(from);
    gossip_recv_packet(u->io.owner, &a, u->udp_buf, (size_t)n);
}

/* --- Creating and closing
 * ----------------------------------------------------- */

/* Bind a UDP and a TCP socket to the same address and port (a free one when
 * port is 0) and listen; plain sockets first, so a failure is synchronous
 * and leaves nothing to close on the loop. */
static int bind_pair(const struct gossip_addr *want, int *udp_fd, int *tcp_fd,
                     struct gossip_addr *bound, char *errmsg)
{
    char a[GOSSIP_ADDR_STRLEN];
    int last = 0;
    for (int attempt = 0; attempt < 16; attempt++) {
        int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (u < 0 || t < 0) {
            last = errno;
            if (u >= 0) {
                close(u);
            }
            if (t >= 0) {
                close(t);
            }
            break;
        }
        struct sockaddr_in sa = to_sockaddr(want);
        socklen_t sl = sizeof sa;
        int one = 1;
        setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(u, (struct sockaddr *)&sa, sizeof sa) == 0 &&
            getsockname(u, (struct sockaddr *)&sa, &sl) == 0 &&
            bind(t, (struct sockaddr *)&sa, sizeof sa) == 0 &&
            listen(t, 128) == 0) {
            *udp_fd = u;
            *tcp_fd = t;
            *bound = from_sockaddr((struct sockaddr *)&sa);
            return 0;
        }
        last = errno;
        close(u);
        close(t);
        /* With port 0 the kernel's UDP choice may be taken for TCP: try
         * another. A fixed port that is taken stays taken. */
        if (want->port != 0 || last != EADDRINUSE) {
            break;
        }
    }
    return allot_errf(errmsg, ALLOT_EIO, "gossip: bind %s: %s",
                      gossip_addr_format(want, a), strerror(last));
}

static void handle_closed(uv_handle_t *h)
{
    struct gossip_uv *u = h->data;
    u->handles--;
    maybe_done(u);
}

int gossip_uv_new(struct gossip_uv **out, uv_loop_t *loop,
                  const struct gossip_addr *bind, char *errmsg)
{
    if (sodium_init() < 0) {
        return allot_errf(errmsg, ALLOT_EINTERNAL,
                          "gossip: libsodium failed to initialize");
    }
    struct gossip_uv *u = calloc(1, sizeof *u);
    if (u == NULL) {
        return allot_errf(errmsg, ALLOT_ENOMEM, "gossip: out of memory");
    }
    int udp_fd = -1, tcp_fd = -1;
    int rv = bind_pair(bind, &udp_fd, &tcp_fd, &u->addr, errmsg);
    if (rv != 0) {
        free(u);
        return rv;
    }
    u->loop = loop;
    LIST_INIT(&u->conns);
    u->io = (struct gossip_io){.impl = u,
                               .send_packet = io_send_packet,
                               .send_stream = io_send_stream,
                               .now = io_now,
                               .set_timer = io_set_timer,
                               .random = io_random};
    uv_udp_init(loop, &u->udp);
    uv_tcp_init(loop, &u->listener);
    uv_timer_init(loop, &u->timer);
    u->udp.data = u->listener.data = u->timer.data = u;
    u->handles = 3;
    int urv = uv_udp_open(&u->udp, udp_fd);
    if (urv != 0) {
        close(udp_fd);
    }
    int trv = uv_tcp_open(&u->listener, tcp_fd);
    if (trv != 0) {
        close(tcp_fd);
    }
    if (urv == 0 && trv == 0) {
        urv = uv_udp_recv_start(&u->udp, on_udp_alloc, on_udp_recv);
        trv = uv_listen((uv_stream_t *)&u->listener, 128, on_connection);
    }
    if (urv != 0 || trv != 0) {
        /* The handles exist: they close on the loop, which frees u. */
        gossip_uv_close(u, NULL, NULL);
        return allot_errf(errmsg, ALLOT_EIO, "gossip: open sockets: %s",
                          uv_strerror(urv != 0 ? urv : trv));
    }
    *out = u;
    return 0;
}

struct gossip_io *gossip_uv_io(struct gossip_uv *u)
{
    return &u->io;
}

struct gossip_addr gossip_uv_addr(const struct gossip_uv *u)
{
    return u->addr;
}

void gossip_uv_close(struct gossip_uv *u, gossip_uv_close_cb cb, void *data)
{
    if (u->closing) {
        return;
    }
    u->closing = true;
    u->close_cb = cb;
    u->close_data = data;
    u->io.owner = NULL;
    uv_close((uv_handle_t *)&u->udp, handle_closed);
    uv_close((uv_handle_t *)&u->listener, handle_closed);
    uv_close((uv_handle_t *)&u->timer, handle_closed);
    struct guv_conn *c;
    LIST_FOREACH(c, &u->conns, link)
    {
        conn_close(c);
    }
}
