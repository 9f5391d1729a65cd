/* workload.c - jepsen-workload: concurrent register clients for the
 * fault-injection harness, and the final reads after it.
 *
 *   jepsen-workload --endpoints LIST --history FILE --time SECONDS
 *                   [--clients 5] [--keys 3] [--seed N] [--rate OPS]
 *                   [--op-timeout-ms 5000] [--ops-per-key 300]
 *                   [--max-info-per-key 8]
 *                   [--keys-out FILE] [--workload registers]
 *   jepsen-workload --final --nodes ID=HOST:PORT,... --keys-file FILE
 *                   --out FILE [--op-timeout-ms 10000] [--node-budget-ms 30000]
 *
 * Registers map onto quotas: key K is the rate quota `jepsen/K` (the parent
 * `jepsen`, a capacity quota, must exist), its value the quota's integer
 * `rate`, absent = null. Operations, each by one client thread through
 * proto/client.h (one connection, failover across every endpoint):
 *   read        quota.get: ok with the rate, or null on not_found;
 *               any error: fail (a read changes nothing);
 *   write V     quota.set rate=V;
 *   cas E->V    quota.get, then, if the rate equals E, quota.set rate=V
 *               with if_version = the version read (0 when absent):
 *               a mismatch or `conflict` is fail.
 * A write or cas whose outcome is unknown (timeout, unavailable, shutdown,
 * a server-side error) is info, and the thread takes a new process number
 * (Jepsen's rule: at most one open operation per process). Errors that
 * prove the write was refused (invalid, conflict, validation_failed, ...)
 * are fail.
 *
 * Keys: --keys registers are in use at a time; each is retired after
 * --ops-per-key operations or --max-info-per-key unknown outcomes, and
 * replaced by a fresh one (k0, k1, ...). This keeps every register's
 * history checkable: an info operation stays pending forever, and proving a
 * history wrong means trying every subset of the pending ones, 2^info.
 * Every key used is appended to --keys-out for the final reads.
 *
 * The history is JSON lines (docs/fault-testing.md), time_ns from
 * CLOCK_MONOTONIC, shared by all threads and by the final reads (same
 * host): an invoke is stamped and written before its request is sent, a
 * completion stamped after the reply. Each line is one write(2), so a
 * killed workload leaves whole lines.
 *
 * Exit status: 0 when the run completed (anomalies are the checker's
 * business), 2 on bad usage or when the history cannot be written. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "lib.h"
#include "wire.h"

#define CLIENTS_MAX   64
#define KEYS_MAX      64
#define VALUE_MAX     5 /* values 1..VALUE_MAX: small, so cas often hits */
#define FINAL_TRIES   3
#define KEY_NAME_SIZE 32

struct config
{
    const char *endpoints;
    const char *history;
    const char *keys_out;
    const char *keys_file;
    const char *nodes;
    const char *out;
    const char *workload;
    unsigned clients;
    unsigned keys;
    unsigned ops_per_key;
    unsigned info_per_key;
    double seconds;
    double rate; /* operations per second per client */
    uint64_t seed;
    int op_timeout_ms;
    int node_budget_ms;
    bool final;
};

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

/* --- Output -------------------------------------------------------------- */

struct sink
{
    pthread_mutex_t mu;
    int fd;
    bool failed;
};

static void sink_line(struct sink *s, const char *line, size_t len)
{
    pthread_mutex_lock(&s->mu);
    size_t off = 0;
    while (off < len && !s->failed) {
        ssize_t w = write(s->fd, line + off, len - off);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            fprintf(stderr, "error: io: cannot write the history: %s\n",
                    strerror(errno));
            s->failed = true;
            break;
        }
        off += (size_t)w;
    }
    pthread_mutex_unlock(&s->mu);
}

/* --- Keys ----------------------------------------------------------------- */

struct keyring
{
    pthread_mutex_t mu;
    unsigned n;
    unsigned per_key;
    unsigned info_per_key;
    unsigned next; /* next fresh key number */
    unsigned current[KEYS_MAX];
    unsigned used[KEYS_MAX];
    unsigned infos[KEYS_MAX];
    struct sink *out; /* --keys-out, may be NULL */
};

static void key_announce(struct keyring *k, unsigned num)
{
    if (k->out != NULL) {
        char line[KEY_NAME_SIZE + 2];
        int len = snprintf(line, sizeof line, "k%u\n", num);
        sink_line(k->out, line, (size_t)len);
    }
}

