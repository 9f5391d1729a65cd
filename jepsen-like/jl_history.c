/* jl_history.c - parse register histories (jl_history.h).
 *
 * Happy path: each line is one JSON object; an invoke appends an operation
 * and marks its process busy; the completion fills in the outcome and frees
 * the process (or retires it, after info).
 *
 * Malformed input and what is said (always with the line number):
 *   - not one JSON object, an unknown or duplicated field, a field of the
 *     wrong type, an integer out of range;
 *   - a missing field: process, type, f, key, time_ns everywhere; value on
 *     write and cas invokes and on read oks; expected on cas invokes;
 *   - an invoke on a process that already has an open operation, a
 *     completion with none open, a process reused after an info, a
 *     completion whose f or key differ from its invoke, or that is stamped
 *     before it.
 * A line that is refused changes nothing. */
#include "jl_history.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* --- Small hash maps ------------------------------------------------------ */

/* Process number -> state: an open op index, or one of these. */
#define PROC_IDLE    (-1)
#define PROC_RETIRED (-2) /* its last operation ended info */

struct proc_slot
{
    int64_t process;
    int64_t state;
    size_t retired_line; /* the info completion, for the message */
    bool used;
};

struct proc_map
{
    struct proc_slot *slots;
    size_t cap, n;
};

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static struct proc_slot *proc_find(struct proc_map *m, int64_t process)
{
    if (m->cap == 0) {
        return NULL;
    }
    size_t i = (size_t)mix64((uint64_t)process) & (m->cap - 1);
    while (m->slots[i].used) {
        if (m->slots[i].process == process) {
            return &m->slots[i];
        }
        i = (i + 1) & (m->cap - 1);
    }
    return NULL;
}

/* The slot of process, inserted (idle) if new; NULL when out of memory. */
static struct proc_slot *proc_get(struct proc_map *m, int64_t process)
{
    struct proc_slot *s = proc_find(m, process);
    if (s != NULL) {
        return s;
    }
    if ((m->n + 1) * 2 > m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 64;
        struct proc_slot *ns = calloc(ncap, sizeof *ns);
        if (ns == NULL) {
            return NULL;
        }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->slots[i].used) {
                continue;
            }
            size_t j =
                (size_t)mix64((uint64_t)m->slots[i].process) & (ncap - 1);
            while (ns[j].used) {
                j = (j + 1) & (ncap - 1);
            }
            ns[j] = m->slots[i];
        }
        free(m->slots);
        m->slots = ns;
        m->cap = ncap;
    }
    size_t i = (size_t)mix64((uint64_t)process) & (m->cap - 1);
    while (m->slots[i].used) {
        i = (i + 1) & (m->cap - 1);
    }
    m->slots[i] = (struct proc_slot){
        .process = process, .state = PROC_IDLE, .used = true};
    m->n++;
    return &m->slots[i];
}

struct key_map
{
    unsigned *slots; /* key index + 1; 0 = empty */
    size_t cap;
};

