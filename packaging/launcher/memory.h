/* The memory of a call of the six names that Python answers (memory.c): a region for Python's raw
 * allocator, populated arenas for pymalloc, and the executable's data populated at once. */
#ifndef IPTABLES_SHIM_MEMORY_H
#define IPTABLES_SHIM_MEMORY_H

#include <stddef.h>

#define REGION_SIZE (4u << 20) /* a netns's first call uses 1.2 MiB of it */

int region_map(void);           /* 0: mapped, the region_* functions serve from it */
int region_contains(const void *p);
void *region_malloc(void *ctx, size_t size);
void *region_calloc(void *ctx, size_t nelem, size_t elsize);
void *region_realloc(void *ctx, void *p, size_t size);
void region_free(void *ctx, void *p);

void *arena_map(void *ctx, size_t size);
void arena_unmap(void *ctx, void *p, size_t size);

void populate_data(void);

#endif
