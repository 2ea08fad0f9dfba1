"""Write seeded random weights for a net as a real binary caffemodel (``make-weights``).

Every layer that has parameter blobs gets values from the same generator that
``--random-weights`` uses: fan-in scaled weights (activations stay O(1) through deep
nets), small biases, BatchNorm statistics with a non-trivial scale factor, and the
prototxt's bilinear filler where one is given (FCN-style fixed upsampling). Layers
that share a parameter (``param { name: ... }``) get the same values, as Caffe saves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from caffe2onnx.caffemodel import write_caffemodel
from caffe2onnx.ir import Net
from caffe2onnx.layers.registry import Registry, default_registry
from caffe2onnx.parser import load_net
from caffe2onnx.weights import fill_or_fail, random_blobs


def net_random_blobs(
    net: Net, seed: int, registry: Registry | None = None
) -> Iterator[tuple[str, str, list[np.ndarray]]]:
    """Yield ``(caffe layer name, type, blobs)`` for every layer that has parameters."""
    registry = registry or default_registry()
    shared: dict[str, np.ndarray] = {}
    for layer in net.layers:
        handler = registry.get(layer.type)
        specs = handler.blobs(layer, [net.shapes[b] for b in layer.bottoms])
        if not specs:
            continue
        name = layer.caffe_name or layer.name
        blobs = fill_or_fail(layer, random_blobs, name, specs, seed, layer.frozen)
        for i, param in enumerate(layer.param_names[: len(blobs)]):
            if param:
                blobs[i] = shared.setdefault(param, blobs[i])
        yield name, layer.type, blobs


def make_weights(
    prototxt: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    seed: int = 0,
    layout: str = "V2",
    **load_options: Any,
) -> Net:
    """Write a caffemodel with seeded random weights for ``prototxt``; return the net.

    ``load_options`` are those of :func:`caffe2onnx.load_net` (``input_shapes``,
    ``python_layers``, ``layer_types``, ``outputs``: only the layers kept get weights)."""
    net = load_net(prototxt, require_weights=False, **load_options)
    write_caffemodel(output, net_random_blobs(net, seed), net.name, layout=layout)
    return net
