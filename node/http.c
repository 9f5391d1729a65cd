/* http.c - the HTTP/JSON API (--http HOST:PORT).
 *
 * Happy path: http_parser (Debian's libhttp-parser) reads one request; the
 * route turns it into the msgpack request a client would send, which goes
 * through gateway_dispatch() on a virtual connection (same checks, same
 * forwarding, same batching, same metrics); the reply frame comes back
 * through the connection's sink and is written as JSON with a status code.
 * GET /v1/watch answers with a chunked stream, one JSON document per line.
 * GET /metrics is answered here, in the Prometheus text format.
 *
 * Failure modes: a malformed request, a URL or header over its bound, or a
 * body over 1 MiB gets 400/413 and the connection is closed; an unknown
 * route 404; a wrong method 405; errors from the cluster map to statuses
 * (docs/http.md). One request at a time per connection: reading pauses
 * until the answer is written (no pipelining).
 *
 * Authentication: `Authorization: Bearer TOKEN` (allotctl token create), or
 * the signature headers X-Allot-Principal, X-Allot-Timestamp, X-Allot-Nonce
 * (hex) and X-Allot-Signature (hex) over the usual signed message with
 * op = "METHOD TARGET" (the request line's target, query included) and body
 * = the raw request body. Both travel inside the internal request, so the
 * leader checks them, not the node the client reached. */
#include <http_parser.h>
#include <inttypes.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/lib.h"
#include "../proto/json.h"
#include "node.h"

#define HTTP_URL_MAX    4096
#define HTTP_HEADER_MAX 512
#define HTTP_BODY_MAX   WIRE_FRAME_MAX

struct http_conn
{
    TAILQ_ENTRY(http_conn) link;
    struct node *node;
    uv_tcp_t tcp;
    http_parser parser;
    struct conn *vc;
    char url[HTTP_URL_MAX + 1];
    size_t url_len;
    char field[32];
    size_t field_len;
    bool field_done;
    char *capture; /* header value being captured, or NULL */
    size_t capture_len;
    char h_auth[HTTP_HEADER_MAX + 1];
    char h_principal[AUTH_NAME_MAX + 1];
    char h_ts[24];
    char h_nonce[2 * AUTH_NONCE_LEN + 1];
    char h_sig[2 * AUTH_SIG_LEN + 1];
    char *body;
    size_t body_len;
    bool overflow;  /* something exceeded its bound */
    bool complete;  /* a whole request is parsed */
    bool busy;      /* answering it */
    bool streaming; /* a watch: chunked replies until the client leaves */
    bool keep_alive;
    bool closing;
    char *pending; /* bytes read after the request, parsed after the reply */
    size_t pending_len;
    uint64_t client_id;
    uint64_t seq;
    uint64_t req_id;
};

TAILQ_HEAD(http_list, http_conn);

static struct http_list http_conns = TAILQ_HEAD_INITIALIZER(http_conns);
static uv_tcp_t http_listener;
static bool http_listening;

static void http_close(struct http_conn *h);
static void http_resume(struct http_conn *h);
static void alloc_cb(uv_handle_t *hd, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* --- Writing ------------------------------------------------------------- */

struct http_write
{
    uv_write_t w;
    struct http_conn *h;
    char *data;
    bool close_after;
};

static void write_cb(uv_write_t *w, int status)
{
    struct http_write *hw = w->data;
    struct http_conn *h = hw->h;
    bool close_after = hw->close_after;
    free(hw->data);
    free(hw);
    if (h->closing) {
        return;
    }
    if (status != 0 || close_after) {
        http_close(h);
        return;
    }
    if (!h->busy && !h->streaming) {
        http_resume(h);
    }
}

static void send_bytes(struct http_conn *h, char *data, size_t len,
                       bool close_after)
{
    struct http_write *hw = malloc(sizeof *hw);
    if (hw == NULL) {
        free(data);
        http_close(h);
        return;
    }
    hw->h = h;
    hw->data = data;
    hw->close_after = close_after;
    hw->w.data = hw;
    uv_buf_t buf = uv_buf_init(data, (unsigned)len);
    if (uv_write(&hw->w, (uv_stream_t *)&h->tcp, &buf, 1, write_cb) != 0) {
        free(data);
        free(hw);
        http_close(h);
    }
}

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Internal Server Error";
    }
}

