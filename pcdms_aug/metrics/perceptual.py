"""LPIPS (Zhang et al. 2018, v0.1) with the AlexNet backbone, built offline from two local weight files.

The ``lpips`` package and torchmetrics fetch AlexNet's ImageNet weights from the network when built; here the
backbone is torchvision's AlexNet layout with randomly initialised layers that are then overwritten from a local
state dict, so nothing is ever downloaded. The five 1x1 "linear" heads come from the LPIPS v0.1 ``alex.pth``
(a copy ships inside torchmetrics; ``linear_weights: torchmetrics`` selects it).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import DataError

CHANNELS = (64, 192, 384, 256, 256)
TAPS = (1, 4, 7, 9, 11)  # indices in AlexNet.features of relu1..relu5, the layers LPIPS compares
# LPIPS' fixed input scaling (its ScalingLayer), for inputs in [-1, 1]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

ALEXNET_HINT = ("torchvision's AlexNet ImageNet weights, alexnet-owt-7be5be79.pth "
                "(torchvision.models.AlexNet_Weights.IMAGENET1K_V1; on a machine with network, "
                "`python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\"` "
                "leaves it in ~/.cache/torch/hub/checkpoints/)")
LINEAR_HINT = ("the LPIPS v0.1 linear layers alex.pth (in the lpips package at lpips/weights/v0.1/alex.pth; "
               "a copy ships in torchmetrics at torchmetrics/functional/image/lpips_models/alex.pth, which "
               "`linear_weights: torchmetrics` selects)")


def torchmetrics_linear_weights() -> Path | None:
    """The LPIPS v0.1 AlexNet heads that ship inside the installed torchmetrics, if they are there."""
    try:
        import torchmetrics
    except ImportError:
        return None
    p = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / "alex.pth"
    return p if p.is_file() else None


def _alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional trunk up to relu5, layer indices as torchvision numbers them."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
    )


class LPIPSAlex(nn.Module):
    """``forward(a, b)`` -> (B,) distances of image batches (B, 3, H, W) in [-1, 1]; 0 for identical images."""

    def __init__(self):
        super().__init__()
        self.features = _alexnet_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    @staticmethod
    def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        # each spatial feature vector scaled to unit length across channels, as LPIPS does
        return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self._taps((a - self.shift) / self.scale)
        fb = self._taps((b - self.shift) / self.scale)
        total = 0
        for lin, x, y in zip(self.lins, fa, fb):
            total = total + lin((self._unit(x) - self._unit(y)) ** 2).mean(dim=(2, 3))
        return total[:, 0]

    # ------------------------------------------------------------------------------------------ loading
    def load_alexnet(self, state: dict, where="alexnet weights") -> None:
        """Take ``features.*`` from a torchvision AlexNet state dict (``module.`` prefixes allowed)."""
        state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
        own = self.features.state_dict()
        picked, bad = {}, []
        for k, v in own.items():
            src = state.get(f"features.{k}")
            if src is None or tuple(src.shape) != tuple(v.shape):
                bad.append(f"features.{k}" + ("" if src is None else f" {tuple(src.shape)}!={tuple(v.shape)}"))
            else:
                picked[k] = src
        if bad:
            raise DataError(f"not a torchvision AlexNet state dict: missing or mis-shaped {', '.join(bad[:4])}"
                            + (" ..." if len(bad) > 4 else ""), where)
        self.features.load_state_dict(picked)

    def load_linear(self, state: dict, where="linear weights") -> None:
        """Take the five heads from an LPIPS ``alex.pth`` (``lin<i>.model.1.weight``, shape (1, C, 1, 1))."""
        for i, (lin, c) in enumerate(zip(self.lins, CHANNELS)):
            w = state.get(f"lin{i}.model.1.weight", state.get(f"lin{i}.model.0.weight"))
            if w is None or tuple(w.shape) != (1, c, 1, 1):
                raise DataError(f"not an LPIPS AlexNet linear-layer file: lin{i}.model.1.weight "
                                f"{'missing' if w is None else tuple(w.shape)} (expected (1, {c}, 1, 1))", where)
            lin.weight.data.copy_(w)


def _read_state(path: Path, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  unpickling errors come in many types
        raise DataError(f"cannot read {what} ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                        path) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"{what}: the file holds no state dict", path)
    return state


def resolve_weight_path(value, key: str, hint: str, special: dict | None = None) -> Path:
    """A configured weight file as a Path, or DataError(reason) saying what file is needed and where to get it."""
    if special and value in special:
        p = special[value]()
        if p is None:
            raise DataError(f"{key}={value!r} but no such file is installed; give a path to {hint}")
        return p
    if not value:
        raise DataError(f"{key} is not set; it must name a local copy of {hint}")
    p = Path(value).expanduser()
    if not p.is_file():
        raise DataError(f"{key}: file not found; it must be a local copy of {hint}", p)
    return p


def load_lpips(alexnet_weights, linear_weights) -> LPIPSAlex:
    """LPIPS-Alex from two local files; DataError (naming the file and where to get it) where either is absent."""
    a = resolve_weight_path(alexnet_weights, "lpips.alexnet_weights", ALEXNET_HINT)
    b = resolve_weight_path(linear_weights, "lpips.linear_weights", LINEAR_HINT,
                            {"torchmetrics": torchmetrics_linear_weights})
    net = LPIPSAlex()
    net.load_alexnet(_read_state(a, "AlexNet weights"), a)
    net.load_linear(_read_state(b, "LPIPS linear weights"), b)
    return net
