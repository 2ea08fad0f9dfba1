"""Interp, PixelShuffle and Resample against numpy references written from the spec, and OpenCV."""

from __future__ import annotations

import pytest

from caffe2onnx import load_net
from caffe2onnx.errors import LayerError, ShapeError
from tests.helpers import CORPUS, assert_close, net_text, opencv_forward, run_net, write
from tests.reference_resize import caffe_interp, opencv_nearest, pixel_shuffle


def _node(run, op_type: str):
    nodes = [n for n in run.model.graph.node if n.op_type == op_type]
    assert nodes, f"no {op_type} node in {[n.op_type for n in run.model.graph.node]}"
    return nodes[0]


# ----------------------------------------------------------------------------- Interp

# case: (interp_param, input H x W, expected output H x W, pad_beg, pad_end, OpenCV agrees)
# OpenCV ignores pad_beg/pad_end, fails on shrink_factor and ignores it next to zoom_factor.
INTERP_CASES = {
    "zoom2": ("zoom_factor: 2", (5, 7), (9, 13), 0, 0, True),
    "zoom3": ("zoom_factor: 3", (4, 3), (10, 7), 0, 0, True),
    "shrink2": ("shrink_factor: 2", (9, 8), (5, 4), 0, 0, False),
    "shrink3_then_zoom2": ("shrink_factor: 3 zoom_factor: 2", (10, 8), (7, 5), 0, 0, False),
    "height_width_up_and_down": ("height: 9 width: 4", (5, 7), (9, 4), 0, 0, True),
    "height_width_down": ("height: 3 width: 4", (7, 9), (3, 4), 0, 0, True),
    "out_1x1": ("height: 1 width: 1", (5, 6), (1, 1), 0, 0, True),
    "out_one_row": ("height: 1 width: 8", (4, 5), (1, 8), 0, 0, True),
    "input_one_row_zoom": ("zoom_factor: 2", (1, 5), (1, 9), 0, 0, True),
    "same_size_copy": ("height: 5 width: 7", (5, 7), (5, 7), 0, 0, True),
    "zoom_wins_over_height_width": ("zoom_factor: 2 height: 3 width: 3", (4, 5), (7, 9), 0, 0, True),
    "zoom2_pad_beg_end": ("zoom_factor: 2 pad_beg: -1 pad_end: -2", (7, 8), (7, 9), -1, -2, False),
    "shrink2_pads_deeplab_msc": ("shrink_factor: 2 pad_beg: -1 pad_end: -1", (9, 10), (4, 4), -1, -1, False),
    "height_width_pad_end": ("height: 6 width: 6 pad_end: -2", (6, 7), (6, 6), 0, -2, False),
    "pads_only_copy": ("height: 5 width: 6 pad_beg: -1 pad_end: -1", (7, 8), (5, 6), -1, -1, False),
}


@pytest.mark.parametrize("case", INTERP_CASES, ids=list(INTERP_CASES))
def test_interp_matches_caffe_reference(case, tmp_path):
    params, size, out, pad_beg, pad_end, opencv_agrees = INTERP_CASES[case]
    text = net_text(
        f"""
        layer {{ name: "interp" type: "Interp" bottom: "data" top: "interp"
          interp_param {{ {params} }} }}
        """,
        {"data": (2, 3, *size)},
    )
    run = run_net(tmp_path, text)
    expected = caffe_interp(run.inputs["data"], *out, pad_beg=pad_beg, pad_end=pad_end)
    assert expected.shape == (2, 3, *out)
    assert_close(run.onnx["interp"], expected, what="onnxruntime")
    assert_close(run.torch["interp"], expected, what="torch reference")
    if opencv_agrees:
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["interp"])
        assert_close(cv["interp"], expected, what="opencv")


def test_interp_resize_node_is_align_corners_with_sizes(tmp_path):
    text = net_text(
        'layer { name: "up" type: "Interp" bottom: "x" top: "up" interp_param { zoom_factor: 2 } }',
        {"x": (1, 2, 3, 4)},
    )
    node = _node(run_net(tmp_path, text), "Resize")
    attrs = {a.name: a.s.decode() for a in node.attribute if a.s}
    assert attrs == {"mode": "linear", "coordinate_transformation_mode": "align_corners"}
    assert list(node.input[1:3]) == ["", ""] and node.input[3], "Resize must get sizes, not scales"


