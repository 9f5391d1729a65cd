/* raft_repro.c - jepsen-raft-repro: deterministic reproductions, on the
 * installed canonical/raft (raft_fixture: in-memory I/O, simulated time), of
 * the two canonical/raft 0.15.0 flaws the fault-injection campaign found
 * (docs/fault-testing.md, "Findings"), with and without allot's raft_io
 * guard (raft/io_guard.h) between each server and its I/O.
 *
 *   jepsen-raft-repro [--guard] [--expect flaw|none] stall|loss|rollback
 *                     |rollback-leader
 *
 * raft's trace goes to stderr. Each scenario runs in a child process, so a
 * crash inside raft is reported instead of ending the program.
 *
 * F1 (stall, loss). A follower answers a successful AppendEntries with
 * last_log_index = its last stored index, which may include a divergent,
 * uncommitted tail that the request never covered; the leader sets
 * match_index = min(that, its own last index). So a new leader can count a
 * follower as holding entries it does not hold.
 *
 * Setup (servers 1..5): leader 2; partition {3,4} | {1,2,5}; leader 2
 * removes 5 and appends more entries, which reach 1 only (a term-2 tail on
 * 1 and 2); it loses its quorum. Heal: 5, which never learned of its
 * removal, wins with 3 and 4, and appends an entry before its first
 * heartbeat to 1 and 2 is answered. Then:
 *   stall: 1 and 2 answer that heartbeat with their tail's last index; the
 *          leader marks them as holding its entry, commits it before 3 and 4
 *          even have it, and ignores their later rejections as stale: they
 *          stay behind until the leader appends past the false match point.
 *   loss:  3 and 4 die right after the election; the leader's client
 *          entries X are committed and applied (acknowledged) with the
 *          leader as the only holder; the leader dies; none of 1..4 has X.
 * The flaw shows as an entry committed while fewer than a majority of
 * servers held it.
 *
 * F3 (rollback). Servers 1..3 snapshot often (threshold 8, 2 trailing), so
 * the bootstrap configuration entry (index 1, the committed configuration)
 * is compacted everywhere. Leader 1 is cut off and proposes removing 3: an
 * uncommitted configuration in its log only. 2 and 3 elect a leader that
 * appends entries; 1 steps down. Heal: the new leader's entries conflict
 * with 1's configuration entry, and raft 0.15.0 rolls it back by decoding
 * the committed configuration's log entry - gone, so it dereferences NULL.
 * rollback-leader: the same, but 1 has not stepped down yet when the new
 * leader's entries arrive (raft steps down and rolls back in one go; the
 * guard drops that message and handles the next one, once 1 follows).
 * The flaw shows as a crash, raft stopping, or 1 keeping the rolled-back
 * configuration or not converging.
 *
 * Exit status: 1 when the flaw shows, 0 when it does not, 2 on a setup
 * failure; with --expect, 0 when the outcome is the expected one and 1 when
 * not (so both directions can run as tests). */
#include <raft.h>
#include <raft/fixture.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../raft/io_guard.h"

#define N_SERVERS 5
#define MAX_APPLY 64
#define TAG_TAIL  100 /* entries of the old leader's uncommitted tail */
#define TAG_NEW   500 /* entries of the new leader */

struct counting_fsm
{
    uint64_t applied[256];
    unsigned n;
};

static struct counting_fsm fsm_state[N_SERVERS];
static struct raft_fsm fsms[N_SERVERS];
static struct ioguard guards[N_SERVERS];
static bool use_guard;
static struct raft_apply apply_reqs[MAX_APPLY];
static unsigned n_apply;
static unsigned acknowledged;

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf,
                     void **result)
{
    struct counting_fsm *c = fsm->data;
    uint64_t v = 0;
    memcpy(&v, buf->base, buf->len < sizeof v ? buf->len : sizeof v);
    if (c->n < sizeof c->applied / sizeof c->applied[0]) {
        c->applied[c->n++] = v;
    }
    *result = NULL;
    return 0;
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[],
                        unsigned *n)
{
    (void)fsm;
    *bufs = raft_malloc(sizeof **bufs);
    if (*bufs == NULL) {
        return RAFT_NOMEM;
    }
    (*bufs)[0].len = 8;
    (*bufs)[0].base = raft_calloc(1, 8);
    *n = 1;
    return (*bufs)[0].base == NULL ? RAFT_NOMEM : 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    (void)fsm;
    raft_free(buf->base);
    return 0;
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    (void)req;
    (void)result;
    if (status == 0) {
        acknowledged++;
    }
}

