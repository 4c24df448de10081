// C shims for vdevd: only stdint types and opaque pointers cross into Swift.
#ifndef CVDEVD_H
#define CVDEVD_H

#include <stdint.h>

// ---- Memory ordering on shared rings (virtio 1.3, 2.7.13: barriers) ----
/* A hint that *p is read soon (a line another CPU wrote: guest rings and buffers). */
static inline void vdv_prefetch(const void *p) { __builtin_prefetch(p); }
static inline uint16_t vdv_load_acquire_u16(const void *p) { return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE); }
static inline uint16_t vdv_load_relaxed_u16(const void *p) { return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED); }
static inline void vdv_store_release_u16(void *p, uint16_t v) { __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE); }
static inline void vdv_store_relaxed_u16(void *p, uint16_t v) { __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELAXED); }
static inline uint8_t vdv_load_relaxed_u8(const void *p) { return __atomic_load_n((const uint8_t *)p, __ATOMIC_RELAXED); }
static inline void vdv_store_relaxed_u8(void *p, uint8_t v) { __atomic_store_n((uint8_t *)p, v, __ATOMIC_RELAXED); }
static inline uint64_t vdv_load_relaxed_u64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED); }
static inline void vdv_store_relaxed_u64(void *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED); }
static inline void vdv_atomic_or_u8(void *p, uint8_t v) { __atomic_fetch_or((uint8_t *)p, v, __ATOMIC_RELAXED); }
static inline void vdv_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void vdv_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
static inline void vdv_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void vdv_cpu_relax(void) { __builtin_ia32_pause(); }

// ---- io_uring (liburing), one ring per poller ----
typedef struct vdv_uring vdv_uring;
enum { VDV_OP_READV = 0, VDV_OP_WRITEV = 1 };
// entries SQEs and cq_entries CQEs. Returns NULL and sets *err to a negative errno on failure.
vdv_uring *vdv_uring_create(uint32_t entries, uint32_t cq_entries, int32_t *err);
void vdv_uring_destroy(vdv_uring *ring);
uint32_t vdv_uring_cq_entries(vdv_uring *ring);
// A one-shot POLL_ADD (POLLIN) on fd: how a poller sleeping in the ring learns that its epoll has events.
int32_t vdv_uring_prep_poll_in(vdv_uring *ring, int32_t fd, uint64_t user_data);
// ASYNC_CANCEL of the request whose user_data is target.
int32_t vdv_uring_prep_cancel(vdv_uring *ring, uint64_t target, uint64_t user_data);
// Submits what is queued and sleeps until at least wait_nr completions are ready.
int32_t vdv_uring_submit_and_wait(vdv_uring *ring, uint32_t wait_nr);
// The same, giving up after timeout_us (-ETIME).
int32_t vdv_uring_submit_and_wait_timeout(vdv_uring *ring, uint32_t wait_nr, uint64_t timeout_us);
// io-wq workers: on these CPUs (ncpus 0: left as they are) and at most this many (0: left as it is).
// 0, or the first -errno.
int32_t vdv_uring_limit_workers(vdv_uring *ring, const int32_t *cpus, uint32_t ncpus, uint32_t max_bounded,
                                uint32_t max_unbounded);
// The prep calls return 0, or -EBUSY when the submission queue is full.
int32_t vdv_uring_prep_rw(vdv_uring *ring, int32_t op, int32_t fd, const void *iov, uint32_t iovcnt,
                          uint64_t offset, uint32_t rw_flags, uint64_t user_data);
// The same on a registered file (file_index into the ring's file table). buf_index >= 0: the one iovec lies in
// that registered buffer (READ_FIXED / WRITE_FIXED); -1: a vectored read or write of guest memory as usual.
int32_t vdv_uring_prep_rw_registered(vdv_uring *ring, int32_t op, int32_t file_index, const void *iov, uint32_t iovcnt,
                                     int32_t buf_index, uint64_t offset, uint32_t rw_flags, uint64_t user_data);
int32_t vdv_uring_prep_fsync(vdv_uring *ring, int32_t fd, int32_t datasync, uint64_t user_data);
int32_t vdv_uring_prep_fallocate(vdv_uring *ring, int32_t fd, int32_t mode, uint64_t offset, uint64_t len,
                                 uint64_t user_data);
