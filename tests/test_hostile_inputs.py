"""Hostile inputs by class: images of every mode, configs that would exhaust the machine, counts out of range,
and every refusal one line naming its cause (docs/security.md lists the promises)."""
import os
import json
import shutil
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from pcdms_aug.cli.main import main
from pcdms_aug.data.images import open_rgb
from pcdms_aug.data.market import load_image
from pcdms_aug.utils.errors import DataError


def _refused(argv, capsys, seconds=5.0) -> str:
    """Run a command that must be refused: exit 2, one line naming the cause, within ``seconds`` once the
    command's modules are imported (the first run imports them; the refusal itself is timed on the second)."""
    main(argv)
    capsys.readouterr()
    t = time.perf_counter()
    rc = main(argv)
    took = time.perf_counter() - t
    line = _one_error_line(capsys.readouterr().err, argv[0])
    assert rc == 2 and took < seconds, (argv, rc, took, line)
    return line


def _one_error_line(err: str, command: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"pcdms-aug {command}: error:"), err
    assert "Traceback" not in err, err
    return lines[-1]


# ----------------------------------------------------------------------------------------- image modes
def _grey16(path, value):
    Image.fromarray(np.full((16, 8), value, np.uint16)).save(path)


def _transparent(mode):
    """A picture whose visible half is red and whose transparent half hides white."""
    rgba = np.zeros((16, 8, 4), np.uint8)
    rgba[:8] = (255, 0, 0, 255)
    rgba[8:] = (255, 255, 255, 0)
    im = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        return Image.fromarray(np.stack([np.asarray(im.convert("L")), rgba[..., 3]], -1), "LA")
    if mode == "P":
        return im.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    return im


@pytest.mark.parametrize("value,expected", [(0, 0), (32768, 128), (65535, 255), (1000, 4)])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path, value, expected):
    path = tmp_path / "a.png"
    _grey16(path, value)
    assert Image.open(path).mode.startswith("I")  # PIL reads it as 16-bit samples, convert("RGB") clips them
    im, note = open_rgb(path)
    assert np.asarray(im).shape == (16, 8, 3) and abs(int(np.asarray(im)[0, 0, 0]) - expected) <= 1
    assert "16-bit" in note


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_not_dropped(tmp_path, mode):
    im = _transparent(mode)
    if mode == "P":
        im.info["transparency"] = next(i for i, c in enumerate(im.getpalette()[::3]) if c == 255
                                       and im.getpalette()[3 * i + 1] == 255)
    path = tmp_path / "a.png"
    im.save(path, transparency=im.info["transparency"]) if mode == "P" else im.save(path)
    out = np.asarray(load_image(path))
    assert tuple(out[12, 4]) == (128, 128, 128), "a transparent pixel shows the grey background"
    assert out[2, 4, 0] > 70  # the visible half keeps its colour (red, or its grey in LA)


def test_cmyk_is_decoded_to_its_colours(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (8, 16), (200, 30, 30)).convert("CMYK").save(path, quality=100)
    out = np.asarray(load_image(path)).astype(int)
    assert np.abs(out[8, 4] - [200, 30, 30]).max() < 12


@pytest.mark.parametrize("mode,said", [("F", "floating-point"), ("LAB", "CIELAB")])
def test_modes_without_a_faithful_conversion_are_refused_by_name(tmp_path, mode, said):
    path = tmp_path / "a.tif"
    Image.new(mode, (8, 16)).save(path)
    with pytest.raises(DataError, match=f"image mode {mode} .*{said}") as e:
        load_image(path)
    assert e.value.path == str(path)


