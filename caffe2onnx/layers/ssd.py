"""SSD layers (weiliu89/caffe ``ssd`` branch): Permute, Normalize, PriorBox, DetectionOutput.

Caffe semantics (spec 3.26; DetectionOutput from the fork's detection_output_layer.cpp and
bbox_util.cpp, CPU path):

* Permute: ``order`` lists axes; axes it leaves out follow in natural order; an axis
  listed twice is an error. ONNX ``Transpose(perm)``.
* Normalize: ``y = x / sqrt(sum x^2 + eps)`` (eps *inside* the sqrt) over C*H*W per sample
  (``across_spatial``, default) or over C per pixel; then ``y *= scale`` with blob 0 of
  shape ``[]`` (``channel_shared``, default) or ``[C]``; the scale filler defaults to
  constant 1. ONNX ``ReduceSumSquare`` (keepdims), ``Add``, ``Sqrt``, ``Div``, ``Mul``.
* PriorBox (bottoms: feature map, image): aspect ratios ``[1] + each new ratio r``
  (deduplicated at 1e-6) ``+ 1/r`` if ``flip``; per cell (row-major) and per min size
  (truncated to int): the min box, the ``sqrt(min*max)`` box (max size also truncated),
  the boxes ``min*sqrt(r) x min/sqrt(r)`` for r != 1; centre ``((w+offset)*step_w,
  (h+offset)*step_h)`` with step defaulting to image/feature size; coordinates divided
  by the image size, clipped to [0,1] if ``clip``; channel 1 holds the variances (1 or 4
  values, default 0.1). Top ``(1, 2, H*W*num_priors*4)``. Shapes are static, so ONNX
  gets the boxes as a constant.
* DetectionOutput (bottoms: loc ``[N, P*L*4]``, conf ``[N, P*C]`` (probabilities), priors
  ``[1, 2, P*4]``; ``L = 1`` if ``share_location`` else C): decode every prior
  (CORNER / CENTER_SIZE / CORNER_SIZE, variances from the priors unless
  ``variance_encoded_in_target``); per image and per class except ``background_label_id``:
  keep scores ``> confidence_threshold``, sort descending (stable), keep ``top_k``, greedy
  NMS (drop a box whose IoU with a kept one is ``> nms_threshold``; IoU 0 for inverted
  boxes); per image keep the ``keep_top_k`` best over all classes; rows
  ``[image, label, score, xmin, ymin, xmax, ymax]`` ordered by image, label, then score.
  No detection at all gives one row ``[i, -1, -1, -1, -1, -1, -1]`` per image.

ONNX DetectionOutput: the decode is element-wise; per image (unrolled, N is static) the
class scores go through ``TopK(top_k)`` (ties: lower index first, like the stable sort),
``NonMaxSuppression`` runs with one "batch" per class on those K candidates
(``score_threshold`` is strict and IoU ``== nms_threshold`` is kept, as in Caffe), then
``TopK(keep_top_k)`` and a sort back into (label, rank) order. Differences from Caffe:

* Caffe's top is ``[1, 1, num_det, 7]`` with num_det known only at run time; the IR has
  static shapes, so the top is ``[1, 1, R, 7]`` with the upper bound
  ``R = max(N, N * min(keep_top_k, classes*K))`` (``N*classes*K`` without keep_top_k):
  the detections come first in Caffe's order, the remaining rows are all -1 (Caffe's own
  tools skip rows whose image id is -1).
* ``nms_param.eta != 1`` (adaptive NMS) is refused.
* keep_top_k ties: Caffe's ``std::sort`` is unstable; here equal scores keep label order.
* ``background_label_id: -1`` with ``share_location`` (no background class) is accepted;
  Caffe's CPU code aborts on it.
* ``save_output_param`` / ``visualize`` (files, windows) are ignored.

PyTorch reference: the same semantics written with per-class Python loops (greedy NMS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from caffe2onnx.ir import BlobSpec, Filler, Layer, Shape
from caffe2onnx.layers.base import Handler, filler_of, layer_error, prod, shape_error

# ----------------------------------------------------------------------------- Permute


_MAX_BOX_SIZE = float(2**24)  # pixels; beyond any image (and exact in float32)


@dataclass(frozen=True)
class PermuteParams:
    order: tuple[int, ...]


class Permute(Handler):
    """SSD Permute: ``Transpose`` by ``order`` (unlisted axes follow in natural order)."""

    types = ("Permute",)

    def parse(self, lp) -> PermuteParams:
        order = tuple(int(a) for a in lp.permute_param.order)
        repeated = sorted({a for a in order if order.count(a) > 1})
        if repeated:
            raise layer_error(
                lp,
                f"permute_param.order {list(order)} lists axis {repeated} more than once; list each axis once",
            )
        return PermuteParams(order)

    @staticmethod
    def perm(layer: Layer, ndim: int) -> list[int]:
        order = layer.params.order
        if any(a >= ndim for a in order):
            raise shape_error(
                layer, f"permute_param.order {list(order)} names an axis >= {ndim} (input rank)"
            )
        return [*order, *(a for a in range(ndim) if a not in order)]

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        shape = in_shapes[0]
        return [tuple(shape[a] for a in self.perm(layer, len(shape)))]

    def to_onnx(self, layer: Layer, g) -> None:
        perm = self.perm(layer, len(g.shape(layer.bottoms[0])))
        g.op("Transpose", [layer.bottoms[0]], layer.tops[0], perm=perm)

    def to_torch(self, layer: Layer, inputs, weights):
        return [inputs[0].permute(*self.perm(layer, inputs[0].dim())).contiguous()]


# ----------------------------------------------------------------------------- Normalize


@dataclass(frozen=True)
class NormalizeParams:
    across_spatial: bool
    channel_shared: bool
    eps: float
    scale_filler: Filler


class Normalize(Handler):
    """SSD Normalize: L2 norm (eps inside the sqrt) across C*H*W or C, times a shared or per-channel scale."""

    types = ("Normalize",)

    def parse(self, lp) -> NormalizeParams:
        p = lp.norm_param
        filler = filler_of(p, "scale_filler") or Filler("constant", 1.0)
        return NormalizeParams(p.across_spatial, p.channel_shared, p.eps, filler)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        if len(in_shapes[0]) < 2:
            raise shape_error(layer, f"needs an input with a channel axis, got shape {list(in_shapes[0])}")
        return [tuple(in_shapes[0])]

    def blobs(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[BlobSpec]:
        p: NormalizeParams = layer.params
        shape = () if p.channel_shared else (in_shapes[0][1],)
        return [BlobSpec("scale", shape, p.scale_filler, "gamma")]

    @staticmethod
    def _axes(layer: Layer, ndim: int) -> list[int]:
        return list(range(1, ndim)) if layer.params.across_spatial else [1]

    def to_onnx(self, layer: Layer, g) -> None:
        p: NormalizeParams = layer.params
        x = layer.bottoms[0]
        ndim = len(g.shape(x))
        sum_sq = g.reduce("ReduceSumSquare", x, self._axes(layer, ndim), keepdims=1)
        norm = g.op("Sqrt", [g.op("Add", [sum_sq, g.const(p.eps, "eps")])])
        normalized = g.op("Div", [x, norm])
        if p.channel_shared:
            scale = g.weight(layer, 0)
        else:
            scale = g.weight_as(layer, 0, (-1,) + (1,) * (ndim - 2), "scale")
        g.op("Mul", [normalized, scale], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        p: NormalizeParams = layer.params
        x = inputs[0]
        norm = torch.sqrt((x * x).sum(dim=self._axes(layer, x.dim()), keepdim=True) + p.eps)
        scale = weights[0] if p.channel_shared else weights[0].reshape((-1,) + (1,) * (x.dim() - 2))
        return [x / norm * scale]


# ----------------------------------------------------------------------------- PriorBox


@dataclass(frozen=True)
class PriorBoxParams:
    min_sizes: tuple[int, ...]  # truncated to int, as Caffe's loop does
    max_sizes: tuple[int, ...]
    aspect_ratios: tuple[float, ...]  # expanded: 1, r, (1/r if flip), ...
    clip: bool
    variance: tuple[float, ...]  # 1 or 4 values
    img_h: int  # 0: take the image size from bottom 1
    img_w: int
    step_h: float  # 0: image size / feature map size
    step_w: float
    offset: float

    @property
    def num_priors(self) -> int:
        return len(self.aspect_ratios) * len(self.min_sizes) + len(self.max_sizes)


def _expand_aspect_ratios(ratios: Sequence[float], flip: bool) -> tuple[float, ...]:
    result = [1.0]
    for r in (float(np.float32(r)) for r in ratios):
        if any(abs(r - known) < 1e-6 for known in result):
            continue
        result.append(r)
        if flip:
            result.append(float(np.float32(1.0 / r)))
    return tuple(result)


def _pair_or_single(lp, p, single: str, pair: tuple[str, str], kind):
    """``single`` or ``pair`` (exclusive, both positive); 0s when neither is set."""
    if p.HasField(pair[0]) or p.HasField(pair[1]):
        if p.HasField(single):
            raise layer_error(lp, f"give either {single} or {pair[0]}/{pair[1]}, not both")
        values = (kind(getattr(p, pair[0])), kind(getattr(p, pair[1])))
    elif p.HasField(single):
        values = (kind(getattr(p, single)),) * 2
    else:
        return (kind(0), kind(0))
    if min(values) <= 0:
        raise layer_error(lp, f"{pair[0]}/{pair[1]} must be positive, got {list(values)}")
    return values


class PriorBox(Handler):
    """SSD PriorBox: prior boxes and variances, precomputed as an ONNX constant (sizes truncated to int)."""

    types = ("PriorBox",)
    bottoms = (2, 2)

    def parse(self, lp) -> PriorBoxParams:
        p = lp.prior_box_param
        if not p.min_size:
            raise layer_error(lp, "prior_box_param.min_size is required (one or more values)")
        if any(m <= 0 for m in p.min_size):
            raise layer_error(lp, f"min_size must be positive, got {list(p.min_size)}")
        if any(not m < _MAX_BOX_SIZE for m in (*p.min_size, *p.max_size)):
            raise layer_error(
                lp, f"box sizes must be below {_MAX_BOX_SIZE:g} pixels, got {[*p.min_size, *p.max_size]}"
            )
        if p.max_size:
            if len(p.max_size) != len(p.min_size):
                raise layer_error(
                    lp, f"{len(p.max_size)} max_size value(s) for {len(p.min_size)} min_size; give one each"
                )
            for lo, hi in zip(p.min_size, p.max_size):
                if hi <= lo:
                    raise layer_error(lp, f"max_size {hi:g} must be greater than min_size {lo:g}")
        if any(r <= 0 for r in p.aspect_ratio):
            raise layer_error(lp, f"aspect_ratio must be positive, got {list(p.aspect_ratio)}")
        variance = tuple(float(v) for v in p.variance) or (0.1,)
        if len(variance) not in (1, 4):
            raise layer_error(lp, f"variance needs 1 or 4 values, got {len(variance)}")
        if any(v <= 0 for v in variance):
            raise layer_error(lp, f"variance must be positive, got {list(variance)}")
        img_h, img_w = _pair_or_single(lp, p, "img_size", ("img_h", "img_w"), int)
        step_h, step_w = _pair_or_single(lp, p, "step", ("step_h", "step_w"), float)
        return PriorBoxParams(
            min_sizes=tuple(int(m) for m in p.min_size),
            max_sizes=tuple(int(m) for m in p.max_size),
            aspect_ratios=_expand_aspect_ratios(p.aspect_ratio, p.flip),
            clip=p.clip,
            variance=variance,
            img_h=img_h,
            img_w=img_w,
            step_h=step_h,
            step_w=step_w,
            offset=p.offset,
        )

    @staticmethod
    def geometry(layer: Layer, in_shapes: Sequence[Shape]) -> tuple[int, int, int, int]:
        """(feature height, feature width, image height, image width)."""
        p: PriorBoxParams = layer.params
        feature, image = in_shapes
        if len(feature) != 4:
            raise shape_error(layer, f"needs a 4-D feature map (bottom 0), got shape {list(feature)}")
        if p.img_h and p.img_w:
            return feature[2], feature[3], p.img_h, p.img_w
        if len(image) != 4:
            raise shape_error(
                layer, f"needs a 4-D image (bottom 1) or img_size/img_h/img_w, got shape {list(image)}"
            )
        return feature[2], feature[3], image[2], image[3]

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        height, width, _, _ = self.geometry(layer, in_shapes)
        return [(1, 2, height * width * layer.params.num_priors * 4)]

    def to_onnx(self, layer: Layer, g) -> None:
        geometry = self.geometry(layer, [g.shape(b) for b in layer.bottoms])
        priors = g.const(prior_boxes(layer.params, *geometry), "priors")
        g.op("Identity", [priors], layer.tops[0])

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        p: PriorBoxParams = layer.params
        height, width, img_h, img_w = self.geometry(layer, [tuple(x.shape) for x in inputs])
        step_w = p.step_w or float(np.float32(img_w) / np.float32(width))
        step_h = p.step_h or float(np.float32(img_h) / np.float32(height))
        coords: list[float] = []
        for h in range(height):
            for w in range(width):
                cx = float(np.float32((w + p.offset) * step_w))
                cy = float(np.float32((h + p.offset) * step_h))
                for s, min_size in enumerate(p.min_sizes):
                    sizes = [(float(min_size), float(min_size))]
                    if p.max_sizes:
                        side = math.sqrt(min_size * p.max_sizes[s])
                        sizes.append((side, side))
                    for r in p.aspect_ratios:
                        if abs(r - 1.0) >= 1e-6:
                            sizes.append((min_size * math.sqrt(r), min_size / math.sqrt(r)))
                    for bw, bh in sizes:
                        bw, bh = float(np.float32(bw)), float(np.float32(bh))
                        coords += [
                            (cx - bw / 2) / img_w,
                            (cy - bh / 2) / img_h,
                            (cx + bw / 2) / img_w,
                            (cy + bh / 2) / img_h,
                        ]
        boxes = torch.tensor(coords, dtype=torch.float32)
        if p.clip:
            boxes = boxes.clamp(0.0, 1.0)
        variances = torch.tensor(p.variance, dtype=torch.float32).repeat(len(coords) // len(p.variance))
        return [torch.stack([boxes, variances]).unsqueeze(0)]


def prior_boxes(p: PriorBoxParams, height: int, width: int, img_h: int, img_w: int) -> np.ndarray:
    """The PriorBox top ``(1, 2, height*width*num_priors*4)``, computed with numpy."""
    step_w = np.float32(p.step_w) if p.step_w else np.float32(img_w) / np.float32(width)
    step_h = np.float32(p.step_h) if p.step_h else np.float32(img_h) / np.float32(height)
    sizes = []  # (width, height) of each prior of a cell, in Caffe's order
    for s, min_size in enumerate(p.min_sizes):
        sizes.append((min_size, min_size))
        if p.max_sizes:
            sizes.append((np.sqrt(min_size * p.max_sizes[s]),) * 2)
        sizes += [
            (min_size * np.sqrt(r), min_size / np.sqrt(r)) for r in p.aspect_ratios if abs(r - 1) >= 1e-6
        ]
    half = np.asarray(sizes, np.float32).astype(np.float64) / 2  # [num_priors, 2]
    cx = ((np.arange(width, dtype=np.float32) + np.float32(p.offset)) * step_w).astype(np.float64)
    cy = ((np.arange(height, dtype=np.float32) + np.float32(p.offset)) * step_h).astype(np.float64)
    cx = np.broadcast_to(cx[None, :, None], (height, width, len(sizes)))
    cy = np.broadcast_to(cy[:, None, None], (height, width, len(sizes)))
    boxes = np.stack(
        [
            (cx - half[:, 0]) / img_w,
            (cy - half[:, 1]) / img_h,
            (cx + half[:, 0]) / img_w,
            (cy + half[:, 1]) / img_h,
        ],
        axis=-1,
    ).reshape(-1)
    if p.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    variances = np.tile(np.asarray(p.variance, np.float64), boxes.size // len(p.variance))
    return np.stack([boxes, variances])[None].astype(np.float32)


# ----------------------------------------------------------------------------- DetectionOutput

CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3
_CODE_NAMES = {CORNER: "CORNER", CENTER_SIZE: "CENTER_SIZE", CORNER_SIZE: "CORNER_SIZE"}


@dataclass(frozen=True)
class DetectionOutputParams:
    num_classes: int
    share_location: bool
    background_label_id: int
    code_type: int
    variance_encoded_in_target: bool
    keep_top_k: int  # -1: keep all
    confidence_threshold: float | None  # None: no threshold (Caffe's -FLT_MAX)
    nms_threshold: float
    top_k: int  # -1: all candidates

    @property
    def classes(self) -> tuple[int, ...]:
        """The labels that get detections (all but the background)."""
        return tuple(c for c in range(self.num_classes) if c != self.background_label_id)

    def candidates(self, num_priors: int) -> int:
        """K: the candidates per class that enter NMS."""
        return num_priors if self.top_k < 0 else min(self.top_k, num_priors)

    def rows(self, num_images: int, num_priors: int) -> int:
        """The static number of output rows (an upper bound of Caffe's num_det)."""
        per_image = len(self.classes) * self.candidates(num_priors)
        if self.keep_top_k >= 0:
            per_image = min(per_image, self.keep_top_k)
        return max(num_images * per_image, num_images)


def no_detection_rows(num_images: int, rows: int) -> np.ndarray:
    """Caffe's "no detection" top (``[i, -1, ..]`` per image), padded with -1 rows."""
    table = np.full((rows, 7), -1.0, np.float32)
    table[:num_images, 0] = np.arange(num_images)
    return table


class DetectionOutput(Handler):
    """SSD DetectionOutput: decode, per-class ``NonMaxSuppression``, keep_top_k; the top is a static
    ``[1, 1, R, 7]`` upper bound padded with -1 rows; ``nms_param.eta`` must be 1."""

    types = ("DetectionOutput",)
    bottoms = (3, 3)

    def parse(self, lp) -> DetectionOutputParams:
        p = lp.detection_output_param
        if not p.HasField("num_classes") or p.num_classes == 0:
            raise layer_error(lp, "detection_output_param.num_classes must be set and > 0")
        nms = p.nms_param
        if nms.nms_threshold < 0:
            raise layer_error(lp, f"nms_threshold must be >= 0, got {nms.nms_threshold:g}")
        if nms.eta != 1.0:
            raise layer_error(
                lp,
                f"nms_param.eta {nms.eta:g} (adaptive NMS) is not supported: ONNX NonMaxSuppression "
                "has a fixed IoU threshold; use eta: 1",
            )
        if p.code_type not in _CODE_NAMES:
            raise layer_error(lp, f"unknown code_type {p.code_type}; use CORNER, CENTER_SIZE or CORNER_SIZE")
        return DetectionOutputParams(
            num_classes=p.num_classes,
            share_location=p.share_location,
            background_label_id=p.background_label_id,
            code_type=p.code_type,
            variance_encoded_in_target=p.variance_encoded_in_target,
            keep_top_k=max(p.keep_top_k, -1),
            confidence_threshold=p.confidence_threshold if p.HasField("confidence_threshold") else None,
            nms_threshold=nms.nms_threshold,
            top_k=nms.top_k if nms.HasField("top_k") and nms.top_k >= 0 else -1,
        )

    @staticmethod
    def geometry(layer: Layer, in_shapes: Sequence[Shape]) -> tuple[int, int]:
        """(number of images, number of priors), after checking the three bottoms agree."""
        p: DetectionOutputParams = layer.params
        loc, conf, prior = in_shapes
        if len(prior) < 3 or prior[2] % 4:
            raise shape_error(layer, f"the priors (bottom 2) must be [1, 2, P*4], got shape {list(prior)}")
        num_priors = prior[2] // 4
        if prod(prior) < 2 * num_priors * 4:
            raise shape_error(layer, f"the priors (bottom 2) of shape {list(prior)} have no variances")
        num = loc[0]
        if conf[0] != num:
            raise shape_error(layer, f"loc has {num} images but conf has {conf[0]}")
        loc_classes = 1 if p.share_location else p.num_classes
        if prod(loc[1:]) != num_priors * loc_classes * 4:
            raise shape_error(
                layer,
                f"loc (bottom 0) has {prod(loc[1:])} values per image; {num_priors} priors x "
                f"{loc_classes} location class(es) x 4 = {num_priors * loc_classes * 4} expected",
            )
        if prod(conf[1:]) != num_priors * p.num_classes:
            raise shape_error(
                layer,
                f"conf (bottom 1) has {prod(conf[1:])} values per image; {num_priors} priors x "
                f"{p.num_classes} classes = {num_priors * p.num_classes} expected",
            )
        return num, num_priors

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        num, num_priors = self.geometry(layer, in_shapes)
        return [(1, 1, layer.params.rows(num, num_priors), 7)]

    # -- ONNX -------------------------------------------------------------------------

    def to_onnx(self, layer: Layer, g) -> None:
        p: DetectionOutputParams = layer.params
        loc, conf, prior = layer.bottoms
        num, num_priors = self.geometry(layer, [g.shape(b) for b in layer.bottoms])
        rows = p.rows(num, num_priors)
        top = layer.tops[0]
        k = p.candidates(num_priors)
        if not p.classes or k == 0:
            g.op("Identity", [g.const(no_detection_rows(num, rows).reshape(1, 1, rows, 7), "none")], top)
            return
        boxes = _onnx_decode(g, p, loc, prior, num, num_priors)  # [N, P, L, 4]
        scores = g.reshape(conf, [num, num_priors, p.num_classes])
        per_image = [_onnx_image(g, p, i, boxes, scores, num_priors, k) for i in range(num)]
        found = per_image[0] if num == 1 else g.op("Concat", per_image, axis=0)
        count = _slice(g, g.op("Shape", [found]), 0, 1, axis=0)
        none_found = g.op("Equal", [count, g.ints([0], "zero")])
        padding = g.op(
            "Where",
            [
                none_found,
                g.const(no_detection_rows(num, rows), "none"),
                g.const(np.full((rows, 7), -1.0), "pad"),
            ],
        )
        table = _slice(g, g.op("Concat", [found, padding], axis=0), 0, rows, axis=0)
        g.reshape(table, [1, 1, rows, 7], top)

    # -- PyTorch reference --------------------------------------------------------------

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        p: DetectionOutputParams = layer.params
        num, num_priors = self.geometry(layer, [tuple(x.shape) for x in inputs])
        rows = p.rows(num, num_priors)
        loc_classes = 1 if p.share_location else p.num_classes
        loc = inputs[0].reshape(num, num_priors, loc_classes, 4)
        conf = inputs[1].reshape(num, num_priors, p.num_classes)
        prior = inputs[2].reshape(-1)[: 8 * num_priors].reshape(2, num_priors, 4)
        decoded = _torch_decode(p, loc, prior[0][:, None, :], prior[1][:, None, :])
        found = []
        for i in range(num):
            detections = []  # (label, score, box), in Caffe's output order
            for c in p.classes:
                box = decoded[i, :, 0 if p.share_location else c]
                kept = _torch_nms(p, box, conf[i, :, c])
                detections += [(c, conf[i, j, c], box[j]) for j in kept]
            if 0 <= p.keep_top_k < len(detections):
                best = sorted(range(len(detections)), key=lambda d: -float(detections[d][1]))
                detections = [detections[d] for d in sorted(best[: p.keep_top_k])]
            found += [torch.cat([torch.tensor([i, c, float(s)]), b]) for c, s, b in detections]
        table = torch.tensor(no_detection_rows(num, rows))
        if found:
            table = torch.full((rows, 7), -1.0)
            table[: len(found)] = torch.stack(found)
        return [table.reshape(1, 1, rows, 7)]


def _slice(g, x: str, start: int, end: int, axis: int) -> str:
    return g.op("Slice", [x, g.ints([start], "starts"), g.ints([end], "ends"), g.ints([axis], "axes")])


def _onnx_decode(g, p: DetectionOutputParams, loc: str, prior: str, num: int, num_priors: int) -> str:
    """Decoded boxes ``[N, P, L, 4]`` (xmin, ymin, xmax, ymax)."""
    loc_classes = 1 if p.share_location else p.num_classes
    deltas = g.reshape(loc, [num, num_priors, loc_classes, 4])
    flat = g.reshape(prior, [-1])
    size = num_priors * 4
    priors = g.reshape(_slice(g, flat, 0, size, 0), [1, num_priors, 1, 4])
    if not p.variance_encoded_in_target:
        variances = g.reshape(_slice(g, flat, size, 2 * size, 0), [1, num_priors, 1, 4])
        deltas = g.op("Mul", [deltas, variances])
    if p.code_type == CORNER:
        return g.op("Add", [priors, deltas])
    lo, hi = _slice(g, priors, 0, 2, -1), _slice(g, priors, 2, 4, -1)
    extent = g.op("Sub", [hi, lo])  # prior (width, height)
    if p.code_type == CORNER_SIZE:
        return g.op("Add", [priors, g.op("Mul", [deltas, g.op("Concat", [extent, extent], axis=-1)])])
    center = g.op("Mul", [g.op("Add", [lo, hi]), g.const(0.5, "half")])
    center = g.op("Add", [g.op("Mul", [_slice(g, deltas, 0, 2, -1), extent]), center])
    half_size = g.op(
        "Mul", [g.op("Mul", [g.op("Exp", [_slice(g, deltas, 2, 4, -1)]), extent]), g.const(0.5, "half")]
    )
    return g.op("Concat", [g.op("Sub", [center, half_size]), g.op("Add", [center, half_size])], axis=-1)


def _onnx_image(g, p: DetectionOutputParams, i: int, boxes: str, scores: str, num_priors: int, k: int) -> str:
    """Image ``i``'s detections ``[n_i, 7]`` in Caffe's order."""
    classes = p.classes
    every_class = len(classes) == p.num_classes
    class_index = g.ints(list(classes), "classes")
    image = g.ints([i], "image")
    # scores [C', P] and boxes [C', P, 4] per kept class
    class_scores = g.op(
        "Transpose",
        [g.op("Squeeze", [g.op("Gather", [scores, image], axis=0), g.ints([0], "axes")])],
        perm=[1, 0],
    )
    image_boxes = g.op("Squeeze", [g.op("Gather", [boxes, image], axis=0), g.ints([0], "axes")])  # [P, L, 4]
    class_boxes = g.op("Transpose", [image_boxes], perm=[1, 0, 2])  # [L, P, 4]
    if not every_class:
        class_scores = g.op("Gather", [class_scores, class_index], axis=0)
    if p.share_location:
        class_boxes = g.op("Expand", [class_boxes, g.ints([len(classes), num_priors, 4], "shape")])
    elif not every_class:
        class_boxes = g.op("Gather", [class_boxes, class_index], axis=0)
    # the K best candidates of each class (stable: equal scores keep prior order)
    best, rank = g.node("TopK", [class_scores, g.ints([k], "k")], 2, axis=1, largest=1, sorted=1)
    gather_index = g.op(
        "Expand", [g.op("Unsqueeze", [rank, g.ints([2], "axes")]), g.ints([len(classes), k, 4], "shape")]
    )
    candidates = g.op("GatherElements", [class_boxes, gather_index], axis=1)  # [C', K, 4]
    # Caffe's IoU of an inverted box is 0: make those boxes empty (ONNX NMS then never pairs them)
    lo, hi = _slice(g, candidates, 0, 2, -1), _slice(g, candidates, 2, 4, -1)
    inverted = g.reduce("ReduceMax", g.op("Cast", [g.op("Less", [hi, lo])], to=1), [2], keepdims=1)
    empty = g.op("Concat", [lo, lo], axis=-1)
    nms_boxes = g.op("Where", [g.op("Cast", [inverted], to=9), empty, candidates])
    nms_inputs = [
        nms_boxes,
        g.op("Unsqueeze", [best, g.ints([1], "axes")]),
        g.ints([k], "max_boxes"),
        g.const([p.nms_threshold], "iou_threshold"),
    ]
    if p.confidence_threshold is not None:
        nms_inputs.append(g.const([p.confidence_threshold], "score_threshold"))
    selected = g.op("NonMaxSuppression", nms_inputs)  # [S, 3]: (class slot, 0, candidate)
    slot_rank = g.op("Gather", [selected, g.ints([0, 2], "columns")], axis=1)  # [S, 2]
    slot = g.op("Squeeze", [_slice(g, selected, 0, 1, 1), g.ints([1], "axes")])
    cand = g.op("Squeeze", [_slice(g, selected, 2, 3, 1), g.ints([1], "axes")])
    # Caffe's order: label, then rank within the label; keep_top_k picks the best scores
    key = g.op("Add", [g.op("Mul", [slot, g.ints([k], "k")]), cand])
    count = _slice(g, g.op("Shape", [selected]), 0, 1, 0)
    order = g.node("TopK", [key, count], 2, axis=0, largest=0, sorted=1)[1]
    score = g.op("GatherND", [best, slot_rank])
    if p.keep_top_k >= 0:
        keep = g.op("Min", [count, g.ints([p.keep_top_k], "keep_top_k")])
        top = g.node("TopK", [g.op("Gather", [score, order], axis=0), keep], 2, axis=0, largest=1, sorted=1)[
            1
        ]
        top = g.node("TopK", [top, keep], 2, axis=0, largest=0, sorted=1)[0]
        order = g.op("Gather", [order, top], axis=0)
    labels = g.const(np.asarray(classes, np.float32), "labels")
    columns = [
        g.op("Unsqueeze", [g.op("Gather", [labels, slot], axis=0), g.ints([1], "axes")]),
        g.op("Unsqueeze", [score, g.ints([1], "axes")]),
        g.op("GatherND", [candidates, slot_rank]),
    ]
    table = g.op("Concat", columns, axis=1)  # [S, 6]
    table = g.op("Gather", [table, order], axis=0)
    image_id = g.op(
        "ConstantOfShape",
        [g.op("Concat", [_slice(g, g.op("Shape", [table]), 0, 1, 0), g.ints([1], "one")], axis=0)],
        value=_float_tensor(float(i)),
    )
    return g.op("Concat", [image_id, table], axis=1)


def _float_tensor(value: float):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray([value], np.float32))


