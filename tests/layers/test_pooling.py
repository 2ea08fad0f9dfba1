"""Pooling against a numpy reference of Caffe's loops (tests/reference_pooling.py) and OpenCV.

The sweep groups many pooling layers over one input per net (to stay fast): every
kernel 1..4, stride 1..3, pad 0..2 (pad < kernel) on each axis, square and rectangular
(``kernel_h``/``stride_w``/... forms), ceil and floor rounding, on a sample of input
sizes 3..11. MAX values and masks must match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from caffe2onnx import load_net
from caffe2onnx.errors import LayerError, ShapeError
from tests.helpers import assert_close, net_text, opencv_forward, run_net, write
from tests.reference_pooling import AVE, FLT_MAX, MAX, STOCHASTIC, caffe_pool, caffe_pooled_size

# (kernel, stride, pad) of one axis: k 1..4, s 1..3, p 0..2 with p < k (27 configurations)
AXIS_CONFIGS = [(k, s, p) for k in range(1, 5) for s in range(1, 4) for p in range(min(k, 3))]
SHAPES = [(3, 3), (4, 4), (5, 8), (6, 11), (8, 3), (9, 10), (11, 7)]  # every size 3..11
CEIL_SPELLINGS = ("", "round_mode: CEIL", "ceil_mode: true")
FLOOR_SPELLINGS = ("round_mode: FLOOR", "ceil_mode: false")


@dataclass(frozen=True)
class PoolCase:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]

    @property
    def name(self) -> str:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        if kh == kw and sh == sw and ph == pw:
            return f"k{kh}s{sh}p{ph}"
        return f"k{kh}x{kw}s{sh}x{sw}p{ph}x{pw}"

    def fields(self) -> str:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        if kh == kw and sh == sw and ph == pw:  # scalar forms; defaults left out
            text = f"kernel_size: {kh}"
            text += f" stride: {sh}" if sh != 1 else ""
            return text + (f" pad: {ph}" if ph else "")
        return f"kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} pad_h: {ph} pad_w: {pw}"

    def sizes(self, shape: tuple[int, int], ceil: bool) -> list[int]:
        any_pad = any(self.pad)
        return [
            caffe_pooled_size(shape[a], self.kernel[a], self.stride[a], self.pad[a], ceil, any_pad)
            for a in range(2)
        ]

    def has_empty_window(self, shape: tuple[int, int], ceil: bool) -> bool:
        """Caffe's last window starts at or past the input (pad 0, stride > kernel, ceil)."""
        return any(
            (n - 1) * self.stride[a] - self.pad[a] >= shape[a] for a, n in enumerate(self.sizes(shape, ceil))
        )


def sweep_cases(shape: tuple[int, int], method: str, ceil: bool) -> list[PoolCase]:
    """Square configurations and each paired with another one on W (a bijection of the list)."""
    cases = []
    count = len(AXIS_CONFIGS)
    for i, (kh, sh, ph) in enumerate(AXIS_CONFIGS):
        for kw, sw, pw in ((kh, sh, ph), AXIS_CONFIGS[(10 * i + 7) % count]):
            case = PoolCase((kh, kw), (sh, sw), (ph, pw))
            if min(case.sizes(shape, ceil)) <= 0:
                continue  # Caffe's output would be empty (floor, input smaller than the kernel)
            if method == AVE and case.has_empty_window(shape, ceil):
                continue  # refused by the converter (test_ave_with_an_empty_last_window_is_refused)
            cases.append(case)
    return cases


def pooling_layers(cases: list[PoolCase], method: str, ceil: bool, with_mask: bool, prefix: str = "") -> str:
    """One Pooling layer per case named ``prefix + case.name``; the rounding spelled in turn."""
    spellings = CEIL_SPELLINGS if ceil else FLOOR_SPELLINGS
    layers = []
    for i, case in enumerate(cases):
        name = prefix + case.name
        tops = f'top: "{name}"' + (f' top: "{name}_mask"' if with_mask else "")
        layers.append(
            f'layer {{ name: "{name}" type: "Pooling" bottom: "data" {tops}\n'
            f"  pooling_param {{ pool: {method} {case.fields()} {spellings[i % len(spellings)]} }} }}"
        )
    return "\n".join(layers)


