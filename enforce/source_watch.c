/* source_watch.c - the interim rule source: pull, then watch (source.h).
 *
 * Happy path: pull every quota (quota.ls pages), replace the rule set at
 * the first page's catalog version V, then watch from V; each change is
 * applied as it arrives. Pages are read at different moments, so a later
 * page may hold a quota newer than V; the watch then replays changes after
 * V, and the sink skips any change older than the rule it holds (see
 * rules.c): the result converges to the server's state.
 *
 * Failure modes:
 *   - every server down or unreachable: the client retries across the
 *     endpoints until its deadline; we back off (up to 5 s) and pull
 *     again. The rules in force (last pull, or the file on disk) stay.
 *   - the watch's node fails: the client resumes on another endpoint after
 *     the last version delivered (no gap, no repeat).
 *   - the history after our version is gone (not_found): pull again.
 *   - a change the sink cannot apply: the sink sets need_resync; we stop
 *     watching and pull again.
 *   - unauthenticated / permission denied: logged, retried with backoff
 *     (an operator may fix the principal without restarting us).
 *   - allot_close(): the cancel fd ends any wait; the thread returns. */
#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "../lib/lib.h"
#include "../proto/auth.h"
#include "../proto/client.h"
#include "../proto/wire.h"
#include "internal.h"
#include "source.h"

#define CALL_TIMEOUT_MS 5000
#define BACKOFF_MIN_MS  100
#define BACKOFF_MAX_MS  5000
#define PAGE_LIMIT      1000

struct enf_source
{
    struct allot *a;
    pthread_t thr;
    struct allot_client *c; /* interruptible by kick_fd */
    int kick_fd;            /* eventfd: stop, or drop everything and pull */
};

