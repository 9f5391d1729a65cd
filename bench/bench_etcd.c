/* bench_etcd.c - the reference side of bench_writes: committed puts per
 * second on a 3-member etcd cluster, same machine, same load shape.
 *
 * Happy path: start three etcd members (Debian's etcd-server, 3.4) on free
 * 127.0.0.1 ports with their data on disk (fsync on, etcd's default), wait
 * until all three name the same leader, put every key once (bench/p0 ..
 * bench/pN-1), then for each concurrency level C run the closed loop of
 * bench_writes against etcd's gRPC-gateway JSON API: C keep-alive HTTP/1.1
 * connections, each with one POST /v3/kv/put outstanding (what wrk with C
 * connections does), 64-byte values, keys round robin, --warmup then
 * --seconds measured. Prints the same columns as bench_writes: puts/s,
 * latency percentiles, errors, etcd CPU per put (three members, from
 * /proc/PID/stat), raft entries per second (raftIndex of the leader) and the
 * leader's resident memory.
 *
 * Failure modes (exit status 1): a member exits early, no agreed leader
 * within STARTUP_MS, a connection refused or dropped, a response that is
 * not HTTP 200 with a put header, or a put unanswered DRAIN_MS after the
 * window. Members get SIGTERM at the end (SIGKILL after STOP_MS); only the
 * processes started here are signalled and only the directory made here
 * (mkdtemp under --dir) is removed, unless --keep or a failure. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "bench_util.h"

#define MEMBERS       3
#define LEVELS_MAX    16
#define REPEAT_MAX    20
#define INFLIGHT_MAX  4096
#define STARTUP_MS    60000
#define CONNECT_MS    5000
#define FILL_MS       300000
#define DRAIN_MS      20000
#define STOP_MS       20000
#define GUARD_TICK_MS 100
#define ERRORS_SHOWN  5
#define VALUE_LEN     64
#define REQ_MAX       1024
/* A put response is a few hundred bytes; anything this large is broken. */
#define RESP_MAX (1u << 20)

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* --- Options ----------------------------------------------------------------
 */

struct opts
{
    const char *etcd;
    const char *dir;
    unsigned inflight[LEVELS_MAX];
    unsigned n_levels;
    uint64_t warmup_ms;
    uint64_t measure_ms;
    bool target_all;
    unsigned paths;
    unsigned repeat;
    bool keep;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: bench_etcd [--etcd PATH] [--dir DIR] [--inflight 1,16,64] "
            "[--seconds S]\n"
            "                  [--warmup S] [--target leader|all] [--paths N] "
            "[--repeat N] [--keep]\n"
            "\n"
            "  --etcd PATH      etcd binary (default /usr/bin/etcd, Debian's "
            "etcd-server)\n"
            "  other options as bench_writes: data under a mkdtemp in --dir "
            "(default /var/tmp),\n"
            "  levels of connections with one put outstanding each, "
            "--seconds measured (10)\n"
            "  after --warmup (2), keys bench/p0..N-1 (10000), --repeat "
            "whole runs.\n");
}

static int parse_seconds(const char *flag, const char *s, uint64_t *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0.0) || v > 3600.0) {
        fprintf(stderr, "error: invalid: %s must be 0 to 3600 seconds\n", flag);
        return -1;
    }
    *ms = (uint64_t)(v * 1000.0 + 0.5);
    return 0;
}

static int parse_unsigned(const char *flag, const char *s, unsigned long min,
                          unsigned long max, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || s[0] == '\0' || s[0] == '-' || *end != '\0' || v < min ||
        v > max) {
        fprintf(stderr, "error: invalid: %s must be %lu to %lu, got \"%s\"\n",
                flag, min, max, s);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

/* --- Tiny JSON and base64 helpers
 * ---------------------------------------------- */

static void base64(const unsigned char *in, size_t len, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < len) {
            v |= (unsigned)in[i + 1] << 8;
        }
        if (i + 2 < len) {
            v |= in[i + 2];
        }
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tab[v & 63] : '=';
    }
    out[o] = '\0';
}

/* The unsigned number after "key": in a JSON text (etcd's gateway prints
 * 64-bit integers as strings, so an optional quote is skipped). */
static bool json_u64(const char *body, size_t len, const char *key,
                     uint64_t *out)
{
    char pat[64];
    int n = snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = memmem(body, len, pat, (size_t)n);
    if (p == NULL) {
        return false;
    }
    p += n;
    const char *end = body + len;
    while (p < end && (*p == ' ' || *p == '"')) {
        p++;
    }
    if (p == end || *p < '0' || *p > '9') {
        return false;
    }
    uint64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        v = v * 10 + (uint64_t)(*p - '0');
        p++;
    }
    *out = v;
    return true;
}

