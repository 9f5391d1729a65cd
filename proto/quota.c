/* quota.c - the field table and everything driven by it. */
#include "quota.h"

#include <errno.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "auth.h"
#include "wire.h"

static const char *const kind_names[] = {"unset", "capacity", "rate", NULL};
static const char *const unit_names[] = {"requests", "bytes", NULL};
static const char *const share_names[] = {"equal", "weighted", "demand", NULL};
static const char *const exceed_names[] = {"reject", "shadow", "delay", NULL};

#define OFF(field) offsetof(struct quota_fields, field)

const struct quota_field_desc quota_field_table[QF_COUNT] = {
    [QF_KIND] = {"kind", NULL, "kind", QFT_ENUM, OFF(kind), QUOTA_KINDS_ALL,
                 kind_names},
    [QF_GUARANTEED_MEMORY_MB] = {"guaranteed.memory_mb", "guaranteed",
                                 "memory_mb", QFT_U64,
                                 OFF(guaranteed_memory_mb),
                                 QUOTA_KINDS_CAPACITY, NULL},
    [QF_GUARANTEED_VCORES] = {"guaranteed.vcores", "guaranteed", "vcores",
                              QFT_U64, OFF(guaranteed_vcores),
                              QUOTA_KINDS_CAPACITY, NULL},
    [QF_MAX_MEMORY_MB] = {"max.memory_mb", "max", "memory_mb", QFT_U64,
                          OFF(max_memory_mb), QUOTA_KINDS_CAPACITY, NULL},
    [QF_MAX_VCORES] = {"max.vcores", "max", "vcores", QFT_U64, OFF(max_vcores),
                       QUOTA_KINDS_CAPACITY, NULL},
    [QF_MAX_APPS] = {"max_apps", NULL, "max_apps", QFT_U64, OFF(max_apps),
                     QUOTA_KINDS_CAPACITY, NULL},
    [QF_RATE] = {"rate", NULL, "rate", QFT_DOUBLE, OFF(rate), QUOTA_KINDS_RATE,
                 NULL},
    [QF_BURST] = {"burst", NULL, "burst", QFT_U64, OFF(burst), QUOTA_KINDS_RATE,
                  NULL},
    [QF_UNIT] = {"unit", NULL, "unit", QFT_ENUM, OFF(unit), QUOTA_KINDS_RATE,
                 unit_names},
    [QF_FLEET] = {"fleet", NULL, "fleet", QFT_NAME, OFF(fleet),
                  QUOTA_KINDS_RATE, NULL},
    [QF_SHARE] = {"share", NULL, "share", QFT_ENUM, OFF(share),
                  QUOTA_KINDS_RATE, share_names},
    [QF_PER_KEY] = {"per_key", NULL, "per_key", QFT_BOOL, OFF(per_key),
                    QUOTA_KINDS_RATE, NULL},
    [QF_ON_EXCEED] = {"on_exceed", NULL, "on_exceed", QFT_ENUM, OFF(on_exceed),
                      QUOTA_KINDS_ALL, exceed_names},
    [QF_MAX_DELAY_MS] = {"max_delay_ms", NULL, "max_delay_ms", QFT_U64,
                         OFF(max_delay_ms), QUOTA_KINDS_RATE, NULL},
};

#define BIT(id)          (1u << (id))
#define FIELD_PTR(f, d)  ((char *)(f) + (d)->offset)
#define FIELD_CPTR(f, d) ((const char *)(f) + (d)->offset)

const char *quota_kind_name(unsigned kind)
{
    return kind <= QUOTA_KIND_RATE ? kind_names[kind] : "unknown";
}

void quota_pack_labels(msgpack_packer *pk, char *const *labels, uint32_t n)
{
    msgpack_pack_map(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        const char *eq = strchr(labels[i], '=');
        size_t klen = eq != NULL ? (size_t)(eq - labels[i]) : strlen(labels[i]);
        wire_pack_strn(pk, labels[i], klen);
        wire_pack_str(pk, eq != NULL ? eq + 1 : "");
    }
}

