/*
 * CKeelLinux: the kernel UAPI surface Keel needs, as small static inline functions.
 * Raw syscalls only (no liburing). Functions return -1 and set errno like libc, except where noted.
 * Swift cannot import function-like macros, packed structs or anonymous unions reliably; each gets a
 * wrapper here so the Swift layers above never touch the raw layouts.
 */
#ifndef CKEEL_LINUX_H
#define CKEEL_LINUX_H

#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/time_types.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

/* Constants that may be missing from older UAPI headers (values are the kernel's ABI). */
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_FEAT_EXT_ARG
#define IORING_FEAT_EXT_ARG (1U << 8)
#endif
#ifndef IORING_FEAT_NODROP
#define IORING_FEAT_NODROP (1U << 1)
#endif
#ifndef IORING_FEAT_SINGLE_MMAP
#define IORING_FEAT_SINGLE_MMAP (1U << 0)
#endif
#ifndef IORING_FEAT_CQE_SKIP
#define IORING_FEAT_CQE_SKIP (1U << 11)
#endif
#ifndef IOSQE_CQE_SKIP_SUCCESS
#define IOSQE_CQE_SKIP_SUCCESS (1U << 6)
#endif

/* Setup flags and feature bits, as plain constants Swift can import. */
static const uint32_t CKEEL_SETUP_CLAMP = IORING_SETUP_CLAMP;
static const uint32_t CKEEL_SETUP_CQSIZE = IORING_SETUP_CQSIZE;
static const uint32_t CKEEL_SETUP_SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
static const uint32_t CKEEL_SETUP_COOP_TASKRUN = IORING_SETUP_COOP_TASKRUN;
static const uint32_t CKEEL_SETUP_SINGLE_ISSUER = IORING_SETUP_SINGLE_ISSUER;
static const uint32_t CKEEL_SETUP_DEFER_TASKRUN = IORING_SETUP_DEFER_TASKRUN;
static const uint32_t CKEEL_FEAT_SINGLE_MMAP = IORING_FEAT_SINGLE_MMAP;
static const uint32_t CKEEL_FEAT_NODROP = IORING_FEAT_NODROP;
static const uint32_t CKEEL_FEAT_EXT_ARG = IORING_FEAT_EXT_ARG;
static const uint32_t CKEEL_FEAT_CQE_SKIP = IORING_FEAT_CQE_SKIP;
static const uint32_t CKEEL_ENTER_GETEVENTS = IORING_ENTER_GETEVENTS;
static const uint32_t CKEEL_ENTER_EXT_ARG = IORING_ENTER_EXT_ARG;
static const uint32_t CKEEL_SQ_NEED_WAKEUP = IORING_SQ_NEED_WAKEUP;
static const uint32_t CKEEL_SQ_CQ_OVERFLOW = IORING_SQ_CQ_OVERFLOW;
static const uint32_t CKEEL_SQ_TASKRUN = IORING_SQ_TASKRUN;
static const uint32_t CKEEL_CQE_F_BUFFER = IORING_CQE_F_BUFFER;
static const uint32_t CKEEL_CQE_F_MORE = IORING_CQE_F_MORE;
static const uint32_t CKEEL_CQE_BUFFER_SHIFT = IORING_CQE_BUFFER_SHIFT;
static const uint64_t CKEEL_OFF_SQ_RING = IORING_OFF_SQ_RING;
static const uint64_t CKEEL_OFF_CQ_RING = IORING_OFF_CQ_RING;
static const uint64_t CKEEL_OFF_SQES = IORING_OFF_SQES;
static const uint32_t CKEEL_REGISTER_PROBE = IORING_REGISTER_PROBE;
static const uint32_t CKEEL_REGISTER_PBUF_RING = IORING_REGISTER_PBUF_RING;
static const uint32_t CKEEL_UNREGISTER_PBUF_RING = IORING_UNREGISTER_PBUF_RING;
static const uint32_t CKEEL_OP_LAST = IORING_OP_LAST;
static const uint8_t CKEEL_OP_SENDMSG_ZC = IORING_OP_SENDMSG_ZC;
static const uint32_t CKEEL_CQE_F_NOTIF = IORING_CQE_F_NOTIF;
static const uint32_t CKEEL_NOTIF_USAGE_ZC_COPIED = IORING_NOTIF_USAGE_ZC_COPIED;
static const uint32_t CKEEL_ENTER_REGISTERED_RING = IORING_ENTER_REGISTERED_RING;
static const uint32_t CKEEL_EPOLLIN = EPOLLIN;
static const uint32_t CKEEL_EPOLLOUT = EPOLLOUT;
static const uint32_t CKEEL_EPOLLERR = EPOLLERR;
static const uint32_t CKEEL_EPOLLHUP = EPOLLHUP;
static const uint32_t CKEEL_EPOLLRDHUP = EPOLLRDHUP;
static const uint32_t CKEEL_EPOLLONESHOT = EPOLLONESHOT;
static const uint32_t CKEEL_EPOLLET = EPOLLET;

