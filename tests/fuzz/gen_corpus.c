/* gen_corpus.c - write the fuzzer's seed inputs into a directory.
 *
 * One valid example of each thing fuzz_wire.c reads: framed requests and
 * replies, bare msgpack values (a patch, a quota), log entries from
 * fsm_batch_encode() aimed at the target's baseline catalog (every command
 * type, with principals, a recursive removal, refusals by the built-in
 * rules), and a snapshot with capacity and an audit trail.
 * tests/fuzz/run builds and runs it, so the seeds follow format changes;
 * the same files are committed in tests/fuzz/corpus/. */
#include <msgpack.h>
#include <raft.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allot_error.h"
#include "quota.h"
#include "raft_fsm.h"
#include "wire.h"

static const char *dir;

static void die(const char *what)
{
    fprintf(stderr, "gen_corpus: %s\n", what);
    exit(1);
}

static void save(const char *name, const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        die(path);
    }
}

static void patch_parse(struct quota_fields *p, const char *const *kvs)
{
    memset(p, 0, sizeof *p);
    for (; *kvs != NULL; kvs++) {
        char msg[ALLOT_ERRMSG_SIZE];
        if (quota_patch_parse_kv(p, *kvs, msg) != 0) {
            die(msg);
        }
    }
}

static const char *const rate_kvs[] = {
    "rate=250",        "burst=500",       "unit=bytes",
    "fleet=edge-1",    "share=demand",    "per_key=true",
    "on_exceed=delay", "max_delay_ms=20", NULL};
static const char *const cap_kvs[] = {
    "kind=capacity",       "guaranteed.memory_mb=1024",
    "guaranteed.vcores=2", "max.memory_mb=4096",
    "max.vcores=8",        "max_apps=10",
    "on_exceed=shadow",    NULL};

static void pack_patch(msgpack_packer *pk, const struct quota_fields *p)
{
    msgpack_pack_map(pk, quota_fields_pack(NULL, p, true));
    quota_fields_pack(pk, p, true);
}

