"""Build the IR from a prototxt and an optional caffemodel: ``load_net`` and ``analyze_net``.

Steps, each a Caffe rule:

1. read the prototxt and bring it to V2 form (``upgrade``);
2. keep the layers of the TEST phase (``include``/``exclude`` rules, NetState);
3. turn ``Input`` layers and legacy ``input`` declarations into net inputs; replace a
   data layer by an input when its shape is known (``--input-shape``, MemoryData,
   DummyData); drop loss, accuracy and Silence layers (noted);
4. map Python layers to handlers (``--python-layer module.Class=Type`` and the
   ``PYTHON_LAYERS`` of plugins, see :mod:`caffe2onnx.plugins`);
5. list *all* layer types without a handler at once;
6. parse each layer's parameters (the handler's own dataclass);
7. rename blobs SSA-style (in-place layers, re-written blobs). Layers run in file order,
   so a bottom that only a later layer produces is an error that says so, and a loop
   (a layer that reads its own output, or a later layer computed from this one) is
   named as such;
8. per layer, in order: complete its parameters (``Handler.resolve``), infer its output
   shapes and check the sizes of its tops and parameter blobs against the limits of
   :mod:`caffe2onnx.shapes`, *before* anything is allocated;
9. attach weights (a layer name used by several layers with weights, whose blobs are in
   the caffemodel, is refused: which layer the blobs belong to is ambiguous);
10. pick the outputs.

``load_net`` raises the first problem. ``analyze_net`` (what ``caffe2onnx inspect``
runs) collects every problem and goes on: a layer with a problem gets unknown output
shapes, the layers that depend on it are skipped with a note, and with a caffemodel
every blob problem is listed. Errors about a layer name the prototxt and the line of
the layer: ``net.prototxt:12: layer 'conv1' (Convolution): ...``.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from caffe2onnx.caffemodel import CaffeModel, read_caffemodel
from caffe2onnx.errors import (
    Caffe2OnnxError,
    LayerError,
    NetDefinitionError,
    RandomFillerError,
    ShapeError,
    UnsupportedLayersError,
)
from caffe2onnx.ir import BlobSpec, Layer, Net, Shape
from caffe2onnx.layers.base import Handler
from caffe2onnx.layers.registry import Registry, default_registry
from caffe2onnx.proto import caffe_pb2
from caffe2onnx.prototxt import layer_lines, read_prototxt_text
from caffe2onnx.shapes import MAX_TOTAL_ELEMENTS, check_blob_specs, check_shape, infer_layer
from caffe2onnx.upgrade import NetSpec, upgrade

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
    layer_types: Mapping[str, str] = field(default_factory=dict)
    stages: Sequence[str] = ()
    outputs: Sequence[str] | None = None
    registry: Registry | None = None
    require_weights: bool = True


@dataclass
class Analysis:
    """What :func:`analyze_net` found: the net as far as it could be built, every problem.

    ``layers`` holds every kept layer (SSA names; ``params`` is None for a layer whose
    type or parameters are bad), ``shapes`` the tensors whose shape is known, ``status``
    maps a layer name to ``""`` (fine), ``"problem"`` or ``"skipped"``, ``specs`` the
    parameter blobs a layer expects and ``weights`` (with a caffemodel) ``"ok"``,
    ``"filler"``, ``"missing"`` or ``"MISMATCH"``. ``net`` is the complete net when no
    problem was found, else None.
    """

    source: str
    problems: list[Caffe2OnnxError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    name: str = ""
    inputs: list[tuple[str, Shape | None]] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    shapes: dict[str, Shape] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    status: dict[str, str] = field(default_factory=dict)
    specs: dict[str, list[BlobSpec]] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    net: Net | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


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
    layer_types: Mapping[str, str] | None = None,
    stages: Sequence[str] = (),
) -> Net:
    """Parse a Caffe net (prototxt + optional caffemodel) into the IR.

    ``input_shapes`` gives or overrides input shapes (``{"data": (1, 3, 224, 224)}``);
    ``random_weights`` is a seed for layers that have no weights; ``python_layers`` maps
    ``"module.Class"`` of Python layers to a handler type; ``outputs`` selects the
    graph outputs (Caffe blob names); ``layer_types`` re-types layers by name
    (``{"layer12-maxpool": "DarknetPooling"}``); ``stages`` are NetState stages for the
    layers' include/exclude rules (phase is always TEST). ``require_weights=False`` builds the structure
    only (for ``inspect``). ``registry`` holds the handlers (default: the built-in ones
    plus the plugins loaded with :func:`caffe2onnx.plugins.load_plugins`). Raises the
    first problem found as a :class:`Caffe2OnnxError`.
    """
    source = os.fspath(prototxt)
    net_param, text = read_prototxt_text(source)
    model = caffemodel
    if caffemodel is not None and not isinstance(caffemodel, CaffeModel):
        model = read_caffemodel(caffemodel)
    options = _options(
        input_shapes, random_weights, python_layers, outputs, registry, require_weights, layer_types, stages
    )
    return build_net(net_param, source, model, options, lines=layer_lines(text))


def analyze_net(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | CaffeModel | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    python_layers: Mapping[str, str] | None = None,
    outputs: Sequence[str] | None = None,
    registry: Registry | None = None,
    layer_types: Mapping[str, str] | None = None,
    stages: Sequence[str] = (),
    **_ignored: object,
) -> Analysis:
    """Build as much of the net as possible and collect *every* problem (never raises a
    :class:`Caffe2OnnxError`): unsupported layers, bad parameters, undefined bottoms, all
    shape errors, and with a caffemodel all blob problems."""
    source = os.fspath(prototxt)
    problems: list[Caffe2OnnxError] = []
    try:
        net_param, text = read_prototxt_text(source)
    except Caffe2OnnxError as exc:
        return Analysis(source=source, problems=[exc])
    model = caffemodel
    if caffemodel is not None and not isinstance(caffemodel, CaffeModel):
        try:
            model = read_caffemodel(caffemodel)
        except Caffe2OnnxError as exc:
            problems.append(exc)
            model = None
    options = _options(input_shapes, None, python_layers, outputs, registry, False, layer_types, stages)
    analysis = analyze_net_param(net_param, source, model, options, lines=layer_lines(text))
    analysis.problems[:0] = problems
    return analysis


def analyze_net_param(
    net_param: caffe_pb2.NetParameter,
    source: str,
    model: CaffeModel | None,
    options: LoadOptions,
    lines: list[int] | None = None,
) -> Analysis:
    """:func:`analyze_net` of a parsed ``NetParameter``."""
    try:
        spec = upgrade(net_param, source, lines)
    except Caffe2OnnxError as exc:
        return Analysis(source=source, problems=[exc])
    builder = _Builder(source, options, strict=False)
    builder.build(spec, model)
    return builder.analysis


def build_net(
    net_param: caffe_pb2.NetParameter,
    source: str,
    model: CaffeModel | None,
    options: LoadOptions,
    lines: list[int] | None = None,
) -> Net:
    """The net of a parsed ``NetParameter``; raises the first problem."""
    spec = upgrade(net_param, source, lines)
    net = _Builder(source, options, strict=True).build(spec, model)
    assert net is not None
    return net


def _options(
    input_shapes,
    random_weights,
    python_layers,
    outputs,
    registry,
    require_weights,
    layer_types=None,
    stages=(),
) -> LoadOptions:
    return LoadOptions(
        input_shapes={k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()},
        random_weights=random_weights,
        python_layers=dict(python_layers or {}),
        layer_types=dict(layer_types or {}),
        stages=tuple(stages),
        outputs=outputs,
        registry=registry,
        require_weights=require_weights,
    )


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


def _data_layer_shape(lp: caffe_pb2.LayerParameter) -> tuple[Shape | None, str]:
    """The shape of a data layer's first top when the layer itself says it, and how it was
    found (for the note). Image sizes come from the crop or resize parameters; the batch
    is 1 (inference), and the channels are 1 for grey images, else as many as there are
    mean values, else 3."""
    if lp.type == "MemoryData":
        p = lp.memory_data_param
        if p.batch_size and p.channels and p.height and p.width:
            return (p.batch_size, p.channels, p.height, p.width), "from memory_data_param"
    if lp.type == "DummyData":
        p = lp.dummy_data_param
        if p.shape:
            return tuple(int(d) for d in p.shape[0].dim), "from dummy_data_param"
        if p.num and p.channels and p.height and p.width:
            return (p.num[0], p.channels[0], p.height[0], p.width[0]), "from dummy_data_param"
    t = lp.transform_param
    size: tuple[int, int] | None = None
    if t.crop_h and t.crop_w:
        size, source = (t.crop_h, t.crop_w), "transform_param crop_h/crop_w"
    elif t.crop_size:
        size, source = (t.crop_size, t.crop_size), "transform_param.crop_size"
    elif lp.type == "DenseImageData":
        p = lp.dense_image_data_param
        if p.crop_height and p.crop_width:
            size, source = (p.crop_height, p.crop_width), "crop_height/crop_width"
        elif p.new_height and p.new_width:
            size, source = (p.new_height, p.new_width), "new_height/new_width"
    elif lp.type in ("ImageData", "ImageSegData", "ImageLabelmapData"):
        p = lp.image_data_param
        if p.crop_size:
            size, source = (p.crop_size, p.crop_size), "image_data_param.crop_size"
        elif p.new_height and p.new_width:
            size, source = (p.new_height, p.new_width), "new_height/new_width"
    if size is None:
        return None, ""
    grey = (lp.type == "DenseImageData" and not lp.dense_image_data_param.is_color) or (
        lp.type.startswith("Image") and not lp.image_data_param.is_color
    )
    channels = 1 if grey else (len(t.mean_value) if len(t.mean_value) > 1 else 3)
    return (1, channels, *size), f"{source}, batch 1, {channels} channel(s) assumed"


def _with_darknet_pooling_hint(exc: ShapeError, layers: Sequence[Layer]) -> ShapeError:
    """YOLO ports whose sizes stop matching at a route (Concat) often have a darknet
    ``maxpool stride=1`` that stock Caffe shrinks by one: say how to keep darknet's rule."""
    suspects = [
        layer.name
        for layer in layers
        if layer.type == "Pooling"
        and getattr(layer.params, "method", None) == 0
        and getattr(layer.params, "kernel", None) is not None
        and layer.params.stride == (1, 1)
        and layer.params.kernel[0] % 2 == 0
        and not any(layer.params.pad)
    ]
    if not suspects:
        return exc
    exc.detail += (
        f"\n  hint: {', '.join(suspects)} is a stride-1 MAX pooling with an even kernel, which darknet "
        "pads to keep the size but stock Caffe shrinks by one; if this net was converted from darknet, "
        f"add --layer-type {suspects[0]}=DarknetPooling"
    )
    exc.args = (exc._text(), *exc.args[1:])
    return exc


