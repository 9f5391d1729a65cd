/* lkg.c - last-known-good file (see lkg.h).
 *
 * Happy path of a save: pack the body, hash it, write header + body to the
 * temporary file, fsync, rename, fsync the directory. Failure modes: any
 * step failing leaves the previous file in place, removes the temporary
 * one and returns ALLOT_EIO naming the step and errno.
 * Happy path of a load: read at most LKG_MAX_SIZE bytes, check the magic
 * and the digest, then decode the body one value at a time (each walked by
 * wire_check() first), every quota as it comes.
 * Failure modes: no file (ALLOT_ENOT_FOUND, the normal first start), a
 * short or corrupt file (moved aside to rules.lkg.bad, ALLOT_EPROTOCOL),
 * an I/O error (ALLOT_EIO, left in place). */
#include "lkg.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../proto/allot_error.h"
#include "../proto/wire.h"

#define LKG_MAGIC     "ALLOTLKG"
#define LKG_MAGIC_LEN 8u
#define LKG_HASH_LEN  32u
#define LKG_FORMAT    1u

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int lkg_save(const char *dir, const char *quotas, size_t quotas_len,
             uint64_t version, uint64_t saved_ms, char *errmsg)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, LKG_FILE) >=
            sizeof path ||
        (size_t)snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, LKG_FILE) >=
            sizeof tmp) {
        return allot_errf(errmsg, ALLOT_EIO, "data dir path too long");
    }
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    wire_pack_kv_u64(&pk, "format", LKG_FORMAT);
    wire_pack_kv_u64(&pk, "catalog_version", version);
    wire_pack_kv_u64(&pk, "saved_ms", saved_ms);
    wire_pack_str(&pk, "quotas");
    msgpack_sbuffer_write(&sb, quotas, quotas_len);
    unsigned char hash[LKG_HASH_LEN];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)sb.data,
                       sb.size, NULL, 0);

    const char *step = "open";
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        goto err_after_buffer;
    }
    step = "write";
    if (write_all(fd, LKG_MAGIC, LKG_MAGIC_LEN) != 0 ||
        write_all(fd, (const char *)hash, sizeof hash) != 0 ||
        write_all(fd, sb.data, sb.size) != 0) {
        goto err_after_open;
    }
    step = "fsync";
    if (fsync(fd) != 0) {
        goto err_after_open;
    }
    step = "close";
    if (close(fd) != 0) {
        fd = -1;
        goto err_after_open;
    }
    fd = -1;
    step = "rename";
    if (rename(tmp, path) != 0) {
        goto err_after_open;
    }
    msgpack_sbuffer_destroy(&sb);
    /* The rename is durable only once the directory is. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        int e = errno;
        if (dfd >= 0) {
            close(dfd);
        }
        return allot_errf(errmsg, ALLOT_EIO, "fsync %s: %s", dir, strerror(e));
    }
    close(dfd);
    return 0;

err_after_open : {
    int e = errno;
    if (fd >= 0) {
        close(fd);
    }
    unlink(tmp);
    errno = e;
}
err_after_buffer : {
    int e = errno;
    msgpack_sbuffer_destroy(&sb);
    return allot_errf(errmsg, ALLOT_EIO, "%s %s: %s", step, tmp, strerror(e));
}
}

static int read_file(const char *path, char **out, size_t *len, char *errmsg)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            return ALLOT_ENOT_FOUND;
        }
        return allot_errf(errmsg, ALLOT_EIO, "open %s: %s", path,
                          strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 0 ||
        (uint64_t)st.st_size > LKG_MAX_SIZE) {
        close(fd);
        return allot_errf(errmsg, ALLOT_EPROTOCOL,
                          "%s: unreadable size or larger than %u bytes", path,
                          LKG_MAX_SIZE);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n > 0 ? n : 1);
    if (buf == NULL) {
        close(fd);
        return allot_errf(errmsg, ALLOT_ENOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return allot_errf(errmsg, ALLOT_EIO, "read %s: %s", path,
                              strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = n;
    return 0;
}

void lkg_free(struct lkg_doc *doc)
{
    for (size_t i = 0; i < doc->n; i++) {
        quota_free(&doc->quotas[i]);
    }
    free(doc->quotas);
    memset(doc, 0, sizeof *doc);
}

/* A map (array = false) or array header at b[*off]: its count, with the
 * bound wire_check() applies (no more elements than bytes remain). */
