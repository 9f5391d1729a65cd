/* test_lifecycle.c - the state machine's newer commands, fed straight to
 * apply as raft would: bearer tokens (FSM_CMD_TOKEN_CREATE/REVOKE), pluggable
 * validators (FSM_CMD_VALIDATOR_ADD/RM) and quota labels (the labels map of
 * FSM_CMD_QUOTA_SET).
 *
 *   tokens      create (only the hash is kept; its id is the hash's first 8
 *               bytes), duplicates, ttl bounds, unknown principals; who may
 *               create and revoke (self-service, admins, others refused);
 *               expiry by the entries' clock, never the wall clock, and a
 *               clock that never goes back; token.ls; the audit trail;
 *               snapshot -> restore
 *   validators  add/rm/ls sorted by name, duplicates, not-found, the 64
 *               limit, admin only; which validators cover a path
 *               (fsm_validators_for: "org" covers org and org/..., not
 *               org-x; "" covers all; the max); the audit trail;
 *               snapshot -> restore
 *   labels      set, replace, remove (nil), sorted by key, label-only
 *               changes, limits (32 labels, 32 edits, key 1..63 of
 *               [A-Za-z0-9_./-], value 0..255 printable bytes) refused
 *               without a change; in the digest; the audit record's old
 *               and new labels; snapshot -> restore
 *   malformed   for every new command type, entries whose command is
 *               malformed (arity, types, sizes, bad names, out-of-range
 *               fields) yield error results and leave the catalog digest,
 *               the version, the audit trail, the tokens and the
 *               validators unchanged; also through a client session
 *
 * Time is always the time_ms carried in an entry, never the wall clock. */
#include <check.h>
#include <msgpack.h>
#include <raft.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "quota.h"
#include "raft_fsm.h"
#include "wire.h"

#define assert_has(msg, sub)                                     \
    ck_assert_msg((msg) != NULL && strstr((msg), (sub)) != NULL, \
                  "message \"%s\" does not mention \"%s\"",      \
                  (msg) ? (msg) : "(null)", (sub))

#define T0     1000000u /* an arbitrary leader clock to start from */
#define DAY_MS (24ull * 3600 * 1000)

/* --- Commands ------------------------------------------------------------ */

static struct fsm_cmd cmd_of(enum fsm_cmd_type type, const char *principal)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = type;
    c.principal = principal;
    return c;
}

/* QUOTA_SET for path with space-separated KEY=VALUE fields (string
 * literals: they must outlive the command). */
static struct fsm_cmd cmd_set(const char *principal, const char *path,
                              const char *kvs)
{
    struct fsm_cmd c = cmd_of(FSM_CMD_QUOTA_SET, principal);
    c.path = path;
    c.path_len = strlen(path);
    char buf[512];
    snprintf(buf, sizeof buf, "%s", kvs);
    char *save = NULL;
    for (char *kv = strtok_r(buf, " ", &save); kv != NULL;
         kv = strtok_r(NULL, " ", &save)) {
        char msg[ALLOT_ERRMSG_SIZE] = "";
        ck_assert_msg(quota_patch_parse_kv(&c.patch, kv, msg) == 0, "%s: %s",
                      kv, msg);
    }
    return c;
}

/* Label edits: value NULL removes the key. The arrays must outlive c. */
static struct fsm_cmd with_labels(struct fsm_cmd c, const char *const *keys,
                                  const char *const *values, uint32_t n)
{
    c.label_keys = keys;
    c.label_values = values;
    c.n_label_edits = n;
    return c;
}

static void token_hash(unsigned char hash[32], unsigned seed)
{
    for (unsigned i = 0; i < 32; i++) {
        hash[i] = (unsigned char)(seed * 31u + i * 7u + 1u);
    }
}

static struct fsm_cmd cmd_token(const char *principal, const char *subject,
                                unsigned seed, uint64_t ttl_ms)
{
    struct fsm_cmd c = cmd_of(FSM_CMD_TOKEN_CREATE, principal);
    c.subject = subject;
    token_hash(c.token_hash, seed);
    c.ttl_ms = ttl_ms;
    return c;
}

static struct fsm_cmd cmd_revoke(const char *principal, unsigned seed)
{
    struct fsm_cmd c = cmd_of(FSM_CMD_TOKEN_REVOKE, principal);
    token_hash(c.token_hash, seed); /* the first 8 bytes are the id */
    return c;
}

/* Copy src into dst, cut to fit: the malformed-struct tests pass values
 * longer than the fields on purpose. (Not snprintf: gcc -O3 flags the cut
 * as a format truncation and -Werror stopped release builds.) */
