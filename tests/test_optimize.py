"""The inference passes (caffe2onnx.optimize) keep every number: each case converts a small
net with and without them, runs both graphs in onnxruntime on the same inputs and
compares every Caffe blob present in both, the graph outputs always among them; the
optimized graph is also validated against the PyTorch reference of the *original* net
(compare_net), and each case checks the pass really changed the graph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest

from caffe2onnx.ir import Net
from caffe2onnx.make_weights import make_weights
from caffe2onnx.onnx_export import to_onnx
from caffe2onnx.optimize import optimize
from caffe2onnx.parser import load_net
from caffe2onnx.validation import compare_net, run_onnx
from tests.helpers import assert_close, net_text, random_inputs, write

SHAPE = (2, 3, 7, 6)


@dataclass
class Both:
    net: Net
    optimized: Net
    plain: onnx.ModelProto
    fast: onnx.ModelProto
    compared: list[str]

    def op_types(self, which: str = "fast") -> list[str]:
        model = self.fast if which == "fast" else self.plain
        return [node.op_type for node in model.graph.node]

    def layer_types(self) -> list[str]:
        return [layer.type for layer in self.optimized.layers]


def convert_both(tmp_path, layers: str, shape=SHAPE, opset: int = 17, seed: int = 0) -> Both:
    """Convert with and without the passes; assert every common blob is unchanged."""
    prototxt = write(tmp_path, net_text(layers, {"data": shape}))
    caffemodel = tmp_path / "net.caffemodel"
    make_weights(prototxt, caffemodel, seed=seed)
    net = load_net(prototxt, caffemodel)
    plain = to_onnx(net, opset)
    fast = to_onnx(net, opset, optimize=True)
    assert [o.name for o in fast.graph.output] == list(net.outputs)
    feed = random_inputs(net, seed)
    tensors = [top for layer in net.layers for top in layer.tops]
    before = run_onnx(plain, feed, tensors)
    after = run_onnx(fast, feed, tensors)
    compared = [t for t in tensors if t in before and t in after]
    assert set(net.outputs) <= set(compared)
    for tensor in compared:
        assert_close(after[tensor], before[tensor], rtol=2e-5, atol=1e-5, what=tensor)
    report = compare_net(net, fast, inputs=feed)
    assert report.passed, report.summary()
    return Both(net, optimize(net), plain, fast, compared)


CONV_BN_SCALE = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 %s } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


@pytest.mark.parametrize("bias", ["bias_term: true", "bias_term: false"], ids=["with_bias", "no_bias"])
def test_conv_batchnorm_scale_in_place_chain_is_folded(tmp_path, bias):
    both = convert_both(tmp_path, CONV_BN_SCALE % bias)
    assert both.op_types() == ["Conv", "Relu"]
    assert both.op_types("plain").count("BatchNormalization") == 1
    # The folded conv writes what Scale wrote: the SSA name of the blob after Scale.
    conv = both.optimized.layers[0]
    assert conv.tops == both.net.layer("scale").tops and conv.params.bias_term
    assert "conv@scale" in both.compared


@pytest.mark.parametrize("opset", [13, 21])
def test_conv_batchnorm_fold_at_opset(tmp_path, opset):
    both = convert_both(tmp_path, CONV_BN_SCALE % "", opset=opset)
    assert both.op_types() == ["Conv", "Relu"]


def test_grouped_deconvolution_batchnorm_is_folded(tmp_path):
    layers = """
    layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
            convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 3 bias_term: false } }
    layer { name: "bn" type: "BatchNorm" bottom: "up" top: "bn" }
    layer { name: "scale" type: "Scale" bottom: "bn" top: "out" scale_param { bias_term: true } }
    """
    both = convert_both(tmp_path, layers, shape=(1, 3, 5, 4))
    assert both.op_types() == ["ConvTranspose"]


def test_depthwise_convolution_batchnorm_is_folded(tmp_path):
    layers = """
    layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw"
            convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
    layer { name: "bn" type: "BatchNorm" bottom: "dw" top: "dw" }
    layer { name: "scale" type: "Scale" bottom: "dw" top: "dw" scale_param { bias_term: true } }
    """
    assert convert_both(tmp_path, layers).op_types() == ["Conv"]


@pytest.mark.parametrize("transpose", ["false", "true"])
def test_inner_product_batchnorm_scale_is_folded(tmp_path, transpose):
    layers = f"""
    layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
            inner_product_param {{ num_output: 5 transpose: {transpose} }} }}
    layer {{ name: "bn" type: "BatchNorm" bottom: "fc" top: "fc" }}
    layer {{ name: "scale" type: "Scale" bottom: "fc" top: "fc" scale_param {{ bias_term: false }} }}
    """
    both = convert_both(tmp_path, layers)
    assert both.op_types() == ["Flatten", "Gemm"]


def test_bias_power_and_dropout_scale_fold_into_inner_product(tmp_path):
    layers = """
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 } }
    layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc"
            dropout_param { dropout_ratio: 0.25 scale_train: false } }
    layer { name: "bias" type: "Bias" bottom: "fc" top: "fc" }
    layer { name: "pow" type: "Power" bottom: "fc" top: "out" power_param { power: 1 scale: -2 shift: 0.5 } }
    """
    both = convert_both(tmp_path, layers)
    assert both.op_types() == ["Flatten", "Gemm"]


@pytest.mark.parametrize(
    "bn_param",
    ["bn_param { bn_mode: INFERENCE }", "bn_param { eps: 0.001 }"],
    ids=["segnet_inference", "pspnet"],
)
def test_fork_bn_is_folded(tmp_path, bn_param):
    layers = f"""
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param {{ num_output: 4 kernel_size: 1 }} }}
    layer {{ name: "bn" type: "BN" bottom: "conv" top: "conv" {bn_param} }}
    """
    assert convert_both(tmp_path, layers).op_types() == ["Conv"]


def test_segnet_bn_in_learn_mode_is_not_folded(tmp_path):
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 1 } }
    layer { name: "bn" type: "BN" bottom: "conv" top: "conv" }
    """
    both = convert_both(tmp_path, layers)
    assert both.layer_types() == ["Convolution", "BN"]


