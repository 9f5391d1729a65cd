/* crypt.h - sealing and opening gossip messages (private).
 *
 * Sealed layout, for datagrams and stream messages alike:
 *
 *   u8 version (1) | 24-byte random nonce | ciphertext | 16-byte tag
 *
 * XChaCha20-Poly1305-IETF (libsodium crypto_aead_xchacha20poly1305_ietf)
 * under the keyring's primary key. The associated data is the version byte
 * and the channel ('P' datagram, 'S' stream), so a sealed datagram cannot
 * be replayed as a stream message or the other way round. A 24-byte random
 * nonce per message makes reuse negligible without any state to keep. */
#ifndef ALLOT_GOSSIP_CRYPT_H
#define ALLOT_GOSSIP_CRYPT_H

#include <stddef.h>
#include <stdint.h>

#include "gossip.h"

#define GCRYPT_VERSION  1u
#define GCRYPT_NONCE    24u
#define GCRYPT_TAG      16u
#define GCRYPT_OVERHEAD (1u + GCRYPT_NONCE + GCRYPT_TAG)

enum gcrypt_channel {
    GCRYPT_PACKET = 'P',
    GCRYPT_STREAM = 'S',
};

/* Seal pt[0..len) into out, which has room for len + GCRYPT_OVERHEAD. */
void gcrypt_seal(const uint8_t key[GOSSIP_KEY_SIZE],
                 enum gcrypt_channel channel, const uint8_t *pt, size_t len,
                 uint8_t *out);

/* Open in[0..len) into pt (room for len - GCRYPT_OVERHEAD), trying the
 * primary key first. 0 and *pt_len; ALLOT_EPROTOCOL when the input is too
 * short or of another version; ALLOT_EUNAUTHENTICATED when no key of kr
 * opens it. */
int gcrypt_open(const struct gossip_keyring *kr, enum gcrypt_channel channel,
                const uint8_t *in, size_t len, uint8_t *pt, size_t *pt_len);

/* A short public name for a key: the first GCRYPT_KEY_ID bytes of
 * BLAKE2b("allot-gossip-key-id" || key). It lets a message say which key
 * to answer with without carrying the key; it reveals nothing usable about
 * a 256-bit random key. */
#define GCRYPT_KEY_ID 8u
void gcrypt_key_id(const uint8_t key[GOSSIP_KEY_SIZE],
                   uint8_t id[GCRYPT_KEY_ID]);
/* Index of the key of kr whose id is id, or -1. */
int gcrypt_find_id(const struct gossip_keyring *kr,
                   const uint8_t id[GCRYPT_KEY_ID]);

/* Index of key in kr, or -1. */
int gcrypt_find(const struct gossip_keyring *kr,
                const uint8_t key[GOSSIP_KEY_SIZE]);

#endif /* ALLOT_GOSSIP_CRYPT_H */
