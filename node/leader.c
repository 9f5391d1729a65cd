/* leader.c - the work only the leader does.
 *
 * Readiness. canonical/raft 0.15.0 may count replicas to commit an entry of
 * an earlier term (Raft §5.4.2, figure 8; fixed upstream in 0.17.1). An entry
 * of the leader's own term, once committed, commits everything before it
 * legitimately. So on winning a term the leader first proposes a LEADER
 * command (which also records its client address for forwarding followers)
 * and serves nothing, neither reads nor writes nor their queues, until that
 * entry has been applied here. docs/raft-guard.md has the full argument.
 *
 * Writes. Requests queue during a loop turn; leader_tick() (from uv_prepare,
 * once per turn) packs up to FSM_BATCH_MAX of them into ONE log entry and one
 * raft_apply. Apply fires our callback with one result per command.
 *
 * Reads. Linearizable: reads queued before a barrier was issued are served
 * when that barrier has been applied (proof that we were still leader with
 * a quorum after they arrived); reads arriving later wait for the next one.
 *
 * Failure modes: leadership lost with requests queued -> `unavailable` (not
 * proposed, so a retry is safe); lost after proposing -> `unavailable` too:
 * the write may still commit, and the client's retry carries the same
 * (client, seq) so the state machine applies it once. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/lib.h"
#include "node.h"

static void fail_list(struct node_req_list *list, int code, const char *msg)
{
    struct node_req *r;
    while ((r = TAILQ_FIRST(list)) != NULL) {
        TAILQ_REMOVE(list, r, queue_link);
        node_reply_error(r, code, msg);
    }
}

void leader_fail_all(struct node *n, int code, const char *message)
{
    fail_list(&n->writes, code, message);
    fail_list(&n->reads, code, message);
    n->n_writes = 0;
}

static int map_raft_error(int status, const char **msg)
{
    switch (status) {
    case RAFT_NOTLEADER:
    case RAFT_LEADERSHIPLOST:
        *msg = "leadership changed before the request committed; retry (a "
               "write retried with the same client id and seq applies once)";
        return ALLOT_EUNAVAILABLE;
    case RAFT_SHUTDOWN:
        *msg = "node is shutting down";
        return ALLOT_ESHUTDOWN;
    case RAFT_NOMEM:
        *msg = "out of memory";
        return ALLOT_ENOMEM;
    case RAFT_IOERR:
    case RAFT_NOSPACE:
        *msg = "storage error on the leader";
        return ALLOT_EIO;
    default:
        *msg = raft_strerror(status);
        return ALLOT_EINTERNAL;
    }
}

void leader_pack_quota(msgpack_packer *pk, const char *path,
                       const struct fsm_result *res)
{
    struct quota q = {
        .path = (char *)path,
        .version = res->version,
        .created_ms = res->created_ms,
        .updated_ms = res->updated_ms,
        .f = res->fields,
        .owners = res->owners,
        .n_owners = res->n_owners,
        .labels = res->labels,
        .n_labels = res->n_labels,
    };
    quota_pack(pk, &q);
}

/* --- Writes -----------------------------------------------------------------
 */

