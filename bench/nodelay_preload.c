/* nodelay_preload.c - diagnostic LD_PRELOAD library: TCP_NODELAY on every
 * IPv4 TCP socket the process connects or accepts.
 *
 * canonical/raft's TCP transport (raft_uv_tcp) never sets TCP_NODELAY, so
 * a small AppendEntries sent while the previous one is unacknowledged waits
 * for the peer's delayed ACK (40 ms on Linux). bench_writes --raft-nodelay
 * starts allotd with this library to measure what setting the option in
 * allotd itself would give. It is not part of any product binary. */
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <sys/socket.h>

/* glibc declares these with transparent-union address types under
 * _GNU_SOURCE; the definitions below use the same types. */
typedef int (*connect_fn)(int, __CONST_SOCKADDR_ARG, socklen_t);
typedef int (*accept4_fn)(int, __SOCKADDR_ARG, socklen_t *, int);

static void set_nodelay(int fd)
{
    int one = 1;
    /* Fails harmlessly (ENOTSOCK, EOPNOTSUPP) on anything but TCP. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int connect(int fd, __CONST_SOCKADDR_ARG addr, socklen_t len)
{
    static connect_fn real;
    if (real == NULL) {
        *(void **)&real = dlsym(RTLD_NEXT, "connect");
    }
    const struct sockaddr *sa = addr.__sockaddr__;
    if (sa != NULL && sa->sa_family == AF_INET) {
        set_nodelay(fd);
    }
    return real(fd, addr, len);
}

int accept4(int fd, __SOCKADDR_ARG addr, socklen_t *len, int flags)
{
    static accept4_fn real;
    if (real == NULL) {
        *(void **)&real = dlsym(RTLD_NEXT, "accept4");
    }
    int rv = real(fd, addr, len, flags);
    if (rv >= 0) {
        set_nodelay(rv);
    }
    return rv;
}
