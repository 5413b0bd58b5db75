"""`pcdms-aug train`: one training loop for the three stages, on one process or many (torchrun, DDP).

Determinism across world sizes: a step's global batch is split into micro-batches numbered
``rank * grad_accum + k``; micro-batch m of step s always holds the same samples and draws its noise from a
generator seeded by (seed, s, m). One process with grad_accum=2 therefore computes the same update as two
processes with grad_accum=1.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pcdms_aug.training.checkpoints import (ema_weights, export_final, list_checkpoints, load_checkpoint,
                                            save_checkpoint, set_rng_state, warm_start)
from pcdms_aug.training.config import AMP_TORCH, RunConfig, as_yaml, load_run_config
from pcdms_aug.training.data import MicroBatchSampler, make_dataset, micro_generator, to_device
from pcdms_aug.training.feature_build import frozen_on_device
from pcdms_aug.training.speed import adamw, on_device
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import file_log
from pcdms_aug.utils.runtime import Runtime, barrier, init_runtime

log = logging.getLogger("pcdms_aug.training.loop")


class _LossModule(torch.nn.Module):
    """DDP synchronises gradients of what runs inside ``forward``; the stage's loss is that forward."""

    def __init__(self, stage):
        super().__init__()
        self.stage = stage

    def forward(self, batch, generator):
        return self.stage.training_loss(batch, generator=generator)


@dataclass
class _Run:
    """One training run's state, as the step loop works on it."""

    cfg: RunConfig
    rt: Runtime
    out: Path
    stage: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    ema: object  # diffusers EMAModel of params
    step: int = 0
    dataset: object = None
    sampler: MicroBatchSampler | None = None
    loader: object = None
    model: torch.nn.Module | None = None  # the loss, DDP-wrapped when distributed
    amp_dtype: torch.dtype | None = None
    use_amp: bool = False
    scaler: object = None
    writer: object = None  # TensorBoard, on the main process only
    aside: list = field(default_factory=list)  # frozen components kept off the device (feature cache)


def _holds_a_training_run(out: Path) -> bool:
    """A folder an earlier version of `pcdms-aug train` wrote (before the owner record): its log and config."""
    return (out / "train.log").is_file() and (out / "config.yaml").is_file()


def train(cfg: RunConfig, rt: Runtime | None = None, progress: bool = True) -> Path:
    """Train one stage; resumes from the newest checkpoint in ``cfg.train.out``. Returns OUT/final."""
    tc = cfg.train
    rt = rt or init_runtime(tc.device, "fp32", tc.seed)
    out = Path(tc.out)
    if not rt.is_main:
        return _train(cfg, rt, progress, out)
    from pcdms_aug.utils.paths import check_out_dir, claim_dir

    d = cfg.data
    check_out_dir(out, "train.out", inputs=[("data.root", d.root), ("data.annotations", d.annotations),
                                            ("data.refine_inputs", d.refine_inputs)],
                  command="train", own=_holds_a_training_run)
    claim_dir(out, "train")
    with file_log(log, out / "train.log", "%(asctime)s %(levelname)s %(message)s"):
        return _train(cfg, rt, progress, out)


def _train(cfg: RunConfig, rt: Runtime, progress: bool, out: Path) -> Path:
    barrier()
    run = _set_up_model(cfg, rt, out)
    ckpts = list_checkpoints(out)
    if ckpts and ckpts[-1][0] >= cfg.train.max_steps and (out / "final").is_dir():
        if rt.is_main:
            print(f"[train] {out / 'final'} is complete ({cfg.train.max_steps} steps); nothing to do", flush=True)
        return out / "final"
    if ckpts:
        _resume(run, *ckpts[-1])
    _set_up_data(run)
    if rt.is_main:
        _start_logs(run)
    _step_loop(run, progress)
    return _finish(run)