static uint64_t hash_str(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void key_map_insert(struct key_map *m, char **keys, unsigned idx)
{
    size_t i = (size_t)hash_str(keys[idx], strlen(keys[idx])) & (m->cap - 1);
    while (m->slots[i] != 0) {
        i = (i + 1) & (m->cap - 1);
    }
    m->slots[i] = idx + 1;
}

/* Index of key (len bytes), added if new. -1 when out of memory. */
static long key_intern(struct jl_history *h, const char *key, size_t len)
{
    struct key_map *m = h->key_index;
    if (m->cap > 0) {
        size_t i = (size_t)hash_str(key, len) & (m->cap - 1);
        while (m->slots[i] != 0) {
            const char *k = h->keys[m->slots[i] - 1];
            if (strlen(k) == len && memcmp(k, key, len) == 0) {
                return (long)m->slots[i] - 1;
            }
            i = (i + 1) & (m->cap - 1);
        }
    }
    if (h->n_keys == h->cap_keys) {
        size_t ncap = h->cap_keys ? h->cap_keys * 2 : 16;
        char **nk = realloc(h->keys, ncap * sizeof *nk);
        if (nk == NULL) {
            return -1;
        }
        h->keys = nk;
        h->cap_keys = ncap;
    }
    char *copy = strndup(key, len);
    if (copy == NULL) {
        return -1;
    }
    if ((h->n_keys + 1) * 2 > m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 32;
        unsigned *ns = calloc(ncap, sizeof *ns);
        if (ns == NULL) {
            free(copy);
            return -1;
        }
        free(m->slots);
        m->slots = ns;
        m->cap = ncap;
        for (size_t k = 0; k < h->n_keys; k++) {
            key_map_insert(m, h->keys, (unsigned)k);
        }
    }
    h->keys[h->n_keys] = copy;
    key_map_insert(m, h->keys, (unsigned)h->n_keys);
    return (long)h->n_keys++;
}

/* --- Public helpers ------------------------------------------------------- */

const char *jl_f_name(enum jl_f f)
{
    switch (f) {
    case JL_READ:
        return "read";
    case JL_WRITE:
        return "write";
    case JL_CAS:
        return "cas";
    }
    return "?";
}

const char *jl_value_str(struct jl_value v, char *buf, size_t len)
{
    if (!v.present) {
        snprintf(buf, len, "null");
    } else {
        snprintf(buf, len, "%" PRId64, v.v);
    }
    return buf;
}

void jl_history_init(struct jl_history *h)
{
    memset(h, 0, sizeof *h);
    h->procs = calloc(1, sizeof(struct proc_map));
    h->key_index = calloc(1, sizeof(struct key_map));
}

void jl_history_free(struct jl_history *h)
{
    struct proc_map *pm = h->procs;
    struct key_map *km = h->key_index;
    if (pm != NULL) {
        free(pm->slots);
        free(pm);
    }
    if (km != NULL) {
        free(km->slots);
        free(km);
    }
    for (size_t i = 0; i < h->n_keys; i++) {
        free(h->keys[i]);
    }
    free(h->keys);
    free(h->ops);
    memset(h, 0, sizeof *h);
}

static int errf(char *errmsg, unsigned lineno, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int errf(char *errmsg, unsigned lineno, const char *fmt, ...)
{
    int off = snprintf(errmsg, JL_ERRMSG_SIZE, "line %u: ", lineno);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg + off, JL_ERRMSG_SIZE - (size_t)off, fmt, ap);
    va_end(ap);
    return -1;
}

/* --- One line ------------------------------------------------------------- */

enum line_type { T_INVOKE, T_OK, T_FAIL, T_INFO };

struct line
{
    int64_t process;
    enum line_type type;
    enum jl_f f;
    const char *key;
    size_t key_len;
    bool has_value, has_expected;
    struct jl_value value, expected;
    uint64_t time_ns;
};

static int get_value(json_t *v, struct jl_value *out)
{
    if (json_is_null(v)) {
        out->present = false;
        out->v = 0;
        return 0;
    }
    if (json_is_integer(v)) {
        out->present = true;
        out->v = (int64_t)json_integer_value(v);
        return 0;
    }
    return -1;
}

/* Decode and type-check the fields of one event object. */
static int decode_line(json_t *root, struct line *l, unsigned lineno,
                       char *errmsg)
{
    bool has_process = false, has_type = false, has_f = false, has_key = false,
         has_time = false;
    const char *name;
    json_t *v;
    memset(l, 0, sizeof *l);
    json_object_foreach(root, name, v)
    {
        if (strcmp(name, "process") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) < 0) {
                return errf(errmsg, lineno,
                            "\"process\" must be an integer >= 0");
            }
            l->process = (int64_t)json_integer_value(v);
            has_process = true;
        } else if (strcmp(name, "type") == 0) {
            const char *s = json_string_value(v);
            if (s == NULL) {
                return errf(errmsg, lineno, "\"type\" must be a string");
            }
            if (strcmp(s, "invoke") == 0) {
                l->type = T_INVOKE;
            } else if (strcmp(s, "ok") == 0) {
                l->type = T_OK;
            } else if (strcmp(s, "fail") == 0) {
                l->type = T_FAIL;
            } else if (strcmp(s, "info") == 0) {
                l->type = T_INFO;
            } else {
                return errf(errmsg, lineno,
                            "\"type\" must be invoke, ok, fail or info, not "
                            "\"%.40s\"",
                            s);
            }
            has_type = true;
        } else if (strcmp(name, "f") == 0) {
            const char *s = json_string_value(v);
            if (s == NULL) {
                return errf(errmsg, lineno, "\"f\" must be a string");
            }
            if (strcmp(s, "read") == 0) {
                l->f = JL_READ;
            } else if (strcmp(s, "write") == 0) {
                l->f = JL_WRITE;
            } else if (strcmp(s, "cas") == 0) {
                l->f = JL_CAS;
            } else {
                return errf(errmsg, lineno,
                            "\"f\" must be read, write or cas, not \"%.40s\"",
                            s);
            }
            has_f = true;
        } else if (strcmp(name, "key") == 0) {
            if (!json_is_string(v)) {
                return errf(errmsg, lineno, "\"key\" must be a string");
            }
            l->key = json_string_value(v);
            l->key_len = json_string_length(v);
            if (l->key_len == 0 || l->key_len > JL_KEY_MAX ||
                memchr(l->key, '\0', l->key_len) != NULL) {
                return errf(errmsg, lineno,
                            "\"key\" must be 1 to %d characters, without NUL",
                            JL_KEY_MAX);
            }
            has_key = true;
        } else if (strcmp(name, "value") == 0) {
            if (get_value(v, &l->value) != 0) {
                return errf(errmsg, lineno,
                            "\"value\" must be an integer or null");
            }
            l->has_value = true;
        } else if (strcmp(name, "expected") == 0) {
            if (get_value(v, &l->expected) != 0) {
                return errf(errmsg, lineno,
                            "\"expected\" must be an integer or null");
            }
            l->has_expected = true;
        } else if (strcmp(name, "time_ns") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) < 0) {
                return errf(errmsg, lineno,
                            "\"time_ns\" must be an integer >= 0");
            }
            l->time_ns = (uint64_t)json_integer_value(v);
            has_time = true;
        } else {
            return errf(errmsg, lineno,
                        "unknown field \"%.40s\" (expected process, type, "
                        "f, key, value, expected, time_ns)",
                        name);
        }
    }
    const char *missing = !has_process ? "process"
                          : !has_type  ? "type"
                          : !has_f     ? "f"
                          : !has_key   ? "key"
                          : !has_time  ? "time_ns"
                                       : NULL;
    if (missing != NULL) {
        return errf(errmsg, lineno, "missing field \"%s\"", missing);
    }
    return 0;
}

