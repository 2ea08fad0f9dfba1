"""Convolution (dilated/atrous, grouped, depthwise) and Deconvolution (transposed).

Caffe semantics (spec 3.1-3.3):

* ``kernel_size``/``stride``/``pad``/``dilation`` are repeated (one value for all spatial
  axes, or one per axis); ``kernel_h/_w``, ``stride_h/_w``, ``pad_h/_w`` win over them.
  DeepLab v1's ``hole``/``hole_h``/``hole_w`` is the dilation.
* Convolution: weights ``[O, C/g, k...]``, output ``(i + 2p - (d(k-1)+1)) // s + 1``.
* Deconvolution: weights ``[C, O/g, k...]`` (the gradient of a convolution, copied
  unchanged), output ``s(i-1) + d(k-1) + 1 - 2p``; Caffe has no output_padding.
* Several bottoms: the same weights are applied to each bottom, giving one top each.

ONNX: ``Conv`` / ``ConvTranspose`` with symmetric ``pads``, ``strides``, ``dilations``,
``group``; no ``output_padding``/``output_shape``. PyTorch: ``F.conv{n}d`` /
``F.conv_transpose{n}d``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from caffe2onnx.ir import BlobSpec, Filler, Layer, Shape
from caffe2onnx.layers.base import Handler, filler_of, layer_error, prod, shape_error


@dataclass(frozen=True)
class ConvParams:
    num_output: int
    bias_term: bool
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]
    group: int
    weight_filler: Filler | None
    bias_filler: Filler | None

    def geometry(self, layer: Layer, num_spatial: int) -> tuple[tuple[int, ...], ...]:
        """(kernel, stride, pad, dilation), each with one value per spatial axis."""
        return tuple(
            _per_axis(layer, name, values, num_spatial)
            for name, values in (
                ("kernel", self.kernel),
                ("stride", self.stride),
                ("pad", self.pad),
                ("dilation", self.dilation),
            )
        )


def _per_axis(layer: Layer, what: str, values: tuple[int, ...], n: int) -> tuple[int, ...]:
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise layer_error(layer, f"{what} has {len(values)} values for {n} spatial axes")
    return values


def parse_conv_params(lp) -> ConvParams:
    p = lp.convolution_param
    if not p.HasField("num_output") or p.num_output == 0:
        raise layer_error(lp, "convolution_param.num_output must be set and > 0")
    if p.HasField("kernel_h") or p.HasField("kernel_w"):
        if p.kernel_size:
            raise layer_error(lp, "give either kernel_size or kernel_h and kernel_w, not both")
        if not (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise layer_error(lp, "kernel_h and kernel_w must be given together")
        kernel = (p.kernel_h, p.kernel_w)
    elif p.kernel_size:
        kernel = tuple(p.kernel_size)
    else:
        raise layer_error(lp, "no kernel size: set kernel_size or kernel_h and kernel_w")
    if p.HasField("stride_h") or p.HasField("stride_w"):
        if p.stride:
            raise layer_error(lp, "give either stride or stride_h and stride_w, not both")
        stride = (p.stride_h, p.stride_w)
    else:
        stride = tuple(p.stride) or (1,)
    if p.HasField("pad_h") or p.HasField("pad_w"):
        if p.pad:
            raise layer_error(lp, "give either pad or pad_h and pad_w, not both")
        pad = (p.pad_h, p.pad_w)
    else:
        pad = tuple(p.pad) or (0,)
    if p.dilation:
        dilation = tuple(p.dilation)
    elif p.HasField("hole_h") or p.HasField("hole_w"):
        dilation = (p.hole_h, p.hole_w)
    elif p.HasField("hole"):
        dilation = (p.hole,)
    else:
        dilation = (1,)
    for what, values in (("kernel", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v <= 0 for v in values):
            raise layer_error(lp, f"{what} must be positive, got {list(values)}")
    if p.group <= 0:
        raise layer_error(lp, f"group must be positive, got {p.group}")
    if p.num_output % p.group:
        raise layer_error(lp, f"num_output {p.num_output} is not divisible by group {p.group}")
    if p.axis != 1:
        raise layer_error(lp, f"convolution axis {p.axis} is not supported (only the channel axis 1)")
    if len(lp.bottom) != len(lp.top):
        raise layer_error(
            lp, f"needs one top per bottom, has {len(lp.bottom)} bottoms and {len(lp.top)} tops"
        )
    return ConvParams(
        num_output=p.num_output,
        bias_term=p.bias_term,
        kernel=kernel,
        stride=stride,
        pad=pad,
        dilation=dilation,
        group=p.group,
        weight_filler=filler_of(p, "weight_filler"),
        bias_filler=filler_of(p, "bias_filler"),
    )


class _ConvBase(Handler):
    bottoms = (1, None)
    tops = (1, None)
    transposed = False

    def parse(self, lp) -> ConvParams:
        return parse_conv_params(lp)

    def _check_input(self, layer: Layer, shape: Shape) -> int:
        params: ConvParams = layer.params
        if len(shape) < 3:
            raise shape_error(
                layer, f"needs an input with channels and spatial axes, got shape {list(shape)}"
            )
        channels = shape[1]
        if channels % params.group:
            raise shape_error(layer, f"input channels {channels} are not divisible by group {params.group}")
        return len(shape) - 2

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        params: ConvParams = layer.params
        first = in_shapes[0]
        if any(tuple(s) != tuple(first) for s in in_shapes[1:]):
            raise shape_error(
                layer, f"all bottoms must have the same shape, got {[list(s) for s in in_shapes]}"
            )
        n = self._check_input(layer, first)
        kernel, stride, pad, dilation = params.geometry(layer, n)
        spatial = []
        for i, (size, k, s, p, d) in enumerate(zip(first[2:], kernel, stride, pad, dilation)):
            extent = d * (k - 1) + 1
            if self.transposed:
                out = s * (size - 1) + extent - 2 * p
            else:
                out = (size + 2 * p - extent) // s + 1 if size + 2 * p >= extent else 0
            if out <= 0:
                raise shape_error(
                    layer,
                    f"output size {out} along spatial axis {i} (input {size}, kernel {k}, "
                    f"stride {s}, pad {p}, dilation {d}); the input is too small",
                )
            spatial.append(out)
        return [(first[0], params.num_output, *spatial)] * len(layer.tops)

    def blobs(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
        params: ConvParams = layer.params
        shape = in_shapes[0]
        n = len(shape) - 2
        kernel, stride, _, _ = params.geometry(layer, n)
        channels = shape[1]
        if self.transposed:
            w_shape = (channels, params.num_output // params.group, *kernel)
            fan_in = max(1, channels // params.group * prod(kernel) // max(1, prod(stride)))
        else:
            w_shape = (params.num_output, channels // params.group, *kernel)
            fan_in = channels // params.group * prod(kernel)
        specs = [BlobSpec("weight", w_shape, params.weight_filler, "fan_in", fan_in)]
        if params.bias_term:
            specs.append(BlobSpec("bias", (params.num_output,), params.bias_filler, "bias"))
        return specs

    def _attrs(self, layer: Layer, num_spatial: int) -> dict:
        params: ConvParams = layer.params
        kernel, stride, pad, dilation = params.geometry(layer, num_spatial)
        return {
            "kernel_shape": list(kernel),
            "strides": list(stride),
            "pads": list(pad) * 2,
            "dilations": list(dilation),
            "group": params.group,
        }

    def to_onnx(self, layer: Layer, g) -> None:
        params: ConvParams = layer.params
        weights = [g.weight(layer, 0)]
        if params.bias_term:
            weights.append(g.weight(layer, 1))
        attrs = self._attrs(layer, len(g.shape(layer.bottoms[0])) - 2)
        op = "ConvTranspose" if self.transposed else "Conv"
        for bottom, top in zip(layer.bottoms, layer.tops):
            g.op(op, [bottom, *weights], top, **attrs)

    def to_torch(self, layer: Layer, inputs, weights):
        from torch.nn import functional as F

        params: ConvParams = layer.params
        n = inputs[0].dim() - 2
        _, stride, pad, dilation = params.geometry(layer, n)
        bias = weights[1] if params.bias_term else None
        if self.transposed:
            fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
            return [
                fn(x, weights[0], bias, stride=stride, padding=pad, groups=params.group, dilation=dilation)
                for x in inputs
            ]
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
        return [
            fn(x, weights[0], bias, stride=stride, padding=pad, dilation=dilation, groups=params.group)
            for x in inputs
        ]


class Convolution(_ConvBase):
    types = ("Convolution",)


class DepthwiseConvolution(_ConvBase):
    """The MobileNet forks' DepthwiseConvolution / ConvolutionDepthwise: one filter per
    channel. Most prototxts also say ``group: C``; when they do not, group = num_output."""

    types = ("DepthwiseConvolution", "ConvolutionDepthwise")

    def parse(self, lp) -> ConvParams:
        params = parse_conv_params(lp)
        if not lp.convolution_param.HasField("group"):
            params = replace(params, group=params.num_output)
        return params


class Deconvolution(_ConvBase):
    types = ("Deconvolution",)
    transposed = True


HANDLERS = [Convolution(), DepthwiseConvolution(), Deconvolution()]

__all__ = ["ConvParams", "Convolution", "Deconvolution", "parse_conv_params"]
