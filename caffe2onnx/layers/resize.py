"""Resizing layers: Interp (bilinear), PixelShuffle (depth to space), Resample (nearest).

Caffe semantics:

* **Interp** (DeepLab v2 / PSPNet / ICNet, spec 3.9): ``pad_beg``/``pad_end`` (<= 0) crop
  the input to the window ``[-pad_beg, H + pad_end)`` on both spatial axes (``pad_beg``
  starts both), ``H_eff = H + pad_beg + pad_end``. The output size is the first rule that
  applies, tested with ``has_*``: shrink only ``(H_eff - 1) // shrink + 1``; zoom only
  ``(H_eff - 1) * zoom + 1``; ``height`` and ``width``; shrink then zoom; the size of a
  second bottom (DeepLab v2); otherwise Caffe aborts. The interpolation is bilinear with
  aligned corners (``caffe_cpu_interp2``: ``rh = (H_eff - 1) / (H_out - 1)``, 0 when
  ``H_out == 1``), and a plain copy when the sizes are equal.
* **PixelShuffle** (fork layer, spec 3.10): ``(N, C, H, W) -> (N, C / r^2, H r, W r)``,
  input channel ``c r^2 + i r + j`` goes to ``(c, h r + i, w r + j)``.
* **Resample** (FlowNet's layer as OpenCV's Caffe importer runs it; NEAREST only): the
  output size is bottom[1]'s H x W with two bottoms, else ``int(float32(H) * factor)``
  when ``factor`` is set, else ``height`` x ``width``. Output row ``y`` reads input row
  ``min(floor(y * (1 / (H_out / H))), H - 1)`` in double precision, which is
  ``cv::resize(INTER_NEAREST)``, measured against cv2.dnn 4.14 on the sizes in the tests.
  FlowNet's own Caffe layer ignores ``factor`` and rounds half-pixel coordinates; the two
  agree for equal integer upscales of both axes only. LINEAR/CUBIC/AREA are refused:
  FlowNet filters half-pixel (antialiased) triangles, OpenCV interpolates asymmetric
  bilinear, so there is no single behaviour to reproduce.

ONNX: Interp is ``Slice`` (only with pads) + ``Resize(mode=linear,
coordinate_transformation_mode=align_corners)`` with exact ``sizes`` (``roi``/``scales``
left empty, valid at every opset 13..21); PixelShuffle is ``DepthToSpace(mode=CRD)``;
Resample is a ``Gather`` per resized axis with the source indices computed here (exact,
no runtime coordinate arithmetic). Equal sizes become ``Identity``. PyTorch:
``F.interpolate(mode=bilinear, align_corners=True)``, ``F.pixel_shuffle``,
``index_select``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, layer_error, shape_error


def _spatial(layer: Layer, shape: Shape, what: str = "input") -> tuple[int, int]:
    if len(shape) != 4:
        raise shape_error(layer, f"needs a 4-D (N, C, H, W) {what}, got shape {list(shape)}")
    return shape[2], shape[3]


# ----------------------------------------------------------------------------- Interp


@dataclass(frozen=True)
class InterpParams:
    rule: str  # "shrink", "zoom", "size", "shrink_zoom" or "bottom"
    shrink: int
    zoom: int
    height: int
    width: int
    pad_beg: int
    pad_end: int


def parse_interp_params(lp) -> InterpParams:
    p = lp.interp_param
    has = {name: p.HasField(name) for name in ("shrink_factor", "zoom_factor", "height", "width")}
    if has["shrink_factor"] and not has["zoom_factor"]:
        rule = "shrink"
    elif has["zoom_factor"] and not has["shrink_factor"]:
        rule = "zoom"
    elif has["height"] and has["width"]:
        rule = "size"
    elif has["shrink_factor"] and has["zoom_factor"]:
        rule = "shrink_zoom"
    elif len(lp.bottom) == 2:
        rule = "bottom"
    else:
        raise layer_error(
            lp,
            "no output size: set interp_param zoom_factor, shrink_factor, or both height and width, "
            "or give a second bottom whose H x W is the size",
        )
    if p.pad_beg > 0 or p.pad_end > 0:
        raise layer_error(
            lp, f"pad_beg {p.pad_beg} and pad_end {p.pad_end} must be <= 0 (Interp can only crop)"
        )
    if rule in ("shrink", "shrink_zoom") and p.shrink_factor < 1:
        raise layer_error(lp, f"shrink_factor must be >= 1, got {p.shrink_factor}")
    if rule in ("zoom", "shrink_zoom") and p.zoom_factor < 1:
        raise layer_error(lp, f"zoom_factor must be >= 1, got {p.zoom_factor}")
    if rule == "size" and (p.height < 1 or p.width < 1):
        raise layer_error(lp, f"height {p.height} and width {p.width} must be positive")
    return InterpParams(rule, p.shrink_factor, p.zoom_factor, p.height, p.width, p.pad_beg, p.pad_end)


def interp_sizes(layer: Layer, in_shapes: Sequence[Shape]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H_eff, W_eff), (H_out, W_out)) of an Interp layer, or a ShapeError."""
    params: InterpParams = layer.params
    height, width = _spatial(layer, in_shapes[0])
    crop = params.pad_beg + params.pad_end
    eff = (height + crop, width + crop)
    if min(eff) < 1:
        raise shape_error(
            layer,
            f"pad_beg {params.pad_beg} + pad_end {params.pad_end} crops the whole {height}x{width} input",
        )
    if params.rule == "size":
        return eff, (params.height, params.width)
    if params.rule == "bottom":
        return eff, _spatial(layer, in_shapes[1], "second bottom")
    out = eff
    if params.rule in ("shrink", "shrink_zoom"):
        out = tuple((d - 1) // params.shrink + 1 for d in out)
    if params.rule in ("zoom", "shrink_zoom"):
        out = tuple((d - 1) * params.zoom + 1 for d in out)
    return eff, out


class Interp(Handler):
    types = ("Interp",)
    bottoms = (1, 2)

    def parse(self, lp) -> InterpParams:
        return parse_interp_params(lp)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        _, out = interp_sizes(layer, in_shapes)
        return [(*in_shapes[0][:2], *out)]

    def to_onnx(self, layer: Layer, g) -> None:
        params: InterpParams = layer.params
        shapes = [g.shape(b) for b in layer.bottoms]
        eff, out = interp_sizes(layer, shapes)
        x, top = layer.bottoms[0], layer.tops[0]
        height, width = shapes[0][2:]
        if params.pad_beg or params.pad_end:
            start = -params.pad_beg
            x = g.op(
                "Slice",
                [
                    x,
                    g.ints([start, start], "starts"),
                    g.ints([height + params.pad_end, width + params.pad_end], "ends"),
                    g.ints([2, 3], "axes"),
                ],
                top if eff == out else None,
            )
            if eff == out:
                return
        if eff == out:
            g.op("Identity", [x], top)
            return
        sizes = g.ints([*shapes[0][:2], *out], "sizes")
        g.op("Resize", [x, "", "", sizes], top, mode="linear", coordinate_transformation_mode="align_corners")

    def to_torch(self, layer: Layer, inputs, weights):
        from torch.nn import functional as F

        params: InterpParams = layer.params
        eff, out = interp_sizes(layer, [tuple(t.shape) for t in inputs])
        x = inputs[0]
        start = -params.pad_beg
        x = x[:, :, start : start + eff[0], start : start + eff[1]]
        if eff == out:
            return [x.clone()]
        return [F.interpolate(x, size=out, mode="bilinear", align_corners=True)]


# ----------------------------------------------------------------------------- PixelShuffle


@dataclass(frozen=True)
class PixelShuffleParams:
    factor: int


class PixelShuffle(Handler):
    types = ("PixelShuffle",)

    def parse(self, lp) -> PixelShuffleParams:
        factor = lp.pixel_shuffle_param.upscale_factor
        if factor < 1:
            raise layer_error(lp, f"upscale_factor must be >= 1, got {factor}")
        return PixelShuffleParams(factor)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(in_shapes[0])
        height, width = _spatial(layer, shape)
        r = layer.params.factor
        if shape[1] % (r * r):
            raise shape_error(
                layer,
                f"input channels {shape[1]} (shape {list(shape)}) are not divisible by "
                f"upscale_factor^2 = {r}^2 = {r * r}",
            )
        return [(shape[0], shape[1] // (r * r), height * r, width * r)]

    def to_onnx(self, layer: Layer, g) -> None:
        r = layer.params.factor
        if r == 1:
            g.op("Identity", layer.bottoms, layer.tops[0])
        else:
            g.op("DepthToSpace", layer.bottoms, layer.tops[0], blocksize=r, mode="CRD")

    def to_torch(self, layer: Layer, inputs, weights):
        from torch.nn import functional as F

        return [F.pixel_shuffle(inputs[0], layer.params.factor)]


# ----------------------------------------------------------------------------- Resample

_RESAMPLE_TYPES = {1: "NEAREST", 2: "LINEAR", 3: "CUBIC", 4: "AREA"}


@dataclass(frozen=True)
class ResampleParams:
    factor: float | None  # None: not set
    height: int
    width: int


class Resample(Handler):
    types = ("Resample",)
    bottoms = (1, 2)

    def parse(self, lp) -> ResampleParams:
        p = lp.resample_param
        kind = _RESAMPLE_TYPES.get(p.type, str(p.type))
        if kind != "NEAREST":
            raise layer_error(
                lp,
                f"resample type {kind} is not supported (only NEAREST): FlowNet's Caffe filters "
                "half-pixel antialiased triangles/cubics, OpenCV interpolates asymmetric bilinear, "
                "so no single result can be reproduced. The default type is LINEAR; set type: NEAREST",
            )
        factor = float(np.float32(p.factor)) if p.HasField("factor") else None
        has_size = p.HasField("height") or p.HasField("width")
        if len(lp.bottom) == 2:
            if factor not in (None, 1.0):
                raise layer_error(lp, f"factor {factor} must be 1 (or unset) with a second bottom")
        elif factor is not None:
            if has_size:
                raise layer_error(
                    lp,
                    f"sets both factor ({factor}) and height/width: OpenCV uses the factor, FlowNet's "
                    "Caffe height/width; keep only one",
                )
            if not factor > 0:
                raise layer_error(lp, f"factor must be positive, got {factor}")
        elif not (p.height > 0 and p.width > 0):
            raise layer_error(
                lp,
                f"no output size (height {p.height}, width {p.width}): set factor, both height and "
                "width (> 0), or give a second bottom whose H x W is the size",
            )
        return ResampleParams(factor, p.height, p.width)

    def _out_size(self, layer: Layer, in_shapes: Sequence[Shape]) -> tuple[int, int]:
        params: ResampleParams = layer.params
        height, width = _spatial(layer, in_shapes[0])
        if len(in_shapes) == 2:
            return _spatial(layer, in_shapes[1], "second bottom")
        if params.factor is None:
            return params.height, params.width
        factor = np.float32(params.factor)
        out = (int(np.float32(height) * factor), int(np.float32(width) * factor))
        if min(out) < 1:
            raise shape_error(
                layer, f"factor {params.factor} makes the {height}x{width} input {out[0]}x{out[1]}"
            )
        return out

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        return [(*in_shapes[0][:2], *self._out_size(layer, in_shapes))]

    def _indices(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[tuple[int, list[int]]]:
        """(axis, source index per output position) for every axis whose size changes."""
        result = []
        out = self._out_size(layer, in_shapes)
        for axis, (size, new) in enumerate(zip(in_shapes[0][2:], out), start=2):
            inverse = 1.0 / (new / size)
            index = [min(math.floor(i * inverse), size - 1) for i in range(new)]
            if index != list(range(size)):
                result.append((axis, index))
        return result

    def to_onnx(self, layer: Layer, g) -> None:
        gathers = self._indices(layer, [g.shape(b) for b in layer.bottoms])
        x, top = layer.bottoms[0], layer.tops[0]
        if not gathers:
            g.op("Identity", [x], top)
        for i, (axis, index) in enumerate(gathers):
            last = i == len(gathers) - 1
            x = g.op("Gather", [x, g.ints(index, f"index{axis}")], top if last else None, axis=axis)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        x = inputs[0]
        for axis, index in self._indices(layer, [tuple(t.shape) for t in inputs]):
            x = torch.index_select(x, axis, torch.tensor(index, dtype=torch.int64))
        return [x]


HANDLERS = [Interp(), PixelShuffle(), Resample()]

__all__ = ["Interp", "InterpParams", "PixelShuffle", "Resample", "interp_sizes"]
