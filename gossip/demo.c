/* demo.c - gossip-demo: one gossip member on a libuv loop, for trying the
 * library by hand and for the multi-process test.
 *
 *   gossip-demo --bind HOST:PORT --name NAME --keyring FILE
 *               [--seeds HOST:PORT,...] [--role server|agent] [--fleet F]
 *               [--weight W] [--probe-interval MS] [--probe-timeout MS]
 *               [--gossip-interval MS] [--push-pull-interval MS]
 *               [--log-level debug|info|warn|error]
 *   gossip-demo --keygen FILE      write a keyring with one new key
 *
 * It prints one line per event on stdout (line-buffered):
 *   ready name=N addr=A
 *   member event=E name=N addr=A inc=I state=S role=R fleet=F weight=W
 *   view alive=N suspect=N dead=N left=N
 *   broadcast key=K version=V payload=P      (key "-" for a plain one)
 *   message from=N payload=P
 *   left status=S
 *   exit status=S
 * and reads commands on stdin, one per line:
 *   broadcast KEY VERSION TEXT | say TEXT | send NAME TEXT |
 *   meta FLEET WEIGHT | members | stats | leave
 *
 * SIGTERM or SIGINT (or `leave`): leave the cluster, free the member, close
 * every handle, and exit 0 only if uv_loop_close() succeeds. */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "../lib/lib.h"
#include "../proto/allot_error.h"
#include "gossip.h"

#define LINE_MAX_LEN 4096
#define SEEDS_MAX    64

struct demo
{
    uv_loop_t loop;
    struct gossip_uv *u;
    struct gossip *g;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    uv_pipe_t in;
    bool in_open;
    struct gossip_leave leave;
    bool stopping;
    size_t line_len;
    char line[LINE_MAX_LEN];
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gossip-demo --bind HOST:PORT --name NAME --keyring FILE\n"
            "         [--seeds HOST:PORT,...] [--role server|agent] "
            "[--fleet F] [--weight W]\n"
            "         [--probe-interval MS] [--probe-timeout MS] "
            "[--gossip-interval MS]\n"
            "         [--push-pull-interval MS] [--log-level LEVEL]\n"
            "       gossip-demo --keygen FILE\n");
}

static void print_view(struct gossip *g)
{
    printf("view alive=%zu suspect=%zu dead=%zu left=%zu\n",
           gossip_member_count(g, GOSSIP_ALIVE),
           gossip_member_count(g, GOSSIP_SUSPECT),
           gossip_member_count(g, GOSSIP_DEAD),
           gossip_member_count(g, GOSSIP_LEFT));
}

static void print_member(const char *what, const struct gossip_member *m)
{
    char a[GOSSIP_ADDR_STRLEN];
    printf("%s name=%s addr=%s inc=%" PRIu64
           " state=%s role=%s fleet=%s weight=%u\n",
           what, m->name, gossip_addr_format(&m->addr, a), m->incarnation,
           gossip_state_name(m->state), gossip_role_name(m->meta.role),
           m->meta.fleet[0] != '\0' ? m->meta.fleet : "-", m->meta.weight);
}

static void on_member(void *data, enum gossip_event ev,
                      const struct gossip_member *m)
{
    struct demo *d = data;
    char what[32];
    snprintf(what, sizeof what, "member event=%s", gossip_event_name(ev));
    print_member(what, m);
    print_view(d->g);
}

/* A payload on one line: printable ASCII as is, other bytes (an
 * application's binary payload, such as allotd's msgpack announcement) and
 * the backslash as \xHH. */
static void print_payload(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\') {
            putchar(p[i]);
        } else {
            printf("\\x%02x", p[i]);
        }
    }
    putchar('\n');
}

static void on_broadcast(void *data, const char *key, size_t key_len,
                         uint64_t version, const void *buf, size_t len)
{
    (void)data;
    printf("broadcast key=%.*s version=%" PRIu64 " payload=",
           key != NULL ? (int)key_len : 1, key != NULL ? key : "-", version);
    print_payload(buf, len);
}

static void on_message(void *data, const char *from, const void *buf,
                       size_t len)
{
    (void)data;
    printf("message from=%s payload=", from);
    print_payload(buf, len);
}

static void print_one(void *data, const struct gossip_member *m)
{
    (void)data;
    print_member("members", m);
}

/* --- Stopping ----------------------------------------------------------- */

static void on_uv_closed(void *data)
{
    (void)data;
}

static void finish(struct demo *d)
{
    gossip_free(d->g);
    d->g = NULL;
    gossip_uv_close(d->u, on_uv_closed, d);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    if (d->in_open) {
        uv_close((uv_handle_t *)&d->in, NULL);
        d->in_open = false;
    }
}

static void on_left(struct gossip_leave *req, int status)
{
    struct demo *d = req->data;
    printf("left status=%s\n", allot_error_name(status));
    finish(d);
}

static void stop(struct demo *d)
{
    if (d->stopping) {
        return;
    }
    d->stopping = true;
    d->leave.data = d;
    if (gossip_leave(d->g, &d->leave, on_left) != 0) {
        finish(d);
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)signum;
    stop(s->data);
}

