/* node.h - allotd's internals, shared by the files of node/ (private).
 *
 *   server.c   lifecycle: config, loop, raft + raft_uv, signals, shutdown
 *   gateway.c  client connections: frames in, requests dispatched, replies out
 *   leader.c   what only the leader does: batch writes into log entries,
 *              serve reads after a barrier, its own-term readiness, membership
 *   forward.c  what a follower does with leader work: proxy it to the leader
 *
 * One libuv loop runs everything. A request is decoded once on arrival into a
 * struct node_req, which then waits in exactly one place (a leader queue, an
 * in-flight raft request, or the forwarding table) until it is answered. The
 * connection may close first: it then detaches its requests (req->conn =
 * NULL) and their answers are dropped. */
#ifndef ALLOT_NODE_H
#define ALLOT_NODE_H

#include <bsd/sys/queue.h>
#include <raft.h>
#include <raft/uv.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "../proto/auth.h"
#include "../proto/quota.h"
#include "../proto/wire.h"
#include "../raft/io_guard.h"
#include "../raft/raft_fsm.h"
#include "../raft/transport.h"
#include "metrics.h"
#include "usage.h"

#define NODE_COMP "node"
/* A request waiting longer than this anywhere inside the node is answered
 * with `timeout` (the client retries elsewhere). */
#define NODE_REQUEST_TIMEOUT_MS 10000
/* Stop reading from a client with this many requests in flight or this many
 * reply bytes unsent, until it drains (backpressure, bounded memory). */
#define NODE_CONN_INFLIGHT_MAX 4096
#define NODE_CONN_OUTBUF_MAX   (8u << 20)
#define NODE_LS_LIMIT_DEFAULT  1000
#define NODE_LS_LIMIT_MAX      1000

#define NODE_ADMINS_MAX 8
#define NODE_TOKEN_MAX  128
/* Signed requests: nonces remembered to refuse replays, bounded. */
#define NODE_NONCES_MAX 262144

struct node_config
{
    uint64_t id;
    const char *data_dir;
    const char *raft_addr;
    const char *client_addr;
    const char *cluster; /* "1=HOST:PORT,..." or NULL */
    const char *join;    /* "HOST:PORT" or NULL */
    bool insecure;
    /* --admin NAME=PUBKEY_HEX: the first admins of a new cluster. */
    struct fsm_admin admins[NODE_ADMINS_MAX];
    unsigned n_admins;
    const char *identity;  /* --identity FILE: signs --join's request */
    const char *http_addr; /* --http HOST:PORT, or NULL */
    unsigned snapshot_threshold;
    unsigned snapshot_trailing;
    unsigned election_timeout_ms;
    unsigned max_inflight; /* write entries in flight before holding back */
    unsigned heartbeat_timeout_ms;
    /* Gossip (node/announce.c): off unless gossip_addr is set. */
    const char *gossip_addr;    /* --gossip HOST:PORT */
    const char *gossip_keyring; /* --gossip-keyring FILE (required with it) */
    const char *gossip_seeds;   /* --gossip-seeds HOST:PORT,... or NULL */
    unsigned gossip_probe_interval_ms; /* 0: the library's default */
};

struct node;
struct conn;
struct validation;

/* Where a request waits. */
enum node_req_state {
    REQ_NEW = 0,
    REQ_QUEUED,    /* in leader.writes or leader.reads */
    REQ_IN_RAFT,   /* part of an in-flight raft apply/barrier/change */
    REQ_FORWARDED, /* in the forwarding table */
    REQ_VALIDATING /* its validators are running (validate.c) */
};

