"""Layers that only move data around: Split, Dropout (identity at test time).

Caffe semantics (spec 2, 3.24): Split copies its bottom to every top; Dropout is the
identity in the TEST phase (``x * (1 - ratio)`` when a fork's ``scale_train: false``).

ONNX: ``Identity`` (``Mul`` for the fork's scaling). PyTorch: the tensor itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from caffe2onnx.ir import Layer
from caffe2onnx.layers.base import Handler


class Split(Handler):
    types = ("Split",)
    tops = (1, None)

    def to_onnx(self, layer: Layer, g) -> None:
        for top in layer.tops:
            g.op("Identity", layer.bottoms, top)

    def to_torch(self, layer: Layer, inputs, weights):
        return [inputs[0]] * len(layer.tops)


@dataclass(frozen=True)
class DropoutParams:
    test_scale: float


class Dropout(Handler):
    types = ("Dropout",)

    def parse(self, lp) -> DropoutParams:
        p = lp.dropout_param
        scale = 1.0 if p.scale_train else 1.0 - p.dropout_ratio
        return DropoutParams(scale)

    def to_onnx(self, layer: Layer, g) -> None:
        if layer.params.test_scale == 1.0:
            g.op("Identity", layer.bottoms, layer.tops[0])
        else:
            g.op("Mul", [layer.bottoms[0], g.const(layer.params.test_scale, "scale")], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        scale = layer.params.test_scale
        return [inputs[0] if scale == 1.0 else inputs[0] * scale]


HANDLERS = [Split(), Dropout()]
