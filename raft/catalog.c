/* catalog.c - the quota tree and its built-in rules (see catalog.h).
 *
 * The rules, all decided on every replica from replicated state only:
 *   capacity  guaranteed <= max, per resource (max 0 = no maximum here);
 *             the children's guaranteed sums <= the parent's guaranteed;
 *             a child's max and max_apps <= the parent's (0 = inherit);
 *             the top level's guaranteed sums <= the declared capacity;
 *   rate      the children's rates (same unit) summed <= the parent's rate.
 * A parent must exist before its child; a quota with children is removed
 * only recursively. The rules apply between a parent and children of the
 * same kind: a rate quota under a capacity quota (a project's API limit under
 * the project's capacity) is checked against its rate siblings only. */
#include "catalog.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../proto/allot_error.h"

static int node_cmp(const struct cat_node *a, const struct cat_node *b)
{
    return strcmp(a->q.path, b->q.path);
}

RB_GENERATE_STATIC(cat_tree, cat_node, link, node_cmp)

/* A rate above this is refused by quota_fields_merge(); the bound keeps
 * thousandths and their sums inside 64 bits. */
#define RATE_MAX QUOTA_RATE_MAX

uint64_t catalog_rate_milli(double rate)
{
    if (!(rate > 0)) {
        return 0;
    }
    if (rate > RATE_MAX) {
        rate = RATE_MAX;
    }
    return (uint64_t)(rate * 1000.0 + 0.5);
}

void catalog_digest_toggle(struct catalog *c, const char *path, size_t len,
                           uint64_t version)
{
    quota_digest_toggle(c->digest, path, len, version);
}

void catalog_init(struct catalog *c)
{
    memset(c, 0, sizeof *c);
    RB_INIT(&c->tree);
}

void catalog_free(struct catalog *c)
{
    struct cat_node *n, *next;
    RB_FOREACH_SAFE(n, cat_tree, &c->tree, next)
    {
        RB_REMOVE(cat_tree, &c->tree, n);
        quota_free(&n->q);
        free(n->agg);
        free(n);
    }
    c->n_quotas = 0;
}

struct cat_node *catalog_lower_bound(const struct catalog *c, const char *key,
                                     size_t len)
{
    char buf[QUOTA_PATH_MAX + 2];
    if (len > QUOTA_PATH_MAX + 1) {
        len = QUOTA_PATH_MAX + 1;
    }
    memcpy(buf, key, len);
    buf[len] = '\0';
    struct cat_node probe = {.q = {.path = buf}};
    return RB_NFIND(cat_tree, (struct cat_tree *)&c->tree, &probe);
}

struct cat_node *catalog_find(const struct catalog *c, const char *path,
                              size_t len)
{
    if (len > QUOTA_PATH_MAX) {
        return NULL;
    }
    struct cat_node *n = catalog_lower_bound(c, path, len);
    if (n != NULL && strlen(n->q.path) == len &&
        memcmp(n->q.path, path, len) == 0) {
        return n;
    }
    return NULL;
}

struct cat_node *catalog_first(const struct catalog *c)
{
    return RB_MIN(cat_tree, (struct cat_tree *)&c->tree);
}

struct cat_node *catalog_next(const struct catalog *c, struct cat_node *n)
{
    (void)c;
    return RB_NEXT(cat_tree, (struct cat_tree *)&c->tree, n);
}

/* Length of the parent's path, or 0 for a top-level path. */
static size_t parent_len(const char *path, size_t len)
{
    for (size_t i = len; i > 0; i--) {
        if (path[i - 1] == '/') {
            return i - 1;
        }
    }
    return 0;
}

static const struct cat_agg no_children;

/* A node's sums over its children (all zero for a leaf). */
static const struct cat_agg *node_agg(const struct cat_node *n)
{
    return n->agg != NULL ? n->agg : &no_children;
}

