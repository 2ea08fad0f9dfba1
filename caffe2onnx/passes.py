"""Graph passes on the IR, each small and run from an explicit list.

``prune_to_outputs`` keeps only the layers the requested outputs depend on (what
``--outputs`` does: cut a net before a layer that cannot be converted, e.g. SSD's
DetectionOutput).
"""

from __future__ import annotations

from dataclasses import replace

from caffe2onnx.ir import Net


def prune_to_outputs(net: Net) -> Net:
    """Drop layers no output depends on; drop inputs nothing reads."""
    needed = set(net.outputs)
    kept = []
    for layer in reversed(net.layers):
        if needed.intersection(layer.tops):
            kept.append(layer)
            needed.update(layer.bottoms)
    kept.reverse()
    inputs = tuple((name, shape) for name, shape in net.inputs if name in needed)
    live = {t for layer in kept for t in (*layer.tops, *layer.bottoms)} | {n for n, _ in inputs}
    shapes = {k: v for k, v in net.shapes.items() if k in live}
    return replace(net, layers=tuple(kept), inputs=inputs, shapes=shapes)
