/* shares.c - each host's part of a fleet-wide limit (shares.h).
 *
 * Determinism is the point: two hosts with the same view must compute the
 * same parts, or the fleet's parts no longer add up to the limit. Floating
 * point addition is not associative, so every sum and every walk below
 * runs in one canonical order (by name, or by a key with name as the tie
 * breaker), never in the order the caller listed the members. */
#include "shares.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "../proto/allot_error.h"

struct ord
{
    const struct shares_member *m;
    size_t i;    /* index in the caller's arrays */
    double key;  /* demand, or a slot remainder */
    size_t rank; /* place in name order (set by order()) */
};

static int by_name(const void *a, const void *b)
{
    const struct ord *x = a, *y = b;
    return strcmp(x->m->name, y->m->name);
}

/* Name order, from the rank order() gave: the tie breaker below, without
 * a string compare per tie (many hosts publish the same demand). */
static int by_rank(const void *a, const void *b)
{
    const struct ord *x = a, *y = b;
    return x->rank < y->rank ? -1 : x->rank > y->rank;
}

/* Ascending key, then name: the demand walk. */
static int by_key_up(const void *a, const void *b)
{
    const struct ord *x = a, *y = b;
    if (x->key != y->key) {
        return x->key < y->key ? -1 : 1;
    }
    return by_rank(a, b);
}

/* Descending key, then name: who gets a remaining slot first. */
static int by_key_down(const void *a, const void *b)
{
    const struct ord *x = a, *y = b;
    if (x->key != y->key) {
        return x->key > y->key ? -1 : 1;
    }
    return by_rank(a, b);
}