/* ---- errno and clocks ---- */

static inline int ckeel_errno(void) { return errno; }
static inline void ckeel_set_errno(int value) { errno = value; }

/* CLOCK_MONOTONIC in nanoseconds. */
static inline uint64_t ckeel_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CPU time (user + system) used by this process, in nanoseconds. */
static inline uint64_t ckeel_process_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- processes ---- */

/* A pipe whose two ends close on exec (-1 + errno on failure). */
static inline int ckeel_pipe_cloexec(int fds[2]) { return (int)syscall(__NR_pipe2, fds, O_CLOEXEC); }

/* Asks the kernel to send `signal` to this process when its parent goes (-1 + errno on failure). */
static inline int ckeel_set_parent_death_signal(int signal) { return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0); }

/* ---- io_uring syscalls (-1 + errno on failure) ---- */

static inline int ckeel_io_uring_setup(unsigned entries, struct io_uring_params *params) {
    return (int)syscall(__NR_io_uring_setup, entries, params);
}

static inline int ckeel_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags,
                                       const void *arg, size_t argsz) {
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
}

static inline int ckeel_io_uring_register(int fd, unsigned opcode, void *arg, unsigned nr_args) {
    return (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
}

/* Acquire/release accessors for the ring indices shared with the kernel. */
static inline uint32_t ckeel_load_acquire(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void ckeel_store_release(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t ckeel_load_relaxed(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint16_t ckeel_load_acquire16(const uint16_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void ckeel_store_release16(uint16_t *p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* ---- SQE preparation: pure setters over a zeroed entry ---- */

static inline void ckeel_sqe_prep(struct io_uring_sqe *sqe, uint8_t opcode, int fd, uint64_t addr, uint32_t len,
                                  uint64_t offset, uint64_t user_data) {
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = opcode;
    sqe->fd = fd;
    sqe->addr = addr;
    sqe->len = len;
    sqe->off = offset;
    sqe->user_data = user_data;
}

/* Closes an ordinary descriptor (IORING_OP_CLOSE, Linux 5.6). */
static inline void ckeel_sqe_close(struct io_uring_sqe *sqe, int fd, uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_CLOSE, fd, 0, 0, 0, user_data);
}

/* No completion when the operation succeeds (IOSQE_CQE_SKIP_SUCCESS, IORING_FEAT_CQE_SKIP); a failure
 * still posts one. For operations nobody waits for; never on a linked SQE. */
static inline void ckeel_sqe_skip_success(struct io_uring_sqe *sqe) { sqe->flags |= IOSQE_CQE_SKIP_SUCCESS; }

static inline void ckeel_sqe_nop(struct io_uring_sqe *sqe, uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_NOP, -1, 0, 0, 0, user_data);
}

/* Relative timeout; `ts` must stay valid until the SQE is submitted (the kernel copies it at submit). */
static inline void ckeel_sqe_timeout(struct io_uring_sqe *sqe, const struct __kernel_timespec *ts, uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_TIMEOUT, -1, (uint64_t)(uintptr_t)ts, 1, 0, user_data);
}

/* Cancel the request whose user_data equals `target`. */
static inline void ckeel_sqe_cancel(struct io_uring_sqe *sqe, uint64_t target, uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_ASYNC_CANCEL, -1, target, 0, 0, user_data);
}

/* Remove the timeout whose user_data equals `target`. */
static inline void ckeel_sqe_timeout_remove(struct io_uring_sqe *sqe, uint64_t target, uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_TIMEOUT_REMOVE, -1, target, 0, 0, user_data);
}

static inline void ckeel_sqe_read(struct io_uring_sqe *sqe, int fd, void *buf, uint32_t len, uint64_t user_data) {
    /* offset -1: use and advance the file position (pipes, sockets, eventfd). */
    ckeel_sqe_prep(sqe, IORING_OP_READ, fd, (uint64_t)(uintptr_t)buf, len, (uint64_t)-1, user_data);
}

static inline void ckeel_sqe_write(struct io_uring_sqe *sqe, int fd, const void *buf, uint32_t len,
                                   uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_WRITE, fd, (uint64_t)(uintptr_t)buf, len, (uint64_t)-1, user_data);
}

