"""Split, Dropout, Concat, Slice, Flatten, Reshape and Tile against numpy and OpenCV.

The expected shapes are written out literally from the Caffe rules (spec 3.17-3.20,
3.24), and the expected values come from numpy slicing/reshaping, so neither depends on
the handlers' own shape code.
"""

from __future__ import annotations

import numpy as np
import pytest

from caffe2onnx import LayerError, ShapeError, load_net
from tests.helpers import CORPUS, assert_close, net_text, opencv_forward, run_net, write


def _ops(run) -> list[str]:
    return [node.op_type for node in run.model.graph.node]


def _check(run, top: str, expected: np.ndarray, opencv: dict | None = None) -> None:
    assert_close(run.onnx[top], expected, atol=0, rtol=0, what=f"onnxruntime {top}")
    assert_close(run.torch[top], expected, atol=0, rtol=0, what=f"torch reference {top}")
    if opencv is not None:
        assert_close(opencv[top], expected, atol=0, rtol=0, what=f"opencv {top}")


# ----------------------------------------------------------------------------- Split, Dropout


def test_split_copies_to_every_top(tmp_path):
    text = net_text(
        'layer { name: "sp" type: "Split" bottom: "data" top: "a" top: "b" top: "c" }',
        {"data": (2, 3, 4)},
    )
    run = run_net(tmp_path, text)
    for top in ("a", "b", "c"):
        _check(run, top, run.inputs["data"])


@pytest.mark.parametrize(
    "params, scale",
    [("", 1.0), ("dropout_ratio: 0.3", 1.0), ("dropout_ratio: 0.3 scale_train: false", 0.7)],
    ids=["default", "ratio_only", "fork_scale_train_false"],
)
def test_dropout_at_test_time(params, scale, tmp_path):
    text = net_text(
        f'layer {{ name: "drop" type: "Dropout" bottom: "data" top: "drop" dropout_param {{ {params} }} }}',
        {"data": (2, 5)},
    )
    run = run_net(tmp_path, text)
    expected = run.inputs["data"] * np.float32(scale)
    assert_close(run.onnx["drop"], expected, what="onnxruntime")
    assert_close(run.torch["drop"], expected, what="torch reference")


# ----------------------------------------------------------------------------- Concat

CONCAT_CASES = {
    # params, bottom shapes, numpy axis
    "default_channels": ("", [(2, 3, 4, 5), (2, 1, 4, 5), (2, 2, 4, 5)], 1),
    "axis0_batch": ("axis: 0", [(1, 3, 4), (2, 3, 4)], 0),
    "negative_axis": ("axis: -1", [(2, 3, 4), (2, 3, 2)], 2),
    "deprecated_concat_dim": ("concat_dim: 2", [(2, 3, 1, 5), (2, 3, 3, 5)], 2),
    "two_d": ("axis: 1", [(3, 4), (3, 6)], 1),
}


@pytest.mark.parametrize("case", CONCAT_CASES, ids=list(CONCAT_CASES))
def test_concat(case, tmp_path):
    params, shapes, axis = CONCAT_CASES[case]
    names = [f"in{i}" for i in range(len(shapes))]
    bottoms = " ".join(f'bottom: "{n}"' for n in names)
    text = net_text(
        f'layer {{ name: "cat" type: "Concat" {bottoms} top: "cat" concat_param {{ {params} }} }}',
        dict(zip(names, shapes)),
    )
    run = run_net(tmp_path, text)
    expected = np.concatenate([run.inputs[n] for n in names], axis=axis)
    cv = None
    if "concat_dim" not in params:  # OpenCV ignores the deprecated concat_dim (concats axis 1)
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["cat"])
    _check(run, "cat", expected, cv)


def test_concat_of_one_bottom_is_identity(tmp_path):
    text = net_text('layer { name: "cat" type: "Concat" bottom: "data" top: "cat" }', {"data": (2, 3)})
    run = run_net(tmp_path, text)
    _check(run, "cat", run.inputs["data"])
    assert _ops(run) == ["Identity"]


# ----------------------------------------------------------------------------- Slice

SLICE_CASES = {
    # params, input shape, numpy axis, [start, end) per top
    "points_channels": ("slice_point: 1 slice_point: 4", (2, 6, 3, 2), 1, [(0, 1), (1, 4), (4, 6)]),
    "equal_parts": ("axis: 2", (2, 3, 6, 2), 2, [(0, 2), (2, 4), (4, 6)]),
    "negative_axis": ("axis: -1 slice_point: 3", (2, 3, 5), 2, [(0, 3), (3, 5)]),
    "deprecated_slice_dim": ("slice_dim: 0 slice_point: 1", (3, 4), 0, [(0, 1), (1, 3)]),
}


