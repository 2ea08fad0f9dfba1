"""An example caffe2onnx plugin: three layers caffe2onnx does not know.

Load it with ``caffe2onnx convert net.prototxt --plugin examples/plugins/my_layers.py``
(or ``--plugin my_layers`` when this directory is on PYTHONPATH), or from Python::

    from caffe2onnx.plugins import load_plugins
    load_plugins(["examples/plugins/my_layers.py"])

* ``Mish`` (a YOLOv4-era fork layer, no parameters): ``x * tanh(softplus(x))``. ONNX has
  a ``Mish`` op from opset 18; below that the same formula is spelled out.
* ``ChannelScale`` (a made-up fork layer): ``y[n, c, ...] = x[n, c, ...] * w[c]`` with one
  learned blob ``w`` of shape ``[C]``. Its parameters come from ``scale_param`` (a message
  the schema knows): ``filler`` is the filler of ``w``.
* Python layers ``my_layers.ScaleShiftLayer`` (``PYTHON_LAYERS``) become ``ScaleShift``:
  ``y = x * scale + shift`` with ``scale`` and ``shift`` read from ``param_str``, a Python
  dict literal such as ``"{'scale': 2.0, 'shift': 0.5}"``.

See ``my_layers.prototxt`` beside this file for a net that uses all three.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass

from caffe2onnx.ir import BlobSpec, Filler, Layer, Shape
from caffe2onnx.layers.base import Handler, filler_of, layer_error, shape_error


class Mish(Handler):
    types = ("Mish",)

    def to_onnx(self, layer: Layer, g) -> None:
        x = layer.bottoms[0]
        if g.opset >= 18:
            g.op("Mish", [x], layer.tops[0])
            return
        g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x])])], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        from torch.nn import functional as F

        return [F.mish(inputs[0])]


@dataclass(frozen=True)
class ChannelScaleParams:
    filler: Filler | None


class ChannelScale(Handler):
    types = ("ChannelScale",)

    def parse(self, lp) -> ChannelScaleParams:
        return ChannelScaleParams(filler_of(lp.scale_param, "filler"))

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        if len(in_shapes[0]) < 2:
            raise shape_error(layer, f"needs an input with a channel axis, got {list(in_shapes[0])}")
        return [tuple(in_shapes[0])]

    def blobs(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
        return [BlobSpec("scale", (in_shapes[0][1],), layer.params.filler, "gamma")]

    def to_onnx(self, layer: Layer, g) -> None:
        shape = g.shape(layer.bottoms[0])
        scale = g.weight_as(layer, 0, [shape[1]] + [1] * (len(shape) - 2), "scale")
        g.op("Mul", [layer.bottoms[0], scale], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        x = inputs[0]
        return [x * weights[0].reshape([x.shape[1]] + [1] * (x.dim() - 2))]


@dataclass(frozen=True)
class ScaleShiftParams:
    scale: float
    shift: float


class ScaleShift(Handler):
    types = ("ScaleShift",)

    def parse(self, lp) -> ScaleShiftParams:
        text = lp.python_param.param_str or "{}"
        try:
            values = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise layer_error(lp, f"param_str {text!r} is not a Python dict literal") from None
        if not isinstance(values, dict) or set(values) - {"scale", "shift"}:
            raise layer_error(lp, f"param_str {text!r} must be a dict with the keys 'scale' and 'shift'")
        try:
            return ScaleShiftParams(float(values.get("scale", 1.0)), float(values.get("shift", 0.0)))
        except (TypeError, ValueError):
            raise layer_error(lp, f"param_str {text!r}: scale and shift must be numbers") from None

    def to_onnx(self, layer: Layer, g) -> None:
        params: ScaleShiftParams = layer.params
        scaled = g.op("Mul", [layer.bottoms[0], g.const(params.scale, "scale")])
        g.op("Add", [scaled, g.const(params.shift, "shift")], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        params: ScaleShiftParams = layer.params
        return [inputs[0] * params.scale + params.shift]


HANDLERS = [Mish(), ChannelScale(), ScaleShift()]
PYTHON_LAYERS = {"my_layers.ScaleShiftLayer": "ScaleShift"}