static void apply(struct raft_fixture *f, unsigned i, uint64_t tag)
{
    if (n_apply == MAX_APPLY) {
        return;
    }
    struct raft_buffer buf = {.len = 8, .base = raft_malloc(8)};
    if (buf.base == NULL) {
        return;
    }
    memcpy(buf.base, &tag, sizeof tag);
    int rv = raft_apply(raft_fixture_get(f, i), &apply_reqs[n_apply++], &buf, 1,
                        apply_cb);
    if (rv != 0) {
        raft_free(buf.base);
        printf("  raft_apply on server %u: %s\n", i + 1, raft_strerror(rv));
    }
}

static void remove_cb(struct raft_change *req, int status)
{
    (void)req;
    printf("  the removal finished: %s\n",
           status == 0 ? "ok" : raft_strerror(status));
}

static const char *state_name(const struct raft_fixture *f, unsigned i,
                              const struct raft *r)
{
    if (!raft_fixture_alive((struct raft_fixture *)f, i)) {
        return "dead";
    }
    switch (r->state) {
    case RAFT_LEADER:
        return "leader";
    case RAFT_FOLLOWER:
        return "follower";
    case RAFT_CANDIDATE:
        return "candidate";
    default:
        return "unavailable";
    }
}

static void show(struct raft_fixture *f, const char *when)
{
    printf("%s\n", when);
    for (unsigned i = 0; i < raft_fixture_n(f); i++) {
        struct raft *r = raft_fixture_get(f, i);
        printf("  %u: %-9s term %llu  last %llu  commit %llu  voters:", i + 1,
               state_name(f, i, r), (unsigned long long)r->current_term,
               (unsigned long long)raft_last_index(r),
               (unsigned long long)r->commit_index);
        for (unsigned k = 0; k < r->configuration.n; k++) {
            if (r->configuration.servers[k].role == RAFT_VOTER) {
                printf(" %llu",
                       (unsigned long long)r->configuration.servers[k].id);
            }
        }
        printf("\n");
    }
}

/* Servers among the first n whose log holds, at index, an entry of term:
 * real copies. */
static unsigned holders(struct raft_fixture *f, unsigned n_servers,
                        raft_index index, raft_term term)
{
    unsigned n = 0;
    for (unsigned i = 0; i < n_servers; i++) {
        n += ioguard_log_term(raft_fixture_get(f, i), index) == term;
    }
    return n;
}

static void partition(struct raft_fixture *f, bool cut)
{
    const unsigned a[2] = {2, 3}, b[3] = {0, 1, 4};
    for (unsigned x = 0; x < 2; x++) {
        for (unsigned y = 0; y < 3; y++) {
            if (cut) {
                raft_fixture_saturate(f, a[x], b[y]);
                raft_fixture_saturate(f, b[y], a[x]);
            } else {
                raft_fixture_desaturate(f, a[x], b[y]);
                raft_fixture_desaturate(f, b[y], a[x]);
            }
        }
    }
}

/* n servers with counting state machines, each behind a guard with
 * --guard, bootstrapped with all of them as voters and started; tune runs
 * on each raft before the start. */