static inline void ckeel_sqe_writev(struct io_uring_sqe *sqe, int fd, const struct iovec *iov, uint32_t count,
                                    uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_WRITEV, fd, (uint64_t)(uintptr_t)iov, count, (uint64_t)-1, user_data);
}

/* recv with IOSQE_BUFFER_SELECT: the kernel picks a buffer from provided-buffer group `group`. */
static inline void ckeel_sqe_recv_provided(struct io_uring_sqe *sqe, int fd, uint16_t group, uint32_t len,
                                           uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_RECV, fd, 0, len, 0, user_data);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = group;
}

/* accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC; multishot keeps accepting until cancelled or an error. */
static inline void ckeel_sqe_accept(struct io_uring_sqe *sqe, int fd, int multishot, uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_ACCEPT, fd, 0, 0, 0, user_data);
    sqe->accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
    if (multishot) sqe->ioprio |= IORING_ACCEPT_MULTISHOT;
}

static inline void ckeel_sqe_recv(struct io_uring_sqe *sqe, int fd, void *buf, uint32_t len, uint32_t flags,
                                  uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_RECV, fd, (uint64_t)(uintptr_t)buf, len, 0, user_data);
    sqe->msg_flags = flags;
}

/* Multishot recv into buffers of provided-buffer group `group`: one CQE per received chunk. */
static inline void ckeel_sqe_recv_multishot(struct io_uring_sqe *sqe, int fd, uint16_t group, uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_RECV, fd, 0, 0, 0, user_data);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = group;
    sqe->ioprio |= IORING_RECV_MULTISHOT;
}

static inline void ckeel_sqe_send(struct io_uring_sqe *sqe, int fd, const void *buf, uint32_t len, uint32_t flags,
                                  uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_SEND, fd, (uint64_t)(uintptr_t)buf, len, 0, user_data);
    sqe->msg_flags = flags;
}

static inline void ckeel_sqe_sendmsg(struct io_uring_sqe *sqe, int fd, const struct msghdr *msg, uint32_t flags,
                                     uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_SENDMSG, fd, (uint64_t)(uintptr_t)msg, 1, 0, user_data);
    sqe->msg_flags = flags;
}

/* Zero-copy sendmsg: the kernel sends from the caller's pages. The first CQE carries the result (with
 * IORING_CQE_F_MORE when a notification follows); the second, flagged IORING_CQE_F_NOTIF, says the
 * kernel no longer reads the memory. Its result has IORING_NOTIF_USAGE_ZC_COPIED when the kernel
 * copied after all (loopback, a device without scatter-gather). */
static inline void ckeel_sqe_sendmsg_zc(struct io_uring_sqe *sqe, int fd, const struct msghdr *msg, uint32_t flags,
                                        uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_SENDMSG_ZC, fd, (uint64_t)(uintptr_t)msg, 1, 0, user_data);
    sqe->msg_flags = flags;
    sqe->ioprio |= IORING_SEND_ZC_REPORT_USAGE;
}

static inline void ckeel_sqe_connect(struct io_uring_sqe *sqe, int fd, const void *addr, uint32_t addrlen,
                                     uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_CONNECT, fd, (uint64_t)(uintptr_t)addr, 0, addrlen, user_data);
}

/* Multishot recvmsg into provided buffers: each buffer starts with a struct io_uring_recvmsg_out, then
 * msg->msg_namelen bytes of address, msg->msg_controllen bytes of control data, then the payload. */