static void copy_cut(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static struct fsm_validator validator(const char *name, const char *prefix,
                                      bool is_url, const char *target,
                                      uint32_t timeout_ms, bool fail_open)
{
    struct fsm_validator v;
    memset(&v, 0, sizeof v);
    copy_cut(v.name, sizeof v.name, name);
    copy_cut(v.prefix, sizeof v.prefix, prefix);
    v.is_url = is_url;
    copy_cut(v.target, sizeof v.target, target);
    v.timeout_ms = timeout_ms;
    v.fail_open = fail_open;
    return v;
}

/* The validator must outlive the command. */
static struct fsm_cmd cmd_vadd(const char *principal,
                               const struct fsm_validator *v)
{
    struct fsm_cmd c = cmd_of(FSM_CMD_VALIDATOR_ADD, principal);
    c.validator = v;
    return c;
}

static struct fsm_cmd cmd_vrm(const char *principal, const char *name)
{
    struct fsm_cmd c = cmd_of(FSM_CMD_VALIDATOR_RM, principal);
    c.subject = name;
    return c;
}

static struct fsm_cmd sess(struct fsm_cmd c, uint64_t client, uint64_t seq)
{
    c.client = client;
    c.seq = seq;
    c.ack = seq;
    return c;
}

/* --- Applying entries ---------------------------------------------------- */

/* Apply a buffer exactly len bytes long (so ASan sees any over-read). */
static const struct fsm_batch_result *apply_raw(struct fsm *f, const void *data,
                                                size_t len)
{
    struct raft_buffer buf;
    buf.len = len;
    buf.base = malloc(len > 0 ? len : 1);
    ck_assert_ptr_nonnull(buf.base);
    if (len > 0) {
        memcpy(buf.base, data, len);
    }
    void *result = NULL;
    struct raft_fsm *rf = fsm_raft(f);
    /* A non-zero return would stall raft for good: never allowed. */
    ck_assert_int_eq(rf->apply(rf, &buf, &result), 0);
    ck_assert_ptr_nonnull(result);
    free(buf.base);
    return result;
}

static const struct fsm_batch_result *
apply_cmds(struct fsm *f, const struct fsm_cmd *cmds, unsigned n, uint64_t t)
{
    struct raft_buffer buf;
    ck_assert_int_eq(fsm_batch_encode(cmds, n, t, &buf), 0);
    const struct fsm_batch_result *b = apply_raw(f, buf.base, buf.len);
    raft_free(buf.base);
    ck_assert_uint_eq(b->n, n);
    return b;
}

static const struct fsm_result *apply1(struct fsm *f, struct fsm_cmd c,
                                       uint64_t t)
{
    return &apply_cmds(f, &c, 1, t)->results[0];
}

/* Apply c and assert it succeeded; returns the catalog version after it. */
static uint64_t apply_ok(struct fsm *f, struct fsm_cmd c, uint64_t t)
{
    const struct fsm_result *r = apply1(f, c, t);
    ck_assert_msg(r->code == 0, "command type %d refused: %s (%s)", c.type,
                  allot_error_name(r->code), r->message ? r->message : "");
    return r->version;
}

/* Apply c and assert it was refused with code, the message naming `sub`. */
static void apply_refused(struct fsm *f, struct fsm_cmd c, uint64_t t, int code,
                          const char *sub)
{
    const struct fsm_result *r = apply1(f, c, t);
    ck_assert_msg(r->code == code, "command type %d: got %s (%s), want %s",
                  c.type, allot_error_name(r->code),
                  r->message ? r->message : "", allot_error_name(code));
    if (sub != NULL) {
        assert_has(r->message, sub);
    }
}

/* A secure state: root (admin), alice and bob (not admins), added as an
 * --insecure request may (principal ""), at time t. */
static struct fsm *secure_fsm(uint64_t t)
{
    struct fsm *f;
    ck_assert_int_eq(fsm_init(&f), 0);
    static const char *const names[] = {"root", "alice", "bob"};
    struct fsm_cmd cmds[3];
    for (unsigned i = 0; i < 3; i++) {
        cmds[i] = cmd_of(FSM_CMD_PRINCIPAL_ADD, "");
        cmds[i].subject = names[i];
        memset(cmds[i].pubkey, (int)i + 1, sizeof cmds[i].pubkey);
        cmds[i].admin = i == 0;
    }
    const struct fsm_batch_result *b = apply_cmds(f, cmds, 3, t);
    for (unsigned i = 0; i < 3; i++) {
        ck_assert_msg(b->results[i].code == 0, "principal %s: %s", names[i],
                      b->results[i].message ? b->results[i].message : "");
    }
    return f;
}

static struct fsm *new_fsm(void)
{
    struct fsm *f;
    ck_assert_int_eq(fsm_init(&f), 0);
    return f;
}

/* --- Snapshots ----------------------------------------------------------- */

static struct raft_buffer snapshot_take(struct fsm *f)
{
    struct raft_fsm *rf = fsm_raft(f);
    struct raft_buffer *bufs = NULL;
    unsigned n = 0;
    ck_assert_int_eq(rf->snapshot(rf, &bufs, &n), 0);
    ck_assert_uint_eq(n, 1);
    struct raft_buffer copy;
    copy.len = bufs[0].len;
    copy.base = raft_malloc(copy.len);
    ck_assert_ptr_nonnull(copy.base);
    memcpy(copy.base, bufs[0].base, copy.len);
    ck_assert_int_eq(rf->snapshot_finalize(rf, &bufs, &n), 0);
    return copy;
}

/* A new state machine restored from a snapshot of f. */
static struct fsm *fsm_clone(struct fsm *f)
{
    struct fsm *g = new_fsm();
    struct raft_buffer buf = snapshot_take(f);
    struct raft_fsm *rf = fsm_raft(g);
    int rv = rf->restore(rf, &buf);
    if (rv != 0) {
        raft_free(buf.base);
    }
    ck_assert_msg(rv == 0, "restore failed: %d", rv);
    return g;
}

/* --- Reading the state back ---------------------------------------------- */

typedef void (*pack_fn)(const struct fsm *f, msgpack_packer *pk);

static void pack_tokens(const struct fsm *f, msgpack_packer *pk)
{
    fsm_pack_tokens(f, pk);
}

static void pack_validators(const struct fsm *f, msgpack_packer *pk)
{
    fsm_pack_validators(f, pk);
}

static void pack_audit(const struct fsm *f, msgpack_packer *pk)
{
    struct fsm_audit_query q = {.limit = 1000};
    fsm_audit_pack(f, &q, pk);
}

static void bytes_of(const struct fsm *f, pack_fn fn, msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    fn(f, &pk);
}

/* fn's answer, decoded: strings point into sb, so both live in one place.
 * Release with dec_free(). */
struct dec
{
    msgpack_sbuffer sb;
    msgpack_unpacked u;
};

static const msgpack_object *decoded(const struct fsm *f, pack_fn fn,
                                     struct dec *d)
{
    bytes_of(f, fn, &d->sb);
    msgpack_unpacked_init(&d->u);
    size_t off = 0;
    ck_assert_int_eq(msgpack_unpack_next(&d->u, d->sb.data, d->sb.size, &off),
                     MSGPACK_UNPACK_SUCCESS);
    ck_assert_uint_eq(off, d->sb.size);
    return &d->u.data;
}

static void dec_free(struct dec *d)
{
    msgpack_unpacked_destroy(&d->u);
    msgpack_sbuffer_destroy(&d->sb);
}

static void assert_same_bytes(const struct fsm *a, const struct fsm *b,
                              pack_fn fn, const char *what)
{
    msgpack_sbuffer x, y;
    bytes_of(a, fn, &x);
    bytes_of(b, fn, &y);
    ck_assert_msg(x.size == y.size && memcmp(x.data, y.data, x.size) == 0,
                  "%s differ", what);
    msgpack_sbuffer_destroy(&x);
    msgpack_sbuffer_destroy(&y);
}

static void assert_same_state(const struct fsm *a, const struct fsm *b)
{
    char da[65], db[65];
    fsm_digest(a, da);
    fsm_digest(b, db);
    ck_assert_str_eq(da, db);
    ck_assert_uint_eq(fsm_catalog_version(a), fsm_catalog_version(b));
    ck_assert_uint_eq(fsm_quota_count(a), fsm_quota_count(b));
    ck_assert_uint_eq(fsm_session_count(a), fsm_session_count(b));
    assert_same_bytes(a, b, pack_audit, "audit trails");
    assert_same_bytes(a, b, pack_tokens, "token lists");
    assert_same_bytes(a, b, pack_validators, "validator lists");
}

/* Everything a refused command must leave alone. */
struct mark
{
    char digest[65];
    uint64_t version;
    uint64_t quotas;
    msgpack_sbuffer audit, tokens, validators;
};

static void mark_take(const struct fsm *f, struct mark *m)
{
    fsm_digest(f, m->digest);
    m->version = fsm_catalog_version(f);
    m->quotas = fsm_quota_count(f);
    bytes_of(f, pack_audit, &m->audit);
    bytes_of(f, pack_tokens, &m->tokens);
    bytes_of(f, pack_validators, &m->validators);
}

static void mark_free(struct mark *m)
{
    msgpack_sbuffer_destroy(&m->audit);
    msgpack_sbuffer_destroy(&m->tokens);
    msgpack_sbuffer_destroy(&m->validators);
}

static void same_sb(const msgpack_sbuffer *a, const msgpack_sbuffer *b,
                    const char *what, const char *label)
{
    ck_assert_msg(a->size == b->size && memcmp(a->data, b->data, a->size) == 0,
                  "%s: the %s changed", label, what);
}

/* Assert f is as marked (the mark stays valid). */
static void mark_check(const struct fsm *f, const struct mark *m,
                       const char *label)
{
    struct mark now;
    mark_take(f, &now);
    ck_assert_msg(strcmp(now.digest, m->digest) == 0, "%s: digest changed",
                  label);
    ck_assert_msg(now.version == m->version, "%s: version %llu -> %llu", label,
                  (unsigned long long)m->version,
                  (unsigned long long)now.version);
    ck_assert_msg(now.quotas == m->quotas, "%s: quota count changed", label);
    same_sb(&now.audit, &m->audit, "audit trail", label);
    same_sb(&now.tokens, &m->tokens, "token list", label);
    same_sb(&now.validators, &m->validators, "validator list", label);
    mark_free(&now);
}

/* The last audit record. Release d with dec_free(). */
static const msgpack_object *last_record(const struct fsm *f, struct dec *d)
{
    const msgpack_object *a = decoded(f, pack_audit, d);
    const msgpack_object *recs = wire_map_get(a, "records");
    ck_assert_ptr_nonnull(recs);
    ck_assert_int_eq(recs->type, MSGPACK_OBJECT_ARRAY);
    ck_assert_uint_gt(recs->via.array.size, 0);
    return &recs->via.array.ptr[recs->via.array.size - 1];
}

static uint64_t u64_at(const msgpack_object *m, const char *key)
{
    const msgpack_object *o = wire_map_get(m, key);
    ck_assert_msg(o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER,
                  "no integer \"%s\"", key);
    return o->via.u64;
}

static void assert_str_at(const msgpack_object *m, const char *key,
                          const char *want)
{
    const msgpack_object *o = wire_map_get(m, key);
    ck_assert_msg(o != NULL && o->type == MSGPACK_OBJECT_STR, "no string %s",
                  key);
    ck_assert_msg(o->via.str.size == strlen(want) &&
                      memcmp(o->via.str.ptr, want, o->via.str.size) == 0,
                  "%s is \"%.*s\", want \"%s\"", key, (int)o->via.str.size,
                  o->via.str.ptr, want);
}

static bool bool_at(const msgpack_object *m, const char *key)
{
    const msgpack_object *o = wire_map_get(m, key);
    ck_assert_msg(o != NULL && o->type == MSGPACK_OBJECT_BOOLEAN, "no bool %s",
                  key);
    return o->via.boolean;
}

/* A labels map (msgpack) as "k=v,k=v" in its order. */
static const char *labels_text(const msgpack_object *m, char *buf, size_t size)
{
    size_t off = 0;
    buf[0] = '\0';
    ck_assert_msg(m != NULL && m->type == MSGPACK_OBJECT_MAP,
                  "labels is not a map");
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        const msgpack_object *v = &m->via.map.ptr[i].val;
        ck_assert_int_eq(k->type, MSGPACK_OBJECT_STR);
        ck_assert_int_eq(v->type, MSGPACK_OBJECT_STR);
        int w = snprintf(buf + off, size - off, "%s%.*s=%.*s", i ? "," : "",
                         (int)k->via.str.size, k->via.str.ptr,
                         (int)v->via.str.size, v->via.str.ptr);
        off += w > 0 ? (size_t)w : 0;
        ck_assert_uint_lt(off, size);
    }
    return buf;
}

/* A stored quota's labels as "k=v,k=v". */
static const char *quota_labels(const struct fsm *f, const char *path,
                                char *buf, size_t size)
{
    const struct quota *q = fsm_get(f, path, strlen(path));
    ck_assert_msg(q != NULL, "no quota %s", path);
    size_t off = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < q->n_labels; i++) {
        int w =
            snprintf(buf + off, size - off, "%s%s", i ? "," : "", q->labels[i]);
        off += w > 0 ? (size_t)w : 0;
        ck_assert_uint_lt(off, size);
    }
    return buf;
}

/* Names of the validators covering path, joined with ",". */
static const char *covering(const struct fsm *f, const char *path, unsigned max)
{
    static char buf[512];
    const struct fsm_validator *vs[FSM_VALIDATORS_MAX];
    ck_assert_uint_le(max, FSM_VALIDATORS_MAX);
    unsigned n = fsm_validators_for(f, path, strlen(path), vs, max);
    ck_assert_uint_le(n, max);
    size_t off = 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < n; i++) {
        int w = snprintf(buf + off, sizeof buf - off, "%s%s", i ? "," : "",
                         vs[i]->name);
        off += w > 0 ? (size_t)w : 0;
    }
    return buf;
}

/* =========================================================================
 * Tokens
 * ========================================================================= */