/* --- HTTP/1.1 responses
 * ----------------------------------------------------------- */

/* Look for one whole response at buf[0..len). Returns 1 and sets *status,
 * the body and the bytes consumed when there is one; 0 when more bytes are
 * needed; -1 when the bytes are not an HTTP response we understand
 * (Content-Length or chunked bodies). For a chunked body, *body spans the
 * raw chunks, which is enough to look for a key in it. */
static int http_response(const char *buf, size_t len, int *status,
                         const char **body, size_t *body_len, size_t *consumed)
{
    const char *hend = memmem(buf, len, "\r\n\r\n", 4);
    if (hend == NULL) {
        return len > 16384 ? -1 : 0;
    }
    size_t hlen = (size_t)(hend - buf) + 4;
    if (len < 12 || memcmp(buf, "HTTP/1.", 7) != 0) {
        return -1;
    }
    *status = atoi(buf + 9);
    bool chunked = false;
    long long clen = -1;
    for (const char *line = memchr(buf, '\n', hlen);
         line != NULL && line + 1 < hend;
         line = memchr(line + 1, '\n', (size_t)(hend - line - 1))) {
        const char *h = line + 1;
        if (strncasecmp(h, "content-length:", 15) == 0) {
            clen = atoll(h + 15);
        } else if (strncasecmp(h, "transfer-encoding:", 18) == 0) {
            const char *eol = memchr(h, '\r', (size_t)(hend + 2 - h));
            chunked = eol != NULL &&
                      memmem(h, (size_t)(eol - h), "chunked", 7) != NULL;
        }
    }
    if (chunked) {
        size_t pos = hlen;
        for (;;) {
            const char *eol = memmem(buf + pos, len - pos, "\r\n", 2);
            if (eol == NULL) {
                return 0;
            }
            char *end;
            unsigned long sz = strtoul(buf + pos, &end, 16);
            if (end == buf + pos || sz > RESP_MAX) {
                return -1;
            }
            pos = (size_t)(eol - buf) + 2;
            if (len - pos < sz + 2) {
                return 0;
            }
            pos += sz + 2;
            if (sz == 0) {
                break;
            }
        }
        *body = buf + hlen;
        *body_len = pos - hlen;
        *consumed = pos;
        return 1;
    }
    if (clen < 0 || (unsigned long long)clen > RESP_MAX) {
        return -1;
    }
    if (len - hlen < (size_t)clen) {
        return 0;
    }
    *body = buf + hlen;
    *body_len = (size_t)clen;
    *consumed = hlen + (size_t)clen;
    return 1;
}

/* Blocking POST with a deadline, for startup and status checks. Returns the
 * HTTP status, or -1; the body (NUL-terminated) in out. */
static int http_post_blocking(const char *addr, uint16_t port, const char *path,
                              const char *json, char *out, size_t out_len,
                              int timeout_ms)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, addr, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    struct timeval tv = {.tv_sec = timeout_ms / 1000,
                         .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: %s:%u\r\nContent-Type: "
                     "application/json\r\nContent-Length: %zu\r\nConnection: "
                     "close\r\n\r\n%s",
                     path, addr, port, strlen(json), json);
    if (n < 0 || (size_t)n >= sizeof req ||
        send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    char buf[16384];
    size_t len = 0;
    int status = -1;
    for (;;) {
        ssize_t r = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (r <= 0) {
            break;
        }
        len += (size_t)r;
        const char *body;
        size_t blen, used;
        int rv = http_response(buf, len, &status, &body, &blen, &used);
        if (rv == 1) {
            size_t c = blen < out_len - 1 ? blen : out_len - 1;
            memcpy(out, body, c);
            out[c] = '\0';
            close(fd);
            return status;
        }
        if (rv < 0 || len == sizeof buf - 1) {
            break;
        }
    }
    close(fd);
    return -1;
}

/* --- The cluster
 * ------------------------------------------------------------------ */

struct member
{
    struct bench_proc proc;
    char name[16];
    uint16_t peer_port;
    uint16_t client_port;
    char dir[PATH_MAX / 2];
    uint64_t member_id;
};

struct cluster
{
    char root[PATH_MAX / 4];
    struct member m[MEMBERS];
    unsigned leader;
};

