"""Crop: explicit crop_param against numpy slicing and OpenCV; derived offsets (no crop_param)
against hand-computed coordinate maps and the explicit offsets of the real FCN files."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest

import caffe2onnx
from caffe2onnx.errors import LayerError, ShapeError
from caffe2onnx.ir import Layer
from caffe2onnx.layers.conv import ConvParams
from caffe2onnx.layers.crop import CropParams, crop_map, derive_offsets
from caffe2onnx.layers.pooling import PoolParams
from tests.helpers import CORPUS, assert_close, net_text, opencv_forward, run_net, write
from tests.reference import conv2d, deconv2d


def crop_reference(data: np.ndarray, ref_shape, axis: int, offsets) -> np.ndarray:
    """Caffe Crop (spec 3.4): axes from ``axis`` on take ``data[off : off + ref]``."""
    axis = axis + data.ndim if axis < 0 else axis
    offsets = list(offsets) or [0]
    if len(offsets) == 1:
        offsets = offsets * (data.ndim - axis)
    index = [slice(None)] * axis
    for i, offset in enumerate(offsets):
        index.append(slice(offset, offset + ref_shape[axis + i]))
    return data[tuple(index)]


# ----------------------------------------------------------------------------- explicit crop_param

# crop_param, data shape, reference shape, axis, offsets (as the spec reads them)
CROP_CASES = {
    "empty_param_offset0": ("crop_param { }", (2, 3, 8, 9), (2, 1, 5, 6), 2, ()),
    "one_offset_all_axes": ("crop_param { offset: 2 }", (2, 3, 8, 9), (1, 1, 5, 6), 2, (2,)),
    "two_offsets_hw": ("crop_param { axis: 2 offset: 1 offset: 3 }", (1, 3, 8, 9), (1, 1, 5, 6), 2, (1, 3)),
    "axis1_crops_channels": (
        "crop_param { axis: 1 offset: 1 offset: 2 offset: 0 }",
        (2, 5, 8, 9),
        (1, 3, 4, 9),
        1,
        (1, 2, 0),
    ),
    "axis_minus1_width_only": ("crop_param { axis: -1 offset: 3 }", (1, 2, 7, 9), (1, 1, 1, 4), -1, (3,)),
    "axis3_width_only": ("crop_param { axis: 3 offset: 5 }", (1, 2, 7, 9), (1, 1, 1, 4), 3, (5,)),
    "exact_fit": ("crop_param { offset: 3 }", (1, 2, 8, 9), (1, 2, 5, 6), 2, (3,)),
}


def _crop_net(param: str, data_shape, ref_shape) -> str:
    return net_text(
        f"""
        layer {{ name: "crop" type: "Crop" bottom: "data" bottom: "ref" top: "crop" {param} }}
        """,
        {"data": data_shape, "ref": ref_shape},
    )


@pytest.mark.parametrize("case", CROP_CASES, ids=list(CROP_CASES))
def test_crop_matches_numpy_and_opencv(case, tmp_path):
    param, data_shape, ref_shape, axis, offsets = CROP_CASES[case]
    run = run_net(tmp_path, _crop_net(param, data_shape, ref_shape), make_caffemodel=False)
    expected = crop_reference(run.inputs["data"], ref_shape, axis, offsets)
    assert_close(run.onnx["crop"], expected, rtol=0, atol=0, what="onnxruntime")
    assert_close(run.torch["crop"], expected, rtol=0, atol=0, what="torch reference")
    cv = opencv_forward(run.prototxt, None, run.inputs, ["crop"])
    assert_close(cv["crop"], expected, rtol=0, atol=0, what="opencv")


def test_crop_3d_blob(tmp_path):
    text = _crop_net("crop_param { axis: 1 offset: 2 }", (2, 6, 7), (1, 3, 4))
    run = run_net(tmp_path, text, make_caffemodel=False)
    expected = run.inputs["data"][:, 2:5, 2:6]
    assert_close(run.onnx["crop"], expected, rtol=0, atol=0, what="onnxruntime")
    assert_close(run.torch["crop"], expected, rtol=0, atol=0, what="torch reference")


@pytest.mark.parametrize("opset", [13, 21])
def test_crop_at_opset(opset, tmp_path):
    text = _crop_net("crop_param { offset: 1 offset: 2 }", (1, 2, 6, 7), (1, 1, 4, 4))
    run = run_net(tmp_path, text, make_caffemodel=False, opset=opset)
    assert run.model.opset_import[0].version == opset
    expected = run.inputs["data"][:, :, 1:5, 2:6]
    assert_close(run.onnx["crop"], expected, rtol=0, atol=0, what=f"onnxruntime opset {opset}")


BAD_CROPS = {
    "offset_too_large": (
        "crop_param { offset: 4 }",
        (1, 2, 8, 9),
        ShapeError,
        r"layer 'crop' \(Crop\): crop out of bounds on axis 2: data size 8 - offset 4 < reference size 5",
    ),
    "too_many_offsets": (
        "crop_param { offset: 1 offset: 1 offset: 1 }",
        (1, 2, 8, 9),
        ShapeError,
        r"layer 'crop'.*3 offsets for 2 cropped axes",
    ),
    "axis_out_of_range": ("crop_param { axis: 4 }", (1, 2, 8, 9), LayerError, r"layer 'crop'.*axis 4"),
    "reference_larger": ("crop_param { }", (1, 2, 4, 9), ShapeError, r"axis 2: data size 4 - offset 0"),
}


@pytest.mark.parametrize("case", BAD_CROPS, ids=list(BAD_CROPS))
def test_bad_crop_is_refused(case, tmp_path):
    param, data_shape, error, message = BAD_CROPS[case]
    path = write(tmp_path, _crop_net(param, data_shape, (1, 1, 5, 6)))
    with pytest.raises(error, match=message):
        caffe2onnx.load_net(path, require_weights=False)


def test_crop_needs_two_bottoms(tmp_path):
    text = net_text(
        'layer { name: "crop" type: "Crop" bottom: "data" top: "crop" crop_param { offset: 1 } }',
        {"data": (1, 2, 8, 9)},
    )
    with pytest.raises(LayerError, match=r"layer 'crop' \(Crop\): has 1 bottom"):
        caffe2onnx.load_net(write(tmp_path, text), require_weights=False)


# ----------------------------------------------------------------------------- derived offsets, by hand

# Convolution (k 4, s 2, pad_h 4, pad_w 2) then Deconvolution (k 4, s 2), cropped to the input.
# Per spatial axis, x -> conv: x/2 + (p - 3/2)/2 -> deconv: 2*(...) + 3/2 = x + p - 3/2 + 3/2
# ... i.e. x + p: p=4 gives offset 4 on H, p=2 offset 2 on W (hand-computed from spec 3.3).
FCN_LIKE = """
layer { name: "down" type: "Convolution" bottom: "data" top: "down"
  convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad_h: 4 pad_w: %d } }