START_TEST(test_token_create)
{
    struct fsm *f = secure_fsm(T0);
    uint64_t v0 = fsm_catalog_version(f);
    const struct fsm_result *r =
        apply1(f, cmd_token("root", "alice", 1, 1000), T0 + 10);
    ck_assert_msg(r->code == 0, "%s", r->message ? r->message : "");
    ck_assert_uint_eq(r->version, v0 + 1);
    /* The reply's expires_ms travels in created_ms: the leader's clock (the
     * entry's) plus the ttl. */
    ck_assert_uint_eq(r->created_ms, T0 + 10 + 1000);
    ck_assert_uint_eq(fsm_catalog_version(f), v0 + 1);

    unsigned char h[32];
    char who[65];
    uint64_t expires = 0;
    token_hash(h, 1);
    ck_assert(fsm_token(f, h, who, &expires));
    ck_assert_str_eq(who, "alice");
    ck_assert_uint_eq(expires, T0 + 10 + 1000);
    token_hash(h, 2);
    ck_assert(!fsm_token(f, h, who, &expires));

    /* token.ls: id = the hash's first 8 bytes in hex, principal, times. */
    struct dec u;
    const msgpack_object *ls = decoded(f, pack_tokens, &u);
    ck_assert_int_eq(ls->type, MSGPACK_OBJECT_ARRAY);
    ck_assert_uint_eq(ls->via.array.size, 1);
    const msgpack_object *t = &ls->via.array.ptr[0];
    char idhex[17];
    token_hash(h, 1);
    for (int i = 0; i < 8; i++) {
        snprintf(idhex + 2 * i, 3, "%02x", h[i]);
    }
    assert_str_at(t, "id", idhex);
    assert_str_at(t, "principal", "alice");
    ck_assert_uint_eq(u64_at(t, "created_ms"), T0 + 10);
    ck_assert_uint_eq(u64_at(t, "expires_ms"), T0 + 10 + 1000);
    dec_free(&u);

    /* The audit record names the token by id, never by hash. */
    const msgpack_object *rec = last_record(f, &u);
    assert_str_at(rec, "op", "token.create");
    assert_str_at(rec, "principal", "root");
    assert_str_at(rec, "path", "");
    ck_assert_uint_eq(u64_at(rec, "version"), v0 + 1);
    ck_assert_int_eq(wire_map_get(rec, "old")->type, MSGPACK_OBJECT_NIL);
    const msgpack_object *nv = wire_map_get(rec, "new");
    assert_str_at(nv, "token_id", idhex);
    assert_str_at(nv, "principal", "alice");
    ck_assert_uint_eq(u64_at(nv, "expires_ms"), T0 + 10 + 1000);
    ck_assert_ptr_null(wire_map_get(nv, "hash"));
    dec_free(&u);

    /* The same hash twice: exists; nothing changes. */
    struct mark m;
    mark_take(f, &m);
    apply_refused(f, cmd_token("root", "bob", 1, 1000), T0 + 20, ALLOT_EEXISTS,
                  NULL);
    mark_check(f, &m, "duplicate hash");
    /* A ttl of 0 or over 366 days; an unknown principal. */
    apply_refused(f, cmd_token("root", "alice", 3, 0), T0 + 20, ALLOT_EINVALID,
                  "366 days");
    mark_check(f, &m, "ttl 0");
    apply_refused(f, cmd_token("root", "alice", 3, 366 * DAY_MS + 1), T0 + 20,
                  ALLOT_EINVALID, "366 days");
    mark_check(f, &m, "ttl 366 days + 1 ms");
    apply_refused(f, cmd_token("root", "carol", 3, 1000), T0 + 20,
                  ALLOT_ENOT_FOUND, "carol");
    mark_check(f, &m, "unknown principal");
    mark_free(&m);
    /* Exactly 366 days and 1 ms are the bounds, both allowed. */
    apply_ok(f, cmd_token("root", "alice", 3, 366 * DAY_MS), T0 + 30);
    apply_ok(f, cmd_token("root", "bob", 4, 1), T0 + 30);
    ck_assert_uint_eq(fsm_catalog_version(f), v0 + 3);
    fsm_close(f);
}
END_TEST

START_TEST(test_token_self_and_admin)
{
    struct fsm *f = secure_fsm(T0);
    struct mark m;
    /* alice may give herself a token, not bob one. */
    apply_ok(f, cmd_token("alice", "alice", 1, 60000), T0 + 1);
    mark_take(f, &m);
    apply_refused(f, cmd_token("alice", "bob", 2, 60000), T0 + 2,
                  ALLOT_EPERMISSION_DENIED, "alice");
    mark_check(f, &m, "alice creates bob's token");
    mark_free(&m);
    /* An admin may create anyone's. */
    apply_ok(f, cmd_token("root", "bob", 2, 60000), T0 + 3);
    apply_ok(f, cmd_token("root", "alice", 3, 60000), T0 + 3);
    /* bob may not revoke alice's tokens; alice may revoke her own, also one
     * the admin made for her; the admin may revoke anyone's. */
    mark_take(f, &m);
    apply_refused(f, cmd_revoke("bob", 1), T0 + 4, ALLOT_EPERMISSION_DENIED,
                  "bob");
    mark_check(f, &m, "bob revokes alice's token");
    mark_free(&m);
    apply_ok(f, cmd_revoke("alice", 1), T0 + 5);
    apply_ok(f, cmd_revoke("alice", 3), T0 + 5);
    apply_ok(f, cmd_revoke("root", 2), T0 + 5);
    unsigned char h[32];
    char who[65];
    uint64_t exp;
    for (unsigned seed = 1; seed <= 3; seed++) {
        token_hash(h, seed);
        ck_assert_msg(!fsm_token(f, h, who, &exp), "token %u still live", seed);
    }
    /* Revoked twice, or never created: not_found, nothing changes. */
    mark_take(f, &m);
    apply_refused(f, cmd_revoke("root", 1), T0 + 6, ALLOT_ENOT_FOUND, NULL);
    apply_refused(f, cmd_revoke("root", 9), T0 + 6, ALLOT_ENOT_FOUND, NULL);
    mark_check(f, &m, "revoke unknown");
    mark_free(&m);

    /* The revoke records: old = {token_id, principal}, new nil, by whom. */
    struct dec u;
    const msgpack_object *rec = last_record(f, &u);
    assert_str_at(rec, "op", "token.revoke");
    assert_str_at(rec, "principal", "root");
    assert_str_at(wire_map_get(rec, "old"), "principal", "bob");
    ck_assert_int_eq(wire_map_get(rec, "new")->type, MSGPACK_OBJECT_NIL);
    dec_free(&u);

    /* --insecure (principal ""): may create and revoke for anyone known. */
    apply_ok(f, cmd_token("", "bob", 5, 1000), T0 + 7);
    apply_ok(f, cmd_revoke("", 5), T0 + 8);
    fsm_close(f);
}
END_TEST

START_TEST(test_token_expiry_by_entry_time)
{
    struct fsm *f = secure_fsm(T0);
    unsigned char h[32];
    char who[65];
    uint64_t exp;
    apply_ok(f, cmd_token("root", "alice", 1, 1000), T0);
    apply_ok(f, cmd_token("root", "bob", 2, 5000), T0);

    /* The state machine keeps an expired token until an entry's clock says
     * so; fsm_token() reports its expiry for the leader to compare. Another
     * token.create at T0 + 999 expires nothing. */
    apply_ok(f, cmd_token("root", "bob", 3, 1000), T0 + 999);
    token_hash(h, 1);
    ck_assert(fsm_token(f, h, who, &exp));
    ck_assert_uint_eq(exp, T0 + 1000);

    /* An entry from an older clock moves nothing back: a token created in
     * it expires from the newest clock seen (T0 + 999), not its own. */
    const struct fsm_result *r =
        apply1(f, cmd_token("root", "bob", 4, 100), T0 - 50000);
    ck_assert_int_eq(r->code, 0);
    ck_assert_uint_eq(r->created_ms, T0 + 999 + 100);
    token_hash(h, 4);
    ck_assert(fsm_token(f, h, who, &exp));
    ck_assert_uint_eq(exp, T0 + 999 + 100);
    token_hash(h, 1);
    ck_assert(fsm_token(f, h, who, &exp)); /* still there */

    /* At T0 + 1000 (its expiry, inclusive) a create sweeps token 1; tokens
     * 2 (T0 + 5000) and 3 (T0 + 1999) stay; 4 (T0 + 1099) goes. */
    apply_ok(f, cmd_token("root", "alice", 5, 1000), T0 + 1000);
    token_hash(h, 1);
    ck_assert(!fsm_token(f, h, who, &exp));
    token_hash(h, 4);
    ck_assert(fsm_token(f, h, who, &exp)); /* expires T0 + 1099 */
    apply_ok(f, cmd_token("root", "alice", 6, 1000), T0 + 1200);
    token_hash(h, 4);
    ck_assert(!fsm_token(f, h, who, &exp));
    token_hash(h, 2);
    ck_assert(fsm_token(f, h, who, &exp));
    ck_assert_str_eq(who, "bob");
    token_hash(h, 3);
    ck_assert(fsm_token(f, h, who, &exp));

    /* Replicas agree: a restored copy holds the same tokens, and applying
     * the same entry to both sweeps the same ones. */
    struct fsm *g = fsm_clone(f);
    assert_same_state(f, g);
    apply_ok(f, cmd_token("root", "alice", 7, 1000), T0 + 10000);
    apply_ok(g, cmd_token("root", "alice", 7, 1000), T0 + 10000);
    assert_same_state(f, g);
    struct dec u;
    const msgpack_object *ls = decoded(f, pack_tokens, &u);
    ck_assert_uint_eq(ls->via.array.size, 1); /* only token 7 is live */
    dec_free(&u);
    fsm_close(g);
    fsm_close(f);
}
END_TEST

START_TEST(test_token_snapshot)
{
    struct fsm *f = secure_fsm(T0);
    apply_ok(f, cmd_token("root", "alice", 1, 60000), T0 + 1);
    apply_ok(f, cmd_token("alice", "alice", 2, 3 * DAY_MS), T0 + 2);
    apply_ok(f, cmd_token("root", "bob", 3, 60000), T0 + 3);
    apply_ok(f, cmd_revoke("root", 3), T0 + 4);
    /* A session's remembered token.create result survives too. */
    apply_ok(f, sess(cmd_token("root", "bob", 4, 777), 42, 1), T0 + 5);

    struct fsm *g = fsm_clone(f);
    assert_same_state(f, g);
    unsigned char h[32];
    char who[65];
    uint64_t exp;
    token_hash(h, 2);
    ck_assert(fsm_token(g, h, who, &exp));
    ck_assert_str_eq(who, "alice");
    ck_assert_uint_eq(exp, T0 + 2 + 3 * DAY_MS);
    token_hash(h, 3);
    ck_assert(!fsm_token(g, h, who, &exp));

    /* The retry of the session's write is answered from memory on both. */
    for (unsigned i = 0; i < 2; i++) {
        const struct fsm_result *r =
            apply1(i == 0 ? g : f,
                   sess(cmd_token("root", "bob", 4, 777), 42, 1), T0 + 6);
        ck_assert_int_eq(r->code, 0);
        ck_assert(r->duplicate);
        ck_assert_uint_eq(r->created_ms, T0 + 5 + 777);
    }
    /* A revoked token's hash may be used for a new token afterwards, and
     * both copies still agree after the same entries. */
    apply_ok(f, cmd_token("root", "bob", 3, 1000), T0 + 7);
    apply_ok(g, cmd_token("root", "bob", 3, 1000), T0 + 7);
    assert_same_state(f, g);
    fsm_close(g);
    fsm_close(f);
}
END_TEST