@pytest.mark.parametrize("case", SLICE_CASES, ids=list(SLICE_CASES))
def test_slice(case, tmp_path):
    params, shape, axis, ranges = SLICE_CASES[case]
    tops = [f"part{i}" for i in range(len(ranges))]
    top_text = " ".join(f'top: "{t}"' for t in tops)
    # OpenCV returns only a layer's first output by name: expose each top through a Split.
    probes = "\n".join(f'layer {{ name: "cv_{t}" type: "Split" bottom: "{t}" top: "cv_{t}" }}' for t in tops)
    text = net_text(
        f"""
        layer {{ name: "slice" type: "Slice" bottom: "data" {top_text} slice_param {{ {params} }} }}
        {probes}
        """,
        {"data": shape},
    )
    run = run_net(tmp_path, text)
    cv = None
    if "slice_dim" not in params:  # OpenCV ignores the deprecated slice_dim (slices axis 1)
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, [f"cv_{t}" for t in tops])
    x = run.inputs["data"]
    for top, (start, end) in zip(tops, ranges):
        expected = np.take(x, np.arange(start, end), axis=axis)
        _check(run, top, expected, {top: cv[f"cv_{top}"]} if cv else None)
    assert _ops(run)[0] == "Split"


def test_slice_with_one_top_is_identity(tmp_path):
    text = net_text('layer { name: "slice" type: "Slice" bottom: "data" top: "only" }', {"data": (2, 4)})
    run = run_net(tmp_path, text)
    _check(run, "only", run.inputs["data"])


# ----------------------------------------------------------------------------- Flatten

FLATTEN_CASES = {
    # params, input shape, expected Caffe shape, ONNX op
    "default": ("", (2, 3, 4, 5), (2, 60), "Flatten"),
    "axis2": ("axis: 2", (2, 3, 4, 5), (2, 3, 20), "Reshape"),
    "end_axis2": ("axis: 1 end_axis: 2", (2, 3, 4, 5), (2, 12, 5), "Reshape"),
    "axis0_to_1d": ("axis: 0", (2, 3, 4), (24,), "Reshape"),
    "negative_end_axis": ("axis: 0 end_axis: -2", (2, 3, 4), (6, 4), "Reshape"),
    "two_d_input": ("", (3, 7), (3, 7), "Flatten"),
    "axis_after_end_inserts_1": ("axis: 2 end_axis: 1", (2, 3, 4), (2, 3, 1, 4), "Reshape"),
}


@pytest.mark.parametrize("case", FLATTEN_CASES, ids=list(FLATTEN_CASES))
def test_flatten(case, tmp_path):
    params, shape, out_shape, onnx_op = FLATTEN_CASES[case]
    text = net_text(
        f'layer {{ name: "flat" type: "Flatten" bottom: "data" top: "flat" flatten_param {{ {params} }} }}',
        {"data": shape},
    )
    run = run_net(tmp_path, text)
    expected = run.inputs["data"].reshape(out_shape)
    cv = None
    if case not in ("axis0_to_1d", "axis_after_end_inserts_1"):  # OpenCV keeps >= 2 axes / rejects
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["flat"])
    _check(run, "flat", expected, cv)
    assert _ops(run) == [onnx_op]


# ----------------------------------------------------------------------------- Reshape

RESHAPE_CASES = {
    # reshape_param, input shape, expected Caffe shape
    "explicit": ("shape { dim: 6 dim: 20 }", (2, 3, 4, 5), (6, 20)),
    "copy_and_infer": ("shape { dim: 0 dim: -1 }", (2, 3, 4, 5), (2, 60)),
    # 0 is relative to axis: it copies bottom axis 1 (3), where ONNX's 0 would copy axis 0 (2)
    "zero_relative_to_axis": ("shape { dim: 0 dim: -1 } axis: 1", (2, 3, 4, 5), (2, 3, 20)),
    "num_axes_1": ("shape { dim: 2 dim: 2 } axis: 2 num_axes: 1", (2, 3, 4, 5), (2, 3, 2, 2, 5)),
    "axis_minus1_appends": ("shape { dim: 1 dim: 1 } axis: -1", (2, 3), (2, 3, 1, 1)),
    # a negative axis means ndim + axis + 1: -3 of a 4-D input starts at axis 2, not 1
    "axis_minus3_starts_at_2": ("shape { dim: -1 } axis: -3", (2, 3, 4, 5), (2, 3, 20)),
    "insert_axes_num_axes_0": ("shape { dim: 1 } axis: 1 num_axes: 0", (2, 3, 4), (2, 1, 3, 4)),
    "infer_first": ("shape { dim: -1 dim: 0 dim: 1 } axis: 1", (2, 3, 4, 5), (2, 15, 4, 1)),
}


