"""Building and opening a feature cache (its format: ``pcdms_aug.training.feature_cache``; the command:
``pcdms_aug.training.cache_features``)."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from pcdms_aug.training.feature_cache import MANIFEST, SHARDS, CachedPairs, FeatureCache, Keys, \
    check_fresh, fingerprint, read_manifest, shard_files
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_path, atomic_write_text
from pcdms_aug.utils.runtime import DTYPES, as_dtype, barrier


class _Images(torch.utils.data.Dataset):
    """One dataset image per item, as the pair dataset loads it."""

    def __init__(self, dataset, names):
        self.dataset, self.names = dataset, names

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        return {"image": self.dataset.load(self.names[i]), "index": i}


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        item = self.dataset[self.indices[i]]
        item.pop("names")
        item["index"] = i
        return item


class _ShardWriter:
    """Tensors collected in memory and written as one shard every ``size`` entries (and at the end)."""

    def __init__(self, folder: Path, unit: str, rank: int, fp: str, size: int, dtype: torch.dtype):
        self.folder, self.unit, self.rank, self.fp, self.size, self.dtype = folder, unit, rank, fp, size, dtype
        self.tensors: dict[str, torch.Tensor] = {}
        self.entries = 0
        self.n = len(shard_files(folder, f"{unit}-r{rank:03d}"))  # resumes after the shards already written

    def add(self, key: str, features: dict[str, torch.Tensor]) -> None:
        for name, t in features.items():
            self.tensors[f"{key}/{name}"] = t.detach().to("cpu", self.dtype).contiguous()
        self.entries += 1
        if self.entries >= self.size:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.tensors:
            return
        path = self.folder / SHARDS / f"{self.unit}-r{self.rank:03d}-{self.n:06d}.safetensors"
        while path.exists():  # a shard another build of this rank left: never overwritten
            self.n += 1
            path = self.folder / SHARDS / f"{self.unit}-r{self.rank:03d}-{self.n:06d}.safetensors"
        with atomic_path(path) as tmp:
            save_file(self.tensors, str(tmp), metadata={"fingerprint": self.fp})
        self.tensors, self.entries, self.n = {}, 0, self.n + 1


def build_cache(stage, dataset, folder, rt, data_image_size, batch: int = 16, dtype: str = "fp32",
                shard_size: int = 512, num_workers: int = 0, amp_dtype=None, progress: bool = True) -> dict:
    """Encode what ``folder`` lacks of ``dataset``'s images and pairs with ``stage``'s frozen networks (on
    ``rt.device``, this rank's share), under autocast ``amp_dtype`` when given (as the training step would
    compute them). Every rank calls it. Returns the manifest."""
    from tqdm import tqdm

    if dtype not in DTYPES:
        raise DataError(f"feature cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = Path(folder)
    fp = fingerprint(stage, data_image_size)
    needs = {r: tuple(n) for r, n in stage.frozen_needs().items()}
    manifest = read_manifest(folder)
    if manifest is not None:
        check_fresh(folder, manifest, stage.name, fp)
        if manifest.get("dtype") != dtype:
            raise DataError(f"feature cache stored as {manifest.get('dtype')}, not {dtype}", folder / MANIFEST)
    barrier()
    if rt.is_main and manifest is None:
        manifest = {"format": 1, "stage": stage.name, "fingerprint": fp, "dtype": dtype, "needs": needs,
                    "complete": False}
        (folder / SHARDS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    barrier()
    (folder / SHARDS).mkdir(parents=True, exist_ok=True)
    keys = Keys(dataset)
    have = FeatureCache(folder, fp)
    roles = [r for r in ("source", "target") if needs.get(r)]
    image_names = sorted({p[0 if r == "source" else 1] for p in dataset.pairs for r in roles})
    image_feats = tuple(sorted({n for r in ("source", "target") for n in needs.get(r, ())}))
    # rank r encodes the r-th of every world_size items of the whole lists: a share that does not depend on
    # what other ranks have written already
    mine = range(rt.rank, len(image_names), rt.world_size)
    todo_images = [image_names[k] for k in mine if not have.has(keys.image(image_names[k]), image_feats)]
    todo_pairs = [i for i in range(rt.rank, len(dataset), rt.world_size)
                  if needs.get("pair") and not have.has(keys.pair(i), needs["pair"])]
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo_images) + len(todo_pairs), desc=f"cache {stage.name} features", unit="item",
               disable=not (progress and rt.is_main), dynamic_ncols=True)
    store = as_dtype(dtype)
    amp = dict(device_type=rt.device.split(":")[0], dtype=amp_dtype or torch.float32,
               enabled=amp_dtype is not None and rt.device.startswith("cuda"))
    loader = dict(batch_size=batch, num_workers=num_workers, shuffle=False)
    stage.eval()
    with torch.no_grad(), torch.autocast(**amp):
        out = _ShardWriter(folder, "image", rt.rank, fp, shard_size, store)
        for b in torch.utils.data.DataLoader(_Images(dataset, todo_images), **loader):
            feats = stage.image_features(b["image"].to(rt.device), image_feats)
            for j, i in enumerate(b["index"].tolist()):
                out.add(keys.image(todo_images[i]), {n: v[j] for n, v in feats.items()})
            bar.update(len(b["index"]))
        out.flush()
        out = _ShardWriter(folder, "pair", rt.rank, fp, shard_size, store)
        for b in torch.utils.data.DataLoader(_Pairs(dataset, todo_pairs), **loader):
            idx = b.pop("index").tolist()
            feats = stage.pair_features({k: v.to(rt.device) for k, v in b.items()}, needs["pair"])
            for j, i in enumerate(idx):
                out.add(keys.pair(todo_pairs[i]), {n: v[j] for n, v in feats.items()})
            bar.update(len(idx))
        out.flush()
    bar.close()
    barrier()
    manifest = read_manifest(folder)
    if rt.is_main:
        cached = CachedPairs(dataset, FeatureCache(folder, fp), needs, keys)
        gap = cached.missing()
        if gap is not None:
            raise DataError(f"feature cache still lacks {gap} after the build", folder)
        manifest.update(complete=True, images=len(image_names), pairs=len(dataset),
                        bytes=sum(p.stat().st_size for p in shard_files(folder)))
        if todo_images or todo_pairs:  # the last build that encoded anything (the main rank's share)
            manifest["build_seconds"] = time.perf_counter() - t0
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    barrier()
    return read_manifest(folder)


def open_cache(stage, dataset, folder, data_image_size) -> CachedPairs:
    """The cached view of ``dataset``: refused (one line) when the cache is stale or lacks a pair."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise DataError("no feature cache here (build it with pcdms-aug cache-features)", folder)
    fp = fingerprint(stage, data_image_size)
    check_fresh(folder, manifest, stage.name, fp)
    cached = CachedPairs(dataset, FeatureCache(folder, fp), stage.frozen_needs(), conditions=stage.CONDITION_KEYS)
    gap = cached.missing()
    if gap is not None:
        raise DataError(f"feature cache lacks {gap}: built for other pairs; run pcdms-aug cache-features with "
                        "this run's config", folder)
    return cached


