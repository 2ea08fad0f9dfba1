"""Pooling: MAX, AVE, STOCHASTIC (test time) and global, with Caffe's exact output size.

Caffe semantics (spec 3.5):

* ``n = ceil((H + 2p - k) / s) + 1`` (``floor`` with ``round_mode: FLOOR`` or the forks'
  ``ceil_mode: false``); then, only when the layer has any padding, the last window is
  dropped if it would start at or past ``H + p``.
* MAX: windows are clipped to the unpadded input (pad cells never win); ties go to the
  first element in row-major order.
* AVE: the divisor counts pad cells but not the cells past ``H + p`` that a ceil-mode
  window hangs over.
* global_pooling: the kernel is the whole plane.

ONNX, never relying on a runtime's reading of ``ceil_mode`` (spec 6.1-6.2): compute
``n`` here and give the extra end padding ``e = max(0, (n-1)s + k - (H + 2p))``
explicitly: ``MaxPool(pads=[p, p, p+e])``; for AVE, ``Pad(p, 0)`` then
``AveragePool(pads=[0, 0, e], count_include_pad=0)``. PyTorch reference: explicit
``F.pad`` and a divisor map computed from a ones tensor, not ``ceil_mode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, layer_error, shape_error

MAX, AVE, STOCHASTIC = 0, 1, 2
_METHOD_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}


@dataclass(frozen=True)
class PoolParams:
    method: int
    kernel: tuple[int, int] | None  # None: global pooling
    stride: tuple[int, int]
    pad: tuple[int, int]
    ceil: bool

    @property
    def is_global(self) -> bool:
        return self.kernel is None


@dataclass(frozen=True)
class PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    out: tuple[int, int]
    end_extra: tuple[int, int]  # e: extra padding at the end of each axis


def _pair(p, name: str, scalar: str, default: int | None) -> tuple[int, int]:
    """(h, w) from ``<name>_h/_w`` if given, else the scalar field, else the default."""
    if p.HasField(f"{name}_h") or p.HasField(f"{name}_w"):
        return (getattr(p, f"{name}_h"), getattr(p, f"{name}_w"))
    if p.HasField(scalar) or default is None:
        value = getattr(p, scalar)
        return (value, value)
    return (default, default)


def parse_pool_params(lp) -> PoolParams:
    p = lp.pooling_param
    ceil = True
    if p.HasField("round_mode"):
        ceil = p.round_mode == 0
    if p.HasField("ceil_mode"):
        ceil = p.ceil_mode
    stride = _pair(p, "stride", "stride", 1)
    pad = _pair(p, "pad", "pad", 0)
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise layer_error(lp, "global_pooling takes no kernel size")
        if any(pad) or any(s != 1 for s in stride):
            raise layer_error(lp, "global_pooling needs pad 0 and stride 1")
        kernel = None
    else:
        if not (p.HasField("kernel_size") or (p.HasField("kernel_h") and p.HasField("kernel_w"))):
            raise layer_error(lp, "no kernel size: set kernel_size, or kernel_h and kernel_w")
        kernel = _pair(p, "kernel", "kernel_size", None)
        if min(kernel) <= 0:
            raise layer_error(lp, f"kernel must be positive, got {list(kernel)}")
    if min(stride) <= 0:
        raise layer_error(lp, f"stride must be positive, got {list(stride)}")
    if any(pad):
        if p.pool not in (MAX, AVE):
            raise layer_error(lp, "padding is only implemented for MAX and AVE pooling")
        if kernel is not None and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
            raise layer_error(lp, f"pad {list(pad)} must be smaller than the kernel {list(kernel)}")
    return PoolParams(method=p.pool, kernel=kernel, stride=stride, pad=pad, ceil=ceil)


def pool_geometry(layer: Layer, shape: Shape) -> PoolGeometry:
    params: PoolParams = layer.params
    if len(shape) != 4:
        raise shape_error(layer, f"pooling needs a 4-D input, got shape {list(shape)}")
    size = shape[2:]
    if params.is_global:
        return PoolGeometry(tuple(size), (1, 1), (0, 0), (1, 1), (0, 0))
    out = []
    extra = []
    for axis in range(2):
        h, k, s, p = size[axis], params.kernel[axis], params.stride[axis], params.pad[axis]
        span = h + 2 * p - k
        n = (-(-span // s) if params.ceil else span // s) + 1
        if any(params.pad) and (n - 1) * s >= h + p:
            n -= 1
        if n <= 0:
            raise shape_error(layer, f"output size {n} (input {h}, kernel {k}, stride {s}, pad {p})")
        if (n - 1) * s - p >= h:
            raise shape_error(
                layer,
                f"the last pooling window starts past the input (input {h}, kernel {k}, "
                f"stride {s}, pad 0); Caffe would output -FLT_MAX there. Use a kernel at "
                "least as large as the stride",
            )
        out.append(n)
        extra.append(max(0, (n - 1) * s + k - (h + 2 * p)))
    return PoolGeometry(params.kernel, params.stride, params.pad, tuple(out), tuple(extra))


class Pooling(Handler):
    types = ("Pooling",)
    tops = (1, 2)

    def parse(self, lp) -> PoolParams:
        params = parse_pool_params(lp)
        if len(lp.top) == 2 and params.method != MAX:
            raise layer_error(lp, "a second (mask) top needs MAX pooling")
        return params

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = in_shapes[0]
        geo = pool_geometry(layer, shape)
        out = (shape[0], shape[1], *geo.out)
        return [out] * len(layer.tops)

    def to_onnx(self, layer: Layer, g) -> None:
        params: PoolParams = layer.params
        x = layer.bottoms[0]
        y = layer.tops[0]
        if len(layer.tops) > 1:
            raise layer_error(layer, "the argmax (mask) top of Pooling is not supported yet")
        if params.is_global:
            op = {MAX: "GlobalMaxPool", AVE: "GlobalAveragePool"}.get(params.method)
            if op is None:
                raise layer_error(layer, "global STOCHASTIC pooling is not supported")
            g.op(op, [x], y)
            return
        geo = pool_geometry(layer, g.shape(x))
        (ph, pw), (eh, ew) = geo.pad, geo.end_extra
        common = {"kernel_shape": list(geo.kernel), "strides": list(geo.stride)}
        if params.method == MAX:
            g.op("MaxPool", [x], y, pads=[ph, pw, ph + eh, pw + ew], **common)
        elif params.method == AVE:
            padded = x
            if ph or pw:
                padded = g.op("Pad", [x, g.ints([0, 0, ph, pw, 0, 0, ph, pw], "pads")])
            g.op("AveragePool", [padded], y, pads=[0, 0, eh, ew], count_include_pad=0, **common)
        else:
            # Test-time stochastic pooling: sum(x^2) / sum(x) per window, 0 where sum <= 0.
            square = g.op("Mul", [x, x])
            attrs = {"pads": [0, 0, eh, ew], "count_include_pad": 1, **common}
            sum_sq = g.op("AveragePool", [square], **attrs)
            sum_x = g.op("AveragePool", [x], **attrs)
            zero = g.const(0.0, "zero")
            positive = g.op("Greater", [sum_x, zero])
            safe = g.op("Where", [positive, sum_x, g.const(1.0, "one")])
            ratio = g.op("Div", [sum_sq, safe])
            g.op("Where", [positive, ratio, zero], y)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch
        from torch.nn import functional as F

        params: PoolParams = layer.params
        x = inputs[0]
        if params.is_global:
            if params.method == MAX:
                return [x.amax(dim=(2, 3), keepdim=True)]
            return [x.mean(dim=(2, 3), keepdim=True)]
        geo = pool_geometry(layer, tuple(x.shape))
        (ph, pw), (eh, ew) = geo.pad, geo.end_extra
        if params.method == MAX:
            padded = F.pad(x, (pw, pw + ew, ph, ph + eh), value=float("-inf"))
            return [F.max_pool2d(padded, geo.kernel, geo.stride)]
        area = geo.kernel[0] * geo.kernel[1]
        if params.method == AVE:
            summed = F.avg_pool2d(F.pad(x, (pw, pw + ew, ph, ph + eh)), geo.kernel, geo.stride) * area
            inside = torch.ones((1, 1, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), dtype=x.dtype)
            counts = F.avg_pool2d(F.pad(inside, (0, ew, 0, eh)), geo.kernel, geo.stride) * area
            return [summed / counts]
        padded = F.pad(x, (0, ew, 0, eh))
        sum_sq = F.avg_pool2d(padded * padded, geo.kernel, geo.stride)
        sum_x = F.avg_pool2d(padded, geo.kernel, geo.stride)
        positive = sum_x > 0
        return [
            torch.where(
                positive,
                sum_sq / torch.where(positive, sum_x, torch.ones_like(sum_x)),
                torch.zeros_like(sum_x),
            )
        ]


HANDLERS = [Pooling()]
