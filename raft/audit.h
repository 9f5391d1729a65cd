/* audit.h - the audit trail inside the state machine (private to raft/).
 *
 * Every change the state machine accepts appends one record: who (the
 * principal the leader authenticated), when (the leader's clock in the
 * entry), what (operation, path, the value before and after, as msgpack),
 * the catalog version it produced and the client's request id. Records live
 * in a ring in version order, kept in snapshots, and are forgotten by count
 * and by age — both bounds replicated settings (audit.config), so every
 * replica forgets the same records at the same entry. */
#ifndef ALLOT_RAFT_AUDIT_H
#define ALLOT_RAFT_AUDIT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Defaults: a record holds a change's old and new value (about 500 bytes
 * with a typical quota), so 10,000 records cost about 5 MB. */
#define AUDIT_MAX_RECORDS_DEFAULT 10000
#define AUDIT_MAX_AGE_MS_DEFAULT  (7ull * 24 * 3600 * 1000)
#define AUDIT_MAX_RECORDS_LIMIT   10000000

struct audit_record
{
    uint64_t version;
    uint64_t time_ms;
    uint64_t client;
    uint64_t seq;
    char *principal; /* owned */
    char *op;        /* owned: "quota.set", "quota.rm", "capacity.set" */
    char *path;      /* owned; "" for cluster-wide changes */
    char *old_value; /* owned msgpack, or NULL */
    size_t old_len;
    char *new_value; /* owned msgpack, or NULL */
    size_t new_len;
};

struct audit_log
{
    struct audit_record *ring;
    size_t cap;
    size_t head; /* index of the oldest record */
    size_t n;
    uint64_t max_records;
    uint64_t max_age_ms;
};

void audit_init(struct audit_log *a);
void audit_free(struct audit_log *a);

/* Append r (the log takes ownership of its strings, also on failure, when
 * they are freed), then forget what the bounds exclude at now_ms.
 * ALLOT_ENOMEM if the ring could not grow (the record is dropped). */
int audit_append(struct audit_log *a, struct audit_record *r, uint64_t now_ms);

/* Forget records beyond the bounds (after a bound changed). */
void audit_expire(struct audit_log *a, uint64_t now_ms);

/* i-th record from the oldest, i < a->n. */
const struct audit_record *audit_at(const struct audit_log *a, size_t i);

/* Index of the first record with version > v (a->n if none). */
size_t audit_after_version(const struct audit_log *a, uint64_t v);

/* The bytes of sb in a buffer of exactly that size (sb is destroyed).
 * msgpack_sbuffer grows in 8 KiB steps: kept as they are, 20,000 records
 * with two values each would hold 320 MB for a few megabytes of data. */
char *audit_take_bytes(msgpack_sbuffer *sb, size_t *len);

/* One record as a map (the value fields embedded as msgpack). */
void audit_pack_record(msgpack_packer *pk, const struct audit_record *r);

/* Snapshot: settings and every record; restore into an empty log. */
void audit_pack(msgpack_packer *pk, const struct audit_log *a);
int audit_unpack(const msgpack_object *o, struct audit_log *a);

#endif /* ALLOT_RAFT_AUDIT_H */
