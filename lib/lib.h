/* lib.h - small helpers that know nothing of allot: logging, addresses,
 * clocks. Used by every component; depends on nothing but libc. */
#ifndef ALLOT_LIB_H
#define ALLOT_LIB_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* --- Logging ------------------------------------------------------------
 * One line per event on stderr, logfmt:
 *   ts=2026-11-23T10:00:00.123Z level=info comp=node msg="leader elected" id=1
 * The caller passes key=value pairs already formatted (values that may hold
 * spaces should be quoted by the caller with %s and lib_quote()). */
enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parse "debug|info|warn|error"; -1 if unknown. */
int log_level_parse(const char *s);
void log_emit(enum log_level level, const char *comp, const char *msg,
              const char *kvfmt, ...) __attribute__((format(printf, 4, 5)));

#define LOGD(comp, msg, ...) log_emit(LOG_DEBUG, comp, msg, __VA_ARGS__)
#define LOGI(comp, msg, ...) log_emit(LOG_INFO, comp, msg, __VA_ARGS__)
#define LOGW(comp, msg, ...) log_emit(LOG_WARN, comp, msg, __VA_ARGS__)
#define LOGE(comp, msg, ...) log_emit(LOG_ERROR, comp, msg, __VA_ARGS__)

/* --- Addresses ---------------------------------------------------------- */

/* Split "HOST:PORT" (IPv4 literal or "localhost") into a sockaddr_in.
 * Returns 0, or -1 with a message in errmsg (size >= 128) saying what is
 * expected. */
int addr_parse(const char *s, struct sockaddr_in *out, char *errmsg,
               size_t errlen);

/* --- Clocks ------------------------------------------------------------- */

/* Wall clock in milliseconds since the epoch. */
uint64_t clock_wall_ms(void);
/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t clock_mono_ns(void);

/* --- Randomness --------------------------------------------------------- */

/* A random 64-bit value that is never 0 (from getrandom). */
uint64_t lib_random_u64(void);

#endif /* ALLOT_LIB_H */
