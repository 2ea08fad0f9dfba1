"""The sample nets in prototxt/: the decoder designs of "The Devil is in the Decoder" and
small FCN / SegNet / ENet / DeconvNet / DeepLab-PSPNet / YOLO / U-Net style nets.

Every sample gets a make-weights caffemodel (the real binary path), is converted, and is
compared blob by blob with the PyTorch reference (``compare_net``, errors relative to each
blob's largest magnitude). Where OpenCV 4.x's independent Caffe importer can run the net,
its final outputs are compared too. The expected shapes below are worked out by hand from
the net definitions (each prototxt's comments show the arithmetic), not read back from the
converter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from caffe2onnx.cli import main
from caffe2onnx.ir import Net
from caffe2onnx.make_weights import make_weights
from caffe2onnx.onnx_export import to_onnx
from caffe2onnx.parser import load_net
from caffe2onnx.validation import compare_arrays, compare_net, random_inputs, run_onnx
from tests.helpers import SAMPLES, assert_close, opencv_forward

SAMPLE_FILES = sorted(SAMPLES.glob("*.prototxt"))
RTOL = 1e-4

# layer name -> shape of its (first) top, per sample (file stem).
EXPECTED_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "lenet_sample": {"conv1": (1, 8, 24, 24), "pool1": (1, 8, 12, 12), "prob": (1, 10)},
    "decoder_transposed": {
        "conv3": (1, 32, 16, 16),
        "up1": (1, 16, 32, 32),
        "up2": (1, 8, 64, 64),
        "prob": (1, 5, 64, 64),
    },
    "decoder_decomposed_transposed": {
        "up1_v": (1, 16, 32, 16),
        "up1_h": (1, 16, 32, 32),
        "up2_v": (1, 8, 64, 32),
        "up2_h": (1, 8, 64, 64),
        "prob": (1, 5, 64, 64),
    },
    "decoder_separable_transposed": {
        "up1_dw": (1, 32, 32, 32),
        "up1_pw": (1, 16, 32, 32),
        "up2_dw": (1, 16, 64, 64),
        "up2_pw": (1, 8, 64, 64),
        "prob": (1, 5, 64, 64),
    },
    "decoder_depth_to_space": {
        "up1_conv": (1, 64, 16, 16),
        "up1": (1, 16, 32, 32),
        "up2_conv": (1, 32, 32, 32),
        "up2": (1, 8, 64, 64),
        "prob": (1, 5, 64, 64),
    },
    "decoder_bilinear": {
        "pool1": (1, 16, 33, 33),
        "pool2": (1, 32, 17, 17),
        "up1": (1, 32, 33, 33),  # zoom 2: (17 - 1) * 2 + 1
        "up1_conv": (1, 16, 33, 33),
        "up2": (1, 16, 65, 65),  # height/width 65
        "prob": (1, 5, 65, 65),
    },
    "decoder_bilinear_fcn_deconv": {
        "up1": (1, 32, 32, 32),
        "up1_conv": (1, 16, 32, 32),
        "up2": (1, 16, 64, 64),
        "up2_conv": (1, 8, 64, 64),
        "prob": (1, 5, 64, 64),
    },
    "decoder_bilinear_additive": {
        "conv3": (1, 64, 16, 16),
        "up1": (1, 64, 32, 32),
        "up1_sum": (1, 16, 32, 32),
        "up2": (1, 16, 64, 64),
        "up2_sum": (1, 8, 64, 64),
        "prob": (1, 5, 64, 64),
    },
    "decoder_residual": {
        "up1_bilinear": (1, 64, 32, 32),
        "up1_additive": (1, 16, 32, 32),
        "up1_deconv": (1, 16, 32, 32),
        "up1": (1, 16, 32, 32),
        "up2_bilinear": (1, 16, 64, 64),
        "up2_additive": (1, 8, 64, 64),
        "up2_deconv": (1, 8, 64, 64),
        "up2": (1, 8, 64, 64),
        "prob": (1, 5, 64, 64),
    },
    "fcn_style": {
        "conv1": (1, 8, 262, 262),  # 64 + 2 * 100 - 3 + 1
        "pool1": (1, 8, 131, 131),
        "pool2": (1, 16, 66, 66),
        "pool3": (1, 16, 33, 33),
        "pool4": (1, 32, 17, 17),
        "pool5": (1, 32, 9, 9),
        "fc6": (1, 64, 3, 3),
        "score_fr": (1, 5, 3, 3),
        "upscore2": (1, 5, 8, 8),
        "score_pool4c": (1, 5, 8, 8),
        "upscore_pool4": (1, 5, 18, 18),
        "score_pool3c": (1, 5, 18, 18),
        "upscore8": (1, 5, 152, 152),
        "score": (1, 5, 64, 64),
    },
    "segnet_style": {
        "pool1": (1, 16, 23, 32),
        "pool2": (1, 32, 12, 16),
        "pool3": (1, 32, 6, 8),
        "upsample3": (1, 32, 12, 16),
        "upsample2": (1, 32, 23, 32),  # upsample_h / upsample_w
        "upsample1": (1, 16, 45, 64),  # pad_out_h: 2 * 23 - 1
        "prob": (1, 5, 45, 64),
    },
    "enet_style": {
        "concat0_1": (1, 16, 32, 32),
        "pool1_0_4": (1, 16, 16, 16),
        "eltwise1_0_4": (1, 32, 16, 16),
        "conv1_1_1": (1, 8, 16, 16),
        "conv1_2_1_a": (1, 8, 16, 16),
        "conv1_2_1": (1, 8, 16, 16),
        "eltwise1_2_3": (1, 32, 16, 16),
        "upsample2_0_4": (1, 16, 32, 32),
        "conv2_0_1": (1, 4, 32, 32),
        "eltwise2_0_4": (1, 16, 32, 32),
        "fullconv": (1, 5, 64, 64),
        "prob": (1, 5, 64, 64),
    },
    "deconvnet_style": {
        "pool1": (1, 16, 32, 32),
        "pool3": (1, 32, 8, 8),
        "fc6": (1, 64, 1, 1),
        "fc6-deconv": (1, 32, 8, 8),
        "unpool3": (1, 32, 16, 16),
        "unpool2": (1, 32, 32, 32),
        "unpool1": (1, 16, 64, 64),
        "seg-score": (1, 5, 64, 64),
        "prob": (1, 5, 64, 64),
    },
    "deeplab_pspnet_style": {
        "pool1": (1, 16, 45, 45),
        "pool2": (1, 32, 23, 23),
        "pool3": (1, 64, 12, 12),
        "conv5": (1, 64, 12, 12),
        "conv5_pool1": (1, 64, 1, 1),
        "conv5_pool2": (1, 64, 2, 2),
        "conv5_pool3": (1, 64, 3, 3),
        "conv5_pool6": (1, 64, 6, 6),
        "conv5_pool6_interp": (1, 16, 12, 12),
        "conv5_concat": (1, 128, 12, 12),
        "score": (1, 5, 12, 12),
        "score_interp": (1, 5, 89, 89),  # zoom 8: (12 - 1) * 8 + 1
        "prob": (1, 5, 89, 89),
    },
    "yolo_style": {
        "pool3": (1, 64, 8, 8),
        "yolo1": (1, 21, 8, 8),
        "upsample": (1, 32, 16, 16),
        "route": (1, 96, 16, 16),
        "yolo2": (1, 21, 16, 16),
    },
    "unet_style": {
        "conv1_b": (1, 8, 64, 64),
        "pool1": (1, 8, 32, 32),
        "conv2_b": (1, 16, 28, 28),
        "conv3_b": (1, 32, 10, 10),
        "up2": (1, 16, 20, 20),
        "crop2": (1, 16, 20, 20),
        "concat2": (1, 32, 20, 20),
        "conv4_b": (1, 16, 16, 16),
        "up1": (1, 8, 32, 32),
        "crop1": (1, 8, 32, 32),
        "concat1": (1, 16, 32, 32),
        "conv5_b": (1, 8, 28, 28),
        "prob": (1, 2, 28, 28),
    },
}

# Samples OpenCV 4.x cannot run as a whole, and why.
OPENCV_CANNOT_RUN = {
    "decoder_depth_to_space": "OpenCV's Caffe importer has no PixelShuffle",
    "segnet_style": "OpenCV has no SegNet Upsample and no fork BN",
    "enet_style": "OpenCV has no SegNet Upsample and no fork BN",
    "deconvnet_style": "OpenCV's V1 parser rejects the fork enums BN and UNPOOLING",
    "yolo_style": "OpenCV's Caffe importer has no Upsample",
    "fcn_style": "automatic Crop offsets: OpenCV uses BVLC's offset 0 (see test_fcn_style_vs_opencv)",
}


@dataclass
class Converted:
    net: Net
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    prototxt: Path
    caffemodel: Path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Convert each sample once (with a make-weights caffemodel) for all tests here."""
    cache: dict[str, Converted] = {}
    folder = tmp_path_factory.mktemp("sample_weights")

    def get(prototxt: Path) -> Converted:
        if prototxt.stem not in cache:
            caffemodel = folder / f"{prototxt.stem}.caffemodel"
            make_weights(prototxt, caffemodel, seed=1)
            net = load_net(prototxt, caffemodel)
            cache[prototxt.stem] = Converted(net, to_onnx(net), random_inputs(net, 0), prototxt, caffemodel)
        return cache[prototxt.stem]

    return get


