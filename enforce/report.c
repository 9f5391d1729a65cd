/* report.c - usage windows sent to the servers (usage.report).
 *
 * Happy path: each time the housekeeping thread closes a usage window, the
 * rules with any activity in it are sent, with this host's name and fleet,
 * to one server (found by gossip, else the static `servers`), in reports of
 * at most REPORT_RULES rules; the server keeps the latest windows per host
 * (docs/protocol.md, "usage.report").
 *
 * Failure modes: no server known, none reachable, or a refusal: the window
 * is counted in usage_errors and logged (once per failure streak), and not
 * sent again; counters stay available locally (allot_rule_stats). Sending
 * blocks only the housekeeping thread, at most REPORT_TIMEOUT_MS per
 * server; decisions never wait for it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../lib/lib.h"
#include "../proto/client.h"
#include "../proto/wire.h"
#include "internal.h"
#include "source.h"

#define REPORT_TIMEOUT_MS 2000
/* The server's bound per report (node/usage.h, USAGE_RULES_MAX). */
#define REPORT_RULES 1024u

void report_default_host(char *out, size_t cap)
{
    char host[48];
    if (gethostname(host, sizeof host) != 0) {
        snprintf(host, sizeof host, "host");
    }
    host[sizeof host - 1] = '\0';
    for (char *p = host; *p != '\0'; p++) {
        if (*p <= 0x20 || *p > 0x7e) {
            *p = '_'; /* names travel as printable ASCII */
        }
    }
    snprintf(out, cap, "%s", host);
}

struct report_rule
{
    const char *path; /* the handle's: lives until allot_close */
    struct allot_usage u;
};

struct report_args
{
    const struct allot *a;
    uint64_t start_ms;
    const struct report_rule *rules;
    size_t n;
};

static void pack_report(msgpack_packer *pk, void *arg)
{
    const struct report_args *r = arg;
    msgpack_pack_map(pk, 5);
    wire_pack_kv_str(pk, "host", r->a->host_name);
    wire_pack_kv_str(pk, "fleet", r->a->fleet);
    wire_pack_kv_u64(pk, "window_start_ms", r->start_ms);
    wire_pack_kv_u64(pk, "window_ms", r->a->window_ms);
    wire_pack_str(pk, "rules");
    msgpack_pack_array(pk, (uint32_t)r->n);
    for (size_t i = 0; i < r->n; i++) {
        const struct allot_usage *u = &r->rules[i].u;
        msgpack_pack_map(pk, 7);
        wire_pack_kv_str(pk, "path", r->rules[i].path);
        wire_pack_usage(pk, u->admitted, u->rejected, u->shadowed, u->delayed,
                        u->cost, u->peak);
    }
}

/* The rules with any activity in the last complete window. */
static int collect(struct allot *a, struct report_rule **out, size_t *n,
                   uint64_t *start_ms)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&a->mu);
    pthread_mutex_lock(&a->stats_mu);
    *start_ms = a->win_last_start_ms;
    struct report_rule *rs =
        a->n_handles > 0 ? malloc(a->n_handles * sizeof *rs) : NULL;
    int rv = a->n_handles > 0 && rs == NULL ? ALLOT_ENOMEM : 0;
    for (uint32_t i = 0; rv == 0 && i < a->n_handles; i++) {
        const struct allot_rule *r = a->handles[i];
        const struct allot_usage *u = &r->win_last;
        if (u->admitted | u->rejected | u->shadowed | u->delayed | u->cost |
            u->peak) {
            rs[*n] = (struct report_rule){.path = r->path, .u = *u};
            (*n)++;
        }
    }
    pthread_mutex_unlock(&a->stats_mu);
    pthread_mutex_unlock(&a->mu);
    *out = rs;
    return rv;
}

int report_usage(struct allot *a, char *errmsg)
{
    char servers[1024];
    source_gossip_servers(a->gossip, servers, sizeof servers);
    if (servers[0] == '\0' && a->servers != NULL) {
        snprintf(servers, sizeof servers, "%s", a->servers);
    }
    struct report_rule *rs;
    size_t n;
    uint64_t start_ms;
    int rv = collect(a, &rs, &n, &start_ms);
    if (rv != 0 || n == 0 || start_ms == 0) {
        free(rs);
        return rv != 0 ? allot_errf(errmsg, rv, "out of memory") : 0;
    }
    if (servers[0] == '\0') {
        free(rs);
        return allot_errf(errmsg, ALLOT_EUNAVAILABLE, "no server known");
    }
    struct allot_client *c = NULL;
    rv = source_client_open_at(a, servers, REPORT_TIMEOUT_MS, a->cancel_fd, &c,
                               errmsg);
    int sent = 0;
    for (size_t at = 0; rv == 0 && at < n; at += REPORT_RULES) {
        struct report_args ra = {.a = a,
                                 .start_ms = start_ms,
                                 .rules = rs + at,
                                 .n = n - at < REPORT_RULES ? n - at
                                                            : REPORT_RULES};
        struct allot_reply rep;
        rv = allot_client_call(c, "usage.report", pack_report, &ra, &rep);
        if (rv != 0) {
            allot_errf(errmsg, rv, "usage.report: %s", rep.message);
        } else {
            sent++;
        }
        allot_reply_destroy(&rep);
    }
    if (c != NULL) {
        allot_client_close(c);
    }
    free(rs);
    return rv != 0 ? rv : sent;
}