static inline void ckeel_sqe_recvmsg_multishot(struct io_uring_sqe *sqe, int fd, struct msghdr *msg, uint16_t group,
                                               uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_RECVMSG, fd, (uint64_t)(uintptr_t)msg, 1, 0, user_data);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = group;
    sqe->ioprio |= IORING_RECV_MULTISHOT;
}

/* One-shot poll for `events` (POLLIN, POLLPRI, ...); the CQE's result is the ready mask. */
static inline void ckeel_sqe_poll(struct io_uring_sqe *sqe, int fd, uint32_t events, uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_POLL_ADD, fd, 0, 0, 0, user_data);
    sqe->poll32_events = events;
}

static const uint32_t CKEEL_POLLIN = POLLIN;
static const uint32_t CKEEL_POLLPRI = POLLPRI;
static const uint32_t CKEEL_POLLERR = POLLERR;
static const uint32_t CKEEL_POLLHUP = POLLHUP;
static const uint32_t CKEEL_POLLRDHUP = 0x2000;

/* The ready mask of `fd` for `events` right now (poll with a zero timeout): 0 when none. */
static inline int ckeel_poll_now(int fd, short events) {
    struct pollfd p = { .fd = fd, .events = events, .revents = 0 };
    int rc = poll(&p, 1, 0);
    return rc > 0 ? p.revents : (rc < 0 ? -errno : 0);
}

static const uint32_t CKEEL_EPOLLPRI = EPOLLPRI;

static inline size_t ckeel_recvmsg_out_size(void) { return sizeof(struct io_uring_recvmsg_out); }

/* Fills the io_uring_recvmsg_out header at `buffer` (the epoll backend produces the same layout). */
static inline void ckeel_recvmsg_out_write(void *buffer, uint32_t namelen, uint32_t controllen, uint32_t payloadlen,
                                           uint32_t flags) {
    struct io_uring_recvmsg_out *out = (struct io_uring_recvmsg_out *)buffer;
    out->namelen = namelen;
    out->controllen = controllen;
    out->payloadlen = payloadlen;
    out->flags = flags;
}

static inline uint32_t ckeel_recvmsg_out_namelen(const void *buffer) { return ((const struct io_uring_recvmsg_out *)buffer)->namelen; }
static inline uint32_t ckeel_recvmsg_out_controllen(const void *buffer) { return ((const struct io_uring_recvmsg_out *)buffer)->controllen; }
static inline uint32_t ckeel_recvmsg_out_payloadlen(const void *buffer) { return ((const struct io_uring_recvmsg_out *)buffer)->payloadlen; }
static inline uint32_t ckeel_recvmsg_out_flags(const void *buffer) { return ((const struct io_uring_recvmsg_out *)buffer)->flags; }

static const uint32_t CKEEL_MSG_TRUNC = MSG_TRUNC;
static const uint32_t CKEEL_MSG_NOSIGNAL = MSG_NOSIGNAL;
static const uint32_t CKEEL_MSG_OOB = MSG_OOB;
static const int CKEEL_SOCK_STREAM = SOCK_STREAM;
static const int CKEEL_SOCK_DGRAM = SOCK_DGRAM;
static const int CKEEL_SOCK_NONBLOCK_CLOEXEC = SOCK_NONBLOCK | SOCK_CLOEXEC;

/* accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC (accept4 needs _GNU_SOURCE: defined in shim.c). */
int ckeel_accept4(int fd);

/* Socket calls on the hot path, made with syscall() instead of glibc's wrappers: those are thread
   cancellation points and switch asynchronous cancellation on and off around every call, which
   measured about 1 % of a busy I/O thread's CPU. Keel never cancels threads. Same convention as
   libc: -1 with errno set on failure. */
