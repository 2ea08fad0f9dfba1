"""Element-wise activations.

Caffe semantics (spec 3.24): ReLU ``max(x,0) + negative_slope * min(x,0)``.

ONNX: ``Relu``, or ``LeakyRelu(alpha=negative_slope)``. PyTorch: ``F.relu`` /
``F.leaky_relu``.
"""

from __future__ import annotations

from dataclasses import dataclass

from caffe2onnx.ir import Layer
from caffe2onnx.layers.base import Handler


@dataclass(frozen=True)
class ReLUParams:
    negative_slope: float


class ReLU(Handler):
    types = ("ReLU",)

    def parse(self, lp) -> ReLUParams:
        return ReLUParams(lp.relu_param.negative_slope)

    def to_onnx(self, layer: Layer, g) -> None:
        slope = layer.params.negative_slope
        if slope == 0:
            g.op("Relu", layer.bottoms, layer.tops[0])
        else:
            g.op("LeakyRelu", layer.bottoms, layer.tops[0], alpha=slope)

    def to_torch(self, layer: Layer, inputs, weights):
        from torch.nn import functional as F

        slope = layer.params.negative_slope
        x = inputs[0]
        return [F.relu(x) if slope == 0 else F.leaky_relu(x, slope)]


HANDLERS = [ReLU()]
