"""The handler protocol: what every layer family implements.

A handler serves one or more Caffe layer types. For each layer it

1. ``parse``s the layer's protobuf parameters into its own frozen dataclass, resolving
   Caffe's defaults and alternative spellings (``kernel_size`` vs ``kernel_h/kernel_w``)
   and refusing invalid values with a :class:`LayerError` naming the layer;
2. ``infer``s the output shapes from the input shapes (Caffe's own shape rules);
3. declares the parameter blobs it expects (``blobs``), with the prototxt's fillers;
4. emits ONNX nodes (``to_onnx``) through a :class:`GraphBuilder`;
5. computes the PyTorch reference (``to_torch``) with ``torch.nn.functional``.

Handlers import torch lazily inside ``to_torch``: converting never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from caffe2onnx.errors import LayerError, ShapeError
from caffe2onnx.ir import BlobSpec, Filler, Layer, Shape

if TYPE_CHECKING:
    import torch

    from caffe2onnx.onnx_export import GraphBuilder
    from caffe2onnx.proto.caffe_pb2 import FillerParameter, LayerParameter


class Handler:
    """Base class of layer handlers. Subclasses set ``types`` and override the hooks."""

    types: ClassVar[tuple[str, ...]] = ()
    #: number of bottoms accepted (min, max); max None = any number
    bottoms: ClassVar[tuple[int, int | None]] = (1, 1)
    #: number of tops accepted (min, max)
    tops: ClassVar[tuple[int, int | None]] = (1, 1)

    def parse(self, lp: LayerParameter) -> Any:
        """Return this layer's parameters as a frozen dataclass (or None)."""
        return None

    def resolve(self, layer: Layer, producers: Mapping[str, Layer]) -> Layer:
        """Complete a layer's parameters from the layers that produce its inputs.

        Called once per layer after SSA renaming and before shape inference, with
        ``producers`` mapping every tensor written so far to its layer (e.g. Crop without
        ``crop_param`` derives its offsets from the coordinate mapping of those layers).
        """
        return layer

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        """Output shapes. The default keeps the first input's shape."""
        return [tuple(in_shapes[0])] * len(layer.tops)

    def blobs(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
        """The parameter blobs this layer expects, in Caffe's order."""
        return []

    def to_onnx(self, layer: Layer, g: GraphBuilder) -> None:
        raise NotImplementedError

    def to_torch(
        self, layer: Layer, inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        raise NotImplementedError


# ----------------------------------------------------------------------------- helpers


def layer_error(lp_or_layer: Any, message: str) -> LayerError:
    return LayerError(lp_or_layer.name, lp_or_layer.type, message)


def shape_error(layer: Layer, message: str) -> ShapeError:
    return ShapeError(layer.name, layer.type, message)


def filler_of(lp_parent: Any, field_name: str) -> Filler | None:
    """The explicit filler ``field_name`` of a parameter message, or None if absent."""
    if lp_parent is None or not lp_parent.HasField(field_name):
        return None
    return filler_from_proto(getattr(lp_parent, field_name))


def filler_from_proto(f: FillerParameter) -> Filler:
    return Filler(type=f.type, value=f.value, min=f.min, max=f.max, mean=f.mean, std=f.std)


def axis_index(axis: int, ndim: int, layer: Layer | Any, what: str = "axis") -> int:
    """Resolve a possibly negative Caffe axis against ``ndim`` axes, or raise."""
    resolved = axis + ndim if axis < 0 else axis
    if not 0 <= resolved < ndim:
        raise LayerError(layer.name, layer.type, f"{what} {axis} is out of range for a {ndim}-D input")
    return resolved


def prod(values: Sequence[int]) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result
