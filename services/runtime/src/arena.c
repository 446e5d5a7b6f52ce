/* Per-request bump allocator: memory comes from a chain of blocks and is released all at once
 * (reset or destroy), so protobuf messages unpacked into it need no *_free_unpacked. The limit
 * bounds what one request may take, whatever the size fields in its bytes claim. */
#include "extranet/arena.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 16
#define ARENA_BLOCK_MIN 4096
#define ARENA_BLOCK_MAX (1024 * 1024)

typedef struct block {
    struct block *next;
    size_t size; /* usable bytes in data[] */
    size_t used;
    _Alignas(ARENA_ALIGN) unsigned char data[];
} block_t;

struct arena {
    block_t *head;  /* current block; older blocks follow */
    block_t *first; /* kept across arena_reset */
    size_t limit;   /* bytes it may hand out in total */
    size_t handed;  /* bytes handed out since the last reset (rounded to ARENA_ALIGN) */
    size_t next_block;
    ProtobufCAllocator pa;
};

static block_t *s_block_new(size_t size) {
    if (size > SIZE_MAX - sizeof(block_t))
        return NULL;
    block_t *b = malloc(sizeof(block_t) + size);
    if (!b)
        return NULL;
    b->next = NULL;
    b->size = size;
    b->used = 0;
    return b;
}

static void *s_pa_alloc(void *data, size_t n) {
    return arena_alloc(data, n);
}

static void s_pa_free(void *data, void *ptr) {
    (void)data;
    (void)ptr; /* freed with the arena */
}

arena_t *arena_new(size_t limit) {
    arena_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    size_t first = limit < ARENA_BLOCK_MIN ? ARENA_BLOCK_MIN : limit;
    if (first > 2 * ARENA_BLOCK_MIN)
        first = 2 * ARENA_BLOCK_MIN;
    self->first = s_block_new(first);
    if (!self->first) {
        free(self);
        return NULL;
    }
    self->head = self->first;
    self->limit = limit;
    self->next_block = 2 * first;
    self->pa.alloc = s_pa_alloc;
    self->pa.free = s_pa_free;
    self->pa.allocator_data = self;
    return self;
}

static void s_free_blocks_except_first(arena_t *self) {
    block_t *b = self->head;
    while (b) {
        block_t *next = b->next;
        if (b != self->first)
            free(b);
        b = next;
    }
}

void arena_destroy(arena_t **self_p) {
    if (!self_p || !*self_p)
        return;
    arena_t *self = *self_p;
    s_free_blocks_except_first(self);
    free(self->first);
    free(self);
    *self_p = NULL;
}

void arena_reset(arena_t *self) {
    if (!self)
        return;
    s_free_blocks_except_first(self);
    self->first->next = NULL;
    self->first->used = 0;
    self->head = self->first;
    self->handed = 0;
    self->next_block = 2 * self->first->size;
}

void *arena_alloc(arena_t *self, size_t n) {
    if (!self)
        return NULL;
    if (n == 0)
        n = 1; /* every call gets a distinct pointer */
    if (n > SIZE_MAX - ARENA_ALIGN)
        return NULL;
    size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (need > self->limit - self->handed)
        return NULL;

    block_t *b = self->head;
    if (b->size - b->used < need) {
        if (need > self->next_block / 4) {
            /* Large: a block of its own behind the current one, which stays current. */
            block_t *big = s_block_new(need);
            if (!big)
                return NULL;
            big->used = need;
            big->next = b->next;
            b->next = big;
            self->handed += need;
            return big->data;
        }
        block_t *nb = s_block_new(self->next_block);
        if (!nb)
            return NULL;
        if (self->next_block < ARENA_BLOCK_MAX)
            self->next_block *= 2;
        nb->next = b;
        self->head = b = nb;
    }
    /* data[] is ARENA_ALIGN-aligned and every size is rounded up, so used stays aligned. */
    void *p = b->data + b->used;
    b->used += need;
    self->handed += need;
    return p;
}

char *arena_strdup(arena_t *self, const char *s) {
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *p = arena_alloc(self, n + 1);
    if (p)
        memcpy(p, s, n + 1);
    return p;
}

char *arena_printf(arena_t *self, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *p = arena_alloc(self, (size_t)n + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

ProtobufCAllocator *arena_allocator(arena_t *self) {
    return self ? &self->pa : NULL;
}
