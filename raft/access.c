/* access.c - principals, groups, ownership (see access.h). */
#include "access.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../proto/allot_error.h"
#include "../proto/wire.h"

static int principal_cmp(const struct principal *x, const struct principal *y)
{
    return strcmp(x->name, y->name);
}

static int group_cmp(const struct group *x, const struct group *y)
{
    return strcmp(x->name, y->name);
}

RB_GENERATE_STATIC(principal_tree, principal, link, principal_cmp)
RB_GENERATE_STATIC(group_tree, group, link, group_cmp)

static int token_cmp(const struct token *x, const struct token *y)
{
    return memcmp(x->hash, y->hash, ACCESS_TOKEN_HASH_LEN);
}

RB_GENERATE_STATIC(token_tree, token, link, token_cmp)

void access_init(struct access *a)
{
    memset(a, 0, sizeof *a);
    RB_INIT(&a->principals);
    RB_INIT(&a->groups);
    RB_INIT(&a->tokens);
}

static void group_free(struct group *g)
{
    for (uint32_t i = 0; i < g->n; i++) {
        free(g->members[i]);
    }
    free(g->members);
    free(g);
}

void access_free(struct access *a)
{
    struct principal *p, *pn;
    RB_FOREACH_SAFE(p, principal_tree, &a->principals, pn)
    {
        RB_REMOVE(principal_tree, &a->principals, p);
        free(p);
    }
    struct group *g, *gn;
    RB_FOREACH_SAFE(g, group_tree, &a->groups, gn)
    {
        RB_REMOVE(group_tree, &a->groups, g);
        group_free(g);
    }
    struct token *t, *tn;
    RB_FOREACH_SAFE(t, token_tree, &a->tokens, tn)
    {
        RB_REMOVE(token_tree, &a->tokens, t);
        free(t);
    }
    a->n_principals = a->n_groups = a->n_tokens = 0;
}

const struct principal *access_principal(const struct access *a,
                                         const char *name)
{
    struct principal key;
    if (strlen(name) > AUTH_NAME_MAX) {
        return NULL;
    }
    strcpy(key.name, name);
    return RB_FIND(principal_tree, (struct principal_tree *)&a->principals,
                   &key);
}

static struct group *group_find(const struct access *a, const char *name,
                                size_t len)
{
    struct group key;
    if (len > AUTH_NAME_MAX) {
        return NULL;
    }
    memcpy(key.name, name, len);
    key.name[len] = '\0';
    return RB_FIND(group_tree, (struct group_tree *)&a->groups, &key);
}

bool access_is_admin(const struct access *a, const char *principal)
{
    const struct principal *p = access_principal(a, principal);
    return p != NULL && p->admin;
}

int access_add_principal(struct access *a, const char *name,
                         const unsigned char pk[AUTH_PUBKEY_LEN], bool admin,
                         char *msg)
{
    if (!auth_name_valid(name, strlen(name))) {
        return allot_errf(msg, ALLOT_EINVALID,
                          "principal name must be 1 to 64 of [A-Za-z0-9_.@-]");
    }
    if (access_principal(a, name) != NULL) {
        return allot_errf(msg, ALLOT_EEXISTS,
                          "principal %s exists (remove it first to change its "
                          "key)",
                          name);
    }
    if (a->n_principals >= ACCESS_PRINCIPALS_MAX) {
        return allot_errf(msg, ALLOT_EINVALID, "too many principals (max %d)",
                          ACCESS_PRINCIPALS_MAX);
    }
    struct principal *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return ALLOT_ENOMEM;
    }
    strcpy(p->name, name);
    memcpy(p->pk, pk, AUTH_PUBKEY_LEN);
    p->admin = admin;
    RB_INSERT(principal_tree, &a->principals, p);
    a->n_principals++;
    return 0;
}

int access_rm_principal(struct access *a, const char *name, char *msg)
{
    struct principal *p = (struct principal *)access_principal(a, name);
    if (p == NULL) {
        return allot_errf(msg, ALLOT_ENOT_FOUND, "no principal %s", name);
    }
    RB_REMOVE(principal_tree, &a->principals, p);
    a->n_principals--;
    free(p);
    return 0;
}

