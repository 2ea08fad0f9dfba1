"""Importing caffe2onnx and converting never import torch (only validation needs it).

Each check runs in a fresh interpreter, where ``sys.modules`` tells what was imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from caffe2onnx.make_weights import make_weights
from tests.helpers import net_text, write

LAYERS = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""
HEAVY = ("torch", "onnxruntime", "cv2")


def modules_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; return which heavy modules it imported."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps({{name: name in sys.modules for name in {HEAVY!r}}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def files(tmp_path):
    prototxt = write(tmp_path, net_text(LAYERS, {"data": (1, 3, 8, 8)}))
    make_weights(prototxt, tmp_path / "net.caffemodel")
    return prototxt, tmp_path / "net.caffemodel", tmp_path / "net.onnx"


def test_import_caffe2onnx_imports_no_torch():
    imported = modules_after("import caffe2onnx")
    assert imported == {"torch": False, "onnxruntime": False, "cv2": False}


def test_library_conversion_imports_no_torch(files):
    prototxt, caffemodel, output = files
    imported = modules_after(
        f"""
        from caffe2onnx.parser import load_net
        from caffe2onnx.onnx_export import save_model, to_onnx
        net = load_net({str(prototxt)!r}, {str(caffemodel)!r})
        save_model(net, {str(output)!r}, optimize=True, progress=True)
        to_onnx(net, optimize=True)
        """
    )
    assert output.exists()
    assert imported["torch"] is False


def test_cli_convert_imports_no_torch(files):
    prototxt, caffemodel, output = files
    imported = modules_after(
        f"""
        from caffe2onnx.cli import main
        assert main(["convert", {str(prototxt)!r}, {str(caffemodel)!r}, "-o", {str(output)!r}, "-q"]) == 0
        """
    )
    assert output.exists()
    assert imported["torch"] is False


def test_validation_is_what_imports_torch(files):
    prototxt, caffemodel, _ = files
    imported = modules_after(
        f"""
        import caffe2onnx
        caffe2onnx.validate({str(prototxt)!r}, {str(caffemodel)!r})
        """
    )
    assert imported["torch"] is True  # proves the probe can see torch being imported
