"""The explicit registry of layer handlers: Caffe type string -> handler.

Handlers are registered by listing their modules in ``HANDLER_MODULES``; each module
exposes ``HANDLERS``, a list of handler instances. Registering a type twice is an error,
so a plugin cannot silently replace a built-in handler (``replace=True`` says it means to).
A registry also maps Caffe ``Python`` layers (``"module.Class"``) to layer types, so a
plugin can claim the Python layers it implements (:mod:`caffe2onnx.plugins`).
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
    "caffe2onnx.layers.flow",
)


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._python_layers: dict[str, str] = {}
        #: names of the plugins loaded into this registry (see caffe2onnx.plugins)
        self.plugins: list[str] = []

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

    def map_python_layer(self, key: str, layer_type: str) -> None:
        """Convert Caffe ``Python`` layers of ``key`` (``"module.Class"``, as in their
        ``python_param``) with the handler of ``layer_type``. An explicit mapping given to
        ``load_net`` (``--python-layer``) wins over this one."""
        module, dot, cls = key.rpartition(".")
        if not (module and dot and cls):
            raise ValueError(f"a Python layer is named module.Class, got {key!r}")
        self._python_layers[key] = layer_type

    def python_layer_map(self) -> dict[str, str]:
        """``"module.Class"`` of Python layers -> the layer type that converts them."""
        return dict(self._python_layers)

    def copy(self) -> Registry:
        """An independent registry with the same handlers and Python layer mappings."""
        other = Registry()
        other._handlers = dict(self._handlers)
        other._python_layers = dict(self._python_layers)
        other.plugins = list(self.plugins)
        return other


_DEFAULT: Registry | None = None


def builtin_registry() -> Registry:
    """A new registry holding the built-in handlers only."""
    registry = Registry()
    for module_name in HANDLER_MODULES:
        module = importlib.import_module(module_name)
        registry.register_all(module.HANDLERS)
    return registry


def default_registry() -> Registry:
    """The process-wide registry: the built-in handlers (created on first use) plus the
    plugins loaded into it (:func:`caffe2onnx.plugins.load_plugins`)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = builtin_registry()
    return _DEFAULT


def reset_default_registry() -> None:
    """Forget the plugins loaded into the default registry (for tests)."""
    global _DEFAULT
    _DEFAULT = None
