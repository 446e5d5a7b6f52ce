/* The gateway's JSON <-> protobuf codec (contract in codec.h), driven only by protobuf-c
 * descriptors so a new message type needs no code here. Every value it builds is owned the way
 * protobuf_c_message_free_unpacked() expects, so one call (or dropping the arena) frees it. */
#include "codec.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_PATH_MAX 512
#define S_B64      sodium_base64_VARIANT_ORIGINAL

typedef struct {
    ProtobufCAllocator *alloc;
    codec_error_t *err;
    char path[S_PATH_MAX]; /* dotted path of the field being converted */
    size_t path_len;
} s_ctx_t;

/* The same malloc/free pair protobuf-c uses when free_unpacked() is given a NULL allocator. */
static void *s_sys_alloc(void *data, size_t size) {
    (void)data;
    return malloc(size);
}

static void s_sys_free(void *data, void *ptr) {
    (void)data;
    free(ptr);
}

static ProtobufCAllocator s_sys_allocator = {s_sys_alloc, s_sys_free, NULL};

static ProtobufCAllocator *s_allocator(ProtobufCAllocator *alloc) {
    return alloc ? alloc : &s_sys_allocator;
}

#define S_MEMBER(type, msg, off) (*(type *)(void *)((char *)(msg) + (off)))

/* --- errors and paths ------------------------------------------------------------------- */

/* Copies at most cap-1 bytes of src, never cutting a UTF-8 sequence in half (the error is
 * shown to clients as JSON, which must stay valid UTF-8). */
