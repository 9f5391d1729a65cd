/* test_auth.c - identities, signed requests, the nonce cache, and the
 * authorization rules the state machine applies.
 *
 *   names        auth_name_valid boundaries
 *   identity     new/save/load round trip, file mode 0600, never overwrite
 *                (nor follow a symlink), every malformed file refused with
 *                nothing left in the struct
 *   sign         sign -> verify; each signed element (principal, ts, nonce,
 *                op, client, seq, ack, body) changed alone breaks the
 *                signature, and restoring it mends it; another key fails;
 *                the signed message has the documented layout
 *   claim        pack/unpack round trip; every malformed claim refused
 *   nonce        node/nonce.c (compiled in): replay, expiry after twice the
 *                clock skew, time going back, the bound
 *   access       the state machine, fed entries built with fsm_batch_encode
 *                as raft would: bootstrap admins, principal and group
 *                commands, the owner rules, owners validation, the denial
 *                messages, removed principals, the insecure principal "",
 *                snapshot -> restore, and the audit trail's principals.
 *
 * Time in the state machine tests is the time_ms carried in each entry. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <msgpack.h>
#include <raft.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "allot_error.h"
#include "auth.h"
#include "quota.h"
#include "raft_fsm.h"
#include "wire.h"

/* The node's nonce cache lives in node/, which unit tests do not link:
 * compile it in (it needs only node.h's declarations). */
#include "../../node/nonce.c"

/* msg mentions sub. A function, not a macro: msg is often an array. */
static void assert_has_at(const char *msg, const char *sub, int line)
{
    ck_assert_msg(msg != NULL && strstr(msg, sub) != NULL,
                  "line %d: message \"%s\" does not mention \"%s\"", line,
                  msg != NULL ? msg : "(null)", sub);
}
#define assert_has(msg, sub) assert_has_at((msg), (sub), __LINE__)

#define T0 1000000u /* an arbitrary leader clock to start from */

/* ===================================================================== */
/* Scratch directory                                                      */
/* ===================================================================== */

/* Root: made and removed by the runner process around the test case (an
 * unchecked fixture), so a failed test, whose forked process never gets to
 * a checked teardown, leaves nothing behind. Dir: each test's own. */
static char Root[256];
static char Dir[300];

