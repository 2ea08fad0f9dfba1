"""Parsing: prototxt formats, input styles, phases, data/loss layers, SSA names, weights."""

from __future__ import annotations

import numpy as np
import pytest

import caffe2onnx
from caffe2onnx.caffemodel import write_caffemodel
from caffe2onnx.errors import (
    Caffe2OnnxError,
    NetDefinitionError,
    ParseError,
    RandomFillerError,
    UnsupportedLayersError,
    WeightError,
)
from tests.helpers import assert_close, run_net, write

BODY = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""

INPUT_STYLES = {
    "input_layer": 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }',
    "input_dim": 'input: "data"\ninput_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8',
    "input_shape": 'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }',
}


@pytest.mark.parametrize("style", INPUT_STYLES, ids=list(INPUT_STYLES))
def test_every_input_style_declares_the_same_input(tmp_path, style):
    net = caffe2onnx.load_net(write(tmp_path, INPUT_STYLES[style] + BODY), random_weights=0)
    assert net.inputs == (("data", (1, 3, 8, 8)),)
    assert net.shapes["conv"] == (1, 2, 6, 6)


def test_several_inputs_and_both_styles_in_one_file(tmp_path):
    text = """
    input: "a"
    input_dim: 1 input_dim: 2 input_dim: 4 input_dim: 4
    layer { name: "in" type: "Input" top: "b" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
    """
    net = caffe2onnx.load_net(write(tmp_path, text))
    assert net.inputs == (("a", (1, 2, 4, 4)), ("b", (1, 2, 4, 4)))


def test_input_without_shape_needs_input_shape_and_says_so(tmp_path):
    path = write(tmp_path, 'input: "data"' + BODY)
    with pytest.raises(NetDefinitionError, match=r"--input-shape data="):
        caffe2onnx.load_net(path, random_weights=0)
    net = caffe2onnx.load_net(path, random_weights=0, input_shapes={"data": (2, 3, 5, 5)})
    assert net.shapes["conv"] == (2, 2, 3, 3)


def test_input_shape_for_an_unknown_name_lists_the_real_inputs(tmp_path):
    path = write(tmp_path, INPUT_STYLES["input_dim"] + BODY)
    with pytest.raises(NetDefinitionError, match="images.*inputs are: data"):
        caffe2onnx.load_net(path, random_weights=0, input_shapes={"images": (1, 3, 8, 8)})


def test_train_val_net_keeps_test_phase_and_replaces_data_layers(tmp_path):
    text = """
    layer { name: "train_data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
      data_param { source: "train_lmdb" batch_size: 64 } }
    layer { name: "test_data" type: "Data" top: "data" top: "label" include { phase: TEST }
      data_param { source: "val_lmdb" batch_size: 10 } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 2 kernel_size: 3 } }
    layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" exclude { phase: TEST } }
    layer { name: "accuracy" type: "Accuracy" bottom: "conv" bottom: "label" top: "accuracy" include { phase: TEST } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }
    """
    path = write(tmp_path, text)
    with pytest.raises(NetDefinitionError, match="shape of input.*data"):
        caffe2onnx.load_net(path, random_weights=0)
    net = caffe2onnx.load_net(path, random_weights=0, input_shapes={"data": (1, 3, 8, 8)})
    assert [layer.name for layer in net.layers] == ["conv"]
    assert net.outputs == ("conv",)
    notes = "\n".join(net.notes)
    assert "train_data" in notes and "test_data" in notes and "loss" in notes and "accuracy" in notes


def test_in_place_layers_are_renamed_ssa_style(tmp_path):
    text = (
        INPUT_STYLES["input_dim"]
        + """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 2 kernel_size: 3 } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "fork" type: "Convolution" bottom: "conv" top: "side"
      convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" }
    """
    )
    run = run_net(tmp_path, text)
    conv, relu, fork, drop = run.net.layers
    assert conv.tops == ("conv@conv",)
    assert relu.bottoms == ("conv@conv",) and relu.tops == ("conv@relu",)
    assert fork.bottoms == ("conv@relu",), "a reader binds to the newest version written before it"
    assert drop.tops == ("conv",), "the last version keeps the Caffe blob name"
    assert set(run.net.outputs) == {"side", "conv"}
    np.testing.assert_array_equal(run.onnx["conv"], np.maximum(run.onnx["conv@conv"], 0))


