/* test_io_guard.c - the raft_io guard's F1 logic (raft/io_guard.h) on a stub
 * I/O and a scripted "raft": which request a result answers and how far it
 * may report. raft's real behaviour on these paths is covered end to end by
 * jepsen-raft-repro (tests raft_repro_*).
 *
 *   commit_clamped        leader_commit drops to prev + n, never rises
 *   sync_success          an answer inside delivery reports what that
 *                         request proved, not the divergent tail
 *   async_append          entries written during delivery prove their end;
 *                         the result sent later is bounded by it
 *   async_after_new_term  a write of term 3 that completes after a term-4
 *                         heartbeat answers with term 4: bounded by what
 *                         term 4 proved (pairing by order would say more)
 *   ignored_request       a request raft neither wrote nor answered (snapshot
 *                         install busy) proves nothing
 *   rejected              a rejection proves nothing and passes unchanged
 *   no_proof_in_term      a success in a term with no proof reports 0
 *   failed_append         an append that fails proves nothing
 *   other_destination     a success to another server during delivery is
 *                         not an answer to it
 *   proof_monotone        a shorter request later in the term keeps the
 *                         longer proof
 *   install_snapshot      a snapshot written (trailing 0) or answered proves
 *                         its last index; raft's own snapshot proves nothing
 *   passthrough           callbacks get the guard's io, errors keep the
 *                         wrapped I/O's message, F1 off changes nothing */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "../../raft/io_guard.h"

/* --- A stub raft_io ---------------------------------------------------------
 */

struct stub
{
    struct raft_io io;
    raft_io_tick_cb tick;
    raft_io_recv_cb recv;
    unsigned n_sent;
    struct raft_message sent; /* the last one */
    int send_rv, append_rv;
    unsigned n_appends;
    unsigned last_trailing;
    bool closed;
};

static struct stub *stub_of(struct raft_io *io)
{
    return (struct stub *)io;
}

static int s_start(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick,
                   raft_io_recv_cb recv)
{
    (void)msecs;
    stub_of(io)->tick = tick;
    stub_of(io)->recv = recv;
    return 0;
}

static int s_send(struct raft_io *io, struct raft_io_send *req,
                  const struct raft_message *m, raft_io_send_cb cb)
{
    (void)req;
    (void)cb;
    struct stub *s = stub_of(io);
    if (s->send_rv != 0) {
        strcpy(io->errmsg, "stub: send failed");
        return s->send_rv;
    }
    s->n_sent++;
    s->sent = *m;
    return 0;
}

static int s_append(struct raft_io *io, struct raft_io_append *req,
                    const struct raft_entry entries[], unsigned n,
                    raft_io_append_cb cb)
{
    (void)req;
    (void)entries;
    (void)n;
    (void)cb;
    struct stub *s = stub_of(io);
    if (s->append_rv == 0) {
        s->n_appends++;
    }
    return s->append_rv;
}

static int s_snapshot_put(struct raft_io *io, unsigned trailing,
                          struct raft_io_snapshot_put *req,
                          const struct raft_snapshot *snapshot,
                          raft_io_snapshot_put_cb cb)
{
    (void)req;
    (void)snapshot;
    (void)cb;
    stub_of(io)->last_trailing = trailing;
    return 0;
}

static void s_close(struct raft_io *io, raft_io_close_cb cb)
{
    stub_of(io)->closed = true;
    cb(io);
}

static raft_time s_time(struct raft_io *io)
{
    (void)io;
    return 42;
}

static struct stub stub;
static struct ioguard guard;

/* --- A scripted raft --------------------------------------------------------
 */

enum act { ANSWER, REJECT, WRITE, IGNORE, ANSWER_OTHER, WRITE_SNAPSHOT };

static enum act next_act;
static raft_index tail; /* raft's last stored index, as it would report */
static raft_index seen_commit;  /* leader_commit as raft saw it */
static struct raft_io *seen_io; /* io the callbacks were given */
static struct raft_io_send send_req;
static struct raft_io_append append_req;
static struct raft_io_snapshot_put put_req;

/* What raft sends as an AppendEntries result. */
static int result(raft_id to, raft_term term, raft_index rejected)
{
    struct raft_message m = {.type = RAFT_IO_APPEND_ENTRIES_RESULT,
                             .server_id = to,
                             .server_address = "addr"};
    m.append_entries_result.term = term;
    m.append_entries_result.rejected = rejected;
    m.append_entries_result.last_log_index = tail;
    return guard.io.send(&guard.io, &send_req, &m, NULL);
}