@pytest.mark.parametrize("opset", range(13, 22), ids=lambda o: f"opset{o}")
def test_interp_with_crop_at_every_opset(opset, tmp_path):
    text = net_text(
        """
        layer { name: "interp" type: "Interp" bottom: "data" top: "interp"
          interp_param { zoom_factor: 3 pad_beg: -1 pad_end: -1 } }
        """,
        {"data": (1, 2, 6, 5)},
    )
    run = run_net(tmp_path, text, opset=opset)
    expected = caffe_interp(run.inputs["data"], 10, 7, pad_beg=-1, pad_end=-1)
    assert_close(run.onnx["interp"], expected, what=f"onnxruntime opset {opset}")
    assert_close(run.torch["interp"], expected, what="torch reference")


@pytest.mark.parametrize(
    "params,out", [("", (6, 9)), ("zoom_factor: 2", (5, 7))], ids=["size_of_bottom1", "zoom_wins"]
)
def test_interp_second_bottom_gives_the_size(params, out, tmp_path):
    text = net_text(
        f"""
        layer {{ name: "interp" type: "Interp" bottom: "data" bottom: "like" top: "interp"
          interp_param {{ {params} }} }}
        """,
        {"data": (1, 3, 3, 4), "like": (1, 5, 6, 9)},
    )
    run = run_net(tmp_path, text)
    expected = caffe_interp(run.inputs["data"], *out)
    assert_close(run.onnx["interp"], expected, what="onnxruntime")
    assert_close(run.torch["interp"], expected, what="torch reference")


def test_interp_opencv_corpus_file(tmp_path):
    prototxt = CORPUS / "opencv_layer_interp.test.prototxt"
    run = run_net(tmp_path, prototxt)
    first = caffe_interp(run.inputs["input"], 9, 8)
    output = caffe_interp(first, 17, 15)
    cv = opencv_forward(prototxt, None, run.inputs, ["first", "output"])
    for blob, expected in (("first", first), ("output", output)):
        assert_close(run.onnx[blob], expected, what=f"onnxruntime {blob}")
        assert_close(run.torch[blob], expected, what=f"torch {blob}")
        assert_close(cv[blob], expected, what=f"opencv {blob}")


INTERP_ERRORS = {
    "no_size_rule": ("", (1, 3, 4, 4), LayerError, "no output size"),
    "height_without_width": ("height: 5", (1, 3, 4, 4), LayerError, "no output size"),
    "positive_pad_beg": ("zoom_factor: 2 pad_beg: 1", (1, 3, 4, 4), LayerError, "must be <= 0"),
    "positive_pad_end": ("zoom_factor: 2 pad_end: 2", (1, 3, 4, 4), LayerError, "pad_end 2"),
    "shrink_0": ("shrink_factor: 0", (1, 3, 4, 4), LayerError, "shrink_factor must be >= 1, got 0"),
    "zoom_0": ("zoom_factor: 0", (1, 3, 4, 4), LayerError, "zoom_factor must be >= 1, got 0"),
    "height_0": ("height: 0 width: 4", (1, 3, 4, 4), LayerError, "height 0"),
    "crop_everything": ("zoom_factor: 2 pad_beg: -2 pad_end: -2", (1, 3, 4, 6), ShapeError, "crops"),
    "not_4d": ("zoom_factor: 2", (3, 4, 4), ShapeError, "4-D"),
}


@pytest.mark.parametrize("case", INTERP_ERRORS, ids=list(INTERP_ERRORS))
def test_interp_bad_parameters(case, tmp_path):
    params, shape, error, message = INTERP_ERRORS[case]
    text = net_text(
        f'layer {{ name: "bad_interp" type: "Interp" bottom: "x" top: "y" interp_param {{ {params} }} }}',
        {"x": shape},
    )
    with pytest.raises(error, match=f"bad_interp.*{message}"):
        load_net(write(tmp_path, text), random_weights=0)


# ----------------------------------------------------------------------------- PixelShuffle

PIXEL_SHUFFLE_CASES = {"r2": (2, 8, (3, 4)), "r3": (3, 18, (2, 3)), "r1_identity": (1, 5, (3, 3))}


