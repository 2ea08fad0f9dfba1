"""Upsample (SegNet/ENet scatter, YOLO nearest) and Unpooling (DeconvNet) against numpy loops.

The references in tests/reference_unpooling.py follow Caffe's CPU loops from the spec.
OpenCV's Caffe importer has neither ``Upsample`` nor ``Unpooling`` (it cannot create
either layer type), so there is no OpenCV comparison here.
"""

from __future__ import annotations

import numpy as np
import pytest

from caffe2onnx import load_net
from caffe2onnx.errors import LayerError, ShapeError
from tests.helpers import assert_close, net_text, run_net, write
from tests.reference_unpooling import (
    deconvnet_unpool,
    max_pool_with_mask,
    nearest_upsample,
    segnet_upsample,
)


def _pool_text(kernel, stride) -> str:
    (kh, kw), (sh, sw) = kernel, stride
    return f"kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw}"


def _random(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _assert_both(run, blob: str, expected) -> None:
    assert_close(run.onnx[blob], expected, what="onnxruntime")
    assert_close(run.torch[blob], expected, what="torch reference")


# ----------------------------------------------------------------------------- SegNet Upsample

# id: (pooling input H x W, kernel, stride, upsample_param, top H x W)
SEGNET_CASES = {
    "scale2": ((8, 10), (2, 2), (2, 2), "scale: 2", (8, 10)),
    "default_scale_is_2": ((6, 8), (2, 2), (2, 2), "", (6, 8)),
    "odd_45_to_23_pad_out_h": ((45, 10), (2, 2), (2, 2), "scale: 2 pad_out_h: true", (45, 10)),
    "odd_pad_out_hw": ((9, 11), (2, 2), (2, 2), "scale: 2 pad_out_h: true pad_out_w: true", (9, 11)),
    "upsample_hw": ((9, 11), (2, 2), (2, 2), "upsample_h: 9 upsample_w: 11", (9, 11)),
    "bayesian_scale_and_upsample_hw": (
        (9, 11),
        (2, 2),
        (2, 2),
        "scale: 2 upsample_h: 9 upsample_w: 11",
        (9, 11),
    ),
    "scale_h2_w3": ((8, 9), (2, 3), (2, 3), "scale_h: 2 scale_w: 3", (8, 9)),
    "overlapping_k3s2_duplicates": ((9, 9), (3, 3), (2, 2), "upsample_h: 9 upsample_w: 9", (9, 9)),
    "size_mismatch_rows_shift": ((8, 8), (2, 2), (2, 2), "upsample_h: 10 upsample_w: 10", (10, 10)),
    "empty_window_mask_minus1": ((4, 4), (1, 1), (2, 2), "scale: 2", (6, 6)),
}


@pytest.mark.parametrize("case", SEGNET_CASES, ids=list(SEGNET_CASES))
def test_segnet_upsample_with_mask_input(case, tmp_path):
    """The mask is a net input holding a valid Caffe mask; values are unrelated features."""
    (h, w), kernel, stride, params, (oh, ow) = SEGNET_CASES[case]
    _, mask = max_pool_with_mask(_random((2, 3, h, w), seed=1), kernel, stride)
    values = _random(mask.shape, seed=2)
    if case == "overlapping_k3s2_duplicates":
        assert any(len(set(m.ravel())) < m.size for m in mask.reshape(6, -1)), "the case needs duplicates"
    if case == "empty_window_mask_minus1":
        assert (mask == -1).any()
    text = net_text(
        f"""
        layer {{ name: "up" type: "Upsample" bottom: "val" bottom: "mask" top: "up"
          upsample_param {{ {params} }} }}
        """,
        {"val": values.shape, "mask": mask.shape},
    )
    run = run_net(tmp_path, text, inputs={"val": values, "mask": mask})
    assert run.net.shapes["up"] == (2, 3, oh, ow)
    _assert_both(run, "up", segnet_upsample(values, mask, oh, ow))


@pytest.mark.parametrize("case", SEGNET_CASES, ids=list(SEGNET_CASES))
def test_segnet_pooling_then_upsample(case, tmp_path):
    """End to end: Pooling's mask top feeds Upsample, as in SegNet and ENet."""
    (h, w), kernel, stride, params, (oh, ow) = SEGNET_CASES[case]
    text = net_text(
        f"""
        layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
          pooling_param {{ pool: MAX {_pool_text(kernel, stride)} }} }}
        layer {{ name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up"
          upsample_param {{ {params} }} }}
        """,
        {"data": (2, 3, h, w)},
    )
    run = run_net(tmp_path, text)
    values, mask = max_pool_with_mask(run.inputs["data"], kernel, stride)
    expected = segnet_upsample(values, mask, oh, ow)
    _assert_both(run, "up", expected)
    # Non-overlapping windows give unique indices: the plain ScatterElements suffices.
    overlapping = any(k > s for k, s in zip(kernel, stride))
    ops = {node.op_type for node in run.model.graph.node}
    assert ("TopK" in ops) == overlapping


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("source", ["mask_input", "pooling"])
def test_segnet_upsample_at_opset_bounds(opset, source, tmp_path):
    x = _random((1, 4, 9, 7), seed=3)
    values, mask = max_pool_with_mask(x, (3, 3), (2, 2))
    if source == "pooling":
        layers = """
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
          pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
        layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up"
          upsample_param { upsample_h: 9 upsample_w: 7 } }
        """
        text, feed = net_text(layers, {"data": x.shape}), {"data": x}
    else:  # unrelated values: a duplicate index then shows which write wins
        values = _random(values.shape, seed=4)
        layers = """
        layer { name: "up" type: "Upsample" bottom: "val" bottom: "mask" top: "up"
          upsample_param { upsample_h: 9 upsample_w: 7 } }
        """
        text, feed = (
            net_text(layers, {"val": values.shape, "mask": mask.shape}),
            {"val": values, "mask": mask},
        )
    run = run_net(tmp_path, text, inputs=feed, opset=opset)
    _assert_both(run, "up", segnet_upsample(values, mask, 9, 7))


def test_enet_style_conv_between_pooling_and_upsample(tmp_path):
    """ENet: the mask skips a branch; the values come from a 1x1 convolution of the pooled map."""
    text = net_text(
        """
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "pool_mask"
          pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
        layer { name: "conv" type: "Convolution" bottom: "pool" top: "conv"
          convolution_param { num_output: 4 kernel_size: 1 } }
        layer { name: "up" type: "Upsample" bottom: "conv" bottom: "pool_mask" top: "up"
          upsample_param { scale: 2 } }
        """,
        {"data": (1, 4, 6, 8)},
    )
    run = run_net(tmp_path, text)
    _, mask = max_pool_with_mask(run.inputs["data"], (2, 2), (2, 2))
    w, b = run.weights("conv")
    pooled = run.onnx["pool"]
    conv = np.einsum("nchw,oc->nohw", pooled, w[:, :, 0, 0]) + b.reshape(1, -1, 1, 1)
    _assert_both(run, "up", segnet_upsample(conv, mask, 6, 8))


# ----------------------------------------------------------------------------- YOLO Upsample

NEAREST_CASES = {
    "scale2": ("scale: 2", 2),
    "scale3": ("scale: 3", 3),
    "default_scale_1": ("", 1),
    "no_param": (None, 1),
    "huawei_stride2": ("scale: 1 stride: 2", 2),
}


@pytest.mark.parametrize("case", NEAREST_CASES, ids=list(NEAREST_CASES))
def test_yolo_nearest_upsample(case, tmp_path):
    params, scale = NEAREST_CASES[case]
    block = "" if params is None else f"upsample_param {{ {params} }}"
    text = net_text(
        f'layer {{ name: "up" type: "Upsample" bottom: "data" top: "up" {block} }}',
        {"data": (2, 3, 5, 7)},
    )
    run = run_net(tmp_path, text)
    _assert_both(run, "up", nearest_upsample(run.inputs["data"], scale))


@pytest.mark.parametrize("opset", [13, 21])
def test_yolo_nearest_upsample_at_opset_bounds(opset, tmp_path):
    text = net_text(
        'layer { name: "up" type: "Upsample" bottom: "data" top: "up" upsample_param { scale: 2 } }',
        {"data": (1, 4, 3, 6)},
    )
    run = run_net(tmp_path, text, opset=opset)
    _assert_both(run, "up", nearest_upsample(run.inputs["data"], 2))


# ----------------------------------------------------------------------------- DeconvNet Unpooling

# id: (input H x W, unpooling_param, method, kernel, stride, top H x W, with a mask bottom)
UNPOOL_CASES = {
    "max_mask_unpool_hw": ((4, 5), "unpool: MAX kernel_size: 2 stride: 2 unpool_h: 8 unpool_w: 10", "MAX", (2, 2), (2, 2), (8, 10), True),
    "max_mask_odd_unpool_size": ((5, 5), "kernel_size: 2 stride: 2 unpool_size: 9", "MAX", (2, 2), (2, 2), (9, 9), True),
    "max_mask_default_size": ((4, 4), "kernel_size: 2 stride: 2", "MAX", (2, 2), (2, 2), (9, 9), True),
    "max_no_mask_default_size": ((4, 5), "kernel_size: 2 stride: 2", "MAX", (2, 2), (2, 2), (9, 11), False),
    "max_no_mask_clamped": ((4, 5), "kernel_size: 2 stride: 2 unpool_h: 6 unpool_w: 5", "MAX", (2, 2), (2, 2), (6, 5), False),
    "ave_k2s2": ((4, 5), "unpool: AVE kernel_size: 2 stride: 2", "AVE", (2, 2), (2, 2), (9, 11), False),
    "ave_k3s2_overlap": ((4, 5), "unpool: AVE kernel_size: 3 stride: 2", "AVE", (3, 3), (2, 2), (9, 11), False),
    "ave_k3s2_clipped": ((4, 5), "unpool: AVE kernel_size: 3 stride: 2 unpool_h: 6 unpool_w: 8", "AVE", (3, 3), (2, 2), (6, 8), False),
    "ave_hw_forms": ((4, 5), "unpool: AVE kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1", "AVE", (2, 3), (2, 1), (9, 7), False),
    "ave_ignores_mask": ((4, 5), "unpool: AVE kernel_size: 2 stride: 2", "AVE", (2, 2), (2, 2), (9, 11), True),
    "tile_k2s2": ((4, 5), "unpool: TILE kernel_size: 2 stride: 2", "TILE", (2, 2), (2, 2), (9, 11), False),
    "tile_k3s1_overlap": ((4, 5), "unpool: TILE kernel_size: 3 stride: 1", "TILE", (3, 3), (1, 1), (6, 7), False),
    "tile_larger_unpool_size": ((3, 3), "unpool: TILE kernel_size: 2 stride: 2 unpool_size: 10", "TILE", (2, 2), (2, 2), (10, 10), False),
}  # fmt: skip


@pytest.mark.parametrize("case", UNPOOL_CASES, ids=list(UNPOOL_CASES))
def test_deconvnet_unpooling(case, tmp_path):
    (h, w), params, method, kernel, stride, (oh, ow), with_mask = UNPOOL_CASES[case]
    values = _random((2, 3, h, w), seed=4)
    inputs = {"val": values}
    bottoms = 'bottom: "val"'
    mask = None
    if with_mask:
        pool_input = _random((2, 3, oh, ow), seed=5)
        _, mask = max_pool_with_mask(pool_input, (2, 2), (2, 2))
        mask = mask[:, :, :h, :w]
        assert mask.shape == values.shape
        inputs["mask"] = mask
        bottoms += ' bottom: "mask"'
    text = net_text(
        f'layer {{ name: "unpool" type: "Unpooling" {bottoms} top: "unpool" unpooling_param {{ {params} }} }}',
        {name: a.shape for name, a in inputs.items()},
    )
    run = run_net(tmp_path, text, inputs=inputs)
    assert run.net.shapes["unpool"] == (2, 3, oh, ow)
    expected = deconvnet_unpool(values, method, kernel, stride, (oh, ow), mask if method == "MAX" else None)
    _assert_both(run, "unpool", expected)


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("method", ["AVE", "MAX"])
def test_unpooling_at_opset_bounds(opset, method, tmp_path):
    text = net_text(
        f"""
        layer {{ name: "unpool" type: "Unpooling" bottom: "data" top: "unpool"
          unpooling_param {{ unpool: {method} kernel_size: 3 stride: 2 unpool_size: 8 }} }}
        """,
        {"data": (1, 2, 4, 4)},
    )
    run = run_net(tmp_path, text, opset=opset)
    _assert_both(run, "unpool", deconvnet_unpool(run.inputs["data"], method, (3, 3), (2, 2), (8, 8)))


def test_deconvnet_v1_pooling_then_unpooling(tmp_path):
    """DeconvNet's V1 prototxt: POOLING with a mask top, then UNPOOLING with unpool_size."""
    text = """
name: "deconvnet_block"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 14 input_dim: 14
layers { bottom: "data" top: "pool1" top: "pool1_mask" name: "pool1" type: POOLING
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { bottom: "pool1" top: "conv" name: "conv" type: CONVOLUTION
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layers { type: UNPOOLING bottom: "conv" bottom: "pool1_mask" top: "unpool1" name: "unpool1"
  unpooling_param { unpool: MAX kernel_size: 2 stride: 2 unpool_size: 14 } }
"""
    run = run_net(tmp_path, text)
    assert run.net.layer("unpool1").type == "Unpooling"
    _, mask = max_pool_with_mask(run.inputs["data"], (2, 2), (2, 2))
    expected = deconvnet_unpool(run.onnx["conv"], "MAX", (2, 2), (2, 2), (14, 14), mask)
    _assert_both(run, "unpool1", expected)
    assert "TopK" not in {node.op_type for node in run.model.graph.node}


# ----------------------------------------------------------------------------- bad input

UPSAMPLE = 'layer {{ name: "up" type: "Upsample" {bottoms} top: "up" upsample_param {{ {params} }} }}'
TWO = 'bottom: "val" bottom: "mask"'
ONE = 'bottom: "val"'

BAD_PARAMS = {
    "scale1_with_mask": (TWO, "scale: 1", r"scale must be an integer >= 2, got 1"),
    "fractional_scale": (TWO, "scale: 2.5", r"scale must be an integer >= 2, got 2.5"),
    "pad_out_with_scale3": (TWO, "scale: 3 pad_out_h: true", r"pad_out_h needs scale 2 .*got 3"),
    "scale_h_1": (TWO, "scale_h: 1 scale_w: 2", r"scale_h and scale_w must be > 1, got \[1, 2\]"),
    "scale_h_without_w": (TWO, "scale_h: 2", r"give scale_h and scale_w together"),
    "scale_and_scale_hw": (TWO, "scale: 2 scale_h: 2 scale_w: 2", r"not both"),
    "upsample_h_alone": (TWO, "upsample_h: 8", r"give upsample_h and upsample_w together"),
    "upsample_h_1": (TWO, "upsample_h: 1 upsample_w: 8", r"must be > 1, got \[1, 8\]"),
    "stride_with_mask": (TWO, "stride: 2", r"'stride' is Huawei's nearest-neighbour Upsample"),
    "segnet_fields_without_mask": (
        ONE,
        "upsample_h: 8 upsample_w: 8",
        r"upsample_h, upsample_w belong to SegNet",
    ),
    "nearest_scale0": (ONE, "scale: 0", r"scale must be an integer >= 1, got 0"),
    "nearest_fractional": (ONE, "scale: 1.5", r"scale must be an integer >= 1, got 1.5"),
    "huawei_scale_not_1": (ONE, "scale: 2 stride: 2", r"only scale 1 is supported, got 2"),
}


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_bad_upsample_parameters(case, tmp_path):
    bottoms, params, message = BAD_PARAMS[case]
    inputs = {"val": (1, 2, 4, 4), "mask": (1, 2, 4, 4)} if bottoms == TWO else {"val": (1, 2, 4, 4)}
    path = write(tmp_path, net_text(UPSAMPLE.format(bottoms=bottoms, params=params), inputs))
    with pytest.raises(LayerError, match=rf"layer 'up' \(Upsample\): .*{message}"):
        load_net(path)


BAD_UNPOOL = {
    "no_kernel": ("stride: 2", r"no kernel size"),
    "pad": ("kernel_size: 2 stride: 2 pad: 1", r"pad \[1, 1\]: Caffe's Unpooling only implements pad 0"),
    "kernel_h_only": ("kernel_h: 2 stride: 2", r"give kernel_h and kernel_w together"),
    "kernel_both_forms": (
        "kernel_size: 2 kernel_h: 2 kernel_w: 2",
        r"give kernel_size, or kernel_h and kernel_w",
    ),
    "unpool_h_only": ("kernel_size: 2 stride: 2 unpool_h: 8", r"give unpool_h and unpool_w together"),
    "zero_stride": ("kernel_size: 2 stride: 0", r"must be positive"),
}


@pytest.mark.parametrize("case", BAD_UNPOOL, ids=list(BAD_UNPOOL))
def test_bad_unpooling_parameters(case, tmp_path):
    params, message = BAD_UNPOOL[case]
    text = net_text(
        f'layer {{ name: "unpool" type: "Unpooling" bottom: "val" top: "unpool" unpooling_param {{ {params} }} }}',
        {"val": (1, 2, 4, 4)},
    )
    with pytest.raises(LayerError, match=rf"layer 'unpool' \(Unpooling\): .*{message}"):
        load_net(write(tmp_path, text))


@pytest.mark.parametrize("layer_type", ["Upsample", "Unpooling"])
def test_mask_shape_mismatch_names_both_shapes(layer_type, tmp_path):
    params = (
        "upsample_param { scale: 2 }"
        if layer_type == "Upsample"
        else "unpooling_param { kernel_size: 2 stride: 2 }"
    )
    text = net_text(
        f'layer {{ name: "up" type: "{layer_type}" bottom: "val" bottom: "mask" top: "up" {params} }}',
        {"val": (1, 2, 4, 4), "mask": (1, 2, 4, 5)},
    )
    with pytest.raises(
        ShapeError,
        match=rf"layer 'up' \({layer_type}\): the mask \(bottom 'mask', shape \[1, 2, 4, 5\]\) "
        r"must have the shape of the values \(bottom 'val', shape \[1, 2, 4, 4\]\)",
    ):
        load_net(write(tmp_path, text))


def test_three_bottoms_are_refused(tmp_path):
    text = net_text(
        'layer { name: "up" type: "Upsample" bottom: "a" bottom: "b" bottom: "c" top: "up" }',
        {"a": (1, 1, 2, 2), "b": (1, 1, 2, 2), "c": (1, 1, 2, 2)},
    )
    with pytest.raises(LayerError, match=r"layer 'up' \(Upsample\): has 3 bottom"):
        load_net(write(tmp_path, text))


def test_mask_index_out_of_range_fails_like_caffe(tmp_path):
    """Caffe stops on an index >= out_h*out_w; onnxruntime and torch raise as well."""
    text = net_text(
        'layer { name: "up" type: "Upsample" bottom: "val" bottom: "mask" top: "up" upsample_param { scale: 2 } }',
        {"val": (1, 1, 2, 2), "mask": (1, 1, 2, 2)},
    )
    mask = np.array([0, 2, 8, 40], np.float32).reshape(1, 1, 2, 2)  # 40 >= 4*4 + 1
    with pytest.raises(Exception, match=r"(?i)index|out of|bound"):
        run_net(tmp_path, text, inputs={"val": _random((1, 1, 2, 2)), "mask": mask})
