"""One re-ID training run with torchreid's own parts: ImageDataManager, build_model, optim, and its engines.

The epochs are driven here (``engine.train`` once per epoch) instead of through ``engine.run``: ``run`` writes
checkpoints and TensorBoard logs and evaluates through print-only paths, none of which a sweep of many small
runs wants. Evaluation is :mod:`reid.evaluation`.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.runtime import seed_everything

from .datasets import torchreid, validation_items, validation_loader, with_generated_views
from .evaluation import evaluate, extract_features, rank_metrics
from .schedule import Schedule, own_schedule, protocol, train_steps

log = logging.getLogger(__name__)
LOSSES = ("softmax", "triplet")


@dataclass
class TrainConfig:
    """Model, schedule and evaluation: identical for every run of an experiment."""

    model: str = "osnet_x0_25"
    pretrained: bool = False  # True needs ``weights``: torchreid's own pretrained=True downloads
    weights: str | None = None  # local state dict (ImageNet or re-ID); matching names and shapes are loaded
    loss: str = "softmax"  # softmax | triplet (triplet + softmax, RandomIdentitySampler)
    optimizer: str = "adam"
    lr: float = 0.0015
    weight_decay: float = 5e-4
    scheduler: str = "single_step"  # torchreid.optim.build_lr_scheduler: single_step | multi_step | cosine
    stepsize: int | list = 20
    gamma: float = 0.1
    epochs: int = 5
    # Training length (reid.schedule): epochs by default; max_steps trains every run that many iterations with
    # the learning rate dropping at lr_steps; converge stops on the validation mAP (max_steps or epochs cap it).
    max_steps: int | None = None
    lr_steps: list | None = None
    converge: bool = False
    eval_every: int = 50  # steps between validation evaluations (converge, and the controls' best-step choice)
    patience: int = 3  # evaluations without a new best before a learning-rate drop, then the stop
    plateau_drops: int = 1  # learning-rate drops (by gamma) at plateaus before the run stops at the next one
    min_delta: float = 0.0  # a new best must beat the old one by more than this (mAP points)
    val_images: int = 300  # held-out images of the training identities (outside the subset) to validate on
    fixbase_epoch: int = 0
    open_layers: list | None = None
    batch_size: int = 32
    # Share of each batch drawn from the generated views (items drawn by weight, with replacement, an epoch
    # still being the images' count); None: uniform over real and generated images, so 4 views per image make
    # 80 % of every batch generated.
    generated_share: float | None = None
    # A run with generated views, once trained (converged), goes on with its best weights on the real images
    # alone: a fresh optimizer at lr * gamma and the same protocol; the validation mAP picks the better of the
    # two phases. Synthetic pre-training then real fine-tuning, for views too unlike their people to mix in.
    finish_on_real: bool = False
    batch_size_test: int = 100
    height: int = 128
    width: int = 64
    transforms: list = field(default_factory=lambda: ["random_flip"])
    num_instances: int = 4
    margin: float = 0.3
    weight_t: float = 1.0
    weight_x: float = 1.0
    label_smooth: bool = True
    dist_metric: str = "euclidean"
    normalize_feature: bool = False
    max_rank: int = 50
    device: str = "auto"
    workers: int = 0  # >0 only helps when images are large; on a small CPU the worker start-up dominates

    def check(self, where="config") -> None:
        if self.loss not in LOSSES:
            raise DataError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r} ({where})")
        if self.pretrained and not self.weights:
            raise DataError(f"pretrained=true needs weights: <local file> ({where}); torchreid's own "
                            "pretrained download is never used")
        if self.weights and not Path(self.weights).is_file():
            raise DataError("weights file not found", self.weights)
        for key in ("epochs", "batch_size", "batch_size_test", "height", "width", "max_rank"):
            if int(getattr(self, key)) < (0 if key == "epochs" else 1):
                raise DataError(f"{key} must be positive, got {getattr(self, key)} ({where})")
        for key in ("eval_every", "patience", "val_images"):
            if int(getattr(self, key)) < 1:
                raise DataError(f"{key} must be at least 1, got {getattr(self, key)} ({where})")
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise DataError(f"max_steps must be at least 1 or null, got {self.max_steps} ({where})")
        if self.generated_share is not None and not 0 < float(self.generated_share) < 1:
            raise DataError(f"generated_share must be between 0 and 1 (exclusive) or null, got "
                            f"{self.generated_share} ({where})")
        if self.generated_share is not None and self.loss == "triplet":
            raise DataError(f"generated_share draws items by weight; the triplet loss needs torchreid's identity "
                            f"sampler (RandomIdentitySampler): use loss=softmax or generated_share=null ({where})")
        if self.lr_steps and not self.max_steps:
            raise DataError(f"lr_steps needs max_steps (steps are counted against it) ({where})")
        if self.loss == "triplet" and self.batch_size < self.num_instances:
            raise DataError(f"batch_size {self.batch_size} < num_instances {self.num_instances} ({where})")


def load_weights(model: torch.nn.Module, path: str | Path) -> tuple[int, int]:
    """Load the parameters of a local state dict whose names (``module.`` stripped) and shapes match.

    Read with ``weights_only=True`` (torch >= 2.6's default); torchreid's own checkpoints also hold numpy
    scalars, which are allowed as safe globals rather than unpickling arbitrary objects.
    """
    from pcdms_aug.utils.torchfile import load, state_dict_of

    state = state_dict_of(load(path, what="weights"), path)
    own = model.state_dict()
    matched = {}
    for k, v in state.items():
        if k in own and torch.is_tensor(v) and own[k].shape == v.shape:
            matched[k] = v
    if not matched:
        raise DataError(f"no parameter of the weights file matches model {type(model).__name__}", path)
    own.update(matched)
    model.load_state_dict(own)
    return len(matched), len(state) - len(matched)


def build_datamanager(cfg: TrainConfig, root: str | Path, dataset: str, use_gpu: bool):
    """torchreid's ImageDataManager over the registered dataset ``dataset`` (e.g. a with_generated_views name)."""
    return torchreid.data.ImageDataManager(
        root=str(root), sources=dataset, height=cfg.height, width=cfg.width,
        transforms=list(cfg.transforms), use_gpu=use_gpu, batch_size_train=cfg.batch_size,
        batch_size_test=cfg.batch_size_test, workers=cfg.workers, num_instances=cfg.num_instances,
        train_sampler="RandomIdentitySampler" if cfg.loss == "triplet" else "RandomSampler")


def share_loader(cfg: TrainConfig, trainset, seed: int, pin_memory: bool = False):
    """A training loader whose batches are ``cfg.generated_share`` generated views on average (seeded draws).

    Real items (the duplicated control's repeats included) share the rest equally; torchreid's own loader
    samples every item uniformly.
    """
    from torch.utils.data import DataLoader, WeightedRandomSampler

    generated = [item[0] in trainset.generated_paths for item in trainset.train]
    n_gen = sum(generated)
    share = float(cfg.generated_share)
    weights = [share / n_gen if g else (1 - share) / (len(generated) - n_gen) for g in generated]
    sampler = WeightedRandomSampler(weights, len(weights), replacement=True,
                                    generator=torch.Generator().manual_seed(seed))
    return DataLoader(trainset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      pin_memory=pin_memory, drop_last=True)


def build_model(cfg: TrainConfig, num_classes: int, device: str):
    model = torchreid.models.build_model(name=cfg.model, num_classes=num_classes, loss=cfg.loss,
                                         pretrained=False, use_gpu=device.startswith("cuda"))
    if cfg.weights:
        n, skipped = load_weights(model, cfg.weights)
        log.info("loaded %d tensors from %s (%d not matching, e.g. the classifier)", n, cfg.weights, skipped)
    return model.to(device)


def build_engine(cfg: TrainConfig, datamanager, model, device: str):
    optimizer = torchreid.optim.build_optimizer(model, optim=cfg.optimizer, lr=cfg.lr,
                                                weight_decay=cfg.weight_decay)
    scheduler = torchreid.optim.build_lr_scheduler(optimizer, lr_scheduler=cfg.scheduler, stepsize=cfg.stepsize,
                                                   gamma=cfg.gamma, max_epoch=max(1, cfg.epochs))
    use_gpu = device.startswith("cuda")
    if cfg.loss == "triplet":
        return torchreid.engine.ImageTripletEngine(datamanager, model, optimizer, margin=cfg.margin,
                                                   weight_t=cfg.weight_t, weight_x=cfg.weight_x,
                                                   scheduler=scheduler, use_gpu=use_gpu,
                                                   label_smooth=cfg.label_smooth)
    return torchreid.engine.ImageSoftmaxEngine(datamanager, model, optimizer, scheduler=scheduler,
                                               use_gpu=use_gpu, label_smooth=cfg.label_smooth)


def train_epochs(engine, cfg: TrainConfig, on_epoch=None) -> list[float]:
    """``cfg.epochs`` epochs of the engine's own training step; returns the seconds of each epoch.

    ``on_epoch(done, total, seconds)`` is called after each epoch (the runner shows it on its progress bar).
    """
    batches = len(engine.train_loader)
    if cfg.epochs and batches == 0:
        raise DataError(f"no full training batch: fewer training images than batch_size={cfg.batch_size} "
                        "(the loader drops the last partial batch); lower batch_size")
    engine.max_epoch = cfg.epochs  # read by engine.train for its progress line
    seconds = []
    for epoch in range(cfg.epochs):
        engine.epoch = epoch
        start = time.perf_counter()
        engine.train(print_freq=max(1, batches), fixbase_epoch=cfg.fixbase_epoch, open_layers=cfg.open_layers)
        seconds.append(time.perf_counter() - start)
        if on_epoch is not None:
            on_epoch(epoch + 1, cfg.epochs, seconds[-1])
    return seconds


def _validator(cfg: TrainConfig, dm, real, split_file, seed: int, device: str):
    """``model -> mAP`` on held-out images of the training identities (see datasets.validation_items)."""
    items = validation_items(real, split_file, cfg.val_images, seed)
    loader = validation_loader(items, dm.transform_te, cfg.batch_size_test)

    def validate(model) -> float:
        feats, pids, camids = extract_features(model, loader, device)
        try:
            return rank_metrics(feats, pids, camids, feats, pids, camids, cfg.dist_metric, cfg.normalize_feature,
                                cfg.max_rank)["mAP"]
        except AssertionError:  # torchreid's ranking: no query has a match under another camera
            raise DataError(f"the {len(items)} validation images hold no identity seen by two cameras; raise "
                            "val_images", split_file) from None
    return validate, len(items)


def finish_on_real(cfg: TrainConfig, model, root, dataset: str, seed: int, device: str, split_file, validate,
                   first: dict, num_classes: int, on_progress=None) -> tuple[dict, Schedule]:
    """Train ``model`` (the mixed run's best weights) on the real images of the split alone; merge both phases.

    The second phase starts a fresh optimizer at ``lr * gamma`` (the weights are trained already: the full rate
    would first undo them) and follows the config's protocol on its own schedule. With validation, the phase with
    the higher validation mAP gives the tested weights. The returned schedule (both phases' steps and drops) is
    what a control replays; it does not replay the learning-rate reset.
    """
    seed_everything(seed)
    dm = build_datamanager(cfg, root, with_generated_views(dataset, split_file=split_file), device.startswith("cuda"))
    if dm.num_train_pids != num_classes:
        raise DataError(f"the real images hold {dm.num_train_pids} identities, the mixed run {num_classes}: views "
                        "of identities without a real image cannot be finished on real images", split_file)
    kept = copy.deepcopy(model.state_dict())
    tuned = dataclasses.replace(cfg, lr=cfg.lr * cfg.gamma)
    engine = build_engine(tuned, dm, model, device)
    schedule = own_schedule(tuned, len(dm.train_loader))
    done = train_steps(engine, tuned, schedule, validate, early_stop=cfg.converge, on_progress=on_progress)
    n1 = first["steps"]
    second_best = validate is None or done["val_mAP"] > first["val_mAP"]
    if not second_best:
        model.load_state_dict(kept)
    merged = dict(first, steps=n1 + done["steps"], step_cap=n1 + done["step_cap"],
                  epochs_run=first["epochs_run"] + done["epochs_run"],
                  lr_milestones=first["lr_milestones"] + [n1 + m for m in done["lr_milestones"]],
                  val_curve=first["val_curve"] + [[n1 + s, v] for s, v in done["val_curve"]],
                  train_s=first["train_s"] + done["train_s"], finish_steps=done["steps"],
                  finish_val_mAP=done["val_mAP"], finish_chosen=bool(second_best))
    if second_best:
        merged.update(best_step=n1 + done["best_step"], val_mAP=done["val_mAP"])
    return merged, Schedule(merged["steps"], list(merged["lr_milestones"]))


def train_and_evaluate(cfg: TrainConfig, root: str | Path, dataset: str, seed: int, device: str = "cpu",
                       generated_dir: str | Path | None = None, kept_only: bool = False,
                       views_per_identity: int | None = None, split_file: str | Path | None = None,
                       schedule: Schedule | None = None, repeat_to: int | None = None,
                       views_per_image: int | None = None, on_progress=None) -> dict:
    """Train one model on (split of) the dataset plus generated views and evaluate it; a flat result dict.

    ``schedule`` replays another run's steps and learning-rate drops (a control); otherwise the run follows
    its own schedule under the config's protocol. ``repeat_to`` repeats the real images to that many items.
    With ``converge`` the validation mAP chooses the tested weights; only a run on its own schedule stops early.
    """
    start = time.perf_counter()
    name = with_generated_views(dataset, generated_dir, views_per_identity=views_per_identity, kept_only=kept_only,
                                split_file=split_file, repeat_to=repeat_to, views_per_image=views_per_image)
    seed_everything(seed)
    dm = build_datamanager(cfg, root, name, device.startswith("cuda"))
    trainset = dm.train_loader.dataset
    if cfg.generated_share is not None and trainset.num_generated:
        dm.train_loader = share_loader(cfg, trainset, seed, pin_memory=dm.use_gpu)
    validate, n_val = (None, 0)
    if cfg.converge:
        validate, n_val = _validator(cfg, dm, trainset.all_real, split_file, seed, device)
    # Seeded again so that a run's initial weights and batch order depend on the seed only, not on the data.
    seed_everything(seed)
    model = build_model(cfg, dm.num_train_pids, device)
    engine = build_engine(cfg, dm, model, device)
    own = schedule is None
    schedule = own_schedule(cfg, len(dm.train_loader)) if own else Schedule.from_dict(schedule.to_dict())
    trained = train_steps(engine, cfg, schedule, validate, early_stop=own and cfg.converge, on_progress=on_progress)
    if cfg.finish_on_real and trainset.num_generated:
        trained, schedule = finish_on_real(cfg, model, root, dataset, seed, device, split_file, validate, trained,
                                           dm.num_train_pids, on_progress)
    t_eval = time.perf_counter()
    res = evaluate(model, dm, device=device, dist_metric=cfg.dist_metric,
                   normalize_feature=cfg.normalize_feature, max_rank=cfg.max_rank)
    res.update(trained)
    res.update({
        "protocol": protocol(cfg) if own else f"equal_steps:{protocol(cfg)}", "schedule": schedule.to_dict(),
        "num_train_real": int(trainset.num_real_train), "num_train_generated": int(trainset.num_generated),
        "num_train_repeated": int(trainset.num_repeated), "num_val": n_val,
        "num_train_images": len(trainset.train), "num_train_ids": int(dm.num_train_pids),
        "batches_per_epoch": len(dm.train_loader), "epochs": trained["steps"] / len(dm.train_loader),
        "sec_per_step": trained["train_s"] / max(1, trained["steps"]),
        "eval_s": time.perf_counter() - t_eval, "wall_s": time.perf_counter() - start, "device": device,
    })
    return res