static inline ssize_t ckeel_sendmsg(int fd, const struct msghdr *msg, int flags) {
    return syscall(__NR_sendmsg, fd, msg, flags);
}
static inline ssize_t ckeel_recvmsg(int fd, struct msghdr *msg, int flags) {
    return syscall(__NR_recvmsg, fd, msg, flags);
}
static inline ssize_t ckeel_recv(int fd, void *buffer, size_t length, int flags) {
    return syscall(__NR_recvfrom, fd, buffer, length, flags, NULL, NULL);
}
static inline ssize_t ckeel_send(int fd, const void *buffer, size_t length, int flags) {
    return syscall(__NR_sendto, fd, buffer, length, flags, NULL, 0);
}
/* close(2) without the cancellation toggling (once per connection on epoll: ~60 instructions). */
static inline int ckeel_close(int fd) {
    return (int)syscall(__NR_close, fd);
}

/* The kernel's struct mmsghdr (glibc declares it only under _GNU_SOURCE). */
struct ckeel_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

/* sendmmsg(2): up to `count` messages in one call; returns how many were sent (-1 + errno when the
   first failed). */
static inline int ckeel_sendmmsg(int fd, struct ckeel_mmsghdr *messages, unsigned count, int flags) {
    return (int)syscall(__NR_sendmmsg, fd, messages, count, flags);
}

/* recvmmsg(2) without a timeout: up to `count` datagrams in one call; returns how many arrived (-1 +
   errno when none). */
static inline int ckeel_recvmmsg(int fd, struct ckeel_mmsghdr *messages, unsigned count, int flags) {
    return (int)syscall(__NR_recvmmsg, fd, messages, count, flags, NULL);
}

/* ---- UDP segmentation offload (GSO) ---- */

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

/* Control space one UDP_SEGMENT message needs. */
static inline size_t ckeel_udp_segment_control_size(void) { return CMSG_SPACE(sizeof(uint16_t)); }

/* Puts a UDP_SEGMENT control message asking for `segment`-byte datagrams into `control` (at least
   ckeel_udp_segment_control_size() bytes) and points `msg` at it. */
static inline void ckeel_set_udp_segment(struct msghdr *msg, void *control, uint16_t segment) {
    memset(control, 0, CMSG_SPACE(sizeof(uint16_t)));
    msg->msg_control = control;
    msg->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(msg);
    cmsg->cmsg_level = SOL_UDP;
    cmsg->cmsg_type = UDP_SEGMENT;
    cmsg->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(cmsg), &segment, sizeof(segment));
}

#ifndef UDP_GRO
#define UDP_GRO 104
#endif

/* Control space a received UDP_GRO message needs. */
static inline size_t ckeel_udp_gro_control_size(void) { return CMSG_SPACE(sizeof(int)); }

/* Turns UDP_GRO on for `fd` (0, or -1 + errno). */
static inline int ckeel_enable_udp_gro(int fd) {
    int one = 1;
    return setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one));
}

/* The segment size of a coalesced run from the UDP_GRO control message among `length` bytes of control
   messages at `control`, or 0 when there is none (a single datagram). */
static inline int ckeel_udp_gro_segment_size(void *control, size_t length) {
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_control = control;
    msg.msg_controllen = length;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level == SOL_UDP && cmsg->cmsg_type == UDP_GRO && cmsg->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int size;
            memcpy(&size, CMSG_DATA(cmsg), sizeof(size));
            return size;
        }
    }
    return 0;
}

/* 1 when this kernel has UDP_GRO, else 0. */
static inline int ckeel_udp_gro_supported(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    int ok = ckeel_enable_udp_gro(fd) == 0;
    close(fd);
    return ok;
}

/* 1 when this kernel has UDP_SEGMENT (a throwaway UDP socket accepts the option), else 0. */
static inline int ckeel_udp_segmentation_supported(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    int zero = 0;
    int ok = setsockopt(fd, SOL_UDP, UDP_SEGMENT, &zero, sizeof(zero)) == 0;
    close(fd);
    return ok;
}

/* ---- Provided buffer rings ---- */

static inline size_t ckeel_buf_ring_entry_size(void) { return sizeof(struct io_uring_buf); }

/* Receive bundles (Linux 6.10; defined here for older headers): one completion for several buffers. */
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)
#endif
static const uint32_t CKEEL_FEAT_RECVSEND_BUNDLE = IORING_FEAT_RECVSEND_BUNDLE;

/* Makes a multishot provided-buffer recv a bundle of at most `max_bytes` per completion: its data may
 * fill several buffers, taken in ring order from the one the CQE names (each full but the last). A
 * multishot recv takes a length (the per-completion cap) from Linux 6.17; earlier ones reject it. */