static void root_setup(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(Root, sizeof Root, "%s/allot-auth-XXXXXX",
             base != NULL && base[0] != '\0' ? base : "/tmp");
    if (mkdtemp(Root) == NULL) {
        Root[0] = '\0';
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void root_teardown(void)
{
    if (Root[0] != '\0') {
        nftw(Root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
}

static void dir_setup(void)
{
    ck_assert_int_eq(auth_init(), 0);
    ck_assert_msg(Root[0] != '\0', "no scratch directory");
    snprintf(Dir, sizeof Dir, "%s/t-XXXXXX", Root);
    ck_assert_msg(mkdtemp(Dir) != NULL, "mkdtemp: %s", strerror(errno));
}

static void path_of(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", Dir, name);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

/* Whole file as a NUL-terminated string (owned). */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    char *buf = calloc(1, 4096);
    ck_assert_ptr_nonnull(buf);
    size_t n = fread(buf, 1, 4095, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] != 0) {
            return false;
        }
    }
    return true;
}

/* ===================================================================== */
/* Names                                                                  */
/* ===================================================================== */

START_TEST(name_rules)
{
    static const char *const good[] = {
        "a", "Z", "0", "_", ".", "-", "@", "alice", "svc.batch-2@corp_x",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        ck_assert_msg(auth_name_valid(good[i], strlen(good[i])), "%s", good[i]);
    }
    char s64[65], s65[66];
    memset(s64, 'n', 64);
    s64[64] = '\0';
    memset(s65, 'n', 65);
    s65[65] = '\0';
    ck_assert(auth_name_valid(s64, 64));
    ck_assert(!auth_name_valid(s65, 65));
    ck_assert(!auth_name_valid("", 0));
    static const char *const bad[] = {
        "a b", "a/b",  "a:b", "user:a", "a\tb", "a\nb", "é",   "a,b",
        "a=b", "a\"b", "a*",  "a+b",    "~",    "a\\b", "(a)",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(!auth_name_valid(bad[i], strlen(bad[i])), "%s", bad[i]);
    }
    /* The length given is what counts: an embedded NUL is not a name. */
    ck_assert(!auth_name_valid("ab\0c", 4));
    ck_assert(auth_name_valid("ab\0c", 2));
}
END_TEST

START_TEST(pubkey_hex_round_trip)
{
    struct auth_identity id;
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(auth_identity_new("alice", &id, msg), 0);
    char hex[65];
    auth_pubkey_hex(id.pk, hex);
    ck_assert_uint_eq(strlen(hex), 64);
    unsigned char back[AUTH_PUBKEY_LEN];
    ck_assert_int_eq(auth_pubkey_parse(hex, back, msg), 0);
    ck_assert_mem_eq(back, id.pk, AUTH_PUBKEY_LEN);

    char bad[70];
    snprintf(bad, sizeof bad, "%.63s", hex); /* 63 digits */
    ck_assert_int_eq(auth_pubkey_parse(bad, back, msg), ALLOT_EINVALID);
    assert_has(msg, "64 hex digits");
    snprintf(bad, sizeof bad, "%s0", hex); /* 65 */
    ck_assert_int_eq(auth_pubkey_parse(bad, back, msg), ALLOT_EINVALID);
    snprintf(bad, sizeof bad, "%s", hex);
    bad[10] = 'g';
    ck_assert_int_eq(auth_pubkey_parse(bad, back, msg), ALLOT_EINVALID);
    ck_assert_int_eq(auth_pubkey_parse("", back, msg), ALLOT_EINVALID);
}
END_TEST

/* ===================================================================== */
/* Identity files                                                         */
/* ===================================================================== */

START_TEST(identity_new_refuses_bad_names)
{
    struct auth_identity id;
    char msg[ALLOT_ERRMSG_SIZE];
    char s65[66];
    memset(s65, 'x', 65);
    s65[65] = '\0';
    const char *bad[] = {"", "a b", "a/b", "user:x", s65};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(auth_identity_new(bad[i], &id, msg), ALLOT_EINVALID);
        assert_has(msg, "[A-Za-z0-9_.@-]");
    }
    ck_assert_int_eq(auth_identity_new(s65 + 1, &id, msg), 0); /* 64 */
    ck_assert_str_eq(id.name, s65 + 1);
}
END_TEST

START_TEST(identity_round_trip)
{
    struct auth_identity id, back;
    char msg[ALLOT_ERRMSG_SIZE], path[512];
    ck_assert_int_eq(auth_identity_new("alice@corp.example", &id, msg), 0);
    ck_assert(!all_zero(id.pk, sizeof id.pk));
    path_of(path, sizeof path, "alice.id");
    ck_assert_int_eq(auth_identity_save(&id, path, msg), 0);
    ck_assert_int_eq(auth_identity_load(path, &back, msg), 0);
    ck_assert_str_eq(back.name, "alice@corp.example");
    ck_assert_mem_eq(back.pk, id.pk, AUTH_PUBKEY_LEN);
    ck_assert_mem_eq(back.sk, id.sk, AUTH_SECRET_LEN);

    /* The file is the documented text: name, public, secret in hex. */
    char *text = read_text(path);
    char pk[65];
    auth_pubkey_hex(id.pk, pk);
    char want[128];
    snprintf(want, sizeof want, "\nname alice@corp.example\npublic %s\n", pk);
    assert_has(text, want);
    assert_has(text, "\nsecret ");
    free(text);

    /* Two identities never share a key. */
    struct auth_identity other;
    ck_assert_int_eq(auth_identity_new("alice@corp.example", &other, msg), 0);
    ck_assert(memcmp(other.pk, id.pk, AUTH_PUBKEY_LEN) != 0);

    /* What the loaded key signs, the original public key verifies. */
    struct auth_claim c;
    auth_sign(&back, T0, "quota.get", 0, 0, 0, "\x80", 1, &c);
    ck_assert_int_eq(
        auth_verify(id.pk, &c, "quota.get", 0, 0, 0, "\x80", 1, msg), 0);
}
END_TEST

START_TEST(identity_file_mode_0600)
{
    struct auth_identity id;
    char msg[ALLOT_ERRMSG_SIZE], path[512];
    ck_assert_int_eq(auth_identity_new("bob", &id, msg), 0);
    /* Whatever the umask lets through, the file is the owner's only. */
    mode_t old = umask(0);
    path_of(path, sizeof path, "bob.id");
    int rv = auth_identity_save(&id, path, msg);
    umask(old);
    ck_assert_int_eq(rv, 0);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_msg((st.st_mode & 07777) == 0600, "mode %o",
                  (unsigned)(st.st_mode & 07777));
    ck_assert(S_ISREG(st.st_mode));
}
END_TEST

START_TEST(identity_save_never_overwrites)
{
    struct auth_identity a, b, back;
    char msg[ALLOT_ERRMSG_SIZE], path[512];
    ck_assert_int_eq(auth_identity_new("first", &a, msg), 0);
    ck_assert_int_eq(auth_identity_new("second", &b, msg), 0);
    path_of(path, sizeof path, "x.id");
    ck_assert_int_eq(auth_identity_save(&a, path, msg), 0);
    char *before = read_text(path);
    ck_assert_int_eq(auth_identity_save(&b, path, msg), ALLOT_EEXISTS);
    assert_has(msg, path);
    char *after = read_text(path);
    ck_assert_str_eq(before, after);
    free(before);
    free(after);
    ck_assert_int_eq(auth_identity_load(path, &back, msg), 0);
    ck_assert_str_eq(back.name, "first");
    ck_assert_mem_eq(back.sk, a.sk, AUTH_SECRET_LEN);

    /* Any existing file, even an unrelated one. */
    char other[512];
    path_of(other, sizeof other, "notes.txt");
    write_text(other, "keep me\n");
    ck_assert_int_eq(auth_identity_save(&b, other, msg), ALLOT_EEXISTS);
    char *t = read_text(other);
    ck_assert_str_eq(t, "keep me\n");
    free(t);

    /* Nor through a symlink: the link is not followed to create a file. */
    char link[512], target[512];
    path_of(link, sizeof link, "link.id");
    path_of(target, sizeof target, "target.id");
    ck_assert_int_eq(symlink(target, link), 0);
    ck_assert_int_eq(auth_identity_save(&b, link, msg), ALLOT_EEXISTS);
    ck_assert_int_eq(access(target, F_OK), -1);

    /* A directory that does not exist: an I/O error, nothing created. */
    char missing[512];
    path_of(missing, sizeof missing, "no/such/dir.id");
    ck_assert_int_eq(auth_identity_save(&b, missing, msg), ALLOT_EIO);
}
END_TEST

/* Write a valid identity for `name` into an identity file, then variants
 * of it. */
struct idfile
{
    struct auth_identity id;
    char pk[2 * AUTH_PUBKEY_LEN + 1];
    char sk[2 * AUTH_SECRET_LEN + 1];
};

static void idfile_make(struct idfile *f, const char *name)
{
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(auth_identity_new(name, &f->id, msg), 0);
    sodium_bin2hex(f->pk, sizeof f->pk, f->id.pk, sizeof f->id.pk);
    sodium_bin2hex(f->sk, sizeof f->sk, f->id.sk, sizeof f->id.sk);
}

/* Load text as an identity file: returns the code; on failure asserts the
 * struct was wiped and the message names the file. */
static int load_text(const char *text, struct auth_identity *out)
{
    static unsigned n;
    char path[512], name[32], msg[ALLOT_ERRMSG_SIZE] = "";
    snprintf(name, sizeof name, "case-%u.id", n++);
    path_of(path, sizeof path, name);
    write_text(path, text);
    memset(out, 0xa5, sizeof *out);
    int rv = auth_identity_load(path, out, msg);
    if (rv != 0) {
        ck_assert_msg(all_zero(out, sizeof *out),
                      "a refused identity leaves nothing behind");
        assert_has(msg, path);
    }
    return rv;
}

START_TEST(identity_load_accepts_comments_and_crlf)
{
    struct idfile f;
    idfile_make(&f, "carol");
    char text[1024];
    struct auth_identity id;
    snprintf(text, sizeof text,
             "# a comment\r\n\r\nsecret %s\r\n# another\r\npublic %s\r\n"
             "name carol\r\n",
             f.sk, f.pk);
    ck_assert_int_eq(load_text(text, &id), 0);
    ck_assert_str_eq(id.name, "carol");
    ck_assert_mem_eq(id.pk, f.id.pk, AUTH_PUBKEY_LEN);
    ck_assert_mem_eq(id.sk, f.id.sk, AUTH_SECRET_LEN);
}
END_TEST

START_TEST(identity_load_refuses_mismatched_keys)
{
    struct idfile a, b;
    idfile_make(&a, "alice");
    idfile_make(&b, "bob");
    char text[1024];
    struct auth_identity id;
    /* Alice's secret with Bob's public key. */
    snprintf(text, sizeof text, "name alice\npublic %s\nsecret %s\n", b.pk,
             a.sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
    /* One bit of the public key flipped. */
    char pk[sizeof a.pk];
    memcpy(pk, a.pk, sizeof pk);
    pk[0] = pk[0] == '0' ? '1' : '0';
    snprintf(text, sizeof text, "name alice\npublic %s\nsecret %s\n", pk, a.sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
}
END_TEST

/* An Ed25519 secret key is seed || public key. A file whose seed was
 * altered still carries the right public key in both places, but its
 * secret no longer belongs to that public key: what it signs does not
 * verify. The loader must refuse it rather than hand out a key that signs
 * garbage. */
START_TEST(identity_load_refuses_secret_seed_not_matching_public)
{
    struct idfile a;
    idfile_make(&a, "alice");
    char sk[sizeof a.sk];
    memcpy(sk, a.sk, sizeof sk);
    sk[0] = sk[0] == '0' ? '1' : '0'; /* first byte of the seed */
    char text[1024];
    snprintf(text, sizeof text, "name alice\npublic %s\nsecret %s\n", a.pk, sk);
    struct auth_identity id;
    int rv = load_text(text, &id);
    if (rv == 0) {
        /* Show what accepting it means. */
        struct auth_claim c;
        char msg[ALLOT_ERRMSG_SIZE];
        auth_sign(&id, T0, "quota.get", 0, 0, 0, "\x80", 1, &c);
        int v = auth_verify(a.id.pk, &c, "quota.get", 0, 0, 0, "\x80", 1, msg);
        ck_abort_msg("identity with a secret seed that does not derive its "
                     "public key was loaded; its signatures %s",
                     v == 0 ? "verify" : "do not verify");
    }
    ck_assert_int_eq(rv, ALLOT_EINVALID);
}
END_TEST

START_TEST(identity_load_refuses_missing_lines)
{
    struct idfile a;
    idfile_make(&a, "alice");
    char text[1024];
    struct auth_identity id;
    snprintf(text, sizeof text, "public %s\nsecret %s\n", a.pk, a.sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
    snprintf(text, sizeof text, "name alice\nsecret %s\n", a.sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
    snprintf(text, sizeof text, "name alice\npublic %s\n", a.pk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
    ck_assert_int_eq(load_text("", &id), ALLOT_EINVALID);
    ck_assert_int_eq(load_text("# only a comment\n", &id), ALLOT_EINVALID);
    /* A line without "key value". */
    snprintf(text, sizeof text, "name alice\npublic %s\nsecret %s\ngarbage\n",
             a.pk, a.sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);

    char path[512], msg[ALLOT_ERRMSG_SIZE];
    path_of(path, sizeof path, "does-not-exist.id");
    ck_assert_int_eq(auth_identity_load(path, &id, msg), ALLOT_EINVALID);
    assert_has(msg, path);
}
END_TEST

START_TEST(identity_load_refuses_bad_hex)
{
    struct idfile a;
    idfile_make(&a, "alice");
    char text[1024], pk[80], sk[160];
    struct auth_identity id;
    /* A non-hex digit in the public key, then in the secret. */
    snprintf(pk, sizeof pk, "%s", a.pk);
    pk[7] = 'z';
    snprintf(text, sizeof text, "name alice\npublic %s\nsecret %s\n", pk, a.sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
    snprintf(sk, sizeof sk, "%s", a.sk);
    sk[100] = 'Q';
    snprintf(text, sizeof text, "name alice\npublic %s\nsecret %s\n", a.pk, sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
    /* Too short, too long. */
    snprintf(text, sizeof text, "name alice\npublic %.62s\nsecret %s\n", a.pk,
             a.sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
    snprintf(text, sizeof text, "name alice\npublic %s00\nsecret %s\n", a.pk,
             a.sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
    snprintf(text, sizeof text, "name alice\npublic %s\nsecret %.126s\n", a.pk,
             a.sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
    /* Trailing junk after the hex. */
    snprintf(text, sizeof text, "name alice\npublic %s x\nsecret %s\n", a.pk,
             a.sk);
    ck_assert_int_eq(load_text(text, &id), ALLOT_EINVALID);
}
END_TEST

START_TEST(identity_load_refuses_bad_names)
{
    struct idfile a;
    idfile_make(&a, "alice");
    char text[1024], s65[66];
    memset(s65, 'x', 65);
    s65[65] = '\0';
    const char *bad[] = {"", "a b", "a/b", "group:x", s65};
    struct auth_identity id;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "name %s\npublic %s\nsecret %s\n", bad[i],
                 a.pk, a.sk);
        ck_assert_msg(load_text(text, &id) == ALLOT_EINVALID, "name \"%s\"",
                      bad[i]);
    }
    /* The name in the file is the principal: any valid one loads. */
    snprintf(text, sizeof text, "name %s\npublic %s\nsecret %s\n", s65 + 1,
             a.pk, a.sk);
    ck_assert_int_eq(load_text(text, &id), 0);
    ck_assert_str_eq(id.name, s65 + 1);
}
END_TEST

/* ===================================================================== */
/* Signatures                                                             */
/* ===================================================================== */

/* One signed request, every element the signature covers. */
struct sreq
{
    char op[32];
    uint64_t client, seq, ack;
    char body[64];
    size_t body_len;
    struct auth_claim claim;
};

static struct auth_identity SignerA, SignerB;

static void sign_setup(void)
{
    char msg[ALLOT_ERRMSG_SIZE];
    ck_assert_int_eq(auth_init(), 0);
    ck_assert_int_eq(auth_identity_new("alice", &SignerA, msg), 0);
    ck_assert_int_eq(auth_identity_new("bob", &SignerB, msg), 0);
}

static void sreq_make(struct sreq *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->op, sizeof r->op, "quota.set");
    r->client = 0x1122334455667788ull;
    r->seq = 7;
    r->ack = 7;
    /* {"path": "org"} */
    static const char body[] = "\x81\xa4path\xa3org";
    r->body_len = sizeof body - 1;
    memcpy(r->body, body, r->body_len);
    auth_sign(&SignerA, T0, r->op, r->client, r->seq, r->ack, r->body,
              r->body_len, &r->claim);
}

static int sreq_verify(const struct sreq *r, const unsigned char *pk, char *msg)
{
    return auth_verify(pk, &r->claim, r->op, r->client, r->seq, r->ack, r->body,
                       r->body_len, msg);
}

static void assert_bad(const struct sreq *r, const unsigned char *pk)
{
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_int_eq(sreq_verify(r, pk, msg), ALLOT_EUNAUTHENTICATED);
    assert_has(msg, "bad signature");
    assert_has(msg, r->claim.principal);
}

static void assert_good(const struct sreq *r)
{
    char msg[ALLOT_ERRMSG_SIZE] = "";
    ck_assert_msg(sreq_verify(r, SignerA.pk, msg) == 0, "%s", msg);
}

START_TEST(sign_verify_ok)
{
    struct sreq r;
    sreq_make(&r);
    ck_assert_str_eq(r.claim.principal, "alice");
    ck_assert_uint_eq(r.claim.ts_ms, T0);
    ck_assert(!all_zero(r.claim.nonce, AUTH_NONCE_LEN));
    assert_good(&r);
    /* A fresh nonce, hence a fresh signature, every time. */
    struct sreq r2;
    sreq_make(&r2);
    ck_assert(memcmp(r.claim.nonce, r2.claim.nonce, AUTH_NONCE_LEN) != 0);
    ck_assert(memcmp(r.claim.sig, r2.claim.sig, AUTH_SIG_LEN) != 0);
    assert_good(&r2);
    /* An empty body signs and verifies too. */
    struct auth_claim c;
    char msg[ALLOT_ERRMSG_SIZE];
    auth_sign(&SignerA, T0, "cluster.status", 0, 0, 0, NULL, 0, &c);
    ck_assert_int_eq(
        auth_verify(SignerA.pk, &c, "cluster.status", 0, 0, 0, "", 0, msg), 0);
}
END_TEST

START_TEST(verify_fails_principal_changed)
{
    struct sreq r;
    sreq_make(&r);
    snprintf(r.claim.principal, sizeof r.claim.principal, "bob");
    assert_bad(&r, SignerA.pk);
    /* The same letters with one more: not a prefix match either. */
    snprintf(r.claim.principal, sizeof r.claim.principal, "alicex");
    assert_bad(&r, SignerA.pk);
    snprintf(r.claim.principal, sizeof r.claim.principal, "alice");
    assert_good(&r);
}
END_TEST

START_TEST(verify_fails_ts_changed)
{
    struct sreq r;
    sreq_make(&r);
    r.claim.ts_ms++;
    assert_bad(&r, SignerA.pk);
    r.claim.ts_ms = T0 - 1;
    assert_bad(&r, SignerA.pk);
    r.claim.ts_ms = T0;
    assert_good(&r);
}
END_TEST

START_TEST(verify_fails_nonce_changed)
{
    struct sreq r;
    sreq_make(&r);
    for (unsigned i = 0; i < AUTH_NONCE_LEN; i++) {
        r.claim.nonce[i] ^= 0x01;
        assert_bad(&r, SignerA.pk);
        r.claim.nonce[i] ^= 0x01;
    }
    assert_good(&r);
}
END_TEST

START_TEST(verify_fails_op_changed)
{
    struct sreq r;
    sreq_make(&r);
    const char *others[] = {"quota.rm", "quota.get", "quota.setx", "quota.se",
                            ""};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        snprintf(r.op, sizeof r.op, "%s", others[i]);
        assert_bad(&r, SignerA.pk);
    }
    snprintf(r.op, sizeof r.op, "quota.set");
    assert_good(&r);
}
END_TEST

START_TEST(verify_fails_client_changed)
{
    struct sreq r;
    sreq_make(&r);
    r.client++;
    assert_bad(&r, SignerA.pk);
    r.client = 0;
    assert_bad(&r, SignerA.pk);
    r.client = 0x1122334455667788ull;
    assert_good(&r);
}
END_TEST

START_TEST(verify_fails_seq_changed)
{
    struct sreq r;
    sreq_make(&r);
    r.seq = 8;
    assert_bad(&r, SignerA.pk);
    r.seq = 6;
    assert_bad(&r, SignerA.pk);
    r.seq = 7;
    assert_good(&r);
}
END_TEST

START_TEST(verify_fails_ack_changed)
{
    struct sreq r;
    sreq_make(&r);
    r.ack = 8;
    assert_bad(&r, SignerA.pk);
    r.ack = 0;
    assert_bad(&r, SignerA.pk);
    r.ack = 7;
    assert_good(&r);
}
END_TEST

START_TEST(verify_fails_body_changed)
{
    struct sreq r;
    sreq_make(&r);
    /* {"path": "orh"} */
    r.body[r.body_len - 1] = 'h';
    assert_bad(&r, SignerA.pk);
    r.body[r.body_len - 1] = 'g';
    assert_good(&r);
    /* Cut short, one byte more, empty. */
    r.body_len--;
    assert_bad(&r, SignerA.pk);
    r.body_len += 2;
    assert_bad(&r, SignerA.pk);
    size_t len = r.body_len - 1;
    r.body_len = 0;
    assert_bad(&r, SignerA.pk);
    r.body_len = len;
    assert_good(&r);
}
END_TEST

START_TEST(verify_fails_sig_changed)
{
    struct sreq r;
    sreq_make(&r);
    r.claim.sig[0] ^= 0x80;
    assert_bad(&r, SignerA.pk);
    r.claim.sig[0] ^= 0x80;
    r.claim.sig[AUTH_SIG_LEN - 1] ^= 0x01;
    assert_bad(&r, SignerA.pk);
    r.claim.sig[AUTH_SIG_LEN - 1] ^= 0x01;
    memset(r.claim.sig, 0, AUTH_SIG_LEN);
    assert_bad(&r, SignerA.pk);
}
END_TEST

START_TEST(verify_fails_other_key)
{
    struct sreq r;
    sreq_make(&r);
    assert_bad(&r, SignerB.pk);
    /* Bob signing as "alice" does not pass for alice either. */
    struct auth_identity fake = SignerB;
    snprintf(fake.name, sizeof fake.name, "alice");
    auth_sign(&fake, T0, r.op, r.client, r.seq, r.ack, r.body, r.body_len,
              &r.claim);
    ck_assert_str_eq(r.claim.principal, "alice");
    assert_bad(&r, SignerA.pk);
    /* An all-zero key verifies nothing. */
    unsigned char zero[AUTH_PUBKEY_LEN] = {0};
    sreq_make(&r);
    assert_bad(&r, zero);
}
END_TEST

/* The signed bytes are the documented array, in that order: a client in
 * another language must be able to build them. */
START_TEST(signed_message_layout)
{
    struct sreq r;
    sreq_make(&r);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    auth_signed_message(&sb, &r.claim, r.op, r.client, r.seq, r.ack, r.body,
                        r.body_len);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, NULL), 0);
    const msgpack_object *a = &u.data;
    ck_assert_int_eq(a->type, MSGPACK_OBJECT_ARRAY);
    ck_assert_uint_eq(a->via.array.size, 9);
    const msgpack_object *e = a->via.array.ptr;
    ck_assert(wire_str_eq(&e[0], "allot-request-v1"));
    ck_assert(wire_str_eq(&e[1], "alice"));
    ck_assert_int_eq(e[2].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    ck_assert_uint_eq(e[2].via.u64, T0);
    ck_assert_int_eq(e[3].type, MSGPACK_OBJECT_BIN);
    ck_assert_uint_eq(e[3].via.bin.size, AUTH_NONCE_LEN);
    ck_assert_mem_eq(e[3].via.bin.ptr, r.claim.nonce, AUTH_NONCE_LEN);
    ck_assert(wire_str_eq(&e[4], "quota.set"));
    ck_assert_uint_eq(e[5].via.u64, r.client);
    ck_assert_uint_eq(e[6].via.u64, 7);
    ck_assert_uint_eq(e[7].via.u64, 7);
    ck_assert_int_eq(e[8].type, MSGPACK_OBJECT_BIN);
    ck_assert_uint_eq(e[8].via.bin.size, r.body_len);
    ck_assert_mem_eq(e[8].via.bin.ptr, r.body, r.body_len);
    /* And the signature is plain Ed25519 over exactly those bytes. */
    ck_assert_int_eq(crypto_sign_verify_detached(r.claim.sig,
                                                 (const unsigned char *)sb.data,
                                                 sb.size, SignerA.pk),
                     0);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* ===================================================================== */
/* Claims                                                                 */
/* ===================================================================== */

START_TEST(claim_round_trip)
{
    struct sreq r;
    sreq_make(&r);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    auth_pack_claim(&pk, &r.claim);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, NULL), 0);
    ck_assert_int_eq(u.data.type, MSGPACK_OBJECT_MAP);
    ck_assert_uint_eq(u.data.via.map.size, 4);
    struct auth_claim back;
    char msg[ALLOT_ERRMSG_SIZE];
    memset(&back, 0xee, sizeof back);
    ck_assert_int_eq(auth_unpack_claim(&u.data, &back, msg), 0);
    ck_assert_str_eq(back.principal, r.claim.principal);
    ck_assert_uint_eq(back.ts_ms, r.claim.ts_ms);
    ck_assert_mem_eq(back.nonce, r.claim.nonce, AUTH_NONCE_LEN);
    ck_assert_mem_eq(back.sig, r.claim.sig, AUTH_SIG_LEN);
    /* The decoded claim still verifies. */
    r.claim = back;
    assert_good(&r);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

enum claim_flaw {
    CF_NONE,
    CF_NOT_MAP,
    CF_NIL,
    CF_NO_PRINCIPAL,
    CF_PRINCIPAL_INT,
    CF_PRINCIPAL_BIN,
    CF_PRINCIPAL_EMPTY,
    CF_PRINCIPAL_BAD_CHAR,
    CF_PRINCIPAL_65,
    CF_NO_TS,
    CF_TS_STR,
    CF_TS_NEG,
    CF_TS_FLOAT,
    CF_NO_NONCE,
    CF_NONCE_15,
    CF_NONCE_17,
    CF_NONCE_STR,
    CF_NO_SIG,
    CF_SIG_63,
    CF_SIG_65,
    CF_SIG_STR,
    CF_COUNT
};

static void pack_bin(msgpack_packer *pk, const void *p, size_t n)
{
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, p, n);
}

static void pack_flawed_claim(msgpack_packer *pk, int flaw)
{
    unsigned char bytes[80];
    memset(bytes, 7, sizeof bytes);
    if (flaw == CF_NOT_MAP) {
        msgpack_pack_array(pk, 4);
        wire_pack_str(pk, "alice");
        msgpack_pack_uint64(pk, T0);
        pack_bin(pk, bytes, 16);
        pack_bin(pk, bytes, 64);
        return;
    }
    if (flaw == CF_NIL) {
        msgpack_pack_nil(pk);
        return;
    }
    bool no_p = flaw == CF_NO_PRINCIPAL, no_t = flaw == CF_NO_TS;
    bool no_n = flaw == CF_NO_NONCE, no_s = flaw == CF_NO_SIG;
    msgpack_pack_map(pk, 4u - no_p - no_t - no_n - no_s);
    if (!no_p) {
        wire_pack_str(pk, "principal");
        char s65[66];
        memset(s65, 'p', 65);
        s65[65] = '\0';
        switch (flaw) {
        case CF_PRINCIPAL_INT:
            msgpack_pack_uint64(pk, 5);
            break;
        case CF_PRINCIPAL_BIN:
            pack_bin(pk, "alice", 5);
            break;
        case CF_PRINCIPAL_EMPTY:
            wire_pack_str(pk, "");
            break;
        case CF_PRINCIPAL_BAD_CHAR:
            wire_pack_str(pk, "ali ce");
            break;
        case CF_PRINCIPAL_65:
            wire_pack_str(pk, s65);
            break;
        default:
            wire_pack_str(pk, "alice");
        }
    }
    if (!no_t) {
        wire_pack_str(pk, "ts");
        switch (flaw) {
        case CF_TS_STR:
            wire_pack_str(pk, "1000000");
            break;
        case CF_TS_NEG:
            msgpack_pack_int64(pk, -1);
            break;
        case CF_TS_FLOAT:
            msgpack_pack_double(pk, 1e6);
            break;
        default:
            msgpack_pack_uint64(pk, T0);
        }
    }
    if (!no_n) {
        wire_pack_str(pk, "nonce");
        switch (flaw) {
        case CF_NONCE_15:
            pack_bin(pk, bytes, 15);
            break;
        case CF_NONCE_17:
            pack_bin(pk, bytes, 17);
            break;
        case CF_NONCE_STR:
            wire_pack_str(pk, "0123456789abcdef");
            break;
        default:
            pack_bin(pk, bytes, 16);
        }
    }
    if (!no_s) {
        wire_pack_str(pk, "sig");
        switch (flaw) {
        case CF_SIG_63:
            pack_bin(pk, bytes, 63);
            break;
        case CF_SIG_65:
            pack_bin(pk, bytes, 65);
            break;
        case CF_SIG_STR: {
            char s[65];
            memset(s, 's', 64);
            s[64] = '\0';
            wire_pack_str(pk, s);
            break;
        }
        default:
            pack_bin(pk, bytes, 64);
        }
    }
}

START_TEST(claim_malformed_refused)
{
    for (int flaw = CF_NONE; flaw < CF_COUNT; flaw++) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        pack_flawed_claim(&pk, flaw);
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, NULL), 0);
        struct auth_claim c;
        char msg[ALLOT_ERRMSG_SIZE] = "";
        int rv = auth_unpack_claim(&u.data, &c, msg);
        if (flaw == CF_NONE) {
            /* The control: the well-formed one decodes. */
            ck_assert_int_eq(rv, 0);
            ck_assert_str_eq(c.principal, "alice");
        } else {
            ck_assert_msg(rv == ALLOT_EUNAUTHENTICATED, "flaw %d: %d", flaw,
                          rv);
            assert_has(msg, "auth must be");
        }
        msgpack_unpacked_destroy(&u);
        msgpack_sbuffer_destroy(&sb);
    }
}
END_TEST

/* ===================================================================== */
/* Nonce cache (node/nonce.c)                                             */
/* ===================================================================== */

static void nonce_of(unsigned char out[AUTH_NONCE_LEN], uint64_t n)
{
    memset(out, 0, AUTH_NONCE_LEN);
    memcpy(out, &n, sizeof n);
}

START_TEST(nonce_replay_refused)
{
    struct nonce_cache *c = nonce_cache_new();
    ck_assert_ptr_nonnull(c);
    unsigned char a[AUTH_NONCE_LEN], b[AUTH_NONCE_LEN];
    nonce_of(a, 1);
    nonce_of(b, 2);
    ck_assert_int_eq(nonce_cache_check(c, a, T0), 0);
    ck_assert_int_eq(nonce_cache_check(c, a, T0), 1);
    ck_assert_int_eq(nonce_cache_check(c, a, T0 + 1000), 1);
    ck_assert_int_eq(nonce_cache_check(c, b, T0 + 1000), 0);
    ck_assert_int_eq(nonce_cache_check(c, b, T0 + 1000), 1);
    /* Nonces differing in their last byte only are different nonces. */
    unsigned char d[AUTH_NONCE_LEN];
    nonce_of(d, 1);
    d[AUTH_NONCE_LEN - 1] = 1;
    ck_assert_int_eq(nonce_cache_check(c, d, T0 + 1000), 0);
    nonce_cache_free(c);
    nonce_cache_free(NULL);
}
END_TEST

/* A timestamp is accepted AUTH_CLOCK_SKEW_MS either side of the server's
 * clock, so a nonce must be refused for at least twice that. */
START_TEST(nonce_kept_for_twice_the_skew)
{
    struct nonce_cache *c = nonce_cache_new();
    const uint64_t keep = 2ull * AUTH_CLOCK_SKEW_MS;
    unsigned char a[AUTH_NONCE_LEN], other[AUTH_NONCE_LEN];
    nonce_of(a, 1);
    ck_assert_int_eq(nonce_cache_check(c, a, T0), 0);
    nonce_of(other, 100);
    ck_assert_int_eq(nonce_cache_check(c, other, T0 + keep), 0);
    ck_assert_int_eq(nonce_cache_check(c, a, T0 + keep), 1);
    /* Past the window it may be forgotten (a request that old fails the
     * clock check anyway). */
    nonce_of(other, 101);
    ck_assert_int_eq(nonce_cache_check(c, other, T0 + keep + 1), 0);
    ck_assert_int_eq(nonce_cache_check(c, a, T0 + keep + 1), 0);
    /* A clock that steps back expires nothing. */
    unsigned char z[AUTH_NONCE_LEN];
    nonce_of(z, 7);
    ck_assert_int_eq(nonce_cache_check(c, z, T0 + 10 * keep), 0);
    ck_assert_int_eq(nonce_cache_check(c, z, T0), 1);
    nonce_cache_free(c);
}
END_TEST

START_TEST(nonce_cache_bounded)
{
    struct nonce_cache *c = nonce_cache_new();
    unsigned char n[AUTH_NONCE_LEN];
    for (uint64_t i = 0; i < NODE_NONCES_MAX; i++) {
        nonce_of(n, i);
        ck_assert_int_eq(nonce_cache_check(c, n, T0), 0);
    }
    ck_assert_uint_eq(c->n, NODE_NONCES_MAX);
    /* Full: the next one pushes out the oldest, never grows the cache. */
    nonce_of(n, NODE_NONCES_MAX);
    ck_assert_int_eq(nonce_cache_check(c, n, T0), 0);
    ck_assert_uint_eq(c->n, NODE_NONCES_MAX);
    nonce_of(n, NODE_NONCES_MAX - 1); /* the newest of the first batch */
    ck_assert_int_eq(nonce_cache_check(c, n, T0), 1);
    ck_assert_uint_le(c->n, NODE_NONCES_MAX);
    nonce_of(n, 0); /* the oldest: gone */
    ck_assert_int_eq(nonce_cache_check(c, n, T0), 0);
    ck_assert_uint_le(c->n, NODE_NONCES_MAX);
    nonce_cache_free(c);
}
END_TEST

/* ===================================================================== */
/* The state machine: helpers (after tests/unit/test_fsm.c)                */
/* ===================================================================== */

static struct fsm *F;
static uint64_t Now = T0; /* the leader clock of the next entry */

static unsigned char PK_ROOT[32], PK_ROOT2[32], PK_ALICE[32], PK_BOB[32],
    PK_CAROL[32], PK_DAVE[32];

static void fsm_setup(void)
{
    ck_assert_int_eq(fsm_init(&F), 0);
    Now = T0;
    memset(PK_ROOT, 0x11, 32);
    memset(PK_ROOT2, 0x12, 32);
    memset(PK_ALICE, 0xa1, 32);
    memset(PK_BOB, 0xb0, 32);
    memset(PK_CAROL, 0xc0, 32);
    memset(PK_DAVE, 0xd0, 32);
}

static void fsm_teardown(void)
{
    fsm_close(F);
    F = NULL;
}

static struct fsm_cmd cmd_set(const char *path, const char *kvs)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_QUOTA_SET;
    c.path = path;
    c.path_len = strlen(path);
    char buf[512];
    snprintf(buf, sizeof buf, "%s", kvs);
    char *save = NULL;
    for (char *kv = strtok_r(buf, " ", &save); kv != NULL;
         kv = strtok_r(NULL, " ", &save)) {
        char msg[ALLOT_ERRMSG_SIZE] = "";
        ck_assert_msg(quota_patch_parse_kv(&c.patch, kv, msg) == 0, "%s: %s",
                      kv, msg);
    }
    return c;
}

static struct fsm_cmd cmd_rm(const char *path)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_QUOTA_RM;
    c.path = path;
    c.path_len = strlen(path);
    return c;
}

