"""`pcdms-aug train`: one training loop for the three stages, on one process or many (torchrun, DDP).

Determinism across world sizes: a step's global batch is split into micro-batches numbered
``rank * grad_accum + k``; micro-batch m of step s always holds the same samples and draws its noise from a
generator seeded by (seed, s, m). One process with grad_accum=2 therefore computes the same update as two
processes with grad_accum=1.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import apply_overrides, build, load_config, resolve_config_path, to_dict
from .errors import DataError
from .io import atomic_write_text, file_log
from .resume import check_folder, list_checkpoints, load_checkpoint, save_checkpoint, set_rng_state
from .runtime import Runtime, barrier, init_runtime

log = logging.getLogger("pcdms_aug.train")


AMP_DTYPES = ("no", "bf16", "fp16")  # train.mixed_precision: autocast dtype on GPU; weights stay fp32


@dataclass
class DataConfig:
    root: str = ""
    annotations: str = ""
    image_size: tuple = (128, 64)
    refine_inputs: str | None = None
    max_pairs: int | None = None
    num_workers: int = 0


@dataclass
class TrainConfig:
    out: str = "runs/train"
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPU only; trainable weights stay fp32)
    batch_size: int = 4  # per process and micro-batch
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    lr_schedule: str = "cosine"  # any diffusers.optimization scheduler name
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 200
    sample_steps: int = 20
    # Warm start (step 0 only): a saved stage folder, a saved pipeline folder (its stage of this name) or
    # "tiny". The architecture must match the config; optimizer, schedule and EMA start fresh.
    init_from: str | None = None


@dataclass
class RunConfig:
    stage: str = "inpaint"
    model: dict | str = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_run_config(path, overrides=()) -> RunConfig:
    """``overrides`` may reach into the stage's model config too (``model.noise_offset=0.05``), also where the
    run config names it by path."""
    path = resolve_config_path(path)
    model_over = [o for o in overrides if o.strip().startswith("model.")]
    raw = load_config(path, [o for o in overrides if o not in model_over])
    if (raw.get("train") or {}).get("mixed_precision") is False:  # YAML reads a bare `no` as false
        raw["train"]["mixed_precision"] = "no"
    cfg = build(RunConfig, raw, where=str(path))
    if isinstance(cfg.model, str):
        cfg.model = load_config(cfg.model if Path(cfg.model).is_file() else path.parent / cfg.model)
    cfg.model = apply_overrides(cfg.model, [o.strip()[len("model."):] for o in model_over])
    if cfg.stage not in ("prior", "inpaint", "refine"):
        raise DataError(f"stage must be prior, inpaint or refine, got {cfg.stage!r}", path)
    if cfg.train.mixed_precision not in AMP_DTYPES:
        raise DataError(f"train.mixed_precision must be one of {', '.join(AMP_DTYPES)}, "
                        f"got {cfg.train.mixed_precision!r}", path)
    return cfg


# ------------------------------------------------------------------------------------------ data order
class MicroBatchSampler(torch.utils.data.Sampler):
    """Index lists of this rank's micro-batches, from ``start_step`` on, for ever (epochs wrap seamlessly,
    so there is never a short last batch)."""

    def __init__(self, n: int, batch: int, accum: int, rank: int, world: int, seed: int, start_step: int = 0):
        self.n, self.batch, self.accum, self.rank, self.world = n, batch, accum, rank, world
        self.seed, self.start_step = seed, start_step
        self._perm_epoch, self._perm = -1, None

    def global_batch(self) -> int:
        return self.batch * self.accum * self.world

    def _index(self, q: int) -> int:
        epoch = q // self.n
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm[q % self.n]

    def micro_batch(self, step: int, micro: int) -> list[int]:
        start = step * self.global_batch() + micro * self.batch
        return [self._index(q) for q in range(start, start + self.batch)]

    def __iter__(self):
        step = self.start_step
        while True:
            for k in range(self.accum):
                yield self.micro_batch(step, self.rank * self.accum + k)
            step += 1


def micro_generator(seed: int, step: int, micro: int, device: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 4099 + micro)


def _yaml(cfg: RunConfig) -> str:
    import yaml
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ------------------------------------------------------------------------------------------ the loop
class _LossModule(torch.nn.Module):
    """DDP synchronises gradients of what runs inside ``forward``; the stage's loss is that forward."""

    def __init__(self, stage):
        super().__init__()
        self.stage = stage

    def forward(self, batch, generator):
        return self.stage.training_loss(batch, generator=generator)


