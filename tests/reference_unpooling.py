"""Numpy references for unpooling and nearest upsampling, written from the spec's loops.

* ``max_pool_with_mask``: Caffe's CPU MAX pooling (spec 3.5) and its float mask top.
* ``segnet_upsample``: SegNet's Upsample forward (spec 3.6), the scan order of Caffe's CPU
  loop, so the last write to an index wins.
* ``nearest_upsample``: the YOLO Upsample forward (spec 3.8).
* ``deconvnet_unpool``: DeconvNet's Unpooling forward (spec 3.7), MAX/AVE/TILE.
"""

from __future__ import annotations

import math

import numpy as np


def max_pool_with_mask(x, kernel, stride, pad=(0, 0), ceil=True):
    """(values, mask): windows clipped to the input; the first maximum in row-major order wins."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    sizes = []
    for d, k, s, p in ((h, kh, sh, ph), (w, kw, sw, pw)):
        rounding = math.ceil if ceil else math.floor
        out = rounding((d + 2 * p - k) / s) + 1
        if (ph or pw) and (out - 1) * s >= d + p:
            out -= 1
        sizes.append(out)
    oh, ow = sizes
    values = np.zeros((n, c, oh, ow), np.float32)
    mask = np.zeros((n, c, oh, ow), np.float32)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * sh - ph, j * sw - pw
                    he, we = min(hs + kh, h), min(ws + kw, w)
                    hs, ws = max(hs, 0), max(ws, 0)
                    best, where = -np.finfo(np.float32).max, -1
                    for y in range(hs, he):
                        for z in range(ws, we):
                            if x[b, ch, y, z] > best:
                                best, where = x[b, ch, y, z], y * w + z
                    values[b, ch, i, j] = best
                    mask[b, ch, i, j] = where
    return values, mask


def segnet_upsample(x, mask, out_h, out_w):
    """top zeros; then top_plane[int(mask[i])] = x[i] in scan order (the last write wins).

    A mask of -1 (an empty pooling window) is undefined behaviour in Caffe; caffe2onnx
    writes nothing for it, and so does this reference.
    """
    n, c, h, w = x.shape
    top = np.zeros((n, c, out_h * out_w), np.float32)
    for b in range(n):
        for ch in range(c):
            for i in range(h * w):
                index = int(mask[b, ch].flat[i])
                if index == -1:
                    continue
                assert 0 <= index < out_h * out_w, "Caffe: upsample top index out of range"
                top[b, ch, index] = x[b, ch].flat[i]
    return top.reshape(n, c, out_h, out_w)


def nearest_upsample(x, scale):
    """out[..., h, w] = in[..., h // scale, w // scale]."""
    h, w = x.shape[-2:]
    out = np.zeros((*x.shape[:-2], h * scale, w * scale), np.float32)
    for i in range(h * scale):
        for j in range(w * scale):
            out[..., i, j] = x[..., i // scale, j // scale]
    return out


def deconvnet_unpool(x, method, kernel, stride, out_size, mask=None):
    """DeconvNet's Unpooling forward (pad 0): MAX with/without mask, AVE, TILE."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_size
    top = np.zeros((n, c, oh, ow), np.float64)
    for b in range(n):
        for ch in range(c):
            plane = top[b, ch]
            for i in range(h):
                for j in range(w):
                    value = float(x[b, ch, i, j])
                    if method == "MAX":
                        if mask is not None:
                            index = int(mask[b, ch, i, j])
                            plane.flat[index] = value
                        else:
                            plane[min(i * sh, oh - 1), min(j * sw, ow - 1)] = value
                        continue
                    hs, ws = i * sh, j * sw
                    he, we = min(hs + kh, oh), min(ws + kw, ow)
                    size = (he - hs) * (we - ws)
                    for y in range(hs, he):
                        for z in range(ws, we):
                            plane[y, z] += np.float32(value / size) if method == "AVE" else value
    return top
