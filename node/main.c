/* main.c - allotd's command line. See docs/operations.md for every flag. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/lib.h"
#include "../proto/auth.h"
#include "node.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: allotd --id N --data-dir DIR --raft HOST:PORT "
            "--client HOST:PORT\n"
            "              [--cluster 1=HOST:PORT,2=HOST:PORT,... | --join "
            "HOST:PORT]\n"
            "              [--insecure] [--admin NAME=PUBKEY_HEX]... "
            "[--identity FILE]\n"
            "              [--snapshot-threshold N] "
            "[--snapshot-trailing N]\n"
            "              [--election-timeout-ms N] "
            "[--heartbeat-timeout-ms N] [--log-level LEVEL]\n"
            "              [--gossip HOST:PORT --gossip-keyring FILE "
            "[--gossip-seeds LIST]]\n"
            "\n"
            "  --id N                 this node's id (1 or more), fixed for "
            "the life of DIR\n"
            "  --data-dir DIR         raft log, snapshots and node.id live "
            "here\n"
            "  --raft HOST:PORT       address for raft traffic between nodes\n"
            "  --client HOST:PORT     address for clients (allotctl)\n"
            "  --http HOST:PORT       HTTP/JSON API and /metrics "
            "(docs/http.md)\n"
            "  --cluster LIST         initial voters, same list on each; "
            "used on first start only\n"
            "  --join HOST:PORT       ask a running node to add this one "
            "(first start only)\n"
            "  --insecure             accept unsigned requests, with no "
            "access control\n"
            "  --admin NAME=PUBKEY    first admin of a new cluster "
            "(repeatable)\n"
            "  --identity FILE        admin identity that signs --join's "
            "request\n"
            "  --snapshot-threshold N entries between snapshots (default "
            "8192)\n"
            "  --snapshot-trailing N  entries kept after a snapshot (default "
            "2048)\n"
            "  --max-inflight-entries N  write entries the leader keeps in "
            "flight before\n"
            "                         holding new writes for the next one "
            "(default 1)\n"
            "  --gossip HOST:PORT     join the fleet's gossip here (UDP and "
            "TCP) and announce\n"
            "                         each catalog version (docs/gossip.md)\n"
            "  --gossip-keyring FILE  gossip keys, one base64 key per line, "
            "primary first;\n"
            "                         rewritten when keys rotate\n"
            "  --gossip-seeds LIST    HOST:PORT,... of members to join "
            "through\n"
            "  --gossip-probe-interval-ms N  failure-detection probe period "
            "(default 400)\n"
            "  --log-level LEVEL      debug, info (default), warn, error\n");
}

static int parse_uint(const char *flag, const char *s, unsigned long long min,
                      unsigned long long max, unsigned long long *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] == '\0' || s[0] == '-' || *end != '\0' || v < min || v > max) {
        fprintf(stderr,
                "error: invalid: %s must be a whole number from %llu "
                "to %llu, got \"%s\"\n",
                flag, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    struct node_config cfg = {
        .snapshot_threshold = 8192,
        .snapshot_trailing = 2048,
        .election_timeout_ms = 1000,
        .heartbeat_timeout_ms = 100,
        /* Measured in docs/benchmarks.md: one entry in flight gives the
         * largest batches and the best throughput and p99 at 16 and 64
         * clients on 2 cores. */
        .max_inflight = 1,
    };
    enum {
        OPT_ID = 256,
        OPT_DATA,
        OPT_RAFT,
        OPT_CLIENT,
        OPT_CLUSTER,
        OPT_JOIN,
        OPT_INSECURE,
        OPT_SNAP,
        OPT_TRAIL,
        OPT_ELECTION,
        OPT_HEARTBEAT,
        OPT_LOG,
        OPT_ADMIN,
        OPT_INFLIGHT,
        OPT_HTTP,
        OPT_IDENTITY,
        OPT_GOSSIP,
        OPT_GOSSIP_KEYRING,
        OPT_GOSSIP_SEEDS,
        OPT_GOSSIP_PROBE,
        OPT_HELP,
    };
    static const struct option opts[] = {
        {"id", required_argument, NULL, OPT_ID},
        {"data-dir", required_argument, NULL, OPT_DATA},
        {"raft", required_argument, NULL, OPT_RAFT},
        {"client", required_argument, NULL, OPT_CLIENT},
        {"cluster", required_argument, NULL, OPT_CLUSTER},
        {"join", required_argument, NULL, OPT_JOIN},
        {"insecure", no_argument, NULL, OPT_INSECURE},
        {"snapshot-threshold", required_argument, NULL, OPT_SNAP},
        {"snapshot-trailing", required_argument, NULL, OPT_TRAIL},
        {"election-timeout-ms", required_argument, NULL, OPT_ELECTION},
        {"heartbeat-timeout-ms", required_argument, NULL, OPT_HEARTBEAT},
        {"log-level", required_argument, NULL, OPT_LOG},
        {"admin", required_argument, NULL, OPT_ADMIN},
        {"http", required_argument, NULL, OPT_HTTP},
        {"max-inflight-entries", required_argument, NULL, OPT_INFLIGHT},
        {"identity", required_argument, NULL, OPT_IDENTITY},
        {"gossip", required_argument, NULL, OPT_GOSSIP},
        {"gossip-keyring", required_argument, NULL, OPT_GOSSIP_KEYRING},
        {"gossip-seeds", required_argument, NULL, OPT_GOSSIP_SEEDS},
        {"gossip-probe-interval-ms", required_argument, NULL, OPT_GOSSIP_PROBE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    unsigned long long v;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case OPT_ID:
            if (parse_uint("--id", optarg, 1, UINT64_MAX, &v) != 0) {
                return 2;
            }
            cfg.id = v;
            break;
        case OPT_DATA:
            cfg.data_dir = optarg;
            break;
        case OPT_RAFT:
            cfg.raft_addr = optarg;
            break;
        case OPT_CLIENT:
            cfg.client_addr = optarg;
            break;
        case OPT_CLUSTER:
            cfg.cluster = optarg;
            break;
        case OPT_JOIN:
            cfg.join = optarg;
            break;
        case OPT_INSECURE:
            cfg.insecure = true;
            break;
        case OPT_SNAP:
            if (parse_uint("--snapshot-threshold", optarg, 16, 1u << 24, &v)) {
                return 2;
            }
            cfg.snapshot_threshold = (unsigned)v;
            break;
        case OPT_TRAIL:
            if (parse_uint("--snapshot-trailing", optarg, 1, 1u << 24, &v)) {
                return 2;
            }
            cfg.snapshot_trailing = (unsigned)v;
            break;
        case OPT_ELECTION:
            if (parse_uint("--election-timeout-ms", optarg, 50, 60000, &v)) {
                return 2;
            }
            cfg.election_timeout_ms = (unsigned)v;
            break;
        case OPT_HEARTBEAT:
            if (parse_uint("--heartbeat-timeout-ms", optarg, 10, 10000, &v)) {
                return 2;
            }
            cfg.heartbeat_timeout_ms = (unsigned)v;
            break;
        case OPT_LOG: {
            int level = log_level_parse(optarg);
            if (level < 0) {
                fprintf(stderr, "error: invalid: --log-level must be debug, "
                                "info, warn or error\n");
                return 2;
            }
            log_set_level((enum log_level)level);
            break;
        }
        case OPT_ADMIN: {
            const char *eq = strchr(optarg, '=');
            char msg[ALLOT_ERRMSG_SIZE];
            struct fsm_admin *a = &cfg.admins[cfg.n_admins];
            if (cfg.n_admins == NODE_ADMINS_MAX) {
                fprintf(stderr, "error: invalid: at most %d --admin\n",
                        NODE_ADMINS_MAX);
                return 2;
            }
            if (eq == NULL || !auth_name_valid(optarg, (size_t)(eq - optarg))) {
                fprintf(stderr, "error: invalid: --admin NAME=PUBKEY_HEX, "
                                "NAME of [A-Za-z0-9_.@-]{1,64}\n");
                return 2;
            }
            if (auth_pubkey_parse(eq + 1, a->pk, msg) != 0) {
                fprintf(stderr, "error: invalid: --admin %.*s: %s\n",
                        (int)(eq - optarg), optarg, msg);
                return 2;
            }
            memcpy(a->name, optarg, (size_t)(eq - optarg));
            a->name[eq - optarg] = '\0';
            cfg.n_admins++;
            break;
        }
        case OPT_INFLIGHT:
            if (parse_uint("--max-inflight-entries", optarg, 1, 1024, &v)) {
                return 2;
            }
            cfg.max_inflight = (unsigned)v;
            break;
        case OPT_HTTP:
            cfg.http_addr = optarg;
            break;
        case OPT_IDENTITY:
            cfg.identity = optarg;
            break;
        case OPT_GOSSIP:
            cfg.gossip_addr = optarg;
            break;
        case OPT_GOSSIP_KEYRING:
            cfg.gossip_keyring = optarg;
            break;
        case OPT_GOSSIP_SEEDS:
            cfg.gossip_seeds = optarg;
            break;
        case OPT_GOSSIP_PROBE:
            if (parse_uint("--gossip-probe-interval-ms", optarg, 50, 60000,
                           &v)) {
                return 2;
            }
            cfg.gossip_probe_interval_ms = (unsigned)v;
            break;
        case OPT_HELP:
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
    const char *missing = cfg.id == 0               ? "--id"
                          : cfg.data_dir == NULL    ? "--data-dir"
                          : cfg.raft_addr == NULL   ? "--raft"
                          : cfg.client_addr == NULL ? "--client"
                                                    : NULL;
    if (missing != NULL) {
        fprintf(stderr, "error: invalid: %s is required\n", missing);
        usage(stderr);
        return 2;
    }
    if (cfg.cluster != NULL && cfg.join != NULL) {
        fprintf(stderr, "error: invalid: give --cluster or --join, not both\n");
        return 2;
    }
    if ((cfg.gossip_keyring != NULL || cfg.gossip_seeds != NULL ||
         cfg.gossip_probe_interval_ms != 0) &&
        cfg.gossip_addr == NULL) {
        fprintf(stderr, "error: invalid: --gossip-keyring, --gossip-seeds and "
                        "--gossip-probe-interval-ms need --gossip HOST:PORT\n");
        return 2;
    }
    if (cfg.gossip_addr != NULL && cfg.gossip_keyring == NULL) {
        /* Gossip is always encrypted: there is no plaintext mode. */
        fprintf(stderr, "error: invalid: --gossip needs --gossip-keyring FILE "
                        "(one base64 key per line; allotctl gossip keygen "
                        "prints one)\n");
        return 2;
    }
    if (cfg.snapshot_trailing > cfg.snapshot_threshold) {
        fprintf(stderr, "error: invalid: --snapshot-trailing must not exceed "
                        "--snapshot-threshold\n");
        return 2;
    }
    if (!cfg.insecure && cfg.n_admins == 0 && cfg.cluster != NULL) {
        /* A new secure cluster nobody could administer. */
        fprintf(stderr, "error: invalid: a new cluster without --insecure "
                        "needs at least one --admin NAME=PUBKEY_HEX\n");
        return 2;
    }
    /* A client that vanishes mid-write must not kill the server. */
    signal(SIGPIPE, SIG_IGN);

    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        return 1;
    }
    struct node *n = calloc(1, sizeof *n);
    if (n == NULL || node_init(n, &loop, &cfg) != 0 || node_start(n) != 0) {
        if (n != NULL && n->fsm != NULL) {
            node_stop(n);
            uv_run(&loop, UV_RUN_DEFAULT);
            fsm_close(n->fsm);
            nonce_cache_free(n->nonces);
            usage_store_free(n->usage);
        }
        free(n);
        uv_loop_close(&loop);
        return 1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    int code = n->exit_code;
    fsm_close(n->fsm);
    nonce_cache_free(n->nonces);
    usage_store_free(n->usage);
    free(n);
    int rv = uv_loop_close(&loop);
    if (rv != 0) {
        LOGE(NODE_COMP, "handles left open at exit", "err=\"%s\"",
             uv_strerror(rv));
        return 3;
    }
    LOGI(NODE_COMP, "stopped", "code=%d", code);
    return code;
}
