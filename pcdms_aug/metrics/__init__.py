"""Synthesis metrics: SSIM as upstream computes it and PSNR (scikit-image), LPIPS-Alex (lpips), FID (pytorch-fid's
Fréchet distance; Inception or re-ID features), each beside the copy-source floor. Weights come from local files
only; absent ones refuse a metric.

The CLI (`pcdms-aug metrics`) is :mod:`.command`; the heavy parts (torch networks) are imported when used.

Room ``metrics``; may import ``utils``, ``config``, ``data``, ``testing``, ``models``, ``stages`` and ``pipelines``.
"""
from pcdms_aug.metrics.command import configure, format_table, run
from pcdms_aug.metrics.config import MetricsConfig
from pcdms_aug.metrics.evaluate import compute_metrics
from pcdms_aug.metrics.frechet import feature_stats, frechet_distance, frechet_distance_of
from pcdms_aug.metrics.pixels import psnr, ssim_upstream

__all__ = ["compute_metrics", "configure", "feature_stats", "format_table", "frechet_distance",
           "frechet_distance_of", "MetricsConfig", "psnr", "run", "ssim_upstream"]