static int status_of(int code)
{
    switch (code) {
    case 0:
        return 200;
    case ALLOT_EINVALID:
    case ALLOT_EPROTOCOL:
        return 400;
    case ALLOT_EUNAUTHENTICATED:
        return 401;
    case ALLOT_EPERMISSION_DENIED:
        return 403;
    case ALLOT_ENOT_FOUND:
        return 404;
    case ALLOT_EEXISTS:
    case ALLOT_ECONFLICT:
        return 409;
    case ALLOT_ETOO_BIG:
        return 413;
    case ALLOT_EVALIDATION_FAILED:
        return 422;
    case ALLOT_EUNAVAILABLE:
    case ALLOT_ESHUTDOWN:
        return 503;
    case ALLOT_ETIMEOUT:
        return 504;
    default:
        return 500;
    }
}

/* A whole response. The request is done: reading resumes after the write
 * unless the connection is to close. */
static void respond(struct http_conn *h, int status, const char *type,
                    const char *body, size_t len)
{
    bool close_after = !h->keep_alive || h->overflow;
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\n%s\r\n",
                     status, status_text(status), type, len,
                     close_after ? "Connection: close\r\n" : "");
    char *data = malloc((size_t)n + len);
    if (data == NULL) {
        http_close(h);
        return;
    }
    memcpy(data, head, (size_t)n);
    memcpy(data + n, body, len);
    h->busy = false;
    h->complete = false;
    send_bytes(h, data, (size_t)n + len, close_after);
}

static void respond_json(struct http_conn *h, int status, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (s == NULL) {
        http_close(h);
        return;
    }
    size_t len = strlen(s);
    s[len] = '\0';
    char *body = malloc(len + 1);
    if (body == NULL) {
        free(s);
        http_close(h);
        return;
    }
    memcpy(body, s, len);
    body[len] = '\n';
    free(s);
    respond(h, status, "application/json", body, len + 1);
    free(body);
}

static void respond_error(struct http_conn *h, int code, const char *msg)
{
    json_t *j = json_object();
    json_object_set_new(j, "error", json_string(allot_error_name(code)));
    json_object_set_new(j, "message", json_string(msg));
    respond_json(h, status_of(code), j);
}

/* One chunk of a chunked stream (empty data ends the stream). */
static void send_chunk(struct http_conn *h, const char *data, size_t len)
{
    char head[32];
    int n = snprintf(head, sizeof head, "%zx\r\n", len);
    char *buf = malloc((size_t)n + len + 2);
    if (buf == NULL) {
        http_close(h);
        return;
    }
    memcpy(buf, head, (size_t)n);
    memcpy(buf + n, data, len);
    memcpy(buf + (size_t)n + len, "\r\n", 2);
    send_bytes(h, buf, (size_t)n + len + 2, false);
}

/* --- Replies from the gateway ----------------------------------------------
 */

