"""`pcdms-aug synth-market`: the embedded default dataset, a synthetic Market-1501 built from procedural people.

Layout, names and files are Market-1501's (``bounding_box_train``, ``query``, ``bounding_box_test``; 128x64 JPEGs
named ``0002_c1s1_000451_03.jpg``; ``-1`` junk and ``0000`` distractors in the gallery) plus the annotation CSVs of
the true keypoints (train, test and query), the test pairs CSV and ``synthetic.json`` (the settings; it marks the
folder as ours). Six cameras, every identity seen by two or more, about 17 images per training identity, one query
per camera a test identity appears in, walking people in tracklets (a person keeps a direction within a camera).

Same settings, same bytes: every random draw comes from a seed derived from (seed, what, which), files are
written in sorted order, JPEG quality is fixed and nothing records a time.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pcdms_aug.utils.errors import DataError, shown
from pcdms_aug.utils.io import atomic_save_image, atomic_write_text
from pcdms_aug.data.pose import Pose, read_annotations, write_annotations, write_pairs
from pcdms_aug.data import people as pp
from pcdms_aug.data import posegen as pg
from pcdms_aug.data.market import SPLITS, make_pairs

log = logging.getLogger(__name__)

VERSION = 1  # bump when the drawing or the plan changes: a build of another version is not reused
DEFAULT_TRAIN_IDS, DEFAULT_TEST_IDS, DEFAULT_SEED = 60, 60, 0
CAMERAS = 6
JPEG_QUALITY = 90
META = "synthetic.json"  # the build's settings; a folder holding it is a synthetic Market-1501
IMAGES_PER_ID = 17.2  # real Market-1501: 12,936 training images of 751 identities
CAMERAS_PER_ID = {2: 0.06, 3: 0.14, 4: 0.25, 5: 0.3, 6: 0.25}  # mean 4.5, as real: 3,368 queries / 750 ids
MEAN_CAMERAS = sum(k * p for k, p in CAMERAS_PER_ID.items())
# Real bounding_box_test: 13,115 identity images, 3,819 junk, 2,798 distractors.
JUNK_PER_GALLERY, DISTRACTORS_PER_GALLERY = 3819 / 13115, 2798 / 13115
# What the -1 and 0000 crops show, fitted to the real test annotations: junk has 49% of its joints missing and
# 23% without any keypoint (mostly pieces of people); distractors 89% and 78% (mostly false detections).
JUNK_MODES = {"part": 0.2, "shifted": 0.32, "loose": 0.28, "background": 0.2}
DISTRACTOR_MODES = {"background": 0.74, "part": 0.13, "shifted": 0.05, "loose": 0.08}
PAIRS_PER_TEST_ID = 16  # real: 12,000 test pairs over 750 identities
ANNOTATIONS = {"train": "market-annotation-train.csv", "gallery": "market-annotation-test.csv",
               "query": "market-annotation-query.csv"}
PAIRS = "market-pairs-test.csv"
_STREAM = {"plan": 1, "look": 2, "camera": 3, "image": 4}


def _rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM[stream], *[int(k) + 2 for k in keys]]))


@dataclass(frozen=True)
class Item:
    """One image to draw: where it goes and everything its drawing depends on besides its own seed."""

    split: str  # train | query | gallery
    name: str
    kind: str  # person | junk | distractor
    pid: int  # the identity drawn (person); 0 otherwise
    cam: int
    yaw: float
    phase: float
    index: int  # seeds the image's own random draws

    @property
    def rel(self) -> str:
        return f"{SPLITS[self.split]}/{self.name}"


def plan(train_ids: int, test_ids: int, seed: int) -> list[Item]:
    """Every image of the dataset, sorted by file path."""
    rng = _rng(seed, "plan")
    # Identity numbers are spread over 1..1501 and shuffled between train and test, as in the real set.
    pids = sorted(int(p) for p in rng.choice(np.arange(1, 1502), train_ids + test_ids, replace=False))
    order = rng.permutation(len(pids))
    train = sorted(pids[i] for i in order[:train_ids])
    test = sorted(pids[i] for i in order[train_ids:])
    cam_weights = rng.dirichlet(np.full(CAMERAS, 8.0))  # some cameras see more people than others
    names: set[str] = set()
    items: list[Item] = []

    def name_for(prefix: str, cam: int, seq: int, frame: int) -> tuple[str, int]:
        while True:
            name = f"{prefix}_c{cam}s{seq}_{frame:06d}_{int(rng.integers(1, 4)):02d}.jpg"
            if name not in names:
                names.add(name)
                return name, frame
            frame += 1

    def identity(pid: int, is_test: bool):
        k = int(rng.choice(list(CAMERAS_PER_ID), p=list(CAMERAS_PER_ID.values())))
        cams = sorted(int(c) + 1 for c in rng.choice(CAMERAS, k, replace=False, p=cam_weights))
        # Test identities: one query per camera on top of the gallery images, and every camera keeps at least
        # one gallery image, so that every query has a true match in another camera.
        base = 3 if is_test else 2
        extra = int(round(rng.gamma(2.5, (IMAGES_PER_ID - 2 * MEAN_CAMERAS) / 2.5)))
        counts = np.full(k, base) + rng.multinomial(extra, np.full(k, 1.0 / k))
        # A person passes the cameras within minutes: mostly the same recording sequence, nearby frames.
        seq0, frame0 = int(rng.integers(1, 7)), int(rng.integers(1, 140000))
        for cam, n in zip(cams, counts):
            yaw = pg.sample_track_yaw(rng)
            seq = seq0 if rng.random() < 0.7 else int(rng.integers(1, 7))
            frame = frame0 + int(rng.integers(0, 8000)) if seq == seq0 else int(rng.integers(1, 150000))
            phase = float(rng.uniform(0, 2 * np.pi))
            for j in range(int(n)):
                frame += int(rng.integers(4, 40))
                phase += float(rng.uniform(0.9, 2.4))
                name, frame = name_for(f"{pid:04d}", cam, seq, frame)
                split = ("query" if j == 0 else "gallery") if is_test else "train"
                items.append(Item(split, name, "person", pid, cam, yaw, phase, len(items)))

    for pid in train:
        identity(pid, False)
    for pid in test:
        identity(pid, True)
    n_gallery = sum(it.split == "gallery" for it in items)
    for kind, prefix, count in (("junk", "-1", round(JUNK_PER_GALLERY * n_gallery)),
                                ("distractor", "0000", round(DISTRACTORS_PER_GALLERY * n_gallery))):
        for _ in range(count):
            cam = int(rng.choice(CAMERAS, p=cam_weights)) + 1
            name, _ = name_for(prefix, cam, int(rng.integers(1, 7)), int(rng.integers(1, 150000)))
            items.append(Item("gallery", name, kind, 0, cam, pg.sample_track_yaw(rng),
                              float(rng.uniform(0, 2 * np.pi)), len(items)))
    return sorted(items, key=lambda it: it.rel)


class _World:
    """Looks, bodies and cameras, made on first use from their own seeds."""

    def __init__(self, seed: int):
        self.seed = seed
        self.cameras = {c: pp.make_camera(c, _rng(seed, "camera", c)) for c in range(1, CAMERAS + 1)}
        self._people: dict[int, tuple[pg.Body, pp.Look]] = {}

    def person(self, pid: int) -> tuple[pg.Body, pp.Look]:
        if pid not in self._people:
            rng = _rng(self.seed, "look", pid)
            self._people[pid] = (pg.sample_body(rng), pp.sample_look(rng))
        return self._people[pid]


def _compose(item: Item, world: _World, draw: bool) -> tuple[Pose, np.ndarray | None]:
    """The true keypoints of an item and (when ``draw``) its image. The pose is drawn from the image's own
    seed before any pixel, so it is the same whether or not the image is drawn."""
    rng = _rng(world.seed, "image", item.index)
    cam = world.cameras[item.cam]
    if item.kind == "person":
        body, look = world.person(item.pid)
    else:
        body, look = pg.sample_body(rng), pp.sample_look(rng)
    view = pg.sample_view(rng, body, item.yaw, cam.scale, item.phase)
    skel: pg.Skeleton | None = None
    clutter = 0
    if item.kind != "person":
        modes = JUNK_MODES if item.kind == "junk" else DISTRACTOR_MODES
        mode = rng.choice(list(modes), p=list(modes.values()))
        if mode == "part":  # a box on a piece of a person
            scale = view.scale * rng.uniform(1.1, 1.7)
            view = replace(view, scale=scale, cx=view.cx + rng.normal(0, 10),
                           neck_y=float(rng.uniform(-60 * scale, 40)))
        elif mode == "shifted":  # a box half off the person
            view = replace(view, cx=view.cx + rng.choice([-1, 1]) * rng.uniform(12, 26))
        elif mode == "loose":  # a whole person, boxed less tightly than the annotated identities
            view = replace(view, cx=view.cx + rng.normal(0, 5), neck_y=view.neck_y + rng.normal(0, 5),
                           scale=view.scale * rng.uniform(0.75, 1.1))
        else:  # a false detection on the scene
            view, clutter = None, int(rng.integers(1, 4))
    if view is not None:
        skel = pg.Skeleton(body, view)
        pose = pg.annotate(skel, rng)
    else:
        pose = Pose(np.full((18, 2), -1.0), np.zeros(18, bool), (pg.H, pg.W))
    if not draw:
        return pose, None
    return pose, pp.render(skel, look, cam, rng, clutter=clutter)


def _settings(train_ids: int, test_ids: int, seed: int) -> dict:
    return {"train_ids": int(train_ids), "test_ids": int(test_ids), "seed": int(seed), "version": VERSION}


def _check(out: Path, settings: dict) -> bool:
    """True when ``out`` already holds this exact build; raise when it holds anything else."""
    from pcdms_aug.utils.paths import check_out_dir

    check_out_dir(out, "OUT")
    if not out.exists():
        return False
    if not out.is_dir():
        raise DataError("output exists and is not a folder", out)
    entries = [p for p in out.iterdir()]
    if not entries:
        return False
    meta_path = out / META
    if not meta_path.is_file():
        raise DataError(f"folder is not empty and holds no {META}: refusing to write a synthetic dataset into "
                        "it (choose a new or empty folder)", out)
    from pcdms_aug.config.loading import read_json

    meta = read_json(meta_path, META)
    if not isinstance(meta, dict) or meta.get("settings") != settings:
        old = meta.get("settings") if isinstance(meta, dict) else None
        raise DataError(f"holds a synthetic build with other settings {shown(old)}, asked for {settings}: choose another "
                        "folder or delete this one", meta_path)
    return bool(meta.get("complete"))


def build_synthetic_market(out: str | Path, train_ids: int = DEFAULT_TRAIN_IDS, test_ids: int = DEFAULT_TEST_IDS,
                           seed: int = DEFAULT_SEED, progress: bool = True) -> Path:
    """Build the synthetic Market-1501 into ``out`` and return ``out``.

    A finished build of the same settings is returned at once; an interrupted one is completed (finished
    images are kept). A non-empty folder that is not a build of these settings is refused.
    """
    from tqdm import tqdm

    for key, value, low in (("--train-ids", train_ids, 1), ("--test-ids", test_ids, 1)):
        if int(value) < low:
            raise DataError(f"must be at least {low}, got {value}", key)
    if train_ids + test_ids > 1500:
        raise DataError(f"Market-1501 names hold identities 1..1501: train + test = {train_ids + test_ids} is "
                        "too many (at most 1500)", "--train-ids")
    out = Path(out)
    settings = _settings(train_ids, test_ids, seed)
    if _check(out, settings):
        log.info("%s already holds this synthetic build", out)
        return out
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / META, json.dumps({"generator": "pcdms-aug synth-market", "settings": settings,
                                              "complete": False}, indent=2) + "\n")
    for folder in SPLITS.values():
        (out / folder).mkdir(exist_ok=True)
    items = plan(train_ids, test_ids, seed)
    world = _World(seed)
    poses: dict[str, dict[str, Pose]] = {split: {} for split in SPLITS}
    for item in tqdm(items, desc="synth-market", unit="img", disable=not progress, dynamic_ncols=True):
        path = out / item.rel
        exists = path.is_file()
        pose, img = _compose(item, world, draw=not exists)
        poses[item.split][item.name] = pose
        if img is not None:
            from PIL import Image
            atomic_save_image(path, Image.fromarray(img), quality=JPEG_QUALITY)
    for split, name in ANNOTATIONS.items():
        write_annotations(out / name, dict(sorted(poses[split].items())))
    test_poses = read_annotations(out / ANNOTATIONS["gallery"])
    pairs = make_pairs(test_poses, max_pairs=PAIRS_PER_TEST_ID * test_ids, seed=seed)
    write_pairs(out / PAIRS, pairs)
    counts = {"train_images": len(poses["train"]), "train_ids": train_ids,
              "query_images": len(poses["query"]), "gallery_images": len(poses["gallery"]), "test_ids": test_ids,
              "junk_images": sum(it.kind == "junk" for it in items),
              "distractor_images": sum(it.kind == "distractor" for it in items),
              "cameras": CAMERAS, "test_pairs": len(pairs)}
    meta = {"generator": "pcdms-aug synth-market", "settings": settings, "complete": True, "counts": counts,
            "image_size": [pg.H, pg.W], "jpeg_quality": JPEG_QUALITY,
            "annotations": {"train": ANNOTATIONS["train"], "test": ANNOTATIONS["gallery"],
                            "query": ANNOTATIONS["query"], "pairs": PAIRS},
            "keypoint_order": "OpenPose COCO-18 as in the real CSVs (14..17: right eye, left eye, right ear, "
                              "left ear)"}
    atomic_write_text(out / META, json.dumps(meta, indent=2) + "\n")
    log.info("synthetic Market-1501 in %s: %s (%.1f s)", out, counts, time.perf_counter() - start)
    return out


def planned_poses(train_ids: int = DEFAULT_TRAIN_IDS, test_ids: int = DEFAULT_TEST_IDS, seed: int = DEFAULT_SEED,
                  split: str = "train") -> dict[str, Pose]:
    """{image name: true keypoints} that a build of these settings writes for ``split`` (train, query or
    gallery), computed without drawing a pixel: a quick way to study the pose distribution at any size."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}", "split")
    world = _World(seed)
    return {it.name: _compose(it, world, draw=False)[0] for it in plan(train_ids, test_ids, seed) if it.split == split}


