/* fsm.c - the quota catalog state machine (see raft_fsm.h).
 *
 * Layout of a log entry (msgpack):
 *   [1, time_ms, [cmd, ...]]
 *   cmd QUOTA_SET: [1, client, seq, ack, path, patch map, if_version|nil]
 *   cmd QUOTA_RM:  [2, client, seq, ack, path, if_version|nil]
 *   cmd LEADER:    [3, 0, 0, 0, node_id, client_addr]
 *
 * Apply walks the commands in order. Each one first consults the client's
 * session: a (client, seq) seen before returns the remembered result and
 * changes nothing, which is what makes a retried write apply once. */
#include "raft_fsm.h"

#include <bsd/sys/queue.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "../proto/wire.h"
/* Last: it defines __unused for the BSD tree macros. */
#include "../lib/tree.h"

#define BATCH_FORMAT    1
#define SNAPSHOT_FORMAT 1

/* --- Catalog -----------------------------------------------------------------
 */

struct cat_node
{
    RB_ENTRY(cat_node) link;
    struct quota q;
};

static int cat_cmp(const struct cat_node *a, const struct cat_node *b)
{
    return strcmp(a->q.path, b->q.path);
}

RB_HEAD(cat_tree, cat_node);
RB_GENERATE_STATIC(cat_tree, cat_node, link, cat_cmp)

/* --- Sessions
 * ------------------------------------------------------------------ */

struct sess_result
{
    uint64_t seq;
    struct fsm_result res;
};

struct session
{
    RB_ENTRY(session) link;
    TAILQ_ENTRY(session) lru; /* least recently used first */
    uint64_t client;
    uint64_t ack;                /* every seq below this has been answered */
    uint64_t last_ms;            /* state-machine time of last use */
    struct sess_result *results; /* sorted by seq */
    unsigned n;
    unsigned cap;
};

static int sess_cmp(const struct session *a, const struct session *b)
{
    return a->client < b->client ? -1 : a->client > b->client;
}

RB_HEAD(sess_tree, session);
RB_GENERATE_STATIC(sess_tree, session, link, sess_cmp)
TAILQ_HEAD(sess_list, session);

struct node_addr
{
    uint64_t id;
    char *addr;
};

/* Everything a snapshot carries. Restore builds a new one and swaps it in,
 * so a snapshot that fails to decode leaves the old state untouched. */
struct fsm_state
{
    struct cat_tree catalog;
    uint64_t n_quotas;
    uint64_t version;
    uint64_t now_ms; /* max leader clock seen: never goes back */
    struct sess_tree sessions;
    struct sess_list lru;
    unsigned n_sessions;
    struct node_addr nodes[FSM_NODES_MAX];
    unsigned n_nodes;
};

struct fsm
{
    struct raft_fsm raft;
    struct fsm_state *st;
    struct fsm_batch_result batch; /* results of the last apply */
    unsigned batch_cap;
};

/* Copy of the msgpack string p[0..len) (not NUL-terminated). Not strndup():
 * the sanitizers' strict_string_checks treat its argument as a C string and
 * read past the end of a buffer whose last bytes are this string. */
static char *str_dup(const char *p, size_t len)
{
    char *s = malloc(len + 1);
    if (s != NULL) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

static void result_clear(struct fsm_result *r)
{
    free(r->message);
    memset(r, 0, sizeof *r);
}

static int result_copy(struct fsm_result *dst, const struct fsm_result *src)
{
    *dst = *src;
    dst->message = NULL;
    if (src->message != NULL) {
        dst->message = strdup(src->message);
        if (dst->message == NULL) {
            return ALLOT_ENOMEM;
        }
    }
    return 0;
}

static void result_error(struct fsm_result *r, int code, const char *msg)
{
    result_clear(r);
    r->code = code;
    r->message = msg != NULL ? strdup(msg) : NULL;
}

static struct fsm_state *state_new(void)
{
    struct fsm_state *st = calloc(1, sizeof *st);
    if (st != NULL) {
        RB_INIT(&st->catalog);
        RB_INIT(&st->sessions);
        TAILQ_INIT(&st->lru);
    }
    return st;
}

static void session_free(struct session *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        result_clear(&s->results[i].res);
    }
    free(s->results);
    free(s);
}

static void state_free(struct fsm_state *st)
{
    if (st == NULL) {
        return;
    }
    struct cat_node *c, *cn;
    RB_FOREACH_SAFE(c, cat_tree, &st->catalog, cn)
    {
        RB_REMOVE(cat_tree, &st->catalog, c);
        quota_free(&c->q);
        free(c);
    }
    struct session *s, *sn;
    RB_FOREACH_SAFE(s, sess_tree, &st->sessions, sn)
    {
        RB_REMOVE(sess_tree, &st->sessions, s);
        session_free(s);
    }
    for (unsigned i = 0; i < st->n_nodes; i++) {
        free(st->nodes[i].addr);
    }
    free(st);
}

