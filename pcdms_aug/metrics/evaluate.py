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

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pcdms_aug.data.layouts import ReidDataset, open_dataset
from pcdms_aug.data.market import load_image
from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.pose import read_pairs
from pcdms_aug.metrics.config import MetricsConfig, as_config
from pcdms_aug.metrics.frechet import frechet_distance_of
from pcdms_aug.metrics.networks import build_networks
from pcdms_aug.metrics.pixels import psnr, ssim_upstream
from pcdms_aug.data.pairs import pair_image_name

ROWS = ("generated", "copy_source", "ground_truth")
ORACLE_LABEL = "oracle best-of-{k} (uses ground truth; not available for augmentation)"


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


# ------------------------------------------------------------------------------------------------ pairs
@dataclass
class _Pairs:
    """The evaluated pairs, in CSV order: per pair its source, true target and generated candidate file(s)."""
    dataset: ReidDataset
    gen_dir: Path
    pairs_path: str | Path | None
    n_listed: int
    missing: list[str]  # the first absent file of each skipped pair
    sources: list[Path] = field(default_factory=list)
    targets: list[Path] = field(default_factory=list)
    candidates: list[list[Path]] = field(default_factory=list)

    def target_positions(self) -> list[int]:
        """Positions of the distinct true targets (a target of several pairs counts once)."""
        first: dict = {}
        for pos, t in enumerate(self.targets):
            first.setdefault(t, pos)
        return sorted(first.values())


def _candidates(pairs, gen_dir: Path, best_of: int | None) -> tuple[list[list[Path]], list[str]]:
    """Per pair, its candidate files; and the pairs with at least one file absent (first absent name kept)."""
    files, missing = [], []
    for frm, to in pairs:
        names = [pair_image_name(frm, to)] if not best_of else [pair_image_name(frm, to, k) for k in range(best_of)]
        paths = [gen_dir / n for n in names]
        absent = [p.name for p in paths if not p.is_file()]
        files.append(paths)
        if absent:
            missing.append(absent[0])
    return files, missing


def _select_pairs(pairs, generated_dir, dataset_root, best_of: int | None, allow_missing: bool) -> _Pairs:
    """The pairs to evaluate with their files; a DataError naming the file or pair at fault otherwise."""
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
    dataset = open_dataset(dataset_root)
    files, missing = _candidates(pairs, gen_dir, best_of)
    if missing and not allow_missing:
        raise DataError(f"{len(missing)} of {len(pairs)} pairs have no generated image; first missing: "
                        f"{missing[0]} (pass --allow-missing to evaluate the others)", gen_dir)
    keep = [i for i, paths in enumerate(files) if all(p.is_file() for p in paths)]
    if not keep:
        raise DataError(f"none of the {len(pairs)} pairs has its generated image(s) here; "
                        f"expected e.g. {files[0][0].name}", gen_dir)
    sel = _Pairs(dataset, gen_dir, pairs_path, len(pairs), missing)
    for i in keep:
        frm, to = pairs[i]
        try:
            sel.sources.append(dataset.path_of(frm))
            sel.targets.append(dataset.path_of(to))
        except DataError as e:
            raise DataError(f"pair {frm},{to} (#{i + 1} of {len(pairs)}): {e.reason}", e.path) from None
        sel.candidates.append(files[i])
    return sel


def _row_labels(best_of: int | None) -> dict:
    return {
        "ssim": "SSIM (scikit-image structural_similarity as upstream PCDMs/PIDM/GFLA call it: Gaussian window "
                "sigma 1.2, population covariance, data range of the prediction, mean over RGB; higher is better)",
        "psnr": "PSNR (scikit-image, dB, data range 255; higher is better)",
        "n_pairs": "pairs evaluated",
        "generated": ORACLE_LABEL.format(k=best_of) if best_of else "generated images",
        "copy_source": "each target replaced by its source image (the floor to beat)",
        "ground_truth": "each generated image replaced by its true target: the FIDs a perfect generator gets "
                        "(its pixel metrics are trivially perfect and not shown)",
    }


# ------------------------------------------------------------------------------------------------ scoring
@dataclass
class _Run:
    """What every scoring step needs: the config, the device, the built networks, the FIDs that run."""
    cfg: MetricsConfig
    device: str
    nets: dict
    fid_keys: list[str]
    progress: bool
    loader: _Loader = field(default_factory=_Loader)

    def reference(self, key: str) -> str:
        return getattr(self.cfg, key).reference


