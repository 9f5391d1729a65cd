/* gossip.h - SWIM membership, failure detection and encrypted dissemination.
 *
 * Servers announce rule versions through this library and data-plane hosts
 * learn who is in their fleet. Every member runs the same protocol
 * (docs/gossip.md has the full description):
 *
 *   - membership and failure detection: SWIM with Lifeguard's refinements
 *     (indirect probes with nacks, dynamic suspicion timeouts, a local
 *     health multiplier), incarnation numbers to refute suspicion, graceful
 *     leave, per-member metadata;
 *   - dissemination: small messages piggybacked on probes and acks and sent
 *     to a few random members every gossip interval, each retransmitted
 *     about retransmit_mult * log10(N) times; keyed broadcasts keep only the
 *     newest version per key;
 *   - anti-entropy: a periodic push-pull of the whole membership, the keyed
 *     values and an application blob with one random member, over a stream;
 *   - security: every datagram and stream message is sealed with
 *     XChaCha20-Poly1305 under the primary key of a keyring and accepted
 *     under any key of it.
 *
 * The protocol core does no I/O of its own: it talks to the world through a
 * struct gossip_io (send a datagram, send a stream message, read a clock,
 * arm one timer, draw random numbers). gossip_uv_new() provides one on a
 * libuv loop; tests use a deterministic in-memory one (virtual clock, fake
 * network) and run the same core.
 *
 * Threading: a struct gossip and its io belong to one thread (the loop's).
 *
 * Naming. Public: gossip_ functions and types, GOSSIP_ constants (this
 * header only). Private modules, one prefix each:
 *   gbuf_    buf.c     bounded byte reader and writer
 *   gmsg_    msg.c     message encoding and decoding
 *   gcrypt_  crypt.c   sealing and opening messages, keyring files
 *   ghash_   hash.c    byte-keyed hash table
 *   gtimer_  timer.c   timer heap behind the io's single wakeup
 *   gbq_     queue.c   broadcast queue (retransmit counts, keyed replace)
 *   swim_    swim.c    members, probes, suspicion, local health
 *   core_    gossip.c  the instance: sending, receiving, push-pull, API
 *   guv_     uv.c      the libuv io
 *   sim_     sim.c     the deterministic fake io (tests only)
 *
 * Errors: functions return 0 or a negative ALLOT_E... code
 * (proto/allot_error.h); those taking an errmsg fill an ALLOT_ERRMSG_SIZE
 * buffer with what went wrong. */
#ifndef ALLOT_GOSSIP_H
#define ALLOT_GOSSIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* --- Limits ---------------------------------------------------------------
 * Bounds on everything a peer can send. A message beyond them is dropped
 * and counted, never truncated. */

/* Member names: 1..64 printable ASCII bytes (0x21-0x7e). */
#define GOSSIP_NAME_MAX 64
/* Fleet names: 0..64 printable ASCII bytes. */
#define GOSSIP_FLEET_MAX 64
/* The application's part of a member's metadata. */
#define GOSSIP_APP_MAX 256
/* Payload of one broadcast (keyed or not): it must fit in one datagram. */
#define GOSSIP_BROADCAST_MAX 1024
/* Keys of keyed broadcasts: 1..64 printable ASCII bytes. */
#define GOSSIP_KEY_NAME_MAX 64
/* How many keys of keyed broadcasts a member remembers. */
#define GOSSIP_KEYED_MAX 256
/* Payload of one direct message (gossip_send). */
#define GOSSIP_MESSAGE_MAX (1u << 20)
/* Largest datagram a member accepts, and the largest packet_size. */
#define GOSSIP_PACKET_MAX 8192
/* Largest stream message (sealed) a member accepts: bounds a push-pull,
 * about 100,000 members with full metadata. */
#define GOSSIP_STREAM_MAX (32u << 20)

/* --- Keys and keyrings -------------------------------------------------- */

#define GOSSIP_KEY_SIZE    32
#define GOSSIP_KEYRING_MAX 8

/* keys[0] is the primary key: every message is sealed with it. Every key is
 * accepted when opening a message. */
