/* queue.h - the broadcast queue (private).
 *
 * Messages waiting to be piggybacked, each already encoded, each sent at
 * most `limit` times (retransmit_mult * ceil(log10(N + 1))). A packet takes
 * the least-sent messages first, newest first among equals, so fresh news
 * spreads before old news is repeated. Items sit in one list per transmit
 * count, so filling a packet touches only what it sends.
 *
 * A keyed item replaces the queued item with the same key: the queue holds
 * at most one message about each member ("m" + name) and one per keyed
 * broadcast ("k" + key), always the newest. A member's ALIVE is not copied
 * at all: it is an item embedded in the member record, encoded when sent
 * (gbq_push_item), which its owner keeps exclusive with its keyed news. */
#ifndef ALLOT_GOSSIP_QUEUE_H
#define ALLOT_GOSSIP_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "buf.h"
#include "hash.h"

#define GBQ_BUCKETS 64
/* Plain (unkeyed) user broadcasts waiting at once; more are refused. */
#define GBQ_USER_MAX 1024
/* Keyring commands (gossip_key_cmd) waiting at once; more are refused.
 * Operators send a handful; the cap only stops a flood of distinct ids. */
#define GBQ_CMD_MAX 64

enum gbq_flags {
    GBQ_USER = 1,   /* a plain user broadcast: counts against GBQ_USER_MAX */
    GBQ_NOTIFY = 2, /* count it in gbq_fill's *retired_notify when retired */
    GBQ_CMD = 4,    /* a keyring command: counts against GBQ_CMD_MAX */
    /* Set by the queue. */
    GBQ_EMBEDDED = 8, /* in its owner, encoded when sent (gbq_push_item) */
    GBQ_QUEUED = 16,  /* an embedded item is in the queue */
};

/* One queued message: a struct gbq_msg the queue allocated (gbq_push), or
 * an item embedded in its owner (gbq_push_item). */
struct gbq_item
{
    TAILQ_ENTRY(gbq_item) link;
    uint16_t transmits;
    uint8_t flags;
};

TAILQ_HEAD(gbq_list, gbq_item);

/* Writes an embedded item's message into buf; its length, 0 if it does not
 * fit in cap. */
typedef size_t (*gbq_encode_fn)(void *arg, const struct gbq_item *it,
                                uint8_t *buf, size_t cap);

struct gbq
{
    struct gbq_list buckets[GBQ_BUCKETS];
    struct ghash by_key; /* struct gbq_msg, keyed ones */
    gbq_encode_fn encode;
    void *encode_arg;
    size_t n;
    size_t n_user;
    size_t n_cmd;
};

void gbq_init(struct gbq *q, gbq_encode_fn encode, void *encode_arg);
/* Frees the queue's messages; embedded items are only forgotten. */
void gbq_free(struct gbq *q);

/* Queue a copy of an encoded message, replacing any message with the same
 * key (key NULL: none). 0, ALLOT_ENOMEM, or ALLOT_EUNAVAILABLE for a
 * GBQ_USER item when GBQ_USER_MAX are waiting (a GBQ_CMD item when
 * GBQ_CMD_MAX are). */
int gbq_push(struct gbq *q, const char *key, size_t key_len, const uint8_t *msg,
             size_t len, unsigned flags);

/* Queue an item embedded in its owner, as new (again, if it was queued):
 * its message is written by the queue's encode callback each time it is
 * sent, so the owner must not change what it encodes to without pushing
 * it again. Costs no allocation, and so cannot fail: this is what keeps
 * the news about every member of a large fleet, all queued at once while
 * it joins, to the member records themselves. */
void gbq_push_item(struct gbq *q, struct gbq_item *it);
/* Take an embedded item out of the queue, if it is in. */
void gbq_remove_item(struct gbq *q, struct gbq_item *it);
static inline void gbq_item_init(struct gbq_item *it)
{
    it->transmits = 0;
    it->flags = GBQ_EMBEDDED;
}

/* Append queued messages to w while they fit, least-sent first; each one
 * appended counts as a transmission, and reaching limit retires it. Adds to
 * *retired_notify the GBQ_NOTIFY items retired. Returns how many were
 * appended. */
size_t gbq_fill(struct gbq *q, uint32_t limit, struct gbuf_w *w,
                unsigned *retired_notify);

/* Drop the message with this key, if any. */
void gbq_drop(struct gbq *q, const char *key, size_t key_len);

#endif /* ALLOT_GOSSIP_QUEUE_H */
