/* server.c - allotd's lifecycle: data directory, raft, listeners, shutdown.
 *
 * Start: check the data directory belongs to this node id (node.id), open
 * raft_uv on DATA/raft with the TCP transport, put the raft_io guard between
 * raft and raft_uv (raft/io_guard.h: canonical/raft 0.15.0's F1 and F3),
 * bootstrap from --cluster on a
 * pristine directory (a restart finds its state on disk and ignores
 * --cluster), start raft, listen for clients, and with --join ask a running
 * node to add this one from a worker thread (the loop never blocks).
 *
 * Stop (SIGINT/SIGTERM): close the listener and every client, fail what is
 * queued with `shutdown`, raft_close(); its callback releases raft_uv and the
 * transport; then no handle remains and uv_run() returns, so main can assert
 * uv_loop_close() == 0. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../lib/lib.h"
#include "../proto/client.h"
#include "node.h"
#include <sodium.h>

static atomic_bool join_cancel;

static int mkdir_p(const char *dir)
{
    char tmp[512];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0700) != 0 && errno != EEXIST) {
                return -1;
            }
            *p = '/';
        }
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST) {
        return -1;
    }
    return 0;
}

/* DATA/node.id ties a data directory to one node id: starting node 2 on
 * node 1's directory would corrupt the cluster, so it is refused. Sets
 * *fresh when the directory had never been used. */
static int check_node_id(const struct node_config *cfg, bool *fresh)
{
    char path[512];
    snprintf(path, sizeof path, "%s/node.id", cfg->data_dir);
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        unsigned long long id = 0;
        int ok = fscanf(f, "%llu", &id);
        fclose(f);
        if (ok != 1 || id != cfg->id) {
            LOGE(NODE_COMP, "data directory belongs to another node",
                 "dir=%s file_id=%llu id=%" PRIu64, cfg->data_dir, id, cfg->id);
            return -1;
        }
        *fresh = false;
        return 0;
    }
    *fresh = true;
    char tmp[520];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        return -1;
    }
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%" PRIu64 "\n", cfg->id);
    bool ok = write(fd, buf, (size_t)len) == len && fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, path) != 0) {
        return -1;
    }
    return 0;
}

static int parse_cluster(const char *s, struct raft_configuration *conf)
{
    char copy[1024];
    if (snprintf(copy, sizeof copy, "%s", s) >= (int)sizeof copy) {
        return -1;
    }
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (eq == NULL) {
            LOGE(NODE_COMP, "bad --cluster entry, expected ID=HOST:PORT",
                 "entry=%s", tok);
            return -1;
        }
        *eq = '\0';
        char *end;
        unsigned long long id = strtoull(tok, &end, 10);
        struct sockaddr_in sa;
        char why[160];
        if (*end != '\0' || id == 0) {
            LOGE(NODE_COMP, "bad node id in --cluster, expected 1 or more",
                 "entry=%s", tok);
            return -1;
        }
        if (addr_parse(eq + 1, &sa, why, sizeof why) != 0) {
            LOGE(NODE_COMP, "bad address in --cluster", "why=\"%s\"", why);
            return -1;
        }
        int rv = raft_configuration_add(conf, id, eq + 1, RAFT_VOTER);
        if (rv != 0) {
            LOGE(NODE_COMP, "bad --cluster", "id=%llu err=\"%s\"", id,
                 raft_strerror(rv));
            return -1;
        }
    }
    return conf->n > 0 ? 0 : -1;
}

