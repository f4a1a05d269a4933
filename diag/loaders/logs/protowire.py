"""Protobuf wire format, read safely and bounded, without protobuf.

The log readers (TensorBoard event files, W&B run files) decode the few fields they need
by hand and skip the rest. A message is a sequence of fields, each a key varint
(`field number << 3 | wire type`) and then, by wire type:

    0 varint · 1 fixed 8 bytes · 2 length-delimited (varint length, then that many bytes)
    3 start group ... 4 end group (deprecated) · 5 fixed 4 bytes

Every function here reads `data[pos:end]` (bytes or an mmap), never past `end`, and
raises `Malformed` instead of reading on: a varint over 10 bytes, a field number out of
range, a length past the end of its message, groups nested deeper than
`MAX_GROUP_DEPTH`. The functions sit in the readers' per-field loops: they are imported
by name (a call is one global lookup, as a function of the reader's own would be).
"""

from __future__ import annotations

# Protobuf nesting limit for skipped groups (the same default as protobuf's own parsers).
MAX_GROUP_DEPTH = 100

_U64 = (1 << 64) - 1


class Malformed(Exception):
    """A message that cannot be decoded; the reader turns it into an InputError naming it."""


def varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """An unsigned varint at `pos` -> (value as u64, position after it)."""
    result = shift = 0
    while True:
        if pos >= end:
            raise Malformed("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise Malformed("varint longer than 10 bytes")


def signed64(raw: int) -> int:
    """A u64 read as protobuf's int64 (two's complement)."""
    return raw - (1 << 64) if raw >= 1 << 63 else raw


def field_key(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """A field's key -> (field number, wire type, position after the key)."""
    key, pos = varint(data, pos, end)
    number = key >> 3
    if number == 0 or number >= 1 << 29:
        raise Malformed(f"invalid field number {number}")
    return number, key & 7, pos


def delimited(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A length-delimited field's payload -> (start, stop)."""
    length, pos = varint(data, pos, end)
    if length > end - pos:
        raise past_the_end(length, end - pos)
    return pos, pos + length


def past_the_end(length: int, room: int) -> Malformed:
    """The error for a field of `length` bytes where its message has `room` bytes left."""
    return Malformed(
        f"a field of {length} bytes past the end of its message "
        f"(its length past the end by {length - room} bytes)"
    )


def last_varint(data: bytes, start: int, end: int, number: int) -> int | None:
    """Varint field `number` of the message `data[start:end]` (as u64), None if absent.

    A scalar field given more than once keeps its last value, as in protobuf; every other
    field is skipped (and checked) on the way.
    """
    found = None
    pos = start
    while pos < end:
        field, wire, pos = field_key(data, pos, end)
        if field == number and wire == 0:
            found, pos = varint(data, pos, end)
        else:
            pos = skip_field(data, pos, end, field, wire)
    return found


def skip_field(data: bytes, pos: int, end: int, number: int, wire: int) -> int:
    """Skip a field we do not use, whatever its wire type, -> the position after it."""
    if wire == 0:
        return varint(data, pos, end)[1]
    if wire == 1 or wire == 5:
        pos += 8 if wire == 1 else 4
        if pos > end:
            raise Malformed("fixed-width field past the end of its message")
        return pos
    if wire == 2:
        return delimited(data, pos, end)[1]
    if wire == 3:  # a group: fields until the matching end-group key
        open_groups = [number]
        while open_groups:
            if len(open_groups) > MAX_GROUP_DEPTH:
                raise Malformed("groups nested too deeply")
            inner, inner_wire, pos = field_key(data, pos, end)
            if inner_wire == 4:
                if inner != open_groups.pop():
                    raise Malformed("mismatched end-group")
            elif inner_wire == 3:
                open_groups.append(inner)
            else:
                pos = skip_field(data, pos, end, inner, inner_wire)
        return pos
    if wire == 4:
        raise Malformed("end-group without a start")
    raise Malformed(f"invalid wire type {wire}")
