"""ROIPooling against a numpy reference of Fast R-CNN's CPU loop (roi_pooling_layer.cpp facts:
round half away from zero, float32 bin sizes, floor/ceil bins, clipping, empty bins 0) and
OpenCV; the Fast R-CNN VGG16 corpus net with valid ROIs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import caffe2onnx
from caffe2onnx.errors import LayerError, ShapeError
from caffe2onnx.make_weights import make_weights
from caffe2onnx.onnx_export import to_onnx
from caffe2onnx.validation import run_onnx
from tests.helpers import CORPUS, assert_close, net_text, opencv_forward, run_net, torch_blobs, write

F32 = np.float32


def c_round(x: float) -> int:
    """C's round(): halves away from zero."""
    return math.floor(x + 0.5) if x >= 0 else math.ceil(x - 0.5)


def roi_pool(features, rois, pooled_h, pooled_w, spatial_scale):
    """Fast R-CNN's ROIPoolingLayer::Forward_cpu, one output cell at a time."""
    _, channels, height, width = features.shape
    rois = rois.reshape(-1, 5)
    out = np.empty((len(rois), channels, pooled_h, pooled_w), np.float32)
    for n, roi in enumerate(rois):
        batch = int(roi[0])
        start_w, start_h, end_w, end_h = (c_round(float(F32(v) * F32(spatial_scale))) for v in roi[1:])
        roi_h = max(end_h - start_h + 1, 1)
        roi_w = max(end_w - start_w + 1, 1)
        bin_h = F32(roi_h) / F32(pooled_h)
        bin_w = F32(roi_w) / F32(pooled_w)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                hstart = min(max(math.floor(F32(ph) * bin_h) + start_h, 0), height)
                hend = min(max(math.ceil(F32(ph + 1) * bin_h) + start_h, 0), height)
                wstart = min(max(math.floor(F32(pw) * bin_w) + start_w, 0), width)
                wend = min(max(math.ceil(F32(pw + 1) * bin_w) + start_w, 0), width)
                if hend <= hstart or wend <= wstart:
                    out[n, :, ph, pw] = 0
                else:
                    out[n, :, ph, pw] = features[batch, :, hstart:hend, wstart:wend].max(axis=(1, 2))
    return out


ROIS = np.array(
    [
        [0, 0, 0, 47, 31],  # the whole image
        [1, 5, 3, 20, 17],  # batch 1
        [0, 10, 10, 13, 12],  # small: bins shorter than one cell, overlapping bins
        [1, -20, -8, 8, 6],  # partly left of / above the map
        [0, 40, 20, 90, 70],  # partly right of / below the map
        [1, 60, 40, 80, 60],  # entirely outside: every bin empty -> 0
        [0, 9, 7, 4, 2],  # x2 < x1, y2 < y1: one-cell ROI
        [1, 2, 6, 10, 14],  # scale 0.25: 0.5, 1.5, 2.5, 3.5 -> rounded away from zero
        [0, -2, -6, 30, 22],  # scale 0.25: -0.5, -1.5 -> -1, -2
    ],
    np.float32,
)