/* =========================================================================
 * Validators
 * ========================================================================= */

START_TEST(test_validator_add_rm_ls)
{
    struct fsm *f = new_fsm();
    struct fsm_validator vb = validator(
        "budget", "org", false, "/usr/local/bin/budget --check", 2000, false);
    struct fsm_validator va = validator(
        "approvals", "org/ads", true, "http://127.0.0.1:9000/check", 300, true);
    struct fsm_validator vc =
        validator("naming", "", false, "true", 60000, false);
    uint64_t v1 = apply_ok(f, cmd_vadd("", &vb), T0);
    uint64_t v2 = apply_ok(f, cmd_vadd("", &va), T0 + 1);
    uint64_t v3 = apply_ok(f, cmd_vadd("", &vc), T0 + 2);
    ck_assert_uint_eq(v1, 1);
    ck_assert_uint_eq(v2, 2);
    ck_assert_uint_eq(v3, 3);

    /* validator.ls: sorted by name, every field. */
    struct dec u;
    const msgpack_object *ls = decoded(f, pack_validators, &u);
    ck_assert_int_eq(ls->type, MSGPACK_OBJECT_ARRAY);
    ck_assert_uint_eq(ls->via.array.size, 3);
    const msgpack_object *a = &ls->via.array.ptr[0];
    assert_str_at(a, "name", "approvals");
    assert_str_at(a, "prefix", "org/ads");
    assert_str_at(a, "kind", "url");
    assert_str_at(a, "url", "http://127.0.0.1:9000/check");
    ck_assert_ptr_null(wire_map_get(a, "exec"));
    ck_assert_uint_eq(u64_at(a, "timeout_ms"), 300);
    ck_assert(bool_at(a, "fail_open"));
    const msgpack_object *b = &ls->via.array.ptr[1];
    assert_str_at(b, "name", "budget");
    assert_str_at(b, "prefix", "org");
    assert_str_at(b, "kind", "exec");
    assert_str_at(b, "exec", "/usr/local/bin/budget --check");
    ck_assert_uint_eq(u64_at(b, "timeout_ms"), 2000);
    ck_assert(!bool_at(b, "fail_open"));
    const msgpack_object *c = &ls->via.array.ptr[2];
    assert_str_at(c, "name", "naming");
    assert_str_at(c, "prefix", "");
    ck_assert_uint_eq(u64_at(c, "timeout_ms"), 60000);
    dec_free(&u);

    /* The audit records the validator under its prefix. */
    const msgpack_object *rec = last_record(f, &u);
    assert_str_at(rec, "op", "validator.add");
    assert_str_at(rec, "principal", "anonymous");
    assert_str_at(rec, "path", "");
    assert_str_at(wire_map_get(rec, "new"), "name", "naming");
    dec_free(&u);

    /* A second "budget", even with other settings: exists, no change. */
    struct mark m;
    mark_take(f, &m);
    struct fsm_validator dup =
        validator("budget", "other", true, "http://127.0.0.1:1/", 10, true);
    apply_refused(f, cmd_vadd("", &dup), T0 + 3, ALLOT_EEXISTS, "budget");
    mark_check(f, &m, "duplicate validator");
    apply_refused(f, cmd_vrm("", "nothing"), T0 + 3, ALLOT_ENOT_FOUND,
                  "nothing");
    mark_check(f, &m, "rm unknown validator");
    mark_free(&m);

    /* rm the middle one: the others stay in order. */
    uint64_t v4 = apply_ok(f, cmd_vrm("", "budget"), T0 + 4);
    ck_assert_uint_eq(v4, 4);
    ck_assert_str_eq(covering(f, "org/ads/x", 8), "approvals,naming");
    ck_assert_str_eq(covering(f, "org", 8), "naming");
    rec = last_record(f, &u);
    assert_str_at(rec, "op", "validator.rm");
    assert_str_at(rec, "path", "org");
    assert_str_at(wire_map_get(rec, "old"), "exec",
                  "/usr/local/bin/budget --check");
    ck_assert_int_eq(wire_map_get(rec, "new")->type, MSGPACK_OBJECT_NIL);
    dec_free(&u);
    apply_refused(f, cmd_vrm("", "budget"), T0 + 5, ALLOT_ENOT_FOUND, NULL);
    /* ... and may be added again. */
    apply_ok(f, cmd_vadd("", &vb), T0 + 6);
    ck_assert_str_eq(covering(f, "org/ads", 8), "approvals,budget,naming");

    /* Added in reverse order, the list still comes out sorted. */
    struct fsm *g = new_fsm();
    apply_ok(g, cmd_vadd("", &vc), T0);
    apply_ok(g, cmd_vadd("", &vb), T0);
    apply_ok(g, cmd_vadd("", &va), T0);
    assert_same_bytes(f, g, pack_validators, "validator lists");
    fsm_close(g);
    fsm_close(f);
}
END_TEST

START_TEST(test_validator_admin_only)
{
    struct fsm *f = secure_fsm(T0);
    struct fsm_validator v = validator("v", "org", false, "true", 100, false);
    struct mark m;
    mark_take(f, &m);
    apply_refused(f, cmd_vadd("alice", &v), T0 + 1, ALLOT_EPERMISSION_DENIED,
                  "alice");
    mark_check(f, &m, "alice adds a validator");
    mark_free(&m);
    apply_ok(f, cmd_vadd("root", &v), T0 + 2);
    mark_take(f, &m);
    apply_refused(f, cmd_vrm("bob", "v"), T0 + 3, ALLOT_EPERMISSION_DENIED,
                  "bob");
    /* Even for a name that does not exist, the refusal is the permission. */
    apply_refused(f, cmd_vrm("bob", "nothing"), T0 + 3,
                  ALLOT_EPERMISSION_DENIED, "bob");
    /* An unknown principal is no admin either. */
    apply_refused(f, cmd_vrm("mallory", "v"), T0 + 3, ALLOT_EPERMISSION_DENIED,
                  NULL);
    mark_check(f, &m, "non-admins remove a validator");
    mark_free(&m);
    apply_ok(f, cmd_vrm("root", "v"), T0 + 4);
    struct dec u;
    const msgpack_object *rec = last_record(f, &u);
    assert_str_at(rec, "principal", "root");
    dec_free(&u);
    fsm_close(f);
}
END_TEST

START_TEST(test_validator_prefix_matching)
{
    struct fsm *f = new_fsm();
    struct fsm_validator vs[] = {
        validator("all", "", false, "true", 100, false),
        validator("org", "org", false, "true", 100, false),
        validator("orgx", "org-x", false, "true", 100, false),
        validator("deep", "org/a", false, "true", 100, false),
        validator("deeper", "org/a/b", false, "true", 100, false),
    };
    for (unsigned i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        apply_ok(f, cmd_vadd("", &vs[i]), T0);
    }
    /* A prefix covers itself and what lies under prefix/, not siblings
     * that merely start with the same characters. */
    ck_assert_str_eq(covering(f, "org", 8), "all,org");
    ck_assert_str_eq(covering(f, "org-x", 8), "all,orgx");
    ck_assert_str_eq(covering(f, "org-x/y", 8), "all,orgx");
    ck_assert_str_eq(covering(f, "org-y", 8), "all");
    ck_assert_str_eq(covering(f, "or", 8), "all");
    ck_assert_str_eq(covering(f, "orgy", 8), "all");
    ck_assert_str_eq(covering(f, "org/a", 8), "all,deep,org");
    ck_assert_str_eq(covering(f, "org/ab", 8), "all,org");
    ck_assert_str_eq(covering(f, "org/a/b", 8), "all,deep,deeper,org");
    ck_assert_str_eq(covering(f, "org/a/b/c", 8), "all,deep,deeper,org");
    ck_assert_str_eq(covering(f, "org/a/bc", 8), "all,deep,org");
    ck_assert_str_eq(covering(f, "other", 8), "all");
    /* At most max, the first in name order. */
    ck_assert_str_eq(covering(f, "org/a/b", 2), "all,deep");
    ck_assert_str_eq(covering(f, "org/a/b", 1), "all");
    ck_assert_str_eq(covering(f, "org/a/b", 0), "");
    /* Only the path's bytes count, not what follows them in memory. */
    const struct fsm_validator *out[8];
    ck_assert_uint_eq(fsm_validators_for(f, "org/ab", 5, out, 8), 3);
    ck_assert_uint_eq(fsm_validators_for(f, "org-xyz", 5, out, 8), 2);
    ck_assert_str_eq(out[1]->name, "orgx");

    /* The same answers after a snapshot. */
    struct fsm *g = fsm_clone(f);
    assert_same_state(f, g);
    ck_assert_str_eq(covering(g, "org/a/b", 8), "all,deep,deeper,org");
    ck_assert_str_eq(covering(g, "org-x", 8), "all,orgx");
    fsm_close(g);
    fsm_close(f);
}
END_TEST