static int cluster(struct raft_fixture *f, unsigned n,
                   void (*tune)(struct raft *r))
{
    if (raft_fixture_initialize(f) != 0) {
        return -1;
    }
    for (unsigned i = 0; i < n; i++) {
        fsms[i] = (struct raft_fsm){.version = 1,
                                    .data = &fsm_state[i],
                                    .apply = fsm_apply,
                                    .snapshot = fsm_snapshot,
                                    .restore = fsm_restore};
        if (raft_fixture_grow(f, &fsms[i]) != 0) {
            return -1;
        }
        struct raft *r = raft_fixture_get(f, i);
        if (use_guard && ioguard_install(&guards[i], r, IOGUARD_ALL) != 0) {
            return -1;
        }
        if (tune != NULL) {
            tune(r);
        }
    }
    struct raft_configuration conf;
    if (raft_fixture_configuration(f, n, &conf) != 0) {
        return -1;
    }
    int rv = raft_fixture_bootstrap(f, &conf);
    raft_configuration_close(&conf);
    if (rv != 0 || raft_fixture_start(f) != 0) {
        return -1;
    }
    return 0;
}

static void close_cluster(struct raft_fixture *f)
{
    unsigned n = raft_fixture_n(f);
    raft_fixture_close(f);
    for (unsigned i = 0; use_guard && i < n; i++) {
        ioguard_close(&guards[i]);
    }
}

static int setup(struct raft_fixture *f)
{
    if (cluster(f, N_SERVERS, NULL) != 0) {
        return -1;
    }
    int rv;
    raft_fixture_elect(f, 1); /* server 2 */
    for (uint64_t k = 1; k <= 3; k++) {
        apply(f, 1, k);
    }
    raft_fixture_step_until_applied(f, N_SERVERS, 4, 5000);

    partition(f, true);
    static struct raft_change change;
    rv = raft_remove(raft_fixture_get(f, 1), &change, 5, remove_cb);
    printf("partition {3,4} | {1,2,5}; leader 2 removes 5: %s\n",
           rv == 0 ? "proposed" : raft_strerror(rv));
    for (uint64_t k = 0; k < 5; k++) {
        apply(f, 1, TAG_TAIL + k); /* reaches 1 only */
    }
    /* While partitioned nobody may win; afterwards 5 campaigns first. */
    for (unsigned i = 0; i < 4; i++) {
        raft_fixture_set_randomized_election_timeout(f, i, 100000);
    }
    raft_fixture_set_randomized_election_timeout(f, 4, 1500);
    raft_fixture_step_until_elapsed(f, 3000);
    show(f, "partitioned, leader 2 has lost its quorum:");
    partition(f, false);
    if (!raft_fixture_step_until_has_leader(f, 20000) ||
        raft_fixture_leader_index(f) != 4) {
        printf("setup: expected server 5 to win after the heal\n");
        return -1;
    }
    printf("healed: server 5 is leader\n");
    return 0;
}

static int run_f1(bool loss)
{
    struct raft_fixture f;
    if (setup(&f) != 0) {
        return 2;
    }
    unsigned leader = raft_fixture_leader_index(&f);
    raft_index first = raft_last_index(raft_fixture_get(&f, leader)) + 1;
    if (loss) {
        raft_fixture_kill(&f, 2);
        raft_fixture_kill(&f, 3);
    }
    acknowledged = 0;
    for (uint64_t k = 0; k < 3; k++) {
        apply(&f, leader, TAG_NEW + k);
    }
    /* Step until the leader commits the first new entry (or gives up). */
    raft_fixture_step_until_applied(&f, leader, first, 3000);
    struct raft *lr = raft_fixture_get(&f, leader);
    unsigned real = holders(&f, N_SERVERS, first, lr->current_term);
    bool committed = lr->commit_index >= first;
    printf("new leader appended its entry at %llu: leader commit %llu; "
           "servers holding that entry when it committed: %u of 5\n",
           (unsigned long long)first, (unsigned long long)lr->commit_index,
           real);
    bool flaw = committed && real < 3;
    if (loss) {
        raft_fixture_step_until_elapsed(&f, 2000);
        show(&f, "3 and 4 died after the election; leader 5 wrote X:");
        printf("  X acknowledged by the leader (apply callbacks ok): %u\n",
               acknowledged);
        raft_fixture_kill(&f, leader);
        raft_fixture_revive(&f, 2);
        raft_fixture_revive(&f, 3);
        for (unsigned i = 0; i < 4; i++) {
            raft_fixture_set_randomized_election_timeout(&f, i, 1000 + 300 * i);
        }
        raft_fixture_step_until_elapsed(&f, 20000);
        show(&f, "5 died, 3 and 4 are back (normal election timeouts), 20 s "
                 "later:");
        unsigned have = 0;
        for (unsigned i = 0; i < 4; i++) {
            for (unsigned k = 0; k < fsm_state[i].n; k++) {
                have += fsm_state[i].applied[k] >= TAG_NEW;
            }
        }
        printf("  X on the survivors: %u state machines applied it, %u "
               "logs hold it at %llu\n",
               have, holders(&f, 4, first, lr->current_term),
               (unsigned long long)first);
    } else {
        raft_fixture_step_until_elapsed(&f, 10000);
        show(&f, "10 s later, no new entries:");
    }
    printf("%s\n", flaw ? "FLAW PRESENT: an entry was committed while held "
                          "by fewer than a majority"
                        : "not reproduced: commit waited for a majority");
    close_cluster(&f);
    return flaw ? 1 : 0;
}

