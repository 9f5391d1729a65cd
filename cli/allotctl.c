/* allotctl - administer an allot cluster from the command line.
 *
 * Every command is one or a few protocol calls through proto/client (which
 * handles failover between endpoints). Output is a readable table by default
 * or, with -o json, exactly one JSON document on stdout. Errors are one line
 * on stderr, `error: CODE: message`, and a non-zero exit status: 2 for a
 * command line we could not understand, 1 for everything else. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../proto/auth.h"
#include "../proto/client.h"
#include "../proto/json.h"
#include "../proto/quota.h"
#include "../proto/wire.h"

#define MAX_POSITIONAL 64

struct cli
{
    const char *endpoints;
    bool json;
    int timeout_ms;
    bool has_if_version;
    uint64_t if_version;
    bool digest;
    bool recursive;
    const char *since;
    const char *principal;
    const char *host;     /* usage --host NAME */
    const char *identity; /* --identity FILE or ALLOT_IDENTITY */
    const char *token;    /* --token TOKEN or ALLOT_TOKEN */
    const char *prefix;   /* validator add --prefix */
    const char *exec;     /* validator add --exec */
    const char *url;      /* validator add --url */
    bool fail_open;       /* validator add --fail-open */
    bool timeout_given;
    const char *ttl;    /* token create --ttl DURATION */
    const char *out;    /* identity new --out FILE */
    const char *pubkey; /* principal add --pubkey HEX */
    bool admin;         /* principal add --admin */
    const char *owners_add[QUOTA_OWNERS_MAX];
    uint32_t n_owners_add;
    const char *owners_rm[QUOTA_OWNERS_MAX];
    uint32_t n_owners_rm;
    const char *members[256];
    uint32_t n_members;
    const char *label_kv[QUOTA_LABELS_MAX]; /* quota set labels.K=V */
    uint32_t n_labels;
    bool has_from_version;
    uint64_t from_version;
    long long count; /* quota watch --count N: stop after N changes */
    const char *pos[MAX_POSITIONAL];
    int n_pos;
    struct allot_client *client;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: allotctl [--endpoints HOST:PORT,...] [-o json|text] "
            "[--timeout-ms N] COMMAND\n"
            "\n"
            "  cluster status [--digest]       this node's view of the "
            "cluster\n"
            "  cluster add ID RAFT_ADDR        add a voter\n"
            "  cluster remove ID               remove a member\n"
            "  cluster transfer [ID]           move leadership (to ID, or the "
            "best voter)\n"
            "  quota set PATH KEY=VALUE... [--if-version V]\n"
            "  quota get PATH\n"
            "  quota ls [PREFIX]\n"
            "  quota rm PATH [--if-version V] [--recursive]\n"
            "  quota watch [PREFIX] [--from-version V] [--count N]  stream "
            "changes\n"
            "  capacity set [memory_mb=N] [vcores=N]   declare the cluster's "
            "capacity\n"
            "  capacity get\n"
            "  audit [PREFIX] [--since TIME] [--principal NAME]  changes, "
            "oldest first\n"
            "  audit-retention [max_records=N] [max_age=DURATION]\n"
            "  identity new NAME --out FILE | identity pubkey FILE\n"
            "  principal add NAME --pubkey HEX [--admin] | principal rm NAME "
            "| principal ls\n"
            "  group add GROUP --member NAME... | group rm GROUP | group ls\n"
            "  token create --principal NAME [--ttl 30d] | token revoke ID | "
            "token ls\n"
            "  validator add NAME --prefix P (--exec CMD | --url URL) "
            "[--timeout-ms N] [--fail-open]\n"
            "  validator rm NAME | validator ls\n"
            "  gossip members                  this node's view of the gossip "
            "fleet\n"
            "  gossip keys list | gossip keys install|use|remove KEY   rotate "
            "fleet-wide\n"
            "  gossip keygen                   print a new gossip key\n"
            "  usage [PATH] [--host NAME]      the latest usage windows "
            "hosts reported\n"
            "  share show PATH                 each host's part of a rule, "
            "from gossip\n"
            "Signing: --identity FILE (or ALLOT_IDENTITY) signs every request;"
            " --token T\n(or ALLOT_TOKEN) sends a bearer token instead."
            "\n"
            "quota set also takes --owner user:NAME|group:NAME and "
            "--remove-owner.\n"
            "\n"
            "Endpoints come from --endpoints, else ALLOT_ENDPOINTS, else %s.\n"
            "Quota fields: kind, guaranteed.memory_mb, guaranteed.vcores, "
            "max.memory_mb,\n"
            "  max.vcores, max_apps (capacity); rate, burst, unit, fleet, "
            "share, per_key,\n"
            "  max_delay_ms (rate); on_exceed (both). --if-version 0 means "
            "\"only if absent\".\n"
            "TIME: 2026-11-23T10:00:00Z, milliseconds since the epoch, or a "
            "duration ago\n"
            "  (30s, 15m, 2h, 7d). DURATION: 30s, 15m, 2h, 7d.\n",
            ALLOT_DEFAULT_ENDPOINTS);
}

static int fail(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "error: %s: ", allot_error_name(code));
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return code == ALLOT_EINVALID ? 2 : 1;
}

/* --- msgpack to JSON and text
 * ----------------------------------------------------- */

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s != NULL) {
        puts(s);
        free(s);
    }
}

/* A reply's result as JSON (-o json). */
static void print_object_json(const msgpack_object *o)
{
    json_t *j = wire_to_json(o);
    print_json(j);
    json_decref(j);
}

/* Scalar as text into buf. */
static void scalar_text(const msgpack_object *o, char *buf, size_t size)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        snprintf(buf, size, "-");
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        snprintf(buf, size, "%s", o->via.boolean ? "true" : "false");
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        snprintf(buf, size, "%llu", (unsigned long long)o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        snprintf(buf, size, "%lld", (long long)o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        snprintf(buf, size, "%.15g", o->via.f64);
        break;
    case MSGPACK_OBJECT_STR:
        snprintf(buf, size, "%.*s", (int)o->via.str.size, o->via.str.ptr);
        break;
    case MSGPACK_OBJECT_ARRAY: {
        size_t off = 0;
        buf[0] = '\0';
        for (uint32_t i = 0; i < o->via.array.size && off < size; i++) {
            char item[128];
            scalar_text(&o->via.array.ptr[i], item, sizeof item);
            int n = snprintf(buf + off, size - off, "%s%s", i ? "," : "", item);
            off += n > 0 ? (size_t)n : 0;
        }
        if (o->via.array.size == 0) {
            snprintf(buf, size, "-");
        }
        break;
    }
    default:
        snprintf(buf, size, "?");
    }
}

/* key: value lines, nested maps flattened as group.key. */
static void print_kv(const msgpack_object *map, const char *prefix)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *v = &map->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR) {
            continue;
        }
        char name[160];
        snprintf(name, sizeof name, "%s%s%.*s", prefix, prefix[0] ? "." : "",
                 (int)k->via.str.size, k->via.str.ptr);
        if (v->type == MSGPACK_OBJECT_MAP) {
            print_kv(v, name);
            continue;
        }
        char val[512];
        scalar_text(v, val, sizeof val);
        printf("%-22s %s\n", name, val);
    }
}

static const msgpack_object *get(const msgpack_object *m, const char *a,
                                 const char *b)
{
    const msgpack_object *o = wire_map_get(m, a);
    return b != NULL ? wire_map_get(o, b) : o;
}

static void text_of(const msgpack_object *m, const char *a, const char *b,
                    char *buf, size_t size)
{
    const msgpack_object *o = get(m, a, b);
    if (o == NULL) {
        snprintf(buf, size, "-");
    } else {
        scalar_text(o, buf, size);
    }
}

/* One line summarizing a quota's limits, for `quota ls`. */
static void quota_summary(const msgpack_object *q, char *buf, size_t size)
{
    char a[32], b[32], c[32], d[32], e[32];
    const msgpack_object *kind = wire_map_get(q, "kind");
    if (kind != NULL && wire_str_eq(kind, "rate")) {
        text_of(q, "rate", NULL, a, sizeof a);
        text_of(q, "burst", NULL, b, sizeof b);
        text_of(q, "unit", NULL, c, sizeof c);
        text_of(q, "fleet", NULL, d, sizeof d);
        text_of(q, "on_exceed", NULL, e, sizeof e);
        snprintf(buf, size, "rate=%s/s burst=%s unit=%s fleet=%s %s", a, b, c,
                 d, e);
    } else {
        text_of(q, "guaranteed", "memory_mb", a, sizeof a);
        text_of(q, "guaranteed", "vcores", b, sizeof b);
        text_of(q, "max", "memory_mb", c, sizeof c);
        text_of(q, "max", "vcores", d, sizeof d);
        text_of(q, "max_apps", NULL, e, sizeof e);
        snprintf(buf, size, "guaranteed=%sMB/%svc max=%sMB/%svc max_apps=%s", a,
                 b, c, d, e);
    }
}

/* --- Calls
 * ------------------------------------------------------------------------ */

static int call(struct cli *cli, const char *op, allot_pack_fn pack, void *arg,
                struct allot_reply *rep)
{
    int rv = allot_client_call(cli->client, op, pack, arg, rep);
    if (rv != 0) {
        /* The cluster refused: exit 1, whatever the code. Exit 2 is kept for
         * command lines allotctl itself could not understand. */
        fail(rv, "%s", rep->message[0] ? rep->message : allot_strerror(rv));
        allot_reply_destroy(rep);
        return 1;
    }
    return 0;
}

struct path_args
{
    const char *path;
    struct cli *cli;
    const struct quota_fields *patch;
    const char *after;
};

