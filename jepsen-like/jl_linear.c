/* jl_linear.c - linearizability of register histories (jl_history.h).
 *
 * The search is Wing & Gong's, with Lowe's just-in-time linearization
 * ("Testing for linearizability", 2016) as used by Porcupine and Knossos'
 * "wgl": the operations of one key become a doubly linked list of call and
 * return entries in time order. Walking it, a call may be linearized now if
 * the register allows it (read sees the state, cas finds its expected
 * value): the operation is "lifted" out of the list and pushed on a stack
 * with the state before it. Reaching a return whose operation is not
 * linearized yet means the choices so far are wrong: pop the last one,
 * put it back, try the next call after it. The list empty means success;
 * the stack empty at a return means no order exists.
 *
 * Memoization: a configuration is (set of linearized operations, register
 * state). Reaching one already seen cannot lead anywhere new, so such a
 * choice is skipped. The set is a bitset; configurations live in an open
 * addressing hash set, bounded by jl_limits.max_configs.
 *
 * Unknown outcomes: an info operation (timed out, or still open at the end)
 * gets a return entry at time "never", after every real return. It may be
 * linearized at any point after its call, or never: reaching its return
 * means every acknowledged operation is already linearized, which is
 * success. Failed operations and info reads are left out (they had no
 * effect and observed nothing).
 *
 * When a key is not linearizable, the report shows the smallest window
 * that is not linearizable on its own: first the shortest prefix (cut at an
 * acknowledged operation's return) that fails, then the latest "quiescent
 * cut" before its end - a moment when no acknowledged operation of the key
 * is in flight - such that the operations after the cut cannot be ordered
 * whatever the register held at the cut. Both steps keep the witness sound:
 * a linearization of the whole history would give one of the window.
 * Pending info operations invoked before the cut stay in the window (they
 * may have applied on either side of it). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "jl_history.h"

#define DEFAULT_MAX_CONFIGS ((size_t)50 * 1000 * 1000)

/* One operation as the search sees it. */
struct lop
{
    enum jl_f f;
    struct jl_value expected, value;
    bool info;
    uint64_t invoke_ns, complete_ns;
    size_t src; /* index into jl_history.ops */
};

struct entry
{
    struct entry *prev, *next;
    struct entry *match; /* call: its return; return: its call */
    unsigned op;
    bool is_call;
    uint64_t time;
};

static bool value_eq(struct jl_value a, struct jl_value b)
{
    return a.present == b.present && (!a.present || a.v == b.v);
}

/* The register: may op happen in state s, and what state follows? */
static bool step(struct jl_value s, const struct lop *op, struct jl_value *out)
{
    switch (op->f) {
    case JL_READ:
        *out = s;
        return value_eq(s, op->value);
    case JL_WRITE:
        *out = op->value;
        return true;
    case JL_CAS:
        if (!value_eq(s, op->expected)) {
            return false;
        }
        *out = op->value;
        return true;
    }
    return false;
}

/* --- The memo: a hash set of (bitset, state) ------------------------------ */

struct memo
{
    uint64_t *arena; /* configurations, `stride` words each */
    size_t n, arena_cap;
    size_t words; /* bitset words */
    size_t stride;
    uint32_t *table; /* configuration index + 1; 0 = empty */
    size_t table_cap;
    size_t max;
    bool oom;
};

static uint64_t mix(uint64_t h, uint64_t x)
{
    h ^= x + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
}

