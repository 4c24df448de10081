// Unix sockets: listen/connect/accept, SCM_RIGHTS fd passing, peer state.
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int64_t vdv_recv_with_fds(int32_t sock, void *buf, uint64_t len, int32_t *fds, uint32_t maxfds, uint32_t *nfds,
                          int32_t *truncated) {
    char control[CMSG_SPACE(sizeof(int) * 32)];
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    *nfds = 0;
    *truncated = 0;
    ssize_t n;
    do { n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    if (msg.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *p = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, p + i, sizeof(int));
            if (*nfds < maxfds) fds[(*nfds)++] = fd;
            else { close(fd); *truncated = 1; }
        }
    }
    return n;
}

int64_t vdv_send_with_fds(int32_t sock, const void *buf, uint64_t len, const int32_t *fds, uint32_t nfds) {
    char control[CMSG_SPACE(sizeof(int) * 32)];
    if (nfds > 32) return -EINVAL;
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        memset(control, 0, sizeof(control));
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

static int fill_addr(struct sockaddr_un *a, const char *path) {
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(a->sun_path)) return -ENAMETOOLONG;
    strcpy(a->sun_path, path);
    return 0;
}

int32_t vdv_unix_listen(const char *path, uint32_t mode, int32_t backlog) {
    struct sockaddr_un a;
    int rc = fill_addr(&a, path);
    if (rc) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    // Create the socket file with the requested mode, not the umask's idea of it.
    mode_t old = umask(0777 & ~mode);
    rc = bind(fd, (struct sockaddr *)&a, sizeof(a));
    int e = errno;
    umask(old);
    if (rc < 0) { close(fd); return -e; }
    if (chmod(path, mode) < 0) { e = errno; close(fd); unlink(path); return -e; }
    if (listen(fd, backlog) < 0) { e = errno; close(fd); unlink(path); return -e; }
    return fd;
}

int32_t vdv_unix_connect(const char *path, int32_t type) {
    struct sockaddr_un a;
    int rc = fill_addr(&a, path);
    if (rc) return rc;
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    do { rc = connect(fd, (struct sockaddr *)&a, sizeof(a)); } while (rc < 0 && errno == EINTR);
    if (rc < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

int32_t vdv_unix_probe(const char *path) {
    int fd = vdv_unix_connect(path, SOCK_STREAM);
    if (fd >= 0) { close(fd); return 1; }
    if (fd == -ECONNREFUSED || fd == -ENOENT) return 0;
    return fd;
}

int32_t vdv_accept(int32_t listen_fd) {
    int fd;
    do { fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int32_t vdv_unix_connect_nb(const char *path, int32_t type) {
    return vdv_unix_connect(path, type | SOCK_NONBLOCK);
}

int32_t vdv_accept_nb(int32_t listen_fd) {
    int fd;
    do { fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int32_t vdv_peer_hung_up(int32_t fd) {
    struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) ? 1 : 0;
}

int32_t vdv_seqpacket_max_message(int32_t fd, int32_t bytes) {
    int want = bytes + 64;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof(want)) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof(want));
    int have = 0;
    socklen_t len = sizeof(have);
    if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &have, &len) < 0) return 0;
    // The kernel keeps a message's overhead inside sk_sndbuf (af_unix: len must be <= sk_sndbuf - 32).
    return have > 32 ? have - 32 : 0;
}