/* A framed request. */
static void gen_requests(void)
{
    struct quota_fields p;
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    wire_frame_start(&sb, &pk);
    msgpack_pack_map(&pk, 6);
    wire_pack_kv_u64(&pk, "id", 1);
    wire_pack_kv_str(&pk, "op", "quota.set");
    wire_pack_str(&pk, "args");
    msgpack_pack_map(&pk, 3);
    wire_pack_kv_str(&pk, "path", "org/team");
    wire_pack_kv_u64(&pk, "if_version", 0);
    wire_pack_str(&pk, "fields");
    patch_parse(&p, cap_kvs);
    pack_patch(&pk, &p);
    wire_pack_kv_u64(&pk, "client", 77);
    wire_pack_kv_u64(&pk, "seq", 3);
    wire_pack_kv_u64(&pk, "ack", 3);
    wire_frame_finish(&sb);
    save("req_set", sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);

    /* Two frames back to back: a read and a ping. */
    msgpack_sbuffer_init(&sb);
    wire_frame_start(&sb, &pk);
    msgpack_pack_map(&pk, 3);
    wire_pack_kv_u64(&pk, "id", 2);
    wire_pack_kv_str(&pk, "op", "quota.ls");
    wire_pack_str(&pk, "args");
    msgpack_pack_map(&pk, 3);
    wire_pack_kv_str(&pk, "path", "org");
    wire_pack_kv_str(&pk, "after", "org/a");
    wire_pack_kv_u64(&pk, "limit", 100);
    wire_frame_finish(&sb);
    size_t first = sb.size;
    char zero[WIRE_HEADER_LEN] = {0};
    msgpack_sbuffer_write(&sb, zero, sizeof zero);
    msgpack_pack_map(&pk, 3);
    wire_pack_kv_u64(&pk, "id", 3);
    wire_pack_kv_str(&pk, "op", "ping");
    wire_pack_str(&pk, "fwd");
    msgpack_pack_true(&pk);
    wire_frame_header(sb.data + first,
                      (uint32_t)(sb.size - first - WIRE_HEADER_LEN));
    save("req_two_frames", sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* Framed replies, one carrying a whole quota. */
static void gen_replies(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct quota q = {.path = "org/api",
                      .version = 12,
                      .created_ms = 1700000000000ull,
                      .updated_ms = 1700000000500ull};
    char *owners[] = {"user:alice", "group:infra"};
    q.owners = owners;
    q.n_owners = 2;
    struct quota_fields p;
    char msg[ALLOT_ERRMSG_SIZE];
    patch_parse(&p, rate_kvs);
    if (quota_fields_defaults(&p, &q.f, msg) != 0 ||
        quota_fields_merge(&q.f, &p, msg) != 0) {
        die(msg);
    }

    msgpack_sbuffer_init(&sb);
    wire_frame_start(&sb, &pk);
    wire_pack_ok_head(&pk, 4);
    quota_pack(&pk, &q);
    wire_frame_finish(&sb);
    save("rep_quota", sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);

    msgpack_sbuffer_init(&sb);
    wire_frame_start(&sb, &pk);
    wire_pack_error(&pk, 5, ALLOT_ECONFLICT,
                    "quota org/api is at version 12, not 11");
    wire_frame_finish(&sb);
    save("rep_error", sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);

    /* Bare values, no frame. */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    quota_pack(&pk, &q);
    save("quota", sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    patch_parse(&p, cap_kvs);
    pack_patch(&pk, &p);
    save("patch", sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static struct fsm_cmd cmd(enum fsm_cmd_type type, const char *path,
                          uint64_t client, uint64_t seq, uint64_t ack)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = type;
    c.path = path;
    c.path_len = path != NULL ? strlen(path) : 0;
    c.client = client;
    c.seq = seq;
    c.ack = ack;
    return c;
}

static void save_entry(const char *name, const struct fsm_cmd *cmds, unsigned n,
                       uint64_t t)
{
    struct raft_buffer buf;
    if (fsm_batch_encode(cmds, n, t, &buf) != 0) {
        die("fsm_batch_encode");
    }
    save(name, buf.base, buf.len);
    raft_free(buf.base);
}

/* Log entries aimed at fuzz_wire.c's baseline: paths org, org/api,
 * org/batch; clients 7 and 8; a declared capacity. */
static void gen_entries(void)
{
    struct fsm_cmd c[9];
    c[0] = cmd(FSM_CMD_LEADER, NULL, 0, 0, 0);
    c[0].node_id = 2;
    c[0].node_addr = "127.0.0.1:7002";
    c[1] = cmd(FSM_CMD_QUOTA_SET, "org/api", 7, 3, 2);
    patch_parse(&c[1].patch, (const char *const[]){"rate=1000", NULL});
    c[2] = cmd(FSM_CMD_QUOTA_RM, "org/batch", 8, 3, 3);
    c[2].has_if_version = true;
    c[2].if_version = 3;
    /* A parent, then its child; the child's max exceeds org's (refused),
     * the leaf's parent does not exist (refused). */
    c[3] = cmd(FSM_CMD_QUOTA_SET, "org/new", 9, 1, 0);
    patch_parse(&c[3].patch,
                (const char *const[]){"kind=capacity",
                                      "guaranteed.memory_mb=512", NULL});
    c[4] = cmd(FSM_CMD_QUOTA_SET, "org/new/leaf", 9, 2, 0);
    patch_parse(&c[4].patch, cap_kvs);
    c[4].has_if_version = true;
    c[4].if_version = 0;
    c[5] = cmd(FSM_CMD_QUOTA_SET, "org/none/leaf", 9, 3, 0);
    patch_parse(&c[5].patch, (const char *const[]){"max_apps=1", NULL});
    c[6] = cmd(FSM_CMD_QUOTA_SET, "org/api", 7, 2, 2); /* a retry */
    c[6].principal = "alice";
    patch_parse(&c[6].patch, (const char *const[]){"burst=3", NULL});
    c[7] = cmd(FSM_CMD_QUOTA_SET, "org", 0, 0, 0);
    patch_parse(&c[7].patch, (const char *const[]){"kind=rate", NULL});
    /* Rates under a rate parent: the sum is checked. */
    c[8] = cmd(FSM_CMD_QUOTA_SET, "org/api/eu", 7, 4, 3);
    patch_parse(&c[8].patch, (const char *const[]){"rate=0.5", NULL});
    save_entry("entry_batch", c, 9, 1000500);

    /* A retry of client 7's first write (remembered: nothing happens). */
    struct fsm_cmd one = cmd(FSM_CMD_QUOTA_RM, "org", 7, 1, 1);
    one.recursive = true;
    save_entry("entry_retry", &one, 1, 1000600);

    /* Removing org with its subtree (refused without recursive), then the
     * retry of the removal. */
    struct fsm_cmd rm[3];
    rm[0] = cmd(FSM_CMD_QUOTA_RM, "org", 9, 1, 0);
    rm[1] = cmd(FSM_CMD_QUOTA_RM, "org", 9, 2, 0);
    rm[1].recursive = true;
    rm[2] = rm[1];
    save_entry("entry_rm_recursive", rm, 3, 1000650);

    one = cmd(FSM_CMD_QUOTA_SET, "tenant-a", 0, 0, 0);
    patch_parse(&one.patch, rate_kvs);
    save_entry("entry_rate", &one, 1, 1000700 + FSM_SESSION_TTL_MS);

    /* Cluster-wide settings: capacity (one refused below the top level's
     * sum), audit retention. */
    struct fsm_cmd adm[4];
    adm[0] = cmd(FSM_CMD_CAPACITY_SET, NULL, 11, 1, 1);
    adm[0].capacity.has_vcores = true;
    adm[0].capacity.vcores = 64;
    adm[1] = cmd(FSM_CMD_CAPACITY_SET, NULL, 0, 0, 0);
    adm[1].capacity.has_memory_mb = true;
    adm[1].capacity.memory_mb = 1;
    adm[2] = cmd(FSM_CMD_AUDIT_CONFIG, NULL, 11, 2, 2);
    adm[2].audit.has_max_records = true;
    adm[2].audit.max_records = 3;
    adm[3] = cmd(FSM_CMD_AUDIT_CONFIG, NULL, 0, 0, 0);
    adm[3].audit.has_max_age_ms = true;
    adm[3].audit.max_age_ms = 1000;
    save_entry("entry_cluster", adm, 4, 1000800);
}

static void gen_snapshot(void)
{
    struct fsm *f;
    if (fsm_init(&f) != 0) {
        die("fsm_init");
    }
    struct fsm_cmd c[8];
    c[0] = cmd(FSM_CMD_CAPACITY_SET, NULL, 0, 0, 0);
    c[0].capacity.has_memory_mb = true;
    c[0].capacity.memory_mb = 8192;
    c[1] = cmd(FSM_CMD_AUDIT_CONFIG, NULL, 0, 0, 0);
    c[1].audit.has_max_records = true;
    c[1].audit.max_records = 100;
    c[2] = cmd(FSM_CMD_QUOTA_SET, "snap", 5, 1, 0);
    patch_parse(&c[2].patch, cap_kvs);
    c[3] = cmd(FSM_CMD_QUOTA_SET, "snap/rate", 5, 2, 0);
    patch_parse(&c[3].patch, rate_kvs);
    c[4] = cmd(FSM_CMD_QUOTA_SET, "snap/tmp", 5, 3, 0);
    patch_parse(&c[4].patch, (const char *const[]){"max_apps=1", NULL});
    c[5] = cmd(FSM_CMD_QUOTA_RM, "snap/tmp", 6, 1, 0);
    c[5].recursive = true;
    c[6] = cmd(FSM_CMD_QUOTA_RM, "none", 6, 2, 0);
    c[7] = cmd(FSM_CMD_LEADER, NULL, 0, 0, 0);
    c[7].node_id = 3;
    c[7].node_addr = "127.0.0.1:7003";
    struct raft_buffer buf;
    if (fsm_batch_encode(c, 8, 2000000, &buf) != 0) {
        die("fsm_batch_encode");
    }
    void *result;
    if (fsm_raft(f)->apply(fsm_raft(f), &buf, &result) != 0) {
        die("apply");
    }
    raft_free(buf.base);
    const struct fsm_batch_result *br = result;
    for (unsigned i = 0; i < br->n; i++) {
        /* All but the removal of "none" apply. */
        if ((br->results[i].code != 0) != (i == 6)) {
            die("the snapshot's commands did not apply as expected");
        }
    }
    struct raft_buffer *bufs;
    unsigned n;
    if (fsm_raft(f)->snapshot(fsm_raft(f), &bufs, &n) != 0 || n != 1) {
        die("snapshot");
    }
    save("snapshot", bufs[0].base, bufs[0].len);
    fsm_raft(f)->snapshot_finalize(fsm_raft(f), &bufs, &n);
    fsm_close(f);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_corpus DIR\n");
        return 2;
    }
    dir = argv[1];
    gen_requests();
    gen_replies();
    gen_entries();
    gen_snapshot();
    return 0;
}