layer { name: "up" type: "Deconvolution" bottom: "down" top: "up"
  convolution_param { num_output: 2 kernel_size: 4 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" %s }
"""


@pytest.mark.parametrize("pad_w", [4, 2], ids=["pad4_offset4", "pad_w2_offsets4_2"])
def test_derived_offsets_match_hand_computed_map(pad_w, tmp_path):
    shape = (1, 2, 10, 11)
    run = run_net(tmp_path, net_text(FCN_LIKE % (pad_w, ""), {"data": shape}))
    params = run.net.layer("crop").params
    expected_offsets = (4,) if pad_w == 4 else (4, 2)
    assert params == CropParams(axis=2, offsets=expected_offsets, derived=True)

    (w1, b1), (w2, b2) = run.weights("down"), run.weights("up")
    down = conv2d(run.inputs["data"], w1, b1, stride=(2, 2), pad=(4, pad_w))
    up = deconv2d(down.astype(np.float32), w2, b2, stride=(2, 2))
    expected = up[:, :, 4 : 4 + 10, pad_w : pad_w + 11]
    assert_close(run.onnx["crop"], expected, what="onnxruntime")
    assert_close(run.torch["crop"], expected, what="torch reference")
    # OpenCV does not derive offsets (no crop_param = offset 0): give it the hand-computed ones.
    explicit = " ".join(f"offset: {o}" for o in expected_offsets)
    cv_net = write(
        tmp_path, net_text(FCN_LIKE % (pad_w, f"crop_param {{ {explicit} }}"), {"data": shape}), "cv.prototxt"
    )
    cv = opencv_forward(cv_net, run.caffemodel, run.inputs, ["crop"])
    assert_close(cv["crop"], expected, what="opencv")


def _conv(
    name: str, bottom: str, kernel, stride=(1,), pad=(0,), dilation=(1,), *, kind="Convolution"
) -> Layer:
    params = ConvParams(1, True, tuple(kernel), tuple(stride), tuple(pad), tuple(dilation), 1, None, None)
    return Layer(name, kind, (bottom,), (name,), params)


def _pool(name: str, bottom: str, kernel=(2, 2), stride=(2, 2), pad=(0, 0)) -> Layer:
    return Layer(name, "Pooling", (bottom,), (name,), PoolParams(0, kernel, stride, pad, True))


def _producers(*layers: Layer) -> dict[str, Layer]:
    return {top: layer for layer in layers for top in layer.tops}


def test_walk_on_hand_made_fcn_chain():
    # x -conv k3 p100-> c (x + 99) -pool k2 s2-> p (y/2 - 1/4) -deconv k4 s2-> u (2y + 3/2)
    # so u = x + 100.
    conv = _conv("c", "x", (3,), pad=(100,))
    pool = _pool("p", "c")
    up = _conv("u", "p", (4,), (2,), kind="Deconvolution")
    assert crop_map("u", "x", _producers(conv, pool, up)).b == (Fraction(-100),) * 2
    crop = Layer("crop", "Crop", ("u", "x"), ("out",), CropParams(2, None, True))
    assert derive_offsets(crop, _producers(conv, pool, up)) == (100,)

    # A Crop on the path counts with b = -offset: cropping u by 100 gives x's coordinates.
    explicit = Layer("k", "Crop", ("u", "x"), ("k",), CropParams(2, (100,)))
    twice = _conv("t", "k", (1,))
    crop2 = Layer("crop2", "Crop", ("t", "x"), ("out2",), CropParams(2, None, True))
    assert derive_offsets(crop2, _producers(conv, pool, up, explicit, twice)) == (0,)


def test_walk_through_padded_deconvolution_and_dilation():
    # conv k4 s2 p4: y = x/2 + (4 - 3/2)/2 = x/2 + 5/4; deconv k4 s2 p1: 2y + 3/2 - 1 = x + 3
    down = _conv("d", "x", (4,), (2,), (4,))
    up = _conv("u", "d", (4,), (2,), (1,), kind="Deconvolution")
    crop = Layer("crop", "Crop", ("u", "x"), ("out",), CropParams(2, None, True))
    assert derive_offsets(crop, _producers(down, up)) == (3,)
    # dilation 2 makes k3 span 5: conv p4 gives x + 4 - 2
    dilated = _conv("u", "x", (3,), pad=(4,), dilation=(2,))
    assert derive_offsets(crop, _producers(dilated)) == (2,)
    # deconv dilation 3, k3 (span 7), s1, p1: x + 3 - 1
    dilated = _conv("u", "x", (3,), pad=(1,), dilation=(3,), kind="Deconvolution")
    assert derive_offsets(crop, _producers(dilated)) == (2,)


def test_walk_gives_per_axis_offsets():
    conv = _conv("c", "x", (3, 5), pad=(3, 4))  # b = (3 - 1, 4 - 2)
    crop = Layer("crop", "Crop", ("c", "x"), ("out",), CropParams(2, None, True))
    assert derive_offsets(crop, _producers(conv)) == (2,)  # equal offsets: one value
    conv = _conv("c", "x", (3, 5), pad=(3, 5))
    assert derive_offsets(crop, _producers(conv)) == (2, 3)


DERIVE_ERRORS = {
    "scale_mismatch": (
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
        "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }",
        "pool",
        r"layer 'crop' \(Crop\): no crop_param, and the two bottoms are at different scales: the data maps to the reference by y = 2\*x \+ 1/2;",
    ),
    "half_pixel_offset": (
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        "convolution_param { num_output: 2 kernel_size: 2 pad: 1 } }",
        "conv",
        r"offset 1/2 is not a non-negative integer.*crop_param \{ axis: 2 offset",
    ),
    "negative_offset": (
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        "convolution_param { num_output: 2 kernel_size: 3 } }",
        "conv",
        r"offset -1 is not a non-negative integer",
    ),
    "unknown_mapping": (
        'layer { name: "shuffle" type: "Reshape" bottom: "data" top: "shuffle" '
        "reshape_param { shape { dim: 0 dim: 0 dim: 0 dim: 0 } } }",
        "shuffle",
        r"layer 'crop' \(Crop\): no crop_param, and cannot relate the coordinates of 'shuffle' and "
        r"'data': 'shuffle' \(Reshape\): its coordinate mapping is unknown; give the offsets explicitly",
    ),
}


@pytest.mark.parametrize("case", DERIVE_ERRORS, ids=list(DERIVE_ERRORS))
def test_underivable_offsets_are_refused(case, tmp_path):
    layer, top, message = DERIVE_ERRORS[case]
    text = net_text(
        layer + f'\nlayer {{ name: "crop" type: "Crop" bottom: "{top}" bottom: "data" top: "crop" }}',
        {"data": (1, 2, 8, 8)},
    )
    with pytest.raises(LayerError, match=message):
        caffe2onnx.load_net(write(tmp_path, text), require_weights=False)


# ----------------------------------------------------------------------------- derived offsets, real nets


def _crop_params(path, **options) -> dict[str, CropParams]:
    net = caffe2onnx.load_net(path, require_weights=False, **options)
    return {layer.name: layer.params for layer in net.layers if layer.type == "Crop"}


REAL_FCN = {
    # file, input shapes, the offsets written in the file (spec 3.3)
    "fcn8s": ("fcn8s_pascal.deploy.prototxt", {}, {"score_pool4c": 5, "score_pool3c": 9, "score": 31}),
    "fcn16s": ("fcn16s_pascal.val.prototxt", {"data": (1, 3, 64, 80)}, {"score_pool4c": 5, "score": 27}),
    "fcn32s": ("fcn32s_pascal.val.prototxt", {"data": (1, 3, 64, 80)}, {"score": 19}),
}


@pytest.mark.parametrize("case", REAL_FCN, ids=list(REAL_FCN))
def test_fcn_offsets_are_derived_without_crop_param(case, tmp_path):
    name, shapes, written = REAL_FCN[case]
    text = (CORPUS / name).read_text()
    explicit = _crop_params(CORPUS / name, input_shapes=shapes)
    assert {k: p.offsets for k, p in explicit.items()} == {k: (v,) for k, v in written.items()}
    stripped, count = re.subn(r"crop_param\s*\{[^}]*\}", "", text)
    assert count == len(written)
    derived = _crop_params(write(tmp_path, stripped), input_shapes=shapes)
    assert derived == {k: CropParams(2, (v,), derived=True) for k, v in written.items()}


def test_fcn8s_v1_file_with_parameterless_crop():
    # The DeconvNet repository's FCN-8s: V1 "CROP" layers, all named 'crop', no parameters.
    net = caffe2onnx.load_net(CORPUS / "fcn8s_pascal_deconvnetrepo.deploy.prototxt", require_weights=False)
    crops = [layer for layer in net.layers if layer.type == "Crop"]
    assert [layer.params.offsets for layer in crops] == [(5,), (9,), (31,)]
    assert net.shapes[crops[-1].tops[0]] == (1, 21, 500, 500)


def test_hed_offsets():
    # conv1_1 has pad 35 (x + 34); side output n is upsampled by f = 2^(n-1) after n-1 pools
    # (k2 s2: y/2 - 1/4) and a deconvolution k=2f, s=f (f*y + (2f-1)/2): x + 34 + f/2, f > 1.
    crops = _crop_params(CORPUS / "hed_bsds.train_val.prototxt", input_shapes={"data": (1, 3, 96, 112)})
    assert [p.offsets for p in crops.values()] == [(34,), (35,), (36,), (38,), (42,)]
