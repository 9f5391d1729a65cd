/* raft_fsm.h - allot's replicated state machine: the quota catalog.
 *
 * The state machine is what canonical/raft replicates: a tree of quotas keyed
 * by path, a catalog version that grows by one on every change, client
 * sessions that remember recent write results (so a retried write applies
 * once), and the client address of each node that has led (so followers can
 * forward to the leader). It never calls libuv, reads a clock or does I/O:
 * time arrives inside each command (the leader's clock), so every replica
 * applying the same log reaches the same state, byte for byte.
 *
 * A log entry carries a batch of commands (the leader groups the writes of
 * one event-loop turn into one entry). Applying an entry yields one
 * struct fsm_result per command; a malformed entry or command yields error
 * results, never a failed apply (a non-zero return from apply would stall
 * canonical/raft for good). */
#ifndef ALLOT_RAFT_FSM_H
#define ALLOT_RAFT_FSM_H

#include <msgpack.h>
#include <raft.h>
#include <stdbool.h>
#include <stdint.h>

#include "../proto/allot_error.h"
#include "../proto/quota.h"

/* Limits on what the state machine remembers, chosen so that memory stays
 * bounded whatever clients do (docs/architecture.md, "Exactly-once writes"). */
#define FSM_SESSIONS_MAX        16384  /* clients remembered */
#define FSM_SESSION_RESULTS_MAX 1024   /* unacknowledged results per client */
#define FSM_SESSION_TTL_MS      600000 /* a client idle this long is forgotten */
#define FSM_SESSION_STEP_MAX_MS 60000  /* max session clock step, per entry */
#define FSM_BATCH_MAX           1024   /* commands in one log entry */
#define FSM_NODES_MAX           64

struct fsm;

enum fsm_cmd_type {
    FSM_CMD_QUOTA_SET = 1,
    FSM_CMD_QUOTA_RM = 2,
    FSM_CMD_LEADER = 3, /* a new leader's first entry: id, client address */
    FSM_CMD_CAPACITY_SET = 4,
    FSM_CMD_AUDIT_CONFIG = 5,
    FSM_CMD_PRINCIPAL_ADD = 6,
    FSM_CMD_PRINCIPAL_RM = 7,
    FSM_CMD_GROUP_ADD = 8,
    FSM_CMD_GROUP_RM = 9,
    FSM_CMD_TOKEN_CREATE = 10,
    FSM_CMD_TOKEN_REVOKE = 11,
    FSM_CMD_VALIDATOR_ADD = 12,
    FSM_CMD_VALIDATOR_RM = 13,
};

/* A pluggable validator (allotctl validator add): before proposing a change
 * under `prefix`, the leader runs `target` (a shell command, or an HTTP URL
 * it POSTs to) with the change as JSON; see node/validate.c. */
#define FSM_VALIDATORS_MAX       64
#define FSM_VALIDATOR_TARGET_MAX 1024
struct fsm_validator
{
    char name[65];
    char prefix[QUOTA_PATH_MAX + 1]; /* "" covers every path */
    bool is_url;
    char target[FSM_VALIDATOR_TARGET_MAX + 1];
    uint32_t timeout_ms;
    bool fail_open;
};

/* A bootstrap admin (allotd --admin NAME=PUBKEY_HEX). */
struct fsm_admin
{
    char name[65];
    unsigned char pk[32];
};

/* Declared cluster capacity (`allotctl capacity set`): the bound on the sum
 * of the top-level quotas' guaranteed resources. A resource not declared is
 * not checked. As a command, only the resources marked has_ change. */
struct fsm_capacity
{
    bool has_memory_mb;
    bool has_vcores;
    uint64_t memory_mb;
    uint64_t vcores;
};

/* One command, as the leader builds it. Strings are borrowed: they must stay
 * valid until fsm_batch_encode() returns. */
/* Audit retention (audit.config); only the has_ bounds change. */
struct fsm_audit_config
{
    bool has_max_records;
    bool has_max_age_ms;
    uint64_t max_records;
    uint64_t max_age_ms;
};

