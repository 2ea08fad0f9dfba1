"""Streaming ONNX writer (save_model): the file holds exactly the in-memory model, weights
copied from the caffemodel or written from arrays; external data above a size limit
(tested with a tiny limit), with safely derived file names; atomic output; progress."""

from __future__ import annotations

import io
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from caffe2onnx import onnx_writer
from caffe2onnx.caffemodel import file_region, read_caffemodel, release
from caffe2onnx.errors import Caffe2OnnxError, OutputError
from caffe2onnx.make_weights import make_weights
from caffe2onnx.onnx_export import save_model, to_onnx
from caffe2onnx.onnx_writer import ALIGNMENT, external_data_name
from caffe2onnx.parser import load_net
from caffe2onnx.progress import _TextBar, progress_bar
from tests.helpers import assert_close, net_text, random_inputs, write

LAYERS = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
"""


@pytest.fixture
def net(tmp_path):
    prototxt = write(tmp_path, net_text(LAYERS, {"data": (1, 3, 6, 5)}))
    make_weights(prototxt, tmp_path / "net.caffemodel", seed=3)
    return load_net(prototxt, tmp_path / "net.caffemodel")


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def run(path_or_model, net) -> np.ndarray:
    source = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(["fc"], random_inputs(net, 1))[0]


def same_model(path: str, expected: onnx.ModelProto) -> None:
    onnx.checker.check_model(path, full_check=True)
    loaded = onnx.load(path)
    assert loaded.graph.node == expected.graph.node
    assert loaded.graph.input == expected.graph.input and loaded.graph.output == expected.graph.output
    got, want = initializers(loaded), initializers(expected)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("optimize", [False, True], ids=["plain", "optimized"])
def test_streamed_file_is_the_in_memory_model(net, tmp_path, optimize):
    out = tmp_path / "out.onnx"
    saved = save_model(net, out, optimize=optimize)
    assert saved.data_path is None and saved.size == out.stat().st_size
    same_model(str(out), to_onnx(net, optimize=optimize))
    assert_close(run(str(out), net), run(to_onnx(net), net), what="fc")


def test_caffemodel_weights_are_views_copied_from_the_file(net, tmp_path):
    weight = net.layer("conv").weights[0]
    assert file_region(weight) is not None
    assert file_region(np.array(weight)) is None
    saved = save_model(net, tmp_path / "out.onnx")
    model = read_caffemodel(tmp_path / "net.caffemodel")
    np.testing.assert_array_equal(initializers(onnx.load(saved.path))["conv/weight"], model.blobs["conv"][0])


def test_released_caffemodel_pages_read_back_the_same_values(net):
    weight = net.layer("fc").weights[0]
    before = np.array(weight)
    release(weight)
    release(np.array(weight))  # not a view of the file: nothing to do
    np.testing.assert_array_equal(weight, before)


def test_without_kernel_copies_the_bytes_are_the_same(net, tmp_path, monkeypatch):
    save_model(net, tmp_path / "kernel.onnx")

    def unsupported(*args):
        raise OSError(38, "not supported")

    monkeypatch.setattr(os, "copy_file_range", unsupported, raising=False)
    monkeypatch.setattr(os, "sendfile", unsupported, raising=False)
    save_model(net, tmp_path / "plain.onnx")
    assert (tmp_path / "kernel.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()


def test_external_data_is_chosen_above_the_size_limit(net, tmp_path):
    out = tmp_path / "big.onnx"
    saved = save_model(net, out, size_limit=1000)
    assert saved.data_path == str(tmp_path / "big.onnx.data")
    assert out.stat().st_size < 4000 < os.path.getsize(saved.data_path)
    same_model(str(out), to_onnx(net))
    assert_close(run(str(out), net), run(to_onnx(net), net), what="fc")
    skeleton = onnx.load(str(out), load_external_data=False)
    external = [t for t in skeleton.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {t.name for t in external} == {"conv/weight", "fc/weight"}
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        assert info["location"] == "big.onnx.data"
        assert int(info["offset"]) % ALIGNMENT == 0


def test_external_data_can_be_forced_or_refused(net, tmp_path):
    saved = save_model(net, tmp_path / "forced.onnx", external_data=True)
    assert saved.data_path and os.path.exists(saved.data_path)
    same_model(saved.path, to_onnx(net))
    saved = save_model(net, tmp_path / "inline.onnx", external_data=False, size_limit=1000)
    assert saved.data_path is None and not os.path.exists(tmp_path / "inline.onnx.data")


def test_a_model_over_the_protobuf_limit_needs_external_data(net, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_writer, "PROTOBUF_LIMIT", 1000)
    with pytest.raises(OutputError, match="over 2 GiB"):
        save_model(net, tmp_path / "out.onnx", external_data=False)
    assert sorted(os.listdir(tmp_path)) == ["net.caffemodel", "net.prototxt"]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("model.onnx", "model.onnx.data"),
        ("dir/sub/model.onnx", "model.onnx.data"),
        ("my model (v2).onnx", "my_model__v2_.onnx.data"),
        ("../../etc/passwd", "passwd.data"),
        ("a\\b:c.onnx", "a_b_c.onnx.data"),
        ("..onnx", "onnx.data"),
    ],
)
def test_external_data_names_are_plain_file_names(output, expected):
    name = external_data_name(output)
    assert name == expected
    assert os.sep not in name and "/" not in name and not name.startswith(".")


def test_an_old_data_file_is_replaced_atomically(net, tmp_path):
    (tmp_path / "m.onnx.data").write_bytes(b"stale" * 10000)
    saved = save_model(net, tmp_path / "m.onnx", external_data=True)
    same_model(saved.path, to_onnx(net))
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data", "net.caffemodel", "net.prototxt"]


def test_the_data_file_never_clobbers_an_input(tmp_path):
    prototxt = write(tmp_path, net_text(LAYERS, {"data": (1, 3, 6, 5)}))
    weights = tmp_path / "m.onnx.data"  # the caffemodel has the name the data file would get
    make_weights(prototxt, weights)
    before = weights.read_bytes()
    net = load_net(prototxt, weights)
    with pytest.raises(OutputError, match="input of the conversion"):
        save_model(net, tmp_path / "m.onnx", external_data=True)
    assert weights.read_bytes() == before and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_the_data_file_never_replaces_a_directory_or_link(net, tmp_path, kind):
    target = tmp_path / "m.onnx.data"
    if kind == "directory":
        target.mkdir()
    else:
        (tmp_path / "elsewhere").write_bytes(b"keep")
        target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="not a regular file"):
        save_model(net, tmp_path / "m.onnx", external_data=True)
    assert not (tmp_path / "m.onnx").exists()


def test_a_failure_while_writing_leaves_no_file(net, tmp_path, monkeypatch):
    def fail(self, array):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_writer._Sink, "array", fail)
    for external in (False, True):
        with pytest.raises(KeyboardInterrupt):
            save_model(net, tmp_path / "m.onnx", external_data=external)
        assert sorted(os.listdir(tmp_path)) == ["net.caffemodel", "net.prototxt"]


def test_the_checker_runs_before_anything_is_written(net, tmp_path, monkeypatch):
    from caffe2onnx import onnx_export

    def broken(model):
        raise Caffe2OnnxError("checker says no")

    monkeypatch.setattr(onnx_export, "check_model", broken)
    with pytest.raises(Caffe2OnnxError, match="checker says no"):
        save_model(net, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_when_enabled():
    terminal, pipe = FakeTerminal(), io.StringIO()
    with progress_bar(1000, "writing", stream=terminal, min_total=0) as bar:
        bar.update(400)
        bar.update(600)
    assert "writing" in terminal.getvalue()
    with progress_bar(1000, "writing", stream=pipe, min_total=0) as bar:
        bar.update(1000)
    quiet = FakeTerminal()
    with progress_bar(1000, "writing", stream=quiet, min_total=0, enabled=False) as bar:
        bar.update(1000)
    small = FakeTerminal()
    with progress_bar(1000, "writing", stream=small) as bar:  # below the size of a large model
        bar.update(1000)
    assert pipe.getvalue() == quiet.getvalue() == small.getvalue() == ""


def test_built_in_progress_bar_draws_percentages():
    stream = FakeTerminal()
    bar = _TextBar(4 << 20, "writing weights", stream)
    bar.update(1 << 20)
    bar.update(3 << 20)
    bar.close()
    text = stream.getvalue()
    assert " 25% |" in text and "100% |" in text and "4/4 MB" in text


def test_save_model_reports_progress_while_writing_weights(net, tmp_path, monkeypatch):
    from caffe2onnx import progress

    updates = []

    class Recorder(progress.Progress):
        def update(self, count):
            updates.append(count)

    monkeypatch.setattr(progress, "progress_bar", lambda total, *a, **k: Recorder())
    save_model(net, tmp_path / "m.onnx", progress=True)
    weights = sum(a.nbytes for layer in net.layers for a in layer.weights if a.nbytes >= 1024)
    assert sum(updates) == weights
