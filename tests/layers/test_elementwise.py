"""Eltwise SUM (with coefficients), PROD and MAX against numpy and OpenCV (spec 3.16)."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2onnx import LayerError, ShapeError, load_net
from tests.helpers import CORPUS, assert_close, net_text, opencv_forward, run_net, write


def eltwise_reference(operation: str, xs: list[np.ndarray], coeffs: list[float] | None = None) -> np.ndarray:
    """Caffe's Eltwise in float64: sum of coeff_i * x_i, product, or maximum."""
    xs = [np.asarray(x, np.float64) for x in xs]
    if operation == "SUM":
        coeffs = coeffs or [1.0] * len(xs)
        return sum(c * x for c, x in zip(coeffs, xs))
    if operation == "PROD":
        return np.prod(np.stack(xs), axis=0)
    return np.max(np.stack(xs), axis=0)


CASES = {
    # eltwise_param, number of bottoms, operation, coefficients
    "sum_default": ("", 2, "SUM", None),
    "sum_three": ("operation: SUM", 3, "SUM", None),
    "sum_coeffs": ("coeff: 0.5 coeff: -1 coeff: 2.5", 3, "SUM", [0.5, -1.0, 2.5]),
    "subtract": ("operation: SUM coeff: 1 coeff: -1", 2, "SUM", [1.0, -1.0]),
    "prod": ("operation: PROD", 2, "PROD", None),
    "prod_three": ("operation: PROD", 3, "PROD", None),
    "max": ("operation: MAX", 2, "MAX", None),
    "max_four": ("operation: MAX", 4, "MAX", None),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_eltwise(case, tmp_path):
    params, count, operation, coeffs = CASES[case]
    names = [f"x{i}" for i in range(count)]
    bottoms = " ".join(f'bottom: "{n}"' for n in names)
    text = net_text(
        f'layer {{ name: "elt" type: "Eltwise" {bottoms} top: "elt" eltwise_param {{ {params} }} }}',
        {n: (2, 3, 4, 5) for n in names},
    )
    run = run_net(tmp_path, text)
    expected = eltwise_reference(operation, [run.inputs[n] for n in names], coeffs)
    assert_close(run.onnx["elt"], expected, what="onnxruntime")
    assert_close(run.torch["elt"], expected, what="torch reference")
    cv = opencv_forward(run.prototxt, run.caffemodel, run.inputs, ["elt"])
    assert_close(cv["elt"], expected, what="opencv")


def test_sum_of_the_same_blob_twice(tmp_path):
    text = net_text(
        'layer { name: "elt" type: "Eltwise" bottom: "x" bottom: "x" top: "elt" eltwise_param { coeff: 0.1 coeff: 0.2 } }',
        {"x": (2, 3)},
    )
    run = run_net(tmp_path, text)
    expected = 0.3 * run.inputs["x"].astype(np.float64)
    assert_close(run.onnx["elt"], expected, what="onnxruntime")
    assert_close(run.torch["elt"], expected, what="torch reference")


def test_opencv_layer_eltwise_corpus_net(tmp_path):
    """OpenCV's test net: SUM with coeffs, Reshape to 3-D, PROD, Reshape to 2-D, MAX."""
    prototxt = CORPUS / "opencv_layer_eltwise.test.prototxt"
    run = run_net(tmp_path, prototxt)
    x = run.inputs["input"].astype(np.float64)
    eltwise_sum = 0.1 * x + 0.2 * x
    prod = x.reshape(6, 2, 8475) * eltwise_sum.reshape(6, 2, 8475)
    expected = np.maximum(eltwise_sum.reshape(2, 50850), prod.reshape(2, 50850))
    for top, value in (("eltwise_sum", eltwise_sum), ("eltwise_prod", prod), ("output", expected)):
        assert_close(run.onnx[top], value, what=f"onnxruntime {top}")
        assert_close(run.torch[top], value, what=f"torch reference {top}")
    cv = opencv_forward(prototxt, None, run.inputs, ["output"])
    assert_close(cv["output"], expected, what="opencv")


@pytest.mark.parametrize("opset", [13, 21])
def test_eltwise_at_opset(opset, tmp_path):
    text = net_text(
        """
        layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" eltwise_param { coeff: 2 coeff: -1 } }
        layer { name: "prod" type: "Eltwise" bottom: "sum" bottom: "b" top: "prod" eltwise_param { operation: PROD } }
        layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "a" top: "max" eltwise_param { operation: MAX } }
        """,
        {"a": (1, 2, 3, 3), "b": (1, 2, 3, 3)},
    )
    run = run_net(tmp_path, text, opset=opset)
    a, b = (run.inputs[n].astype(np.float64) for n in ("a", "b"))
    expected = np.maximum((2 * a - b) * b, a)
    assert_close(run.onnx["max"], expected, what="onnxruntime")
    assert_close(run.torch["max"], expected, what="torch reference")


BAD_PARAMS = {
    "one_bottom": ('bottom: "a"', LayerError, r"has 1 bottom\(s\); this layer type takes 2 to any"),
    "coeff_with_prod": (
        'bottom: "a" bottom: "b" eltwise_param { operation: PROD coeff: 1 coeff: 2 }',
        LayerError,
        "only allowed with operation SUM, not PROD",
    ),
    "coeff_count": (
        'bottom: "a" bottom: "b" eltwise_param { coeff: 1 }',
        LayerError,
        r"has 1 coeff value\(s\) for 2 bottoms",
    ),
    "shape_mismatch": (
        'bottom: "a" bottom: "c"',
        ShapeError,
        r"bottom 1 \('c'\) has shape \[2, 3, 1, 1\] but bottom 0 \('a'\) has \[2, 3, 4, 5\].*does not broadcast",
    ),
}


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_bad_parameters_are_rejected(case, tmp_path):
    body, error, message = BAD_PARAMS[case]
    text = net_text(
        f'layer {{ name: "bad" type: "Eltwise" {body} top: "out" }}',
        {"a": (2, 3, 4, 5), "b": (2, 3, 4, 5), "c": (2, 3, 1, 1)},
    )
    with pytest.raises(error, match=rf"layer 'bad' \(Eltwise\): .*{message}"):
        load_net(write(tmp_path, text), require_weights=False)