static void pack_path(msgpack_packer *pk, void *arg)
{
    struct path_args *a = arg;
    bool ifv = a->cli->has_if_version;
    bool rec = a->cli->recursive;
    bool own =
        a->patch != NULL && a->cli->n_owners_add + a->cli->n_owners_rm > 0;
    bool lab = a->patch != NULL && a->cli->n_labels > 0;
    msgpack_pack_map(pk, 1u + (ifv ? 1u : 0u) + (a->patch ? 1u : 0u) +
                             (rec ? 1u : 0u) + (own ? 2u : 0u) +
                             (lab ? 1u : 0u));
    wire_pack_kv_str(pk, "path", a->path);
    if (lab) {
        wire_pack_str(pk, "labels");
        msgpack_pack_map(pk, a->cli->n_labels);
        for (uint32_t i = 0; i < a->cli->n_labels; i++) {
            const char *kv = a->cli->label_kv[i];
            const char *eq = strchr(kv, '=');
            wire_pack_strn(pk, kv, (size_t)(eq - kv));
            if (eq[1] != '\0') {
                wire_pack_str(pk, eq + 1);
            } else {
                msgpack_pack_nil(pk);
            }
        }
    }
    if (own) {
        const char *const *lists[2] = {a->cli->owners_add, a->cli->owners_rm};
        uint32_t counts[2] = {a->cli->n_owners_add, a->cli->n_owners_rm};
        const char *keys[2] = {"owners_add", "owners_rm"};
        for (int l = 0; l < 2; l++) {
            wire_pack_str(pk, keys[l]);
            msgpack_pack_array(pk, counts[l]);
            for (uint32_t i = 0; i < counts[l]; i++) {
                wire_pack_str(pk, lists[l][i]);
            }
        }
    }
    if (rec) {
        wire_pack_str(pk, "recursive");
        msgpack_pack_true(pk);
    }
    if (ifv) {
        wire_pack_kv_u64(pk, "if_version", a->cli->if_version);
    }
    if (a->patch != NULL) {
        wire_pack_str(pk, "fields");
        msgpack_pack_map(pk, quota_fields_pack(NULL, a->patch, true));
        quota_fields_pack(pk, a->patch, true);
    }
}

static int check_path(const char *path)
{
    char msg[ALLOT_ERRMSG_SIZE];
    if (quota_path_check(path, strlen(path), msg) != 0) {
        return fail(ALLOT_EINVALID, "%s", msg);
    }
    return 0;
}

static int cmd_quota_set(struct cli *cli)
{
    bool owners = cli->n_owners_add + cli->n_owners_rm > 0;
    if (cli->n_pos < (owners ? 3 : 4)) {
        return fail(ALLOT_EINVALID,
                    "usage: quota set PATH KEY=VALUE... [--if-version V] "
                    "[--owner user:NAME|group:NAME]... [--remove-owner ...]");
    }
    int rv = check_path(cli->pos[2]);
    if (rv != 0) {
        return rv;
    }
    struct quota_fields patch;
    memset(&patch, 0, sizeof patch);
    char msg[ALLOT_ERRMSG_SIZE];
    for (int i = 3; i < cli->n_pos; i++) {
        const char *kv = cli->pos[i];
        if (strncmp(kv, "labels.", 7) == 0) {
            /* labels.KEY=VALUE sets a label; labels.KEY= removes it. */
            const char *eq = strchr(kv, '=');
            if (eq == NULL || !quota_label_valid(kv + 7, (size_t)(eq - kv - 7),
                                                 eq + 1, strlen(eq + 1))) {
                return fail(ALLOT_EINVALID,
                            "\"%s\": labels.KEY=VALUE, KEY of "
                            "[A-Za-z0-9_./-]{1,63}, VALUE up to 255 printable "
                            "bytes (empty removes the label)",
                            kv);
            }
            if (cli->n_labels == QUOTA_LABELS_MAX) {
                return fail(ALLOT_EINVALID, "at most %d labels",
                            QUOTA_LABELS_MAX);
            }
            cli->label_kv[cli->n_labels++] = kv + 7;
            continue;
        }
        if (quota_patch_parse_kv(&patch, kv, msg) != 0) {
            return fail(ALLOT_EINVALID, "%s", msg);
        }
    }
    if ((patch.set != 0 || !(owners || cli->n_labels > 0)) &&
        quota_patch_check(&patch, msg) != 0) {
        return fail(ALLOT_EINVALID, "%s", msg);
    }
    struct path_args a = {.path = cli->pos[2], .cli = cli, .patch = &patch};
    struct allot_reply rep;
    rv = call(cli, "quota.set", pack_path, &a, &rep);
    if (rv != 0) {
        return rv;
    }
    if (cli->json) {
        print_object_json(rep.result);
    } else {
        char v[32];
        text_of(rep.result, "version", NULL, v, sizeof v);
        printf("set %s version %s\n", cli->pos[2], v);
    }
    allot_reply_destroy(&rep);
    return 0;
}

static int cmd_quota_get(struct cli *cli)
{
    if (cli->n_pos != 3) {
        return fail(ALLOT_EINVALID, "usage: quota get PATH");
    }
    int rv = check_path(cli->pos[2]);
    if (rv != 0) {
        return rv;
    }
    struct path_args a = {.path = cli->pos[2], .cli = cli};
    cli->has_if_version = false;
    struct allot_reply rep;
    rv = call(cli, "quota.get", pack_path, &a, &rep);
    if (rv != 0) {
        return rv;
    }
    if (cli->json) {
        print_object_json(rep.result);
    } else {
        print_kv(rep.result, "");
    }
    allot_reply_destroy(&rep);
    return 0;
}

static int cmd_quota_rm(struct cli *cli)
{
    if (cli->n_pos != 3) {
        return fail(ALLOT_EINVALID,
                    "usage: quota rm PATH [--if-version V] [--recursive]");
    }
    int rv = check_path(cli->pos[2]);
    if (rv != 0) {
        return rv;
    }
    struct path_args a = {.path = cli->pos[2], .cli = cli};
    struct allot_reply rep;
    rv = call(cli, "quota.rm", pack_path, &a, &rep);
    if (rv != 0) {
        return rv;
    }
    if (cli->json) {
        print_object_json(rep.result);
    } else {
        char v[32];
        text_of(rep.result, "version", NULL, v, sizeof v);
        char n[32];
        text_of(rep.result, "removed", NULL, n, sizeof n);
        printf("removed %s (%s %s, catalog version %s)\n", cli->pos[2], n,
               strcmp(n, "1") == 0 ? "quota" : "quotas", v);
    }
    allot_reply_destroy(&rep);
    return 0;
}

static void pack_ls(msgpack_packer *pk, void *arg)
{
    struct path_args *a = arg;
    msgpack_pack_map(pk, a->after ? 3 : 2);
    wire_pack_kv_str(pk, "prefix", a->path);
    wire_pack_kv_u64(pk, "limit", 1000);
    if (a->after) {
        wire_pack_kv_str(pk, "after", a->after);
    }
}

static int cmd_quota_ls(struct cli *cli)
{
    if (cli->n_pos > 3) {
        return fail(ALLOT_EINVALID, "usage: quota ls [PREFIX]");
    }
    const char *prefix = cli->n_pos == 3 ? cli->pos[2] : "";
    if (prefix[0] != '\0') {
        int rv = check_path(prefix);
        if (rv != 0) {
            return rv;
        }
    }
    json_t *all = json_array();
    uint64_t version = 0;
    char *after = NULL;
    unsigned count = 0;
    if (!cli->json) {
        printf("%-40s %-9s %-8s %s\n", "PATH", "KIND", "VERSION", "LIMITS");
    }
    /* Page through: the server caps a reply at 1,000 quotas. Each page is its
     * own linearizable read; a listing that spans pages is not one snapshot
     * (catalog_version in the JSON output is the first page's). */
    for (;;) {
        struct path_args a = {.path = prefix, .cli = cli, .after = after};
        struct allot_reply rep;
        int rv = call(cli, "quota.ls", pack_ls, &a, &rep);
        if (rv != 0) {
            free(after);
            json_decref(all);
            return rv;
        }
        const msgpack_object *quotas = wire_map_get(rep.result, "quotas");
        const msgpack_object *more = wire_map_get(rep.result, "more");
        const msgpack_object *next = wire_map_get(rep.result, "next");
        const msgpack_object *cv = wire_map_get(rep.result, "catalog_version");
        if (count == 0 && cv != NULL &&
            cv->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            version = cv->via.u64;
        }
        for (uint32_t i = 0;
             quotas != NULL && quotas->type == MSGPACK_OBJECT_ARRAY &&
             i < quotas->via.array.size;
             i++) {
            const msgpack_object *q = &quotas->via.array.ptr[i];
            count++;
            if (cli->json) {
                json_array_append_new(all, wire_to_json(q));
                continue;
            }
            char path[QUOTA_PATH_MAX + 1], kind[16], ver[24], sum[256];
            text_of(q, "path", NULL, path, sizeof path);
            text_of(q, "kind", NULL, kind, sizeof kind);
            text_of(q, "version", NULL, ver, sizeof ver);
            quota_summary(q, sum, sizeof sum);
            printf("%-40s %-9s %-8s %s\n", path, kind, ver, sum);
        }
        free(after);
        after = NULL;
        bool again = more != NULL && more->type == MSGPACK_OBJECT_BOOLEAN &&
                     more->via.boolean && next != NULL &&
                     next->type == MSGPACK_OBJECT_STR;
        if (again) {
            /* Not strndup(): the string is not NUL-terminated. */
            after = malloc(next->via.str.size + 1);
            if (after != NULL) {
                memcpy(after, next->via.str.ptr, next->via.str.size);
                after[next->via.str.size] = '\0';
            }
        }
        allot_reply_destroy(&rep);
        if (!again || after == NULL) {
            break;
        }
    }
    if (cli->json) {
        json_t *doc = json_object();
        json_object_set_new(doc, "catalog_version",
                            json_integer((json_int_t)version));
        json_object_set_new(doc, "quotas", all);
        print_json(doc);
        json_decref(doc);
    } else {
        json_decref(all);
    }
    return 0;
}

