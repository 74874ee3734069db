/* Preloaded under valgrind 3.19 by scripts/profile.sh: valgrind's rt_sigsuspend wrapper
 * writes into the caller's signal mask, and libdispatch (which parks the main thread of
 * every Swift async program in sigsuspend) passes a read-only one, so valgrind dies with an
 * internal SIGSEGV. This sigsuspend hands the kernel a writable copy instead. */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

int sigsuspend(const sigset_t *mask) {
    sigset_t copy = *mask;
    return (int)syscall(SYS_rt_sigsuspend, &copy, sizeof(long));
}