static void s_copy_utf8(char *dst, size_t cap, const char *src) {
    size_t n = strlen(src);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static int s_fail_rc(s_ctx_t *ctx, int rc, const char *text) {
    if (ctx->err) {
        s_copy_utf8(ctx->err->field, sizeof ctx->err->field, ctx->path);
        s_copy_utf8(ctx->err->text, sizeof ctx->err->text, text);
    }
    return rc;
}

static int s_fail(s_ctx_t *ctx, const char *text) {
    return s_fail_rc(ctx, -EINVAL, text);
}

static int s_oom(s_ctx_t *ctx) {
    return s_fail_rc(ctx, -ENOMEM, "out of memory");
}

/* Appends ".name" (or "name" at the root); returns the length to restore with s_path_pop.
 * A path too long for the buffer is kept truncated, which only shortens error messages. */
static size_t s_path_push_name(s_ctx_t *ctx, const char *name, size_t len) {
    size_t old = ctx->path_len;
    size_t room = S_PATH_MAX - 1 - old; /* bytes left before the NUL */
    if (old > 0 && room > 0) {
        ctx->path[ctx->path_len++] = '.';
        room--;
    }
    if (len > room)
        len = room;
    memcpy(ctx->path + ctx->path_len, name, len);
    ctx->path_len += len;
    ctx->path[ctx->path_len] = '\0';
    return old;
}

static size_t s_path_push_index(s_ctx_t *ctx, size_t index) {
    size_t old = ctx->path_len;
    size_t room = S_PATH_MAX - old;
    int n = snprintf(ctx->path + old, room, "[%zu]", index);
    if (n > 0)
        ctx->path_len = (size_t)n < room ? old + (size_t)n : S_PATH_MAX - 1;
    return old;
}

static void s_path_pop(s_ctx_t *ctx, size_t old) {
    ctx->path_len = old;
    ctx->path[old] = '\0';
}

/* --- text checks ------------------------------------------------------------------------ */

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF. Returns
 * the length of the valid sequence at s (1..4), or 0 when it is invalid. */
static size_t s_utf8_seq(const unsigned char *s, size_t avail) {
    unsigned c = s[0];
    size_t n;
    uint32_t cp, min;
    if (c < 0x80)
        return 1;
    if ((c & 0xE0) == 0xC0) {
        n = 1, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 2, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        n = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (avail - 1 < n)
        return 0;
    for (size_t k = 1; k <= n; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n + 1;
}

static bool s_utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t n = s_utf8_seq(p + i, len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

/* A JSON string for protobuf text that may not be valid UTF-8 (protobuf-c does not check it
 * on unpack): invalid bytes become U+FFFD instead of failing the whole reply. */
static json_t *s_json_text(const char *s) {
    size_t len = strlen(s);
    if (s_utf8_valid(s, len))
        return json_stringn_nocheck(s, len);
    if (len > SIZE_MAX / 3)
        return NULL;
    char *out = malloc(len * 3 + 1);
    if (!out)
        return NULL;
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = s_utf8_seq(p + i, len - i);
        if (n == 0) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        }
    }
    json_t *j = json_stringn_nocheck(out, o);
    free(out);
    return j;
}

/* Decimal integer, optional leading '-' (signed only), digits only: no blanks, no '+', no
 * hex, no trailing bytes — stricter than strtoll alone. */
static int s_parse_int(const char *text, int64_t min, int64_t max, int64_t *ret) {
    const char *p = text[0] == '-' ? text + 1 : text;
    if (*p == '\0')
        return -EINVAL;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9')
            return -EINVAL;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (errno == ERANGE || v < min || v > max)
        return -ERANGE;
    if (errno != 0 || end == text || *end != '\0')
        return -EINVAL;
    *ret = v;
    return 0;
}

static int s_parse_uint(const char *text, uint64_t max, uint64_t *ret) {
    if (*text == '\0')
        return -EINVAL;
    for (const char *q = text; *q; q++)
        if (*q < '0' || *q > '9')
            return -EINVAL;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno == ERANGE || v > max)
        return -ERANGE;
    if (errno != 0 || end == text || *end != '\0')
        return -EINVAL;
    *ret = v;
    return 0;
}

/* A JSON-style number (-?d+(.d+)?([eE][+-]?d+)?) or one of the proto3 JSON spellings of the
 * non-finite values, "NaN", "Infinity", "-Infinity". Overflow to infinity is out of range. */
static int s_parse_double(const char *text, double *ret) {
    if (strcmp(text, "NaN") == 0) {
        *ret = NAN;
        return 0;
    }
    if (strcmp(text, "Infinity") == 0 || strcmp(text, "-Infinity") == 0) {
        *ret = text[0] == '-' ? -INFINITY : INFINITY;
        return 0;
    }
    const char *p = text;
    if (*p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return -EINVAL;
    while (*p >= '0' && *p <= '9')
        p++;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return -EINVAL;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (*p < '0' || *p > '9')
            return -EINVAL;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p != '\0')
        return -EINVAL;
    errno = 0;
    char *end = NULL;
    double d = strtod(text, &end);
    if (end == text || *end != '\0')
        return -EINVAL;
    if (isinf(d))
        return -ERANGE;
    *ret = d; /* underflow to 0 or a subnormal is accepted, like any JSON parser does */
    return 0;
}

/* --- enums -------------------------------------------------------------------------------- */

/* ASCII only: enum value names are identifiers, and the locale must not matter. */
static unsigned char s_ascii_lower(unsigned char c) {
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Accepts the value name exactly as in the .proto ("DARK_GREEN") or all lower-case
 * ("dark_green"); mixed case is not a name. */
static const ProtobufCEnumValue *s_enum_find(const ProtobufCEnumDescriptor *ed, const char *name,
                                             size_t len) {
    for (unsigned i = 0; i < ed->n_values; i++) {
        const char *vn = ed->values[i].name;
        if (strlen(vn) != len)
            continue;
        if (memcmp(vn, name, len) == 0)
            return &ed->values[i];
        size_t k = 0;
        while (k < len && s_ascii_lower((unsigned char)vn[k]) == (unsigned char)name[k])
            k++;
        if (k == len)
            return &ed->values[i];
    }
    return NULL;
}

/* Lower-case value name, or the bare number for a value this build does not know (proto3
 * enums are open: a newer peer may send one). */
static json_t *s_enum_to_json(const ProtobufCEnumDescriptor *ed, int value) {
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(ed, value);
    if (!v)
        return json_integer(value);
    size_t len = strlen(v->name);
    unsigned char *low = malloc(len + 1);
    if (!low)
        return NULL;
    for (size_t i = 0; i < len; i++)
        low[i] = s_ascii_lower((unsigned char)v->name[i]);
    json_t *j = json_stringn((const char *)low, len);
    free(low);
    return j;
}

/* --- scalar values ------------------------------------------------------------------------- */

/* One converted scalar, written to the message only once the whole conversion succeeded. */
typedef union {
    int32_t i32;
    uint32_t u32;
    int64_t i64;
    uint64_t u64;
    float fl;
    double db;
    protobuf_c_boolean b;
    int e;
    char *s;
    ProtobufCBinaryData by;
} s_value_t;

static size_t s_scalar_size(ProtobufCType type) {
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM:
        return sizeof(int);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

static void s_value_store(ProtobufCType type, void *dst, const s_value_t *v) {
    size_t n = s_scalar_size(type);
    const void *src = v;
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        src = &v->i32;
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        src = &v->u32;
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        src = &v->i64;
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        src = &v->u64;
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        src = &v->fl;
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        src = &v->db;
        break;
    case PROTOBUF_C_TYPE_BOOL:
        src = &v->b;
        break;
    case PROTOBUF_C_TYPE_ENUM:
        src = &v->e;
        break;
    case PROTOBUF_C_TYPE_STRING:
        src = &v->s;
        break;
    case PROTOBUF_C_TYPE_BYTES:
        src = &v->by;
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
        return;
    }
    memcpy(dst, src, n);
}

/* Copies len bytes of text (no NUL inside, valid UTF-8) into a new string from the allocator. */
static int s_string_new(s_ctx_t *ctx, const char *text, size_t len, s_value_t *v) {
    if (memchr(text, '\0', len))
        return s_fail(ctx, "string contains NUL");
    if (!s_utf8_valid(text, len))
        return s_fail(ctx, "invalid UTF-8");
    char *s = ctx->alloc->alloc(ctx->alloc->allocator_data, len + 1);
    if (!s)
        return s_oom(ctx);
    memcpy(s, text, len);
    s[len] = '\0';
    v->s = s;
    return 0;
}

/* Standard base64 with padding (RFC 4648 §4); empty text is empty bytes (data NULL). */
static int s_bytes_new(s_ctx_t *ctx, const char *text, size_t len, s_value_t *v) {
    v->by.len = 0;
    v->by.data = NULL;
    if (len == 0)
        return 0;
    size_t cap = len / 4 * 3 + 3;
    unsigned char *bin = ctx->alloc->alloc(ctx->alloc->allocator_data, cap);
    if (!bin)
        return s_oom(ctx);
    size_t bin_len = 0;
    /* b64_end NULL: any byte that is not base64 (or wrong padding) fails the whole text */
    if (sodium_base642bin(bin, cap, text, len, NULL, &bin_len, NULL, S_B64) != 0) {
        ctx->alloc->free(ctx->alloc->allocator_data, bin);
        return s_fail(ctx, "invalid base64");
    }
    if (bin_len == 0) {
        ctx->alloc->free(ctx->alloc->allocator_data, bin);
        return 0;
    }
    v->by.data = bin;
    v->by.len = bin_len;
    return 0;
}

/* JSON integer, or a real with no fraction, within [min, max]; decimal strings too if
 * allow_text (64-bit fields, so values beyond 2^53 survive JavaScript clients). */
static int s_json_int(s_ctx_t *ctx, const json_t *j, int64_t min, int64_t max, bool allow_text,
                      int64_t *ret) {
    if (json_is_integer(j)) {
        json_int_t v = json_integer_value(j);
        if (v < min || v > max)
            return s_fail(ctx, "out of range");
        *ret = v;
        return 0;
    }
    if (json_is_real(j)) {
        double d = json_real_value(j);
        if (!isfinite(d) || d != trunc(d))
            return s_fail(ctx, "expected integer");
        /* (double)max + 1 is exact for 2^31 and rounds to exactly 2^63 for INT64_MAX */
        if (d < (double)min || d >= (double)max + 1.0)
            return s_fail(ctx, "out of range");
        *ret = (int64_t)d;
        return 0;
    }
    if (allow_text && json_is_string(j)) {
        int rc = s_parse_int(json_string_value(j), min, max, ret);
        if (rc == -ERANGE)
            return s_fail(ctx, "out of range");
        if (rc != 0 || strlen(json_string_value(j)) != json_string_length(j))
            return s_fail(ctx, "expected integer");
        return 0;
    }
    return s_fail(ctx, "expected integer");
}

static int s_json_uint(s_ctx_t *ctx, const json_t *j, uint64_t max, bool allow_text,
                       uint64_t *ret) {
    if (json_is_integer(j)) {
        json_int_t v = json_integer_value(j);
        if (v < 0 || (uint64_t)v > max)
            return s_fail(ctx, "out of range");
        *ret = (uint64_t)v;
        return 0;
    }
    if (json_is_real(j)) {
        double d = json_real_value(j);
        if (!isfinite(d) || d != trunc(d))
            return s_fail(ctx, "expected integer");
        if (d < 0 || d >= (double)max + 1.0)
            return s_fail(ctx, "out of range");
        *ret = (uint64_t)d;
        return 0;
    }
    if (allow_text && json_is_string(j)) {
        const char *t = json_string_value(j);
        if (t[0] == '-' && t[1] >= '0' && t[1] <= '9')
            return s_fail(ctx, "out of range");
        int rc = s_parse_uint(t, max, ret);
        if (rc == -ERANGE)
            return s_fail(ctx, "out of range");
        if (rc != 0 || strlen(t) != json_string_length(j))
            return s_fail(ctx, "expected integer");
        return 0;
    }
    return s_fail(ctx, "expected integer");
}

static int s_json_double(s_ctx_t *ctx, const json_t *j, double *ret) {
    if (json_is_number(j)) {
        *ret = json_number_value(j);
        return 0;
    }
    if (json_is_string(j)) {
        const char *t = json_string_value(j);
        if (strcmp(t, "NaN") == 0 || strcmp(t, "Infinity") == 0 || strcmp(t, "-Infinity") == 0)
            return s_parse_double(t, ret) == 0 ? 0 : s_fail(ctx, "expected number");
    }
    return s_fail(ctx, "expected number");
}

static int s_float_check(s_ctx_t *ctx, double d, s_value_t *v) {
    if (isfinite(d) && fabs(d) > FLT_MAX)
        return s_fail(ctx, "out of range");
    v->fl = (float)d;
    return 0;
}

/* Converts one JSON value (never null: the caller skips those) for a scalar field type. */
static int s_scalar_from_json(s_ctx_t *ctx, const ProtobufCFieldDescriptor *f, const json_t *j,
                              s_value_t *v) {
    int rc;
    int64_t i = 0;
    uint64_t u = 0;
    double d = 0;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        if ((rc = s_json_int(ctx, j, INT32_MIN, INT32_MAX, false, &i)) != 0)
            return rc;
        v->i32 = (int32_t)i;
        return 0;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        if ((rc = s_json_uint(ctx, j, UINT32_MAX, false, &u)) != 0)
            return rc;
        v->u32 = (uint32_t)u;
        return 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return s_json_int(ctx, j, INT64_MIN, INT64_MAX, true, &v->i64);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return s_json_uint(ctx, j, UINT64_MAX, true, &v->u64);
    case PROTOBUF_C_TYPE_FLOAT:
        if ((rc = s_json_double(ctx, j, &d)) != 0)
            return rc;
        return s_float_check(ctx, d, v);
    case PROTOBUF_C_TYPE_DOUBLE:
        return s_json_double(ctx, j, &v->db);
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(j))
            return s_fail(ctx, "expected boolean");
        v->b = json_is_true(j) ? 1 : 0;
        return 0;
    case PROTOBUF_C_TYPE_ENUM: {
        if (!json_is_string(j))
            return s_fail(ctx, "expected enum name");
        const ProtobufCEnumValue *ev =
            s_enum_find(f->descriptor, json_string_value(j), json_string_length(j));
        if (!ev)
            return s_fail(ctx, "unknown enum value");
        v->e = ev->value;
        return 0;
    }
    case PROTOBUF_C_TYPE_STRING:
        if (!json_is_string(j))
            return s_fail(ctx, "expected string");
        return s_string_new(ctx, json_string_value(j), json_string_length(j), v);
    case PROTOBUF_C_TYPE_BYTES:
        if (!json_is_string(j))
            return s_fail(ctx, "expected base64 string");
        return s_bytes_new(ctx, json_string_value(j), json_string_length(j), v);
    case PROTOBUF_C_TYPE_MESSAGE:
        break;
    }
    return s_fail(ctx, "unsupported field type");
}

