"""SSD layers (Permute, Normalize, PriorBox, DetectionOutput) against numpy references
written from the spec and the SSD fork's facts (tests/reference_ssd.py) and OpenCV; the
SSD300 and MobileNet-SSD corpus nets end to end."""

from __future__ import annotations

import numpy as np
import pytest

import caffe2onnx
from caffe2onnx.errors import LayerError, ShapeError
from caffe2onnx.make_weights import make_weights
from caffe2onnx.onnx_export import to_onnx
from caffe2onnx.validation import run_onnx
from tests.helpers import CORPUS, assert_close, net_text, opencv_forward, run_net, torch_blobs, write
from tests.reference_ssd import detection_output, normalize, padded, prior_box

# ----------------------------------------------------------------------------- Permute

PERMUTE_CASES = {
    "ssd_nhwc_0231": ([0, 2, 3, 1], [0, 2, 3, 1]),
    "0312": ([0, 3, 1, 2], [0, 3, 1, 2]),
    "partial_02_appends_1_3": ([0, 2], [0, 2, 1, 3]),
    "partial_3_first": ([3], [3, 0, 1, 2]),
    "empty_is_identity": ([], [0, 1, 2, 3]),
}


@pytest.mark.parametrize("case", PERMUTE_CASES, ids=list(PERMUTE_CASES))
def test_permute(case, tmp_path):
    order, full = PERMUTE_CASES[case]
    params = " ".join(f"order: {a}" for a in order)
    text = net_text(
        f'layer {{ name: "perm" type: "Permute" bottom: "data" top: "perm" permute_param {{ {params} }} }}',
        {"data": (2, 3, 4, 5)},
    )
    run = run_net(tmp_path, text, make_caffemodel=False)
    expected = np.transpose(run.inputs["data"], full)
    assert_close(run.onnx["perm"], expected, rtol=0, atol=0, what="onnxruntime")
    assert_close(run.torch["perm"], expected, rtol=0, atol=0, what="torch reference")
    if len(order) == 4:  # OpenCV requires the full order
        cv = opencv_forward(run.prototxt, None, run.inputs, ["perm"])
        assert_close(cv["perm"], expected, rtol=0, atol=0, what="opencv")


@pytest.mark.parametrize(
    ("order", "error", "message"),
    [
        ("order: 0 order: 2 order: 2", LayerError, r"lists axis \[2\] more than once"),
        ("order: 0 order: 4", ShapeError, r"names an axis >= 4"),
    ],
    ids=["duplicate", "axis_out_of_range"],
)
def test_permute_bad_order(order, error, message, tmp_path):
    text = net_text(
        f'layer {{ name: "perm" type: "Permute" bottom: "data" top: "perm" permute_param {{ {order} }} }}',
        {"data": (1, 3, 4, 5)},
    )
    with pytest.raises(error, match=rf"layer 'perm' \(Permute\): .*{message}"):
        caffe2onnx.load_net(write(tmp_path, text))


# ----------------------------------------------------------------------------- Normalize

NORMALIZE_CASES = {
    "ssd_conv4_3_per_pixel_per_channel_scale": ("across_spatial: false channel_shared: false", False),
    "across_spatial_shared_scale": ("", True),
    "across_spatial_per_channel_scale": ("channel_shared: false", True),
    "per_pixel_shared_scale": ("across_spatial: false", False),
    "large_eps_inside_sqrt": ("across_spatial: false eps: 0.5", False),
}


@pytest.mark.parametrize("case", NORMALIZE_CASES, ids=list(NORMALIZE_CASES))
def test_normalize(case, tmp_path):
    params, across = NORMALIZE_CASES[case]
    text = net_text(
        f'layer {{ name: "norm" type: "Normalize" bottom: "data" top: "norm" norm_param {{ {params} }} }}',
        {"data": (2, 4, 3, 5)},
    )
    run = run_net(tmp_path, text)
    (scale,) = run.weights("norm")
    assert scale.shape == (() if "channel_shared: false" not in params else (4,))
    eps = 0.5 if "eps" in params else 1e-10
    inputs = run.inputs["data"] * (0.1 if "eps" in params else 1.0)  # small values: eps matters
    if "eps" in params:
        run = run_net(tmp_path, text, inputs={"data": inputs})
    expected = normalize(inputs, scale, across_spatial=across, eps=eps)
    assert_close(run.onnx["norm"], expected, what="onnxruntime")
    assert_close(run.torch["norm"], expected, what="torch reference")
    if case != "across_spatial_per_channel_scale":  # OpenCV asserts scale.total() == numPlanes
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["norm"])
        assert_close(cv["norm"], expected, rtol=1e-4, what="opencv")


