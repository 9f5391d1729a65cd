/* bench_writes.c - committed quota writes per second on a real 3-node cluster.
 *
 * Happy path: start three allotd processes on free 127.0.0.1 ports with their
 * data on disk, wait until one of them is a ready leader that the other two
 * know, write every path once (bench/p0 .. bench/pN-1) so the catalog holds
 * --paths quotas, then for each concurrency level C of --inflight run a
 * closed loop: C connections, each with one quota.set outstanding (like wrk
 * with C connections), for --warmup seconds, then --seconds measured. Each
 * level prints writes/s, latency percentiles, errors, allotd CPU per write
 * (utime+stime of the three nodes from /proc/PID/stat over the measured
 * window), raft entries per second (applied_index of the leader), the
 * snapshots the leader took, how long its event loop was blocked (a `ping`
 * probe) and its resident memory. --repeat N repeats the whole run on a
 * fresh cluster and data, then prints the median and range of each figure.
 * --raft-nodelay (diagnostic) starts allotd with nodelay_preload.c.
 *
 * Failure modes, all of which make the exit status 1:
 *   - allotd exits early or no ready leader within STARTUP_MS: the tail of
 *     each node's log is printed;
 *   - a connection is refused or dropped, a reply is malformed or carries
 *     another id, a reply is an error, or a request is still unanswered
 *     DRAIN_MS after the measured window ends: counted as errors;
 *   - a node does not exit with status 0 within STOP_MS of SIGTERM: it gets
 *     SIGKILL and the run fails.
 * Only the processes started here are signalled, and only the directory
 * created here (mkdtemp under --dir) is removed, unless --keep or a failure
 * (then it is kept, with the node logs, and named on stderr). SIGINT or
 * SIGTERM to the benchmark stops the run and the cluster the same way. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "../lib/lib.h"
#include "../proto/client.h"
#include "../proto/wire.h"
#include "bench_util.h"

#ifndef BENCH_ALLOTD_DEFAULT
#define BENCH_ALLOTD_DEFAULT "allotd"
#endif
#ifndef BENCH_NODELAY_PRELOAD
#define BENCH_NODELAY_PRELOAD ""
#endif

#define NODES          3
#define LEVELS_MAX     16
#define REPEAT_MAX     20
#define EXTRA_ARGS_MAX 32
#define INFLIGHT_MAX   4096
/* Bounds on every wait, so a broken cluster never hangs the benchmark. */
#define STARTUP_MS    30000
#define CONNECT_MS    5000
#define FILL_MS       300000
#define DRAIN_MS      20000
#define STOP_MS       20000
#define GUARD_TICK_MS 100
/* Error replies printed in full; the rest are only counted. */
#define ERRORS_SHOWN 5
/* With --verbose, pings slower than this are listed as loop stalls. */
#define STALL_MS   15
#define EVENTS_MAX 256

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* --- Options ----------------------------------------------------------------
 */

struct opts
{
    const char *allotd;
    const char *dir;
    unsigned inflight[LEVELS_MAX];
    unsigned n_levels;
    uint64_t warmup_ms;
    uint64_t measure_ms;
    bool target_all;
    unsigned paths;
    const char *extra_str;
    char extra_buf[1024];
    char *extra[EXTRA_ARGS_MAX];
    unsigned n_extra;
    unsigned repeat;
    bool keep;
    bool verbose;
    const char *preload; /* LD_PRELOAD for allotd, or NULL */
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: bench_writes [--allotd PATH] [--dir DIR] "
            "[--inflight 1,16,64]\n"
            "                    [--seconds S] [--warmup S] "
            "[--target leader|all]\n"
            "                    [--paths N] [--allotd-args \"ARGS\"] "
            "[--repeat N] [--keep]\n"
            "\n"
            "  --allotd PATH       allotd binary (default: this build's)\n"
            "  --dir DIR           parent of the data directory, which is "
            "made with mkdtemp\n"
            "                      and removed at the end (default /var/tmp)\n"
            "  --inflight LIST     concurrency levels: connections, one "
            "write outstanding each\n"
            "  --seconds S         measured time per level (default 10)\n"
            "  --warmup S          unmeasured time before each level "
            "(default 2)\n"
            "  --target T          leader: all connections to the leader "
            "(default);\n"
            "                      all: spread over the 3 nodes (followers "
            "forward)\n"
            "  --paths N           distinct quota paths written round robin "
            "(default 10000)\n"
            "  --allotd-args ARGS  extra allotd flags, split on spaces "
            "(e.g. \"--snapshot-threshold 1024\")\n"
            "  --repeat N          whole runs on a fresh cluster (default "
            "1), then median [min-max]\n"
            "  --keep              keep the data directory\n"
            "  --verbose           list loop stalls (pings over %d ms) and "
            "snapshots with\n"
            "                      their time in the measured window\n"
            "  --raft-nodelay      diagnostic: run allotd with "
            "LD_PRELOAD=libnodelay_preload.so,\n"
            "                      which sets TCP_NODELAY on the TCP "
            "sockets allotd opens\n"
            "                      (raft's transport does not)\n",
            STALL_MS);
}

static int parse_seconds(const char *flag, const char *s, uint64_t *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0.0) || v > 3600.0) {
        fprintf(stderr,
                "error: invalid: %s must be 0 to 3600 seconds, got "
                "\"%s\"\n",
                flag, s);
        return -1;
    }
    *ms = (uint64_t)llround(v * 1000.0);
    return 0;
}

static int parse_unsigned(const char *flag, const char *s, unsigned long min,
                          unsigned long max, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || s[0] == '\0' || s[0] == '-' || *end != '\0' || v < min ||
        v > max) {
        fprintf(stderr, "error: invalid: %s must be %lu to %lu, got \"%s\"\n",
                flag, min, max, s);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static int parse_levels(const char *s, struct opts *o)
{
    char copy[256];
    if (snprintf(copy, sizeof copy, "%s", s) >= (int)sizeof copy) {
        fprintf(stderr, "error: invalid: --inflight list too long\n");
        return -1;
    }
    o->n_levels = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        if (o->n_levels == LEVELS_MAX) {
            fprintf(stderr, "error: invalid: at most %d levels in --inflight\n",
                    LEVELS_MAX);
            return -1;
        }
        if (parse_unsigned("--inflight", tok, 1, INFLIGHT_MAX,
                           &o->inflight[o->n_levels]) != 0) {
            return -1;
        }
        o->n_levels++;
    }
    if (o->n_levels == 0) {
        fprintf(stderr, "error: invalid: --inflight needs at least one "
                        "level\n");
        return -1;
    }
    return 0;
}

