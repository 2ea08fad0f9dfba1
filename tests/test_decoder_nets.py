"""Real segmentation / decoder nets of ../shared/corpus: make-weights caffemodels, ONNX vs torch vs OpenCV.

Each net gets a seeded random caffemodel written by ``make_weights`` (the real binary
path), is converted, and runs in onnxruntime with every blob exposed. The PyTorch
reference then runs layer by layer and every blob is compared with the criterion of
``caffe2onnx.validation.compare_net`` (``compare_arrays``: max abs error within
``atol + rtol * max |ref|``, rtol 1e-4). Where OpenCV 4.x can run the net, its forward of
the same caffemodel is a second, independent reference (every layer it reports).

Why not ``compare_net`` itself: the reference here runs in a lean loop that frees each
tensor after its last use (PSPNet-101 at 713x713 would otherwise hold ~18 GB), and it
keeps argmax ties in step. A MAX Pooling mask is an argmax; at SegNet/DeconvNet sizes a
few windows hold two values that differ by ~1e-7 relative, and onnxruntime and PyTorch
(whose convolutions differ in the last bits) pick different ones. Such a flip is checked
to be a near-tie (both chosen inputs equal within the tolerance); the reference then
continues with onnxruntime's choice, so a real indexing bug still fails.

Input sizes: a net's own size where the architecture fixes it (Upsample/Unpooling target
sizes, pyramid pooling kernels, Interp sizes, fc6 on a 7x7 pool5); a small size where it
is fully convolutional. ``NETS`` states the size used and why. ``tools/net_matrix.py``
runs the same list and prints the pass matrix.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from caffe2onnx.errors import ShapeError
from caffe2onnx.ir import Net
from caffe2onnx.make_weights import make_weights
from caffe2onnx.onnx_export import DEFAULT_OPSET, to_onnx
from caffe2onnx.parser import load_net
from caffe2onnx.prototxt import read_prototxt
from caffe2onnx.validation import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    BlobComparison,
    ValidationReport,
    argmax_near_ties,
    compare_layerwise,
    random_inputs,
    run_onnx,
)
from tests.helpers import CORPUS

# ----------------------------------------------------------------------------- the nets


def as_test_phase_deploy(prototxt: Path, input_shapes: Mapping[str, Sequence[int]], out: Path) -> Path:
    """What Caffe runs in phase TEST with data layers replaced by inputs (for OpenCV).

    OpenCV does no phase filtering (ERFNet's TRAIN/TEST BatchNorm pairs crash it) and
    cannot create data or loss layers (FCN val nets).
    """
    net = read_prototxt(prototxt)

    def in_test(lp) -> bool:
        if any(r.HasField("phase") and r.phase == 1 for r in lp.exclude):
            return False
        return not lp.include or any(not r.HasField("phase") or r.phase == 1 for r in lp.include)

    keep = []
    for lp in net.layer:
        is_data = not lp.bottom and any(top in input_shapes for top in lp.top) and lp.type != "Input"
        if in_test(lp) and not is_data and not lp.type.endswith("Loss") and lp.type != "Accuracy":
            keep.append(lp)
    del net.layer[:]
    net.layer.extend(keep)
    declared = set(net.input) | {t for lp in keep if lp.type == "Input" for t in lp.top}
    for name, shape in input_shapes.items():
        if name not in declared:
            net.input.append(name)
            net.input_shape.add().dim.extend(shape)
    out.write_text(text_format.MessageToString(net))
    return out


def hole_as_dilation(prototxt: Path, input_shapes: Mapping[str, Sequence[int]], out: Path) -> Path:
    """DeepLab v1's ``hole`` is upstream's ``dilation`` (OpenCV's proto only knows the latter)."""
    out.write_text(re.sub(r"\bhole:", "dilation:", prototxt.read_text()))
    return out


@dataclass(frozen=True)
class DecoderNet:
    file: str
    input_shapes: dict[str, tuple[int, ...]]
    size_note: str
    python_layers: dict[str, str] | None = None
    #: None: OpenCV runs the prototxt (through ``opencv_prototxt`` if given); else why not
    no_opencv: str | None = None
    opencv_prototxt: Callable[[Path, Mapping[str, Sequence[int]], Path], Path] | None = None
    #: compare these blobs only (None: all): for nets too big to hold every blob
    sample_blobs: Callable[[Net], list[str]] | None = None
    #: layers to convert with another handler (``--layer-type``)
    layer_types: dict[str, str] | None = None
    slow: bool = False


def pspnet_sample(net: Net) -> list[str]:
    """Every 25th layer of the backbone, the whole pyramid pooling module, the outputs."""
    picked = []
    for i, layer in enumerate(net.layers):
        if i % 25 == 0 or layer.type in ("Pooling", "Interp", "Concat"):
            picked.extend(layer.tops)
    return list(dict.fromkeys([*picked, *net.outputs]))


NO_CV_FORK_BN = "OpenCV cannot import the fork BN layer's bn_param (unknown field)"
NO_CV_UPSAMPLE = "OpenCV has no Upsample layer"

NETS: dict[str, DecoderNet] = {
    "fcn8s": DecoderNet(
        "fcn8s_pascal.deploy.prototxt",
        {"data": (1, 3, 64, 64)},
        "fully convolutional (pad 100; crop offsets fixed in the prototxt)",
    ),
    "fcn16s_val": DecoderNet(
        "fcn16s_pascal.val.prototxt",
        {"data": (1, 3, 64, 64)},
        "fully convolutional; Python data layer replaced by an input",
        opencv_prototxt=as_test_phase_deploy,
    ),
    "fcn32s_val": DecoderNet(
        "fcn32s_pascal.val.prototxt",
        {"data": (1, 3, 64, 64)},
        "fully convolutional; Python data layer replaced by an input",
        opencv_prototxt=as_test_phase_deploy,
    ),
    "fcn8s_deconvnet_repo_v1": DecoderNet(
        "fcn8s_pascal_deconvnetrepo.deploy.prototxt",
        {"data": (1, 3, 64, 64)},
        "fully convolutional; V1 CROP without crop_param (automatic offsets)",
        no_opencv="V1 enum CROP does not parse in OpenCV, which also computes no automatic Crop offsets",
    ),
    "segnet_pascal": DecoderNet(
        "segnet_pascal.deploy.prototxt",
        {"data": (1, 3, 64, 64)},
        "any multiple of 32 (Upsample scale 2 after 5 poolings)",
        no_opencv=f"{NO_CV_FORK_BN}; {NO_CV_UPSAMPLE}",
    ),
    "segnet_camvid": DecoderNet(
        "segnet_camvid.inference.prototxt",
        {"data": (1, 3, 360, 480)},
        "real size: upsample_h/w 23x30 and 45x60 are fixed",
        no_opencv=f"{NO_CV_FORK_BN}; {NO_CV_UPSAMPLE}",
    ),
    "segnet_basic_camvid": DecoderNet(
        "segnet_basic_camvid.inference.prototxt",
        {"data": (1, 3, 120, 160)},
        "H/8 odd (upsample4 pad_out_h), W/16 whole",
        no_opencv=f"{NO_CV_FORK_BN}; {NO_CV_UPSAMPLE}",
    ),
    "bayesian_segnet_camvid": DecoderNet(
        "bayesian_segnet_camvid.inference.prototxt",
        {"data": (1, 3, 360, 480)},
        "real size (fixed upsample_h/w); batch 1 instead of 4 MC samples, Dropout is the identity",
        no_opencv=f"{NO_CV_FORK_BN}; {NO_CV_UPSAMPLE}",
    ),
    "enet": DecoderNet(
        "enet_cityscapes.deploy.prototxt",
        {"data": (1, 3, 128, 256)},
        "fully convolutional (real 512x1024, same aspect)",
        python_layers={"spatial_dropout.SpatialDropoutLayer": "Dropout"},
        no_opencv=f"{NO_CV_FORK_BN}; Python SpatialDropout layers; {NO_CV_UPSAMPLE}",
    ),
    "deconvnet_v1": DecoderNet(
        "deconvnet_pascal.deploy.prototxt",
        {"data": (1, 3, 224, 224)},
        "real size: fc6 is 7x7 on pool5, unpool_size fixed",
        no_opencv="V1 enums BN and UNPOOLING do not parse in OpenCV",
    ),
    "hed": DecoderNet(
        "hed_bsds.train_val.prototxt",
        {"data": (1, 3, 128, 128)},
        "fully convolutional; data layer replaced by an input; Crop without crop_param",
        no_opencv=(
            "OpenCV computes no automatic Crop offsets (as a TEST-phase deploy it diverges at the "
            "dsn5 Crop, 2.7 rel) and cannot tell HED's five Crop layers named 'crop' apart"
        ),
    ),
    "dilation8": DecoderNet(
        "dilation8_pascal_voc.deploy.prototxt",
        {"data": (1, 3, 412, 412)},
        "unpadded front end: at least 376 (real 900); 412 gives a 5x5 output",
    ),
    "erfnet": DecoderNet(
        "erfnet_cityscapes.deploy.prototxt",
        {"data": (1, 3, 128, 256)},
        "fully convolutional (real 512x1024, same aspect)",
        opencv_prototxt=as_test_phase_deploy,
    ),
    "pspnet50_ade20k": DecoderNet(
        "pspnet50_ade20k.deploy.prototxt",
        {"data": (1, 3, 473, 473)},
        "real size: pyramid pooling kernels 60/30/20/10 and Interp 60x60 are fixed",
        no_opencv=NO_CV_FORK_BN,
        slow=True,
    ),
    "pspnet101_cityscapes": DecoderNet(
        "pspnet101_cityscapes.deploy.prototxt",
        {"data": (1, 3, 713, 713)},
        "real size: pyramid pooling kernels and Interp 90x90 are fixed; "
        "outputs + pyramid module + every 25th layer compared (all blobs would need ~18 GB)",
        no_opencv=NO_CV_FORK_BN,
        sample_blobs=pspnet_sample,
        slow=True,
    ),
    "icnet_bnnomerge": DecoderNet(
        "icnet_cityscapes_bnnomerge.deploy.prototxt",
        {"data": (1, 3, 1025, 2049)},
        "real size: Interp height/width 33x65 and pooling kernels are fixed",
        no_opencv=f"{NO_CV_FORK_BN}; OpenCV's Interp has no shrink_factor",
        slow=True,
    ),
    "deeplab_v1_v1format": DecoderNet(
        "deeplabv1_vgg128_noup_voc12_v1format.deploy.prototxt",
        {"data": (1, 3, 64, 64)},
        "fully convolutional (real 10x3x321x321); the V1 hole field",
        opencv_prototxt=hole_as_dilation,
    ),
    "yolov3_416": DecoderNet(
        "yolov3_416.deploy.prototxt",
        {"data": (1, 3, 128, 128)},
        "fully convolutional, any multiple of 32 (real 416)",
        no_opencv=NO_CV_UPSAMPLE,
    ),
    "yolov3_tiny": DecoderNet(
        "yolov3_tiny.deploy.prototxt",
        {"data": (1, 3, 416, 416)},
        "real size",
        no_opencv=NO_CV_UPSAMPLE,
        # The port's Caffe fork keeps darknet's size for its stride-1 max pooling (13 -> 13,
        # stock Caffe 12): see test_yolov3_tiny_needs_darknet_pooling.
        layer_types={"layer12-maxpool": "DarknetPooling"},
    ),
    "segflow": DecoderNet(
        "segflow_x2paddle.deploy.prototxt",
        {"data": (1, 3, 160, 288), "data2": (1, 3, 192, 320)},
        "crop offsets fixed: data H,W = 8 mod 64 style sizes; data2 = data rounded up to 64 (real 480x854, 512x896)",
    ),
}

# ----------------------------------------------------------------------------- running one net


@dataclass
class NetResult:
    key: str
    sizes: str
    torch: ValidationReport
    opencv: ValidationReport | None
    opencv_note: str
    seconds: float
    notes: list[str] = field(default_factory=list)


def _row(layer, top, depth, ours, ref, reference, output, rtol, atol) -> BlobComparison:
    return BlobComparison.of(
        layer, top, ours, ref, rtol=rtol, atol=atol, reference=reference, depth=depth, output=output
    )


def compare_with_opencv(
    net: Net,
    prototxt: Path,
    caffemodel: Path,
    feed: Mapping[str, np.ndarray],
    onnx_values: Mapping[str, np.ndarray],
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ValidationReport:
    """OpenCV's forward of the same caffemodel: every layer it reports (first top)."""
    from caffe2onnx.opencv_ref import OpenCVReference

    expected = OpenCVReference(net, prototxt, caffemodel).run(feed)
    rows = []
    for depth, layer in enumerate(net.layers, start=1):
        top = layer.tops[0] if layer.tops else None
        if top is None or top not in expected or top not in onnx_values or top in feed:
            continue
        ours, ref = onnx_values[top], np.asarray(expected[top])
        if ours.shape != ref.shape and ours.size == ref.size:
            ref = ref.reshape(ours.shape)
        rows.append(_row(layer, top, depth, ours, ref, "opencv", top in net.outputs, rtol, atol))
    return ValidationReport(rows=rows, rtol=rtol, atol=atol, references=("opencv",))


def sizes_of(spec: DecoderNet) -> str:
    return ", ".join("x".join(map(str, shape)) for shape in spec.input_shapes.values())


def run_decoder_net(key: str, workdir: Path, *, opencv: bool = True, opset: int = DEFAULT_OPSET) -> NetResult:
    """make-weights, convert, run onnxruntime, compare with torch (and OpenCV)."""
    spec = NETS[key]
    start = time.perf_counter()
    prototxt = CORPUS / spec.file
    caffemodel = workdir / f"{key}.caffemodel"
    options = dict(
        input_shapes=spec.input_shapes, python_layers=spec.python_layers, layer_types=spec.layer_types
    )
    make_weights(prototxt, caffemodel, seed=1, **options)
    net = load_net(prototxt, caffemodel, **options)
    model = to_onnx(net, opset)
    feed = random_inputs(net, seed=0)
    tensors = spec.sample_blobs(net) if spec.sample_blobs else [t for layer in net.layers for t in layer.tops]
    onnx_values = run_onnx(model, feed, tensors)
    del model
    torch_report = compare_layerwise(net, feed, onnx_values)
    cv_report, cv_note = None, spec.no_opencv or "disabled"
    if opencv and spec.no_opencv is None:
        cv_prototxt = prototxt
        if spec.opencv_prototxt is not None:
            cv_prototxt = spec.opencv_prototxt(
                prototxt, spec.input_shapes, workdir / f"{key}.opencv.prototxt"
            )
        cv_report = compare_with_opencv(net, cv_prototxt, caffemodel, feed, onnx_values)
        cv_note = "" if spec.opencv_prototxt is None else f"via {spec.opencv_prototxt.__name__}"
    caffemodel.unlink()
    return NetResult(
        key, sizes_of(spec), torch_report, cv_report, cv_note, time.perf_counter() - start, list(net.notes)
    )


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("decoder_nets")


def _params():
    for key, spec in NETS.items():
        marks = [pytest.mark.slow] if spec.slow else []
        yield pytest.param(key, marks=marks, id=key)


@pytest.mark.parametrize("key", list(_params()))
def test_decoder_net_matches_torch_and_opencv(key, workdir):
    result = run_decoder_net(key, workdir)
    assert result.torch.passed, f"{key} vs torch:\n{result.torch.summary()}"
    assert any(row.output for row in result.torch.rows), "no net output was compared"
    if result.opencv is not None:
        assert result.opencv.passed, f"{key} vs OpenCV:\n{result.opencv.summary()}\n{result.opencv.table()}"
        assert any(row.output for row in result.opencv.rows), "OpenCV returned no net output"


@pytest.mark.parametrize("opset", [13, 21], ids=["opset13", "opset21"])
@pytest.mark.parametrize("key", ["segnet_basic_camvid", "enet"])
def test_mask_unpooling_nets_at_opset_bounds(key, opset, workdir):
    result = run_decoder_net(key, workdir, opencv=False, opset=opset)
    assert result.torch.passed, result.torch.summary()


def testargmax_near_ties_accepts_near_ties_and_rejects_wrong_indices():
    x = np.zeros((1, 2, 2, 2), np.float32)
    x[0, 0] = [[1.0, 1.0 + 1e-7], [0.0, 0.0]]
    x[0, 1] = [[0.0, 0.5], [2.0, 0.0]]
    ref = np.array([[[[1.0]], [[2.0]]]], np.float32)  # the argmax of each 2x2 plane
    tie = np.array([[[[0.0]], [[2.0]]]], np.float32)  # plane 0 picks its near-equal neighbour
    assert argmax_near_ties(x, ref, ref, 1e-4, 1e-6) == (0, 0.0)
    count, gap = argmax_near_ties(x, tie, ref, 1e-4, 1e-6)
    assert count == 1 and 0 < gap < 1e-6
    wrong = np.array([[[[1.0]], [[1.0]]]], np.float32)  # plane 1: 0.5 is not the max 2.0
    assert argmax_near_ties(x, wrong, ref, 1e-4, 1e-6) is None
    outside = np.array([[[[4.0]], [[2.0]]]], np.float32)  # not an index of a 2x2 plane
    assert argmax_near_ties(x, outside, ref, 1e-4, 1e-6) is None


def test_test_phase_deploy_drops_data_loss_and_train_layers(tmp_path):
    derived = as_test_phase_deploy(
        CORPUS / "fcn32s_pascal.val.prototxt", {"data": (1, 3, 64, 64)}, tmp_path / "deploy.prototxt"
    )
    net = read_prototxt(derived)
    types = {lp.type for lp in net.layer}
    assert "Python" not in types and "SoftmaxWithLoss" not in types and "Deconvolution" in types
    assert list(net.input) == ["data"] and list(net.input_shape[0].dim) == [1, 3, 64, 64]
    erfnet = read_prototxt(
        as_test_phase_deploy(CORPUS / "erfnet_cityscapes.deploy.prototxt", {}, tmp_path / "erfnet.prototxt")
    )
    names = [lp.name for lp in erfnet.layer]
    assert len(names) == len(set(names)), "TRAIN-phase duplicates must be gone"


def test_yolov3_tiny_needs_darknet_pooling_and_the_error_says_so():
    """Stock Caffe shrinks layer12-maxpool (k2 s1) 13 -> 12, so the route concat fails; the
    error names the pooling layer and the --layer-type that keeps darknet's rule."""
    with pytest.raises(ShapeError, match=r"layer21-route[\s\S]*--layer-type layer12-maxpool=DarknetPooling"):
        load_net(
            CORPUS / "yolov3_tiny.deploy.prototxt",
            input_shapes={"data": (1, 3, 416, 416)},
            require_weights=False,
        )
    net = load_net(
        CORPUS / "yolov3_tiny.deploy.prototxt",
        input_shapes={"data": (1, 3, 416, 416)},
        layer_types={"layer12-maxpool": "DarknetPooling"},
        require_weights=False,
    )
    assert net.shapes[net.layer("layer12-maxpool").tops[0]] == (1, 512, 13, 13)
