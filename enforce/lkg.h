/* lkg.h - the last-known-good rules in data_dir.
 *
 * The file `rules.lkg` holds the whole rule set a host last received, so a
 * host restarted while every server is down enforces those rules from its
 * first decision. Layout:
 *
 *   "ALLOTLKG"  8 bytes, the format (version 1)
 *   digest      32 bytes, BLAKE2b-256 of the body
 *   body        one msgpack map: {"format": 1, "catalog_version": u64,
 *               "saved_ms": u64, "quotas": [quota maps as quota_pack()]}
 *
 * Written as `rules.lkg.tmp`, fsync'd, renamed over `rules.lkg`, then the
 * directory is fsync'd: a crash leaves the old file or the new one, never
 * a mix. A file that fails its digest or does not decode is renamed
 * `rules.lkg.bad` and ignored (logged): starting with no rules is better
 * than enforcing garbage. */
#ifndef ALLOT_ENFORCE_LKG_H
#define ALLOT_ENFORCE_LKG_H

#include <stddef.h>
#include <stdint.h>

#include "../proto/quota.h"

#define LKG_FILE     "rules.lkg"
#define LKG_MAX_SIZE (512u << 20) /* refuse to read anything larger */

/* Write the file from `quotas`, the msgpack array of quota maps (what
 * rules_pack_for_disk() makes). 0, or ALLOT_EIO with a message. */
int lkg_save(const char *dir, const char *quotas, size_t quotas_len,
             uint64_t version, uint64_t saved_ms, char *errmsg);

/* The loaded rule set, owned: free with lkg_free(). */
struct lkg_doc
{
    struct quota *quotas;
    size_t n;
    uint64_t version;
    uint64_t saved_ms;
};

/* 0 and *doc filled; ALLOT_ENOT_FOUND when there is no file; ALLOT_EIO or
 * ALLOT_EPROTOCOL (with a message) when it is unreadable or corrupt (the
 * file is then moved aside). */
int lkg_load(const char *dir, struct lkg_doc *doc, char *errmsg);
void lkg_free(struct lkg_doc *doc);

#endif /* ALLOT_ENFORCE_LKG_H */
