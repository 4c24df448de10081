// Linux AIO (libaio): the engine for kernels with io_uring disabled.
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libaio.h>

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