bool quota_owner_valid(const char *owner, size_t len)
{
    if (len > 5 && memcmp(owner, "user:", 5) == 0) {
        return auth_name_valid(owner + 5, len - 5);
    }
    if (len > 6 && memcmp(owner, "group:", 6) == 0) {
        return auth_name_valid(owner + 6, len - 6);
    }
    return false;
}

bool quota_field_applies(const struct quota_field_desc *d, unsigned kind)
{
    return (d->kinds & (1u << kind)) != 0;
}

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static bool name_valid(const char *s, size_t len)
{
    if (len == 0 || len > QUOTA_SEGMENT_MAX) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (!name_char(s[i])) {
            return false;
        }
    }
    return true;
}

bool quota_label_valid(const char *key, size_t klen, const char *value,
                       size_t vlen)
{
    if (klen == 0 || klen > QUOTA_LABEL_KEY_MAX ||
        vlen > QUOTA_LABEL_VALUE_MAX) {
        return false;
    }
    for (size_t i = 0; i < klen; i++) {
        char c = key[i];
        if (!name_char(c) && c != '.' && c != '/') {
            return false;
        }
    }
    for (size_t i = 0; i < vlen; i++) {
        if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f) {
            return false;
        }
    }
    return true;
}

int quota_path_check(const char *path, size_t len, char *errmsg)
{
    static const char allowed[] =
        "a path is 1 to 8 segments of [A-Za-z0-9_-]{1,64} joined by '/'";
    if (len == 0) {
        return allot_errf(errmsg, ALLOT_EINVALID, "empty path: %s", allowed);
    }
    size_t start = 0;
    unsigned depth = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && path[i] != '/') {
            continue;
        }
        depth++;
        if (depth > QUOTA_DEPTH_MAX) {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "path deeper than %d segments: %s",
                              QUOTA_DEPTH_MAX, allowed);
        }
        if (!name_valid(path + start, i - start)) {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "bad path segment \"%.*s\": %s",
                              (int)((i - start) > 70 ? 70 : i - start),
                              path + start, allowed);
        }
        start = i + 1;
    }
    return 0;
}

/* --- Values ------------------------------------------------------------- */

static int enum_index(const char *const *names, const char *s, size_t len)
{
    for (int i = 0; names[i] != NULL; i++) {
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0) {
            return i;
        }
    }
    return -1;
}

static void enum_list(const char *const *names, int first, char *buf,
                      size_t size)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int i = first; names[i] != NULL && off < size; i++) {
        int n = snprintf(buf + off, size - off, "%s%s", i > first ? ", " : "",
                         names[i]);
        if (n < 0) {
            break;
        }
        off += (size_t)n;
    }
}

/* The first allowed enum value: "unset" is not a kind a user may name. */
static int enum_first(const struct quota_field_desc *d)
{
    return d->enum_names == kind_names ? 1 : 0;
}

