/* buf.c - bounded writer and reader (see buf.h). */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

#include "../proto/allot_error.h"

void gbuf_w_fixed(struct gbuf_w *w, uint8_t *mem, size_t cap)
{
    memset(w, 0, sizeof *w);
    w->p = mem;
    w->cap = cap;
    w->limit = cap;
}

int gbuf_w_dyn(struct gbuf_w *w, size_t initial, size_t limit)
{
    memset(w, 0, sizeof *w);
    if (initial == 0) {
        initial = 64;
    }
    if (initial > limit) {
        initial = limit;
    }
    w->p = malloc(initial);
    if (w->p == NULL) {
        w->failed = true;
        return ALLOT_ENOMEM;
    }
    w->cap = initial;
    w->limit = limit;
    w->growable = true;
    return 0;
}

/* Make room for n more bytes. */
static bool room(struct gbuf_w *w, size_t n)
{
    if (w->failed) {
        return false;
    }
    if (w->cap - w->len >= n) {
        return true;
    }
    if (!w->growable || w->limit - w->len < n) {
        w->failed = true;
        return false;
    }
    size_t cap = w->cap;
    /* Doubling from >= 64 reaches any limit below SIZE_MAX/2 in a bounded
     * number of steps; the limit caps the last one. */
    while (cap - w->len < n) {
        cap = cap > w->limit / 2 ? w->limit : cap * 2;
    }
    uint8_t *p = realloc(w->p, cap);
    if (p == NULL) {
        w->failed = true;
        return false;
    }
    w->p = p;
    w->cap = cap;
    return true;
}

uint8_t *gbuf_reserve(struct gbuf_w *w, size_t n)
{
    if (!room(w, n)) {
        return NULL;
    }
    uint8_t *p = w->p + w->len;
    w->len += n;
    return p;
}

void gbuf_put_u8(struct gbuf_w *w, uint8_t v)
{
    if (room(w, 1)) {
        w->p[w->len++] = v;
    }
}

void gbuf_put_bytes(struct gbuf_w *w, const void *p, size_t n)
{
    if (n > 0 && room(w, n)) {
        memcpy(w->p + w->len, p, n);
        w->len += n;
    }
}

size_t gbuf_uvarint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

void gbuf_put_uvarint(struct gbuf_w *w, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;
    while (v >= 0x80) {
        tmp[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    tmp[n++] = (uint8_t)v;
    gbuf_put_bytes(w, tmp, n);
}

void gbuf_put_blob(struct gbuf_w *w, const void *p, size_t n)
{
    gbuf_put_uvarint(w, n);
    gbuf_put_bytes(w, p, n);
}

void gbuf_put_addr(struct gbuf_w *w, const struct gossip_addr *a)
{
    uint8_t b[6] = {(uint8_t)(a->ip >> 24),  (uint8_t)(a->ip >> 16),
                    (uint8_t)(a->ip >> 8),   (uint8_t)a->ip,
                    (uint8_t)(a->port >> 8), (uint8_t)a->port};
    gbuf_put_bytes(w, b, sizeof b);
}

void gbuf_r_init(struct gbuf_r *r, const void *p, size_t len)
{
    r->p = p;
    r->len = p != NULL ? len : 0;
    r->off = 0;
    r->failed = false;
}

uint8_t gbuf_get_u8(struct gbuf_r *r)
{
    if (gbuf_left(r) < 1) {
        r->failed = true;
        return 0;
    }
    return r->p[r->off++];
}

uint64_t gbuf_get_uvarint(struct gbuf_r *r)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (gbuf_left(r) < 1) {
            r->failed = true;
            return 0;
        }
        uint8_t b = r->p[r->off++];
        /* The tenth byte may only carry the top bit of a 64-bit value. */
        if (shift == 63 && b > 1) {
            r->failed = true;
            return 0;
        }
        v |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            return v;
        }
    }
    r->failed = true;
    return 0;
}

uint64_t gbuf_get_uvarint_max(struct gbuf_r *r, uint64_t max)
{
    uint64_t v = gbuf_get_uvarint(r);
    if (v > max) {
        r->failed = true;
        return 0;
    }
    return v;
}

void gbuf_get_blob(struct gbuf_r *r, size_t max, const uint8_t **p, size_t *len)
{
    uint64_t n = gbuf_get_uvarint_max(r, max);
    *p = NULL;
    *len = 0;
    if (r->failed) {
        return;
    }
    if (gbuf_left(r) < n) {
        r->failed = true;
        return;
    }
    if (n > 0) {
        *p = r->p + r->off;
    }
    *len = (size_t)n;
    r->off += (size_t)n;
}

void gbuf_get_addr(struct gbuf_r *r, struct gossip_addr *a)
{
    a->ip = 0;
    a->port = 0;
    if (gbuf_left(r) < 6) {
        r->failed = true;
        return;
    }
    const uint8_t *b = r->p + r->off;
    a->ip = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 |
            (uint32_t)b[3];
    a->port = (uint16_t)((unsigned)b[4] << 8 | b[5]);
    r->off += 6;
}

void gbuf_get_sub(struct gbuf_r *r, size_t n, struct gbuf_r *sub)
{
    if (gbuf_left(r) < n) {
        r->failed = true;
        gbuf_r_init(sub, NULL, 0);
        sub->failed = true;
        return;
    }
    gbuf_r_init(sub, r->p + r->off, n);
    r->off += n;
}

bool gbuf_printable(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] < 0x21 || p[i] > 0x7e) {
            return false;
        }
    }
    return true;
}
