/* source.h - where liballot's rules come from: the two rule sources.
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
 * Without gossip (source_watch.c): pull every quota (quota.ls pages) from
 * the servers given in `servers`, then watch (quota.watch) from the
 * version of the first page, forever; pull again when the watch says the
 * history after our version is gone (not_found) or the sink asks for it.
 *
 * With gossip (source_gossip.c): the member hears (V, digest)
 * announcements; when V is newer than allot_catalog_version(), the changes
 * after our version are read from a server found among the members,
 * checked against the digest, and fed to the same sink (a full read when
 * they do not match or the history is gone). The watch source is then not
 * started; the sink, the table swaps, the file on disk and every decision
 * stay as they are. */
#ifndef ALLOT_ENFORCE_SOURCE_H
#define ALLOT_ENFORCE_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "../proto/quota.h"

struct allot;
struct allot_client;
struct enf_source;

/* A blocking client for a's servers, signed with a's identity or token,
 * interruptible by a's cancel fd. 0, or ALLOT_EINVALID (bad server list,
 * unreadable identity) / ALLOT_ENOMEM with a message. */
int source_client_open(struct allot *a, int timeout_ms,
                       struct allot_client **out, char *errmsg);

/* Like source_client_open, on another server list and cancel fd (the gossip
 * source: servers found among the members, and its own kick fd). */
int source_client_open_at(struct allot *a, const char *servers, int timeout_ms,
                          int cancel_fd, struct allot_client **out,
                          char *errmsg);

/* What a catalog announcement said: the digest of every quota's (path,
 * version) at `version` (docs/gossip.md, "The catalog digest"). */
struct source_expect
{
    uint64_t version;
    uint8_t digest[QUOTA_DIGEST_SIZE];
};

/* Read every quota through c (quota.ls, page by page) and hand the set to
 * rules_replace() at the first page's catalog version (*version). 0 or the
 * client's error with a message. */
int source_pull(struct allot *a, struct allot_client *c, uint64_t *version,
                char *errmsg);

/* source_pull, but when the set is read at expect->version (expect may be
 * NULL), install it only if its digest is expect->digest: ALLOT_ECONFLICT
 * otherwise, and nothing changes. */
int source_pull_checked(struct allot *a, struct allot_client *c,
                        const struct source_expect *expect, uint64_t *version,
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

/* The gossip source (source_gossip.c): an embedded gossip member on its own
 * loop thread, and a pull thread that brings the rules up to each catalog
 * announcement, checked against its digest. Needs o->gossip_bind and
 * o->gossip_keyring (ALLOT_EINVALID otherwise). stop (a->stopping set)
 * leaves the gossip, joins both threads and frees s; NULL is ignored. */
struct enf_gossip;
struct allot_options;
int source_gossip_start(struct allot *a, const struct allot_options *o,
                        struct enf_gossip **out, char *errmsg);
void source_gossip_stop(struct enf_gossip *s);

/* The client addresses of the alive servers gossip knows ("" none). */
void source_gossip_servers(struct enf_gossip *s, char *buf, size_t cap);

#endif /* ALLOT_ENFORCE_SOURCE_H */