/* Store one value given as text. */
static int field_parse(const struct quota_field_desc *d, struct quota_fields *p,
                       const char *v, size_t len, char *errmsg)
{
    char tmp[80];
    char *end;
    if (len >= sizeof tmp && d->type != QFT_NAME) {
        return allot_errf(errmsg, ALLOT_EINVALID, "%s: value too long",
                          d->name);
    }
    switch (d->type) {
    case QFT_U64: {
        memcpy(tmp, v, len);
        tmp[len] = '\0';
        errno = 0;
        unsigned long long x = strtoull(tmp, &end, 10);
        if (len == 0 || tmp[0] < '0' || tmp[0] > '9' || *end != '\0' ||
            errno != 0) {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "%s: \"%s\" is not a whole number from 0 to "
                              "18446744073709551615",
                              d->name, tmp);
        }
        memcpy(FIELD_PTR(p, d), &(uint64_t){x}, sizeof(uint64_t));
        return 0;
    }
    case QFT_DOUBLE: {
        memcpy(tmp, v, len);
        tmp[len] = '\0';
        errno = 0;
        double x = strtod(tmp, &end);
        if (len == 0 || *end != '\0' || errno != 0 || !isfinite(x) || x < 0) {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "%s: \"%s\" is not a finite number >= 0", d->name,
                              tmp);
        }
        memcpy(FIELD_PTR(p, d), &x, sizeof x);
        return 0;
    }
    case QFT_BOOL: {
        bool b;
        if ((len == 4 && memcmp(v, "true", 4) == 0) ||
            (len == 1 && v[0] == '1')) {
            b = true;
        } else if ((len == 5 && memcmp(v, "false", 5) == 0) ||
                   (len == 1 && v[0] == '0')) {
            b = false;
        } else {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "%s: \"%.*s\" is not true or false", d->name,
                              (int)len, v);
        }
        memcpy(FIELD_PTR(p, d), &b, sizeof b);
        return 0;
    }
    case QFT_ENUM: {
        int i = enum_index(d->enum_names, v, len);
        if (i < enum_first(d)) {
            char list[96];
            enum_list(d->enum_names, enum_first(d), list, sizeof list);
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "%s: \"%.*s\" is not one of %s", d->name,
                              (int)(len > 64 ? 64 : len), v, list);
        }
        *(uint8_t *)FIELD_PTR(p, d) = (uint8_t)i;
        return 0;
    }
    case QFT_NAME:
        if (!name_valid(v, len)) {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "%s: \"%.*s\" must match [A-Za-z0-9_-]{1,64}",
                              d->name, (int)(len > 70 ? 70 : len), v);
        }
        memcpy(FIELD_PTR(p, d), v, len);
        FIELD_PTR(p, d)[len] = '\0';
        return 0;
    }
    return ALLOT_EINTERNAL;
}

static const struct quota_field_desc *field_by_name(const char *name,
                                                    size_t len)
{
    for (unsigned i = 0; i < QF_COUNT; i++) {
        const char *n = quota_field_table[i].name;
        if (strlen(n) == len && memcmp(n, name, len) == 0) {
            return &quota_field_table[i];
        }
    }
    return NULL;
}

static unsigned field_id(const struct quota_field_desc *d)
{
    return (unsigned)(d - quota_field_table);
}

static void field_names(char *buf, size_t size)
{
    size_t off = 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < QF_COUNT && off < size; i++) {
        int n = snprintf(buf + off, size - off, "%s%s", i ? ", " : "",
                         quota_field_table[i].name);
        if (n < 0) {
            break;
        }
        off += (size_t)n;
    }
}

int quota_patch_parse_kv(struct quota_fields *p, const char *kv, char *errmsg)
{
    const char *eq = strchr(kv, '=');
    if (eq == NULL) {
        return allot_errf(errmsg, ALLOT_EINVALID, "\"%.64s\" is not KEY=VALUE",
                          kv);
    }
    const struct quota_field_desc *d = field_by_name(kv, (size_t)(eq - kv));
    if (d == NULL) {
        char names[256];
        field_names(names, sizeof names);
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "unknown field \"%.*s\" (allowed: %s)",
                          (int)(eq - kv > 64 ? 64 : eq - kv), kv, names);
    }
    int rv = field_parse(d, p, eq + 1, strlen(eq + 1), errmsg);
    if (rv == 0) {
        p->set |= BIT(field_id(d));
    }
    return rv;
}

/* The kind a patch implies: its kind field, else the kind its fields belong
 * to. QUOTA_KIND_UNSET when nothing tells, -1 when fields disagree. */
