"""The generation run: the plan, this rank's batches, the shard log and the merged manifest.

Deterministic: a view's noise comes from its own generator seeded by (seed, source image, view), and every batch
is a fixed group of the plan generated in one forward pass; so one run, a resumed run and a run on any number of
ranks write the same bytes, given the same kind of device, library versions and (on CPU) number of threads: float
rounding depends on those (torchrun sets OMP_NUM_THREADS=1 unless it is set). ``generate.json`` records them and a
resume in another environment warns. Resumable: a rerun skips every batch a shard log holds whose images exist; a
run killed at any moment leaves only whole images (atomic writes) and whole log lines behind.
"""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import time
from dataclasses import replace
from pathlib import Path

from pcdms_aug.config.loading import to_dict
from pcdms_aug.data.market import load_image
from pcdms_aug.generation.any_size import call_any_size
from pcdms_aug.generation import outputs, run_folder
from pcdms_aug.generation.config import GenerateConfig
from pcdms_aug.generation.identity_filter import (ConsistencyScorer, load_filter_trainer, scorer_fingerprint,
                                                  select)
from pcdms_aug.generation.inputs import Inputs, load_inputs
from pcdms_aug.generation.plan import make_plan, read_plan, write_plan
from pcdms_aug.utils import io as aio
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import folder_lock

log = logging.getLogger("pcdms_aug.generation")


