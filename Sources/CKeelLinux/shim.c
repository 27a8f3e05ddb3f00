/* CKeelLinux is header-only; SwiftPM needs one source file to build the target. */
#define _GNU_SOURCE 1
#include "CKeelLinux.h"

/* The IOThread running on this OS thread, or NULL. One TLS slot shared by all of Keel. */
__thread void *ckeel_current_io_thread_slot = NULL;

void ckeel_set_current_io_thread(void *thread) { ckeel_current_io_thread_slot = thread; }

void ckeel_thread_set_name(const char *name) {
    char truncated[16];
    strncpy(truncated, name, 15);
    truncated[15] = 0;
    pthread_setname_np(pthread_self(), truncated);
}

int ckeel_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

/* Through syscall(): glibc's accept4 is a cancellation point (see ckeel_sendmsg in the header). */
int ckeel_accept4(int fd) { return (int)syscall(__NR_accept4, fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }
