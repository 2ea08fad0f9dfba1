"""Layers that only move data around: Split, Dropout, Concat, Slice, Flatten, Reshape, Tile.

Caffe semantics (spec 2, 3.17-3.20, 3.24):

* Split copies its bottom to every top; Dropout is the identity in the TEST phase
  (``x * (1 - ratio)`` when a fork's ``scale_train: false``).
* Concat joins its bottoms along ``axis`` (default 1, negative counts from the end; the
  deprecated ``concat_dim`` is a non-negative alias, and setting both is an error). Every
  other dimension must match. One bottom is passed through.
* Slice cuts ``axis`` (or the deprecated ``slice_dim``) at the strictly increasing
  ``slice_point``s (exactly ``#tops - 1`` of them), or into ``#tops`` equal parts.
* Flatten merges the axes ``axis..end_axis`` (defaults 1 and -1) into one:
  ``shape[:axis] + [prod(shape[axis:end_axis+1])] + shape[end_axis+1:]``; not in place.
* Reshape replaces the bottom axes ``[axis, axis + num_axes)`` by ``shape`` (a negative
  ``axis`` means ``ndim + axis + 1``; ``num_axes: -1`` means "to the end"). A 0 in
  ``shape`` copies the bottom dimension at ``start + i`` (relative to ``axis``), and one
  -1 is inferred from the element count.
* Tile repeats the whole block ``shape[axis:]`` ``tiles`` times along ``axis``
  (``[a, b] -> [a, b, a, b]``, like ``np.tile``).

ONNX: ``Identity`` / ``Mul``; ``Concat(axis)``; ``Split`` with the sizes as the ``split``
input (an attribute before opset 13); ``Flatten(axis)`` only when its 2-D result is
exactly Caffe's shape, else ``Reshape``; ``Reshape`` to the full static target shape
computed here (ONNX's 0 copies the input dimension at the same *absolute* index, which is
not Caffe's rule); ``Tile`` with ``repeats`` 1 except ``tiles`` at ``axis``.
PyTorch: ``torch.cat``, ``torch.split``, ``reshape``, ``repeat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, axis_index, layer_error, prod, shape_error


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


# ----------------------------------------------------------------------------- Concat


@dataclass(frozen=True)
class ConcatParams:
    axis: int  # may be negative; resolved against the input rank


class Concat(Handler):
    types = ("Concat",)
    bottoms = (1, None)

    def parse(self, lp) -> ConcatParams:
        p = lp.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise layer_error(
                lp,
                f"sets both axis ({p.axis}) and the deprecated concat_dim ({p.concat_dim}); keep only axis",
            )
        return ConcatParams(p.concat_dim if p.HasField("concat_dim") else p.axis)

    def _axis(self, layer: Layer, ndim: int) -> int:
        return axis_index(layer.params.axis, ndim, layer, "concat axis")

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        first = tuple(in_shapes[0])
        axis = self._axis(layer, len(first))
        total = 0
        for i, shape in enumerate(in_shapes):
            shape = tuple(shape)
            same_rank = len(shape) == len(first)
            if not same_rank or shape[:axis] + shape[axis + 1 :] != first[:axis] + first[axis + 1 :]:
                raise shape_error(
                    layer,
                    f"bottom {i} ('{layer.bottoms[i]}') has shape {list(shape)}, which does not match "
                    f"bottom 0 {list(first)} outside the concat axis {axis}; "
                    f"all shapes: {[list(s) for s in in_shapes]}",
                )
            total += shape[axis]
        return [(*first[:axis], total, *first[axis + 1 :])]

    def to_onnx(self, layer: Layer, g) -> None:
        if len(layer.bottoms) == 1:
            g.op("Identity", layer.bottoms, layer.tops[0])
            return
        axis = self._axis(layer, len(g.shape(layer.bottoms[0])))
        g.op("Concat", layer.bottoms, layer.tops[0], axis=axis)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        axis = self._axis(layer, inputs[0].dim())
        return [torch.cat(list(inputs), dim=axis)]


# ----------------------------------------------------------------------------- Slice


@dataclass(frozen=True)
class SliceParams:
    axis: int  # may be negative
    slice_points: tuple[int, ...]  # empty: equal parts


def slice_sizes(layer: Layer, shape: Shape) -> tuple[int, list[int]]:
    """(resolved axis, size of every top along it) of a Slice layer, or a ShapeError."""
    params: SliceParams = layer.params
    axis = axis_index(params.axis, len(shape), layer, "slice axis")
    dim = shape[axis]
    count = len(layer.tops)
    if params.slice_points:
        if params.slice_points[-1] >= dim:
            raise shape_error(
                layer,
                f"slice_point {params.slice_points[-1]} is not inside axis {axis} of size {dim} "
                f"(input shape {list(shape)}); every slice_point must be < {dim}",
            )
        bounds = (0, *params.slice_points, dim)
        return axis, [end - start for start, end in pairwise(bounds)]
    if dim % count:
        raise shape_error(
            layer,
            f"axis {axis} of size {dim} (input shape {list(shape)}) cannot be split into {count} "
            "equal parts; give slice_point values",
        )
    return axis, [dim // count] * count


class Slice(Handler):
    types = ("Slice",)
    tops = (1, None)

    def parse(self, lp) -> SliceParams:
        p = lp.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise layer_error(
                lp, f"sets both axis ({p.axis}) and the deprecated slice_dim ({p.slice_dim}); keep only axis"
            )
        points = tuple(int(v) for v in p.slice_point)
        if points:
            if len(points) != len(lp.top) - 1:
                raise layer_error(
                    lp,
                    f"has {len(lp.top)} tops and {len(points)} slice_point(s) {list(points)}; "
                    f"give exactly {len(lp.top) - 1} (one fewer than the tops), or none for equal parts",
                )
            if any(b <= a for a, b in pairwise((0, *points))):
                raise layer_error(
                    lp, f"slice_point values {list(points)} must be > 0 and strictly increasing"
                )
        return SliceParams(p.slice_dim if p.HasField("slice_dim") else p.axis, points)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(in_shapes[0])
        axis, sizes = slice_sizes(layer, shape)
        return [(*shape[:axis], size, *shape[axis + 1 :]) for size in sizes]

    def to_onnx(self, layer: Layer, g) -> None:
        if len(layer.tops) == 1:
            g.op("Identity", layer.bottoms, layer.tops[0])
            return
        axis, sizes = slice_sizes(layer, g.shape(layer.bottoms[0]))
        if g.opset >= 13:
            g.node("Split", [layer.bottoms[0], g.ints(sizes, "split")], layer.tops, axis=axis)
        else:
            g.node("Split", layer.bottoms, layer.tops, axis=axis, split=sizes)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        axis, sizes = slice_sizes(layer, tuple(inputs[0].shape))
        return list(torch.split(inputs[0], sizes, dim=axis))


# ----------------------------------------------------------------------------- Flatten


@dataclass(frozen=True)
class FlattenParams:
    axis: int
    end_axis: int


def flatten_shape(layer: Layer, shape: Shape) -> Shape:
    params: FlattenParams = layer.params
    start = axis_index(params.axis, len(shape), layer, "flatten axis")
    end = axis_index(params.end_axis, len(shape), layer, "flatten end_axis")
    if start > end + 1:
        raise shape_error(
            layer,
            f"axis {params.axis} (= {start}) comes after end_axis {params.end_axis} (= {end}) for "
            f"input shape {list(shape)}; axis must not be greater than end_axis",
        )
    return (*shape[:start], prod(shape[start : end + 1]), *shape[end + 1 :])


class Flatten(Handler):
    types = ("Flatten",)

    def parse(self, lp) -> FlattenParams:
        if lp.top and lp.bottom and lp.top[0] == lp.bottom[0]:
            raise layer_error(
                lp, f"Caffe's Flatten cannot work in place (top = bottom = '{lp.top[0]}'); rename the top"
            )
        p = lp.flatten_param
        return FlattenParams(p.axis, p.end_axis)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        return [flatten_shape(layer, tuple(in_shapes[0]))]

    def to_onnx(self, layer: Layer, g) -> None:
        shape = g.shape(layer.bottoms[0])
        out = flatten_shape(layer, shape)
        start = axis_index(layer.params.axis, len(shape), layer)
        if out == (prod(shape[:start]), prod(shape[start:])):
            g.op("Flatten", layer.bottoms, layer.tops[0], axis=start)
        else:
            g.reshape(layer.bottoms[0], out, layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        x = inputs[0]
        return [x.reshape(flatten_shape(layer, tuple(x.shape)))]


# ----------------------------------------------------------------------------- Reshape


@dataclass(frozen=True)
class ReshapeParams:
    shape: tuple[int, ...]
    axis: int
    num_axes: int


def reshape_target(layer: Layer, shape: Shape) -> Shape:
    """Caffe's Reshape output shape: 0 and -1 resolved against the bottom ``shape``."""
    params: ReshapeParams = layer.params
    ndim = len(shape)
    start = params.axis if params.axis >= 0 else ndim + params.axis + 1
    if not 0 <= start <= ndim:
        raise shape_error(layer, f"axis {params.axis} is out of range for the {ndim}-D input {list(shape)}")
    end = ndim if params.num_axes == -1 else start + params.num_axes
    if end > ndim:
        raise shape_error(
            layer,
            f"axis {params.axis} + num_axes {params.num_axes} = {end} goes past the {ndim}-D input "
            f"{list(shape)}",
        )
    new = list(params.shape)
    for i, dim in enumerate(new):
        if dim == 0:
            if start + i >= ndim:
                raise shape_error(
                    layer,
                    f"shape dim {i} is 0 (copy), but the {ndim}-D input {list(shape)} has no axis "
                    f"{start + i} to copy",
                )
            new[i] = shape[start + i]
    target = [*shape[:start], *new, *shape[end:]]
    count = prod(shape)
    if -1 in new:
        known = prod(d for d in target if d != -1)
        if count % known:
            raise shape_error(
                layer,
                f"cannot infer the -1 dim of {list(params.shape)}: the input {list(shape)} has {count} "
                f"elements, not a multiple of the other dimensions' product {known}",
            )
        target[target.index(-1)] = count // known
    if prod(target) != count:
        raise shape_error(
            layer,
            f"target shape {target} has {prod(target)} elements but the input {list(shape)} has {count}",
        )
    return tuple(target)