/* The key for the next operation on slot (retiring it when used up). */
static unsigned key_take(struct keyring *k, unsigned slot)
{
    pthread_mutex_lock(&k->mu);
    if (k->used[slot] >= k->per_key || k->infos[slot] >= k->info_per_key) {
        k->current[slot] = k->next++;
        k->used[slot] = 0;
        k->infos[slot] = 0;
        key_announce(k, k->current[slot]);
    }
    k->used[slot]++;
    unsigned key = k->current[slot];
    pthread_mutex_unlock(&k->mu);
    return key;
}

/* An operation on key ended info: count it against its slot (if the key is
 * still the slot's). */
static void key_info(struct keyring *k, unsigned slot, unsigned key)
{
    pthread_mutex_lock(&k->mu);
    if (k->current[slot] == key) {
        k->infos[slot]++;
    }
    pthread_mutex_unlock(&k->mu);
}

/* --- Randomness: splitmix64, one state per thread ---------------------------
 */

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static unsigned rnd_below(uint64_t *s, unsigned n)
{
    return (unsigned)(rnd(s) % n);
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    while (!stopping && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* --- Quota calls -----------------------------------------------------------
 */

struct set_args
{
    const char *path;
    int64_t value;
    bool has_if_version;
    uint64_t if_version;
};

static void pack_set(msgpack_packer *pk, void *arg)
{
    const struct set_args *a = arg;
    msgpack_pack_map(pk, a->has_if_version ? 3 : 2);
    wire_pack_kv_str(pk, "path", a->path);
    wire_pack_str(pk, "fields");
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "rate");
    msgpack_pack_double(pk, (double)a->value);
    if (a->has_if_version) {
        wire_pack_kv_u64(pk, "if_version", a->if_version);
    }
}

static void pack_get(msgpack_packer *pk, void *arg)
{
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "path", (const char *)arg);
}

/* Errors that prove a write was not applied. Everything else (timeout,
 * unavailable after the deadline, shutdown, io, nomem, internal, ...) leaves
 * its outcome unknown. */
static bool surely_refused(int code)
{
    switch (code) {
    case ALLOT_EINVALID:
    case ALLOT_ENOT_FOUND:
    case ALLOT_EEXISTS:
    case ALLOT_ECONFLICT:
    case ALLOT_EPERMISSION_DENIED:
    case ALLOT_EUNAUTHENTICATED:
    case ALLOT_EVALIDATION_FAILED:
    case ALLOT_ETOO_BIG:
    case ALLOT_EPROTOCOL:
        return true;
    default:
        return false;
    }
}

/* quota.get: 0 with present, value and version set, or an error code. A reply
 * that is not a rate quota with an integer rate is ALLOT_EPROTOCOL. */
static int get_register(struct allot_client *c, const char *path, bool *present,
                        int64_t *value, uint64_t *version, char *why,
                        size_t whylen)
{
    struct allot_reply rep;
    int rv = allot_client_call(c, "quota.get", pack_get, (void *)path, &rep);
    *present = false;
    *value = 0;
    *version = 0;
    if (rv == ALLOT_ENOT_FOUND) {
        allot_reply_destroy(&rep);
        return 0;
    }
    if (rv != 0) {
        snprintf(why, whylen, "%s: %s", allot_error_name(rv), rep.message);
        allot_reply_destroy(&rep);
        return rv;
    }
    double rate;
    char msg[ALLOT_ERRMSG_SIZE];
    if (wire_get_double(rep.result, "rate", true, &rate, msg) != 0 ||
        wire_get_u64(rep.result, "version", true, version, msg) != 0 ||
        !(rate >= 0 && rate < 9e15) || floor(rate) != rate) {
        snprintf(why, whylen, "quota.get %s: not an integer rate register",
                 path);
        allot_reply_destroy(&rep);
        return ALLOT_EPROTOCOL;
    }
    *present = true;
    *value = (int64_t)rate;
    allot_reply_destroy(&rep);
    return 0;
}

static int set_register(struct allot_client *c, struct set_args *a, char *why,
                        size_t whylen)
{
    struct allot_reply rep;
    int rv = allot_client_call(c, "quota.set", pack_set, a, &rep);
    if (rv != 0) {
        snprintf(why, whylen, "%s: %s", allot_error_name(rv), rep.message);
    }
    allot_reply_destroy(&rep);
    return rv;
}

/* --- The client threads --------------------------------------------------- */

struct shared
{
    const struct config *cfg;
    struct sink *history;
    struct keyring *keys;
    uint64_t deadline_ns;
    atomic_uint_fast64_t ops, ok, fail, info;
};

