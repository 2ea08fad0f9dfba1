"""Element-wise activations (Caffe's neuron layers): one bottom, one top of the same shape.

Caffe semantics (spec 3.24; BVLC ``*_layer.cpp``), ``y`` as a function of ``x``:

* ReLU: ``max(x,0) + negative_slope*min(x,0)``. ONNX ``Relu`` / ``LeakyRelu``.
* PReLU: ``max(x,0) + a_c*min(x,0)`` along axis 1 of an input with at least 2 axes; the
  blob is ``[C]``, or a single value (a 0-D blob) with ``channel_shared``; the default
  filler is constant 0.25. ONNX ``PRelu`` with the slope reshaped to ``[C,1,...]`` (rank
  aligned: a ``[C]`` slope would broadcast along the last axis).
* ELU: ``x > 0 ? x : alpha*(e^x - 1)``. ONNX ``Elu``.
* Sigmoid, TanH, AbsVal: ``Sigmoid``, ``Tanh``, ``Abs``.
* BNLL: ``log(1 + e^x)``, computed stably (``x + log(1 + e^-x)`` for ``x > 0``). ONNX
  ``Softplus`` (stable in onnxruntime).
* Power: ``(shift + scale*x)^power``; when ``power*scale == 0`` the input is ignored and
  the top is the constant ``1`` (power 0) or ``shift^power``. ONNX ``Mul``/``Add``/``Pow``
  leaving out the identity steps; ``Expand`` for the constant case.
* Exp: ``outer * e^(inner*x)`` with ``inner = scale*ln(base)``, ``outer = base^shift``
  (``base`` -1 means e; otherwise ``base > 0``). ONNX ``Mul``, ``Exp``, ``Mul``.
* Log: ``ln(shift + scale*x) / ln(base)`` (``base`` -1 means e; otherwise ``base > 0``
  and not 1). ONNX ``Mul``, ``Add``, ``Log``, ``Mul``.
* Threshold: ``x > threshold ? 1 : 0`` (strictly greater), a float top.
  ONNX ``Cast(Greater(x, t), FLOAT)``.
* Clip: ``max(min, min(x, max))``; both bounds are required. ONNX ``Clip``.
* Swish: ``x * sigmoid(beta*x)``. ONNX ``Mul(x, Sigmoid(Mul(x, beta)))``.

PyTorch reference: the matching ``torch`` / ``torch.nn.functional`` ops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from caffe2onnx.ir import BlobSpec, Filler, Layer, Shape
from caffe2onnx.layers.base import Handler, filler_of, layer_error, shape_error


def _float32(value: float) -> float:
    """The value as Caffe holds it (``Dtype`` float)."""
    return float(np.float32(value))


# ----------------------------------------------------------------------------- ReLU


@dataclass(frozen=True)
class ReLUParams:
    negative_slope: float


class ReLU(Handler):
    types = ("ReLU",)

    def parse(self, lp) -> ReLUParams:
        return ReLUParams(lp.relu_param.negative_slope)

    def to_onnx(self, layer: Layer, g) -> None:
        slope = layer.params.negative_slope
        if slope == 0:
            g.op("Relu", layer.bottoms, layer.tops[0])
        else:
            g.op("LeakyRelu", layer.bottoms, layer.tops[0], alpha=slope)

    def to_torch(self, layer: Layer, inputs, weights):
        from torch.nn import functional as F

        slope = layer.params.negative_slope
        x = inputs[0]
        return [F.relu(x) if slope == 0 else F.leaky_relu(x, slope)]


# ----------------------------------------------------------------------------- PReLU


@dataclass(frozen=True)
class PReLUParams:
    channel_shared: bool
    filler: Filler


class PReLU(Handler):
    types = ("PReLU",)

    def parse(self, lp) -> PReLUParams:
        p = lp.prelu_param
        filler = filler_of(p, "filler") or Filler(type="constant", value=0.25)
        return PReLUParams(channel_shared=p.channel_shared, filler=filler)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = tuple(in_shapes[0])
        if len(shape) < 2:
            raise shape_error(layer, f"needs an input with at least 2 axes (N, C, ...), got {list(shape)}")
        return [shape]

    def blobs(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
        params: PReLUParams = layer.params
        # Caffe stores a channel-shared slope as a 0-D blob (one value).
        shape = () if params.channel_shared else (in_shapes[0][1],)
        return [BlobSpec("slope", shape, params.filler, "slope")]

    def to_onnx(self, layer: Layer, g) -> None:
        params: PReLUParams = layer.params
        ndim = len(g.shape(layer.bottoms[0]))
        if params.channel_shared:
            slope = g.weight_as(layer, 0, [1], "slope")
        elif ndim == 2:
            slope = g.weight(layer, 0)
        else:
            channels = g.shape(layer.bottoms[0])[1]
            slope = g.weight_as(layer, 0, [channels] + [1] * (ndim - 2), "slope")
        g.op("PRelu", [layer.bottoms[0], slope], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        from torch.nn import functional as F

        return [F.prelu(inputs[0], weights[0].reshape(-1))]


# ----------------------------------------------------------------------------- ELU


@dataclass(frozen=True)
class ELUParams:
    alpha: float


class ELU(Handler):
    types = ("ELU",)

    def parse(self, lp) -> ELUParams:
        return ELUParams(lp.elu_param.alpha)

    def to_onnx(self, layer: Layer, g) -> None:
        g.op("Elu", layer.bottoms, layer.tops[0], alpha=layer.params.alpha)

    def to_torch(self, layer: Layer, inputs, weights):
        from torch.nn import functional as F

        return [F.elu(inputs[0], alpha=layer.params.alpha)]


# ----------------------------------------------------------------------------- parameterless


class Unary(Handler):
    """A parameterless activation that maps to one ONNX op and one torch function."""

    def __init__(self, caffe_type: str, onnx_op: str, torch_name: str) -> None:
        self.types = (caffe_type,)
        self.onnx_op = onnx_op
        self.torch_name = torch_name  # a function of torch or else of torch.nn.functional

    def to_onnx(self, layer: Layer, g) -> None:
        g.op(self.onnx_op, layer.bottoms, layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        import torch
        from torch.nn import functional as F

        function = getattr(torch, self.torch_name, None) or getattr(F, self.torch_name)
        return [function(inputs[0])]


# ----------------------------------------------------------------------------- Power, Exp, Log

#: One step of an element-wise chain: (ONNX op, scalar second operand or None if unary).
Step = tuple[str, float | None]


class Chain(Handler):
    """A layer computed as a chain of element-wise steps applied to the bottom."""

    def steps(self, params) -> list[Step]:
        raise NotImplementedError

    def to_onnx(self, layer: Layer, g) -> None:
        x = layer.bottoms[0]
        steps = self.steps(layer.params)
        if not steps:
            g.op("Identity", [x], layer.tops[0])
        for i, (op, value) in enumerate(steps):
            output = layer.tops[0] if i == len(steps) - 1 else None
            x = g.op(op, [x] if value is None else [x, g.const(value, op.lower())], output)

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        functions = {"Mul": torch.mul, "Add": torch.add, "Pow": torch.pow, "Exp": torch.exp, "Log": torch.log}
        x = inputs[0]
        for op, value in self.steps(layer.params):
            x = functions[op](x) if value is None else functions[op](x, _float32(value))
        return [x]


@dataclass(frozen=True)
class PowerParams:
    power: float
    scale: float
    shift: float

    @property
    def constant(self) -> float | None:
        """The output value when Caffe ignores the input (power * scale == 0), else None."""
        if self.power * self.scale != 0:
            return None
        if self.power == 0:
            return 1.0
        with np.errstate(all="ignore"):  # a negative shift to a fractional power is NaN, as in Caffe
            return _float32(np.float32(self.shift) ** np.float32(self.power))


class Power(Chain):
    types = ("Power",)

    def parse(self, lp) -> PowerParams:
        p = lp.power_param
        return PowerParams(power=p.power, scale=p.scale, shift=p.shift)

    def steps(self, params: PowerParams) -> list[Step]:
        steps: list[Step] = []
        if params.scale != 1:
            steps.append(("Mul", params.scale))
        if params.shift != 0:
            steps.append(("Add", params.shift))
        if params.power != 1:
            steps.append(("Pow", params.power))
        return steps

    def to_onnx(self, layer: Layer, g) -> None:
        value = layer.params.constant
        if value is None:
            super().to_onnx(layer, g)
            return
        shape = g.op("Shape", [layer.bottoms[0]])
        g.op("Expand", [g.const(value, "value"), shape], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        value = layer.params.constant
        if value is None:
            return super().to_torch(layer, inputs, weights)
        return [torch.full_like(inputs[0], value)]


@dataclass(frozen=True)
class ExpLogParams:
    base: float  # -1: e
    scale: float
    shift: float

    @property
    def log_base(self) -> float:
        return 1.0 if self.base == -1 else math.log(self.base)


def _parse_base(lp, p, what: str) -> ExpLogParams:
    params = ExpLogParams(base=p.base, scale=p.scale, shift=p.shift)
    if params.base != -1 and not params.base > 0:
        raise layer_error(lp, f"{what}.base must be -1 (for e) or > 0, got {params.base}")
    return params


class Exp(Chain):
    types = ("Exp",)

    def parse(self, lp) -> ExpLogParams:
        return _parse_base(lp, lp.exp_param, "exp_param")

    def steps(self, params: ExpLogParams) -> list[Step]:
        # Caffe: outer * exp(inner * x), inner = scale * ln(base), outer = base^shift.
        inner = _float32(params.log_base * params.scale)
        if params.shift == 0:
            outer = 1.0
        elif params.base == -1:
            outer = _float32(math.exp(params.shift))
        else:
            outer = _float32(params.base**params.shift)
        steps: list[Step] = [("Mul", inner)] if inner != 1 else []
        steps.append(("Exp", None))
        if outer != 1:
            steps.append(("Mul", outer))
        return steps


class Log(Chain):
    types = ("Log",)

    def parse(self, lp) -> ExpLogParams:
        params = _parse_base(lp, lp.log_param, "log_param")
        if params.base == 1:
            raise layer_error(
                lp, "log_param.base 1 has no logarithm (ln 1 = 0); use -1 for e or another base > 0"
            )
        return params

    def steps(self, params: ExpLogParams) -> list[Step]:
        # Caffe: ln(shift + scale * x) * (1 / ln(base)).
        steps: list[Step] = []
        if params.scale != 1:
            steps.append(("Mul", params.scale))
        if params.shift != 0:
            steps.append(("Add", params.shift))
        steps.append(("Log", None))
        base_scale = _float32(1.0 / params.log_base)
        if base_scale != 1:
            steps.append(("Mul", base_scale))
        return steps


# ----------------------------------------------------------------------------- Threshold, Clip, Swish


@dataclass(frozen=True)
class ThresholdParams:
    threshold: float


class Threshold(Handler):
    types = ("Threshold",)

    def parse(self, lp) -> ThresholdParams:
        return ThresholdParams(lp.threshold_param.threshold)

    def to_onnx(self, layer: Layer, g) -> None:
        above = g.op("Greater", [layer.bottoms[0], g.const(layer.params.threshold, "threshold")])
        g.op("Cast", [above], layer.tops[0], to=TensorProto.FLOAT)

    def to_torch(self, layer: Layer, inputs, weights):
        x = inputs[0]
        return [(x > _float32(layer.params.threshold)).to(x.dtype)]


@dataclass(frozen=True)
class ClipParams:
    min: float
    max: float


class Clip(Handler):
    types = ("Clip",)

    def parse(self, lp) -> ClipParams:
        p = lp.clip_param
        missing = [name for name in ("min", "max") if not p.HasField(name)]
        if missing:
            raise layer_error(lp, f"clip_param needs both min and max; {' and '.join(missing)} missing")
        if p.min > p.max:
            raise layer_error(
                lp, f"clip_param.min {p.min} is greater than max {p.max}; Caffe would output min everywhere"
            )
        return ClipParams(min=p.min, max=p.max)

    def to_onnx(self, layer: Layer, g) -> None:
        params: ClipParams = layer.params
        bounds = [g.const(params.min, "min"), g.const(params.max, "max")]
        g.op("Clip", [layer.bottoms[0], *bounds], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        params: ClipParams = layer.params
        return [torch.clamp(inputs[0], _float32(params.min), _float32(params.max))]


@dataclass(frozen=True)
class SwishParams:
    beta: float


class Swish(Handler):
    types = ("Swish",)

    def parse(self, lp) -> SwishParams:
        return SwishParams(lp.swish_param.beta)

    def to_onnx(self, layer: Layer, g) -> None:
        x = layer.bottoms[0]
        beta = layer.params.beta
        scaled = x if beta == 1 else g.op("Mul", [x, g.const(beta, "beta")])
        g.op("Mul", [x, g.op("Sigmoid", [scaled])], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        x = inputs[0]
        return [x * torch.sigmoid(x * _float32(layer.params.beta))]


HANDLERS = [
    ReLU(),
    PReLU(),
    ELU(),
    Unary("Sigmoid", "Sigmoid", "sigmoid"),
    Unary("TanH", "Tanh", "tanh"),
    Unary("AbsVal", "Abs", "abs"),
    Unary("BNLL", "Softplus", "softplus"),
    Power(),
    Exp(),
    Log(),
    Threshold(),
    Clip(),
    Swish(),
]
