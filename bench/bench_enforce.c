/* bench_enforce.c - the cost of a local decision, and the agent's memory.
 *
 * Prints, for 1 and 2 threads:
 *   - a baseline loop doing one atomic fetch-add per iteration (on one
 *     shared counter, and on one counter per thread);
 *   - allot_check() on one rule shared by the threads, and on one rule per
 *     thread (every decision admitted: the compare-and-swap path), plus the
 *     rejection path (one load, no write);
 * each as the median over --reps runs of ns per decision (per thread) and
 * decisions per second (all threads), with the number of allocations made
 * inside the measured loops (a malloc interposer counts them; "n/a" in
 * sanitizer builds, whose allocator cannot be interposed).
 * Then starts allot-agent on a data dir holding --rules rules (written
 * as its last-known-good file), reads its RSS, resolves every rule through
 * the socket (one check each), and reads the RSS again.
 *
 * Threads are pinned to CPUs 0 and 1. Nothing here asserts a time: the
 * figures go into docs/benchmarks.md. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../enforce/internal.h"
#include "../enforce/lkg.h"
#include "../proto/wire.h"
#include "bench_util.h"

/* --- Allocation counting -------------------------------------------------- */

static _Atomic uint64_t allocations;
static _Thread_local bool counting;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define COUNT_ALLOCS 0
#else
#define COUNT_ALLOCS 1
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);

static void note_alloc(void)
{
    if (counting) {
        atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    }
}

void *malloc(size_t n)
{
    note_alloc();
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    note_alloc();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    note_alloc();
    return __libc_realloc(p, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    note_alloc();
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    note_alloc();
    void *p = __libc_memalign(align, n);
    if (p == NULL) {
        return ENOMEM;
    }
    *out = p;
    return 0;
}
#endif

/* --- Workloads ------------------------------------------------------------ */

enum work { WORK_FETCH_ADD, WORK_CHECK };

struct counter
{
    alignas(64) _Atomic uint64_t v;
};

static struct counter counters[2];

struct worker
{
    pthread_t thr;
    int cpu;
    enum work work;
    _Atomic uint64_t *counter;
    struct allot_rule *rule;
    uint64_t iterations;
    pthread_barrier_t *start;
    uint64_t ns;     /* wall clock */
    uint64_t cpu_ns; /* this thread's CPU time (preemption excluded) */
    uint64_t admitted;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((size_t)w->cpu, &set);
    sched_setaffinity(0, sizeof set, &set); /* best effort */
    struct allot_decision d;
    /* Warm up: registers the thread (its one allocation) and the caches. */
    if (w->work == WORK_CHECK) {
        allot_check(w->rule, NULL, 1, &d);
    }
    pthread_barrier_wait(w->start);
    counting = true;
    uint64_t t0 = now_ns(), c0 = thread_cpu_ns(), admitted = 0;
    if (w->work == WORK_FETCH_ADD) {
        for (uint64_t i = 0; i < w->iterations; i++) {
            atomic_fetch_add_explicit(w->counter, 1, memory_order_relaxed);
        }
    } else {
        for (uint64_t i = 0; i < w->iterations; i++) {
            allot_check(w->rule, NULL, 1, &d);
            admitted += (uint64_t)d.allowed;
        }
    }
    w->ns = now_ns() - t0;
    w->cpu_ns = thread_cpu_ns() - c0;
    counting = false;
    w->admitted = admitted;
    return NULL;
}

struct result
{
    double ns_per_op;  /* per thread, CPU time */
    double wall_ns;    /* per thread, wall clock */
    double ops_per_s;  /* all threads */
    uint64_t allocs;   /* in the measured loops, all reps */
    double admit_frac; /* decisions admitted */
};

static void run(unsigned threads, enum work work, struct allot_rule **rules,
                bool shared, uint64_t iterations, unsigned reps,
                struct result *res)
{
    double ns[64], wall[64], ops[64];
    uint64_t allocs0 = atomic_load(&allocations), admitted = 0;
    for (unsigned r = 0; r < reps; r++) {
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, threads);
        struct worker w[2];
        for (unsigned t = 0; t < threads; t++) {
            w[t] = (struct worker){
                .cpu = (int)t,
                .work = work,
                .counter = &counters[shared ? 0 : t].v,
                .rule = rules[shared ? 0 : t],
                .iterations = iterations,
                .start = &start,
            };
            pthread_create(&w[t].thr, NULL, worker_main, &w[t]);
        }
        uint64_t slowest = 0, cpu = 0;
        for (unsigned t = 0; t < threads; t++) {
            pthread_join(w[t].thr, NULL);
            slowest = w[t].ns > slowest ? w[t].ns : slowest;
            cpu = w[t].cpu_ns > cpu ? w[t].cpu_ns : cpu;
            admitted += w[t].admitted;
        }
        pthread_barrier_destroy(&start);
        ns[r] = (double)cpu / (double)iterations;
        wall[r] = (double)slowest / (double)iterations;
        ops[r] = (double)(iterations * threads) / ((double)slowest / 1e9);
    }
    res->ns_per_op = bench_median(ns, reps);
    res->wall_ns = bench_median(wall, reps);
    res->ops_per_s = bench_median(ops, reps);
    res->allocs = atomic_load(&allocations) - allocs0;
    res->admit_frac = (double)admitted / ((double)iterations * threads * reps);
}