static bool group_has(const struct group *g, const char *name)
{
    uint32_t lo = 0, hi = g->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->members[mid], name);
        if (c == 0) {
            return true;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return false;
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

int access_group_add(struct access *a, const char *name,
                     const char *const *members, uint32_t n, char *msg)
{
    if (!auth_name_valid(name, strlen(name))) {
        return allot_errf(msg, ALLOT_EINVALID,
                          "group name must be 1 to 64 of [A-Za-z0-9_.@-]");
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!auth_name_valid(members[i], strlen(members[i]))) {
            return allot_errf(msg, ALLOT_EINVALID,
                              "member \"%.64s\" is not a principal name",
                              members[i]);
        }
    }
    struct group *g = group_find(a, name, strlen(name));
    bool created = false;
    if (g == NULL) {
        if (a->n_groups >= ACCESS_GROUPS_MAX) {
            return allot_errf(msg, ALLOT_EINVALID, "too many groups (max %d)",
                              ACCESS_GROUPS_MAX);
        }
        g = calloc(1, sizeof *g);
        if (g == NULL) {
            return ALLOT_ENOMEM;
        }
        strcpy(g->name, name);
        created = true;
    }
    uint32_t add = 0;
    for (uint32_t i = 0; i < n; i++) {
        add += !group_has(g, members[i]);
    }
    if (g->n + add > ACCESS_GROUP_MEMBERS_MAX) {
        if (created) {
            group_free(g);
        }
        return allot_errf(msg, ALLOT_EINVALID, "a group has at most %d members",
                          ACCESS_GROUP_MEMBERS_MAX);
    }
    char **m = realloc(g->members, (g->n + add + 1) * sizeof *m);
    if (m == NULL) {
        if (created) {
            group_free(g);
        }
        return ALLOT_ENOMEM;
    }
    g->members = m;
    for (uint32_t i = 0; i < n; i++) {
        /* group_has() needs the array sorted: keep it sorted as we go. */
        if (group_has(g, members[i])) {
            continue;
        }
        char *s = strdup(members[i]);
        if (s == NULL) {
            break; /* the members added so far stand */
        }
        g->members[g->n++] = s;
        qsort(g->members, g->n, sizeof *g->members, cmp_str);
    }
    if (created) {
        RB_INSERT(group_tree, &a->groups, g);
        a->n_groups++;
    }
    return 0;
}

int access_group_rm(struct access *a, const char *name, char *msg)
{
    struct group *g = group_find(a, name, strlen(name));
    if (g == NULL) {
        return allot_errf(msg, ALLOT_ENOT_FOUND, "no group %s", name);
    }
    RB_REMOVE(group_tree, &a->groups, g);
    a->n_groups--;
    group_free(g);
    return 0;
}

/* Does principal match one owner entry? */
static bool owner_matches(const struct access *a, const char *owner,
                          const char *principal)
{
    if (strncmp(owner, "user:", 5) == 0) {
        return strcmp(owner + 5, principal) == 0;
    }
    if (strncmp(owner, "group:", 6) == 0) {
        const struct group *g = group_find(a, owner + 6, strlen(owner + 6));
        return g != NULL && group_has(g, principal);
    }
    return false;
}

int access_may_change(const struct access *a, const struct catalog *c,
                      const char *principal, const char *path, size_t len,
                      char *msg)
{
    if (principal[0] == '\0' || access_is_admin(a, principal)) {
        return 0;
    }
    if (access_principal(a, principal) == NULL) {
        return allot_errf(msg, ALLOT_EPERMISSION_DENIED,
                          "principal %s may not change %.*s: it is not known "
                          "to the cluster",
                          principal, (int)len, path);
    }
    /* The path itself, then each ancestor, nearest first. */
    size_t l = len;
    while (l > 0) {
        const struct cat_node *n = catalog_find(c, path, l);
        for (uint32_t i = 0; n != NULL && i < n->q.n_owners; i++) {
            if (owner_matches(a, n->q.owners[i], principal)) {
                return 0;
            }
        }
        while (l > 0 && path[l - 1] != '/') {
            l--;
        }
        if (l > 0) {
            l--; /* drop the '/' */
        }
    }
    bool top = memchr(path, '/', len) == NULL;
    return allot_errf(msg, ALLOT_EPERMISSION_DENIED,
                      "principal %s may not change %.*s: %s", principal,
                      (int)len, path,
                      top && catalog_find(c, path, len) == NULL
                          ? "only an admin creates top-level quotas"
                          : "it is not an owner of it or of any parent, "
                            "and not an admin");
}

int access_may_admin(const struct access *a, const char *principal,
                     const char *what, char *msg)
{
    if (principal[0] == '\0' || access_is_admin(a, principal)) {
        return 0;
    }
    return allot_errf(msg, ALLOT_EPERMISSION_DENIED,
                      "principal %s may not %s: admins only", principal, what);
}

