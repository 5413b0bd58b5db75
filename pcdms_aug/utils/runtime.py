"""Device, dtype, seeding and distributed rank: decided once, here."""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Runtime:
    device: str
    dtype: "object"  # torch.dtype of the frozen modules and activations
    rank: int
    world_size: int
    local_rank: int
    group: bool = False  # a process group is up (torchrun: also for one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """DDP and collectives in use: several processes, or one launched by torchrun (the multi-GPU path,
        NCCL included, then runs on one GPU too)."""
        return self.world_size > 1 or self.group


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


# The one dtype table: the names commands, configs and the pipeline take, and torch's type for each.
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DTYPE_CHOICES = ("auto", *DTYPES)
# What generation uses unless told otherwise: bf16 on a GPU that has it, else fp16 on a GPU, fp32 on a CPU.
DEFAULT_DTYPE = "auto"


def as_dtype(name):
    """The torch dtype of a name of :data:`DTYPES` (torch's own names, ``"float16"``, are taken too) or of a
    torch dtype."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    full = DTYPES.get(name, name)
    if full not in DTYPES.values():
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, full)


def pick_dtype(name: str | None, device: str):
    """:func:`as_dtype`, with ``"auto"`` (and None) resolved for ``device`` as :data:`DEFAULT_DTYPE` says."""
    import torch

    if name in (None, "auto"):
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return as_dtype(name)


def add_dtype_argument(parser, default: str = DEFAULT_DTYPE) -> None:
    """``--dtype`` of every generating command (one help text, one set of choices)."""
    parser.add_argument("--dtype", default=default, choices=DTYPE_CHOICES,
                        help="weights and activations: auto = bf16 on a GPU that has it, else fp16 on GPU, fp32 on "
                             f"CPU (default: {default})")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "MASTER_ADDR" in os.environ


def init_runtime(device: str | None = None, dtype: str | None = None, seed: int | None = None) -> Runtime:
    """Set up the process: join the process group under torchrun (gloo on CPU, nccl on GPU), with one
    process too, so `torchrun --nproc_per_node 1` runs the very path of eight GPUs."""
    import torch
    import torch.distributed as dist

    rank, world, local = dist_env()
    dev = pick_device(device)
    group = world > 1 or launched_by_torchrun()
    if group:
        if dev.startswith("cuda"):
            torch.cuda.set_device(local)
            dev = f"cuda:{local}"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo")
    if seed is not None:
        seed_everything(seed)
    return Runtime(dev, pick_dtype(dtype, dev), rank, world, local, group)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def item_seed(seed: int, *keys: str) -> int:
    """A seed for one item (a pair, a view) from the run seed and the item's names: an item's noise does not
    depend on the batch it was in, the order, an interruption or the number of ranks."""
    digest = hashlib.sha256("\x1f".join([str(seed), *keys]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
