"""Fork layers that move or mix channels: ShuffleChannel, Reorg, Axpy.

Caffe semantics (fork sources, read for the facts):

* ShuffleChannel (ShuffleNet forks, ``shuffle_channel_param.group`` g, default 1): the C
  channels, seen as a ``g x C/g`` matrix, are transposed: input channel ``i*(C/g) + j``
  goes to output channel ``j*g + i``. C must be divisible by g. ONNX ``Reshape
  [N, g, C/g, rest]`` -> ``Transpose`` -> ``Reshape``.
* Reorg (YOLOv2 forks, darknet's ``reorg_cpu`` semantics; ``reorg_param.stride`` s,
  required; ``reverse`` default false): the top is ``[N, C*s^2, H/s, W/s]`` (reverse:
  ``[N, C/s^2, H*s, W*s]``) but the data move is darknet's, *not* a space-to-depth: with
  ``C' = C/s^2`` the input buffer is read as ``X[N, C', H*s, W*s]`` and the output buffer,
  read with the *input's* shape ``Y[N, C, H, W]``, holds
  ``Y[n, (dy*s + dx)*C' + c, h, w] = X[n, c, h*s + dy, w*s + dx]``; ``reverse`` is the
  inverse permutation. C must be divisible by s^2 (both directions) and, forward, H and W
  by s. ONNX: ``Reshape [N, C', H, s, W, s]`` -> ``Transpose [0, 3, 5, 1, 2, 4]`` ->
  ``Reshape`` (reverse: ``[N, s, s, C', H, W]`` -> ``[0, 3, 4, 1, 5, 2]``).
* Axpy (SENet fork; bottoms a ``[N, C]`` or ``[N, C, 1, 1]``, x, y of equal shape
  ``[N, C, ...]``): ``top = a[n, c] * x + y``. ONNX ``Mul`` with a reshaped to
  ``[N, C, 1, ...]``, then ``Add``.

PyTorch: ``reshape``/``permute`` written from the same index facts; ``a * x + y``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, layer_error, prod, shape_error

# ----------------------------------------------------------------------------- ShuffleChannel


@dataclass(frozen=True)
class ShuffleChannelParams:
    group: int


class ShuffleChannel(Handler):
    """ShuffleNet channel shuffle: ``Reshape`` [N, g, C/g, ...], ``Transpose``, ``Reshape``."""

    types = ("ShuffleChannel",)

    def parse(self, lp) -> ShuffleChannelParams:
        group = lp.shuffle_channel_param.group
        if group <= 0:
            raise layer_error(lp, f"shuffle_channel_param.group must be positive, got {group}")
        return ShuffleChannelParams(group)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = in_shapes[0]
        group = layer.params.group
        if len(shape) < 2:
            raise shape_error(layer, f"needs an input with a channel axis, got shape {list(shape)}")
        if shape[1] % group:
            raise shape_error(layer, f"{shape[1]} channels are not divisible by group {group}")
        return [tuple(shape)]

    @staticmethod
    def _grouped(layer: Layer, shape: Shape) -> list[int]:
        group = layer.params.group
        return [shape[0], group, shape[1] // group, prod(shape[2:])]

    def to_onnx(self, layer: Layer, g) -> None:
        x = layer.bottoms[0]
        shape = g.shape(x)
        if layer.params.group == 1:
            g.op("Identity", [x], layer.tops[0])
            return
        grouped = g.reshape(x, self._grouped(layer, shape))
        swapped = g.op("Transpose", [grouped], perm=[0, 2, 1, 3])
        g.reshape(swapped, list(shape), layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        x = inputs[0]
        grouped = x.reshape(self._grouped(layer, tuple(x.shape)))
        return [grouped.transpose(1, 2).reshape(x.shape)]


# ----------------------------------------------------------------------------- Reorg


@dataclass(frozen=True)
class ReorgParams:
    stride: int
    reverse: bool


class Reorg(Handler):
    """YOLOv2 Reorg with darknet's index mapping (not SpaceToDepth), forward and ``reverse``."""

    types = ("Reorg",)

    def parse(self, lp) -> ReorgParams:
        p = lp.reorg_param
        if not p.HasField("stride"):
            raise layer_error(lp, "reorg_param.stride is required")
        if p.stride <= 0:
            raise layer_error(lp, f"reorg_param.stride must be positive, got {p.stride}")
        return ReorgParams(p.stride, p.reverse)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = in_shapes[0]
        s = layer.params.stride
        if len(shape) != 4:
            raise shape_error(layer, f"needs a 4-D input, got shape {list(shape)}")
        n, c, h, w = shape
        if c % (s * s):
            raise shape_error(layer, f"{c} channels are not divisible by stride^2 = {s * s}")
        if layer.params.reverse:
            return [(n, c // (s * s), h * s, w * s)]
        if h % s or w % s:
            raise shape_error(layer, f"height {h} and width {w} must be divisible by the stride {s}")
        return [(n, c * s * s, h // s, w // s)]

    @staticmethod
    def _plan(layer: Layer, shape: Shape) -> tuple[list[int], list[int]]:
        """(the 6-D view of the input, the transpose)."""
        s = layer.params.stride
        n, c, h, w = shape
        if layer.params.reverse:
            return [n, s, s, c // (s * s), h, w], [0, 3, 4, 1, 5, 2]
        return [n, c // (s * s), h, s, w, s], [0, 3, 5, 1, 2, 4]

    def to_onnx(self, layer: Layer, g) -> None:
        x = layer.bottoms[0]
        top = layer.tops[0]
        view, perm = self._plan(layer, g.shape(x))
        moved = g.op("Transpose", [g.reshape(x, view)], perm=perm)
        g.reshape(moved, list(g.shape(top)), top)

    def to_torch(self, layer: Layer, inputs, weights):
        x = inputs[0]
        view, perm = self._plan(layer, tuple(x.shape))
        out_shape = self.infer(layer, [tuple(x.shape)])[0]
        return [x.reshape(view).permute(perm).reshape(out_shape)]


# ----------------------------------------------------------------------------- Axpy


class Axpy(Handler):
    """SENet Axpy: ``a * x + y`` with a of shape [N, C] or [N, C, 1, 1] (bottoms a, x, y)."""

    types = ("Axpy",)
    bottoms = (3, 3)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        a, x, y = (tuple(s) for s in in_shapes)
        if len(x) < 2:
            raise shape_error(layer, f"x (bottom 1) needs a channel axis, got shape {list(x)}")
        if x != y:
            raise shape_error(
                layer, f"x (bottom 1) {list(x)} and y (bottom 2) {list(y)} must have the same shape"
            )
        if len(a) < 2 or a[:2] != x[:2] or prod(a[2:]) != 1:
            raise shape_error(
                layer,
                f"a (bottom 0) must be [N, C] or [N, C, 1, 1] with x's [N, C] = {list(x[:2])}, got {list(a)}",
            )
        return [x]

    def to_onnx(self, layer: Layer, g) -> None:
        a, x, y = layer.bottoms
        shape = g.shape(x)
        scale = g.reshape(a, [shape[0], shape[1]] + [1] * (len(shape) - 2))
        g.op("Add", [g.op("Mul", [scale, x]), y], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        a, x, y = inputs
        return [a.reshape(x.shape[:2] + (1,) * (x.dim() - 2)) * x + y]


HANDLERS = [ShuffleChannel(), Reorg(), Axpy()]

__all__ = ["Axpy", "Reorg", "ShuffleChannel"]