static void on_frames(struct conn *c, const char *data, size_t len)
{
    struct http_conn *h = c->owner;
    size_t off = 0;
    while (off < len && !h->closing) {
        const char *body;
        size_t body_len, frame_len;
        if (wire_frame_parse(data + off, len - off, &body, &body_len,
                             &frame_len) != 1) {
            break;
        }
        off += frame_len;
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        struct wire_reply rep;
        char msg[ALLOT_ERRMSG_SIZE];
        if (wire_unpack(body, body_len, &u, msg) != 0 ||
            wire_reply_decode(&u.data, &rep, msg) != 0) {
            msgpack_unpacked_destroy(&u);
            continue;
        }
        if (h->streaming) {
            json_t *j;
            if (rep.code != 0) {
                j = json_object();
                json_object_set_new(j, "error",
                                    json_string(allot_error_name(rep.code)));
                json_object_set_new(j, "message",
                                    json_stringn(rep.message ? rep.message : "",
                                                 rep.message_len));
            } else {
                j = rep.result ? wire_to_json(rep.result) : json_null();
            }
            char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
            json_decref(j);
            if (s != NULL) {
                size_t n = strlen(s);
                char *line = malloc(n + 1);
                if (line != NULL) {
                    memcpy(line, s, n);
                    line[n] = '\n';
                    send_chunk(h, line, n + 1);
                    free(line);
                }
                free(s);
            }
            if (rep.code != 0) {
                send_chunk(h, "", 0); /* the stream ends with the error */
                h->streaming = false;
                h->keep_alive = false;
            }
        } else if (rep.code != 0) {
            char m[ALLOT_ERRMSG_SIZE];
            snprintf(m, sizeof m, "%.*s", (int)rep.message_len,
                     rep.message ? rep.message : "");
            respond_error(h, rep.code, m);
        } else {
            respond_json(h, 200,
                         rep.result ? wire_to_json(rep.result) : json_null());
        }
        msgpack_unpacked_destroy(&u);
    }
}

/* --- Requests --------------------------------------------------------------
 */

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Percent-decode src[0..len) into dst (size >= len + 1). -1 if malformed. */
static int url_decode(const char *src, size_t len, char *dst)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '%') {
            if (i + 2 >= len) {
                return -1;
            }
            int a = hexval(src[i + 1]);
            int b = hexval(src[i + 2]);
            if (a < 0 || b < 0) {
                return -1;
            }
            dst[o++] = (char)(a * 16 + b);
            i += 2;
        } else {
            dst[o++] = src[i] == '+' ? ' ' : src[i];
        }
    }
    dst[o] = '\0';
    return (int)o;
}

/* Value of query parameter `key` (decoded into out), 1 if present. */
static int query_get(const char *q, size_t qlen, const char *key, char *out,
                     size_t out_size)
{
    size_t klen = strlen(key);
    size_t i = 0;
    while (i < qlen) {
        size_t end = i;
        while (end < qlen && q[end] != '&') {
            end++;
        }
        const char *eq = memchr(q + i, '=', end - i);
        size_t name_len = eq != NULL ? (size_t)(eq - (q + i)) : end - i;
        if (name_len == klen && memcmp(q + i, key, klen) == 0) {
            const char *v = eq != NULL ? eq + 1 : q + end;
            size_t vlen = (size_t)(q + end - v);
            if (vlen + 1 > out_size || url_decode(v, vlen, out) < 0) {
                return -1;
            }
            return 1;
        }
        i = end + 1;
    }
    return 0;
}

static int query_u64(const char *q, size_t qlen, const char *key, uint64_t *out,
                     bool *has)
{
    char v[32];
    int rv = query_get(q, qlen, key, v, sizeof v);
    *has = rv == 1;
    if (rv != 1) {
        return rv;
    }
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || *end != '\0') {
        return -1;
    }
    *out = x;
    return 1;
}

/* Start the internal request: {"id", "op", "args": ...}. The caller packs
 * the args value, then request_send() adds identity fields and sends. */
