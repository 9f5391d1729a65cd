/* io_guard.c - the raft_io decorator (see io_guard.h).
 *
 * Happy path: every method forwards to the wrapped I/O with the wrapped
 * pointer; the three callbacks that get an I/O pointer (tick, recv, close)
 * are ours and call raft's with the guard's. inner->data points at the
 * guard, the guard's io.data at raft (raft_init sets it).
 *
 * How the guard learns what raft accepted (F1). raft 0.15.0 answers an
 * AppendEntries in one of these ways, all visible from here:
 *   - rejects it (stale term, log mismatch): a result with rejected != 0,
 *     sent while the request is being delivered;
 *   - accepts it with nothing new to write: a successful result, sent while
 *     the request is being delivered;
 *   - accepts it with entries to write: io->append() while the request is
 *     being delivered, the result later from the append's callback;
 *   - ignores it (a snapshot install in progress) or fails (out of memory,
 *     disk error, a conflict with committed entries): nothing is sent.
 * InstallSnapshot: a sync result, or io->snapshot_put(trailing 0) and the
 * result from its callback, or nothing (busy). So the proof is recorded when
 * raft sends a successful result for, or writes, the request it is being
 * given; a request that got neither proves nothing. Results are then bounded
 * by the proof of their own term, whichever request they answer: a result
 * sent after an append completes may carry a newer term than the request it
 * finishes (raft stamps the current one), and bounding by that term's proof
 * is what keeps it honest toward the newer leader. */
#include "io_guard.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

static struct ioguard *of(struct raft_io *io)
{
    return (struct ioguard *)((char *)io - offsetof(struct ioguard, io));
}

static void keep_errmsg(struct ioguard *g, int rv)
{
    if (rv != 0) {
        memcpy(g->io.errmsg, g->inner->errmsg, sizeof g->io.errmsg);
    }
}

/* --- Raft's log and configuration (F3) -------------------------------------
 */

static size_t log_n_entries(const struct raft_log *l)
{
    return l->front <= l->back ? l->back - l->front
                               : l->size - l->front + l->back;
}

static const struct raft_entry *log_entry(const struct raft_log *l,
                                          raft_index index)
{
    size_t n = log_n_entries(l);
    if (index <= l->offset || index > l->offset + n) {
        return NULL;
    }
    return &l->entries[(l->front + (index - l->offset - 1)) % l->size];
}

raft_term ioguard_log_term(const struct raft *r, raft_index index)
{
    const struct raft_log *l = &r->log;
    if (index != 0 && index == l->snapshot.last_index) {
        return l->snapshot.last_term;
    }
    const struct raft_entry *e = log_entry(l, index);
    return e != NULL ? e->term : 0;
}

static bool conf_equal(const struct raft_configuration *a,
                       const struct raft_configuration *b)
{
    if (a->n != b->n) {
        return false;
    }
    for (unsigned i = 0; i < a->n; i++) {
        const struct raft_server *x = &a->servers[i], *y = &b->servers[i];
        if (x->id != y->id || x->role != y->role ||
            strcmp(x->address, y->address) != 0) {
            return false;
        }
    }
    return true;
}

/* dst = a new copy of src (raft's allocator: raft may take it over). */
static int conf_copy(const struct raft_configuration *src,
                     struct raft_configuration *dst)
{
    raft_configuration_init(dst);
    for (unsigned i = 0; i < src->n; i++) {
        const struct raft_server *s = &src->servers[i];
        int rv = raft_configuration_add(dst, s->id, s->address, s->role);
        if (rv != 0) {
            raft_configuration_close(dst);
            return rv;
        }
    }
    return 0;
}

/* Keep the copy of the committed configuration current. raft's
 * configuration is the one at configuration_index whenever no change is
 * pending; that is when it is copied. While a change is pending the copy
 * stays as it was: if raft commits a configuration we never saw without a
 * pending change (several changes in one batch), the copy's index no longer
 * matches and it is not used.
 *
 * One exception: after a restart raft 0.15.0 takes the last configuration
 * entry of its log, committed or not, and applying an older committed
 * change then moves configuration_index back without changing the
 * configuration. Then the two do not belong together: the copy is marked
 * unusable at that index (committed_index set, committed empty). */
