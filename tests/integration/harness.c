/* harness.c - real allotd processes for the integration tests (harness.h).
 *
 * Happy path: harness_main() makes the run's root directory and runs the
 * suite; each test's harness_begin() makes its directory, the test starts
 * nodes (fork + exec of $ALLOTD with stdout and stderr appended to
 * nodeN.log), drives them, and harness_end() stops them with SIGTERM,
 * checks they exited 0 and logged no sanitizer report, and removes the
 * directory.
 *
 * Failure modes and what happens:
 *   - an assertion fails in the test: Check _exit()s the forked test
 *     process; its children die with it (PR_SET_PDEATHSIG) and Check kills
 *     the test's process group; harness_main() then finds the directory,
 *     kills any PID from its pids file that is still the process we started
 *     (same start time in /proc), and prints where the logs are;
 *   - a node does not exit after SIGTERM within HARNESS_EXIT_WAIT_MS: it is
 *     killed with SIGKILL and the test fails;
 *   - allotctl hangs: killed after its own timeout plus a margin, the test
 *     fails. */
#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "wire.h"

#define ARGS_MAX       64
#define EXTRA_ARGS_MAX 32

static const char *const sanitizer_markers[] = {
    "ERROR: AddressSanitizer",
    "runtime error:",
    "LeakSanitizer",
    NULL,
};

struct hnode
{
    bool used;
    pid_t pid;     /* the current process; valid while !reaped */
    bool reaped;   /* waited for */
    bool claimed;  /* the test asked for its exit status */
    int signalled; /* last signal the test sent it, 0 if none */
    int status;    /* waitpid status once reaped */
    unsigned starts;
    uint16_t raft_port;
    uint16_t client_port;
    char raft_addr[32];
    char client_addr[32];
    char id_arg[24];
    char data_dir[600];
    char log_path[600];
    char mode_arg[1024]; /* --cluster or --join value */
    bool join;
    bool secure; /* started without --insecure (harness_set_secure) */
    const char *extra[EXTRA_ARGS_MAX + 1];
    uint16_t http_port; /* 0: no --http (harness_set_http) */
    char http_addr[32];
    uint16_t gossip_port; /* 0: no --gossip (harness_set_gossip) */
    char gossip_addr[32];
    char gossip_keyring[600]; /* DIR/nodeN.keyring, the node's own copy */
    char gossip_seeds[32];
};

static struct
{
    char root[256]; /* the run's directory; "" without harness_main */
    pid_t main_pid; /* the process that runs harness_main */
    char dir[512];  /* this test's */
    char name[64];
    const char *allotd;
    const char *allotctl;
    const char *log_level;
    double t0;
    FILE *log;
    bool begun;
    unsigned ctl_runs;
    const char *const *extra;
    bool secure;                   /* harness_set_secure */
    bool http;                     /* harness_set_http */
    char gossip_keyring[600];      /* harness_set_gossip; "" for none */
    char gossip_seed[32];          /* the first gossip node's address */
    bool has_identity;             /* harness_set_identity */
    struct auth_identity identity; /* signs harness_call */
    char endpoints[HARNESS_NODES_MAX * 32];
    char status_text[64];
    struct hnode nodes[HARNESS_NODES_MAX + 1]; /* index = node id */
} H;

/* --- Small helpers -------------------------------------------------------- */

double harness_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double harness_elapsed(void)
{
    return harness_now() - H.t0;
}

const char *harness_dir(void)
{
    return H.dir;
}

void harness_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void harness_log(const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    printf("[%8.3fs] %s: %s\n", harness_elapsed(), H.name, line);
    fflush(stdout);
    if (H.log != NULL) {
        fprintf(H.log, "[%8.3fs] %s\n", harness_elapsed(), line);
        fflush(H.log);
    }
}

const char *harness_status_text(int status)
{
    if (WIFEXITED(status)) {
        snprintf(H.status_text, sizeof H.status_text, "exited %d",
                 WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        snprintf(H.status_text, sizeof H.status_text, "killed by signal %d%s",
                 WTERMSIG(status), WCOREDUMP(status) ? " (core dumped)" : "");
    } else {
        snprintf(H.status_text, sizeof H.status_text, "status 0x%x", status);
    }
    return H.status_text;
}

/* The whole file, NUL-terminated, or NULL. */
static char *read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (cap - len < 2) {
            char *p = realloc(buf, cap * 2);
            if (p == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = p;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) {
            break;
        }
    }
    fclose(f);
    if (buf != NULL) {
        buf[len] = '\0';
        if (len_out != NULL) {
            *len_out = len;
        }
    }
    return buf;
}

/* The first line of text holding a sanitizer marker, copied into line;
 * false if none. */
static bool find_sanitizer_report(const char *text, char *line, size_t size)
{
    for (unsigned i = 0; text != NULL && sanitizer_markers[i] != NULL; i++) {
        const char *hit = strstr(text, sanitizer_markers[i]);
        if (hit == NULL) {
            continue;
        }
        const char *start = hit;
        while (start > text && start[-1] != '\n') {
            start--;
        }
        const char *end = strchr(hit, '\n');
        size_t n = end != NULL ? (size_t)(end - start) : strlen(start);
        snprintf(line, size, "%.*s", (int)(n < size ? n : size - 1), start);
        return true;
    }
    return false;
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void rm_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Field 22 of /proc/PID/stat (start time in clock ticks); 0 if unknown or
 * the process is a zombie. It tells a process we started from a later one
 * that reuses its PID. */
static unsigned long long proc_start_time(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    char *s = read_file(path, NULL);
    if (s == NULL) {
        return 0;
    }
    unsigned long long start = 0;
    char *p = strrchr(s, ')');
    if (p != NULL && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X') {
        /* A zombie or dead process counts as gone. */
        /* After ") " come fields 3, 4, ...; starttime is field 22. */
        p++;
        for (int field = 3; field < 22 && p != NULL; field++) {
            p = strchr(p + 1, ' ');
        }
        if (p != NULL) {
            start = strtoull(p + 1, NULL, 10);
        }
    }
    free(s);
    return start;
}

/* Record a child in the directory's pids file: "PID START_TIME WHAT". */
static void record_pid(pid_t pid, const char *what)
{
    char path[sizeof H.dir + 8];
    snprintf(path, sizeof path, "%s/pids", H.dir);
    FILE *f = fopen(path, "a");
    if (f != NULL) {
        fprintf(f, "%d %llu %s\n", (int)pid, proc_start_time(pid), what);
        fclose(f);
    }
}

/* fork + exec argv with stdin from /dev/null and stdout/stderr to the given
 * files. The child dies with us (PR_SET_PDEATHSIG) and inherits no other
 * descriptor. Returns the PID or -1. */
static pid_t spawn(char *const argv[], const char *out_path,
                   const char *err_path, bool append)
{
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC);
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int out = open(out_path, flags, 0644);
    int err = err_path != NULL ? open(err_path, flags, 0644) : out;
    pid_t pid = -1;
    if (in >= 0 && out >= 0 && err >= 0) {
        pid_t parent = getpid();
        fflush(NULL);
        pid = fork();
        if (pid == 0) {
            /* Only async-signal-safe calls from here to exec. */
            if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) {
                _exit(127);
            }
            struct sigaction dfl;
            memset(&dfl, 0, sizeof dfl);
            dfl.sa_handler = SIG_DFL;
            sigaction(SIGPIPE, &dfl, NULL);
            sigaction(SIGTERM, &dfl, NULL);
            sigaction(SIGINT, &dfl, NULL);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) {
                _exit(127);
            }
            close_range(3, ~0u, 0);
            execv(argv[0], argv);
            _exit(127);
        }
    }
    if (in >= 0) {
        close(in);
    }
    if (err >= 0 && err != out) {
        close(err);
    }
    if (out >= 0) {
        close(out);
    }
    return pid;
}