static void request_begin(struct http_conn *h, msgpack_sbuffer *sb,
                          msgpack_packer *pk, const char *op, bool write,
                          bool has_token, bool has_sig)
{
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
    h->req_id++;
    msgpack_pack_map(pk, 3u + (write ? 3u : 0u) + (has_token ? 1u : 0u) +
                             (has_sig ? 1u : 0u));
    wire_pack_kv_u64(pk, "id", h->req_id);
    wire_pack_kv_str(pk, "op", op);
    if (write && has_sig) {
        /* A signed write's request id comes from its signature's nonce, so
         * the same signed request replayed anywhere (a new leader has not
         * seen the nonce) meets its own (client, seq) in the state machine
         * and applies once. */
        unsigned char id[8];
        char seed[2 * AUTH_NONCE_LEN + AUTH_NAME_MAX + 2];
        int n =
            snprintf(seed, sizeof seed, "%s\n%s", h->h_nonce, h->h_principal);
        crypto_generichash(id, sizeof id, (const unsigned char *)seed,
                           (unsigned long long)(n > 0 ? n : 0), NULL, 0);
        uint64_t client = 0;
        memcpy(&client, id, sizeof client);
        wire_pack_kv_u64(pk, "client", client | 1);
        wire_pack_kv_u64(pk, "seq", 1);
        wire_pack_kv_u64(pk, "ack", 1);
    } else if (write) {
        /* One client id per HTTP connection; each write its own seq. */
        h->seq++;
        wire_pack_kv_u64(pk, "client", h->client_id);
        wire_pack_kv_u64(pk, "seq", h->seq);
        wire_pack_kv_u64(pk, "ack", h->seq);
    }
    if (has_token) {
        wire_pack_kv_str(pk, "token", h->h_auth + 7);
    }
    if (has_sig) {
        wire_pack_str(pk, "http_auth");
        msgpack_pack_map(pk, 6);
        wire_pack_kv_str(pk, "principal", h->h_principal);
        wire_pack_str(pk, "ts");
        msgpack_pack_uint64(pk, strtoull(h->h_ts, NULL, 10));
        unsigned char nonce[AUTH_NONCE_LEN], sig[AUTH_SIG_LEN];
        size_t nl = 0, sl = 0;
        sodium_hex2bin(nonce, sizeof nonce, h->h_nonce, strlen(h->h_nonce),
                       NULL, &nl, NULL);
        sodium_hex2bin(sig, sizeof sig, h->h_sig, strlen(h->h_sig), NULL, &sl,
                       NULL);
        wire_pack_str(pk, "nonce");
        msgpack_pack_bin(pk, nl);
        msgpack_pack_bin_body(pk, nonce, nl);
        wire_pack_str(pk, "sig");
        msgpack_pack_bin(pk, sl);
        msgpack_pack_bin_body(pk, sig, sl);
        char target[HTTP_URL_MAX + 16];
        snprintf(target, sizeof target, "%s %.*s",
                 http_method_str((enum http_method)h->parser.method),
                 (int)h->url_len, h->url);
        wire_pack_kv_str(pk, "target", target);
        wire_pack_str(pk, "raw");
        msgpack_pack_bin(pk, h->body_len);
        msgpack_pack_bin_body(pk, h->body ? h->body : "", h->body_len);
    }
    wire_pack_str(pk, "args");
}

static void request_send(struct http_conn *h, msgpack_sbuffer *sb)
{
    h->busy = true;
    gateway_dispatch(h->vc, sb->data, sb->size);
    msgpack_sbuffer_destroy(sb);
}

