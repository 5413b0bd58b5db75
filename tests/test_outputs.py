"""One rule for every output path (docs/security.md): no user file is replaced or adopted, no output goes into an
input, `/`, the home folder and "" are refused, --overwrite removes only a run's own files, and a refused run
leaves nothing behind. Each class is tried through several commands and spellings."""
import os
import shutil

import pytest
from PIL import Image

from pcdms_aug.cli.main import main
from pcdms_aug.utils.errors import DataError


def _snapshot(folder):
    """{relative path: bytes or '<dir>'} of everything under ``folder``."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = "<dir>"
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


def _refused(argv, capsys) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and lines and lines[-1].startswith(f"pcdms-aug {argv[0]}: error:") and "Traceback" not in err, \
        (argv, rc, err[-2000:])
    return lines[-1]


@pytest.fixture
def user(tmp_path):
    """A folder of the user's own files: an image named like a generated view, a sheet, a manifest, notes."""
    home = tmp_path / "mine"
    home.mkdir()
    Image.new("RGB", (64, 128), (1, 2, 3)).save(home / "0001_c1s9_000000_00.jpg")
    Image.new("RGB", (64, 128), (4, 5, 6)).save(home / "views.png")
    (home / "manifest.csv").write_text("file\nnotes.txt\n")
    (home / "notes.txt").write_text("my notes")
    (home / "shards").mkdir()
    (home / "shards" / "keep.txt").write_text("mine")
    (home / "filter").mkdir()
    (home / "filter" / "model.pth.tar").write_text("mine")
    return home


def _commands(m, out):
    """Every command that writes, with ``out`` as its output (folder or file) and otherwise valid inputs."""
    ann = m / "market-annotation-train.csv"
    pairs = m / "market-pairs-test.csv"
    return {
        "generate": ["generate", "--dataset", str(m), "--annotations", str(ann), "--weights", "tiny", "--out", str(out),
                     "--views", "1"],
        "synthesize-pairs": ["synthesize-pairs", "--pairs", str(pairs), "--dataset", str(m), "--weights", "tiny",
                             "--out", str(out), "--max-pairs", "1"],
        "make-refine-inputs": ["make-refine-inputs", "--dataset", str(m), "--annotations", str(ann), "--weights",
                               "tiny", "--out", str(out), "--max-pairs", "1"],
        "assemble": ["assemble", "--inpaint", "tiny", "--out", str(out)],
        "import-official": ["import-official", str(m / "nothing.bin"), str(out), "--stage", "2"],
        "export-checkpoint": ["export-checkpoint", str(m / "no-checkpoint"), "--out", str(out)],
        "render-pose": ["render-pose", "--annotations", str(ann), "--dataset", str(m), "--out", str(out), "--max",
                        "1"],
        "metrics": ["metrics", "--pairs", str(pairs), "--generated", str(m), "--dataset", str(m), "--out", str(out)],
        "annotate": ["annotate", str(m), "--estimator", str(m / "no-estimator"), "--out", str(out)],
        "train": ["train", "tiny/train_inpaint.yaml", f"data.root={m}", f"data.annotations={ann}",
                  f"train.out={out}", "train.max_steps=1", "--no-progress"],
        "reid-experiment": ["reid-experiment", "tiny/reid.yaml", f"root={m.parent}", f"out_dir={out}",
                            "fractions=[0.5]", "seeds=[0]", "variants=[baseline]"],
        "demo": ["demo", "--out", str(out)],
        "synth-market": ["synth-market", str(out), "--train-ids", "2", "--test-ids", "2"],
        "cache-features": ["cache-features", "tiny/train_inpaint.yaml", f"data.root={m}", f"data.annotations={ann}",
                           "--out", str(out), "--no-progress"],
    }


FOLDER_COMMANDS = ["generate", "synthesize-pairs", "make-refine-inputs", "assemble", "import-official",
                   "export-checkpoint", "train", "reid-experiment", "demo", "synth-market", "cache-features"]
FILE_COMMANDS = ["render-pose", "metrics", "annotate"]


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_a_folder_of_the_users_files_is_never_written_or_adopted(synth_market, user, capsys, command):
    before = _snapshot(user)
    argv = _commands(synth_market, user)[command]
    line = _refused(argv, capsys)
    assert str(user) in line
    for extra in (["--overwrite"], ["overwrite=true"]):  # where the command has one: it adopts nothing either
        if command in ("generate", "synthesize-pairs", "make-refine-inputs") and extra[0].startswith("--"):
            _refused(argv + extra, capsys)
    assert _snapshot(user) == before


@pytest.mark.parametrize("command", FILE_COMMANDS)
@pytest.mark.parametrize("target", ["a user file", "an input file", "inside the dataset", "a link to a user file"])
def test_a_file_output_never_replaces_a_users_file_or_an_input(synth_market, tmp_path, capsys, command, target):
    mine = tmp_path / "mine.png"
    Image.new("RGB", (8, 8)).save(mine)
    out = {"a user file": mine, "an input file": synth_market / "market-annotation-train.csv",
           "inside the dataset": synth_market / "bounding_box_train" / "new.png",
           "a link to a user file": tmp_path / "link.png"}[target]
    if target == "a link to a user file":
        out.symlink_to(mine)
    before, data_before = _snapshot(tmp_path), _snapshot(synth_market)
    argv = _commands(synth_market, out)[command] + (["--overwrite"] if command == "annotate" else [])
    _refused(argv, capsys)
    assert _snapshot(tmp_path) == before and _snapshot(synth_market) == data_before