/* --- JSON -> message ----------------------------------------------------------------------- */

static ProtobufCMessage *s_message_new(s_ctx_t *ctx, const ProtobufCMessageDescriptor *desc) {
    ProtobufCMessage *m = ctx->alloc->alloc(ctx->alloc->allocator_data, desc->sizeof_message);
    if (m)
        protobuf_c_message_init(desc, m);
    return m;
}

static bool s_has_presence_flag(const ProtobufCFieldDescriptor *f) {
    /* proto2 optional scalars (and bytes) carry a has_ flag; strings and messages use NULL */
    return f->label == PROTOBUF_C_LABEL_OPTIONAL && !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
           f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE;
}

static int s_message_from_json(s_ctx_t *ctx, const json_t *obj, ProtobufCMessage *msg, int depth);

/* Fills a repeated field. The array and count are stored first and the count grows one
 * element at a time, so on any failure free_unpacked() finds exactly what was built. */
static int s_repeated_from_json(s_ctx_t *ctx, const ProtobufCFieldDescriptor *f, const json_t *j,
                                ProtobufCMessage *msg, int depth) {
    if (!json_is_array(j))
        return s_fail(ctx, "expected array");
    size_t n = json_array_size(j);
    if (n == 0)
        return 0;
    size_t esz = s_scalar_size(f->type);
    if (n > SIZE_MAX / esz)
        return s_oom(ctx);
    void *arr = ctx->alloc->alloc(ctx->alloc->allocator_data, n * esz);
    if (!arr)
        return s_oom(ctx);
    memset(arr, 0, n * esz);
    size_t *count = &S_MEMBER(size_t, msg, f->quantifier_offset);
    S_MEMBER(void *, msg, f->offset) = arr;
    *count = 0;
    for (size_t i = 0; i < n; i++) {
        size_t old = s_path_push_index(ctx, i);
        const json_t *e = json_array_get(j, i);
        char *slot = (char *)arr + i * esz;
        int rc;
        if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            if (!json_is_object(e))
                return s_fail(ctx, "expected object");
            ProtobufCMessage *sub = s_message_new(ctx, f->descriptor);
            if (!sub)
                return s_oom(ctx);
            *(ProtobufCMessage **)(void *)slot = sub;
            (*count)++;
            rc = s_message_from_json(ctx, e, sub, depth + 1);
        } else {
            s_value_t v;
            rc = s_scalar_from_json(ctx, f, e, &v);
            if (rc == 0) {
                s_value_store(f->type, slot, &v);
                (*count)++;
            }
        }
        if (rc != 0)
            return rc;
        s_path_pop(ctx, old);
    }
    return 0;
}