START_TEST(test_validator_limit_and_snapshot)
{
    struct fsm *f = new_fsm();
    struct fsm_validator v[FSM_VALIDATORS_MAX + 1];
    for (unsigned i = 0; i <= FSM_VALIDATORS_MAX; i++) {
        char name[16], prefix[16];
        /* Names out of order, to exercise the sorted insert. */
        snprintf(name, sizeof name, "v%02u", (i * 37u) % 100u);
        snprintf(prefix, sizeof prefix, "p%u", i % 5u);
        v[i] = validator(name, prefix, i % 2 == 0, "http://127.0.0.1:1/x",
                         1 + i, i % 3 == 0);
    }
    for (unsigned i = 0; i < FSM_VALIDATORS_MAX; i++) {
        apply_ok(f, cmd_vadd("", &v[i]), T0 + i);
    }
    struct mark m;
    mark_take(f, &m);
    apply_refused(f, cmd_vadd("", &v[FSM_VALIDATORS_MAX]), T0 + 100,
                  ALLOT_EINVALID, "64");
    mark_check(f, &m, "65th validator");
    mark_free(&m);

    struct dec u;
    const msgpack_object *ls = decoded(f, pack_validators, &u);
    ck_assert_uint_eq(ls->via.array.size, FSM_VALIDATORS_MAX);
    for (uint32_t i = 1; i < ls->via.array.size; i++) {
        const msgpack_object *p =
            wire_map_get(&ls->via.array.ptr[i - 1], "name");
        const msgpack_object *q = wire_map_get(&ls->via.array.ptr[i], "name");
        size_t n = p->via.str.size < q->via.str.size ? p->via.str.size
                                                     : q->via.str.size;
        int c = memcmp(p->via.str.ptr, q->via.str.ptr, n);
        ck_assert_msg(c < 0 || (c == 0 && p->via.str.size < q->via.str.size),
                      "validator.ls not sorted at %u", i);
    }
    dec_free(&u);

    struct fsm *g = fsm_clone(f);
    assert_same_state(f, g);
    /* Restored state behaves the same: full, removals, re-adds. */
    apply_refused(g, cmd_vadd("", &v[FSM_VALIDATORS_MAX]), T0 + 100,
                  ALLOT_EINVALID, NULL);
    apply_ok(f, cmd_vrm("", v[10].name), T0 + 101);
    apply_ok(g, cmd_vrm("", v[10].name), T0 + 101);
    apply_ok(f, cmd_vadd("", &v[FSM_VALIDATORS_MAX]), T0 + 102);
    apply_ok(g, cmd_vadd("", &v[FSM_VALIDATORS_MAX]), T0 + 102);
    assert_same_state(f, g);
    char first[64];
    snprintf(first, sizeof first, "%s", covering(f, "p1/x", 1));
    ck_assert_str_eq(covering(g, "p1/x", 1), first);
    ck_assert_str_ne(first, "");
    fsm_close(g);
    fsm_close(f);
}
END_TEST

/* =========================================================================
 * Labels
 * ========================================================================= */

START_TEST(test_labels_set_remove)
{
    struct fsm *f = new_fsm();
    char buf[4096];
    static const char *const k1[] = {"team", "env", "cost-center"};
    static const char *const v1[] = {"ads", "prod", "cc/42=x"};
    const struct fsm_result *r = apply1(
        f,
        with_labels(cmd_set("", "org", "kind=capacity guaranteed.vcores=8"), k1,
                    v1, 3),
        T0);
    ck_assert_msg(r->code == 0, "%s", r->message ? r->message : "");
    /* Sorted by key, in the result and in the catalog. */
    ck_assert_uint_eq(r->n_labels, 3);
    ck_assert_str_eq(r->labels[0], "cost-center=cc/42=x");
    ck_assert_str_eq(r->labels[1], "env=prod");
    ck_assert_str_eq(r->labels[2], "team=ads");
    ck_assert_str_eq(quota_labels(f, "org", buf, sizeof buf),
                     "cost-center=cc/42=x,env=prod,team=ads");
    char d1[65];
    fsm_digest(f, d1);

    /* A label-only change: replace one, remove one, add one, remove one
     * that is not there. The version moves; the fields stay. */
    static const char *const k2[] = {"team", "env", "tier", "absent"};
    static const char *const v2[] = {"search", NULL, "gold", NULL};
    struct fsm_cmd c = with_labels(cmd_set("", "org", ""), k2, v2, 4);
    r = apply1(f, c, T0 + 1);
    ck_assert_msg(r->code == 0, "%s", r->message ? r->message : "");
    ck_assert_uint_eq(r->version, 2);
    ck_assert_str_eq(quota_labels(f, "org", buf, sizeof buf),
                     "cost-center=cc/42=x,team=search,tier=gold");
    const struct quota *q = fsm_get(f, "org", 3);
    ck_assert_uint_eq(q->version, 2);
    ck_assert_uint_eq(q->f.guaranteed_vcores, 8);
    char d2[65];
    fsm_digest(f, d2);
    ck_assert_str_ne(d1, d2); /* labels are part of the catalog */

    /* The audit record shows the labels before and after. */
    struct dec u;
    const msgpack_object *rec = last_record(f, &u);
    assert_str_at(rec, "op", "quota.set");
    assert_str_at(rec, "path", "org");
    ck_assert_str_eq(
        labels_text(wire_map_get(wire_map_get(rec, "old"), "labels"), buf,
                    sizeof buf),
        "cost-center=cc/42=x,env=prod,team=ads");
    ck_assert_str_eq(
        labels_text(wire_map_get(wire_map_get(rec, "new"), "labels"), buf,
                    sizeof buf),
        "cost-center=cc/42=x,team=search,tier=gold");
    dec_free(&u);

    /* Keys sort bytewise: "a" < "a-b" < "a.b" < "a/b" < "a_b" < "ab". An
     * empty value is a value (up to 255 printable bytes, 0 included). */
    static const char *const k3[] = {"ab", "a_b",  "a/b",  "a.b",        "a-b",
                                     "a",  "team", "tier", "cost-center"};
    static const char *const v3[] = {"1", "2",  "3",  "4", "5",
                                     "",  NULL, NULL, NULL};
    apply_ok(f, with_labels(cmd_set("", "org", ""), k3, v3, 9), T0 + 2);
    ck_assert_str_eq(quota_labels(f, "org", buf, sizeof buf),
                     "a=,a-b=5,a.b=4,a/b=3,a_b=2,ab=1");
    /* The same key twice in one edit: the last one wins. */
    static const char *const k4[] = {"x", "x", "y", "y"};
    static const char *const v4[] = {"1", "2", "1", NULL};
    apply_ok(f, with_labels(cmd_set("", "org", ""), k4, v4, 4), T0 + 3);
    ck_assert_str_eq(quota_labels(f, "org", buf, sizeof buf),
                     "a=,a-b=5,a.b=4,a/b=3,a_b=2,ab=1,x=2");

    /* Removing every label leaves none; a child gets its own labels. */
    static const char *const k5[] = {"a",   "a-b", "a.b", "a/b",
                                     "a_b", "ab",  "x"};
    static const char *const v5[] = {NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    apply_ok(f, with_labels(cmd_set("", "org", ""), k5, v5, 7), T0 + 4);
    ck_assert_str_eq(quota_labels(f, "org", buf, sizeof buf), "");
    ck_assert_uint_eq(fsm_get(f, "org", 3)->n_labels, 0);
    static const char *const k6[] = {"owner"};
    static const char *const v6[] = {"ml-team"};
    apply_ok(
        f, with_labels(cmd_set("", "org/ml", "guaranteed.vcores=2"), k6, v6, 1),
        T0 + 5);
    ck_assert_str_eq(quota_labels(f, "org/ml", buf, sizeof buf),
                     "owner=ml-team");
    ck_assert_str_eq(quota_labels(f, "org", buf, sizeof buf), "");

    /* A label-only edit of a quota that does not exist cannot create it
     * (no kind), and changes nothing. */
    struct mark m;
    mark_take(f, &m);
    apply_refused(f, with_labels(cmd_set("", "org/none", ""), k6, v6, 1),
                  T0 + 6, ALLOT_EINVALID, NULL);
    mark_check(f, &m, "labels on a new quota without a kind");
    mark_free(&m);
    fsm_close(f);
}
END_TEST

START_TEST(test_labels_limits)
{
    struct fsm *f = new_fsm();
    char buf[16384];
    apply_ok(f, cmd_set("", "org", "kind=rate rate=100"), T0);

    /* 32 labels in one edit: the limit, allowed. */
    static char keys[QUOTA_LABELS_MAX + 1][16];
    static const char *kp[QUOTA_LABELS_MAX + 1], *vp[QUOTA_LABELS_MAX + 1];
    for (unsigned i = 0; i <= QUOTA_LABELS_MAX; i++) {
        snprintf(keys[i], sizeof keys[i], "k%02u", i);
        kp[i] = keys[i];
        vp[i] = "v";
    }
    apply_ok(f, with_labels(cmd_set("", "org", ""), kp, vp, QUOTA_LABELS_MAX),
             T0 + 1);
    ck_assert_uint_eq(fsm_get(f, "org", 3)->n_labels, QUOTA_LABELS_MAX);

    struct mark m;
    mark_take(f, &m);
    /* A 33rd label, added alone: refused. */
    apply_refused(f,
                  with_labels(cmd_set("", "org", ""), kp + QUOTA_LABELS_MAX,
                              vp + QUOTA_LABELS_MAX, 1),
                  T0 + 2, ALLOT_EINVALID, "32");
    mark_check(f, &m, "33rd label");
    /* 33 edits in one map: refused, even though they change nothing. */
    apply_refused(
        f, with_labels(cmd_set("", "org", ""), kp, vp, QUOTA_LABELS_MAX + 1),
        T0 + 2, ALLOT_EINVALID, NULL);
    mark_check(f, &m, "33 edits");
    /* Replacing a value at the limit is fine; so is remove + add in one. */
    static const char *const k1[] = {"k00", "k01", "new"};
    static const char *const v1[] = {"w", NULL, "n"};
    mark_free(&m);
    apply_ok(f, with_labels(cmd_set("", "org", ""), k1, v1, 3), T0 + 3);
    ck_assert_uint_eq(fsm_get(f, "org", 3)->n_labels, QUOTA_LABELS_MAX);

    /* Keys: 1 to 63 of [A-Za-z0-9_./-]; values: 0 to 255 bytes, no control
     * characters (0x00-0x1f, 0x7f). */
    char k63[64], k64[65], v255[256], v256[257];
    memset(k63, 'k', 63);
    k63[63] = '\0';
    memset(k64, 'k', 64);
    k64[64] = '\0';
    memset(v255, 'v', 255);
    v255[255] = '\0';
    memset(v256, 'v', 256);
    v256[256] = '\0';
    struct
    {
        const char *key;
        const char *value;
    } bad[] = {
        {"", "x"},          {k64, "x"},       {"a b", "x"},
        {"a=b", "x"},       {"a:b", "x"},     {"caf\xc3\xa9", "x"},
        {"a\tb", "x"},      {"a", v256},      {"a", "line\nbreak"},
        {"a", "tab\there"}, {"a", "del\x7f"}, {"a", "esc\x1b["},
        {"@", "x"},         {"a+b", "x"},     {"", NULL},
        {k64, NULL},
    };
    /* A quota with room for more labels, to see only the format refusals. */
    apply_ok(f, cmd_set("", "org/x", "kind=rate rate=10"), T0 + 4);
    mark_take(f, &m);
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *kk[] = {bad[i].key};
        const char *vv[] = {bad[i].value};
        const struct fsm_result *r =
            apply1(f, with_labels(cmd_set("", "org/x", ""), kk, vv, 1), T0 + 5);
        ck_assert_msg(r->code == ALLOT_EINVALID,
                      "label %u (\"%.20s\"=\"%.20s\"): got %s", i, bad[i].key,
                      bad[i].value ? bad[i].value : "(remove)",
                      allot_error_name(r->code));
        assert_has(r->message, "label");
        /* Along with a valid field change: the whole command is refused. */
        r = apply1(f, with_labels(cmd_set("", "org/x", "rate=5"), kk, vv, 1),
                   T0 + 5);
        ck_assert_msg(r->code == ALLOT_EINVALID, "label %u with rate=5: %s", i,
                      allot_error_name(r->code));
    }
    mark_check(f, &m, "malformed labels");
    mark_free(&m);
    const char *good_k[] = {k63, "A.b/c_d-e9", "utf8", "printable"};
    const char *good_v[] = {v255, "", "caf\xc3\xa9 \xe2\x82\xac",
                            " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"};
    apply_ok(f, with_labels(cmd_set("", "org/x", ""), good_k, good_v, 4),
             T0 + 6);
    const struct quota *q = fsm_get(f, "org/x", 5);
    ck_assert_uint_eq(q->n_labels, 4);
    ck_assert_str_eq(q->labels[0], "A.b/c_d-e9=");
    snprintf(buf, sizeof buf, "%s=%s", k63, v255);
    ck_assert_str_eq(q->labels[1], buf);

    /* Snapshots keep labels exactly; a restored catalog has the same
     * digest and answers. */
    struct fsm *g = fsm_clone(f);
    assert_same_state(f, g);
    char a[16384];
    ck_assert_str_eq(quota_labels(g, "org/x", a, sizeof a),
                     quota_labels(f, "org/x", buf, sizeof buf));
    ck_assert_str_eq(quota_labels(g, "org", a, sizeof a),
                     quota_labels(f, "org", buf, sizeof buf));
    /* ... and the limit holds there too. */
    apply_refused(g,
                  with_labels(cmd_set("", "org", ""), kp + QUOTA_LABELS_MAX,
                              vp + QUOTA_LABELS_MAX, 1),
                  T0 + 7, ALLOT_EINVALID, "32");
    fsm_close(g);
    fsm_close(f);
}
END_TEST

