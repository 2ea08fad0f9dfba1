"""IR -> ``onnx.ModelProto``.

Each layer's handler emits its nodes through a :class:`GraphBuilder`, which hands out
unique names for internal tensors (``<layer>/<hint>``), registers initializers once
(shared Caffe parameters map to one initializer), and knows every Caffe blob's shape.
Graph inputs and outputs carry static shapes; every Caffe blob gets a ``value_info``
so strict shape inference can check the handlers' shape rules against ONNX's.

Supported opsets: ``MIN_OPSET`` to ``MAX_OPSET`` (default ``DEFAULT_OPSET``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from caffe2onnx.errors import Caffe2OnnxError
from caffe2onnx.ir import Layer, Net, Shape
from caffe2onnx.layers.registry import Registry, default_registry

MIN_OPSET = 13
MAX_OPSET = 21
DEFAULT_OPSET = 17


class GraphBuilder:
    """Collects nodes and initializers while handlers convert layers."""

    def __init__(self, net: Net, opset: int) -> None:
        self.net = net
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._taken: set[str] = set(net.shapes) | set(net.input_names)
        self._layer: Layer | None = None
        self._node_count = 0

    # -- naming ---------------------------------------------------------------------

    def begin(self, layer: Layer) -> None:
        self._layer = layer
        self._node_count = 0

    def fresh(self, hint: str) -> str:
        prefix = self._layer.name if self._layer else "graph"
        name = f"{prefix}/{hint}"
        candidate = name
        counter = 1
        while candidate in self._taken:
            candidate = f"{name}_{counter}"
            counter += 1
        self._taken.add(candidate)
        return candidate

    def shape(self, tensor: str) -> Shape:
        return self.net.shapes[tensor]

    # -- nodes ----------------------------------------------------------------------

    def node(
        self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | int = 1, **attrs: Any
    ) -> list[str]:
        """Add a node; ``outputs`` is a list of names or a count of fresh names."""
        if isinstance(outputs, int):
            outputs = [self.fresh(op_type.lower()) for _ in range(outputs)]
        layer_name = self._layer.name if self._layer else "graph"
        node_name = layer_name if self._node_count == 0 else f"{layer_name}/{op_type}_{self._node_count}"
        self._node_count += 1
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=node_name, **attrs))
        return list(outputs)

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs: Any) -> str:
        """Add a single-output node and return its output name."""
        return self.node(op_type, inputs, [output] if output else 1, **attrs)[0]

    # -- constants ------------------------------------------------------------------

    def const(self, array: np.ndarray | Sequence[float] | float, hint: str, dtype: Any = np.float32) -> str:
        name = self.fresh(hint)
        self.initializers[name] = np.asarray(array, dtype=dtype)
        return name

    def ints(self, values: Sequence[int], hint: str) -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint, np.int64)

    def weight(self, layer: Layer, index: int) -> str:
        """The initializer of a layer's blob ``index``, stored as in the caffemodel."""
        name = layer.weight_names[index]
        if name not in self.initializers:
            self._taken.add(name)
            self.initializers[name] = layer.weights[index]
        return name

    def weight_as(self, layer: Layer, index: int, shape: Sequence[int], hint: str) -> str:
        """A layer's blob reshaped (e.g. ``[C]`` to ``[C,1,1]`` for broadcasting)."""
        return self.const(np.asarray(layer.weights[index]).reshape(tuple(shape)), hint)

    # -- opset-dependent helpers -----------------------------------------------------

    def reduce(
        self, op_type: str, x: str, axes: Sequence[int], keepdims: int, output: str | None = None
    ) -> str:
        """ReduceXxx with ``axes`` as an attribute or input, whichever the opset wants."""
        axes_as_input = (op_type == "ReduceSum" and self.opset >= 13) or self.opset >= 18
        if axes_as_input:
            return self.op(op_type, [x, self.ints(list(axes), "axes")], output, keepdims=keepdims)
        return self.op(op_type, [x], output, axes=list(axes), keepdims=keepdims)

    def reshape(self, x: str, shape: Sequence[int], output: str | None = None) -> str:
        return self.op("Reshape", [x, self.ints(list(shape), "shape")], output)


def _value_info(name: str, shape: Shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def to_onnx(
    net: Net,
    opset: int = DEFAULT_OPSET,
    registry: Registry | None = None,
    *,
    check: bool = True,
) -> onnx.ModelProto:
    """Convert the IR to an ONNX model (checked with the ONNX checker unless check=False)."""
    from caffe2onnx import __version__

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise Caffe2OnnxError(f"opset {opset} is not supported; choose one from {MIN_OPSET} to {MAX_OPSET}")
    registry = registry or default_registry()
    g = GraphBuilder(net, opset)
    for layer in net.layers:
        handler = registry.get(layer.type)
        assert handler is not None
        g.begin(layer)
        handler.to_onnx(layer, g)
    initializers = [
        numpy_helper.from_array(np.require(a, requirements="C"), name) for name, a in g.initializers.items()
    ]
    graph_inputs = [_value_info(name, shape) for name, shape in net.inputs]
    graph_outputs = [_value_info(name, net.shapes[name]) for name in net.outputs]
    boundary = set(net.input_names) | set(net.outputs)
    produced = {o for node in g.nodes for o in node.output}
    value_info = [
        _value_info(name, shape)
        for name, shape in net.shapes.items()
        if name not in boundary and name in produced
    ]
    graph = helper.make_graph(
        g.nodes, net.name or "caffe_net", graph_inputs, graph_outputs, initializers, value_info=value_info
    )
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opset_ids,
        producer_name="caffe2onnx",
        producer_version=__version__,
        doc_string=f"Converted from {net.source} by caffe2onnx",
    )
    model.ir_version = helper.find_min_ir_version_for(opset_ids)
    if check:
        check_model(model)
    return model


def check_model(model: onnx.ModelProto) -> None:
    """ONNX checker with full (strict) shape inference; raise on any inconsistency."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise Caffe2OnnxError(
            f"internal error: the generated ONNX model fails the ONNX checker: {exc}. "
            "Please report this with the prototxt."
        ) from None
