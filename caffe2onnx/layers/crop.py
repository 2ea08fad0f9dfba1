"""Crop, with explicit offsets or offsets derived from the coordinate maps (FCN, HED).

Caffe semantics (spec 3.4): two bottoms, the data and a reference whose *shape* only is
used; one top. ``crop_param.axis`` (default 2, negative counts from the end) is the first
cropped axis: axes before it keep the data's size, axes from it on take the reference's
size. ``offset``: none means 0, one value applies to every cropped axis, otherwise exactly
one per cropped axis. Caffe checks ``data[i] - offset[i] >= ref[i]`` on every cropped axis.
``top = data[..., off_i : off_i + ref_i, ...]``.

Without ``crop_param`` (HED, and FCN as written for the 2015 Caffe fork, e.g. the
DeconvNet repository's V1 ``CROP``), that fork's Crop layer derived the offsets of the
two spatial axes itself; modern BVLC Caffe would use offset 0 instead. We follow the fork,
since those nets were trained with it, using ``python/caffe/coord_map.py``'s rules (spec
3.3): every layer maps a bottom coordinate ``x`` to a top coordinate ``y = a*x + b`` per
spatial axis (Convolution/Pooling ``a = 1/s, b = (p - (k_ext-1)/2)/s`` with
``k_ext = d(k-1)+1``; Deconvolution ``a = s, b = (k_ext-1)/2 - p``; Crop ``a = 1,
b = -offset``; element-wise and channel-wise layers: identity). The maps are composed
from a common ancestor of the two bottoms to each of them; the map from the data to the
reference must have ``a = 1`` and an integral ``b <= 0``, and ``-b`` is the offset of
the spatial axes (``axis = 2``). This happens in :meth:`Crop.resolve`, before shape
inference, with exact rational arithmetic. Like coord_map.py, the walk follows every
aligned bottom (Eltwise, Concat), only the first bottom of a Crop, and stops at layers
without a known map; the fork's C++ followed first bottoms only, which finds the same
ancestor in nets whose branches agree (FCN, HED). A walk that finds no common ancestor
is an error naming the layers that stopped it.

ONNX: ``Slice`` with constant ``starts``/``ends``/``axes`` inputs (shapes are static).
PyTorch: tensor slicing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, axis_index, layer_error, shape_error

#: the first spatial axis of an N, C, spatial... blob: what a derived crop starts at
SPATIAL_AXIS = 2

#: layers that keep every spatial coordinate (coord_map.py's pass-through list, plus the
#: element-wise and channel-wise layers it does not know about)
IDENTITY_TYPES = frozenset(
    {
        "AbsVal",
        "BatchNorm",
        "Bias",
        "BNLL",
        "Dropout",
        "Eltwise",
        "ELU",
        "Log",
        "LRN",
        "Exp",
        "MVN",
        "Power",
        "ReLU",
        "PReLU",
        "Scale",
        "Sigmoid",
        "Split",
        "TanH",
        "Threshold",
        "Clip",
        "Swish",
        "BN",
        "Normalize",
    }
)
#: identity too, when they work along the batch or channel axis
CHANNEL_AXIS_TYPES = frozenset({"Concat", "Slice", "Softmax"})
#: layers whose every bottom is aligned with the top (the others: only the first bottom)
ALL_BOTTOMS_TYPES = frozenset({"Eltwise", "Concat"})


@dataclass(frozen=True)
class CropParams:
    axis: int  # the first cropped axis, as written (may be negative)
    offsets: tuple[int, ...] | None  # () = all 0; None = to derive in ``resolve``
    derived: bool = False  # no crop_param: offsets come from the coordinate maps


def parse_crop_params(lp) -> CropParams:
    if not lp.HasField("crop_param"):
        return CropParams(axis=SPATIAL_AXIS, offsets=None, derived=True)
    p = lp.crop_param
    return CropParams(axis=p.axis, offsets=tuple(int(o) for o in p.offset))


# ----------------------------------------------------------------------------- coordinate maps


@dataclass(frozen=True)
class AffineMap:
    """``y = a*x + b`` on each spatial axis; one entry stands for every axis."""

    a: tuple[Fraction, ...]
    b: tuple[Fraction, ...]

    @staticmethod
    def identity() -> AffineMap:
        return AffineMap((Fraction(1),), (Fraction(0),))

    def after(self, inner: AffineMap) -> AffineMap:
        """The map ``x -> self(inner(x))``."""
        n = max(len(self.a), len(inner.a))
        if {len(self.a), len(inner.a)} - {1, n}:
            raise ValueError(f"maps of {len(self.a)} and {len(inner.a)} spatial axes")
        a1, b1, a2, b2 = (_widen(v, n) for v in (self.a, self.b, inner.a, inner.b))
        return AffineMap(
            tuple(x * y for x, y in zip(a1, a2)), tuple(x * y + z for x, y, z in zip(a1, b2, b1))
        )

    def inverse(self) -> AffineMap:
        return AffineMap(tuple(1 / a for a in self.a), tuple(-b / a for a, b in zip(self.a, self.b)))

    def __str__(self) -> str:
        terms = [_term(a, b) for a, b in zip(self.a, self.b)]
        return terms[0] if len(set(terms)) == 1 else "(" + ", ".join(terms) + ") per spatial axis"


def _term(a: Fraction, b: Fraction) -> str:
    scaled = "x" if a == 1 else f"{a}*x"
    return f"{scaled} {'-' if b < 0 else '+'} {abs(b)}" if b else scaled


def _widen(values: tuple[Fraction, ...], n: int) -> tuple[Fraction, ...]:
    return values * n if len(values) == 1 else values


class Unmappable(Exception):
    """A layer whose coordinate mapping is unknown: the walk cannot go through it."""


def _filter_map(kernel, stride, pad, dilation, transposed: bool) -> AffineMap:
    """The map of a convolution/pooling window (``transposed``: deconvolution)."""
    n = max(len(kernel), len(stride), len(pad), len(dilation))
    a, b = [], []
    for k, s, p, d in zip(*(_widen(tuple(v), n) for v in (kernel, stride, pad, dilation))):
        half_extent = Fraction(d * (k - 1), 2)  # (k_ext - 1) / 2
        if transposed:
            a.append(Fraction(s))
            b.append(half_extent - p)
        else:
            a.append(Fraction(1, s))
            b.append((p - half_extent) / s)
    return AffineMap(tuple(a), tuple(b))


def coord_map(layer: Layer, top: str) -> tuple[AffineMap, tuple[str, ...]]:
    """The map from ``layer``'s bottoms to its ``top``, and the bottoms it aligns with."""
    kind, params = layer.type, layer.params
    if kind in ("Convolution", "Deconvolution"):
        bottom = layer.bottoms[layer.tops.index(top)] if len(layer.bottoms) > 1 else layer.bottoms[0]
        geometry = (params.kernel, params.stride, params.pad, params.dilation)
        return _filter_map(*geometry, transposed=kind == "Deconvolution"), (bottom,)
    if kind == "Pooling":
        if params.is_global:
            raise Unmappable("global pooling collapses the spatial axes")
        return _filter_map(params.kernel, params.stride, params.pad, (1,), False), layer.bottoms[:1]
    if kind == "Crop":
        return _crop_map(layer), layer.bottoms[:1]
    if kind in CHANNEL_AXIS_TYPES:
        axis = getattr(params, "axis", None)
        if axis not in (0, 1):
            raise Unmappable(f"it works along axis {axis}, not the batch or channel axis")
    elif kind not in IDENTITY_TYPES:
        raise Unmappable("its coordinate mapping is unknown")
    bottoms = layer.bottoms if kind in ALL_BOTTOMS_TYPES else layer.bottoms[:1]
    return AffineMap.identity(), bottoms


