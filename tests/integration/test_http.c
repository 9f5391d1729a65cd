/* test_http.c - the HTTP/JSON API, tokens, signed HTTP requests, pluggable
 * validators, watches and group commit, on real 3-node clusters whose nodes
 * all listen with --http (harness_set_http).
 *
 *   http_api        insecure cluster: a quota created with PUT on a
 *                   follower reads back the same (JSON equality) with GET on
 *                   another node and with allotctl -o json; labels by HTTP
 *                   (null removes) and by allotctl (labels.k=v, labels.k=);
 *                   ls pages (prefix, after, limit) equal allotctl quota ls;
 *                   audit equals allotctl audit; /v1/cluster is the node's
 *                   own view; if_version and recursive DELETE; keep-alive;
 *                   errors and their statuses: 400 (malformed JSON, not an
 *                   object, unknown field, bad query), 404 (missing quota,
 *                   unknown route), 409 (if_version), 422 (built-in rule),
 *                   413 (a body one byte over 1 MiB, then the connection
 *                   closes; exactly 1 MiB is fine), none of which changes
 *                   the catalog; /metrics on a follower and on the leader
 *                   passes `promtool check metrics` and counts the requests
 *                   made (allot_requests_total{op="quota.set",result="ok"}
 *                   grows by what this test did through that node)
 *   tokens          secure cluster: an admin's token for alice works over
 *                   HTTP through a follower (reads and writes, audited as
 *                   alice) and with allotctl --token; token ls shows no
 *                   token; self-service (alice for herself, not for bob);
 *                   unknown, malformed, revoked, expired tokens and tokens
 *                   of a removed principal: 401 / unauthenticated; no
 *                   credentials: 401; validators are admin-only
 *   http_signed     secure cluster: signed HTTP requests (X-Allot-*) over
 *                   "METHOD TARGET" and the raw body: bad ones refused
 *                   (401); a good GET and PUT answered (through a follower
 *                   and on the leader), audited as the signer; the same
 *                   headers replayed: 401
 *   validators_exec an exec validator vetoes guaranteed.memory_mb > 1000:
 *                   its words reach allotctl's stderr as "error:
 *                   validation_failed: ..." and HTTP as 422; it gets the
 *                   change document on stdin; `sleep 5` with --timeout-ms
 *                   300 rejects, with --fail-open accepts; a veto rejects
 *                   even with --fail-open; a validator killed by a signal
 *                   is no answer; while a validator waits (for a file the
 *                   test creates), the leader answers ping, allotctl and
 *                   HTTP reads - shown by order, not by time; the audit
 *                   trail has every accepted change and no rejected one
 *   validator_slow  a validator that takes longer than the client's
 *                   per-attempt wait (3 s) but less than its --timeout-ms:
 *                   the write is accepted and the client told so
 *   validators_url  a URL validator (an HTTP server forked by the test on
 *                   127.0.0.1): 403 with a body -> the body reaches allotctl
 *                   and HTTP clients; 2xx accepts and the POST carries the
 *                   change document as JSON; 5xx, a refused connection and a
 *                   non-HTTP answer are no answer (rejected, or accepted
 *                   with --fail-open); the audit trail; the document's
 *                   "new" carries the labels the change leaves
 *   watch           allotctl quota watch --count N from a version sees
 *                   exactly the versions audit -o json lists, in order,
 *                   while the leader it was reading from is SIGKILLed
 *                   mid-stream; an HTTP watch on a follower (chunked NDJSON)
 *                   streams the same records; after audit-retention
 *                   max_records=3, watching from an old version is
 *                   not_found (allotctl: exit 1 "error: not_found: ...";
 *                   HTTP: an error line ends the stream) while a recent
 *                   version still works
 *   group_commit    --max-inflight-entries 2: hundreds of pipelined writes
 *                   on two connections (leader, follower) all apply once,
 *                   with dense versions, in FIFO order per connection, the
 *                   last write to a path winning; replicas converge
 *
 * No assertion depends on how long something took: waits poll with bounds
 * and ordering is shown by files the test controls. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth.h"
#include "client.h"
#include "harness.h"
#include "lib.h"
#include "wire.h"

#define CTL(r, eps, ...) \
    harness_ctl((r), (eps), __VA_ARGS__, (const char *)NULL)

/* Run allotctl and assert it succeeded. */
#define CTL_OK(r, eps, ...)                                                  \
    do {                                                                     \
        CTL(r, eps, __VA_ARGS__);                                            \
        ck_assert_msg((r)->status == 0,                                      \
                      "allotctl %s failed with status %d: %s", #__VA_ARGS__, \
                      (r)->status, (r)->err);                                \
    } while (0)

/* As the principal of identity file `who`. */
#define AS(r, eps, who, ...)    CTL(r, eps, "--identity", (who), __VA_ARGS__)
#define AS_OK(r, eps, who, ...) CTL_OK(r, eps, "--identity", (who), __VA_ARGS__)

#define HTTP_WAIT_MS HARNESS_IO_WAIT_MS
#define BODY_MAX     (1u << 20) /* docs/http.md: bodies up to 1 MiB */

/* --- Small helpers -------------------------------------------------------- */

static json_t *parse_json(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    ck_assert_msg(j != NULL, "not one JSON document (line %d: %s): %.500s",
                  e.line, e.text, text);
    return j;
}

static const char *json_str_at(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    ck_assert_msg(json_is_string(v), "\"%s\" is not a string", key);
    return json_string_value(v);
}

static json_int_t json_int_at(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    ck_assert_msg(json_is_integer(v), "\"%s\" is not an integer", key);
    return json_integer_value(v);
}

/* Compact text of j, for messages (owned). */
static char *json_text(const json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    return s != NULL ? s : strdup("?");
}

static void assert_json_equal(const json_t *a, const json_t *b,
                              const char *what)
{
    if (!json_equal(a, b)) {
        char *x = json_text(a), *y = json_text(b);
        ck_abort_msg("%s differ:\n  %.1500s\n  %.1500s", what, x, y);
    }
}

/* s on one line (newlines as spaces, at most 1000 bytes), for messages.
 * Four rotating buffers, so one message may hold a few. */
static const char *oneline(const char *s)
{
    static char bufs[4][1024];
    static unsigned next;
    char *b = bufs[next++ % 4];
    snprintf(b, sizeof bufs[0], "%s", s != NULL ? s : "(null)");
    for (char *p = b; *p != '\0'; p++) {
        if (*p == '\n' || *p == '\r') {
            *p = ' ';
        }
    }
    return b;
}

/* Whole file (owned), "" if it cannot be read. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return strdup("");
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap + 1);
    ck_assert_ptr_nonnull(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
            ck_assert_ptr_nonnull(buf);
        }
    }
    buf[len] = '\0';
    fclose(f);
    return buf;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
    size_t len = strlen(text);
    ck_assert_msg(write(fd, text, len) == (ssize_t)len, "write %s", path);
    ck_assert_int_eq(fchmod(fd, mode), 0);
    close(fd);
}

static bool file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static void dir_path(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", harness_dir(), name);
}

/* Poll until path exists; false after the bound. */
static bool wait_file(const char *path)
{
    for (int round = 0; round < HARNESS_CONVERGE_WAIT_MS / 50; round++) {
        if (file_exists(path)) {
            return true;
        }
        harness_sleep_ms(50);
    }
    return file_exists(path);
}

/* A running node other than a and b (0 for none). */
static unsigned other_node(unsigned a, unsigned b)
{
    for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
        if (id != a && id != b && harness_node_running(id)) {
            return id;
        }
    }
    ck_abort_msg("no running node other than %u and %u", a, b);
    return 0;
}

/* allotctl was refused with `code`: exit 1 and one stderr line "error:
 * CODE: ..." holding `sub` (NULL: anything). */
static void assert_refused(const struct harness_ctl *r, const char *code,
                           const char *sub)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "error: %s: ", code);
    ck_assert_msg(r->status == 1, "want exit 1 (%s), got %d; stderr: %s", code,
                  r->status, r->err);
    ck_assert_msg(strncmp(r->err, prefix, strlen(prefix)) == 0,
                  "stderr does not start with \"%s\": %s", prefix, r->err);
    const char *nl = strchr(r->err, '\n');
    ck_assert_msg(nl != NULL && nl[1] == '\0', "stderr is not one line: %s",
                  r->err);
    if (sub != NULL) {
        ck_assert_msg(strstr(r->err, sub) != NULL,
                      "stderr does not hold \"%s\": %s", sub, r->err);
    }
}

static uint64_t catalog_version(unsigned node)
{
    struct harness_status st;
    ck_assert_int_eq(harness_status(node, false, &st, HARNESS_CALL_TIMEOUT_MS),
                     0);
    return st.catalog_version;
}

/* --- Identities (secure clusters) ----------------------------------------- */

struct ident
{
    char file[600];
    char hex[65];
    struct auth_identity id;
};

static struct ident Admin, Alice, Bob;
static char AdminArg[128];
static const char *NodeArgs[12];

static void make_identity(struct ident *who, const char *name)
{
    struct harness_ctl r;
    snprintf(who->file, sizeof who->file, "%s/%s.id", harness_dir(), name);
    CTL_OK(&r, NULL, "identity", "new", name, "--out", who->file);
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "identity", "pubkey", who->file);
    ck_assert_msg(strlen(r.out) == 65 && r.out[64] == '\n', "pubkey: %s",
                  r.out);
    memcpy(who->hex, r.out, 64);
    who->hex[64] = '\0';
    harness_ctl_free(&r);
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_msg(auth_identity_load(who->file, &who->id, msg) == 0, "%s", msg);
}

/* Nodes 1-3 with --http on each, `extra` more arguments (static strings),
 * secure (first admin "admin"; the harness signs as the admin) or
 * --insecure. Returns the leader. */
static unsigned start_cluster(bool secure, const char *const *extra)
{
    unsetenv("ALLOT_IDENTITY");
    unsetenv("ALLOT_TOKEN");
    unsigned k = 0;
    if (secure) {
        make_identity(&Admin, "admin");
        make_identity(&Alice, "alice");
        make_identity(&Bob, "bob");
        snprintf(AdminArg, sizeof AdminArg, "admin=%s", Admin.hex);
        NodeArgs[k++] = "--admin";
        NodeArgs[k++] = AdminArg;
    }
    for (unsigned i = 0; extra != NULL && extra[i] != NULL && k < 11; i++) {
        NodeArgs[k++] = extra[i];
    }
    NodeArgs[k] = NULL;
    harness_set_secure(secure);
    harness_set_http(true);
    harness_set_node_args(NodeArgs);
    double t = harness_now();
    harness_cluster_start(3);
    if (secure) {
        harness_set_identity(&Admin.id);
    }
    unsigned leader = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
    ck_assert_msg(leader != 0, "no leader");
    /* Every follower has applied the leader's first entry (and so knows
     * where to forward): HTTP writes are not retried for the client. */
    ck_assert_int_eq(harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, NULL), 0);
    harness_log("%s cluster with --http: node %u leads after %.3f s",
                secure ? "secure" : "insecure", leader, harness_now() - t);
    return leader;
}

/* --- An HTTP/1.1 client ----------------------------------------------------
 *
 * Just enough for the API: Content-Length and chunked bodies, keep-alive,
 * and telling when the server closed the connection. */

struct hconn
{
    int fd;
    char *buf;
    size_t len;
    size_t cap;
};

struct hresp
{
    int status;
    char head[8192];
    char *body; /* owned, NUL-terminated (chunks joined) */
    size_t body_len;
};

static void hresp_free(struct hresp *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

static void hc_open(struct hconn *c, unsigned node)
{
    memset(c, 0, sizeof *c);
    c->fd = harness_http_connect(node);
    ck_assert_msg(c->fd >= 0, "cannot connect to node %u's HTTP port %s: %s",
                  node, harness_node_http_addr(node), strerror(errno));
}

static void hc_close(struct hconn *c)
{
    if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

static int ms_left(double deadline)
{
    double left = (deadline - harness_now()) * 1000.0;
    return left <= 0 ? 0 : (int)left + 1;
}

/* More bytes: 1 some arrived, 0 the peer closed (EOF or reset), -1 none
 * before the deadline. */
static int hc_fill(struct hconn *c, double deadline)
{
    if (c->cap - c->len < 65536 + 1) {
        size_t cap = c->cap == 0 ? 131072 : c->cap * 2;
        char *p = realloc(c->buf, cap);
        ck_assert_ptr_nonnull(p);
        c->buf = p;
        c->cap = cap;
    }
    for (;;) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, ms_left(deadline));
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr <= 0) {
            return -1;
        }
        ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
        if (r > 0) {
            c->len += (size_t)r;
            c->buf[c->len] = '\0';
            return 1;
        }
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        return 0;
    }
}

static void hc_consume(struct hconn *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    c->buf[c->len] = '\0';
}

