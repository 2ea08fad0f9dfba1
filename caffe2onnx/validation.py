"""Prove an ONNX model computes what the Caffe net computes, blob by blob.

The ONNX model (ours or any other converter's) runs in onnxruntime with every tensor
that carries a Caffe blob name exposed as an extra output; a reference runs the Caffe
net on the same inputs: the PyTorch reference (``torch_ref``), OpenCV's own Caffe
importer (``opencv_ref``), or both. Each paired tensor is compared with

* ``max_abs = max |onnx - ref|``,
* ``max_rel = max_abs / max |ref|`` (error relative to the blob's own magnitude, which
  stays meaningful where individual values pass through zero) and
* the cosine similarity of the two tensors,

and passes when ``max_abs <= atol + rtol * max |ref|``. The first failing tensor in layer
order names the layer where the two diverge.

Pairing. Net inputs and outputs are matched to the ONNX graph's inputs and outputs by
name, or by order (with a warning) when the names differ, as they do in files other
converters write. Intermediate tensors are compared wherever an ONNX tensor has the
name of an IR tensor (ours keep Caffe blob names; the last version of an in-place blob
has the plain name, earlier versions ``blob@layer``). In a model without those
``blob@layer`` names (another converter's), a tensor named like an in-place blob may hold
any of its versions (e.g. the convolution output before an in-place ReLU), so each
version is tried before calling it a divergence.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from caffe2onnx.inputs import ValidationInputError, fmt_shape, random_feed
from caffe2onnx.ir import Layer, Net

log = logging.getLogger(__name__)

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-6
REFERENCES = ("pytorch", "opencv")

#: progress(done, total, label) is called after every unit of work
ProgressCallback = Callable[[int, int, str], None]


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class BlobComparison:
    """One tensor of the net compared with one reference (the worst over all seeds)."""

    tensor: str
    layer: str
    layer_type: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    passed: bool
    cosine: float = 1.0
    reference: str = "pytorch"
    onnx_name: str = ""
    depth: int = 0
    output: bool = False

    @classmethod
    def of(
        cls,
        layer: Layer,
        top: str,
        ours: np.ndarray,
        ref: np.ndarray,
        *,
        rtol: float,
        atol: float,
        reference: str = "pytorch",
        depth: int = 0,
        output: bool = False,
    ) -> BlobComparison:
        """Compare one blob (``ours`` against the reference ``ref``) of ``layer``."""
        max_abs, max_rel, passed = compare_arrays(ours, ref, rtol, atol)
        return cls(
            top, layer.name, layer.type, tuple(np.shape(ref)), max_abs, max_rel, passed,
            cosine_similarity(ours, ref), reference, top, depth, output,
        )  # fmt: skip

    def cells(self, *, with_reference: bool, onnx_label: str = "") -> list[str]:
        """The row of the report tables: layer, type, blob, shape, errors, cosine, verdict."""
        blob = self.tensor
        if self.onnx_name and self.onnx_name != self.tensor:
            blob = f"{self.tensor} ({onnx_label}{self.onnx_name})"
        cells = [
            self.layer,
            self.layer_type,
            blob,
            fmt_shape(self.shape),
            _fmt(self.max_abs),
            _fmt(self.max_rel),
            f"{self.cosine:.6f}" if math.isfinite(self.cosine) else str(self.cosine),
        ]
        if with_reference:
            cells.append(self.reference)
        cells.append("ok" if self.passed else "FAIL")
        return cells

    def worst(self, other: BlobComparison) -> BlobComparison:
        """Combine the comparisons of two seeds: the larger errors, the lower cosine."""
        return replace(
            self,
            max_abs=_nanmax(self.max_abs, other.max_abs),
            max_rel=_nanmax(self.max_rel, other.max_rel),
            cosine=_nanmin(self.cosine, other.cosine),
            passed=self.passed and other.passed,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "type": self.layer_type,
            "blob": self.tensor,
            "onnx_tensor": self.onnx_name or self.tensor,
            "shape": list(self.shape),
            "depth": self.depth,
            "reference": self.reference,
            "max_abs": _json_float(self.max_abs),
            "max_rel": _json_float(self.max_rel),
            "cosine": _json_float(self.cosine),
            "passed": self.passed,
            "output": self.output,
        }


def _nanmax(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _nanmin(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


@dataclass
class ValidationReport:
    rows: list[BlobComparison]
    rtol: float
    atol: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    references: tuple[str, ...] = ("pytorch",)
    seeds: tuple[int, ...] = (0,)
    batch: int | None = None
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    matched_by: str = "name"
    prototxt: str = ""
    caffemodel: str = ""
    onnx: str = ""

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows) and bool(self.rows)

    @property
    def first_failure(self) -> BlobComparison | None:
        return next((row for row in self.rows if not row.passed), None)

    def first_failures(self) -> dict[str, BlobComparison | None]:
        """The first diverging tensor against each reference."""
        return {
            ref: next((r for r in self.rows if r.reference == ref and not r.passed), None)
            for ref in self.references
        }

    @property
    def max_rel(self) -> float:
        return max((row.max_rel for row in self.rows), default=0.0)

    @property
    def max_abs(self) -> float:
        return max((row.max_abs for row in self.rows), default=0.0)

    def table(self) -> str:
        several = len(self.references) > 1
        headers = ["layer", "type", "blob", "shape", "max abs", "max rel", "cosine"]
        if several:
            headers.append("reference")
        headers.append("")
        lines = []
        for row in self.rows:
            lines.append(row.cells(with_reference=several))
        widths = [
            max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)
        ]
        out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
        out.append("  ".join("-" * w for w in widths).rstrip())
        out.extend("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
        return "\n".join(out)

    def summary(self) -> str:
        if not self.rows:
            return "FAIL: no blobs were compared"
        head = (
            f"{len(self.rows)} blobs compared against {' and '.join(self.references)}"
            f" ({len(self.seeds)} input set{'s' if len(self.seeds) != 1 else ''}), "
            f"max abs error {_fmt(self.max_abs)}, max rel error {_fmt(self.max_rel)} "
            f"(rtol {self.rtol:g}, atol {self.atol:g})"
        )
        if self.passed:
            return f"PASS: {head}"
        lines = [f"FAIL: {head}"]
        for ref, row in self.first_failures().items():
            if row is None:
                continue
            against = f" [vs {ref}]" if len(self.references) > 1 else ""
            lines.append(
                f"first divergence: layer '{row.layer}' ({row.layer_type}), blob '{row.tensor}'{against}: "
                f"max abs {_fmt(row.max_abs)}, max rel {_fmt(row.max_rel)}, cosine {row.cosine:.6f}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (non-finite errors become ``null``)."""
        first = self.first_failure
        return {
            "format": "caffe2onnx-validation/1",
            "passed": self.passed,
            "verdict": "PASS" if self.passed else "FAIL",
            "prototxt": self.prototxt,
            "caffemodel": self.caffemodel,
            "onnx": self.onnx,
            "references": list(self.references),
            "rtol": self.rtol,
            "atol": self.atol,
            "seeds": list(self.seeds),
            "batch": self.batch,
            "inputs": self.inputs,
            "matched_by": self.matched_by,
            "blobs_compared": len(self.rows),
            "max_abs": _json_float(self.max_abs),
            "max_rel": _json_float(self.max_rel),
            "first_divergence": first.to_dict() if first else None,
            "first_divergence_by_reference": {
                ref: row.to_dict() if row else None for ref, row in self.first_failures().items()
            },
            "rows": [row.to_dict() for row in self.rows],
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------- metrics


def compare_arrays(
    actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float
) -> tuple[float, float, bool]:
    """(max_abs, max_rel, passed) of ``actual`` against the reference ``expected``."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf, math.inf, False
    if a.size == 0:
        return 0.0, 0.0, True
    finite = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), finite) or not np.array_equal(a[~finite], b[~finite]):
        return math.inf, math.inf, False
    diff = np.abs(a[finite] - b[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(b[finite]).max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return max_abs, max_rel, max_abs <= atol + rtol * scale


def cosine_similarity(actual: np.ndarray, expected: np.ndarray) -> float:
    """Cosine of the angle between the flattened tensors (1 = same direction); NaN if unusable."""
    a = np.asarray(actual, dtype=np.float64).ravel()
    b = np.asarray(expected, dtype=np.float64).ravel()
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def random_inputs(net: Net, seed: int = 0, batch: int | None = None) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every net input."""
    shapes = [(name, (batch, *shape[1:]) if batch is not None else shape) for name, shape in net.inputs]
    return random_feed(shapes, seed)


# ----------------------------------------------------------------------------- onnxruntime

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


class OnnxRunner:
    """One onnxruntime session for a model, with the named intermediate tensors exposed."""

    def __init__(
        self, model: onnx.ModelProto, extra_outputs: Sequence[str] = (), model_dir: str | None = None
    ) -> None:
        """``model_dir`` is where the model's external data files live (for large models)."""
        import onnxruntime as ort

        produced = {o for node in model.graph.node for o in node.output}
        existing = {o.name for o in model.graph.output}
        wanted = list(dict.fromkeys(n for n in extra_outputs if n in produced and n not in existing))
        if wanted:
            model = _with_outputs(model, wanted)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            if _uses_external_data(model) or model.ByteSize() > _SERIALIZE_LIMIT:
                self.session = _session_from_file(model, model_dir, options)
            else:
                self.session = ort.InferenceSession(
                    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValidationInputError(f"onnxruntime cannot load the ONNX model: {exc}") from exc
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._dtypes = {i.name: _ORT_TYPES.get(i.type) for i in self.session.get_inputs()}

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ready = {}
        for name, dtype in self._dtypes.items():
            value = np.asarray(feed[name])
            ready[name] = value.astype(dtype) if dtype is not None and value.dtype != dtype else value
        try:
            values = self.session.run(self.output_names, ready)
        except Exception as exc:
            raise ValidationInputError(f"onnxruntime failed to run the ONNX model: {exc}") from exc
        return dict(zip(self.output_names, values))


_SERIALIZE_LIMIT = 2**31 - 2**24  # protobuf cannot serialize a message of 2 GiB or more


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _session_from_file(model: onnx.ModelProto, model_dir: str | None, options):
    """A session for a model too large to pass to onnxruntime as bytes, via a temporary file."""
    import tempfile

    import onnxruntime as ort

    if _uses_external_data(model):
        # The graph must sit beside its external data files (named relative to it).
        fd, path = tempfile.mkstemp(suffix=".onnx", dir=model_dir or ".")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(model.SerializeToString())
            return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        finally:
            os.unlink(path)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save(save_as_external_data=True) rewrites the tensors it saves
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "model.onnx")
        onnx.save(copy, path, save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(
    model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], extra_outputs: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Run a model in onnxruntime, also returning the named intermediate tensors."""
    return OnnxRunner(model, extra_outputs).run(inputs)


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for name in names:
        copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


# ----------------------------------------------------------------------------- pairing


@dataclass
class Pairing:
    """Which ONNX tensor stands for which IR tensor."""

    inputs: dict[str, str]  # net input -> ONNX graph input
    outputs: dict[str, str]  # IR output tensor -> ONNX graph output
    blobs: dict[str, str]  # IR intermediate tensor -> ONNX tensor of the same name
    versions: dict[str, list[str]]  # IR tensor -> other versions of its Caffe blob to try
    matched_by: str = "name"
    notes: list[str] = field(default_factory=list)

    def onnx_names(self) -> list[str]:
        return list(dict.fromkeys([*self.outputs.values(), *self.blobs.values()]))


def _onnx_inputs(model: onnx.ModelProto) -> list[tuple[str, tuple[int | None, ...] | None]]:
    """The graph inputs that are not initializers, with static dims (None where symbolic)."""
    initializers = {init.name for init in model.graph.initializer}
    result = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            result.append((value.name, None))
            continue
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim
        )
        result.append((value.name, dims))
    return result


def _fmt_dims(dims: tuple[int | None, ...] | None) -> str:
    if dims is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in dims) if dims else "scalar"


def _describe(items: Sequence[tuple[str, Any]], fmt: Callable[[Any], str]) -> str:
    return ", ".join(f"'{name}' {fmt(shape)}" for name, shape in items) or "none"


def pair_model(net: Net, model: onnx.ModelProto, feed_shapes: Mapping[str, tuple[int, ...]]) -> Pairing:
    """Pair the net's inputs, outputs and blobs with the model's tensors; exit-2 errors on misfits."""
    notes: list[str] = []
    onnx_inputs = _onnx_inputs(model)
    net_inputs = [(name, tuple(feed_shapes[name])) for name in net.input_names]
    both = (
        f"the ONNX model's inputs: {_describe(onnx_inputs, _fmt_dims)}; "
        f"the Caffe net's inputs: {_describe(net_inputs, fmt_shape)}"
    )
    if len(onnx_inputs) != len(net_inputs):
        raise ValidationInputError(
            f"the ONNX model has {len(onnx_inputs)} input(s) but the Caffe net has {len(net_inputs)}: {both}"
        )
    onnx_by_name = dict(onnx_inputs)
    matched_by = "name"
    if all(name in onnx_by_name for name, _ in net_inputs):
        inputs = {name: name for name, _ in net_inputs}
    else:
        matched_by = "order"
        inputs = {name: onnx_name for (name, _), (onnx_name, _) in zip(net_inputs, onnx_inputs)}
        notes.append(
            "input names differ, paired by order: "
            + ", ".join(f"'{n}' -> '{o}'" for n, o in inputs.items() if n != o)
        )
    for name, shape in net_inputs:
        dims = onnx_by_name[inputs[name]]
        if dims is None:
            continue
        if len(dims) != len(shape) or any(d is not None and d != s for d, s in zip(dims, shape)):
            raise ValidationInputError(
                f"the ONNX input '{inputs[name]}' is {_fmt_dims(dims)} but the Caffe net's input "
                f"'{name}' is {fmt_shape(shape)}: {both}"
            )

    graph_outputs = [o.name for o in model.graph.output]
    outputs = {name: name for name in net.outputs if name in graph_outputs}
    if len(outputs) < len(net.outputs):
        missing = [name for name in net.outputs if name not in outputs]
        if len(graph_outputs) == len(net.outputs) and not outputs:
            matched_by = "order"
            outputs = dict(zip(net.outputs, graph_outputs))
            notes.append(
                "output names differ, paired by order: "
                + ", ".join(f"'{n}' -> '{o}'" for n, o in outputs.items() if n != o)
            )
        elif not outputs:
            raise ValidationInputError(
                f"cannot pair the outputs: the ONNX model's outputs are {', '.join(graph_outputs) or 'none'}, "
                f"the Caffe net's are {', '.join(net.outputs)} (different names and counts)"
            )
        else:
            notes.append(f"net output(s) not in the ONNX model's outputs: {', '.join(missing)}")

    produced = {o for node in model.graph.node for o in node.output}
    ir_tensors = [top for layer in net.layers for top in layer.tops]
    blobs = {t: t for t in ir_tensors if t in produced and t not in outputs}
    versions: dict[str, list[str]] = {}
    ssa_named = any("@" in t and t in produced for t in ir_tensors)
    if not ssa_named:
        by_blob: dict[str, list[str]] = {}
        for t in ir_tensors:
            by_blob.setdefault(net.blob_of.get(t, t), []).append(t)
        for t in [*blobs, *outputs]:
            others = [v for v in by_blob.get(net.blob_of.get(t, t), []) if v != t]
            if others:
                versions[t] = others
    if matched_by == "order" and not blobs:
        notes.append("no intermediate tensor carries a Caffe blob name: only the outputs are compared")
    return Pairing(inputs, outputs, blobs, versions, matched_by, notes)


# ----------------------------------------------------------------------------- comparing


class _Progress:
    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def step(self, label: str) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total, label)


def _compare_one(
    net: Net,
    pairing: Pairing,
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    reference: str,
    rtol: float,
    atol: float,
    notes: dict[str, None],
) -> list[BlobComparison]:
    producer = {top: (depth, layer) for depth, layer in enumerate(net.layers, start=1) for top in layer.tops}
    rows = []
    for depth, layer in enumerate(net.layers, start=1):
        for top in layer.tops:
            is_output = top in pairing.outputs
            onnx_name = pairing.outputs.get(top) or pairing.blobs.get(top)
            if onnx_name is None or onnx_name not in actual or top not in expected:
                continue
            ours, ref = np.asarray(actual[onnx_name]), np.asarray(expected[top])
            if ours.shape != ref.shape:
                shapes = f"'{onnx_name}' is {fmt_shape(ours.shape)}, blob '{top}' {fmt_shape(ref.shape)}"
                if ours.size == ref.size:
                    notes[f"{shapes}: compared as {fmt_shape(ref.shape)}"] = None
                    ours = ours.reshape(ref.shape)
                elif not is_output:
                    notes[f"{shapes}: not compared"] = None
                    continue
            max_abs, max_rel, passed = compare_arrays(ours, ref, rtol, atol)
            row = BlobComparison(
                top, layer.name, layer.type, tuple(ref.shape), max_abs, max_rel, passed,
                cosine_similarity(ours, ref), reference, onnx_name, depth, is_output,
            )  # fmt: skip
            if not passed:
                row = _try_versions(row, ours, expected, pairing, producer, rtol, atol, notes)
            rows.append(row)
    return rows


def _try_versions(row, ours, expected, pairing, producer, rtol, atol, notes) -> BlobComparison:
    """Another converter may give an earlier version of an in-place blob its name."""
    for version in pairing.versions.get(row.tensor, []):
        if version not in expected or np.shape(expected[version]) != ours.shape:
            continue
        max_abs, max_rel, passed = compare_arrays(ours, expected[version], rtol, atol)
        if passed:
            depth, layer = producer[version]
            note = f"'{row.onnx_name}' holds blob version '{version}' (written by layer '{layer.name}')"
            notes[note] = None
            return replace(
                row,
                tensor=version,
                layer=layer.name,
                layer_type=layer.type,
                depth=depth,
                max_abs=max_abs,
                max_rel=max_rel,
                passed=True,
                cosine=cosine_similarity(ours, expected[version]),
            )
    return row


def compare_feeds(
    net: Net,
    model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    references: Sequence[str] = ("pytorch",),
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    prototxt: str | os.PathLike[str] | None = None,
    caffemodel: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    model_dir: str | None = None,
) -> ValidationReport:
    """Run the ONNX model and every reference on each feed; keep each blob's worst result.

    ``feeds`` are keyed by net input name. The OpenCV reference needs the ``prototxt``
    (and uses ``caffemodel`` when given, else writes the IR's weights).
    """
    references = tuple(dict.fromkeys(references))
    unknown = [r for r in references if r not in REFERENCES]
    if unknown or not references:
        raise ValueError(f"unknown reference(s) {unknown}; choose from {', '.join(REFERENCES)}")
    if not feeds:
        raise ValueError("no inputs to compare on")
    pairing = pair_model(net, model, {k: np.shape(v) for k, v in feeds[0].items()})
    for note in pairing.notes:
        log.warning("%s", note)
    per_feed = 1 + (len(net.layers) if "pytorch" in references else 0) + (1 if "opencv" in references else 0)
    setup = 1 + (1 if "opencv" in references else 0)
    counter = _Progress(progress, setup + per_feed * len(feeds))

    runners: dict[str, Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]] = {}
    notes: dict[str, None] = {}
    if "pytorch" in references:
        runners["pytorch"] = _torch_runner(net, counter, rtol, atol, notes)
    if "opencv" in references:
        from caffe2onnx.opencv_ref import OpenCVReference

        if prototxt is None:
            raise ValueError("the OpenCV reference needs the prototxt path")
        cv = OpenCVReference(net, prototxt, caffemodel)
        counter.step("opencv import")
        runners["opencv"] = lambda feed, _onnx_values: cv.run(feed, counter.step)
    onnx_runner = OnnxRunner(model, pairing.onnx_names(), model_dir)
    counter.step("onnxruntime session")

    merged: dict[tuple[str, str], BlobComparison] = {}
    for feed in feeds:
        actual = onnx_runner.run({pairing.inputs[name]: value for name, value in feed.items()})
        counter.step("onnxruntime")
        by_ir = {ir: actual[o] for ir, o in {**pairing.outputs, **pairing.blobs}.items() if o in actual}
        for ref in references:
            expected = runners[ref](feed, by_ir)
            for row in _compare_one(net, pairing, actual, expected, ref, rtol, atol, notes):
                key = (ref, row.onnx_name)
                merged[key] = merged[key].worst(row) if key in merged else row
    order = {ref: i for i, ref in enumerate(references)}
    rows = sorted(merged.values(), key=lambda r: (r.depth, r.tensor, order[r.reference]))
    first = next(iter(feeds[0].values()))
    return ValidationReport(
        rows=rows,
        rtol=rtol,
        atol=atol,
        notes=list(notes),
        warnings=list(pairing.notes),
        references=references,
        batch=int(np.shape(first)[0]) if np.ndim(first) else None,
        inputs={name: {"shape": list(np.shape(v))} for name, v in feeds[0].items()},
        matched_by=pairing.matched_by,
    )


def argmax_near_ties(
    x: np.ndarray, ours: np.ndarray, ref: np.ndarray, rtol: float, atol: float
) -> tuple[int, float] | None:
    """Compare two MAX Pooling masks (per-plane argmax indices into ``x``).

    Returns (positions that differ, largest gap between the two picked inputs relative to
    ``max |x|``) when every difference is a near-tie, i.e. both picks hold values equal
    within the tolerance; None when some index is wrong (not a tie, or out of range).
    """
    differ = ours != ref
    count = int(differ.sum())
    if count == 0:
        return 0, 0.0
    n, c = x.shape[:2]
    planes = x.reshape(n * c, -1)
    plane = np.broadcast_to(np.arange(n * c).reshape(n, c, 1, 1), ours.shape)[differ]
    picks = [m[differ] for m in (ours, ref)]
    if any(((p < 0) | (p >= planes.shape[1]) | (p != np.round(p))).any() for p in picks):
        return None
    a, b = (planes[plane, p.astype(np.int64)] for p in picks)
    gap = float(np.abs(a - b).max())
    scale = float(np.abs(x).max())
    if gap > atol + rtol * scale:
        return None
    return count, gap / scale if scale else gap


def _follow_ties(
    layer: Layer,
    values: dict,
    onnx_values: Mapping[str, np.ndarray],
    rtol: float,
    atol: float,
    notes: dict[str, None],
) -> None:
    """If ``layer`` is a MAX Pooling whose mask top differs from onnxruntime's only at
    near-ties, put onnxruntime's mask into ``values`` (torch tensors) and add a note."""
    import torch

    if layer.type != "Pooling" or len(layer.tops) != 2 or layer.tops[1] not in onnx_values:
        return
    ours = np.asarray(onnx_values[layer.tops[1]])
    ref = values[layer.tops[1]].detach().numpy()
    if ours.shape != ref.shape:
        return
    ties = argmax_near_ties(values[layer.bottoms[0]].detach().numpy(), ours, ref, rtol, atol)
    if ties is not None and ties[0]:
        notes[
            f"layer '{layer.name}': {ties[0]} argmax near-tie(s) (picked inputs {ties[1]:.2g} "
            "apart, relative) resolved differently; the reference follows onnxruntime's choice"
        ] = None
        values[layer.tops[1]] = torch.from_numpy(np.array(ours, dtype=np.float32))


def _torch_runner(net: Net, counter: _Progress, rtol: float, atol: float, notes: dict[str, None]):
    """The PyTorch reference. Where a MAX Pooling mask differs from onnxruntime's only at
    near-ties (two window values equal within the tolerance, which float rounding may
    order either way), the reference continues with onnxruntime's choice and says so;
    any other difference stays a failure."""
    import torch

    from caffe2onnx.torch_ref import build_module

    module = build_module(net)

    def run(feed: Mapping[str, np.ndarray], onnx_values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        def follow_ties(layer: Layer, values: dict[str, torch.Tensor]) -> None:
            _follow_ties(layer, values, onnx_values, rtol, atol, notes)

        with torch.no_grad():
            values = module.run(
                {k: torch.from_numpy(np.asarray(v)) for k, v in feed.items()}, counter.step, follow_ties
            )
        return {k: v.detach().numpy() for k, v in values.items()}

    return run


def _shared_tensor(array: np.ndarray):
    """A torch tensor sharing a (possibly read-only, memory-mapped) weight array: no copy
    of VGG's 400 MB fc6. The reference never writes to it."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.require(array, np.float32, "C"))


def compare_layerwise(
    net: Net,
    feed: Mapping[str, np.ndarray],
    onnx_values: Mapping[str, np.ndarray],
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ValidationReport:
    """The PyTorch reference layer by layer, in bounded memory, against the given ONNX blobs.

    For nets too large to hold every blob at once (PSPNet-101 at 713x713): each tensor is
    freed after its last reader, and only the blobs in ``onnx_values`` (keyed by IR name;
    e.g. a sample of layers plus the outputs) are compared. Argmax near-ties of MAX
    Pooling masks are followed as in :func:`compare_feeds`.
    """
    import torch

    from caffe2onnx.layers.registry import default_registry

    registry = default_registry()
    last_use = {b: i for i, layer in enumerate(net.layers) for b in layer.bottoms}
    keep = set(net.outputs)
    values = {n: torch.from_numpy(np.asarray(feed[n], np.float32)) for n in net.input_names}
    rows: list[BlobComparison] = []
    notes: dict[str, None] = {}
    with torch.no_grad():
        for depth, layer in enumerate(net.layers, start=1):
            weights = [_shared_tensor(w) for w in layer.weights]
            outs = registry.get(layer.type).to_torch(layer, [values[b] for b in layer.bottoms], weights)
            values.update(zip(layer.tops, outs))
            _follow_ties(layer, values, onnx_values, rtol, atol, notes)
            for top in layer.tops:
                if top in onnx_values:
                    ours, ref = np.asarray(onnx_values[top]), values[top].numpy()
                    rows.append(
                        BlobComparison.of(
                            layer, top, ours, ref, rtol=rtol, atol=atol, depth=depth, output=top in keep
                        )
                    )
            for blob in {*layer.bottoms, *layer.tops}:
                if last_use.get(blob, -1) <= depth - 1 and blob not in keep:
                    values.pop(blob, None)
    return ValidationReport(rows=rows, rtol=rtol, atol=atol, notes=list(notes))


def compare_net(
    net: Net,
    model: onnx.ModelProto,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    model_dir: str | None = None,
) -> ValidationReport:
    """Run both sides on the same inputs and compare every Caffe blob present in both.

    ``model_dir``: the directory of the model file when its weights are external data."""
    feed = dict(inputs) if inputs is not None else random_inputs(net, seed)
    report = compare_feeds(net, model, [feed], rtol=rtol, atol=atol, model_dir=model_dir)
    report.seeds = (seed,)
    return report


# ----------------------------------------------------------------------------- files -> report


def validate_files(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None = None,
    onnx_model: onnx.ModelProto | str | os.PathLike[str] | None = None,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    seeds: int = 1,
    batch: int | None = None,
    inputs: Mapping[str | None, Any] | None = None,
    preprocess: Any = None,
    reference: str | Sequence[str] = "pytorch",
    opset: int | None = None,
    progress: ProgressCallback | None = None,
    **load_options: Any,
) -> ValidationReport:
    """Load the Caffe net (and the ONNX file, or convert in memory) and compare them.

    ``inputs`` maps net input names (``None`` when the net has one input) to ``.npy``,
    ``.npz`` or image paths, or to arrays; inputs not given are seeded random normal, one
    set per seed ``seed, seed + 1, ..., seed + seeds - 1``. ``preprocess`` (an
    :class:`caffe2onnx.inputs.Preprocess`) applies to file inputs. ``reference`` is
    ``"pytorch"``, ``"opencv"`` or ``"both"``. ``batch`` sets the batch size of every
    net input.
    """
    from caffe2onnx.caffemodel import read_caffemodel
    from caffe2onnx.inputs import build_feeds
    from caffe2onnx.onnx_export import DEFAULT_OPSET, to_onnx
    from caffe2onnx.parser import load_net

    if seeds < 1:
        raise ValidationInputError(f"--seeds must be at least 1, got {seeds}")
    if batch is not None and batch < 1:
        raise ValidationInputError(f"--batch must be at least 1, got {batch}")
    references = (
        REFERENCES
        if reference == "both"
        else (reference,)
        if isinstance(reference, str)
        else tuple(reference)
    )
    weights = read_caffemodel(caffemodel) if caffemodel is not None else None
    net = load_net(prototxt, weights, **load_options)
    if batch is not None and any(shape[0] != batch for _, shape in net.inputs if shape):
        shapes = dict(load_options.pop("input_shapes", None) or {})
        shapes.update({name: (batch, *shape[1:]) for name, shape in net.inputs})
        net = load_net(prototxt, weights, input_shapes=shapes, **load_options)
    model_dir = None
    if onnx_model is None:
        model = to_onnx(net, opset or DEFAULT_OPSET)
        onnx_label = f"converted in memory (opset {opset or DEFAULT_OPSET})"
    elif isinstance(onnx_model, onnx.ModelProto):
        model, onnx_label = onnx_model, "<ModelProto>"
    else:
        onnx_label = os.fspath(onnx_model)
        try:
            model = onnx.load(onnx_label, load_external_data=False)
            model_dir = os.path.dirname(os.path.abspath(onnx_label))
        except Exception as exc:  # protobuf decode errors, missing external data, ...
            raise ValidationInputError(f"cannot read the ONNX file {onnx_label}: {exc}") from exc
    seed_list = tuple(range(seed, seed + seeds))
    feeds, sources, notes = build_feeds(net, inputs, seeds=seed_list, preprocess=preprocess)
    report = compare_feeds(
        net,
        model,
        feeds,
        references=references,
        rtol=rtol,
        atol=atol,
        prototxt=prototxt,
        caffemodel=caffemodel,
        progress=progress,
        model_dir=model_dir,
    )
    report.notes = [*notes, *report.notes]
    report.seeds = seed_list[: len(feeds)]
    for name, info in report.inputs.items():
        info["source"] = sources.get(name, "")
    report.prototxt = os.fspath(prototxt)
    report.caffemodel = os.fspath(caffemodel) if caffemodel is not None else ""
    report.onnx = onnx_label
    return report