def _crop_map(layer: Layer) -> AffineMap:
    params: CropParams = layer.params
    offsets = params.offsets
    if offsets is None:
        raise Unmappable("its offsets are not derived yet")
    if params.axis not in (0, 1, SPATIAL_AXIS):
        raise Unmappable(f"it crops from axis {params.axis}, not every spatial axis")
    if len(offsets) > 1:
        offsets = offsets[SPATIAL_AXIS - params.axis :]
    offsets = offsets or (0,)
    return AffineMap(tuple(Fraction(1) for _ in offsets), tuple(Fraction(-o) for o in offsets))


def _walk(start: str, producers: Mapping[str, Layer], blocked: dict[str, str]) -> dict[str, AffineMap]:
    """Every ancestor of ``start`` (breadth first) -> the map from it to ``start``."""
    maps = {start: AffineMap.identity()}
    frontier = deque([start])
    while frontier:
        tensor = frontier.popleft()
        layer = producers.get(tensor)
        if layer is None:  # a net input
            continue
        try:
            step, bottoms = coord_map(layer, tensor)
        except Unmappable as why:
            blocked.setdefault(layer.name, f"'{layer.name}' ({layer.type}): {why}")
            continue
        for bottom in bottoms:
            if bottom not in maps:
                maps[bottom] = maps[tensor].after(step)
                frontier.append(bottom)
    return maps


