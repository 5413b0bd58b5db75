"""The preview grid of a training run: source / target pose / sample (EMA weights) / ground truth rows."""
from __future__ import annotations

from pathlib import Path

import torch

from pcdms_aug.training.ema import ema_weights
from pcdms_aug.training.data import to_device


def save_preview(stage, ema, params, dataset, path: Path, steps: int, seed: int, device: str) -> None:
    """The stage's preview of a fixed few pairs (the dataset's first four), sampled with ``steps`` steps from a
    generator seeded by ``seed``; nothing is written for a stage without preview rows."""
    preview = getattr(stage, "preview", None)
    if preview is None:
        return
    from pcdms_aug.utils.io import atomic_save_image
    from pcdms_aug.data.viz import contact_sheet

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