/* --- Session logic
 * --------------------------------------------------------------- */

static void session_drop(struct fsm_state *st, struct session *s)
{
    RB_REMOVE(sess_tree, &st->sessions, s);
    TAILQ_REMOVE(&st->lru, s, lru);
    st->n_sessions--;
    session_free(s);
}

/* Forget sessions idle past the TTL, and the least recently used ones beyond
 * the limit. Both depend only on the log, so every replica forgets the same
 * sessions at the same entry. */
static void sessions_expire(struct fsm_state *st)
{
    struct session *s;
    while ((s = TAILQ_FIRST(&st->lru)) != NULL) {
        bool idle = st->now_ms > s->last_ms &&
                    st->now_ms - s->last_ms > FSM_SESSION_TTL_MS;
        if (!idle && st->n_sessions <= FSM_SESSIONS_MAX) {
            break;
        }
        session_drop(st, s);
    }
}

static struct session *session_get(struct fsm_state *st, uint64_t client,
                                   bool create)
{
    struct session key = {.client = client};
    struct session *s = RB_FIND(sess_tree, &st->sessions, &key);
    if (s != NULL || !create) {
        return s;
    }
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        return NULL;
    }
    s->client = client;
    RB_INSERT(sess_tree, &st->sessions, s);
    TAILQ_INSERT_TAIL(&st->lru, s, lru);
    st->n_sessions++;
    return s;
}

/* Drop remembered results the client has acknowledged. */
static void session_ack(struct session *s, uint64_t ack)
{
    if (ack <= s->ack) {
        return;
    }
    s->ack = ack;
    unsigned keep = 0;
    while (keep < s->n && s->results[keep].seq < ack) {
        result_clear(&s->results[keep].res);
        keep++;
    }
    if (keep == 0) {
        return; /* nothing dropped; results may still be NULL */
    }
    memmove(s->results, s->results + keep, (s->n - keep) * sizeof *s->results);
    s->n -= keep;
}

static struct sess_result *session_find(struct session *s, uint64_t seq)
{
    unsigned lo = 0, hi = s->n;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (s->results[mid].seq < seq) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < s->n && s->results[lo].seq == seq ? &s->results[lo] : NULL;
}

static int session_remember(struct session *s, uint64_t seq,
                            const struct fsm_result *r)
{
    if (s->n == FSM_SESSION_RESULTS_MAX) {
        /* A client that never acknowledges: forget its oldest result. A retry
         * of that one request could then apply twice; documented bound. */
        result_clear(&s->results[0].res);
        memmove(s->results, s->results + 1, (s->n - 1) * sizeof *s->results);
        s->n--;
    }
    if (s->n == s->cap) {
        unsigned cap = s->cap ? s->cap * 2 : 4;
        struct sess_result *p = realloc(s->results, cap * sizeof *p);
        if (p == NULL) {
            return ALLOT_ENOMEM;
        }
        s->results = p;
        s->cap = cap;
    }
    unsigned pos = s->n;
    while (pos > 0 && s->results[pos - 1].seq > seq) {
        pos--;
    }
    memmove(s->results + pos + 1, s->results + pos,
            (s->n - pos) * sizeof *s->results);
    s->results[pos].seq = seq;
    int rv = result_copy(&s->results[pos].res, r);
    if (rv != 0) {
        memmove(s->results + pos, s->results + pos + 1,
                (s->n - pos) * sizeof *s->results);
        return rv;
    }
    s->n++;
    return 0;
}

/* --- Commands
 * -------------------------------------------------------------------- */

static struct cat_node *cat_find(const struct fsm_state *st, const char *path,
                                 size_t len)
{
    char buf[QUOTA_PATH_MAX + 1];
    if (len > QUOTA_PATH_MAX) {
        return NULL;
    }
    memcpy(buf, path, len);
    buf[len] = '\0';
    struct cat_node key = {.q = {.path = buf}};
    return RB_FIND(cat_tree, (struct cat_tree *)&st->catalog, &key);
}

static int check_if_version(const struct cat_node *c, const char *path,
                            bool has, uint64_t want, char *msg)
{
    if (!has) {
        return 0;
    }
    uint64_t have = c != NULL ? c->q.version : 0;
    if (have == want) {
        return 0;
    }
    if (c == NULL) {
        return allot_errf(msg, ALLOT_ECONFLICT,
                          "quota %s does not exist (version 0), not version "
                          "%llu",
                          path, (unsigned long long)want);
    }
    return allot_errf(msg, ALLOT_ECONFLICT,
                      "quota %s is at version %llu, not %llu", path,
                      (unsigned long long)have, (unsigned long long)want);
}