/* Wait for pid up to timeout_ms. 1 and *status when it exited, 0 if not. */
static int wait_pid(pid_t pid, int timeout_ms, int *status)
{
    double deadline = harness_now() + timeout_ms / 1000.0;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid) {
            return 1;
        }
        if (r < 0 && errno != EINTR) {
            *status = 0x7f00; /* not our child any more: cannot tell */
            return 1;
        }
        if (harness_now() >= deadline) {
            return 0;
        }
        harness_sleep_ms(10);
    }
}

/* --- Ports ---------------------------------------------------------------- */

/* n distinct free ports: every socket stays bound until all are read back,
 * so the kernel cannot hand out the same port twice. */
/* raft, client, http, gossip */
#define PORTS_PER_NODE_MAX 4

static void alloc_ports(uint16_t *ports, unsigned n)
{
    int fds[PORTS_PER_NODE_MAX * HARNESS_NODES_MAX];
    ck_assert_uint_le(n, PORTS_PER_NODE_MAX * HARNESS_NODES_MAX);
    for (unsigned i = 0; i < n; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa.sin_port = 0;
        socklen_t len = sizeof sa;
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_msg(fds[i] >= 0, "socket: %s", strerror(errno));
        ck_assert_msg(bind(fds[i], (struct sockaddr *)&sa, sizeof sa) == 0 &&
                          getsockname(fds[i], (struct sockaddr *)&sa, &len) ==
                              0,
                      "bind 127.0.0.1:0: %s", strerror(errno));
        ports[i] = ntohs(sa.sin_port);
    }
    for (unsigned i = 0; i < n; i++) {
        close(fds[i]);
    }
}

uint16_t harness_free_port(void)
{
    uint16_t port;
    alloc_ports(&port, 1);
    return port;
}

/* --- Run and test lifecycle ----------------------------------------------- */

static const char *tmp_base(void)
{
    const char *t = getenv("TMPDIR");
    return t != NULL && t[0] != '\0' ? t : "/tmp";
}

/* Print the last `lines` lines of a file, indented. */
static void print_tail(const char *path, unsigned lines)
{
    size_t len;
    char *s = read_file(path, &len);
    if (s == NULL) {
        return;
    }
    size_t start = len;
    unsigned seen = 0;
    while (start > 0 && seen <= lines) {
        start--;
        if (s[start] == '\n' && start + 1 < len) {
            seen++;
        }
    }
    if (seen > lines) {
        start++;
    }
    printf("---- last lines of %s\n%s", path, s + start);
    if (len > 0 && s[len - 1] != '\n') {
        putchar('\n');
    }
    free(s);
}

/* A test directory left behind: its test failed (or ALLOT_ITEST_KEEP). Kill
 * what it still runs and say where its logs are. */
static void report_leftover(const char *dir)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/pids", dir);
    FILE *f = fopen(path, "r");
    unsigned killed = 0;
    if (f != NULL) {
        int pid;
        unsigned long long start;
        char what[64];
        while (fscanf(f, "%d %llu %63s", &pid, &start, what) == 3) {
            if (pid > 0 && start != 0 && proc_start_time(pid) == start &&
                kill(pid, SIGKILL) == 0) {
                killed++;
            }
        }
        fclose(f);
    }
    printf("harness: test directory kept: %s (logs: nodeN.log, "
           "harness.log, ctl-K.err; %u process(es) of it still present, "
           "sent SIGKILL)\n",
           dir, killed);
    DIR *d = opendir(dir);
    if (d == NULL) {
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "node", 4) == 0 && n > 4 &&
            strcmp(e->d_name + n - 4, ".log") == 0) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            char *text = read_file(path, NULL);
            char line[512];
            if (find_sanitizer_report(text, line, sizeof line)) {
                printf("harness: SANITIZER REPORT in %s: %s\n", path, line);
            }
            free(text);
            print_tail(path, 12);
        }
    }
    closedir(d);
}

int harness_main(Suite *s)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    H.main_pid = getpid();
    snprintf(H.root, sizeof H.root, "%.200s/allot-itest-XXXXXX", tmp_base());
    if (mkdtemp(H.root) == NULL) {
        fprintf(stderr, "harness: mkdtemp %s: %s\n", H.root, strerror(errno));
        return 1;
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);

    DIR *d = opendir(H.root);
    unsigned left = 0;
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') {
                continue;
            }
            char dir[600];
            snprintf(dir, sizeof dir, "%s/%.300s", H.root, e->d_name);
            report_leftover(dir);
            left++;
        }
        closedir(d);
    }
    if (left == 0) {
        rmdir(H.root);
    }
    return failed == 0 ? 0 : 1;
}

