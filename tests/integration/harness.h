/* harness.h - run real allotd processes on 127.0.0.1 from Check tests.
 *
 * A test calls harness_begin() first and harness_end() last. In between it
 * starts nodes (harness_cluster_start, harness_node_join), kills and
 * restarts them, runs allotctl, and talks the protocol to any node, either
 * through proto/client.h or over a raw socket.
 *
 * Where things are: each test gets its own directory, made with mkdtemp
 * under $TMPDIR (or /tmp) inside the run's root directory. It holds
 * nodeN/ (the data directory), nodeN.log (the node's stderr and stdout, all
 * its starts appended), ctl-K.{out,err} (each allotctl run), harness.log
 * (what the harness did, with times) and pids (every process started).
 * harness_end() removes it when the test passed; a failed test leaves it,
 * and harness_main() prints where it is.
 *
 * Cleanup never depends on the test getting to harness_end(). Every child
 * is started with PR_SET_PDEATHSIG = SIGKILL (it dies with the test
 * process, also when an assertion _exit()s it or Check's timeout kills it),
 * stays in the test's process group (which Check kills after each forked
 * test), and is listed in the directory's pids file, which harness_main()
 * reads after the run to kill anything still alive. Only those PIDs are
 * ever signalled.
 *
 * Waits are bounded (HARNESS_*_MS, tens of seconds) and poll: they never
 * assert that something happened quickly; tests print durations instead.
 * Sanitizer reports ("ERROR: AddressSanitizer", "runtime error:",
 * "LeakSanitizer") in a node's log or in allotctl's stderr fail the test.
 *
 * Environment: ALLOTD and ALLOTCTL (paths of the binaries, set by meson);
 * ALLOT_ITEST_KEEP=1 keeps every test directory; ALLOT_ITEST_LOG_LEVEL sets
 * the nodes' --log-level (default info). */
#ifndef ALLOT_HARNESS_H
#define ALLOT_HARNESS_H

#include <check.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "client.h"

#define HARNESS_NODES_MAX   8
#define HARNESS_MEMBERS_MAX 16

/* Upper bounds of the waits. Generous on purpose: a 2-core machine running
 * sanitized nodes is slow, and a bound only has to stop a hung test. */
#define HARNESS_LEADER_WAIT_MS   60000
#define HARNESS_CONVERGE_WAIT_MS 60000
#define HARNESS_EXIT_WAIT_MS     30000
#define HARNESS_CTL_TIMEOUT_MS   30000 /* allotctl --timeout-ms */
#define HARNESS_CALL_TIMEOUT_MS  30000
#define HARNESS_IO_WAIT_MS       20000 /* one reply on a raw socket */

/* --- Run and test lifecycle ----------------------------------------------- */

/* Run every test of s (forked, as Check does by default), then kill what
 * any failed test left running and print where its logs are. Returns the
 * process exit status for main(): 0 when every test passed. */
int harness_main(Suite *s);

/* Start a test: make its directory. Asserts ALLOTD and ALLOTCTL are set. */
void harness_begin(const char *test_name);

/* End a test: SIGTERM every node still running and assert each exits with
 * status 0 (clean shutdown), that no node died on its own with another
 * status, and that no log holds a sanitizer report; then remove the
 * directory. */
void harness_end(void);

const char *harness_dir(void);
/* Seconds since harness_begin(). */
double harness_elapsed(void);
/* Monotonic seconds, for measuring durations in tests. */
double harness_now(void);
/* A line on stdout and in harness.log, prefixed with the elapsed time. */
void harness_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Sleep ms milliseconds. */
void harness_sleep_ms(int ms);

/* A free TCP port on 127.0.0.1 (bind port 0, read it back, close). */
uint16_t harness_free_port(void);

/* --- Nodes ---------------------------------------------------------------- */

/* Extra allotd arguments for nodes started after this call (NULL-terminated
 * array of static strings, or NULL for none). */
void harness_set_node_args(const char *const *args);

/* Nodes started after this call run without --insecure when secure is true
 * (the default, false, starts every node with --insecure); a restart keeps
 * the node's mode. A secure new cluster needs --admin NAME=PUBKEY_HEX among
 * the node args. Reset by harness_begin(). */
void harness_set_secure(bool secure);

/* Nodes started after this call (harness_cluster_start, harness_node_join)
 * also get --http 127.0.0.1:PORT, a free port allocated with their others;
 * a restart keeps it. Reset (off) by harness_begin(). */
void harness_set_http(bool http);
/* Nodes started after this call also get --gossip 127.0.0.1:PORT (a free
 * port allocated with their others), --gossip-keyring with their own copy
 * of the keyring file at `keyring` (DIR/nodeN.keyring: a rotation rewrites
 * it) and --gossip-seeds with the first such node's gossip address. NULL:
 * off (the default; reset by harness_begin()). */
