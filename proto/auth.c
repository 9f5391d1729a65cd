/* auth.c - Ed25519 identities and request signatures (see auth.h). */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "allot_error.h"
#include "wire.h"

#define SIGNED_CONTEXT "allot-request-v1"

int auth_init(void)
{
    return sodium_init() < 0 ? ALLOT_EINTERNAL : 0;
}

bool auth_name_valid(const char *s, size_t len)
{
    if (len == 0 || len > AUTH_NAME_MAX) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.' ||
                  c == '@';
        if (!ok) {
            return false;
        }
    }
    return true;
}

int auth_identity_new(const char *name, struct auth_identity *id, char *errmsg)
{
    memset(id, 0, sizeof *id);
    if (!auth_name_valid(name, strlen(name))) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "identity name \"%.64s\" must be 1 to 64 of "
                          "[A-Za-z0-9_.@-]",
                          name);
    }
    if (auth_init() != 0) {
        return allot_errf(errmsg, ALLOT_EINTERNAL, "libsodium init failed");
    }
    strcpy(id->name, name);
    crypto_sign_keypair(id->pk, id->sk);
    return 0;
}

void auth_pubkey_hex(const unsigned char pk[AUTH_PUBKEY_LEN], char hex[65])
{
    sodium_bin2hex(hex, 65, pk, AUTH_PUBKEY_LEN);
}

static int parse_hex(const char *hex, unsigned char *out, size_t want)
{
    size_t got = 0;
    const char *end;
    if (strlen(hex) != want * 2 ||
        sodium_hex2bin(out, want, hex, want * 2, NULL, &got, &end) != 0 ||
        got != want || *end != '\0') {
        return -1;
    }
    return 0;
}

int auth_pubkey_parse(const char *hex, unsigned char pk[AUTH_PUBKEY_LEN],
                      char *errmsg)
{
    if (parse_hex(hex, pk, AUTH_PUBKEY_LEN) != 0) {
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "a public key is 64 hex digits (allotctl identity "
                          "pubkey FILE prints one)");
    }
    return 0;
}

int auth_identity_save(const struct auth_identity *id, const char *path,
                       char *errmsg)
{
    char pk[2 * AUTH_PUBKEY_LEN + 1], sk[2 * AUTH_SECRET_LEN + 1];
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        return allot_errf(errmsg, errno == EEXIST ? ALLOT_EEXISTS : ALLOT_EIO,
                          "cannot create %s: %s", path, strerror(errno));
    }
    sodium_bin2hex(pk, sizeof pk, id->pk, sizeof id->pk);
    sodium_bin2hex(sk, sizeof sk, id->sk, sizeof id->sk);
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "# allot identity: keep this file secret\n"
                     "name %s\npublic %s\nsecret %s\n",
                     id->name, pk, sk);
    bool ok = n > 0 && write(fd, buf, (size_t)n) == n && fsync(fd) == 0;
    sodium_memzero(buf, sizeof buf);
    sodium_memzero(sk, sizeof sk);
    close(fd);
    if (!ok) {
        unlink(path);
        return allot_errf(errmsg, ALLOT_EIO, "cannot write %s", path);
    }
    return 0;
}

int auth_identity_load(const char *path, struct auth_identity *id, char *errmsg)
{
    memset(id, 0, sizeof *id);
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        return allot_errf(errmsg, ALLOT_EINVALID, "cannot read identity %s: %s",
                          path, strerror(errno));
    }
    char line[512];
    bool has_name = false, has_pk = false, has_sk = false;
    int rv = 0;
    while (fgets(line, sizeof line, f) != NULL && rv == 0) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0') {
            continue;
        }
        char *sp = strchr(line, ' ');
        if (sp == NULL) {
            rv = -1;
            break;
        }
        *sp = '\0';
        const char *v = sp + 1;
        if (strcmp(line, "name") == 0 && auth_name_valid(v, strlen(v))) {
            strcpy(id->name, v);
            has_name = true;
        } else if (strcmp(line, "public") == 0) {
            has_pk = parse_hex(v, id->pk, sizeof id->pk) == 0;
        } else if (strcmp(line, "secret") == 0) {
            has_sk = parse_hex(v, id->sk, sizeof id->sk) == 0;
        }
    }
    sodium_memzero(line, sizeof line);
    fclose(f);
    /* The secret key is a seed plus the public key: derive both from the
     * seed and compare, so a damaged seed is caught here rather than as
     * "bad signature" on every request. */
    unsigned char pk2[AUTH_PUBKEY_LEN], sk2[AUTH_SECRET_LEN];
    bool match = rv == 0 && has_name && has_pk && has_sk &&
                 crypto_sign_seed_keypair(pk2, sk2, id->sk) == 0 &&
                 sodium_memcmp(pk2, id->pk, sizeof pk2) == 0 &&
                 sodium_memcmp(sk2, id->sk, sizeof sk2) == 0;
    sodium_memzero(sk2, sizeof sk2);
    if (!match) {
        sodium_memzero(id, sizeof *id);
        return allot_errf(errmsg, ALLOT_EINVALID,
                          "%s is not an allot identity (expected lines name, "
                          "public, secret; make one with allotctl identity "
                          "new)",
                          path);
    }
    return 0;
}

