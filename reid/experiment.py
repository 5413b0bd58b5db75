"""`pcdms-aug reid-experiment`: baseline versus augmented re-ID over fractions of the real data and seeds.

For every (fraction, seed) a subset of the real training images is drawn once (``<out>/splits/``); on it the
same model, schedule and evaluation are run as ``baseline`` (subset only), ``augmented`` (subset + all generated
views of the subset's images) and ``filtered`` (subset + the views the filter kept). Each run writes
``<out>/runs/<run>.json`` atomically and is skipped when that file exists, so an interrupted sweep resumes.
At the end: ``results.csv``, ``results.md``, ``cmc.png``, ``map_vs_fraction.png``.

The split seed is the run seed: several seeds vary both the subset and the initialisation, as in the paper line.
Generated views come from ``generated_dir``: one folder (views whose ``source`` is not in the subset are left
out), a template with ``{fraction}``, ``{percent}`` and ``{seed}`` (one folder generated per split, see
``--splits-only``), or a mapping fraction -> folder/template.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcdms_aug.config.loading import build, load_config, to_dict
from pcdms_aug.data.splits import check_fraction, load_split, make_split, save_split, split_filename
from pcdms_aug.utils.argtypes import MAX_SEED
from pcdms_aug.utils.errors import DataError, shown
from pcdms_aug.utils.io import atomic_write_text
from pcdms_aug.utils.paths import check_out_dir, claim_dir
from pcdms_aug.utils.runtime import pick_device

from . import provenance
from .datasets import (MANIFEST, base_folder, build_base, dataset_name, read_manifest, select_views,
                       validation_items)
from .report import write_reports
from .schedule import Schedule
from .training import TrainConfig, train_and_evaluate

log = logging.getLogger(__name__)
# Controls after the runs they copy: baseline_steps and duplicated replay the augmented run's schedule.
VARIANTS = ("baseline", "augmented", "filtered", "baseline_steps", "duplicated")
REPLAYS = ("baseline_steps", "duplicated")


@dataclass
class ExperimentConfig(TrainConfig):
    """Dataset, generated views, grid and output folder; model, schedule and evaluation come from TrainConfig."""

    root: str = "data/synthetic"  # torchreid root: <root>/market1501/... (or the Market folder itself)
    dataset: str = "synthetic"  # synthetic | real (or market1501_pcdms / synthetic_market1501_pcdms)
    generated_dir: Any = None  # folder, template with {fraction}/{percent}/{seed}, or {fraction: folder}
    views_per_identity: int | None = None  # cap per identity, in manifest order
    views_per_image: int | None = None  # cap per source image, in manifest order (1 of a 4-view folder: 1 view)
    # What the views' generator was trained on (reid.provenance): null = known for the shipped tiny weights,
    # unknown for others; "this" (this dataset's training split: the paper's protocol), "other" (other people
    # only), "unknown", or the folder of the dataset it was trained on.
    generator_trained_on: Any = None
    fractions: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = VARIANTS
    out_dir: str = "runs/reid"
    # Other reid-experiment folders whose finished runs are taken (copied in) when they were made with this
    # run's settings and subset: the baseline of a lever that changes only how the views are used
    # (generated_share, views_per_image, finish_on_real) need not be trained twice. A run there with other settings
    # is trained.
    reuse_from: tuple[str, ...] = ()


def make_config(cfg: dict | Any):
    """A validated ExperimentConfig from a mapping (unknown keys are an error) or an existing one."""
    cfg = build(ExperimentConfig, cfg, "reid config") if isinstance(cfg, dict) else dataclasses.replace(cfg)
    cfg.check("reid config")
    cfg.fractions = tuple(check_fraction(f, "reid config: fractions") for f in cfg.fractions)
    for i, s in enumerate(cfg.seeds):
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise DataError(f"reid config: seeds[{i}] must be an integer in 0..{MAX_SEED}, got {shown(s)}")
    bad = [v for v in cfg.variants if v not in VARIANTS]
    if bad or not cfg.variants:
        raise DataError(f"reid config: variants must be among {', '.join(VARIANTS)}, got {shown(list(cfg.variants))}")
    if not cfg.fractions or not cfg.seeds:
        raise DataError("reid config: fractions and seeds must not be empty")
    if any(v in REPLAYS for v in cfg.variants) and "augmented" not in cfg.variants:
        raise DataError("reid config: variants baseline_steps / duplicated replay the augmented run's steps: "
                        "add augmented to variants")
    # Run order: every run after the one it replays.
    cfg.variants = tuple(v for v in VARIANTS if v in cfg.variants)
    reuse = list(cfg.reuse_from or ())
    for i, folder in enumerate(reuse):
        if not isinstance(folder, str) or not (Path(folder) / "runs").is_dir():
            raise DataError(f"reid config: reuse_from[{i}] is not a reid-experiment folder (no runs/ in it)",
                            folder if isinstance(folder, str) else None)
    cfg.reuse_from = tuple(reuse)
    return cfg


def generated_dir_for(spec, fraction: float, seed: int) -> str | None:
    """The generated folder of one (fraction, seed) from ``generated_dir``'s three accepted forms."""
    if not spec:
        return None
    if isinstance(spec, dict):
        match = [v for k, v in spec.items() if abs(float(k) - fraction) < 1e-9]
        if not match:
            raise DataError(f"reid config: generated_dir has no entry for fraction {fraction:g} "
                            f"(has {', '.join(str(k) for k in spec)})")
        spec = match[0]
    try:
        return str(spec).format(fraction=f"{fraction:g}", percent=int(round(fraction * 100)), seed=seed)
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"reid config: generated_dir {spec!r}: unknown placeholder {e}; use {{fraction}}, "
                        "{percent} or {seed}") from None


