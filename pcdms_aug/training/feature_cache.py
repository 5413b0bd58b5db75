"""The frozen networks' outputs of every training pair, computed once: a folder of safetensors shards.

A training step of each stage reads a few outputs of frozen networks (CLIP embeddings, DINOv2 tokens, VAE
latent distributions); a stage names them per role with ``frozen_needs()``: ``source`` and ``target`` are
features of one image file, ``pair`` those of the whole pair (the VAE latents of stage 2's [source | target]
canvas: the VAE encoder's attention spans the seam, so the canvas is no function of its two halves' latents;
stage 3's latents of the stage-2 output of that pair). So the cache holds one entry per image file and one
per pair, each under a key that names the files it was computed from with their size and modification time
(a replaced file gets a new key and is computed again). VAE features are the distribution's parameters (mean
and log-variance, ``Codec.encode_dist``); the stage turns them into latents at each step as it does without
the cache.

Layout::

    DIR/manifest.json                     stage, fingerprint, storage dtype, complete
    DIR/shards/<unit>-r<rank>-<n>.safetensors   tensors "<key>/<feature>", metadata {"fingerprint": ...}

The fingerprint hashes what the features depend on besides the files: every frozen component's weights and
config (preprocessing: input size, normalisation), the stage's working size and the size the data loader
reads images at. A cache whose fingerprint is not the run's is refused; build a new one.

Flips: the training data has no flip augmentation, and these features are not flip-equivariant (DINOv2 and
CLIP have position embeddings, the VAE non-symmetric kernels: the features of a flipped image are not the
flipped features), so a flip augmentation would need the flipped images' own entries; the keys say which
file was encoded as stored, and nothing else is looked up.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from pathlib import Path

import torch

from pcdms_aug.utils.errors import DataError

FORMAT = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
UNITS = ("image", "pair")


# ------------------------------------------------------------------------------------------------ keys
def file_key(path: Path, name: str) -> str:
    """``name@<size>-<mtime_ns>`` (hex): the file as it is now."""
    try:
        st = Path(path).stat()
    except OSError as e:
        raise DataError(f"cannot read the image ({e.strerror})", path) from None
    return f"{name}@{st.st_size:x}-{st.st_mtime_ns:x}"


def pair_files(dataset, i: int) -> list[tuple[Path, str]]:
    """The files pair ``i`` of a :class:`~pcdms_aug.data.pairs.PairDataset` reads: source, target and, for
    stage 3, the stage-2 output."""
    frm, to = dataset.pairs[i]
    files = [(dataset.image_path(frm), frm), (dataset.image_path(to), to)]
    coarse = dataset.coarse_path(frm, to)
    if coarse is not None:
        files.append((coarse, coarse.name))
    return files


class Keys:
    """The cache keys of a dataset's images and pairs (one ``stat`` per file, made once)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._files: dict[str, str] = {}

    def image(self, name: str) -> str:
        if name not in self._files:
            self._files[name] = file_key(self.dataset.image_path(name), name)
        return self._files[name]

    def pair(self, i: int) -> str:
        frm, to = self.dataset.pairs[i]
        parts = [self.image(frm), self.image(to)]
        coarse = self.dataset.coarse_path(frm, to)
        if coarse is not None:
            parts.append(file_key(coarse, coarse.name))
        return "|".join(parts)