static inline void ckeel_sqe_recv_bundle(struct io_uring_sqe *sqe, uint32_t max_bytes) {
    sqe->ioprio |= IORING_RECVSEND_BUNDLE;
    sqe->len = max_bytes;
}

/* 1 when the running kernel's version is at least major.minor. */
static inline int ckeel_kernel_at_least(int major, int minor) {
    struct utsname name;
    if (uname(&name) != 0) return 0;
    int kernel_major = 0, kernel_minor = 0;
    if (sscanf(name.release, "%d.%d", &kernel_major, &kernel_minor) != 2) return 0;
    return kernel_major > major || (kernel_major == major && kernel_minor >= minor);
}

/* The buffer id at ring position `position` (wrapping, masked). */
static inline uint16_t ckeel_buf_ring_bid_at(const struct io_uring_buf_ring *br, uint32_t mask, uint32_t position) {
    return br->bufs[position & mask].bid;
}

/* The ring's tail (only the application writes it). */
static inline uint16_t ckeel_buf_ring_tail(const struct io_uring_buf_ring *br) { return br->tail; }

/* Put buffer `bid` at `addr` in slot (tail + offset) & mask; publish later with ckeel_buf_ring_advance. */
static inline void ckeel_buf_ring_add(struct io_uring_buf_ring *br, uint32_t mask, uint16_t offset,
                                      void *addr, uint32_t len, uint16_t bid) {
    struct io_uring_buf *buf = &br->bufs[(br->tail + offset) & mask];
    buf->addr = (uint64_t)(uintptr_t)addr;
    buf->len = len;
    buf->bid = bid;
}

static inline void ckeel_buf_ring_advance(struct io_uring_buf_ring *br, uint16_t count) {
    __atomic_store_n(&br->tail, (uint16_t)(br->tail + count), __ATOMIC_RELEASE);
}

static inline void ckeel_buf_ring_init(struct io_uring_buf_ring *br) { br->tail = 0; }

static inline int ckeel_register_buf_ring(int ring_fd, void *ring_addr, uint32_t entries, uint16_t group) {
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)ring_addr;
    reg.ring_entries = entries;
    reg.bgid = group;
    return ckeel_io_uring_register(ring_fd, IORING_REGISTER_PBUF_RING, &reg, 1);
}

static inline int ckeel_unregister_buf_ring(int ring_fd, uint16_t group) {
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.bgid = group;
    return ckeel_io_uring_register(ring_fd, IORING_UNREGISTER_PBUF_RING, &reg, 1);
}

/* ---- Registered ring descriptor ---- */

/* Registers the ring's own descriptor with the calling thread, so io_uring_enter can name it by index
 * (IORING_ENTER_REGISTERED_RING) and skip the file-table look-up. Only that thread may use the index.
 * Returns the index, or -1 + errno. */
static inline int ckeel_register_ring_fd(int ring_fd) {
    struct io_uring_rsrc_update update;
    memset(&update, 0, sizeof(update));
    update.offset = (uint32_t)-1;  /* any free slot */
    update.data = (uint64_t)ring_fd;
    int rc = ckeel_io_uring_register(ring_fd, IORING_REGISTER_RING_FDS, &update, 1);
    if (rc != 1) { if (rc >= 0) errno = EINVAL; return -1; }
    return (int)update.offset;
}

/* Drops a registration made by ckeel_register_ring_fd on the calling thread. */
static inline int ckeel_unregister_ring_fd(int ring_fd, int index) {
    struct io_uring_rsrc_update update;
    memset(&update, 0, sizeof(update));
    update.offset = (uint32_t)index;
    return ckeel_io_uring_register(ring_fd, IORING_UNREGISTER_RING_FDS, &update, 1);
}

/* ---- Registered (fixed) file table ---- */

/* Registers an empty resource table (`opcode`: IORING_REGISTER_FILES2 or IORING_REGISTER_BUFFERS2) of
 * `count` slots. Returns 0, or -1 + errno (EINVAL on kernels without sparse tables). */
