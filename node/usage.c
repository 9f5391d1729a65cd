/* usage.c - the latest usage windows hosts report (usage.h).
 *
 * Happy path: a host sends usage.report once per window; the request is
 * decoded and checked where it arrives (gateway.c: decode_args), forwarded
 * to the leader like a read, and kept here, replacing the host's oldest
 * window when it already has USAGE_WINDOWS. `allotctl usage` (usage.ls)
 * reads them back on the leader.
 *
 * Failure modes: a report that does not decode or breaks a bound is
 * refused whole with `invalid` or `too_big` and changes nothing; a full
 * store forgets the host that reported least recently, or the oldest
 * windows, never refuses a current report (the newest data is what an
 * operator looks at); a leader change loses the windows (one window later
 * every host has reported again). */
#include "usage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/lib.h"
#include "../proto/allot_error.h"
#include "../proto/quota.h"
#include "../proto/wire.h"

/* --- Decoding ------------------------------------------------------------- */

void usage_report_free(struct usage_report *r)
{
    if (r == NULL) {
        return;
    }
    for (uint32_t i = 0; i < r->n_rules; i++) {
        free(r->rules[i].path);
    }
    free(r->rules);
    free(r);
}

static bool name_ok(const char *s, size_t len, bool empty_ok)
{
    if (len > USAGE_HOST_MAX || (len == 0 && !empty_ok)) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] <= 0x20 || s[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

static int get_name(const msgpack_object *args, const char *key, bool required,
                    char *out, char *msg)
{
    const char *s;
    size_t len;
    int rv = wire_get_str(args, key, required, &s, &len, msg);
    if (rv == ALLOT_ENOT_FOUND) {
        out[0] = '\0';
        return 0;
    }
    if (rv != 0) {
        return rv;
    }
    if (!name_ok(s, len, !required)) {
        return allot_errf(msg, ALLOT_EINVALID,
                          "%s must be 1..%u printable characters without "
                          "spaces",
                          key, USAGE_HOST_MAX);
    }
    memcpy(out, s, len);
    out[len] = '\0';
    return 0;
}

static int decode_rule(const msgpack_object *o, uint32_t i,
                       struct usage_rule *u, char *msg)
{
    if (o->type != MSGPACK_OBJECT_MAP) {
        return allot_errf(msg, ALLOT_EINVALID, "rules[%u] must be a map", i);
    }
    const char *p;
    size_t len;
    char sub[ALLOT_ERRMSG_SIZE];
    int rv = wire_get_str(o, "path", true, &p, &len, sub);
    if (rv == 0) {
        rv = quota_path_check(p, len, sub);
    }
    static const struct
    {
        const char *key;
        bool required;
        size_t off;
    } fields[] = {
        {"admitted", true, offsetof(struct usage_rule, admitted)},
        {"rejected", true, offsetof(struct usage_rule, rejected)},
        {"shadowed", true, offsetof(struct usage_rule, shadowed)},
        {"delayed", false, offsetof(struct usage_rule, delayed)},
        {"cost", true, offsetof(struct usage_rule, cost)},
        {"peak", false, offsetof(struct usage_rule, peak)},
    };
    for (size_t f = 0; rv == 0 && f < sizeof fields / sizeof fields[0]; f++) {
        uint64_t *dst = (uint64_t *)((char *)u + fields[f].off);
        rv = wire_get_u64(o, fields[f].key, fields[f].required, dst, sub);
        rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
    }
    if (rv != 0) {
        return allot_errf(msg, ALLOT_EINVALID, "rules[%u]: %s", i, sub);
    }
    u->path = strndup(p, len);
    return u->path != NULL ? 0 : allot_errf(msg, ALLOT_ENOMEM, "out of memory");
}

static int cmp_rule_path(const void *x, const void *y)
{
    return strcmp(((const struct usage_rule *)x)->path,
                  ((const struct usage_rule *)y)->path);
}

int usage_report_decode(const msgpack_object *args, struct usage_report **out,
                        char *msg)
{
    *out = NULL;
    struct usage_report *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return allot_errf(msg, ALLOT_ENOMEM, "out of memory");
    }
    const msgpack_object *rules = wire_map_get(args, "rules");
    int rv = get_name(args, "host", true, r->host, msg);
    if (rv == 0) {
        rv = get_name(args, "fleet", false, r->fleet, msg);
    }
    if (rv == 0) {
        rv = wire_get_u64(args, "window_start_ms", true, &r->window_start_ms,
                          msg);
    }
    if (rv == 0) {
        rv = wire_get_u64(args, "window_ms", true, &r->window_ms, msg);
    }
    if (rv == 0 && (r->window_ms == 0 || r->window_ms > 86400000u)) {
        rv = allot_errf(msg, ALLOT_EINVALID,
                        "window_ms must be 1..86400000 (one day)");
    }
    if (rv == 0 && (rules == NULL || rules->type != MSGPACK_OBJECT_ARRAY)) {
        rv = allot_errf(msg, ALLOT_EINVALID, "rules must be an array");
    }
    if (rv == 0 && rules->via.array.size > USAGE_RULES_MAX) {
        rv = allot_errf(msg, ALLOT_ETOO_BIG,
                        "at most %u rules per report (send several for "
                        "one window)",
                        USAGE_RULES_MAX);
    }
    if (rv == 0 && rules->via.array.size > 0) {
        r->rules = calloc(rules->via.array.size, sizeof *r->rules);
        if (r->rules == NULL) {
            rv = allot_errf(msg, ALLOT_ENOMEM, "out of memory");
        }
    }
    for (uint32_t i = 0; rv == 0 && i < rules->via.array.size; i++) {
        rv = decode_rule(&rules->via.array.ptr[i], i, &r->rules[i], msg);
        if (rv == 0) {
            r->n_rules++;
        }
    }
    if (rv == 0 && r->n_rules > 1) {
        qsort(r->rules, r->n_rules, sizeof *r->rules, cmp_rule_path);
        for (uint32_t i = 1; rv == 0 && i < r->n_rules; i++) {
            if (strcmp(r->rules[i - 1].path, r->rules[i].path) == 0) {
                rv = allot_errf(msg, ALLOT_EINVALID,
                                "rule %s appears twice in one report",
                                r->rules[i].path);
            }
        }
    }
    if (rv != 0) {
        usage_report_free(r);
        return rv;
    }
    *out = r;
    return 0;
}

