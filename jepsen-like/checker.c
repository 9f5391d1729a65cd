/* checker.c - jepsen-checker: is a register history linearizable, did every
 * acknowledged write survive, do the replicas agree?
 *
 *   jepsen-checker [--final FILE] [--digests FILE] [--max-configs N] HISTORY
 *
 * Prints what it checked and a verdict: `linearizable`, or `NOT
 * linearizable` with the key and the smallest window of operations that
 * cannot be ordered; lost writes and differing digests are listed too.
 * Exit status: 0 no anomaly, 1 an anomaly, 2 malformed input or usage (the
 * message names the file and line), 3 no verdict (the search ran out of its
 * budget; nothing wrong was found). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jl_history.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: jepsen-checker [--final FILE] [--digests FILE] "
            "[--max-configs N] HISTORY\n"
            "  HISTORY          JSON lines of invoke/ok/fail/info events "
            "(docs/fault-testing.md); - for stdin\n"
            "  --final FILE     final reads after the run: "
            "{\"node\",\"key\",\"value\",\"invoke_ns\",\"time_ns\"} per line\n"
            "  --digests FILE   replica statuses: {\"node\",\"digest\"|"
            "\"error\",\"applied_index\"} per line\n"
            "  --max-configs N  memoized configurations per key before "
            "giving up (default 50000000)\n"
            "exit: 0 ok, 1 anomaly, 2 malformed input, 3 no verdict\n");
}

static FILE *open_input(const char *path)
{
    if (strcmp(path, "-") == 0) {
        return stdin;
    }
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "error: invalid: cannot open %s: %s\n", path,
                strerror(errno));
    }
    return f;
}

int main(int argc, char **argv)
{
    const char *history_path = NULL, *final_path = NULL, *digests_path = NULL;
    struct jl_limits limits = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        bool takes = strcmp(a, "--final") == 0 || strcmp(a, "--digests") == 0 ||
                     strcmp(a, "--max-configs") == 0;
        if (takes && i + 1 >= argc) {
            fprintf(stderr, "error: invalid: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--final") == 0) {
            final_path = argv[++i];
        } else if (strcmp(a, "--digests") == 0) {
            digests_path = argv[++i];
        } else if (strcmp(a, "--max-configs") == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(argv[++i], &end, 10);
            if (errno != 0 || *end != '\0' || v == 0 || argv[i][0] == '-') {
                fprintf(stderr,
                        "error: invalid: --max-configs must be a whole "
                        "number > 0, got \"%s\"\n",
                        argv[i]);
                return 2;
            }
            limits.max_configs = (size_t)v;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "error: invalid: unknown option %s\n", a);
            usage(stderr);
            return 2;
        } else if (history_path == NULL) {
            history_path = a;
        } else {
            fprintf(stderr, "error: invalid: one HISTORY only\n");
            return 2;
        }
    }
    if (history_path == NULL) {
        usage(stderr);
        return 2;
    }

    struct jl_history h;
    jl_history_init(&h);
    char err[JL_ERRMSG_SIZE];
    FILE *f = open_input(history_path);
    if (f == NULL) {
        jl_history_free(&h);
        return 2;
    }
    int rv = jl_history_load(&h, f, err);
    if (f != stdin) {
        fclose(f);
    }
    if (rv != 0) {
        fprintf(stderr, "error: invalid: %s: %s\n", history_path, err);
        jl_history_free(&h);
        return 2;
    }
    size_t n_ok = 0, n_fail = 0, n_info = 0, n_open = 0;
    for (size_t i = 0; i < h.n_ops; i++) {
        n_ok += h.ops[i].outcome == JL_OK;
        n_fail += h.ops[i].outcome == JL_FAIL;
        n_info += h.ops[i].outcome == JL_INFO;
        n_open += h.ops[i].open;
    }
    size_t history_ops = h.n_ops;
    printf("history: %zu operations on %zu keys (ok %zu, fail %zu, info %zu "
           "of which %zu never completed), %u lines\n",
           h.n_ops, h.n_keys, n_ok, n_fail, n_info, n_open, h.lines);

    bool anomaly = false;
    unsigned final_failed = 0;
    if (final_path != NULL) {
        f = open_input(final_path);
        if (f == NULL) {
            jl_history_free(&h);
            return 2;
        }
        rv = jl_history_load_final(&h, f, stdout, &final_failed, err);
        if (f != stdin) {
            fclose(f);
        }
        if (rv != 0) {
            fprintf(stderr, "error: invalid: %s: %s\n", final_path, err);
            jl_history_free(&h);
            return 2;
        }
        unsigned lost = jl_check_final(&h, stdout);
        size_t n_final = h.n_ops - history_ops;
        if (lost > 0 || final_failed > 0) {
            anomaly = true;
            printf("final reads: %zu, %u failed, %u LOST WRITES\n", n_final,
                   final_failed, lost);
        } else {
            printf("final reads: %zu, every acknowledged write is visible\n",
                   n_final);
        }
    }

    if (digests_path != NULL) {
        f = open_input(digests_path);
        if (f == NULL) {
            jl_history_free(&h);
            return 2;
        }
        unsigned replicas = 0;
        int problems = jl_check_digests(f, stdout, &replicas, err);
        if (f != stdin) {
            fclose(f);
        }
        if (problems < 0) {
            fprintf(stderr, "error: invalid: %s: %s\n", digests_path, err);
            jl_history_free(&h);
            return 2;
        }
        if (problems > 0 || replicas == 0) {
            anomaly = true;
            printf("replica digests: %u replicas, %d DIFFER OR MISSING\n",
                   replicas, problems);
        } else {
            printf("replica digests: %u replicas, all equal\n", replicas);
        }
    }

    struct jl_stats st = {0};
    enum jl_verdict v = jl_check_linearizable(&h, &limits, stdout, &st);
    switch (v) {
    case JL_LINEARIZABLE:
        printf("linearizable (%zu keys, %zu operations checked, %zu "
               "configurations searched)\n",
               st.keys, st.ops, st.configs);
        break;
    case JL_NOT_LINEARIZABLE:
        anomaly = true;
        printf("NOT linearizable (%zu of %zu keys)\n", st.keys_failed, st.keys);
        break;
    case JL_UNKNOWN:
        printf("UNKNOWN: no linearizability verdict for %zu of %zu keys "
               "(search budget)\n",
               st.keys_unknown, st.keys);
        break;
    }
    jl_history_free(&h);
    if (anomaly) {
        return 1;
    }
    return v == JL_UNKNOWN ? 3 : 0;
}
