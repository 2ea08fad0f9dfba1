"""Binary ``.caffemodel`` files: read the blobs by layer name, write seeded weights.

Caffe semantics: a caffemodel is a serialized NetParameter (usually of the TRAIN net).
Blobs are matched to the deploy net **by layer name only** (Net::CopyTrainedLayersFrom);
later layers with the same name overwrite earlier ones. Three layouts exist:
V2 (``layer`` = field 100: name 1, type 2, blobs 7), V1 (``layers`` = field 2: name 4,
type 5 as an enum, blobs 6) and V0 (a V1 entry whose field 1 holds name 1, type 2,
blobs 50). A BlobProto holds its values as packed or unpacked float32 ``data`` (5) or
float64 ``double_data`` (8), and its shape either as ``shape`` (7, dims packed) or as
the legacy ``num/channels/height/width`` (1-4), which win when present.

Only these core fields are decoded, without a schema, because the forks give
the same numbers to different parameters. Float payloads become numpy views of a
memory map of the file: no per-element Python work and no copy. The map keeps its
file open, so :func:`file_region` can tell a writer where a weight's bytes sit in the
file (the ONNX writer then copies them kernel-side, never touching them in Python).
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from caffe2onnx import wire
from caffe2onnx.errors import ParseError
from caffe2onnx.wire import FIXED32, LEN, VARINT, WireError

_LEGACY_DIM_FIELDS = {1: 0, 2: 1, 3: 2, 4: 3}
_UNPACKED_DATA_TAG = (5 << 3) | FIXED32  # BlobProto.data as repeated fixed32


class MappedFile(mmap.mmap):
    """A read-only memory map of a caffemodel that keeps its file open.

    ``file`` is the open file (for ``copy_file_range``/``sendfile`` from it) and
    ``address`` the address of the first mapped byte (to turn a view into an offset).
    """

    file: BinaryIO
    address: int


def _mapping(array: np.ndarray) -> tuple[MappedFile, int] | None:
    """The caffemodel map ``array`` views and its byte offset there, or None."""
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        return None
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    while isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, MappedFile) or base.closed:
        return None
    offset = array.ctypes.data - base.address
    if not 0 <= offset <= len(base) - array.nbytes:
        return None
    return base, offset


def file_region(array: np.ndarray) -> tuple[int, int] | None:
    """``(file descriptor, byte offset)`` of ``array``'s bytes in a caffemodel, if it is
    an unchanged C-contiguous little-endian float32 view of one (else None)."""
    found = _mapping(array) if isinstance(array, np.ndarray) and array.dtype == np.dtype("<f4") else None
    if found is None:
        return None
    mapped, offset = found
    return mapped.file.fileno(), offset


def release(array: np.ndarray) -> None:
    """Drop the pages of a caffemodel view from this process's memory (no-op otherwise).

    The map is read-only and shared, so the bytes stay in the page cache and are mapped
    again if the array is read later: this only keeps the peak RSS low while weights
    are transformed or written one after the other.
    """
    found = _mapping(array)
    if found is None or not array.nbytes or not hasattr(mmap, "MADV_DONTNEED"):
        return
    mapped, offset = found
    start = offset - offset % mmap.PAGESIZE
    mapped.madvise(mmap.MADV_DONTNEED, start, offset + array.nbytes - start)


@dataclass
class CaffeModel:
    """The blobs of a caffemodel, by layer name, as float32 numpy arrays."""

    path: str
    format: str
    blobs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    _keepalive: object = None

    def __contains__(self, layer_name: str) -> bool:
        return layer_name in self.blobs

    @property
    def total_bytes(self) -> int:
        return sum(blob.nbytes for blobs in self.blobs.values() for blob in blobs)


def _v1_type_names() -> dict[int, str]:
    from caffe2onnx.proto import caffe_pb2
    from caffe2onnx.upgrade import V1_TYPE_NAMES

    enum = caffe_pb2.V1LayerParameter.LayerType
    return {number: V1_TYPE_NAMES.get(name, name) for name, number in enum.items()}


def _decode_blob(buf: memoryview, start: int, end: int) -> np.ndarray:
    shape: list[int] | None = None
    legacy: list[int | None] = [None, None, None, None]
    chunks: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    pos = start
    while pos < end:
        tag_pos = pos
        number, wire_type, a, b, pos = wire.next_field(buf, pos, end)
        if number == 5 and wire_type == LEN:
            chunks.append(wire.packed_float32(buf, a, b))
        elif number == 5 and wire_type == FIXED32:
            # Unpacked floats: a run of (tag, 4 bytes) records, read in one go.
            run, pos = wire.float32_run(buf, tag_pos, end, _UNPACKED_DATA_TAG)
            chunks.append(run)
        elif number == 8 and wire_type == LEN:
            doubles.append(wire.packed_float64(buf, a, b))
        elif number == 8 and wire_type == wire.FIXED64:
            doubles.append(np.frombuffer(buf, dtype="<f8", count=1, offset=a))
        elif number == 7 and wire_type == LEN:
            shape = []
            for dim_number, dim_type, x, y in wire.iter_fields(buf, a, b):
                if dim_number == 1 and dim_type == LEN:
                    shape.extend(wire.signed64(v) for v in wire.packed_varints(buf, x, y))
                elif dim_number == 1 and dim_type == VARINT:
                    shape.append(wire.signed64(x))
        elif number in _LEGACY_DIM_FIELDS and wire_type == VARINT:
            legacy[_LEGACY_DIM_FIELDS[number]] = wire.signed64(a)
    if any(v is not None for v in legacy):
        shape = [v if v is not None else 0 for v in legacy]
    if doubles:
        values = np.concatenate(doubles).astype(np.float32)
    elif len(chunks) == 1:
        values = chunks[0]
    elif chunks:
        values = np.concatenate(chunks)
    else:
        values = np.zeros(0, np.float32)
    if shape is None:
        shape = [values.size]
    if any(d < 0 for d in shape):
        raise WireError(f"blob has a negative dimension {shape}", start)
    count = 1
    for d in shape:
        count *= d
    if count != values.size:
        raise WireError(f"blob declares shape {shape} ({count} values) but holds {values.size} values", start)
    return values.reshape(shape)


def _decode_layer(buf: memoryview, start: int, end: int, fmt: str, v1_types: dict[int, str]):
    name_field, type_field, blobs_field = {"V2": (1, 2, 7), "V1": (4, 5, 6), "V0": (1, 2, 50)}[fmt]
    name = ""
    layer_type = ""
    blobs: list[np.ndarray] = []
    v0: tuple[int, int] | None = None
    for number, wire_type, a, b in wire.iter_fields(buf, start, end):
        if number == name_field and wire_type == LEN:
            name = bytes(buf[a:b]).decode("utf-8", errors="replace")
        elif number == type_field:
            if wire_type == LEN:
                layer_type = bytes(buf[a:b]).decode("utf-8", errors="replace")
            elif wire_type == VARINT:
                layer_type = v1_types.get(a, f"V1 type {a}")
        elif number == blobs_field and wire_type == LEN:
            blobs.append(_decode_blob(buf, a, b))
        elif fmt == "V1" and number == 1 and wire_type == LEN:
            v0 = (a, b)
    if fmt == "V1" and v0 is not None and not name:
        return _decode_layer(buf, v0[0], v0[1], "V0", v1_types)
    if fmt == "V1" and v0 is not None and not blobs:
        _, _, blobs = _decode_layer(buf, v0[0], v0[1], "V0", v1_types)
    return name, layer_type, blobs


def read_caffemodel(path: str | os.PathLike[str]) -> CaffeModel:
    """Decode the blobs of a binary caffemodel (V2, V1 or V0 layout)."""
    path = str(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 (kept open by the map, see MappedFile)
    except OSError as exc:
        raise ParseError(f"cannot open caffemodel: {exc.strerror}", path) from None
    try:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ParseError("the caffemodel is empty (0 bytes)", path)
        mapped = MappedFile(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        handle.close()
        raise ParseError(f"cannot open caffemodel: {exc.strerror}", path) from None
    except BaseException:
        handle.close()
        raise
    mapped.file = handle
    weakref.finalize(mapped, handle.close)
    mapped.address = np.frombuffer(mapped, np.uint8, count=1).ctypes.data
    buf = memoryview(mapped)
    head = bytes(buf[:16])
    if head.startswith(b"\x89HDF"):
        raise ParseError(
            "this is an HDF5 caffemodel (.caffemodel.h5); convert it to the binary "
            "protobuf format first (pycaffe: net.save('model.caffemodel'))",
            path,
        )
    if _looks_like_text(head):
        raise ParseError(
            "this looks like a text file, not a binary caffemodel; did you swap the "
            "prototxt and the caffemodel arguments?",
            path,
        )
    v1_types = _v1_type_names()
    model = CaffeModel(path=path, format="V2", _keepalive=mapped)
    formats_seen = set()
    has_name = False
    try:
        for number, wire_type, a, b in wire.iter_fields(buf, 0, len(buf)):
            has_name = has_name or (number == 1 and wire_type == LEN)
            if wire_type != LEN or number not in (100, 2):
                continue
            fmt = "V2" if number == 100 else "V1"
            formats_seen.add(fmt)
            name, layer_type, blobs = _decode_layer(buf, a, b, fmt, v1_types)
            if blobs:
                model.blobs[name] = blobs
            model.types[name] = layer_type
    except WireError as exc:
        raise ParseError(
            f"the caffemodel is truncated or corrupt ({exc}); re-download or re-export it",
            path,
        ) from None
    if not formats_seen and not has_name:
        raise ParseError(
            "no layers found: this is not a Caffe NetParameter (a caffemodel); check the file",
            path,
        )
    model.format = "V1" if formats_seen == {"V1"} else "V2"
    return model


def _looks_like_text(head: bytes) -> bool:
    stripped = head.lstrip()
    return bool(stripped) and (stripped[:1] in (b"#", b"{") or stripped[:5] in (b"name:", b"layer", b"input"))


# ----------------------------------------------------------------------------- writing


def _blob_message(array: np.ndarray, style: str, values: str) -> list[bytes | memoryview]:
    """Encode one BlobProto as a list of byte chunks (the payload is not copied)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    parts: list[bytes | memoryview] = []
    if style == "legacy":
        dims = [1] * max(0, 4 - array.ndim) + list(array.shape[-4:])
        for number, dim in zip((1, 2, 3, 4), dims):
            parts.append(wire.varint_field(number, int(dim)))
    else:
        parts.append(wire.len_field(7, wire.packed_varint_field(1, list(array.shape))))
    if values == "packed":
        parts.append(wire.len_header(5, array.nbytes))
        parts.append(memoryview(array).cast("B"))
    elif values == "unpacked":
        records = np.empty(array.size, dtype=[("tag", "u1"), ("value", "<f4")])
        records["tag"] = 0x2D
        records["value"] = array.ravel()
        parts.append(records.tobytes())
    elif values == "double":
        doubles = array.astype("<f8")
        parts.append(wire.len_header(8, doubles.nbytes))
        parts.append(memoryview(doubles).cast("B"))
    else:
        raise ValueError(values)
    return parts


