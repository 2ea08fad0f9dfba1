"""``caffe2onnx inspect``: what a net holds and *everything* that stands in the way of
converting it, in one run.

Prints every layer with its type, inputs, outputs, output shapes, parameter count and
status, the notes of parsing (dropped and replaced layers, skipped dependants), and all
problems found (:func:`caffe2onnx.parser.analyze_net`): every unsupported layer type,
every bad parameter and undefined bottom, every shape error (a layer whose shapes cannot
be inferred marks its outputs unknown, ``?``, and the layers depending on it are
skipped), and with a caffemodel every layer whose blobs are missing or do not fit.
"""

from __future__ import annotations

import math
import os
from typing import Any

from caffe2onnx.caffemodel import CaffeModel
from caffe2onnx.parser import Analysis, analyze_net

_STATUS = {"": "", "problem": "PROBLEM", "skipped": "skipped"}


def _format_table(rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    return "\n".join(lines)


def _shape(analysis: Analysis, tensor: str) -> str:
    shape = analysis.shapes.get(tensor)
    return "x".join(map(str, shape)) if shape is not None else "?"


def format_analysis(analysis: Analysis, with_weights: bool = False) -> str:
    """The report text of an :class:`Analysis`."""
    total = 0
    rows = []
    for layer in analysis.layers:
        specs = analysis.specs.get(layer.name, [])
        count = sum(math.prod(s.shape) for s in specs)
        total += count
        status = _STATUS.get(analysis.status.get(layer.name, ""), "")
        if with_weights and not status:
            status = analysis.weights.get(layer.name, "")
        rows.append(
            (
                layer.name,
                layer.type,
                ", ".join(layer.bottoms),
                ", ".join(layer.tops),
                "; ".join(_shape(analysis, t) for t in layer.tops),
                f"{count:,}" if count else "",
                status,
            )
        )
    parts = []
    if analysis.layers or analysis.inputs:
        parts += [
            f"net '{analysis.name}' ({analysis.source}): {len(analysis.layers)} layers, {total:,} parameters",
            "inputs: " + ", ".join(f"{n} {list(s) if s is not None else '?'}" for n, s in analysis.inputs),
            "outputs: " + ", ".join(f"{n} {_shape(analysis, n)}" for n in analysis.outputs),
            "",
            _format_table(rows, ("layer", "type", "bottoms", "tops", "shapes", "params", "status")),
        ]
    if analysis.notes:
        parts += ["", "notes:"] + [f"  {note}" for note in analysis.notes]
    if analysis.problems:
        count = len(analysis.problems)
        parts += ["", f"problems ({count}):"]
        for problem in analysis.problems:
            lines = str(problem).splitlines() or [""]
            parts.append(f"  - {lines[0]}")
            parts.extend(f"    {line}" for line in lines[1:])
    else:
        parts += ["", "no problems found"]
    return "\n".join(parts).lstrip("\n")


def inspect_net(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | CaffeModel | None = None,
    **options: Any,
) -> tuple[str, bool]:
    """Return (report text, True if the net looks convertible).

    ``options`` are those of :func:`caffe2onnx.load_net` (``input_shapes``,
    ``python_layers``, ``registry``, ...). Never raises for a bad net: every problem is
    in the report.
    """
    analysis = analyze_net(prototxt, caffemodel, **options)
    return format_analysis(analysis, with_weights=caffemodel is not None), analysis.ok