struct gossip_keyring
{
    uint8_t keys[GOSSIP_KEYRING_MAX][GOSSIP_KEY_SIZE];
    unsigned n;
};

/* Parse a keyring file's text: one key per line, base64 (libsodium's
 * ORIGINAL variant, with padding) of 32 bytes, the first line primary.
 * Blank lines and lines starting with '#' are skipped. ALLOT_EINVALID with
 * the line number when a line is not a key, a key appears twice, there are
 * none or more than GOSSIP_KEYRING_MAX. */
int gossip_keyring_parse(struct gossip_keyring *kr, const char *text,
                         size_t len, char *errmsg);
/* Read and parse the file at path (at most 4 KiB). */
int gossip_keyring_load(struct gossip_keyring *kr, const char *path,
                        char *errmsg);
/* Write kr to path in the same format, mode 0600, atomically (a temporary
 * file renamed over path). */
int gossip_keyring_save(const struct gossip_keyring *kr, const char *path,
                        char *errmsg);
/* Fill key with random bytes (for `gossip-demo --keygen` and tests).
 * ALLOT_EINTERNAL when libsodium cannot initialize. */
int gossip_key_generate(uint8_t key[GOSSIP_KEY_SIZE]);
/* Wipe a keyring (sodium_memzero). */
void gossip_keyring_wipe(struct gossip_keyring *kr);

/* --- Addresses ---------------------------------------------------------- */

/* An IPv4 address and port, both in host byte order. */
struct gossip_addr
{
    uint32_t ip;
    uint16_t port;
};

#define GOSSIP_ADDR_STRLEN 22 /* "255.255.255.255:65535" and NUL */

/* Parse "A.B.C.D:PORT" or "localhost:PORT" (port 0-65535; 0 asks
 * gossip_uv_new() for a free port). ALLOT_EINVALID with a message
 * otherwise. */
int gossip_addr_parse(struct gossip_addr *out, const char *s, char *errmsg);
/* Parse "HOST:PORT,HOST:PORT,..." into out[0..cap) and set *n (0 for an
 * empty list or NULL). ALLOT_EINVALID with a message for a bad address or
 * more than cap of them. */
int gossip_addr_parse_list(const char *list, struct gossip_addr *out,
                           size_t cap, size_t *n, char *errmsg);
/* Format as "A.B.C.D:PORT"; returns buf. */
char *gossip_addr_format(const struct gossip_addr *a,
                         char buf[GOSSIP_ADDR_STRLEN]);
bool gossip_addr_eq(const struct gossip_addr *a, const struct gossip_addr *b);

/* --- Members ------------------------------------------------------------ */

enum gossip_state {
    GOSSIP_ALIVE = 0,
    GOSSIP_SUSPECT = 1,
    GOSSIP_DEAD = 2,
    GOSSIP_LEFT = 3,
};

enum gossip_role {
    GOSSIP_ROLE_AGENT = 0,
    GOSSIP_ROLE_SERVER = 1,
};

/* A member's metadata. In a config or gossip_set_meta() the strings and the
 * blob are copied; in a struct gossip_member they point into the library's
 * copy and stay valid until the callback returns or the next call into the
 * library, whichever comes first. */
struct gossip_meta
{
    enum gossip_role role;
    uint32_t weight;    /* the member's share of fleet limits */
    const char *fleet;  /* NUL-terminated, "" for none */
    const uint8_t *app; /* the application's blob, NULL when app_len 0 */
    size_t app_len;     /* <= GOSSIP_APP_MAX */
};

struct gossip_member
{
    const char *name;
    struct gossip_addr addr;
    enum gossip_state state;
    /* How long the member has been in this state, as of the call (0 in a
     * callback reporting a change of state). */
    uint64_t state_ms;
    uint64_t incarnation;
    struct gossip_meta meta;
    bool self;
    /* In a GOSSIP_EV_JOIN callback: the member was known before, dead or
     * left (it came back); false for one seen for the first time. */
    bool returned;
};

const char *gossip_state_name(enum gossip_state s);
const char *gossip_role_name(enum gossip_role r);

