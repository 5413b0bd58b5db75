"""Small trainable modules of PCDMs: the prior transformer, the pose encoder, the image-token projection, and the
patch discriminator of stage 3's optional adversarial term."""
from __future__ import annotations

import torch
from torch import nn

from pcdms_aug.data.pose import NUM_JOINTS, VECTOR_SENTINEL


class PoseMLP(nn.Module):
    """A pose vector to one token: Linear, GELU, LayerNorm, Linear, LayerNorm. The Dropout slots (p = 0) keep
    the Sequential's indices those of the official stage-1 checkpoint, so its keys load by name."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.LayerNorm(hidden),
                                 nn.Linear(hidden, out_dim), nn.Dropout(0.0), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PriorTransformer(nn.Module):
    """Stage 1: six tokens (source pose, target pose, source embedding, time, noisy target embedding, learned
    ``prd``), bidirectional attention, the ``prd`` token projected back to the embedding = predicted clean
    target embedding.

    The layout is that of the Kandinsky-2.2 prior (diffusers ``BasicTransformerBlock`` with biased attention,
    GELU MLP) as the official PCDMs stage 1 extends it; the attribute names follow that checkpoint too
    (``pose_encoder``, ``embedding_proj``, ``transformer_blocks``, ...), so importing it is a key-prefix strip
    plus the pose input layer (ours reads 54 numbers: 36 coordinates and 18 visibility flags).

    ``pose_dim=36`` is the official checkpoint's pose input (``pcdms-aug import-official``): the 36 coordinates
    alone, a missing joint at ``pose_missing`` (DWPose writes -1) instead of our sentinel, a dropped pose all
    zeros as ours; it still takes our 54-number vectors and converts them, so the stage code is the same.
    """

    def __init__(self, embed_dim: int = 1024, pose_dim: int = 54, width: int = 2048, layers: int = 20,
                 heads: int = 32, pose_hidden: int = 512, dropout: float = 0.0, pose_missing: float = -1.0):
        from diffusers.models.attention import BasicTransformerBlock
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        super().__init__()
        if width % heads:
            raise ValueError(f"prior width {width} is not a multiple of its {heads} heads")
        self.config = dict(embed_dim=embed_dim, pose_dim=pose_dim, width=width, layers=layers, heads=heads,
                           pose_hidden=pose_hidden, dropout=dropout, pose_missing=pose_missing)
        self.pose_dim, self.pose_missing = pose_dim, float(pose_missing)
        self.pose_encoder = PoseMLP(pose_dim, pose_hidden, embed_dim)  # source pose
        self.pose_encoder1 = PoseMLP(pose_dim, pose_hidden, embed_dim)  # target pose
        self.encoder_hidden_states_proj = nn.Linear(embed_dim, width)
        self.encoder_hidden_states_proj1 = nn.Linear(embed_dim, width)
        self.embedding_proj = nn.Linear(embed_dim, width)  # source image embedding
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(width, width)
        self.proj_in = nn.Linear(embed_dim, width)  # noisy target embedding
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, width))
        self.positional_embedding = nn.Parameter(torch.zeros(1, 6, width))
        nn.init.normal_(self.positional_embedding, std=0.02)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(width, heads, width // heads, dropout=dropout, activation_fn="gelu",
                                  attention_bias=True) for _ in range(layers)])
        self.norm_out = nn.LayerNorm(width)
        self.proj_to_clip_embeddings = nn.Linear(width, embed_dim)
        self.gradient_checkpointing = False

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block's activations in the backward pass (as diffusers' models do)."""
        self.gradient_checkpointing = True

    def _pose_input(self, pose: torch.Tensor) -> torch.Tensor:
        if pose.shape[-1] == self.pose_dim or not (self.pose_dim == 2 * NUM_JOINTS
                                                   and pose.shape[-1] == 3 * NUM_JOINTS):
            return pose
        xy = pose[..., : 2 * NUM_JOINTS]
        return torch.where(xy == VECTOR_SENTINEL, torch.full_like(xy, self.pose_missing), xy)

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, src_embed: torch.Tensor, src_pose: torch.Tensor,
                tgt_pose: torch.Tensor) -> torch.Tensor:
        b = noisy.shape[0]
        src_pose, tgt_pose = self._pose_input(src_pose), self._pose_input(tgt_pose)
        time = self.time_embedding(self.time_proj(t.reshape(-1).expand(b)).to(noisy.dtype))
        tokens = torch.stack([
            self.encoder_hidden_states_proj(self.pose_encoder(src_pose)),
            self.encoder_hidden_states_proj1(self.pose_encoder1(tgt_pose)),
            self.embedding_proj(src_embed),
            time,
            self.proj_in(noisy),
        ], dim=1)
        x = torch.cat([tokens, self.prd_embedding.to(tokens.dtype).expand(b, -1, -1)], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        for block in self.transformer_blocks:  # no mask: every token sees every other (bidirectional)
            if self.gradient_checkpointing and torch.is_grad_enabled() and self.training:
                from torch.utils.checkpoint import checkpoint
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.proj_to_clip_embeddings(self.norm_out(x[:, -1]))


class PoseEncoder(nn.Module):
    """ControlNet's conditioning-embedding shape: 3 -> 16 -> 32 -> 96 -> 256 with three stride-2 steps and
    SiLU, then a zero-initialised convolution to the UNet's first width, so training starts from the unposed
    UNet. ``out_kernel``: 1 (docs/design.md's 1x1; the tiny stage) or 3 (diffusers' ``ControlNetConditioningEmbedding``,
    which the official stage 2 uses as ``pose_proj``; the paper config). Key map from that module:
    ``conv_in`` -> ``body.0``, ``blocks.{2i}`` -> ``body.{4i+2}``, ``blocks.{2i+1}`` -> ``body.{4i+4}``,
    ``conv_out`` -> ``out``. ``signed_input``: the pose image is taken to [-1, 1] first, as the official stage 2
    normalised it (ours are [0, 1]); imported checkpoints set it."""

    def __init__(self, out_channels: int = 320, channels: tuple = (16, 32, 96, 256), in_channels: int = 3,
                 downsample: int = 3, out_kernel: int = 1, signed_input: bool = False):
        super().__init__()
        self.config = dict(out_channels=out_channels, channels=list(channels), in_channels=in_channels,
                           downsample=downsample, out_kernel=out_kernel, signed_input=signed_input)
        self.signed_input = bool(signed_input)
        layers = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()]
        for i in range(len(channels) - 1):
            stride = 2 if i < downsample else 1
            layers += [nn.Conv2d(channels[i], channels[i], 3, padding=1), nn.SiLU(),
                       nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, stride=stride), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels[-1], out_channels, out_kernel, padding=out_kernel // 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, pose_image: torch.Tensor) -> torch.Tensor:
        if self.signed_input:
            pose_image = pose_image * 2 - 1
        return self.out(self.body(pose_image))


