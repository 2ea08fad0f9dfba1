"""Build the IR from a prototxt and an optional caffemodel: ``load_net``.

Steps, each a Caffe rule:

1. read the prototxt and bring it to V2 form (``upgrade``);
2. keep the layers of the TEST phase (``include``/``exclude`` rules, NetState);
3. turn ``Input`` layers and legacy ``input`` declarations into net inputs; replace a
   data layer by an input when its shape is known (``--input-shape``, MemoryData,
   DummyData); drop loss, accuracy and Silence layers (noted);
4. map Python layers to handlers (``--python-layer module.Class=Type``);
5. list *all* layer types without a handler at once;
6. parse each layer's parameters (the handler's own dataclass);
7. rename blobs SSA-style (in-place layers, re-written blobs);
8. infer every tensor's shape; 9. attach weights; 10. pick the outputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from caffe2onnx.caffemodel import CaffeModel, read_caffemodel
from caffe2onnx.errors import Caffe2OnnxError, LayerError, NetDefinitionError, UnsupportedLayersError
from caffe2onnx.ir import Layer, Net, Shape
from caffe2onnx.layers.registry import Registry, default_registry
from caffe2onnx.proto import caffe_pb2
from caffe2onnx.prototxt import read_prototxt
from caffe2onnx.shapes import check_shape, infer_shapes
from caffe2onnx.upgrade import NetSpec, upgrade
from caffe2onnx.weights import attach_weights

DATA_LAYER_TYPES = frozenset(
    {
        "Data",
        "ImageData",
        "HDF5Data",
        "MemoryData",
        "WindowData",
        "DummyData",
        "DenseImageData",
        "ImageSegData",
        "ImageLabelmapData",
        "AnnotatedData",
        "VideoData",
    }
)
DROPPED_TYPES = frozenset(
    {
        "Accuracy",
        "SegAccuracy",
        "EltwiseAccuracy",
        "Silence",
        "MatWrite",
        "HDF5Output",
        "DetectionEvaluate",
        "UniqueLabel",
    }
)


def is_dropped_type(layer_type: str) -> bool:
    return layer_type in DROPPED_TYPES or layer_type.endswith("Loss")


@dataclass
class LoadOptions:
    """Knobs of ``load_net``; the CLI flags map onto these."""

    input_shapes: Mapping[str, Shape] = field(default_factory=dict)
    random_weights: int | None = None
    python_layers: Mapping[str, str] = field(default_factory=dict)
    outputs: Sequence[str] | None = None
    registry: Registry | None = None
    require_weights: bool = True


def load_net(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | CaffeModel | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    random_weights: int | None = None,
    python_layers: Mapping[str, str] | None = None,
    outputs: Sequence[str] | None = None,
    registry: Registry | None = None,
    require_weights: bool = True,
) -> Net:
    """Parse a Caffe net (prototxt + optional caffemodel) into the IR.

    ``input_shapes`` gives or overrides input shapes (``{"data": (1, 3, 224, 224)}``);
    ``random_weights`` is a seed for layers that have no weights; ``python_layers`` maps
    ``"module.Class"`` of Python layers to a handler type; ``outputs`` selects the
    graph outputs (Caffe blob names). ``require_weights=False`` builds the structure
    only (for ``inspect``).
    """
    source = os.fspath(prototxt)
    net_param = read_prototxt(source)
    model = caffemodel
    if caffemodel is not None and not isinstance(caffemodel, CaffeModel):
        model = read_caffemodel(caffemodel)
    options = LoadOptions(
        input_shapes={k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()},
        random_weights=random_weights,
        python_layers=dict(python_layers or {}),
        outputs=outputs,
        registry=registry,
        require_weights=require_weights,
    )
    return build_net(net_param, source, model, options)


def build_net(
    net_param: caffe_pb2.NetParameter,
    source: str,
    model: CaffeModel | None,
    options: LoadOptions,
) -> Net:
    registry = options.registry or default_registry()
    spec = upgrade(net_param, source)
    notes = list(spec.notes)
    layers = _filter_phase(spec, notes)
    inputs, layers = _resolve_inputs(spec, layers, options, notes, source)
    layers = _map_python_layers(layers, options.python_layers)
    _check_supported(layers, registry, options.python_layers)
    parsed = [_parse_layer(lp, registry) for lp in layers]
    parsed = _unique_layer_names(parsed, notes)
    ssa_layers, blob_of = _ssa(parsed, [name for name, _ in inputs], source)
    ssa_layers = _resolve(ssa_layers, registry)
    input_shapes = dict(inputs)
    shapes = infer_shapes(ssa_layers, input_shapes, registry)
    if options.require_weights:
        ssa_layers, weight_notes = attach_weights(ssa_layers, shapes, registry, model, options.random_weights)
        notes.extend(weight_notes)
    outputs = _select_outputs(ssa_layers, tuple(input_shapes), options.outputs, blob_of, source)
    net = Net(
        name=spec.name or os.path.splitext(os.path.basename(source))[0],
        inputs=tuple(inputs),
        layers=tuple(ssa_layers),
        shapes=shapes,
        outputs=outputs,
        notes=tuple(notes),
        source=source,
        blob_of=blob_of,
    )
    if options.outputs:
        from caffe2onnx.passes import prune_to_outputs

        net = prune_to_outputs(net)
    return net


# ----------------------------------------------------------------------------- phase


def _rule_met(rule: caffe_pb2.NetStateRule, state: caffe_pb2.NetState) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def _filter_phase(spec: NetSpec, notes: list[str]) -> list[caffe_pb2.LayerParameter]:
    state = caffe_pb2.NetState()
    state.CopyFrom(spec.state)
    state.phase = caffe_pb2.TEST
    kept = []
    skipped = []
    for lp in spec.layers:
        if lp.include:
            keep = any(_rule_met(rule, state) for rule in lp.include)
        else:
            keep = not any(_rule_met(rule, state) for rule in lp.exclude)
        (kept if keep else skipped).append(lp)
    if skipped:
        notes.append(
            f"skipped {len(skipped)} layer(s) not in the TEST phase: "
            + ", ".join(lp.name for lp in skipped[:8])
            + (" ..." if len(skipped) > 8 else "")
        )
    return kept


# ----------------------------------------------------------------------------- inputs


def _input_layer_shapes(lp: caffe_pb2.LayerParameter) -> list[Shape]:
    shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
    if len(shapes) == 1 and len(lp.top) > 1:
        shapes = shapes * len(lp.top)
    if shapes and len(shapes) != len(lp.top):
        raise LayerError(
            lp.name,
            lp.type,
            f"{len(lp.top)} tops but {len(shapes)} shapes; give one shape per top or one for all",
        )
    return shapes


def _data_layer_shape(lp: caffe_pb2.LayerParameter) -> Shape | None:
    """The shape of a data layer's first top, when the layer itself says it."""
    if lp.type == "MemoryData":
        p = lp.memory_data_param
        if p.batch_size and p.channels and p.height and p.width:
            return (p.batch_size, p.channels, p.height, p.width)
    if lp.type == "DummyData":
        p = lp.dummy_data_param
        if p.shape:
            return tuple(int(d) for d in p.shape[0].dim)
        if p.num and p.channels and p.height and p.width:
            return (p.num[0], p.channels[0], p.height[0], p.width[0])
    return None