struct worker
{
    pthread_t thread;
    unsigned index;
    struct shared *sh;
    uint64_t rng;
    int64_t process;
};

enum { F_READ, F_WRITE, F_CAS };
static const char *const f_names[] = {"read", "write", "cas"};

static void value_json(char *buf, size_t len, bool present, int64_t v)
{
    if (present) {
        snprintf(buf, len, "%" PRId64, v);
    } else {
        snprintf(buf, len, "null");
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct shared *sh = w->sh;
    const struct config *cfg = sh->cfg;
    char errmsg[ALLOT_ERRMSG_SIZE];
    struct allot_client *c;
    if (allot_client_open(cfg->endpoints, cfg->op_timeout_ms, &c, errmsg) !=
        0) {
        fprintf(stderr, "error: invalid: %s\n", errmsg);
        return NULL;
    }
    uint64_t mean_gap_ns = cfg->rate > 0 ? (uint64_t)(1e9 / cfg->rate) : 0;
    while (!stopping && !sh->history->failed &&
           clock_mono_ns() < sh->deadline_ns) {
        if (mean_gap_ns > 0) {
            sleep_ns(rnd(&w->rng) % (2 * mean_gap_ns + 1));
        }
        if (stopping || clock_mono_ns() >= sh->deadline_ns) {
            break;
        }
        unsigned slot = rnd_below(&w->rng, cfg->keys);
        unsigned keynum = key_take(sh->keys, slot);
        char key[KEY_NAME_SIZE], path[KEY_NAME_SIZE + 8];
        snprintf(key, sizeof key, "k%u", keynum);
        snprintf(path, sizeof path, "jepsen/%s", key);
        int f = (int)rnd_below(&w->rng, 3);
        int64_t value = 1 + (int64_t)rnd_below(&w->rng, VALUE_MAX);
        /* cas expects null (absent) one time in VALUE_MAX + 1: creating a
         * register with if_version 0 is a compare-and-set too. */
        int64_t expected = (int64_t)rnd_below(&w->rng, VALUE_MAX + 1);
        bool exp_present = expected != 0;

        char line[512], v1[32], v2[32];
        int len;
        uint64_t t0 = clock_mono_ns();
        switch (f) {
        case F_READ:
            len = snprintf(line, sizeof line,
                           "{\"process\":%" PRId64 ",\"type\":\"invoke\","
                           "\"f\":\"read\",\"key\":\"%s\",\"time_ns\":%" PRIu64
                           "}\n",
                           w->process, key, t0);
            break;
        case F_WRITE:
            len = snprintf(line, sizeof line,
                           "{\"process\":%" PRId64 ",\"type\":\"invoke\","
                           "\"f\":\"write\",\"key\":\"%s\",\"value\":%" PRId64
                           ",\"time_ns\":%" PRIu64 "}\n",
                           w->process, key, value, t0);
            break;
        default:
            value_json(v2, sizeof v2, exp_present, expected);
            len = snprintf(line, sizeof line,
                           "{\"process\":%" PRId64 ",\"type\":\"invoke\","
                           "\"f\":\"cas\",\"key\":\"%s\",\"expected\":%s"
                           ",\"value\":%" PRId64 ",\"time_ns\":%" PRIu64 "}\n",
                           w->process, key, v2, value, t0);
            break;
        }
        sink_line(sh->history, line, (size_t)len);

        const char *type = "ok";
        bool read_present = false;
        int64_t read_value = 0;
        char why[ALLOT_ERRMSG_SIZE + 64] = "";
        if (f == F_READ) {
            uint64_t version;
            int rv = get_register(c, path, &read_present, &read_value, &version,
                                  why, sizeof why);
            type = rv == 0 ? "ok" : "fail";
        } else if (f == F_WRITE) {
            struct set_args a = {.path = path, .value = value};
            int rv = set_register(c, &a, why, sizeof why);
            type = rv == 0 ? "ok" : surely_refused(rv) ? "fail" : "info";
        } else {
            bool present;
            int64_t cur;
            uint64_t version;
            int rv = get_register(c, path, &present, &cur, &version, why,
                                  sizeof why);
            if (rv != 0 || present != exp_present ||
                (present && cur != expected)) {
                type = "fail"; /* nothing was written */
            } else {
                struct set_args a = {.path = path,
                                     .value = value,
                                     .has_if_version = true,
                                     .if_version = version};
                rv = set_register(c, &a, why, sizeof why);
                type = rv == 0 ? "ok" : surely_refused(rv) ? "fail" : "info";
            }
        }
        uint64_t t1 = clock_mono_ns();
        if (f == F_READ && type[0] == 'o') {
            value_json(v1, sizeof v1, read_present, read_value);
            len = snprintf(line, sizeof line,
                           "{\"process\":%" PRId64 ",\"type\":\"ok\","
                           "\"f\":\"read\",\"key\":\"%s\",\"value\":%s,"
                           "\"time_ns\":%" PRIu64 "}\n",
                           w->process, key, v1, t1);
        } else {
            len = snprintf(line, sizeof line,
                           "{\"process\":%" PRId64 ",\"type\":\"%s\","
                           "\"f\":\"%s\",\"key\":\"%s\",\"time_ns\":%" PRIu64
                           "}\n",
                           w->process, type, f_names[f], key, t1);
        }
        sink_line(sh->history, line, (size_t)len);
        atomic_fetch_add(&sh->ops, 1);
        if (type[0] == 'o') {
            atomic_fetch_add(&sh->ok, 1);
        } else if (type[0] == 'f') {
            atomic_fetch_add(&sh->fail, 1);
        } else {
            atomic_fetch_add(&sh->info, 1);
            key_info(sh->keys, slot, keynum);
            /* A new process number after an unknown outcome: the old one
             * may still have an operation in flight. */
            w->process += cfg->clients;
            if (why[0] != '\0' && log_get_level() <= LOG_DEBUG) {
                fprintf(stderr, "info: %s %s: %s\n", f_names[f], key, why);
            }
        }
    }
    allot_client_close(c);
    return NULL;
}

static int open_out(const char *path, bool append, struct sink *s)
{
    s->fd = open(path,
                 O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC),
                 0644);
    s->failed = false;
    pthread_mutex_init(&s->mu, NULL);
    if (s->fd < 0) {
        fprintf(stderr, "error: invalid: cannot open %s: %s\n", path,
                strerror(errno));
        return -1;
    }
    return 0;
}