/* The members in name order, checked: names present and unique. */
static int order(const struct shares_member *m, size_t n, struct ord **out)
{
    if (n == 0 || n > SHARES_MEMBERS_MAX) {
        return ALLOT_EINVALID;
    }
    struct ord *o = calloc(n, sizeof *o);
    if (o == NULL) {
        return ALLOT_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        if (m[i].name == NULL) {
            free(o);
            return ALLOT_EINVALID;
        }
        o[i] = (struct ord){&m[i], i, 0, 0};
    }
    /* A caller that lists its members in name order (a fleet that keeps
     * its view sorted, the simulator) pays one pass, not a sort: strictly
     * ascending also means unique. */
    size_t k = 1;
    while (k < n && strcmp(o[k - 1].m->name, o[k].m->name) < 0) {
        k++;
    }
    if (k < n) {
        qsort(o, n, sizeof *o, by_name);
        for (size_t i = 1; i < n; i++) {
            if (strcmp(o[i - 1].m->name, o[i].m->name) == 0) {
                free(o);
                return ALLOT_EINVALID;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        o[i].rank = i;
    }
    *out = o;
    return 0;
}

/* Max-min fair division of `total` over the demands (o in name order on
 * entry, reordered here): the smallest demands are met in full while they
 * fit an equal part of what is left; the others share the rest equally.
 * What nobody wants is divided equally among all. */
static void water_fill(struct ord *o, size_t n, double total, double *out)
{
    for (size_t i = 0; i < n; i++) {
        o[i].key = o[i].m->demand;
    }
    qsort(o, n, sizeof *o, by_key_up);
    double left = total;
    size_t j = 0;
    for (; j < n; j++) {
        double fair = left / (double)(n - j);
        if (o[j].key > fair) {
            break;
        }
        out[o[j].i] = o[j].key;
        left -= o[j].key;
    }
    if (j < n) {
        double fair = left / (double)(n - j);
        for (; j < n; j++) {
            out[o[j].i] = fair;
        }
        return;
    }
    /* Every demand met: the rest, equally (name order, for the adds). */
    qsort(o, n, sizeof *o, by_rank);
    double extra = left / (double)n;
    for (size_t i = 0; i < n; i++) {
        out[o[i].i] += extra;
    }
}

int shares_rate(enum quota_share policy, double limit,
                const struct shares_member *m, size_t n, double *out)
{
    if (!(limit > 0) || isinf(limit)) {
        return ALLOT_EINVALID;
    }
    for (size_t i = 0; i < n; i++) {
        if (!(m[i].weight > 0) || isinf(m[i].weight) || !(m[i].demand >= 0) ||
            isinf(m[i].demand)) {
            return ALLOT_EINVALID;
        }
    }
    if (policy != QUOTA_SHARE_EQUAL && policy != QUOTA_SHARE_WEIGHTED &&
        policy != QUOTA_SHARE_DEMAND) {
        return ALLOT_EINVALID;
    }
    struct ord *o;
    int rv = order(m, n, &o);
    if (rv != 0) {
        return rv;
    }
    double dn = (double)n;
    double floor_each = SHARES_RATE_FLOOR * limit / dn;
    double rest = limit - floor_each * dn;
    switch (policy) {
    case QUOTA_SHARE_EQUAL:
        for (size_t i = 0; i < n; i++) {
            out[i] = limit / dn;
        }
        break;
    case QUOTA_SHARE_WEIGHTED: {
        double w = 0;
        for (size_t i = 0; i < n; i++) {
            w += o[i].m->weight;
        }
        for (size_t i = 0; i < n; i++) {
            out[i] = floor_each + rest * (m[i].weight / w);
        }
        break;
    }
    case QUOTA_SHARE_DEMAND:
        water_fill(o, n, rest, out);
        for (size_t i = 0; i < n; i++) {
            out[i] += floor_each;
        }
        break;
    }
    free(o);
    return 0;
}

int shares_burst(const double *part, double limit, uint64_t burst, size_t n,
                 uint64_t *out)
{
    if (n == 0 || burst == 0 || !(limit > 0) || isinf(limit)) {
        return ALLOT_EINVALID;
    }
    for (size_t i = 0; i < n; i++) {
        if (!(part[i] >= 0) || isinf(part[i])) {
            return ALLOT_EINVALID;
        }
    }
    for (size_t i = 0; i < n; i++) {
        /* The epsilon keeps an exact quotient (burst 10 over 5 equal
         * parts: 2) from rounding up to 3 on a last-bit error. */
        double b = ceil((double)burst * (part[i] / limit) - 1e-9);
        out[i] = b < 1 ? 1 : b >= 0x1p64 ? UINT64_MAX : (uint64_t)b;
    }
    return 0;
}

int shares_slots(const double *part, uint64_t total,
                 const struct shares_member *m, size_t n, uint64_t *out)
{
    for (size_t i = 0; i < n; i++) {
        if (!(part[i] >= 0) || isinf(part[i])) {
            return ALLOT_EINVALID;
        }
    }
    struct ord *o;
    int rv = order(m, n, &o);
    if (rv != 0) {
        return rv;
    }
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += part[o[i].i];
    }
    if (!(sum > 0)) {
        free(o);
        return ALLOT_EINVALID;
    }
    uint64_t given = 0;
    for (size_t i = 0; i < n; i++) {
        double q = (double)total * (part[o[i].i] / sum);
        double f = floor(q);
        uint64_t base = f >= (double)total ? total : (uint64_t)f;
        out[o[i].i] = base;
        o[i].key = q - f;
        given += base;
    }
    /* Largest remainders first, ties by name. Rounding of doubles can
     * leave `given` a little off either way: the same order settles both. */
    qsort(o, n, sizeof *o, by_key_down);
    for (size_t i = 0; given < total; i = (i + 1) % n) {
        out[o[i].i]++;
        given++;
    }
    for (size_t k = n; given > total; k = k > 1 ? k - 1 : n) {
        if (out[o[k - 1].i] > 0) {
            out[o[k - 1].i]--;
            given--;
        }
    }
    free(o);
    return 0;
}

int shares_host_part(struct shares_host *h, enum quota_share policy,
                     double limit, const struct shares_view *v, uint64_t now_ms,
                     double *out)
{
    size_t n = v->n;
    if (v->self >= n || v->suspect > n || v->known < n) {
        return ALLOT_EINVALID;
    }
    double *parts = malloc(n * sizeof *parts);
    if (parts == NULL) {
        return ALLOT_ENOMEM;
    }
    int rv = shares_rate(policy, limit, v->m, n, parts);
    double part = parts[v->self];
    free(parts);
    if (rv != 0) {
        return rv;
    }
    h->state = 0;
    if (now_ms - h->joined_ms < h->probation_ms) {
        /* A newcomer may not know the fleet yet (its join is under way):
         * a floor over a view of one would be 5% of the whole limit. */
        size_t nf = n > SHARES_PROBATION_VIEW ? n : SHARES_PROBATION_VIEW;
        double floor_part = SHARES_RATE_FLOOR * limit / (double)nf;
        part = part < floor_part ? part : floor_part;
        h->state = SHARES_STATE_PROBATION;
    } else if (h->last_part >= 0 && part > h->last_part &&
               (2 * n <= v->known ||
                (v->suspect > 0 && v->suspect_age_ms >= h->doubt_ms) ||
                (h->change_at != 0 && now_ms - h->change_at < h->settle_ms))) {
        part = h->last_part;
        h->state = SHARES_STATE_HOLDING;
    }
    h->last_part = part;
    *out = part;
    return 0;
}

void shares_host_change(struct shares_host *h, uint64_t now_ms)
{
    h->change_at = now_ms > 0 ? now_ms : 1;
}

/* Members whose probe round the quiet period covers at most. */
#define SHARES_ROUND_CAP 20u

/* ceil(log10(n)) for n >= 2, in integers (the same on every host). */
static uint64_t ceil_log10(size_t n)
{
    uint64_t d = 1;
    for (size_t x = 10; x < n && d < 20; x *= 10) {
        d++;
    }
    return d;
}

void shares_host_timing(struct shares_host *h, size_t n, uint32_t gossip_ms,
                        uint32_t gossip_nodes, uint32_t probe_ms,
                        uint32_t retransmit_mult, uint32_t suspicion_mult)
{
    /* A member sends each message it holds to gossip_nodes members per
     * round until it has sent it retransmit_mult * ceil(log10(n + 1))
     * times; the last members to hear of a newcomer get its ALIVE about
     * that long after the first, so twice it covers the spread with room
     * (measured: 1,000 members all hold it within 0.3 s; probation at
     * 1,000 is 2.4 s). */
    uint64_t limit = (uint64_t)retransmit_mult * ceil_log10(n + 1);
    uint64_t fan = gossip_nodes > 0 ? gossip_nodes : 1;
    h->probation_ms = 2u * ((limit + fan - 1) / fan) * gossip_ms;
    /* The smallest suspicion timeout, and at least one probe round of a
     * small fleet: every member probes every other once per round, so
     * by then this host has itself suspected every member it cannot
     * reach (large fleets cover each other far sooner, and are capped). */
    uint64_t t_min =
        (uint64_t)suspicion_mult * ceil_log10(n > 1 ? n : 2) * probe_ms;
    uint64_t round =
        (uint64_t)(n < SHARES_ROUND_CAP ? n : SHARES_ROUND_CAP) * probe_ms;
    h->settle_ms = t_min > round ? t_min : round;
    /* A false suspicion lasts until its member hears of it and its
     * refutation spreads back: two spreads. Never past t_min, so every
     * suspicion that ends in a death holds growth before the death. */
    uint64_t doubt = 2u * h->probation_ms;
    h->doubt_ms = doubt < t_min ? doubt : t_min;
}

void shares_host_timing_copy(struct shares_host *h,
                             const struct shares_host *src)
{
    h->probation_ms = src->probation_ms;
    h->settle_ms = src->settle_ms;
    h->doubt_ms = src->doubt_ms;
}

uint32_t shares_fnv1a(uint32_t h, const void *p, size_t len)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ c[i]) * 16777619u;
    }
    return h;
}