int node_init(struct node *n, uv_loop_t *loop, const struct node_config *cfg)
{
    memset(n, 0, sizeof *n);
    n->cfg = *cfg;
    n->loop = loop;
    TAILQ_INIT(&n->conns);
    TAILQ_INIT(&n->dirty);
    TAILQ_INIT(&n->watches);
    TAILQ_INIT(&n->validations);
    TAILQ_INIT(&n->writes);
    TAILQ_INIT(&n->reads);

    if (mkdir_p(cfg->data_dir) != 0) {
        LOGE(NODE_COMP, "cannot create data directory", "dir=%s err=\"%s\"",
             cfg->data_dir, strerror(errno));
        return -1;
    }
    bool fresh;
    if (check_node_id(cfg, &fresh) != 0) {
        return -1;
    }
    if (fresh && cfg->cluster == NULL && cfg->join == NULL) {
        LOGE(NODE_COMP, "a new node needs --cluster (initial voters) or --join",
             "%s", "");
        return -1;
    }
    snprintf(n->raft_dir, sizeof n->raft_dir, "%s/raft", cfg->data_dir);
    if (mkdir_p(n->raft_dir) != 0) {
        LOGE(NODE_COMP, "cannot create raft directory", "dir=%s", n->raft_dir);
        return -1;
    }
    if (auth_init() != 0) {
        LOGE(NODE_COMP, "libsodium init failed", "%s", "");
        return -1;
    }
    n->nonces = nonce_cache_new();
    if (n->nonces == NULL || fsm_init(&n->fsm) != 0) {
        nonce_cache_free(n->nonces);
        n->nonces = NULL;
        return -1;
    }
    int rv = transport_init(&n->transport, loop);
    if (rv != 0) {
        LOGE(NODE_COMP, "raft transport init failed", "err=\"%s\"",
             raft_strerror(rv));
        goto err_after_fsm;
    }
    rv = raft_uv_init(&n->io, loop, n->raft_dir, &n->transport.outer);
    if (rv != 0) {
        LOGE(NODE_COMP, "raft_uv init failed", "err=\"%s\"", n->io.errmsg);
        goto err_after_transport;
    }
    /* raft_uv is wrapped, never replaced: every call still lands there. */
    ioguard_init(&n->guard, &n->io, IOGUARD_ALL);
    rv = raft_init(&n->raft, &n->guard.io, fsm_raft(n->fsm), cfg->id,
                   cfg->raft_addr);
    if (rv != 0) {
        LOGE(NODE_COMP, "raft init failed", "err=\"%s\"",
             raft_errmsg(&n->raft));
        goto err_after_io;
    }
    n->raft.data = n;
    raft_set_election_timeout(&n->raft, cfg->election_timeout_ms);
    raft_set_heartbeat_timeout(&n->raft, cfg->heartbeat_timeout_ms);
    raft_set_snapshot_threshold(&n->raft, cfg->snapshot_threshold);
    raft_set_snapshot_trailing(&n->raft, cfg->snapshot_trailing);
    /* Pre-vote keeps a node that was cut off from disrupting a healthy
     * leader when it comes back with a higher term. */
    raft_set_pre_vote(&n->raft, true);

    if (cfg->cluster != NULL && fresh) {
        struct raft_configuration conf;
        raft_configuration_init(&conf);
        if (parse_cluster(cfg->cluster, &conf) != 0) {
            raft_configuration_close(&conf);
            goto err_after_raft;
        }
        rv = raft_bootstrap(&n->raft, &conf);
        raft_configuration_close(&conf);
        if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) {
            LOGE(NODE_COMP, "bootstrap failed", "err=\"%s\"",
                 raft_errmsg(&n->raft));
            goto err_after_raft;
        }
    }
    n->joining = cfg->join != NULL && fresh;
    return 0;

err_after_raft:
    /* raft_init succeeded: raft_close is the only way to release it, and it
     * needs the loop; node_start is never called, so run it here. */
    n->stopping = true;
    raft_close(&n->raft, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    raft_uv_close(&n->io);
    ioguard_close(&n->guard);
    transport_close(&n->transport);
    fsm_close(n->fsm);
    n->fsm = NULL;
    nonce_cache_free(n->nonces);
    n->nonces = NULL;
    return -1;
err_after_io:
    raft_uv_close(&n->io);
    ioguard_close(&n->guard);
err_after_transport:
    transport_close(&n->transport);
    uv_run(loop, UV_RUN_DEFAULT);
err_after_fsm:
    fsm_close(n->fsm);
    n->fsm = NULL;
    nonce_cache_free(n->nonces);
    n->nonces = NULL;
    return -1;
}

