// The last line against guest memory that vanishes under a mapping (a shared file truncated by the frontend):
// a SIGBUS handler that recognises faults inside registered guest mappings and survives them.
//
// Why not sigsetjmp/siglongjmp around each copy: guest memory is touched from Swift code all over the data path
// (ring index loads, descriptor copies, used-ring stores, memcpy of request data) and from the control thread;
// a longjmp across Swift frames skips their releases and leaves exclusivity and reference counts broken, and
// wrapping every access in C would put a sigsetjmp on the hot path. Instead the handler replaces the whole
// faulting mapping with anonymous zero memory (MAP_FIXED), marks it faulted and returns: the faulting access is
// retried and succeeds, the daemon goes on, and the poller that owns the queue sees the mark (one relaxed load of
// a generation counter per pass) and stops that queue with an error. Zeroes are no worse than any other bytes a
// hostile guest can put there: every value read from guest memory is validated anyway.
#define _GNU_SOURCE
#include "cvdevd.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>

enum { SLOTS = VDV_GUEST_MAPPING_SLOTS };

struct guest_mapping {
    _Atomic uintptr_t start;    // 0: slot free
    _Atomic uintptr_t length;
    _Atomic uint32_t faulted;
    _Atomic uint32_t taken;
};

static struct guest_mapping mappings[SLOTS];
static _Atomic uint64_t generation;
static struct sigaction previous;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int install_error;

static void on_sigbus(int sig, siginfo_t *si, void *ctx) {
    uintptr_t a = (uintptr_t)si->si_addr;
    // Only a fault the hardware raised on one of our mappings; kill(SIGBUS) and faults elsewhere are real crashes.
    if (si->si_code > 0) {
        for (int i = 0; i < SLOTS; i++) {
            uintptr_t s = atomic_load_explicit(&mappings[i].start, memory_order_acquire);
            uintptr_t n = atomic_load_explicit(&mappings[i].length, memory_order_relaxed);
            if (s == 0 || a < s || a - s >= n) continue;
            // mmap is a plain system call on Linux (safe in a synchronous signal handler).
            void *p = mmap((void *)s, n, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                           -1, 0);
            if (p == MAP_FAILED) break;
            atomic_store_explicit(&mappings[i].faulted, 1, memory_order_release);
            atomic_fetch_add_explicit(&generation, 1, memory_order_release);
            return;
        }
    }
    // Not ours: the handler that was there before (Swift's backtracer, or the default action) takes it.
    sigaction(SIGBUS, &previous, NULL);
    if (si->si_code <= 0) raise(sig);
    (void)ctx;
}

static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous) < 0) install_error = errno;
}

int32_t vdv_guest_fault_guard_install(void) {
    pthread_once(&once, install);
    return -install_error;
}

int32_t vdv_guest_mapping_register(void *start, uint64_t length) {
    if (start == NULL || length == 0) return -EINVAL;
    int32_t rc = vdv_guest_fault_guard_install();
    if (rc < 0) return rc;
    for (int i = 0; i < SLOTS; i++) {
        uint32_t expected = 0;
        if (!atomic_compare_exchange_strong(&mappings[i].taken, &expected, 1)) continue;
        atomic_store_explicit(&mappings[i].faulted, 0, memory_order_relaxed);
        atomic_store_explicit(&mappings[i].length, (uintptr_t)length, memory_order_relaxed);
        atomic_store_explicit(&mappings[i].start, (uintptr_t)start, memory_order_release);
        return i;
    }
    return -ENOSPC;
}

void vdv_guest_mapping_unregister(int32_t slot) {
    if (slot < 0 || slot >= SLOTS) return;
    atomic_store_explicit(&mappings[slot].start, 0, memory_order_release);
    atomic_store_explicit(&mappings[slot].length, 0, memory_order_relaxed);
    atomic_store_explicit(&mappings[slot].taken, 0, memory_order_release);
}

int32_t vdv_guest_mapping_faulted(int32_t slot) {
    if (slot < 0 || slot >= SLOTS) return 0;
    return (int32_t)atomic_load_explicit(&mappings[slot].faulted, memory_order_acquire);
}

uint64_t vdv_guest_fault_generation(void) { return atomic_load_explicit(&generation, memory_order_acquire); }