def _resolve_inputs(
    spec: NetSpec,
    layers: list[caffe_pb2.LayerParameter],
    options: LoadOptions,
    notes: list[str],
    source: str,
) -> tuple[list[tuple[str, Shape]], list[caffe_pb2.LayerParameter]]:
    declared: list[tuple[str, Shape | None]] = list(spec.inputs)
    remaining: list[caffe_pb2.LayerParameter] = []
    dropped_blobs: dict[str, str] = {}
    for lp in layers:
        if lp.type == "Input":
            shapes = _input_layer_shapes(lp)
            for i, top in enumerate(lp.top):
                declared.append((top, shapes[i] if shapes else None))
            continue
        is_python_data = (
            lp.type == "Python" and not lp.bottom and (_python_key(lp) not in options.python_layers)
        )
        if lp.type in DATA_LAYER_TYPES or is_python_data:
            if not lp.top:
                continue
            shape = options.input_shapes.get(lp.top[0]) or _data_layer_shape(lp)
            declared.append((lp.top[0], shape))
            why = "" if shape else " (its shape is unknown)"
            for top in lp.top[1:]:
                dropped_blobs[top] = lp.name
            notes.append(
                f"replaced data layer '{lp.name}' ({_type_label(lp)}) by net input '{lp.top[0]}'{why}"
                + (f"; dropped its top(s) {', '.join(lp.top[1:])}" if len(lp.top) > 1 else "")
            )
            continue
        if is_dropped_type(lp.type):
            notes.append(f"dropped {lp.type} layer '{lp.name}' (not needed for inference)")
            for top in lp.top:
                dropped_blobs[top] = lp.name
            continue
        remaining.append(lp)

    inputs: list[tuple[str, Shape]] = []
    seen: set[str] = set()
    missing: list[str] = []
    for name, shape in declared:
        if name in seen:
            raise NetDefinitionError(f"{source}: input '{name}' is declared twice")
        seen.add(name)
        shape = options.input_shapes.get(name, shape)
        if shape is None:
            missing.append(name)
            continue
        check_shape(tuple(shape), f"input '{name}'")
        inputs.append((name, tuple(shape)))
    unknown = sorted(set(options.input_shapes) - seen)
    if unknown:
        raise NetDefinitionError(
            f"{source}: --input-shape names {', '.join(unknown)}, which is not an input or data "
            f"layer top of this net; its inputs are: {', '.join(sorted(seen)) or 'none'}"
        )
    if missing:
        examples = " ".join(f"--input-shape {n}=1,3,224,224" for n in missing)
        raise NetDefinitionError(
            f"{source}: the shape of input(s) {', '.join(missing)} is not given in the prototxt; "
            f"pass it, e.g. {examples}"
        )
    # A kept layer that reads a blob only a dropped layer produced cannot run.
    produced = set(seen)
    for lp in remaining:
        for bottom in lp.bottom:
            if bottom not in produced and bottom in dropped_blobs:
                raise NetDefinitionError(
                    f"{source}: layer '{lp.name}' ({lp.type}) reads '{bottom}', which only the "
                    f"dropped layer '{dropped_blobs[bottom]}' produces; cut the net before it "
                    "with --outputs, or give a deploy prototxt"
                )
        produced.update(lp.top)
    return inputs, remaining


