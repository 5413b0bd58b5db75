"""Training pairs as a torch Dataset: images, rendered poses, pose vectors (and stage-2 outputs for stage 3)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.pose import read_annotations, render_pose
from pcdms_aug.data.layouts import open_dataset, pair_identities
from pcdms_aug.data.market import IMAGE_SIZE, image_sizes, load_image, make_pairs


def pair_image_name(frm: str, to: str, k: int | None = None) -> str:
    """File name of the image generated for pair (frm, to): ``<from>_to_<to>.png``, or ``..._<k>.png`` for the
    k-th of several samples (k from 0). The names are kept whole, extension included."""
    return f"{frm}_to_{to}.png" if k is None else f"{frm}_to_{to}_{k}.png"


def _to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1


CONDITIONS = ("source_pose_image", "target_pose_image", "source_pose", "target_pose")


class PairDataset(torch.utils.data.Dataset):
    """Same-identity (from, to) pairs of a re-ID dataset folder (any layout; crops of any size).

    Items: ``source_image``/``target_image`` (3, H, W) in [-1, 1]; ``source_pose_image``/``target_pose_image``
    (3, H, W) rendered skeletons in [0, 1]; ``source_pose``/``target_pose`` pose vectors; ``names``;
    ``coarse_image`` when ``refine_inputs_dir`` holds stage-2 outputs named ``<from>_to_<to>.png``.
    """

    def __init__(self, root, annotations, pairs: Sequence[tuple[str, str]] | None = None,
                 image_size=IMAGE_SIZE, refine_inputs_dir=None):
        self.dataset = open_dataset(root)
        self.poses = read_annotations(annotations, image_sizes(self.dataset.all_images()))
        self.image_size = tuple(image_size)
        if pairs is None:
            names = {it.filename for it in self.dataset.train}
            pairs = make_pairs(self.poses, names=names, identities=pair_identities(self.dataset))
        self.pairs = [tuple(p) for p in pairs]
        if not self.pairs:
            raise DataError("no training pairs: no identity has two images with shoulders and hips annotated",
                            annotations)
        missing = sorted({n for p in self.pairs for n in p if n not in self.poses})
        if missing:
            raise DataError(f"no annotation row for {missing[0]} ({len(missing)} images in all)", annotations)
        self.refine_dir = Path(refine_inputs_dir) if refine_inputs_dir else None
        self._paths = {}

    def __len__(self):
        return len(self.pairs)

    def image_path(self, name: str) -> Path:
        if name not in self._paths:
            self._paths[name] = self.dataset.path_of(name)
        return self._paths[name]

    def coarse_path(self, frm: str, to: str) -> Path | None:
        """The stage-2 output of the pair, for stage 3 (None for the other stages)."""
        return None if self.refine_dir is None else self.refine_dir / pair_image_name(frm, to)

    def load(self, name: str) -> torch.Tensor:
        """A dataset image at ``image_size``, (3, H, W) in [-1, 1]."""
        return _to_tensor(load_image(self.image_path(name), self.image_size))

    def conditions(self, i, keys=CONDITIONS) -> dict:
        """Item ``i`` without its images: those of rendered poses and pose vectors ``keys`` names, and names."""
        frm, to = self.pairs[i]
        poses = {"source": self.poses[frm], "target": self.poses[to]}
        item = {}
        for key in keys:
            pose = poses[key.split("_")[0]]
            item[key] = (torch.from_numpy(render_pose(pose, self.image_size)).permute(2, 0, 1).float() / 255
                         if key.endswith("_image") else torch.from_numpy(pose.vector()))
        item["names"] = (frm, to)
        return item

    def __getitem__(self, i):
        frm, to = self.pairs[i]
        item = {"source_image": self.load(frm), "target_image": self.load(to), **self.conditions(i)}
        coarse = self.coarse_path(frm, to)
        if coarse is not None:
            item["coarse_image"] = _to_tensor(load_image(coarse, self.image_size))
        return item