static uint64_t config_hash(const uint64_t *bits, size_t words,
                            struct jl_value s)
{
    uint64_t h = s.present ? (uint64_t)s.v * 0xff51afd7ed558ccdULL : 7;
    for (size_t i = 0; i < words; i++) {
        h = mix(h, bits[i]);
    }
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static int memo_init(struct memo *m, size_t nops, size_t max)
{
    memset(m, 0, sizeof *m);
    m->words = (nops + 63) / 64;
    m->stride = m->words + 2;
    m->max = max;
    m->table_cap = 1024;
    m->table = calloc(m->table_cap, sizeof *m->table);
    return m->table == NULL ? -1 : 0;
}

static void memo_free(struct memo *m)
{
    free(m->arena);
    free(m->table);
}

static const uint64_t *memo_at(const struct memo *m, uint32_t idx)
{
    return &m->arena[(size_t)idx * m->stride];
}

static bool config_eq(const struct memo *m, uint32_t idx, const uint64_t *bits,
                      struct jl_value s)
{
    const uint64_t *c = memo_at(m, idx);
    if (c[0] != (uint64_t)s.present || (s.present && c[1] != (uint64_t)s.v)) {
        return false;
    }
    return memcmp(c + 2, bits, m->words * sizeof *bits) == 0;
}

static int memo_grow(struct memo *m)
{
    size_t ncap = m->table_cap * 2;
    uint32_t *nt = calloc(ncap, sizeof *nt);
    if (nt == NULL) {
        return -1;
    }
    for (size_t i = 0; i < m->table_cap; i++) {
        if (m->table[i] == 0) {
            continue;
        }
        const uint64_t *c = memo_at(m, m->table[i] - 1);
        struct jl_value s = {.present = c[0] != 0, .v = (int64_t)c[1]};
        size_t j = (size_t)config_hash(c + 2, m->words, s) & (ncap - 1);
        while (nt[j] != 0) {
            j = (j + 1) & (ncap - 1);
        }
        nt[j] = m->table[i];
    }
    free(m->table);
    m->table = nt;
    m->table_cap = ncap;
    return 0;
}

/* Add (bits, s). 1 if it is new, 0 if it was there, -1 when the budget or
 * memory ran out. */
static int memo_add(struct memo *m, const uint64_t *bits, struct jl_value s)
{
    size_t i = (size_t)config_hash(bits, m->words, s) & (m->table_cap - 1);
    while (m->table[i] != 0) {
        if (config_eq(m, m->table[i] - 1, bits, s)) {
            return 0;
        }
        i = (i + 1) & (m->table_cap - 1);
    }
    if (m->n >= m->max || m->n >= UINT32_MAX - 1) {
        return -1;
    }
    if ((m->n + 1) * m->stride > m->arena_cap) {
        size_t ncap = m->arena_cap ? m->arena_cap * 2 : m->stride * 1024;
        uint64_t *na = realloc(m->arena, ncap * sizeof *na);
        if (na == NULL) {
            m->oom = true;
            return -1;
        }
        m->arena = na;
        m->arena_cap = ncap;
    }
    uint64_t *c = &m->arena[m->n * m->stride];
    c[0] = s.present;
    c[1] = (uint64_t)s.v;
    memcpy(c + 2, bits, m->words * sizeof *bits);
    m->table[i] = (uint32_t)(m->n + 1);
    m->n++;
    if (m->n * 2 > m->table_cap && memo_grow(m) != 0) {
        m->oom = true;
        return -1;
    }
    return 1;
}

/* --- The search ------------------------------------------------------------
 */

static int entry_cmp(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    if (x->time != y->time) {
        return x->time < y->time ? -1 : 1;
    }
    /* At equal times calls come first: the operations count as concurrent,
     * which never invents an anomaly. */
    if (x->is_call != y->is_call) {
        return x->is_call ? -1 : 1;
    }
    return x->op < y->op ? -1 : x->op > y->op ? 1 : 0;
}

static void lift(struct entry *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev; /* a call always has its return after it */
    struct entry *r = e->match;
    r->prev->next = r->next;
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
}

static void unlift(struct entry *e)
{
    struct entry *r = e->match;
    r->prev->next = r;
    if (r->next != NULL) {
        r->next->prev = r;
    }
    e->prev->next = e;
    e->next->prev = e;
}

struct frame
{
    struct entry *call;
    struct jl_value state;
};

/* Is the sequence of ops (any order; sorted here) linearizable from
 * register state init? *configs gets the memo's size. */
static enum jl_verdict search(const struct lop *ops, size_t n,
                              struct jl_value init, size_t max_configs,
                              size_t *configs)
{
    *configs = 0;
    if (n == 0) {
        return JL_LINEARIZABLE;
    }
    enum jl_verdict verdict = JL_UNKNOWN;
    struct entry *es = calloc(2 * n + 1, sizeof *es);
    struct frame *stack = calloc(n, sizeof *stack);
    uint64_t *bits = calloc((n + 63) / 64, sizeof *bits);
    struct memo memo;
    int memo_rv = memo_init(&memo, n, max_configs);
    if (es == NULL || stack == NULL || bits == NULL || memo_rv != 0) {
        goto out;
    }
    struct entry *head = &es[2 * n];
    struct entry *list = es; /* 2n entries, sorted below */
    for (size_t i = 0; i < n; i++) {
        list[2 * i] = (struct entry){
            .op = (unsigned)i, .is_call = true, .time = ops[i].invoke_ns};
        list[2 * i + 1] =
            (struct entry){.op = (unsigned)i,
                           .is_call = false,
                           .time = ops[i].info ? JL_NEVER : ops[i].complete_ns};
    }
    qsort(list, 2 * n, sizeof *list, entry_cmp);
    /* Link calls and returns; qsort moved them. */
    unsigned *call_at = calloc(n, sizeof *call_at);
    if (call_at == NULL) {
        goto out;
    }
    for (size_t i = 0; i < 2 * n; i++) {
        if (list[i].is_call) {
            call_at[list[i].op] = (unsigned)i;
        }
    }
    for (size_t i = 0; i < 2 * n; i++) {
        if (!list[i].is_call) {
            struct entry *c = &list[call_at[list[i].op]];
            c->match = &list[i];
            list[i].match = c;
        }
    }
    free(call_at);
    *head = (struct entry){.next = &list[0]};
    for (size_t i = 0; i < 2 * n; i++) {
        list[i].prev = i == 0 ? head : &list[i - 1];
        list[i].next = i + 1 < 2 * n ? &list[i + 1] : NULL;
    }

    size_t depth = 0;
    struct jl_value state = init;
    struct entry *e = head->next;
    for (;;) {
        if (head->next == NULL) {
            verdict = JL_LINEARIZABLE;
            break;
        }
        if (e->is_call) {
            struct jl_value next;
            const struct lop *op = &ops[e->op];
            if (step(state, op, &next)) {
                bits[e->op / 64] |= (uint64_t)1 << (e->op % 64);
                int added = memo_add(&memo, bits, next);
                if (added < 0) {
                    verdict = JL_UNKNOWN;
                    break;
                }
                if (added == 1) {
                    stack[depth++] = (struct frame){e, state};
                    state = next;
                    lift(e);
                    e = head->next;
                    continue;
                }
                bits[e->op / 64] &= ~((uint64_t)1 << (e->op % 64));
            }
            e = e->next;
            continue;
        }
        /* A return of an operation not linearized yet. */
        if (ops[e->op].info) {
            /* Info returns sort last: every acknowledged operation is
             * linearized; the pending ones may simply never happen. */
            verdict = JL_LINEARIZABLE;
            break;
        }
        if (depth == 0) {
            verdict = JL_NOT_LINEARIZABLE;
            break;
        }
        struct frame f = stack[--depth];
        state = f.state;
        bits[f.call->op / 64] &= ~((uint64_t)1 << (f.call->op % 64));
        unlift(f.call);
        e = f.call->next;
    }
    *configs = memo.n;

out:
    if (memo_rv == 0) {
        memo_free(&memo);
    }
    free(es);
    free(stack);
    free(bits);
    return verdict;
}

/* --- Building the operations of a key ------------------------------------ */

/* The operations of key that matter: acknowledged ones, and info writes and
 * cas. Caller frees. */
static struct lop *key_ops(const struct jl_history *h, unsigned key, size_t *n)
{
    size_t cnt = 0;
    for (size_t i = 0; i < h->n_ops; i++) {
        const struct jl_op *o = &h->ops[i];
        if (o->key == key && (o->outcome == JL_OK ||
                              (o->outcome == JL_INFO && o->f != JL_READ))) {
            cnt++;
        }
    }
    struct lop *ops = calloc(cnt ? cnt : 1, sizeof *ops);
    if (ops == NULL) {
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < h->n_ops; i++) {
        const struct jl_op *o = &h->ops[i];
        if (o->key == key && (o->outcome == JL_OK ||
                              (o->outcome == JL_INFO && o->f != JL_READ))) {
            ops[k++] = (struct lop){
                .f = o->f,
                .expected = o->expected,
                .value = o->value,
                .info = o->outcome == JL_INFO,
                .invoke_ns = o->invoke_ns,
                .complete_ns =
                    o->outcome == JL_INFO ? JL_NEVER : o->complete_ns,
                .src = i,
            };
        }
    }
    *n = cnt;
    return ops;
}

/* The history cut at time t: operations invoked by t; those completing
 * after t become info (reads: left out). Returns the count written to out. */
static size_t prefix_ops(const struct lop *ops, size_t n, uint64_t t,
                         struct lop *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (ops[i].invoke_ns > t) {
            continue;
        }
        struct lop o = ops[i];
        if (!o.info && o.complete_ns > t) {
            if (o.f == JL_READ) {
                continue;
            }
            o.info = true;
            o.complete_ns = JL_NEVER;
        }
        out[k++] = o;
    }
    return k;
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y ? 1 : 0;
}

