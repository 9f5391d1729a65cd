/* metrics.h - allotd's counters, rendered in the Prometheus text format on
 * the HTTP API's GET /metrics (private to node/).
 *
 * Counted where every request ends (its reply), so one place sees every
 * operation, whichever path it took (local, leader, forwarded, HTTP). */
#ifndef ALLOT_NODE_METRICS_H
#define ALLOT_NODE_METRICS_H

#include <msgpack.h>
#include <stdint.h>

#include "../proto/allot_error.h"
#include "../proto/wire.h"

/* Latency histogram upper bounds, seconds. */
#define METRICS_BUCKETS 14
#define METRICS_CODES   (-ALLOT_EMIN + 1) /* 0 and every ALLOT_E... */

struct metrics
{
    uint64_t requests[WIRE_OP_COUNT][METRICS_CODES];
    uint64_t latency[WIRE_OP_COUNT][METRICS_BUCKETS + 1]; /* +Inf last */
    double latency_sum[WIRE_OP_COUNT];
    uint64_t forwarded;
    uint64_t http_requests;
};

struct node;

/* One answered request: op, result code (0 or ALLOT_E...), time taken. */
void metrics_observe(struct metrics *m, int op, int code, uint64_t ns);

/* The whole exposition into out (initialized by the caller). */
void metrics_render(struct node *n, msgpack_sbuffer *out);

#endif /* ALLOT_NODE_METRICS_H */