struct fsm_cmd
{
    enum fsm_cmd_type type;
    uint64_t client; /* 0 = no deduplication */
    uint64_t seq;
    uint64_t ack;
    const char *principal; /* who asked, for the audit trail; NULL = "" */
    const char *path;
    size_t path_len;
    struct quota_fields patch; /* QUOTA_SET */
    bool has_if_version;
    uint64_t if_version; /* 0 with has_if_version: must not exist */
    bool recursive;      /* QUOTA_RM: also remove descendants */
    /* QUOTA_SET: owners ("user:NAME", "group:NAME") to add and remove. */
    const char *const *owners_add;
    uint32_t n_owners_add;
    const char *const *owners_rm;
    uint32_t n_owners_rm;
    /* QUOTA_SET: labels to set (value) or remove (value NULL). */
    const char *const *label_keys;
    const char *const *label_values;
    uint32_t n_label_edits;
    /* PRINCIPAL_ADD/RM, GROUP_ADD/RM: the principal's or group's name. */
    const char *subject;
    unsigned char pubkey[32];   /* PRINCIPAL_ADD */
    bool admin;                 /* PRINCIPAL_ADD */
    const char *const *members; /* GROUP_ADD */
    uint32_t n_members;
    /* TOKEN_CREATE: hash of the token (the token itself never reaches the
     * cluster's state), for subject, valid ttl_ms; TOKEN_REVOKE: the first 8
     * bytes of the hash (its id). */
    unsigned char token_hash[32];
    uint64_t ttl_ms;
    const struct fsm_validator *validator; /* VALIDATOR_ADD (subject: RM) */
    uint64_t node_id;                      /* LEADER */
    const char *node_addr;
    /* LEADER: admins to create if the cluster has no principal yet. */
    const struct fsm_admin *admins;
    unsigned n_admins;
    struct fsm_capacity capacity;  /* CAPACITY_SET */
    struct fsm_audit_config audit; /* AUDIT_CONFIG */
};

/* Encode n commands (1..FSM_BATCH_MAX) stamped with the leader's wall clock
 * into a buffer allocated with raft_malloc(), ready for raft_apply(). On
 * success the buffer is the caller's (raft's once raft_apply() accepts it). */
int fsm_batch_encode(const struct fsm_cmd *cmds, unsigned n, uint64_t time_ms,
                     struct raft_buffer *out);

/* Outcome of one command. */
struct fsm_result
{
    int code;         /* 0 or ALLOT_E... */
    char *message;    /* NULL, or an owned string for errors */
    uint64_t version; /* catalog version after the change (set/rm) */
    uint64_t removed; /* QUOTA_RM: quotas removed (descendants included) */
    bool duplicate;   /* answered from the session table */
    /* QUOTA_SET success: the quota as this command left it. */
    uint64_t created_ms;
    uint64_t updated_ms;
    struct quota_fields fields;
    char **owners; /* owned */
    uint32_t n_owners;
    char **labels; /* owned, "key=value" */
    uint32_t n_labels;
};

/* What apply returns through raft's `result` pointer: the results of the
 * entry just applied. Owned by the state machine, valid until the next apply,
 * so raft_apply callbacks (which fire right after apply) read it directly. */
struct fsm_batch_result
{
    unsigned n;
    struct fsm_result *results;
};

int fsm_init(struct fsm **out);
void fsm_close(struct fsm *f);

/* The raft_fsm to hand to raft_init(); it points back at f. */
struct raft_fsm *fsm_raft(struct fsm *f);

/* --- Reads (on the state applied so far) -------------------------------- */

uint64_t fsm_catalog_version(const struct fsm *f);
/* The catalog's order-free digest (raft/catalog.h explains it), as 32 hex
 * digits: what servers announce by gossip with the catalog version, so a
 * host can check the rules it pulled. O(1). */
void fsm_catalog_digest(const struct fsm *f, char hex[33]);
uint64_t fsm_quota_count(const struct fsm *f);

/* The quota at path, or NULL. Valid until the next apply or restore. */
const struct quota *fsm_get(const struct fsm *f, const char *path,
                            size_t path_len);

/* Quotas whose path is prefix or lies under prefix/ (all when prefix_len is
 * 0), in path order, starting after `after` (NULL: from the first). Calls
 * cb for up to limit quotas; *more tells whether any remain. */