static bool value_in(const struct jl_value *vs, size_t n, struct jl_value v)
{
    for (size_t i = 0; i < n; i++) {
        if (value_eq(vs[i], v)) {
            return true;
        }
    }
    return false;
}

/* Not linearizable from any initial state? Tries null, every value the
 * operations mention, and one value they do not (all others behave alike).
 * UNKNOWN if a search ran out of budget. */
static enum jl_verdict fails_from_any_state(const struct lop *ops, size_t n,
                                            size_t max_configs)
{
    struct jl_value *vs = calloc(3 * n + 2, sizeof *vs);
    if (vs == NULL) {
        return JL_UNKNOWN;
    }
    size_t nv = 0;
    vs[nv++] = (struct jl_value){.present = false};
    for (size_t i = 0; i < n; i++) {
        struct jl_value c[2] = {ops[i].value, ops[i].expected};
        for (int j = 0; j < (ops[i].f == JL_CAS ? 2 : 1); j++) {
            if (!value_in(vs, nv, c[j])) {
                vs[nv++] = c[j];
            }
        }
    }
    /* A value none of them mentions (nv candidates: one of 0..nv is free). */
    for (int64_t x = 0; x <= (int64_t)nv; x++) {
        struct jl_value v = {.present = true, .v = x};
        if (!value_in(vs, nv, v)) {
            vs[nv++] = v;
            break;
        }
    }
    enum jl_verdict verdict = JL_NOT_LINEARIZABLE;
    for (size_t i = 0; i < nv && verdict == JL_NOT_LINEARIZABLE; i++) {
        size_t configs;
        enum jl_verdict v = search(ops, n, vs[i], max_configs, &configs);
        if (v != JL_NOT_LINEARIZABLE) {
            verdict = v;
        }
    }
    free(vs);
    return verdict;
}