static inline int ckeel_register_sparse_table(int ring_fd, unsigned opcode, uint32_t count) {
    struct io_uring_rsrc_register reg;
    memset(&reg, 0, sizeof(reg));
    reg.nr = count;
    reg.flags = IORING_RSRC_REGISTER_SPARSE;
    return ckeel_io_uring_register(ring_fd, opcode, &reg, sizeof(reg));
}

/* Registers an empty file table of `count` slots, filled later by ckeel_sqe_files_update. Returns 0, or
 * -1 + errno (EMFILE over RLIMIT_NOFILE, EINVAL on kernels without sparse tables). */
static inline int ckeel_register_files_sparse(int ring_fd, uint32_t count) {
    return ckeel_register_sparse_table(ring_fd, IORING_REGISTER_FILES2, count);
}

/* Sets file-table slots `offset`..`offset + count - 1` to the descriptors at `fds` (-1 empties a slot).
 * The kernel reads `fds` when it issues the SQE, which it does during the submitting io_uring_enter,
 * in submission order: SQEs queued after this one may name the slots with IOSQE_FIXED_FILE. */
static inline void ckeel_sqe_files_update(struct io_uring_sqe *sqe, const int32_t *fds, uint32_t count, uint32_t offset,
                                          uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_FILES_UPDATE, -1, (uint64_t)(uintptr_t)fds, count, offset, user_data);
}

/* Makes a prepared SQE name its `fd` as a slot of the registered file table. */
static inline void ckeel_sqe_use_fixed_file(struct io_uring_sqe *sqe) { sqe->flags |= IOSQE_FIXED_FILE; }

/* ---- Direct descriptors (sockets that live only in the registered file table) ---- */

/* IORING_OP_FIXED_FD_INSTALL (Linux 6.8), newer than some installed headers. */
static const uint8_t CKEEL_OP_FIXED_FD_INSTALL = 54;

/* Accepts into a free slot of the registered file table (IORING_FILE_INDEX_ALLOC, Linux 5.19): the
 * completion's result is the slot, and the process's descriptor table is not touched. -ENFILE when
 * the table is full. Non-blocking, so that an ordinary descriptor installed for it later (below) is
 * too; the kernel refuses SOCK_CLOEXEC here (the install sets close-on-exec). */
static inline void ckeel_sqe_accept_direct(struct io_uring_sqe *sqe, int fd, int multishot, uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_ACCEPT, fd, 0, 0, 0, user_data);
    sqe->accept_flags = SOCK_NONBLOCK;
    sqe->file_index = IORING_FILE_INDEX_ALLOC;
    if (multishot) sqe->ioprio |= IORING_ACCEPT_MULTISHOT;
}

/* Closes the direct descriptor in `slot` and frees the slot (the kernel wants fd 0 and slot + 1). */
static inline void ckeel_sqe_close_direct(struct io_uring_sqe *sqe, uint32_t slot, uint64_t user_data) {
    ckeel_sqe_prep(sqe, IORING_OP_CLOSE, 0, 0, 0, 0, user_data);
    sqe->file_index = slot + 1;
}

/* Gives the direct descriptor in `slot` an ordinary descriptor too (close-on-exec): the completion's
 * result. The kernel completes it while submitting. */
static inline void ckeel_sqe_install_direct(struct io_uring_sqe *sqe, uint32_t slot, uint64_t user_data) {
    ckeel_sqe_prep(sqe, CKEEL_OP_FIXED_FD_INSTALL, (int)slot, 0, 0, 0, user_data);
    sqe->flags |= IOSQE_FIXED_FILE;
}

/* ---- Registered (fixed) buffers ---- */

/* Registers an empty buffer table of `count` slots, filled later by ckeel_register_buffer. Returns 0,
 * or -1 + errno (EINVAL on kernels without sparse tables). */
static inline int ckeel_register_buffers_sparse(int ring_fd, uint32_t count) {
    return ckeel_register_sparse_table(ring_fd, IORING_REGISTER_BUFFERS2, count);
}

/* Puts `length` bytes at `base` in buffer-table slot `slot`: the kernel pins the pages (and charges
 * them to RLIMIT_MEMLOCK without CAP_IPC_LOCK) until the slot is replaced or the ring closes.
 * Synchronous. Returns 0, or -1 + errno (ENOMEM past the memlock limit). */
