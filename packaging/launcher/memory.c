/* The memory of a call of the six names that Python answers (main.c installs it before Python
 * starts; the verbs, and callers with an address-space limit, keep CPython's own).
 *
 * Such a call lives a few milliseconds and ends in execv, yet musl's allocator maps and unmaps a
 * small group for about every hundred blocks Python asks of it (110 mmap and 45 munmap before the
 * real binary), and every page Python touches is a fault of its own. Instead:
 *
 * - Python's raw allocator takes blocks from one region, mapped once, handed out in order and never
 *   reused: freed blocks are left where they are (the execv frees them all). A block's size sits in
 *   front of it, for realloc. When the region is used up, libc's malloc serves as before.
 * - Memory the call is known to write is asked of the kernel in one go (MADV_POPULATE_WRITE, Linux
 *   5.14; older kernels refuse it and fault page by page as before): a fault per 4 KiB page costs
 *   about 0.8 us here, populating 0.3 us. A netns's first call writes 1.2 MiB of the region, fills
 *   pymalloc's first 1 MiB arena and a quarter of its second, and writes nearly every page of the
 *   executable's data (reference counts of the interpreter's static objects: 178 of 190 pages);
 *   the rest of each faults on demand.
 *
 * tests/croute/memory_test.c runs these under AddressSanitizer and UndefinedBehaviorSanitizer. */

#define _GNU_SOURCE /* dl_iterate_phdr, with glibc (the tests) */
#include "memory.h"

#include <link.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define REGION_ALIGN 16u           /* malloc's alignment on x86-64 and arm64; also the header's size */
#define REGION_POPULATE (1u << 20) /* of the region, populated when mapped */

static char *region_start;
static size_t region_used; /* bytes handed out, or asked for past the end */
static size_t arena_budget = (5u << 20) / 4;

int region_map(void)
{
    void *p = mmap(NULL, REGION_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    region_start = p;
    (void)madvise(p, REGION_POPULATE, MADV_POPULATE_WRITE); /* refused: faults as they come */
    return 0;
}

int region_contains(const void *p)
{
    return region_start && (uintptr_t)p - (uintptr_t)region_start < REGION_SIZE;
}

void *region_malloc(void *ctx, size_t size)
{
    (void)ctx;
    if (region_start && size <= REGION_SIZE / 2) {
        size_t need = (size + REGION_ALIGN - 1) / REGION_ALIGN * REGION_ALIGN + REGION_ALIGN;
        size_t at = __atomic_fetch_add(&region_used, need, __ATOMIC_RELAXED);
        if (at <= REGION_SIZE - need) {
            memcpy(region_start + at, &size, sizeof size);
            return region_start + at + REGION_ALIGN;
        }
    }
    return malloc(size ? size : 1);
}

void *region_calloc(void *ctx, size_t nelem, size_t elsize)
{
    if (elsize && nelem > SIZE_MAX / elsize)
        return NULL;
    void *p = region_malloc(ctx, nelem * elsize);
    if (p && !region_contains(p))
        memset(p, 0, nelem * elsize);
    return p; /* the region's pages come zeroed from the kernel and are given out once */
}

void *region_realloc(void *ctx, void *p, size_t size)
{
    if (!p)
        return region_malloc(ctx, size);
    if (!region_contains(p))
        return realloc(p, size ? size : 1);
    size_t had;
    memcpy(&had, (char *)p - REGION_ALIGN, sizeof had);
    if (size <= had)
        return p;
    void *moved = region_malloc(ctx, size);
    if (moved)
        memcpy(moved, p, had);
    return moved;
}

void region_free(void *ctx, void *p)
{
    (void)ctx;
    if (p && !region_contains(p))
        free(p);
}

/* pymalloc's arenas, mapped as CPython maps them, populated while the budget lasts. */
void *arena_map(void *ctx, size_t size)
{
    (void)ctx;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    size_t populate = size < arena_budget ? size : arena_budget;
    if (populate && madvise(p, populate, MADV_POPULATE_WRITE) == 0)
        arena_budget -= populate;
    return p;
}

void arena_unmap(void *ctx, void *p, size_t size)
{
    (void)ctx;
    munmap(p, size);
}

static int populate_writable(struct dl_phdr_info *info, size_t size, void *unused)
{
    (void)size, (void)unused;
    long page = sysconf(_SC_PAGESIZE);
    for (int i = 0; page > 0 && i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_W) || ph->p_filesz == 0)
            continue;
        uintptr_t start = info->dlpi_addr + ph->p_vaddr, end = start + ph->p_filesz;
        start &= ~(uintptr_t)(page - 1);
        (void)madvise((void *)start, end - start, MADV_POPULATE_WRITE); /* refused: faults as they come */
    }
    return 1; /* the first object is the executable, the only one of a static build */
}

/* The executable's initialised data (not its bss, which a call mostly leaves untouched). */
void populate_data(void)
{
    dl_iterate_phdr(populate_writable, NULL);
}