def test_every_sample_is_listed():
    assert SAMPLE_FILES, f"no sample nets in {SAMPLES}"
    missing = [p.stem for p in SAMPLE_FILES if p.stem not in EXPECTED_SHAPES]
    assert not missing, f"add the expected shapes of {missing} to EXPECTED_SHAPES"


@pytest.mark.parametrize("prototxt", SAMPLE_FILES, ids=[p.stem for p in SAMPLE_FILES])
def test_sample_shapes(prototxt, converted):
    net = converted(prototxt).net
    for layer_name, shape in EXPECTED_SHAPES[prototxt.stem].items():
        got = tuple(net.shapes[net.layer(layer_name).tops[0]])
        assert got == shape, f"{prototxt.name}: layer '{layer_name}' gives {got}, expected {shape}"


@pytest.mark.parametrize("prototxt", SAMPLE_FILES, ids=[p.stem for p in SAMPLE_FILES])
def test_sample_onnx_matches_torch(prototxt, converted):
    c = converted(prototxt)
    report = compare_net(c.net, c.model, inputs=c.inputs, rtol=RTOL)
    assert report.passed, f"{prototxt.name}\n{report.summary()}"
    compared = {row.tensor for row in report.rows}
    assert set(c.net.outputs) <= compared, "every graph output is compared"