/* Header `name` of r (case-insensitive) into out; false if absent. */
static bool hresp_header(const struct hresp *r, const char *name, char *out,
                         size_t size)
{
    size_t n = strlen(name);
    const char *line = strstr(r->head, "\r\n");
    while (line != NULL && line[2] != '\0' && line[2] != '\r') {
        line += 2;
        const char *end = strstr(line, "\r\n");
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        if (len > n && line[n] == ':' && strncasecmp(line, name, n) == 0) {
            const char *v = line + n + 1;
            while (*v == ' ') {
                v++;
            }
            snprintf(out, size, "%.*s", (int)(line + len - v), v);
            return true;
        }
        line = end;
    }
    return false;
}

/* The status line and headers: 0, -1 timeout, -2 closed first. */
static int hc_read_head(struct hconn *c, struct hresp *r, double deadline)
{
    for (;;) {
        char *end = c->len > 0 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
        if (end != NULL) {
            size_t n = (size_t)(end - c->buf) + 4;
            ck_assert_uint_lt(n, sizeof r->head);
            memcpy(r->head, c->buf, n);
            r->head[n] = '\0';
            hc_consume(c, n);
            ck_assert_msg(sscanf(r->head, "HTTP/1.1 %d", &r->status) == 1,
                          "bad status line: %.100s", r->head);
            return 0;
        }
        int f = hc_fill(c, deadline);
        if (f <= 0) {
            return f == 0 ? -2 : -1;
        }
    }
}

/* One chunk of a chunked body: 1 with data (owned, NUL-terminated), 0 the
 * last (empty) chunk, -1 timeout, -2 closed. */
static int hc_read_chunk(struct hconn *c, char **data, size_t *len,
                         int timeout_ms)
{
    double deadline = harness_now() + timeout_ms / 1000.0;
    *data = NULL;
    *len = 0;
    for (;;) {
        char *eol = c->len > 0 ? memmem(c->buf, c->len, "\r\n", 2) : NULL;
        if (eol != NULL) {
            char *endp;
            unsigned long size = strtoul(c->buf, &endp, 16);
            ck_assert_msg(endp == eol && endp != c->buf,
                          "bad chunk header: %.40s", c->buf);
            size_t hl = (size_t)(eol - c->buf) + 2;
            if (c->len >= hl + size + 2) {
                ck_assert_msg(memcmp(c->buf + hl + size, "\r\n", 2) == 0,
                              "chunk not followed by CRLF");
                *data = malloc(size + 1);
                ck_assert_ptr_nonnull(*data);
                memcpy(*data, c->buf + hl, size);
                (*data)[size] = '\0';
                *len = size;
                hc_consume(c, hl + size + 2);
                return size > 0 ? 1 : 0;
            }
        }
        int f = hc_fill(c, deadline);
        if (f <= 0) {
            return f == 0 ? -2 : -1;
        }
    }
}

/* A whole response: 0, -1 timeout, -2 closed before it was complete. */
static int hc_read_response(struct hconn *c, struct hresp *r, int timeout_ms)
{
    memset(r, 0, sizeof *r);
    double deadline = harness_now() + timeout_ms / 1000.0;
    int rv = hc_read_head(c, r, deadline);
    if (rv != 0) {
        return rv;
    }
    char v[64];
    if (hresp_header(r, "Transfer-Encoding", v, sizeof v) &&
        strcasecmp(v, "chunked") == 0) {
        size_t cap = 1;
        r->body = calloc(1, cap);
        ck_assert_ptr_nonnull(r->body);
        for (;;) {
            char *d;
            size_t n;
            int k = hc_read_chunk(c, &d, &n, ms_left(deadline));
            if (k < 0) {
                return k;
            }
            if (k == 0) {
                free(d);
                return 0;
            }
            r->body = realloc(r->body, r->body_len + n + 1);
            ck_assert_ptr_nonnull(r->body);
            memcpy(r->body + r->body_len, d, n + 1);
            r->body_len += n;
            free(d);
        }
    }
    ck_assert_msg(hresp_header(r, "Content-Length", v, sizeof v),
                  "response without Content-Length: %s", r->head);
    size_t clen = strtoul(v, NULL, 10);
    while (c->len < clen) {
        int f = hc_fill(c, deadline);
        if (f <= 0) {
            return f == 0 ? -2 : -1;
        }
    }
    r->body = malloc(clen + 1);
    ck_assert_ptr_nonnull(r->body);
    memcpy(r->body, c->buf, clen);
    r->body[clen] = '\0';
    r->body_len = clen;
    hc_consume(c, clen);
    return 0;
}

/* Send a request (headers: more header lines, each ending in CRLF). The
 * result of the send is returned, not asserted: a server may close early. */
static int hc_send(struct hconn *c, const char *method, const char *target,
                   const char *headers, const char *body, size_t body_len,
                   bool close_after)
{
    char head[8192];
    int n =
        snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s",
                 method, target, headers != NULL ? headers : "",
                 close_after ? "Connection: close\r\n" : "");
    if (body != NULL) {
        n += snprintf(head + n, sizeof head - (size_t)n,
                      "Content-Type: application/json\r\n"
                      "Content-Length: %zu\r\n",
                      body_len);
    }
    n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    ck_assert_uint_lt((size_t)n, sizeof head);
    if (harness_raw_send(c->fd, head, (size_t)n) != 0) {
        return -1;
    }
    if (body != NULL && body_len > 0) {
        return harness_raw_send(c->fd, body, body_len);
    }
    return 0;
}

/* The peer closes the connection (and sends nothing more) within the
 * bound. */
static bool hc_closed(struct hconn *c)
{
    if (c->len > 0) {
        return false; /* bytes after the response */
    }
    double deadline = harness_now() + HTTP_WAIT_MS / 1000.0;
    for (;;) {
        int f = hc_fill(c, deadline);
        if (f == 0) {
            return true;
        }
        if (f < 0 || c->len > 0) {
            return false;
        }
    }
}

/* One request on a new connection (Connection: close). Returns the status;
 * r holds the response (free it). */
static int http_req(unsigned node, const char *method, const char *target,
                    const char *headers, const char *body, struct hresp *r)
{
    struct hconn c;
    hc_open(&c, node);
    ck_assert_int_eq(hc_send(&c, method, target, headers, body,
                             body != NULL ? strlen(body) : 0, true),
                     0);
    int rv = hc_read_response(&c, r, HTTP_WAIT_MS);
    ck_assert_msg(rv == 0, "%s %s on node %u: %s", method, target, node,
                  rv == -1 ? "no response in time"
                           : "connection closed before a whole response");
    hc_close(&c);
    harness_log("HTTP %s %s (node %u) -> %d %.160s", method, target, node,
                r->status, oneline(r->body));
    return r->status;
}

/* A request expected to succeed with 200: its JSON body (owned). */
static json_t *http_ok(unsigned node, const char *method, const char *target,
                       const char *headers, const char *body)
{
    struct hresp r;
    int st = http_req(node, method, target, headers, body, &r);
    ck_assert_msg(st == 200, "%s %s on node %u: %d %s", method, target, node,
                  st, oneline(r.body));
    char ct[128];
    ck_assert_msg(hresp_header(&r, "Content-Type", ct, sizeof ct) &&
                      strcmp(ct, "application/json") == 0,
                  "Content-Type of %s %s: %s", method, target, r.head);
    json_t *j = parse_json(r.body);
    hresp_free(&r);
    return j;
}

/* A request expected to fail with HTTP status `status`, error `code` and a
 * message holding `sub` (NULL: any). */
static void http_err(unsigned node, const char *method, const char *target,
                     const char *headers, const char *body, int status,
                     const char *code, const char *sub)
{
    struct hresp r;
    int st = http_req(node, method, target, headers, body, &r);
    ck_assert_msg(st == status, "%s %s on node %u: status %d, want %d (%s): %s",
                  method, target, node, st, status, code, oneline(r.body));
    json_t *j = parse_json(r.body);
    ck_assert_msg(strcmp(json_str_at(j, "error"), code) == 0,
                  "%s %s: error %s, want %s", method, target,
                  json_str_at(j, "error"), code);
    const char *m = json_str_at(j, "message");
    ck_assert_msg(sub == NULL || strstr(m, sub) != NULL,
                  "%s %s: message \"%s\" does not hold \"%s\"", method, target,
                  m, sub);
    json_decref(j);
    hresp_free(&r);
}

/* --- Signed HTTP requests --------------------------------------------------
 */

static void hex_of(const unsigned char *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    }
}

/* X-Allot-* headers for `method target` with body, signed by id at
 * now + skew_ms (docs/http.md). */
static void sign_headers(const struct auth_identity *id, const char *method,
                         const char *target, const char *body, int64_t skew_ms,
                         char *out, size_t size)
{
    char op[1024];
    snprintf(op, sizeof op, "%s %s", method, target);
    struct auth_claim cl;
    uint64_t now = (uint64_t)((int64_t)clock_wall_ms() + skew_ms);
    auth_sign(id, now, op, 0, 0, 0, body != NULL ? body : "",
              body != NULL ? strlen(body) : 0, &cl);
    char nonce[2 * AUTH_NONCE_LEN + 1], sig[2 * AUTH_SIG_LEN + 1];
    hex_of(cl.nonce, AUTH_NONCE_LEN, nonce);
    hex_of(cl.sig, AUTH_SIG_LEN, sig);
    snprintf(out, size,
             "X-Allot-Principal: %s\r\nX-Allot-Timestamp: %" PRIu64
             "\r\nX-Allot-Nonce: %s\r\nX-Allot-Signature: %s\r\n",
             cl.principal, cl.ts_ms, nonce, sig);
}

/* --- Metrics and promtool ---------------------------------------------------
 */

/* The value of sample `series` (the exact text before the value), -1 if the
 * text has none. */
static double metric_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        if (len > n && strncmp(line, series, n) == 0 && line[n] == ' ') {
            return strtod(line + n + 1, NULL);
        }
        line += len + (end != NULL);
    }
    return -1;
}

static char *metrics_of(unsigned node)
{
    struct hresp r;
    int st = http_req(node, "GET", "/metrics", NULL, NULL, &r);
    ck_assert_msg(st == 200, "/metrics on node %u: %d", node, st);
    char ct[128];
    ck_assert_msg(hresp_header(&r, "Content-Type", ct, sizeof ct) &&
                      strncmp(ct, "text/plain", 10) == 0,
                  "/metrics Content-Type: %s", r.head);
    char *text = r.body;
    r.body = NULL;
    return text;
}

/* promtool on PATH, or NULL. */
static const char *find_promtool(char *buf, size_t size)
{
    const char *path = getenv("PATH");
    while (path != NULL && *path != '\0') {
        const char *colon = strchr(path, ':');
        size_t len = colon != NULL ? (size_t)(colon - path) : strlen(path);
        if (len > 0) {
            snprintf(buf, size, "%.*s/promtool", (int)len, path);
            if (access(buf, X_OK) == 0) {
                return buf;
            }
        }
        path += len + (colon != NULL);
    }
    return NULL;
}

/* `promtool check metrics` on text: its exit status (-1: did not exit);
 * its output in *output (owned). */