def run_id(fraction: float, seed: int, variant: str) -> str:
    return f"f{fraction:g}_s{seed}_{variant}"


# Keys that do not change what a run computes: a finished run stays valid when only these differ.
_NOT_IN_FINGERPRINT = {"fractions", "seeds", "variants", "out_dir", "workers", "device", "batch_size_test",
                       "generated_dir", "views_per_identity",
                       "views_per_image", "generated_share", "finish_on_real", "generator_trained_on", "reuse_from"}
# Keys that change nothing unless converge / max_steps is on (so runs made before they existed stay valid).
_CONVERGE_KEYS = {"converge", "eval_every", "patience", "plateau_drops", "min_delta", "val_images"}


def fingerprint(cfg, data_dir: Path, generated: str | None, kept_only: bool, extra: dict | None = None) -> dict:
    fp = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    for k in (_CONVERGE_KEYS if not cfg.converge else set()) | ({"max_steps", "lr_steps"} if not cfg.max_steps
                                                           else set()):
        fp.pop(k, None)
    fp.update(data_dir=str(Path(data_dir).resolve()), generated_dir=None if generated is None
              else str(Path(generated).resolve()), kept_only=kept_only,
              views_per_identity=cfg.views_per_identity if generated else None, **(extra or {}))
    for key in ("views_per_image", "generated_share", "finish_on_real"):  # absent unless set: older runs stay valid
        if generated and getattr(cfg, key) not in (None, False):
            fp[key] = getattr(cfg, key)
    return json.loads(json.dumps(fp))  # tuples -> lists, as read back from JSON


def make_splits(cfg, train: list) -> dict[tuple[float, int], Path]:
    """Write (or reuse) ``<out>/splits/split_f<fraction>_s<seed>.json`` for the whole grid (``train``: the
    dataset's training list as torchreid reads it)."""
    out = {}
    for fraction in cfg.fractions:
        for seed in cfg.seeds:
            path = Path(cfg.out_dir) / "splits" / split_filename(fraction, seed)
            fresh = make_split(train, fraction, seed)
            if path.is_file():
                old = load_split(path)
                if old.files != fresh.files:
                    raise DataError("existing split differs from the one this dataset, fraction and seed give "
                                    "(another dataset?); use another out_dir", path)
            else:
                save_split(path, fresh)
            out[(fraction, seed)] = path
    return out