static int client_open(struct allot *a, const char *servers, int timeout_ms,
                       int cancel_fd, struct allot_client **out, char *errmsg)
{
    struct allot_client *c;
    int rv = allot_client_open(servers, timeout_ms, &c, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (a->identity != NULL) {
        struct auth_identity id;
        rv = auth_identity_load(a->identity, &id, errmsg);
        if (rv != 0) {
            allot_client_close(c);
            return rv;
        }
        allot_client_set_identity(c, &id);
        sodium_memzero(&id, sizeof id);
    } else if (a->token != NULL) {
        allot_client_set_token(c, a->token);
    }
    allot_client_set_cancel_fd(c, cancel_fd);
    *out = c;
    return 0;
}

int source_client_open(struct allot *a, int timeout_ms,
                       struct allot_client **out, char *errmsg)
{
    return client_open(a, a->servers, timeout_ms, a->cancel_fd, out, errmsg);
}

int source_client_open_at(struct allot *a, const char *servers, int timeout_ms,
                          int cancel_fd, struct allot_client **out,
                          char *errmsg)
{
    return client_open(a, servers, timeout_ms, cancel_fd, out, errmsg);
}

/* After a kick: a fresh client (a cancelled one stays cancelled). */
static void renew_client(struct enf_source *s)
{
    uint64_t v;
    ssize_t r = read(s->kick_fd, &v, sizeof v);
    (void)r; /* EAGAIN when nothing was pending: fine */
    char msg[ALLOT_ERRMSG_SIZE];
    struct allot_client *c;
    if (client_open(s->a, s->a->servers, CALL_TIMEOUT_MS, s->kick_fd, &c,
                    msg) == 0) {
        allot_client_close(s->c);
        s->c = c;
    }
}

struct page_args
{
    const char *after;
};

static void pack_page(msgpack_packer *pk, void *arg)
{
    const struct page_args *pa = arg;
    msgpack_pack_map(pk, pa->after != NULL ? 3 : 2);
    wire_pack_kv_str(pk, "prefix", "");
    wire_pack_kv_u64(pk, "limit", PAGE_LIMIT);
    if (pa->after != NULL) {
        wire_pack_kv_str(pk, "after", pa->after);
    }
}

int source_pull(struct allot *a, struct allot_client *c, uint64_t *version,
                char *errmsg)
{
    return source_pull_checked(a, c, NULL, version, errmsg);
}

int source_pull_checked(struct allot *a, struct allot_client *c,
                        const struct source_expect *expect, uint64_t *version,
                        char *errmsg)
{
    struct quota *qs = NULL;
    size_t n = 0, cap = 0;
    char after[QUOTA_PATH_MAX + 1] = "";
    bool first = true;
    int rv = 0;
    for (;;) {
        struct page_args pa = {.after = first ? NULL : after};
        struct allot_reply rep;
        rv = allot_client_call(c, "quota.ls", pack_page, &pa, &rep);
        if (rv != 0) {
            allot_errf(errmsg, rv, "quota.ls: %s", rep.message);
            allot_reply_destroy(&rep);
            goto out;
        }
        uint64_t v;
        bool more = false;
        const msgpack_object *list = wire_map_get(rep.result, "quotas");
        rv = wire_get_u64(rep.result, "catalog_version", true, &v, errmsg);
        if (rv == 0) {
            rv = wire_get_bool(rep.result, "more", false, &more, errmsg);
            rv = rv == ALLOT_ENOT_FOUND ? 0 : rv;
        }
        if (rv == 0 && (list == NULL || list->type != MSGPACK_OBJECT_ARRAY)) {
            rv = allot_errf(errmsg, ALLOT_EPROTOCOL, "quota.ls: no quotas");
        }
        if (rv == 0 && first) {
            *version = v;
        }
        for (uint32_t i = 0; rv == 0 && i < list->via.array.size; i++) {
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 256;
                struct quota *nq = realloc(qs, ncap * sizeof *nq);
                if (nq == NULL) {
                    rv = allot_errf(errmsg, ALLOT_ENOMEM, "out of memory");
                    break;
                }
                qs = nq;
                cap = ncap;
            }
            rv = quota_unpack(&list->via.array.ptr[i], &qs[n], errmsg);
            if (rv != 0) {
                quota_free(&qs[n]);
                break;
            }
            snprintf(after, sizeof after, "%s", qs[n].path);
            n++;
        }
        allot_reply_destroy(&rep);
        if (rv != 0) {
            goto out;
        }
        first = false;
        if (!more) {
            break;
        }
    }
    if (expect != NULL && expect->version == *version) {
        /* A set read at the announced version must hash to the announced
         * digest; one read at another version cannot be compared here (the
         * announcement of its own version checks it later). */
        uint8_t d[QUOTA_DIGEST_SIZE] = {0};
        for (size_t i = 0; i < n; i++) {
            quota_digest_toggle(d, qs[i].path, strlen(qs[i].path),
                                qs[i].version);
        }
        if (memcmp(d, expect->digest, sizeof d) != 0) {
            rv = allot_errf(errmsg, ALLOT_ECONFLICT,
                            "rules read at version %llu do not match the "
                            "announced digest",
                            (unsigned long long)*version);
            goto out;
        }
    }
    rv = rules_replace(a, qs, n, *version, false);
    if (rv == 0) {
        atomic_fetch_add(&a->pulls, 1);
        rules_confirm(a, *version);
    } else {
        allot_errf(errmsg, rv, "rule set not installed");
    }
out:
    for (size_t i = 0; i < n; i++) {
        quota_free(&qs[i]);
    }
    free(qs);
    return rv;
}

int source_probe(struct allot_client *c, uint64_t *server_version)
{
    struct allot_reply rep;
    int rv = allot_client_call(c, "cluster.status", NULL, NULL, &rep);
    if (rv == 0) {
        char msg[ALLOT_ERRMSG_SIZE];
        rv = wire_get_u64(rep.result, "catalog_version", true, server_version,
                          msg);
    }
    allot_reply_destroy(&rep);
    return rv;
}

struct watch_ctx
{
    struct allot *a;
    bool resync;
};

static int on_change(void *arg, const msgpack_object *change)
{
    struct watch_ctx *w = arg;
    struct allot *a = w->a;
    char msg[ALLOT_ERRMSG_SIZE];
    int rv = rules_apply_change(a, change, msg);
    if (rv != 0) {
        LOGW("enforce", "change not applied; reading every rule again",
             "err=%s msg=\"%s\"", allot_error_name(rv), msg);
        w->resync = true;
        return 1;
    }
    pthread_mutex_lock(&a->mu);
    w->resync = a->need_resync;
    pthread_mutex_unlock(&a->mu);
    return w->resync || atomic_load(&a->stopping) ? 1 : 0;
}