def _torch_decode(p: DetectionOutputParams, loc, priors, variances):
    """Decoded boxes ``[N, P, L, 4]``; priors/variances are ``[P, 1, 4]``."""
    import torch

    deltas = loc if p.variance_encoded_in_target else loc * variances
    if p.code_type == CORNER:
        return priors + deltas
    width = priors[..., 2] - priors[..., 0]
    height = priors[..., 3] - priors[..., 1]
    if p.code_type == CORNER_SIZE:
        return priors + deltas * torch.stack([width, height, width, height], dim=-1)
    center_x = deltas[..., 0] * width + (priors[..., 0] + priors[..., 2]) / 2
    center_y = deltas[..., 1] * height + (priors[..., 1] + priors[..., 3]) / 2
    box_w = torch.exp(deltas[..., 2]) * width
    box_h = torch.exp(deltas[..., 3]) * height
    return torch.stack(
        [center_x - box_w / 2, center_y - box_h / 2, center_x + box_w / 2, center_y + box_h / 2], dim=-1
    )


def _torch_nms(p: DetectionOutputParams, boxes, scores) -> list[int]:
    """Caffe's ApplyNMSFast for one class: indices kept, best first."""
    import torch

    order = torch.sort(scores, descending=True, stable=True).indices  # ties keep index order
    if p.confidence_threshold is not None:
        order = order[scores[order] > p.confidence_threshold]
    if p.top_k >= 0:
        order = order[: p.top_k]
    valid = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
    area = torch.where(valid, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), torch.zeros(()))
    kept: list[int] = []
    for j in order.tolist():
        if kept:
            other = boxes[kept]
            inter_w = torch.minimum(other[:, 2], boxes[j, 2]) - torch.maximum(other[:, 0], boxes[j, 0])
            inter_h = torch.minimum(other[:, 3], boxes[j, 3]) - torch.maximum(other[:, 1], boxes[j, 1])
            inter = torch.where((inter_w > 0) & (inter_h > 0), inter_w * inter_h, torch.zeros(()))
            overlap = torch.where(inter > 0, inter / (area[kept] + area[j] - inter), torch.zeros(()))
            if bool((overlap > p.nms_threshold).any()):
                continue
        kept.append(j)
    return kept


HANDLERS = [Permute(), Normalize(), PriorBox(), DetectionOutput()]

__all__ = ["DetectionOutput", "Normalize", "Permute", "PriorBox", "prior_boxes"]