def crop_map(data: str, reference: str, producers: Mapping[str, Layer]) -> AffineMap:
    """The map from ``data`` coordinates to ``reference`` coordinates (coord_map.py).

    Both bottoms are walked back to their nearest common ancestor (breadth first from the
    reference); raises :class:`Unmappable` naming the layers that stopped the walk.
    """
    blocked: dict[str, str] = {}
    from_data = _walk(data, producers, blocked)
    to_reference = _walk(reference, producers, blocked)
    for tensor, ref_map in to_reference.items():  # insertion order = breadth first
        if tensor in from_data:
            return ref_map.after(from_data[tensor].inverse())
    reasons = "; ".join(blocked.values()) or "they have no common ancestor"
    raise Unmappable(f"cannot relate the coordinates of '{data}' and '{reference}': {reasons}")


def derive_offsets(layer: Layer, producers: Mapping[str, Layer]) -> tuple[int, ...]:
    """The spatial crop offsets of a Crop without crop_param (one value if all are equal)."""
    hint = "; give the offsets explicitly with crop_param { axis: 2 offset: ... }"
    try:
        mapping = crop_map(layer.bottoms[0], layer.bottoms[1], producers)
    except (Unmappable, ValueError) as exc:
        raise layer_error(layer, f"no crop_param, and {exc}{hint}") from None
    if any(a != 1 for a in mapping.a):
        raise layer_error(
            layer,
            f"no crop_param, and the two bottoms are at different scales: the data maps to the "
            f"reference by y = {mapping}; the scale must be 1{hint}",
        )
    offsets = tuple(-b for b in mapping.b)
    if any(o.denominator != 1 or o < 0 for o in offsets):
        raise layer_error(
            layer,
            f"no crop_param, and the data maps to the reference by y = {mapping}: the offset "
            f"{', '.join(str(o) for o in offsets)} is not a non-negative integer{hint}",
        )
    values = tuple(int(o) for o in offsets)
    return values[:1] if len(set(values)) == 1 else values


# ----------------------------------------------------------------------------- handler


def crop_offsets(layer: Layer, data: Shape, ref: Shape) -> tuple[int, list[int]]:
    """(first cropped axis, one offset per cropped axis), checked against the shapes."""
    params: CropParams = layer.params
    ndim = len(data)
    axis = axis_index(params.axis, ndim, layer, "crop axis")
    cropped = ndim - axis
    offsets = params.offsets
    if offsets is None:
        raise shape_error(layer, "the crop offsets were never derived (Handler.resolve did not run)")
    if len(offsets) > 1 and len(offsets) != cropped:
        raise shape_error(
            layer,
            f"{len(offsets)} offsets for {cropped} cropped axes (axes {axis}..{ndim - 1} of a "
            f"{ndim}-D input); give one offset for all of them or exactly one per axis",
        )
    per_axis = list(offsets) * cropped if len(offsets) == 1 else list(offsets or [0] * cropped)
    if len(ref) < ndim:
        raise shape_error(layer, f"the reference {list(ref)} has fewer axes than the data {list(data)}")
    how = " (derived from the coordinate maps)" if params.derived else ""
    for i, offset in zip(range(axis, ndim), per_axis):
        if data[i] - offset < ref[i]:
            raise shape_error(
                layer,
                f"crop out of bounds on axis {i}: data size {data[i]} - offset {offset}{how} "
                f"< reference size {ref[i]} (data {list(data)}, reference {list(ref)})",
            )
    return axis, per_axis


class Crop(Handler):
    types = ("Crop",)
    bottoms = (2, 2)

    def parse(self, lp) -> CropParams:
        return parse_crop_params(lp)

    def resolve(self, layer: Layer, producers: Mapping[str, Layer]) -> Layer:
        params: CropParams = layer.params
        if params.offsets is not None:
            return layer
        offsets = derive_offsets(layer, producers)
        return layer.with_(params=CropParams(axis=SPATIAL_AXIS, offsets=offsets, derived=True))

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        data, ref = in_shapes
        axis, _ = crop_offsets(layer, data, ref)
        return [tuple(data[:axis]) + tuple(ref[axis : len(data)])]

    def to_onnx(self, layer: Layer, g) -> None:
        data, ref = (g.shape(b) for b in layer.bottoms)
        axis, offsets = crop_offsets(layer, data, ref)
        ends = [o + ref[i] for i, o in zip(range(axis, len(data)), offsets)]
        inputs = [
            layer.bottoms[0],
            g.ints(offsets, "starts"),
            g.ints(ends, "ends"),
            g.ints(list(range(axis, len(data))), "axes"),
        ]
        g.op("Slice", inputs, layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        x, ref = inputs
        axis, offsets = crop_offsets(layer, tuple(x.shape), tuple(ref.shape))
        index = [slice(None)] * axis
        index += [slice(o, o + ref.shape[i]) for i, o in zip(range(axis, x.dim()), offsets)]
        return [x[tuple(index)]]


HANDLERS = [Crop()]

__all__ = ["AffineMap", "Crop", "CropParams", "coord_map", "crop_map", "derive_offsets"]