class ImageProjection(nn.Module):
    """Local image tokens into the UNet's cross-attention space: in -> hidden, GELU, LayerNorm, -> out.
    Key map from the official ``image_proj_model_p`` (which has Dropout slots): ``net.3`` -> ``net.2``,
    ``net.4`` -> ``net.3``."""

    def __init__(self, in_dim: int = 1536, hidden: int = 768, out_dim: int = 1024):
        super().__init__()
        self.config = dict(in_dim=in_dim, hidden=hidden, out_dim=out_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden),
                                 nn.Linear(hidden, out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN without normalisation: strided 4x4 convolutions with LeakyReLU to one real/fake logit
    per patch (about 22 pixels square with three layers). No BatchNorm, so the logits of a sample do not depend
    on its batch (DDP shards, gradient accumulation) and the module has no running state."""

    def __init__(self, channels=(32, 64, 128), in_channels: int = 3):
        super().__init__()
        self.config = dict(channels=list(channels), in_channels=in_channels)
        layers, c = [], in_channels
        for i, width in enumerate(channels):
            layers += [nn.Conv2d(c, width, 4, stride=2 if i < len(channels) - 1 else 1, padding=1),
                       nn.LeakyReLU(0.2)]
            c = width
        layers.append(nn.Conv2d(c, 1, 4, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
