/* share.c - share.show: each host's part of one rule, from this node's
 * gossip view (allotctl share show PATH; docs/shares.md, "Seeing the
 * parts").
 *
 * Every agent computes its own part from its own view with
 * enforce/shares.h, and publishes in its gossip metadata the version of
 * that view, its state (probation, holding) and its demand. This node runs
 * the same code over its own view of the rule's fleet, so the reply shows
 * what each host should hold, what it published, and whether its view is
 * the one this node computed from (a host whose `view` differs is still
 * catching up, or sees a different fleet: a partition). */
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../enforce/shares.h"
#include "../gossip/gossip.h"
#include "../lib/lib.h"
#include "node.h"

/* Gossip weights are integers: thousandths (enforce/source_gossip.c). */
#define SHARE_WEIGHT_SCALE 1000.0

struct share_host
{
    char name[GOSSIP_NAME_MAX + 1];
    char addr[GOSSIP_ADDR_STRLEN];
    enum gossip_state state;
    struct shares_blob blob;
    bool blob_ok;
};

struct share_walk
{
    const char *fleet;
    struct share_host *h;
    struct shares_member *m;
    size_t n, cap, known, suspect;
    bool full;
};

static void add_host(void *data, const struct gossip_member *gm)
{
    struct share_walk *w = data;
    enum gossip_fleet_place at = gossip_fleet_place(gm, w->fleet);
    w->known += at != GOSSIP_FLEET_OUT;
    if (at != GOSSIP_FLEET_IN) {
        return;
    }
    if (w->n == w->cap) {
        w->full = true;
        return;
    }
    struct share_host *h = &w->h[w->n];
    snprintf(h->name, sizeof h->name, "%s", gm->name);
    gossip_addr_format(&gm->addr, h->addr);
    h->state = gm->state;
    h->blob_ok =
        shares_blob_decode(gm->meta.app, gm->meta.app_len, &h->blob) == 0;
    w->suspect += gm->state == GOSSIP_SUSPECT;
    w->m[w->n] = (struct shares_member){
        h->name,
        gm->meta.weight > 0 ? (double)gm->meta.weight / SHARE_WEIGHT_SCALE
                            : 1.0 / SHARE_WEIGHT_SCALE,
        0};
    w->n++;
}

static void pack_bool(msgpack_packer *pk, const char *key, bool v)
{
    wire_pack_str(pk, key);
    if (v) {
        msgpack_pack_true(pk);
    } else {
        msgpack_pack_false(pk);
    }
}

static void pack_double(msgpack_packer *pk, const char *key, double v)
{
    wire_pack_str(pk, key);
    msgpack_pack_double(pk, v);
}

/* One capacity limit divided into slots by weight, as liballot does; an
 * unset limit (0) is no limit for anyone (UINT64_MAX). */
static int cap_slots(uint64_t total, const double *w,
                     const struct shares_member *m, size_t n, uint64_t *out)
{
    if (total == 0) {
        for (size_t i = 0; i < n; i++) {
            out[i] = UINT64_MAX;
        }
        return 0;
    }
    return shares_slots(w, total, m, n, out);
}

static void reply(struct node_req *r, const struct quota *q,
                  const struct share_walk *w, const double *part,
                  const uint64_t *burst, uint64_t *const slots[3])
{
    bool rate = q->f.kind == QUOTA_KIND_RATE;
    struct shares_view v = {
        .m = w->m, .n = w->n, .suspect = w->suspect, .known = w->known};
    uint32_t version = w->n > 0 ? shares_view_version(&v) : 0;
    uint32_t hash = shares_rule_hash(q->path);
    msgpack_packer pk;
    if (node_reply_begin(r, &pk) == NULL) {
        node_reply_done(r);
        return;
    }
    msgpack_pack_map(&pk, rate ? 12 : 10);
    wire_pack_kv_str(&pk, "path", q->path);
    wire_pack_kv_str(&pk, "kind", quota_kind_name(q->f.kind));
    wire_pack_kv_str(&pk, "fleet", rate ? q->f.fleet : "default");
    wire_pack_kv_u64(&pk, "version", q->version);
    wire_pack_kv_u64(&pk, "view", version);
    wire_pack_kv_u64(&pk, "members", w->n);
    wire_pack_kv_u64(&pk, "suspect", w->suspect);
    wire_pack_kv_u64(&pk, "known", w->known);
    if (rate) {
        wire_pack_kv_str(&pk, "share",
                         quota_field_table[QF_SHARE].enum_names[q->f.share]);
        pack_double(&pk, "rate", q->f.rate);
        wire_pack_kv_u64(&pk, "burst", q->f.burst);
    } else {
        wire_pack_kv_str(&pk, "share", "slots by weight");
    }
    wire_pack_str(&pk, "hosts");
    msgpack_pack_array(&pk, (uint32_t)w->n);
    for (size_t i = 0; i < w->n; i++) {
        const struct share_host *h = &w->h[i];
        msgpack_pack_map(&pk, 11);
        wire_pack_kv_str(&pk, "name", h->name);
        wire_pack_kv_str(&pk, "addr", h->addr);
        wire_pack_kv_str(&pk, "state", gossip_state_name(h->state));
        pack_double(&pk, "weight", w->m[i].weight);
        if (rate) {
            pack_double(&pk, "demand", shares_blob_demand(&h->blob, hash));
            pack_double(&pk, "part", part[i]);
            wire_pack_kv_u64(&pk, "part_burst", burst[i]);
        } else {
            wire_pack_kv_u64(&pk, "max_apps", slots[0][i]);
            wire_pack_kv_u64(&pk, "max_memory_mb", slots[1][i]);
            wire_pack_kv_u64(&pk, "max_vcores", slots[2][i]);
        }
        /* What the host published: the view it computed from (0: none
         * yet, or an agent too old to say) and its state. */
        wire_pack_kv_u64(&pk, "host_view", h->blob.view);
        pack_bool(&pk, "same_view", h->blob_ok && h->blob.view == version);
        pack_bool(&pk, "probation",
                  (h->blob.state & SHARES_STATE_PROBATION) != 0);
        pack_bool(&pk, "holding", (h->blob.state & SHARES_STATE_HOLDING) != 0);
    }
    node_reply_done(r);
}

