"""The experiment runner: outputs, resume, config checks, the CLI, and the shipped configs."""

import pandas as pd
import pytest
from PIL import Image

from pcdms_aug.cli.main import main as cli_main
from pcdms_aug.config.loading import load_config
from pcdms_aug.data.splits import load_split
from pcdms_aug.utils.errors import DataError
from reid import experiment
from tests.reid_fixtures import build_fake_generated


@pytest.fixture(scope="module")
def data(synth_market, tmp_path_factory):
    return synth_market.parent, build_fake_generated(tmp_path_factory.mktemp("reid_exp") / "gen", synth_market)


def config(root, gen, out, **kw):
    cfg = {"root": str(root), "dataset": "synthetic", "generated_dir": gen and str(gen), "fractions": [0.5],
           "seeds": [0, 1], "variants": ["baseline", "augmented", "filtered"], "epochs": 1, "batch_size": 8,
           "height": 32, "width": 16, "out_dir": str(out)}
    cfg.update(kw)
    return cfg


def test_runner_writes_results_and_resumes(data, tmp_path):
    root, gen = data
    out = tmp_path / "out"
    df = experiment.run_experiment(config(root, gen, out), progress=False)
    assert len(df.attrs["executed"]) == 6 and df.attrs["skipped"] == []
    for name in ("results.csv", "results.md", "cmc.png", "map_vs_fraction.png"):
        assert (out / name).is_file(), name
    for png in ("cmc.png", "map_vs_fraction.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == 6 and set(csv.variant) == {"baseline", "augmented", "filtered"}
    for col in ("fraction", "seed", "variant", "mAP", "rank1", "rank5", "rank10", "num_train_real",
                "num_train_generated", "wall_s"):
        assert col in csv.columns, col
    assert csv[["mAP", "rank1", "rank5", "rank10"]].apply(lambda c: c.between(0, 100)).all().all()
    for seed, g in csv.groupby("seed"):
        subset = len(load_split(out / "splits" / f"split_f0.5_s{seed}.json"))
        assert set(g.num_train_real) == {subset}  # the same subset for every variant
        n = g.set_index("variant").num_train_generated
        assert n["baseline"] == 0 and n["augmented"] == subset > n["filtered"] > 0
    md = (out / "results.md").read_text()
    assert "| 0.5 | augmented | epochs | 2 |" in md and "±" in md and "ΔmAP vs best-mean control" in md
    assert len(list((out / "runs").glob("*.json"))) == 6 and len(list((out / "splits").glob("*.json"))) == 2

    again = experiment.run_experiment(config(root, gen, out), progress=False)
    assert again.attrs["executed"] == [] and len(again.attrs["skipped"]) == 6
    pd.testing.assert_frame_equal(again.reset_index(drop=True), df.reset_index(drop=True))

    grown = experiment.run_experiment(config(root, gen, out, seeds=[0, 1, 2], variants=["baseline"]),
                                      progress=False)
    assert grown.attrs["executed"] == ["f0.5_s2_baseline"] and len(grown) == 3

    with pytest.raises(DataError, match="another config.*epochs"):
        experiment.run_experiment(config(root, gen, out, epochs=2), progress=False)


def test_generated_share_is_part_of_a_run_with_views_only(data, tmp_path):
    root, gen = data
    out = tmp_path / "out"
    kw = dict(seeds=[0], variants=["baseline", "augmented"])
    experiment.run_experiment(config(root, gen, out, **kw), progress=False)
    # The baseline has no views, so the share changes nothing it computed; the augmented run it changes.
    with pytest.raises(DataError, match="another config.*generated_share") as err:
        experiment.run_experiment(config(root, gen, out, generated_share=0.5, **kw), progress=False)
    assert "augmented" in str(err.value)
    shared = experiment.run_experiment(config(root, gen, tmp_path / "shared", generated_share=0.5, **kw),
                                       progress=False)
    assert set(shared.variant) == {"baseline", "augmented"}


def test_cli_resumes_and_writes_splits(data, tmp_path, capsys):
    root, gen = data
    cfg = tmp_path / "reid.yaml"
    cfg.write_text("epochs: 1\nbatch_size: 8\nheight: 32\nwidth: 16\nvariants: [baseline]\n")
    args = [f"root={root}", "dataset=synthetic", "fractions=[0.3]", "seeds=[4]", f"out_dir={tmp_path / 'o'}"]
    assert cli_main(["reid-experiment", str(cfg), *args, "--splits-only"]) == 0
    assert (tmp_path / "o" / "splits" / "split_f0.3_s4.json").is_file()
    assert not (tmp_path / "o" / "results.csv").exists()
    assert cli_main(["reid-experiment", str(cfg), *args]) == 0
    assert "1 run(s) trained, 0 reused" in capsys.readouterr().out
    assert cli_main(["reid-experiment", str(cfg), *args]) == 0
    assert "0 run(s) trained, 1 reused" in capsys.readouterr().out
    assert cli_main(["reid-experiment", str(cfg), *args, "lossy=1"]) == 2
    assert "unknown key reid config.lossy" in capsys.readouterr().err


def test_generated_dir_forms_and_early_errors(data, tmp_path):
    root, gen = data
    assert experiment.generated_dir_for("g/f{fraction}_p{percent}_s{seed}", 0.2, 1) == "g/f0.2_p20_s1"
    assert experiment.generated_dir_for({0.2: "a/{seed}", 0.4: "b"}, 0.2, 3) == "a/3"
    assert experiment.generated_dir_for("plain", 1.0, 0) == "plain"
    with pytest.raises(DataError, match="no entry for fraction 0.6"):
        experiment.generated_dir_for({0.2: "a"}, 0.6, 0)
    with pytest.raises(DataError, match="placeholder"):
        experiment.generated_dir_for("g/{fold}", 0.2, 0)
    # a missing folder fails before any training, naming it
    with pytest.raises(DataError, match="manifest.csv") as e:
        experiment.run_experiment(config(root, tmp_path / "gen_{seed}", tmp_path / "o"), progress=False)
    assert "gen_0" in str(e.value)
    assert not (tmp_path / "o" / "runs").exists()
    with pytest.raises(DataError, match="variants"):
        experiment.run_experiment(config(root, gen, tmp_path / "o", variants=["mixed"]), progress=False)
    # no generated_dir: the baseline only
    df = experiment.run_experiment(config(root, None, tmp_path / "b", fractions=[1.0], seeds=[0]), progress=False)
    assert list(df.variant) == ["baseline"]


def test_shipped_configs_build():
    tiny = experiment.make_config(load_config("tiny/reid.yaml"))
    assert tiny.model == "osnet_x0_25" and (tiny.height, tiny.width) == (128, 64) and not tiny.pretrained
    assert tiny.fractions == (0.2, 0.4, 0.6, 0.8, 1.0)
    paper = load_config("paper/reid.yaml")
    assert paper["model"] in ("resnet50", "osnet_x1_0") and (paper["height"], paper["width"]) == (256, 128)
    with pytest.raises(DataError, match="weights file not found"):
        experiment.make_config(paper)  # its ImageNet weights are a local file the user provides
    built = experiment.make_config({**paper, "pretrained": False, "weights": None})
    assert built.generated_dir.format(fraction=0.2, seed=0).endswith("f0.2_s0")


def test_folders_of_other_seeds_merge_into_the_report_of_one_run(data, tmp_path):
    """experiments/reid_merge.py: seeds run apart (other folders, other paths) pool into the report one run of
    every seed writes; a run in two folders, or runs of other settings, are refused by file."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "reid_merge.py"
    spec = importlib.util.spec_from_file_location("reid_merge", script)
    reid_merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reid_merge)
    root, gen = data
    kw = dict(variants=["baseline", "augmented"])
    together = experiment.run_experiment(config(root, gen, tmp_path / "both", **kw), progress=False)
    for seed in (0, 1):
        experiment.run_experiment(config(root, gen, tmp_path / f"s{seed}", seeds=[seed], **kw), progress=False)
    assert reid_merge.main([str(tmp_path / "merged"), str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    merged = pd.read_csv(tmp_path / "merged" / "results.csv")
    cols = ["fraction", "seed", "variant", "mAP", "rank1", "steps", "num_train_generated", "generator_saw"]
    pd.testing.assert_frame_equal(merged[cols], pd.read_csv(tmp_path / "both" / "results.csv")[cols])
    assert len(together) == 4 and (tmp_path / "merged" / "paired.csv").is_file()
    assert (tmp_path / "merged" / "cmc.png").is_file()
    assert "merged from" in (tmp_path / "merged" / "results.md").read_text()

    with pytest.raises(DataError, match="f0.5_s0_baseline is in two folders"):
        reid_merge.merge([tmp_path / "s0", tmp_path / "both"])
    experiment.run_experiment(config(root, gen, tmp_path / "lr", seeds=[1], lr=0.01, **kw), progress=False)
    with pytest.raises(DataError, match=r"settings differ.*lr: [0-9.]+ -> 0.01"):
        reid_merge.merge([tmp_path / "s0", tmp_path / "lr"])
    with pytest.raises(DataError, match="no results.csv"):
        reid_merge.merge([tmp_path / "s0", tmp_path / "nothing"])


def test_reuse_from_takes_matching_runs_of_another_folder(data, tmp_path):
    """reuse_from: a lever that changes only how views are used (generated_share) takes the baseline runs of an
    earlier folder, copied in with their logs, and trains the rest; runs of other settings are trained."""
    import json

    root, gen = data
    kw = dict(variants=["baseline", "augmented"], seeds=[0], loss="softmax")
    first = experiment.run_experiment(config(root, gen, tmp_path / "made", **kw), progress=False)
    (tmp_path / "made").rename(tmp_path / "a")  # a folder moved since: its subsets are found where it is now
    lever = experiment.run_experiment(config(root, gen, tmp_path / "b", generated_share=0.5,
                                             reuse_from=[str(tmp_path / "a")], **kw), progress=False)
    assert lever.attrs["skipped"] == ["f0.5_s0_baseline"] and lever.attrs["executed"] == ["f0.5_s0_augmented"]
    ours, theirs = (json.loads((tmp_path / d / "runs" / "f0.5_s0_baseline.json").read_text()) for d in "ba")
    assert ours["mAP"] == theirs["mAP"] == first.set_index("variant").mAP["baseline"]
    assert ours["reused_from"].endswith("a/runs/f0.5_s0_baseline.json") and "reused_from" not in theirs
    assert (tmp_path / "b" / "logs" / "f0.5_s0_baseline.log").is_file()
    # Reopened, the copied run is this folder's own: nothing trained.
    again = experiment.run_experiment(config(root, gen, tmp_path / "b", generated_share=0.5, **kw), progress=False)
    assert again.attrs["executed"] == []
    other = experiment.run_experiment(config(root, gen, tmp_path / "c", lr=0.01, variants=["baseline"], seeds=[0],
                                             reuse_from=[str(tmp_path / "a")]), progress=False)
    assert other.attrs["executed"] == ["f0.5_s0_baseline"]
    with pytest.raises(DataError, match=r"reuse_from\[0\] is not a reid-experiment folder"):
        experiment.make_config(config(root, gen, tmp_path / "d", reuse_from=[str(tmp_path / "nothing")]))
