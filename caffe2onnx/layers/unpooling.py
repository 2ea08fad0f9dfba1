"""Unpooling and nearest upsampling: SegNet/ENet ``Upsample``, YOLO ``Upsample``, DeconvNet ``Unpooling``.

Caffe semantics (spec 3.5-3.8, pitfalls 6.13-6.14):

* ``Upsample`` with **2 bottoms** (SegNet, ENet; ``upsample_param``): bottom[1] is the
  float mask of a MAX ``Pooling`` (``h*W + w`` inside each (n, c) plane of the pooling
  input) and must have bottom[0]'s shape. The top is ``upsample_h x upsample_w`` when
  both are set (each > 1), else ``H*scale_h - pad_out_h`` x ``W*scale_w - pad_out_w``
  (``scale`` default 2, or ``scale_h``/``scale_w``; each an integer > 1; ``pad_out_*``
  only with scale 2). The top is zero except ``top_plane[int(mask[i])] = x[i]``: the
  index is used as is in a plane of the top's width, even when that differs from the
  pooling input's size (Caffe then scatters to row-shifted positions; so do we). With
  duplicate indices (overlapping pooling windows) the last write in scan order wins (CPU).
  An index ``>= out_h*out_w`` is fatal in Caffe; onnxruntime and torch raise too, except
  for exactly ``out_h*out_w``, which writes nothing here. A mask of -1 (an empty pooling
  window) is undefined behaviour in Caffe; here it writes nothing.
* ``Upsample`` with **1 bottom** (YOLOv3 ports: darknet2caffe, MobileNet-YOLO):
  nearest neighbour, ``out[..., h, w] = in[..., h // s, w // s]`` for an integer
  ``scale`` (default 1 here). Huawei's variant writes ``scale: 1 stride: s`` (only
  scale 1 is accepted with ``stride``).
* ``Unpooling`` (DeconvNet, V1 ``UNPOOLING``; ``unpooling_param``): ``kernel_size`` or
  ``kernel_h/_w``, ``stride`` (1) or ``stride_h/_w``, ``pad`` must be 0, target size
  ``unpool_size`` or ``unpool_h/_w``, else ``max((H-1)s + k, H*s + 1)``.
  MAX with a mask bottom: the SegNet scatter. MAX without a mask: ``x`` goes to the
  top-left cell of its window, ``(ph*s, pw*s)`` clamped into the top (last write wins).
  AVE: ``x / window_size`` added over the window (the window size counts only cells
  inside the top). TILE: ``x`` added over the window. AVE/TILE ignore a mask bottom.

ONNX:

* Scatter: ``ScatterElements(axis=2)`` of ``x`` reshaped ``[N, C, H*W]`` into zeros
  ``[N, C, out_h*out_w + 1]`` with indices ``Cast(mask, int64)`` reshaped alike, then the
  last (scratch) slot, where -1 lands, is sliced off. No per-plane offsets are needed,
  unlike ``MaxUnpool``, which also refuses SegNet's odd sizes. ONNX leaves the order of
  duplicate writes undefined, so this plain form is used only when the mask comes
  straight from a ``Pooling`` whose windows cannot overlap (kernel <= stride). Otherwise
  the writes are made unique first: sort ``index*H*W + position`` with ``TopK``, keep
  the last writer of each index and send the others to the scratch slot. Both forms are
  exact at every opset.
* Nearest: ``Resize(mode=nearest, coordinate_transformation_mode=asymmetric,
  nearest_mode=floor, scales=[1, 1, s, s])``.
* MAX without a mask: ``Gather`` with a constant source map (computed here, last write
  wins) and ``Where`` for the cells no input reaches.
* AVE/TILE: depthwise ``ConvTranspose`` with constant ones (AVE divides ``x`` by each
  window's clipped size first), then ``Slice``/``Pad`` to the target size.

PyTorch reference: ``scatter_reduce(amax)`` of positions + ``gather`` (last write wins),
``repeat_interleave``, ``conv_transpose2d``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, layer_error, shape_error
from caffe2onnx.layers.pooling import PoolParams

MAX, AVE, TILE = 0, 1, 2
_METHOD_NAMES = {MAX: "MAX", AVE: "AVE", TILE: "TILE"}


# ----------------------------------------------------------------------------- params


@dataclass(frozen=True)
class UpsampleParams:
    scatter: bool  # 2 bottoms: SegNet scatter; 1 bottom: nearest neighbour
    scale: tuple[int, int]
    pad_out: tuple[int, int] = (0, 0)
    size: tuple[int, int] | None = None  # upsample_h, upsample_w
    unique_indices: bool = False  # the mask comes from non-overlapping MAX pooling


@dataclass(frozen=True)
class UnpoolParams:
    method: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    size: tuple[int, int] | None  # unpool_size or unpool_h/unpool_w
    unique_indices: bool = False


def _integer_scale(lp, value: float, what: str, minimum: int) -> int:
    if value != int(value) or value < minimum:
        raise layer_error(lp, f"{what} must be an integer >= {minimum}, got {value:g}")
    return int(value)


def _parse_upsample(lp) -> UpsampleParams:
    p = lp.upsample_param
    segnet_fields = [
        f
        for f in ("scale_h", "scale_w", "pad_out_h", "pad_out_w", "upsample_h", "upsample_w")
        if p.HasField(f)
    ]
    if len(lp.bottom) == 1:
        if segnet_fields:
            raise layer_error(
                lp,
                f"{', '.join(segnet_fields)} belong to SegNet's Upsample, which takes a second "
                "bottom (the pooling mask); with one bottom only 'scale' (nearest neighbour) is known",
            )
        if p.HasField("stride"):  # Huawei: stride is the factor; its guide sets scale 1
            if p.HasField("scale") and p.scale != 1:
                raise layer_error(
                    lp, f"with 'stride' (Huawei's Upsample) only scale 1 is supported, got {p.scale:g}"
                )
            s = _integer_scale(lp, p.stride, "stride", 1)
        else:
            s = _integer_scale(lp, p.scale if p.HasField("scale") else 1, "scale", 1)
        return UpsampleParams(scatter=False, scale=(s, s))

    if p.HasField("stride"):
        raise layer_error(lp, "'stride' is Huawei's nearest-neighbour Upsample (one bottom), not SegNet's")
    if p.HasField("upsample_h") != p.HasField("upsample_w"):
        raise layer_error(lp, "give upsample_h and upsample_w together")
    if p.HasField("scale_h") != p.HasField("scale_w"):
        raise layer_error(lp, "give scale_h and scale_w together")
    if p.HasField("upsample_h"):
        size = (p.upsample_h, p.upsample_w)
        if min(size) <= 1:
            raise layer_error(lp, f"upsample_h and upsample_w must be > 1, got {list(size)}")
        return UpsampleParams(scatter=True, scale=(2, 2), size=size)  # scale is then ignored
    if p.HasField("scale_h"):
        if p.HasField("scale"):
            raise layer_error(lp, "give scale, or scale_h and scale_w, not both")
        scale = (p.scale_h, p.scale_w)
        if min(scale) <= 1:
            raise layer_error(lp, f"scale_h and scale_w must be > 1, got {list(scale)}")
    else:
        s = _integer_scale(lp, p.scale if p.HasField("scale") else 2, "scale", 2)
        scale = (s, s)
    pad_out = (int(p.pad_out_h), int(p.pad_out_w))
    for axis, (pad, factor) in enumerate(zip(pad_out, scale)):
        if pad and factor != 2:
            raise layer_error(
                lp,
                f"pad_out_{'hw'[axis]} needs scale 2 along that axis (got {factor}); "
                "give the output size with upsample_h and upsample_w instead",
            )
    return UpsampleParams(scatter=True, scale=scale, pad_out=pad_out)


def _pair(lp, p, name: str, scalar: str, default: int | None) -> tuple[int, int] | None:
    """(h, w) from ``<name>_h/_w`` (both required) or the scalar field; Caffe forbids both forms."""
    has_h, has_w = p.HasField(f"{name}_h"), p.HasField(f"{name}_w")
    if has_h or has_w:
        if not (has_h and has_w):
            raise layer_error(lp, f"give {name}_h and {name}_w together")
        if p.HasField(scalar):
            raise layer_error(lp, f"give {scalar}, or {name}_h and {name}_w, not both")
        return (getattr(p, f"{name}_h"), getattr(p, f"{name}_w"))
    if p.HasField(scalar):
        return (getattr(p, scalar),) * 2
    return None if default is None else (default, default)


def _parse_unpool(lp) -> UnpoolParams:
    p = lp.unpooling_param
    kernel = _pair(lp, p, "kernel", "kernel_size", None)
    if kernel is None:
        raise layer_error(lp, "no kernel size: set kernel_size, or kernel_h and kernel_w")
    stride = _pair(lp, p, "stride", "stride", 1)
    pad = _pair(lp, p, "pad", "pad", 0)
    size = _pair(lp, p, "unpool", "unpool_size", None)
    if min(kernel) <= 0 or min(stride) <= 0:
        raise layer_error(lp, f"kernel {list(kernel)} and stride {list(stride)} must be positive")
    if any(pad):
        raise layer_error(lp, f"pad {list(pad)}: Caffe's Unpooling only implements pad 0")
    if size is not None and min(size) <= 0:
        raise layer_error(lp, f"the unpooled size must be positive, got {list(size)}")
    if p.unpool not in _METHOD_NAMES:
        raise layer_error(lp, f"unknown unpool method {p.unpool}")
    return UnpoolParams(method=p.unpool, kernel=kernel, stride=stride, size=size)


def _mask_is_unique(mask: str, producers: Mapping[str, Layer]) -> bool:
    """True when ``mask`` is the mask top of a MAX Pooling whose windows cannot overlap."""
    pool = producers.get(mask)
    if pool is None or pool.type != "Pooling" or len(pool.tops) < 2 or pool.tops[1] != mask:
        return False
    params = pool.params
    if not isinstance(params, PoolParams):
        return False
    if params.is_global:
        return True
    return all(k <= s for k, s in zip(params.kernel, params.stride))


def _check_mask(layer: Layer, in_shapes: Sequence[Shape]) -> None:
    value, mask = tuple(in_shapes[0]), tuple(in_shapes[1])
    if len(value) != 4:
        raise shape_error(layer, f"needs a 4-D (N, C, H, W) input, got shape {list(value)}")
    if value != mask:
        raise shape_error(
            layer,
            f"the mask (bottom '{layer.bottoms[1]}', shape {list(mask)}) must have the shape of "
            f"the values (bottom '{layer.bottoms[0]}', shape {list(value)})",
        )


# ----------------------------------------------------------------------------- ONNX pieces


def _onnx_scatter(g, x: str, mask: str, out: Shape, unique: bool, y: str) -> None:
    """``y[n, c].flat[mask[n, c, i]] = x[n, c].flat[i]``, zeros elsewhere, last write wins.

    The writes go to ``[N, C, q + 1]`` and the scratch slot ``q`` is sliced off: a mask of
    -1 (an empty pooling window) lands there, as do the writes a later one overrides.
    """
    n, c, h, w = g.shape(x)
    p, q = h * w, out[2] * out[3]

    def cut(t: str, start: int, end: int) -> str:
        return g.op("Slice", [t, g.ints([start], "start"), g.ints([end], "end"), g.ints([2], "axis")])

    values = g.reshape(x, [n, c, p])
    index = g.reshape(g.op("Cast", [mask], to=7), [n, c, p])  # 7: INT64; truncates like int()
    if not unique and p > 1:
        # Sort the writes by (index, position); the last of each run of equal indices is
        # the one Caffe keeps, the others are sent to the scratch slot.
        limit = g.reshape(g.ints([p], "limit"), [])  # Range takes 0-D inputs
        positions = g.op(
            "Range", [g.reshape(g.ints([0], "start"), []), limit, g.reshape(g.ints([1], "delta"), [])]
        )
        keys = g.op("Add", [g.op("Mul", [index, g.ints([p], "plane")]), positions])
        _, order = g.node("TopK", [keys, g.ints([p], "k")], 2, axis=2, largest=0, sorted=1)
        targets = g.op("GatherElements", [index, order], axis=2)
        changes = g.op("Not", [g.op("Equal", [cut(targets, 0, p - 1), cut(targets, 1, p)])])
        is_last = g.op("Concat", [changes, g.const(np.ones((n, c, 1), bool), "last", bool)], axis=2)
        index = g.op("Where", [is_last, targets, g.ints([q], "scratch")])
        values = g.op("GatherElements", [values, order], axis=2)
    zeros = g.op("ConstantOfShape", [g.ints([n, c, q + 1], "zeros_shape")])
    scattered = g.op("ScatterElements", [zeros, index, values], axis=2)
    g.reshape(cut(scattered, 0, q), list(out), y)


def _onnx_fit(g, x: str, full: Shape, out: Shape, y: str) -> None:
    """Crop (Slice) or zero-pad (Pad) the last two axes of ``x`` from ``full`` to ``out``."""
    kept = [min(f, o) for f, o in zip(full[2:], out[2:])]
    extra = [o - k for o, k in zip(out[2:], kept)]
    if kept != list(full[2:]):
        ends = g.ints(kept, "ends")
        x = g.op(
            "Slice", [x, g.ints([0, 0], "starts"), ends, g.ints([2, 3], "axes")], None if any(extra) else y
        )
    if any(extra):
        x = g.op("Pad", [x, g.ints([0, 0, 0, 0, 0, 0, *extra], "pads")], y)
    if x != y:
        g.op("Identity", [x], y)


# ----------------------------------------------------------------------------- torch pieces


def _torch_scatter(x, mask, out: Shape):
    """Caffe's scatter, the last write winning (found with ``amax`` of the positions, which
    does not depend on torch's scatter order); a mask of -1 writes nothing."""
    import torch

    n, c, h, w = x.shape
    p, q = h * w, out[2] * out[3]
    index = mask.reshape(n, c, p).to(torch.int64)
    index = torch.where(index == -1, torch.full_like(index, q), index)  # the scratch slot
    positions = torch.arange(p).expand(n, c, p)
    winner = torch.full((n, c, q + 1), -1, dtype=torch.int64)
    winner = winner.scatter_reduce(2, index, positions, "amax", include_self=True)[:, :, :q]
    gathered = x.reshape(n, c, p).gather(2, winner.clamp(min=0))
    return torch.where(winner >= 0, gathered, torch.zeros_like(gathered)).reshape(out)


