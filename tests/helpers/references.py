"""Independent references written from the paper's formulas (NumPy, float64, explicit loops)."""

import itertools

import numpy as np


def reference_partial_conv(x, mask, kernel, bias, stride, dilation):
    """Eq. 1 with explicit loops over windows, float64. mask is (N,H,W,C_in) or (N,H,W,1)."""
    x = np.asarray(x, np.float64)
    mask = np.broadcast_to(np.asarray(mask, np.float64), x.shape)
    kernel = np.asarray(kernel, np.float64)
    kh, kw, c_in, c_out = kernel.shape
    ph, pw = dilation * (kh - 1) // 2, dilation * (kw - 1) // 2
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    mp = np.pad(mask, ((0, 0), (ph, ph), (pw, pw), (0, 0)))  # outside the image is hole
    h_out = (h + 2 * ph - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w + 2 * pw - dilation * (kw - 1) - 1) // stride + 1
    y = np.zeros((n, h_out, w_out, c_out))
    new_mask = np.zeros((n, h_out, w_out, 1))
    for b, i, j in itertools.product(range(n), range(h_out), range(w_out)):
        rows = i * stride + dilation * np.arange(kh)
        cols = j * stride + dilation * np.arange(kw)
        xw = xp[b][np.ix_(rows, cols)]
        mw = mp[b][np.ix_(rows, cols)]
        total = mw.sum()
        if total > 0:
            y[b, i, j] = np.einsum("hwc,hwco->o", xw * mw, kernel) * (c_in * kh * kw) / total
            if bias is not None:
                y[b, i, j] += bias
            new_mask[b, i, j] = 1
    return y, new_mask
