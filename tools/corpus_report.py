"""Run every prototxt of the corpus end to end and write a Markdown pass matrix.

For each file of ``../shared/corpus`` (see its MANIFEST.md): write a seeded random
caffemodel (``make_weights``), convert (``load_net`` + ``to_onnx``), validate every blob
in onnxruntime against the PyTorch reference (``compare_net``), and compare the final
outputs with OpenCV 4.x's own Caffe importer where it can run the net. Files that cannot
be converted in principle (templates, Python data layers without a mapping, non-Caffe
types, layers without an ONNX form) must fail with a clear message
(a :class:`~caffe2onnx.errors.Caffe2OnnxError` while loading or converting); any other
failure is a bug and is counted as such.

Per-file settings (``SETTINGS``): input shapes for data-layer nets and nets whose declared
size is a placeholder, Python layer mappings, output cuts for detection nets, and reduced
sizes for fully convolutional nets whose real size would take too long. Any declared batch
above ``MAX_BATCH`` is lowered to it (the value of the batch is not what is tested here).
The matrix states the input sizes used.

Each file runs in its own subprocess with a timeout, so a crash or a hang costs one row.

    python tools/corpus_report.py                         # every file, Markdown on stdout
    python tools/corpus_report.py --only 'fcn*' --jobs 2 --out matrix.md --json rows.json
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caffe2onnx.errors import Caffe2OnnxError, UnsupportedLayersError  # noqa: E402
from caffe2onnx.inputs import ValidationInputError  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
MAX_BATCH = 2
SEED_WEIGHTS = 1
SEED_INPUTS = 0
DEFAULT_TIMEOUT = 1800.0
#: the brief's tolerance for "validates well": max relative error per blob
REL_TOLERANCE = 1e-4
REL_TOLERANCE_DEEP = 1e-3  # for nets of more than DEEP_LAYERS layers
DEEP_LAYERS = 50


# ----------------------------------------------------------------------------- per-file settings


@dataclass(frozen=True)
class Settings:
    """What a file needs beyond its prototxt to be converted and validated."""

    input_shapes: dict[str, tuple[int, ...]] | None = None
    python_layers: dict[str, str] | None = None
    layer_types: dict[str, str] | None = None
    stages: tuple[str, ...] = ()
    outputs: tuple[str, ...] | None = None
    #: why these sizes (shown in the matrix)
    note: str = ""
    #: input values used instead of random normals (e.g. valid ROIs)
    fixed_inputs: dict[str, tuple[tuple[float, ...], ...]] = field(default_factory=dict)
    #: OpenCV is not run, and why (it would import the net but compute something else)
    no_opencv: str | None = None
    #: regex substitutions on the prototxt text OpenCV reads (fork field spellings)
    opencv_subs: tuple[tuple[str, str], ...] = ()
    #: shown after the OpenCV result (a known OpenCV deviation)
    opencv_note: str = ""
    #: 0: every blob (compare_net); N: outputs + every N-th layer (memory-bounded loop)
    sample_every: int = 0

    def load_options(self, shapes: Mapping[str, Sequence[int]]) -> dict:
        """Keyword arguments for load_net / make_weights."""
        return dict(
            input_shapes=shapes,
            python_layers=self.python_layers,
            layer_types=self.layer_types,
            stages=self.stages,
            outputs=self.outputs,
        )


FCN_SMALL = "fully convolutional, reduced (real 500x500)"
NO_AUTO_CROP = "OpenCV computes no automatic Crop offsets (Crop without crop_param)"
PSPNET_SAMPLE = (
    "real size (pyramid pooling kernels, Interp sizes fixed); outputs + every 25th layer "
    "compared (all blobs need ~15 GB)"
)

SETTINGS: dict[str, Settings] = {
    # --- data-layer nets: the input the data layer would produce (crop_size / new size)
    "bayesian_segnet_camvid.inference.prototxt": Settings(
        {"data": (1, 3, 360, 480)}, note="real size (upsample_h/w fixed); 1 MC sample"
    ),
    "bvlc_alexnet.train_val.prototxt": Settings({"data": (1, 3, 227, 227)}, note="crop_size"),
    "bvlc_caffenet_v1format.train_val.prototxt": Settings({"data": (1, 3, 227, 227)}, note="crop_size"),
    "cifar10_full_sigmoid_bn.train_test.prototxt": Settings({"data": (1, 3, 32, 32)}, note="CIFAR size"),
    "deconvnet_stage1.train.prototxt": Settings({"data": (1, 3, 224, 224)}, note="crop_size"),
    "enet_cityscapes.train_encoder_decoder.prototxt": Settings(
        {"data": (1, 3, 128, 256)},
        python_layers={"spatial_dropout.SpatialDropoutLayer": "Dropout"},
        note="reduced (real 512x1024, same aspect)",
    ),
    "fcn16s_pascal.val.prototxt": Settings({"data": (1, 3, 64, 64)}, note=FCN_SMALL),
    "fcn32s_pascal.val.prototxt": Settings({"data": (1, 3, 64, 64)}, note=FCN_SMALL),
    "fcn32s_nyud_color_hha.test.prototxt": Settings(
        {"color": (1, 3, 64, 64), "hha": (1, 3, 64, 64)}, note="fully convolutional, reduced"
    ),
    "fcn8s_pascal.train.prototxt": Settings({"data": (1, 3, 64, 64)}, note=FCN_SMALL),
    "hed_bsds.train_val.prototxt": Settings(
        {"data": (1, 3, 128, 128)}, note="fully convolutional, reduced", no_opencv=NO_AUTO_CROP
    ),
    "segnet_basic_camvid.inference.prototxt": Settings(
        {"data": (1, 3, 120, 160)}, note="reduced (real 360x480): H/8 odd as upsample4 pad_out_h needs"
    ),
    "segnet_camvid.inference.prototxt": Settings(
        {"data": (1, 3, 360, 480)}, note="real size (upsample_h/w fixed)"
    ),
    "segnet_camvid.train.prototxt": Settings(
        {"data": (1, 3, 360, 480)}, note="real size (upsample_h/w fixed)"
    ),
    "squeezenet_v1.1.train_val.prototxt": Settings({"data": (1, 3, 227, 227)}, note="crop_size"),
    "opencv_reshape_and_slice_routines.test.prototxt": Settings(
        {"input": (1, 3, 5, 4)}, note="input declared without a shape"
    ),
    # --- Python layers mapped to a built-in handler
    "enet_cityscapes.deploy.prototxt": Settings(
        {"data": (1, 3, 128, 256)},
        python_layers={"spatial_dropout.SpatialDropoutLayer": "Dropout"},
        note="reduced (real 512x1024, same aspect)",
    ),
    "mnist_autoencoder.train.prototxt": Settings(
        {"data": (1, 1, 28, 28)},
        stages=("test-on-test",),
        note="stage test-on-test selects its TEST data layer",
    ),
    "yolov3_tiny.deploy.prototxt": Settings(
        layer_types={"layer12-maxpool": "DarknetPooling"},
        note="layer12-maxpool keeps darknet's size rule (the port's Caffe fork)",
    ),
    # --- detection nets: decoding layers without an ONNX form are cut off
    "faster_rcnn_zf_voc.test.prototxt": Settings(
        outputs=("rpn_cls_prob_reshape", "rpn_bbox_pred", "conv5"),
        note="cut before the Python ProposalLayer (RPN outputs and the shared features)",
    ),
    "faster_rcnn_vgg16_voc.test.prototxt": Settings(
        outputs=("rpn_cls_prob_reshape", "rpn_bbox_pred", "conv5_3"),
        note="cut before the Python ProposalLayer (RPN outputs and the shared features)",
    ),
    "mobilenet_ssd_voc.deploy.prototxt": Settings(
        outputs=("mbox_loc", "mbox_conf_flatten", "mbox_priorbox"),
        note="cut before DetectionOutput: with random weights every score saturates at 1.0 and "
        "equal scores order rows arbitrarily (DetectionOutput itself is validated on SSD300)",
    ),
    "yolov2_darknet19_eric612.deploy.prototxt": Settings(
        outputs=("conv22",), note="cut before YoloDetectionOutput"
    ),
    "mobilenet_yolov3_lite_eric612.deploy.prototxt": Settings(
        outputs=("conv20", "conv21"), note="cut before Yolov3DetectionOutput"
    ),
    "fast_rcnn_vgg16_voc.test.prototxt": Settings(
        {"data": (1, 3, 224, 224), "rois": (3, 5)},
        note="3 valid ROIs",
        fixed_inputs={
            "rois": ((0, 8, 16, 120, 200), (0, 0, 0, 223, 223), (0, 64.5, 30.25, 100, 90.75)),
        },
    ),
    # --- placeholder sizes and fully convolutional nets at reduced sizes
    "openpose_coco.deploy.prototxt": Settings(
        {"image": (1, 3, 128, 128)}, note="declared 1x1 is set at runtime; fully convolutional"
    ),
    "openpose_face.deploy.prototxt": Settings(
        {"image": (1, 3, 128, 128)}, note="declared 1x1 is set at runtime; fully convolutional"
    ),
    "openpose_mpi_4stages.deploy.prototxt": Settings(
        {"image": (1, 3, 128, 128)}, note="declared 1x1 is set at runtime; fully convolutional"
    ),
    "fcn8s_pascal.deploy.prototxt": Settings({"data": (1, 3, 64, 64)}, note=FCN_SMALL),
    "fcn8s_pascal_deconvnetrepo.deploy.prototxt": Settings({"data": (1, 3, 64, 64)}, note=FCN_SMALL),
    "deeplabv1_vgg128_noup_voc12_v1format.deploy.prototxt": Settings(
        {"data": (1, 3, 64, 64)},
        note="fully convolutional, reduced (real 10x3x321x321)",
        opencv_subs=((r"\bhole:", "dilation:"),),
    ),
    "dilation8_pascal_voc.deploy.prototxt": Settings(
        {"data": (1, 3, 412, 412)}, note="reduced (real 900); unpadded front end needs >= 376"
    ),
    "erfnet_cityscapes.deploy.prototxt": Settings(
        {"data": (1, 3, 128, 256)}, note="reduced (real 512x1024, same aspect)"
    ),
    "segflow_x2paddle.deploy.prototxt": Settings(
        {"data": (1, 3, 160, 288), "data2": (1, 3, 192, 320)},
        note="reduced (real 480x854, 512x896) keeping the crop offsets valid",
    ),
    "pspnet101_cityscapes.deploy.prototxt": Settings(note=PSPNET_SAMPLE, sample_every=25),
    # --- known OpenCV deviations
    "opencv_axpy.test.prototxt": Settings(
        opencv_note="OpenCV computes bottom0 * bottom2 + bottom1; Caffe's Axpy is a * x + y with (a, x, y) = bottoms 0, 1, 2"
    ),
}


def settings_for(name: str) -> Settings:
    return SETTINGS.get(name, Settings())


# ----------------------------------------------------------------------------- one file


@dataclass
class Row:
    file: str
    format: str = ""
    inputs: str = ""
    note: str = ""
    layers: int = 0
    converts: bool | None = None
    validates: bool | None = None
    #: validates | mismatch | clear | unclear | timeout
    outcome: str = ""
    stage: str = ""
    torch: str = ""
    torch_max_rel: float | None = None
    torch_blobs: int = 0
    torch_worst: list[dict[str, Any]] = field(default_factory=list)
    torch_notes: list[str] = field(default_factory=list)
    opencv: str = ""
    opencv_max_rel: float | None = None
    opencv_passed: bool | None = None
    unsupported: list[str] = field(default_factory=list)
    reason: str = ""
    error_type: str = ""
    seconds: float = 0.0
    needs_diagnosis: bool = False
    finished: bool = False


def file_format(text: str) -> str:
    """``new`` (``layer {``), ``V1`` (``layers {`` + enum types) or ``V0`` (nested ``layer {``)."""
    if re.search(r"^\s*layers\s*\{\s*(?:#[^\n]*\n\s*)*layer\s*\{", text, re.M):
        return "V0"
    if re.search(r"^\s*layers\s*\{", text, re.M):
        return "V1"
    return "new"


def _short_message(exc: BaseException, corpus: Path) -> str:
    """The message on one line (line breaks become " / "), file paths relative to the corpus."""
    text = (str(exc) or type(exc).__name__).replace(f"{corpus}{os.sep}", "")
    out = ""
    for line in (part.strip() for part in text.strip().splitlines()):
        if line:
            out += line if not out else (" " if out.endswith(":") else " / ") + line
    return out


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _final_shapes(path: Path, s: Settings) -> dict[str, tuple[int, ...]]:
    """The settings' shapes, plus every other input with its batch lowered to MAX_BATCH."""
    from caffe2onnx.parser import load_net

    shapes = dict(s.input_shapes or {})
    probe = load_net(path, require_weights=False, **s.load_options(shapes))
    for name, shape in probe.inputs:
        if name not in shapes and shape and shape[0] > MAX_BATCH:
            shapes[name] = (MAX_BATCH, *shape[1:])
    return shapes


def _write_weights(path: Path, caffemodel: Path, shapes: Mapping[str, Sequence[int]], s: Settings) -> None:
    from caffe2onnx.make_weights import make_weights

    make_weights(path, caffemodel, seed=SEED_WEIGHTS, **s.load_options(shapes))


def _feed(net, s: Settings) -> dict[str, np.ndarray]:
    from caffe2onnx.validation import random_inputs

    feed = random_inputs(net, seed=SEED_INPUTS)
    for name, values in s.fixed_inputs.items():
        feed[name] = np.asarray(values, dtype=np.float32).reshape(feed[name].shape)
    return feed


@dataclass
class TorchResult:
    passed: bool
    blobs: int
    max_rel: float
    first_failure: str
    worst: list[dict[str, Any]]
    notes: list[str]
    #: (layer, tensor) of the first failing blob
    first_failure_at: tuple[str, str] | None = None


def _describe(row) -> str:
    return (
        f"layer '{row.layer}' ({row.layer_type}), blob '{row.tensor}' {_fmt_shape(row.shape)}: "
        f"max abs {row.max_abs:.3g}, max rel {row.max_rel:.3g}, cosine {row.cosine:.6f}"
    )


def _torch_result(rows, notes: Sequence[str]) -> TorchResult:
    failing = next((r for r in rows if not r.passed), None)
    worst = sorted(rows, key=lambda r: -r.max_rel)  # inf first
    return TorchResult(
        passed=bool(rows) and failing is None,
        blobs=len(rows),
        max_rel=max((r.max_rel for r in rows), default=0.0),
        first_failure="" if failing is None else _describe(failing),
        worst=[
            {
                "layer": r.layer,
                "type": r.layer_type,
                "blob": r.tensor,
                "max_abs": r.max_abs,
                "max_rel": r.max_rel,
                "passed": r.passed,
            }
            for r in worst[:5]
        ],
        notes=list(notes),
        first_failure_at=None if failing is None else (failing.layer, failing.tensor),
    )


def _compare_sampled(net, model, feed: Mapping[str, np.ndarray], every: int, rtol: float) -> TorchResult:
    """For nets too big to hold every blob: the outputs and the tops of every ``every``-th
    layer, with the reference run layer by layer in bounded memory."""
    from caffe2onnx.validation import compare_layerwise, run_onnx

    picked = [t for i, layer in enumerate(net.layers) if i % every == 0 for t in layer.tops]
    onnx_values = run_onnx(model, feed, list(dict.fromkeys([*picked, *net.outputs])))
    report = compare_layerwise(net, feed, onnx_values, rtol=rtol)
    return _torch_result(report.rows, report.notes)


# --- OpenCV


def _in_test_phase(lp) -> bool:
    """Caffe's NetStateRule check for phase TEST, level 0, no stages."""

    def meets(rule) -> bool:
        if rule.HasField("phase") and rule.phase != 1:
            return False
        if rule.HasField("min_level") and rule.min_level > 0:
            return False
        if rule.HasField("max_level") and rule.max_level < 0:
            return False
        return not rule.stage

    if lp.include:
        return any(meets(r) for r in lp.include)
    return not any(meets(r) for r in lp.exclude)


def opencv_prototxt(path: Path, net, s: Settings, workdir: Path) -> Path:
    """The prototxt OpenCV reads: the original, or (when our parser dropped or mapped layers)
    what Caffe runs in phase TEST with data layers replaced by declared inputs."""
    from google.protobuf import text_format

    from caffe2onnx.proto import caffe_pb2
    from caffe2onnx.prototxt import read_prototxt
    from caffe2onnx.upgrade import upgrade

    spec = upgrade(read_prototxt(path), str(path))
    kept = {layer.caffe_name or layer.name for layer in net.layers}
    python_map = dict(s.python_layers or {})
    derive = bool(python_map) or any(
        lp.include or lp.exclude or (lp.name not in kept and lp.type != "Input") for lp in spec.layers
    )
    if not derive and not s.opencv_subs:
        return path
    text = path.read_text()
    if derive:
        out = caffe_pb2.NetParameter(name=spec.name)
        for name, shape in net.inputs:
            out.input.append(name)
            out.input_shape.add().dim.extend(shape)
        for lp in spec.layers:
            if lp.type == "Input" or lp.name not in kept or not _in_test_phase(lp):
                continue
            layer = out.layer.add()
            layer.CopyFrom(lp)
            layer.ClearField("include")
            layer.ClearField("exclude")
            if lp.type == "Python":
                key = f"{lp.python_param.module}.{lp.python_param.layer}"
                if key in python_map:
                    layer.type = python_map[key]
                    layer.ClearField("python_param")
        text = text_format.MessageToString(out)
    for pattern, repl in s.opencv_subs:
        text = re.sub(pattern, repl, text)
    derived = workdir / f"opencv_{path.name}"
    derived.write_text(text)
    return derived


def _opencv_message(exc: BaseException) -> str:
    """OpenCV's error without the source function, the version and our CLI hint."""
    from caffe2onnx.opencv_ref import HINT

    text = " ".join(str(exc).replace(HINT, "").split())
    text = re.sub(r" in function '[^']*'", "", text)
    text = re.sub(r"^OpenCV [\d.]+ cannot import \S+: ", "OpenCV cannot import: ", text)
    text = re.sub(r" \(expected: .*", "", text.replace("(-2:Unspecified error) ", ""))
    if "UnknownField should have at least 2 items" in text:
        text += " (OpenCV's caffe.proto lacks a field of this prototxt, e.g. a fork layer's *_param)"
    return text


def _detections(rows: np.ndarray) -> np.ndarray:
    """DetectionOutput rows without the -1 padding, sorted by image, label, score (desc), box.

    Caffe orders by image, label, score; OpenCV orders by score over all labels."""
    rows = rows.reshape(-1, 7)
    rows = rows[rows[:, 0] >= 0]
    order = np.lexsort((rows[:, 6], rows[:, 5], rows[:, 4], rows[:, 3], -rows[:, 2], rows[:, 1], rows[:, 0]))
    return rows[order]


def _opencv_outputs(
    net, model, path: Path, caffemodel: Path, feed: Mapping[str, np.ndarray], s: Settings, workdir: Path
) -> tuple[str, float | None, bool | None]:
    """(cell, max rel over the outputs, passed) of OpenCV's forward against onnxruntime's."""
    from caffe2onnx.opencv_ref import OpenCVReference, OpenCVReferenceError
    from caffe2onnx.validation import DEFAULT_ATOL, DEFAULT_RTOL, compare_arrays, run_onnx

    if s.no_opencv:
        return f"not run: {s.no_opencv}", None, None
    try:
        prototxt = opencv_prototxt(path, net, s, workdir)
        expected = OpenCVReference(net, prototxt, caffemodel).run(feed)
    except OpenCVReferenceError as exc:
        return f"not run: {_opencv_message(exc)}", None, None
    ours = run_onnx(model, feed, list(net.outputs))
    producer = net.producer()
    parts, worst, passed, compared = [], 0.0, True, 0
    for name in net.outputs:
        layer = producer[name]
        if name not in expected:
            passed = False
            if name != layer.tops[0]:
                parts.append(f"{name}: not compared (OpenCV returns a layer's first top only)")
            elif layer.type == "Convolution" and (layer.caffe_name or layer.name) != name:
                parts.append(
                    f"{name}: not returned (OpenCV lists Convolution '{layer.caffe_name or layer.name}' "
                    "under its top's name; opencv_ref looks layers up by name)"
                )
            else:
                parts.append(f"{name}: not returned by OpenCV")
            continue
        mine, ref = ours[name], np.asarray(expected[name])
        if layer.type == "DetectionOutput":
            mine, ref = _detections(mine), _detections(ref)
            parts.append(f"{name}: {len(ref)} OpenCV vs {len(mine)} detections, compared sorted by label")
        elif ref.shape != mine.shape and ref.size == mine.size:
            ref = ref.reshape(mine.shape)
        if ref.shape != mine.shape:
            parts.append(f"{name}: shape {_fmt_shape(mine.shape)} vs OpenCV {_fmt_shape(ref.shape)}")
            passed = False
            continue
        compared += 1
        _, max_rel, ok = compare_arrays(mine, ref, DEFAULT_RTOL, DEFAULT_ATOL)
        worst = max(worst, max_rel)
        passed = passed and ok
        if not ok:
            parts.append(f"{name}: max rel {max_rel:.3g} FAIL")
    head = f"{worst:.2g} ({compared}/{len(net.outputs)} outputs)" if compared else "no output compared"
    if s.opencv_note:
        parts.append(s.opencv_note)
    return "; ".join([head, *parts]), (worst if compared else None), passed


# --- the whole pipeline for one file


def run_file(
    name: str,
    corpus: Path = CORPUS,
    *,
    opencv: bool = True,
    settings: Settings | None = None,
    progress: Callable[[Row], None] | None = None,
) -> Row:
    """make-weights, convert, validate against torch (and OpenCV) one corpus file; never raises.

    ``progress`` is called with the row after each stage (the subprocess driver saves it,
    so a crash still reports how far the file got).
    """
    from caffe2onnx.onnx_export import DEFAULT_OPSET, to_onnx
    from caffe2onnx.parser import load_net
    from caffe2onnx.validation import compare_net

    s = settings if settings is not None else settings_for(name)
    path = corpus / name
    row = Row(file=name, note=s.note)
    start = time.perf_counter()

    def enter(stage: str) -> None:
        row.stage = stage
        row.seconds = round(time.perf_counter() - start, 1)
        if progress is not None:
            progress(row)

    try:
        row.format = file_format(path.read_text(errors="replace"))
        enter("load")
        shapes = _final_shapes(path, s)
        with tempfile.TemporaryDirectory(prefix="corpus-report-") as tmp:
            workdir = Path(tmp)
            caffemodel = workdir / "weights.caffemodel"
            enter("make-weights")
            _write_weights(path, caffemodel, shapes, s)
            enter("load")
            net = load_net(path, caffemodel, **s.load_options(shapes))
            row.layers = len(net.layers)
            row.inputs = ", ".join(f"{n}={_fmt_shape(shape)}" for n, shape in net.inputs)
            enter("convert")
            model = to_onnx(net, DEFAULT_OPSET)
            row.converts = True
            enter("validate")
            feed = _feed(net, s)
            # the tolerance: 1e-4 relative, 1e-3 for nets deeper than 50 layers
            limit = REL_TOLERANCE_DEEP if row.layers > DEEP_LAYERS else REL_TOLERANCE
            if s.sample_every:
                result = _compare_sampled(net, model, feed, s.sample_every, limit)
            else:
                # compare_net follows argmax near-ties of pooling masks (and notes them)
                report = compare_net(net, model, inputs=feed, rtol=limit)
                result = _torch_result(report.rows, report.notes)
                del report
            row.validates = result.passed
            row.torch_max_rel = result.max_rel
            row.torch_blobs = result.blobs
            row.torch_worst = result.worst
            row.torch_notes = result.notes
            row.torch = f"{result.max_rel:.2g} ({result.blobs} blobs{', sampled' if s.sample_every else ''})"
            row.needs_diagnosis = not (result.passed and result.max_rel <= limit)
            if result.passed:
                row.outcome = "validates"
            else:
                row.outcome = "mismatch"
                row.torch = f"FAIL {row.torch}"
                row.reason = f"first divergence: {result.first_failure}"
            if opencv:
                enter("opencv")
                try:
                    row.opencv, row.opencv_max_rel, row.opencv_passed = _opencv_outputs(
                        net, model, path, caffemodel, feed, s, workdir
                    )
                except Exception as exc:  # OpenCV trouble never hides the torch result
                    row.opencv = f"error: {type(exc).__name__}: {_short_message(exc, corpus)}"
            else:
                row.opencv = "not run: disabled"
    except Caffe2OnnxError as exc:
        _failed(row, exc, corpus, clear=not row.converts and not isinstance(exc, ValidationInputError))
    except Exception as exc:  # anything unanticipated is a bug: report it, keep going
        _failed(row, exc, corpus, clear=False)
    row.seconds = round(time.perf_counter() - start, 1)
    row.finished = True
    if progress is not None:
        progress(row)
    return row


def _failed(row: Row, exc: BaseException, corpus: Path, *, clear: bool) -> None:
    row.converts = bool(row.converts)
    row.outcome = "clear" if clear else "unclear"
    row.error_type = type(exc).__name__
    message = _short_message(exc, corpus)
    row.reason = message if clear else f"{type(exc).__name__} during {row.stage}: {message}"
    if isinstance(exc, UnsupportedLayersError):
        row.unsupported = sorted(exc.by_type)
    row.needs_diagnosis = not clear


# ----------------------------------------------------------------------------- subprocess driver


def _child(name: str, corpus: Path, row_file: Path, opencv: bool) -> int:
    def save(row: Row) -> None:
        tmp = row_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(row)))
        tmp.replace(row_file)

    run_file(name, corpus, opencv=opencv, progress=save)
    return 0


def run_in_subprocess(name: str, corpus: Path, timeout: float, opencv: bool, threads: int) -> Row:
    """``run_file`` in a fresh interpreter; a crash or a timeout becomes the row's outcome."""
    with tempfile.TemporaryDirectory(prefix="corpus-report-row-") as tmp:
        row_file = Path(tmp) / "row.json"
        cmd = [
            sys.executable,
            os.fspath(Path(__file__).resolve()),
            "--child",
            name,
            "--row-file",
            str(row_file),
        ]
        cmd += ["--corpus", os.fspath(corpus)] + ([] if opencv else ["--no-opencv"])
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True, text=True
        )
        timed_out = False
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        seconds = round(time.perf_counter() - start, 1)
        row = Row(file=name)
        if row_file.exists():
            row = Row(**json.loads(row_file.read_text()))
        if row.finished and not timed_out:
            return row
        row.seconds = seconds
        if timed_out:
            what = f"timeout after {timeout:.0f} s during {row.stage or 'start-up'}"
        else:
            code = proc.returncode
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            tail = " ".join((err or "").strip().splitlines()[-3:])[-300:]
            what = f"crash ({how}) during {row.stage or 'start-up'}" + (f": {tail}" if tail else "")
        if row.stage == "opencv":  # the torch result stands; OpenCV did not finish
            row.opencv = f"not run: OpenCV {what}"
        else:
            row.outcome = "timeout" if timed_out else "unclear"
            row.converts = bool(row.converts)
            row.reason = what
            row.needs_diagnosis = True
        return row


