"""Normalization layers: LRN, BatchNorm, Scale, Bias, MVN and the forks' "BN".

Caffe semantics (spec 3.11-3.14, 3.24, 3.25):

* LRN (4-D input, odd ``local_size`` n, ``p = (n-1)/2``):
  ACROSS_CHANNELS ``y = x * (k + alpha/n * sum_{n channels} x^2)^-beta`` (zeros past the
  channel edges) is ONNX ``LRN`` as it is (alpha is divided by n in both).
  WITHIN_CHANNEL is Caffe's own sub-net square -> AVE pooling (n x n, pad p, stride 1)
  -> Power(scale alpha, shift 1, power -beta) -> product: ``k`` is ignored and the
  divisor is always n^2 (pad cells count). ONNX: ``AveragePool(count_include_pad=1)``,
  ``Mul``, ``Add``, ``Pow``, ``Mul``.
* BatchNorm: blobs ``[C]`` mean*s, ``[C]`` var*s, ``[1]`` s (``C = shape[1]``, or 1 for a
  1-D input); ``f = 0 if s == 0 else 1/s``; ``y = (x - f*m) / sqrt(f*v + eps)``, no affine
  part. A deploy file's ``use_global_stats: false`` is accepted and the stored statistics
  are used. ONNX ``BatchNormalization`` with the statistics precomputed, scale 1, B 0.
* Scale / Bias: ``y = x * s (+ b)`` / ``y = x + b`` where the operand (blob 0, or bottom 1
  when there are 2 bottoms) has the shape ``x.shape[axis : axis+nd]`` (one bottom:
  ``nd = num_axes``, -1 = to the end, 0 = a scalar). The operand is reshaped to
  ``shape + [1] * (ndim - axis - nd)`` for ``Mul``/``Add``: never a bare ``[C]`` against
  NCHW, which would broadcast along W. Scale's bias (``bias_term``) has the operand's shape.
* MVN: per (n, c) over H*W, or per n over C*H*W with ``across_channels``:
  ``y = (x - mean) / (sqrt(var) + eps)`` with the biased variance; ``eps`` is added to
  the standard deviation, unlike ONNX ``MeanVarianceNormalization``, so it is decomposed
  (``ReduceMean``, ``Sub``, ``Mul``, ``ReduceMean``, ``Sqrt``, ``Add``, ``Div``).
* "BN" (forks, spec 3.14), one type with two layouts told apart by the prototxt: any of
  ``slope_filler``, ``bias_filler``, ``momentum``, ``eps``, ``frozen`` set (or four
  ``param`` entries) means PSPNet/ICNet, otherwise SegNet/ENet/DeconvNet.

  - SegNet: blobs scale, shift ``[1,C,1,1]``. ``bn_mode: INFERENCE``:
    ``y = scale*x + shift`` (``Mul``, ``Add``). ``bn_mode: LEARN`` (the default) uses the
    statistics of the *current batch*, exactly as Caffe's forward does in any phase:
    per channel over (N, H, W), ``mean = E[x]``, ``var = E[x^2] - E[x]^2`` (biased),
    ``y = scale * (x - mean) / sqrt(var + var_eps) + shift``, ``var_eps`` 1e-9 (hard-coded
    in SegNet; a ``var_eps`` field in the prototxt overrides it).
    Optional tops 1 and 2 are that batch mean and variance, ``[1,C,1,1]``.
  - PSPNet: blobs slope, bias, mean, var ``[1,C,1,1]``; at test time
    ``y = slope * (x - mean) / sqrt(var + eps) + bias`` (eps 1e-5): ONNX
    ``BatchNormalization``.

PyTorch reference: the same formulas with torch ops (``F.local_response_norm`` and
``F.avg_pool2d`` for LRN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from caffe2onnx.ir import BlobSpec, Filler, Layer, Shape
from caffe2onnx.layers.base import Handler, axis_index, filler_of, layer_error, shape_error


def _channel_view(ndim: int) -> tuple[int, ...]:
    """Shape that puts a per-channel vector on axis 1 of an ``ndim``-D tensor."""
    return (-1,) + (1,) * (ndim - 2)


def _const_operand(g, layer: Layer, index: int, shape: Sequence[int], hint: str) -> str:
    """Blob ``index`` as an initializer of ``shape`` (the stored one when it already fits)."""
    if tuple(np.shape(layer.weights[index])) == tuple(shape):
        return g.weight(layer, index)
    return g.weight_as(layer, index, shape, hint)


# ----------------------------------------------------------------------------- LRN


@dataclass(frozen=True)
class LRNParams:
    size: int
    alpha: float
    beta: float
    k: float
    within_channel: bool


class LRN(Handler):
    types = ("LRN",)

    def parse(self, lp) -> LRNParams:
        p = lp.lrn_param
        if p.local_size % 2 != 1:
            raise layer_error(
                lp, f"local_size {p.local_size} must be odd (Caffe's LRN supports only odd windows)"
            )
        if p.norm_region not in (0, 1):
            raise layer_error(lp, f"unknown norm_region {p.norm_region}")
        return LRNParams(p.local_size, p.alpha, p.beta, p.k, p.norm_region == 1)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        if len(in_shapes[0]) != 4:
            raise shape_error(layer, f"LRN needs a 4-D input, got shape {list(in_shapes[0])}")
        return [tuple(in_shapes[0])]

    def to_onnx(self, layer: Layer, g) -> None:
        p: LRNParams = layer.params
        x, y = layer.bottoms[0], layer.tops[0]
        if not p.within_channel:
            g.op("LRN", [x], y, size=p.size, alpha=p.alpha, beta=p.beta, bias=p.k)
            return
        pad = (p.size - 1) // 2
        square = g.op("Mul", [x, x])
        mean = g.op(
            "AveragePool",
            [square],
            kernel_shape=[p.size, p.size],
            strides=[1, 1],
            pads=[pad] * 4,
            count_include_pad=1,
        )
        base = g.op("Add", [g.op("Mul", [mean, g.const(p.alpha, "alpha")]), g.const(1.0, "one")])
        factor = g.op("Pow", [base, g.const(-p.beta, "minus_beta")])
        g.op("Mul", [x, factor], y)

    def to_torch(self, layer: Layer, inputs, weights):
        from torch.nn import functional as F

        p: LRNParams = layer.params
        x = inputs[0]
        if not p.within_channel:
            return [F.local_response_norm(x, p.size, alpha=p.alpha, beta=p.beta, k=p.k)]
        pad = (p.size - 1) // 2
        mean = F.avg_pool2d(x * x, p.size, stride=1, padding=pad, count_include_pad=True)
        return [x * (1.0 + p.alpha * mean) ** (-p.beta)]


# ----------------------------------------------------------------------------- BatchNorm


@dataclass(frozen=True)
class BatchNormParams:
    eps: float


def _inverse_factor(factor: np.ndarray) -> np.float32:
    """Caffe's ``s == 0 ? 0 : 1/s`` in float32."""
    s = np.float32(np.asarray(factor).reshape(-1)[0])
    return np.float32(0.0) if s == 0 else np.float32(1.0) / s


