"""Numpy reference of Caffe's pooling forward, written from spec section 3.5 (not from our code).

It follows Caffe's CPU loops window by window (``PoolingLayer::Forward_cpu``) and, for
STOCHASTIC, the test-time GPU kernel (``StoPoolForwardTest``). Values are computed in
float64; the MAX mask is Caffe's per-plane index ``h * W + w`` as float32, -1 for an
empty window (whose value is -FLT_MAX).
"""

from __future__ import annotations

import math

import numpy as np

MAX, AVE, STOCHASTIC = "MAX", "AVE", "STOCHASTIC"
FLT_MAX = float(np.finfo(np.float32).max)


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool, any_pad: bool) -> int:
    """``PoolingLayer::Reshape``: ceil (or floor) rounding, then the clip rule when the layer pads."""
    span = (size + 2 * pad - kernel) / stride
    n = (math.ceil(span) if ceil else math.floor(span)) + 1
    if any_pad and (n - 1) * stride >= size + pad:
        n -= 1
    return n


def caffe_pool(
    x: np.ndarray,
    method: str,
    kernel: tuple[int, int] | None,
    stride: tuple[int, int] = (1, 1),
    pad: tuple[int, int] = (0, 0),
    ceil: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(top, mask) of a Caffe Pooling layer on an NCHW input; ``kernel=None`` is global pooling.

    The mask is returned for MAX only (None otherwise).
    """
    x = np.asarray(x, dtype=np.float64)
    n_, c_, height, width = x.shape
    if kernel is None:
        kernel, stride, pad = (height, width), (1, 1), (0, 0)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    any_pad = ph > 0 or pw > 0
    out_h = caffe_pooled_size(height, kh, sh, ph, ceil, any_pad)
    out_w = caffe_pooled_size(width, kw, sw, pw, ceil, any_pad)
    top = np.zeros((n_, c_, out_h, out_w), np.float64)
    mask = np.full((n_, c_, out_h, out_w), -1.0, np.float32) if method == MAX else None
    for oh in range(out_h):
        for ow in range(out_w):
            hstart, wstart = oh * sh - ph, ow * sw - pw
            if method == MAX:
                hend, wend = min(hstart + kh, height), min(wstart + kw, width)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                window = x[:, :, hstart:hend, wstart:wend].reshape(n_, c_, -1)
                if window.shape[2] == 0:  # a window that starts past the input: nothing beats -FLT_MAX
                    top[:, :, oh, ow] = -FLT_MAX
                    continue
                # Caffe scans row-major with a strict '>' from -FLT_MAX: the first maximum wins,
                # which is what argmax of the row-major flattened window returns.
                first = window.argmax(axis=2)
                best = np.take_along_axis(window, first[..., None], axis=2)[..., 0]
                rows, cols = hstart + first // (wend - wstart), wstart + first % (wend - wstart)
                won = best > -FLT_MAX
                top[:, :, oh, ow] = np.where(won, best, -FLT_MAX)
                mask[:, :, oh, ow] = np.where(won, rows * width + cols, -1)
            elif method == AVE:
                hend, wend = min(hstart + kh, height + ph), min(wstart + kw, width + pw)
                pool_size = (hend - hstart) * (wend - wstart)  # counts pad cells, not the overhang
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, height), min(wend, width)
                total = x[:, :, hstart:hend, wstart:wend].sum(axis=(2, 3))
                with np.errstate(divide="ignore", invalid="ignore"):
                    top[:, :, oh, ow] = total / pool_size
            elif method == STOCHASTIC:  # test time, no padding: sum(x^2) / sum(x), 0 if sum <= 0
                hend, wend = min(hstart + kh, height), min(wstart + kw, width)
                window = x[:, :, hstart:hend, wstart:wend]
                total = window.sum(axis=(2, 3))
                squares = (window * window).sum(axis=(2, 3))
                safe = np.where(total > 0, total, 1.0)
                top[:, :, oh, ow] = np.where(total > 0, squares / safe, 0.0)
            else:
                raise ValueError(f"unknown pooling method {method}")
    return top, mask
