/* access.h - principals, groups and the ownership rule (private to raft/).
 *
 * Principals (a name, an Ed25519 public key, an admin flag) and groups (a
 * name and member principal names) are replicated state, kept in snapshots.
 * The rule the state machine applies to every change:
 *
 *   - the empty principal means the cluster runs --insecure: allowed;
 *   - an admin may do anything;
 *   - a quota may be changed or removed (and its owners changed) by an owner
 *     of the quota or of any ancestor; "user:NAME" names a principal,
 *     "group:NAME" every member of the group;
 *   - a new quota needs an owner of its parent (or an ancestor); a new
 *     top-level quota needs an admin;
 *   - cluster-wide settings, principals and groups need an admin.
 *
 * Deciding at apply time, on replicated state, means every replica reaches
 * the same verdict and a permission cannot change between check and use. */
#ifndef ALLOT_RAFT_ACCESS_H
#define ALLOT_RAFT_ACCESS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "../proto/auth.h"
/* Last: it defines __unused for the BSD tree macros. */
#include "catalog.h"

#define ACCESS_GROUP_MEMBERS_MAX 1024
#define ACCESS_PRINCIPALS_MAX    65536
#define ACCESS_GROUPS_MAX        65536

struct principal
{
    RB_ENTRY(principal) link;
    char name[AUTH_NAME_MAX + 1];
    unsigned char pk[AUTH_PUBKEY_LEN];
    bool admin;
};

struct group
{
    RB_ENTRY(group) link;
    char name[AUTH_NAME_MAX + 1];
    char **members; /* sorted, owned */
    uint32_t n;
};

/* A bearer token: only its BLAKE2b-256 hash is kept. Its id, shown and
 * used to revoke it, is the first 8 bytes of the hash in hex. */
#define ACCESS_TOKEN_HASH_LEN 32
#define ACCESS_TOKEN_ID_LEN   8
#define ACCESS_TOKENS_MAX     65536

struct token
{
    RB_ENTRY(token) link;
    unsigned char hash[ACCESS_TOKEN_HASH_LEN];
    char principal[AUTH_NAME_MAX + 1];
    uint64_t created_ms;
    uint64_t expires_ms;
};

RB_HEAD(principal_tree, principal);
RB_HEAD(group_tree, group);
RB_HEAD(token_tree, token);

struct access
{
    struct principal_tree principals;
    struct group_tree groups;
    struct token_tree tokens;
    uint32_t n_principals;
    uint32_t n_groups;
    uint32_t n_tokens;
};

void access_init(struct access *a);
void access_free(struct access *a);

const struct principal *access_principal(const struct access *a,
                                         const char *name);
bool access_is_admin(const struct access *a, const char *principal);

/* Add a principal. ALLOT_EEXISTS if the name is taken, ALLOT_EINVALID for a
 * bad name. */
int access_add_principal(struct access *a, const char *name,
                         const unsigned char pk[AUTH_PUBKEY_LEN], bool admin,
                         char *msg);
int access_rm_principal(struct access *a, const char *name, char *msg);

/* Create the group or add members to it (duplicates ignored). */
int access_group_add(struct access *a, const char *name,
                     const char *const *members, uint32_t n, char *msg);
int access_group_rm(struct access *a, const char *name, char *msg);

/* May principal change the quota at path (existing or to be created)?
 * 0, or ALLOT_EPERMISSION_DENIED naming the principal, the path and who
 * could. */
int access_may_change(const struct access *a, const struct catalog *c,
                      const char *principal, const char *path, size_t len,
                      char *msg);
/* Admin-only operations (what names the operation in the message). */
int access_may_admin(const struct access *a, const char *principal,
                     const char *what, char *msg);

/* Tokens: add (ALLOT_EEXISTS for a hash already known), find a live one,
 * revoke by id, and forget expired ones (by the state machine's clock). */
int access_token_add(struct access *a,
                     const unsigned char hash[ACCESS_TOKEN_HASH_LEN],
                     const char *principal, uint64_t created_ms,
                     uint64_t expires_ms, char *msg);
const struct token *
access_token(const struct access *a,
             const unsigned char hash[ACCESS_TOKEN_HASH_LEN]);
/* The token whose id is `id`, or NULL. */
const struct token *
access_token_by_id(const struct access *a,
                   const unsigned char id[ACCESS_TOKEN_ID_LEN]);
void access_token_remove(struct access *a, const struct token *t);
void access_tokens_expire(struct access *a, uint64_t now_ms);
void access_pack_tokens(msgpack_packer *pk, const struct access *a);
int access_unpack_tokens(const msgpack_object *o, struct access *a);

/* Listing (for principal.ls / group.ls), and snapshots. */
void access_pack_principals(msgpack_packer *pk, const struct access *a);
void access_pack_groups(msgpack_packer *pk, const struct access *a);
int access_unpack(const msgpack_object *principals,
                  const msgpack_object *groups, struct access *a);

#endif /* ALLOT_RAFT_ACCESS_H */
