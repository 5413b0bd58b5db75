"""Per-image time of the tiny refine UNet's forward pass by batch size and threading (the README's speed notes).

    python experiments/unet_batch_scaling.py [--weights tiny] [--batches 1 16 32]

Modes: t1 = one intra-op thread, t2 = two, pool = two single-thread workers on half-batches each. Random inputs
of the stage's shape; the UNet's cost does not depend on their values.
"""
import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from pcdms_aug.pipelines.pipeline import PCDMsPipeline


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="tiny")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 32])
    args = ap.parse_args()
    stage = PCDMsPipeline.from_pretrained(args.weights).stages["refine"]
    unet = stage.unet.eval()
    c = unet.config
    h, w = (s // stage.codec.factor for s in stage.image_size)
    pool = ThreadPoolExecutor(2, initializer=lambda: torch.set_num_threads(1))

    def forward(x, t, e):
        with torch.inference_mode():
            return unet(x, t, encoder_hidden_states=e).sample

    for b in args.batches:
        x, t = torch.randn(b, c.in_channels, h, w), torch.full((b,), 200)
        e = torch.randn(b, 5, c.cross_attention_dim)
        row = {}
        for mode in ("t1", "t2") + (("pool",) if b >= 2 else ()):
            def once():
                if mode != "pool":
                    return forward(x, t, e)
                k = b // 2
                parts = [pool.submit(forward, x[i:j], t[i:j], e[i:j]) for i, j in ((0, k), (k, b))]
                return torch.cat([p.result() for p in parts])
            torch.set_num_threads(1 if mode == "t1" else 2)
            once(), once()
            n = max(3, 64 // b)
            t0 = time.perf_counter()
            for _ in range(n):
                once()
            row[mode] = 1000 * (time.perf_counter() - t0) / n / b
        print(f"batch {b:>3}: " + ", ".join(f"{m} {v:.1f} ms/image" for m, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
