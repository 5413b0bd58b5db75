"""The identity-consistency filter's re-ID model when none is at hand: a small one trained on the real images.

`pcdms-aug generate --filter-model train` finds :func:`train_filter_model` through the ``pcdms_aug.filter_trainers``
entry point (setup.cfg), so pcdms_aug needs no import of this package.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from pcdms_aug.data.layouts import open_dataset
from pcdms_aug.data.splits import load_split
from pcdms_aug.data.synthetic import META
from pcdms_aug.utils.io import atomic_path
from pcdms_aug.utils.runtime import seed_everything

from .datasets import ANY_LAYOUT, REAL, SYNTHETIC, with_generated_views
from .training import TrainConfig, build_datamanager, build_engine, build_model, train_epochs


def train_filter_model(dataset: str | Path, out: str | Path, *, split: str | Path | None = None,
                       arch: str = "osnet_x0_25", epochs: int = 10, size: tuple = (128, 64),
                       batch_size: int = 32, lr: float = 0.003, seed: int = 0, device: str = "cpu") -> Path:
    """Train a small re-ID model on the real training images (of ``split``) and save a torchreid checkpoint.

    Softmax loss, random initialisation, ``epochs`` epochs with torchreid's own engine (:mod:`reid.training`).
    Returns the checkpoint path.
    """
    out = Path(out)
    data = open_dataset(dataset)
    if data.layout == "market1501":
        base = SYNTHETIC if (data.root / META).is_file() else REAL
    else:
        base = ANY_LAYOUT
    n_images = len(load_split(split).files) if split else sum(it.pid >= 0 for it in data.train)
    # torchreid drops the last partial batch: a tiny subset still needs one whole batch
    cfg = TrainConfig(model=arch, epochs=int(epochs), height=int(size[0]), width=int(size[1]),
                      batch_size=max(1, min(int(batch_size), n_images)), lr=float(lr),
                      stepsize=max(1, int(epochs) * 3 // 4), device=device)
    cfg.check("filter training")
    name = with_generated_views(base, split_file=split)
    seed_everything(seed)
    # torchreid prints dataset summaries and loss lines; they are not this command's output.
    with contextlib.redirect_stdout(io.StringIO()):
        dm = build_datamanager(cfg, str(data.root), name, device.startswith("cuda"))
        seed_everything(seed)
        model = build_model(cfg, dm.num_train_pids, device)
        engine = build_engine(cfg, dm, model, device)
        train_epochs(engine, cfg)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state, "epoch": int(epochs), "arch": arch}, tmp)
    return out
