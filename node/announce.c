/* announce.c - allotd as a gossip member (--gossip).
 *
 * Every server joins the fleet's gossip with role "server" and its client
 * address in its metadata (so hosts know where to pull rules from), and
 * announces each new catalog version as the keyed broadcast "catalog":
 * hosts keep only the newest, so a burst of writes costs the fleet one
 * value per key, not one per write. Every server announces what it has
 * applied; the same version from several servers carries the same payload
 * (the digest is a function of the replicated state), and a member that
 * already knows a version refuses an older or equal one (ALLOT_ECONFLICT),
 * which is not an error here.
 *
 * The announcement is {"version": V, "digest": 32 hex digits} in msgpack;
 * docs/gossip.md defines the digest so a host can check what it pulled.
 *
 * The keyring lives in --gossip-keyring: a rotation through gossip.keys
 * (any member may start one; it reaches every member) rewrites the file
 * here, so a restarted server still speaks the fleet's current key. */
#include <inttypes.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../gossip/gossip.h"
#include "../lib/lib.h"
#include "node.h"

#define ANNOUNCE_KEY "catalog"
/* How long a fleet-wide key command waits for every member's answer. */
#define ANNOUNCE_KEY_CMD_TIMEOUT_MS 5000

/* --- Announcing --------------------------------------------------------- */