static int cluster_start(const struct opts *o, struct cluster *cl)
{
    memset(cl, 0, sizeof *cl);
    if (snprintf(cl->root, sizeof cl->root, "%s/etcd-bench-XXXXXX", o->dir) >=
            (int)sizeof cl->root ||
        mkdtemp(cl->root) == NULL) {
        fprintf(stderr, "error: io: cannot create a directory under %s\n",
                o->dir);
        cl->root[0] = '\0';
        return -1;
    }
    uint16_t ports[2 * MEMBERS];
    if (bench_pick_ports(ports, 2 * MEMBERS) != 0) {
        fprintf(stderr, "error: io: cannot find free ports on 127.0.0.1\n");
        return -1;
    }
    char initial[512];
    size_t off = 0;
    for (unsigned i = 0; i < MEMBERS; i++) {
        struct member *m = &cl->m[i];
        snprintf(m->name, sizeof m->name, "n%u", i + 1);
        m->peer_port = ports[2 * i];
        m->client_port = ports[2 * i + 1];
        snprintf(m->dir, sizeof m->dir, "%s/%s", cl->root, m->name);
        snprintf(m->proc.log, sizeof m->proc.log, "%s/%s.log", cl->root,
                 m->name);
        m->proc.name = m->name;
        off += (size_t)snprintf(initial + off, sizeof initial - off,
                                "%s%s=http://127.0.0.1:%u", i ? "," : "",
                                m->name, m->peer_port);
    }
    const char *token = strrchr(cl->root, '/') + 1;
    for (unsigned i = 0; i < MEMBERS; i++) {
        struct member *m = &cl->m[i];
        char peer[64], client[64];
        snprintf(peer, sizeof peer, "http://127.0.0.1:%u", m->peer_port);
        snprintf(client, sizeof client, "http://127.0.0.1:%u", m->client_port);
        char *argv[] = {
            (char *)o->etcd,
            "--name",
            m->name,
            "--data-dir",
            m->dir,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--initial-cluster",
            initial,
            "--initial-cluster-token",
            (char *)token,
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--log-level",
            "warn",
            NULL,
        };
        if (bench_proc_spawn(&m->proc, argv, NULL) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Wait until every member answers /v3/maintenance/status naming the same
 * leader, and a put through the leader succeeds. */
static int cluster_wait_ready(struct cluster *cl)
{
    uint64_t deadline = now_ns() + STARTUP_MS * 1000000ull;
    char body[4096];
    while (!interrupted && now_ns() < deadline) {
        uint64_t leader[MEMBERS] = {0};
        bool all = true;
        for (unsigned i = 0; i < MEMBERS; i++) {
            struct member *m = &cl->m[i];
            if (bench_proc_gone(&m->proc)) {
                char how[64];
                bench_proc_describe_exit(&m->proc, how, sizeof how);
                fprintf(stderr, "error: unavailable: etcd %s exited (%s)\n",
                        m->name, how);
                bench_proc_print_log_tail(&m->proc);
                return -1;
            }
            int st = http_post_blocking("127.0.0.1", m->client_port,
                                        "/v3/maintenance/status", "{}", body,
                                        sizeof body, 1000);
            all = all && st == 200 &&
                  json_u64(body, strlen(body), "leader", &leader[i]) &&
                  json_u64(body, strlen(body), "member_id", &m->member_id);
        }
        if (all && leader[0] != 0 && leader[0] == leader[1] &&
            leader[1] == leader[2]) {
            for (unsigned i = 0; i < MEMBERS; i++) {
                if (cl->m[i].member_id == leader[0]) {
                    cl->leader = i;
                    int st = http_post_blocking(
                        "127.0.0.1", cl->m[i].client_port, "/v3/kv/put",
                        "{\"key\":\"YmVuY2gvcmVhZHk=\",\"value\":\"MQ==\"}",
                        body, sizeof body, 2000);
                    if (st == 200) {
                        return 0;
                    }
                }
            }
        }
        usleep(100000);
    }
    if (!interrupted) {
        fprintf(stderr, "error: timeout: no agreed etcd leader within %d ms\n",
                STARTUP_MS);
        for (unsigned i = 0; i < MEMBERS; i++) {
            bench_proc_print_log_tail(&cl->m[i].proc);
        }
    }
    return -1;
}

static int cluster_stop(struct cluster *cl)
{
    struct bench_proc procs[MEMBERS];
    for (unsigned i = 0; i < MEMBERS; i++) {
        procs[i] = cl->m[i].proc;
    }
    int rv = bench_proc_stop_all(procs, MEMBERS, STOP_MS, true);
    for (unsigned i = 0; i < MEMBERS; i++) {
        cl->m[i].proc = procs[i];
    }
    return rv;
}

/* --- Load on the loop
 * ------------------------------------------------------------- */

enum phase {
    PH_CONNECT = 0,
    PH_FILL,
    PH_WARMUP,
    PH_MEASURE,
    PH_DRAIN,
    PH_CLOSING
};

struct run;

struct hconn
{
    struct run *run;
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    char req[REQ_MAX];
    size_t req_len;
    char *rbuf;
    size_t rlen, rcap;
    uint64_t sent_ns;
    uint16_t port;
    bool is_probe;
    bool opened; /* uv_tcp_init done: the handle must be closed */
    bool writing, waiting, closing;
};

enum probe_kind { PROBE_IDLE = 0, PROBE_T0, PROBE_T1 };

struct run
{
    uv_loop_t loop;
    const struct opts *o;
    struct cluster *cl;
    enum phase phase;
    bool fill;
    unsigned n_conns;
    struct hconn *conns;
    struct hconn probe;
    enum probe_kind probe_kind, probe_due;
    unsigned connected;
    uv_timer_t phase_timer, guard_timer;
    uint64_t phase_deadline_ns;
    uint64_t next_key;
    uint64_t seq;
    uint64_t t0_ns, t1_ns, cpu0, cpu1;
    double self0, self1;
    uint64_t index0, index1;
    bool have_index0, have_index1;
    uint64_t *lat_ns;
    size_t n_lat, cap_lat;
    uint64_t completed, errors;
    unsigned shown;
    bool aborted;
};

static void run_finish(struct run *r);
static void conn_send_next(struct hconn *c);

static void run_error(struct run *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void run_error(struct run *r, const char *fmt, ...)
{
    r->errors++;
    if (r->shown++ >= ERRORS_SHOWN) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t cluster_cpu(const struct cluster *cl)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < MEMBERS; i++) {
        t += bench_proc_cpu_ticks(cl->m[i].proc.pid);
    }
    return t;
}

static bool run_busy(const struct run *r)
{
    for (unsigned i = 0; i < r->n_conns; i++) {
        if (r->conns[i].waiting && !r->conns[i].closing) {
            return true;
        }
    }
    return r->probe.waiting && !r->probe.closing;
}

static void run_check_done(struct run *r)
{
    bool fill_done = r->phase == PH_FILL && r->next_key >= r->o->paths;
    if ((r->phase == PH_DRAIN || fill_done) && !run_busy(r) &&
        r->probe_kind == PROBE_IDLE && r->probe_due == PROBE_IDLE) {
        run_finish(r);
    }
}

static void close_cb(uv_handle_t *h)
{
    (void)h;
}

static void conn_close(struct hconn *c)
{
    if (c->opened && !c->closing) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, close_cb);
    }
}

static void conn_fail(struct hconn *c, const char *why)
{
    struct run *r = c->run;
    if (c->closing) {
        return;
    }
    run_error(r, "unavailable: connection%s: %s", c->is_probe ? " (probe)" : "",
              why);
    c->waiting = false;
    conn_close(c);
    if (c->is_probe) {
        r->probe_kind = r->probe_due = PROBE_IDLE;
    }
    run_check_done(r);
}

static void write_cb(uv_write_t *w, int status)
{
    struct hconn *c = w->data;
    c->writing = false;
    if (status != 0) {
        conn_fail(c, uv_strerror(status));
        return;
    }
    if (!c->is_probe) {
        conn_send_next(c);
    }
}

static void conn_send(struct hconn *c)
{
    uv_buf_t buf = uv_buf_init(c->req, (unsigned)c->req_len);
    c->write.data = c;
    c->writing = c->waiting = true;
    c->sent_ns = now_ns();
    int rv = uv_write(&c->write, (uv_stream_t *)&c->tcp, &buf, 1, write_cb);
    if (rv != 0) {
        c->writing = false;
        conn_fail(c, uv_strerror(rv));
    }
}

static void build_post(struct hconn *c, const char *path, const char *body)
{
    int n = snprintf(c->req, sizeof c->req,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nContent-Type: "
                     "application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     path, c->port, strlen(body), body);
    c->req_len = n > 0 && (size_t)n < sizeof c->req ? (size_t)n : 0;
}

/* {"key": base64("bench/pK"), "value": base64(64 bytes)}. */
static void build_put(struct run *r, struct hconn *c, uint64_t key)
{
    char k[32], kb[64], vb[128], body[256];
    unsigned char v[VALUE_LEN];
    int klen = snprintf(k, sizeof k, "bench/p%" PRIu64, key);
    uint64_t x = ++r->seq * 0x9e3779b97f4a7c15ull;
    for (unsigned i = 0; i < VALUE_LEN; i++) {
        x ^= x >> 29;
        x *= 0xbf58476d1ce4e5b9ull;
        v[i] = (unsigned char)('a' + (x >> 59));
    }
    base64((const unsigned char *)k, (size_t)klen, kb);
    base64(v, sizeof v, vb);
    snprintf(body, sizeof body, "{\"key\":\"%s\",\"value\":\"%s\"}", kb, vb);
    build_post(c, "/v3/kv/put", body);
}

static void conn_send_next(struct hconn *c)
{
    struct run *r = c->run;
    if (c->closing || c->writing || c->waiting) {
        return;
    }
    if (r->phase != PH_FILL && r->phase != PH_WARMUP &&
        r->phase != PH_MEASURE) {
        return;
    }
    uint64_t key;
    if (r->phase == PH_FILL) {
        if (r->next_key >= r->o->paths) {
            return;
        }
        key = r->next_key++;
    } else {
        key = r->next_key++ % r->o->paths;
    }
    build_put(r, c, key);
    conn_send(c);
}

static void probe_send(struct run *r, enum probe_kind kind)
{
    struct hconn *c = &r->probe;
    if (c->closing) {
        return;
    }
    if (c->waiting || c->writing) {
        r->probe_due = kind;
        return;
    }
    r->probe_kind = kind;
    build_post(c, "/v3/maintenance/status", "{}");
    conn_send(c);
}

static void handle_response(struct hconn *c, int status, const char *body,
                            size_t len)
{
    struct run *r = c->run;
    uint64_t t = now_ns();
    if (!c->waiting) {
        conn_fail(c, "response to no request");
        return;
    }
    c->waiting = false;
    if (c->is_probe) {
        uint64_t idx = 0;
        if (status != 200 || !json_u64(body, len, "raftIndex", &idx)) {
            run_error(r, "protocol: status without raftIndex (HTTP %d)",
                      status);
        } else if (r->probe_kind == PROBE_T0) {
            r->index0 = idx;
            r->have_index0 = true;
        } else if (r->probe_kind == PROBE_T1) {
            r->index1 = idx;
            r->have_index1 = true;
        }
        r->probe_kind = PROBE_IDLE;
        if (r->probe_due != PROBE_IDLE) {
            enum probe_kind due = r->probe_due;
            r->probe_due = PROBE_IDLE;
            probe_send(r, due);
        }
    } else if (status != 200 || memmem(body, len, "\"header\"", 8) == NULL) {
        run_error(r, "put failed: HTTP %d: %.*s", status,
                  (int)(len > 200 ? 200 : len), body);
    } else if (r->phase == PH_MEASURE) {
        r->completed++;
        bench_samples_push(&r->lat_ns, &r->n_lat, &r->cap_lat, t - c->sent_ns);
    }
    if (!c->is_probe) {
        conn_send_next(c);
    }
    run_check_done(r);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct hconn *c = h->data;
    (void)suggested;
    if (c->rcap - c->rlen < 16384) {
        size_t cap = c->rcap ? c->rcap * 2 : 65536;
        char *p = cap <= 4 * RESP_MAX ? realloc(c->rbuf, cap) : NULL;
        if (p == NULL) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        c->rbuf = p;
        c->rcap = cap;
    }
    *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(c->rcap - c->rlen));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct hconn *c = s->data;
    (void)buf;
    if (nread < 0) {
        conn_fail(c, nread == UV_EOF ? "closed by the server"
                                     : uv_strerror((int)nread));
        return;
    }
    c->rlen += (size_t)nread;
    for (;;) {
        int status;
        const char *body;
        size_t blen, used;
        int rv = http_response(c->rbuf, c->rlen, &status, &body, &blen, &used);
        if (rv == 0) {
            break;
        }
        if (rv < 0) {
            conn_fail(c, "malformed HTTP response");
            return;
        }
        handle_response(c, status, body, blen);
        if (c->closing) {
            return;
        }
        memmove(c->rbuf, c->rbuf + used, c->rlen - used);
        c->rlen -= used;
    }
}

static void phase_timer_cb(uv_timer_t *t)
{
    struct run *r = t->data;
    if (r->phase == PH_WARMUP) {
        r->phase = PH_MEASURE;
        r->t0_ns = now_ns();
        r->cpu0 = cluster_cpu(r->cl);
        r->self0 = bench_self_cpu_s();
        probe_send(r, PROBE_T0);
        uv_timer_start(&r->phase_timer, phase_timer_cb, r->o->measure_ms, 0);
    } else if (r->phase == PH_MEASURE) {
        r->phase = PH_DRAIN;
        r->t1_ns = now_ns();
        r->cpu1 = cluster_cpu(r->cl);
        r->self1 = bench_self_cpu_s();
        probe_send(r, PROBE_T1);
        r->phase_deadline_ns = r->t1_ns + DRAIN_MS * 1000000ull;
        run_check_done(r);
    }
}

static void start_load(struct run *r)
{
    if (r->fill) {
        r->phase = PH_FILL;
        r->phase_deadline_ns = now_ns() + FILL_MS * 1000000ull;
    } else {
        r->phase = PH_WARMUP;
        r->phase_deadline_ns = 0;
        uv_timer_start(&r->phase_timer, phase_timer_cb, r->o->warmup_ms, 0);
    }
    for (unsigned i = 0; i < r->n_conns; i++) {
        conn_send_next(&r->conns[i]);
    }
}

static void connect_cb(uv_connect_t *req, int status)
{
    struct hconn *c = req->data;
    struct run *r = c->run;
    if (status != 0) {
        conn_fail(c, uv_strerror(status));
        r->aborted = true;
        run_finish(r);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    if (++r->connected == r->n_conns + 1 && r->phase == PH_CONNECT) {
        start_load(r);
    }
}

static void guard_cb(uv_timer_t *t)
{
    struct run *r = t->data;
    if (interrupted) {
        run_error(r, "interrupted");
        r->aborted = true;
        run_finish(r);
        return;
    }
    for (unsigned i = 0; i < MEMBERS; i++) {
        if (bench_proc_gone(&r->cl->m[i].proc)) {
            run_error(r, "unavailable: etcd %s exited during the run",
                      r->cl->m[i].name);
            r->aborted = true;
            run_finish(r);
            return;
        }
    }
    if (r->phase_deadline_ns != 0 && now_ns() > r->phase_deadline_ns) {
        unsigned stuck = 0;
        for (unsigned i = 0; i < r->n_conns; i++) {
            stuck += r->conns[i].waiting && !r->conns[i].closing;
        }
        run_error(r, "timeout: phase %d not done in time; %u puts unanswered",
                  (int)r->phase, stuck);
        r->errors += stuck > 0 ? stuck - 1 : 0;
        r->aborted = true;
        run_finish(r);
    }
}

static void run_finish(struct run *r)
{
    if (r->phase == PH_CLOSING) {
        return;
    }
    r->phase = PH_CLOSING;
    for (unsigned i = 0; i < r->n_conns; i++) {
        conn_close(&r->conns[i]);
    }
    conn_close(&r->probe);
    uv_close((uv_handle_t *)&r->phase_timer, NULL);
    uv_close((uv_handle_t *)&r->guard_timer, NULL);
}

static int conn_open(struct run *r, struct hconn *c, uint16_t port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->run = r;
    c->port = port;
    uv_tcp_init(&r->loop, &c->tcp);
    c->opened = true;
    c->tcp.data = c;
    c->connect.data = c;
    int rv = uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&sa,
                            connect_cb);
    if (rv != 0) {
        run_error(r, "unavailable: connect to port %u: %s", port,
                  uv_strerror(rv));
        conn_close(c);
        return -1;
    }
    return 0;
}

struct level_result
{
    unsigned inflight;
    double pps;
    double p50_ms, p90_ms, p99_ms, p999_ms, max_ms;
    uint64_t errors;
    double cpu_us_per_put, self_us_per_put;
    double entries_per_s, puts_per_entry;
    double leader_rss_mb, leader_hwm_mb;
};

static uint64_t run_load(const struct opts *o, struct cluster *cl,
                         unsigned inflight, bool fill, struct level_result *res)
{
    struct run *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return 1;
    }
    r->o = o;
    r->cl = cl;
    r->fill = fill;
    r->n_conns = inflight;
    r->conns = calloc(inflight, sizeof *r->conns);
    if (r->conns == NULL || uv_loop_init(&r->loop) != 0) {
        free(r->conns);
        free(r);
        return 1;
    }
    uv_timer_init(&r->loop, &r->phase_timer);
    uv_timer_init(&r->loop, &r->guard_timer);
    r->phase_timer.data = r->guard_timer.data = r;
    r->phase_deadline_ns = now_ns() + CONNECT_MS * 1000000ull;
    uv_timer_start(&r->guard_timer, guard_cb, GUARD_TICK_MS, GUARD_TICK_MS);
    r->probe.is_probe = true;
    bool ok = conn_open(r, &r->probe, cl->m[cl->leader].client_port) == 0;
    for (unsigned i = 0; ok && i < inflight; i++) {
        unsigned m = o->target_all ? i % MEMBERS : cl->leader;
        ok = conn_open(r, &r->conns[i], cl->m[m].client_port) == 0;
    }
    if (!ok) {
        r->aborted = true;
        run_finish(r);
    }
    uv_run(&r->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&r->loop) != 0) {
        run_error(r, "internal: handles left open on the loop");
    }
    if (!fill && res != NULL) {
        memset(res, 0, sizeof *res);
        res->inflight = inflight;
        res->errors = r->errors;
        double window = (double)(r->t1_ns - r->t0_ns) / 1e9;
        if (r->t1_ns > r->t0_ns && r->completed > 0) {
            res->pps = (double)r->completed / window;
            res->cpu_us_per_put = (double)(r->cpu1 - r->cpu0) * 1e6 /
                                  (double)sysconf(_SC_CLK_TCK) /
                                  (double)r->completed;
            res->self_us_per_put =
                (r->self1 - r->self0) * 1e6 / (double)r->completed;
            if (r->have_index0 && r->have_index1 && r->index1 > r->index0) {
                double e = (double)(r->index1 - r->index0);
                res->entries_per_s = e / window;
                res->puts_per_entry = (double)r->completed / e;
            }
        }
        bench_samples_sort(r->lat_ns, r->n_lat);
        res->p50_ms = bench_quantile_ms(r->lat_ns, r->n_lat, 0.50);
        res->p90_ms = bench_quantile_ms(r->lat_ns, r->n_lat, 0.90);
        res->p99_ms = bench_quantile_ms(r->lat_ns, r->n_lat, 0.99);
        res->p999_ms = bench_quantile_ms(r->lat_ns, r->n_lat, 0.999);
        res->max_ms = bench_quantile_ms(r->lat_ns, r->n_lat, 1.0);
        pid_t lp = cl->m[cl->leader].proc.pid;
        res->leader_rss_mb = (double)bench_proc_status_kb(lp, "VmRSS") / 1024;
        res->leader_hwm_mb = (double)bench_proc_status_kb(lp, "VmHWM") / 1024;
    }
    uint64_t errors = r->errors + (r->aborted && r->errors == 0);
    for (unsigned i = 0; i < inflight; i++) {
        free(r->conns[i].rbuf);
    }
    free(r->probe.rbuf);
    free(r->lat_ns);
    free(r->conns);
    free(r);
    return errors;
}

