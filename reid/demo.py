"""`pcdms-aug demo`: the whole loop on the synthetic Market-1501 with the shipped tiny weights, in minutes.

synthetic Market-1501 -> low-data subsets (one per seed) -> new-pose views of each subset -> re-ID (osnet_x0_25)
on the subset + views against three controls on real images only (the subset as it is; the subset trained for
the augmented run's steps; the subset repeated to the augmented run's image count, same steps) -> synthesis
metrics on test pairs (stage 2 alone and the full pipeline, beside copy-the-source) -> DIR/report.md, led by the
gain over the strongest control per seed, with tables, a contact sheet and plots. Every part is resumable:
running the demo again reuses what is finished.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from pcdms_aug.utils.io import atomic_save_image, atomic_write_text

# The controls are the point: a gain is only claimed over the strongest of them (same subset and seed).
VARIANTS = ["baseline", "augmented", "baseline_steps", "duplicated"]


@contextmanager
def _part(name: str, timings: dict):
    print(f"[demo] {name} ...", flush=True)
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0
    print(f"[demo] {name}: {timings[name]:.1f} s", flush=True)


def configure(parser):
    from pcdms_aug.generation.names import MAX_VIEWS_PER_SOURCE
    from pcdms_aug.utils.argtypes import finite_float, int_in, seed_int, steps_int

    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--weights", default="tiny", help="'tiny' (shipped), a saved pipeline folder or a YAML")
    parser.add_argument("--fraction", type=finite_float(0.0, 1.0, lo_open=True), default=0.2, help="fraction of real training images kept")
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--views", type=int_in(1, MAX_VIEWS_PER_SOURCE), default=2, help="generated views per real training image (default 2)")
    from pcdms_aug.utils.argtypes import choice_list
    from pcdms_aug.pipelines.pipeline_config import ORDER
    # Stage 2's image, not the refined one: with the tiny weights it served re-ID better at convergence
    # (docs/experiments.md, "Levers").
    parser.add_argument("--stages", type=choice_list(ORDER), default=("prior", "inpaint"),
                        help="stages that make the re-ID views (default: prior,inpaint)")
    parser.add_argument("--steps", type=steps_int, default=None,
                        help="denoising steps of every stage (default: the weights' own per stage)")
    parser.add_argument("--metric-pairs", type=int_in(1, 100_000), default=120, help="test pairs scored by the synthesis metrics")
    parser.add_argument("--epochs", type=int_in(1, 1000), default=8, help="re-ID training epochs")
    parser.add_argument("--train-ids", type=int_in(1, 9999), default=60)
    parser.add_argument("--test-ids", type=int_in(1, 9999), default=60)
    parser.add_argument("--world-seed", type=seed_int, default=0,
                        help="seed of the synthetic world drawn (default 0: the world the shipped tiny weights "
                             "were trained on, so their views are of people they saw, the paper's protocol; "
                             "another seed draws people they never saw)")


def run(args):
    import torch

    from pcdms_aug.config.loading import load_config
    from pcdms_aug.data.synthetic import build_synthetic_market
    from pcdms_aug.metrics.command import format_table
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline

    from .experiment import run_experiment

    torch.set_num_threads(max(1, torch.get_num_threads()))
    from pcdms_aug.utils.paths import check_out_dir, claim_dir

    out = check_out_dir(args.out, inputs=[("the weights", args.weights)], command="demo",
                        own=lambda o: (o / "report.md").is_file() or (o / "data").is_dir() and (o / "reid").is_dir())
    claim_dir(out, "demo")
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    with _part("build synthetic Market-1501", timings):
        data = build_synthetic_market(out / "data", args.train_ids, args.test_ids, seed=args.world_seed,
                                      progress=False)
    with _part("load weights", timings):
        pipe = PCDMsPipeline.load(args.weights)

    # The re-ID model and schedule are configs/tiny/reid.yaml's, as for `pcdms-aug reid-experiment tiny/reid.yaml`.
    reid_cfg = {**load_config("tiny/reid.yaml"),
                "root": str(data), "dataset": "synthetic", "fractions": [args.fraction],
                "seeds": list(args.seeds), "variants": VARIANTS, "out_dir": str(out / "reid"),
                "epochs": args.epochs, "generated_dir": str(out / "generated" / "f{fraction}_s{seed}")}
    with _part("low-data subsets", timings):
        run_experiment(reid_cfg, splits_only=True, progress=False)
    with _part("generate views", timings):
        _generate_views(args, data, out, pipe)
    with _part("re-ID: augmented against the controls", timings):
        df = run_experiment(reid_cfg, progress=True)
    with _part("synthesis metrics", timings):
        pairs, ds, poses, metrics = _synthesis_metrics(args, data, out, pipe)

    with _part("report", timings):
        _contact_sheet(pairs[:8], ds, poses, out)
        shutil.copyfile(out / "reid" / "results.csv", out / "results.csv")
        timings["total"] = time.perf_counter() - t_all
        _report(out, args, df, metrics, timings, format_table, pipe, reid_cfg)
    print(f"[demo] done in {timings['total']:.0f} s")
    print(f"[demo] report: {out / 'report.md'}\n[demo] results: {out / 'results.csv'}")
    return 0


def _generate_views(args, data: Path, out: Path, pipe) -> None:
    """The views of each seed's low-data subset, into the folder the experiment's ``generated_dir`` names."""
    from pcdms_aug.generation import GenerateConfig, generate
    from pcdms_aug.data.splits import split_filename

    for seed in args.seeds:
        split = out / "reid" / "splits" / split_filename(args.fraction, seed)
        cfg = GenerateConfig(dataset=str(data), weights=args.weights, out=str(out / "generated" /
                             f"f{args.fraction:g}_s{seed}"), views=args.views, split=str(split),
                             steps=args.steps, stages=tuple(args.stages), seed=seed, batch=16)
        generate(cfg, rank=0, world=1, pipeline=pipe, progress=True)


def _synthesis_metrics(args, data: Path, out: Path, pipe):
    """Stage 2 alone and the full pipeline on a seeded sample of the test pairs, scored; -> (pairs, dataset,
    test poses, metrics per output)."""
    from pcdms_aug.data.market import MarketDataset
    from pcdms_aug.metrics import compute_metrics
    from pcdms_aug.data.pose import read_annotations, read_pairs
    from pcdms_aug.generation.pairs import synthesize

    pairs = read_pairs(data / "market-pairs-test.csv")
    pairs = random.Random(0).sample(pairs, min(args.metric_pairs, len(pairs)))
    poses = {**read_annotations(data / "market-annotation-test.csv")}
    ds = MarketDataset(data)
    for write, stages in (("final", ("prior", "inpaint", "refine")), ("coarse", ("prior", "inpaint"))):
        synthesize(pipe, pairs, ds, poses, out / "synthesis" / write, batch=16, steps=args.steps,
                   stages=stages, write=write, progress=False)
    metrics = {w: compute_metrics(pairs, out / "synthesis" / w, data, progress=False) for w in ("final", "coarse")}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    return pairs, ds, poses, metrics


def _contact_sheet(pairs, ds, poses, out: Path) -> None:
    from PIL import Image

    from pcdms_aug.data.viz import pair_sheet

    sheet = pair_sheet(pairs, ds, poses, {n: out / "synthesis" / n for n in ("coarse", "final")})
    atomic_save_image(out / "contact_sheet.png", sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST))


def _steps_text(steps, pipe) -> str:
    if steps is not None:
        return f"{steps} denoising steps per stage"
    samp = pipe.config.get("sampling") or {}
    own = samp.get("steps") or {}
    text = "denoising steps " + " / ".join(f"{n} {own[n]}" for n in ("prior", "inpaint", "refine") if n in own)
    if "refine_strength" in samp:
        text += f", stage 3 from the coarse image at strength {samp['refine_strength']:g}"
        text += f" with noise scale {samp.get('refine_noise', 1.0):g}"
    return text


def _lead(df) -> list[str]:
    """The report's first section: did the views beat the strongest control, in words and per seed?"""
    from . import report

    return [*report.lead_lines(df),
            "Controls (real images only, same subset and seed): `baseline` (its own epochs), `baseline_steps` (the "
            "augmented run's optimizer steps and learning-rate drops), `duplicated` (the subset repeated to the "
            "augmented run's image count, same steps). The gain is augmented minus the best control of each seed.",
            ""]