static void reply_write(struct node_req *r, const struct fsm_result *res)
{
    if (res->code != 0) {
        node_reply_error(r, res->code, res->message);
        return;
    }
    msgpack_packer pk;
    if (node_reply_begin(r, &pk) != NULL) {
        if (r->op == WIRE_OP_QUOTA_SET) {
            leader_pack_quota(&pk, r->path, res);
        } else if (r->op == WIRE_OP_QUOTA_RM) {
            msgpack_pack_map(&pk, 3);
            wire_pack_kv_str(&pk, "path", r->path);
            wire_pack_kv_u64(&pk, "version", res->version);
            wire_pack_kv_u64(&pk, "removed", res->removed);
        } else if (r->op == WIRE_OP_TOKEN_CREATE) {
            msgpack_pack_map(&pk, 2);
            wire_pack_kv_u64(&pk, "version", res->version);
            wire_pack_kv_u64(&pk, "expires_ms", res->created_ms);
        } else {
            msgpack_pack_map(&pk, 1);
            wire_pack_kv_u64(&pk, "version", res->version);
        }
    }
    node_reply_done(r);
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    struct apply_batch *b = req->data;
    struct node *n = b->node;
    const struct fsm_batch_result *res = result;
    const char *msg = NULL;
    int code = status != 0 ? map_raft_error(status, &msg) : 0;

    if (b->n > 0 && b->reqs[0] != NULL) {
        n->applies_inflight--;
    }
    for (unsigned i = 0; i < b->n; i++) {
        struct node_req *r = b->reqs[i];
        if (r == NULL) {
            /* Our own LEADER command: applied means this term is ready. */
            n->announcing = false;
            if (status == 0 && raft_state(&n->raft) == RAFT_LEADER) {
                n->ready_term = n->raft.current_term;
                LOGI(NODE_COMP, "leader ready",
                     "id=%" PRIu64 " term=%llu applied=%llu", n->cfg.id,
                     n->raft.current_term, raft_last_applied(&n->raft));
            }
            continue;
        }
        if (code != 0) {
            node_reply_error(r, code, msg);
        } else if (res == NULL || i >= res->n) {
            node_reply_error(r, ALLOT_EINTERNAL, "no result for command");
        } else {
            reply_write(r, &res->results[i]);
        }
    }
    free(b);
}

/* Propose up to FSM_BATCH_MAX queued writes (or the LEADER command when
 * announce is set) as one entry. */
static void propose(struct node *n, bool announce)
{
    unsigned count = announce ? 1 : n->n_writes;
    if (count > FSM_BATCH_MAX) {
        count = FSM_BATCH_MAX;
    }
    struct apply_batch *b = malloc(sizeof *b + count * sizeof b->reqs[0]);
    struct fsm_cmd *cmds = malloc(count * sizeof *cmds);
    if (b == NULL || cmds == NULL) {
        free(b);
        free(cmds);
        return; /* retried next turn */
    }
    b->node = n;
    b->n = count;
    b->req.data = b;
    if (announce) {
        memset(cmds, 0, sizeof *cmds);
        cmds[0].type = FSM_CMD_LEADER;
        cmds[0].node_id = n->cfg.id;
        cmds[0].node_addr = n->cfg.client_addr;
        cmds[0].admins = n->cfg.admins;
        cmds[0].n_admins = n->cfg.n_admins;
        b->reqs[0] = NULL;
    } else {
        struct node_req *r = TAILQ_FIRST(&n->writes);
        for (unsigned i = 0; i < count; i++, r = TAILQ_NEXT(r, queue_link)) {
            cmds[i] = r->cmd;
            b->reqs[i] = r;
        }
    }
    struct raft_buffer buf;
    int rv = fsm_batch_encode(cmds, count, clock_wall_ms(), &buf);
    free(cmds);
    if (rv == 0) {
        rv = raft_apply(&n->raft, &b->req, &buf, 1, apply_cb);
        if (rv != 0) {
            raft_free(buf.base);
        }
    }
    if (announce) {
        if (rv != 0) {
            free(b);
        } else {
            n->announcing = true;
        }
        return;
    }
    /* The requests leave the queue either way: into raft, or answered. */
    const char *msg = "cannot encode the batch";
    int code = rv != 0 ? (rv < 0 ? rv : map_raft_error(rv, &msg)) : 0;
    for (unsigned i = 0; i < count; i++) {
        struct node_req *r = b->reqs[i];
        TAILQ_REMOVE(&n->writes, r, queue_link);
        n->n_writes--;
        r->state = REQ_IN_RAFT;
        if (rv != 0) {
            node_reply_error(r, code, msg);
        }
    }
    if (rv != 0) {
        free(b);
    } else {
        n->applies_inflight++;
    }
}

/* --- Reads ------------------------------------------------------------------
 */

struct ls_ctx
{
    msgpack_packer *pk;
    unsigned n;
    const char *last;
};

static void ls_count_cb(void *arg, const struct quota *q)
{
    struct ls_ctx *ctx = arg;
    ctx->n++;
    ctx->last = q->path;
}

static void ls_pack_cb(void *arg, const struct quota *q)
{
    struct ls_ctx *ctx = arg;
    quota_pack(ctx->pk, q);
}

