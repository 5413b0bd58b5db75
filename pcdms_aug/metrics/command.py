"""`pcdms-aug metrics`: a table (or JSON) of SSIM, PSNR, LPIPS, FID, FID-reid for generated and copy-source, and
the FIDs of the ground truth."""
from __future__ import annotations

import json
import logging
import math

from pcdms_aug.utils.io import atomic_write_text
from pcdms_aug.utils.io import MARK_KEY, mark
from pcdms_aug.metrics.config import as_config
from pcdms_aug.metrics.evaluate import compute_metrics

COLUMNS = (("ssim", "SSIM", "{:.4f}"), ("psnr", "PSNR", "{:.3f}"), ("lpips", "LPIPS", "{:.4f}"),
           ("fid", "FID", "fid"), ("fid_reid", "FID-reid", "fid"))
ROW_NAMES = (("generated", "generated"), ("copy_source", "copy-source"), ("ground_truth", "ground truth"))
ABSENT = object()


def _cell(value, fmt: str, sd=None) -> str:
    if value is ABSENT:
        return "-"
    if value is None:
        return "refused"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if fmt == "fid":  # FIDs on other features live on other scales: keep 4 significant digits when small
        text = f"{value:.3f}" if abs(value) >= 1 else f"{value:.4g}"
        return text if sd is None else f"{text} ± {sd:.3f}"
    return fmt.format(value)


def format_table(result: dict) -> str:
    """A markdown table (rows: generated, copy-source, ground truth; "-" where a row has no such metric, "± sd"
    where FIDs were bootstrapped), then what each row and column is, refusals and notes."""
    head = ["row"] + [title for _, title, _ in COLUMNS] + ["n_pairs"]
    # The ground-truth row holds FIDs only: left out where none was computed.
    rows = [(key, name) for key, name in ROW_NAMES if key in result
            and (key != "ground_truth" or any(result[key].get(k) is not None for k in ("fid", "fid_reid")))]
    body = [[name] + [_cell(result[key].get(k, ABSENT), fmt, result[key].get(f"{k}_sd")) for k, _, fmt in COLUMNS]
            + [str(result[key]["n_pairs"])] for key, name in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in body]
    labels = result["labels"]
    out.append("")
    for key, name in rows:
        out.append(f"{name}: {labels[key]}")
    for k, title, _ in COLUMNS:
        text = f"{title}: {labels.get(k, k)}"
        if k in result["refused"]:
            text += f" -- refused: {result['refused'][k]}"
        out.append(text)
    for note in result.get("notes", []):
        out.append(f"note: {note}")
    return "\n".join(out)


TABLE_HEAD = f"<!-- {mark('metrics')} -->"  # first line of a table written to --out (hidden when rendered)


def configure(parser) -> None:
    from pcdms_aug.utils.argtypes import int_in

    parser.add_argument("--pairs", required=True, help="pairs CSV (from,to) whose targets were generated")
    parser.add_argument("--generated", required=True, metavar="DIR",
                        help="folder of <from>_to_<to>.png (the names as in the CSV, extension kept)")
    parser.add_argument("--dataset", required=True, metavar="ROOT",
                        help="re-ID dataset folder (any layout pcdms_aug.data.layouts reads) holding the ground-truth "
                             "targets and the training images")
    parser.add_argument("--config", default=None,
                        help="metrics YAML (e.g. tiny/metrics.yaml, paper/metrics.yaml): weight paths, batch size")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. lpips.alexnet_weights=/w/alexnet-owt-7be5be79.pth")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the config's, auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--out", metavar="FILE", help="also write the output (table, or JSON with --json or a "
                                                      ".json name) to FILE")
    parser.add_argument("--allow-missing", action="store_true",
                        help="evaluate the pairs whose generated image exists and say how many are missing")
    parser.add_argument("--best-of", type=int_in(1, 1000), metavar="K", default=None,
                        help="ORACLE protocol of upstream: read <from>_to_<to>_<k>.png, k=0..K-1, and keep the "
                             "sample closest (SSIM) to the ground truth. Uses the ground truth, so it is not "
                             "available when augmenting; labelled as such. Never the default")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from pcdms_aug.config.loading import apply_overrides, load_config, to_dict

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raw = load_config(args.config) if args.config else to_dict(as_config(None))
    raw = apply_overrides(raw, args.overrides or [])
    if args.device:
        raw["device"] = args.device
    if args.out is not None:
        from pcdms_aug.utils.paths import check_out_file, written_by

        check_out_file(args.out, inputs=[("the pairs CSV", args.pairs), ("the generated folder", args.generated),
                                         ("the dataset", args.dataset), ("the config", args.config)],
                       command="metrics", own=written_by("metrics", first_line=TABLE_HEAD))
    result = compute_metrics(args.pairs, args.generated, args.dataset, raw, allow_missing=args.allow_missing,
                             best_of=args.best_of, progress=not args.no_progress)
    as_json = args.json or (args.out or "").endswith(".json")
    text = json.dumps({**result, MARK_KEY: mark("metrics")}, indent=2) if as_json else format_table(result)
    if args.out:
        # The mark says this command wrote the file, so a rerun may replace it (and no file of the user's).
        atomic_write_text(args.out, (text if as_json else f"{TABLE_HEAD}\n{text}") + "\n")
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