def test_unsupported_layer_types_are_all_listed_at_once(tmp_path):
    text = (
        INPUT_STYLES["input_dim"]
        + """
    layer { name: "a1" type: "Frobnicate" bottom: "data" top: "a1" }
    layer { name: "b1" type: "Wibble" bottom: "a1" top: "b1" }
    layer { name: "a2" type: "Frobnicate" bottom: "b1" top: "a2" }
    layer { name: "py" type: "Python" bottom: "a2" top: "py" python_param { module: "mymod" layer: "MyLayer" } }
    """
    )
    with pytest.raises(UnsupportedLayersError) as info:
        caffe2onnx.load_net(write(tmp_path, text))
    message = str(info.value)
    assert "Frobnicate: a1, a2" in message
    assert "Wibble: b1" in message
    assert "Python (mymod.MyLayer): py" in message
    assert "--python-layer" in message


def test_python_layer_mapped_to_a_builtin_handler(tmp_path):
    text = (
        INPUT_STYLES["input_dim"]
        + """
    layer { name: "drop" type: "Python" bottom: "data" top: "drop"
      python_param { module: "spatial_dropout" layer: "SpatialDropoutLayer" param_str: "{'p': 0.1}" } }
    """
    )
    run = run_net(tmp_path, text, python_layers={"spatial_dropout.SpatialDropoutLayer": "Dropout"})
    assert run.net.layers[0].type == "Dropout"
    np.testing.assert_array_equal(run.onnx["drop"], run.inputs["data"])


def test_v0_padding_layer_is_merged_into_the_convolution(tmp_path):
    text = """
    name: "v0"
    input: "data"
    input_dim: 1 input_dim: 1 input_dim: 6 input_dim: 6
    layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
    layers { layer { name: "conv1" type: "conv" num_output: 3 kernelsize: 3 weight_filler { type: "constant" value: 1 } }
             bottom: "pad1" top: "conv1" }
    """
    net = caffe2onnx.load_net(write(tmp_path, text))
    assert [layer.name for layer in net.layers] == ["conv1"]
    assert net.layers[0].bottoms == ("data",)
    assert net.shapes["conv1"] == (1, 3, 8, 8), "pad 2 on a 6x6 input with a 3x3 kernel gives 8x8"
    assert any("pad1" in note for note in net.notes)


def test_prototxt_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path, 'name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom "data"\n}\n')
    with pytest.raises(ParseError, match=r"net\.prototxt:5:\d+"):
        caffe2onnx.load_net(path)


def test_template_placeholder_is_explained(tmp_path):
    path = write(
        tmp_path,
        INPUT_STYLES["input_dim"]
        + "\n"
        + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n convolution_param { num_output: ${NUM_LABELS} kernel_size: 1 } }\n',
    )
    with pytest.raises(
        ParseError,
        match=r"net\.prototxt:4:\d+: unresolved template placeholder \$\{NUM_LABELS\}[\s\S]*template",
    ):
        caffe2onnx.load_net(path)


def test_undefined_bottom_names_the_layer_and_the_blob(tmp_path):
    path = write(
        tmp_path,
        INPUT_STYLES["input_dim"] + "\n" + 'layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }',
    )
    with pytest.raises(NetDefinitionError, match="layer 'r' \\(ReLU\\) reads blob 'nope'"):
        caffe2onnx.load_net(path)


# ----------------------------------------------------------------------------- weights


def test_random_fillers_are_refused_naming_every_layer(tmp_path):
    text = (
        INPUT_STYLES["input_dim"]
        + """
    layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
      convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }
    layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 2 kernel_size: 1 } }
    """
    )
    with pytest.raises(RandomFillerError) as info:
        caffe2onnx.load_net(write(tmp_path, text))
    assert "c1 (Convolution): filler 'gaussian'" in str(info.value)
    assert "c2 (Convolution)" in str(info.value)
    assert "--random-weights" in str(info.value)


def _upsample_filt(k: int) -> np.ndarray:
    """FCN's surgery.upsample_filt, restated from the spec (3.3)."""
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.ogrid[:k, :k]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


@pytest.mark.parametrize("k", [2, 3, 4, 6, 7, 16, 64])
def test_bilinear_filler_matches_fcn_upsample_filt(tmp_path, k):
    text = (
        INPUT_STYLES["input_dim"]
        + f"""
    layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up"
      convolution_param {{ num_output: 3 group: 3 kernel_size: {k} stride: 2 bias_term: false
        weight_filler {{ type: "bilinear" }} }} param {{ lr_mult: 0 }} }}
    """
    )
    net = caffe2onnx.load_net(write(tmp_path, text))
    weight = net.layers[0].weights[0]
    assert weight.shape == (3, 1, k, k)
    for c in range(3):
        np.testing.assert_allclose(weight[c, 0], _upsample_filt(k), rtol=1e-6, atol=1e-7)
    assert net.layers[0].weights_from == "filler"