def _type_label(lp: caffe_pb2.LayerParameter) -> str:
    if lp.type == "Python":
        return f"Python {_python_key(lp)}"
    return lp.type


# ----------------------------------------------------------------------------- python layers


def _python_key(lp: caffe_pb2.LayerParameter) -> str:
    return f"{lp.python_param.module}.{lp.python_param.layer}"


def _map_python_layers(
    layers: list[caffe_pb2.LayerParameter], mapping: Mapping[str, str]
) -> list[caffe_pb2.LayerParameter]:
    result = []
    for lp in layers:
        if lp.type == "Python" and _python_key(lp) in mapping:
            mapped = caffe_pb2.LayerParameter()
            mapped.CopyFrom(lp)
            mapped.type = mapping[_python_key(lp)]
            result.append(mapped)
        else:
            result.append(lp)
    return result


def _check_supported(
    layers: list[caffe_pb2.LayerParameter], registry: Registry, python_map: Mapping[str, str]
) -> None:
    missing: dict[str, list[str]] = {}
    for lp in layers:
        if lp.type in registry:
            continue
        label = f"Python ({_python_key(lp)})" if lp.type == "Python" else (lp.type or "<no type>")
        missing.setdefault(label, []).append(lp.name)
    if missing:
        hint = ""
        if any(label.startswith("Python") for label in missing):
            hint = (
                "Map a Python layer to a built-in handler with --python-layer module.Class=Type "
                "(e.g. --python-layer spatial_dropout.SpatialDropoutLayer=Dropout), "
                "or load a plugin with --plugin."
            )
        raise UnsupportedLayersError(missing, hint)


# ----------------------------------------------------------------------------- layers


def _parse_layer(lp: caffe_pb2.LayerParameter, registry: Registry) -> Layer:
    handler = registry.get(lp.type)
    assert handler is not None
    name = lp.name or f"<unnamed {lp.type}>"
    for what, count, (low, high) in (
        ("bottom", len(lp.bottom), handler.bottoms),
        ("top", len(lp.top), handler.tops),
    ):
        if count < low or (high is not None and count > high):
            expected = str(low) if low == high else f"{low} to {high if high is not None else 'any'}"
            raise LayerError(name, lp.type, f"has {count} {what}(s); this layer type takes {expected}")
    try:
        params = handler.parse(lp)
    except Caffe2OnnxError:
        raise
    except (ValueError, IndexError) as exc:
        raise LayerError(name, lp.type, f"invalid parameters: {exc}") from None
    return Layer(
        name=name,
        type=lp.type,
        bottoms=tuple(lp.bottom),
        tops=tuple(lp.top),
        params=params,
        caffe_bottoms=tuple(lp.bottom),
        caffe_tops=tuple(lp.top),
        param_names=tuple(p.name for p in lp.param),
    )