struct node_req
{
    TAILQ_ENTRY(node_req) conn_link;  /* conn->reqs */
    TAILQ_ENTRY(node_req) queue_link; /* the queue it waits in */
    struct node *node;
    struct conn *conn; /* NULL once the client went away */
    enum node_req_state state;
    uint64_t id; /* client's request id */
    enum wire_op op;
    uint64_t arrived_ns;
    /* Decoded arguments. */
    struct fsm_cmd cmd; /* writes; cmd.path points at path below */
    char path[QUOTA_PATH_MAX + 2];
    size_t path_len;
    char after[QUOTA_PATH_MAX + 2]; /* quota.ls paging */
    size_t after_len;
    bool has_after;
    unsigned limit;
    uint64_t target_id; /* cluster.add/remove/transfer */
    char target_addr[64];
    bool want_digest;       /* cluster.status */
    char gossip_action[16]; /* gossip.keys: list, install, use, remove */
    unsigned char gossip_key[32];
    struct gossip_key_cmd *key_cmd; /* gossip.keys in progress, owned */
    /* audit.ls */
    uint64_t since_ms;
    uint64_t after_version; /* audit.ls; quota.watch: from_version */
    bool has_after_version;
    bool has_principal_filter;
    char principal_filter[65];
    /* Who sent it: the verified principal, or "" on an --insecure cluster
     * for an unsigned request. */
    char principal[AUTH_NAME_MAX + 1];
    /* A signed request keeps its exact body and claim, so a follower can
     * forward them for the leader to verify. */
    bool is_signed;
    bool http_signed;  /* claim over an HTTP request: op = http_target */
    char *http_target; /* owned: "METHOD /target?query" */
    char token[NODE_TOKEN_MAX + 1]; /* bearer token, "" if none */
    struct auth_claim claim;
    char *body; /* owned */
    size_t body_len;
    /* An unsigned request headed for the leader: its args as received. */
    char *args; /* owned */
    size_t args_len;
    /* quota.set owners, group.add members, principal.add: owned strings. */
    char **owners_add;
    uint32_t n_owners_add;
    char **owners_rm;
    uint32_t n_owners_rm;
    char **members;
    uint32_t n_members;
    char **label_keys; /* quota.set label edits; a NULL value removes */
    char **label_values;
    uint32_t n_label_edits;
    char subject[AUTH_NAME_MAX + 1];
    struct fsm_validator *validator;     /* validator.add, owned */
    struct usage_report *usage;          /* usage.report, owned */
    char usage_host[USAGE_HOST_MAX + 1]; /* usage.ls filter, "" none */
    size_t reply_start; /* offset of the reply frame being built */
    /* Forwarding. */
    uint64_t fwd_id;
    struct raft_change change;
    struct raft_transfer transfer;
};

TAILQ_HEAD(node_req_list, node_req);

/* A quota.watch stream: changes after `cursor` under the request's path,
 * served from this node's applied state (any node can serve one; a client
 * that loses its node resumes elsewhere from the last version it saw). */
struct watch
{
    TAILQ_ENTRY(watch) link;
    struct node_req *r; /* never answered "done": the stream lives on it */
    uint64_t cursor;
};

TAILQ_HEAD(watch_list, watch);

typedef void (*gateway_sink_fn)(struct conn *c, const char *frames, size_t len);

struct conn
{
    TAILQ_ENTRY(conn) link;
    gateway_sink_fn sink; /* virtual connection: where frames go; else NULL */
    void *owner;
    TAILQ_ENTRY(conn) dirty_link; /* in node->dirty when out has bytes */
    struct node *node;
    uv_tcp_t tcp;
    struct wire_rbuf rbuf;
    msgpack_sbuffer out; /* replies not yet handed to uv_write */
    bool dirty;
    bool closing;
    bool reading;
    unsigned inflight;
    size_t unsent; /* bytes handed to uv_write, not yet written */
    struct node_req_list reqs;
};

TAILQ_HEAD(conn_list, conn);

/* One raft_apply of a batch of writes. */
struct apply_batch
{
    struct raft_apply req;
    struct node *node;
    unsigned n;
    struct node_req *reqs[]; /* n requests; NULL for the leader command */
};

/* One barrier serving the reads queued before it was issued. */
struct read_barrier
{
    struct raft_barrier req;
    struct node *node;
    uint64_t term;
    struct node_req_list reads;
};

/* Follower side: one connection to the leader's client port. A new leader
 * means a new struct fwd; the old one fails what it still holds and frees
 * itself once its handle has closed. */
struct fwd
{
    struct node *node;
    uv_tcp_t tcp;
    uv_connect_t connect;
    bool connected;
    bool closing;
    uint64_t leader_id;
    struct wire_rbuf rbuf;
    msgpack_sbuffer out;
    uint64_t next_id;
    struct node_req_list pending; /* sent or waiting to be sent */
};

struct node
{
    struct node_config cfg;
    uv_loop_t *loop;
    struct raft raft;
    struct raft_io io;          /* raft_uv */
    struct ioguard guard;       /* wraps io; raft runs on guard.io */
    uint64_t guard_seen;        /* guard rollbacks + drops already logged */
    struct transport transport; /* raft_uv_tcp with TCP_NODELAY */
    struct fsm *fsm;
    char raft_dir[512];

    uv_tcp_t listener;
    uv_prepare_t prepare;
    uv_timer_t sweep;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    uv_work_t join_work;
    bool joining;
    int join_result;

    struct conn_list conns;
    struct conn_list dirty;
    struct watch_list watches;
    TAILQ_HEAD(, validation) validations;

    /* Leader state. */
    uint64_t ready_term; /* term whose own entry has been applied here */
    bool announcing;     /* the term's LEADER command is in flight */
    uint64_t seen_term;
    int seen_state;
    struct node_req_list writes;
    struct node_req_list reads;
    unsigned n_writes;
    unsigned applies_inflight; /* write entries proposed, not yet applied */
    bool change_busy;          /* a membership change is in flight */