static int promtool_check(const char *promtool, const char *text,
                          const char *name, char **output)
{
    char in_path[700], out_path[700];
    snprintf(in_path, sizeof in_path, "%s/%s.prom", harness_dir(), name);
    snprintf(out_path, sizeof out_path, "%s/%s.promtool", harness_dir(), name);
    write_file(in_path, text, 0644);
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) {
            _exit(127);
        }
        int in = open(in_path, O_RDONLY);
        int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (in < 0 || out < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 ||
            dup2(out, 2) < 0) {
            _exit(127);
        }
        execl(promtool, "promtool", "check", "metrics", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    bool done = false;
    for (int round = 0; round < HARNESS_EXIT_WAIT_MS / 20 && !done; round++) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        done = w == pid;
        if (!done) {
            harness_sleep_ms(20);
        }
    }
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        *output = slurp(out_path);
        return -1;
    }
    *output = slurp(out_path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void assert_promtool_passes(const char *text, const char *name)
{
    char buf[1024];
    const char *promtool = find_promtool(buf, sizeof buf);
    if (promtool == NULL) {
        harness_log("SKIPPED the promtool check of %s: promtool is not on "
                    "PATH (Debian package prometheus; .ci/install-deps "
                    "installs it)",
                    name);
        return;
    }
    char *out;
    int st = promtool_check(promtool, text, name, &out);
    ck_assert_msg(st == 0, "promtool check metrics (%s) exited %d: %s", name,
                  st, out);
    harness_log("promtool check metrics (%s): passed", name);
    free(out);
}

/* =========================================================================
 * http_api
 * ========================================================================= */

/* Paths of a quota.ls / HTTP ls answer's "quotas", joined with ",". */
static const char *paths_of(const json_t *quotas, char *buf, size_t size)
{
    size_t off = 0;
    buf[0] = '\0';
    ck_assert(json_is_array(quotas));
    for (size_t i = 0; i < json_array_size(quotas); i++) {
        int w = snprintf(buf + off, size - off, "%s%s", i ? "," : "",
                         json_str_at(json_array_get(quotas, i), "path"));
        off += w > 0 ? (size_t)w : 0;
    }
    return buf;
}

/* allotctl -o json ARGS on endpoints (NULL: all): the JSON (owned). */
#define CTL_JSON(eps, ...) ctl_json((eps), __VA_ARGS__, (const char *)NULL)
static json_t *ctl_json(const char *eps, const char *a0, ...)
    __attribute__((sentinel));
static json_t *ctl_json(const char *eps, const char *a0, ...)
{
    const char *args[8] = {NULL};
    unsigned n = 0;
    va_list ap;
    va_start(ap, a0);
    for (const char *a = a0; a != NULL && n < 7; a = va_arg(ap, const char *)) {
        args[n++] = a;
    }
    va_end(ap);
    struct harness_ctl r;
    harness_ctl(&r, eps, "-o", "json", args[0], args[1], args[2], args[3],
                args[4], args[5], args[6], (const char *)NULL);
    ck_assert_msg(r.status == 0, "allotctl -o json %s %s %s: %d %s", args[0],
                  args[1] ? args[1] : "", args[2] ? args[2] : "", r.status,
                  r.err);
    json_t *j = parse_json(r.out);
    harness_ctl_free(&r);
    return j;
}

static void check_metrics_counted(unsigned node, const char *before,
                                  const char *after, unsigned sets_ok,
                                  unsigned http_requests)
{
    static const char ok[] = "allot_requests_total{op=\"quota.set\","
                             "result=\"ok\"}";
    double b = metric_value(before, ok), a = metric_value(after, ok);
    ck_assert_msg(a >= 0, "node %u: no %s after quota.set requests", node, ok);
    if (b < 0) {
        b = 0;
    }
    ck_assert_msg(a - b >= sets_ok,
                  "node %u: %s went from %.0f to %.0f, want "
                  "at least %u more",
                  node, ok, b, a, sets_ok);
    double hb = metric_value(before, "allot_http_requests_total");
    double ha = metric_value(after, "allot_http_requests_total");
    ck_assert_msg(hb >= 0 && ha - hb >= http_requests,
                  "node %u: allot_http_requests_total %.0f -> %.0f, want at "
                  "least %u more",
                  node, hb, ha, http_requests);
    harness_log("node %u: %s %.0f -> %.0f; http requests %.0f -> %.0f", node,
                ok, b, a, hb, ha);
}

START_TEST(test_http_api)
{
    harness_begin("http_api");
    unsigned L = start_cluster(false, NULL);
    unsigned F1 = other_node(L, 0);
    unsigned F2 = other_node(L, F1);
    char *m_before = metrics_of(F1);

    /* Create through a follower; the reply is the quota. */
    json_t *put = http_ok(
        F1, "PUT", "/v1/quotas/org", NULL,
        "{\"kind\": \"capacity\", \"guaranteed\": {\"memory_mb\": 4096, "
        "\"vcores\": 8}, \"max\": {\"memory_mb\": 8192, \"vcores\": 16}, "
        "\"max_apps\": 10, \"labels\": {\"team\": \"ads\", \"env\": "
        "\"prod\"}}");
    unsigned sets_via_f1 = 1, http_via_f1 = 2;
    ck_assert_str_eq(json_str_at(put, "path"), "org");
    ck_assert_str_eq(json_str_at(put, "kind"), "capacity");
    json_int_t v_org = json_int_at(put, "version");
    ck_assert_int_ge(v_org, 1);
    ck_assert_int_eq(
        json_int_at(json_object_get(put, "guaranteed"), "memory_mb"), 4096);
    ck_assert_int_eq(json_int_at(json_object_get(put, "max"), "vcores"), 16);
    ck_assert_int_eq(json_int_at(put, "max_apps"), 10);
    json_t *want_labels = parse_json("{\"env\": \"prod\", \"team\": \"ads\"}");
    assert_json_equal(json_object_get(put, "labels"), want_labels, "labels");
    json_decref(want_labels);

    /* The same quota by HTTP on the other follower, on the leader, and by
     * allotctl (msgpack): the same JSON, field for field. */
    json_t *get2 = http_ok(F2, "GET", "/v1/quotas/org", NULL, NULL);
    assert_json_equal(put, get2, "PUT reply and GET on another node");
    json_t *getl = http_ok(L, "GET", "/v1/quotas/org", NULL, NULL);
    assert_json_equal(get2, getl, "GET on a follower and on the leader");
    json_t *ctl = CTL_JSON(NULL, "quota", "get", "org");
    assert_json_equal(get2, ctl, "HTTP GET and allotctl -o json quota get");
    json_decref(get2);
    json_decref(getl);
    json_decref(ctl);
    json_decref(put);

    /* A rate child with if_version=0 (only if absent), then a conflict. */
    json_t *api = http_ok(F1, "PUT", "/v1/quotas/org/api?if_version=0", NULL,
                          "{\"rate\": 100, \"burst\": 200}");
    sets_via_f1++;
    http_via_f1++;
    ck_assert_str_eq(json_str_at(api, "kind"), "rate");
    ck_assert(json_is_real(json_object_get(api, "rate")) ||
              json_is_integer(json_object_get(api, "rate")));
    ck_assert(json_number_value(json_object_get(api, "rate")) == 100.0);
    ck_assert_int_eq(json_int_at(api, "burst"), 200);
    json_int_t v_api = json_int_at(api, "version");
    json_decref(api);
    uint64_t v_before_errors = catalog_version(L);
    http_err(F1, "PUT", "/v1/quotas/org/api?if_version=0", NULL,
             "{\"rate\": 5}", 409, "conflict", "org/api");
    char target[256];
    snprintf(target, sizeof target, "/v1/quotas/org/api?if_version=%lld",
             (long long)v_api + 7);
    http_err(F2, "PUT", target, NULL, "{\"rate\": 5}", 409, "conflict", NULL);
    snprintf(target, sizeof target, "/v1/quotas/org/api?if_version=%lld",
             (long long)v_api);
    api = http_ok(F2, "PUT", target, NULL, "{\"rate\": 50}");
    ck_assert(json_number_value(json_object_get(api, "rate")) == 50.0);
    ck_assert_int_eq(json_int_at(api, "burst"), 200);
    json_decref(api);
    v_before_errors = catalog_version(L);

    /* Labels: null removes one; allotctl labels.k=v adds, labels.k= removes;
     * both protocols see the same. */
    json_t *q = http_ok(F1, "PUT", "/v1/quotas/org", NULL,
                        "{\"labels\": {\"env\": null, \"tier\": \"gold\"}}");
    sets_via_f1++;
    http_via_f1++;
    json_t *want = parse_json("{\"team\": \"ads\", \"tier\": \"gold\"}");
    assert_json_equal(json_object_get(q, "labels"), want, "labels after null");
    json_decref(want);
    ck_assert_int_eq(json_int_at(json_object_get(q, "guaranteed"), "memory_mb"),
                     4096);
    json_decref(q);
    struct harness_ctl r;
    CTL_OK(&r, NULL, "quota", "set", "org", "labels.owner=me", "labels.tier=");
    harness_ctl_free(&r);
    q = http_ok(F2, "GET", "/v1/quotas/org", NULL, NULL);
    want = parse_json("{\"owner\": \"me\", \"team\": \"ads\"}");
    assert_json_equal(json_object_get(q, "labels"), want,
                      "labels after allotctl");
    json_decref(want);
    json_decref(q);
    http_err(F1, "PUT", "/v1/quotas/org", NULL,
             "{\"labels\": {\"bad key\": \"x\"}}", 400, "invalid", "label");
    http_err(F1, "PUT", "/v1/quotas/org", NULL, "{\"labels\": {\"k\": 5}}", 400,
             "invalid", "label");
    http_err(F1, "PUT", "/v1/quotas/org", NULL, "{\"labels\": [\"k\"]}", 400,
             "invalid", "labels");

    /* Listing: pages of 2 through `after` = the reply's `next`, the same
     * quotas allotctl lists. */
    json_t *b = http_ok(L, "PUT", "/v1/quotas/org/b", NULL,
                        "{\"guaranteed\": {\"memory_mb\": 100, \"vcores\": "
                        "1}}");
    json_decref(b);
    b = http_ok(L, "PUT", "/v1/quotas/org/c", NULL,
                "{\"guaranteed\": {\"vcores\": 1}, \"labels\": {\"x\": "
                "\"y\"}}");
    json_decref(b);
    b = http_ok(L, "PUT", "/v1/quotas/org-x", NULL, "{\"rate\": 3}");
    json_decref(b);
    json_t *all = json_array();
    char after[128] = "";
    char pbuf[1024];
    for (int page = 0; page < 10; page++) {
        char t[256];
        if (after[0] != '\0') {
            snprintf(t, sizeof t, "/v1/quotas?prefix=org&limit=2&after=%s",
                     after);
        } else {
            snprintf(t, sizeof t, "/v1/quotas?prefix=org&limit=2");
        }
        json_t *pg = http_ok(F2, "GET", t, NULL, NULL);
        json_t *qs = json_object_get(pg, "quotas");
        ck_assert_uint_le(json_array_size(qs), 2);
        json_array_extend(all, qs);
        json_t *more = json_object_get(pg, "more");
        ck_assert(json_is_boolean(more));
        if (!json_is_true(more)) {
            ck_assert(json_is_null(json_object_get(pg, "next")));
            json_decref(pg);
            after[0] = '\0';
            break;
        }
        snprintf(after, sizeof after, "%s", json_str_at(pg, "next"));
        json_decref(pg);
    }
    ck_assert_msg(after[0] == '\0', "listing did not end in 10 pages");
    ck_assert_str_eq(paths_of(all, pbuf, sizeof pbuf),
                     "org,org/api,org/b,org/c");
    json_t *ls = CTL_JSON(NULL, "quota", "ls", "org");
    assert_json_equal(all, json_object_get(ls, "quotas"),
                      "HTTP pages and allotctl quota ls");
    json_decref(ls);
    json_decref(all);
    json_t *ls_all = http_ok(F1, "GET", "/v1/quotas", NULL, NULL);
    http_via_f1++;
    ck_assert_str_eq(
        paths_of(json_object_get(ls_all, "quotas"), pbuf, sizeof pbuf),
        "org,org-x,org/api,org/b,org/c");
    json_decref(ls_all);

    /* Audit: the same records as allotctl audit. */
    json_t *au = http_ok(F2, "GET", "/v1/audit?prefix=org", NULL, NULL);
    json_t *au_ctl = CTL_JSON(NULL, "audit", "org");
    assert_json_equal(json_object_get(au, "records"),
                      json_object_get(au_ctl, "records"),
                      "HTTP audit and allotctl audit");
    ck_assert_uint_ge(json_array_size(json_object_get(au, "records")), 7);
    json_decref(au_ctl);
    json_t *last =
        json_array_get(json_object_get(au, "records"),
                       json_array_size(json_object_get(au, "records")) - 1);
    ck_assert_str_eq(json_str_at(last, "path"), "org/c");
    ck_assert_str_eq(json_str_at(last, "op"), "quota.set");
    ck_assert_str_eq(json_str_at(last, "principal"), "anonymous");
    json_decref(au);
    json_t *au2 =
        http_ok(F2, "GET", "/v1/audit?prefix=org&limit=2&after=1", NULL, NULL);
    ck_assert_uint_eq(json_array_size(json_object_get(au2, "records")), 2);
    ck_assert(json_is_true(json_object_get(au2, "more")));
    ck_assert_int_gt(
        json_int_at(json_array_get(json_object_get(au2, "records"), 0),
                    "version"),
        1);
    json_decref(au2);

    /* /v1/cluster: the answering node's own view. */
    json_t *cl = http_ok(F1, "GET", "/v1/cluster", NULL, NULL);
    http_via_f1++;
    ck_assert_int_eq(json_int_at(cl, "id"), F1);
    ck_assert_str_eq(json_str_at(cl, "state"), "follower");
    ck_assert_int_eq(json_int_at(cl, "leader"), L);
    json_t *members = json_object_get(cl, "members");
    ck_assert_uint_eq(json_array_size(members), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *mb = json_array_get(members, i);
        unsigned id = (unsigned)json_int_at(mb, "id");
        ck_assert_str_eq(json_str_at(mb, "raft_addr"),
                         harness_node_raft_addr(id));
        ck_assert_str_eq(json_str_at(mb, "role"), "voter");
    }
    json_decref(cl);
    cl = http_ok(L, "GET", "/v1/cluster", NULL, NULL);
    ck_assert_str_eq(json_str_at(cl, "state"), "leader");
    ck_assert(json_is_true(json_object_get(cl, "ready")));
    json_decref(cl);

    /* Errors, and none of them changes the catalog. */
    v_before_errors = catalog_version(L);
    http_err(F1, "PUT", "/v1/quotas/org/b", NULL, "{\"guaranteed\": ", 400,
             "invalid", "JSON");
    http_err(F1, "PUT", "/v1/quotas/org/b", NULL, "[1, 2]", 400, "invalid",
             NULL);
    http_err(F1, "PUT", "/v1/quotas/org/b", NULL, "", 400, "invalid", NULL);
    http_err(F1, "PUT", "/v1/quotas/org/b", NULL, "{\"bogus\": 1}", 400,
             "invalid", "bogus");
    http_err(F1, "PUT", "/v1/quotas/org/b", NULL, "{\"rate\": \"fast\"}", 400,
             "invalid", NULL);
    http_err(F1, "PUT", "/v1/quotas/org/b?if_version=abc", NULL,
             "{\"max_apps\": 1}", 400, "invalid", NULL);
    http_err(F1, "GET", "/v1/quotas?limit=0", NULL, NULL, 400, "invalid",
             "limit");
    http_err(F1, "GET", "/v1/quotas/a//b", NULL, NULL, 400, "invalid", NULL);
    http_err(F1, "GET", "/v1/quotas/nope", NULL, NULL, 404, "not_found",
             "nope");
    http_err(F2, "DELETE", "/v1/quotas/org/nope", NULL, NULL, 404, "not_found",
             NULL);
    http_err(F1, "GET", "/v2/everything", NULL, NULL, 404, "not_found", NULL);
    http_err(F1, "GET", "/", NULL, NULL, 404, "not_found", NULL);
    http_err(F2, "PUT", "/v1/quotas/org/b", NULL,
             "{\"guaranteed\": {\"vcores\": 100}}", 422, "validation_failed",
             "vcores");
    http_err(F2, "DELETE", "/v1/quotas/org", NULL, NULL, 422,
             "validation_failed", "children");
    http_err(F2, "PUT", "/v1/quotas/x/y", NULL, "{\"rate\": 1}", 404,
             "not_found", "x");
    snprintf(target, sizeof target, "/v1/quotas/org/b?if_version=%lld",
             (long long)v_org);
    http_err(F2, "DELETE", target, NULL, NULL, 409, "conflict", NULL);
    http_via_f1 += 10;
    ck_assert_uint_eq(catalog_version(L), v_before_errors);

    /* Keep-alive: two requests on one connection, both answered, and the
     * connection stays usable. */
    struct hconn c;
    hc_open(&c, F2);
    struct hresp hr;
    ck_assert_int_eq(
        hc_send(&c, "GET", "/v1/quotas/org/b", NULL, NULL, 0, false), 0);
    ck_assert_int_eq(hc_read_response(&c, &hr, HTTP_WAIT_MS), 0);
    ck_assert_int_eq(hr.status, 200);
    hresp_free(&hr);
    ck_assert_int_eq(
        hc_send(&c, "GET", "/v1/quotas/none", NULL, NULL, 0, false), 0);
    ck_assert_int_eq(hc_read_response(&c, &hr, HTTP_WAIT_MS), 0);
    ck_assert_int_eq(hr.status, 404);
    hresp_free(&hr);
    ck_assert_int_eq(hc_send(&c, "PUT", "/v1/quotas/org/b", NULL,
                             "{\"max_apps\": 2}", 15, false),
                     0);
    ck_assert_int_eq(hc_read_response(&c, &hr, HTTP_WAIT_MS), 0);
    ck_assert_int_eq(hr.status, 200);
    hresp_free(&hr);
    hc_close(&c);

    /* A body of exactly 1 MiB is accepted (JSON padded with spaces). */
    char *big = malloc(BODY_MAX + 2);
    ck_assert_ptr_nonnull(big);
    static const char tail[] = "\"max_apps\": 3}";
    memset(big, ' ', BODY_MAX + 1);
    big[0] = '{';
    memcpy(big + BODY_MAX - (sizeof tail - 1), tail, sizeof tail - 1);
    big[BODY_MAX] = '\0';
    ck_assert_uint_eq(strlen(big), BODY_MAX);
    json_t *ob = http_ok(F1, "PUT", "/v1/quotas/org/b", NULL, big);
    sets_via_f1++;
    http_via_f1++;
    ck_assert_int_eq(json_int_at(ob, "max_apps"), 3);
    json_decref(ob);

    /* Recursive removal: DELETE with recursive=true. */
    json_t *rm =
        http_ok(F2, "DELETE", "/v1/quotas/org?recursive=true", NULL, NULL);
    ck_assert_int_eq(json_int_at(rm, "removed"), 4);
    ck_assert_str_eq(json_str_at(rm, "path"), "org");
    json_decref(rm);
    http_err(F1, "GET", "/v1/quotas/org/api", NULL, NULL, 404, "not_found",
             NULL);
    http_via_f1++;

    /* Metrics on the follower the requests went through, and on the
     * leader: promtool accepts both, and the counters saw the requests. */
    char *m_after = metrics_of(F1);
    check_metrics_counted(F1, m_before, m_after, sets_via_f1, http_via_f1);
    ck_assert_msg(
        metric_value(m_after, "allot_raft_state{state=\"follower\"}") == 1,
        "node %u does not say it is a follower", F1);
    ck_assert_msg(metric_value(m_after, "allot_requests_total{op=\"quota.set\","
                                        "result=\"conflict\"}") >= 1,
                  "conflicts not counted on node %u", F1);
    assert_promtool_passes(m_after, "metrics-follower");
    char *m_leader = metrics_of(L);
    ck_assert_msg(
        metric_value(m_leader, "allot_raft_state{state=\"leader\"}") == 1,
        "node %u does not say it leads", L);
    ck_assert_msg(metric_value(m_leader, "allot_leader_ready") == 1,
                  "leader not ready in its metrics");
    ck_assert_msg(metric_value(m_leader, "allot_catalog_version") ==
                      (double)catalog_version(L),
                  "allot_catalog_version differs from cluster status");
    ck_assert_msg(metric_value(m_leader,
                               "allot_requests_total{op=\"quota.set\","
                               "result=\"validation_failed\"}") >= 1,
                  "validation failures not counted on the leader");
    ck_assert_msg(metric_value(m_leader, "allot_validation_rejections_total") >=
                      1,
                  "allot_validation_rejections_total did not count");
    ck_assert_msg(metric_value(m_leader,
                               "allot_request_duration_seconds_count{op="
                               "\"quota.set\"}") >= 1,
                  "no quota.set latency histogram on the leader");
    assert_promtool_passes(m_leader, "metrics-leader");
    free(m_before);
    free(m_after);
    free(m_leader);

    /* One byte more: 413, and the server closes the connection (after
     * reading the whole body, so no reset can swallow the answer). */
    uint64_t v_big = catalog_version(L);
    memcpy(big + BODY_MAX + 1 - (sizeof tail - 1), tail, sizeof tail - 1);
    big[BODY_MAX - (sizeof tail - 1)] = ' ';
    big[BODY_MAX + 1] = '\0';
    ck_assert_uint_eq(strlen(big), BODY_MAX + 1);
    hc_open(&c, F1);
    int sent =
        hc_send(&c, "PUT", "/v1/quotas/org/b", NULL, big, BODY_MAX + 1, false);
    int rr = hc_read_response(&c, &hr, HTTP_WAIT_MS);
    ck_assert_msg(rr == 0,
                  "no whole response to a body over 1 MiB (send %d, "
                  "read %d)",
                  sent, rr);
    harness_log("PUT with a body of 1 MiB + 1 -> %d %s", hr.status, hr.body);
    char conn_hdr[64] = "";
    hresp_header(&hr, "Connection", conn_hdr, sizeof conn_hdr);
    bool closed = hc_closed(&c);
    ck_assert_msg(hr.status == 413,
                  "a body over 1 MiB: status %d, want 413 (%s; Connection: "
                  "%s; closed by the server: %s)",
                  hr.status, oneline(hr.body), conn_hdr, closed ? "yes" : "no");
    json_t *ej = parse_json(hr.body);
    ck_assert_str_eq(json_str_at(ej, "error"), "too_big");
    json_decref(ej);
    ck_assert_msg(strcasecmp(conn_hdr, "close") == 0,
                  "413 without Connection: close: %s", hr.head);
    hresp_free(&hr);
    ck_assert_msg(closed, "the server kept the connection open after 413");
    hc_close(&c);
    free(big);
    ck_assert_uint_eq(catalog_version(L), v_big);
    harness_end();
}
END_TEST

/* =========================================================================
 * tokens
 * ========================================================================= */

/* token create as `who` (identity file) for principal with ttl: the token
 * and its id. */
static void token_create(const char *who, const char *principal,
                         const char *ttl, char *token, size_t tsize, char *id,
                         size_t isize)
{
    struct harness_ctl r;
    AS_OK(&r, NULL, who, "-o", "json", "token", "create", "--principal",
          principal, "--ttl", ttl);
    json_t *j = parse_json(r.out);
    snprintf(token, tsize, "%s", json_str_at(j, "token"));
    snprintf(id, isize, "%s", json_str_at(j, "id"));
    ck_assert_str_eq(json_str_at(j, "principal"), principal);
    ck_assert_msg(strncmp(token, "allot_", 6) == 0 && strlen(token) == 70,
                  "token %s", token);
    ck_assert_uint_eq(strlen(id), 16);
    json_decref(j);
    harness_ctl_free(&r);
}

static void bearer(char *out, size_t size, const char *token)
{
    snprintf(out, size, "Authorization: Bearer %s\r\n", token);
}

START_TEST(test_tokens)
{
    harness_begin("tokens");
    unsigned L = start_cluster(true, NULL);
    unsigned F = other_node(L, 0);
    struct harness_ctl r;
    AS_OK(&r, NULL, Admin.file, "principal", "add", "alice", "--pubkey",
          Alice.hex);
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Admin.file, "principal", "add", "bob", "--pubkey", Bob.hex);
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Admin.file, "quota", "set", "org", "kind=capacity",
          "guaranteed.vcores=8", "--owner", "user:alice");
    harness_ctl_free(&r);

    /* The admin makes a token for alice; token ls names it, never shows
     * it. */
    char tok[128], id[32], hdr[256];
    token_create(Admin.file, "alice", "1h", tok, sizeof tok, id, sizeof id);
    AS_OK(&r, NULL, Admin.file, "-o", "json", "token", "ls");
    ck_assert_msg(strstr(r.out, id) != NULL, "token ls lacks %s: %s", id,
                  r.out);
    ck_assert_msg(strstr(r.out, tok) == NULL && strstr(r.out, tok + 6) == NULL,
                  "token ls shows the token itself: %s", r.out);
    json_t *ls = parse_json(r.out);
    ck_assert_uint_eq(json_array_size(ls), 1);
    ck_assert_str_eq(json_str_at(json_array_get(ls, 0), "principal"), "alice");
    ck_assert_str_eq(json_str_at(json_array_get(ls, 0), "id"), id);
    json_decref(ls);
    harness_ctl_free(&r);

    /* Bearer over HTTP through a follower: read and write as alice. */
    bearer(hdr, sizeof hdr, tok);
    json_t *q = http_ok(F, "GET", "/v1/quotas/org", hdr, NULL);
    ck_assert_str_eq(json_str_at(q, "path"), "org");
    json_decref(q);
    q = http_ok(F, "PUT", "/v1/quotas/org/a", hdr,
                "{\"guaranteed\": {\"vcores\": 2}}");
    json_decref(q);
    q = http_ok(L, "GET", "/v1/cluster", hdr, NULL);
    json_decref(q);
    /* ... and with allotctl --token (msgpack), through every node. */
    CTL_OK(&r, NULL, "--token", tok, "-o", "json", "quota", "get", "org/a");
    json_t *qa = parse_json(r.out);
    ck_assert_int_eq(json_int_at(json_object_get(qa, "guaranteed"), "vcores"),
                     2);
    json_decref(qa);
    harness_ctl_free(&r);
    CTL_OK(&r, harness_node_client_addr(F), "--token", tok, "quota", "set",
           "org/a", "max_apps=3");
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Admin.file, "-o", "json", "audit", "org/a");
    json_t *au = parse_json(r.out);
    json_t *recs = json_object_get(au, "records");
    ck_assert_uint_eq(json_array_size(recs), 2);
    for (size_t i = 0; i < 2; i++) {
        ck_assert_str_eq(json_str_at(json_array_get(recs, i), "principal"),
                         "alice");
    }
    json_decref(au);
    harness_ctl_free(&r);
    /* ALLOT_TOKEN when --token is not given. */
    setenv("ALLOT_TOKEN", tok, 1);
    CTL_OK(&r, NULL, "-o", "json", "quota", "get", "org/a");
    harness_ctl_free(&r);
    unsetenv("ALLOT_TOKEN");
    /* alice's token does not make her an admin. */
    CTL(&r, NULL, "--token", tok, "capacity", "set", "vcores=100");
    assert_refused(&r, "permission_denied", "alice");
    harness_ctl_free(&r);

    /* Self-service: alice makes her own token, not one for bob. */
    char tok2[128], id2[32];
    token_create(Alice.file, "alice", "2h", tok2, sizeof tok2, id2, sizeof id2);
    AS(&r, NULL, Alice.file, "token", "create", "--principal", "bob");
    assert_refused(&r, "permission_denied", "alice");
    harness_ctl_free(&r);
    /* Nor may she revoke bob's token (which works for bob meanwhile). */
    char tokb[128], idb[32];
    token_create(Admin.file, "bob", "1h", tokb, sizeof tokb, idb, sizeof idb);
    AS(&r, NULL, Alice.file, "token", "revoke", idb);
    assert_refused(&r, "permission_denied", "alice");
    harness_ctl_free(&r);
    bearer(hdr, sizeof hdr, tokb);
    q = http_ok(L, "GET", "/v1/quotas/org", hdr, NULL);
    json_decref(q);

    /* Unknown, malformed and missing credentials. */
    http_err(F, "GET", "/v1/quotas/org", NULL, NULL, 401, "unauthenticated",
             NULL);
    http_err(F, "GET", "/v1/quotas/org",
             "Authorization: Bearer allot_"
             "00000000000000000000000000000000000000000000000000000000000000"
             "00\r\n",
             NULL, 401, "unauthenticated", "token");
    http_err(L, "PUT", "/v1/quotas/org/a", "Authorization: Bearer nope\r\n",
             "{\"max_apps\": 9}", 401, "unauthenticated", NULL);
    http_err(F, "GET", "/v1/quotas/org",
             "Authorization: Basic YWxpY2U6eA==\r\n", NULL, 401,
             "unauthenticated", "Bearer");
    http_err(F, "GET", "/v1/quotas/org", "Authorization: Bearer \r\n", NULL,
             401, "unauthenticated", NULL);
    CTL(&r, NULL, "--token", "allot_123", "quota", "get", "org");
    assert_refused(&r, "unauthenticated", "token");
    harness_ctl_free(&r);

    /* Revoked (by alice, her own admin-made token): 401 everywhere. */
    AS_OK(&r, NULL, Alice.file, "token", "revoke", id);
    harness_ctl_free(&r);
    bearer(hdr, sizeof hdr, tok);
    http_err(F, "GET", "/v1/quotas/org", hdr, NULL, 401, "unauthenticated",
             "revoked");
    http_err(L, "PUT", "/v1/quotas/org/a", hdr, "{\"max_apps\": 4}", 401,
             "unauthenticated", NULL);
    CTL(&r, NULL, "--token", tok, "quota", "get", "org");
    assert_refused(&r, "unauthenticated", NULL);
    harness_ctl_free(&r);
    /* Her other token still works. */
    bearer(hdr, sizeof hdr, tok2);
    q = http_ok(F, "GET", "/v1/quotas/org/a", hdr, NULL);
    ck_assert_int_eq(json_int_at(q, "max_apps"), 3);
    json_decref(q);

    /* The principal removed: its token no longer authenticates. */
    AS_OK(&r, NULL, Admin.file, "principal", "rm", "bob");
    harness_ctl_free(&r);
    bearer(hdr, sizeof hdr, tokb);
    http_err(L, "GET", "/v1/quotas/org", hdr, NULL, 401, "unauthenticated",
             "bob");

    /* An expired token: poll (bounded) until its expiry passes. */
    char toke[128], ide[32];
    token_create(Admin.file, "alice", "1s", toke, sizeof toke, ide, sizeof ide);
    bearer(hdr, sizeof hdr, toke);
    bool expired = false;
    for (int i = 0; i < 150 && !expired; i++) {
        struct hresp hr;
        int st = http_req(F, "GET", "/v1/quotas/org", hdr, NULL, &hr);
        if (st == 401) {
            ck_assert_msg(strstr(hr.body, "expired") != NULL, "%s", hr.body);
            expired = true;
        } else {
            ck_assert_int_eq(st, 200);
            harness_sleep_ms(200);
        }
        hresp_free(&hr);
    }
    ck_assert_msg(expired, "a 1 s token still works 30 s later");
    CTL(&r, NULL, "--token", toke, "quota", "get", "org");
    assert_refused(&r, "unauthenticated", "expired");
    harness_ctl_free(&r);

    /* Validators are admin work, also for an owner. */
    AS(&r, NULL, Alice.file, "validator", "add", "v", "--prefix", "org",
       "--exec", "true");
    assert_refused(&r, "permission_denied", "alice");
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Admin.file, "validator", "add", "v", "--prefix", "org",
          "--exec", "true", "--timeout-ms", "5000");
    harness_ctl_free(&r);
    AS(&r, NULL, Alice.file, "validator", "rm", "v");
    assert_refused(&r, "permission_denied", "alice");
    harness_ctl_free(&r);
    harness_end();
}
END_TEST

