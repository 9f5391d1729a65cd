/* validate.c - pluggable validators, run by the leader before it proposes a
 * change (allotctl validator add).
 *
 * Happy path: a write whose path lies under a validator's prefix waits here
 * while each matching validator runs in turn, all on the event loop: an
 * `exec` validator is `/bin/sh -c COMMAND` with the change as JSON on stdin;
 * a `url` validator gets it as the body of an HTTP POST. Exit status 0, or
 * an HTTP 2xx, accepts; when every validator accepted, the write joins the
 * leader's queue like any other.
 *
 * Failure modes:
 *   - a veto (non-zero exit, HTTP 4xx): validation_failed with the
 *     validator's own words (its stdout/stderr, or the response body);
 *   - no answer (timeout, cannot start or connect, killed, HTTP 5xx or an
 *     unreadable response): validation_failed too, unless the validator is
 *     --fail-open, in which case the change goes on and a warning is logged;
 *   - leadership lost meanwhile: unavailable (the client retries);
 *   - shutdown: every validator is killed, the request answered `shutdown`.
 * The change is checked against the state when it was submitted; the state
 * machine checks its own rules again when it applies (docs/validators.md). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/lib.h"
#include "../proto/json.h"
#include "node.h"

#define VALIDATE_MAX    8    /* validators run for one change */
#define VALIDATE_OUTPUT 2048 /* bytes of a validator's answer we keep */

struct validation
{
    TAILQ_ENTRY(validation) link;
    struct node *node;
    struct node_req *r; /* NULL once answered (shutdown) */
    struct fsm_validator cfg[VALIDATE_MAX];
    unsigned n_cfg;
    unsigned next; /* index of the validator running */
    char *doc;     /* the change, as JSON */
    size_t doc_len;
    /* The run in progress. */
    uv_process_t proc;
    uv_pipe_t in, out, err;
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    uv_timer_t timer;
    char *request; /* HTTP request bytes */
    int handles;   /* open handles of this run */
    bool timer_started;
    bool exited;
    int64_t exit_status;
    int term_signal;
    bool timed_out;
    bool no_answer; /* could not run or connect */
    bool aborted;
    char output[VALIDATE_OUTPUT + 1];
    size_t output_len;
};

static void run_next(struct validation *v);

/* --- Change document ----------------------------------------------------- */

/* {"operation", "path", "principal", "old": quota|null, "new": quota|null}:
 * "new" is what the change would leave, by the same merge the state machine
 * does. */