static int s_field_from_json(s_ctx_t *ctx, const ProtobufCFieldDescriptor *f, const json_t *j,
                             ProtobufCMessage *msg, int depth) {
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return s_repeated_from_json(ctx, f, j, msg, depth);

    bool oneof = (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
    if (oneof && S_MEMBER(uint32_t, msg, f->quantifier_offset) != 0)
        return s_fail(ctx, "more than one member of a oneof");

    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        if (!json_is_object(j))
            return s_fail(ctx, "expected object");
        ProtobufCMessage *sub = s_message_new(ctx, f->descriptor);
        if (!sub)
            return s_oom(ctx);
        S_MEMBER(ProtobufCMessage *, msg, f->offset) = sub;
        if (oneof)
            S_MEMBER(uint32_t, msg, f->quantifier_offset) = f->id;
        return s_message_from_json(ctx, j, sub, depth + 1);
    }

    s_value_t v;
    int rc = s_scalar_from_json(ctx, f, j, &v);
    if (rc != 0)
        return rc;
    /* From a fresh message: the slot holds its default, which is never owned (not freed). */
    s_value_store(f->type, (char *)msg + f->offset, &v);
    if (oneof)
        S_MEMBER(uint32_t, msg, f->quantifier_offset) = f->id;
    else if (s_has_presence_flag(f))
        S_MEMBER(protobuf_c_boolean, msg, f->quantifier_offset) = 1;
    return 0;
}

