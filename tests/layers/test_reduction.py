"""Softmax, ArgMax and Reduction against numpy references written from the spec (3.21-3.23).

OpenCV's Caffe importer implements Softmax but has no ArgMax or Reduction layer
("Can't create layer"), so those two are checked against numpy only. The ArgMax
reference follows Caffe's loop: per slice, sort ``(value, index)`` pairs descending
(``std::greater`` on pairs), so among equal values the larger index comes first.
Integer-valued inputs make ties common.
"""

from __future__ import annotations

import numpy as np
import pytest

from caffe2onnx import LayerError, ShapeError, load_net
from tests.helpers import assert_close, net_text, opencv_forward, run_net, write

# ----------------------------------------------------------------------------- Softmax


def softmax_reference(x: np.ndarray, axis: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


SOFTMAX_CASES = {
    "default_channels": ("", (2, 5, 3, 4), 1),
    "axis2": ("axis: 2", (2, 5, 3, 4), 2),
    "negative_axis": ("axis: -1", (2, 5, 3, 4), 3),
    "two_d": ("", (3, 7), 1),
}


@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=list(SOFTMAX_CASES))
def test_softmax(case, tmp_path):
    params, shape, axis = SOFTMAX_CASES[case]
    text = net_text(
        f'layer {{ name: "prob" type: "Softmax" bottom: "data" top: "prob" softmax_param {{ {params} }} }}',
        {"data": shape},
    )
    run = run_net(tmp_path, text)
    expected = softmax_reference(run.inputs["data"], axis)
    assert_close(run.onnx["prob"], expected, what="onnxruntime")
    assert_close(run.torch["prob"], expected, what="torch reference")
    cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["prob"])
    assert_close(cv["prob"], expected, what="opencv")


# ----------------------------------------------------------------------------- ArgMax


def argmax_reference(x: np.ndarray, top_k: int, out_max_val: bool, axis: int | None) -> np.ndarray:
    """Caffe ArgMaxLayer::Forward_cpu, restated with Python sorting."""

    def top(values: np.ndarray) -> list[tuple[float, int]]:
        pairs = [(float(v), j) for j, v in enumerate(values)]
        return sorted(pairs, reverse=True)[:top_k]

    if axis is None:
        n = x.shape[0]
        flat = x.reshape(n, -1)
        out = np.zeros((n, 2 if out_max_val else 1, top_k))
        for i in range(n):
            best = top(flat[i])
            out[i, 0] = [j for _, j in best]
            if out_max_val:
                out[i, 1] = [v for v, _ in best]
        shape = [1] * max(x.ndim, 3)
        shape[0], shape[1], shape[2] = n, out.shape[1], top_k
        return out.reshape(shape)
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros((*moved.shape[:-1], top_k))
    for index in np.ndindex(*moved.shape[:-1]):
        out[index] = [v if out_max_val else j for v, j in top(moved[index])]
    return np.moveaxis(out, -1, axis)


ARGMAX_CASES = {
    # argmax_param, input shape, top_k, out_max_val, numpy axis (None: per sample)
    "k1_no_axis": ("", (3, 4, 2, 2), 1, False, None),
    "k1_axis1": ("axis: 1", (2, 5, 3, 4), 1, False, 1),
    "k1_axis0": ("axis: 0", (4, 3, 2), 1, False, 0),
    "k1_negative_axis": ("axis: -1", (2, 3, 6), 1, False, 2),
    "k1_no_axis_out_max_val": ("out_max_val: true", (3, 4, 2, 2), 1, True, None),
    "k1_axis1_values": ("axis: 1 out_max_val: true", (2, 5, 3, 4), 1, True, 1),
    "k3_no_axis": ("top_k: 3", (3, 4, 2, 2), 3, False, None),
    "k3_no_axis_out_max_val": ("top_k: 3 out_max_val: true", (3, 4, 2, 2), 3, True, None),
    "k3_axis1": ("top_k: 3 axis: 1", (2, 6, 3, 4), 3, False, 1),
    "k2_axis2_values": ("top_k: 2 axis: 2 out_max_val: true", (2, 3, 5, 4), 2, True, 2),
    "k_all_axis1": ("top_k: 5 axis: 1", (2, 5, 3), 5, False, 1),
    "two_d_input": ("top_k: 2 out_max_val: true", (4, 7), 2, True, None),
    "five_d_input": ("top_k: 2", (2, 3, 2, 2, 2), 2, False, None),
}