void harness_begin(const char *test_name)
{
    if (H.begun) {
        /* The previous test failed without forking (CK_FORK=no): what it
         * left running goes now; harness_main() reports its directory. */
        for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
            struct hnode *n = &H.nodes[id];
            int status;
            if (n->used && !n->reaped && kill(n->pid, SIGKILL) == 0) {
                wait_pid(n->pid, HARNESS_EXIT_WAIT_MS, &status);
            }
        }
        if (H.log != NULL) {
            fclose(H.log);
            H.log = NULL;
        }
    }
    if (H.main_pid != 0 && getpid() != H.main_pid) {
        /* A forked test dies with the runner (meson's timeout kills the
         * runner, not the test's process group), and its nodes with it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != H.main_pid) {
            _exit(1);
        }
    }
    memset(&H.nodes, 0, sizeof H.nodes);
    H.extra = NULL;
    H.secure = false;
    H.http = false;
    H.gossip_keyring[0] = '\0';
    H.gossip_seed[0] = '\0';
    H.has_identity = false;
    memset(&H.identity, 0, sizeof H.identity);
    H.ctl_runs = 0;
    H.t0 = harness_now();
    snprintf(H.name, sizeof H.name, "%s", test_name);
    H.allotd = getenv("ALLOTD");
    H.allotctl = getenv("ALLOTCTL");
    H.log_level = getenv("ALLOT_ITEST_LOG_LEVEL");
    if (H.log_level == NULL || H.log_level[0] == '\0') {
        H.log_level = "info";
    }
    ck_assert_msg(H.allotd != NULL && access(H.allotd, X_OK) == 0,
                  "ALLOTD must name the allotd binary (got %s)",
                  H.allotd != NULL ? H.allotd : "nothing");
    ck_assert_msg(H.allotctl != NULL && access(H.allotctl, X_OK) == 0,
                  "ALLOTCTL must name the allotctl binary (got %s)",
                  H.allotctl != NULL ? H.allotctl : "nothing");
    if (H.root[0] != '\0') {
        snprintf(H.dir, sizeof H.dir, "%s/%.64s-XXXXXX", H.root, test_name);
    } else {
        snprintf(H.dir, sizeof H.dir, "%.256s/allot-%.64s-XXXXXX", tmp_base(),
                 test_name);
    }
    ck_assert_msg(mkdtemp(H.dir) != NULL, "mkdtemp %s: %s", H.dir,
                  strerror(errno));
    char path[sizeof H.dir + 16];
    snprintf(path, sizeof path, "%s/harness.log", H.dir);
    H.log = fopen(path, "w");
    H.begun = true;
    harness_log("test directory %s", H.dir);
}

void harness_end(void)
{
    ck_assert_msg(H.begun, "harness_end without harness_begin");
    char problems[4096] = "";
    size_t off = 0;
#define PROBLEM(...)                                                          \
    do {                                                                      \
        if (off < sizeof problems) {                                          \
            int n_ =                                                          \
                snprintf(problems + off, sizeof problems - off, __VA_ARGS__); \
            off += n_ > 0 ? (size_t)n_ : 0;                                   \
        }                                                                     \
    } while (0)

    /* A node that exited without the test looking at its status: fine if
     * the test SIGKILLed it, must be 0 after its SIGTERM, a crash if the
     * test sent nothing. */
    for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
        struct hnode *n = &H.nodes[id];
        if (!n->used || harness_node_running(id) || n->claimed ||
            n->signalled == SIGKILL) {
            continue;
        }
        if (n->signalled == 0) {
            PROBLEM("node %u %s on its own; ", id,
                    harness_status_text(n->status));
        } else if (!WIFEXITED(n->status) || WEXITSTATUS(n->status) != 0) {
            PROBLEM("node %u %s after signal %d; ", id,
                    harness_status_text(n->status), n->signalled);
        }
    }
    /* Clean shutdown: every running node gets SIGTERM at once and must exit
     * with status 0 (3 would mean libuv handles were left open). */
    double t = harness_now();
    unsigned stopped = 0;
    for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
        if (harness_node_running(id)) {
            kill(H.nodes[id].pid, SIGTERM);
            stopped++;
        }
    }
    for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
        struct hnode *n = &H.nodes[id];
        if (!n->used || n->reaped) {
            continue;
        }
        int status;
        if (!wait_pid(n->pid, HARNESS_EXIT_WAIT_MS, &status)) {
            kill(n->pid, SIGKILL);
            wait_pid(n->pid, HARNESS_EXIT_WAIT_MS, &status);
            PROBLEM("node %u did not exit within %d ms of SIGTERM; ", id,
                    HARNESS_EXIT_WAIT_MS);
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            PROBLEM("node %u %s after SIGTERM (want exited 0); ", id,
                    harness_status_text(status));
        }
        n->reaped = n->claimed = true;
        n->status = status;
    }
    if (stopped > 0) {
        harness_log("SIGTERM to %u node(s): all exited in %.3f s", stopped,
                    harness_now() - t);
    }
    for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
        if (!H.nodes[id].used) {
            continue;
        }
        char *text = read_file(H.nodes[id].log_path, NULL);
        char line[512];
        if (find_sanitizer_report(text, line, sizeof line)) {
            PROBLEM("sanitizer report in %s: %s; ", H.nodes[id].log_path, line);
        }
        free(text);
    }
#undef PROBLEM
    if (problems[0] != '\0') {
        harness_log("FAILED: %s", problems);
    }
    ck_assert_msg(problems[0] == '\0', "%s(logs in %s)", problems, H.dir);
    harness_log("passed in %.3f s", harness_elapsed());
    if (H.log != NULL) {
        fclose(H.log);
        H.log = NULL;
    }
    const char *keep = getenv("ALLOT_ITEST_KEEP");
    if (keep == NULL || strcmp(keep, "1") != 0) {
        rm_tree(H.dir);
    }
    H.begun = false;
}

/* --- Nodes ---------------------------------------------------------------- */

static struct hnode *node_get(unsigned id)
{
    ck_assert_msg(id >= 1 && id <= HARNESS_NODES_MAX && H.nodes[id].used,
                  "node %u was never started", id);
    return &H.nodes[id];
}

void harness_set_node_args(const char *const *args)
{
    H.extra = args;
}

void harness_set_secure(bool secure)
{
    H.secure = secure;
}

void harness_set_http(bool http)
{
    H.http = http;
}

void harness_set_gossip(const char *keyring)
{
    snprintf(H.gossip_keyring, sizeof H.gossip_keyring, "%s",
             keyring != NULL ? keyring : "");
    H.gossip_seed[0] = '\0';
}

/* Give node id --gossip 127.0.0.1:port, its own copy of the keyring (a
 * rotation rewrites it) and the first gossip node as its seed. */
static void node_set_gossip(unsigned id, uint16_t port)
{
    struct hnode *n = &H.nodes[id];
    n->gossip_port = port;
    snprintf(n->gossip_addr, sizeof n->gossip_addr, "127.0.0.1:%u",
             (unsigned)port);
    snprintf(n->gossip_keyring, sizeof n->gossip_keyring, "%s/node%u.keyring",
             H.dir, id);
    size_t len;
    char *text = read_file(H.gossip_keyring, &len);
    ck_assert_msg(text != NULL, "cannot read %s", H.gossip_keyring);
    FILE *f = fopen(n->gossip_keyring, "w");
    ck_assert_msg(f != NULL && fwrite(text, 1, len, f) == len && fclose(f) == 0,
                  "cannot write %s", n->gossip_keyring);
    free(text);
    if (H.gossip_seed[0] == '\0') {
        memcpy(H.gossip_seed, n->gossip_addr, sizeof H.gossip_seed);
    }
    memcpy(n->gossip_seeds, H.gossip_seed, sizeof n->gossip_seeds);
}