static char *change_document(struct node *n, struct node_req *r, size_t *len)
{
    const struct quota *old = fsm_get(n->fsm, r->path, r->path_len);
    json_t *doc = json_object();
    json_object_set_new(doc, "operation", json_string(wire_op_name(r->op)));
    json_object_set_new(doc, "path", json_string(r->path));
    json_object_set_new(
        doc, "principal",
        json_string(r->principal[0] ? r->principal : "anonymous"));
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked u;
    json_t *jold = json_null(), *jnew = json_null();
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_unpacked_init(&u);
    if (old != NULL) {
        quota_pack(&pk, old);
        if (wire_unpack(sb.data, sb.size, &u, NULL) == 0) {
            json_decref(jold);
            jold = wire_to_json(&u.data);
        }
        msgpack_sbuffer_clear(&sb);
    }
    if (r->op == WIRE_OP_QUOTA_SET) {
        struct quota_fields next;
        int rv = old != NULL
                     ? (next = old->f, 0)
                     : quota_fields_defaults(&r->cmd.patch, &next, NULL);
        if (rv == 0 && quota_fields_merge(&next, &r->cmd.patch, NULL) == 0) {
            /* The labels the change leaves: the old ones with its edits. */
            char *lab[2 * QUOTA_LABELS_MAX];
            uint32_t nl = 0;
            for (uint32_t i = 0; old != NULL && i < old->n_labels; i++) {
                lab[nl++] = strdup(old->labels[i]);
            }
            for (uint32_t e = 0; e < r->n_label_edits; e++) {
                size_t kl = strlen(r->label_keys[e]);
                for (uint32_t j = 0; j < nl; j++) {
                    if (strncmp(lab[j], r->label_keys[e], kl) == 0 &&
                        lab[j][kl] == '=') {
                        free(lab[j]);
                        lab[j] = lab[--nl];
                        break;
                    }
                }
                if (r->label_values[e] != NULL && nl < 2 * QUOTA_LABELS_MAX) {
                    size_t vl = strlen(r->label_values[e]);
                    lab[nl] = malloc(kl + vl + 2);
                    memcpy(lab[nl], r->label_keys[e], kl);
                    lab[nl][kl] = '=';
                    memcpy(lab[nl] + kl + 1, r->label_values[e], vl + 1);
                    nl++;
                }
            }
            struct quota preview = {
                .labels = lab,
                .n_labels = nl,
                .path = r->path,
                .version = old != NULL ? old->version : 0,
                .created_ms = old != NULL ? old->created_ms : 0,
                .updated_ms = clock_wall_ms(),
                .f = next,
                .owners = old != NULL ? old->owners : NULL,
                .n_owners = old != NULL ? old->n_owners : 0,
            };
            quota_pack(&pk, &preview);
            for (uint32_t j = 0; j < nl; j++) {
                free(lab[j]);
            }
            msgpack_unpacked_destroy(&u);
            msgpack_unpacked_init(&u);
            if (wire_unpack(sb.data, sb.size, &u, NULL) == 0) {
                json_decref(jnew);
                jnew = wire_to_json(&u.data);
            }
        }
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    json_object_set_new(doc, "old", jold);
    json_object_set_new(doc, "new", jnew);
    char *s = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(doc);
    *len = s != NULL ? strlen(s) : 0;
    return s;
}

/* --- Finishing --------------------------------------------------------------
 */

static void finish(struct validation *v, int code, const char *msg)
{
    struct node *n = v->node;
    TAILQ_REMOVE(&n->validations, v, link);
    if (v->r != NULL) {
        if (code != 0) {
            node_reply_error(v->r, code, msg);
        } else if (raft_state(&n->raft) != RAFT_LEADER) {
            node_reply_error(v->r, ALLOT_EUNAVAILABLE,
                             "this node lost leadership while validating; "
                             "retry");
        } else {
            leader_enqueue(v->r);
        }
    }
    free(v->doc);
    free(v->request);
    free(v);
}

/* Trim the answer to one readable line for the error message. */
static void answer_text(struct validation *v, char *out, size_t size)
{
    size_t start = 0, end = v->output_len;
    while (start < end &&
           (v->output[start] == ' ' || v->output[start] == '\n' ||
            v->output[start] == '\r')) {
        start++;
    }
    while (end > start &&
           (v->output[end - 1] == ' ' || v->output[end - 1] == '\n' ||
            v->output[end - 1] == '\r')) {
        end--;
    }
    snprintf(out, size, "%.*s", (int)(end - start), v->output + start);
    for (char *p = out; *p != '\0'; p++) {
        if (*p == '\n' || *p == '\r') {
            *p = ' ';
        }
    }
}

/* One validator's run is over (every handle closed): decide. */
static void step_done(struct validation *v)
{
    const struct fsm_validator *cfg = &v->cfg[v->next];
    char text[400];
    char msg[ALLOT_ERRMSG_SIZE];
    answer_text(v, text, sizeof text);
    if (v->aborted) {
        finish(v, ALLOT_ESHUTDOWN, "node is shutting down");
        return;
    }
    bool accepted = false;
    bool vetoed = false;
    if (v->timed_out || v->no_answer) {
        /* no answer */
    } else if (cfg->is_url) {
        int status = 0;
        if (sscanf(v->output, "HTTP/1.%*d %d", &status) == 1) {
            accepted = status >= 200 && status < 300;
            vetoed = status >= 400 && status < 500;
            /* The body, after the blank line, is the validator's message. */
            const char *body = strstr(v->output, "\r\n\r\n");
            if (body != NULL) {
                size_t off = (size_t)(body + 4 - v->output);
                memmove(v->output, v->output + off, v->output_len - off + 1);
                v->output_len -= off;
                answer_text(v, text, sizeof text);
            }
            if (!accepted && text[0] == '\0') {
                snprintf(text, sizeof text, "HTTP status %d", status);
            }
        }
    } else {
        accepted = v->exited && v->exit_status == 0 && v->term_signal == 0;
        vetoed = v->exited && v->exit_status != 0 && v->term_signal == 0;
        if (!accepted && text[0] == '\0') {
            snprintf(text, sizeof text, "exit status %lld",
                     (long long)v->exit_status);
        }
    }
    if (accepted || (!vetoed && cfg->fail_open)) {
        if (!accepted) {
            LOGW(NODE_COMP, "validator gave no answer; fail-open accepts",
                 "validator=%s path=%s timed_out=%d", cfg->name,
                 v->r != NULL ? v->r->path : "", v->timed_out);
        }
        v->next++;
        run_next(v);
        return;
    }
    if (v->timed_out) {
        snprintf(text, sizeof text, "no answer within %u ms", cfg->timeout_ms);
    } else if (!vetoed && text[0] == '\0') {
        snprintf(text, sizeof text, "could not be run or reached");
    }
    allot_errf(msg, ALLOT_EVALIDATION_FAILED, "validator %s rejected %s: %s",
               cfg->name, v->r != NULL ? v->r->path : "", text);
    finish(v, ALLOT_EVALIDATION_FAILED, msg);
}

static void handle_closed(uv_handle_t *h)
{
    struct validation *v = h->data;
    if (--v->handles == 0) {
        step_done(v);
    }
}

static void close_handle(struct validation *v, uv_handle_t *h)
{
    if (!uv_is_closing(h)) {
        uv_close(h, handle_closed);
    }
    (void)v;
}

/* --- Output and timeout --------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct validation *v = h->data;
    (void)suggested;
    if (v->output_len >= VALIDATE_OUTPUT) {
        static char sink[1024]; /* over the limit: read and drop */
        *buf = uv_buf_init(sink, sizeof sink);
        return;
    }
    *buf = uv_buf_init(v->output + v->output_len,
                       (unsigned)(VALIDATE_OUTPUT - v->output_len));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct validation *v = s->data;
    if (nread < 0) {
        close_handle(v, (uv_handle_t *)s);
        return;
    }
    if (buf->base == v->output + v->output_len) {
        v->output_len += (size_t)nread;
        v->output[v->output_len] = '\0';
    }
}

