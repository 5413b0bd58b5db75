"""A random-weight ViTPose folder in the exact layout of the ``usyd-community/vitpose-base-simple`` download.

    folder/config.json  folder/model.safetensors  folder/preprocessor_config.json

Written with ``save_pretrained`` of the classes ``pcdms-aug annotate`` reads it with, so annotate takes it
exactly as the downloaded folder. ``scale="base"`` is the published ViTPose-B (86 million parameters, 256x192
input: for timing); ``scale="tiny"`` the same classes at a width and input size that run on a CPU in
milliseconds.

    python -m pcdms_aug.testing.vitpose_fixture OUT [--scale tiny|base]
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
    "tiny": {"image_size": [64, 48], "patch_size": [16, 16], "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "out_indices": [2]},
}


def write_vitpose_folder(folder: str | Path, scale: str = "tiny", seed: int = 0) -> Path:
    """Write the folder (skipped where its config.json is already there); returns it."""
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
    args = p.parse_args(argv)
    print(write_vitpose_folder(args.out, args.scale, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