void harness_set_identity(const struct auth_identity *id)
{
    H.has_identity = id != NULL;
    if (id != NULL) {
        H.identity = *id;
    } else {
        memset(&H.identity, 0, sizeof H.identity);
    }
}

static void node_prepare(unsigned id, uint16_t raft_port, uint16_t client_port)
{
    ck_assert_msg(id >= 1 && id <= HARNESS_NODES_MAX, "node id %u", id);
    struct hnode *n = &H.nodes[id];
    ck_assert_msg(!n->used, "node %u already started", id);
    memset(n, 0, sizeof *n);
    n->used = true;
    n->reaped = true; /* nothing running yet */
    n->raft_port = raft_port;
    n->client_port = client_port;
    snprintf(n->raft_addr, sizeof n->raft_addr, "127.0.0.1:%u",
             (unsigned)raft_port);
    snprintf(n->client_addr, sizeof n->client_addr, "127.0.0.1:%u",
             (unsigned)client_port);
    snprintf(n->id_arg, sizeof n->id_arg, "%u", id);
    snprintf(n->data_dir, sizeof n->data_dir, "%s/node%u", H.dir, id);
    snprintf(n->log_path, sizeof n->log_path, "%s/node%u.log", H.dir, id);
    n->secure = H.secure;
    unsigned k = 0;
    for (; H.extra != NULL && H.extra[k] != NULL && k < EXTRA_ARGS_MAX; k++) {
        n->extra[k] = H.extra[k];
    }
    n->extra[k] = NULL;
}

/* Give node id an HTTP listener on 127.0.0.1:port (harness_set_http). */
static void node_set_http(unsigned id, uint16_t port)
{
    struct hnode *n = &H.nodes[id];
    n->http_port = port;
    snprintf(n->http_addr, sizeof n->http_addr, "127.0.0.1:%u", (unsigned)port);
}

static void node_spawn(unsigned id)
{
    struct hnode *n = &H.nodes[id];
    const char *argv[ARGS_MAX];
    unsigned a = 0;
    argv[a++] = H.allotd;
    argv[a++] = "--id";
    argv[a++] = n->id_arg;
    argv[a++] = "--data-dir";
    argv[a++] = n->data_dir;
    argv[a++] = "--raft";
    argv[a++] = n->raft_addr;
    argv[a++] = "--client";
    argv[a++] = n->client_addr;
    argv[a++] = n->join ? "--join" : "--cluster";
    argv[a++] = n->mode_arg;
    if (!n->secure) {
        argv[a++] = "--insecure";
    }
    argv[a++] = "--log-level";
    argv[a++] = H.log_level;
    if (n->http_port != 0) {
        argv[a++] = "--http";
        argv[a++] = n->http_addr;
    }
    if (n->gossip_port != 0) {
        argv[a++] = "--gossip";
        argv[a++] = n->gossip_addr;
        argv[a++] = "--gossip-keyring";
        argv[a++] = n->gossip_keyring;
        argv[a++] = "--gossip-seeds";
        argv[a++] = n->gossip_seeds;
    }
    for (unsigned k = 0; n->extra[k] != NULL && a < ARGS_MAX - 1; k++) {
        argv[a++] = n->extra[k];
    }
    argv[a] = NULL;

    char cmdline[2048] = "";
    size_t off = 0;
    for (unsigned i = 0; i < a && off < sizeof cmdline; i++) {
        int w = snprintf(cmdline + off, sizeof cmdline - off, "%s%s",
                         i ? " " : "", argv[i]);
        off += w > 0 ? (size_t)w : 0;
    }
    FILE *lf = fopen(n->log_path, "a");
    if (lf != NULL) {
        fprintf(lf, "==== harness: start #%u at %.3f s: %s\n", n->starts + 1,
                harness_elapsed(), cmdline);
        fclose(lf);
    }
    pid_t pid = spawn((char *const *)argv, n->log_path, NULL, true);
    ck_assert_msg(pid > 0, "cannot start node %u: %s", id, strerror(errno));
    n->pid = pid;
    n->reaped = false;
    n->claimed = false;
    n->signalled = 0;
    n->status = 0;
    n->starts++;
    char what[32];
    snprintf(what, sizeof what, "allotd-%u", id);
    record_pid(pid, what);
    harness_log("node %u started (pid %d, raft %s, client %s%s%s)", id,
                (int)pid, n->raft_addr, n->client_addr,
                n->join ? ", join via " : "", n->join ? n->mode_arg : "");
}

void harness_cluster_start(unsigned count)
{
    ck_assert_uint_ge(count, 1);
    ck_assert_uint_le(count, HARNESS_NODES_MAX);
    uint16_t ports[PORTS_PER_NODE_MAX * HARNESS_NODES_MAX];
    /* With --http and --gossip, more ports per node, allocated with the
     * others: raft and client ports first, then http, then gossip. */
    bool gossip = H.gossip_keyring[0] != '\0';
    unsigned per_node = 2u + (H.http ? 1u : 0u) + (gossip ? 1u : 0u);
    alloc_ports(ports, per_node * count);
    char cluster[1024] = "";
    size_t off = 0;
    for (unsigned i = 0; i < count; i++) {
        int w =
            snprintf(cluster + off, sizeof cluster - off, "%s%u=127.0.0.1:%u",
                     i ? "," : "", i + 1, (unsigned)ports[2 * i]);
        off += w > 0 ? (size_t)w : 0;
    }
    for (unsigned i = 0; i < count; i++) {
        node_prepare(i + 1, ports[2 * i], ports[2 * i + 1]);
        snprintf(H.nodes[i + 1].mode_arg, sizeof H.nodes[i + 1].mode_arg, "%s",
                 cluster);
        if (H.http) {
            node_set_http(i + 1, ports[2 * count + i]);
        }
        if (gossip) {
            node_set_gossip(i + 1, ports[(H.http ? 3u : 2u) * count + i]);
        }
    }
    for (unsigned i = 0; i < count; i++) {
        node_spawn(i + 1);
    }
}

void harness_node_join(unsigned id, unsigned via)
{
    ck_assert_uint_ne(id, via);
    char via_addr[32];
    memcpy(via_addr, node_get(via)->client_addr, sizeof via_addr);
    uint16_t ports[PORTS_PER_NODE_MAX];
    bool gossip = H.gossip_keyring[0] != '\0';
    alloc_ports(ports, 2u + (H.http ? 1u : 0u) + (gossip ? 1u : 0u));
    node_prepare(id, ports[0], ports[1]);
    if (H.http) {
        node_set_http(id, ports[2]);
    }
    if (gossip) {
        node_set_gossip(id, ports[H.http ? 3 : 2]);
    }
    H.nodes[id].join = true;
    memcpy(H.nodes[id].mode_arg, via_addr, sizeof via_addr);
    node_spawn(id);
}