def _fid_plan(run: _Run, sel: _Pairs, refused: dict) -> list[Path]:
    """The training images of the FID reference (a seeded sample of ``fid.max_reference``); refuses (and drops
    from ``run``) each FID with fewer than 2 images on a side."""
    ref = [im.path for im in sel.dataset.train]
    if run.cfg.fid.max_reference is not None and len(ref) > run.cfg.fid.max_reference:
        ref = sorted(random.Random(run.cfg.seed).sample(ref, run.cfg.fid.max_reference))
    n_targets = len(sel.target_positions())
    for k in list(run.fid_keys):
        n_ref = len(ref) if run.reference(k) == "train" else n_targets
        if min(len(sel.targets), n_ref) < 2:
            what = "training images" if run.reference(k) == "train" else "distinct targets"
            refused[k] = f"needs at least 2 evaluated pairs and 2 {what}, got {len(sel.targets)} and {n_ref}"
            del run.nets[k]
            run.fid_keys.remove(k)
    return ref


def _load_batch(run: _Run, sel: _Pairs, idx: range, chosen: list[int]) -> dict[str, list[np.ndarray]]:
    """The images of pairs ``idx`` per row; with several candidates, upstream's oracle keeps the one with the best
    SSIM against the ground truth (its index goes to ``chosen``)."""
    batch = {"ground_truth": [], "generated": [], "copy_source": []}
    for i in idx:
        gt = run.loader(sel.targets[i], "ground-truth")  # first: the first ground truth fixes the size
        src = run.loader(sel.sources[i], "source")
        cands = [run.loader(p, "generated") for p in sel.candidates[i]]
        best = 0
        if len(cands) > 1:
            best = int(np.argmax([ssim_upstream(gt, c) for c in cands]))
            chosen.append(best)
        batch["ground_truth"].append(gt)
        batch["generated"].append(cands[best])
        batch["copy_source"].append(src)
    return batch


def _pixel_scores(batch: dict, acc: dict) -> None:
    for gt, gen, src in zip(batch["ground_truth"], batch["generated"], batch["copy_source"]):
        for row, pred in (("generated", gen), ("copy_source", src)):
            acc[row]["ssim"].append(ssim_upstream(gt, pred))
            acc[row]["psnr"].append(psnr(gt, pred))


def _network_scores(run: _Run, batch: dict, acc: dict, feats: dict) -> None:
    """LPIPS of the generated and copy-source rows against the ground truth; FID features of every row."""
    scale = (lambda x: x) if run.cfg.lpips.upstream_unit_range else (lambda x: x * 2 - 1)
    gt = _tensor(batch["ground_truth"], run.device)
    for row in ROWS:
        x = gt if row == "ground_truth" else _tensor(batch[row], run.device)
        if "lpips" in run.nets and row != "ground_truth":
            acc[row]["lpips"].extend(run.nets["lpips"](scale(x), scale(gt)).flatten().cpu().tolist())
        for k in run.fid_keys:
            feats[row][k].append(run.nets[k](x).cpu().double().numpy())


def _score_pairs(run: _Run, sel: _Pairs) -> tuple[dict, dict, list[int]]:
    """Per row, the SSIM / PSNR / LPIPS of every pair and the FID features; the best-of sample chosen per pair."""
    import torch
    from tqdm import tqdm

    acc = {row: {"ssim": [], "psnr": [], "lpips": []} for row in ROWS}
    feats = {row: {k: [] for k in run.fid_keys} for row in ROWS}
    chosen: list[int] = []
    n, bs = len(sel.targets), run.cfg.batch_size
    with torch.no_grad():
        for start in tqdm(range(0, n, bs), desc="metrics: pairs", unit="batch", disable=not run.progress):
            batch = _load_batch(run, sel, range(start, min(start + bs, n)), chosen)
            _pixel_scores(batch, acc)
            if run.nets:
                _network_scores(run, batch, acc, feats)
    return acc, {row: {k: np.concatenate(v) for k, v in per.items()} for row, per in feats.items()}, chosen


def _reference_features(run: _Run, ref: list[Path], target_pos: list[int], feats: dict) -> dict:
    """Per FID, its reference features: the training images' (computed here) or the distinct true targets'
    (those of the ground-truth row)."""
    import torch
    from tqdm import tqdm

    train_keys = [k for k in run.fid_keys if run.reference(k) == "train"]
    out = {k: [] for k in train_keys}
    bs = run.cfg.batch_size
    with torch.no_grad():
        for start in tqdm(range(0, len(ref) if train_keys else 0, bs), desc="metrics: training images",
                          unit="batch", disable=not run.progress):
            x = _tensor([run.loader(p, "training") for p in ref[start:start + bs]], run.device)
            for k in train_keys:
                out[k].append(run.nets[k](x).cpu().double().numpy())
    out = {k: np.concatenate(v) for k, v in out.items()}
    out.update({k: feats["ground_truth"][k][target_pos] for k in run.fid_keys if run.reference(k) == "targets"})
    return out