void auth_signed_message(msgpack_sbuffer *sb, const struct auth_claim *c,
                         const char *op, uint64_t client, uint64_t seq,
                         uint64_t ack, const char *body, size_t body_len)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 9);
    wire_pack_str(&pk, SIGNED_CONTEXT);
    wire_pack_str(&pk, c->principal);
    msgpack_pack_uint64(&pk, c->ts_ms);
    msgpack_pack_bin(&pk, AUTH_NONCE_LEN);
    msgpack_pack_bin_body(&pk, c->nonce, AUTH_NONCE_LEN);
    wire_pack_str(&pk, op);
    msgpack_pack_uint64(&pk, client);
    msgpack_pack_uint64(&pk, seq);
    msgpack_pack_uint64(&pk, ack);
    msgpack_pack_bin(&pk, body_len);
    msgpack_pack_bin_body(&pk, body, body_len);
}

void auth_sign(const struct auth_identity *id, uint64_t now_ms, const char *op,
               uint64_t client, uint64_t seq, uint64_t ack, const char *body,
               size_t body_len, struct auth_claim *claim)
{
    memset(claim, 0, sizeof *claim);
    strcpy(claim->principal, id->name);
    claim->ts_ms = now_ms;
    randombytes_buf(claim->nonce, sizeof claim->nonce);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    auth_signed_message(&sb, claim, op, client, seq, ack, body, body_len);
    crypto_sign_detached(claim->sig, NULL, (const unsigned char *)sb.data,
                         sb.size, id->sk);
    msgpack_sbuffer_destroy(&sb);
}

int auth_verify(const unsigned char pk[AUTH_PUBKEY_LEN],
                const struct auth_claim *claim, const char *op, uint64_t client,
                uint64_t seq, uint64_t ack, const char *body, size_t body_len,
                char *errmsg)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    auth_signed_message(&sb, claim, op, client, seq, ack, body, body_len);
    int ok = crypto_sign_verify_detached(
        claim->sig, (const unsigned char *)sb.data, sb.size, pk);
    msgpack_sbuffer_destroy(&sb);
    if (ok != 0) {
        return allot_errf(errmsg, ALLOT_EUNAUTHENTICATED,
                          "bad signature for principal %s", claim->principal);
    }
    return 0;
}

void auth_pack_claim(msgpack_packer *pk, const struct auth_claim *c)
{
    msgpack_pack_map(pk, 4);
    wire_pack_kv_str(pk, "principal", c->principal);
    wire_pack_kv_u64(pk, "ts", c->ts_ms);
    wire_pack_str(pk, "nonce");
    msgpack_pack_bin(pk, AUTH_NONCE_LEN);
    msgpack_pack_bin_body(pk, c->nonce, AUTH_NONCE_LEN);
    wire_pack_str(pk, "sig");
    msgpack_pack_bin(pk, AUTH_SIG_LEN);
    msgpack_pack_bin_body(pk, c->sig, AUTH_SIG_LEN);
}

static int get_bin(const msgpack_object *m, const char *key, void *out,
                   size_t len)
{
    const msgpack_object *o = wire_map_get(m, key);
    if (o == NULL || o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != len) {
        return -1;
    }
    memcpy(out, o->via.bin.ptr, len);
    return 0;
}

int auth_unpack_claim(const msgpack_object *o, struct auth_claim *c,
                      char *errmsg)
{
    memset(c, 0, sizeof *c);
    const char *p;
    size_t len;
    if (o->type != MSGPACK_OBJECT_MAP ||
        wire_get_str(o, "principal", true, &p, &len, NULL) != 0 ||
        !auth_name_valid(p, len) ||
        wire_get_u64(o, "ts", true, &c->ts_ms, NULL) != 0 ||
        get_bin(o, "nonce", c->nonce, AUTH_NONCE_LEN) != 0 ||
        get_bin(o, "sig", c->sig, AUTH_SIG_LEN) != 0) {
        return allot_errf(errmsg, ALLOT_EUNAUTHENTICATED,
                          "auth must be {principal: name, ts: ms, nonce: 16 "
                          "bytes, sig: 64 bytes}");
    }
    memcpy(c->principal, p, len);
    c->principal[len] = '\0';
    return 0;
}