bool harness_node_running(unsigned id)
{
    if (id < 1 || id > HARNESS_NODES_MAX) {
        return false;
    }
    struct hnode *n = &H.nodes[id];
    if (!n->used || n->reaped) {
        return false;
    }
    int status;
    pid_t r = waitpid(n->pid, &status, WNOHANG);
    if (r == n->pid) {
        n->reaped = true;
        n->status = status;
        harness_log("node %u (pid %d) has exited: %s", id, (int)n->pid,
                    harness_status_text(status));
        return false;
    }
    return true;
}

void harness_node_kill(unsigned id, int sig)
{
    struct hnode *n = node_get(id);
    ck_assert_msg(harness_node_running(id), "node %u is not running (%s)", id,
                  harness_status_text(n->status));
    harness_log("node %u: sending signal %d to pid %d", id, sig, (int)n->pid);
    ck_assert_msg(kill(n->pid, sig) == 0, "kill %d: %s", (int)n->pid,
                  strerror(errno));
    n->signalled = sig;
}

int harness_wait_exit(unsigned id, int *status)
{
    struct hnode *n = node_get(id);
    if (!n->reaped) {
        double t = harness_now();
        int st;
        if (!wait_pid(n->pid, HARNESS_EXIT_WAIT_MS, &st)) {
            harness_log("node %u (pid %d) still running after %d ms", id,
                        (int)n->pid, HARNESS_EXIT_WAIT_MS);
            return -1;
        }
        n->reaped = true;
        n->status = st;
        harness_log("node %u (pid %d) exited after %.3f s: %s", id, (int)n->pid,
                    harness_now() - t, harness_status_text(st));
    }
    n->claimed = true;
    *status = n->status;
    return 0;
}

void harness_node_restart(unsigned id)
{
    struct hnode *n = node_get(id);
    ck_assert_msg(n->reaped, "node %u must have exited before a restart", id);
    node_spawn(id);
}

pid_t harness_node_pid(unsigned id)
{
    return node_get(id)->pid;
}

const char *harness_node_client_addr(unsigned id)
{
    return node_get(id)->client_addr;
}

const char *harness_node_raft_addr(unsigned id)
{
    return node_get(id)->raft_addr;
}

const char *harness_node_log(unsigned id)
{
    return node_get(id)->log_path;
}

const char *harness_node_gossip_addr(unsigned id)
{
    return node_get(id)->gossip_addr;
}

const char *harness_node_gossip_keyring(unsigned id)
{
    return node_get(id)->gossip_keyring;
}

const char *harness_node_http_addr(unsigned id)
{
    return node_get(id)->http_addr;
}

uint16_t harness_node_http_port(unsigned id)
{
    return node_get(id)->http_port;
}

const char *harness_endpoints(unsigned except)
{
    size_t off = 0;
    H.endpoints[0] = '\0';
    for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
        if (id == except || !harness_node_running(id)) {
            continue;
        }
        int w = snprintf(H.endpoints + off, sizeof H.endpoints - off, "%s%s",
                         off ? "," : "", H.nodes[id].client_addr);
        off += w > 0 ? (size_t)w : 0;
    }
    return H.endpoints;
}

/* --- allotctl ------------------------------------------------------------- */

void harness_ctl(struct harness_ctl *r, const char *endpoints, ...)
{
    memset(r, 0, sizeof *r);
    r->status = -1;
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", HARNESS_CTL_TIMEOUT_MS);
    char eps[sizeof H.endpoints];
    snprintf(eps, sizeof eps, "%s",
             endpoints != NULL ? endpoints : harness_endpoints(0));

    const char *argv[ARGS_MAX];
    unsigned a = 0;
    argv[a++] = H.allotctl;
    argv[a++] = "--endpoints";
    argv[a++] = eps;
    argv[a++] = "--timeout-ms";
    argv[a++] = timeout;
    va_list ap;
    va_start(ap, endpoints);
    const char *arg;
    while ((arg = va_arg(ap, const char *)) != NULL) {
        ck_assert_uint_lt(a, ARGS_MAX - 1);
        argv[a++] = arg;
    }
    va_end(ap);
    argv[a] = NULL;

    char args[2048] = "";
    size_t off = 0;
    for (unsigned i = 1; i < a && off < sizeof args; i++) {
        int w = snprintf(args + off, sizeof args - off, "%s%s",
                         i > 1 ? " " : "", argv[i]);
        off += w > 0 ? (size_t)w : 0;
    }
    unsigned k = ++H.ctl_runs;
    char out_path[sizeof H.dir + 32], err_path[sizeof H.dir + 32];
    snprintf(out_path, sizeof out_path, "%s/ctl-%u.out", H.dir, k);
    snprintf(err_path, sizeof err_path, "%s/ctl-%u.err", H.dir, k);
    double t = harness_now();
    pid_t pid = spawn((char *const *)argv, out_path, err_path, false);
    ck_assert_msg(pid > 0, "cannot start allotctl: %s", strerror(errno));
    record_pid(pid, "allotctl");
    int status;
    int bound = HARNESS_CTL_TIMEOUT_MS + 30000;
    if (!wait_pid(pid, bound, &status)) {
        kill(pid, SIGKILL);
        wait_pid(pid, HARNESS_EXIT_WAIT_MS, &status);
        ck_abort_msg("allotctl %s did not exit within %d ms", args, bound);
    }
    r->seconds = harness_now() - t;
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r->out = read_file(out_path, NULL);
    r->err = read_file(err_path, NULL);
    ck_assert_msg(r->out != NULL && r->err != NULL, "cannot read %s", out_path);
    char first[256];
    const char *nl = strchr(r->err, '\n');
    snprintf(first, sizeof first, "%.*s",
             (int)(nl != NULL ? (size_t)(nl - r->err) : strlen(r->err)),
             r->err);
    if (H.log != NULL) {
        fprintf(H.log, "[%8.3fs] allotctl #%u %s -> %s in %.3f s%s%s\n",
                harness_elapsed(), k, args, harness_status_text(status),
                r->seconds, first[0] ? "; stderr: " : "", first);
        fflush(H.log);
    }
    char line[512];
    ck_assert_msg(!find_sanitizer_report(r->err, line, sizeof line),
                  "allotctl %s: sanitizer report: %s", args, line);
    ck_assert_msg(WIFEXITED(status), "allotctl %s: %s", args,
                  harness_status_text(status));
}

