/* json.c - msgpack <-> JSON (see json.h). */
#include "json.h"

#include <stdio.h>

#include "wire.h"

json_t *wire_to_json(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        /* JSON integers are signed 64-bit in jansson; versions and indexes
         * stay far below 2^63. */
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR:
        return json_stringn(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            json_array_append_new(a, wire_to_json(&o->via.array.ptr[i]));
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (k->type != MSGPACK_OBJECT_STR) {
                continue;
            }
            char key[128];
            snprintf(key, sizeof key, "%.*s", (int)k->via.str.size,
                     k->via.str.ptr);
            json_object_set_new(m, key, wire_to_json(&o->via.map.ptr[i].val));
        }
        return m;
    }
    case MSGPACK_OBJECT_BIN: {
        char hex[2 * 256 + 1];
        uint32_t n = o->via.bin.size > 256 ? 256 : o->via.bin.size;
        for (uint32_t i = 0; i < n; i++) {
            snprintf(hex + 2 * i, 3, "%02x", (unsigned char)o->via.bin.ptr[i]);
        }
        hex[2 * n] = '\0';
        return json_string(hex);
    }
    default:
        return json_null();
    }
}

void wire_pack_json(msgpack_packer *pk, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *v;
        msgpack_pack_map(pk, (uint32_t)json_object_size(j));
        json_object_foreach((json_t *)j, key, v)
        {
            wire_pack_str(pk, key);
            wire_pack_json(pk, v);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *v;
        msgpack_pack_array(pk, (uint32_t)json_array_size(j));
        json_array_foreach(j, i, v)
        {
            wire_pack_json(pk, v);
        }
        break;
    }
    case JSON_STRING:
        wire_pack_strn(pk, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER: {
        json_int_t v = json_integer_value(j);
        if (v >= 0) {
            msgpack_pack_uint64(pk, (uint64_t)v);
        } else {
            msgpack_pack_int64(pk, v);
        }
        break;
    }
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(j));
        break;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        break;
    case JSON_NULL:
        msgpack_pack_nil(pk);
        break;
    }
}
