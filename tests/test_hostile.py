"""Hostile and careless input, one regression test per reproduction (docs/security.md lists the promises).

Every command must answer bad input with one line naming the argument, file, row or key, create nothing
outside ``--out``, remove nothing from it that it did not create, and run no code from a file.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pcdms_aug.cli import main as cli
from pcdms_aug.cli.main import main
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_dir, atomic_path, folder_lock
from pcdms_aug.data.pose import read_annotation_files, read_annotations, read_pairs

ROW = "0001_c1s1_000001_00.jpg: [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 10, 20, 30, 40, 50, 60]: " \
      "[5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 5, 10, 15, 20, 25, 30]\n"
HEADER = "name:keypoints_y:keypoints_x\n"


def _files(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _one_error_line(err: str, command: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"pcdms-aug {command}: error:"), err
    assert "Traceback" not in err, err
    return lines[-1]


def _parser(command):
    parser = argparse.ArgumentParser(prog="pcdms-aug")
    return cli._command_parser(command, parser.add_subparsers(dest="command"))


# ------------------------------------------------------------------------------ names never are paths
@pytest.mark.parametrize("name", ["../../x.jpg", "/etc/passwd", "a/b.jpg", "..", "C:\\x.jpg", "x\\..\\y.jpg"])
def test_pairs_with_path_names_are_refused_before_anything_is_read_or_written(synth_market, tmp_path, capsys, name):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"from,to\n0001_c1s1_000001_00.jpg,x.jpg\n{name},0001_c1s1_000001_00.jpg\n")
    before = _files(tmp_path)
    assert main(["synthesize-pairs", "--pairs", str(pairs), "--dataset", str(synth_market), "--weights", "tiny",
                 "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err, "synthesize-pairs")
    assert f"{pairs}:3" in line and "not a plain file name" in line
    assert _files(tmp_path) - before <= {"out"}  # at most the (empty) output folder


def test_annotation_names_with_paths_are_refused(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text(HEADER + ROW.replace("0001_c1s1_000001_00.jpg", "../../0001_c1s1_000001_00.jpg"))
    with pytest.raises(DataError, match=r"a.csv:2: image name '\.\./\.\./0001"):
        read_annotations(csv)


def test_render_pose_names_are_plain(tmp_path, capsys):
    csv = tmp_path / "a.csv"
    csv.write_text(HEADER + ROW)
    assert main(["render-pose", "--annotations", str(csv), "--names", "../0001_c1s1_000001_00.jpg",
                 "--out", str(tmp_path / "s.png")]) == 2
    assert "not a plain file name" in _one_error_line(capsys.readouterr().err, "render-pose")
    assert not (tmp_path / "s.png").exists()


# ------------------------------------------------------------------ only our own temporaries are removed
def test_user_files_that_look_temporary_survive(tmp_path):
    from pcdms_aug.generation.run_folder import remove_temp_files

    mine = [".notes.tmp", ".holiday.tmp.jpg", ".x.1234.tmp.png"]
    for n in mine:
        (tmp_path / n).write_text("user data")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "view.jpg") as tmp:  # a crash inside the write leaves nothing behind
            tmp.write_text("half")
            raise RuntimeError("killed")
    ours = tmp_path / ".pcdms-aug-tmp-view.jpg.abc.jpg"
    ours.write_text("half-written by a killed run")
    assert remove_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mine)


def test_atomic_dir_leaves_a_users_dot_folders_alone(tmp_path):
    for n in (".stage.tmp", ".stage.old"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "keep.txt").write_text("user data")
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "v1.txt").write_text("old")
    with atomic_dir(tmp_path / "stage") as d:
        (d / "v2.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["v2.txt"]
    assert (tmp_path / ".stage.tmp" / "keep.txt").is_file() and (tmp_path / ".stage.old" / "keep.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".stage.old", ".stage.tmp", "stage"]


# -------------------------------------------------------------------------------- numbers and ranges
@pytest.mark.parametrize("command,args", [
    ("synthesize-pairs", ["--guidance", "nan"]), ("synthesize-pairs", ["--guidance", "inf"]),
    ("synthesize-pairs", ["--steps", "0"]), ("synthesize-pairs", ["--batch", "0"]),
    ("synthesize-pairs", ["--refine-strength", "0"]), ("synthesize-pairs", ["--refine-noise", "2"]),
    ("synthesize-pairs", ["--stages", "prior,bogus"]), ("synthesize-pairs", ["--max-pairs", "-1"]),
    ("synthesize-pairs", ["--weights", "tiny", "--weights", "other"]),
    ("generate", ["--guidance", "nan"]), ("generate", ["--views", "0"]), ("generate", ["--filter-top", "0"]),
    ("generate", ["--filter-threshold", "nan"]), ("generate", ["--dtype", "fp64"]),
    ("bench", ["--views", "0"]), ("bench", ["--guidance", "nan"]), ("bench", ["--dtype", "fp64"]),
    ("render-pose", ["--max", "-1"]), ("render-pose", ["--cols", "0"]), ("render-pose", ["--size", "100000x100000"]),
    ("make-refine-inputs", ["--batch", "0"]), ("metrics", ["--best-of", "0"]),
])
def test_out_of_range_arguments_are_one_line_usage_errors(command, args, capsys):
    base = {"synthesize-pairs": ["--pairs", "p", "--dataset", "d", "--weights", "tiny", "--out", "o"],
            "generate": [], "bench": [], "render-pose": ["--annotations", "a", "--out", "o.png"],
            "make-refine-inputs": ["--dataset", "d", "--annotations", "a", "--weights", "w", "--out", "o"],
            "metrics": ["--pairs", "p", "--generated", "g", "--dataset", "d"]}[command]
    if "--weights" in args and command == "synthesize-pairs":
        base = [a for a in base if a not in ("--weights", "tiny")]
    try:
        rc = main([command, *base, *args])  # refused after parsing (bench checks all arguments first) ...
    except SystemExit as e:  # ... or by argparse
        rc = e.code
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, command)
    assert args[0] in line


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(-10, 10), guidance=st.floats(allow_nan=True, allow_infinity=True, width=32),
       strength=st.one_of(st.floats(-2, 3), st.just(float("nan"))),
       noise=st.one_of(st.floats(-2, 3), st.just(float("inf"))))
def test_property_every_value_parses_to_a_valid_setting_or_is_refused(steps, guidance, strength, noise):
    argv = ["synthesize-pairs", "--pairs", "p", "--dataset", "d", "--weights", "w", "--out", "o",
            "--steps", str(steps), "--guidance", repr(guidance), "--refine-strength", repr(strength),
            "--refine-noise", repr(noise)]
    valid = steps >= 1 and np.isfinite(guidance) and guidance >= 0 and np.isfinite(strength) \
        and 0 < strength <= 1 and np.isfinite(noise) and 0 <= noise <= 1
    top = argparse.ArgumentParser(prog="pcdms-aug")
    cli._command_parser("synthesize-pairs", top.add_subparsers(dest="command"))
    if valid:
        args = top.parse_args(argv)
        assert args.steps == steps and 0 < args.refine_strength <= 1 and 0 <= args.refine_noise <= 1
    else:
        with pytest.raises(SystemExit):
            with open(os.devnull, "w") as null, _redirect_stderr(null):
                top.parse_args(argv)


class _redirect_stderr:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        self.old, sys.stderr = sys.stderr, self.f

    def __exit__(self, *exc):
        sys.stderr = self.old


# ---------------------------------------------------------------------------------------- CSV readers
@pytest.mark.parametrize("bad,match", [
    (ROW.replace("[10, 20,", "[true, 20,"), "finite numbers"),
    (ROW.replace("[10, 20,", "[NaN, 20,"), "finite numbers"),
    (ROW.replace("[10, 20,", "[Infinity, 20,"), "finite numbers"),
    (ROW.replace("[10, 20,", "[-Infinity, 20,"), "finite numbers"),
])
def test_coordinates_must_be_finite_numbers(tmp_path, bad, match):
    csv = tmp_path / "a.csv"
    csv.write_text(HEADER + bad)
    with pytest.raises(DataError, match=f"a.csv:2: .*{match}"):
        read_annotations(csv)


def test_invalid_utf8_names_its_line(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_bytes((HEADER + ROW).encode() + b"\xff\xfe" + ROW.encode())
    with pytest.raises(DataError, match=r"a.csv:3: not UTF-8"):
        read_annotations(csv)
    pairs = tmp_path / "p.csv"
    pairs.write_bytes(b"from,to\na.jpg,b.jpg\n\xc3(.jpg,b.jpg\n")
    with pytest.raises(DataError, match=r"p.csv:3: not UTF-8"):
        read_pairs(pairs)


def test_conflicting_annotations_across_files_and_duplicated_pairs_are_refused(tmp_path):
    a, b, same = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "same.csv"
    a.write_text(HEADER + ROW)
    b.write_text(HEADER + ROW.replace("[10, 20,", "[11, 20,"))
    same.write_text(HEADER + ROW)
    with pytest.raises(DataError, match=r"b.csv: image 0001_c1s1_000001_00.jpg has a different pose"):
        read_annotation_files([a, b])
    assert len(read_annotation_files([a, same])) == 1  # the same row twice is the same annotation
    pairs = tmp_path / "p.csv"
    pairs.write_text("from,to\na.jpg,b.jpg\nb.jpg,a.jpg\na.jpg,b.jpg\n")
    with pytest.raises(DataError, match=r"p.csv:4: pair a.jpg,b.jpg is listed twice \(first on line 2\)"):
        read_pairs(pairs)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([HEADER.encode(), b"from,to\n", b""]))
def test_fuzz_csv_readers_raise_only_data_errors(tmp_path_factory, data, header):
    path = tmp_path_factory.mktemp("fuzz") / "f.csv"
    path.write_bytes(header + data)
    for reader in (read_annotations, read_pairs):
        try:
            reader(path)
        except DataError as e:
            assert str(path) in str(e)


# ---------------------------------------------------------------------------------- images and folders
def test_inspect_finds_a_truncated_jpeg_and_reads_repeated_annotations(synth_market, tmp_path, capsys):
    root = tmp_path / "m"
    shutil.copytree(synth_market, root)
    victim = sorted((root / "bounding_box_train").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    a, b = root / "market-annotation-train.csv", root / "market-annotation-test.csv"
    main(["inspect", str(root), "--annotations", str(a), "--annotations", str(b), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["annotation_files"] == [str(a), str(b)]
    assert any(victim.name in p and "unreadable" in p for p in report["problems"])


def test_a_1x1_image_is_refused_as_a_source(tmp_path):
    from pcdms_aug.data.market import load_image

    Image.new("RGB", (1, 1)).save(tmp_path / "0001_c1s1_000001_00.jpg")
    with pytest.raises(DataError, match="1x1 pixels: too small"):
        load_image(tmp_path / "0001_c1s1_000001_00.jpg")


def test_outputs_never_go_into_the_dataset_or_a_file(synth_market, tmp_path, capsys):
    inside = synth_market / "bounding_box_train"
    before = _files(synth_market)
    assert main(["generate", "--dataset", str(synth_market), "--weights", "tiny", "--out", str(inside)]) == 2
    assert "inside the dataset" in _one_error_line(capsys.readouterr().err, "generate")
    pairs = synth_market / "market-pairs-test.csv"
    assert main(["synthesize-pairs", "--pairs", str(pairs), "--dataset", str(synth_market), "--weights", "tiny",
                 "--out", str(synth_market / "gen")]) == 2
    assert "inside the dataset" in _one_error_line(capsys.readouterr().err, "synthesize-pairs")
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["synthesize-pairs", "--pairs", str(pairs), "--dataset", str(synth_market), "--weights", "tiny",
                 "--out", str(afile)]) == 2
    assert "is a file" in _one_error_line(capsys.readouterr().err, "synthesize-pairs")
    for out, said in ((afile, "is a file"), (synth_market / "runs", "inside the dataset")):
        assert main(["reid-experiment", "tiny/reid.yaml", f"root={synth_market}", f"out_dir={out}",
                     "fractions=[0.5]", "seeds=[0]", "variants=[baseline]"]) == 2
        assert said in _one_error_line(capsys.readouterr().err, "reid-experiment")
    assert _files(synth_market) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused_first(synth_market, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert main(["generate", "--dataset", str(synth_market), "--weights", "tiny", "--out", str(ro / "x")]) == 2
    assert "not writable" in _one_error_line(capsys.readouterr().err, "generate")


def test_filter_model_flag_reaches_the_filter_without_a_config(synth_market, tmp_path, capsys):
    from pcdms_aug.generation.command import config_from_args

    parser = _parser("generate")
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"")
    args = parser.parse_args(["--dataset", str(synth_market), "--weights", "tiny", "--out", str(tmp_path / "o"),
                              "--filter-model", str(ckpt), "--filter-top", "0.5"])
    cfg = config_from_args(args)
    assert cfg.filter.model == str(ckpt) and cfg.filter.top == 0.5
    assert main(["generate", "--dataset", str(synth_market), "--weights", "tiny", "--out", str(tmp_path / "o"),
                 "--filter-model", str(tmp_path / "missing.pth")]) == 2
    assert "filter model not found" in _one_error_line(capsys.readouterr().err, "generate")


def test_a_folder_is_held_by_one_run_and_a_stale_lock_is_taken_over(tmp_path):
    with folder_lock(tmp_path):
        with pytest.raises(DataError, match=r"another run \(pid \d+\) is writing"):
            # the same check a second process makes: a live pid other than ours holds the lock
            lock = tmp_path / ".pcdms-aug.lock"
            host, _ = lock.read_text().split()
            lock.write_text(f"{host} {os.getppid()}\n")
            with folder_lock(tmp_path):
                pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".pcdms-aug.lock"
    import socket
    lock.write_text(f"{socket.gethostname()} {dead.pid}\n")
    with folder_lock(tmp_path):  # its process is gone: stale
        assert lock.read_text().split()[1] == str(os.getpid())
    assert not lock.exists()


# ------------------------------------------------------------------------------------------ configs
def test_config_typos_are_refused_with_the_nearest_key(tmp_path):
    from pcdms_aug.config.loading import CONFIG_ROOT
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline
    from pcdms_aug.training.config import load_run_config

    with pytest.raises(DataError, match="did you mean 'sampling.refine_strength'"):
        PCDMsPipeline.from_config("tiny/pipeline.yaml", overrides=["sampling.refine_strenght=0.3"])
    with pytest.raises(DataError, match="did you mean 'sampling.scheduler'"):
        PCDMsPipeline.from_config("tiny/pipeline.yaml", overrides=["sampling.sheduler=ddim"])
    stage = tmp_path / "inpaint.yaml"
    stage.write_text((CONFIG_ROOT / "tiny" / "inpaint.yaml").read_text().replace("scheduler:", "sheduler:")
                     .replace("_base_: encoders.yaml", f"_base_: {CONFIG_ROOT / 'tiny' / 'encoders.yaml'}"))
    from pcdms_aug.stages import stage_class
    from pcdms_aug.config.loading import load_config
    with pytest.raises(DataError, match="sheduler; did you mean 'scheduler'"):
        stage_class("inpaint").from_config(load_config(stage))
    cfg = load_run_config("tiny/train_inpaint.yaml", ["model.unet.config.layers_per_blok=2"])
    with pytest.raises(DataError, match="layers_per_blok; did you mean 'layers_per_block'"):
        stage_class("inpaint").from_config(cfg.model)
    with pytest.raises(DataError, match="train.max_steps must be an integer"):
        load_run_config("tiny/train_inpaint.yaml", ["train.max_steps=true"])
    with pytest.raises(DataError, match="train.lr must be a finite number"):
        load_run_config("tiny/train_inpaint.yaml", ["train.lr=.nan"])


def test_train_refuses_a_model_override_typo_before_training(tmp_path, capsys, synth_market):
    assert main(["train", "tiny/train_inpaint.yaml", f"data.root={synth_market}",
                 f"data.annotations={synth_market / 'market-annotation-train.csv'}", f"train.out={tmp_path / 't'}",
                 "train.max_steps=1", "model.noise_ofset=0.1", "--no-progress"]) == 2
    assert "noise_ofset; did you mean 'noise_offset'" in _one_error_line(capsys.readouterr().err, "train")
    assert not (tmp_path / "t" / "checkpoint-1").exists()


def test_synthesize_pairs_refuses_a_folder_made_with_other_settings(tmp_path):
    from pcdms_aug.generation import run_folder
    from pcdms_aug.generation.pairs import PROTOCOL, SETTINGS

    assert run_folder.check(tmp_path, PROTOCOL, {"steps": 10, "seed": 0}, overwrite=False) == "new"
    run_folder.begin(tmp_path, PROTOCOL, {"steps": 10, "seed": 0}, "new")
    assert run_folder.check(tmp_path, PROTOCOL, {"steps": 10, "seed": 0}, overwrite=False) == "resume"
    with pytest.raises(DataError, match=r"other settings \(steps: 10 -> 20\)"):
        run_folder.check(tmp_path, PROTOCOL, {"steps": 20, "seed": 0}, overwrite=False)
    mode = run_folder.check(tmp_path, PROTOCOL, {"steps": 20, "seed": 0}, overwrite=True)
    run_folder.begin(tmp_path, PROTOCOL, {"steps": 20, "seed": 0}, mode)
    assert json.loads((tmp_path / SETTINGS).read_text())["settings"]["steps"] == 20
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.jpg_to_b.jpg.png").write_bytes(b"")
    for overwrite in (False, True):  # a folder of someone else's images is never adopted
        with pytest.raises(DataError, match="did not write"):
            run_folder.check(other, PROTOCOL, {"steps": 10}, overwrite=overwrite)


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    bad = tmp_path / "state"
    bad.mkdir()
    (bad / "trainable.safetensors").write_bytes(b"\x00" * 16)
    rc = main(["export-checkpoint", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "export-checkpoint")
    r = subprocess.run([sys.executable, "-m", "pcdms_aug", "--debug", "render-pose", "--annotations",
                        str(tmp_path / "none.csv"), "--out", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_yaml_syntax_errors_in_overrides_name_the_override(capsys):
    from pcdms_aug.config.loading import apply_overrides

    with pytest.raises(DataError, match=r"override 'train.lr=\[1, 2': the value is not valid YAML"):
        apply_overrides({}, ["train.lr=[1, 2"])
    assert main(["assemble", "--inpaint", "tiny", "--out", "unused", "sampling.guidance={inpaint: 2"]) == 2
    assert "not valid YAML" in _one_error_line(capsys.readouterr().err, "assemble")


@pytest.mark.parametrize("same_as", ["../prior/clip.safetensors", "/etc/clip.safetensors",
                                     "prior/../prior/clip.safetensors", "prior\\..\\clip.safetensors",
                                     "inpaint/clip.safetensors", "prior/unet.safetensors", "prior/clip.safetensors/x",
                                     "elsewhere/clip.safetensors"])
def test_a_weights_reference_is_followed_only_to_a_sibling_stage_of_its_pipeline(tmp_path, same_as):
    import hashlib

    from pcdms_aug.pipelines.weights_path import WEIGHTS_ROOT
    from pcdms_aug.stages import InpaintStage

    weights = tmp_path / "w"
    shutil.copytree(WEIGHTS_ROOT / "tiny", weights)
    ref = weights / "inpaint" / "clip.ref.json"
    target = weights / "prior" / "clip.safetensors"
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    ref.write_text(json.dumps({"same_as": same_as, "sha256": digest}))
    with pytest.raises(DataError, match="refused") as info:
        InpaintStage.from_pretrained(weights / "inpaint")
    assert str(ref) in str(info.value)


def test_a_missing_or_changed_referenced_file_is_a_data_error_naming_it(tmp_path):
    from pcdms_aug.pipelines.weights_path import WEIGHTS_ROOT
    from pcdms_aug.stages import InpaintStage

    weights = tmp_path / "w"
    shutil.copytree(WEIGHTS_ROOT / "tiny", weights)
    target = weights / "prior" / "clip.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1  # one flipped bit in a weight
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match="do not match the sha256 inpaint/clip.ref.json records") as info:
        InpaintStage.from_pretrained(weights / "inpaint")
    assert info.value.path == str(target)
    target.unlink()
    with pytest.raises(DataError, match="missing") as info:
        InpaintStage.from_pretrained(weights / "inpaint")
    assert info.value.path == str(target)
    (weights / "inpaint" / "clip.ref.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt reference"):
        InpaintStage.from_pretrained(weights / "inpaint")
    # A pipeline's stage folder copied out of it: the reference cannot be followed (and nothing else is tried).
    shutil.copytree(WEIGHTS_ROOT / "tiny" / "inpaint", tmp_path / "alone" / "inpaint")
    (tmp_path / "alone" / "prior").mkdir()
    shutil.copy(WEIGHTS_ROOT / "tiny" / "prior" / "clip.safetensors", tmp_path / "alone" / "prior")
    with pytest.raises(DataError, match="only inside its pipeline folder"):
        InpaintStage.from_pretrained(tmp_path / "alone" / "inpaint")
