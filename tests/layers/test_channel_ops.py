"""ShuffleChannel, Reorg and Axpy against numpy references written from the forks' index
facts (channel transpose; darknet's reorg_cpu loop; a*x + y) and OpenCV; ShuffleNet v2 and
the YOLO corpus nets (cut before their detection-output layers)."""

from __future__ import annotations

import numpy as np
import pytest

import caffe2onnx
from caffe2onnx.errors import LayerError, ShapeError
from caffe2onnx.make_weights import make_weights
from caffe2onnx.onnx_export import to_onnx
from caffe2onnx.validation import compare_net, run_onnx
from tests.helpers import CORPUS, assert_close, net_text, opencv_forward, run_net, torch_blobs, write

# ----------------------------------------------------------------------------- references


def shuffle_channel(x, group):
    """Output channel ``j*group + i`` is input channel ``i*(C/group) + j``."""
    out = np.empty_like(x)
    per_group = x.shape[1] // group
    for i in range(group):
        for j in range(per_group):
            out[:, j * group + i] = x[:, i * per_group + j]
    return out


def reorg(x, stride, reverse=False):
    """darknet's reorg_cpu loop over the *input* (b, k, j, i) as the Caffe fork calls it
    (forward flag = reverse): flat buffers, the output reshaped to the top's shape."""
    batch, channels, height, width = x.shape
    out_c = channels // (stride * stride)
    src = x.reshape(-1)
    dst = np.empty_like(src)
    for b in range(batch):
        for k in range(channels):
            for j in range(height):
                for i in range(width):
                    in_index = i + width * (j + height * (k + channels * b))
                    c2 = k % out_c
                    offset = k // out_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + width * stride * (h2 + height * stride * (c2 + out_c * b))
                    if reverse:
                        dst[out_index] = src[in_index]
                    else:
                        dst[in_index] = src[out_index]
    if reverse:
        return dst.reshape(batch, out_c, height * stride, width * stride)
    return dst.reshape(batch, channels * stride * stride, height // stride, width // stride)


# ----------------------------------------------------------------------------- ShuffleChannel


@pytest.mark.parametrize(
    ("group", "shape"),
    [(2, (2, 8, 3, 4)), (3, (1, 6, 2, 5)), (4, (1, 8, 1, 1)), (1, (1, 4, 2, 2)), (2, (2, 6, 5))],
    ids=["g2", "g3", "g4_1x1", "g1_identity", "g2_3d"],
)
def test_shuffle_channel(group, shape, tmp_path):
    text = net_text(
        f"""
        layer {{ name: "shuffle" type: "ShuffleChannel" bottom: "data" top: "shuffle"
          shuffle_channel_param {{ group: {group} }} }}
        """,
        {"data": shape},
    )
    run = run_net(tmp_path, text, make_caffemodel=False)
    expected = shuffle_channel(run.inputs["data"], group)
    assert_close(run.onnx["shuffle"], expected, rtol=0, atol=0, what="onnxruntime")
    assert_close(run.torch["shuffle"], expected, rtol=0, atol=0, what="torch reference")
    if len(shape) == 4:
        cv = opencv_forward(run.prototxt, None, run.inputs, ["shuffle"])
        assert_close(cv["shuffle"], expected, rtol=0, atol=0, what="opencv")


def test_shuffle_channel_bad_group(tmp_path):
    text = net_text(
        'layer { name: "s" type: "ShuffleChannel" bottom: "data" top: "s" shuffle_channel_param { group: 4 } }',
        {"data": (1, 6, 2, 2)},
    )
    with pytest.raises(
        ShapeError, match=r"layer 's' \(ShuffleChannel\): 6 channels are not divisible by group 4"
    ):
        caffe2onnx.load_net(write(tmp_path, text))


# ----------------------------------------------------------------------------- Reorg

REORG_CASES = {
    "yolov2_stride2": (2, False, (1, 8, 4, 6)),
    "stride2_batch2": (2, False, (2, 4, 6, 2)),
    "stride3": (3, False, (1, 9, 6, 3)),
    "reverse_stride2": (2, True, (1, 8, 2, 3)),
    "reverse_stride3_batch2": (3, True, (2, 18, 2, 2)),
}


@pytest.mark.parametrize("case", REORG_CASES, ids=list(REORG_CASES))
def test_reorg(case, tmp_path):
    stride, reverse, shape = REORG_CASES[case]
    text = net_text(
        f"""
        layer {{ name: "reorg" type: "Reorg" bottom: "data" top: "reorg"
          reorg_param {{ stride: {stride} reverse: {str(reverse).lower()} }} }}
        """,
        {"data": shape},
    )
    run = run_net(tmp_path, text, make_caffemodel=False)
    expected = reorg(run.inputs["data"], stride, reverse)
    assert run.net.shapes["reorg"] == expected.shape
    assert_close(run.onnx["reorg"], expected, rtol=0, atol=0, what="onnxruntime")
    assert_close(run.torch["reorg"], expected, rtol=0, atol=0, what="torch reference")
    if not reverse and stride == 2:  # OpenCV's Reorg: no reverse mode, and its importer ignores the stride
        cv = opencv_forward(run.prototxt, None, run.inputs, ["reorg"])
        assert_close(cv["reorg"], expected, rtol=0, atol=0, what="opencv")


def test_reorg_is_not_space_to_depth(tmp_path):
    """darknet's reorg differs from ONNX SpaceToDepth / TF space_to_depth."""
    text = net_text(
        'layer { name: "r" type: "Reorg" bottom: "data" top: "r" reorg_param { stride: 2 } }',
        {"data": (1, 4, 2, 2)},
    )
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)
    run = run_net(tmp_path, text, inputs={"data": x}, make_caffemodel=False)
    space_to_depth = x.reshape(1, 4, 1, 2, 1, 2).transpose(0, 3, 5, 1, 2, 4).reshape(1, 16, 1, 1)
    assert not np.array_equal(run.onnx["r"], space_to_depth)
    assert_close(run.onnx["r"], reorg(x, 2), rtol=0, atol=0, what="onnxruntime")


