/* Per-request memory: a bump arena that doubles as a ProtobufCAllocator, freed at once when
 * the reply is sent (PostgreSQL memory contexts in miniature). Not thread-safe. */
#ifndef EXTRANET_ARENA_H
#define EXTRANET_ARENA_H
#include "extranet/common.h"
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct arena arena_t;

arena_t *arena_new(size_t limit);            /* limit: total bytes it may hand out; NULL on OOM */
void arena_destroy(arena_t **self_p);        /* NULL-safe; frees every block */
void arena_reset(arena_t *self);             /* frees all but the first block for reuse */
void *arena_alloc(arena_t *self, size_t n);  /* 16-aligned; NULL past the limit or on OOM */
char *arena_strdup(arena_t *self, const char *s);
char *arena_printf(arena_t *self, const char *fmt, ...) PRINTF_LIKE(2, 3);
/* A ProtobufCAllocator that allocates from this arena (free is a no-op). Borrowed. */
ProtobufCAllocator *arena_allocator(arena_t *self);
#endif
