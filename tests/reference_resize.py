"""Numpy references for the resize family, written from the spec (3.9, 3.10) and from
OpenCV's measured Resample rule; loops over the formulas, not the handler's recipes."""

from __future__ import annotations

import math

import numpy as np


def caffe_interp(x: np.ndarray, out_h: int, out_w: int, pad_beg: int = 0, pad_end: int = 0) -> np.ndarray:
    """Caffe's Interp forward: crop to ``[-pad_beg, -pad_beg + H_eff)``, then caffe_cpu_interp2."""
    n, c, h, w = x.shape
    h_eff, w_eff = h + pad_beg + pad_end, w + pad_beg + pad_end
    window = x[:, :, -pad_beg : -pad_beg + h_eff, -pad_beg : -pad_beg + w_eff].astype(np.float32)
    if (h_eff, w_eff) == (out_h, out_w):
        return window.copy()
    f32 = np.float32
    rh = f32(h_eff - 1) / f32(out_h - 1) if out_h > 1 else f32(0)
    rw = f32(w_eff - 1) / f32(out_w - 1) if out_w > 1 else f32(0)
    y = np.zeros((n, c, out_h, out_w), np.float32)
    for i in range(out_h):
        src_h = f32(rh * f32(i))
        h0 = int(src_h)
        h1 = h0 + (1 if h0 < h_eff - 1 else 0)
        lam_h = f32(src_h - f32(h0))
        for j in range(out_w):
            src_w = f32(rw * f32(j))
            w0 = int(src_w)
            w1 = w0 + (1 if w0 < w_eff - 1 else 0)
            lam_w = f32(src_w - f32(w0))
            top = (f32(1) - lam_w) * window[:, :, h0, w0] + lam_w * window[:, :, h0, w1]
            bottom = (f32(1) - lam_w) * window[:, :, h1, w0] + lam_w * window[:, :, h1, w1]
            y[:, :, i, j] = (f32(1) - lam_h) * top + lam_h * bottom
    return y


def pixel_shuffle(x: np.ndarray, r: int) -> np.ndarray:
    """Input channel ``c r^2 + i r + j`` at (h, w) goes to output (c, h r + i, w r + j)."""
    n, channels, h, w = x.shape
    y = np.zeros((n, channels // (r * r), h * r, w * r), x.dtype)
    for ch in range(channels):
        c, rest = divmod(ch, r * r)
        i, j = divmod(rest, r)
        y[:, c, i::r, j::r] = x[:, ch]
    return y


def opencv_nearest(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """OpenCV's nearest resize (cv::resize INTER_NEAREST, in double precision):
    output position ``o`` reads ``min(floor(o * (1 / (out / in))), in - 1)``."""
    h, w = x.shape[2:]
    y = np.zeros((*x.shape[:2], out_h, out_w), x.dtype)
    for i in range(out_h):
        src_h = min(math.floor(i * (1.0 / (out_h / h))), h - 1)
        for j in range(out_w):
            src_w = min(math.floor(j * (1.0 / (out_w / w))), w - 1)
            y[:, :, i, j] = x[:, :, src_h, src_w]
    return y