/* The aggregate a path contributes to: its parent's, or the top level's.
 * *parent is the parent node (NULL at the top level). Returns NULL when the
 * parent does not exist, or when `make` is set and a leaf parent's sums
 * cannot be allocated. */
static struct cat_agg *agg_of_parent(const struct catalog *c, const char *path,
                                     size_t len, struct cat_node **parent,
                                     bool make)
{
    size_t plen = parent_len(path, len);
    *parent = NULL;
    if (plen == 0) {
        return (struct cat_agg *)&c->top;
    }
    *parent = catalog_find(c, path, plen);
    if (*parent == NULL) {
        return NULL;
    }
    if ((*parent)->agg == NULL) {
        if (!make) {
            return (struct cat_agg *)&no_children;
        }
        (*parent)->agg = calloc(1, sizeof *(*parent)->agg);
    }
    return (*parent)->agg;
}

static void agg_add(struct cat_agg *a, const struct quota_fields *f)
{
    a->n_children++;
    if (f->kind == QUOTA_KIND_CAPACITY) {
        a->g_memory_mb += f->guaranteed_memory_mb;
        a->g_vcores += f->guaranteed_vcores;
    } else if (f->kind == QUOTA_KIND_RATE && f->unit < 2) {
        a->rate_milli[f->unit] += catalog_rate_milli(f->rate);
    }
}

static void agg_sub(struct cat_agg *a, const struct quota_fields *f)
{
    a->n_children--;
    if (f->kind == QUOTA_KIND_CAPACITY) {
        a->g_memory_mb -= f->guaranteed_memory_mb;
        a->g_vcores -= f->guaranteed_vcores;
    } else if (f->kind == QUOTA_KIND_RATE && f->unit < 2) {
        a->rate_milli[f->unit] -= catalog_rate_milli(f->rate);
    }
}

/* sum - old + add into *out; false when it does not fit in 64 bits. Every
 * change is refused whose sum does not fit (not only where a limit applies),
 * so the aggregates never wrap around: a sum kept without a limit (the top
 * level before a capacity is declared, rates of another unit than the
 * parent's) may be checked later, when the limit appears. */
static bool resum(uint64_t sum, uint64_t old, uint64_t add, uint64_t *out)
{
    return !__builtin_add_overflow(sum - old, add, out);
}

/* Thousandths as exact decimal: "%.15g" would print 1000000000000.001 as
 * 1000000000000. */
static void fmt_rate(uint64_t milli, char *buf, size_t size)
{
    unsigned frac = (unsigned)(milli % 1000);
    if (frac == 0) {
        snprintf(buf, size, "%llu", (unsigned long long)(milli / 1000));
    } else if (frac % 100 == 0) {
        snprintf(buf, size, "%llu.%u", (unsigned long long)(milli / 1000),
                 frac / 100);
    } else if (frac % 10 == 0) {
        snprintf(buf, size, "%llu.%02u", (unsigned long long)(milli / 1000),
                 frac / 10);
    } else {
        snprintf(buf, size, "%llu.%03u", (unsigned long long)(milli / 1000),
                 frac);
    }
}

/* Does `child` (a direct child path of parent) exceed a max of the parent?
 * Walks the direct children of p; only needed when p's max shrinks. */
