"""A stage's saved folder: which file holds each component (its own, or a sibling stage's through
``<component>.ref.json``), storing an equal frozen file once, and the weights' shapes checked against the config
from the safetensors headers before any tensor is made."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import file_sha256

FROZEN = ("clip", "dino", "codec")
REFERENCE = ".ref.json"  # <component>.ref.json: the component is a sibling stage's file


class FolderOnly(dict):
    """A view of a component cache that serves (and records) only folder-backed parts: a randomly
    initialised frozen part is loaded from the stage's own file first and shared only when equal."""

    def __init__(self, cache: dict):
        super().__init__()
        self.cache = cache

    def __contains__(self, key):
        from pcdms_aug.models.encoders import is_folder_key

        return is_folder_key(key) and key in self.cache

    def __getitem__(self, key):
        return self.cache[key]

    def __setitem__(self, key, value):
        from pcdms_aug.models.encoders import is_folder_key

        if is_folder_key(key):
            self.cache[key] = value


def store_once(file: Path, name: str, shared: dict) -> None:
    """``file`` (saved as ``name``, "<stage folder>/<component>.safetensors") replaced by a reference to the
    equal file another stage wrote, if one did; else recorded in ``shared`` for the stages after."""
    comp = file.name[:-len(".safetensors")]
    digest = file_sha256(file)
    same_as = shared.setdefault((comp, digest), name)
    if same_as != name:
        file.unlink()
        (file.parent / f"{comp}{REFERENCE}").write_text(json.dumps({"same_as": same_as, "sha256": digest},
                                                                   indent=2) + "\n")


def class_of(name, directory: Path) -> type:
    """The stage class a saved folder's config.json names."""
    from pcdms_aug.stages import STAGES

    if name not in STAGES:
        from pcdms_aug.utils.errors import shown

        raise DataError(f"stage {shown(name)} is none of {', '.join(STAGES)}", directory / "config.json")
    return STAGES[name]


def component_file(directory: Path, comp: str) -> Path:
    """The weights file of a saved component: its own, or the sibling stage's its reference names."""
    f = directory / f"{comp}.safetensors"
    if not f.is_file() and comp in FROZEN and (directory / f"{comp}{REFERENCE}").is_file():
        f = referenced_file(directory / f"{comp}{REFERENCE}", comp)
    if not f.is_file():
        raise DataError(f"weights of component {comp!r} missing", f)
    return f


def check_shapes(module: nn.Module, file: Path) -> None:
    """The tensors ``file`` holds (read from its header) against those of ``module`` (on the meta device): a
    config that disagrees with its weights is refused before any tensor is made."""
    from safetensors import SafetensorError, safe_open

    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    try:
        with safe_open(str(file), "pt", device="cpu") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"cannot read the weights ({' '.join(str(e).split())[:200]})", file) from None
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise DataError(f"weights do not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}",
                        file)
    for k in sorted(want):
        if want[k] != have[k]:
            raise DataError(f"weights do not match the config: {k} is {list(have[k])} in the file, "
                            f"{list(want[k])} in config.json", file)


def referenced_file(ref: Path, comp: str) -> Path:
    """The file ``<comp>.ref.json`` stands for: ``<comp>.safetensors`` of a sibling stage folder of the same
    pipeline folder (no other path is followed), with the sha256 the reference records."""
    from pcdms_aug.stages import STAGES

    from pcdms_aug.config.loading import read_json

    spec = read_json(ref, "reference")
    if not isinstance(spec, dict) or not isinstance(spec.get("same_as"), str) or not isinstance(spec.get("sha256"),
                                                                                                  str):
        raise DataError('corrupt reference: expected {"same_as": "<stage>/<component>.safetensors", '
                        '"sha256": "<hex>"}', ref)
    parts = spec["same_as"].split("/")
    if len(parts) != 2 or parts[0] not in STAGES or parts[0] == ref.parent.name or parts[1] != f"{comp}.safetensors":
        raise DataError(f"reference to {spec['same_as']!r} refused: it may only name {comp}.safetensors of another "
                        f"stage folder of this pipeline ({', '.join(STAGES)})", ref)
    pipeline = ref.parent.parent
    if not (pipeline / "pipeline.yaml").is_file():
        raise DataError(f"{ref.name} refers to a file of another stage, so this folder loads only inside its "
                        "pipeline folder (pipeline.yaml beside the stage folders)", ref)
    target = pipeline / parts[0] / parts[1]
    if not target.is_file():
        raise DataError(f"weights of component {comp!r} missing (the file {ref.parent.name}/{ref.name} refers to)",
                        target)
    if file_sha256(target) != spec["sha256"]:
        raise DataError(f"weights of component {comp!r} do not match the sha256 {ref.parent.name}/{ref.name} "
                        "records", target)
    return target


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)