static int check_invoke(const struct line *l, unsigned lineno, char *errmsg)
{
    switch (l->f) {
    case JL_READ:
        if (l->has_value || l->has_expected) {
            return errf(errmsg, lineno,
                        "a read invoke carries no \"value\" or \"expected\"");
        }
        return 0;
    case JL_WRITE:
        if (!l->has_value || !l->value.present) {
            return errf(errmsg, lineno,
                        "a write invoke needs an integer \"value\"");
        }
        if (l->has_expected) {
            return errf(errmsg, lineno,
                        "a write invoke carries no \"expected\"");
        }
        return 0;
    case JL_CAS:
        if (!l->has_expected) {
            return errf(errmsg, lineno,
                        "a cas invoke needs \"expected\" (integer or null)");
        }
        if (!l->has_value || !l->value.present) {
            return errf(errmsg, lineno,
                        "a cas invoke needs an integer \"value\"");
        }
        return 0;
    }
    return 0;
}

static bool value_eq(struct jl_value a, struct jl_value b)
{
    return a.present == b.present && (!a.present || a.v == b.v);
}

static int add_op(struct jl_history *h, const struct jl_op *op)
{
    if (h->n_ops == h->cap_ops) {
        size_t ncap = h->cap_ops ? h->cap_ops * 2 : 256;
        struct jl_op *n = realloc(h->ops, ncap * sizeof *n);
        if (n == NULL) {
            return -1;
        }
        h->ops = n;
        h->cap_ops = ncap;
    }
    h->ops[h->n_ops++] = *op;
    return 0;
}

