/* lib.c - logging, address parsing, clocks (see lib.h). */
#include "lib.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static enum log_level log_level = LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
    log_level = level;
}

enum log_level log_get_level(void)
{
    return log_level;
}

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

void log_emit(enum log_level level, const char *comp, const char *msg,
              const char *kvfmt, ...)
{
    if (level < log_level) {
        return;
    }
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s "
                     "comp=%s msg=\"%s\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     level_names[level], comp, msg);
    if (n < 0) {
        return;
    }
    size_t off = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    if (kvfmt != NULL && kvfmt[0] != '\0' && off < sizeof line - 2) {
        line[off++] = ' ';
        va_list ap;
        va_start(ap, kvfmt);
        int m = vsnprintf(line + off, sizeof line - off, kvfmt, ap);
        va_end(ap);
        if (m > 0) {
            off += (size_t)m < sizeof line - off ? (size_t)m
                                                 : sizeof line - off - 1;
        }
    }
    /* One write per line so lines from several threads never interleave. */
    if (off > sizeof line - 2) {
        off = sizeof line - 2;
    }
    line[off++] = '\n';
    fwrite(line, 1, off, stderr);
}

int addr_parse(const char *s, struct sockaddr_in *out, char *errmsg,
               size_t errlen)
{
    const char *colon = strrchr(s, ':');
    char host[64];
    if (colon == NULL || colon == s || (size_t)(colon - s) >= sizeof host) {
        snprintf(errmsg, errlen,
                 "\"%.64s\" is not HOST:PORT (an IPv4 address or localhost, "
                 "then a port 1-65535)",
                 s);
        return -1;
    }
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port < 1 || port > 65535) {
        snprintf(errmsg, errlen, "bad port in \"%.64s\": expected 1-65535", s);
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0) {
        strcpy(host, "127.0.0.1");
    }
    if (inet_pton(AF_INET, host, &out->sin_addr) != 1) {
        snprintf(errmsg, errlen,
                 "bad host in \"%.64s\": expected an IPv4 address or "
                 "localhost",
                 s);
        return -1;
    }
    return 0;
}

uint64_t clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t clock_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t lib_random_u64(void)
{
    uint64_t v = 0;
    while (v == 0) {
        if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) {
            /* getrandom on Linux >= 3.17 does not fail for 8 bytes; fall back
             * to the clock so a client id is still unlikely to collide. */
            v = clock_mono_ns() ^ ((uint64_t)rand() << 32);
        }
    }
    return v;
}
