"""Pixel metrics of one (ground truth, prediction) image pair: SSIM as upstream computes it, and PSNR.

The PCDMs / PIDM / GFLA evaluation scripts call scikit-image's ``structural_similarity(gt, pred,
gaussian_weights=True, sigma=1.2, use_sample_covariance=False, multichannel=True,
data_range=pred.max() - pred.min())``. scikit-image is not a dependency, so the same computation is written here
with scipy: per channel, Gaussian-weighted local means, variances and covariance (``gaussian_filter`` with
``truncate=3.5`` and ``mode='reflect'``), the SSIM map cropped by the filter radius, its mean, then the mean over
channels. ``tests/test_metrics.py`` checks the agreement with scikit-image where it is installed.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

SSIM_SIGMA = 1.2
SSIM_TRUNCATE = 3.5  # what scikit-image fixes when gaussian_weights=True
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"images differ in shape: ground truth {gt.shape}, prediction {pred.shape}")
    if gt.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {gt.shape}")
    return gt.astype(np.float64), pred.astype(np.float64)


def ssim_upstream(gt, pred, sigma: float = SSIM_SIGMA, data_range: float | None = None) -> float:
    """Mean SSIM of (H, W[, C]) images, channels last, as upstream's scikit-image call computes it.

    ``data_range`` defaults to upstream's choice, the prediction's own range ``pred.max() - pred.min()``. Where the
    prediction is constant that range is 0 and upstream's value is NaN (0/0); 255 is used instead, so that one
    blank image does not turn the mean over a test set into NaN.
    """
    x, y = _pair(gt, pred)
    if data_range is None:
        data_range = float(y.max() - y.min()) or 255.0
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    radius = int(SSIM_TRUNCATE * sigma + 0.5)
    if min(x.shape[:2]) < 2 * radius + 1:
        raise ValueError(f"image {x.shape[:2]} is smaller than the {2 * radius + 1}-pixel SSIM window")
    # sigma 0 on the channel axis: each channel is filtered on its own, as scikit-image's per-channel loop does
    blur = lambda a: gaussian_filter(a, sigma=(sigma, sigma, 0), truncate=SSIM_TRUNCATE, mode="reflect")  # noqa: E731
    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    s = s[radius:s.shape[0] - radius, radius:s.shape[1] - radius]
    return float(np.mean([s[..., c].mean(dtype=np.float64) for c in range(s.shape[-1])]))


def psnr(gt, pred, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    x, y = _pair(gt, pred)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)
