"""import-official: upstream PCDMs checkpoints (DeepSpeed stage files and the released PCDMs_ckpt.pt) into our
stage folders.

The upstream files are written here from modules with UPSTREAM's structure and names (diffusers' UNet and
ControlNetConditioningEmbedding, which upstream uses as they are; its prior and image projection rebuilt in
this file from tencent-ailab/PCDMs's layout), at small widths: the name map does not depend on sizes. One slow
test converts a full-size SD-2.1-base stage-2 UNet. Each import is checked tensor by tensor against the file,
and the converted modules are run against the upstream modules on the same inputs.
"""
import os

import numpy as np
import pytest
import torch
from torch import nn

from pcdms_aug.pipelines.import_official import IMAGE_PROJ, POSE_PROJ, import_official, read_official
from pcdms_aug.config.loading import load_config
from pcdms_aug.utils.errors import DataError
from pcdms_aug.data.pose import Pose
from pcdms_aug.stages import Stage

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------- upstream-layout modules
class UpstreamMLP(nn.Module):
    """Upstream's pose MLP and image projections: Linear, GELU, Dropout, LayerNorm, Linear, Dropout[, LayerNorm]."""

    def __init__(self, i, h, o, final_norm):
        super().__init__()
        layers = [nn.Linear(i, h), nn.GELU(), nn.Dropout(0.1), nn.LayerNorm(h), nn.Linear(h, o), nn.Dropout(0.1)]
        self.net = nn.Sequential(*layers, *([nn.LayerNorm(o)] if final_norm else []))

    def forward(self, x):
        return self.net(x)


class UpstreamPrior(nn.Module):
    """Stage1_PriorTransformer's attributes (36-number poses, 6 tokens) and token order."""

    def __init__(self, embed, width, layers, heads, pose_hidden):
        from diffusers.models.attention import BasicTransformerBlock
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        super().__init__()
        self.pose_encoder = UpstreamMLP(36, pose_hidden, embed, True)
        self.pose_encoder1 = UpstreamMLP(36, pose_hidden, embed, True)
        self.time_proj = Timesteps(width, True, 0)
        self.time_embedding = TimestepEmbedding(width, width)
        self.proj_in = nn.Linear(embed, width)
        self.embedding_proj = nn.Linear(embed, width)
        self.encoder_hidden_states_proj = nn.Linear(embed, width)
        self.encoder_hidden_states_proj1 = nn.Linear(embed, width)
        self.positional_embedding = nn.Parameter(torch.randn(1, 6, width))
        self.prd_embedding = nn.Parameter(torch.randn(1, 1, width))
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(width, heads, width // heads,
                                                                       activation_fn="gelu", attention_bias=True)
                                                 for _ in range(layers)])
        self.norm_out = nn.LayerNorm(width)
        self.proj_to_clip_embeddings = nn.Linear(width, embed)

    def forward(self, noisy, t, src_embed, sp36, tp36):
        b = noisy.shape[0]
        time = self.time_embedding(self.time_proj(t * torch.ones(b, dtype=t.dtype)))
        x = torch.cat([self.encoder_hidden_states_proj(self.pose_encoder(sp36))[:, None],
                       self.encoder_hidden_states_proj1(self.pose_encoder1(tp36))[:, None],
                       self.embedding_proj(src_embed)[:, None], time[:, None], self.proj_in(noisy)[:, None],
                       self.prd_embedding.expand(b, -1, -1)], dim=1) + self.positional_embedding
        for block in self.transformer_blocks:
            x = block(x)
        return self.proj_to_clip_embeddings(self.norm_out(x)[:, -1])


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Every tensor random (diffusers zero-initialises some layers; a zero maps onto a zero too easily)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


def tiny_unet(cfg_name, in_channels, class_embed):
    from diffusers import UNet2DConditionModel

    cfg = dict(load_config(f"tiny/{cfg_name}.yaml")["unet"]["config"])
    extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=64) if class_embed else {}
    return UNet2DConditionModel(**cfg, in_channels=in_channels, out_channels=12, **extra)


def pose_proj(out_channels=32):
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

    return ControlNetConditioningEmbedding(out_channels, 3, (16, 32, 96, 256))


def save_deepspeed(path, modules: dict, dtype=torch.float32):
    """The DeepSpeed file layout: {"module": flat state dict, ...bookkeeping...}."""
    state = {}
    for prefix, m in modules.items():
        state.update({prefix + k: v.to(dtype).clone() for k, v in m.state_dict().items()})
    torch.save({"module": state, "epoch": 3, "last_global_step": 1200, "dp_world_size": 8,
                "ds_version": "0.8.3"}, path)
    return state


