#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <fcntl.h>
#include <libaio.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

struct vdv_uring { struct io_uring ring; };

vdv_uring *vdv_uring_create(uint32_t entries, int32_t *err) {
    vdv_uring *r = calloc(1, sizeof(*r));
    if (!r) { *err = -ENOMEM; return NULL; }
    int rc = io_uring_queue_init(entries, &r->ring, 0);
    if (rc < 0) { free(r); *err = rc; return NULL; }
    *err = 0;
    return r;
}

void vdv_uring_destroy(vdv_uring *r) {
    if (!r) return;
    io_uring_queue_exit(&r->ring);
    free(r);
}

int32_t vdv_uring_register_eventfd(vdv_uring *r, int32_t fd) { return io_uring_register_eventfd(&r->ring, fd); }

int32_t vdv_uring_prep_rw(vdv_uring *r, int32_t op, int32_t fd, const void *iov, uint32_t iovcnt, uint64_t offset,
                          uint32_t rw_flags, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    if (op == VDV_OP_READV)
        io_uring_prep_readv2(sqe, fd, (const struct iovec *)iov, iovcnt, offset, (int)rw_flags);
    else
        io_uring_prep_writev2(sqe, fd, (const struct iovec *)iov, iovcnt, offset, (int)rw_flags);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int32_t vdv_uring_prep_fsync(vdv_uring *r, int32_t fd, int32_t datasync, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int32_t vdv_uring_prep_fallocate(vdv_uring *r, int32_t fd, int32_t mode, uint64_t offset, uint64_t len,
                                 uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_fallocate(sqe, fd, mode, (off_t)offset, (off_t)len);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int32_t vdv_uring_prep_nop(vdv_uring *r, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

uint32_t vdv_uring_sq_space_left(vdv_uring *r) { return io_uring_sq_space_left(&r->ring); }

int32_t vdv_uring_submit(vdv_uring *r) {
    int rc;
    do { rc = io_uring_submit(&r->ring); } while (rc == -EINTR);
    return rc;
}

uint32_t vdv_uring_reap(vdv_uring *r, uint64_t *user_data, int32_t *res, uint32_t max) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&r->ring, head, cqe) {
        if (n == max) break;
        user_data[n] = io_uring_cqe_get_data64(cqe);
        res[n] = cqe->res;
        n++;
    }
    if (n) io_uring_cq_advance(&r->ring, n);
    return n;
}

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

int32_t vdv_open_flags(int32_t readonly, int32_t direct) {
    // O_NOATIME: a guest's reads should not turn into inode writes on the host.
    int f = O_CLOEXEC | O_NOATIME | (readonly ? O_RDONLY : O_RDWR);
    if (direct) f |= O_DIRECT;
    return f;
}

int64_t vdv_file_size(int32_t fd, int32_t *is_block_device) {
    struct stat st;
    if (fstat(fd, &st) < 0) return -errno;
    if (S_ISBLK(st.st_mode)) {
        uint64_t size = 0;
        if (ioctl(fd, BLKGETSIZE64, &size) < 0) return -errno;
        *is_block_device = 1;
        return (int64_t)size;
    }
    *is_block_device = 0;
    if (!S_ISREG(st.st_mode)) return -EINVAL;
    return st.st_size;
}

int32_t vdv_memfd_create(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int32_t vdv_eventfd(uint32_t initval, int32_t nonblock) {
    int fd = eventfd(initval, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0));
    return fd < 0 ? -errno : fd;
}

const int32_t VDV_O_NOATIME = O_NOATIME;
const int32_t VDV_FALLOC_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
const int32_t VDV_FALLOC_ZERO_RANGE = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
const uint32_t VDV_RWF_DSYNC = RWF_DSYNC;

static void term_set(sigset_t *s) {
    sigemptyset(s);
    sigaddset(s, SIGTERM);
    sigaddset(s, SIGINT);
    sigaddset(s, SIGHUP);
}

void vdv_block_term_signals(void) {
    sigset_t s;
    term_set(&s);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int32_t vdv_wait_term_signal(void) {
    sigset_t s;
    term_set(&s);
    int sig = 0;
    while (sigwait(&s, &sig) != 0) {}
    return sig;
}

int32_t vdv_pin_thread_to_cpu(int32_t cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

void vdv_set_thread_name(const char *name) {
    char n[16];
    strncpy(n, name, 15);
    n[15] = 0;
    pthread_setname_np(pthread_self(), n);
}

int32_t vdv_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static int32_t epoll_op(int32_t epfd, int op, int32_t fd, uint32_t events, uint64_t tag) {
    struct epoll_event ev = { .events = events, .data.u64 = tag };
    return epoll_ctl(epfd, op, fd, &ev) < 0 ? -errno : 0;
}

int32_t vdv_epoll_add(int32_t epfd, int32_t fd, uint32_t events, uint64_t tag) { return epoll_op(epfd, EPOLL_CTL_ADD, fd, events, tag); }
int32_t vdv_epoll_mod(int32_t epfd, int32_t fd, uint32_t events, uint64_t tag) { return epoll_op(epfd, EPOLL_CTL_MOD, fd, events, tag); }
int32_t vdv_epoll_del(int32_t epfd, int32_t fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0; }

int32_t vdv_epoll_wait(int32_t epfd, uint64_t *tags, uint32_t *events, int32_t max, int32_t timeout_ms) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) { tags[i] = evs[i].data.u64; events[i] = evs[i].events; }
    return n;
}

int32_t vdv_accept(int32_t listen_fd) {
    int fd;
    do { fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

struct vdv_aio {
    io_context_t ctx;
    int efd;
    uint32_t depth;
    struct iocb *iocbs;
    struct iocb **free_stack;
    uint32_t nfree;
    struct iocb **pending;
    uint32_t npending;
    // Operations refused at submit: reported through reap like any completion.
    uint64_t *failed_ud;
    int32_t *failed_res;
    uint32_t nfailed;
};

vdv_aio *vdv_aio_create(uint32_t depth, int32_t eventfd, int32_t *err) {
    vdv_aio *a = calloc(1, sizeof(*a));
    if (!a) { *err = -ENOMEM; return NULL; }
    int rc = io_setup((int)depth, &a->ctx);
    if (rc < 0) { free(a); *err = rc; return NULL; }
    a->efd = eventfd;
    a->depth = depth;
    a->iocbs = calloc(depth, sizeof(struct iocb));
    a->free_stack = calloc(depth, sizeof(struct iocb *));
    a->pending = calloc(depth, sizeof(struct iocb *));
    a->failed_ud = calloc(depth, sizeof(uint64_t));
    a->failed_res = calloc(depth, sizeof(int32_t));
    if (!a->iocbs || !a->free_stack || !a->pending || !a->failed_ud || !a->failed_res) {
        vdv_aio_destroy(a);
        *err = -ENOMEM;
        return NULL;
    }
    for (uint32_t i = 0; i < depth; i++) a->free_stack[i] = &a->iocbs[i];
    a->nfree = depth;
    *err = 0;
    return a;
}

void vdv_aio_destroy(vdv_aio *a) {
    if (!a) return;
    io_destroy(a->ctx);
    free(a->iocbs);
    free(a->free_stack);
    free(a->pending);
    free(a->failed_ud);
    free(a->failed_res);
    free(a);
}

static struct iocb *aio_take(vdv_aio *a) {
    if (a->nfree == 0) return NULL;
    return a->free_stack[--a->nfree];
}

int32_t vdv_aio_prep_rw(vdv_aio *a, int32_t op, int32_t fd, const void *iov, uint32_t iovcnt, uint64_t offset,
                        uint32_t rw_flags, uint64_t user_data) {
    struct iocb *cb = aio_take(a);
    if (!cb) return -EBUSY;
    if (op == VDV_OP_READV) io_prep_preadv2(cb, fd, (const struct iovec *)iov, (int)iovcnt, (long long)offset, (int)rw_flags);
    else io_prep_pwritev2(cb, fd, (const struct iovec *)iov, (int)iovcnt, (long long)offset, (int)rw_flags);
    io_set_eventfd(cb, a->efd);
    cb->data = (void *)(uintptr_t)user_data;
    a->pending[a->npending++] = cb;
    return 0;
}

int32_t vdv_aio_prep_fdsync(vdv_aio *a, int32_t fd, uint64_t user_data) {
    struct iocb *cb = aio_take(a);
    if (!cb) return -EBUSY;
    io_prep_fdsync(cb, fd);
    io_set_eventfd(cb, a->efd);
    cb->data = (void *)(uintptr_t)user_data;
    a->pending[a->npending++] = cb;
    return 0;
}

uint32_t vdv_aio_free_slots(vdv_aio *a) { return a->nfree; }

int32_t vdv_aio_submit(vdv_aio *a) {
    uint32_t done = 0;
    while (done < a->npending) {
        int rc = io_submit(a->ctx, (long)(a->npending - done), a->pending + done);
        if (rc == -EINTR) continue;
        if (rc == -EAGAIN) break;  /* out of kernel AIO resources: keep the rest for the next pass */
        if (rc <= 0) {
            /* The first remaining iocb was refused (e.g. EINVAL for fdsync on a file system without it): fail
               it through reap. Failures wait in a depth-sized array; when it is full the rest waits too. */
            if (a->nfailed == a->depth) break;
            struct iocb *cb = a->pending[done];
            a->failed_ud[a->nfailed] = (uint64_t)(uintptr_t)cb->data;
            a->failed_res[a->nfailed] = rc < 0 ? rc : -EIO;
            a->nfailed++;
            a->free_stack[a->nfree++] = cb;
            done++;
            uint64_t one = 1;
            if (write(a->efd, &one, 8) < 0) {}
            continue;
        }
        done += (uint32_t)rc;
    }
    memmove(a->pending, a->pending + done, (a->npending - done) * sizeof(*a->pending));
    a->npending -= done;
    return (int32_t)done;
}

uint32_t vdv_aio_pending(vdv_aio *a) { return a->npending; }

uint32_t vdv_aio_reap(vdv_aio *a, uint64_t *user_data, int32_t *res, uint32_t max) {
    uint32_t n = 0;
    while (a->nfailed > 0 && n < max) {
        a->nfailed--;
        user_data[n] = a->failed_ud[a->nfailed];
        res[n] = a->failed_res[a->nfailed];
        n++;
    }
    if (n == max) return n;
    struct io_event evs[256];
    long want = (long)(max - n);
    if (want > 256) want = 256;
    struct timespec zero = { 0, 0 };
    int got = io_getevents(a->ctx, 0, want, evs, &zero);
    for (int i = 0; i < got; i++) {
        struct iocb *cb = evs[i].obj;
        user_data[n] = (uint64_t)(uintptr_t)evs[i].data;
        res[n] = (int32_t)(long)evs[i].res;
        n++;
        a->free_stack[a->nfree++] = cb;
    }
    return n;
}

int32_t vdv_fallocate(int32_t fd, int32_t mode, uint64_t offset, uint64_t len) {
    int rc;
    do { rc = fallocate(fd, mode, (off_t)offset, (off_t)len); } while (rc < 0 && errno == EINTR);
    return rc < 0 ? -errno : 0;
}

int64_t vdv_preadv(int32_t fd, const void *iov, uint32_t iovcnt, uint64_t offset) {
    ssize_t n;
    do { n = preadv(fd, (const struct iovec *)iov, (int)iovcnt, (off_t)offset); } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

int64_t vdv_pwritev(int32_t fd, const void *iov, uint32_t iovcnt, uint64_t offset, uint32_t rw_flags) {
    ssize_t n;
    do { n = pwritev2(fd, (const struct iovec *)iov, (int)iovcnt, (off_t)offset, (int)rw_flags); } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

int32_t vdv_fdatasync(int32_t fd) { return fdatasync(fd) < 0 ? -errno : 0; }

int32_t vdv_fd_on_memory_fs(int32_t fd) {
    struct statfs s;
    if (fstatfs(fd, &s) < 0) return 0;
    return s.f_type == TMPFS_MAGIC || s.f_type == RAMFS_MAGIC;
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

int32_t vdv_is_eventfd(int32_t fd) {
    char path[64], target[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof(target) - 1);
    if (n < 0) return 0;
    target[n] = 0;
    return strcmp(target, "anon_inode:[eventfd]") == 0;
}

int32_t vdv_timerfd_create(void) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int32_t vdv_timerfd_arm(int32_t fd, uint32_t interval_ms) {
    struct timespec t = { .tv_sec = interval_ms / 1000, .tv_nsec = (long)(interval_ms % 1000) * 1000000L };
    struct itimerspec its = { .it_interval = t, .it_value = t };
    return timerfd_settime(fd, 0, &its, NULL) < 0 ? -errno : 0;
}
