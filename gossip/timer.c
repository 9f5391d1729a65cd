/* timer.c - binary min-heap of timers (see timer.h). */
#include "timer.h"

#include <stdlib.h>

#include "../proto/allot_error.h"

void gtimer_heap_init(struct gtimer_heap *h)
{
    h->items = NULL;
    h->n = h->cap = 0;
}

void gtimer_heap_free(struct gtimer_heap *h)
{
    for (size_t i = 0; i < h->n; i++) {
        h->items[i]->idx = GTIMER_IDLE;
    }
    free(h->items);
    gtimer_heap_init(h);
}

void gtimer_init(struct gtimer *t, gtimer_fn fn)
{
    t->at = 0;
    t->idx = GTIMER_IDLE;
    t->fn = fn;
}

static void place(struct gtimer_heap *h, size_t i, struct gtimer *t)
{
    h->items[i] = t;
    t->idx = i;
}

static void sift_up(struct gtimer_heap *h, size_t i)
{
    struct gtimer *t = h->items[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h->items[parent]->at <= t->at) {
            break;
        }
        place(h, i, h->items[parent]);
        i = parent;
    }
    place(h, i, t);
}

static void sift_down(struct gtimer_heap *h, size_t i)
{
    struct gtimer *t = h->items[i];
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= h->n) {
            break;
        }
        size_t c = l;
        if (l + 1 < h->n && h->items[l + 1]->at < h->items[l]->at) {
            c = l + 1;
        }
        if (h->items[c]->at >= t->at) {
            break;
        }
        place(h, i, h->items[c]);
        i = c;
    }
    place(h, i, t);
}

void gtimer_stop(struct gtimer_heap *h, struct gtimer *t)
{
    if (t->idx == GTIMER_IDLE) {
        return;
    }
    size_t i = t->idx;
    t->idx = GTIMER_IDLE;
    h->n--;
    if (i == h->n) {
        return;
    }
    struct gtimer *moved = h->items[h->n];
    place(h, i, moved);
    sift_up(h, i);
    sift_down(h, moved->idx);
}

int gtimer_start(struct gtimer_heap *h, struct gtimer *t, uint64_t at)
{
    gtimer_stop(h, t);
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 32;
        struct gtimer **items = realloc(h->items, cap * sizeof *items);
        if (items == NULL) {
            return ALLOT_ENOMEM;
        }
        h->items = items;
        h->cap = cap;
    }
    t->at = at;
    place(h, h->n, t);
    h->n++;
    sift_up(h, h->n - 1);
    return 0;
}

uint64_t gtimer_next(const struct gtimer_heap *h)
{
    return h->n > 0 ? h->items[0]->at : UINT64_MAX;
}

struct gtimer *gtimer_pop_due(struct gtimer_heap *h, uint64_t now)
{
    if (h->n == 0 || h->items[0]->at > now) {
        return NULL;
    }
    struct gtimer *t = h->items[0];
    gtimer_stop(h, t);
    return t;
}