static int patch_kind(const struct quota_fields *p, char *errmsg)
{
    unsigned kinds = QUOTA_KINDS_ALL;
    const char *first = NULL;
    for (unsigned i = 1; i < QF_COUNT; i++) {
        if (!(p->set & BIT(i))) {
            continue;
        }
        unsigned k = kinds & quota_field_table[i].kinds;
        if (k == 0) {
            allot_errf(errmsg, ALLOT_EINVALID,
                       "fields %s and %s belong to different kinds", first,
                       quota_field_table[i].name);
            return -1;
        }
        if (k != kinds) {
            first = quota_field_table[i].name;
        }
        kinds = k;
    }
    if (p->set & BIT(QF_KIND)) {
        if (!(kinds & (1u << p->kind))) {
            allot_errf(errmsg, ALLOT_EINVALID,
                       "field %s does not apply to kind %s", first,
                       quota_kind_name(p->kind));
            return -1;
        }
        return p->kind;
    }
    if (kinds == QUOTA_KINDS_CAPACITY) {
        return QUOTA_KIND_CAPACITY;
    }
    if (kinds == QUOTA_KINDS_RATE) {
        return QUOTA_KIND_RATE;
    }
    return QUOTA_KIND_UNSET;
}

int quota_patch_check(const struct quota_fields *p, char *errmsg)
{
    if (p->set == 0) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "nothing to set: give at least one KEY=VALUE");
    }
    return patch_kind(p, errmsg) < 0 ? ALLOT_EINVALID : 0;
}

int quota_fields_defaults(const struct quota_fields *patch,
                          struct quota_fields *out, char *errmsg)
{
    int kind = patch_kind(patch, errmsg);
    if (kind < 0) {
        return ALLOT_EINVALID;
    }
    if (kind == QUOTA_KIND_UNSET) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "a new quota needs kind=capacity or kind=rate (or "
                          "fields that imply one)");
    }
    memset(out, 0, sizeof *out);
    out->kind = (uint8_t)kind;
    if (kind == QUOTA_KIND_RATE) {
        out->unit = QUOTA_UNIT_REQUESTS;
        out->share = QUOTA_SHARE_EQUAL;
        strcpy(out->fleet, "default");
        /* One second of traffic: the usual burst when none is given. */
        if ((patch->set & BIT(QF_RATE)) && !(patch->set & BIT(QF_BURST))) {
            double b = ceil(patch->rate);
            out->burst = b < 1 ? 1 : b > 1e18 ? (uint64_t)1e18 : (uint64_t)b;
        } else {
            out->burst = 1;
        }
    }
    out->on_exceed = QUOTA_EXCEED_REJECT;
    return 0;
}

int quota_fields_merge(struct quota_fields *q, const struct quota_fields *patch,
                       char *errmsg)
{
    int kind = patch_kind(patch, errmsg);
    if (kind < 0) {
        return ALLOT_EINVALID;
    }
    if (kind != QUOTA_KIND_UNSET && kind != q->kind) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "cannot change kind from %s to %s: remove the quota "
                          "and create it again",
                          quota_kind_name(q->kind),
                          quota_kind_name((unsigned)kind));
    }
    struct quota_fields next = *q;
    for (unsigned i = 1; i < QF_COUNT; i++) {
        const struct quota_field_desc *d = &quota_field_table[i];
        if (!(patch->set & BIT(i))) {
            continue;
        }
        size_t size = d->type == QFT_U64      ? sizeof(uint64_t)
                      : d->type == QFT_DOUBLE ? sizeof(double)
                      : d->type == QFT_BOOL   ? sizeof(bool)
                      : d->type == QFT_ENUM   ? sizeof(uint8_t)
                                              : QUOTA_FLEET_MAX + 1;
        memcpy(FIELD_PTR(&next, d), FIELD_CPTR(patch, d), size);
    }
    /* Rules on the result, whatever the patch carried. */
    if (next.kind == QUOTA_KIND_RATE) {
        if (!(next.rate >= QUOTA_RATE_MIN) || next.rate > QUOTA_RATE_MAX) {
            /* Rules compare rates in thousandths: a smaller rate would
             * count as nothing in its parent's sum. */
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "rate must be > 0 (at least 0.001) and at most "
                              "1e12 units per second");
        }
        if (next.burst < 1) {
            return allot_errf(errmsg, ALLOT_EINVALID, "burst must be >= 1");
        }
    } else if (next.on_exceed == QUOTA_EXCEED_DELAY) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "on_exceed=delay applies to rate quotas only "
                          "(capacity allows reject or shadow)");
    }
    *q = next;
    q->set = 0;
    return 0;
}

