"""Features of a trained torchreid model, for an FID that needs no ImageNet weights (labelled as such).

The model is built by torchreid with ``pretrained=False`` (nothing downloaded) and filled from a local checkpoint:
a torchreid ``model.pth.tar-N`` (``{"state_dict": ...}``) or a bare state dict. Every tensor except the classifier
must be in the file: a partial match would silently measure with a half-random network.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pcdms_aug.utils.errors import DataError
from pcdms_aug.metrics.weights import read_state, resolve_weight_path

HINT = ("a torchreid checkpoint of that model (torchreid's engine writes model.pth.tar-<epoch> under its save_dir; "
        "any state dict of the same architecture works)")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ReidFeatures(nn.Module):
    """``forward(x)`` -> (B, D) embeddings of images (B, 3, H, W) in [0, 1], resized to the model's input size."""

    def __init__(self, model: nn.Module, name: str, weights: Path, size: tuple[int, int]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = tuple(size)
        self.label = f"re-ID features: {name} @ {weights}"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        out = self.model((x - self.mean) / self.std)
        return out[0] if isinstance(out, (tuple, list)) else out


def load_reid_features(name: str | None, weights, size: tuple[int, int]) -> ReidFeatures:
    if not name:
        raise DataError("fid_reid.model is not set; name a torchreid architecture (e.g. osnet_x0_25)")
    path = resolve_weight_path(weights, "fid_reid.weights", f"{HINT} for {name}")
    import torchreid

    try:
        model = torchreid.models.build_model(name=name, num_classes=1, loss="softmax", pretrained=False,
                                             use_gpu=False)
    except KeyError:
        factory = getattr(torchreid.models, "__model_factory", {})  # the list of names, in every torchreid line
        raise DataError(f"fid_reid.model: unknown torchreid model {name!r}; one of "
                        f"{', '.join(sorted(factory))}") from None
    state = read_state(path, "the re-ID checkpoint")
    own = model.state_dict()
    missing = [k for k in own if not k.startswith("classifier.")
               and (k not in state or tuple(state[k].shape) != tuple(own[k].shape))]
    if missing:
        raise DataError(f"the checkpoint does not fit torchreid model {name!r}: {len(missing)} of its "
                        f"{len(own)} tensors missing or mis-shaped (e.g. {', '.join(missing[:3])})", path)
    model.load_state_dict({k: (v if k.startswith("classifier.") else state[k]) for k, v in own.items()})
    return ReidFeatures(model, name, path, size)