static struct fsm_cmd cmd_principal_add(const char *name,
                                        const unsigned char pk[32], bool admin)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_PRINCIPAL_ADD;
    c.subject = name;
    memcpy(c.pubkey, pk, 32);
    c.admin = admin;
    return c;
}

static struct fsm_cmd cmd_principal_rm(const char *name)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_PRINCIPAL_RM;
    c.subject = name;
    return c;
}

static struct fsm_cmd cmd_group_add(const char *name,
                                    const char *const *members, uint32_t n)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_GROUP_ADD;
    c.subject = name;
    c.members = members;
    c.n_members = n;
    return c;
}

static struct fsm_cmd cmd_group_rm(const char *name)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_GROUP_RM;
    c.subject = name;
    return c;
}

static struct fsm_cmd cmd_leader(uint64_t id, const struct fsm_admin *admins,
                                 unsigned n)
{
    struct fsm_cmd c;
    memset(&c, 0, sizeof c);
    c.type = FSM_CMD_LEADER;
    c.node_id = id;
    c.node_addr = "127.0.0.1:7001";
    c.admins = admins;
    c.n_admins = n;
    return c;
}

static struct fsm_cmd by(struct fsm_cmd c, const char *principal)
{
    c.principal = principal;
    return c;
}

static struct fsm_cmd owners(struct fsm_cmd c, const char *const *add,
                             uint32_t n_add, const char *const *rm,
                             uint32_t n_rm)
{
    c.owners_add = add;
    c.n_owners_add = n_add;
    c.owners_rm = rm;
    c.n_owners_rm = n_rm;
    return c;
}