void harness_ctl_free(struct harness_ctl *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

/* --- allotctl in the background ------------------------------------------- */

void harness_ctl_start(struct harness_bg *bg, const char *endpoints, ...)
{
    memset(bg, 0, sizeof *bg);
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", HARNESS_CTL_TIMEOUT_MS);
    char eps[sizeof H.endpoints];
    snprintf(eps, sizeof eps, "%s",
             endpoints != NULL ? endpoints : harness_endpoints(0));
    const char *argv[ARGS_MAX];
    unsigned a = 0;
    argv[a++] = H.allotctl;
    argv[a++] = "--endpoints";
    argv[a++] = eps;
    argv[a++] = "--timeout-ms";
    argv[a++] = timeout;
    va_list ap;
    va_start(ap, endpoints);
    const char *arg;
    while ((arg = va_arg(ap, const char *)) != NULL) {
        ck_assert_uint_lt(a, ARGS_MAX - 1);
        argv[a++] = arg;
    }
    va_end(ap);
    argv[a] = NULL;
    size_t off = 0;
    for (unsigned i = 1; i < a && off < sizeof bg->args; i++) {
        int w = snprintf(bg->args + off, sizeof bg->args - off, "%s%s",
                         i > 1 ? " " : "", argv[i]);
        off += w > 0 ? (size_t)w : 0;
    }
    bg->k = ++H.ctl_runs;
    snprintf(bg->out_path, sizeof bg->out_path, "%s/ctl-%u.out", H.dir, bg->k);
    snprintf(bg->err_path, sizeof bg->err_path, "%s/ctl-%u.err", H.dir, bg->k);
    bg->t0 = harness_now();
    bg->pid = spawn((char *const *)argv, bg->out_path, bg->err_path, false);
    ck_assert_msg(bg->pid > 0, "cannot start allotctl: %s", strerror(errno));
    record_pid(bg->pid, "allotctl");
    if (H.log != NULL) {
        fprintf(H.log,
                "[%8.3fs] allotctl #%u started in the background "
                "(pid %d): %s\n",
                harness_elapsed(), bg->k, (int)bg->pid, bg->args);
        fflush(H.log);
    }
}

bool harness_ctl_done(struct harness_bg *bg)
{
    if (!bg->reaped && waitpid(bg->pid, &bg->status, WNOHANG) == bg->pid) {
        bg->reaped = true;
    }
    return bg->reaped;
}

char *harness_ctl_out_now(const struct harness_bg *bg)
{
    char *s = read_file(bg->out_path, NULL);
    return s != NULL ? s : strdup("");
}

int harness_ctl_wait(struct harness_bg *bg, int timeout_ms,
                     struct harness_ctl *r)
{
    memset(r, 0, sizeof *r);
    r->status = -1;
    if (!bg->reaped) {
        if (!wait_pid(bg->pid, timeout_ms, &bg->status)) {
            return -1;
        }
        bg->reaped = true;
    }
    int status = bg->status;
    r->seconds = harness_now() - bg->t0;
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r->out = read_file(bg->out_path, NULL);
    r->err = read_file(bg->err_path, NULL);
    ck_assert_msg(r->out != NULL && r->err != NULL, "cannot read %s",
                  bg->out_path);
    if (H.log != NULL) {
        fprintf(H.log, "[%8.3fs] allotctl #%u %s -> %s after %.3f s\n",
                harness_elapsed(), bg->k, bg->args, harness_status_text(status),
                r->seconds);
        fflush(H.log);
    }
    char line[512];
    ck_assert_msg(!find_sanitizer_report(r->err, line, sizeof line),
                  "allotctl %s: sanitizer report: %s", bg->args, line);
    return 0;
}

void harness_ctl_stop(struct harness_bg *bg)
{
    if (bg->pid <= 0 || harness_ctl_done(bg)) {
        return;
    }
    kill(bg->pid, SIGKILL);
    if (wait_pid(bg->pid, HARNESS_EXIT_WAIT_MS, &bg->status)) {
        bg->reaped = true;
    }
}

/* --- Replies -------------------------------------------------------------- */

void harness_reply_destroy(struct harness_reply *rep)
{
    msgpack_unpacked_destroy(&rep->u);
    free(rep->buf);
    rep->buf = NULL;
    rep->result = NULL;
}

static void reply_reset(struct harness_reply *rep)
{
    memset(rep, 0, sizeof *rep);
    msgpack_unpacked_init(&rep->u);
}

/* Decode body (copied) as a reply. 0, or -1 if it is not a valid reply. */
static int reply_decode(const char *body, size_t len, struct harness_reply *rep)
{
    char msg[ALLOT_ERRMSG_SIZE];
    rep->body_len = len;
    rep->buf = malloc(len > 0 ? len : 1);
    if (rep->buf == NULL) {
        return -1;
    }
    if (len > 0) {
        memcpy(rep->buf, body, len);
    }
    struct wire_reply wr;
    if (wire_unpack(rep->buf, len, &rep->u, msg) != 0 ||
        wire_reply_decode(&rep->u.data, &wr, msg) != 0) {
        return -1;
    }
    rep->id = wr.id;
    rep->code = wr.code;
    rep->ok = wr.code == 0;
    rep->result = wr.result;
    if (!rep->ok) {
        const char *name;
        size_t n;
        if (wire_get_str(&rep->u.data, "error", true, &name, &n, msg) == 0) {
            snprintf(rep->error, sizeof rep->error, "%.*s", (int)n, name);
        }
        snprintf(rep->message, sizeof rep->message, "%.*s", (int)wr.message_len,
                 wr.message != NULL ? wr.message : "");
    }
    return 0;
}

/* --- Protocol through proto/client.h -------------------------------------- */

int harness_call(unsigned id, const char *op, allot_pack_fn pack, void *arg,
                 struct harness_reply *rep, int timeout_ms)
{
    reply_reset(rep);
    struct allot_client *c;
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = allot_client_open(node_get(id)->client_addr, timeout_ms, &c, msg);
    if (rv != 0) {
        rep->code = rv;
        snprintf(rep->message, sizeof rep->message, "%s", msg);
        return rv;
    }
    if (H.has_identity) {
        allot_client_set_identity(c, &H.identity);
    }
    struct allot_reply ar;
    rv = allot_client_call(c, op, pack, arg, &ar);
    rep->code = rv;
    rep->ok = rv == 0;
    snprintf(rep->error, sizeof rep->error, "%s", allot_error_name(rv));
    snprintf(rep->message, sizeof rep->message, "%s", ar.message);
    if (rv == 0) {
        /* ar's strings point into the client's buffer: keep a copy. */
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (ar.result != NULL) {
            msgpack_pack_object(&pk, *ar.result);
        } else {
            msgpack_pack_nil(&pk);
        }
        rep->body_len = sb.size; /* release() zeroes sb.size */
        rep->buf = msgpack_sbuffer_release(&sb);
        msgpack_sbuffer_destroy(&sb);
        if (rep->buf == NULL ||
            wire_unpack(rep->buf, rep->body_len, &rep->u, msg) != 0) {
            rep->code = rv = ALLOT_EINTERNAL;
            rep->ok = false;
        } else {
            rep->result = &rep->u.data;
        }
    }
    allot_reply_destroy(&ar);
    allot_client_close(c);
    return rv;
}

static void pack_status_args(msgpack_packer *pk, void *arg)
{
    bool digest = *(bool *)arg;
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "digest");
    if (digest) {
        msgpack_pack_true(pk);
    } else {
        msgpack_pack_false(pk);
    }
}

