/* session_repro.c - jepsen-session-repro: a deterministic reproduction, on
 * allot's own state machine (raft/raft_fsm.h), of the exactly-once flaw
 * the clock nemesis exposes (docs/fault-testing.md, "Findings").
 *
 * The state machine's clock is the largest leader wall clock seen in the
 * log; a client session idle for more than FSM_SESSION_TTL_MS by that clock
 * is forgotten. One entry from a leader whose wall clock runs more than ten
 * minutes ahead therefore forgets every session at once, and a write retried
 * after that entry - same (client, seq), as proto/client.h retries after a
 * lost reply - is applied again instead of answered from the session.
 *
 *   jepsen-session-repro
 *
 * Entries, as the leaders would propose them:
 *   t0          write rate=1                      (client 7, seq 1)
 *   t0 + 0.1 s  cas 1 -> 2: quota.set rate=2 if_version=V  (client 42, seq 1)
 *               applied; its reply is lost
 *   t0 + 11 min a new leader's first entry (its clock 11 minutes ahead)
 *   same        the cas retried: same (client 42, seq 1)
 * Correct: the retry is a duplicate and returns the first result (ok).
 * Flawed: it is executed again and answers `conflict`: the client reports
 * the cas failed although it took effect (a linearizability violation; a
 * retried blind write would apply twice).
 *
 * Exit status: 1 when the flaw shows, 0 when it does not, 2 on a setup
 * failure. */
#include <raft.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "quota.h"
#include "raft_fsm.h"

#define T0 1000000u

/* Apply one command stamped at time t; copy out its code and version. */
static int apply1(struct fsm *f, struct fsm_cmd *c, uint64_t t, int *code,
                  uint64_t *version, bool *duplicate)
{
    struct raft_buffer buf;
    if (fsm_batch_encode(c, 1, t, &buf) != 0) {
        return -1;
    }
    struct raft_fsm *rf = fsm_raft(f);
    void *result = NULL;
    int rv = rf->apply(rf, &buf, &result);
    raft_free(buf.base);
    const struct fsm_batch_result *b = result;
    if (rv != 0 || b == NULL || b->n != 1) {
        return -1;
    }
    *code = b->results[0].code;
    *version = b->results[0].version;
    *duplicate = b->results[0].duplicate;
    return 0;
}

static int set_cmd(struct fsm_cmd *c, const char *path, const char *kv)
{
    memset(c, 0, sizeof *c);
    c->type = FSM_CMD_QUOTA_SET;
    c->path = path;
    c->path_len = strlen(path);
    char msg[ALLOT_ERRMSG_SIZE];
    return quota_patch_parse_kv(&c->patch, kv, msg);
}

int main(void)
{
    struct fsm *f;
    if (fsm_init(&f) != 0) {
        return 2;
    }
    struct fsm_cmd c;
    int code;
    uint64_t v, v_rate1;
    bool dup;
    int bad = 0;
    bad |= set_cmd(&c, "jepsen", "kind=capacity");
    bad |= apply1(f, &c, T0, &code, &v, &dup);
    bad |= set_cmd(&c, "jepsen/k", "rate=1");
    c.client = 7;
    c.seq = c.ack = 1;
    bad |= apply1(f, &c, T0, &code, &v_rate1, &dup);

    struct fsm_cmd cas;
    bad |= set_cmd(&cas, "jepsen/k", "rate=2");
    cas.client = 42;
    cas.seq = cas.ack = 1;
    cas.has_if_version = true;
    cas.if_version = v_rate1;
    bad |= apply1(f, &cas, T0 + 100, &code, &v, &dup);
    if (bad != 0 || code != 0) {
        fprintf(stderr, "setup failed\n");
        fsm_close(f);
        return 2;
    }
    printf("cas 1->2 (client 42, seq 1) applied at t0+0.1 s: version %llu; "
           "sessions %u\n",
           (unsigned long long)v, fsm_session_count(f));

    struct fsm_cmd leader;
    memset(&leader, 0, sizeof leader);
    leader.type = FSM_CMD_LEADER;
    leader.node_id = 3;
    leader.node_addr = "10.0.0.3:7001";
    uint64_t skewed = T0 + 100 + 11ull * 60 * 1000;
    if (apply1(f, &leader, skewed, &code, &v, &dup) != 0) {
        fsm_close(f);
        return 2;
    }
    printf("an entry from a leader 11 minutes ahead: sessions %u\n",
           fsm_session_count(f));

    if (apply1(f, &cas, skewed + 2000, &code, &v, &dup) != 0) {
        fsm_close(f);
        return 2;
    }
    printf("the cas retried, same (client 42, seq 1): %s%s\n",
           code == 0 ? "ok" : allot_error_name(code),
           dup ? " (duplicate: answered from the session)" : "");
    bool flaw = !dup;
    printf("%s\n", flaw ? "FLAW PRESENT: a retried write was executed again "
                          "(not deduplicated) after a forward clock jump "
                          "forgot its session"
                        : "not reproduced: the retry was deduplicated");
    fsm_close(f);
    return flaw ? 1 : 0;
}
