"""SSIM / PSNR of the shipped refiner over saved stage-2 outputs, for explicit DDIM timesteps and start-noise
scales (README, stage 3: the selection scans of session 7).

    python experiments/stage3_scan.py PAIRS DATASET STAGE2_DIR WEIGHTS "ts=[200,150,100,50,0],tau=0" ...

STAGE2_DIR holds ``<from>_to_<to>.png`` from ``pcdms-aug synthesize-pairs --stages prior,inpaint``. Each spec
runs the refiner from ``ts[0]`` (the coarse image noised with ``tau`` times the drawn noise) through the listed
timesteps with DDIM updates; ``avg=K`` averages K noise draws, ``save='DIR'`` writes the images for
``pcdms-aug metrics`` (FID). Where a spec is one the pipeline can express, ``synthesize-pairs`` gives the same
SSIM.
"""
import ast
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pcdms_aug.data.market import MarketDataset
from pcdms_aug.data.pairs import pair_image_name
from pcdms_aug.metrics.pixels import psnr, ssim_upstream
from pcdms_aug.pipelines.pipeline import PCDMsPipeline
from pcdms_aug.data.pose import read_pairs


def _tensor(path):
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1


def run(refine, cond, tokens, ts, tau=1.0, seed=0, avg=1):
    alphas = refine.noise_scheduler.alphas_cumprod
    outs = []
    for k in range(avg):
        noise = torch.randn(cond.shape, generator=torch.Generator().manual_seed(seed + k))
        x = refine.noise_scheduler.add_noise(cond, tau * noise, torch.full((cond.shape[0],), ts[0]))
        with torch.no_grad():
            for i, t in enumerate(ts):
                x0 = refine._model(x, torch.tensor(t), cond, tokens)
                a_t = alphas[t]
                a_prev = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        outs.append(refine.codec.decode(x))
    out = torch.stack(outs).mean(0)
    return ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def main(pairs_csv, dataset, stage2_dir, weights, *specs):
    ds = MarketDataset(dataset)
    pairs = read_pairs(pairs_csv)
    refine = PCDMsPipeline.from_pretrained(weights).stages["refine"]
    src = torch.stack([_tensor(ds.path_of(f)) for f, _ in pairs])
    coarse = torch.stack([_tensor(Path(stage2_dir) / pair_image_name(f, t)) for f, t in pairs])
    truth = [np.array(Image.open(ds.path_of(t)).convert("RGB")) for _, t in pairs]
    with torch.no_grad():
        tokens = refine.image_proj(refine.encode_source(src)["dino"])
        cond = refine.codec.encode(refine.resize(coarse))
    for spec in specs:
        kw = _spec(spec)
        save = kw.pop("save", None)
        images = run(refine, cond, tokens, **kw)
        if save:
            Path(save).mkdir(parents=True, exist_ok=True)
            for (f, t), a in zip(pairs, images):
                Image.fromarray(a).save(Path(save) / pair_image_name(f, t))
        s = np.mean([ssim_upstream(g, a) for g, a in zip(truth, images)])
        p = np.mean([psnr(g, a) for g, a in zip(truth, images)])
        print(f"{spec}\tSSIM {s:.4f}\tPSNR {p:.2f}", flush=True)


def _spec(text: str) -> dict:
    """'ts=[200,100,0],tau=0' -> {'ts': [200, 100, 0], 'tau': 0} (keyword literals only)."""
    call = ast.parse(f"f({text})", mode="eval").body
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


if __name__ == "__main__":
    main(*sys.argv[1:])