static int container(const char *b, size_t len, size_t *off, bool array,
                     uint32_t *count)
{
    const unsigned char *p = (const unsigned char *)b + *off;
    size_t left = len - *off, hdr;
    uint32_t n;
    unsigned char fix = array ? 0x90 : 0x80, c16 = array ? 0xdc : 0xde,
                  c32 = array ? 0xdd : 0xdf;
    if (left < 1) {
        return -1;
    }
    if ((p[0] & 0xf0) == fix) {
        n = p[0] & 0x0fu;
        hdr = 1;
    } else if (p[0] == c16 && left >= 3) {
        n = (uint32_t)p[1] << 8 | p[2];
        hdr = 3;
    } else if (p[0] == c32 && left >= 5) {
        n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 |
            p[4];
        hdr = 5;
    } else {
        return -1;
    }
    uint64_t min_bytes = (uint64_t)n * (array ? 1u : 2u);
    if (min_bytes > left - hdr) {
        return -1; /* a lying count */
    }
    *off += hdr;
    *count = n;
    return 0;
}

/* The next whole value at b[*off] into *u (checked by wire_check first). */
static int next_value(const char *b, size_t len, size_t *off,
                      msgpack_unpacked *u, char *errmsg)
{
    size_t used = 0;
    int rv = wire_check_prefix(b + *off, len - *off, &used, errmsg);
    if (rv == 0) {
        rv = wire_unpack(b + *off, used, u, errmsg);
    }
    if (rv != 0) {
        return ALLOT_EPROTOCOL;
    }
    *off += used;
    return 0;
}