def pose_comparison(synthetic_csv: str | Path, real_csv: str | Path) -> str:
    """The markdown table of docs/synthetic_pose_stats.md: synthetic versus real keypoint statistics."""
    syn = pg.pose_statistics(read_annotations(synthetic_csv).values())
    real = pg.pose_statistics(read_annotations(real_csv).values())
    return pg.compare_table(syn, real)


def configure(parser):
    from pcdms_aug.utils.argtypes import int_in, seed_int

    parser.add_argument("out", help="output folder (new, empty, or a previous build of the same settings)")
    parser.add_argument("--train-ids", type=int_in(1, 9999), default=DEFAULT_TRAIN_IDS, help="training identities")
    parser.add_argument("--test-ids", type=int_in(1, 9999), default=DEFAULT_TEST_IDS, help="test identities (query + gallery)")
    parser.add_argument("--seed", type=seed_int, default=DEFAULT_SEED)
    parser.add_argument("--compare-poses", metavar="REAL_CSV",
                        help="after building, print the keypoint statistics of the synthetic training annotations "
                             "beside those of this real annotation CSV (markdown)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    start = time.perf_counter()
    out = build_synthetic_market(args.out, train_ids=args.train_ids, test_ids=args.test_ids, seed=args.seed,
                                 progress=not args.quiet)
    meta = json.loads((out / META).read_text(encoding="utf-8"))
    c = meta["counts"]
    print(f"[synth-market] {out}: {c['train_images']} train images of {c['train_ids']} ids, {c['query_images']} "
          f"query and {c['gallery_images']} gallery images of {c['test_ids']} ids (with {c['junk_images']} junk, "
          f"{c['distractor_images']} distractors), {c['test_pairs']} test pairs "
          f"({time.perf_counter() - start:.1f} s)")
    if args.compare_poses:
        print(pose_comparison(out / ANNOTATIONS["train"], args.compare_poses))
    return 0