static void observe_configuration(struct ioguard *g)
{
    const struct raft *r = g->io.data;
    if ((g->fixes & IOGUARD_F3) == 0 || r == NULL ||
        r->configuration_uncommitted_index != 0 ||
        r->configuration_index == 0) {
        return;
    }
    if (r->configuration_index == g->committed_index &&
        (g->committed.n == 0 || conf_equal(&r->configuration, &g->committed))) {
        return;
    }
    bool backwards = r->configuration_index < g->committed_index;
    raft_configuration_close(&g->committed);
    raft_configuration_init(&g->committed);
    g->committed_index = r->configuration_index;
    struct raft_configuration copy;
    if (backwards || conf_copy(&r->configuration, &copy) != 0) {
        return; /* unusable until the index moves on */
    }
    g->committed = copy;
}

/* Would raft 0.15.0, given this AppendEntries, roll back its uncommitted
 * configuration with the committed entry missing from its log (and crash)?
 * The same checks as recvAppendEntries() and replicationAppend(), in their
 * order; false as soon as raft would take another way. */
static bool rollback_would_crash(const struct raft *r,
                                 const struct raft_append_entries *args)
{
    if (r->configuration_uncommitted_index == 0 ||
        r->state == RAFT_UNAVAILABLE || args->term < r->current_term) {
        return false;
    }
    if (args->n_entries > 0 && r->snapshot.put.data != NULL &&
        r->last_stored == 0) {
        return false; /* ignored during a snapshot install */
    }
    if (args->prev_log_index > 0) {
        raft_term t = ioguard_log_term(r, args->prev_log_index);
        if (t == 0 || t != args->prev_log_term) {
            return false; /* rejected (or a shutdown), no truncation */
        }
    }
    for (unsigned j = 0; j < args->n_entries; j++) {
        raft_index index = args->prev_log_index + 1 + j;
        raft_term t = ioguard_log_term(r, index);
        if (t == 0) {
            return false; /* appends past the end: nothing truncated */
        }
        if (t != args->entries[j].term) {
            return index > r->commit_index &&
                   r->configuration_uncommitted_index >= index &&
                   log_entry(&r->log, r->configuration_index) == NULL;
        }
    }
    return false;
}

static void free_append_entries(struct raft_append_entries *args)
{
    void *batch = NULL;
    for (unsigned i = 0; i < args->n_entries; i++) {
        if (args->entries[i].batch != batch) {
            batch = args->entries[i].batch;
            raft_free(batch);
        }
    }
    raft_free(args->entries);
    args->entries = NULL;
    args->n_entries = 0;
}

/* F3 before raft sees an AppendEntries: false if the message was dropped
 * (and freed). */
static bool guard_rollback(struct ioguard *g, struct raft_message *msg)
{
    struct raft *r = g->io.data;
    if ((g->fixes & IOGUARD_F3) == 0 || r == NULL ||
        !rollback_would_crash(r, &msg->append_entries)) {
        return true;
    }
    if (r->state == RAFT_LEADER) {
        /* A leader of an older term: raft would step down and roll back in
         * one go, and changing a leader's configuration under it would
         * break its progress array. A dropped message is a lost one; the
         * next answer from any follower carries the newer term and makes
         * it step down, and the new leader retries. */
        goto drop;
    }
    struct raft_configuration copy;
    if (g->committed_index != r->configuration_index || g->committed.n == 0 ||
        conf_copy(&g->committed, &copy) != 0) {
        snprintf(g->errmsg, sizeof g->errmsg,
                 "cannot roll back configuration %llu to %llu: the entry "
                 "is compacted and no copy is kept",
                 (unsigned long long)r->configuration_uncommitted_index,
                 (unsigned long long)r->configuration_index);
        g->failed = true;
        goto drop;
    }
    /* What membershipRollback() sets. raft then finds no uncommitted
     * configuration at or after the conflict and only truncates. */
    raft_configuration_close(&r->configuration);
    r->configuration = copy;
    r->configuration_uncommitted_index = 0;
    g->stats.rollbacks++;
    return true;

drop:
    free_append_entries(&msg->append_entries);
    g->stats.messages_dropped++;
    return false;
}

/* --- What raft accepted (F1) -----------------------------------------------
 */

static void prove(struct ioguard *g, raft_term term, raft_index end)
{
    if (term > g->proven_term) {
        g->proven_term = term;
        g->proven_index = end;
    } else if (term == g->proven_term && end > g->proven_index) {
        g->proven_index = end;
    }
}

/* raft accepted the request being delivered (it wrote it, or answered it
 * with a success). */
static void accepted(struct ioguard *g, unsigned short type)
{
    if (g->delivering.active && g->delivering.type == type) {
        prove(g, g->delivering.term, g->delivering.end);
    }
}

/* --- Callbacks -------------------------------------------------------------
 */

