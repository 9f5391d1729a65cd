/* crypt.c - sealing, opening, keyring files (see crypt.h, gossip.h).
 *
 * Opening tries every key of the ring, primary first: a ring holds a few
 * keys only during a rotation, and a tag check costs about as much as
 * hashing the message once. Not naming the key in the message keeps the
 * keyring's contents out of the traffic. */
#include "crypt.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../proto/allot_error.h"

_Static_assert(GOSSIP_KEY_SIZE == crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
               "gossip keys are XChaCha20-Poly1305 keys");
_Static_assert(GCRYPT_NONCE == crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
               "nonce size");
_Static_assert(GCRYPT_TAG == crypto_aead_xchacha20poly1305_ietf_ABYTES,
               "tag size");

void gcrypt_seal(const uint8_t key[GOSSIP_KEY_SIZE],
                 enum gcrypt_channel channel, const uint8_t *pt, size_t len,
                 uint8_t *out)
{
    uint8_t ad[2] = {GCRYPT_VERSION, (uint8_t)channel};
    out[0] = GCRYPT_VERSION;
    randombytes_buf(out + 1, GCRYPT_NONCE);
    unsigned long long clen;
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + 1 + GCRYPT_NONCE, &clen,
                                               pt, len, ad, sizeof ad, NULL,
                                               out + 1, key);
}

int gcrypt_open(const struct gossip_keyring *kr, enum gcrypt_channel channel,
                const uint8_t *in, size_t len, uint8_t *pt, size_t *pt_len)
{
    if (len < GCRYPT_OVERHEAD || in[0] != GCRYPT_VERSION) {
        return ALLOT_EPROTOCOL;
    }
    uint8_t ad[2] = {GCRYPT_VERSION, (uint8_t)channel};
    const uint8_t *nonce = in + 1;
    const uint8_t *c = in + 1 + GCRYPT_NONCE;
    size_t clen = len - 1 - GCRYPT_NONCE;
    for (unsigned i = 0; i < kr->n && i < GOSSIP_KEYRING_MAX; i++) {
        unsigned long long mlen;
        if (crypto_aead_xchacha20poly1305_ietf_decrypt(pt, &mlen, NULL, c, clen,
                                                       ad, sizeof ad, nonce,
                                                       kr->keys[i]) == 0) {
            *pt_len = (size_t)mlen;
            return 0;
        }
    }
    return ALLOT_EUNAUTHENTICATED;
}

int gcrypt_find(const struct gossip_keyring *kr,
                const uint8_t key[GOSSIP_KEY_SIZE])
{
    for (unsigned i = 0; i < kr->n && i < GOSSIP_KEYRING_MAX; i++) {
        if (sodium_memcmp(kr->keys[i], key, GOSSIP_KEY_SIZE) == 0) {
            return (int)i;
        }
    }
    return -1;
}

void gcrypt_key_id(const uint8_t key[GOSSIP_KEY_SIZE],
                   uint8_t id[GCRYPT_KEY_ID])
{
    static const char domain[] = "allot-gossip-key-id";
    uint8_t in[sizeof domain - 1 + GOSSIP_KEY_SIZE];
    uint8_t out[crypto_generichash_BYTES_MIN];
    memcpy(in, domain, sizeof domain - 1);
    memcpy(in + sizeof domain - 1, key, GOSSIP_KEY_SIZE);
    crypto_generichash(out, sizeof out, in, sizeof in, NULL, 0);
    memcpy(id, out, GCRYPT_KEY_ID);
    sodium_memzero(in, sizeof in);
}

