/* nonce.c - nonces of signed requests this node has accepted.
 *
 * A signed request is valid for AUTH_CLOCK_SKEW_MS either side of the
 * server's clock; a nonce must therefore be remembered for twice that to
 * refuse every replay that still has a valid timestamp. Nonces sit in a
 * red-black tree for lookup and a FIFO for expiry; the cache holds at most
 * NODE_NONCES_MAX, dropping the oldest first (a replay of a request whose
 * nonce was dropped early is still harmless for writes: the state machine
 * answers a retried (client, seq) with its first result). Each node keeps
 * its own cache: after a leader change a replay reaching the new leader is
 * caught by that same deduplication, not by this cache. */
#include <stdlib.h>
#include <string.h>

#include "node.h"
/* Last: it defines __unused for the BSD tree macros. */
#include "../lib/tree.h"

struct nonce
{
    RB_ENTRY(nonce) link;
    TAILQ_ENTRY(nonce) fifo;
    unsigned char bytes[AUTH_NONCE_LEN];
    uint64_t seen_ms;
};

static int nonce_cmp(const struct nonce *a, const struct nonce *b)
{
    return memcmp(a->bytes, b->bytes, AUTH_NONCE_LEN);
}

RB_HEAD(nonce_tree, nonce);
RB_GENERATE_STATIC(nonce_tree, nonce, link, nonce_cmp)
TAILQ_HEAD(nonce_fifo, nonce);

struct nonce_cache
{
    struct nonce_tree tree;
    struct nonce_fifo fifo;
    size_t n;
};

struct nonce_cache *nonce_cache_new(void)
{
    struct nonce_cache *c = calloc(1, sizeof *c);
    if (c != NULL) {
        RB_INIT(&c->tree);
        TAILQ_INIT(&c->fifo);
    }
    return c;
}

static void drop_oldest(struct nonce_cache *c)
{
    struct nonce *n = TAILQ_FIRST(&c->fifo);
    TAILQ_REMOVE(&c->fifo, n, fifo);
    RB_REMOVE(nonce_tree, &c->tree, n);
    c->n--;
    free(n);
}

void nonce_cache_free(struct nonce_cache *c)
{
    if (c == NULL) {
        return;
    }
    while (c->n > 0) {
        drop_oldest(c);
    }
    free(c);
}

int nonce_cache_check(struct nonce_cache *c, const unsigned char *nonce,
                      uint64_t now_ms)
{
    const uint64_t keep = 2ull * AUTH_CLOCK_SKEW_MS;
    struct nonce *old;
    while ((old = TAILQ_FIRST(&c->fifo)) != NULL &&
           (c->n >= NODE_NONCES_MAX ||
            (now_ms > old->seen_ms && now_ms - old->seen_ms > keep))) {
        drop_oldest(c);
    }
    struct nonce key;
    memcpy(key.bytes, nonce, AUTH_NONCE_LEN);
    if (RB_FIND(nonce_tree, &c->tree, &key) != NULL) {
        return 1;
    }
    struct nonce *n = malloc(sizeof *n);
    if (n == NULL) {
        /* Cannot remember it: refuse rather than open a replay window. */
        return 1;
    }
    memcpy(n->bytes, nonce, AUTH_NONCE_LEN);
    n->seen_ms = now_ms;
    RB_INSERT(nonce_tree, &c->tree, n);
    TAILQ_INSERT_TAIL(&c->fifo, n, fifo);
    c->n++;
    return 0;
}
