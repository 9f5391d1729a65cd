/* audit.c - the audit ring (see audit.h). */
#include "audit.h"

#include <stdlib.h>
#include <string.h>

#include "../proto/allot_error.h"
#include "../proto/wire.h"

void audit_init(struct audit_log *a)
{
    memset(a, 0, sizeof *a);
    a->max_records = AUDIT_MAX_RECORDS_DEFAULT;
    a->max_age_ms = AUDIT_MAX_AGE_MS_DEFAULT;
}

static void record_free(struct audit_record *r)
{
    free(r->principal);
    free(r->op);
    free(r->path);
    free(r->old_value);
    free(r->new_value);
    memset(r, 0, sizeof *r);
}

void audit_free(struct audit_log *a)
{
    for (size_t i = 0; i < a->n; i++) {
        record_free(&a->ring[(a->head + i) % a->cap]);
    }
    free(a->ring);
    a->ring = NULL;
    a->cap = a->n = a->head = 0;
}

const struct audit_record *audit_at(const struct audit_log *a, size_t i)
{
    return &a->ring[(a->head + i) % a->cap];
}

static void drop_oldest(struct audit_log *a)
{
    record_free(&a->ring[a->head]);
    a->head = (a->head + 1) % a->cap;
    a->n--;
}

void audit_expire(struct audit_log *a, uint64_t now_ms)
{
    while (a->n > 0 && a->n > a->max_records) {
        drop_oldest(a);
    }
    while (a->n > 0) {
        const struct audit_record *r = &a->ring[a->head];
        if (now_ms <= r->time_ms || now_ms - r->time_ms <= a->max_age_ms) {
            break;
        }
        drop_oldest(a);
    }
}

/* Grow the ring, unrolling it so head is 0 again. */
static int grow(struct audit_log *a)
{
    size_t cap = a->cap ? a->cap * 2 : 64;
    if (cap > a->max_records && a->max_records >= a->n + 1) {
        cap = (size_t)a->max_records;
    }
    struct audit_record *ring = calloc(cap, sizeof *ring);
    if (ring == NULL) {
        return ALLOT_ENOMEM;
    }
    for (size_t i = 0; i < a->n; i++) {
        ring[i] = a->ring[(a->head + i) % a->cap];
    }
    free(a->ring);
    a->ring = ring;
    a->cap = cap;
    a->head = 0;
    return 0;
}

int audit_append(struct audit_log *a, struct audit_record *r, uint64_t now_ms)
{
    if (a->max_records == 0) {
        record_free(r);
        return 0;
    }
    if (a->n == a->max_records) {
        drop_oldest(a);
    }
    if (a->n == a->cap && grow(a) != 0) {
        record_free(r);
        return ALLOT_ENOMEM;
    }
    a->ring[(a->head + a->n) % a->cap] = *r;
    a->n++;
    memset(r, 0, sizeof *r);
    audit_expire(a, now_ms);
    return 0;
}

