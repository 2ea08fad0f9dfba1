"""Shape inference driver and the sanity limits on tensor and blob sizes.

The per-layer rules live in the handlers (``Handler.infer``); this module runs them
in layer order and refuses absurd sizes *before* anything is allocated: a tensor or a
parameter blob of more than ``MAX_ELEMENTS`` elements, or a dimension of more than
``MAX_DIM``, is an error that names the layer and the shape; the parser also caps the
parameters of the whole net at ``MAX_TOTAL_ELEMENTS``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from caffe2onnx.errors import NetDefinitionError, ShapeError
from caffe2onnx.ir import BlobSpec, Layer, Shape
from caffe2onnx.layers.base import Handler
from caffe2onnx.layers.registry import Registry

MAX_ELEMENTS = 2**31 - 1  # 8 GiB of float32 for one blob
MAX_DIM = 2**24
MAX_TOTAL_ELEMENTS = 2**32  # 16 GiB of float32 parameters for a whole net


def check_shape(shape: Shape, what: str, hint: str = "check the input shape") -> None:
    """Raise NetDefinitionError for non-positive or absurdly large shapes."""
    if any((not isinstance(d, int)) or isinstance(d, bool) or d <= 0 for d in shape):
        raise NetDefinitionError(f"{what} has shape {list(shape)}: every dimension must be >= 1")
    count = 1
    for d in shape:
        if d > MAX_DIM:
            raise NetDefinitionError(
                f"{what} has shape {list(shape)}: dimension {d} exceeds the limit {MAX_DIM}"
            )
        count *= d
    if count > MAX_ELEMENTS:
        raise NetDefinitionError(
            f"{what} has shape {list(shape)} = {count} elements, more than the limit of "
            f"{MAX_ELEMENTS}; {hint}"
        )


def check_blob_specs(layer: Layer, specs: Sequence[BlobSpec]) -> None:
    """Refuse parameter blobs of absurd size (before any weights are drawn or filled)."""
    for spec in specs:
        shape = tuple(spec.shape)
        try:
            check_shape(shape, f"its parameter blob '{spec.role}'", "check num_output and the kernel size")
        except NetDefinitionError as exc:
            raise ShapeError(layer.name, layer.type, str(exc)) from None


def infer_layer(handler: Handler, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
    """One layer's output shapes, checked; any failure is a :class:`ShapeError`."""
    try:
        out_shapes = [tuple(int(d) for d in shape) for shape in handler.infer(layer, in_shapes)]
    except ShapeError:
        raise
    except (ValueError, ArithmeticError, IndexError) as exc:
        raise ShapeError(
            layer.name,
            layer.type,
            f"cannot infer output shape from inputs {[list(s) for s in in_shapes]}: {exc}",
        ) from None
    if len(out_shapes) != len(layer.tops):
        raise ShapeError(
            layer.name,
            layer.type,
            f"produces {len(out_shapes)} output(s) but the layer declares {len(layer.tops)} top(s)",
        )
    for top, shape in zip(layer.tops, out_shapes):
        try:
            check_shape(shape, f"top '{top}'")
        except NetDefinitionError as exc:
            raise ShapeError(
                layer.name, layer.type, f"{exc} (inputs {[list(s) for s in in_shapes]})"
            ) from None
    return out_shapes


def infer_shapes(
    layers: Iterable[Layer], input_shapes: Mapping[str, Shape], registry: Registry
) -> dict[str, Shape]:
    """Run every handler's shape rule in order; return tensor name -> shape."""
    shapes: dict[str, Shape] = dict(input_shapes)
    for layer in layers:
        handler = registry.get(layer.type)
        assert handler is not None, layer.type
        out_shapes = infer_layer(handler, layer, [shapes[b] for b in layer.bottoms])
        shapes.update(zip(layer.tops, out_shapes))
    return shapes