@pytest.mark.parametrize(
    ("params", "shape", "error", "message"),
    [
        ("", (1, 4, 2, 2), LayerError, r"reorg_param.stride is required"),
        ("stride: 0", (1, 4, 2, 2), LayerError, r"reorg_param.stride must be positive, got 0"),
        ("stride: 2", (1, 6, 4, 4), ShapeError, r"6 channels are not divisible by stride\^2 = 4"),
        ("stride: 2", (1, 4, 5, 4), ShapeError, r"height 5 and width 4 must be divisible by the stride 2"),
        ("stride: 2", (4, 4, 4), ShapeError, r"needs a 4-D input"),
    ],
    ids=["no_stride", "zero_stride", "channels", "height", "rank"],
)
def test_reorg_bad_parameters(params, shape, error, message, tmp_path):
    text = net_text(
        f'layer {{ name: "r" type: "Reorg" bottom: "data" top: "r" reorg_param {{ {params} }} }}',
        {"data": shape},
    )
    with pytest.raises(error, match=rf"layer 'r' \(Reorg\): .*{message}"):
        caffe2onnx.load_net(write(tmp_path, text))


# ----------------------------------------------------------------------------- Axpy


def test_axpy_opencv_corpus_net(tmp_path):
    prototxt = CORPUS / "opencv_axpy.test.prototxt"
    run = run_net(tmp_path, prototxt, make_caffemodel=False)
    a, x, y = run.inputs["scale"], run.inputs["shift"], run.inputs["data"]
    expected = np.empty_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            expected[n, c] = a[n, c, 0, 0] * x[n, c] + y[n, c]
    assert_close(run.onnx["axpy"], expected, what="onnxruntime")
    assert_close(run.torch["axpy"], expected, what="torch reference")
    # OpenCV's importer builds Scale(bottom 2, a) + bottom 1, i.e. a*y + x: the bottoms swapped
    # relative to the SENet source (caffe_copy(y) then caffe_axpy(a, x)); it is no oracle here
    cv = opencv_forward(prototxt, None, run.inputs, ["axpy"])
    assert_close(cv["axpy"], a * y + x, what="opencv (swapped bottoms)")