static void backoff_wait(struct allot *a, int *backoff_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)*backoff_ms * 1000000u;
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    pthread_mutex_lock(&a->mu);
    while (!atomic_load(&a->stopping)) {
        if (pthread_cond_timedwait(&a->cv, &a->mu, &ts) == ETIMEDOUT) {
            break;
        }
    }
    pthread_mutex_unlock(&a->mu);
    *backoff_ms =
        *backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : *backoff_ms * 2;
}

static void *source_main(void *arg)
{
    struct enf_source *s = arg;
    struct allot *a = s->a;
    int backoff = BACKOFF_MIN_MS;
    bool pulled = false;
    uint64_t version = 0;
    while (!atomic_load(&a->stopping)) {
        char msg[ALLOT_ERRMSG_SIZE];
        if (!pulled) {
            int rv = source_pull(a, s->c, &version, msg);
            if (rv == ALLOT_ESHUTDOWN && !atomic_load(&a->stopping)) {
                renew_client(s); /* kicked */
                continue;
            }
            if (rv != 0) {
                if (!atomic_load(&a->stopping)) {
                    LOGW("enforce",
                         "cannot read the rules; keeping those in force",
                         "err=%s msg=\"%s\" retry_ms=%d", allot_error_name(rv),
                         msg, backoff);
                    backoff_wait(a, &backoff);
                }
                continue;
            }
            LOGI("enforce", "rules read", "version=%llu",
                 (unsigned long long)version);
            pulled = true;
            backoff = BACKOFF_MIN_MS;
        }
        struct watch_ctx w = {.a = a};
        struct allot_reply rep;
        uint64_t from = version;
        int rv =
            allot_client_watch(s->c, "", &from, on_change, &w, &version, &rep);
        if (rv == ALLOT_ESHUTDOWN && !atomic_load(&a->stopping)) {
            renew_client(s); /* kicked: read everything again */
            atomic_fetch_add(&a->resyncs, 1);
            pulled = false;
        } else if (rv == ALLOT_ENOT_FOUND) {
            LOGW("enforce", "watch history gone; reading every rule again",
                 "msg=\"%s\"", rep.message);
            atomic_fetch_add(&a->resyncs, 1);
            pulled = false;
        } else if (rv == 0 && w.resync) {
            atomic_fetch_add(&a->resyncs, 1);
            pulled = false;
        } else if (rv != 0 && !atomic_load(&a->stopping)) {
            LOGW("enforce", "watch failed", "err=%s msg=\"%s\"",
                 allot_error_name(rv), rep.message);
            backoff_wait(a, &backoff);
        }
        allot_reply_destroy(&rep);
    }
    return NULL;
}

int source_watch_start(struct allot *a, struct enf_source **out, char *errmsg)
{
    struct enf_source *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return allot_errf(errmsg, ALLOT_ENOMEM, "out of memory");
    }
    s->a = a;
    s->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->kick_fd < 0) {
        free(s);
        return allot_errf(errmsg, ALLOT_ENOMEM, "eventfd: %s", strerror(errno));
    }
    int rv =
        client_open(a, a->servers, CALL_TIMEOUT_MS, s->kick_fd, &s->c, errmsg);
    if (rv != 0) {
        goto err_after_fd;
    }
    if (pthread_create(&s->thr, NULL, source_main, s) != 0) {
        rv = allot_errf(errmsg, ALLOT_ENOMEM, "cannot start a thread");
        goto err_after_client;
    }
    *out = s;
    return 0;

err_after_client:
    allot_client_close(s->c);
err_after_fd:
    close(s->kick_fd);
    free(s);
    return rv;
}

void source_watch_kick(struct enf_source *s)
{
    if (s != NULL) {
        uint64_t one = 1;
        ssize_t w = write(s->kick_fd, &one, sizeof one);
        (void)w; /* cannot fail short of 2^64 - 1 pending kicks */
    }
}

void source_watch_stop(struct enf_source *s)
{
    if (s == NULL) {
        return;
    }
    source_watch_kick(s); /* a->stopping is set: the thread returns */
    pthread_join(s->thr, NULL);
    allot_client_close(s->c);
    close(s->kick_fd);
    free(s);
}
