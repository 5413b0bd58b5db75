"""The plan of a generation run: every view's source image, target pose, noise seed, file name and batch.

The plan is computed once, up front, from the settings alone and written to ``OUT/plan.csv``; a resumed run, and
every rank of a distributed one, reads that file, so which image is made from what never depends on how the
work was split or interrupted. Views are grouped into fixed batches (``group``): a group is always generated as
one forward pass, so even float rounding that depends on the batch composition is the same on every run.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from pcdms_aug.data.layouts import is_identity
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_write_text
from pcdms_aug.data.pose import NUM_JOINTS, Pose, PoseBank
from pcdms_aug.utils.runtime import item_seed
from pcdms_aug.generation.names import MAX_VIEWS_PER_SOURCE, view_name

log = logging.getLogger(__name__)
POLICIES = ("random", "canonical", "coverage")
PER = ("image", "identity")
MAX_POSES = 1000  # k of the canonical and coverage policies (k-means centres)
PLAN_COLUMNS = ("index", "group", "file", "pid", "camid", "source", "view", "target_pose_origin",
                "target_pose_index", "seed", "target_keypoints_y", "target_keypoints_x")


@dataclass(frozen=True)
class Source:
    """A real training image that views are generated from."""

    name: str
    path: Path
    pid: int
    camid: int
    pose: Pose
    ordinal: int  # position among its identity's sources (sorted names): the frame field of its views' names


@dataclass(frozen=True)
class PlannedView:
    index: int  # position in the plan
    group: int  # the batch it is generated in
    file: str
    pid: int
    camid: int
    source: str
    view: int  # view number of its source (the box field of the name)
    target_origin: str  # the pool image whose pose it is, or "canonical:<k>"
    target_index: int  # index of that pose in the pose pool
    seed: int  # seeds this image's noise: derived from (run seed, source, view)
    target: Pose


@dataclass
class SourceSet:
    """Training images usable as sources, and what was left out (counted, for the run's report)."""

    sources: list[Source]
    counts: dict

    def by_pid(self) -> dict[int, list[Source]]:
        out: dict[int, list[Source]] = defaultdict(list)
        for s in self.sources:
            out[s.pid].append(s)
        return dict(out)


def identity_and_camera(it) -> tuple[int, int]:
    """(identity, 1-based camera) of a training image: a MarketDataset image or a layouts.ReidImage."""
    return (it.name.pid, it.name.camid) if hasattr(it, "name") else (it.pid, it.camid + 1)


def collect_sources(dataset, poses: Mapping[str, Pose], split: Iterable[str] | None = None,
                    require_torso: bool = True, split_path=None) -> SourceSet:
    """The training images of ``dataset`` (a layouts.ReidDataset or a MarketDataset; of ``split`` where given)
    with a pose annotation, sorted by name.

    Junk and distractor images never are sources. Images without an annotation, and (``require_torso``) those
    whose annotation lacks a shoulder or hip, are skipped and counted: the stages were trained on pairs with
    the whole torso annotated.
    """
    train = [it for it in dataset.train if is_identity(dataset, it)]
    counts = {"train_images": len(dataset.train), "junk_or_distractor": len(dataset.train) - len(train),
              "not_in_split": 0, "no_annotation": 0, "no_torso": 0}
    if split is not None:
        wanted = set(split)
        present = {it.filename for it in train}
        unknown = sorted(wanted - present)
        if unknown:
            raise DataError(f"{len(unknown)} image(s) of the split are not training images of {dataset.root} "
                            f"(e.g. {unknown[0]}); was the split made for another dataset?", split_path)
        counts["not_in_split"] = len(train) - len(wanted)
        train = [it for it in train if it.filename in wanted]
    kept = []
    for it in sorted(train, key=lambda it: it.filename):
        pose = poses.get(it.filename)
        if pose is None:
            counts["no_annotation"] += 1
        elif require_torso and not pose.has_torso():
            counts["no_torso"] += 1
        else:
            kept.append(it)
    ordinal: dict[int, int] = defaultdict(int)
    sources = []
    for it in kept:
        pid, camid = identity_and_camera(it)
        sources.append(Source(it.filename, it.path, pid, camid, poses[it.filename], ordinal[pid]))
        ordinal[pid] += 1
    counts["sources"] = len(sources)
    counts["identities"] = len(ordinal)
    if not sources:
        raise DataError("no usable source image: every training image lacks a pose annotation"
                        + (" or a full torso" if require_torso else "")
                        + f" ({counts['no_annotation']} without annotation, {counts['no_torso']} without torso)",
                        dataset.root)
    return SourceSet(sources, counts)


def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng(item_seed(seed, *[str(k) for k in keys]))


class TargetPoses:
    """The pose pool (the sources' own poses with a full torso) and the three target-pose policies.

    Each policy yields, for one identity, ``(pool index, origin)`` for each of its ``n`` views; the planner
    decides which source each view comes from.
    """

    def __init__(self, sources: Sequence[Source], seed: int, canonical_poses: int = 8,
                 coverage_candidates: int = 32):
        pool = [s for s in sources if s.pose.has_torso()]
        if not pool:
            raise DataError("no source pose with both shoulders and hips: the target pose pool is empty")
        self.names = [s.name for s in pool]
        self.poses = [s.pose for s in pool]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.bank = PoseBank(self.poses, self.names, require_torso=False)
        self.seed = seed
        self.canonical_poses = int(canonical_poses)
        self.coverage_candidates = int(coverage_candidates)
        self._canonical: dict[int, list[int]] = {}
        self._candidates = None

    def canonical_indices(self, k: int) -> list[int]:
        """Pool indices of the k k-means canonical poses (PoseBank.canonical returns real pool poses)."""
        if k not in self._canonical:
            ids = {id(p): i for i, p in enumerate(self.poses)}
            self._canonical[k] = [ids[id(p)] for p in self.bank.canonical(k, seed=self.seed)]
        return self._canonical[k]

    def random(self, pid: int, slots: Sequence[Source]) -> list[tuple[int, str]]:
        """The paper's protocol: any pool pose but the source's own, drawn per (seed, source, view)."""
        out = []
        seen: dict[str, int] = defaultdict(int)
        for src in slots:
            j = seen[src.name]
            seen[src.name] += 1
            own = self.index.get(src.name)
            n = len(self.poses) - (own is not None and len(self.poses) > 1)
            k = int(_rng(self.seed, "pose", src.name, j).integers(n))
            if own is not None and len(self.poses) > 1 and k >= own:
                k += 1
            out.append((k, self.names[k]))
        return out

    def canonical(self, pid: int, slots: Sequence[Source], per: str = "image") -> list[tuple[int, str]]:
        """PN-GAN's protocol: k canonical poses, gone through in a seeded order per source (per="image":
        K = k views give every source each canonical pose once) or per identity (per="identity")."""
        canon = self.canonical_indices(self.canonical_poses)
        out = []
        seen: dict[str, int] = defaultdict(int)
        for j, src in enumerate(slots):
            if per == "image":
                order = _rng(self.seed, "canonical", src.name).permutation(len(canon))
                c = int(order[seen[src.name] % len(canon)])
                seen[src.name] += 1
            else:
                c = int(_rng(self.seed, "canonical", pid).permutation(len(canon))[j % len(canon)])
            out.append((canon[c], f"canonical:{c}"))
        return out

    def coverage(self, pid: int, slots: Sequence[Source], own: Sequence[Pose]) -> list[tuple[int, str]]:
        """Poses far from those the identity has: greedy farthest-point order of the k-means candidates.

        Candidates are canonical poses (cluster representatives), not the whole pool, so that "far" picks an
        unseen kind of pose rather than an annotation outlier. Each pick is the candidate farthest from the
        identity's own poses and from the picks before it (ties to the lower index); more views than
        candidates go through that order again.
        """
        cand = self.canonical_indices(self.coverage_candidates)
        if self._candidates is None:
            # Distances against the candidates only (not the whole pool): cheap for every identity.
            bank = PoseBank([self.poses[i] for i in cand], require_torso=False)
            self._candidates = (bank, bank.distances(bank.poses))
        bank, between = self._candidates
        d = bank.distances(list(own)).min(axis=0)
        order = []
        for _ in range(min(len(slots), len(cand))):
            c = int(np.argmax(np.where(np.isin(np.arange(len(cand)), order), -np.inf, d)))
            order.append(c)
            d = np.minimum(d, between[c])
        return [(cand[order[j % len(order)]], self.names[cand[order[j % len(order)]]]) for j in range(len(slots))]


def make_plan(source_set: SourceSet, *, views: int, per: str, policy: str, seed: int, batch: int,
              canonical_poses: int = 8, coverage_candidates: int = 32, ext: str = "jpg") -> list[PlannedView]:
    """Every view of the run, sorted by (identity, source, view), grouped into batches of ``batch``."""
    if policy not in POLICIES:
        raise DataError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}", "--policy")
    if per not in PER:
        raise DataError(f"--per must be one of {', '.join(PER)}, got {per!r}", "--per")
    if views < 1 or batch < 1:
        raise DataError(f"views and batch must be at least 1 (got views={views}, batch={batch})")
    targets = TargetPoses(source_set.sources, seed, canonical_poses, coverage_candidates)
    rows = []
    for pid, sources in sorted(source_set.by_pid().items()):
        if per == "image":
            # Round-robin over sources: with coverage, consecutive picks (the farthest first) spread out.
            slots = [sources[i % len(sources)] for i in range(views * len(sources))]
        else:
            slots = [sources[int(_rng(seed, "source", pid, j).integers(len(sources)))] for j in range(views)]
        if policy == "random":
            picks = targets.random(pid, slots)
        elif policy == "canonical":
            picks = targets.canonical(pid, slots, per)
        else:
            picks = targets.coverage(pid, slots, [s.pose for s in sources])
        count: dict[str, int] = defaultdict(int)
        for src, (k, origin) in zip(slots, picks):
            j = count[src.name]
            count[src.name] += 1
            if j >= MAX_VIEWS_PER_SOURCE:
                raise DataError(f"source {src.name} would get more than {MAX_VIEWS_PER_SOURCE} views; ask for "
                                "fewer views per identity", "--views")
            rows.append((src, j, k, origin))
    rows.sort(key=lambda r: (r[0].pid, r[0].name, r[1]))
    plan = []
    for i, (src, j, k, origin) in enumerate(rows):
        plan.append(PlannedView(i, i // batch, view_name(src.pid, src.camid, src.ordinal, j, ext), src.pid,
                                src.camid, src.name, j, origin, k, item_seed(seed, src.name, f"view:{j}"),
                                in_frame(targets.poses[k], src.pose.size)))
    return plan