/* Where m stands in the agents of `fleet`, for dividing a fleet's limits
 * (enforce/shares.h): GOSSIP_FLEET_OUT (another role or fleet, or it
 * left: not counted), GOSSIP_FLEET_DOWN (dead: still counted as known),
 * GOSSIP_FLEET_IN (alive or suspect: in the view). */
enum gossip_fleet_place {
    GOSSIP_FLEET_OUT,
    GOSSIP_FLEET_DOWN,
    GOSSIP_FLEET_IN,
};
enum gossip_fleet_place gossip_fleet_place(const struct gossip_member *m,
                                           const char *fleet);

/* --- Callbacks ------------------------------------------------------------
 * All run on the loop, from inside the library. A callback may call
 * gossip_broadcast*(), gossip_send(), gossip_set_meta(), gossip_member_*(),
 * gossip_keyring_get(), gossip_key_cmd() and gossip_stats(), but not
 * gossip_free() (the leave callback may). */

enum gossip_event {
    GOSSIP_EV_JOIN,    /* first seen alive, or alive again after dead/left */
    GOSSIP_EV_UPDATE,  /* alive, and its metadata or address changed */
    GOSSIP_EV_SUSPECT, /* alive -> suspect */
    GOSSIP_EV_ALIVE,   /* suspect -> alive: it refuted the suspicion */
    GOSSIP_EV_DEAD,    /* declared dead */
    GOSSIP_EV_LEFT,    /* left gracefully */
};

const char *gossip_event_name(enum gossip_event ev);

struct gossip_callbacks
{
    void *data; /* passed to every callback */

    /* A member changed (never called about this member itself). */
    void (*member)(void *data, enum gossip_event ev,
                   const struct gossip_member *m);

    /* A broadcast arrived for the first time. Keyed broadcasts have key
     * (not NUL-terminated) and a version newer than any seen for that key;
     * plain ones have key NULL and version 0. Never called for this
     * member's own broadcasts. */
    void (*broadcast)(void *data, const char *key, size_t key_len,
                      uint64_t version, const void *buf, size_t len);

    /* A direct message from member `from` (gossip_send). */
    void (*message)(void *data, const char *from, const void *buf, size_t len);

    /* Push-pull: produce this member's application state. Set *buf to a
     * malloc()ed block (the library frees it) and *len, or leave *buf NULL
     * for none. join is true when the exchange is a join. */
    void (*local_state)(void *data, bool join, void **buf, size_t *len);

    /* Push-pull: the peer's application state (buf valid during the call
     * only). Called after the peer's membership has been merged. */
    void (*merge_state)(void *data, bool join, const void *buf, size_t len);

    /* This member's keyring changed, by any route: gossip_key_install(),
     * _use() or _remove() (from inside the call), gossip_key_cmd() (from
     * inside the call, for the originator's own change) or another
     * member's key command arriving. Not called when an operation changed
     * nothing (installing a key already there). Meant for persisting it:
     * gossip_keyring_get() then gossip_keyring_save(). It must not change
     * the keyring itself. */
    void (*keyring_changed)(void *data);
};

/* --- I/O interface -------------------------------------------------------
 * What the protocol core needs from the world. Every function is called on
 * the owner's thread. Buffers passed to send_* belong to the caller and are
 * copied by the io before it returns. */

struct gossip;

struct gossip_io
{
    void *impl;           /* the implementation's */
    struct gossip *owner; /* set by gossip_new(), NULL after gossip_free() */

    /* Send one datagram. Loss is fine; an error is counted, not retried. */
    int (*send_packet)(struct gossip_io *io, const struct gossip_addr *to,
                       const void *buf, size_t len);
    /* Deliver one message whole, reliably if the peer is reachable, to the
     * peer's gossip_recv_stream(). Failure after returning 0 is silent. */
    int (*send_stream)(struct gossip_io *io, const struct gossip_addr *to,
                       const void *buf, size_t len);
    /* Monotonic milliseconds. */
    uint64_t (*now)(struct gossip_io *io);
    /* Call gossip_tick() at or soon after at_ms (replaces any earlier
     * request; UINT64_MAX cancels). */
    void (*set_timer)(struct gossip_io *io, uint64_t at_ms);
    /* A uniformly random 64-bit number (seeded in simulations). */
    uint64_t (*random)(struct gossip_io *io);
};