/* Apply a buffer exactly len bytes long (so ASan sees any over-read). */
static const struct fsm_batch_result *apply_raw(const void *data, size_t len)
{
    struct raft_buffer buf;
    buf.len = len;
    buf.base = malloc(len > 0 ? len : 1);
    ck_assert_ptr_nonnull(buf.base);
    memcpy(buf.base, data, len);
    void *result = NULL;
    struct raft_fsm *rf = fsm_raft(F);
    /* A non-zero return would stall raft for good: never allowed. */
    ck_assert_int_eq(rf->apply(rf, &buf, &result), 0);
    ck_assert_ptr_nonnull(result);
    free(buf.base);
    return result;
}

static const struct fsm_batch_result *apply_n(const struct fsm_cmd *cmds,
                                              unsigned n)
{
    struct raft_buffer buf;
    ck_assert_int_eq(fsm_batch_encode(cmds, n, Now++, &buf), 0);
    const struct fsm_batch_result *b = apply_raw(buf.base, buf.len);
    raft_free(buf.base);
    ck_assert_uint_eq(b->n, n);
    return b;
}

static const struct fsm_result *apply1(struct fsm_cmd c)
{
    return &apply_n(&c, 1)->results[0];
}

static void ok(const struct fsm_result *r)
{
    ck_assert_msg(r->code == 0, "refused: %s: %s", allot_error_name(r->code),
                  r->message != NULL ? r->message : "");
}

/* Refused as permission_denied, the message naming who and what. */
static void denied(const struct fsm_result *r, const char *principal,
                   const char *what)
{
    ck_assert_msg(r->code == ALLOT_EPERMISSION_DENIED,
                  "want permission_denied, got %s: %s",
                  allot_error_name(r->code),
                  r->message != NULL ? r->message : "");
    assert_has(r->message, principal);
    if (what != NULL) {
        assert_has(r->message, what);
    }
}

/* Owners of path as one comma-separated string ("" when none). */
static const char *owners_of(const char *path)
{
    static char buf[4096];
    const struct quota *q = fsm_get(F, path, strlen(path));
    ck_assert_msg(q != NULL, "no quota %s", path);
    size_t off = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < q->n_owners; i++) {
        int w = snprintf(buf + off, sizeof buf - off, "%s%s", i ? "," : "",
                         q->owners[i]);
        off += w > 0 ? (size_t)w : 0;
    }
    return buf;
}

/* The same list, as the result of a set reported it. */
static void assert_result_owners(const struct fsm_result *r, const char *want)
{
    char buf[4096];
    size_t off = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < r->n_owners; i++) {
        int w = snprintf(buf + off, sizeof buf - off, "%s%s", i ? "," : "",
                         r->owners[i]);
        off += w > 0 ? (size_t)w : 0;
    }
    ck_assert_str_eq(buf, want);
}

static void pack_to(msgpack_sbuffer *sb, const struct fsm *f, int what)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    if (what == 0) {
        fsm_pack_principals(f, &pk);
    } else if (what == 1) {
        fsm_pack_groups(f, &pk);
    } else {
        struct fsm_audit_query q = {.limit = 1000};
        fsm_audit_pack(f, &q, &pk);
    }
}

/* Everything a refused command must leave alone. */
struct mark
{
    char digest[65];
    uint64_t version;
    uint64_t quotas;
    msgpack_sbuffer parts[3]; /* principals, groups, audit */
};

static void mark_take(const struct fsm *f, struct mark *m)
{
    fsm_digest(f, m->digest);
    m->version = fsm_catalog_version(f);
    m->quotas = fsm_quota_count(f);
    for (int i = 0; i < 3; i++) {
        pack_to(&m->parts[i], f, i);
    }
}

static void mark_free(struct mark *m)
{
    for (int i = 0; i < 3; i++) {
        msgpack_sbuffer_destroy(&m->parts[i]);
    }
}

static void assert_same(const struct mark *a, const struct mark *b)
{
    static const char *const names[] = {"principals", "groups", "audit"};
    ck_assert_str_eq(a->digest, b->digest);
    ck_assert_uint_eq(a->version, b->version);
    ck_assert_uint_eq(a->quotas, b->quotas);
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(a->parts[i].size == b->parts[i].size &&
                          memcmp(a->parts[i].data, b->parts[i].data,
                                 a->parts[i].size) == 0,
                      "%s differ", names[i]);
    }
}

/* Assert f is as marked, and release the mark. */
static void mark_check(const struct fsm *f, struct mark *m)
{
    struct mark now;
    mark_take(f, &now);
    assert_same(&now, m);
    mark_free(&now);
    mark_free(m);
}

