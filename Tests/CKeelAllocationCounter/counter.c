#include "CKeelAllocationCounter.h"
#include <errno.h>
#include <stddef.h>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define CKEEL_SANITIZED 1
#endif
#endif

#ifdef CKEEL_SANITIZED
/* Sanitizers interpose malloc themselves: count nothing, and say so. */
uint64_t ckeel_thread_allocations(void) { return 0; }
void ckeel_allocation_trace(int on) { (void)on; }
uint64_t ckeel_total_allocations(void) { return 0; }
int ckeel_allocation_counter_active(void) { return 0; }
#else

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static __thread uint64_t thread_allocations = 0;
static uint64_t total_allocations = 0;


#include <execinfo.h>
static __thread int trace_allocations = 0;
static __thread int tracing = 0;

void ckeel_allocation_trace(int on) { trace_allocations = on; }

static inline void count(void) {
    if (trace_allocations && !tracing) {
        tracing = 1;
        void *frames[24];
        int n = backtrace(frames, 24);
        backtrace_symbols_fd(frames, n, 2);
        tracing = 0;
    }
    thread_allocations++;
    __atomic_fetch_add(&total_allocations, 1, __ATOMIC_RELAXED);
}

void *malloc(size_t size) { count(); return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { count(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { count(); return __libc_realloc(p, size); }
void free(void *p) { __libc_free(p); }

int posix_memalign(void **out, size_t alignment, size_t size) {
    count();
    void *p = __libc_memalign(alignment, size);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t alignment, size_t size) { count(); return __libc_memalign(alignment, size); }
void *memalign(size_t alignment, size_t size) { count(); return __libc_memalign(alignment, size); }

uint64_t ckeel_thread_allocations(void) { return thread_allocations; }
uint64_t ckeel_total_allocations(void) { return __atomic_load_n(&total_allocations, __ATOMIC_RELAXED); }
int ckeel_allocation_counter_active(void) { return 1; }
#endif
