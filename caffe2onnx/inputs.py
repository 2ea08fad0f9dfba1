"""Inputs for validation: seeded random tensors or real data with Caffe-style preprocessing.

A file input is ``.npy`` (one array), ``.npz`` (the array named like the net input, or
its only array) or an image (``.png``, ``.jpg``, ... read with Pillow, which comes with
matplotlib). Arrays must have the net input's shape, or its shape without the batch axis
(one sample, repeated over the batch). Images are resized to the input's height and width,
read as grey when the input has 1 channel and as RGB when it has 3, and kept in 0..255 as
Caffe's image data layers do.

Preprocessing follows Caffe's ``transform_param`` and applies to file inputs only (random
inputs are already centred): ``bgr`` reverses the channel axis (RGB files for nets trained
on OpenCV-loaded BGR images), then ``mean`` is subtracted (per-channel values in the
net's channel order, or a ``.npy``/``.binaryproto`` mean image; a mean image of another
size is reduced to its per-channel means, as Caffe's ``classify.py`` does), then the
result is multiplied by ``scale``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffe2onnx.errors import Caffe2OnnxError
from caffe2onnx.ir import Net, Shape

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ValidationInputError(Caffe2OnnxError):
    """Inputs that do not fit the net or the ONNX model (exit code 2)."""


@dataclass(frozen=True)
class Preprocess:
    """Caffe ``transform_param``-style preprocessing of file inputs."""

    mean: np.ndarray | None = None
    scale: float = 1.0
    bgr: bool = False

    def apply(self, array: np.ndarray, what: str) -> tuple[np.ndarray, list[str]]:
        """Preprocess an ``N x C x ...`` array; returns it and notes."""
        notes: list[str] = []
        x = array.astype(np.float32)
        if self.bgr:
            if x.ndim < 2:
                raise ValidationInputError(
                    f"{what}: --bgr needs a channel axis, the input is {fmt_shape(x.shape)}"
                )
            x = x[:, ::-1]
        if self.mean is not None:
            mean, note = _fit_mean(self.mean, x.shape, what)
            if note:
                notes.append(note)
            x = x - mean
        if self.scale != 1.0:
            x = x * np.float32(self.scale)
        return np.ascontiguousarray(x, dtype=np.float32), notes

    @property
    def active(self) -> bool:
        return self.bgr or self.mean is not None or self.scale != 1.0


def fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def random_feed(inputs: Sequence[tuple[str, Shape]], seed: int) -> dict[str, np.ndarray]:
    """Seeded standard-normal arrays for the given ``(name, shape)`` inputs."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in inputs}


def parse_mean(text: str) -> np.ndarray:
    """``"104,117,123"`` (per channel), a ``.npy`` array or a Caffe ``.binaryproto`` mean."""
    path = Path(text)
    if path.suffix.lower() in (".npy", ".binaryproto") or path.is_file():
        if not path.is_file():
            raise ValidationInputError(f"--mean: no such file {text}")
        if path.suffix.lower() == ".npy":
            return np.load(path).astype(np.float32)
        return _read_binaryproto(path)
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values:
        raise ValidationInputError(
            f"--mean: expected per-channel values like 104,117,123 or a .npy/.binaryproto file, got {text!r}"
        )
    return np.asarray(values, dtype=np.float32)


def _read_binaryproto(path: Path) -> np.ndarray:
    from caffe2onnx.proto import caffe_pb2

    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError or others on garbage
        raise ValidationInputError(f"--mean: {path} is not a Caffe BlobProto: {exc}") from exc
    data = np.asarray(blob.double_data or blob.data, dtype=np.float32)
    if blob.shape.dim:
        shape = tuple(blob.shape.dim)
    else:
        shape = tuple(d for d in (blob.num, blob.channels, blob.height, blob.width))
    if int(np.prod(shape)) != data.size or data.size == 0:
        raise ValidationInputError(f"--mean: {path} holds {data.size} values for shape {fmt_shape(shape)}")
    return data.reshape(shape)


def _fit_mean(mean: np.ndarray, shape: Shape, what: str) -> tuple[np.ndarray, str]:
    """Broadcastable mean for an ``N x C x ...`` input, and a note when it was reduced."""
    channels = shape[1]
    m = np.asarray(mean, dtype=np.float32)
    while m.ndim > 1 and m.shape[0] == 1 and m.ndim > len(shape) - 1:
        m = m[0]
    if m.ndim <= 1:
        if m.size not in (1, channels):
            raise ValidationInputError(
                f"{what}: --mean has {m.size} values but the input has {channels} channels"
            )
        return m.reshape(1, -1, *([1] * (len(shape) - 2))), ""
    if m.shape[0] != channels:
        raise ValidationInputError(
            f"{what}: the mean image is {fmt_shape(m.shape)} but the input is {fmt_shape(shape)} "
            f"({channels} channels)"
        )
    if tuple(m.shape) == tuple(shape[1:]):
        return m[None], ""
    per_channel = m.reshape(channels, -1).mean(axis=1)
    note = (
        f"{what}: the mean image is {fmt_shape(m.shape)}, the input {fmt_shape(shape[1:])}: "
        "subtracted its per-channel means"
    )
    return per_channel.reshape(1, -1, *([1] * (len(shape) - 2))), note


