// Process limits: the open-file limit raised to the hard limit at start.
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <sys/resource.h>

int32_t vdv_raise_nofile_limit(uint64_t *before, uint64_t *after) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) < 0) return -errno;
    *before = (uint64_t)r.rlim_cur;
    *after = (uint64_t)r.rlim_cur;
    if (r.rlim_cur == r.rlim_max) return 0;
    r.rlim_cur = r.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &r) < 0) return -errno;
    *after = (uint64_t)r.rlim_cur;
    return 0;
}

int32_t vdv_set_nofile_soft_limit(uint64_t soft) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) < 0) return -errno;
    r.rlim_cur = soft;
    return setrlimit(RLIMIT_NOFILE, &r) < 0 ? -errno : 0;
}

uint64_t vdv_nofile_soft_limit(void) {
    struct rlimit r;
    return getrlimit(RLIMIT_NOFILE, &r) < 0 ? 0 : (uint64_t)r.rlim_cur;
}