/* The "quotas" array, one quota at a time into doc. */
static int decode_quotas(const char *b, size_t len, size_t *off,
                         msgpack_unpacked *u, struct lkg_doc *doc, char *errmsg)
{
    uint32_t n = 0;
    if (container(b, len, off, true, &n) != 0) {
        return allot_errf(errmsg, ALLOT_EPROTOCOL, "quotas is not an array");
    }
    if (n > 0 && (doc->quotas = calloc(n, sizeof *doc->quotas)) == NULL) {
        return allot_errf(errmsg, ALLOT_ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < n; i++) {
        int rv = next_value(b, len, off, u, errmsg);
        if (rv != 0) {
            return rv;
        }
        char why[ALLOT_ERRMSG_SIZE];
        rv = quota_unpack(&u->data, &doc->quotas[i], why);
        if (rv != 0) {
            quota_free(&doc->quotas[i]);
            return allot_errf(errmsg, ALLOT_EPROTOCOL, "quota %u: %s", i, why);
        }
        doc->n++;
    }
    return 0;
}

static int decode(const char *buf, size_t len, struct lkg_doc *doc,
                  char *errmsg)
{
    if (len < LKG_MAGIC_LEN + LKG_HASH_LEN ||
        memcmp(buf, LKG_MAGIC, LKG_MAGIC_LEN) != 0) {
        return allot_errf(errmsg, ALLOT_EPROTOCOL, "not a rules file");
    }
    const char *body = buf + LKG_MAGIC_LEN + LKG_HASH_LEN;
    size_t body_len = len - LKG_MAGIC_LEN - LKG_HASH_LEN;
    unsigned char hash[LKG_HASH_LEN];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)body, body_len,
                       NULL, 0);
    if (sodium_memcmp(hash, buf + LKG_MAGIC_LEN, LKG_HASH_LEN) != 0) {
        return allot_errf(errmsg, ALLOT_EPROTOCOL,
                          "digest mismatch (torn or corrupted)");
    }
    /* One value at a time (the body is a map whose "quotas" array is
     * decoded element by element): unpacking the whole body at once would
     * hold every quota's msgpack objects beside the decoded quotas, about
     * as much again as the rules themselves while an agent starts. */
    size_t off = 0;
    uint32_t pairs = 0;
    if (container(body, body_len, &off, false, &pairs) != 0) {
        return allot_errf(errmsg, ALLOT_EPROTOCOL, "body is not a map");
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rv = 0;
    uint64_t format = 0;
    bool have_format = false, have_version = false, have_saved = false,
         have_quotas = false;
    for (uint32_t i = 0; rv == 0 && i < pairs; i++) {
        rv = next_value(body, body_len, &off, &u, errmsg);
        if (rv != 0) {
            break;
        }
        if (u.data.type != MSGPACK_OBJECT_STR) {
            rv = allot_errf(errmsg, ALLOT_EPROTOCOL, "a key is not a string");
            break;
        }
        if (wire_str_eq(&u.data, "quotas") && !have_quotas) {
            have_quotas = true;
            rv = decode_quotas(body, body_len, &off, &u, doc, errmsg);
            continue;
        }
        uint64_t *field = wire_str_eq(&u.data, "format") ? &format
                          : wire_str_eq(&u.data, "catalog_version")
                              ? &doc->version
                          : wire_str_eq(&u.data, "saved_ms") ? &doc->saved_ms
                                                             : NULL;
        bool *seen = field == &format         ? &have_format
                     : field == &doc->version ? &have_version
                     : field != NULL          ? &have_saved
                                              : NULL;
        rv = next_value(body, body_len, &off, &u, errmsg);
        if (rv == 0 && field != NULL) {
            if (u.data.type != MSGPACK_OBJECT_POSITIVE_INTEGER || *seen) {
                rv = allot_errf(errmsg, ALLOT_EPROTOCOL,
                                "a header field is not one unsigned integer");
            }
            *field = u.data.via.u64;
            *seen = true;
        }
    }
    msgpack_unpacked_destroy(&u);
    if (rv == 0 && off != body_len) {
        rv = allot_errf(errmsg, ALLOT_EPROTOCOL, "trailing bytes");
    }
    if (rv == 0 &&
        (!have_format || !have_version || !have_saved || !have_quotas)) {
        rv = allot_errf(errmsg, ALLOT_EPROTOCOL,
                        "missing format, catalog_version, saved_ms or "
                        "quotas");
    }
    if (rv == 0 && format != LKG_FORMAT) {
        rv = allot_errf(errmsg, ALLOT_EPROTOCOL, "format %llu, expected %u",
                        (unsigned long long)format, LKG_FORMAT);
    }
    if (rv != 0) {
        lkg_free(doc);
        return rv == ALLOT_ENOMEM ? rv : ALLOT_EPROTOCOL;
    }
    return 0;
}

int lkg_load(const char *dir, struct lkg_doc *doc, char *errmsg)
{
    memset(doc, 0, sizeof *doc);
    char path[PATH_MAX], bad[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, LKG_FILE) >=
            sizeof path ||
        (size_t)snprintf(bad, sizeof bad, "%s/%s.bad", dir, LKG_FILE) >=
            sizeof bad) {
        return allot_errf(errmsg, ALLOT_EIO, "data dir path too long");
    }
    char *buf = NULL;
    size_t len = 0;
    int rv = read_file(path, &buf, &len, errmsg);
    if (rv == ALLOT_EPROTOCOL) {
        rename(path, bad);
    }
    if (rv != 0) {
        return rv;
    }
    char why[ALLOT_ERRMSG_SIZE];
    rv = decode(buf, len, doc, why);
    free(buf);
    if (rv == ALLOT_EPROTOCOL) {
        rename(path, bad);
        return allot_errf(errmsg, rv, "%s: %s (moved to %s)", path, why, bad);
    }
    if (rv != 0) {
        return allot_errf(errmsg, rv, "%s: %s", path, why);
    }
    return 0;
}