def test_normalize_scale_filler_without_caffemodel(tmp_path):
    """The SSD prototxt's scale_filler (constant 20) fills the blob when no caffemodel has it."""
    text = net_text(
        """
        layer { name: "norm" type: "Normalize" bottom: "data" top: "norm"
          norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 20 } } }
        """,
        {"data": (1, 3, 2, 2)},
    )
    run = run_net(tmp_path, text, make_caffemodel=False)
    expected = normalize(run.inputs["data"], np.full(3, 20.0), across_spatial=False)
    assert_close(run.onnx["norm"], expected, what="onnxruntime")
    assert_close(run.torch["norm"], expected, what="torch reference")


# ----------------------------------------------------------------------------- PriorBox

PRIOR_CASES = {
    # (prior_box_param, feature HxW, image HxW, reference kwargs, OpenCV comparable)
    "ssd300_conv4_3": (
        "min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false "
        "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5",
        (38, 38),
        (300, 300),
        dict(
            min_sizes=[30], max_sizes=[60], aspect_ratios=[2], variance=[0.1, 0.1, 0.2, 0.2], step_hw=(8, 8)
        ),
        True,
    ),
    "two_ratios_flip_clip_default_step": (
        "min_size: 60 max_size: 111 aspect_ratio: 2 aspect_ratio: 3 clip: true variance: 0.2",
        (5, 4),
        (96, 80),
        dict(min_sizes=[60], max_sizes=[111], aspect_ratios=[2, 3], clip=True, variance=[0.2]),
        True,
    ),
    "no_flip_no_max_default_variance": (
        "min_size: 16 aspect_ratio: 2 flip: false",
        (3, 6),
        (24, 48),
        dict(min_sizes=[16], aspect_ratios=[2], flip=False),
        False,  # OpenCV requires explicit variances
    ),
    "two_min_sizes_two_max_sizes": (
        "min_size: 10 min_size: 20 max_size: 15 max_size: 30 aspect_ratio: 2 step: 4 variance: 0.1 clip: false",
        (4, 4),
        (16, 16),
        dict(min_sizes=[10, 20], max_sizes=[15, 30], aspect_ratios=[2], step_hw=(4, 4), variance=[0.1]),
        True,
    ),
    "fractional_sizes_truncated": (
        "min_size: 21.9 max_size: 45.6 aspect_ratio: 2 clip: false",
        (3, 3),
        (30, 30),
        dict(min_sizes=[21.9], max_sizes=[45.6], aspect_ratios=[2]),
        False,  # OpenCV keeps the fractions
    ),
    "duplicate_ratios_deduplicated": (
        "min_size: 8 aspect_ratio: 2 aspect_ratio: 2.0000001 aspect_ratio: 0.5 aspect_ratio: 1 variance: 0.1 clip: false",
        (2, 3),
        (20, 30),
        dict(min_sizes=[8], aspect_ratios=[2, 2.0000001, 0.5, 1], variance=[0.1]),
        True,
    ),
    "img_h_img_w_step_h_step_w_offset0": (
        "min_size: 12 aspect_ratio: 3 img_h: 40 img_w: 64 step_h: 9 step_w: 11 offset: 0 variance: 0.1 clip: false",
        (4, 5),
        (7, 7),
        dict(min_sizes=[12], aspect_ratios=[3], img_hw=(40, 64), step_hw=(9, 11), offset=0.0, variance=[0.1]),
        False,  # OpenCV ignores img_h/img_w (uses the image bottom)
    ),
    "img_size": (
        "min_size: 12 img_size: 50 variance: 0.1 clip: false",
        (4, 5),
        (7, 7),
        dict(min_sizes=[12], img_hw=(50, 50), variance=[0.1]),
        False,  # OpenCV ignores img_size
    ),
}


