"""Re-ID evaluation: features of query and gallery, then torchreid's own Market-1501 ranking (CMC and mAP).

torchreid's ``engine.test`` returns Rank-1 and mAP only and prints the rest; the CMC curve is needed for the
plots, so features are extracted here and ranked with ``torchreid.metrics.evaluate_rank``. Its Python fallback
builds one CMC row per query of length ``min(max_rank, gallery left after the same-camera removal)``: ranks are
capped at the smallest such length so that rows never differ in length (and no rank exceeds the gallery).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .datasets import torchreid  # noqa: F401  (imports torchreid with its Cython warning silenced)
from torchreid import metrics


@torch.no_grad()
def extract_features(model, loader, device: str = "cpu"):
    """(features (N, D) float tensor on CPU, pids (N,), camids (N,)) of a torchreid test loader."""
    was_training = model.training
    model.eval()
    feats, pids, camids = [], [], []
    for batch in loader:
        feats.append(model(batch["img"].to(device)).float().cpu())
        pids.extend(batch["pid"].tolist())
        camids.extend(batch["camid"].tolist())
    model.train(was_training)
    return torch.cat(feats, 0), np.asarray(pids), np.asarray(camids)


def rank_cap(q_pids, q_camids, g_pids, g_camids, max_rank: int = 50) -> int:
    """The largest rank every query can be scored at: gallery size minus its same-pid same-camera images."""
    same = (q_pids[:, None] == g_pids[None, :]) & (q_camids[:, None] == g_camids[None, :])
    return int(max(1, min(max_rank, len(g_pids) - int(same.sum(1).max()))))


def rank_metrics(qf, q_pids, q_camids, gf, g_pids, g_camids, dist_metric: str = "euclidean",
                 normalize_feature: bool = False, max_rank: int = 50) -> dict:
    """mAP and the CMC curve in percent; rank5/rank10 are NaN when the gallery is too small for them."""
    if normalize_feature:
        qf = torch.nn.functional.normalize(qf, p=2, dim=1)
        gf = torch.nn.functional.normalize(gf, p=2, dim=1)
    distmat = metrics.compute_distance_matrix(qf, gf, dist_metric).numpy()
    cap = rank_cap(q_pids, q_camids, g_pids, g_camids, max_rank)
    cmc, mAP = metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=cap,
                                     use_metric_cuhk03=False)
    cmc = [float(c) * 100.0 for c in cmc]

    def at(r):
        return cmc[r - 1] if r <= len(cmc) else math.nan

    return {"mAP": float(mAP) * 100.0, "rank1": at(1), "rank5": at(5), "rank10": at(10), "cmc": cmc,
            "num_query": int(len(q_pids)), "num_gallery": int(len(g_pids))}


def evaluate(model, datamanager, name: str | None = None, device: str = "cpu", dist_metric: str = "euclidean",
             normalize_feature: bool = False, max_rank: int = 50) -> dict:
    """Evaluate ``model`` on the query/gallery of target ``name`` (the first target by default)."""
    name = name or datamanager.targets[0]
    loaders = datamanager.test_loader[name]
    qf, q_pids, q_camids = extract_features(model, loaders["query"], device)
    gf, g_pids, g_camids = extract_features(model, loaders["gallery"], device)
    return rank_metrics(qf, q_pids, q_camids, gf, g_pids, g_camids, dist_metric, normalize_feature, max_rank)
