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
