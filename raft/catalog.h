/* catalog.h - the quota tree inside the state machine (private to raft/).
 *
 * Quotas sit in a red-black tree ordered by path bytes, so a prefix is a
 * contiguous range. Each node keeps aggregates over its direct children (how
 * many, the sums of their guaranteed resources, the sums of their rates per
 * unit), updated on every change, so the built-in validation rules cost
 * O(log n) instead of a scan of the siblings. Aggregates are derived data:
 * snapshots do not carry them, restore rebuilds them.
 *
 * Every rule is checked with integer arithmetic (rates in thousandths of a
 * unit): a replica that rebuilt its sums from a snapshot must reach the same
 * verdict as one that summed incrementally, which floating point would not
 * guarantee. */
#ifndef ALLOT_RAFT_CATALOG_H
#define ALLOT_RAFT_CATALOG_H

#include <stdbool.h>
#include <stdint.h>

#include "../proto/quota.h"
#include "raft_fsm.h"
/* Last: it defines __unused for the BSD tree macros. */
#include "../lib/tree.h"

/* Sums over direct children. */
struct cat_agg
{
    uint32_t n_children;
    uint64_t g_memory_mb; /* capacity children */
    uint64_t g_vcores;
    uint64_t rate_milli[2]; /* rate children, by unit */
};

struct cat_node
{
    RB_ENTRY(cat_node) link;
    struct quota q;
    /* Sums over its children; NULL until it has had one (most quotas are
     * leaves: 40 bytes each saved). */
    struct cat_agg *agg;
};

RB_HEAD(cat_tree, cat_node);

#define CATALOG_DIGEST_SIZE QUOTA_DIGEST_SIZE

struct catalog
{
    struct cat_tree tree;
    uint64_t n_quotas;
    /* XOR over quotas of BLAKE2b-128(path, NUL, version as 8 bytes little
     * endian): order-free, so it is kept up to date in O(1) per change and
     * any holder of (path, version) pairs (an agent) can recompute it. */
    uint8_t digest[CATALOG_DIGEST_SIZE];
    struct cat_agg top; /* over top-level quotas */
    struct fsm_capacity capacity;
};

void catalog_init(struct catalog *c);
/* Free every node. */
void catalog_free(struct catalog *c);

struct cat_node *catalog_find(const struct catalog *c, const char *path,
                              size_t len);

/* Check that `path` (existing node cur, or NULL for a new quota) may take
 * the fields `next`. Returns 0, ALLOT_ENOT_FOUND when the parent does not
 * exist, or ALLOT_EVALIDATION_FAILED naming the rule and the numbers. */
int catalog_check_set(const struct catalog *c, const char *path, size_t len,
                      const struct cat_node *cur,
                      const struct quota_fields *next, char *msg);

/* Store `next` and the owners at path (updating cur, or inserting when cur
 * is NULL) with the given version and time, keeping aggregates. The owners
 * and labels arrays and their strings become the node's (the old ones are
 * freed). Returns
 * the node, or NULL when out of memory: nothing changed and the owners are
 * still the caller's. */
struct cat_node *catalog_put(struct catalog *c, const char *path, size_t len,
                             struct cat_node *cur,
                             const struct quota_fields *next, char **owners,
                             uint32_t n_owners, char **labels,
                             uint32_t n_labels, uint64_t version,
                             uint64_t now_ms);

/* Check removing n: refused (ALLOT_EVALIDATION_FAILED) when it has children
 * and !recursive. */
int catalog_check_rm(const struct catalog *c, const struct cat_node *n,
                     bool recursive, char *msg);

/* Remove n and every descendant. cb runs for each removed quota, in path
 * order, before it is freed. Returns how many were removed. */
typedef void (*catalog_removed_cb)(void *arg, const struct quota *q);
uint64_t catalog_remove(struct catalog *c, struct cat_node *n,
                        catalog_removed_cb cb, void *arg);

/* Check declaring capacity `next` against the top-level sums. */
int catalog_check_capacity(const struct catalog *c,
                           const struct fsm_capacity *next, char *msg);

/* Restore: insert a decoded node without checks (0, or ALLOT_EPROTOCOL for a
 * duplicate path); then catalog_rebuild() recomputes every aggregate and
 * checks that every parent exists (ALLOT_EPROTOCOL otherwise). */
int catalog_insert_restored(struct catalog *c, struct cat_node *n);
int catalog_rebuild(struct catalog *c);

/* XOR one quota's term into c->digest (adding and removing are the same
 * operation). */
void catalog_digest_toggle(struct catalog *c, const char *path, size_t len,
                           uint64_t version);

/* Iteration in path order. */
struct cat_node *catalog_first(const struct catalog *c);
struct cat_node *catalog_next(const struct catalog *c, struct cat_node *n);
/* First node whose path is >= key[0..len). */
struct cat_node *catalog_lower_bound(const struct catalog *c, const char *key,
                                     size_t len);

/* Rate in thousandths of a unit, as every rule compares it. */
uint64_t catalog_rate_milli(double rate);

#endif /* ALLOT_RAFT_CATALOG_H */
