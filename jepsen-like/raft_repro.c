/* raft_repro.c - jepsen-raft-repro: a deterministic reproduction, on the
 * installed canonical/raft (raft_fixture: in-memory I/O, simulated time), of
 * the replication flaw the fault-injection campaign found
 * (docs/fault-testing.md, "Findings").
 *
 *   jepsen-raft-repro stall|loss     (raft's trace goes to stderr)
 *
 * The flaw: a follower answers a successful AppendEntries with
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
 *
 * Exit status: 1 when the flaw shows (an entry committed while fewer than a
 * majority of servers held it), 0 when it does not, 2 on a setup failure. */
#include <raft.h>
#include <raft/fixture.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    printf("  removal of 5 finished: %s\n",
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
    for (unsigned i = 0; i < N_SERVERS; i++) {
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

/* Term of the entry at index in r's in-memory log (0: none). struct
 * raft_log is public in 0.15. */
static raft_term term_at(const struct raft *r, raft_index index)
{
    const struct raft_log *l = &r->log;
    size_t n =
        l->back >= l->front ? l->back - l->front : l->size - l->front + l->back;
    if (index <= l->offset || index > l->offset + n) {
        return 0;
    }
    return l->entries[(l->front + (index - l->offset - 1)) % l->size].term;
}

/* Servers among the first n whose log holds, at index, an entry of term:
 * real copies. */
static unsigned holders(struct raft_fixture *f, unsigned n_servers,
                        raft_index index, raft_term term)
{
    unsigned n = 0;
    for (unsigned i = 0; i < n_servers; i++) {
        n += term_at(raft_fixture_get(f, i), index) == term;
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

static int setup(struct raft_fixture *f)
{
    if (raft_fixture_initialize(f) != 0) {
        return -1;
    }
    for (unsigned i = 0; i < N_SERVERS; i++) {
        fsms[i] = (struct raft_fsm){.version = 1,
                                    .data = &fsm_state[i],
                                    .apply = fsm_apply,
                                    .snapshot = fsm_snapshot,
                                    .restore = fsm_restore};
        if (raft_fixture_grow(f, &fsms[i]) != 0) {
            return -1;
        }
    }
    struct raft_configuration conf;
    if (raft_fixture_configuration(f, N_SERVERS, &conf) != 0) {
        return -1;
    }
    int rv = raft_fixture_bootstrap(f, &conf);
    raft_configuration_close(&conf);
    if (rv != 0 || raft_fixture_start(f) != 0) {
        return -1;
    }
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

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2 ||
        (strcmp(argv[1], "stall") != 0 && strcmp(argv[1], "loss") != 0)) {
        fprintf(stderr, "usage: jepsen-raft-repro stall|loss\n");
        return 2;
    }
    bool loss = strcmp(argv[1], "loss") == 0;
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
    raft_fixture_close(&f);
    return flaw ? 1 : 0;
}
