"""ROIPooling (Fast/Faster R-CNN fork, ``roi_pooling_param``: pooled_h, pooled_w, spatial_scale).

Caffe semantics (caffe-fast-rcnn roi_pooling_layer.cpp): bottoms are the features
``[N, C, H, W]`` and the ROIs ``[R, 5]`` (or ``[R, 5, 1, 1]``), each row
``[batch index, x1, y1, x2, y2]`` in image coordinates; the top is
``[R, C, pooled_h, pooled_w]``. Per ROI: ``start/end = round(coord * spatial_scale)``
(half away from zero), ``roi_h = max(y2' - y1' + 1, 1)`` (likewise w),
``bin = roi_h / pooled_h`` (float); bin ``ph`` covers rows
``[floor(ph*bin), ceil((ph+1)*bin))`` shifted by ``y1'`` and clipped to ``[0, H]``; the
output is the maximum over the bin, or 0 for an empty bin. The batch index is truncated to
an integer.

ONNX: ``MaxRoiPool`` (pooled_shape, spatial_scale); onnxruntime's kernel uses exactly
these rounding rules (round, floor/ceil bins, clipping, 0 for empty bins), checked
against a numpy reimplementation of Caffe's loop, including ROIs outside the map and
``x.5`` coordinates. The ROIs are reshaped to ``[R, 5]``.
PyTorch reference: per ROI, a separable masked max over the bins (rows, then columns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from caffe2onnx.ir import Layer, Shape
from caffe2onnx.layers.base import Handler, layer_error, prod, shape_error


@dataclass(frozen=True)
class ROIPoolingParams:
    pooled_h: int
    pooled_w: int
    spatial_scale: float


class ROIPooling(Handler):
    """Fast R-CNN ROI max pooling: ONNX ``MaxRoiPool`` (same rounding: checked exact)."""

    types = ("ROIPooling",)
    bottoms = (2, 2)

    def parse(self, lp) -> ROIPoolingParams:
        p = lp.roi_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise layer_error(
                lp, f"pooled_h and pooled_w must be > 0, got pooled_h {p.pooled_h}, pooled_w {p.pooled_w}"
            )
        return ROIPoolingParams(p.pooled_h, p.pooled_w, p.spatial_scale)

    def infer(self, layer: Layer, in_shapes: Sequence[Shape]) -> list[Shape]:
        p: ROIPoolingParams = layer.params
        features, rois = in_shapes
        if len(features) != 4:
            raise shape_error(layer, f"needs 4-D features (bottom 0), got shape {list(features)}")
        if len(rois) < 2 or prod(rois[1:]) != 5:
            raise shape_error(
                layer,
                f"ROIs (bottom 1) must be [R, 5] rows of [batch, x1, y1, x2, y2], got shape {list(rois)}",
            )
        return [(rois[0], features[1], p.pooled_h, p.pooled_w)]

    def to_onnx(self, layer: Layer, g) -> None:
        p: ROIPoolingParams = layer.params
        features, rois = layer.bottoms
        if len(g.shape(rois)) != 2:
            rois = g.reshape(rois, [g.shape(rois)[0], 5])
        g.op(
            "MaxRoiPool",
            [features, rois],
            layer.tops[0],
            pooled_shape=[p.pooled_h, p.pooled_w],
            spatial_scale=p.spatial_scale,
        )

    def to_torch(self, layer: Layer, inputs, weights):
        import torch

        p: ROIPoolingParams = layer.params
        features, rois = inputs
        height, width = features.shape[2:]
        scaled = _round_half_away(
            rois.reshape(-1, 5)[:, 1:] * torch.tensor(p.spatial_scale, dtype=rois.dtype)
        )
        outputs = []
        for roi, (x1, y1, x2, y2) in zip(rois.reshape(-1, 5), scaled.to(torch.int64).tolist()):
            image = features[int(roi[0])]
            rows = _bin_masks(y1, y2, p.pooled_h, height, features.device)  # [pooled_h, H]
            cols = _bin_masks(x1, x2, p.pooled_w, width, features.device)  # [pooled_w, W]
            low = torch.finfo(features.dtype).min
            # max over each column bin: [C, H, pooled_w], then over each row bin: [C, pooled_h, pooled_w]
            by_col = torch.where(cols[None, None], image[:, :, None, :], low).amax(dim=3)
            pooled = torch.where(rows[None, :, :, None], by_col[:, None], low).amax(dim=2)
            empty = ~(rows.any(dim=1)[:, None] & cols.any(dim=1)[None, :])
            outputs.append(torch.where(empty, torch.zeros(()), pooled))
        if not outputs:
            return [features.new_zeros((0, features.shape[1], p.pooled_h, p.pooled_w))]
        return [torch.stack(outputs)]


def _round_half_away(x):
    import torch

    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def _bin_masks(start: int, end: int, bins: int, size: int, device):
    """``[bins, size]``: which rows (or columns) each bin of one ROI covers."""
    import torch

    length = max(end - start + 1, 1)
    bin_size = np.float32(length) / np.float32(bins)  # float32 arithmetic, as in Caffe
    mask = torch.zeros((bins, size), dtype=torch.bool, device=device)
    for b in range(bins):
        lo = min(max(math.floor(np.float32(b) * bin_size) + start, 0), size)
        hi = min(max(math.ceil(np.float32(b + 1) * bin_size) + start, 0), size)
        mask[b, lo:hi] = True
    return mask


HANDLERS = [ROIPooling()]

__all__ = ["ROIPooling"]
