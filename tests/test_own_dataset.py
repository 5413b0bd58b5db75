"""README "Your own dataset": its commands, as written, on a drawn MSMT17 (192x80 crops) and on a plain folder of
crops made from it. Only paths are mapped to the test's folders, and re-ID runs are shortened (one epoch)."""
import csv
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from pcdms_aug.cli.main import main
from pcdms_aug.data.layouts import open_dataset

README = Path(__file__).resolve().parents[1] / "README.md"
SHORT = ["epochs=1", "batch_size=8", "batch_size_test=32", "height=64", "width=32", "variants=[baseline,augmented]"]
FEW_STEPS = ["--steps", "2", "--views", "1"]  # generate: the README's command at the test's toy cost


def readme_commands() -> list[list[str]]:
    """The pcdms-aug commands of the section's code block, continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Your own dataset"):]
    block = section[section.index("```bash") + 7:section.index("```", section.index("```bash") + 7)]
    joined = re.sub(r"\\\n\s*", "", block)
    commands = [shlex.split(line.split("#")[0]) for line in joined.splitlines() if line.startswith("pcdms-aug")]
    return [c[1:] for c in commands]


def run(argv: list[str]) -> None:
    if argv[0] == "reid-experiment":
        argv = argv[:2] + SHORT + argv[2:]  # overrides before the flags; the README's own come later and win
    elif argv[0] == "generate":
        argv = argv + FEW_STEPS
    assert main(argv) == 0, argv


@pytest.fixture()
def workdir(tmp_path, drawn_layouts, monkeypatch):
    from pcdms_aug.testing.vitpose_fixture import write_vitpose_folder

    (tmp_path / "reid-data").symlink_to(drawn_layouts)
    # The posed fixture sees a standing person in every crop (random weights find no whole torso, and generate
    # takes only sources with one).
    write_vitpose_folder(tmp_path / "vitpose-base", posed=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


def test_the_readme_section_names_every_step():
    steps = [c[0] for c in readme_commands()]
    assert steps == ["annotate", "reid-experiment", "generate", "reid-experiment"]


def test_msmt17_commands_of_the_readme(workdir):
    ds = open_dataset("reid-data/msmt17")
    for argv in readme_commands():
        run(argv)
        if argv[0] == "annotate":
            with open("poses.csv") as f:
                annotated = {line.split(":")[0] for line in f.read().splitlines()[1:]}
            assert {it.filename for it in ds.all_images()} <= annotated
    with open("gen/f0.2_s0/manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = {it.filename: it for it in ds.train}
    assert rows and all(r["source"] in train and int(r["pid"]) == train[r["source"]].pid for r in rows)
    results = Path("runs/msmt17/results.csv").read_text().splitlines()
    assert {r.split(",")[2] for r in results[1:]} == {"baseline", "augmented"}


def test_plain_folder_of_crops(workdir):
    """The section's reid-experiment with `dataset=pcdms_layout root=crops`, on the MSMT17 crops re-filed as
    train/query/gallery/<person>/<image>."""
    ds = open_dataset("reid-data/msmt17")
    for it in ds.all_images():
        person = Path("crops") / it.split / f"person{it.pid}"
        person.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(it.path, person / it.filename)
    splits = [c for c in readme_commands() if c[0] == "reid-experiment"][0]
    argv = [a.replace("root=reid-data", "root=crops").replace("dataset=msmt17", "dataset=pcdms_layout")
            .replace("runs/msmt17", "runs/crops") for a in splits if a != "--splits-only"]
    run(argv + ["fractions=[0.5]", "seeds=[0]"])
    results = Path("runs/crops/results.csv").read_text().splitlines()
    assert len(results) == 2 and os.path.isfile("runs/crops/splits/split_f0.5_s0.json")