static int s_message_from_json(s_ctx_t *ctx, const json_t *obj, ProtobufCMessage *msg, int depth) {
    if (!json_is_object(obj))
        return s_fail(ctx, "expected object");
    if (depth > CODEC_MAX_DEPTH)
        return s_fail(ctx, "too deeply nested");
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    /* jansson's iterators want a non-const object; nothing here modifies it */
    json_t *o = (json_t *)obj;
    for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it)) {
        const char *key = json_object_iter_key(it);
        size_t key_len = json_object_iter_key_len(it);
        const json_t *val = json_object_iter_value(it);
        size_t old = s_path_push_name(ctx, key, key_len);
        /* a key with an embedded NUL never names a field */
        const ProtobufCFieldDescriptor *f =
            strlen(key) == key_len ? protobuf_c_message_descriptor_get_field_by_name(desc, key)
                                   : NULL;
        if (!f)
            return s_fail(ctx, "unknown field");
        if (!json_is_null(val)) {
            int rc = s_field_from_json(ctx, f, val, msg, depth);
            if (rc != 0)
                return rc;
        }
        s_path_pop(ctx, old);
    }
    return 0;
}

static void s_ctx_init(s_ctx_t *ctx, ProtobufCAllocator *alloc, codec_error_t *err) {
    ctx->alloc = s_allocator(alloc);
    ctx->err = err;
    ctx->path[0] = '\0';
    ctx->path_len = 0;
    if (err) {
        err->field[0] = '\0';
        err->text[0] = '\0';
    }
}