/* --- cluster
 * ------------------------------------------------------------------------ */

struct id_args
{
    uint64_t id;
    const char *addr;
    bool digest;
};

static void pack_id(msgpack_packer *pk, void *arg)
{
    struct id_args *a = arg;
    msgpack_pack_map(pk, a->addr ? 2 : 1);
    wire_pack_kv_u64(pk, "id", a->id);
    if (a->addr) {
        wire_pack_kv_str(pk, "raft_addr", a->addr);
    }
}

static void pack_status(msgpack_packer *pk, void *arg)
{
    struct id_args *a = arg;
    msgpack_pack_map(pk, 1);
    wire_pack_str(pk, "digest");
    if (a->digest) {
        msgpack_pack_true(pk);
    } else {
        msgpack_pack_false(pk);
    }
}

static int parse_id(const char *s, uint64_t *out, bool allow_zero)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] == '\0' || s[0] == '-' || *end != '\0' || errno != 0 ||
        (v == 0 && !allow_zero)) {
        return fail(ALLOT_EINVALID, "\"%s\" is not a node id (1 or more)", s);
    }
    *out = v;
    return 0;
}

static int cmd_cluster(struct cli *cli)
{
    const char *sub = cli->n_pos > 1 ? cli->pos[1] : "";
    struct id_args a = {0};
    struct allot_reply rep;
    int rv;
    if (strcmp(sub, "status") == 0) {
        if (cli->n_pos != 2) {
            return fail(ALLOT_EINVALID, "usage: cluster status [--digest]");
        }
        a.digest = cli->digest;
        rv = call(cli, "cluster.status", pack_status, &a, &rep);
        if (rv != 0) {
            return rv;
        }
        if (cli->json) {
            print_object_json(rep.result);
            allot_reply_destroy(&rep);
            return 0;
        }
        const msgpack_object *r = rep.result;
        char id[24], state[24], leader[24], term[24], commit[24], applied[24],
            ver[24];
        text_of(r, "id", NULL, id, sizeof id);
        text_of(r, "state", NULL, state, sizeof state);
        text_of(r, "leader", NULL, leader, sizeof leader);
        text_of(r, "term", NULL, term, sizeof term);
        text_of(r, "commit_index", NULL, commit, sizeof commit);
        text_of(r, "applied_index", NULL, applied, sizeof applied);
        text_of(r, "catalog_version", NULL, ver, sizeof ver);
        printf("node %s (%s) via %s: leader %s, term %s, commit %s, applied "
               "%s, catalog version %s\n",
               id, state, allot_client_endpoint(cli->client), leader, term,
               commit, applied, ver);
        if (cli->digest) {
            char dg[80];
            text_of(r, "digest", NULL, dg, sizeof dg);
            printf("digest %s\n", dg);
        }
        printf("%-4s %-22s %-8s %-12s %s\n", "ID", "RAFT_ADDR", "ROLE", "STATE",
               "CLIENT_ADDR");
        const msgpack_object *ms = wire_map_get(r, "members");
        for (uint32_t i = 0; ms != NULL && ms->type == MSGPACK_OBJECT_ARRAY &&
                             i < ms->via.array.size;
             i++) {
            const msgpack_object *m = &ms->via.array.ptr[i];
            char mid[24], addr[64], role[16], st[16], caddr[64];
            text_of(m, "id", NULL, mid, sizeof mid);
            text_of(m, "raft_addr", NULL, addr, sizeof addr);
            text_of(m, "role", NULL, role, sizeof role);
            text_of(m, "state", NULL, st, sizeof st);
            text_of(m, "client_addr", NULL, caddr, sizeof caddr);
            printf("%-4s %-22s %-8s %-12s %s\n", mid, addr, role, st, caddr);
        }
        allot_reply_destroy(&rep);
        return 0;
    }
    const char *op;
    if (strcmp(sub, "add") == 0) {
        if (cli->n_pos != 4) {
            return fail(ALLOT_EINVALID, "usage: cluster add ID RAFT_ADDR");
        }
        if ((rv = parse_id(cli->pos[2], &a.id, false)) != 0) {
            return rv;
        }
        a.addr = cli->pos[3];
        op = "cluster.add";
    } else if (strcmp(sub, "remove") == 0) {
        if (cli->n_pos != 3) {
            return fail(ALLOT_EINVALID, "usage: cluster remove ID");
        }
        if ((rv = parse_id(cli->pos[2], &a.id, false)) != 0) {
            return rv;
        }
        op = "cluster.remove";
    } else if (strcmp(sub, "transfer") == 0) {
        if (cli->n_pos > 3) {
            return fail(ALLOT_EINVALID, "usage: cluster transfer [ID]");
        }
        if (cli->n_pos == 3 && (rv = parse_id(cli->pos[2], &a.id, false))) {
            return rv;
        }
        op = "cluster.transfer";
    } else {
        return fail(ALLOT_EINVALID,
                    "unknown cluster command \"%s\" (status, add, remove, "
                    "transfer)",
                    sub);
    }
    rv = call(cli, op, pack_id, &a, &rep);
    if (rv != 0) {
        return rv;
    }
    if (cli->json) {
        print_object_json(rep.result);
    } else if (strcmp(op, "cluster.transfer") == 0) {
        char l[24];
        text_of(rep.result, "leader", NULL, l, sizeof l);
        printf("leader is now %s\n", l);
    } else {
        printf("%s node %llu\n",
               strcmp(op, "cluster.add") == 0 ? "added" : "removed",
               (unsigned long long)a.id);
    }
    allot_reply_destroy(&rep);
    return 0;
}

/* gossip ------------------------------------------------------------------ */

struct gossip_keys_args
{
    const char *action;
    const char *key;
};

static void pack_gossip_keys(msgpack_packer *pk, void *arg)
{
    struct gossip_keys_args *a = arg;
    msgpack_pack_map(pk, a->key != NULL ? 2 : 1);
    wire_pack_kv_str(pk, "action", a->action);
    if (a->key != NULL) {
        wire_pack_kv_str(pk, "key", a->key);
    }
}

/* A new gossip key: 32 random bytes in base64, the keyring file's format.
 * Local: no cluster involved. */
