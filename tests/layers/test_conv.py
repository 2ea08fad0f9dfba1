"""Convolution and Deconvolution against numpy references written from the spec, and OpenCV."""

from __future__ import annotations

import pytest

from tests.helpers import assert_close, net_text, opencv_forward, run_net
from tests.reference import conv2d, deconv2d

CONV_CASES = {
    "k3": ("kernel_size: 3", dict()),
    "k3_pad1_stride2": ("kernel_size: 3 pad: 1 stride: 2", dict(stride=(2, 2), pad=(1, 1))),
    "kh3_kw1_hw_forms": (
        "kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1",
        dict(stride=(2, 1), pad=(1, 0)),
    ),
    "dilated2_pad2": ("kernel_size: 3 pad: 2 dilation: 2", dict(pad=(2, 2), dilation=(2, 2))),
    "group2": ("kernel_size: 3 group: 2", dict(group=2)),
    "depthwise_group4": ("kernel_size: 3 pad: 1 group: 4", dict(pad=(1, 1), group=4)),
    "no_bias": ("kernel_size: 1 bias_term: false", dict()),
    "deeplab_hole2": ("kernel_size: 3 pad: 2 hole: 2", dict(pad=(2, 2), dilation=(2, 2))),
}


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_convolution_matches_numpy_reference(case, tmp_path):
    params, geometry = CONV_CASES[case]
    num_output = 4 if "group4" in case else 6
    text = net_text(
        f"""
        layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param {{ num_output: {num_output} {params} }} }}
        """,
        {"data": (2, 4, 9, 11)},
    )
    run = run_net(tmp_path, text)
    weights = run.weights("conv")
    bias = weights[1] if len(weights) > 1 else None
    expected = conv2d(run.inputs["data"], weights[0], bias, **geometry)
    assert_close(run.onnx["conv"], expected, what="onnxruntime")
    assert_close(run.torch["conv"], expected, what="torch reference")
    if "hole" not in case:  # OpenCV does not know DeepLab v1's hole field
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["conv"])
        assert_close(cv["conv"], expected, what="opencv")


DECONV_CASES = {
    "k4_s2_p1": ("kernel_size: 4 stride: 2 pad: 1", dict(stride=(2, 2), pad=(1, 1))),
    "k3_s2_hw": (
        "kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
        dict(stride=(2, 1), pad=(1, 0)),
    ),
    "dilation2": ("kernel_size: 3 stride: 2 dilation: 2", dict(stride=(2, 2), dilation=(2, 2))),
    "group2": ("kernel_size: 2 stride: 2 group: 2", dict(stride=(2, 2), group=2)),
}


@pytest.mark.parametrize("case", DECONV_CASES, ids=list(DECONV_CASES))
def test_deconvolution_matches_numpy_reference(case, tmp_path):
    params, geometry = DECONV_CASES[case]
    text = net_text(
        f"""
        layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up"
          convolution_param {{ num_output: 6 {params} }} }}
        """,
        {"data": (2, 4, 7, 9)},
    )
    run = run_net(tmp_path, text)
    w, b = run.weights("up")
    expected = deconv2d(run.inputs["data"], w, b, **geometry)
    assert_close(run.onnx["up"], expected, what="onnxruntime")
    assert_close(run.torch["up"], expected, what="torch reference")
    if "dilation" not in case:  # OpenCV ignores Deconvolution dilation
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["up"])
        assert_close(cv["up"], expected, what="opencv")


def test_convolution_with_two_bottoms_shares_weights(tmp_path):
    text = net_text(
        """
        layer { name: "conv" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb"
          convolution_param { num_output: 3 kernel_size: 3 } }
        """,
        {"a": (1, 2, 6, 6), "b": (1, 2, 6, 6)},
    )
    run = run_net(tmp_path, text)
    w, b = run.weights("conv")
    for x, y in (("a", "ya"), ("b", "yb")):
        expected = conv2d(run.inputs[x], w, b)
        assert_close(run.onnx[y], expected, what=f"onnxruntime {y}")
        assert_close(run.torch[y], expected, what=f"torch {y}")
    assert len(run.model.graph.initializer) == 2, "both Conv nodes must share one weight and one bias"


@pytest.mark.parametrize("group", ["", "group: 4"], ids=["group_implied", "group_given"])
def test_depthwise_convolution_fork_type(tmp_path, group):
    text = net_text(
        f"""
        layer {{ name: "dw" type: "DepthwiseConvolution" bottom: "data" top: "dw"
          convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 {group} }} }}
        """,
        {"data": (1, 4, 6, 6)},
    )
    run = run_net(tmp_path, text)
    w, b = run.weights("dw")
    assert w.shape == (4, 1, 3, 3)
    expected = conv2d(run.inputs["data"], w, b, pad=(1, 1), group=4)
    assert_close(run.onnx["dw"], expected, what="onnxruntime")
    assert_close(run.torch["dw"], expected, what="torch reference")
