"""A second, independent reference: OpenCV 4.x's own Caffe importer (``cv2.dnn``).

OpenCV parses the prototxt and the caffemodel itself, so agreeing with it checks our
parser, our weight decoding and our PyTorch reference at once. It runs the *original*
prototxt with the given caffemodel; when there is none, or some weights came from
elsewhere (``--random-weights``, deterministic fillers), the IR's weights are written to
a temporary caffemodel first.

Layer fusion is switched off, so every layer's own output is kept; OpenCV returns a
layer's first top, which is compared with the IR tensor that layer writes (for in-place
layers, the version written by that layer). Layers OpenCV does not list (dropped data
layers, layers it merged away) are not compared. ``cv2`` is imported lazily: it is the
optional ``caffe2onnx[opencv]`` extra.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from caffe2onnx.errors import Caffe2OnnxError
from caffe2onnx.ir import Net

HINT = "\n(OpenCV lacks some fork layers and fields; validate this net with --reference pytorch)"


class OpenCVReferenceError(Caffe2OnnxError):
    """OpenCV is missing or cannot import or run the net (exit code 2)."""


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise OpenCVReferenceError(
            "--reference opencv needs OpenCV 4.x: pip install 'caffe2onnx[opencv]' (opencv-python-headless)"
        ) from exc
    return cv2


def _weights_file(net: Net, directory: str) -> str:
    from caffe2onnx.caffemodel import write_caffemodel

    path = os.path.join(directory, "weights.caffemodel")
    seen: set[str] = set()
    layers = []
    for layer in net.layers:
        name = layer.caffe_name or layer.name
        if layer.weights and name not in seen:
            seen.add(name)
            layers.append((name, layer.type, [np.asarray(w, dtype=np.float32) for w in layer.weights]))
    write_caffemodel(path, layers, net.name)
    return path


class OpenCVReference:
    """Runs the Caffe net in OpenCV; ``run(feed)`` returns blobs keyed by IR tensor name."""

    name = "opencv"

    def __init__(
        self, net: Net, prototxt: str | os.PathLike[str], caffemodel: str | os.PathLike[str] | None
    ) -> None:
        cv2 = _cv2()
        self._net = net
        with tempfile.TemporaryDirectory(prefix="caffe2onnx-cv-") as tmp:
            # OpenCV reads the caffemodel itself (checking our decoder too) unless some
            # weights came from elsewhere (fillers, --random-weights): then the IR's are written.
            from_file = all(layer.weights_from in ("caffemodel", "none") for layer in net.layers)
            weights = os.fspath(caffemodel) if caffemodel and from_file else _weights_file(net, tmp)
            try:
                self._cv = cv2.dnn.readNetFromCaffe(os.fspath(prototxt), weights)
            except cv2.error as exc:
                raise OpenCVReferenceError(
                    f"OpenCV {cv2.__version__} cannot import {Path(prototxt).name}: {_short(exc)}{HINT}"
                ) from exc
        self._cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self._cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self._cv.enableFusion(False)
        known = set(self._cv.getLayerNames())
        self.tensor_of: dict[str, str] = {}
        for layer in net.layers:
            cv_name = layer.caffe_name or layer.name
            if cv_name not in known and layer.caffe_tops and layer.caffe_tops[0] in known:
                # OpenCV lists some layers (e.g. a Convolution whose top is named differently)
                # under their top's name.
                cv_name = layer.caffe_tops[0]
            if cv_name in known and layer.tops and cv_name not in self.tensor_of:
                self.tensor_of[cv_name] = layer.tops[0]

    def run(
        self, feed: Mapping[str, np.ndarray], progress: Callable[[str], None] | None = None
    ) -> dict[str, np.ndarray]:
        cv2 = _cv2()
        names = list(feed)
        try:
            if len(names) == 1:
                self._cv.setInput(np.ascontiguousarray(feed[names[0]], dtype=np.float32))
            else:
                self._cv.setInputsNames(names)
                for name in names:
                    self._cv.setInput(np.ascontiguousarray(feed[name], dtype=np.float32), name)
            layer_names: Sequence[str] = list(self.tensor_of)
            values = self._cv.forward(layer_names) if layer_names else []
        except cv2.error as exc:
            raise OpenCVReferenceError(f"OpenCV cannot run the net: {_short(exc)}{HINT}") from exc
        if progress is not None:
            progress("opencv")
        result = {name: np.asarray(feed[name]) for name in names}
        for cv_name, value in zip(layer_names, values):
            tensor = self.tensor_of[cv_name]
            expected = self._net.shapes.get(tensor)
            array = np.asarray(value)
            # OpenCV may keep a different rank (e.g. 4-D InnerProduct outputs): same values.
            if (
                expected is not None
                and array.shape != tuple(expected)
                and array.size == int(np.prod(expected))
            ):
                array = array.reshape(expected)
            result[tensor] = array
        return result


def _short(exc: Exception) -> str:
    """OpenCV's message without its source path, on one line."""
    text = " ".join(line.strip().lstrip("> ") for line in str(exc).strip().splitlines())
    if " error: " in text:
        text = text.split(" error: ", 1)[1]
    return text[:400] or type(exc).__name__
