"""Prove an ONNX model computes what the Caffe net computes, blob by blob.

The ONNX model runs in onnxruntime with every Caffe blob exposed as an extra output;
the PyTorch reference (``torch_ref``) runs on the same seeded inputs. Each blob is
compared with

* ``max_abs = max |onnx - ref|`` and
* ``max_rel = max_abs / max |ref|`` (error relative to the blob's own magnitude, which
  stays meaningful where individual values pass through zero),

and passes when ``max_abs <= atol + rtol * max |ref|``. The first failing blob in layer
order names the layer where the two diverge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from caffe2onnx.ir import Net

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-6


@dataclass(frozen=True)
class BlobComparison:
    tensor: str
    layer: str
    layer_type: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    passed: bool


@dataclass
class ValidationReport:
    rows: list[BlobComparison]
    rtol: float
    atol: float
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows) and bool(self.rows)

    @property
    def first_failure(self) -> BlobComparison | None:
        return next((row for row in self.rows if not row.passed), None)

    @property
    def max_rel(self) -> float:
        return max((row.max_rel for row in self.rows), default=0.0)

    @property
    def max_abs(self) -> float:
        return max((row.max_abs for row in self.rows), default=0.0)

    def table(self) -> str:
        headers = ("layer", "type", "blob", "shape", "max abs", "max rel", "")
        lines = [
            (
                row.layer,
                row.layer_type,
                row.tensor,
                "x".join(map(str, row.shape)),
                f"{row.max_abs:.3g}",
                f"{row.max_rel:.3g}",
                "ok" if row.passed else "FAIL",
            )
            for row in self.rows
        ]
        widths = [
            max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)
        ]
        out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
        out.append("  ".join("-" * w for w in widths).rstrip())
        out.extend("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
        return "\n".join(out)

    def summary(self) -> str:
        if not self.rows:
            return "no blobs were compared"
        failure = self.first_failure
        head = (
            f"{len(self.rows)} blobs compared, max abs error {self.max_abs:.3g}, "
            f"max rel error {self.max_rel:.3g} (rtol {self.rtol:g}, atol {self.atol:g})"
        )
        if failure is None:
            return f"PASS: {head}"
        return (
            f"FAIL: {head}\nfirst divergence: layer '{failure.layer}' ({failure.layer_type}), "
            f"blob '{failure.tensor}': max abs {failure.max_abs:.3g}, max rel {failure.max_rel:.3g}"
        )


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


def random_inputs(net: Net, seed: int = 0, batch: int | None = None) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every net input."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape in net.inputs:
        if batch is not None:
            shape = (batch, *shape[1:])
        inputs[name] = rng.standard_normal(shape).astype(np.float32)
    return inputs


def run_onnx(
    model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], extra_outputs: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Run a model in onnxruntime, also returning the named intermediate tensors."""
    import onnxruntime as ort

    produced = {o for node in model.graph.node for o in node.output}
    existing = {o.name for o in model.graph.output}
    wanted = [name for name in extra_outputs if name in produced and name not in existing]
    if wanted:
        model = _with_outputs(model, wanted)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(names, feed)))


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for name in names:
        copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def compare_net(
    net: Net,
    model: onnx.ModelProto,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
) -> ValidationReport:
    """Run both sides on the same inputs and compare every Caffe blob present in both."""
    import torch

    from caffe2onnx.torch_ref import build_module

    inputs = dict(inputs) if inputs is not None else random_inputs(net, seed)
    module = build_module(net)
    with torch.no_grad():
        reference = {
            k: v.detach().numpy()
            for k, v in module.run({k: torch.from_numpy(v) for k, v in inputs.items()}).items()
        }
    tensors = [top for layer in net.layers for top in layer.tops]
    actual = run_onnx(model, inputs, tensors)
    rows = []
    for layer in net.layers:
        for top in layer.tops:
            if top not in actual or top not in reference:
                continue
            max_abs, max_rel, passed = compare_arrays(actual[top], reference[top], rtol, atol)
            rows.append(
                BlobComparison(
                    top, layer.name, layer.type, tuple(reference[top].shape), max_abs, max_rel, passed
                )
            )
    return ValidationReport(rows=rows, rtol=rtol, atol=atol)