def _check_generated(cfg, splits, runs) -> None:
    """Fail before any training when a generated folder is missing or gives no view for its subset."""
    for fraction, seed, variant, gen in runs:
        if gen is None:
            continue
        views = read_manifest(gen)
        chosen = select_views(views, kept_only=variant == "filtered", views_per_identity=cfg.views_per_identity,
                              views_per_image=cfg.views_per_image,
                              sources=set(load_split(splits[(fraction, seed)]).files), where=Path(gen) / MANIFEST)
        if not chosen:
            raise DataError(f"no generated view for run {run_id(fraction, seed, variant)}: none of the manifest's "
                            f"{len(views)} rows comes from the subset's images"
                            + (" and is kept" if variant == "filtered" else "")
                            + f"; generate from {splits[(fraction, seed)]}", Path(gen) / MANIFEST)


def _load_result(path: Path, fp: dict) -> dict:
    from pcdms_aug.config.loading import read_json

    res = read_json(path, "run result")
    old = res.get("fingerprint") if isinstance(res, dict) else None
    if not isinstance(old, dict):
        raise DataError("not a run result of reid-experiment (no fingerprint); delete it to rerun that run", path)
    diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
    if diff:
        what = ", ".join(f"{k}: {shown(old.get(k))} -> {shown(fp.get(k))}" for k in diff[:4])
        raise DataError(f"this finished run was made with another config ({what}); use another out_dir, "
                        "or --force to rerun everything", path)
    return res


def _holds_an_experiment(out: Path) -> bool:
    """A folder an earlier version wrote (before the owner record): its splits and run results."""
    return (out / "splits").is_dir() and ((out / "runs").is_dir() or (out / "results.csv").is_file())


def _generated_dirs(cfg) -> list[str]:
    spec = cfg.generated_dir
    if not spec:
        return []
    values = spec.values() if isinstance(spec, dict) else [spec]
    return [str(v) for v in values if isinstance(v, str) and "{" not in v]


