"""``caffe2onnx inspect``: what a net holds and what stands in the way of converting it.

Prints every layer with its type, inputs, outputs, output shapes and parameter count,
the notes of parsing (dropped and replaced layers), and the problems found: all
unsupported layer types at once, and with a caffemodel, which layers' blobs are
missing or do not fit.
"""

from __future__ import annotations

import math
import os
from typing import Any

from caffe2onnx.caffemodel import read_caffemodel
from caffe2onnx.errors import Caffe2OnnxError
from caffe2onnx.layers.registry import default_registry
from caffe2onnx.parser import load_net
from caffe2onnx.weights import _match_blobs


def _format_table(rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    return "\n".join(lines)


def inspect_net(
    prototxt: str | os.PathLike[str], caffemodel: str | os.PathLike[str] | None = None, **options: Any
) -> tuple[str, bool]:
    """Return (report text, True if the net looks convertible)."""
    problems: list[str] = []
    try:
        net = load_net(prototxt, require_weights=False, **options)
    except Caffe2OnnxError as exc:
        return f"problems:\n{exc}", False
    registry = default_registry()
    model = None
    if caffemodel is not None:
        try:
            model = read_caffemodel(caffemodel)
        except Caffe2OnnxError as exc:
            problems.append(str(exc))
    rows = []
    total = 0
    for layer in net.layers:
        handler = registry.get(layer.type)
        in_shapes = [net.shapes[b] for b in layer.bottoms]
        specs = handler.blobs(layer, in_shapes)
        count = sum(math.prod(s.shape) for s in specs)
        total += count
        status = ""
        if model is not None and specs:
            name = layer.caffe_name or layer.name
            if name not in model.blobs:
                status = "missing"
                problems.append(f"layer '{layer.name}': no blobs in the caffemodel")
            else:
                try:
                    _match_blobs(layer, specs, model.blobs[name], model.path)
                    status = "ok"
                except Caffe2OnnxError as exc:
                    status = "MISMATCH"
                    problems.append(str(exc))
        rows.append(
            (
                layer.name,
                layer.type,
                ", ".join(layer.bottoms),
                ", ".join(layer.tops),
                "; ".join("x".join(map(str, net.shapes[t])) for t in layer.tops),
                f"{count:,}" if count else "",
                status,
            )
        )
    headers = ("layer", "type", "bottoms", "tops", "shapes", "params", "weights" if model else "")
    parts = [
        f"net '{net.name}' ({net.source}): {len(net.layers)} layers, {total:,} parameters",
        "inputs: " + ", ".join(f"{n} {list(s)}" for n, s in net.inputs),
        "outputs: " + ", ".join(f"{n} {list(net.shapes[n])}" for n in net.outputs),
        "",
        _format_table(rows, headers),
    ]
    if net.notes:
        parts += ["", "notes:"] + [f"  {note}" for note in net.notes]
    if problems:
        parts += ["", "problems:"] + [f"  {p}" for p in problems]
    return "\n".join(parts), not problems