static void copy_str(const msgpack_object *map, const char *key, char *out,
                     size_t size)
{
    const char *s;
    size_t n;
    char msg[ALLOT_ERRMSG_SIZE];
    out[0] = '\0';
    if (wire_get_str(map, key, false, &s, &n, msg) == 0) {
        snprintf(out, size, "%.*s", (int)n, s);
    }
}

static uint64_t get_u64(const msgpack_object *map, const char *key)
{
    uint64_t v = 0;
    char msg[ALLOT_ERRMSG_SIZE];
    wire_get_u64(map, key, false, &v, msg);
    return v;
}

int harness_status(unsigned id, bool digest, struct harness_status *st,
                   int timeout_ms)
{
    memset(st, 0, sizeof *st);
    struct harness_reply rep;
    int rv = harness_call(id, "cluster.status", pack_status_args, &digest, &rep,
                          timeout_ms);
    if (rv != 0) {
        harness_reply_destroy(&rep);
        return rv;
    }
    const msgpack_object *r = rep.result;
    char msg[ALLOT_ERRMSG_SIZE];
    st->id = get_u64(r, "id");
    copy_str(r, "state", st->state, sizeof st->state);
    st->leader = get_u64(r, "leader"); /* nil reads as 0 */
    st->term = get_u64(r, "term");
    st->commit_index = get_u64(r, "commit_index");
    st->applied_index = get_u64(r, "applied_index");
    st->last_index = get_u64(r, "last_index");
    st->catalog_version = get_u64(r, "catalog_version");
    st->quotas = get_u64(r, "quotas");
    wire_get_bool(r, "ready", false, &st->ready, msg);
    copy_str(r, "digest", st->digest, sizeof st->digest);
    const msgpack_object *ms = wire_map_get(r, "members");
    if (ms != NULL && ms->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0;
             i < ms->via.array.size && st->n_members < HARNESS_MEMBERS_MAX;
             i++) {
            const msgpack_object *m = &ms->via.array.ptr[i];
            struct harness_member *hm = &st->members[st->n_members++];
            hm->id = get_u64(m, "id");
            copy_str(m, "raft_addr", hm->raft_addr, sizeof hm->raft_addr);
            copy_str(m, "role", hm->role, sizeof hm->role);
            copy_str(m, "state", hm->state, sizeof hm->state);
            copy_str(m, "client_addr", hm->client_addr, sizeof hm->client_addr);
            hm->has_match_index = wire_get_u64(m, "match_index", false,
                                               &hm->match_index, msg) == 0;
        }
    }
    harness_reply_destroy(&rep);
    return 0;
}

const struct harness_member *harness_member(const struct harness_status *st,
                                            uint64_t id)
{
    for (unsigned i = 0; i < st->n_members; i++) {
        if (st->members[i].id == id) {
            return &st->members[i];
        }
    }
    return NULL;
}

/* One line per node: state, or why it could not say. */
static void log_cluster_view(void)
{
    for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
        if (!H.nodes[id].used) {
            continue;
        }
        if (!harness_node_running(id)) {
            harness_log("  node %u: not running (%s)", id,
                        harness_status_text(H.nodes[id].status));
            continue;
        }
        struct harness_status st;
        int rv = harness_status(id, true, &st, 2000);
        if (rv != 0) {
            harness_log("  node %u: no status (%s)", id, allot_error_name(rv));
            continue;
        }
        harness_log(
            "  node %u: %s leader=%llu term=%llu commit=%llu "
            "applied=%llu last=%llu version=%llu ready=%d "
            "digest=%.12s",
            id, st.state, (unsigned long long)st.leader,
            (unsigned long long)st.term, (unsigned long long)st.commit_index,
            (unsigned long long)st.applied_index,
            (unsigned long long)st.last_index,
            (unsigned long long)st.catalog_version, st.ready, st.digest);
    }
}

unsigned harness_wait_leader(int timeout_ms)
{
    double deadline = harness_now() + timeout_ms / 1000.0;
    /* Bounded in count too: every round costs at least the 50 ms sleep. */
    for (int round = 0; round <= timeout_ms / 50 + 1; round++) {
        for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
            if (!harness_node_running(id)) {
                continue;
            }
            struct harness_status st;
            if (harness_status(id, false, &st, 2000) == 0 &&
                strcmp(st.state, "leader") == 0 && st.ready) {
                return id;
            }
        }
        if (harness_now() >= deadline) {
            break;
        }
        harness_sleep_ms(50);
    }
    harness_log("no ready leader within %d ms; cluster view:", timeout_ms);
    log_cluster_view();
    return 0;
}

int harness_wait_converged(int timeout_ms, struct harness_status *leader_st)
{
    double deadline = harness_now() + timeout_ms / 1000.0;
    for (int round = 0; round <= timeout_ms / 100 + 1; round++) {
        struct harness_status all[HARNESS_NODES_MAX + 1];
        bool have[HARNESS_NODES_MAX + 1] = {false};
        unsigned leader = 0;
        bool complete = true;
        for (unsigned id = 1; id <= HARNESS_NODES_MAX; id++) {
            if (!harness_node_running(id)) {
                continue;
            }
            if (harness_status(id, true, &all[id], 2000) != 0) {
                complete = false;
                break;
            }
            have[id] = true;
            if (strcmp(all[id].state, "leader") == 0 && all[id].ready) {
                leader = id;
            }
        }
        if (complete && leader != 0) {
            const struct harness_status *l = &all[leader];
            bool same = true;
            for (unsigned id = 1; id <= HARNESS_NODES_MAX && same; id++) {
                if (!have[id]) {
                    continue;
                }
                same = all[id].applied_index == l->applied_index &&
                       all[id].catalog_version == l->catalog_version &&
                       strcmp(all[id].digest, l->digest) == 0;
            }
            if (same) {
                if (leader_st != NULL) {
                    *leader_st = *l;
                }
                return 0;
            }
        }
        if (harness_now() >= deadline) {
            break;
        }
        harness_sleep_ms(100);
    }
    harness_log("nodes did not converge within %d ms; cluster view:",
                timeout_ms);
    log_cluster_view();
    return -1;
}

