"""Custom layers through plugins: the example plugin end to end, loading by module name,
path and entry point, Python layers mapped to plugin handlers, and every way a plugin
can be wrong (each a PluginError naming the plugin)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

import caffe2onnx
from caffe2onnx.cli import build_parser, main
from caffe2onnx.errors import PluginError, UnsupportedLayersError
from caffe2onnx.layers.registry import builtin_registry, default_registry, reset_default_registry
from caffe2onnx.onnx_export import to_onnx
from caffe2onnx.plugins import ENTRY_POINT_GROUP, load_entry_points, load_plugin, load_plugins
from caffe2onnx.validation import run_onnx
from tests.helpers import assert_close, torch_blobs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plugins"
PLUGIN = EXAMPLES / "my_layers.py"
NET = EXAMPLES / "my_layers.prototxt"


@pytest.fixture
def registry():
    return builtin_registry()


@pytest.fixture
def clean_default_registry():
    reset_default_registry()
    yield
    reset_default_registry()


def write_plugin(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(
        "from caffe2onnx.layers.base import Handler\n"
        "class Id(Handler):\n"
        "    types = ('Ident',)\n"
        "    def to_onnx(self, layer, g):\n"
        "        g.op('Identity', layer.bottoms, layer.tops[0])\n"
        "    def to_torch(self, layer, inputs, weights):\n"
        "        return [inputs[0]]\n" + textwrap.dedent(body)
    )
    return path


def small_net(tmp_path: Path, layer_type: str, extra: str = "") -> Path:
    path = tmp_path / "net.prototxt"
    path.write_text(
        'input: "data"\ninput_dim: 1 input_dim: 2 input_dim: 3 input_dim: 3\n'
        f'layer {{ name: "x" type: "{layer_type}" bottom: "data" top: "x" {extra} }}\n'
    )
    return path


# ----------------------------------------------------------------------------- the example plugin


def _reference(x: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """The example net from its definition, in numpy (conv1 comes from the runs)."""
    x = x.astype(np.float64)
    mish = x * np.tanh(np.log1p(np.exp(x)))
    scaled = mish * scale.reshape(1, -1, 1, 1)
    shifted = scaled * 2.0 + 0.5
    n, c, h, w = shifted.shape
    pooled = shifted.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    return {"conv1": mish, "cscale1": scaled, "shift1": shifted, "pool1": pooled}


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_example_plugin_converts_and_matches_numpy_and_torch(tmp_path, registry, opset):
    assert load_plugin(str(PLUGIN), registry) == ["ChannelScale", "Mish", "ScaleShift"]
    net = caffe2onnx.load_net(NET, random_weights=3, registry=registry)
    assert [layer.type for layer in net.layers] == [
        "Convolution",
        "Mish",
        "ChannelScale",
        "ScaleShift",
        "Pooling",
    ]
    model = to_onnx(net, opset, registry)
    ops = {node.op_type for node in model.graph.node}
    assert ("Mish" in ops) == (opset >= 18), "ONNX Mish exists from opset 18; below it the formula"
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    tensors = [t for layer in net.layers for t in layer.tops]
    onnx_out = run_onnx(model, {"data": x}, tensors)
    import torch

    from caffe2onnx.torch_ref import build_module

    with torch.no_grad():
        torch_out = {
            k: v.numpy() for k, v in build_module(net, registry).run({"data": torch.from_numpy(x)}).items()
        }
    scale = net.layer("cscale1").weights[0]
    expected = _reference(onnx_out["conv1@conv1"], scale)
    for blob, value in expected.items():
        assert_close(onnx_out[blob], value, what=f"onnxruntime {blob}")
        assert_close(torch_out[blob], value, what=f"torch {blob}")


def test_example_plugin_takes_weights_from_a_caffemodel(tmp_path, registry):
    load_plugins([str(PLUGIN)], registry, entry_points=False)
    structure = caffe2onnx.load_net(NET, require_weights=False, registry=registry)
    from caffe2onnx.caffemodel import write_caffemodel
    from caffe2onnx.make_weights import net_random_blobs

    weights = tmp_path / "w.caffemodel"
    write_caffemodel(weights, net_random_blobs(structure, 5, registry), structure.name)
    net = caffe2onnx.load_net(NET, weights, registry=registry)
    scale = net.layer("cscale1")
    assert scale.weights_from == "caffemodel" and scale.weights[0].shape == (8,)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    out = run_onnx(to_onnx(net, 17, registry), {"data": x}, ["conv1", "cscale1"])
    assert_close(out["cscale1"], out["conv1"] * scale.weights[0].reshape(1, -1, 1, 1), what="ChannelScale")


def test_without_the_plugin_the_layers_are_listed_as_unsupported():
    with pytest.raises(UnsupportedLayersError) as info:
        caffe2onnx.load_net(NET, random_weights=0)
    text = str(info.value)
    assert "ChannelScale: cscale1" in text and "Mish: mish1" in text
    assert "Python (my_layers.ScaleShiftLayer): shift1" in text and "--plugin" in text


def test_plugin_by_module_name_and_loading_twice_is_a_no_op(registry, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    assert load_plugin("my_layers", registry) == ["ChannelScale", "Mish", "ScaleShift"]
    assert load_plugin("my_layers", registry) == []
    assert registry.plugins == ["my_layers"]
    assert registry.python_layer_map() == {"my_layers.ScaleShiftLayer": "ScaleShift"}


def test_plugin_module_in_the_current_directory_is_found(registry, monkeypatch):
    monkeypatch.chdir(EXAMPLES)
    assert "Mish" in load_plugin("my_layers", registry)


def test_explicit_python_layer_mapping_wins_over_the_plugins(registry, tmp_path):
    load_plugin(str(PLUGIN), registry)
    net = caffe2onnx.load_net(
        NET, random_weights=0, registry=registry, python_layers={"my_layers.ScaleShiftLayer": "Dropout"}
    )
    assert net.layer("shift1").type == "Dropout"


def test_python_layer_param_str_is_checked_by_the_plugin(registry, tmp_path):
    load_plugin(str(PLUGIN), registry)
    text = NET.read_text().replace("{'scale': 2.0, 'shift': 0.5}", "{'scale': 'big'}")
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    with pytest.raises(
        caffe2onnx.LayerError, match=r"net\.prototxt:\d+: layer 'shift1' \(ScaleShift\).*numbers"
    ):
        caffe2onnx.load_net(path, random_weights=0, registry=registry)


def test_default_registry_serves_convert_validate_and_to_torch(tmp_path, clean_default_registry):
    """What the CLI does for --plugin: load into the default registry, then run as usual."""
    load_plugins([str(PLUGIN)])
    assert "Mish" in default_registry()
    model = caffe2onnx.convert(NET, random_weights=0, opset=17)
    assert any(node.op_type == "Softplus" for node in model.graph.node)
    report = caffe2onnx.validate(NET, random_weights=0)
    assert report.passed, report.table()
    net = caffe2onnx.load_net(NET, random_weights=0)
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert torch_blobs(net, {"data": x})["pool1"].shape == (1, 8, 8, 8)


def _convert_help() -> str:
    parser = build_parser()
    for action in parser._actions:
        if getattr(action, "choices", None) and "convert" in action.choices:
            return action.choices["convert"].format_help()
    return ""


@pytest.mark.skipif("--plugin" not in _convert_help(), reason="the CLI has no --plugin flag yet")
def test_cli_plugin_flag(tmp_path, capsys, clean_default_registry):
    out = tmp_path / "m.onnx"
    code = main(
        ["convert", str(NET), "--plugin", str(PLUGIN), "--random-weights", "0", "-o", str(out), "--validate"]
    )
    assert code == 0, capsys.readouterr().err
    assert out.exists()


# ----------------------------------------------------------------------------- entry points


def _distribution(tmp_path: Path, value: str) -> None:
    info = tmp_path / "caffe2onnx_fake_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: caffe2onnx-fake-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nfake = {value}\n")


@pytest.mark.parametrize("value", ["my_layers", "my_layers_register:register"], ids=["module", "function"])
def test_entry_point_plugins_are_loaded(tmp_path, registry, monkeypatch, value):
    (tmp_path / "my_layers_register.py").write_text(
        "import my_layers\n"
        "def register(registrar):\n"
        "    registrar.register_all(my_layers.HANDLERS)\n"
        "    registrar.map_python_layer('my_layers.ScaleShiftLayer', 'ScaleShift')\n"
    )
    _distribution(tmp_path, value)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_entry_points(registry) == ["ChannelScale", "Mish", "ScaleShift"]
    assert load_entry_points(registry) == [], "loaded once"
    net = caffe2onnx.load_net(NET, random_weights=0, registry=registry)
    assert net.layer("shift1").type == "ScaleShift"


def test_broken_entry_point_is_a_plugin_error(tmp_path, registry, monkeypatch):
    _distribution(tmp_path, "no_such_module_xyz")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin fake \(entry point no_such_module_xyz\) cannot be loaded"):
        load_entry_points(registry)


# ----------------------------------------------------------------------------- bad plugins

BAD_PLUGINS = {
    "no_handlers": ("X = 1\n", r"defines neither HANDLERS .* nor register"),
    "not_a_handler": ("HANDLERS = [object()]\n", r"is not a handler; handlers subclass"),
    "no_types": (
        "class T(Id):\n    types = ()\nHANDLERS = [T()]\n",
        r"T\.types must be a non-empty tuple",
    ),
    "bad_counts": (
        "class T(Id):\n    bottoms = (2, 1)\nHANDLERS = [T()]\n",
        r"T\.bottoms must be \(min, max\)",
    ),
    "no_to_onnx": (
        "class T(Handler):\n    types = ('T',)\nHANDLERS = [T()]\n",
        r"T does not implement to_onnx",
    ),
    "takes_a_builtin_type": (
        "class R(Id):\n    types = ('ReLU',)\nHANDLERS = [R()]\n",
        r"registers layer type 'ReLU', which is already handled by ReLU \(built-in\).*REPLACE",
    ),
    "type_twice": ("HANDLERS = [Id(), Id()]\n", r"registers layer type 'Ident' twice"),
    "python_layer_to_unknown_type": (
        "HANDLERS = [Id()]\nPYTHON_LAYERS = {'m.C': 'Nope'}\n",
        r"maps Python layer m\.C to type 'Nope', which no handler serves",
    ),
    "python_layer_key": ("HANDLERS = [Id()]\nPYTHON_LAYERS = {'C': 'Ident'}\n", r"must be module\.Class"),
    "raises_on_import": ("raise RuntimeError('boom')\n", r"failed to import: RuntimeError: boom"),
    "syntax_error": ("def (:\n", r"failed to import: SyntaxError"),
    "missing_dependency": ("import no_such_dependency_xyz\n", r"failed to import: ModuleNotFoundError"),
    "register_fails": ("def register(r):\n    raise KeyError('k')\n", r"register\(\) failed: KeyError"),
}


@pytest.mark.parametrize("name", BAD_PLUGINS, ids=list(BAD_PLUGINS))
def test_bad_plugins_are_refused_with_a_plugin_error(tmp_path, registry, name):
    body, message = BAD_PLUGINS[name]
    path = write_plugin(tmp_path, f"plugin_{name}", body)
    before = registry.types()
    with pytest.raises(PluginError, match=message) as info:
        load_plugin(str(path), registry)
    assert f"plugin_{name}" in str(info.value)
    assert registry.types() == before, "a refused plugin registers nothing"


def test_missing_plugin_module_says_how_to_give_one(registry):
    with pytest.raises(PluginError, match=r"cannot import plugin 'no_such_plugin_xyz'.*\.py file"):
        load_plugin("no_such_plugin_xyz", registry)


def test_replace_lets_a_plugin_override_a_builtin_on_purpose(tmp_path, registry):
    path = write_plugin(
        tmp_path, "override", "class R(Id):\n    types = ('ReLU',)\nHANDLERS = [R()]\nREPLACE = ['ReLU']\n"
    )
    load_plugin(str(path), registry)
    net = caffe2onnx.load_net(small_net(tmp_path, "ReLU"), registry=registry)
    assert [node.op_type for node in to_onnx(net, 17, registry).graph.node] == ["Identity"]
    builtin = caffe2onnx.load_net(small_net(tmp_path, "ReLU"))
    assert [node.op_type for node in to_onnx(builtin, 17).graph.node] == ["Relu"], (
        "other registries keep ReLU"
    )


HOOK_FAILURES = {
    "parse": ("def parse(self, lp):\n        return {}['missing']\n", "parse", "KeyError"),
    "infer": ("def infer(self, layer, in_shapes):\n        return None.shape\n", "infer", "AttributeError"),
    "to_onnx": (
        "def to_onnx(self, layer, g):\n        raise TypeError('bad attribute')\n",
        "to_onnx",
        "TypeError",
    ),
}


@pytest.mark.parametrize("hook", HOOK_FAILURES, ids=list(HOOK_FAILURES))
def test_a_failing_plugin_handler_is_reported_naming_plugin_handler_and_layer(tmp_path, registry, hook):
    method, name, error = HOOK_FAILURES[hook]
    path = write_plugin(
        tmp_path, "buggy", "class B(Id):\n    types = ('Buggy',)\n    " + method + "HANDLERS = [B()]\n"
    )
    load_plugin(str(path), registry)
    prototxt = small_net(tmp_path, "Buggy")
    with pytest.raises(PluginError) as info:
        net = caffe2onnx.load_net(prototxt, registry=registry)
        to_onnx(net, 17, registry)
    text = str(info.value)
    assert f"layer 'x' (Buggy): the handler B of plugin '{path}' failed in {name}(): {error}" in text
    if hook != "to_onnx":
        assert text.startswith(f"{prototxt}:3: "), "the parser adds the file and line of the layer"
    assert "--debug" in text
    assert info.value.__cause__ is not None, "the plugin's own traceback is kept for --debug"


def test_plugin_without_torch_reference_fails_validation_clearly(tmp_path, registry):
    path = write_plugin(
        tmp_path,
        "onnx_only",
        "class O(Handler):\n    types = ('OnnxOnly',)\n"
        "    def to_onnx(self, layer, g):\n        g.op('Identity', layer.bottoms, layer.tops[0])\n"
        "HANDLERS = [O()]\n",
    )
    load_plugin(str(path), registry)
    net = caffe2onnx.load_net(small_net(tmp_path, "OnnxOnly"), registry=registry)
    to_onnx(net, 17, registry)  # converting needs no torch reference
    from caffe2onnx.torch_ref import build_module

    with pytest.raises(PluginError, match=r"layer 'x' \(OnnxOnly\).*has no PyTorch reference"):
        build_module(net, registry).run({"data": np.zeros((1, 2, 3, 3), np.float32)})