/* Entry points for io implementations. `from` is the transport's source
 * address, used only for logs and counters: replies go to the address the
 * sealed message names. */
void gossip_recv_packet(struct gossip *g, const struct gossip_addr *from,
                        const void *buf, size_t len);
void gossip_recv_stream(struct gossip *g, const struct gossip_addr *from,
                        const void *buf, size_t len);
void gossip_tick(struct gossip *g);

/* Why an io dropped input before the core saw it (for the counters). */
enum gossip_drop {
    GOSSIP_DROP_AUTH = 0,  /* failed authentication under every key */
    GOSSIP_DROP_MALFORMED, /* authenticated but not a valid message */
    GOSSIP_DROP_OVERSIZE,  /* larger than the limits above */
    GOSSIP_DROP_OVERLOAD,  /* a bounded table was full */
    GOSSIP_DROP_COUNT
};
void gossip_count_drop(struct gossip *g, enum gossip_drop why);

/* --- Configuration ------------------------------------------------------ */

struct gossip_config
{
    const char *name;              /* required, unique in the cluster */
    struct gossip_addr addr;       /* advertised to peers (required) */
    struct gossip_meta meta;       /* copied */
    struct gossip_keyring keyring; /* copied; at least one key */
    struct gossip_callbacks cb;

    /* Timing (milliseconds) and fan-outs; docs/gossip.md explains each.
     * gossip_config_init() sets the defaults shown. */
    uint32_t probe_interval_ms;     /* 400: one probe per interval */
    uint32_t probe_timeout_ms;      /* 200: direct ack before indirect */
    uint32_t indirect_checks;       /* 3: members asked to probe for us */
    uint32_t suspicion_mult;        /* 4: min = mult*log10(N)*interval */
    uint32_t suspicion_max_mult;    /* 6: max = this * min */
    uint32_t retransmit_mult;       /* 4: sends = mult*ceil(log10(N+1)) */
    uint32_t gossip_interval_ms;    /* 200: broadcast-only packets */
    uint32_t gossip_nodes;          /* 3: members per gossip interval */
    uint32_t gossip_to_dead_ms;     /* 30000: keep gossiping to the dead */
    uint32_t push_pull_interval_ms; /* 30000 (0: off), scaled up past 32 */
    uint32_t reconnect_interval_ms; /* 30000 (0: off): push-pull a dead one */
    uint32_t join_retry_ms;         /* 2000: retry seeds while alone */
    uint32_t awareness_max;         /* 8: local health multiplier bound */
    uint32_t dead_forget_ms;        /* 3600000: forget dead/left after */
    uint32_t leave_timeout_ms;      /* 3000: bound on gossip_leave() */
    uint32_t packet_size;           /* 1400: sealed datagram bytes */
};

/* Fill cfg with the defaults above; name, addr and keyring stay empty. */
void gossip_config_init(struct gossip_config *cfg);

/* --- Lifecycle ---------------------------------------------------------- */

/* Create a member on io (which must outlive it) and start its timers. It
 * knows only itself until gossip_join(). ALLOT_EINVALID for a bad config,
 * ALLOT_ENOMEM. On success *out is the caller's, to gossip_free(). */
int gossip_new(struct gossip **out, struct gossip_io *io,
               const struct gossip_config *cfg, char *errmsg);

/* Join through seeds: a push-pull with each (addresses may include this
 * member's own; it is skipped). Retried every join_retry_ms while no other
 * member is known; JOIN events report the members found. Returns 0 once
 * the requests are handed to the io; ALLOT_EINVALID for 0 or more than
 * 1,024 seeds; ALLOT_ENOMEM. The seeds are copied. */
int gossip_join(struct gossip *g, const struct gossip_addr *seeds, size_t n);

struct gossip_leave;
typedef void (*gossip_leave_cb)(struct gossip_leave *req, int status);