def _python_key(lp: caffe_pb2.LayerParameter) -> str:
    return f"{lp.python_param.module}.{lp.python_param.layer}"


def _type_label(lp: caffe_pb2.LayerParameter) -> str:
    if lp.type == "Python":
        return f"Python {_python_key(lp)}"
    return lp.type


# ----------------------------------------------------------------------------- the builder


@dataclass
class _Entry:
    """A layer on its way through the steps; ``ok`` is False once it has a problem."""

    layer: Layer
    line: int | None
    ok: bool = True
    needed: bool = True  # False: no requested output depends on it (``outputs``)


class _Builder:
    """Runs the steps; ``strict`` raises the first problem, else problems are collected."""

    def __init__(self, source: str, options: LoadOptions, strict: bool) -> None:
        self.source = source
        self.options = options
        self.strict = strict
        self.registry = options.registry or default_registry()
        self.python_map = {**self.registry.python_layer_map(), **options.python_layers}
        self.phase_skipped: dict[str, caffe_pb2.LayerParameter] = {}  # top -> layer left out by phase rules
        self.analysis = Analysis(source=source)
        self.lines: dict[str, int] = {}
        self.all_tops: set[str] = set()  # every tensor name, also of left-out layers

    # -- reporting

    def where(self, line: int | None = None) -> str:
        return f"{self.source}:{line}" if line else self.source

    def report(self, exc: Caffe2OnnxError, line: int | None = None) -> None:
        if isinstance(exc, LayerError):
            exc.locate(self.source, line or self.lines.get(exc.layer_name))
        if self.strict:
            raise exc
        self.analysis.problems.append(exc)

    def note(self, text: str) -> None:
        self.analysis.notes.append(text)

    # -- the steps

    def build(self, spec: NetSpec, model: CaffeModel | None) -> Net | None:
        a = self.analysis
        a.name = spec.name or os.path.splitext(os.path.basename(self.source))[0]
        a.notes.extend(spec.notes)
        kept = self._filter_phase(spec)
        needed_ids, needed_blobs = self._needed(kept)
        inputs, kept, dropped = self._resolve_inputs(spec, kept, needed_blobs)
        a.inputs = inputs
        unknown_names = set(self.options.layer_types) - {lp.name for lp in spec.layers}
        if unknown_names:
            self.report(
                NetDefinitionError(
                    f"{self.source}: --layer-type names no layer of this net: {', '.join(sorted(unknown_names))}"
                )
            )
        flagged = [
            (self._map_python_layer(lp), line, needed_ids is None or id(lp) in needed_ids)
            for lp, line in kept
        ]
        unsupported = self._check_supported([(lp, line) for lp, line, needed in flagged if needed])
        entries = [
            self._parse_layer(lp, line, id(lp) not in unsupported)
            if needed
            else _Entry(_opaque_layer(lp), line, ok=False, needed=False)
            for lp, line, needed in flagged
        ]
        self._unique_layer_names(entries)
        self.lines = {e.layer.name: e.line for e in entries if e.line}
        a.lines = self.lines
        blob_of = self._ssa(entries, [name for name, _ in inputs], dropped)
        self.all_tops = {top for e in entries for top in e.layer.tops}
        if needed_ids is not None:
            left_out = [e.layer.name for e in entries if not e.needed]
            entries = [e for e in entries if e.needed]
            if left_out:
                shown = ", ".join(left_out[:8]) + (" ..." if len(left_out) > 8 else "")
                self.note(
                    f"left out {len(left_out)} layer(s) the requested outputs do not depend on: {shown}"
                )
        input_shapes = {name: shape for name, shape in inputs if shape is not None}
        self._infer(entries, input_shapes)
        a.layers = [e.layer for e in entries]
        self._check_shared_names(entries, model)
        layers = a.layers
        if model is not None:
            self._note_unused_blobs(layers, model)
        if self.strict and self.options.require_weights:
            from caffe2onnx.weights import attach_weights

            try:
                layers, weight_notes = attach_weights(
                    layers, a.shapes, self.registry, model, self.options.random_weights
                )
            except LayerError as exc:
                raise exc.locate(self.source, self.lines.get(exc.layer_name)) from None
            a.notes.extend(weight_notes)
        elif not self.strict and model is not None:
            self._check_weights(entries, model)
        a.outputs = self._select_outputs(layers, tuple(input_shapes), blob_of)
        if a.problems:
            return None
        net = Net(
            name=a.name,
            inputs=tuple((name, shape) for name, shape in inputs if shape is not None),
            layers=tuple(layers),
            shapes=a.shapes,
            outputs=a.outputs,
            notes=tuple(a.notes),
            source=self.source,
            blob_of=blob_of,
        )
        if self.options.outputs:
            from caffe2onnx.passes import prune_to_outputs

            net = prune_to_outputs(net)
        a.net = net
        return net

    def _filter_phase(self, spec: NetSpec) -> list[tuple[caffe_pb2.LayerParameter, int | None]]:
        state = caffe_pb2.NetState()
        state.CopyFrom(spec.state)
        state.phase = caffe_pb2.TEST
        state.stage.extend(s for s in self.options.stages if s not in state.stage)
        kept = []
        skipped = []
        lines = spec.lines or [None] * len(spec.layers)
        for lp, line in zip(spec.layers, lines):
            if lp.include:
                keep = any(_rule_met(rule, state) for rule in lp.include)
            else:
                keep = not any(_rule_met(rule, state) for rule in lp.exclude)
            if keep:
                kept.append((lp, line))
            else:
                skipped.append(lp)
        self.phase_skipped = {top: lp for lp in skipped for top in lp.top}
        if skipped:
            self.note(
                f"skipped {len(skipped)} layer(s) not in the TEST phase: "
                + ", ".join(lp.name for lp in skipped[:8])
                + (" ..." if len(skipped) > 8 else "")
            )
        return kept

    def _needed(
        self, layers: list[tuple[caffe_pb2.LayerParameter, int | None]]
    ) -> tuple[set[int] | None, set[str] | None]:
        """With ``outputs``: the layers the requested outputs depend on (ids) and the blobs
        they need from the net's inputs; else (None, None). A blob is read from the last
        layer that wrote it before the reader (file order); ``blob@layer`` names the version
        ``layer`` wrote."""
        if not self.options.outputs:
            return None, None
        blobs = {name for name in self.options.outputs if "@" not in name}
        at_writer: dict[str, set[str]] = {}
        for name in self.options.outputs:
            if "@" in name:
                blob, _, writer = name.partition("@")
                at_writer.setdefault(writer.rstrip("'"), set()).add(blob)
        ids: set[int] = set()
        for lp, _ in reversed(layers):
            blobs |= at_writer.get(lp.name, set())
            if blobs.intersection(lp.top):
                ids.add(id(lp))
                blobs.difference_update(lp.top)
                blobs.update(lp.bottom)
        return ids, blobs

    def _resolve_inputs(
        self,
        spec: NetSpec,
        layers: list[tuple[caffe_pb2.LayerParameter, int | None]],
        needed_blobs: set[str] | None = None,
    ):
        """(inputs with their shape or None, the remaining layers, dropped blob -> layer)."""
        declared: list[tuple[str, Shape | None, int | None]] = [(n, s, None) for n, s in spec.inputs]
        remaining = []
        dropped: dict[str, str] = {}
        bad_declarations: set[str] = set()
        for lp, line in layers:
            if lp.type == "Input":
                try:
                    shapes = _input_layer_shapes(lp)
                except LayerError as exc:
                    self.report(exc, line)
                    shapes = []
                    bad_declarations.update(lp.top)
                for i, top in enumerate(lp.top):
                    declared.append((top, shapes[i] if shapes else None, line))
                continue
            is_python_data = lp.type == "Python" and not lp.bottom and _python_key(lp) not in self.python_map
            if lp.type in DATA_LAYER_TYPES or is_python_data:
                if not lp.top:
                    continue
                shape = self.options.input_shapes.get(lp.top[0])
                how = "--input-shape"
                if shape is None:
                    shape, how = _data_layer_shape(lp)
                declared.append((lp.top[0], shape, line))
                # Later tops are labels, unless --input-shape names them (e.g. a second image).
                extra = [top for top in lp.top[1:] if top in self.options.input_shapes]
                for top in extra:
                    declared.append((top, self.options.input_shapes[top], line))
                labels = [top for top in lp.top[1:] if top not in self.options.input_shapes]
                for top in labels:
                    dropped[top] = lp.name
                why = f" (shape {list(shape)} {how})" if shape else " (its shape is unknown)"
                self.note(
                    f"replaced data layer '{lp.name}' ({_type_label(lp)}) by net input(s) "
                    f"{', '.join([lp.top[0], *extra])}{why}"
                    + (f"; dropped its top(s) {', '.join(labels)}" if labels else "")
                )
                continue
            if is_dropped_type(lp.type):
                self.note(f"dropped {lp.type} layer '{lp.name}' (not needed for inference)")
                for top in lp.top:
                    dropped[top] = lp.name
                continue
            remaining.append((lp, line))

        inputs: list[tuple[str, Shape | None]] = []
        seen: set[str] = set()
        missing: list[str] = []
        for name, shape, line in declared:
            if name in seen:
                self.report(NetDefinitionError(f"{self.where(line)}: input '{name}' is declared twice"))
                continue
            seen.add(name)
            shape = self.options.input_shapes.get(name, shape)
            if shape is None:
                if name not in bad_declarations and (needed_blobs is None or name in needed_blobs):
                    missing.append(name)
                inputs.append((name, None))
                continue
            try:
                check_shape(tuple(shape), f"input '{name}'")
            except NetDefinitionError as exc:
                self.report(NetDefinitionError(f"{self.where(line)}: {exc}"))
                inputs.append((name, None))
                continue
            inputs.append((name, tuple(shape)))
        unknown = sorted(set(self.options.input_shapes) - seen)
        if unknown:
            self.report(
                NetDefinitionError(
                    f"{self.source}: --input-shape names {', '.join(unknown)}, which is not an input or "
                    f"data layer top of this net; its inputs are: {', '.join(sorted(seen)) or 'none'}"
                )
            )
        if missing:
            examples = " ".join(f"--input-shape {n}=1,3,224,224" for n in missing)
            self.report(
                NetDefinitionError(
                    f"{self.source}: the shape of input(s) {', '.join(missing)} is not given in the "
                    f"prototxt; pass it, e.g. {examples}"
                )
            )
        return inputs, remaining, dropped

    def _map_python_layer(self, lp: caffe_pb2.LayerParameter) -> caffe_pb2.LayerParameter:
        """Apply ``layer_types`` (by layer name) and the Python layer mapping (by class)."""
        if lp.name in self.options.layer_types:
            new_type = self.options.layer_types[lp.name]
        elif lp.type == "Python" and _python_key(lp) in self.python_map:
            new_type = self.python_map[_python_key(lp)]
        else:
            return lp
        mapped = caffe_pb2.LayerParameter()
        mapped.CopyFrom(lp)
        mapped.type = new_type
        return mapped

    def _check_supported(self, layers: list[tuple[caffe_pb2.LayerParameter, int | None]]) -> set[int]:
        """Report every layer type without a handler at once; return those layers' ids."""
        missing: dict[str, list[str]] = {}
        ids: set[int] = set()
        for lp, _ in layers:
            if lp.type in self.registry:
                continue
            label = f"Python ({_python_key(lp)})" if lp.type == "Python" else (lp.type or "<no type>")
            missing.setdefault(label, []).append(lp.name or "<unnamed>")
            ids.add(id(lp))
        if missing:
            hints = []
            if any(label.startswith("Python") for label in missing):
                hints.append(
                    "Map a Python layer to a built-in or plugin handler with --python-layer "
                    "module.Class=Type (e.g. --python-layer spatial_dropout.SpatialDropoutLayer=Dropout)."
                )
            hints.append(
                "A fork's or your own layer type can be supported by a plugin (--plugin my_module; "
                "see 'Custom layers (plugins)' in the README), or the net cut before it with "
                "--outputs BLOB,..."
            )
            known = {name.lower(): name for name in self.registry.types()}
            for label in missing:
                close = difflib.get_close_matches(label.lower(), list(known), n=1, cutoff=0.8)
                if close and not label.startswith("Python"):
                    hints.append(
                        f"Did you mean '{known[close[0]]}' instead of '{label}'? (type names are case-sensitive)"
                    )
            self.report(UnsupportedLayersError(missing, "\n".join(hints), path=self.source))
        return ids

    def _parse_layer(self, lp: caffe_pb2.LayerParameter, line: int | None, supported: bool) -> _Entry:
        layer = _opaque_layer(lp)
        name = layer.name
        if not supported:
            return _Entry(layer, line, ok=False)
        handler = self.registry.get(lp.type)
        try:
            _check_counts(handler, lp, name)
            params = handler.parse(lp)
        except Caffe2OnnxError as exc:
            self.report(exc, line)
            return _Entry(layer, line, ok=False)
        except (ValueError, IndexError, ArithmeticError) as exc:
            self.report(LayerError(name, lp.type, f"invalid parameters: {exc}"), line)
            return _Entry(layer, line, ok=False)
        return _Entry(layer.with_(params=params), line)

    def _unique_layer_names(self, entries: list[_Entry]) -> None:
        seen: dict[str, int] = {}
        for entry in entries:
            layer = entry.layer
            count = seen.get(layer.name, 0)
            seen[layer.name] = count + 1
            if count:
                new_name = f"{layer.name}_{count}"
                while new_name in seen:
                    new_name += "_"
                seen[new_name] = 1
                self.note(f"layer name '{layer.name}' is used twice; the second is called '{new_name}'")
                entry.layer = layer.with_(name=new_name, caffe_name=layer.name)

    def _ssa(
        self, entries: list[_Entry], input_names: list[str], dropped: Mapping[str, str]
    ) -> dict[str, str]:
        """Give every write of a blob its own tensor name; bind reads to the newest write."""
        versions: dict[str, list[tuple[int, int]]] = {}  # blob -> [(layer index, top index)]
        current: dict[str, tuple[int, int] | None] = {name: None for name in input_names}
        writer: dict[str, str] = {}
        read_bindings: list[list[tuple[str, tuple[int, int] | None]]] = []
        for li, entry in enumerate(entries):
            layer = entry.layer
            binding = []
            for bottom in layer.bottoms:
                if bottom not in current:
                    if entry.needed:
                        self.report(NetDefinitionError(self._undefined_bottom(entries, li, bottom, dropped)))
                    entry.ok = False
                    binding.append((bottom, None))
                else:
                    binding.append((bottom, current[bottom]))
            read_bindings.append(binding)
            if len(set(layer.tops)) != len(layer.tops) and entry.needed:
                self.report(
                    NetDefinitionError(
                        f"{self.where(entry.line)}: layer '{layer.name}' ({layer.type}) lists the same "
                        "top twice; give each top its own name"
                    )
                )
                entry.ok = False
            for ti, top in enumerate(layer.tops):
                if top in current and top not in layer.bottoms and entry.needed:
                    previous = f"layer '{writer[top]}'" if top in writer else "the net input"
                    self.note(
                        f"blob '{top}' is written by {previous} and again by layer '{layer.name}', "
                        "which does not read it; the layers after it see the new version (as in Caffe)"
                    )
                versions.setdefault(top, []).append((li, ti))
                current[top] = (li, ti)
                writer[top] = layer.name

        taken = set(input_names) | set(versions)
        names: dict[tuple[int, int], str] = {}
        blob_of: dict[str, str] = {name: name for name in input_names}
        for blob, writes in versions.items():
            for position, (li, ti) in enumerate(writes):
                last = position == len(writes) - 1 and blob not in input_names
                if last:
                    name = blob
                else:
                    name = f"{blob}@{entries[li].layer.name}"
                    while name in taken:
                        name += "'"
                    taken.add(name)
                names[(li, ti)] = name
                blob_of[name] = blob

        for li, entry in enumerate(entries):
            bottoms = tuple(
                blob if version is None else names[version] for blob, version in read_bindings[li]
            )
            tops = tuple(names[(li, ti)] for ti in range(len(entry.layer.tops)))
            entry.layer = entry.layer.with_(bottoms=bottoms, tops=tops)
        return blob_of

    def _undefined_bottom(
        self, entries: list[_Entry], li: int, bottom: str, dropped: Mapping[str, str]
    ) -> str:
        entry = entries[li]
        layer = entry.layer
        head = f"{self.where(entry.line)}: layer '{layer.name}' ({layer.type}) reads blob '{bottom}'"
        if bottom in dropped:
            return (
                f"{head}, which only the dropped layer '{dropped[bottom]}' produces; if it is an "
                f"image input, give its shape (--input-shape {bottom}=N,C,H,W); otherwise cut the "
                "net before this layer with --outputs, or give a deploy prototxt"
            )
        if bottom in layer.tops:
            return (
                f"{head}, which it writes itself and no earlier layer produces: a layer cannot read its "
                "own output (a loop). An in-place layer needs the blob to exist before it"
            )
        later = next((k for k in range(li + 1, len(entries)) if bottom in entries[k].layer.tops), None)
        excluded = self.phase_skipped.get(bottom)
        if later is None and excluded is not None:
            rules = "; ".join(
                str(r).replace("\n", " ").strip() for r in (*excluded.include, *excluded.exclude)
            )
            return (
                f"{head}, which only layer '{excluded.name}' produces, and its include/exclude rules "
                f"({rules}) leave it out of the TEST phase with these stages; select its stage with --stage, "
                "use a deploy prototxt, or edit the rules"
            )
        if later is None:
            known = sorted({t for e in entries[:li] for t in e.layer.tops})
            close = difflib.get_close_matches(bottom, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            return f"{head}, which no layer produces and which is not a net input{hint}"
        cycle = _cycle(entries, li, later)
        producer = entries[later]
        if cycle:
            return (
                f"{head}, which the later layer '{producer.layer.name}' computes from this layer's own "
                f"output: the layers form a cycle ({' -> '.join(cycle)}), which Caffe cannot run"
            )
        return (
            f"{head}, which is only produced later, by layer '{producer.layer.name}'"
            + (f" (line {producer.line})" if producer.line else "")
            + "; Caffe runs layers in file order: move that layer above this one"
        )

    def _infer(self, entries: list[_Entry], input_shapes: Mapping[str, Shape]) -> None:
        """Resolve, infer and size-check each layer in order; unknown shapes skip dependants."""
        a = self.analysis
        shapes: dict[str, Shape] = dict(input_shapes)
        cause: dict[str, str] = {}  # tensor with unknown shape -> the layer (or input) at its root
        producers: dict[str, Layer] = {}
        skipped: dict[str, list[str]] = {}
        total = 0
        for entry in entries:
            layer = entry.layer
            unknown = [b for b in layer.bottoms if b not in shapes]
            if not entry.ok or unknown:
                if entry.ok:
                    root = cause.get(unknown[0], unknown[0])
                    skipped.setdefault(root, []).append(layer.name)
                    a.status[layer.name] = "skipped"
                else:
                    root = layer.name
                    a.status[layer.name] = "problem"
                for top in layer.tops:
                    cause[top] = root
                    shapes.pop(top, None)
                continue
            handler = self.registry.get(layer.type)
            in_shapes = [shapes[b] for b in layer.bottoms]
            try:
                layer = _resolve(handler, layer, producers)
                out_shapes = infer_layer(handler, layer, in_shapes)
                specs = _blob_specs(handler, layer, in_shapes)
                check_blob_specs(layer, specs)
                total += sum(math.prod(s.shape) for s in specs)
                if total > MAX_TOTAL_ELEMENTS:
                    raise LayerError(
                        layer.name,
                        layer.type,
                        f"the parameters up to this layer hold {total} values, more than the limit "
                        f"of {MAX_TOTAL_ELEMENTS}; check num_output and the kernel sizes",
                    )
            except Caffe2OnnxError as exc:
                if isinstance(exc, ShapeError) and layer.type in ("Concat", "Eltwise"):
                    exc = _with_darknet_pooling_hint(exc, [e.layer for e in entries])
                self.report(exc, entry.line)
                entry.ok = False
                entry.layer = layer
                a.status[layer.name] = "problem"
                for top in layer.tops:
                    cause[top] = layer.name
                    shapes.pop(top, None)
                continue
            entry.layer = layer
            a.status[layer.name] = ""
            a.specs[layer.name] = specs
            for top, shape in zip(layer.tops, out_shapes):
                shapes[top] = shape
                producers[top] = layer
                cause.pop(top, None)
        a.shapes = shapes
        for root, names in skipped.items():
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            self.note(
                f"skipped {len(names)} layer(s) whose input shapes are unknown because of '{root}': {shown}"
            )

    def _check_shared_names(self, entries: list[_Entry], model: CaffeModel | None) -> None:
        """Several layers with one name that take weights: whose are the caffemodel's blobs?"""
        groups: dict[str, list[_Entry]] = {}
        for entry in entries:
            if self.analysis.specs.get(entry.layer.name):
                groups.setdefault(entry.layer.caffe_name or entry.layer.name, []).append(entry)
        for name, group in groups.items():
            if len(group) < 2:
                continue
            listed = ", ".join(f"'{e.layer.name}'" + (f" (line {e.line})" if e.line else "") for e in group)
            if model is not None and name in model.blobs:
                self.report(
                    NetDefinitionError(
                        f"{self.source}: {len(group)} layers are named '{name}' and take weights ({listed}); "
                        "the caffemodel's blobs are matched by layer name, so which layer they belong to is "
                        "ambiguous (Caffe gives them to the first only). Give each layer a unique name, "
                        "the one its blobs have in the caffemodel"
                    )
                )
            else:
                self.note(
                    f"{len(group)} layers named '{name}' take weights ({listed}); each gets its own "
                    "(the caffemodel has no blobs under that name)"
                )

    def _note_unused_blobs(self, layers: Sequence[Layer], model: CaffeModel) -> None:
        names = {layer.caffe_name or layer.name for layer in layers}
        unused = [name for name, blobs in model.blobs.items() if blobs and name not in names]
        if unused and len(unused) < len(model.blobs):
            shown = ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else "")
            self.note(
                f"the caffemodel has blobs for {len(unused)} layer(s) this net does not have "
                f"(ignored, as Caffe does): {shown}"
            )

    def _fills(self, layer: Layer, specs, line: int | None) -> bool:
        """Whether the prototxt's fillers can fill the layer (problems are reported)."""
        from caffe2onnx.weights import _deterministic_fill, fill_or_fail

        try:
            return fill_or_fail(layer, _deterministic_fill, specs) is not None
        except Caffe2OnnxError as exc:
            self.report(exc, line)
            return True

    def _check_weights(self, entries: list[_Entry], model: CaffeModel) -> None:
        """Every blob problem at once (``analyze_net``), without allocating weights."""
        from caffe2onnx.weights import _match_blobs

        status = self.analysis.weights
        wanting: list[str] = []
        matched = 0
        missing: list[tuple[str, str, str]] = []
        for entry in entries:
            layer = entry.layer
            specs = self.analysis.specs.get(layer.name) if entry.ok else None
            if not specs:
                continue
            name = layer.caffe_name or layer.name
            wanting.append(name)
            if name in model.blobs:
                matched += 1
                try:
                    _match_blobs(layer, specs, model.blobs[name], model.path)
                    status[layer.name] = "ok"
                except Caffe2OnnxError as exc:
                    status[layer.name] = "MISMATCH"
                    self.report(exc, entry.line)
            elif self._fills(layer, specs, entry.line):
                status[layer.name] = "filler"
            else:
                status[layer.name] = "missing"
                missing.append(
                    (layer.name, layer.type, specs[0].filler.type if specs[0].filler else "none given")
                )
        if wanting and matched == 0 and model.blobs:
            sample = ", ".join(sorted(model.blobs)[:6])
            self.report(
                Caffe2OnnxError(
                    f"{model.path}: none of the caffemodel's layer names ({sample}, ...) match a layer of "
                    f"the net that needs weights ({', '.join(wanting[:6])}, ...). Is this the caffemodel "
                    "of another net?"
                )
            )
        elif missing:
            self.report(RandomFillerError(missing, caffemodel=model.path))

    def _select_outputs(
        self, layers: Sequence[Layer], inputs: tuple[str, ...], blob_of: Mapping[str, str]
    ) -> tuple[str, ...]:
        requested = self.options.outputs
        if requested:
            known = {top for layer in layers for top in layer.tops} | set(inputs)
            unknown = [name for name in requested if name not in known]
            if unknown:
                sample = sorted(known | self.all_tops)[:10]
                self.report(
                    NetDefinitionError(
                        f"{self.source}: --outputs names unknown blob(s) {', '.join(unknown)}; blobs of "
                        f"this net include: {', '.join(sample)} ..."
                    )
                )
                return ()
            return tuple(requested)
        consumed = {bottom for layer in layers for bottom in layer.bottoms}
        outputs = [top for layer in layers for top in layer.tops if top not in consumed]
        if not outputs and layers:
            self.report(NetDefinitionError(f"{self.source}: the net has no outputs (every blob is consumed)"))
        if not layers and not self.analysis.problems:
            self.report(NetDefinitionError(f"{self.source}: the net has no layers to convert"))
        return tuple(outputs)


