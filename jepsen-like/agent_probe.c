/* agent_probe.c - jepsen-agent-probe: the enforcement workload's client.
 *
 *   jepsen-agent-probe --sockets S1,S2,... --path PATH --time SECONDS
 *                      --out FILE
 *   jepsen-agent-probe --sockets S1,S2,... --want-version V --wait-ms MS
 *                      --out FILE
 *
 * The first form asks every allot-agent, every 50 ms for SECONDS, whether
 * one unit of PATH may be served (`check`), while the nemeses break the
 * control plane: an agent must answer every time, from the rules it holds
 * (docs/fault-testing.md, "Enforcement workload"). It writes one JSON
 * object per agent: calls, answers, errors, the longest gap between two
 * answers, the rule versions seen. Exit 0 when every call was answered,
 * 1 otherwise.
 *
 * The second form, after healing, asks each agent's catalog version
 * (`ping`) until it reaches V or MS pass: a new rule version must reach
 * every agent. Exit 0 when all reached it, 1 otherwise; 2 on bad usage.
 *
 * The agent protocol is docs/enforce.md's: a 4-byte big-endian length and
 * one msgpack map each way. Every read and write is bounded by poll(). */
#include <errno.h>
#include <inttypes.h>
#include <msgpack.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "wire.h"

#define AGENTS_MAX 16
#define CALL_MS    1000 /* one call's deadline */
#define PERIOD_MS  50
#define FRAME_MAX  65536

