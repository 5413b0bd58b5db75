"""The Fréchet distance between two Gaussians fitted to feature sets (FID and its re-ID-feature variant), by
pytorch-fid's ``calculate_frechet_distance`` (the one upstream PCDMs copies)."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
from scipy import linalg

log = logging.getLogger(__name__)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of an (N, D) feature array, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an (N, D) feature array with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``; where ``S1 S2`` is (near) singular, as with fewer samples
    than feature dimensions, pytorch-fid adds ``eps`` to both diagonals. ValueError for mismatched shapes and for
    1-d features (SciPy 1.17's ``sqrtm`` returns a 1x1 root without the error estimate pytorch-fid unpacks)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    if mu1.size < 2:
        raise ValueError(f"need features of at least 2 dimensions, got {mu1.size}")
    said = io.StringIO()
    # pytorch-fid prints its singular-product fix to stdout (where --json output goes) and passes SciPy's
    # deprecated sqrtm(disp=False): the print goes to the log, the deprecation and singularity warnings are
    # expected with few samples
    with contextlib.redirect_stdout(said), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        value = calculate_frechet_distance(mu1, s1, mu2, s2, eps=eps)
    if said.getvalue().strip():
        log.warning("Fréchet distance (pytorch-fid): %s", said.getvalue().strip())
    return float(value)


def frechet_distance_of(features_a, features_b) -> float:
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))