static int apply_line(struct jl_history *h, const struct line *l,
                      unsigned lineno, char *errmsg)
{
    struct proc_map *pm = h->procs;
    struct proc_slot *ps = proc_get(pm, l->process);
    if (ps == NULL) {
        return errf(errmsg, lineno, "out of memory");
    }
    if (ps->state == PROC_RETIRED) {
        return errf(errmsg, lineno,
                    "process %" PRId64 " is used again after its operation "
                    "ended info (line %zu); a process whose operation ended "
                    "info must take a new number",
                    l->process, ps->retired_line);
    }
    if (l->type == T_INVOKE) {
        if (ps->state >= 0) {
            return errf(errmsg, lineno,
                        "process %" PRId64 " invokes while its operation "
                        "from line %u is still open",
                        l->process, h->ops[ps->state].invoke_line);
        }
        if (check_invoke(l, lineno, errmsg) != 0) {
            return -1;
        }
        long key = key_intern(h, l->key, l->key_len);
        if (key < 0) {
            return errf(errmsg, lineno, "out of memory");
        }
        struct jl_op op = {
            .process = l->process,
            .f = l->f,
            .key = (unsigned)key,
            .expected = l->expected,
            .value = l->value,
            .outcome = JL_INFO,
            .open = true,
            .invoke_ns = l->time_ns,
            .complete_ns = JL_NEVER,
            .invoke_line = lineno,
        };
        if (add_op(h, &op) != 0) {
            return errf(errmsg, lineno, "out of memory");
        }
        ps->state = (int64_t)(h->n_ops - 1);
        return 0;
    }

    /* A completion. */
    if (ps->state < 0) {
        return errf(errmsg, lineno,
                    "process %" PRId64 " completes an operation it never "
                    "invoked (no open invoke)",
                    l->process);
    }
    struct jl_op *op = &h->ops[ps->state];
    const char *k = h->keys[op->key];
    if (l->f != op->f || strlen(k) != l->key_len ||
        memcmp(k, l->key, l->key_len) != 0) {
        return errf(errmsg, lineno,
                    "completion (%s of \"%.40s\") does not match the invoke "
                    "of process %" PRId64 " at line %u (%s of \"%.40s\")",
                    jl_f_name(l->f), l->key, l->process, op->invoke_line,
                    jl_f_name(op->f), k);
    }
    if (l->time_ns < op->invoke_ns) {
        return errf(errmsg, lineno,
                    "completion stamped at %" PRIu64 " ns, before its invoke "
                    "at line %u (%" PRIu64 " ns)",
                    l->time_ns, op->invoke_line, op->invoke_ns);
    }
    if (l->has_expected) {
        return errf(errmsg, lineno,
                    "\"expected\" belongs on the invoke line only");
    }
    if (op->f == JL_READ) {
        if (l->type == T_OK && !l->has_value) {
            return errf(errmsg, lineno,
                        "a read ok needs \"value\" (integer or null)");
        }
        if (l->type != T_OK && l->has_value) {
            return errf(errmsg, lineno,
                        "only a read ok carries a \"value\" (this is a %s)",
                        l->type == T_FAIL ? "fail" : "info");
        }
    } else if (l->has_value && !value_eq(l->value, op->value)) {
        return errf(errmsg, lineno,
                    "a %s completion may repeat its invoke's \"value\" but "
                    "not change it",
                    jl_f_name(op->f));
    }

    op->open = false;
    op->complete_line = lineno;
    switch (l->type) {
    case T_OK:
        op->outcome = JL_OK;
        op->complete_ns = l->time_ns;
        if (op->f == JL_READ) {
            op->value = l->value;
            op->has_value = true;
        }
        ps->state = PROC_IDLE;
        break;
    case T_FAIL:
        op->outcome = JL_FAIL;
        op->complete_ns = l->time_ns;
        ps->state = PROC_IDLE;
        break;
    case T_INFO:
    case T_INVOKE:
        op->outcome = JL_INFO;
        op->complete_ns = JL_NEVER;
        ps->state = PROC_RETIRED;
        ps->retired_line = lineno;
        break;
    }
    return 0;
}