def _png_header_only(path, w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("w,h", [(14000, 14000), (20000, 1000), (5000, 4000)])
def test_a_huge_picture_is_refused_from_its_header(tmp_path, w, h):
    path = tmp_path / "0001_c1s1_000001_00.png"
    _png_header_only(path, w, h)
    t = time.perf_counter()
    with pytest.raises(DataError, match="too large for a person crop") as e:
        load_image(path)
    assert time.perf_counter() - t < 1 and e.value.path == str(path)


def test_inspect_reports_the_modes_it_converts(synth_market, tmp_path, capsys):
    root = tmp_path / "m"
    shutil.copytree(synth_market, root)
    first, second = sorted((root / "bounding_box_train").iterdir())[:2]
    _grey16(first.with_suffix(".png"), 30000)
    first.unlink()
    Image.open(second).convert("CMYK").save(second)
    assert main(["inspect", str(root), "--json"]) == 0
    modes = json.loads(capsys.readouterr().out)["converted_modes"]
    assert modes == {"CMYK: converted without a colour profile": 1, "I;16: 16-bit samples scaled to 8 bits": 1}
    main(["inspect", str(root)])
    assert "converted to RGB: 1 image(s) of mode I;16" in capsys.readouterr().out


# ------------------------------------------------------------------------------- configs that expand
def _bomb(levels=9, top="a"):
    """A few hundred bytes that stand for 9**levels values once walked or printed."""
    names = [chr(ord("a") + i) for i in range(levels)]
    text = f"{names[0]}: &{names[0]} [x, x, x, x, x, x, x, x, x]\n"
    for prev, name in zip(names, names[1:]):
        text += f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n"
    return text, names[-1]


BOMBS = {
    "list under a string key": lambda b, last: b + f"dataset: *{last}\n",
    "list under a number key": lambda b, last: b + f"views: *{last}\n",
    "mapping merge": lambda b, last: b.replace("[x, x, x, x, x, x, x, x, x]", "{k: v}").replace(
        "a: &a {k: v}", "a: &a {k: v}") + f"filter: {{<<: *a, model: *{last}}}\n",
    "self reference": lambda b, last: "out: &o [*o]\n",
    "nested too deep": lambda b, last: "dataset: " + "[" * 3000 + "]" * 3000 + "\n",
}


@pytest.mark.parametrize("kind", list(BOMBS))
def test_a_config_that_expands_is_refused_before_it_is_walked(tmp_path, capsys, kind):
    text, last = _bomb()
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(BOMBS[kind](text, last))
    assert len(cfg.read_bytes()) < 1000 or kind == "nested too deep"
    line = _refused(["generate", "--config", str(cfg)], capsys)
    assert str(cfg) in line and len(line) < 400


def test_every_config_reader_bounds_its_yaml(tmp_path, capsys, synth_market):
    """The same bomb through each way a YAML comes in: a command's config, a _base_, a stage YAML of a pipeline
    config, a saved pipeline's pipeline.yaml, a key=value override."""
    from pcdms_aug.pipelines.weights_path import WEIGHTS_ROOT

    text, last = _bomb()
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(text + f"train: {{out: *{last}}}\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: bomb.yaml\n")
    pipe_cfg = tmp_path / "pipeline.yaml"
    pipe_cfg.write_text("stages: {inpaint: bomb.yaml}\n")
    saved = tmp_path / "saved"
    shutil.copytree(WEIGHTS_ROOT / "tiny", saved)
    (saved / "pipeline.yaml").write_text(text + f"image_size: *{last}\n")
    override = "x=" + text.replace("\n", ", ").join("{}")
    cases = [(["train", str(bomb)], bomb), (["train", str(child)], bomb), (["reid-experiment", str(bomb)], bomb),
             (["bench", "--config", str(pipe_cfg), "--pairs", "1"], bomb),
             (["bench", "--weights", str(saved), "--pairs", "1"], saved / "pipeline.yaml"),
             (["train", "tiny/train_inpaint.yaml", override], "override")]
    for argv, named in cases:
        assert str(named) in _refused(argv, capsys), argv


@pytest.mark.parametrize("bases,said", [("self.yaml", "includes itself: self.yaml -> self.yaml"),
                                         ("other.yaml", "includes itself: self.yaml -> other.yaml -> self.yaml"),
                                         ("5", "_base_ must be a file name"), ("[[a.yaml]]", "_base_ must be"),
                                         ("{a: b}", "_base_ must be")])
def test_base_cycles_and_bad_bases_are_named(tmp_path, bases, said):
    from pcdms_aug.config.loading import load_config

    (tmp_path / "self.yaml").write_text(f"_base_: {bases}\nviews: 2\n")
    (tmp_path / "other.yaml").write_text("_base_: self.yaml\n")
    with pytest.raises(DataError, match=said.replace("[", r"\[")) as e:
        load_config(tmp_path / "self.yaml")
    assert "self.yaml" in str(e.value)


# ------------------------------------------------------------------------- sizes before any tensor
@pytest.fixture(scope="module")
def tiny_copy(tmp_path_factory):
    from pcdms_aug.pipelines.weights_path import WEIGHTS_ROOT

    w = tmp_path_factory.mktemp("w") / "tiny"
    shutil.copytree(WEIGHTS_ROOT / "tiny", w)
    return w


def _edited(folder, stage, edit):
    cfg_file = folder / stage / "config.json"
    original = cfg_file.read_text()
    cfg = json.loads(original)
    node = cfg
    *parents, last = edit[0].split(".")
    for p in parents:
        node = node[p]
    node[last] = edit[1]
    cfg_file.write_text(json.dumps(cfg))
    return original


@pytest.mark.parametrize("stage,edit,said", [
    ("inpaint", ("unet.config.block_out_channels", [32, 64, 16000]), "block_out_channels[2] = 16000 is out of range"),
    ("inpaint", ("unet.config.block_out_channels", [32, 64, 4000]), "weights do not match the config"),
    ("inpaint", ("unet.config.layers_per_block", -1), "layers_per_block = -1 is out of range"),
    ("inpaint", ("unet.config.cross_attention_dim", 10**9), "cross_attention_dim = 1000000000 is out of range"),
    ("inpaint", ("unet.config.layers_per_block", 10**400), "out of range"),
    ("inpaint", ("pose_encoder.channels", [16, 32, 96, 10**6]), "out of range"),
    ("inpaint", ("image_size", [100000, 64]), "image_size[0] = 100000 is out of range"),
    ("inpaint", ("unet.config.block_out_channels", [32, 64, 0]), "config.json"),
    ("inpaint", ("unet.config.block_out_channels", list(range(1, 200))), "at most 64"),
    ("prior", ("prior.width", 2**40), "prior.width"),
    ("prior", ("prior.layers", 5000), "prior.layers = 5000 is out of range"),
    ("prior", ("prior.heads", -3), "prior.heads = -3"),
    ("refine", ("clip.config.hidden_size", 10**7), "clip.config.hidden_size"),
    ("refine", ("scheduler.num_train_timesteps", 10**9), "num_train_timesteps"),
])
def test_sizes_in_a_stage_config_are_checked_before_any_tensor(tiny_copy, capsys, stage, edit, said):
    import resource

    from pcdms_aug.stages import stage_class

    original = _edited(tiny_copy, stage, edit)
    try:
        assert main(["bench", "--weights", str(tiny_copy), "--pairs", "1", "--steps", "1"]) == 2
        line = _one_error_line(capsys.readouterr().err, "bench")
        assert said in line and str(tiny_copy / stage) in line, line
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        with pytest.raises(DataError):
            stage_class(stage).from_pretrained(tiny_copy / stage)
        assert time.perf_counter() - t < 2
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KB: nothing was allocated
    finally:
        (tiny_copy / stage / "config.json").write_text(original)


@pytest.mark.parametrize("text,said", [
    ('{"stages": {"inpaint": "inpaint"}, "sampling": {"sheduler": "ddim"}}', "did you mean 'sampling.scheduler'"),
    ('{"stages": {"inpaint": "inpaint"}, "sampling": {"steps": {"inpaint": 1000000000}}}', "sampling.steps.inpaint"),
    ('{"stages": {"inpaint": "inpaint"}, "image_size": [128, 100000000]}', "image_size"),
    ('{"stages": {"inpaint": "inpaint"}, "batch_size": -4}', "batch_size"),
    ('{"stages": 5}', "stages=5"), ('{"stages": {"inpaint": 3}}', "stages="), ('{"weights": [1]}', "weights="),
    ('[1, 2]', "not a mapping"), ('{"stages": ', "invalid YAML"), ("[" * 5000, "nested too deeply"),
    ('{"random_weights": "yes"}', "random_weights"),
])
def test_a_pipeline_json_is_checked_like_a_pipeline_yaml(tiny_copy, tmp_path, text, said):
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline

    folder = tmp_path / "p"
    shutil.copytree(tiny_copy, folder)
    (folder / "pipeline.yaml").unlink()
    (folder / "pipeline.json").write_text(text)
    with pytest.raises(DataError, match=said.replace("[", r"\[")) as e:
        PCDMsPipeline.from_pretrained(folder)
    assert "pipeline.json" in str(e.value)


@pytest.mark.parametrize("key,value,said", [
    ("views", 10**9, "views must be an integer in 1..100"), ("batch", 0, "batch"), ("batch", 10**7, "batch"),
    ("canonical_poses", 10**9, "canonical_poses"), ("coverage_candidates", -1, "coverage_candidates"),
    ("seed", -1, "seed"), ("seed", 10**30, "seed"), ("jpeg_quality", 500, "jpeg_quality"),
    ("steps", {"inpaint": 10**9}, "steps.inpaint"), ("steps", 10**401, "steps"),
    ("views", "9" * 5000, "views"), ("annotations", [1, 2], "annotations"),
    ("filter", {"size": [10**9, 64]}, "filter.size"), ("filter", {"train_epochs": 10**9}, "train_epochs"),
    ("dataset", "x" * 10**6, "dataset"),
])
def test_generate_config_counts_are_bounded_and_named(tmp_path, capsys, synth_market, key, value, said):
    import yaml

    cfg = {"dataset": str(synth_market), "weights": "tiny", "out": str(tmp_path / "o"), key: value}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(cfg, width=10**8))
    line = _refused(["generate", "--config", str(path)], capsys)
    assert said in line and len(line) < 600
    assert not (tmp_path / "o").exists()