static int run_registers(const struct config *cfg)
{
    /* TODO(enforcement issue): an `enforcement` workload - liballot
     * limiters on simulated hosts against the rate quotas, checking
     * admission against the global limit - plugs in here beside this one,
     * chosen by --workload. */
    struct sink history, keys_out;
    if (open_out(cfg->history, false, &history) != 0) {
        return 2;
    }
    struct keyring kr = {.n = cfg->keys,
                         .per_key = cfg->ops_per_key,
                         .info_per_key = cfg->info_per_key};
    pthread_mutex_init(&kr.mu, NULL);
    if (cfg->keys_out != NULL) {
        if (open_out(cfg->keys_out, false, &keys_out) != 0) {
            close(history.fd);
            return 2;
        }
        kr.out = &keys_out;
    }
    for (unsigned i = 0; i < cfg->keys; i++) {
        kr.current[i] = kr.next++;
        key_announce(&kr, kr.current[i]);
    }
    struct shared sh = {
        .cfg = cfg,
        .history = &history,
        .keys = &kr,
        .deadline_ns = clock_mono_ns() + (uint64_t)(cfg->seconds * 1e9),
    };
    struct worker ws[CLIENTS_MAX];
    unsigned started = 0;
    for (unsigned i = 0; i < cfg->clients; i++) {
        ws[i] = (struct worker){
            .index = i,
            .sh = &sh,
            .rng = cfg->seed * 0x9e3779b97f4a7c15ULL + i + 1,
            .process = (int64_t)i,
        };
        if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0) {
            fprintf(stderr, "error: internal: cannot start client thread\n");
            stopping = 1;
            break;
        }
        started++;
    }
    for (unsigned i = 0; i < started; i++) {
        pthread_join(ws[i].thread, NULL);
    }
    fprintf(stderr,
            "workload: %" PRIuFAST64 " operations: ok %" PRIuFAST64
            ", fail %" PRIuFAST64 ", info %" PRIuFAST64 "; %u keys\n",
            atomic_load(&sh.ops), atomic_load(&sh.ok), atomic_load(&sh.fail),
            atomic_load(&sh.info), kr.next);
    bool failed = history.failed;
    close(history.fd);
    if (kr.out != NULL) {
        failed = failed || keys_out.failed;
        close(keys_out.fd);
    }
    return failed ? 2 : 0;
}

/* --- Final reads -----------------------------------------------------------
 */

