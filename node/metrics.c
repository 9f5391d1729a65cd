/* metrics.c - counters and the Prometheus text exposition (metrics.h).
 *
 * Names follow Prometheus conventions so `promtool check metrics` accepts
 * them: a unit suffix (_seconds), _total on counters, one HELP and TYPE per
 * family, labels in snake_case. */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "node.h"

static const double bucket_le[METRICS_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};

void metrics_observe(struct metrics *m, int op, int code, uint64_t ns)
{
    if (op <= 0 || op >= WIRE_OP_COUNT || code > 0 || code < ALLOT_EMIN) {
        return;
    }
    double s = (double)ns / 1e9;
    m->requests[op][-code]++;
    m->latency_sum[op] += s;
    unsigned b = 0;
    while (b < METRICS_BUCKETS && s > bucket_le[b]) {
        b++;
    }
    m->latency[op][b]++;
}

static void out(msgpack_sbuffer *sb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void out(msgpack_sbuffer *sb, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0) {
        msgpack_sbuffer_write(
            sb, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    }
}

static void family(msgpack_sbuffer *sb, const char *name, const char *type,
                   const char *help)
{
    out(sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(msgpack_sbuffer *sb, const char *name, const char *help,
                  double v)
{
    family(sb, name, "gauge", help);
    out(sb, "%s %.17g\n", name, v);
}

void metrics_render(struct node *n, msgpack_sbuffer *sb)
{
    const struct metrics *m = &n->metrics;
    struct raft *r = &n->raft;
    static const char *const states[] = {"unavailable", "follower", "candidate",
                                         "leader"};
    int state = raft_state(r);

    family(sb, "allot_raft_state", "gauge",
           "1 for this node's current Raft role, 0 for the others.");
    for (int i = 0; i < 4; i++) {
        out(sb, "allot_raft_state{state=\"%s\"} %d\n", states[i],
            i == state ? 1 : 0);
    }
    gauge(sb, "allot_raft_term", "Current Raft term.", (double)r->current_term);
    gauge(sb, "allot_raft_commit_index", "Highest log index known committed.",
          (double)r->commit_index);
    gauge(sb, "allot_raft_applied_index",
          "Highest log index applied to the state machine.",
          (double)raft_last_applied(r));
    gauge(sb, "allot_raft_last_index", "Index of the last log entry.",
          (double)raft_last_index(r));
    gauge(sb, "allot_leader_ready",
          "1 when this node leads and its own-term entry is applied.",
          node_is_ready_leader(n) ? 1 : 0);
    gauge(sb, "allot_catalog_version", "Catalog version applied here.",
          (double)fsm_catalog_version(n->fsm));
    gauge(sb, "allot_quotas", "Quotas in the catalog.",
          (double)fsm_quota_count(n->fsm));
    gauge(sb, "allot_client_sessions",
          "Client sessions remembered for exactly-once writes.",
          (double)fsm_session_count(n->fsm));

    struct fsm_stats st = fsm_stats(n->fsm);
    family(sb, "allot_snapshots_total", "counter",
           "Snapshots of the state machine taken by this node.");
    out(sb, "allot_snapshots_total %llu\n", (unsigned long long)st.snapshots);
    family(sb, "allot_snapshot_seconds_total", "counter",
           "Time spent encoding snapshots, on the event loop.");
    out(sb, "allot_snapshot_seconds_total %.9f\n",
        (double)st.snapshot_ns / 1e9);
    gauge(sb, "allot_snapshot_last_seconds",
          "Time the last snapshot took to encode.",
          (double)st.last_snapshot_ns / 1e9);
    family(sb, "allot_restores_total", "counter",
           "Snapshots restored into the state machine.");
    out(sb, "allot_restores_total %llu\n", (unsigned long long)st.restores);

    family(sb, "allot_forwarded_requests_total", "counter",
           "Requests this node forwarded to the leader.");
    out(sb, "allot_forwarded_requests_total %llu\n",
        (unsigned long long)m->forwarded);
    family(sb, "allot_http_requests_total", "counter",
           "HTTP requests received.");
    out(sb, "allot_http_requests_total %llu\n",
        (unsigned long long)m->http_requests);

    family(sb, "allot_requests_total", "counter",
           "Requests answered, by operation and result.");
    uint64_t rejected = 0;
    for (int op = 1; op < WIRE_OP_COUNT; op++) {
        for (int c = 0; c < METRICS_CODES; c++) {
            uint64_t v = m->requests[op][c];
            if (v == 0) {
                continue;
            }
            out(sb, "allot_requests_total{op=\"%s\",result=\"%s\"} %llu\n",
                wire_op_name((enum wire_op)op), allot_error_name(-c),
                (unsigned long long)v);
            if (-c == ALLOT_EVALIDATION_FAILED) {
                rejected += v;
            }
        }
    }
    family(sb, "allot_validation_rejections_total", "counter",
           "Changes refused by a validation rule.");
    out(sb, "allot_validation_rejections_total %llu\n",
        (unsigned long long)rejected);

    family(sb, "allot_request_duration_seconds", "histogram",
           "Time from a request's arrival to its reply, by operation.");
    for (int op = 1; op < WIRE_OP_COUNT; op++) {
        uint64_t count = 0;
        for (int b = 0; b <= METRICS_BUCKETS; b++) {
            count += m->latency[op][b];
        }
        if (count == 0) {
            continue;
        }
        const char *name = wire_op_name((enum wire_op)op);
        uint64_t cum = 0;
        for (int b = 0; b < METRICS_BUCKETS; b++) {
            cum += m->latency[op][b];
            out(sb,
                "allot_request_duration_seconds_bucket{op=\"%s\",le=\"%g\"} "
                "%llu\n",
                name, bucket_le[b], (unsigned long long)cum);
        }
        out(sb,
            "allot_request_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} "
            "%llu\n",
            name, (unsigned long long)count);
        out(sb, "allot_request_duration_seconds_sum{op=\"%s\"} %.9f\n", name,
            m->latency_sum[op]);
        out(sb, "allot_request_duration_seconds_count{op=\"%s\"} %llu\n", name,
            (unsigned long long)count);
    }
}
