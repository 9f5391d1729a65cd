/* gen_gossip_corpus.c - seed inputs for fuzz_gossip: one plaintext per
 * message type, a compound datagram and a push-pull, written to the
 * directory named on the command line (tests/fuzz/run-gossip runs it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "gossip.h"
#include "msg.h"

static const struct gossip_addr peer = {0x0a000002, 7946};

static void save(const char *dir, const char *name, const struct gbuf_w *w)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/gossip_%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || w->failed || fwrite(w->p, 1, w->len, f) != w->len) {
        fprintf(stderr, "gen_gossip_corpus: cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_gossip_corpus DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    uint8_t buf[4096];
    struct gbuf_w w;
    struct gmsg_alive a = {.inc = 4,
                           .name = {"peer", 4},
                           .addr = peer,
                           .role = GOSSIP_ROLE_SERVER,
                           .weight = 3,
                           .fleet = {"blue", 4},
                           .app = (const uint8_t *)"app",
                           .app_len = 3};

    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_ping(&w, 1, "me", "peer", &peer);
    save(dir, "ping", &w);
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_ping_req(&w, 2, "peer", &peer, true, "other", &peer);
    save(dir, "ping_req", &w);
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_ack(&w, GMSG_ACK, 1);
    gmsg_put_ack(&w, GMSG_NACK, 2);
    save(dir, "acks", &w);
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_alive(&w, &a);
    save(dir, "alive", &w);
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_suspect(&w, GMSG_SUSPECT, 4, "peer", "other");
    gmsg_put_suspect(&w, GMSG_DEAD, 9, "me", "peer");
    save(dir, "accusations", &w);
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_user(&w, 77, "hello", 5);
    gmsg_put_keyed(&w, "catalog", 7, 12, "v12", 3);
    gmsg_put_direct(&w, "peer", "hi", 2);
    save(dir, "broadcasts", &w);
    gbuf_w_fixed(&w, buf, sizeof buf);
    gmsg_put_suspect(&w, GMSG_SUSPECT, 4, "peer", "me");
    gmsg_put_ping(&w, 3, "me", "peer", &peer);
    gmsg_put_alive(&w, &a);
    save(dir, "compound", &w);

    gbuf_w_fixed(&w, buf, sizeof buf);
    size_t b = gmsg_pp_begin(&w, GMSG_PP_JOIN, "peer", &peer, 3);
    gmsg_pp_put_member(&w, GOSSIP_ALIVE, &a);
    a.name = (struct gmsg_str){"gone", 4};
    gmsg_pp_put_member(&w, GOSSIP_DEAD, &a);
    a.name = (struct gmsg_str){"me", 2};
    gmsg_pp_put_member(&w, GOSSIP_SUSPECT, &a);
    gmsg_pp_keyed_count(&w, 1);
    gmsg_pp_put_keyed(&w, "catalog", 7, 13, "v13", 3);
    gmsg_pp_end(&w, b, "state", 5);
    save(dir, "push_pull", &w);
    return 0;
}
