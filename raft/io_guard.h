/* io_guard.h - a raft_io decorator that keeps two canonical/raft 0.15.0 bugs
 * from hurting allot (docs/raft-guard.md, docs/fault-testing.md F1 and F3).
 *
 * raft talks to disk and network only through `struct raft_io`; allotd gives
 * raft_init() the guard's `io` instead of raft_uv's, and every method and
 * callback passes through unchanged except:
 *
 * F1, a follower reports and commits entries no leader vouched for. raft
 * 0.15.0 answers a successful AppendEntries with last_log_index = its whole
 * stored log (a divergent tail of an older term included) and commits
 * min(leader_commit, that). The guard
 *   - lowers an incoming AppendEntries' leader_commit to prev_log_index +
 *     n_entries, the last entry the request proves (Raft's figure 2: "index
 *     of last new entry");
 *   - lowers the last_log_index of every outgoing successful result to the
 *     highest index that an AppendEntries or InstallSnapshot raft accepted in
 *     that result's term proved. An index proved in a term stays proved for
 *     the whole term: only that term's leader sends in it and its entries
 *     never conflict with each other. A result of a term with no proof gets
 *     0, which a leader ignores.
 * Lowering is always safe (a leader that undercounts resends); the guard
 * never raises a value, so raft's own bound (what is on disk) still holds.
 *
 * F3, a follower crashes rolling back an uncommitted configuration whose
 * committed predecessor was compacted out of the log (raft dereferences the
 * missing entry). The guard keeps a copy of the last committed
 * configuration; when an incoming AppendEntries is about to make raft roll
 * back without the entry, the guard does the rollback itself first (the
 * committed configuration back, no uncommitted index: exactly what raft's
 * membershipRollback() would have set), and raft then truncates as usual. If
 * the node is still leader of an older term the message is dropped (a lost
 * message: it steps down at the next answer it gets). If the guard has no
 * copy of that configuration it drops the message and reports failure
 * (ioguard_failed()): the caller must stop raft and restart from disk.
 *
 * F3 reads and writes fields of `struct raft` that raft 0.15.0 declares in
 * its public header (log, configuration, configuration_index,
 * configuration_uncommitted_index, state, current_term, commit_index); it is
 * tied to that version, like the rest of this module. F1 needs no raft
 * internals and works over any raft_io.
 *
 * Ownership: the guard does not own the wrapped raft_io (the caller closes
 * it as before, after raft_close()'s callback) and must outlive the raft
 * instance that uses it; ioguard_close() releases the guard's own memory. */
#ifndef ALLOT_RAFT_IO_GUARD_H
#define ALLOT_RAFT_IO_GUARD_H

#include <raft.h>
#include <stdbool.h>
#include <stdint.h>

/* Which fixes are on (tests turn them on one by one). */
enum {
    IOGUARD_F1 = 1u << 0, /* clamp commits and reported log ends */
    IOGUARD_F3 = 1u << 1, /* roll back configurations without the entry */
    IOGUARD_ALL = IOGUARD_F1 | IOGUARD_F3,
};

/* What the guard changed, for logs and tests. */
struct ioguard_stats
{
    uint64_t commits_clamped;  /* AppendEntries whose leader_commit dropped */
    uint64_t results_clamped;  /* successful results whose last index dropped */
    uint64_t rollbacks;        /* configuration rollbacks done by the guard */
    uint64_t messages_dropped; /* AppendEntries not delivered (F3) */
};

/* A request raft is being given (F1). */
struct ioguard_delivery
{
    bool active;
    unsigned short type; /* RAFT_IO_APPEND_ENTRIES or _INSTALL_SNAPSHOT */
    raft_id from;
    raft_term term;
    raft_index end; /* the last index the request proves if accepted */
};

struct ioguard
{
    struct raft_io io;     /* hand this to raft_init(); keep it first */
    struct raft_io *inner; /* the wrapped I/O; not owned */
    unsigned fixes;        /* IOGUARD_* */
    raft_io_tick_cb tick_cb;
    raft_io_recv_cb recv_cb;
    raft_io_close_cb close_cb;

    /* F1: the request being delivered to raft right now, if any. */
    struct ioguard_delivery delivering;
    /* F1: the highest index proved in proven_term. */
    raft_term proven_term;
    raft_index proven_index;

    /* F3: a copy of the configuration at committed_index; empty when not
     * known or not trustworthy at that index. Owned. */
    struct raft_configuration committed;
    raft_index committed_index;
    bool failed; /* see ioguard_failed() */
    char errmsg[RAFT_ERRMSG_BUF_SIZE];

    struct ioguard_stats stats;
};

/* Wrap inner, which must be initialized and not yet used by raft (raft_init
 * not called on it). Then raft_init(r, &g->io, ...). Sets inner->data (the
 * guard finds itself from inner's callbacks) and g->io.impl = inner->impl
 * (code that reaches through raft's io to the backend, like raft_fixture,
 * still finds it). Returns 0, or RAFT_INVALID for unknown fixes. */
int ioguard_init(struct ioguard *g, struct raft_io *inner, unsigned fixes);

/* Put a guard between a raft instance already initialized on its I/O and
 * that I/O (raft_fixture creates both together): r->io becomes &g->io. Call
 * before raft_start(). */
int ioguard_install(struct ioguard *g, struct raft *r, unsigned fixes);

/* Release the guard's memory. After raft_close()'s callback has fired. */
void ioguard_close(struct ioguard *g);

/* True once the guard had to drop a message it could not handle (F3 without
 * a copy of the committed configuration): raft will not make progress with
 * this leader, so stop it and restart from disk. errmsg says why. */
bool ioguard_failed(const struct ioguard *g);

/* The term of the entry at index in r's log, 0 if it holds none (the last
 * snapshot's index counts), as raft 0.15.0 decides it. */
raft_term ioguard_log_term(const struct raft *r, raft_index index);

#endif