void access_pack_principals(msgpack_packer *pk, const struct access *a)
{
    msgpack_pack_array(pk, a->n_principals);
    struct principal *p;
    RB_FOREACH(p, principal_tree, (struct principal_tree *)&a->principals)
    {
        char hex[65];
        auth_pubkey_hex(p->pk, hex);
        msgpack_pack_map(pk, 3);
        wire_pack_kv_str(pk, "name", p->name);
        wire_pack_kv_str(pk, "pubkey", hex);
        wire_pack_str(pk, "admin");
        if (p->admin) {
            msgpack_pack_true(pk);
        } else {
            msgpack_pack_false(pk);
        }
    }
}

void access_pack_groups(msgpack_packer *pk, const struct access *a)
{
    msgpack_pack_array(pk, a->n_groups);
    struct group *g;
    RB_FOREACH(g, group_tree, (struct group_tree *)&a->groups)
    {
        msgpack_pack_map(pk, 2);
        wire_pack_kv_str(pk, "name", g->name);
        wire_pack_str(pk, "members");
        msgpack_pack_array(pk, g->n);
        for (uint32_t i = 0; i < g->n; i++) {
            wire_pack_str(pk, g->members[i]);
        }
    }
}

/* A msgpack string as a C string in buf (size AUTH_NAME_MAX + 1). */
static bool name_of(const msgpack_object *o, char *buf)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_STR ||
        !auth_name_valid(o->via.str.ptr, o->via.str.size)) {
        return false;
    }
    wire_memcpy(buf, o->via.str.ptr, o->via.str.size);
    buf[o->via.str.size] = '\0';
    return true;
}

int access_unpack(const msgpack_object *principals,
                  const msgpack_object *groups, struct access *a)
{
    if (principals == NULL || principals->type != MSGPACK_OBJECT_ARRAY ||
        groups == NULL || groups->type != MSGPACK_OBJECT_ARRAY) {
        return ALLOT_EPROTOCOL;
    }
    for (uint32_t i = 0; i < principals->via.array.size; i++) {
        const msgpack_object *m = &principals->via.array.ptr[i];
        char name[AUTH_NAME_MAX + 1];
        const char *hex;
        size_t hex_len;
        bool admin;
        unsigned char pk[AUTH_PUBKEY_LEN];
        char hexz[65];
        if (!name_of(wire_map_get(m, "name"), name) ||
            wire_get_str(m, "pubkey", true, &hex, &hex_len, NULL) != 0 ||
            hex_len != 64 ||
            wire_get_bool(m, "admin", true, &admin, NULL) != 0) {
            return ALLOT_EPROTOCOL;
        }
        memcpy(hexz, hex, 64);
        hexz[64] = '\0';
        if (auth_pubkey_parse(hexz, pk, NULL) != 0 ||
            access_add_principal(a, name, pk, admin, NULL) != 0) {
            return ALLOT_EPROTOCOL;
        }
    }
    for (uint32_t i = 0; i < groups->via.array.size; i++) {
        const msgpack_object *m = &groups->via.array.ptr[i];
        char name[AUTH_NAME_MAX + 1];
        const msgpack_object *ms = wire_map_get(m, "members");
        if (!name_of(wire_map_get(m, "name"), name) || ms == NULL ||
            ms->type != MSGPACK_OBJECT_ARRAY ||
            ms->via.array.size > ACCESS_GROUP_MEMBERS_MAX ||
            group_find(a, name, strlen(name)) != NULL) {
            return ALLOT_EPROTOCOL;
        }
        char(*buf)[AUTH_NAME_MAX + 1] =
            calloc(ms->via.array.size + 1, sizeof *buf);
        const char **ptrs = calloc(ms->via.array.size + 1, sizeof *ptrs);
        int rv = buf != NULL && ptrs != NULL ? 0 : ALLOT_ENOMEM;
        for (uint32_t j = 0; rv == 0 && j < ms->via.array.size; j++) {
            if (!name_of(&ms->via.array.ptr[j], buf[j])) {
                rv = ALLOT_EPROTOCOL;
            }
            ptrs[j] = buf[j];
        }
        if (rv == 0) {
            rv = access_group_add(a, name, ptrs, ms->via.array.size, NULL);
            rv = rv == ALLOT_ENOMEM ? rv : rv != 0 ? ALLOT_EPROTOCOL : 0;
        }
        free(buf);
        free(ptrs);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}

/* --- Tokens ------------------------------------------------------------------
 */

int access_token_add(struct access *a,
                     const unsigned char hash[ACCESS_TOKEN_HASH_LEN],
                     const char *principal, uint64_t created_ms,
                     uint64_t expires_ms, char *msg)
{
    if (access_token(a, hash) != NULL) {
        return allot_errf(msg, ALLOT_EEXISTS, "this token exists already");
    }
    if (a->n_tokens >= ACCESS_TOKENS_MAX) {
        return allot_errf(msg, ALLOT_EINVALID, "too many tokens (max %d)",
                          ACCESS_TOKENS_MAX);
    }
    struct token *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return ALLOT_ENOMEM;
    }
    memcpy(t->hash, hash, ACCESS_TOKEN_HASH_LEN);
    snprintf(t->principal, sizeof t->principal, "%s", principal);
    t->created_ms = created_ms;
    t->expires_ms = expires_ms;
    RB_INSERT(token_tree, &a->tokens, t);
    a->n_tokens++;
    return 0;
}