static int run_final(const struct config *cfg)
{
    FILE *kf = fopen(cfg->keys_file, "r");
    if (kf == NULL) {
        fprintf(stderr, "error: invalid: cannot open %s: %s\n", cfg->keys_file,
                strerror(errno));
        return 2;
    }
    char(*keys)[KEY_NAME_SIZE] = NULL;
    size_t n_keys = 0, cap = 0;
    char buf[128];
    while (fgets(buf, sizeof buf, kf) != NULL) {
        size_t l = strcspn(buf, "\r\n");
        buf[l] = '\0';
        if (l == 0 || l >= KEY_NAME_SIZE) {
            continue;
        }
        if (n_keys == cap) {
            cap = cap ? cap * 2 : 64;
            char(*nk)[KEY_NAME_SIZE] = realloc(keys, cap * sizeof *nk);
            if (nk == NULL) {
                fclose(kf);
                free(keys);
                return 2;
            }
            keys = nk;
        }
        memcpy(keys[n_keys++], buf, l + 1);
    }
    fclose(kf);
    struct sink out;
    if (open_out(cfg->out, false, &out) != 0) {
        free(keys);
        return 2;
    }
    /* --nodes ID=HOST:PORT,...: read every key through each node alone. */
    const char *p = cfg->nodes;
    unsigned failed = 0, reads = 0;
    while (*p != '\0' && !stopping) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char item[96];
        if (len == 0 || len >= sizeof item) {
            fprintf(stderr, "error: invalid: bad --nodes item\n");
            failed++;
            break;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        p += len + (comma ? 1 : 0);
        char *eq = strchr(item, '=');
        char *end = NULL;
        unsigned long node = eq ? strtoul(item, &end, 10) : 0;
        if (eq == NULL || end != eq || node == 0) {
            fprintf(stderr, "error: invalid: --nodes wants ID=HOST:PORT\n");
            failed++;
            break;
        }
        struct allot_client *c;
        char errmsg[ALLOT_ERRMSG_SIZE];
        if (allot_client_open(eq + 1, cfg->op_timeout_ms, &c, errmsg) != 0) {
            fprintf(stderr, "error: invalid: %s\n", errmsg);
            failed++;
            break;
        }
        /* A node that cannot answer gets a bounded time in all, not
         * tries * timeout per key: the rest of its keys are recorded as
         * failed reads. */
        uint64_t node_deadline =
            clock_mono_ns() + (uint64_t)cfg->node_budget_ms * 1000000u;
        for (size_t k = 0; k < n_keys && !stopping; k++) {
            char path[KEY_NAME_SIZE + 8], why[ALLOT_ERRMSG_SIZE + 64] = "";
            snprintf(path, sizeof path, "jepsen/%s", keys[k]);
            bool present = false;
            int64_t v = 0;
            uint64_t version, t0 = 0, t1 = 0;
            int rv = ALLOT_ETIMEOUT;
            snprintf(why, sizeof why,
                     "not tried: the node used up its %d ms budget",
                     cfg->node_budget_ms);
            for (int t = 0; t < FINAL_TRIES && rv != 0 && !stopping &&
                            clock_mono_ns() < node_deadline;
                 t++) {
                t0 = clock_mono_ns();
                rv = get_register(c, path, &present, &v, &version, why,
                                  sizeof why);
                t1 = clock_mono_ns();
            }
            char line[1024], vj[32];
            int l;
            reads++;
            if (rv == 0) {
                value_json(vj, sizeof vj, present, v);
                l = snprintf(line, sizeof line,
                             "{\"node\":%lu,\"key\":\"%s\",\"value\":%s,"
                             "\"invoke_ns\":%" PRIu64 ",\"time_ns\":%" PRIu64
                             "}\n",
                             node, keys[k], vj, t0, t1);
            } else {
                failed++;
                for (char *q = why; *q; q++) {
                    if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20) {
                        *q = ' ';
                    }
                }
                l = snprintf(line, sizeof line,
                             "{\"node\":%lu,\"key\":\"%s\",\"error\":\"%s\"}\n",
                             node, keys[k], why);
            }
            if (l > 0 && (size_t)l < sizeof line) {
                sink_line(&out, line, (size_t)l);
            }
        }
        allot_client_close(c);
    }
    fprintf(stderr, "final: %u reads of %zu keys, %u failed\n", reads, n_keys,
            failed);
    close(out.fd);
    free(keys);
    return out.failed ? 2 : 0;
}