class BatchNorm(Handler):
    types = ("BatchNorm",)

    def parse(self, lp) -> BatchNormParams:
        eps = lp.batch_norm_param.eps
        if eps < 0:
            raise layer_error(lp, f"eps {eps} must not be negative (the default is 1e-5)")
        return BatchNormParams(eps)

    def blobs(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
        shape = in_shapes[0]
        channels = shape[1] if len(shape) > 1 else 1
        return [
            BlobSpec("mean", (channels,), None, "bn_mean"),
            BlobSpec("variance", (channels,), None, "bn_var"),
            BlobSpec("scale_factor", (1,), None, "bn_factor"),
        ]

    def to_onnx(self, layer: Layer, g) -> None:
        mean_sum, var_sum, factor = (np.asarray(w, np.float32) for w in layer.weights)
        f = _inverse_factor(factor)
        channels = mean_sum.size
        x, y = layer.bottoms[0], layer.tops[0]
        shape = g.shape(x)
        if len(shape) == 1:  # BatchNormalization needs a channel axis: (N,) -> (N, 1)
            x = g.reshape(x, [shape[0], 1])
        normalized = g.op(
            "BatchNormalization",
            [
                x,
                g.const(np.ones(channels), "scale"),
                g.const(np.zeros(channels), "B"),
                g.const(mean_sum * f, "mean"),
                g.const(var_sum * f, "var"),
            ],
            y if len(shape) > 1 else None,
            epsilon=layer.params.eps,
        )
        if len(shape) == 1:
            g.reshape(normalized, shape, y)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        x = inputs[0]
        s = weights[2].reshape(-1)[0]
        zero = s == 0
        f = torch.where(zero, torch.zeros_like(s), 1.0 / torch.where(zero, torch.ones_like(s), s))
        mean, var = weights[0] * f, weights[1] * f
        if x.dim() > 1:
            mean, var = mean.reshape(_channel_view(x.dim())), var.reshape(_channel_view(x.dim()))
        return [(x - mean) / torch.sqrt(var + layer.params.eps)]


# ----------------------------------------------------------------------------- Scale, Bias


def _blob_shape(layer: Layer, shape: Shape, axis: int, num_axes: int) -> Shape:
    """The shape of a one-bottom Scale/Bias blob: ``shape[axis : axis+num_axes]``."""
    start = axis_index(axis, len(shape), layer)
    end = len(shape) if num_axes == -1 else start + num_axes
    if end > len(shape):
        raise shape_error(
            layer,
            f"axis {axis} with num_axes {num_axes} reaches past the {len(shape)}-D input "
            f"{list(shape)}; lower num_axes or axis",
        )
    return tuple(shape[start:end])


def _broadcast_shape(layer: Layer, shape: Shape, axis: int, operand: Shape, what: str) -> Shape:
    """Check ``operand`` against ``shape`` from ``axis`` on; return its rank-aligned shape."""
    if len(operand) == 0:  # a scalar: Caffe sets axis 0 and multiplies everything
        return ()
    start = axis_index(axis, len(shape), layer)
    if tuple(shape[start : start + len(operand)]) != tuple(operand):
        raise shape_error(
            layer,
            f"the {what} has shape {list(operand)}, but bottom[0] {list(shape)} has "
            f"{list(shape[start : start + len(operand)])} from axis {start} on",
        )
    return tuple(operand) + (1,) * (len(shape) - start - len(operand))


def _operand(g, layer: Layer, bottom_or_blob: str | int, target: Shape, hint: str) -> str:
    """A bottom (name) or a blob (index) reshaped to the rank-aligned ``target``."""
    if isinstance(bottom_or_blob, int):
        return _const_operand(g, layer, bottom_or_blob, target, hint)
    if tuple(g.shape(bottom_or_blob)) == tuple(target):
        return bottom_or_blob
    return g.reshape(bottom_or_blob, target)


@dataclass(frozen=True)
class ScaleParams:
    axis: int
    num_axes: int
    bias_term: bool
    filler: Filler | None
    bias_filler: Filler | None


@dataclass(frozen=True)
class BiasParams:
    axis: int
    num_axes: int
    filler: Filler | None


def _check_num_axes(lp, num_axes: int) -> None:
    if num_axes < -1:
        raise layer_error(lp, f"num_axes {num_axes} must be >= 0, or -1 for all axes from axis on")


class _Broadcasting(Handler):
    """Scale and Bias: an operand from a blob (1 bottom) or from bottom 1 (2 bottoms)."""

    bottoms = (1, 2)

    def _operand_shape(self, layer: Layer, in_shapes: Sequence[Shape]) -> Shape:
        if len(in_shapes) == 2:
            return tuple(in_shapes[1])
        return _blob_shape(layer, in_shapes[0], layer.params.axis, layer.params.num_axes)

    def _target(self, layer: Layer, in_shapes: Sequence[Shape]) -> Shape:
        what = "bottom[1]" if len(in_shapes) == 2 else "blob"
        return _broadcast_shape(
            layer, in_shapes[0], layer.params.axis, self._operand_shape(layer, in_shapes), what
        )

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        self._target(layer, in_shapes)
        return [tuple(in_shapes[0])]


class Scale(_Broadcasting):
    types = ("Scale",)

    def parse(self, lp) -> ScaleParams:
        p = lp.scale_param
        _check_num_axes(lp, p.num_axes)
        return ScaleParams(
            p.axis, p.num_axes, p.bias_term, filler_of(p, "filler"), filler_of(p, "bias_filler")
        )

    def blobs(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
        params: ScaleParams = layer.params
        shape = self._operand_shape(layer, in_shapes)
        specs = []
        if len(in_shapes) == 1:
            specs.append(BlobSpec("scale", shape, params.filler, "gamma"))
        if params.bias_term:
            specs.append(BlobSpec("bias", shape, params.bias_filler, "beta"))
        return specs

    def to_onnx(self, layer: Layer, g) -> None:
        in_shapes = [g.shape(b) for b in layer.bottoms]
        target = self._target(layer, in_shapes)
        two = len(layer.bottoms) == 2
        scale = _operand(g, layer, layer.bottoms[1] if two else 0, target, "scale")
        if not layer.params.bias_term:
            g.op("Mul", [layer.bottoms[0], scale], layer.tops[0])
            return
        product = g.op("Mul", [layer.bottoms[0], scale])
        bias = _operand(g, layer, 0 if two else 1, target, "bias")
        g.op("Add", [product, bias], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        target = self._target(layer, [tuple(t.shape) for t in inputs])
        two = len(inputs) == 2
        y = inputs[0] * (inputs[1] if two else weights[0]).reshape(target)
        if layer.params.bias_term:
            y = y + weights[0 if two else 1].reshape(target)
        return [y]


class Bias(_Broadcasting):
    types = ("Bias",)

    def parse(self, lp) -> BiasParams:
        p = lp.bias_param
        _check_num_axes(lp, p.num_axes)
        return BiasParams(p.axis, p.num_axes, filler_of(p, "filler"))

    def blobs(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
        if len(in_shapes) == 2:
            return []
        return [BlobSpec("bias", self._operand_shape(layer, in_shapes), layer.params.filler, "beta")]

    def to_onnx(self, layer: Layer, g) -> None:
        in_shapes = [g.shape(b) for b in layer.bottoms]
        target = self._target(layer, in_shapes)
        source = layer.bottoms[1] if len(layer.bottoms) == 2 else 0
        g.op("Add", [layer.bottoms[0], _operand(g, layer, source, target, "bias")], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        target = self._target(layer, [tuple(t.shape) for t in inputs])
        operand = inputs[1] if len(inputs) == 2 else weights[0]
        return [inputs[0] + operand.reshape(target)]


# ----------------------------------------------------------------------------- MVN


@dataclass(frozen=True)
class MVNParams:
    normalize_variance: bool
    across_channels: bool
    eps: float

    def axes(self, ndim: int) -> list[int]:
        return list(range(1 if self.across_channels else 2, ndim))


class MVN(Handler):
    types = ("MVN",)

    def parse(self, lp) -> MVNParams:
        p = lp.mvn_param
        if p.eps < 0:
            raise layer_error(lp, f"eps {p.eps} must not be negative (the default is 1e-9)")
        return MVNParams(p.normalize_variance, p.across_channels, p.eps)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        if len(in_shapes[0]) > 4:
            raise shape_error(
                layer, f"Caffe's MVN takes at most 4 axes (num, channels, ...), got {list(in_shapes[0])}"
            )
        return [tuple(in_shapes[0])]

    def to_onnx(self, layer: Layer, g) -> None:
        p: MVNParams = layer.params
        x, y = layer.bottoms[0], layer.tops[0]
        axes = p.axes(len(g.shape(x)))
        # With nothing to reduce (a 2-D input per channel) each value is its own mean.
        mean = g.reduce("ReduceMean", x, axes, keepdims=1) if axes else x
        if not p.normalize_variance:
            g.op("Sub", [x, mean], y)
            return
        centered = g.op("Sub", [x, mean])
        square = g.op("Mul", [centered, centered])
        var = g.reduce("ReduceMean", square, axes, keepdims=1) if axes else square
        denominator = g.op("Add", [g.op("Sqrt", [var]), g.const(p.eps, "eps")])
        g.op("Div", [centered, denominator], y)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        p: MVNParams = layer.params
        x = inputs[0]
        axes = p.axes(x.dim())
        centered = x - (x.mean(dim=axes, keepdim=True) if axes else x)
        if not p.normalize_variance:
            return [centered]
        square = centered * centered
        var = square.mean(dim=axes, keepdim=True) if axes else square
        return [centered / (torch.sqrt(var) + p.eps)]


# ----------------------------------------------------------------------------- fork "BN"

SEGNET, PSPNET = "segnet", "pspnet"
_PSP_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen")
_SEGNET_FIELDS = ("scale_filler", "shift_filler", "bn_mode")


@dataclass(frozen=True)
class ForkBNParams:
    variant: str  # SEGNET or PSPNET
    inference: bool  # SegNet bn_mode INFERENCE; PSPNet always uses its stored statistics
    eps: float
    scale_filler: Filler | None
    shift_filler: Filler | None


class ForkBN(Handler):
    types = ("BN",)
    tops = (1, 3)

    def parse(self, lp) -> ForkBNParams:
        p = lp.bn_param
        psp = [f for f in _PSP_FIELDS if p.HasField(f)]
        segnet = [f for f in _SEGNET_FIELDS if p.HasField(f)]
        if psp and segnet:
            raise layer_error(
                lp,
                f"bn_param mixes PSPNet fields ({', '.join(psp)}) with SegNet fields "
                f"({', '.join(segnet)}); keep the fields of the fork the caffemodel comes from",
            )
        if psp or (len(lp.param) == 4 and not segnet):
            if len(lp.top) > 1:
                raise layer_error(lp, f"the PSPNet BN layer has one top, got {len(lp.top)}")
            if p.eps < 0:
                raise layer_error(lp, f"eps {p.eps} must not be negative (the default is 1e-5)")
            return ForkBNParams(
                PSPNET, True, p.eps, filler_of(p, "slope_filler"), filler_of(p, "bias_filler")
            )
        inference = p.bn_mode == 1
        if inference and len(lp.top) > 1:
            raise layer_error(
                lp,
                "tops 1 and 2 (batch mean and variance) exist only with bn_mode: LEARN; "
                "remove them or the bn_mode",
            )
        if p.var_eps < 0:
            raise layer_error(lp, f"var_eps {p.var_eps} must not be negative (the default is 1e-9)")
        return ForkBNParams(
            SEGNET, inference, p.var_eps, filler_of(p, "scale_filler"), filler_of(p, "shift_filler")
        )

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(in_shapes[0])
        if not 2 <= len(shape) <= 4:
            raise shape_error(layer, f"BN needs a 2-D to 4-D input (N, C, ...), got {list(shape)}")
        return [shape] + [(1, shape[1], 1, 1)] * (len(layer.tops) - 1)

    def blobs(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
        p: ForkBNParams = layer.params
        shape = (1, in_shapes[0][1], 1, 1)
        if p.variant == SEGNET:
            return [
                BlobSpec("scale", shape, p.scale_filler, "gamma"),
                BlobSpec("shift", shape, p.shift_filler, "beta"),
            ]
        return [
            BlobSpec("slope", shape, p.scale_filler, "gamma"),
            BlobSpec("bias", shape, p.shift_filler, "beta"),
            BlobSpec("mean", shape, None, "bn_mean"),
            BlobSpec("variance", shape, None, "bn_var"),
        ]

    def to_onnx(self, layer: Layer, g) -> None:
        p: ForkBNParams = layer.params
        x, y = layer.bottoms[0], layer.tops[0]
        shape = g.shape(x)
        channels = shape[1]
        if p.variant == PSPNET:
            stats = [
                g.weight_as(layer, i, (channels,), hint)
                for i, hint in enumerate(("slope", "bias", "mean", "var"))
            ]
            g.op("BatchNormalization", [x, *stats], y, epsilon=p.eps)
            return
        view = (1, channels) + (1,) * (len(shape) - 2)  # the stored [1,C,1,1] for 4-D
        scale = _const_operand(g, layer, 0, view, "scale")
        shift = _const_operand(g, layer, 1, view, "shift")
        if not p.inference:
            axes = [0, *range(2, len(shape))]
            mean = g.reduce("ReduceMean", x, axes, keepdims=1)
            mean_sq = g.reduce("ReduceMean", g.op("Mul", [x, x]), axes, keepdims=1)
            var = g.op("Sub", [mean_sq, g.op("Mul", [mean, mean])])
            std = g.op("Sqrt", [g.op("Add", [var, g.const(p.eps, "var_eps")])])
            x = g.op("Div", [g.op("Sub", [x, mean]), std])
            for top, stat in zip(layer.tops[1:], (mean, var)):
                g.reshape(stat, (1, channels, 1, 1), top)
        g.op("Add", [g.op("Mul", [x, scale]), shift], y)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        p: ForkBNParams = layer.params
        x = inputs[0]
        view = _channel_view(x.dim())
        scale, shift = weights[0].reshape(view), weights[1].reshape(view)
        if p.variant == PSPNET:
            mean, var = weights[2].reshape(view), weights[3].reshape(view)
            return [scale * (x - mean) / torch.sqrt(var + p.eps) + shift]
        if p.inference:
            return [x * scale + shift]
        axes = [0, *range(2, x.dim())]
        mean = x.mean(dim=axes, keepdim=True)
        var = (x * x).mean(dim=axes, keepdim=True) - mean * mean
        y = (x - mean) / torch.sqrt(var + p.eps) * scale + shift
        extra = [stat.reshape(1, -1, 1, 1) for stat in (mean, var)]
        return [y, *extra[: len(layer.tops) - 1]]


HANDLERS = [LRN(), BatchNorm(), Scale(), Bias(), MVN(), ForkBN()]

__all__ = ["LRN", "MVN", "BatchNorm", "Bias", "ForkBN", "Scale"]
