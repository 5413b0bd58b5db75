"""A random-weight ViTPose folder in the exact layout of the ``usyd-community/vitpose-base-simple`` download.

    folder/config.json  folder/model.safetensors  folder/preprocessor_config.json

Written with ``save_pretrained`` of the classes ``pcdms-aug annotate`` reads it with, so annotate takes it
exactly as the downloaded folder. ``scale="base"`` is the published ViTPose-B (86 million parameters, 256x192
input: for timing); ``scale="tiny"`` the same classes at a width and input size that run on a CPU in
milliseconds.

``posed=True`` sets the tiny network's weights instead of drawing them: every transformer block adds nothing
(its output projections are zero), the patch embedding ignores the pixels, and each joint's position embedding
lights one channel at the patch where :data:`STANDING` puts that joint, which the head's 3x3 convolution turns
into that joint's heatmap. Whatever the crop, it "sees" a person standing upright facing the camera, placed as
a re-ID crop places one; the keypoints then go through the real preprocessing (box, affine warp) and heatmap
decoding, so tests can check where annotate puts each joint in a crop of any size.

    python -m pcdms_aug.testing.vitpose_fixture OUT [--scale tiny|base] [--posed]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pcdms_aug.utils.io import atomic_dir

# vitpose-base-simple's config.json names its 17 outputs so (COCO order).
COCO_LABELS = ("Nose", "L_Eye", "R_Eye", "L_Ear", "R_Ear", "L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow",
               "L_Wrist", "R_Wrist", "L_Hip", "R_Hip", "L_Knee", "R_Knee", "L_Ankle", "R_Ankle")
SCALES = {
    "base": {"image_size": [256, 192], "patch_size": [16, 16], "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "out_indices": [12]},
    "tiny": {"image_size": [128, 96], "patch_size": [16, 16], "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "out_indices": [2]},
}
# The person the posed network sees, in (x, y) fractions of the crop; right and left are the person's own (a
# person facing the camera has the right shoulder on the image's left).
STANDING = {"Nose": (0.5, 0.12), "L_Eye": (0.56, 0.09), "R_Eye": (0.44, 0.09), "L_Ear": (0.62, 0.1),
            "R_Ear": (0.38, 0.1), "L_Shoulder": (0.72, 0.24), "R_Shoulder": (0.28, 0.24), "L_Elbow": (0.78, 0.38),
            "R_Elbow": (0.22, 0.38), "L_Wrist": (0.8, 0.5), "R_Wrist": (0.2, 0.5), "L_Hip": (0.64, 0.52),
            "R_Hip": (0.36, 0.52), "L_Knee": (0.64, 0.7), "R_Knee": (0.36, 0.7), "L_Ankle": (0.64, 0.88),
            "R_Ankle": (0.36, 0.88)}
# Where a 1:2 crop lies in the network's input: the processor widens the box to the input's 3:4 and pads it by
# 1.25 (transformers' box_to_center_and_scale).
CROP_IN_INPUT = {"x0": 0.5 - 0.5 * 0.5 / (0.75 * 1.25), "width": 0.5 / (0.75 * 1.25), "y0": 0.1, "height": 0.8}


def _pose_weights(model, arch: dict) -> None:
    """Set the weights of a tiny VitPoseForPoseEstimation so it predicts STANDING for every 1:2 crop."""
    import torch

    rows, cols = arch["image_size"][0] // arch["patch_size"][0], arch["image_size"][1] // arch["patch_size"][1]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("attention.output.dense.weight", "attention.output.dense.bias", "mlp.fc2.weight",
                              "mlp.fc2.bias", "patch_embeddings.projection.weight",
                              "patch_embeddings.projection.bias", "head.conv.weight", "head.conv.bias")):
                param.zero_()
        pos = model.backbone.embeddings.position_embeddings
        pos.zero_()
        for k, label in enumerate(COCO_LABELS):
            x, y = STANDING[label]
            col = int((CROP_IN_INPUT["x0"] + x * CROP_IN_INPUT["width"]) * cols)
            row = int((CROP_IN_INPUT["y0"] + y * CROP_IN_INPUT["height"]) * rows)
            pos[0, 1 + row * cols + col, k] = 1.0  # token 0 is the class token
            model.head.conv.weight[k, k, 1, 1] = 0.15  # a heatmap peak of about 0.8: above 0.3


def write_vitpose_folder(folder: str | Path, scale: str = "tiny", seed: int = 0, posed: bool = False) -> Path:
    """Write the folder (skipped where its config.json is already there); returns it. ``posed``: the weights
    that see a standing person in every crop (tiny scale), not random ones."""
    import torch
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    arch = dict(SCALES[scale])
    config = VitPoseConfig(backbone_config=VitPoseBackboneConfig(**arch),
                           id2label=dict(enumerate(COCO_LABELS)), label2id={n: i for i, n in enumerate(COCO_LABELS)})
    torch.manual_seed(seed)
    model = VitPoseForPoseEstimation(config)
    if posed:
        _pose_weights(model, arch)
    height, width = arch["image_size"]
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        VitPoseImageProcessor(size={"height": height, "width": width}).save_pretrained(tmp)
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--scale", default="tiny", choices=sorted(SCALES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--posed", action="store_true", help="weights that see a standing person in every crop")
    args = p.parse_args(argv)
    print(write_vitpose_folder(args.out, args.scale, args.seed, args.posed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
