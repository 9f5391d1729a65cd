/* test_gossip_demo.c - five gossip-demo processes on 127.0.0.1.
 *
 *   five_members  start five members (the first on a free port, the rest
 *                 joining through it), wait until each sees five alive;
 *                 SIGKILL one and wait until every other prints it dead;
 *                 broadcast a keyed value from one member's stdin and wait
 *                 until every other prints it; SIGTERM the rest: each
 *                 leaves, closes its loop (uv_loop_close() == 0, printed as
 *                 "exit status=0") and exits 0. No sanitizer report in any
 *                 member's stderr.
 *
 * GOSSIP_DEMO names the binary (set by meson). Every process is started
 * with PR_SET_PDEATHSIG, so none outlives the test, and only the PIDs
 * started here are ever signalled. Waits poll with a bound; durations are
 * printed, never asserted. A failed test keeps its directory (the members'
 * output) and prints where it is. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define N       5
#define WAIT_MS 60000
#define POLL_MS 50

struct proc
{
    pid_t pid;
    int in; /* write end of its stdin */
    char name[8];
    char out[512];
    char err[512];
};

static char dir[256];
static struct proc procs[N];

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The whole file, NUL-terminated (caller frees); "" when absent. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return strdup("");
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
            ck_assert_ptr_nonnull(buf);
        }
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

static bool out_has(const struct proc *p, const char *needle)
{
    char *s = slurp(p->out);
    bool has = strstr(s, needle) != NULL;
    free(s);
    return has;
}

/* Counts from the last "view" line of p's output; false if none. */
static bool last_view(const struct proc *p, int *alive, int *dead)
{
    char *s = slurp(p->out);
    char *last = NULL;
    for (char *q = strstr(s, "view alive="); q != NULL;
         q = strstr(q + 1, "view alive=")) {
        last = q;
    }
    bool ok = last != NULL && sscanf(last, "view alive=%d suspect=%*d dead=%d",
                                     alive, dead) == 2;
    free(s);
    return ok;
}

static void start(struct proc *p, const char *demo, const char *keyring,
                  const char *seeds)
{
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    snprintf(p->out, sizeof p->out, "%s/%s.out", dir, p->name);
    snprintf(p->err, sizeof p->err, "%s/%s.err", dir, p->name);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int out = open(p->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int err = open(p->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || err < 0 || dup2(fds[0], 0) < 0 || dup2(out, 1) < 0 ||
            dup2(err, 2) < 0) {
            _exit(127);
        }
        close(fds[1]);
        if (seeds != NULL) {
            execl(demo, demo, "--bind", "127.0.0.1:0", "--name", p->name,
                  "--keyring", keyring, "--seeds", seeds, "--probe-interval",
                  "500", "--probe-timeout", "250", (char *)NULL);
        } else {
            execl(demo, demo, "--bind", "127.0.0.1:0", "--name", p->name,
                  "--keyring", keyring, "--probe-interval", "500",
                  "--probe-timeout", "250", (char *)NULL);
        }
        _exit(127);
    }
    close(fds[0]);
    p->pid = pid;
    p->in = fds[1];
}

/* Wait for pid to exit; its status, or -1 after WAIT_MS. */
static int reap(pid_t pid)
{
    uint64_t end = now_ms() + WAIT_MS;
    while (now_ms() < end) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            return st;
        }
        if (r < 0 && errno != EINTR) {
            return -1;
        }
        sleep_ms(POLL_MS);
    }
    return -1;
}

static void assert_clean_stderr(const struct proc *p)
{
    char *s = slurp(p->err);
    ck_assert_msg(strstr(s, "AddressSanitizer") == NULL &&
                      strstr(s, "LeakSanitizer") == NULL &&
                      strstr(s, "runtime error:") == NULL,
                  "%s: sanitizer report in %s", p->name, p->err);
    free(s);
}