static inline int ckeel_register_buffer(int ring_fd, uint32_t slot, void *base, size_t length) {
    struct iovec vector = { .iov_base = base, .iov_len = length };
    struct io_uring_rsrc_update2 update;
    memset(&update, 0, sizeof(update));
    update.offset = slot;
    update.data = (uint64_t)(uintptr_t)&vector;
    update.nr = 1;
    int rc = ckeel_io_uring_register(ring_fd, IORING_REGISTER_BUFFERS_UPDATE, &update, sizeof(update));
    return rc < 0 ? rc : 0;
}

/* Makes a prepared zero-copy send read its memory through buffer-table slot `slot` (every iovec must
 * lie inside that slot's memory; vectored sends need Linux 6.15): the kernel skips pinning the pages
 * for each send. */
static inline void ckeel_sqe_use_fixed_buffer(struct io_uring_sqe *sqe, uint16_t slot) {
    sqe->ioprio |= IORING_RECVSEND_FIXED_BUF;
    sqe->buf_index = slot;
}

/* The soft RLIMIT_NOFILE, or -1. */
static inline long ckeel_descriptor_limit(void) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
    return limit.rlim_cur == RLIM_INFINITY ? (long)1 << 30 : (long)limit.rlim_cur;
}

/* ---- Opcode probe ---- */

/* Returns 1 if `opcode` is supported by the ring, 0 if not, -1 + errno if the probe failed. */
static inline int ckeel_probe_opcode(int ring_fd, uint8_t opcode) {
    size_t size = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = (struct io_uring_probe *)calloc(1, size);
    if (!probe) { errno = ENOMEM; return -1; }
    int rc = ckeel_io_uring_register(ring_fd, IORING_REGISTER_PROBE, probe, 256);
    if (rc < 0) { int e = errno; free(probe); errno = e; return -1; }
    int supported = opcode <= probe->last_op && (probe->ops[opcode].flags & IO_URING_OP_SUPPORTED) != 0;
    free(probe);
    return supported;
}

/* ---- epoll (struct epoll_event is packed on x86_64: accessors keep Swift away from its layout) ---- */

static inline size_t ckeel_epoll_event_size(void) { return sizeof(struct epoll_event); }

static inline int ckeel_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

static inline int ckeel_epoll_wait(int epfd, void *events, int max, int timeout_ms) {
    return (int)syscall(__NR_epoll_pwait, epfd, (struct epoll_event *)events, max, timeout_ms, NULL, _NSIG / 8);
}

static inline uint32_t ckeel_epoll_event_events(const void *events, int index) {
    return ((const struct epoll_event *)events)[index].events;
}

static inline uint64_t ckeel_epoll_event_data(const void *events, int index) {
    return ((const struct epoll_event *)events)[index].data.u64;
}

/* ---- threads ---- */

typedef void *(*ckeel_thread_entry)(void *);

static inline int ckeel_thread_create(pthread_t *thread, ckeel_thread_entry entry, void *context) {
    return pthread_create(thread, NULL, entry, context);
}

/* Names the calling thread (truncated to 15 bytes). Defined in shim.c, which has _GNU_SOURCE. */
void ckeel_thread_set_name(const char *name);

/* pipe2(2), which needs _GNU_SOURCE. Defined in shim.c. */
int ckeel_pipe2(int fds[2], int flags);

static inline uint64_t ckeel_thread_id(void) { return (uint64_t)syscall(SYS_gettid); }

/* The IOThread bound to the calling OS thread (opaque), or NULL: one TLS slot shared by all of Keel,
   defined in shim.c. Read inline: the write path checks its thread on every call. */
extern __thread void *ckeel_current_io_thread_slot;
static inline void *ckeel_current_io_thread(void) { return ckeel_current_io_thread_slot; }
void ckeel_set_current_io_thread(void *thread);

/* A number unique to the calling OS thread while it runs (the address of its TLS slot): an inline
   stand-in for pthread_self() and pthread_equal(), which are calls into libc. */
static inline uintptr_t ckeel_thread_identity(void) { return (uintptr_t)&ckeel_current_io_thread_slot; }

#endif /* CKEEL_LINUX_H */