@pytest.mark.parametrize("case", PIXEL_SHUFFLE_CASES, ids=list(PIXEL_SHUFFLE_CASES))
def test_pixel_shuffle_matches_index_formula(case, tmp_path):
    r, channels, size = PIXEL_SHUFFLE_CASES[case]
    text = net_text(
        f"""
        layer {{ name: "ps" type: "PixelShuffle" bottom: "data" top: "ps"
          pixel_shuffle_param {{ upscale_factor: {r} }} }}
        """,
        {"data": (2, channels, *size)},
    )
    run = run_net(tmp_path, text)
    expected = pixel_shuffle(run.inputs["data"], r)
    assert_close(run.onnx["ps"], expected, rtol=0, atol=0, what="onnxruntime")
    assert_close(run.torch["ps"], expected, rtol=0, atol=0, what="torch reference")
    if r > 1:
        attrs = {a.name: a for a in _node(run, "DepthToSpace").attribute}
        assert attrs["mode"].s == b"CRD" and attrs["blocksize"].i == r


@pytest.mark.parametrize("opset", [13, 21], ids=lambda o: f"opset{o}")
def test_pixel_shuffle_after_convolution(opset, tmp_path):
    text = net_text(
        """
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param { num_output: 12 kernel_size: 3 pad: 1 } }
        layer { name: "ps" type: "PixelShuffle" bottom: "conv" top: "ps"
          pixel_shuffle_param { upscale_factor: 2 } }
        """,
        {"data": (1, 2, 4, 5)},
    )
    run = run_net(tmp_path, text, opset=opset)
    assert_close(run.onnx["ps"], pixel_shuffle(run.onnx["conv"], 2), what=f"onnxruntime opset {opset}")
    assert_close(run.torch["ps"], pixel_shuffle(run.torch["conv"], 2), what="torch reference")


@pytest.mark.parametrize(
    "factor,channels,error,message",
    [
        (2, 6, ShapeError, r"input channels 6 .* not divisible by upscale_factor\^2 = 2\^2 = 4"),
        (3, 12, ShapeError, r"not divisible by upscale_factor\^2 = 3\^2 = 9"),
        (0, 4, LayerError, "upscale_factor must be >= 1, got 0"),
    ],
    ids=["c6_r2", "c12_r3", "r0"],
)
def test_pixel_shuffle_bad_parameters(factor, channels, error, message, tmp_path):
    text = net_text(
        f"""
        layer {{ name: "bad_ps" type: "PixelShuffle" bottom: "x" top: "y"
          pixel_shuffle_param {{ upscale_factor: {factor} }} }}
        """,
        {"x": (1, channels, 3, 3)},
    )
    with pytest.raises(error, match=f"bad_ps.*{message}"):
        load_net(write(tmp_path, text), random_weights=0)


# ----------------------------------------------------------------------------- Resample


@pytest.mark.parametrize(
    "name,inputs,out",
    [
        ("opencv_nearest_resample", {"input": (1, 1, 2, 3)}, (4, 6)),
        ("opencv_nearest_2inps", {"input_0": (1, 1, 2, 3), "input_1": (1, 1, 4, 6)}, (4, 6)),
    ],
    ids=["factor2", "two_bottoms"],
)
def test_resample_opencv_corpus_files(name, inputs, out, tmp_path):
    prototxt = CORPUS / f"{name}.test.prototxt"
    run = run_net(tmp_path, prototxt)
    x = run.inputs[next(iter(inputs))]
    expected = opencv_nearest(x, *out)
    cv = opencv_forward(prototxt, None, run.inputs, ["Resample1"])  # OpenCV names outputs by layer
    assert_close(run.onnx["out"], expected, rtol=0, atol=0, what="onnxruntime")
    assert_close(run.torch["out"], expected, rtol=0, atol=0, what="torch reference")
    assert_close(cv["Resample1"], expected, rtol=0, atol=0, what="opencv")