def _set_up_model(cfg: RunConfig, rt: Runtime, out: Path) -> _Run:
    """The stage (warm-started if the config says so) on the device, its optimizer, LR schedule and EMA."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from pcdms_aug.stages import build_stage

    tc = cfg.train
    stage = build_stage(cfg.stage, cfg.model, seed=tc.seed)
    # Checkpoints hold the trainable weights only: a resumed run takes its frozen parts from init_from again.
    if tc.init_from:
        widened, fresh = warm_start(stage, cfg.stage, tc.init_from)
        if rt.is_main and not list_checkpoints(out):
            log.info("initialised %s from %s%s%s", cfg.stage, tc.init_from,
                     f" (new input channels at zero in {', '.join(widened)})" if widened else "",
                     f" (new components, not in the saved stage: {', '.join(fresh)})" if fresh else "")
    stage, aside = on_device(stage, cfg, rt, log)
    params = list(stage.trainable_parameters())
    if not params:
        raise DataError(f"stage {cfg.stage} has no trainable parameters")
    optimizer = adamw(params, tc, rt.device)
    lr_scheduler = get_scheduler(tc.lr_schedule, optimizer, num_warmup_steps=tc.warmup_steps,
                                 num_training_steps=tc.max_steps)
    return _Run(cfg, rt, out, stage, params, optimizer, lr_scheduler, EMAModel(params, decay=tc.ema_decay),
                aside=aside)


def _resume(run: _Run, step: int, path: Path) -> None:
    """Weights, EMA, optimizer, schedule and RNG states of checkpoint ``path`` (of ``step``)."""
    state = load_checkpoint(path, run.stage, run.ema, run.rt.device)
    run.optimizer.load_state_dict(state["optimizer"])
    run.lr_scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    run.step = step
    if run.rt.is_main:
        log.info("resuming from %s (step %d of %d)", path, step, run.cfg.train.max_steps)
        print(f"[train] resuming from {path} (step {step} of {run.cfg.train.max_steps})", flush=True)


def _set_up_data(run: _Run) -> None:
    """This rank's data from the run's step on, the loss module (DDP when distributed) and mixed precision."""
    cfg, rt, tc = run.cfg, run.rt, run.cfg.train
    run.dataset = make_dataset(cfg)
    if tc.feature_cache:
        from pcdms_aug.training.feature_build import cached_dataset
        run.dataset = cached_dataset(run.stage, run.aside, run.dataset, tc.feature_cache, rt, cfg.data,
                                     AMP_TORCH[tc.mixed_precision])
    run.sampler = MicroBatchSampler(len(run.dataset), tc.batch_size, tc.grad_accum, rt.rank, rt.world_size,
                                    tc.seed, run.step)
    run.loader = torch.utils.data.DataLoader(run.dataset, batch_sampler=run.sampler,
                                             num_workers=cfg.data.num_workers,
                                             persistent_workers=cfg.data.num_workers > 0)
    run.model = _LossModule(run.stage)
    if rt.distributed:
        run.model = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[rt.local_rank] if rt.device.startswith("cuda") else None,
            # Every trainable parameter takes part in every forward (the unconditional inputs are zeros, not
            # learned tokens), so DDP need not walk the graph for unused ones each step (it warned so on an
            # H200); a stage that adds a parameter some steps skip fails here with DDP's own error.
            find_unused_parameters=False)
    run.amp_dtype = AMP_TORCH[tc.mixed_precision]
    run.use_amp = run.amp_dtype is not None and rt.device.startswith("cuda")
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.use_amp and run.amp_dtype == torch.float16)


def _start_logs(run: _Run) -> None:
    """TensorBoard, the resolved config and the run's first log line (main process)."""
    from torch.utils.tensorboard import SummaryWriter

    run.writer = SummaryWriter(str(run.out / "tb"))
    (run.out / "config.yaml").write_text(as_yaml(run.cfg))
    log.info("stage %s: %d trainable parameters, %d pairs, global batch %d, world %d", run.cfg.stage,
             sum(p.numel() for p in run.params), len(run.dataset), run.sampler.global_batch(), run.rt.world_size)


def _step_loop(run: _Run, progress: bool) -> None:
    """Optimizer steps up to ``train.max_steps``, with logs, previews and checkpoints on their schedules."""
    from tqdm import tqdm

    tc, rt = run.cfg.train, run.rt
    bar = tqdm(total=tc.max_steps, initial=run.step, desc=f"train {run.cfg.stage}",
               disable=not (progress and rt.is_main), dynamic_ncols=True)
    it = iter(run.loader)
    t0, seen = time.time(), 0
    run.stage.train()
    while run.step < tc.max_steps:
        total, grad_norm = _optimizer_step(run, it)
        run.step += 1
        seen += run.sampler.global_batch()
        if rt.distributed:
            t = torch.tensor([total], device=rt.device)
            torch.distributed.all_reduce(t)
            total = float(t) / rt.world_size
        if not math.isfinite(total):
            raise FloatingPointError(f"loss became {total} at step {run.step}; lower train.lr or check the data")
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}", lr=f"{run.lr_scheduler.get_last_lr()[0]:.2e}")
        if rt.is_main and _due(run, tc.log_every):
            _log_step(run, total, grad_norm, seen / max(time.time() - t0, 1e-9))
        if rt.is_main and _due(run, tc.sample_every):
            with frozen_on_device(run.stage, run.aside, rt.device, register=True):
                save_preview(run.stage, run.ema, run.params, getattr(run.dataset, "images", run.dataset),
                             run.out / "samples" / f"step-{run.step:06d}.png", tc.sample_steps, tc.seed, rt.device)
        if _due(run, tc.checkpoint_every):
            if rt.is_main:
                save_checkpoint(run.out, run.step, run.stage, run.optimizer, run.lr_scheduler, run.ema,
                                tc.keep_checkpoints, as_yaml(run.cfg))
            barrier()
    bar.close()


