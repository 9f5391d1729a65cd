/* json.h - msgpack values to JSON and back (jansson), for allotctl's -o json
 * and the HTTP API.
 *
 * Integers stay integers (jansson's json_int_t is 64-bit signed; allot's
 * versions and indexes stay far below 2^63), floats stay floats, binary
 * becomes a hex string. Map keys that are not strings are dropped. */
#ifndef ALLOT_JSON_H
#define ALLOT_JSON_H

#include <jansson.h>
#include <msgpack.h>

/* A new JSON value (the caller json_decref()s it); NULL only on OOM. */
json_t *wire_to_json(const msgpack_object *o);

/* Pack a JSON value as msgpack. Non-negative integers pack unsigned, so a
 * JSON document and its msgpack twin decode to the same typed fields. */
void wire_pack_json(msgpack_packer *pk, const json_t *j);

#endif /* ALLOT_JSON_H */