/* --- Reporting -------------------------------------------------------------
 */

static int lop_time_cmp(const void *a, const void *b)
{
    const struct lop *x = a, *y = b;
    if (x->invoke_ns != y->invoke_ns) {
        return x->invoke_ns < y->invoke_ns ? -1 : 1;
    }
    return x->src < y->src ? -1 : x->src > y->src ? 1 : 0;
}

static void print_op(FILE *out, const struct jl_op *o, uint64_t t0,
                     bool culprit)
{
    char a[32], b[32], what[96];
    switch (o->f) {
    case JL_READ:
        snprintf(what, sizeof what, "read -> %s",
                 o->outcome == JL_OK ? jl_value_str(o->value, a, sizeof a)
                                     : "?");
        break;
    case JL_WRITE:
        snprintf(what, sizeof what, "write %s",
                 jl_value_str(o->value, a, sizeof a));
        break;
    case JL_CAS:
        snprintf(what, sizeof what, "cas %s -> %s",
                 jl_value_str(o->expected, a, sizeof a),
                 jl_value_str(o->value, b, sizeof b));
        break;
    }
    char who[48];
    if (o->node != 0) {
        snprintf(who, sizeof who, "final read via node %u", o->node);
    } else {
        snprintf(who, sizeof who, "process %" PRId64, o->process);
    }
    char when[80];
    double start = (double)(o->invoke_ns - t0) / 1e9;
    if (o->outcome == JL_INFO) {
        snprintf(when, sizeof when, "[%.6f s, never answered]", start);
    } else {
        snprintf(when, sizeof when, "[%.6f s, %.6f s]", start,
                 (double)(o->complete_ns - t0) / 1e9);
    }
    char lines[48];
    if (o->open) {
        snprintf(lines, sizeof lines, "line %u-", o->invoke_line);
    } else {
        snprintf(lines, sizeof lines, "line %u-%u", o->invoke_line,
                 o->complete_line);
    }
    fprintf(out, "  %s %-15s %-24s %-18s %-4s %s\n", culprit ? "=>" : "  ",
            lines, who, what,
            o->outcome == JL_OK ? "ok"
            : o->open           ? "open"
                                : "info",
            when);
}