static void timer_cb(uv_timer_t *t)
{
    struct validation *v = t->data;
    v->timed_out = true;
    if (!v->cfg[v->next].is_url) {
        if (!uv_is_closing((uv_handle_t *)&v->proc) && !v->exited) {
            uv_process_kill(&v->proc, SIGKILL);
        }
        close_handle(v, (uv_handle_t *)&v->out);
        close_handle(v, (uv_handle_t *)&v->err);
    } else {
        close_handle(v, (uv_handle_t *)&v->tcp);
    }
    close_handle(v, (uv_handle_t *)&v->timer);
}

static void start_timer(struct validation *v)
{
    v->timer_started = true;
    uv_timer_init(v->node->loop, &v->timer);
    v->timer.data = v;
    v->handles++;
    uv_timer_start(&v->timer, timer_cb, v->cfg[v->next].timeout_ms, 0);
}

/* The run is over once its process exited and its pipes hit EOF (exec), or
 * the connection closed (url): stop the timer then. */
static void maybe_stop_timer(struct validation *v)
{
    if (!v->timer_started) {
        return;
    }
    bool done = v->cfg[v->next].is_url
                    ? uv_is_closing((uv_handle_t *)&v->tcp)
                    : v->exited && uv_is_closing((uv_handle_t *)&v->out) &&
                          uv_is_closing((uv_handle_t *)&v->err);
    if (done) {
        close_handle(v, (uv_handle_t *)&v->timer);
    }
}

