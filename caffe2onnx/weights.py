"""Give every layer its parameter blobs: from the caffemodel, a filler, or seeded random.

Caffe semantics: blobs are matched by layer name; the count must equal what the layer
expects and each blob must have the expected shape, where legacy 4-D shapes
(``1x1xNxK`` for an InnerProduct weight) are accepted when they only add 1-dims
(Blob::ShapeEquals). A layer missing from the caffemodel keeps its filler values.

caffe2onnx fills a missing layer only from *deterministic* fillers written in the
prototxt (``constant``, ``bilinear``); random fillers are refused, all layers named at
once, unless seeded random weights are asked for (``--random-weights SEED``). The random
weights are fan-in scaled (activations stay O(1) through deep nets) with sane
BatchNorm statistics, the same generator ``make-weights`` uses.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from caffe2onnx.caffemodel import CaffeModel
from caffe2onnx.errors import Caffe2OnnxError, RandomFillerError, WeightError
from caffe2onnx.ir import BlobSpec, Filler, Layer, Shape
from caffe2onnx.layers.registry import Registry


def bilinear_kernel(shape: Shape) -> np.ndarray:
    """Caffe's bilinear filler (BVLC master, fixed 2017): the same K x K kernel everywhere."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"the bilinear filler needs a 4-D blob with a square kernel, got {list(shape)}")
    k = shape[3]
    f = np.ceil(k / 2.0)
    c = (k - 1) / (2.0 * f)
    x = np.arange(k, dtype=np.float64)
    profile = 1 - np.abs(x / f - c)
    kernel = np.outer(profile, profile).astype(np.float32)
    return np.broadcast_to(kernel, shape).copy()


def fill(filler: Filler, shape: Shape) -> np.ndarray:
    """Values of a deterministic filler."""
    if filler.type == "constant":
        return np.full(shape, filler.value, dtype=np.float32)
    if filler.type == "bilinear":
        return bilinear_kernel(shape)
    raise ValueError(f"filler '{filler.type}' is random")


def _uniform(rng: np.random.Generator, shape: Shape, low: float, high: float) -> np.ndarray:
    """float32 uniform values in [low, high), drawn and scaled in place (no float64 copy)."""
    values = rng.random(shape, dtype=np.float32)
    values *= np.float32(high - low)
    values += np.float32(low)
    return values


def _normal(rng: np.random.Generator, shape: Shape, std: float) -> np.ndarray:
    values = rng.standard_normal(shape, dtype=np.float32)
    values *= np.float32(std)
    return values


def random_blob(spec: BlobSpec, rng: np.random.Generator) -> np.ndarray:
    """A sane random value for one blob, by its role (see BlobSpec.init).

    Weights (``fan_in``) are He-uniform: uniform in ``±sqrt(6 / fan_in)``, whose standard
    deviation ``sqrt(2 / fan_in)`` keeps activations O(1) through deep ReLU nets. Every
    draw is float32 and scaled in place, so a VGG16-size net takes about a second.
    """
    shape = spec.shape
    init = spec.init
    if init == "fan_in":
        limit = float(np.sqrt(6.0 / max(1, spec.fan_in)))
        return _uniform(rng, shape, -limit, limit)
    if init in ("bias", "beta", "bn_mean"):
        return _normal(rng, shape, 0.1)
    if init in ("gamma", "bn_var"):
        return _uniform(rng, shape, 0.5, 1.5)
    if init == "slope":
        return _uniform(rng, shape, 0.05, 0.3)
    if init in ("ones", "bn_factor"):  # bn_factor: set per layer by random_blobs
        return np.ones(shape, np.float32)
    if init == "zeros":
        return np.zeros(shape, np.float32)
    if init == "uniform":
        return _uniform(rng, shape, -1.0, 1.0)
    raise ValueError(f"unknown init kind {init!r}")


def random_blobs(
    layer_name: str, specs: Sequence[BlobSpec], seed: int, frozen: bool = False
) -> list[np.ndarray]:
    """Seeded random blobs for one layer; independent of the other layers' order.

    A bilinear filler is always used (FCN's fixed upsampling); in a ``frozen`` layer
    (lr_mult 0) every deterministic filler is, since training never changed those blobs."""
    rng = np.random.default_rng([seed, zlib.crc32(layer_name.encode())])
    blobs = []
    for spec in specs:
        fixed = spec.filler is not None and (
            spec.filler.type == "bilinear" or (frozen and spec.filler.deterministic)
        )
        if fixed:
            blobs.append(fill(spec.filler, spec.shape))
        else:
            blobs.append(random_blob(spec, rng))
    # BatchNorm stores mean and variance multiplied by a scale factor (blob 2).
    roles = [s.init for s in specs]
    if "bn_factor" in roles:
        factor = np.float32(rng.uniform(0.5, 2.0))
        for i, role in enumerate(roles):
            if role in ("bn_mean", "bn_var"):
                blobs[i] = blobs[i] * factor
            elif role == "bn_factor":
                blobs[i] = np.full(specs[i].shape, factor, np.float32)
    return blobs


def _deterministic_fill(specs: Sequence[BlobSpec]) -> list[np.ndarray] | None:
    """Blobs from the prototxt's fillers, or None if any needed filler is random/absent."""
    if not specs or specs[0].filler is None:
        return None
    blobs = []
    for spec in specs:
        if spec.filler is None and spec.init not in ("bias", "beta"):
            return None  # e.g. BN statistics: only a bias may take Caffe's default constant 0
        filler = spec.filler or Filler()
        if not filler.deterministic:
            return None
        blobs.append(fill(filler, spec.shape))
    return blobs


