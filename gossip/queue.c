/* queue.c - broadcast queue (see queue.h). */
#include "queue.h"

#include <stdlib.h>
#include <string.h>

#include "../proto/allot_error.h"

/* Stop scanning a packet after this many items that did not fit: the packet
 * is nearly full and the rest of the queue would only be skipped too. */
#define SKIP_MAX 32

void gbq_init(struct gbq *q)
{
    for (unsigned i = 0; i < GBQ_BUCKETS; i++) {
        TAILQ_INIT(&q->buckets[i]);
    }
    ghash_init(&q->by_key);
    q->n = q->n_user = q->n_cmd = 0;
}

static unsigned bucket_of(uint32_t transmits)
{
    return transmits < GBQ_BUCKETS ? transmits : GBQ_BUCKETS - 1;
}

static void unlink_item(struct gbq *q, struct gbq_item *it)
{
    TAILQ_REMOVE(&q->buckets[bucket_of(it->transmits)], it, link);
    if (it->key != NULL) {
        ghash_del(&q->by_key, it->key, it->key_len);
    }
    if (it->flags & GBQ_USER) {
        q->n_user--;
    }
    if (it->flags & GBQ_CMD) {
        q->n_cmd--;
    }
    q->n--;
}

void gbq_free(struct gbq *q)
{
    for (unsigned i = 0; i < GBQ_BUCKETS; i++) {
        struct gbq_item *it;
        while ((it = TAILQ_FIRST(&q->buckets[i])) != NULL) {
            TAILQ_REMOVE(&q->buckets[i], it, link);
            free(it);
        }
    }
    ghash_free(&q->by_key);
    q->n = q->n_user = q->n_cmd = 0;
}

void gbq_drop(struct gbq *q, const char *key, size_t key_len)
{
    struct gbq_item *it = ghash_get(&q->by_key, key, key_len);
    if (it != NULL) {
        unlink_item(q, it);
        free(it);
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
    struct gbq_item *it =
        malloc(sizeof *it + len + (key != NULL ? key_len : 0));
    if (it == NULL) {
        return ALLOT_ENOMEM;
    }
    it->transmits = 0;
    it->flags = flags;
    it->len = len;
    memcpy(it->data, msg, len);
    it->key = NULL;
    it->key_len = 0;
    if (key != NULL) {
        memcpy(it->data + len, key, key_len);
        it->key = (const char *)it->data + len;
        it->key_len = key_len;
        struct gbq_item *old = ghash_get(&q->by_key, key, key_len);
        if (old != NULL) {
            unlink_item(q, old);
            free(old);
        }
        if (ghash_put(&q->by_key, it->key, key_len, it) != 0) {
            free(it);
            return ALLOT_ENOMEM;
        }
    }
    TAILQ_INSERT_HEAD(&q->buckets[0], it, link);
    q->n++;
    if (flags & GBQ_USER) {
        q->n_user++;
    }
    if (flags & GBQ_CMD) {
        q->n_cmd++;
    }
    return 0;
}

static void retire(struct gbq *q, struct gbq_item *it, unsigned *notify)
{
    if (it->flags & GBQ_NOTIFY) {
        (*notify)++;
    }
    unlink_item(q, it);
    free(it);
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
    uint32_t top = limit < GBQ_BUCKETS ? limit : GBQ_BUCKETS;
    for (uint32_t b = 0; b < top && skipped < SKIP_MAX; b++) {
        struct gbq_item *it, *next;
        for (it = TAILQ_FIRST(&q->buckets[b]); it != NULL; it = next) {
            next = TAILQ_NEXT(it, link);
            size_t room = w->failed ? 0 : w->cap - w->len;
            if (room < it->len) {
                /* No message is shorter than 3 bytes. */
                if (++skipped >= SKIP_MAX || room < 3) {
                    skipped = SKIP_MAX;
                    break;
                }
                continue;
            }
            gbuf_put_bytes(w, it->data, it->len);
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
