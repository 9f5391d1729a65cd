/* jl_final.c - end-of-run checks (jl_history.h): acknowledged writes are
 * visible in the final reads, and every replica has the same digest.
 *
 * The final-read rule, for a final read R of key K that returned V:
 *   some write or cas W of K whose new value is V, and which took effect or
 *   may have (ok or info), invoked before R completed, is not superseded:
 *   no acknowledged write or cas W' of K was invoked after W completed and
 *   completed before R was invoked. (An info W never completes, so nothing
 *   supersedes it.)
 * and for V absent: no acknowledged write or cas of K completed before R
 * was invoked (keys are never deleted by the workload).
 * This is weaker than linearizability (the final reads are in the
 * linearizability check too) but says plainly which write was lost. */
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "jl_history.h"

static bool value_eq(struct jl_value a, struct jl_value b)
{
    return a.present == b.present && (!a.present || a.v == b.v);
}

static bool is_update(const struct jl_op *o)
{
    return o->f == JL_WRITE || o->f == JL_CAS;
}

/* The acknowledged update of key that completed last before t (NULL if
 * none), for messages. */
static const struct jl_op *last_ack(const struct jl_history *h, unsigned key,
                                    uint64_t t)
{
    const struct jl_op *best = NULL;
    for (size_t i = 0; i < h->n_ops; i++) {
        const struct jl_op *o = &h->ops[i];
        if (o->key == key && is_update(o) && o->outcome == JL_OK &&
            o->node == 0 && o->complete_ns < t &&
            (best == NULL || o->complete_ns > best->complete_ns)) {
            best = o;
        }
    }
    return best;
}

static bool superseded(const struct jl_history *h, const struct jl_op *w,
                       const struct jl_op *r)
{
    if (w->outcome != JL_OK) {
        return false;
    }
    for (size_t i = 0; i < h->n_ops; i++) {
        const struct jl_op *o = &h->ops[i];
        if (o->key == w->key && is_update(o) && o->outcome == JL_OK &&
            o->invoke_ns > w->complete_ns && o->complete_ns < r->invoke_ns) {
            return true;
        }
    }
    return false;
}

unsigned jl_check_final(const struct jl_history *h, FILE *report)
{
    unsigned bad = 0;
    for (size_t i = 0; i < h->n_ops; i++) {
        const struct jl_op *r = &h->ops[i];
        if (r->node == 0) {
            continue;
        }
        bool ok = false, written = false;
        for (size_t j = 0; j < h->n_ops && !ok; j++) {
            const struct jl_op *w = &h->ops[j];
            if (w->key != r->key || !is_update(w) || w->outcome == JL_FAIL ||
                w->invoke_ns > r->complete_ns ||
                !value_eq(w->value, r->value)) {
                continue;
            }
            written = true;
            ok = !superseded(h, w, r);
        }
        if (!r->value.present) {
            ok = last_ack(h, r->key, r->invoke_ns) == NULL;
        }
        if (ok) {
            continue;
        }
        bad++;
        if (report == NULL) {
            continue;
        }
        char a[32], b[32];
        const struct jl_op *last = last_ack(h, r->key, r->invoke_ns);
        if (last == NULL) {
            /* Not null (checked above), so no write of that value. */
            fprintf(report,
                    "lost write: key \"%s\": the final read through node %u "
                    "returned %s, which no operation wrote\n",
                    h->keys[r->key], r->node,
                    jl_value_str(r->value, a, sizeof a));
            continue;
        }
        fprintf(report,
                "lost write: key \"%s\": the final read through node %u "
                "returned %s%s; the last acknowledged write was %s %s by "
                "process %" PRId64 " (history lines %u-%u)\n",
                h->keys[r->key], r->node, jl_value_str(r->value, a, sizeof a),
                !r->value.present ? " (absent)"
                : written ? ", whose every write was followed by a later "
                            "acknowledged one"
                          : ", which no operation wrote",
                jl_f_name(last->f), jl_value_str(last->value, b, sizeof b),
                last->process, last->invoke_line, last->complete_line);
    }
    return bad;
}

/* --- Digests ----------------------------------------------------------------
 */

struct replica
{
    uint64_t node;
    char digest[130];
    int64_t applied; /* -1: unknown */
    char error[200];
};