def _torch_fit(x, out: Shape):
    from torch.nn import functional as F

    x = x[:, :, : out[2], : out[3]]
    return F.pad(x, (0, out[3] - x.shape[3], 0, out[2] - x.shape[2]))


# ----------------------------------------------------------------------------- handlers


class Upsample(Handler):
    """SegNet/ENet unpooling with a mask (2 bottoms) or YOLO nearest upsampling (1 bottom)."""

    types = ("Upsample",)
    bottoms = (1, 2)

    def parse(self, lp) -> UpsampleParams:
        return _parse_upsample(lp)

    def resolve(self, layer: Layer, producers: Mapping[str, Layer]) -> Layer:
        params: UpsampleParams = layer.params
        if params.scatter and _mask_is_unique(layer.bottoms[1], producers):
            return layer.with_(params=replace(params, unique_indices=True))
        return layer

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        params: UpsampleParams = layer.params
        shape = tuple(in_shapes[0])
        if not params.scatter:
            if len(shape) < 2:
                raise shape_error(layer, f"needs at least 2 axes to upsample, got shape {list(shape)}")
            s = params.scale[0]
            return [(*shape[:-2], shape[-2] * s, shape[-1] * s)]
        _check_mask(layer, in_shapes)
        if params.size is not None:
            out = params.size
        else:
            out = tuple(d * s - pad for d, s, pad in zip(shape[2:], params.scale, params.pad_out))
        return [(shape[0], shape[1], *out)]

    def to_onnx(self, layer: Layer, g) -> None:
        params: UpsampleParams = layer.params
        x, y = layer.bottoms[0], layer.tops[0]
        if params.scatter:
            _onnx_scatter(g, x, layer.bottoms[1], g.shape(y), params.unique_indices, y)
            return
        rank = len(g.shape(x))
        scales = g.const([1.0] * (rank - 2) + [float(params.scale[0])] * 2, "scales")
        g.op(
            "Resize",
            [x, "", scales],
            y,
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )

    def to_torch(self, layer: Layer, inputs, weights):
        params: UpsampleParams = layer.params
        x = inputs[0]
        if params.scatter:
            out = self.infer(layer, [tuple(t.shape) for t in inputs])[0]
            return [_torch_scatter(x, inputs[1], out)]
        s = params.scale[0]
        return [x.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)]