def test_axpy_with_2d_scale_from_se_block(tmp_path):
    """SENet: a = sigmoid(fc(...)) of shape [N, C] (InnerProduct output) scales x, plus y."""
    text = net_text(
        """
        layer { name: "pool" type: "Pooling" bottom: "x" top: "pool" pooling_param { pool: AVE global_pooling: true } }
        layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }
        layer { name: "gate" type: "Sigmoid" bottom: "fc" top: "gate" }
        layer { name: "axpy" type: "Axpy" bottom: "gate" bottom: "x" bottom: "y" top: "axpy" }
        """,
        {"x": (2, 3, 4, 5), "y": (2, 3, 4, 5)},
    )
    run = run_net(tmp_path, text)
    assert run.net.shapes["gate"] == (2, 3)
    expected = run.onnx["gate"][:, :, None, None] * run.inputs["x"] + run.inputs["y"]
    assert_close(run.onnx["axpy"], expected, what="onnxruntime")
    assert_close(run.torch["axpy"], run.torch["gate"][:, :, None, None] * run.inputs["x"] + run.inputs["y"],
                 what="torch reference")  # fmt: skip


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((1, 2, 1, 1), (1, 2, 3, 4), (1, 2, 3, 5)), r"x \(bottom 1\) \[1, 2, 3, 4\] and y \(bottom 2\)"),
        (((1, 3, 1, 1), (1, 2, 3, 4), (1, 2, 3, 4)), r"a \(bottom 0\) must be \[N, C\] or \[N, C, 1, 1\]"),
        (((1, 2, 3, 1), (1, 2, 3, 4), (1, 2, 3, 4)), r"a \(bottom 0\) must be"),
    ],
    ids=["x_y_differ", "a_channels", "a_spatial"],
)
def test_axpy_bad_shapes(shapes, message, tmp_path):
    text = net_text(
        'layer { name: "axpy" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "axpy" }',
        dict(zip(("a", "x", "y"), shapes)),
    )
    with pytest.raises(ShapeError, match=rf"layer 'axpy' \(Axpy\): {message}"):
        caffe2onnx.load_net(write(tmp_path, text))


@pytest.mark.parametrize("opset", [13, 21], ids=["opset13", "opset21"])
def test_channel_ops_at_opset(opset, tmp_path):
    text = net_text(
        """
        layer { name: "shuffle" type: "ShuffleChannel" bottom: "x" top: "shuffle" shuffle_channel_param { group: 2 } }
        layer { name: "reorg" type: "Reorg" bottom: "shuffle" top: "reorg" reorg_param { stride: 2 } }
        layer { name: "back" type: "Reorg" bottom: "reorg" top: "back" reorg_param { stride: 2 reverse: true } }
        layer { name: "axpy" type: "Axpy" bottom: "a" bottom: "back" bottom: "x" top: "axpy" }
        """,
        {"x": (1, 8, 4, 6), "a": (1, 8, 1, 1)},
    )
    run = run_net(tmp_path, text, make_caffemodel=False, opset=opset)
    shuffled = shuffle_channel(run.inputs["x"], 2)
    assert_close(run.onnx["reorg"], reorg(shuffled, 2), rtol=0, atol=0, what=f"reorg opset {opset}")
    back = reorg(reorg(shuffled, 2), 2, reverse=True)  # not the identity: each call views its own shape
    assert_close(run.onnx["back"], back, rtol=0, atol=0, what=f"reverse reorg opset {opset}")
    expected = run.inputs["a"] * back + run.inputs["x"]
    assert_close(run.onnx["axpy"], expected, what=f"axpy opset {opset}")


# ----------------------------------------------------------------------------- whole nets