/* A leave request, owned by the caller; it must stay valid until cb runs. */
struct gossip_leave
{
    void *data; /* the caller's */
    /* private */
    gossip_leave_cb cb;
};

/* Leave gracefully: tell the others this member left (they mark it left,
 * not dead) and stop probing. cb runs once the news has been retransmitted
 * enough times (status 0), after leave_timeout_ms (ALLOT_ETIMEOUT), or from
 * gossip_free() (ALLOT_ESHUTDOWN); never from inside gossip_leave(). cb may
 * call gossip_free(). On an error return cb is never called. */
int gossip_leave(struct gossip *g, struct gossip_leave *req,
                 gossip_leave_cb cb);

/* Stop and free everything. Safe at any time outside the library's
 * callbacks, and from the leave callback (a pending leave completes with
 * ALLOT_ESHUTDOWN). The io stays the caller's. */
void gossip_free(struct gossip *g);

/* --- Using it ----------------------------------------------------------- */

/* Broadcast a payload (<= GOSSIP_BROADCAST_MAX) to every member, each
 * delivering it once. ALLOT_ETOO_BIG, ALLOT_EUNAVAILABLE when too many
 * plain broadcasts are still being spread, ALLOT_ENOMEM. */
int gossip_broadcast(struct gossip *g, const void *buf, size_t len);

/* Broadcast version `version` of key: members keep and forward only the
 * newest version of each key, and push-pull carries them, so a member that
 * missed the broadcast still gets the newest. ALLOT_ECONFLICT when this
 * member already knows that version or a newer one; ALLOT_EINVALID for a
 * bad key; ALLOT_ETOO_BIG; ALLOT_EUNAVAILABLE when GOSSIP_KEYED_MAX keys
 * are known already. */
int gossip_broadcast_keyed(struct gossip *g, const char *key, uint64_t version,
                           const void *buf, size_t len);

/* The newest known version of key: 0 and fills *version (and, when buf is
 * not NULL, copies up to cap bytes of the payload and sets *len to its full
 * length), or ALLOT_ENOT_FOUND. */
int gossip_keyed_get(struct gossip *g, const char *key, uint64_t *version,
                     void *buf, size_t cap, size_t *len);

/* Send a message to one member: one datagram when it fits, a stream
 * otherwise. ALLOT_ENOT_FOUND when the member is unknown, dead or left,
 * ALLOT_ETOO_BIG beyond GOSSIP_MESSAGE_MAX. */
int gossip_send(struct gossip *g, const char *name, const void *buf,
                size_t len);

/* Change this member's metadata: a new incarnation, spread to everyone.
 * ALLOT_EINVALID for bad metadata; ALLOT_ESHUTDOWN once gossip_leave() was
 * called (the member stays left). */
int gossip_set_meta(struct gossip *g, const struct gossip_meta *meta);

/* Look a member up by name (this member included). ALLOT_ENOT_FOUND. The
 * view's pointers follow the rule of struct gossip_meta. */
int gossip_member_find(struct gossip *g, const char *name,
                       struct gossip_member *out);

/* Call fn for every known member, this one included, in no set order.
 * fn must not call into the library. */
void gossip_member_foreach(struct gossip *g,
                           void (*fn)(void *data, const struct gossip_member *),
                           void *data);

/* How many known members are in state s (this member included). */
size_t gossip_member_count(struct gossip *g, enum gossip_state s);

/* This member's view of itself. */
void gossip_self(struct gossip *g, struct gossip_member *out);

/* --- Keys at runtime ------------------------------------------------------
 * Rotation (docs/gossip.md): install the new key everywhere, then use it
 * everywhere, then remove the old one everywhere. */

/* Add key to the accepted keys. ALLOT_EEXISTS, ALLOT_EUNAVAILABLE when the
 * ring is full. */