/* --- msgpack ------------------------------------------------------------- */

static void field_pack_value(msgpack_packer *pk,
                             const struct quota_field_desc *d,
                             const struct quota_fields *f)
{
    switch (d->type) {
    case QFT_U64: {
        uint64_t v;
        memcpy(&v, FIELD_CPTR(f, d), sizeof v);
        msgpack_pack_uint64(pk, v);
        break;
    }
    case QFT_DOUBLE: {
        double v;
        memcpy(&v, FIELD_CPTR(f, d), sizeof v);
        msgpack_pack_double(pk, v);
        break;
    }
    case QFT_BOOL:
        if (*(const bool *)FIELD_CPTR(f, d)) {
            msgpack_pack_true(pk);
        } else {
            msgpack_pack_false(pk);
        }
        break;
    case QFT_ENUM:
        wire_pack_str(pk, d->enum_names[*(const uint8_t *)FIELD_CPTR(f, d)]);
        break;
    case QFT_NAME:
        wire_pack_str(pk, FIELD_CPTR(f, d));
        break;
    }
}

static bool field_selected(unsigned i, const struct quota_fields *f,
                           bool patch_only)
{
    if (patch_only) {
        return (f->set & BIT(i)) != 0;
    }
    return quota_field_applies(&quota_field_table[i], f->kind);
}

unsigned quota_fields_pack(msgpack_packer *pk, const struct quota_fields *f,
                           bool patch_only)
{
    unsigned entries = 0;
    unsigned i = 0;
    while (i < QF_COUNT) {
        const struct quota_field_desc *d = &quota_field_table[i];
        if (d->group == NULL) {
            if (field_selected(i, f, patch_only)) {
                if (pk != NULL) {
                    wire_pack_str(pk, d->leaf);
                    field_pack_value(pk, d, f);
                }
                entries++;
            }
            i++;
            continue;
        }
        /* A group's fields are adjacent in the table: pack them as one map. */
        unsigned end = i;
        unsigned n = 0;
        while (end < QF_COUNT && quota_field_table[end].group != NULL &&
               strcmp(quota_field_table[end].group, d->group) == 0) {
            n += field_selected(end, f, patch_only);
            end++;
        }
        if (n > 0) {
            if (pk != NULL) {
                wire_pack_str(pk, d->group);
                msgpack_pack_map(pk, n);
                for (unsigned j = i; j < end; j++) {
                    if (field_selected(j, f, patch_only)) {
                        wire_pack_str(pk, quota_field_table[j].leaf);
                        field_pack_value(pk, &quota_field_table[j], f);
                    }
                }
            }
            entries++;
        }
        i = end;
    }
    return entries;
}

/* Decode one field's value object. */
static int field_unpack(const struct quota_field_desc *d,
                        const msgpack_object *o, struct quota_fields *p,
                        char *errmsg)
{
    switch (d->type) {
    case QFT_U64:
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "%s must be a non-negative integer", d->name);
        }
        memcpy(FIELD_PTR(p, d), &o->via.u64, sizeof(uint64_t));
        return 0;
    case QFT_DOUBLE: {
        double v;
        if (o->type == MSGPACK_OBJECT_FLOAT32 ||
            o->type == MSGPACK_OBJECT_FLOAT64) {
            v = o->via.f64;
        } else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            v = (double)o->via.u64;
        } else {
            return allot_errf(errmsg, ALLOT_EINVALID, "%s must be a number",
                              d->name);
        }
        if (!isfinite(v) || v < 0) {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "%s must be a finite number >= 0", d->name);
        }
        memcpy(FIELD_PTR(p, d), &v, sizeof v);
        return 0;
    }
    case QFT_BOOL:
        if (o->type != MSGPACK_OBJECT_BOOLEAN) {
            return allot_errf(errmsg, ALLOT_EINVALID, "%s must be a boolean",
                              d->name);
        }
        *(bool *)FIELD_PTR(p, d) = o->via.boolean;
        return 0;
    case QFT_ENUM:
    case QFT_NAME:
        if (o->type != MSGPACK_OBJECT_STR) {
            return allot_errf(errmsg, ALLOT_EINVALID, "%s must be a string",
                              d->name);
        }
        return field_parse(d, p, o->via.str.ptr, o->via.str.size, errmsg);
    }
    return ALLOT_EINTERNAL;
}