static void pack_opt(msgpack_packer *pk, const char *key, bool has, uint64_t v)
{
    wire_pack_str(pk, key);
    if (has) {
        msgpack_pack_uint64(pk, v);
    } else {
        msgpack_pack_nil(pk);
    }
}

static void serve_capacity(struct node *n, struct node_req *r)
{
    msgpack_packer pk;
    if (node_reply_begin(r, &pk) != NULL) {
        struct fsm_capacity cap = fsm_capacity(n->fsm);
        uint64_t mem, vc;
        fsm_top_guaranteed(n->fsm, &mem, &vc);
        msgpack_pack_map(&pk, 3);
        pack_opt(&pk, "memory_mb", cap.has_memory_mb, cap.memory_mb);
        pack_opt(&pk, "vcores", cap.has_vcores, cap.vcores);
        wire_pack_str(&pk, "guaranteed");
        msgpack_pack_map(&pk, 2);
        wire_pack_kv_u64(&pk, "memory_mb", mem);
        wire_pack_kv_u64(&pk, "vcores", vc);
    }
    node_reply_done(r);
}

/* usage.report and usage.ls: kept on the leader, not replicated
 * (usage.h says why that is enough for now). */
static void serve_usage(struct node *n, struct node_req *r)
{
    msgpack_packer pk;
    char msg[ALLOT_ERRMSG_SIZE];
    if (n->usage == NULL && usage_store_new(&n->usage) != 0) {
        node_reply_error(r, ALLOT_ENOMEM, "out of memory");
        return;
    }
    if (r->op == WIRE_OP_USAGE_REPORT) {
        uint32_t rules = r->usage->n_rules;
        int rv = usage_store_put(n->usage, r->usage, clock_wall_ms());
        if (rv != 0) {
            allot_errf(msg, rv,
                       rv == ALLOT_ETOO_BIG
                           ? "window %llu of %s would hold more than %u rules"
                           : "cannot keep the report of window %llu of %s",
                       (unsigned long long)r->usage->window_start_ms,
                       r->usage->host, USAGE_RULES_MAX);
            node_reply_error(r, rv, msg);
            return;
        }
        if (node_reply_begin(r, &pk) != NULL) {
            msgpack_pack_map(&pk, 1);
            wire_pack_kv_u64(&pk, "rules", rules);
        }
        node_reply_done(r);
        return;
    }
    if (node_reply_begin(r, &pk) != NULL) {
        usage_store_pack(n->usage, r->path, r->path_len,
                         r->usage_host[0] != '\0' ? r->usage_host : NULL, &pk);
    }
    node_reply_done(r);
}

