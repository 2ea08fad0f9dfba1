"""Converting the same inputs twice gives byte-identical files.

Each pair of runs writes to two directories under the same file name (the name of the
external data file is part of the model). Set iteration order must not leak into the
output either: one test converts in two processes with different ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caffe2onnx.cli import main
from caffe2onnx.make_weights import make_weights
from caffe2onnx.onnx_export import save_model
from caffe2onnx.parser import load_net
from tests.helpers import SAMPLES

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_NETS = sorted(path.stem for path in SAMPLES.glob("*.prototxt"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _twice(tmp_path: Path, run) -> tuple[Path, Path]:
    outputs = []
    for run_dir in ("first", "second"):
        directory = tmp_path / run_dir
        directory.mkdir()
        outputs.append(run(directory))
    return outputs[0], outputs[1]


@pytest.mark.parametrize("sample", SAMPLE_NETS)
def test_cli_convert_twice_is_byte_identical(sample, tmp_path, capsys):
    prototxt = SAMPLES / f"{sample}.prototxt"

    def run(directory: Path) -> Path:
        out = directory / "model.onnx"
        assert main(["convert", str(prototxt), "--random-weights", "7", "-o", str(out), "-q"]) == 0
        return out

    first, second = _twice(tmp_path, run)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("opset", [13, 21])
def test_make_weights_and_convert_with_the_caffemodel_twice_are_byte_identical(opset, tmp_path):
    prototxt = SAMPLES / "segnet_style.prototxt"

    def run(directory: Path) -> Path:
        weights = directory / "w.caffemodel"
        make_weights(prototxt, weights, seed=11)
        out = directory / "model.onnx"
        assert (
            main(["convert", str(prototxt), str(weights), "--opset", str(opset), "-o", str(out), "-q"]) == 0
        )
        return directory

    first, second = _twice(tmp_path, run)
    for name in ("w.caffemodel", "model.onnx"):
        assert _digest(first / name) == _digest(second / name), name


def test_external_data_twice_is_byte_identical(tmp_path):
    prototxt = SAMPLES / "unet_style.prototxt"

    def run(directory: Path) -> Path:
        net = load_net(prototxt, random_weights=3)
        saved = save_model(net, directory / "model.onnx", external_data=True)
        assert saved.data_path is not None
        return directory

    first, second = _twice(tmp_path, run)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir()) and len(names) == 2
    for name in names:
        assert _digest(first / name) == _digest(second / name), name


@pytest.mark.parametrize("sample", ["deeplab_pspnet_style", "decoder_transposed"])
def test_conversion_does_not_depend_on_the_hash_seed(sample, tmp_path):
    prototxt = SAMPLES / f"{sample}.prototxt"
    digests = []
    for seed in ("1", "2"):
        out = tmp_path / seed / "model.onnx"
        out.parent.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "caffe2onnx",
                "convert",
                str(prototxt),
                "--random-weights",
                "0",
                "-o",
                str(out),
                "-q",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        digests.append(_digest(out))
    assert digests[0] == digests[1]