/* --- exec ------------------------------------------------------------------
 */

static void exit_cb(uv_process_t *p, int64_t status, int signal)
{
    struct validation *v = p->data;
    v->exited = true;
    v->exit_status = status;
    v->term_signal = signal;
    close_handle(v, (uv_handle_t *)p);
    maybe_stop_timer(v);
}

static void pipe_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct validation *v = s->data;
    read_cb(s, nread, buf);
    if (nread < 0) {
        maybe_stop_timer(v);
    }
}

static void stdin_written(uv_write_t *w, int status)
{
    struct validation *v = w->data;
    (void)status; /* a command that ignores its input may close it early */
    close_handle(v, (uv_handle_t *)&v->in);
}

static void run_exec(struct validation *v)
{
    const struct fsm_validator *cfg = &v->cfg[v->next];
    uv_loop_t *loop = v->node->loop;
    uv_pipe_init(loop, &v->in, 0);
    uv_pipe_init(loop, &v->out, 0);
    uv_pipe_init(loop, &v->err, 0);
    v->in.data = v->out.data = v->err.data = v->proc.data = v;
    v->handles += 3;
    char *args[] = {"sh", "-c", (char *)cfg->target, NULL};
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_CREATE_PIPE | UV_READABLE_PIPE,
         .data.stream = (uv_stream_t *)&v->in},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE,
         .data.stream = (uv_stream_t *)&v->out},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE,
         .data.stream = (uv_stream_t *)&v->err},
    };
    uv_process_options_t opts = {
        .exit_cb = exit_cb,
        .file = "/bin/sh",
        .args = args,
        .stdio_count = 3,
        .stdio = stdio,
    };
    int rv = uv_spawn(loop, &v->proc, &opts);
    if (rv != 0) {
        /* libuv closes nothing on failure: the pipes are still ours. */
        v->no_answer = true;
        snprintf(v->output, sizeof v->output, "cannot start: %s",
                 uv_strerror(rv));
        v->output_len = strlen(v->output);
        close_handle(v, (uv_handle_t *)&v->in);
        close_handle(v, (uv_handle_t *)&v->out);
        close_handle(v, (uv_handle_t *)&v->err);
        return;
    }
    v->handles++; /* the process */
    start_timer(v);
    uv_read_start((uv_stream_t *)&v->out, alloc_cb, pipe_read_cb);
    uv_read_start((uv_stream_t *)&v->err, alloc_cb, pipe_read_cb);
    uv_buf_t buf = uv_buf_init(v->doc, (unsigned)v->doc_len);
    v->write.data = v;
    if (uv_write(&v->write, (uv_stream_t *)&v->in, &buf, 1, stdin_written) !=
        0) {
        close_handle(v, (uv_handle_t *)&v->in);
    }
}

/* --- url -------------------------------------------------------------------
 */

static void url_written(uv_write_t *w, int status)
{
    struct validation *v = w->data;
    if (status != 0) {
        v->no_answer = true;
        close_handle(v, (uv_handle_t *)&v->tcp);
        maybe_stop_timer(v);
    }
}

static void url_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct validation *v = s->data;
    read_cb(s, nread, buf);
    if (nread < 0) {
        maybe_stop_timer(v);
    }
}

static void url_connected(uv_connect_t *c, int status)
{
    struct validation *v = c->data;
    if (status != 0) {
        if (status != UV_ECANCELED) {
            v->no_answer = true;
            close_handle(v, (uv_handle_t *)&v->tcp);
            maybe_stop_timer(v);
        }
        return;
    }
    uv_buf_t buf = uv_buf_init(v->request, (unsigned)strlen(v->request));
    v->write.data = v;
    if (uv_write(&v->write, (uv_stream_t *)&v->tcp, &buf, 1, url_written) !=
        0) {
        v->no_answer = true;
        close_handle(v, (uv_handle_t *)&v->tcp);
        maybe_stop_timer(v);
        return;
    }
    uv_read_start((uv_stream_t *)&v->tcp, alloc_cb, url_read_cb);
}