/* Apply c and assert it was refused with `code` and changed nothing. */
static const struct fsm_result *refused(struct fsm_cmd c, int code)
{
    struct mark m;
    mark_take(F, &m);
    const struct fsm_result *r = apply1(c);
    ck_assert_msg(r->code == code, "want %s, got %s: %s",
                  allot_error_name(code), allot_error_name(r->code),
                  r->message != NULL ? r->message : "");
    mark_check(F, &m);
    return r;
}

/* Principal lookups through the public API. */
static bool is_principal(const struct fsm *f, const char *name,
                         const unsigned char *want_pk, bool want_admin)
{
    unsigned char pk[32];
    bool admin = !want_admin;
    if (!fsm_principal(f, name, pk, &admin)) {
        return false;
    }
    ck_assert_mem_eq(pk, want_pk, 32);
    ck_assert_int_eq(admin, want_admin);
    return true;
}

/* Group members as "a,b,c", or NULL if there is no such group. */
static const char *members_of(const struct fsm *f, const char *group)
{
    static char buf[4096];
    msgpack_sbuffer sb;
    pack_to(&sb, f, 1);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, NULL), 0);
    const char *found = NULL;
    ck_assert_int_eq(u.data.type, MSGPACK_OBJECT_ARRAY);
    for (uint32_t i = 0; i < u.data.via.array.size; i++) {
        const msgpack_object *g = &u.data.via.array.ptr[i];
        if (!wire_str_eq(wire_map_get(g, "name"), group)) {
            continue;
        }
        const msgpack_object *ms = wire_map_get(g, "members");
        ck_assert_ptr_nonnull(ms);
        size_t off = 0;
        buf[0] = '\0';
        for (uint32_t j = 0; j < ms->via.array.size; j++) {
            const msgpack_object *s = &ms->via.array.ptr[j];
            int w =
                snprintf(buf + off, sizeof buf - off, "%s%.*s", j ? "," : "",
                         (int)s->via.str.size, s->via.str.ptr);
            off += w > 0 ? (size_t)w : 0;
        }
        found = buf;
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return found;
}

/* The audit trail as "op principal path;" per record, oldest first. */
static const char *audit_summary(const struct fsm *f, const char *principal)
{
    static char buf[16384];
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    struct fsm_audit_query q = {.limit = 1000, .principal = principal};
    fsm_audit_pack(f, &q, &pk);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    ck_assert_int_eq(wire_unpack(sb.data, sb.size, &u, NULL), 0);
    const msgpack_object *recs = wire_map_get(&u.data, "records");
    ck_assert_ptr_nonnull(recs);
    size_t off = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < recs->via.array.size; i++) {
        const msgpack_object *r = &recs->via.array.ptr[i];
        const char *keys[] = {"op", "principal", "path"};
        for (int k = 0; k < 3; k++) {
            const msgpack_object *s = wire_map_get(r, keys[k]);
            ck_assert_ptr_nonnull(s);
            ck_assert_int_eq(s->type, MSGPACK_OBJECT_STR);
            int w = snprintf(buf + off, sizeof buf - off, "%.*s%s",
                             (int)s->via.str.size, s->via.str.ptr,
                             k < 2 ? " " : ";");
            off += w > 0 ? (size_t)w : 0;
        }
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return buf;
}

/* A snapshot as raft would hand it to restore: one raft_malloc'd buffer. */
static struct raft_buffer snapshot_take(struct fsm *f)
{
    struct raft_fsm *rf = fsm_raft(f);
    struct raft_buffer *bufs = NULL;
    unsigned n = 0;
    ck_assert_int_eq(rf->snapshot(rf, &bufs, &n), 0);
    ck_assert_uint_eq(n, 1);
    struct raft_buffer copy;
    copy.len = bufs[0].len;
    copy.base = raft_malloc(copy.len);
    ck_assert_ptr_nonnull(copy.base);
    memcpy(copy.base, bufs[0].base, copy.len);
    ck_assert_int_eq(rf->snapshot_finalize(rf, &bufs, &n), 0);
    return copy;
}

/* Replace F with a state machine restored from F's snapshot. */
static void restart_from_snapshot(void)
{
    struct raft_buffer snap = snapshot_take(F);
    struct fsm *g;
    ck_assert_int_eq(fsm_init(&g), 0);
    struct raft_fsm *rf = fsm_raft(g);
    ck_assert_int_eq(rf->restore(rf, &snap), 0); /* g owns snap now */
    struct mark a, b;
    mark_take(F, &a);
    mark_take(g, &b);
    assert_same(&a, &b);
    mark_free(&a);
    mark_free(&b);
    fsm_close(F);
    F = g;
}

/* The usual world: root (bootstrap admin), alice, bob, carol (not admins);
 * "org" created by root and owned by alice too. */
static void world(void)
{
    struct fsm_admin admins[1] = {{.name = "root"}};
    memcpy(admins[0].pk, PK_ROOT, 32);
    ok(apply1(cmd_leader(1, admins, 1)));
    ck_assert(is_principal(F, "root", PK_ROOT, true));
    ok(apply1(by(cmd_principal_add("alice", PK_ALICE, false), "root")));
    ok(apply1(by(cmd_principal_add("bob", PK_BOB, false), "root")));
    ok(apply1(by(cmd_principal_add("carol", PK_CAROL, false), "root")));
    static const char *const alice[] = {"user:alice"};
    ok(apply1(
        owners(by(cmd_set("org", "max_apps=100"), "root"), alice, 1, NULL, 0)));
    ck_assert_str_eq(owners_of("org"), "user:root,user:alice");
}

/* ===================================================================== */
/* Bootstrap, principals, groups                                          */
/* ===================================================================== */

START_TEST(bootstrap_only_while_no_principal)
{
    ck_assert(fsm_no_principals(F));
    /* A LEADER entry without admins on an empty cluster adds nothing. */
    ok(apply1(cmd_leader(1, NULL, 0)));
    ck_assert(fsm_no_principals(F));

    struct fsm_admin admins[3] = {
        {.name = "root"}, {.name = "bad name"}, {.name = "root2"}};
    memcpy(admins[0].pk, PK_ROOT, 32);
    memcpy(admins[1].pk, PK_DAVE, 32);
    memcpy(admins[2].pk, PK_ROOT2, 32);
    uint64_t v = fsm_catalog_version(F);
    ok(apply1(cmd_leader(1, admins, 3)));
    ck_assert(!fsm_no_principals(F));
    ck_assert(is_principal(F, "root", PK_ROOT, true));
    ck_assert(is_principal(F, "root2", PK_ROOT2, true));
    ck_assert(!is_principal(F, "bad name", PK_DAVE, true));
    ck_assert_uint_eq(fsm_catalog_version(F), v + 2);
    ck_assert_str_eq(audit_summary(F, NULL),
                     "principal.add bootstrap ;principal.add bootstrap ;");

    /* A later leader with other --admin flags changes nothing, whoever
     * it names. */
    struct fsm_admin later[2] = {{.name = "eve"}, {.name = "root"}};
    memcpy(later[0].pk, PK_DAVE, 32);
    memcpy(later[1].pk, PK_DAVE, 32);
    struct mark m;
    mark_take(F, &m);
    ok(apply1(cmd_leader(2, later, 2)));
    mark_check(F, &m);
    ck_assert(!is_principal(F, "eve", PK_DAVE, true));
    ck_assert(is_principal(F, "root", PK_ROOT, true));
}
END_TEST

/* Any principal, not only an admin, closes the bootstrap: on a cluster
 * that ran --insecure and added principals, --admin adds nothing. */
START_TEST(bootstrap_closed_by_any_principal)
{
    ok(apply1(cmd_principal_add("alice", PK_ALICE, false))); /* insecure */
    struct fsm_admin admins[1] = {{.name = "root"}};
    memcpy(admins[0].pk, PK_ROOT, 32);
    ok(apply1(cmd_leader(1, admins, 1)));
    unsigned char pk[32];
    bool admin;
    ck_assert(!fsm_principal(F, "root", pk, &admin));
    ck_assert(is_principal(F, "alice", PK_ALICE, false));
}
END_TEST

START_TEST(principal_add_rm)
{
    world();
    uint64_t v = fsm_catalog_version(F);
    const struct fsm_result *r =
        apply1(by(cmd_principal_add("dave", PK_DAVE, false), "root"));
    ok(r);
    ck_assert_uint_eq(r->version, v + 1);
    ck_assert(is_principal(F, "dave", PK_DAVE, false));

    /* The name is taken: exists, whatever the key. */
    r = refused(by(cmd_principal_add("dave", PK_ROOT2, true), "root"),
                ALLOT_EEXISTS);
    assert_has(r->message, "dave");
    ck_assert(is_principal(F, "dave", PK_DAVE, false));

    ok(apply1(by(cmd_principal_rm("dave"), "root")));
    unsigned char pk[32];
    bool admin;
    ck_assert(!fsm_principal(F, "dave", pk, &admin));
    r = refused(by(cmd_principal_rm("dave"), "root"), ALLOT_ENOT_FOUND);
    assert_has(r->message, "dave");

    /* An admin principal can add principals in turn. */
    ok(apply1(by(cmd_principal_add("root2", PK_ROOT2, true), "root")));
    ck_assert(is_principal(F, "root2", PK_ROOT2, true));
    ok(apply1(by(cmd_principal_add("dave", PK_DAVE, false), "root2")));
    ok(apply1(by(cmd_principal_rm("dave"), "root2")));
}
END_TEST

START_TEST(principal_commands_admin_only)
{
    world();
    const struct fsm_result *r =
        refused(by(cmd_principal_add("dave", PK_DAVE, false), "alice"),
                ALLOT_EPERMISSION_DENIED);
    denied(r, "alice", "add principals");
    /* Nor may a non-admin make itself (or anyone) an admin. */
    r = refused(by(cmd_principal_add("alice2", PK_ALICE, true), "alice"),
                ALLOT_EPERMISSION_DENIED);
    denied(r, "alice", NULL);
    r = refused(by(cmd_principal_rm("bob"), "alice"), ALLOT_EPERMISSION_DENIED);
    denied(r, "alice", "remove principals");
    r = refused(by(cmd_principal_rm("alice"), "alice"),
                ALLOT_EPERMISSION_DENIED);
    denied(r, "alice", NULL);
    /* An unknown principal, too. */
    r = refused(by(cmd_principal_add("dave", PK_DAVE, true), "mallory"),
                ALLOT_EPERMISSION_DENIED);
    denied(r, "mallory", NULL);
    /* The refusals did not even reveal whether the target exists. */
    r = refused(by(cmd_principal_rm("nobody"), "bob"),
                ALLOT_EPERMISSION_DENIED);
    denied(r, "bob", NULL);
}
END_TEST

START_TEST(group_add_rm)
{
    world();
    static const char *const m1[] = {"bob", "alice", "bob", "alice"};
    ok(apply1(by(cmd_group_add("devs", m1, 4), "root")));
    ck_assert_str_eq(members_of(F, "devs"), "alice,bob");
    /* Adding to an existing group merges, still without duplicates. */
    static const char *const m2[] = {"carol", "alice", "zed"};
    ok(apply1(by(cmd_group_add("devs", m2, 3), "root")));
    ck_assert_str_eq(members_of(F, "devs"), "alice,bob,carol,zed");
    /* A group with no members is a group. */
    ok(apply1(by(cmd_group_add("empty", NULL, 0), "root")));
    ck_assert_str_eq(members_of(F, "empty"), "");

    ok(apply1(by(cmd_group_rm("devs"), "root")));
    ck_assert_ptr_null(members_of(F, "devs"));
    const struct fsm_result *r =
        refused(by(cmd_group_rm("devs"), "root"), ALLOT_ENOT_FOUND);
    assert_has(r->message, "devs");
}
END_TEST

