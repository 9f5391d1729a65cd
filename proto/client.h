/* client.h - a blocking client for allot's msgpack protocol.
 *
 * Used by allotctl, the tests and the fault-injection workloads. It talks to
 * any node (nodes forward to the leader themselves); when a node is down,
 * times out or answers `unavailable`, the client moves to the next endpoint
 * and retries with backoff until its deadline. Writes carry a client id and
 * a sequence number that stay the same across retries, so the cluster
 * applies a retried write once.
 *
 * Not thread-safe: one client per thread. */
#ifndef ALLOT_CLIENT_H
#define ALLOT_CLIENT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "allot_error.h"

/* Used when neither --endpoints nor ALLOT_ENDPOINTS is given: the local
 * cluster that `node/local-cluster` starts. */
#define ALLOT_DEFAULT_ENDPOINTS    "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
#define ALLOT_CLIENT_ENDPOINTS_MAX 16

struct allot_client;

/* endpoints: "HOST:PORT,..." (1..16). timeout_ms: total time one call may
 * take, retries included. Returns 0 or ALLOT_EINVALID/ALLOT_ENOMEM with a
 * message. The client is the caller's; free it with allot_client_close(). */
int allot_client_open(const char *endpoints, int timeout_ms,
                      struct allot_client **out, char *errmsg);
void allot_client_close(struct allot_client *c);

struct auth_identity;
/* Sign every request from now on with id (copied; the caller may wipe its
 * own copy). Each attempt is signed afresh: a retry carries a new nonce. */
void allot_client_set_identity(struct allot_client *c,
                               const struct auth_identity *id);

/* Send a bearer token (allotctl token create) with every request instead
 * of signing. Copied; at most 128 characters. */
void allot_client_set_token(struct allot_client *c, const char *token);

/* Per-call deadline (ms); also bounds connect and each read. */
void allot_client_set_timeout(struct allot_client *c, int timeout_ms);

/* Make the client interruptible from another thread: once fd becomes
 * readable (an eventfd or the read end of a pipe that someone writes to),
 * every wait inside a call or a watch ends, and the call in progress and
 * every later one return ALLOT_ESHUTDOWN ("cancelled"). The fd stays the
 * caller's. -1 (the default) turns this off. Used by liballot to stop its
 * background watch at allot_close(); a client without it behaves exactly
 * as before. */
void allot_client_set_cancel_fd(struct allot_client *c, int fd);

/* Endpoint the last reply came from ("127.0.0.1:7001"). */
const char *allot_client_endpoint(const struct allot_client *c);

/* A reply. `result` points into `u` and lives until allot_reply_destroy(). */
struct allot_reply
{
    msgpack_unpacked u;
    int code; /* 0 or ALLOT_E... */
    char message[ALLOT_ERRMSG_SIZE];
    const msgpack_object *result; /* NULL on error */
};

/* Packs the "args" value (a map) of a request. */
typedef void (*allot_pack_fn)(msgpack_packer *pk, void *arg);

/* Send op with args (pack may be NULL for no args) and wait for the reply,
 * retrying across endpoints as described above. Returns rep->code. On
 * return the reply must be destroyed with allot_reply_destroy(), whatever
 * the code. A write that ran out of time returns ALLOT_ETIMEOUT: it may or
 * may not have been applied. */
int allot_client_call(struct allot_client *c, const char *op,
                      allot_pack_fn pack, void *arg, struct allot_reply *rep);

void allot_reply_destroy(struct allot_reply *rep);

/* Called for each change (an audit record map: version, time_ms, principal,
 * op, path, old, new). Return non-zero to stop watching. */
typedef int (*allot_watch_cb)(void *arg, const msgpack_object *change);

/* Stream the changes under prefix after *from_version (NULL: from now), in
 * order. When the node fails or closes, the watch resumes on the next
 * endpoint after the last version delivered, so no change is missed or
 * repeated. Returns 0 when cb asked to stop, or an error code (in rep, to
 * destroy with allot_reply_destroy): ALLOT_ENOT_FOUND when the changes
 * after the cursor are no longer kept. *version, if not NULL, tracks the
 * last version seen. It never returns otherwise. */
int allot_client_watch(struct allot_client *c, const char *prefix,
                       const uint64_t *from_version, allot_watch_cb cb,
                       void *arg, uint64_t *version, struct allot_reply *rep);

#endif /* ALLOT_CLIENT_H */