@pytest.mark.parametrize("case", PRIOR_CASES, ids=list(PRIOR_CASES))
def test_prior_box(case, tmp_path):
    params, feature, image, reference, with_opencv = PRIOR_CASES[case]
    text = net_text(
        f"""
        layer {{ name: "prior" type: "PriorBox" bottom: "feature" bottom: "image" top: "prior"
          prior_box_param {{ {params} }} }}
        """,
        {"feature": (1, 2, *feature), "image": (1, 3, *image)},
    )
    run = run_net(tmp_path, text, make_caffemodel=False)
    expected = prior_box(feature, image, **reference)
    assert run.net.shapes["prior"] == expected.shape
    assert_close(run.onnx["prior"], expected, rtol=0, atol=1e-7, what="onnxruntime")
    assert_close(run.torch["prior"], expected, rtol=0, atol=1e-7, what="torch reference")
    if with_opencv:
        cv = opencv_forward(run.prototxt, None, run.inputs, ["prior"])
        assert_close(cv["prior"], expected, rtol=0, atol=1e-6, what="opencv")


def test_prior_box_is_a_constant_in_onnx(tmp_path):
    run = run_net(tmp_path, (CORPUS / "opencv_prior_box.test.prototxt"), make_caffemodel=False)
    (node,) = [n for n in run.model.graph.node if n.output[0] == "priorbox"]
    assert node.op_type == "Identity" and node.input[0] in {i.name for i in run.model.graph.initializer}
    expected = prior_box(
        (3, 4), (10, 10), min_sizes=[2, 3], max_sizes=[6, 7], aspect_ratios=[2], variance=[0.1, 0.1, 0.2, 0.2]
    )
    assert_close(run.onnx["priorbox"], expected, rtol=0, atol=1e-7, what="onnxruntime")
    assert_close(run.torch["priorbox"], expected, rtol=0, atol=1e-7, what="torch reference")
    cv = opencv_forward(run.prototxt, None, run.inputs, ["priorbox"])
    assert_close(cv["priorbox"], expected, rtol=0, atol=1e-6, what="opencv")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("aspect_ratio: 2", r"min_size is required"),
        ("min_size: 30 max_size: 20", r"max_size 20 must be greater than min_size 30"),
        ("min_size: 30 min_size: 40 max_size: 60", r"1 max_size value\(s\) for 2 min_size"),
        ("min_size: 30 variance: 0.1 variance: 0.1 variance: 0.2", r"variance needs 1 or 4 values, got 3"),
        ("min_size: 30 step: 8 step_h: 8 step_w: 8", r"either step or step_h/step_w"),
        ("min_size: 30 img_size: 300 img_h: 300 img_w: 300", r"either img_size or img_h/img_w"),
        ("min_size: 30 step_h: 8", r"step_h/step_w must be positive"),
        ("min_size: 30 aspect_ratio: 0", r"aspect_ratio must be positive"),
    ],
    ids=["no_min_size", "max_not_above_min", "max_count", "variance_count", "step_twice", "img_twice",
         "step_w_missing", "ratio_zero"],
)  # fmt: skip
def test_prior_box_bad_parameters(params, message, tmp_path):
    text = net_text(
        f"""
        layer {{ name: "prior" type: "PriorBox" bottom: "feature" bottom: "image" top: "prior"
          prior_box_param {{ {params} }} }}
        """,
        {"feature": (1, 2, 3, 3), "image": (1, 3, 30, 30)},
    )
    with pytest.raises(LayerError, match=rf"layer 'prior' \(PriorBox\): .*{message}"):
        caffe2onnx.load_net(write(tmp_path, text))


# ----------------------------------------------------------------------------- DetectionOutput


def detection_inputs(num, num_priors, num_classes, loc_classes=1, seed=0, ties=False, loc_scale=0.5):
    """Random priors (in [0, 1]), offsets and softmax-like scores."""
    rng = np.random.default_rng(seed)
    corner = rng.random((num_priors, 2)) * 0.8
    size = rng.random((num_priors, 2)) * 0.3 + 0.05
    priors = np.concatenate([corner, corner + size], axis=1).reshape(-1)
    variances = np.tile([0.1, 0.1, 0.2, 0.2], num_priors)
    conf = rng.random((num, num_priors, num_classes))
    if ties:  # few distinct values: many equal scores
        conf = np.round(conf * 4) / 4 + 0.01
    conf = conf / conf.sum(axis=-1, keepdims=True) if not ties else conf / 2
    return {
        "loc": (rng.standard_normal((num, num_priors * loc_classes * 4)) * loc_scale).astype(np.float32),
        "conf": conf.reshape(num, -1).astype(np.float32),
        "prior": np.stack([priors, variances])[None].astype(np.float32),
    }


