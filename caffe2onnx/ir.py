"""The intermediate representation: a Caffe net after parsing, upgrading and SSA renaming.

Caffe semantics kept here: layers run in file order; a blob written again (in place or
not) is a new *version*; consumers read the newest version written before them. The IR
names each version as an ONNX tensor: the last version of a Caffe blob keeps the plain
blob name (what ``net.blobs[name]`` holds after a forward pass in Caffe), earlier ones
are named ``<blob>@<layer that wrote it>``.

Nothing protobuf-shaped lives here: layer parameters are the handler's own frozen
dataclass, weights are numpy arrays already reshaped to the shapes the handler expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Filler:
    """A Caffe FillerParameter (used to fill blobs a caffemodel does not provide)."""

    type: str = "constant"
    value: float = 0.0
    min: float = 0.0
    max: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    @property
    def deterministic(self) -> bool:
        return self.type in ("constant", "bilinear")


@dataclass(frozen=True)
class BlobSpec:
    """What a layer expects of one of its parameter blobs.

    ``init`` tells make-weights how to draw sane random values: ``"fan_in"`` (scaled by
    ``fan_in``), ``"bias"``, ``"bn_mean"``, ``"bn_var"``, ``"bn_factor"``, ``"gamma"``,
    ``"beta"``, ``"slope"``, ``"ones"``, ``"zeros"``.
    """

    role: str
    shape: Shape
    filler: Filler | None = None
    init: str = "fan_in"
    fan_in: int = 1


@dataclass(frozen=True)
class Layer:
    """One Caffe layer with SSA tensor names."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: Any
    caffe_bottoms: tuple[str, ...] = ()
    caffe_tops: tuple[str, ...] = ()
    weights: tuple[np.ndarray, ...] = ()
    weight_names: tuple[str, ...] = ()
    param_names: tuple[str, ...] = ()
    weights_from: str = "none"  # "caffemodel", "filler", "random", "none"
    caffe_name: str = ""
    frozen: bool = False  # every ``param`` has lr_mult 0: training never changed its blobs  # the name in the prototxt, when ``name`` had to be made unique

    def with_(self, **changes: Any) -> Layer:
        return replace(self, **changes)


@dataclass(frozen=True)
class Net:
    """A whole net, ready for export: inputs, layers in order, every tensor's shape."""

    name: str
    inputs: tuple[tuple[str, Shape], ...]
    layers: tuple[Layer, ...]
    shapes: Mapping[str, Shape]
    outputs: tuple[str, ...]
    notes: tuple[str, ...] = ()
    source: str = "<string>"
    blob_of: Mapping[str, str] = field(default_factory=dict)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def producer(self) -> dict[str, Layer]:
        """Tensor name -> the layer that writes it."""
        return {top: layer for layer in self.layers for top in layer.tops}

    def consumers(self) -> dict[str, list[Layer]]:
        """Tensor name -> the layers that read it."""
        result: dict[str, list[Layer]] = {}
        for layer in self.layers:
            for bottom in layer.bottoms:
                result.setdefault(bottom, []).append(layer)
        return result

    def parameter_count(self) -> int:
        seen: set[str] = set()
        total = 0
        for layer in self.layers:
            for name, blob in zip(layer.weight_names, layer.weights):
                if name not in seen:
                    seen.add(name)
                    total += int(blob.size)
        return total
