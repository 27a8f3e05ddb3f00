/*
 * A minimal single-threaded C io_uring echo server: the lower bound Keel is compared against.
 * Multishot accept, multishot recv from a provided buffer ring, one send per received buffer (the
 * buffer goes back to the ring when the send completes). Raw syscalls through Keel's CKeelLinux.h.
 *
 * With --incremental, the provided-buffer ring is consumed incrementally (IOU_PBUF_RING_INC, Linux
 * 6.12): each receive takes only the bytes it needs from the head buffer, which keeps serving receives
 * (of any connection) until it is full; a buffer goes back to the ring once the kernel is done with it
 * and every send from it has completed. Measured against the default to decide whether Keel adopts it.
 *
 * With --direct, sockets are direct descriptors (Linux 6.0): multishot accept installs each connection
 * in a free slot of the ring's sparse file table (IORING_FILE_INDEX_ALLOC) and never in the process's
 * descriptor table; receives and sends name the slot (IOSQE_FIXED_FILE), and IORING_OP_CLOSE frees it.
 * TCP_NODELAY is set on the listener and inherited. Measured against the default to decide whether
 * Keel accepts into slots.
 *
 *   cc -O2 -I ../../Sources/CKeelLinux/include echo.c ../../Sources/CKeelLinux/shim.c -o c-uring-echo
 *   ./c-uring-echo [port] [--incremental | --direct]   prints "listening on 127.0.0.1:PORT"
 */
#define _GNU_SOURCE 1
#include "CKeelLinux.h"
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/resource.h>

enum { ENTRIES = 4096, BUFFERS = 4096, BUFSIZE = 16384, GROUP = 1 };
enum { KIND_ACCEPT = 1, KIND_RECV = 2, KIND_SEND = 3 };
enum { PBUF_RING_INCREMENTAL = 2 };             /* IOU_PBUF_RING_INC */
enum { CQE_BUFFER_MORE = 1U << 4 };             /* IORING_CQE_F_BUF_MORE */

/* Incremental mode: per buffer, the bytes the kernel has filled, the sends still reading it, and whether
 * the kernel is done with it. */
static int incremental;
static int direct;
static uint32_t filled[BUFFERS], sends_pending[BUFFERS];
static uint8_t kernel_done[BUFFERS];

static int ring_fd;
static struct io_uring_sqe *sqes;
static unsigned *sq_tail, *sq_head, sq_mask, *cq_head, *cq_tail, cq_mask, local_tail;
static struct io_uring_cqe *cqes;
static struct io_uring_buf_ring *buf_ring;
static char *buffers;
static volatile sig_atomic_t stopping = 0;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static uint64_t token(int kind, int fd, int bid) { return ((uint64_t)kind << 56) | ((uint64_t)(uint16_t)bid << 32) | (uint32_t)fd; }

static struct io_uring_sqe *get_sqe(void) {
    if (local_tail - ckeel_load_acquire(sq_head) >= ENTRIES) {
        ckeel_store_release(sq_tail, local_tail);
        ckeel_io_uring_enter(ring_fd, local_tail - *sq_head, 0, 0, NULL, 0);
    }
    return &sqes[local_tail++ & sq_mask];
}

/* A multishot receive on connection `fd` (in direct mode a file-table slot, which the SQE names as one). */
static void queue_recv(int fd) {
    struct io_uring_sqe *sqe = get_sqe();
    ckeel_sqe_recv_multishot(sqe, fd, GROUP, token(KIND_RECV, fd, 0));
    if (direct) sqe->flags |= IOSQE_FIXED_FILE;
}

static void queue_send(int fd, const void *bytes, uint32_t length, int bid) {
    struct io_uring_sqe *sqe = get_sqe();
    ckeel_sqe_send(sqe, fd, bytes, length, MSG_NOSIGNAL, token(KIND_SEND, fd, bid));
    if (direct) sqe->flags |= IOSQE_FIXED_FILE;
}

static void queue_accept(int listener) {
    struct io_uring_sqe *sqe = get_sqe();
    ckeel_sqe_accept(sqe, listener, 1, token(KIND_ACCEPT, listener, 0));
    if (direct) {
        sqe->accept_flags = 0;  /* neither flag applies to a direct descriptor (CLOEXEC is refused) */
        sqe->file_index = IORING_FILE_INDEX_ALLOC;
    }
}

static void recycle(int bid) {
    ckeel_buf_ring_add(buf_ring, BUFFERS - 1, 0, buffers + (size_t)bid * BUFSIZE, BUFSIZE, (uint16_t)bid);
    ckeel_buf_ring_advance(buf_ring, 1);
}