def make_dataset(cfg: RunConfig):
    from .data.pairs import PairDataset

    if not cfg.data.root or not cfg.data.annotations:
        raise DataError("data.root and data.annotations must be set (e.g. data.root=DATA "
                        "data.annotations=DATA/market-annotation-train.csv)")
    refine = cfg.data.refine_inputs if cfg.stage == "refine" else None
    if cfg.stage == "refine" and not refine:
        raise DataError("stage refine needs data.refine_inputs: the folder written by pcdms-aug make-refine-inputs")
    pairs = None
    if refine:
        # Stage 3 trains on the pairs whose stage-2 output exists (make-refine-inputs may have sampled them).
        from .pose import read_pairs
        from .refine_inputs import check_refine_inputs
        check_refine_inputs(refine, cfg.data.image_size)
        pairs_file = Path(refine) / "pairs.csv"
        if not pairs_file.is_file():
            raise DataError("pairs.csv missing: run pcdms-aug make-refine-inputs first", pairs_file)
        pairs = read_pairs(pairs_file)
    elif cfg.data.max_pairs:
        from .data.market import make_pairs
        from .pose import read_annotations
        from .data.market import MarketDataset
        names = {it.filename for it in MarketDataset(cfg.data.root).train}
        pairs = make_pairs(read_annotations(cfg.data.annotations), cfg.data.max_pairs, cfg.train.seed, names)
    return PairDataset(cfg.data.root, cfg.data.annotations, pairs=pairs, image_size=tuple(cfg.data.image_size),
                       refine_inputs_dir=refine)


def _widened(mine: torch.Tensor, theirs: torch.Tensor) -> bool:
    """A convolution that takes more input channels than the saved one and is otherwise the same."""
    return (mine.dim() == 4 and theirs.dim() == 4 and mine.shape[1] > theirs.shape[1]
            and mine.shape[:1] + mine.shape[2:] == theirs.shape[:1] + theirs.shape[2:])


def _warm_start(stage, name: str, source: str) -> list[str]:
    """Copy every weight of a saved stage into ``stage`` (same architecture, or a DataError naming the
    first mismatching tensors). A convolution given more input channels than the saved one (e.g. a UNet's
    conv_in with a new conditioning image) keeps the saved weights and starts the new channels at zero, as SD's
    inpainting UNet was started from SD: the warm-started model then computes exactly what the saved one did.
    Components the saved stage lacks entirely (e.g. stage 3's discriminator) keep their initialisation.
    Returns the names of the widened tensors and of those new components."""
    from .pipeline import stage_folder
    from .stages import stage_class

    folder = stage_folder(source, name)
    saved = stage_class(name).from_pretrained(folder)
    mine, theirs = stage.state_dict(), saved.state_dict()
    fresh = {k for k in mine if k.split(".", 1)[0] not in {n.split(".", 1)[0] for n in theirs}}
    widened = sorted(k for k in mine.keys() & theirs.keys() if _widened(mine[k], theirs[k]))
    bad = sorted(k for k in (mine.keys() - fresh) | theirs.keys()
                 if k not in widened and (k not in mine or k not in theirs or mine[k].shape != theirs[k].shape))
    if bad:
        raise DataError(f"train.init_from: the saved {name} stage does not match this config "
                        f"({len(bad)} tensors differ, e.g. {', '.join(bad[:3])})", folder)
    state = {k: v.to(mine[k].dtype) for k, v in theirs.items()}
    state.update({k: mine[k] for k in fresh})
    for k in widened:
        w = torch.zeros_like(mine[k])
        w[:, :theirs[k].shape[1]] = theirs[k]
        state[k] = w
    stage.load_state_dict(state)
    return widened, sorted({k.split(".", 1)[0] for k in fresh})


def _to_device(batch, device):
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def train(cfg: RunConfig, rt: Runtime | None = None, progress: bool = True) -> Path:
    """Train one stage; resumes from the newest checkpoint in ``cfg.train.out``. Returns OUT/final."""
    tc = cfg.train
    rt = rt or init_runtime(tc.device, "fp32", tc.seed)
    out = Path(tc.out)
    if not rt.is_main:
        return _train(cfg, rt, progress, out)
    out.mkdir(parents=True, exist_ok=True)
    with file_log(log, out / "train.log", "%(asctime)s %(levelname)s %(message)s"):
        return _train(cfg, rt, progress, out)


