// What kind of file a frontend's guest-memory fd is, and sealing it against shrinking.
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

const uint32_t VDV_MFD_ALLOW_SEALING = MFD_ALLOW_SEALING;
const uint32_t VDV_MFD_HUGETLB = MFD_HUGETLB;

int32_t vdv_memfd_create_flags(const char *name, uint32_t flags) {
    int fd = memfd_create(name, MFD_CLOEXEC | flags);
    return fd < 0 ? -errno : fd;
}

int32_t vdv_memory_fd_describe(int32_t fd, vdv_memory_fd_info *info) {
    memset(info, 0, sizeof(*info));
    struct stat st;
    if (fstat(fd, &st) < 0) return -errno;
    struct statfs fs;
    if (fstatfs(fd, &fs) < 0) return -errno;
    info->size = st.st_size;
    info->is_regular = S_ISREG(st.st_mode);
    info->fs_magic = (uint64_t)fs.f_type;
    info->fs_kind = fs.f_type == TMPFS_MAGIC ? VDV_MEMFS_SHMEM
                  : fs.f_type == HUGETLBFS_MAGIC ? VDV_MEMFS_HUGETLB : VDV_MEMFS_OTHER;
    info->block_size = (uint64_t)st.st_blksize;
    int seals = fcntl(fd, F_GET_SEALS);
    info->seals = seals < 0 ? -1 : seals;
    char path[64], target[80];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof(target) - 1);
    if (n > 0) {
        target[n] = 0;
        info->is_memfd = strncmp(target, "/memfd:", 7) == 0;
    }
    return 0;
}

const int32_t VDV_F_SEAL_SEAL = F_SEAL_SEAL;
const int32_t VDV_F_SEAL_SHRINK = F_SEAL_SHRINK;

int32_t vdv_memfd_seal_shrink(int32_t fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0 ? -errno : 0;
}
