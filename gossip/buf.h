/* buf.h - a bounded byte writer and reader for gossip messages (private).
 *
 * Both carry a sticky failure flag: after the first write that does not fit
 * or the first read past the end, every later call does nothing and reads
 * return zero/empty, so a codec writes its fields in a row and checks the
 * flag once. A reader never allocates and never looks outside
 * [p, p + len). Integers are unsigned LEB128 varints (at most 10 bytes;
 * longer ones, or ones that overflow 64 bits, fail). */
#ifndef ALLOT_GOSSIP_BUF_H
#define ALLOT_GOSSIP_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gossip.h"

struct gbuf_w
{
    uint8_t *p;
    size_t len;
    size_t cap;
    size_t limit; /* growable writers: never grow beyond this */
    bool growable;
    bool failed;
};

/* A writer into mem[0..cap), never growing. */
void gbuf_w_fixed(struct gbuf_w *w, uint8_t *mem, size_t cap);
/* A writer that reallocs as needed up to limit bytes (ALLOT_ENOMEM if the
 * first block cannot be had). Free w->p with free(). */
int gbuf_w_dyn(struct gbuf_w *w, size_t initial, size_t limit);

void gbuf_put_u8(struct gbuf_w *w, uint8_t v);
void gbuf_put_bytes(struct gbuf_w *w, const void *p, size_t n);
void gbuf_put_uvarint(struct gbuf_w *w, uint64_t v);
/* uvarint length, then the bytes. */
void gbuf_put_blob(struct gbuf_w *w, const void *p, size_t n);
/* 4-byte IPv4 address then 2-byte port, big-endian. */
void gbuf_put_addr(struct gbuf_w *w, const struct gossip_addr *a);
/* Reserve n bytes and return where they start (NULL after failure). */
uint8_t *gbuf_reserve(struct gbuf_w *w, size_t n);

/* Bytes a uvarint takes. */
size_t gbuf_uvarint_len(uint64_t v);

struct gbuf_r
{
    const uint8_t *p;
    size_t len;
    size_t off;
    bool failed;
};

void gbuf_r_init(struct gbuf_r *r, const void *p, size_t len);
static inline size_t gbuf_left(const struct gbuf_r *r)
{
    return r->failed ? 0 : r->len - r->off;
}

uint8_t gbuf_get_u8(struct gbuf_r *r);
uint64_t gbuf_get_uvarint(struct gbuf_r *r);
/* A uvarint that must be <= max; fails otherwise. */
uint64_t gbuf_get_uvarint_max(struct gbuf_r *r, uint64_t max);
/* A uvarint length (<= max) and that many bytes: *p points into the input
 * (NULL when the length is 0). */
void gbuf_get_blob(struct gbuf_r *r, size_t max, const uint8_t **p,
                   size_t *len);
void gbuf_get_addr(struct gbuf_r *r, struct gossip_addr *a);
/* A sub-reader over the next n bytes, which this reader skips. */
void gbuf_get_sub(struct gbuf_r *r, size_t n, struct gbuf_r *sub);

/* Printable ASCII (0x21-0x7e) only: names, fleets and keys must be, so
 * they can go into log lines and command output as they are. */
bool gbuf_printable(const uint8_t *p, size_t len);

#endif /* ALLOT_GOSSIP_BUF_H */
