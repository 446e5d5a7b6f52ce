/* The one JSON <-> protobuf codec of the gateway, driven by protobuf-c descriptors: field
 * names are the proto field names; strings, bools, int32/int64/uint32/uint64 (JSON numbers;
 * 64-bit also accepted as decimal strings), double/float, bytes (base64), enums (by value
 * name, lower-case accepted), repeated fields (arrays) and nested messages (objects).
 * Unknown fields, wrong types, out-of-range numbers and too-deep nesting are errors. */
#ifndef GW_CODEC_H
#define GW_CODEC_H
#include "extranet/common.h"
#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#define CODEC_MAX_DEPTH 16

typedef struct {
    char field[128];    /* dotted path of the offending field ("user.email"), "" for the root */
    char text[160];     /* what is wrong, safe to show to the client */
} codec_error_t;

/* Builds a message of type desc from the JSON object in. Allocations come from alloc (NULL:
 * malloc), so a per-request arena can own them. On success *ret_msg is new (free with
 * protobuf_c_message_free_unpacked(msg, alloc) or by dropping the arena). Returns 0, or
 * -EINVAL with err filled. */
int codec_from_json(const json_t *in, const ProtobufCMessageDescriptor *desc,
                    ProtobufCAllocator *alloc, ProtobufCMessage **ret_msg,
                    codec_error_t *err) WUR;

/* Renders msg as a new JSON object (caller json_decref()s); NULL on OOM. proto3 scalars at
 * their default value are still emitted (clients see every field). */
json_t *codec_to_json(const ProtobufCMessage *msg);

/* Sets the scalar field `name` of msg (a path parameter or query parameter, given as text)
 * converting it by the field's type ("25" for int32, "true"/"false" for bool, enum names).
 * Strings are copied with alloc. Returns 0; -ENOENT when msg has no such scalar field;
 * -EINVAL with err filled when the text does not convert. */
int codec_set_field(ProtobufCMessage *msg, const char *name, const char *value,
                    ProtobufCAllocator *alloc, codec_error_t *err) WUR;
#endif
