/* queue.c - broadcast queue (see queue.h). */
#include "queue.h"

#include <stdlib.h>
#include <string.h>

#include "../proto/allot_error.h"

/* Stop scanning a packet after this many items that did not fit: the packet
 * is nearly full and the rest of the queue would only be skipped too. */
#define SKIP_MAX 32
/* Room for any embedded item's message (a member's ALIVE is under 512). */
#define ENCODE_MAX 1024

/* A message the queue owns: the encoded message, then its key. */
struct gbq_msg
{
    struct gbq_item it;
    uint8_t key_len; /* 0: unkeyed */
    uint32_t len;
    uint8_t data[];
};

static struct gbq_msg *msg_of(struct gbq_item *it)
{
    return (struct gbq_msg *)(void *)((char *)it -
                                      offsetof(struct gbq_msg, it));
}

static const void *msg_key(const void *val, size_t *len)
{
    const struct gbq_msg *m = val;
    *len = m->key_len;
    return m->data + m->len;
}

void gbq_init(struct gbq *q, gbq_encode_fn encode, void *encode_arg)
{
    for (unsigned i = 0; i < GBQ_BUCKETS; i++) {
        TAILQ_INIT(&q->buckets[i]);
    }
    ghash_init(&q->by_key, msg_key);
    q->encode = encode;
    q->encode_arg = encode_arg;
    q->n = q->n_user = q->n_cmd = 0;
}

static unsigned bucket_of(uint32_t transmits)
{
    return transmits < GBQ_BUCKETS ? transmits : GBQ_BUCKETS - 1;
}

/* Out of the queue; a message is freed, an embedded item only marked. */
static void remove_item(struct gbq *q, struct gbq_item *it)
{
    TAILQ_REMOVE(&q->buckets[bucket_of(it->transmits)], it, link);
    if (it->flags & GBQ_USER) {
        q->n_user--;
    }
    if (it->flags & GBQ_CMD) {
        q->n_cmd--;
    }
    q->n--;
    if (it->flags & GBQ_EMBEDDED) {
        it->flags &= (uint8_t)~GBQ_QUEUED;
        return;
    }
    struct gbq_msg *m = msg_of(it);
    if (m->key_len > 0) {
        ghash_del(&q->by_key, m->data + m->len, m->key_len);
    }
    free(m);
}

static void insert_new(struct gbq *q, struct gbq_item *it)
{
    it->transmits = 0;
    TAILQ_INSERT_HEAD(&q->buckets[0], it, link);
    q->n++;
    if (it->flags & GBQ_USER) {
        q->n_user++;
    }
    if (it->flags & GBQ_CMD) {
        q->n_cmd++;
    }
}

void gbq_free(struct gbq *q)
{
    for (unsigned i = 0; i < GBQ_BUCKETS; i++) {
        struct gbq_item *it;
        while ((it = TAILQ_FIRST(&q->buckets[i])) != NULL) {
            TAILQ_REMOVE(&q->buckets[i], it, link);
            if (it->flags & GBQ_EMBEDDED) {
                it->flags &= (uint8_t)~GBQ_QUEUED;
            } else {
                free(msg_of(it));
            }
        }
    }
    ghash_free(&q->by_key);
    q->n = q->n_user = q->n_cmd = 0;
}

void gbq_drop(struct gbq *q, const char *key, size_t key_len)
{
    struct gbq_msg *m = ghash_get(&q->by_key, key, key_len);
    if (m != NULL) {
        remove_item(q, &m->it);
    }
}

