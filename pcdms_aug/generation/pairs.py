"""Generate the target image of every (from, to) pair: `pcdms-aug synthesize-pairs` and the stage-3 inputs.

Each output's noise comes from a generator seeded by (seed, from, to), so the images do not depend on the
batch size, the order, an interruption or the number of ranks. Finished files are skipped on a rerun.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import torch

from pcdms_aug.data.layouts import LAYOUTS, ReidDataset, open_dataset
from pcdms_aug.data.market import image_size, load_image
from pcdms_aug.data.pairs import pair_image_name
from pcdms_aug.generation.any_size import call_any_size
from pcdms_aug.generation import run_folder
from pcdms_aug.generation.run_folder import Protocol
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_save_image
from pcdms_aug.data.pose import Pose, read_annotation_files, read_pairs
from pcdms_aug.stages.diffusion import SAMPLERS
from pcdms_aug.utils.runtime import add_dtype_argument, item_seed


def synthesize(pipe, pairs: Sequence[tuple[str, str]], dataset: ReidDataset, poses: Mapping[str, Pose],
               out_dir: Path, *, batch: int = 8, steps: int | dict | None = None,
               guidance: float | dict | None = None, refine_strength: float | None = None,
               refine_noise: float | None = None, scheduler: str | None = None, seed: int = 0,
               stages=("prior", "inpaint", "refine"),
               write: str = "final", rank: int = 0, world: int = 1, progress: bool = True,
               keep_existing: bool = True, output_size: str = "source") -> dict:
    """Write ``out_dir/<from>_to_<to>.png`` for this rank's share of ``pairs``; returns counts.

    ``write`` = "final" or "coarse" (the stage-2 output, which is what stage 3 trains on);
    ``keep_existing=False`` makes every image again (a folder of other settings, ``--overwrite``);
    ``output_size`` "source" writes each image at its source's size, "working" at the pipeline's.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [n for p in pairs for n in p if n not in poses]
    if missing:
        raise DataError(f"no pose annotation for {missing[0]} ({len(set(missing))} images in all); "
                        "pass the annotation CSV that covers the pairs")
    mine = [p for i, p in enumerate(pairs) if i % world == rank]
    todo = [p for p in mine if not (keep_existing and (out_dir / pair_image_name(*p)).is_file())]
    by_source: dict[str, list[str]] = defaultdict(list)
    for frm, to in todo:
        by_source[frm].append(to)
    bar = tqdm(total=len(todo), desc="synthesize", unit="img", disable=not progress, dynamic_ncols=True)
    t0 = time.time()
    chunk: list[tuple[str, str]] = []

    def flush():
        if not chunk:
            return
        srcs = [load_image(dataset.path_of(f)) for f, _ in chunk]
        gens = [torch.Generator().manual_seed(item_seed(seed, f, t)) for f, t in chunk]
        result = call_any_size(pipe, srcs, [poses[f] for f, _ in chunk], [poses[t] for _, t in chunk],
                               output_size=output_size, num_inference_steps=steps, guidance_scale=guidance,
                               scheduler=scheduler, generator=gens, stages=stages, refine_strength=refine_strength,
                               refine_noise=refine_noise)
        images = result.coarse_images if write == "coarse" else result.images
        for (f, t), im in zip(chunk, images):
            atomic_save_image(out_dir / pair_image_name(f, t), im)
        bar.update(len(chunk))
        bar.set_postfix(img_per_s=f"{bar.n / max(time.time() - t0, 1e-9):.2f}")
        chunk.clear()

    # Pairs of one source stay together so the pipeline encodes that source once.
    for frm in sorted(by_source):
        for to in by_source[frm]:
            chunk.append((frm, to))
            if len(chunk) == batch:
                flush()
    flush()
    bar.close()
    return {"pairs": len(pairs), "this_rank": len(mine), "written": len(todo), "skipped": len(mine) - len(todo)}


def load_poses(files: Sequence[str | Path], dataset: ReidDataset,
               pairs: Sequence[tuple[str, str]]) -> dict[str, Pose]:
    """The poses of the pair images, each in its own image's pixels."""
    names = sorted({n for p in pairs for n in p})
    return read_annotation_files(files, {n: image_size(dataset.path_of(n)) for n in names})


