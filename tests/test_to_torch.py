"""``caffe2onnx.to_torch``: the Caffe net as a trainable PyTorch module (Caffe -> PyTorch).

The module must hold the caffemodel's values as parameters, let gradients reach every
one of them, train, and export through ``torch.onnx.export`` to an ONNX model that
agrees with ours on inputs other than the one it was traced with.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

import caffe2onnx
from caffe2onnx.cli import main
from caffe2onnx.make_weights import make_weights, net_random_blobs
from caffe2onnx.parser import load_net
from caffe2onnx.validation import run_onnx
from tests.helpers import assert_close, write

torch = pytest.importorskip("torch")

# Convolution, in-place BatchNorm + Scale + PReLU, Deconvolution, AVE pooling, InnerProduct.
NET = """name: "trainable"
input: "data"
input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "up" type: "Deconvolution" bottom: "conv1" top: "up" convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
layer { name: "pool" type: "Pooling" bottom: "up" top: "pool" pooling_param { pool: AVE kernel_size: 4 stride: 4 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 5 } }
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("to_torch")
    prototxt = write(root, NET)
    weights = root / "w.caffemodel"
    make_weights(prototxt, weights, seed=4)
    return prototxt, weights


def batch(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 3, 8, 8)).astype(np.float32))


def test_module_holds_the_caffemodel_values_as_parameters(files):
    prototxt, weights = files
    module = caffe2onnx.to_torch(prototxt, weights)
    assert isinstance(module, torch.nn.Module)
    written = {
        name: blobs for name, _, blobs in net_random_blobs(load_net(prototxt, require_weights=False), 4)
    }
    np.testing.assert_array_equal(module.parameter_for("conv1/weight").detach().numpy(), written["conv1"][0])
    np.testing.assert_array_equal(module.parameter_for("ip/bias").detach().numpy(), written["ip"][1])
    count = sum(p.numel() for p in module.parameters())
    assert count == sum(b.size for blobs in written.values() for b in blobs)


def test_inference_matches_our_onnx(files):
    prototxt, weights = files
    module = caffe2onnx.to_torch(prototxt, weights).eval()
    x = batch(1)
    with torch.no_grad():
        ours = module(x).numpy()
    expected = run_onnx(caffe2onnx.convert(prototxt, weights), {"data": x.numpy()})["ip"]
    assert_close(ours, expected, rtol=1e-5, what="to_torch vs onnxruntime")


def test_gradients_flow_to_every_parameter(files):
    prototxt, weights = files
    module = caffe2onnx.to_torch(prototxt, weights)
    module(batch(2)).square().sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, f"{name}: zero gradient"


def test_fine_tuning_lowers_the_loss_and_keeps_batchnorm_statistics(files):
    prototxt, weights = files
    module = caffe2onnx.to_torch(prototxt, weights)
    trainable = list(module.trainable_parameters())
    statistics = [p for p in module.parameters() if all(p is not t for t in trainable)]
    assert len(statistics) == 3, "BatchNorm mean, variance and scale factor"
    frozen = [p.detach().clone() for p in statistics]
    x, target = batch(3), torch.zeros(2, 5)
    losses = []
    for _ in range(5):  # plain SGD (torch.optim's first step imports torch._dynamo: seconds)
        module.zero_grad()
        loss = torch.nn.functional.mse_loss(module(x), target)
        loss.backward()
        with torch.no_grad():
            for param in trainable:
                param -= 0.01 * param.grad
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    for before, after in zip(frozen, statistics):
        assert torch.equal(before, after)


def test_state_dict_round_trip(files):
    prototxt, weights = files
    trained = caffe2onnx.to_torch(prototxt, weights)
    with torch.no_grad():
        trained.parameter_for("ip/weight").add_(1.0)
    fresh = caffe2onnx.to_torch(prototxt, weights)
    fresh.load_state_dict(trained.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(batch(5)), trained(batch(5)))


def test_forward_names_the_inputs_it_expects(files):
    module = caffe2onnx.to_torch(*files)
    with pytest.raises(TypeError, match=r"takes 1 input\(s\) \(data\), got 2"):
        module(batch(0), batch(0))


def test_torch_onnx_export_agrees_with_our_onnx_and_validates(files, tmp_path, capsys):
    prototxt, weights = files
    module = caffe2onnx.to_torch(prototxt, weights).eval()
    exported = tmp_path / "torch_export.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (batch(10),), str(exported), dynamo=False, opset_version=17)
    theirs = onnx.load(str(exported))
    x = batch(11).numpy()  # not the tracing input
    (their_out,) = run_onnx(theirs, {theirs.graph.input[0].name: x}).values()
    ours = run_onnx(caffe2onnx.convert(prototxt, weights), {"data": x})["ip"]
    assert_close(their_out, ours, rtol=1e-5, what="torch.onnx.export vs caffe2onnx")
    # The exported file is "another converter's" ONNX: validate pairs it by order.
    assert main(["validate", str(prototxt), str(weights), "--onnx", str(exported), "--seeds", "2"]) == 0
    assert "PASS" in capsys.readouterr().out