const struct token *
access_token(const struct access *a,
             const unsigned char hash[ACCESS_TOKEN_HASH_LEN])
{
    struct token key;
    memcpy(key.hash, hash, ACCESS_TOKEN_HASH_LEN);
    return RB_FIND(token_tree, (struct token_tree *)&a->tokens, &key);
}

const struct token *
access_token_by_id(const struct access *a,
                   const unsigned char id[ACCESS_TOKEN_ID_LEN])
{
    struct token key;
    memset(key.hash, 0, sizeof key.hash);
    memcpy(key.hash, id, ACCESS_TOKEN_ID_LEN);
    struct token *t =
        RB_NFIND(token_tree, (struct token_tree *)&a->tokens, &key);
    if (t != NULL && memcmp(t->hash, id, ACCESS_TOKEN_ID_LEN) == 0) {
        return t;
    }
    return NULL;
}

void access_token_remove(struct access *a, const struct token *t)
{
    struct token *m = (struct token *)t;
    RB_REMOVE(token_tree, &a->tokens, m);
    a->n_tokens--;
    free(m);
}

void access_tokens_expire(struct access *a, uint64_t now_ms)
{
    struct token *t, *tn;
    RB_FOREACH_SAFE(t, token_tree, &a->tokens, tn)
    {
        if (t->expires_ms <= now_ms) {
            access_token_remove(a, t);
        }
    }
}

void access_pack_tokens(msgpack_packer *pk, const struct access *a)
{
    msgpack_pack_array(pk, a->n_tokens);
    struct token *t;
    RB_FOREACH(t, token_tree, (struct token_tree *)&a->tokens)
    {
        char id[2 * ACCESS_TOKEN_ID_LEN + 1];
        for (int i = 0; i < ACCESS_TOKEN_ID_LEN; i++) {
            snprintf(id + 2 * i, 3, "%02x", t->hash[i]);
        }
        msgpack_pack_map(pk, 5);
        wire_pack_kv_str(pk, "id", id);
        wire_pack_str(pk, "hash");
        msgpack_pack_bin(pk, ACCESS_TOKEN_HASH_LEN);
        msgpack_pack_bin_body(pk, t->hash, ACCESS_TOKEN_HASH_LEN);
        wire_pack_kv_str(pk, "principal", t->principal);
        wire_pack_kv_u64(pk, "created_ms", t->created_ms);
        wire_pack_kv_u64(pk, "expires_ms", t->expires_ms);
    }
}

int access_unpack_tokens(const msgpack_object *o, struct access *a)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_ARRAY) {
        return ALLOT_EPROTOCOL;
    }
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *m = &o->via.array.ptr[i];
        const msgpack_object *h = wire_map_get(m, "hash");
        char who[AUTH_NAME_MAX + 1];
        uint64_t created, expires;
        if (h == NULL || h->type != MSGPACK_OBJECT_BIN ||
            h->via.bin.size != ACCESS_TOKEN_HASH_LEN ||
            !name_of(wire_map_get(m, "principal"), who) ||
            wire_get_u64(m, "created_ms", true, &created, NULL) != 0 ||
            wire_get_u64(m, "expires_ms", true, &expires, NULL) != 0 ||
            access_token_add(a, (const unsigned char *)h->via.bin.ptr, who,
                             created, expires, NULL) != 0) {
            return ALLOT_EPROTOCOL;
        }
    }
    return 0;
}