/* --- Join ------------------------------------------------------------------
 */

static void pack_join_args(msgpack_packer *pk, void *arg)
{
    struct node *n = arg;
    msgpack_pack_map(pk, 2);
    wire_pack_kv_u64(pk, "id", n->cfg.id);
    wire_pack_kv_str(pk, "raft_addr", n->cfg.raft_addr);
}

static void join_work_cb(uv_work_t *w)
{
    struct node *n = w->data;
    struct allot_client *c;
    char msg[ALLOT_ERRMSG_SIZE];
    n->join_result = allot_client_open(n->cfg.join, 5000, &c, msg);
    if (n->join_result != 0) {
        return;
    }
    if (n->cfg.identity != NULL) {
        /* A secure cluster adds members for admins only. */
        struct auth_identity id;
        n->join_result = auth_identity_load(n->cfg.identity, &id, msg);
        if (n->join_result == 0) {
            allot_client_set_identity(c, &id);
        }
        sodium_memzero(&id, sizeof id);
        if (n->join_result != 0) {
            LOGE(NODE_COMP, "cannot load --identity", "msg=\"%s\"", msg);
            allot_client_close(c);
            return;
        }
    }
    /* The leader may be busy with another change or not elected yet; keep
     * asking for up to a minute, giving up early if we are told to stop. */
    for (int i = 0; i < 60 && !atomic_load(&join_cancel); i++) {
        struct allot_reply rep;
        n->join_result =
            allot_client_call(c, "cluster.add", pack_join_args, n, &rep);
        if (rep.code != 0) {
            LOGW(NODE_COMP, "join attempt failed", "via=%s err=%s msg=\"%s\"",
                 n->cfg.join, allot_error_name(rep.code), rep.message);
        }
        allot_reply_destroy(&rep);
        if (n->join_result == 0) {
            break;
        }
        sleep(1);
    }
    allot_client_close(c);
}

static void join_after_cb(uv_work_t *w, int status)
{
    struct node *n = w->data;
    n->joining = false;
    if (status == 0 && n->join_result == 0) {
        LOGI(NODE_COMP, "joined the cluster", "via=%s", n->cfg.join);
    } else if (!n->stopping) {
        LOGE(NODE_COMP, "could not join the cluster", "via=%s err=%s",
             n->cfg.join, allot_error_name(n->join_result));
    }
}

/* --- Loop hooks ------------------------------------------------------------
 */

/* Log what the raft_io guard did about F3 (rare: a membership change rolled
 * back), and stop like raft does if it could not handle a message. */
static void guard_check(struct node *n)
{
    const struct ioguard_stats *st = &n->guard.stats;
    uint64_t seen = st->rollbacks + st->messages_dropped;
    if (seen != n->guard_seen) {
        n->guard_seen = seen;
        LOGW(NODE_COMP, "raft guard rolled back an uncommitted configuration",
             "rollbacks=%" PRIu64 " dropped=%" PRIu64, st->rollbacks,
             st->messages_dropped);
    }
    if (ioguard_failed(&n->guard)) {
        /* Restarted, raft reloads its log and configuration from disk. */
        LOGE(NODE_COMP, "raft guard failed, shutting down", "err=\"%s\"",
             n->guard.errmsg);
        n->exit_code = 1;
        node_stop(n);
    }
}