static int check_children_max(const struct catalog *c, const char *path,
                              size_t len, const struct quota_fields *next,
                              char *msg)
{
    char prefix[QUOTA_PATH_MAX + 2];
    memcpy(prefix, path, len);
    prefix[len] = '/';
    struct cat_node *n = catalog_lower_bound(c, prefix, len + 1);
    for (; n != NULL; n = catalog_next(c, n)) {
        const char *p = n->q.path;
        if (strncmp(p, prefix, len + 1) != 0) {
            break;
        }
        /* Every capacity descendant: one whose nearer ancestors set no
         * maximum inherits this one, and any other was checked against a
         * nearer, smaller maximum, so it cannot exceed the new one by
         * accident. */
        if (n->q.f.kind != QUOTA_KIND_CAPACITY) {
            continue;
        }
        const struct quota_fields *f = &n->q.f;
        struct
        {
            const char *name;
            uint64_t child, parent;
        } rules[] = {
            {"max.memory_mb", f->max_memory_mb, next->max_memory_mb},
            {"max.vcores", f->max_vcores, next->max_vcores},
            {"max_apps", f->max_apps, next->max_apps},
        };
        for (unsigned i = 0; i < 3; i++) {
            if (rules[i].parent > 0 && rules[i].child > rules[i].parent) {
                return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                                  "descendant %s %s %llu > parent %.*s %llu", p,
                                  rules[i].name,
                                  (unsigned long long)rules[i].child, (int)len,
                                  path, (unsigned long long)rules[i].parent);
            }
        }
    }
    return 0;
}

/* The parent of the quota at path when it is a capacity quota, else NULL. */
static const struct cat_node *capacity_parent(const struct catalog *c,
                                              const char *path)
{
    size_t plen = parent_len(path, strlen(path));
    if (plen == 0) {
        return NULL;
    }
    const struct cat_node *p = catalog_find(c, path, plen);
    return p != NULL && p->q.f.kind == QUOTA_KIND_CAPACITY ? p : NULL;
}

