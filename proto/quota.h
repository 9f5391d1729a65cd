/* quota.h - the quota model as every binary sees it: fields, paths, codecs.
 *
 * One table (quota.c) describes every settable field once: its name on the
 * command line ("guaranteed.memory_mb"), its place in msgpack/JSON (the
 * "guaranteed" map, key "memory_mb"), its type, which kinds it belongs to and
 * its allowed values. Parsing KEY=VALUE, msgpack encode/decode, merging a
 * patch and printing all walk that table, so a new field is one line there.
 *
 * A patch is a struct quota_fields whose `set` mask says which fields it
 * carries; `quota set` sends a patch, the state machine merges it into the
 * stored quota (or a new one with defaults). */
#ifndef ALLOT_QUOTA_H
#define ALLOT_QUOTA_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QUOTA_SEGMENT_MAX     64
#define QUOTA_DEPTH_MAX       8
#define QUOTA_PATH_MAX        (QUOTA_DEPTH_MAX * (QUOTA_SEGMENT_MAX + 1))
#define QUOTA_FLEET_MAX       64
#define QUOTA_OWNERS_MAX      32
#define QUOTA_LABELS_MAX      32
#define QUOTA_LABEL_KEY_MAX   63
#define QUOTA_LABEL_VALUE_MAX 255
/* Largest rate a quota may have, in units per second. */
#define QUOTA_RATE_MAX 1e12
/* Smallest: the rules compare rates in thousandths of a unit. */
#define QUOTA_RATE_MIN 0.001

enum quota_kind {
    QUOTA_KIND_UNSET = 0,
    QUOTA_KIND_CAPACITY = 1,
    QUOTA_KIND_RATE = 2,
};

enum quota_unit { QUOTA_UNIT_REQUESTS = 0, QUOTA_UNIT_BYTES = 1 };
enum quota_share {
    QUOTA_SHARE_EQUAL = 0,
    QUOTA_SHARE_WEIGHTED = 1,
    QUOTA_SHARE_DEMAND = 2,
};
enum quota_on_exceed {
    QUOTA_EXCEED_REJECT = 0,
    QUOTA_EXCEED_SHADOW = 1,
    QUOTA_EXCEED_DELAY = 2,
};

/* Settable fields of a quota. As a patch, `set` has bit (1 << QF_x) for each
 * field present. */
struct quota_fields
{
    uint32_t set;
    uint8_t kind;
    /* capacity */
    uint64_t guaranteed_memory_mb;
    uint64_t guaranteed_vcores;
    uint64_t max_memory_mb;
    uint64_t max_vcores;
    uint64_t max_apps;
    /* rate */
    double rate; /* units per second, > 0 */
    uint64_t burst;
    uint8_t unit;
    uint8_t share;
    bool per_key;
    char fleet[QUOTA_FLEET_MAX + 1];
    /* both */
    uint8_t on_exceed;
    uint64_t max_delay_ms;
};

/* Field indexes, in table order (also the order they are printed). */
enum quota_field_id {
    QF_KIND,
    QF_GUARANTEED_MEMORY_MB,
    QF_GUARANTEED_VCORES,
    QF_MAX_MEMORY_MB,
    QF_MAX_VCORES,
    QF_MAX_APPS,
    QF_RATE,
    QF_BURST,
    QF_UNIT,
    QF_FLEET,
    QF_SHARE,
    QF_PER_KEY,
    QF_ON_EXCEED,
    QF_MAX_DELAY_MS,
    QF_COUNT
};

enum quota_field_type {
    QFT_U64,
    QFT_DOUBLE,
    QFT_BOOL,
    QFT_ENUM,
    QFT_NAME, /* [A-Za-z0-9_-]{1,64} */
};

/* Kinds a field applies to, as a mask of (1 << kind). */
#define QUOTA_KINDS_CAPACITY (1u << QUOTA_KIND_CAPACITY)
#define QUOTA_KINDS_RATE     (1u << QUOTA_KIND_RATE)
#define QUOTA_KINDS_ALL      (QUOTA_KINDS_CAPACITY | QUOTA_KINDS_RATE)

struct quota_field_desc
{
    const char *name;  /* "guaranteed.memory_mb" */
    const char *group; /* "guaranteed", or NULL for a top-level key */
    const char *leaf;  /* "memory_mb" (== name when group is NULL) */
    enum quota_field_type type;
    size_t offset; /* in struct quota_fields */
    unsigned kinds;
    const char *const *enum_names; /* NULL-terminated, QFT_ENUM only */
};

