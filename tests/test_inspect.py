"""``caffe2onnx inspect`` reports everything wrong with a net in one run."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2onnx.caffemodel import write_caffemodel
from caffe2onnx.cli import main
from caffe2onnx.errors import (
    Caffe2OnnxError,
    LayerError,
    NetDefinitionError,
    ParseError,
    RandomFillerError,
    ShapeError,
    UnsupportedLayersError,
    WeightError,
)
from caffe2onnx.parser import analyze_net, load_net
from tests.helpers import SAMPLES, write

HEAD = 'name: "many"\ninput: "data"\ninput_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
MANY_PROBLEMS = HEAD + (
    # line 4: fine
    'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }\n'
    # lines 5-7: two unsupported types; the layers after them are skipped
    'layer { name: "foo" type: "Foo" bottom: "conv" top: "foo" }\n'
    'layer { name: "after_foo" type: "ReLU" bottom: "foo" top: "foo" }\n'
    'layer { name: "bar" type: "Bar" bottom: "conv" top: "bar" }\n'
    # line 8: a shape error, line 9 depends on it
    'layer { name: "big" type: "Convolution" bottom: "conv" top: "big" convolution_param { num_output: 4 kernel_size: 9 } }\n'
    'layer { name: "after_big" type: "Pooling" bottom: "big" top: "after_big" pooling_param { kernel_size: 2 } }\n'
    # line 10: a parameter error
    'layer { name: "grouped" type: "Convolution" bottom: "conv" top: "grouped" convolution_param { num_output: 4 kernel_size: 1 group: 3 } }\n'
    # line 11: another shape error
    'layer { name: "crop" type: "Crop" bottom: "conv" bottom: "data" top: "crop" crop_param { offset: 1 } }\n'
    # line 12: undefined bottom
    'layer { name: "lost" type: "ReLU" bottom: "nowhere" top: "lost" }\n'
    # line 13: fine, after all of that
    'layer { name: "ok" type: "Sigmoid" bottom: "conv" top: "ok" }\n'
)


def test_analyze_net_collects_every_problem_in_file_order_of_the_steps(tmp_path):
    analysis = analyze_net(write(tmp_path, MANY_PROBLEMS))
    kinds = [type(p) for p in analysis.problems]
    assert kinds == [UnsupportedLayersError, LayerError, NetDefinitionError, ShapeError, ShapeError]
    unsupported, grouped, lost, big, crop = (str(p) for p in analysis.problems)
    assert "Bar: bar" in unsupported and "Foo: foo" in unsupported
    assert ":10: layer 'grouped'" in grouped and "divisible by group 3" in grouped
    assert ":12: layer 'lost' (ReLU) reads blob 'nowhere'" in lost
    assert ":8: layer 'big'" in big and "too small" in big
    assert ":11: layer 'crop'" in crop and "crop out of bounds" in crop
    assert analysis.status == {
        "conv": "",
        "foo": "problem",
        "after_foo": "skipped",
        "bar": "problem",
        "big": "problem",
        "after_big": "skipped",
        "grouped": "problem",
        "crop": "problem",
        "lost": "problem",
        "ok": "",
    }
    assert analysis.shapes["ok"] == (1, 4, 6, 6)
    assert "foo" not in analysis.shapes and "after_big" not in analysis.shapes
    notes = "\n".join(analysis.notes)
    assert "because of 'foo': after_foo" in notes and "because of 'big': after_big" in notes
    assert analysis.net is None and not analysis.ok


def test_cli_inspect_prints_all_problems_and_exits_2(tmp_path, capsys):
    prototxt = write(tmp_path, MANY_PROBLEMS)
    assert main(["inspect", str(prototxt)]) == 2
    out = capsys.readouterr().out
    assert "problems (5):" in out
    for fragment in ("Foo: foo", "'grouped'", "'nowhere'", "'big'", "'crop'"):
        assert fragment in out
    table = {line.split()[0]: line for line in out.splitlines() if line.split()[:1]}
    assert table["after_foo"].rstrip().endswith("skipped") and "?" in table["after_foo"]
    assert table["big"].rstrip().endswith("PROBLEM")
    assert "1x4x6x6" in table["ok"]


def _conv_net(tmp_path):
    return write(
        tmp_path,
        HEAD
        + 'layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 4 kernel_size: 3 } }\n'
        + 'layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 4 kernel_size: 1 } }\n'
        + 'layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3" convolution_param { num_output: 2 kernel_size: 1 } }\n'
        + 'layer { name: "up" type: "Deconvolution" bottom: "c3" top: "up" convolution_param { num_output: 2 group: 2\n'
        + '  kernel_size: 4 stride: 2 bias_term: false weight_filler { type: "bilinear" } } }\n'
        + 'layer { name: "c4" type: "Convolution" bottom: "up" top: "c4" convolution_param { num_output: 2 kernel_size: 1 } }\n',
    )


def test_every_blob_problem_is_listed_with_a_caffemodel(tmp_path, capsys):
    prototxt = _conv_net(tmp_path)
    model = tmp_path / "w.caffemodel"
    zeros = np.zeros
    write_caffemodel(
        model,
        [
            ("c1", "Convolution", [zeros((4, 3, 3, 3), np.float32), zeros(4, np.float32)]),  # fine
            ("c2", "Convolution", [zeros((4, 4, 3, 3), np.float32), zeros(4, np.float32)]),  # wrong shape
            ("c3", "Convolution", [zeros((2, 4, 1, 1), np.float32)]),  # bias missing
            ("unused_fc", "InnerProduct", [zeros((3, 2), np.float32)]),  # not in the net
        ],  # up: bilinear filler; c4: missing
    )
    analysis = analyze_net(prototxt, model)
    assert [type(p) for p in analysis.problems] == [WeightError, WeightError, RandomFillerError]
    assert "layer 'c2'" in str(analysis.problems[0]) and "[4, 4, 3, 3]" in str(analysis.problems[0])
    assert "layer 'c3'" in str(analysis.problems[1]) and "has 1 blob(s)" in str(analysis.problems[1])
    assert "c4 (Convolution)" in str(analysis.problems[2])
    assert analysis.weights == {
        "c1": "ok",
        "c2": "MISMATCH",
        "c3": "MISMATCH",
        "up": "filler",
        "c4": "missing",
    }
    assert any("unused_fc" in note for note in analysis.notes)

    assert main(["inspect", str(prototxt), str(model)]) == 2
    out = capsys.readouterr().out
    assert "problems (3):" in out and "MISMATCH" in out and "missing" in out


def test_caffemodel_of_another_net_is_one_problem_not_one_per_layer(tmp_path):
    prototxt = _conv_net(tmp_path)
    model = tmp_path / "w.caffemodel"
    write_caffemodel(model, [("fc6", "InnerProduct", [np.zeros((3, 2), np.float32)])])
    analysis = analyze_net(prototxt, model)
    assert len(analysis.problems) == 1
    assert "none of the caffemodel's layer names" in str(analysis.problems[0])


def test_a_corrupt_caffemodel_and_a_broken_net_are_both_reported(tmp_path):
    prototxt = write(tmp_path, MANY_PROBLEMS)
    model = tmp_path / "w.caffemodel"
    model.write_bytes(b"\x0a\x05ab")
    analysis = analyze_net(prototxt, model)
    assert isinstance(analysis.problems[0], ParseError) and "w.caffemodel" in str(analysis.problems[0])
    assert len(analysis.problems) == 6


def test_unparseable_prototxt_is_reported_with_its_location(tmp_path, capsys):
    prototxt = write(tmp_path, HEAD + "layer { name: 'x' type: 'ReLU' bottom 'data' }\n")
    assert main(["inspect", str(prototxt)]) == 2
    assert f"{prototxt}:4:" in capsys.readouterr().out


def test_missing_input_shape_marks_the_net_unknown_and_goes_on(tmp_path):
    prototxt = write(
        tmp_path,
        'input: "data"\n'
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
        'layer { name: "bad" type: "Pooling" bottom: "r" top: "p" pooling_param { stride: 1 } }\n',
    )
    analysis = analyze_net(prototxt)
    assert len(analysis.problems) == 2
    assert "--input-shape data=" in str(analysis.problems[0])
    assert "no kernel size" in str(analysis.problems[1])
    assert analysis.status["r"] == "skipped"


@pytest.mark.parametrize("sample", ["lenet_sample", "segnet_style", "fcn_style"])
def test_a_good_net_has_no_problems_and_the_same_structure_as_load_net(sample, capsys):
    prototxt = SAMPLES / f"{sample}.prototxt"
    analysis = analyze_net(prototxt)
    assert analysis.ok, [str(p) for p in analysis.problems]
    net = load_net(prototxt, require_weights=False)
    assert analysis.net.layers == net.layers and dict(analysis.net.shapes) == dict(net.shapes)
    assert analysis.net.outputs == net.outputs
    assert main(["inspect", str(prototxt)]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_inspect_never_raises_for_a_bad_net(tmp_path):
    for text in ("", "layer {", "layers { layer { name: 'x' type: 'conv' } bottom: 'a' top: 'b' }", HEAD):
        analysis = analyze_net(write(tmp_path, text))
        assert all(isinstance(p, Caffe2OnnxError) for p in analysis.problems)
        assert not analysis.ok
