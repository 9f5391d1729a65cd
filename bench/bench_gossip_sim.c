/* bench_gossip_sim.c - how fast a catalog version spreads through a large
 * simulated fleet (docs/benchmarks.md, "Gossip against Serf").
 *
 * For each size N, in its own forked child (so each size's peak memory is
 * its own): N members of the real gossip core on the deterministic
 * simulator (gossip/sim.h: virtual clock, 1-5 ms latency, no loss), all
 * joining through member 0, run until every member sees all N alive. Then
 * a few keyed broadcasts ("catalog", versions 1, 2, ...) from different
 * members, each timed to 99% and to 100% of the members holding it,
 * checked every --step ms of virtual time.
 *
 * The gossip interval is set explicitly (--gossip-interval, 200 ms: the
 * library's default, written out so the figure does not move if the
 * default does); every other setting is the library's default.
 *
 * Memory grows as N^2: every member holds a record of every other member
 * (one 80-byte block with a short name, its ALIVE queued inside it while
 * the fleet joins, plus 8 bytes in the member array and a 9-byte slot in
 * the by-name table, at most 3/4 full). Measured peaks: 180 MB at N =
 * 1,000, about N * 82 KB (a member's fixed state) + N^2 * 106-112 bytes
 * (the arrays double, so the cost per pair steps); the estimate takes
 * 115, so N = 10,000 needs ~11.8 GB. (Before the record and its table
 * were compacted it was ~380 bytes a pair: ~36 GB at 10,000.) A size
 * whose estimate is over --mem-limit-mb is skipped with the estimate
 * printed (--force runs it anyway), and each child runs under that
 * address-space limit, so a size that does not fit fails cleanly instead
 * of pushing a shared machine into swap or the OOM killer. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "gossip.h"
#include "sim.h"

#define SIZES_MAX 16

/* Peak memory of a simulation of n members, from the fit above (bytes). */
#define SIM_FIXED_PER_MEMBER 82000.0
#define SIM_PER_RECORD       115.0

struct opts
{
    unsigned long sizes[SIZES_MAX];
    unsigned n_sizes;
    unsigned broadcasts;
    uint32_t gossip_interval_ms;
    uint64_t step_ms;
    uint64_t max_converge_ms;
    uint64_t seed;
    unsigned long mem_limit_mb;
    bool force;
};

static void usage(FILE *out)
{
    fprintf(out, "usage: bench_gossip_sim [--members 1000,10000] "
                 "[--broadcasts 5] [--gossip-interval 200]\n"
                 "         [--step 10] [--max-converge-s 900] [--seed 1] "
                 "[--mem-limit-mb 8192] [--force]\n");
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024;
}

/* Members holding version v of "catalog" or a newer one. */
static int holders(struct sim *s, int n, uint64_t v)
{
    int have = 0;
    for (int i = 0; i < n; i++) {
        uint64_t got = 0;
        if (gossip_keyed_get(sim_gossip(s, i), "catalog", &got, NULL, 0,
                             NULL) == 0 &&
            got >= v) {
            have++;
        }
    }
    return have;
}

