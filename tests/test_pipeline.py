import numpy as np
import pytest
import torch
from PIL import Image

from pcdms_aug import PCDMsPipeline
from pcdms_aug.stages.diffusion import sampler_name
from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.pose import Pose

# One thread: the tests share two cores with other work, and spinning OpenMP threads cost more than they give.
torch.set_num_threads(1)

STEPS = {"prior": 2, "inpaint": 2, "refine": 2}


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return PCDMsPipeline.from_config("tiny/pipeline.yaml", seed=0)


def _pose(seed):
    rng = np.random.default_rng(seed)
    xy = np.stack([rng.uniform(5, 59, 18), rng.uniform(5, 123, 18)], 1)
    xy[14] = -1
    return xy


def _image(seed, size=(128, 64)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def test_end_to_end_pil_at_source_size(pipe):
    out = pipe([_image(0), _image(1)], [_pose(0), _pose(1)], [_pose(2), _pose(3)], num_inference_steps=STEPS,
               generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 2 and out.images[0].size == (64, 128)
    assert len(out.coarse_images) == 2 and out.coarse_images[0].size == (64, 128)
    big = pipe(_image(0, (256, 128)), _pose(0) * 2, [_pose(2) * 2], num_inference_steps=STEPS)
    assert big.images[0].size == (128, 256)


def test_same_generator_same_pixels_and_batching_does_not_matter(pipe):
    srcs, sps, tps = [_image(i) for i in range(3)], [_pose(i) for i in range(3)], [_pose(10 + i) for i in range(3)]
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(3)]  # noqa: E731
    a = pipe(srcs, sps, tps, num_inference_steps=STEPS, generator=gens(), output_type="np")
    b = pipe(srcs, sps, tps, num_inference_steps=STEPS, generator=gens(), output_type="np")
    assert np.array_equal(a.images, b.images)
    one = pipe(srcs[2:], sps[2:], tps[2:], num_inference_steps=STEPS, generator=gens()[2:], output_type="np")
    small = pipe(srcs, sps, tps, num_inference_steps=STEPS, generator=gens(), output_type="np", batch_size=1)
    level = 1 / 255 + 1e-6  # one grey level of the saved image
    assert np.abs(a.images[2] - one.images[0]).max() <= level
    assert np.abs(a.images - small.images).max() <= level


def test_one_source_many_targets_is_encoded_once(pipe, monkeypatch):
    calls = []
    for name, stage in pipe.stages.items():
        orig = stage.encode_source

        def counted(images, _orig=orig, _name=name):
            calls.append((_name, images.shape[0]))
            return _orig(images)
        monkeypatch.setattr(stage, "encode_source", counted)
    out = pipe(_image(0), _pose(0), [_pose(i) for i in range(5)], num_inference_steps=STEPS, batch_size=2)
    assert len(out.images) == 5
    assert sorted(calls) == [("inpaint", 1), ("prior", 1), ("refine", 1)]


def test_guidance_schedulers_and_stage_subsets(pipe):
    for sched in ("ddim", "unipc", "dpmsolver++"):
        for g in (1.0, 3.0):
            out = pipe(_image(0), _pose(0), [_pose(1)], num_inference_steps=STEPS, guidance_scale=g,
                       scheduler=sched, output_type="pt")
            assert out.images.shape == (1, 3, 128, 64)
    two = pipe(_image(0), _pose(0), [_pose(1)], num_inference_steps=STEPS, stages=("prior", "inpaint"),
               output_type="pt", generator=torch.Generator().manual_seed(0))
    assert torch.equal(two.images, two.coarse_images)
    emb = two.target_embeds
    forced = pipe(_image(0), _pose(0), [_pose(1)], num_inference_steps=STEPS, stages=("inpaint",),
                  target_embeds=emb, output_type="pt")
    assert forced.images.shape == (1, 3, 128, 64)


def test_bad_inputs_raise_value_error(pipe):
    with pytest.raises(ValueError, match=r"\(18, 2\)"):
        pipe(_image(0), np.zeros((17, 2)), [_pose(1)], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="2 source images for 3 target poses"):
        pipe([_image(0), _image(1)], [_pose(0), _pose(1)], [_pose(1)] * 3, num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="aspect ratio"):
        pipe(_image(0, (64, 64)), _pose(0), [_pose(1)], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="share one size"):
        pipe([_image(0), _image(1, (256, 128))], [_pose(0), _pose(1)], [_pose(1)] * 2)
    with pytest.raises(ValueError, match="scheduler"):
        pipe(_image(0), _pose(0), [_pose(1)], scheduler="euler")
    with pytest.raises(ValueError, match="target_embeds"):
        pipe(_image(0), _pose(0), [_pose(1)], stages=("inpaint",))
    with pytest.raises(ValueError, match="generators"):
        pipe(_image(0), _pose(0), [_pose(1)], generator=[torch.Generator()] * 2)


def test_pose_objects_are_scaled_to_the_source(pipe):
    p = Pose.from_array(_pose(1), (128, 64))
    a = pipe(_image(0), p, [p], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
             output_type="np")
    b = pipe(_image(0), _pose(1), [_pose(1)], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
             output_type="np")
    assert np.array_equal(a.images, b.images)


def test_save_and_from_pretrained(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    back = PCDMsPipeline.from_pretrained(tmp_path / "p")
    kw = dict(num_inference_steps=STEPS, output_type="np")
    a = pipe(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(1), **kw)
    b = back(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(1), **kw)
    assert np.array_equal(a.images, b.images)
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == ["inpaint", "pipeline.yaml", "prior", "refine"]
    for stage in ("prior", "inpaint", "refine"):
        files = {p.name for p in (tmp_path / "p" / stage).iterdir()}
        assert {"config.json", "stage.yaml"} <= files and any(f.endswith(".safetensors") for f in files)
    with pytest.raises(DataError, match="pipeline.yaml missing"):
        PCDMsPipeline.from_pretrained(tmp_path)
    # one copy of each frozen encoder, shared by the stages that use it, after loading too
    assert back.stages["prior"].clip is back.stages["inpaint"].clip
    assert back.stages["inpaint"].dino is back.stages["refine"].dino
    # a stage folder alone, and stages assembled from folders
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline as P
    two = P.from_stages({"prior": tmp_path / "p" / "prior", "inpaint": tmp_path / "p" / "inpaint"})
    c = two(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(1), stages=("prior", "inpaint"),
            **kw)
    d = pipe(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(1), stages=("prior", "inpaint"),
             **kw)
    assert np.array_equal(c.images, d.images)
    with pytest.raises(ValueError, match="not loaded"):
        two(_image(0), _pose(0), [_pose(1)], **kw)


def test_a_frozen_encoder_two_stages_share_is_written_once_and_loads_back_exactly(pipe, tmp_path):
    import hashlib
    import json

    pipe.save_pretrained(tmp_path / "p")
    for stage, comp, owner in (("inpaint", "clip", "prior"), ("refine", "dino", "inpaint")):
        folder = tmp_path / "p" / stage
        assert not (folder / f"{comp}.safetensors").exists()
        ref = json.loads((folder / f"{comp}.ref.json").read_text())
        assert ref["same_as"] == f"{owner}/{comp}.safetensors"
        assert ref["sha256"] == hashlib.sha256((tmp_path / "p" / ref["same_as"]).read_bytes()).hexdigest()
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in (tmp_path / "p").rglob("*.safetensors")]
    assert len(digests) == len(set(digests))
    back = PCDMsPipeline.from_pretrained(tmp_path / "p")
    for name, stage in pipe.stages.items():
        mine, theirs = stage.state_dict(), back.stages[name].state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name
    assert back.stages["prior"].clip is back.stages["inpaint"].clip
    assert back.stages["inpaint"].dino is back.stages["refine"].dino
    # A stage folder of the pipeline loads alone too (it follows its reference), and one saved alone (training's
    # OUT/final) holds every file itself.
    alone = PCDMsPipeline.from_stages({"inpaint": tmp_path / "p" / "inpaint"}).stages["inpaint"].state_dict()
    mine = pipe.stages["inpaint"].state_dict()
    assert alone.keys() == mine.keys() and all(torch.equal(alone[k], mine[k]) for k in mine)
    pipe.stages["refine"].save_pretrained(tmp_path / "final")
    assert (tmp_path / "final" / "dino.safetensors").is_file() and not list((tmp_path / "final").glob("*.ref.json"))


def test_the_shipped_tiny_folder_is_what_save_pretrained_writes(tmp_path):
    """The shipped files are the real save path's (fp16 trainables, each frozen encoder once): loading and saving
    them again gives the same bytes, file for file."""
    from pcdms_aug.pipelines.weights_path import WEIGHTS_ROOT

    torch.set_num_threads(1)
    PCDMsPipeline.from_pretrained("tiny").save_pretrained(tmp_path / "t", trainable_dtype=torch.float16)
    shipped = WEIGHTS_ROOT / "tiny"
    names = sorted(str(f.relative_to(shipped)) for f in shipped.rglob("*") if f.is_file())
    assert names == sorted(str(f.relative_to(tmp_path / "t")) for f in (tmp_path / "t").rglob("*") if f.is_file())
    assert "inpaint/clip.ref.json" in names and "refine/dino.ref.json" in names
    assert [n for n in names if (shipped / n).read_bytes() != (tmp_path / "t" / n).read_bytes()] == []


def test_missing_stage_folder_and_shipped_weights_are_data_errors(pipe, tmp_path, monkeypatch):
    import shutil

    import pcdms_aug.pipelines.weights_path as pl

    pipe.save_pretrained(tmp_path / "p")
    shutil.rmtree(tmp_path / "p" / "refine")
    with pytest.raises(DataError, match="refine"):
        PCDMsPipeline.from_pretrained(tmp_path / "p")
    monkeypatch.setattr(pl, "WEIGHTS_ROOT", tmp_path / "weights")
    with pytest.raises(DataError, match="tiny weights are missing"):
        PCDMsPipeline.from_pretrained("tiny")
    pipe.save_pretrained(tmp_path / "weights" / "tiny")
    assert set(PCDMsPipeline.from_pretrained("tiny").stages) == {"prior", "inpaint", "refine"}


def test_paper_config_never_downloads(tmp_path):
    """Without local folders the paper pipeline stops at once, naming the setting and the folder."""
    with pytest.raises(DataError, match=r"weights\.clip_vit_h is not set.*huggingface-cli download"):
        PCDMsPipeline.from_config("paper/pipeline.yaml")
    with pytest.raises(DataError, match="nowhere"):
        PCDMsPipeline.from_config("paper/pipeline.yaml", overrides=[f"weights.clip_vit_h={tmp_path / 'nowhere'}"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="config.json"):
        PCDMsPipeline.from_config("paper/pipeline.yaml", overrides=[f"weights.clip_vit_h={empty}"])


def test_repeated_sources_are_encoded_once_and_encodings_can_be_reused(pipe, monkeypatch):
    calls = []
    for name, stage in pipe.stages.items():
        orig = stage.encode_source

        def counted(images, _orig=orig, _name=name):
            calls.append((_name, images.shape[0]))
            return _orig(images)
        monkeypatch.setattr(stage, "encode_source", counted)
    srcs = [_image(0), _image(1), _image(0), _image(0)]
    sps = [_pose(0), _pose(1), _pose(0), _pose(0)]
    tps = [_pose(5 + i) for i in range(4)]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    a = pipe(srcs, sps, tps, num_inference_steps=STEPS, generator=gens(), output_type="pt")
    assert sorted(calls) == [("inpaint", 2), ("prior", 2), ("refine", 2)]
    calls.clear()
    enc = pipe.encode_sources([_image(0), _image(1)])
    b = pipe(None, sps, tps, num_inference_steps=STEPS, generator=gens(), output_type="pt",
             source_encoding=enc.select([0, 1, 0, 0]))
    assert len(calls) == 3 and torch.equal(a.images, b.images) and torch.equal(a.coarse_images, b.coarse_images)
    with pytest.raises(ValueError, match="source_encoding="):
        pipe(enc, sps[:2], tps[:2])
    with pytest.raises(ValueError, match="not both"):
        pipe([_image(0), _image(1)], sps[:2], tps[:2], source_encoding=enc)
    with pytest.raises(ValueError, match="out of range"):
        enc.select([2])


def test_output_types_and_tensor_inputs(pipe):
    x = torch.rand(2, 3, 128, 64) * 2 - 1
    kw = dict(num_inference_steps=STEPS, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    pt = pipe(x, [_pose(0), _pose(1)], [_pose(2), _pose(3)], output_type="pt", **kw)
    assert pt.images.shape == (2, 3, 128, 64) and pt.images.dtype == torch.float32
    assert 0 <= pt.images.min() and pt.images.max() <= 1 and pt.images.std() > 0.01  # diffusers' range
    assert pt.target_embeds.shape == (2, pipe.stages["prior"].clip.dim)
    kw["generator"] = [torch.Generator().manual_seed(i) for i in range(2)]
    arr = pipe(x, [_pose(0), _pose(1)], [_pose(2), _pose(3)], output_type="np", **kw)
    assert arr.images.shape == (2, 128, 64, 3) and arr.images.dtype == np.float32
    assert np.array_equal(pt.images.permute(0, 2, 3, 1).numpy(), arr.images)
    kw["generator"] = [torch.Generator().manual_seed(i) for i in range(2)]
    pil = pipe(x, [_pose(0), _pose(1)], [_pose(2), _pose(3)], **kw)
    assert np.array_equal(np.stack([np.array(im) for im in pil.images]), (arr.images * 255).round().astype(np.uint8))
    with pytest.raises(ValueError, match="output_type"):
        pipe(x[:1], _pose(0), [_pose(1)], output_type="jpg")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        pipe(x[:1] * 5, _pose(0), [_pose(1)])


def test_check_inputs_fills_in_the_config_defaults_and_encodes_nothing(pipe, monkeypatch):
    for stage in pipe.stages.values():
        monkeypatch.setattr(stage, "encode_source", lambda images: pytest.fail("check_inputs encoded a source"))
    samp = pipe.config["sampling"]
    call = pipe.check_inputs(_image(0, (256, 128)), _pose(0) * 2, [_pose(1) * 2, _pose(2) * 2],
                             num_inference_steps={"prior": 3})
    assert call.steps == {**samp["steps"], "prior": 3}
    assert call.guidance == {n: float(v) for n, v in samp["guidance"].items()}
    assert (call.refine_strength, call.refine_noise) == (samp["refine_strength"], samp["refine_noise"])
    assert call.samplers == pipe.schedulers and {sampler_name(s) for s in call.samplers.values()} == {samp["scheduler"]}
    assert call.batch_size == pipe.config["batch_size"] and call.size == (256, 128)
    assert tuple(call.sources.shape) == (1, 3, *pipe.image_size) and call.pair_source == [0, 0]
    with pytest.raises(ValueError, match="1 source poses for 2 source images"):
        pipe.check_inputs([_image(0), _image(1)], [_pose(0)], [_pose(1), _pose(2)])


def test_per_stage_settings_are_checked(pipe):
    with pytest.raises(ValueError, match="unknown stage"):
        pipe(_image(0), _pose(0), [_pose(1)], num_inference_steps={"prior": 2, "refiner": 2})
    with pytest.raises(ValueError, match="at least 1"):
        pipe(_image(0), _pose(0), [_pose(1)], num_inference_steps={"prior": 0})
    with pytest.raises(ValueError, match="number or a dict"):
        pipe(_image(0), _pose(0), [_pose(1)], guidance_scale="high")
    with pytest.raises(ValueError, match="include 'inpaint'"):
        pipe(_image(0), _pose(0), [_pose(1)], stages=("prior", "refine"))
    with pytest.raises(ValueError, match="source poses"):
        pipe([_image(0), _image(1)], [_pose(0)], [_pose(1), _pose(2)])
    with pytest.raises(ValueError, match="target_embeds must be"):
        pipe(_image(0), _pose(0), [_pose(1)], stages=("inpaint",), target_embeds=torch.zeros(2, 3))


def test_fp16_storage_of_trained_parts_loads_back_in_fp32(tmp_path):
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline as P
    pipe = P.from_config("tiny/pipeline.yaml", seed=0)
    pipe.save_pretrained(tmp_path / "h", trainable_dtype=torch.float16)
    pipe.save_pretrained(tmp_path / "f")
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "h") < 0.6 * size(tmp_path / "f")
    back = P.from_pretrained(tmp_path / "h")
    unet = back.stages["inpaint"].unet
    assert next(unet.parameters()).dtype == torch.float32
    ref = pipe.stages["inpaint"].unet.state_dict()
    for k, v in unet.state_dict().items():
        assert torch.equal(v, ref[k].half().float())


def test_shipped_tiny_weights_load_and_generate_the_reference_images():
    """tests/data/tiny_reference.png: [coarse | final] view the shipped weights gave for this input and generator
    when it was stored (one CPU thread, torch 2.x). Another torch build may round a few values differently, so a
    pixel may move by a step or two; a changed config default, weight or sampler changes the image wholesale."""
    from pathlib import Path

    from pcdms_aug.pipelines.weights_path import WEIGHTS_ROOT
    if not (WEIGHTS_ROOT / "tiny" / "pipeline.yaml").is_file():
        pytest.fail("the shipped tiny weights are missing from the checkout (scripts/train_tiny.sh makes them)")
    torch.set_num_threads(1)
    pipe = PCDMsPipeline.from_pretrained("tiny")
    out = pipe(_image(0), _pose(0), [_pose(1)], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np")
    assert out.images.shape == (1, 128, 64, 3) and out.images.std() > 5 / 255
    pil = pipe(_image(0), _pose(0), [_pose(1)], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="pil")
    got = np.concatenate([np.asarray(pil.coarse_images[0]), np.asarray(pil.images[0])], 1).astype(np.int16)
    with Image.open(Path(__file__).parent / "data" / "tiny_reference.png") as im:
        want = np.asarray(im.convert("RGB")).astype(np.int16)
    diff = np.abs(got - want)
    assert diff.max() <= 3 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_refine_strength_comes_from_the_config_and_shortens_stage_3(pipe, monkeypatch):
    calls = []
    unet = pipe.stages["refine"].unet
    handle = unet.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        kw = dict(num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
        full = pipe(_image(0), _pose(0), [_pose(1)], refine_strength=1.0, **kw)
        n_full, calls[:] = len(calls), []
        kw["generator"] = torch.Generator().manual_seed(0)
        half = pipe(_image(0), _pose(0), [_pose(1)], refine_strength=0.5, **kw)
        n_half, calls[:] = len(calls), []
        monkeypatch.setitem(pipe.config.setdefault("sampling", {}), "refine_strength", 0.5)
        kw["generator"] = torch.Generator().manual_seed(0)
        default = pipe(_image(0), _pose(0), [_pose(1)], **kw)
    finally:
        handle.remove()
    assert (n_full, n_half) == (4, 2) and len(calls) == 2
    assert np.array_equal(default.images, half.images) and not np.array_equal(full.images, half.images)
    assert np.array_equal(full.coarse_images, half.coarse_images)
    with pytest.raises(ValueError, match="refine_strength"):
        pipe(_image(0), _pose(0), [_pose(1)], refine_strength=0.0)


def test_refine_noise_zero_makes_stage_3_a_function_of_the_coarse_image(pipe, monkeypatch):
    kw = dict(num_inference_steps=4, output_type="np", refine_strength=0.5)
    a = pipe(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(0), refine_noise=0.0, **kw)
    b = pipe(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(0), refine_noise=1.0, **kw)
    assert np.array_equal(a.coarse_images, b.coarse_images) and not np.array_equal(a.images, b.images)
    # same coarse image, other stage-3 noise: the noise-free start gives the same final image
    refine = pipe.stages["refine"]
    src = refine.encode_source(torch.from_numpy(np.array(_image(0))).permute(2, 0, 1)[None].float() / 127.5 - 1)
    coarse = torch.from_numpy(a.coarse_images).permute(0, 3, 1, 2) * 2 - 1
    outs = [refine.sample(src, coarse, torch.Generator().manual_seed(s), 4, 1.0, "ddim", strength=0.5, noise=0.0)
            for s in (0, 1)]
    assert torch.equal(outs[0], outs[1])
    monkeypatch.setitem(pipe.config.setdefault("sampling", {}), "refine_noise", 0.0)
    c = pipe(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(0), **kw)
    assert np.array_equal(c.images, a.images)
    with pytest.raises(ValueError, match="refine_noise"):
        pipe(_image(0), _pose(0), [_pose(1)], refine_noise=-0.1)
    with pytest.raises(ValueError, match="needs refine_strength < 1"):
        pipe(_image(0), _pose(0), [_pose(1)], refine_strength=1.0, refine_noise=0.0)
    # the config's refine_noise is its img2img start's: a call from noise (strength 1) is not refused
    kw["refine_strength"] = 1.0
    d = pipe(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(0), **kw)
    e = pipe(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(0), refine_noise=1.0, **kw)
    assert np.array_equal(d.images, e.images)


def test_assemble_command(pipe, tmp_path, capsys):
    """`pcdms-aug assemble`: stage folders (a saved pipeline's or OUT/final) -> one loadable pipeline folder with
    the sampling defaults of a pipeline YAML plus overrides; images equal to the source pipeline's."""
    from pcdms_aug.cli.main import main

    pipe.save_pretrained(tmp_path / "p")
    final = tmp_path / "refine_run" / "final"
    pipe.stages["refine"].save_pretrained(final)
    out = tmp_path / "asm"
    assert main(["assemble", "--prior", str(tmp_path / "p"), "--inpaint", str(tmp_path / "p" / "inpaint"),
                 "--refine", str(final), "--out", str(out), "sampling.refine_strength=0.3"]) == 0
    assert "refine <- " in capsys.readouterr().out
    back = PCDMsPipeline.from_pretrained(out)
    assert back.config["sampling"]["refine_strength"] == 0.3 and set(back.stages) == {"prior", "inpaint", "refine"}
    kw = dict(num_inference_steps=STEPS, output_type="np", refine_strength=0.5)
    a = pipe(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(1), **kw)
    b = back(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(1), **kw)
    assert np.array_equal(a.images, b.images)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left behind
    # refused, naming the folder: a non-empty OUT, a stage folder of the wrong kind
    assert main(["assemble", "--inpaint", str(tmp_path / "p"), "--out", str(out)]) == 2
    assert str(out) in capsys.readouterr().err
    assert main(["assemble", "--inpaint", str(final), "--out", str(tmp_path / "asm2")]) == 2
    err = capsys.readouterr().err
    assert "holds stage 'refine', not 'inpaint'" in err and str(final) in err
    assert not (tmp_path / "asm2").exists()
    # stage 2 alone
    assert main(["assemble", "--inpaint", str(tmp_path / "p"), "--out", str(tmp_path / "asm3"),
                 "--dtype", "fp16"]) == 0
    assert set(PCDMsPipeline.from_pretrained(tmp_path / "asm3").stages) == {"inpaint"}


def test_atomic_dir_keeps_the_old_folder_until_the_new_one_is_whole(tmp_path):
    """The one folder-replacing rule (stage and assembled pipeline folders): a failure inside leaves the old
    folder as it was and no temporary folder; a full disk is a DataError naming the folder."""
    import errno

    from pcdms_aug.utils.io import atomic_dir

    target = tmp_path / "w"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    with pytest.raises(DataError, match="no space left") as info:
        with atomic_dir(target):
            raise OSError(errno.ENOSPC, "full")
    assert str(target) in str(info.value)
    assert (target / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["w"]
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["w"]


# ------------------------------------------------------------------ what a diffusers user expects (shipped weights)
TWO = {"prior": 2, "inpaint": 2, "refine": 2}  # the shipped refine strength 0.25 runs 1 of its 2 steps


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    pipe = PCDMsPipeline.from_pretrained("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, n=1, seed=0, **kw):
    kw.setdefault("num_inference_steps", TWO)
    kw.setdefault("output_type", "pt")
    return pipe(_image(0), _pose(0), [_pose(1 + i) for i in range(n)], generator=torch.Generator().manual_seed(seed),
                **kw)


def test_torch_dtype_and_to_take_what_diffusers_takes(tiny):
    half = PCDMsPipeline.from_pretrained("tiny", torch_dtype=torch.float16)
    assert half.dtype == torch.float16
    assert {p.dtype for s in half.stages.values() for p in s.parameters()} == {torch.float16}
    cast = PCDMsPipeline.from_pretrained("tiny").to(torch.float16)
    a, b, ref = _run(half), _run(cast), _run(tiny)
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.float32
    assert 0 < (a.images - ref.images).abs().max() < 0.02  # fp16 arithmetic, the same images
    assert cast.to("cpu", torch.float32).dtype == torch.float32 and cast.device == torch.device("cpu")
    assert cast.to(dtype="bf16").dtype == torch.bfloat16 and cast.to(device=torch.device("cpu"), dtype="fp32") is cast
    assert cast.to("float16").dtype == torch.float16
    with pytest.raises(TypeError, match="device and/or a dtype"):
        cast.to(3.5)
    with pytest.raises(TypeError, match="unexpected"):
        cast.to(torch_device="cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        PCDMsPipeline.from_pretrained("tiny", torch_dtype="fp8")


def test_a_swapped_scheduler_object_changes_the_result_and_swapping_back_reproduces_it(tiny):
    from diffusers import DDIMScheduler, UniPCMultistepScheduler

    assert set(tiny.schedulers) == {"prior", "inpaint", "refine"}
    assert tiny.inpaint_scheduler is tiny.schedulers["inpaint"]
    assert isinstance(tiny.inpaint_scheduler, DDIMScheduler)  # the shipped config's sampling.scheduler: ddim
    own = tiny.inpaint_scheduler
    base = _run(tiny)
    try:
        tiny.inpaint_scheduler = UniPCMultistepScheduler.from_config(tiny.inpaint_scheduler.config)
        swapped = _run(tiny)
        assert not torch.equal(swapped.coarse_images, base.coarse_images)
        assert torch.equal(swapped.target_embeds, base.target_embeds)  # the prior kept its sampler
        assert torch.equal(_run(tiny).images, swapped.images)  # a used sampler object gives the same again
        tiny.inpaint_scheduler = DDIMScheduler.from_config(tiny.inpaint_scheduler.config)
        assert torch.equal(_run(tiny).images, base.images)
        tiny.inpaint_scheduler = "unipc"  # the shorthand builds the same object
        assert torch.equal(_run(tiny).images, swapped.images)
        with pytest.raises(ValueError, match="unknown scheduler"):
            tiny.inpaint_scheduler = "euler"
    finally:
        tiny.inpaint_scheduler = own
    # a shorthand for one call leaves the pipeline's objects alone
    assert torch.equal(_run(tiny, scheduler={"inpaint": "unipc"}).images, swapped.images)
    assert tiny.inpaint_scheduler is own and torch.equal(_run(tiny).images, base.images)
    with pytest.raises(ValueError, match="assign it to the pipeline"):
        _run(tiny, scheduler=own)


def test_progress_bar_counts_every_denoising_step_and_can_be_disabled(capsys):
    pipe = PCDMsPipeline.from_pretrained("tiny")  # on by default, as in diffusers
    _run(pipe, n=2, batch_size=1)
    err = capsys.readouterr().err
    assert "PCDMs" in err and "10/10" in err  # 2 batches x (2 + 2 + 1) steps
    pipe.set_progress_bar_config(disable=True)
    _run(pipe)
    assert "PCDMs" not in capsys.readouterr().err
    _run(PCDMsPipeline.load("tiny", device="cpu"))  # the commands' loader: they draw their own bars
    assert "PCDMs" not in capsys.readouterr().err


def test_callback_on_step_end_sees_every_step_of_every_stage_and_can_replace_the_latents(tiny):
    seen = []

    def record(pipe, stage, step, timestep, kwargs):
        assert pipe is tiny and set(kwargs) == {"latents"}
        seen.append((stage, step, int(timestep), tuple(kwargs["latents"].shape)))
        return kwargs

    plain = _run(tiny, n=2, batch_size=1, output_type="latent")
    out = _run(tiny, n=2, batch_size=1, output_type="latent", callback_on_step_end=record)
    t = {n: [int(x) for x in tiny.schedulers[n].timesteps] for n in ("prior", "inpaint", "refine")}
    shapes = {"prior": tuple(plain.target_embeds[:1].shape), "inpaint": tuple(plain.coarse_images[:1].shape),
              "refine": tuple(plain.images[:1].shape)}
    one_batch = [(n, i, t[n][i] if n != "refine" else t[n][-1], shapes[n])
                 for n, k in (("prior", 2), ("inpaint", 2), ("refine", 1)) for i in range(k)]
    assert seen == one_batch * 2
    assert torch.equal(out.images, plain.images)  # returning the latents unchanged changes nothing

    def zero_canvas(pipe, stage, step, timestep, kwargs):
        if stage == "inpaint" and step == 1:
            return {"latents": torch.zeros_like(kwargs["latents"])}
        return kwargs

    out = _run(tiny, n=2, output_type="latent", callback_on_step_end=zero_canvas)
    assert not out.coarse_images.any() and not torch.equal(out.images, plain.images)
    with pytest.raises(ValueError, match="noise_pred not among latents"):
        _run(tiny, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["noise_pred"])


def test_latents_replace_the_drawn_noise(tiny):
    shape = _run(tiny, output_type="latent")
    g = torch.Generator().manual_seed(5)
    noise = {"prior": torch.randn(shape.target_embeds.shape, generator=g),
             "inpaint": torch.randn(shape.coarse_images.shape, generator=g),
             "refine": torch.randn(shape.images.shape, generator=g)}  # drawn in the order the stages draw
    drawn = _run(tiny, seed=5)
    given = _run(tiny, seed=99, latents=noise)
    assert torch.equal(given.images, drawn.images) and torch.equal(given.coarse_images, drawn.coarse_images)
    assert not torch.equal(_run(tiny, seed=99).images, drawn.images)
    other = _run(tiny, seed=5, latents={"inpaint": torch.randn(shape.coarse_images.shape)})
    assert torch.equal(other.target_embeds, drawn.target_embeds) and not torch.equal(other.images, drawn.images)
    with pytest.raises(ValueError, match="latents must have the shape"):
        _run(tiny, latents={"inpaint": torch.zeros(1, 3, 4, 4)})
    with pytest.raises(ValueError, match="one row per pair"):
        _run(tiny, latents={"inpaint": noise["inpaint"].repeat(2, 1, 1, 1)})
    with pytest.raises(ValueError, match="does not run"):
        _run(tiny, latents={"refine": noise["refine"]}, stages=("prior", "inpaint"))
    with pytest.raises(ValueError, match=r"\{stage: tensor\}"):
        _run(tiny, latents=noise["inpaint"])


def test_latent_output_is_the_undecoded_final_and_return_dict_false_a_tuple(tiny):
    from diffusers.utils import BaseOutput

    from pcdms_aug.pipelines.image_processing import resize

    pt, lat = _run(tiny), _run(tiny, output_type="latent")
    assert isinstance(pt, BaseOutput) and pt["images"] is pt.images and pt[0] is pt.images
    decoded = (resize(tiny.stages["refine"].decode(lat.images), (128, 64)) * 0.5 + 0.5).clamp(0, 1)
    assert torch.equal(decoded, pt.images)
    coarse = (resize(tiny.stages["inpaint"].decode(lat.coarse_images), (128, 64)) * 0.5 + 0.5).clamp(0, 1)
    assert torch.equal(coarse, pt.coarse_images)
    two = _run(tiny, output_type="latent", stages=("prior", "inpaint"))
    assert torch.equal(two.images, two.coarse_images) and torch.equal(two.images, lat.coarse_images)
    images, coarse_images, embeds, timings = _run(tiny, return_dict=False)
    assert torch.equal(images, pt.images) and torch.equal(coarse_images, pt.coarse_images)
    assert torch.equal(embeds, pt.target_embeds) and set(timings) == {"encode", "prior", "inpaint", "refine"}
    forced = _run(tiny, return_dict=False, stages=("inpaint",), target_embeds=embeds)
    assert len(forced) == 4 and torch.equal(forced[0], forced[1]) and torch.equal(forced[2], embeds)


def test_model_cpu_offload_moves_one_stage_at_a_time_and_gives_the_same_images(tiny, monkeypatch):
    """On this CPU-only machine the execution device is the CPU too: the images must be the same, and the
    moves (recorded around the real ``Stage.to``) must put the running stage, and only it, on that device."""
    pipe = PCDMsPipeline.from_pretrained("tiny")
    pipe.set_progress_bar_config(disable=True)
    moves = []
    for name, stage in pipe.stages.items():
        real = stage.to

        def to(*args, _name=name, _real=real, **kw):
            moves.append((_name, str(kw.get("device", args[0] if args else None))))
            return _real(*args, **kw)
        monkeypatch.setattr(stage, "to", to)
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._execution_device == torch.device("cpu") and set(moves) == {(n, "cpu") for n in pipe.stages}
    moves.clear()
    running = []

    def check(p, stage, step, timestep, kwargs):
        running.append(stage)
        assert moves[-1] == (stage, "cpu")  # the running stage went on the device last
        others = [m for m in moves[-len(pipe.stages):-1]]
        assert {n for n, _ in others} == set(pipe.stages) - {stage}  # every other stage went off first
        return kwargs

    out = _run(pipe, n=2, batch_size=1, callback_on_step_end=check)
    assert torch.equal(out.images, _run(tiny, n=2, batch_size=1).images) and len(running) == 10
    assert {n for n, _ in moves[-3:]} == set(pipe.stages)  # all back to the CPU at the end of the call
    enc = pipe.encode_sources(_image(0))
    again = pipe(None, _pose(0), [_pose(1)], num_inference_steps=TWO, output_type="pt", source_encoding=enc,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.images, _run(tiny).images)
    pipe.to("cpu")
    assert pipe._offload_device is None