uint32_t shares_view_version(const struct shares_view *v)
{
    /* A sum of per-member hashes: commutative, so any listing order of
     * the same view gives the same version. */
    uint32_t sum = 0;
    for (size_t i = 0; i < v->n; i++) {
        const char *name = v->m[i].name;
        uint32_t h = shares_fnv1a(SHARES_FNV_SEED, name, strlen(name));
        uint8_t w[8];
        uint64_t mw = (uint64_t)llround(v->m[i].weight * 1000.0);
        for (int k = 0; k < 8; k++) {
            w[k] = (uint8_t)(mw >> (8 * k)); /* the same on every host */
        }
        sum += shares_fnv1a(h, w, sizeof w);
    }
    return sum;
}

uint32_t shares_rule_hash(const char *path)
{
    uint32_t h = shares_fnv1a(SHARES_FNV_SEED, path, strlen(path));
    return h != 0 ? h : 1;
}

size_t shares_blob_encode(const struct shares_blob *b, uint8_t *buf, size_t cap)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    size_t n = b->n <= SHARES_BLOB_RULES ? b->n : SHARES_BLOB_RULES;
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint32(&pk, b->view);
    msgpack_pack_uint32(&pk, b->state);
    msgpack_pack_array(&pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint32(&pk, b->d[i].hash);
        msgpack_pack_float(&pk, (float)b->d[i].demand);
    }
    size_t len = sb.size <= cap ? sb.size : 0;
    if (len > 0) {
        memcpy(buf, sb.data, len);
    }
    msgpack_sbuffer_destroy(&sb);
    return len;
}