static void announce_now(struct node *n)
{
    uint64_t v = fsm_catalog_version(n->fsm);
    char digest[33];
    fsm_catalog_digest(n->fsm, digest);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    wire_pack_kv_u64(&pk, "version", v);
    wire_pack_kv_str(&pk, "digest", digest);
    int rv =
        gossip_broadcast_keyed(n->gossip, ANNOUNCE_KEY, v, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    if (rv != 0 && rv != ALLOT_ECONFLICT) {
        LOGW(NODE_COMP, "catalog announcement failed",
             "version=%" PRIu64 " err=%s", v, allot_error_name(rv));
        return; /* retried on the next change or tick */
    }
    n->announced_version = v;
    n->announced_ns = clock_mono_ns();
}

static void announce_timer_cb(uv_timer_t *t)
{
    struct node *n = t->data;
    if (n->gossip != NULL && !n->stopping &&
        fsm_catalog_version(n->fsm) > n->announced_version) {
        announce_now(n);
    }
}

void announce_tick(struct node *n)
{
    if (n->gossip == NULL || n->stopping ||
        fsm_catalog_version(n->fsm) <= n->announced_version) {
        return;
    }
    uint64_t since_ms = (clock_mono_ns() - n->announced_ns) / 1000000u;
    if (since_ms >= ANNOUNCE_MIN_MS) {
        announce_now(n);
    } else if (!uv_is_active((uv_handle_t *)&n->announce_timer)) {
        /* A burst: its last version goes out when the pause is over, even
         * if the loop has nothing else to do by then. */
        uv_timer_start(&n->announce_timer, announce_timer_cb,
                       ANNOUNCE_MIN_MS - since_ms, 0);
    }
}

/* --- Lifecycle ---------------------------------------------------------- */

static void keyring_changed(void *data)
{
    struct node *n = data;
    struct gossip_keyring kr;
    char msg[ALLOT_ERRMSG_SIZE];
    gossip_keyring_get(n->gossip, &kr);
    int rv = gossip_keyring_save(&kr, n->cfg.gossip_keyring, msg);
    gossip_keyring_wipe(&kr);
    if (rv != 0) {
        /* Serving on is right (the live ring is correct); the operator
         * must fix the file before this server restarts. */
        LOGE(NODE_COMP, "cannot save the gossip keyring", "file=%s err=\"%s\"",
             n->cfg.gossip_keyring, msg);
    } else {
        LOGI(NODE_COMP, "gossip keyring saved", "file=%s keys=%u",
             n->cfg.gossip_keyring, kr.n);
    }
}

static void member_cb(void *data, enum gossip_event ev,
                      const struct gossip_member *m)
{
    (void)data;
    char addr[GOSSIP_ADDR_STRLEN];
    if (m->meta.role != GOSSIP_ROLE_SERVER && ev != GOSSIP_EV_DEAD) {
        return; /* agents come and go by the thousand: only deaths log */
    }
    LOGI(NODE_COMP, "gossip member", "event=%s name=%s addr=%s role=%s",
         gossip_event_name(ev), m->name, gossip_addr_format(&m->addr, addr),
         gossip_role_name(m->meta.role));
}

/* Parse --gossip-seeds into seeds (at most cap). */
static int parse_seeds(const char *list, struct gossip_addr *seeds, size_t cap,
                       size_t *n, char *msg)
{
    char sub[ALLOT_ERRMSG_SIZE];
    int rv = gossip_addr_parse_list(list, seeds, cap, n, sub);
    if (rv != 0) {
        allot_errf(msg, rv, "--gossip-seeds: %s", sub);
    }
    return rv;
}

int announce_start(struct node *n)
{
    const struct node_config *cfg = &n->cfg;
    if (cfg->gossip_addr == NULL) {
        return 0;
    }
    char msg[ALLOT_ERRMSG_SIZE];
    struct gossip_config gc;
    gossip_config_init(&gc);
    struct gossip_addr seeds[16];
    size_t n_seeds = 0;
    char name[32];
    snprintf(name, sizeof name, "server-%" PRIu64, cfg->id);
    /* The application blob: where hosts pull rules from. */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, cfg->http_addr != NULL ? 3 : 2);
    wire_pack_kv_u64(&pk, "id", cfg->id);
    wire_pack_kv_str(&pk, "client", cfg->client_addr);
    if (cfg->http_addr != NULL) {
        wire_pack_kv_str(&pk, "http", cfg->http_addr);
    }
    int rv = gossip_addr_parse(&gc.addr, cfg->gossip_addr, msg);
    if (rv == 0) {
        rv = gossip_keyring_load(&gc.keyring, cfg->gossip_keyring, msg);
    }
    if (rv == 0 && cfg->gossip_seeds != NULL) {
        rv = parse_seeds(cfg->gossip_seeds, seeds,
                         sizeof seeds / sizeof seeds[0], &n_seeds, msg);
    }
    if (rv == 0) {
        rv = gossip_uv_new(&n->guv, n->loop, &gc.addr, msg);
    }
    if (rv == 0) {
        gc.name = name;
        gc.addr = gossip_uv_addr(n->guv); /* the real port when 0 was asked */
        gc.meta.role = GOSSIP_ROLE_SERVER;
        gc.meta.weight = 0; /* servers take no share of fleet limits */
        gc.meta.fleet = "";
        gc.meta.app = (const uint8_t *)sb.data;
        gc.meta.app_len = sb.size;
        gc.cb.data = n;
        gc.cb.member = member_cb;
        gc.cb.keyring_changed = keyring_changed;
        if (cfg->gossip_probe_interval_ms != 0) {
            gc.probe_interval_ms = cfg->gossip_probe_interval_ms;
            gc.probe_timeout_ms = cfg->gossip_probe_interval_ms / 2;
        }
        gc.leave_timeout_ms = 1000; /* bounds how long a stop may take */
        rv = gossip_new(&n->gossip, gossip_uv_io(n->guv), &gc, msg);
    }
    gossip_keyring_wipe(&gc.keyring);
    msgpack_sbuffer_destroy(&sb);
    if (rv == 0 && n_seeds > 0) {
        rv = gossip_join(n->gossip, seeds, n_seeds);
        if (rv != 0) {
            allot_errf(msg, rv, "cannot join the gossip seeds");
        }
    }
    if (rv != 0) {
        LOGE(NODE_COMP, "gossip start failed", "err=%s msg=\"%s\"",
             allot_error_name(rv), msg);
        return -1;
    }
    uv_timer_init(n->loop, &n->announce_timer);
    n->announce_timer.data = n;
    n->announce_timer_live = true;
    char addr[GOSSIP_ADDR_STRLEN];
    struct gossip_addr self = gossip_uv_addr(n->guv);
    LOGI(NODE_COMP, "gossip started", "name=%s addr=%s seeds=%zu", name,
         gossip_addr_format(&self, addr), n_seeds);
    return 0;
}