class Unpooling(Handler):
    """DeconvNet's Unpooling: MAX (with or without a mask bottom), AVE, TILE."""

    types = ("Unpooling",)
    bottoms = (1, 2)

    def parse(self, lp) -> UnpoolParams:
        return _parse_unpool(lp)

    def resolve(self, layer: Layer, producers: Mapping[str, Layer]) -> Layer:
        params: UnpoolParams = layer.params
        if len(layer.bottoms) == 2 and _mask_is_unique(layer.bottoms[1], producers):
            return layer.with_(params=replace(params, unique_indices=True))
        return layer

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        params: UnpoolParams = layer.params
        shape = tuple(in_shapes[0])
        if len(shape) != 4:
            raise shape_error(layer, f"needs a 4-D (N, C, H, W) input, got shape {list(shape)}")
        if len(in_shapes) == 2 and params.method == MAX:
            _check_mask(layer, in_shapes)
        if params.size is not None:
            out = params.size
        else:
            out = tuple(
                max((d - 1) * s + k, d * s + 1) for d, k, s in zip(shape[2:], params.kernel, params.stride)
            )
        return [(shape[0], shape[1], *out)]

    def to_onnx(self, layer: Layer, g) -> None:
        params: UnpoolParams = layer.params
        x, y = layer.bottoms[0], layer.tops[0]
        in_shape, out = g.shape(x), g.shape(y)
        n, c, h, w = in_shape
        if params.method == MAX and len(layer.bottoms) == 2:
            _onnx_scatter(g, x, layer.bottoms[1], out, params.unique_indices, y)
            return
        if params.method == MAX:
            source = _corner_sources(params, in_shape, out)
            gathered = g.op(
                "Gather", [g.reshape(x, [n, c, h * w]), g.ints(np.maximum(source, 0), "source")], axis=2
            )
            reached = g.const(source >= 0, "reached", bool)
            picked = g.op("Where", [reached, gathered, g.const(0.0, "zero")])
            g.reshape(picked, list(out), y)
            return
        if params.method == AVE:
            x = g.op("Div", [x, g.const(_window_sizes(params, in_shape, out), "window_size")])
        (kh, kw), (sh, sw) = params.kernel, params.stride
        ones = g.const(np.ones((c, 1, kh, kw), np.float32), "ones")
        spread = g.op("ConvTranspose", [x, ones], kernel_shape=[kh, kw], strides=[sh, sw], group=c)
        full = (n, c, (h - 1) * sh + kh, (w - 1) * sw + kw)
        _onnx_fit(g, spread, full, out, y)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch
        from torch.nn import functional as F

        params: UnpoolParams = layer.params
        x = inputs[0]
        in_shape = tuple(x.shape)
        out = self.infer(layer, [tuple(t.shape) for t in inputs])[0]
        if params.method == MAX and len(inputs) == 2:
            return [_torch_scatter(x, inputs[1], out)]
        if params.method == MAX:
            (sh, sw), (_, _, oh, ow) = params.stride, out
            rows = torch.clamp(torch.arange(in_shape[2]) * sh, max=oh - 1)
            cols = torch.clamp(torch.arange(in_shape[3]) * sw, max=ow - 1)
            target = (rows[:, None] * ow + cols[None, :]).expand(in_shape)
            return [_torch_scatter(x, target, out)]
        if params.method == AVE:
            x = x / torch.from_numpy(_window_sizes(params, in_shape, out))
        ones = torch.ones((in_shape[1], 1, *params.kernel), dtype=x.dtype)
        spread = F.conv_transpose2d(x, ones, stride=params.stride, groups=in_shape[1])
        return [_torch_fit(spread, out)]


