/* bench_snapshot.c - how long the state machine takes to snapshot and
 * restore a catalog of N quotas.
 *
 * canonical/raft 0.15 calls fsm->snapshot on the event loop (allot's fsm has
 * no snapshot_async), so every snapshot stalls allotd for that long; restore
 * runs on the loop too (a follower installing a snapshot, a restart). For
 * each N of --quotas this builds a state machine the way a node does, by
 * applying log entries made with fsm_batch_encode() (--batch commands each,
 * from --sessions clients so the session table is populated as in a
 * running cluster), then times, --repeat times:
 *   snapshot  ->snapshot() (serialize everything into one buffer),
 *   finalize  ->snapshot_finalize() (release it),
 *   restore   ->restore() into a fresh state machine,
 * and checks that the restored catalog has the same digest. It also prints
 * the apply cost per command and the resident memory of a process holding
 * just that catalog (each size runs in its own forked child, so sizes do not
 * share a heap). No clock assertion: it prints figures.
 *
 * Failure modes: an apply result that is an error, a snapshot or restore
 * that fails, or a digest mismatch: message on stderr, exit status 1. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../lib/lib.h"
#include "../proto/quota.h"
#include "../raft/raft_fsm.h"
#include "bench_util.h"

#define SIZES_MAX  8
#define REPEAT_MAX 50

struct opts
{
    unsigned long sizes[SIZES_MAX];
    unsigned n_sizes;
    unsigned batch;
    unsigned sessions;
    unsigned repeat;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: bench_snapshot [--quotas 10000,100000] [--batch N] "
            "[--sessions N] [--repeat N]\n"
            "\n"
            "  --quotas LIST   catalog sizes to measure (default "
            "10000,100000)\n"
            "  --batch N       commands per log entry while building "
            "(default 64, max %d)\n"
            "  --sessions N    distinct client ids writing (default 64)\n"
            "  --repeat N      timed snapshots/restores per size (default "
            "5)\n",
            FSM_BATCH_MAX);
}

static int parse_ulong(const char *flag, const char *s, unsigned long min,
                       unsigned long max, unsigned long *out)
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
    *out = v;
    return 0;
}

static uint64_t rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    uint64_t kb = 0;
    if (f == NULL) {
        return 0;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtoull(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* The same 65-byte field set bench_writes sends, rate and burst varying. */
static int make_patch(struct quota_fields *p, uint64_t i)
{
    char kv[64];
    char msg[ALLOT_ERRMSG_SIZE];
    const char *fixed[] = {"kind=rate", "unit=requests", "on_exceed=reject"};
    memset(p, 0, sizeof *p);
    for (unsigned k = 0; k < 3; k++) {
        if (quota_patch_parse_kv(p, fixed[k], msg) != 0) {
            fprintf(stderr, "error: %s\n", msg);
            return -1;
        }
    }
    snprintf(kv, sizeof kv, "rate=%" PRIu64 ".5", 100 + i % 1000);
    if (quota_patch_parse_kv(p, kv, msg) != 0) {
        fprintf(stderr, "error: %s\n", msg);
        return -1;
    }
    snprintf(kv, sizeof kv, "burst=%" PRIu64, 1000 + i % 1000);
    if (quota_patch_parse_kv(p, kv, msg) != 0) {
        fprintf(stderr, "error: %s\n", msg);
        return -1;
    }
    return 0;
}

/* Apply `count` quota.set commands for paths bench/p0.. as log entries of
 * o->batch commands. Returns the time spent in apply, in ns, or 0 on
 * error. */