/* The history's first invoke time, the origin of the times printed. */
static uint64_t history_t0(const struct jl_history *h)
{
    uint64_t t0 = JL_NEVER;
    for (size_t i = 0; i < h->n_ops; i++) {
        if (h->ops[i].invoke_ns < t0) {
            t0 = h->ops[i].invoke_ns;
        }
    }
    return t0 == JL_NEVER ? 0 : t0;
}

/* Find and print the smallest failing window of ops (which failed whole). */
static void report_window(FILE *out, const struct jl_history *h, unsigned key,
                          const struct lop *ops, size_t n, size_t max_configs)
{
    /* 1. The shortest failing prefix, cut at an acknowledged return. */
    uint64_t *rets = calloc(n ? n : 1, sizeof *rets);
    struct lop *buf = calloc(n ? n : 1, sizeof *buf);
    if (rets == NULL || buf == NULL) {
        fprintf(out, "  (out of memory while narrowing the window)\n");
        free(rets);
        free(buf);
        return;
    }
    size_t q = 0;
    for (size_t i = 0; i < n; i++) {
        if (!ops[i].info) {
            rets[q++] = ops[i].complete_ns;
        }
    }
    qsort(rets, q, sizeof *rets, u64_cmp);
    size_t lo = 0, hi = q ? q - 1 : 0; /* rets[hi] fails (the whole) */
    struct jl_value null = {.present = false};
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2, configs;
        size_t m = prefix_ops(ops, n, rets[mid], buf);
        if (search(buf, m, null, max_configs, &configs) ==
            JL_NOT_LINEARIZABLE) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    uint64_t end = q ? rets[hi] : 0;
    size_t m = prefix_ops(ops, n, end, buf);
    qsort(buf, m, sizeof *buf, lop_time_cmp);

    /* 2. The latest quiescent cut whose suffix fails from any state. A cut
     * between buf[i-1] and buf[i] (by invoke time) is quiescent when every
     * acknowledged operation invoked before buf[i] returned before it. */
    size_t start = 0;
    bool any_state = false;
    uint64_t max_ret = 0;
    size_t *cuts = calloc(m + 1, sizeof *cuts);
    size_t ncuts = 0;
    for (size_t i = 0; cuts != NULL && i < m; i++) {
        if (i > 0 && max_ret < buf[i].invoke_ns) {
            cuts[ncuts++] = i;
        }
        if (!buf[i].info && buf[i].complete_ns > max_ret) {
            max_ret = buf[i].complete_ns;
        }
    }
    struct lop *win = calloc(m ? m : 1, sizeof *win);
    for (size_t c = ncuts; win != NULL && c-- > 0;) {
        size_t i = cuts[c], k = 0;
        for (size_t j = 0; j < m; j++) {
            if (j >= i || buf[j].info) {
                win[k++] = buf[j];
            }
        }
        if (fails_from_any_state(win, k, max_configs) == JL_NOT_LINEARIZABLE) {
            start = i;
            any_state = true;
            break;
        }
    }
    free(win);
    free(cuts);

    uint64_t t0 = history_t0(h);
    size_t shown = 0, pending = 0;
    for (size_t j = 0; j < m; j++) {
        if (j >= start) {
            shown++;
        } else if (buf[j].info) {
            pending++;
        }
    }
    fprintf(out,
            "NOT linearizable: key \"%s\": no order of these %zu operations "
            "is consistent with a register%s:\n",
            h->keys[key], shown + pending,
            any_state ? ", whatever value it held before the first of them"
                      : ", starting absent (null)");
    for (size_t j = start; j < m; j++) {
        const struct jl_op *o = &h->ops[buf[j].src];
        print_op(out, o, t0, o->outcome == JL_OK && o->complete_ns == end);
    }
    if (pending > 0) {
        fprintf(out,
                "  and %zu earlier operations with unknown outcome, which "
                "may apply inside the window:\n",
                pending);
        for (size_t j = 0; j < start; j++) {
            if (buf[j].info) {
                print_op(out, &h->ops[buf[j].src], t0, false);
            }
        }
    }
    fprintf(out, "  (=> marks the operation whose answer cannot be explained; "
                 "times from the first operation of the history)\n");
    free(rets);
    free(buf);
}

