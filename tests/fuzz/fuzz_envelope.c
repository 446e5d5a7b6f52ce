/* libFuzzer target for the envelope every process decodes from the network: arbitrary bytes
 * unpacked as extranet.Request and extranet.Reply (and a Request's payload as EchoRequest).
 * Invariants: no crash or leak; an accepted message re-packs to bytes that unpack to the same
 * message, and renders as JSON (the gateway renders replies). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "envelope.pb-c.h"

static void s_die(const char *what) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
}

static uint8_t *s_pack(const ProtobufCMessage *m, size_t *ret_len) {
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    if (protobuf_c_message_pack(m, buf) != len)
        s_die("pack size");
    *ret_len = len;
    return buf;
}

/* Does m, or any message inside it, hold an unknown field numbered 0? */
static int s_has_unknown_field_zero(const ProtobufCMessage *m) {
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return 1;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m;
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(const void *)(base + f->quantifier_offset) != f->id)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(const void *)(base + f->quantifier_offset);
            ProtobufCMessage *const *arr =
                *(ProtobufCMessage * *const *)(const void *)(base + f->offset);
            for (size_t k = 0; k < n; k++)
                if (s_has_unknown_field_zero(arr[k]))
                    return 1;
        } else {
            const ProtobufCMessage *sub =
                *(ProtobufCMessage *const *)(const void *)(base + f->offset);
            if (sub && s_has_unknown_field_zero(sub))
                return 1;
        }
    }
    return 0;
}

/* unpack(data) -> pack -> unpack -> pack: the two packings must be identical bytes. */
static void s_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t size) {
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, size, data);
    if (!m)
        return;
    json_t *j = codec_to_json(m);
    if (!j)
        s_die("unpacked message does not render");
    json_decref(j);

    size_t len1 = 0, len2 = 0;
    uint8_t *p1 = s_pack(m, &len1);
    ProtobufCMessage *m2 = protobuf_c_message_unpack(desc, NULL, len1, p1);
    if (!m2) {
        /* protobuf-c 1.4.1 rejects field number 0 only in its one-byte tag form (0x00-0x07):
         * written as a longer varint (0x81 0x00) it is accepted and kept as an unknown field,
         * then re-packed in the one-byte form it rejects. Lenient, not unsafe: skip. */
        if (s_has_unknown_field_zero(m)) {
            free(p1);
            protobuf_c_message_free_unpacked(m, NULL);
            return;
        }
        s_die("re-packed message does not unpack");
    }
    uint8_t *p2 = s_pack(m2, &len2);
    if (len1 != len2 || memcmp(p1, p2, len1) != 0)
        s_die("pack is not stable");

    if (desc == &extranet__request__descriptor) {
        const Extranet__Request *r = (const Extranet__Request *)m;
        Extranet__EchoRequest *e =
            extranet__echo_request__unpack(NULL, r->payload.len, r->payload.data);
        if (e) {
            json_t *ej = codec_to_json(&e->base);
            if (!ej)
                s_die("payload does not render");
            json_decref(ej);
            extranet__echo_request__free_unpacked(e, NULL);
        }
    }
    free(p2);
    free(p1);
    protobuf_c_message_free_unpacked(m2, NULL);
    protobuf_c_message_free_unpacked(m, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1024 * 1024)
        return 0;
    s_check(&extranet__request__descriptor, data, size);
    s_check(&extranet__reply__descriptor, data, size);
    return 0;
}
