"""Softmax, ArgMax and Reduction: layers that normalise or reduce along axes.

Caffe semantics (spec 3.21-3.23):

* Softmax: over one ``axis`` (default 1), max-subtracted.
* ArgMax: the ``top_k`` (default 1) largest values, sorted descending; among equal
  values the *larger index comes first* (``partial_sort`` with ``greater`` on
  ``(value, index)`` pairs). Indices are written as floats.

  - With ``axis``: the top is the bottom's shape with ``[axis] = top_k``; it holds the
    indices, or only the values when ``out_max_val``.
  - Without ``axis``: each sample is flattened over ``shape[1:]``; the top has
    ``max(ndim, 3)`` axes of size 1 except ``[0] = N``, ``[2] = top_k`` and, with
    ``out_max_val``, ``[1] = 2`` (channel 0 the indices, channel 1 the values).

* Reduction: ``operation`` SUM=1 (default), ASUM=2 (``sum |x|``), SUMSQ=3 (``sum x^2``),
  MEAN=4 over *all* axes from ``axis`` (default 0) to the end, times ``coeff``. The
  top's shape is ``shape[:axis]``: a 0-D scalar for ``axis: 0``.

ONNX:

* ``Softmax(axis)`` (opset >= 13 normalises over that one axis).
* ArgMax, ``top_k == 1``: ``ArgMax(keepdims=1, select_last_index=1)`` then ``Cast`` to
  float; the value is ``ReduceMax(keepdims=1)``.
  ``top_k > 1``: ONNX ``TopK`` puts the *lower* index first among ties, so the axis is
  reversed first (``Slice`` with step -1); ``TopK`` on the reversed tensor then lists
  equal values from the highest original index down, and the index is mapped back as
  ``(D - 1) - i``. Without ``axis`` the input is reshaped to ``[N, D]`` first and the
  ``[N, k]`` results are concatenated / reshaped into Caffe's layout.
* Reduction: ``ReduceSum`` / ``ReduceL1`` / ``ReduceSumSquare`` / ``ReduceMean`` with
  ``keepdims=0`` over ``axes = [axis .. ndim-1]`` (a 0-D tensor when all axes are
  reduced), then ``Mul(coeff)`` unless it is 1.

PyTorch: ``torch.softmax``; ArgMax by a *stable* descending sort of the reversed axis
(which yields Caffe's tie order), the first ``top_k`` entries; ``sum``/``abs``/``mean``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, axis_index, layer_error, prod, shape_error

# ----------------------------------------------------------------------------- Softmax


@dataclass(frozen=True)
class SoftmaxParams:
    axis: int


class Softmax(Handler):
    types = ("Softmax",)

    def parse(self, lp) -> SoftmaxParams:
        return SoftmaxParams(lp.softmax_param.axis)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        axis_index(layer.params.axis, len(in_shapes[0]), layer, "softmax axis")
        return [tuple(in_shapes[0])]

    def to_onnx(self, layer: Layer, g) -> None:
        axis = axis_index(layer.params.axis, len(g.shape(layer.bottoms[0])), layer)
        g.op("Softmax", layer.bottoms, layer.tops[0], axis=axis)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        axis = axis_index(layer.params.axis, inputs[0].dim(), layer)
        return [torch.softmax(inputs[0], dim=axis)]


# ----------------------------------------------------------------------------- ArgMax


@dataclass(frozen=True)
class ArgMaxParams:
    top_k: int
    out_max_val: bool
    axis: int | None  # None: per sample over the flattened shape[1:]


class ArgMax(Handler):
    types = ("ArgMax",)

    def parse(self, lp) -> ArgMaxParams:
        p = lp.argmax_param
        if p.top_k < 1:
            raise layer_error(lp, f"top_k must be at least 1, got {p.top_k}")
        return ArgMaxParams(p.top_k, p.out_max_val, p.axis if p.HasField("axis") else None)

    def _geometry(self, layer: Layer, shape: Shape) -> tuple[int | None, int]:
        """(resolved axis or None, length D of the searched dimension), checked against top_k."""
        params: ArgMaxParams = layer.params
        if params.axis is None:
            axis, dim, what = None, prod(shape[1:]), "the flattened sample size prod(shape[1:])"
        else:
            axis = axis_index(params.axis, len(shape), layer, "argmax axis")
            dim, what = shape[axis], f"the size of axis {axis}"
        if params.top_k > dim:
            raise shape_error(
                layer, f"top_k {params.top_k} is larger than {what} = {dim} (input shape {list(shape)})"
            )
        return axis, dim

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        params: ArgMaxParams = layer.params
        shape = tuple(in_shapes[0])
        axis, _ = self._geometry(layer, shape)
        if axis is not None:
            return [(*shape[:axis], params.top_k, *shape[axis + 1 :])]
        out = [1] * max(len(shape), 3)
        out[0], out[1], out[2] = shape[0], 2 if params.out_max_val else 1, params.top_k
        return [tuple(out)]

    def to_onnx(self, layer: Layer, g) -> None:
        params: ArgMaxParams = layer.params
        shape = g.shape(layer.bottoms[0])
        axis, dim = self._geometry(layer, shape)
        x = layer.bottoms[0]
        top = layer.tops[0]
        if axis is None:
            x = g.reshape(x, [shape[0], dim], None)
            axis = 1
        want_indices = not params.out_max_val or params.axis is None
        indices, values = self._top_k_onnx(g, x, axis, dim, params.top_k, want_indices, params.out_max_val)
        if params.axis is not None:
            g.op("Identity", [values if params.out_max_val else indices], top)
        elif params.out_max_val:
            pair = g.op("Concat", [indices, values], axis=1)
            g.reshape(pair, g.shape(top), top)
        else:
            g.reshape(indices, g.shape(top), top)

    @staticmethod
    def _top_k_onnx(g, x: str, axis: int, dim: int, k: int, want_indices: bool, want_values: bool):
        """(float indices or None, values or None) along ``axis``, in Caffe's order."""
        if k == 1:
            indices = values = None
            if want_indices:
                arg = g.op("ArgMax", [x], axis=axis, keepdims=1, select_last_index=1)
                indices = g.op("Cast", [arg], to=1)  # FLOAT
            if want_values:
                values = g.reduce("ReduceMax", x, [axis], keepdims=1)
            return indices, values
        int64_min = int(np.iinfo(np.int64).min)
        reversed_x = g.op(
            "Slice",
            [
                x,
                g.ints([-1], "starts"),
                g.ints([int64_min], "ends"),
                g.ints([axis], "axes"),
                g.ints([-1], "steps"),
            ],
        )
        values, rev_index = g.node("TopK", [reversed_x, g.ints([k], "k")], 2, axis=axis, largest=1, sorted=1)
        indices = None
        if want_indices:
            rev_float = g.op("Cast", [rev_index], to=1)  # FLOAT
            indices = g.op("Sub", [g.const(float(dim - 1), "last_index"), rev_float])
        return indices, values

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        params: ArgMaxParams = layer.params
        x = inputs[0]
        shape = tuple(x.shape)
        axis, dim = self._geometry(layer, shape)
        if axis is None:
            x = x.reshape(shape[0], dim)
            axis = 1
        # Caffe: descending values, ties by descending index. A stable descending sort of
        # the reversed axis keeps equal values in reversed (= descending index) order.
        values, rev_index = torch.sort(torch.flip(x, [axis]), dim=axis, descending=True, stable=True)
        values = values.narrow(axis, 0, params.top_k)
        indices = (dim - 1 - rev_index.narrow(axis, 0, params.top_k)).to(x.dtype)
        if params.axis is not None:
            return [values if params.out_max_val else indices]
        out_shape = self.infer(layer, [shape])[0]
        if params.out_max_val:
            return [torch.cat([indices, values], dim=1).reshape(out_shape)]
        return [indices.reshape(out_shape)]