/* --- Output and main
 * ---------------------------------------------------------------- */

static void print_header(void)
{
    printf("%8s %9s %7s %7s %7s %8s %7s %6s %8s %8s %9s %7s %7s %7s\n",
           "inflight", "puts/s", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
           "max_ms", "errors", "cpu_us/p", "bench_us", "entries/s", "p/entry",
           "rss_MB", "hwm_MB");
}

static void print_result(const struct level_result *x)
{
    printf("%8u %9.0f %7.2f %7.2f %7.2f %8.2f %7.1f %6" PRIu64
           " %8.1f %8.1f %9.0f %7.1f %7.1f %7.1f\n",
           x->inflight, x->pps, x->p50_ms, x->p90_ms, x->p99_ms, x->p999_ms,
           x->max_ms, x->errors, x->cpu_us_per_put, x->self_us_per_put,
           x->entries_per_s, x->puts_per_entry, x->leader_rss_mb,
           x->leader_hwm_mb);
    fflush(stdout);
}

static void print_stat(struct level_result *rs, unsigned n, size_t off,
                       int decimals, int width)
{
    double v[REPEAT_MAX];
    for (unsigned i = 0; i < n; i++) {
        memcpy(&v[i], (char *)&rs[i] + off, sizeof v[i]);
    }
    double med = bench_median(v, n); /* sorts v */
    char cell[100];
    snprintf(cell, sizeof cell, "%.*f [%.*f-%.*f]", decimals, med, decimals,
             v[0], decimals, v[n - 1]);
    printf(" %-*s", width, cell);
}

