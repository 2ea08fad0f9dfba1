"""Correlation and Accum (FlowNet) against numpy references written from the Caffe kernels, and OpenCV.

The references below index the padded blobs the way FlowNet's CorrelateData /
CorrelateDataSubtract and AccumLayer::Forward_cpu do (patch corner ``y s1 + d``, channel
``(p + R)(2R + 1) + (o + R)``, sample position ``w / (W_out - 1) * (W_in - 1)`` in float32);
they share nothing with the handler's Slice/ReduceMean/AveragePool or unfold recipes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffe2onnx import load_net
from caffe2onnx.errors import LayerError, ShapeError
from tests.helpers import CORPUS, assert_close, net_text, opencv_forward, run_net, write

# ----------------------------------------------------------------------------- references


def caffe_correlation(
    a: np.ndarray, b: np.ndarray, pad: int, k: int, d: int, s1: int, s2: int, subtract: bool = False
) -> np.ndarray:
    """FlowNet's Correlation forward (MULTIPLY or SUBTRACT), in float64."""
    n, c, h, w = a.shape
    widths = ((0, 0), (0, 0), (pad, pad), (pad, pad))
    a_pad, b_pad = np.pad(a.astype(np.float64), widths), np.pad(b.astype(np.float64), widths)
    border = d + (k - 1) // 2
    out_h = math.ceil((h + 2 * pad - 2 * border) / s1)
    out_w = math.ceil((w + 2 * pad - 2 * border) / s1)
    radius = d // s2
    grid = 2 * radius + 1
    rows = np.arange(out_h)[:, None] * s1 + d  # patch corners in padded coordinates
    cols = np.arange(out_w)[None, :] * s1 + d
    top = np.zeros((n, grid * grid, out_h, out_w))
    for channel in range(grid * grid):
        dx = (channel % grid - radius) * s2
        dy = (channel // grid - radius) * s2
        total = np.zeros((n, out_h, out_w))
        for j in range(k):
            for i in range(k):
                x1 = a_pad[:, :, rows + j, cols + i]
                x2 = b_pad[:, :, rows + j + dy, cols + i + dx]
                total += (np.abs(x1 - x2) if subtract else x1 * x2).sum(axis=1)
        top[:, channel] = total / (k * k * c)
    return top


def caffe_accum(bottoms: list[np.ndarray], out_h: int, out_w: int) -> np.ndarray:
    """FlowNet's Accum forward: Caffe's float32 bilinear sampling of each bottom, then concat."""
    f32 = np.float32
    parts = []
    for x in bottoms:
        n, c, h, w = x.shape
        y = np.zeros((n, c, out_h, out_w), np.float32)
        for oy in range(out_h):
            ypos = f32(oy) / f32(out_h - 1) * f32(h - 1)
            ty = math.floor(ypos)
            fy = f32(ypos - f32(ty))
            by = min(ty + 1, h - 1)  # Caffe reads past the edge here, always with weight 0
            for ox in range(out_w):
                xpos = f32(ox) / f32(out_w - 1) * f32(w - 1)
                tx = math.floor(xpos)
                fx = f32(xpos - f32(tx))
                rx = min(tx + 1, w - 1)
                y[:, :, oy, ox] = (
                    (1 - fx) * (1 - fy) * x[:, :, ty, tx]
                    + fx * fy * x[:, :, by, rx]
                    + (1 - fx) * fy * x[:, :, by, tx]
                    + fx * (1 - fy) * x[:, :, ty, rx]
                )
        parts.append(y)
    return np.concatenate(parts, axis=1)


# ----------------------------------------------------------------------------- Correlation

# case: (pad, kernel_size, max_displacement, stride_1, stride_2, expected top shape for 2x3x7x9)
CORRELATION_CASES = {
    "opencv_test_pad1_d1": (1, 1, 1, 1, 1, (2, 9, 7, 9)),
    "no_pad_d1": (0, 1, 1, 1, 1, (2, 9, 5, 7)),
    "d0_single_channel": (0, 1, 0, 1, 1, (2, 1, 7, 9)),
    "pad2_d2": (2, 1, 2, 1, 1, (2, 25, 7, 9)),
    "pad4_d4_stride2_2": (4, 1, 4, 1, 2, (2, 25, 7, 9)),
    "pad3_d3_stride2_2_uneven": (3, 1, 3, 1, 2, (2, 9, 7, 9)),
    "k3_pad3_d2": (3, 3, 2, 1, 1, (2, 25, 7, 9)),
    "k3_no_pad_d1": (0, 3, 1, 1, 1, (2, 9, 3, 5)),
    "k3_pad2_d2_stride1_2": (2, 3, 2, 2, 1, (2, 25, 3, 4)),
    "pad3_d3_stride1_2_stride2_2": (3, 1, 3, 2, 2, (2, 9, 4, 5)),
    "pad1_d1_stride1_3": (1, 1, 1, 3, 1, (2, 9, 3, 3)),
    "k3_pad4_d4_strides_2_2": (4, 3, 4, 2, 2, (2, 25, 3, 4)),
}


def _correlation_net(params: str, shape=(2, 3, 7, 9), name: str = "corr") -> str:
    return net_text(
        f"""
        layer {{ name: "{name}" type: "Correlation" bottom: "a" bottom: "b" top: "{name}"
          correlation_param {{ {params} }} }}
        """,
        {"a": shape, "b": shape},
    )


@pytest.mark.parametrize("case", CORRELATION_CASES, ids=list(CORRELATION_CASES))
def test_correlation_matches_caffe_reference_and_opencv(case, tmp_path):
    pad, k, d, s1, s2, shape = CORRELATION_CASES[case]
    params = f"pad: {pad} kernel_size: {k} max_displacement: {d} stride_1: {s1} stride_2: {s2}"
    run = run_net(tmp_path, _correlation_net(params))
    expected = caffe_correlation(run.inputs["a"], run.inputs["b"], pad, k, d, s1, s2)
    assert expected.shape == shape
    assert_close(run.onnx["corr"], expected, what="onnxruntime")
    assert_close(run.torch["corr"], expected, what="torch reference")
    cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["corr"])
    assert_close(cv["corr"], expected, what="opencv")


