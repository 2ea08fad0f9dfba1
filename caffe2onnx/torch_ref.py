"""IR -> a PyTorch ``nn.Module`` that runs the Caffe net: the reference for validation.

Every layer runs through its handler's ``to_torch`` (``torch.nn.functional`` ops written
from Caffe's semantics, independently of the ONNX recipe). The Caffe blobs become
``nn.Parameter``s (shared Caffe parameters are one Parameter), so the module can also be
fine-tuned: ``caffe2onnx.to_torch`` returns it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from caffe2onnx.ir import Net
from caffe2onnx.layers.registry import Registry, default_registry


def _key(name: str, taken: set[str]) -> str:
    key = re.sub(r"\W", "_", name) or "_"
    if key[0].isdigit():
        key = "_" + key
    candidate = key
    counter = 1
    while candidate in taken:
        candidate = f"{key}_{counter}"
        counter += 1
    taken.add(candidate)
    return candidate


class CaffeNetModule(nn.Module):
    """Runs a converted Caffe net in PyTorch.

    ``forward(*inputs)`` takes the net inputs in declaration order and returns the
    output blob (or a tuple of them); ``run(inputs)`` returns every blob by name.
    """

    def __init__(self, net: Net, registry: Registry | None = None) -> None:
        super().__init__()
        self.net = net
        self._registry = registry or default_registry()
        self.blobs = nn.ParameterDict()
        self._param_key: dict[str, str] = {}
        taken: set[str] = set()
        for layer in net.layers:
            for name, array in zip(layer.weight_names, layer.weights):
                if name in self._param_key:
                    continue
                key = _key(name, taken)
                self._param_key[name] = key
                self.blobs[key] = nn.Parameter(torch.from_numpy(np.array(array, dtype=np.float32)))
        self._handlers = [self._registry.get(layer.type) for layer in net.layers]

    def parameter_for(self, weight_name: str) -> nn.Parameter:
        return self.blobs[self._param_key[weight_name]]

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Forward pass returning every tensor (net inputs included) by its IR name."""
        values: dict[str, torch.Tensor] = {}
        for name in self.net.input_names:
            values[name] = torch.as_tensor(inputs[name], dtype=torch.float32)
        for layer, handler in zip(self.net.layers, self._handlers):
            xs = [values[b] for b in layer.bottoms]
            ws = [self.blobs[self._param_key[n]] for n in layer.weight_names]
            outs = handler.to_torch(layer, xs, ws)
            for top, out in zip(layer.tops, outs):
                values[top] = out
        return values

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        named = dict(zip(self.net.input_names, inputs))
        values = self.run(named)
        outs = tuple(values[name] for name in self.net.outputs)
        return outs[0] if len(outs) == 1 else outs


def build_module(net: Net, registry: Registry | None = None) -> CaffeNetModule:
    return CaffeNetModule(net, registry)
