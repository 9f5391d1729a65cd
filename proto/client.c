/* client.c - blocking protocol client with endpoint failover (client.h).
 *
 * Happy path: connect to the current endpoint, send one frame, read frames
 * until the one with our request id arrives, decode it.
 *
 * Failure modes and what the client does:
 *   - connect refused, reset, EOF, a broken frame or no reply within the
 *     per-attempt bound: close, move to the next endpoint, retry;
 *   - a reply `unavailable` (no leader yet, leader unreachable): next
 *     endpoint, retry after a backoff that doubles up to 500 ms;
 *   - the call's deadline passes: ALLOT_ETIMEOUT naming the endpoints tried.
 * A write keeps its (client, seq) across all of these. */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "lib.h"
#include "wire.h"

#define ATTEMPT_MAX_MS 3000
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 500

struct endpoint
{
    char name[64];
    struct sockaddr_in addr;
};

struct allot_client
{
    struct endpoint eps[ALLOT_CLIENT_ENDPOINTS_MAX];
    unsigned n_eps;
    unsigned cur;
    int fd; /* -1 when not connected */
    int timeout_ms;
    uint64_t next_id;
    uint64_t client_id;
    uint64_t next_seq;
    struct wire_rbuf rbuf;
    bool has_identity;
    struct auth_identity id;
    char token[129];
    int cancel_fd;  /* -1: not interruptible (allot_client_set_cancel_fd) */
    bool cancelled; /* the cancel fd became readable: every call ends */
};

int allot_client_open(const char *endpoints, int timeout_ms,
                      struct allot_client **out, char *errmsg)
{
    struct allot_client *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return allot_errf(errmsg, ALLOT_ENOMEM, "out of memory");
    }
    c->fd = -1;
    c->cancel_fd = -1;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 10000;
    c->next_id = 1;
    c->next_seq = 1;
    c->client_id = lib_random_u64();
    wire_rbuf_init(&c->rbuf);

    const char *p = endpoints;
    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0 || len >= sizeof c->eps[0].name) {
            free(c);
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "bad endpoint list \"%.100s\": expected "
                              "HOST:PORT,HOST:PORT,...",
                              endpoints);
        }
        if (c->n_eps == ALLOT_CLIENT_ENDPOINTS_MAX) {
            free(c);
            return allot_errf(errmsg, ALLOT_EINVALID, "more than %d endpoints",
                              ALLOT_CLIENT_ENDPOINTS_MAX);
        }
        struct endpoint *e = &c->eps[c->n_eps];
        memcpy(e->name, p, len);
        e->name[len] = '\0';
        char why[160];
        if (addr_parse(e->name, &e->addr, why, sizeof why) != 0) {
            free(c);
            return allot_errf(errmsg, ALLOT_EINVALID, "endpoint: %s", why);
        }
        c->n_eps++;
        p += len;
        if (*p == ',') {
            p++;
        }
    }
    if (c->n_eps == 0) {
        free(c);
        return allot_errf(errmsg, ALLOT_EINVALID, "no endpoints given");
    }
    *out = c;
    return 0;
}

static void conn_close(struct allot_client *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    wire_rbuf_close(&c->rbuf);
    wire_rbuf_init(&c->rbuf);
}

void allot_client_close(struct allot_client *c)
{
    if (c == NULL) {
        return;
    }
    conn_close(c);
    sodium_memzero(&c->id, sizeof c->id);
    sodium_memzero(c->token, sizeof c->token);
    free(c);
}

void allot_client_set_token(struct allot_client *c, const char *token)
{
    snprintf(c->token, sizeof c->token, "%s", token);
}

void allot_client_set_identity(struct allot_client *c,
                               const struct auth_identity *id)
{
    c->id = *id;
    c->has_identity = true;
}

void allot_client_set_cancel_fd(struct allot_client *c, int fd)
{
    c->cancel_fd = fd;
}

void allot_client_set_timeout(struct allot_client *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 10000;
}

const char *allot_client_endpoint(const struct allot_client *c)
{
    return c->eps[c->cur].name;
}

static int64_t ms_until(uint64_t deadline_ns)
{
    uint64_t now = clock_mono_ns();
    return now >= deadline_ns ? 0 : (int64_t)((deadline_ns - now) / 1000000u);
}

/* Wait for fd to be ready for events; 0 ready, -1 timeout, error or
 * cancellation (c->cancelled then set). */