@pytest.mark.parametrize(
    "params,pad,k,d,s1,s2",
    [
        ("pad: 2 kernel_size: 1 max_displacement: 2", 2, 1, 2, 1, 1),
        ("pad: 3 kernel_size: 3 max_displacement: 2 stride_1: 2", 3, 3, 2, 2, 1),
        ("pad: 4 kernel_size: 1 max_displacement: 4 stride_2: 2", 4, 1, 4, 1, 2),
    ],
    ids=["d2", "k3_stride1_2", "d4_stride2_2"],
)
def test_correlation_subtract_matches_caffe_reference(params, pad, k, d, s1, s2, tmp_path):
    # OpenCV ignores correlation_type (it always multiplies): numpy reference only
    run = run_net(tmp_path, _correlation_net(f"{params} correlation_type: SUBTRACT"))
    expected = caffe_correlation(run.inputs["a"], run.inputs["b"], pad, k, d, s1, s2, subtract=True)
    assert_close(run.onnx["corr"], expected, what="onnxruntime")
    assert_close(run.torch["corr"], expected, what="torch reference")


def test_correlation_do_abs_has_no_effect_as_in_caffe(tmp_path):
    run = run_net(tmp_path, _correlation_net("pad: 2 kernel_size: 1 max_displacement: 2 do_abs: true"))
    expected = caffe_correlation(run.inputs["a"], run.inputs["b"], 2, 1, 2, 1, 1)
    assert expected.min() < 0, "the check needs negative correlations"
    assert_close(run.onnx["corr"], expected, what="onnxruntime")
    assert_close(run.torch["corr"], expected, what="torch reference")
    cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["corr"])
    assert_close(cv["corr"], expected, what="opencv")