@contextlib.contextmanager
def frozen_on_device(stage, aside, device: str, register: bool = False):
    """The frozen components ``aside`` (``Stage.set_frozen_aside``) on the device for a while (``register``:
    part of the stage again, as a preview and the export need them); then back on the CPU."""
    parts = {n: stage.frozen_component(n) for n in aside}
    if not parts:
        yield
        return
    for module in parts.values():
        module.to(device)
    if register:
        stage.frozen_back(aside)
    try:
        yield
    finally:
        if register:
            stage.set_frozen_aside()
        for module in parts.values():
            module.to("cpu")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def cached_dataset(stage, aside, dataset, folder, rt, data_cfg, amp_dtype=None) -> CachedPairs:
    """A training run's pairs with their frozen features from ``folder``; what it lacks is built first (the
    frozen networks ``aside`` on the device for that, then back on the CPU). A stale cache is refused, never
    built over. Every rank decides alike: the files and the cache are the same for all."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    gap = "no manifest"
    if manifest is not None:
        fp = fingerprint(stage, data_cfg.image_size)
        check_fresh(folder, manifest, stage.name, fp)
        gap = CachedPairs(dataset, FeatureCache(folder, fp), stage.frozen_needs()).missing()
    if gap is not None:
        with frozen_on_device(stage, aside, rt.device):
            build_cache(stage, dataset, folder, rt, data_cfg.image_size, num_workers=data_cfg.num_workers,
                        amp_dtype=amp_dtype, progress=rt.is_main)
        stage.train()
    return open_cache(stage, dataset, folder, data_cfg.image_size)
