// io_uring: one ring per poller (liburing stays inside this file).
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <liburing.h>

struct vdv_uring { struct io_uring ring; };

vdv_uring *vdv_uring_create(uint32_t entries, uint32_t cq_entries, int32_t *err) {
    vdv_uring *r = calloc(1, sizeof(*r));
    if (!r) { *err = -ENOMEM; return NULL; }
    // COOP_TASKRUN: completions do not interrupt the poller with an IPI; TASKRUN_FLAG tells it when to enter
    // the kernel to collect them. Older kernels refuse the flags: fall back to a plain ring of the same size.
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    p.cq_entries = cq_entries;
    int rc = io_uring_queue_init_params(entries, &r->ring, &p);
    if (rc == -EINVAL) {
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = cq_entries;
        rc = io_uring_queue_init_params(entries, &r->ring, &p);
    }
    if (rc < 0) { free(r); *err = rc; return NULL; }
    *err = 0;
    return r;
}

uint32_t vdv_uring_cq_entries(vdv_uring *r) { return r->ring.cq.ring_entries; }

int32_t vdv_uring_prep_poll_in(vdv_uring *r, int32_t fd, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int32_t vdv_uring_prep_cancel(vdv_uring *r, uint64_t target, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int32_t vdv_uring_submit_and_wait(vdv_uring *r, uint32_t wait_nr) {
    int rc;
    do { rc = io_uring_submit_and_wait(&r->ring, wait_nr); } while (rc == -EINTR);
    return rc;
}

int32_t vdv_uring_submit_and_wait_timeout(vdv_uring *r, uint32_t wait_nr, uint64_t timeout_us) {
    struct __kernel_timespec ts = { .tv_sec = (long long)(timeout_us / 1000000),
                                    .tv_nsec = (long long)(timeout_us % 1000000) * 1000 };
    struct io_uring_cqe *cqe;
    int rc;
    do { rc = io_uring_submit_and_wait_timeout(&r->ring, &cqe, wait_nr, &ts, NULL); } while (rc == -EINTR);
    return rc;
}

int32_t vdv_uring_limit_workers(vdv_uring *r, const int32_t *cpus, uint32_t ncpus, uint32_t max_bounded,
                                uint32_t max_unbounded) {
    int32_t result = 0;
    if (ncpus > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (uint32_t i = 0; i < ncpus; i++) if (cpus[i] >= 0 && cpus[i] < CPU_SETSIZE) CPU_SET(cpus[i], &set);
        int rc = io_uring_register_iowq_aff(&r->ring, sizeof(set), &set);
        if (rc < 0) result = rc;
    }
    unsigned int values[2] = { max_bounded, max_unbounded };
    int rc = io_uring_register_iowq_max_workers(&r->ring, values);
    if (rc < 0 && result == 0) result = rc;
    return result;
}

void vdv_uring_destroy(vdv_uring *r) {
    if (!r) return;
    io_uring_queue_exit(&r->ring);
    free(r);
}


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

int32_t vdv_uring_prep_rw_registered(vdv_uring *r, int32_t op, int32_t file_index, const void *iov, uint32_t iovcnt,
                                     int32_t buf_index, uint64_t offset, uint32_t rw_flags, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    const struct iovec *v = (const struct iovec *)iov;
    if (buf_index >= 0) {
        // One segment inside one registered buffer: READ_FIXED / WRITE_FIXED, no page pinning per request.
        if (op == VDV_OP_READV) io_uring_prep_read_fixed(sqe, file_index, v->iov_base, (unsigned)v->iov_len, offset, buf_index);
        else io_uring_prep_write_fixed(sqe, file_index, v->iov_base, (unsigned)v->iov_len, offset, buf_index);
        sqe->rw_flags = (int)rw_flags;
    } else if (op == VDV_OP_READV) {
        io_uring_prep_readv2(sqe, file_index, v, iovcnt, offset, (int)rw_flags);
    } else {
        io_uring_prep_writev2(sqe, file_index, v, iovcnt, offset, (int)rw_flags);
    }
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

// ---- registered files and buffers ----

int32_t vdv_uring_files_sparse(vdv_uring *r, uint32_t count) { return io_uring_register_files_sparse(&r->ring, count); }

int32_t vdv_uring_set_file(vdv_uring *r, uint32_t index, int32_t fd) {
    int rc = io_uring_register_files_update(&r->ring, index, &fd, 1);
    return rc < 0 ? rc : 0;
}

int32_t vdv_uring_buffers_sparse(vdv_uring *r, uint32_t count) { return io_uring_register_buffers_sparse(&r->ring, count); }

int32_t vdv_uring_set_buffer(vdv_uring *r, uint32_t index, void *addr, uint64_t len) {
    struct iovec v = { .iov_base = addr, .iov_len = (size_t)len };
    __u64 tag = 0;
    int rc = io_uring_register_buffers_update_tag(&r->ring, index, &v, &tag, 1);
    return rc < 0 ? rc : 0;
}

// IORING_REGISTER_CLONE_BUFFERS (Linux 6.12; DST_REPLACE 6.13), spelled out: liburing 2.3 predates it.
struct vdv_clone_buffers { uint32_t src_fd, flags, src_off, dst_off, nr, pad[3]; };
enum { VDV_REGISTER_CLONE_BUFFERS = 30, VDV_REGISTER_DST_REPLACE = 1u << 1 };

int32_t vdv_uring_clone_buffers(vdv_uring *dst, vdv_uring *src) {
    struct vdv_clone_buffers arg;
    memset(&arg, 0, sizeof(arg));
    arg.src_fd = (uint32_t)src->ring.ring_fd;
    arg.flags = VDV_REGISTER_DST_REPLACE;
    long rc = syscall(__NR_io_uring_register, dst->ring.ring_fd, VDV_REGISTER_CLONE_BUFFERS, &arg, 1);
    return rc < 0 ? -errno : 0;
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
    // Completions waiting as task work (COOP_TASKRUN), or held back in the kernel because the completion
    // queue overflowed: enter the kernel to have them posted.
    unsigned flags = IO_URING_READ_ONCE(*r->ring.sq.kflags);
    if (flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) (void)io_uring_get_events(&r->ring);
    io_uring_for_each_cqe(&r->ring, head, cqe) {
        if (n == max) break;
        user_data[n] = io_uring_cqe_get_data64(cqe);
        res[n] = cqe->res;
        n++;
    }
    if (n) io_uring_cq_advance(&r->ring, n);
    return n;
}

// BLOCK_URING_CMD_DISCARD (Linux 6.12, include/uapi/linux/fs.h): an asynchronous BLKDISCARD.
#ifndef BLOCK_URING_CMD_DISCARD
#define BLOCK_URING_CMD_DISCARD _IO(0x12, 0)
#endif

int32_t vdv_uring_prep_blk_discard(vdv_uring *r, int32_t fd, uint64_t offset, uint64_t len, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fd;
    sqe->cmd_op = BLOCK_URING_CMD_DISCARD;
    sqe->addr = offset;
    sqe->addr3 = len;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}
