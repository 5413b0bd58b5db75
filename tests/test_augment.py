"""`pcdms-aug generate`: plan, names, policies, determinism over ranks, resume after crashes, refusal, filter.

Generation uses the tiny pipeline with random weights (tiny/pipeline.yaml, seed 0) at 1 step without guidance on 4 source images
of a split of the synthetic Market-1501; the pipeline is built once per module and handed to ``generate``.
"""
from __future__ import annotations

import csv
import errno
import filecmp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdms_aug.cli import main as cli
from pcdms_aug.utils import io as aio
from pcdms_aug.generation import (FilterConfig, GenerateConfig, collect_sources, generate, view_name,
                               make_plan, outputs)
from pcdms_aug.data.market import MarketDataset, parse_name
from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.pose import read_annotations

WEIGHTS = "tiny/pipeline.yaml"
TORCHREID_NAME = re.compile(r"([-\d]+)_c(\d)")  # torchreid's Market1501 parser
REPO = Path(__file__).resolve().parent.parent
BOOKKEEPING = {"manifest.csv", "plan.csv", "generate.json", "generate.log", "shards", "filter", "views.png",
               ".pcdms-aug-owner.json"}


@pytest.fixture(scope="module")
def pipe():
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline

    return PCDMsPipeline.from_config(WEIGHTS, seed=0).to("cpu", torch.float32)


@pytest.fixture(scope="module")
def market(synth_market):
    ds = MarketDataset(synth_market)
    poses = read_annotations(synth_market / "market-annotation-train.csv")
    return ds, poses


@pytest.fixture(scope="module")
def split_file(market, tmp_path_factory):
    """A low-data split (pcdms_aug.data.splits format) of 4 images: 2 identities x 2 images with a full torso."""
    from pcdms_aug.data.splits import Split, save_split

    ds, poses = market
    by_pid: dict[int, list[str]] = {}
    for it in ds.train:
        if poses[it.filename].has_torso():
            by_pid.setdefault(it.name.pid, []).append(it.filename)
    pids = sorted(by_pid)[:2]
    files = tuple(sorted(n for p in pids for n in by_pid[p][:2]))
    path = tmp_path_factory.mktemp("split") / "split.json"
    save_split(path, Split(files, 0.05, 0, len(ds.train), len(by_pid)))
    return path


def make_cfg(market, split_file, out, **kw) -> GenerateConfig:
    # guidance 1 skips the unconditional pass: half the sampling cost of a test
    base = dict(dataset=str(market[0].root), weights=WEIGHTS, out=str(out), views=1, batch=2, steps=1,
                guidance=1.0, split=str(split_file), seed=0, device="cpu")
    base.update(kw)
    return GenerateConfig(**base)


def images_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in BOOKKEEPING)


