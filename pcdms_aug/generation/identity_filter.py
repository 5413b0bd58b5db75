"""Identity-consistency filter: does a generated view still look like its identity to a re-ID model?

Unfiltered generated data can hurt re-ID (a view that drifted to another look teaches the model a wrong label).
Each view is scored by the cosine similarity of its re-ID feature to the real images of its identity: to the mean
of their L2-normalised features (``reduce="mean"``) or to the closest one (``"max"``). A view is kept when its
score reaches a threshold, or when it is among the top fraction of its identity's views (or of all views).

The re-ID model is any torchreid architecture with a local checkpoint (``model.pth.tar-N`` written by torchreid's
engine, or ``{"state_dict": ...}``, or a bare state dict), built with ``pretrained=False``: nothing is downloaded.
:func:`load_filter_trainer` finds the re-ID plugin's trainer of a small one on the real training images, for
when none is at hand.

Images are embedded one at a time: a batch's composition can change float rounding, and a score must not depend
on which other views happened to be scored beside it (a resumed run must give the same manifest).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pcdms_aug.config.options import option
from pcdms_aug.utils.argtypes import finite_float, int_in
from pcdms_aug.utils.errors import DataError, shown
from pcdms_aug.utils.io import file_sha256

REDUCE = ("mean", "max")
TOP_SCOPE = ("identity", "all")
FILTER_TRAINERS = "pcdms_aug.filter_trainers"  # entry point group (setup.cfg)
MAX_EPOCHS = 1000


@dataclass
class FilterConfig:
    """The filter's options (the ``filter:`` section of generate's config; flags ``--filter-*``)."""

    # None: no filter (score empty, every view kept)
    model: str | None = option(help="re-ID checkpoint (torchreid model.pth.tar-N or a state dict) for the "
                                    "identity-consistency filter; 'train' trains a small one on the real images first")
    arch: str = option("osnet_x0_25", help="torchreid model name of the checkpoint (default osnet_x0_25)")
    reduce: str = option("mean", choices=REDUCE,
                         help="similarity to the mean real feature (default) or to the closest")
    size: tuple[int, int] = (256, 128)  # (height, width) the model was trained at
    # A rule: a threshold or a top fraction (no model: no rule, every view kept).
    threshold: float | None = option(type=finite_float(-1.0, 1.0), group="rule",
                                     help="keep views whose score reaches this cosine")
    top: float | None = option(type=finite_float(0.0, 1.0, lo_open=True), group="rule", metavar="FRACTION",
                               help="keep this fraction of the best views")
    top_scope: str = option("identity", choices=TOP_SCOPE,
                            help="top fraction of each identity's views (default) or of all")
    train_epochs: int = option(10, type=int_in(1, MAX_EPOCHS), help="epochs of --filter-model train (default 10)")

    def check(self) -> None:
        if self.reduce not in REDUCE:
            raise DataError(f"filter.reduce must be one of {', '.join(REDUCE)}, got {shown(self.reduce)}")
        if self.top_scope not in TOP_SCOPE:
            raise DataError(f"filter.top_scope must be one of {', '.join(TOP_SCOPE)}, got {shown(self.top_scope)}")
        if self.threshold is not None and self.top is not None:
            raise DataError("give --filter-threshold or --filter-top, not both")
        if self.top is not None and not 0.0 < float(self.top) <= 1.0:
            raise DataError(f"--filter-top must be a fraction in (0, 1], got {self.top}")
        if self.threshold is not None and not -1.0 <= float(self.threshold) <= 1.0:
            raise DataError(f"--filter-threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        from pcdms_aug.config.loading import check_ranges

        check_ranges(self, {"train_epochs": (1, MAX_EPOCHS)}, "filter")
        if len(tuple(self.size)) != 2 or not all(isinstance(v, int) and 16 <= v <= 1024 for v in self.size):
            raise DataError(f"filter.size must be [height, width], each 16..1024, got {shown(self.size)}")


def scorer_fingerprint(cfg: FilterConfig) -> str | None:
    """What the scores depend on: architecture, checkpoint bytes, reduction and input size (None: no filter)."""
    if not cfg.model:
        return None
    path = Path(cfg.model)
    if not path.is_file():
        raise DataError("filter model (re-ID checkpoint) not found", path)
    return f"{cfg.arch}:{file_sha256(path)[:12]}:{cfg.reduce}:{int(cfg.size[0])}x{int(cfg.size[1])}"


class ConsistencyScorer:
    """Scores views against their identity's real images with one re-ID model."""

    def __init__(self, cfg: FilterConfig, device: str = "cpu"):
        from pcdms_aug.metrics.reid_features import load_reid_features

        cfg.check()
        if not cfg.model:
            raise DataError("no filter model given (--filter-model PATH)")
        self.cfg = cfg
        self.device = device
        self.net = load_reid_features(cfg.arch, cfg.model, tuple(cfg.size)).to(device)
        self.fingerprint = scorer_fingerprint(cfg)
        self.references: dict[int, np.ndarray] = {}

    def embed(self, images: Sequence) -> np.ndarray:
        """(N, D) L2-normalised features of PIL images, each embedded alone (see the module note)."""
        import torch

        out = []
        with torch.no_grad():
            for im in images:
                x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
                x = x.permute(2, 0, 1)[None].to(self.device)
                f = self.net(x).float().cpu().numpy()[0].astype(np.float64)
                out.append(f / max(np.linalg.norm(f), 1e-12))
        return np.stack(out) if out else np.zeros((0, 0))

    def add_identity(self, pid: int, images: Sequence) -> None:
        """Set an identity's real images (PIL); only their features are kept."""
        feats = self.embed(images)
        if self.cfg.reduce == "mean":
            m = feats.mean(0)
            feats = (m / max(np.linalg.norm(m), 1e-12))[None]
        self.references[int(pid)] = feats

    def score(self, images: Sequence, pids: Sequence[int]) -> list[float]:
        missing = sorted({int(p) for p in pids} - set(self.references))
        if missing:
            raise ValueError(f"no real images registered for identity {missing[0]:04d}")
        feats = self.embed(images)
        return [float(np.max(self.references[int(p)] @ f)) for f, p in zip(feats, pids)]


