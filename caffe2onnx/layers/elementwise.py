"""Eltwise: element-wise SUM (with coefficients), PROD and MAX of two or more bottoms.

Caffe semantics (spec 3.16): ``operation`` PROD=0, SUM=1 (default), MAX=2. There must
be at least 2 bottoms, all of *identical* shape (Caffe never broadcasts). SUM computes
``sum_i coeff_i * x_i`` (``coeff`` defaults to 1; when given, exactly one per bottom and
only for SUM); PROD the product; MAX the element-wise maximum.

ONNX: ``Mul`` by each coefficient that is not 1 (a coefficient of -1 becomes ``Neg``),
then ``Sum``; ``Mul`` chained over the bottoms; ``Max``. ONNX broadcasts, so the
identical-shape rule is enforced here, at shape inference. PyTorch: the same
operations with ``torch`` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, layer_error, shape_error

PROD, SUM, MAX = 0, 1, 2
_NAMES = {PROD: "PROD", SUM: "SUM", MAX: "MAX"}


@dataclass(frozen=True)
class EltwiseParams:
    operation: int
    coeffs: tuple[float, ...]  # one per bottom (all 1.0 unless given); SUM only


class Eltwise(Handler):
    types = ("Eltwise",)
    bottoms = (2, None)

    def parse(self, lp) -> EltwiseParams:
        p = lp.eltwise_param
        if p.operation not in _NAMES:
            raise layer_error(lp, f"unknown operation {p.operation}; use PROD, SUM or MAX")
        coeffs = tuple(float(c) for c in p.coeff)
        if coeffs and p.operation != SUM:
            raise layer_error(
                lp, f"coeff {list(coeffs)} is only allowed with operation SUM, not {_NAMES[p.operation]}"
            )
        if coeffs and len(coeffs) != len(lp.bottom):
            raise layer_error(
                lp,
                f"has {len(coeffs)} coeff value(s) for {len(lp.bottom)} bottoms; give one per bottom",
            )
        return EltwiseParams(p.operation, coeffs or (1.0,) * len(lp.bottom))

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        first = tuple(in_shapes[0])
        for i, shape in enumerate(in_shapes[1:], start=1):
            if tuple(shape) != first:
                raise shape_error(
                    layer,
                    f"bottom {i} ('{layer.bottoms[i]}') has shape {list(shape)} but bottom 0 "
                    f"('{layer.bottoms[0]}') has {list(first)}; Eltwise needs identical shapes "
                    "(Caffe does not broadcast)",
                )
        return [first]

    def to_onnx(self, layer: Layer, g) -> None:
        params: EltwiseParams = layer.params
        top = layer.tops[0]
        if params.operation == MAX:
            g.op("Max", layer.bottoms, top)
        elif params.operation == PROD:
            product = layer.bottoms[0]
            for i, bottom in enumerate(layer.bottoms[1:], start=2):
                product = g.op("Mul", [product, bottom], top if i == len(layer.bottoms) else None)
        else:
            terms = []
            for bottom, coeff in zip(layer.bottoms, params.coeffs):
                if coeff == 1.0:
                    terms.append(bottom)
                elif coeff == -1.0:
                    terms.append(g.op("Neg", [bottom]))
                else:
                    terms.append(g.op("Mul", [bottom, g.const(coeff, "coeff")]))
            g.op("Sum", terms, top)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        params: EltwiseParams = layer.params
        if params.operation == MAX:
            result = inputs[0]
            for x in inputs[1:]:
                result = torch.maximum(result, x)
        elif params.operation == PROD:
            result = inputs[0]
            for x in inputs[1:]:
                result = result * x
        else:
            result = inputs[0] * params.coeffs[0]
            for x, coeff in zip(inputs[1:], params.coeffs[1:]):
                result = result + x * coeff
        return [result]


HANDLERS = [Eltwise()]