static void g_tick(struct raft_io *inner)
{
    struct ioguard *g = inner->data;
    observe_configuration(g);
    g->tick_cb(&g->io);
    observe_configuration(g);
}

static void g_recv(struct raft_io *inner, struct raft_message *msg)
{
    struct ioguard *g = inner->data;
    observe_configuration(g);
    bool request = false;
    raft_index end = 0;
    raft_term term = 0;
    if (msg->type == RAFT_IO_APPEND_ENTRIES) {
        struct raft_append_entries *args = &msg->append_entries;
        if (!guard_rollback(g, msg)) {
            return;
        }
        end = args->prev_log_index + args->n_entries;
        if ((g->fixes & IOGUARD_F1) != 0 && args->leader_commit > end) {
            args->leader_commit = end;
            g->stats.commits_clamped++;
        }
        term = args->term;
        request = true;
    } else if (msg->type == RAFT_IO_INSTALL_SNAPSHOT) {
        end = msg->install_snapshot.last_index;
        term = msg->install_snapshot.term;
        request = true;
    }
    /* raft never delivers re-entrantly, but keep the outer state if it did. */
    struct ioguard_delivery saved = g->delivering;
    if (request) {
        g->delivering.active = true;
        g->delivering.type = msg->type;
        g->delivering.from = msg->server_id;
        g->delivering.term = term;
        g->delivering.end = end;
    } else {
        g->delivering.active = false;
    }
    g->recv_cb(&g->io, msg);
    g->delivering = saved;
    observe_configuration(g);
}

static void g_close_cb(struct raft_io *inner)
{
    struct ioguard *g = inner->data;
    if (g->close_cb != NULL) {
        g->close_cb(&g->io);
    }
}

/* --- Methods ---------------------------------------------------------------
 */

static int g_init(struct raft_io *io, raft_id id, const char *address)
{
    struct ioguard *g = of(io);
    int rv = g->inner->init(g->inner, id, address);
    keep_errmsg(g, rv);
    return rv;
}

static void g_close(struct raft_io *io, raft_io_close_cb cb)
{
    struct ioguard *g = of(io);
    g->close_cb = cb;
    g->inner->close(g->inner, g_close_cb);
}

static int g_load(struct raft_io *io, raft_term *term, raft_id *voted_for,
                  struct raft_snapshot **snapshot, raft_index *start_index,
                  struct raft_entry *entries[], size_t *n_entries)
{
    struct ioguard *g = of(io);
    int rv = g->inner->load(g->inner, term, voted_for, snapshot, start_index,
                            entries, n_entries);
    keep_errmsg(g, rv);
    return rv;
}

static int g_start(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick,
                   raft_io_recv_cb recv)
{
    struct ioguard *g = of(io);
    g->tick_cb = tick;
    g->recv_cb = recv;
    int rv = g->inner->start(g->inner, msecs, g_tick, g_recv);
    keep_errmsg(g, rv);
    return rv;
}

static int g_bootstrap(struct raft_io *io,
                       const struct raft_configuration *conf)
{
    struct ioguard *g = of(io);
    int rv = g->inner->bootstrap(g->inner, conf);
    keep_errmsg(g, rv);
    return rv;
}

static int g_recover(struct raft_io *io, const struct raft_configuration *conf)
{
    struct ioguard *g = of(io);
    int rv = g->inner->recover(g->inner, conf);
    keep_errmsg(g, rv);
    return rv;
}

static int g_set_term(struct raft_io *io, raft_term term)
{
    struct ioguard *g = of(io);
    int rv = g->inner->set_term(g->inner, term);
    keep_errmsg(g, rv);
    return rv;
}

static int g_set_vote(struct raft_io *io, raft_id server_id)
{
    struct ioguard *g = of(io);
    int rv = g->inner->set_vote(g->inner, server_id);
    keep_errmsg(g, rv);
    return rv;
}

static int g_send(struct raft_io *io, struct raft_io_send *req,
                  const struct raft_message *message, raft_io_send_cb cb)
{
    struct ioguard *g = of(io);
    struct raft_message copy;
    if (message->type == RAFT_IO_APPEND_ENTRIES_RESULT &&
        message->append_entries_result.rejected == 0) {
        const struct raft_append_entries_result *res =
            &message->append_entries_result;
        if (g->delivering.active && g->delivering.from == message->server_id &&
            g->delivering.term == res->term) {
            /* A synchronous success: raft accepted what it is being given
             * (an AppendEntries or an InstallSnapshot, both answered with
             * this type). */
            accepted(g, g->delivering.type);
        }
        if ((g->fixes & IOGUARD_F1) != 0) {
            raft_index limit =
                res->term == g->proven_term ? g->proven_index : 0;
            if (res->last_log_index > limit) {
                copy = *message;
                copy.append_entries_result.last_log_index = limit;
                message = &copy;
                g->stats.results_clamped++;
            }
        }
    }
    int rv = g->inner->send(g->inner, req, message, cb);
    keep_errmsg(g, rv);
    return rv;
}