def integer_input(shape, seed: int = 0, low: int = -3, high: int = 3) -> np.ndarray:
    """Small integers: many ties, and sums that float32 holds exactly."""
    return np.random.default_rng(seed).integers(low, high + 1, shape).astype(np.float32)


@pytest.mark.parametrize("rounding", ["ceil", "floor"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_max_pooling_sweep_values_and_masks(shape, rounding, tmp_path):
    """Each configuration twice: MaxPool alone and MaxPool with its Indices (the mask top)."""
    ceil = rounding == "ceil"
    cases = sweep_cases(shape, MAX, ceil)
    text = net_text(
        pooling_layers(cases, "MAX", ceil, with_mask=False, prefix="plain_")
        + "\n"
        + pooling_layers(cases, "MAX", ceil, with_mask=True),
        {"data": (2, 3, *shape)},
    )
    x = integer_input((2, 3, *shape), seed=shape[0] * 100 + shape[1])
    run = run_net(tmp_path, text, inputs={"data": x}, make_caffemodel=False)
    for case in cases:
        expected, mask = caffe_pool(x, MAX, case.kernel, case.stride, case.pad, ceil)
        for side, blobs in (("onnxruntime", run.onnx), ("torch", run.torch)):
            assert_close(
                blobs["plain_" + case.name], expected, rtol=0, atol=0, what=f"plain {case.name} {side}"
            )
            assert_close(blobs[case.name], expected, rtol=0, atol=0, what=f"{case.name} {side}")
            assert_close(blobs[case.name + "_mask"], mask, rtol=0, atol=0, what=f"{case.name} mask {side}")


@pytest.mark.parametrize("rounding", ["ceil", "floor"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_ave_pooling_sweep(shape, rounding, tmp_path):
    ceil = rounding == "ceil"
    cases = sweep_cases(shape, AVE, ceil)
    text = net_text(pooling_layers(cases, "AVE", ceil, with_mask=False), {"data": (2, 3, *shape)})
    run = run_net(tmp_path, text, make_caffemodel=False, seed=shape[0] * 100 + shape[1])
    x = run.inputs["data"]
    for case in cases:
        expected, _ = caffe_pool(x, AVE, case.kernel, case.stride, case.pad, ceil)
        assert_close(run.onnx[case.name], expected, what=f"{case.name} onnxruntime")
        assert_close(run.torch[case.name], expected, what=f"{case.name} torch")


def test_ave_matches_the_spec_worked_example(tmp_path):
    """Spec section 5: Caffe AVE on the 4x4 ramp 1..16, k3 s2 p1 ceil (ORT's plain ceil_mode differs)."""
    text = net_text(
        """
        layer { name: "avg" type: "Pooling" bottom: "data" top: "avg"
          pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
        """,
        {"data": (1, 1, 4, 4)},
    )
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    expected = np.array([[14 / 9, 30 / 9, 2.0], [57 / 9, 11.0, 6.0], [4.5, 7.5, 4.0]]).reshape(1, 1, 3, 3)
    assert_close(caffe_pool(x, AVE, (3, 3), (2, 2), (1, 1))[0], expected, what="numpy reference")
    run = run_net(tmp_path, text, inputs={"data": x}, make_caffemodel=False)
    assert_close(run.onnx["avg"], expected, what="onnxruntime")
    assert_close(run.torch["avg"], expected, what="torch")


OPENCV_SHAPES = [(5, 8), (7, 7), (10, 5)]


@pytest.mark.parametrize("rounding", ["ceil", "floor"])
@pytest.mark.parametrize("shape", OPENCV_SHAPES, ids=[f"{h}x{w}" for h, w in OPENCV_SHAPES])
def test_numpy_reference_agrees_with_opencv(shape, rounding, tmp_path):
    """OpenCV's Caffe importer as an independent check of the reference the sweeps trust.

    OpenCV reads ``ceil_mode`` but not ``round_mode`` (a FLOOR there breaks its kernel
    size), outputs 0 instead of -FLT_MAX for an empty MAX window, cannot pool an input
    smaller than the kernel, and applies the clip rule only on an axis that pads (Caffe:
    on both axes once the layer pads): those cases are left out. Each top gets an identity
    Power consumer, without which OpenCV does not compute the mask top.
    """
    ceil = rounding == "ceil"
    x = integer_input((2, 3, *shape), seed=7)
    outputs, expected = [], {}
    layers = []
    for method in (MAX, AVE):
        for case in sweep_cases(shape, method, ceil):
            if case.has_empty_window(shape, ceil) or (any(case.pad) and not all(case.pad)):
                continue
            if any(shape[a] + 2 * case.pad[a] < case.kernel[a] for a in range(2)):
                continue
            name = f"{method}_{case.name}"
            tops = [name, name + "_mask"] if method == MAX else [name]
            rounding_field = "" if ceil else "ceil_mode: false"
            top_text = " ".join(f'top: "{t}"' for t in tops)
            layers.append(
                f'layer {{ name: "{name}" type: "Pooling" bottom: "data" {top_text}\n'
                f"  pooling_param {{ pool: {method} {case.fields()} {rounding_field} }} }}"
            )
            values, mask = caffe_pool(x, method, case.kernel, case.stride, case.pad, ceil)
            for top, value in zip(tops, (values, mask)):
                layers.append(f'layer {{ name: "{top}_out" type: "Power" bottom: "{top}" top: "{top}_out" }}')
                outputs.append(f"{top}_out")
                expected[f"{top}_out"] = value
    prototxt = write(tmp_path, net_text("\n".join(layers), {"data": x.shape}), "opencv.prototxt")
    cv = opencv_forward(prototxt, None, {"data": x}, outputs)
    for name in outputs:
        assert_close(cv[name], expected[name], what=f"{name} opencv")


GLOBAL_SHAPE = (2, 3, 5, 7)


def test_global_pooling(tmp_path):
    text = net_text(
        """
        layer { name: "gmax" type: "Pooling" bottom: "data" top: "gmax"
          pooling_param { pool: MAX global_pooling: true } }
        layer { name: "gmask" type: "Pooling" bottom: "data" top: "gmask" top: "gmask_mask"
          pooling_param { pool: MAX global_pooling: true } }
        layer { name: "gave" type: "Pooling" bottom: "data" top: "gave"
          pooling_param { pool: AVE global_pooling: true } }
        layer { name: "gsto" type: "Pooling" bottom: "data" top: "gsto"
          pooling_param { pool: STOCHASTIC global_pooling: true } }
        """,
        {"data": GLOBAL_SHAPE},
    )
    x = integer_input(GLOBAL_SHAPE, low=-2, high=4)
    x[0, 1] = -np.abs(x[0, 1])  # a plane whose sum is <= 0: stochastic gives 0
    run = run_net(tmp_path, text, inputs={"data": x}, make_caffemodel=False)
    max_values, mask = caffe_pool(x, MAX, None)
    ave_values, _ = caffe_pool(x, AVE, None)
    sto_values, _ = caffe_pool(x, STOCHASTIC, None)
    assert max_values.shape == (2, 3, 1, 1)
    for side, blobs in (("onnxruntime", run.onnx), ("torch", run.torch)):
        assert_close(blobs["gmax"], max_values, rtol=0, atol=0, what=f"global MAX {side}")
        assert_close(blobs["gmask"], max_values, rtol=0, atol=0, what=f"global MAX {side}")
        assert_close(blobs["gmask_mask"], mask, rtol=0, atol=0, what=f"global mask {side}")
        assert_close(blobs["gave"], ave_values, what=f"global AVE {side}")
        assert_close(blobs["gsto"], sto_values, what=f"global STOCHASTIC {side}")
    assert sto_values[0, 1, 0, 0] == 0
    cv = opencv_forward(run.prototxt, None, {"data": x}, ["gmax", "gave"])
    assert_close(cv["gmax"], max_values, what="global MAX opencv")
    assert_close(cv["gave"], ave_values, what="global AVE opencv")


STOCHASTIC_CASES = [
    PoolCase((2, 2), (2, 2), (0, 0)),
    PoolCase((3, 3), (1, 1), (0, 0)),
    PoolCase((3, 3), (2, 2), (0, 0)),
    PoolCase((2, 3), (1, 2), (0, 0)),
    PoolCase((1, 1), (3, 3), (0, 0)),  # ceil on 7x8: the last window on W starts past the input
]


@pytest.mark.parametrize("rounding", ["ceil", "floor"])
def test_stochastic_pooling_at_test_time(rounding, tmp_path):
    """sum(x^2)/sum(x), 0 where the sum is <= 0 (also for an empty last window)."""
    ceil = rounding == "ceil"
    shape = (1, 3, 7, 8)
    text = net_text(pooling_layers(STOCHASTIC_CASES, "STOCHASTIC", ceil, with_mask=False), {"data": shape})
    x = integer_input(shape, low=-3, high=5)
    x[0, 0] = np.abs(x[0, 0]) + 1  # all positive
    x[0, 1] = -np.abs(x[0, 1])  # all <= 0: zeros
    run = run_net(tmp_path, text, inputs={"data": x}, make_caffemodel=False)
    for case in STOCHASTIC_CASES:
        expected, _ = caffe_pool(x, STOCHASTIC, case.kernel, case.stride, case.pad, ceil)
        assert_close(run.onnx[case.name], expected, what=f"{case.name} onnxruntime")
        assert_close(run.torch[case.name], expected, what=f"{case.name} torch")
    assert run.onnx["k1s3p0"].shape == ((1, 3, 3, 4) if ceil else (1, 3, 3, 3))
    if ceil:
        assert np.all(run.onnx["k1s3p0"][..., -1] == 0)


EMPTY_WINDOW_CASES = {
    # input (H, W), kernel, stride, Caffe's output (H, W)
    "h4_k1_s2": ((4, 4), (1, 1), (2, 2), (3, 3)),
    "only_h_7x5_k2_s4": ((7, 5), (2, 2), (4, 4), (3, 2)),
    "only_w_3x6_k2x1_s1x3": ((3, 6), (2, 1), (1, 3), (2, 3)),
}


@pytest.mark.parametrize("case", EMPTY_WINDOW_CASES, ids=list(EMPTY_WINDOW_CASES))
def test_max_with_an_empty_last_window_gives_lowest_float_and_mask_minus_one(case, tmp_path):
    """pad 0, stride > kernel, ceil: Caffe adds a window that starts past the input."""
    size, kernel, stride, out_size = EMPTY_WINDOW_CASES[case]
    fields = PoolCase(kernel, stride, (0, 0)).fields()
    shape = (2, 2, *size)
    text = net_text(
        f"""
        layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
          pooling_param {{ pool: MAX {fields} }} }}
        layer {{ name: "plain" type: "Pooling" bottom: "data" top: "plain"
          pooling_param {{ pool: MAX {fields} }} }}
        """,
        {"data": shape},
    )
    x = integer_input(shape)
    run = run_net(tmp_path, text, inputs={"data": x}, make_caffemodel=False)
    expected, mask = caffe_pool(x, MAX, kernel, stride)
    assert expected.shape[2:] == out_size
    empty = mask == -1
    assert empty.any() and np.all(expected[empty] == -FLT_MAX)
    for side, blobs in (("onnxruntime", run.onnx), ("torch", run.torch)):
        for top in ("pool", "plain"):
            assert_close(blobs[top], expected, rtol=0, atol=0, what=f"{top} {side}")
            assert np.all(blobs[top][empty] == -3.4028234663852886e38), f"{top} {side}: not -FLT_MAX"
        assert_close(blobs["mask"], mask, rtol=0, atol=0, what=f"mask {side}")


def test_ave_with_an_empty_last_window_is_refused(tmp_path):
    text = net_text(
        """
        layer { name: "avg" type: "Pooling" bottom: "data" top: "avg"
          pooling_param { pool: AVE kernel_size: 1 stride: 2 } }
        """,
        {"data": (1, 1, 4, 4)},
    )
    with pytest.raises(ShapeError, match=r"'avg'.*last AVE pooling window starts past the input.*FLOOR"):
        load_net(write(tmp_path, text))
    # floor rounding has no such window: 2 outputs
    assert load_net(write(tmp_path, text.replace("stride: 2", "stride: 2 round_mode: FLOOR"))).shapes[
        "avg"
    ] == (
        1,
        1,
        2,
        2,
    )


def test_clip_rule_uses_the_layer_pad_flag(tmp_path):
    """pad_h > 0 turns the clip rule on for W too, where pad_w is 0: no empty window on W."""
    fields = "kernel_h: 2 kernel_w: 1 stride_h: 2 stride_w: 2 pad_h: 1 pad_w: 0"
    text = net_text(
        f"""
        layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
          pooling_param {{ pool: MAX {fields} }} }}
        layer {{ name: "avg" type: "Pooling" bottom: "data" top: "avg"
          pooling_param {{ pool: AVE {fields} }} }}
        """,
        {"data": (1, 2, 4, 4)},
    )
    run = run_net(tmp_path, text, make_caffemodel=False)
    x = run.inputs["data"]
    values, mask = caffe_pool(x, MAX, (2, 1), (2, 2), (1, 0))
    average, _ = caffe_pool(x, AVE, (2, 1), (2, 2), (1, 0))
    assert values.shape == (1, 2, 3, 2)  # W: ceil(3/2)+1 = 3, clipped to 2
    for side, blobs in (("onnxruntime", run.onnx), ("torch", run.torch)):
        assert_close(blobs["pool"], values, rtol=0, atol=0, what=f"MAX {side}")
        assert_close(blobs["mask"], mask, rtol=0, atol=0, what=f"mask {side}")
        assert_close(blobs["avg"], average, what=f"AVE {side}")


def test_mask_ties_go_to_the_first_element_of_the_clipped_window(tmp_path):
    """A constant input: every window's winner is its first cell inside the input."""
    h, w, k, s, p = 6, 7, 3, 2, 1
    text = net_text(
        f"""
        layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
          pooling_param {{ pool: MAX kernel_size: {k} stride: {s} pad: {p} }} }}
        """,
        {"data": (2, 2, h, w)},
    )
    run = run_net(
        tmp_path, text, inputs={"data": np.full((2, 2, h, w), 1.5, np.float32)}, make_caffemodel=False
    )
    out_h, out_w = run.onnx["mask"].shape[2:]
    assert (out_h, out_w) == (4, 4)  # ceil: the last windows hang over the input
    rows = np.maximum(np.arange(out_h) * s - p, 0)
    cols = np.maximum(np.arange(out_w) * s - p, 0)
    expected = np.broadcast_to((rows[:, None] * w + cols[None, :]).astype(np.float32), (2, 2, out_h, out_w))
    assert_close(run.onnx["mask"], expected, rtol=0, atol=0, what="onnxruntime")
    assert_close(run.torch["mask"], expected, rtol=0, atol=0, what="torch")


def test_onnxruntime_maxpool_indices_ignore_padding_and_prefer_the_first_tie():
    """What the mask recipe relies on: whole-tensor Indices into the *unpadded* input.

    Explicit asymmetric pads (end pads larger than begin pads), integer input with ties.
    """
    shape = (2, 3, 8, 11)
    kernel, strides, pads = (3, 4), (2, 3), (1, 2, 2, 3)
    x = integer_input(shape, seed=3, low=0, high=2)
    # Caffe windows with pad (1, 2), ceil: 5 x 5, the last ones hang 1 cell over the end pad
    expected, mask = caffe_pool(x, MAX, kernel, strides, (1, 2), ceil=True)
    assert expected.shape == (2, 3, 5, 5)
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=kernel, strides=strides, pads=pads)
    graph = helper.make_graph(
        [node],
        "maxpool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, expected.shape),
            helper.make_tensor_value_info("i", TensorProto.INT64, expected.shape),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values, indices = session.run(None, {"x": x})
    plane_offset = (np.arange(shape[0] * shape[1]).reshape(shape[0], shape[1], 1, 1)) * shape[2] * shape[3]
    assert_close(values, expected, rtol=0, atol=0, what="values")
    assert_close(indices, mask + plane_offset, rtol=0, atol=0, what="indices")


@pytest.mark.parametrize("opset", [13, 21])
def test_representative_pooling_at_opset(opset, tmp_path):
    text = net_text(
        """
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
          pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
        layer { name: "empty" type: "Pooling" bottom: "data" top: "empty" top: "empty_mask"
          pooling_param { pool: MAX kernel_size: 1 stride: 3 } }
        layer { name: "avg" type: "Pooling" bottom: "data" top: "avg"
          pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
        layer { name: "sto" type: "Pooling" bottom: "data" top: "sto"
          pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }
        """,
        {"data": (1, 2, 8, 8)},
    )
    x = integer_input((1, 2, 8, 8), low=-1, high=4)
    run = run_net(tmp_path, text, inputs={"data": x}, opset=opset, make_caffemodel=False)
    assert run.model.opset_import[0].version == opset
    checks = {
        "pool": caffe_pool(x, MAX, (3, 3), (2, 2), (1, 1)),
        "empty": caffe_pool(x, MAX, (1, 1), (3, 3)),
        "avg": caffe_pool(x, AVE, (3, 3), (2, 2), (1, 1)),
        "sto": caffe_pool(x, STOCHASTIC, (2, 2), (2, 2)),
    }
    for side, blobs in (("onnxruntime", run.onnx), ("torch", run.torch)):
        for top, (values, _) in checks.items():
            exact = top in ("pool", "empty")  # also keeps -FLT_MAX from loosening the tolerance
            assert_close(
                blobs[top], values, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-5, what=f"{top} {side}"
            )
        assert_close(blobs["mask"], checks["pool"][1], rtol=0, atol=0, what=f"mask {side}")
        assert_close(blobs["empty_mask"], checks["empty"][1], rtol=0, atol=0, what=f"empty mask {side}")


BAD_PARAMS = {
    "pad_not_below_kernel": (
        "pool: MAX kernel_size: 2 pad: 2",
        1,
        LayerError,
        r"pad \[2, 2\] must be smaller",
    ),
    "pad_with_stochastic": (
        "pool: STOCHASTIC kernel_size: 3 pad: 1",
        1,
        LayerError,
        "only implemented for MAX",
    ),
    "no_kernel": ("pool: MAX stride: 2", 1, LayerError, "no kernel size"),
    "kernel_size_and_kernel_h": ("kernel_size: 3 kernel_h: 3 kernel_w: 3", 1, LayerError, "not both"),
    "kernel_h_without_kernel_w": (
        "kernel_h: 3",
        1,
        LayerError,
        "kernel_h and kernel_w must be given together",
    ),
    "pad_and_pad_h": ("kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1", 1, LayerError, "either pad or pad_h"),
    "stride_h_only": ("kernel_size: 3 stride_h: 2", 1, LayerError, "stride_h and stride_w"),
    "zero_stride": ("kernel_size: 3 stride: 0", 1, LayerError, r"stride must be positive, got \[0, 0\]"),
    "zero_kernel": ("kernel_h: 0 kernel_w: 2", 1, LayerError, r"kernel must be positive, got \[0, 2\]"),
    "global_with_kernel": (
        "global_pooling: true kernel_size: 3",
        1,
        LayerError,
        "global_pooling takes no kernel",
    ),
    "global_with_stride": ("global_pooling: true stride: 2", 1, LayerError, "pad 0 and stride 1"),
    "mask_with_ave": ("pool: AVE kernel_size: 2", 2, LayerError, "mask.*needs MAX pooling, not AVE"),
    "round_mode_vs_ceil_mode": (
        "kernel_size: 2 round_mode: FLOOR ceil_mode: true",
        1,
        LayerError,
        "disagree",
    ),
    "floor_output_empty": ("kernel_size: 7 round_mode: FLOOR", 1, ShapeError, "output size 0"),
}


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_bad_parameters_are_refused(case, tmp_path):
    fields, tops, error, match = BAD_PARAMS[case]
    top_text = " ".join(f'top: "t{i}"' for i in range(tops))
    text = net_text(
        f"""
        layer {{ name: "bad_pool" type: "Pooling" bottom: "data" {top_text}
          pooling_param {{ {fields} }} }}
        """,
        {"data": (1, 2, 6, 6)},
    )
    with pytest.raises(error, match=r"'bad_pool'.*" + match):
        load_net(write(tmp_path, text))


def test_non_4d_input_is_refused(tmp_path):
    text = net_text(
        """
        layer { name: "bad_pool" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 } }
        """,
        {"data": (2, 3, 8)},
    )
    with pytest.raises(ShapeError, match=r"'bad_pool'.*4-D input"):
        load_net(write(tmp_path, text))


def _darknet_maxpool(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """darknet's maxpool_layer forward (padding k-1, offset -(k-1)//2), written from its rule."""
    n, c, h, w = x.shape
    oh, ow = (h - 1) // s + 1, (w - 1) // s + 1
    off = (k - 1) // 2
    out = np.full((n, c, oh, ow), -np.inf, np.float32)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - off, j * s - off
            window = x[:, :, max(r0, 0) : min(r0 + k, h), max(c0, 0) : min(c0 + k, w)]
            out[:, :, i, j] = window.max(axis=(2, 3))
    return out


@pytest.mark.parametrize(("k", "s", "size"), [(2, 1, 13), (2, 2, 26), (3, 1, 7), (3, 2, 9), (2, 2, 7)])
def test_darknet_pooling_keeps_darknet_sizes(tmp_path, k, s, size):
    text = net_text(
        f"""
        layer {{ name: "pool" type: "DarknetPooling" bottom: "data" top: "pool"
          pooling_param {{ pool: MAX kernel_size: {k} stride: {s} }} }}
        """,
        {"data": (1, 3, size, size)},
    )
    run = run_net(tmp_path, text, make_caffemodel=False)
    expected = _darknet_maxpool(run.inputs["data"], k, s)
    assert_close(run.onnx["pool"], expected, what="onnxruntime")
    assert_close(run.torch["pool"], expected, what="torch reference")


def test_darknet_pooling_refuses_what_darknet_has_not(tmp_path):
    text = net_text(
        'layer { name: "pool" type: "DarknetPooling" bottom: "data" top: "pool" pooling_param { pool: AVE kernel_size: 2 } }',
        {"data": (1, 1, 4, 4)},
    )
    with pytest.raises(LayerError, match="darknet's MAX pooling"):
        load_net(write(tmp_path, text))