enum jl_verdict jl_check_key(const struct jl_history *h, unsigned key,
                             const struct jl_limits *limits, FILE *report,
                             struct jl_stats *stats)
{
    size_t max_configs = limits != NULL && limits->max_configs != 0
                             ? limits->max_configs
                             : DEFAULT_MAX_CONFIGS;
    size_t n;
    struct lop *ops = key_ops(h, key, &n);
    if (ops == NULL) {
        if (report != NULL) {
            fprintf(report, "UNKNOWN: key \"%s\": out of memory\n",
                    h->keys[key]);
        }
        return JL_UNKNOWN;
    }
    size_t configs;
    struct jl_value null = {.present = false};
    enum jl_verdict v = search(ops, n, null, max_configs, &configs);
    if (stats != NULL) {
        stats->keys++;
        stats->ops += n;
        stats->configs += configs;
        stats->keys_failed += v == JL_NOT_LINEARIZABLE;
        stats->keys_unknown += v == JL_UNKNOWN;
    }
    if (report != NULL && v == JL_UNKNOWN) {
        fprintf(report,
                "UNKNOWN: key \"%s\": the search of %zu operations gave up "
                "after %zu configurations (raise --max-configs)\n",
                h->keys[key], n, configs);
    }
    if (report != NULL && v == JL_NOT_LINEARIZABLE) {
        report_window(report, h, key, ops, n, max_configs);
    }
    free(ops);
    return v;
}

enum jl_verdict jl_check_linearizable(const struct jl_history *h,
                                      const struct jl_limits *limits,
                                      FILE *report, struct jl_stats *stats)
{
    enum jl_verdict worst = JL_LINEARIZABLE;
    for (size_t k = 0; k < h->n_keys; k++) {
        enum jl_verdict v = jl_check_key(h, (unsigned)k, limits, report, stats);
        if (v == JL_NOT_LINEARIZABLE) {
            worst = JL_NOT_LINEARIZABLE;
        } else if (v == JL_UNKNOWN && worst == JL_LINEARIZABLE) {
            worst = JL_UNKNOWN;
        }
    }
    return worst;
}