/* --- Raw sockets ---------------------------------------------------------- */

int harness_http_connect(unsigned id)
{
    struct hnode *n = node_get(id);
    ck_assert_msg(n->http_port != 0, "node %u has no --http", id);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(n->http_port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int harness_raw_connect(unsigned id)
{
    struct hnode *n = node_get(id);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(n->client_port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int poll_ms_left(double deadline)
{
    double left = (deadline - harness_now()) * 1000.0;
    return left <= 0 ? 0 : (int)left + 1;
}

int harness_raw_send(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    double deadline = harness_now() + HARNESS_IO_WAIT_MS / 1000.0;
    while (len > 0) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            len -= (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EINTR || errno == EAGAIN)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            if (poll(&pfd, 1, poll_ms_left(deadline)) <= 0 &&
                harness_now() >= deadline) {
                return -1;
            }
            continue;
        }
        return -1;
    }
    return 0;
}

/* Read exactly n bytes. 1 done, 0 peer closed, -1 timeout. */
static int read_exact(int fd, char *p, size_t n, double deadline)
{
    while (n > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, poll_ms_left(deadline));
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr <= 0) {
            return -1;
        }
        ssize_t r = recv(fd, p, n, 0);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
            return 0;
        }
    }
    return 1;
}

int harness_raw_recv(int fd, int timeout_ms, struct harness_reply *rep)
{
    reply_reset(rep);
    double deadline = harness_now() + timeout_ms / 1000.0;
    char hdr[WIRE_HEADER_LEN];
    int rv = read_exact(fd, hdr, sizeof hdr, deadline);
    if (rv != 1) {
        return rv;
    }
    const unsigned char *u = (const unsigned char *)hdr;
    size_t len = (size_t)u[0] << 24 | (size_t)u[1] << 16 | (size_t)u[2] << 8 |
                 (size_t)u[3];
    if (len > WIRE_FRAME_MAX) {
        return -2;
    }
    char *body = malloc(len > 0 ? len : 1);
    if (body == NULL) {
        return -2;
    }
    rv = read_exact(fd, body, len, deadline);
    if (rv != 1) {
        free(body);
        return rv == 0 ? 0 : -1;
    }
    rv = reply_decode(body, len, rep);
    free(body);
    return rv == 0 ? 1 : -2;
}

int harness_raw_wait_closed(int fd, int timeout_ms)
{
    double deadline = harness_now() + timeout_ms / 1000.0;
    char scratch[65536];
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, poll_ms_left(deadline));
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr <= 0) {
            return 0;
        }
        ssize_t r = recv(fd, scratch, sizeof scratch, 0);
        if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) {
            return 1;
        }
    }
}

unsigned harness_raw_exchange(int fd, const void *buf, size_t len,
                              unsigned want, int timeout_ms,
                              harness_reply_cb cb, void *arg, bool *closed,
                              unsigned *bad)
{
    const char *p = buf;
    size_t sent = 0;
    unsigned got = 0;
    bool peer_closed = false;
    struct wire_rbuf rb;
    wire_rbuf_init(&rb);
    *bad = 0;
    double deadline = harness_now() + timeout_ms / 1000.0;
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    while (!peer_closed && (sent < len || got < want) &&
           harness_now() < deadline) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (sent < len) {
            pfd.events |= POLLOUT;
        }
        int pr = poll(&pfd, 1, poll_ms_left(deadline));
        if (pr <= 0) {
            continue; /* EINTR or timeout: the loop condition decides */
        }
        if ((pfd.revents & POLLOUT) && sent < len) {
            ssize_t w = send(fd, p + sent, len - sent, MSG_NOSIGNAL);
            if (w > 0) {
                sent += (size_t)w;
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                sent = len; /* peer gone; read what it said before */
            }
        }
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            char *tail;
            size_t avail;
            if (wire_rbuf_reserve(&rb, 65536, &tail, &avail) != 0) {
                break;
            }
            ssize_t r = recv(fd, tail, avail, 0);
            if (r > 0) {
                rb.len += (size_t)r;
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                peer_closed = true;
            }
            for (;;) {
                const char *body;
                size_t blen;
                int fr = wire_rbuf_next(&rb, &body, &blen);
                if (fr == 0) {
                    break;
                }
                if (fr < 0) {
                    (*bad)++;
                    peer_closed = true; /* cannot resync */
                    break;
                }
                struct harness_reply rep;
                reply_reset(&rep);
                if (reply_decode(body, blen, &rep) != 0) {
                    (*bad)++;
                } else {
                    got++;
                    if (cb != NULL) {
                        cb(arg, &rep);
                    }
                }
                harness_reply_destroy(&rep);
            }
        }
    }
    wire_rbuf_close(&rb);
    fcntl(fd, F_SETFL, fl);
    *closed = peer_closed;
    return got;
}

/* --- Other processes (allot-agent) ---------------------------------------- */

static char proc_log_path[sizeof H.dir + 80];

const char *harness_proc_log(const char *name)
{
    snprintf(proc_log_path, sizeof proc_log_path, "%s/%s.log", H.dir, name);
    return proc_log_path;
}

pid_t harness_proc_start(const char *name, char *const argv[])
{
    ck_assert_msg(H.begun, "harness_proc_start before harness_begin");
    char log[sizeof proc_log_path];
    snprintf(log, sizeof log, "%s", harness_proc_log(name));
    pid_t pid = spawn(argv, log, NULL, true);
    ck_assert_msg(pid > 0, "cannot start %s (%s)", name, argv[0]);
    record_pid(pid, name);
    harness_log("started %s: pid %d, log %s", name, (int)pid, log);
    return pid;
}

int harness_proc_stop(pid_t pid, int sig, int *status)
{
    kill(pid, sig);
    if (wait_pid(pid, HARNESS_EXIT_WAIT_MS, status)) {
        return 0;
    }
    kill(pid, SIGKILL);
    wait_pid(pid, HARNESS_EXIT_WAIT_MS, status);
    return -1;
}

bool harness_proc_exited(pid_t pid, int *status)
{
    return waitpid(pid, status, WNOHANG) == pid;
}

void harness_assert_log_clean(const char *path)
{
    char *text = read_file(path, NULL);
    char line[512];
    bool found = find_sanitizer_report(text, line, sizeof line);
    free(text);
    ck_assert_msg(!found, "sanitizer report in %s: %s", path, line);
}

int harness_unix_connect(const char *path, int timeout_ms)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    double deadline = harness_now() + timeout_ms / 1000.0;
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            return -1;
        }
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
            return fd;
        }
        close(fd);
        if (harness_now() >= deadline) {
            return -1;
        }
        harness_sleep_ms(20);
    }
}