int32_t vdv_uring_prep_nop(vdv_uring *ring, uint64_t user_data);
// BLOCK_URING_CMD_DISCARD on a block device (Linux 6.12 and later): BLKDISCARD without blocking the poller.
int32_t vdv_uring_prep_blk_discard(vdv_uring *ring, int32_t fd, uint64_t offset, uint64_t len, uint64_t user_data);
uint32_t vdv_uring_sq_space_left(vdv_uring *ring);
// Registered files: a sparse table of count slots, then set (fd) or clear (-1) one. 0 or -errno.
int32_t vdv_uring_files_sparse(vdv_uring *ring, uint32_t count);
int32_t vdv_uring_set_file(vdv_uring *ring, uint32_t index, int32_t fd);
// Registered buffers: a sparse table, then set one slot to [addr, addr+len) (the kernel pins those pages now) or
// clear it (NULL, 0; requests already using it keep its pages until they complete). 0 or -errno.
int32_t vdv_uring_buffers_sparse(vdv_uring *ring, uint32_t count);
int32_t vdv_uring_set_buffer(vdv_uring *ring, uint32_t index, void *addr, uint64_t len);
// Replaces dst's buffer table with src's (references, no pinning: fast, takes dst's lock only briefly).
int32_t vdv_uring_clone_buffers(vdv_uring *dst, vdv_uring *src);
// Submits queued SQEs; returns the count or a negative errno.
int32_t vdv_uring_submit(vdv_uring *ring);
// Copies up to max completions out and marks them seen; returns how many.
uint32_t vdv_uring_reap(vdv_uring *ring, uint64_t *user_data, int32_t *res, uint32_t max);

// ---- Linux AIO (libaio), the engine for kernels with io_uring disabled ----
typedef struct vdv_aio vdv_aio;
// depth iocbs; completions signal eventfd. NULL and *err = -errno on failure.
vdv_aio *vdv_aio_create(uint32_t depth, int32_t eventfd, int32_t *err);
void vdv_aio_destroy(vdv_aio *ctx);
// Queue an operation (0 or -EBUSY when all iocbs are in use).
int32_t vdv_aio_prep_rw(vdv_aio *ctx, int32_t op, int32_t fd, const void *iov, uint32_t iovcnt, uint64_t offset,
                        uint32_t rw_flags, uint64_t user_data);
int32_t vdv_aio_prep_fdsync(vdv_aio *ctx, int32_t fd, uint64_t user_data);
uint32_t vdv_aio_free_slots(vdv_aio *ctx);
// io_submit of everything queued; returns the count or -errno. Ops the kernel refused complete with their error.
int32_t vdv_aio_submit(vdv_aio *ctx);
// Operations queued and not yet accepted by the kernel (they go with the next submit).
uint32_t vdv_aio_pending(vdv_aio *ctx);
uint32_t vdv_aio_reap(vdv_aio *ctx, uint64_t *user_data, int32_t *res, uint32_t max);

// ---- epoll, with a 64-bit tag per fd (struct epoll_event is packed; Swift never sees it) ----
int32_t vdv_epoll_create(void);
int32_t vdv_epoll_add(int32_t epfd, int32_t fd, uint32_t events, uint64_t tag);
int32_t vdv_epoll_mod(int32_t epfd, int32_t fd, uint32_t events, uint64_t tag);
int32_t vdv_epoll_del(int32_t epfd, int32_t fd);
// Returns the number of events (tags[i], events[i]) or -errno; EINTR returns 0.
int32_t vdv_epoll_wait(int32_t epfd, uint64_t *tags, uint32_t *events, int32_t max, int32_t timeout_ms);
enum { VDV_EPOLLIN = 1, VDV_EPOLLOUT = 4, VDV_EPOLLERR = 8, VDV_EPOLLHUP = 16, VDV_EPOLLRDHUP = 0x2000 };

// ---- Unix sockets with SCM_RIGHTS ----
// recvmsg with up to maxfds fds (close-on-exec); extra fds beyond maxfds are closed and *truncated set to 1.
// *truncated is 2 when the kernel could not install the fds sent (this process is out of fds: EMFILE).
int64_t vdv_recv_with_fds(int32_t sock, void *buf, uint64_t len, int32_t *fds, uint32_t maxfds, uint32_t *nfds,
                          int32_t *truncated);