static void apply_set(struct fsm_state *st, const char *path, size_t path_len,
                      const struct quota_fields *patch, bool has_if,
                      uint64_t if_version, struct fsm_result *r)
{
    char msg[ALLOT_ERRMSG_SIZE];
    char p[QUOTA_PATH_MAX + 1];
    int rv = quota_path_check(path, path_len, msg);
    if (rv == 0) {
        rv = quota_patch_check(patch, msg);
    }
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    memcpy(p, path, path_len);
    p[path_len] = '\0';
    struct cat_node *c = cat_find(st, path, path_len);
    rv = check_if_version(c, p, has_if, if_version, msg);
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    struct quota_fields next;
    if (c != NULL) {
        next = c->q.f;
    } else {
        rv = quota_fields_defaults(patch, &next, msg);
        if (rv != 0) {
            result_error(r, rv, msg);
            return;
        }
    }
    rv = quota_fields_merge(&next, patch, msg);
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    if (c == NULL) {
        c = calloc(1, sizeof *c);
        if (c == NULL || (c->q.path = strdup(p)) == NULL) {
            free(c);
            result_error(r, ALLOT_ENOMEM, NULL);
            return;
        }
        c->q.created_ms = st->now_ms;
        RB_INSERT(cat_tree, &st->catalog, c);
        st->n_quotas++;
    }
    st->version++;
    c->q.f = next;
    c->q.version = st->version;
    c->q.updated_ms = st->now_ms;
    result_clear(r);
    r->version = st->version;
    r->created_ms = c->q.created_ms;
    r->updated_ms = c->q.updated_ms;
    r->fields = c->q.f;
}

static void apply_rm(struct fsm_state *st, const char *path, size_t path_len,
                     bool has_if, uint64_t if_version, struct fsm_result *r)
{
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = quota_path_check(path, path_len, msg);
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    struct cat_node *c = cat_find(st, path, path_len);
    if (c == NULL) {
        allot_errf(msg, ALLOT_ENOT_FOUND, "no quota at %.*s", (int)path_len,
                   path);
        result_error(r, ALLOT_ENOT_FOUND, msg);
        return;
    }
    rv = check_if_version(c, c->q.path, has_if, if_version, msg);
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    RB_REMOVE(cat_tree, &st->catalog, c);
    st->n_quotas--;
    quota_free(&c->q);
    free(c);
    st->version++;
    result_clear(r);
    r->version = st->version;
}

static void apply_leader(struct fsm_state *st, uint64_t id, const char *addr,
                         size_t len, struct fsm_result *r)
{
    result_clear(r);
    for (unsigned i = 0; i < st->n_nodes; i++) {
        if (st->nodes[i].id == id) {
            char *a = str_dup(addr, len);
            if (a == NULL) {
                result_error(r, ALLOT_ENOMEM, NULL);
                return;
            }
            free(st->nodes[i].addr);
            st->nodes[i].addr = a;
            return;
        }
    }
    if (st->n_nodes == FSM_NODES_MAX) {
        /* Forget the oldest announcement: ids of long-gone nodes. */
        free(st->nodes[0].addr);
        memmove(st->nodes, st->nodes + 1,
                (st->n_nodes - 1) * sizeof st->nodes[0]);
        st->n_nodes--;
    }
    st->nodes[st->n_nodes].addr = str_dup(addr, len);
    if (st->nodes[st->n_nodes].addr == NULL) {
        result_error(r, ALLOT_ENOMEM, NULL);
        return;
    }
    st->nodes[st->n_nodes].id = id;
    st->n_nodes++;
}

/* Read element i of a command array as u64 (nil reads as absent). */
static bool arr_u64(const msgpack_object *a, uint32_t i, uint64_t *out)
{
    if (i >= a->via.array.size ||
        a->via.array.ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return false;
    }
    *out = a->via.array.ptr[i].via.u64;
    return true;
}

static bool arr_str(const msgpack_object *a, uint32_t i, const char **s,
                    size_t *len)
{
    if (i >= a->via.array.size ||
        a->via.array.ptr[i].type != MSGPACK_OBJECT_STR) {
        return false;
    }
    *s = a->via.array.ptr[i].via.str.ptr;
    *len = a->via.array.ptr[i].via.str.size;
    return true;
}

static bool arr_nil(const msgpack_object *a, uint32_t i)
{
    return i < a->via.array.size &&
           a->via.array.ptr[i].type == MSGPACK_OBJECT_NIL;
}