static bool u32_of(const msgpack_object *o, uint32_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > UINT32_MAX) {
        return false;
    }
    *out = (uint32_t)o->via.u64;
    return true;
}

static bool pairs_of(const msgpack_object *o, struct shares_blob *out)
{
    if (o->type != MSGPACK_OBJECT_ARRAY ||
        o->via.array.size > SHARES_BLOB_RULES) {
        return false;
    }
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2 ||
            !u32_of(&e->via.array.ptr[0], &out->d[i].hash) ||
            (e->via.array.ptr[1].type != MSGPACK_OBJECT_FLOAT32 &&
             e->via.array.ptr[1].type != MSGPACK_OBJECT_FLOAT64)) {
            return false;
        }
        double d = e->via.array.ptr[1].via.f64;
        if (!(d >= 0) || isinf(d)) {
            return false;
        }
        out->d[i].demand = d;
    }
    out->n = o->via.array.size;
    return true;
}

int shares_blob_decode(const uint8_t *buf, size_t len, struct shares_blob *out)
{
    memset(out, 0, sizeof *out);
    if (buf == NULL || len == 0) {
        return ALLOT_EINVALID;
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    bool ok = msgpack_unpack_next(&u, (const char *)buf, len, &off) ==
                  MSGPACK_UNPACK_SUCCESS &&
              off == len && u.data.type == MSGPACK_OBJECT_ARRAY &&
              u.data.via.array.size == 3 &&
              u32_of(&u.data.via.array.ptr[0], &out->view) &&
              u32_of(&u.data.via.array.ptr[1], &out->state) &&
              pairs_of(&u.data.via.array.ptr[2], out);
    msgpack_unpacked_destroy(&u);
    if (!ok) {
        memset(out, 0, sizeof *out);
        return ALLOT_EINVALID;
    }
    return 0;
}

bool shares_demand_moved(double was, double now)
{
    double big = fmax(fmax(was, now), QUOTA_RATE_MIN);
    return fabs(now - was) > 0.2 * big;
}

double shares_blob_demand(const struct shares_blob *b, uint32_t hash)
{
    for (size_t i = 0; i < b->n; i++) {
        if (b->d[i].hash == hash) {
            return b->d[i].demand;
        }
    }
    return 0;
}