extern const struct quota_field_desc quota_field_table[QF_COUNT];

/* A stored quota. Owned by whoever holds it; quota_free() releases it. */
struct quota
{
    char *path;          /* owned, NUL-terminated */
    uint64_t version;    /* catalog version of its last change */
    uint64_t created_ms; /* leader's clock, carried in the command */
    uint64_t updated_ms;
    struct quota_fields f;
    char **owners; /* owned array of owned strings, "user:NAME"/"group:NAME" */
    uint32_t n_owners;
    char **labels; /* owned, "key=value", sorted by key */
    uint32_t n_labels;
};

const char *quota_kind_name(unsigned kind);

/* Check a path: segments of [A-Za-z0-9_-]{1,64} joined by '/', depth at most
 * QUOTA_DEPTH_MAX. 0 or ALLOT_EINVALID with a message saying what is allowed.
 */
int quota_path_check(const char *path, size_t len, char *errmsg);

/* Parse one KEY=VALUE into patch p (sets the field's bit). ALLOT_EINVALID
 * with a message naming the key and the allowed values. */
int quota_patch_parse_kv(struct quota_fields *p, const char *kv, char *errmsg);

/* Check a patch on its own: kind consistent with every field it carries. */
int quota_patch_check(const struct quota_fields *p, char *errmsg);

/* Defaults for a new quota of the patch's kind (or the kind its fields
 * imply); ALLOT_EINVALID if no kind can be told. */
int quota_fields_defaults(const struct quota_fields *patch,
                          struct quota_fields *out, char *errmsg);

/* Merge patch into q (q->kind must be set). ALLOT_EINVALID if the patch
 * changes the kind or carries a field of the other kind; q is unchanged on
 * error. */
int quota_fields_merge(struct quota_fields *q, const struct quota_fields *patch,
                       char *errmsg);

/* msgpack: the fields of f that are set (as a patch) or that apply to f's
 * kind (as a quota), as map entries. Returns the number of entries written
 * when pk is NULL (a dry count), so callers can size the enclosing map. */
unsigned quota_fields_pack(msgpack_packer *pk, const struct quota_fields *f,
                           bool patch_only);

/* Decode a patch from a map in the same shape quota_fields_pack() writes.
 * Unknown keys are refused, naming the key. */
int quota_patch_unpack(const msgpack_object *map, struct quota_fields *p,
                       char *errmsg);

/* A whole quota as a map: path, kind, version, created, updated, fields,
 * owners. */
void quota_pack(msgpack_packer *pk, const struct quota *q);

/* Decode a whole quota (from quota_pack()); allocates q->path and owners. */
int quota_unpack(const msgpack_object *map, struct quota *q, char *errmsg);

void quota_free(struct quota *q);

/* The catalog digest (docs/gossip.md, "The catalog digest"): the XOR over
 * every quota of BLAKE2b-128(path bytes, a NUL byte, version as 8 bytes
 * little-endian). Servers keep it current per change (raft/catalog.c) and
 * announce it; hosts recompute it over the rules they hold to check a pull.
 * Adding and removing a quota are the same toggle. */
#define QUOTA_DIGEST_SIZE 16
void quota_digest_toggle(uint8_t digest[QUOTA_DIGEST_SIZE], const char *path,
                         size_t len, uint64_t version);

/* Format one field's value as text into buf (for tables and logs). */
void quota_field_format(const struct quota_field_desc *d,
                        const struct quota_fields *f, char *buf, size_t size);

/* An owner entry: "user:NAME" or "group:NAME", NAME of [A-Za-z0-9_.@-]
 * {1,64} (auth_name_valid). */
bool quota_owner_valid(const char *owner, size_t len);

/* A label: key of [A-Za-z0-9_./-]{1,63}, value of 0 to 255 printable
 * bytes (no control characters). */
bool quota_label_valid(const char *key, size_t klen, const char *value,
                       size_t vlen);

/* Pack a "key=value" list as a map. */
void quota_pack_labels(msgpack_packer *pk, char *const *labels, uint32_t n);

/* Does field d apply to a quota of this kind? */
bool quota_field_applies(const struct quota_field_desc *d, unsigned kind);

#endif /* ALLOT_QUOTA_H */