static int check_capacity(const struct catalog *c, const char *path, size_t len,
                          const struct cat_node *cur,
                          const struct cat_agg *pagg,
                          const struct cat_node *parent,
                          const struct quota_fields *next, char *msg)
{
    const char *res[2] = {"memory_mb", "vcores"};
    uint64_t g[2] = {next->guaranteed_memory_mb, next->guaranteed_vcores};
    uint64_t mx[2] = {next->max_memory_mb, next->max_vcores};
    for (int i = 0; i < 2; i++) {
        if (mx[i] > 0 && g[i] > mx[i]) {
            return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                              "guaranteed.%s %llu > max.%s %llu at %.*s",
                              res[i], (unsigned long long)g[i], res[i],
                              (unsigned long long)mx[i], (int)len, path);
        }
    }
    /* Against the parent (or the declared cluster capacity). */
    bool was_cap = cur != NULL && cur->q.f.kind == QUOTA_KIND_CAPACITY;
    uint64_t old[2] = {was_cap ? cur->q.f.guaranteed_memory_mb : 0,
                       was_cap ? cur->q.f.guaranteed_vcores : 0};
    uint64_t base[2] = {pagg->g_memory_mb, pagg->g_vcores};
    uint64_t sums[2];
    for (int i = 0; i < 2; i++) {
        if (resum(base[i], old[i], g[i], &sums[i])) {
            continue;
        }
        /* More than 64 bits: more than any limit there can be. */
        char limit[QUOTA_PATH_MAX + 64];
        bool cap_parent =
            parent != NULL && parent->q.f.kind == QUOTA_KIND_CAPACITY;
        bool declared =
            i == 0 ? c->capacity.has_memory_mb : c->capacity.has_vcores;
        if (cap_parent) {
            snprintf(limit, sizeof limit, "parent %s %llu", parent->q.path,
                     (unsigned long long)(i == 0
                                              ? parent->q.f.guaranteed_memory_mb
                                              : parent->q.f.guaranteed_vcores));
        } else if (parent == NULL && declared) {
            snprintf(limit, sizeof limit, "cluster capacity %llu",
                     (unsigned long long)(i == 0 ? c->capacity.memory_mb
                                                 : c->capacity.vcores));
        } else {
            snprintf(limit, sizeof limit, "%llu",
                     (unsigned long long)UINT64_MAX);
        }
        return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                          "%s guaranteed.%s %llu + %llu > %s",
                          parent != NULL ? "children" : "top-level", res[i],
                          (unsigned long long)(base[i] - old[i]),
                          (unsigned long long)g[i], limit);
    }
    if (parent == NULL) {
        const struct fsm_capacity *cap = &c->capacity;
        bool has[2] = {cap->has_memory_mb, cap->has_vcores};
        uint64_t limit[2] = {cap->memory_mb, cap->vcores};
        for (int i = 0; i < 2; i++) {
            if (has[i] && sums[i] > limit[i]) {
                return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                                  "top-level guaranteed.%s %llu > cluster "
                                  "capacity %llu",
                                  res[i], (unsigned long long)sums[i],
                                  (unsigned long long)limit[i]);
            }
        }
    } else if (parent->q.f.kind == QUOTA_KIND_CAPACITY) {
        const struct quota_fields *pf = &parent->q.f;
        uint64_t pg[2] = {pf->guaranteed_memory_mb, pf->guaranteed_vcores};
        uint64_t pmx[3] = {pf->max_memory_mb, pf->max_vcores, pf->max_apps};
        uint64_t cmx[3] = {mx[0], mx[1], next->max_apps};
        const char *mxname[3] = {"max.memory_mb", "max.vcores", "max_apps"};
        for (int i = 0; i < 2; i++) {
            if (sums[i] > pg[i]) {
                return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                                  "children guaranteed.%s %llu > parent %s "
                                  "%llu",
                                  res[i], (unsigned long long)sums[i],
                                  parent->q.path, (unsigned long long)pg[i]);
            }
        }
        for (int i = 0; i < 3; i++) {
            /* A parent's 0 means "no maximum here": the nearest capacity
             * ancestor that sets one is the bound. */
            const struct cat_node *bound = parent;
            uint64_t limit = pmx[i];
            while (limit == 0 && bound != NULL) {
                bound = capacity_parent(c, bound->q.path);
                if (bound != NULL) {
                    const struct quota_fields *bf = &bound->q.f;
                    limit = i == 0   ? bf->max_memory_mb
                            : i == 1 ? bf->max_vcores
                                     : bf->max_apps;
                }
            }
            if (limit > 0 && cmx[i] > limit) {
                return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                                  "%s %llu > parent %s %s %llu", mxname[i],
                                  (unsigned long long)cmx[i], bound->q.path,
                                  mxname[i], (unsigned long long)limit);
            }
        }
    }
    /* Against its own children. */
    if (cur != NULL && node_agg(cur)->n_children > 0) {
        uint64_t ch[2] = {node_agg(cur)->g_memory_mb, node_agg(cur)->g_vcores};
        for (int i = 0; i < 2; i++) {
            if (ch[i] > g[i]) {
                return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                                  "children guaranteed.%s %llu > parent %.*s "
                                  "%llu",
                                  res[i], (unsigned long long)ch[i], (int)len,
                                  path, (unsigned long long)g[i]);
            }
        }
        return check_children_max(c, path, len, next, msg);
    }
    return 0;
}

static int check_rate(const char *path, size_t len, const struct cat_node *cur,
                      const struct cat_agg *pagg, const struct cat_node *parent,
                      const struct quota_fields *next, char *msg)
{
    char a[32], b[32];
    uint64_t rate = catalog_rate_milli(next->rate);
    unsigned unit = next->unit < 2 ? next->unit : 0;
    bool same = cur != NULL && cur->q.f.kind == QUOTA_KIND_RATE &&
                cur->q.f.unit == unit;
    uint64_t old = same ? catalog_rate_milli(cur->q.f.rate) : 0;
    uint64_t sum;
    if (!resum(pagg->rate_milli[unit], old, rate, &sum)) {
        fmt_rate(pagg->rate_milli[unit] - old, a, sizeof a);
        fmt_rate(rate, b, sizeof b);
        return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                          "children rate %s + %s does not fit in 64 bits of "
                          "thousandths",
                          a, b);
    }
    if (parent != NULL && parent->q.f.kind == QUOTA_KIND_RATE &&
        parent->q.f.unit == unit) {
        uint64_t limit = catalog_rate_milli(parent->q.f.rate);
        if (sum > limit) {
            fmt_rate(sum, a, sizeof a);
            fmt_rate(limit, b, sizeof b);
            return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                              "children rate %s > parent %s %s", a,
                              parent->q.path, b);
        }
    }
    if (cur != NULL && node_agg(cur)->rate_milli[unit] > rate) {
        fmt_rate(node_agg(cur)->rate_milli[unit], a, sizeof a);
        fmt_rate(rate, b, sizeof b);
        return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                          "children rate %s > parent %.*s %s", a, (int)len,
                          path, b);
    }
    return 0;
}

