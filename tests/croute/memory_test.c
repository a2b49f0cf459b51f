/* packaging/launcher/memory.c under AddressSanitizer and UndefinedBehaviorSanitizer
 * (tests/test_launcher_memory.py): the raw allocator's region, its fallback to libc once used up,
 * and the populated arenas. Prints "ok" or exits non-zero naming the check that failed. */

#include "memory.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                        \
    do {                                                                \
        if (!(c)) {                                                     \
            fprintf(stderr, "memory_test.c:%d: %s\n", __LINE__, #c);    \
            exit(1);                                                    \
        }                                                               \
    } while (0)

static int aligned(const void *p)
{
    return (uintptr_t)p % 16 == 0;
}

int main(void)
{
    /* before the region is mapped: libc */
    void *early = region_malloc(NULL, 40);
    CHECK(early && !region_contains(early));
    CHECK(region_map() == 0);

    void *zero = region_malloc(NULL, 0);
    CHECK(zero && region_contains(zero) && aligned(zero));

    /* blocks apart from each other, aligned, each its own bytes */
    enum { N = 1000 };
    static unsigned char *blocks[N];
    for (int i = 0; i < N; i++) {
        size_t size = 1 + (size_t)(i * 37) % 600;
        blocks[i] = region_malloc(NULL, size);
        CHECK(blocks[i] && region_contains(blocks[i]) && aligned(blocks[i]));
        memset(blocks[i], i & 0xff, size);
    }
    for (int i = 0; i < N; i++) {
        size_t size = 1 + (size_t)(i * 37) % 600;
        for (size_t k = 0; k < size; k++)
            CHECK(blocks[i][k] == (unsigned char)(i & 0xff));
    }

    /* calloc: zero, in the region or not; an overflowing product refused */
    unsigned char *c = region_calloc(NULL, 100, 7);
    CHECK(c && region_contains(c));
    for (int k = 0; k < 700; k++)
        CHECK(c[k] == 0);
    CHECK(region_calloc(NULL, SIZE_MAX / 2, 3) == NULL);

    /* realloc: grows by copying, shrinks in place, takes NULL and libc's blocks */
    unsigned char *r = region_malloc(NULL, 10);
    memcpy(r, "0123456789", 10);
    unsigned char *grown = region_realloc(NULL, r, 5000);
    CHECK(grown && grown != r && memcmp(grown, "0123456789", 10) == 0);
    CHECK(region_realloc(NULL, grown, 100) == grown);
    CHECK(region_realloc(NULL, grown, 0) == grown);
    void *fresh = region_realloc(NULL, NULL, 64);
    CHECK(fresh && region_contains(fresh));
    char *moved = region_realloc(NULL, early, 4000);
    CHECK(moved && !region_contains(moved));
    region_free(NULL, moved);
    region_free(NULL, NULL);
    region_free(NULL, blocks[0]); /* left where it is */

    /* larger than half the region: libc */
    void *big = region_malloc(NULL, REGION_SIZE / 2 + 1);
    CHECK(big && !region_contains(big));
    region_free(NULL, big);

    /* used up: libc serves, and its blocks are freed to libc */
    int outside = 0;
    for (int i = 0; i < 20000 && outside < 100; i++) {
        void *p = region_malloc(NULL, 1000);
        CHECK(p && aligned(p));
        memset(p, 0xab, 1000);
        if (!region_contains(p)) {
            outside++;
            unsigned char *q = region_realloc(NULL, p, 3000);
            CHECK(q && q[999] == 0xab);
            region_free(NULL, q);
        }
    }
    CHECK(outside == 100);
    unsigned char *after = region_calloc(NULL, 10, 10);
    CHECK(after && !region_contains(after) && after[99] == 0);
    region_free(NULL, after);

    /* arenas: writable, whether populated or not */
    for (int i = 0; i < 3; i++) {
        unsigned char *a = arena_map(NULL, 1u << 20);
        CHECK(a && (uintptr_t)a % 4096 == 0);
        a[0] = 1;
        a[(1u << 20) - 1] = 2;
        arena_unmap(NULL, a, 1u << 20);
    }
    populate_data();
    puts("ok");
    return 0;
}
