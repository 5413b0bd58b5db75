"""Paper-scale stages: the architectures of the configs, loading from local folders, one step per stage.

No real weights are available offline, so:
- the loading paths (SD-2.1-base UNet/VAE, CLIP, DINOv2, Kandinsky prior folders) are exercised with small
  models of the same classes saved to temporary folders (fast);
- the paper-scale architectures are built with random weights (``random_weights=true``) one stage at a time in
  a fresh process that reports parameter counts and peak memory, and runs one guided denoising step and a
  training-loss forward at a reduced image size (slow).
"""
import json
import resource
import subprocess
import sys
import time

import pytest
import torch

from pcdms_aug.config.loading import load_config
from pcdms_aug.stages import build_stage

torch.set_num_threads(1)

SD21_UNET_PARAMS = 865_910_724  # UNet2DConditionModel of stable-diffusion-2-1-base, 4 input channels
CONV_IN_PER_CHANNEL = 320 * 3 * 3  # conv_in: 320 filters of 3x3 per extra input channel
CLASS_EMBEDDING = (1024 * 1280 + 1280) + (1280 * 1280 + 1280)  # projection: TimestepEmbedding(1024, 1280)
EXPECTED_UNET = {
    "inpaint": SD21_UNET_PARAMS + 5 * CONV_IN_PER_CHANNEL + CLASS_EMBEDDING,  # 9 in-channels + class embedding
    "refine": SD21_UNET_PARAMS + 4 * CONV_IN_PER_CHANNEL,  # 8 in-channels
}
# A reduced run: small images (latent sides divisible by 8 for SD's three downsamplings), DINOv2 at 56x56
# (1 + 4x4 tokens instead of 1 + 16x16); CLIP stays at 224 (its position table is fixed).
REDUCED = {
    "prior": [],
    "inpaint": ["image_size=[64,32]", "dino.image_size=[56,56]"],
    "refine": ["image_size=[128,64]", "dino.image_size=[56,56]"],
}


def _meta_unet(in_channels, class_embed):
    from diffusers import UNet2DConditionModel

    cfg = load_config("paper/sd21_unet.yaml")["unet"]["config"]
    extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=1024) if class_embed else {}
    with torch.device("meta"):
        return UNet2DConditionModel(**cfg, in_channels=in_channels, out_channels=4, **extra)


def test_inline_sd21_unet_config_is_sd21_base():
    """The inline SD-2.1-base config has SD's parameter count; our UNets differ only by conv_in's extra input
    channels and (stage 2) the projection class embedding."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(_meta_unet(4, False)) == SD21_UNET_PARAMS
    assert count(_meta_unet(9, True)) == EXPECTED_UNET["inpaint"] == 868_876_804
    assert count(_meta_unet(8, False)) == EXPECTED_UNET["refine"] == 865_922_244


def test_paper_prior_fits_the_kandinsky_prior():
    """Every transformer block, the time embedding, the prd token and the output norm of the paper prior have
    the Kandinsky-2.2 prior's names and shapes, so they initialise from it (the 1280-d layers cannot)."""
    from diffusers import PriorTransformer as Kandinsky

    from pcdms_aug.models.blocks import PriorTransformer

    cfg = load_config("paper/prior.yaml")["prior"]
    with torch.device("meta"):
        ours = PriorTransformer(embed_dim=1024, pose_dim=54, **{k: v for k, v in cfg.items() if k != "pretrained"})
        theirs = Kandinsky(num_attention_heads=32, attention_head_dim=64, num_layers=20, embedding_dim=1280,
                           num_embeddings=77, additional_embeddings=4)
    own, other = ours.state_dict(), theirs.state_dict()
    shared = [k for k in own if k in other and own[k].shape == other[k].shape]
    must = [k for k in own if k.startswith(("transformer_blocks.", "time_embedding.", "norm_out."))]
    assert must and set(must) <= set(shared) and "prd_embedding" in shared
    blocks = sum(own[k].numel() for k in own if k.startswith("transformer_blocks."))
    assert blocks == sum(other[k].numel() for k in other if k.startswith("transformer_blocks."))
    assert blocks == 20 * (4 * (2048 * 2048 + 2048) + 2 * 2 * 2048 + (2048 * 8192 + 8192) + (8192 * 2048 + 2048))


def test_paper_pose_encoder_is_controlnets_conditioning_embedding():
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

    from pcdms_aug.models.blocks import PoseEncoder

    cfg = load_config("paper/inpaint.yaml")["pose_encoder"]
    ours = PoseEncoder(out_channels=320, **cfg)
    theirs = ControlNetConditioningEmbedding(320, 3, (16, 32, 96, 256))
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    x = torch.rand(1, 3, 64, 64)
    assert ours(x).shape == theirs(x).shape == (1, 320, 8, 8)