def test_shufflenet_v2(tmp_path):
    prototxt = CORPUS / "shufflenet_v2_x0.5_x2paddle.deploy.prototxt"
    shapes = {"data": (1, 3, 224, 224)}  # its real size: the last pooling has a fixed 7x7 kernel
    caffemodel = tmp_path / "shufflenet.caffemodel"
    make_weights(prototxt, caffemodel, seed=1, input_shapes=shapes)
    net = caffe2onnx.load_net(prototxt, caffemodel, input_shapes=shapes)
    model = to_onnx(net)
    inputs = {"data": np.random.default_rng(0).standard_normal(shapes["data"]).astype(np.float32)}
    report = compare_net(net, model, inputs=inputs, rtol=1e-3)
    assert report.passed, report.summary()
    (output,) = net.outputs
    layer_name = net.producer()[output].caffe_name or net.producer()[output].name
    cv = opencv_forward(prototxt, caffemodel, inputs, [layer_name])[layer_name]
    ours = run_onnx(model, inputs)[output]
    assert_close(ours, cv.reshape(ours.shape), rtol=1e-3, what="shufflenet vs opencv")


YOLO_NETS = {
    # (prototxt, detection layer type, a smaller input (a multiple of 32))
    "yolov2_darknet19": ("yolov2_darknet19_eric612.deploy.prototxt", "YoloDetectionOutput", (1, 3, 128, 128)),
    "mobilenet_yolov3_lite": (
        "mobilenet_yolov3_lite_eric612.deploy.prototxt",
        "Yolov3DetectionOutput",
        (1, 3, 160, 160),
    ),
}


def layer_block(text, layer_type):
    """(start, end) of the ``layer { ... }`` block of ``layer_type`` in a prototxt."""
    start = text.rindex("layer", 0, text.index(f'type: "{layer_type}"'))
    depth = 0
    for end in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return start, end + 1
    raise ValueError(f"unbalanced braces after {layer_type}")


def detection_bottoms(text, layer_type):
    start, end = layer_block(text, layer_type)
    return [line.split('"')[1] for line in text[start:end].splitlines() if line.strip().startswith("bottom:")]


@pytest.mark.parametrize(
    "key",
    [pytest.param("yolov2_darknet19", marks=pytest.mark.slow), "mobilenet_yolov3_lite"],
    ids=list(YOLO_NETS),
)
def test_yolo_net_up_to_detection_output(key, tmp_path):
    """The YOLO corpus nets without their (unsupported) detection-output layer: Reorg,
    depthwise convolutions, bilinear deconvolution; every blob ONNX vs torch, outputs vs OpenCV."""
    file, layer_type, shape = YOLO_NETS[key]
    text = (CORPUS / file).read_text()
    start, end = layer_block(text, layer_type)
    prototxt = write(tmp_path, text[:start] + text[end:], f"{key}.prototxt")
    caffemodel = tmp_path / f"{key}.caffemodel"
    make_weights(prototxt, caffemodel, seed=1, input_shapes={"data": shape})
    net = caffe2onnx.load_net(prototxt, caffemodel, input_shapes={"data": shape})
    assert set(net.outputs) == set(detection_bottoms(text, layer_type))
    inputs = {"data": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    tensors = [top for layer in net.layers for top in layer.tops]
    ours = run_onnx(to_onnx(net), inputs, tensors)  # one session: this model is large
    reference = torch_blobs(net, inputs)
    for tensor in tensors:
        assert_close(ours[tensor], reference[tensor], rtol=1e-3, what=f"{key} {tensor}: onnx vs torch")
    # OpenCV does not know the fork type DepthwiseConvolution; these layers all give group = C
    write(
        tmp_path, prototxt.read_text().replace('"DepthwiseConvolution"', '"Convolution"'), "opencv.prototxt"
    )
    cv = opencv_forward(tmp_path / "opencv.prototxt", caffemodel, inputs, list(net.outputs))
    for name in net.outputs:
        assert_close(
            ours[name], cv[name].reshape(ours[name].shape), rtol=1e-3, what=f"{key} {name} vs opencv"
        )


@pytest.mark.parametrize("key", YOLO_NETS, ids=list(YOLO_NETS))
def test_yolo_net_cut_with_outputs(key):
    file, layer_type, shape = YOLO_NETS[key]
    prototxt = CORPUS / file
    outputs = detection_bottoms(prototxt.read_text(), layer_type)
    net = caffe2onnx.load_net(prototxt, random_weights=0, input_shapes={"data": shape}, outputs=outputs)
    assert layer_type not in {layer.type for layer in net.layers}
    assert net.outputs == tuple(outputs)
    to_onnx(net)