# case: (resample_param, input H x W, second bottom H x W or None, expected output H x W, OpenCV runs it)
RESAMPLE_CASES = {
    "factor3": ("factor: 3", (2, 3), None, (6, 9), True),
    "factor1.5": ("factor: 1.5", (2, 3), None, (3, 4), True),
    "factor1.7": ("factor: 1.7", (3, 5), None, (5, 8), True),
    "factor1.4_float32_size": ("factor: 1.4", (5, 5), None, (7, 7), True),
    "factor1.1": ("factor: 1.1", (5, 10), None, (5, 11), True),
    "factor1_identity": ("factor: 1", (3, 5), None, (3, 5), True),
    "factor0.5_down": ("factor: 0.5", (6, 5), None, (3, 2), False),  # OpenCV refuses factor < 1
    "height_width": ("height: 7 width: 11", (3, 5), None, (7, 11), True),
    "height_width_down": ("height: 2 width: 3", (3, 5), None, (2, 3), True),
    "double_rounding": ("height: 98 width: 82", (2, 4), None, (98, 82), True),
    "bottom1_down": ("", (4, 6), (3, 5), (3, 5), True),
    "bottom1_up_factor1": ("factor: 1", (3, 5), (7, 11), (7, 11), True),
}


@pytest.mark.parametrize("case", RESAMPLE_CASES, ids=list(RESAMPLE_CASES))
def test_resample_nearest_matches_opencv_rule(case, tmp_path):
    params, size, like, out, opencv_runs = RESAMPLE_CASES[case]
    inputs = {"data": (1, 2, *size)}
    bottoms = 'bottom: "data"'
    if like:
        inputs["like"] = (1, 1, *like)
        bottoms += ' bottom: "like"'
    text = net_text(
        f"""
        layer {{ name: "rs" type: "Resample" {bottoms} top: "rs"
          resample_param {{ type: NEAREST {params} }} }}
        """,
        inputs,
    )
    run = run_net(tmp_path, text)
    expected = opencv_nearest(run.inputs["data"], *out)
    assert_close(run.onnx["rs"], expected, rtol=0, atol=0, what="onnxruntime")
    assert_close(run.torch["rs"], expected, rtol=0, atol=0, what="torch reference")
    if opencv_runs:
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["rs"])
        assert_close(cv["rs"], expected, rtol=0, atol=0, what="opencv")


@pytest.mark.parametrize("opset", [13, 21], ids=lambda o: f"opset{o}")
def test_resample_at_opset(opset, tmp_path):
    text = net_text(
        """
        layer { name: "rs" type: "Resample" bottom: "data" top: "rs"
          resample_param { type: NEAREST height: 5 width: 9 } }
        """,
        {"data": (1, 2, 3, 4)},
    )
    run = run_net(tmp_path, text, opset=opset)
    expected = opencv_nearest(run.inputs["data"], 5, 9)
    assert_close(run.onnx["rs"], expected, rtol=0, atol=0, what=f"onnxruntime opset {opset}")
    assert_close(run.torch["rs"], expected, rtol=0, atol=0, what="torch reference")


RESAMPLE_ERRORS = {
    "linear": ("type: LINEAR factor: 2", 1, LayerError, "type LINEAR is not supported"),
    "default_type_is_linear": ("factor: 2", 1, LayerError, "type LINEAR is not supported"),
    "cubic": ("type: CUBIC height: 4 width: 4", 1, LayerError, "type CUBIC"),
    "factor_and_height_width": ("type: NEAREST factor: 2 height: 4 width: 4", 1, LayerError, "keep only one"),
    "factor2_with_second_bottom": ("type: NEAREST factor: 2", 2, LayerError, "factor 2.0 must be 1"),
    "no_size": ("type: NEAREST", 1, LayerError, "no output size"),
    "height_only": ("type: NEAREST height: 4", 1, LayerError, "no output size"),
    "factor_0": ("type: NEAREST factor: 0", 1, LayerError, "factor must be positive"),
    "factor_too_small": ("type: NEAREST factor: 0.1", 1, ShapeError, "makes the 3x4 input 0x0"),
}


@pytest.mark.parametrize("case", RESAMPLE_ERRORS, ids=list(RESAMPLE_ERRORS))
def test_resample_bad_parameters(case, tmp_path):
    params, num_bottoms, error, message = RESAMPLE_ERRORS[case]
    inputs = {"x": (1, 2, 3, 4), "like": (1, 2, 6, 8)}
    bottoms = " ".join(f'bottom: "{b}"' for b in list(inputs)[:num_bottoms])
    text = net_text(
        f'layer {{ name: "bad_rs" type: "Resample" {bottoms} top: "y" resample_param {{ {params} }} }}',
        inputs,
    )
    with pytest.raises(error, match=f"bad_rs.*{message}"):
        load_net(write(tmp_path, text), random_weights=0)