typedef void (*fsm_ls_cb)(void *arg, const struct quota *q);
void fsm_ls(const struct fsm *f, const char *prefix, size_t prefix_len,
            const char *after, size_t after_len, unsigned limit, fsm_ls_cb cb,
            void *arg, bool *more);

/* The declared cluster capacity, and what the top-level quotas guarantee
 * against it. */
struct fsm_capacity fsm_capacity(const struct fsm *f);
void fsm_top_guaranteed(const struct fsm *f, uint64_t *memory_mb,
                        uint64_t *vcores);

/* Audit query: records with version > after_version, whose path is prefix
 * or under prefix/ (prefix_len 0: every record, cluster-wide ones too),
 * with time >= since_ms and, if principal is not NULL, that principal; at
 * most limit (1..1000) of them, oldest first. */
struct fsm_audit_query
{
    const char *prefix;
    size_t prefix_len;
    uint64_t since_ms;
    const char *principal;
    uint64_t after_version;
    unsigned limit;
    /* Set by the state machine: records older than max_age_ms at now_ms are
     * hidden even before retention drops them. */
    uint64_t now_ms;
    uint64_t max_age_ms;
};

/* Pack the answer as one map: {"records": [...], "more": bool, "next":
 * version to pass as after_version for the next page | nil, "max_records",
 * "max_age_ms"}. */
void fsm_audit_pack(const struct fsm *f, const struct fsm_audit_query *q,
                    msgpack_packer *pk);

/* Public key and admin flag of a principal; false if unknown. */
bool fsm_principal(const struct fsm *f, const char *name, unsigned char pk[32],
                   bool *admin);
/* The principal a live token (by its hash) stands for, and when it
 * expires; false if unknown. */
bool fsm_token(const struct fsm *f, const unsigned char hash[32],
               char principal[65], uint64_t *expires_ms);
void fsm_pack_tokens(const struct fsm *f, msgpack_packer *pk);

/* Validators whose prefix covers path (equal, or a parent of it), in name
 * order, at most max; returns how many. Pointers valid until the next
 * apply. */
unsigned fsm_validators_for(const struct fsm *f, const char *path, size_t len,
                            const struct fsm_validator **out, unsigned max);
void fsm_pack_validators(const struct fsm *f, msgpack_packer *pk);

/* Is the principal table empty (a cluster waiting for its first admin)? */
bool fsm_no_principals(const struct fsm *f);
/* principal.ls and group.ls answers: an array of maps. */
void fsm_pack_principals(const struct fsm *f, msgpack_packer *pk);
void fsm_pack_groups(const struct fsm *f, msgpack_packer *pk);

/* Watching: every change after *cursor (a catalog version) whose path is
 * prefix or under it, oldest first, at most max of them: each is packed with
 * pk as one audit record map (the same shape audit.ls returns) and *cursor
 * moves to its version; non-matching records only move the cursor. Returns
 * how many were packed, or ALLOT_ENOT_FOUND when the records after *cursor
 * are no longer kept (the audit retention dropped them: the watcher must
 * re-read the quotas and watch from the current version). */
typedef void (*fsm_watch_cb)(void *arg, msgpack_packer **pk);
int fsm_watch_next(const struct fsm *f, const char *prefix, size_t prefix_len,
                   uint64_t *cursor, unsigned max, fsm_watch_cb begin,
                   fsm_watch_cb end, void *arg);

/* Client address of node id as last announced, or NULL. */
const char *fsm_node_addr(const struct fsm *f, uint64_t id);

/* BLAKE2b-256 digest of the catalog (version and every quota in path order),
 * equal on replicas that applied the same log. Hex, NUL-terminated. */
void fsm_digest(const struct fsm *f, char hex[65]);

/* Snapshot statistics (timings are measurements, not state: they differ
 * between replicas and never feed back into it). */
struct fsm_stats
{
    uint64_t snapshots;
    uint64_t snapshot_ns;
    uint64_t last_snapshot_ns;
    uint64_t restores;
};
struct fsm_stats fsm_stats(const struct fsm *f);

/* Number of client sessions remembered (for metrics and tests). */
unsigned fsm_session_count(const struct fsm *f);

#endif /* ALLOT_RAFT_FSM_H */