/* =========================================================================
 * http_signed
 * ========================================================================= */

START_TEST(test_http_signed)
{
    harness_begin("http_signed");
    unsigned L = start_cluster(true, NULL);
    unsigned F = other_node(L, 0);
    struct harness_ctl r;
    AS_OK(&r, NULL, Admin.file, "principal", "add", "alice", "--pubkey",
          Alice.hex);
    harness_ctl_free(&r);
    AS_OK(&r, NULL, Admin.file, "quota", "set", "org", "kind=capacity",
          "guaranteed.vcores=8", "--owner", "user:alice");
    harness_ctl_free(&r);
    char hdr[1024];

    /* Refused: signed by a key that is not the principal's (bob is
     * unknown; alice's name with bob's key), for another target, over
     * another body, too far from the server's clock, incomplete. */
    sign_headers(&Bob.id, "GET", "/v1/quotas/org", NULL, 0, hdr, sizeof hdr);
    http_err(F, "GET", "/v1/quotas/org", hdr, NULL, 401, "unauthenticated",
             "bob");
    struct auth_identity forged = Bob.id;
    snprintf(forged.name, sizeof forged.name, "alice");
    sign_headers(&forged, "GET", "/v1/quotas/org", NULL, 0, hdr, sizeof hdr);
    http_err(L, "GET", "/v1/quotas/org", hdr, NULL, 401, "unauthenticated",
             NULL);
    sign_headers(&Alice.id, "GET", "/v1/quotas/other", NULL, 0, hdr,
                 sizeof hdr);
    http_err(L, "GET", "/v1/quotas/org", hdr, NULL, 401, "unauthenticated",
             NULL);
    sign_headers(&Alice.id, "PUT", "/v1/quotas/org/s", "{\"max_apps\": 1}", 0,
                 hdr, sizeof hdr);
    http_err(L, "PUT", "/v1/quotas/org/s", hdr, "{\"max_apps\": 2}", 401,
             "unauthenticated", NULL);
    sign_headers(&Alice.id, "GET", "/v1/quotas/org", NULL, -600000, hdr,
                 sizeof hdr);
    http_err(F, "GET", "/v1/quotas/org", hdr, NULL, 401, "unauthenticated",
             "clock");
    http_err(F, "GET", "/v1/quotas/org", "X-Allot-Principal: alice\r\n", NULL,
             401, "unauthenticated", "X-Allot-Signature");
    http_err(F, "GET", "/v1/quotas/org", NULL, NULL, 401, "unauthenticated",
             NULL);

    /* Accepted: a signed read through a follower and on the leader. */
    sign_headers(&Alice.id, "GET", "/v1/quotas/org", NULL, 0, hdr, sizeof hdr);
    json_t *q = http_ok(F, "GET", "/v1/quotas/org", hdr, NULL);
    ck_assert_str_eq(json_str_at(q, "path"), "org");
    json_decref(q);
    /* The same headers again (a replay): refused. */
    http_err(F, "GET", "/v1/quotas/org", hdr, NULL, 401, "unauthenticated",
             "replay");
    /* A signed write with a query, through a follower, then on the
     * leader; audited as alice. */
    static const char body[] = "{\"kind\": \"capacity\", \"guaranteed\": "
                               "{\"vcores\": 1}}";
    sign_headers(&Alice.id, "PUT", "/v1/quotas/org/s?if_version=0", body, 0,
                 hdr, sizeof hdr);
    q = http_ok(F, "PUT", "/v1/quotas/org/s?if_version=0", hdr, body);
    json_int_t v = json_int_at(q, "version");
    json_decref(q);
    http_err(F, "PUT", "/v1/quotas/org/s?if_version=0", hdr, body, 401,
             "unauthenticated", "replay");
    static const char body2[] = "{\"max_apps\": 5}";
    sign_headers(&Alice.id, "PUT", "/v1/quotas/org/s", body2, 0, hdr,
                 sizeof hdr);
    q = http_ok(L, "PUT", "/v1/quotas/org/s", hdr, body2);
    ck_assert_int_eq(json_int_at(q, "max_apps"), 5);
    ck_assert_int_gt(json_int_at(q, "version"), v);
    json_decref(q);
    http_err(L, "PUT", "/v1/quotas/org/s", hdr, body2, 401, "unauthenticated",
             "replay");
    AS_OK(&r, NULL, Admin.file, "-o", "json", "audit", "org/s");
    json_t *au = parse_json(r.out);
    json_t *recs = json_object_get(au, "records");
    ck_assert_uint_eq(json_array_size(recs), 2);
    for (size_t i = 0; i < 2; i++) {
        ck_assert_str_eq(json_str_at(json_array_get(recs, i), "principal"),
                         "alice");
    }
    json_decref(au);
    harness_ctl_free(&r);
    harness_end();
}
END_TEST