# ------------------------------------------------------------------------------------------------ fingerprint
_DIGESTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes, bytes); remembered while the module
    lives (frozen weights do not change)."""
    digest = _DIGESTS.get(module)
    if digest is None:
        h = hashlib.sha256()
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
        digest = _DIGESTS[module] = h.hexdigest()
    return digest


def fingerprint(stage, data_image_size) -> str:
    """What a stage's frozen features depend on besides the image files (see the module's docstring)."""
    from pcdms_aug.stages.base import FROZEN

    parts = {"format": FORMAT, "stage": stage.name, "image_size": list(stage.image_size),
             "data_image_size": list(data_image_size), "needs": {r: list(n) for r, n in stage.frozen_needs().items()},
             "components": {}}
    for name in FROZEN:
        module = stage.frozen_component(name)
        if module is None:
            continue
        cfg = {k: v for k, v in dataclasses.asdict(getattr(stage.config, name)).items() if k != "pretrained"}
        parts["components"][name] = {"config": cfg, "weights": weights_digest(module)}
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ the folder
def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    from pcdms_aug.config.loading import read_json

    manifest = read_json(path, "feature cache manifest", limit=64 << 20)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "fingerprint" not in manifest:
        raise DataError(f"not a feature cache of format {FORMAT} (rebuild it in a new folder)", path)
    return manifest


def check_fresh(folder: Path, manifest: dict, stage_name: str, fp: str) -> None:
    """One line, naming the folder, when the cache was built for another stage or other encoders."""
    if manifest.get("stage") != stage_name:
        raise DataError(f"feature cache of stage {manifest.get('stage')!r}, not {stage_name!r}", folder)
    if manifest["fingerprint"] != fp:
        raise DataError(f"stale feature cache: built for other encoder weights or preprocessing (fingerprint "
                        f"{manifest['fingerprint'][:12]}, this run's {fp[:12]}); build a new one in another folder "
                        "(pcdms-aug cache-features CONFIG train.feature_cache=NEW) or remove this one", folder)


def shard_files(folder: Path, unit: str | None = None) -> list[Path]:
    pattern = f"{unit}-r*.safetensors" if unit else "*.safetensors"
    return sorted((Path(folder) / SHARDS).glob(pattern))


class FeatureCache:
    """Read side: which shard holds each tensor (read from the shards' headers), tensors read on demand. Each
    DataLoader worker opens its own handles (the index is plain data, so it forks and pickles)."""

    def __init__(self, folder: str | Path, fp: str):
        from safetensors import safe_open

        self.folder, self.fingerprint = Path(folder), fp
        self.index: dict[str, str] = {}
        for shard in shard_files(self.folder):
            try:
                with safe_open(str(shard), "pt") as f:
                    meta = f.metadata() or {}
                    keys = list(f.keys())
            except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
                raise DataError(f"corrupt feature cache shard ({e}); remove it and build again", shard) from None
            if meta.get("fingerprint") != fp:
                raise DataError("feature cache shard of other encoders or preprocessing (fingerprint "
                                f"{str(meta.get('fingerprint'))[:12]}, this run's {fp[:12]}); remove it", shard)
            for k in keys:
                self.index[k] = shard.name
        self._open: dict[str, object] = {}

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}

    def has(self, key: str, features) -> bool:
        return all(f"{key}/{f}" in self.index for f in features)

    def get(self, key: str, feature: str) -> torch.Tensor:
        from safetensors import safe_open

        name = f"{key}/{feature}"
        shard = self.index.get(name)
        if shard is None:
            raise DataError(f"feature cache lacks {name}; build it again (pcdms-aug cache-features)", self.folder)
        handle = self._open.get(shard)
        if handle is None:
            handle = self._open[shard] = safe_open(str(self.folder / SHARDS / shard), "pt")
        return handle.get_tensor(name)


class CachedPairs(torch.utils.data.Dataset):
    """A :class:`~pcdms_aug.data.pairs.PairDataset` whose items carry the frozen features (``item["frozen"]``,
    ``"<role>.<feature>"`` as ``Stage.frozen_inputs`` returns them) instead of the images they come from; the
    poses are the dataset's own. ``images`` holds the image items, for previews."""

    def __init__(self, dataset, cache: FeatureCache, needs: dict, keys: Keys | None = None, conditions=None):
        """``conditions``: the pose entries a step reads (``Stage.CONDITION_KEYS``; default all)."""
        from pcdms_aug.data.pairs import CONDITIONS

        self.images, self.cache, self.needs = dataset, cache, {r: tuple(n) for r, n in needs.items()}
        self.keys = keys or Keys(dataset)
        self.conditions = CONDITIONS if conditions is None else tuple(conditions)

    def __len__(self):
        return len(self.images)

    def missing(self) -> str | None:
        """The first tensor a training step would need that the cache lacks, or None."""
        for i in range(len(self)):
            frm, to = self.images.pairs[i]
            for role, names in self.needs.items():
                key = self.keys.pair(i) if role == "pair" else self.keys.image(frm if role == "source" else to)
                if not self.cache.has(key, names):
                    return f"{key}/{names[0]}"
        return None

    def __getitem__(self, i):
        frm, to = self.images.pairs[i]
        item = self.images.conditions(i, self.conditions)
        frozen = {}
        for role, names in self.needs.items():
            key = self.keys.pair(i) if role == "pair" else self.keys.image(frm if role == "source" else to)
            for n in names:
                frozen[f"{role}.{n}"] = self.cache.get(key, n)
        item["frozen"] = frozen
        return item
