"""IR -> ``onnx.ModelProto``.

Each layer's handler emits its nodes through a :class:`GraphBuilder`, which hands out
unique names for internal tensors (``<layer>/<hint>``), registers initializers once
(shared Caffe parameters map to one initializer), and knows every Caffe blob's shape.
Graph inputs and outputs carry static shapes; every Caffe blob gets a ``value_info``
so strict shape inference can check the handlers' shape rules against ONNX's.

Two ways out: :func:`to_onnx` returns a ``ModelProto``; :func:`save_model` streams the
model to a file (``caffe2onnx.onnx_writer``) without building its full protobuf, with
external data above 2 GiB. Both run the ONNX checker with full (strict) shape inference
on the graph in which each large initializer (``SMALL_TENSOR_BYTES`` or more) stands in
as a graph input of the same name, type and shape: nodes, attributes, types and every
shape are checked; the weight values themselves are written from the arrays whose dims
and type the initializers declare. With ``optimize=True`` the inference passes of
``caffe2onnx.optimize`` run first.

Supported opsets: ``MIN_OPSET`` to ``MAX_OPSET`` (default ``DEFAULT_OPSET``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from caffe2onnx.errors import Caffe2OnnxError
from caffe2onnx.ir import Layer, Net, Shape
from caffe2onnx.layers.registry import Registry, default_registry
from caffe2onnx.onnx_writer import PROTOBUF_LIMIT, tensor_type

MIN_OPSET = 13
MAX_OPSET = 21
DEFAULT_OPSET = 17
SMALL_TENSOR_BYTES = 1024  # initializers below this stay in the checked graph with their values


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


def _value_info(name: str, shape: Shape, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


@dataclass
class ExportedGraph:
    """A converted graph before serialization: nodes plus initializers as numpy arrays.

    ``net`` is the net the nodes were built from (after the optimization passes, when
    asked for). Initializers stay numpy arrays (views of the caffemodel where the
    weights are used as stored) until they are written.
    """

    net: Net
    opset: int
    nodes: list[onnx.NodeProto]
    initializers: dict[str, np.ndarray]

    def model(
        self, initializers: Sequence[onnx.TensorProto], extra_inputs: Sequence[onnx.ValueInfoProto] = ()
    ) -> onnx.ModelProto:
        """The ModelProto with the given initializers (and extra typed graph inputs)."""
        from caffe2onnx import __version__

        net = self.net
        graph_inputs = [_value_info(name, shape) for name, shape in net.inputs]
        graph_outputs = [_value_info(name, net.shapes[name]) for name in net.outputs]
        boundary = set(net.input_names) | set(net.outputs)
        produced = {o for node in self.nodes for o in node.output}
        value_info = [
            _value_info(name, shape)
            for name, shape in net.shapes.items()
            if name not in boundary and name in produced
        ]
        graph = helper.make_graph(
            self.nodes,
            net.name or "caffe_net",
            [*graph_inputs, *extra_inputs],
            graph_outputs,
            list(initializers),
            value_info=value_info,
        )
        opset_ids = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(
            graph,
            opset_imports=opset_ids,
            producer_name="caffe2onnx",
            producer_version=__version__,
            doc_string=f"Converted from {net.source} by caffe2onnx",
        )
        model.ir_version = helper.find_min_ir_version_for(opset_ids)
        return model

    def split(self) -> tuple[list[onnx.TensorProto], list[tuple[str, np.ndarray]]]:
        """(small initializers as TensorProtos, large ones as arrays to stream)."""
        small = []
        large = []
        for name, array in self.initializers.items():
            if array.nbytes < SMALL_TENSOR_BYTES:
                small.append(numpy_helper.from_array(np.require(array, requirements="C"), name))
            else:
                large.append((name, array))
        return small, large

    def checked_skeleton(self) -> tuple[onnx.ModelProto, list[tuple[str, np.ndarray]]]:
        """The model without its large initializers, after the ONNX checker and strict
        shape inference ran on it with each large initializer standing in as a graph
        input of the same name, type and shape; plus those large initializers."""
        small, large = self.split()
        stand_ins = [_value_info(name, array.shape, tensor_type(array)) for name, array in large]
        check_model(self.model(small, stand_ins))
        return self.model(small), large


def export_graph(
    net: Net,
    opset: int = DEFAULT_OPSET,
    registry: Registry | None = None,
    *,
    optimize: bool = False,
) -> ExportedGraph:
    """Run every layer's handler; with ``optimize``, run the inference passes first
    (``caffe2onnx.optimize``) and fold constant nodes after."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise Caffe2OnnxError(f"opset {opset} is not supported; choose one from {MIN_OPSET} to {MAX_OPSET}")
    registry = registry or default_registry()
    if optimize:
        from caffe2onnx.optimize import optimize as optimize_net

        net = optimize_net(net, registry)
    g = GraphBuilder(net, opset)
    for layer in net.layers:
        handler = registry.get(layer.type)
        assert handler is not None
        g.begin(layer)
        handler.to_onnx(layer, g)
    exported = ExportedGraph(net, opset, g.nodes, g.initializers)
    if optimize:
        from caffe2onnx.optimize import fold_constants

        exported = fold_constants(exported)
    return exported