int jl_history_add_line(struct jl_history *h, const char *line, size_t len,
                        unsigned lineno, char *errmsg)
{
    if (h->procs == NULL || h->key_index == NULL) {
        return errf(errmsg, lineno, "out of memory");
    }
    if (h->finished) {
        return errf(errmsg, lineno, "history already finished");
    }
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) {
        i++;
    }
    if (i == len) {
        return 0; /* blank */
    }
    if (len > JL_LINE_MAX) {
        return errf(errmsg, lineno, "line longer than %d bytes", JL_LINE_MAX);
    }
    json_error_t jerr;
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        return errf(errmsg, lineno, "not JSON: %s (column %d)", jerr.text,
                    jerr.column);
    }
    int rv;
    struct line l;
    if (!json_is_object(root)) {
        rv = errf(errmsg, lineno, "expected a JSON object");
    } else if ((rv = decode_line(root, &l, lineno, errmsg)) == 0) {
        rv = apply_line(h, &l, lineno, errmsg);
    }
    json_decref(root);
    return rv;
}

/* Read one line of at most JL_LINE_MAX bytes (plus newline) into buf.
 * Returns its length, -1 at EOF, -2 if too long, -3 on a read error. */
static long read_line(FILE *f, char *buf, size_t cap)
{
    size_t n = 0;
    int c;
    bool any = false;
    while ((c = fgetc(f)) != EOF) {
        any = true;
        if (c == '\n') {
            return (long)n;
        }
        if (n + 1 >= cap) {
            /* Skip the rest so the caller can report and stop. */
            return -2;
        }
        buf[n++] = (char)c;
    }
    if (ferror(f)) {
        return -3;
    }
    return any ? (long)n : -1;
}

int jl_history_load(struct jl_history *h, FILE *f, char *errmsg)
{
    char *buf = malloc(JL_LINE_MAX + 2);
    if (buf == NULL) {
        return errf(errmsg, 0, "out of memory");
    }
    unsigned lineno = 0;
    int rv = 0;
    for (;;) {
        long n = read_line(f, buf, JL_LINE_MAX + 2);
        if (n == -1) {
            break;
        }
        lineno++;
        if (n == -2) {
            rv = errf(errmsg, lineno, "line longer than %d bytes", JL_LINE_MAX);
            break;
        }
        if (n == -3) {
            rv = errf(errmsg, lineno, "read error: %s", strerror(errno));
            break;
        }
        if ((rv = jl_history_add_line(h, buf, (size_t)n, lineno, errmsg)) !=
            0) {
            break;
        }
    }
    free(buf);
    h->lines = lineno;
    if (rv == 0) {
        jl_history_finish(h);
    }
    return rv;
}

void jl_history_finish(struct jl_history *h)
{
    h->finished = true;
    /* Open operations are info; jl_op.open says they never completed. */
}

/* --- Final reads ------------------------------------------------------------
 */