int codec_from_json(const json_t *in, const ProtobufCMessageDescriptor *desc,
                    ProtobufCAllocator *alloc, ProtobufCMessage **ret_msg, codec_error_t *err) {
    s_ctx_t ctx;
    s_ctx_init(&ctx, alloc, err);
    *ret_msg = NULL;
    if (!json_is_object(in))
        return s_fail(&ctx, "expected object");
    ProtobufCMessage *msg = s_message_new(&ctx, desc);
    if (!msg)
        return s_oom(&ctx);
    int rc = s_message_from_json(&ctx, in, msg, 1);
    if (rc != 0) {
        protobuf_c_message_free_unpacked(msg, ctx.alloc);
        return rc;
    }
    *ret_msg = msg;
    return 0;
}

/* --- message -> JSON ----------------------------------------------------------------------- */

static json_t *s_bytes_to_json(const ProtobufCBinaryData *bd) {
    if (bd->len == 0 || !bd->data)
        return json_string("");
    if (bd->len >= SIZE_MAX / 2)
        return NULL;
    size_t cap = sodium_base64_ENCODED_LEN(bd->len, S_B64);
    char *b64 = malloc(cap);
    if (!b64)
        return NULL;
    sodium_bin2base64(b64, cap, bd->data, bd->len, S_B64);
    json_t *j = json_stringn_nocheck(b64, strlen(b64));
    free(b64);
    return j;
}

