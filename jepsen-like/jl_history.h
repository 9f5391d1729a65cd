/* jl_history.h - histories of register operations and the checks run on
 * them by the fault-injection harness (jepsen-like/checker.c, the unit
 * tests).
 *
 * A history is JSON lines, one event per line, exactly as the workload
 * writes them (docs/fault-testing.md has the whole format):
 *
 *   {"process":0,"type":"invoke","f":"cas","key":"a","expected":1,"value":2,
 *    "time_ns":260}
 *   {"process":0,"type":"ok","f":"cas","key":"a","time_ns":400}
 *
 * An invoke opens an operation of its process; the process's next `ok`
 * (took effect), `fail` (surely did not) or `info` (unknown) completes it.
 * An operation still open at the end is `info`. A process whose operation
 * ended `info` never appears again. Keys are independent registers that
 * start absent (null).
 *
 * Checks:
 *   - jl_check_linearizable(): Wing & Gong's search with Lowe's
 *     just-in-time linearization and memoization of (linearized set, state),
 *     per key; on failure it reports the smallest window of operations that
 *     cannot be ordered on its own;
 *   - jl_check_final(): every acknowledged write is visible in the final
 *     reads made after the run (loaded with jl_history_load_final());
 *   - jl_check_digests(): every replica reports the same state digest.
 *
 * Every loader bounds-checks its input and refuses anything malformed with
 * a message naming the line; nothing here aborts on bad input. */
#ifndef JL_HISTORY_H
#define JL_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Longest accepted line and key; a longer one is malformed input. */
#define JL_LINE_MAX 65536
#define JL_KEY_MAX  256

/* Size of the error buffers below. */
#define JL_ERRMSG_SIZE 512

enum jl_f { JL_READ = 0, JL_WRITE, JL_CAS };

enum jl_outcome {
    JL_OK = 0, /* took effect */
    JL_FAIL,   /* surely did not take effect */
    JL_INFO,   /* unknown: may take effect at any time after its invoke */
};

/* A register value: absent (null) or an integer. */
struct jl_value
{
    bool present;
    int64_t v;
};

/* Completion time of an operation that never completed (info or open). */
#define JL_NEVER UINT64_MAX

struct jl_op
{
    int64_t process;
    enum jl_f f;
    unsigned key;             /* index into jl_history.keys */
    struct jl_value expected; /* cas: the old value */
    struct jl_value value;    /* write, cas: the new value; read: read (ok) */
    bool has_value;           /* read: a value was read (only when ok) */
    enum jl_outcome outcome;
    bool open;            /* no completion line: counted as info */
    uint64_t invoke_ns;   /* stamped before sending */
    uint64_t complete_ns; /* stamped after the reply; JL_NEVER for info */
    unsigned invoke_line; /* 1-based line numbers, for messages */
    unsigned complete_line;
    unsigned node; /* a final read: the node it went through; else 0 */
};

struct jl_history
{
    struct jl_op *ops; /* owned */
    size_t n_ops, cap_ops;
    char **keys; /* owned, n_keys strings */
    size_t n_keys, cap_keys;
    /* Private: the processes seen and their open operation. */
    void *procs;
    void *key_index;
    unsigned lines;
    bool finished;
};

void jl_history_init(struct jl_history *h);
void jl_history_free(struct jl_history *h);

/* Parse one history line (without its newline; blank lines are skipped).
 * lineno is used in messages. Returns 0, or -1 with errmsg saying what is
 * wrong ("line 12: cas invoke without \"expected\""); the history is then
 * unchanged. */
int jl_history_add_line(struct jl_history *h, const char *line, size_t len,
                        unsigned lineno, char *errmsg);

/* Read a whole history from f (jl_history_add_line per line, then
 * jl_history_finish). Returns 0 or -1 with errmsg. */
int jl_history_load(struct jl_history *h, FILE *f, char *errmsg);

/* Close the history: operations still open become info. Idempotent. */
void jl_history_finish(struct jl_history *h);

/* Add the final reads made after the run, one JSON object per line:
 *   {"node":2,"key":"a","value":5,"invoke_ns":T0,"time_ns":T1}
 * (value null: absent), or {"node":2,"key":"a","error":"timeout: ..."}
 * when the read failed. Reads become ok read operations of fresh processes
 * (so the linearizability check covers them) marked with their node; failed
 * reads are counted in *failed (may be NULL) and written to report (may be
 * NULL). Keys not yet in the history are added. Returns 0 or -1 with
 * errmsg. Call after jl_history_finish(). */
int jl_history_load_final(struct jl_history *h, FILE *f, FILE *report,
                          unsigned *failed, char *errmsg);

/* --- Linearizability ----------------------------------------------------- */

enum jl_verdict {
    JL_LINEARIZABLE = 0,
    JL_NOT_LINEARIZABLE = 1,
    JL_UNKNOWN = 3, /* the search exceeded its budget: no verdict */
};

struct jl_limits
{
    /* Memoized configurations kept per key before giving up (JL_UNKNOWN).
     * 0: the default (50 million). */
    size_t max_configs;
};

struct jl_stats
{
    size_t ops;         /* operations checked (fail ones are left out) */
    size_t keys;        /* registers checked */
    size_t configs;     /* memoized configurations, all keys */
    size_t keys_failed; /* registers found not linearizable */
    size_t keys_unknown;
};

/* Check every key of h (finished). Writes one line per anomaly and the
 * window of operations that shows it to report (may be NULL). Returns the
 * worst verdict over all keys: NOT_LINEARIZABLE if any key is, else UNKNOWN
 * if any search ran out of budget, else LINEARIZABLE. stats may be NULL. */
enum jl_verdict jl_check_linearizable(const struct jl_history *h,
                                      const struct jl_limits *limits,
                                      FILE *report, struct jl_stats *stats);

/* Check one key only (index into h->keys); same contract. */
enum jl_verdict jl_check_key(const struct jl_history *h, unsigned key,
                             const struct jl_limits *limits, FILE *report,
                             struct jl_stats *stats);

/* --- Acknowledged writes survive ----------------------------------------- *
 * For every final read R of key K returning V: some write or cas W of K
 * with new value V, which took effect or may have (ok or info), invoked
 * before R completed, must not be superseded: no acknowledged (ok) write or
 * cas of K was invoked after W completed (an info W never completes) and
 * completed before R was invoked. V absent: no acknowledged write or cas of
 * K completed before R was invoked. Returns the number of violations ("lost
 * writes"), each written to report (may be NULL). */
unsigned jl_check_final(const struct jl_history *h, FILE *report);

/* --- Replica digests ------------------------------------------------------ *
 * f holds one JSON object per replica, a line each:
 *   {"node":1,"id":1,"digest":"hex","applied_index":N,...} (more fields are
 * allowed), or {"node":1,"error":"why"} when the replica gave no status.
 * Returns the number of problems found (digests that differ from the
 * majority digest, replicas without a digest), each written to report, or
 * -1 with errmsg on malformed input. *replicas (may be NULL) gets the
 * number of lines. */
int jl_check_digests(FILE *f, FILE *report, unsigned *replicas, char *errmsg);

/* "read", "write", "cas". */
const char *jl_f_name(enum jl_f f);

/* Print a value: "null" or the integer, into buf (>= 24 bytes). */
const char *jl_value_str(struct jl_value v, char *buf, size_t len);

#endif /* JL_HISTORY_H */