def _initializer_name(name: str, tensors: Mapping[str, Shape]) -> str:
    """An ONNX initializer name that no blob (tensor) of the net uses."""
    candidate = name
    while candidate in tensors:
        candidate = f"param:{candidate}"
    return candidate


def fill_or_fail(layer: Layer, make, *args):
    """``make(*args)``; a filler's ValueError (e.g. bilinear on a non-square kernel) becomes
    a WeightError naming the layer."""
    try:
        return make(*args)
    except ValueError as exc:
        raise WeightError(layer.name, layer.type, f"cannot fill the blobs: {exc}") from None


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in shape if d != 1)


def _match_blobs(layer: Layer, specs: Sequence[BlobSpec], found: Sequence[np.ndarray], path: str):
    if len(found) != len(specs):
        expected = ", ".join(f"{s.role} {list(s.shape)}" for s in specs) or "none"
        got = ", ".join(str(list(b.shape)) for b in found)
        raise WeightError(
            layer.name,
            layer.type,
            f"the caffemodel {path} has {len(found)} blob(s) [{got}] for this layer, "
            f"but it needs {len(specs)}: {expected}. Check that the prototxt matches the "
            "caffemodel (bias_term, layer type)",
        )
    result = []
    for i, (spec, blob) in enumerate(zip(specs, found)):
        if tuple(blob.shape) == tuple(spec.shape):
            result.append(blob)
        elif _squeezed(blob.shape) == _squeezed(spec.shape):
            result.append(blob.reshape(spec.shape))
        else:
            raise WeightError(
                layer.name,
                layer.type,
                f"blob {i} ({spec.role}) in the caffemodel has shape {list(blob.shape)}, "
                f"but the prototxt implies {list(spec.shape)}. Check num_output, kernel size, "
                "group and the input shape",
            )
    return result


def attach_weights(
    layers: Sequence[Layer],
    shapes: Mapping[str, Shape],
    registry: Registry,
    model: CaffeModel | None,
    random_seed: int | None,
) -> tuple[list[Layer], list[str]]:
    """Return the layers with ``weights`` set, plus notes on where weights came from."""
    notes: list[str] = []
    result: list[Layer] = []
    needs_random: list[tuple[str, str, str]] = []
    not_in_model: list[tuple[str, str, str]] = []
    shared: dict[str, tuple[np.ndarray, str]] = {}
    matched = 0
    wanting: list[str] = []
    for layer in layers:
        handler = registry.get(layer.type)
        assert handler is not None
        specs = handler.blobs(layer, [shapes[b] for b in layer.bottoms])
        if not specs:
            result.append(layer)
            continue
        source_name = layer.caffe_name or layer.name
        wanting.append(source_name)
        blobs: list[np.ndarray] | None = None
        origin = "none"
        if model is not None and source_name in model.blobs:
            blobs = _match_blobs(layer, specs, model.blobs[source_name], model.path)
            origin = "caffemodel"
            matched += 1
        if blobs is None:
            blobs = fill_or_fail(layer, _deterministic_fill, specs)
            origin = "filler" if blobs is not None else origin
        if blobs is None and random_seed is not None:
            blobs = fill_or_fail(layer, random_blobs, source_name, specs, random_seed, layer.frozen)
            origin = "random"
        if blobs is None:
            filler = specs[0].filler.type if specs[0].filler else "none given"
            entry = (layer.name, layer.type, filler)
            (not_in_model if model is not None else needs_random).append(entry)
            result.append(layer)
            continue
        names = []
        for i, blob in enumerate(blobs):
            param = layer.param_names[i] if i < len(layer.param_names) else ""
            if param:
                key = _initializer_name(param, shapes)
                if key in shared:
                    owner_blob, owner = shared[key]
                    if owner_blob.shape != blob.shape:
                        raise WeightError(
                            layer.name,
                            layer.type,
                            f"shares parameter '{param}' with layer '{owner}', but the shapes "
                            f"differ: {list(blob.shape)} vs {list(owner_blob.shape)}",
                        )
                    blob = owner_blob
                else:
                    shared[key] = (blob, layer.name)
                names.append(key)
            else:
                names.append(_initializer_name(f"{layer.name}/{specs[i].role}", shapes))
            blobs[i] = blob
        result.append(layer.with_(weights=tuple(blobs), weight_names=tuple(names), weights_from=origin))
    if model is not None and wanting and matched == 0 and model.blobs:
        sample = ", ".join(sorted(model.blobs)[:6])
        raise Caffe2OnnxError(
            f"{model.path}: none of the caffemodel's layer names ({sample}, ...) match a layer "
            f"of the net that needs weights ({', '.join(wanting[:6])}, ...). Is this the "
            "caffemodel of another net?"
        )
    if not_in_model:
        raise RandomFillerError(not_in_model, caffemodel=model.path if model else None)
    if needs_random:
        raise RandomFillerError(needs_random)
    counts: dict[str, int] = {}
    for layer in result:
        if layer.weights:
            counts[layer.weights_from] = counts.get(layer.weights_from, 0) + 1
    if counts.get("filler"):
        notes.append(f"{counts['filler']} layer(s) filled from deterministic prototxt fillers")
    if counts.get("random"):
        notes.append(f"{counts['random']} layer(s) given seeded random weights (seed {random_seed})")
    return result, notes