int catalog_check_set(const struct catalog *c, const char *path, size_t len,
                      const struct cat_node *cur,
                      const struct quota_fields *next, char *msg)
{
    struct cat_node *parent;
    const struct cat_agg *pagg = agg_of_parent(c, path, len, &parent, false);
    if (pagg == NULL) {
        size_t plen = parent_len(path, len);
        return allot_errf(msg, ALLOT_ENOT_FOUND,
                          "parent %.*s does not exist; create it first",
                          (int)plen, path);
    }
    if (next->kind == QUOTA_KIND_CAPACITY) {
        /* Capacity nests in capacity: under a rate quota it would escape
         * every guaranteed sum above it, the cluster capacity included. */
        if (parent != NULL && parent->q.f.kind != QUOTA_KIND_CAPACITY) {
            return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                              "a capacity quota cannot sit under %s quota %s",
                              quota_kind_name(parent->q.f.kind),
                              parent->q.path);
        }
        return check_capacity(c, path, len, cur, pagg, parent, next, msg);
    }
    return check_rate(path, len, cur, pagg, parent, next, msg);
}

struct cat_node *catalog_put(struct catalog *c, const char *path, size_t len,
                             struct cat_node *cur,
                             const struct quota_fields *next, char **owners,
                             uint32_t n_owners, char **labels,
                             uint32_t n_labels, uint64_t version,
                             uint64_t now_ms)
{
    struct cat_node *parent;
    struct cat_agg *pagg = agg_of_parent(c, path, len, &parent, true);
    if (pagg == NULL) {
        return NULL; /* no parent (refused by catalog_check_set()) or OOM */
    }
    if (cur == NULL) {
        cur = calloc(1, sizeof *cur);
        if (cur == NULL) {
            return NULL;
        }
        cur->q.path = malloc(len + 1);
        if (cur->q.path == NULL) {
            free(cur);
            return NULL;
        }
        memcpy(cur->q.path, path, len);
        cur->q.path[len] = '\0';
        cur->q.created_ms = now_ms;
        RB_INSERT(cat_tree, &c->tree, cur);
        c->n_quotas++;
    } else {
        agg_sub(pagg, &cur->q.f);
        catalog_digest_toggle(c, path, len, cur->q.version);
    }
    catalog_digest_toggle(c, path, len, version);
    cur->q.f = *next;
    cur->q.f.set = 0;
    for (uint32_t i = 0; i < cur->q.n_owners; i++) {
        free(cur->q.owners[i]);
    }
    free(cur->q.owners);
    cur->q.owners = owners;
    cur->q.n_owners = n_owners;
    for (uint32_t i = 0; i < cur->q.n_labels; i++) {
        free(cur->q.labels[i]);
    }
    free(cur->q.labels);
    cur->q.labels = labels;
    cur->q.n_labels = n_labels;
    cur->q.version = version;
    cur->q.updated_ms = now_ms;
    agg_add(pagg, &cur->q.f);
    return cur;
}