def test_scale_over_more_than_the_channel_axis_is_not_folded(tmp_path):
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 1 } }
    layer { name: "scale" type: "Scale" bottom: "conv" top: "out" scale_param { axis: 1 num_axes: 2 } }
    """
    both = convert_both(tmp_path, layers)
    assert both.layer_types() == ["Convolution", "Scale"]


def test_conv_output_read_twice_is_not_folded(tmp_path):
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" }
    layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "bn" top: "sum" }
    """
    both = convert_both(tmp_path, layers)
    assert both.layer_types() == ["Convolution", "BatchNorm", "Eltwise"]
    assert "conv" in both.compared and "bn" in both.compared


def test_conv_output_that_is_a_graph_output_is_not_folded(tmp_path):
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" }
    """
    prototxt = write(tmp_path, net_text(layers, {"data": SHAPE}))
    make_weights(prototxt, tmp_path / "w.caffemodel")
    net = load_net(prototxt, tmp_path / "w.caffemodel", outputs=["conv", "bn"])
    assert [layer.type for layer in optimize(net).layers] == ["Convolution", "BatchNorm"]


def test_batchnorm_read_by_two_layers_is_folded_and_both_readers_see_it(tmp_path):
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" }
    layer { name: "relu" type: "ReLU" bottom: "bn" top: "relu" }
    layer { name: "sig" type: "Sigmoid" bottom: "bn" top: "sig" }
    """
    both = convert_both(tmp_path, layers)
    assert both.layer_types() == ["Convolution", "ReLU", "Sigmoid"]
    assert "bn" in both.compared


def test_shared_weights_are_not_changed_for_the_other_user(tmp_path):
    layers = """
    layer { name: "a" type: "Convolution" bottom: "data" top: "a" param { name: "w" } param { name: "wb" }
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
    layer { name: "b" type: "Convolution" bottom: "data" top: "b" param { name: "w" } param { name: "wb" }
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
    layer { name: "bn" type: "BatchNorm" bottom: "a" top: "a" }
    layer { name: "scale" type: "Scale" bottom: "a" top: "a" scale_param { bias_term: true } }
    """
    both = convert_both(tmp_path, layers)
    assert both.op_types() == ["Conv", "Conv"]
    a, b = both.fast.graph.node
    assert list(b.input[1:]) == ["w", "wb"]  # the unfolded user keeps the shared initializers
    assert "w" not in a.input