static void print_row(const char *what, unsigned threads,
                      const struct result *r, const struct result *base)
{
    char allocs[32];
    if (COUNT_ALLOCS) {
        snprintf(allocs, sizeof allocs, "%" PRIu64, r->allocs);
    } else {
        snprintf(allocs, sizeof allocs, "n/a");
    }
    printf("| %-36s | %u | %6.2f | %6.2f | %5.2fx | %13.0f | %6s |\n", what,
           threads, r->ns_per_op, r->wall_ns,
           base != NULL ? r->ns_per_op / base->ns_per_op : 1.0, r->ops_per_s,
           allocs);
}

/* --- Rules -----------------------------------------------------------------
 */

static struct quota make_rate(char *path, double rate, uint64_t burst,
                              uint64_t version)
{
    struct quota q;
    memset(&q, 0, sizeof q);
    q.path = path;
    q.version = version;
    q.f.kind = QUOTA_KIND_RATE;
    q.f.rate = rate;
    q.f.burst = burst;
    snprintf(q.f.fleet, sizeof q.f.fleet, "default");
    return q;
}

/* --- Agent memory ----------------------------------------------------------
 */

static int write_rules(const char *dir, unsigned n)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, n);
    for (unsigned i = 0; i < n; i++) {
        char path[64];
        snprintf(path, sizeof path, "team%u/svc%u", i / 100, i);
        struct quota q = make_rate(path, 100 + i, 200, i + 1);
        quota_pack(&pk, &q);
    }
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = lkg_save(dir, sb.data, sb.size, n, 1, msg);
    msgpack_sbuffer_destroy(&sb);
    if (rv != 0) {
        fprintf(stderr, "error: %s\n", msg);
    }
    return rv;
}

static int unix_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    for (int i = 0; i < 500; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
            return fd;
        }
        if (fd >= 0) {
            close(fd);
        }
        usleep(20000);
    }
    return -1;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int recv_frame(int fd, char *buf, size_t size)
{
    size_t have = 0, want = WIRE_HEADER_LEN;
    while (have < want) {
        ssize_t r = recv(fd, buf + have, want - have, 0);
        if (r <= 0) {
            return -1;
        }
        have += (size_t)r;
        if (have == WIRE_HEADER_LEN && want == WIRE_HEADER_LEN) {
            const unsigned char *u = (const unsigned char *)buf;
            size_t len = (size_t)u[0] << 24 | (size_t)u[1] << 16 |
                         (size_t)u[2] << 8 | u[3];
            if (len + WIRE_HEADER_LEN > size) {
                return -1;
            }
            want += len;
        }
    }
    return 0;
}