int64_t vdv_send_with_fds(int32_t sock, const void *buf, uint64_t len, const int32_t *fds, uint32_t nfds);
// Socket creation helpers: return fd or -errno.
int32_t vdv_unix_listen(const char *path, uint32_t mode, int32_t backlog);
// Like vdv_unix_listen, with an owner and group (-1: unchanged), and the path appears only once the socket has
// its final mode, owner and group and listens. Never replaces an existing file (-EEXIST).
int32_t vdv_unix_listen_owned(const char *path, uint32_t mode, int64_t uid, int64_t gid, int32_t backlog);
// The same, also giving the socket file's device and inode (taken before the path appears), so that only that
// inode is removed at exit.
int32_t vdv_unix_listen_owned_inode(const char *path, uint32_t mode, int64_t uid, int64_t gid, int32_t backlog,
                                    uint64_t *dev, uint64_t *ino);
// open(path, O_PATH | O_NOFOLLOW): an fd naming the file itself (a symlink is not followed); fd or -errno.
int32_t vdv_open_path_nofollow(const char *path);
// TCP listener on an IPv4/IPv6 literal; fd or -errno (-EINVAL for a host that is not a literal).
int32_t vdv_tcp_listen(const char *host, uint16_t port, int32_t backlog);
uint16_t vdv_tcp_local_port(int32_t fd);
// One datagram to a Unix datagram socket ("@name": abstract), as sd_notify(3) sends; 0 or -errno.
int32_t vdv_notify_datagram(const char *path, const char *msg);
int32_t vdv_unix_connect(const char *path, int32_t type);
// Non-blocking Unix connect (SOCK_STREAM or SOCK_SEQPACKET) and accept; fd or -errno.
int32_t vdv_unix_connect_nb(const char *path, int32_t type);
int32_t vdv_accept_nb(int32_t listen_fd);
// 1 if the peer of a connected socket has shut down or closed (POLLHUP/POLLRDHUP), else 0.
int32_t vdv_peer_hung_up(int32_t fd);
// Raises SO_SNDBUF to at least `bytes` (SO_SNDBUFFORCE when allowed); returns the largest datagram/SEQPACKET
// message the socket can now send.
int32_t vdv_seqpacket_max_message(int32_t fd, int32_t bytes);
// accept4 with close-on-exec; fd or -errno.
int32_t vdv_accept(int32_t listen_fd);
// Returns 1 if a listener answers at path, 0 if nobody does (stale), -errno otherwise.
int32_t vdv_unix_probe(const char *path);

// ---- Files and devices ----
int32_t vdv_open_flags(int32_t readonly, int32_t direct);
extern const int32_t VDV_O_NOATIME;
// What an opened image is: its size, whether it is a block device, whether it is a regular file on a memory
// file system (tmpfs, ramfs, hugetlbfs), and its logical block size and O_DIRECT alignments.
typedef struct {
    int64_t size;
    int32_t is_block_device;
    int32_t on_memory_fs;
    uint32_t logical_block_size;  // BLKSSZGET for a block device, else 512
    uint32_t dio_mem_align;       // O_DIRECT buffer address alignment (STATX_DIOALIGN; else the logical block size)
    uint32_t dio_offset_align;    // O_DIRECT offset and length alignment
} vdv_backing_info;
// 0, or -errno; -EINVAL when fd is neither a regular file nor a block device.
int32_t vdv_backing_probe(int32_t fd, vdv_backing_info *info);
// A memfd that allows sealing (as QEMU's memory-backend-memfd makes): vdevd seals guest memory against shrinking.
int32_t vdv_memfd_create(const char *name);
// 1 when the first `length` bytes of a guest memory fd already have memory behind them (hugetlbfs, or a file
// whose blocks cover the length: preallocated), so pinning them allocates nothing; else 0.
int32_t vdv_memory_fd_allocated(int32_t fd, uint64_t length);
// preadv2/pwritev2 (bytes or -errno) and fdatasync (0 or -errno), for files that never block (tmpfs).
int64_t vdv_preadv(int32_t fd, const void *iov, uint32_t iovcnt, uint64_t offset);
int64_t vdv_pwritev(int32_t fd, const void *iov, uint32_t iovcnt, uint64_t offset, uint32_t rw_flags);
int32_t vdv_fdatasync(int32_t fd);
// ioctl(BLKDISCARD) on a block device; 0 or -errno.
int32_t vdv_blk_discard(int32_t fd, uint64_t offset, uint64_t len);
// 1 if the running kernel's version is at least major.minor.
int32_t vdv_kernel_at_least(int32_t major, int32_t minor);
// fallocate(2); 0 or -errno.
int32_t vdv_fallocate(int32_t fd, int32_t mode, uint64_t offset, uint64_t len);
int32_t vdv_eventfd(uint32_t initval, int32_t nonblock);
// 1 if fd is an eventfd (anon_inode:[eventfd]), else 0.
int32_t vdv_is_eventfd(int32_t fd);
// A non-blocking CLOCK_MONOTONIC timerfd, disarmed; fd or -errno.
int32_t vdv_timerfd_create(void);
// Fires every interval_ms from now on; 0 disarms. 0 or -errno.
int32_t vdv_timerfd_arm(int32_t fd, uint32_t interval_ms);
extern const int32_t VDV_FALLOC_PUNCH_HOLE;   // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
extern const int32_t VDV_FALLOC_ZERO_RANGE;   // FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
extern const uint32_t VDV_RWF_DSYNC;

