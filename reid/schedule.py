"""Training length as optimizer steps: the schedule every run follows, and the loop that drives torchreid's engine.

Every run is trained by iterations. The three protocols differ only in how the steps are chosen:

- ``epochs``: ``epochs`` passes over the run's own training list; the learning rate drops at ``stepsize``
  epochs, converted to steps of that list. A run with more images takes more steps.
- ``steps``: ``max_steps`` iterations for every run, the learning rate dropping at ``lr_steps``.
- ``converged``: at most ``max_steps`` (or the epochs' steps); the validation mAP is measured every
  ``eval_every`` steps, the learning rate drops by ``gamma`` when it has not risen for ``patience`` evaluations
  (at most ``plateau_drops`` times), and the run stops at the next such plateau; the weights of the best
  validation mAP are the ones tested.

A control replays another run's :class:`Schedule` (its steps and learning-rate drops) exactly.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch

from pcdms_aug.utils.errors import DataError


@dataclass
class Schedule:
    total_steps: int
    milestones: list[int] = field(default_factory=list)  # steps after which the learning rate is multiplied by gamma
    cosine: bool = False

    def to_dict(self) -> dict:
        return {"total_steps": int(self.total_steps), "milestones": [int(m) for m in self.milestones],
                "cosine": bool(self.cosine)}

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        return cls(int(d["total_steps"]), [int(m) for m in d.get("milestones", [])], bool(d.get("cosine", False)))


def protocol(cfg) -> str:
    """The protocol of a run that follows its own schedule: converged | steps | epochs."""
    return "converged" if cfg.converge else ("steps" if cfg.max_steps else "epochs")


def own_schedule(cfg, batches_per_epoch: int) -> Schedule:
    """The schedule a run with ``batches_per_epoch`` batches follows under the config's protocol."""
    cosine = cfg.scheduler == "cosine"
    if cfg.max_steps:
        total = int(cfg.max_steps)
        milestones = [] if cfg.converge else sorted(int(s) for s in (cfg.lr_steps or []))
    else:
        total = int(cfg.epochs) * batches_per_epoch
        if cfg.converge or cosine:
            milestones = []
        elif cfg.scheduler == "multi_step":
            sizes = cfg.stepsize if isinstance(cfg.stepsize, (list, tuple)) else [cfg.stepsize]
            milestones = [int(s) * batches_per_epoch for s in sizes]
        else:  # single_step: torchreid's StepLR, a drop every stepsize epochs
            every = int(cfg.stepsize) * batches_per_epoch
            milestones = list(range(every, total, every)) if every > 0 else []
    return Schedule(total, [m for m in milestones if 0 < m < total], cosine and not cfg.converge)


def _lr_factor(schedule: Schedule, gamma: float):
    def factor(step: int) -> float:
        if schedule.cosine:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, schedule.total_steps) / max(1, schedule.total_steps)))
        return gamma ** sum(step >= m for m in schedule.milestones)  # reads the list live: plateau drops append
    return factor


@dataclass
class _Tracker:
    """Best validation mAP so far, its step and weights; plateaus counted in evaluations."""

    best: float = -math.inf
    best_step: int = 0
    state: dict | None = None
    since: int = 0
    curve: list = field(default_factory=list)

    def update(self, step: int, value: float, model, min_delta: float) -> None:
        self.curve.append([step, round(float(value), 3)])
        if value > self.best + min_delta:
            self.best, self.best_step, self.since = value, step, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.since += 1


def train_steps(engine, cfg, schedule: Schedule, validate=None, early_stop: bool = False,
                on_progress=None) -> dict:
    """Drive ``engine.forward_backward`` for ``schedule.total_steps`` steps (or to convergence).

    ``validate(model) -> mAP`` is called every ``cfg.eval_every`` steps when given; the best weights are restored
    at the end. With ``early_stop`` plateaus drop the learning rate and then end the run (the steps reached and
    the drops are written into ``schedule``, so a control can replay them). Returns what the results record.
    """
    loader = engine.train_loader
    if len(loader) == 0:
        raise DataError(f"no full training batch: fewer training images than batch_size={cfg.batch_size} "
                        "(the loader drops the last partial batch); lower batch_size")
    if validate is not None and int(cfg.eval_every) < 1:
        raise DataError(f"eval_every must be >= 1, got {cfg.eval_every}")
    lr_sched = torch.optim.lr_scheduler.LambdaLR(engine.optimizer, _lr_factor(schedule, cfg.gamma))
    engine.max_epoch = max(1, math.ceil(schedule.total_steps / len(loader)))
    track, drops, step, epoch, start = _Tracker(), 0, 0, 0, time.perf_counter()
    cap = schedule.total_steps
    stop = schedule.total_steps <= 0
    while not stop:
        engine.epoch = epoch
        engine.two_stepped_transfer_learning(epoch, cfg.fixbase_epoch, cfg.open_layers)
        losses = []
        for data in loader:
            losses.append(engine.forward_backward(data))
            lr_sched.step()
            step += 1
            if validate is not None and (step % cfg.eval_every == 0 or step == schedule.total_steps):
                track.update(step, validate(engine.model), engine.model, cfg.min_delta)
                if early_stop and track.since >= cfg.patience:
                    if drops < cfg.plateau_drops:
                        schedule.milestones.append(step)
                        drops, track.since = drops + 1, 0
                    else:
                        stop = True
            if step >= schedule.total_steps:
                stop = True
            if stop:
                break
        epoch += 1
        loss = {k: sum(d[k] for d in losses) / len(losses) for k in losses[0]} if losses else {}
        print(f"epoch {epoch} step {step}/{schedule.total_steps} lr {engine.optimizer.param_groups[0]['lr']:.6f} "
              + " ".join(f"{k} {v:.4f}" for k, v in loss.items())
              + (f" val mAP {track.curve[-1][1]:.2f}" if track.curve else ""), flush=True)
        if on_progress is not None:
            on_progress(step, schedule.total_steps, time.perf_counter() - start)
    if early_stop:
        schedule.total_steps = step
    if track.state is not None:
        engine.model.load_state_dict(track.state)
    return {"steps": step, "step_cap": cap, "epochs_run": epoch, "lr_milestones": list(schedule.milestones),
            "best_step": track.best_step if track.curve else step,
            "val_mAP": track.best if track.curve else None, "val_curve": track.curve,
            "train_s": time.perf_counter() - start}