static int split_extra(struct opts *o)
{
    if (snprintf(o->extra_buf, sizeof o->extra_buf, "%s", o->extra_str) >=
        (int)sizeof o->extra_buf) {
        fprintf(stderr, "error: invalid: --allotd-args too long\n");
        return -1;
    }
    char *save = NULL;
    for (char *tok = strtok_r(o->extra_buf, " \t", &save); tok != NULL;
         tok = strtok_r(NULL, " \t", &save)) {
        if (o->n_extra == EXTRA_ARGS_MAX) {
            fprintf(stderr,
                    "error: invalid: at most %d words in "
                    "--allotd-args\n",
                    EXTRA_ARGS_MAX);
            return -1;
        }
        o->extra[o->n_extra++] = tok;
    }
    return 0;
}

/* --- The cluster
 * ---------------------------------------------------------------- */

/* One allotd of the cluster. */
struct node
{
    struct bench_proc proc;
    unsigned id;
    char name[16]; /* "allotd n1" */
    char raft_addr[32];
    char client_addr[32];
    char dir[PATH_MAX / 2];
};

struct cluster
{
    char root[PATH_MAX / 4]; /* made by mkdtemp; "" when none */
    struct node nodes[NODES];
    unsigned leader; /* index into nodes */
};

static int node_spawn(const struct opts *o, struct node *n,
                      const char *cluster_arg)
{
    char id[16];
    snprintf(id, sizeof id, "%u", n->id);
    char *argv[16 + EXTRA_ARGS_MAX];
    unsigned argc = 0;
    argv[argc++] = (char *)o->allotd;
    argv[argc++] = "--id";
    argv[argc++] = id;
    argv[argc++] = "--data-dir";
    argv[argc++] = n->dir;
    argv[argc++] = "--raft";
    argv[argc++] = n->raft_addr;
    argv[argc++] = "--client";
    argv[argc++] = n->client_addr;
    argv[argc++] = "--cluster";
    argv[argc++] = (char *)cluster_arg;
    argv[argc++] = "--insecure";
    argv[argc++] = "--log-level";
    argv[argc++] = "warn";
    for (unsigned i = 0; i < o->n_extra; i++) {
        argv[argc++] = o->extra[i];
    }
    argv[argc] = NULL;
    return bench_proc_spawn(&n->proc, argv, o->preload);
}

static int cluster_start(const struct opts *o, struct cluster *cl)
{
    memset(cl, 0, sizeof *cl);
    if (snprintf(cl->root, sizeof cl->root, "%s/allot-bench-XXXXXX", o->dir) >=
            (int)sizeof cl->root ||
        mkdtemp(cl->root) == NULL) {
        fprintf(stderr, "error: io: cannot create a directory under %s: %s\n",
                o->dir, strerror(errno));
        cl->root[0] = '\0';
        return -1;
    }
    uint16_t ports[2 * NODES];
    if (bench_pick_ports(ports, 2 * NODES) != 0) {
        fprintf(stderr, "error: io: cannot find free ports on 127.0.0.1\n");
        return -1;
    }
    char cluster_arg[256];
    size_t off = 0;
    for (unsigned i = 0; i < NODES; i++) {
        struct node *n = &cl->nodes[i];
        n->id = i + 1;
        snprintf(n->name, sizeof n->name, "allotd n%u", n->id);
        n->proc.name = n->name;
        snprintf(n->raft_addr, sizeof n->raft_addr, "127.0.0.1:%u",
                 ports[2 * i]);
        snprintf(n->client_addr, sizeof n->client_addr, "127.0.0.1:%u",
                 ports[2 * i + 1]);
        snprintf(n->dir, sizeof n->dir, "%s/n%u", cl->root, n->id);
        snprintf(n->proc.log, sizeof n->proc.log, "%s/n%u.log", cl->root,
                 n->id);
        off += (size_t)snprintf(cluster_arg + off, sizeof cluster_arg - off,
                                "%s%u=%s", i ? "," : "", n->id, n->raft_addr);
    }
    for (unsigned i = 0; i < NODES; i++) {
        if (node_spawn(o, &cl->nodes[i], cluster_arg) != 0) {
            return -1;
        }
    }
    return 0;
}

/* What one node says about itself in cluster.status. */
struct node_view
{
    bool answered;
    bool leading_ready;
    uint64_t leader;
    bool leader_addr_known;
};

static void status_view(const msgpack_object *res, struct node_view *v)
{
    const char *state;
    size_t state_len;
    bool ready = false;
    const msgpack_object *members = wire_map_get(res, "members");
    memset(v, 0, sizeof *v);
    v->answered = true;
    if (wire_get_str(res, "state", true, &state, &state_len, NULL) != 0 ||
        wire_get_u64(res, "leader", true, &v->leader, NULL) != 0) {
        v->leader = 0; /* nil while there is no leader */
        return;
    }
    wire_get_bool(res, "ready", false, &ready, NULL);
    v->leading_ready =
        ready && state_len == 6 && memcmp(state, "leader", 6) == 0;
    if (members == NULL || members->type != MSGPACK_OBJECT_ARRAY) {
        return;
    }
    for (uint32_t i = 0; i < members->via.array.size; i++) {
        const msgpack_object *m = &members->via.array.ptr[i];
        uint64_t id;
        const char *addr;
        size_t len;
        if (wire_get_u64(m, "id", true, &id, NULL) == 0 && id == v->leader &&
            wire_get_str(m, "client_addr", true, &addr, &len, NULL) == 0) {
            v->leader_addr_known = true;
        }
    }
}

/* Wait until one node is a ready leader and every node names it and knows
 * its client address (so followers can forward). */
static void pack_parent(msgpack_packer *pk, void *arg)
{
    (void)arg;
    msgpack_pack_map(pk, 2);
    wire_pack_kv_str(pk, "path", "bench");
    wire_pack_str(pk, "fields");
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "kind", "capacity");
}

/* The benchmark's quotas live under "bench", which must exist first. A
 * capacity parent puts no bound on its rate children. */
static int create_parent(struct cluster *cl)
{
    struct allot_client *c;
    char msg[ALLOT_ERRMSG_SIZE];
    if (allot_client_open(cl->nodes[cl->leader].client_addr, 10000, &c, msg) !=
        0) {
        fprintf(stderr, "error: %s\n", msg);
        return -1;
    }
    struct allot_reply rep;
    int rv = allot_client_call(c, "quota.set", pack_parent, NULL, &rep);
    if (rv != 0) {
        fprintf(stderr, "error: %s: creating bench: %s\n", allot_error_name(rv),
                rep.message);
    }
    allot_reply_destroy(&rep);
    allot_client_close(c);
    return rv == 0 ? 0 : -1;
}