/* --- The store ------------------------------------------------------------ */

struct usage_window
{
    uint64_t start_ms;
    uint64_t window_ms;
    struct usage_rule *rules; /* owned */
    uint32_t n;
};

struct usage_host
{
    char name[USAGE_HOST_MAX + 1];
    char fleet[USAGE_HOST_MAX + 1];
    uint64_t received_ms;
    struct usage_window w[USAGE_WINDOWS]; /* oldest first */
    unsigned n_windows;
};

struct usage_store
{
    struct usage_host *hosts; /* owned, n_hosts of them */
    size_t n_hosts;
    size_t cap_hosts;
    size_t entries; /* rule entries kept, all hosts */
};

int usage_store_new(struct usage_store **out)
{
    *out = calloc(1, sizeof **out);
    return *out != NULL ? 0 : ALLOT_ENOMEM;
}

static void window_clear(struct usage_store *s, struct usage_window *w)
{
    for (uint32_t i = 0; i < w->n; i++) {
        free(w->rules[i].path);
    }
    free(w->rules);
    s->entries -= w->n;
    memset(w, 0, sizeof *w);
}

static void drop_oldest_window(struct usage_store *s, struct usage_host *h)
{
    window_clear(s, &h->w[0]);
    memmove(&h->w[0], &h->w[1], (h->n_windows - 1) * sizeof h->w[0]);
    h->n_windows--;
    memset(&h->w[h->n_windows], 0, sizeof h->w[0]);
}

static void host_clear(struct usage_store *s, struct usage_host *h)
{
    while (h->n_windows > 0) {
        drop_oldest_window(s, h);
    }
}

void usage_store_free(struct usage_store *s)
{
    if (s == NULL) {
        return;
    }
    for (size_t i = 0; i < s->n_hosts; i++) {
        host_clear(s, &s->hosts[i]);
    }
    free(s->hosts);
    free(s);
}