static int gossip_keygen(void)
{
    unsigned char key[32];
    char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
    if (sodium_init() < 0) {
        return fail(ALLOT_EINTERNAL, "libsodium cannot initialize");
    }
    randombytes_buf(key, sizeof key);
    sodium_bin2base64(b64, sizeof b64, key, sizeof key,
                      sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(key, sizeof key);
    puts(b64);
    sodium_memzero(b64, sizeof b64);
    return 0;
}

static void print_gossip_members(const msgpack_object *ms)
{
    printf("%-24s %-21s %-6s %-12s %-8s %s\n", "NAME", "ADDR", "ROLE", "FLEET",
           "STATE", "INCARNATION");
    for (uint32_t i = 0;
         ms->type == MSGPACK_OBJECT_ARRAY && i < ms->via.array.size; i++) {
        const msgpack_object *m = &ms->via.array.ptr[i];
        char name[80], addr[32], role[16], fleet[80], st[16], inc[24];
        text_of(m, "name", NULL, name, sizeof name);
        text_of(m, "addr", NULL, addr, sizeof addr);
        text_of(m, "role", NULL, role, sizeof role);
        text_of(m, "fleet", NULL, fleet, sizeof fleet);
        text_of(m, "state", NULL, st, sizeof st);
        text_of(m, "incarnation", NULL, inc, sizeof inc);
        printf("%-24s %-21s %-6s %-12s %-8s %s\n", name, addr, role,
               fleet[0] != '\0' ? fleet : "-", st, inc);
    }
}

static void fmt_time_ms(uint64_t ms, char *buf, size_t size);

/* Call op and print its result: JSON with -o json, else print_text. */
static int call_and_print(struct cli *cli, const char *op, allot_pack_fn pack,
                          void *arg,
                          void (*print_text)(const msgpack_object *result))
{
    struct allot_reply rep;
    int rv = call(cli, op, pack, arg, &rep);
    if (rv != 0) {
        return rv;
    }
    if (cli->json) {
        print_object_json(rep.result);
    } else {
        print_text(rep.result);
    }
    allot_reply_destroy(&rep);
    return 0;
}

struct usage_args
{
    const char *prefix;
    const char *host;
};

static void pack_usage(msgpack_packer *pk, void *arg)
{
    const struct usage_args *a = arg;
    msgpack_pack_map(pk, a->host != NULL ? 2 : 1);
    wire_pack_kv_str(pk, "prefix", a->prefix);
    if (a->host != NULL) {
        wire_pack_kv_str(pk, "host", a->host);
    }
}

static void print_usage_windows(const msgpack_object *res)
{
    printf("%-24s %-24s %-32s %10s %10s %10s %12s %6s\n", "HOST",
           "WINDOW START", "PATH", "ADMITTED", "REJECTED", "SHADOWED", "COST",
           "PEAK");
    const msgpack_object *hs = wire_map_get(res, "hosts");
    for (uint32_t i = 0; hs != NULL && hs->type == MSGPACK_OBJECT_ARRAY &&
                         i < hs->via.array.size;
         i++) {
        const msgpack_object *h = &hs->via.array.ptr[i];
        char host[80];
        text_of(h, "host", NULL, host, sizeof host);
        const msgpack_object *ws = wire_map_get(h, "windows");
        for (uint32_t k = 0; ws != NULL && ws->type == MSGPACK_OBJECT_ARRAY &&
                             k < ws->via.array.size;
             k++) {
            const msgpack_object *w = &ws->via.array.ptr[k];
            const msgpack_object *st = wire_map_get(w, "start_ms");
            char when[32] = "-";
            if (st != NULL && st->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                fmt_time_ms(st->via.u64, when, sizeof when);
            }
            const msgpack_object *rs = wire_map_get(w, "rules");
            for (uint32_t j = 0;
                 rs != NULL && rs->type == MSGPACK_OBJECT_ARRAY &&
                 j < rs->via.array.size;
                 j++) {
                const msgpack_object *r = &rs->via.array.ptr[j];
                char path[300], adm[24], rej[24], sh[24], cost[24], peak[24];
                text_of(r, "path", NULL, path, sizeof path);
                text_of(r, "admitted", NULL, adm, sizeof adm);
                text_of(r, "rejected", NULL, rej, sizeof rej);
                text_of(r, "shadowed", NULL, sh, sizeof sh);
                text_of(r, "cost", NULL, cost, sizeof cost);
                text_of(r, "peak", NULL, peak, sizeof peak);
                printf("%-24s %-24s %-32s %10s %10s %10s %12s %6s\n", host,
                       when, path, adm, rej, sh, cost, peak);
            }
        }
    }
    const msgpack_object *t = wire_map_get(res, "truncated");
    if (t != NULL && t->type == MSGPACK_OBJECT_BOOLEAN && t->via.boolean) {
        printf("(more rules than one reply holds: narrow with PATH or "
               "--host)\n");
    }
}

static int cmd_usage(struct cli *cli)
{
    if (cli->n_pos > 2) {
        return fail(ALLOT_EINVALID, "usage: usage [PATH] [--host NAME]");
    }
    struct usage_args a = {.prefix = cli->n_pos == 2 ? cli->pos[1] : "",
                           .host = cli->host};
    return call_and_print(cli, "usage.ls", pack_usage, &a, print_usage_windows);
}

static bool flag_of(const msgpack_object *m, const char *key)
{
    const msgpack_object *o = wire_map_get(m, key);
    return o != NULL && o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean;
}

/* A slot count; UINT64_MAX is no limit. */
static void slots_text(const msgpack_object *m, const char *key, char *buf,
                       size_t size)
{
    const msgpack_object *o = wire_map_get(m, key);
    if (o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
        o->via.u64 == UINT64_MAX) {
        snprintf(buf, size, "-");
    } else {
        text_of(m, key, NULL, buf, size);
    }
}

static void print_share(const msgpack_object *res)
{
    char path[300], kind[16], fleet[80], share[32], a[32], b[32], c[32], d[32];
    text_of(res, "path", NULL, path, sizeof path);
    text_of(res, "kind", NULL, kind, sizeof kind);
    text_of(res, "fleet", NULL, fleet, sizeof fleet);
    text_of(res, "share", NULL, share, sizeof share);
    bool rate = strcmp(kind, "rate") == 0;
    if (rate) {
        text_of(res, "rate", NULL, a, sizeof a);
        text_of(res, "burst", NULL, b, sizeof b);
        printf("%s: rate %s/s, burst %s, share %s, fleet %s\n", path, a, b,
               share, fleet);
    } else {
        printf("%s: capacity, %s, fleet %s\n", path, share, fleet);
    }
    const msgpack_object *v = wire_map_get(res, "view");
    uint64_t view = v != NULL && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                        ? v->via.u64
                        : 0;
    text_of(res, "members", NULL, a, sizeof a);
    text_of(res, "suspect", NULL, b, sizeof b);
    text_of(res, "known", NULL, c, sizeof c);
    printf("this node's view %08" PRIx64 ": %s members (%s suspect), %s "
           "known\n",
           view, a, b, c);
    if (rate) {
        printf("%-24s %-21s %-8s %7s %10s %10s %6s %-8s %s\n", "HOST", "ADDR",
               "STATE", "WEIGHT", "DEMAND", "PART/S", "BURST", "VIEW", "NOTE");
    } else {
        printf("%-24s %-21s %-8s %7s %8s %10s %8s %-8s %s\n", "HOST", "ADDR",
               "STATE", "WEIGHT", "APPS", "MEMORY_MB", "VCORES", "VIEW",
               "NOTE");
    }
    const msgpack_object *hs = wire_map_get(res, "hosts");
    for (uint32_t i = 0; hs != NULL && hs->type == MSGPACK_OBJECT_ARRAY &&
                         i < hs->via.array.size;
         i++) {
        const msgpack_object *h = &hs->via.array.ptr[i];
        char name[80], addr[32], st[16], w[32], hv[16];
        text_of(h, "name", NULL, name, sizeof name);
        text_of(h, "addr", NULL, addr, sizeof addr);
        text_of(h, "state", NULL, st, sizeof st);
        text_of(h, "weight", NULL, w, sizeof w);
        const msgpack_object *x = wire_map_get(h, "host_view");
        snprintf(hv, sizeof hv, "%08" PRIx64,
                 x != NULL && x->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                     ? x->via.u64
                     : 0);
        /* What the host enforces may differ from the part computed here:
         * say why. */
        const char *note = flag_of(h, "probation")    ? "probation (floor)"
                           : flag_of(h, "holding")    ? "holding its last part"
                           : !flag_of(h, "same_view") ? "other view"
                                                      : "";
        if (rate) {
            text_of(h, "demand", NULL, a, sizeof a);
            text_of(h, "part", NULL, b, sizeof b);
            text_of(h, "part_burst", NULL, c, sizeof c);
            printf("%-24s %-21s %-8s %7s %10s %10s %6s %-8s %s\n", name, addr,
                   st, w, a, b, c, hv, note);
        } else {
            slots_text(h, "max_apps", a, sizeof a);
            slots_text(h, "max_memory_mb", b, sizeof b);
            slots_text(h, "max_vcores", d, sizeof d);
            printf("%-24s %-21s %-8s %7s %8s %10s %8s %-8s %s\n", name, addr,
                   st, w, a, b, d, hv, note);
        }
    }
}

static int cmd_share(struct cli *cli)
{
    const char *sub = cli->n_pos > 1 ? cli->pos[1] : "";
    if (strcmp(sub, "show") != 0 || cli->n_pos != 3) {
        return fail(ALLOT_EINVALID, "usage: share show PATH [-o json]");
    }
    struct path_args a = {.path = cli->pos[2], .cli = cli};
    return call_and_print(cli, "share.show", pack_path, &a, print_share);
}

static int cmd_gossip(struct cli *cli)
{
    const char *sub = cli->n_pos > 1 ? cli->pos[1] : "";
    struct allot_reply rep;
    int rv;
    if (strcmp(sub, "members") == 0) {
        if (cli->n_pos != 2) {
            return fail(ALLOT_EINVALID, "usage: gossip members [-o json]");
        }
        return call_and_print(cli, "gossip.members", NULL, NULL,
                              print_gossip_members);
    }
    if (strcmp(sub, "keys") != 0) {
        return fail(ALLOT_EINVALID,
                    "unknown gossip command \"%s\" (members, keys, keygen)",
                    sub);
    }
    struct gossip_keys_args a = {
        .action = cli->n_pos > 2 ? cli->pos[2] : "",
        .key = cli->n_pos > 3 ? cli->pos[3] : NULL,
    };
    bool list = strcmp(a.action, "list") == 0;
    bool change = strcmp(a.action, "install") == 0 ||
                  strcmp(a.action, "use") == 0 ||
                  strcmp(a.action, "remove") == 0;
    if (!(list && cli->n_pos == 3) && !(change && cli->n_pos == 4)) {
        return fail(ALLOT_EINVALID, "usage: gossip keys list | gossip keys "
                                    "install|use|remove KEY");
    }
    rv = call(cli, "gossip.keys", pack_gossip_keys, &a, &rep);
    if (rv != 0) {
        return rv;
    }
    const msgpack_object *r = rep.result;
    char status[32], asked[24], acks[24], errors[24], err[256];
    text_of(r, "status", NULL, status, sizeof status);
    text_of(r, "asked", NULL, asked, sizeof asked);
    text_of(r, "acks", NULL, acks, sizeof acks);
    text_of(r, "errors", NULL, errors, sizeof errors);
    text_of(r, "error", NULL, err, sizeof err);
    /* Partial answers are answers, but not success: a rotation step must
     * reach every member before the next one. */
    bool complete = strcmp(status, "ok") == 0;
    if (cli->json) {
        print_object_json(r);
    } else {
        printf("%s: %s of %s members answered, %s refused%s%s\n", a.action,
               acks, asked, errors, strcmp(errors, "0") != 0 ? ": " : "",
               strcmp(errors, "0") != 0 ? err : "");
        const msgpack_object *ks = wire_map_get(r, "keys");
        if (list && ks != NULL && ks->type == MSGPACK_OBJECT_ARRAY) {
            printf("%-44s %-8s %s\n", "KEY", "MEMBERS", "PRIMARY_ON");
            for (uint32_t i = 0; i < ks->via.array.size; i++) {
                const msgpack_object *k = &ks->via.array.ptr[i];
                char key[64], members[24], primary[24];
                text_of(k, "key", NULL, key, sizeof key);
                text_of(k, "members", NULL, members, sizeof members);
                text_of(k, "primary", NULL, primary, sizeof primary);
                printf("%-44s %-8s %s\n", key, members, primary);
            }
        }
    }
    allot_reply_destroy(&rep);
    if (!complete) {
        fprintf(stderr,
                "error: %s: not every member answered; rerun before "
                "the next rotation step\n",
                status);
        return 1;
    }
    return 0;
}

/* capacity ---------------------------------------------------------------- */

struct capacity_args
{
    bool has[2];
    uint64_t v[2];
};

static void pack_capacity(msgpack_packer *pk, void *arg)
{
    static const char *const names[2] = {"memory_mb", "vcores"};
    struct capacity_args *a = arg;
    msgpack_pack_map(pk, (a->has[0] ? 1u : 0u) + (a->has[1] ? 1u : 0u));
    for (int i = 0; i < 2; i++) {
        if (a->has[i]) {
            wire_pack_kv_u64(pk, names[i], a->v[i]);
        }
    }
}

static int cmd_capacity(struct cli *cli)
{
    const char *sub = cli->n_pos > 1 ? cli->pos[1] : "";
    struct allot_reply rep;
    int rv;
    if (strcmp(sub, "set") == 0) {
        struct capacity_args a = {0};
        if (cli->n_pos < 3) {
            return fail(ALLOT_EINVALID,
                        "usage: capacity set [memory_mb=N] [vcores=N]");
        }
        for (int i = 2; i < cli->n_pos; i++) {
            const char *kv = cli->pos[i];
            int which = strncmp(kv, "memory_mb=", 10) == 0 ? 0
                        : strncmp(kv, "vcores=", 7) == 0   ? 1
                                                           : -1;
            if (which < 0) {
                return fail(ALLOT_EINVALID,
                            "\"%s\": expected memory_mb=N or vcores=N", kv);
            }
            const char *val = strchr(kv, '=') + 1;
            char *end;
            errno = 0;
            unsigned long long v = strtoull(val, &end, 10);
            if (val[0] < '0' || val[0] > '9' || *end != '\0' || errno != 0) {
                return fail(ALLOT_EINVALID,
                            "\"%s\": the value must be a whole number", kv);
            }
            a.has[which] = true;
            a.v[which] = v;
        }
        rv = call(cli, "capacity.set", pack_capacity, &a, &rep);
    } else if (strcmp(sub, "get") == 0 && cli->n_pos == 2) {
        rv = call(cli, "capacity.get", NULL, NULL, &rep);
    } else {
        return fail(ALLOT_EINVALID,
                    "usage: capacity set [memory_mb=N] [vcores=N] | capacity "
                    "get");
    }
    if (rv != 0) {
        return rv;
    }
    if (cli->json) {
        print_object_json(rep.result);
    } else if (strcmp(sub, "set") == 0) {
        char v[32];
        text_of(rep.result, "version", NULL, v, sizeof v);
        printf("capacity set (catalog version %s)\n", v);
    } else {
        print_kv(rep.result, "");
    }
    allot_reply_destroy(&rep);
    return 0;
}

/* audit ------------------------------------------------------------------- */

/* "30s", "15m", "2h", "7d" in milliseconds; -1 if malformed. */
static long long parse_duration_ms(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || errno != 0 || end[0] == '\0' ||
        end[1] != '\0' || v > 100000000) {
        return -1;
    }
    switch (end[0]) {
    case 's':
        return v * 1000;
    case 'm':
        return v * 60 * 1000;
    case 'h':
        return v * 3600 * 1000;
    case 'd':
        return v * 24 * 3600 * 1000;
    default:
        return -1;
    }
}