# ----------------------------------------------------------------------------------- local folders
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Small models of the paper's classes saved in the layouts of the real repositories."""
    from diffusers import AutoencoderKL, PriorTransformer, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    tiny = load_config("tiny/encoders.yaml")
    CLIPVisionModelWithProjection(CLIPVisionConfig(**tiny["clip"]["config"])).save_pretrained(root / "clip")
    Dinov2Model(Dinov2Config(**tiny["dino"]["config"])).save_pretrained(root / "dino")
    unet_cfg = dict(load_config("tiny/refine.yaml")["unet"]["config"])
    UNet2DConditionModel(**unet_cfg, in_channels=4, out_channels=4).save_pretrained(root / "sd" / "unet")
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  layers_per_block=1).save_pretrained(root / "sd" / "vae")
    PriorTransformer(num_attention_heads=4, attention_head_dim=64, num_layers=4, embedding_dim=96,
                     num_embeddings=7, additional_embeddings=4).save_pretrained(root / "kandinsky" / "prior")
    return root


def _stage_cfg(name, root, **extra):
    cfg = load_config(f"tiny/{name}.yaml")
    cfg["weights"] = {"clip_vit_h": str(root / "clip"), "dinov2": str(root / "dino"), "sd21_base": str(root / "sd"),
                      "kandinsky22_prior": str(root / "kandinsky")}
    cfg["clip"]["pretrained"] = "weights.clip_vit_h"
    cfg["dino"]["pretrained"] = "weights.dinov2"
    for k, v in extra.items():
        cfg[k] = v
    return cfg


def test_stages_load_pretrained_parts_from_local_folders(folders, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    ref_clip = CLIPVisionModelWithProjection.from_pretrained(folders / "clip").state_dict()
    ref_unet = UNet2DConditionModel.from_pretrained(folders / "sd", subfolder="unet").state_dict()
    ref_vae = AutoencoderKL.from_pretrained(folders / "sd", subfolder="vae").state_dict()
    unet = dict(load_config("tiny/inpaint.yaml")["unet"], pretrained="weights.sd21_base")
    cfg = _stage_cfg("inpaint", folders, unet=unet, codec={"type": "vae", "pretrained": "weights.sd21_base"},
                     image_size=[32, 16])
    stage = build_stage("inpaint", cfg)
    assert all(torch.equal(v, stage.clip.model.state_dict()[k]) for k, v in ref_clip.items())
    assert all(torch.equal(v, stage.codec.vae.state_dict()[k]) for k, v in ref_vae.items())
    own = stage.unet.state_dict()
    conv = own["conv_in.weight"]
    assert conv.shape[1] == 9 and torch.equal(conv[:, :4], ref_unet["conv_in.weight"])
    assert torch.count_nonzero(conv[:, 4:]) == 0  # mask and known-half latents start at zero
    assert all(torch.equal(v, own[k]) for k, v in ref_unet.items() if k != "conv_in.weight")
    assert stage.codec.factor == 2 and stage.codec.channels == 4

    # saved: trainable parts only; the frozen ones are read from their folders again
    stage.save_pretrained(tmp_path / "inpaint")
    files = {p.name for p in (tmp_path / "inpaint").iterdir()}
    assert "unet.safetensors" in files and not {"clip.safetensors", "dino.safetensors", "codec.safetensors"} & files
    from pcdms_aug.stages import Stage
    back = Stage.from_pretrained(tmp_path / "inpaint")
    sa, sb = stage.state_dict(), back.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    batch = {"source_image": torch.rand(1, 3, 64, 32) * 2 - 1}
    src = back.encode_source(batch["source_image"])
    out = back.sample(src, torch.rand(1, 3, 64, 32), torch.rand(1, 3, 64, 32), torch.zeros(1, back.clip.dim),
                      torch.Generator().manual_seed(0), num_inference_steps=1)
    assert out.shape == (1, 3, 32, 16)


def test_prior_initialises_from_a_kandinsky_prior_folder(folders):
    from diffusers import PriorTransformer

    ref = PriorTransformer.from_pretrained(folders / "kandinsky", subfolder="prior").state_dict()
    cfg = _stage_cfg("prior", folders)
    cfg["prior"] = {"width": 256, "layers": 4, "heads": 4, "pose_hidden": 32, "pretrained": "weights.kandinsky22_prior"}
    stage = build_stage("prior", cfg)
    own = stage.prior.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in own if k.startswith("transformer_blocks."))
    assert not torch.equal(own["proj_in.weight"][:, :1], ref["proj_in.weight"][:, :1])  # 96-d: did not fit