def _int_flags():
    """(command, flag) of every integer flag of every command (plugins included)."""
    import argparse

    from pcdms_aug.cli import main as cli

    found = []
    for name in cli.commands():
        top = argparse.ArgumentParser(prog="pcdms-aug")
        parser = cli._command_parser(name, top.add_subparsers(dest="command"))
        for action in parser._actions:
            if not action.option_strings or action.type is None or not callable(action.type):
                continue
            try:
                is_int = isinstance(action.type("1"), int)
            except Exception:  # noqa: BLE001 - a type that refuses "1" is not a count
                is_int = False
            if is_int:
                found.append((name, action.option_strings[-1]))
    return found


def test_every_integer_flag_of_every_command_is_bounded_and_named(capsys):
    """-1, a trillion, 401 digits: refused with one line naming the flag (by argparse, or, for bench, by its
    own check before anything loads), in well under a second."""
    flags = _int_flags()
    assert len(flags) > 25 and ("generate", "--views") in flags and ("demo", "--seeds") in flags
    for command, flag in flags:
        for value in ("-1", "1000000000000", "9" * 401):
            t = time.perf_counter()
            try:
                rc = main([command, flag, value])
            except SystemExit as e:
                rc = e.code
            line = capsys.readouterr().err.strip().splitlines()[-1]
            assert rc == 2 and flag in line and len(line) < 300 and time.perf_counter() - t < 5, \
                (command, flag, value, line)


