/* core.h - the gossip instance, shared by gossip.c and swim.c (private).
 *
 * One struct gossip per member. Everything it knows about the others is in
 * `members` (an array, shuffled for round-robin probing) and `by_name` (a
 * hash on the same objects). It never blocks and never reads a clock or a
 * socket itself: all of that goes through g->io. */
#ifndef ALLOT_GOSSIP_CORE_H
#define ALLOT_GOSSIP_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"
#include "crypt.h"
#include "gossip.h"
#include "hash.h"
#include "msg.h"
#include "queue.h"
#include "timer.h"

#define container_of(ptr, type, field) \
    ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

/* Confirmations a suspicion can count: suspicion_mult - 2, bounded so a
 * suspicion's accusers stay a short list (its from[] holds k + 1). */
#define SUSP_CONFIRM_MAX 16
/* Accuser names up to this long are kept in the suspicion, so the SUSPECT
 * about it is encoded when sent instead of copied into the queue. */
#define SUSP_NEWS_FROM_MAX 15
/* Probes relayed for others at once (ping-req); more are dropped. */
#define RELAY_MAX 64
/* Last-chance probes of members whose suspicion ran out, at once. */
#define FINAL_MAX 16
/* Plain broadcast ids remembered to deliver each once. */
#define SEEN_MAX 4096

/* Keyring command ids remembered to apply each once. A command's copies
 * stop circulating after retransmit_mult * log10(N) sends, seconds at most;
 * 1,024 ids cover far more commands than operators issue in that time. */
#define KEYCMD_SEEN_MAX 1024
/* Members a retry round re-sends a command to directly: bounds the burst. */
#define KEYCMD_RETRY_BATCH 256
/* Retry rounds per command, evenly spread over its timeout. */
#define KEYCMD_RETRIES 3

struct member;

struct suspicion
{
    struct member *m;
    uint64_t inc;   /* the incarnation suspected */
    uint64_t start; /* ms */
    struct gtimer timer;
    uint32_t min_ms; /* timeouts are seconds: 32 bits hold 49 days */
    uint32_t max_ms;
    uint8_t k;      /* confirmations that bring the timeout to min */
    uint8_t n;      /* confirmations so far */
    uint8_t n_from; /* accusers recorded in from[] */
    /* The accuser named in the SUSPECT this member has queued about m (its
     * embedded news, swim.c): the first accuser, then the latest
     * confirmation. "" when the name does not fit: that news is queued as
     * a copy instead. */
    char news_from[SUSP_NEWS_FROM_MAX + 1];
    /* Hashes of the accusers' names: the first and k confirmations, so
     * k + 1 of them (one allocation). A member in a large partition holds
     * one suspicion for every member on the other side (5,000 in a 10,000
     * member fleet split in two), so the struct is kept small: 104 bytes
     * for the default k = 2, where a fixed array for SUSP_CONFIRM_MAX took
     * 216 and the queued accusation was a separate copy of ~100 more. */
    uint64_t from[];
};

/* What this member knows of another (or of itself). One allocation: the
 * fields, then the name, the fleet and the application metadata, so a
 * member costs a single small block (80 bytes for a short name with no
 * fleet or metadata, where it took 96 plus 32 per fleet string before): a
 * 10,000-member fleet holds 10,000 of them in every member. */
struct member
{
    struct gbq_item news; /* news about it, when queued (swim.c) */
    struct gossip_addr addr;
    uint64_t inc;
    uint64_t state_change;  /* ms when state last changed */
    struct suspicion *susp; /* owned; only while suspect */
    uint32_t weight;
    uint16_t app_len;
    uint8_t state; /* enum gossip_state */
    uint8_t role;  /* enum gossip_role */
    uint8_t name_len;
    /* The name, NUL-terminated; the fleet, NUL-terminated ("" for none);
     * app_len bytes of application metadata. */
    char name[];
};

static inline const char *member_fleet(const struct member *m)
{
    return m->name + m->name_len + 1;
}

static inline const uint8_t *member_app(const struct member *m)
{
    const char *fleet = member_fleet(m);
    return m->app_len > 0 ? (const uint8_t *)fleet + strlen(fleet) + 1 : NULL;
}

/* A probe this member relays for another (it received a PING_REQ). */
struct relay
{
    bool used;
    bool want_nack;
    uint32_t seq;        /* of our PING to the target */
    uint32_t origin_seq; /* of the requester's probe */
    struct gossip_addr origin;
    struct gtimer nack_timer;
    struct gtimer expire_timer;
};