/* --since: epoch ms, RFC 3339 UTC, or a duration ago. -1 if malformed. */
static long long parse_time_ms(const char *s)
{
    size_t len = strlen(s);
    if (len > 0 && strspn(s, "0123456789") == len) {
        return strtoll(s, NULL, 10);
    }
    long long d = parse_duration_ms(s);
    if (d >= 0) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        long long ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
        return ms > d ? ms - d : 0;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (rest == NULL || (rest[0] != '\0' && strcmp(rest, "Z") != 0)) {
        return -1;
    }
    return (long long)timegm(&tm) * 1000;
}

static void fmt_time_ms(uint64_t ms, char *buf, size_t size)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* A value flattened to name=text pairs (nested maps as group.key). */
struct flat
{
    unsigned n;
    char name[48][64];
    char val[48][64];
};

static void flatten(const msgpack_object *m, const char *prefix, struct flat *f)
{
    if (m == NULL || m->type != MSGPACK_OBJECT_MAP) {
        return;
    }
    for (uint32_t i = 0; i < m->via.map.size && f->n < 48; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        const msgpack_object *v = &m->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR) {
            continue;
        }
        char name[64];
        snprintf(name, sizeof name, "%s%s%.*s", prefix, prefix[0] ? "." : "",
                 (int)k->via.str.size, k->via.str.ptr);
        if (strcmp(name, "version") == 0 || strcmp(name, "path") == 0 ||
            strcmp(name, "created_ms") == 0 ||
            strcmp(name, "updated_ms") == 0) {
            continue;
        }
        if (v->type == MSGPACK_OBJECT_MAP) {
            flatten(v, name, f);
            continue;
        }
        snprintf(f->name[f->n], sizeof f->name[0], "%s", name);
        scalar_text(v, f->val[f->n], sizeof f->val[0]);
        f->n++;
    }
}

/* "rate 100->150, burst 100->200", or the new value's fields. */
static void change_summary(const msgpack_object *old_v,
                           const msgpack_object *new_v, char *buf, size_t size)
{
    struct flat a = {0}, b = {0};
    flatten(old_v, "", &a);
    flatten(new_v, "", &b);
    size_t off = 0;
    buf[0] = '\0';
    if (new_v == NULL || new_v->type == MSGPACK_OBJECT_NIL) {
        snprintf(buf, size, "removed");
        return;
    }
    bool created = old_v == NULL || old_v->type == MSGPACK_OBJECT_NIL;
    for (unsigned i = 0; i < b.n && off < size; i++) {
        const char *before = NULL;
        for (unsigned j = 0; j < a.n; j++) {
            if (strcmp(a.name[j], b.name[i]) == 0) {
                before = a.val[j];
            }
        }
        if (before != NULL && strcmp(before, b.val[i]) == 0) {
            continue;
        }
        if (before != NULL && strcmp(before, "-") == 0) {
            before = NULL; /* was unset: show the new value alone */
        }
        int w = created || before == NULL
                    ? snprintf(buf + off, size - off, "%s%s=%s", off ? " " : "",
                               b.name[i], b.val[i])
                    : snprintf(buf + off, size - off, "%s%s %s->%s",
                               off ? ", " : "", b.name[i], before, b.val[i]);
        off += w > 0 ? (size_t)w : 0;
    }
    for (unsigned j = 0; !created && j < a.n && off < size; j++) {
        bool kept = false;
        for (unsigned i = 0; i < b.n; i++) {
            kept |= strcmp(a.name[j], b.name[i]) == 0;
        }
        if (!kept) {
            int w = snprintf(buf + off, size - off, "%s%s removed",
                             off ? ", " : "", a.name[j]);
            off += w > 0 ? (size_t)w : 0;
        }
    }
    if (buf[0] == '\0') {
        snprintf(buf, size, "no field changed");
    }
}

struct audit_args
{
    const char *prefix;
    const char *principal;
    long long since_ms;
    uint64_t after;
};

static void pack_audit(msgpack_packer *pk, void *arg)
{
    struct audit_args *a = arg;
    msgpack_pack_map(pk, a->principal != NULL ? 5 : 4);
    wire_pack_kv_str(pk, "prefix", a->prefix);
    wire_pack_kv_u64(pk, "since_ms", (uint64_t)a->since_ms);
    wire_pack_kv_u64(pk, "after", a->after);
    wire_pack_kv_u64(pk, "limit", 1000);
    if (a->principal != NULL) {
        wire_pack_kv_str(pk, "principal", a->principal);
    }
}

static int cmd_audit(struct cli *cli)
{
    if (cli->n_pos > 2) {
        return fail(ALLOT_EINVALID,
                    "usage: audit [PREFIX] [--since TIME] [--principal NAME]");
    }
    struct audit_args a = {.prefix = cli->n_pos == 2 ? cli->pos[1] : "",
                           .principal = cli->principal};
    if (a.prefix[0] != '\0') {
        int rv = check_path(a.prefix);
        if (rv != 0) {
            return rv;
        }
    }
    if (cli->since != NULL) {
        a.since_ms = parse_time_ms(cli->since);
        if (a.since_ms < 0) {
            return fail(ALLOT_EINVALID,
                        "--since \"%s\": expected 2026-11-23T10:00:00Z, "
                        "milliseconds since the epoch, or a duration ago "
                        "such as 15m, 2h, 7d",
                        cli->since);
        }
    }
    json_t *all = json_array();
    if (!cli->json) {
        printf("%-8s %-20s %-16s %-13s %-28s %s\n", "VERSION", "TIME",
               "PRINCIPAL", "OP", "PATH", "CHANGE");
    }
    for (;;) {
        struct allot_reply rep;
        int rv = call(cli, "audit.ls", pack_audit, &a, &rep);
        if (rv != 0) {
            json_decref(all);
            return rv;
        }
        const msgpack_object *recs = wire_map_get(rep.result, "records");
        for (uint32_t i = 0;
             recs != NULL && recs->type == MSGPACK_OBJECT_ARRAY &&
             i < recs->via.array.size;
             i++) {
            const msgpack_object *r = &recs->via.array.ptr[i];
            if (cli->json) {
                json_array_append_new(all, wire_to_json(r));
                continue;
            }
            char ver[24], who[66], op[24], path[QUOTA_PATH_MAX + 1], when[32],
                change[512];
            const msgpack_object *t = wire_map_get(r, "time_ms");
            text_of(r, "version", NULL, ver, sizeof ver);
            text_of(r, "principal", NULL, who, sizeof who);
            text_of(r, "op", NULL, op, sizeof op);
            text_of(r, "path", NULL, path, sizeof path);
            fmt_time_ms(t != NULL && t->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                            ? t->via.u64
                            : 0,
                        when, sizeof when);
            change_summary(wire_map_get(r, "old"), wire_map_get(r, "new"),
                           change, sizeof change);
            printf("%-8s %-20s %-16s %-13s %-28s %s\n", ver, when, who, op,
                   path[0] ? path : "(cluster)", change);
        }
        const msgpack_object *next = wire_map_get(rep.result, "next");
        bool again =
            next != NULL && next->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
        if (again) {
            a.after = next->via.u64;
        }
        allot_reply_destroy(&rep);
        if (!again) {
            break;
        }
    }
    if (cli->json) {
        json_t *doc = json_object();
        json_object_set_new(doc, "records", all);
        print_json(doc);
        json_decref(doc);
    } else {
        json_decref(all);
    }
    return 0;
}