static void run_url(struct validation *v)
{
    const struct fsm_validator *cfg = &v->cfg[v->next];
    char hostport[128];
    const char *p = cfg->target + strlen("http://");
    const char *slash = strchr(p, '/');
    size_t hl = slash != NULL ? (size_t)(slash - p) : strlen(p);
    struct sockaddr_in sa;
    char why[160];
    uv_tcp_init(v->node->loop, &v->tcp);
    v->tcp.data = v;
    v->handles++;
    if (hl >= sizeof hostport ||
        (memcpy(hostport, p, hl), hostport[hl] = '\0',
         addr_parse(hostport, &sa, why, sizeof why) != 0)) {
        v->no_answer = true;
        close_handle(v, (uv_handle_t *)&v->tcp);
        return;
    }
    size_t need = v->doc_len + strlen(cfg->target) + 256;
    v->request = malloc(need);
    if (v->request == NULL) {
        v->no_answer = true;
        close_handle(v, (uv_handle_t *)&v->tcp);
        return;
    }
    snprintf(
        v->request, need,
        "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
        slash != NULL ? slash : "/", hostport, v->doc_len, v->doc);
    start_timer(v);
    v->connect.data = v;
    if (uv_tcp_connect(&v->connect, &v->tcp, (const struct sockaddr *)&sa,
                       url_connected) != 0) {
        v->no_answer = true;
        close_handle(v, (uv_handle_t *)&v->tcp);
        maybe_stop_timer(v);
    }
}

/* --- Driver ------------------------------------------------------------------
 */

static void run_next(struct validation *v)
{
    if (v->next == v->n_cfg) {
        finish(v, 0, NULL);
        return;
    }
    v->exited = v->timed_out = v->no_answer = false;
    v->exit_status = 0;
    v->term_signal = 0;
    v->output_len = 0;
    v->output[0] = '\0';
    free(v->request);
    v->request = NULL;
    v->handles = 0;
    v->timer_started = false;
    if (v->cfg[v->next].is_url) {
        run_url(v);
    } else {
        run_exec(v);
    }
}

bool validate_submit(struct node_req *r)
{
    struct node *n = r->node;
    if (r->op != WIRE_OP_QUOTA_SET && r->op != WIRE_OP_QUOTA_RM) {
        return false;
    }
    const struct fsm_validator *list[VALIDATE_MAX];
    unsigned count =
        fsm_validators_for(n->fsm, r->path, r->path_len, list, VALIDATE_MAX);
    if (count == 0) {
        return false;
    }
    struct validation *v = calloc(1, sizeof *v);
    if (v == NULL) {
        node_reply_error(r, ALLOT_ENOMEM, "out of memory");
        return true;
    }
    v->node = n;
    v->r = r;
    for (unsigned i = 0; i < count; i++) {
        v->cfg[i] = *list[i]; /* copies: the state may change meanwhile */
    }
    v->n_cfg = count;
    v->doc = change_document(n, r, &v->doc_len);
    if (v->doc == NULL) {
        free(v);
        node_reply_error(r, ALLOT_ENOMEM, "out of memory");
        return true;
    }
    r->state = REQ_VALIDATING;
    TAILQ_INSERT_TAIL(&n->validations, v, link);
    run_next(v);
    return true;
}

void validate_abort_all(struct node *n)
{
    struct validation *v;
    TAILQ_FOREACH(v, &n->validations, link)
    {
        v->aborted = true;
        if (v->handles == 0) {
            continue;
        }
        if (!v->cfg[v->next].is_url && !v->exited &&
            !uv_is_closing((uv_handle_t *)&v->proc)) {
            uv_process_kill(&v->proc, SIGKILL);
        }
        /* Firing the timeout now ends the wait; the rest closes on its own
         * (EOF, exit) or there. */
        if (v->timer_started && !uv_is_closing((uv_handle_t *)&v->timer)) {
            timer_cb(&v->timer);
        }
    }
}