static struct usage_host *host_get(struct usage_store *s, const char *name)
{
    for (size_t i = 0; i < s->n_hosts; i++) {
        if (strcmp(s->hosts[i].name, name) == 0) {
            return &s->hosts[i];
        }
    }
    if (s->n_hosts == USAGE_HOSTS_MAX) {
        /* Forget the host heard from least recently: it has stopped
         * reporting, or reports rarely; a live one comes back next window. */
        size_t old = 0;
        for (size_t i = 1; i < s->n_hosts; i++) {
            if (s->hosts[i].received_ms < s->hosts[old].received_ms) {
                old = i;
            }
        }
        host_clear(s, &s->hosts[old]);
        s->hosts[old] = s->hosts[--s->n_hosts];
    }
    if (s->n_hosts == s->cap_hosts) {
        size_t cap = s->cap_hosts ? s->cap_hosts * 2 : 16;
        struct usage_host *nh = realloc(s->hosts, cap * sizeof *nh);
        if (nh == NULL) {
            return NULL;
        }
        s->hosts = nh;
        s->cap_hosts = cap;
    }
    struct usage_host *h = &s->hosts[s->n_hosts++];
    memset(h, 0, sizeof *h);
    snprintf(h->name, sizeof h->name, "%s", name);
    return h;
}

/* Make room for `need` more entries by dropping the oldest windows of any
 * host. Called before any pointer into the hosts is taken: it moves
 * windows. */
static void make_room(struct usage_store *s, size_t need)
{
    while (s->entries + need > USAGE_ENTRIES_MAX) {
        struct usage_host *oldest = NULL;
        for (size_t i = 0; i < s->n_hosts; i++) {
            struct usage_host *h = &s->hosts[i];
            if (h->n_windows > 0 &&
                (oldest == NULL || h->w[0].start_ms < oldest->w[0].start_ms)) {
                oldest = h;
            }
        }
        if (oldest == NULL) {
            return;
        }
        drop_oldest_window(s, oldest);
    }
}

int usage_store_put(struct usage_store *s, struct usage_report *r,
                    uint64_t now_ms)
{
    /* Refuse before changing anything. */
    for (size_t i = 0; i < s->n_hosts; i++) {
        const struct usage_host *k = &s->hosts[i];
        for (unsigned j = 0; strcmp(k->name, r->host) == 0 && j < k->n_windows;
             j++) {
            if (k->w[j].start_ms == r->window_start_ms &&
                k->w[j].n + r->n_rules > USAGE_RULES_MAX) {
                return ALLOT_ETOO_BIG;
            }
        }
    }
    make_room(s, r->n_rules);
    struct usage_host *h = host_get(s, r->host);
    if (h == NULL) {
        return ALLOT_ENOMEM;
    }
    struct usage_window *w = NULL;
    for (unsigned i = 0; i < h->n_windows; i++) {
        if (h->w[i].start_ms == r->window_start_ms) {
            w = &h->w[i];
        }
    }
    if (w == NULL) {
        if (h->n_windows == USAGE_WINDOWS &&
            r->window_start_ms < h->w[0].start_ms) {
            return 0; /* older than everything kept: nothing to show */
        }
        if (h->n_windows == USAGE_WINDOWS) {
            drop_oldest_window(s, h);
        }
        unsigned at = h->n_windows;
        while (at > 0 && h->w[at - 1].start_ms > r->window_start_ms) {
            at--;
        }
        memmove(&h->w[at + 1], &h->w[at], (h->n_windows - at) * sizeof *w);
        w = &h->w[at];
        memset(w, 0, sizeof *w);
        w->start_ms = r->window_start_ms;
        w->window_ms = r->window_ms;
        h->n_windows++;
    }
    if (r->n_rules > 0) {
        struct usage_rule *nr =
            realloc(w->rules, (w->n + r->n_rules) * sizeof *nr);
        if (nr == NULL) {
            return ALLOT_ENOMEM;
        }
        w->rules = nr;
        memcpy(&w->rules[w->n], r->rules, r->n_rules * sizeof *nr);
        w->n += r->n_rules;
        s->entries += r->n_rules;
        /* The paths now belong to the store. */
        free(r->rules);
        r->rules = NULL;
        r->n_rules = 0;
    }
    snprintf(h->fleet, sizeof h->fleet, "%s", r->fleet);
    h->received_ms = now_ms;
    return 0;
}

