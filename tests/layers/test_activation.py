"""Element-wise activations against numpy references written from the spec (3.24), and OpenCV.

OpenCV 4.14's Caffe importer implements ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL,
Power and Exp faithfully; its Log ignores base/scale/shift and its Swish ignores beta
(so it is only compared at the defaults); it has no Threshold or Clip layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from caffe2onnx import load_net
from caffe2onnx.errors import LayerError, ShapeError, WeightError
from caffe2onnx.make_weights import make_weights
from tests.helpers import assert_close, net_text, opencv_forward, run_net, write

SHAPE = (2, 3, 4, 5)

# ----------------------------------------------------------------------------- references
# Written from the formulas of spec 3.24, in float64.


def relu(x, negative_slope=0.0):
    return np.maximum(x, 0) + negative_slope * np.minimum(x, 0)


def prelu(x, slope):
    """``max(x,0) + a_c min(x,0)``, ``c`` the index along axis 1 (one value if shared)."""
    slope = np.asarray(slope, np.float64).reshape(-1)
    a = slope.reshape((1, -1) + (1,) * (x.ndim - 2)) if slope.size > 1 else slope[0]
    return np.maximum(x, 0) + a * np.minimum(x, 0)


def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0)) - 1))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def bnll(x):
    return np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))), np.log1p(np.exp(np.minimum(x, 0))))


def power(x, power=1.0, scale=1.0, shift=0.0):
    return (shift + scale * x) ** power


def exp(x, base=-1.0, scale=1.0, shift=0.0):
    base = np.e if base == -1 else base
    return base ** (shift + scale * x)


def log(x, base=-1.0, scale=1.0, shift=0.0):
    ln_base = 1.0 if base == -1 else np.log(base)
    return np.log(shift + scale * x) / ln_base


def threshold(x, t=0.0):
    return (x > np.float32(t)).astype(np.float64)  # Caffe compares with the float threshold


def clip(x, low, high):
    return np.maximum(low, np.minimum(x, high))


def swish(x, beta=1.0):
    return x * sigmoid(beta * x)


# ----------------------------------------------------------------------------- inputs


def normal_input(rng, shape=SHAPE):
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[:4] = [0.0, -0.0, 1e-3, -1e-3]
    return x


def wide_input(rng, shape=SHAPE):
    """Large magnitudes too: naive exp-based formulas overflow here."""
    x = normal_input(rng, shape) * 10
    x.flat[4:12] = [-100, -50, -30, -20, 20, 30, 50, 100]
    return x


def positive_input(rng, shape=SHAPE):
    return rng.uniform(0.05, 3.0, shape).astype(np.float32)


def at_threshold(t):
    """Values exactly at the float threshold and one float step either side."""

    def make(rng, shape=SHAPE):
        x = normal_input(rng, shape)
        t32 = np.float32(t)
        up = np.nextafter(t32, np.float32(np.inf))
        down = np.nextafter(t32, np.float32(-np.inf))
        x.flat[4:10] = [t32, t32, t32, up, down, -t32]
        return x

    return make


def at_bounds(low, high):
    def make(rng, shape=SHAPE):
        x = normal_input(rng, shape)
        x.flat[4:8] = [low, high, low - 1, high + 1]
        return x

    return make


@dataclass(frozen=True)
class Case:
    layer_type: str
    params: str
    reference: Callable[[np.ndarray], np.ndarray]
    make_input: Callable = normal_input
    opencv: bool = True


CASES = {
    "relu": Case("ReLU", "", relu),
    "relu_leaky": Case("ReLU", "relu_param { negative_slope: 0.1 }", lambda x: relu(x, 0.1)),
    "elu_default": Case("ELU", "", elu, wide_input),
    "elu_alpha_half": Case("ELU", "elu_param { alpha: 0.5 }", lambda x: elu(x, 0.5)),
    "sigmoid": Case("Sigmoid", "", sigmoid, wide_input),
    "tanh": Case("TanH", "", np.tanh, wide_input),
    "absval": Case("AbsVal", "", np.abs),
    "bnll_wide_range": Case("BNLL", "", bnll, wide_input),
    "power_identity": Case("Power", "", lambda x: x),
    "power_square_scale_shift": Case(
        "Power", "power_param { power: 2 scale: 0.5 shift: 1 }", lambda x: power(x, 2, 0.5, 1)
    ),
    "power_sqrt_positive": Case(
        "Power", "power_param { power: 0.5 scale: 2 }", lambda x: power(x, 0.5, 2), positive_input
    ),
    "power_fractional_shifted": Case(
        "Power",
        "power_param { power: 1.5 scale: 0.5 shift: 0.25 }",
        lambda x: power(x, 1.5, 0.5, 0.25),
        positive_input,
    ),
    "power_inverse": Case(
        "Power", "power_param { power: -1 shift: 1 }", lambda x: power(x, -1, 1, 1), positive_input
    ),
    "power_scale_only": Case("Power", "power_param { scale: -3 }", lambda x: power(x, 1, -3)),
    "power_zero_power_constant": Case(
        "Power", "power_param { power: 0 scale: 2 shift: -1 }", lambda x: power(x, 0, 2, -1)
    ),
    "power_zero_scale_constant": Case(
        "Power", "power_param { power: 3 scale: 0 shift: 2 }", lambda x: power(x, 3, 0, 2)
    ),
    "exp_default": Case("Exp", "", exp),
    "exp_base2_scale_shift": Case(
        "Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", lambda x: exp(x, 2, 0.5, 1)
    ),
    "exp_e_shift": Case("Exp", "exp_param { scale: -1 shift: 0.5 }", lambda x: exp(x, -1, -1, 0.5)),
    "exp_base1_is_one": Case("Exp", "exp_param { base: 1 scale: 3 shift: 2 }", lambda x: exp(x, 1, 3, 2)),
    "log_default_positive": Case("Log", "", log, positive_input),
    "log_base10_scale_shift": Case(
        "Log",
        "log_param { base: 10 scale: 2 shift: 0.5 }",
        lambda x: log(x, 10, 2, 0.5),
        positive_input,
        opencv=False,  # OpenCV's Log ignores base, scale and shift
    ),
    "log_base2_shift": Case("Log", "log_param { base: 2 shift: 6 }", lambda x: log(x, 2, 1, 6), opencv=False),
    "threshold_default_zero": Case("Threshold", "", threshold, at_threshold(0.0), opencv=False),
    "threshold_at_half": Case(
        "Threshold",
        "threshold_param { threshold: 0.5 }",
        lambda x: threshold(x, 0.5),
        at_threshold(0.5),
        False,
    ),
    "threshold_inexact_0.1": Case(
        "Threshold",
        "threshold_param { threshold: 0.1 }",
        lambda x: threshold(x, 0.1),
        at_threshold(0.1),
        False,
    ),
    "clip": Case(
        "Clip",
        "clip_param { min: -0.5 max: 0.75 }",
        lambda x: clip(x, -0.5, 0.75),
        at_bounds(-0.5, 0.75),
        False,
    ),
    "clip_equal_bounds": Case(
        "Clip", "clip_param { min: 0.25 max: 0.25 }", lambda x: clip(x, 0.25, 0.25), opencv=False
    ),
    "swish_default": Case("Swish", "", swish, wide_input),
    "swish_beta2": Case("Swish", "swish_param { beta: 2 }", lambda x: swish(x, 2), opencv=False),
    "swish_beta0": Case("Swish", "swish_param { beta: 0 }", lambda x: swish(x, 0), opencv=False),
}


def one_layer(layer_type: str, params: str, shape=SHAPE, top: str = "act") -> str:
    return net_text(
        f'layer {{ name: "act" type: "{layer_type}" bottom: "data" top: "{top}" {params} }}\n',
        {"data": shape},
    )


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_activation_matches_numpy_reference(case, tmp_path):
    c = CASES[case]
    x = c.make_input(np.random.default_rng(0))
    run = run_net(tmp_path, one_layer(c.layer_type, c.params), inputs={"data": x}, make_caffemodel=False)
    expected = c.reference(x.astype(np.float64))
    assert np.isfinite(expected).all()
    assert_close(run.onnx["act"], expected, what="onnxruntime")
    assert_close(run.torch["act"], expected, what="torch reference")
    if c.opencv:
        cv = opencv_forward(run.prototxt, None, run.inputs, ["act"])
        assert_close(cv["act"], expected, what="opencv")


def test_in_place_activation(tmp_path):
    text = net_text(
        """
        layer { name: "scale" type: "Power" bottom: "data" top: "x" power_param { scale: 2 } }
        layer { name: "elu" type: "ELU" bottom: "x" top: "x" }
        layer { name: "thr" type: "Threshold" bottom: "x" top: "y" threshold_param { threshold: 0.5 } }
        """,
        {"data": SHAPE},
    )
    x = normal_input(np.random.default_rng(1))
    run = run_net(tmp_path, text, inputs={"data": x}, make_caffemodel=False)
    expected_x = elu(2 * x.astype(np.float64))
    for name, expected in (("x", expected_x), ("y", threshold(expected_x, 0.5))):
        assert_close(run.onnx[name], expected, what=f"onnxruntime {name}")
        assert_close(run.torch[name], expected, what=f"torch {name}")


# ----------------------------------------------------------------------------- PReLU

PRELU_SHAPES = {
    "nchw": ((2, 3, 4, 5), ""),
    "nchw_channel_shared": ((2, 3, 4, 5), "prelu_param { channel_shared: true }"),
    "nc_2d": ((4, 3), ""),
    "nc_2d_channel_shared": ((4, 3), "prelu_param { channel_shared: true }"),
    "ncl_3d": ((2, 3, 7), ""),
    "ncdhw_5d": ((1, 3, 2, 3, 4), ""),
    "w_equals_c": ((2, 3, 4, 3), ""),  # a [C] slope would wrongly broadcast along W here
}


@pytest.mark.parametrize("case", PRELU_SHAPES, ids=list(PRELU_SHAPES))
def test_prelu_matches_numpy_reference(case, tmp_path):
    shape, params = PRELU_SHAPES[case]
    x = normal_input(np.random.default_rng(2), shape)
    run = run_net(tmp_path, one_layer("PReLU", params, shape), inputs={"data": x})
    (slope,) = run.weights("act")
    assert slope.size == (1 if "shared" in case else shape[1])
    assert len(np.unique(slope)) == slope.size, "the test needs distinct slopes per channel"
    expected = prelu(x.astype(np.float64), slope)
    assert_close(run.onnx["act"], expected, what="onnxruntime")
    assert_close(run.torch["act"], expected, what="torch reference")
    if len(shape) in (2, 4):
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["act"])
        assert_close(cv["act"], expected, what="opencv")


def test_prelu_slope_is_rank_aligned_in_onnx(tmp_path):
    run = run_net(tmp_path, one_layer("PReLU", "", (2, 3, 4, 5)))
    (node,) = [n for n in run.model.graph.node if n.op_type == "PRelu"]
    init = {i.name: list(i.dims) for i in run.model.graph.initializer}
    assert init[node.input[1]] == [3, 1, 1]


def test_prelu_default_filler_is_constant_quarter(tmp_path):
    run = run_net(tmp_path, one_layer("PReLU", ""), make_caffemodel=False)
    (slope,) = run.weights("act")
    np.testing.assert_array_equal(slope, np.full(3, 0.25, np.float32))
    expected = prelu(run.inputs["data"].astype(np.float64), 0.25)
    assert_close(run.onnx["act"], expected, what="onnxruntime")
    assert_close(run.torch["act"], expected, what="torch reference")


def test_prelu_explicit_constant_filler(tmp_path):
    params = 'prelu_param { channel_shared: true filler { type: "constant" value: -0.5 } }'
    run = run_net(tmp_path, one_layer("PReLU", params), make_caffemodel=False)
    (slope,) = run.weights("act")
    assert slope.shape == () and float(slope) == -0.5
    assert_close(run.onnx["act"], prelu(run.inputs["data"].astype(np.float64), -0.5), what="onnxruntime")


def test_prelu_blob_count_must_match_channel_shared(tmp_path):
    per_channel = write(tmp_path, one_layer("PReLU", ""), "per_channel.prototxt")
    caffemodel = tmp_path / "per_channel.caffemodel"
    make_weights(per_channel, caffemodel)
    shared = write(tmp_path, one_layer("PReLU", "prelu_param { channel_shared: true }"), "shared.prototxt")
    with pytest.raises(WeightError, match=r"layer 'act' \(PReLU\).*shape \[3\]"):
        load_net(shared, caffemodel)


def test_prelu_rejects_1d_input(tmp_path):
    path = write(tmp_path, one_layer("PReLU", "", (5,)))
    with pytest.raises(ShapeError, match=r"layer 'act' \(PReLU\): needs an input with at least 2 axes"):
        load_net(path, random_weights=0)


# ----------------------------------------------------------------------------- graph shape

NODE_OPS = {
    "power_identity": ("Power", "", ["Identity"]),
    "power_pow_only": ("Power", "power_param { power: 2 }", ["Pow"]),
    "power_scale_only": ("Power", "power_param { scale: 3 }", ["Mul"]),
    "power_all": ("Power", "power_param { power: 0.5 scale: 2 shift: 1 }", ["Mul", "Add", "Pow"]),
    "power_constant": ("Power", "power_param { power: 2 scale: 0 shift: 3 }", ["Shape", "Expand"]),
    "exp_default": ("Exp", "", ["Exp"]),
    "exp_shift": ("Exp", "exp_param { shift: 1 }", ["Exp", "Mul"]),
    "log_default": ("Log", "", ["Log"]),
    "log_base2": ("Log", "log_param { base: 2 }", ["Log", "Mul"]),
    "swish_default": ("Swish", "", ["Sigmoid", "Mul"]),
    "bnll": ("BNLL", "", ["Softplus"]),
    "relu_leaky": ("ReLU", "relu_param { negative_slope: 0.2 }", ["LeakyRelu"]),
}


@pytest.mark.parametrize("case", NODE_OPS, ids=list(NODE_OPS))
def test_identity_parts_are_left_out(case, tmp_path):
    layer_type, params, ops = NODE_OPS[case]
    run = run_net(tmp_path, one_layer(layer_type, params), make_caffemodel=False)
    assert [n.op_type for n in run.model.graph.node] == ops


# ----------------------------------------------------------------------------- bad parameters

BAD_PARAMS = {
    "exp_base_zero": ("Exp", "exp_param { base: 0 }", r"exp_param.base must be -1 \(for e\) or > 0, got 0"),
    "exp_base_negative": (
        "Exp",
        "exp_param { base: -2 }",
        r"exp_param.base must be -1 \(for e\) or > 0, got -2",
    ),
    "log_base_negative": ("Log", "log_param { base: -0.5 }", r"log_param.base must be -1 \(for e\) or > 0"),
    "log_base_one": ("Log", "log_param { base: 1 }", r"log_param.base 1 has no logarithm"),
    "clip_missing_max": ("Clip", "clip_param { min: 0 }", r"clip_param needs both min and max; max missing"),
    "clip_missing_both": ("Clip", "", r"min and max missing"),
    "clip_min_above_max": ("Clip", "clip_param { min: 2 max: 1 }", r"min 2(\.0)? is greater than max 1"),
}


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_bad_parameters_are_rejected(case, tmp_path):
    layer_type, params, message = BAD_PARAMS[case]
    path = write(tmp_path, one_layer(layer_type, params))
    with pytest.raises(LayerError, match=rf"layer 'act' \({layer_type}\): .*{message}"):
        load_net(path)


# ----------------------------------------------------------------------------- whole chains

CHAIN = """
layer { name: "prelu" type: "PReLU" bottom: "data" top: "prelu" }
layer { name: "bnll" type: "BNLL" bottom: "prelu" top: "bnll" }
layer { name: "power" type: "Power" bottom: "bnll" top: "power" power_param { power: 0.5 scale: 2 shift: 0.1 } }
layer { name: "log" type: "Log" bottom: "power" top: "log" log_param { base: 3 shift: 1 } }
layer { name: "exp" type: "Exp" bottom: "log" top: "exp" exp_param { base: 2 scale: -1 } }
layer { name: "swish" type: "Swish" bottom: "exp" top: "swish" swish_param { beta: 1.5 } }
layer { name: "clip" type: "Clip" bottom: "swish" top: "clip" clip_param { min: 0.2 max: 0.6 } }
layer { name: "thr" type: "Threshold" bottom: "clip" top: "thr" threshold_param { threshold: 0.4 } }
layer { name: "abs" type: "AbsVal" bottom: "clip" top: "abs" }
layer { name: "elu" type: "ELU" bottom: "abs" top: "elu" elu_param { alpha: 2 } }
layer { name: "sig" type: "Sigmoid" bottom: "elu" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "sig" top: "tanh" }
layer { name: "relu" type: "ReLU" bottom: "tanh" top: "relu" relu_param { negative_slope: 0.3 } }
"""


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_chain_at_opset(opset, tmp_path):
    run = run_net(tmp_path, net_text(CHAIN, {"data": SHAPE}), opset=opset)
    x = run.inputs["data"].astype(np.float64)
    blobs = {"prelu": prelu(x, run.weights("prelu")[0])}
    blobs["bnll"] = bnll(blobs["prelu"])
    blobs["power"] = power(blobs["bnll"], 0.5, 2, 0.1)
    blobs["log"] = log(blobs["power"], 3, 1, 1)
    blobs["exp"] = exp(blobs["log"], 2, -1)
    blobs["swish"] = swish(blobs["exp"], 1.5)
    blobs["clip"] = clip(blobs["swish"], 0.2, 0.6)
    blobs["thr"] = threshold(blobs["clip"], 0.4)
    blobs["abs"] = np.abs(blobs["clip"])
    blobs["elu"] = elu(blobs["abs"], 2)
    blobs["sig"] = sigmoid(blobs["elu"])
    blobs["tanh"] = np.tanh(blobs["sig"])
    blobs["relu"] = relu(blobs["tanh"], 0.3)
    assert 0 < blobs["thr"].mean() < 1, "the threshold should split the values"
    for name, expected in blobs.items():
        assert_close(run.onnx[name], expected, what=f"onnxruntime {name}")
        assert_close(run.torch[name], expected, what=f"torch {name}")


def test_v1_layer_types(tmp_path):
    text = """
    name: "v1"
    input: "data"
    input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5
    layers { name: "abs" type: ABSVAL bottom: "data" top: "abs" }
    layers { name: "bnll" type: BNLL bottom: "abs" top: "bnll" }
    layers { name: "pow" type: POWER bottom: "bnll" top: "pow" power_param { power: 2 } }
    layers { name: "thr" type: THRESHOLD bottom: "pow" top: "thr" threshold_param { threshold: 1 } }
    """
    x = normal_input(np.random.default_rng(3))
    run = run_net(tmp_path, text, inputs={"data": x}, make_caffemodel=False)
    expected = threshold(power(bnll(np.abs(x.astype(np.float64))), 2), 1)
    assert [layer.type for layer in run.net.layers] == ["AbsVal", "BNLL", "Power", "Threshold"]
    assert_close(run.onnx["thr"], expected, what="onnxruntime")
    assert_close(run.torch["thr"], expected, what="torch reference")