def select(scores: Sequence[float | None], pids: Sequence[int], threshold: float | None = None,
           top: float | None = None, scope: str = "identity") -> list[bool]:
    """Which views to keep. No rule, or no score: kept. Top fraction: ceil(top * n) per identity (or of all),
    the highest scores first, ties to the earlier view."""
    n = len(scores)
    if threshold is None and top is None:
        return [True] * n
    if any(s is None for s in scores):
        raise DataError("a filter rule needs a score for every view; run with --filter-model")
    if threshold is not None:
        return [float(s) >= float(threshold) for s in scores]
    groups: dict = defaultdict(list)
    for i, p in enumerate(pids):
        groups[int(p) if scope == "identity" else 0].append(i)
    keep = [False] * n
    for members in groups.values():
        k = math.ceil(float(top) * len(members) - 1e-9)
        for i in sorted(members, key=lambda i: (-float(scores[i]), i))[:k]:
            keep[i] = True
    return keep


def load_filter_trainer():
    """``train_filter_model(dataset, out, *, split, arch, epochs, size, seed, device) -> Path`` of the installed
    re-ID plugin (entry point group ``pcdms_aug.filter_trainers``, name ``train``): training a re-ID model is
    the plugin's part, so this package never imports it."""
    from importlib.metadata import entry_points

    found = entry_points(group=FILTER_TRAINERS, name="train")
    if not found:
        raise DataError("--filter-model train needs the reid plugin (pip install -e .): no "
                        f"'train' entry point in group {FILTER_TRAINERS}")
    return next(iter(found)).load()