// ---- Threads and signals ----
void vdv_block_term_signals(void);
// Waits for SIGTERM, SIGINT or SIGHUP; returns the signal number.
int32_t vdv_wait_term_signal(void);
int32_t vdv_pin_thread_to_cpu(int32_t cpu);
// The CPUs this process may run on (sched_getaffinity), up to max; the count or -errno.
int32_t vdv_cpus_of_process(int32_t *out, int32_t max);
int32_t vdv_cpus_online(void);
int32_t vdv_thread_id(void);
void vdv_set_thread_name(const char *name);


// ---- VDUSE (Documentation/userspace-api/vduse.rst): control device, device fd ioctls, requests ----
// Every call returns 0 (or an fd), or -errno.
int32_t vdv_vduse_set_api_version(int32_t control_fd, uint64_t version);
int32_t vdv_vduse_create_dev(int32_t control_fd, const char *name, uint32_t device_id, uint32_t vendor_id,
                             uint64_t features, uint32_t vq_num, uint32_t vq_align, const uint8_t *config,
                             uint32_t config_size);
int32_t vdv_vduse_destroy_dev(int32_t control_fd, const char *name);
int32_t vdv_vduse_vq_setup(int32_t dev_fd, uint32_t index, uint16_t max_size);
int32_t vdv_vduse_get_features(int32_t dev_fd, uint64_t *features);
// struct vduse_vq_info of a split ring.
typedef struct {
    uint32_t index, num;
    uint64_t desc_addr, driver_addr, device_addr;
    uint16_t avail_index;
    uint8_t ready;
} vdv_vduse_vq_info;
int32_t vdv_vduse_vq_get_info(int32_t dev_fd, uint32_t index, vdv_vduse_vq_info *out);
// fd -1 deassigns.
int32_t vdv_vduse_vq_setup_kickfd(int32_t dev_fd, uint32_t index, int32_t fd);
int32_t vdv_vduse_vq_inject_irq(int32_t dev_fd, uint32_t index);
// struct vduse_iotlb_entry; perm: 1 read, 2 write, 3 both.
typedef struct {
    uint64_t offset, start, last;
    uint8_t perm;
} vdv_vduse_iotlb_entry;
// The first mapping overlapping [start, last]: fills the entry and returns a new fd of its file.
int32_t vdv_vduse_iotlb_get_fd(int32_t dev_fd, vdv_vduse_iotlb_entry *entry);
// struct vduse_dev_request, flattened: type 0 GET_VQ_STATE (vq_index), 1 SET_STATUS (status),
// 2 UPDATE_IOTLB (iova_start, iova_last).
typedef struct {
    uint32_t type, request_id, vq_index;
    uint8_t status;
    uint64_t iova_start, iova_last;
} vdv_vduse_request;
// One blocking read of one request (-EIO for a short one).
int32_t vdv_vduse_read_request(int32_t dev_fd, vdv_vduse_request *out);
// struct vduse_dev_response: OK or FAILED; the vq state for GET_VQ_STATE.
int32_t vdv_vduse_write_response(int32_t dev_fd, uint32_t request_id, int32_t ok, uint32_t vq_index,
                                 uint16_t avail_index);

