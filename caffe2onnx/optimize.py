"""Inference-speed passes: fewer, cheaper nodes computing the same numbers.

The CLI runs them by default (``--no-optimize`` exports the net 1:1). :func:`optimize`
runs the IR passes of ``PASSES`` in order, each ``Net -> (Net, count)``:

1. ``drop_identities``: Split, Dropout at test scale 1, one-bottom Concat,
   Power(power 1, scale 1, shift 0), and Reshape/Flatten to the same shape compute
   nothing: their readers read the input instead.
2. ``fold_affine``: a chain of per-channel affine layers ``y = a*x + b`` (BatchNorm,
   Scale and Bias with a blob, the forks' BN at inference, Dropout with a test scale,
   Power with power 1) right after a Convolution, Deconvolution or 2-D InnerProduct is
   folded into its weights and bias: ``a*(W*x + c) + b = (a*W)*x + (a*c + b)``.
3. ``merge_affine``: two or more such layers in a row elsewhere become one Scale.

:func:`fold_constants` then runs on the exported ONNX graph: a node whose inputs are
all initializers (or a Shape of a tensor of static shape) is evaluated with ONNX's
reference evaluator and becomes an initializer; initializers nothing reads are dropped.

What keeps the numbers and the names right:

* a layer is folded into the producer of its input only when nothing else reads the
  producer's output and it is not a graph output (else the unfolded value is needed);
* folding makes new arrays under new initializer names, so a weight shared with another
  layer (``param { name: ... }``) keeps its value for that layer;
* the folded producer writes the tensor the last folded layer wrote, and a dropped
  identity's readers read its input: every remaining tensor keeps its Caffe blob (SSA)
  name, so validation compares each blob present in both graphs. A dropped identity
  whose output is a graph output renames its input's producer to write that name (or
  stays, when its input is a net input or another graph output).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from caffe2onnx.caffemodel import release
from caffe2onnx.ir import Layer, Net, Shape
from caffe2onnx.layers.activation import Power
from caffe2onnx.layers.conv import Deconvolution, _ConvBase
from caffe2onnx.layers.inner_product import InnerProduct
from caffe2onnx.layers.normalization import (
    PSPNET,
    BatchNorm,
    Bias,
    ForkBN,
    Scale,
    ScaleParams,
    _inverse_factor,
)
from caffe2onnx.layers.registry import Registry, default_registry
from caffe2onnx.layers.shape_ops import Concat, Dropout, Flatten, Reshape, Split

if TYPE_CHECKING:
    from caffe2onnx.onnx_export import ExportedGraph

Affine = tuple[np.ndarray, np.ndarray]  # (a, b) of y = a*x + b, float64, shape (C,) or ()
Pass = Callable[[Net, Registry], tuple[Net, int]]


def optimize(net: Net, registry: Registry | None = None) -> Net:
    """Run the IR passes of ``PASSES`` in order; note what they did in ``net.notes``."""
    registry = registry or default_registry()
    done = []
    for name, run in PASSES:
        net, count = run(net, registry)
        if count:
            done.append(f"{name} {count}")
    net = _prune_shapes(net)
    if done:
        net = replace(net, notes=(*net.notes, "optimized for inference: " + ", ".join(done)))
    return net


# ----------------------------------------------------------------------------- helpers


def _readers(layers: Sequence[Layer]) -> dict[str, list[int]]:
    """Tensor -> the indices of the layers reading it (once per read)."""
    result: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for bottom in layer.bottoms:
            result.setdefault(bottom, []).append(i)
    return result


def _prune_shapes(net: Net) -> Net:
    live = set(net.input_names) | {t for layer in net.layers for t in (*layer.bottoms, *layer.tops)}
    shapes = {k: v for k, v in net.shapes.items() if k in live}
    blob_of = {k: v for k, v in net.blob_of.items() if k in live}
    return replace(net, shapes=shapes, blob_of=blob_of)


class _Names:
    """Fresh initializer names that clash with no tensor or weight of the net."""

    def __init__(self, net: Net) -> None:
        self.taken = set(net.shapes) | set(net.input_names)
        self.taken.update(name for layer in net.layers for name in layer.weight_names)

    def fresh(self, name: str) -> str:
        candidate, counter = name, 1
        while candidate in self.taken:
            candidate = f"{name}_{counter}"
            counter += 1
        self.taken.add(candidate)
        return candidate


# ----------------------------------------------------------------------------- identities


def _is_identity(layer: Layer, registry: Registry, shapes: Mapping[str, Shape]) -> bool:
    handler = registry.get(layer.type)
    if len(layer.bottoms) != 1:
        return False
    if isinstance(handler, Split):
        return True
    if isinstance(handler, Dropout):
        return layer.params.test_scale == 1.0
    if isinstance(handler, Concat):
        return True
    if isinstance(handler, Power):
        p = layer.params
        return p.power == 1 and p.scale == 1 and p.shift == 0
    if isinstance(handler, (Reshape, Flatten)):
        return tuple(shapes[layer.bottoms[0]]) == tuple(shapes[layer.tops[0]])
    return False


def drop_identities(net: Net, registry: Registry) -> tuple[Net, int]:
    """Drop layers that copy their input; see the module docstring for graph outputs."""
    alias: dict[str, str] = {}

    def source(tensor: str) -> str:
        while tensor in alias:
            tensor = alias[tensor]
        return tensor

    identities = set()
    for i, layer in enumerate(net.layers):
        if _is_identity(layer, registry, net.shapes):
            identities.add(i)
            for top in layer.tops:
                alias[top] = source(layer.bottoms[0])
    if not identities:
        return net, 0

    outputs = set(net.outputs)
    producer = {top: i for i, layer in enumerate(net.layers) if i not in identities for top in layer.tops}
    rename: dict[str, str] = {}  # a kept layer's top -> the graph output name it now writes
    needed: dict[int, list[str]] = {}  # identity layer -> its tops that must stay (graph outputs)
    for i in sorted(identities):
        for top in net.layers[i].tops:
            if top not in outputs:
                continue
            src = source(top)
            if src in producer and src not in outputs and src not in rename:
                rename[src] = top
            else:
                needed.setdefault(i, []).append(top)

    def final(tensor: str) -> str:
        tensor = source(tensor)
        return rename.get(tensor, tensor)

    layers = []
    for i, layer in enumerate(net.layers):
        if i in identities:
            if i not in needed:
                continue
            layer = layer.with_(tops=tuple(needed[i]), bottoms=(final(layer.bottoms[0]),))
        else:
            layer = layer.with_(
                bottoms=tuple(final(b) for b in layer.bottoms),
                tops=tuple(rename.get(t, t) for t in layer.tops),
            )
        layers.append(layer)
    shapes = dict(net.shapes)
    for old, new in rename.items():
        shapes[new] = shapes[old]
    dropped = len(identities) - len(needed)
    return replace(net, layers=tuple(layers), shapes=shapes), dropped


# ----------------------------------------------------------------------------- affine layers


def _per_channel(values: np.ndarray, channels: int) -> np.ndarray | None:
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size == 1:
        return values.reshape(())
    return values if values.size == channels else None


def _operand_is_per_channel(layer: Layer, handler: Scale | Bias, shape: Shape) -> bool:
    """True if the Scale/Bias blob broadcasts along axis 1 only (or is a scalar)."""
    target = handler._target(layer, [shape])
    full = (1,) * (len(shape) - len(target)) + tuple(target)
    return all(d == 1 for i, d in enumerate(full) if i != 1)


def affine_of(layer: Layer, registry: Registry, shape: Shape) -> Affine | None:
    """``(a, b)`` when ``layer`` computes ``a*x + b`` per channel (axis 1) of an input of
    ``shape``, with ``a``/``b`` of shape ``(C,)`` or ``()``; else None."""
    if len(layer.bottoms) != 1 or len(layer.tops) != 1 or len(shape) < 2:
        return None
    handler = registry.get(layer.type)
    channels = shape[1]
    w = layer.weights
    one, zero = np.float64(1.0), np.float64(0.0)
    a: np.ndarray | None
    b: np.ndarray | None
    if isinstance(handler, BatchNorm):
        if len(w) != 3:
            return None
        f = np.float64(_inverse_factor(w[2]))
        mean, var = _per_channel(w[0], channels), _per_channel(w[1], channels)
        if mean is None or var is None:
            return None
        a = 1.0 / np.sqrt(var * f + np.float64(np.float32(layer.params.eps)))
        b = -mean * f * a
    elif isinstance(handler, Scale):
        if not w or not _operand_is_per_channel(layer, handler, shape):
            return None
        a = _per_channel(w[0], channels)
        b = _per_channel(w[1], channels) if layer.params.bias_term else zero
    elif isinstance(handler, Bias):
        if not w or not _operand_is_per_channel(layer, handler, shape):
            return None
        a, b = one, _per_channel(w[0], channels)
    elif isinstance(handler, ForkBN):
        p = layer.params
        if len(w) < 2 or not p.inference:
            return None
        scale, shift = _per_channel(w[0], channels), _per_channel(w[1], channels)
        if p.variant == PSPNET:
            mean, var = _per_channel(w[2], channels), _per_channel(w[3], channels)
            if scale is None or mean is None or var is None:
                return None
            a = scale / np.sqrt(var + np.float64(np.float32(p.eps)))
            b = None if shift is None else shift - mean * a
        else:
            a, b = scale, shift
    elif isinstance(handler, Dropout):
        a, b = np.float64(np.float32(layer.params.test_scale)), zero
    elif isinstance(handler, Power):
        p = layer.params
        if p.power != 1:
            return None
        a, b = np.float64(np.float32(p.scale)), np.float64(np.float32(p.shift))
    else:
        return None
    if a is None or b is None:
        return None
    return np.asarray(a, np.float64), np.asarray(b, np.float64)


def _compose(first: Affine, then: Affine) -> Affine:
    """``then(first(x))``."""
    return then[0] * first[0], then[0] * first[1] + then[1]


def _chain(
    layers: Sequence[Layer],
    start: str,
    readers: Mapping[str, list[int]],
    outputs: set[str],
    net: Net,
    registry,
) -> tuple[list[int], Affine | None]:
    """The affine layers reading ``start`` one after the other, each the only reader of
    its input, none reading a graph output; and their composition."""
    chain: list[int] = []
    total: Affine | None = None
    tensor = start
    while tensor not in outputs and len(readers.get(tensor, ())) == 1:
        j = readers[tensor][0]
        affine = affine_of(layers[j], registry, net.shapes[tensor])
        if affine is None:
            break
        chain.append(j)
        total = affine if total is None else _compose(total, affine)
        tensor = layers[j].tops[0]
    return chain, total


def _foldable_producer(layer: Layer, registry: Registry, net: Net) -> bool:
    handler = registry.get(layer.type)
    if not layer.weights or len(layer.tops) != 1 or len(layer.bottoms) != 1:
        return False
    if isinstance(handler, _ConvBase):
        return True
    return isinstance(handler, InnerProduct) and len(net.shapes[layer.tops[0]]) == 2


def _fold_into(layer: Layer, affine: Affine, registry: Registry, names: _Names, top: str) -> Layer:
    handler = registry.get(layer.type)
    weight = np.asarray(layer.weights[0], np.float32)
    channels = layer.params.num_output
    a = np.broadcast_to(affine[0], (channels,))
    b = np.broadcast_to(affine[1], (channels,))
    a32 = a.astype(np.float32)
    if isinstance(handler, Deconvolution):
        group = layer.params.group
        grouped = weight.reshape(group, weight.shape[0] // group, channels // group, *weight.shape[2:])
        scale = a32.reshape(group, 1, channels // group, *(1,) * (weight.ndim - 2))
        new_weight = (grouped * scale).reshape(weight.shape)
    elif isinstance(handler, _ConvBase):
        new_weight = weight * a32.reshape(channels, *(1,) * (weight.ndim - 1))
    elif layer.params.transpose:  # InnerProduct with a [K, N] weight
        new_weight = weight * a32[None, :]
    else:
        new_weight = weight * a32[:, None]
    old_bias = np.asarray(layer.weights[1], np.float64) if layer.params.bias_term else np.float64(0.0)
    new_bias = (a * old_bias + b).astype(np.float32)
    release(layer.weights[0])  # read once: keep only the folded copy in memory
    return layer.with_(
        tops=(top,),
        params=replace(layer.params, bias_term=True),
        weights=(new_weight, new_bias),
        weight_names=(names.fresh(f"{layer.name}/folded_weight"), names.fresh(f"{layer.name}/folded_bias")),
        param_names=(),
    )


def fold_affine(net: Net, registry: Registry) -> tuple[Net, int]:
    """Fold affine chains into the Convolution/Deconvolution/InnerProduct before them."""
    layers = list(net.layers)
    readers = _readers(layers)
    outputs = set(net.outputs)
    names = _Names(net)
    removed: set[int] = set()
    for i, layer in enumerate(layers):
        if i in removed or not _foldable_producer(layer, registry, net):
            continue
        chain, affine = _chain(layers, layer.tops[0], readers, outputs, net, registry)
        if not chain or affine is None:
            continue
        layers[i] = _fold_into(layer, affine, registry, names, layers[chain[-1]].tops[0])
        removed.update(chain)
    kept = tuple(layer for i, layer in enumerate(layers) if i not in removed)
    return replace(net, layers=kept), len(removed)


def merge_affine(net: Net, registry: Registry) -> tuple[Net, int]:
    """Two or more affine layers in a row (not after a foldable layer) -> one Scale."""
    if not isinstance(registry.get("Scale"), Scale):
        return net, 0
    layers = list(net.layers)
    readers = _readers(layers)
    outputs = set(net.outputs)
    names = _Names(net)
    removed: set[int] = set()
    merged = 0
    for i, layer in enumerate(layers):
        if i in removed or len(layer.bottoms) != 1:
            continue
        shape = net.shapes[layer.bottoms[0]]
        first = affine_of(layer, registry, shape)
        if first is None:
            continue
        chain, rest = _chain(layers, layer.tops[0], readers, outputs, net, registry)
        if not chain or rest is None:
            continue
        a, b = _compose(first, rest)
        channels = shape[1]
        last = layers[chain[-1]]
        layers[i] = layer.with_(
            type="Scale",
            tops=last.tops,
            caffe_tops=last.caffe_tops,
            params=ScaleParams(axis=1, num_axes=1, bias_term=True, filler=None, bias_filler=None),
            weights=(
                np.broadcast_to(a, (channels,)).astype(np.float32),
                np.broadcast_to(b, (channels,)).astype(np.float32),
            ),
            weight_names=(
                names.fresh(f"{layer.name}/merged_scale"),
                names.fresh(f"{layer.name}/merged_bias"),
            ),
            param_names=(),
        )
        removed.update(chain)
        merged += len(chain) + 1
    kept = tuple(layer for i, layer in enumerate(layers) if i not in removed)
    return replace(net, layers=kept), merged


PASSES: tuple[tuple[str, Pass], ...] = (
    ("dropped identity layers:", drop_identities),
    ("folded into convolution/inner product layers:", fold_affine),
    ("merged into Scale layers:", merge_affine),
)


# ----------------------------------------------------------------------------- ONNX constants

_NOT_FOLDABLE = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)
_MAX_GROWTH = 4096  # a folded output may have this many more elements than its largest input


def _shape_value(node, shape: Shape) -> np.ndarray:
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(shape)
    start = attrs.get("start", 0)
    end = attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return np.asarray(shape[start:end], np.int64)


def _evaluate(node, values: Sequence[np.ndarray], opset: int) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(node, opsets={"": opset})
        results = evaluator.run(None, dict(zip(node.input, values)))
    except Exception:  # an op the reference evaluator lacks: leave the node as it is
        return None
    return [np.asarray(r) for r in results]


def fold_constants(exported: ExportedGraph) -> ExportedGraph:
    """Evaluate nodes that depend only on initializers (and static shapes)."""
    known = dict(exported.initializers)
    shapes = exported.net.shapes
    outputs = set(exported.net.outputs)
    nodes = []
    for node in exported.nodes:
        results = None
        inputs = [name for name in node.input if name]
        if outputs.intersection(node.output) or any(a.g.node or a.graphs for a in node.attribute):
            results = None
        elif node.op_type == "Shape" and node.input[0] in shapes:
            results = [_shape_value(node, shapes[node.input[0]])]
        elif inputs and node.op_type not in _NOT_FOLDABLE and all(name in known for name in inputs):
            values = [known[name] if name else None for name in node.input]
            results = _evaluate(node, values, exported.opset)
            largest = max(known[name].size for name in inputs)
            if results is not None and any(r.size > largest + _MAX_GROWTH for r in results):
                results = None
        if results is None or len(results) != len(node.output):
            nodes.append(node)
            continue
        for name, value in zip(node.output, results):
            if name:
                known[name] = value
    read = {name for node in nodes for name in node.input} | outputs
    initializers = {name: value for name, value in known.items() if name in read}
    return replace(exported, nodes=nodes, initializers=initializers)