    struct fwd *fwd; /* NULL until something is forwarded */

    struct nonce_cache *nonces;
    struct usage_store *usage; /* hosts' usage windows (leader), owned;
                                  created on the first report */
    struct metrics metrics;

    /* Gossip (announce.c); NULL when --gossip is not given. */
    struct gossip_uv *guv;
    struct gossip *gossip;
    uv_timer_t announce_timer; /* the trailing announcement of a burst */
    bool announce_timer_live;
    uint64_t announced_version;
    uint64_t announced_ns;

    bool hooks_started; /* prepare, sweep and signal handles are live */
    bool stopping;
    bool raft_closed;
    int exit_code;
};

/* server.c */
int node_init(struct node *n, uv_loop_t *loop, const struct node_config *cfg);
int node_start(struct node *n);
void node_stop(struct node *n);
bool node_is_ready_leader(struct node *n);

/* gateway.c */
int gateway_listen(struct node *n);
void gateway_close_all(struct node *n);
/* Decode one request frame body from c and route it (what a TCP read does
 * for each frame). */
void gateway_dispatch(struct conn *c, const char *body, size_t len);
/* A connection without a socket: replies go to sink (the HTTP API). */
struct conn *gateway_conn_virtual(struct node *n, gateway_sink_fn sink,
                                  void *owner);
void gateway_conn_virtual_close(struct conn *c);
/* Flush every connection's pending replies (called once per loop turn). */
void gateway_flush(struct node *n);
void node_reply_error(struct node_req *r, int code, const char *message);
/* Start a success reply; the caller packs exactly one result value with the
 * returned packer, then calls node_reply_done(). Returns NULL if the client is
 * gone (then call node_reply_done() only). */
msgpack_packer *node_reply_begin(struct node_req *r, msgpack_packer *pk);
void node_reply_done(struct node_req *r);
/* Free a request that has been answered or abandoned. */
void node_req_free(struct node_req *r);
void gateway_handle_status(struct node_req *r);
/* Start a watch for r (quota.watch); push what is new to every watcher
 * (once per loop turn); drop every watch (shutdown). */
void gateway_watch_start(struct node_req *r);
void gateway_watch_tick(struct node *n);
void gateway_watch_close_all(struct node *n);

/* leader.c */
void leader_submit(struct node_req *r); /* READ, WRITE or ADMIN on the leader */
void leader_enqueue(
    struct node_req *r);          /* a checked write or a read: queue it */
void leader_tick(struct node *n); /* once per loop turn */
void leader_fail_all(struct node *n, int code, const char *message);
void leader_sweep(struct node *n, uint64_t now_ns);
void leader_pack_quota(msgpack_packer *pk, const char *path,
                       const struct fsm_result *res);

/* auth (gateway.c): verify a signed request's claim against this node's
 * replicated principals, its clock and its nonce cache. */
int node_verify(struct node *n, struct node_req *r, char *msg);

/* nonce.c: remembered nonces of signed requests. */
struct nonce_cache *nonce_cache_new(void);
void nonce_cache_free(struct nonce_cache *c);
/* 1 if the nonce was seen (a replay), 0 if new (now remembered). */
int nonce_cache_check(struct nonce_cache *c, const unsigned char *nonce,
                      uint64_t now_ms);

/* http.c: the HTTP/JSON API on --http. */
int http_listen(struct node *n);
void http_close_all(struct node *n);

/* validate.c: run the validators covering a write's path before it is
 * queued. Returns false if none applies (queue it now), true if it took the
 * request (it will queue or answer it). */
bool validate_submit(struct node_req *r);
void validate_abort_all(struct node *n);

/* announce.c: this server's gossip member. announce_start() joins the
 * seeds (0, or -1 after logging why); announce_tick() (once per loop turn)
 * broadcasts a new catalog version, at most every ANNOUNCE_MIN_MS;
 * announce_stop() leaves gracefully, then frees it (bounded by the
 * library's leave timeout). gossip.members and gossip.keys are answered by
 * announce_handle(). */
#define ANNOUNCE_MIN_MS 50
int announce_start(struct node *n);
void announce_tick(struct node *n);
void announce_stop(struct node *n);
void announce_handle(struct node_req *r);

/* share.c: share.show, each host's part of one rule from the gossip view */
void share_handle(struct node_req *r);

/* forward.c */
void forward_submit(struct node_req *r);
void forward_tick(struct node *n);
void forward_close(struct node *n);
void forward_sweep(struct node *n, uint64_t now_ns);

#endif /* ALLOT_NODE_H */