/* --- Commands ----------------------------------------------------------- */

static void command(struct demo *d, char *line)
{
    char *rest = NULL;
    char *cmd = strtok_r(line, " ", &rest);
    if (cmd == NULL || d->stopping) {
        return;
    }
    int rv = 0;
    if (strcmp(cmd, "broadcast") == 0) {
        char *key = strtok_r(NULL, " ", &rest);
        char *ver = strtok_r(NULL, " ", &rest);
        const char *text = rest != NULL ? rest : "";
        if (key == NULL || ver == NULL) {
            rv = ALLOT_EINVALID;
        } else {
            rv = gossip_broadcast_keyed(d->g, key, strtoull(ver, NULL, 10),
                                        text, strlen(text));
        }
    } else if (strcmp(cmd, "say") == 0) {
        const char *text = rest != NULL ? rest : "";
        rv = gossip_broadcast(d->g, text, strlen(text));
    } else if (strcmp(cmd, "send") == 0) {
        char *to = strtok_r(NULL, " ", &rest);
        const char *text = rest != NULL ? rest : "";
        rv = to != NULL ? gossip_send(d->g, to, text, strlen(text))
                        : ALLOT_EINVALID;
    } else if (strcmp(cmd, "meta") == 0) {
        char *fleet = strtok_r(NULL, " ", &rest);
        char *weight = strtok_r(NULL, " ", &rest);
        struct gossip_member self;
        gossip_self(d->g, &self);
        struct gossip_meta meta = self.meta;
        meta.fleet = fleet != NULL ? fleet : "";
        meta.weight = weight != NULL ? (uint32_t)strtoul(weight, NULL, 10) : 0;
        rv = gossip_set_meta(d->g, &meta);
    } else if (strcmp(cmd, "members") == 0) {
        gossip_member_foreach(d->g, print_one, d);
        print_view(d->g);
    } else if (strcmp(cmd, "stats") == 0) {
        struct gossip_stats st;
        gossip_stats(d->g, &st);
        printf("stats packets_sent=%" PRIu64 " packets_recv=%" PRIu64
               " streams_sent=%" PRIu64 " streams_recv=%" PRIu64
               " dropped_auth=%" PRIu64 " dropped_malformed=%" PRIu64
               " dropped_oversize=%" PRIu64 " probes=%" PRIu64
               " suspicions=%" PRIu64 " refutes=%" PRIu64
               " awareness=%u incarnation=%" PRIu64 "\n",
               st.packets_sent, st.packets_recv, st.streams_sent,
               st.streams_recv, st.dropped[GOSSIP_DROP_AUTH],
               st.dropped[GOSSIP_DROP_MALFORMED],
               st.dropped[GOSSIP_DROP_OVERSIZE], st.probes, st.suspicions,
               st.refutes, st.awareness, st.incarnation);
    } else if (strcmp(cmd, "leave") == 0) {
        stop(d);
    } else {
        rv = ALLOT_EINVALID;
    }
    if (rv != 0) {
        printf("error: %s: %s\n", allot_error_name(rv), allot_strerror(rv));
    }
}

static void on_in_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct demo *d = h->data;
    if (d->line_len >= sizeof d->line - 1) {
        d->line_len = 0; /* an overlong line is dropped */
    }
    *buf = uv_buf_init(d->line + d->line_len,
                       (unsigned)(sizeof d->line - 1 - d->line_len));
}

static void on_in_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    struct demo *d = s->data;
    if (n < 0) {
        /* stdin closed: keep running until a signal. */
        uv_close((uv_handle_t *)&d->in, NULL);
        d->in_open = false;
        return;
    }
    d->line_len += (size_t)n;
    /* Each pass consumes one line. */
    for (;;) {
        char *nl = memchr(d->line, '\n', d->line_len);
        if (nl == NULL || d->g == NULL) {
            break;
        }
        *nl = '\0';
        size_t used = (size_t)(nl - d->line) + 1;
        command(d, d->line);
        if (d->g == NULL) {
            return;
        }
        memmove(d->line, d->line + used, d->line_len - used);
        d->line_len -= used;
    }
}

/* --- Start-up ----------------------------------------------------------- */

static int keygen(const char *path)
{
    struct gossip_keyring kr = {.n = 1};
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = gossip_key_generate(kr.keys[0]);
    if (rv == 0) {
        rv = gossip_keyring_save(&kr, path, msg);
    } else {
        snprintf(msg, sizeof msg, "cannot generate a key");
    }
    gossip_keyring_wipe(&kr);
    if (rv != 0) {
        fprintf(stderr, "error: %s: %s\n", allot_error_name(rv), msg);
        return 1;
    }
    return 0;
}