def _report(out: Path, args, df, metrics, timings, format_table, pipe, reid_cfg) -> None:
    from pcdms_aug.stages.diffusion import sampler_name

    from . import report
    from .experiment import make_config, protocol_notes

    scheduler = sampler_name(pipe.inpaint_scheduler)
    reid_md = (out / "reid" / "results.md").read_text() if (out / "reid" / "results.md").is_file() else ""
    # Its title and its lead, which leads this report too.
    reid_md = "\n".join(line for line in reid_md.splitlines() if not line.startswith("# "))
    reid_md = reid_md.replace("\n".join(report.lead_lines(df)), "").strip()
    protocol = "; ".join(protocol_notes(make_config(reid_cfg)))
    lines = [
        "# pcdms-aug demo report", "",
        f"Synthetic Market-1501 (world seed {args.world_seed}, {args.train_ids} training / {args.test_ids} test "
        f"identities), shipped tiny "
        f"weights, {_steps_text(args.steps, pipe)} ({scheduler.upper()}). Re-ID: osnet_x0_25 from scratch, "
        f"{int(args.fraction * 100)}% of the real training images, {args.views} generated view(s) per kept image "
        f"(stages {', '.join(args.stages)}), seeds {', '.join(map(str, args.seeds))}; {protocol}.",
        "These numbers are measured on the synthetic set by this run; they are not Market-1501 numbers. The demo's "
        "re-ID runs are short (not trained to convergence): `pcdms-aug reid-experiment tiny/reid.yaml converge=true "
        "max_steps=3000` compares the variants at convergence (docs/experiments.md).", "",
        *[f"What the generator saw: {line}." for line in report.generator_lines(df)], "",
        *_lead(df),
        "## Downstream re-ID (every variant)", "", reid_md, "", "![CMC](reid/cmc.png)", "",
        "## Synthesis (test pairs of the synthetic set)", "",
        "Full pipeline (prior -> inpaint -> refine):", "", format_table(metrics["final"]), "",
        "Stage 2 alone (prior -> inpaint, the coarse image):", "", format_table(metrics["coarse"]), "",
        "![contact sheet: source, target pose, coarse, final, ground truth](contact_sheet.png)", "",
        "## Time per part (s)", "", "| part | seconds |", "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()], "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