static int cluster_wait_ready(struct cluster *cl)
{
    struct allot_client *clients[NODES] = {NULL};
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = -1;
    for (unsigned i = 0; i < NODES; i++) {
        if (allot_client_open(cl->nodes[i].client_addr, 500, &clients[i],
                              msg) != 0) {
            fprintf(stderr, "error: %s\n", msg);
            goto out;
        }
    }
    uint64_t deadline = clock_mono_ns() + STARTUP_MS * 1000000ull;
    while (!interrupted && clock_mono_ns() < deadline) {
        struct node_view v[NODES];
        for (unsigned i = 0; i < NODES; i++) {
            if (bench_proc_gone(&cl->nodes[i].proc)) {
                char how[64];
                bench_proc_describe_exit(&cl->nodes[i].proc, how, sizeof how);
                fprintf(stderr,
                        "error: unavailable: allotd n%u exited (%s) "
                        "during startup\n",
                        cl->nodes[i].id, how);
                bench_proc_print_log_tail(&cl->nodes[i].proc);
                goto out;
            }
            struct allot_reply rep;
            memset(&v[i], 0, sizeof v[i]);
            if (allot_client_call(clients[i], "cluster.status", NULL, NULL,
                                  &rep) == 0 &&
                rep.result != NULL) {
                status_view(rep.result, &v[i]);
            }
            allot_reply_destroy(&rep);
        }
        for (unsigned i = 0; i < NODES; i++) {
            if (!v[i].leading_ready || v[i].leader != cl->nodes[i].id) {
                continue;
            }
            bool agreed = true;
            for (unsigned j = 0; j < NODES; j++) {
                agreed = agreed && v[j].answered &&
                         v[j].leader == cl->nodes[i].id &&
                         v[j].leader_addr_known;
            }
            if (agreed) {
                cl->leader = i;
                rv = 0;
                goto out;
            }
        }
        usleep(50000);
    }
    if (!interrupted) {
        fprintf(stderr,
                "error: timeout: no ready leader known to all nodes "
                "within %d ms\n",
                STARTUP_MS);
        for (unsigned i = 0; i < NODES; i++) {
            bench_proc_print_log_tail(&cl->nodes[i].proc);
        }
    }
out:
    for (unsigned i = 0; i < NODES; i++) {
        if (clients[i] != NULL) {
            allot_client_close(clients[i]);
        }
    }
    return rv;
}

/* SIGTERM every node, wait for exit status 0 (SIGKILL after STOP_MS). */
static int cluster_stop(struct cluster *cl)
{
    struct bench_proc procs[NODES];
    for (unsigned i = 0; i < NODES; i++) {
        procs[i] = cl->nodes[i].proc;
    }
    int rv = bench_proc_stop_all(procs, NODES, STOP_MS, false);
    for (unsigned i = 0; i < NODES; i++) {
        cl->nodes[i].proc = procs[i];
    }
    return rv;
}

static void cluster_remove_dir(struct cluster *cl)
{
    if (cl->root[0] != '\0') {
        bench_remove_tree(cl->root);
        cl->root[0] = '\0';
    }
}

/* --- One load run on the loop
 * ------------------------------------------------------ */

enum phase {
    PH_CONNECT = 0,
    PH_FILL, /* write each path once, unmeasured */
    PH_WARMUP,
    PH_MEASURE,
    PH_DRAIN, /* no new requests; waiting for the last replies */
    PH_CLOSING,
};

struct run;

struct bconn
{
    struct run *run;
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    struct wire_rbuf rbuf;
    msgpack_sbuffer out; /* the request in flight (one at a time) */
    uint64_t client_id;
    uint64_t seq; /* of the request in flight, or the last one */
    uint64_t req_id;
    uint64_t sent_ns;
    bool is_probe;
    bool opened; /* uv_tcp_init done: the handle must be closed */
    bool connected;
    bool writing; /* uv_write not yet called back */
    bool waiting; /* request sent, reply not yet in */
    bool closing;
};

/* The probe is one more connection, to the leader. cluster.status at the
 * start and end of the measured window gives the leader's applied_index,
 * hence raft entries per second (and writes per entry). In between it sends
 * `ping` every PING_MS: a ping is answered on the leader's event loop
 * without touching raft, so its round trip shows how long the loop was
 * blocked (a snapshot taken on the loop, a long apply) as opposed to writes
 * waiting for the disk or the followers. */
enum probe_kind { PROBE_IDLE = 0, PROBE_PING, PROBE_T0, PROBE_T1 };
#define PING_MS 5

struct run
{
    uv_loop_t loop;
    const struct opts *o;
    struct cluster *cl;
    enum phase phase;
    bool fill;
    unsigned n_conns;
    struct bconn *conns;
    struct bconn probe;
    enum probe_kind probe_kind; /* in flight */
    enum probe_kind probe_due;  /* status to send once the probe is idle */
    uv_timer_t ping_timer;
    uint64_t *ping_ns; /* round trips of pings answered in the window */
    size_t n_ping, cap_ping;
    /* Snapshots: new snapshot files in the leader's raft directory, looked
     * for every GUARD_TICK_MS. */
    char snap_dir[PATH_MAX];
    uint64_t snap_last_index;
    unsigned snapshots; /* seen during the measured window */
    /* --verbose: stalls and snapshots in the window, in time order. */
    struct
    {
        uint64_t at_ns;
        bool snapshot;
        uint64_t value; /* ping ns, or snapshot index */
    } events[EVENTS_MAX];
    unsigned n_events;
    unsigned connected;
    unsigned open_handles;
    uv_timer_t phase_timer;
    uv_timer_t guard_timer;
    uint64_t phase_deadline_ns; /* 0: the phase timer bounds the phase */
    uint64_t next_path;
    /* Measured window. */
    uint64_t t0_ns, t1_ns;
    uint64_t cpu0, cpu1;
    double self0, self1;
    uint64_t applied0, applied1;
    bool have_applied0, have_applied1;
    uint64_t *lat_ns;
    size_t n_lat, cap_lat;
    uint64_t completed;
    /* Problems (any phase). */
    uint64_t errors;
    unsigned shown;
    bool aborted;
};