def test_missing_or_wrong_folders_are_named(folders, tmp_path):
    from pcdms_aug.utils.errors import DataError

    cfg = _stage_cfg("refine", folders)
    cfg["weights"]["dinov2"] = str(tmp_path / "absent")
    with pytest.raises(DataError, match="absent.*facebook/dinov2-giant"):
        build_stage("refine", cfg)
    cfg["weights"]["dinov2"] = None
    with pytest.raises(DataError, match=r"weights\.dinov2 is not set"):
        build_stage("refine", cfg)
    cfg = _stage_cfg("refine", folders, unet=dict(load_config("tiny/refine.yaml")["unet"],
                                                  pretrained=str(folders / "clip")))
    with pytest.raises(DataError, match="unet/config.json"):
        build_stage("refine", cfg)


# ----------------------------------------------------------------------------------- paper scale, one step
def measure(name: str) -> dict:
    """Build one paper-scale stage with random weights, count parameters, run one guided denoising step and
    a training-loss forward; report peak memory."""
    torch.set_num_threads(2)
    cfg = load_config(f"paper/{name}.yaml", ["random_weights=true", *REDUCED[name]])
    t0 = time.perf_counter()
    stage = build_stage(name, cfg).eval()
    built = time.perf_counter() - t0
    counts = {comp: sum(p.numel() for p in m.parameters()) for comp, m in stage.components().items()}
    h, w = stage.image_size
    g = torch.Generator().manual_seed(0)
    batch = {"source_image": torch.rand(1, 3, h, w, generator=g) * 2 - 1,
             "target_image": torch.rand(1, 3, h, w, generator=g) * 2 - 1,
             "coarse_image": torch.rand(1, 3, h, w, generator=g) * 2 - 1,
             "source_pose_image": torch.rand(1, 3, h, w, generator=g),
             "target_pose_image": torch.rand(1, 3, h, w, generator=g),
             "source_pose": torch.rand(1, 54, generator=g), "target_pose": torch.rand(1, 54, generator=g)}
    t0 = time.perf_counter()
    with torch.no_grad():
        src = stage.encode_source(batch["source_image"])
        kw = dict(generator=g, num_inference_steps=1, guidance_scale=2.0, sampler="unipc")
        if name == "prior":
            out = stage.sample(src, batch["source_pose"], batch["target_pose"], **kw)
        elif name == "inpaint":
            out = stage.sample(src, batch["source_pose_image"], batch["target_pose_image"],
                               stage.clip(batch["target_image"]), **kw)
        else:
            out = stage.sample(src, batch["coarse_image"], **kw)
        loss = stage.training_loss(batch, g)
    return {"stage": name, "params": counts, "trainable": sum(p.numel() for p in stage.trainable_parameters()),
            "out_shape": list(out.shape), "finite": bool(torch.isfinite(out).all() and torch.isfinite(loss)),
            "tokens": list(src["dino"].shape) if "dino" in src else None,
            "build_s": round(built, 1), "step_s": round(time.perf_counter() - t0, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prior", "inpaint", "refine"])
def test_paper_scale_stage_runs_one_step_under_16_gb(name):
    res = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(report))
    assert report["finite"] and report["peak_rss_gb"] < 16
    p = report["params"]
    if name == "prior":
        assert report["out_shape"] == [1, 1024]
        assert p["clip"] > 600e6  # OpenCLIP ViT-H/14 vision tower with projection
    else:
        assert p["unet"] == EXPECTED_UNET[name]
        assert p["dino"] > 1.1e9 and p["image_proj"] == 1536 * 768 + 768 + 2 * 768 + 768 * 1024 + 1024
        assert report["tokens"][-1] == 1536
    if name == "inpaint":
        assert report["out_shape"] == [1, 3, 64, 32]
        assert p["pose_encoder"] == 1_086_480 and p["codec"] > 80e6
    if name == "refine":
        assert report["out_shape"] == [1, 3, 128, 64] and "pose_encoder" not in p


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))