static void guv_closed_cb(void *data)
{
    (void)data;
}

static void free_gossip(struct node *n)
{
    gossip_free(n->gossip);
    n->gossip = NULL;
    gossip_uv_close(n->guv, guv_closed_cb, NULL);
    n->guv = NULL;
}

static void leave_cb(struct gossip_leave *req, int status)
{
    struct node *n = req->data;
    LOGI(NODE_COMP, "left the gossip", "status=%s",
         status == 0 ? "ok" : allot_error_name(status));
    free(req);
    free_gossip(n);
}

void announce_stop(struct node *n)
{
    if (n->announce_timer_live) {
        uv_close((uv_handle_t *)&n->announce_timer, NULL);
        n->announce_timer_live = false;
    }
    if (n->gossip == NULL) {
        if (n->guv != NULL) {
            gossip_uv_close(n->guv, guv_closed_cb, NULL);
            n->guv = NULL;
        }
        return;
    }
    /* Leave, so the others mark this server left rather than suspect it
     * and wait out a suspicion timeout. */
    struct gossip_leave *req = calloc(1, sizeof *req);
    if (req != NULL) {
        req->data = n;
        if (gossip_leave(n->gossip, req, leave_cb) == 0) {
            return;
        }
        free(req);
    }
    free_gossip(n);
}

/* --- gossip.members and gossip.keys ------------------------------------- */

struct pack_members
{
    msgpack_packer *pk;
    uint32_t n;
};

static void pack_member(void *data, const struct gossip_member *m)
{
    struct pack_members *pm = data;
    char addr[GOSSIP_ADDR_STRLEN];
    msgpack_packer *pk = pm->pk;
    msgpack_pack_map(pk, 8);
    wire_pack_kv_str(pk, "name", m->name);
    wire_pack_kv_str(pk, "addr", gossip_addr_format(&m->addr, addr));
    wire_pack_kv_str(pk, "role", gossip_role_name(m->meta.role));
    wire_pack_kv_str(pk, "fleet", m->meta.fleet);
    wire_pack_kv_u64(pk, "weight", m->meta.weight);
    wire_pack_kv_str(pk, "state", gossip_state_name(m->state));
    wire_pack_kv_u64(pk, "incarnation", m->incarnation);
    wire_pack_str(pk, "self");
    if (m->self) {
        msgpack_pack_true(pk);
    } else {
        msgpack_pack_false(pk);
    }
    pm->n++;
}

static void handle_members(struct node_req *r)
{
    struct node *n = r->node;
    msgpack_packer pk;
    if (node_reply_begin(r, &pk) != NULL) {
        /* Walk once into a side buffer: the array header needs the count,
         * and the walk is what defines it. */
        msgpack_sbuffer sb;
        msgpack_packer side;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&side, &sb, msgpack_sbuffer_write);
        struct pack_members pm = {.pk = &side};
        gossip_member_foreach(n->gossip, pack_member, &pm);
        msgpack_pack_array(&pk, pm.n);
        if (sb.size > 0) {
            pk.callback(pk.data, sb.data, sb.size);
        }
        msgpack_sbuffer_destroy(&sb);
    }
    node_reply_done(r);
}

static void pack_key_b64(msgpack_packer *pk, const uint8_t key[32])
{
    char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, key, 32, sodium_base64_VARIANT_ORIGINAL);
    wire_pack_str(pk, b64);
}