static void run_finish(struct run *r);
static void conn_send_next(struct bconn *c);

static void run_error(struct run *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void run_error(struct run *r, const char *fmt, ...)
{
    r->errors++;
    if (r->shown++ >= ERRORS_SHOWN) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t cluster_cpu_ticks(const struct cluster *cl)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < NODES; i++) {
        t += bench_proc_cpu_ticks(cl->nodes[i].proc.pid);
    }
    return t;
}

static bool run_busy(const struct run *r)
{
    for (unsigned i = 0; i < r->n_conns; i++) {
        if (r->conns[i].waiting && !r->conns[i].closing) {
            return true;
        }
    }
    return r->probe.waiting && !r->probe.closing;
}

static void run_check_done(struct run *r)
{
    bool fill_done = r->phase == PH_FILL && r->next_path >= r->o->paths;
    if ((r->phase == PH_DRAIN || fill_done) && !run_busy(r) &&
        r->probe_kind == PROBE_IDLE && r->probe_due == PROBE_IDLE) {
        run_finish(r);
    }
}

static void handle_close_cb(uv_handle_t *h)
{
    struct run *r = h->data;
    if (h->type == UV_TCP) {
        r = ((struct bconn *)h->data)->run;
    }
    r->open_handles--;
}

static void conn_close(struct bconn *c)
{
    if (c->opened && !c->closing) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, handle_close_cb);
    }
}

/* The connection broke: what it had in flight is lost. */
static void conn_fail(struct bconn *c, const char *why)
{
    struct run *r = c->run;
    if (c->closing) {
        return;
    }
    run_error(r, "unavailable: connection %s: %s",
              c->is_probe ? "(probe)" : "to the cluster", why);
    c->waiting = false;
    conn_close(c);
    if (c->is_probe) {
        r->probe_kind = PROBE_IDLE;
        r->probe_due = PROBE_IDLE;
    }
    run_check_done(r);
}

static void write_cb(uv_write_t *w, int status)
{
    struct bconn *c = w->data;
    c->writing = false;
    if (status != 0) {
        conn_fail(c, uv_strerror(status));
        return;
    }
    if (!c->is_probe) {
        conn_send_next(c);
    }
}

static void conn_send_frame(struct bconn *c)
{
    uv_buf_t buf = uv_buf_init(c->out.data, (unsigned)c->out.size);
    c->write.data = c;
    c->writing = true;
    c->waiting = true;
    c->sent_ns = clock_mono_ns();
    int rv = uv_write(&c->write, (uv_stream_t *)&c->tcp, &buf, 1, write_cb);
    if (rv != 0) {
        c->writing = false;
        conn_fail(c, uv_strerror(rv));
    }
}

/* Pack one quota.set. Its "fields" map is 65 bytes of msgpack: kind, rate,
 * burst, unit and on_exceed, rate and burst varying with seq. */
static void pack_write(struct bconn *c, uint64_t path_index)
{
    char path[32];
    msgpack_packer pk;
    c->out.size = 0;
    wire_frame_start(&c->out, &pk);
    msgpack_pack_map(&pk, 6);
    wire_pack_kv_u64(&pk, "id", c->req_id);
    wire_pack_kv_str(&pk, "op", "quota.set");
    wire_pack_str(&pk, "args");
    msgpack_pack_map(&pk, 2);
    snprintf(path, sizeof path, "bench/p%" PRIu64, path_index);
    wire_pack_kv_str(&pk, "path", path);
    wire_pack_str(&pk, "fields");
    msgpack_pack_map(&pk, 5);
    wire_pack_kv_str(&pk, "kind", "rate");
    wire_pack_str(&pk, "rate");
    msgpack_pack_double(&pk, 100.0 + (double)(c->seq % 1000));
    wire_pack_kv_u64(&pk, "burst", 1000 + c->seq % 1000);
    wire_pack_kv_str(&pk, "unit", "requests");
    wire_pack_kv_str(&pk, "on_exceed", "reject");
    wire_pack_kv_u64(&pk, "client", c->client_id);
    wire_pack_kv_u64(&pk, "seq", c->seq);
    /* One request in flight per client: every earlier seq is answered. */
    wire_pack_kv_u64(&pk, "ack", c->seq);
    wire_frame_finish(&c->out);
}

static void conn_send_next(struct bconn *c)
{
    struct run *r = c->run;
    if (c->closing || c->writing || c->waiting) {
        return;
    }
    if (r->phase != PH_FILL && r->phase != PH_WARMUP &&
        r->phase != PH_MEASURE) {
        return;
    }
    uint64_t path;
    if (r->phase == PH_FILL) {
        if (r->next_path >= r->o->paths) {
            return;
        }
        path = r->next_path++;
    } else {
        path = r->next_path++ % r->o->paths;
    }
    c->seq++;
    c->req_id++;
    pack_write(c, path);
    conn_send_frame(c);
}

/* Send a ping or a cluster.status (T0, T1) on the probe. A status asked for
 * while the probe is busy goes out when its reply arrives. */
static void probe_send(struct run *r, enum probe_kind kind)
{
    struct bconn *c = &r->probe;
    if (c->closing) {
        return;
    }
    if (c->waiting || c->writing) {
        if (kind != PROBE_PING) {
            r->probe_due = kind;
        }
        return;
    }
    msgpack_packer pk;
    r->probe_kind = kind;
    c->req_id++;
    c->out.size = 0;
    wire_frame_start(&c->out, &pk);
    msgpack_pack_map(&pk, 3);
    wire_pack_kv_u64(&pk, "id", c->req_id);
    wire_pack_kv_str(&pk, "op", kind == PROBE_PING ? "ping" : "cluster.status");
    wire_pack_str(&pk, "args");
    msgpack_pack_map(&pk, 0);
    wire_frame_finish(&c->out);
    conn_send_frame(c);
}

static void event_add(struct run *r, uint64_t at, bool snapshot, uint64_t value)
{
    if (r->o->verbose && r->n_events < EVENTS_MAX) {
        r->events[r->n_events].at_ns = at;
        r->events[r->n_events].snapshot = snapshot;
        r->events[r->n_events].value = value;
        r->n_events++;
    }
}

/* Highest snapshot index in dir ("snapshot-TERM-INDEX-TIMESTAMP" files). */
static uint64_t snapshot_last_index(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        return 0;
    }
    uint64_t best = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        unsigned long long term, index, ts;
        int used = 0;
        if (sscanf(e->d_name, "snapshot-%llu-%llu-%llu%n", &term, &index, &ts,
                   &used) == 3 &&
            e->d_name[used] == '\0' && index > best) {
            best = index;
        }
    }
    closedir(d);
    return best;
}