/* A keyed broadcast's newest value. */
struct keyed_val
{
    uint64_t version;
    size_t len;
    uint8_t key_len;
    char key[GOSSIP_KEY_NAME_MAX + 1];
    uint8_t payload[];
};

/* A member asked by a key command this member started. */
struct keycmd_peer
{
    bool answered;
    char name[GOSSIP_NAME_MAX + 1];
};

/* A key command this member started (gossip_key_cmd), until its callback.
 * Results accumulate in req as answers arrive. */
struct keycmd
{
    struct gossip_key_cmd *req;
    uint64_t id;
    uint8_t op;
    bool has_key;
    uint8_t key[GOSSIP_KEY_SIZE];
    uint8_t reply_key_id[GCRYPT_KEY_ID]; /* this member's primary when sent */
    uint64_t start;
    uint64_t timeout;
    unsigned retries;          /* retry rounds done */
    int first_error;           /* the first refusal's code, 0 for none */
    size_t n_peers;            /* members asked, this one excluded */
    size_t n_answered;         /* of them */
    size_t retry_next;         /* where the next retry round starts */
    struct keycmd_peer *peers; /* owned, n_peers */
    struct ghash by_name;      /* name -> peer in peers[] */
    struct gtimer timer;       /* retry, deadline, or done */
};

/* A remembered key command id and what applying it gave. */
struct keycmd_seen
{
    uint64_t id;
    int status;
};

struct gossip
{
    struct gossip_io *io;
    struct gossip_config cfg; /* copy; name and meta pointers are not kept */
    struct gossip_keyring keyring;

    struct member *self;
    struct member **members; /* every known member, self included */
    size_t n_members;
    size_t cap_members;
    struct ghash by_name;
    size_t n_state[4]; /* members per enum gossip_state */
    size_t probe_idx;  /* next position to probe in members[] */

    struct gbq queue;
    struct gtimer_heap timers;
    uint64_t timer_asked; /* deadline last handed to io->set_timer */

    uint32_t seq;       /* probe sequence numbers */
    uint32_t awareness; /* local health: 0 healthy .. awareness_max - 1 */
    struct
    {
        bool active;
        bool acked;
        uint32_t seq;
        uint64_t inc; /* the target's incarnation when the probe began */
        unsigned expected_nacks;
        unsigned nacks;
        char target[GOSSIP_NAME_MAX + 1];
        struct gtimer ack_timer; /* direct ack deadline: go indirect */
    } probe;
    struct gtimer probe_timer; /* ends a probe and starts the next */
    struct relay relays[RELAY_MAX];
    /* A suspicion that runs out first pings its member once more
     * (swim.c, on_suspicion_timeout): an ack re-arms it, silence kills. */
    struct final_probe
    {
        bool used;
        uint32_t seq;
        uint64_t inc; /* the incarnation suspected */
        char name[GOSSIP_NAME_MAX + 1];
        struct gtimer timer;
    } finals[FINAL_MAX];

    struct gtimer gossip_timer;
    uint64_t last_gossip;  /* ms of the last gossip round */
    unsigned early_rounds; /* early rounds still owed to fresh news */
    struct gtimer pushpull_timer;
    struct gtimer reconnect_timer;
    struct gtimer join_timer;
    /* One push-pull a while after a seed answered our join: until our
     * ALIVE has spread nobody gossips to us, so news of members that
     * joined just after us can pass us by; the next regular push-pull may
     * be minutes away in a large fleet. */
    struct gtimer catchup_timer;
    /* A seed answered our join. Until then the join timer keeps asking the
     * seeds even if others found us: two nodes started at once can each
     * miss the other's seed and form islands that never meet. */
    bool joined;
    struct gossip_addr *seeds;
    size_t n_seeds;

    bool leaving;
    bool leave_fire; /* call the leave callback at the end of the tick */
    int leave_status;
    struct gossip_leave *leave_req;
    struct gtimer leave_timer;

    struct
    {
        uint64_t ids[SEEN_MAX];
        size_t next; /* ring position to overwrite */
        size_t n;
        struct ghash set; /* keys point into ids[] */
    } seen;
    struct ghash keyed; /* key -> struct keyed_val */