def read_rows(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(a: Path, b: Path):
    """Same image files (names and bytes, nothing else: no temporaries) and the same manifest."""
    assert images_of(a) == images_of(b)
    for name in images_of(a):
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()


@pytest.fixture(scope="module")
def reference(market, split_file, pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "ref"
    counts = generate(make_cfg(market, split_file, out), pipeline=pipe, progress=False)
    return out, counts


# ------------------------------------------------------------------------------------------------ names
def test_names_parse_and_never_collide_with_real_ones(market):
    ds, poses = market
    plan = make_plan(collect_sources(ds, poses), views=3, per="image", policy="random", seed=0, batch=4)
    real = {it.filename for it in ds.all_images()}
    names = [v.file for v in plan]
    assert len(set(names)) == len(names)
    assert not set(names) & real
    for v in plan:
        m = TORCHREID_NAME.search(v.file)
        assert (int(m.group(1)), int(m.group(2))) == (v.pid, v.camid)
        parsed = parse_name(v.file)
        assert (parsed.pid, parsed.camid, parsed.sequence, parsed.box) == (v.pid, v.camid, 9, v.view)
        src = parse_name(v.source)
        assert (src.pid, src.camid) == (v.pid, v.camid)
    # Real Market-1501 uses sequences s1..s6 only, so sequence 9 cannot name a real image.
    from .conftest_data import REAL

    shared = REAL / "market-annotation-train.csv"
    if shared.is_file():
        seqs = {parse_name(line.split(":")[0]).sequence for line in shared.read_text().splitlines()[1:] if line}
        assert max(seqs) < 9
    assert {parse_name(it.filename).sequence for it in ds.all_images()} <= set(range(1, 7))
    assert view_name(2, 3, 17, 99) == "0002_c3s9_000017_99.jpg"
    with pytest.raises(DataError, match="at most 100 views"):
        view_name(2, 3, 17, 100)


# --------------------------------------------------------------------------------------------- policies
def test_policies_give_valid_poses(market):
    ds, poses = market
    sources = collect_sources(ds, poses)
    pool = {s.name: s.pose for s in sources.sources}
    own = sources.by_pid()
    for policy in ("random", "canonical", "coverage"):
        plan = make_plan(sources, views=8, per="image", policy=policy, seed=0, batch=8, canonical_poses=8,
                         coverage_candidates=16)
        assert len(plan) == 8 * len(sources.sources)
        pool_names = sorted(pool)
        for v in plan:
            assert v.target.has_torso() and v.target.size == (128, 64)
            xy = v.target.xy[v.target.visible]
            assert (xy >= 0).all() and (xy[:, 0] < 64).all() and (xy[:, 1] < 128).all()
            assert v.target == pool[pool_names[v.target_index]]
            if policy == "random":
                assert v.target_origin == pool_names[v.target_index] and v.target_origin != v.source
        if policy == "canonical":
            # K = k: every source gets each of the 8 canonical poses once
            per_source: dict[str, set] = {}
            for v in plan:
                assert re.fullmatch(r"canonical:[0-7]", v.target_origin)
                per_source.setdefault(v.source, set()).add(v.target_origin)
            assert all(len(s) == 8 for s in per_source.values())

    # coverage: poses farther from those the identity already has than the paper's random draw
    from pcdms_aug.generation import TargetPoses

    bank = TargetPoses(sources.sources, 0).bank
    mean_dist = {}
    for policy in ("random", "coverage"):
        plan = make_plan(sources, views=3, per="identity", policy=policy, seed=0, batch=4, coverage_candidates=16)
        assert len(plan) == 3 * len(own)
        d = [bank.distances([s.pose for s in own[v.pid]])[:, v.target_index].min() for v in plan]
        mean_dist[policy] = float(np.mean(d))
        if policy == "coverage":
            for pid in own:  # farthest-point picks do not repeat while candidates remain
                assert len({v.target_index for v in plan if v.pid == pid}) == 3
    assert mean_dist["coverage"] > 1.2 * mean_dist["random"]


def test_views_sheet_shows_each_identity_with_its_poses_and_views(reference, market, split_file, pipe, tmp_path):
    from PIL import Image

    from pcdms_aug.generation.outputs import PROTOCOL
    from pcdms_aug.generation.run_folder import remove_own

    out, _ = reference
    rows = read_rows(out)
    with Image.open(out / "views.png") as sheet:
        assert sheet.format == "PNG"
        # 2 identities of 64x32 views: label strip + 2 rows; source + (pose, view) per view of a source
        views = max(sum(r["source"] == s for r in rows) for s in {r["source"] for r in rows})
        assert sheet.height == 12 + 2 * (128 + 2) + 2 and sheet.width == (1 + 2 * views) * (64 + 2) + 2
        first = np.asarray(sheet.convert("RGB"))[14:14 + 128, 2 + 2 * 66:2 + 2 * 66 + 64]  # row 1, view 1
    view = rows[0]["file"]
    assert np.array_equal(first, np.asarray(Image.open(out / view).convert("RGB").resize((64, 128), Image.BICUBIC)))
    again = tmp_path / "again"
    generate(make_cfg(market, split_file, again), pipeline=pipe, progress=False)
    assert (again / "views.png").read_bytes() == (out / "views.png").read_bytes()
    remove_own(again, PROTOCOL)
    assert not (again / "views.png").exists()


# ------------------------------------------------------------------------- determinism, ranks, resume
def failing_writer(real_write, k: int, exc: BaseException):
    """The atomic writer, raising ``exc`` from the (k+1)-th image on (settings and plan are written as usual)."""
    calls = {"n": 0}

    def write(path, data):
        if Path(path).suffix == ".jpg":
            if calls["n"] >= k:
                raise exc
            calls["n"] += 1
        real_write(path, data)
    return write


def test_two_rank_shards_with_crashes_equal_one_run(reference, market, split_file, pipe, tmp_path, monkeypatch):
    ref, counts = reference
    assert counts["generated"] == 4 and counts["complete"] and counts["manifest_rows"] == 4
    out = tmp_path / "ranks"
    cfg = make_cfg(market, split_file, out)
    real_write = aio.atomic_write_bytes

    # rank 1 of 2: the disk fills up after one image; the run stops with a clear error, then resumes
    monkeypatch.setattr(aio, "atomic_write_bytes", failing_writer(real_write, 1, OSError(errno.ENOSPC, "full")))
    with pytest.raises(DataError, match="no space left on device .* run the same command again"):
        generate(cfg, rank=1, world=2, pipeline=pipe, progress=False)
    assert len(images_of(out)) == 1
    monkeypatch.setattr(aio, "atomic_write_bytes", real_write)
    c1 = generate(cfg, rank=1, world=2, pipeline=pipe, progress=False)
    assert c1["generated"] == 1 and not (out / "manifest.csv").exists()  # rank 1 does not merge

    # rank 0 of 2: crashes after one image, then resumes and merges both shards
    monkeypatch.setattr(aio, "atomic_write_bytes", failing_writer(real_write, 1, RuntimeError("simulated crash")))
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(cfg, rank=0, world=2, pipeline=pipe, progress=False)
    assert len(images_of(out)) == 3
    monkeypatch.setattr(aio, "atomic_write_bytes", real_write)
    c0 = generate(cfg, rank=0, world=2, pipeline=pipe, progress=False)
    assert c0["generated"] == 1 and c0["complete"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["manifest-rank0-of-2.jsonl",
                                                                   "manifest-rank1-of-2.jsonl"]
    assert_same_run(ref, out)

    rows = read_rows(ref)
    assert list(rows[0]) == list(outputs.MANIFEST_COLUMNS)
    assert [r["file"] for r in rows] == images_of(ref)
    assert {r["score"] for r in rows} == {""} and {r["kept"] for r in rows} == {"1"}
    weights = json.loads((ref / "generate.json").read_text())["settings"]["weights"]
    assert {r["policy"] for r in rows} == {"random"} and {r["weights"] for r in rows} == {weights}
    for r in rows:
        assert r["file"].startswith(f"{int(r['pid']):04d}_c{r['camid']}s9_")
        assert parse_name(r["source"]).pid == int(r["pid"])
    # a rerun (one rank now) finds everything finished and changes nothing
    again = generate(cfg, pipeline=pipe, progress=False)
    assert again["generated"] == 0 and again["batches_done_before"] == again["batches"]
    assert_same_run(ref, out)
    # the re-ID side reads the folder: our manifest reader, and torchreid's own Market1501 file-name parser
    from reid.datasets import read_manifest
    import torchreid
    Market1501 = torchreid.data.datasets.Market1501
    views = read_manifest(out)
    assert [v.path.name for v in views] == images_of(ref) and all(v.kept for v in views)
    parsed = sorted((Path(p).name, pid, camid) for p, pid, camid in Market1501.process_dir(None, str(out)))
    assert parsed == [(r["file"], int(r["pid"]), int(r["camid"]) - 1) for r in rows]


def test_shard_log_ignores_a_torn_line(tmp_path):
    log = outputs.ShardLog(tmp_path, 0, 1)
    log.add(0, None, {"a.jpg": None})
    with open(log.path, "a") as f:
        f.write('{"group": 1, "scorer": null, "sco')  # killed mid-line
    log = outputs.ShardLog(tmp_path, 0, 1)  # a rerun appends after a newline
    log.add(2, None, {"c.jpg": None})
    assert sorted(outputs.read_shard_logs(tmp_path, None)) == [0, 2]


# ------------------------------------------------------------------------------------------------ refusal
def test_refuses_foreign_manifest_and_changed_settings(reference, market, split_file, pipe, tmp_path, capsys):
    ref, _ = reference
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.csv").write_text("file,pid,camid\n")
    with pytest.raises(DataError, match=r"did not write \(e.g. .manifest.csv.\)"):
        generate(make_cfg(market, split_file, foreign), pipeline=pipe, progress=False)

    copy = tmp_path / "copy"
    shutil.copytree(ref, copy)
    with pytest.raises(DataError, match="other settings.*seed: 0 -> 1"):
        generate(make_cfg(market, split_file, copy, seed=1), pipeline=pipe, progress=False)
    rc = cli.main(["generate", "--dataset", str(market[0].root), "--weights", WEIGHTS, "--out", str(copy),
                   "--split", str(split_file), "--views", "1", "--batch", "2", "--steps", "3", "--guidance", "1",
                   "--device", "cpu",
                   "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "generate.json" in err[0] and "steps: 1 -> 3" in err[0]
    assert_same_run(ref, copy)  # nothing touched

    # --overwrite replaces the run: files of the old plan that the new one lacks are removed
    keep = copy / "not_ours.txt"
    keep.write_text("user file")
    counts = generate(make_cfg(market, split_file, copy, per="identity", overwrite=True), pipeline=pipe,
                      progress=False)
    assert counts["generated"] == counts["planned"] == 2
    assert set(images_of(copy)) == {r["file"] for r in read_rows(copy)} | {"not_ours.txt"}
    assert (copy / ".pcdms-aug-owner.json").read_text().strip() == '{"command": "generate"}'  # claimed


# ------------------------------------------------------------------------------------------------ filter
def test_filter_scores_and_keeps_with_a_torchreid_model(reference, market, split_file, pipe, tmp_path):
    import torchreid

    ref, _ = reference
    torch.manual_seed(0)
    model = torchreid.models.build_model("osnet_x0_25", num_classes=5, loss="softmax", pretrained=False)
    ckpt = tmp_path / "model.pth.tar-1"
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, ckpt)
    out = tmp_path / "filtered"
    shutil.copytree(ref, out)
    filt = FilterConfig(model=str(ckpt), arch="osnet_x0_25", size=(128, 64), top=0.5)
    counts = generate(make_cfg(market, split_file, out, filter=filt), pipeline=pipe, progress=False)
    # a filter added to a finished run scores the images on disk; nothing is generated again
    assert counts["generated"] == 0 and counts["rescored"] == 4
    rows = read_rows(out)
    scores = [float(r["score"]) for r in rows]
    assert all(-1.0 <= s <= 1.0 for s in scores) and len(set(scores)) == 4
    for pid in {r["pid"] for r in rows}:  # top half of each identity's 2 views: the better one
        mine = [r for r in rows if r["pid"] == pid]
        best = max(mine, key=lambda r: float(r["score"]))
        assert [r["kept"] for r in mine] == ["1" if r is best else "0" for r in mine]

    # the score is the cosine to the mean normalised feature of the identity's real (split) images
    from pcdms_aug.data.market import load_image
    from pcdms_aug.metrics.reid_features import load_reid_features
    from pcdms_aug.data.splits import load_split

    net = load_reid_features("osnet_x0_25", ckpt, (128, 64))

    def feat(path):
        x = torch.from_numpy(np.asarray(load_image(path), np.float32) / 255).permute(2, 0, 1)[None]
        f = net(x)[0].double().detach().numpy()
        return f / np.linalg.norm(f)

    r = rows[0]
    reals = [market[0].root / "bounding_box_train" / n for n in load_split(split_file).files
             if parse_name(n).pid == int(r["pid"])]
    mean = np.mean([feat(p) for p in reals], axis=0)
    assert float(r["score"]) == pytest.approx(float(feat(out / r["file"]) @ mean / np.linalg.norm(mean)), abs=1e-5)

    # another rule re-merges without scoring again; the scores stay
    median = float(np.median(scores))
    filt2 = FilterConfig(model=str(ckpt), arch="osnet_x0_25", size=(128, 64), threshold=median)
    counts = generate(make_cfg(market, split_file, out, filter=filt2), pipeline=pipe, progress=False)
    assert counts["generated"] == counts["rescored"] == 0
    rows2 = read_rows(out)
    assert [float(r["score"]) for r in rows2] == scores
    assert [r["kept"] for r in rows2] == ["1" if s >= median else "0" for s in scores]
    assert counts["kept"] == sum(s >= median for s in scores)
    from reid.datasets import read_manifest, select_views
    assert len(select_views(read_manifest(out), kept_only=True)) == counts["kept"]


# ------------------------------------------------------------------------------------------------ bad input
def test_unannotated_sources_are_skipped_and_counted(market, split_file, pipe, tmp_path, capsys):
    from pcdms_aug.data.splits import load_split

    ds, poses = market
    files = load_split(split_file).files
    ann = tmp_path / "ann.csv"
    lines = (ds.root / "market-annotation-train.csv").read_text().splitlines()
    ann.write_text("\n".join(ln for ln in lines if not ln.startswith(files[:3])) + "\n")
    out = tmp_path / "out"
    rc = cli.main(["generate", "--config", "tiny/generate.yaml", "--dataset", str(ds.root), "--annotations",
                   str(ann), "--weights", WEIGHTS, "--out", str(out), "--split", str(split_file), "--views", "1",
                   "--steps", "1", "--guidance", "1", "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "skipped 3: 3 without a pose annotation" in captured.out
    assert "3 training image(s) skipped as sources: 3 without a pose annotation" in (out / "generate.log").read_text()
    assert [r["source"] for r in read_rows(out)] == [files[3]]
    assert json.loads((out / "generate.json").read_text())["counts"]["no_annotation"] == 3

    missing = tmp_path / "no_weights"
    with pytest.raises(DataError, match="weights folder not found") as e:
        generate(make_cfg(market, split_file, tmp_path / "o2", weights=str(missing)), progress=False)
    assert e.value.path == str(missing)
    rc = cli.main(["generate", "--dataset", str(ds.root), "--weights", str(missing), "--out", str(tmp_path / "o3")])
    assert rc == 2 and str(missing) in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- processes
def _cli(out: Path, market_root: Path, split_file: Path) -> list[str]:
    return ["generate", "--dataset", str(market_root), "--weights", WEIGHTS, "--out", str(out), "--split",
            str(split_file), "--views", "1", "--batch", "2", "--steps", "1", "--guidance", "1", "--seed", "0",
            "--device", "cpu", "--no-progress"]


@pytest.mark.slow
def test_kill9_then_rerun_gives_the_expected_set(reference, market, split_file, pipe, tmp_path):
    ref, _ = reference
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "pcdms_aug", *_cli(out, market[0].root, split_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.suffix == ".jpg" for p in out.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= len([n for n in images_of(out) if n.endswith(".jpg")]) < 4
    generate(make_cfg(market, split_file, out), pipeline=pipe, progress=False)
    assert_same_run(ref, out)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_run(reference, market, split_file, tmp_path):
    ref, _ = reference
    out = tmp_path / "torchrun"
    # the reference's thread count: float rounding depends on it (torchrun would set 1 per process)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pcdms_aug", *_cli(out, market[0].root, split_file)],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["manifest-rank0-of-2.jsonl",
                                                                   "manifest-rank1-of-2.jsonl"]
    assert_same_run(ref, out)


@pytest.mark.slow
def test_filter_model_train_quick_path(reference, market, split_file, pipe, tmp_path):
    ref, _ = reference
    out = tmp_path / "trained"
    shutil.copytree(ref, out)
    filt = FilterConfig(model="train", arch="osnet_x0_25", size=(128, 64), train_epochs=1, top=0.5)
    counts = generate(make_cfg(market, split_file, out, filter=filt), pipeline=pipe, progress=False)
    assert counts["generated"] == 0 and counts["rescored"] == 4 and counts["kept"] == 2
    ckpt = out / "filter" / "osnet_x0_25-128x64-e1.pth.tar"
    assert ckpt.is_file()
    assert all(r["score"] for r in read_rows(out))
    # the checkpoint is reused, not trained again: the scores stand
    again = generate(make_cfg(market, split_file, out, filter=filt), pipeline=pipe, progress=False)
    assert again["rescored"] == 0