int gossip_key_install(struct gossip *g, const uint8_t key[GOSSIP_KEY_SIZE]);
/* Make an installed key the primary one. ALLOT_ENOT_FOUND. */
int gossip_key_use(struct gossip *g, const uint8_t key[GOSSIP_KEY_SIZE]);
/* Stop accepting key. ALLOT_ENOT_FOUND; ALLOT_EINVALID for the primary. */
int gossip_key_remove(struct gossip *g, const uint8_t key[GOSSIP_KEY_SIZE]);
/* A copy of the current keyring (to save it). */
void gossip_keyring_get(struct gossip *g, struct gossip_keyring *out);

/* --- Keys across the fleet ------------------------------------------------
 * One call changes or lists the keyring of every member, the way Serf's
 * `serf keys` does (docs/gossip.md, "Rotating keys across the fleet"):
 *
 *   1. this member applies the operation to its own keyring; if it refuses,
 *      the call fails at once and nothing is sent;
 *   2. a KEY_CMD message (random id, this member's name and address, op,
 *      key) spreads like any broadcast, sealed under the primary key;
 *   3. every member that opens it applies it once (dedupe by id) and
 *      answers this member directly: done, refused with an error, or (LIST)
 *      its keys, primary first;
 *   4. cb runs when every member asked has answered or when timeout_ms has
 *      passed. Members that have not answered by 1/4, 2/4 and 3/4 of the
 *      timeout get the command again directly (at most 256 each time).
 *
 * Operations are idempotent, so a command can be re-run: installing a key
 * already there and removing one that is absent succeed without a change.
 * A member refuses USE of a key it does not hold (ALLOT_ENOT_FOUND),
 * REMOVE of its primary key (ALLOT_EINVALID) and INSTALL into a full ring
 * (ALLOT_EUNAVAILABLE).
 *
 * Members that are down, partitioned away or hold none of this member's
 * keys do not get the command and are not told later: they show up as
 * silent (ALLOT_ETIMEOUT); run the command again once they are back. USE
 * before every member holds the key cuts the members without it off:
 * INSTALL, check with LIST that `members` equals the fleet, then USE. */

enum gossip_key_op {
    GOSSIP_KEY_LIST = 0,    /* report every member's keys */
    GOSSIP_KEY_INSTALL = 1, /* add a key (accepted, not used to send) */
    GOSSIP_KEY_USE = 2,     /* make an installed key the primary one */
    GOSSIP_KEY_REMOVE = 3,  /* stop accepting a key (not the primary) */
};

const char *gossip_key_op_name(enum gossip_key_op op);

/* Commands one member may have outstanding at once. */
#define GOSSIP_KEYCMD_MAX 4
/* Distinct keys a LIST reports (8 per member, usually the same ones). */
#define GOSSIP_KEY_LIST_MAX 32
/* Error text a member sends back, NUL included. */
#define GOSSIP_KEYCMD_ERROR_MAX 128

/* One key seen by a LIST. */
struct gossip_key_count
{
    uint8_t key[GOSSIP_KEY_SIZE];
    uint32_t members; /* members (that answered) holding it */
    uint32_t primary; /* members using it as their primary key */
};

struct gossip_key_cmd;
typedef void (*gossip_key_cmd_cb)(struct gossip_key_cmd *req, int status);

/* A fleet key command, owned by the caller; it must stay valid until cb
 * runs. The results are filled when cb runs. Members count once each, this
 * member included. */
struct gossip_key_cmd
{
    void *data; /* the caller's */

    /* Results, valid in cb. */
    enum gossip_key_op op;
    uint32_t asked;  /* members alive or suspect when it was sent */
    uint32_t acks;   /* members that applied it (LIST: answered) */
    uint32_t errors; /* members that refused it */
    /* The first refusal: who and why ("" when none). */
    char error_member[GOSSIP_NAME_MAX + 1];
    char error[GOSSIP_KEYCMD_ERROR_MAX];
    /* One member asked that never answered ("" when all did). */
    char silent_member[GOSSIP_NAME_MAX + 1];
    /* LIST: every key the answers named, in order of first sight. */
    struct gossip_key_count keys[GOSSIP_KEY_LIST_MAX];
    unsigned n_keys;
    bool keys_truncated; /* more than GOSSIP_KEY_LIST_MAX distinct keys */

    /* private */
    gossip_key_cmd_cb cb;
    void *priv;
};

