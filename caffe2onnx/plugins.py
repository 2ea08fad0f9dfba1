"""Custom layers: plugins that teach caffe2onnx a fork's or your own layer types.

A plugin is a Python module (or an entry point, see below) that provides *handlers*:
subclasses of :class:`caffe2onnx.layers.base.Handler`, exactly what the built-in layer
families are. A handler gives, for the Caffe layer types it names in ``types``:

* ``parse(lp)``: the layer's parameters from its ``LayerParameter`` (any ``*_param``
  message caffe2onnx's ``caffe.proto`` knows, or a Python layer's
  ``python_param.param_str``), as a frozen dataclass; bad values raise
  ``layer_error(lp, "...")``;
* ``infer(layer, in_shapes)``: the output shapes (raise ``shape_error(layer, "...")``);
  the default keeps the first input's shape;
* ``blobs(layer, in_shapes)``: the parameter blobs it expects from the caffemodel, in
  Caffe's order (``BlobSpec(role, shape, filler, init)``); the default is none;
* ``to_onnx(layer, g)``: the ONNX nodes, through the ``GraphBuilder`` ``g`` (``g.op``,
  ``g.const``, ``g.weight(layer, i)``, ``g.opset``; the tensor names are
  ``layer.bottoms`` and ``layer.tops``); required;
* ``to_torch(layer, inputs, weights)``: the PyTorch reference that ``validate`` checks
  the ONNX model against (import torch *inside* it).

The plugin module exposes

* ``HANDLERS``: a list of handler instances (required, unless ``register`` is given);
* ``PYTHON_LAYERS`` (optional): ``{"module.Class": "LayerType"}``: Caffe ``Python``
  layers whose ``python_param`` names ``module`` and ``layer: "Class"`` are converted by
  the handler of ``LayerType`` (a built-in or a plugin type);
* ``REPLACE`` (optional): layer types of built-in handlers the plugin overrides on
  purpose (``True`` for all of its types); otherwise taking a type that is already
  handled is an error;
* or ``register(registrar)``: a function that calls ``registrar.register(handler,
  replace=False)`` and ``registrar.map_python_layer("module.Class", "LayerType")``.

Load plugins with :func:`load_plugins` (the CLI's ``--plugin my_module``, repeatable;
a path to a ``.py`` file works too). Installed packages can declare plugins in the
entry-point group ``caffe2onnx.plugins`` (pyproject.toml)::

    [project.entry-points."caffe2onnx.plugins"]
    my_layers = "my_package.caffe_layers"            # a module as above
    # or: my_layers = "my_package.caffe_layers:register"

:func:`load_plugins` loads every installed entry point too (``entry_points=True``).
Plugins register into the default registry, which ``load_net``, ``convert``,
``validate`` and ``to_torch`` use, or into the ``registry`` given (pass the same
registry to ``load_net``, ``to_onnx`` and ``build_module``).

A plugin's handler that fails with anything but a :class:`Caffe2OnnxError` is reported
as a :class:`PluginError` naming the plugin, the handler and the layer (exit code 2;
``--debug`` shows the plugin's traceback). A layer's parameters must be fields the
schema knows: a fork's own ``*_param`` block is an "unknown field" parse error, so
custom layers take their parameters from existing ``*_param`` messages or are written
as Python layers with a ``param_str``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from caffe2onnx.errors import Caffe2OnnxError, PluginError, PluginLayerError
from caffe2onnx.layers.base import Handler
from caffe2onnx.layers.registry import Registry, default_registry

ENTRY_POINT_GROUP = "caffe2onnx.plugins"


def load_plugins(
    names: Iterable[str] = (), registry: Registry | None = None, *, entry_points: bool = True
) -> Registry:
    """Load the plugins ``names`` (module names or ``.py`` paths) and, with
    ``entry_points``, every installed ``caffe2onnx.plugins`` entry point, into
    ``registry`` (default: the default registry). Loading a plugin twice into the same
    registry is a no-op. Returns the registry."""
    registry = registry if registry is not None else default_registry()
    for name in names:
        load_plugin(name, registry)
    if entry_points:
        load_entry_points(registry)
    return registry


def load_plugin(name: str, registry: Registry | None = None) -> list[str]:
    """Import one plugin module (a module name or a path to a ``.py`` file) and register
    its handlers; return the layer types it registered."""
    registry = registry if registry is not None else default_registry()
    if _is_path(name):
        name = os.path.abspath(name)
    if name in registry.plugins:
        return []
    module = _import(name)
    return _install(name, module, registry)


def load_entry_points(registry: Registry | None = None) -> list[str]:
    """Load every installed plugin of the entry-point group ``caffe2onnx.plugins``."""
    registry = registry if registry is not None else default_registry()
    added: list[str] = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        label = f"{entry.name} (entry point {entry.value})"
        if label in registry.plugins:
            continue
        try:
            target = entry.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {label} cannot be loaded: {type(exc).__name__}: {exc} "
                "(run with --debug for the traceback)"
            ) from exc
        added.extend(_install(label, target, registry))
    return added


def plugin_handler(handler: Handler, plugin: str) -> Handler:
    """``handler`` wrapped so that its unexpected exceptions become PluginErrors."""
    return _PluginHandler(handler, plugin)


# ----------------------------------------------------------------------------- importing


def _is_path(name: str) -> bool:
    return name.endswith(".py") or os.sep in name


def _import(name: str) -> types.ModuleType:
    path = name if _is_path(name) else None
    try:
        if path is not None:
            return _import_file(name, path)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            local = os.path.join(os.getcwd(), *name.split(".")) + ".py"
            if exc.name == name.split(".")[0] and os.path.isfile(local):
                return _import_file(name, local)
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                raise PluginError(
                    f"cannot import plugin '{name}': no module named '{exc.name}'. Give an importable "
                    "module (on PYTHONPATH or in the current directory) or the path to a .py file"
                ) from None
            raise
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin '{name}' failed to import: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback)"
        ) from exc


def _import_file(name: str, path: str) -> types.ModuleType:
    if not os.path.isfile(path):
        raise PluginError(f"cannot import plugin '{name}': {path} is not a file")
    path = os.path.abspath(path)
    module_name = os.path.splitext(os.path.basename(path))[0]
    existing = sys.modules.get(module_name)
    if existing is not None:
        if getattr(existing, "__file__", None) == path:
            return existing
        module_name = f"caffe2onnx_plugin_{zlib.crc32(path.encode()):08x}_{module_name}"  # no shadowing
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin '{name}': {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


# ----------------------------------------------------------------------------- registering


class Registrar:
    """What a plugin's ``register(registrar)`` function receives: it checks every handler
    and registers it only when the whole plugin is fine."""

    def __init__(self, plugin: str, registry: Registry, replace: Iterable[str] | bool = ()) -> None:
        self.plugin = plugin
        self._registry = registry
        self._replace = replace
        self._handlers: list[tuple[Handler, bool]] = []
        self._python: dict[str, str] = {}

    def register(self, handler: Handler, *, replace: bool = False) -> None:
        """Register a handler instance (a Handler subclass is instantiated)."""
        if isinstance(handler, type) and issubclass(handler, Handler):
            try:
                handler = handler()
            except Exception as exc:
                raise PluginError(
                    f"plugin '{self.plugin}': cannot instantiate {handler.__name__}: {exc}"
                ) from exc
        _check_handler(handler, self.plugin)
        self._handlers.append((handler, replace))

    def register_all(self, handlers: Iterable[Handler], *, replace: bool = False) -> None:
        for handler in handlers:
            self.register(handler, replace=replace)

    def map_python_layer(self, key: str, layer_type: str) -> None:
        """Convert Caffe Python layers of ``key`` ("module.Class") as ``layer_type``."""
        if not isinstance(key, str) or not isinstance(layer_type, str):
            raise PluginError(f"plugin '{self.plugin}': PYTHON_LAYERS maps strings to strings, got {key!r}")
        module, _, cls = key.rpartition(".")
        if not module or not cls:
            raise PluginError(
                f"plugin '{self.plugin}': Python layer key {key!r} must be module.Class "
                "(python_param's module and layer)"
            )
        self._python[key] = layer_type

    def commit(self) -> list[str]:
        """Check for conflicts, then register everything; return the new layer types."""
        ours: dict[str, Handler] = {}
        for handler, replace in self._handlers:
            for layer_type in handler.types:
                if layer_type in ours:
                    raise PluginError(
                        f"plugin '{self.plugin}' registers layer type '{layer_type}' twice "
                        f"({type(ours[layer_type]).__name__} and {type(handler).__name__})"
                    )
                ours[layer_type] = handler
                allowed = replace or self._replace is True or layer_type in (self._replace or ())
                existing = self._registry.get(layer_type)
                if existing is not None and not allowed:
                    owner = getattr(existing, "plugin", "built-in")
                    raise PluginError(
                        f"plugin '{self.plugin}' registers layer type '{layer_type}', which is already "
                        f"handled by {_handler_name(existing)} ({owner}); add '{layer_type}' to the "
                        "plugin's REPLACE to override it on purpose"
                    )
        for key, layer_type in self._python.items():
            if layer_type not in ours and layer_type not in self._registry:
                raise PluginError(
                    f"plugin '{self.plugin}' maps Python layer {key} to type '{layer_type}', which no "
                    "handler serves (neither built-in nor in the plugin)"
                )
        for handler, _ in self._handlers:
            self._registry.register(_PluginHandler(handler, self.plugin), replace=True)
        for key, layer_type in self._python.items():
            self._registry.map_python_layer(key, layer_type)
        self._registry.plugins.append(self.plugin)
        return sorted(ours)


def _install(name: str, target: Any, registry: Registry) -> list[str]:
    if isinstance(target, types.ModuleType):
        replace = getattr(target, "REPLACE", ())
        if isinstance(replace, str):
            replace = (replace,)
        registrar = Registrar(name, registry, replace)
        register = getattr(target, "register", None)
        handlers = getattr(target, "HANDLERS", None)
        if handlers is None and not callable(register):
            raise PluginError(
                f"plugin '{name}' defines neither HANDLERS (a list of Handler instances) nor "
                "register(registrar); see caffe2onnx.plugins"
            )
        if handlers is not None:
            if isinstance(handlers, (str, bytes)) or not isinstance(handlers, Iterable):
                raise PluginError(f"plugin '{name}': HANDLERS must be a list of Handler instances")
            registrar.register_all(handlers)
        python_layers = getattr(target, "PYTHON_LAYERS", {}) or {}
        if not isinstance(python_layers, Mapping):
            raise PluginError(f"plugin '{name}': PYTHON_LAYERS must be a dict {{'module.Class': 'Type'}}")
        for key, layer_type in python_layers.items():
            registrar.map_python_layer(key, layer_type)
        if callable(register):
            _call_register(name, register, registrar)
        return registrar.commit()
    if callable(target):
        registrar = Registrar(name, registry)
        _call_register(name, target, registrar)
        return registrar.commit()
    raise PluginError(f"plugin '{name}' is neither a module nor a register(registrar) function")


def _call_register(name: str, register: Callable[[Registrar], Any], registrar: Registrar) -> None:
    try:
        register(registrar)
    except Caffe2OnnxError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin '{name}': register() failed: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback)"
        ) from exc


def _handler_name(handler: Handler) -> str:
    return type(getattr(handler, "wrapped", handler)).__name__


def _check_handler(handler: Any, plugin: str) -> None:
    name = type(handler).__name__
    if not isinstance(handler, Handler):
        raise PluginError(
            f"plugin '{plugin}': {handler!r} is not a handler; handlers subclass "
            "caffe2onnx.layers.base.Handler"
        )
    layer_types = handler.types
    if (
        isinstance(layer_types, str)
        or not isinstance(layer_types, (tuple, list))
        or not layer_types
        or not all(isinstance(t, str) and t for t in layer_types)
    ):
        raise PluginError(
            f"plugin '{plugin}': {name}.types must be a non-empty tuple of Caffe type names, "
            f"got {layer_types!r}"
        )
    for what in ("bottoms", "tops"):
        value = getattr(handler, what)
        if not (
            isinstance(value, tuple)
            and len(value) == 2
            and isinstance(value[0], int)
            and value[0] >= 0
            and (value[1] is None or (isinstance(value[1], int) and value[1] >= value[0]))
        ):
            raise PluginError(
                f"plugin '{plugin}': {name}.{what} must be (min, max) with max None for any, got {value!r}"
            )
    if type(handler).to_onnx is Handler.to_onnx:
        raise PluginError(f"plugin '{plugin}': {name} does not implement to_onnx(layer, g)")


# ----------------------------------------------------------------------------- the wrapper


class _PluginHandler(Handler):
    """A plugin's handler: the same hooks, but a failure other than a Caffe2OnnxError is
    reported as a PluginError naming the plugin, the handler and the layer."""

    def __init__(self, handler: Handler, plugin: str) -> None:
        self.wrapped = handler
        self.plugin = f"plugin '{plugin}'"
        self.types = tuple(handler.types)
        self.bottoms = handler.bottoms
        self.tops = handler.tops

    def __getattr__(self, name: str) -> Any:
        if name == "wrapped":
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def _call(self, hook: str, layer: Any, *args: Any) -> Any:
        try:
            return getattr(self.wrapped, hook)(layer, *args)
        except Caffe2OnnxError:
            raise
        except NotImplementedError as exc:
            if hook == "to_torch":
                raise PluginLayerError(
                    layer.name,
                    layer.type,
                    f"the handler {_handler_name(self)} of {self.plugin} has no PyTorch reference "
                    "(to_torch), which validation needs",
                ) from exc
            raise self._failure(hook, layer, exc) from exc
        except Exception as exc:
            raise self._failure(hook, layer, exc) from exc

    def _failure(self, hook: str, layer: Any, exc: Exception) -> PluginLayerError:
        return PluginLayerError(
            layer.name,
            layer.type,
            f"the handler {_handler_name(self)} of {self.plugin} failed in {hook}(): "
            f"{type(exc).__name__}: {exc}. This is a bug in the plugin or a parameter it does not "
            "check (run with --debug for the traceback)",
        )

    def parse(self, lp):
        return self._call("parse", lp)

    def resolve(self, layer, producers):
        return self._call("resolve", layer, producers)

    def infer(self, layer, in_shapes):
        return self._call("infer", layer, in_shapes)

    def blobs(self, layer, in_shapes):
        return self._call("blobs", layer, in_shapes)

    def to_onnx(self, layer, g):
        return self._call("to_onnx", layer, g)

    def to_torch(self, layer, inputs, weights):
        return self._call("to_torch", layer, inputs, weights)


__all__ = [
    "ENTRY_POINT_GROUP",
    "Registrar",
    "load_entry_points",
    "load_plugin",
    "load_plugins",
    "plugin_handler",
]