@pytest.mark.parametrize("ties", [True, False], ids=["ties", "no_ties"])
@pytest.mark.parametrize("case", ARGMAX_CASES, ids=list(ARGMAX_CASES))
def test_argmax(case, ties, tmp_path):
    params, shape, top_k, out_max_val, axis = ARGMAX_CASES[case]
    text = net_text(
        f'layer {{ name: "arg" type: "ArgMax" bottom: "data" top: "arg" argmax_param {{ {params} }} }}',
        {"data": shape},
    )
    rng = np.random.default_rng(len(case))
    if ties:  # a few distinct values: most maxima are tied
        x = rng.integers(-1, 2, size=shape).astype(np.float32)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    run = run_net(tmp_path, text, inputs={"data": x})
    expected = argmax_reference(x, top_k, out_max_val, axis)
    assert_close(run.onnx["arg"], expected, atol=0, rtol=0, what="onnxruntime")
    assert_close(run.torch["arg"], expected, atol=0, rtol=0, what="torch reference")


def test_argmax_ties_take_the_larger_index():
    """The reference itself, on a hand-written case: [1, 3, 3, 0, 3] -> 4, 2, 1, 0, 3."""
    x = np.array([[1, 3, 3, 0, 3]], np.float32)
    assert argmax_reference(x, 5, False, 1).ravel().tolist() == [4, 2, 1, 0, 3]


def test_argmax_top1_uses_select_last_index(tmp_path):
    text = net_text(
        'layer { name: "arg" type: "ArgMax" bottom: "data" top: "arg" argmax_param { axis: 1 } }',
        {"data": (1, 4)},
    )
    run = run_net(tmp_path, text, inputs={"data": np.array([[2, 5, 5, 1]], np.float32)})
    assert run.onnx["arg"].tolist() == [[2.0]]
    (node,) = [n for n in run.model.graph.node if n.op_type == "ArgMax"]
    assert {a.name: a.i for a in node.attribute}["select_last_index"] == 1


# ----------------------------------------------------------------------------- Reduction