static const struct quota_field_desc *field_by_leaf(const char *group,
                                                    const msgpack_object *key)
{
    for (unsigned i = 0; i < QF_COUNT; i++) {
        const struct quota_field_desc *d = &quota_field_table[i];
        bool same_group =
            group == NULL ? d->group == NULL
                          : (d->group != NULL && strcmp(d->group, group) == 0);
        if (same_group && wire_str_eq(key, d->leaf)) {
            return d;
        }
    }
    return NULL;
}

static bool is_group(const msgpack_object *key, const char **group)
{
    for (unsigned i = 0; i < QF_COUNT; i++) {
        if (quota_field_table[i].group != NULL &&
            wire_str_eq(key, quota_field_table[i].group)) {
            *group = quota_field_table[i].group;
            return true;
        }
    }
    return false;
}

static int patch_unpack_level(const msgpack_object *map, const char *group,
                              struct quota_fields *p, bool skip_meta,
                              char *errmsg)
{
    static const char *const meta[] = {"path",       "version", "created_ms",
                                       "updated_ms", "owners",  "labels",
                                       NULL};
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *v = &map->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR) {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "quota field names must be strings");
        }
        const char *g;
        if (group == NULL && is_group(k, &g)) {
            if (v->type != MSGPACK_OBJECT_MAP) {
                return allot_errf(errmsg, ALLOT_EINVALID, "%s must be a map",
                                  g);
            }
            int rv = patch_unpack_level(v, g, p, false, errmsg);
            if (rv != 0) {
                return rv;
            }
            continue;
        }
        const struct quota_field_desc *d = field_by_leaf(group, k);
        if (d == NULL) {
            bool is_meta = false;
            for (int m = 0; skip_meta && meta[m] != NULL; m++) {
                is_meta |= wire_str_eq(k, meta[m]);
            }
            if (is_meta) {
                continue;
            }
            char names[256];
            field_names(names, sizeof names);
            return allot_errf(
                errmsg, ALLOT_EINVALID,
                "unknown field \"%s%s%.*s\" (allowed: %s)", group ? group : "",
                group ? "." : "",
                (int)(k->via.str.size > 64 ? 64 : k->via.str.size),
                k->via.str.ptr, names);
        }
        int rv = field_unpack(d, v, p, errmsg);
        if (rv != 0) {
            return rv;
        }
        p->set |= BIT(field_id(d));
    }
    return 0;
}

int quota_patch_unpack(const msgpack_object *map, struct quota_fields *p,
                       char *errmsg)
{
    memset(p, 0, sizeof *p);
    if (map->type != MSGPACK_OBJECT_MAP) {
        return allot_errf(errmsg, ALLOT_EINVALID, "quota fields must be a map");
    }
    return patch_unpack_level(map, NULL, p, false, errmsg);
}

void quota_pack(msgpack_packer *pk, const struct quota *q)
{
    unsigned n = quota_fields_pack(NULL, &q->f, false);
    msgpack_pack_map(pk, n + 6);
    wire_pack_kv_str(pk, "path", q->path);
    wire_pack_kv_u64(pk, "version", q->version);
    wire_pack_kv_u64(pk, "created_ms", q->created_ms);
    wire_pack_kv_u64(pk, "updated_ms", q->updated_ms);
    quota_fields_pack(pk, &q->f, false);
    wire_pack_str(pk, "labels");
    quota_pack_labels(pk, q->labels, q->n_labels);
    wire_pack_str(pk, "owners");
    msgpack_pack_array(pk, q->n_owners);
    for (uint32_t i = 0; i < q->n_owners; i++) {
        wire_pack_str(pk, q->owners[i]);
    }
}

