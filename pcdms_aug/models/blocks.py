"""Small trainable modules of PCDMs: the prior transformer, the pose encoder and the image-token projection."""
from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class PriorTransformer(nn.Module):
    """Stage 1: six tokens (source pose, target pose, source embedding, time, noisy target embedding, learned
    ``prd``), bidirectional attention, the ``prd`` token projected back to the embedding = predicted clean
    target embedding."""

    def __init__(self, embed_dim: int = 1024, pose_dim: int = 54, width: int = 2048, layers: int = 20,
                 heads: int = 32, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.config = dict(embed_dim=embed_dim, pose_dim=pose_dim, width=width, layers=layers, heads=heads,
                           mlp_ratio=mlp_ratio, dropout=dropout)
        self.src_pose = nn.Sequential(nn.Linear(pose_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.tgt_pose = nn.Sequential(nn.Linear(pose_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.src_embed = nn.Linear(embed_dim, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.noisy = nn.Linear(embed_dim, width)
        self.prd = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, 6, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, embed_dim)

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, src_embed: torch.Tensor, src_pose: torch.Tensor,
                tgt_pose: torch.Tensor) -> torch.Tensor:
        w = self.pos.shape[-1]
        tokens = torch.stack([self.src_pose(src_pose), self.tgt_pose(tgt_pose), self.src_embed(src_embed),
                              self.time(timestep_embedding(t, w).to(noisy.dtype)), self.noisy(noisy)], dim=1)
        x = torch.cat([tokens, self.prd.expand(noisy.shape[0], -1, -1)], dim=1) + self.pos
        x = self.blocks(x)
        return self.out(self.norm(x[:, -1]))


class PoseEncoder(nn.Module):
    """ControlNet's conditioning-embedding shape: 3 -> 16 -> 32 -> 96 -> 256 with three stride-2 steps and
    SiLU, then a zero-initialised 1x1 to the UNet's first width, so training starts from the unposed UNet."""

    def __init__(self, out_channels: int = 320, channels: tuple = (16, 32, 96, 256), in_channels: int = 3,
                 downsample: int = 3):
        super().__init__()
        self.config = dict(out_channels=out_channels, channels=list(channels), in_channels=in_channels,
                           downsample=downsample)
        layers = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()]
        for i in range(len(channels) - 1):
            stride = 2 if i < downsample else 1
            layers += [nn.Conv2d(channels[i], channels[i], 3, padding=1), nn.SiLU(),
                       nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, stride=stride), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels[-1], out_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, pose_image: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(pose_image))


class ImageProjection(nn.Module):
    """Local image tokens into the UNet's cross-attention space: in -> hidden, GELU, LayerNorm, -> out."""

    def __init__(self, in_dim: int = 1536, hidden: int = 768, out_dim: int = 1024):
        super().__init__()
        self.config = dict(in_dim=in_dim, hidden=hidden, out_dim=out_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden),
                                 nn.Linear(hidden, out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)