def to_onnx(
    net: Net,
    opset: int = DEFAULT_OPSET,
    registry: Registry | None = None,
    *,
    check: bool = True,
    optimize: bool = False,
) -> onnx.ModelProto:
    """Convert the IR to an in-memory ONNX model (checked unless ``check=False``).

    For large models prefer :func:`save_model`, which streams the weights to disk.
    """
    exported = export_graph(net, opset, registry, optimize=optimize)
    if check:
        model, large = exported.checked_skeleton()
    else:
        small, large = exported.split()
        model = exported.model(small)
    model.graph.initializer.extend(
        numpy_helper.from_array(np.require(array, requirements="C"), name) for name, array in large
    )
    return model


@dataclass(frozen=True)
class SavedModel:
    """What :func:`save_model` wrote."""

    path: str
    data_path: str | None  # the external data file, or None when the weights are inline
    size: int  # bytes written, data file included
    net: Net  # the net as exported (after the optimization passes, when asked for)


def save_model(
    net: Net,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    registry: Registry | None = None,
    *,
    optimize: bool = False,
    external_data: bool | None = None,
    progress: bool = False,
    check: bool = True,
    size_limit: int = PROTOBUF_LIMIT,
) -> SavedModel:
    """Convert ``net`` and stream the ONNX model to ``path`` atomically.

    Memory stays bounded: the graph is serialized without the large weights, which are
    then written straight from their numpy buffers (or copied in the kernel from the
    caffemodel when used unchanged); no full copy of the model exists in memory.

    ``external_data``: None chooses external data when the model would exceed
    ``size_limit`` bytes (default: the 2 GiB protobuf limit); True always writes the
    weights to ``<output name>.data`` beside the model; False never does (an error above
    2 GiB). ``progress`` shows a bar on stderr while writing the weights of a large
    model, if stderr is a terminal. ``check`` runs the ONNX checker with full (strict)
    shape inference on the graph, each large initializer standing in as a typed input:
    everything but the weight values is checked, and the writer derives every weight's
    declared dims and type from the array it writes.
    """
    from caffe2onnx.onnx_writer import inline_size, write_model
    from caffe2onnx.progress import progress_bar

    exported = export_graph(net, opset, registry, optimize=optimize)
    if check:
        skeleton, large = exported.checked_skeleton()
    else:
        small, large = exported.split()
        skeleton = exported.model(small)
    if external_data is None:
        external_data = inline_size(skeleton, large) > size_limit
    protected = [net.source, *_weight_files(net)]
    total = sum(int(array.nbytes) for _, array in large)
    with progress_bar(total, "writing weights", enabled=progress) as bar:
        data_path = write_model(
            path, skeleton, large, external_data=external_data, protected=protected, progress=bar
        )
    size = os.path.getsize(path) + (os.path.getsize(data_path) if data_path else 0)
    return SavedModel(os.fspath(path), data_path, size, exported.net)


def _weight_files(net: Net) -> list[str]:
    """The caffemodel files the net's weights are mapped from."""
    from caffe2onnx.caffemodel import MappedFile

    files = set()
    for layer in net.layers:
        for array in layer.weights:
            base: object = array
            while isinstance(base, np.ndarray):
                base = base.base
            while isinstance(base, memoryview):
                base = base.obj
            if isinstance(base, MappedFile) and not base.file.closed:
                files.add(base.file.name)
    return sorted(files)


def check_model(model: onnx.ModelProto) -> None:
    """ONNX checker with full (strict) shape inference; raise on any inconsistency."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise Caffe2OnnxError(
            f"internal error: the generated ONNX model fails the ONNX checker: {exc}. "
            "Please report this with the prototxt."
        ) from None
