/* sim.h - a deterministic in-memory io for gossip tests (private).
 *
 * Many members in one process, one virtual clock, one fake network: every
 * datagram, stream message and timer is an event in one queue, processed
 * in time order (ties in the order they were queued). The protocol code is
 * the real one, behind the same struct gossip_io the libuv io implements;
 * only time and the network are simulated. With the same seed, a run is
 * the same run: every random choice the core makes comes from a per-node
 * generator seeded from the simulation's seed.
 *
 * The network: each datagram is lost with the configured probability
 * (global, or per directed link) and arrives after a latency drawn
 * uniformly from [lat_min, lat_max] ms. Streams are not lost, only cut by
 * partitions and by a dead or paused receiver. Nodes in different partition
 * groups cannot reach each other at all. A paused node keeps its state but
 * runs no timers and drops what arrives (a stopped process whose socket
 * buffer overflowed); its timers fire late when it resumes. */
#ifndef ALLOT_GOSSIP_SIM_H
#define ALLOT_GOSSIP_SIM_H

#include <stdbool.h>
#include <stdint.h>

#include "gossip.h"

struct sim;

struct sim_stats
{
    uint64_t events;
    uint64_t packets;     /* datagrams sent */
    uint64_t delivered;   /* datagrams and streams delivered */
    uint64_t lost;        /* dropped by loss */
    uint64_t cut;         /* dropped by a partition */
    uint64_t unreachable; /* to a dead, paused or unknown node */
    uint64_t streams;
};

/* A simulation with no nodes, at virtual time 0. NULL when out of memory. */
struct sim *sim_new(uint64_t seed);
/* Free every node's gossip and the simulation. */
void sim_free(struct sim *s);

/* Add a node (not running yet); returns its index. Node i's address is
 * 10.0.(i/256).(i%256):7946. -1 when out of memory. */
int sim_add(struct sim *s);
int sim_count(const struct sim *s);
struct gossip_addr sim_addr(const struct sim *s, int i);

/* Start a member on node i with cfg (cfg->addr is set to the node's).
 * Returns gossip_new()'s result. */
int sim_start(struct sim *s, int i, struct gossip_config *cfg);
/* Make every running node know every other running node alive, as in a
 * fleet that converged long ago: nothing is sent and no news is queued;
 * each member's application hears GOSSIP_EV_JOIN for each of the others.
 * For scenarios that begin from a settled fleet (a real join of 10,000
 * members at once costs O(N^2) messages before the scenario starts).
 * 0, or ALLOT_ENOMEM. */
int sim_warm(struct sim *s);
/* Crash node i: its gossip is freed without a word to anyone. */
void sim_kill(struct sim *s, int i);
/* NULL when node i is not running. */
struct gossip *sim_gossip(struct sim *s, int i);
/* Stop node i's processing for ms of virtual time. */
void sim_pause(struct sim *s, int i, uint64_t ms);

void sim_set_loss(struct sim *s, double loss);
void sim_set_latency(struct sim *s, uint32_t min_ms, uint32_t max_ms);
/* Loss on the directed link from -> to (1.0 cuts it), instead of the
 * global one. */
int sim_set_link_loss(struct sim *s, int from, int to, double loss);
/* Put node i in partition group grp (all start in 0). */
void sim_set_group(struct sim *s, int i, int grp);
/* Every node back in group 0. */
void sim_heal(struct sim *s);

uint64_t sim_now(const struct sim *s);
void sim_run_until(struct sim *s, uint64_t t);
void sim_run_for(struct sim *s, uint64_t ms);
/* Run until pred(s, data) holds, checked every step_ms, for at most
 * max_ms. true when it held (the time is sim_now()). */
bool sim_run_until_true(struct sim *s, uint64_t max_ms, uint64_t step_ms,
                        bool (*pred)(struct sim *s, void *data), void *data);

/* A sim_run_until_true() predicate: every running member sees exactly the
 * running members alive, and none suspect (data unused). */
bool sim_all_alive(struct sim *s, void *data);

void sim_stats(const struct sim *s, struct sim_stats *out);

#endif /* ALLOT_GOSSIP_SIM_H */
