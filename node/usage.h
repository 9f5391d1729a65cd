/* usage.h - the latest usage windows hosts report (usage.report, usage.ls).
 *
 * Every host running liballot sends, once per window, its pre-aggregated
 * counters per rule: admitted, rejected, shadowed, delayed, cost units and
 * peak concurrency. The leader keeps the latest USAGE_WINDOWS windows per
 * host in memory, for `allotctl usage`; nothing goes through Raft (history
 * and rightsizing are a later issue). A new leader starts empty and fills
 * within one window, since every host reports every window.
 *
 * Bounds (docs/protocol.md, "usage.report"): USAGE_HOSTS_MAX hosts (the
 * host that reported least recently is forgotten for a new one),
 * USAGE_RULES_MAX rules per report and per window, USAGE_ENTRIES_MAX rule
 * entries in all (the oldest windows are dropped to make room). */
#ifndef ALLOT_NODE_USAGE_H
#define ALLOT_NODE_USAGE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define USAGE_HOSTS_MAX   1024u
#define USAGE_WINDOWS     6u
#define USAGE_RULES_MAX   1024u
#define USAGE_ENTRIES_MAX 65536u
#define USAGE_HOST_MAX    64u /* bytes of a host name */
/* Rule entries one usage.ls reply carries at most (it stays far below a
 * 1 MiB frame); the reply says "truncated" beyond. */
#define USAGE_LS_MAX 2000u

struct usage_rule
{
    char *path; /* owned */
    uint64_t admitted, rejected, shadowed, delayed, cost, peak;
};

/* One decoded report, owned by the request that carries it. */
struct usage_report
{
    char host[USAGE_HOST_MAX + 1];
    char fleet[USAGE_HOST_MAX + 1];
    uint64_t window_start_ms;
    uint64_t window_ms;
    struct usage_rule *rules; /* owned */
    uint32_t n_rules;
};

/* Decode usage.report's args: {"host", "fleet"?, "window_start_ms",
 * "window_ms", "rules": [{"path", "admitted", "rejected", "shadowed",
 * "delayed"?, "cost", "peak"?}]}. Every field is checked (types, bounds,
 * paths, a path twice) before anything is kept: 0 with *out the caller's
 * (usage_report_free), or ALLOT_EINVALID / ALLOT_ETOO_BIG / ALLOT_ENOMEM
 * with a message and *out NULL. */
int usage_report_decode(const msgpack_object *args, struct usage_report **out,
                        char *msg);
void usage_report_free(struct usage_report *r);

struct usage_store;

int usage_store_new(struct usage_store **out);
void usage_store_free(struct usage_store *s);

/* Keep report r (its contents are moved into the store; r stays the
 * caller's to free). A report for a window the host already reported adds
 * its rules to that window (a host with many rules sends several); one
 * older than the host's oldest kept window is ignored. 0, or
 * ALLOT_ETOO_BIG when the window would exceed USAGE_RULES_MAX rules
 * (nothing kept). now_ms: when it arrived. */
int usage_store_put(struct usage_store *s, struct usage_report *r,
                    uint64_t now_ms);

/* Hosts and rule entries kept (for tests and metrics). */
size_t usage_store_hosts(const struct usage_store *s);
size_t usage_store_entries(const struct usage_store *s);

/* Pack {"hosts": [{"host", "fleet", "received_ms", "windows":
 * [{"start_ms", "window_ms", "rules": [...]}]}], "truncated"} for the rules
 * at prefix (a path and what is under it; "" for all) and, when host is not
 * NULL, that host only. */
void usage_store_pack(const struct usage_store *s, const char *prefix,
                      size_t prefix_len, const char *host, msgpack_packer *pk);

#endif /* ALLOT_NODE_USAGE_H */