static void serve_read(struct node *n, struct node_req *r)
{
    msgpack_packer pk;
    if (r->op == WIRE_OP_CAPACITY_GET) {
        serve_capacity(n, r);
        return;
    }
    if (r->op == WIRE_OP_USAGE_REPORT || r->op == WIRE_OP_USAGE_LS) {
        serve_usage(n, r);
        return;
    }
    if (r->op == WIRE_OP_VALIDATOR_LS) {
        if (node_reply_begin(r, &pk) != NULL) {
            fsm_pack_validators(n->fsm, &pk);
        }
        node_reply_done(r);
        return;
    }
    if (r->op == WIRE_OP_PRINCIPAL_LS || r->op == WIRE_OP_GROUP_LS ||
        r->op == WIRE_OP_TOKEN_LS) {
        if (node_reply_begin(r, &pk) != NULL) {
            if (r->op == WIRE_OP_PRINCIPAL_LS) {
                fsm_pack_principals(n->fsm, &pk);
            } else if (r->op == WIRE_OP_GROUP_LS) {
                fsm_pack_groups(n->fsm, &pk);
            } else {
                fsm_pack_tokens(n->fsm, &pk);
            }
        }
        node_reply_done(r);
        return;
    }
    if (r->op == WIRE_OP_AUDIT_LS) {
        struct fsm_audit_query q = {
            .prefix = r->path,
            .prefix_len = r->path_len,
            .since_ms = r->since_ms,
            .principal = r->has_principal_filter ? r->principal_filter : NULL,
            .after_version = r->after_version,
            .limit = r->limit,
        };
        if (node_reply_begin(r, &pk) != NULL) {
            fsm_audit_pack(n->fsm, &q, &pk);
        }
        node_reply_done(r);
        return;
    }
    if (r->op == WIRE_OP_QUOTA_GET) {
        const struct quota *q = fsm_get(n->fsm, r->path, r->path_len);
        if (q == NULL) {
            char msg[ALLOT_ERRMSG_SIZE];
            allot_errf(msg, ALLOT_ENOT_FOUND, "no quota at %s", r->path);
            node_reply_error(r, ALLOT_ENOT_FOUND, msg);
            return;
        }
        if (node_reply_begin(r, &pk) != NULL) {
            quota_pack(&pk, q);
        }
        node_reply_done(r);
        return;
    }
    /* quota.ls: count first (the array header needs its length), then pack
     * the same page. Both walks see the same state: nothing applies between
     * them on this single-threaded loop. */
    struct ls_ctx ctx = {.pk = &pk};
    bool more;
    const char *after = r->has_after ? r->after : NULL;
    fsm_ls(n->fsm, r->path, r->path_len, after, r->after_len, r->limit,
           ls_count_cb, &ctx, &more);
    if (node_reply_begin(r, &pk) != NULL) {
        msgpack_pack_map(&pk, 4);
        wire_pack_kv_u64(&pk, "catalog_version", fsm_catalog_version(n->fsm));
        wire_pack_str(&pk, "more");
        if (more) {
            msgpack_pack_true(&pk);
        } else {
            msgpack_pack_false(&pk);
        }
        wire_pack_str(&pk, "next");
        if (more && ctx.last != NULL) {
            wire_pack_str(&pk, ctx.last);
        } else {
            msgpack_pack_nil(&pk);
        }
        wire_pack_str(&pk, "quotas");
        msgpack_pack_array(&pk, ctx.n);
        bool more2;
        fsm_ls(n->fsm, r->path, r->path_len, after, r->after_len, r->limit,
               ls_pack_cb, &ctx, &more2);
    }
    node_reply_done(r);
}

static void barrier_cb(struct raft_barrier *req, int status)
{
    struct read_barrier *b = req->data;
    struct node *n = b->node;
    if (status != 0) {
        const char *msg;
        int code = map_raft_error(status, &msg);
        fail_list(&b->reads, code, msg);
    } else {
        struct node_req *r;
        while ((r = TAILQ_FIRST(&b->reads)) != NULL) {
            TAILQ_REMOVE(&b->reads, r, queue_link);
            serve_read(n, r);
        }
    }
    free(b);
}

static void issue_barrier(struct node *n)
{
    struct read_barrier *b = malloc(sizeof *b);
    if (b == NULL) {
        return; /* retried next turn */
    }
    b->node = n;
    b->term = n->raft.current_term;
    b->req.data = b;
    TAILQ_INIT(&b->reads);
    int rv = raft_barrier(&n->raft, &b->req, barrier_cb);
    if (rv != 0) {
        free(b);
        const char *msg;
        int code = map_raft_error(rv, &msg);
        fail_list(&n->reads, code, msg);
        return;
    }
    struct node_req *r;
    while ((r = TAILQ_FIRST(&n->reads)) != NULL) {
        TAILQ_REMOVE(&n->reads, r, queue_link);
        r->state = REQ_IN_RAFT;
        TAILQ_INSERT_TAIL(&b->reads, r, queue_link);
    }
}

/* --- Membership
 * --------------------------------------------------------------- */

static void reply_change(struct node_req *r, int status)
{
    if (status != 0) {
        const char *msg;
        int code;
        switch (status) {
        case RAFT_CANTCHANGE:
            code = ALLOT_EUNAVAILABLE;
            msg = "another membership change is in progress; retry";
            break;
        case RAFT_BADID:
        case RAFT_NOTFOUND:
            code = ALLOT_ENOT_FOUND;
            msg = "no such voter in the cluster";
            break;
        case RAFT_DUPLICATEID:
        case RAFT_DUPLICATEADDRESS:
            code = ALLOT_EEXISTS;
            msg = "a member with that id or address exists";
            break;
        default:
            code = map_raft_error(status, &msg);
        }
        node_reply_error(r, code, msg);
        return;
    }
    msgpack_packer pk;
    if (node_reply_begin(r, &pk) != NULL) {
        msgpack_pack_map(&pk, 1);
        wire_pack_kv_u64(&pk, "id", r->target_id);
    }
    node_reply_done(r);
}

