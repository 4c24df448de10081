// epoll with a 64-bit tag per fd (struct epoll_event is packed; Swift never sees it).
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <stddef.h>
#include <sys/epoll.h>

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