static int get_u64(json_t *root, const char *name, uint64_t *out)
{
    json_t *v = json_object_get(root, name);
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        return -1;
    }
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int jl_history_load_final(struct jl_history *h, FILE *f, FILE *report,
                          unsigned *failed, char *errmsg)
{
    char *buf = malloc(JL_LINE_MAX + 2);
    if (buf == NULL) {
        return errf(errmsg, 0, "out of memory");
    }
    unsigned lineno = 0, nfailed = 0;
    int rv = 0;
    /* Final reads get process numbers above every one in the history. */
    int64_t next_process = 0;
    for (size_t i = 0; i < h->n_ops; i++) {
        if (h->ops[i].process >= next_process) {
            next_process = h->ops[i].process + 1;
        }
    }
    for (;;) {
        long n = read_line(f, buf, JL_LINE_MAX + 2);
        if (n == -1) {
            break;
        }
        lineno++;
        if (n < 0) {
            rv = errf(errmsg, lineno, "final reads: %s",
                      n == -2 ? "line too long" : "read error");
            break;
        }
        size_t i = 0;
        while (i < (size_t)n && (buf[i] == ' ' || buf[i] == '\t')) {
            i++;
        }
        if (i == (size_t)n) {
            continue;
        }
        json_error_t jerr;
        json_t *root =
            json_loadb(buf, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
        if (root == NULL || !json_is_object(root)) {
            rv = errf(errmsg, lineno, "final reads: not a JSON object%s%s",
                      root == NULL ? ": " : "", root == NULL ? jerr.text : "");
            json_decref(root);
            break;
        }
        uint64_t node = 0, t0 = 0, t1 = 0;
        json_t *key = json_object_get(root, "key");
        json_t *err = json_object_get(root, "error");
        json_t *value = json_object_get(root, "value");
        struct jl_value v = {0};
        const char *bad = NULL;
        if (get_u64(root, "node", &node) != 0 || node == 0 || node > 1000000) {
            bad = "\"node\" must be an integer from 1";
        } else if (!json_is_string(key) || json_string_length(key) == 0 ||
                   json_string_length(key) > JL_KEY_MAX ||
                   memchr(json_string_value(key), '\0',
                          json_string_length(key)) != NULL) {
            bad = "\"key\" must be a string of 1 to 256 characters, "
                  "without NUL";
        } else if (err != NULL) {
            if (!json_is_string(err)) {
                bad = "\"error\" must be a string";
            }
        } else if (value == NULL || get_value(value, &v) != 0) {
            bad = "\"value\" must be an integer or null";
        } else if (get_u64(root, "invoke_ns", &t0) != 0 ||
                   get_u64(root, "time_ns", &t1) != 0 || t1 < t0) {
            bad = "\"invoke_ns\" and \"time_ns\" must be integers, "
                  "invoke_ns <= time_ns";
        }
        if (bad != NULL) {
            rv = errf(errmsg, lineno, "final reads: %s", bad);
            json_decref(root);
            break;
        }
        if (err != NULL) {
            nfailed++;
            if (report != NULL) {
                fprintf(report,
                        "final read failed: key \"%s\" through node %" PRIu64
                        ": %s\n",
                        json_string_value(key), node, json_string_value(err));
            }
            json_decref(root);
            continue;
        }
        long k = key_intern(h, json_string_value(key), json_string_length(key));
        struct jl_op op = {
            .process = next_process++,
            .f = JL_READ,
            .key = (unsigned)k,
            .value = v,
            .has_value = true,
            .outcome = JL_OK,
            .invoke_ns = t0,
            .complete_ns = t1,
            .invoke_line = lineno,
            .complete_line = lineno,
            .node = (unsigned)node,
        };
        json_decref(root);
        if (k < 0 || add_op(h, &op) != 0) {
            rv = errf(errmsg, lineno, "out of memory");
            break;
        }
    }
    free(buf);
    if (failed != NULL) {
        *failed = nfailed;
    }
    return rv;
}
