"""Read a prototxt (protobuf text format) into a ``NetParameter``.

The schema is caffe2onnx's own ``caffe.proto``, which knows the field names of BVLC
Caffe and of the common forks. Errors are turned into :class:`ParseError` with
``file:line:col`` (both 1-based), the offending source line and a hint for the usual
causes: unresolved template placeholders (``${NUM_LABELS}``), fork-only fields, enum
values that do not exist (the valid ones are listed), negative or out-of-range numbers,
and a binary caffemodel given by mistake.

:func:`layer_lines` finds the line of every top-level ``layer``/``layers`` block, so that
errors about a layer can name its line.
"""

from __future__ import annotations

import os
import re

from google.protobuf import text_format

from caffe2onnx.errors import ParseError
from caffe2onnx.proto import caffe_pb2

_LOCATION = re.compile(r"^(\d+):(\d+) : (.*)$", re.S)
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}|\$[A-Z_][A-Z0-9_]*\b|@[A-Za-z_]+@|\{\{[^}]*\}\}|<%[^%]*%>")
_NO_FIELD = re.compile(r'Message type "caffe2onnx\.(\w+)" has no field named "(\w+)"')
_NO_ENUM = re.compile(r'Enum type "([\w.]+)" has no value named (\S+?)\.?$')
_REPEATED = re.compile(r'Message type "caffe2onnx\.(\w+)" should not have multiple "(\w+)" fields')
_BAD_NUMBER = re.compile(
    r"Couldn't parse (?:integer|float|number|bool|boolean)|Expected (?:integer|number|float)"
)
_OUT_OF_RANGE = re.compile(r"Value out of range: (\S+)")
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[^\s:{}<>\[\],;]+')

#: a net definition is text of a few MiB at most; parsing text format is slow
MAX_PROTOTXT_BYTES = 64 * 1024 * 1024


def read_prototxt(path: str | os.PathLike[str]) -> caffe_pb2.NetParameter:
    """Parse a prototxt file; errors name the file, line and column."""
    return read_prototxt_text(path)[0]


def read_prototxt_text(path: str | os.PathLike[str]) -> tuple[caffe_pb2.NetParameter, str]:
    """Parse a prototxt file; return the net and its decoded text."""
    path = os.fspath(path)
    try:
        if os.path.isdir(path):
            raise ParseError("is a directory, not a prototxt file", path)
        size = os.path.getsize(path)
        if size > MAX_PROTOTXT_BYTES:
            raise ParseError(
                f"the prototxt is {size / 2**20:.0f} MiB; a net definition is text of a few MiB "
                "at most (is this a caffemodel?)",
                path,
            )
        with open(path, "rb") as handle:
            raw = handle.read(MAX_PROTOTXT_BYTES + 1)
    except OSError as exc:
        raise ParseError(f"cannot read prototxt: {exc.strerror or exc}", path) from None
    text = _decode(raw, path)
    return parse_prototxt(text, path), text


def _decode(raw: bytes, path: str) -> str:
    if b"\x00" in raw[:4096]:
        raise ParseError(
            "this is a binary file, not a prototxt (did you swap the prototxt and the caffemodel arguments?)",
            path,
        )
    if not raw.strip():
        raise ParseError("the prototxt is empty", path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_prototxt(raw: bytes | str, path: str = "<string>") -> caffe_pb2.NetParameter:
    """Parse prototxt text (bytes or str)."""
    text = _decode(raw, path) if isinstance(raw, bytes) else raw
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        raise _explain(exc, text, path) from None
    except RecursionError:
        raise ParseError("cannot parse: the blocks are nested too deeply", path) from None
    except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
        raise ParseError(f"cannot parse: {exc}", path) from None
    return net


def layer_lines(text: str) -> list[int]:
    """The 1-based line of every top-level ``layer``/``layers`` block, in file order.

    Comments and strings are skipped; ``text`` is a prototxt that parsed.
    """
    lines: list[int] = []
    depth = 0
    line = 1
    expect_block = False
    for match in re.finditer(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[{}<>\n]|\w+', text):
        token = match.group(0)
        if token == "\n":
            line += 1
        elif token[0] in "#\"'":
            continue
        elif token in ("{", "<"):
            if depth == 0 and expect_block:
                lines.append(expect_block)
            depth += 1
            expect_block = False
        elif token in ("}", ">"):
            depth -= 1
        elif depth == 0:
            expect_block = line if token in ("layer", "layers") else False
    return lines


def _explain(exc: text_format.ParseError, text: str, path: str) -> ParseError:
    message = str(exc)
    line = exc.GetLine()
    column = exc.GetColumn()
    match = _LOCATION.match(message)
    if match:
        line, column, message = int(match.group(1)), int(match.group(2)), match.group(3)
    message = re.sub(r"^'.*?': ", "", message, flags=re.S).strip()
    lines = text.splitlines()
    source_line = lines[line - 1] if line is not None and 0 < line <= len(lines) else ""
    token = _token_at(source_line, column)
    hint = ""
    placeholder = _PLACEHOLDER.search(source_line)
    if placeholder:
        message = f"unresolved template placeholder {placeholder.group(0)}"
        hint = (
            "this prototxt is a template: substitute its placeholders with real values "
            "(e.g. with the script that came with it, or sed) and convert the result"
        )
    elif no_field := _NO_FIELD.search(message):
        message = f"unknown field '{no_field.group(2)}' in {no_field.group(1)}"
        hint = (
            "caffe2onnx does not know this field (a typo, or a parameter of a Caffe fork "
            "it does not support); fix or remove it, or support the layer with a plugin"
        )
    elif no_enum := _NO_ENUM.search(message):
        valid = _enum_values(no_enum.group(1))
        message = f"'{no_enum.group(2)}' is not a valid value here"
        hint = f"valid values: {', '.join(valid)}" if valid else ""
    elif repeated := _REPEATED.search(message):
        message = f"field '{repeated.group(2)}' of {repeated.group(1)} is given twice; it takes one value"
        hint = "remove one of them"
    elif out_of_range := _OUT_OF_RANGE.search(message):
        value = out_of_range.group(1)
        if value.startswith("-"):
            hint = "this field cannot be negative (sizes, strides, pads and counts are unsigned)"
        else:
            hint = "the value is too large for this field (32-bit)"
    elif _BAD_NUMBER.search(message):
        if token and re.fullmatch(r"[A-Za-z_]\w*", token):
            message = f"a number is expected here, got '{token}'"
            hint = "if this word is a placeholder of a template, substitute it with a value first"
        elif token and re.fullmatch(r"[-+]?\d*\.\d*(e[-+]?\d+)?", token, re.I):
            hint = "this field takes an integer"
    text_out = message
    if source_line.strip():
        text_out += f"\n    {source_line.strip()[:200]}"
    if hint:
        text_out += f"\n  {hint}"
    return ParseError(text_out, path, line, column)


def _token_at(source_line: str, column: int | None) -> str:
    if not column or column < 1:
        return ""
    match = _TOKEN.match(source_line, column - 1)
    return match.group(0) if match else ""


def _enum_values(full_name: str) -> list[str]:
    try:
        enum = caffe_pb2.DESCRIPTOR.pool.FindEnumTypeByName(full_name)
    except KeyError:
        return []
    return [value.name for value in enum.values]
