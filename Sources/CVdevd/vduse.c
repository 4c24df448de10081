// VDUSE ioctls and the request/response records of /dev/vduse/NAME (Documentation/userspace-api/vduse.rst).
// The ioctl numbers are macros; Swift sees only these functions and the stdint records of cvdevd.h.
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/vduse.h>

static int32_t rc(int r) { return r < 0 ? -errno : r; }

int32_t vdv_vduse_set_api_version(int32_t control_fd, uint64_t version) {
    return rc(ioctl(control_fd, VDUSE_SET_API_VERSION, &version));
}

int32_t vdv_vduse_create_dev(int32_t control_fd, const char *name, uint32_t device_id, uint32_t vendor_id,
                             uint64_t features, uint32_t vq_num, uint32_t vq_align, const uint8_t *config,
                             uint32_t config_size) {
    if (strlen(name) >= VDUSE_NAME_MAX) return -ENAMETOOLONG;
    struct vduse_dev_config *c = calloc(1, sizeof(*c) + config_size);
    if (!c) return -ENOMEM;
    strcpy(c->name, name);
    c->device_id = device_id;
    c->vendor_id = vendor_id;
    c->features = features;
    c->vq_num = vq_num;
    c->vq_align = vq_align;
    c->config_size = config_size;
    memcpy(c->config, config, config_size);
    int r = rc(ioctl(control_fd, VDUSE_CREATE_DEV, c));
    free(c);
    return r;
}

int32_t vdv_vduse_destroy_dev(int32_t control_fd, const char *name) {
    char n[VDUSE_NAME_MAX] = {0};
    if (strlen(name) >= VDUSE_NAME_MAX) return -ENAMETOOLONG;
    strcpy(n, name);
    return rc(ioctl(control_fd, VDUSE_DESTROY_DEV, n));
}

int32_t vdv_vduse_vq_setup(int32_t dev_fd, uint32_t index, uint16_t max_size) {
    struct vduse_vq_config c;
    memset(&c, 0, sizeof(c));
    c.index = index;
    c.max_size = max_size;
    return rc(ioctl(dev_fd, VDUSE_VQ_SETUP, &c));
}

int32_t vdv_vduse_get_features(int32_t dev_fd, uint64_t *features) {
    return rc(ioctl(dev_fd, VDUSE_DEV_GET_FEATURES, features));
}

int32_t vdv_vduse_vq_get_info(int32_t dev_fd, uint32_t index, vdv_vduse_vq_info *out) {
    struct vduse_vq_info i;
    memset(&i, 0, sizeof(i));
    i.index = index;
    int r = rc(ioctl(dev_fd, VDUSE_VQ_GET_INFO, &i));
    if (r < 0) return r;
    out->index = i.index;
    out->num = i.num;
    out->desc_addr = i.desc_addr;
    out->driver_addr = i.driver_addr;
    out->device_addr = i.device_addr;
    out->avail_index = i.split.avail_index;
    out->ready = i.ready;
    return 0;
}

int32_t vdv_vduse_vq_setup_kickfd(int32_t dev_fd, uint32_t index, int32_t fd) {
    struct vduse_vq_eventfd e = { .index = index, .fd = fd };
    return rc(ioctl(dev_fd, VDUSE_VQ_SETUP_KICKFD, &e));
}

int32_t vdv_vduse_vq_inject_irq(int32_t dev_fd, uint32_t index) {
    return rc(ioctl(dev_fd, VDUSE_VQ_INJECT_IRQ, &index));
}

int32_t vdv_vduse_iotlb_get_fd(int32_t dev_fd, vdv_vduse_iotlb_entry *entry) {
    struct vduse_iotlb_entry e;
    memset(&e, 0, sizeof(e));
    e.start = entry->start;
    e.last = entry->last;
    int fd = rc(ioctl(dev_fd, VDUSE_IOTLB_GET_FD, &e));
    if (fd < 0) return fd;
    entry->offset = e.offset;
    entry->start = e.start;
    entry->last = e.last;
    entry->perm = e.perm;
    return fd;
}

int32_t vdv_vduse_read_request(int32_t dev_fd, vdv_vduse_request *out) {
    struct vduse_dev_request r;
    ssize_t n = read(dev_fd, &r, sizeof(r));
    if (n < 0) return -errno;
    if ((size_t)n != sizeof(r)) return -EIO;
    memset(out, 0, sizeof(*out));
    out->type = r.type;
    out->request_id = r.request_id;
    switch (r.type) {
    case VDUSE_GET_VQ_STATE: out->vq_index = r.vq_state.index; break;
    case VDUSE_SET_STATUS: out->status = r.s.status; break;
    case VDUSE_UPDATE_IOTLB: out->iova_start = r.iova.start; out->iova_last = r.iova.last; break;
    default: break;
    }
    return 0;
}

int32_t vdv_vduse_write_response(int32_t dev_fd, uint32_t request_id, int32_t ok, uint32_t vq_index,
                                 uint16_t avail_index) {
    struct vduse_dev_response r;
    memset(&r, 0, sizeof(r));
    r.request_id = request_id;
    r.result = ok ? VDUSE_REQ_RESULT_OK : VDUSE_REQ_RESULT_FAILED;
    r.vq_state.index = vq_index;
    r.vq_state.split.avail_index = avail_index;
    ssize_t n = write(dev_fd, &r, sizeof(r));
    if (n < 0) return -errno;
    return (size_t)n == sizeof(r) ? 0 : -EIO;
}