START_TEST(test_labels_owners_and_sessions)
{
    struct fsm *f = secure_fsm(T0);
    char buf[1024];
    /* root creates org with labels; alice owns it and edits the labels; bob
     * may not; a retried edit (same client, seq) applies once. */
    static const char *const k1[] = {"team"};
    static const char *const v1[] = {"ads"};
    struct fsm_cmd c = with_labels(
        cmd_set("root", "org", "kind=capacity guaranteed.vcores=4"), k1, v1, 1);
    static const char *const owners[] = {"user:alice"};
    c.owners_add = owners;
    c.n_owners_add = 1;
    apply_ok(f, c, T0 + 1);
    static const char *const k2[] = {"team", "env"};
    static const char *const v2[] = {"search", "prod"};
    struct mark m;
    mark_take(f, &m);
    apply_refused(f, with_labels(cmd_set("bob", "org", ""), k2, v2, 2), T0 + 2,
                  ALLOT_EPERMISSION_DENIED, "bob");
    mark_check(f, &m, "bob edits labels");
    mark_free(&m);
    struct fsm_cmd e =
        sess(with_labels(cmd_set("alice", "org", ""), k2, v2, 2), 7, 1);
    const struct fsm_result *r = apply1(f, e, T0 + 3);
    ck_assert_int_eq(r->code, 0);
    uint64_t v = r->version;
    ck_assert_uint_eq(r->n_labels, 2);
    r = apply1(f, e, T0 + 4);
    ck_assert_int_eq(r->code, 0);
    ck_assert(r->duplicate);
    ck_assert_uint_eq(r->version, v);
    ck_assert_uint_eq(r->n_labels, 2);
    ck_assert_str_eq(r->labels[0], "env=prod");
    ck_assert_uint_eq(fsm_catalog_version(f), v);
    ck_assert_str_eq(quota_labels(f, "org", buf, sizeof buf),
                     "env=prod,team=search");
    /* The remembered result (labels included) survives a snapshot. */
    struct fsm *g = fsm_clone(f);
    r = apply1(g, e, T0 + 5);
    ck_assert(r->duplicate);
    ck_assert_uint_eq(r->n_labels, 2);
    ck_assert_str_eq(r->labels[1], "team=search");
    apply1(f, e, T0 + 5);
    assert_same_state(f, g);
    fsm_close(g);
    fsm_close(f);
}
END_TEST

/* =========================================================================
 * Malformed commands
 * ========================================================================= */

/* An entry [1, t, [cmd]] with cmd = [type, client, seq, ack, principal,
 * args...]; `args` packs the arguments (n of them) with pk. */
typedef void (*args_fn)(msgpack_packer *pk);

struct bad_cmd
{
    const char *label;
    uint64_t type;
    unsigned n_args;
    args_fn args;
    int code; /* the error expected */
};

static void pack_entry(msgpack_sbuffer *sb, const struct bad_cmd *b,
                       uint64_t client, uint64_t seq, uint64_t t)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, 1);
    msgpack_pack_uint64(&pk, t);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 5 + b->n_args);
    msgpack_pack_uint64(&pk, b->type);
    msgpack_pack_uint64(&pk, client);
    msgpack_pack_uint64(&pk, seq);
    msgpack_pack_uint64(&pk, seq);
    wire_pack_str(&pk, "");
    if (b->args != NULL) {
        b->args(&pk);
    }
}

static void pack_hash(msgpack_packer *pk, size_t n)
{
    unsigned char h[64];
    memset(h, 0xab, sizeof h);
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, h, n);
}

/* token.create args: hash, name, ttl. */
static void tc_ok_but_ttl_str(msgpack_packer *pk)
{
    pack_hash(pk, 32);
    wire_pack_str(pk, "alice");
    wire_pack_str(pk, "1000");
}
static void tc_short_hash(msgpack_packer *pk)
{
    pack_hash(pk, 31);
    wire_pack_str(pk, "alice");
    msgpack_pack_uint64(pk, 1000);
}
static void tc_long_hash(msgpack_packer *pk)
{
    pack_hash(pk, 33);
    wire_pack_str(pk, "alice");
    msgpack_pack_uint64(pk, 1000);
}
static void tc_hash_str(msgpack_packer *pk)
{
    wire_pack_str(pk, "abababababababababababababababab");
    wire_pack_str(pk, "alice");
    msgpack_pack_uint64(pk, 1000);
}
static void tc_bad_name(msgpack_packer *pk)
{
    pack_hash(pk, 32);
    wire_pack_str(pk, "al ice");
    msgpack_pack_uint64(pk, 1000);
}
static void tc_empty_name(msgpack_packer *pk)
{
    pack_hash(pk, 32);
    wire_pack_str(pk, "");
    msgpack_pack_uint64(pk, 1000);
}
static void tc_name_int(msgpack_packer *pk)
{
    pack_hash(pk, 32);
    msgpack_pack_uint64(pk, 5);
    msgpack_pack_uint64(pk, 1000);
}
static void tc_negative_ttl(msgpack_packer *pk)
{
    pack_hash(pk, 32);
    wire_pack_str(pk, "alice");
    msgpack_pack_int64(pk, -1);
}
static void tc_four(msgpack_packer *pk)
{
    pack_hash(pk, 32);
    wire_pack_str(pk, "alice");
    msgpack_pack_uint64(pk, 1000);
    msgpack_pack_nil(pk);
}
static void tc_two(msgpack_packer *pk)
{
    pack_hash(pk, 32);
    wire_pack_str(pk, "alice");
}
static void tr_seven(msgpack_packer *pk)
{
    pack_hash(pk, 7);
}
static void tr_nine(msgpack_packer *pk)
{
    pack_hash(pk, 9);
}
static void tr_str(msgpack_packer *pk)
{
    wire_pack_str(pk, "abababab");
}
static void tr_two(msgpack_packer *pk)
{
    pack_hash(pk, 8);
    pack_hash(pk, 8);
}
static void tr_nil(msgpack_packer *pk)
{
    msgpack_pack_nil(pk);
}