@pytest.mark.parametrize("case", RESHAPE_CASES, ids=list(RESHAPE_CASES))
def test_reshape(case, tmp_path):
    params, shape, out_shape = RESHAPE_CASES[case]
    text = net_text(
        f'layer {{ name: "rs" type: "Reshape" bottom: "data" top: "rs" reshape_param {{ {params} }} }}',
        {"data": shape},
    )
    run = run_net(tmp_path, text)
    expected = run.inputs["data"].reshape(out_shape)
    cv = None
    if "axis: -" not in params and "num_axes: 0" not in params:
        # OpenCV reads a negative axis as ndim + axis (not Caffe's ndim + axis + 1) and
        # refuses num_axes: 0
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["rs"])
    _check(run, "rs", expected, cv)
    shape_const = {i.name: i for i in run.model.graph.initializer}[run.model.graph.node[0].input[1]]
    assert list(np.frombuffer(shape_const.raw_data, np.int64)) == list(out_shape), "full static shape"


# ----------------------------------------------------------------------------- Tile

TILE_CASES = {
    "default_axis1": ("tiles: 3", (2, 2, 3), (1, 3, 1)),
    "axis0": ("axis: 0 tiles: 2", (2, 3), (2, 1)),
    "negative_axis": ("axis: -1 tiles: 4", (2, 2, 3), (1, 1, 4)),
}


@pytest.mark.parametrize("case", TILE_CASES, ids=list(TILE_CASES))
def test_tile_repeats_the_whole_block(case, tmp_path):
    params, shape, reps = TILE_CASES[case]
    text = net_text(
        f'layer {{ name: "tile" type: "Tile" bottom: "data" top: "tile" tile_param {{ {params} }} }}',
        {"data": shape},
    )
    run = run_net(tmp_path, text)
    _check(run, "tile", np.tile(run.inputs["data"], reps))  # OpenCV's Tile is ONNX-only


# ----------------------------------------------------------------------------- corpus nets


def test_opencv_reshape_and_slice_routines(tmp_path):
    """OpenCV's own test net: Split, Slice, in-place Sigmoid, Concat, Reshape (0 relative to axis 1), Flatten."""
    prototxt = CORPUS / "opencv_reshape_and_slice_routines.test.prototxt"
    shape = (2, 5, 3, 4)  # N != C, so a 0 copied from the wrong axis would show
    run = run_net(tmp_path, prototxt, input_shapes={"input": shape})
    x = run.inputs["input"]
    expected_concat = np.concatenate([x[:, 0:1], x[:, 1:2], x[:, 2:]], axis=1)
    expected_reshape = expected_concat.reshape(2, 5, 1, 1, 1, 1, 3, 4)
    _check(run, "dummy_reshape", expected_reshape)
    _check(run, "output", expected_concat.reshape(2, 60))
    sliced = run.inputs["input"][:, 2:]
    assert_close(run.onnx["dummy_slice_1_2"], 1 / (1 + np.exp(-sliced.astype(np.float64))), what="sigmoid")
    cv = opencv_forward(prototxt, None, run.inputs, ["output"])
    assert_close(cv["output"], expected_concat.reshape(2, 60), atol=0, rtol=0, what="opencv")


@pytest.mark.parametrize("opset", [13, 21])
def test_shape_ops_chain_at_opset(opset, tmp_path):
    text = net_text(
        """
        layer { name: "slice" type: "Slice" bottom: "data" top: "s0" top: "s1" slice_param { slice_point: 2 } }
        layer { name: "cat" type: "Concat" bottom: "s1" bottom: "s0" top: "cat" concat_param { axis: 1 } }
        layer { name: "rs" type: "Reshape" bottom: "cat" top: "rs"
          reshape_param { shape { dim: 0 dim: -1 } axis: 1 } }
        layer { name: "tile" type: "Tile" bottom: "rs" top: "tile" tile_param { axis: 2 tiles: 2 } }
        layer { name: "flat" type: "Flatten" bottom: "tile" top: "flat" }
        """,
        {"data": (2, 5, 3, 2)},
    )
    run = run_net(tmp_path, text, opset=opset)
    x = run.inputs["data"]
    cat = np.concatenate([x[:, 2:], x[:, :2]], axis=1)
    expected = np.tile(cat.reshape(2, 5, 6), (1, 1, 2)).reshape(2, 60)
    _check(run, "flat", expected)