void harness_set_gossip(const char *keyring);

/* Sign every harness_call() from now on with id (copied), and so
 * harness_status(), harness_wait_leader() and harness_wait_converged(),
 * which a secure cluster refuses unsigned; NULL: unsigned again (the
 * default). Reset by harness_begin(). */
struct auth_identity;
void harness_set_identity(const struct auth_identity *id);

/* Start nodes 1..n as a new cluster (--cluster with all of them). Asserts
 * every process started. Ports are allocated together so they differ. */
void harness_cluster_start(unsigned n);

/* Start node id (not used yet) with --join at the client address of node
 * via. */
void harness_node_join(unsigned id, unsigned via);

/* Send sig to node id (by its PID). The node must be running. */
void harness_node_kill(unsigned id, int sig);

/* Start node id again on its data directory with the same arguments. The
 * previous process must have been reaped (harness_wait_exit). */
void harness_node_restart(unsigned id);

/* Wait (at most HARNESS_EXIT_WAIT_MS) for node id to exit and reap it.
 * Returns 0 and sets *status (waitpid's) or -1 if it is still running. */
int harness_wait_exit(unsigned id, int *status);

/* Started and not exited (reaps it if it has exited). */
bool harness_node_running(unsigned id);
pid_t harness_node_pid(unsigned id);
const char *harness_node_client_addr(unsigned id);
const char *harness_node_raft_addr(unsigned id);
const char *harness_node_log(unsigned id);
/* Node id's --gossip address and keyring file ("" without gossip). */
const char *harness_node_gossip_addr(unsigned id);
const char *harness_node_gossip_keyring(unsigned id);
/* Node id's --http address ("" without harness_set_http) and port (0). */
const char *harness_node_http_addr(unsigned id);
uint16_t harness_node_http_port(unsigned id);

/* Comma-separated client addresses of the running nodes, leaving out node
 * `except` (0: none). Valid until the next call. */
const char *harness_endpoints(unsigned except);

/* "exited 0", "killed by signal 9", ... for messages. Valid until the next
 * call. */
const char *harness_status_text(int status);

/* --- allotctl ------------------------------------------------------------- */

struct harness_ctl
{
    int status; /* exit status; -1 if it did not exit normally */
    char *out;  /* stdout, NUL-terminated, owned */
    char *err;  /* stderr, NUL-terminated, owned */
    double seconds;
};

/* Run allotctl --endpoints ENDPOINTS --timeout-ms HARNESS_CTL_TIMEOUT_MS
 * ARG... (NULL-terminated) and capture everything. endpoints NULL: all
 * running nodes. Asserts it ran and exited within its bound and that its
 * stderr holds no sanitizer report. Free with harness_ctl_free(). */
void harness_ctl(struct harness_ctl *r, const char *endpoints, ...)
    __attribute__((sentinel));
void harness_ctl_free(struct harness_ctl *r);

/* allotctl in the background (a watch, a write waiting on a validator):
 * started like harness_ctl() (same --endpoints and --timeout-ms, listed in
 * the pids file, dies with the test), waited for later. */
struct harness_bg
{
    pid_t pid;
    bool reaped;
    int status; /* waitpid's, once reaped */
    unsigned k; /* its ctl-K.{out,err} */
    double t0;
    char args[2048];
    char out_path[600];
    char err_path[600];
};

void harness_ctl_start(struct harness_bg *bg, const char *endpoints, ...)
    __attribute__((sentinel));
/* Has it exited (reaped here)? Never blocks. */
bool harness_ctl_done(struct harness_bg *bg);
/* Its stdout so far (owned, NUL-terminated; "" if none yet). */
char *harness_ctl_out_now(const struct harness_bg *bg);
/* Wait up to timeout_ms for it to exit: 0 and r filled as harness_ctl()
 * fills it (status -1 if it did not exit normally; its stderr checked for
 * sanitizer reports), or -1 if it still runs (r not filled). */
int harness_ctl_wait(struct harness_bg *bg, int timeout_ms,
                     struct harness_ctl *r);
/* SIGKILL it if it still runs, and reap it. */
void harness_ctl_stop(struct harness_bg *bg);

/* --- Protocol through proto/client.h -------------------------------------- */

/* A decoded reply, owning its bytes (unlike struct allot_reply, whose strings
 * point into the client's buffer). Destroy with harness_reply_destroy(). */
struct harness_reply
{
    msgpack_unpacked u;
    char *buf; /* owned copy of the bytes u points into */
    int code;  /* 0 or ALLOT_E... */
    uint64_t id;
    bool ok;
    char error[32];               /* code name when !ok ("conflict") */
    char message[256];            /* when !ok */
    const msgpack_object *result; /* when ok; points into u */
    size_t body_len;              /* raw replies: bytes in the frame body */
};

