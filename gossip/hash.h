/* hash.h - a byte-keyed hash table (private).
 *
 * Open addressing with linear probing and backward-shift deletion (no
 * tombstones, so lookups stay short after churn). The table stores a
 * pointer to the key, not a copy: the key must live inside the value (a
 * member's name, a queued broadcast's key) and stay unchanged while the
 * entry is present. Keys are hashed with SipHash under a random per-table
 * key, so names chosen by a peer cannot force collisions. */
#ifndef ALLOT_GOSSIP_HASH_H
#define ALLOT_GOSSIP_HASH_H

#include <stddef.h>
#include <stdint.h>

struct ghash_slot
{
    const void *key; /* NULL: empty */
    size_t klen;
    uint64_t hash;
    void *val;
};

struct ghash
{
    struct ghash_slot *slots;
    size_t cap; /* a power of two, or 0 */
    size_t n;
    unsigned char seed[16];
};

void ghash_init(struct ghash *h);
void ghash_free(struct ghash *h);

void *ghash_get(const struct ghash *h, const void *key, size_t klen);
/* Insert or replace. 0, or ALLOT_ENOMEM (nothing changed). */
int ghash_put(struct ghash *h, const void *key, size_t klen, void *val);
/* Remove and return the value, NULL if absent. */
void *ghash_del(struct ghash *h, const void *key, size_t klen);

#endif /* ALLOT_GOSSIP_HASH_H */