START_TEST(group_members_bounded)
{
    world();
    static char names[1100][16];
    static const char *ptrs[1100];
    for (unsigned i = 0; i < 1100; i++) {
        snprintf(names[i], sizeof names[i], "m%u", i);
        ptrs[i] = names[i];
    }
    ok(apply1(by(cmd_group_add("big", ptrs, 600), "root")));
    /* 600 + 500 new ones is more than a group holds: nothing added. */
    const struct fsm_result *r = refused(
        by(cmd_group_add("big", ptrs + 600, 500), "root"), ALLOT_EINVALID);
    assert_has(r->message, "at most 1024");
    /* Members already in count once. */
    ok(apply1(by(cmd_group_add("big", ptrs + 200, 824), "root")));
    refused(by(cmd_group_add("big", ptrs + 1024, 1), "root"), ALLOT_EINVALID);
}
END_TEST

START_TEST(group_commands_admin_only)
{
    world();
    static const char *const m[] = {"bob"};
    ok(apply1(by(cmd_group_add("devs", m, 1), "root")));
    static const char *const me[] = {"alice"};
    const struct fsm_result *r = refused(
        by(cmd_group_add("devs", me, 1), "alice"), ALLOT_EPERMISSION_DENIED);
    denied(r, "alice", "manage groups");
    r = refused(by(cmd_group_add("mine", me, 1), "alice"),
                ALLOT_EPERMISSION_DENIED);
    denied(r, "alice", NULL);
    /* Membership in a group gives no say over the group. */
    r = refused(by(cmd_group_rm("devs"), "bob"), ALLOT_EPERMISSION_DENIED);
    denied(r, "bob", NULL);
    ck_assert_str_eq(members_of(F, "devs"), "bob");
}
END_TEST

START_TEST(admin_only_cluster_settings)
{
    world();
    struct fsm_cmd cap;
    memset(&cap, 0, sizeof cap);
    cap.type = FSM_CMD_CAPACITY_SET;
    cap.capacity.has_memory_mb = true;
    cap.capacity.memory_mb = 1 << 20;
    struct fsm_cmd aud;
    memset(&aud, 0, sizeof aud);
    aud.type = FSM_CMD_AUDIT_CONFIG;
    aud.audit.has_max_records = true;
    aud.audit.max_records = 5000;

    const struct fsm_result *r =
        refused(by(cap, "alice"), ALLOT_EPERMISSION_DENIED);
    denied(r, "alice", "capacity");
    r = refused(by(aud, "alice"), ALLOT_EPERMISSION_DENIED);
    denied(r, "alice", "audit");
    ok(apply1(by(cap, "root")));
    ck_assert(fsm_capacity(F).has_memory_mb);
    ok(apply1(by(aud, "root")));
}
END_TEST

/* ===================================================================== */
/* Owner rules                                                            */
/* ===================================================================== */

START_TEST(creator_becomes_owner)
{
    world();
    const struct fsm_result *r =
        apply1(by(cmd_set("org/a", "max_apps=5"), "alice"));
    ok(r);
    assert_result_owners(r, "user:alice");
    ck_assert_str_eq(owners_of("org/a"), "user:alice");
    /* A later change by someone else keeps the owners as they are. */
    r = apply1(by(cmd_set("org/a", "max_apps=6"), "root"));
    ok(r);
    assert_result_owners(r, "user:alice");
    ck_assert_str_eq(owners_of("org/a"), "user:alice");
}
END_TEST

START_TEST(owner_of_self)
{
    world();
    static const char *const carol[] = {"user:carol"};
    ok(apply1(owners(by(cmd_set("org/a", "max_apps=5"), "alice"), carol, 1,
                     NULL, 0)));
    ck_assert_str_eq(owners_of("org/a"), "user:alice,user:carol");
    /* Carol owns org/a only: she may change it, create below it, remove
     * what she created... */
    ok(apply1(by(cmd_set("org/a", "max_apps=4"), "carol")));
    ok(apply1(by(cmd_set("org/a/x", "max_apps=1"), "carol")));
    ok(apply1(by(cmd_rm("org/a/x"), "carol")));
    /* ...but not its parent or its siblings, and ownership never flows
     * up: she cannot make herself an owner of the parent. */
    denied(refused(by(cmd_set("org", "max_apps=99"), "carol"),
                   ALLOT_EPERMISSION_DENIED),
           "carol", "org");
    denied(refused(by(cmd_set("org/b", "max_apps=1"), "carol"),
                   ALLOT_EPERMISSION_DENIED),
           "carol", "org/b");
    denied(refused(owners(by(cmd_set("org", ""), "carol"), carol, 1, NULL, 0),
                   ALLOT_EPERMISSION_DENIED),
           "carol", "org");
    denied(refused(by(cmd_rm("org"), "carol"), ALLOT_EPERMISSION_DENIED),
           "carol", "org");
}
END_TEST

START_TEST(owner_of_ancestor)
{
    world();
    ok(apply1(by(cmd_set("org/a", "max_apps=50"), "root")));
    ok(apply1(by(cmd_set("org/a/b", "max_apps=10"), "root")));
    ck_assert_str_eq(owners_of("org/a/b"), "user:root");
    /* Alice owns org: everything below is hers to change, at any depth. */
    ok(apply1(by(cmd_set("org/a/b", "max_apps=9"), "alice")));
    ok(apply1(by(cmd_set("org/a/b/c", "max_apps=1"), "alice")));
    ck_assert_str_eq(owners_of("org/a/b/c"), "user:alice");
    ok(apply1(by(cmd_rm("org/a/b/c"), "alice")));
    /* Including the owners of what lies below. */
    static const char *const bob[] = {"user:bob"};
    static const char *const root[] = {"user:root"};
    ok(apply1(owners(by(cmd_set("org/a/b", ""), "alice"), bob, 1, root, 1)));
    ck_assert_str_eq(owners_of("org/a/b"), "user:bob");
    /* And remove the whole subtree, what others created included. */
    struct fsm_cmd rm = by(cmd_rm("org/a"), "alice");
    rm.recursive = true;
    ok(apply1(rm));
    ck_assert_ptr_null(fsm_get(F, "org/a/b", 7));
    ck_assert_ptr_null(fsm_get(F, "org/a", 5));
}
END_TEST

/* Ownership goes by whole path segments: owning "org" says nothing about
 * "org2" or "organization/x". */
START_TEST(owner_prefix_is_not_ancestor)
{
    world();
    ok(apply1(by(cmd_set("org2", "max_apps=1"), "root")));
    ok(apply1(by(cmd_set("organization", "max_apps=1"), "root")));
    ok(apply1(by(cmd_set("organization/x", "max_apps=1"), "root")));
    denied(refused(by(cmd_set("org2", "max_apps=2"), "alice"),
                   ALLOT_EPERMISSION_DENIED),
           "alice", "org2");
    denied(refused(by(cmd_set("organization/x", "max_apps=2"), "alice"),
                   ALLOT_EPERMISSION_DENIED),
           "alice", "organization/x");
    denied(refused(by(cmd_set("org2/y", "max_apps=1"), "alice"),
                   ALLOT_EPERMISSION_DENIED),
           "alice", "org2/y");
    /* And "user:ali" is not alice. */
    static const char *const ali[] = {"user:ali", "group:alice"};
    ok(apply1(owners(by(cmd_set("org2", ""), "root"), ali, 2, NULL, 0)));
    denied(refused(by(cmd_set("org2", "max_apps=3"), "alice"),
                   ALLOT_EPERMISSION_DENIED),
           "alice", "org2");
}
END_TEST

START_TEST(non_owner_refused)
{
    world();
    ok(apply1(by(cmd_set("org/a", "max_apps=5"), "alice")));
    const struct fsm_result *r = refused(
        by(cmd_set("org/a", "max_apps=6"), "bob"), ALLOT_EPERMISSION_DENIED);
    denied(r, "bob", "org/a");
    r = refused(by(cmd_set("org/b", "max_apps=1"), "bob"),
                ALLOT_EPERMISSION_DENIED);
    denied(r, "bob", "org/b");
    r = refused(by(cmd_set("org/a/deeper", "max_apps=1"), "bob"),
                ALLOT_EPERMISSION_DENIED);
    denied(r, "bob", "org/a/deeper");
    r = refused(by(cmd_rm("org/a"), "bob"), ALLOT_EPERMISSION_DENIED);
    denied(r, "bob", "org/a");
    /* Owners are changed by owners only: bob cannot add himself. */
    static const char *const bob[] = {"user:bob"};
    static const char *const alice[] = {"user:alice"};
    r = refused(owners(by(cmd_set("org/a", ""), "bob"), bob, 1, NULL, 0),
                ALLOT_EPERMISSION_DENIED);
    denied(r, "bob", "org/a");
    r = refused(owners(by(cmd_set("org/a", ""), "bob"), NULL, 0, alice, 1),
                ALLOT_EPERMISSION_DENIED);
    ck_assert_str_eq(owners_of("org/a"), "user:alice");
    /* With if_version, the permission still comes first. */
    struct fsm_cmd c = by(cmd_set("org/a", "max_apps=7"), "bob");
    c.has_if_version = true;
    c.if_version = fsm_get(F, "org/a", 5)->version;
    refused(c, ALLOT_EPERMISSION_DENIED);
}
END_TEST

START_TEST(admin_allowed_everywhere)
{
    world();
    ok(apply1(by(cmd_set("org/a", "max_apps=5"), "alice")));
    static const char *const bob[] = {"user:bob"};
    static const char *const alice[] = {"user:alice"};
    ok(apply1(
        owners(by(cmd_set("org/a", "max_apps=6"), "root"), bob, 1, alice, 1)));
    ck_assert_str_eq(owners_of("org/a"), "user:bob");
    /* Also where no owner is left at all. */
    ok(apply1(owners(by(cmd_set("org/a", ""), "root"), NULL, 0, bob, 1)));
    ck_assert_str_eq(owners_of("org/a"), "");
    ok(apply1(by(cmd_set("org/a", "max_apps=7"), "root")));
    ok(apply1(by(cmd_set("other", "max_apps=1"), "root")));
    ok(apply1(by(cmd_rm("org/a"), "root")));
    ok(apply1(by(cmd_rm("other"), "root")));
}
END_TEST

START_TEST(top_level_admin_only)
{
    world();
    const struct fsm_result *r = refused(
        by(cmd_set("alices", "max_apps=1"), "alice"), ALLOT_EPERMISSION_DENIED);
    denied(r, "alice", "alices");
    assert_has(r->message, "only an admin creates top-level quotas");
    /* Alice owns org, but a top-level quota is nobody's subtree. */
    r = refused(by(cmd_set("bobs", "max_apps=1"), "bob"),
                ALLOT_EPERMISSION_DENIED);
    denied(r, "bob", "bobs");
    r = apply1(by(cmd_set("alices", "max_apps=1"), "root"));
    ok(r);
    assert_result_owners(r, "user:root");
    /* An existing top-level quota: its owners may change it. */
    ok(apply1(by(cmd_set("org", "max_apps=101"), "alice")));
}
END_TEST