def _train(cfg: RunConfig, rt: Runtime, progress: bool, out: Path) -> Path:
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    from .stages import build_stage

    tc = cfg.train
    barrier()
    stage = build_stage(cfg.stage, cfg.model, seed=tc.seed)
    # Checkpoints hold the trainable weights only: a resumed run takes its frozen parts from init_from again.
    if tc.init_from:
        widened, fresh = _warm_start(stage, cfg.stage, tc.init_from)
        if rt.is_main and not list_checkpoints(out):
            log.info("initialised %s from %s%s%s", cfg.stage, tc.init_from,
                     f" (new input channels at zero in {', '.join(widened)})" if widened else "",
                     f" (new components, not in the saved stage: {', '.join(fresh)})" if fresh else "")
    stage = stage.to(rt.device)
    params = list(stage.trainable_parameters())
    if not params:
        raise DataError(f"stage {cfg.stage} has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    scheduler = get_scheduler(tc.lr_schedule, optimizer, num_warmup_steps=tc.warmup_steps,
                              num_training_steps=tc.max_steps)
    ema = EMAModel(params, decay=tc.ema_decay)

    step = 0
    ckpts = list_checkpoints(out)
    if ckpts and ckpts[-1][0] >= tc.max_steps and (out / "final").is_dir():
        if rt.is_main:
            print(f"[train] {out / 'final'} is complete ({tc.max_steps} steps); nothing to do", flush=True)
        return out / "final"
    if ckpts:
        step, path = ckpts[-1]
        state = load_checkpoint(path, stage, ema, rt.device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if rt.is_main:
            log.info("resuming from %s (step %d of %d)", path, step, tc.max_steps)
            print(f"[train] resuming from {path} (step {step} of {tc.max_steps})", flush=True)

    dataset = make_dataset(cfg)
    sampler = MicroBatchSampler(len(dataset), tc.batch_size, tc.grad_accum, rt.rank, rt.world_size, tc.seed, step)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                         persistent_workers=cfg.data.num_workers > 0)
    model = _LossModule(stage)
    if rt.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.local_rank] if rt.device.startswith("cuda") else None,
            find_unused_parameters=True)
    amp_dtype = dict(zip(AMP_DTYPES, (None, torch.bfloat16, torch.float16)))[tc.mixed_precision]
    use_amp = amp_dtype is not None and rt.device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    writer = None
    if rt.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))
        (out / "config.yaml").write_text(_yaml(cfg))
        log.info("stage %s: %d trainable parameters, %d pairs, global batch %d, world %d", cfg.stage,
                 sum(p.numel() for p in params), len(dataset), sampler.global_batch(), rt.world_size)
    bar = tqdm(total=tc.max_steps, initial=step, desc=f"train {cfg.stage}", disable=not (progress and rt.is_main),
               dynamic_ncols=True)
    it = iter(loader)
    t0, seen = time.time(), 0
    stage.train()
    while step < tc.max_steps:
        total = 0.0
        for k in range(tc.grad_accum):
            batch = _to_device(next(it), rt.device)
            gen = micro_generator(tc.seed, step, rt.rank * tc.grad_accum + k, rt.device)
            sync = k == tc.grad_accum - 1 or not rt.distributed
            ctx = model.no_sync() if not sync else contextlib.nullcontext()
            with ctx, torch.autocast(rt.device.split(":")[0], dtype=amp_dtype or torch.float32, enabled=use_amp):
                loss = model(batch, gen) / tc.grad_accum
            scaler.scale(loss).backward()
            total += float(loss.detach())
        for p in params:
            # A parameter the batch did not touch (e.g. a null token no sample dropped to) gets a zero
            # gradient, as DDP gives it, so one and many processes take the same AdamW step.
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip) if tc.grad_clip > 0 else None
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(params)
        step += 1
        seen += sampler.global_batch()
        if rt.distributed:
            t = torch.tensor([total], device=rt.device)
            torch.distributed.all_reduce(t)
            total = float(t) / rt.world_size
        if not math.isfinite(total):
            raise FloatingPointError(f"loss became {total} at step {step}; lower train.lr or check the data")
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if rt.is_main and (step % tc.log_every == 0 or step == tc.max_steps):
            rate = seen / max(time.time() - t0, 1e-9)
            writer.add_scalar("loss", total, step)
            writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
            writer.add_scalar("samples_per_second", rate, step)
            if grad_norm is not None:
                writer.add_scalar("grad_norm", float(grad_norm), step)
            # A loss of several terms (stage 3's adversarial one) names them; rank 0's last micro-batch.
            terms = getattr(stage, "loss_terms", {})
            for name, value in terms.items():
                writer.add_scalar(f"loss_terms/{name}", value, step)
            log.info("step %d loss %.5f lr %.3e %.1f samples/s%s", step, total, scheduler.get_last_lr()[0], rate,
                     "".join(f" {k} {v:.4f}" for k, v in terms.items()))
        if rt.is_main and tc.sample_every and (step % tc.sample_every == 0 or step == tc.max_steps):
            _save_preview(stage, ema, params, dataset, out / "samples" / f"step-{step:06d}.png", tc, rt)
        if tc.checkpoint_every and (step % tc.checkpoint_every == 0 or step == tc.max_steps):
            if rt.is_main:
                save_checkpoint(out, step, stage, optimizer, scheduler, ema, tc.keep_checkpoints, _yaml(cfg))
            barrier()
    bar.close()
    final = out / "final"
    if rt.is_main:
        _export_final(stage, ema, params, final, cfg, step)
        if writer is not None:
            writer.close()
        print(f"[train] wrote {final}", flush=True)
    barrier()
    return final


