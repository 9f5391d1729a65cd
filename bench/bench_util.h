/* bench_util.h - what the load generators in bench/ share: child processes
 * they start and stop, /proc readings, free ports, latency percentiles.
 * Knows nothing of allot's protocol; depends on libc only. */
#ifndef ALLOT_BENCH_UTIL_H
#define ALLOT_BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* --- Child processes ------------------------------------------------------ */

/* A server process started by a benchmark. Only processes started through
 * bench_proc_spawn() are ever signalled. */
struct bench_proc
{
    const char *name; /* "allotd n1", for messages */
    pid_t pid;        /* 0 when never started */
    bool reaped;
    int status; /* wait status once reaped */
    char log[4096];
};

/* Start argv[0] with stdout and stderr appended to p->log, in its own
 * process group, with LD_PRELOAD=preload when preload is not NULL, and
 * SIGTERM sent to it if the benchmark dies first. 0 or -1 (message on
 * stderr). */
int bench_proc_spawn(struct bench_proc *p, char *const argv[],
                     const char *preload);

/* Reap p if it has exited; true when it is gone (or was never started). */
bool bench_proc_gone(struct bench_proc *p);

/* SIGTERM every process of procs[0..n) still running, wait up to timeout_ms
 * for all to exit, then SIGKILL the rest. 0 only when every one exited with
 * status 0 (or, with term_ok, died of the SIGTERM, which is how Go servers
 * such as etcd end after a clean shutdown); otherwise -1, each problem on
 * stderr with the log's tail. */
int bench_proc_stop_all(struct bench_proc *procs, unsigned n,
                        unsigned timeout_ms, bool term_ok);

/* "exit status 3", "killed by signal 9". */
void bench_proc_describe_exit(const struct bench_proc *p, char *buf,
                              size_t len);

/* The last lines of p->log on stderr. */
void bench_proc_print_log_tail(const struct bench_proc *p);

/* --- /proc ------------------------------------------------------------------
 */

/* utime + stime of pid, in clock ticks (0 if unreadable). */
uint64_t bench_proc_cpu_ticks(pid_t pid);
/* A "Key:  N kB" line of /proc/PID/status, in kB (0 if absent). */
uint64_t bench_proc_status_kb(pid_t pid, const char *key);
/* CPU seconds (user + system) this process has used. */
double bench_self_cpu_s(void);

/* --- Misc
 * --------------------------------------------------------------------- */

/* n distinct free TCP ports on 127.0.0.1 (n <= 16). 0 or -1. */
int bench_pick_ports(uint16_t *ports, unsigned n);

/* Remove dir and everything under it (no symlinks followed). */
void bench_remove_tree(const char *dir);

/* Parse a comma-separated list of numbers in [lo, hi] ("1000,10000") into
 * out[0..max). The count (>= 1), or -1 with a message naming flag on
 * stderr. */
int bench_parse_list(const char *flag, const char *s, unsigned long lo,
                     unsigned long hi, unsigned long *out, unsigned max);

/* Append x to a growable array; on allocation failure the sample is lost
 * (counts kept elsewhere stay right). */
void bench_samples_push(uint64_t **v, size_t *n, size_t *cap, uint64_t x);

/* Sort ns samples, then the p-quantile (0 < p <= 1) in ms; 0 if empty. */
void bench_samples_sort(uint64_t *v, size_t n);
double bench_quantile_ms(const uint64_t *sorted, size_t n, double p);

/* Median of n values (sorts v in place). */
double bench_median(double *v, unsigned n);

#endif /* ALLOT_BENCH_UTIL_H */
