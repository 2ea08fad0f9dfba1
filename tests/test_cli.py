"""The command line contract: exit codes, messages, files written or not."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from caffe2onnx.cli import main
from tests.helpers import SAMPLES, write

SAMPLE = SAMPLES / "lenet_sample.prototxt"

NET = """
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


def test_convert_with_validate_writes_a_checked_model_and_passes(tmp_path, capsys):
    out = tmp_path / "sample.onnx"
    code = main(["convert", str(SAMPLE), "--random-weights", "0", "-o", str(out), "--validate"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "PASS" in captured.out and "prob" in captured.out
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_make_weights_then_convert_and_validate_with_the_caffemodel(tmp_path, capsys):
    weights = tmp_path / "w.caffemodel"
    assert main(["make-weights", str(SAMPLE), "-o", str(weights), "--seed", "3"]) == 0
    assert weights.stat().st_size > 4 * 11000, "about 11.7k float32 parameters"
    assert main(["validate", str(SAMPLE), str(weights), "-q"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_unsupported_layers_exit_2_list_all_and_leave_no_file(tmp_path, capsys):
    prototxt = write(
        tmp_path,
        NET
        + 'layer { name: "x" type: "Foo" bottom: "conv" top: "x" }\nlayer { name: "y" type: "Bar" bottom: "x" top: "y" }\n',
    )
    out = tmp_path / "out.onnx"
    code = main(["convert", str(prototxt), "--random-weights", "0", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Foo: x" in err and "Bar: y" in err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_syntax_error_reports_file_line_column_without_traceback(tmp_path, capsys):
    prototxt = write(tmp_path, NET.replace("kernel_size: 3", "kernel_size 3"))
    code = main(["convert", str(prototxt), "-o", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{prototxt}:4:115: Expected" in err
    assert "Traceback" not in err


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    prototxt = write(tmp_path, NET.replace("kernel_size: 3", "kernel_size 3"))
    main(["convert", str(prototxt), "-o", str(tmp_path / "o.onnx"), "--debug"])
    assert "Traceback" in capsys.readouterr().err


def test_missing_output_directory_is_refused_before_any_work(tmp_path, capsys):
    code = main(
        ["convert", str(SAMPLE), "--random-weights", "0", "-o", str(tmp_path / "no" / "such" / "m.onnx")]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_validate_fails_with_exit_1_naming_the_first_diverging_layer(tmp_path, capsys):
    weights = tmp_path / "w.caffemodel"
    main(["make-weights", str(SAMPLE), "-o", str(weights)])
    good = tmp_path / "good.onnx"
    assert main(["convert", str(SAMPLE), str(weights), "-o", str(good)]) == 0
    model = onnx.load(str(good))
    for init in model.graph.initializer:
        if init.name.startswith("ip1/"):
            array = onnx.numpy_helper.to_array(init).copy()
            array.flat[0] += 1.0
            init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    capsys.readouterr()
    code = main(["validate", str(SAMPLE), str(weights), "--onnx", str(bad)])
    out = capsys.readouterr().out
    assert code == 1
    assert "first divergence: layer 'ip1'" in out


def test_inspect_lists_layers_shapes_and_parameters(tmp_path, capsys):
    assert main(["inspect", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "Convolution" in out and "1x8x24x24" in out
    assert "208" in out, "conv1 has 8*1*5*5 + 8 = 208 parameters"


def test_inspect_reports_unsupported_layers_with_exit_2(tmp_path, capsys):
    prototxt = write(tmp_path, NET + 'layer { name: "x" type: "Foo" bottom: "conv" top: "x" }\n')
    assert main(["inspect", str(prototxt)]) == 2
    assert "Foo: x" in capsys.readouterr().out


@pytest.mark.parametrize(
    "entry", [["-m", "caffe2onnx"], ["-c", "from caffe2onnx.cli import main; raise SystemExit(main())"]]
)
def test_module_entry_point_runs(tmp_path, entry):
    out = tmp_path / "m.onnx"
    result = subprocess.run(
        [sys.executable, *entry, "convert", str(SAMPLE), "--random-weights", "1", "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert out.exists()


def test_input_shape_flag_parses_and_applies(tmp_path, capsys):
    prototxt = write(tmp_path, NET.replace("input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8", ""))
    out = tmp_path / "o.onnx"
    assert (
        main(
            [
                "convert",
                str(prototxt),
                "--random-weights",
                "0",
                "--input-shape",
                "data=2,3,10,10",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    shape = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert shape == [2, 3, 10, 10]
    assert np.prod(shape) == 600


def test_convert_optimizes_by_default_and_no_optimize_keeps_every_layer(tmp_path, capsys):
    net = SAMPLES / "segnet_style.prototxt"
    optimized, plain = tmp_path / "opt.onnx", tmp_path / "plain.onnx"
    assert main(["convert", str(net), "--random-weights", "0", "-o", str(optimized), "--validate", "-q"]) == 0
    assert main(["convert", str(net), "--random-weights", "0", "-o", str(plain), "--no-optimize", "-q"]) == 0
    ops_opt = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    ops_plain = [n.op_type for n in onnx.load(str(plain)).graph.node]
    # SegNet's "BN" (INFERENCE mode) is a Mul + Add after each convolution: folded away.
    assert ops_plain.count("Mul") >= 2 and ops_plain.count("Add") >= 2
    assert ops_opt.count("Mul") < ops_plain.count("Mul")
    assert len(ops_opt) < len(ops_plain)


def test_external_data_flag_writes_weights_beside_the_model_and_validates(tmp_path, capsys):
    out = tmp_path / "ext.onnx"
    code = main(
        [
            "convert",
            str(SAMPLE),
            "--random-weights",
            "0",
            "-o",
            str(out),
            "--external-data",
            "--validate",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = [p for p in tmp_path.iterdir() if p.name.startswith("ext.onnx") and p != out]
    assert len(data) == 1 and data[0].stat().st_size > 4 * 11000
    assert out.stat().st_size < data[0].stat().st_size
    assert main(["validate", str(SAMPLE), "--random-weights", "0", "--onnx", str(out), "-q"]) == 0
