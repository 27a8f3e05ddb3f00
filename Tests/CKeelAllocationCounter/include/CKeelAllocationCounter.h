/*
 * Counts heap allocations per thread by interposing malloc/calloc/realloc/posix_memalign/aligned_alloc
 * in the test executable (they forward to glibc's __libc_* entry points). Test-only: never linked
 * into the library.
 */
#ifndef CKEEL_ALLOCATION_COUNTER_H
#define CKEEL_ALLOCATION_COUNTER_H
#include <stdint.h>

/* Allocations made by the calling thread since it started. */
uint64_t ckeel_thread_allocations(void);
/* Allocations made by all threads since the process started. */
uint64_t ckeel_total_allocations(void);
/* Debugging aid: while on, every allocation on the calling thread prints a backtrace to stderr. */
void ckeel_allocation_trace(int on);
/* 1 when the interposer is active in this process. */
int ckeel_allocation_counter_active(void);

#endif