def test_correlation_displacement_order_is_rows_outer(tmp_path):
    """Bottom 1 = bottom 0 shifted right by 1 column: the peak is at (dy, dx) = (0, +1)."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((1, 4, 6, 7)).astype(np.float32)
    b = np.zeros_like(a)
    b[..., 1:] = a[..., :-1]
    run = run_net(
        tmp_path,
        _correlation_net("pad: 1 kernel_size: 1 max_displacement: 1", shape=(1, 4, 6, 7)),
        inputs={"a": a, "b": b},
    )
    interior = run.onnx["corr"][0, :, 1:-1, 1:-1].mean(axis=(1, 2))
    assert int(np.argmax(interior)) == 1 * 3 + 2, interior  # p = 0 (row 1 of 3), o = +1 (column 2)


def test_correlation_corpus_file(tmp_path):
    run = run_net(tmp_path, CORPUS / "opencv_correlation.test.prototxt")
    expected = caffe_correlation(run.inputs["input_0"], run.inputs["input_1"], 1, 1, 1, 1, 1)
    assert_close(run.onnx["out"], expected, what="onnxruntime")
    assert_close(run.torch["out"], expected, what="torch reference")
    cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["corr"])  # OpenCV names layers
    assert_close(cv["corr"], expected, what="opencv")


@pytest.mark.parametrize("opset", [13, 21], ids=lambda o: f"opset{o}")
def test_correlation_at_opset(opset, tmp_path):
    params = "pad: 3 kernel_size: 3 max_displacement: 2 stride_1: 2 correlation_type: SUBTRACT"
    run = run_net(tmp_path, _correlation_net(params), opset=opset)
    expected = caffe_correlation(run.inputs["a"], run.inputs["b"], 3, 3, 2, 2, 1, subtract=True)
    assert_close(run.onnx["corr"], expected, what=f"onnxruntime opset {opset}")


CORRELATION_ERRORS = {
    "no_kernel_size": ("max_displacement: 1", (1, 2, 5, 5), LayerError, "kernel_size is required"),
    "no_max_displacement": ("kernel_size: 1", (1, 2, 5, 5), LayerError, "max_displacement is required"),
    "even_kernel": ("kernel_size: 2 max_displacement: 1", (1, 2, 5, 5), LayerError, "must be odd.*got 2"),
    "stride_1_zero": (
        "kernel_size: 1 max_displacement: 1 stride_1: 0",
        (1, 2, 5, 5),
        LayerError,
        "stride_1 0 and stride_2 1 must be >= 1",
    ),
    "stride_2_zero": (
        "kernel_size: 1 max_displacement: 1 stride_2: 0",
        (1, 2, 5, 5),
        LayerError,
        "stride_1 1 and stride_2 0 must be >= 1",
    ),
    "too_small": (
        "kernel_size: 3 max_displacement: 2",
        (1, 2, 6, 5),
        ShapeError,
        r"input height 6 \+ 2 \* pad 0 leaves no room.*needs > 6",
    ),
    "not_4d": ("kernel_size: 1 max_displacement: 0", (2, 5, 5), ShapeError, "needs 4-D"),
}


@pytest.mark.parametrize("case", CORRELATION_ERRORS, ids=list(CORRELATION_ERRORS))
def test_correlation_bad_parameters(case, tmp_path):
    params, shape, error, message = CORRELATION_ERRORS[case]
    text = _correlation_net(params, shape=shape, name="bad_corr")
    with pytest.raises(error, match=rf"layer 'bad_corr' \(Correlation\): .*{message}"):
        load_net(write(tmp_path, text), random_weights=0)


def test_correlation_bottoms_of_different_shapes(tmp_path):
    text = net_text(
        """
        layer { name: "bad_corr" type: "Correlation" bottom: "a" bottom: "b" top: "out"
          correlation_param { kernel_size: 1 max_displacement: 1 pad: 1 } }
        """,
        {"a": (1, 3, 5, 5), "b": (1, 2, 5, 5)},
    )
    with pytest.raises(ShapeError, match=r"bad_corr.*same shape, got \[1, 3, 5, 5\] and \[1, 2, 5, 5\]"):
        load_net(write(tmp_path, text), random_weights=0)


def test_correlation_needs_two_bottoms(tmp_path):
    text = net_text(
        """
        layer { name: "bad_corr" type: "Correlation" bottom: "a" top: "out"
          correlation_param { kernel_size: 1 max_displacement: 1 } }
        """,
        {"a": (1, 3, 5, 5)},
    )
    with pytest.raises(LayerError, match=r"bad_corr.*bottom"):
        load_net(write(tmp_path, text), random_weights=0)


# ----------------------------------------------------------------------------- Accum

# case: (bottom shapes, accum_param, expected top H x W, OpenCV agrees)
# OpenCV rounds size_divisible_by down (never enlarges) and mislays batches above 1.
ACCUM_CASES = {
    "opencv_test_upsample_to_max": ([(1, 2, 2, 3), (1, 3, 8, 12)], "have_reference: false", (8, 12), True),
    "batch2": ([(2, 2, 2, 3), (2, 3, 8, 12)], "", (8, 12), False),
    "max_h_and_max_w_of_different_bottoms": ([(1, 2, 1, 5), (1, 3, 4, 1)], "", (4, 5), True),
    "three_bottoms": ([(1, 1, 3, 4), (1, 2, 5, 7), (1, 2, 5, 7)], "", (5, 7), True),
    "top_size_larger": ([(1, 2, 3, 5), (1, 3, 8, 12)], "top_height: 10 top_width: 13", (10, 13), True),
    "top_size_not_larger_in_both": (
        [(1, 2, 3, 5), (1, 3, 8, 12)],
        "top_height: 10 top_width: 12",
        (8, 12),
        True,
    ),
    "single_bottom_top_size": ([(1, 3, 3, 4)], "top_height: 6 top_width: 9", (6, 9), True),
    "size_divisible_by_5": ([(1, 2, 3, 5), (1, 3, 8, 12)], "size_divisible_by: 5", (10, 15), False),
    "size_divisible_by_16": ([(1, 2, 3, 5), (1, 3, 8, 12)], "size_divisible_by: 16", (16, 16), False),
    "size_divisible_by_8_one_axis_fits": (
        [(1, 2, 3, 5), (1, 3, 8, 12)],
        "size_divisible_by: 8",
        (8, 12),
        True,
    ),
    "reference_downsamples": (
        [(1, 2, 3, 5), (1, 3, 8, 12), (1, 1, 6, 4)],
        "have_reference: true",
        (6, 4),
        True,
    ),
    "reference_same_size": ([(1, 2, 5, 5), (1, 3, 3, 3), (1, 4, 5, 5)], "have_reference: true", (5, 5), True),
    "reference_batch2": ([(2, 2, 3, 5), (2, 1, 4, 4), (2, 1, 7, 6)], "have_reference: true", (7, 6), False),
}


def _accum_net(shapes, params: str, name: str = "acc") -> str:
    inputs = {f"x{i}": shape for i, shape in enumerate(shapes)}
    bottoms = " ".join(f'bottom: "{b}"' for b in inputs)
    return net_text(
        f'layer {{ name: "{name}" type: "Accum" {bottoms} top: "{name}" accum_param {{ {params} }} }}',
        inputs,
    )


@pytest.mark.parametrize("case", ACCUM_CASES, ids=list(ACCUM_CASES))
def test_accum_matches_caffe_reference(case, tmp_path):
    shapes, params, size, opencv_agrees = ACCUM_CASES[case]
    run = run_net(tmp_path, _accum_net(shapes, params))
    bottoms = [run.inputs[f"x{i}"] for i in range(len(shapes))]
    if "have_reference: true" in params:
        bottoms = bottoms[:-1]
    expected = caffe_accum(bottoms, *size)
    assert expected.shape == (shapes[0][0], sum(x.shape[1] for x in bottoms), *size)
    assert_close(run.onnx["acc"], expected, what="onnxruntime")
    assert_close(run.torch["acc"], expected, what="torch reference")
    if opencv_agrees:
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["acc"])
        assert_close(cv["acc"], expected, what="opencv")


def test_accum_corpus_file(tmp_path):
    run = run_net(tmp_path, CORPUS / "opencv_accum.test.prototxt")
    expected = caffe_accum([run.inputs["input_0"], run.inputs["input_1"]], 8, 12)
    assert_close(run.onnx["out"], expected, what="onnxruntime")
    assert_close(run.torch["out"], expected, what="torch reference")
    cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["Accum1"])  # OpenCV names layers
    assert_close(cv["Accum1"], expected, what="opencv")


@pytest.mark.parametrize("opset", [13, 21], ids=lambda o: f"opset{o}")
def test_accum_at_opset(opset, tmp_path):
    shapes = [(1, 2, 3, 5), (1, 3, 8, 12), (1, 1, 6, 4)]
    run = run_net(tmp_path, _accum_net(shapes, "have_reference: true"), opset=opset)
    expected = caffe_accum([run.inputs["x0"], run.inputs["x1"]], 6, 4)
    assert_close(run.onnx["acc"], expected, what=f"onnxruntime opset {opset}")


def test_accum_same_size_bottom_is_not_resized(tmp_path):
    run = run_net(tmp_path, _accum_net([(1, 2, 4, 4), (1, 3, 2, 2)], ""))
    resizes = [n for n in run.model.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 1 and resizes[0].input[0] == "x1"
    assert_close(run.onnx["acc"][:, :2], run.inputs["x0"], what="copied bottom")


ACCUM_ERRORS = {
    "reference_without_bottoms": (
        [(1, 2, 3, 3)],
        "have_reference: true",
        LayerError,
        "needs at least 2 bottoms",
    ),
    "divisor_zero": ([(1, 2, 3, 3)], "size_divisible_by: 0", LayerError, "size_divisible_by: 0"),
    "batch_mismatch": ([(1, 2, 3, 3), (2, 2, 3, 3)], "", ShapeError, "same batch"),
    "reference_1x1": (
        [(1, 2, 3, 3), (1, 1, 1, 1)],
        "have_reference: true",
        ShapeError,
        "top size 1x1.*0/0",
    ),
    "not_4d": ([(1, 2, 3)], "", ShapeError, r"needs 4-D.*bottom 0 has shape \[1, 2, 3\]"),
}


@pytest.mark.parametrize("case", ACCUM_ERRORS, ids=list(ACCUM_ERRORS))
def test_accum_bad_parameters(case, tmp_path):
    shapes, params, error, message = ACCUM_ERRORS[case]
    with pytest.raises(error, match=rf"layer 'bad_acc' \(Accum\): .*{message}"):
        load_net(write(tmp_path, _accum_net(shapes, params, name="bad_acc")), random_weights=0)


def test_accum_1x1_copy_is_allowed(tmp_path):
    run = run_net(tmp_path, _accum_net([(1, 2, 1, 1), (1, 3, 1, 1)], ""))
    expected = np.concatenate([run.inputs["x0"], run.inputs["x1"]], axis=1)
    assert_close(run.onnx["acc"], expected, what="onnxruntime")
    assert_close(run.torch["acc"], expected, what="torch reference")