def assert_every_tensor(out_dir, component, upstream: dict, prefix: str, rename):
    """Each upstream tensor equals the tensor of ours it maps to; every tensor of ours came from one."""
    from safetensors.torch import load_file

    ours = load_file(str(out_dir / f"{component}.safetensors"))
    seen = set()
    for key, value in upstream.items():
        if not key.startswith(prefix):
            continue
        mine = rename.to_ours(key[len(prefix):]) if rename else key[len(prefix):]
        assert mine in ours, key
        assert torch.equal(ours[mine], value.float()), key
        seen.add(mine)
    assert seen == set(ours)


# ----------------------------------------------------------------------------------- configs
INPAINT = {"pose_encoder": {"channels": [16, 32, 96, 256], "downsample": 1}}
PRIOR = {"width": 64, "layers": 2, "heads": 2, "pose_hidden": 32}


def stage_cfg(name, **extra):
    cfg = load_config(f"tiny/{name}.yaml")
    cfg.update(extra)
    return cfg


def poses_pair():
    """Two poses with missing joints, as pixels of a 128x64 crop."""
    rng = np.random.default_rng(0)
    out = []
    for missing in ([3, 4, 14, 16], [0, 7, 10, 11, 12, 13, 15, 17]):
        xy = np.stack([rng.uniform(0, 64, 18), rng.uniform(0, 128, 18)], 1)
        xy[missing] = -1
        out.append(Pose.from_array(xy, (128, 64)))
    return out


# ----------------------------------------------------------------------------------- stage 1
def test_prior_import_every_tensor_and_same_predictions(tmp_path):
    torch.manual_seed(0)
    up = randomize(UpstreamPrior(64, 64, 2, 2, 32), 1)
    state = save_deepspeed(tmp_path / "mp_rank_00_model_states.pt", {"": up})
    stage = import_official(tmp_path / "mp_rank_00_model_states.pt", tmp_path / "prior", 1,
                            stage_cfg("prior", prior=PRIOR))
    assert_every_tensor(tmp_path / "prior", "prior", state, "", None)

    back = Stage.from_pretrained(tmp_path / "prior")
    assert back.cfg["prior"]["pose_dim"] == 36 and back.cfg["origin"]["layout"] == "prior"
    a, b = poses_pair()
    ours54 = torch.from_numpy(np.stack([a.vector(), b.vector(), np.zeros(54, np.float32)]))
    # upstream's vector: normalised (x, y) per joint, -1 for a missing joint (DWPose), all zeros when dropped
    up36 = []
    for p in (a, b):
        v = (p.xy / np.array([64, 128], np.float32))
        v[~p.visible] = -1
        up36.append(v.reshape(-1))
    up36 = torch.from_numpy(np.stack(up36 + [np.zeros(36, np.float32)]))
    g = torch.Generator().manual_seed(2)
    noisy, src = torch.randn(3, 64, generator=g), torch.randn(3, 64, generator=g)
    t = torch.tensor([5, 500, 999])
    with torch.no_grad():
        want = up(noisy, t, src, up36, up36.flip(0))
        for model in (stage.prior, back.prior):
            got = model(noisy, t, src, ours54, ours54.flip(0))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the stage samples with the imported prior from our 54-number pose vectors
    emb = back.sample(back.encode_source(torch.rand(3, 3, 128, 64) * 2 - 1), ours54, ours54,
                      torch.Generator().manual_seed(0), num_inference_steps=2)
    assert emb.shape == (3, 64) and torch.isfinite(emb).all()


# ----------------------------------------------------------------------------------- stage 2
def test_pose_and_image_projection_maps_give_upstreams_outputs():
    """PoseEncoder(signed_input, 3x3 out, 3 stride-2 steps) == ControlNetConditioningEmbedding on [-1, 1] poses;
    ImageProjection == upstream's projection with its Dropout slots (eval)."""
    from pcdms_aug.models.blocks import ImageProjection, PoseEncoder

    theirs = randomize(pose_proj(320), 3)
    ours = PoseEncoder(320, (16, 32, 96, 256), downsample=3, out_kernel=3, signed_input=True).eval()
    ours.load_state_dict({POSE_PROJ.to_ours(k): v for k, v in theirs.state_dict().items()})
    x = torch.rand(2, 3, 64, 64)  # our pose images are [0, 1]; upstream's were normalised to [-1, 1]
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x * 2 - 1), rtol=1e-5, atol=1e-5)
    assert {POSE_PROJ.to_upstream(POSE_PROJ.to_ours(k)) for k in theirs.state_dict()} == set(theirs.state_dict())

    up = randomize(UpstreamMLP(96, 48, 64, False), 4)
    mine = ImageProjection(96, 48, 64).eval()
    mine.load_state_dict({IMAGE_PROJ.to_ours(k): v for k, v in up.state_dict().items()})
    tokens = torch.randn(2, 5, 96)
    with torch.no_grad():
        torch.testing.assert_close(mine(tokens), up(tokens), rtol=1e-5, atol=1e-5)


