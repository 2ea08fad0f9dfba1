"""Pooling: MAX (with the optional argmax mask top), AVE, STOCHASTIC (test time) and global.

Caffe semantics (spec 3.5, CPU forward; STOCHASTIC is the GPU test-time kernel):

* ``n = ceil((H + 2p - k) / s) + 1`` (``floor`` with ``round_mode: FLOOR`` or the forks'
  ``ceil_mode: false``); then, only when the layer has any padding, the last window is
  dropped if it would start at or past ``H + p``.
* MAX: windows are clipped to the unpadded input (pad cells never take part); the scan
  is row-major with a strict ``>`` from -FLT_MAX, so ties go to the first element. The
  second top (mask) is the winner's index ``h * W + w`` in its (n, c) plane of the
  input, as float. With pad 0 and stride > kernel, ceil rounding can add a last window
  that starts at or past the input: it is empty, its value -FLT_MAX and its mask -1.
* AVE: the divisor counts pad cells but not the cells past ``H + p`` that a ceil-mode
  window hangs over. An empty last window divides by a non-positive size in Caffe
  (0, -0 or NaN), which is refused here.
* STOCHASTIC (test time, no padding): ``sum(x^2) / sum(x)`` per window, 0 if the sum
  is <= 0 (so 0 for an empty window).
* global_pooling: the kernel is the whole plane.

ONNX, never relying on a runtime's reading of ``ceil_mode`` (spec 6.1-6.2): compute
``n`` here and give the extra end padding ``e = max(0, (n-1)s + k - (H + 2p))``
explicitly: ``MaxPool(pads=[p, p, p+e])``; for AVE, ``Pad(p, 0)`` then
``AveragePool(pads=[0, 0, e], count_include_pad=0)``; STOCHASTIC is the ratio of two
``AveragePool(count_include_pad=1)``. The mask comes from MaxPool's ``Indices`` (whole
tensor, padding not counted): ``Mod(indices, H*W)`` then ``Cast`` to float. Empty last
windows are not pooled: the output is padded after pooling (-FLT_MAX, mask -1, 0 for
STOCHASTIC). PyTorch reference: explicit ``F.pad``, a divisor map computed from a ones
tensor (not ``ceil_mode``), and ``max_pool2d`` indices mapped from the padded plane back
to the input plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, layer_error, shape_error

MAX, AVE, STOCHASTIC = 0, 1, 2
_METHOD_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}
#: Caffe's MAX initial value, what an empty window outputs (float32 -FLT_MAX).
LOWEST = float(np.finfo(np.float32).min)
#: what an empty window outputs, per method
_EMPTY_VALUE = {MAX: LOWEST, STOCHASTIC: 0.0}


@dataclass(frozen=True)
class PoolParams:
    method: int
    kernel: tuple[int, int] | None  # None: global pooling
    stride: tuple[int, int]
    pad: tuple[int, int]
    ceil: bool
    darknet: bool = False  # darknet's size rule (DarknetPooling), see DarknetPooling

    @property
    def is_global(self) -> bool:
        return self.kernel is None


@dataclass(frozen=True)
class PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    out: tuple[int, int]  # Caffe's output size
    end_extra: tuple[int, int]  # e: extra padding at the end of each axis (for the pooled windows)
    empty_tail: tuple[int, int] = (0, 0)  # 1: the axis' last window starts past the input

    @property
    def pooled(self) -> tuple[int, int]:
        """The number of windows that hold input cells (the output minus the empty tail)."""
        return (self.out[0] - self.empty_tail[0], self.out[1] - self.empty_tail[1])


def _pair(lp, name: str, scalar: str, default: int | None) -> tuple[int, int]:
    """(h, w) from ``<name>_h/_w``, else the scalar field, else the default (Caffe's rules)."""
    p = lp.pooling_param
    has_h, has_w = p.HasField(f"{name}_h"), p.HasField(f"{name}_w")
    if has_h or has_w:
        if p.HasField(scalar):
            raise layer_error(lp, f"give either {scalar} or {name}_h and {name}_w, not both")
        if not (has_h and has_w):
            raise layer_error(lp, f"{name}_h and {name}_w must be given together")
        return (getattr(p, f"{name}_h"), getattr(p, f"{name}_w"))
    if p.HasField(scalar) or default is None:
        value = getattr(p, scalar)
        return (value, value)
    return (default, default)


def parse_pool_params(lp) -> PoolParams:
    p = lp.pooling_param
    if p.pool not in _METHOD_NAMES:
        raise layer_error(lp, f"unknown pooling method {p.pool}; use MAX, AVE or STOCHASTIC")
    ceil = True
    if p.HasField("round_mode"):
        ceil = p.round_mode == 0
    if p.HasField("ceil_mode"):
        if p.HasField("round_mode") and p.ceil_mode != ceil:
            raise layer_error(lp, "round_mode and ceil_mode disagree; keep one of them")
        ceil = p.ceil_mode
    stride = _pair(lp, "stride", "stride", 1)
    pad = _pair(lp, "pad", "pad", 0)
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise layer_error(lp, "global_pooling takes no kernel size; remove kernel_size/kernel_h/kernel_w")
        if any(pad) or any(s != 1 for s in stride):
            raise layer_error(
                lp, f"global_pooling needs pad 0 and stride 1, got pad {list(pad)} stride {list(stride)}"
            )
        kernel = None
    else:
        if not (p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")):
            raise layer_error(lp, "no kernel size: set kernel_size, or kernel_h and kernel_w")
        kernel = _pair(lp, "kernel", "kernel_size", None)
        if min(kernel) <= 0:
            raise layer_error(lp, f"kernel must be positive, got {list(kernel)}")
    if min(stride) <= 0:
        raise layer_error(lp, f"stride must be positive, got {list(stride)}")
    if any(pad):
        if p.pool not in (MAX, AVE):
            raise layer_error(lp, f"padding {list(pad)} is only implemented for MAX and AVE pooling")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise layer_error(lp, f"pad {list(pad)} must be smaller than the kernel {list(kernel)}")
    return PoolParams(method=p.pool, kernel=kernel, stride=stride, pad=pad, ceil=ceil)


def pool_geometry(layer: Layer, shape: Shape) -> PoolGeometry:
    params: PoolParams = layer.params
    if len(shape) != 4:
        raise shape_error(layer, f"pooling needs a 4-D input, got shape {list(shape)}")
    size = tuple(shape[2:])
    kernel = size if params.is_global else params.kernel
    out, extra, empty, pads = [], [], [], []
    for axis in range(2):
        h, k, s, p = size[axis], kernel[axis], params.stride[axis], params.pad[axis]
        if params.darknet:
            # darknet: padding k-1 in all, (k-1)//2 of it before: n = (h - 1) // s + 1
            p = (k - 1) // 2
            n = (h - 1) // s + 1
        else:
            span = h + 2 * p - k
            n = (-(-span // s) if params.ceil else span // s) + 1
            if any(params.pad) and (n - 1) * s >= h + p:
                n -= 1
        if n <= 0:
            raise shape_error(
                layer, f"output size {n} (input {h}, kernel {k}, stride {s}, pad {p}); the input is too small"
            )
        # Only possible with pad 0, ceil rounding and stride > kernel: nothing to pool.
        tail = 1 if (n - 1) * s - p >= h else 0
        if tail and params.method not in _EMPTY_VALUE:
            raise shape_error(
                layer,
                f"the last {_METHOD_NAMES[params.method]} pooling window starts past the input "
                f"(input {h}, kernel {k}, stride {s}, pad {p}, ceil rounding), where Caffe divides "
                "by a non-positive window size (output 0, -0 or NaN). Use round_mode: FLOOR or a "
                "kernel at least as large as the stride",
            )
        out.append(n)
        empty.append(tail)
        extra.append(max(0, (n - tail - 1) * s + k - (h + 2 * p)))
        pads.append(p)
    return PoolGeometry(tuple(kernel), params.stride, tuple(pads), tuple(out), tuple(extra), tuple(empty))


class Pooling(Handler):
    types = ("Pooling",)
    tops = (1, 2)

    def parse(self, lp) -> PoolParams:
        params = parse_pool_params(lp)
        if len(lp.top) == 2:
            if params.method != MAX:
                raise layer_error(
                    lp, f"a second (mask) top needs MAX pooling, not {_METHOD_NAMES[params.method]}"
                )
            if lp.top[1] in lp.bottom or lp.top[0] == lp.top[1]:
                raise layer_error(lp, "the mask top must be a new blob (not in place, not the first top)")
        return params

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = in_shapes[0]
        geo = pool_geometry(layer, shape)
        out = (shape[0], shape[1], *geo.out)
        return [out] * len(layer.tops)

    def to_onnx(self, layer: Layer, g) -> None:
        params: PoolParams = layer.params
        x = layer.bottoms[0]
        shape = g.shape(x)
        with_mask = len(layer.tops) == 2
        if params.is_global and params.method in (MAX, AVE) and not with_mask:
            g.op({MAX: "GlobalMaxPool", AVE: "GlobalAveragePool"}[params.method], [x], layer.tops[0])
            return
        geo = pool_geometry(layer, shape)
        fill_h, fill_w = geo.empty_tail
        filled = bool(fill_h or fill_w)
        y = g.fresh("pooled") if filled else layer.tops[0]
        mask = None
        if with_mask:
            mask = g.fresh("mask_pooled") if filled else layer.tops[1]
        (ph, pw), (eh, ew) = geo.pad, geo.end_extra
        common = {"kernel_shape": list(geo.kernel), "strides": list(geo.stride)}
        if params.method == MAX:
            pads = [ph, pw, ph + eh, pw + ew]
            if mask is None:
                g.op("MaxPool", [x], y, pads=pads, **common)
            else:
                # Indices are whole-tensor ((n*C + c)*H + h)*W + w, padding not counted.
                indices = g.node("MaxPool", [x], [y, g.fresh("indices")], pads=pads, **common)[1]
                plane = g.op("Mod", [indices, g.const(shape[2] * shape[3], "plane_size", np.int64)])
                g.op("Cast", [plane], mask, to=1)  # FLOAT, as Caffe's mask blob
        elif params.method == AVE:
            padded = x
            if ph or pw:
                padded = g.op("Pad", [x, g.ints([0, 0, ph, pw, 0, 0, ph, pw], "pads")])
            g.op("AveragePool", [padded], y, pads=[0, 0, eh, ew], count_include_pad=0, **common)
        else:
            # Test-time stochastic pooling: sum(x^2) / sum(x) per window, 0 where sum <= 0.
            attrs = {"pads": [0, 0, eh, ew], "count_include_pad": 1, **common}
            sum_sq = g.op("AveragePool", [g.op("Mul", [x, x])], **attrs)
            sum_x = g.op("AveragePool", [x], **attrs)
            zero = g.const(0.0, "zero")
            positive = g.op("Greater", [sum_x, zero])
            safe = g.op("Where", [positive, sum_x, g.const(1.0, "one")])
            g.op("Where", [positive, g.op("Div", [sum_sq, safe]), zero], y)
        if filled:
            tail = g.ints([0, 0, 0, 0, 0, 0, fill_h, fill_w], "empty_tail")
            empty = g.const(_EMPTY_VALUE[params.method], "empty_value")
            g.op("Pad", [y, tail, empty], layer.tops[0])
            if mask is not None:
                g.op("Pad", [mask, tail, g.const(-1.0, "empty_mask")], layer.tops[1])

    def to_torch(self, layer: Layer, inputs, weights):
        import torch
        from torch.nn import functional as F

        params: PoolParams = layer.params
        x = inputs[0]
        geo = pool_geometry(layer, tuple(x.shape))
        (ph, pw), (eh, ew) = geo.pad, geo.end_extra
        kernel, stride = geo.kernel, geo.stride
        area = kernel[0] * kernel[1]
        mask = None
        if params.method == MAX:
            padded = F.pad(x, (pw, pw + ew, ph, ph + eh), value=float("-inf"))
            y, index = F.max_pool2d(padded, kernel, stride, return_indices=True)
            if len(layer.tops) == 2:  # padded-plane index -> input-plane index
                width = padded.shape[3]
                rows, cols = index // width - ph, index % width - pw
                mask = (rows * x.shape[3] + cols).to(x.dtype)
        elif params.method == AVE:
            summed = F.avg_pool2d(F.pad(x, (pw, pw + ew, ph, ph + eh)), kernel, stride) * area
            inside = torch.ones((1, 1, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=x.dtype)
            counts = F.avg_pool2d(F.pad(inside, (0, ew, 0, eh)), kernel, stride) * area
            y = summed / counts
        else:
            padded = F.pad(x, (0, ew, 0, eh))
            sum_sq = F.avg_pool2d(padded * padded, kernel, stride)
            sum_x = F.avg_pool2d(padded, kernel, stride)
            positive = sum_x > 0
            ratio = sum_sq / torch.where(positive, sum_x, torch.ones_like(sum_x))
            y = torch.where(positive, ratio, torch.zeros_like(sum_x))
        fill_h, fill_w = geo.empty_tail
        if fill_h or fill_w:
            y = F.pad(y, (0, fill_w, 0, fill_h), value=_EMPTY_VALUE[params.method])
            if mask is not None:
                mask = F.pad(mask, (0, fill_w, 0, fill_h), value=-1.0)
        return [y] if mask is None else [y, mask]


class DarknetPooling(Pooling):
    """MAX pooling with darknet's size rule, for YOLO ports whose Caffe fork patched the
    Pooling layer (YOLOv3-tiny's ``maxpool size=2 stride=1`` keeps 13x13 where stock Caffe
    gives 12x12): ``n = (H - 1) // s + 1``, the window starting ``(k - 1) // 2`` before each
    output position, cells outside the input never winning. Nothing in a prototxt says
    which rule a Pooling layer follows, so select it per layer:
    ``--layer-type layer12-maxpool=DarknetPooling``."""

    types = ("DarknetPooling",)

    def parse(self, lp) -> PoolParams:
        params = super().parse(lp)
        if params.method != MAX or params.is_global or any(params.pad):
            raise layer_error(lp, "DarknetPooling is darknet's MAX pooling: pool MAX, a kernel, no pad")
        return replace(params, darknet=True)


HANDLERS = [Pooling(), DarknetPooling()]
