/* auth.h - identities and signed requests.
 *
 * An identity is an Ed25519 key pair (libsodium's crypto_sign). A signed
 * request carries its arguments as bytes ("body": bin, a msgpack map) and an
 * "auth" map: {"principal": str, "ts": u64 ms, "nonce": bin 16, "sig": bin
 * 64}. The signature covers one msgpack array that client and server build
 * the same way (auth_signed_message):
 *
 *   ["allot-request-v1", principal, ts, nonce, op, client, seq, ack, body]
 *
 * so a signature cannot be moved to another operation, body, sequence
 * number or principal. The server refuses a bad signature, a timestamp more
 * than AUTH_CLOCK_SKEW_MS from its clock, and a nonce it has seen
 * (docs/security.md). */
#ifndef ALLOT_AUTH_H
#define ALLOT_AUTH_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTH_PUBKEY_LEN 32
#define AUTH_SECRET_LEN 64
#define AUTH_SIG_LEN    64
#define AUTH_NONCE_LEN  16
#define AUTH_NAME_MAX                                      \
    64 /* principal and group names: [A-Za-z0-9_.@-]{1,64} \
        */
#define AUTH_CLOCK_SKEW_MS (5u * 60u * 1000u)

struct auth_identity
{
    char name[AUTH_NAME_MAX + 1];
    unsigned char pk[AUTH_PUBKEY_LEN];
    unsigned char sk[AUTH_SECRET_LEN];
};

/* The auth part of a request, decoded. */
struct auth_claim
{
    char principal[AUTH_NAME_MAX + 1];
    uint64_t ts_ms;
    unsigned char nonce[AUTH_NONCE_LEN];
    unsigned char sig[AUTH_SIG_LEN];
};

/* libsodium's sodium_init(); safe to call many times. 0 or ALLOT_EINTERNAL. */
int auth_init(void);

/* Principal and group names: 1 to 64 of [A-Za-z0-9_.@-]. */
bool auth_name_valid(const char *s, size_t len);

/* New key pair for name. */
int auth_identity_new(const char *name, struct auth_identity *id, char *errmsg);

/* Identity files: text, one "key value" per line (name, public, secret in
 * hex), written with mode 0600 (never overwriting an existing file). */
int auth_identity_save(const struct auth_identity *id, const char *path,
                       char *errmsg);
int auth_identity_load(const char *path, struct auth_identity *id,
                       char *errmsg);

/* Hex of a public key (65 bytes with the NUL); parse back. */
void auth_pubkey_hex(const unsigned char pk[AUTH_PUBKEY_LEN], char hex[65]);
int auth_pubkey_parse(const char *hex, unsigned char pk[AUTH_PUBKEY_LEN],
                      char *errmsg);

/* The bytes that are signed (into sb, which the caller initialized). */
void auth_signed_message(msgpack_sbuffer *sb, const struct auth_claim *c,
                         const char *op, uint64_t client, uint64_t seq,
                         uint64_t ack, const char *body, size_t body_len);

/* Fill claim (principal, now, a fresh nonce) and sign. */
void auth_sign(const struct auth_identity *id, uint64_t now_ms, const char *op,
               uint64_t client, uint64_t seq, uint64_t ack, const char *body,
               size_t body_len, struct auth_claim *claim);

/* Verify claim with pk. 0, or ALLOT_EUNAUTHENTICATED with a message. The
 * clock and nonce checks are the caller's (they need server state). */
int auth_verify(const unsigned char pk[AUTH_PUBKEY_LEN],
                const struct auth_claim *claim, const char *op, uint64_t client,
                uint64_t seq, uint64_t ack, const char *body, size_t body_len,
                char *errmsg);

/* Pack the "auth" map of a request. */
void auth_pack_claim(msgpack_packer *pk, const struct auth_claim *c);
/* Decode it (ALLOT_EUNAUTHENTICATED naming what is wrong). */
int auth_unpack_claim(const msgpack_object *o, struct auth_claim *c,
                      char *errmsg);

#endif /* ALLOT_AUTH_H */