int gbq_push(struct gbq *q, const char *key, size_t key_len, const uint8_t *msg,
             size_t len, unsigned flags)
{
    if ((flags & GBQ_USER) && q->n_user >= GBQ_USER_MAX) {
        return ALLOT_EUNAVAILABLE;
    }
    if ((flags & GBQ_CMD) && q->n_cmd >= GBQ_CMD_MAX) {
        return ALLOT_EUNAVAILABLE;
    }
    if (key != NULL && (key_len == 0 || key_len > UINT8_MAX)) {
        return ALLOT_EINVALID;
    }
    size_t klen = key != NULL ? key_len : 0;
    struct gbq_msg *m = malloc(sizeof *m + len + klen);
    if (m == NULL) {
        return ALLOT_ENOMEM;
    }
    m->it.flags = (uint8_t)(flags & (GBQ_USER | GBQ_NOTIFY | GBQ_CMD));
    m->len = (uint32_t)len;
    m->key_len = (uint8_t)klen;
    memcpy(m->data, msg, len);
    if (klen > 0) {
        memcpy(m->data + len, key, klen);
        gbq_drop(q, key, klen);
        if (ghash_put(&q->by_key, m) != 0) {
            free(m);
            return ALLOT_ENOMEM;
        }
    }
    insert_new(q, &m->it);
    return 0;
}

void gbq_remove_item(struct gbq *q, struct gbq_item *it)
{
    if (it->flags & GBQ_QUEUED) {
        remove_item(q, it);
    }
}

void gbq_push_item(struct gbq *q, struct gbq_item *it)
{
    gbq_remove_item(q, it);
    it->flags = GBQ_EMBEDDED | GBQ_QUEUED;
    insert_new(q, it);
}

static void retire(struct gbq *q, struct gbq_item *it, unsigned *notify)
{
    if (it->flags & GBQ_NOTIFY) {
        (*notify)++;
    }
    remove_item(q, it);
}

size_t gbq_fill(struct gbq *q, uint32_t limit, struct gbuf_w *w,
                unsigned *retired_notify)
{
    if (limit == 0) {
        limit = 1;
    }
    /* Items beyond the limit (N shrank since they were sent) are done. */
    for (uint32_t b = limit; b < GBQ_BUCKETS; b++) {
        struct gbq_item *it;
        while ((it = TAILQ_FIRST(&q->buckets[b])) != NULL) {
            retire(q, it, retired_notify);
        }
    }
    /* Sent items move up a bucket after the scan, so none is sent twice in
     * one packet. */
    struct gbq_list sent;
    TAILQ_INIT(&sent);
    size_t count = 0;
    unsigned skipped = 0;
    uint8_t scratch[ENCODE_MAX];
    uint32_t top = limit < GBQ_BUCKETS ? limit : GBQ_BUCKETS;
    for (uint32_t b = 0; b < top && skipped < SKIP_MAX; b++) {
        struct gbq_item *it, *next;
        for (it = TAILQ_FIRST(&q->buckets[b]); it != NULL; it = next) {
            next = TAILQ_NEXT(it, link);
            const uint8_t *p;
            size_t len;
            if (it->flags & GBQ_EMBEDDED) {
                p = scratch;
                len = q->encode(q->encode_arg, it, scratch, sizeof scratch);
                if (len == 0) {
                    retire(q, it, retired_notify); /* cannot be sent */
                    continue;
                }
            } else {
                p = msg_of(it)->data;
                len = msg_of(it)->len;
            }
            size_t room = w->failed ? 0 : w->cap - w->len;
            if (room < len) {
                /* No message is shorter than 3 bytes. */
                if (++skipped >= SKIP_MAX || room < 3) {
                    skipped = SKIP_MAX;
                    break;
                }
                continue;
            }
            gbuf_put_bytes(w, p, len);
            count++;
            TAILQ_REMOVE(&q->buckets[b], it, link);
            it->transmits++;
            TAILQ_INSERT_TAIL(&sent, it, link);
        }
    }
    struct gbq_item *it;
    while ((it = TAILQ_FIRST(&sent)) != NULL) {
        TAILQ_REMOVE(&sent, it, link);
        /* Back into a bucket first: retire() unlinks from it. */
        TAILQ_INSERT_HEAD(&q->buckets[bucket_of(it->transmits)], it, link);
        if (it->transmits >= limit) {
            retire(q, it, retired_notify);
        }
    }
    return count;
}