def detection_net(params, num, num_priors, num_classes, loc_classes=1):
    return net_text(
        f"""
        layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior"
          top: "det" detection_output_param {{ num_classes: {num_classes} {params} }} }}
        """,
        {
            "loc": (num, num_priors * loc_classes * 4),
            "conf": (num, num_priors * num_classes),
            "prior": (1, 2, num_priors * 4),
        },
    )


def by_label(rows):
    """Rows sorted by image, label, descending score, then the box (for equal scores)."""
    rows = np.asarray(rows)
    return rows[np.lexsort((*rows[:, :2:-1].T, -rows[:, 2], rows[:, 1], rows[:, 0]))]


DETECTION_CASES = {
    # (params, num images, reference kwargs, compare with OpenCV)
    "ssd_center_size_keep_top_k": (
        "share_location: true background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 20 } "
        "code_type: CENTER_SIZE "
        "keep_top_k: 12 confidence_threshold: 0.1",
        1,
        dict(nms_threshold=0.45, top_k=20, keep_top_k=12, confidence_threshold=0.1, code_type="CENTER_SIZE"),
        True,
    ),
    "two_images_keep_top_k_above_count": (
        "share_location: true background_label_id: 0 nms_param { nms_threshold: 0.3 top_k: 10 } "
        "code_type: CENTER_SIZE keep_top_k: 100 confidence_threshold: 0.2",  # OpenCV crashes on keep_top_k -1
        2,
        dict(nms_threshold=0.3, top_k=10, keep_top_k=100, confidence_threshold=0.2, code_type="CENTER_SIZE"),
        True,
    ),
    "corner_no_threshold_no_top_k": (
        "share_location: true background_label_id: 0 nms_param { nms_threshold: 0.5 } code_type: CORNER "
        "keep_top_k: 25",
        1,
        dict(nms_threshold=0.5, keep_top_k=25, code_type="CORNER"),
        True,
    ),
    "corner_size_variance_in_target": (
        "nms_param { nms_threshold: 0.4 top_k: 30 } code_type: CORNER_SIZE variance_encoded_in_target: true "
        "confidence_threshold: 0.15",
        2,
        dict(nms_threshold=0.4, top_k=30, confidence_threshold=0.15, code_type="CORNER_SIZE",
             variance_encoded_in_target=True),
        False,  # OpenCV's caffe.proto has no CORNER_SIZE
    ),
    "per_class_locations_background_2": (
        "share_location: false background_label_id: 2 nms_param { nms_threshold: 0.45 top_k: 15 } "
        "code_type: CENTER_SIZE keep_top_k: 20 confidence_threshold: 0.1",
        2,
        dict(share_location=False, background_label_id=2, nms_threshold=0.45, top_k=15, keep_top_k=20,
             confidence_threshold=0.1, code_type="CENTER_SIZE"),
        True,
    ),
    "no_background_class": (
        "share_location: false background_label_id: -1 nms_param { nms_threshold: 0.45 top_k: 8 } "
        "code_type: CENTER_SIZE confidence_threshold: 0.3",
        1,
        dict(share_location=False, background_label_id=-1, nms_threshold=0.45, top_k=8,
             confidence_threshold=0.3, code_type="CENTER_SIZE"),
        False,
    ),
    "tied_scores_keep_prior_order": (
        "nms_param { nms_threshold: 0.45 top_k: 12 } code_type: CENTER_SIZE confidence_threshold: 0.1",
        1,
        dict(nms_threshold=0.45, top_k=12, confidence_threshold=0.1, code_type="CENTER_SIZE"),
        False,
    ),
    "tied_scores_keep_top_k_label_order": (  # Caffe's std::sort leaves these ties unspecified
        "nms_param { nms_threshold: 0.45 top_k: 12 } code_type: CENTER_SIZE keep_top_k: 7 "
        "confidence_threshold: 0.1",
        2,
        dict(nms_threshold=0.45, top_k=12, keep_top_k=7, confidence_threshold=0.1, code_type="CENTER_SIZE"),
        False,
    ),
    "nothing_above_threshold": (
        "nms_param { nms_threshold: 0.45 top_k: 10 } code_type: CENTER_SIZE keep_top_k: 5 "
        "confidence_threshold: 0.99",
        2,
        dict(nms_threshold=0.45, top_k=10, keep_top_k=5, confidence_threshold=0.99, code_type="CENTER_SIZE"),
        False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", DETECTION_CASES, ids=list(DETECTION_CASES))
def test_detection_output(case, tmp_path):
    params, num, reference, with_opencv = DETECTION_CASES[case]
    num_priors, num_classes = 40, 4
    loc_classes = 1 if reference.get("share_location", True) else num_classes
    text = detection_net(params, num, num_priors, num_classes, loc_classes)
    feed = detection_inputs(num, num_priors, num_classes, loc_classes, ties="tied" in case)
    run = run_net(tmp_path, text, inputs=feed, make_caffemodel=False)
    rows = detection_output(feed["loc"], feed["conf"], feed["prior"], num_classes, **reference)
    total = run.net.shapes["det"][2]
    assert len(rows) <= total
    expected = padded(rows, total)
    assert_close(run.onnx["det"], expected, rtol=0, atol=2e-6, what="onnxruntime")
    assert_close(run.torch["det"], expected, rtol=0, atol=2e-6, what="torch reference")
    if with_opencv:  # OpenCV lists keep_top_k survivors by score, not by label: compare sorted
        cv = opencv_forward(run.prototxt, None, feed, ["det"])["det"].reshape(-1, 7)
        cv = cv[np.any(cv != 0, axis=1)]  # OpenCV pads to N * keep_top_k rows with zeros
        assert_close(by_label(cv), by_label(rows), rtol=0, atol=1e-5, what="opencv")


def test_detection_output_static_row_bound(tmp_path):
    """keep_top_k bounds the rows per image; without it, classes x min(top_k, priors)."""
    cases = {
        "keep_top_k: 7 nms_param { top_k: 10 }": 2 * 7,
        "nms_param { top_k: 10 }": 2 * 3 * 10,
        "": 2 * 3 * 40,
    }
    for params, rows in cases.items():
        net = caffe2onnx.load_net(write(tmp_path, detection_net(params, 2, 40, 4)))
        assert net.shapes["det"] == (1, 1, rows, 7), params


def test_detection_output_iou_equal_to_threshold_is_kept(tmp_path):
    """Caffe suppresses only IoU > nms_threshold; ONNX NonMaxSuppression agrees."""
    text = detection_net(
        "nms_param { nms_threshold: 0.5 } code_type: CORNER variance_encoded_in_target: true", 1, 3, 2
    )
    prior = np.array([[0, 0, 0.5, 0.5, 0, 0, 0.5, 0.25, 0.1, 0.1, 0.2, 0.2]], np.float32)  # IoU 0.5, then 0
    feed = {
        "loc": np.zeros((1, 12), np.float32),
        "conf": np.array([[0.1, 0.9, 0.2, 0.8, 0.3, 0.7]], np.float32),
        "prior": np.concatenate([prior, np.ones((1, 12), np.float32)])[None],
    }
    run = run_net(tmp_path, text, inputs=feed, make_caffemodel=False)
    rows = detection_output(feed["loc"], feed["conf"], feed["prior"], 2, nms_threshold=0.5,
                            code_type="CORNER", variance_encoded_in_target=True)  # fmt: skip
    assert len(rows) == 3
    assert_close(run.onnx["det"], padded(rows, 3), rtol=0, atol=1e-7, what="onnxruntime")
    assert_close(run.torch["det"], padded(rows, 3), rtol=0, atol=1e-7, what="torch reference")


def test_detection_output_inverted_boxes_never_overlap(tmp_path):
    """A decoded box with xmax < xmin has IoU 0 in Caffe (kept, suppresses nothing); ONNX
    NonMaxSuppression would swap its corners, so the converter empties such boxes for NMS."""
    text = detection_net(
        "nms_param { nms_threshold: 0.3 } code_type: CORNER variance_encoded_in_target: true", 1, 2, 2
    )
    feed = {
        "loc": np.array([[0.6, 0.6, -0.6, -0.6, 0, 0, 0, 0]], np.float32),  # box 0 becomes inverted
        "conf": np.array([[0.1, 0.9, 0.2, 0.8]], np.float32),
        "prior": np.array([[[0.2, 0.2, 0.7, 0.7, 0.2, 0.2, 0.7, 0.7], [1] * 8]], np.float32),
    }
    run = run_net(tmp_path, text, inputs=feed, make_caffemodel=False)
    rows = detection_output(feed["loc"], feed["conf"], feed["prior"], 2, nms_threshold=0.3,
                            code_type="CORNER", variance_encoded_in_target=True)  # fmt: skip
    assert len(rows) == 2, "both boxes survive in Caffe"
    assert_close(run.onnx["det"], padded(rows, 2), rtol=0, atol=1e-6, what="onnxruntime")
    assert_close(run.torch["det"], padded(rows, 2), rtol=0, atol=1e-6, what="torch reference")


@pytest.mark.parametrize("opset", [13, 21], ids=["opset13", "opset21"])
def test_detection_output_at_opset(opset, tmp_path):
    params, num, reference, _ = DETECTION_CASES["per_class_locations_background_2"]
    text = detection_net(params, num, 40, 4, 4)
    feed = detection_inputs(num, 40, 4, 4, seed=3)
    run = run_net(tmp_path, text, inputs=feed, make_caffemodel=False, opset=opset)
    assert run.model.opset_import[0].version == opset
    rows = detection_output(feed["loc"], feed["conf"], feed["prior"], 4, **reference)
    expected = padded(rows, run.net.shapes["det"][2])
    assert_close(run.onnx["det"], expected, rtol=0, atol=2e-6, what=f"onnxruntime opset {opset}")


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ("", LayerError, r"num_classes must be set"),
        ("num_classes: 4 nms_param { eta: 0.9 }", LayerError, r"eta 0.9 \(adaptive NMS\) is not supported"),
        ("num_classes: 4 nms_param { nms_threshold: -0.1 }", LayerError, r"nms_threshold must be >= 0"),
        ("num_classes: 5", ShapeError, r"conf \(bottom 1\) has 160 values per image; 40 priors x 5 classes"),
        ("num_classes: 4 share_location: false", ShapeError, r"loc \(bottom 0\) has 160 values per image"),
    ],
    ids=["no_num_classes", "eta", "negative_nms_threshold", "conf_count", "loc_count"],
)
def test_detection_output_bad_parameters(params, error, message, tmp_path):
    text = net_text(
        f"""
        layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior"
          top: "det" detection_output_param {{ {params} }} }}
        """,
        {"loc": (1, 160), "conf": (1, 160), "prior": (1, 2, 160)},
    )
    with pytest.raises(error, match=rf"layer 'det' \(DetectionOutput\): .*{message}"):
        caffe2onnx.load_net(write(tmp_path, text))