static void apply_cmd(struct fsm_state *st, const msgpack_object *cmd,
                      struct fsm_result *r)
{
    uint64_t type, client, seq, ack;
    if (cmd->type != MSGPACK_OBJECT_ARRAY || !arr_u64(cmd, 0, &type) ||
        !arr_u64(cmd, 1, &client) || !arr_u64(cmd, 2, &seq) ||
        !arr_u64(cmd, 3, &ack)) {
        result_error(r, ALLOT_EINTERNAL, "malformed command in log");
        return;
    }
    struct session *s = NULL;
    if (client != 0) {
        s = session_get(st, client, true);
        if (s == NULL) {
            result_error(r, ALLOT_ENOMEM, NULL);
            return;
        }
        s->last_ms = st->now_ms;
        TAILQ_REMOVE(&st->lru, s, lru);
        TAILQ_INSERT_TAIL(&st->lru, s, lru);
        session_ack(s, ack);
        if (seq < s->ack) {
            result_error(r, ALLOT_EINVALID,
                         "request already acknowledged by this client");
            return;
        }
        struct sess_result *prev = session_find(s, seq);
        if (prev != NULL) {
            result_clear(r);
            if (result_copy(r, &prev->res) != 0) {
                result_error(r, ALLOT_ENOMEM, NULL);
                return;
            }
            r->duplicate = true;
            return;
        }
    }

    const char *path;
    size_t path_len;
    uint64_t if_version = 0;
    switch (type) {
    case FSM_CMD_QUOTA_SET: {
        char msg[ALLOT_ERRMSG_SIZE];
        struct quota_fields patch;
        bool has_if = arr_u64(cmd, 6, &if_version);
        if (!arr_str(cmd, 4, &path, &path_len) || cmd->via.array.size != 7 ||
            (!has_if && !arr_nil(cmd, 6))) {
            result_error(r, ALLOT_EINTERNAL, "malformed set command in log");
            break;
        }
        int rv = quota_patch_unpack(&cmd->via.array.ptr[5], &patch, msg);
        if (rv != 0) {
            result_error(r, rv, msg);
            break;
        }
        apply_set(st, path, path_len, &patch, has_if, if_version, r);
        break;
    }
    case FSM_CMD_QUOTA_RM: {
        bool has_if = arr_u64(cmd, 5, &if_version);
        if (!arr_str(cmd, 4, &path, &path_len) || cmd->via.array.size != 6 ||
            (!has_if && !arr_nil(cmd, 5))) {
            result_error(r, ALLOT_EINTERNAL, "malformed rm command in log");
            break;
        }
        apply_rm(st, path, path_len, has_if, if_version, r);
        break;
    }
    case FSM_CMD_LEADER: {
        uint64_t id;
        if (!arr_u64(cmd, 4, &id) || !arr_str(cmd, 5, &path, &path_len) ||
            path_len > 255) {
            result_error(r, ALLOT_EINTERNAL, "malformed leader command");
            break;
        }
        apply_leader(st, id, path, path_len, r);
        break;
    }
    default:
        result_error(r, ALLOT_EINTERNAL, "unknown command type in log");
        break;
    }
    if (s != NULL && session_remember(s, seq, r) != 0) {
        /* Out of memory remembering: the change stands, but a retry would
         * apply again. Nothing better is possible without failing apply. */
    }
}

static int batch_reserve(struct fsm *f, unsigned n)
{
    for (unsigned i = 0; i < f->batch.n; i++) {
        result_clear(&f->batch.results[i]);
    }
    f->batch.n = 0;
    if (n <= f->batch_cap) {
        return 0;
    }
    struct fsm_result *p = realloc(f->batch.results, n * sizeof *p);
    if (p == NULL) {
        return ALLOT_ENOMEM;
    }
    memset(p + f->batch_cap, 0, (n - f->batch_cap) * sizeof *p);
    f->batch.results = p;
    f->batch_cap = n;
    return 0;
}

static bool zero_padding(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != 0) {
            return false;
        }
    }
    return true;
}

