/* keys.h - the bounded per-key table of a per_key rate rule.
 *
 * A per_key rule limits each key (tenant) separately. Each rule gets one
 * fixed table of 2^k entries of 16 bytes: a 64-bit tag (a seeded hash of
 * the key; 0 = free) and the key's GCRA word. Memory is fixed when the rule
 * first appears (per_key_max entries, default 4096 = 64 KiB) and never
 * grows; lookups allocate nothing and take no lock.
 *
 * A key is looked for in KEYS_PROBE consecutive entries from its hash. A
 * free entry is claimed with one compare-and-swap. When all of them hold
 * other keys, one is taken over (an eviction, counted):
 *   - preferably an idle one, whose TAT is not in the future: its bucket is
 *     full, which is exactly what a fresh entry means, so nothing is lost;
 *   - else the one closest to idle (smallest TAT). The new key then starts
 *     with that entry's debt (it may be refused a little early: never
 *     admitted beyond its limit), and the evicted key, when it returns,
 *     starts with a full burst: one burst of over-admission per eviction
 *     of a busy key. Size per_key_max above the number of keys active
 *     within one burst period to avoid this.
 * Two different keys with the same 64-bit hash share a bucket (chance
 * ~n^2/2^65). A request racing with the eviction of its own entry may be
 * charged to the entry's new key: one request, once. */
#ifndef ALLOT_ENFORCE_KEYS_H
#define ALLOT_ENFORCE_KEYS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define KEYS_PROBE 8u

struct keys_entry
{
    _Atomic uint64_t tag;
    _Atomic uint64_t tat;
};

struct keys_table
{
    uint64_t mask;              /* entries - 1 */
    _Atomic uint64_t evictions; /* entries taken over by another key */
    struct keys_entry e[];
};

/* A table of at least `want` entries (a power of two, >= KEYS_PROBE).
 * NULL when out of memory. Free with free(). */
struct keys_table *keys_new(uint32_t want);

/* Bytes a table of `want` entries takes. */
size_t keys_bytes(uint32_t want);

/* Seeded 64-bit hash of a NUL-terminated key; never 0. */
uint64_t keys_hash(uint64_t seed, const char *key);

/* The GCRA word of the key with hash h (from keys_hash), claiming or taking
 * over an entry as described above. Never NULL. */
_Atomic uint64_t *keys_lookup(struct keys_table *t, uint64_t h, uint64_t now);

#endif /* ALLOT_ENFORCE_KEYS_H */