def read_input_file(path: str | os.PathLike[str], name: str, shape: Shape) -> tuple[np.ndarray, list[str]]:
    """An ``.npy``/``.npz``/image file as an array of exactly ``shape`` (before preprocessing)."""
    path = Path(path)
    what = f"input '{name}'"
    if not path.is_file():
        raise ValidationInputError(f"{what}: no such file {path}")
    suffix = path.suffix.lower()
    notes: list[str] = []
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if name in keys:
                array = archive[name]
            elif len(keys) == 1:
                array = archive[keys[0]]
            else:
                raise ValidationInputError(
                    f"{what}: {path} holds arrays {', '.join(keys)} but none is named '{name}'"
                )
    elif suffix in IMAGE_SUFFIXES:
        array, notes = _read_image(path, what, shape)
    else:
        raise ValidationInputError(
            f"{what}: {path} is neither .npy, .npz nor an image ({', '.join(IMAGE_SUFFIXES)})"
        )
    return _fit_batch(np.asarray(array), shape, f"{what} from {path}", notes), notes


def _read_image(path: Path, what: str, shape: Shape) -> tuple[np.ndarray, list[str]]:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow comes with matplotlib
        raise ValidationInputError("reading images needs Pillow: pip install pillow") from exc
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise ValidationInputError(
            f"{what}: the net input is {fmt_shape(shape)}; an image fits only an N x 1 x H x W or "
            "N x 3 x H x W input (give a .npy file instead)"
        )
    height, width = shape[2], shape[3]
    try:
        with Image.open(path) as image:
            image = image.convert("L" if shape[1] == 1 else "RGB")
            notes = []
            if image.size != (width, height):
                notes.append(
                    f"{what}: resized {path.name} from {image.size[1]}x{image.size[0]} to {height}x{width}"
                )
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32)
    except OSError as exc:
        raise ValidationInputError(f"{what}: cannot read image {path}: {exc}") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return pixels.transpose(2, 0, 1), notes


def _fit_batch(array: np.ndarray, shape: Shape, what: str, notes: list[str]) -> np.ndarray:
    if tuple(array.shape) == tuple(shape):
        return array
    if tuple(array.shape) == tuple(shape[1:]):
        if shape[0] > 1:
            notes.append(f"{what}: one sample, repeated over the batch of {shape[0]}")
        return np.repeat(array[None], shape[0], axis=0)
    hint = ""
    if len(array.shape) == len(shape) and tuple(array.shape[1:]) == tuple(shape[1:]):
        hint = f" (pass --batch {array.shape[0]} to validate with {array.shape[0]} samples)"
    raise ValidationInputError(
        f"{what}: the file holds {fmt_shape(array.shape)} but the Caffe net expects {fmt_shape(shape)}{hint}"
    )


def build_feeds(
    net: Net,
    files: Mapping[str, str | os.PathLike[str] | np.ndarray] | None,
    *,
    seeds: Sequence[int],
    preprocess: Preprocess | None = None,
) -> tuple[list[dict[str, np.ndarray]], dict[str, str], list[str]]:
    """One feed per seed; inputs given in ``files`` (paths or arrays) are the same in each.

    Returns the feeds, a description of each input's source and notes. An input named
    in ``files`` that the net does not have is an error naming the net's inputs.
    """
    files = dict(files or {})
    shapes = dict(net.inputs)
    if None in files or "" in files:
        if len(shapes) != 1:
            raise ValidationInputError(
                f"the net has {len(shapes)} inputs ({', '.join(shapes)}): name the input as NAME=FILE"
            )
        files[next(iter(shapes))] = files.pop(None, None) or files.pop("")
    unknown = [name for name in files if name not in shapes]
    if unknown:
        raise ValidationInputError(
            f"--input {', '.join(unknown)}: the Caffe net has no such input; its inputs are "
            + ", ".join(f"{n} ({fmt_shape(s)})" for n, s in net.inputs)
        )
    notes: list[str] = []
    fixed: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for name, given in files.items():
        shape = shapes[name]
        if isinstance(given, np.ndarray) or not isinstance(given, (str, os.PathLike)):
            array = np.asarray(given)
            array = _fit_batch(array, shape, f"input '{name}'", notes)
            sources[name] = f"array {fmt_shape(array.shape)}"
        else:
            array, file_notes = read_input_file(given, name, shape)
            notes.extend(file_notes)
            sources[name] = os.fspath(given)
            if preprocess is not None and preprocess.active:
                array, more = preprocess.apply(array, f"input '{name}'")
                notes.extend(more)
        fixed[name] = np.ascontiguousarray(array, dtype=np.float32)
    random_inputs = [(name, shape) for name, shape in net.inputs if name not in fixed]
    for name, _ in random_inputs:
        sources[name] = "random normal, seed " + ", ".join(str(s) for s in seeds)
    if not random_inputs and len(seeds) > 1:
        notes.append("every input comes from a file: the inputs were run once, not once per seed")
        seeds = seeds[:1]
    feeds = [{**random_feed(random_inputs, seed), **fixed} for seed in seeds]
    ordered = [{name: feed[name] for name, _ in net.inputs} for feed in feeds]
    return ordered, sources, notes