static void snapshot_poll(struct run *r)
{
    uint64_t idx = snapshot_last_index(r->snap_dir);
    if (idx > r->snap_last_index) {
        if (r->phase == PH_MEASURE) {
            r->snapshots++;
            event_add(r, clock_mono_ns(), true, idx);
        }
        r->snap_last_index = idx;
    }
}

static void probe_reply(struct bconn *c, const struct wire_reply *rep,
                        uint64_t now)
{
    struct run *r = c->run;
    uint64_t applied;
    enum probe_kind kind = r->probe_kind;
    r->probe_kind = PROBE_IDLE;
    if (kind == PROBE_PING) {
        if (rep->code != 0) {
            run_error(r, "%s: ping failed", allot_error_name(rep->code));
        } else if (r->phase == PH_MEASURE) {
            bench_samples_push(&r->ping_ns, &r->n_ping, &r->cap_ping,
                               now - c->sent_ns);
            if (now - c->sent_ns > STALL_MS * 1000000ull) {
                event_add(r, c->sent_ns, false, now - c->sent_ns);
            }
        }
    } else if (rep->code != 0 || rep->result == NULL ||
               wire_get_u64(rep->result, "applied_index", true, &applied,
                            NULL) != 0) {
        run_error(r, "protocol: cluster.status reply without applied_index");
    } else if (kind == PROBE_T0) {
        r->applied0 = applied;
        r->have_applied0 = true;
    } else if (kind == PROBE_T1) {
        r->applied1 = applied;
        r->have_applied1 = true;
    }
    if (r->probe_due != PROBE_IDLE) {
        enum probe_kind due = r->probe_due;
        r->probe_due = PROBE_IDLE;
        probe_send(r, due);
    }
}

static void ping_timer_cb(uv_timer_t *t)
{
    struct run *r = t->data;
    if ((r->phase == PH_WARMUP || r->phase == PH_MEASURE) &&
        r->probe_kind == PROBE_IDLE && r->probe_due == PROBE_IDLE) {
        probe_send(r, PROBE_PING);
    }
}

static void handle_reply(struct bconn *c, const char *body, size_t len)
{
    struct run *r = c->run;
    uint64_t now = clock_mono_ns();
    char msg[ALLOT_ERRMSG_SIZE] = "";
    msgpack_unpacked u;
    struct wire_reply rep;
    msgpack_unpacked_init(&u);
    if (wire_unpack(body, len, &u, msg) != 0 ||
        wire_reply_decode(&u.data, &rep, msg) != 0) {
        msgpack_unpacked_destroy(&u);
        conn_fail(c, "malformed reply");
        return;
    }
    if (!c->waiting || rep.id != c->req_id) {
        msgpack_unpacked_destroy(&u);
        conn_fail(c, "reply for a request not in flight");
        return;
    }
    c->waiting = false;
    if (c->is_probe) {
        probe_reply(c, &rep, now);
    } else if (rep.code != 0) {
        run_error(r, "%s: quota.set seq %" PRIu64 ": %.*s",
                  allot_error_name(rep.code), c->seq, (int)rep.message_len,
                  rep.message != NULL ? rep.message : "");
    } else if (r->phase == PH_MEASURE) {
        r->completed++;
        bench_samples_push(&r->lat_ns, &r->n_lat, &r->cap_lat,
                           now - c->sent_ns);
    }
    msgpack_unpacked_destroy(&u);
    if (!c->is_probe) {
        conn_send_next(c);
    }
    run_check_done(r);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct bconn *c = h->data;
    char *tail;
    size_t avail;
    (void)suggested;
    if (wire_rbuf_reserve(&c->rbuf, 16384, &tail, &avail) != 0) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf =
        uv_buf_init(tail, (unsigned)(avail > UINT32_MAX ? UINT32_MAX : avail));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct bconn *c = s->data;
    (void)buf;
    if (nread < 0) {
        conn_fail(c, nread == UV_EOF ? "closed by the server"
                                     : uv_strerror((int)nread));
        return;
    }
    c->rbuf.len += (size_t)nread;
    for (;;) {
        const char *body;
        size_t len;
        int rv = wire_rbuf_next(&c->rbuf, &body, &len);
        if (rv == 0) {
            break;
        }
        if (rv < 0) {
            conn_fail(c, "reply frame too large");
            return;
        }
        handle_reply(c, body, len);
        if (c->closing) {
            return;
        }
    }
}

static void phase_start_load(struct run *r);

static void connect_cb(uv_connect_t *req, int status)
{
    struct bconn *c = req->data;
    struct run *r = c->run;
    if (status != 0) {
        conn_fail(c, uv_strerror(status));
        run_finish(r);
        return;
    }
    c->connected = true;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    if (++r->connected == r->n_conns + 1 && r->phase == PH_CONNECT) {
        phase_start_load(r);
    }
}

static void phase_timer_cb(uv_timer_t *t)
{
    struct run *r = t->data;
    if (r->phase == PH_WARMUP) {
        r->phase = PH_MEASURE;
        r->t0_ns = clock_mono_ns();
        r->cpu0 = cluster_cpu_ticks(r->cl);
        r->self0 = bench_self_cpu_s();
        probe_send(r, PROBE_T0);
        uv_timer_start(&r->phase_timer, phase_timer_cb, r->o->measure_ms, 0);
    } else if (r->phase == PH_MEASURE) {
        r->phase = PH_DRAIN;
        r->t1_ns = clock_mono_ns();
        r->cpu1 = cluster_cpu_ticks(r->cl);
        r->self1 = bench_self_cpu_s();
        probe_send(r, PROBE_T1);
        r->phase_deadline_ns = r->t1_ns + DRAIN_MS * 1000000ull;
        run_check_done(r);
    }
}

static void phase_start_load(struct run *r)
{
    uint64_t now = clock_mono_ns();
    if (r->fill) {
        r->phase = PH_FILL;
        r->phase_deadline_ns = now + FILL_MS * 1000000ull;
    } else {
        r->phase = PH_WARMUP;
        r->phase_deadline_ns = 0;
        uv_timer_start(&r->phase_timer, phase_timer_cb, r->o->warmup_ms, 0);
        uv_timer_start(&r->ping_timer, ping_timer_cb, PING_MS, PING_MS);
    }
    for (unsigned i = 0; i < r->n_conns; i++) {
        conn_send_next(&r->conns[i]);
    }
}

