/* transport.h - the TCP transport allotd gives raft_uv.
 *
 * canonical/raft's own TCP transport (raft_uv_tcp) never sets TCP_NODELAY.
 * Raft sends small AppendEntries messages back to back; with Nagle's
 * algorithm on, a message sent while the previous one is unacknowledged
 * waits for the peer's delayed ACK (up to 40 ms on Linux), which shows up
 * directly as commit latency. This transport wraps raft_uv_tcp and turns
 * TCP_NODELAY on for every connection it accepts or makes; everything else
 * (handshake, addresses, cancellation, close) is raft_uv_tcp's. */
#ifndef ALLOT_RAFT_TRANSPORT_H
#define ALLOT_RAFT_TRANSPORT_H

#include <raft.h>
#include <raft/uv.h>

struct transport
{
    struct raft_uv_transport outer; /* hand this one to raft_uv_init() */
    struct raft_uv_transport tcp;   /* raft_uv_tcp, wrapped */
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
};

/* Set up t on loop. 0, or a raft error code (t is then not initialized). */
int transport_init(struct transport *t, struct uv_loop_s *loop);

/* Release t's memory; only after raft_uv has closed the transport (that is,
 * after raft_close()'s callback), as with raft_uv_tcp_close(). */
void transport_close(struct transport *t);

#endif /* ALLOT_RAFT_TRANSPORT_H */