static void prepare_cb(uv_prepare_t *h)
{
    struct node *n = h->data;
    if (n->stopping) {
        return;
    }
    leader_tick(n);
    forward_tick(n);
    gateway_watch_tick(n);
    announce_tick(n);
    gateway_flush(n);
    guard_check(n);
    if (n->stopping) {
        return;
    }
    if (raft_state(&n->raft) == RAFT_UNAVAILABLE) {
        /* canonical/raft shut itself down: an I/O error or a log that
         * conflicts with committed entries. Serving on would be unsafe;
         * exit non-zero so a supervisor restarts us from disk. */
        LOGE(NODE_COMP, "raft stopped, shutting down", "err=\"%s\"",
             raft_errmsg(&n->raft));
        n->exit_code = 1;
        node_stop(n);
    }
}

static void sweep_cb(uv_timer_t *t)
{
    struct node *n = t->data;
    uint64_t now = clock_mono_ns();
    leader_sweep(n, now);
    forward_sweep(n, now);
    gateway_flush(n);
}

static void signal_cb(uv_signal_t *s, int signum)
{
    struct node *n = s->data;
    LOGI(NODE_COMP, "signal received, stopping", "signal=%d", signum);
    node_stop(n);
}

int node_start(struct node *n)
{
    int rv = raft_start(&n->raft);
    if (rv != 0) {
        LOGE(NODE_COMP, "raft start failed", "err=\"%s\"",
             raft_errmsg(&n->raft));
        return -1;
    }
    n->seen_state = raft_state(&n->raft);
    n->seen_term = n->raft.current_term;
    if (gateway_listen(n) != 0 || http_listen(n) != 0 ||
        announce_start(n) != 0) {
        return -1;
    }
    uv_prepare_init(n->loop, &n->prepare);
    n->prepare.data = n;
    uv_prepare_start(&n->prepare, prepare_cb);
    uv_timer_init(n->loop, &n->sweep);
    n->sweep.data = n;
    uv_timer_start(&n->sweep, sweep_cb, 1000, 1000);
    uv_signal_init(n->loop, &n->sigint);
    uv_signal_init(n->loop, &n->sigterm);
    n->sigint.data = n->sigterm.data = n;
    uv_signal_start(&n->sigint, signal_cb, SIGINT);
    uv_signal_start(&n->sigterm, signal_cb, SIGTERM);
    n->hooks_started = true;
    LOGI(NODE_COMP, "started",
         "id=%" PRIu64 " raft=%s client=%s data=%s threshold=%u", n->cfg.id,
         n->cfg.raft_addr, n->cfg.client_addr, n->cfg.data_dir,
         n->cfg.snapshot_threshold);
    if (n->joining) {
        atomic_store(&join_cancel, false);
        n->join_work.data = n;
        uv_queue_work(n->loop, &n->join_work, join_work_cb, join_after_cb);
    }
    return 0;
}

static void on_raft_closed(struct raft *r)
{
    struct node *n = r->data;
    raft_uv_close(&n->io);
    ioguard_close(&n->guard);
    transport_close(&n->transport);
    n->raft_closed = true;
    LOGI(NODE_COMP, "raft closed", "%s", "");
}

void node_stop(struct node *n)
{
    if (n->stopping) {
        return;
    }
    n->stopping = true;
    atomic_store(&join_cancel, true);
    gateway_watch_close_all(n);
    validate_abort_all(n);
    http_close_all(n);
    gateway_close_all(n);
    leader_fail_all(n, ALLOT_ESHUTDOWN, "node is shutting down");
    forward_close(n);
    announce_stop(n);
    if (n->hooks_started) {
        uv_close((uv_handle_t *)&n->prepare, NULL);
        uv_close((uv_handle_t *)&n->sweep, NULL);
        uv_close((uv_handle_t *)&n->sigint, NULL);
        uv_close((uv_handle_t *)&n->sigterm, NULL);
    }
    raft_close(&n->raft, on_raft_closed);
}

bool node_is_ready_leader(struct node *n)
{
    return raft_state(&n->raft) == RAFT_LEADER &&
           n->ready_term == n->raft.current_term;
}