static void change_done_cb(struct raft_change *req, int status)
{
    struct node_req *r = req->data;
    r->node->change_busy = false;
    reply_change(r, status);
}

static void add_cb(struct raft_change *req, int status)
{
    struct node_req *r = req->data;
    struct node *n = r->node;
    if (status != 0) {
        n->change_busy = false;
        reply_change(r, status);
        return;
    }
    /* Added as spare: promote. raft catches it up before it votes. */
    int rv = raft_assign(&n->raft, &r->change, r->target_id, RAFT_VOTER,
                         change_done_cb);
    if (rv != 0) {
        n->change_busy = false;
        reply_change(r, rv);
    }
}

static const struct raft_server *find_server(struct node *n, uint64_t id)
{
    for (unsigned i = 0; i < n->raft.configuration.n; i++) {
        if (n->raft.configuration.servers[i].id == id) {
            return &n->raft.configuration.servers[i];
        }
    }
    return NULL;
}

static void transfer_cb(struct raft_transfer *req)
{
    struct node_req *r = req->data;
    raft_id leader;
    const char *addr;
    r->node->change_busy = false;
    raft_leader(&r->node->raft, &leader, &addr);
    if (r->target_id != 0 && leader != r->target_id) {
        node_reply_error(r, ALLOT_EUNAVAILABLE,
                         "leadership did not move to the target in time");
        return;
    }
    msgpack_packer pk;
    if (node_reply_begin(r, &pk) != NULL) {
        msgpack_pack_map(&pk, 1);
        wire_pack_str(&pk, "leader");
        if (leader != 0) {
            msgpack_pack_uint64(&pk, leader);
        } else {
            msgpack_pack_nil(&pk);
        }
    }
    node_reply_done(r);
}

static void run_admin(struct node *n, struct node_req *r)
{
    int rv;
    char msg[ALLOT_ERRMSG_SIZE];
    unsigned char pk[AUTH_PUBKEY_LEN];
    bool admin = false;
    if (r->principal[0] != '\0' &&
        (!fsm_principal(n->fsm, r->principal, pk, &admin) || !admin)) {
        allot_errf(msg, ALLOT_EPERMISSION_DENIED,
                   "principal %s may not change cluster membership: admins "
                   "only",
                   r->principal);
        node_reply_error(r, ALLOT_EPERMISSION_DENIED, msg);
        return;
    }
    if (n->change_busy) {
        node_reply_error(r, ALLOT_EUNAVAILABLE,
                         "another membership change is in progress; retry");
        return;
    }
    r->change.data = r;
    r->state = REQ_IN_RAFT;
    switch (r->op) {
    case WIRE_OP_CLUSTER_ADD: {
        const struct raft_server *s = find_server(n, r->target_id);
        if (s != NULL && strcmp(s->address, r->target_addr) != 0) {
            allot_errf(msg, ALLOT_EEXISTS,
                       "node %" PRIu64 " is already a member at %s",
                       r->target_id, s->address);
            node_reply_error(r, ALLOT_EEXISTS, msg);
            return;
        }
        if (s != NULL && s->role == RAFT_VOTER) {
            reply_change(r, 0); /* already there: joining twice is fine */
            return;
        }
        n->change_busy = true;
        if (s != NULL) {
            rv = raft_assign(&n->raft, &r->change, r->target_id, RAFT_VOTER,
                             change_done_cb);
        } else {
            rv = raft_add(&n->raft, &r->change, r->target_id, r->target_addr,
                          add_cb);
        }
        break;
    }
    case WIRE_OP_CLUSTER_REMOVE:
        if (r->target_id == n->cfg.id) {
            node_reply_error(r, ALLOT_EINVALID,
                             "cannot remove the current leader; move "
                             "leadership first (allotctl cluster transfer)");
            return;
        }
        if (find_server(n, r->target_id) == NULL) {
            allot_errf(msg, ALLOT_ENOT_FOUND,
                       "node %" PRIu64 " is not a member", r->target_id);
            node_reply_error(r, ALLOT_ENOT_FOUND, msg);
            return;
        }
        n->change_busy = true;
        rv = raft_remove(&n->raft, &r->change, r->target_id, change_done_cb);
        break;
    case WIRE_OP_CLUSTER_TRANSFER:
        if (r->target_id == n->cfg.id) {
            transfer_cb(&r->transfer); /* already the leader */
            return;
        }
        r->transfer.data = r;
        n->change_busy = true;
        rv = raft_transfer(&n->raft, &r->transfer, r->target_id, transfer_cb);
        break;
    default:
        rv = RAFT_INVALID;
    }
    if (rv != 0) {
        n->change_busy = false;
        reply_change(r, rv);
    }
}

