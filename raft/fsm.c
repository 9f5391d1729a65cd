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
#include <time.h>

#include "../proto/wire.h"
#include "audit.h"
/* Last: they define __unused for the BSD tree macros. */
#include "access.h"
#include "catalog.h"

/* Layouts changed freely before the first release; from then on a change
 * bumps these and keeps a decoder for the old one. */
#define BATCH_FORMAT    1
#define SNAPSHOT_FORMAT 1

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
    struct fsm_validator validators[FSM_VALIDATORS_MAX]; /* by name */
    unsigned n_validators;
    struct catalog cat;
    struct access acc;
    struct audit_log audit;
    uint64_t version;
    uint64_t now_ms; /* max leader clock seen: never goes back */
    /* The clock sessions idle by: advanced with now_ms, but by at most
     * FSM_SESSION_STEP_MAX_MS per entry, so one entry from a leader whose
     * wall clock jumped ahead cannot forget every session at once (a write
     * retried across that entry would apply twice; docs/fault-testing.md,
     * F2). A function of the log alone, like now_ms. */
    uint64_t session_clock_ms;
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
    struct fsm_stats stats;
};

/* Copy of the msgpack string p[0..len) (not NUL-terminated). Not strndup():
 * the sanitizers' strict_string_checks treat its argument as a C string and
 * read past the end of a buffer whose last bytes are this string. */
static char *str_dup(const char *p, size_t len)
{
    char *s = malloc(len + 1);
    if (s != NULL) {
        if (len > 0) { /* msgpack-c gives "" a NULL pointer */
            memcpy(s, p, len);
        }
        s[len] = '\0';
    }
    return s;
}

static void pack_opt_u64(msgpack_packer *pk, bool has, uint64_t v)
{
    if (has) {
        msgpack_pack_uint64(pk, v);
    } else {
        msgpack_pack_nil(pk);
    }
}

/* Free n strings (not the array). */
static void strv_clear(char **v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        free(v[i]);
    }
}

static void strv_free(char **v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        free(v[i]);
    }
    free(v);
}

/* Deep copy of n strings; NULL with n > 0 means out of memory. */
static char **strv_dup(char *const *v, uint32_t n)
{
    if (n == 0) {
        return NULL;
    }
    char **out = calloc(n, sizeof *out);
    for (uint32_t i = 0; out != NULL && i < n; i++) {
        out[i] = strdup(v[i]);
        if (out[i] == NULL) {
            strv_free(out, i);
            return NULL;
        }
    }
    return out;
}

static void result_clear(struct fsm_result *r)
{
    free(r->message);
    strv_free(r->owners, r->n_owners);
    strv_free(r->labels, r->n_labels);
    memset(r, 0, sizeof *r);
}