static uint32_t parse_ms(const char *s, const char *what)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v == 0 || v > 3600000) {
        fprintf(stderr, "error: invalid: %s: expected 1-3600000\n", what);
        exit(2);
    }
    return (uint32_t)v;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"bind", required_argument, NULL, 'b'},
        {"name", required_argument, NULL, 'n'},
        {"seeds", required_argument, NULL, 's'},
        {"keyring", required_argument, NULL, 'k'},
        {"role", required_argument, NULL, 'r'},
        {"fleet", required_argument, NULL, 'f'},
        {"weight", required_argument, NULL, 'w'},
        {"probe-interval", required_argument, NULL, 'P'},
        {"probe-timeout", required_argument, NULL, 'T'},
        {"gossip-interval", required_argument, NULL, 'G'},
        {"push-pull-interval", required_argument, NULL, 'S'},
        {"log-level", required_argument, NULL, 'l'},
        {"keygen", required_argument, NULL, 'K'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct gossip_config cfg;
    gossip_config_init(&cfg);
    const char *bind = NULL, *keyring = NULL, *seeds = NULL;
    char msg[ALLOT_ERRMSG_SIZE];
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
            bind = optarg;
            break;
        case 'n':
            cfg.name = optarg;
            break;
        case 's':
            seeds = optarg;
            break;
        case 'k':
            keyring = optarg;
            break;
        case 'r':
            if (strcmp(optarg, "server") == 0) {
                cfg.meta.role = GOSSIP_ROLE_SERVER;
            } else if (strcmp(optarg, "agent") == 0) {
                cfg.meta.role = GOSSIP_ROLE_AGENT;
            } else {
                fprintf(stderr, "error: invalid: --role server|agent\n");
                return 2;
            }
            break;
        case 'f':
            cfg.meta.fleet = optarg;
            break;
        case 'w':
            cfg.meta.weight = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'P':
            cfg.probe_interval_ms = parse_ms(optarg, "--probe-interval");
            break;
        case 'T':
            cfg.probe_timeout_ms = parse_ms(optarg, "--probe-timeout");
            break;
        case 'G':
            cfg.gossip_interval_ms = parse_ms(optarg, "--gossip-interval");
            break;
        case 'S':
            cfg.push_pull_interval_ms =
                parse_ms(optarg, "--push-pull-interval");
            break;
        case 'l': {
            int level = log_level_parse(optarg);
            if (level < 0) {
                fprintf(stderr, "error: invalid: --log-level "
                                "debug|info|warn|error\n");
                return 2;
            }
            log_set_level((enum log_level)level);
            break;
        }
        case 'K':
            return keygen(optarg);
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (bind == NULL || cfg.name == NULL || keyring == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    struct gossip_addr bind_addr;
    struct gossip_addr seed_list[SEEDS_MAX];
    size_t n_seeds = 0;
    int rv = gossip_addr_parse(&bind_addr, bind, msg);
    if (rv == 0 && seeds != NULL) {
        rv = gossip_addr_parse_list(seeds, seed_list, SEEDS_MAX, &n_seeds, msg);
    }
    if (rv == 0) {
        rv = gossip_keyring_load(&cfg.keyring, keyring, msg);
    }
    if (rv != 0) {
        fprintf(stderr, "error: %s: %s\n", allot_error_name(rv), msg);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);

    static struct demo d;
    uv_loop_init(&d.loop);
    rv = gossip_uv_new(&d.u, &d.loop, &bind_addr, msg);
    if (rv != 0) {
        gossip_keyring_wipe(&cfg.keyring);
        fprintf(stderr, "error: %s: %s\n", allot_error_name(rv), msg);
        uv_run(&d.loop, UV_RUN_DEFAULT);
        uv_loop_close(&d.loop);
        return 1;
    }
    cfg.addr = gossip_uv_addr(d.u);
    cfg.cb = (struct gossip_callbacks){.data = &d,
                                       .member = on_member,
                                       .broadcast = on_broadcast,
                                       .message = on_message};
    rv = gossip_new(&d.g, gossip_uv_io(d.u), &cfg, msg);
    gossip_keyring_wipe(&cfg.keyring);
    if (rv != 0) {
        fprintf(stderr, "error: %s: %s\n", allot_error_name(rv), msg);
        gossip_uv_close(d.u, NULL, NULL);
        uv_run(&d.loop, UV_RUN_DEFAULT);
        uv_loop_close(&d.loop);
        return 1;
    }
    uv_signal_init(&d.loop, &d.sigterm);
    uv_signal_init(&d.loop, &d.sigint);
    d.sigterm.data = d.sigint.data = &d;
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_handle_type in_type = uv_guess_handle(0);
    if (in_type == UV_NAMED_PIPE && uv_pipe_init(&d.loop, &d.in, 0) == 0) {
        d.in.data = &d;
        d.in_open = true;
        if (uv_pipe_open(&d.in, 0) != 0 ||
            uv_read_start((uv_stream_t *)&d.in, on_in_alloc, on_in_read) != 0) {
            uv_close((uv_handle_t *)&d.in, NULL);
            d.in_open = false;
        }
    }
    char a[GOSSIP_ADDR_STRLEN];
    printf("ready name=%s addr=%s\n", cfg.name,
           gossip_addr_format(&cfg.addr, a));
    if (n_seeds > 0) {
        gossip_join(d.g, seed_list, n_seeds);
    }
    uv_run(&d.loop, UV_RUN_DEFAULT);
    rv = uv_loop_close(&d.loop);
    printf("exit status=%d\n", rv);
    return rv == 0 ? 0 : 1;
}