def _inpaint_forward(stage, up: dict, released: bool):
    """One denoiser call of our stage against upstream's SDModel.forward (conv_in(x) + pose features; tokens =
    projected DINOv2 tokens [+ the target embedding]; the embedding as class label). The pose features are our
    imported encoder's on both sides: the tiny canvas has one stride-2 step where upstream's module has three
    (the full module is compared in test_pose_and_image_projection_maps_give_upstreams_outputs)."""
    g = torch.Generator().manual_seed(5)
    b = 2
    x = torch.randn(b, 12, 32, 32, generator=g)
    mask, masked = torch.rand(b, 1, 32, 32, generator=g), torch.randn(b, 12, 32, 32, generator=g)
    pose = torch.rand(b, 3, 64, 64, generator=g)
    dino, embed = torch.randn(b, 9, 64, generator=g), torch.randn(b, 64, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        tokens = up["proj"](dino) if released else torch.cat([up["proj"](dino), embed[:, None]], 1)
        feats = stage.pose_encoder(pose)
        handle = up["unet"].conv_in.register_forward_hook(lambda m, i, o: o + feats)
        want = up["unet"](torch.cat([x, mask, masked], 1), t, encoder_hidden_states=tokens,
                          class_labels=None if released else embed).sample
        handle.remove()
        got = stage._model(x, t, mask, masked, stage.pose_encoder(pose), stage._tokens(dino, embed), embed)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("released", [False, True], ids=["deepspeed", "released"])
def test_inpaint_import(tmp_path, released):
    torch.manual_seed(0)
    up = {"unet": randomize(tiny_unet("inpaint", 25, class_embed=not released), 6),
          "pose": randomize(pose_proj(32), 7), "proj": randomize(UpstreamMLP(64, 64, 64, False), 8)}
    proj_prefix = "image_proj_model." if released else "image_proj_model_p."
    ckpt = tmp_path / ("PCDMs_ckpt.pt" if released else "mp_rank_00_model_states.pt")
    state = save_deepspeed(ckpt, {"unet.": up["unet"], "pose_proj.": up["pose"], proj_prefix: up["proj"]},
                           dtype=torch.float16)  # DeepSpeed fp16 runs store half-precision modules
    up = {k: m.half().float() for k, m in up.items()}
    import_official(ckpt, tmp_path / "inpaint", "2", stage_cfg("inpaint", **INPAINT))
    assert_every_tensor(tmp_path / "inpaint", "unet", state, "unet.", None)
    assert_every_tensor(tmp_path / "inpaint", "pose_encoder", state, "pose_proj.", POSE_PROJ)
    assert_every_tensor(tmp_path / "inpaint", "image_proj", state, proj_prefix, IMAGE_PROJ)

    back = Stage.from_pretrained(tmp_path / "inpaint")
    assert back.uses_target_embed is (not released)
    assert back.cfg["dino"]["normalize"] == "clip" and back.cfg["pose_encoder"]["signed_input"]
    assert back.cfg["origin"]["dtype"] == ["float16"]
    _inpaint_forward(back, up, released)
    src = back.encode_source(torch.rand(1, 3, 64, 32) * 2 - 1)
    embed = None if released else torch.zeros(1, 64)
    out = back.sample(src, torch.rand(1, 3, 64, 32), torch.rand(1, 3, 64, 32), embed,
                      torch.Generator().manual_seed(0), num_inference_steps=1)
    assert out.shape == (1, 3, 64, 32)
    if released:  # the released stage 2 works without a prior and without target embeddings
        from pcdms_aug.pipelines.pipeline import PCDMsPipeline

        pipe = PCDMsPipeline.from_stages({"inpaint": tmp_path / "inpaint"})
        a, b = poses_pair()
        res = pipe(np.zeros((128, 64, 3), np.uint8), a, [b, a], stages=("inpaint",), num_inference_steps=1,
                   output_type="np")
        assert res.images.shape == (2, 128, 64, 3) and res.target_embeds is None


# ----------------------------------------------------------------------------------- stage 3 and the CLI
def test_refine_import_through_the_cli(tmp_path, capsys):
    from pcdms_aug.cli.main import main

    up_unet, up_proj = randomize(tiny_unet("refine", 24, False), 9), randomize(UpstreamMLP(64, 64, 64, False), 10)
    state = save_deepspeed(tmp_path / "s3.pt", {"unet.": up_unet, "image_proj_model_p.": up_proj})
    rc = main(["import-official", "--stage", "3", str(tmp_path / "s3.pt"), str(tmp_path / "refine"),
               "--config", "tiny/refine.yaml", "--set", "noise_offset=0.0"])
    assert rc == 0
    assert_every_tensor(tmp_path / "refine", "unet", state, "unet.", None)
    assert_every_tensor(tmp_path / "refine", "image_proj", state, "image_proj_model_p.", IMAGE_PROJ)
    back = Stage.from_pretrained(tmp_path / "refine")
    assert back.cfg["noise_offset"] == 0.0 and back.name == "refine"
    # the tiny config's DINOv2 is random (seeded), so it is saved with the stage; a pretrained one is not
    assert sorted(p.name for p in (tmp_path / "refine").glob("*.safetensors")) == \
        ["dino.safetensors", "image_proj.safetensors", "unet.safetensors"]

    # a stage-3 file given as stage 2: a one-line error naming the file
    rc = main(["import-official", "--stage", "2", str(tmp_path / "s3.pt"), str(tmp_path / "x"),
               "--config", "tiny/inpaint.yaml"])
    err = capsys.readouterr().err
    assert rc == 2 and "stage-3" in err and "s3.pt" in err and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------- errors name the key
@pytest.fixture(scope="module")
def refine_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    state = save_deepspeed(root / "s3.pt", {"unet.": tiny_unet("refine", 24, False),
                                            "image_proj_model_p.": UpstreamMLP(64, 64, 64, False)})
    return root, state


def _write(path, state, wrap=True):
    torch.save({"module": state} if wrap else state, path)
    return path


def test_unmapped_key_is_named(refine_file, tmp_path):
    root, state = refine_file
    bad = _write(tmp_path / "extra.pt", {**state, "unet.lora_layer.weight": torch.zeros(3)})
    with pytest.raises(DataError, match=r"'unet\.lora_layer\.weight' has no counterpart"):
        import_official(bad, tmp_path / "out", 3, stage_cfg("refine"))
    bad = _write(tmp_path / "extra2.pt", {**state, "text_encoder.x.weight": torch.zeros(3)})
    with pytest.raises(DataError, match=r"'text_encoder\.x\.weight' has no counterpart.*expected prefixes"):
        import_official(bad, tmp_path / "out", 3, stage_cfg("refine"))
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_and_missing_keys_are_named(refine_file, tmp_path):
    root, state = refine_file
    wrong = dict(state)
    wrong["image_proj_model_p.net.3.weight"] = torch.zeros(65)
    with pytest.raises(DataError, match=r"'image_proj_model_p\.net\.3\.weight': shape \(65,\) does not fit "
                                        r"image_proj\.net\.2\.weight \(64,\)"):
        import_official(_write(tmp_path / "w.pt", wrong), tmp_path / "out", 3, stage_cfg("refine"))
    wrong["image_proj_model_p.net.3.weight"] = torch.zeros(0)
    with pytest.raises(DataError, match="ZeRO-3"):
        import_official(_write(tmp_path / "z.pt", wrong), tmp_path / "out", 3, stage_cfg("refine"))
    lacking = {k: v for k, v in state.items() if k != "image_proj_model_p.net.4.bias"}
    with pytest.raises(DataError, match=r"lacks image_proj\.net\.3\.bias "
                                        r"\(upstream key 'image_proj_model_p\.net\.4\.bias'\)"):
        import_official(_write(tmp_path / "m.pt", lacking), tmp_path / "out", 3, stage_cfg("refine"))
    # another architecture in --config than in the file
    with pytest.raises(DataError, match="does not fit"):
        import_official(root / "s3.pt", tmp_path / "out", 3, stage_cfg("refine"), ["projection.hidden=32"])
    assert not (tmp_path / "out").exists()


def test_reading_files(refine_file, tmp_path):
    root, state = refine_file
    # a bare state dict and a DDP-prefixed one read as the DeepSpeed file does
    bare = read_official(_write(tmp_path / "bare.pt", state, wrap=False))
    ddp = read_official(_write(tmp_path / "ddp.pt", {"module." + k: v for k, v in state.items()}, wrap=False))
    assert bare.keys() == ddp.keys() == state.keys()
    with pytest.raises(DataError, match="not found"):
        read_official(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        read_official(tmp_path / "junk.pt")
    # objects pickled beside the weights (DeepSpeed's arguments) are read as inert placeholders: nothing runs
    torch.save({"module": state, "args": _Opaque()}, tmp_path / "pickled.pt")
    assert read_official(tmp_path / "pickled.pt").keys() == state.keys()
    marker = tmp_path / "ran"
    torch.save({"module": state, "args": _Payload(marker)}, tmp_path / "hostile.pt")
    with pytest.raises(DataError, match="refused"):
        read_official(tmp_path / "hostile.pt")
    assert not marker.exists()
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(DataError, match="no weights found"):
        read_official(tmp_path / "empty.pt")
    with pytest.raises(DataError, match="--stage must be"):
        import_official(root / "s3.pt", tmp_path / "out", 4)
    with pytest.raises(DataError, match="not a stage-1"):
        import_official(root / "s3.pt", tmp_path / "out", 1, stage_cfg("prior"))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Opaque:
    pass


# ----------------------------------------------------------------------------------- full size
@pytest.mark.slow
def test_full_size_sd21_inpaint_import(tmp_path):
    """A stage-2 file with a full SD-2.1-base UNet (9 input channels, projection class embedding), the paper's
    pose encoder and projection; small frozen encoders of the paper's widths (1024-d embedding, 1536-d tokens),
    which the file does not hold. Compared tensor by tensor, memory-mapped (the UNet is 3.5 GB)."""
    import gc

    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    cfg = load_config("paper/inpaint.yaml", ["random_weights=true"])
    unet = UNet2DConditionModel(**cfg["unet"]["config"], in_channels=9, out_channels=4,
                                class_embed_type="projection", projection_class_embeddings_input_dim=1024)
    modules = {"unet.": unet, "pose_proj.": pose_proj(320), "image_proj_model_p.": UpstreamMLP(1536, 768, 1024, False)}
    ckpt = tmp_path / "mp_rank_00_model_states.pt"
    # half precision, as DeepSpeed's fp16 training stores the module (and half the disk: CI's is finite)
    torch.save({"module": {p + k: v.half() for p, m in modules.items() for k, v in m.state_dict().items()}}, ckpt)
    del unet, modules
    gc.collect()
    cfg["clip"] = {**cfg["clip"], "config": {**cfg["clip"]["config"], "num_hidden_layers": 1, "hidden_size": 64,
                                             "intermediate_size": 64, "num_attention_heads": 2}}
    cfg["dino"] = {**cfg["dino"], "config": {**cfg["dino"]["config"], "num_hidden_layers": 1}}
    cfg["codec"] = {**cfg["codec"], "config": {**cfg["codec"]["config"], "block_out_channels": [32, 32, 32, 32]}}
    stage = import_official(ckpt, tmp_path / "inpaint", 2, cfg)
    n_unet = sum(p.numel() for p in stage.unet.parameters())
    del stage
    gc.collect()
    assert n_unet == 865_910_724 + 5 * 320 * 3 * 3 + (1024 * 1280 + 1280) + (1280 * 1280 + 1280)
    upstream = read_official(ckpt)  # memory-mapped
    counts = {}
    for comp, prefix, rename in (("unet", "unet.", None), ("pose_encoder", "pose_proj.", POSE_PROJ),
                                 ("image_proj", "image_proj_model_p.", IMAGE_PROJ)):
        with safe_open(str(tmp_path / "inpaint" / f"{comp}.safetensors"), "pt") as f:
            keys = set(f.keys())
            mine = [k for k in upstream if k.startswith(prefix)]
            for k in mine:
                ours = rename.to_ours(k[len(prefix):]) if rename else k[len(prefix):]
                tensor = f.get_tensor(ours)
                assert torch.equal(tensor, upstream[k].to(tensor.dtype)), k
            assert len(mine) == len(keys)
            counts[comp] = len(mine)
    print("full-size stage-2 import:", counts, "unet parameters", n_unet)
