/* fsm_util.h - helpers shared by the state machine's unit tests
 * (test_catalog.c, test_audit.c): build commands, apply them as raft would,
 * take and restore snapshots, read the audit trail.
 *
 * Time is always the time_ms carried in an entry, never the wall clock. */
#ifndef ALLOT_TEST_FSM_UTIL_H
#define ALLOT_TEST_FSM_UTIL_H

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

#define T0 1000000u /* an arbitrary leader clock to start from */

/* --- Commands --- */

/* QUOTA_SET for path with space-separated KEY=VALUE fields. The path must
 * outlive the command until it is applied. */
static inline struct fsm_cmd cmd_set(const char *path, const char *kvs)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_QUOTA_SET;
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

static inline struct fsm_cmd cmd_rm(const char *path, bool recursive)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_QUOTA_RM;
    c.path = path;
    c.path_len = strlen(path);
    c.recursive = recursive;
    return c;
}

/* CAPACITY_SET: a resource is declared when its has_ flag is true. */
static inline struct fsm_cmd cmd_capacity(bool has_mem, uint64_t mem,
                                          bool has_vcores, uint64_t vcores)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_CAPACITY_SET;
    c.capacity.has_memory_mb = has_mem;
    c.capacity.memory_mb = mem;
    c.capacity.has_vcores = has_vcores;
    c.capacity.vcores = vcores;
    return c;
}

static inline struct fsm_cmd cmd_audit_config(bool has_records,
                                              uint64_t records, bool has_age,
                                              uint64_t age_ms)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_AUDIT_CONFIG;
    c.audit.has_max_records = has_records;
    c.audit.max_records = records;
    c.audit.has_max_age_ms = has_age;
    c.audit.max_age_ms = age_ms;
    return c;
}

static inline struct fsm_cmd cmd_leader(uint64_t id, const char *addr)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_LEADER;
    c.node_id = id;
    c.node_addr = addr;
    return c;
}

static inline struct fsm_cmd sess(struct fsm_cmd c, uint64_t client,
                                  uint64_t seq, uint64_t ack)
{
    c.client = client;
    c.seq = seq;
    c.ack = ack;
    return c;
}

static inline struct fsm_cmd by(struct fsm_cmd c, const char *principal)
{
    c.principal = principal;
    return c;
}

static inline struct fsm_cmd if_version(struct fsm_cmd c, uint64_t v)
{
    c.has_if_version = true;
    c.if_version = v;
    return c;
}

/* --- Principals --- */

/* Make each name of the NULL-terminated list an admin principal (a
 * principal the state machine lets change anything), in one entry at time
 * t, as an unsigned (--insecure) request may. Each is one change. */
static inline void fsm_util_principals(struct fsm *f, const char *const *names,
                                       uint64_t t);

/* --- Applying entries directly --- */

/* Apply a buffer exactly len bytes long (so ASan sees any over-read). */
static inline const struct fsm_batch_result *
apply_raw(struct fsm *f, const void *data, size_t len)
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

static inline const struct fsm_batch_result *
apply_cmds(struct fsm *f, const struct fsm_cmd *cmds, unsigned n, uint64_t t)
{
    struct raft_buffer buf;
    ck_assert_int_eq(fsm_batch_encode(cmds, n, t, &buf), 0);
    const struct fsm_batch_result *b = apply_raw(f, buf.base, buf.len);
    raft_free(buf.base);
    ck_assert_uint_eq(b->n, n);
    return b;
}

static inline const struct fsm_result *apply1(struct fsm *f, struct fsm_cmd c,
                                              uint64_t t)
{
    return &apply_cmds(f, &c, 1, t)->results[0];
}

static inline void fsm_util_principals(struct fsm *f, const char *const *names,
                                       uint64_t t)
{
    struct fsm_cmd cmds[16];
    unsigned n = 0;
    for (; names[n] != NULL; n++) {
        ck_assert_uint_lt(n, 16);
        memset(&cmds[n], 0, sizeof cmds[n]);
        cmds[n].type = FSM_CMD_PRINCIPAL_ADD;
        cmds[n].subject = names[n];
        memset(cmds[n].pubkey, (int)n + 1, sizeof cmds[n].pubkey);
        cmds[n].admin = true;
    }
    if (n == 0) {
        return;
    }
    const struct fsm_batch_result *b = apply_cmds(f, cmds, n, t);
    for (unsigned i = 0; i < n; i++) {
        ck_assert_msg(b->results[i].code == 0, "principal %s: %s", names[i],
                      b->results[i].message ? b->results[i].message : "");
    }
}

