/* hash.c - open-addressing hash table (see hash.h).
 *
 * The load factor stays at or below 3/4, so probes stay short and an
 * insert never finds the table full. A table emptied to 1/8 halves, so a
 * burst (the broadcast queue during a mass join) does not keep its peak
 * size forever; between 1/8 and 3/4 nothing moves, so a table hovering
 * around one size does not resize back and forth. */
#include "hash.h"

#include <sodium.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../proto/allot_error.h"

#define MIN_CAP 16

void ghash_init(struct ghash *h, ghash_key_fn key_of)
{
    memset(h, 0, sizeof *h);
    h->key_of = key_of;
    randombytes_buf(h->seed, sizeof h->seed);
}

void ghash_free(struct ghash *h)
{
    free(h->slots);
    h->slots = NULL;
    h->tags = NULL;
    h->cap = h->n = 0;
}

const void *ghash_key_u64(const void *val, size_t *len)
{
    *len = sizeof(uint64_t);
    return val;
}

static uint64_t hash_of(const struct ghash *h, const void *key, size_t klen)
{
    unsigned char out[crypto_shorthash_siphash24_BYTES];
    crypto_shorthash_siphash24(out, key, klen, h->seed);
    uint64_t v;
    memcpy(&v, out, sizeof v);
    return v;
}

static uint64_t hash_of_val(const struct ghash *h, const void *val)
{
    size_t klen;
    const void *key = h->key_of(val, &klen);
    return hash_of(h, key, klen);
}

/* The slot's tag: 7 bits of the hash that the home slot does not use up
 * (for tables under 2^56 slots), never 0 (empty). */
static uint8_t tag_of(uint64_t hv)
{
    return (uint8_t)((hv >> 56) | 1);
}

static size_t home_of(const struct ghash *h, uint64_t hv)
{
    return (size_t)hv & (h->cap - 1);
}

/* The slot holding key, or the empty slot ending its run. Only values
 * whose tag matches are compared: one in 128 of the others. */
static size_t find(const struct ghash *h, const void *key, size_t klen,
                   uint64_t hv)
{
    size_t mask = h->cap - 1;
    size_t i = home_of(h, hv);
    uint8_t tag = tag_of(hv);
    /* A quarter of the slots at least are empty: this ends within cap. */
    for (size_t step = 0; step < h->cap; step++) {
        uint8_t t = h->tags[i];
        if (t == 0) {
            return i;
        }
        if (t == tag) {
            size_t vlen;
            const void *vkey = h->key_of(h->slots[i], &vlen);
            if (vlen == klen && memcmp(vkey, key, klen) == 0) {
                return i;
            }
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
    return h->slots[find(h, key, klen, hash_of(h, key, klen))];
}

/* Move every value into a table of cap slots. */
static int resize(struct ghash *h, size_t cap)
{
    /* One block: the slots, then their tags. */
    void **slots = calloc(cap, sizeof *slots + 1);
    if (slots == NULL) {
        return ALLOT_ENOMEM;
    }
    void **old = h->slots;
    size_t old_cap = h->cap;
    h->slots = slots;
    h->tags = (uint8_t *)(slots + cap);
    h->cap = cap;
    size_t mask = cap - 1;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i] != NULL) {
            /* Keys are distinct: the first empty slot is the place. */
            uint64_t hv = hash_of_val(h, old[i]);
            size_t j = home_of(h, hv);
            while (h->tags[j] != 0) {
                j = (j + 1) & mask;
            }
            h->slots[j] = old[i];
            h->tags[j] = tag_of(hv);
        }
    }
    free(old);
    return 0;
}

int ghash_put(struct ghash *h, void *val)
{
    if ((h->n + 1) * 4 > h->cap * 3) {
        int rv = resize(h, h->cap ? h->cap * 2 : MIN_CAP);
        if (rv != 0) {
            return rv;
        }
    }
    size_t klen;
    const void *key = h->key_of(val, &klen);
    uint64_t hv = hash_of(h, key, klen);
    size_t i = find(h, key, klen, hv);
    if (h->slots[i] == NULL) {
        h->n++;
    }
    h->slots[i] = val;
    h->tags[i] = tag_of(hv);
    return 0;
}

void *ghash_del(struct ghash *h, const void *key, size_t klen)
{
    if (h->n == 0) {
        return NULL;
    }
    size_t mask = h->cap - 1;
    size_t i = find(h, key, klen, hash_of(h, key, klen));
    void *val = h->slots[i];
    if (val == NULL) {
        return NULL;
    }
    h->n--;
    /* Backward shift: move later entries of the run into the hole when
     * their home slot is not between the hole and themselves. */
    size_t hole = i;
    size_t j = i;
    for (size_t step = 0; step < h->cap; step++) {
        j = (j + 1) & mask;
        void *s = h->slots[j];
        if (s == NULL) {
            break;
        }
        size_t home = home_of(h, hash_of_val(h, s));
        /* Is home cyclically in (hole, j]? Then s stays. */
        bool stays =
            hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            h->slots[hole] = s;
            h->tags[hole] = h->tags[j];
            hole = j;
        }
    }
    h->slots[hole] = NULL;
    h->tags[hole] = 0;
    if (h->cap > MIN_CAP && h->n * 8 <= h->cap) {
        /* Shrinking is only memory: a failure leaves the table as it is. */
        (void)resize(h, h->cap / 2);
    }
    return val;
}
