"""InnerProduct (fully connected).

Caffe semantics (spec 3.15): the input is flattened from ``axis`` on (C order):
``K = prod(shape[axis:])``, ``M = prod(shape[:axis])``; ``y = x W^T + b`` with ``W`` of
shape ``[N, K]`` (``[K, N]`` and ``y = x W + b`` when ``transpose``); the output shape is
``shape[:axis] + [N]``. Legacy blobs (``1x1xNxK``) are reshaped by the weight loader.

ONNX: ``Flatten(axis)`` (a ``Reshape`` when axis is not 1 of a 2-D result) then
``Gemm(transB = not transpose)``; PyTorch: ``F.linear``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from caffe2onnx.ir import BlobSpec, Filler, Layer, Shape
from caffe2onnx.layers.base import Handler, axis_index, filler_of, layer_error, prod


@dataclass(frozen=True)
class InnerProductParams:
    num_output: int
    bias_term: bool
    axis: int
    transpose: bool
    weight_filler: Filler | None
    bias_filler: Filler | None


class InnerProduct(Handler):
    types = ("InnerProduct",)

    def parse(self, lp) -> InnerProductParams:
        p = lp.inner_product_param
        if not p.num_output:
            raise layer_error(lp, "inner_product_param.num_output must be set and > 0")
        return InnerProductParams(
            num_output=p.num_output,
            bias_term=p.bias_term,
            axis=p.axis,
            transpose=p.transpose,
            weight_filler=filler_of(p, "weight_filler"),
            bias_filler=filler_of(p, "bias_filler"),
        )

    def _split(self, layer: Layer, shape: Shape) -> tuple[int, int]:
        axis = axis_index(layer.params.axis, len(shape), layer)
        return axis, prod(shape[axis:])

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        axis, _ = self._split(layer, in_shapes[0])
        return [(*in_shapes[0][:axis], layer.params.num_output)]

    def blobs(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
        params: InnerProductParams = layer.params
        _, k = self._split(layer, in_shapes[0])
        n = params.num_output
        w_shape = (k, n) if params.transpose else (n, k)
        specs = [BlobSpec("weight", w_shape, params.weight_filler, "fan_in", k)]
        if params.bias_term:
            specs.append(BlobSpec("bias", (n,), params.bias_filler, "bias"))
        return specs

    def to_onnx(self, layer: Layer, g) -> None:
        params: InnerProductParams = layer.params
        shape = g.shape(layer.bottoms[0])
        axis, k = self._split(layer, shape)
        m = prod(shape[:axis])
        flat = (
            g.op("Flatten", [layer.bottoms[0]], axis=axis)
            if axis > 0
            else g.reshape(layer.bottoms[0], [1, k])
        )
        inputs = [flat, g.weight(layer, 0)]
        if params.bias_term:
            inputs.append(g.weight(layer, 1))
        out_shape = g.shape(layer.tops[0])
        if len(out_shape) == 2 and out_shape[0] == m:
            g.op("Gemm", inputs, layer.tops[0], transB=0 if params.transpose else 1)
        else:
            gemm = g.op("Gemm", inputs, transB=0 if params.transpose else 1)
            g.reshape(gemm, out_shape, layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        from torch.nn import functional as F

        params: InnerProductParams = layer.params
        x = inputs[0]
        axis, k = self._split(layer, tuple(x.shape))
        flat = x.reshape(*x.shape[:axis], k)
        w = weights[0].t() if params.transpose else weights[0]
        bias = weights[1] if params.bias_term else None
        return [F.linear(flat, w, bias)]


HANDLERS = [InnerProduct()]