@pytest.mark.parametrize("command", FOLDER_COMMANDS + FILE_COMMANDS)
@pytest.mark.parametrize("spelling", ["", "/", "~", "HOME"])
def test_the_root_the_home_folder_and_empty_text_are_refused(synth_market, capsys, monkeypatch, tmp_path, command,
                                                           spelling):
    home = tmp_path / "home"
    home.mkdir()
    (home / "precious.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    out = {"": "", "/": "/", "~": "~", "HOME": str(home) + "/"}[spelling]
    argv = _commands(synth_market, out)[command]
    argv = [f"{a.split('=')[0]}='{out}'" if a.startswith(("out_dir=", "train.out=")) else a for a in argv]
    line = _refused(argv, capsys)
    assert any(w in line for w in ("empty", "root folder", "home folder", "--out is required", "give --out")), line
    assert sorted(p.name for p in home.iterdir()) == ["precious.txt"]


@pytest.mark.parametrize("command", ["generate", "synthesize-pairs", "make-refine-inputs", "render-pose", "train"])
def test_outputs_never_go_inside_an_input(synth_market, capsys, command):
    before = _snapshot(synth_market)
    for inside in (synth_market / "bounding_box_test" / "gen", synth_market / "query" / "x.png"):
        if (command == "render-pose") != (inside.suffix == ".png"):
            continue
        line = _refused(_commands(synth_market, inside)[command], capsys)
        assert "lies inside" in line
    assert _snapshot(synth_market) == before


@pytest.mark.parametrize("command,broken", [
    ("generate", ["--dataset", "MISSING"]), ("generate", ["--weights", "MISSING"]),
    ("generate", ["--annotations", "MISSING.csv"]),
    ("synthesize-pairs", ["--pairs", "MISSING.csv"]), ("synthesize-pairs", ["--weights", "MISSING"]),
    ("make-refine-inputs", ["--dataset", "MISSING"]), ("make-refine-inputs", ["--annotations", "MISSING.csv"]),
])
def test_a_refused_run_leaves_nothing_behind(synth_market, tmp_path, capsys, command, broken):
    out = tmp_path / "new" / "out"
    argv = _commands(synth_market, out)[command]
    flag = broken[0]
    i = argv.index(flag)
    argv = argv[:i + 1] + [str(tmp_path / broken[1])] + argv[i + 2:]
    _refused(argv, capsys)
    assert not (tmp_path / "new").exists()


def test_a_refused_rerun_with_other_settings_changes_nothing(tmp_path):
    from pcdms_aug.generation import run_folder
    from pcdms_aug.generation.outputs import PROTOCOL

    run_folder.begin(tmp_path, PROTOCOL, {"views": 1}, "new")
    (tmp_path / "plan.csv").write_text("file\n")
    before = _snapshot(tmp_path)
    with pytest.raises(DataError, match=r"other settings \(views: 1 -> 2\)"):
        run_folder.check(tmp_path, PROTOCOL, {"views": 2}, overwrite=False)
    assert _snapshot(tmp_path) == before
    assert run_folder.check(tmp_path, PROTOCOL, {"views": 1}, overwrite=False) == "resume"


def test_overwrite_removes_only_the_runs_own_files(tmp_path):
    """A run's plan and manifest name user files, paths out of the folder and non-view names: only its own
    views, shard logs, filter checkpoint and tables go."""
    from pcdms_aug.generation import run_folder
    from pcdms_aug.generation.outputs import PROTOCOL

    out = tmp_path / "out"
    run_folder.begin(out, PROTOCOL, {"views": 1}, "new")
    outside = tmp_path / "victim.jpg"
    outside.write_text("mine")
    mine = ["notes.txt", "holiday.jpg", "0001_c1s1_000001_00.jpg", "sub/0001_c1s9_000000_00.jpg"]
    ours = ["0001_c1s9_000000_00.jpg", "0002_c3s9_000004_01.png"]
    for name in mine + ours:
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("x")
    names = mine + ours + ["../victim.jpg", str(outside), "/etc/passwd"]
    (out / "plan.csv").write_text("file\n" + "\n".join(names) + "\n")
    (out / "manifest.csv").write_text("file,pid\n../victim.jpg,1\n")
    (out / "shards").mkdir()
    (out / "shards" / "manifest-rank0-of-1.jsonl").write_text("{}\n")
    (out / "shards" / "my-notes.txt").write_text("mine")
    (out / "filter").mkdir()
    (out / "filter" / "osnet_x0_25-256x128-e10.pth.tar").write_text("ours")
    (out / "filter" / "my-model.pt").write_text("mine")
    mode = run_folder.check(out, PROTOCOL, {"views": 2}, overwrite=True)
    run_folder.begin(out, PROTOCOL, {"views": 2}, mode)
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == sorted(mine + ["shards/my-notes.txt", "filter/my-model.pt", "generate.json",
                                  ".pcdms-aug-owner.json"])
    assert outside.read_text() == "mine"


def test_a_file_output_of_the_command_itself_may_be_replaced(synth_market, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    argv = _commands(synth_market, out)["render-pose"]
    assert main(argv) == 0
    first = out.read_bytes()
    assert main(argv) == 0 and out.read_bytes() == first  # its own mark: a rerun replaces it
    other = tmp_path / "other.png"
    shutil.copy(out, other)
    assert main(_commands(synth_market, other)["render-pose"] + ["--cols", "2"]) == 0
    with Image.open(other) as im:
        assert im.text.get("Software") == "pcdms-aug render-pose"
