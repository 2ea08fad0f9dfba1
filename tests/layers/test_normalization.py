"""LRN, BatchNorm, Scale, Bias, MVN and the forks' BN against numpy references written from
the spec (tests/reference_normalization.py) and, where it implements the layer, OpenCV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caffe2onnx.caffemodel import write_caffemodel
from caffe2onnx.errors import LayerError, ShapeError
from caffe2onnx.parser import load_net
from tests import reference_normalization as ref
from tests.helpers import assert_close, net_text, opencv_forward, run_net, write

SHAPE = (2, 3, 4, 5)  # all different, so a wrong broadcast cannot go unnoticed


def check(run, top: str, expected, *, opencv: bool = False) -> None:
    assert_close(run.onnx[top], expected, what="onnxruntime")
    assert_close(run.torch[top], expected, what="torch reference")
    if opencv:
        cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, [top])
        assert_close(cv[top], expected, what="opencv")


def one_layer(body: str, shape=SHAPE, **inputs) -> str:
    return net_text(body, {"data": shape, **inputs})


# ----------------------------------------------------------------------------- LRN

LRN_CASES = {
    # (lrn_param, reference, compare OpenCV: its importer ignores k across channels and
    # takes alpha 1e-4 instead of Caffe's 1 when alpha is not written)
    "across_defaults_n5": ("", lambda x: ref.lrn_across(x, 5, 1.0, 0.75, 1.0), False),
    "across_n5_explicit": (
        "local_size: 5 alpha: 1 beta: 0.75",
        lambda x: ref.lrn_across(x, 5, 1.0, 0.75, 1.0),
        True,
    ),
    "across_n3_alpha_k2": (
        "local_size: 3 alpha: 0.5 beta: 0.6 k: 2",
        lambda x: ref.lrn_across(x, 3, 0.5, 0.6, 2.0),
        False,
    ),
    "across_n1": ("local_size: 1 alpha: 2 beta: 1", lambda x: ref.lrn_across(x, 1, 2.0, 1.0, 1.0), True),
    "within_n3": (
        "local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL",
        lambda x: ref.lrn_within(x, 3, 0.5, 0.75),
        True,
    ),
    "within_n5_k_ignored": (
        "local_size: 5 alpha: 2 beta: 0.5 k: 7 norm_region: WITHIN_CHANNEL",
        lambda x: ref.lrn_within(x, 5, 2.0, 0.5),
        True,
    ),
}


@pytest.mark.parametrize("case", LRN_CASES, ids=list(LRN_CASES))
def test_lrn_matches_numpy_reference(case, tmp_path):
    params, reference, opencv = LRN_CASES[case]
    text = one_layer(f'layer {{ name: "y" type: "LRN" bottom: "data" top: "y" lrn_param {{ {params} }} }}')
    run = run_net(tmp_path, text)
    check(run, "y", reference(run.inputs["data"]), opencv=opencv)


# ----------------------------------------------------------------------------- BatchNorm


def bn_caffemodel(path: Path, layer: str, channels: int, factor: float, seed: int = 1) -> list[np.ndarray]:
    """A caffemodel holding BatchNorm blobs with the given scale factor (0 = never trained)."""
    rng = np.random.default_rng(seed)
    scale = factor if factor else 3.0  # with factor 0 the stored sums must be ignored
    blobs = [
        (rng.standard_normal(channels) * 0.5 * scale).astype(np.float32),
        (rng.uniform(0.5, 2.0, channels) * scale).astype(np.float32),
        np.array([factor], np.float32),
    ]
    write_caffemodel(path, [(layer, "BatchNorm", blobs)])
    return blobs


BN_CASES = {
    # (input shape, batch_norm_param, eps, OpenCV)
    "nchw_factor_2_5": (SHAPE, "", 1e-5, True),
    "factor_1_eps_1e-3": (SHAPE, "eps: 0.001", 1e-3, True),
    "use_global_stats_false_in_deploy": (SHAPE, "use_global_stats: false", 1e-5, False),
    "2d_nc_input": ((4, 3), "", 1e-5, True),
    "3d_input": ((2, 3, 7), "", 1e-5, False),
    "1d_input": ((6,), "", 1e-5, False),
}


@pytest.mark.parametrize("case", BN_CASES, ids=list(BN_CASES))
def test_batchnorm_uses_stored_statistics(case, tmp_path):
    shape, params, eps, opencv = BN_CASES[case]
    factor = 1.0 if "factor_1" in case else 2.5
    channels = shape[1] if len(shape) > 1 else 1
    blobs = bn_caffemodel(tmp_path / "bn.caffemodel", "y", channels, factor)
    text = one_layer(
        f'layer {{ name: "y" type: "BatchNorm" bottom: "data" top: "y" batch_norm_param {{ {params} }} }}',
        shape,
    )
    run = run_net(tmp_path, text, caffemodel=tmp_path / "bn.caffemodel")
    check(run, "y", ref.batch_norm(run.inputs["data"], *blobs, eps=eps), opencv=opencv)


def test_batchnorm_with_generated_weights(tmp_path):
    text = one_layer('layer { name: "y" type: "BatchNorm" bottom: "data" top: "y" }')
    run = run_net(tmp_path, text)  # make-weights: statistics times a random factor
    mean_sum, var_sum, factor = run.weights("y")
    assert mean_sum.shape == var_sum.shape == (3,) and factor.shape == (1,) and factor[0] != 1
    check(run, "y", ref.batch_norm(run.inputs["data"], mean_sum, var_sum, factor), opencv=True)


def test_batchnorm_with_stored_factor_zero_ignores_the_sums(tmp_path):
    blobs = bn_caffemodel(tmp_path / "bn.caffemodel", "y", 3, factor=0.0)
    text = one_layer('layer { name: "y" type: "BatchNorm" bottom: "data" top: "y" }')
    run = run_net(tmp_path, text, caffemodel=tmp_path / "bn.caffemodel")
    expected = run.inputs["data"].astype(np.float64) / np.sqrt(1e-5)  # mean 0, var 0
    assert_close(ref.batch_norm(run.inputs["data"], *blobs), expected, what="numpy reference")
    check(run, "y", expected, opencv=True)


# ----------------------------------------------------------------------------- Scale, Bias

SCALE_CASES = {
    # (scale_param, axis for the reference, blob shape)
    "channel_C": ("", 1, (3,)),
    "channel_C_with_bias": ("bias_term: true", 1, (3,)),
    "axis1_num_axes2_CH": ("num_axes: 2", 1, (3, 4)),
    "num_axes_minus1_CHW": ("num_axes: -1 bias_term: true", 1, (3, 4, 5)),
    "num_axes0_scalar": ("num_axes: 0 bias_term: true", 0, ()),
    "axis_minus1_W": ("axis: -1", -1, (5,)),
    "axis0_N": ("axis: 0", 0, (2,)),
    "axis2_H": ("axis: 2 bias_term: true", 2, (4,)),
}


@pytest.mark.parametrize("case", SCALE_CASES, ids=list(SCALE_CASES))
def test_scale_with_blob_broadcasts_from_axis(case, tmp_path):
    params, axis, blob_shape = SCALE_CASES[case]
    text = one_layer(
        f'layer {{ name: "y" type: "Scale" bottom: "data" top: "y" scale_param {{ {params} }} }}'
    )
    run = run_net(tmp_path, text)
    weights = run.weights("y")
    assert weights[0].shape == blob_shape
    bias_values = weights[1] if len(weights) > 1 else None
    expected = ref.scale(run.inputs["data"], axis, weights[0], bias_values)
    check(run, "y", expected, opencv=case in ("channel_C", "channel_C_with_bias"))


SCALE_TWO_BOTTOM_CASES = {
    # (scale_param, second bottom's shape, axis for the reference)
    "C": ("", (3,), 1),
    "C_with_bias": ("bias_term: true", (3,), 1),
    "NC_axis0": ("axis: 0", (2, 3), 0),
    "CHW": ("", (3, 4, 5), 1),
    "HW_axis_minus2": ("axis: -2 bias_term: true", (4, 5), -2),
}


@pytest.mark.parametrize("case", SCALE_TWO_BOTTOM_CASES, ids=list(SCALE_TWO_BOTTOM_CASES))
def test_scale_with_second_bottom(case, tmp_path):
    params, scale_shape, axis = SCALE_TWO_BOTTOM_CASES[case]
    text = one_layer(
        f"""layer {{ name: "y" type: "Scale" bottom: "data" bottom: "s" top: "y"
          scale_param {{ {params} }} }}""",
        s=scale_shape,
    )
    run = run_net(tmp_path, text)
    weights = run.weights("y")
    bias_values = weights[0] if weights else None
    if bias_values is not None:
        assert bias_values.shape == scale_shape
    expected = ref.scale(run.inputs["data"], axis, run.inputs["s"], bias_values)
    check(run, "y", expected, opencv=case == "C")


BIAS_CASES = {
    # (bias_param, axis for the reference, blob shape or None for a second bottom)
    "channel_C": ("", 1, (3,)),
    "num_axes_minus1": ("num_axes: -1", 1, (3, 4, 5)),
    "num_axes0_scalar": ("num_axes: 0", 0, ()),
    "axis2_HW": ("axis: 2 num_axes: 2", 2, (4, 5)),
    "second_bottom_C": ("", 1, None),
}


@pytest.mark.parametrize("case", BIAS_CASES, ids=list(BIAS_CASES))
def test_bias_broadcasts_from_axis(case, tmp_path):
    params, axis, blob_shape = BIAS_CASES[case]
    two = blob_shape is None
    bottoms = 'bottom: "data" bottom: "b"' if two else 'bottom: "data"'
    text = one_layer(
        f'layer {{ name: "y" type: "Bias" {bottoms} top: "y" bias_param {{ {params} }} }}',
        **({"b": (3,)} if two else {}),
    )
    run = run_net(tmp_path, text)
    if two:
        assert run.weights("y") == []
        operand = run.inputs["b"]
    else:
        (operand,) = run.weights("y")
        assert operand.shape == blob_shape
    check(run, "y", ref.bias(run.inputs["data"], axis, operand))  # OpenCV has no Bias layer


# ----------------------------------------------------------------------------- MVN

MVN_CASES = {
    # (mvn_param, reference kwargs, input shape, OpenCV: it puts eps inside the sqrt)
    "defaults": ("", {}, SHAPE, True),
    "across_channels": ("across_channels: true", {"across_channels": True}, SHAPE, True),
    "mean_only": ("normalize_variance: false", {"normalize_variance": False}, SHAPE, True),
    "eps_outside_sqrt": ("eps: 0.5", {"eps": 0.5}, SHAPE, False),
    "across_eps_0_25": (
        "across_channels: true eps: 0.25",
        {"across_channels": True, "eps": 0.25},
        SHAPE,
        False,
    ),
    "2d_per_channel_is_zero": ("", {}, (4, 3), False),
    "2d_across": ("across_channels: true", {"across_channels": True}, (4, 3), False),
}


@pytest.mark.parametrize("case", MVN_CASES, ids=list(MVN_CASES))
def test_mvn_matches_numpy_reference(case, tmp_path):
    params, kwargs, shape, opencv = MVN_CASES[case]
    text = one_layer(
        f'layer {{ name: "y" type: "MVN" bottom: "data" top: "y" mvn_param {{ {params} }} }}', shape
    )
    run = run_net(tmp_path, text)
    check(run, "y", ref.mvn(run.inputs["data"], **kwargs), opencv=opencv)


def test_mvn_eps_is_added_to_the_standard_deviation(tmp_path):
    # A constant plane: std 0, so y = 0 / eps = 0 rather than ONNX MVN's 0 / sqrt(eps).
    x = np.ones((1, 2, 3, 3), np.float32)
    x[0, 1] = np.arange(9, dtype=np.float32).reshape(3, 3)
    text = one_layer('layer { name: "y" type: "MVN" bottom: "data" top: "y" mvn_param { eps: 4 } }', x.shape)
    run = run_net(tmp_path, text, inputs={"data": x})
    expected = ref.mvn(x, eps=4.0)
    assert_close(expected[0, 1], (x[0, 1] - 4) / (np.sqrt(60 / 9) + 4), what="hand-computed")
    check(run, "y", expected)


# ----------------------------------------------------------------------------- fork BN

SEGNET_FILLERS = "scale_filler { type: 'constant' value: 1 } shift_filler { type: 'constant' value: 0.001 }"
PSP_FILLERS = "slope_filler { type: 'constant' value: 1 } bias_filler { type: 'constant' value: 0 }"
FOUR_PARAMS = "param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 0 } param { lr_mult: 0 }"

FORK_BN_CASES = {
    # (layer body, variant, eps, input shape)
    "segnet_inference": (f"bn_param {{ {SEGNET_FILLERS} bn_mode: INFERENCE }}", "inference", 0, SHAPE),
    "deconvnet_inference_2d": ("bn_param { bn_mode: INFERENCE }", "inference", 0, (4, 3)),
    "segnet_learn_default": ("", "learn", 1e-9, SHAPE),
    "segnet_learn_fillers": (f"bn_param {{ {SEGNET_FILLERS} }}", "learn", 1e-9, (3, 3, 4, 5)),
    "pspnet_frozen": (
        f"{FOUR_PARAMS} bn_param {{ {PSP_FILLERS} frozen: true momentum: 0.95 }}",
        "psp",
        1e-5,
        SHAPE,
    ),
    "pspnet_eps_only": ("bn_param { eps: 0.001 }", "psp", 1e-3, SHAPE),
    "pspnet_by_four_params": (FOUR_PARAMS, "psp", 1e-5, SHAPE),
    "pspnet_2d": ("bn_param { frozen: true }", "psp", 1e-5, (4, 3)),
}


@pytest.mark.parametrize("case", FORK_BN_CASES, ids=list(FORK_BN_CASES))
def test_fork_bn_variants(case, tmp_path):
    body, variant, eps, shape = FORK_BN_CASES[case]
    text = one_layer(f'layer {{ name: "y" type: "BN" bottom: "data" top: "y" {body} }}', shape)
    run = run_net(tmp_path, text)
    weights = run.weights("y")
    x = run.inputs["data"]
    channels = shape[1]
    assert all(w.shape == (1, channels, 1, 1) for w in weights)
    if variant == "psp":
        assert len(weights) == 4
        expected = ref.psp_bn(x, *weights, eps=eps)
    elif variant == "inference":
        assert len(weights) == 2
        expected = ref.segnet_bn_inference(x, *weights)
    else:
        assert len(weights) == 2
        expected = ref.segnet_bn_learn(x, *weights, var_eps=eps)[0]
    check(run, "y", expected)


def test_segnet_bn_learn_tops_are_the_batch_statistics(tmp_path):
    text = one_layer('layer { name: "bn" type: "BN" bottom: "data" top: "y" top: "mean" top: "var" }')
    run = run_net(tmp_path, text)
    y, mean, var = ref.segnet_bn_learn(run.inputs["data"], *run.weights("bn"))
    for top, expected in (("y", y), ("mean", mean), ("var", var)):
        assert run.net.shapes[top] == expected.shape
        check(run, top, expected)


def test_segnet_bn_learn_uses_the_batch_not_stored_values(tmp_path):
    # Same data shifted per sample: LEARN mode output depends on the batch content.
    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    text = one_layer('layer { name: "y" type: "BN" bottom: "data" top: "y" }')
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = run_net(tmp_path / "a", text, inputs={"data": x})
    x2 = x.copy()
    x2[1] += 5.0
    shifted = run_net(tmp_path / "b", text, inputs={"data": x2})
    assert not np.allclose(whole.onnx["y"][0], shifted.onnx["y"][0], atol=1e-3)
    check(shifted, "y", ref.segnet_bn_learn(x2, *shifted.weights("y"))[0])


# ----------------------------------------------------------------------------- opsets


@pytest.mark.parametrize("opset", [13, 21], ids=["opset13", "opset21"])
def test_normalization_chain_at_opset(opset, tmp_path):
    text = one_layer(
        """
        layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn"
          lrn_param { local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL } }
        layer { name: "mvn" type: "MVN" bottom: "lrn" top: "mvn" }
        layer { name: "bn" type: "BN" bottom: "mvn" top: "bn" }
        layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param { num_axes: 2 bias_term: true } }
        layer { name: "bias" type: "Bias" bottom: "sc" top: "bias" }
        """
    )
    run = run_net(tmp_path, text, opset=opset)
    x = ref.lrn_within(run.inputs["data"], 3, 0.5, 0.75)
    x = ref.mvn(x)
    x = ref.segnet_bn_learn(x, *run.weights("bn"))[0]
    x = ref.scale(x, 1, *run.weights("sc"))
    x = ref.bias(x, 1, *run.weights("bias"))
    check(run, "bias", x)


@pytest.mark.parametrize("opset", [13, 21], ids=["opset13", "opset21"])
def test_batchnorm_then_scale_in_place_at_opset(opset, tmp_path):
    blobs = bn_caffemodel(tmp_path / "w.caffemodel", "bn", 3, 4.0)
    text = one_layer(
        """
        layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" }
        layer { name: "sc" type: "Scale" bottom: "data" top: "data"
          scale_param { bias_term: true filler { type: "constant" value: 2 }
                        bias_filler { type: "constant" value: -1 } } }
        """
    )
    run = run_net(tmp_path, text, caffemodel=tmp_path / "w.caffemodel", opset=opset)
    expected = ref.batch_norm(run.inputs["data"], *blobs) * 2 - 1
    assert run.net.layer("sc").weights_from == "filler"
    top = run.net.layers[-1].tops[0]
    check(run, top, expected)


# ----------------------------------------------------------------------------- bad parameters

BAD_PARAMS = {
    "lrn_even_size": ('type: "LRN" bottom: "data" lrn_param { local_size: 4 }', LayerError, "local_size 4"),
    "batchnorm_negative_eps": (
        'type: "BatchNorm" bottom: "data" batch_norm_param { eps: -1 }',
        LayerError,
        "eps -1",
    ),
    "scale_num_axes_minus2": (
        'type: "Scale" bottom: "data" scale_param { num_axes: -2 }',
        LayerError,
        "num_axes -2",
    ),
    "scale_past_the_end": (
        'type: "Scale" bottom: "data" scale_param { axis: 2 num_axes: 3 }',
        ShapeError,
        "num_axes 3 reaches past",
    ),
    "scale_axis_out_of_range": ('type: "Scale" bottom: "data" scale_param { axis: 4 }', LayerError, "axis 4"),
    "scale_second_bottom_mismatch": (
        'type: "Scale" bottom: "data" bottom: "c4" scale_param { axis: 1 }',
        ShapeError,
        r"bottom\[1\] has shape \[4\]",
    ),
    "bias_second_bottom_mismatch": (
        'type: "Bias" bottom: "data" bottom: "c4" bias_param { axis: 3 }',
        ShapeError,
        r"\[5\] from axis 3",
    ),
    "mvn_negative_eps": ('type: "MVN" bottom: "data" mvn_param { eps: -0.5 }', LayerError, "eps -0.5"),
    "bn_mixed_forks": (
        'type: "BN" bottom: "data" bn_param { bn_mode: INFERENCE frozen: true }',
        LayerError,
        "mixes PSPNet fields",
    ),
    "bn_inference_with_stat_tops": (
        'type: "BN" bottom: "data" top: "m" top: "v" bn_param { bn_mode: INFERENCE }',
        LayerError,
        "only with bn_mode: LEARN",
    ),
}


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_bad_parameters_name_the_layer(case, tmp_path):
    body, error, message = BAD_PARAMS[case]
    text = net_text(f'layer {{ name: "bad" top: "y" {body} }}', {"data": SHAPE, "c4": (4,)})
    with pytest.raises(error, match=f"layer 'bad'.*{message}"):
        load_net(write(tmp_path, text), require_weights=False)


BAD_SHAPES = {
    "lrn_needs_4d": ('type: "LRN" bottom: "data"', (2, 3), "4-D input"),
    "mvn_5d": ('type: "MVN" bottom: "data"', (1, 2, 3, 4, 5), "at most 4 axes"),
    "bn_5d": ('type: "BN" bottom: "data"', (1, 2, 3, 4, 5), "2-D to 4-D"),
}


@pytest.mark.parametrize("case", BAD_SHAPES, ids=list(BAD_SHAPES))
def test_bad_input_shapes_name_the_layer(case, tmp_path):
    body, shape, message = BAD_SHAPES[case]
    text = net_text(f'layer {{ name: "bad" top: "y" {body} }}', {"data": shape})
    with pytest.raises(ShapeError, match=f"layer 'bad'.*{message}"):
        load_net(write(tmp_path, text), require_weights=False)