struct retention_args
{
    bool has_records, has_age;
    uint64_t records, age_ms;
};

static void pack_retention(msgpack_packer *pk, void *arg)
{
    struct retention_args *a = arg;
    msgpack_pack_map(pk, (a->has_records ? 1u : 0u) + (a->has_age ? 1u : 0u));
    if (a->has_records) {
        wire_pack_kv_u64(pk, "max_records", a->records);
    }
    if (a->has_age) {
        wire_pack_kv_u64(pk, "max_age_ms", a->age_ms);
    }
}

static void pack_audit_head(msgpack_packer *pk, void *arg)
{
    (void)arg;
    msgpack_pack_map(pk, 2);
    wire_pack_kv_u64(pk, "limit", 1);
    wire_pack_kv_u64(pk, "after", UINT64_MAX);
}

static int cmd_audit_retention(struct cli *cli)
{
    struct retention_args a = {0};
    for (int i = 1; i < cli->n_pos; i++) {
        const char *kv = cli->pos[i];
        if (strncmp(kv, "max_records=", 12) == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(kv + 12, &end, 10);
            if (kv[12] < '0' || kv[12] > '9' || *end != '\0' || errno != 0 ||
                v > 10000000) {
                return fail(ALLOT_EINVALID,
                            "max_records must be a whole number from 0 to "
                            "10000000");
            }
            a.has_records = true;
            a.records = v;
        } else if (strncmp(kv, "max_age=", 8) == 0) {
            long long ms = parse_duration_ms(kv + 8);
            if (ms < 0) {
                return fail(ALLOT_EINVALID,
                            "max_age must be a duration such as 30s, 15m, "
                            "12h, 30d");
            }
            a.has_age = true;
            a.age_ms = (uint64_t)ms;
        } else {
            return fail(ALLOT_EINVALID,
                        "\"%s\": expected max_records=N or max_age=DURATION",
                        kv);
        }
    }
    struct allot_reply rep;
    bool set = a.has_records || a.has_age;
    int rv = set ? call(cli, "audit.config", pack_retention, &a, &rep)
                 : call(cli, "audit.ls", pack_audit_head, NULL, &rep);
    if (rv != 0) {
        return rv;
    }
    if (cli->json) {
        json_t *j = wire_to_json(rep.result);
        if (!set) {
            json_object_del(j, "records");
            json_object_del(j, "more");
            json_object_del(j, "next");
        }
        print_json(j);
        json_decref(j);
    } else if (set) {
        char v[32];
        text_of(rep.result, "version", NULL, v, sizeof v);
        printf("audit retention set (catalog version %s)\n", v);
    } else {
        char r[32], age[32];
        text_of(rep.result, "max_records", NULL, r, sizeof r);
        text_of(rep.result, "max_age_ms", NULL, age, sizeof age);
        printf("max_records %s\nmax_age_ms  %s\n", r, age);
    }
    allot_reply_destroy(&rep);
    return 0;
}

/* identity, principal, group ---------------------------------------------- */

static int cmd_identity(struct cli *cli)
{
    const char *sub = cli->n_pos > 1 ? cli->pos[1] : "";
    char msg[ALLOT_ERRMSG_SIZE];
    struct auth_identity id;
    if (strcmp(sub, "new") == 0 && cli->n_pos == 3) {
        if (cli->out == NULL) {
            return fail(ALLOT_EINVALID, "usage: identity new NAME --out FILE");
        }
        int rv = auth_identity_new(cli->pos[2], &id, msg);
        if (rv == 0) {
            rv = auth_identity_save(&id, cli->out, msg);
        }
        char hex[65];
        auth_pubkey_hex(id.pk, hex);
        sodium_memzero(&id, sizeof id);
        if (rv != 0) {
            return fail(rv, "%s", msg);
        }
        if (cli->json) {
            printf("{\"name\": \"%s\", \"pubkey\": \"%s\", \"file\": \"%s\"}\n",
                   cli->pos[2], hex, cli->out);
        } else {
            printf("identity %s written to %s (mode 0600)\npublic key %s\n",
                   cli->pos[2], cli->out, hex);
        }
        return 0;
    }
    if (strcmp(sub, "pubkey") == 0 && cli->n_pos == 3) {
        int rv = auth_identity_load(cli->pos[2], &id, msg);
        if (rv != 0) {
            return fail(rv, "%s", msg);
        }
        char hex[65];
        auth_pubkey_hex(id.pk, hex);
        sodium_memzero(&id, sizeof id);
        puts(hex);
        return 0;
    }
    return fail(ALLOT_EINVALID,
                "usage: identity new NAME --out FILE | identity pubkey FILE");
}

struct name_args
{
    struct cli *cli;
    const char *name;
    unsigned char pk[AUTH_PUBKEY_LEN];
    bool with_key;
    bool with_members;
};

static void pack_name(msgpack_packer *pk, void *arg)
{
    struct name_args *a = arg;
    msgpack_pack_map(pk, 1u + (a->with_key ? 2u : 0u) +
                             (a->with_members ? 1u : 0u));
    wire_pack_kv_str(pk, "name", a->name);
    if (a->with_key) {
        char hex[65];
        auth_pubkey_hex(a->pk, hex);
        wire_pack_kv_str(pk, "pubkey", hex);
        wire_pack_str(pk, "admin");
        if (a->cli->admin) {
            msgpack_pack_true(pk);
        } else {
            msgpack_pack_false(pk);
        }
    }
    if (a->with_members) {
        wire_pack_str(pk, "members");
        msgpack_pack_array(pk, a->cli->n_members);
        for (uint32_t i = 0; i < a->cli->n_members; i++) {
            wire_pack_str(pk, a->cli->members[i]);
        }
    }
}

/* principal add|rm|ls and group add|rm|ls. */
static int cmd_access(struct cli *cli, bool group)
{
    const char *what = group ? "group" : "principal";
    const char *sub = cli->n_pos > 1 ? cli->pos[1] : "";
    struct name_args a = {.cli = cli};
    struct allot_reply rep;
    char op[32];
    char msg[ALLOT_ERRMSG_SIZE];
    int rv;
    if (strcmp(sub, "ls") == 0 && cli->n_pos == 2) {
        snprintf(op, sizeof op, "%s.ls", what);
        rv = call(cli, op, NULL, NULL, &rep);
        if (rv != 0) {
            return rv;
        }
        if (cli->json) {
            print_object_json(rep.result);
        } else {
            printf(group ? "%-24s %s\n" : "%-24s %-6s %s\n", "NAME",
                   group ? "MEMBERS" : "ADMIN", group ? "" : "PUBKEY");
            for (uint32_t i = 0; rep.result != NULL &&
                                 rep.result->type == MSGPACK_OBJECT_ARRAY &&
                                 i < rep.result->via.array.size;
                 i++) {
                const msgpack_object *m = &rep.result->via.array.ptr[i];
                char name[80], b[80], c[520];
                text_of(m, "name", NULL, name, sizeof name);
                if (group) {
                    text_of(m, "members", NULL, c, sizeof c);
                    printf("%-24s %s\n", name, c);
                } else {
                    text_of(m, "admin", NULL, b, sizeof b);
                    text_of(m, "pubkey", NULL, c, sizeof c);
                    printf("%-24s %-6s %s\n", name, b, c);
                }
            }
        }
        allot_reply_destroy(&rep);
        return 0;
    }
    if (cli->n_pos != 3 ||
        (strcmp(sub, "add") != 0 && strcmp(sub, "rm") != 0)) {
        return fail(ALLOT_EINVALID,
                    group ? "usage: group add GROUP --member NAME... | group "
                            "rm GROUP | group ls"
                          : "usage: principal add NAME --pubkey HEX [--admin] "
                            "| principal rm NAME | principal ls");
    }
    a.name = cli->pos[2];
    if (strcmp(sub, "add") == 0 && !group) {
        if (cli->pubkey == NULL) {
            return fail(ALLOT_EINVALID, "principal add needs --pubkey HEX");
        }
        if (auth_pubkey_parse(cli->pubkey, a.pk, msg) != 0) {
            return fail(ALLOT_EINVALID, "%s", msg);
        }
        a.with_key = true;
    }
    if (strcmp(sub, "add") == 0 && group) {
        if (cli->n_members == 0) {
            return fail(ALLOT_EINVALID, "group add needs --member NAME");
        }
        a.with_members = true;
    }
    snprintf(op, sizeof op, "%s.%s", what, sub);
    rv = call(cli, op, pack_name, &a, &rep);
    if (rv != 0) {
        return rv;
    }
    if (cli->json) {
        print_object_json(rep.result);
    } else {
        char v[32];
        text_of(rep.result, "version", NULL, v, sizeof v);
        printf("%s %s %s (catalog version %s)\n",
               strcmp(sub, "add") == 0 ? "added" : "removed", what, a.name, v);
    }
    allot_reply_destroy(&rep);
    return 0;
}

/* quota watch -------------------------------------------------------------- */