static uint64_t fill(struct fsm *f, const struct opts *o, unsigned long count)
{
    struct raft_fsm *rf = fsm_raft(f);
    struct fsm_cmd *cmds = calloc(o->batch, sizeof *cmds);
    char(*paths)[32] = calloc(o->batch, sizeof *paths);
    uint64_t *seq = calloc(o->sessions, sizeof *seq);
    uint64_t apply_ns = 0;
    bool ok = cmds != NULL && paths != NULL && seq != NULL;
    if (ok) {
        /* The quotas live under "bench", which must exist first. */
        struct fsm_cmd parent = {
            .type = FSM_CMD_QUOTA_SET, .path = "bench", .path_len = 5};
        struct raft_buffer buf;
        void *result = NULL;
        ok = quota_patch_parse_kv(&parent.patch, "kind=capacity", NULL) == 0 &&
             fsm_batch_encode(&parent, 1, clock_wall_ms(), &buf) == 0;
        if (ok) {
            ok = rf->apply(rf, &buf, &result) == 0;
            raft_free(buf.base);
        }
    }
    for (unsigned long i = 0; ok && i < count;) {
        unsigned n = 0;
        for (; n < o->batch && i < count; n++, i++) {
            struct fsm_cmd *c = &cmds[n];
            unsigned s = (unsigned)(i % o->sessions);
            memset(c, 0, sizeof *c);
            c->type = FSM_CMD_QUOTA_SET;
            c->client = s + 1;
            c->seq = ++seq[s];
            c->ack = c->seq;
            int len = snprintf(paths[n], sizeof paths[n], "bench/p%lu", i);
            c->path = paths[n];
            c->path_len = (size_t)len;
            if (make_patch(&c->patch, i) != 0) {
                ok = false;
                break;
            }
        }
        struct raft_buffer buf;
        if (!ok || fsm_batch_encode(cmds, n, clock_wall_ms(), &buf) != 0) {
            fprintf(stderr, "error: internal: cannot encode a batch\n");
            ok = false;
            break;
        }
        void *result = NULL;
        uint64_t t = clock_mono_ns();
        int rv = rf->apply(rf, &buf, &result);
        apply_ns += clock_mono_ns() - t;
        raft_free(buf.base);
        const struct fsm_batch_result *br = result;
        if (rv != 0 || br == NULL || br->n != n) {
            fprintf(stderr, "error: internal: apply failed (%d)\n", rv);
            ok = false;
            break;
        }
        for (unsigned k = 0; k < n; k++) {
            if (br->results[k].code != 0) {
                fprintf(stderr, "error: %s: %s\n",
                        allot_error_name(br->results[k].code),
                        br->results[k].message ? br->results[k].message : "");
                ok = false;
                break;
            }
        }
    }
    free(cmds);
    free(paths);
    free(seq);
    return ok ? (apply_ns > 0 ? apply_ns : 1) : 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* "median [min-max]" in ms. */
static void fmt_ms(char *out, size_t len, uint64_t *v, unsigned n)
{
    qsort(v, n, sizeof *v, cmp_u64);
    uint64_t med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    snprintf(out, len, "%.1f [%.1f-%.1f]", (double)med / 1e6,
             (double)v[0] / 1e6, (double)v[n - 1] / 1e6);
}

static int measure(const struct opts *o, unsigned long count)
{
    struct fsm *f;
    if (fsm_init(&f) != 0) {
        fprintf(stderr, "error: nomem: fsm_init\n");
        return -1;
    }
    uint64_t apply_ns = fill(f, o, count);
    if (apply_ns == 0) {
        fsm_close(f);
        return -1;
    }
    uint64_t rss1 = rss_kb();
    char digest[65];
    fsm_digest(f, digest);

    struct raft_fsm *rf = fsm_raft(f);
    uint64_t snap_ns[REPEAT_MAX], fin_ns[REPEAT_MAX], restore_ns[REPEAT_MAX];
    size_t bytes = 0;
    int rv = 0;
    for (unsigned r = 0; r < o->repeat && rv == 0; r++) {
        struct raft_buffer *bufs = NULL;
        unsigned n_bufs = 0;
        uint64_t t0 = clock_mono_ns();
        rv = rf->snapshot(rf, &bufs, &n_bufs);
        uint64_t t1 = clock_mono_ns();
        if (rv != 0) {
            fprintf(stderr, "error: internal: snapshot failed (%d)\n", rv);
            break;
        }
        /* restore() takes one raft_malloc'd buffer and owns it on success. */
        bytes = 0;
        for (unsigned i = 0; i < n_bufs; i++) {
            bytes += bufs[i].len;
        }
        struct raft_buffer copy = {.base = raft_malloc(bytes), .len = bytes};
        if (copy.base == NULL) {
            fprintf(stderr, "error: nomem: snapshot copy\n");
            rv = -1;
        } else {
            size_t off = 0;
            for (unsigned i = 0; i < n_bufs; i++) {
                memcpy((char *)copy.base + off, bufs[i].base, bufs[i].len);
                off += bufs[i].len;
            }
        }
        uint64_t t2 = clock_mono_ns();
        rf->snapshot_finalize(rf, &bufs, &n_bufs);
        uint64_t t3 = clock_mono_ns();
        snap_ns[r] = t1 - t0;
        fin_ns[r] = t3 - t2;
        if (rv != 0) {
            break;
        }

        struct fsm *g;
        if (fsm_init(&g) != 0) {
            raft_free(copy.base);
            rv = -1;
            break;
        }
        uint64_t t4 = clock_mono_ns();
        rv = fsm_raft(g)->restore(fsm_raft(g), &copy);
        uint64_t t5 = clock_mono_ns();
        restore_ns[r] = t5 - t4;
        if (rv != 0) {
            fprintf(stderr, "error: internal: restore failed (%d)\n", rv);
            raft_free(copy.base);
        } else {
            char digest2[65];
            fsm_digest(g, digest2);
            if (strcmp(digest, digest2) != 0 ||
                fsm_quota_count(g) != fsm_quota_count(f)) {
                fprintf(stderr,
                        "error: internal: restored catalog differs "
                        "(digest %s vs %s)\n",
                        digest2, digest);
                rv = -1;
            }
        }
        fsm_close(g);
    }
    if (rv == 0) {
        char a[64], b[64], c[64];
        fmt_ms(a, sizeof a, snap_ns, o->repeat);
        fmt_ms(b, sizeof b, fin_ns, o->repeat);
        fmt_ms(c, sizeof c, restore_ns, o->repeat);
        printf("%9lu %9u %10.2f %12.2f %-20s %-18s %-20s %8.1f\n", count,
               fsm_session_count(f), (double)apply_ns / 1e3 / (double)count,
               (double)bytes / 1e6, a, b, c, (double)rss1 / 1024.0);
        fflush(stdout);
    }
    fsm_close(f);
    return rv == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct opts o = {
        .sizes = {10000, 100000},
        .n_sizes = 2,
        .batch = 64,
        .sessions = 64,
        .repeat = 5,
    };
    static const struct option longopts[] = {
        {"quotas", required_argument, NULL, 'q'},
        {"batch", required_argument, NULL, 'b'},
        {"sessions", required_argument, NULL, 's'},
        {"repeat", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    unsigned long v;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'q': {
            int n = bench_parse_list("--quotas", optarg, 1, 10000000, o.sizes,
                                     SIZES_MAX);
            if (n < 0) {
                return 2;
            }
            o.n_sizes = (unsigned)n;
            break;
        }
        case 'b':
            if (parse_ulong("--batch", optarg, 1, FSM_BATCH_MAX, &v) != 0) {
                return 2;
            }
            o.batch = (unsigned)v;
            break;
        case 's':
            if (parse_ulong("--sessions", optarg, 1, FSM_SESSIONS_MAX, &v) !=
                0) {
                return 2;
            }
            o.sessions = (unsigned)v;
            break;
        case 'r':
            if (parse_ulong("--repeat", optarg, 1, REPEAT_MAX, &v) != 0) {
                return 2;
            }
            o.repeat = (unsigned)v;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "error: invalid: unexpected argument \"%s\"\n",
                argv[optind]);
        return 2;
    }
    printf("# allot state machine snapshot cost: %u runs per size, "
           "built from entries of %u commands by %u clients\n",
           o.repeat, o.batch, o.sessions);
    printf("# snapshot/finalize/restore in ms, median [min-max]; rss_MB: "
           "VmRSS of a process holding the catalog\n");
    printf("%9s %9s %10s %12s %-20s %-18s %-20s %8s\n", "quotas", "sessions",
           "apply_us", "snapshot_MB", "snapshot_ms", "finalize_ms",
           "restore_ms", "rss_MB");
    fflush(stdout);
    for (unsigned i = 0; i < o.n_sizes; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "error: io: fork: %s\n", strerror(errno));
            return 1;
        }
        if (pid == 0) {
            _exit(measure(&o, o.sizes[i]) == 0 ? 0 : 1);
        }
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
            WEXITSTATUS(st) != 0) {
            fprintf(stderr, "error: internal: measuring %lu quotas failed\n",
                    o.sizes[i]);
            return 1;
        }
    }
    return 0;
}