static void raft_recv(struct raft_io *io, struct raft_message *m)
{
    seen_io = io;
    raft_term term = m->type == RAFT_IO_APPEND_ENTRIES
                         ? m->append_entries.term
                         : m->install_snapshot.term;
    if (m->type == RAFT_IO_APPEND_ENTRIES) {
        seen_commit = m->append_entries.leader_commit;
    }
    struct raft_snapshot snap = {0};
    switch (next_act) {
    case ANSWER:
        result(m->server_id, term, 0);
        break;
    case REJECT:
        result(m->server_id, term, m->append_entries.prev_log_index);
        break;
    case WRITE:
        io->append(io, &append_req, NULL, m->append_entries.n_entries, NULL);
        break;
    case IGNORE:
        break;
    case ANSWER_OTHER:
        result(m->server_id + 1, term, 0);
        break;
    case WRITE_SNAPSHOT:
        io->snapshot_put(io, 0, &put_req, &snap, NULL);
        break;
    }
}

static void raft_tick(struct raft_io *io)
{
    seen_io = io;
}

static bool raft_closed;
static void script_close_cb(struct raft_io *io)
{
    seen_io = io;
    raft_closed = true;
}

static void setup_fixes(unsigned fixes)
{
    memset(&stub, 0, sizeof stub);
    stub.io.version = 1;
    stub.io.start = s_start;
    stub.io.send = s_send;
    stub.io.append = s_append;
    stub.io.snapshot_put = s_snapshot_put;
    stub.io.close = s_close;
    stub.io.time = s_time;
    ck_assert_int_eq(ioguard_init(&guard, &stub.io, fixes), 0);
    /* No struct raft behind it: F3 stays idle, F1 needs none. */
    guard.io.data = NULL;
    ck_assert_int_eq(guard.io.start(&guard.io, 100, raft_tick, raft_recv), 0);
    tail = 0;
}

static void setup(void)
{
    setup_fixes(IOGUARD_F1);
}

static void teardown(void)
{
    ioguard_close(&guard);
}

/* The network delivers an AppendEntries from server 1; raft does act. */
static void deliver_ae(raft_term term, raft_index prev, unsigned n,
                       raft_index commit, enum act act)
{
    struct raft_entry entries[8] = {0};
    struct raft_message m = {.type = RAFT_IO_APPEND_ENTRIES,
                             .server_id = 1,
                             .server_address = "addr"};
    m.append_entries.term = term;
    m.append_entries.prev_log_index = prev;
    m.append_entries.prev_log_term = term;
    m.append_entries.leader_commit = commit;
    m.append_entries.entries = n > 0 ? entries : NULL;
    m.append_entries.n_entries = n;
    next_act = act;
    stub.recv(&stub.io, &m);
}

static void deliver_snapshot(raft_term term, raft_index last, enum act act)
{
    struct raft_message m = {.type = RAFT_IO_INSTALL_SNAPSHOT,
                             .server_id = 1,
                             .server_address = "addr"};
    m.install_snapshot.term = term;
    m.install_snapshot.last_index = last;
    next_act = act;
    stub.recv(&stub.io, &m);
}

static raft_index reported(void)
{
    ck_assert_uint_eq(stub.sent.type, RAFT_IO_APPEND_ENTRIES_RESULT);
    return stub.sent.append_entries_result.last_log_index;
}

START_TEST(commit_clamped)
{
    deliver_ae(3, 4, 2, 10, IGNORE);
    ck_assert_uint_eq(seen_commit, 6);
    deliver_ae(3, 4, 2, 5, IGNORE);
    ck_assert_uint_eq(seen_commit, 5);
    deliver_ae(3, 9, 0, 12, IGNORE);
    ck_assert_uint_eq(seen_commit, 9);
    ck_assert_uint_eq(guard.stats.commits_clamped, 2);
}
END_TEST

START_TEST(sync_success)
{
    tail = 10; /* 5..10 a divergent tail of an older term */
    deliver_ae(3, 4, 0, 4, ANSWER);
    ck_assert_uint_eq(reported(), 4);
    ck_assert_uint_eq(guard.stats.results_clamped, 1);
    /* raft's own value is kept when it is the lower one (not on disk yet). */
    tail = 3;
    deliver_ae(3, 6, 0, 4, ANSWER);
    ck_assert_uint_eq(reported(), 3);
}
END_TEST

START_TEST(async_append)
{
    deliver_ae(3, 4, 2, 4, WRITE);
    ck_assert_uint_eq(stub.n_sent, 0);
    ck_assert_uint_eq(stub.n_appends, 1);
    /* The write completes; raft reports its whole log. */
    tail = 9;
    result(1, 3, 0);
    ck_assert_uint_eq(reported(), 6);
}
END_TEST

START_TEST(async_after_new_term)
{
    deliver_ae(3, 4, 2, 4, WRITE); /* term 3 writes 5..6 */
    tail = 4;
    deliver_ae(4, 5, 0, 5, ANSWER); /* term 4's leader proves only 5 */
    ck_assert_uint_eq(reported(), 4);
    /* Term 3's write completes; raft answers with its current term, 4. */
    tail = 6;
    result(1, 4, 0);
    ck_assert_uint_eq(reported(), 5);
}
END_TEST