static int wait_fd(struct allot_client *c, int fd, short events,
                   uint64_t deadline_ns)
{
    for (;;) {
        int64_t ms = ms_until(deadline_ns);
        if (ms <= 0 || c->cancelled) {
            return -1;
        }
        struct pollfd pfd[2] = {{.fd = fd, .events = events},
                                {.fd = c->cancel_fd, .events = POLLIN}};
        int rv = poll(pfd, c->cancel_fd >= 0 ? 2 : 1, (int)ms);
        if (rv > 0 && c->cancel_fd >= 0 && pfd[1].revents != 0) {
            c->cancelled = true;
            return -1;
        }
        if (rv > 0) {
            return 0;
        }
        if (rv < 0 && errno != EINTR) {
            return -1;
        }
    }
}

static int conn_open(struct allot_client *c, uint64_t deadline_ns)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    const struct endpoint *e = &c->eps[c->cur];
    int rv = connect(fd, (const struct sockaddr *)&e->addr, sizeof e->addr);
    if (rv != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    if (rv != 0) {
        int err = 0;
        socklen_t len = sizeof err;
        if (wait_fd(c, fd, POLLOUT, deadline_ns) != 0 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            close(fd);
            return -1;
        }
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    return 0;
}

static int send_all(struct allot_client *c, const char *p, size_t n,
                    uint64_t deadline_ns)
{
    int fd = c->fd;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_fd(c, fd, POLLOUT, deadline_ns) != 0) {
                return -1;
            }
            continue;
        }
        return -1;
    }
    return 0;
}

/* Read until a frame with request id `id` arrives; decode it into rep.
 * 0 on a reply, -1 on a connection problem or timeout. */
static int recv_reply(struct allot_client *c, uint64_t id, uint64_t deadline_ns,
                      struct allot_reply *rep)
{
    for (;;) {
        const char *body;
        size_t len;
        int rv = wire_rbuf_next(&c->rbuf, &body, &len);
        if (rv < 0) {
            return -1;
        }
        if (rv == 1) {
            char msg[ALLOT_ERRMSG_SIZE];
            msgpack_unpacked_destroy(&rep->u);
            msgpack_unpacked_init(&rep->u);
            struct wire_reply wr;
            if (wire_unpack(body, len, &rep->u, msg) != 0 ||
                wire_reply_decode(&rep->u.data, &wr, msg) != 0) {
                return -1;
            }
            if (wr.id != id) {
                continue; /* a late reply to an earlier, abandoned attempt */
            }
            rep->code = wr.code;
            rep->result = wr.result;
            rep->message[0] = '\0';
            if (wr.code != 0) {
                snprintf(rep->message, sizeof rep->message, "%.*s",
                         (int)wr.message_len,
                         wr.message != NULL ? wr.message : "");
            }
            return 0;
        }
        char *tail;
        size_t avail;
        if (wire_rbuf_reserve(&c->rbuf, 65536, &tail, &avail) != 0) {
            return -1;
        }
        if (wait_fd(c, c->fd, POLLIN, deadline_ns) != 0) {
            return -1;
        }
        ssize_t r = recv(c->fd, tail, avail, 0);
        if (r > 0) {
            c->rbuf.len += (size_t)r;
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            return -1;
        }
    }
}