static void route(struct http_conn *h)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(h->url, h->url_len, 0, &u) != 0 ||
        !(u.field_set & (1 << UF_PATH))) {
        respond_error(h, ALLOT_EINVALID, "malformed request target");
        return;
    }
    const char *path = h->url + u.field_data[UF_PATH].off;
    size_t plen = u.field_data[UF_PATH].len;
    const char *q = "";
    size_t qlen = 0;
    if (u.field_set & (1 << UF_QUERY)) {
        q = h->url + u.field_data[UF_QUERY].off;
        qlen = u.field_data[UF_QUERY].len;
    }
    enum http_method m = (enum http_method)h->parser.method;
    bool token = strncmp(h->h_auth, "Bearer ", 7) == 0 && h->h_auth[7];
    bool sig = h->h_principal[0] != '\0';
    if (h->h_auth[0] != '\0' && !token) {
        respond_error(h, ALLOT_EUNAUTHENTICATED,
                      "Authorization must be \"Bearer TOKEN\"");
        return;
    }
    if (sig &&
        (h->h_ts[0] == '\0' || strlen(h->h_nonce) != 2 * AUTH_NONCE_LEN ||
         strlen(h->h_sig) != 2 * AUTH_SIG_LEN)) {
        respond_error(h, ALLOT_EUNAUTHENTICATED,
                      "signed requests need X-Allot-Principal, "
                      "X-Allot-Timestamp, X-Allot-Nonce (32 hex) and "
                      "X-Allot-Signature (128 hex)");
        return;
    }
    msgpack_sbuffer sb;
    msgpack_packer pk;
    char buf[QUOTA_PATH_MAX + 64];
    uint64_t v = 0;
    bool has = false;

    if (plen == 8 && memcmp(path, "/metrics", 8) == 0) {
        if (m != HTTP_GET) {
            respond_error(h, ALLOT_EINVALID, "GET only");
            return;
        }
        msgpack_sbuffer text;
        msgpack_sbuffer_init(&text);
        metrics_render(h->node, &text);
        respond(h, 200, "text/plain; version=0.0.4", text.data, text.size);
        msgpack_sbuffer_destroy(&text);
        return;
    }
    if (plen == 11 && memcmp(path, "/v1/cluster", 11) == 0) {
        request_begin(h, &sb, &pk, "cluster.status", false, token, sig);
        msgpack_pack_map(&pk, 0);
        request_send(h, &sb);
        return;
    }
    if ((plen == 10 && memcmp(path, "/v1/quotas", 10) == 0) ||
        (plen == 9 && memcmp(path, "/v1/audit", 9) == 0) ||
        (plen == 9 && memcmp(path, "/v1/watch", 9) == 0)) {
        bool audit = path[4] == 'a';
        bool watch = path[4] == 'w';
        if (m != HTTP_GET) {
            respond_error(h, ALLOT_EINVALID, "GET only");
            return;
        }
        const char *op = audit   ? "audit.ls"
                         : watch ? "quota.watch"
                                 : "quota.ls";
        request_begin(h, &sb, &pk, op, false, token, sig);
        /* Query parameters pass through as arguments of the same names. */
        static const char *const keys[] = {"prefix", "after", "principal",
                                           NULL};
        static const char *const nums[] = {"limit", "since_ms", "from_version",
                                           NULL};
        unsigned n = 0;
        char vals[3][QUOTA_PATH_MAX + 1];
        bool present[3] = {false};
        for (int i = 0; keys[i] != NULL; i++) {
            int rv = query_get(q, qlen, keys[i], vals[i], sizeof vals[i]);
            if (rv < 0) {
                msgpack_sbuffer_destroy(&sb);
                respond_error(h, ALLOT_EINVALID, "malformed query string");
                return;
            }
            present[i] = rv == 1;
            n += present[i];
        }
        uint64_t nv[3];
        bool npresent[3] = {false};
        for (int i = 0; nums[i] != NULL; i++) {
            if (query_u64(q, qlen, nums[i], &nv[i], &npresent[i]) < 0) {
                msgpack_sbuffer_destroy(&sb);
                respond_error(h, ALLOT_EINVALID,
                              "limit, since_ms and from_version are whole "
                              "numbers");
                return;
            }
            n += npresent[i];
        }
        if (audit && present[1]) {
            /* audit pages by version: "after" is a number there. */
            char *end;
            nv[2] = strtoull(vals[1], &end, 10);
            if (*end != '\0') {
                msgpack_sbuffer_destroy(&sb);
                respond_error(h, ALLOT_EINVALID, "after is a version number");
                return;
            }
        }
        msgpack_pack_map(&pk, n);
        for (int i = 0; keys[i] != NULL; i++) {
            if (present[i] && !(audit && i == 1)) {
                wire_pack_kv_str(&pk, keys[i], vals[i]);
            }
        }
        if (audit && present[1]) {
            wire_pack_kv_u64(&pk, "after", nv[2]);
        }
        for (int i = 0; nums[i] != NULL; i++) {
            if (npresent[i]) {
                wire_pack_kv_u64(&pk, nums[i], nv[i]);
            }
        }
        if (watch) {
            h->streaming = true;
            uv_read_start((uv_stream_t *)&h->tcp, alloc_cb, read_cb);
            static const char head[] =
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                "Transfer-Encoding: chunked\r\n\r\n";
            char *d = malloc(sizeof head - 1);
            if (d != NULL) {
                memcpy(d, head, sizeof head - 1);
                send_bytes(h, d, sizeof head - 1, false);
            }
        }
        request_send(h, &sb);
        return;
    }
    if (plen > 11 && memcmp(path, "/v1/quotas/", 11) == 0) {
        int qp = url_decode(path + 11, plen - 11, buf);
        if (qp < 0 || (size_t)qp > QUOTA_PATH_MAX) {
            respond_error(h, ALLOT_EINVALID, "malformed quota path");
            return;
        }
        if (m == HTTP_GET) {
            request_begin(h, &sb, &pk, "quota.get", false, token, sig);
            msgpack_pack_map(&pk, 1);
            wire_pack_kv_str(&pk, "path", buf);
            request_send(h, &sb);
            return;
        }
        if (m != HTTP_PUT && m != HTTP_DELETE) {
            respond_error(h, ALLOT_EINVALID,
                          "use GET, PUT or DELETE on /v1/quotas/PATH");
            return;
        }
        int ifv = query_u64(q, qlen, "if_version", &v, &has);
        char rec[8] = "";
        if (ifv < 0 || query_get(q, qlen, "recursive", rec, sizeof rec) < 0) {
            respond_error(h, ALLOT_EINVALID,
                          "if_version is a version number; recursive is "
                          "true or false");
            return;
        }
        if (m == HTTP_DELETE) {
            bool recursive = strcmp(rec, "true") == 0;
            request_begin(h, &sb, &pk, "quota.rm", true, token, sig);
            msgpack_pack_map(&pk, 2u + (has ? 1u : 0u));
            wire_pack_kv_str(&pk, "path", buf);
            wire_pack_str(&pk, "recursive");
            if (recursive) {
                msgpack_pack_true(&pk);
            } else {
                msgpack_pack_false(&pk);
            }
            if (has) {
                wire_pack_kv_u64(&pk, "if_version", v);
            }
            request_send(h, &sb);
            return;
        }
        json_error_t err;
        json_t *fields = json_loadb(h->body ? h->body : "", h->body_len,
                                    JSON_REJECT_DUPLICATES, &err);
        if (fields == NULL || !json_is_object(fields)) {
            char msg[ALLOT_ERRMSG_SIZE];
            snprintf(msg, sizeof msg,
                     "the body must be a JSON object of quota fields%s%s",
                     fields == NULL ? ": " : "",
                     fields == NULL ? err.text : "");
            json_decref(fields);
            respond_error(h, ALLOT_EINVALID, msg);
            return;
        }
        /* "labels" in the body edits labels (null removes one); the rest
         * are fields. */
        json_t *labels = json_incref(json_object_get(fields, "labels"));
        json_object_del(fields, "labels");
        request_begin(h, &sb, &pk, "quota.set", true, token, sig);
        msgpack_pack_map(&pk, 2u + (has ? 1u : 0u) + (labels ? 1u : 0u));
        wire_pack_kv_str(&pk, "path", buf);
        wire_pack_str(&pk, "fields");
        wire_pack_json(&pk, fields);
        json_decref(fields);
        if (labels != NULL) {
            wire_pack_str(&pk, "labels");
            wire_pack_json(&pk, labels);
            json_decref(labels);
        }
        if (has) {
            wire_pack_kv_u64(&pk, "if_version", v);
        }
        request_send(h, &sb);
        return;
    }
    respond_error(h, ALLOT_ENOT_FOUND,
                  "no such resource (see docs/http.md: /v1/quotas, "
                  "/v1/cluster, /v1/audit, /v1/watch, /metrics)");
}