def reduction_reference(x: np.ndarray, operation: str, axis: int, coeff: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    axis = axis % x.ndim
    flat = x.reshape(*x.shape[:axis], -1)  # Caffe: num = count(0, axis) rows of dim = count(axis)
    if operation == "SUM":
        value = flat.sum(-1)
    elif operation == "ASUM":
        value = np.abs(flat).sum(-1)
    elif operation == "SUMSQ":
        value = (flat * flat).sum(-1)
    else:
        value = flat.mean(-1)
    return coeff * value


REDUCTION_CASES = {
    # reduction_param, operation, axis, coeff
    "sum_default_scalar": ("", "SUM", 0, 1.0),
    "sum_coeff_scalar": ("coeff: -0.5", "SUM", 0, -0.5),
    "asum_axis1": ("operation: ASUM axis: 1", "ASUM", 1, 1.0),
    "sumsq_axis2": ("operation: SUMSQ axis: 2", "SUMSQ", 2, 1.0),
    "mean_negative_axis_coeff": ("operation: MEAN axis: -1 coeff: 3", "MEAN", -1, 3.0),
    "mean_scalar": ("operation: MEAN", "MEAN", 0, 1.0),
    "asum_coeff_axis3": ("operation: ASUM axis: 3 coeff: 2", "ASUM", 3, 2.0),
}


@pytest.mark.parametrize("case", REDUCTION_CASES, ids=list(REDUCTION_CASES))
def test_reduction(case, tmp_path):
    params, operation, axis, coeff = REDUCTION_CASES[case]
    shape = (2, 3, 4, 5)
    text = net_text(
        f'layer {{ name: "red" type: "Reduction" bottom: "data" top: "red" reduction_param {{ {params} }} }}',
        {"data": shape},
    )
    run = run_net(tmp_path, text)
    expected = reduction_reference(run.inputs["data"], operation, axis, coeff)
    assert expected.shape == shape[: axis % 4]
    assert_close(run.onnx["red"], expected, what="onnxruntime")
    assert_close(run.torch["red"], expected, what="torch reference")


def test_reduction_to_a_scalar_is_0d(tmp_path):
    text = net_text(
        'layer { name: "red" type: "Reduction" bottom: "data" top: "red" reduction_param { coeff: 2 } }',
        {"data": (2, 3)},
    )
    run = run_net(tmp_path, text)
    assert run.net.shapes["red"] == ()
    (output,) = run.model.graph.output
    assert output.type.tensor_type.HasField("shape") and len(output.type.tensor_type.shape.dim) == 0
    assert run.onnx["red"].shape == () and run.torch["red"].shape == ()


@pytest.mark.parametrize("opset", [13, 21])
def test_reductions_at_opset(opset, tmp_path):
    text = net_text(
        """
        layer { name: "prob" type: "Softmax" bottom: "data" top: "prob" }
        layer { name: "arg" type: "ArgMax" bottom: "prob" top: "arg" argmax_param { top_k: 2 axis: 1 } }
        layer { name: "best" type: "ArgMax" bottom: "prob" top: "best" argmax_param { out_max_val: true } }
        layer { name: "sq" type: "Reduction" bottom: "prob" top: "sq" reduction_param { operation: SUMSQ axis: 1 } }
        layer { name: "all" type: "Reduction" bottom: "data" top: "all" reduction_param { operation: MEAN coeff: 2 } }
        """,
        {"data": (2, 4, 3)},
    )
    run = run_net(tmp_path, text, opset=opset)
    x = run.inputs["data"]
    prob = softmax_reference(x, 1)
    expected = {
        "prob": prob,
        "arg": argmax_reference(run.torch["prob"], 2, False, 1),
        "best": argmax_reference(run.torch["prob"], 1, True, None),
        "sq": reduction_reference(prob, "SUMSQ", 1, 1.0),
        "all": reduction_reference(x, "MEAN", 0, 2.0),
    }
    for top, value in expected.items():
        assert_close(run.onnx[top], value, what=f"onnxruntime {top}")
        assert_close(run.torch[top], value, what=f"torch reference {top}")


# ----------------------------------------------------------------------------- bad parameters

BAD_PARAMS = {
    "softmax_axis": (
        'type: "Softmax" softmax_param { axis: 3 }',
        LayerError,
        "softmax axis 3 is out of range",
    ),
    "argmax_top_k_0": ('type: "ArgMax" argmax_param { top_k: 0 }', LayerError, "top_k must be at least 1"),
    "argmax_top_k_too_large_axis": (
        'type: "ArgMax" argmax_param { top_k: 4 axis: 1 }',
        ShapeError,
        "top_k 4 is larger than the size of axis 1 = 3",
    ),
    "argmax_top_k_too_large_flat": (
        'type: "ArgMax" argmax_param { top_k: 13 }',
        ShapeError,
        r"top_k 13 is larger than the flattened sample size prod\(shape\[1:\]\) = 12",
    ),
    "argmax_axis": ('type: "ArgMax" argmax_param { axis: -4 }', LayerError, "argmax axis -4 is out of range"),
    "reduction_axis": (
        'type: "Reduction" reduction_param { axis: 3 }',
        LayerError,
        "reduction axis 3 is out of range",
    ),
}


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_bad_parameters_are_rejected(case, tmp_path):
    body, error, message = BAD_PARAMS[case]
    layer_type = body.split('"')[1]
    text = net_text(f'layer {{ name: "bad" {body} bottom: "data" top: "out" }}', {"data": (2, 3, 4)})
    with pytest.raises(error, match=rf"layer 'bad' \({layer_type}\): .*{message}"):
        load_net(write(tmp_path, text), require_weights=False)
