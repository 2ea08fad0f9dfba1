"""FlowNet's fork layers: Correlation (the FlowNetC cost volume) and Accum (resize + concat).

Caffe semantics, read from lmb-freiburg/flownet2 @ 476d400 (correlation_layer.cpp/.cu)
and @ 72664da (accum_layer.cpp/.cu); OpenCV's dnn layers (correlation_layer.cpp,
accum_layer.cpp) implement the same forward for the cases noted below.

* **Correlation** (``correlation_param``): two bottoms of one shape ``(N, C, H, W)``, both
  zero-padded by ``pad``. ``kernel_size`` k (odd, required), ``max_displacement`` d
  (required), ``stride_1`` s1, ``stride_2`` s2. With ``kr = (k - 1) / 2`` and
  ``border = d + kr``: ``H_out = ceil((H + 2 pad - 2 border) / s1)`` (must be >= 1),
  likewise W. The grid radius is ``R = d // s2`` and the top has ``(2R + 1)^2`` channels;
  channel ``(p + R)(2R + 1) + (o + R)`` holds the displacement ``(dy, dx) = (p s2, o s2)``
  (rows outer, columns inner). Output ``(y, x)`` compares the k x k patch of bottom 0 at
  padded rows ``[y s1 + d, y s1 + d + k)`` (columns alike) with the patch of bottom 1
  shifted by ``(dy, dx)``: MULTIPLY sums ``a * b``, SUBTRACT sums ``|a - b|``, over the
  patch and all channels, divided by ``k^2 C``. ``do_abs`` and ``single_direction`` do
  not enter the 2-D layer's forward (the latter belongs to Correlation1D), so they are
  ignored here as in Caffe. OpenCV always multiplies (it ignores ``correlation_type``).
* **Accum** (``accum_param``): every bottom (all but the last with ``have_reference``) is
  resized to a common ``H x W`` by bilinear interpolation with aligned corners (sample
  position ``x_out / (W_out - 1) * (W_in - 1)``), and the results are concatenated on
  channels. The size: with ``have_reference`` the last bottom's H x W; otherwise the
  largest H and the largest W of the bottoms, replaced by ``ceil(max / size_divisible_by)
  * size_divisible_by`` (when that field is set) or else by ``top_height x top_width``,
  but only if *both* of those exceed the maxima. OpenCV 4.x rounds ``size_divisible_by``
  down (integer division), so it never enlarges; and it lays out batches above 1 wrongly.
  A top of height or width 1 makes Caffe divide 0 by 0, so it is refused unless every
  bottom already has the top's size (then it is a copy).

ONNX: Correlation pads both bottoms (``Pad``), then for every displacement ``Slice``s the
shifted window of bottom 1, takes ``Mul`` (or ``Sub`` + ``Abs``) with the one window of
bottom 0 and averages over the k x k x C patch with a ``Conv`` (one shared ``[1, C, k, k]``
weight of ``1 / (k^2 C)``, stride s1; twice as fast in onnxruntime as ``ReduceMean`` +
``AveragePool``); a ``Concat`` stacks the displacement maps. Accum is ``Resize(linear,
align_corners, sizes)`` per bottom that needs it, then ``Concat``. PyTorch: Correlation
through ``F.unfold`` patches, Accum through ``F.interpolate(align_corners=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, layer_error, shape_error

_CORRELATION_TYPES = {0: "MULTIPLY", 1: "SUBTRACT"}


def _four_d(layer: Layer, shape: Shape, what: str) -> Shape:
    if len(shape) != 4:
        raise shape_error(layer, f"needs 4-D (N, C, H, W) bottoms, {what} has shape {list(shape)}")
    return tuple(shape)


# ----------------------------------------------------------------------------- Correlation


@dataclass(frozen=True)
class CorrelationParams:
    pad: int
    kernel: int
    max_displacement: int
    stride_1: int
    stride_2: int
    subtract: bool

    @property
    def radius(self) -> int:
        """The displacement grid radius R: displacements ``-R s2 .. R s2`` per axis."""
        return self.max_displacement // self.stride_2

    def displacements(self) -> list[tuple[int, int]]:
        """(dy, dx) of every top channel, in Caffe's order (rows outer, columns inner)."""
        steps = range(-self.radius, self.radius + 1)
        return [(p * self.stride_2, o * self.stride_2) for p in steps for o in steps]


@dataclass(frozen=True)
class CorrelationGeometry:
    out_h: int
    out_w: int
    window_h: int  # rows of bottom 0 that the patches cover: (out_h - 1) s1 + k
    window_w: int