@pytest.mark.parametrize("opset", [13, 21], ids=["opset13", "opset21"])
def test_ssd_head_layers_at_opset(opset, tmp_path):
    text = net_text(
        """
        layer { name: "norm" type: "Normalize" bottom: "data" top: "norm" norm_param { across_spatial: false } }
        layer { name: "perm" type: "Permute" bottom: "norm" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
        layer { name: "prior" type: "PriorBox" bottom: "norm" bottom: "data" top: "prior"
          prior_box_param { min_size: 4 max_size: 8 aspect_ratio: 2 } }
        """,
        {"data": (1, 3, 4, 6)},
    )
    run = run_net(tmp_path, text, opset=opset)
    (scale,) = run.weights("norm")
    expected = np.transpose(normalize(run.inputs["data"], scale, across_spatial=False), (0, 2, 3, 1))
    assert_close(run.onnx["perm"], expected, what=f"onnxruntime opset {opset}")
    prior = prior_box((4, 6), (4, 6), min_sizes=[4], max_sizes=[8], aspect_ratios=[2])
    assert_close(run.onnx["prior"], prior, rtol=0, atol=1e-7, what=f"onnxruntime opset {opset}")


# ----------------------------------------------------------------------------- whole SSD nets

SSD_NETS = {
    "ssd300_vgg16": ("ssd300_vgg16_voc0712.deploy.prototxt", "confidence_threshold: 0.5"),
    "mobilenet_ssd": ("mobilenet_ssd_voc.deploy.prototxt", "confidence_threshold: 0.25"),
}
HEADS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]
THRESHOLD = 0.048  # random weights give scores near 1/21: a low threshold gives NMS work to do


