/* keys.c - per-key GCRA words (see keys.h). */
#include "keys.h"

#include <stdlib.h>
#include <string.h>

static uint32_t round_pow2(uint32_t want)
{
    uint32_t n = KEYS_PROBE;
    while (n < want && n < (1u << 30)) {
        n <<= 1;
    }
    return n;
}

size_t keys_bytes(uint32_t want)
{
    return sizeof(struct keys_table) +
           (size_t)round_pow2(want) * sizeof(struct keys_entry);
}

struct keys_table *keys_new(uint32_t want)
{
    uint32_t n = round_pow2(want);
    struct keys_table *t = calloc(1, keys_bytes(want));
    if (t == NULL) {
        return NULL;
    }
    t->mask = n - 1u;
    return t;
}

/* A 64-bit finalizer (murmur3's fmix64): every input bit reaches every
 * output bit. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

uint64_t keys_hash(uint64_t seed, const char *key)
{
    size_t len = strlen(key);
    uint64_t h = mix64(seed ^ (len * 0x9e3779b97f4a7c15ull));
    const unsigned char *p = (const unsigned char *)key;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix64(h ^ w) + 0x9e3779b97f4a7c15ull;
        p += 8;
        len -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, len);
    h = mix64(h ^ w ^ ((uint64_t)len << 56));
    return h != 0 ? h : 1;
}

_Atomic uint64_t *keys_lookup(struct keys_table *t, uint64_t h, uint64_t now)
{
    uint64_t start = h >> 7; /* the low bits went into nothing special */
    for (int attempt = 0;; attempt++) {
        struct keys_entry *victim = NULL;
        uint64_t victim_tag = 0, victim_tat = UINT64_MAX;
        for (uint64_t i = 0; i < KEYS_PROBE; i++) {
            struct keys_entry *e = &t->e[(start + i) & t->mask];
            uint64_t tag = atomic_load_explicit(&e->tag, memory_order_acquire);
            if (tag == h) {
                return &e->tat;
            }
            if (tag == 0) {
                if (atomic_compare_exchange_strong_explicit(
                        &e->tag, &tag, h, memory_order_acq_rel,
                        memory_order_acquire) ||
                    tag == h) {
                    return &e->tat;
                }
                /* Claimed by another key meanwhile: keep probing. */
            }
            uint64_t tat = atomic_load_explicit(&e->tat, memory_order_relaxed);
            /* Prefer an idle entry (lossless); else the smallest TAT. */
            uint64_t rank = tat <= now ? 0 : tat;
            if (victim == NULL || rank < victim_tat) {
                victim = e;
                victim_tag = tag;
                victim_tat = rank;
            }
        }
        uint64_t expected = victim_tag;
        if (atomic_compare_exchange_strong_explicit(&victim->tag, &expected, h,
                                                    memory_order_acq_rel,
                                                    memory_order_acquire)) {
            atomic_fetch_add_explicit(&t->evictions, 1, memory_order_relaxed);
            return &victim->tat;
        }
        if (expected == h || attempt > 0) {
            /* Someone else installed this key, or the neighbourhood churns:
             * share the victim's word rather than loop (bounded work). */
            return &victim->tat;
        }
    }
}
