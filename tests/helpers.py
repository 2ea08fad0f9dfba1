"""Shared test helpers: build small nets, run them through every path, compare numbers.

``run_net`` writes a prototxt, makes seeded random weights as a real binary caffemodel
(so the binary decoder is exercised), converts to ONNX (checker + strict shape
inference), runs onnxruntime and the PyTorch reference, and returns every blob of both.
Numeric assertions go through ``assert_close``, which reports max abs/rel errors.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from caffe2onnx.ir import Net
from caffe2onnx.make_weights import make_weights
from caffe2onnx.onnx_export import DEFAULT_OPSET, to_onnx
from caffe2onnx.parser import load_net
from caffe2onnx.validation import run_onnx

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
SAMPLES = Path(__file__).resolve().parents[1] / "prototxt"


def net_text(layers: str, inputs: Mapping[str, Sequence[int]], name: str = "test") -> str:
    """A prototxt with legacy ``input``/``input_shape`` declarations and the given layers."""
    head = [f'name: "{name}"']
    for input_name in inputs:
        head.append(f'input: "{input_name}"')
    for shape in inputs.values():
        head.append("input_shape { " + " ".join(f"dim: {d}" for d in shape) + " }")
    return "\n".join(head) + "\n" + textwrap.dedent(layers)


def write(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@dataclass
class NetRun:
    net: Net
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    onnx: dict[str, np.ndarray]
    torch: dict[str, np.ndarray]
    prototxt: Path
    caffemodel: Path | None

    def weights(self, layer_name: str) -> list[np.ndarray]:
        return [np.asarray(w) for w in self.net.layer(layer_name).weights]


def random_inputs(net: Net, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in net.inputs}


def torch_blobs(net: Net, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    from caffe2onnx.torch_ref import build_module

    module = build_module(net)
    with torch.no_grad():
        values = module.run({k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()})
    return {k: v.detach().numpy() for k, v in values.items()}


def run_net(
    tmp_path: Path,
    prototxt: str | Path,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    opset: int = DEFAULT_OPSET,
    make_caffemodel: bool = True,
    caffemodel: Path | None = None,
    **load_options,
) -> NetRun:
    """Convert ``prototxt`` (text or path) and run both the ONNX model and the reference."""
    if isinstance(prototxt, str):
        prototxt = write(tmp_path, prototxt)
    if caffemodel is None and make_caffemodel:
        caffemodel = tmp_path / (prototxt.stem + ".caffemodel")
        make_weights(
            prototxt,
            caffemodel,
            seed=seed,
            input_shapes=load_options.get("input_shapes"),
            python_layers=load_options.get("python_layers"),
        )
    net = load_net(prototxt, caffemodel, **load_options)
    model = to_onnx(net, opset)
    feed = dict(inputs) if inputs is not None else random_inputs(net, seed)
    tensors = [top for layer in net.layers for top in layer.tops]
    return NetRun(
        net=net,
        model=model,
        inputs=feed,
        onnx=run_onnx(model, feed, tensors),
        torch=torch_blobs(net, feed),
        prototxt=prototxt,
        caffemodel=caffemodel,
    )


def assert_close(actual, expected, *, rtol: float = 1e-5, atol: float = 1e-5, what: str = "") -> None:
    """np.testing.assert_allclose that also states the max abs/rel error relative to the blob."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    diff = np.abs(actual - expected)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    message = (
        f"{what}: max abs error {max_abs:.3g}, max rel error {max_abs / scale if scale else max_abs:.3g}"
    )
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol + rtol * scale, err_msg=message)


def opencv_forward(
    prototxt: Path, caffemodel: Path | None, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
) -> dict[str, np.ndarray]:
    """Forward pass of OpenCV 4.x's independent Caffe importer (``cv2.dnn``)."""
    import cv2

    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel) if caffemodel else None)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    names = list(inputs)
    if len(names) == 1:
        net.setInput(np.ascontiguousarray(inputs[names[0]]))
    else:
        net.setInputsNames(names)
        for name in names:
            net.setInput(np.ascontiguousarray(inputs[name]), name)
    values = net.forward(list(outputs))
    return dict(zip(outputs, values))
