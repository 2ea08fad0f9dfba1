"""Numpy references for the normalization layers, written from ../shared/spec (3.11-3.14,
3.24 MVN, 3.25 LRN), not from caffe2onnx's code. All arithmetic is in float64.

They follow Caffe's CPU loops where the loop structure is the point: LRN sums explicit
channel and spatial windows, Scale/Bias view the input as ``(outer, dim, inner)``.
"""

from __future__ import annotations

import numpy as np


def lrn_across(x, size, alpha, beta, k):
    """``x * (k + alpha/size * sum of x^2 over the size channels around c)^-beta``."""
    x = np.asarray(x, np.float64)
    channels = x.shape[1]
    half = (size - 1) // 2
    out = np.empty_like(x)
    for c in range(channels):
        lo, hi = max(0, c - half), min(channels, c + half + 1)
        total = (x[:, lo:hi] ** 2).sum(axis=1)
        out[:, c] = x[:, c] * (k + alpha / size * total) ** (-beta)
    return out


def lrn_within(x, size, alpha, beta):
    """``x * (1 + alpha/size^2 * sum of x^2 over the size x size window)^-beta`` (k unused)."""
    x = np.asarray(x, np.float64)
    _, _, height, width = x.shape
    half = (size - 1) // 2
    out = np.empty_like(x)
    for h in range(height):
        for w in range(width):
            window = x[:, :, max(0, h - half) : h + half + 1, max(0, w - half) : w + half + 1]
            total = (window**2).sum(axis=(2, 3))
            out[:, :, h, w] = x[:, :, h, w] * (1 + alpha * total / size**2) ** (-beta)
    return out


def batch_norm(x, mean_sum, var_sum, factor, eps=1e-5):
    """Caffe BatchNorm with global statistics: blobs scaled by ``1/factor`` (0 if factor is 0)."""
    x = np.asarray(x, np.float64)
    s = float(np.asarray(factor).reshape(-1)[0])
    f = 0.0 if s == 0 else 1.0 / s
    mean = np.asarray(mean_sum, np.float64).reshape(-1) * f
    var = np.asarray(var_sum, np.float64).reshape(-1) * f
    view = (1, -1) + (1,) * (x.ndim - 2) if x.ndim > 1 else (-1,)
    return (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + eps)


def _outer_dim_inner(x, axis, operand):
    """View ``x`` as (outer, operand.size, inner) the way Caffe's Scale/Bias loops do."""
    operand = np.asarray(operand, np.float64)
    if operand.ndim == 0:
        axis = 0
    outer = int(np.prod(x.shape[:axis]))
    inner = int(np.prod(x.shape[axis + operand.ndim :]))
    return x.reshape(outer, operand.size, inner), operand.reshape(1, operand.size, 1)


def scale(x, axis, scale_values, bias_values=None):
    """Caffe Scale: each of the operand's values multiplies its inner block (then the bias)."""
    x = np.asarray(x, np.float64)
    if axis < 0:
        axis += x.ndim
    view, s = _outer_dim_inner(x, axis, scale_values)
    out = view * s
    if bias_values is not None:
        out = out + _outer_dim_inner(x, axis, bias_values)[1]
    return out.reshape(x.shape)


def bias(x, axis, bias_values):
    x = np.asarray(x, np.float64)
    if axis < 0:
        axis += x.ndim
    view, b = _outer_dim_inner(x, axis, bias_values)
    return (view + b).reshape(x.shape)


def mvn(x, normalize_variance=True, across_channels=False, eps=1e-9):
    """Caffe MVN: per (n, c) (or per n) ``(x - mean) / (sqrt(biased var) + eps)``."""
    x = np.asarray(x, np.float64)
    groups = x.shape[0] if across_channels else x.shape[0] * (x.shape[1] if x.ndim > 1 else 1)
    flat = x.reshape(groups, -1)
    centered = flat - flat.mean(axis=1, keepdims=True)
    if normalize_variance:
        std = np.sqrt((centered**2).mean(axis=1, keepdims=True))
        centered = centered / (std + eps)
    return centered.reshape(x.shape)


def segnet_bn_learn(x, scale_values, shift_values, var_eps=1e-9):
    """SegNet BN, bn_mode LEARN: statistics of this batch per channel over (N, H, W).

    Returns (y, batch mean, batch variance); the variance is the biased one, without eps.
    """
    x = np.asarray(x, np.float64)
    axes = (0, *range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    view = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean) / np.sqrt(var + var_eps) * np.reshape(scale_values, view) + np.reshape(shift_values, view)
    channels = x.shape[1]
    return y, mean.reshape(1, channels, 1, 1), var.reshape(1, channels, 1, 1)


def segnet_bn_inference(x, scale_values, shift_values):
    x = np.asarray(x, np.float64)
    view = (1, -1) + (1,) * (x.ndim - 2)
    return x * np.reshape(scale_values, view) + np.reshape(shift_values, view)


def psp_bn(x, slope, bias_values, mean, var, eps=1e-5):
    """PSPNet BN at test time: ``slope * (x - mean) / sqrt(var + eps) + bias``."""
    x = np.asarray(x, np.float64)
    view = (1, -1) + (1,) * (x.ndim - 2)

    def r(a):
        return np.asarray(a, np.float64).reshape(view)

    return r(slope) * (x - r(mean)) / np.sqrt(r(var) + eps) + r(bias_values)