def correlation_geometry(layer: Layer, in_shapes: Sequence[Shape]) -> CorrelationGeometry:
    params: CorrelationParams = layer.params
    first = _four_d(layer, in_shapes[0], "bottom 0")
    second = _four_d(layer, in_shapes[1], "bottom 1")
    if first != second:
        raise shape_error(
            layer, f"both bottoms must have the same shape, got {list(first)} and {list(second)}"
        )
    border = params.max_displacement + (params.kernel - 1) // 2
    sizes = []
    for axis, size in (("height", first[2]), ("width", first[3])):
        room = size + 2 * params.pad - 2 * border
        if room < 1:
            raise shape_error(
                layer,
                f"input {axis} {size} + 2 * pad {params.pad} leaves no room for max_displacement "
                f"{params.max_displacement} and kernel_size {params.kernel} on both sides "
                f"(needs > {2 * border}); raise pad or lower max_displacement",
            )
        sizes.append(-(-room // params.stride_1))
    s1, k = params.stride_1, params.kernel
    return CorrelationGeometry(sizes[0], sizes[1], (sizes[0] - 1) * s1 + k, (sizes[1] - 1) * s1 + k)


def parse_correlation_params(lp) -> CorrelationParams:
    p = lp.correlation_param
    if not p.HasField("kernel_size"):
        raise layer_error(lp, "correlation_param.kernel_size is required")
    if not p.HasField("max_displacement"):
        raise layer_error(lp, "correlation_param.max_displacement is required")
    if p.kernel_size % 2 == 0:
        raise layer_error(lp, f"kernel_size must be odd (Caffe refuses even kernels), got {p.kernel_size}")
    if p.stride_1 < 1 or p.stride_2 < 1:
        raise layer_error(lp, f"stride_1 {p.stride_1} and stride_2 {p.stride_2} must be >= 1")
    kind = _CORRELATION_TYPES.get(p.correlation_type)
    if kind is None:
        raise layer_error(lp, f"correlation_type {p.correlation_type} is unknown; use MULTIPLY or SUBTRACT")
    return CorrelationParams(
        pad=p.pad,
        kernel=p.kernel_size,
        max_displacement=p.max_displacement,
        stride_1=p.stride_1,
        stride_2=p.stride_2,
        subtract=kind == "SUBTRACT",
    )


class Correlation(Handler):
    """FlowNet's correlation of two feature maps over a grid of displacements (MULTIPLY or SUBTRACT)."""

    types = ("Correlation",)
    bottoms = (2, 2)

    def parse(self, lp) -> CorrelationParams:
        return parse_correlation_params(lp)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        geometry = correlation_geometry(layer, in_shapes)
        channels = len(layer.params.displacements())
        return [(in_shapes[0][0], channels, geometry.out_h, geometry.out_w)]

    def to_onnx(self, layer: Layer, g) -> None:
        params: CorrelationParams = layer.params
        geometry = correlation_geometry(layer, [g.shape(b) for b in layer.bottoms])
        a, b = layer.bottoms
        if params.pad:
            pads = g.ints([0, 0, params.pad, params.pad] * 2, "pads")
            a, b = g.op("Pad", [a, pads]), g.op("Pad", [b, pads])
        d = params.max_displacement
        axes = g.ints([2, 3], "axes")

        def window(x: str, dy: int, dx: int) -> str:
            starts = [d + dy, d + dx]
            ends = [starts[0] + geometry.window_h, starts[1] + geometry.window_w]
            return g.op("Slice", [x, g.ints(starts, "starts"), g.ints(ends, "ends"), axes])

        patch = window(a, 0, 0)
        # one Conv per displacement sums the k x k x C products and divides by k^2 C
        channels, k, s1 = g.shape(layer.bottoms[0])[1], params.kernel, params.stride_1
        mean = g.const(np.full((1, channels, k, k), 1.0 / (k * k * channels)), "mean_weight")
        displacements = params.displacements()
        top = layer.tops[0]
        maps = []
        for dy, dx in displacements:
            shifted = window(b, dy, dx)
            if params.subtract:
                compared = g.op("Abs", [g.op("Sub", [patch, shifted])])
            else:
                compared = g.op("Mul", [patch, shifted])
            output = top if len(displacements) == 1 else None
            maps.append(g.op("Conv", [compared, mean], output, kernel_shape=[k, k], strides=[s1, s1]))
        if len(maps) > 1:
            g.op("Concat", maps, top, axis=1)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch
        from torch.nn import functional as F

        params: CorrelationParams = layer.params
        geometry = correlation_geometry(layer, [tuple(t.shape) for t in inputs])
        pad = [params.pad] * 4
        a, b = (F.pad(x, pad) for x in inputs)
        d, k, s1 = params.max_displacement, params.kernel, params.stride_1

        def patches(x, dy: int, dx: int):
            """(N, C k^2, H_out W_out): the k x k x C patch behind every output position."""
            region = x[:, :, d + dy : d + dy + geometry.window_h, d + dx : d + dx + geometry.window_w]
            return F.unfold(region, kernel_size=k, stride=s1)

        first = patches(a, 0, 0)
        maps = []
        for dy, dx in params.displacements():
            second = patches(b, dy, dx)
            compared = (first - second).abs() if params.subtract else first * second
            maps.append(compared.mean(dim=1))
        out = torch.stack(maps, dim=1)
        return [out.reshape(out.shape[0], out.shape[1], geometry.out_h, geometry.out_w)]


# ----------------------------------------------------------------------------- Accum


@dataclass(frozen=True)
class AccumParams:
    top_height: int
    top_width: int
    size_divisible_by: int | None  # None: not set
    have_reference: bool


def parse_accum_params(lp) -> AccumParams:
    p = lp.accum_param
    divisor = p.size_divisible_by if p.HasField("size_divisible_by") else None
    if divisor == 0:
        raise layer_error(
            lp, "size_divisible_by: 0 makes Caffe divide by zero; remove it or give a positive value"
        )
    if p.have_reference and len(lp.bottom) < 2:
        raise layer_error(
            lp,
            f"have_reference needs at least 2 bottoms (the last one gives the size), has {len(lp.bottom)}",
        )
    return AccumParams(p.top_height, p.top_width, divisor, p.have_reference)


def accum_size(layer: Layer, in_shapes: Sequence[Shape]) -> tuple[int, int]:
    """The common (H, W) every accumulated bottom is resized to, or a ShapeError."""
    params: AccumParams = layer.params
    shapes = [_four_d(layer, s, f"bottom {i}") for i, s in enumerate(in_shapes)]
    sources = shapes[:-1] if params.have_reference else shapes
    batch = sources[0][0]
    if any(s[0] != batch for s in sources):
        raise shape_error(
            layer, f"all accumulated bottoms must have the same batch, got {[list(s) for s in sources]}"
        )
    if params.have_reference:
        size = shapes[-1][2:]
    else:
        max_h, max_w = max(s[2] for s in shapes), max(s[3] for s in shapes)
        if params.size_divisible_by is not None:
            step = params.size_divisible_by
            wanted = (-(-max_h // step) * step, -(-max_w // step) * step)
        else:
            wanted = (params.top_height, params.top_width)
        size = wanted if wanted[0] > max_h and wanted[1] > max_w else (max_h, max_w)
    resized = [list(s) for s in sources if tuple(s[2:]) != tuple(size)]
    if min(size) == 1 and resized:
        raise shape_error(
            layer,
            f"top size {size[0]}x{size[1]}: Caffe's Accum computes the sample position as 0/0 "
            f"for a top of height or width 1, so resizing {resized} is undefined",
        )
    return int(size[0]), int(size[1])


class Accum(Handler):
    """FlowNet's Accum: bilinear (aligned corners) resize of every bottom to one size, then concat on channels."""

    types = ("Accum",)
    bottoms = (1, None)

    def parse(self, lp) -> AccumParams:
        return parse_accum_params(lp)

    def _sources(self, layer: Layer, items: Sequence) -> Sequence:
        return items[:-1] if layer.params.have_reference else items

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        height, width = accum_size(layer, in_shapes)
        channels = sum(s[1] for s in self._sources(layer, in_shapes))
        return [(in_shapes[0][0], channels, height, width)]

    def to_onnx(self, layer: Layer, g) -> None:
        size = accum_size(layer, [g.shape(b) for b in layer.bottoms])
        top = layer.tops[0]
        sources = self._sources(layer, layer.bottoms)
        parts = []
        for bottom in sources:
            shape = g.shape(bottom)
            if tuple(shape[2:]) == size:
                parts.append(bottom)
                continue
            sizes = g.ints([*shape[:2], *size], "sizes")
            output = top if len(sources) == 1 else None
            parts.append(
                g.op(
                    "Resize",
                    [bottom, "", "", sizes],
                    output,
                    mode="linear",
                    coordinate_transformation_mode="align_corners",
                )
            )
        if len(parts) > 1:
            g.op("Concat", parts, top, axis=1)
        elif parts[0] != top:
            g.op("Identity", parts, top)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch
        from torch.nn import functional as F

        size = accum_size(layer, [tuple(t.shape) for t in inputs])
        parts = [
            x
            if tuple(x.shape[2:]) == size
            else F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            for x in self._sources(layer, inputs)
        ]
        return [torch.cat(parts, dim=1)]


HANDLERS = [Correlation(), Accum()]

__all__ = [
    "Accum",
    "AccumParams",
    "Correlation",
    "CorrelationParams",
    "accum_size",
    "correlation_geometry",
]