def run_experiment(cfg: dict | Any, force: bool = False, splits_only: bool = False, progress: bool = True):
    """Run (or resume) the whole grid; returns the results as a pandas DataFrame (one row per run).

    ``df.attrs['executed']`` / ``df.attrs['skipped']`` list the run ids trained now / reused from disk.
    """
    import pandas as pd
    from tqdm import tqdm

    cfg = make_config(cfg)
    name = dataset_name(cfg.dataset)
    real = build_base(name, cfg.root)
    data_dir = base_folder(real, cfg.root)
    out = check_out_dir(cfg.out_dir, "out_dir", {"the dataset": data_dir},
                        inputs=[("generated_dir", g) for g in _generated_dirs(cfg)],
                        command="reid-experiment", own=_holds_an_experiment)
    claim_dir(out, "reid-experiment")
    splits = make_splits(cfg, real.train)
    if splits_only:
        for (fraction, seed), path in splits.items():
            log.info("split fraction=%g seed=%d: %d images -> %s", fraction, seed, len(load_split(path)), path)
        df = pd.DataFrame([{"fraction": f, "seed": s, "split_file": str(p), "num_images": len(load_split(p))}
                           for (f, s), p in splits.items()])
        df.attrs.update(executed=[], skipped=[], out_dir=str(out))
        return df

    variants = list(cfg.variants)
    if not cfg.generated_dir and any(v != "baseline" for v in variants):
        log.warning("no generated_dir in the config: running the baseline only")
        variants = ["baseline"]
    runs = [(f, s, v, generated_dir_for(cfg.generated_dir, f, s) if v in ("augmented", "filtered") else None)
            for f in cfg.fractions for v in variants for s in cfg.seeds]
    _check_generated(cfg, splits, runs)

    seen = _provenance(cfg, data_dir, real.train, splits)
    device = pick_device(cfg.device)
    results, executed, skipped, by_id = [], [], [], {}
    bar = tqdm(runs, desc="reid runs", unit="run", disable=not progress)
    for fraction, seed, variant, gen in bar:
        rid = run_id(fraction, seed, variant)
        bar.set_postfix_str(rid)
        replay, extra = _replay(by_id, fraction, seed, variant)
        path = out / "runs" / f"{rid}.json"
        fp = fingerprint(cfg, data_dir, gen, variant == "filtered", extra)
        if path.is_file() and not force:
            res = _load_result(path, fp)
            skipped.append(rid)
        elif not force and (res := _reusable(cfg.reuse_from, out, rid, fp, splits[(fraction, seed)])):
            skipped.append(rid)
        else:
            res = _train_one(cfg, out, rid, name, device, splits[(fraction, seed)], seed, variant, gen, replay,
                             extra.get("repeat_to"), bar)
            res.update(fraction=fraction, seed=seed, variant=variant, model=cfg.model, loss=cfg.loss,
                       dataset=name, generated_dir=gen, split_file=str(splits[(fraction, seed)]), fingerprint=fp,
                       finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            atomic_write_text(path, json.dumps(res, indent=1) + "\n")
            executed.append(rid)
            log.info("%s: mAP %.1f Rank-1 %.1f (%s, %d steps, %d real + %d generated + %d repeated, %.0f s)", rid,
                     res["mAP"], res["rank1"], res["protocol"], res["steps"], res["num_train_real"],
                     res["num_train_generated"], res.get("num_train_repeated", 0), res["wall_s"])
        res.update(seen.get((fraction, seed), {}))
        results.append(res)
        by_id[rid] = res
    df = write_reports(results, out, "Re-ID: generated views against the controls", _notes(cfg, name, data_dir))
    df.attrs.update(executed=executed, skipped=skipped, out_dir=str(out))
    return df


def _reusable(folders, out: Path, rid: str, fp: dict, split: Path) -> dict | None:
    """The finished run ``rid`` of the first folder of ``folders`` made with fingerprint ``fp`` on the same
    subset, copied into ``out`` (its result and log); None when no folder has one."""
    import shutil

    from pcdms_aug.config.loading import read_json

    for folder in folders:
        src = Path(folder) / "runs" / f"{rid}.json"
        if not src.is_file() or src.resolve() == (out / "runs" / src.name).resolve():
            continue
        res = read_json(src, "run result")
        if not isinstance(res, dict) or res.get("fingerprint") != fp:
            log.info("%s: %s was made with other settings; trained here", rid, src)
            continue
        theirs = Path(folder) / "splits" / split.name  # where the folder keeps it, wherever it was made
        if not theirs.is_file() or load_split(theirs).files != load_split(split).files:
            log.info("%s: %s was trained on another subset; trained here", rid, src)
            continue
        res = {**res, "split_file": str(split), "reused_from": str(src)}
        (out / "runs").mkdir(parents=True, exist_ok=True)
        log_src = Path(folder) / "logs" / f"{rid}.log"
        if log_src.is_file():
            (out / "logs").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_src, out / "logs" / log_src.name)
        atomic_write_text(out / "runs" / src.name, json.dumps(res, indent=1) + "\n")
        log.info("%s: reused from %s", rid, src)
        return res
    return None


def _provenance(cfg, data_dir: Path, train: list, splits: dict) -> dict:
    """(fraction, seed) -> what the generator of its views saw (reid.provenance), for every variant of it."""
    out, cache = {}, {}
    for (fraction, seed), split in splits.items():
        gen = generated_dir_for(cfg.generated_dir, fraction, seed)
        if not gen:
            continue
        weights = provenance.views_weights(gen)
        if weights not in cache:
            cache[weights] = provenance.generator_data(cfg.generator_trained_on, data_dir, weights)
        # The images the runs validate on (training.py draws them from the same list the same way).
        val = ([Path(it[0]).name for it in validation_items([it[:3] for it in train], split, cfg.val_images, seed)]
               if cfg.converge else [])
        out[(fraction, seed)] = provenance.describe(cache[weights], data_dir, split, val)
    return out


def _replay(by_id: dict, fraction: float, seed: int, variant: str):
    """(schedule, fingerprint extras) of a control that replays the augmented run of its (fraction, seed)."""
    if variant not in REPLAYS:
        return None, {}
    aug = by_id[run_id(fraction, seed, "augmented")]
    if "schedule" not in aug:
        raise DataError(f"the augmented run of fraction {fraction:g} seed {seed} records no schedule (made by an "
                        "older version); rerun it with --force or use another out_dir")
    extra = {"replays": aug["schedule"]}
    if variant == "duplicated":
        extra["repeat_to"] = int(aug["num_train_images"])
    return Schedule.from_dict(aug["schedule"]), extra