@pytest.mark.parametrize("argv", [["generate", "--views", "1000000000"], ["bench", "--views", "1000000000"],
                                  ["generate", "--seed", "-1"], ["synthesize-pairs", "--batch", "99999999"],
                                  ["render-pose", "--cols", "100000000"], ["demo", "--epochs", "10000000"],
                                  ["synth-market", "x", "--train-ids", "100000000"]])
def test_count_flags_are_refused_before_use_naming_the_flag(argv, capsys):
    t = time.perf_counter()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    assert rc == 2 and time.perf_counter() - t < 3
    flag = next(a for a in argv if a.startswith("--"))
    assert flag in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("override,said", [("seeds=[1.7]", "seeds[0]"), ("seeds=[abc]", "seeds[0]"),
                                           ("seeds=[-1]", "seeds[0]"), ("fractions=[abc]", "fractions[0]"),
                                           ("out_dir=", "out_dir is empty"), ("out_dir=/", "root folder"),
                                           ("out_dir='~'", "home folder")])
def test_reid_experiment_values_are_checked_and_named(synth_market, capsys, override, said):
    assert said in _refused(["reid-experiment", "tiny/reid.yaml", f"root={synth_market.parent}", override], capsys)


@pytest.mark.parametrize("digits", ["9" * 401, "1" + "0" * 30, "[[[[[[" * 400])
def test_an_absurd_coordinate_is_refused_with_its_row(tmp_path, digits):
    from pcdms_aug.data.pose import read_annotations

    ys = [10] * 18
    csv = tmp_path / "a.csv"
    csv.write_text("name:keypoints_y:keypoints_x\n0001_c1s1_000001_00.jpg: "
                   f"[{digits}, {', '.join(map(str, ys[1:]))}]: {ys}\n")
    with pytest.raises(DataError, match=r"a.csv:2: "):
        read_annotations(csv)