START_TEST(ignored_request)
{
    deliver_ae(3, 4, 0, 4, ANSWER); /* proves 4 */
    deliver_ae(3, 4, 3, 4, IGNORE); /* snapshot install busy: dropped */
    tail = 7;
    result(1, 3, 0);
    ck_assert_uint_eq(reported(), 4);
}
END_TEST

START_TEST(rejected)
{
    tail = 10;
    deliver_ae(3, 8, 2, 8, REJECT);
    ck_assert_uint_eq(stub.sent.append_entries_result.rejected, 8);
    ck_assert_uint_eq(reported(), 10); /* a hint for probing: untouched */
    ck_assert_uint_eq(guard.stats.results_clamped, 0);
    result(1, 3, 0);
    ck_assert_uint_eq(reported(), 0); /* nothing proved in term 3 */
}
END_TEST

START_TEST(no_proof_in_term)
{
    deliver_ae(3, 4, 0, 4, ANSWER);
    tail = 4;
    result(1, 5, 0); /* a term in which nothing was accepted */
    ck_assert_uint_eq(reported(), 0);
    result(1, 2, 0); /* an older term */
    ck_assert_uint_eq(reported(), 0);
}
END_TEST

START_TEST(failed_append)
{
    stub.append_rv = RAFT_IOERR;
    deliver_ae(3, 4, 2, 4, WRITE);
    tail = 6;
    result(1, 3, 0);
    ck_assert_uint_eq(reported(), 0);
}
END_TEST

START_TEST(other_destination)
{
    tail = 8;
    deliver_ae(3, 8, 0, 8, ANSWER_OTHER);
    ck_assert_uint_eq(stub.sent.server_id, 2);
    ck_assert_uint_eq(reported(), 0);
    result(1, 3, 0);
    ck_assert_uint_eq(reported(), 0);
}
END_TEST

START_TEST(proof_monotone)
{
    deliver_ae(3, 4, 4, 4, WRITE); /* proves 8 */
    tail = 8;
    deliver_ae(3, 2, 1, 4, ANSWER); /* a late, shorter one: proves 3 */
    ck_assert_uint_eq(reported(), 8);
    deliver_ae(4, 2, 0, 2, ANSWER); /* a new term starts over */
    ck_assert_uint_eq(reported(), 2);
}
END_TEST

START_TEST(install_snapshot)
{
    /* raft's own snapshot, outside any delivery: no proof. */
    struct raft_snapshot snap = {0};
    ck_assert_int_eq(
        guard.io.snapshot_put(&guard.io, 128, &put_req, &snap, NULL), 0);
    ck_assert_uint_eq(stub.last_trailing, 128);
    tail = 50;
    result(1, 3, 0);
    ck_assert_uint_eq(reported(), 0);
    /* Written: the result comes from the put's callback. */
    deliver_snapshot(3, 40, WRITE_SNAPSHOT);
    ck_assert_uint_eq(stub.last_trailing, 0);
    tail = 40;
    result(1, 3, 0);
    ck_assert_uint_eq(reported(), 40);
    /* Answered at once (raft already has it). */
    tail = 60;
    deliver_snapshot(4, 55, ANSWER);
    ck_assert_uint_eq(reported(), 55);
}
END_TEST

START_TEST(passthrough)
{
    stub.tick(&stub.io);
    ck_assert_ptr_eq(seen_io, &guard.io);
    deliver_ae(1, 0, 0, 0, IGNORE);
    ck_assert_ptr_eq(seen_io, &guard.io);
    ck_assert_uint_eq(guard.io.time(&guard.io), 42);
    stub.send_rv = RAFT_NOCONNECTION;
    ck_assert_int_eq(result(1, 1, 0), RAFT_NOCONNECTION);
    ck_assert_str_eq(guard.io.errmsg, "stub: send failed");
    stub.send_rv = 0;
    raft_closed = false;
    guard.io.close(&guard.io, script_close_cb);
    ck_assert(stub.closed && raft_closed);
    ck_assert_ptr_eq(seen_io, &guard.io);
    ck_assert_int_eq(ioguard_init(&guard, &stub.io, 1u << 7), RAFT_INVALID);
}
END_TEST

START_TEST(f1_off)
{
    setup_fixes(0);
    tail = 10;
    deliver_ae(3, 4, 0, 9, ANSWER);
    ck_assert_uint_eq(seen_commit, 9);
    ck_assert_uint_eq(reported(), 10);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("io_guard");
    TCase *tc = tcase_create("f1");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, commit_clamped);
    tcase_add_test(tc, sync_success);
    tcase_add_test(tc, async_append);
    tcase_add_test(tc, async_after_new_term);
    tcase_add_test(tc, ignored_request);
    tcase_add_test(tc, rejected);
    tcase_add_test(tc, no_proof_in_term);
    tcase_add_test(tc, failed_append);
    tcase_add_test(tc, other_destination);
    tcase_add_test(tc, proof_monotone);
    tcase_add_test(tc, install_snapshot);
    tcase_add_test(tc, passthrough);
    tcase_add_test(tc, f1_off);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