static int print_change(void *arg, const msgpack_object *r)
{
    struct cli *cli = arg;
    if (cli->json) {
        /* One JSON document per line: a stream has no end to wait for. */
        json_t *j = wire_to_json(r);
        char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (s != NULL) {
            puts(s);
            free(s);
        }
        json_decref(j);
    } else {
        char ver[24], who[66], op[24], path[QUOTA_PATH_MAX + 1], when[32],
            change[512];
        const msgpack_object *t = wire_map_get(r, "time_ms");
        text_of(r, "version", NULL, ver, sizeof ver);
        text_of(r, "principal", NULL, who, sizeof who);
        text_of(r, "op", NULL, op, sizeof op);
        text_of(r, "path", NULL, path, sizeof path);
        fmt_time_ms(t != NULL && t->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                        ? t->via.u64
                        : 0,
                    when, sizeof when);
        change_summary(wire_map_get(r, "old"), wire_map_get(r, "new"), change,
                       sizeof change);
        printf("%-8s %-20s %-16s %-13s %-28s %s\n", ver, when, who, op,
               path[0] ? path : "(cluster)", change);
    }
    fflush(stdout);
    return cli->count > 0 && --cli->count == 0;
}

static int cmd_quota_watch(struct cli *cli)
{
    if (cli->n_pos > 3) {
        return fail(ALLOT_EINVALID,
                    "usage: quota watch [PREFIX] [--from-version V] "
                    "[--count N]");
    }
    const char *prefix = cli->n_pos == 3 ? cli->pos[2] : "";
    if (prefix[0] != '\0') {
        int rv = check_path(prefix);
        if (rv != 0) {
            return rv;
        }
    }
    struct allot_reply rep;
    int rv = allot_client_watch(
        cli->client, prefix, cli->has_from_version ? &cli->from_version : NULL,
        print_change, cli, NULL, &rep);
    if (rv != 0) {
        fail(rv, "%s", rep.message[0] ? rep.message : allot_strerror(rv));
        allot_reply_destroy(&rep);
        return 1;
    }
    allot_reply_destroy(&rep);
    return 0;
}

/* token -------------------------------------------------------------------- */

struct token_args
{
    const char *name;
    unsigned char hash[32];
    uint64_t ttl_ms;
    const char *id;
};

static void pack_token_create(msgpack_packer *pk, void *arg)
{
    struct token_args *a = arg;
    msgpack_pack_map(pk, 3);
    wire_pack_kv_str(pk, "name", a->name);
    wire_pack_str(pk, "hash");
    msgpack_pack_bin(pk, 32);
    msgpack_pack_bin_body(pk, a->hash, 32);
    wire_pack_kv_u64(pk, "ttl_ms", a->ttl_ms);
}

static void pack_token_id(msgpack_packer *pk, void *arg)
{
    struct token_args *a = arg;
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "id", a->id);
}

static int cmd_token(struct cli *cli)
{
    const char *sub = cli->n_pos > 1 ? cli->pos[1] : "";
    struct token_args a = {0};
    struct allot_reply rep;
    int rv;
    if (strcmp(sub, "create") == 0 && cli->n_pos == 2) {
        if (cli->principal == NULL) {
            return fail(ALLOT_EINVALID,
                        "usage: token create --principal NAME [--ttl 30d]");
        }
        long long ttl = parse_duration_ms(cli->ttl != NULL ? cli->ttl : "30d");
        if (ttl <= 0) {
            return fail(ALLOT_EINVALID,
                        "--ttl must be a duration such as 12h or 30d");
        }
        /* The token is made here and only its hash leaves this process: the
         * cluster can check it but never show it again. */
        unsigned char raw[32];
        char token[8 + 65];
        randombytes_buf(raw, sizeof raw);
        memcpy(token, "allot_", 6);
        sodium_bin2hex(token + 6, 65, raw, sizeof raw);
        crypto_generichash(a.hash, sizeof a.hash, (unsigned char *)token,
                           strlen(token), NULL, 0);
        a.name = cli->principal;
        a.ttl_ms = (uint64_t)ttl;
        rv = call(cli, "token.create", pack_token_create, &a, &rep);
        if (rv != 0) {
            sodium_memzero(token, sizeof token);
            return rv;
        }
        char id[17], expires[32];
        sodium_bin2hex(id, sizeof id, a.hash, 8);
        const msgpack_object *e = wire_map_get(rep.result, "expires_ms");
        fmt_time_ms(e != NULL && e->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                        ? e->via.u64
                        : 0,
                    expires, sizeof expires);
        if (cli->json) {
            printf("{\"token\": \"%s\", \"id\": \"%s\", \"principal\": \"%s\", "
                   "\"expires\": \"%s\"}\n",
                   token, id, a.name, expires);
        } else {
            printf("%s\n# id %s, principal %s, expires %s; shown once: keep "
                   "it secret\n",
                   token, id, a.name, expires);
        }
        sodium_memzero(token, sizeof token);
        allot_reply_destroy(&rep);
        return 0;
    }
    if (strcmp(sub, "revoke") == 0 && cli->n_pos == 3) {
        a.id = cli->pos[2];
        rv = call(cli, "token.revoke", pack_token_id, &a, &rep);
        if (rv != 0) {
            return rv;
        }
        printf("revoked token %s\n", a.id);
        allot_reply_destroy(&rep);
        return 0;
    }
    if (strcmp(sub, "ls") == 0 && cli->n_pos == 2) {
        rv = call(cli, "token.ls", NULL, NULL, &rep);
        if (rv != 0) {
            return rv;
        }
        if (cli->json) {
            print_object_json(rep.result);
        } else {
            printf("%-18s %-24s %s\n", "ID", "PRINCIPAL", "EXPIRES");
            for (uint32_t i = 0; rep.result != NULL &&
                                 rep.result->type == MSGPACK_OBJECT_ARRAY &&
                                 i < rep.result->via.array.size;
                 i++) {
                const msgpack_object *m = &rep.result->via.array.ptr[i];
                const msgpack_object *e = wire_map_get(m, "expires_ms");
                char id[24], who[80], when[32];
                text_of(m, "id", NULL, id, sizeof id);
                text_of(m, "principal", NULL, who, sizeof who);
                fmt_time_ms(e != NULL &&
                                    e->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                                ? e->via.u64
                                : 0,
                            when, sizeof when);
                printf("%-18s %-24s %s\n", id, who, when);
            }
        }
        allot_reply_destroy(&rep);
        return 0;
    }
    return fail(ALLOT_EINVALID,
                "usage: token create --principal NAME [--ttl 30d] | token "
                "revoke ID | token ls");
}

/* validator ------------------------------------------------------------------
 */

static void pack_validator_add(msgpack_packer *pk, void *arg)
{
    struct cli *cli = arg;
    msgpack_pack_map(pk, 5);
    wire_pack_kv_str(pk, "name", cli->pos[2]);
    wire_pack_kv_str(pk, "prefix", cli->prefix);
    if (cli->exec != NULL) {
        wire_pack_kv_str(pk, "exec", cli->exec);
    } else {
        wire_pack_kv_str(pk, "url", cli->url);
    }
    /* Here --timeout-ms is the validator's, not this request's. */
    wire_pack_kv_u64(pk, "timeout_ms",
                     cli->timeout_given ? (uint64_t)cli->timeout_ms : 2000);
    wire_pack_str(pk, "fail_open");
    if (cli->fail_open) {
        msgpack_pack_true(pk);
    } else {
        msgpack_pack_false(pk);
    }
}

static void pack_validator_rm(msgpack_packer *pk, void *arg)
{
    struct cli *cli = arg;
    msgpack_pack_map(pk, 1);
    wire_pack_kv_str(pk, "name", cli->pos[2]);
}

static int cmd_validator(struct cli *cli)
{
    const char *sub = cli->n_pos > 1 ? cli->pos[1] : "";
    struct allot_reply rep;
    int rv;
    if (strcmp(sub, "add") == 0 && cli->n_pos == 3) {
        if (cli->prefix == NULL || (cli->exec == NULL) == (cli->url == NULL)) {
            return fail(ALLOT_EINVALID,
                        "usage: validator add NAME --prefix PATH_PREFIX "
                        "(--exec COMMAND | --url http://HOST:PORT/PATH) "
                        "[--timeout-ms N] [--fail-open]");
        }
        rv = call(cli, "validator.add", pack_validator_add, cli, &rep);
    } else if (strcmp(sub, "rm") == 0 && cli->n_pos == 3) {
        rv = call(cli, "validator.rm", pack_validator_rm, cli, &rep);
    } else if (strcmp(sub, "ls") == 0 && cli->n_pos == 2) {
        rv = call(cli, "validator.ls", NULL, NULL, &rep);
        if (rv != 0) {
            return rv;
        }
        if (cli->json) {
            print_object_json(rep.result);
        } else {
            printf("%-16s %-24s %-5s %-8s %-9s %s\n", "NAME", "PREFIX", "KIND",
                   "TIMEOUT", "FAIL_OPEN", "TARGET");
            for (uint32_t i = 0; rep.result != NULL &&
                                 rep.result->type == MSGPACK_OBJECT_ARRAY &&
                                 i < rep.result->via.array.size;
                 i++) {
                const msgpack_object *m = &rep.result->via.array.ptr[i];
                char name[80], prefix[QUOTA_PATH_MAX + 1], kind[8], t[24],
                    fo[8], target[1100];
                text_of(m, "name", NULL, name, sizeof name);
                text_of(m, "prefix", NULL, prefix, sizeof prefix);
                text_of(m, "kind", NULL, kind, sizeof kind);
                text_of(m, "timeout_ms", NULL, t, sizeof t);
                text_of(m, "fail_open", NULL, fo, sizeof fo);
                text_of(m, kind, NULL, target, sizeof target);
                printf("%-16s %-24s %-5s %-8s %-9s %s\n", name,
                       prefix[0] ? prefix : "(all)", kind, t, fo, target);
            }
        }
        allot_reply_destroy(&rep);
        return 0;
    } else {
        return fail(ALLOT_EINVALID,
                    "usage: validator add NAME --prefix PATH_PREFIX (--exec "
                    "COMMAND | --url URL) [--timeout-ms N] [--fail-open] | "
                    "validator rm NAME | validator ls");
    }
    if (rv != 0) {
        return rv;
    }
    printf("%s validator %s\n", strcmp(sub, "add") == 0 ? "added" : "removed",
           cli->pos[2]);
    allot_reply_destroy(&rep);
    return 0;
}