struct agent
{
    const char *sock;
    int fd;
    uint64_t next_id;
    uint64_t calls, answers, errors;
    uint64_t last_ok_ms, max_gap_ms;
    uint64_t first_version, last_version;
    bool reached;
    uint64_t reached_after_ms;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void agent_close(struct agent *a)
{
    if (a->fd >= 0) {
        close(a->fd);
        a->fd = -1;
    }
}

static int agent_connect(struct agent *a)
{
    if (a->fd >= 0) {
        return 0;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(a->sock) >= sizeof sa.sun_path) {
        return -1;
    }
    strcpy(sa.sun_path, a->sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    a->fd = fd;
    return 0;
}

/* All of buf, or -1 by the deadline. */
static int io_all(int fd, void *buf, size_t len, bool out, uint64_t deadline)
{
    uint8_t *p = buf;
    while (len > 0) {
        uint64_t t = now_ms();
        if (t >= deadline) {
            return -1;
        }
        struct pollfd pfd = {.fd = fd, .events = out ? POLLOUT : POLLIN};
        if (poll(&pfd, 1, (int)(deadline - t)) <= 0) {
            return -1;
        }
        ssize_t n = out ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n <= 0) {
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One call: op with a path (or none). On success *out holds the reply
 * map's "result" field's u64 named `field` (0 when absent). */
static int call(struct agent *a, const char *op, const char *path,
                const char *field, uint64_t *out)
{
    if (agent_connect(a) != 0) {
        return -1;
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, path != NULL ? 3 : 2);
    wire_pack_str(&pk, "id");
    msgpack_pack_uint64(&pk, ++a->next_id);
    wire_pack_kv_str(&pk, "op", op);
    if (path != NULL) {
        wire_pack_str(&pk, "args");
        msgpack_pack_map(&pk, 1);
        wire_pack_kv_str(&pk, "path", path);
    }
    uint8_t head[4] = {(uint8_t)(sb.size >> 24), (uint8_t)(sb.size >> 16),
                       (uint8_t)(sb.size >> 8), (uint8_t)sb.size};
    uint64_t deadline = now_ms() + CALL_MS;
    int rv = io_all(a->fd, head, 4, true, deadline);
    if (rv == 0) {
        rv = io_all(a->fd, sb.data, sb.size, true, deadline);
    }
    msgpack_sbuffer_destroy(&sb);
    uint32_t len = 0;
    if (rv == 0) {
        rv = io_all(a->fd, head, 4, false, deadline);
        len = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 |
              (uint32_t)head[2] << 8 | head[3];
        rv = rv == 0 && len > 0 && len <= FRAME_MAX ? 0 : -1;
    }
    uint8_t *body = rv == 0 ? malloc(len) : NULL;
    if (rv == 0 &&
        (body == NULL || io_all(a->fd, body, len, false, deadline) != 0)) {
        rv = -1;
    }
    if (rv != 0) {
        free(body);
        agent_close(a); /* the stream cannot be trusted any more */
        return -1;
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    rv = -1;
    if (msgpack_unpack_next(&u, (const char *)body, len, &off) ==
            MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_MAP) {
        bool ok = false;
        const msgpack_object *res = wire_map_get(&u.data, "result");
        if (wire_get_bool(&u.data, "ok", true, &ok, NULL) == 0 && ok &&
            res != NULL && res->type == MSGPACK_OBJECT_MAP) {
            *out = 0;
            wire_get_u64(res, field, false, out, NULL);
            rv = 0;
        }
    }
    msgpack_unpacked_destroy(&u);
    free(body);
    return rv;
}

static void nap_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: jepsen-agent-probe --sockets S,... --out FILE\n"
                    "         (--path PATH --time SECONDS | --want-version V "
                    "--wait-ms MS)\n");
    return 2;
}

int main(int argc, char **argv)
{
    char *sockets = NULL;
    const char *path = NULL, *out = NULL;
    uint64_t time_s = 0, want = 0, wait_ms = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--sockets") == 0) {
            sockets = strdup(v);
        } else if (strcmp(k, "--path") == 0) {
            path = v;
        } else if (strcmp(k, "--out") == 0) {
            out = v;
        } else if (strcmp(k, "--time") == 0) {
            time_s = strtoull(v, NULL, 10);
        } else if (strcmp(k, "--want-version") == 0) {
            want = strtoull(v, NULL, 10);
        } else if (strcmp(k, "--wait-ms") == 0) {
            wait_ms = strtoull(v, NULL, 10);
        } else {
            fprintf(stderr, "error: invalid: unknown option %s\n", k);
            return usage();
        }
    }
    bool probe = path != NULL && time_s > 0;
    bool wait = want > 0 && wait_ms > 0;
    if (sockets == NULL || out == NULL || probe == wait) {
        free(sockets);
        return usage();
    }
    struct agent ag[AGENTS_MAX];
    size_t n = 0;
    for (char *save = NULL, *s = strtok_r(sockets, ",", &save);
         s != NULL && n < AGENTS_MAX; s = strtok_r(NULL, ",", &save)) {
        ag[n++] = (struct agent){.sock = s, .fd = -1};
    }
    uint64_t t0 = now_ms();
    uint64_t end = probe ? t0 + time_s * 1000u : t0 + wait_ms;
    for (size_t i = 0; i < n; i++) {
        ag[i].last_ok_ms = t0;
    }
    bool done = false;
    while (!done && now_ms() < end) {
        done = wait;
        for (size_t i = 0; i < n; i++) {
            struct agent *a = &ag[i];
            if (wait && a->reached) {
                continue;
            }
            uint64_t v = 0;
            a->calls++;
            int rv = probe ? call(a, "check", path, "rule_version", &v)
                           : call(a, "ping", NULL, "catalog_version", &v);
            uint64_t t = now_ms();
            if (rv != 0) {
                a->errors++;
                done = false;
                continue;
            }
            a->answers++;
            uint64_t gap = t - a->last_ok_ms;
            a->max_gap_ms = gap > a->max_gap_ms ? gap : a->max_gap_ms;
            a->last_ok_ms = t;
            a->first_version = a->first_version ? a->first_version : v;
            a->last_version = v;
            if (wait && v >= want) {
                a->reached = true;
                a->reached_after_ms = t - t0;
            } else if (wait) {
                done = false;
            }
        }
        nap_ms(PERIOD_MS);
    }
    FILE *f = fopen(out, "w");
    if (f == NULL) {
        fprintf(stderr, "error: io: cannot write %s\n", out);
        free(sockets);
        return 2;
    }
    bool good = true;
    for (size_t i = 0; i < n; i++) {
        struct agent *a = &ag[i];
        agent_close(a);
        if (probe) {
            good = good && a->errors == 0 && a->answers > 0;
            fprintf(f,
                    "{\"socket\":\"%s\",\"calls\":%" PRIu64
                    ",\"answers\":%" PRIu64 ",\"errors\":%" PRIu64
                    ",\"max_gap_ms\":%" PRIu64 ",\"first_version\":%" PRIu64
                    ",\"last_version\":%" PRIu64 "}\n",
                    a->sock, a->calls, a->answers, a->errors, a->max_gap_ms,
                    a->first_version, a->last_version);
        } else {
            good = good && a->reached;
            fprintf(f,
                    "{\"socket\":\"%s\",\"want\":%" PRIu64
                    ",\"version\":%" PRIu64 ",\"reached\":%s"
                    ",\"after_ms\":%" PRIu64 "}\n",
                    a->sock, want, a->last_version,
                    a->reached ? "true" : "false", a->reached_after_ms);
        }
    }
    fclose(f);
    free(sockets);
    return good ? 0 : 1;
}