/* =========================================================================
 * validators_exec
 * ========================================================================= */

/* The (op, path) of every audit record under prefix, "op path;" each. */
static const char *audit_ops(const char *prefix, char *buf, size_t size)
{
    json_t *au = CTL_JSON(NULL, "audit", prefix);
    json_t *recs = json_object_get(au, "records");
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < json_array_size(recs); i++) {
        json_t *rec = json_array_get(recs, i);
        int w = snprintf(buf + off, size - off, "%s %s;",
                         json_str_at(rec, "op"), json_str_at(rec, "path"));
        off += w > 0 ? (size_t)w : 0;
    }
    json_decref(au);
    return buf;
}

START_TEST(test_validators_exec)
{
    harness_begin("validators_exec");
    unsigned L = start_cluster(false, NULL);
    unsigned F = other_node(L, 0);
    struct harness_ctl r;
    CTL_OK(&r, NULL, "quota", "set", "org", "kind=capacity",
           "guaranteed.memory_mb=4000", "guaranteed.vcores=8");
    harness_ctl_free(&r);

    /* capcheck: vetoes a change that would leave guaranteed.memory_mb over
     * 1000, in its own words; keeps every document it is given. */
    char script[700], log[700];
    dir_path(script, sizeof script, "capcheck.sh");
    dir_path(log, sizeof log, "capcheck.log");
    char text[4096];
    snprintf(
        text, sizeof text,
        "#!/bin/sh\n"
        "doc=$(cat)\n"
        "printf '%%s\\n' \"$doc\" >> '%s'\n"
        "new=${doc#*\\\"new\\\":}\n"
        "mem=$(printf '%%s' \"$new\" | sed -n "
        "'s/^[^}]*\"guaranteed\":{[^}]*\"memory_mb\":\\([0-9]*\\).*/\\1/p')\n"
        "if [ -n \"$mem\" ] && [ \"$mem\" -gt 1000 ]; then\n"
        "  echo \"capcheck: $mem MB asked, at most 1000\"\n"
        "  exit 1\n"
        "fi\n"
        "exit 0\n",
        log);
    write_file(script, text, 0755);
    CTL_OK(&r, NULL, "validator", "add", "capcheck", "--prefix", "org",
           "--exec", script, "--timeout-ms", "20000");
    harness_ctl_free(&r);
    json_t *vl = CTL_JSON(NULL, "validator", "ls");
    ck_assert_uint_eq(json_array_size(vl), 1);
    json_t *v0 = json_array_get(vl, 0);
    ck_assert_str_eq(json_str_at(v0, "name"), "capcheck");
    ck_assert_str_eq(json_str_at(v0, "prefix"), "org");
    ck_assert_str_eq(json_str_at(v0, "kind"), "exec");
    ck_assert_str_eq(json_str_at(v0, "exec"), script);
    ck_assert_int_eq(json_int_at(v0, "timeout_ms"), 20000);
    ck_assert(json_is_false(json_object_get(v0, "fail_open")));
    json_decref(vl);

    CTL_OK(&r, NULL, "quota", "set", "org/a", "guaranteed.memory_mb=500");
    harness_ctl_free(&r);
    CTL(&r, NULL, "quota", "set", "org/b", "guaranteed.memory_mb=1500");
    assert_refused(&r, "validation_failed",
                   "validator capcheck rejected org/b: capcheck: 1500 MB "
                   "asked, at most 1000");
    harness_ctl_free(&r);
    http_err(F, "PUT", "/v1/quotas/org/b", NULL,
             "{\"guaranteed\": {\"memory_mb\": 2000}}", 422,
             "validation_failed",
             "validator capcheck rejected org/b: capcheck: 2000 MB asked");
    CTL(&r, NULL, "quota", "get", "org/b");
    assert_refused(&r, "not_found", NULL);
    harness_ctl_free(&r);
    /* Raising org/a past the limit is vetoed too (the merged "new"). */
    CTL(&r, NULL, "quota", "set", "org/a", "guaranteed.memory_mb=1001");
    assert_refused(&r, "validation_failed", "1001 MB asked");
    harness_ctl_free(&r);
    /* Removal runs the validator ("new": null): accepted. */
    CTL_OK(&r, NULL, "quota", "set", "org/c", "guaranteed.vcores=1");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "quota", "rm", "org/c");
    harness_ctl_free(&r);

    /* The documents capcheck saw. */
    char *seen = slurp(log);
    ck_assert_msg(strstr(seen,
                         "\"operation\":\"quota.set\",\"path\":\"org/b\","
                         "\"principal\":\"anonymous\",\"old\":null") != NULL,
                  "capcheck's documents: %s", seen);
    ck_assert_msg(
        strstr(seen, "\"operation\":\"quota.rm\",\"path\":\"org/c\"") != NULL,
        "no quota.rm document: %s", seen);
    ck_assert_msg(strstr(seen, "\"new\":null") != NULL, "%s", seen);
    for (const char *line = seen; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        ck_assert_ptr_nonnull(nl);
        char *one = strndup(line, (size_t)(nl - line));
        json_t *doc = parse_json(one);
        ck_assert(json_is_object(json_object_get(doc, "old")) ||
                  json_is_null(json_object_get(doc, "old")));
        json_decref(doc);
        free(one);
        line = nl + 1;
    }
    free(seen);

    /* Slow validators: `sleep 5` with 300 ms is no answer: rejected; the
     * same with --fail-open: accepted. A veto rejects even with
     * --fail-open; a validator killed by a signal is no answer. */
    CTL_OK(&r, NULL, "quota", "set", "slow", "kind=rate", "rate=1000");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "validator", "add", "slow", "--prefix", "slow", "--exec",
           "sleep 5", "--timeout-ms", "300");
    harness_ctl_free(&r);
    CTL(&r, NULL, "quota", "set", "slow/x", "kind=rate", "rate=1");
    assert_refused(&r, "validation_failed",
                   "validator slow rejected slow/x: no answer within 300 ms");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "validator", "add", "slowopen", "--prefix", "open",
           "--exec", "sleep 5", "--timeout-ms", "300", "--fail-open");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "quota", "set", "open", "kind=rate", "rate=7");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "validator", "add", "vetoopen", "--prefix", "veto",
           "--exec", "echo 'no way'; exit 3", "--timeout-ms", "20000",
           "--fail-open");
    harness_ctl_free(&r);
    CTL(&r, NULL, "quota", "set", "veto", "kind=rate", "rate=1");
    assert_refused(&r, "validation_failed",
                   "validator vetoopen rejected veto: no way");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "validator", "add", "sig", "--prefix", "sig", "--exec",
           "kill -9 $$", "--timeout-ms", "20000");
    harness_ctl_free(&r);
    CTL(&r, NULL, "quota", "set", "sig", "kind=rate", "rate=1");
    assert_refused(&r, "validation_failed", "validator sig rejected sig");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "validator", "add", "sigopen", "--prefix", "sigo",
           "--exec", "kill -9 $$", "--timeout-ms", "20000", "--fail-open");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "quota", "set", "sigo", "kind=rate", "rate=1");
    harness_ctl_free(&r);

    /* The loop is never blocked: `gate` waits for a file this test creates
     * only after the leader has answered other requests. */
    char started[700], release[700], done[700], gate[700];
    dir_path(started, sizeof started, "gate.started");
    dir_path(release, sizeof release, "gate.release");
    dir_path(done, sizeof done, "gate.done");
    dir_path(gate, sizeof gate, "gate.sh");
    snprintf(text, sizeof text,
             "#!/bin/sh\n"
             "cat > /dev/null\n"
             "touch '%s'\n"
             "i=0\n"
             "while [ ! -f '%s' ] && [ $i -lt 1200 ]; do\n"
             "  sleep 0.05; i=$((i+1))\n"
             "done\n"
             "touch '%s'\n"
             "exit 0\n",
             started, release, done);
    write_file(gate, text, 0755);
    CTL_OK(&r, NULL, "quota", "set", "gate", "kind=rate", "rate=10");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "validator", "add", "gate", "--prefix", "gate", "--exec",
           gate, "--timeout-ms", "60000");
    harness_ctl_free(&r);
    struct harness_bg bg;
    harness_ctl_start(&bg, harness_node_client_addr(L), "quota", "set",
                      "gate/x", "kind=rate", "rate=1", (const char *)NULL);
    ck_assert_msg(wait_file(started), "the gate validator never started");
    /* While it waits: ping, a read by msgpack and one by HTTP, all on the
     * leader, all answered. */
    struct harness_reply rep;
    ck_assert_int_eq(harness_call(L, "ping", NULL, NULL, &rep, 10000), 0);
    harness_reply_destroy(&rep);
    CTL_OK(&r, harness_node_client_addr(L), "quota", "get", "org");
    harness_ctl_free(&r);
    json_t *g = http_ok(L, "GET", "/v1/quotas/gate", NULL, NULL);
    json_decref(g);
    /* The order proves it: these answers came while the validator still
     * waited (it cannot finish before the release file exists) and the
     * write was still pending. */
    ck_assert(!file_exists(done));
    ck_assert_msg(!harness_ctl_done(&bg),
                  "the gated write finished before its validator did");
    write_file(release, "", 0644);
    ck_assert_int_eq(harness_ctl_wait(&bg, HARNESS_CTL_TIMEOUT_MS + 30000, &r),
                     0);
    ck_assert_msg(r.status == 0, "gated write: %d %s", r.status, r.err);
    harness_ctl_free(&r);
    ck_assert(file_exists(done));
    json_t *gx = CTL_JSON(NULL, "quota", "get", "gate/x");
    ck_assert(json_number_value(json_object_get(gx, "rate")) == 1.0);
    json_decref(gx);

    /* The audit trail: every accepted change, none of the rejected ones. */
    char ops[8192];
    ck_assert_str_eq(audit_ops("org", ops, sizeof ops),
                     "quota.set org;validator.add org;quota.set org/a;"
                     "quota.set org/c;quota.rm org/c;");
    ck_assert_str_eq(audit_ops("slow", ops, sizeof ops),
                     "quota.set slow;validator.add slow;");
    ck_assert_str_eq(audit_ops("open", ops, sizeof ops),
                     "validator.add open;quota.set open;");
    ck_assert_str_eq(audit_ops("veto", ops, sizeof ops), "validator.add veto;");
    ck_assert_str_eq(audit_ops("sig", ops, sizeof ops), "validator.add sig;");
    ck_assert_str_eq(audit_ops("gate", ops, sizeof ops),
                     "quota.set gate;validator.add gate;quota.set gate/x;");
    json_t *a = CTL_JSON(NULL, "quota", "get", "org/a");
    ck_assert_int_eq(json_int_at(json_object_get(a, "guaranteed"), "memory_mb"),
                     500);
    json_decref(a);

    /* validator rm: the veto is gone. */
    CTL_OK(&r, NULL, "validator", "rm", "capcheck");
    harness_ctl_free(&r);
    CTL(&r, NULL, "validator", "rm", "capcheck");
    assert_refused(&r, "not_found", "capcheck");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "quota", "set", "org/b", "guaranteed.memory_mb=1500");
    harness_ctl_free(&r);
    vl = CTL_JSON(NULL, "validator", "ls");
    char names[512] = "";
    for (size_t i = 0; i < json_array_size(vl); i++) {
        strcat(names, json_str_at(json_array_get(vl, i), "name"));
        strcat(names, ",");
    }
    ck_assert_str_eq(names, "gate,sig,sigopen,slow,slowopen,vetoopen,");
    json_decref(vl);
    ck_assert_int_eq(harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, NULL), 0);
    harness_end();
}
END_TEST