CASES = {
    # (pooled_h, pooled_w, spatial_scale, rois shape)
    "fast_rcnn_7x7_scale_1_16": (7, 7, 0.0625, (9, 5)),
    "3x2_scale_quarter": (3, 2, 0.25, (9, 5)),
    "1x1_scale_1": (1, 1, 1.0, (9, 5)),
    "5x3_scale_half_rois_4d": (5, 3, 0.5, (9, 5, 1, 1)),
    "2x6_scale_third": (2, 6, 1 / 3, (9, 5)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_roi_pooling(case, tmp_path):
    pooled_h, pooled_w, scale, rois_shape = CASES[case]
    text = net_text(
        f"""
        layer {{ name: "roi" type: "ROIPooling" bottom: "data" bottom: "rois" top: "roi"
          roi_pooling_param {{ pooled_h: {pooled_h} pooled_w: {pooled_w} spatial_scale: {scale} }} }}
        """,
        {"data": (2, 3, 32, 48), "rois": rois_shape},
    )
    rng = np.random.default_rng(0)
    feed = {"data": rng.standard_normal((2, 3, 32, 48)).astype(np.float32), "rois": ROIS.reshape(rois_shape)}
    run = run_net(tmp_path, text, inputs=feed, make_caffemodel=False)
    expected = roi_pool(feed["data"], feed["rois"], pooled_h, pooled_w, float(np.float32(scale)))
    assert run.net.shapes["roi"] == expected.shape
    assert_close(run.onnx["roi"], expected, rtol=0, atol=0, what="onnxruntime MaxRoiPool")
    assert_close(run.torch["roi"], expected, rtol=0, atol=0, what="torch reference")
    if len(rois_shape) == 2:
        cv = opencv_forward(run.prototxt, None, feed, ["roi"])
        assert_close(cv["roi"], expected, rtol=0, atol=0, what="opencv")


def test_roi_pooling_all_negative_values(tmp_path):
    """The max starts from -FLT_MAX, not 0: negative features stay negative; empty bins are 0."""
    text = net_text(
        """
        layer { name: "roi" type: "ROIPooling" bottom: "data" bottom: "rois" top: "roi"
          roi_pooling_param { pooled_h: 4 pooled_w: 4 spatial_scale: 1 } }
        """,
        {"data": (1, 2, 6, 6), "rois": (2, 5)},
    )
    feed = {
        "data": -np.arange(1, 73, dtype=np.float32).reshape(1, 2, 6, 6),
        "rois": np.array([[0, 1, 1, 4, 3], [0, 4, 4, 9, 9]], np.float32),
    }
    run = run_net(tmp_path, text, inputs=feed, make_caffemodel=False)
    expected = roi_pool(feed["data"], feed["rois"], 4, 4, 1.0)
    assert (expected[0] < 0).all() and (expected[1] == 0).any()
    assert_close(run.onnx["roi"], expected, rtol=0, atol=0, what="onnxruntime")
    assert_close(run.torch["roi"], expected, rtol=0, atol=0, what="torch reference")


@pytest.mark.parametrize("opset", [13, 21], ids=["opset13", "opset21"])
def test_roi_pooling_at_opset(opset, tmp_path):
    text = net_text(
        """
        layer { name: "roi" type: "ROIPooling" bottom: "data" bottom: "rois" top: "roi"
          roi_pooling_param { pooled_h: 3 pooled_w: 3 spatial_scale: 0.5 } }
        """,
        {"data": (2, 3, 32, 48), "rois": (9, 5)},
    )
    feed = {"data": np.random.default_rng(1).standard_normal((2, 3, 32, 48)).astype(np.float32), "rois": ROIS}
    run = run_net(tmp_path, text, inputs=feed, make_caffemodel=False, opset=opset)
    assert run.model.opset_import[0].version == opset
    expected = roi_pool(feed["data"], ROIS, 3, 3, 0.5)
    assert_close(run.onnx["roi"], expected, rtol=0, atol=0, what=f"onnxruntime opset {opset}")


@pytest.mark.parametrize(
    ("params", "shapes", "error", "message"),
    [
        (
            "pooled_w: 7",
            ((1, 3, 8, 8), (2, 5)),
            LayerError,
            r"pooled_h and pooled_w must be > 0, got pooled_h 0",
        ),
        (
            "pooled_h: 2 pooled_w: 2",
            ((1, 3, 8, 8), (2, 4)),
            ShapeError,
            r"ROIs \(bottom 1\) must be \[R, 5\]",
        ),
        ("pooled_h: 2 pooled_w: 2", ((3, 8, 8), (2, 5)), ShapeError, r"needs 4-D features"),
    ],
    ids=["no_pooled_h", "rois_width", "features_rank"],
)
def test_roi_pooling_bad_parameters(params, shapes, error, message, tmp_path):
    text = net_text(
        f"""
        layer {{ name: "roi" type: "ROIPooling" bottom: "data" bottom: "rois" top: "roi"
          roi_pooling_param {{ {params} }} }}
        """,
        {"data": shapes[0], "rois": shapes[1]},
    )
    with pytest.raises(error, match=rf"layer 'roi' \(ROIPooling\): {message}"):
        caffe2onnx.load_net(write(tmp_path, text))


def test_fast_rcnn_vgg16(tmp_path):
    """Fast R-CNN (VGG16) with two inputs, cut after the ROI pooling (pool5): the fully
    connected head has 120M parameters and adds nothing ROIPooling-specific."""
    prototxt = CORPUS / "fast_rcnn_vgg16_voc.test.prototxt"
    shapes = {"data": (1, 3, 64, 80), "rois": (4, 5)}  # a small image; the ROIs are in image pixels
    text = prototxt.read_text()
    head = text.index('layer {\n  name: "fc6"')
    cut = write(tmp_path, text[:head], "fast_rcnn_to_pool5.prototxt")
    caffemodel = tmp_path / "fast_rcnn.caffemodel"
    make_weights(cut, caffemodel, seed=1, input_shapes=shapes)
    net = caffe2onnx.load_net(cut, caffemodel, input_shapes=shapes)
    assert net.outputs == ("pool5",)
    rois = np.array(
        [[0, 0, 0, 79, 63], [0, 8, 4, 40, 30], [0, 50, 20, 78, 62], [0, 33, 33, 35, 34]], np.float32
    )
    inputs = {
        "data": np.random.default_rng(0).standard_normal(shapes["data"]).astype(np.float32),
        "rois": rois,
    }
    tensors = [top for layer in net.layers for top in layer.tops]
    ours = run_onnx(to_onnx(net), inputs, tensors)
    reference = torch_blobs(net, inputs)
    for tensor in tensors:
        assert_close(ours[tensor], reference[tensor], rtol=1e-3, what=f"{tensor}: onnx vs torch")
    expected = roi_pool(ours["conv5_3"], rois, 7, 7, 0.0625)
    assert_close(ours["pool5"], expected, rtol=0, atol=0, what="pool5 vs numpy on our conv5_3")
    cv = opencv_forward(cut, caffemodel, inputs, ["roi_pool5"])["roi_pool5"]  # OpenCV names layers
    assert_close(ours["pool5"], cv, rtol=1e-3, what="pool5 vs opencv")


def test_fast_rcnn_vgg16_whole_net_shapes():
    """The whole test net (with its 120M-parameter head) parses and infers Caffe's shapes."""
    prototxt = CORPUS / "fast_rcnn_vgg16_voc.test.prototxt"
    net = caffe2onnx.load_net(prototxt, input_shapes={"rois": (300, 5)}, require_weights=False)
    assert net.shapes["pool5"] == (300, 512, 7, 7)
    assert net.shapes["cls_prob"] == (300, 21) and net.shapes["bbox_pred"] == (300, 84)
