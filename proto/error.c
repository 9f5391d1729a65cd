/* error.c - lookups over the single error table in allot_error.h. */
#include "allot_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct error_entry
{
    int code;
    const char *name;
    const char *message;
};

static const struct error_entry error_table[] = {
#define ERROR_ENTRY(suffix, value, wire, msg) {value, wire, msg},
    ALLOT_ERROR_MAP(ERROR_ENTRY)
#undef ERROR_ENTRY
};

#define ERROR_TABLE_LEN (sizeof error_table / sizeof error_table[0])

static const struct error_entry *error_lookup(int code)
{
    /* Codes are dense from -1 down, so the index is direct; the check keeps
     * a gap in the table from ever returning the wrong entry. */
    if (code < ALLOT_EMIN || code >= 0) {
        return NULL;
    }
    unsigned idx = (unsigned)(-code - 1);
    if (idx < ERROR_TABLE_LEN && error_table[idx].code == code) {
        return &error_table[idx];
    }
    return NULL;
}

const char *allot_strerror(int code)
{
    if (code == 0) {
        return "ok";
    }
    const struct error_entry *e = error_lookup(code);
    return e != NULL ? e->message : "unknown error";
}

const char *allot_error_name(int code)
{
    if (code == 0) {
        return "ok";
    }
    const struct error_entry *e = error_lookup(code);
    return e != NULL ? e->name : "internal";
}

int allot_error_from_name(const char *name, unsigned long len)
{
    for (unsigned i = 0; i < ERROR_TABLE_LEN; i++) {
        if (strlen(error_table[i].name) == len &&
            memcmp(error_table[i].name, name, len) == 0) {
            return error_table[i].code;
        }
    }
    return ALLOT_EINTERNAL;
}

int allot_errf(char *msg, int code, const char *fmt, ...)
{
    if (msg != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, ALLOT_ERRMSG_SIZE, fmt, ap);
        va_end(ap);
    }
    return code;
}