/* validator.add: one map; these break it one field at a time. */
struct vfield
{
    const char *key;
    int kind; /* 0 str, 1 u64, 2 bool, 3 nil, -1 omitted */
    const char *s;
    uint64_t u;
};

static void pack_vmap(msgpack_packer *pk, const struct vfield *fs, unsigned n)
{
    unsigned present = 0;
    for (unsigned i = 0; i < n; i++) {
        present += fs[i].kind >= 0;
    }
    msgpack_pack_map(pk, present);
    for (unsigned i = 0; i < n; i++) {
        if (fs[i].kind < 0) {
            continue;
        }
        wire_pack_str(pk, fs[i].key);
        switch (fs[i].kind) {
        case 0:
            wire_pack_str(pk, fs[i].s);
            break;
        case 1:
            msgpack_pack_uint64(pk, fs[i].u);
            break;
        case 2:
            if (fs[i].u) {
                msgpack_pack_true(pk);
            } else {
                msgpack_pack_false(pk);
            }
            break;
        default:
            msgpack_pack_nil(pk);
        }
    }
}

/* A valid validator map with field `which` replaced by `with`. */
static struct vfield VBreak;
static int VWhich = -1;
static void va_broken(msgpack_packer *pk)
{
    struct vfield fs[] = {
        {"name", 0, "v", 0},          {"prefix", 0, "org", 0},
        {"exec", 0, "true", 0},       {"kind", 0, "exec", 0},
        {"timeout_ms", 1, NULL, 100}, {"fail_open", 2, NULL, 0},
    };
    if (VWhich >= 0) {
        fs[VWhich] = VBreak;
    }
    pack_vmap(pk, fs, 6);
}
static void va_not_map(msgpack_packer *pk)
{
    wire_pack_str(pk, "v");
}
static void va_two(msgpack_packer *pk)
{
    VWhich = -1;
    va_broken(pk);
    msgpack_pack_nil(pk);
}
static void vr_int(msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, 1);
}
static void vr_bad(msgpack_packer *pk)
{
    wire_pack_str(pk, "a/b");
}
static void vr_empty(msgpack_packer *pk)
{
    wire_pack_str(pk, "");
}
static void vr_long(msgpack_packer *pk)
{
    char n[66];
    memset(n, 'n', 65);
    n[65] = '\0';
    wire_pack_str(pk, n);
}
static void vr_two(msgpack_packer *pk)
{
    wire_pack_str(pk, "v");
    wire_pack_str(pk, "v");
}

/* quota.set args: path, patch, if_version, owners_add, owners_rm, labels. */
static void qs_with_labels(msgpack_packer *pk, void (*labels)(msgpack_packer *))
{
    wire_pack_str(pk, "org");
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "rate");
    msgpack_pack_double(pk, 10.0);
    msgpack_pack_nil(pk);
    msgpack_pack_array(pk, 0);
    msgpack_pack_array(pk, 0);
    labels(pk);
}
static void lab_array(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    wire_pack_str(pk, "a");
}
static void lab_str(msgpack_packer *pk)
{
    wire_pack_str(pk, "a=b");
}
static void lab_key_int(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    msgpack_pack_uint64(pk, 1);
    wire_pack_str(pk, "x");
}
static void lab_val_int(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "a");
    msgpack_pack_uint64(pk, 1);
}
static void lab_val_bin(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "a");
    msgpack_pack_bin(pk, 1);
    msgpack_pack_bin_body(pk, "x", 1);
}
static void lab_val_map(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "a");
    msgpack_pack_map(pk, 0);
}
static void lab_33(msgpack_packer *pk)
{
    msgpack_pack_map(pk, QUOTA_LABELS_MAX + 1);
    for (unsigned i = 0; i <= QUOTA_LABELS_MAX; i++) {
        char k[8];
        snprintf(k, sizeof k, "k%u", i);
        wire_pack_str(pk, k);
        msgpack_pack_nil(pk);
    }
}
static void lab_nul_in_value(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "a");
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "a\0b", 3);
}
static void qs_lab_array(msgpack_packer *pk)
{
    qs_with_labels(pk, lab_array);
}
static void qs_lab_str(msgpack_packer *pk)
{
    qs_with_labels(pk, lab_str);
}
static void qs_lab_key_int(msgpack_packer *pk)
{
    qs_with_labels(pk, lab_key_int);
}
static void qs_lab_val_int(msgpack_packer *pk)
{
    qs_with_labels(pk, lab_val_int);
}
static void qs_lab_val_bin(msgpack_packer *pk)
{
    qs_with_labels(pk, lab_val_bin);
}
static void qs_lab_val_map(msgpack_packer *pk)
{
    qs_with_labels(pk, lab_val_map);
}
static void qs_lab_33(msgpack_packer *pk)
{
    qs_with_labels(pk, lab_33);
}
static void qs_lab_nul(msgpack_packer *pk)
{
    qs_with_labels(pk, lab_nul_in_value);
}
static void qs_no_labels(msgpack_packer *pk)
{
    wire_pack_str(pk, "org");
    msgpack_pack_map(pk, 0);
    msgpack_pack_nil(pk);
    msgpack_pack_array(pk, 0);
    msgpack_pack_array(pk, 0);
}

static const struct bad_cmd BadCmds[] = {
    {"token.create: no args", FSM_CMD_TOKEN_CREATE, 0, NULL, ALLOT_EINTERNAL},
    {"token.create: 2 args", FSM_CMD_TOKEN_CREATE, 2, tc_two, ALLOT_EINTERNAL},
    {"token.create: 4 args", FSM_CMD_TOKEN_CREATE, 4, tc_four, ALLOT_EINTERNAL},
    {"token.create: 31-byte hash", FSM_CMD_TOKEN_CREATE, 3, tc_short_hash,
     ALLOT_EINTERNAL},
    {"token.create: 33-byte hash", FSM_CMD_TOKEN_CREATE, 3, tc_long_hash,
     ALLOT_EINTERNAL},
    {"token.create: hash as str", FSM_CMD_TOKEN_CREATE, 3, tc_hash_str,
     ALLOT_EINTERNAL},
    {"token.create: bad name", FSM_CMD_TOKEN_CREATE, 3, tc_bad_name,
     ALLOT_EINTERNAL},
    {"token.create: empty name", FSM_CMD_TOKEN_CREATE, 3, tc_empty_name,
     ALLOT_EINTERNAL},
    {"token.create: name int", FSM_CMD_TOKEN_CREATE, 3, tc_name_int,
     ALLOT_EINTERNAL},
    {"token.create: ttl str", FSM_CMD_TOKEN_CREATE, 3, tc_ok_but_ttl_str,
     ALLOT_EINTERNAL},
    {"token.create: ttl -1", FSM_CMD_TOKEN_CREATE, 3, tc_negative_ttl,
     ALLOT_EINTERNAL},
    {"token.revoke: no args", FSM_CMD_TOKEN_REVOKE, 0, NULL, ALLOT_EINTERNAL},
    {"token.revoke: 7-byte id", FSM_CMD_TOKEN_REVOKE, 1, tr_seven,
     ALLOT_EINTERNAL},
    {"token.revoke: 9-byte id", FSM_CMD_TOKEN_REVOKE, 1, tr_nine,
     ALLOT_EINTERNAL},
    {"token.revoke: id as str", FSM_CMD_TOKEN_REVOKE, 1, tr_str,
     ALLOT_EINTERNAL},
    {"token.revoke: nil", FSM_CMD_TOKEN_REVOKE, 1, tr_nil, ALLOT_EINTERNAL},
    {"token.revoke: 2 args", FSM_CMD_TOKEN_REVOKE, 2, tr_two, ALLOT_EINTERNAL},
    {"validator.add: no args", FSM_CMD_VALIDATOR_ADD, 0, NULL, ALLOT_EINTERNAL},
    {"validator.add: not a map", FSM_CMD_VALIDATOR_ADD, 1, va_not_map,
     ALLOT_EINTERNAL},
    {"validator.add: 2 args", FSM_CMD_VALIDATOR_ADD, 2, va_two,
     ALLOT_EINTERNAL},
    {"validator.rm: no args", FSM_CMD_VALIDATOR_RM, 0, NULL, ALLOT_EINTERNAL},
    {"validator.rm: name int", FSM_CMD_VALIDATOR_RM, 1, vr_int,
     ALLOT_EINTERNAL},
    {"validator.rm: bad name", FSM_CMD_VALIDATOR_RM, 1, vr_bad,
     ALLOT_EINTERNAL},
    {"validator.rm: empty name", FSM_CMD_VALIDATOR_RM, 1, vr_empty,
     ALLOT_EINTERNAL},
    {"validator.rm: 65-char name", FSM_CMD_VALIDATOR_RM, 1, vr_long,
     ALLOT_EINTERNAL},
    {"validator.rm: 2 args", FSM_CMD_VALIDATOR_RM, 2, vr_two, ALLOT_EINTERNAL},
    {"quota.set: labels array", FSM_CMD_QUOTA_SET, 6, qs_lab_array,
     ALLOT_EINVALID},
    {"quota.set: labels str", FSM_CMD_QUOTA_SET, 6, qs_lab_str, ALLOT_EINVALID},
    {"quota.set: label key int", FSM_CMD_QUOTA_SET, 6, qs_lab_key_int,
     ALLOT_EINVALID},
    {"quota.set: label value int", FSM_CMD_QUOTA_SET, 6, qs_lab_val_int,
     ALLOT_EINVALID},
    {"quota.set: label value bin", FSM_CMD_QUOTA_SET, 6, qs_lab_val_bin,
     ALLOT_EINVALID},
    {"quota.set: label value map", FSM_CMD_QUOTA_SET, 6, qs_lab_val_map,
     ALLOT_EINVALID},
    {"quota.set: 33 label edits", FSM_CMD_QUOTA_SET, 6, qs_lab_33,
     ALLOT_EINVALID},
    {"quota.set: NUL in a label value", FSM_CMD_QUOTA_SET, 6, qs_lab_nul,
     ALLOT_EINVALID},
    {"quota.set: no labels element", FSM_CMD_QUOTA_SET, 5, qs_no_labels,
     ALLOT_EINTERNAL},
};