static void guard_cb(uv_timer_t *t)
{
    struct run *r = t->data;
    uint64_t now = clock_mono_ns();
    snapshot_poll(r);
    if (interrupted) {
        run_error(r, "interrupted");
        r->aborted = true;
        run_finish(r);
        return;
    }
    for (unsigned i = 0; i < NODES; i++) {
        if (bench_proc_gone(&r->cl->nodes[i].proc)) {
            run_error(r, "unavailable: allotd n%u exited during the run",
                      r->cl->nodes[i].id);
            r->aborted = true;
            run_finish(r);
            return;
        }
    }
    if (r->phase_deadline_ns != 0 && now > r->phase_deadline_ns) {
        unsigned stuck = 0;
        for (unsigned i = 0; i < r->n_conns; i++) {
            stuck += r->conns[i].waiting && !r->conns[i].closing;
        }
        run_error(r, "timeout: %s not done in time; %u requests unanswered",
                  r->phase == PH_CONNECT ? "connecting"
                  : r->phase == PH_FILL  ? "filling the catalog"
                                         : "draining",
                  stuck);
        r->errors += stuck > 0 ? stuck - 1 : 0;
        r->aborted = true;
        run_finish(r);
    }
}

/* Close every handle; uv_run returns once they are closed. */
static void run_finish(struct run *r)
{
    if (r->phase == PH_CLOSING) {
        return;
    }
    r->phase = PH_CLOSING;
    for (unsigned i = 0; i < r->n_conns; i++) {
        conn_close(&r->conns[i]);
    }
    conn_close(&r->probe);
    uv_close((uv_handle_t *)&r->phase_timer, handle_close_cb);
    uv_close((uv_handle_t *)&r->guard_timer, handle_close_cb);
    uv_close((uv_handle_t *)&r->ping_timer, handle_close_cb);
}

static int conn_open(struct run *r, struct bconn *c, const char *addr)
{
    struct sockaddr_in sa;
    char why[160];
    c->run = r;
    c->client_id = lib_random_u64();
    wire_rbuf_init(&c->rbuf);
    msgpack_sbuffer_init(&c->out);
    uv_tcp_init(&r->loop, &c->tcp);
    c->opened = true;
    r->open_handles++;
    c->tcp.data = c;
    c->connect.data = c;
    if (addr_parse(addr, &sa, why, sizeof why) != 0) {
        run_error(r, "invalid: %s", why);
        conn_close(c);
        return -1;
    }
    int rv = uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&sa,
                            connect_cb);
    if (rv != 0) {
        run_error(r, "unavailable: connect to %s: %s", addr, uv_strerror(rv));
        conn_close(c);
        return -1;
    }
    return 0;
}

struct level_result
{
    unsigned inflight;
    double wps;
    double p50_ms, p90_ms, p99_ms, p999_ms, max_ms;
    double ping_p99_ms, ping_max_ms; /* leader loop responsiveness */
    double snapshots;                /* taken by the leader in the window */
    uint64_t writes;
    uint64_t errors;
    double cpu_us_per_write;  /* allotd, all three nodes */
    double self_us_per_write; /* this load generator */
    double entries_per_s;
    double writes_per_entry;
    double leader_rss_mb, leader_hwm_mb;
};

/* One load run: C connections (and a probe to the leader), either filling
 * the catalog (fill) or warm-up + measured window. Returns the number of
 * errors (0 is success); *res is filled for measured runs. */
static uint64_t run_load(const struct opts *o, struct cluster *cl,
                         unsigned inflight, bool fill, struct level_result *res)
{
    struct run *r = calloc(1, sizeof *r);
    if (r == NULL) {
        fprintf(stderr, "error: nomem: out of memory\n");
        return 1;
    }
    r->o = o;
    r->cl = cl;
    r->fill = fill;
    r->n_conns = inflight;
    r->conns = calloc(inflight, sizeof *r->conns);
    if (r->conns == NULL || uv_loop_init(&r->loop) != 0) {
        fprintf(stderr, "error: nomem: out of memory\n");
        free(r->conns);
        free(r);
        return 1;
    }
    uv_timer_init(&r->loop, &r->phase_timer);
    uv_timer_init(&r->loop, &r->guard_timer);
    uv_timer_init(&r->loop, &r->ping_timer);
    r->phase_timer.data = r->guard_timer.data = r->ping_timer.data = r;
    r->open_handles = 3;
    r->phase_deadline_ns = clock_mono_ns() + CONNECT_MS * 1000000ull;
    uv_timer_start(&r->guard_timer, guard_cb, GUARD_TICK_MS, GUARD_TICK_MS);

    snprintf(r->snap_dir, sizeof r->snap_dir, "%s/raft",
             cl->nodes[cl->leader].dir);
    r->snap_last_index = snapshot_last_index(r->snap_dir);
    r->probe.is_probe = true;
    bool ok = conn_open(r, &r->probe, cl->nodes[cl->leader].client_addr) == 0;
    for (unsigned i = 0; ok && i < inflight; i++) {
        unsigned node = o->target_all ? i % NODES : cl->leader;
        ok = conn_open(r, &r->conns[i], cl->nodes[node].client_addr) == 0;
    }
    if (!ok) {
        run_finish(r);
    }
    uv_run(&r->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&r->loop) != 0) {
        fprintf(stderr, "error: internal: handles left open on the loop\n");
        r->errors++;
    }

    if (!fill && res != NULL) {
        memset(res, 0, sizeof *res);
        res->inflight = inflight;
        res->errors = r->errors;
        res->writes = r->completed;
        double window = (double)(r->t1_ns - r->t0_ns) / 1e9;
        if (r->t1_ns > r->t0_ns && r->completed > 0) {
            res->wps = (double)r->completed / window;
            double ticks = (double)(r->cpu1 - r->cpu0);
            res->cpu_us_per_write = ticks * 1e6 / (double)sysconf(_SC_CLK_TCK) /
                                    (double)r->completed;
            res->self_us_per_write =
                (r->self1 - r->self0) * 1e6 / (double)r->completed;
            if (r->have_applied0 && r->have_applied1 &&
                r->applied1 > r->applied0) {
                double entries = (double)(r->applied1 - r->applied0);
                res->entries_per_s = entries / window;
                res->writes_per_entry = (double)r->completed / entries;
            }
        }
        bench_samples_sort(r->lat_ns, r->n_lat);
        res->p50_ms = bench_quantile_ms(r->lat_ns, r->n_lat, 0.50);
        res->p90_ms = bench_quantile_ms(r->lat_ns, r->n_lat, 0.90);
        res->p99_ms = bench_quantile_ms(r->lat_ns, r->n_lat, 0.99);
        res->p999_ms = bench_quantile_ms(r->lat_ns, r->n_lat, 0.999);
        res->max_ms = r->n_lat ? (double)r->lat_ns[r->n_lat - 1] / 1e6 : 0;
        bench_samples_sort(r->ping_ns, r->n_ping);
        res->ping_p99_ms = bench_quantile_ms(r->ping_ns, r->n_ping, 0.99);
        res->ping_max_ms =
            r->n_ping ? (double)r->ping_ns[r->n_ping - 1] / 1e6 : 0;
        res->snapshots = r->snapshots;
        for (unsigned i = 0; i < r->n_events; i++) {
            double at =
                (double)((int64_t)(r->events[i].at_ns - r->t0_ns)) / 1e9;
            if (r->events[i].snapshot) {
                printf("#   %+8.3f s  snapshot at index %" PRIu64
                       " seen on the leader\n",
                       at, r->events[i].value);
            } else {
                printf("#   %+8.3f s  ping took %.1f ms\n", at,
                       (double)r->events[i].value / 1e6);
            }
        }
        pid_t lp = cl->nodes[cl->leader].proc.pid;
        res->leader_rss_mb = (double)bench_proc_status_kb(lp, "VmRSS") / 1024.0;
        res->leader_hwm_mb = (double)bench_proc_status_kb(lp, "VmHWM") / 1024.0;
    }
    uint64_t errors = r->errors + (r->aborted && r->errors == 0);
    for (unsigned i = 0; i < inflight; i++) {
        wire_rbuf_close(&r->conns[i].rbuf);
        msgpack_sbuffer_destroy(&r->conns[i].out);
    }
    wire_rbuf_close(&r->probe.rbuf);
    msgpack_sbuffer_destroy(&r->probe.out);
    free(r->lat_ns);
    free(r->ping_ns);
    free(r->conns);
    free(r);
    return errors;
}