# ----------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = " ".join(str(value).split())
    return text.replace("|", "\\|") or "-"


def markdown(rows: Sequence[Row]) -> str:
    head = [
        "file",
        "format",
        "inputs used",
        "converts",
        "validates",
        "max rel error (torch)",
        "max rel error (OpenCV, outputs) or why not",
        "unsupported layer types",
        "reason",
        "seconds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        inputs = r.inputs + (f" ({r.note})" if r.note and r.inputs else "")
        cells = [
            f"`{r.file}`",
            r.format,
            inputs,
            r.converts,
            r.validates,
            r.torch,
            r.opencv,
            ", ".join(r.unsupported),
            r.reason,
            f"{r.seconds:.0f}",
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> str:
    count = {
        k: sum(r.outcome == k for r in rows) for k in ("validates", "mismatch", "clear", "unclear", "timeout")
    }
    converts = sum(bool(r.converts) for r in rows)
    return (
        f"{len(rows)} files: {converts} convert, {count['validates']} validate, "
        f"{count['mismatch']} convert but do not validate, {count['clear']} fail with a clear message, "
        f"{count['unclear']} fail unclearly (bugs), {count['timeout']} time out"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", metavar="PATTERN", help="glob or substring of file names (repeatable)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="files run in parallel (default 1)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per file")
    parser.add_argument("--out", type=Path, help="write the Markdown matrix here (default: stdout)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON ('-': stdout)")
    parser.add_argument("--no-opencv", action="store_true", help="skip the OpenCV reference")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help=f"default {CORPUS}")
    parser.add_argument("--from-json", type=Path, metavar="PATH", help="re-render rows saved with --json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--row-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.corpus, args.row_file, not args.no_opencv)

    if args.from_json:
        ordered = [Row(**r) for r in json.loads(args.from_json.read_text())]
        print(f"{markdown(ordered)}\n\n{summary(ordered)}")
        return 0
    names = sorted(p.name for p in args.corpus.glob("*.prototxt"))
    if args.only:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) or p in n for p in args.only)]
    if not names:
        parser.error(f"no prototxt in {args.corpus} matches {args.only}")
    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    rows: dict[str, Row] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            pool.submit(run_in_subprocess, n, args.corpus, args.timeout, not args.no_opencv, threads): n
            for n in names
        }
        for future in as_completed(futures):
            row = future.result()
            rows[row.file] = row
            print(
                f"[{len(rows)}/{len(names)}] {row.file}: {row.outcome} ({row.seconds:.0f} s)", file=sys.stderr
            )
    ordered = [rows[n] for n in names]
    table = markdown(ordered)
    line = summary(ordered)
    if args.out:
        args.out.write_text(f"{table}\n\n{line}\n")
    if args.json:
        data = json.dumps([asdict(r) for r in ordered], indent=1)
        if args.json == "-":
            print(data)
        else:
            Path(args.json).write_text(data + "\n")
    if not args.out and args.json != "-":
        print(table)
    print(line, file=sys.stderr if args.json == "-" else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
