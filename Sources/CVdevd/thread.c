// Threads and signals: termination signals, CPU pinning, thread names.
#define _GNU_SOURCE
#include "cvdevd.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

static void term_set(sigset_t *s) {
    sigemptyset(s);
    sigaddset(s, SIGTERM);
    sigaddset(s, SIGINT);
    sigaddset(s, SIGHUP);
}

void vdv_block_term_signals(void) {
    sigset_t s;
    term_set(&s);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int32_t vdv_wait_term_signal(void) {
    sigset_t s;
    term_set(&s);
    int sig = 0;
    while (sigwait(&s, &sig) != 0) {}
    return sig;
}

int32_t vdv_pin_thread_to_cpu(int32_t cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

void vdv_set_thread_name(const char *name) {
    char n[16];
    strncpy(n, name, 15);
    n[15] = 0;
    pthread_setname_np(pthread_self(), n);
}

int32_t vdv_cpus_of_process(int32_t *out, int32_t max) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) < 0) return -errno;
    int32_t n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < max; cpu++) if (CPU_ISSET(cpu, &set)) out[n++] = cpu;
    return n;
}

int32_t vdv_cpus_online(void) { return (int32_t)sysconf(_SC_NPROCESSORS_ONLN); }

int32_t vdv_thread_id(void) { return (int32_t)gettid(); }
