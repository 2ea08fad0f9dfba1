"""Shape inference driver and the sanity limits on tensor sizes.

The per-layer rules live in the handlers (``Handler.infer``); this module runs them
in layer order and refuses absurd sizes *before* anything is allocated: a tensor of
more than ``MAX_ELEMENTS`` elements, or a dimension of more than ``MAX_DIM``, is an
error that names the layer and the shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from caffe2onnx.errors import NetDefinitionError, ShapeError
from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.registry import Registry

MAX_ELEMENTS = 2**31 - 1  # 8 GiB of float32 for one blob
MAX_DIM = 2**24


def check_shape(shape: Shape, what: str) -> None:
    """Raise NetDefinitionError for empty, non-positive or absurdly large shapes."""
    if any((not isinstance(d, int)) or d <= 0 for d in shape):
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
            f"{MAX_ELEMENTS}; check the input shape"
        )


def infer_shapes(
    layers: Iterable[Layer], input_shapes: Mapping[str, Shape], registry: Registry
) -> dict[str, Shape]:
    """Run every handler's shape rule in order; return tensor name -> shape."""
    shapes: dict[str, Shape] = dict(input_shapes)
    for layer in layers:
        handler = registry.get(layer.type)
        assert handler is not None, layer.type
        in_shapes = [shapes[b] for b in layer.bottoms]
        try:
            out_shapes = handler.infer(layer, in_shapes)
        except ShapeError:
            raise
        except (ValueError, ZeroDivisionError, IndexError) as exc:
            raise ShapeError(
                layer.name, layer.type, f"cannot infer output shape from inputs {in_shapes}: {exc}"
            ) from None
        if len(out_shapes) != len(layer.tops):
            raise ShapeError(
                layer.name,
                layer.type,
                f"produces {len(out_shapes)} output(s) but the layer declares {len(layer.tops)} top(s)",
            )
        for top, shape in zip(layer.tops, out_shapes):
            shape = tuple(int(d) for d in shape)
            try:
                check_shape(shape, f"top '{top}'")
            except NetDefinitionError as exc:
                raise ShapeError(
                    layer.name, layer.type, f"{exc} (inputs {[list(s) for s in in_shapes]})"
                ) from None
            shapes[top] = shape
    return shapes