START_TEST(group_member_is_owner)
{
    world();
    static const char *const devs[] = {"bob", "carol"};
    ok(apply1(by(cmd_group_add("devs", devs, 2), "root")));
    ok(apply1(by(cmd_set("org/a", "max_apps=5"), "alice")));
    denied(refused(by(cmd_set("org/a", "max_apps=6"), "bob"),
                   ALLOT_EPERMISSION_DENIED),
           "bob", "org/a");
    static const char *const g[] = {"group:devs"};
    ok(apply1(owners(by(cmd_set("org/a", ""), "alice"), g, 1, NULL, 0)));
    ck_assert_str_eq(owners_of("org/a"), "user:alice,group:devs");
    ok(apply1(by(cmd_set("org/a", "max_apps=6"), "bob")));
    ok(apply1(by(cmd_set("org/a/y", "max_apps=1"), "carol")));
    ck_assert_str_eq(owners_of("org/a/y"), "user:carol");
    ok(apply1(by(cmd_set("org/a/y", "max_apps=2"), "bob"))); /* ancestor */
    /* Not beyond the group's quota. */
    denied(refused(by(cmd_set("org", "max_apps=1"), "bob"),
                   ALLOT_EPERMISSION_DENIED),
           "bob", "org");
    /* A group owner that names a missing group grants nothing; once the
     * group is removed, its members lose what it gave them. */
    ok(apply1(by(cmd_group_rm("devs"), "root")));
    denied(refused(by(cmd_set("org/a", "max_apps=7"), "bob"),
                   ALLOT_EPERMISSION_DENIED),
           "bob", "org/a");
    /* A new group of that name grants to its new members only. */
    static const char *const dave[] = {"dave"};
    ok(apply1(by(cmd_principal_add("dave", PK_DAVE, false), "root")));
    ok(apply1(by(cmd_group_add("devs", dave, 1), "root")));
    ok(apply1(by(cmd_set("org/a", "max_apps=7"), "dave")));
    refused(by(cmd_set("org/a", "max_apps=8"), "bob"),
            ALLOT_EPERMISSION_DENIED);
    /* "group:bob" is not the principal bob, nor "user:devs" the group. */
    static const char *const odd[] = {"group:bob", "user:devs"};
    ok(apply1(
        owners(by(cmd_set("org/b", "max_apps=1"), "root"), odd, 2, NULL, 0)));
    refused(by(cmd_set("org/b", "max_apps=2"), "bob"),
            ALLOT_EPERMISSION_DENIED);
}
END_TEST

START_TEST(owners_add_rm)
{
    world();
    static const char *const add1[] = {"user:bob", "group:devs", "user:bob"};
    const struct fsm_result *r = apply1(
        owners(by(cmd_set("org/a", "max_apps=5"), "alice"), add1, 3, NULL, 0));
    ok(r);
    /* Creator first, then the added ones in order, without duplicates. */
    assert_result_owners(r, "user:alice,user:bob,group:devs");
    ck_assert_str_eq(owners_of("org/a"), "user:alice,user:bob,group:devs");
    uint64_t v = fsm_get(F, "org/a", 5)->version;

    /* An owners-only change: no fields, the quota's values stay. */
    static const char *const rm1[] = {"user:bob", "user:nobody"};
    static const char *const add2[] = {"user:carol"};
    r = apply1(owners(by(cmd_set("org/a", ""), "alice"), add2, 1, rm1, 2));
    ok(r);
    ck_assert_str_eq(owners_of("org/a"), "user:alice,group:devs,user:carol");
    ck_assert_uint_eq(fsm_get(F, "org/a", 5)->f.max_apps, 5);
    ck_assert_uint_gt(fsm_get(F, "org/a", 5)->version, v);

    /* Adding and removing the same owner in one command: removed. */
    static const char *const both[] = {"user:dave"};
    ok(apply1(owners(by(cmd_set("org/a", ""), "alice"), both, 1, both, 1)));
    ck_assert_str_eq(owners_of("org/a"), "user:alice,group:devs,user:carol");

    /* Owners may remove every owner, themselves included; the owners of
     * the parent keep their say. */
    static const char *const all[] = {"user:alice", "group:devs", "user:carol"};
    ok(apply1(owners(by(cmd_set("org/a", ""), "carol"), NULL, 0, all, 3)));
    ck_assert_str_eq(owners_of("org/a"), "");
    refused(by(cmd_set("org/a", "max_apps=6"), "carol"),
            ALLOT_EPERMISSION_DENIED);
    ok(apply1(by(cmd_set("org/a", "max_apps=6"), "alice")));
}
END_TEST

START_TEST(owners_validation)
{
    world();
    ok(apply1(by(cmd_set("org/a", "max_apps=5"), "alice")));
    char long_name[80];
    snprintf(long_name, sizeof long_name, "user:%065d", 0);
    const char *bad[] = {
        "alice",
        "user:",
        "group:",
        "user:bad name",
        "user:a/b",
        "USER:alice",
        "role:admin",
        "",
        "user:alice:x",
        "user",
        " user:alice",
        "user:é",
        NULL /* long name */,
    };
    bad[sizeof bad / sizeof bad[0] - 1] = long_name;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *one[] = {bad[i]};
        const struct fsm_result *r =
            refused(owners(by(cmd_set("org/a", ""), "alice"), one, 1, NULL, 0),
                    ALLOT_EINVALID);
        assert_has(r->message, "user:NAME or group:NAME");
        /* As owners_rm, just the same; and on a new quota. */
        refused(owners(by(cmd_set("org/a", ""), "alice"), NULL, 0, one, 1),
                ALLOT_EINVALID);
        refused(owners(by(cmd_set("org/n", "max_apps=1"), "alice"), one, 1,
                       NULL, 0),
                ALLOT_EINVALID);
    }
    /* The longest name is fine. */
    char longest[80];
    snprintf(longest, sizeof longest, "group:%064d", 0);
    const char *one[] = {longest};
    ok(apply1(owners(by(cmd_set("org/a", ""), "alice"), one, 1, NULL, 0)));
}
END_TEST

START_TEST(owners_at_most_32)
{
    world();
    static char names[40][24];
    static const char *ptrs[40];
    for (unsigned i = 0; i < 40; i++) {
        snprintf(names[i], sizeof names[i], "user:u%u", i);
        ptrs[i] = names[i];
    }
    /* 33 in one list: refused as such. */
    const struct fsm_result *r = refused(
        owners(by(cmd_set("org/a", "max_apps=1"), "alice"), ptrs, 33, NULL, 0),
        ALLOT_EINVALID);
    assert_has(r->message, "32");
    /* The creator counts: alice + 32 added is 33. */
    r = refused(
        owners(by(cmd_set("org/a", "max_apps=1"), "alice"), ptrs, 32, NULL, 0),
        ALLOT_EINVALID);
    assert_has(r->message, "at most 32 owners");
    /* alice + 31 is 32: fine. */
    ok(apply1(owners(by(cmd_set("org/a", "max_apps=1"), "alice"), ptrs, 31,
                     NULL, 0)));
    ck_assert_uint_eq(fsm_get(F, "org/a", 5)->n_owners, 32);
    /* One more is one too many... */
    refused(owners(by(cmd_set("org/a", ""), "alice"), ptrs + 31, 1, NULL, 0),
            ALLOT_EINVALID);
    /* ...unless one goes in the same command: counted after both. */
    ok(apply1(
        owners(by(cmd_set("org/a", ""), "alice"), ptrs + 31, 1, ptrs, 1)));
    ck_assert_uint_eq(fsm_get(F, "org/a", 5)->n_owners, 32);
    /* Without a creator (insecure), 32 added on creation fit. */
    ok(apply1(owners(cmd_set("org/b", "max_apps=1"), ptrs, 32, NULL, 0)));
    ck_assert_uint_eq(fsm_get(F, "org/b", 5)->n_owners, 32);
}
END_TEST

/* ===================================================================== */
/* Messages, removed principals, insecure                                 */
/* ===================================================================== */