static json_t *s_double_to_json(double d) {
    /* JSON has no NaN or infinities: the proto3 JSON mapping spells them as strings */
    if (isnan(d))
        return json_string("NaN");
    if (isinf(d))
        return json_string(d > 0 ? "Infinity" : "-Infinity");
    return json_real(d);
}

static json_t *s_message_to_json(const ProtobufCMessage *msg, int depth);

/* One element (or singular value) at p, of the field's type. */
static json_t *s_value_to_json(const ProtobufCFieldDescriptor *f, const void *p, int depth) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return json_integer(*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t u = *(const uint64_t *)p;
        if (u <= INT64_MAX)
            return json_integer((json_int_t)u);
        /* beyond jansson's json_int_t: a decimal string, which codec_from_json accepts */
        char buf[24];
        snprintf(buf, sizeof buf, "%" PRIu64, u);
        return json_string(buf);
    }
    case PROTOBUF_C_TYPE_FLOAT:
        return s_double_to_json(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return s_double_to_json(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM:
        return s_enum_to_json(f->descriptor, *(const int *)p);
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        if (!s)
            return f->label == PROTOBUF_C_LABEL_OPTIONAL ? json_null() : json_string("");
        return s_json_text(s);
    }
    case PROTOBUF_C_TYPE_BYTES:
        return s_bytes_to_json(p);
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        return sub ? s_message_to_json(sub, depth + 1) : json_null();
    }
    }
    return NULL;
}

static json_t *s_field_to_json(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                               int depth) {
    const char *base = (const char *)msg;
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(const uint32_t *)(const void *)(base + f->quantifier_offset) != f->id)
        return json_null();
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        size_t n = *(const size_t *)(const void *)(base + f->quantifier_offset);
        const char *arr = *(char *const *)(const void *)(base + f->offset);
        size_t esz = s_scalar_size(f->type);
        json_t *a = json_array();
        if (!a)
            return NULL;
        for (size_t i = 0; i < n && arr; i++) {
            if (json_array_append_new(a, s_value_to_json(f, arr + i * esz, depth)) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    if (s_has_presence_flag(f) &&
        !*(const protobuf_c_boolean *)(const void *)(base + f->quantifier_offset))
        return json_null();
    return s_value_to_json(f, base + f->offset, depth);
}

/* Nesting beyond CODEC_MAX_DEPTH (only possible with recursive types) is refused with NULL
 * like OOM: the gateway renders replies and must not recurse without bound. */
static json_t *s_message_to_json(const ProtobufCMessage *msg, int depth) {
    if (depth > CODEC_MAX_DEPTH)
        return NULL;
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    json_t *obj = json_object();
    if (!obj)
        return NULL;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        json_t *v = s_field_to_json(msg, f, depth);
        /* set_new steals v, and fails on v == NULL */
        if (!v || json_object_set_new_nocheck(obj, f->name, v) != 0) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

json_t *codec_to_json(const ProtobufCMessage *msg) {
    if (!msg)
        return NULL;
    return s_message_to_json(msg, 1);
}

/* --- text -> one scalar field -------------------------------------------------------------- */

/* Releases what a singular field holds, exactly as free_unpacked() would. */
static void s_field_release(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                            ProtobufCAllocator *alloc) {
    void *p = (char *)msg + f->offset;
    if (f->type == PROTOBUF_C_TYPE_STRING) {
        char *s = *(char **)p;
        if (s && s != f->default_value)
            alloc->free(alloc->allocator_data, s);
        *(char **)p = NULL;
    } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
        ProtobufCBinaryData *bd = p;
        const ProtobufCBinaryData *def = f->default_value;
        if (bd->data && (!def || def->data != bd->data))
            alloc->free(alloc->allocator_data, bd->data);
        bd->data = NULL;
        bd->len = 0;
    } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        ProtobufCMessage *sm = *(ProtobufCMessage **)p;
        if (sm && (const void *)sm != f->default_value)
            protobuf_c_message_free_unpacked(sm, alloc);
        *(ProtobufCMessage **)p = NULL;
    }
}

