/* allot_error.h - the one table of error codes every allot binary speaks.
 *
 * Functions return 0 or a negative ALLOT_E... code. On the wire and on the
 * command line an error travels as its code name ("conflict") plus a human
 * message; allot_error_from_name() maps it back. Adding a code means adding
 * one line to ALLOT_ERROR_MAP: the enum, the names and the default messages
 * all come from it. Never renumber: codes are stored in the replicated log
 * (remembered results of client requests). */
#ifndef ALLOT_ERROR_H
#define ALLOT_ERROR_H

/* X(ENUM_SUFFIX, value, wire name, default message) */
#define ALLOT_ERROR_MAP(X)                                             \
    X(INVALID, -1, "invalid", "invalid argument")                      \
    X(NOT_FOUND, -2, "not_found", "not found")                         \
    X(EXISTS, -3, "exists", "already exists")                          \
    X(CONFLICT, -4, "conflict", "version conflict")                    \
    X(PERMISSION_DENIED, -5, "permission_denied", "permission denied") \
    X(UNAUTHENTICATED, -6, "unauthenticated", "unauthenticated")       \
    X(UNAVAILABLE, -7, "unavailable", "service unavailable")           \
    X(VALIDATION_FAILED, -8, "validation_failed", "validation failed") \
    X(TIMEOUT, -9, "timeout", "timed out")                             \
    X(NOMEM, -10, "nomem", "out of memory")                            \
    X(IO, -11, "io", "input/output error")                             \
    X(PROTOCOL, -12, "protocol", "malformed message")                  \
    X(TOO_BIG, -13, "too_big", "message too large")                    \
    X(INTERNAL, -14, "internal", "internal error")                     \
    X(SHUTDOWN, -15, "shutdown", "shutting down")

enum allot_error {
    ALLOT_OK = 0,
#define ALLOT__ERROR_ENUM(name, value, wire, msg) ALLOT_E##name = value,
    ALLOT_ERROR_MAP(ALLOT__ERROR_ENUM)
#undef ALLOT__ERROR_ENUM
};

/* Lowest (most negative) code in the table; codes lie in [ALLOT_EMIN, -1]. */
#define ALLOT_EMIN ALLOT_ESHUTDOWN

/* Default human message for a code ("version conflict"); "ok" for 0 and
 * "unknown error" for anything outside the table. Never NULL. */
const char *allot_strerror(int code);

/* Wire name of a code ("conflict"); "ok" for 0, "internal" for unknown codes
 * (an unknown code is a bug on our side, never the caller's input). */
const char *allot_error_name(int code);

/* Code for a wire name; ALLOT_EINTERNAL when the name is unknown. */
int allot_error_from_name(const char *name, unsigned long len);

/* Size of the message buffers that travel beside a code. Messages longer than
 * this are cut, never overflowed. */
#define ALLOT_ERRMSG_SIZE 256

/* printf into an ALLOT_ERRMSG_SIZE buffer and return code, so error paths
 * read `return allot_errf(msg, ALLOT_EINVALID, "bad path %s", p);`. */
int allot_errf(char *msg, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* ALLOT_ERROR_H */