/* Apply op (with key; NULL for LIST) here, then on every member; cb(req,
 * status) runs once, from the loop, never from inside this call:
 *   0                   every member asked applied it (LIST: answered);
 *   the first refusal's code (ALLOT_EINVALID, ALLOT_ENOT_FOUND,
 *                       ALLOT_EUNAVAILABLE) when any member refused, even
 *                       if others were silent;
 *   ALLOT_ETIMEOUT      none refused but some never answered in timeout_ms;
 *   ALLOT_ESHUTDOWN     gossip_free() came first.
 * The counts are filled in every case. Returns 0, or (and cb is never
 * called, nothing is sent, the keyring is unchanged) ALLOT_EINVALID for a
 * bad op, a NULL key or cb, or timeout_ms 0 or above 3,600,000;
 * ALLOT_EUNAVAILABLE when GOSSIP_KEYCMD_MAX commands are outstanding or
 * too many are waiting to be spread; ALLOT_ENOMEM; or this member's own
 * refusal (ALLOT_EINVALID: removing the primary key, ALLOT_ENOT_FOUND: using
 * an absent key, ALLOT_EUNAVAILABLE: installing into a full ring). */
int gossip_key_cmd(struct gossip *g, struct gossip_key_cmd *req,
                   enum gossip_key_op op, const uint8_t *key,
                   uint32_t timeout_ms, gossip_key_cmd_cb cb);

/* --- Counters ----------------------------------------------------------- */

struct gossip_stats
{
    uint64_t packets_sent, packets_recv, bytes_sent, bytes_recv;
    uint64_t streams_sent, streams_recv;
    uint64_t send_errors;
    uint64_t dropped[GOSSIP_DROP_COUNT]; /* indexed by enum gossip_drop */
    uint64_t probes;                     /* direct probes started */
    uint64_t indirect_probes;            /* ping-reqs sent */
    uint64_t probe_failures;             /* probes ending without any ack */
    uint64_t nacks_recv;
    uint64_t suspicions;       /* members this one began to suspect */
    uint64_t deaths;           /* suspicions this one let expire into dead */
    uint64_t final_acks;       /* expired suspicions whose member answered a
                                  last ping (swim.c): started over */
    uint64_t refutes;          /* times this member refuted claims about it */
    uint64_t push_pulls;       /* push-pull exchanges started */
    uint64_t catchups;         /* of them, the one after a join */
    uint64_t broadcasts_recv;  /* broadcasts delivered to the application */
    uint64_t broadcasts_stale; /* keyed broadcasts older than known */
    uint64_t messages_recv;    /* direct messages delivered */
    uint64_t key_cmds_recv;    /* other members' key commands applied */
    uint32_t awareness;        /* current local health score, 0 = healthy */
    uint32_t queue_len;        /* broadcasts waiting to be retransmitted */
    uint64_t incarnation;      /* this member's */
};

void gossip_stats(struct gossip *g, struct gossip_stats *out);

/* --- The libuv io ------------------------------------------------------------
 * One UDP socket and one TCP listener on the same address and port. Streams
 * are one connection per message: a 4-byte big-endian length, the sealed
 * message, close. Inbound connections are bounded (count, size, idle time). */

struct gossip_uv;

/* Bind UDP and TCP on addr (port 0: the same free port for both). */
int gossip_uv_new(struct gossip_uv **out, uv_loop_t *loop,
                  const struct gossip_addr *bind, char *errmsg);
struct gossip_io *gossip_uv_io(struct gossip_uv *u);
/* The address actually bound (the port chosen when 0 was asked). */
struct gossip_addr gossip_uv_addr(const struct gossip_uv *u);

typedef void (*gossip_uv_close_cb)(void *data);
/* Close every handle; cb(data) runs once all are closed and u is freed.
 * gossip_free() the member first: the io must outlive it. On error
 * gossip_uv_new() may leave handles closing on the loop: run the loop
 * before uv_loop_close(). */
void gossip_uv_close(struct gossip_uv *u, gossip_uv_close_cb cb, void *data);

#endif /* ALLOT_GOSSIP_H */