/* --- Output
 * ---------------------------------------------------------------------- */

static void print_header(void)
{
    printf("%8s %9s %7s %7s %7s %8s %7s %6s %8s %8s %8s %9s %7s %5s %7s "
           "%7s\n",
           "inflight", "writes/s", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
           "max_ms", "errors", "cpu_us/w", "bench_us", "ping_max", "entries/s",
           "w/entry", "snaps", "rss_MB", "hwm_MB");
}

static void print_result(const struct level_result *x)
{
    printf("%8u %9.0f %7.2f %7.2f %7.2f %8.2f %7.1f %6" PRIu64
           " %8.1f %8.1f %8.1f %9.0f %7.1f %5.0f %7.1f %7.1f\n",
           x->inflight, x->wps, x->p50_ms, x->p90_ms, x->p99_ms, x->p999_ms,
           x->max_ms, x->errors, x->cpu_us_per_write, x->self_us_per_write,
           x->ping_max_ms, x->entries_per_s, x->writes_per_entry, x->snapshots,
           x->leader_rss_mb, x->leader_hwm_mb);
    fflush(stdout);
}

/* "median [min-max]" of field `off` over n results. */
static void print_stat(const struct level_result *rs, unsigned n, size_t off,
                       int decimals, int width)
{
    double v[REPEAT_MAX];
    for (unsigned i = 0; i < n; i++) {
        memcpy(&v[i], (const char *)&rs[i] + off, sizeof v[i]);
    }
    double med = bench_median(v, n); /* sorts v */
    char a[32], b[32], c[32], cell[100];
    snprintf(a, sizeof a, "%.*f", decimals, med);
    snprintf(b, sizeof b, "%.*f", decimals, v[0]);
    snprintf(c, sizeof c, "%.*f", decimals, v[n - 1]);
    snprintf(cell, sizeof cell, "%s [%s-%s]", a, b, c);
    printf(" %-*s", width, cell);
}

static void print_summary(const struct opts *o,
                          struct level_result rs[LEVELS_MAX][REPEAT_MAX],
                          unsigned runs)
{
    printf("\n# summary over %u runs: median [min-max]\n", runs);
    printf("%8s %-22s %-20s %-20s %-20s %-20s %-16s %-12s %-20s\n", "inflight",
           "writes/s", "p50_ms", "p99_ms", "max_ms", "ping_max_ms",
           "cpu_us/write", "snapshots", "leader_rss_MB");
    for (unsigned l = 0; l < o->n_levels; l++) {
        printf("%8u", o->inflight[l]);
        print_stat(rs[l], runs, offsetof(struct level_result, wps), 0, 22);
        print_stat(rs[l], runs, offsetof(struct level_result, p50_ms), 2, 20);
        print_stat(rs[l], runs, offsetof(struct level_result, p99_ms), 2, 20);
        print_stat(rs[l], runs, offsetof(struct level_result, max_ms), 1, 20);
        print_stat(rs[l], runs, offsetof(struct level_result, ping_max_ms), 1,
                   20);
        print_stat(rs[l], runs, offsetof(struct level_result, cpu_us_per_write),
                   0, 16);
        print_stat(rs[l], runs, offsetof(struct level_result, snapshots), 0,
                   12);
        print_stat(rs[l], runs, offsetof(struct level_result, leader_rss_mb), 1,
                   20);
        printf("\n");
    }
}

/* --- main
 * -----------------------------------------------------------------------------
 */