/* Compare the key of "key=value" with key[0..len). */
static int label_key_cmp(const char *kv, const char *key, size_t len)
{
    size_t klen = strcspn(kv, "=");
    int c = memcmp(kv, key, klen < len ? klen : len);
    if (c != 0) {
        return c;
    }
    return klen < len ? -1 : klen > len;
}

static char *dup_obj_str(const msgpack_object *o)
{
    char *s = malloc(o->via.str.size + 1);
    if (s != NULL) {
        wire_memcpy(s, o->via.str.ptr, o->via.str.size);
        s[o->via.str.size] = '\0';
    }
    return s;
}

int quota_unpack(const msgpack_object *map, struct quota *q, char *errmsg)
{
    memset(q, 0, sizeof *q);
    if (map->type != MSGPACK_OBJECT_MAP) {
        return allot_errf(errmsg, ALLOT_EINVALID, "quota must be a map");
    }
    const char *path;
    size_t path_len;
    int rv = wire_get_str(map, "path", true, &path, &path_len, errmsg);
    if (rv != 0) {
        return rv;
    }
    rv = quota_path_check(path, path_len, errmsg);
    if (rv != 0) {
        return rv;
    }
    uint64_t *nums[] = {&q->version, &q->created_ms, &q->updated_ms};
    const char *names[] = {"version", "created_ms", "updated_ms"};
    for (int i = 0; i < 3; i++) {
        rv = wire_get_u64(map, names[i], true, nums[i], errmsg);
        if (rv != 0) {
            return rv;
        }
    }
    rv = patch_unpack_level(map, NULL, &q->f, true, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (!(q->f.set & BIT(QF_KIND)) || q->f.kind == QUOTA_KIND_UNSET) {
        return allot_errf(errmsg, ALLOT_EINVALID, "quota without a kind");
    }
    for (unsigned i = 0; i < QF_COUNT; i++) {
        if (quota_field_applies(&quota_field_table[i], q->f.kind) &&
            !(q->f.set & BIT(i))) {
            return allot_errf(
                errmsg, ALLOT_EINVALID, "%s quota without field %s",
                quota_kind_name(q->f.kind), quota_field_table[i].name);
        }
    }
    q->f.set = 0;
    const msgpack_object *owners = wire_map_get(map, "owners");
    if (owners != NULL) {
        if (owners->type != MSGPACK_OBJECT_ARRAY ||
            owners->via.array.size > QUOTA_OWNERS_MAX) {
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "owners must be an array of at most %d strings",
                              QUOTA_OWNERS_MAX);
        }
        for (uint32_t i = 0; i < owners->via.array.size; i++) {
            const msgpack_object *o = &owners->via.array.ptr[i];
            if (o->type != MSGPACK_OBJECT_STR ||
                !quota_owner_valid(o->via.str.ptr, o->via.str.size)) {
                return allot_errf(errmsg, ALLOT_EINVALID,
                                  "owners are user:NAME or group:NAME");
            }
        }
    }
    q->path = malloc(path_len + 1);
    if (q->path == NULL) {
        return ALLOT_ENOMEM;
    }
    memcpy(q->path, path, path_len);
    q->path[path_len] = '\0';
    if (owners != NULL && owners->via.array.size > 0) {
        q->owners = calloc(owners->via.array.size, sizeof *q->owners);
        if (q->owners == NULL) {
            quota_free(q);
            return ALLOT_ENOMEM;
        }
        for (uint32_t i = 0; i < owners->via.array.size; i++) {
            q->owners[i] = dup_obj_str(&owners->via.array.ptr[i]);
            if (q->owners[i] == NULL) {
                quota_free(q);
                return ALLOT_ENOMEM;
            }
            q->n_owners++;
        }
    }
    const msgpack_object *labels = wire_map_get(map, "labels");
    if (labels != NULL) {
        if (labels->type != MSGPACK_OBJECT_MAP ||
            labels->via.map.size > QUOTA_LABELS_MAX) {
            quota_free(q);
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "labels must be a map of at most %d entries",
                              QUOTA_LABELS_MAX);
        }
        q->labels = calloc(labels->via.map.size + 1, sizeof *q->labels);
        if (q->labels == NULL) {
            quota_free(q);
            return ALLOT_ENOMEM;
        }
        for (uint32_t i = 0; i < labels->via.map.size; i++) {
            const msgpack_object *k = &labels->via.map.ptr[i].key;
            const msgpack_object *v = &labels->via.map.ptr[i].val;
            if (k->type != MSGPACK_OBJECT_STR ||
                v->type != MSGPACK_OBJECT_STR ||
                !quota_label_valid(k->via.str.ptr, k->via.str.size,
                                   v->via.str.ptr, v->via.str.size) ||
                (i > 0 && label_key_cmp(q->labels[i - 1], k->via.str.ptr,
                                        k->via.str.size) >= 0)) {
                quota_free(q);
                return allot_errf(errmsg, ALLOT_EINVALID,
                                  "bad label (keys sorted, unique, "
                                  "[A-Za-z0-9_./-]{1,63}; values up to 255 "
                                  "printable bytes)");
            }
            char *kv = malloc(k->via.str.size + v->via.str.size + 2);
            if (kv == NULL) {
                quota_free(q);
                return ALLOT_ENOMEM;
            }
            wire_memcpy(kv, k->via.str.ptr, k->via.str.size);
            kv[k->via.str.size] = '=';
            wire_memcpy(kv + k->via.str.size + 1, v->via.str.ptr,
                        v->via.str.size);
            kv[k->via.str.size + 1 + v->via.str.size] = '\0';
            q->labels[q->n_labels++] = kv;
        }
    }
    return 0;
}