def configure(parser):
    from pcdms_aug.utils.argtypes import (add_annotations_argument, batch_int, choice_list, finite_float, items_int,
                                          seed_int, steps_int)
    from pcdms_aug.pipelines.pipeline_config import ORDER

    parser.add_argument("--pairs", required=True, help="pairs CSV (from,to)")
    parser.add_argument("--dataset", required=True, help="re-ID dataset folder (any layout pcdms_aug.data.layouts "
                                                          "reads), or torchreid's root above it")
    parser.add_argument("--layout", choices=LAYOUTS + ("cuhk03-labeled",), default=None,
                        help="the dataset's layout (default: detected)")
    add_annotations_argument(parser, "annotation CSV(s) of the pair images (default: market-annotation-*.csv "
                                     "beside the split folders)")
    parser.add_argument("--weights", required=True, help="'tiny', a saved pipeline folder, or a pipeline YAML")
    parser.add_argument("--out", required=True, help="folder for <from>_to_<to>.png")
    parser.add_argument("--steps", type=steps_int, default=None, help="per stage (default: the pipeline's own)")
    parser.add_argument("--scheduler", default=None, choices=SAMPLERS,
                        help="default: the pipeline's own")
    parser.add_argument("--guidance", type=finite_float(0.0), default=None,
                        help="one scale for every stage (default: the pipeline's own per stage)")
    parser.add_argument("--refine-strength", type=finite_float(0.0, 1.0, lo_open=True), default=None,
                        help="stage 3 starts from the coarse image noised this far (1: from noise; default: the "
                             "pipeline's own)")
    parser.add_argument("--refine-noise", type=finite_float(0.0, 1.0), default=None,
                        help="scale of that noise, 0 to 1 (0: a deterministic start; default: the pipeline's own)")
    parser.add_argument("--batch", type=batch_int, default=8)
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--stages", type=choice_list(ORDER), default=ORDER,
                        help="comma list; without refine the coarse stage-2 image is the output")
    parser.add_argument("--max-pairs", type=items_int, default=None, help="a seeded sample of the pairs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate every image of a folder made with other settings (replaced one by one)")
    add_dtype_argument(parser)


SETTINGS = "synthesize.json"


def _no_files(out: Path) -> list[Path]:
    return []  # --overwrite makes each image again in place; no file of the folder is deleted


PROTOCOL = Protocol("synthesize-pairs", SETTINGS, "pcdms-aug synthesize-pairs v1", _no_files)


def run(args):
    from pcdms_aug.generation.inputs import weights_fingerprint
    from pcdms_aug.data.doctor import default_annotations
    from pcdms_aug.utils.paths import check_out_dir
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline
    from pcdms_aug.utils.runtime import init_runtime

    out = check_out_dir(args.out, inputs=[("the dataset", args.dataset), ("the pairs CSV", args.pairs),
                                          ("the annotations", args.annotations), ("the weights", args.weights)],
                        command=PROTOCOL.command, own=run_folder.owns(PROTOCOL))
    rt = init_runtime(args.device, args.dtype)
    dataset = open_dataset(args.dataset, args.layout)
    pairs = read_pairs(args.pairs)
    if args.max_pairs and len(pairs) > args.max_pairs:
        import random
        pairs = random.Random(args.seed).sample(pairs, args.max_pairs)
    poses = load_poses(args.annotations or default_annotations(dataset.root), dataset, pairs)
    pipe = PCDMsPipeline.load(args.weights, rt.device, args.dtype)
    settings = {"weights": weights_fingerprint(args.weights, pipe), "steps": args.steps,
                "scheduler": args.scheduler, "guidance": args.guidance, "refine_strength": args.refine_strength,
                "refine_noise": args.refine_noise, "seed": args.seed, "stages": list(args.stages),
                "dtype": str(pipe.dtype).replace("torch.", "")}
    if rt.is_main:  # refused here, before anything is written (the lock makes the folder)
        run_folder.check(out, PROTOCOL, settings, args.overwrite)
    import contextlib

    from pcdms_aug.utils.io import folder_lock

    with folder_lock(out) if rt.is_main else contextlib.nullcontext():
        return _run_locked(args, rt, pipe, pairs, dataset, poses, out, settings)


def _run_locked(args, rt, pipe, pairs, dataset, poses, out, settings) -> int:
    mode = "overwrite" if args.overwrite else "resume"
    if rt.is_main:
        mode = run_folder.check(out, PROTOCOL, settings, args.overwrite)
        run_folder.begin(out, PROTOCOL, settings, mode)
    if rt.distributed:
        from pcdms_aug.utils.runtime import barrier
        barrier()
    counts = synthesize(pipe, pairs, dataset, poses, out, batch=args.batch, steps=args.steps,
                        guidance=args.guidance, refine_strength=args.refine_strength,
                        refine_noise=args.refine_noise, scheduler=args.scheduler, seed=args.seed,
                        stages=tuple(args.stages), rank=rt.rank, world=rt.world_size, progress=rt.is_main,
                        keep_existing=mode != "overwrite")
    print(f"[synthesize-pairs] rank {rt.rank}: wrote {counts['written']}, skipped {counts['skipped']} finished, "
          f"of {counts['pairs']} pairs -> {args.out}")
    return 0
