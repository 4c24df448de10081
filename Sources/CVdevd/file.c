// Image files and block devices: open flags, size, positional I/O, fallocate, file system kind.
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <sys/utsname.h>
#include <stdio.h>
#include <unistd.h>

#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

int32_t vdv_open_flags(int32_t readonly, int32_t direct) {
    // O_NOATIME: a guest's reads should not turn into inode writes on the host.
    int f = O_CLOEXEC | O_NOATIME | (readonly ? O_RDONLY : O_RDWR);
    if (direct) f |= O_DIRECT;
    return f;
}


const int32_t VDV_O_NOATIME = O_NOATIME;

const int32_t VDV_FALLOC_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;

const int32_t VDV_FALLOC_ZERO_RANGE = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;

const uint32_t VDV_RWF_DSYNC = RWF_DSYNC;

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


int32_t vdv_backing_probe(int32_t fd, vdv_backing_info *info) {
    struct stat st;
    memset(info, 0, sizeof(*info));
    if (fstat(fd, &st) < 0) return -errno;
    info->logical_block_size = 512;
    if (S_ISBLK(st.st_mode)) {
        uint64_t size = 0;
        int lbs = 0;
        if (ioctl(fd, BLKGETSIZE64, &size) < 0) return -errno;
        if (ioctl(fd, BLKSSZGET, &lbs) == 0 && lbs >= 512) info->logical_block_size = (uint32_t)lbs;
        info->is_block_device = 1;
        info->size = (int64_t)size;
    } else if (S_ISREG(st.st_mode)) {
        // The fd's own file system, never the device node's (a block device node lives on devtmpfs).
        struct statfs fs;
        if (fstatfs(fd, &fs) == 0)
            info->on_memory_fs = fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC || fs.f_type == HUGETLBFS_MAGIC;
        info->size = st.st_size;
    } else {
        return -EINVAL;
    }
    // O_DIRECT constraints as the kernel states them; older kernels say nothing: assume the logical block size.
    info->dio_mem_align = info->logical_block_size;
    info->dio_offset_align = info->logical_block_size;
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
        sx.stx_dio_offset_align != 0) {
        info->dio_mem_align = sx.stx_dio_mem_align;
        info->dio_offset_align = sx.stx_dio_offset_align;
    }
    return 0;
}

int32_t vdv_memory_fd_allocated(int32_t fd, uint64_t length) {
    struct statfs fs;
    if (fstatfs(fd, &fs) == 0 && fs.f_type == HUGETLBFS_MAGIC) return 1;  // pages come from the reserved pool
    struct stat st;
    if (fstat(fd, &st) < 0) return 0;
    return (uint64_t)st.st_blocks * 512 >= length;
}

int32_t vdv_blk_discard(int32_t fd, uint64_t offset, uint64_t len) {
    uint64_t range[2] = { offset, len };
    return ioctl(fd, BLKDISCARD, range) < 0 ? -errno : 0;
}

int32_t vdv_kernel_at_least(int32_t major, int32_t minor) {
    struct utsname u;
    int ma = 0, mi = 0;
    if (uname(&u) < 0 || sscanf(u.release, "%d.%d", &ma, &mi) != 2) return 0;
    return ma > major || (ma == major && mi >= minor);
}