@pytest.mark.parametrize("where", ["split", "ref", "refine_inputs"])
def test_json_files_read_nested_or_huge_are_refused_by_name(tmp_path, where):
    from pcdms_aug.config.loading import read_json

    path = tmp_path / "x.json"
    path.write_text("[" * 100_000)
    with pytest.raises(DataError, match="nested too deeply") as e:
        read_json(path, where)
    path.write_text('"' + "x" * (2 << 20) + '"')
    with pytest.raises(DataError, match="too large"):
        read_json(path, where)
    assert e.value.path == str(path)


# --------------------------------------------------------------- fuzz: configs give only named errors
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10, 300), st.integers(-2**70, 2**70),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.lists(st.integers(-5, 100), max_size=5), st.dictionaries(st.text(max_size=5), st.integers(0, 9),
                                                                               max_size=3))


def _paths(node, prefix=()):
    """Every key path of a JSON-like tree (list items by index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _set(tree, path, value):
    node = tree
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


@pytest.fixture(scope="module")
def inpaint_config(tiny_copy):
    return json.loads((tiny_copy / "inpaint" / "config.json").read_text())


@settings(max_examples=int(os.environ.get("FUZZ_STAGE", 10)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_a_stage_config_json_loads_or_is_a_named_error(tiny_copy, tmp_path_factory, inpaint_config, data):
    from pcdms_aug.stages import InpaintStage

    cfg = json.loads(json.dumps(inpaint_config))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(sorted(_paths(cfg), key=str)))
        _set(cfg, path, data.draw(VALUES))
    folder = tmp_path_factory.mktemp("fuzz") / "inpaint"
    shutil.copytree(tiny_copy / "inpaint", folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    try:
        InpaintStage.from_pretrained(folder)
    except DataError as e:
        assert str(folder) in str(e) and len(str(e)) < 2100


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), as_json=st.booleans())
def test_fuzz_a_pipeline_file_is_checked_or_a_named_error(tmp_path_factory, data, as_json):
    import yaml

    from pcdms_aug.pipelines.loading import read_pipeline_yaml
    from pcdms_aug.pipelines.weights_path import WEIGHTS_ROOT

    cfg = yaml.safe_load((WEIGHTS_ROOT / "tiny" / "pipeline.yaml").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(sorted(_paths(cfg), key=str)))
        _set(cfg, path, data.draw(VALUES))
    folder = tmp_path_factory.mktemp("pipe")
    name = "pipeline.json" if as_json else "pipeline.yaml"
    (folder / name).write_text(json.dumps(cfg) if as_json else yaml.safe_dump(cfg))
    try:
        read_pipeline_yaml(folder)
    except DataError as e:
        assert name in str(e)


GENERATE_KEYS = ["views", "per", "policy", "batch", "steps", "guidance", "scheduler", "stages", "seed", "dtype",
                 "canonical_poses", "coverage_candidates", "require_torso", "image_format", "jpeg_quality",
                 "annotations", "split", "filter"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(GENERATE_KEYS), st.one_of(VALUES, st.dictionaries(
    st.sampled_from(["inpaint", "prior", "bogus", "size", "train_epochs", "top", "model"]), VALUES, max_size=2)),
    max_size=4))
def test_fuzz_the_generate_config_is_valid_or_a_named_error(tmp_path_factory, values):
    from pcdms_aug.config.loading import build
    from pcdms_aug.generation.config import GenerateConfig

    out = tmp_path_factory.getbasetemp() / "never-made"
    data = {"dataset": "d", "weights": "tiny", "out": str(out), **values}
    try:
        build(GenerateConfig, data, "generate config").check()
    except DataError as e:
        assert len(str(e)) < 2100
    assert not out.exists()
