"""`pcdms-aug pose-agreement`: how far one annotation CSV agrees with a reference one, joint by joint.

PCK at half the torso length: a joint of the reference counts as found when the other file has it within
``alpha`` (0.5) times the image's torso length, the distance between the midpoint of the reference's shoulders and
the midpoint of its hips. Only images whose reference has both shoulders and both hips count (no torso, no
scale); a joint the other file leaves out (-1) where the reference has it is a miss. Joints the other file has
and the reference does not are counted apart ("extra"): OpenPose and ViTPose disagree on what is visible.
Both files are in the same pixels (the images' own), so the measure needs no image.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pcdms_aug.data.pose import JOINTS, MISSING, NUM_JOINTS, read_annotation_rows
from pcdms_aug.utils.errors import DataError

SHOULDERS = (JOINTS.index("Rsho"), JOINTS.index("Lsho"))
HIPS = (JOINTS.index("Rhip"), JOINTS.index("Lhip"))


def torso_length(xy: np.ndarray) -> float | None:
    """Shoulder midpoint to hip midpoint of an (18, 2) (x, y) array with -1 for missing joints; None without
    all four joints."""
    if (xy[list(SHOULDERS + HIPS)] == MISSING).any():
        return None
    return float(np.linalg.norm(xy[list(SHOULDERS)].mean(0) - xy[list(HIPS)].mean(0)))


def agreement(reference: dict, other: dict, alpha: float = 0.5) -> dict:
    """PCK of ``other`` against ``reference`` ({name: (18, 2) (x, y) arrays, -1 missing}) over their common
    images: per joint and over all joints, with the counts behind each number."""
    common = sorted(set(reference) & set(other))
    if not common:
        raise DataError("the two annotation files name no image in common")
    found = np.zeros(NUM_JOINTS, int)
    present = np.zeros(NUM_JOINTS, int)
    left_out = np.zeros(NUM_JOINTS, int)
    extra = np.zeros(NUM_JOINTS, int)
    scored = 0
    for name in common:
        ref, oth = reference[name], other[name]
        torso = torso_length(ref)
        if torso is None or torso == 0:
            continue
        scored += 1
        ref_vis, oth_vis = ref[:, 0] != MISSING, oth[:, 0] != MISSING
        close = np.linalg.norm(ref - oth, axis=1) <= alpha * torso
        present += ref_vis
        found += ref_vis & oth_vis & close
        left_out += ref_vis & ~oth_vis
        extra += ~ref_vis & oth_vis
    if not scored:
        raise DataError("no common image has both shoulders and both hips in the reference: no torso to scale by")
    joints = {JOINTS[j]: {"pck": None if not present[j] else round(float(found[j] / present[j]), 4),
                          "reference_joints": int(present[j]), "found": int(found[j]),
                          "left_out": int(left_out[j]), "extra": int(extra[j])} for j in range(NUM_JOINTS)}
    return {"alpha": alpha, "common_images": len(common), "scored_images": scored,
            "no_reference_torso": len(common) - scored,
            "reference_only": len(set(reference) - set(other)), "other_only": len(set(other) - set(reference)),
            "pck": round(float(found.sum() / max(present.sum(), 1)), 4), "joints": joints}


def compare_files(reference: str | Path, other: str | Path, alpha: float = 0.5) -> dict:
    def arrays(path):
        return {name: arr for name, (arr, _) in read_annotation_rows(path).items()}

    report = agreement(arrays(reference), arrays(other), alpha)
    return {"reference": str(reference), "other": str(other), **report}


def format_report(r: dict) -> str:
    lines = [f"PCK@{r['alpha']:g} torso of {Path(r['other']).name} against {Path(r['reference']).name}: "
             f"{r['pck']:.4f} over {r['scored_images']} images ({r['no_reference_torso']} without a reference "
             f"torso; {r['reference_only']} only in the reference, {r['other_only']} only in the other)",
             f"  {'joint':6s} {'PCK':>7s} {'joints':>7s} {'left out':>9s} {'extra':>6s}"]
    for name, j in r["joints"].items():
        pck = "-" if j["pck"] is None else f"{j['pck']:.4f}"
        lines.append(f"  {name:6s} {pck:>7s} {j['reference_joints']:7d} {j['left_out']:9d} {j['extra']:6d}")
    return "\n".join(lines)


def configure(parser):
    from pcdms_aug.utils.argtypes import finite_float

    parser.add_argument("reference", help="the reference annotation CSV (e.g. the real market-annotation-train.csv)")
    parser.add_argument("other", help="the annotation CSV to measure (e.g. written by pcdms-aug annotate)")
    parser.add_argument("--alpha", type=finite_float(0.0, lo_open=True), default=0.5,
                        help="the distance that counts as found, in torso lengths")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    report = compare_files(args.reference, args.other, args.alpha)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