def _due(run: _Run, every: int) -> bool:
    """Whether a thing done every ``every`` steps (0: never) is done after this step; the last step counts."""
    return bool(every) and (run.step % every == 0 or run.step == run.cfg.train.max_steps)


def _optimizer_step(run: _Run, it) -> tuple[float, torch.Tensor | None]:
    """One optimizer step over this rank's micro-batches: (this rank's loss, the gradient norm before
    clipping, or None without clipping)."""
    tc, rt = run.cfg.train, run.rt
    total = 0.0
    for k in range(tc.grad_accum):
        batch = to_device(next(it), rt.device)
        gen = micro_generator(tc.seed, run.step, rt.rank * tc.grad_accum + k, rt.device)
        sync = k == tc.grad_accum - 1 or not rt.distributed
        ctx = run.model.no_sync() if not sync else contextlib.nullcontext()
        with ctx, torch.autocast(rt.device.split(":")[0], dtype=run.amp_dtype or torch.float32,
                                 enabled=run.use_amp):
            loss = run.model(batch, gen) / tc.grad_accum
        run.scaler.scale(loss).backward()
        total += float(loss.detach())
    for p in run.params:
        # A parameter without a gradient (none in the shipped stages; one process does not fail on it as DDP
        # does) gets a zero one, so one and many processes take the same AdamW step.
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, tc.grad_clip) if tc.grad_clip > 0 else None
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.ema.step(run.params)
    return total, grad_norm


def _log_step(run: _Run, total: float, grad_norm, rate: float) -> None:
    """The step's loss, LR, speed (samples/s) and gradient norm to TensorBoard and train.log."""
    lr, step = run.lr_scheduler.get_last_lr()[0], run.step
    run.writer.add_scalar("loss", total, step)
    run.writer.add_scalar("lr", lr, step)
    run.writer.add_scalar("samples_per_second", rate, step)
    if grad_norm is not None:
        run.writer.add_scalar("grad_norm", float(grad_norm), step)
    # A loss of several terms (stage 3's adversarial one) names them; rank 0's last micro-batch.
    terms = getattr(run.stage, "loss_terms", {})
    for name, value in terms.items():
        run.writer.add_scalar(f"loss_terms/{name}", value, step)
    log.info("step %d loss %.5f lr %.3e %.1f samples/s%s", step, total, lr, rate,
             "".join(f" {k} {v:.4f}" for k, v in terms.items()))


def save_preview(stage, ema, params, dataset, path: Path, steps: int, seed: int, device: str) -> None:
    """The stage's preview grid (source / target pose / sample with the EMA weights / ground truth rows) of a
    fixed few pairs (the dataset's first four), sampled with ``steps`` steps from a generator seeded by
    ``seed``; nothing is written for a stage without preview rows."""
    preview = getattr(stage, "preview", None)
    if preview is None:
        return
    from pcdms_aug.data.viz import contact_sheet
    from pcdms_aug.utils.io import atomic_save_image

    batch = torch.utils.data.default_collate([dataset[i] for i in range(min(4, len(dataset)))])
    with ema_weights(ema, params):
        stage.eval()
        try:
            with torch.no_grad():
                rows = preview(to_device(batch, device), num_inference_steps=steps,
                               generator=torch.Generator(device=device).manual_seed(seed))
        finally:
            stage.train()
    if not rows:
        return
    labels = list(rows[0].keys())
    sheet = contact_sheet([list(r.values()) for r in rows], col_labels=labels)
    atomic_save_image(path, sheet)


def _finish(run: _Run) -> Path:
    """OUT/final (EMA weights) written by the main process; every rank returns its path."""
    final = run.out / "final"
    if run.rt.is_main:
        with frozen_on_device(run.stage, run.aside, run.rt.device, register=True):
            export_final(run.stage, run.ema, run.params, final, run.cfg, run.step)
        run.writer.close()
        print(f"[train] wrote {final}", flush=True)
    barrier()
    return final


def configure(parser):
    parser.add_argument("config", help="training YAML, e.g. configs/tiny/train_inpaint.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    parser.add_argument("--no-progress", action="store_true")


def run(args):
    cfg = load_run_config(args.config, args.overrides)
    train(cfg, progress=not args.no_progress)
    return 0