int gcrypt_find_id(const struct gossip_keyring *kr,
                   const uint8_t id[GCRYPT_KEY_ID])
{
    for (unsigned i = 0; i < kr->n && i < GOSSIP_KEYRING_MAX; i++) {
        uint8_t k[GCRYPT_KEY_ID];
        gcrypt_key_id(kr->keys[i], k);
        if (memcmp(k, id, GCRYPT_KEY_ID) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* --- Keyring files ------------------------------------------------------ */

#define KEYRING_FILE_MAX 4096

int gossip_key_generate(uint8_t key[GOSSIP_KEY_SIZE])
{
    if (sodium_init() < 0) {
        return ALLOT_EINTERNAL;
    }
    crypto_aead_xchacha20poly1305_ietf_keygen(key);
    return 0;
}

void gossip_keyring_wipe(struct gossip_keyring *kr)
{
    sodium_memzero(kr, sizeof *kr);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

int gossip_keyring_parse(struct gossip_keyring *kr, const char *text,
                         size_t len, char *errmsg)
{
    memset(kr, 0, sizeof *kr);
    size_t pos = 0;
    unsigned line = 0;
    /* One pass over the text; every iteration consumes a line. */
    while (pos < len) {
        line++;
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl != NULL ? (size_t)(nl - s) : len - pos;
        pos += n + (nl != NULL ? 1 : 0);
        while (n > 0 && is_space(*s)) {
            s++;
            n--;
        }
        while (n > 0 && is_space(s[n - 1])) {
            n--;
        }
        if (n == 0 || s[0] == '#') {
            continue;
        }
        if (kr->n == GOSSIP_KEYRING_MAX) {
            gossip_keyring_wipe(kr);
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "keyring: line %u: more than %u keys", line,
                              GOSSIP_KEYRING_MAX);
        }
        uint8_t key[GOSSIP_KEY_SIZE];
        size_t bin_len = 0;
        const char *end = NULL;
        if (sodium_base642bin(key, sizeof key, s, n, NULL, &bin_len, &end,
                              sodium_base64_VARIANT_ORIGINAL) != 0 ||
            end != s + n || bin_len != GOSSIP_KEY_SIZE) {
            sodium_memzero(key, sizeof key);
            gossip_keyring_wipe(kr);
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "keyring: line %u: expected the base64 of %u "
                              "bytes (44 characters)",
                              line, GOSSIP_KEY_SIZE);
        }
        if (gcrypt_find(kr, key) >= 0) {
            sodium_memzero(key, sizeof key);
            gossip_keyring_wipe(kr);
            return allot_errf(errmsg, ALLOT_EINVALID,
                              "keyring: line %u: key listed twice", line);
        }
        memcpy(kr->keys[kr->n++], key, sizeof key);
        sodium_memzero(key, sizeof key);
    }
    if (kr->n == 0) {
        return allot_errf(errmsg, ALLOT_EINVALID, "keyring: no key");
    }
    return 0;
}

int gossip_keyring_load(struct gossip_keyring *kr, const char *path,
                        char *errmsg)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return allot_errf(errmsg,
                          errno == ENOENT ? ALLOT_ENOT_FOUND : ALLOT_EIO,
                          "keyring %s: %s", path, strerror(errno));
    }
    char buf[KEYRING_FILE_MAX + 1];
    size_t len = 0;
    /* read() until EOF; the size bound ends the loop. */
    while (len <= KEYRING_FILE_MAX) {
        ssize_t r = read(fd, buf + len, sizeof buf - len);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            int e = errno;
            close(fd);
            sodium_memzero(buf, sizeof buf);
            return allot_errf(errmsg, ALLOT_EIO, "keyring %s: %s", path,
                              strerror(e));
        }
        if (r == 0) {
            break;
        }
        len += (size_t)r;
    }
    close(fd);
    int rv;
    if (len > KEYRING_FILE_MAX) {
        rv = allot_errf(errmsg, ALLOT_EINVALID,
                        "keyring %s: larger than %u bytes", path,
                        KEYRING_FILE_MAX);
    } else {
        rv = gossip_keyring_parse(kr, buf, len, errmsg);
    }
    sodium_memzero(buf, sizeof buf);
    return rv;
}

int gossip_keyring_save(const struct gossip_keyring *kr, const char *path,
                        char *errmsg)
{
    if (kr->n == 0 || kr->n > GOSSIP_KEYRING_MAX) {
        return allot_errf(errmsg, ALLOT_EINVALID, "keyring: %u keys", kr->n);
    }
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.XXXXXX", path) >= (int)sizeof tmp) {
        return allot_errf(errmsg, ALLOT_EINVALID, "keyring: path too long");
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        return allot_errf(errmsg, ALLOT_EIO, "keyring %s: %s", tmp,
                          strerror(errno));
    }
    char text[GOSSIP_KEYRING_MAX * 64];
    size_t len = 0;
    for (unsigned i = 0; i < kr->n; i++) {
        sodium_bin2base64(text + len, sizeof text - len, kr->keys[i],
                          GOSSIP_KEY_SIZE, sodium_base64_VARIANT_ORIGINAL);
        len += strlen(text + len);
        text[len++] = '\n';
    }
    int rv = 0;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            rv = allot_errf(errmsg, ALLOT_EIO, "keyring %s: %s", tmp,
                            strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    sodium_memzero(text, sizeof text);
    if (rv == 0 && (fchmod(fd, 0600) != 0 || fsync(fd) != 0)) {
        rv = allot_errf(errmsg, ALLOT_EIO, "keyring %s: %s", tmp,
                        strerror(errno));
    }
    if (close(fd) != 0 && rv == 0) {
        rv = allot_errf(errmsg, ALLOT_EIO, "keyring %s: %s", tmp,
                        strerror(errno));
    }
    if (rv == 0 && rename(tmp, path) != 0) {
        rv = allot_errf(errmsg, ALLOT_EIO, "keyring %s: %s", path,
                        strerror(errno));
    }
    if (rv != 0) {
        unlink(tmp);
    }
    return rv;
}