static int fsm_apply_cb(struct raft_fsm *rf, const struct raft_buffer *buf,
                        void **result)
{
    struct fsm *f = rf->data;
    struct fsm_state *st = f->st;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    *result = &f->batch;

    uint64_t format, time_ms;
    const msgpack_object *cmds = NULL;
    size_t used = 0;
    int rv = wire_check_prefix(buf->base, buf->len, &used, NULL);
    if (rv == 0 &&
        (buf->len - used >= 8 ||
         !zero_padding((const char *)buf->base + used, buf->len - used))) {
        rv = ALLOT_EPROTOCOL;
    }
    if (rv == 0) {
        rv = wire_unpack(buf->base, used, &u, NULL);
    }
    if (rv == 0) {
        const msgpack_object *root = &u.data;
        if (root->type == MSGPACK_OBJECT_ARRAY && root->via.array.size == 3 &&
            arr_u64(root, 0, &format) && format == BATCH_FORMAT &&
            arr_u64(root, 1, &time_ms) &&
            root->via.array.ptr[2].type == MSGPACK_OBJECT_ARRAY &&
            root->via.array.ptr[2].via.array.size <= FSM_BATCH_MAX) {
            cmds = &root->via.array.ptr[2];
        }
    }
    if (cmds == NULL) {
        /* Not ours (or corrupt): nothing to apply. The leader's caller sees
         * zero results and answers each of its requests with an error. */
        batch_reserve(f, 0);
        msgpack_unpacked_destroy(&u);
        return 0;
    }
    if (time_ms > st->now_ms) {
        st->now_ms = time_ms;
    }
    if (batch_reserve(f, cmds->via.array.size) != 0) {
        msgpack_unpacked_destroy(&u);
        return 0;
    }
    for (uint32_t i = 0; i < cmds->via.array.size; i++) {
        apply_cmd(st, &cmds->via.array.ptr[i], &f->batch.results[i]);
        f->batch.n++;
    }
    sessions_expire(st);
    msgpack_unpacked_destroy(&u);
    return 0;
}

int fsm_batch_encode(const struct fsm_cmd *cmds, unsigned n, uint64_t time_ms,
                     struct raft_buffer *out)
{
    if (n == 0 || n > FSM_BATCH_MAX) {
        return ALLOT_EINVALID;
    }
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, BATCH_FORMAT);
    msgpack_pack_uint64(&pk, time_ms);
    msgpack_pack_array(&pk, n);
    for (unsigned i = 0; i < n; i++) {
        const struct fsm_cmd *c = &cmds[i];
        switch (c->type) {
        case FSM_CMD_QUOTA_SET:
            msgpack_pack_array(&pk, 7);
            break;
        case FSM_CMD_QUOTA_RM:
        case FSM_CMD_LEADER:
            msgpack_pack_array(&pk, 6);
            break;
        default:
            msgpack_sbuffer_destroy(&sb);
            return ALLOT_EINVALID;
        }
        msgpack_pack_uint64(&pk, (uint64_t)c->type);
        msgpack_pack_uint64(&pk, c->client);
        msgpack_pack_uint64(&pk, c->seq);
        msgpack_pack_uint64(&pk, c->ack);
        if (c->type == FSM_CMD_LEADER) {
            msgpack_pack_uint64(&pk, c->node_id);
            wire_pack_str(&pk, c->node_addr);
            continue;
        }
        wire_pack_strn(&pk, c->path, c->path_len);
        if (c->type == FSM_CMD_QUOTA_SET) {
            msgpack_pack_map(&pk, quota_fields_pack(NULL, &c->patch, true));
            quota_fields_pack(&pk, &c->patch, true);
        }
        if (c->has_if_version) {
            msgpack_pack_uint64(&pk, c->if_version);
        } else {
            msgpack_pack_nil(&pk);
        }
    }
    /* raft frees entry buffers with raft_free(): hand it raft memory. Its
     * disk format also needs every entry to be a multiple of 8 bytes (0.15
     * only asserts it in debug builds, and silently writes segments that
     * fail their checksum on load otherwise): pad with zeros, which apply
     * skips. */
    size_t padded = (sb.size + 7) & ~(size_t)7;
    out->base = raft_malloc(padded);
    if (out->base == NULL) {
        msgpack_sbuffer_destroy(&sb);
        return ALLOT_ENOMEM;
    }
    memcpy(out->base, sb.data, sb.size);
    memset((char *)out->base + sb.size, 0, padded - sb.size);
    out->len = padded;
    msgpack_sbuffer_destroy(&sb);
    return 0;
}

/* --- Snapshots
 * -------------------------------------------------------------------- */

static void pack_result(msgpack_packer *pk, uint64_t seq,
                        const struct fsm_result *r)
{
    msgpack_pack_array(pk, 7);
    msgpack_pack_uint64(pk, seq);
    msgpack_pack_int64(pk, r->code);
    if (r->message != NULL) {
        wire_pack_str(pk, r->message);
    } else {
        msgpack_pack_nil(pk);
    }
    msgpack_pack_uint64(pk, r->version);
    msgpack_pack_uint64(pk, r->created_ms);
    msgpack_pack_uint64(pk, r->updated_ms);
    msgpack_pack_map(pk, quota_fields_pack(NULL, &r->fields, false));
    quota_fields_pack(pk, &r->fields, false);
}