def encode_image(image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        image.save(buf, format="JPEG", quality=int(quality))
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _no_space(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno == errno.ENOSPC or (
        isinstance(e, DataError) and "no space left" in str(e))


# ------------------------------------------------------------------------------------------------- run
def generate(cfg: GenerateConfig, *, rank: int | None = None, world: int | None = None, merge: bool | None = None,
             pipeline=None, progress: bool = True, log_format: str | None = None) -> dict:
    """Generate (or resume) this rank's share of the plan; rank 0 (``merge``) then writes manifest.csv.

    ``rank``/``world`` default to torchrun's environment. ``pipeline``: an already loaded PCDMsPipeline for
    ``cfg.weights`` (saves loading it again). ``log_format``: also log into OUT/generate.log once the folder is
    claimed. Every input and the folder are checked before anything is written (:mod:`.run_folder`): a refused
    run leaves nothing behind. Returns counts of the run.
    """
    import torch.distributed as dist

    from pcdms_aug.utils.runtime import dist_env

    cfg.check()
    env_rank, env_world, _ = dist_env()
    rank = env_rank if rank is None else int(rank)
    world = env_world if world is None else int(world)
    if not 0 <= rank < world:
        raise DataError(f"rank {rank} is not in 0..{world - 1}")
    merge = rank == 0 if merge is None else merge
    joined = dist.is_available() and dist.is_initialized()
    start = time.perf_counter()
    out = Path(cfg.out)
    leader = rank == 0 or not joined
    inputs = load_inputs(cfg, pipeline)
    if leader:  # refused here, before anything is written (the lock makes the folder)
        run_folder.check(out, outputs.PROTOCOL, inputs.settings, cfg.overwrite)

    with folder_lock(out) if leader else contextlib.nullcontext(), contextlib.ExitStack() as logs:
        counts = _generate_locked(cfg, rank, world, merge, joined, start, out, pipeline, progress, inputs,
                                  lambda: log_format and logs.enter_context(_file_log(out, log_format)))
        log.info("rank %d/%d: %d new image(s) in %.1f s (%.3f img/s), %d re-scored, %d of %d batch(es) finished "
                 "before", rank, world, counts["generated"], counts["seconds"], counts["images_per_second"],
                 counts["rescored"], counts["batches_done_before"], counts["batches_this_rank"])
        return counts


def _file_log(out: Path, fmt: str):
    from pcdms_aug.utils.io import file_log

    return file_log(logging.getLogger("pcdms_aug"), out / outputs.LOG, fmt, "%Y-%m-%d %H:%M:%S")


def _warn_tiny_on_real(cfg: GenerateConfig, root: Path) -> None:
    from pcdms_aug.data.synthetic import META

    if str(cfg.weights) == "tiny" and not (root / META).is_file() and not (root.parent / META).is_file():
        log.warning("the shipped tiny weights were trained on drawn (synthetic) people only: on %s, which is "
                    "not the synthetic Market-1501, their views are colour blobs (on 64 real Market-1501 pairs "
                    "SSIM 0.2139 against 0.2103 for copying the source). Train the paper-scale stages on real "
                    "data (docs/gpu.md) for views worth adding", root)


def _generate_locked(cfg, rank, world, merge, joined, start, out, pipeline, progress, inputs, start_log) -> dict:
    from pcdms_aug.utils.runtime import barrier

    leader = rank == 0 or not joined
    # One process prepares the folder: --overwrite, settings and plan; the others log once it exists.
    if leader:
        _prepare_folder(cfg, inputs, out)
        start_log()
    if rank == 0:
        _warn_about_sources(cfg, inputs)
    if cfg.filter.model == "train":
        cfg = replace(cfg, filter=replace(cfg.filter, model=str(_trained_filter(cfg, out, leader))))
    barrier()
    if not leader:
        start_log()
    plan = read_plan(out / outputs.PLAN, {s.name: s.pose.size for s in inputs.sources.sources})
    groups: dict[int, list] = {}
    for v in plan:
        groups.setdefault(v.group, []).append(v)

    scorer_fp = scorer_fingerprint(cfg.filter)
    mine = [g for g in sorted(groups) if g % world == rank]
    todo = _pending(out, groups, mine, scorer_fp)
    counts = dict(inputs.sources.counts)
    counts.update(planned=len(plan), batches=len(groups), rank=rank, world=world,
                  batches_this_rank=len(mine), batches_done_before=len(mine) - len(todo), generated=0, rescored=0)
    if todo:
        _run_batches(cfg, inputs, out, groups, todo, scorer_fp, pipeline, counts, progress)
    counts["seconds"] = round(time.perf_counter() - start, 3)
    counts["images_per_second"] = round(counts["generated"] / max(counts["seconds"], 1e-9), 4)
    barrier()
    if merge:
        _merge(out, plan, cfg, inputs, scorer_fp, counts)
    return counts


def _warn_about_sources(cfg: GenerateConfig, inputs: Inputs) -> None:
    _warn_tiny_on_real(cfg, inputs.dataset.root)
    counts = inputs.sources.counts
    skipped = counts["no_annotation"] + counts["no_torso"]
    if skipped:
        log.warning("%d training image(s) skipped as sources: %d without a pose annotation, %d without a full "
                    "torso", skipped, counts["no_annotation"], counts["no_torso"])


def _prepare_folder(cfg: GenerateConfig, inputs: Inputs, out: Path) -> None:
    """Claim the folder, apply --overwrite, and write the settings and the plan unless a resume has them
    (:func:`run_folder.check` refuses foreign content and other settings)."""
    mode = run_folder.check(out, outputs.PROTOCOL, inputs.settings, cfg.overwrite)
    env = _environment(cfg)
    run_folder.begin(out, outputs.PROTOCOL, inputs.settings, mode, {"filter": to_dict(cfg.filter),
                                                                    "environment": env})
    if mode == "resume":
        before = (run_folder.read_record(out, outputs.PROTOCOL) or {}).get("environment")
        if before and before != env:
            log.warning("resuming with another environment (%s, before %s): images made now may differ in the "
                        "last bits from those one uninterrupted run would make (float rounding depends on "
                        "the device, the library versions and the number of CPU threads)", env, before)
    if mode != "resume" or not (out / outputs.PLAN).is_file():
        plan = make_plan(inputs.sources, views=int(cfg.views), per=cfg.per, policy=cfg.policy,
                         seed=int(cfg.seed), batch=int(cfg.batch), canonical_poses=int(cfg.canonical_poses),
                         coverage_candidates=int(cfg.coverage_candidates), ext=cfg.image_format)
        write_plan(out / outputs.PLAN, plan)
    log.info("%s in %s (settings in %s)", {"new": "new run", "resume": "resuming the run",
                                           "overwrite": "replaced the previous run; new run"}[mode],
             out, outputs.SETTINGS)


def _pending(out: Path, groups: dict, mine: list, scorer_fp: str | None) -> list[tuple[int, bool]]:
    """(group, needs generation) of this rank's groups not finished yet: a group is finished when all its images
    exist and a shard log holds its scores by the current filter; with its images present it is only rescored."""
    logged = outputs.read_shard_logs(out, scorer_fp)
    todo = []
    for g in mine:
        have = all((out / v.file).is_file() for v in groups[g])
        entry = logged.get(g)
        if have and entry is not None and entry.scorer == scorer_fp:
            continue
        todo.append((g, not have))
    return todo


def _run_batches(cfg: GenerateConfig, inputs: Inputs, out: Path, groups: dict, todo: list, scorer_fp: str | None,
                 pipeline, counts: dict, progress: bool) -> None:
    """Generate (or read back) and score each pending group, logging it to this rank's shard log; counts the
    generated and rescored views into ``counts``."""
    from tqdm import tqdm

    from pcdms_aug.utils.runtime import pick_device

    device = pick_device(cfg.device)
    pipe = _pipeline_for(cfg, todo, pipeline, device)
    scorer = _scorer_for(cfg, inputs, groups, todo, scorer_fp, device)
    rank, world = counts["rank"], counts["world"]
    shard = outputs.ShardLog(out, rank, world)
    desc = f"generate [rank {rank}/{world}]" if world > 1 else "generate"
    bar = tqdm(total=sum(len(groups[g]) for g, _ in todo), desc=desc, unit="img", disable=not progress,
               dynamic_ncols=True)
    try:
        for g, needs_generation in todo:
            views = groups[g]
            decoded = _group_images(pipe, cfg, inputs, views, out, needs_generation, counts)
            scores = scorer.score(decoded, [v.pid for v in views]) if scorer else [None] * len(views)
            shard.add(g, scorer_fp, {v.file: None if s is None else round(float(s), 6)
                                      for v, s in zip(views, scores)})
            bar.update(len(views))
    except (OSError, DataError) as e:
        if _no_space(e):
            raise DataError(f"no space left on device after {counts['generated']} new image(s) in this run; "
                            "free space and run the same command again: finished images are kept and the "
                            "run resumes where it stopped", out) from e
        raise
    finally:
        bar.close()


def _pipeline_for(cfg: GenerateConfig, todo: list, pipeline, device: str):
    """The pipeline, loaded only when some pending group needs generation (rescoring needs none)."""
    if not any(gen for _, gen in todo):
        return None
    if pipeline is not None:
        return pipeline
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline

    return PCDMsPipeline.load(cfg.weights, device, cfg.dtype)


def _scorer_for(cfg: GenerateConfig, inputs: Inputs, groups: dict, todo: list, scorer_fp: str | None, device: str):
    """The filter's scorer with the real images of every identity the pending groups show (None: no filter)."""
    if scorer_fp is None:
        return None
    scorer = ConsistencyScorer(cfg.filter, device)
    for pid in sorted({v.pid for g, _ in todo for v in groups[g]}):
        scorer.add_identity(pid, [load_image(p) for p in inputs.real_by_pid[pid]])
    return scorer


def _group_images(pipe, cfg: GenerateConfig, inputs: Inputs, views: list, out: Path, needs_generation: bool,
                  counts: dict) -> list:
    """A group's images as they will be scored: generated now, or read back from the files of an earlier run."""
    if needs_generation:
        images = _generate_group(pipe, cfg, inputs, views, out)
        counts["generated"] += sum(1 for v in views if v.file in images["written"])
        return images["decoded"]
    decoded = [load_image(out / v.file) for v in views]
    counts["rescored"] += len(views)
    return decoded


def _merge(out: Path, plan: list, cfg: GenerateConfig, inputs: Inputs, scorer_fp: str | None, counts: dict) -> None:
    """Rank 0 after every rank: manifest.csv, and the settings with this run's summary."""
    from pcdms_aug.utils.io import atomic_save_image
    from pcdms_aug.data.viz import views_sheet

    counts.update(merge_manifest(out, plan, cfg, inputs.weights_fp, scorer_fp))
    sheet = views_sheet(plan, inputs.dataset, out)
    if sheet is not None:
        atomic_save_image(out / outputs.SHEET, sheet)
    summary = {k: counts[k] for k in ("train_images", "sources", "identities", "no_annotation", "no_torso",
                                      "not_in_split", "planned", "manifest_rows", "kept", "complete")}
    run_folder.write_record(out, outputs.PROTOCOL, inputs.settings, {"filter": to_dict(cfg.filter),
                                                                     "counts": summary,
                                                                     "environment": _environment(cfg)})


def _environment(cfg: GenerateConfig) -> dict:
    """What float rounding depends on besides the settings: recorded, and compared on a resume (a warning)."""
    import torch

    from pcdms_aug.utils.runtime import pick_device

    device = pick_device(cfg.device)
    env = {"device": device.split(":")[0], "torch": torch.__version__.split("+")[0]}
    if env["device"] == "cpu":
        env["cpu_threads"] = torch.get_num_threads()
    else:
        env["gpu"] = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    return env


def _trained_filter(cfg: GenerateConfig, out: Path, leader: bool) -> Path:
    """--filter-model train: a small re-ID model trained on the real source images (of the split), once."""
    from pcdms_aug.utils.runtime import barrier, pick_device

    f = cfg.filter
    path = out / outputs.FILTER / f"{f.arch}-{int(f.size[0])}x{int(f.size[1])}-e{int(f.train_epochs)}.pth.tar"
    if leader and not path.is_file():
        train = load_filter_trainer()
        log.info("training the filter's re-ID model (%s, %d epochs) on the real training images", f.arch,
                 f.train_epochs)
        train(cfg.dataset, path, split=cfg.split, arch=f.arch, epochs=int(f.train_epochs), size=tuple(f.size),
              seed=int(cfg.seed), device=pick_device(cfg.device))
    barrier()
    return path


def _generate_group(pipe, cfg: GenerateConfig, inputs: Inputs, views: list, out: Path) -> dict:
    import torch

    names = sorted({v.source for v in views})
    known = {s.name: s for s in inputs.sources.sources}
    missing = [n for n in names if n not in known]
    if missing:
        raise DataError(f"the plan names source {missing[0]}, which is no usable source now (annotations or "
                        "split changed?); rerun with --overwrite", out / outputs.PLAN)
    images = {n: load_image(known[n].path) for n in names}
    src_pose = {n: known[n].pose for n in names}
    # One distinct source is passed once, so the pipeline encodes it once.
    srcs = [images[names[0]]] if len(names) == 1 else [images[v.source] for v in views]
    spos = [src_pose[names[0]]] if len(names) == 1 else [src_pose[v.source] for v in views]
    result = call_any_size(pipe, srcs, spos, [v.target for v in views], num_inference_steps=cfg.steps,
                           guidance_scale=cfg.guidance, scheduler=cfg.scheduler, stages=tuple(cfg.stages),
                           generator=[torch.Generator().manual_seed(v.seed) for v in views], batch_size=len(views))
    written, decoded = set(), []
    for v, im in zip(views, result.images):
        data = encode_image(im, cfg.image_format, cfg.jpeg_quality)
        path = out / v.file
        if not path.is_file():
            aio.atomic_write_bytes(path, data)
            written.add(v.file)
        # Scores come from the bytes on disk, so a view scored now and one re-read on a resume agree.
        decoded.append(decode_image(data))
    return {"written": written, "decoded": decoded}


def merge_manifest(out: Path, plan: list, cfg: GenerateConfig, weights_fp: str, scorer_fp: str | None) -> dict:
    """Write manifest.csv from every shard log (any rank, any earlier run) in plan order; apply the filter rule.

    Only views scored by the current filter (or logged without one, when there is none) and whose image exists
    are listed; the rule (threshold or top fraction) is applied over those.
    """
    done = {}
    for g, e in outputs.read_shard_logs(out, scorer_fp).items():
        if e.scorer == scorer_fp:
            done[g] = outputs.Finished(g, e.scorer, {f: s for f, s in e.scores.items() if (out / f).is_file()})
    rows = [v for v in plan if v.group in done and v.file in done[v.group].scores]
    scores = [done[v.group].scores[v.file] for v in rows]
    kept = [True] * len(rows) if scorer_fp is None else select(
        scores, [v.pid for v in rows], cfg.filter.threshold, cfg.filter.top, cfg.filter.top_scope)
    n = outputs.write_manifest(out, plan, done, {v.file: k for v, k in zip(rows, kept)}, cfg.policy, weights_fp)
    return {"manifest_rows": n, "kept": int(sum(kept)), "complete": n == len(plan)}