/* Frees the member a oneof currently holds, before another member takes its storage. */
static void s_oneof_release(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                            ProtobufCAllocator *alloc) {
    uint32_t current = S_MEMBER(uint32_t, msg, f->quantifier_offset);
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    for (unsigned i = 0; current != 0 && i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *g = &desc->fields[i];
        if (g->id == current && (g->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            g->quantifier_offset == f->quantifier_offset) {
            s_field_release(msg, g, alloc);
            break;
        }
    }
    S_MEMBER(uint32_t, msg, f->quantifier_offset) = 0;
}

static int s_scalar_from_text(s_ctx_t *ctx, const ProtobufCFieldDescriptor *f, const char *text,
                              s_value_t *v) {
    int rc = 0;
    int64_t i = 0;
    uint64_t u = 0;
    double d = 0;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        rc = s_parse_int(text, INT32_MIN, INT32_MAX, &i);
        v->i32 = (int32_t)i;
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        rc = text[0] == '-' && text[1] >= '0' && text[1] <= '9'
                 ? -ERANGE
                 : s_parse_uint(text, UINT32_MAX, &u);
        v->u32 = (uint32_t)u;
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        rc = s_parse_int(text, INT64_MIN, INT64_MAX, &v->i64);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        rc = text[0] == '-' && text[1] >= '0' && text[1] <= '9'
                 ? -ERANGE
                 : s_parse_uint(text, UINT64_MAX, &v->u64);
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        if ((rc = s_parse_double(text, &d)) == 0)
            return s_float_check(ctx, d, v);
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        rc = s_parse_double(text, &v->db);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        if (strcmp(text, "true") == 0 || strcmp(text, "false") == 0) {
            v->b = text[0] == 't';
            return 0;
        }
        return s_fail(ctx, "expected true or false");
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *ev = s_enum_find(f->descriptor, text, strlen(text));
        if (!ev)
            return s_fail(ctx, "unknown enum value");
        v->e = ev->value;
        return 0;
    }
    case PROTOBUF_C_TYPE_STRING:
        return s_string_new(ctx, text, strlen(text), v);
    case PROTOBUF_C_TYPE_BYTES:
        return s_bytes_new(ctx, text, strlen(text), v);
    case PROTOBUF_C_TYPE_MESSAGE:
        return s_fail(ctx, "not a scalar field");
    }
    if (rc == -ERANGE)
        return s_fail(ctx, "out of range");
    if (rc != 0) {
        bool is_int = f->type != PROTOBUF_C_TYPE_FLOAT && f->type != PROTOBUF_C_TYPE_DOUBLE;
        return s_fail(ctx, is_int ? "expected integer" : "expected number");
    }
    return 0;
}

/* The previous value of the field is released through alloc, like free_unpacked() would: msg
 * must have been built with the same allocator (codec_from_json or protobuf-c unpack), not
 * hold caller-owned strings. */
int codec_set_field(ProtobufCMessage *msg, const char *name, const char *value,
                    ProtobufCAllocator *alloc, codec_error_t *err) {
    s_ctx_t ctx;
    s_ctx_init(&ctx, alloc, err);
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);
    (void)s_path_push_name(&ctx, name, strlen(name));
    if (!f || f->label == PROTOBUF_C_LABEL_REPEATED || f->type == PROTOBUF_C_TYPE_MESSAGE)
        return s_fail_rc(&ctx, -ENOENT, "unknown field");
    s_value_t v;
    int rc = s_scalar_from_text(&ctx, f, value, &v);
    if (rc != 0)
        return rc;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        s_oneof_release(msg, f, ctx.alloc);
        S_MEMBER(uint32_t, msg, f->quantifier_offset) = f->id;
    } else {
        s_field_release(msg, f, ctx.alloc);
        if (s_has_presence_flag(f))
            S_MEMBER(protobuf_c_boolean, msg, f->quantifier_offset) = 1;
    }
    s_value_store(f->type, (char *)msg + f->offset, &v);
    return 0;
}