def test_batchnorm_scale_pair_without_a_conv_becomes_one_scale(tmp_path):
    layers = """
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 2 } }
    layer { name: "bn" type: "BatchNorm" bottom: "pool" top: "pool" }
    layer { name: "scale" type: "Scale" bottom: "pool" top: "pool" scale_param { bias_term: true } }
    layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
    """
    both = convert_both(tmp_path, layers)
    assert both.layer_types() == ["Pooling", "Scale", "ReLU"]
    assert "BatchNormalization" not in both.op_types()


def test_dropout_and_split_are_dropped(tmp_path):
    layers = """
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 6 } }
    layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.5 } }
    layer { name: "split" type: "Split" bottom: "fc" top: "s1" top: "s2" }
    layer { name: "relu" type: "ReLU" bottom: "s1" top: "r" }
    layer { name: "sig" type: "Sigmoid" bottom: "s2" top: "g" }
    layer { name: "cat" type: "Concat" bottom: "r" top: "c" }
    layer { name: "flat" type: "Flatten" bottom: "c" top: "f" }
    layer { name: "sum" type: "Eltwise" bottom: "f" bottom: "g" top: "out" }
    """
    both = convert_both(tmp_path, layers)
    assert both.layer_types() == ["InnerProduct", "ReLU", "Sigmoid", "Eltwise"]
    assert "Identity" not in both.op_types()


def test_dropped_identities_that_are_graph_outputs_keep_their_names(tmp_path):
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "split" type: "Split" bottom: "conv" top: "out1" top: "out2" top: "inner" }
    layer { name: "relu" type: "ReLU" bottom: "inner" top: "out3" }
    layer { name: "drop" type: "Dropout" bottom: "data" top: "copy" }
    """
    both = convert_both(tmp_path, layers)
    assert set(both.net.outputs) == {"out1", "out2", "out3", "copy"}
    # conv now writes out1; out2 stays an Identity of it; the copy of a net input stays.
    assert both.optimized.layers[0].tops == ("out1",)
    assert both.op_types().count("Identity") == 2


def test_identity_output_of_an_in_place_chain(tmp_path):
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "x"
            convolution_param { num_output: 3 kernel_size: 3 } }
    layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
    layer { name: "drop" type: "Dropout" bottom: "x" top: "x" }
    """
    both = convert_both(tmp_path, layers)
    assert both.net.outputs == ("x",)
    assert both.op_types() == ["Conv", "Relu"]


def test_constant_nodes_are_folded(tmp_path):
    # Power with scale 0 is a constant: Shape(x) -> Expand(value); the static Shape folds.
    layers = """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "k" type: "Power" bottom: "conv" top: "k" power_param { power: 2 scale: 0 shift: 3 } }
    layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "k" top: "out" }
    """
    both = convert_both(tmp_path, layers, shape=(1, 3, 4, 4))
    assert "Shape" in both.op_types("plain")
    assert "Shape" not in both.op_types() and "Expand" not in both.op_types()
    assert "k" in both.compared or "k" not in both.op_types()


def test_optimize_notes_what_it_did(tmp_path):
    prototxt = write(tmp_path, net_text(CONV_BN_SCALE % "", {"data": SHAPE}))
    make_weights(prototxt, tmp_path / "w.caffemodel")
    net = optimize(load_net(prototxt, tmp_path / "w.caffemodel"))
    assert any("folded into convolution/inner product layers: 2" in note for note in net.notes)
    assert set(net.shapes) == {"data", "conv@scale", "conv"}


def test_folded_weights_are_new_arrays(tmp_path):
    prototxt = write(tmp_path, net_text(CONV_BN_SCALE % "", {"data": SHAPE}))
    make_weights(prototxt, tmp_path / "w.caffemodel")
    net = load_net(prototxt, tmp_path / "w.caffemodel")
    original = np.array(net.layers[0].weights[0])
    folded = optimize(net).layers[0]
    assert folded.weight_names == ("conv/folded_weight", "conv/folded_bias")
    np.testing.assert_array_equal(net.layers[0].weights[0], original)
    assert not np.array_equal(folded.weights[0], original)
