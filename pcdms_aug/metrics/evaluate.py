"""Generated target images against ground truth over a pairs CSV: SSIM, PSNR, LPIPS, FID, FID on re-ID features.

Every metric is also computed for the copy-source row (each target replaced by its source image), the floor a
generator has to beat, and the FIDs for the ground-truth row (each generated image replaced by its true target):
what a perfect generator scores. Against training images of other identities a perfect generator does not beat
copy-the-source (both are real images of the test identities), so an FID below the ground truth's is no gain.
``reference: targets`` measures an FID against the pairs' true targets instead (a perfect generator: 0), and
``fid_bootstrap: N`` adds the spread of every FID over N resamples. Metrics whose weights are absent are refused
with the reason; the others still run.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..config import build, load_config
from ..data.market import MarketDataset, load_image
from ..errors import DataError
from ..pose import read_pairs
from .frechet import frechet_distance_of
from .pixels import psnr, ssim_upstream

log = logging.getLogger(__name__)

ROWS = ("generated", "copy_source", "ground_truth")
METRICS = ("ssim", "psnr", "lpips", "fid", "fid_reid")
REFERENCES = ("train", "targets")
ORACLE_LABEL = "oracle best-of-{k} (uses ground truth; not available for augmentation)"


def generated_name(frm: str, to: str, k: int | None = None) -> str:
    """File name of the image generated for pair (frm, to): ``<from>_to_<to>.png``, or ``..._<k>.png`` for the
    k-th of several samples (k from 0). The names are kept whole, extension included."""
    return f"{frm}_to_{to}.png" if k is None else f"{frm}_to_{to}_{k}.png"


@dataclass
class LPIPSConfig:
    enabled: bool = True
    alexnet_weights: str | None = None   # torchvision AlexNet state dict (alexnet-owt-7be5be79.pth)
    linear_weights: str | None = "torchmetrics"  # LPIPS v0.1 alex.pth; "torchmetrics": the copy it ships
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


# ------------------------------------------------------------------------------------------------ images
class _Loader:
    """uint8 RGB arrays at the evaluation size (the first ground truth's); counts what had to be resized."""

    def __init__(self):
        self.size: tuple[int, int] | None = None
        self.resized: dict[str, tuple[set, set]] = {}  # kind -> (original sizes, paths)

    def __call__(self, path: Path, kind: str) -> np.ndarray:
        im = load_image(path)
        if self.size is None:
            self.size = (im.height, im.width)
        elif (im.height, im.width) != self.size:
            from PIL import Image

            sizes, paths = self.resized.setdefault(kind, (set(), set()))
            sizes.add((im.height, im.width))
            paths.add(str(path))
            im = im.resize((self.size[1], self.size[0]), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)

    def notes(self) -> list[str]:
        return [f"resized {len(paths)} {kind} image(s) from {', '.join(f'{h}x{w}' for h, w in sorted(sizes))} "
                f"to the ground truth's {self.size[0]}x{self.size[1]} (bicubic)"
                for kind, (sizes, paths) in sorted(self.resized.items())]


def _tensor(images: Sequence[np.ndarray], device: str):
    import torch

    x = torch.from_numpy(np.stack(images)).to(device)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


# ------------------------------------------------------------------------------------------------ networks
def _build_networks(cfg: MetricsConfig, device: str) -> tuple[dict, dict, dict]:
    """(networks, refusals, labels) for LPIPS, FID and FID-reid."""
    nets, refused, labels = {}, {}, {}
    c = cfg.lpips
    rng = "[0, 1] as upstream's script feeds them (LPIPS expects [-1, 1])" if c.upstream_unit_range else "[-1, 1]"
    labels["lpips"] = f"LPIPS (AlexNet, v0.1 linear heads; inputs in {rng}; lower is better)"
    labels["fid"] = "FID (Inception-v3 2048-d pool features, generated vs training images)"
    labels["fid_reid"] = "FID (re-ID features, generated vs training images)"
    loaders = {
        "lpips": (c.enabled, lambda: _lpips(c)),
        "fid": (cfg.fid.enabled, lambda: _inception(cfg)),
        "fid_reid": (cfg.fid_reid.enabled, lambda: _reid(cfg)),
    }
    for key, (enabled, make) in loaders.items():
        if not enabled:
            refused[key] = f"disabled in the config ({key}.enabled: false)"
            continue
        try:
            nets[key] = make().to(device)
        except DataError as e:
            refused[key] = str(e)
            log.warning("%s refused (the reason is in the report): %s", key, e.reason)
    if "fid" in nets:
        labels["fid"] = f"FID ({nets['fid'].label}; 2048-d pool features, generated vs training images)"
    if "fid_reid" in nets:
        labels["fid_reid"] = f"FID ({nets['fid_reid'].label}; generated vs training images)"
    return nets, refused, labels


def _lpips(c: LPIPSConfig):
    from .perceptual import load_lpips

    return load_lpips(c.alexnet_weights, c.linear_weights)


def _inception(cfg: MetricsConfig):
    from .inception import load_inception

    return load_inception(cfg.fid.inception_weights)


def _reid(cfg: MetricsConfig):
    from .reid_features import load_reid_features

    c = cfg.fid_reid
    return load_reid_features(c.model, c.weights, (c.height, c.width))


# ------------------------------------------------------------------------------------------------ main
def _missing_report(pairs, gen_dir: Path, best_of: int | None):
    """Per pair, its candidate files; and the pairs with at least one file absent (first absent name kept)."""
    files, missing = [], []
    for frm, to in pairs:
        names = [generated_name(frm, to)] if not best_of else [generated_name(frm, to, k) for k in range(best_of)]
        paths = [gen_dir / n for n in names]
        absent = [p.name for p in paths if not p.is_file()]
        files.append(paths)
        if absent:
            missing.append(absent[0])
    return files, missing


def compute_metrics(pairs: Iterable[tuple[str, str]] | str | Path, generated_dir: str | Path,
                    dataset_root: str | Path, config=None, *, allow_missing: bool = False,
                    best_of: int | None = None, progress: bool = True) -> dict:
    """Evaluate ``generated_dir/<from>_to_<to>.png`` against the ground-truth targets of ``pairs``.

    Returns ``{"generated": {...}, "copy_source": {...}, "refused": {metric: reason}, "n_pairs": N,
    "n_missing": M, "labels": {...}, "notes": [...], "protocol": {...}}``; a refused metric is ``None`` in both
    rows. ``best_of=K`` reads ``<from>_to_<to>_<k>.png`` (k = 0..K-1) and keeps, per pair, the sample with the
    best SSIM against the ground truth: upstream's oracle protocol, labelled as such.
    """
    import torch
    from tqdm import tqdm

    from ..runtime import pick_device

    cfg = as_config(config)
    pairs_path = None
    if isinstance(pairs, (str, Path)):
        pairs_path, pairs = pairs, read_pairs(pairs)
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise DataError("no pairs to evaluate", pairs_path)
    if best_of is not None and (not isinstance(best_of, int) or best_of < 1):
        raise DataError(f"best-of must be a positive integer, got {best_of!r}")
    gen_dir = Path(generated_dir)
    if not gen_dir.is_dir():
        raise DataError("generated-images folder not found", gen_dir)
    dataset = MarketDataset(dataset_root)
    files, missing = _missing_report(pairs, gen_dir, best_of)
    if missing and not allow_missing:
        raise DataError(f"{len(missing)} of {len(pairs)} pairs have no generated image; first missing: "
                        f"{missing[0]} (pass --allow-missing to evaluate the others)", gen_dir)
    keep = [i for i, paths in enumerate(files) if all(p.is_file() for p in paths)]
    if not keep:
        raise DataError(f"none of the {len(pairs)} pairs has its generated image(s) here; "
                        f"expected e.g. {files[0][0].name}", gen_dir)
    sources, targets = {}, {}
    for i in keep:
        frm, to = pairs[i]
        try:
            sources[i], targets[i] = dataset.path_of(frm), dataset.path_of(to)
        except DataError as e:
            raise DataError(f"pair {frm},{to} (#{i + 1} of {len(pairs)}): {e.reason}", e.path) from None
    notes = []
    if missing:
        notes.append(f"{len(missing)} of {len(pairs)} pairs skipped: generated image missing "
                     f"(first: {missing[0]})")
    device = pick_device(cfg.device)
    nets, refused, labels = _build_networks(cfg, device)
    labels.update({
        "ssim": "SSIM (upstream PCDMs/PIDM/GFLA: Gaussian window sigma 1.2, population covariance, "
                "data range of the prediction, mean over RGB; higher is better)",
        "psnr": "PSNR (dB, data range 255; higher is better)",
        "n_pairs": "pairs evaluated",
        "generated": ORACLE_LABEL.format(k=best_of) if best_of else "generated images",
        "copy_source": "each target replaced by its source image (the floor to beat)",
        "ground_truth": "each generated image replaced by its true target: the FIDs a perfect generator gets "
                        "(its pixel metrics are trivially perfect and not shown)",
    })
    fid_keys = [k for k in ("fid", "fid_reid") if k in nets]
    reference = {"fid": cfg.fid.reference, "fid_reid": cfg.fid_reid.reference}
    ref = [im.path for im in dataset.train]
    if cfg.fid.max_reference is not None and len(ref) > cfg.fid.max_reference:
        ref = sorted(random.Random(cfg.seed).sample(ref, cfg.fid.max_reference))
    # The distinct true targets, as positions in ``keep`` order (a target of several pairs counts once).
    first = {}
    for pos, i in enumerate(keep):
        first.setdefault(targets[i], pos)
    target_pos = sorted(first.values())
    for k in list(fid_keys):
        n_ref_k = len(ref) if reference[k] == "train" else len(target_pos)
        if min(len(keep), n_ref_k) < 2:
            what = "training images" if reference[k] == "train" else "distinct targets"
            refused[k] = f"needs at least 2 evaluated pairs and 2 {what}, got {len(keep)} and {n_ref_k}"
            del nets[k]
            fid_keys.remove(k)

    loader = _Loader()
    acc = {row: {"ssim": [], "psnr": [], "lpips": []} for row in ROWS}
    feats = {row: {k: [] for k in fid_keys} for row in ROWS}
    chosen_k = []
    scale = (lambda x: x) if cfg.lpips.upstream_unit_range else (lambda x: x * 2 - 1)
    bs = cfg.batch_size
    with torch.no_grad():
        for start in tqdm(range(0, len(keep), bs), desc="metrics: pairs", unit="batch", disable=not progress):
            batch = {"gt": [], "generated": [], "copy_source": []}
            for i in keep[start:start + bs]:
                gt = loader(targets[i], "ground-truth")
                src = loader(sources[i], "source")
                cands = [loader(p, "generated") for p in files[i]]
                if len(cands) > 1:
                    scores = [ssim_upstream(gt, c) for c in cands]
                    best = int(np.argmax(scores))
                    chosen_k.append(best)
                    gen = cands[best]
                else:
                    gen = cands[0]
                batch["gt"].append(gt)
                batch["generated"].append(gen)
                batch["copy_source"].append(src)
                for row, pred in (("generated", gen), ("copy_source", src)):
                    acc[row]["ssim"].append(ssim_upstream(gt, pred))
                    acc[row]["psnr"].append(psnr(gt, pred))
            if not nets:
                continue
            gt_t = _tensor(batch["gt"], device)
            for row in ROWS:
                x = gt_t if row == "ground_truth" else _tensor(batch[row], device)
                if "lpips" in nets and row != "ground_truth":
                    acc[row]["lpips"].extend(nets["lpips"](scale(x), scale(gt_t)).cpu().tolist())
                for k in fid_keys:
                    feats[row][k].append(nets[k](x).cpu().double().numpy())

    feats = {row: {k: np.concatenate(v) for k, v in per.items()} for row, per in feats.items()}
    train_keys = [k for k in fid_keys if reference[k] == "train"]
    n_ref = len(ref) if train_keys else 0
    ref_feats = {k: [] for k in train_keys}
    if train_keys:
        with torch.no_grad():
            for start in tqdm(range(0, n_ref, bs), desc="metrics: training images", unit="batch",
                              disable=not progress):
                x = _tensor([loader(p, "training") for p in ref[start:start + bs]], device)
                for k in train_keys:
                    ref_feats[k].append(nets[k](x).cpu().double().numpy())
    ref_feats = {k: np.concatenate(v) for k, v in ref_feats.items()}
    for k in fid_keys:
        if reference[k] == "targets":
            ref_feats[k] = feats["ground_truth"][k][target_pos]
            what = f"the {len(target_pos)} distinct true targets of the evaluated pairs"
        else:
            what = f"{n_ref} training images"
        labels[k] = labels[k].replace("training images", what)
        n, d = min(len(keep), len(ref_feats[k])), ref_feats[k].shape[1]
        if n <= d:
            notes.append(f"{k}: {len(keep)} generated / {len(ref_feats[k])} reference images for {d}-d features: "
                         "the covariances are rank-deficient and the value is biased upward; compare FIDs only "
                         "at equal image counts")

    result: dict = {row: {} for row in ROWS}
    for row in ROWS:
        r = result[row]
        if row != "ground_truth":
            r["ssim"] = float(np.mean(acc[row]["ssim"]))
            r["psnr"] = float(np.mean(acc[row]["psnr"]))
            r["lpips"] = float(np.mean(acc[row]["lpips"])) if "lpips" in nets else None
        for k in ("fid", "fid_reid"):
            r[k] = frechet_distance_of(feats[row][k], ref_feats[k]) if k in fid_keys else None
        r["n_pairs"] = len(keep)
    if cfg.fid_bootstrap and fid_keys:
        notes.extend(_bootstrap(result, feats, ref_feats, fid_keys, cfg.fid_bootstrap, cfg.seed, progress))
    if any(math.isinf(v) for v in acc["generated"]["psnr"] + acc["copy_source"]["psnr"]):
        notes.append("PSNR is inf where a prediction equals its ground truth exactly")
    notes.extend(loader.notes())
    if best_of:
        counts = np.bincount(chosen_k, minlength=best_of).tolist()
        notes.append(f"oracle best-of-{best_of}: sample index chosen per pair, counts {counts}")
    return {
        "generated": result["generated"],
        "copy_source": result["copy_source"],
        "ground_truth": result["ground_truth"],
        "refused": refused,
        "n_pairs": len(keep),
        "n_missing": len(missing),
        "labels": labels,
        "notes": notes,
        "protocol": {"size": list(loader.size), "n_reference": n_ref, "best_of": best_of, "device": device,
                     "reference": {k: reference[k] for k in fid_keys}, "fid_bootstrap": cfg.fid_bootstrap,
                     "pairs": None if pairs_path is None else str(pairs_path),
                     "generated_dir": str(gen_dir), "dataset": str(dataset.root)},
    }


def _bootstrap(result: dict, feats: dict, ref_feats: dict, keys: list[str], n: int, seed: int,
               progress: bool) -> list[str]:
    """Adds ``<key>_sd`` to every row: the spread of its FID over ``n`` resamples (with replacement) of the
    evaluated pairs and, independently, of the reference images; and returns notes with the spread of the
    differences generated - copy-source and generated - ground truth over the same resamples (the same pairs
    in every row, so what the rows share cancels)."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    n_pairs = len(next(iter(feats["generated"].values())))
    draws = {row: {k: [] for k in keys} for row in ROWS}
    for _ in tqdm(range(n), desc="metrics: FID bootstrap", unit="resample", disable=not progress):
        idx = rng.integers(0, n_pairs, n_pairs)
        for k in keys:
            ref = ref_feats[k][rng.integers(0, len(ref_feats[k]), len(ref_feats[k]))]
            for row in ROWS:
                draws[row][k].append(frechet_distance_of(feats[row][k][idx], ref))
    notes = []
    for k in keys:
        for row in ROWS:
            result[row][f"{k}_sd"] = float(np.std(draws[row][k], ddof=1)) if n > 1 else 0.0
        gen = np.asarray(draws["generated"][k])
        for other, name in (("copy_source", "copy-source"), ("ground_truth", "ground truth")):
            d = gen - np.asarray(draws[other][k])
            notes.append(f"{k}: generated - {name} = {result['generated'][k] - result[other][k]:+.3f}, "
                         f"bootstrap sd {np.std(d, ddof=1) if n > 1 else 0.0:.3f} over {n} resamples")
    return notes