/* A validator slower than the client's per-attempt wait (3 s in
 * proto/client.c) but well within its own --timeout-ms. */
START_TEST(test_validator_slow)
{
    harness_begin("validator_slow");
    unsigned L = start_cluster(false, NULL);
    (void)L;
    struct harness_ctl r;
    CTL_OK(&r, NULL, "quota", "set", "s4", "kind=rate", "rate=100");
    harness_ctl_free(&r);
    char log[700], cmd[800];
    dir_path(log, sizeof log, "slow.log");
    snprintf(cmd, sizeof cmd, "echo run >> '%s'; sleep 4", log);
    CTL_OK(&r, NULL, "validator", "add", "slow4", "--prefix", "s4", "--exec",
           cmd, "--timeout-ms", "20000");
    harness_ctl_free(&r);
    CTL(&r, NULL, "quota", "set", "s4/x", "kind=rate", "rate=1");
    char *runs = slurp(log);
    unsigned n_runs = (unsigned)(strlen(runs) / strlen("run\n"));
    free(runs);
    struct harness_ctl g;
    CTL(&g, NULL, "quota", "get", "s4/x");
    harness_log("quota set under a 4 s validator (timeout 20 s): exit %d "
                "after %.1f s, %s; the validator ran %u time(s); the quota "
                "%s",
                r.status, r.seconds, r.err, n_runs,
                g.status == 0 ? "exists" : "does not exist");
    ck_assert_msg(r.status == 0,
                  "a write whose validator says yes within its timeout "
                  "failed: %s(the validator ran %u times; the write %s "
                  "applied)",
                  r.err, n_runs, g.status == 0 ? "was" : "was not");
    harness_ctl_free(&r);
    harness_ctl_free(&g);
    json_t *q = CTL_JSON(NULL, "quota", "get", "s4/x");
    json_decref(q);
    harness_end();
}
END_TEST

/* =========================================================================
 * validators_url
 * ========================================================================= */

/* A small HTTP server in a child process: every request is appended to a
 * log file; the path says how to answer. */
struct vserver
{
    pid_t pid;
    uint16_t port;
    char log[700];
};

static void vserver_answer(int fd, const char *log)
{
    char buf[65536];
    size_t len = 0;
    size_t need = 0;
    /* Read the head, then Content-Length bytes of body (bounded). */
    for (int i = 0; i < 1000; i++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) <= 0) {
            return;
        }
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n <= 0) {
            return;
        }
        len += (size_t)n;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end != NULL) {
            const char *cl = strcasestr(buf, "Content-Length:");
            size_t body = cl != NULL ? strtoul(cl + 15, NULL, 10) : 0;
            need = (size_t)(end - buf) + 4 + body;
            if (len >= need || len == sizeof buf - 1) {
                break;
            }
        }
    }
    char path[64] = "";
    sscanf(buf, "%*s %63s", path);
    int lf = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (lf >= 0) {
        char sep[] = "\n=====\n";
        if (write(lf, buf, len) < 0 || write(lf, sep, sizeof sep - 1) < 0) {
            /* nothing to do */
        }
        close(lf);
    }
    const char *status = "200 OK", *body = "fine\n";
    if (strcmp(path, "/deny") == 0) {
        status = "403 Forbidden";
        body = "policy: this prefix needs an approval ticket\n";
    } else if (strcmp(path, "/fail") == 0) {
        status = "500 Internal Server Error";
        body = "database is down\n";
    } else if (strcmp(path, "/garbage") == 0) {
        static const char g[] = "SSH-2.0-OpenSSH_9.2\r\n";
        if (send(fd, g, sizeof g - 1, MSG_NOSIGNAL) < 0) {
            /* the node left */
        }
        return;
    }
    char out[1024];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, strlen(body), body);
    if (send(fd, out, (size_t)n, MSG_NOSIGNAL) < 0) {
        /* the node left */
    }
}

static void vserver_start(struct vserver *s)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(fd, 16), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    s->port = ntohs(sa.sin_port);
    dir_path(s->log, sizeof s->log, "vserver.log");
    fflush(NULL);
    pid_t parent = getpid();
    s->pid = fork();
    ck_assert_int_ge(s->pid, 0);
    if (s->pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) {
            _exit(1);
        }
        signal(SIGPIPE, SIG_IGN);
        for (int served = 0; served < 500; served++) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 600000) <= 0) {
                break;
            }
            int c = accept(fd, NULL, NULL);
            if (c < 0) {
                continue;
            }
            vserver_answer(c, s->log);
            close(c);
        }
        _exit(0);
    }
    close(fd);
    harness_log("validator HTTP server: pid %d on 127.0.0.1:%u", (int)s->pid,
                (unsigned)s->port);
}