static void pack_state(msgpack_packer *pk, const struct fsm_state *st)
{
    msgpack_pack_map(pk, 6);
    wire_pack_kv_u64(pk, "format", SNAPSHOT_FORMAT);
    wire_pack_kv_u64(pk, "version", st->version);
    wire_pack_kv_u64(pk, "now_ms", st->now_ms);
    wire_pack_str(pk, "quotas");
    msgpack_pack_array(pk, (uint32_t)st->n_quotas);
    struct cat_node *c;
    RB_FOREACH(c, cat_tree, (struct cat_tree *)&st->catalog)
    {
        quota_pack(pk, &c->q);
    }
    wire_pack_str(pk, "sessions");
    msgpack_pack_array(pk, st->n_sessions);
    struct session *s;
    /* In LRU order, so restore rebuilds the same eviction order. */
    TAILQ_FOREACH(s, &st->lru, lru)
    {
        msgpack_pack_array(pk, 4);
        msgpack_pack_uint64(pk, s->client);
        msgpack_pack_uint64(pk, s->ack);
        msgpack_pack_uint64(pk, s->last_ms);
        msgpack_pack_array(pk, s->n);
        for (unsigned i = 0; i < s->n; i++) {
            pack_result(pk, s->results[i].seq, &s->results[i].res);
        }
    }
    wire_pack_str(pk, "nodes");
    msgpack_pack_array(pk, st->n_nodes);
    for (unsigned i = 0; i < st->n_nodes; i++) {
        msgpack_pack_array(pk, 2);
        msgpack_pack_uint64(pk, st->nodes[i].id);
        wire_pack_str(pk, st->nodes[i].addr);
    }
}

static int fsm_snapshot_cb(struct raft_fsm *rf, struct raft_buffer *bufs[],
                           unsigned *n_bufs)
{
    struct fsm *f = rf->data;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack_state(&pk, f->st);
    *bufs = raft_malloc(sizeof **bufs);
    if (*bufs == NULL) {
        msgpack_sbuffer_destroy(&sb);
        return RAFT_NOMEM;
    }
    /* The sbuffer's memory came from malloc; raft may free with raft_free
     * (plain free by default), and finalize frees it with free() below. */
    (*bufs)[0].base = sb.data;
    (*bufs)[0].len = sb.size;
    *n_bufs = 1;
    return 0;
}

static int fsm_snapshot_finalize_cb(struct raft_fsm *rf,
                                    struct raft_buffer *bufs[],
                                    unsigned *n_bufs)
{
    (void)rf;
    if (*bufs != NULL) {
        for (unsigned i = 0; i < *n_bufs; i++) {
            free((*bufs)[i].base);
        }
        raft_free(*bufs);
    }
    *bufs = NULL;
    *n_bufs = 0;
    return 0;
}

static int unpack_result(const msgpack_object *a, uint64_t *seq,
                         struct fsm_result *r)
{
    int64_t code;
    memset(r, 0, sizeof *r);
    if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size != 7 ||
        !arr_u64(a, 0, seq)) {
        return ALLOT_EPROTOCOL;
    }
    const msgpack_object *c = &a->via.array.ptr[1];
    if (c->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        code = (int64_t)c->via.u64;
    } else if (c->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        code = c->via.i64;
    } else {
        return ALLOT_EPROTOCOL;
    }
    if (code > 0 || code < ALLOT_EMIN) {
        return ALLOT_EPROTOCOL;
    }
    r->code = (int)code;
    const char *msg;
    size_t len;
    if (arr_str(a, 2, &msg, &len)) {
        r->message = str_dup(msg, len);
        if (r->message == NULL) {
            return ALLOT_ENOMEM;
        }
    } else if (!arr_nil(a, 2)) {
        return ALLOT_EPROTOCOL;
    }
    if (!arr_u64(a, 3, &r->version) || !arr_u64(a, 4, &r->created_ms) ||
        !arr_u64(a, 5, &r->updated_ms)) {
        result_clear(r);
        return ALLOT_EPROTOCOL;
    }
    if (quota_patch_unpack(&a->via.array.ptr[6], &r->fields, NULL) != 0) {
        result_clear(r);
        return ALLOT_EPROTOCOL;
    }
    /* Exactly the fields pack_result() writes for this kind. */
    for (unsigned i = 0; i < QF_COUNT; i++) {
        bool applies =
            quota_field_applies(&quota_field_table[i], r->fields.kind);
        if (applies != ((r->fields.set & (1u << i)) != 0)) {
            result_clear(r);
            return ALLOT_EPROTOCOL;
        }
    }
    r->fields.set = 0;
    return 0;
}