OPENCV_SAMPLES = [p for p in SAMPLE_FILES if p.stem not in OPENCV_CANNOT_RUN]


@pytest.mark.parametrize("prototxt", OPENCV_SAMPLES, ids=[p.stem for p in OPENCV_SAMPLES])
def test_sample_onnx_matches_opencv(prototxt, converted):
    """Only where OpenCV can run the net (OPENCV_CANNOT_RUN says why the others cannot)."""
    c = converted(prototxt)
    producers = c.net.producer()
    layers = [producers[out].caffe_name or producers[out].name for out in c.net.outputs]
    reference = opencv_forward(c.prototxt, c.caffemodel, c.inputs, layers)
    ours = run_onnx(c.model, c.inputs)
    for out, layer in zip(c.net.outputs, layers):
        assert_close(ours[out], reference[layer].reshape(ours[out].shape), rtol=RTOL, atol=1e-6, what=out)


def test_fcn_style_vs_opencv(converted):
    """OpenCV matches up to ``upscore8``; its offset-0 crop differs from the derived offset 31."""
    c = converted(SAMPLES / "fcn_style.prototxt")
    assert c.net.layer("score").params.offsets == (31,)  # FCN-8s's value, by hand in the prototxt
    reference = opencv_forward(c.prototxt, c.caffemodel, c.inputs, ["upscore8", "score"])
    ours = run_onnx(c.model, c.inputs, ["upscore8"])
    assert_close(ours["upscore8"], reference["upscore8"], rtol=RTOL, atol=1e-6, what="upscore8")
    assert_close(reference["score"], ours["upscore8"][:, :, :64, :64], what="OpenCV crops at offset 0")
    assert_close(ours["score"], ours["upscore8"][:, :, 31:95, 31:95], what="our crop at offset 31")
    _, _, same = compare_arrays(ours["score"], reference["score"], RTOL, 1e-6)
    assert not same, "the two offsets give different maps"


