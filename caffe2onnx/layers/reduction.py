"""Softmax.

Caffe semantics (spec 3.21): softmax over one ``axis`` (default 1), max-subtracted.

ONNX: ``Softmax(axis)`` at opset >= 13, where it normalizes over that one axis
(before opset 13 it would coerce to 2-D, which is wrong for 4-D inputs).
PyTorch: ``torch.softmax``.
"""

from __future__ import annotations

from dataclasses import dataclass

from caffe2onnx.ir import Layer
from caffe2onnx.layers.base import Handler, axis_index


@dataclass(frozen=True)
class SoftmaxParams:
    axis: int


class Softmax(Handler):
    types = ("Softmax",)

    def parse(self, lp) -> SoftmaxParams:
        return SoftmaxParams(lp.softmax_param.axis)

    def to_onnx(self, layer: Layer, g) -> None:
        axis = axis_index(layer.params.axis, len(g.shape(layer.bottoms[0])), layer)
        g.op("Softmax", layer.bottoms, layer.tops[0], axis=axis)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        axis = axis_index(layer.params.axis, inputs[0].dim(), layer)
        return [torch.softmax(inputs[0], dim=axis)]


HANDLERS = [Softmax()]