class Reshape(Handler):
    types = ("Reshape",)

    def parse(self, lp) -> ReshapeParams:
        p = lp.reshape_param
        dims = tuple(int(d) for d in p.shape.dim)
        if any(d < -1 for d in dims):
            raise layer_error(lp, f"shape {list(dims)} has a dim below -1; use 0 (copy) or -1 (infer)")
        if dims.count(-1) > 1:
            raise layer_error(lp, f"shape {list(dims)} has more than one -1; at most one dim can be inferred")
        if p.num_axes < -1:
            raise layer_error(lp, f"num_axes {p.num_axes} must be >= 0, or -1 for all the remaining axes")
        return ReshapeParams(dims, p.axis, p.num_axes)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        return [reshape_target(layer, tuple(in_shapes[0]))]

    def to_onnx(self, layer: Layer, g) -> None:
        g.reshape(layer.bottoms[0], g.shape(layer.tops[0]), layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        x = inputs[0]
        return [x.reshape(reshape_target(layer, tuple(x.shape)))]


# ----------------------------------------------------------------------------- Tile


@dataclass(frozen=True)
class TileParams:
    axis: int
    tiles: int


class Tile(Handler):
    types = ("Tile",)

    def parse(self, lp) -> TileParams:
        p = lp.tile_param
        if not p.HasField("tiles"):
            raise layer_error(lp, "tile_param.tiles (the number of copies) must be set")
        if p.tiles <= 0:
            raise layer_error(lp, f"tiles must be positive, got {p.tiles}")
        return TileParams(p.axis, p.tiles)

    def _repeats(self, layer: Layer, ndim: int) -> list[int]:
        axis = axis_index(layer.params.axis, ndim, layer, "tile axis")
        return [layer.params.tiles if i == axis else 1 for i in range(ndim)]

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = in_shapes[0]
        return [tuple(d * r for d, r in zip(shape, self._repeats(layer, len(shape))))]

    def to_onnx(self, layer: Layer, g) -> None:
        repeats = self._repeats(layer, len(g.shape(layer.bottoms[0])))
        g.op("Tile", [layer.bottoms[0], g.ints(repeats, "repeats")], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        x = inputs[0]
        return [x.repeat(*self._repeats(layer, x.dim()))]


HANDLERS = [Split(), Dropout(), Concat(), Slice(), Flatten(), Reshape(), Tile()]
