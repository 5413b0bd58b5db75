"""Pixel metrics of one (ground truth, prediction) image pair, through scikit-image: SSIM as upstream computes it,
and PSNR.

The PCDMs / PIDM / GFLA evaluation scripts call ``structural_similarity(gt, pred, gaussian_weights=True,
sigma=1.2, use_sample_covariance=False, channel_axis=2, data_range=pred.max() - pred.min())`` on 0..255 images;
:func:`ssim_upstream` makes that call (in float64, where upstream's arrays are float32: ~1e-6 apart).
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

SSIM_SIGMA = 1.2  # upstream's value (tencent-ailab/PCDMs metrics.py), not the 1.5 of Wang et al.
SSIM_K1, SSIM_K2 = 0.01, 0.03  # scikit-image's defaults, which upstream keeps


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
    return float(structural_similarity(x, y, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                       K1=SSIM_K1, K2=SSIM_K2, data_range=data_range,
                                       channel_axis=2 if x.ndim == 3 else None))


def psnr(gt, pred, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    x, y = _pair(gt, pred)
    with np.errstate(divide="ignore"):  # identical images: mse 0, PSNR inf (what scikit-image returns)
        return float(peak_signal_noise_ratio(x, y, data_range=data_range))
