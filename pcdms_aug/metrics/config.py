"""The metrics config (``configs/*/metrics.yaml``): batch size, device, seed, and per metric whether it runs and
the local files of its weights."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from pcdms_aug.config.loading import build, load_config
from pcdms_aug.utils.errors import DataError

REFERENCES = ("train", "targets")


@dataclass
class LPIPSConfig:
    enabled: bool = True
    alexnet_weights: str | None = None   # torchvision AlexNet state dict (alexnet-owt-7be5be79.pth)
    linear_weights: str | None = "lpips"  # LPIPS v0.1 alex.pth; "lpips" / "torchmetrics": the copy each ships
    upstream_unit_range: bool = False    # feed [0, 1] images as upstream's script does (LPIPS expects [-1, 1])


@dataclass
class FIDConfig:
    enabled: bool = True
    inception_weights: str | None = None  # torchvision inception_v3_google-*.pth or pytorch-fid pt_inception-*.pth
    max_reference: int | None = None      # at most this many training images (seeded sample); null: all
    reference: str = "train"              # train: the training images; targets: the pairs' true targets


@dataclass
class ReidFIDConfig:
    enabled: bool = True
    model: str | None = "osnet_x0_25"     # torchreid architecture name
    weights: str | None = None            # torchreid checkpoint of that architecture
    height: int = 128
    width: int = 64
    reference: str = "train"              # as FIDConfig.reference (fid.max_reference caps both)


@dataclass
class MetricsConfig:
    batch_size: int = 32
    device: str = "auto"
    seed: int = 0                         # fid.max_reference's sample and the bootstrap
    fid_bootstrap: int = 0                # resamples for the spread (sd) of each FID; 0: none
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    fid: FIDConfig = field(default_factory=FIDConfig)
    fid_reid: ReidFIDConfig = field(default_factory=ReidFIDConfig)

    def check(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        mr = self.fid.max_reference
        if mr is not None and (not isinstance(mr, int) or mr < 2):
            raise DataError(f"fid.max_reference must be null or an integer >= 2, got {mr!r}")
        for key, c in (("fid", self.fid), ("fid_reid", self.fid_reid)):
            if c.reference not in REFERENCES:
                raise DataError(f"{key}.reference must be one of {', '.join(REFERENCES)}, got {c.reference!r}")
        if not isinstance(self.fid_bootstrap, int) or isinstance(self.fid_bootstrap, bool) or self.fid_bootstrap < 0:
            raise DataError(f"fid_bootstrap must be a non-negative integer, got {self.fid_bootstrap!r}")


def as_config(config) -> MetricsConfig:
    """None (defaults), a MetricsConfig, a mapping, or a YAML path (``tiny/metrics.yaml`` resolves too)."""
    if config is None:
        cfg = MetricsConfig()
    elif isinstance(config, MetricsConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = build(MetricsConfig, config, "metrics config")
    else:
        cfg = build(MetricsConfig, load_config(config), f"metrics config {config}")
    cfg.check()
    return cfg