/* --- Command line ------------------------------------------------------------
 */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: jepsen-workload --endpoints LIST --history FILE --time "
            "SECONDS\n"
            "         [--clients 5] [--keys 3] [--seed N] [--rate OPS] "
            "[--op-timeout-ms 5000]\n"
            "         [--ops-per-key 300] [--max-info-per-key 8] "
            "[--keys-out FILE] "
            "[--workload registers]\n"
            "       jepsen-workload --final --nodes ID=HOST:PORT,... "
            "--keys-file FILE --out FILE\n"
            "         [--op-timeout-ms 10000] [--node-budget-ms 30000]\n");
}

static int parse_num(const char *flag, const char *s, double min, double max,
                     double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= min && v <= max)) {
        fprintf(stderr,
                "error: invalid: %s must be a number from %g to %g, got "
                "\"%s\"\n",
                flag, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    struct config cfg = {
        .clients = 5,
        .keys = 3,
        .ops_per_key = 300,
        .info_per_key = 8,
        .seconds = 10,
        .rate = 20,
        .seed = 1,
        .op_timeout_ms = 0,
        .node_budget_ms = 30000,
        .workload = "registers",
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--final") == 0) {
            cfg.final = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "error: invalid: %s needs a value\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        double d;
        if (strcmp(a, "--endpoints") == 0) {
            cfg.endpoints = v;
        } else if (strcmp(a, "--history") == 0) {
            cfg.history = v;
        } else if (strcmp(a, "--keys-out") == 0) {
            cfg.keys_out = v;
        } else if (strcmp(a, "--keys-file") == 0) {
            cfg.keys_file = v;
        } else if (strcmp(a, "--nodes") == 0) {
            cfg.nodes = v;
        } else if (strcmp(a, "--out") == 0) {
            cfg.out = v;
        } else if (strcmp(a, "--workload") == 0) {
            cfg.workload = v;
        } else if (strcmp(a, "--clients") == 0) {
            if (parse_num(a, v, 1, CLIENTS_MAX, &d) != 0) {
                return 2;
            }
            cfg.clients = (unsigned)d;
        } else if (strcmp(a, "--keys") == 0) {
            if (parse_num(a, v, 1, KEYS_MAX, &d) != 0) {
                return 2;
            }
            cfg.keys = (unsigned)d;
        } else if (strcmp(a, "--ops-per-key") == 0) {
            if (parse_num(a, v, 1, 1e6, &d) != 0) {
                return 2;
            }
            cfg.ops_per_key = (unsigned)d;
        } else if (strcmp(a, "--max-info-per-key") == 0) {
            if (parse_num(a, v, 1, 64, &d) != 0) {
                return 2;
            }
            cfg.info_per_key = (unsigned)d;
        } else if (strcmp(a, "--time") == 0) {
            if (parse_num(a, v, 0, 86400, &cfg.seconds) != 0) {
                return 2;
            }
        } else if (strcmp(a, "--rate") == 0) {
            if (parse_num(a, v, 0, 1e6, &cfg.rate) != 0) {
                return 2;
            }
        } else if (strcmp(a, "--seed") == 0) {
            if (parse_num(a, v, 0, 9e15, &d) != 0) {
                return 2;
            }
            cfg.seed = (uint64_t)d;
        } else if (strcmp(a, "--node-budget-ms") == 0) {
            if (parse_num(a, v, 100, 3600000, &d) != 0) {
                return 2;
            }
            cfg.node_budget_ms = (int)d;
        } else if (strcmp(a, "--op-timeout-ms") == 0) {
            if (parse_num(a, v, 100, 600000, &d) != 0) {
                return 2;
            }
            cfg.op_timeout_ms = (int)d;
        } else {
            fprintf(stderr, "error: invalid: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (cfg.final) {
        if (cfg.nodes == NULL || cfg.keys_file == NULL || cfg.out == NULL) {
            usage(stderr);
            return 2;
        }
        if (cfg.op_timeout_ms == 0) {
            cfg.op_timeout_ms = 10000;
        }
        return run_final(&cfg);
    }
    if (strcmp(cfg.workload, "registers") != 0) {
        fprintf(stderr,
                "error: invalid: --workload %s: only \"registers\" exists "
                "(enforcement comes with its own issue)\n",
                cfg.workload);
        return 2;
    }
    if (cfg.endpoints == NULL || cfg.history == NULL) {
        usage(stderr);
        return 2;
    }
    if (cfg.op_timeout_ms == 0) {
        cfg.op_timeout_ms = 5000;
    }
    return run_registers(&cfg);
}