size_t audit_after_version(const struct audit_log *a, uint64_t v)
{
    size_t lo = 0, hi = a->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (audit_at(a, mid)->version <= v) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

char *audit_take_bytes(msgpack_sbuffer *sb, size_t *len)
{
    *len = sb->size;
    char *out = malloc(sb->size > 0 ? sb->size : 1);
    if (out != NULL) {
        memcpy(out, sb->data, sb->size);
    } else {
        *len = 0;
    }
    msgpack_sbuffer_destroy(sb);
    return out;
}

/* Embed bytes that already are one msgpack value. */
static void pack_raw(msgpack_packer *pk, const char *p, size_t len)
{
    if (p == NULL) {
        msgpack_pack_nil(pk);
        return;
    }
    pk->callback(pk->data, p, len);
}

void audit_pack_record(msgpack_packer *pk, const struct audit_record *r)
{
    msgpack_pack_map(pk, 9);
    wire_pack_kv_u64(pk, "version", r->version);
    wire_pack_kv_u64(pk, "time_ms", r->time_ms);
    wire_pack_kv_str(pk, "principal", r->principal);
    wire_pack_kv_str(pk, "op", r->op);
    wire_pack_kv_str(pk, "path", r->path);
    wire_pack_str(pk, "old");
    pack_raw(pk, r->old_value, r->old_len);
    wire_pack_str(pk, "new");
    pack_raw(pk, r->new_value, r->new_len);
    wire_pack_kv_u64(pk, "client", r->client);
    wire_pack_kv_u64(pk, "seq", r->seq);
}

void audit_pack(msgpack_packer *pk, const struct audit_log *a)
{
    msgpack_pack_map(pk, 3);
    wire_pack_kv_u64(pk, "max_records", a->max_records);
    wire_pack_kv_u64(pk, "max_age_ms", a->max_age_ms);
    wire_pack_str(pk, "records");
    msgpack_pack_array(pk, (uint32_t)a->n);
    for (size_t i = 0; i < a->n; i++) {
        audit_pack_record(pk, audit_at(a, i));
    }
}

static char *dup_str(const msgpack_object *o)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_STR) {
        return NULL;
    }
    char *s = malloc(o->via.str.size + 1);
    if (s != NULL) {
        wire_memcpy(s, o->via.str.ptr, o->via.str.size);
        s[o->via.str.size] = '\0';
    }
    return s;
}

/* Re-encode a decoded value (old/new) into owned msgpack bytes. */
static int dup_value(const msgpack_object *o, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) {
        return 0;
    }
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_object(&pk, *o);
    *out = audit_take_bytes(&sb, len);
    return *out != NULL || *len == 0 ? 0 : ALLOT_ENOMEM;
}

int audit_unpack(const msgpack_object *o, struct audit_log *a)
{
    const msgpack_object *records = wire_map_get(o, "records");
    if (wire_get_u64(o, "max_records", true, &a->max_records, NULL) != 0 ||
        wire_get_u64(o, "max_age_ms", true, &a->max_age_ms, NULL) != 0 ||
        a->max_records > AUDIT_MAX_RECORDS_LIMIT || records == NULL ||
        records->type != MSGPACK_OBJECT_ARRAY ||
        records->via.array.size > a->max_records) {
        return ALLOT_EPROTOCOL;
    }
    for (uint32_t i = 0; i < records->via.array.size; i++) {
        const msgpack_object *m = &records->via.array.ptr[i];
        struct audit_record r = {0};
        int rv = 0;
        if (wire_get_u64(m, "version", true, &r.version, NULL) != 0 ||
            wire_get_u64(m, "time_ms", true, &r.time_ms, NULL) != 0 ||
            wire_get_u64(m, "client", true, &r.client, NULL) != 0 ||
            wire_get_u64(m, "seq", true, &r.seq, NULL) != 0) {
            return ALLOT_EPROTOCOL;
        }
        r.principal = dup_str(wire_map_get(m, "principal"));
        r.op = dup_str(wire_map_get(m, "op"));
        r.path = dup_str(wire_map_get(m, "path"));
        if (r.principal == NULL || r.op == NULL || r.path == NULL) {
            rv = ALLOT_EPROTOCOL;
        }
        if (rv == 0) {
            rv = dup_value(wire_map_get(m, "old"), &r.old_value, &r.old_len);
        }
        if (rv == 0) {
            rv = dup_value(wire_map_get(m, "new"), &r.new_value, &r.new_len);
        }
        if (rv != 0) {
            record_free(&r);
            return rv;
        }
        /* No expiry while restoring: the snapshot is already bounded, and
         * "now" is the snapshot's, applied by the caller afterwards. */
        if (a->n == a->cap && grow(a) != 0) {
            record_free(&r);
            return ALLOT_ENOMEM;
        }
        a->ring[(a->head + a->n) % a->cap] = r;
        a->n++;
    }
    return 0;
}