def _export_final(stage, ema, params, final: Path, cfg: RunConfig, step: int) -> None:
    """OUT/final in our format, with the EMA weights (what inference should use)."""
    ema.store(params)
    ema.copy_to(params)
    try:
        stage.save_pretrained(final)
        atomic_write_text(final / "training.json", json.dumps({"steps": step, "stage": cfg.stage,
                                                              "ema_decay": cfg.train.ema_decay}, indent=2))
    finally:
        ema.restore(params)


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """A stage folder (as OUT/final: EMA weights, our format) from ``OUT/checkpoint-<step>/`` of a run, so an
    intermediate step can be assembled and measured while the run goes on."""
    from diffusers.training_utils import EMAModel

    from .stages import build_stage

    ckpt, out = Path(checkpoint), Path(out)
    check_folder(ckpt)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError("export target exists and is not an empty folder", out)
    cfg = load_run_config(ckpt / "config.yaml")
    stage = build_stage(cfg.stage, cfg.model, seed=cfg.train.seed)
    if cfg.train.init_from:
        _warm_start(stage, cfg.stage, cfg.train.init_from)
    params = list(stage.trainable_parameters())
    ema = EMAModel(params, decay=cfg.train.ema_decay)
    state = load_checkpoint(ckpt, stage, ema)
    out.parent.mkdir(parents=True, exist_ok=True)
    _export_final(stage, ema, params, out, cfg, int(state["step"]))
    return out


def _save_preview(stage, ema, params, dataset, path: Path, tc: TrainConfig, rt: Runtime) -> None:
    """A grid of source / target pose / sample (EMA weights) / ground truth for a fixed few pairs."""
    preview = getattr(stage, "preview", None)
    if preview is None:
        return
    from .io import atomic_save_image
    from .viz import contact_sheet

    batch = torch.utils.data.default_collate([dataset[i] for i in range(min(4, len(dataset)))])
    ema.store(params)
    ema.copy_to(params)
    stage.eval()
    try:
        with torch.no_grad():
            rows = preview(_to_device(batch, rt.device), num_inference_steps=tc.sample_steps,
                           generator=torch.Generator(device=rt.device).manual_seed(tc.seed))
    finally:
        ema.restore(params)
        stage.train()
    if not rows:
        return
    labels = list(rows[0].keys())
    sheet = contact_sheet([list(r.values()) for r in rows], col_labels=labels)
    atomic_save_image(path, sheet)


def configure(parser):
    parser.add_argument("config", help="training YAML, e.g. configs/tiny/train_inpaint.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    parser.add_argument("--no-progress", action="store_true")


def run(args):
    cfg = load_run_config(args.config, args.overrides)
    train(cfg, progress=not args.no_progress)
    return 0
