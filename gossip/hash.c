/* hash.c - open-addressing hash table (see hash.h).
 *
 * Load factor stays at or below 1/2: probes are short, and an insert never
 * finds the table full. */
#include "hash.h"

#include <sodium.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../proto/allot_error.h"

void ghash_init(struct ghash *h)
{
    memset(h, 0, sizeof *h);
    randombytes_buf(h->seed, sizeof h->seed);
}

void ghash_free(struct ghash *h)
{
    free(h->slots);
    h->slots = NULL;
    h->cap = h->n = 0;
}

static uint64_t hash_of(const struct ghash *h, const void *key, size_t klen)
{
    unsigned char out[crypto_shorthash_siphash24_BYTES];
    crypto_shorthash_siphash24(out, key, klen, h->seed);
    uint64_t v;
    memcpy(&v, out, sizeof v);
    return v;
}

static size_t find(const struct ghash *h, const void *key, size_t klen,
                   uint64_t hv)
{
    size_t mask = h->cap - 1;
    size_t i = (size_t)hv & mask;
    /* At least half the slots are empty, so this ends within cap steps. */
    for (size_t step = 0; step < h->cap; step++) {
        const struct ghash_slot *s = &h->slots[i];
        if (s->key == NULL) {
            return i;
        }
        if (s->hash == hv && s->klen == klen &&
            memcmp(s->key, key, klen) == 0) {
            return i;
        }
        i = (i + 1) & mask;
    }
    return i;
}

void *ghash_get(const struct ghash *h, const void *key, size_t klen)
{
    if (h->n == 0) {
        return NULL;
    }
    size_t i = find(h, key, klen, hash_of(h, key, klen));
    return h->slots[i].key != NULL ? h->slots[i].val : NULL;
}

static int grow(struct ghash *h)
{
    size_t cap = h->cap ? h->cap * 2 : 16;
    struct ghash_slot *slots = calloc(cap, sizeof *slots);
    if (slots == NULL) {
        return ALLOT_ENOMEM;
    }
    struct ghash_slot *old = h->slots;
    size_t old_cap = h->cap;
    h->slots = slots;
    h->cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].key != NULL) {
            size_t j = find(h, old[i].key, old[i].klen, old[i].hash);
            h->slots[j] = old[i];
        }
    }
    free(old);
    return 0;
}

int ghash_put(struct ghash *h, const void *key, size_t klen, void *val)
{
    if ((h->n + 1) * 2 > h->cap) {
        int rv = grow(h);
        if (rv != 0) {
            return rv;
        }
    }
    uint64_t hv = hash_of(h, key, klen);
    size_t i = find(h, key, klen, hv);
    if (h->slots[i].key == NULL) {
        h->n++;
    }
    h->slots[i] = (struct ghash_slot){key, klen, hv, val};
    return 0;
}

void *ghash_del(struct ghash *h, const void *key, size_t klen)
{
    if (h->n == 0) {
        return NULL;
    }
    size_t mask = h->cap - 1;
    size_t i = find(h, key, klen, hash_of(h, key, klen));
    if (h->slots[i].key == NULL) {
        return NULL;
    }
    void *val = h->slots[i].val;
    h->n--;
    /* Backward shift: move later entries of the run into the hole when
     * their home slot is not between the hole and themselves. */
    size_t hole = i;
    size_t j = i;
    for (size_t step = 0; step < h->cap; step++) {
        j = (j + 1) & mask;
        struct ghash_slot *s = &h->slots[j];
        if (s->key == NULL) {
            break;
        }
        size_t home = (size_t)s->hash & mask;
        /* Is home cyclically in (hole, j]? Then s stays. */
        bool stays =
            hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            h->slots[hole] = *s;
            hole = j;
        }
    }
    h->slots[hole] = (struct ghash_slot){0};
    return val;
}