int jl_check_digests(FILE *f, FILE *report, unsigned *replicas, char *errmsg)
{
    struct replica *rs = NULL;
    size_t n = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    unsigned lineno = 0;
    int rv = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        if (len > JL_LINE_MAX) {
            snprintf(errmsg, JL_ERRMSG_SIZE, "digests line %u: too long",
                     lineno);
            rv = -1;
            break;
        }
        size_t ulen = (size_t)len;
        while (ulen > 0 && (line[ulen - 1] == '\n' || line[ulen - 1] == ' ' ||
                            line[ulen - 1] == '\r')) {
            ulen--;
        }
        if (ulen == 0) {
            continue;
        }
        json_error_t jerr;
        json_t *root = json_loadb(line, ulen, 0, &jerr);
        json_t *node = json_object_get(root, "node");
        json_t *dg = json_object_get(root, "digest");
        json_t *err = json_object_get(root, "error");
        json_t *ap = json_object_get(root, "applied_index");
        const char *bad = NULL;
        if (!json_is_object(root)) {
            bad = "not a JSON object";
        } else if (!json_is_integer(node) || json_integer_value(node) < 0) {
            bad = "\"node\" must be an integer";
        } else if (err != NULL
                       ? !json_is_string(err)
                       : !json_is_string(dg) || json_string_length(dg) == 0 ||
                             json_string_length(dg) >= 130) {
            bad = "needs \"digest\" (a hex string) or \"error\" (a string)";
        } else if (ap != NULL && !json_is_integer(ap)) {
            bad = "\"applied_index\" must be an integer";
        }
        if (bad != NULL) {
            snprintf(errmsg, JL_ERRMSG_SIZE, "digests line %u: %s", lineno,
                     bad);
            json_decref(root);
            rv = -1;
            break;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            struct replica *nr = realloc(rs, ncap * sizeof *nr);
            if (nr == NULL) {
                snprintf(errmsg, JL_ERRMSG_SIZE, "out of memory");
                json_decref(root);
                rv = -1;
                break;
            }
            rs = nr;
            cap = ncap;
        }
        struct replica *r = &rs[n++];
        memset(r, 0, sizeof *r);
        r->node = (uint64_t)json_integer_value(node);
        r->applied = ap != NULL ? (int64_t)json_integer_value(ap) : -1;
        if (err != NULL) {
            snprintf(r->error, sizeof r->error, "%s", json_string_value(err));
        } else {
            snprintf(r->digest, sizeof r->digest, "%s", json_string_value(dg));
        }
        json_decref(root);
    }
    free(line);
    if (rv != 0) {
        free(rs);
        return -1;
    }
    if (replicas != NULL) {
        *replicas = (unsigned)n;
    }
    /* The digest most replicas share is the reference. */
    size_t best = n, best_count = 0;
    for (size_t i = 0; i < n; i++) {
        if (rs[i].error[0] != '\0') {
            continue;
        }
        size_t c = 0;
        for (size_t j = 0; j < n; j++) {
            c += rs[j].error[0] == '\0' &&
                 strcmp(rs[i].digest, rs[j].digest) == 0;
        }
        if (c > best_count) {
            best = i;
            best_count = c;
        }
    }
    int problems = 0;
    /* Healed and quiet, every replica must have applied the same index:
     * one behind is stuck (the harness waited before asking). */
    int64_t top = -1;
    for (size_t i = 0; i < n; i++) {
        if (rs[i].applied > top) {
            top = rs[i].applied;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (rs[i].error[0] == '\0' && rs[i].applied >= 0 &&
            rs[i].applied < top) {
            problems++;
            if (report != NULL) {
                fprintf(report,
                        "replica not caught up: node %" PRIu64
                        " applied index %" PRId64 ", others reached %" PRId64
                        "\n",
                        rs[i].node, rs[i].applied, top);
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (rs[i].error[0] != '\0') {
            problems++;
            if (report != NULL) {
                fprintf(report,
                        "replica digest: node %" PRIu64 " gave none: %s\n",
                        rs[i].node, rs[i].error);
            }
        } else if (best < n && strcmp(rs[i].digest, rs[best].digest) != 0) {
            problems++;
            if (report != NULL) {
                fprintf(report,
                        "replica digest: node %" PRIu64 " has %s at applied "
                        "index %" PRId64 "; node %" PRIu64 " and %zu others "
                        "have %s at %" PRId64 "\n",
                        rs[i].node, rs[i].digest, rs[i].applied, rs[best].node,
                        best_count - 1, rs[best].digest, rs[best].applied);
            }
        }
    }
    free(rs);
    return problems;
}