void share_handle(struct node_req *r)
{
    struct node *n = r->node;
    if (n->gossip == NULL || n->stopping) {
        node_reply_error(r, ALLOT_ENOT_FOUND,
                         "share show needs gossip on this node (start allotd "
                         "with --gossip HOST:PORT --gossip-keyring FILE)");
        return;
    }
    char msg[ALLOT_ERRMSG_SIZE];
    const struct quota *q = fsm_get(n->fsm, r->path, r->path_len);
    if (q == NULL) {
        allot_errf(msg, ALLOT_ENOT_FOUND, "no quota at %s", r->path);
        node_reply_error(r, ALLOT_ENOT_FOUND, msg);
        return;
    }
    size_t cap = gossip_member_count(n->gossip, GOSSIP_ALIVE) +
                 gossip_member_count(n->gossip, GOSSIP_SUSPECT);
    struct share_walk w = {.fleet = q->f.kind == QUOTA_KIND_RATE ? q->f.fleet
                                                                 : "default",
                           .cap = cap};
    size_t one = cap > 0 ? cap : 1;
    w.h = calloc(one, sizeof *w.h);
    w.m = calloc(one, sizeof *w.m);
    double *part = calloc(one, sizeof *part);
    double *wt = calloc(one, sizeof *wt);
    uint64_t *burst = calloc(one, sizeof *burst);
    uint64_t *slots[3] = {calloc(one, sizeof(uint64_t)),
                          calloc(one, sizeof(uint64_t)),
                          calloc(one, sizeof(uint64_t))};
    int rv = ALLOT_ENOMEM;
    if (w.h != NULL && w.m != NULL && part != NULL && wt != NULL &&
        burst != NULL && slots[0] != NULL && slots[1] != NULL &&
        slots[2] != NULL) {
        gossip_member_foreach(n->gossip, add_host, &w);
        rv = 0;
    }
    if (rv == 0 && w.n > 0 && q->f.kind == QUOTA_KIND_RATE) {
        uint32_t hash = shares_rule_hash(q->path);
        for (size_t i = 0; i < w.n; i++) {
            w.m[i].demand = shares_blob_demand(&w.h[i].blob, hash);
        }
        rv = shares_rate((enum quota_share)q->f.share, q->f.rate, w.m, w.n,
                         part);
        if (rv == 0) {
            rv = shares_burst(part, q->f.rate, q->f.burst > 0 ? q->f.burst : 1,
                              w.n, burst);
        }
    } else if (rv == 0 && w.n > 0) {
        for (size_t i = 0; i < w.n; i++) {
            wt[i] = w.m[i].weight;
        }
        rv = cap_slots(q->f.max_apps, wt, w.m, w.n, slots[0]);
        if (rv == 0) {
            rv = cap_slots(q->f.max_memory_mb, wt, w.m, w.n, slots[1]);
        }
        if (rv == 0) {
            rv = cap_slots(q->f.max_vcores, wt, w.m, w.n, slots[2]);
        }
    }
    if (rv == 0 && w.full) {
        rv = ALLOT_EUNAVAILABLE; /* the view grew under the walk */
    }
    if (rv != 0) {
        allot_errf(msg, rv, "share show %s: cannot compute the parts (%s)",
                   r->path, allot_error_name(rv));
        node_reply_error(r, rv, msg);
    } else {
        reply(r, q, &w, part, burst, slots);
    }
    free(w.h);
    free(w.m);
    free(part);
    free(wt);
    free(burst);
    for (int i = 0; i < 3; i++) {
        free(slots[i]);
    }
}
