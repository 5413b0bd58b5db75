"""ViTPose from a local folder: person crops -> OpenPose COCO-18 poses in each crop's own pixels.

The estimator is transformers' ``VitPoseForPoseEstimation`` read from a folder laid out as the Hugging Face
download of ``usyd-community/vitpose-base-simple`` (and its -large / -huge / plus siblings):

    folder/config.json                 model_type "vitpose", 17 COCO keypoints
    folder/model.safetensors           (or model.safetensors.index.json with its shards)
    folder/preprocessor_config.json    VitPoseImageProcessor: input size, mean, std

Only safetensors are read (no pickle) and nothing is ever downloaded. A re-ID crop holds one person, so the
whole crop is the person box (top-down estimation, as ViTPose was trained). ViTPose predicts COCO-17; the
annotations every command reads are OpenPose COCO-18 (:data:`pcdms_aug.data.pose.JOINTS`): the joints are
reordered, the neck (absent from COCO) is the midpoint of the shoulders, and a joint whose heatmap peak is below
the threshold, or which falls outside the crop, is missing (-1), as OpenPose leaves out what it does not find.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pcdms_aug.data.pose import JOINTS, NUM_JOINTS, Pose
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import file_sha256

COCO17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
          "right_knee", "left_ankle", "right_ankle")
# OpenPose-18 joint i is COCO-17 joint OPENPOSE_FROM_COCO[i]; None marks the neck. Left and right are the
# person's own in both conventions.
OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
NECK = JOINTS.index("neck")
SHOULDERS = (COCO17.index("left_shoulder"), COCO17.index("right_shoulder"))
DEFAULT_THRESHOLD = 0.3  # ViTPose's (mmpose's) usual keypoint score threshold
CONFIG, WEIGHTS, SHARD_INDEX, PREPROCESSOR = ("config.json", "model.safetensors", "model.safetensors.index.json",
                                              "preprocessor_config.json")
LAYOUT = f"{CONFIG}, {WEIGHTS} and {PREPROCESSOR}, as usyd-community/vitpose-base-simple is downloaded"


def coco_to_openpose(xy: np.ndarray, scores: np.ndarray, size: tuple[int, int],
                     threshold: float = DEFAULT_THRESHOLD) -> Pose:
    """COCO-17 keypoints (17, 2) of (x, y) pixels with their scores -> an OpenPose-18 Pose of an image of
    ``size`` = (height, width). Kept: score >= threshold and inside the image; the neck needs both shoulders."""
    xy = np.asarray(xy, dtype=np.float32).reshape(len(COCO17), 2)
    scores = np.asarray(scores, dtype=np.float32).reshape(len(COCO17))
    h, w = size
    # Kept coordinates are rounded here, as the CSV stores them, so a pose and its row read back are equal.
    r = np.rint(xy)
    keep = (scores >= threshold) & (r[:, 0] >= 0) & (r[:, 0] <= w - 1) & (r[:, 1] >= 0) & (r[:, 1] <= h - 1)
    out = np.full((NUM_JOINTS, 2), -1.0, np.float32)
    visible = np.zeros(NUM_JOINTS, bool)
    for j, c in enumerate(OPENPOSE_FROM_COCO):
        if c is not None and keep[c]:
            out[j], visible[j] = r[c], True
    if keep[list(SHOULDERS)].all():
        out[NECK], visible[NECK] = np.rint(xy[list(SHOULDERS)].mean(axis=0)), True
    return Pose(out, visible, size)


def check_folder(folder: str | Path) -> Path:
    """The folder if it is a COCO-17 ViTPose checkpoint in the downloaded layout; else a one-line DataError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"pose estimator folder not found (a ViTPose checkpoint folder: {LAYOUT})", folder)
    missing = [n for n in (CONFIG, PREPROCESSOR) if not (folder / n).is_file()]
    if not (folder / WEIGHTS).is_file() and not (folder / SHARD_INDEX).is_file():
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pth")]
        if pickled:
            raise DataError(f"holds {pickled[0]} but no {WEIGHTS}: only safetensors are read (a pickle can run "
                            "code); download the safetensors files of the checkpoint", folder)
        missing.append(WEIGHTS)
    if missing:
        raise DataError(f"not a ViTPose checkpoint folder: no {', '.join(missing)}; it needs {LAYOUT}", folder)
    from pcdms_aug.config.loading import read_json

    config = read_json(folder / CONFIG, CONFIG)
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind != "vitpose":
        raise DataError(f"not a ViTPose checkpoint: model_type is {kind!r}, expected 'vitpose' "
                        "(VitPoseForPoseEstimation)", folder / CONFIG)
    labels = config.get("id2label") or {}
    if len(labels) != len(COCO17):
        raise DataError(f"the checkpoint predicts {len(labels)} keypoints; annotate maps the {len(COCO17)} COCO "
                        "keypoints to OpenPose-18 (use a COCO checkpoint, e.g. usyd-community/vitpose-base-simple)",
                        folder / CONFIG)
    return folder


def folder_fingerprint(folder: Path) -> str:
    """sha256 (12 hex digits) over the folder's files: which estimator made an annotation."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(q for q in folder.iterdir() if q.is_file() and not q.name.startswith(".")):
        h.update(p.name.encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()[:12]


class VitPoseEstimator:
    """``estimator(images)`` -> one OpenPose-18 :class:`Pose` per PIL image, in that image's own pixels."""

    def __init__(self, folder: str | Path, device: str = "cpu", threshold: float = DEFAULT_THRESHOLD):
        from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor
        from transformers.utils import logging as hf_logging

        self.folder = check_folder(folder)
        self.threshold = float(threshold)
        self.device = device
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no weight-loading bar beside annotate's own
        try:
            self.processor = VitPoseImageProcessor.from_pretrained(self.folder, local_files_only=True)
            self.model = VitPoseForPoseEstimation.from_pretrained(self.folder, local_files_only=True,
                                                                  use_safetensors=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"cannot load the ViTPose checkpoint ({e.__class__.__name__}: "
                            f"{' '.join(str(e).split())[:200]})", self.folder) from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.model.to(device).eval()
        # ViTPose+ checkpoints hold one expert head per training set; index 0 is COCO.
        self.experts = int(getattr(self.model.config.backbone_config, "num_experts", 1) or 1)
        # What the rows depend on: a resumed run with another checkpoint or threshold is refused.
        self.settings = {"vitpose": folder_fingerprint(self.folder), "threshold": self.threshold}

    def __call__(self, images: Sequence) -> list[Pose]:
        import torch

        if not images:
            return []
        boxes = [[[0.0, 0.0, float(im.width), float(im.height)]] for im in images]
        inputs = self.processor(images=list(images), boxes=boxes, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, next(self.model.parameters()).dtype)
        kwargs = {}
        if self.experts > 1:
            kwargs["dataset_index"] = torch.zeros(len(images), dtype=torch.long, device=self.device)
        with torch.no_grad():
            out = self.model(pixel_values=pixels, **kwargs)
        results = self.processor.post_process_pose_estimation(out, boxes=boxes)
        return [coco_to_openpose(r[0]["keypoints"].numpy(), r[0]["scores"].numpy(), (im.height, im.width),
                                 self.threshold) for r, im in zip(results, images)]
