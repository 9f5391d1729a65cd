/* hash.h - a hash table of values that carry their own keys (private).
 *
 * Open addressing with linear probing and backward-shift deletion (no
 * tombstones, so lookups stay short after churn). A slot is one pointer to
 * the value and a one-byte tag (7 bits of the key's hash): the key lives
 * inside the value (a member's name, a queued broadcast's key) and the
 * table's key_of callback finds it; it must stay unchanged while the value
 * is present. A probe reads the tags and compares keys only where the tag
 * matches. So a table costs 9 bytes per slot (at most 3/4 full, at least
 * 1/8 once shrunk): with 10,000 members known by each of 10,000 simulated
 * members that is ~1.5 GB, where 32-byte slots at most half full took ~10.
 * The price: the hash is computed again when a value moves (growing,
 * shrinking, deletion).
 * Keys are hashed with SipHash under a random per-table key, so names
 * chosen by a peer cannot force collisions. */
#ifndef ALLOT_GOSSIP_HASH_H
#define ALLOT_GOSSIP_HASH_H

#include <stddef.h>
#include <stdint.h>

/* The key of a value in the table: its bytes, and their count in *len. */
typedef const void *(*ghash_key_fn)(const void *val, size_t *len);

struct ghash
{
    void **slots;  /* NULL: empty */
    uint8_t *tags; /* 0: empty; in the slots' block */
    size_t cap;    /* a power of two, or 0 */
    size_t n;
    ghash_key_fn key_of;
    unsigned char seed[16];
};

void ghash_init(struct ghash *h, ghash_key_fn key_of);
void ghash_free(struct ghash *h);

void *ghash_get(const struct ghash *h, const void *key, size_t klen);
/* Insert val under its key, replacing the value with the same key. 0, or
 * ALLOT_ENOMEM (nothing changed). */
int ghash_put(struct ghash *h, void *val);
/* Remove and return the value, NULL if absent. */
void *ghash_del(struct ghash *h, const void *key, size_t klen);

/* The key of values that begin with a uint64_t id: those 8 bytes. */
const void *ghash_key_u64(const void *val, size_t *len);

#endif /* ALLOT_GOSSIP_HASH_H */
