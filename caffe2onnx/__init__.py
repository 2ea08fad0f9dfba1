"""caffe2onnx: convert Caffe networks to ONNX and prove the result computes the same thing.

Public API::

    net = caffe2onnx.load_net("deploy.prototxt", "weights.caffemodel")
    model = caffe2onnx.convert("deploy.prototxt", "weights.caffemodel", opset=17)
    report = caffe2onnx.validate("deploy.prototxt", "weights.caffemodel")
    module = caffe2onnx.to_torch("deploy.prototxt", "weights.caffemodel")

Importing caffe2onnx and converting never import torch; only validation and
``to_torch`` do. The library never configures logging.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from caffe2onnx.errors import (
    Caffe2OnnxError,
    LayerError,
    NetDefinitionError,
    ParseError,
    ShapeError,
    UnsupportedLayersError,
    ValidationMismatch,
    WeightError,
)
from caffe2onnx.ir import Layer, Net
from caffe2onnx.parser import load_net

if TYPE_CHECKING:
    import onnx

    from caffe2onnx.inputs import Preprocess
    from caffe2onnx.torch_ref import CaffeNetModule
    from caffe2onnx.validation import ValidationReport

__version__ = "0.1.0"

__all__ = [
    "Caffe2OnnxError",
    "Layer",
    "LayerError",
    "Net",
    "NetDefinitionError",
    "ParseError",
    "ShapeError",
    "UnsupportedLayersError",
    "ValidationMismatch",
    "WeightError",
    "convert",
    "load_net",
    "make_weights",
    "to_torch",
    "validate",
]


def convert(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None = None,
    opset: int | None = None,
    *,
    optimize: bool = True,
    **load_options: Any,
) -> onnx.ModelProto:
    """Convert a Caffe net to an ONNX model (checker-clean, shape-inferred).

    ``optimize`` folds BatchNorm/Scale into the preceding convolution, drops identities
    and folds constants (``False`` keeps the graph 1:1 with the Caffe layers).
    ``load_options`` are those of :func:`load_net` (``input_shapes``,
    ``random_weights``, ``python_layers``, ``outputs``). To write a large model without
    holding it in memory, use ``caffe2onnx.onnx_export.save_model``.
    """
    from caffe2onnx.onnx_export import DEFAULT_OPSET, to_onnx

    net = load_net(prototxt, caffemodel, **load_options)
    return to_onnx(net, opset or DEFAULT_OPSET, optimize=optimize)


def validate(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None = None,
    onnx_model: onnx.ModelProto | str | os.PathLike[str] | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    seeds: int = 1,
    batch: int | None = None,
    inputs: Mapping[str | None, Any] | None = None,
    preprocess: Preprocess | None = None,
    reference: str = "pytorch",
    opset: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **load_options: Any,
) -> ValidationReport:
    """Compare an ONNX model (any converter's; ours, converted in memory, by default) with
    the Caffe net, blob by blob.

    ``reference`` is ``"pytorch"`` (our PyTorch reference), ``"opencv"`` (OpenCV's own
    Caffe importer) or ``"both"`` (every reference must agree). ``inputs`` maps net input
    names to arrays or ``.npy``/``.npz``/image files (``preprocess``: Caffe-style mean,
    scale and channel swap for files); other inputs are seeded random normal, once per
    seed in ``seed .. seed + seeds - 1``. ``batch`` sets the inputs' batch size. Inputs
    that do not fit raise :class:`caffe2onnx.inputs.ValidationInputError` (exit code 2).
    The report's ``passed``, ``first_failure``, ``table()``, ``summary()`` and
    ``to_dict()`` give the verdict; :mod:`caffe2onnx.report` writes JSON and HTML.
    """
    from caffe2onnx.validation import DEFAULT_ATOL, DEFAULT_RTOL, validate_files

    return validate_files(
        prototxt,
        caffemodel,
        onnx_model,
        rtol=DEFAULT_RTOL if rtol is None else rtol,
        atol=DEFAULT_ATOL if atol is None else atol,
        seed=seed,
        seeds=seeds,
        batch=batch,
        inputs=inputs,
        preprocess=preprocess,
        reference=reference,
        opset=opset,
        progress=progress,
        **load_options,
    )


def to_torch(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str] | None = None,
    **load_options: Any,
) -> CaffeNetModule:
    """The Caffe net as a PyTorch ``nn.Module`` holding the Caffe weights as parameters.

    ``module(*inputs)`` takes the net inputs in declaration order and returns the output
    blob (a tuple when the net has several); ``module.run({name: tensor})`` returns every
    blob. The module computes Caffe's TEST phase (Dropout off, BatchNorm with its stored
    statistics); gradients flow to every parameter, so it can be fine-tuned
    (``module.trainable_parameters()`` leaves BatchNorm statistics out). ``load_options``
    are those of :func:`load_net`.
    """
    from caffe2onnx.torch_ref import build_module

    return build_module(load_net(prototxt, caffemodel, **load_options))


def make_weights(
    prototxt: str | os.PathLike[str],
    output: str | os.PathLike[str],
    seed: int = 0,
    **options: Any,
) -> Net:
    """Write seeded random weights for ``prototxt`` as a binary caffemodel."""
    from caffe2onnx.make_weights import make_weights as _make_weights

    return _make_weights(prototxt, output, seed=seed, **options)