static inline void digest(const struct fsm *f, char hex[65])
{
    fsm_digest(f, hex);
    ck_assert_uint_eq(strlen(hex), 64);
}

/* --- Snapshots --- */

/* A snapshot as raft would hand it to restore: one raft_malloc'd buffer. */
static inline struct raft_buffer snapshot_take(struct fsm *f)
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

/* Restore buf into f. On success f owns buf; on failure it is freed here. */
static inline int snapshot_restore(struct fsm *f, struct raft_buffer buf)
{
    struct raft_fsm *rf = fsm_raft(f);
    int rv = rf->restore(rf, &buf);
    if (rv != 0) {
        raft_free(buf.base);
    }
    return rv;
}

/* A new state machine restored from a snapshot of f. */
static inline struct fsm *fsm_clone(struct fsm *f)
{
    struct fsm *g;
    ck_assert_int_eq(fsm_init(&g), 0);
    ck_assert_int_eq(snapshot_restore(g, snapshot_take(f)), 0);
    return g;
}

/* --- Audit --- */

/* fsm_audit_pack() output as bytes. Destroy sb. */
static inline void audit_bytes(const struct fsm *f,
                               const struct fsm_audit_query *q,
                               msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    fsm_audit_pack(f, q, &pk);
}

/* Every record and the bounds. */
static inline void audit_all_bytes(const struct fsm *f, msgpack_sbuffer *sb)
{
    struct fsm_audit_query q = {.limit = 1000};
    audit_bytes(f, &q, sb);
}

/* The same audit answer, byte for byte. */
static inline void assert_same_audit(const struct fsm *a, const struct fsm *b)
{
    msgpack_sbuffer x, y;
    audit_all_bytes(a, &x);
    audit_all_bytes(b, &y);
    ck_assert_uint_eq(x.size, y.size);
    ck_assert_mem_eq(x.data, y.data, x.size);
    msgpack_sbuffer_destroy(&x);
    msgpack_sbuffer_destroy(&y);
}

/* The same catalog, version, sessions and audit trail. */
static inline void assert_same_state(const struct fsm *a, const struct fsm *b)
{
    char da[65], db[65];
    digest(a, da);
    digest(b, db);
    ck_assert_str_eq(da, db);
    ck_assert_uint_eq(fsm_catalog_version(a), fsm_catalog_version(b));
    ck_assert_uint_eq(fsm_quota_count(a), fsm_quota_count(b));
    ck_assert_uint_eq(fsm_session_count(a), fsm_session_count(b));
    assert_same_audit(a, b);
}

/* Everything a refused command must leave alone, to compare before and
 * after. */
struct fsm_mark
{
    char digest[65];
    uint64_t version;
    uint64_t quotas;
    msgpack_sbuffer audit;
};

static inline void mark_take(const struct fsm *f, struct fsm_mark *m)
{
    digest(f, m->digest);
    m->version = fsm_catalog_version(f);
    m->quotas = fsm_quota_count(f);
    audit_all_bytes(f, &m->audit);
}

/* Assert f is as marked, and release the mark. */
static inline void mark_check(const struct fsm *f, struct fsm_mark *m)
{
    struct fsm_mark now;
    mark_take(f, &now);
    ck_assert_str_eq(now.digest, m->digest);
    ck_assert_uint_eq(now.version, m->version);
    ck_assert_uint_eq(now.quotas, m->quotas);
    ck_assert_uint_eq(now.audit.size, m->audit.size);
    ck_assert_mem_eq(now.audit.data, m->audit.data, m->audit.size);
    msgpack_sbuffer_destroy(&now.audit);
    msgpack_sbuffer_destroy(&m->audit);
}

#endif /* ALLOT_TEST_FSM_UTIL_H */
