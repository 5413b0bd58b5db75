"""Crops of any size: keypoints in each image's own pixels, the generator at its working size, every view saved at
its source's size; inspect, generate, synthesize-pairs and the training pairs on a synthetic set whose crops are
resized to several sizes (keypoints scaled with them)."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pcdms_aug.cli.main import main
from pcdms_aug.data.market import MarketDataset, image_sizes, load_image
from pcdms_aug.data.pose import Pose, read_annotations, write_annotations
from pcdms_aug.generation import GenerateConfig, generate
from pcdms_aug.generation.any_size import call_any_size
from pcdms_aug.generation.plan import read_plan
from pcdms_aug.utils.errors import DataError

WEIGHTS = "tiny/pipeline.yaml"  # random weights, working size 128x64
# (height, width): Market's own, taller and wider than 2:1 (stretched to the working size), and 2:1 at twice
# the size (taken by the pipeline as it is).
SIZES = ((128, 64), (160, 72), (96, 52), (256, 128))


def _scaled(pose: Pose, size) -> Pose:
    """Keypoints of an image resized to ``size``, in whole pixels inside it (the CSV stores whole pixels)."""
    s = pose.scaled(size)
    return Pose(np.clip(np.rint(s.xy), 0, [size[1] - 1, size[0] - 1]), s.visible, size)


@pytest.fixture(scope="module")
def sized(synth_market, tmp_path_factory):
    """The synthetic set with its i-th image (sorted by name) resized to SIZES[i % 4] and every annotation CSV
    scaled to match; returns (root, {name: size}, {name: original 128x64 pose})."""
    root = tmp_path_factory.mktemp("sized") / "market1501"
    sizes, originals = {}, {}
    ds = MarketDataset(synth_market)
    for i, it in enumerate(sorted(ds.all_images(), key=lambda it: it.filename)):
        size = SIZES[i % len(SIZES)]
        folder = root / it.path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(it.path) as im:
            im.convert("RGB").resize((size[1], size[0]), Image.BICUBIC).save(folder / it.filename, quality=95)
        sizes[it.filename] = size
    for csv_file in synth_market.glob("market-annotation-*.csv"):
        poses = read_annotations(csv_file)
        originals.update(poses)
        write_annotations(root / csv_file.name, {n: _scaled(p, sizes[n]) for n, p in poses.items()})
    for kept in ("synthetic.json", "market-pairs-test.csv"):
        shutil.copy(synth_market / kept, root / kept)
    return root, sizes, originals


@pytest.fixture(scope="module")
def pipe():
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline

    return PCDMsPipeline.from_config(WEIGHTS, seed=0).to("cpu", torch.float32)


def test_inspect_checks_keypoints_against_each_images_own_size(sized, tmp_path, capsys):
    root, sizes, _ = sized
    assert main(["inspect", str(root), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["problems"] == [] and set(r["image_sizes"]) == {f"{h}x{w}" for h, w in SIZES}
    assert sum(c["with_torso"] for c in r["pose_coverage"].values()) == r["pair_valid_images"] > 0
    # A joint inside Market's 128x64 but outside its own 96x52 image is refused, naming the row.
    name = next(n for n, s in sizes.items() if s == (96, 52))
    bad = tmp_path / "bad.csv"
    row = f"{name}: [100" + ", -1" * 17 + "]: [10" + ", -1" * 17 + "]"
    bad.write_text(f"name:keypoints_y:keypoints_x\n{row}\n")
    assert main(["inspect", str(root), "--annotations", str(bad)]) == 2
    assert f"{bad}:2: {name}: joint nose at (x=10, y=100) is outside the 96x52 image" in capsys.readouterr().err
    with pytest.raises(DataError, match="outside the 128x64 image"):
        read_annotations(root / "market-annotation-train.csv")  # at Market's size for every image
    sheet = tmp_path / "sheet.png"
    assert main(["render-pose", "--annotations", str(root / "market-annotation-train.csv"), "--dataset", str(root),
                 "--out", str(sheet), "--max", "4"]) == 0 and Image.open(sheet).size[0] > 0


def test_training_pairs_read_poses_in_their_images_own_pixels(sized):
    from pcdms_aug.data.pairs import PairDataset

    root, sizes, originals = sized
    ds = PairDataset(root, root / "market-annotation-train.csv", image_size=(128, 64))
    for i in range(0, len(ds), max(1, len(ds) // 8)):
        item = ds[i]
        frm = item["names"][0]
        assert item["source_image"].shape == (3, 128, 64)
        assert ds.poses[frm].size == sizes[frm]
        # The same body in the same place: the vector of the resized crop's pose is the original's, to a pixel.
        h, w = sizes[frm]
        got, want = item["source_pose"].numpy(), originals[frm].vector()
        assert np.abs(got[:36] - want[:36]).max() <= 1.0 / min(h, w) + 1e-6 and np.array_equal(got[36:], want[36:])


def _split(root, tmp_path):
    """4 training images of 2 identities with a full torso, of at least two sizes."""
    from pcdms_aug.data.splits import Split, save_split

    ds = MarketDataset(root)
    poses = read_annotations(root / "market-annotation-train.csv", image_sizes(ds.train))
    by_pid: dict[int, list[str]] = {}
    for it in ds.train:
        if poses[it.filename].has_torso():
            by_pid.setdefault(it.name.pid, []).append(it.filename)
    files = []
    for pid in sorted(by_pid):
        names = by_pid[pid]
        picked = [names[0]] + [n for n in names[1:] if poses[n].size != poses[names[0]].size][:1]
        if len(picked) == 2:
            files += picked
        if len(files) == 4:
            break
    path = tmp_path / "split.json"
    save_split(path, Split(tuple(sorted(files)), 0.05, 0, len(ds.train), len(by_pid)))
    return path, files


def test_generate_saves_every_view_at_its_sources_size(sized, pipe, tmp_path):
    root, sizes, _ = sized
    split, files = _split(root, tmp_path)
    assert len({sizes[f] for f in files}) >= 2
    out = tmp_path / "gen"
    cfg = GenerateConfig(dataset=str(root), weights=WEIGHTS, out=str(out), views=2, batch=3, steps=1, guidance=1.0,
                         split=str(split), seed=0, device="cpu")
    counts = generate(cfg, pipeline=pipe, progress=False)
    assert counts["generated"] == 8
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    for r in rows:
        with Image.open(out / r["file"]) as im:
            assert (im.height, im.width) == sizes[r["source"]], r["file"]
    # Each target pose is stored in whole pixels of its source, inside it.
    plan = read_plan(out / "plan.csv", sizes)
    for v in plan:
        h, w = sizes[v.source]
        xy = v.target.xy[v.target.visible]
        assert v.target.size == (h, w) and (xy >= 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] < h).all()
    # A second run resumes nothing and changes nothing
    again = generate(cfg, pipeline=pipe, progress=False)
    assert again["generated"] == 0 and again["batches_done_before"] == again["batches_this_rank"]


def test_synthesize_pairs_writes_each_image_at_its_sources_size(sized, tmp_path, capsys):
    root, sizes, _ = sized
    pairs = tmp_path / "pairs.csv"
    rows = [line for line in (root / "market-pairs-test.csv").read_text().splitlines()[1:]][:6]
    pairs.write_text("from,to\n" + "\n".join(rows) + "\n")
    assert len({sizes[r.split(",")[0]] for r in rows}) >= 2
    out = tmp_path / "syn"
    assert main(["synthesize-pairs", "--pairs", str(pairs), "--dataset", str(root), "--weights", WEIGHTS,
                 "--out", str(out), "--steps", "1", "--guidance", "1", "--batch", "4", "--device", "cpu"]) == 0
    for r in rows:
        frm, to = r.split(",")
        with Image.open(out / f"{frm}_to_{to}.png") as im:
            assert (im.height, im.width) == sizes[frm]


def test_a_mixed_batch_gives_what_each_source_gives_alone(sized, pipe):
    """The stretched path conditions on the same body as the plain call: a 128x64 source (the working size, so
    nothing is resized) gives the same view in a batch with a 160x72 one as alone, to float noise; the 160x72
    one gives a view of its own size whose pixels follow its 128x64 rendering."""
    root, sizes, _ = sized
    ds = MarketDataset(root)
    poses = read_annotations(root / "market-annotation-train.csv", image_sizes(ds.train))
    a = next(n for n, p in poses.items() if p.size == (128, 64) and p.has_torso())
    b = next(n for n, p in poses.items() if p.size == (160, 72) and p.has_torso())
    ims = [load_image(ds.path_of(n)) for n in (a, b)]
    targets = [poses[b], poses[a]]  # each other's pose, in the other image's pixels

    def gens():
        return [torch.Generator().manual_seed(s) for s in (1, 2)]

    kw = dict(num_inference_steps=1, guidance_scale=1.0, stages=("prior", "inpaint", "refine"))
    mixed = call_any_size(pipe, ims, [poses[a], poses[b]], targets, generator=gens(), **kw)
    assert [im.size for im in mixed.images] == [(64, 128), (72, 160)]
    alone = pipe(ims[0], poses[a], targets[:1], generator=gens()[:1], **kw)
    diff = np.abs(np.asarray(mixed.images[0], np.int16) - np.asarray(alone.images[0], np.int16))
    assert diff.max() <= 2
    working = call_any_size(pipe, ims, [poses[a], poses[b]], targets, generator=gens(), output_size="working", **kw)
    assert [im.size for im in working.images] == [(64, 128), (64, 128)]
    back = working.images[1].resize((72, 160), Image.BICUBIC)
    assert np.array_equal(np.asarray(back), np.asarray(mixed.images[1]))


@pytest.mark.parametrize("layout,crop", [("msmt17", (192, 80)), ("dukemtmcreid", (160, 72))])
def test_drawn_layout_annotate_then_generate_then_inspect(layout, crop, drawn_layouts, pipe, tmp_path, capsys):
    """A dataset in another layout with crops not 128x64, poses by annotate (the posed ViTPose fixture: a standing
    person in every crop, so every image is a source), then generate and inspect."""
    from pcdms_aug.data.layouts import open_dataset
    from pcdms_aug.testing.vitpose_fixture import write_vitpose_folder

    vitpose = write_vitpose_folder(tmp_path / "vitpose", posed=True)
    ann = tmp_path / "poses.csv"
    assert main(["annotate", str(drawn_layouts), "--layout", layout, "--splits", "train", "--estimator", str(vitpose),
                 "--out", str(ann), "--device", "cpu"]) == 0
    ds = open_dataset(drawn_layouts, layout)
    poses = read_annotations(ann, image_sizes(ds.train))
    assert len(poses) == len(ds.train) and {p.size for p in poses.values()} == {crop}
    out = tmp_path / "gen"
    cfg = GenerateConfig(dataset=str(drawn_layouts), layout=layout, annotations=str(ann), weights=WEIGHTS,
                         out=str(out), views=1, batch=4, steps=1, guidance=1.0, seed=0, device="cpu")
    counts = generate(cfg, pipeline=pipe, progress=False)
    assert counts["generated"] == counts["planned"] == counts["sources"] > 0
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_name = {it.filename: it for it in ds.train}
    for r in rows[:6]:
        src = by_name[r["source"]]
        assert (int(r["pid"]), int(r["camid"])) == (src.pid, src.camid + 1)  # the source's identity and camera
        with Image.open(out / r["file"]) as im:
            assert (im.height, im.width) == crop
    capsys.readouterr()
    assert main(["inspect", str(drawn_layouts), "--layout", layout, "--annotations", str(ann), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == layout and report["image_sizes"] == {f"{crop[0]}x{crop[1]}": len(list(ds.all_images()))}
    assert report["pose_coverage"]["train"]["with_torso"] == len(ds.train) and report["train_ids"] == len(
        {it.pid for it in ds.train})
    assert report["problems"] == []


def test_synthesize_pairs_on_a_drawn_layout(drawn_layouts, tmp_path, capsys):
    """DukeMTMC-reID's layout (160x72 crops): the annotation files beside it found by default, every image at
    its source's size, measured by metrics against its ground truth."""
    root = drawn_layouts / "dukemtmc-reid"
    rows = (root / "pairs-test.csv").read_text().splitlines()[1:5]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("from,to\n" + "\n".join(rows) + "\n")
    out = tmp_path / "syn"
    assert main(["synthesize-pairs", "--pairs", str(pairs), "--dataset", str(root), "--weights", WEIGHTS, "--out",
                 str(out), "--steps", "1", "--guidance", "1", "--device", "cpu"]) == 0
    for r in rows:
        with Image.open(out / "{}_to_{}.png".format(*r.split(","))) as im:
            assert (im.height, im.width) == (160, 72)
    capsys.readouterr()
    assert main(["metrics", "--pairs", str(pairs), "--generated", str(out), "--dataset", str(root), "--config",
                 "tiny/metrics.yaml", "--json", "--no-progress", "lpips.enabled=false", "fid.enabled=false",
                 "fid_reid.enabled=false"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_pairs"] == 4 and report["n_missing"] == 0 and report["protocol"]["size"] == [160, 72]


def test_training_pairs_of_a_drawn_layout_group_by_torchreids_identities(drawn_layouts):
    """MSMT17's names carry no Market-1501 identity rule (its person 0000 is a person): the training pairs come
    from the identities torchreid reads, every pair within one of them, each image at the training size."""
    from pcdms_aug.data.layouts import open_dataset
    from pcdms_aug.data.pairs import PairDataset

    root = drawn_layouts / "msmt17"
    ds = PairDataset(root, root / "annotation-train.csv", image_size=(128, 64))
    pid = {it.filename: it.pid for it in open_dataset(root).train}
    assert ds.pairs and all(pid[a] == pid[b] and a != b for a, b in ds.pairs)
    assert 0 in {pid[a] for a, _ in ds.pairs}
    item = ds[0]
    assert item["source_image"].shape == (3, 128, 64) and ds.poses[item["names"][0]].size == (192, 80)
