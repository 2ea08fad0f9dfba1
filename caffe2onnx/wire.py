"""Protocol-buffer wire format, read and written without a schema.

Used for binary ``.caffemodel`` files: the Caffe forks reuse field numbers for
different parameters (see the spec, section 4), so only the core fields that every
fork agrees on are decoded, straight from the bytes. Large float payloads are never
turned into Python objects: :func:`float32_run` and the packed readers return numpy
views of the underlying buffer.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5

_UNPACKED_FLOAT = np.dtype([("tag", "u1"), ("value", "<f4")])


class WireError(Exception):
    """The bytes are not a well-formed protobuf message."""

    def __init__(self, message: str, offset: int) -> None:
        self.offset = offset
        super().__init__(f"{message} at byte {offset}")


def read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """Decode one base-128 varint at ``pos``; return (value, new position)."""
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError("truncated varint", start)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes", start)


def next_field(buf: memoryview, pos: int, end: int) -> tuple[int, int, int, int, int]:
    """Decode the field starting at ``pos``.

    Returns ``(field_number, wire_type, a, b, next_pos)``: for VARINT fields ``a`` is the
    value; for LEN/FIXED32/FIXED64 fields ``a:b`` is the byte range of the payload.
    """
    tag_pos = pos
    key, pos = read_varint(buf, pos, end)
    field_number, wire_type = key >> 3, key & 7
    if field_number == 0:
        raise WireError("field number 0", tag_pos)
    if wire_type == VARINT:
        value, pos = read_varint(buf, pos, end)
        return field_number, wire_type, value, pos, pos
    if wire_type == LEN:
        length, pos = read_varint(buf, pos, end)
        if pos + length > end:
            raise WireError(
                f"field {field_number} claims {length} bytes but only {end - pos} remain", tag_pos
            )
        return field_number, wire_type, pos, pos + length, pos + length
    if wire_type in (FIXED32, FIXED64):
        width = 4 if wire_type == FIXED32 else 8
        if pos + width > end:
            raise WireError(f"truncated {8 * width}-bit field", tag_pos)
        return field_number, wire_type, pos, pos + width, pos + width
    raise WireError(f"unsupported wire type {wire_type} (field {field_number})", tag_pos)


def iter_fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field_number, wire_type, a, b)`` for each field in ``buf[start:end]``."""
    pos = start
    while pos < end:
        number, wire_type, a, b, pos = next_field(buf, pos, end)
        yield number, wire_type, a, b


def packed_varints(buf: memoryview, start: int, end: int) -> list[int]:
    values = []
    pos = start
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        values.append(value)
    return values


def signed64(value: int) -> int:
    """Reinterpret an unsigned varint as a two's complement int64."""
    return value - (1 << 64) if value >= 1 << 63 else value


def packed_float32(buf: memoryview, start: int, end: int) -> np.ndarray:
    if (end - start) % 4:
        raise WireError("packed float field length is not a multiple of 4", start)
    return np.frombuffer(buf, dtype="<f4", count=(end - start) // 4, offset=start)


def packed_float64(buf: memoryview, start: int, end: int) -> np.ndarray:
    if (end - start) % 8:
        raise WireError("packed double field length is not a multiple of 8", start)
    return np.frombuffer(buf, dtype="<f8", count=(end - start) // 8, offset=start)


def float32_run(buf: memoryview, tag_pos: int, end: int, tag_byte: int) -> tuple[np.ndarray, int]:
    """Read consecutive *unpacked* float fields (tag byte + 4 bytes each) at once.

    ``tag_pos`` points at the first tag byte. Returns the values and the position after
    the run, without a Python loop over elements.
    """
    count = (end - tag_pos) // 5
    records = np.frombuffer(buf, dtype=_UNPACKED_FLOAT, count=count, offset=tag_pos)
    mismatch = np.flatnonzero(records["tag"] != tag_byte)
    n = int(mismatch[0]) if mismatch.size else count
    return records["value"][:n], tag_pos + 5 * n


# ----------------------------------------------------------------------------- writing


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field_number: int, wire_type: int) -> bytes:
    return encode_varint((field_number << 3) | wire_type)


def len_field(field_number: int, payload: bytes) -> bytes:
    return key(field_number, LEN) + encode_varint(len(payload)) + payload


def len_header(field_number: int, length: int) -> bytes:
    return key(field_number, LEN) + encode_varint(length)


def string_field(field_number: int, text: str) -> bytes:
    return len_field(field_number, text.encode("utf-8"))


def varint_field(field_number: int, value: int) -> bytes:
    return key(field_number, VARINT) + encode_varint(value)


def packed_varint_field(field_number: int, values: list[int]) -> bytes:
    return len_field(field_number, b"".join(encode_varint(v) for v in values))