@pytest.fixture(
    scope="module",
    params=[pytest.param("ssd300_vgg16", marks=pytest.mark.slow), "mobilenet_ssd"],
    ids=["ssd300_vgg16", "mobilenet_ssd"],
)
def ssd(request, tmp_path_factory):
    """One SSD net at its real 300x300 input (PriorBox and the last convolutions need it):
    seeded caffemodel, ONNX model and every blob from onnxruntime and from torch."""
    key = request.param
    file, threshold = SSD_NETS[key]
    directory = tmp_path_factory.mktemp(key)
    text = (CORPUS / file).read_text().replace(threshold, f"confidence_threshold: {THRESHOLD}")
    prototxt = write(directory, text, f"{key}.prototxt")
    caffemodel = directory / f"{key}.caffemodel"
    make_weights(prototxt, caffemodel, seed=1)
    net = caffe2onnx.load_net(prototxt, caffemodel)
    model = to_onnx(net)
    inputs = {"data": np.random.default_rng(0).standard_normal((1, 3, 300, 300)).astype(np.float32)}
    tensors = [top for layer in net.layers for top in layer.tops]
    return dict(
        key=key,
        prototxt=prototxt,
        caffemodel=caffemodel,
        net=net,
        inputs=inputs,
        onnx=run_onnx(model, inputs, tensors),
        torch=torch_blobs(net, inputs),
    )