/* Incremental mode: a send from `bid` completed, or the kernel finished with it. */
static void release_incremental(int bid) {
    if (kernel_done[bid] && sends_pending[bid] == 0) {
        kernel_done[bid] = 0;
        filled[bid] = 0;
        recycle(bid);
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 7007;
    incremental = argc > 2 && strcmp(argv[2], "--incremental") == 0;
    direct = argc > 2 && strcmp(argv[2], "--direct") == 0;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    p.cq_entries = ENTRIES * 4;
    ring_fd = ckeel_io_uring_setup(ENTRIES, &p);
    if (ring_fd < 0) { perror("io_uring_setup"); return 1; }
    size_t ring_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (cq_size > ring_size) ring_size = cq_size;
    char *ring = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQ_RING);
    sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                ring_fd, IORING_OFF_SQES);
    sq_head = (unsigned *)(ring + p.sq_off.head);
    sq_tail = (unsigned *)(ring + p.sq_off.tail);
    sq_mask = *(unsigned *)(ring + p.sq_off.ring_mask);
    unsigned *array = (unsigned *)(ring + p.sq_off.array);
    for (unsigned i = 0; i < p.sq_entries; i++) array[i] = i;
    cq_head = (unsigned *)(ring + p.cq_off.head);
    cq_tail = (unsigned *)(ring + p.cq_off.tail);
    cq_mask = *(unsigned *)(ring + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(ring + p.cq_off.cqes);
    local_tail = *sq_tail;

    buf_ring = mmap(NULL, BUFFERS * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    buffers = mmap(NULL, (size_t)BUFFERS * BUFSIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ckeel_buf_ring_init(buf_ring);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)buf_ring;
    reg.ring_entries = BUFFERS;
    reg.bgid = GROUP;
    reg.pad = incremental ? PBUF_RING_INCREMENTAL : 0;  /* the flags field in newer headers */
    if (ckeel_io_uring_register(ring_fd, IORING_REGISTER_PBUF_RING, &reg, 1) != 0) { perror("register buf ring"); return 1; }
    for (int i = 0; i < BUFFERS; i++) ckeel_buf_ring_add(buf_ring, BUFFERS - 1, (uint16_t)i, buffers + (size_t)i * BUFSIZE, BUFSIZE, (uint16_t)i);
    ckeel_buf_ring_advance(buf_ring, BUFFERS);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (direct) {
        setsockopt(listener, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct rlimit limit;  /* the table may be as large as the descriptor limit */
        getrlimit(RLIMIT_NOFILE, &limit);
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
        if (ckeel_register_files_sparse(ring_fd, (uint32_t)limit.rlim_cur) != 0) { perror("register files"); return 1; }
    }
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(listener, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(listener, 4096) != 0) { perror("bind/listen"); return 1; }
    socklen_t len = sizeof(addr);
    getsockname(listener, (struct sockaddr *)&addr, &len);
    printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    queue_accept(listener);
    while (!stopping) {
        ckeel_store_release(sq_tail, local_tail);
        int rc = ckeel_io_uring_enter(ring_fd, local_tail - ckeel_load_acquire(sq_head), 1, IORING_ENTER_GETEVENTS, NULL, 0);
        if (rc < 0 && errno != EINTR && errno != EBUSY && errno != EAGAIN && errno != ETIME) { perror("enter"); break; }
        unsigned head = *cq_head, tail = ckeel_load_acquire(cq_tail);
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &cqes[head & cq_mask];
            int kind = (int)(cqe->user_data >> 56), fd = (int)(uint32_t)cqe->user_data;
            int res = cqe->res;
            if (kind == KIND_ACCEPT) {
                if (res >= 0) {
                    if (!direct) setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    queue_recv(res);
                }
                if (!(cqe->flags & IORING_CQE_F_MORE)) queue_accept(listener);
            } else if (kind == KIND_RECV) {
                if (res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
                    int bid = (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
                    uint32_t offset = 0;
                    if (incremental) {
                        offset = filled[bid];
                        filled[bid] += (uint32_t)res;
                        sends_pending[bid]++;
                        if (!(cqe->flags & CQE_BUFFER_MORE)) kernel_done[bid] = 1;
                    }
                    queue_send(fd, buffers + (size_t)bid * BUFSIZE + offset, (uint32_t)res, bid);
                    if (!(cqe->flags & IORING_CQE_F_MORE)) queue_recv(fd);
                } else if (res == -ENOBUFS) {
                    queue_recv(fd);
                } else if (res <= 0 && !(cqe->flags & IORING_CQE_F_MORE)) {
                    if (direct) {
                        struct io_uring_sqe *sqe = get_sqe();
                        ckeel_sqe_close(sqe, 0, 0);  /* fd 0 with a slot: the kernel insists */
                        sqe->file_index = (uint32_t)fd + 1;
                    } else {
                        close(fd);
                    }
                }
            } else if (kind == KIND_SEND) {
                int bid = (int)(uint16_t)(cqe->user_data >> 32);
                if (incremental) {
                    sends_pending[bid]--;
                    release_incremental(bid);
                } else {
                    recycle(bid);
                }  /* short sends are not resumed: a lower bound, not a product */
            }
        }
        ckeel_store_release(cq_head, head);
    }
    close(listener);
    close(ring_fd);
    return 0;
}