/* --- main
 * ----------------------------------------------------------------------------
 */

static int parse_args(struct cli *cli, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        bool takes =
            strcmp(a, "--endpoints") == 0 || strcmp(a, "-o") == 0 ||
            strcmp(a, "--output") == 0 || strcmp(a, "--timeout-ms") == 0 ||
            strcmp(a, "--if-version") == 0 || strcmp(a, "--identity") == 0 ||
            strcmp(a, "--since") == 0 || strcmp(a, "--principal") == 0 ||
            strcmp(a, "--out") == 0 || strcmp(a, "--pubkey") == 0 ||
            strcmp(a, "--owner") == 0 || strcmp(a, "--remove-owner") == 0 ||
            strcmp(a, "--member") == 0 || strcmp(a, "--from-version") == 0 ||
            strcmp(a, "--count") == 0 || strcmp(a, "--token") == 0 ||
            strcmp(a, "--ttl") == 0 || strcmp(a, "--prefix") == 0 ||
            strcmp(a, "--exec") == 0 || strcmp(a, "--url") == 0 ||
            strcmp(a, "--host") == 0;
        if (takes) {
            if (i + 1 >= argc) {
                return fail(ALLOT_EINVALID, "%s needs a value", a);
            }
            val = argv[++i];
        }
        if (strcmp(a, "--endpoints") == 0) {
            cli->endpoints = val;
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            if (strcmp(val, "json") != 0 && strcmp(val, "text") != 0) {
                return fail(ALLOT_EINVALID, "-o must be json or text");
            }
            cli->json = strcmp(val, "json") == 0;
        } else if (strcmp(a, "--timeout-ms") == 0) {
            char *end;
            long t = strtol(val, &end, 10);
            if (*end != '\0' || t < 1 || t > 3600000) {
                return fail(ALLOT_EINVALID,
                            "--timeout-ms must be from 1 to 3600000");
            }
            cli->timeout_ms = (int)t;
            cli->timeout_given = true;
        } else if (strcmp(a, "--if-version") == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(val, &end, 10);
            if (val[0] == '\0' || val[0] == '-' || *end != '\0' || errno) {
                return fail(ALLOT_EINVALID,
                            "--if-version must be a version number (0 = "
                            "must not exist)");
            }
            cli->has_if_version = true;
            cli->if_version = v;
        } else if (strcmp(a, "--identity") == 0) {
            cli->identity = val;
        } else if (strcmp(a, "--prefix") == 0) {
            cli->prefix = val;
        } else if (strcmp(a, "--exec") == 0) {
            cli->exec = val;
        } else if (strcmp(a, "--url") == 0) {
            cli->url = val;
        } else if (strcmp(a, "--fail-open") == 0) {
            cli->fail_open = true;
        } else if (strcmp(a, "--token") == 0) {
            cli->token = val;
        } else if (strcmp(a, "--ttl") == 0) {
            cli->ttl = val;
        } else if (strcmp(a, "--out") == 0) {
            cli->out = val;
        } else if (strcmp(a, "--pubkey") == 0) {
            cli->pubkey = val;
        } else if (strcmp(a, "--admin") == 0) {
            cli->admin = true;
        } else if (strcmp(a, "--owner") == 0 ||
                   strcmp(a, "--remove-owner") == 0) {
            bool add = strcmp(a, "--owner") == 0;
            if (!quota_owner_valid(val, strlen(val))) {
                return fail(ALLOT_EINVALID,
                            "%s \"%s\": an owner is user:NAME or group:NAME", a,
                            val);
            }
            uint32_t *n = add ? &cli->n_owners_add : &cli->n_owners_rm;
            if (*n == QUOTA_OWNERS_MAX) {
                return fail(ALLOT_EINVALID, "at most %d %s", QUOTA_OWNERS_MAX,
                            a);
            }
            (add ? cli->owners_add : cli->owners_rm)[(*n)++] = val;
        } else if (strcmp(a, "--from-version") == 0 ||
                   strcmp(a, "--count") == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(val, &end, 10);
            if (val[0] < '0' || val[0] > '9' || *end != '\0' || errno != 0) {
                return fail(ALLOT_EINVALID, "%s must be a whole number", a);
            }
            if (a[2] == 'f') {
                cli->has_from_version = true;
                cli->from_version = v;
            } else {
                cli->count = (long long)v;
            }
        } else if (strcmp(a, "--member") == 0) {
            if (cli->n_members == 256) {
                return fail(ALLOT_EINVALID, "at most 256 --member");
            }
            cli->members[cli->n_members++] = val;
        } else if (strcmp(a, "--since") == 0) {
            cli->since = val;
        } else if (strcmp(a, "--principal") == 0) {
            cli->principal = val;
        } else if (strcmp(a, "--host") == 0) {
            cli->host = val;
        } else if (strcmp(a, "--recursive") == 0 || strcmp(a, "-r") == 0) {
            cli->recursive = true;
        } else if (strcmp(a, "--digest") == 0) {
            cli->digest = true;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else if (a[0] == '-' && a[1] != '\0' && strchr(a, '=') == NULL) {
            return fail(ALLOT_EINVALID, "unknown option %s (see --help)", a);
        } else {
            if (cli->n_pos == MAX_POSITIONAL) {
                return fail(ALLOT_EINVALID, "too many arguments");
            }
            cli->pos[cli->n_pos++] = a;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct cli cli = {.timeout_ms = 10000};
    int rv = parse_args(&cli, argc, argv);
    if (rv != 0) {
        return rv;
    }
    if (cli.n_pos == 0) {
        usage(stderr);
        return 2;
    }
    if (cli.endpoints == NULL) {
        cli.endpoints = getenv("ALLOT_ENDPOINTS");
    }
    if (cli.endpoints == NULL || cli.endpoints[0] == '\0') {
        cli.endpoints = ALLOT_DEFAULT_ENDPOINTS;
    }
    const char *group = cli.pos[0];
    if (strcmp(group, "identity") == 0) {
        return cmd_identity(&cli); /* local: no cluster involved */
    }
    if (strcmp(group, "gossip") == 0 && cli.n_pos > 1 &&
        strcmp(cli.pos[1], "keygen") == 0) {
        if (cli.n_pos != 2) {
            return fail(ALLOT_EINVALID, "usage: gossip keygen");
        }
        return gossip_keygen();
    }
    char msg[ALLOT_ERRMSG_SIZE];
    /* validator add takes --timeout-ms for the validator itself. */
    int request_timeout =
        strcmp(group, "validator") == 0 ? 10000 : cli.timeout_ms;
    rv = allot_client_open(cli.endpoints, request_timeout, &cli.client, msg);
    if (rv != 0) {
        return fail(rv, "%s", msg);
    }
    if (cli.identity == NULL) {
        cli.identity = getenv("ALLOT_IDENTITY");
    }
    if (cli.token == NULL) {
        cli.token = getenv("ALLOT_TOKEN");
    }
    if (cli.token != NULL && cli.token[0] != '\0') {
        allot_client_set_token(cli.client, cli.token);
    }
    if (cli.identity != NULL && cli.identity[0] != '\0') {
        struct auth_identity id;
        rv = auth_identity_load(cli.identity, &id, msg);
        if (rv != 0) {
            allot_client_close(cli.client);
            return fail(rv, "%s", msg);
        }
        allot_client_set_identity(cli.client, &id);
        sodium_memzero(&id, sizeof id);
    }
    const char *sub = cli.n_pos > 1 ? cli.pos[1] : "";
    if (strcmp(group, "cluster") == 0) {
        rv = cmd_cluster(&cli);
    } else if (strcmp(group, "quota") == 0) {
        if (strcmp(sub, "set") == 0) {
            rv = cmd_quota_set(&cli);
        } else if (strcmp(sub, "get") == 0) {
            rv = cmd_quota_get(&cli);
        } else if (strcmp(sub, "ls") == 0) {
            rv = cmd_quota_ls(&cli);
        } else if (strcmp(sub, "rm") == 0) {
            rv = cmd_quota_rm(&cli);
        } else if (strcmp(sub, "watch") == 0) {
            rv = cmd_quota_watch(&cli);
        } else {
            rv = fail(ALLOT_EINVALID,
                      "unknown quota command \"%s\" (set, get, ls, rm, watch)",
                      sub);
        }
    } else if (strcmp(group, "capacity") == 0) {
        rv = cmd_capacity(&cli);
    } else if (strcmp(group, "gossip") == 0) {
        rv = cmd_gossip(&cli);
    } else if (strcmp(group, "usage") == 0) {
        rv = cmd_usage(&cli);
    } else if (strcmp(group, "share") == 0) {
        rv = cmd_share(&cli);
    } else if (strcmp(group, "audit") == 0) {
        rv = cmd_audit(&cli);
    } else if (strcmp(group, "token") == 0) {
        rv = cmd_token(&cli);
    } else if (strcmp(group, "validator") == 0) {
        rv = cmd_validator(&cli);
    } else if (strcmp(group, "principal") == 0) {
        rv = cmd_access(&cli, false);
    } else if (strcmp(group, "group") == 0) {
        rv = cmd_access(&cli, true);
    } else if (strcmp(group, "audit-retention") == 0) {
        rv = cmd_audit_retention(&cli);
    } else {
        rv = fail(
            ALLOT_EINVALID,
            "unknown command \"%s\" (cluster, quota, capacity, audit, "
            "audit-retention, identity, principal, group, token, validator, "
            "gossip)",
            group);
    }
    allot_client_close(cli.client);
    return rv;
}