int catalog_check_rm(const struct catalog *c, const struct cat_node *n,
                     bool recursive, char *msg)
{
    (void)c;
    const struct cat_agg *agg = node_agg(n);
    if (agg->n_children > 0 && !recursive) {
        return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                          "%s has %u %s; remove %s first or remove "
                          "recursively (allotctl quota rm --recursive)",
                          n->q.path, agg->n_children,
                          agg->n_children == 1 ? "child" : "children",
                          agg->n_children == 1 ? "it" : "them");
    }
    return 0;
}

uint64_t catalog_remove(struct catalog *c, struct cat_node *n,
                        catalog_removed_cb cb, void *arg)
{
    struct cat_node *parent;
    /* The parent has a child (n), so its sums exist: nothing to allocate. */
    struct cat_agg *pagg =
        agg_of_parent(c, n->q.path, strlen(n->q.path), &parent, false);
    if (pagg != NULL && pagg != &no_children) {
        agg_sub(pagg, &n->q.f);
    }
    /* n, then its descendants: the range [path + "/", ...) right after it
     * in path order (siblings like path-x sort before path/, and are
     * skipped by the prefix test). */
    size_t len = strlen(n->q.path);
    char prefix[QUOTA_PATH_MAX + 2];
    memcpy(prefix, n->q.path, len);
    prefix[len] = '/';
    prefix[len + 1] = '\0';
    uint64_t removed = 0;
    struct cat_node *d = n;
    while (d != NULL) {
        struct cat_node *next = catalog_lower_bound(c, prefix, len + 1);
        if (next == d) {
            next = catalog_next(c, d);
        }
        if (next != NULL && strncmp(next->q.path, prefix, len + 1) != 0) {
            next = NULL;
        }
        if (cb != NULL) {
            cb(arg, &d->q);
        }
        RB_REMOVE(cat_tree, &c->tree, d);
        c->n_quotas--;
        catalog_digest_toggle(c, d->q.path, strlen(d->q.path), d->q.version);
        quota_free(&d->q);
        free(d->agg);
        free(d);
        removed++;
        d = next;
    }
    return removed;
}

int catalog_check_capacity(const struct catalog *c,
                           const struct fsm_capacity *next, char *msg)
{
    if (next->has_memory_mb && c->top.g_memory_mb > next->memory_mb) {
        return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                          "top-level guaranteed.memory_mb %llu > cluster "
                          "capacity %llu",
                          (unsigned long long)c->top.g_memory_mb,
                          (unsigned long long)next->memory_mb);
    }
    if (next->has_vcores && c->top.g_vcores > next->vcores) {
        return allot_errf(msg, ALLOT_EVALIDATION_FAILED,
                          "top-level guaranteed.vcores %llu > cluster "
                          "capacity %llu",
                          (unsigned long long)c->top.g_vcores,
                          (unsigned long long)next->vcores);
    }
    return 0;
}

int catalog_insert_restored(struct catalog *c, struct cat_node *n)
{
    n->agg = NULL;
    if (RB_INSERT(cat_tree, &c->tree, n) != NULL) {
        return ALLOT_EPROTOCOL;
    }
    c->n_quotas++;
    catalog_digest_toggle(c, n->q.path, strlen(n->q.path), n->q.version);
    return 0;
}

int catalog_rebuild(struct catalog *c)
{
    memset(&c->top, 0, sizeof c->top);
    struct cat_node *n;
    RB_FOREACH(n, cat_tree, &c->tree)
    {
        if (n->agg != NULL) {
            memset(n->agg, 0, sizeof *n->agg);
        }
    }
    RB_FOREACH(n, cat_tree, &c->tree)
    {
        struct cat_node *parent;
        struct cat_agg *pagg =
            agg_of_parent(c, n->q.path, strlen(n->q.path), &parent, true);
        if (pagg == NULL) {
            /* An orphan (not a state we produce), or out of memory. */
            return parent == NULL ? ALLOT_EPROTOCOL : ALLOT_ENOMEM;
        }
        agg_add(pagg, &n->q.f);
    }
    return 0;
}
