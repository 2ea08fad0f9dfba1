"""Stream an ONNX model to disk without ever building its full protobuf in memory.

A model is written in two parts:

* the *skeleton*: the ModelProto with every small initializer but without the large
  ones, serialized by protobuf (kilobytes to a few megabytes);
* each large initializer as a ``TensorProto`` appended to the graph: its header (name,
  dims, type) serialized by protobuf, then its ``raw_data`` bytes straight from the numpy
  buffer. Weights that sit unchanged in the caffemodel (``caffemodel.file_region``) are
  copied by the kernel from that file (``copy_file_range``/``sendfile``): they never pass
  through Python or count in the process's memory.

Protobuf parsers accept the fields of a message in any order and concatenate repeated
fields, so a graph whose ``initializer`` entries follow its nodes is exactly the model
the skeleton plus those initializers describe. Every message is length-prefixed, so all
lengths are computed from the tensors' sizes before the first byte is written.

External data (ONNX ``data_location: EXTERNAL``): the payloads go to one companion file
beside the model, each at a 4096-byte aligned offset (ONNX Runtime can memory-map
them); the model's tensors name that file, its offset and length. A protobuf message
cannot exceed 2 GiB, so larger models must use it (``PROTOBUF_LIMIT``).

Both files are written atomically (temporary files renamed when complete): a failure
or Ctrl-C leaves no partial output.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from caffe2onnx import wire
from caffe2onnx.atomic import atomic_output, check_output_dir
from caffe2onnx.caffemodel import file_region, release
from caffe2onnx.errors import OutputError
from caffe2onnx.progress import Progress

PROTOBUF_LIMIT = (1 << 31) - 1  # the largest message protobuf parses
ALIGNMENT = 4096  # of each tensor in an external data file
_CHUNK = 64 << 20  # bytes per write/copy call (progress granularity)
_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer
_RAW_DATA_FIELD = 9  # TensorProto.raw_data


@dataclass(frozen=True)
class _Entry:
    name: str
    array: np.ndarray
    header: bytes  # the serialized TensorProto up to (not including) the payload
    size: int  # the serialized TensorProto's length, payload included when inline
    offset: int = -1  # in the external data file


def little_endian(array: np.ndarray) -> np.ndarray:
    """``array`` as a C-contiguous little-endian array (a view when it already is one)."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not np.little_endian):
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def tensor_type(array: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(array.dtype)


def _header(name: str, array: np.ndarray, external: tuple[str, int] | None = None) -> bytes:
    tensor = TensorProto(name=name, dims=array.shape, data_type=tensor_type(array))
    if external is not None:
        location, offset = external
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
    return tensor.SerializeToString()


def _entries(payloads: Sequence[tuple[str, np.ndarray]], location: str | None) -> list[_Entry]:
    entries = []
    offset = 0
    for name, array in payloads:
        array = little_endian(array)
        if location is None:
            header = _header(name, array) + wire.len_header(_RAW_DATA_FIELD, array.nbytes)
            entries.append(_Entry(name, array, header, len(header) + array.nbytes))
        else:
            offset = -(-offset // ALIGNMENT) * ALIGNMENT
            header = _header(name, array, (location, offset))
            entries.append(_Entry(name, array, header, len(header), offset))
            offset += array.nbytes
    return entries


def _message_size(length: int) -> int:
    """Bytes of a length-delimited field with a one-byte key and ``length`` bytes of payload."""
    return 1 + len(wire.encode_varint(length)) + length


def _split(skeleton: onnx.ModelProto) -> tuple[bytes, bytes]:
    """(the model without its graph, the graph) serialized."""
    head = onnx.ModelProto()
    head.CopyFrom(skeleton)
    head.ClearField("graph")
    return head.SerializeToString(), skeleton.graph.SerializeToString()


def inline_size(skeleton: onnx.ModelProto, payloads: Sequence[tuple[str, np.ndarray]]) -> int:
    """The size of the model file with every payload inline (no external data)."""
    head, graph = _split(skeleton)
    graph_length = len(graph) + sum(_message_size(e.size) for e in _entries(payloads, None))
    return len(head) + _message_size(graph_length)


def external_data_name(output: str | os.PathLike[str]) -> str:
    """The companion data file's name for ``output``: its base name + ``.data``, with any
    character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (a plain, relative file name
    in the model's directory, as ONNX requires; never a path)."""
    base = os.path.basename(os.fspath(output)) or "model"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "model"
    return safe + ".data"


def _check_data_path(data_path: str, output: str, protected: Sequence[str]) -> None:
    if os.path.abspath(data_path) == os.path.abspath(output):
        raise OutputError(f"{output}: the external data file would be the model file itself")
    if os.path.islink(data_path) or (os.path.exists(data_path) and not os.path.isfile(data_path)):
        raise OutputError(
            f"{data_path}: the external data file of {output} would replace this, which is not "
            "a regular file; move it or choose another output name"
        )
    for other in protected:
        if os.path.exists(data_path) and os.path.exists(other) and os.path.samefile(data_path, other):
            raise OutputError(
                f"{data_path}: the external data file of {output} would overwrite an input of the "
                "conversion; choose another output name"
            )
    check_output_dir(data_path)


class _Sink:
    """Writes bytes, arrays and caffemodel regions to a file descriptor, in order."""

    def __init__(self, fd: int, progress: Progress) -> None:
        self.fd = fd
        self.progress = progress
        self.position = 0
        self._pending = bytearray()
        self._kernel_copy = hasattr(os, "copy_file_range") or hasattr(os, "sendfile")

    def write_bytes(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= 1 << 20:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._write(memoryview(self._pending))
            self._pending = bytearray()

    def pad_to(self, offset: int) -> None:
        self.write_bytes(b"\0" * (offset - self.position - len(self._pending)))

    def array(self, array: np.ndarray) -> None:
        self.flush()
        region = file_region(array) if self._kernel_copy else None
        if region is not None and self._copy(*region, array.nbytes):
            return
        data = memoryview(array.reshape(-1)).cast("B") if array.size else memoryview(b"")
        for start in range(0, len(data), _CHUNK):
            self._write(data[start : start + _CHUNK])
            self.progress.update(min(_CHUNK, len(data) - start))
        release(array)  # a caffemodel view written through memory: drop its pages again

    def _write(self, data: memoryview) -> None:
        while len(data):
            written = os.write(self.fd, data)
            data = data[written:]
            self.position += written

    def _copy(self, source: int, offset: int, count: int) -> bool:
        """Copy ``count`` bytes of file ``source`` from ``offset`` in the kernel; False if
        this system cannot (nothing is written then)."""
        done = 0
        while done < count:
            step = min(_CHUNK, count - done)
            try:
                n = self._kernel_step(source, offset + done, step)
            except OSError:
                if done:
                    raise
                self._kernel_copy = False
                return False
            if n <= 0:
                raise OutputError(f"the caffemodel ended early while copying {count} bytes from it")
            done += n
            self.position += n
            self.progress.update(n)
        return True

    def _kernel_step(self, source: int, offset: int, count: int) -> int:
        if hasattr(os, "copy_file_range"):
            try:
                return os.copy_file_range(source, self.fd, count, offset)
            except OSError:
                if not hasattr(os, "sendfile"):
                    raise
        return os.sendfile(self.fd, source, offset, count)


def write_model(
    path: str | os.PathLike[str],
    skeleton: onnx.ModelProto,
    payloads: Sequence[tuple[str, np.ndarray]],
    *,
    external_data: bool = False,
    protected: Sequence[str] = (),
    progress: Progress | None = None,
) -> str | None:
    """Write ``skeleton`` plus ``payloads`` (initializers) to ``path``, atomically.

    With ``external_data`` the payloads go to ``external_data_name(path)`` beside it
    (refused if that would replace one of the ``protected`` files, e.g. the inputs);
    return that file's path, or None.
    """
    path = os.fspath(path)
    progress = progress or Progress()
    location = external_data_name(path) if external_data else None
    data_path = os.path.join(os.path.dirname(os.path.abspath(path)), location) if location else None
    if data_path:
        _check_data_path(data_path, path, protected)
    head, graph = _split(skeleton)
    entries = _entries(payloads, location)
    graph_length = len(graph) + sum(_message_size(e.size) for e in entries)
    if location is None and len(head) + _message_size(graph_length) > PROTOBUF_LIMIT:
        raise OutputError(
            f"{path}: the model is over 2 GiB, more than one protobuf file can hold; write its "
            "weights as external data"
        )
    with contextlib.ExitStack() as stack:
        model_file = stack.enter_context(atomic_output(path))
        data_file = stack.enter_context(atomic_output(data_path)) if data_path else None
        model = _Sink(model_file.fileno(), progress)
        model.write_bytes(head)
        model.write_bytes(wire.len_header(_GRAPH_FIELD, graph_length))
        model.write_bytes(graph)
        data = _Sink(data_file.fileno(), progress) if data_file else None
        for entry in entries:
            model.write_bytes(wire.len_header(_INITIALIZER_FIELD, entry.size))
            model.write_bytes(entry.header)
            if data is None:
                model.array(entry.array)
            else:
                data.pad_to(entry.offset)
                data.array(entry.array)
        model.flush()
        if data is not None:
            data.flush()
        # Leaving the stack renames the data file first, then the model.
    return data_path