def reference_detections(net, blobs):
    """The numpy DetectionOutput applied to ``blobs``' own loc/conf/priors."""
    p = net.layer("detection_out").params
    return detection_output(
        *(blobs[name] for name in HEADS), p.num_classes, nms_threshold=p.nms_threshold, top_k=p.top_k,
        keep_top_k=p.keep_top_k, confidence_threshold=THRESHOLD, code_type="CENTER_SIZE",
    )  # fmt: skip


def test_ssd_net_with_detection_output(ssd):
    net, ours, torch_ref = ssd["net"], ssd["onnx"], ssd["torch"]
    for tensor in ours:
        if tensor != "detection_out":
            assert_close(
                ours[tensor], torch_ref[tensor], rtol=1e-3, what=f"{ssd['key']} {tensor}: onnx vs torch"
            )
    # detections flip with the last bits of the scores: check each side on its own inputs
    rows = reference_detections(net, ours)
    assert len(rows) > 20, "the test should exercise NMS and keep_top_k"
    total = ours["detection_out"].shape[2]
    assert_close(ours["detection_out"], padded(rows, total), rtol=0, atol=1e-5, what="onnxruntime vs numpy")
    torch_rows = reference_detections(net, torch_ref)
    assert_close(
        torch_ref["detection_out"], padded(torch_rows, total), rtol=0, atol=1e-5, what="torch vs numpy"
    )
    cv = opencv_forward(ssd["prototxt"], ssd["caffemodel"], ssd["inputs"], [*HEADS, "detection_out"])
    for name in HEADS:
        assert_close(cv[name].reshape(ours[name].shape), ours[name], rtol=1e-3, what=f"opencv {name}")
    cv_rows = cv["detection_out"].reshape(-1, 7)
    cv_rows = cv_rows[np.any(cv_rows != 0, axis=1)]
    expected = reference_detections(net, {name: cv[name].reshape(ours[name].shape) for name in HEADS})
    assert_close(by_label(cv_rows), by_label(expected), rtol=0, atol=1e-5, what="opencv vs numpy")


def test_ssd_net_cut_before_detection_output(ssd):
    net = caffe2onnx.load_net(ssd["prototxt"], ssd["caffemodel"], outputs=HEADS)
    assert "DetectionOutput" not in {layer.type for layer in net.layers}
    assert net.outputs == tuple(HEADS)
    cut = run_onnx(to_onnx(net), ssd["inputs"])
    for name in HEADS:
        assert_close(cut[name], ssd["onnx"][name], what=f"{ssd['key']} {name}: cut vs whole net")