static void vserver_stop(struct vserver *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

/* The last request body the server logged for path (owned JSON). */
static json_t *vserver_last_doc(const struct vserver *s, const char *path)
{
    char *log = slurp(s->log);
    char want[128];
    snprintf(want, sizeof want, "POST %s HTTP/1.1\r\n", path);
    char *req = NULL;
    for (char *p = strstr(log, want); p != NULL; p = strstr(p + 1, want)) {
        req = p;
    }
    ck_assert_msg(req != NULL, "the server got no POST %s: %s", path, log);
    ck_assert_msg(strcasestr(req, "Content-Type: application/json") != NULL,
                  "POST %s without Content-Type: application/json", path);
    char *body = strstr(req, "\r\n\r\n");
    ck_assert_ptr_nonnull(body);
    body += 4;
    char *end = strstr(body, "\n=====\n");
    ck_assert_ptr_nonnull(end);
    *end = '\0';
    json_t *j = parse_json(body);
    free(log);
    return j;
}

START_TEST(test_validators_url)
{
    harness_begin("validators_url");
    unsigned L = start_cluster(false, NULL);
    unsigned F = other_node(L, 0);
    struct vserver vs;
    vserver_start(&vs);
    char url[128], closed_url[128];
    struct harness_ctl r;
    uint16_t closed_port = harness_free_port();
    snprintf(closed_url, sizeof closed_url, "http://127.0.0.1:%u/x",
             (unsigned)closed_port);

    /* 403 with a body: the body is the message, to allotctl and HTTP. */
    snprintf(url, sizeof url, "http://127.0.0.1:%u/deny", (unsigned)vs.port);
    CTL_OK(&r, NULL, "validator", "add", "deny", "--prefix", "deny", "--url",
           url, "--timeout-ms", "20000");
    harness_ctl_free(&r);
    CTL(&r, NULL, "quota", "set", "deny", "kind=rate", "rate=10");
    assert_refused(&r, "validation_failed",
                   "validator deny rejected deny: policy: this prefix needs "
                   "an approval ticket");
    harness_ctl_free(&r);
    http_err(F, "PUT", "/v1/quotas/deny", NULL, "{\"rate\": 10}", 422,
             "validation_failed",
             "validator deny rejected deny: policy: this prefix needs an "
             "approval ticket");
    /* A veto with --fail-open still rejects. */
    CTL_OK(&r, NULL, "validator", "add", "denyopen", "--prefix", "dopen",
           "--url", url, "--timeout-ms", "20000", "--fail-open");
    harness_ctl_free(&r);
    CTL(&r, NULL, "quota", "set", "dopen", "kind=rate", "rate=10");
    assert_refused(&r, "validation_failed", "approval ticket");
    harness_ctl_free(&r);

    /* 2xx accepts; the POST carries the change document. */
    snprintf(url, sizeof url, "http://127.0.0.1:%u/ok", (unsigned)vs.port);
    CTL_OK(&r, NULL, "validator", "add", "ok", "--prefix", "okp", "--url", url,
           "--timeout-ms", "20000");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "quota", "set", "okp", "kind=rate", "rate=10");
    harness_ctl_free(&r);
    json_t *doc = vserver_last_doc(&vs, "/ok");
    ck_assert_str_eq(json_str_at(doc, "operation"), "quota.set");
    ck_assert_str_eq(json_str_at(doc, "path"), "okp");
    ck_assert_str_eq(json_str_at(doc, "principal"), "anonymous");
    ck_assert(json_is_null(json_object_get(doc, "old")));
    json_t *nw = json_object_get(doc, "new");
    ck_assert_str_eq(json_str_at(nw, "kind"), "rate");
    ck_assert(json_number_value(json_object_get(nw, "rate")) == 10.0);
    json_decref(doc);
    CTL_OK(&r, NULL, "quota", "set", "okp", "rate=20");
    harness_ctl_free(&r);
    doc = vserver_last_doc(&vs, "/ok");
    ck_assert(json_number_value(json_object_get(json_object_get(doc, "old"),
                                                "rate")) == 10.0);
    ck_assert(json_number_value(json_object_get(json_object_get(doc, "new"),
                                                "rate")) == 20.0);
    json_decref(doc);

    /* No answer: HTTP 5xx, a refused connection, something not HTTP.
     * Rejected; with --fail-open, accepted. */
    static const char *const kinds[] = {"fail", "closed", "garbage"};
    for (unsigned i = 0; i < 3; i++) {
        char name[32], open_name[32], prefix[32], open_prefix[32];
        snprintf(name, sizeof name, "%s", kinds[i]);
        snprintf(open_name, sizeof open_name, "%sopen", kinds[i]);
        snprintf(prefix, sizeof prefix, "p%s", kinds[i]);
        snprintf(open_prefix, sizeof open_prefix, "p%sopen", kinds[i]);
        if (i == 1) {
            snprintf(url, sizeof url, "%s", closed_url);
        } else {
            snprintf(url, sizeof url, "http://127.0.0.1:%u/%s",
                     (unsigned)vs.port, kinds[i]);
        }
        CTL_OK(&r, NULL, "validator", "add", name, "--prefix", prefix, "--url",
               url, "--timeout-ms", "20000");
        harness_ctl_free(&r);
        CTL_OK(&r, NULL, "validator", "add", open_name, "--prefix", open_prefix,
               "--url", url, "--timeout-ms", "20000", "--fail-open");
        harness_ctl_free(&r);
        char want[128];
        snprintf(want, sizeof want, "validator %s rejected %s: ", name, prefix);
        CTL(&r, NULL, "quota", "set", prefix, "kind=rate", "rate=1");
        assert_refused(&r, "validation_failed", want);
        harness_ctl_free(&r);
        CTL_OK(&r, NULL, "quota", "set", open_prefix, "kind=rate", "rate=1");
        harness_ctl_free(&r);
    }

    /* The audit trail holds the accepted changes only. */
    char ops[4096];
    ck_assert_str_eq(audit_ops("deny", ops, sizeof ops), "validator.add deny;");
    ck_assert_str_eq(audit_ops("okp", ops, sizeof ops),
                     "validator.add okp;quota.set okp;quota.set okp;");
    for (unsigned i = 0; i < 3; i++) {
        char prefix[32], want[128];
        snprintf(prefix, sizeof prefix, "p%s", kinds[i]);
        snprintf(want, sizeof want, "validator.add %s;", prefix);
        ck_assert_str_eq(audit_ops(prefix, ops, sizeof ops), want);
        snprintf(prefix, sizeof prefix, "p%sopen", kinds[i]);
        snprintf(want, sizeof want, "validator.add %s;quota.set %s;", prefix,
                 prefix);
        ck_assert_str_eq(audit_ops(prefix, ops, sizeof ops), want);
    }

    /* "new" is what the change would leave: labels included. */
    CTL_OK(&r, NULL, "quota", "set", "okp", "labels.team=ads");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "quota", "set", "okp", "labels.env=prod", "rate=30");
    harness_ctl_free(&r);
    doc = vserver_last_doc(&vs, "/ok");
    json_t *want_old = parse_json("{\"team\": \"ads\"}");
    json_t *want_new = parse_json("{\"env\": \"prod\", \"team\": \"ads\"}");
    assert_json_equal(json_object_get(json_object_get(doc, "old"), "labels"),
                      want_old, "the change document's old labels");
    assert_json_equal(json_object_get(json_object_get(doc, "new"), "labels"),
                      want_new,
                      "the change document's new labels (what the change "
                      "leaves)");
    json_decref(want_old);
    json_decref(want_new);
    json_decref(doc);
    vserver_stop(&vs);
    harness_end();
}
END_TEST

/* =========================================================================
 * watch
 * ========================================================================= */

/* Lines of text as JSON documents (an array, owned). */
static json_t *json_lines(const char *text)
{
    json_t *all = json_array();
    for (const char *line = text; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        size_t len = nl != NULL ? (size_t)(nl - line) : strlen(line);
        if (len > 0) {
            char *one = strndup(line, len);
            json_array_append_new(all, parse_json(one));
            free(one);
        }
        line += len + (nl != NULL);
    }
    return all;
}

static unsigned count_lines(const char *text)
{
    unsigned n = 0;
    for (const char *p = text; *p != '\0'; p++) {
        n += *p == '\n';
    }
    return n;
}

/* Audit records under prefix with version > after (owned array). */
static json_t *audit_after(const char *eps, const char *prefix,
                           json_int_t after)
{
    json_t *au = CTL_JSON(eps, "audit", prefix);
    json_t *out = json_array();
    json_t *recs = json_object_get(au, "records");
    for (size_t i = 0; i < json_array_size(recs); i++) {
        json_t *rec = json_array_get(recs, i);
        if (json_int_at(rec, "version") > after) {
            json_array_append(out, rec);
        }
    }
    json_decref(au);
    return out;
}

/* The next NDJSON document of an HTTP watch stream (owned); NULL when the
 * stream ended (last chunk). Fails on a timeout or a closed connection. */
static json_t *watch_next(struct hconn *c)
{
    char *data;
    size_t len;
    int k = hc_read_chunk(c, &data, &len, HTTP_WAIT_MS);
    ck_assert_msg(k >= 0, "watch stream: %s",
                  k == -1 ? "nothing within the bound" : "connection closed");
    if (k == 0) {
        free(data);
        return NULL;
    }
    ck_assert_msg(len > 0 && data[len - 1] == '\n',
                  "a watch chunk is not one line: %s", data);
    json_t *j = parse_json(data);
    free(data);
    return j;
}

static void watch_open(struct hconn *c, unsigned node, const char *target)
{
    hc_open(c, node);
    ck_assert_int_eq(hc_send(c, "GET", target, NULL, NULL, 0, false), 0);
    struct hresp h;
    memset(&h, 0, sizeof h);
    ck_assert_int_eq(hc_read_head(c, &h, harness_now() + HTTP_WAIT_MS / 1000.0),
                     0);
    ck_assert_msg(h.status == 200, "watch: %s", h.head);
    char v[64];
    ck_assert(hresp_header(&h, "Transfer-Encoding", v, sizeof v) &&
              strcasecmp(v, "chunked") == 0);
    ck_assert(hresp_header(&h, "Content-Type", v, sizeof v) &&
              strcmp(v, "application/x-ndjson") == 0);
}

