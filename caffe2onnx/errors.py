"""Error types of caffe2onnx.

Every failure the library anticipates is raised as a subclass of
:class:`Caffe2OnnxError`, whose message says *what* is wrong, *where* (file, line,
layer) and, where possible, *what to do*. The CLI prints the message and exits with
the error's ``exit_code`` (2 for bad input or unsupported layers, 1 for a numeric
mismatch); only ``--debug`` shows a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class Caffe2OnnxError(Exception):
    """Base class of all errors caffe2onnx raises on purpose."""

    exit_code: int = 2


class ParseError(Caffe2OnnxError):
    """A prototxt or caffemodel that cannot be read, with its location."""

    def __init__(
        self,
        message: str,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        where = path or "<string>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")


class NetDefinitionError(Caffe2OnnxError):
    """The net is syntactically fine but its structure is wrong (bottoms, cycles, ...)."""


def _location(path: str | None, line: int | None) -> str:
    if not path:
        return ""
    return f"{path}:{line}: " if line is not None else f"{path}: "


class LayerError(Caffe2OnnxError):
    """A problem with one layer: bad parameters, shapes or blobs.

    The parser adds the prototxt and the line of the layer (:meth:`locate`), so the
    message reads ``net.prototxt:12: layer 'conv1' (Convolution): ...``.
    """

    def __init__(
        self,
        layer_name: str,
        layer_type: str,
        message: str,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        self.layer_name = layer_name
        self.layer_type = layer_type
        self.detail = message
        self.path = path
        self.line = line
        super().__init__(self._text())

    def _text(self) -> str:
        where = _location(self.path, self.line)
        return f"{where}layer '{self.layer_name}' ({self.layer_type}): {self.detail}"

    def locate(self, path: str | None, line: int | None = None) -> LayerError:
        """Add the file (and line) of the layer to the message, unless it has one; return self."""
        if path and not self.path:
            self.path = path
            self.line = line
            self.args = (self._text(), *self.args[1:])
        return self


class ShapeError(LayerError):
    """Shape inference failed for a layer."""


class WeightError(LayerError):
    """Blobs missing, of the wrong count or of the wrong shape for a layer."""


class UnsupportedLayersError(Caffe2OnnxError):
    """One or more layer types have no handler. Lists every one at once."""

    def __init__(self, by_type: Mapping[str, Sequence[str]], hint: str = "", path: str | None = None) -> None:
        self.by_type = {t: list(names) for t, names in by_type.items()}
        self.path = path
        lines = [f"{_location(path, None)}{len(self.by_type)} unsupported layer type(s):"]
        for layer_type, names in sorted(self.by_type.items()):
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            lines.append(f"  {layer_type}: {shown}")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class RandomFillerError(Caffe2OnnxError):
    """Blobs are missing and their fillers are random; refuses to invent weights."""

    def __init__(self, layers: Sequence[tuple[str, str, str]], caffemodel: str | None = None) -> None:
        self.layers = list(layers)
        if caffemodel:
            head = (
                f"{len(self.layers)} layer(s) have no blobs in the caffemodel {caffemodel} "
                "and no deterministic filler in the prototxt:"
            )
        else:
            head = (
                f"{len(self.layers)} layer(s) need weights (no caffemodel given) and their "
                "prototxt filler is random or absent:"
            )
        lines = [head]
        for name, layer_type, filler in self.layers[:20]:
            lines.append(f"  {name} ({layer_type}): filler '{filler}'")
        if len(self.layers) > 20:
            lines.append(f"  ... and {len(self.layers) - 20} more")
        lines.append(
            "Give the trained .caffemodel that matches this prototxt, or pass "
            "--random-weights SEED to check the structure with seeded random weights."
        )
        super().__init__("\n".join(lines))


class ValidationMismatch(Caffe2OnnxError):
    """The ONNX model and the reference disagree beyond tolerance."""

    exit_code = 1


class OutputError(Caffe2OnnxError):
    """The output file cannot be written."""


class PluginError(Caffe2OnnxError):
    """A plugin (``--plugin`` module or ``caffe2onnx.plugins`` entry point) cannot be loaded,
    declares a bad handler, or its handler failed on a layer."""


class PluginLayerError(LayerError, PluginError):
    """A plugin's handler failed on a layer (the message names the plugin and the layer)."""