def _corner_sources(params: UnpoolParams, in_shape: Shape, out: Shape) -> np.ndarray:
    """For each top cell of a mask-less MAX unpooling, the input position written last, or -1."""
    _, _, h, w = in_shape
    (sh, sw), (oh, ow) = params.stride, out[2:]
    rows = np.minimum(np.arange(h) * sh, oh - 1)
    cols = np.minimum(np.arange(w) * sw, ow - 1)
    targets = (rows[:, None] * ow + cols[None, :]).ravel()
    source = np.full(oh * ow, -1, np.int64)
    np.maximum.at(source, targets, np.arange(h * w))  # the last write in scan order wins
    return source


def _window_sizes(params: UnpoolParams, in_shape: Shape, out: Shape) -> np.ndarray:
    """AVE divisor per input cell: its window's size clipped to the top (1 if fully outside)."""
    sizes = []
    for d, k, s, o in zip(in_shape[2:], params.kernel, params.stride, out[2:]):
        start = np.arange(d) * s
        sizes.append(np.maximum(np.minimum(start + k, o) - start, 0))
    size = sizes[0][:, None] * sizes[1][None, :]
    return np.where(size > 0, size, 1).astype(np.float32)


HANDLERS = [Upsample(), Unpooling()]

__all__ = ["UnpoolParams", "Unpooling", "Upsample", "UpsampleParams"]
