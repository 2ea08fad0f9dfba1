"""Read a prototxt (protobuf text format) into a ``NetParameter``.

The schema is caffe2onnx's own ``caffe.proto``, which knows the field names of BVLC
Caffe and of the common forks. Errors are turned into :class:`ParseError` with
``file:line:col``, with a hint for the usual causes: unresolved template placeholders
(``${NUM_LABELS}``), fork-only fields, and a binary caffemodel given by mistake.
"""

from __future__ import annotations

import os
import re

from google.protobuf import text_format

from caffe2onnx.errors import ParseError
from caffe2onnx.proto import caffe_pb2

_LOCATION = re.compile(r"^(\d+):(\d+) : (.*)$", re.S)
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}|@[A-Z_]+@|\{\{[^}]*\}\}")
_NO_FIELD = re.compile(r'Message type "caffe2onnx\.(\w+)" has no field named "(\w+)"')
_BAD_NUMBER = re.compile(
    r"Couldn't parse (?:integer|float|number|bool|boolean)|Expected (?:integer|number|float)"
)

MAX_PROTOTXT_BYTES = 256 * 1024 * 1024


def read_prototxt(path: str | os.PathLike[str]) -> caffe_pb2.NetParameter:
    """Parse a prototxt file; errors name the file, line and column."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_PROTOTXT_BYTES:
            raise ParseError(
                f"the prototxt is {size / 2**20:.0f} MiB; a net definition is text of a few MiB "
                "at most (is this a caffemodel?)",
                path,
            )
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ParseError(f"cannot read prototxt: {exc.strerror}", path) from None
    return parse_prototxt(raw, path)


def parse_prototxt(raw: bytes | str, path: str = "<string>") -> caffe_pb2.NetParameter:
    """Parse prototxt text (bytes or str)."""
    if isinstance(raw, bytes):
        if b"\x00" in raw[:4096]:
            raise ParseError(
                "this is a binary file, not a prototxt (did you swap the prototxt and the "
                "caffemodel arguments?)",
                path,
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    else:
        text = raw
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        raise _explain(exc, text, path) from None
    except (ValueError, RecursionError) as exc:  # e.g. too deeply nested input
        raise ParseError(f"cannot parse: {exc}", path) from None
    return net


def _explain(exc: text_format.ParseError, text: str, path: str) -> ParseError:
    message = str(exc)
    line = exc.GetLine()
    column = exc.GetColumn()
    match = _LOCATION.match(message)
    if match:
        line, column, message = int(match.group(1)), int(match.group(2)), match.group(3)
    message = re.sub(r"^'.*?': ", "", message)
    source_line = ""
    if line is not None and 0 < line <= text.count("\n") + 1:
        source_line = text.splitlines()[line - 1] if text.splitlines() else ""
    hint = ""
    placeholder = _PLACEHOLDER.search(source_line)
    if placeholder:
        message = f"unresolved template placeholder {placeholder.group(0)}"
        hint = (
            "this prototxt is a template: substitute its placeholders with real values "
            "(e.g. the script that came with it, or sed) and convert the result"
        )
    elif _BAD_NUMBER.search(message) and re.search(r":\s*[A-Za-z_]\w*\s*$", source_line):
        hint = "a number is expected here; if this word is a placeholder of a template, substitute it first"
    else:
        no_field = _NO_FIELD.search(message)
        if no_field:
            message = f"unknown field '{no_field.group(2)}' in {no_field.group(1)}"
            hint = (
                "caffe2onnx does not know this field (a typo, or a parameter of a Caffe fork "
                "it does not support); fix or remove it, or support the layer with a plugin"
            )
    text_out = message.strip()
    if source_line.strip():
        text_out += f"\n    {source_line.strip()}"
    if hint:
        text_out += f"\n  {hint}"
    return ParseError(text_out, path, line, column)
