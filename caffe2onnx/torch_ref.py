"""IR -> a PyTorch ``nn.Module`` that runs the Caffe net: the reference for validation.

Every layer runs through its handler's ``to_torch`` (``torch.nn.functional`` ops written
from Caffe's semantics, independently of the ONNX recipe). The Caffe blobs become
``nn.Parameter``s (shared Caffe parameters are one Parameter), so the module can also be
fine-tuned: ``caffe2onnx.to_torch`` returns it.

The module always computes Caffe's TEST phase: Dropout is the identity and BatchNorm
uses its stored statistics (``use_global_stats``), whatever ``train()``/``eval()`` say.
The statistics are parameters too (Caffe stores them as blobs, and gradients do flow to
them); ``trainable_parameters()`` leaves them out, which is what fine-tuning with frozen
BatchNorm statistics wants.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from caffe2onnx.ir import Layer, Net
from caffe2onnx.layers.registry import Registry, default_registry

#: BlobSpec ``init`` kinds of the running statistics a BatchNorm-like layer stores.
STATISTICS = frozenset({"bn_mean", "bn_var", "bn_factor"})


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
    Parameters live in ``self.blobs`` under a sanitised form of their Caffe name
    (``conv1/weight`` -> ``conv1_weight``); ``parameter_for("conv1/weight")`` finds one.
    """

    def __init__(self, net: Net, registry: Registry | None = None) -> None:
        super().__init__()
        self.net = net
        self._registry = registry or default_registry()
        self.blobs = nn.ParameterDict()
        self._param_key: dict[str, str] = {}
        #: parameter key -> how the blob is drawn/used (``BlobSpec.init``: "fan_in", "bn_mean", ...)
        self.blob_kinds: dict[str, str] = {}
        self._handlers = [self._registry.get(layer.type) for layer in net.layers]
        taken: set[str] = set()
        for layer, handler in zip(net.layers, self._handlers):
            if not layer.weight_names:
                continue
            specs = handler.blobs(layer, [net.shapes[b] for b in layer.bottoms])
            for i, (name, array) in enumerate(zip(layer.weight_names, layer.weights)):
                if name in self._param_key:
                    continue
                key = _key(name, taken)
                self._param_key[name] = key
                self.blobs[key] = nn.Parameter(torch.from_numpy(np.array(array, dtype=np.float32)))
                self.blob_kinds[key] = specs[i].init if i < len(specs) else "fan_in"

    def parameter_for(self, weight_name: str) -> nn.Parameter:
        return self.blobs[self._param_key[weight_name]]

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except BatchNorm running statistics (for an optimizer)."""
        for key, param in self.blobs.items():
            if self.blob_kinds.get(key) not in STATISTICS:
                yield param

    def run(
        self,
        inputs: Mapping[str, torch.Tensor | np.ndarray],
        progress: Callable[[str], None] | None = None,
        after_layer: Callable[[Layer, dict[str, torch.Tensor]], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Forward pass returning every tensor (net inputs included) by its IR name.

        ``progress`` is called with each layer's name after the layer ran;
        ``after_layer(layer, values)`` may inspect or replace the layer's tops in ``values``
        before later layers read them (validation uses it to follow argmax near-ties).
        """
        values: dict[str, torch.Tensor] = {}
        for name in self.net.input_names:
            given = inputs[name]
            if isinstance(given, torch.Tensor):
                values[name] = given.to(torch.float32)  # keeps the autograd/trace graph
            else:
                values[name] = torch.as_tensor(np.asarray(given), dtype=torch.float32)
        for layer, handler in zip(self.net.layers, self._handlers):
            xs = [values[b] for b in layer.bottoms]
            ws = [self.blobs[self._param_key[n]] for n in layer.weight_names]
            outs = handler.to_torch(layer, xs, ws)
            for top, out in zip(layer.tops, outs):
                values[top] = out
            if after_layer is not None:
                after_layer(layer, values)
            if progress is not None:
                progress(layer.name)
        return values

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.net.input_names):
            raise TypeError(
                f"the net takes {len(self.net.input_names)} input(s) "
                f"({', '.join(self.net.input_names)}), got {len(inputs)}"
            )
        named = dict(zip(self.net.input_names, inputs))
        values = self.run(named)
        outs = tuple(values[name] for name in self.net.outputs)
        return outs[0] if len(outs) == 1 else outs


def build_module(net: Net, registry: Registry | None = None) -> CaffeNetModule:
    return CaffeNetModule(net, registry)