static void agent_memory(const char *agent, unsigned n_rules)
{
    char dir[] = "/tmp/allot-bench-enforce-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return;
    }
    char data[128], sock[128];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(sock, sizeof sock, "%s/agent.sock", dir);
    mkdir(data, 0700);
    if (write_rules(data, n_rules) != 0) {
        bench_remove_tree(dir);
        return;
    }
    struct bench_proc p = {.name = "allot-agent"};
    snprintf(p.log, sizeof p.log, "%s/agent.log", dir);
    char *argv[] = {(char *)agent, "--data-dir", data, "--socket", sock, NULL};
    if (bench_proc_spawn(&p, argv, NULL) != 0) {
        bench_remove_tree(dir);
        return;
    }
    int fd = unix_connect(sock);
    if (fd < 0) {
        fprintf(stderr, "error: the agent did not listen\n");
        bench_proc_stop_all(&p, 1, 10000, false);
        bench_remove_tree(dir);
        return;
    }
    usleep(200000);
    uint64_t rss_loaded = bench_proc_status_kb(p.pid, "VmRSS");
    uint64_t t0 = now_ns();
    char buf[4096];
    unsigned ok = 0;
    for (unsigned i = 0; i < n_rules; i++) {
        char path[64];
        snprintf(path, sizeof path, "team%u/svc%u", i / 100, i);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        wire_frame_start(&sb, &pk);
        msgpack_pack_map(&pk, 3);
        wire_pack_kv_u64(&pk, "id", i + 1);
        wire_pack_kv_str(&pk, "op", "check");
        wire_pack_str(&pk, "args");
        msgpack_pack_map(&pk, 1);
        wire_pack_kv_str(&pk, "path", path);
        wire_frame_finish(&sb);
        int rv = send_all(fd, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
        if (rv != 0 || recv_frame(fd, buf, sizeof buf) != 0) {
            break;
        }
        ok++;
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    usleep(200000);
    uint64_t rss_used = bench_proc_status_kb(p.pid, "VmRSS");
    uint64_t hwm = bench_proc_status_kb(p.pid, "VmHWM");
    close(fd);
    if (bench_proc_stop_all(&p, 1, 10000, false) != 0) {
        bench_proc_print_log_tail(&p);
    }
    printf("\nallot-agent with %u rules (loaded from its data dir):\n",
           n_rules);
    printf("| state | RSS (MB) |\n|---|---|\n");
    printf("| rules loaded, no client yet | %.1f |\n",
           (double)rss_loaded / 1024);
    printf("| every rule resolved and checked once (%u checks, %.0f/s over "
           "one connection, one at a time) | %.1f |\n",
           ok, ok / secs, (double)rss_used / 1024);
    printf("| peak (VmHWM) | %.1f |\n", (double)hwm / 1024);
    bench_remove_tree(dir);
}

/* --- Main ------------------------------------------------------------------
 */

static void usage(void)
{
    fprintf(stderr, "usage: bench_enforce [--iterations N] [--reps R] "
                    "[--agent PATH] [--rules N] [--no-agent]\n");
}

int main(int argc, char **argv)
{
    uint64_t iterations = 20000000;
    unsigned reps = 5, n_rules = 10000;
    const char *agent = BENCH_AGENT_DEFAULT;
    bool with_agent = true;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
            iterations = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--agent") == 0 && i + 1 < argc) {
            agent = argv[++i];
        } else if (strcmp(argv[i], "--rules") == 0 && i + 1 < argc) {
            n_rules = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--no-agent") == 0) {
            with_agent = false;
        } else {
            usage();
            return 2;
        }
    }
    if (iterations == 0 || reps == 0 || reps > 64) {
        usage();
        return 2;
    }
    char dir[] = "/tmp/allot-bench-enforce-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    struct allot_options o = {.data_dir = dir};
    struct allot *a;
    int rv = allot_open(&o, &a);
    if (rv != 0) {
        fprintf(stderr, "error: allot_open: %s\n", allot_strerror(rv));
        return 1;
    }
    /* Rules nothing will exhaust (1e9 units/s, a burst of 1e9): every
     * decision is admitted, so each one pays the compare-and-swap; and one
     * exhausted rule for the rejection path. */
    char p0[] = "bench/r0", p1[] = "bench/r1", p2[] = "bench/low";
    struct quota qs[3] = {make_rate(p0, 1e9, 1000000000u, 1),
                          make_rate(p1, 1e9, 1000000000u, 2),
                          make_rate(p2, QUOTA_RATE_MIN, 1, 3)};
    rv = rules_replace(a, qs, 3, 3, false);
    struct allot_rule *rules[2], *low;
    rv = rv ? rv : allot_rule(a, p0, &rules[0]);
    rv = rv ? rv : allot_rule(a, p1, &rules[1]);
    rv = rv ? rv : allot_rule(a, p2, &low);
    rv = rv ? rv : enf_persist(a, true); /* nothing left for the house */
    if (rv != 0) {
        fprintf(stderr, "error: setup: %s\n", allot_strerror(rv));
        return 1;
    }
    struct allot_decision d;
    allot_check(low, NULL, 1, &d); /* the one unit it has */

    printf("bench_enforce: %" PRIu64 " iterations per thread, median of %u "
           "runs; clock tick %u us; readers %s\n\n",
           iterations, reps, a->tick_us,
           epoch_use_membarrier ? "fence-free (membarrier)" : "fenced");
    printf("| loop | threads | ns/op, CPU time (per thread) | ns/op, wall "
           "clock | CPU ns vs baseline | ops/s, wall clock (all threads) | "
           "allocations |\n");
    printf("|---|---|---|---|---|---|---|\n");
    struct result base1, base2s, base2d, r;
    run(1, WORK_FETCH_ADD, rules, true, iterations, reps, &base1);
    print_row("baseline: atomic fetch-add", 1, &base1, NULL);
    run(1, WORK_CHECK, rules, true, iterations, reps, &r);
    print_row("allot_check, admitted", 1, &r, &base1);
    double one_thread_ops = r.ops_per_s;
    struct allot_rule *lows[2] = {low, low};
    run(1, WORK_CHECK, lows, true, iterations, reps, &r);
    print_row("allot_check, rejected", 1, &r, &base1);
    run(2, WORK_FETCH_ADD, rules, true, iterations, reps, &base2s);
    print_row("baseline: fetch-add, shared counter", 2, &base2s, NULL);
    run(2, WORK_CHECK, rules, true, iterations, reps, &r);
    print_row("allot_check, one shared rule", 2, &r, &base2s);
    run(2, WORK_FETCH_ADD, rules, false, iterations, reps, &base2d);
    print_row("baseline: fetch-add, counter each", 2, &base2d, NULL);
    run(2, WORK_CHECK, rules, false, iterations, reps, &r);
    print_row("allot_check, a rule each", 2, &r, &base2d);
    printf("\n2-thread throughput on distinct rules: %.2fx the 1-thread "
           "figure\n",
           r.ops_per_s / one_thread_ops);
    allot_close(a);
    bench_remove_tree(dir);
    if (with_agent) {
        agent_memory(agent, n_rules);
    }
    return 0;
}