void quota_free(struct quota *q)
{
    if (q == NULL) {
        return;
    }
    for (uint32_t i = 0; i < q->n_owners; i++) {
        free(q->owners[i]);
    }
    free(q->owners);
    for (uint32_t i = 0; i < q->n_labels; i++) {
        free(q->labels[i]);
    }
    free(q->labels);
    q->labels = NULL;
    q->n_labels = 0;
    free(q->path);
    q->owners = NULL;
    q->path = NULL;
    q->n_owners = 0;
}

void quota_field_format(const struct quota_field_desc *d,
                        const struct quota_fields *f, char *buf, size_t size)
{
    switch (d->type) {
    case QFT_U64: {
        uint64_t v;
        memcpy(&v, FIELD_CPTR(f, d), sizeof v);
        snprintf(buf, size, "%llu", (unsigned long long)v);
        break;
    }
    case QFT_DOUBLE: {
        double v;
        memcpy(&v, FIELD_CPTR(f, d), sizeof v);
        snprintf(buf, size, "%.15g", v);
        break;
    }
    case QFT_BOOL:
        snprintf(buf, size, "%s",
                 *(const bool *)FIELD_CPTR(f, d) ? "true" : "false");
        break;
    case QFT_ENUM:
        snprintf(buf, size, "%s",
                 d->enum_names[*(const uint8_t *)FIELD_CPTR(f, d)]);
        break;
    case QFT_NAME:
        snprintf(buf, size, "%s", FIELD_CPTR(f, d));
        break;
    }
}

void quota_digest_toggle(uint8_t digest[QUOTA_DIGEST_SIZE], const char *path,
                         size_t len, uint64_t version)
{
    uint8_t le[9] = {0};
    uint8_t h[QUOTA_DIGEST_SIZE];
    for (unsigned i = 0; i < 8; i++) {
        le[1 + i] = (uint8_t)(version >> (8 * i));
    }
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, sizeof h);
    crypto_generichash_update(&st, (const unsigned char *)path, len);
    crypto_generichash_update(&st, le, sizeof le); /* NUL, then version */
    crypto_generichash_final(&st, h, sizeof h);
    for (unsigned i = 0; i < sizeof h; i++) {
        digest[i] ^= h[i];
    }
}
