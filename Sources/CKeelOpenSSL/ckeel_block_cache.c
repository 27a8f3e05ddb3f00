// OpenSSL's allocations routed through a per-thread cache of small blocks.
//
// OpenSSL 3.0 allocates and frees a few 40-byte packet-writer structures for every TLS record it
// seals or opens (WPACKET sub-packets), which would cost the I/O thread a malloc/free pair per
// record. Blocks of up to SMALL_BLOCK bytes freed by OpenSSL go onto the freeing thread's cache and
// come back from it, so the steady state of a connection calls malloc not at all; larger blocks go
// straight to malloc. Each block carries a 16-byte header with its size (keeping malloc's alignment).
#include "ckeel_openssl.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define KEEL_SANITIZED 1
#endif
#endif

enum { SMALL_BLOCK = 64, CACHE_LIMIT = 1024 };

typedef union keel_block_header {
    size_t size;
    max_align_t alignment;
} keel_block_header;

typedef struct keel_free_block {
    struct keel_free_block *next;
} keel_free_block;

static __thread keel_free_block *cache_head;
static __thread int cache_count;
static __thread int cache_registered;
static pthread_key_t cache_key;
static pthread_once_t cache_key_once = PTHREAD_ONCE_INIT;

/// A thread's cache goes back to malloc when the thread ends.
static void keel_cache_drain(void *unused) {
    (void)unused;
    while (cache_head) {
        keel_free_block *block = cache_head;
        cache_head = block->next;
        free((keel_block_header *)block - 1);
    }
    cache_count = 0;
}

static void keel_make_cache_key(void) { pthread_key_create(&cache_key, keel_cache_drain); }

static void *keel_block_malloc(size_t size, const char *file, int line) {
    (void)file;
    (void)line;
    if (size <= SMALL_BLOCK && cache_head) {
        keel_free_block *block = cache_head;
        cache_head = block->next;
        cache_count -= 1;
        keel_block_header *header = (keel_block_header *)block - 1;
        header->size = size;
        return block;
    }
    keel_block_header *header = malloc(sizeof(keel_block_header) + (size <= SMALL_BLOCK ? SMALL_BLOCK : size));
    if (!header) return NULL;
    header->size = size;
    return header + 1;
}

static void keel_block_free(void *pointer, const char *file, int line) {
    (void)file;
    (void)line;
    if (!pointer) return;
    keel_block_header *header = (keel_block_header *)pointer - 1;
    if (header->size <= SMALL_BLOCK && cache_count < CACHE_LIMIT) {
        if (!cache_registered) {
            // The key's destructor runs only for threads that set a value: register once per thread.
            pthread_once(&cache_key_once, keel_make_cache_key);
            pthread_setspecific(cache_key, &cache_registered);
            cache_registered = 1;
        }
        keel_free_block *block = pointer;
        block->next = cache_head;
        cache_head = block;
        cache_count += 1;
        return;
    }
    free(header);
}

static void *keel_block_realloc(void *pointer, size_t size, const char *file, int line) {
    if (!pointer) return keel_block_malloc(size, file, line);
    keel_block_header *header = (keel_block_header *)pointer - 1;
    size_t old = header->size;
    if (old <= SMALL_BLOCK && size <= SMALL_BLOCK) {
        header->size = size;  // a small block always has SMALL_BLOCK bytes of room
        return pointer;
    }
    if (old > SMALL_BLOCK && size > SMALL_BLOCK) {
        keel_block_header *moved = realloc(header, sizeof(keel_block_header) + size);
        if (!moved) return NULL;
        moved->size = size;
        return moved + 1;
    }
    void *fresh = keel_block_malloc(size, file, line);
    if (!fresh) return NULL;
    memcpy(fresh, pointer, old < size ? old : size);
    keel_block_free(pointer, file, line);
    return fresh;
}

static int keel_cache_installed;
static pthread_once_t keel_prepare_once = PTHREAD_ONCE_INIT;

static void keel_prepare(void) {
#ifndef KEEL_SANITIZED
    // Succeeds only before OpenSSL's first allocation in this process; otherwise OpenSSL keeps malloc.
    keel_cache_installed = CRYPTO_set_mem_functions(keel_block_malloc, keel_block_realloc, keel_block_free);
#endif
    OPENSSL_init_ssl(0, NULL);
}

int ckeel_openssl_prepare(void) {
    pthread_once(&keel_prepare_once, keel_prepare);
    return keel_cache_installed;
}