int main(int argc, char **argv)
{
    static struct opts o = {
        .allotd = BENCH_ALLOTD_DEFAULT,
        .dir = "/var/tmp",
        .inflight = {1, 16, 64},
        .n_levels = 3,
        .warmup_ms = 2000,
        .measure_ms = 10000,
        .paths = 10000,
        .extra_str = "",
        .repeat = 1,
    };
    enum {
        OPT_ALLOTD = 256,
        OPT_DIR,
        OPT_INFLIGHT,
        OPT_SECONDS,
        OPT_WARMUP,
        OPT_TARGET,
        OPT_PATHS,
        OPT_ARGS,
        OPT_REPEAT,
        OPT_KEEP,
        OPT_VERBOSE,
        OPT_NODELAY,
        OPT_HELP,
    };
    static const struct option longopts[] = {
        {"allotd", required_argument, NULL, OPT_ALLOTD},
        {"dir", required_argument, NULL, OPT_DIR},
        {"inflight", required_argument, NULL, OPT_INFLIGHT},
        {"seconds", required_argument, NULL, OPT_SECONDS},
        {"warmup", required_argument, NULL, OPT_WARMUP},
        {"target", required_argument, NULL, OPT_TARGET},
        {"paths", required_argument, NULL, OPT_PATHS},
        {"allotd-args", required_argument, NULL, OPT_ARGS},
        {"repeat", required_argument, NULL, OPT_REPEAT},
        {"keep", no_argument, NULL, OPT_KEEP},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"raft-nodelay", no_argument, NULL, OPT_NODELAY},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        int bad = 0;
        switch (ch) {
        case OPT_ALLOTD:
            o.allotd = optarg;
            break;
        case OPT_DIR:
            o.dir = optarg;
            break;
        case OPT_INFLIGHT:
            bad = parse_levels(optarg, &o);
            break;
        case OPT_SECONDS:
            bad = parse_seconds("--seconds", optarg, &o.measure_ms);
            if (bad == 0 && o.measure_ms == 0) {
                fprintf(stderr, "error: invalid: --seconds must be > 0\n");
                bad = -1;
            }
            break;
        case OPT_WARMUP:
            bad = parse_seconds("--warmup", optarg, &o.warmup_ms);
            break;
        case OPT_TARGET:
            if (strcmp(optarg, "leader") == 0) {
                o.target_all = false;
            } else if (strcmp(optarg, "all") == 0) {
                o.target_all = true;
            } else {
                fprintf(stderr, "error: invalid: --target must be leader or "
                                "all\n");
                bad = -1;
            }
            break;
        case OPT_PATHS:
            bad = parse_unsigned("--paths", optarg, 1, 10000000, &o.paths);
            break;
        case OPT_ARGS:
            o.extra_str = optarg;
            break;
        case OPT_REPEAT:
            bad = parse_unsigned("--repeat", optarg, 1, REPEAT_MAX, &o.repeat);
            break;
        case OPT_KEEP:
            o.keep = true;
            break;
        case OPT_VERBOSE:
            o.verbose = true;
            break;
        case OPT_NODELAY:
            o.preload = BENCH_NODELAY_PRELOAD;
            if (o.preload[0] == '\0' || access(o.preload, R_OK) != 0) {
                fprintf(stderr,
                        "error: invalid: --raft-nodelay: %s is not "
                        "built\n",
                        o.preload[0] ? o.preload : "the preload library");
                bad = -1;
            }
            break;
        case OPT_HELP:
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (bad != 0) {
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "error: invalid: unexpected argument \"%s\"\n",
                argv[optind]);
        return 2;
    }
    if (split_extra(&o) != 0) {
        return 2;
    }
    if (access(o.allotd, X_OK) != 0) {
        fprintf(stderr, "error: invalid: --allotd %s is not executable: %s\n",
                o.allotd, strerror(errno));
        return 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    static struct level_result results[LEVELS_MAX][REPEAT_MAX];
    uint64_t total_errors = 0;
    bool failed = false;
    unsigned runs = 0;

    printf("# allot write benchmark: 3 nodes on 127.0.0.1, target=%s, "
           "paths=%u, fields=65 B msgpack,\n"
           "# warmup=%.1fs, measured=%.1fs per level, repeat=%u\n",
           o.target_all ? "all" : "leader", o.paths,
           (double)o.warmup_ms / 1000.0, (double)o.measure_ms / 1000.0,
           o.repeat);
    printf("# allotd: %s %s%s%s\n", o.allotd, o.extra_str,
           o.preload ? "  LD_PRELOAD=" : "", o.preload ? o.preload : "");
    printf("# cpu_us/w: allotd CPU (3 nodes) per write; bench_us: this "
           "generator's CPU per write;\n"
           "# ping_max: slowest ping to the leader in the window (its loop "
           "blocked that long);\n"
           "# entries/s, w/entry: raft log entries applied on the leader; "
           "snaps: snapshots it took;\n"
           "# rss/hwm: leader VmRSS/VmHWM at the end of the level\n");

    for (unsigned rep = 0; rep < o.repeat && !failed && !interrupted; rep++) {
        struct cluster cl;
        int rv = cluster_start(&o, &cl);
        if (rv == 0) {
            rv = cluster_wait_ready(&cl);
        }
        if (rv == 0) {
            rv = create_parent(&cl);
        }
        if (rv == 0) {
            printf("\n# run %u/%u: data in %s, leader n%u (pid %d)\n", rep + 1,
                   o.repeat, cl.root, cl.nodes[cl.leader].id,
                   (int)cl.nodes[cl.leader].proc.pid);
            fflush(stdout);
            uint64_t t = clock_mono_ns();
            uint64_t e = run_load(&o, &cl, 64, true, NULL);
            printf("# filled %u paths in %.1f s\n", o.paths,
                   (double)(clock_mono_ns() - t) / 1e9);
            fflush(stdout);
            total_errors += e;
            rv = e != 0 ? -1 : 0;
        }
        if (rv == 0) {
            print_header();
            for (unsigned l = 0; l < o.n_levels && !interrupted; l++) {
                struct level_result *res = &results[l][rep];
                uint64_t e = run_load(&o, &cl, o.inflight[l], false, res);
                total_errors += e;
                res->errors = e;
                if (!interrupted) {
                    print_result(res);
                }
                if (e != 0) {
                    rv = -1;
                    break;
                }
            }
        }
        if (cluster_stop(&cl) != 0) {
            rv = -1;
        }
        if (rv != 0) {
            failed = true;
            /* A failure keeps the node logs to look at; an interrupted run
             * has nothing to show. */
            if (interrupted && !o.keep) {
                cluster_remove_dir(&cl);
            } else if (cl.root[0] != '\0') {
                fprintf(stderr, "# data and logs kept in %s\n", cl.root);
            }
        } else {
            runs++;
            if (o.keep) {
                printf("# data kept in %s\n", cl.root);
            } else {
                cluster_remove_dir(&cl);
            }
        }
    }
    if (runs > 1 && !failed) {
        print_summary(&o, results, runs);
    }
    if (interrupted) {
        fprintf(stderr, "error: interrupted\n");
        return 130;
    }
    if (total_errors != 0) {
        fprintf(stderr, "error: %" PRIu64 " write(s) or check(s) failed\n",
                total_errors);
        return 1;
    }
    if (failed) {
        fprintf(stderr, "error: the run failed (see the messages above)\n");
        return 1;
    }
    return 0;
}