# ----------------------------------------------------------------------------- bad parameters

BAD_PARAMS = {
    "concat_axis_and_concat_dim": (
        'type: "Concat" bottom: "data" bottom: "data" concat_param { axis: 1 concat_dim: 1 }',
        LayerError,
        "sets both axis.*concat_dim",
    ),
    "concat_axis_out_of_range": (
        'type: "Concat" bottom: "data" bottom: "data" concat_param { axis: 4 }',
        LayerError,
        "concat axis 4 is out of range for a 3-D input",
    ),
    "slice_point_count": (
        'type: "Slice" bottom: "data" top: "b" top: "c" slice_param { slice_point: 1 slice_point: 2 }',
        LayerError,
        r"has 2 tops and 2 slice_point\(s\)",
    ),
    "slice_points_not_increasing": (
        'type: "Slice" bottom: "data" top: "b" top: "c" top: "d" slice_param { slice_point: 2 slice_point: 2 }',
        LayerError,
        "strictly increasing",
    ),
    "slice_point_past_end": (
        'type: "Slice" bottom: "data" top: "b" top: "c" slice_param { slice_point: 4 }',
        ShapeError,
        "slice_point 4 is not inside axis 1 of size 4",
    ),
    "slice_unequal_parts": (
        'type: "Slice" bottom: "data" top: "b" top: "c" top: "d"',
        ShapeError,
        "cannot be split into 3 equal parts",
    ),
    "slice_axis_and_slice_dim": (
        'type: "Slice" bottom: "data" slice_param { axis: 1 slice_dim: 1 }',
        LayerError,
        "sets both axis.*slice_dim",
    ),
    "flatten_in_place": ('type: "Flatten" bottom: "data" top: "data"', LayerError, "cannot work in place"),
    "flatten_axis_after_end": (
        'type: "Flatten" bottom: "data" flatten_param { axis: 2 end_axis: 0 }',
        ShapeError,
        "axis must not be greater than end_axis",
    ),
    "reshape_two_minus_one": (
        'type: "Reshape" bottom: "data" reshape_param { shape { dim: -1 dim: -1 } }',
        LayerError,
        "more than one -1",
    ),
    "reshape_count_mismatch": (
        'type: "Reshape" bottom: "data" reshape_param { shape { dim: 5 dim: 5 } }',
        ShapeError,
        "has 25 elements but the input .* has 24",
    ),
    "reshape_not_divisible": (
        'type: "Reshape" bottom: "data" reshape_param { shape { dim: 5 dim: -1 } }',
        ShapeError,
        "cannot infer the -1 dim",
    ),
    "reshape_zero_without_axis": (
        'type: "Reshape" bottom: "data" reshape_param { shape { dim: 0 } axis: -1 }',
        ShapeError,
        "no axis 3 to copy",
    ),
    "reshape_num_axes_past_end": (
        'type: "Reshape" bottom: "data" reshape_param { shape { dim: -1 } axis: 2 num_axes: 2 }',
        ShapeError,
        "goes past the 3-D input",
    ),
    "reshape_bad_num_axes": (
        'type: "Reshape" bottom: "data" reshape_param { shape { dim: -1 } num_axes: -2 }',
        LayerError,
        "num_axes -2 must be >= 0",
    ),
    "tile_without_tiles": (
        'type: "Tile" bottom: "data" tile_param { axis: 1 }',
        LayerError,
        "tiles .* must be set",
    ),
    "tile_zero": (
        'type: "Tile" bottom: "data" tile_param { tiles: 0 }',
        LayerError,
        "tiles must be positive",
    ),
}


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_bad_parameters_are_rejected(case, tmp_path):
    body, error, message = BAD_PARAMS[case]
    layer_type = body.split('"')[1]
    if "top:" not in body:
        body += ' top: "out"'
    text = net_text(f'layer {{ name: "bad" {body} }}', {"data": (2, 4, 3)})
    path = write(tmp_path, text)
    with pytest.raises(error, match=rf"layer 'bad' \({layer_type}\): .*{message}"):
        load_net(path, require_weights=False)


def test_concat_rejects_mismatched_shapes(tmp_path):
    text = net_text(
        'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }',
        {"a": (2, 3, 4), "b": (2, 3, 5)},
    )
    with pytest.raises(ShapeError, match=r"layer 'cat' \(Concat\): bottom 1 \('b'\) has shape \[2, 3, 5\]"):
        load_net(write(tmp_path, text), require_weights=False)