# ----------------------------------------------------------------------------------- the CLI loop, paper configs
@pytest.mark.slow  # 5.4 min on 2 shared cores (most of it generate over every synthetic training image)
def test_paper_configs_run_the_whole_cli_loop_on_downloaded_layouts(tmp_path, synth_market, capsys):
    """The paper configs, pointed at random-weight folders in the downloaded layouts (reduced depth, 64x32
    images): every stage trains 2 steps and resumes, stage 2 writes stage 3's inputs, a checkpoint exports,
    the stages assemble (sampling defaults taken from the paper stages), and generate, synthesize-pairs and
    metrics run on the result."""
    import shutil

    from pcdms_aug.cli.main import main
    from pcdms_aug.testing.paper_fixture import stage_overrides, write_folders

    torch.set_num_threads(2)
    weights = tmp_path / "weights"
    write_folders(weights)
    model = {n: stage_overrides(weights, prefix="model.", stage=n) for n in ("prior", "inpaint", "refine")}
    data = [f"data.root={synth_market}", f"data.annotations={synth_market / 'market-annotation-train.csv'}",
            "data.image_size=[64,32]", "data.max_pairs=8", "data.num_workers=0"]
    short = ["train.batch_size=2", "train.max_steps=2", "train.checkpoint_every=1", "train.sample_every=0",
             "train.log_every=1", "train.warmup_steps=1", "train.device=cpu", "train.mixed_precision='no'"]
    runs = tmp_path / "runs"

    def train(stage, *extra):
        out = runs / stage
        args = ["train", f"paper/train_{stage}.yaml", *data, *short, *model[stage], f"train.out={out}", *extra]
        assert main([*args, "--no-progress"]) == 0, capsys.readouterr().err
        return out

    for stage in ("prior", "inpaint"):
        out = train(stage)
        shutil.rmtree(out / "checkpoint-2"), shutil.rmtree(out / "final")
        train(stage)  # resumes from checkpoint-1
        assert "resuming from" in capsys.readouterr().out and (out / "final" / "config.json").is_file()
    # stage 1 + 2 of the paper stages (assembled without refine) write stage 3's inputs at the working size
    coarse = tmp_path / "coarse_pipe"
    assert main(["assemble", "--prior", str(runs / "prior" / "final"), "--inpaint", str(runs / "inpaint" / "final"),
                 "--out", str(coarse)]) == 0, capsys.readouterr().err
    inputs = tmp_path / "refine_inputs"
    assert main(["make-refine-inputs", "--dataset", str(synth_market), "--annotations",
                 str(synth_market / "market-annotation-train.csv"), "--weights", str(coarse), "--out", str(inputs),
                 "--max-pairs", "4", "--steps", "2", "--batch", "4", "--device", "cpu", "--dtype", "fp32"]) == 0
    from PIL import Image
    made = sorted(inputs.glob("*.png"))
    assert len(made) == 4 and all(Image.open(p).size == (32, 64) for p in made)  # 64x32, not the source's 128x64
    out = train("refine", f"data.refine_inputs={inputs}")
    assert main(["export-checkpoint", str(out / "checkpoint-1"), "--out", str(tmp_path / "refine_step1")]) == 0

    pipe = tmp_path / "pipeline"
    assert main(["assemble", "--prior", str(runs / "prior" / "final"), "--inpaint", str(runs / "inpaint" / "final"),
                 "--refine", str(tmp_path / "refine_step1"), "--out", str(pipe)]) == 0, capsys.readouterr().err
    stored = json.loads((pipe / "pipeline.json").read_text()) if (pipe / "pipeline.json").is_file() else None
    assert "sampling {'scheduler': 'unipc'" in capsys.readouterr().out
    # frozen parts are referenced by their folders, not copied
    assert not list(pipe.rglob("clip.safetensors")) and not list(pipe.rglob("dino.safetensors"))
    del stored

    gen = tmp_path / "generated"
    assert main(["generate", "--dataset", str(synth_market), "--weights", str(pipe), "--out", str(gen),
                 "--views", "1", "--batch", "4", "--steps", "2", "--device", "cpu", "--dtype", "fp32",
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert list(gen.rglob("*.jpg")) or list(gen.rglob("*.png"))
    test_pairs = synth_market / "market-pairs-test.csv"
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("".join(test_pairs.read_text().splitlines(keepends=True)[:4]))
    synth = tmp_path / "synth"
    assert main(["synthesize-pairs", "--pairs", str(pairs), "--dataset", str(synth_market), "--weights", str(pipe),
                 "--out", str(synth), "--steps", "2", "--batch", "4", "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    assert len(list(synth.glob("*.png"))) == 3
    capsys.readouterr()
    assert main(["metrics", "--pairs", str(pairs), "--generated", str(synth), "--dataset", str(synth_market),
                 "--config", "tiny/metrics.yaml", "--json", "--no-progress", "lpips.enabled=false",
                 "fid.enabled=false", "fid_reid.enabled=false"]) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["n_pairs"] == 3 and report["n_missing"] == 0