def test_legacy_4d_blob_shapes_are_reshaped_by_count(tmp_path):
    text = (
        'input: "data"\ninput_dim: 2 input_dim: 6\ninput_dim: 1 input_dim: 1\n'
        + """
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 4 } }
    """
    )
    prototxt = write(tmp_path, text)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    model = tmp_path / "legacy.caffemodel"
    write_caffemodel(
        model, [("ip", "InnerProduct", [w.reshape(1, 1, 4, 6), b.reshape(1, 1, 1, 4)])], blob_style="legacy"
    )
    run = run_net(tmp_path, prototxt, caffemodel=model)
    x = run.inputs["data"].reshape(2, 6)
    assert_close(run.onnx["ip"], x @ w.T + b, what="onnxruntime")


def test_blob_shape_mismatch_names_layer_and_both_shapes(tmp_path):
    prototxt = write(tmp_path, INPUT_STYLES["input_dim"] + BODY)
    model = tmp_path / "bad.caffemodel"
    write_caffemodel(
        model, [("conv", "Convolution", [np.zeros((2, 3, 5, 5), np.float32), np.zeros(2, np.float32)])]
    )
    with pytest.raises(WeightError, match=r"layer 'conv'.*\[2, 3, 5, 5\].*\[2, 3, 3, 3\]"):
        caffe2onnx.load_net(prototxt, model)


def test_blob_count_mismatch_is_explained(tmp_path):
    prototxt = write(tmp_path, INPUT_STYLES["input_dim"] + BODY)
    model = tmp_path / "bad.caffemodel"
    write_caffemodel(model, [("conv", "Convolution", [np.zeros((2, 3, 3, 3), np.float32)])])
    with pytest.raises(WeightError, match="has 1 blob.*needs 2.*bias_term"):
        caffe2onnx.load_net(prototxt, model)


def test_caffemodel_of_another_net_is_recognised(tmp_path):
    prototxt = write(tmp_path, INPUT_STYLES["input_dim"] + BODY)
    model = tmp_path / "other.caffemodel"
    write_caffemodel(model, [("fc6", "InnerProduct", [np.zeros((2, 3), np.float32)])])
    with pytest.raises(Caffe2OnnxError, match="none of the caffemodel's layer names"):
        caffe2onnx.load_net(prototxt, model)


def test_shared_parameters_become_one_initializer(tmp_path):
    text = """
    input: "a" input_dim: 1 input_dim: 1 input_dim: 5 input_dim: 5
    input: "b" input_dim: 1 input_dim: 1 input_dim: 5 input_dim: 5
    layer { name: "conv_a" type: "Convolution" bottom: "a" top: "fa" param { name: "w" } param { name: "bias" }
      convolution_param { num_output: 2 kernel_size: 3 } }
    layer { name: "conv_b" type: "Convolution" bottom: "b" top: "fb" param { name: "w" } param { name: "bias" }
      convolution_param { num_output: 2 kernel_size: 3 } }
    """
    run = run_net(tmp_path, text)
    assert sorted(init.name for init in run.model.graph.initializer) == ["bias", "w"]
    np.testing.assert_array_equal(run.weights("conv_a")[0], run.weights("conv_b")[0])


def test_outputs_option_cuts_the_net(tmp_path):
    text = (
        INPUT_STYLES["input_dim"]
        + BODY
        + """
    layer { name: "conv2" type: "Convolution" bottom: "conv" top: "conv2" convolution_param { num_output: 2 kernel_size: 1 } }
    """
    )
    net = caffe2onnx.load_net(write(tmp_path, text), random_weights=0, outputs=["conv"])
    assert [layer.name for layer in net.layers] == ["conv", "relu"]
    assert net.outputs == ("conv",)


def test_shared_parameter_named_like_a_blob_gets_its_own_initializer_name(tmp_path):
    text = """
    input: "a" input_dim: 1 input_dim: 1 input_dim: 5 input_dim: 5
    input: "b" input_dim: 1 input_dim: 1 input_dim: 5 input_dim: 5
    layer { name: "ca" type: "Convolution" bottom: "a" top: "fa" param { name: "w" } param { name: "b" }
      convolution_param { num_output: 2 kernel_size: 3 } }
    layer { name: "cb" type: "Convolution" bottom: "b" top: "fb" param { name: "w" } param { name: "b" }
      convolution_param { num_output: 2 kernel_size: 3 } }
    """
    run = run_net(tmp_path, text)
    initializers = sorted(init.name for init in run.model.graph.initializer)
    assert initializers == ["param:b", "w"], "the bias parameter 'b' must not shadow the input blob 'b'"
    np.testing.assert_allclose(run.onnx["fb"], run.torch["fb"], rtol=1e-5, atol=1e-5)


