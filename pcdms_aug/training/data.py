"""What a training run reads and in which order: the pair dataset of a run config, the micro-batches of each
rank (numbered ``rank * grad_accum + k``, so any world size sees the same global batches) and the generator
each micro-batch draws its noise from."""
from __future__ import annotations

from pathlib import Path

import torch

from pcdms_aug.utils.errors import DataError


def make_dataset(cfg):
    """The pairs a run config's stage trains on (``cfg``: :class:`pcdms_aug.training.config.RunConfig`)."""
    from pcdms_aug.data.pairs import PairDataset

    if not cfg.data.root or not cfg.data.annotations:
        raise DataError("data.root and data.annotations must be set (e.g. data.root=DATA "
                        "data.annotations=DATA/market-annotation-train.csv)")
    refine = cfg.data.refine_inputs if cfg.stage == "refine" else None
    if cfg.stage == "refine" and not refine:
        raise DataError("stage refine needs data.refine_inputs: the folder written by pcdms-aug make-refine-inputs")
    pairs = None
    if refine:
        # Stage 3 trains on the pairs whose stage-2 output exists (make-refine-inputs may have sampled them).
        from pcdms_aug.data.pose import read_pairs
        from pcdms_aug.data.refine_inputs import check_refine_inputs
        check_refine_inputs(refine, cfg.data.image_size)
        pairs_file = Path(refine) / "pairs.csv"
        if not pairs_file.is_file():
            raise DataError("pairs.csv missing: run pcdms-aug make-refine-inputs first", pairs_file)
        pairs = read_pairs(pairs_file)
    elif cfg.data.max_pairs:
        from pcdms_aug.data.layouts import open_dataset, pair_identities
        from pcdms_aug.data.market import image_sizes, make_pairs
        from pcdms_aug.data.pose import read_annotations
        ds = open_dataset(cfg.data.root)
        pairs = make_pairs(read_annotations(cfg.data.annotations, image_sizes(ds.train)), cfg.data.max_pairs,
                           cfg.train.seed, {it.filename for it in ds.train}, pair_identities(ds))
    return PairDataset(cfg.data.root, cfg.data.annotations, pairs=pairs, image_size=tuple(cfg.data.image_size),
                       refine_inputs_dir=refine)


class MicroBatchSampler(torch.utils.data.Sampler):
    """Index lists of this rank's micro-batches, from ``start_step`` on, for ever (epochs wrap seamlessly,
    so there is never a short last batch)."""

    def __init__(self, n: int, batch: int, accum: int, rank: int, world: int, seed: int, start_step: int = 0):
        self.n, self.batch, self.accum, self.rank, self.world = n, batch, accum, rank, world
        self.seed, self.start_step = seed, start_step
        self._perm_epoch, self._perm = -1, None

    def global_batch(self) -> int:
        return self.batch * self.accum * self.world

    def _index(self, q: int) -> int:
        epoch = q // self.n
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm[q % self.n]

    def micro_batch(self, step: int, micro: int) -> list[int]:
        start = step * self.global_batch() + micro * self.batch
        return [self._index(q) for q in range(start, start + self.batch)]

    def __iter__(self):
        step = self.start_step
        while True:
            for k in range(self.accum):
                yield self.micro_batch(step, self.rank * self.accum + k)
            step += 1


def micro_generator(seed: int, step: int, micro: int, device: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 4099 + micro)


def to_device(batch: dict, device) -> dict:
    """Tensors (also in nested dicts: a feature cache's ``frozen``) on ``device``."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else to_device(v, device)
                if isinstance(v, dict) else v) for k, v in batch.items()}