/* validator.add maps broken one field at a time. */
static const struct
{
    const char *label;
    int which;
    struct vfield with;
} BadValidators[] = {
    {"name missing", 0, {"name", -1, NULL, 0}},
    {"name empty", 0, {"name", 0, "", 0}},
    {"name with a space", 0, {"name", 0, "a b", 0}},
    {"name int", 0, {"name", 1, NULL, 3}},
    {"prefix missing", 1, {"prefix", -1, NULL, 0}},
    {"prefix not a path", 1, {"prefix", 0, "org//a", 0}},
    {"prefix with a dot", 1, {"prefix", 0, "org.a", 0}},
    {"prefix too deep", 1, {"prefix", 0, "a/b/c/d/e/f/g/h/i", 0}},
    {"prefix nil", 1, {"prefix", 3, NULL, 0}},
    {"exec missing", 2, {"exec", -1, NULL, 0}},
    {"exec empty", 2, {"exec", 0, "", 0}},
    {"exec int", 2, {"exec", 1, NULL, 1}},
    {"kind missing", 3, {"kind", -1, NULL, 0}},
    {"kind ftp", 3, {"kind", 0, "ftp", 0}},
    {"kind url without url", 3, {"kind", 0, "url", 0}},
    {"timeout 0", 4, {"timeout_ms", 1, NULL, 0}},
    {"timeout 60001", 4, {"timeout_ms", 1, NULL, 60001}},
    {"timeout missing", 4, {"timeout_ms", -1, NULL, 0}},
    {"timeout str", 4, {"timeout_ms", 0, "100", 0}},
    {"fail_open missing", 5, {"fail_open", -1, NULL, 0}},
    {"fail_open int", 5, {"fail_open", 1, NULL, 1}},
};

/* The state the malformed commands run against: principals, a token, a
 * validator, a labelled quota. */
static struct fsm *busy_fsm(void)
{
    struct fsm *f = new_fsm();
    static const char *const names[] = {"root", "alice"};
    for (unsigned i = 0; i < 2; i++) {
        struct fsm_cmd c = cmd_of(FSM_CMD_PRINCIPAL_ADD, "");
        c.subject = names[i];
        memset(c.pubkey, (int)i + 1, sizeof c.pubkey);
        c.admin = i == 0;
        apply_ok(f, c, T0);
    }
    apply_ok(f, cmd_token("", "alice", 1, 60000), T0);
    static struct fsm_validator v;
    v = validator("v", "org", false, "true", 100, false);
    apply_ok(f, cmd_vadd("", &v), T0);
    static const char *const k[] = {"team"};
    static const char *const val[] = {"ads"};
    apply_ok(f,
             with_labels(cmd_set("", "org", "kind=rate rate=100"), k, val, 1),
             T0);
    return f;
}

static void check_bad(struct fsm *f, const struct bad_cmd *b, uint64_t client,
                      uint64_t seq, uint64_t t)
{
    struct mark m;
    mark_take(f, &m);
    msgpack_sbuffer sb;
    pack_entry(&sb, b, client, seq, t);
    const struct fsm_batch_result *res = apply_raw(f, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    ck_assert_msg(res->n == 1, "%s: %u results", b->label, res->n);
    ck_assert_msg(res->results[0].code == b->code, "%s: got %s (%s), want %s",
                  b->label, allot_error_name(res->results[0].code),
                  res->results[0].message ? res->results[0].message : "",
                  allot_error_name(b->code));
    ck_assert_msg(res->results[0].message != NULL &&
                      res->results[0].message[0] != '\0',
                  "%s: no message", b->label);
    mark_check(f, &m, b->label);
    mark_free(&m);
}

START_TEST(test_malformed_commands)
{
    struct fsm *f = busy_fsm();
    char d0[65];
    fsm_digest(f, d0);
    uint64_t v0 = fsm_catalog_version(f);
    unsigned n = 0;
    for (unsigned i = 0; i < sizeof BadCmds / sizeof BadCmds[0]; i++) {
        /* Without a session, then within one (the error is remembered, the
         * state still unchanged). */
        check_bad(f, &BadCmds[i], 0, 0, T0 + 1);
        check_bad(f, &BadCmds[i], 99, i + 1, T0 + 1);
        n += 2;
    }
    char label[128];
    for (unsigned i = 0; i < sizeof BadValidators / sizeof BadValidators[0];
         i++) {
        snprintf(label, sizeof label, "validator.add: %s",
                 BadValidators[i].label);
        VWhich = BadValidators[i].which;
        VBreak = BadValidators[i].with;
        struct bad_cmd b = {label, FSM_CMD_VALIDATOR_ADD, 1, va_broken,
                            ALLOT_EINTERNAL};
        check_bad(f, &b, 0, 0, T0 + 2);
        n++;
    }
    /* The unbroken map is accepted: the cases above failed for their one
     * change, not for the rest. */
    VWhich = -1;
    struct bad_cmd good = {"validator.add: valid", FSM_CMD_VALIDATOR_ADD, 1,
                           va_broken, 0};
    msgpack_sbuffer sb;
    pack_entry(&sb, &good, 0, 0, T0 + 3);
    const struct fsm_batch_result *res = apply_raw(f, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    /* "v" exists already (busy_fsm): the well-formed command gets as far as
     * the duplicate check. */
    ck_assert_int_eq(res->results[0].code, ALLOT_EEXISTS);

    ck_assert_uint_eq(fsm_catalog_version(f), v0);
    char d1[65];
    fsm_digest(f, d1);
    ck_assert_str_eq(d0, d1);
    /* The state machine still works, and a snapshot of it restores. */
    apply_ok(f, cmd_token("", "alice", 2, 1000), T0 + 4);
    struct fsm *g = fsm_clone(f);
    assert_same_state(f, g);
    fsm_close(g);
    fsm_close(f);
    (void)n;
}
END_TEST

/* Validators the normal encoder packs from bad structs: the state machine
 * checks them again rather than trusting the leader. */
START_TEST(test_malformed_validator_structs)
{
    struct fsm *f = busy_fsm();
    char long_prefix[QUOTA_PATH_MAX + 8];
    memset(long_prefix, 'a', sizeof long_prefix - 1);
    long_prefix[sizeof long_prefix - 1] = '\0';
    struct fsm_validator bad[] = {
        validator("", "org", false, "true", 100, false),
        validator("a b", "org", false, "true", 100, false),
        validator("ok", "org/", false, "true", 100, false),
        validator("ok", "/org", false, "true", 100, false),
        validator("ok", long_prefix, false, "true", 100, false),
        validator("ok", "org", false, "", 100, false),
        validator("ok", "org", true, "", 100, false),
        validator("ok", "org", false, "true", 0, false),
        validator("ok", "org", false, "true", 60001, false),
    };
    struct mark m;
    mark_take(f, &m);
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const struct fsm_result *r = apply1(f, cmd_vadd("", &bad[i]), T0 + 1);
        ck_assert_msg(r->code != 0, "bad validator %u (%s, \"%.20s\") accepted",
                      i, bad[i].name, bad[i].prefix);
        char label[32];
        snprintf(label, sizeof label, "bad validator %u", i);
        mark_check(f, &m, label);
    }
    mark_free(&m);
    /* Bounds that are allowed: timeout 1 and 60000, a 1024-byte target. */
    struct fsm_validator ok1 = validator("t1", "org", false, "true", 1, false);
    struct fsm_validator ok2 =
        validator("t2", "org", false, "true", 60000, true);
    struct fsm_validator ok3 = validator("t3", "", true, "", 10, false);
    memset(ok3.target, 'x', FSM_VALIDATOR_TARGET_MAX);
    ok3.target[FSM_VALIDATOR_TARGET_MAX] = '\0';
    apply_ok(f, cmd_vadd("", &ok1), T0 + 2);
    apply_ok(f, cmd_vadd("", &ok2), T0 + 2);
    apply_ok(f, cmd_vadd("", &ok3), T0 + 2);
    struct fsm *g = fsm_clone(f);
    assert_same_state(f, g);
    ck_assert_str_eq(covering(g, "x", 8), "t3");
    fsm_close(g);
    fsm_close(f);
}
END_TEST

static Suite *lifecycle_suite(void)
{
    Suite *s = suite_create("lifecycle");
    TCase *tokens = tcase_create("tokens");
    tcase_add_test(tokens, test_token_create);
    tcase_add_test(tokens, test_token_self_and_admin);
    tcase_add_test(tokens, test_token_expiry_by_entry_time);
    tcase_add_test(tokens, test_token_snapshot);
    suite_add_tcase(s, tokens);
    TCase *validators = tcase_create("validators");
    tcase_add_test(validators, test_validator_add_rm_ls);
    tcase_add_test(validators, test_validator_admin_only);
    tcase_add_test(validators, test_validator_prefix_matching);
    tcase_add_test(validators, test_validator_limit_and_snapshot);
    suite_add_tcase(s, validators);
    TCase *labels = tcase_create("labels");
    tcase_add_test(labels, test_labels_set_remove);
    tcase_add_test(labels, test_labels_limits);
    tcase_add_test(labels, test_labels_owners_and_sessions);
    suite_add_tcase(s, labels);
    TCase *malformed = tcase_create("malformed");
    tcase_add_test(malformed, test_malformed_commands);
    tcase_add_test(malformed, test_malformed_validator_structs);
    suite_add_tcase(s, malformed);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(lifecycle_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