// ---- Guest memory fds: what file system they live on, whether they can shrink ----
enum { VDV_MEMFS_OTHER = 0, VDV_MEMFS_SHMEM = 1, VDV_MEMFS_HUGETLB = 2 };
typedef struct {
    int64_t size;
    int32_t is_regular;
    int32_t is_memfd;       // made by memfd_create (/proc/self/fd names it "/memfd:...")
    int32_t fs_kind;        // VDV_MEMFS_*
    int32_t seals;          // F_GET_SEALS, or -1 where the file system has no seals
    uint64_t fs_magic;      // statfs f_type, for messages
    uint64_t block_size;    // st_blksize: the huge page size on hugetlbfs
} vdv_memory_fd_info;
int32_t vdv_memory_fd_describe(int32_t fd, vdv_memory_fd_info *info);
extern const int32_t VDV_F_SEAL_SEAL;
extern const int32_t VDV_F_SEAL_SHRINK;
// F_ADD_SEALS(F_SEAL_SHRINK); 0 or -errno (-EPERM: the memfd was made without MFD_ALLOW_SEALING, or is sealed).
int32_t vdv_memfd_seal_shrink(int32_t fd);
extern const uint32_t VDV_MFD_ALLOW_SEALING;
extern const uint32_t VDV_MFD_HUGETLB;
// memfd_create(name, MFD_CLOEXEC | flags); fd or -errno.
int32_t vdv_memfd_create_flags(const char *name, uint32_t flags);

// ---- Guest mappings that survive their file vanishing (SIGBUS), see guest_fault.c ----
enum { VDV_GUEST_MAPPING_SLOTS = 8192 };
// Installs the SIGBUS handler once; 0 or -errno.
int32_t vdv_guest_fault_guard_install(void);
// Registers [start, start+length) (length rounded to the mapping's page size); slot or -errno (-ENOSPC: full).
int32_t vdv_guest_mapping_register(void *start, uint64_t length);
void vdv_guest_mapping_unregister(int32_t slot);
// 1 once a fault in the slot's mapping replaced it with zero memory.
int32_t vdv_guest_mapping_faulted(int32_t slot);
// Bumped at every such fault: a poller compares it once a pass.
uint64_t vdv_guest_fault_generation(void);

// ---- Process limits ----
// RLIMIT_NOFILE's soft limit raised to the hard limit; before and after are the soft limits. 0 or -errno.
int32_t vdv_raise_nofile_limit(uint64_t *before, uint64_t *after);
// Sets the soft RLIMIT_NOFILE (tests); 0 or -errno.
int32_t vdv_set_nofile_soft_limit(uint64_t soft);
uint64_t vdv_nofile_soft_limit(void);

#endif

/* ---- net (switch refcounts and counters shared between pollers; tap uplink) ---- */
static inline uint32_t vdv_fetch_add_u32(void *p, uint32_t v) { return __atomic_fetch_add((uint32_t *)p, v, __ATOMIC_ACQ_REL); }
static inline uint32_t vdv_fetch_sub_u32(void *p, uint32_t v) { return __atomic_fetch_sub((uint32_t *)p, v, __ATOMIC_ACQ_REL); }
static inline uint32_t vdv_load_acquire_u32(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }
static inline void vdv_store_release_u32(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE); }
static inline void vdv_add_relaxed_u64(void *p, uint64_t v) { __atomic_fetch_add((uint64_t *)p, v, __ATOMIC_RELAXED); }
static inline uint8_t vdv_exchange_u8(void *p, uint8_t v) { return __atomic_exchange_n((uint8_t *)p, v, __ATOMIC_SEQ_CST); }
/* Opens /dev/net/tun as IFF_TAP | IFF_NO_PI | IFF_VNET_HDR named `name`, non-blocking, 12-byte vnet header.
   Returns the fd or -errno. */
int32_t vdv_tap_open(const char *name);
/* TUNSETOFFLOAD with TUN_F_* flags; 0 or -errno. */
int32_t vdv_tap_set_offload(int32_t fd, uint32_t flags);