static int measure(const struct opts *o, int n)
{
    double w0 = wall_s();
    struct sim *s = sim_new(o->seed);
    if (s == NULL) {
        fprintf(stderr, "error: nomem: N=%d: simulation\n", n);
        return 1;
    }
    struct gossip_keyring kr = {.n = 1};
    memset(kr.keys[0], 0x42, GOSSIP_KEY_SIZE);
    /* Names live as long as the simulation (the core copies them, but the
     * config must stay valid through sim_start()). */
    char name[32];
    struct gossip_addr seed = sim_addr(s, 0);
    for (int i = 0; i < n; i++) {
        struct gossip_config cfg;
        gossip_config_init(&cfg);
        snprintf(name, sizeof name, "m%d", i);
        cfg.name = name;
        cfg.keyring = kr;
        cfg.gossip_interval_ms = o->gossip_interval_ms;
        if (sim_add(s) != i || sim_start(s, i, &cfg) != 0 ||
            gossip_join(sim_gossip(s, i), &seed, 1) != 0) {
            fprintf(stderr, "error: nomem: N=%d: starting member %d\n", n, i);
            sim_free(s);
            return 1;
        }
    }
    if (!sim_run_until_true(s, o->max_converge_ms, 500, sim_all_alive, NULL)) {
        printf("%7d  did not converge within %" PRIu64 " s virtual; peak RSS "
               "%ld MB, %.0f s wall\n",
               n, o->max_converge_ms / 1000, peak_rss_mb(), wall_s() - w0);
        sim_free(s);
        return 1;
    }
    uint64_t t_conv = sim_now(s);
    double wall_conv = wall_s() - w0;

    uint64_t t99[32], t100[32];
    unsigned nb = o->broadcasts < 32 ? o->broadcasts : 32;
    for (unsigned b = 0; b < nb; b++) {
        /* Origins spread over the member list, away from the seed. */
        int origin = (int)(((uint64_t)n * (2 * b + 1)) / (2 * nb));
        uint64_t v = b + 1;
        if (gossip_broadcast_keyed(sim_gossip(s, origin), "catalog", v, "v",
                                   1) != 0) {
            fprintf(stderr, "error: internal: N=%d: broadcast %u\n", n, b);
            sim_free(s);
            return 1;
        }
        uint64_t t0 = sim_now(s);
        t99[b] = t100[b] = 0;
        while (t100[b] == 0 && sim_now(s) - t0 < 60000) {
            sim_run_for(s, o->step_ms);
            int have = holders(s, n, v);
            if (t99[b] == 0 && (uint64_t)have * 100 >= (uint64_t)n * 99) {
                t99[b] = sim_now(s) - t0;
            }
            if (have == n) {
                t100[b] = sim_now(s) - t0;
            }
        }
        /* Let the retransmissions die down so broadcasts do not overlap. */
        sim_run_for(s, 5000);
    }
    double d99[32], d100[32];
    uint64_t m99 = 0, m100 = 0;
    for (unsigned b = 0; b < nb; b++) {
        d99[b] = (double)t99[b];
        d100[b] = (double)t100[b];
        m99 = t99[b] > m99 ? t99[b] : m99;
        m100 = t100[b] > m100 ? t100[b] : m100;
    }
    struct sim_stats ss;
    sim_stats(s, &ss);
    long rss = peak_rss_mb();
    printf("%7d  %9.1f  %6.0f  %6" PRIu64 "  %6.0f  %6" PRIu64
           "  %7ld  %8.1f  %8.0f\n",
           n, (double)t_conv / 1000, bench_median(d99, nb), m99,
           bench_median(d100, nb), m100, rss, (double)rss * 1024 / n,
           wall_s() - w0);
    printf("#        %d: converged after %.0f s wall; %" PRIu64
           " datagrams, %" PRIu64 " streams in all\n",
           n, wall_conv, ss.packets, ss.streams);
    fflush(stdout);
    sim_free(s);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"members", required_argument, NULL, 'n'},
        {"broadcasts", required_argument, NULL, 'b'},
        {"gossip-interval", required_argument, NULL, 'g'},
        {"step", required_argument, NULL, 's'},
        {"max-converge-s", required_argument, NULL, 'c'},
        {"seed", required_argument, NULL, 'r'},
        {"mem-limit-mb", required_argument, NULL, 'm'},
        {"force", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct opts o = {.sizes = {1000, 10000},
                     .n_sizes = 2,
                     .broadcasts = 5,
                     .gossip_interval_ms = 200,
                     .step_ms = 10,
                     .max_converge_ms = 900000,
                     .seed = 1,
                     .mem_limit_mb = 8192};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        unsigned long v = optarg != NULL ? strtoul(optarg, NULL, 10) : 0;
        switch (ch) {
        case 'n': {
            int k = bench_parse_list("--members", optarg, 2, 65536, o.sizes,
                                     SIZES_MAX);
            if (k < 0) {
                return 2;
            }
            o.n_sizes = (unsigned)k;
            break;
        }
        case 'b':
            o.broadcasts = v > 0 && v <= 32 ? (unsigned)v : 5;
            break;
        case 'g':
            o.gossip_interval_ms = v > 0 ? (uint32_t)v : 200;
            break;
        case 's':
            o.step_ms = v > 0 ? v : 10;
            break;
        case 'c':
            o.max_converge_ms = (v > 0 ? v : 900) * 1000;
            break;
        case 'r':
            o.seed = v;
            break;
        case 'm':
            o.mem_limit_mb = v;
            break;
        case 'f':
            o.force = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    printf("# gossip simulation: keyed broadcast (\"catalog\") from one "
           "member, %u broadcasts per size,\n"
           "# gossip interval %" PRIu32 " ms, other settings default, "
           "latency 1-5 ms, no loss; times in virtual ms,\n"
           "# median and max over the broadcasts; checked every %" PRIu64
           " ms; address space limit %lu MB per size\n",
           o.broadcasts, o.gossip_interval_ms, o.step_ms, o.mem_limit_mb);
    printf("%7s  %9s  %6s  %6s  %6s  %6s  %7s  %8s  %8s\n", "members", "conv_s",
           "p99_ms", "max", "all_ms", "max", "peak_MB", "KB/memb", "wall_s");
    fflush(stdout);
    int failed = 0;
    for (unsigned i = 0; i < o.n_sizes; i++) {
        double n = (double)o.sizes[i];
        double est_mb =
            (n * SIM_FIXED_PER_MEMBER + n * n * SIM_PER_RECORD) / 1048576.0;
        if (o.mem_limit_mb > 0 && est_mb > (double)o.mem_limit_mb && !o.force) {
            printf("%7lu  skipped: needs about %.0f MB (N^2 member records "
                   "at ~%.0f bytes), over --mem-limit-mb %lu\n",
                   o.sizes[i], est_mb, SIM_PER_RECORD, o.mem_limit_mb);
            fflush(stdout);
            continue;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "error: io: fork: %s\n", strerror(errno));
            return 1;
        }
        if (pid == 0) {
            if (o.mem_limit_mb > 0) {
                struct rlimit rl;
                rl.rlim_cur = rl.rlim_max = (rlim_t)o.mem_limit_mb << 20;
                setrlimit(RLIMIT_AS, &rl);
            }
            int rv = measure(&o, (int)o.sizes[i]);
            fflush(stdout); /* _exit() does not */
            _exit(rv == 0 ? 0 : 1);
        }
        int st = 0;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
            WEXITSTATUS(st) != 0) {
            printf("%7lu  failed (%s): see above; out of memory under the "
                   "limit shows as a crash or an error\n",
                   o.sizes[i],
                   WIFSIGNALED(st) ? "killed by a signal" : "exit status");
            failed = 1;
        }
    }
    return failed;
}
