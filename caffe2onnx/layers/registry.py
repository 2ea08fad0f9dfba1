"""The explicit registry of layer handlers: Caffe type string -> handler.

Handlers are registered by listing their modules in ``HANDLER_MODULES``; each module
exposes ``HANDLERS``, a list of handler instances. Registering a type twice is an error,
so a plugin cannot silently replace a built-in handler (``replace=True`` says it means to).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from caffe2onnx.layers.base import Handler

HANDLER_MODULES = (
    "caffe2onnx.layers.conv",
    "caffe2onnx.layers.inner_product",
    "caffe2onnx.layers.activation",
    "caffe2onnx.layers.pooling",
    "caffe2onnx.layers.normalization",
    "caffe2onnx.layers.elementwise",
    "caffe2onnx.layers.shape_ops",
    "caffe2onnx.layers.reduction",
    "caffe2onnx.layers.resize",
    "caffe2onnx.layers.unpooling",
    "caffe2onnx.layers.crop",
    "caffe2onnx.layers.ssd",
    "caffe2onnx.layers.channel_ops",
    "caffe2onnx.layers.roi_pooling",
)


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, handler: Handler, *, replace: bool = False) -> None:
        if not handler.types:
            raise ValueError(f"{type(handler).__name__} declares no layer types")
        for layer_type in handler.types:
            if layer_type in self._handlers and not replace:
                existing = type(self._handlers[layer_type]).__name__
                raise ValueError(
                    f"layer type '{layer_type}' is already handled by {existing}; "
                    "pass replace=True to override it"
                )
            self._handlers[layer_type] = handler

    def register_all(self, handlers: Iterable[Handler], *, replace: bool = False) -> None:
        for handler in handlers:
            self.register(handler, replace=replace)

    def get(self, layer_type: str) -> Handler | None:
        return self._handlers.get(layer_type)

    def __contains__(self, layer_type: str) -> bool:
        return layer_type in self._handlers

    def types(self) -> list[str]:
        return sorted(self._handlers)

    def items(self) -> list[tuple[str, Handler]]:
        return sorted(self._handlers.items())


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The registry of built-in handlers (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        registry = Registry()
        for module_name in HANDLER_MODULES:
            module = importlib.import_module(module_name)
            registry.register_all(module.HANDLERS)
        _DEFAULT = registry
    return _DEFAULT