/* --- Entry points
 * --------------------------------------------------------------- */

void leader_submit(struct node_req *r)
{
    struct node *n = r->node;
    unsigned flags = wire_op_flags(r->op);
    if (flags & WIRE_OP_ADMIN) {
        run_admin(n, r);
        return;
    }
    if ((flags & WIRE_OP_WRITE) && validate_submit(r)) {
        return; /* validators run first; they queue it or answer it */
    }
    leader_enqueue(r);
}

void leader_enqueue(struct node_req *r)
{
    struct node *n = r->node;
    r->state = REQ_QUEUED;
    if (wire_op_flags(r->op) & WIRE_OP_WRITE) {
        TAILQ_INSERT_TAIL(&n->writes, r, queue_link);
        n->n_writes++;
    } else {
        TAILQ_INSERT_TAIL(&n->reads, r, queue_link);
    }
}

void leader_tick(struct node *n)
{
    int state = raft_state(&n->raft);
    raft_term term = n->raft.current_term;
    if (state != n->seen_state || term != n->seen_term) {
        LOGI(NODE_COMP, "raft state", "id=%" PRIu64 " state=%d term=%llu",
             n->cfg.id, state, term);
        n->seen_state = state;
        n->seen_term = term;
    }
    if (state != RAFT_LEADER) {
        if (n->n_writes > 0 || !TAILQ_EMPTY(&n->reads)) {
            leader_fail_all(n, ALLOT_EUNAVAILABLE,
                            "this node lost leadership; retry");
        }
        return;
    }
    if (n->ready_term != term) {
        if (!n->announcing) {
            propose(n, true);
        }
        return; /* serve nothing before our own entry is applied */
    }
    /* Group commit: with entries already on their way, hold new writes
     * back (they join the next entry) unless a full batch is waiting. An
     * idle leader proposes at once, so this costs no latency at low load
     * and buys fewer, larger entries under load: CPU goes per entry, not
     * per write. */
    while (n->n_writes > 0 && (n->applies_inflight < n->cfg.max_inflight ||
                               n->n_writes >= FSM_BATCH_MAX)) {
        unsigned before = n->n_writes;
        propose(n, false);
        if (n->n_writes == before) {
            break; /* allocation failed: try next turn */
        }
    }
    if (!TAILQ_EMPTY(&n->reads)) {
        issue_barrier(n);
    }
}

static void sweep_list(struct node *n, struct node_req_list *list,
                       uint64_t now_ns, bool writes)
{
    struct node_req *r, *next;
    for (r = TAILQ_FIRST(list); r != NULL; r = next) {
        next = TAILQ_NEXT(r, queue_link);
        if (now_ns - r->arrived_ns > NODE_REQUEST_TIMEOUT_MS * 1000000ull) {
            TAILQ_REMOVE(list, r, queue_link);
            if (writes) {
                n->n_writes--;
            }
            node_reply_error(r, ALLOT_EUNAVAILABLE,
                             "leader not ready in time; retry");
        }
    }
}

void leader_sweep(struct node *n, uint64_t now_ns)
{
    sweep_list(n, &n->writes, now_ns, true);
    sweep_list(n, &n->reads, now_ns, false);
}
