"""The metric networks a config asks for (LPIPS, FID's Inception, FID-reid's re-ID model), each from its local
weight files; one that cannot be built is refused with the reason and the others still run."""
from __future__ import annotations

import logging

from pcdms_aug.utils.errors import DataError
from pcdms_aug.metrics.config import MetricsConfig

log = logging.getLogger(__name__)


def _lpips(cfg: MetricsConfig):
    from pcdms_aug.metrics.perceptual import load_lpips

    return load_lpips(cfg.lpips.alexnet_weights, cfg.lpips.linear_weights)


def _inception(cfg: MetricsConfig):
    from pcdms_aug.metrics.inception import load_inception

    return load_inception(cfg.fid.inception_weights)


def _reid(cfg: MetricsConfig):
    from pcdms_aug.metrics.reid_features import load_reid_features

    c = cfg.fid_reid
    return load_reid_features(c.model, c.weights, (c.height, c.width))


BUILDERS = {"lpips": _lpips, "fid": _inception, "fid_reid": _reid}


def _labels(cfg: MetricsConfig, nets: dict) -> dict:
    unit = cfg.lpips.upstream_unit_range
    rng = "[0, 1] as upstream's script feeds them (LPIPS expects [-1, 1])" if unit else "[-1, 1]"
    labels = {"lpips": f"LPIPS (lpips package, AlexNet, v0.1 linear heads; inputs in {rng}; lower is better)",
              "fid": "FID (Inception-v3 2048-d pool features, generated vs training images)",
              "fid_reid": "FID (re-ID features, generated vs training images)"}
    if "fid" in nets:
        labels["fid"] = f"FID ({nets['fid'].label}; 2048-d pool features, generated vs training images)"
    if "fid_reid" in nets:
        labels["fid_reid"] = f"FID ({nets['fid_reid'].label}; generated vs training images)"
    return labels


def build_networks(cfg: MetricsConfig, device: str) -> tuple[dict, dict, dict]:
    """(networks, refusals, labels) for LPIPS, FID and FID-reid: a disabled metric or one whose weights are
    absent or unfit is refused with the reason (a one-line DataError's text)."""
    nets, refused = {}, {}
    for key, make in BUILDERS.items():
        if not getattr(cfg, key).enabled:
            refused[key] = f"disabled in the config ({key}.enabled: false)"
            continue
        try:
            nets[key] = make(cfg).to(device)
        except DataError as e:
            refused[key] = str(e)
            log.warning("%s refused (the reason is in the report): %s", key, e.reason)
    return nets, refused, _labels(cfg, nets)
