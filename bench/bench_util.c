/* bench_util.c - helpers shared by the load generators (bench_util.h). */
#include "bench_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LOG_TAIL_LINES 15

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* --- Child processes ------------------------------------------------------ */

int bench_proc_spawn(struct bench_proc *p, char *const argv[],
                     const char *preload)
{
    int log_fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0) {
        fprintf(stderr, "error: io: cannot create %s: %s\n", p->log,
                strerror(errno));
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "error: io: fork: %s\n", strerror(errno));
        close(log_fd);
        return -1;
    }
    if (pid == 0) {
        /* Own process group: a Ctrl-C reaches the benchmark only, which
         * then stops its servers itself. Die with the benchmark if it dies
         * without stopping us. */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) {
            _exit(127);
        }
        dup2(log_fd, STDOUT_FILENO);
        dup2(log_fd, STDERR_FILENO);
        signal(SIGPIPE, SIG_DFL);
        if (preload != NULL) {
            setenv("LD_PRELOAD", preload, 1);
        }
        execv(argv[0], argv);
        fprintf(stderr, "cannot exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(log_fd);
    p->pid = pid;
    p->reaped = false;
    p->status = 0;
    return 0;
}

bool bench_proc_gone(struct bench_proc *p)
{
    if (p->pid == 0 || p->reaped) {
        return true;
    }
    int st;
    if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
        p->status = st;
        p->reaped = true;
        return true;
    }
    return false;
}

void bench_proc_describe_exit(const struct bench_proc *p, char *buf, size_t len)
{
    if (WIFEXITED(p->status)) {
        snprintf(buf, len, "exit status %d", WEXITSTATUS(p->status));
    } else if (WIFSIGNALED(p->status)) {
        snprintf(buf, len, "killed by signal %d", WTERMSIG(p->status));
    } else {
        snprintf(buf, len, "wait status 0x%x", (unsigned)p->status);
    }
}

void bench_proc_print_log_tail(const struct bench_proc *p)
{
    FILE *f = fopen(p->log, "r");
    if (f == NULL) {
        return;
    }
    char ring[LOG_TAIL_LINES][256];
    unsigned n = 0;
    while (fgets(ring[n % LOG_TAIL_LINES], sizeof ring[0], f) != NULL) {
        n++;
    }
    fclose(f);
    fprintf(stderr, "--- last lines of %s ---\n", p->log);
    for (unsigned i = n > LOG_TAIL_LINES ? n - LOG_TAIL_LINES : 0; i < n; i++) {
        fputs(ring[i % LOG_TAIL_LINES], stderr);
    }
}

int bench_proc_stop_all(struct bench_proc *procs, unsigned n,
                        unsigned timeout_ms, bool term_ok)
{
    int rv = 0;
    for (unsigned i = 0; i < n; i++) {
        if (!bench_proc_gone(&procs[i])) {
            kill(procs[i].pid, SIGTERM);
        }
    }
    uint64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        bool all = true;
        for (unsigned i = 0; i < n; i++) {
            all = bench_proc_gone(&procs[i]) && all;
        }
        if (all || mono_ms() >= deadline) {
            break;
        }
        usleep(20000);
    }
    for (unsigned i = 0; i < n; i++) {
        struct bench_proc *p = &procs[i];
        if (p->pid == 0) {
            continue;
        }
        if (!bench_proc_gone(p)) {
            fprintf(stderr,
                    "error: timeout: %s (pid %d) still running %u ms after "
                    "SIGTERM; killing it\n",
                    p->name, (int)p->pid, timeout_ms);
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &p->status, 0);
            p->reaped = true;
            rv = -1;
            continue;
        }
        bool clean = WIFEXITED(p->status) ? WEXITSTATUS(p->status) == 0
                                          : term_ok && WIFSIGNALED(p->status) &&
                                                WTERMSIG(p->status) == SIGTERM;
        if (!clean) {
            char how[64];
            bench_proc_describe_exit(p, how, sizeof how);
            fprintf(stderr, "error: internal: %s stopped with %s\n", p->name,
                    how);
            bench_proc_print_log_tail(p);
            rv = -1;
        }
    }
    return rv;
}

/* --- /proc ------------------------------------------------------------------
 */

uint64_t bench_proc_cpu_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: fields resume
     * after the last ')'. utime and stime are fields 14 and 15. */
    char *p = strrchr(buf, ')');
    if (p == NULL) {
        return 0;
    }
    unsigned long long utime = 0, stime = 0;
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &utime, &stime) != 2) {
        return 0;
    }
    return utime + stime;
}

uint64_t bench_proc_status_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    size_t klen = strlen(key);
    uint64_t kb = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            kb = strtoull(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

double bench_self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* --- Misc
 * --------------------------------------------------------------------- */

/* Bind port 0 n times with every socket open at once, so the ports differ,
 * then close them. Another process could take one before the server binds
 * it; the server then fails to start and the benchmark says so. */
int bench_pick_ports(uint16_t *ports, unsigned n)
{
    int fds[16];
    int rv = 0;
    unsigned opened = 0;
    if (n > 16) {
        return -1;
    }
    for (; opened < n; opened++) {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            rv = -1;
            break;
        }
        fds[opened] = fd;
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
            getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
            opened++;
            rv = -1;
            break;
        }
        ports[opened] = ntohs(sa.sin_port);
    }
    for (unsigned i = 0; i < opened; i++) {
        close(fds[i]);
    }
    return rv;
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    int rv = flag == FTW_DP ? rmdir(path) : unlink(path);
    if (rv != 0) {
        fprintf(stderr, "warning: cannot remove %s: %s\n", path,
                strerror(errno));
    }
    return 0;
}

void bench_remove_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int bench_parse_list(const char *flag, const char *s, unsigned long lo,
                     unsigned long hi, unsigned long *out, unsigned max)
{
    char copy[256];
    if (snprintf(copy, sizeof copy, "%s", s) >= (int)sizeof copy) {
        fprintf(stderr, "error: invalid: %s: list too long\n", flag);
        return -1;
    }
    unsigned n = 0;
    char *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(t, &end, 10);
        if (n == max || errno != 0 || t[0] == '-' || *end != '\0' || v < lo ||
            v > hi) {
            fprintf(stderr,
                    "error: invalid: %s takes up to %u numbers, each %lu "
                    "to %lu, got \"%s\"\n",
                    flag, max, lo, hi, s);
            return -1;
        }
        out[n++] = v;
    }
    if (n == 0) {
        fprintf(stderr, "error: invalid: %s needs a number\n", flag);
        return -1;
    }
    return (int)n;
}

void bench_samples_push(uint64_t **v, size_t *n, size_t *cap, uint64_t x)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 65536;
        uint64_t *p = realloc(*v, ncap * sizeof *p);
        if (p == NULL) {
            return;
        }
        *v = p;
        *cap = ncap;
    }
    (*v)[(*n)++] = x;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void bench_samples_sort(uint64_t *v, size_t n)
{
    if (n > 1) {
        qsort(v, n, sizeof *v, cmp_u64);
    }
}

double bench_quantile_ms(const uint64_t *sorted, size_t n, double p)
{
    if (n == 0) {
        return 0.0;
    }
    size_t i = (size_t)ceil(p * (double)n);
    i = i == 0 ? 0 : i - 1;
    return (double)sorted[i < n ? i : n - 1] / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(double *v, unsigned n)
{
    if (n == 0) {
        return 0.0;
    }
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