/* --- Parsing ---------------------------------------------------------------
 */

static struct http_conn *of(http_parser *p)
{
    return p->data;
}

static int on_message_begin(http_parser *p)
{
    struct http_conn *h = of(p);
    h->url_len = 0;
    h->field_len = 0;
    h->field_done = false;
    h->capture = NULL;
    h->h_auth[0] = h->h_principal[0] = h->h_ts[0] = '\0';
    h->h_nonce[0] = h->h_sig[0] = '\0';
    free(h->body);
    h->body = NULL;
    h->body_len = 0;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_conn *h = of(p);
    if (h->url_len + len > HTTP_URL_MAX) {
        h->overflow = true;
        return 1;
    }
    memcpy(h->url + h->url_len, at, len);
    h->url_len += len;
    h->url[h->url_len] = '\0';
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct http_conn *h = of(p);
    if (h->field_done) {
        h->field_len = 0;
        h->field_done = false;
    }
    size_t n = len < sizeof h->field - 1 - h->field_len
                   ? len
                   : sizeof h->field - 1 - h->field_len;
    memcpy(h->field + h->field_len, at, n);
    h->field_len += n;
    h->field[h->field_len] = '\0';
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct http_conn *h = of(p);
    if (!h->field_done) {
        h->field_done = true;
        h->capture_len = 0;
        struct
        {
            const char *name;
            char *dst;
            size_t size;
        } wanted[] = {
            {"authorization", h->h_auth, sizeof h->h_auth},
            {"x-allot-principal", h->h_principal, sizeof h->h_principal},
            {"x-allot-timestamp", h->h_ts, sizeof h->h_ts},
            {"x-allot-nonce", h->h_nonce, sizeof h->h_nonce},
            {"x-allot-signature", h->h_sig, sizeof h->h_sig},
        };
        h->capture = NULL;
        for (unsigned i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
            if (strcasecmp(h->field, wanted[i].name) == 0) {
                h->capture = wanted[i].dst;
                h->capture_len = wanted[i].size;
                h->capture[0] = '\0';
            }
        }
    }
    if (h->capture != NULL) {
        size_t have = strlen(h->capture);
        if (have + len >= h->capture_len) {
            h->overflow = true;
            return 1;
        }
        memcpy(h->capture + have, at, len);
        h->capture[have + len] = '\0';
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct http_conn *h = of(p);
    if (h->body_len + len > HTTP_BODY_MAX) {
        h->overflow = true;
        return 1;
    }
    char *b = realloc(h->body, h->body_len + len + 1);
    if (b == NULL) {
        h->overflow = true;
        return 1;
    }
    h->body = b;
    memcpy(h->body + h->body_len, at, len);
    h->body_len += len;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct http_conn *h = of(p);
    h->complete = true;
    h->keep_alive = http_should_keep_alive(p) != 0;
    /* One request at a time: stop here, answer, then go on. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Parse data; answer a complete request. Unparsed bytes wait in pending. */
static void feed(struct http_conn *h, const char *data, size_t len)
{
    size_t used = http_parser_execute(&h->parser, &settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&h->parser);
    if (e == HPE_PAUSED) {
        http_parser_pause(&h->parser, 0);
        if (used < len) {
            char *rest = malloc(len - used);
            if (rest == NULL) {
                http_close(h);
                return;
            }
            memcpy(rest, data + used, len - used);
            free(h->pending);
            h->pending = rest;
            h->pending_len = len - used;
        }
    } else if (e != HPE_OK || h->overflow) {
        h->overflow = true;
        h->keep_alive = false;
        respond_error(h, e == HPE_CB_body ? ALLOT_ETOO_BIG : ALLOT_EINVALID,
                      h->overflow && e == HPE_CB_body
                          ? "request body over 1 MiB"
                      : h->overflow ? "request line or header too long"
                                    : http_errno_description(e));
        uv_read_stop((uv_stream_t *)&h->tcp);
        return;
    }
    if (h->complete && !h->busy) {
        uv_read_stop((uv_stream_t *)&h->tcp);
        h->node->metrics.http_requests++;
        route(h);
    }
}

static void alloc_cb(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    (void)hd;
    (void)suggested;
    static char slab[65536];
    *buf = uv_buf_init(slab, sizeof slab);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct http_conn *h = s->data;
    if (nread < 0) {
        http_close(h);
        return;
    }
    if (nread > 0 && !h->streaming) {
        feed(h, buf->base, (size_t)nread);
    }
    /* While streaming a watch, reading only tells us the client left. */
}

static void http_resume(struct http_conn *h)
{
    if (h->closing || h->node->stopping) {
        return;
    }
    if (h->pending != NULL) {
        char *p = h->pending;
        size_t n = h->pending_len;
        h->pending = NULL;
        h->pending_len = 0;
        feed(h, p, n);
        free(p);
        if (h->busy || h->closing) {
            return;
        }
    }
    uv_read_start((uv_stream_t *)&h->tcp, alloc_cb, read_cb);
}

static void free_cb(uv_handle_t *hd)
{
    struct http_conn *h = hd->data;
    free(h->body);
    free(h->pending);
    free(h);
}

static void http_close(struct http_conn *h)
{
    if (h->closing) {
        return;
    }
    h->closing = true;
    TAILQ_REMOVE(&http_conns, h, link);
    gateway_conn_virtual_close(h->vc);
    uv_close((uv_handle_t *)&h->tcp, free_cb);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct node *n = server->data;
    if (status != 0 || n->stopping) {
        return;
    }
    struct http_conn *h = calloc(1, sizeof *h);
    if (h == NULL) {
        return;
    }
    h->node = n;
    h->client_id = lib_random_u64();
    h->vc = gateway_conn_virtual(n, on_frames, h);
    uv_tcp_init(n->loop, &h->tcp);
    h->tcp.data = h;
    TAILQ_INSERT_TAIL(&http_conns, h, link);
    if (h->vc == NULL || uv_accept(server, (uv_stream_t *)&h->tcp) != 0) {
        if (h->vc == NULL) {
            h->vc = gateway_conn_virtual(n, on_frames, h);
        }
        if (h->vc != NULL) {
            http_close(h);
        } else {
            TAILQ_REMOVE(&http_conns, h, link);
            h->closing = true;
            uv_close((uv_handle_t *)&h->tcp, free_cb);
        }
        return;
    }
    http_parser_init(&h->parser, HTTP_REQUEST);
    h->parser.data = h;
    uv_tcp_nodelay(&h->tcp, 1);
    uv_read_start((uv_stream_t *)&h->tcp, alloc_cb, read_cb);
}

int http_listen(struct node *n)
{
    if (n->cfg.http_addr == NULL) {
        return 0;
    }
    struct sockaddr_in sa;
    char why[160];
    if (addr_parse(n->cfg.http_addr, &sa, why, sizeof why) != 0) {
        LOGE(NODE_COMP, "bad --http address", "why=\"%s\"", why);
        return -1;
    }
    uv_tcp_init(n->loop, &http_listener);
    http_listener.data = n;
    int rv = uv_tcp_bind(&http_listener, (const struct sockaddr *)&sa, 0);
    if (rv == 0) {
        rv = uv_listen((uv_stream_t *)&http_listener, 511, on_connection);
    }
    if (rv != 0) {
        LOGE(NODE_COMP, "cannot listen for HTTP", "addr=%s err=\"%s\"",
             n->cfg.http_addr, uv_strerror(rv));
        uv_close((uv_handle_t *)&http_listener, NULL);
        return -1;
    }
    http_listening = true;
    return 0;
}

void http_close_all(struct node *n)
{
    (void)n;
    if (http_listening) {
        uv_close((uv_handle_t *)&http_listener, NULL);
        http_listening = false;
    }
    struct http_conn *h;
    while ((h = TAILQ_FIRST(&http_conns)) != NULL) {
        http_close(h);
    }
}