static int g_append(struct raft_io *io, struct raft_io_append *req,
                    const struct raft_entry entries[], unsigned n,
                    raft_io_append_cb cb)
{
    struct ioguard *g = of(io);
    int rv = g->inner->append(g->inner, req, entries, n, cb);
    keep_errmsg(g, rv);
    if (rv == 0) {
        /* Only a follower appends while a request is delivered: these are
         * its entries, after a prefix that matched. */
        accepted(g, RAFT_IO_APPEND_ENTRIES);
    }
    return rv;
}

static int g_truncate(struct raft_io *io, raft_index index)
{
    struct ioguard *g = of(io);
    int rv = g->inner->truncate(g->inner, index);
    keep_errmsg(g, rv);
    return rv;
}

static int g_snapshot_put(struct raft_io *io, unsigned trailing,
                          struct raft_io_snapshot_put *req,
                          const struct raft_snapshot *snapshot,
                          raft_io_snapshot_put_cb cb)
{
    struct ioguard *g = of(io);
    int rv = g->inner->snapshot_put(g->inner, trailing, req, snapshot, cb);
    keep_errmsg(g, rv);
    if (rv == 0 && trailing == 0) {
        /* Installing the leader's snapshot: its index is committed. */
        accepted(g, RAFT_IO_INSTALL_SNAPSHOT);
    }
    return rv;
}

static int g_snapshot_get(struct raft_io *io, struct raft_io_snapshot_get *req,
                          raft_io_snapshot_get_cb cb)
{
    struct ioguard *g = of(io);
    int rv = g->inner->snapshot_get(g->inner, req, cb);
    keep_errmsg(g, rv);
    return rv;
}

static raft_time g_time(struct raft_io *io)
{
    struct ioguard *g = of(io);
    return g->inner->time(g->inner);
}

static int g_random(struct raft_io *io, int min, int max)
{
    struct ioguard *g = of(io);
    return g->inner->random(g->inner, min, max);
}

static int g_async_work(struct raft_io *io, struct raft_io_async_work *req,
                        raft_io_async_work_cb cb)
{
    struct ioguard *g = of(io);
    /* raft_fixture's async_work stores io->data (raft) into req->data:
     * give it raft's value for the call. */
    void *mine = g->inner->data;
    g->inner->data = g->io.data;
    int rv = g->inner->async_work(g->inner, req, cb);
    g->inner->data = mine;
    keep_errmsg(g, rv);
    return rv;
}

int ioguard_init(struct ioguard *g, struct raft_io *inner, unsigned fixes)
{
    if ((fixes & ~(unsigned)IOGUARD_ALL) != 0) {
        return RAFT_INVALID;
    }
    memset(g, 0, sizeof *g);
    g->inner = inner;
    g->fixes = fixes;
    raft_configuration_init(&g->committed);
    inner->data = g;
    g->io.version = inner->version;
    g->io.impl = inner->impl;
    g->io.init = g_init;
    g->io.close = g_close;
    g->io.load = g_load;
    g->io.start = g_start;
    g->io.bootstrap = g_bootstrap;
    g->io.recover = g_recover;
    g->io.set_term = g_set_term;
    g->io.set_vote = g_set_vote;
    g->io.send = g_send;
    g->io.append = g_append;
    g->io.truncate = g_truncate;
    g->io.snapshot_put = g_snapshot_put;
    g->io.snapshot_get = g_snapshot_get;
    g->io.time = g_time;
    g->io.random = g_random;
    g->io.async_work = inner->version >= 2 ? g_async_work : NULL;
    return 0;
}

int ioguard_install(struct ioguard *g, struct raft *r, unsigned fixes)
{
    int rv = ioguard_init(g, r->io, fixes);
    if (rv != 0) {
        return rv;
    }
    r->io = &g->io;
    g->io.data = r;
    return 0;
}

void ioguard_close(struct ioguard *g)
{
    raft_configuration_close(&g->committed);
    raft_configuration_init(&g->committed);
    g->committed_index = 0;
}

bool ioguard_failed(const struct ioguard *g)
{
    return g->failed;
}