size_t usage_store_hosts(const struct usage_store *s)
{
    return s->n_hosts;
}

size_t usage_store_entries(const struct usage_store *s)
{
    return s->entries;
}

/* --- Reading -------------------------------------------------------------- */

struct ls_query
{
    const char *prefix;
    size_t prefix_len;
    const char *host;
};

static bool rule_matches(const struct ls_query *q, const char *path)
{
    if (q->prefix_len == 0) {
        return true;
    }
    return strncmp(path, q->prefix, q->prefix_len) == 0 &&
           (path[q->prefix_len] == '\0' || path[q->prefix_len] == '/');
}

/* Matching rules of w, at most *budget of them (taken from it). */
static uint32_t window_count(const struct ls_query *q,
                             const struct usage_window *w, size_t *budget)
{
    uint32_t c = 0;
    for (uint32_t i = 0; i<w->n && * budget> 0; i++) {
        if (rule_matches(q, w->rules[i].path)) {
            c++;
            (*budget)--;
        }
    }
    return c;
}

static unsigned host_count(const struct ls_query *q, const struct usage_host *h,
                           size_t *budget)
{
    unsigned c = 0;
    if (q->host != NULL && strcmp(q->host, h->name) != 0) {
        return 0;
    }
    for (unsigned i = 0; i < h->n_windows; i++) {
        c += window_count(q, &h->w[i], budget) > 0;
    }
    return c;
}

static void pack_rule(msgpack_packer *pk, const struct usage_rule *u)
{
    msgpack_pack_map(pk, 7);
    wire_pack_kv_str(pk, "path", u->path);
    wire_pack_usage(pk, u->admitted, u->rejected, u->shadowed, u->delayed,
                    u->cost, u->peak);
}

void usage_store_pack(const struct usage_store *s, const char *prefix,
                      size_t prefix_len, const char *host, msgpack_packer *pk)
{
    const struct ls_query q = {prefix, prefix_len, host};
    /* Counting and packing walk the same way with the same budget, so the
     * array headers match what follows. */
    size_t budget = USAGE_LS_MAX, total = 0;
    uint32_t n_hosts = 0;
    for (size_t i = 0; i < s->n_hosts; i++) {
        size_t all = SIZE_MAX;
        if (host_count(&q, &s->hosts[i], &all) > 0) {
            total += SIZE_MAX - all;
            n_hosts += host_count(&q, &s->hosts[i], &budget) > 0;
        }
    }
    msgpack_pack_map(pk, 2);
    wire_pack_str(pk, "hosts");
    msgpack_pack_array(pk, n_hosts);
    budget = USAGE_LS_MAX;
    for (size_t i = 0; i < s->n_hosts; i++) {
        const struct usage_host *h = &s->hosts[i];
        size_t b = budget;
        unsigned nw = host_count(&q, h, &b);
        if (nw == 0) {
            continue;
        }
        msgpack_pack_map(pk, 4);
        wire_pack_kv_str(pk, "host", h->name);
        wire_pack_kv_str(pk, "fleet", h->fleet);
        wire_pack_kv_u64(pk, "received_ms", h->received_ms);
        wire_pack_str(pk, "windows");
        msgpack_pack_array(pk, nw);
        for (unsigned k = 0; k < h->n_windows; k++) {
            const struct usage_window *w = &h->w[k];
            size_t wb = budget;
            uint32_t nr = window_count(&q, w, &wb);
            if (nr == 0) {
                continue;
            }
            msgpack_pack_map(pk, 3);
            wire_pack_kv_u64(pk, "start_ms", w->start_ms);
            wire_pack_kv_u64(pk, "window_ms", w->window_ms);
            wire_pack_str(pk, "rules");
            msgpack_pack_array(pk, nr);
            for (uint32_t j = 0, packed = 0; j < w->n && packed < nr; j++) {
                if (rule_matches(&q, w->rules[j].path)) {
                    pack_rule(pk, &w->rules[j]);
                    packed++;
                }
            }
            budget = wb;
        }
    }
    wire_pack_str(pk, "truncated");
    total > USAGE_LS_MAX ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}