    struct keycmd *keycmds[GOSSIP_KEYCMD_MAX]; /* owned; NULL: free slot */
    bool freeing;                              /* inside gossip_free() */
    struct
    {
        struct keycmd_seen ent[KEYCMD_SEEN_MAX];
        size_t next; /* ring position to overwrite */
        size_t n;
        struct ghash set; /* keys point into ent[].id */
    } cmd_seen;

    struct gossip_stats stats;
    /* Scratch for one datagram: what is being built and what arrived. */
    uint8_t out_plain[GOSSIP_PACKET_MAX];
    uint8_t out_sealed[GOSSIP_PACKET_MAX];
    uint8_t in_plain[GOSSIP_PACKET_MAX];
};

/* --- gossip.c: sending, arming the io's timer --------------------------- */

uint64_t core_now(struct gossip *g);
uint64_t core_random(struct gossip *g, uint64_t bound); /* [0, bound) */
/* Start a datagram in g->out_plain. */
void core_packet_begin(struct gossip *g, struct gbuf_w *w);
/* Piggyback queued broadcasts if asked, seal and send what w holds. */
void core_packet_send(struct gossip *g, const struct gossip_addr *to,
                      struct gbuf_w *w, bool piggyback);
/* The same, sealed with key instead of the primary key. */
void core_packet_send_key(struct gossip *g, const struct gossip_addr *to,
                          struct gbuf_w *w, bool piggyback,
                          const uint8_t key[GOSSIP_KEY_SIZE]);
/* Seal and send a stream message. */
int core_stream_send(struct gossip *g, const struct gossip_addr *to,
                     const uint8_t *plain, size_t len);
/* Queue a broadcast; errors are counted (the news is lost only here). */
void core_queue(struct gossip *g, const char *key, size_t key_len,
                const struct gbuf_w *msg, unsigned flags);
/* Retransmit limit for the current cluster size. */
uint32_t core_retransmit_limit(struct gossip *g);
/* Push-pull with addr (join: the first exchange with a seed). */
void core_push_pull(struct gossip *g, const struct gossip_addr *to, bool join);
void core_timer_start(struct gossip *g, struct gtimer *t, uint64_t at);
/* Fill a member view. */
void core_view(struct gossip *g, const struct member *m, bool self,
               struct gossip_member *out);

/* --- swim.c: membership and failure detection --------------------------- */

int swim_init(struct gossip *g);
void swim_free(struct gossip *g);
struct member *swim_find(struct gossip *g, const char *name, size_t len);
/* Members counted in N for timeouts and retransmits: alive and suspect. */
size_t swim_live_count(struct gossip *g);

void swim_on_ping(struct gossip *g, const struct gmsg_ping *m);
void swim_on_ping_req(struct gossip *g, const struct gmsg_ping_req *m);
void swim_on_ack(struct gossip *g, uint32_t seq);
void swim_on_nack(struct gossip *g, uint32_t seq);
void swim_on_alive(struct gossip *g, const struct gmsg_alive *a);
/* For simulations (sim_warm): learn the member a describes as one known
 * for long - alive, no news about it queued, the application told with
 * GOSSIP_EV_JOIN. ALLOT_EEXISTS when it is known already, ALLOT_ENOMEM. */
int swim_seed(struct gossip *g, const struct gmsg_alive *a);
void swim_on_suspect(struct gossip *g, uint64_t inc, struct gmsg_str name,
                     struct gmsg_str from);
void swim_on_dead(struct gossip *g, uint64_t inc, struct gmsg_str name,
                  struct gmsg_str from);
/* Take new metadata for this member (a's name and inc are ignored) and
 * announce it with a new incarnation. ALLOT_ENOMEM. */
int swim_update_self(struct gossip *g, const struct gmsg_alive *a);
/* Fill the ALIVE fields for m. */
void swim_alive_of(const struct member *m, struct gmsg_alive *a);
/* The queue's encode callback (gbq_encode_fn): a member's embedded news. */
size_t swim_encode_news(void *arg, const struct gbq_item *it, uint8_t *buf,
                        size_t cap);
/* Pick up to k random members passing filter (not self). */
enum swim_pick { SWIM_PICK_ALIVE, SWIM_PICK_GOSSIP, SWIM_PICK_DEAD };
size_t swim_pick(struct gossip *g, enum swim_pick which, size_t k,
                 const struct member *exclude, struct member **out);
/* Begin leaving: this member's state becomes left, probing stops. */
void swim_leave(struct gossip *g);
void swim_start(struct gossip *g);

#endif /* ALLOT_GOSSIP_CORE_H */
