"""LPIPS (Zhang et al. 2018, v0.1) with the AlexNet backbone: the ``lpips`` package's network, filled from two
local weight files.

``lpips.LPIPS(net='alex')`` fetches AlexNet's ImageNet weights through torchvision when built. Here it is built
with ``pretrained=False, pnet_rand=True`` (random layers, nothing fetched or read) and both parts are then
overwritten from the configured files: the backbone from a torchvision AlexNet state dict, the five 1x1 heads from
the LPIPS v0.1 ``alex.pth`` (the lpips package ships it: ``linear_weights: lpips`` selects that copy,
``torchmetrics`` the byte-identical one inside torchmetrics).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from pcdms_aug.utils.errors import DataError
from pcdms_aug.metrics.weights import read_state, resolve_weight_path

ALEXNET_HINT = ("torchvision's AlexNet ImageNet weights, alexnet-owt-7be5be79.pth "
                "(torchvision.models.AlexNet_Weights.IMAGENET1K_V1; on a machine with network, "
                "`python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\"` "
                "leaves it in ~/.cache/torch/hub/checkpoints/)")
LINEAR_HINT = ("the LPIPS v0.1 linear layers alex.pth (in the lpips package at lpips/weights/v0.1/alex.pth, "
               "which `linear_weights: lpips` selects; torchmetrics ships a copy: `linear_weights: torchmetrics`)")


def _installed_heads(package: str, relative: str):
    def find() -> Path | None:
        try:
            module = __import__(package)
        except ImportError:
            return None
        p = Path(module.__file__).parent / relative
        return p if p.is_file() else None
    return find


INSTALLED = {"lpips": _installed_heads("lpips", "weights/v0.1/alex.pth"),
             "torchmetrics": _installed_heads("torchmetrics", "functional/image/lpips_models/alex.pth")}


def _load_backbone(model, state: dict, where: Path) -> None:
    """``features.<i>.*`` of a torchvision AlexNet state dict into lpips' ``net.slice<n>.<i>.*``."""
    picked, bad = {}, []
    for k, v in model.net.state_dict().items():
        src_key = "features." + k.split(".", 1)[1]  # lpips keeps torchvision's layer index i in slice<n>.<i>
        src = state.get(src_key)
        if src is None or tuple(src.shape) != tuple(v.shape):
            bad.append(src_key + ("" if src is None else f" {tuple(src.shape)}!={tuple(v.shape)}"))
        else:
            picked[k] = src
    if bad:
        raise DataError(f"not a torchvision AlexNet state dict: missing or mis-shaped {', '.join(bad[:4])}"
                        + (" ..." if len(bad) > 4 else ""), where)
    model.net.load_state_dict(picked)


def _load_heads(model, state: dict, where: Path) -> None:
    """The five heads of an LPIPS ``alex.pth`` (``lin<i>.model.1.weight``, shape (1, C, 1, 1))."""
    for i, lin in enumerate(model.lins):
        conv = lin.model[-1]
        w = state.get(f"lin{i}.model.1.weight", state.get(f"lin{i}.model.0.weight"))
        if w is None or tuple(w.shape) != tuple(conv.weight.shape):
            raise DataError(f"not an LPIPS AlexNet linear-layer file: lin{i}.model.1.weight "
                            f"{'missing' if w is None else tuple(w.shape)} (expected {tuple(conv.weight.shape)})",
                            where)
        conv.weight.data.copy_(w)


def load_lpips(alexnet_weights, linear_weights):
    """``lpips.LPIPS`` (AlexNet) from two local files; DataError naming the key, the file and where to get it
    where either is absent. Call it as the package does: ``net(a, b)`` -> (B, 1, 1, 1) for images in [-1, 1]."""
    a = resolve_weight_path(alexnet_weights, "lpips.alexnet_weights", ALEXNET_HINT)
    b = resolve_weight_path(linear_weights, "lpips.linear_weights", LINEAR_HINT, INSTALLED)
    alex_state, head_state = read_state(a, "the AlexNet weights"), read_state(b, "the LPIPS linear weights")
    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated pretrained=False: noise, not news
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
    _load_backbone(model, alex_state, a)
    _load_heads(model, head_state, b)
    return model.eval().requires_grad_(False)