static int unpack_session(struct fsm_state *st, const msgpack_object *a)
{
    uint64_t client;
    if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size != 4 ||
        !arr_u64(a, 0, &client) || client == 0 ||
        a->via.array.ptr[3].type != MSGPACK_OBJECT_ARRAY ||
        a->via.array.ptr[3].via.array.size > FSM_SESSION_RESULTS_MAX) {
        return ALLOT_EPROTOCOL;
    }
    if (session_get(st, client, false) != NULL) {
        return ALLOT_EPROTOCOL;
    }
    struct session *s = session_get(st, client, true);
    if (s == NULL) {
        return ALLOT_ENOMEM;
    }
    if (!arr_u64(a, 1, &s->ack) || !arr_u64(a, 2, &s->last_ms)) {
        return ALLOT_EPROTOCOL;
    }
    const msgpack_object *rs = &a->via.array.ptr[3];
    for (uint32_t i = 0; i < rs->via.array.size; i++) {
        uint64_t seq;
        struct fsm_result r;
        int rv = unpack_result(&rs->via.array.ptr[i], &seq, &r);
        if (rv == 0) {
            rv = session_remember(s, seq, &r);
        }
        result_clear(&r);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}

static int unpack_state(const msgpack_object *root, struct fsm_state *st)
{
    uint64_t format;
    const msgpack_object *quotas = wire_map_get(root, "quotas");
    const msgpack_object *sessions = wire_map_get(root, "sessions");
    const msgpack_object *nodes = wire_map_get(root, "nodes");
    if (wire_get_u64(root, "format", true, &format, NULL) != 0 ||
        format != SNAPSHOT_FORMAT ||
        wire_get_u64(root, "version", true, &st->version, NULL) != 0 ||
        wire_get_u64(root, "now_ms", true, &st->now_ms, NULL) != 0 ||
        quotas == NULL || quotas->type != MSGPACK_OBJECT_ARRAY ||
        sessions == NULL || sessions->type != MSGPACK_OBJECT_ARRAY ||
        nodes == NULL || nodes->type != MSGPACK_OBJECT_ARRAY ||
        nodes->via.array.size > FSM_NODES_MAX) {
        return ALLOT_EPROTOCOL;
    }
    for (uint32_t i = 0; i < quotas->via.array.size; i++) {
        struct cat_node *c = calloc(1, sizeof *c);
        if (c == NULL) {
            return ALLOT_ENOMEM;
        }
        int rv = quota_unpack(&quotas->via.array.ptr[i], &c->q, NULL);
        if (rv != 0) {
            quota_free(&c->q);
            free(c);
            return rv;
        }
        if (RB_INSERT(cat_tree, &st->catalog, c) != NULL) {
            quota_free(&c->q);
            free(c);
            return ALLOT_EPROTOCOL; /* duplicate path */
        }
        st->n_quotas++;
    }
    for (uint32_t i = 0; i < sessions->via.array.size; i++) {
        int rv = unpack_session(st, &sessions->via.array.ptr[i]);
        if (rv != 0) {
            return rv;
        }
    }
    for (uint32_t i = 0; i < nodes->via.array.size; i++) {
        const msgpack_object *n = &nodes->via.array.ptr[i];
        const char *addr;
        size_t len;
        if (n->type != MSGPACK_OBJECT_ARRAY || n->via.array.size != 2 ||
            !arr_u64(n, 0, &st->nodes[i].id) || !arr_str(n, 1, &addr, &len)) {
            return ALLOT_EPROTOCOL;
        }
        st->nodes[i].addr = str_dup(addr, len);
        if (st->nodes[i].addr == NULL) {
            return ALLOT_ENOMEM;
        }
        st->n_nodes++;
    }
    return 0;
}