def write_caffemodel(
    path: str | os.PathLike[str],
    layers: Iterable[tuple[str, str, Sequence[np.ndarray]]],
    net_name: str = "",
    *,
    layout: str = "V2",
    blob_style: str = "shape",
    values: str = "packed",
) -> None:
    """Write ``(layer name, type, blobs)`` as a binary caffemodel, atomically.

    ``layout`` is ``V2``, ``V1`` or ``V0``; ``blob_style`` ``shape`` or ``legacy``
    (num/channels/height/width); ``values`` ``packed``, ``unpacked`` or ``double``.
    The defaults produce what current Caffe writes.
    """
    from caffe2onnx.atomic import atomic_output
    from caffe2onnx.upgrade import V1_TYPE_NUMBERS

    with atomic_output(path) as out:
        out.write(wire.string_field(1, net_name or "net"))
        for name, layer_type, blobs in layers:
            blob_parts = [_blob_message(blob, blob_style, values) for blob in blobs]
            if layout == "V2":
                body: list[bytes | memoryview] = [
                    wire.string_field(1, name),
                    wire.string_field(2, layer_type),
                ]
                blob_field = 7
            elif layout == "V1":
                body = [
                    wire.string_field(4, name),
                    wire.varint_field(5, V1_TYPE_NUMBERS.get(layer_type, 0)),
                ]
                blob_field = 6
            elif layout == "V0":
                body = [wire.string_field(1, name), wire.string_field(2, layer_type.lower())]
                blob_field = 50
            else:
                raise ValueError(layout)
            for parts in blob_parts:
                body.append(wire.len_header(blob_field, sum(len(p) for p in parts)))
                body.extend(parts)
            if layout == "V0":
                inner = body
                body = [wire.len_header(1, sum(len(p) for p in inner)), *inner]
            outer_field = 100 if layout == "V2" else 2
            out.write(wire.len_header(outer_field, sum(len(p) for p in body)))
            for part in body:
                out.write(part)
