"""Numpy references written from the Caffe semantics in ../shared/spec (not from our code).

Each function follows Caffe's CPU loops (direct sums over windows), so it is an
independent check of both the ONNX recipe and the PyTorch reference.
"""

from __future__ import annotations

import numpy as np


def conv2d(x, w, b, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """Caffe Convolution: cross-correlation, zero padding, grouped channels."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), np.float64)
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    out = np.zeros((n, o, oh, ow), np.float64)
    og = o // group
    for g in range(group):
        xs = xp[:, g * cg : (g + 1) * cg]
        ws = w[g * og : (g + 1) * og].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[
                    :, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw
                ]
                out[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        out += np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return out


def deconv2d(x, w, b, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """Caffe Deconvolution: scatter-add of each input pixel times its kernel (col2im), then crop pad."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    full_h = sh * (h - 1) + dh * (kh - 1) + 1
    full_w = sw * (wd - 1) + dw * (kw - 1) + 1
    o = og * group
    cg = c // group
    full = np.zeros((n, o, full_h, full_w), np.float64)
    for g in range(group):
        xs = x[:, g * cg : (g + 1) * cg].astype(np.float64)
        ws = w[g * cg : (g + 1) * cg].astype(np.float64)  # [cg, og, kh, kw]
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("nchw,co->nohw", xs, ws[:, :, i, j])
                full[
                    :,
                    g * og : (g + 1) * og,
                    i * dh : i * dh + sh * (h - 1) + 1 : sh,
                    j * dw : j * dw + sw * (wd - 1) + 1 : sw,
                ] += contrib
    out = full[:, :, ph : full_h - ph, pw : full_w - pw]
    if b is not None:
        out = out + np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return out