/* Sleep ms milliseconds, or until the cancel fd becomes readable. */
static void sleep_ms(struct allot_client *c, int64_t ms)
{
    if (c->cancel_fd >= 0) {
        uint64_t deadline = clock_mono_ns() + (uint64_t)ms * 1000000u;
        for (;;) {
            int64_t left = ms_until(deadline);
            if (left <= 0 || c->cancelled) {
                return;
            }
            struct pollfd pfd = {.fd = c->cancel_fd, .events = POLLIN};
            int rv = poll(&pfd, 1, (int)left);
            if (rv > 0) {
                c->cancelled = true;
                return;
            }
            if (rv < 0 && errno != EINTR) {
                return;
            }
        }
    }
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* The answer of a call or watch ended by the cancel fd. */
static int cancelled_reply(struct allot_reply *rep)
{
    rep->code = ALLOT_ESHUTDOWN;
    rep->result = NULL;
    snprintf(rep->message, sizeof rep->message, "cancelled");
    return rep->code;
}

/* One request frame into sb (initialized here; the caller destroys it on
 * success). Signed when the client has an identity. ALLOT_ETOO_BIG if over
 * the frame limit (sb then already destroyed). */
static int build_request(struct allot_client *c, uint64_t id, const char *op,
                         allot_pack_fn pack, void *arg, bool write,
                         uint64_t seq, msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    /* The args, encoded on their own: a signed request carries these exact
     * bytes as its body. */
    msgpack_sbuffer args;
    msgpack_packer apk;
    msgpack_sbuffer_init(&args);
    msgpack_packer_init(&apk, &args, msgpack_sbuffer_write);
    if (pack != NULL) {
        pack(&apk, arg);
    } else {
        msgpack_pack_map(&apk, 0);
    }
    /* Synchronous client: every earlier seq has its answer. */
    uint64_t client = write ? c->client_id : 0, ack = write ? seq : 0;
    wire_frame_start(sb, &pk);
    bool token = c->token[0] != '\0' && !c->has_identity;
    msgpack_pack_map(&pk, (write ? 6u : 3u) + (c->has_identity ? 1u : 0u) +
                              (token ? 1u : 0u));
    wire_pack_kv_u64(&pk, "id", id);
    wire_pack_kv_str(&pk, "op", op);
    if (token) {
        wire_pack_kv_str(&pk, "token", c->token);
    }
    if (c->has_identity) {
        struct auth_claim claim;
        auth_sign(&c->id, clock_wall_ms(), op, client, write ? seq : 0, ack,
                  args.data, args.size, &claim);
        wire_pack_str(&pk, "body");
        msgpack_pack_bin(&pk, args.size);
        msgpack_pack_bin_body(&pk, args.data, args.size);
        wire_pack_str(&pk, "auth");
        auth_pack_claim(&pk, &claim);
    } else {
        wire_pack_str(&pk, "args");
        msgpack_sbuffer_write(sb, args.data, args.size);
    }
    msgpack_sbuffer_destroy(&args);
    if (write) {
        wire_pack_kv_u64(&pk, "client", client);
        wire_pack_kv_u64(&pk, "seq", seq);
        wire_pack_kv_u64(&pk, "ack", ack);
    }
    if (wire_frame_finish(sb) != 0) {
        msgpack_sbuffer_destroy(sb);
        return ALLOT_ETOO_BIG;
    }
    return 0;
}

int allot_client_call(struct allot_client *c, const char *op,
                      allot_pack_fn pack, void *arg, struct allot_reply *rep)
{
    memset(rep, 0, sizeof *rep);
    msgpack_unpacked_init(&rep->u);
    enum wire_op wop = wire_op_from_name(op, strlen(op));
    bool write = (wire_op_flags(wop) & WIRE_OP_WRITE) != 0;
    uint64_t seq = write ? c->next_seq++ : 0;
    uint64_t start = clock_mono_ns();
    uint64_t deadline = start + (uint64_t)c->timeout_ms * 1000000u;
    int64_t backoff = BACKOFF_MIN_MS;
    unsigned attempts = 0;
    char last_problem[128] = "no attempt made";

    for (;;) {
        if (c->cancelled) {
            return cancelled_reply(rep);
        }
        if (ms_until(deadline) <= 0) {
            rep->code = ALLOT_ETIMEOUT;
            snprintf(rep->message, sizeof rep->message,
                     "no answer within %d ms after %u attempts (last: %s)%s",
                     c->timeout_ms, attempts, last_problem,
                     write ? "; the write may or may not have been applied"
                           : "");
            return rep->code;
        }
        attempts++;
        uint64_t attempt_deadline = clock_mono_ns() + ATTEMPT_MAX_MS * 1000000u;
        if (attempt_deadline > deadline) {
            attempt_deadline = deadline;
        }
        if (c->fd < 0 && conn_open(c, attempt_deadline) != 0) {
            snprintf(last_problem, sizeof last_problem, "cannot connect to %s",
                     c->eps[c->cur].name);
            goto next_endpoint;
        }

        uint64_t id = c->next_id++;
        msgpack_sbuffer sb;
        if (build_request(c, id, op, pack, arg, write, seq, &sb) != 0) {
            rep->code = ALLOT_ETOO_BIG;
            snprintf(rep->message, sizeof rep->message,
                     "request larger than %u bytes", WIRE_FRAME_MAX);
            return rep->code;
        }
        int rv = send_all(c, sb.data, sb.size, attempt_deadline);
        msgpack_sbuffer_destroy(&sb);
        /* A write may wait on validators (up to their --timeout-ms): once
         * it is sent, wait for its answer until the call's deadline rather
         * than re-sending it (which would run the validators again). */
        if (rv != 0 ||
            recv_reply(c, id, write ? deadline : attempt_deadline, rep) != 0) {
            snprintf(last_problem, sizeof last_problem, "no reply from %s",
                     c->eps[c->cur].name);
            conn_close(c);
            goto next_endpoint;
        }
        if (rep->code != ALLOT_EUNAVAILABLE) {
            return rep->code;
        }
        snprintf(last_problem, sizeof last_problem, "%s: %.60s",
                 c->eps[c->cur].name, rep->message);
        conn_close(c);

    next_endpoint:
        c->cur = (c->cur + 1) % c->n_eps;
        /* Back off once per sweep over the endpoints, not per endpoint: a
         * dead node should cost one connect, not a sleep. */
        if (c->cur == 0 || c->n_eps == 1 || rep->code == ALLOT_EUNAVAILABLE) {
            int64_t left = ms_until(deadline);
            sleep_ms(c, backoff < left ? backoff : left);
            backoff =
                backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
        }
        rep->code = 0;
    }
}

void allot_reply_destroy(struct allot_reply *rep)
{
    msgpack_unpacked_destroy(&rep->u);
    rep->result = NULL;
}

struct watch_args
{
    const char *prefix;
    bool has_from;
    uint64_t from;
};

static void pack_watch(msgpack_packer *pk, void *arg)
{
    struct watch_args *a = arg;
    msgpack_pack_map(pk, a->has_from ? 2 : 1);
    wire_pack_kv_str(pk, "prefix", a->prefix);
    if (a->has_from) {
        wire_pack_kv_u64(pk, "from_version", a->from);
    }
}

int allot_client_watch(struct allot_client *c, const char *prefix,
                       const uint64_t *from_version, allot_watch_cb cb,
                       void *arg, uint64_t *version, struct allot_reply *rep)
{
    struct watch_args a = {.prefix = prefix};
    if (from_version != NULL) {
        a.has_from = true;
        a.from = *from_version;
    }
    memset(rep, 0, sizeof *rep);
    msgpack_unpacked_init(&rep->u);
    int64_t backoff = BACKOFF_MIN_MS;
    for (;;) {
        if (c->cancelled) {
            conn_close(c);
            return cancelled_reply(rep);
        }
        /* Connect and ask; a node that cannot be reached costs a connect
         * attempt and, once per sweep over the endpoints, a backoff. */
        uint64_t deadline = clock_mono_ns() + ATTEMPT_MAX_MS * 1000000u;
        uint64_t id = c->next_id++;
        msgpack_sbuffer sb;
        bool sent = false;
        if ((c->fd >= 0 || conn_open(c, deadline) == 0) &&
            build_request(c, id, "quota.watch", pack_watch, &a, false, 0,
                          &sb) == 0) {
            sent = send_all(c, sb.data, sb.size, deadline) == 0;
            msgpack_sbuffer_destroy(&sb);
        }
        /* Then read the stream: the start frame, then one frame per change.
         * Between changes there may be silence of any length, so reads are
         * bounded only by the caller's patience (a long deadline). */
        while (sent) {
            uint64_t idle = clock_mono_ns() + 3600ull * 1000000000u;
            if (recv_reply(c, id, idle, rep) != 0) {
                break; /* connection lost: resume elsewhere */
            }
            if (rep->code == ALLOT_EUNAVAILABLE ||
                rep->code == ALLOT_ESHUTDOWN) {
                break;
            }
            if (rep->code != 0) {
                return rep->code; /* e.g. not_found: the history is gone */
            }
            backoff = BACKOFF_MIN_MS;
            const msgpack_object *v = wire_map_get(rep->result, "version");
            if (v == NULL || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                continue;
            }
            a.has_from = true;
            a.from = v->via.u64;
            if (version != NULL) {
                *version = a.from;
            }
            if (wire_map_get(rep->result, "op") == NULL) {
                continue; /* the start frame */
            }
            if (cb(arg, rep->result) != 0) {
                return 0;
            }
        }
        conn_close(c);
        c->cur = (c->cur + 1) % c->n_eps;
        if (c->cur == 0 || c->n_eps == 1) {
            sleep_ms(c, backoff);
            backoff =
                backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
        }
        rep->code = 0;
    }
}