def _train_one(cfg, out: Path, rid: str, name: str, device: str, split: Path, seed: int, variant: str, gen,
               replay, repeat_to, bar) -> dict:
    log_path = out / "logs" / f"{rid}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # torchreid prints its summaries and our loop its loss lines; they go to the run's log, the terminal the bar.
    with open(log_path, "w", encoding="utf-8") as logf, contextlib.redirect_stdout(logf), \
            contextlib.redirect_stderr(logf):
        return train_and_evaluate(cfg, cfg.root, name, seed, device, generated_dir=gen,
                                  kept_only=variant == "filtered", views_per_identity=cfg.views_per_identity,
                                  views_per_image=cfg.views_per_image, split_file=split, schedule=replay,
                                  repeat_to=repeat_to, on_progress=lambda s, n, sec: bar.set_postfix_str(
                                      f"{rid} step {s}/{n} ({sec:.0f} s)"))


def protocol_notes(cfg) -> list[str]:
    """The training-length protocol in words, for the reports."""
    sched = f"lr {cfg.lr}, x{cfg.gamma} "
    if cfg.converge:
        cap = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.epochs} epochs of the run's own images"
        own = (f"converged: validation mAP every {cfg.eval_every} steps on {cfg.val_images} held-out images of "
               f"the training identities (training images outside the subset, the same for every variant of a "
               f"seed); {sched}after {cfg.patience} evaluations without a new best (at most {cfg.plateau_drops} "
               f"time(s)), stop at the next such plateau, at most {cap}; the best validation step is tested")
    elif cfg.max_steps:
        own = f"steps: {cfg.max_steps} iterations for every run, {sched}at steps {list(cfg.lr_steps or [])}"
    else:
        own = (f"epochs: {cfg.epochs} epochs of each run's own images ({sched}every {cfg.stepsize} epochs); runs "
               "with generated views take more steps")
    return [f"protocol {own}",
            "equal_steps (baseline_steps, duplicated): the augmented run's steps and learning-rate drops replayed on "
            "the real images only (duplicated: repeated to the augmented run's image count)"
            + ("; the best validation step within them is tested" if cfg.converge else "")]


def _notes(cfg, name: str, data_dir: Path) -> list[str]:
    init = f"weights {cfg.weights}" if cfg.weights else "random init"
    return [f"dataset {name} at {data_dir}; model {cfg.model} ({init}), loss {cfg.loss}, batch {cfg.batch_size}, "
            f"{cfg.height}x{cfg.width}", *protocol_notes(cfg),
            f"generated views: {cfg.generated_dir or 'none'}"
            + (f", at most {cfg.views_per_image} per image" if cfg.views_per_image is not None else "")
            + (f", at most {cfg.views_per_identity} per identity" if cfg.views_per_identity is not None else "")
            + (f", {cfg.generated_share:.0%} of each batch" if cfg.generated_share is not None else "")
            + (", then the best weights trained on the real images alone (finish_on_real)" if cfg.finish_on_real
               else "")]


def configure(parser) -> None:
    parser.add_argument("config", help="YAML config (e.g. tiny/reid.yaml, paper/reid.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. fractions=[0.2] seeds=[0,1]")
    parser.add_argument("--force", action="store_true", help="rerun finished runs instead of skipping them")
    parser.add_argument("--splits-only", action="store_true",
                        help="only write the subsets (<out_dir>/splits/*.json), e.g. to generate views from them")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, args.overrides)
    df = run_experiment(cfg, force=args.force, splits_only=args.splits_only)
    out = Path(df.attrs["out_dir"])
    if args.splits_only:
        print(f"{len(df)} split(s) under {out / 'splits'}")
        return 0
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"{len(df.attrs['executed'])} run(s) trained, {len(df.attrs['skipped'])} reused; "
          f"results in {out}/results.csv, results.md, cmc.png, map_vs_fraction.png")
    return 0