# ----------------------------------------------------------------------------- Reduction

SUM, ASUM, SUMSQ, MEAN = 1, 2, 3, 4
_REDUCE_OPS = {SUM: "ReduceSum", ASUM: "ReduceL1", SUMSQ: "ReduceSumSquare", MEAN: "ReduceMean"}


@dataclass(frozen=True)
class ReductionParams:
    operation: int
    axis: int
    coeff: float


class Reduction(Handler):
    types = ("Reduction",)

    def parse(self, lp) -> ReductionParams:
        p = lp.reduction_param
        if p.operation not in _REDUCE_OPS:
            raise layer_error(lp, f"unknown operation {p.operation}; use SUM, ASUM, SUMSQ or MEAN")
        return ReductionParams(p.operation, p.axis, float(p.coeff))

    def _axes(self, layer: Layer, ndim: int) -> list[int]:
        start = axis_index(layer.params.axis, ndim, layer, "reduction axis")
        return list(range(start, ndim))

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(in_shapes[0])
        axes = self._axes(layer, len(shape))
        return [shape[: axes[0]]]

    def to_onnx(self, layer: Layer, g) -> None:
        params: ReductionParams = layer.params
        axes = self._axes(layer, len(g.shape(layer.bottoms[0])))
        op = _REDUCE_OPS[params.operation]
        if params.coeff == 1.0:
            g.reduce(op, layer.bottoms[0], axes, keepdims=0, output=layer.tops[0])
        elif axes[0] > 0:
            reduced = g.reduce(op, layer.bottoms[0], axes, keepdims=0)
            g.op("Mul", [reduced, g.const(params.coeff, "coeff")], layer.tops[0])
        else:
            # A 0-D result: the exporter stores a scalar initializer as shape [1] (numpy's
            # ascontiguousarray), so Mul would broadcast to [1]; reshape back to 0-D.
            reduced = g.reduce(op, layer.bottoms[0], axes, keepdims=0)
            scaled = g.op("Mul", [reduced, g.const(params.coeff, "coeff")])
            g.reshape(scaled, [], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        params: ReductionParams = layer.params
        x = inputs[0]
        dims = self._axes(layer, x.dim())
        if params.operation == ASUM:
            x = x.abs()
        elif params.operation == SUMSQ:
            x = x * x
        reduced = torch.mean(x, dim=dims) if params.operation == MEAN else torch.sum(x, dim=dims)
        return [reduced * params.coeff if params.coeff != 1.0 else reduced]


HANDLERS = [Softmax(), ArgMax(), Reduction()]
