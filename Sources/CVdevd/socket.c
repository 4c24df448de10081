// Unix sockets: listen/connect/accept, SCM_RIGHTS fd passing, peer state.
#define _GNU_SOURCE
#include "cvdevd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
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
    // Cut short with room left in the buffer: the kernel could not install the fds (this process is out of them).
    if ((msg.msg_flags & MSG_CTRUNC) && *truncated == 1 && *nfds < 32 && *nfds < maxfds) *truncated = 2;
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

// The socket is bound inside a fresh directory only we can enter (mkdtemp makes it 0700), given its mode,
// owner and group there, made to listen, and only then renamed to its path. Nobody else can reach it before
// it has its final permissions: no umask (process-wide, racy with other threads) and no chmod-after-bind
// window. The rename never replaces anything (RENAME_NOREPLACE, or link() where the file system lacks it),
// so a file that appeared at the path meanwhile is left alone and the call fails with EEXIST.
int32_t vdv_unix_listen_owned(const char *path, uint32_t mode, int64_t uid, int64_t gid, int32_t backlog) {
    return vdv_unix_listen_owned_inode(path, mode, uid, gid, backlog, NULL, NULL);
}

int32_t vdv_unix_listen_owned_inode(const char *path, uint32_t mode, int64_t uid, int64_t gid, int32_t backlog,
                                    uint64_t *dev, uint64_t *ino) {
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path) + 16];
    const char *slash = strrchr(path, '/');
    int n;
    if (!slash) n = snprintf(dir, sizeof(dir), ".vdXXXXXX");
    else n = snprintf(dir, sizeof(dir), "%.*s/.vdXXXXXX", (int)(slash - path), path);
    if (n < 0 || (size_t)n >= sizeof(dir)) return -ENAMETOOLONG;
    char tmp[sizeof(dir) + 2];
    snprintf(tmp, sizeof(tmp), "%s/s", dir);
    struct sockaddr_un a;
    if (strlen(path) >= sizeof(a.sun_path)) return -ENAMETOOLONG;
    // The private name is a few bytes longer than the path; it must fit sun_path too.
    if (strlen(tmp) >= sizeof(a.sun_path)) return -ENAMETOOLONG;
    if (!mkdtemp(dir)) return -errno;
    snprintf(tmp, sizeof(tmp), "%s/s", dir);
    fill_addr(&a, tmp);
    int e = 0;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { e = errno; rmdir(dir); return -e; }
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) { e = errno; goto fail; }
    if (chmod(tmp, mode & 07777) < 0) { e = errno; goto fail; }
    if ((uid >= 0 || gid >= 0) && chown(tmp, uid >= 0 ? (uid_t)uid : (uid_t)-1, gid >= 0 ? (gid_t)gid : (gid_t)-1) < 0) {
        e = errno;
        goto fail;
    }
    // chown may clear set-id bits; the mode asked for is put back (still unreachable to others).
    if (chmod(tmp, mode & 07777) < 0) { e = errno; goto fail; }
    if (listen(fd, backlog) < 0) { e = errno; goto fail; }
    // The inode is taken from the private name, before anyone else can reach the path: removal at exit checks it.
    struct stat st;
    if (lstat(tmp, &st) < 0) { e = errno; goto fail; }
    if (dev) *dev = (uint64_t)st.st_dev;
    if (ino) *ino = (uint64_t)st.st_ino;
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) < 0) {
        if (errno != EINVAL && errno != ENOSYS) { e = errno; goto fail; }
        if (link(tmp, path) < 0) { e = errno; goto fail; }
        unlink(tmp);
    }
    rmdir(dir);
    return fd;
fail:
    close(fd);
    unlink(tmp);
    rmdir(dir);
    return -e;
}

int32_t vdv_unix_listen(const char *path, uint32_t mode, int32_t backlog) {
    return vdv_unix_listen_owned(path, mode, -1, -1, backlog);
}

// A TCP listener on an IPv4 or IPv6 literal address; fd or -errno.
int32_t vdv_tcp_listen(const char *host, uint16_t port, int32_t backlog) {
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        len = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        len = sizeof(*a6);
    } else {
        return -EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, backlog) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

// The port a TCP listener got (for port 0); 0 on error.
uint16_t vdv_tcp_local_port(int32_t fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return 0;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
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

// One datagram to a Unix datagram socket at path ("@name": abstract namespace), as sd_notify does; 0 or -errno.
int32_t vdv_notify_datagram(const char *path, const char *msg) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof(a));
    a.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(a.sun_path)) return -EINVAL;
    memcpy(a.sun_path, path, len);
    if (path[0] == '@') a.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    ssize_t n = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&a,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    int e = errno;
    close(fd);
    return n < 0 ? -e : 0;
}

int32_t vdv_open_path_nofollow(const char *path) {
    int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}
