"""Numpy references for the SSD layers, written from ../shared/spec (3.26) and the facts of
weiliu89/caffe's prior_box_layer.cpp, detection_output_layer.cpp and bbox_util.cpp (CPU
path), not from caffe2onnx's code. They follow Caffe's loops: one prior at a time, one
class at a time, NMS one candidate at a time.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def normalize(x, scale, across_spatial=True, eps=1e-10):
    """``x / sqrt(sum x^2 + eps)`` per sample (or per pixel over C), times scale."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        if across_spatial:
            out[n] = x[n] / math.sqrt(float((x[n] ** 2).sum()) + eps)
        else:
            out[n] = x[n] / np.sqrt((x[n] ** 2).sum(axis=0, keepdims=True) + eps)
    scale = np.asarray(scale, np.float64)
    return out * (scale if scale.ndim == 0 else scale.reshape((1, -1) + (1,) * (x.ndim - 2)))


def prior_box(
    feature_hw,
    image_hw,
    min_sizes,
    max_sizes=(),
    aspect_ratios=(),
    flip=True,
    clip=False,
    variance=(0.1,),
    img_hw=None,
    step_hw=None,
    offset=0.5,
):
    """Caffe's PriorBox forward, loop by loop; returns ``(1, 2, H*W*num_priors*4)``."""
    ratios = [1.0]
    for r in aspect_ratios:
        r = float(F32(r))
        if all(abs(r - known) >= 1e-6 for known in ratios):
            ratios.append(r)
            if flip:
                ratios.append(float(F32(1.0 / r)))
    layer_h, layer_w = feature_hw
    img_h, img_w = img_hw or image_hw
    if step_hw:
        step_h, step_w = F32(step_hw[0]), F32(step_hw[1])
    else:
        step_h, step_w = F32(img_h) / F32(layer_h), F32(img_w) / F32(layer_w)
    top = []
    for h in range(layer_h):
        for w in range(layer_w):
            center_x = F32((w + F32(offset)) * step_w)
            center_y = F32((h + F32(offset)) * step_h)
            for s, min_value in enumerate(min_sizes):
                min_size = int(min_value)
                widths_heights = [(F32(min_size), F32(min_size))]
                if max_sizes:
                    max_size = int(max_sizes[s])
                    side = F32(math.sqrt(min_size * max_size))
                    widths_heights.append((side, side))
                for r in ratios:
                    if abs(r - 1.0) < 1e-6:
                        continue
                    widths_heights.append((F32(min_size * math.sqrt(r)), F32(min_size / math.sqrt(r))))
                for bw, bh in widths_heights:
                    top += [
                        (float(center_x) - float(bw) / 2.0) / img_w,
                        (float(center_y) - float(bh) / 2.0) / img_h,
                        (float(center_x) + float(bw) / 2.0) / img_w,
                        (float(center_y) + float(bh) / 2.0) / img_h,
                    ]
    if clip:
        top = [min(max(v, 0.0), 1.0) for v in top]
    variances = list(variance) * (len(top) // len(variance))
    return np.asarray([top, variances], np.float32)[None]


# ----------------------------------------------------------------------------- DetectionOutput


def _size(box):
    xmin, ymin, xmax, ymax = box
    if xmax < xmin or ymax < ymin:
        return 0.0
    return (xmax - xmin) * (ymax - ymin)


def _jaccard(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w > 0 and inter_h > 0:
        inter = inter_w * inter_h
        return inter / (_size(a) + _size(b) - inter)
    return 0.0


def _decode(prior, variance, delta, code_type, variance_in_target):
    v = [1.0, 1.0, 1.0, 1.0] if variance_in_target else variance
    if code_type == "CORNER":
        return [prior[i] + v[i] * delta[i] for i in range(4)]
    pw, ph = prior[2] - prior[0], prior[3] - prior[1]
    if code_type == "CORNER_SIZE":
        return [prior[i] + v[i] * delta[i] * (pw if i % 2 == 0 else ph) for i in range(4)]
    cx = v[0] * delta[0] * pw + (prior[0] + prior[2]) / 2
    cy = v[1] * delta[1] * ph + (prior[1] + prior[3]) / 2
    w = math.exp(v[2] * delta[2]) * pw
    h = math.exp(v[3] * delta[3]) * ph
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _nms_fast(boxes, scores, threshold, nms_threshold, top_k):
    order = [i for i in range(len(scores)) if threshold is None or scores[i] > threshold]
    order.sort(key=lambda i: -scores[i])  # Python's sort is stable, like std::stable_sort
    if top_k > -1:
        order = order[:top_k]
    kept = []
    for idx in order:
        if all(_jaccard(boxes[idx], boxes[k]) <= nms_threshold for k in kept):
            kept.append(idx)
    return kept


def detection_output(
    loc,
    conf,
    prior,
    num_classes,
    share_location=True,
    background_label_id=0,
    nms_threshold=0.3,
    top_k=-1,
    keep_top_k=-1,
    confidence_threshold=None,
    code_type="CORNER",
    variance_encoded_in_target=False,
):
    """Caffe's DetectionOutput forward: the ``[num_det, 7]`` rows (no padding)."""
    num = loc.shape[0]
    num_priors = prior.shape[2] // 4
    loc_classes = 1 if share_location else num_classes
    loc = np.asarray(loc, np.float64).reshape(num, num_priors, loc_classes, 4)
    conf = np.asarray(conf, np.float64).reshape(num, num_priors, num_classes)
    priors = np.asarray(prior, np.float64).reshape(-1)[: 8 * num_priors].reshape(2, num_priors, 4)
    rows = []
    for i in range(num):
        decoded = {}
        for c in range(loc_classes):
            label = -1 if share_location else c
            decoded[label] = [
                _decode(priors[0, p], priors[1, p], loc[i, p, c], code_type, variance_encoded_in_target)
                for p in range(num_priors)
            ]
        indices = {}
        for c in range(num_classes):
            if c == background_label_id:
                continue
            boxes = decoded[-1 if share_location else c]
            indices[c] = _nms_fast(boxes, list(conf[i, :, c]), confidence_threshold, nms_threshold, top_k)
        num_det = sum(len(v) for v in indices.values())
        if keep_top_k > -1 and num_det > keep_top_k:
            pairs = [(conf[i, idx, c], c, idx) for c in sorted(indices) for idx in indices[c]]
            pairs.sort(key=lambda t: -t[0])
            indices = {}
            for _, c, idx in pairs[:keep_top_k]:
                indices.setdefault(c, []).append(idx)
        for c in sorted(indices):
            boxes = decoded[-1 if share_location else c]
            for idx in indices[c]:
                rows.append([i, c, conf[i, idx, c], *boxes[idx]])
    if not rows:
        return np.asarray([[i, -1, -1, -1, -1, -1, -1] for i in range(num)], np.float64)
    return np.asarray(rows, np.float64)


def padded(rows, total):
    """Rows padded with -1 rows to the converter's static ``[1, 1, total, 7]``."""
    table = np.full((total, 7), -1.0)
    table[: len(rows)] = rows
    return table.reshape(1, 1, total, 7)