static int fsm_restore_cb(struct raft_fsm *rf, struct raft_buffer *buf)
{
    struct fsm *f = rf->data;
    struct fsm_state *st = state_new();
    if (st == NULL) {
        return RAFT_NOMEM;
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rv = wire_unpack(buf->base, buf->len, &u, NULL);
    if (rv == 0) {
        rv = unpack_state(&u.data, st);
    }
    msgpack_unpacked_destroy(&u);
    if (rv != 0) {
        state_free(st);
        return rv == ALLOT_ENOMEM ? RAFT_NOMEM : RAFT_MALFORMED;
    }
    state_free(f->st);
    f->st = st;
    /* On success the buffer is ours (canonical/raft's restore contract). */
    raft_free(buf->base);
    return 0;
}

/* --- Lifecycle and reads
 * -------------------------------------------------------- */

int fsm_init(struct fsm **out)
{
    struct fsm *f = calloc(1, sizeof *f);
    if (f == NULL) {
        return ALLOT_ENOMEM;
    }
    f->st = state_new();
    if (f->st == NULL) {
        free(f);
        return ALLOT_ENOMEM;
    }
    f->raft.version = 2;
    f->raft.data = f;
    f->raft.apply = fsm_apply_cb;
    f->raft.snapshot = fsm_snapshot_cb;
    f->raft.snapshot_finalize = fsm_snapshot_finalize_cb;
    f->raft.restore = fsm_restore_cb;
    *out = f;
    return 0;
}

void fsm_close(struct fsm *f)
{
    if (f == NULL) {
        return;
    }
    batch_reserve(f, 0);
    free(f->batch.results);
    state_free(f->st);
    free(f);
}

struct raft_fsm *fsm_raft(struct fsm *f)
{
    return &f->raft;
}

uint64_t fsm_catalog_version(const struct fsm *f)
{
    return f->st->version;
}

uint64_t fsm_quota_count(const struct fsm *f)
{
    return f->st->n_quotas;
}

unsigned fsm_session_count(const struct fsm *f)
{
    return f->st->n_sessions;
}

const struct quota *fsm_get(const struct fsm *f, const char *path,
                            size_t path_len)
{
    struct cat_node *c = cat_find(f->st, path, path_len);
    return c != NULL ? &c->q : NULL;
}

/* First node with path >= key (key need not be NUL-terminated). */
static struct cat_node *cat_lower_bound(const struct fsm_state *st,
                                        const char *key, size_t len)
{
    char buf[QUOTA_PATH_MAX + 2];
    if (len > QUOTA_PATH_MAX + 1) {
        len = QUOTA_PATH_MAX + 1;
    }
    memcpy(buf, key, len);
    buf[len] = '\0';
    struct cat_node probe = {.q = {.path = buf}};
    return RB_NFIND(cat_tree, (struct cat_tree *)&st->catalog, &probe);
}

void fsm_ls(const struct fsm *f, const char *prefix, size_t prefix_len,
            const char *after, size_t after_len, unsigned limit, fsm_ls_cb cb,
            void *arg, bool *more)
{
    const struct fsm_state *st = f->st;
    struct cat_node *c;
    *more = false;
    /* An `after` that sorts before the prefix starts at the prefix. */
    size_t common = after_len < prefix_len ? after_len : prefix_len;
    int cmp = after != NULL && common > 0 ? memcmp(after, prefix, common) : 0;
    if (after != NULL && (cmp > 0 || (cmp == 0 && after_len >= prefix_len))) {
        c = cat_lower_bound(st, after, after_len);
        if (c != NULL && strlen(c->q.path) == after_len &&
            memcmp(c->q.path, after, after_len) == 0) {
            c = RB_NEXT(cat_tree, &st->catalog, c);
        }
    } else {
        c = cat_lower_bound(st, prefix, prefix_len);
    }
    unsigned n = 0;
    for (; c != NULL; c = RB_NEXT(cat_tree, &st->catalog, c)) {
        const char *p = c->q.path;
        if (prefix_len > 0) {
            /* Paths sort so that prefix, then prefix-x..., then prefix/...:
             * skip siblings that merely share the characters. */
            if (strncmp(p, prefix, prefix_len) != 0) {
                break;
            }
            if (p[prefix_len] != '\0' && p[prefix_len] != '/') {
                continue;
            }
        }
        if (n == limit) {
            *more = true;
            break;
        }
        cb(arg, &c->q);
        n++;
    }
}

const char *fsm_node_addr(const struct fsm *f, uint64_t id)
{
    for (unsigned i = 0; i < f->st->n_nodes; i++) {
        if (f->st->nodes[i].id == id) {
            return f->st->nodes[i].addr;
        }
    }
    return NULL;
}

void fsm_digest(const struct fsm *f, char hex[65])
{
    crypto_generichash_state h;
    unsigned char out[32];
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    crypto_generichash_init(&h, NULL, 0, sizeof out);
    msgpack_pack_uint64(&pk, f->st->version);
    struct cat_node *c;
    RB_FOREACH(c, cat_tree, (struct cat_tree *)&f->st->catalog)
    {
        quota_pack(&pk, &c->q);
        /* Hash in pieces so a large catalog never needs one big buffer. */
        if (sb.size > 65536) {
            crypto_generichash_update(&h, (unsigned char *)sb.data, sb.size);
            msgpack_sbuffer_clear(&sb);
        }
    }
    crypto_generichash_update(&h, (unsigned char *)sb.data, sb.size);
    crypto_generichash_final(&h, out, sizeof out);
    msgpack_sbuffer_destroy(&sb);
    sodium_bin2hex(hex, 65, out, sizeof out);
}
