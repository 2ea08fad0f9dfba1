"""Fuzzing: the prototxt parser, the caffemodel decoder and shape inference never crash.

Inputs are mutations of the real nets in ../shared/corpus and prototxt/ (text edits;
structured edits of every numeric, enum, name, bottom and top field, which drive shape
inference into every corner), mutations of make-weights caffemodels (bit flips, byte
overwrites, truncation, insertion, deletion, duplication) and random bytes. The property:
only :class:`Caffe2OnnxError` ever escapes, and no example hangs (a per-example alarm)
or allocates without bound (an address-space cap over the test's own footprint).

The run is time-boxed: ``CAFFE2ONNX_FUZZ_SECONDS`` (default 30) is shared by the
targets, which run hypothesis in batches until their share is spent. For a long run::

    CAFFE2ONNX_FUZZ_SECONDS=600 python -m pytest -s -q tests/test_fuzz.py

(``-s`` shows how many examples each target ran; ``CAFFE2ONNX_FUZZ_REPORT=file.json``
appends the figures to a file.)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from caffe2onnx.caffemodel import read_caffemodel
from caffe2onnx.errors import Caffe2OnnxError
from caffe2onnx.make_weights import make_weights
from caffe2onnx.parser import LoadOptions, analyze_net_param, build_net, load_net
from caffe2onnx.proto import caffe_pb2
from caffe2onnx.prototxt import parse_prototxt
from tests.helpers import CORPUS, SAMPLES

FUZZ_SECONDS = float(os.environ.get("CAFFE2ONNX_FUZZ_SECONDS", "30"))
TARGETS = ("prototxt_text", "net_fields", "caffemodel_bytes", "random_bytes")
#: one example taking longer than this is a hang
EXAMPLE_SECONDS = 30
#: the address space an example may add to what the process already holds
MEMORY_HEADROOM = 3 << 30
BATCH = settings(
    max_examples=25,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

STATS: dict[str, Counter] = {name: Counter() for name in TARGETS}


# ----------------------------------------------------------------------------- the harness


class FuzzTimeout(Exception):
    """An example ran longer than EXAMPLE_SECONDS: a hang."""


def _on_alarm(signum, frame):
    raise FuzzTimeout(f"one example took more than {EXAMPLE_SECONDS} s")


@contextlib.contextmanager
def _alarm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, EXAMPLE_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize")


@pytest.fixture
def memory_cap():
    """Cap the address space at the current size plus MEMORY_HEADROOM (Linux only)."""
    resource = pytest.importorskip("resource")
    try:
        cap = _address_space() + MEMORY_HEADROOM
    except OSError:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and cap > hard:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def only_own_errors(target: str, fn: Callable[[], object]) -> None:
    """Run one example: success or a Caffe2OnnxError; anything else fails the test."""
    STATS[target]["examples"] += 1
    with _alarm():
        try:
            fn()
        except Caffe2OnnxError as exc:
            STATS[target][type(exc).__name__] += 1
            assert str(exc).strip(), "an error must have a message"
            return
    STATS[target]["ok"] += 1


def run_for(target: str, seconds: float, batch: Callable[[], None]) -> None:
    """Run hypothesis batches until ``seconds`` are spent (at least one batch)."""
    start = time.monotonic()
    batches = 0
    while batches == 0 or time.monotonic() - start < seconds:
        batch()
        batches += 1
    elapsed = time.monotonic() - start
    counts = dict(STATS[target])
    print(f"\nfuzz {target}: {counts.get('examples', 0)} examples in {elapsed:.0f} s: {counts}")
    report = os.environ.get("CAFFE2ONNX_FUZZ_REPORT")
    if report:
        with open(report, "a") as handle:
            handle.write(json.dumps({"target": target, "seconds": round(elapsed, 1), **counts}) + "\n")


def _share() -> float:
    return FUZZ_SECONDS / len(TARGETS)


# ----------------------------------------------------------------------------- the corpus


@cache
def corpus_texts() -> dict[str, str]:
    files = sorted(SAMPLES.glob("*.prototxt"))
    if CORPUS.is_dir():
        files += sorted(CORPUS.glob("*.prototxt"))
    return {path.name: path.read_text(encoding="utf-8", errors="replace") for path in files}


@cache
def corpus_nets() -> dict[str, caffe_pb2.NetParameter]:
    nets = {}
    for name, text in corpus_texts().items():
        with contextlib.suppress(Caffe2OnnxError):
            nets[name] = parse_prototxt(text, name)
    return nets


def build_both_ways(net_param: caffe_pb2.NetParameter, source: str, model=None) -> None:
    """``load_net``'s strict build and ``inspect``'s collecting one (never raises)."""
    options = LoadOptions(require_weights=False)
    analysis = analyze_net_param(net_param, source, model, options)
    for problem in analysis.problems:
        assert isinstance(problem, Caffe2OnnxError), problem
    build_net(net_param, source, model, options)


# ----------------------------------------------------------------------------- prototxt text

TOKENS = [
    "{",
    "}",
    ":",
    '"',
    "'",
    "\n",
    "#",
    "\\",
    "<",
    ">",
    "[",
    "]",
    ",",
    ";",
    "layer {",
    "layers {",
    'layer { name: "x" type: "ReLU" bottom: "x" top: "x" }',
    "${NUM_LABELS}",
    "@LABELS@",
    "{{ n }}",
    "NUM",
    "-1",
    "0",
    "3.5",
    "1e400",
    "nan",
    "-inf",
    "99999999999999999999",
    "0x10",
    "true",
    "MAX",
    '"\\xff"',
    "\u00e9",
    "\x00",
    'bottom: "nope"',
    'top: "data"',
    'type: "Frobnicate"',
    "input_dim: 0",
    "dim: 200000",
    "kernel_size: 0",
    "group: 7",
    "num_output: 0",
    "stride: 0",
    "pad: 99",
    "axis: -9",
    "offset: 99",
]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
NUMBERS = [
    "0",
    "1",
    "2",
    "3",
    "7",
    "-1",
    "-3",
    "65535",
    "2147483647",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "1e30",
    "-1e30",
    "nan",
    "inf",
    "0.5",
    "200000",
    "1000000",
]


@st.composite
def text_edits(draw) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(corpus_texts())))
    text = corpus_texts()[name]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["number", "number", "insert", "delete", "truncate", "swap", "dup"]))
        where = draw(st.integers(0, max(0, len(text) - 1)))
        if kind == "number":
            numbers = list(NUMBER.finditer(text))
            if numbers:
                match = numbers[draw(st.integers(0, len(numbers) - 1))]
                text = text[: match.start()] + draw(st.sampled_from(NUMBERS)) + text[match.end() :]
        elif kind == "insert":
            token = draw(st.sampled_from(TOKENS) | st.text(max_size=6))
            text = text[:where] + token + text[where:]
        elif kind == "delete":
            text = text[:where] + text[where + draw(st.integers(1, 200)) :]
        elif kind == "truncate":
            text = text[:where]
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if kind == "swap":
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines.insert(j, lines[i])
            text = "\n".join(lines)
    return name, text


def test_fuzz_prototxt_text(memory_cap):
    @BATCH
    @given(text_edits())
    def batch(case):
        name, text = case

        def example():
            net = parse_prototxt(text, name)
            build_both_ways(net, name)

        only_own_errors("prototxt_text", example)

    run_for("prototxt_text", _share(), batch)


# ----------------------------------------------------------------------------- net fields

FD = FieldDescriptor
INT_VALUES = {
    FD.CPPTYPE_INT32: [0, 1, 2, 3, 5, 7, 16, 255, 65535, 2**31 - 1, -1, -2, -7, -(2**31)],
    FD.CPPTYPE_UINT32: [0, 1, 2, 3, 5, 7, 16, 255, 65535, 2**31 - 1, 2**32 - 1],
    FD.CPPTYPE_INT64: [0, 1, 2, 3, 7, 224, 200000, 2**31, 2**40, 2**62, -1, -(2**40)],
    FD.CPPTYPE_UINT64: [0, 1, 2, 3, 7, 224, 200000, 2**31, 2**40, 2**64 - 1],
}
FLOAT_VALUES = [0.0, 0.5, 1.0, 3.0, -1.0, 1e-30, 1e30, -1e30, math.nan, math.inf, -math.inf]
STRING_FIELDS = ("bottom", "top", "type", "name", "input")

#: a slot: the path to a scalar field (field name, index or None per step) in a net
Slot = tuple[tuple[tuple[str, int | None], ...], FieldDescriptor]


def _slots(message, prefix=()) -> Iterator[Slot]:
    for fd, value in message.ListFields():
        if fd.cpp_type == FD.CPPTYPE_MESSAGE:
            items = list(value) if fd.is_repeated else [value]
            for i, item in enumerate(items):
                yield from _slots(item, (*prefix, (fd.name, i if fd.is_repeated else None)))
        elif fd.cpp_type == FD.CPPTYPE_STRING and fd.name not in STRING_FIELDS:
            continue
        elif fd.is_repeated:
            for i in range(len(value) + 1):  # len(value): append one more
                yield (*prefix, (fd.name, i)), fd
        else:
            yield (*prefix, (fd.name, None)), fd


@cache
def net_slots(name: str) -> tuple[list[Slot], list[str]]:
    net = corpus_nets()[name]
    names = sorted({n for layer in [*net.layer, *net.layers] for n in (*layer.bottom, *layer.top)})
    names += [*sorted({layer.type for layer in net.layer}), "", "nope", "data"]
    return list(_slots(net)), names


def _value(draw, fd: FieldDescriptor, names: list[str]):
    if fd.cpp_type == FD.CPPTYPE_BOOL:
        return draw(st.booleans())
    if fd.cpp_type == FD.CPPTYPE_ENUM:
        return draw(st.sampled_from([v.number for v in fd.enum_type.values]))
    if fd.cpp_type in (FD.CPPTYPE_FLOAT, FD.CPPTYPE_DOUBLE):
        return draw(st.sampled_from(FLOAT_VALUES) | st.floats(-100, 100))
    if fd.cpp_type == FD.CPPTYPE_STRING:
        return draw(st.sampled_from(names))
    return draw(st.sampled_from(INT_VALUES[fd.cpp_type]) | st.integers(0, 64))


def _set(net: caffe_pb2.NetParameter, path, fd: FieldDescriptor, value) -> None:
    message = net
    for field_name, index in path[:-1]:
        message = getattr(message, field_name)
        if index is not None:
            message = message[index]
    field_name, index = path[-1]
    if index is None:
        setattr(message, field_name, value)
        return
    values = getattr(message, field_name)
    if index < len(values):
        if value == "" and fd.cpp_type == FD.CPPTYPE_STRING:
            del values[index]  # drop a bottom/top
        else:
            values[index] = value
    else:
        values.append(value)


@st.composite
def field_edits(draw) -> tuple[str, list[tuple[str, object]]]:
    name = draw(st.sampled_from(sorted(corpus_nets())))
    slots, names = net_slots(name)
    edits = []
    for _ in range(draw(st.integers(1, 6))):
        path, fd = slots[draw(st.integers(0, len(slots) - 1))]
        edits.append((path, fd, _value(draw, fd, names)))
    return name, edits


def test_fuzz_net_fields_through_shape_inference(memory_cap):
    @BATCH
    @given(field_edits())
    def batch(case):
        name, edits = case
        net = caffe_pb2.NetParameter()
        net.CopyFrom(corpus_nets()[name])
        for path, fd, value in edits:
            with contextlib.suppress(ValueError, TypeError, IndexError):  # out of the field's range
                _set(net, path, fd, value)
        only_own_errors("net_fields", lambda: build_both_ways(net, name))

    run_for("net_fields", _share(), batch)


# ----------------------------------------------------------------------------- caffemodel bytes

MODEL_NETS = ("lenet_sample.prototxt", "decoder_bilinear_fcn_deconv.prototxt", "enet_style.prototxt")


@pytest.fixture(scope="module")
def caffemodels(tmp_path_factory) -> dict[str, tuple[Path, bytes]]:
    directory = tmp_path_factory.mktemp("fuzz_models")
    result = {}
    for net_name in MODEL_NETS:
        prototxt = SAMPLES / net_name
        for layout in ("V2", "V1"):
            path = directory / f"{prototxt.stem}_{layout}.caffemodel"
            make_weights(prototxt, path, seed=1, layout=layout)
            result[path.name] = (prototxt, path.read_bytes())
    return result


@st.composite
def byte_edits(draw, originals: dict[str, tuple[Path, bytes]]) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(originals)))
    data = bytearray(originals[name][1])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "flip", "overwrite", "truncate", "insert", "delete", "dup"]))
        where = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=10) | st.sampled_from([b"\xff" * 10, b"\x80" * 10]))
            data[where : where + len(chunk)] = chunk
        elif kind == "truncate":
            del data[where:]
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 64))]
        else:
            size = draw(st.integers(1, 256))
            data[where:where] = data[where : where + size]
    return name, bytes(data)


def _model_example(directory: Path, prototxt: Path | None, data: bytes) -> Callable[[], None]:
    def example() -> None:
        path = directory / f"m{next(_COUNTER)}.caffemodel"  # a new file: old maps stay valid
        path.write_bytes(data)
        try:
            model = read_caffemodel(path)
            assert isinstance(model.blobs, dict)
            if prototxt is not None:
                load_net(prototxt, model)
                analysis_net = corpus_nets().get(prototxt.name) or parse_prototxt(prototxt.read_text())
                analyze_net_param(analysis_net, str(prototxt), model, LoadOptions(require_weights=False))
        finally:
            path.unlink()

    return example


_COUNTER = itertools.count()


def test_fuzz_caffemodel_bytes(memory_cap, caffemodels, tmp_path):
    @BATCH
    @given(byte_edits(caffemodels))
    def batch(case):
        name, data = case
        prototxt = caffemodels[name][0]
        only_own_errors("caffemodel_bytes", _model_example(tmp_path, prototxt, data))

    run_for("caffemodel_bytes", _share(), batch)


# ----------------------------------------------------------------------------- random bytes


def test_fuzz_random_bytes(memory_cap, tmp_path):
    @BATCH
    @given(st.binary(max_size=4096), st.text(max_size=512))
    def batch(data, text):
        only_own_errors("random_bytes", _model_example(tmp_path, None, data))
        only_own_errors("random_bytes", lambda: build_both_ways(parse_prototxt(data), "<bytes>"))
        only_own_errors("random_bytes", lambda: build_both_ways(parse_prototxt(text), "<text>"))

    run_for("random_bytes", _share(), batch)
