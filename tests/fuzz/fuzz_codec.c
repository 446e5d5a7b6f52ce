/* libFuzzer target for the gateway's JSON <-> protobuf codec. The first input byte picks a
 * message type ('0'..'5'; '6': codec_set_field on "name\0value"); the rest is the JSON body,
 * loaded under the gateway's kind of limits. Invariants: no crash or leak, and every accepted
 * body renders, re-decodes to the same JSON, and survives pack/unpack unchanged. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "codectest.pb-c.h"
#include "envelope.pb-c.h"
#include "identity.pb-c.h"

#define FUZZ_MAX_BODY       (64 * 1024)
#define FUZZ_MAX_JSON_DEPTH 64

static const ProtobufCMessageDescriptor *const s_types[] = {
    &extranet__codectest__everything__descriptor,
    &extranet__codectest__scalars__descriptor,
    &extranet__codectest__node__descriptor,
    &extranet__request__descriptor,
    &extranet__reply__descriptor,
    &extranet__identity__login_reply__descriptor,
};
#define N_TYPES (sizeof s_types / sizeof s_types[0])

/* Bracket depth outside strings: the gateway refuses deep bodies before jansson recurses. */
static int s_json_depth_ok(const uint8_t *p, size_t n) {
    int depth = 0;
    int in_string = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > FUZZ_MAX_JSON_DEPTH)
                return 0;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return 1;
}

static void s_die(const char *what, const json_t *j) {
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    fprintf(stderr, "invariant broken: %s: %s\n", what, text ? text : "(null)");
    free(text);
    abort();
}

/* decode -> render -> decode -> render must be a fixpoint, and pack/unpack must keep it. */
static void s_check_json(const json_t *in, const ProtobufCMessageDescriptor *desc) {
    ProtobufCMessage *m = NULL;
    codec_error_t err;
    if (codec_from_json(in, desc, NULL, &m, &err) != 0) {
        if (m)
            s_die("message returned on error", in);
        /* the error must be showable as JSON */
        json_t *e = json_pack("{s:s,s:s}", "field", err.field, "text", err.text);
        if (!e)
            s_die("error text is not valid UTF-8", in);
        json_decref(e);
        return;
    }
    json_t *out = codec_to_json(m);
    if (!out)
        s_die("accepted message does not render", in);
    ProtobufCMessage *m2 = NULL;
    if (codec_from_json(out, desc, NULL, &m2, &err) != 0)
        s_die(err.text, out);
    json_t *out2 = codec_to_json(m2);
    if (!out2 || !json_equal(out, out2))
        s_die("render is not a fixpoint", out);

    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    if (protobuf_c_message_pack(m, buf) != len)
        s_die("pack size", out);
    ProtobufCMessage *back = protobuf_c_message_unpack(desc, NULL, len, buf);
    if (!back)
        s_die("own packing does not unpack", out);
    json_t *out3 = codec_to_json(back);
    if (!out3 || !json_equal(out, out3))
        s_die("pack/unpack changed the message", out);

    json_decref(out3);
    protobuf_c_message_free_unpacked(back, NULL);
    free(buf);
    json_decref(out2);
    protobuf_c_message_free_unpacked(m2, NULL);
    json_decref(out);
    protobuf_c_message_free_unpacked(m, NULL);
}

/* "name\0value": set one field of a Scalars (or a oneof member of Everything) from text. */
static void s_check_set_field(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul)
        return;
    size_t name_len = (size_t)(nul - data);
    size_t value_len = size - name_len - 1;
    char *name = malloc(name_len + 1);
    char *value = malloc(value_len + 1);
    if (!name || !value)
        abort();
    memcpy(name, data, name_len);
    name[name_len] = '\0';
    memcpy(value, nul + 1, value_len);
    value[value_len] = '\0';
    static const ProtobufCMessageDescriptor *const types[] = {
        &extranet__codectest__scalars__descriptor, &extranet__codectest__everything__descriptor};
    for (size_t t = 0; t < 2; t++) {
        ProtobufCMessage *m = malloc(types[t]->sizeof_message);
        if (!m)
            abort();
        protobuf_c_message_init(types[t], m);
        codec_error_t err;
        /* twice, so a replaced value (oneof member, string) must be released correctly */
        for (int k = 0; k < 2; k++) {
            int rc = codec_set_field(m, name, value, NULL, &err);
            if (rc == 0) {
                json_t *out = codec_to_json(m);
                if (!out)
                    s_die("set field does not render", NULL);
                json_decref(out);
            }
        }
        protobuf_c_message_free_unpacked(m, NULL);
    }
    free(name);
    free(value);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > FUZZ_MAX_BODY)
        return 0;
    /* '0'..'5': a message type, '6': set_field (readable seeds; any byte maps somewhere) */
    unsigned mode = (unsigned)(uint8_t)(data[0] - '0') % (N_TYPES + 1);
    data++, size--;
    if (mode == N_TYPES) {
        s_check_set_field(data, size);
        return 0;
    }
    if (!s_json_depth_ok(data, size))
        return 0;
    json_error_t jerr;
    json_t *in =
        json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!in)
        return 0;
    s_check_json(in, s_types[mode]);
    json_decref(in);
    return 0;
}