START_TEST(test_watch)
{
    harness_begin("watch");
    unsigned L = start_cluster(false, NULL);
    unsigned F = other_node(L, 0);
    struct harness_ctl r;
    CTL_OK(&r, NULL, "quota", "set", "w", "kind=rate", "rate=1000000");
    harness_ctl_free(&r);
    CTL_OK(&r, NULL, "quota", "set", "other", "kind=rate", "rate=5");
    harness_ctl_free(&r);
    ck_assert_int_eq(harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, NULL), 0);
    uint64_t v0 = catalog_version(L);
    char v0s[32];
    snprintf(v0s, sizeof v0s, "%" PRIu64, v0);

    /* An HTTP watch on a follower, from v0. */
    struct hconn hw;
    char target[128];
    snprintf(target, sizeof target, "/v1/watch?prefix=w&from_version=%s", v0s);
    watch_open(&hw, F, target);
    json_t *first = watch_next(&hw);
    ck_assert_str_eq(json_str_at(first, "watch"), "w");
    ck_assert_int_eq(json_int_at(first, "version"), (json_int_t)v0);
    json_decref(first);

    /* allotctl's watch reads from the leader first (it is listed first). */
    char eps[256];
    unsigned F2 = other_node(L, F);
    snprintf(eps, sizeof eps, "%s,%s,%s", harness_node_client_addr(L),
             harness_node_client_addr(F), harness_node_client_addr(F2));
    enum { N = 20, BEFORE_KILL = 8 };
    char ns[8];
    snprintf(ns, sizeof ns, "%d", N);
    struct harness_bg bg;
    harness_ctl_start(&bg, eps, "-o", "json", "quota", "watch", "w",
                      "--from-version", v0s, "--count", ns, (const char *)NULL);
    for (int i = 1; i <= BEFORE_KILL; i++) {
        char path[32], rate[32];
        snprintf(path, sizeof path, "w/k%d", i % 5);
        snprintf(rate, sizeof rate, "rate=%d", i);
        CTL_OK(&r, NULL, "quota", "set", path, "kind=rate", rate);
        harness_ctl_free(&r);
        /* Something unrelated in between: the watcher skips it. */
        CTL_OK(&r, NULL, "quota", "set", "other", rate);
        harness_ctl_free(&r);
    }
    /* Mid-stream: the watcher has seen changes, not all of them. */
    unsigned seen = 0;
    for (int round = 0; round < HARNESS_CONVERGE_WAIT_MS / 50; round++) {
        char *out = harness_ctl_out_now(&bg);
        seen = count_lines(out);
        free(out);
        if (seen >= BEFORE_KILL || harness_ctl_done(&bg)) {
            break;
        }
        harness_sleep_ms(50);
    }
    ck_assert_msg(seen == BEFORE_KILL, "the watcher saw %u changes, want %d",
                  seen, BEFORE_KILL);
    ck_assert(!harness_ctl_done(&bg));
    harness_node_kill(L, SIGKILL);
    int status;
    ck_assert_int_eq(harness_wait_exit(L, &status), 0);
    unsigned L2 = harness_wait_leader(HARNESS_LEADER_WAIT_MS);
    ck_assert_msg(L2 != 0 && L2 != L, "no new leader");
    const char *rest = harness_endpoints(0);
    char rest_eps[256];
    snprintf(rest_eps, sizeof rest_eps, "%s", rest);
    for (int i = BEFORE_KILL + 1; i <= N; i++) {
        char path[32], rate[32];
        snprintf(path, sizeof path, "w/k%d", i % 5);
        snprintf(rate, sizeof rate, "rate=%d", i);
        if (i == N) {
            /* The last change a removal. */
            CTL_OK(&r, rest_eps, "quota", "rm", "w/k0");
        } else {
            CTL_OK(&r, rest_eps, "quota", "set", path, "kind=rate", rate);
        }
        harness_ctl_free(&r);
    }
    ck_assert_msg(harness_ctl_wait(&bg, HARNESS_CONVERGE_WAIT_MS, &r) == 0,
                  "the watcher did not finish its %d changes", N);
    ck_assert_msg(r.status == 0, "watch exited %d: %s", r.status, r.err);
    json_t *got = json_lines(r.out);
    harness_ctl_free(&r);
    json_t *want = audit_after(rest_eps, "w", (json_int_t)v0);
    ck_assert_uint_eq(json_array_size(want), N);
    ck_assert_msg(json_array_size(got) == N,
                  "the watcher printed %zu "
                  "changes, want %d",
                  json_array_size(got), N);
    json_int_t prev = (json_int_t)v0;
    for (size_t i = 0; i < N; i++) {
        json_t *g = json_array_get(got, i);
        json_int_t v = json_int_at(g, "version");
        ck_assert_msg(v > prev,
                      "watch versions out of order or repeated: "
                      "%lld after %lld",
                      (long long)v, (long long)prev);
        prev = v;
        assert_json_equal(g, json_array_get(want, i),
                          "a watched change and its audit record");
    }
    ck_assert_str_eq(json_str_at(json_array_get(got, N - 1), "op"), "quota.rm");
    json_decref(got);

    /* The HTTP watch on the follower saw the same records, in order (F is
     * not the node that died). */
    if (F != L) {
        for (size_t i = 0; i < N; i++) {
            json_t *g = watch_next(&hw);
            ck_assert_msg(g != NULL, "the HTTP watch ended after %zu", i);
            assert_json_equal(g, json_array_get(want, i),
                              "an HTTP-watched change and its audit record");
            json_decref(g);
        }
    }
    json_decref(want);

    /* History dropped by the audit retention: watching from v0 is
     * not_found; a recent version still works; the live watcher goes on. */
    CTL_OK(&r, rest_eps, "audit-retention", "max_records=3");
    harness_ctl_free(&r);
    for (int i = 0; i < 5; i++) {
        char rate[32];
        snprintf(rate, sizeof rate, "rate=%d", 100 + i);
        CTL_OK(&r, rest_eps, "quota", "set", "w/k1", rate);
        harness_ctl_free(&r);
    }
    CTL(&r, rest_eps, "quota", "watch", "w", "--from-version", v0s);
    assert_refused(&r, "not_found", "no longer kept");
    harness_ctl_free(&r);
    for (int i = 0; i < 5; i++) {
        json_t *g = watch_next(&hw);
        ck_assert_ptr_nonnull(g);
        ck_assert_str_eq(json_str_at(g, "path"), "w/k1");
        json_decref(g);
    }
    hc_close(&hw);
    watch_open(&hw, F, target);
    first = watch_next(&hw);
    ck_assert_int_eq(json_int_at(first, "version"), (json_int_t)v0);
    json_decref(first);
    json_t *err = watch_next(&hw);
    ck_assert_msg(err != NULL, "the stream ended without saying why");
    ck_assert_str_eq(json_str_at(err, "error"), "not_found");
    ck_assert(strstr(json_str_at(err, "message"), "no longer kept") != NULL);
    json_decref(err);
    ck_assert_msg(watch_next(&hw) == NULL, "the stream goes on after its "
                                           "error");
    hc_close(&hw);
    uint64_t now = catalog_version(L2);
    char from[32];
    snprintf(from, sizeof from, "%" PRIu64, now - 1);
    CTL_OK(&r, rest_eps, "-o", "json", "quota", "watch", "w", "--from-version",
           from, "--count", "1");
    json_t *one = json_lines(r.out);
    ck_assert_uint_eq(json_array_size(one), 1);
    ck_assert_int_eq(json_int_at(json_array_get(one, 0), "version"),
                     (json_int_t)now);
    json_decref(one);
    harness_ctl_free(&r);
    harness_end();
}
END_TEST

/* =========================================================================
 * group_commit
 * ========================================================================= */

struct gc_req
{
    char path[32];
    unsigned rate;
};

struct gc_conn
{
    struct gc_req *reqs; /* by id - 1 */
    unsigned n;
    uint64_t *versions; /* by id - 1, 0 until answered */
    unsigned answered;
    unsigned errors;
    char first_error[512];
};

static void gc_on_reply(void *arg, const struct harness_reply *rep)
{
    struct gc_conn *g = arg;
    if (rep->id == 0 || rep->id > g->n) {
        g->errors++;
        return;
    }
    if (!rep->ok) {
        if (g->errors++ == 0) {
            snprintf(g->first_error, sizeof g->first_error, "%s: %s",
                     rep->error, rep->message);
        }
        return;
    }
    char msg[ALLOT_ERRMSG_SIZE];
    uint64_t v = 0;
    if (wire_get_u64(rep->result, "version", true, &v, msg) != 0) {
        g->errors++;
        return;
    }
    g->versions[rep->id - 1] = v;
    g->answered++;
}

/* Frames for every request of g, from client `client` (seq = id). */
static void gc_frames(const struct gc_conn *g, uint64_t client,
                      msgpack_sbuffer *all)
{
    msgpack_sbuffer_init(all);
    for (unsigned i = 0; i < g->n; i++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        wire_frame_start(&sb, &pk);
        msgpack_pack_map(&pk, 6);
        wire_pack_kv_u64(&pk, "id", i + 1);
        wire_pack_kv_str(&pk, "op", "quota.set");
        wire_pack_kv_u64(&pk, "client", client);
        wire_pack_kv_u64(&pk, "seq", i + 1);
        wire_pack_kv_u64(&pk, "ack", 0);
        wire_pack_str(&pk, "args");
        msgpack_pack_map(&pk, 2);
        wire_pack_kv_str(&pk, "path", g->reqs[i].path);
        wire_pack_str(&pk, "fields");
        msgpack_pack_map(&pk, 2);
        wire_pack_kv_str(&pk, "kind", "rate");
        wire_pack_str(&pk, "rate");
        msgpack_pack_double(&pk, (double)g->reqs[i].rate);
        ck_assert_int_eq(wire_frame_finish(&sb), 0);
        msgpack_sbuffer_write(all, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
}

START_TEST(test_group_commit)
{
    harness_begin("group_commit");
    static const char *const extra[] = {"--max-inflight-entries", "2", NULL};
    unsigned L = start_cluster(false, extra);
    unsigned F = other_node(L, 0);
    struct harness_ctl r;
    CTL_OK(&r, NULL, "quota", "set", "gc", "kind=rate", "rate=100000000");
    harness_ctl_free(&r);
    uint64_t v0 = catalog_version(L);

    enum { NA = 400, NB = 200 };
    struct gc_conn a = {.n = NA}, b = {.n = NB};
    a.reqs = calloc(NA, sizeof *a.reqs);
    b.reqs = calloc(NB, sizeof *b.reqs);
    a.versions = calloc(NA, sizeof *a.versions);
    b.versions = calloc(NB, sizeof *b.versions);
    ck_assert(a.reqs && b.reqs && a.versions && b.versions);
    unsigned last_same = 0;
    for (unsigned i = 0; i < NA; i++) {
        /* Every 10th write goes to one path: the last one must win. */
        if (i % 10 == 3) {
            snprintf(a.reqs[i].path, sizeof a.reqs[i].path, "gc/same");
            last_same = i;
        } else {
            snprintf(a.reqs[i].path, sizeof a.reqs[i].path, "gc/a%u", i);
        }
        a.reqs[i].rate = 1000 + i;
    }
    for (unsigned i = 0; i < NB; i++) {
        snprintf(b.reqs[i].path, sizeof b.reqs[i].path, "gc/b%u", i % 50);
        b.reqs[i].rate = 5000 + i;
    }
    msgpack_sbuffer fa, fb;
    gc_frames(&a, 0x1111222233334444ull, &fa);
    gc_frames(&b, 0x5555666677778888ull, &fb);

    /* Both connections send everything first, then read: the leader sees
     * many writes at once, directly and forwarded. */
    int ca = harness_raw_connect(L);
    int cb = harness_raw_connect(F);
    ck_assert(ca >= 0 && cb >= 0);
    ck_assert_int_eq(harness_raw_send(ca, fa.data, fa.size), 0);
    ck_assert_int_eq(harness_raw_send(cb, fb.data, fb.size), 0);
    bool closed;
    unsigned bad;
    unsigned got = harness_raw_exchange(ca, "", 0, NA, HARNESS_CALL_TIMEOUT_MS,
                                        gc_on_reply, &a, &closed, &bad);
    ck_assert_msg(got == NA && bad == 0 && !closed,
                  "leader connection: %u replies of %d, %u bad, closed %d", got,
                  NA, bad, closed);
    got = harness_raw_exchange(cb, "", 0, NB, HARNESS_CALL_TIMEOUT_MS,
                               gc_on_reply, &b, &closed, &bad);
    ck_assert_msg(got == NB && bad == 0 && !closed,
                  "follower connection: %u replies of %d, %u bad, closed %d",
                  got, NB, bad, closed);
    close(ca);
    close(cb);
    msgpack_sbuffer_destroy(&fa);
    msgpack_sbuffer_destroy(&fb);
    ck_assert_msg(a.errors == 0 && b.errors == 0, "errors: %u %u (%s%s)",
                  a.errors, b.errors, a.first_error, b.first_error);
    ck_assert_uint_eq(a.answered, NA);
    ck_assert_uint_eq(b.answered, NB);

    /* Every write applied exactly once: the versions are v0+1 .. v0+NA+NB,
     * each once; per connection in the order sent. */
    unsigned total = NA + NB;
    unsigned char *seen = calloc(total, 1);
    ck_assert_ptr_nonnull(seen);
    for (unsigned i = 0; i < NA + NB; i++) {
        uint64_t v = i < NA ? a.versions[i] : b.versions[i - NA];
        ck_assert_msg(v > v0 && v <= v0 + total,
                      "version %" PRIu64 " out of range", v);
        ck_assert_msg(!seen[v - v0 - 1], "version %" PRIu64 " twice", v);
        seen[v - v0 - 1] = 1;
    }
    free(seen);
    for (unsigned i = 1; i < NA; i++) {
        ck_assert_msg(a.versions[i] > a.versions[i - 1],
                      "leader connection: write %u applied before write %u", i,
                      i - 1);
    }
    ck_assert_uint_eq(catalog_version(L), v0 + total);

    /* The catalog holds the last write of each path; the audit trail has
     * one record per write with the value it set. */
    json_t *same = CTL_JSON(NULL, "quota", "get", "gc/same");
    ck_assert(json_number_value(json_object_get(same, "rate")) ==
              (double)a.reqs[last_same].rate);
    ck_assert_int_eq(json_int_at(same, "version"),
                     (json_int_t)a.versions[last_same]);
    json_decref(same);
    json_t *au = audit_after(NULL, "gc", (json_int_t)v0);
    ck_assert_uint_eq(json_array_size(au), total);
    for (size_t i = 0; i < json_array_size(au); i++) {
        json_t *rec = json_array_get(au, i);
        uint64_t v = (uint64_t)json_int_at(rec, "version");
        const struct gc_req *want = NULL;
        for (unsigned k = 0; k < NA && want == NULL; k++) {
            want = a.versions[k] == v ? &a.reqs[k] : NULL;
        }
        for (unsigned k = 0; k < NB && want == NULL; k++) {
            want = b.versions[k] == v ? &b.reqs[k] : NULL;
        }
        ck_assert_ptr_nonnull(want);
        ck_assert_str_eq(json_str_at(rec, "path"), want->path);
        ck_assert(json_number_value(
                      json_object_get(json_object_get(rec, "new"), "rate")) ==
                  (double)want->rate);
    }
    json_decref(au);
    json_t *ls = CTL_JSON(NULL, "quota", "ls", "gc");
    ck_assert_uint_eq(json_array_size(json_object_get(ls, "quotas")),
                      1 + (NA - NA / 10) + 1 + 50);
    json_decref(ls);
    ck_assert_int_eq(harness_wait_converged(HARNESS_CONVERGE_WAIT_MS, NULL), 0);
    free(a.reqs);
    free(b.reqs);
    free(a.versions);
    free(b.versions);
    harness_end();
}
END_TEST

static Suite *http_suite(void)
{
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("http");
    tcase_set_timeout(tc, 400);
    tcase_add_test(tc, test_http_api);
    tcase_add_test(tc, test_tokens);
    tcase_add_test(tc, test_http_signed);
    tcase_add_test(tc, test_validators_exec);
    tcase_add_test(tc, test_validator_slow);
    tcase_add_test(tc, test_validators_url);
    tcase_add_test(tc, test_watch);
    tcase_add_test(tc, test_group_commit);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return harness_main(http_suite());
}