DATA_LAYERS = {
    "data_crop_size": (
        'layer { name: "d" type: "Data" top: "data" top: "label" transform_param { crop_size: 9 mean_value: 104 '
        'mean_value: 117 mean_value: 123 } data_param { source: "x" batch_size: 64 } }',
        (1, 3, 9, 9),
    ),
    "memory_data": (
        'layer { name: "d" type: "MemoryData" top: "data" top: "label" '
        "memory_data_param { batch_size: 2 channels: 3 height: 8 width: 10 } }",
        (2, 3, 8, 10),
    ),
    "dense_image_data_grey": (
        'layer { name: "d" type: "DenseImageData" top: "data" top: "label" '
        'dense_image_data_param { source: "x" batch_size: 4 new_height: 12 new_width: 16 is_color: false } }',
        (1, 1, 12, 16),
    ),
    "image_data_crop_h_w": (
        'layer { name: "d" type: "ImageData" top: "data" top: "label" transform_param { crop_h: 7 crop_w: 11 } '
        'image_data_param { source: "x" } }',
        (1, 3, 7, 11),
    ),
}


@pytest.mark.parametrize("case", DATA_LAYERS, ids=list(DATA_LAYERS))
def test_data_layer_replaced_by_an_input_of_the_shape_it_declares(tmp_path, case):
    data_layer, shape = DATA_LAYERS[case]
    text = (
        data_layer
        + """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }
    """
    )
    net = caffe2onnx.load_net(write(tmp_path, text), random_weights=0)
    assert net.inputs == (("data", shape),)
    assert any("replaced data layer 'd'" in note and "dropped its top(s) label" in note for note in net.notes)


def test_second_image_top_of_a_data_layer_becomes_an_input_when_its_shape_is_given(tmp_path):
    text = """
    layer { name: "d" type: "Python" top: "color" top: "hha" top: "label" python_param { module: "nyud" layer: "L" } }
    layer { name: "sum" type: "Eltwise" bottom: "color" bottom: "hha" top: "sum" }
    """
    path = write(tmp_path, text)
    with pytest.raises(Caffe2OnnxError, match=r"--input-shape hha=N,C,H,W"):
        caffe2onnx.load_net(path, input_shapes={"color": (1, 3, 4, 4)})
    net = caffe2onnx.load_net(path, input_shapes={"color": (1, 3, 4, 4), "hha": (1, 3, 4, 4)})
    assert net.input_names == ("color", "hha")


def test_make_weights_keeps_the_fillers_of_frozen_layers(tmp_path):
    """A layer with lr_mult 0 keeps its filler values in a trained snapshot; make-weights too."""
    from caffe2onnx.make_weights import make_weights

    text = (
        INPUT_STYLES["input_dim"]
        + """
    layer { name: "sum" type: "Convolution" bottom: "data" top: "sum" param { lr_mult: 0 }
      convolution_param { num_output: 1 kernel_size: 1 bias_term: false weight_filler { type: "constant" value: 1 } } }
    layer { name: "learned" type: "Convolution" bottom: "data" top: "learned"
      convolution_param { num_output: 1 kernel_size: 1 bias_term: false weight_filler { type: "constant" value: 1 } } }
    """
    )
    path = write(tmp_path, text)
    net = make_weights(path, tmp_path / "w.caffemodel", seed=0)
    loaded = caffe2onnx.load_net(path, tmp_path / "w.caffemodel")
    np.testing.assert_array_equal(loaded.layer("sum").weights[0], np.ones((1, 3, 1, 1), np.float32))
    assert not np.allclose(loaded.layer("learned").weights[0], 1.0), "learned layers get random weights"
    assert net.layer("sum").frozen and not net.layer("learned").frozen


def test_stages_select_layers_by_their_include_rules(tmp_path):
    text = """
    layer { name: "a" type: "Input" top: "data" include { phase: TEST stage: "small" }
      input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
    layer { name: "b" type: "Input" top: "data" include { phase: TEST stage: "large" }
      input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
    layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" }
    """
    path = write(tmp_path, text)
    assert caffe2onnx.load_net(path, stages=["small"]).inputs == (("data", (1, 1, 4, 4)),)
    assert caffe2onnx.load_net(path, stages=["large"]).inputs == (("data", (1, 1, 8, 8)),)
    with pytest.raises(NetDefinitionError, match="--stage"):
        caffe2onnx.load_net(path)