def _fid_notes(run: _Run, ref_feats: dict, n_train: int, n_pairs: int, labels: dict) -> list[str]:
    """Names each FID's reference in its label; notes the FIDs whose covariances are rank-deficient."""
    notes = []
    for k in run.fid_keys:
        n_ref, d = ref_feats[k].shape
        what = (f"the {n_ref} distinct true targets of the evaluated pairs" if run.reference(k) == "targets"
                else f"{n_train} training images")
        labels[k] = labels[k].replace("training images", what)
        if min(n_pairs, n_ref) <= d:
            notes.append(f"{k}: {n_pairs} generated / {n_ref} reference images for {d}-d features: the "
                         "covariances are rank-deficient and the value is biased upward; compare FIDs only at "
                         "equal image counts")
    return notes


def _rows(run: _Run, acc: dict, feats: dict, ref_feats: dict, n_pairs: int) -> dict:
    """The means of the pixel metrics and LPIPS, and the FIDs, per row (None where refused)."""
    result: dict = {row: {} for row in ROWS}
    for row, r in result.items():
        if row != "ground_truth":
            r["ssim"] = float(np.mean(acc[row]["ssim"]))
            r["psnr"] = float(np.mean(acc[row]["psnr"]))
            r["lpips"] = float(np.mean(acc[row]["lpips"])) if "lpips" in run.nets else None
        for k in ("fid", "fid_reid"):
            r[k] = frechet_distance_of(feats[row][k], ref_feats[k]) if k in run.fid_keys else None
        r["n_pairs"] = n_pairs
    return result


def _closing_notes(acc: dict, loader: _Loader, best_of: int | None, chosen: list[int]) -> list[str]:
    notes = []
    if any(math.isinf(v) for v in acc["generated"]["psnr"] + acc["copy_source"]["psnr"]):
        notes.append("PSNR is inf where a prediction equals its ground truth exactly")
    notes.extend(loader.notes())
    if best_of:
        counts = np.bincount(chosen, minlength=best_of).tolist()
        notes.append(f"oracle best-of-{best_of}: sample index chosen per pair, counts {counts}")
    return notes


# ------------------------------------------------------------------------------------------------ main
def compute_metrics(pairs: Iterable[tuple[str, str]] | str | Path, generated_dir: str | Path,
                    dataset_root: str | Path, config=None, *, allow_missing: bool = False,
                    best_of: int | None = None, progress: bool = True) -> dict:
    """Evaluate ``generated_dir/<from>_to_<to>.png`` against the ground-truth targets of ``pairs``.

    Returns ``{"generated": {...}, "copy_source": {...}, "ground_truth": {...}, "refused": {metric: reason},
    "n_pairs": N, "n_missing": M, "labels": {...}, "notes": [...], "protocol": {...}}``; a refused metric is
    ``None`` in every row. ``best_of=K`` reads ``<from>_to_<to>_<k>.png`` (k = 0..K-1) and keeps, per pair, the
    sample with the best SSIM against the ground truth: upstream's oracle protocol, labelled as such.
    """
    from pcdms_aug.utils.runtime import pick_device

    cfg = as_config(config)
    sel = _select_pairs(pairs, generated_dir, dataset_root, best_of, allow_missing)
    device = pick_device(cfg.device)
    nets, refused, labels = build_networks(cfg, device)
    labels.update(_row_labels(best_of))
    run = _Run(cfg, device, nets, [k for k in ("fid", "fid_reid") if k in nets], progress)
    ref = _fid_plan(run, sel, refused)
    acc, feats, chosen = _score_pairs(run, sel)
    ref_feats = _reference_features(run, ref, sel.target_positions(), feats)
    n_pairs, n_train = len(sel.targets), len(ref) if any(run.reference(k) == "train" for k in run.fid_keys) else 0
    notes = [f"{len(sel.missing)} of {sel.n_listed} pairs skipped: generated image missing "
             f"(first: {sel.missing[0]})"] if sel.missing else []
    notes += _fid_notes(run, ref_feats, n_train, n_pairs, labels)
    result = _rows(run, acc, feats, ref_feats, n_pairs)
    if cfg.fid_bootstrap and run.fid_keys:
        notes += _bootstrap(result, feats, ref_feats, run.fid_keys, cfg.fid_bootstrap, cfg.seed, progress)
    notes += _closing_notes(acc, run.loader, best_of, chosen)
    protocol = {"size": list(run.loader.size), "n_reference": n_train, "best_of": best_of, "device": device,
                "reference": {k: run.reference(k) for k in run.fid_keys}, "fid_bootstrap": cfg.fid_bootstrap,
                "pairs": None if sel.pairs_path is None else str(sel.pairs_path),
                "generated_dir": str(sel.gen_dir), "dataset": str(sel.dataset.root)}
    return {**result, "refused": refused, "n_pairs": n_pairs, "n_missing": len(sel.missing), "labels": labels,
            "notes": notes, "protocol": protocol}


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
