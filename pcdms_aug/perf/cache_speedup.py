"""Training from a feature cache against the loop that runs the encoders: samples/s of both, measured in one
run, beside the speed-up the FLOP count predicts for the same config (is the count to be trusted at scale?).

    python -m pcdms_aug.perf.cache_speedup --out /tmp/speedup                 # stage 2, CPU: 16 min
    python -m pcdms_aug.perf.cache_speedup --out /tmp/speedup --stage refine --device cuda

The paper configs on random-weight folders of the downloaded layouts at reduced depth and width (``ARCH``)
and 128x64 images, gradient checkpointing off in both runs (so the ratio is the cache's alone), on the
synthetic Market-1501. The cache is built first (timed: items/s); then ``--rounds`` times, in turn, a fresh
run of ``--steps`` steps without the cache and one with it (samples/s over the steps after the first, from
the training log): the ratio is the median of the rounds' ratios, which keeps a drift of the machine's speed
out of it. Predicted: the step's FLOPs with the frozen networks over those without
(``gpu_estimate.training_flops`` on this very stage).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

# The paper's widths at reduced depth (CLIP ViT-H and DINOv2-giant one layer each, SD's VAE and UNet widths with
# one layer per block, two UNet levels): per-kernel work, and so each network's efficiency, stays close to paper
# scale's (at small widths the unfused elementwise work, which FLOPs do not count, weighs more in the UNet than
# in the encoders), while a step takes seconds on a CPU. Stage 2's frozen share is then 58 % (paper: 56 %).
ARCH = {
    "clip": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 1, "num_attention_heads": 16,
             "projection_dim": 1024},
    "dino": {"hidden_size": 1536, "num_hidden_layers": 1, "num_attention_heads": 24},
    "unet": {"block_out_channels": [320, 640], "layers_per_block": 1, "attention_head_dim": [5, 10],
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 1024,
             "norm_num_groups": 32, "sample_size": 16},
    "vae": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 1, "norm_num_groups": 32,
            "sample_size": 128},
    "kandinsky": {"num_attention_heads": 16, "attention_head_dim": 64, "num_layers": 2, "embedding_dim": 1024,
                  "num_embeddings": 7},
}
SIZE = [128, 64]
STAGE_SIZES = [f"image_size={json.dumps(SIZE)}", "dino.image_size=[112,112]"]
PRIOR = ["prior.width=1024", "prior.layers=2", "prior.heads=16", "prior.pose_hidden=256"]


def write_refine_inputs(folder: Path, dataset, size) -> None:
    """Stage-3 inputs of the right form (random images: the speed does not depend on what they show)."""
    import numpy as np
    from PIL import Image

    from pcdms_aug.data.pairs import pair_image_name
    from pcdms_aug.data.refine_inputs import INFO

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for frm, to in dataset.pairs:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / pair_image_name(frm, to))
    (folder / "pairs.csv").write_text("from,to\n" + "".join(f"{a},{b}\n" for a, b in dataset.pairs))
    (folder / INFO).write_text(json.dumps({"image_size": list(size)}))


def measure(out: Path, stage: str, steps: int, rounds: int, batch: int, device: str, pairs: int = 16) -> dict:
    import torch

    from pcdms_aug.data.synthetic import build_synthetic_market
    from pcdms_aug.perf.measure import StepClock
    from pcdms_aug.perf.gpu_estimate import training_flops
    from pcdms_aug.testing.paper_fixture import weights_settings, write_folders
    from pcdms_aug.training.data import make_dataset
    from pcdms_aug.training.feature_build import build_cache
    from pcdms_aug.training.config import load_run_config
    from pcdms_aug.training.loop import train
    from pcdms_aug.utils.runtime import init_runtime

    out.mkdir(parents=True, exist_ok=True)
    write_folders(out / "weights", "reduced", ARCH)
    root = out / "market1501"
    if not (root / "market-annotation-train.csv").is_file():
        build_synthetic_market(root, train_ids=8, test_ids=6, seed=0, progress=False)
    model = [f"model.weights.{k}={v}" for k, v in weights_settings(out / "weights").items()]
    model += ["model." + o for o in STAGE_SIZES + (PRIOR if stage == "prior" else [])]
    base = [*model, f"data.root={root}", f"data.annotations={root / 'market-annotation-train.csv'}",
            f"data.image_size={json.dumps(SIZE)}", f"data.max_pairs={pairs}", "data.num_workers=0",
            "model.gradient_checkpointing=false", f"train.device={device}", "train.mixed_precision='no'",
            f"train.batch_size={batch}", f"train.max_steps={steps}", "train.checkpoint_every=0",
            "train.sample_every=0", "train.log_every=1", "train.warmup_steps=1"]
    if stage == "refine":
        inputs = out / "refine_inputs"
        write_refine_inputs(inputs, make_dataset(load_run_config("paper/train_inpaint.yaml", base)), SIZE)
        base.append(f"data.refine_inputs={inputs}")
    cfg = load_run_config(f"paper/train_{stage}.yaml", base)
    rt = init_runtime(device, "fp32", 0)
    from pcdms_aug.stages import build_stage

    built = build_stage(stage, cfg.model).to(rt.device)
    flops = training_flops(built, batch, rt.device)
    dataset = make_dataset(cfg)
    cache = out / f"features_{stage}"
    t0 = time.perf_counter()
    manifest = build_cache(built, dataset, cache, rt, SIZE, batch=batch, progress=False)
    build_s = time.perf_counter() - t0
    del built

    def rate(name: str, *extra) -> float:
        clock = StepClock()
        logger = logging.getLogger("pcdms_aug.training.loop")
        logger.addHandler(clock)
        try:
            train(load_run_config(f"paper/train_{stage}.yaml", [*base, f"train.out={out / 'runs' / name}",
                                                                 *extra]), rt, progress=False)
        finally:
            logger.removeHandler(clock)
        return clock.rate(batch)

    import shutil

    plain, cached = [], []
    for r in range(rounds):
        plain.append(rate(f"plain{r}"))
        cached.append(rate(f"cached{r}", f"train.feature_cache={cache}"))
        shutil.rmtree(out / "runs")
    ratios = [c / p for c, p in zip(cached, plain)]
    measured, predicted = statistics.median(ratios), flops["total"] / flops["trainable"]
    return {"stage": stage, "device": rt.device, "torch_threads": torch.get_num_threads(), "batch": batch,
            "steps_per_run": steps, "rounds": rounds, "image_size": SIZE, "arch": ARCH,
            "samples_per_second": {"plain": plain, "cached": cached}, "ratios": ratios,
            "measured_speedup": measured, "flops_per_sample": {k: v / batch for k, v in flops.items()},
            "predicted_speedup": predicted, "measured_over_predicted": measured / predicted,
            "cache": {"seconds": build_s, "images": manifest["images"], "pairs": manifest["pairs"],
                      "bytes": manifest["bytes"]}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pcdms_aug.perf.cache_speedup", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work folder; the report is OUT/cache_speedup_<stage>.json")
    p.add_argument("--stage", default="inpaint", choices=["prior", "inpaint", "refine"])
    p.add_argument("--steps", type=int, default=3, help="steps per run (the first is not timed)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each kind, in turn")
    p.add_argument("--batch", type=int, default=8, help="samples per step (8: the per-step updates, which FLOPs "
                                                       "do not count, weigh little)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if min(args.steps - 1, args.rounds, args.batch) < 1:
        p.error("--steps must be at least 2, --rounds and --batch at least 1")
    report = measure(Path(args.out), args.stage, args.steps, args.rounds, args.batch, args.device)
    from pcdms_aug.utils.io import atomic_write_text

    atomic_write_text(Path(args.out) / f"cache_speedup_{args.stage}.json", json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("stage", "measured_speedup", "predicted_speedup",
                                             "measured_over_predicted", "ratios")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