START_TEST(five_members)
{
    const char *demo = getenv("GOSSIP_DEMO");
    ck_assert_msg(demo != NULL, "GOSSIP_DEMO is not set");
    const char *tmp = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    snprintf(dir, sizeof dir, "%s/gossip-demo-XXXXXX", tmp);
    ck_assert_ptr_nonnull(mkdtemp(dir));
    printf("five_members: directory %s\n", dir);
    char keyring[300], cmd[700];
    snprintf(keyring, sizeof keyring, "%s/keyring", dir);
    snprintf(cmd, sizeof cmd, "'%s' --keygen '%s'", demo, keyring);
    ck_assert_int_eq(system(cmd), 0);

    for (int i = 0; i < N; i++) {
        snprintf(procs[i].name, sizeof procs[i].name, "n%d", i);
    }
    uint64_t t0 = now_ms();
    start(&procs[0], demo, keyring, NULL);
    char seed[64] = "";
    for (uint64_t end = now_ms() + WAIT_MS; now_ms() < end;) {
        char *s = slurp(procs[0].out);
        char *r = strstr(s, "ready ");
        if (r != NULL && sscanf(r, "ready name=%*s addr=%63s", seed) == 1) {
            free(s);
            break;
        }
        free(s);
        sleep_ms(POLL_MS);
    }
    ck_assert_msg(seed[0] != '\0', "n0 never printed its address");
    for (int i = 1; i < N; i++) {
        start(&procs[i], demo, keyring, seed);
    }

    /* Convergence: everyone sees five alive. */
    bool ok = false;
    for (uint64_t end = now_ms() + WAIT_MS; !ok && now_ms() < end;) {
        ok = true;
        for (int i = 0; i < N && ok; i++) {
            int alive = 0, dead = 0;
            ok = last_view(&procs[i], &alive, &dead) && alive == N;
        }
        if (!ok) {
            sleep_ms(POLL_MS);
        }
    }
    ck_assert_msg(ok, "no convergence to %d alive", N);
    printf("five_members: %d members alive everywhere after %llu ms\n", N,
           (unsigned long long)(now_ms() - t0));

    /* SIGKILL n3; the others declare it dead. */
    t0 = now_ms();
    ck_assert_int_eq(kill(procs[3].pid, SIGKILL), 0);
    int st = reap(procs[3].pid);
    ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    procs[3].pid = 0;
    close(procs[3].in);
    ok = false;
    for (uint64_t end = now_ms() + WAIT_MS; !ok && now_ms() < end;) {
        ok = true;
        for (int i = 0; i < N && ok; i++) {
            ok = i == 3 || out_has(&procs[i], "member event=dead name=n3 ");
        }
        if (!ok) {
            sleep_ms(POLL_MS);
        }
    }
    ck_assert_msg(ok, "n3 not declared dead by everyone");
    printf("five_members: killed n3 declared dead by all after %llu ms\n",
           (unsigned long long)(now_ms() - t0));

    /* A keyed broadcast from n0 reaches the others. */
    t0 = now_ms();
    static const char line[] = "broadcast catalog 7 hello\n";
    ck_assert_int_eq(write(procs[0].in, line, sizeof line - 1),
                     (ssize_t)(sizeof line - 1));
    ok = false;
    for (uint64_t end = now_ms() + WAIT_MS; !ok && now_ms() < end;) {
        ok = true;
        for (int i = 1; i < N && ok; i++) {
            ok = i == 3 ||
                 out_has(&procs[i],
                         "broadcast key=catalog version=7 payload=hello\n");
        }
        if (!ok) {
            sleep_ms(POLL_MS);
        }
    }
    ck_assert_msg(ok, "the broadcast did not reach everyone");
    printf("five_members: broadcast received by all after %llu ms\n",
           (unsigned long long)(now_ms() - t0));

    /* SIGTERM: leave, close, exit 0. */
    t0 = now_ms();
    for (int i = 0; i < N; i++) {
        if (procs[i].pid > 0) {
            ck_assert_int_eq(kill(procs[i].pid, SIGTERM), 0);
        }
    }
    for (int i = 0; i < N; i++) {
        if (procs[i].pid <= 0) {
            continue;
        }
        st = reap(procs[i].pid);
        ck_assert_msg(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                      "%s: exit status %d", procs[i].name, st);
        procs[i].pid = 0;
        close(procs[i].in);
        ck_assert_msg(out_has(&procs[i], "exit status=0\n"),
                      "%s: uv_loop_close() failed", procs[i].name);
        ck_assert(out_has(&procs[i], "left status="));
    }
    printf("five_members: all stopped cleanly after %llu ms\n",
           (unsigned long long)(now_ms() - t0));
    for (int i = 0; i < N; i++) {
        assert_clean_stderr(&procs[i]);
    }
    /* Passed: remove the directory. */
    for (int i = 0; i < N; i++) {
        unlink(procs[i].out);
        unlink(procs[i].err);
    }
    unlink(keyring);
    rmdir(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gossip_demo");
    TCase *tc = tcase_create("procs");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, five_members);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
