"""Inception-v3 pool features (2048-d) for FID, built offline from a local weight file.

Two weight files are understood, told apart by their classifier (1000 ImageNet classes or 1008):

- torchvision's ImageNet weights (``inception_v3_google-0cc3c7bd.pth``): the network the upstream PCDMs / PIDM /
  GFLA evaluation scripts use for FID. Their input handling is reproduced: images in [0, 1], bilinear resize to
  299x299, then torchvision's ``transform_input`` affine applied to those [0, 1] values (upstream does exactly
  this), Mixed_7c, global average pool.
- the TF-ported FID network of pytorch-fid (``pt_inception-2015-12-05-6726825d.pth``): the standard FID of the
  GAN literature, built from pytorch-fid's own blocks; input scaled to [-1, 1] after the bilinear resize, as
  pytorch-fid's ``InceptionV3`` does. torch-fidelity (used by torchmetrics) resizes differently, so its FIDs
  differ slightly from these.

Nothing is downloaded: the network is built with random layers and then overwritten from the file (pytorch-fid's
``InceptionV3`` would fetch its weights itself, so only its blocks are used).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv_inception

from pcdms_aug.utils.errors import DataError
from pcdms_aug.metrics.weights import read_state, resolve_weight_path

HINT = ("Inception-v3 weights: torchvision's ImageNet file inception_v3_google-0cc3c7bd.pth "
        "(torchvision.models.Inception_V3_Weights.IMAGENET1K_V1; the FID network of upstream PCDMs/PIDM/GFLA) "
        "or pytorch-fid's pt_inception-2015-12-05-6726825d.pth (the standard TF FID network, pytorch_fid."
        "inception.FID_WEIGHTS_URL: github.com/mseitzer/pytorch-fid/releases/download/fid_weights/); on a machine with network `torchvision.models.inception_v3(weights='IMAGENET1K_V1')` "
        "leaves the first in ~/.cache/torch/hub/checkpoints/")
LABELS = {
    "torchvision": "Inception-v3 torchvision ImageNet weights, upstream PCDMs/GFLA input handling",
    "pytorch-fid": "Inception-v3 TF 2015-12-05 FID weights, pytorch-fid input handling",
}


def _fid_network() -> tv_inception.Inception3:
    """pytorch-fid's FID Inception: torchvision's Inception-v3 with pytorch-fid's TF-ported blocks (average pools
    that ignore the padding, a max pool in the last block), assembled as ``pytorch_fid.inception.fid_inception_v3``
    does, without its download (the weights come from the configured file)."""
    from pytorch_fid import inception as pfid

    net = tv_inception.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = pfid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfid.FIDInceptionA(288, pool_features=64)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        setattr(net, name, pfid.FIDInceptionC(768, channels_7x7=c7))
    net.Mixed_7b = pfid.FIDInceptionE_1(1280)
    net.Mixed_7c = pfid.FIDInceptionE_2(2048)
    return net


_TRUNK = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
          "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
          "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")


class InceptionPool(nn.Module):
    """``forward(x)`` -> (B, 2048) pool features of images (B, 3, H, W) in [0, 1]."""

    def __init__(self, variant: str = "torchvision"):
        super().__init__()
        if variant not in LABELS:
            raise ValueError(f"unknown Inception variant {variant!r}; one of {', '.join(LABELS)}")
        self.variant = variant
        # init_weights=False: the default truncated-normal init is slow and is overwritten anyway
        self.net = (tv_inception.Inception3(num_classes=1000, aux_logits=True, init_weights=False)
                    if variant == "torchvision" else _fid_network())
        self.requires_grad_(False)
        self.eval()

    @property
    def label(self) -> str:
        return LABELS[self.variant]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        if self.variant == "torchvision":
            # upstream applies torchvision's transform_input to [0, 1] images (not ImageNet-normalised ones)
            std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            x = x * (std / 0.5) + (mean - 0.5) / 0.5
        else:
            x = 2 * x - 1
        for name in _TRUNK:
            x = getattr(self.net, name)(x)
        return x.mean(dim=(2, 3))


def variant_of(state: dict) -> str:
    fc = state.get("fc.weight")
    if fc is None:
        raise DataError("not an Inception-v3 state dict (no fc.weight)")
    if fc.shape[0] == 1000:
        return "torchvision"
    if fc.shape[0] == 1008:
        return "pytorch-fid"
    raise DataError(f"Inception-v3 classifier with {fc.shape[0]} classes: expected 1000 (torchvision) "
                    "or 1008 (pytorch-fid)")


def load_inception(weights) -> InceptionPool:
    """The FID feature network from a local file; DataError naming the file and where to get it otherwise."""
    path = resolve_weight_path(weights, "fid.inception_weights", HINT)
    state = read_state(path, "the Inception-v3 weights")
    try:
        variant = variant_of(state)
    except DataError as e:
        raise DataError(e.reason, path) from None
    model = InceptionPool(variant)
    try:
        missing, _ = model.net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise DataError(f"Inception-v3 weights do not fit the {variant} network: {str(e).splitlines()[-1].strip()}",
                        path) from None
    needed = [k for k in missing if not k.startswith(("fc.", "AuxLogits."))]
    if needed:
        raise DataError(f"Inception-v3 weights lack {len(needed)} tensor(s) of the {variant} network, e.g. "
                        f"{', '.join(needed[:3])}", path)
    return model