def in_frame(pose: Pose, size: tuple[int, int]) -> Pose:
    """A target pose in whole pixels of the (height, width) source it is drawn on: what plan.csv stores."""
    if pose.size == tuple(size):
        return pose
    h, w = size
    xy = np.clip(np.rint(pose.scaled(size).xy), 0, np.array([w - 1, h - 1], np.float32))
    return Pose(xy, pose.visible, size)


# -------------------------------------------------------------------------------------------- plan.csv io
def _ints(values) -> str:
    return json.dumps([int(round(float(v))) for v in values])


def write_plan(path: str | Path, plan: Sequence[PlannedView]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PLAN_COLUMNS)
    for v in plan:
        xy, vis = v.target.xy, v.target.visible
        w.writerow([v.index, v.group, v.file, v.pid, v.camid, v.source, v.view, v.target_origin,
                    v.target_index, v.seed, _ints(np.where(vis, xy[:, 1], -1)), _ints(np.where(vis, xy[:, 0], -1))])
    atomic_write_text(path, buf.getvalue())


def read_plan(path: str | Path, size: tuple[int, int] | Mapping[str, tuple[int, int]]) -> list[PlannedView]:
    """The plan's views; target poses in pixels of their source, whose (height, width) is ``size`` or
    ``size[source name]``."""
    path = Path(path)
    plan = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != PLAN_COLUMNS:
            raise DataError(f"not a plan of this version (columns {reader.fieldnames}); rerun with --overwrite",
                            path, 1)
        for line, r in enumerate(reader, start=2):
            try:
                ys, xs = json.loads(r["target_keypoints_y"]), json.loads(r["target_keypoints_x"])
                if len(ys) != NUM_JOINTS or len(xs) != NUM_JOINTS:
                    raise ValueError("keypoint count")
                if isinstance(size, Mapping) and r["source"] not in size:
                    raise DataError(f"the plan names source {r['source']}, which is no usable source now "
                                    "(annotations or split changed?); rerun with --overwrite", path, line)
                frame = size[r["source"]] if isinstance(size, Mapping) else size
                target = Pose.from_array(np.array([xs, ys], np.float32).T, frame)
                plan.append(PlannedView(int(r["index"]), int(r["group"]), r["file"], int(r["pid"]),
                                        int(r["camid"]), r["source"], int(r["view"]), r["target_pose_origin"],
                                        int(r["target_pose_index"]), int(r["seed"]), target))
            except (ValueError, TypeError, KeyError) as e:
                raise DataError(f"unreadable plan row ({e}); rerun with --overwrite", path, line) from None
            if plan[-1].index != len(plan) - 1:
                raise DataError("plan rows out of order; rerun with --overwrite", path, line)
    return plan
