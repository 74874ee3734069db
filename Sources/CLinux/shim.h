// Linux calls that Swift's Glibc module leaves out: glibc declares them only with
// _GNU_SOURCE, which the module is built without. Each is a plain glibc symbol.
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

// sync_file_range(2) (glibc 2.6): starts writeback of a file's dirty pages in a range,
// without its metadata and without flushing the disk's cache (fsync still does both).
#define QS_SYNC_FILE_RANGE_WAIT_BEFORE 1
#define QS_SYNC_FILE_RANGE_WRITE 2
#define QS_SYNC_FILE_RANGE_WAIT_AFTER 4
extern int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags);

// accept4(2) (glibc 2.10): accept with flags (SOCK_CLOEXEC) in one call.
extern int accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags);

// A signal that only interrupts a blocking call (the threaded listener's `read` of a quiet
// connection when another connection waits for a thread): its handler does nothing and it
// is installed without SA_RESTART, so the call returns EINTR.
#include <signal.h>
#include <string.h>
#include <pthread.h>
static void qs_interrupt_handler(int sig) { (void)sig; }
static inline int qs_interrupt_signal(void) { return SIGRTMIN + 4; }
static inline int qs_install_interrupt_signal(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = qs_interrupt_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    return sigaction(qs_interrupt_signal(), &sa, NULL);
}
// Threads inherit their creator's signal mask (a dispatch or cooperative-pool thread
// blocks most signals): a thread that is to be interrupted unblocks the signal itself.
static inline int qs_unblock_interrupt_signal(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, qs_interrupt_signal());
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

// pthread_setname_np(3) (glibc 2.12): the thread's name as `ps -L`, top and /proc show it
// (at most 15 bytes and the terminator).
extern int pthread_setname_np(pthread_t thread, const char *name);

// The calling thread's nice value (Linux keeps one per thread: setpriority(2) on its
// thread id; gettid is glibc 2.30). 0 when set, -1 with errno otherwise.
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
static inline int qs_set_thread_nice(int nice) {
    return setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice);
}

// mallopt(3)'s M_ARENA_MAX: glibc gives threads up to 8 arenas a core, each keeping the
// memory freed in it; a node's reader threads (up to 128) kept 20-30 MB that way.
#include <malloc.h>
static inline int qs_cap_malloc_arenas(int arenas) { return mallopt(M_ARENA_MAX, arenas); }
