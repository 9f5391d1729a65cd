/* source.h - where liballot's rules come from: the seam for gossip.
 *
 * A rule source runs on its own thread and feeds the sink in internal.h:
 *
 *   rules_replace(a, quotas, n, version)  a whole rule set (a full pull)
 *   rules_apply_change(a, record)         one change, in version order
 *   rules_confirm(a, server_version)      "the catalog is at V" (staleness)
 *
 * and reads a->need_resync (under a->mu) to learn that the sink could not
 * apply something and wants a full pull. Nothing else of liballot knows
 * which source runs.
 *
 * Today's source (source_watch.c), until the gossip member exists: pull
 * every quota (quota.ls pages) from the servers given in `servers`, then
 * watch (quota.watch) from the version of the first page, forever; pull
 * again when the watch says the history after our version is gone
 * (not_found) or the sink asks for it.
 *
 * Later (gossip): the member hears (V, digest) announcements; when V is
 * newer than allot_catalog_version(), it calls source_pull() (or a delta
 * read from a server or a peer) and feeds the same sink. The watch source
 * is then not started; the sink, the table swaps, the file on disk and
 * every decision stay as they are. */
#ifndef ALLOT_ENFORCE_SOURCE_H
#define ALLOT_ENFORCE_SOURCE_H

#include <stdint.h>

struct allot;
struct allot_client;
struct enf_source;

/* A blocking client for a's servers, signed with a's identity or token,
 * interruptible by a's cancel fd. 0, or ALLOT_EINVALID (bad server list,
 * unreadable identity) / ALLOT_ENOMEM with a message. */
int source_client_open(struct allot *a, int timeout_ms,
                       struct allot_client **out, char *errmsg);

/* Read every quota through c (quota.ls, page by page) and hand the set to
 * rules_replace() at the first page's catalog version (*version). 0 or the
 * client's error with a message. */
int source_pull(struct allot *a, struct allot_client *c, uint64_t *version,
                char *errmsg);

/* Ask one server its catalog version (cluster.status): 0 or an error. */
int source_probe(struct allot_client *c, uint64_t *server_version);

/* Start and stop the pull-and-watch source on its own thread. stop ends the
 * thread (a->stopping must be set) and frees s. */
int source_watch_start(struct allot *a, struct enf_source **out, char *errmsg);
void source_watch_stop(struct enf_source *s);

/* Make the source drop its connection and pull everything again (the house
 * thread's remedy for a watch that stays behind). NULL is ignored. */
void source_watch_kick(struct enf_source *s);

#endif /* ALLOT_ENFORCE_SOURCE_H */