int main(int argc, char **argv)
{
    static struct opts o = {
        .etcd = "/usr/bin/etcd",
        .dir = "/var/tmp",
        .inflight = {1, 16, 64},
        .n_levels = 3,
        .warmup_ms = 2000,
        .measure_ms = 10000,
        .paths = 10000,
        .repeat = 1,
    };
    static const struct option longopts[] = {
        {"etcd", required_argument, NULL, 'e'},
        {"dir", required_argument, NULL, 'd'},
        {"inflight", required_argument, NULL, 'i'},
        {"seconds", required_argument, NULL, 's'},
        {"warmup", required_argument, NULL, 'w'},
        {"target", required_argument, NULL, 't'},
        {"paths", required_argument, NULL, 'p'},
        {"repeat", required_argument, NULL, 'r'},
        {"keep", no_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        int bad = 0;
        switch (ch) {
        case 'e':
            o.etcd = optarg;
            break;
        case 'd':
            o.dir = optarg;
            break;
        case 'i': {
            char copy[256], *save = NULL;
            snprintf(copy, sizeof copy, "%s", optarg);
            o.n_levels = 0;
            for (char *t = strtok_r(copy, ",", &save); t != NULL && !bad;
                 t = strtok_r(NULL, ",", &save)) {
                bad = o.n_levels == LEVELS_MAX ||
                      parse_unsigned("--inflight", t, 1, INFLIGHT_MAX,
                                     &o.inflight[o.n_levels++]) != 0;
            }
            bad = bad || o.n_levels == 0;
            break;
        }
        case 's':
            bad = parse_seconds("--seconds", optarg, &o.measure_ms) != 0 ||
                  o.measure_ms == 0;
            break;
        case 'w':
            bad = parse_seconds("--warmup", optarg, &o.warmup_ms);
            break;
        case 't':
            bad = strcmp(optarg, "leader") != 0 && strcmp(optarg, "all") != 0;
            o.target_all = strcmp(optarg, "all") == 0;
            break;
        case 'p':
            bad = parse_unsigned("--paths", optarg, 1, 10000000, &o.paths);
            break;
        case 'r':
            bad = parse_unsigned("--repeat", optarg, 1, REPEAT_MAX, &o.repeat);
            break;
        case 'k':
            o.keep = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "error: invalid: bad value for an option\n");
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || access(o.etcd, X_OK) != 0) {
        fprintf(stderr, "error: invalid: %s is not an executable etcd\n",
                o.etcd);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    static struct level_result results[LEVELS_MAX][REPEAT_MAX];
    uint64_t total_errors = 0;
    bool failed = false;
    unsigned runs = 0;
    printf("# etcd put benchmark: 3 members on 127.0.0.1, gRPC-gateway JSON "
           "/v3/kv/put, target=%s,\n"
           "# keys=%u, value=%d B, warmup=%.1fs, measured=%.1fs per level, "
           "repeat=%u, etcd=%s\n",
           o.target_all ? "all" : "leader", o.paths, VALUE_LEN,
           (double)o.warmup_ms / 1000, (double)o.measure_ms / 1000, o.repeat,
           o.etcd);
    for (unsigned rep = 0; rep < o.repeat && !failed && !interrupted; rep++) {
        struct cluster cl;
        int rv = cluster_start(&o, &cl);
        if (rv == 0) {
            rv = cluster_wait_ready(&cl);
        }
        if (rv == 0) {
            printf("\n# run %u/%u: data in %s, leader %s (pid %d)\n", rep + 1,
                   o.repeat, cl.root, cl.m[cl.leader].name,
                   (int)cl.m[cl.leader].proc.pid);
            uint64_t t = now_ns();
            uint64_t e = run_load(&o, &cl, 64, true, NULL);
            printf("# filled %u keys in %.1f s\n", o.paths,
                   (double)(now_ns() - t) / 1e9);
            fflush(stdout);
            total_errors += e;
            rv = e != 0 ? -1 : 0;
        }
        if (rv == 0) {
            print_header();
            for (unsigned l = 0; l < o.n_levels && !interrupted; l++) {
                struct level_result *res = &results[l][rep];
                uint64_t e = run_load(&o, &cl, o.inflight[l], false, res);
                total_errors += e;
                res->errors = e;
                if (!interrupted) {
                    print_result(res);
                }
                if (e != 0) {
                    rv = -1;
                    break;
                }
            }
        }
        if (cluster_stop(&cl) != 0) {
            rv = -1;
        }
        if (rv != 0) {
            failed = true;
            if (interrupted && !o.keep && cl.root[0] != '\0') {
                bench_remove_tree(cl.root);
            } else if (cl.root[0] != '\0') {
                fprintf(stderr, "# data and logs kept in %s\n", cl.root);
            }
        } else {
            runs++;
            if (!o.keep) {
                bench_remove_tree(cl.root);
            }
        }
    }
    if (runs > 1 && !failed) {
        printf("\n# summary over %u runs: median [min-max]\n", runs);
        printf("%8s %-22s %-20s %-20s %-20s %-16s %-20s\n", "inflight",
               "puts/s", "p50_ms", "p99_ms", "max_ms", "cpu_us/put",
               "leader_rss_MB");
        for (unsigned l = 0; l < o.n_levels; l++) {
            struct level_result *rs = results[l];
            printf("%8u", o.inflight[l]);
            print_stat(rs, runs, offsetof(struct level_result, pps), 0, 22);
            print_stat(rs, runs, offsetof(struct level_result, p50_ms), 2, 20);
            print_stat(rs, runs, offsetof(struct level_result, p99_ms), 2, 20);
            print_stat(rs, runs, offsetof(struct level_result, max_ms), 1, 20);
            print_stat(rs, runs, offsetof(struct level_result, cpu_us_per_put),
                       0, 16);
            print_stat(rs, runs, offsetof(struct level_result, leader_rss_mb),
                       1, 20);
            printf("\n");
        }
    }
    if (interrupted) {
        fprintf(stderr, "error: interrupted\n");
        return 130;
    }
    if (total_errors != 0) {
        fprintf(stderr, "error: %" PRIu64 " put(s) or check(s) failed\n",
                total_errors);
        return 1;
    }
    if (failed) {
        fprintf(stderr, "error: the run failed (see the messages above)\n");
        return 1;
    }
    return 0;
}