def _unique_layer_names(layers: list[Layer], notes: list[str]) -> list[Layer]:
    seen: dict[str, int] = {}
    result = []
    for layer in layers:
        count = seen.get(layer.name, 0)
        seen[layer.name] = count + 1
        if count:
            new_name = f"{layer.name}_{count}"
            while new_name in seen:
                new_name += "_"
            seen[new_name] = 1
            notes.append(f"layer name '{layer.name}' is used twice; the second is called '{new_name}'")
            layer = layer.with_(name=new_name, caffe_name=layer.name)
        result.append(layer)
    return result


def _ssa(layers: list[Layer], input_names: list[str], source: str) -> tuple[list[Layer], dict[str, str]]:
    """Give every write of a blob its own tensor name; bind reads to the newest write."""
    versions: dict[str, list[tuple[int, int]]] = {}  # blob -> [(layer index, top index)]
    current: dict[str, tuple[int, int] | None] = {name: None for name in input_names}
    read_bindings: list[list[tuple[str, tuple[int, int] | None]]] = []
    for li, layer in enumerate(layers):
        binding = []
        for bottom in layer.bottoms:
            if bottom not in current:
                raise NetDefinitionError(
                    f"{source}: layer '{layer.name}' ({layer.type}) reads blob '{bottom}', which no "
                    "earlier layer produces and which is not a net input (layers run in file order)"
                )
            binding.append((bottom, current[bottom]))
        read_bindings.append(binding)
        if len(set(layer.tops)) != len(layer.tops):
            raise NetDefinitionError(f"{source}: layer '{layer.name}' lists the same top twice")
        for ti, top in enumerate(layer.tops):
            versions.setdefault(top, []).append((li, ti))
            current[top] = (li, ti)

    taken = set(input_names) | set(versions)
    names: dict[tuple[int, int], str] = {}
    blob_of: dict[str, str] = {name: name for name in input_names}
    for blob, writes in versions.items():
        for position, (li, ti) in enumerate(writes):
            last = position == len(writes) - 1 and blob not in input_names
            if last:
                name = blob
            else:
                name = f"{blob}@{layers[li].name}"
                while name in taken:
                    name += "'"
                taken.add(name)
            names[(li, ti)] = name
            blob_of[name] = blob

    result = []
    for li, layer in enumerate(layers):
        bottoms = tuple(blob if version is None else names[version] for blob, version in read_bindings[li])
        tops = tuple(names[(li, ti)] for ti in range(len(layer.tops)))
        result.append(layer.with_(bottoms=bottoms, tops=tops))
    return result, blob_of


def _resolve(layers: list[Layer], registry: Registry) -> list[Layer]:
    """Let each handler complete its parameters from the layers before it (Handler.resolve)."""
    producers: dict[str, Layer] = {}
    result = []
    for layer in layers:
        layer = registry.get(layer.type).resolve(layer, producers)
        for top in layer.tops:
            producers[top] = layer
        result.append(layer)
    return result


def _select_outputs(
    layers: Sequence[Layer],
    inputs: tuple[str, ...],
    requested: Sequence[str] | None,
    blob_of: Mapping[str, str],
    source: str,
) -> tuple[str, ...]:
    if requested:
        known = {top for layer in layers for top in layer.tops} | set(inputs)
        unknown = [name for name in requested if name not in known]
        if unknown:
            raise NetDefinitionError(
                f"{source}: --outputs names unknown blob(s) {', '.join(unknown)}; blobs of this "
                f"net include: {', '.join(list(known)[:10])} ..."
            )
        return tuple(requested)
    consumed = {bottom for layer in layers for bottom in layer.bottoms}
    outputs = [top for layer in layers for top in layer.tops if top not in consumed]
    if not outputs:
        raise NetDefinitionError(f"{source}: the net has no outputs (every blob is consumed)")
    return tuple(outputs)
