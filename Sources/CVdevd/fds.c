// memfd, eventfd and timerfd creation, and telling an eventfd from other fds.
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <unistd.h>

int32_t vdv_memfd_create(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    return fd < 0 ? -errno : fd;
}

int32_t vdv_eventfd(uint32_t initval, int32_t nonblock) {
    int fd = eventfd(initval, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0));
    return fd < 0 ? -errno : fd;
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