def test_bilinear_additive_filler_weights_sum_channel_groups():
    """Without a caffemodel the fixed 1x1 conv is filled from its constant filler (all 1s)."""
    net = load_net(SAMPLES / "decoder_bilinear_additive.prototxt", random_weights=0)
    for name, groups in (("up1_sum", 16), ("up2_sum", 8)):
        layer = net.layer(name)
        assert layer.weights_from == "filler"
        np.testing.assert_array_equal(layer.weights[0], np.ones((groups, layer.weights[0].shape[1], 1, 1)))
    inputs = random_inputs(net, 0)
    blobs = run_onnx(to_onnx(net), inputs, ["up1", "up1_sum"])
    up1 = blobs["up1"]  # (1, 64, 32, 32): every 4 consecutive channels are summed
    expected = up1.reshape(1, 16, 4, 32, 32).sum(axis=2)
    assert_close(blobs["up1_sum"], expected, what="up1_sum vs numpy channel-group sum")


def _half_pixel_bilinear_x2(x: np.ndarray) -> np.ndarray:
    """Bilinear x2 resize with half-pixel centres (align_corners=False), edges clamped."""

    def axis_weights(n: int) -> np.ndarray:
        src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        m = np.zeros((2 * n, n))
        m[np.arange(2 * n), lo] += 1 - (src - lo)
        m[np.arange(2 * n), hi] += src - lo
        return m

    rows, cols = axis_weights(x.shape[2]), axis_weights(x.shape[3])
    return np.einsum("oh,nchw,pw->ncop", rows, x.astype(np.float64), cols)


def test_fcn_bilinear_deconv_is_bilinear_resize_inside():
    """The FCN recipe (k4 s2 p1, bilinear filler) equals half-pixel bilinear x2 except at the border."""
    net = load_net(SAMPLES / "decoder_bilinear_fcn_deconv.prototxt", random_weights=0)
    up1 = net.layer("up1")
    assert up1.weights_from == "filler"
    profile = np.array([0.25, 0.75, 0.75, 0.25])  # FCN's upsample_filt(4)
    np.testing.assert_allclose(up1.weights[0][3, 0], np.outer(profile, profile), rtol=1e-7)
    inputs = random_inputs(net, 0)
    blobs = run_onnx(to_onnx(net), inputs, ["conv3", "up1"])
    expected = _half_pixel_bilinear_x2(blobs["conv3"])
    f = 2  # the first and last `factor` rows/columns see the zero padding
    assert_close(blobs["up1"][:, :, f:-f, f:-f], expected[:, :, f:-f, f:-f], what="interior")
    border = np.abs(blobs["up1"][:, :, 0] - expected[:, :, 0]).max()
    assert border > 1e-3, "the border differs (zero padding vs clamping)"


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("stem", ["segnet_style", "decoder_residual"])
def test_sample_at_opset(stem, opset, converted):
    c = converted(SAMPLES / f"{stem}.prototxt")
    report = compare_net(c.net, to_onnx(c.net, opset), inputs=c.inputs, rtol=RTOL)
    assert report.passed, report.summary()


@pytest.mark.parametrize("stem", ["fcn_style", "segnet_style"])
def test_readme_command(stem, tmp_path, capsys):
    """``caffe2onnx convert prototxt/<file> --random-weights 0 -o x.onnx --validate``."""
    out = tmp_path / "x.onnx"
    code = main(
        ["convert", str(SAMPLES / f"{stem}.prototxt"), "--random-weights", "0", "-o", str(out), "--validate"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "PASS" in captured.out
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