START_TEST(denied_messages_name_principal_and_path)
{
    world();
    ok(apply1(by(cmd_set("org/a", "max_apps=5"), "alice")));
    struct
    {
        struct fsm_cmd c;
        const char *who, *path;
    } cases[] = {
        {by(cmd_set("org/a", "max_apps=1"), "bob"), "bob", "org/a"},
        {by(cmd_set("org/a/new", "max_apps=1"), "bob"), "bob", "org/a/new"},
        {by(cmd_set("tlq", "max_apps=1"), "carol"), "carol", "tlq"},
        {by(cmd_rm("org/a"), "carol"), "carol", "org/a"},
        {by(cmd_set("org", "max_apps=1"), "carol"), "carol", "org"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct fsm_result *r =
            refused(cases[i].c, ALLOT_EPERMISSION_DENIED);
        denied(r, cases[i].who, cases[i].path);
    }
}
END_TEST

START_TEST(removed_principal_loses_rights)
{
    world();
    static const char *const devs[] = {"bob"};
    ok(apply1(by(cmd_group_add("devs", devs, 1), "root")));
    static const char *const g[] = {"group:devs"};
    ok(apply1(
        owners(by(cmd_set("org/a", "max_apps=5"), "alice"), g, 1, NULL, 0)));
    ok(apply1(by(cmd_set("org/a", "max_apps=6"), "bob")));

    /* Alice is removed: her user: entries stay, her rights go. */
    ok(apply1(by(cmd_principal_rm("alice"), "root")));
    ck_assert_str_eq(owners_of("org"), "user:root,user:alice");
    refused(by(cmd_set("org/a", "max_apps=7"), "alice"),
            ALLOT_EPERMISSION_DENIED);
    refused(by(cmd_set("org/b", "max_apps=1"), "alice"),
            ALLOT_EPERMISSION_DENIED);
    refused(by(cmd_rm("org/a"), "alice"), ALLOT_EPERMISSION_DENIED);
    /* Bob is removed: still listed in devs, but not a principal. */
    ok(apply1(by(cmd_principal_rm("bob"), "root")));
    ck_assert_str_eq(members_of(F, "devs"), "bob");
    refused(by(cmd_set("org/a", "max_apps=7"), "bob"),
            ALLOT_EPERMISSION_DENIED);
    /* An admin removed is no admin. */
    ok(apply1(by(cmd_principal_add("root2", PK_ROOT2, true), "root")));
    ok(apply1(by(cmd_principal_rm("root"), "root2")));
    refused(by(cmd_set("org", "max_apps=1"), "root"), ALLOT_EPERMISSION_DENIED);
    refused(by(cmd_principal_add("x", PK_DAVE, true), "root"),
            ALLOT_EPERMISSION_DENIED);
    /* Within one entry, in order: removed, then refused. */
    ok(apply1(by(cmd_principal_add("carol2", PK_DAVE, false), "root2")));
    static const char *const c2[] = {"user:carol2"};
    ok(apply1(
        owners(by(cmd_set("org/c", "max_apps=1"), "root2"), c2, 1, NULL, 0)));
    struct fsm_cmd batch[] = {
        by(cmd_set("org/c", "max_apps=2"), "carol2"),
        by(cmd_principal_rm("carol2"), "root2"),
        by(cmd_set("org/c", "max_apps=3"), "carol2"),
    };
    const struct fsm_batch_result *b = apply_n(batch, 3);
    ok(&b->results[0]);
    ok(&b->results[1]);
    ck_assert_int_eq(b->results[2].code, ALLOT_EPERMISSION_DENIED);
    ck_assert_uint_eq(fsm_get(F, "org/c", 5)->f.max_apps, 2);
}
END_TEST

/* The denial for a principal the cluster does not know (removed, or never
 * added) names the path like every other denial (access.h: "naming the
 * principal, the path and who could"). */
START_TEST(removed_principal_message_names_path)
{
    world();
    ok(apply1(by(cmd_set("org/a", "max_apps=5"), "alice")));
    ok(apply1(by(cmd_principal_rm("alice"), "root")));
    const struct fsm_result *r = refused(
        by(cmd_set("org/a", "max_apps=7"), "alice"), ALLOT_EPERMISSION_DENIED);
    denied(r, "alice", "org/a");
}
END_TEST

START_TEST(insecure_principal_allowed)
{
    /* An --insecure cluster: commands carry principal "". */
    ok(apply1(cmd_set("top", "max_apps=10")));
    ck_assert_str_eq(owners_of("top"), ""); /* no creator to record */
    ok(apply1(cmd_set("top/a", "max_apps=1")));
    static const char *const m[] = {"x"};
    ok(apply1(cmd_group_add("g", m, 1)));
    ok(apply1(cmd_principal_add("alice", PK_ALICE, false)));
    ok(apply1(cmd_group_rm("g")));
    /* Still allowed once principals exist: "" is the cluster's own mode. */
    static const char *const alice[] = {"user:alice"};
    ok(apply1(owners(cmd_set("top", "max_apps=11"), alice, 1, NULL, 0)));
    ok(apply1(cmd_set("top/b", "max_apps=1")));
    ok(apply1(cmd_rm("top/a")));
    ok(apply1(cmd_principal_rm("alice")));
    ck_assert_str_eq(audit_summary(F, "anonymous"),
                     "quota.set anonymous top;quota.set anonymous top/a;"
                     "group.add anonymous ;principal.add anonymous ;"
                     "group.rm anonymous ;quota.set anonymous top;"
                     "quota.set anonymous top/b;quota.rm anonymous top/a;"
                     "principal.rm anonymous ;");
}
END_TEST

/* ===================================================================== */
/* Snapshots and the audit trail                                          */
/* ===================================================================== */

START_TEST(access_survives_snapshot)
{
    world();
    ok(apply1(by(cmd_principal_add("root2", PK_ROOT2, true), "root")));
    static const char *const devs[] = {"carol", "bob"};
    ok(apply1(by(cmd_group_add("devs", devs, 2), "root")));
    static const char *const g[] = {"group:devs", "user:dave"};
    ok(apply1(
        owners(by(cmd_set("org/a", "max_apps=5"), "alice"), g, 2, NULL, 0)));
    ok(apply1(by(cmd_set("org/b", "max_apps=5"), "alice")));

    restart_from_snapshot();

    ck_assert(is_principal(F, "root", PK_ROOT, true));
    ck_assert(is_principal(F, "root2", PK_ROOT2, true));
    ck_assert(is_principal(F, "alice", PK_ALICE, false));
    ck_assert(is_principal(F, "bob", PK_BOB, false));
    ck_assert_str_eq(members_of(F, "devs"), "bob,carol");
    ck_assert_str_eq(owners_of("org"), "user:root,user:alice");
    ck_assert_str_eq(owners_of("org/a"), "user:alice,group:devs,user:dave");
    /* The same verdicts as before: a denied request is still denied... */
    denied(refused(by(cmd_set("org/b", "max_apps=6"), "bob"),
                   ALLOT_EPERMISSION_DENIED),
           "bob", "org/b");
    refused(by(cmd_set("new-top", "max_apps=1"), "alice"),
            ALLOT_EPERMISSION_DENIED);
    refused(by(cmd_principal_add("x", PK_DAVE, false), "alice"),
            ALLOT_EPERMISSION_DENIED);
    refused(by(cmd_principal_add("bob", PK_DAVE, false), "root"),
            ALLOT_EEXISTS);
    /* ...and what was allowed still is: owner, group member, admin. */
    ok(apply1(by(cmd_set("org/b", "max_apps=6"), "alice")));
    ok(apply1(by(cmd_set("org/a", "max_apps=6"), "bob")));
    ok(apply1(by(cmd_set("new-top", "max_apps=1"), "root2")));
    ok(apply1(by(cmd_group_rm("devs"), "root2")));
    refused(by(cmd_set("org/a", "max_apps=7"), "bob"),
            ALLOT_EPERMISSION_DENIED);
    /* The bootstrap stays closed after a restore. */
    struct fsm_admin later[1] = {{.name = "eve"}};
    memcpy(later[0].pk, PK_DAVE, 32);
    ok(apply1(cmd_leader(2, later, 1)));
    unsigned char pk[32];
    bool admin;
    ck_assert(!fsm_principal(F, "eve", pk, &admin));

    /* A removed principal stays removed through a snapshot. */
    ok(apply1(by(cmd_principal_rm("alice"), "root")));
    restart_from_snapshot();
    ck_assert(!fsm_principal(F, "alice", pk, &admin));
    refused(by(cmd_set("org/b", "max_apps=7"), "alice"),
            ALLOT_EPERMISSION_DENIED);
    /* And a snapshot of a restored state restores again, the same. */
    restart_from_snapshot();
}
END_TEST

START_TEST(audit_records_principal)
{
    world();
    static const char *const devs[] = {"bob"};
    ok(apply1(by(cmd_group_add("devs", devs, 1), "root")));
    static const char *const g[] = {"group:devs"};
    ok(apply1(
        owners(by(cmd_set("org/a", "max_apps=5"), "alice"), g, 1, NULL, 0)));
    ok(apply1(by(cmd_set("org/a", "max_apps=6"), "bob")));
    refused(by(cmd_set("org/a", "max_apps=7"), "carol"),
            ALLOT_EPERMISSION_DENIED); /* no record */
    ok(apply1(by(cmd_rm("org/a"), "alice")));
    ok(apply1(by(cmd_group_rm("devs"), "root")));
    ok(apply1(by(cmd_principal_rm("carol"), "root")));
    ck_assert_str_eq(audit_summary(F, NULL),
                     "principal.add bootstrap ;"
                     "principal.add root ;principal.add root ;"
                     "principal.add root ;quota.set root org;"
                     "group.add root ;quota.set alice org/a;"
                     "quota.set bob org/a;quota.rm alice org/a;"
                     "group.rm root ;principal.rm root ;");
    /* The query by principal sees only theirs. */
    ck_assert_str_eq(audit_summary(F, "alice"),
                     "quota.set alice org/a;quota.rm alice org/a;");
    ck_assert_str_eq(audit_summary(F, "bob"), "quota.set bob org/a;");
    ck_assert_str_eq(audit_summary(F, "carol"), "");
    /* Recorded the same on a replica restored from a snapshot. */
    restart_from_snapshot();
    ck_assert_str_eq(audit_summary(F, "alice"),
                     "quota.set alice org/a;quota.rm alice org/a;");
}
END_TEST

/* ===================================================================== */
/* Suite                                                                  */
/* ===================================================================== */

static Suite *auth_suite(void)
{
    Suite *s = suite_create("auth");

    TCase *tc = tcase_create("names");
    tcase_add_checked_fixture(tc, sign_setup, NULL);
    tcase_add_test(tc, name_rules);
    tcase_add_test(tc, pubkey_hex_round_trip);
    suite_add_tcase(s, tc);

    tc = tcase_create("identity");
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, dir_setup, NULL);
    tcase_add_test(tc, identity_new_refuses_bad_names);
    tcase_add_test(tc, identity_round_trip);
    tcase_add_test(tc, identity_file_mode_0600);
    tcase_add_test(tc, identity_save_never_overwrites);
    tcase_add_test(tc, identity_load_accepts_comments_and_crlf);
    tcase_add_test(tc, identity_load_refuses_mismatched_keys);
    tcase_add_test(tc, identity_load_refuses_secret_seed_not_matching_public);
    tcase_add_test(tc, identity_load_refuses_missing_lines);
    tcase_add_test(tc, identity_load_refuses_bad_hex);
    tcase_add_test(tc, identity_load_refuses_bad_names);
    suite_add_tcase(s, tc);

    tc = tcase_create("sign");
    tcase_add_checked_fixture(tc, sign_setup, NULL);
    tcase_add_test(tc, sign_verify_ok);
    tcase_add_test(tc, verify_fails_principal_changed);
    tcase_add_test(tc, verify_fails_ts_changed);
    tcase_add_test(tc, verify_fails_nonce_changed);
    tcase_add_test(tc, verify_fails_op_changed);
    tcase_add_test(tc, verify_fails_client_changed);
    tcase_add_test(tc, verify_fails_seq_changed);
    tcase_add_test(tc, verify_fails_ack_changed);
    tcase_add_test(tc, verify_fails_body_changed);
    tcase_add_test(tc, verify_fails_sig_changed);
    tcase_add_test(tc, verify_fails_other_key);
    tcase_add_test(tc, signed_message_layout);
    tcase_add_test(tc, claim_round_trip);
    tcase_add_test(tc, claim_malformed_refused);
    suite_add_tcase(s, tc);

    tc = tcase_create("nonce");
    tcase_add_test(tc, nonce_replay_refused);
    tcase_add_test(tc, nonce_kept_for_twice_the_skew);
    tcase_add_test(tc, nonce_cache_bounded);
    suite_add_tcase(s, tc);

    tc = tcase_create("access");
    tcase_add_checked_fixture(tc, fsm_setup, fsm_teardown);
    tcase_add_test(tc, bootstrap_only_while_no_principal);
    tcase_add_test(tc, bootstrap_closed_by_any_principal);
    tcase_add_test(tc, principal_add_rm);
    tcase_add_test(tc, principal_commands_admin_only);
    tcase_add_test(tc, group_add_rm);
    tcase_add_test(tc, group_members_bounded);
    tcase_add_test(tc, group_commands_admin_only);
    tcase_add_test(tc, admin_only_cluster_settings);
    tcase_add_test(tc, creator_becomes_owner);
    tcase_add_test(tc, owner_of_self);
    tcase_add_test(tc, owner_of_ancestor);
    tcase_add_test(tc, owner_prefix_is_not_ancestor);
    tcase_add_test(tc, non_owner_refused);
    tcase_add_test(tc, admin_allowed_everywhere);
    tcase_add_test(tc, top_level_admin_only);
    tcase_add_test(tc, group_member_is_owner);
    tcase_add_test(tc, owners_add_rm);
    tcase_add_test(tc, owners_validation);
    tcase_add_test(tc, owners_at_most_32);
    tcase_add_test(tc, denied_messages_name_principal_and_path);
    tcase_add_test(tc, removed_principal_loses_rights);
    tcase_add_test(tc, removed_principal_message_names_path);
    tcase_add_test(tc, insecure_principal_allowed);
    tcase_add_test(tc, access_survives_snapshot);
    tcase_add_test(tc, audit_records_principal);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(auth_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