void harness_reply_destroy(struct harness_reply *rep);

/* Call op on node id only (no failover to other nodes), through
 * proto/client.h with its retries. Returns rep->code; destroy rep whatever
 * it returns. */
int harness_call(unsigned id, const char *op, allot_pack_fn pack, void *arg,
                 struct harness_reply *rep, int timeout_ms);

struct harness_member
{
    uint64_t id;
    char raft_addr[64];
    char role[16];
    char state[16];
    char client_addr[64]; /* "" when nil */
    bool has_match_index;
    uint64_t match_index;
};

/* cluster.status of one node, parsed. */
struct harness_status
{
    uint64_t id;
    char state[16];
    uint64_t leader; /* 0 when nil */
    uint64_t term;
    uint64_t commit_index;
    uint64_t applied_index;
    uint64_t last_index;
    uint64_t catalog_version;
    uint64_t quotas;
    bool ready;
    char digest[65]; /* "" unless asked for */
    unsigned n_members;
    struct harness_member members[HARNESS_MEMBERS_MAX];
};

/* cluster.status of node id. 0 or an ALLOT_E... code. */
int harness_status(unsigned id, bool digest, struct harness_status *st,
                   int timeout_ms);

/* Member `id` in st, or NULL. */
const struct harness_member *harness_member(const struct harness_status *st,
                                            uint64_t id);

/* Poll the running nodes until one reports itself leader with ready=true.
 * Returns its id, 0 if none did within timeout_ms. */
unsigned harness_wait_leader(int timeout_ms);

/* Poll until every running node has applied the leader's applied_index and
 * reports the same catalog_version and digest. On success fills *leader_st
 * (may be NULL) with the leader's status and returns 0; -1 on timeout. */
int harness_wait_converged(int timeout_ms, struct harness_status *leader_st);

/* --- Raw sockets ---------------------------------------------------------- */

/* A blocking TCP connection to node id's --http port; -1 on failure. */
int harness_http_connect(unsigned id);

/* A blocking TCP connection to node id's client port; -1 on failure. */
int harness_raw_connect(unsigned id);

/* Send all of buf (MSG_NOSIGNAL). 0, or -1 when the peer closed/reset. */
int harness_raw_send(int fd, const void *buf, size_t len);

/* Read one frame and decode it as a reply. 1: a reply; 0: the peer closed
 * the connection; -1: nothing within timeout_ms; -2: a frame that is not a
 * well-formed reply (the test should fail). Destroy rep in every case. */
int harness_raw_recv(int fd, int timeout_ms, struct harness_reply *rep);

/* Wait for the peer to close (EOF or reset), discarding what it sends.
 * 1 when closed, 0 on timeout. */
int harness_raw_wait_closed(int fd, int timeout_ms);

/* Send buf while reading replies, so neither side blocks on a full socket
 * buffer; calls cb for each reply (rep is destroyed after cb returns).
 * Stops after `want` replies, when the peer closes, or at timeout.
 * Returns the number of replies read; *closed tells whether the peer
 * closed; *bad counts frames that were not well-formed replies. */
typedef void (*harness_reply_cb)(void *arg, const struct harness_reply *rep);
unsigned harness_raw_exchange(int fd, const void *buf, size_t len,
                              unsigned want, int timeout_ms,
                              harness_reply_cb cb, void *arg, bool *closed,
                              unsigned *bad);

/* --- Other processes (allot-agent) ---------------------------------------- */

/* Start argv (argv[0] a path; NULL-terminated) as a helper process of this
 * test: stdout and stderr appended to DIR/NAME.log, dying with the test,
 * listed in the pids file like the nodes. Asserts it started; returns its
 * PID. harness_end() does not stop it: the test does, with
 * harness_proc_stop(). */
pid_t harness_proc_start(const char *name, char *const argv[]);

/* DIR/NAME.log of a helper process. Valid until the next call. */
const char *harness_proc_log(const char *name);

/* Send sig to pid (one harness_proc_start() returned) and wait up to
 * HARNESS_EXIT_WAIT_MS for it: 0 and *status (waitpid's) when it exited,
 * -1 if not (it is then SIGKILLed and reaped). */
int harness_proc_stop(pid_t pid, int sig, int *status);

/* Has it exited (reaped here, *status set)? Never blocks. */
bool harness_proc_exited(pid_t pid, int *status);

/* Fail the test if the log at path holds a sanitizer report. */
void harness_assert_log_clean(const char *path);

/* A blocking connection to the Unix stream socket at path, retried until
 * timeout_ms while the socket does not exist or refuses; -1 on failure. */
int harness_unix_connect(const char *path, int timeout_ms);

#endif /* ALLOT_HARNESS_H */