static int result_copy(struct fsm_result *dst, const struct fsm_result *src)
{
    *dst = *src;
    dst->message = NULL;
    dst->owners = NULL;
    dst->n_owners = 0;
    dst->labels = NULL;
    dst->n_labels = 0;
    if (src->message != NULL) {
        dst->message = strdup(src->message);
        if (dst->message == NULL) {
            return ALLOT_ENOMEM;
        }
    }
    if (src->n_owners > 0) {
        dst->owners = strv_dup(src->owners, src->n_owners);
        if (dst->owners == NULL) {
            return ALLOT_ENOMEM;
        }
        dst->n_owners = src->n_owners;
    }
    if (src->n_labels > 0) {
        dst->labels = strv_dup(src->labels, src->n_labels);
        if (dst->labels == NULL) {
            return ALLOT_ENOMEM;
        }
        dst->n_labels = src->n_labels;
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
        catalog_init(&st->cat);
        access_init(&st->acc);
        audit_init(&st->audit);
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
    catalog_free(&st->cat);
    access_free(&st->acc);
    audit_free(&st->audit);
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
        bool idle = st->session_clock_ms > s->last_ms &&
                    st->session_clock_ms - s->last_ms > FSM_SESSION_TTL_MS;
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

/* Who and what a command is, for its audit records. */
struct change
{
    struct fsm_state *st;
    const char *principal; /* "" on an --insecure cluster */
    const char *actor;     /* for the audit: principal, or what acted */
    uint64_t client;
    uint64_t seq;
    const char *op;
};

/* msgpack bytes of one quota, or NULL (out of memory: the record then shows
 * no value rather than failing the change). */
static char *encode_quota(const struct quota *q, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    quota_pack(&pk, q);
    return audit_take_bytes(&sb, len);
}

static char *dup_cstr(const char *s)
{
    return str_dup(s, strlen(s));
}

/* Append the audit record of one change at version v. Takes old/new. */
static void record(const struct change *ch, uint64_t v, const char *path,
                   char *old_value, size_t old_len, char *new_value,
                   size_t new_len)
{
    struct fsm_state *st = ch->st;
    struct audit_record rec = {
        .version = v,
        .time_ms = st->now_ms,
        .client = ch->client,
        .seq = ch->seq,
        .principal = dup_cstr(ch->actor != NULL          ? ch->actor
                              : ch->principal[0] != '\0' ? ch->principal
                                                         : "anonymous"),
        .op = dup_cstr(ch->op),
        .path = dup_cstr(path),
        .old_value = old_value,
        .old_len = old_len,
        .new_value = new_value,
        .new_len = new_len,
    };
    /* A failure here loses one record, never the change: apply cannot fail
     * without stalling raft. */
    audit_append(&st->audit, &rec, st->now_ms);
}

/* Owner edits of one quota.set, as decoded from the command. */
struct owner_edit
{
    const msgpack_object *add; /* array of str, or NULL */
    const msgpack_object *rm;
};

#define OWNER_MAX_LEN (AUTH_NAME_MAX + 6) /* "group:" + name */

/* Copy a command's owner list into buf as C strings; -1 if malformed. */
static int owner_list(const msgpack_object *a, char (*buf)[OWNER_MAX_LEN + 1],
                      uint32_t *n)
{
    *n = 0;
    if (a == NULL) {
        return 0;
    }
    if (a->type != MSGPACK_OBJECT_ARRAY ||
        a->via.array.size > QUOTA_OWNERS_MAX) {
        return -1;
    }
    for (uint32_t i = 0; i < a->via.array.size; i++) {
        const msgpack_object *o = &a->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR ||
            !quota_owner_valid(o->via.str.ptr, o->via.str.size)) {
            return -1;
        }
        wire_memcpy(buf[i], o->via.str.ptr, o->via.str.size);
        buf[i][o->via.str.size] = '\0';
    }
    *n = a->via.array.size;
    return 0;
}

static bool list_has(char (*v)[OWNER_MAX_LEN + 1], uint32_t n, const char *s)
{
    for (uint32_t i = 0; i < n; i++) {
        if (strcmp(v[i], s) == 0) {
            return true;
        }
    }
    return false;
}

/* The owners a set leaves: the current ones (for a new quota, its creator),
 * plus the added, minus the removed, in that order. On success *rv is 0 and
 * the result (NULL when empty) is the caller's. */
static char **owners_after(const struct change *ch, const struct cat_node *c,
                           const struct owner_edit *e, uint32_t *n, int *rv,
                           char *msg)
{
    char add[QUOTA_OWNERS_MAX][OWNER_MAX_LEN + 1];
    char rm[QUOTA_OWNERS_MAX][OWNER_MAX_LEN + 1];
    char next[2 * QUOTA_OWNERS_MAX + 1][OWNER_MAX_LEN + 1];
    uint32_t n_add, n_rm, k = 0;
    *n = 0;
    if (owner_list(e->add, add, &n_add) != 0 ||
        owner_list(e->rm, rm, &n_rm) != 0) {
        *rv = allot_errf(msg, ALLOT_EINVALID,
                         "owners are user:NAME or group:NAME, at most %d",
                         QUOTA_OWNERS_MAX);
        return NULL;
    }
    if (c != NULL) {
        for (uint32_t i = 0; i < c->q.n_owners && k < QUOTA_OWNERS_MAX; i++) {
            snprintf(next[k++], sizeof next[0], "%.*s", OWNER_MAX_LEN,
                     c->q.owners[i]);
        }
    } else if (ch->principal[0] != '\0') {
        snprintf(next[k++], sizeof next[0], "user:%.*s", AUTH_NAME_MAX,
                 ch->principal);
    }
    for (uint32_t i = 0; i < n_add; i++) {
        if (!list_has(next, k, add[i])) {
            memcpy(next[k++], add[i], sizeof next[0]);
        }
    }
    char **out = calloc(k + 1, sizeof *out);
    uint32_t m = 0;
    for (uint32_t i = 0; out != NULL && i < k; i++) {
        if (list_has(rm, n_rm, next[i])) {
            continue;
        }
        out[m] = strdup(next[i]);
        if (out[m] == NULL) {
            strv_free(out, m);
            out = NULL;
            break;
        }
        m++;
    }
    if (out == NULL) {
        *rv = ALLOT_ENOMEM;
        return NULL;
    }
    if (m > QUOTA_OWNERS_MAX) {
        strv_free(out, m);
        *rv = allot_errf(msg, ALLOT_EINVALID, "a quota has at most %d owners",
                         QUOTA_OWNERS_MAX);
        return NULL;
    }
    if (m == 0) {
        free(out);
        out = NULL;
    }
    *rv = 0;
    *n = m;
    return out;
}

static int cmp_label(const void *x, const void *y)
{
    const char *a = *(char *const *)x, *b = *(char *const *)y;
    size_t ka = strcspn(a, "="), kb = strcspn(b, "=");
    int c = memcmp(a, b, ka < kb ? ka : kb);
    return c != 0 ? c : (ka > kb) - (ka < kb);
}

/* The labels a set leaves: the current ones with the command's edits (a
 * map key -> value, nil removing), sorted by key. */
static char **labels_after(const struct cat_node *c, const msgpack_object *e,
                           uint32_t *n, int *rv, char *msg)
{
    char *tmp[2 * QUOTA_LABELS_MAX];
    uint32_t k = 0;
    *rv = 0;
    *n = 0;
    if (e != NULL &&
        (e->type != MSGPACK_OBJECT_MAP || e->via.map.size > QUOTA_LABELS_MAX)) {
        *rv = allot_errf(msg, ALLOT_EINVALID,
                         "labels: a map of at most %d edits", QUOTA_LABELS_MAX);
        return NULL;
    }
    for (uint32_t i = 0; c != NULL && i < c->q.n_labels; i++) {
        tmp[k] = strdup(c->q.labels[i]);
        if (tmp[k] == NULL) {
            goto nomem;
        }
        k++;
    }
    for (uint32_t i = 0; e != NULL && i < e->via.map.size; i++) {
        const msgpack_object *key = &e->via.map.ptr[i].key;
        const msgpack_object *val = &e->via.map.ptr[i].val;
        bool remove = val->type == MSGPACK_OBJECT_NIL;
        if (key->type != MSGPACK_OBJECT_STR ||
            (!remove && val->type != MSGPACK_OBJECT_STR) ||
            !quota_label_valid(key->via.str.ptr, key->via.str.size,
                               remove ? "" : val->via.str.ptr,
                               remove ? 0 : val->via.str.size)) {
            strv_clear(tmp, k);
            *rv = allot_errf(msg, ALLOT_EINVALID,
                             "a label key is [A-Za-z0-9_./-]{1,63}; a value "
                             "up to 255 printable bytes");
            return NULL;
        }
        /* Drop the current value of this key, then add the new one. */
        for (uint32_t j = 0; j < k; j++) {
            if (strcspn(tmp[j], "=") == key->via.str.size &&
                memcmp(tmp[j], key->via.str.ptr, key->via.str.size) == 0) {
                free(tmp[j]);
                tmp[j] = tmp[--k];
                break;
            }
        }
        if (remove) {
            continue;
        }
        if (k == QUOTA_LABELS_MAX) {
            strv_clear(tmp, k);
            *rv = allot_errf(msg, ALLOT_EINVALID,
                             "a quota has at most %d labels", QUOTA_LABELS_MAX);
            return NULL;
        }
        tmp[k] = malloc(key->via.str.size + val->via.str.size + 2);
        if (tmp[k] == NULL) {
            goto nomem;
        }
        wire_memcpy(tmp[k], key->via.str.ptr, key->via.str.size);
        tmp[k][key->via.str.size] = '=';
        wire_memcpy(tmp[k] + key->via.str.size + 1, val->via.str.ptr,
                    val->via.str.size);
        tmp[k][key->via.str.size + 1 + val->via.str.size] = '\0';
        k++;
    }
    if (k == 0) {
        return NULL;
    }
    qsort(tmp, k, sizeof tmp[0], cmp_label);
    char **out = malloc(k * sizeof *out);
    if (out == NULL) {
        goto nomem;
    }
    memcpy(out, tmp, k * sizeof *out);
    *n = k;
    return out;
nomem:
    strv_clear(tmp, k);
    *rv = ALLOT_ENOMEM;
    return NULL;
}

static void apply_set(const struct change *ch, const char *path,
                      size_t path_len, const struct quota_fields *patch,
                      const struct owner_edit *owners,
                      const msgpack_object *labels, bool has_if,
                      uint64_t if_version, struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    char p[QUOTA_PATH_MAX + 1];
    bool edits_owners = (owners->add != NULL && owners->add->via.array.size) ||
                        (owners->rm != NULL && owners->rm->via.array.size) ||
                        (labels != NULL && labels->type == MSGPACK_OBJECT_MAP &&
                         labels->via.map.size > 0);
    int rv = quota_path_check(path, path_len, msg);
    if (rv == 0 && (patch->set != 0 || !edits_owners)) {
        rv = quota_patch_check(patch, msg);
    }
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    memcpy(p, path, path_len);
    p[path_len] = '\0';
    struct cat_node *c = catalog_find(&st->cat, path, path_len);
    rv = access_may_change(&st->acc, &st->cat, ch->principal, path, path_len,
                           msg);
    if (rv == 0) {
        rv = check_if_version(c, p, has_if, if_version, msg);
    }
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
    if (rv == 0) {
        rv = catalog_check_set(&st->cat, path, path_len, c, &next, msg);
    }
    uint32_t n_owners = 0, n_labels = 0;
    char **new_owners = NULL, **new_labels = NULL;
    if (rv == 0) {
        new_owners = owners_after(ch, c, owners, &n_owners, &rv, msg);
    }
    if (rv == 0) {
        new_labels = labels_after(c, labels, &n_labels, &rv, msg);
    }
    if (rv != 0) {
        strv_free(new_owners, n_owners);
        result_error(r, rv, msg);
        return;
    }
    size_t old_len = 0, new_len = 0;
    char *old_value = c != NULL ? encode_quota(&c->q, &old_len) : NULL;
    struct cat_node *put =
        catalog_put(&st->cat, path, path_len, c, &next, new_owners, n_owners,
                    new_labels, n_labels, st->version + 1, st->now_ms);
    if (put == NULL) {
        strv_free(new_owners, n_owners);
        strv_free(new_labels, n_labels);
        free(old_value);
        result_error(r, ALLOT_ENOMEM, NULL);
        return;
    }
    c = put;
    st->version++;
    char *new_value = encode_quota(&c->q, &new_len);
    record(ch, st->version, p, old_value, old_len, new_value, new_len);
    result_clear(r);
    r->version = st->version;
    r->created_ms = c->q.created_ms;
    r->updated_ms = c->q.updated_ms;
    r->fields = c->q.f;
    r->owners = strv_dup(c->q.owners, c->q.n_owners);
    r->n_owners = r->owners != NULL ? c->q.n_owners : 0;
    r->labels = strv_dup(c->q.labels, c->q.n_labels);
    r->n_labels = r->labels != NULL ? c->q.n_labels : 0;
}

/* One removed quota: its own version and audit record, in path order. */
static void on_removed(void *arg, const struct quota *q)
{
    const struct change *ch = arg;
    size_t len = 0;
    char *old_value = encode_quota(q, &len);
    ch->st->version++;
    record(ch, ch->st->version, q->path, old_value, len, NULL, 0);
}

static void apply_rm(const struct change *ch, const char *path, size_t path_len,
                     bool has_if, uint64_t if_version, bool recursive,
                     struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = quota_path_check(path, path_len, msg);
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    struct cat_node *c = catalog_find(&st->cat, path, path_len);
    if (c == NULL) {
        allot_errf(msg, ALLOT_ENOT_FOUND, "no quota at %.*s", (int)path_len,
                   path);
        result_error(r, ALLOT_ENOT_FOUND, msg);
        return;
    }
    rv = access_may_change(&st->acc, &st->cat, ch->principal, path, path_len,
                           msg);
    if (rv == 0) {
        rv = check_if_version(c, c->q.path, has_if, if_version, msg);
    }
    if (rv == 0) {
        rv = catalog_check_rm(&st->cat, c, recursive, msg);
    }
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    /* Each removed quota is one change: a recursive removal of n quotas
     * advances the catalog version by n, so a watcher sees every one. */
    uint64_t removed = catalog_remove(&st->cat, c, on_removed, (void *)ch);
    result_clear(r);
    r->version = st->version;
    r->removed = removed;
}

static char *encode_capacity(const struct fsm_capacity *c, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    wire_pack_str(&pk, "memory_mb");
    pack_opt_u64(&pk, c->has_memory_mb, c->memory_mb);
    wire_pack_str(&pk, "vcores");
    pack_opt_u64(&pk, c->has_vcores, c->vcores);
    return audit_take_bytes(&sb, len);
}

static void apply_capacity(const struct change *ch,
                           const struct fsm_capacity *patch,
                           struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    struct fsm_capacity next = st->cat.capacity;
    int allowed = access_may_admin(&st->acc, ch->principal,
                                   "declare the cluster capacity", msg);
    if (allowed != 0) {
        result_error(r, allowed, msg);
        return;
    }
    if (patch->has_memory_mb) {
        next.has_memory_mb = true;
        next.memory_mb = patch->memory_mb;
    }
    if (patch->has_vcores) {
        next.has_vcores = true;
        next.vcores = patch->vcores;
    }
    int rv = catalog_check_capacity(&st->cat, &next, msg);
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    size_t old_len, new_len;
    char *old_value = encode_capacity(&st->cat.capacity, &old_len);
    st->cat.capacity = next;
    st->version++;
    char *new_value = encode_capacity(&next, &new_len);
    record(ch, st->version, "", old_value, old_len, new_value, new_len);
    result_clear(r);
    r->version = st->version;
}

static char *encode_audit_config(const struct audit_log *a, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    wire_pack_kv_u64(&pk, "max_records", a->max_records);
    wire_pack_kv_u64(&pk, "max_age_ms", a->max_age_ms);
    return audit_take_bytes(&sb, len);
}

static void apply_audit_config(const struct change *ch, bool has_records,
                               uint64_t max_records, bool has_age,
                               uint64_t max_age_ms, struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    int allowed = access_may_admin(&st->acc, ch->principal,
                                   "change the audit retention", msg);
    if (allowed != 0) {
        result_error(r, allowed, msg);
        return;
    }
    if (has_records && max_records > AUDIT_MAX_RECORDS_LIMIT) {
        allot_errf(msg, ALLOT_EINVALID, "max_records must be at most %d",
                   AUDIT_MAX_RECORDS_LIMIT);
        result_error(r, ALLOT_EINVALID, msg);
        return;
    }
    size_t old_len, new_len;
    char *old_value = encode_audit_config(&st->audit, &old_len);
    if (has_records) {
        st->audit.max_records = max_records;
    }
    if (has_age) {
        st->audit.max_age_ms = max_age_ms;
    }
    st->version++;
    char *new_value = encode_audit_config(&st->audit, &new_len);
    /* Recorded first, so a shrinking bound cannot hide its own record. */
    record(ch, st->version, "", old_value, old_len, new_value, new_len);
    audit_expire(&st->audit, st->now_ms);
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

static char *encode_principal(const struct principal *p, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    char hex[65];
    auth_pubkey_hex(p->pk, hex);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    wire_pack_kv_str(&pk, "name", p->name);
    wire_pack_kv_str(&pk, "pubkey", hex);
    wire_pack_str(&pk, "admin");
    if (p->admin) {
        msgpack_pack_true(&pk);
    } else {
        msgpack_pack_false(&pk);
    }
    return audit_take_bytes(&sb, len);
}

static void apply_principal_add(const struct change *ch, const char *name,
                                const unsigned char pk[32], bool admin,
                                struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = access_may_admin(&st->acc, ch->principal, "add principals", msg);
    if (rv == 0) {
        rv = access_add_principal(&st->acc, name, pk, admin, msg);
    }
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    size_t len;
    char *value = encode_principal(access_principal(&st->acc, name), &len);
    st->version++;
    record(ch, st->version, "", NULL, 0, value, len);
    result_clear(r);
    r->version = st->version;
}

static void apply_principal_rm(const struct change *ch, const char *name,
                               struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    int rv =
        access_may_admin(&st->acc, ch->principal, "remove principals", msg);
    const struct principal *p = access_principal(&st->acc, name);
    size_t len = 0;
    char *value = NULL;
    if (rv == 0 && p == NULL) {
        rv = allot_errf(msg, ALLOT_ENOT_FOUND, "no principal %s", name);
    }
    if (rv == 0) {
        value = encode_principal(p, &len);
        rv = access_rm_principal(&st->acc, name, msg);
    }
    if (rv != 0) {
        free(value);
        result_error(r, rv, msg);
        return;
    }
    st->version++;
    record(ch, st->version, "", value, len, NULL, 0);
    result_clear(r);
    r->version = st->version;
}

static char *encode_group(const char *name, char *const *members, uint32_t n,
                          size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    wire_pack_kv_str(&pk, "group", name);
    wire_pack_str(&pk, "members");
    msgpack_pack_array(&pk, n);
    for (uint32_t i = 0; i < n; i++) {
        wire_pack_str(&pk, members[i]);
    }
    return audit_take_bytes(&sb, len);
}

static void apply_group(const struct change *ch, bool add, const char *name,
                        const char *const *members, uint32_t n,
                        struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = access_may_admin(&st->acc, ch->principal, "manage groups", msg);
    if (rv == 0) {
        rv = add ? access_group_add(&st->acc, name, members, n, msg)
                 : access_group_rm(&st->acc, name, msg);
    }
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    size_t len;
    char *value = encode_group(name, (char *const *)members, n, &len);
    st->version++;
    record(ch, st->version, "", add ? NULL : value, add ? 0 : len,
           add ? value : NULL, add ? len : 0);
    result_clear(r);
    r->version = st->version;
}

/* A name argument as a C string in buf (AUTH_NAME_MAX + 1). */
static bool arr_name(const msgpack_object *a, uint32_t i, char *buf)
{
    const char *s;
    size_t len;
    if (!arr_str(a, i, &s, &len) || !auth_name_valid(s, len)) {
        return false;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    return true;
}

static void apply_token_create(const struct change *ch, const char *subject,
                               const unsigned char hash[32], uint64_t ttl_ms,
                               struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = 0;
    /* A principal may give itself a token; tokens for others are admin
     * work. */
    if (strcmp(subject, ch->principal) != 0) {
        rv = access_may_admin(&st->acc, ch->principal,
                              "create tokens for other principals", msg);
    }
    if (rv == 0 && access_principal(&st->acc, subject) == NULL) {
        rv = allot_errf(msg, ALLOT_ENOT_FOUND, "no principal %s", subject);
    }
    if (rv == 0 && (ttl_ms == 0 || ttl_ms > 366ull * 24 * 3600 * 1000)) {
        rv = allot_errf(msg, ALLOT_EINVALID,
                        "a token lives from 1 ms to 366 days");
    }
    access_tokens_expire(&st->acc, st->now_ms);
    if (rv == 0) {
        rv = access_token_add(&st->acc, hash, subject, st->now_ms,
                              st->now_ms + ttl_ms, msg);
    }
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    msgpack_sbuffer sb;
    msgpack_packer pk;
    char id[17];
    sodium_bin2hex(id, sizeof id, hash, 8);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    wire_pack_kv_str(&pk, "token_id", id);
    wire_pack_kv_str(&pk, "principal", subject);
    wire_pack_kv_u64(&pk, "expires_ms", st->now_ms + ttl_ms);
    size_t len;
    char *value = audit_take_bytes(&sb, &len);
    st->version++;
    record(ch, st->version, "", NULL, 0, value, len);
    result_clear(r);
    r->version = st->version;
    r->created_ms = st->now_ms + ttl_ms; /* the reply's expires_ms */
}

static void apply_token_revoke(const struct change *ch,
                               const unsigned char id[8], struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    const struct token *t = access_token_by_id(&st->acc, id);
    int rv = 0;
    if (t == NULL) {
        rv = allot_errf(msg, ALLOT_ENOT_FOUND, "no such token");
    } else if (strcmp(t->principal, ch->principal) != 0) {
        rv = access_may_admin(&st->acc, ch->principal,
                              "revoke other principals' tokens", msg);
    }
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    char idhex[17];
    sodium_bin2hex(idhex, sizeof idhex, id, 8);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    wire_pack_kv_str(&pk, "token_id", idhex);
    wire_pack_kv_str(&pk, "principal", t->principal);
    size_t len;
    char *value = audit_take_bytes(&sb, &len);
    access_token_remove(&st->acc, t);
    st->version++;
    record(ch, st->version, "", value, len, NULL, 0);
    result_clear(r);
    r->version = st->version;
}

static void pack_validator(msgpack_packer *pk, const struct fsm_validator *v)
{
    msgpack_pack_map(pk, 6);
    wire_pack_kv_str(pk, "name", v->name);
    wire_pack_kv_str(pk, "prefix", v->prefix);
    wire_pack_kv_str(pk, v->is_url ? "url" : "exec", v->target);
    wire_pack_str(pk, "kind");
    wire_pack_str(pk, v->is_url ? "url" : "exec");
    wire_pack_kv_u64(pk, "timeout_ms", v->timeout_ms);
    wire_pack_str(pk, "fail_open");
    if (v->fail_open) {
        msgpack_pack_true(pk);
    } else {
        msgpack_pack_false(pk);
    }
}

static char *encode_validator(const struct fsm_validator *v, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack_validator(&pk, v);
    return audit_take_bytes(&sb, len);
}

static int validator_find(const struct fsm_state *st, const char *name)
{
    for (unsigned i = 0; i < st->n_validators; i++) {
        if (strcmp(st->validators[i].name, name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static void apply_validator_add(const struct change *ch,
                                const struct fsm_validator *v,
                                struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    int rv =
        access_may_admin(&st->acc, ch->principal, "manage validators", msg);
    if (rv == 0 && validator_find(st, v->name) >= 0) {
        rv = allot_errf(msg, ALLOT_EEXISTS, "validator %s exists", v->name);
    }
    if (rv == 0 && st->n_validators == FSM_VALIDATORS_MAX) {
        rv = allot_errf(msg, ALLOT_EINVALID, "at most %d validators",
                        FSM_VALIDATORS_MAX);
    }
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    unsigned pos = st->n_validators;
    while (pos > 0 && strcmp(st->validators[pos - 1].name, v->name) > 0) {
        st->validators[pos] = st->validators[pos - 1];
        pos--;
    }
    st->validators[pos] = *v;
    st->n_validators++;
    size_t len;
    char *value = encode_validator(v, &len);
    st->version++;
    record(ch, st->version, v->prefix, NULL, 0, value, len);
    result_clear(r);
    r->version = st->version;
}

static void apply_validator_rm(const struct change *ch, const char *name,
                               struct fsm_result *r)
{
    struct fsm_state *st = ch->st;
    char msg[ALLOT_ERRMSG_SIZE];
    int rv =
        access_may_admin(&st->acc, ch->principal, "manage validators", msg);
    int i = rv == 0 ? validator_find(st, name) : -1;
    if (rv == 0 && i < 0) {
        rv = allot_errf(msg, ALLOT_ENOT_FOUND, "no validator %s", name);
    }
    if (rv != 0) {
        result_error(r, rv, msg);
        return;
    }
    size_t len;
    char *value = encode_validator(&st->validators[i], &len);
    char prefix[QUOTA_PATH_MAX + 1];
    strcpy(prefix, st->validators[i].prefix);
    memmove(&st->validators[i], &st->validators[i + 1],
            (st->n_validators - (unsigned)i - 1) * sizeof st->validators[0]);
    st->n_validators--;
    st->version++;
    record(ch, st->version, prefix, value, len, NULL, 0);
    result_clear(r);
    r->version = st->version;
}

/* Decode a validator from its map form (command args and snapshots). */
static int unpack_validator(const msgpack_object *m, struct fsm_validator *v)
{
    const char *s;
    size_t len;
    uint64_t t;
    memset(v, 0, sizeof *v);
    if (wire_get_str(m, "name", true, &s, &len, NULL) != 0 ||
        !auth_name_valid(s, len)) {
        return ALLOT_EPROTOCOL;
    }
    memcpy(v->name, s, len);
    if (wire_get_str(m, "prefix", true, &s, &len, NULL) != 0 ||
        len > QUOTA_PATH_MAX ||
        (len > 0 && quota_path_check(s, len, NULL) != 0)) {
        return ALLOT_EPROTOCOL;
    }
    memcpy(v->prefix, s, len);
    const msgpack_object *kind = wire_map_get(m, "kind");
    if (kind == NULL ||
        !(wire_str_eq(kind, "url") || wire_str_eq(kind, "exec"))) {
        return ALLOT_EPROTOCOL;
    }
    v->is_url = wire_str_eq(kind, "url");
    if (wire_get_str(m, v->is_url ? "url" : "exec", true, &s, &len, NULL) !=
            0 ||
        len == 0 || len > FSM_VALIDATOR_TARGET_MAX) {
        return ALLOT_EPROTOCOL;
    }
    memcpy(v->target, s, len);
    if (wire_get_u64(m, "timeout_ms", true, &t, NULL) != 0 || t == 0 ||
        t > 60000 || wire_get_bool(m, "fail_open", true, &v->fail_open, NULL)) {
        return ALLOT_EPROTOCOL;
    }
    v->timeout_ms = (uint32_t)t;
    return 0;
}

/* A new leader's --admin list: applied only while the cluster has no
 * principal at all, so the first leader of a new cluster creates its first
 * admins and every later LEADER entry changes nothing. */
static void bootstrap_admins(const struct change *ch, const msgpack_object *a)
{
    struct fsm_state *st = ch->st;
    if (st->acc.n_principals > 0) {
        return;
    }
    for (uint32_t i = 0; i < a->via.array.size; i++) {
        const msgpack_object *e = &a->via.array.ptr[i];
        char name[AUTH_NAME_MAX + 1];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2 ||
            !arr_name(e, 0, name) ||
            e->via.array.ptr[1].type != MSGPACK_OBJECT_BIN ||
            e->via.array.ptr[1].via.bin.size != 32) {
            continue;
        }
        struct fsm_result ignored = {0};
        struct change boot = *ch;
        boot.principal = ""; /* the cluster itself */
        boot.actor = "bootstrap";
        apply_principal_add(
            &boot, name, (const unsigned char *)e->via.array.ptr[1].via.bin.ptr,
            true, &ignored);
        result_clear(&ignored);
    }
}

/* Header of every command: [type, client, seq, ack, principal, args...]. */
#define CMD_HEADER 5

static void apply_cmd(struct fsm_state *st, const msgpack_object *cmd,
                      struct fsm_result *r)
{
    uint64_t type, client, seq, ack;
    const char *principal;
    size_t principal_len;
    if (cmd->type != MSGPACK_OBJECT_ARRAY || !arr_u64(cmd, 0, &type) ||
        !arr_u64(cmd, 1, &client) || !arr_u64(cmd, 2, &seq) ||
        !arr_u64(cmd, 3, &ack) ||
        !arr_str(cmd, 4, &principal, &principal_len) || principal_len > 255) {
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
        s->last_ms = st->session_clock_ms;
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

    /* The arguments, as an array of their own. */
    msgpack_object args = {.type = MSGPACK_OBJECT_ARRAY};
    args.via.array.size = cmd->via.array.size - CMD_HEADER;
    args.via.array.ptr = cmd->via.array.ptr + CMD_HEADER;
    const msgpack_object *av = &args;
    uint32_t n_args = args.via.array.size;

    char who[256];
    if (principal_len > 0) { /* msgpack-c gives "" a NULL pointer */
        memcpy(who, principal, principal_len);
    }
    who[principal_len] = '\0';
    struct change ch = {
        .st = st, .principal = who, .client = client, .seq = seq};
    const char *path;
    size_t path_len;
    uint64_t if_version = 0;
    switch (type) {
    case FSM_CMD_QUOTA_SET: {
        char msg[ALLOT_ERRMSG_SIZE];
        struct quota_fields patch;
        bool has_if = arr_u64(av, 2, &if_version);
        if (n_args != 6 || !arr_str(av, 0, &path, &path_len) ||
            (!has_if && !arr_nil(av, 2)) ||
            av->via.array.ptr[3].type != MSGPACK_OBJECT_ARRAY ||
            av->via.array.ptr[4].type != MSGPACK_OBJECT_ARRAY) {
            result_error(r, ALLOT_EINTERNAL, "malformed set command in log");
            break;
        }
        int rv = quota_patch_unpack(&av->via.array.ptr[1], &patch, msg);
        if (rv != 0) {
            result_error(r, rv, msg);
            break;
        }
        struct owner_edit owners = {.add = &av->via.array.ptr[3],
                                    .rm = &av->via.array.ptr[4]};
        ch.op = "quota.set";
        apply_set(&ch, path, path_len, &patch, &owners, &av->via.array.ptr[5],
                  has_if, if_version, r);
        break;
    }
    case FSM_CMD_QUOTA_RM: {
        bool has_if = arr_u64(av, 1, &if_version);
        const msgpack_object *rec = n_args == 3 ? &av->via.array.ptr[2] : NULL;
        if (!arr_str(av, 0, &path, &path_len) || rec == NULL ||
            rec->type != MSGPACK_OBJECT_BOOLEAN ||
            (!has_if && !arr_nil(av, 1))) {
            result_error(r, ALLOT_EINTERNAL, "malformed rm command in log");
            break;
        }
        ch.op = "quota.rm";
        apply_rm(&ch, path, path_len, has_if, if_version, rec->via.boolean, r);
        break;
    }
    case FSM_CMD_CAPACITY_SET: {
        struct fsm_capacity cap = {0};
        cap.has_memory_mb = arr_u64(av, 0, &cap.memory_mb);
        cap.has_vcores = arr_u64(av, 1, &cap.vcores);
        if (n_args != 2 || (!cap.has_memory_mb && !arr_nil(av, 0)) ||
            (!cap.has_vcores && !arr_nil(av, 1))) {
            result_error(r, ALLOT_EINTERNAL,
                         "malformed capacity command in log");
            break;
        }
        ch.op = "capacity.set";
        apply_capacity(&ch, &cap, r);
        break;
    }
    case FSM_CMD_AUDIT_CONFIG: {
        uint64_t records = 0, age = 0;
        bool has_records = arr_u64(av, 0, &records);
        bool has_age = arr_u64(av, 1, &age);
        if (n_args != 2 || (!has_records && !arr_nil(av, 0)) ||
            (!has_age && !arr_nil(av, 1))) {
            result_error(r, ALLOT_EINTERNAL,
                         "malformed audit config command in log");
            break;
        }
        ch.op = "audit.config";
        apply_audit_config(&ch, has_records, records, has_age, age, r);
        break;
    }
    case FSM_CMD_LEADER: {
        uint64_t id;
        if (n_args != 3 || !arr_u64(av, 0, &id) ||
            !arr_str(av, 1, &path, &path_len) || path_len > 255 ||
            av->via.array.ptr[2].type != MSGPACK_OBJECT_ARRAY) {
            result_error(r, ALLOT_EINTERNAL, "malformed leader command");
            break;
        }
        apply_leader(st, id, path, path_len, r);
        ch.op = "principal.add";
        bootstrap_admins(&ch, &av->via.array.ptr[2]);
        break;
    }
    case FSM_CMD_PRINCIPAL_ADD: {
        char name[AUTH_NAME_MAX + 1];
        const msgpack_object *key = n_args == 3 ? &av->via.array.ptr[1] : NULL;
        const msgpack_object *adm = n_args == 3 ? &av->via.array.ptr[2] : NULL;
        if (!arr_name(av, 0, name) || key == NULL ||
            key->type != MSGPACK_OBJECT_BIN || key->via.bin.size != 32 ||
            adm->type != MSGPACK_OBJECT_BOOLEAN) {
            result_error(r, ALLOT_EINTERNAL, "malformed principal command");
            break;
        }
        ch.op = "principal.add";
        apply_principal_add(&ch, name, (const unsigned char *)key->via.bin.ptr,
                            adm->via.boolean, r);
        break;
    }
    case FSM_CMD_TOKEN_CREATE: {
        char name[AUTH_NAME_MAX + 1];
        uint64_t ttl;
        const msgpack_object *h = n_args == 3 ? &av->via.array.ptr[0] : NULL;
        if (h == NULL || h->type != MSGPACK_OBJECT_BIN ||
            h->via.bin.size != 32 || !arr_name(av, 1, name) ||
            !arr_u64(av, 2, &ttl)) {
            result_error(r, ALLOT_EINTERNAL, "malformed token command");
            break;
        }
        ch.op = "token.create";
        apply_token_create(&ch, name, (const unsigned char *)h->via.bin.ptr,
                           ttl, r);
        break;
    }
    case FSM_CMD_VALIDATOR_ADD: {
        struct fsm_validator v;
        if (n_args != 1 || unpack_validator(&av->via.array.ptr[0], &v) != 0) {
            result_error(r, ALLOT_EINTERNAL, "malformed validator command");
            break;
        }
        ch.op = "validator.add";
        apply_validator_add(&ch, &v, r);
        break;
    }
    case FSM_CMD_VALIDATOR_RM: {
        char name[AUTH_NAME_MAX + 1];
        if (n_args != 1 || !arr_name(av, 0, name)) {
            result_error(r, ALLOT_EINTERNAL, "malformed validator command");
            break;
        }
        ch.op = "validator.rm";
        apply_validator_rm(&ch, name, r);
        break;
    }
    case FSM_CMD_TOKEN_REVOKE: {
        const msgpack_object *h = n_args == 1 ? &av->via.array.ptr[0] : NULL;
        if (h == NULL || h->type != MSGPACK_OBJECT_BIN ||
            h->via.bin.size != 8) {
            result_error(r, ALLOT_EINTERNAL, "malformed token command");
            break;
        }
        ch.op = "token.revoke";
        apply_token_revoke(&ch, (const unsigned char *)h->via.bin.ptr, r);
        break;
    }
    case FSM_CMD_PRINCIPAL_RM: {
        char name[AUTH_NAME_MAX + 1];
        if (n_args != 1 || !arr_name(av, 0, name)) {
            result_error(r, ALLOT_EINTERNAL, "malformed principal command");
            break;
        }
        ch.op = "principal.rm";
        apply_principal_rm(&ch, name, r);
        break;
    }
    case FSM_CMD_GROUP_ADD:
    case FSM_CMD_GROUP_RM: {
        char name[AUTH_NAME_MAX + 1];
        static char members[ACCESS_GROUP_MEMBERS_MAX][AUTH_NAME_MAX + 1];
        static const char *ptrs[ACCESS_GROUP_MEMBERS_MAX];
        bool add = type == FSM_CMD_GROUP_ADD;
        const msgpack_object *ms = n_args == 2 ? &av->via.array.ptr[1] : NULL;
        bool ok = arr_name(av, 0, name) && (add ? ms != NULL : n_args == 1);
        uint32_t n = 0;
        if (ok && add) {
            ok = ms->type == MSGPACK_OBJECT_ARRAY &&
                 ms->via.array.size <= ACCESS_GROUP_MEMBERS_MAX;
            for (uint32_t i = 0; ok && i < ms->via.array.size; i++) {
                ok = arr_name(ms, i, members[i]);
                ptrs[i] = members[i];
            }
            n = ok ? ms->via.array.size : 0;
        }
        if (!ok) {
            result_error(r, ALLOT_EINTERNAL, "malformed group command");
            break;
        }
        ch.op = add ? "group.add" : "group.rm";
        apply_group(&ch, add, name, ptrs, n, r);
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
        uint64_t step = time_ms - st->now_ms;
        st->session_clock_ms +=
            step < FSM_SESSION_STEP_MAX_MS ? step : FSM_SESSION_STEP_MAX_MS;
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
        uint32_t n_args;
        switch (c->type) {
        case FSM_CMD_QUOTA_SET:
            n_args = 6;
            break;
        case FSM_CMD_QUOTA_RM:
        case FSM_CMD_LEADER:
        case FSM_CMD_PRINCIPAL_ADD:
        case FSM_CMD_TOKEN_CREATE:
            n_args = 3;
            break;
        case FSM_CMD_CAPACITY_SET:
        case FSM_CMD_AUDIT_CONFIG:
        case FSM_CMD_GROUP_ADD:
            n_args = 2;
            break;
        case FSM_CMD_PRINCIPAL_RM:
        case FSM_CMD_GROUP_RM:
        case FSM_CMD_TOKEN_REVOKE:
        case FSM_CMD_VALIDATOR_ADD:
        case FSM_CMD_VALIDATOR_RM:
            n_args = 1;
            break;
        default:
            msgpack_sbuffer_destroy(&sb);
            return ALLOT_EINVALID;
        }
        msgpack_pack_array(&pk, CMD_HEADER + n_args);
        msgpack_pack_uint64(&pk, (uint64_t)c->type);
        msgpack_pack_uint64(&pk, c->client);
        msgpack_pack_uint64(&pk, c->seq);
        msgpack_pack_uint64(&pk, c->ack);
        wire_pack_str(&pk, c->principal != NULL ? c->principal : "");
        switch (c->type) {
        case FSM_CMD_LEADER:
            msgpack_pack_uint64(&pk, c->node_id);
            wire_pack_str(&pk, c->node_addr);
            msgpack_pack_array(&pk, c->n_admins);
            for (unsigned j = 0; j < c->n_admins; j++) {
                msgpack_pack_array(&pk, 2);
                wire_pack_str(&pk, c->admins[j].name);
                msgpack_pack_bin(&pk, 32);
                msgpack_pack_bin_body(&pk, c->admins[j].pk, 32);
            }
            break;
        case FSM_CMD_PRINCIPAL_ADD:
            wire_pack_str(&pk, c->subject);
            msgpack_pack_bin(&pk, 32);
            msgpack_pack_bin_body(&pk, c->pubkey, 32);
            if (c->admin) {
                msgpack_pack_true(&pk);
            } else {
                msgpack_pack_false(&pk);
            }
            break;
        case FSM_CMD_PRINCIPAL_RM:
        case FSM_CMD_GROUP_RM:
            wire_pack_str(&pk, c->subject);
            break;
        case FSM_CMD_TOKEN_CREATE:
            msgpack_pack_bin(&pk, 32);
            msgpack_pack_bin_body(&pk, c->token_hash, 32);
            wire_pack_str(&pk, c->subject);
            msgpack_pack_uint64(&pk, c->ttl_ms);
            break;
        case FSM_CMD_TOKEN_REVOKE:
            msgpack_pack_bin(&pk, 8);
            msgpack_pack_bin_body(&pk, c->token_hash, 8);
            break;
        case FSM_CMD_VALIDATOR_ADD:
            pack_validator(&pk, c->validator);
            break;
        case FSM_CMD_VALIDATOR_RM:
            wire_pack_str(&pk, c->subject);
            break;
        case FSM_CMD_GROUP_ADD:
            wire_pack_str(&pk, c->subject);
            msgpack_pack_array(&pk, c->n_members);
            for (uint32_t j = 0; j < c->n_members; j++) {
                wire_pack_str(&pk, c->members[j]);
            }
            break;
        case FSM_CMD_CAPACITY_SET:
            pack_opt_u64(&pk, c->capacity.has_memory_mb, c->capacity.memory_mb);
            pack_opt_u64(&pk, c->capacity.has_vcores, c->capacity.vcores);
            break;
        case FSM_CMD_AUDIT_CONFIG:
            pack_opt_u64(&pk, c->audit.has_max_records, c->audit.max_records);
            pack_opt_u64(&pk, c->audit.has_max_age_ms, c->audit.max_age_ms);
            break;
        case FSM_CMD_QUOTA_SET:
            wire_pack_strn(&pk, c->path, c->path_len);
            msgpack_pack_map(&pk, quota_fields_pack(NULL, &c->patch, true));
            quota_fields_pack(&pk, &c->patch, true);
            pack_opt_u64(&pk, c->has_if_version, c->if_version);
            msgpack_pack_array(&pk, c->n_owners_add);
            for (uint32_t j = 0; j < c->n_owners_add; j++) {
                wire_pack_str(&pk, c->owners_add[j]);
            }
            msgpack_pack_array(&pk, c->n_owners_rm);
            for (uint32_t j = 0; j < c->n_owners_rm; j++) {
                wire_pack_str(&pk, c->owners_rm[j]);
            }
            msgpack_pack_map(&pk, c->n_label_edits);
            for (uint32_t j = 0; j < c->n_label_edits; j++) {
                wire_pack_str(&pk, c->label_keys[j]);
                if (c->label_values[j] != NULL) {
                    wire_pack_str(&pk, c->label_values[j]);
                } else {
                    msgpack_pack_nil(&pk);
                }
            }
            break;
        case FSM_CMD_QUOTA_RM:
            wire_pack_strn(&pk, c->path, c->path_len);
            pack_opt_u64(&pk, c->has_if_version, c->if_version);
            if (c->recursive) {
                msgpack_pack_true(&pk);
            } else {
                msgpack_pack_false(&pk);
            }
            break;
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
    msgpack_pack_array(pk, 10);
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
    msgpack_pack_uint64(pk, r->removed);
    msgpack_pack_array(pk, r->n_owners);
    for (uint32_t i = 0; i < r->n_owners; i++) {
        wire_pack_str(pk, r->owners[i]);
    }
    msgpack_pack_array(pk, r->n_labels);
    for (uint32_t i = 0; i < r->n_labels; i++) {
        wire_pack_str(pk, r->labels[i]);
    }
}

static void pack_state(msgpack_packer *pk, const struct fsm_state *st)
{
    msgpack_pack_map(pk, 13);
    wire_pack_kv_u64(pk, "format", SNAPSHOT_FORMAT);
    wire_pack_str(pk, "validators");
    msgpack_pack_array(pk, st->n_validators);
    for (unsigned i = 0; i < st->n_validators; i++) {
        pack_validator(pk, &st->validators[i]);
    }
    wire_pack_str(pk, "tokens");
    access_pack_tokens(pk, &st->acc);
    wire_pack_str(pk, "principals");
    access_pack_principals(pk, &st->acc);
    wire_pack_str(pk, "groups");
    access_pack_groups(pk, &st->acc);
    wire_pack_str(pk, "audit");
    audit_pack(pk, &st->audit);
    wire_pack_kv_u64(pk, "version", st->version);
    wire_pack_kv_u64(pk, "now_ms", st->now_ms);
    wire_pack_kv_u64(pk, "session_clock_ms", st->session_clock_ms);
    wire_pack_str(pk, "capacity");
    msgpack_pack_array(pk, 2);
    pack_opt_u64(pk, st->cat.capacity.has_memory_mb,
                 st->cat.capacity.memory_mb);
    pack_opt_u64(pk, st->cat.capacity.has_vcores, st->cat.capacity.vcores);
    wire_pack_str(pk, "quotas");
    msgpack_pack_array(pk, (uint32_t)st->cat.n_quotas);
    for (struct cat_node *c = catalog_first(&st->cat); c != NULL;
         c = catalog_next(&st->cat, c)) {
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

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int fsm_snapshot_cb(struct raft_fsm *rf, struct raft_buffer *bufs[],
                           unsigned *n_bufs)
{
    struct fsm *f = rf->data;
    uint64_t start = mono_ns();
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
    f->stats.snapshots++;
    f->stats.last_snapshot_ns = mono_ns() - start;
    f->stats.snapshot_ns += f->stats.last_snapshot_ns;
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
    if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size != 10 ||
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
    const msgpack_object *owners = &a->via.array.ptr[8];
    if (!arr_u64(a, 7, &r->removed) || owners->type != MSGPACK_OBJECT_ARRAY ||
        owners->via.array.size > QUOTA_OWNERS_MAX) {
        result_clear(r);
        return ALLOT_EPROTOCOL;
    }
    if (owners->via.array.size > 0) {
        r->owners = calloc(owners->via.array.size, sizeof *r->owners);
        if (r->owners == NULL) {
            result_clear(r);
            return ALLOT_ENOMEM;
        }
    }
    for (uint32_t i = 0; i < owners->via.array.size; i++) {
        const char *o;
        size_t olen;
        if (!arr_str(owners, i, &o, &olen) || !quota_owner_valid(o, olen) ||
            (r->owners[i] = str_dup(o, olen)) == NULL) {
            result_clear(r);
            return ALLOT_EPROTOCOL;
        }
        r->n_owners++;
    }
    const msgpack_object *labels = &a->via.array.ptr[9];
    if (labels->type != MSGPACK_OBJECT_ARRAY ||
        labels->via.array.size > QUOTA_LABELS_MAX) {
        result_clear(r);
        return ALLOT_EPROTOCOL;
    }
    if (labels->via.array.size > 0) {
        r->labels = calloc(labels->via.array.size, sizeof *r->labels);
        if (r->labels == NULL) {
            result_clear(r);
            return ALLOT_ENOMEM;
        }
    }
    for (uint32_t i = 0; i < labels->via.array.size; i++) {
        const char *l;
        size_t llen;
        if (!arr_str(labels, i, &l, &llen) || memchr(l, '=', llen) == NULL ||
            (r->labels[i] = str_dup(l, llen)) == NULL) {
            result_clear(r);
            return ALLOT_EPROTOCOL;
        }
        r->n_labels++;
    }
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
    /* Snapshots written before the session clock existed: sessions idled
     * by now_ms then, so it starts there. */
    st->session_clock_ms = st->now_ms;
    int sc = wire_get_u64(root, "session_clock_ms", false,
                          &st->session_clock_ms, NULL);
    if (sc != 0 && sc != ALLOT_ENOT_FOUND) {
        return ALLOT_EPROTOCOL;
    }
    const msgpack_object *cap = wire_map_get(root, "capacity");
    if (cap == NULL || cap->type != MSGPACK_OBJECT_ARRAY ||
        cap->via.array.size != 2) {
        return ALLOT_EPROTOCOL;
    }
    struct fsm_capacity *c = &st->cat.capacity;
    c->has_memory_mb = arr_u64(cap, 0, &c->memory_mb);
    c->has_vcores = arr_u64(cap, 1, &c->vcores);
    if ((!c->has_memory_mb && !arr_nil(cap, 0)) ||
        (!c->has_vcores && !arr_nil(cap, 1))) {
        return ALLOT_EPROTOCOL;
    }
    for (uint32_t i = 0; i < quotas->via.array.size; i++) {
        struct cat_node *n = calloc(1, sizeof *n);
        if (n == NULL) {
            return ALLOT_ENOMEM;
        }
        int rv = quota_unpack(&quotas->via.array.ptr[i], &n->q, NULL);
        if (rv == 0) {
            rv = catalog_insert_restored(&st->cat, n);
        }
        if (rv != 0) {
            quota_free(&n->q);
            free(n);
            return rv;
        }
    }
    int rv = catalog_rebuild(&st->cat);
    if (rv == 0) {
        const msgpack_object *audit = wire_map_get(root, "audit");
        rv = audit != NULL ? audit_unpack(audit, &st->audit) : ALLOT_EPROTOCOL;
    }
    if (rv == 0) {
        rv = access_unpack(wire_map_get(root, "principals"),
                           wire_map_get(root, "groups"), &st->acc);
    }
    if (rv == 0) {
        rv = access_unpack_tokens(wire_map_get(root, "tokens"), &st->acc);
    }
    const msgpack_object *vs = wire_map_get(root, "validators");
    if (rv == 0 && (vs == NULL || vs->type != MSGPACK_OBJECT_ARRAY ||
                    vs->via.array.size > FSM_VALIDATORS_MAX)) {
        rv = ALLOT_EPROTOCOL;
    }
    for (uint32_t i = 0; rv == 0 && i < vs->via.array.size; i++) {
        rv = unpack_validator(&vs->via.array.ptr[i],
                              &st->validators[st->n_validators]);
        if (rv == 0 && st->n_validators > 0 &&
            strcmp(st->validators[st->n_validators - 1].name,
                   st->validators[st->n_validators].name) >= 0) {
            rv = ALLOT_EPROTOCOL; /* names sorted and unique */
        }
        st->n_validators += rv == 0;
    }
    if (rv != 0) {
        return rv;
    }
    for (uint32_t i = 0; i < sessions->via.array.size; i++) {
        rv = unpack_session(st, &sessions->via.array.ptr[i]);
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
    f->stats.restores++;
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

void fsm_catalog_digest(const struct fsm *f, char hex[33])
{
    sodium_bin2hex(hex, 33, f->st->cat.digest, sizeof f->st->cat.digest);
}

uint64_t fsm_quota_count(const struct fsm *f)
{
    return f->st->cat.n_quotas;
}

struct fsm_stats fsm_stats(const struct fsm *f)
{
    return f->stats;
}

unsigned fsm_session_count(const struct fsm *f)
{
    return f->st->n_sessions;
}

struct fsm_capacity fsm_capacity(const struct fsm *f)
{
    return f->st->cat.capacity;
}

void fsm_top_guaranteed(const struct fsm *f, uint64_t *memory_mb,
                        uint64_t *vcores)
{
    *memory_mb = f->st->cat.top.g_memory_mb;
    *vcores = f->st->cat.top.g_vcores;
}

const struct quota *fsm_get(const struct fsm *f, const char *path,
                            size_t path_len)
{
    struct cat_node *c = catalog_find(&f->st->cat, path, path_len);
    return c != NULL ? &c->q : NULL;
}

void fsm_ls(const struct fsm *f, const char *prefix, size_t prefix_len,
            const char *after, size_t after_len, unsigned limit, fsm_ls_cb cb,
            void *arg, bool *more)
{
    const struct catalog *cat = &f->st->cat;
    struct cat_node *c;
    *more = false;
    /* An `after` that sorts before the prefix starts at the prefix. */
    size_t common = after_len < prefix_len ? after_len : prefix_len;
    int cmp = after != NULL && common > 0 ? memcmp(after, prefix, common) : 0;
    if (after != NULL && (cmp > 0 || (cmp == 0 && after_len >= prefix_len))) {
        c = catalog_lower_bound(cat, after, after_len);
        if (c != NULL && strlen(c->q.path) == after_len &&
            memcmp(c->q.path, after, after_len) == 0) {
            c = catalog_next(cat, c);
        }
    } else {
        c = catalog_lower_bound(cat, prefix, prefix_len);
    }
    unsigned n = 0;
    for (; c != NULL; c = catalog_next(cat, c)) {
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

static bool audit_match(const struct audit_record *r,
                        const struct fsm_audit_query *q)
{
    if (q->now_ms > r->time_ms && q->now_ms - r->time_ms > q->max_age_ms) {
        return false; /* past retention, though not yet dropped */
    }
    if (r->time_ms < q->since_ms) {
        return false;
    }
    if (q->principal != NULL && strcmp(r->principal, q->principal) != 0) {
        return false;
    }
    if (q->prefix_len > 0) {
        if (strncmp(r->path, q->prefix, q->prefix_len) != 0) {
            return false;
        }
        char c = r->path[q->prefix_len];
        if (c != '\0' && c != '/') {
            return false;
        }
    }
    return true;
}

void fsm_audit_pack(const struct fsm *f, const struct fsm_audit_query *q,
                    msgpack_packer *pk)
{
    const struct audit_log *a = &f->st->audit;
    struct fsm_audit_query qq = *q;
    qq.now_ms = f->st->now_ms;
    qq.max_age_ms = a->max_age_ms;
    q = &qq;
    size_t idx[1000];
    unsigned limit = q->limit == 0 || q->limit > 1000 ? 1000 : q->limit;
    unsigned n = 0;
    bool more = false;
    for (size_t i = audit_after_version(a, q->after_version); i < a->n; i++) {
        if (!audit_match(audit_at(a, i), q)) {
            continue;
        }
        if (n == limit) {
            more = true;
            break;
        }
        idx[n++] = i;
    }
    msgpack_pack_map(pk, 5);
    wire_pack_kv_u64(pk, "max_records", a->max_records);
    wire_pack_kv_u64(pk, "max_age_ms", a->max_age_ms);
    wire_pack_str(pk, "more");
    if (more) {
        msgpack_pack_true(pk);
    } else {
        msgpack_pack_false(pk);
    }
    wire_pack_str(pk, "next");
    if (more) {
        msgpack_pack_uint64(pk, audit_at(a, idx[n - 1])->version);
    } else {
        msgpack_pack_nil(pk);
    }
    wire_pack_str(pk, "records");
    msgpack_pack_array(pk, n);
    for (unsigned i = 0; i < n; i++) {
        audit_pack_record(pk, audit_at(a, idx[i]));
    }
}

bool fsm_principal(const struct fsm *f, const char *name, unsigned char pk[32],
                   bool *admin)
{
    const struct principal *p = access_principal(&f->st->acc, name);
    if (p == NULL) {
        return false;
    }
    memcpy(pk, p->pk, 32);
    *admin = p->admin;
    return true;
}

bool fsm_token(const struct fsm *f, const unsigned char hash[32],
               char principal[65], uint64_t *expires_ms)
{
    const struct token *t = access_token(&f->st->acc, hash);
    if (t == NULL) {
        return false;
    }
    memcpy(principal, t->principal, sizeof t->principal);
    *expires_ms = t->expires_ms;
    return true;
}

void fsm_pack_tokens(const struct fsm *f, msgpack_packer *pk)
{
    access_pack_tokens(pk, &f->st->acc);
}

unsigned fsm_validators_for(const struct fsm *f, const char *path, size_t len,
                            const struct fsm_validator **out, unsigned max)
{
    unsigned n = 0;
    for (unsigned i = 0; i < f->st->n_validators && n < max; i++) {
        const struct fsm_validator *v = &f->st->validators[i];
        size_t plen = strlen(v->prefix);
        if (plen == 0 || (len >= plen && memcmp(path, v->prefix, plen) == 0 &&
                          (len == plen || path[plen] == '/'))) {
            out[n++] = v;
        }
    }
    return n;
}

void fsm_pack_validators(const struct fsm *f, msgpack_packer *pk)
{
    msgpack_pack_array(pk, f->st->n_validators);
    for (unsigned i = 0; i < f->st->n_validators; i++) {
        pack_validator(pk, &f->st->validators[i]);
    }
}

bool fsm_no_principals(const struct fsm *f)
{
    return f->st->acc.n_principals == 0;
}

void fsm_pack_principals(const struct fsm *f, msgpack_packer *pk)
{
    access_pack_principals(pk, &f->st->acc);
}

void fsm_pack_groups(const struct fsm *f, msgpack_packer *pk)
{
    access_pack_groups(pk, &f->st->acc);
}

int fsm_watch_next(const struct fsm *f, const char *prefix, size_t prefix_len,
                   uint64_t *cursor, unsigned max, fsm_watch_cb begin,
                   fsm_watch_cb end, void *arg)
{
    const struct audit_log *a = &f->st->audit;
    if (*cursor >= f->st->version) {
        return 0;
    }
    /* Versions are dense in the audit log (every change records one), so
     * the record after the cursor must be exactly cursor + 1. */
    size_t i = audit_after_version(a, *cursor);
    if (i == a->n || audit_at(a, i)->version != *cursor + 1) {
        return ALLOT_ENOT_FOUND;
    }
    struct fsm_audit_query q = {.prefix = prefix, .prefix_len = prefix_len};
    int n = 0;
    for (; i < a->n && (unsigned)n < max; i++) {
        const struct audit_record *r = audit_at(a, i);
        *cursor = r->version;
        if (!audit_match(r, &q)) {
            continue;
        }
        msgpack_packer *pk = NULL;
        begin(arg, &pk);
        if (pk != NULL) {
            audit_pack_record(pk, r);
        }
        end(arg, &pk);
        n++;
    }
    return n;
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
    const struct fsm_capacity *cap = &f->st->cat.capacity;
    pack_opt_u64(&pk, cap->has_memory_mb, cap->memory_mb);
    pack_opt_u64(&pk, cap->has_vcores, cap->vcores);
    for (struct cat_node *c = catalog_first(&f->st->cat); c != NULL;
         c = catalog_next(&f->st->cat, c)) {
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
