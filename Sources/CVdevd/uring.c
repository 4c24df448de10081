// io_uring: one ring per poller (liburing stays inside this file).
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <stdlib.h>
#include <liburing.h>

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