# ----------------------------------------------------------------------------- helpers


def _opaque_layer(lp: caffe_pb2.LayerParameter) -> Layer:
    """The layer with its names but no parameters (not parsed yet, or not parseable)."""
    return Layer(
        name=lp.name or f"<unnamed {lp.type or 'layer'}>",
        type=lp.type,
        bottoms=tuple(lp.bottom),
        tops=tuple(lp.top),
        params=None,
        caffe_bottoms=tuple(lp.bottom),
        caffe_tops=tuple(lp.top),
        param_names=tuple(p.name for p in lp.param),
        frozen=bool(lp.param) and all(p.lr_mult == 0 for p in lp.param),
    )


def _check_counts(handler: Handler, lp: caffe_pb2.LayerParameter, name: str) -> None:
    for what, count, (low, high) in (
        ("bottom", len(lp.bottom), handler.bottoms),
        ("top", len(lp.top), handler.tops),
    ):
        if count < low or (high is not None and count > high):
            expected = str(low) if low == high else f"{low} to {high if high is not None else 'any'}"
            raise LayerError(name, lp.type, f"has {count} {what}(s); this layer type takes {expected}")


def _resolve(handler: Handler, layer: Layer, producers: Mapping[str, Layer]) -> Layer:
    try:
        return handler.resolve(layer, producers)
    except Caffe2OnnxError:
        raise
    except (ValueError, IndexError, ArithmeticError) as exc:
        raise LayerError(layer.name, layer.type, f"invalid parameters: {exc}") from None


def _blob_specs(handler: Handler, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
    try:
        return list(handler.blobs(layer, in_shapes))
    except Caffe2OnnxError:
        raise
    except (ValueError, IndexError, ArithmeticError) as exc:
        raise LayerError(layer.name, layer.type, f"cannot size the parameter blobs: {exc}") from None


def _cycle(entries: list[_Entry], li: int, later: int) -> list[str]:
    """The layers from ``li`` to ``later`` through which ``later`` depends on ``li``'s tops
    ([] if it does not)."""
    origin: dict[str, int] = dict.fromkeys(entries[li].layer.tops, li)  # tainted blob -> writer
    parent: dict[int, int] = {}
    for k in range(li + 1, later + 1):
        layer = entries[k].layer
        reads = [b for b in layer.bottoms if b in origin]
        if reads:
            parent[k] = origin[reads[0]]
            for top in layer.tops:
                origin[top] = k
        else:
            for top in layer.tops:
                origin.pop(top, None)  # overwritten by a value that does not depend on li
    if later not in parent:
        return []
    chain = [later]
    while chain[-1] != li:
        chain.append(parent[chain[-1]])
    names = [entries[k].layer.name for k in reversed(chain)]
    return [*names, names[0]]