/* F3: isolate server i (both directions) or heal it. */
static void cut_off(struct raft_fixture *f, unsigned i, bool cut)
{
    for (unsigned j = 0; j < raft_fixture_n(f); j++) {
        if (j == i) {
            continue;
        }
        if (cut) {
            raft_fixture_saturate(f, i, j);
            raft_fixture_saturate(f, j, i);
        } else {
            raft_fixture_desaturate(f, i, j);
            raft_fixture_desaturate(f, j, i);
        }
    }
}

static void snapshot_often(struct raft *r)
{
    raft_set_snapshot_threshold(r, 8);
    raft_set_snapshot_trailing(r, 2);
}

static unsigned voters(const struct raft *r)
{
    unsigned n = 0;
    for (unsigned k = 0; k < r->configuration.n; k++) {
        n += r->configuration.servers[k].role == RAFT_VOTER;
    }
    return n;
}

/* still_leader: 1 keeps leading its old term until after the heal (a long
 * election timeout delays its step-down), so the conflicting entries reach
 * a leader, which raft 0.15.0 turns into a follower and rolls back in one
 * step. */
static int run_rollback(bool still_leader)
{
    struct raft_fixture f;
    if (cluster(&f, 3, snapshot_often) != 0) {
        return 2;
    }
    raft_fixture_elect(&f, 0);
    for (uint64_t k = 1; k <= 30; k++) {
        apply(&f, 0, k);
    }
    if (!raft_fixture_step_until_applied(&f, 3, 31, 10000)) {
        printf("setup: the entries were not applied everywhere\n");
        return 2;
    }
    raft_fixture_step_until_elapsed(&f, 1000); /* snapshots written */
    for (unsigned i = 0; i < 3; i++) {
        struct raft *r = raft_fixture_get(&f, i);
        if (r->configuration_index != 1 ||
            ioguard_log_term(r, r->configuration_index) != 0) {
            printf("setup: server %u still holds its configuration entry "
                   "(configuration %llu, snapshot %llu, log from %llu)\n",
                   i + 1, (unsigned long long)r->configuration_index,
                   (unsigned long long)r->log.snapshot.last_index,
                   (unsigned long long)r->log.offset + 1);
            return 2;
        }
    }
    printf("30 entries applied; every server compacted the bootstrap "
           "configuration entry (index 1)\n");

    cut_off(&f, 0, true);
    static struct raft_change change;
    struct raft *old = raft_fixture_get(&f, 0);
    int rv = raft_remove(old, &change, 3, remove_cb);
    raft_index u = raft_last_index(old);
    printf("leader 1 cut off, proposes removing 3 at %llu: %s\n",
           (unsigned long long)u, rv == 0 ? "proposed" : raft_strerror(rv));
    if (rv != 0) {
        return 2;
    }
    raft_fixture_set_randomized_election_timeout(&f, 0, 100000);
    if (still_leader) {
        raft_set_election_timeout(old, 20000);
    }
    raft_fixture_set_randomized_election_timeout(&f, 1, 1200);
    raft_fixture_set_randomized_election_timeout(&f, 2, 5000);
    raft_fixture_step_until_elapsed(&f, 4000);
    struct raft *leader = raft_fixture_get(&f, 1);
    if (leader->state != RAFT_LEADER ||
        (old->state == RAFT_LEADER) != still_leader) {
        show(&f, "setup: expected 2 to lead, and 1 to step down or not:");
        return 2;
    }
    for (uint64_t k = 0; k < 3; k++) {
        apply(&f, 1, TAG_NEW + k);
    }
    raft_fixture_step_until_elapsed(&f, 1000);
    show(&f, still_leader ? "2 leads the majority side and appended; 1 "
                            "still leads term 2:"
                          : "2 leads the majority side and appended; 1 "
                            "stepped down:");

    cut_off(&f, 0, false);
    raft_fixture_step_until_elapsed(&f, 5000);
    show(&f, "healed, 5 s later:");
    bool rolled_back =
        voters(old) == 3 && old->configuration_uncommitted_index == 0;
    bool converged = old->state == RAFT_FOLLOWER &&
                     raft_last_index(old) == raft_last_index(leader) &&
                     old->commit_index == leader->commit_index &&
                     ioguard_log_term(old, u) == leader->current_term;
    printf("server 1: configuration %s (%u voters), log %s the leader's\n",
           rolled_back ? "rolled back" : "NOT rolled back", voters(old),
           converged ? "equal to" : "NOT equal to");
    if (use_guard) {
        printf("guard on server 1: %llu rollback(s), %llu message(s) "
               "dropped%s\n",
               (unsigned long long)guards[0].stats.rollbacks,
               (unsigned long long)guards[0].stats.messages_dropped,
               ioguard_failed(&guards[0]) ? ", FAILED" : "");
    }
    bool flaw = !rolled_back || !converged;
    printf("%s\n", flaw ? "FLAW PRESENT: the rollback did not complete"
                        : "not reproduced: the configuration was rolled back");
    close_cluster(&f);
    return flaw ? 1 : 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: jepsen-raft-repro [--guard] [--expect flaw|none] "
                    "stall|loss|rollback|rollback-leader\n");
    return 2;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *expect = NULL;
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--guard") == 0) {
            use_guard = true;
        } else if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc &&
                   (strcmp(argv[i + 1], "flaw") == 0 ||
                    strcmp(argv[i + 1], "none") == 0)) {
            expect = argv[++i];
        } else {
            return usage();
        }
    }
    if (i + 1 != argc) {
        return usage();
    }
    const char *scenario = argv[i];
    if (strcmp(scenario, "stall") != 0 && strcmp(scenario, "loss") != 0 &&
        strcmp(scenario, "rollback") != 0 &&
        strcmp(scenario, "rollback-leader") != 0) {
        return usage();
    }
    printf("scenario %s, %s the raft_io guard\n", scenario,
           use_guard ? "with" : "without");
    /* A child runs it: raft crashing (F3) is an outcome, not our end. */
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        int rc = strncmp(scenario, "rollback", 8) == 0
                     ? run_rollback(strcmp(scenario, "rollback-leader") == 0)
                     : run_f1(strcmp(scenario, "loss") == 0);
        exit(rc);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) {
        perror("waitpid");
        return 2;
    }
    int rc;
    if (WIFSIGNALED(status)) {
        printf("FLAW PRESENT: the scenario crashed (signal %d)\n",
               WTERMSIG(status));
        rc = 1;
    } else {
        rc = WEXITSTATUS(status);
    }
    if (expect == NULL || rc == 2) {
        return rc;
    }
    bool want_flaw = strcmp(expect, "flaw") == 0;
    printf("expected %s: %s\n", expect,
           (rc == 1) == want_flaw ? "as expected" : "UNEXPECTED");
    return (rc == 1) == want_flaw ? 0 : 1;
}