static void key_cmd_cb(struct gossip_key_cmd *cmd, int status)
{
    struct node_req *r = cmd->data;
    msgpack_packer pk;
    if (status != 0 && cmd->acks == 0) {
        char msg[ALLOT_ERRMSG_SIZE];
        allot_errf(msg, status, "gossip keys %s: %s%s%s", r->gossip_action,
                   cmd->error_member[0] != '\0' ? cmd->error_member : "",
                   cmd->error_member[0] != '\0' ? ": " : "",
                   cmd->error[0] != '\0' ? cmd->error
                                         : allot_error_name(status));
        node_reply_error(r, status, msg);
        return;
    }
    /* Partial results are results: the operator needs to see how many
     * members have the key before the next step of a rotation. */
    if (node_reply_begin(r, &pk) != NULL) {
        bool list = strcmp(r->gossip_action, "list") == 0;
        msgpack_pack_map(&pk, list ? 7 : 6);
        wire_pack_kv_str(&pk, "status",
                         status == 0 ? "ok" : allot_error_name(status));
        wire_pack_kv_u64(&pk, "asked", cmd->asked);
        wire_pack_kv_u64(&pk, "acks", cmd->acks);
        wire_pack_kv_u64(&pk, "errors", cmd->errors);
        wire_pack_str(&pk, "error");
        if (cmd->errors > 0) {
            char e[GOSSIP_NAME_MAX + sizeof cmd->error + 4];
            snprintf(e, sizeof e, "%s: %s", cmd->error_member, cmd->error);
            wire_pack_str(&pk, e);
        } else {
            msgpack_pack_nil(&pk);
        }
        wire_pack_str(&pk, "silent");
        if (cmd->silent_member[0] != '\0') {
            wire_pack_str(&pk, cmd->silent_member);
        } else {
            msgpack_pack_nil(&pk);
        }
        if (list) {
            wire_pack_str(&pk, "keys");
            msgpack_pack_array(&pk, cmd->n_keys);
            for (unsigned i = 0; i < cmd->n_keys; i++) {
                msgpack_pack_map(&pk, 3);
                wire_pack_str(&pk, "key");
                pack_key_b64(&pk, cmd->keys[i].key);
                wire_pack_kv_u64(&pk, "members", cmd->keys[i].members);
                wire_pack_kv_u64(&pk, "primary", cmd->keys[i].primary);
            }
        }
    }
    node_reply_done(r);
}

static void handle_keys(struct node_req *r)
{
    struct node *n = r->node;
    char msg[ALLOT_ERRMSG_SIZE];
    enum gossip_key_op op = GOSSIP_KEY_LIST;
    if (strcmp(r->gossip_action, "install") == 0) {
        op = GOSSIP_KEY_INSTALL;
    } else if (strcmp(r->gossip_action, "use") == 0) {
        op = GOSSIP_KEY_USE;
    } else if (strcmp(r->gossip_action, "remove") == 0) {
        op = GOSSIP_KEY_REMOVE;
    }
    unsigned char pk[AUTH_PUBKEY_LEN];
    bool admin = false;
    if (r->principal[0] != '\0' &&
        (!fsm_principal(n->fsm, r->principal, pk, &admin) || !admin)) {
        /* Listing shows the keys themselves: admins only too. */
        allot_errf(msg, ALLOT_EPERMISSION_DENIED,
                   "principal %s may not read or change the gossip keyring: "
                   "admins only",
                   r->principal);
        node_reply_error(r, ALLOT_EPERMISSION_DENIED, msg);
        return;
    }
    r->key_cmd = calloc(1, sizeof *r->key_cmd);
    if (r->key_cmd == NULL) {
        node_reply_error(r, ALLOT_ENOMEM, "out of memory");
        return;
    }
    r->key_cmd->data = r;
    int rv = gossip_key_cmd(n->gossip, r->key_cmd, op,
                            op == GOSSIP_KEY_LIST ? NULL : r->gossip_key,
                            ANNOUNCE_KEY_CMD_TIMEOUT_MS, key_cmd_cb);
    if (rv != 0) {
        allot_errf(msg, rv, "gossip keys %s refused by this member: %s",
                   r->gossip_action,
                   r->key_cmd->error[0] != '\0' ? r->key_cmd->error
                                                : allot_error_name(rv));
        node_reply_error(r, rv, msg);
    }
}

void announce_handle(struct node_req *r)
{
    if (r->node->gossip == NULL || r->node->stopping) {
        node_reply_error(r, ALLOT_ENOT_FOUND,
                         "gossip is off on this node (start allotd with "
                         "--gossip HOST:PORT --gossip-keyring FILE)");
        return;
    }
    if (r->op == WIRE_OP_GOSSIP_MEMBERS) {
        handle_members(r);
    } else {
        handle_keys(r);
    }
}
