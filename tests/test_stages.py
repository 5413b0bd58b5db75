"""The three tiny stages: loss, gradients, save/load, sampling, guidance, schedulers, input checks; the pair
dataset that feeds them."""
import json

import numpy as np
import pytest
import torch

from pcdms_aug.config.loading import load_config
from pcdms_aug.stages.diffusion import SAMPLERS, apply_drop, cfg_double, drop_masks
from pcdms_aug.utils.errors import DataError
from pcdms_aug.stages import Stage, build_stage
from pcdms_aug.stages.base import FROZEN as FROZEN_PARTS

NAMES = ("prior", "inpaint", "refine")
# One thread: the tests share two cores with other work, and spinning OpenMP threads cost more than they give.
torch.set_num_threads(1)


def make_batch(b=2, seed=0, size=(128, 64)):
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.rand((b, 3, *size), generator=g) * 2 - 1  # noqa: E731
    return {"source_image": img(), "target_image": img(), "coarse_image": img(),
            "source_pose_image": torch.rand((b, 3, *size), generator=g),
            "target_pose_image": torch.rand((b, 3, *size), generator=g),
            "source_pose": torch.rand((b, 54), generator=g), "target_pose": torch.rand((b, 54), generator=g)}


@pytest.fixture(scope="module")
def stages():
    torch.manual_seed(0)
    return {n: build_stage(n, load_config(f"tiny/{n}.yaml"), seed=3) for n in NAMES}


def sample(stage, batch, gen=None, steps=2, guidance=None, scheduler="unipc"):
    """One stage's sampler on a training-style batch (the target's true embedding for stage 2)."""
    src = stage.encode_source(batch["source_image"])
    kw = dict(generator=gen, num_inference_steps=steps, sampler=scheduler)
    if guidance is not None:
        kw["guidance_scale"] = guidance
    if stage.name == "prior":
        return stage.sample(src, batch["source_pose"], batch["target_pose"], **kw)
    if stage.name == "inpaint":
        return stage.sample(src, batch["source_pose_image"], batch["target_pose_image"],
                            stage.clip(batch["target_image"]), **kw)
    return stage.sample(src, batch["coarse_image"], **kw)


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_finite_and_only_trainable_parts_get_gradients(stages, name):
    stage = stages[name]
    stage.train()
    stage.zero_grad(set_to_none=True)
    loss = stage.training_loss(make_batch(), torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = {id(p) for p in stage.trainable_parameters()}
    assert trainable and all(p.requires_grad for p in stage.trainable_parameters())
    with_grad = [n for n, p in stage.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert with_grad
    for n, p in stage.named_parameters():
        if id(p) in trainable:
            continue
        assert n.split(".")[0] in FROZEN_PARTS, n
        assert not p.requires_grad and p.grad is None, n
    # frozen encoders stay in eval mode while the stage trains
    for part in FROZEN_PARTS:
        if hasattr(stage, part):
            assert not getattr(stage, part).training
    stage.zero_grad(set_to_none=True)
    stage.eval()


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_reproducible_with_a_generator(stages, name):
    a = stages[name].training_loss(make_batch(), torch.Generator().manual_seed(5))
    b = stages[name].training_loss(make_batch(), torch.Generator().manual_seed(5))
    c = stages[name].training_loss(make_batch(), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_give_identical_outputs(stages, name, tmp_path):
    stage = stages[name].eval()
    stage.save_pretrained(tmp_path / name)
    files = sorted(p.name for p in (tmp_path / name).iterdir())
    assert "config.json" in files and "stage.yaml" in files and f"{'prior' if name == 'prior' else 'unet'}.safetensors" in files
    assert json.loads((tmp_path / name / "config.json").read_text())["stage"] == name
    loaded = Stage.from_pretrained(tmp_path / name).eval()  # the base class dispatches on config.json
    assert type(loaded) is type(stage)
    sa, sb = stage.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    batch = make_batch(b=1, seed=1)
    out_a = sample(stage, batch, torch.Generator().manual_seed(2), steps=1)
    out_b = sample(loaded, batch, torch.Generator().manual_seed(2), steps=1)
    assert torch.equal(out_a, out_b)
    assert torch.equal(stage.training_loss(batch, torch.Generator().manual_seed(3)),
                       loaded.training_loss(batch, torch.Generator().manual_seed(3)))


def test_missing_or_corrupt_weights_are_a_data_error_naming_the_file(stages, tmp_path):
    stages["refine"].save_pretrained(tmp_path / "refine")
    (tmp_path / "refine" / "unet.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="unet.safetensors"):
        Stage.from_pretrained(tmp_path / "refine")
    (tmp_path / "refine" / "unet.safetensors").unlink()
    with pytest.raises(DataError, match="unet.safetensors"):
        Stage.from_pretrained(tmp_path / "refine")
    (tmp_path / "refine" / "config.json").write_text("{ broken")
    with pytest.raises(DataError, match="config.json"):
        Stage.from_pretrained(tmp_path / "refine")
    with pytest.raises(DataError, match="not found"):
        Stage.from_pretrained(tmp_path / "nowhere")
    # a folder of another stage
    stages["prior"].save_pretrained(tmp_path / "prior")
    from pcdms_aug.stages import InpaintStage
    with pytest.raises(DataError, match="holds stage 'prior'"):
        InpaintStage.from_pretrained(tmp_path / "prior")


def test_weights_of_another_architecture_are_refused(stages, tmp_path):
    stages["refine"].save_pretrained(tmp_path / "refine")
    cfg = json.loads((tmp_path / "refine" / "config.json").read_text())
    cfg["projection"] = {"hidden": 32}
    (tmp_path / "refine" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="image_proj.safetensors"):
        Stage.from_pretrained(tmp_path / "refine")


@pytest.mark.parametrize("name", NAMES)
def test_sampling_is_reproducible_with_a_generator(stages, name):
    batch = make_batch(seed=2)
    a = sample(stages[name], batch, torch.Generator().manual_seed(7))
    b = sample(stages[name], batch, torch.Generator().manual_seed(7))
    c = sample(stages[name], batch, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_generators_make_samples_independent_of_the_batch(stages, name):
    batch = make_batch(b=3, seed=9)
    full = sample(stages[name], batch, [torch.Generator().manual_seed(10 + i) for i in range(3)])
    one = sample(stages[name], {k: v[1:2] for k, v in batch.items()}, [torch.Generator().manual_seed(11)])
    # batch size changes float kernels (~1e-6); untrained weights amplify it, hence 2e-3 on [-1, 1] pixels
    assert torch.allclose(full[1:2], one, atol=2e-3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("b", [1, 3])
def test_guidance_on_and_off_give_the_right_shapes(stages, name, b):
    stage = stages[name]
    batch = make_batch(b=b, seed=3)
    off = sample(stage, batch, torch.Generator().manual_seed(0), guidance=1.0)
    on = sample(stage, batch, torch.Generator().manual_seed(0), guidance=3.0)
    expected = (b, stage.clip.dim) if name == "prior" else (b, 3, *stage.image_size)
    assert off.shape == on.shape == expected
    assert torch.isfinite(on).all() and not torch.allclose(on, off)
    if name != "prior":
        assert on.min() >= -1 and on.max() <= 1


@pytest.mark.parametrize("name", NAMES)
def test_doubled_batch_keeps_each_pair_with_its_own_conditions(stages, name):
    """Guidance 1 + tiny: the doubled path (unconditional half, conditional half) must reproduce the plain
    conditional path pair by pair; a misordered half would mix pairs up."""
    batch = make_batch(b=3, seed=4)
    plain = sample(stages[name], batch, torch.Generator().manual_seed(1), guidance=1.0)
    doubled = sample(stages[name], batch, torch.Generator().manual_seed(1), guidance=1.0 + 1e-7)
    assert torch.allclose(plain, doubled, atol=2e-3)  # untrained weights amplify float noise (see above)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scheduler", SAMPLERS)
def test_every_scheduler_runs(stages, name, scheduler):
    out = sample(stages[name], make_batch(b=1, seed=5), torch.Generator().manual_seed(0), steps=2,
                 guidance=2.0, scheduler=scheduler)
    assert torch.isfinite(out).all()


def test_unknown_scheduler_is_a_value_error(stages):
    with pytest.raises(ValueError, match="unknown scheduler"):
        sample(stages["refine"], make_batch(b=1), scheduler="euler")


def _capture(module, pre_hook_fn):
    return module.register_forward_pre_hook(pre_hook_fn, with_kwargs=True)


@pytest.mark.parametrize("name", NAMES)
def test_unconditional_inputs_at_sampling_are_what_training_drops_to(stages, name):
    """Training with every condition dropped and the unconditional half of a guided step must feed the
    network the very same condition tensors."""
    stage = stages[name]
    batch = make_batch(b=2, seed=6)
    seen = []
    if name == "prior":
        net = stage.prior
        grab = lambda args, kwargs: [a.detach().clone() for a in args[2:5]]  # noqa: E731
    else:
        net = stage.unet
        grab = lambda args, kwargs: [kwargs["encoder_hidden_states"].detach().clone()] + (  # noqa: E731
            [kwargs["class_labels"].detach().clone()] if kwargs.get("class_labels") is not None else [])
    handle = _capture(net, lambda m, args, kwargs: seen.append(grab(args, kwargs)))
    try:
        cfg = stage.config.drop
        stage.config.drop = {k: 1.0 for k in cfg}  # every condition dropped, jointly
        with torch.no_grad():
            stage.training_loss(batch, torch.Generator().manual_seed(0))
        stage.config.drop = cfg
        trained_null = seen.pop()
        sample(stage, batch, torch.Generator().manual_seed(0), steps=1, guidance=2.0)
        guided = seen.pop()
    finally:
        stage.config.drop = cfg
        handle.remove()
    for t_null, g in zip(trained_null, guided):
        assert g.shape[0] == 2 * t_null.shape[0]
        assert torch.allclose(g[: t_null.shape[0]], t_null, atol=1e-6)  # first half: unconditional
        assert not torch.allclose(g[t_null.shape[0]:], t_null)


def test_condition_drops_have_the_configured_rates():
    g = torch.Generator().manual_seed(0)
    m = drop_masks(("a", "b", "c"), {"a": 0.1, "b": 0.1, "c": 0.2, "joint": 0.05}, 200_000, g, "cpu")
    assert abs(m["a"].float().mean() - 0.1) < 0.005 and abs(m["c"].float().mean() - 0.2) < 0.005
    joint = (m["a"] & m["b"] & m["c"]).float().mean()
    assert abs(joint - 0.05) < 0.004
    with pytest.raises(ValueError, match="below the joint"):
        drop_masks(("a",), {"a": 0.01, "joint": 0.05}, 4, g, "cpu")
    x = torch.randn(3, 5)
    (null,) = cfg_double(x)
    assert torch.equal(null[:3], apply_drop(x, torch.ones(3, dtype=torch.bool)))


@pytest.mark.parametrize("name,key,value", [
    ("prior", "source_pose", torch.zeros(2, 36)),
    ("prior", "target_image", torch.zeros(3, 3, 128, 64)),
    ("inpaint", "source_pose_image", torch.zeros(2, 1, 128, 64)),
    ("refine", "coarse_image", torch.zeros(2, 3, 128)),
])
def test_bad_training_batches_are_value_errors(stages, name, key, value):
    batch = make_batch()
    batch[key] = value
    with pytest.raises(ValueError, match=key):
        stages[name].training_loss(batch)
    del batch[key]
    with pytest.raises(ValueError, match="lacks"):
        stages[name].training_loss(batch)


def test_bad_sampling_inputs_are_value_errors(stages):
    batch = make_batch(b=2)
    src = stages["inpaint"].encode_source(batch["source_image"])
    with pytest.raises(ValueError, match="batch size"):
        stages["inpaint"].sample(src, batch["source_pose_image"][:1], batch["target_pose_image"],
                                 torch.zeros(2, stages["inpaint"].clip.dim), num_inference_steps=1)
    with pytest.raises(ValueError, match="features"):
        stages["inpaint"].sample(src, batch["source_pose_image"], batch["target_pose_image"], torch.zeros(2, 7),
                                 num_inference_steps=1)
    with pytest.raises(ValueError, match="coarse"):
        stages["refine"].sample(stages["refine"].encode_source(batch["source_image"]), batch["coarse_image"][:1],
                                num_inference_steps=1)


def test_tiny_stages_follow_the_paper_structure(stages):
    inp, ref, pri = stages["inpaint"], stages["refine"], stages["prior"]
    c = inp.codec.channels
    assert inp.unet.config.in_channels == 2 * c + 1 and ref.unet.config.in_channels == 2 * c
    assert inp.unet.config.class_embed_type == "projection" and ref.unet.config.class_embed_type is None
    # projected DINO tokens + the global token
    tokens = inp._tokens(inp.dino(inp.resize(make_batch()["source_image"])), torch.zeros(2, inp.clip.dim))
    assert tokens.shape[1] == inp.dino(torch.zeros(1, 3, 64, 32)).shape[1] + 1
    assert pri.prior.positional_embedding.shape[1] == 6
    # the pose encoder starts at zero: the untrained stage is the unposed UNet
    assert torch.count_nonzero(inp.pose_encoder(torch.rand(1, 3, 64, 64))) == 0


# GFLOPs of one training step (forward + backward) of 4 pairs at 128x64, about 1.5x what the tiny configs cost
# (0.54 / 8.8 / 16.7): the tiny stages train on a 2-core CPU in hours, and a config change past these would not.
# Counted, not timed, so a busy machine cannot fail it.
STEP_GFLOPS = {"prior": 0.8, "inpaint": 13.0, "refine": 25.0}


def test_a_training_step_stays_cpu_sized(stages):
    from torch.utils.flop_counter import FlopCounterMode

    batch = make_batch(b=4)
    for name, stage in stages.items():
        stage.train()
        with FlopCounterMode(display=False) as counter:
            stage.training_loss(batch).backward()
        stage.zero_grad(set_to_none=True)
        stage.eval()
        gflops = counter.get_total_flops() / 1e9
        assert 0.3 * STEP_GFLOPS[name] < gflops < STEP_GFLOPS[name], f"{name}: {gflops:.2f} GFLOPs per step of 4"


# ------------------------------------------------------------------------------------------- pair dataset
def test_pair_dataset_items_and_batches(synth_market, tmp_path, stages):
    from torch.utils.data import DataLoader

    from pcdms_aug.data.pairs import PairDataset

    ds = PairDataset(synth_market, synth_market / "market-annotation-train.csv")
    assert len(ds) > 0
    item = ds[0]
    assert item["source_image"].shape == (3, 128, 64) and item["target_pose_image"].shape == (3, 128, 64)
    assert -1 <= float(item["source_image"].min()) and float(item["source_image"].max()) <= 1
    assert 0 <= float(item["source_pose_image"].min()) and float(item["source_pose_image"].max()) <= 1
    assert item["source_pose"].shape == (54,) and isinstance(item["names"], tuple)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["source_image"].shape == (3, 3, 128, 64)
    assert torch.isfinite(stages["inpaint"].training_loss(batch))
    assert torch.isfinite(stages["prior"].training_loss(batch))

    # stage 3 reads the stage-2 outputs by name; a missing one is named
    from PIL import Image

    from pcdms_aug.data.pairs import pair_image_name
    pairs = ds.pairs[:2]
    refine_dir = tmp_path / "coarse"
    refine_dir.mkdir()
    Image.fromarray(np.full((128, 64, 3), 200, np.uint8)).save(refine_dir / pair_image_name(*pairs[0]))
    ds3 = PairDataset(synth_market, synth_market / "market-annotation-train.csv", pairs=pairs,
                      refine_inputs_dir=refine_dir)
    assert ds3[0]["coarse_image"].shape == (3, 128, 64)
    with pytest.raises(DataError, match=pair_image_name(*pairs[1])):
        ds3[1]
    with pytest.raises(DataError):
        PairDataset(synth_market, synth_market / "market-annotation-train.csv", pairs=[("nope.jpg", "x.jpg")])


@pytest.mark.parametrize("scheduler", SAMPLERS)
def test_img2img_strength_runs_the_last_steps_from_the_noised_init(scheduler):
    from diffusers import DDPMScheduler

    from pcdms_aug.stages.diffusion import denoise, make_sampler

    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="sample",
                          clip_sample=False)
    init = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    seen = []

    def oracle(x, t, doubled):  # an x0-model that knows the answer: every step must land on it
        seen.append(int(t))
        return init.clone()

    full = denoise(oracle, make_sampler(scheduler, train), init.shape, torch.Generator().manual_seed(0),
                   "cpu", 10, 1.0)
    n_full, seen[:] = len(seen), []
    part = denoise(oracle, make_sampler(scheduler, train), init.shape, torch.Generator().manual_seed(0),
                   "cpu", 10, 1.0, init=init, strength=0.4)
    assert n_full == 10 and len(seen) == 4 and seen == sorted(seen, reverse=True) and max(seen) < 500
    assert torch.allclose(full, init, atol=1e-3) and torch.allclose(part, init, atol=1e-3)
    with pytest.raises(ValueError, match="strength"):
        denoise(oracle, make_sampler(scheduler, train), init.shape, None, "cpu", 10, 1.0, strength=0.5)
    with pytest.raises(ValueError, match="strength"):
        denoise(oracle, make_sampler(scheduler, train), init.shape, None, "cpu", 10, 1.0, init=init,
                strength=0.0)


def test_img2img_init_noise_scales_the_start_noise_and_zero_is_deterministic():
    from diffusers import DDPMScheduler

    from pcdms_aug.stages.diffusion import denoise, make_sampler

    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="sample",
                          clip_sample=False)
    init = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    starts = []

    def first_x(x, t, doubled):  # records its inputs; an x0-model that predicts its input unscaled
        starts.append(x.clone())
        return x / train.alphas_cumprod[int(t)].sqrt()

    def run(seed, noise):
        starts.clear()
        out = denoise(first_x, make_sampler("ddim", train), init.shape, torch.Generator().manual_seed(seed),
                      "cpu", 10, 1.0, init=init, strength=0.3, init_noise=noise)
        return starts[0], out

    t0 = 200  # DDIM 10 steps, strength 0.3: the start is the level of the last 3 steps, 200 / 100 / 0
    mean = train.alphas_cumprod[t0].sqrt() * init
    s0a, o0a = run(0, 0.0)
    s0b, o0b = run(1, 0.0)
    assert torch.allclose(s0a, mean, atol=1e-6) and torch.equal(o0a, o0b)  # no drawn noise: the seed is moot
    s1, o1 = run(0, 1.0)
    sh, _ = run(0, 0.5)
    assert torch.allclose(sh - mean, (s1 - mean) * 0.5, atol=1e-5)
    assert not torch.allclose(o1, o0a, atol=1e-3)
    with pytest.raises(ValueError, match="init_noise"):
        denoise(first_x, make_sampler("ddim", train), init.shape, None, "cpu", 10, 1.0, init=init,
                strength=0.3, init_noise=1.5)
    with pytest.raises(ValueError, match="init_noise below 1 needs strength < 1"):
        denoise(first_x, make_sampler("ddim", train), init.shape, None, "cpu", 10, 1.0, init_noise=0.0)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_inpaint_trained_on_the_target_half_samples_the_true_source_half(stages, guidance):
    """loss_region: target leaves the source half unlearned; sampling must hold it on the true source (else
    the noisy canvas the UNet reads drifts from what training showed it)."""
    stage = stages["inpaint"]
    assert stage.config.loss_region == "target"
    batch = make_batch(2, seed=5)
    seen = {}
    decode = stage.codec.decode
    stage.codec.decode = lambda z: seen.setdefault("z", z) is not None and decode(z)
    try:
        sample(stage, batch, torch.Generator().manual_seed(0), steps=3, guidance=guidance, scheduler="ddim")
    finally:
        del stage.codec.decode
    _, masked = stage._known(stage.resize(batch["source_image"]))
    half = masked.shape[-1] // 2
    assert torch.allclose(seen["z"][..., :half], masked[..., :half], atol=1e-4)
    # epsilon and v parameterisations of the same replacement imply the same clean source half
    x = torch.randn_like(masked)
    for kind in ("epsilon", "v_prediction"):
        stage.noise_scheduler.register_to_config(prediction_type=kind)
        try:
            pred = stage._known_half_fixed(lambda x, t, d: torch.zeros_like(x), masked)(x, torch.tensor(300), False)
        finally:
            stage.noise_scheduler.register_to_config(prediction_type="sample")
        a = stage.noise_scheduler.alphas_cumprod[300]
        if kind == "epsilon":
            x0 = (x[..., :half] - (1 - a).sqrt() * pred[..., :half]) / a.sqrt()
        else:
            x0 = a.sqrt() * x[..., :half] - (1 - a).sqrt() * pred[..., :half]
        assert torch.allclose(x0, masked[..., :half], atol=1e-4)


def test_training_timesteps_and_start_image_shape_what_the_loss_sees():
    from diffusers import DDPMScheduler

    from pcdms_aug.stages.diffusion import diffusion_loss

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="sample")
    x0 = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    start = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = {}

    def model(xt, t):
        seen.update(xt=xt, t=t)
        return torch.zeros_like(xt)

    def run(**kw):
        return diffusion_loss(model, sched, x0, torch.Generator().manual_seed(2), **kw)

    base = run()
    t_all = seen["t"]
    assert t_all.max() >= 300  # the default range is the whole schedule
    assert torch.equal(run(start=start, start_prob=0.0), base)  # off: the same draws as before
    run(timesteps=[100, 300])
    assert 100 <= int(seen["t"].min()) and int(seen["t"].max()) < 300
    run(timesteps=[0, 1], start=start, start_prob=1.0)
    assert torch.allclose(seen["xt"], start, atol=0.1) and not torch.allclose(seen["xt"], x0, atol=0.5)
    run(timesteps=[0, 1], start=start, start_prob=0.5)
    from_start = (seen["xt"] - start).flatten(1).abs().amax(1) < 0.1
    from_truth = (seen["xt"] - x0).flatten(1).abs().amax(1) < 0.1
    assert torch.all(from_start ^ from_truth) and 16 < int(from_start.sum()) < 48
    for bad in ([300, 100], [-1, 10], [0, 1001]):
        with pytest.raises(ValueError, match="timesteps"):
            run(timesteps=bad)
    # start_noise 0: x_t is exactly the mean of q(x_t | start), the noise-free start stage 3 samples from
    run(timesteps=[500, 501], start=start, start_prob=1.0, start_noise=0.0)
    a = sched.alphas_cumprod[500]
    assert torch.allclose(seen["xt"], a.sqrt() * start, atol=1e-6)
    run(timesteps=[500, 501], start=start, start_prob=1.0, start_noise=0.5)
    half = seen["xt"] - a.sqrt() * start
    run(timesteps=[500, 501], start=start, start_prob=1.0)
    assert torch.allclose(half, 0.5 * (seen["xt"] - a.sqrt() * start), atol=1e-5)


def test_refine_stage_trains_from_the_noised_coarse_image_when_configured():
    cfg = load_config("tiny/refine.yaml")
    cfg.update(train_timesteps=[0, 1], train_coarse_start=1.0)
    stage = build_stage("refine", cfg, seed=3)
    batch = make_batch(b=2)
    seen = {}
    hook = stage.unet.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    try:
        stage.training_loss(batch, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    c = stage.codec.channels
    xt, cond = seen["x"][:, :c], seen["x"][:, c:]
    assert torch.allclose(xt, cond, atol=0.1)  # t = 0 and every sample started from the coarse image
    truth = stage.codec.encode(stage.resize(batch["target_image"]))
    assert not torch.allclose(xt, truth, atol=0.5)


def test_refine_warns_when_img2img_starts_above_its_trained_noise_levels():
    import warnings

    cfg = load_config("tiny/refine.yaml")
    cfg.update(train_timesteps=[0, 250])
    stage = build_stage("refine", cfg, seed=3)
    batch = make_batch(b=1)
    src = stage.encode_source(batch["source_image"])
    with pytest.warns(UserWarning, match=r"trained on t in \[0, 250\)"):
        stage.sample(src, batch["coarse_image"], num_inference_steps=2, strength=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage.sample(src, batch["coarse_image"], num_inference_steps=5, strength=0.2)
    assert not [w for w in caught if "trained on t" in str(w.message)]


def test_refine_ssim_loss_adds_one_minus_ssim_of_the_decoded_x0_prediction():
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    cfg = load_config("tiny/refine.yaml")
    batch = make_batch(b=2)
    plain = build_stage("refine", cfg, seed=3)
    seen = {}
    hook = plain.unet.register_forward_hook(lambda m, args, out: seen.update(pred=out.sample.detach()))
    base = plain.training_loss(batch, generator=torch.Generator().manual_seed(0))
    hook.remove()
    cfg.update(ssim_loss=0.5)
    with_ssim = build_stage("refine", cfg, seed=3)
    loss = with_ssim.training_loss(batch, generator=torch.Generator().manual_seed(0))
    truth = plain.codec.encode(plain.resize(batch["target_image"]))
    expect = 0.5 * (1 - ssim(plain.codec.decode(seen["pred"]), plain.codec.decode(truth), gaussian_kernel=True,
                             sigma=1.2, kernel_size=9, data_range=2.0))
    assert torch.allclose(loss - base, expect, atol=1e-5) and float(expect) > 0.01
    loss.backward()
    assert with_ssim.unet.conv_in.weight.grad.abs().sum() > 0
    cfg["scheduler"] = {**cfg["scheduler"], "prediction_type": "epsilon"}
    with pytest.raises(ValueError, match="x0 loss"):
        build_stage("refine", cfg, seed=3).training_loss(batch, generator=torch.Generator().manual_seed(0))


def test_refine_adversarial_term_trains_the_discriminator_and_the_denoiser_against_each_other():
    """One scalar, one optimizer: the discriminator's gradients come from its hinge loss alone (the same whatever
    the generator weight), the denoiser's from the MSE plus weight x the generator term (so they move with it)."""
    cfg = load_config("tiny/refine.yaml")
    batch = make_batch(b=2)
    grads = {}
    for w in (0.0, 0.1, 10.0):
        cfg.update(adversarial={"weight": w, "channels": [8, 16]})
        stage = build_stage("refine", cfg, seed=3)
        loss = stage.training_loss(batch, generator=torch.Generator().manual_seed(0))
        loss.backward()
        terms = stage.loss_terms  # what the training log names, beside the total
        assert set(terms) == {"discriminator", "generator", "mse"} and terms["discriminator"] > 0
        total = terms["mse"] + terms["discriminator"] + w * terms["generator"]
        assert float(loss.detach()) == pytest.approx(total, rel=1e-4)
        grads[w] = (torch.cat([p.grad.flatten() for p in stage.discriminator.parameters()]),
                    stage.unet.conv_in.weight.grad.clone())
    assert grads[0.0][0].abs().sum() > 0
    assert torch.allclose(grads[0.1][0], grads[0.0][0]) and torch.allclose(grads[10.0][0], grads[0.0][0])
    moved = [float((grads[w][1] - grads[0.0][1]).norm()) for w in (0.1, 10.0)]
    assert 0 < moved[0] and moved[1] == pytest.approx(100 * moved[0], rel=1e-3)
    cfg.pop("adversarial")
    assert not hasattr(build_stage("refine", cfg, seed=3), "discriminator")


def test_refine_discriminator_is_saved_with_the_stage_and_starts_fresh_when_warm_starting(tmp_path):
    from pcdms_aug.pipelines.loading import stage_folder
    from pcdms_aug.stages import stage_class
    from pcdms_aug.training.checkpoints import warm_start

    cfg = load_config("tiny/refine.yaml")
    cfg.update(adversarial={"weight": 0.1, "channels": [8, 16]})
    stage = build_stage("refine", cfg, seed=0)
    fresh = {k: v.clone() for k, v in stage.discriminator.state_dict().items()}
    assert warm_start(stage, "refine", "tiny") == ([], ["discriminator"])
    shipped = stage_class("refine").from_pretrained(stage_folder("tiny", "refine"))
    assert all(torch.equal(v, shipped.unet.state_dict()[k].float()) for k, v in stage.unet.state_dict().items())
    assert all(torch.equal(v, fresh[k]) for k, v in stage.discriminator.state_dict().items())
    stage.save_pretrained(tmp_path / "r")
    again = stage_class("refine").from_pretrained(tmp_path / "r")
    assert all(torch.equal(v, again.discriminator.state_dict()[k]) for k, v in fresh.items())


def test_assemble_refuses_bad_overrides_and_a_config_of_another_scale_before_loading(tmp_path, capsys):
    """Unknown keys and bad values of `assemble key=value` are refused at once, naming the key; a --config whose
    image size is not the stages' is refused; without --config the stages' own scale gives the defaults."""
    from pcdms_aug.pipelines.assemble import pipeline_config, stage_scale
    from pcdms_aug.cli.main import main
    from pcdms_aug.pipelines.loading import stage_folder

    for over, key in [("sampling.refine_strength=7", "sampling.refine_strength"),
                      ("sampling.scheduler=nonsense", "sampling.scheduler"), ("sampling.stepz.prior=3", "stepz"),
                      ("batch_size=0", "batch_size"), ("sampling.steps.inpaint=2.5", "sampling.steps.inpaint")]:
        rc = main(["assemble", "--inpaint", "tiny", "--out", str(tmp_path / "x"), over])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and key in err[0], (over, err)
        assert not (tmp_path / "x").exists()
    assert main(["assemble", "--inpaint", "tiny", "--refine", "tiny", "--out", str(tmp_path / "x"),
                 "--config", "paper/pipeline.yaml"]) == 2
    assert "image_size [512, 256] of this config is not the stages' [128, 64]" in capsys.readouterr().err
    folders = {"inpaint": stage_folder("tiny", "inpaint"), "refine": stage_folder("tiny", "refine")}
    assert stage_scale(folders) == ("tiny", [128, 64])
    cfg = pipeline_config(folders, None, ["sampling.refine_strength=0.5"])
    assert cfg["sampling"]["scheduler"] == "ddim" and cfg["sampling"]["refine_strength"] == 0.5


def test_refine_inputs_are_checked_against_the_training_size(tmp_path):
    from pcdms_aug.data.refine_inputs import INFO, check_refine_inputs

    with pytest.raises(DataError, match=f"no {INFO}: not a folder of pcdms-aug make-refine-inputs"):
        check_refine_inputs(tmp_path, (128, 64))
    (tmp_path / INFO).write_text('{"image_size": [64, 32]}')
    assert check_refine_inputs(tmp_path, (128, 64)) == [64, 32]  # tiny: stage 2 at 64x32, stage 3 at 128x64
    with pytest.raises(DataError, match=r"stage-2 outputs are \[64, 32\], larger than data.image_size \[32, 16\]"):
        check_refine_inputs(tmp_path, [32, 16])
    with pytest.raises(DataError, match="stage-2 outputs folder not found") as e:
        check_refine_inputs(tmp_path / "absent", (128, 64))
    assert "absent" in str(e.value)
    for corrupt in ('{"image_size": [64', "\xff\xfe"):
        (tmp_path / INFO).write_bytes(corrupt.encode("latin-1"))
        with pytest.raises(DataError, match=f"corrupt {INFO}"):
            check_refine_inputs(tmp_path, (128, 64))
    (tmp_path / INFO).write_text("[1, 2]")
    with pytest.raises(DataError, match=r"image_size must be \[height, width\], got \[\]"):
        check_refine_inputs(tmp_path, (128, 64))


def test_training_refuses_refine_inputs_of_unknown_size_and_reads_a_bare_no(tmp_path):
    """train reads `train.mixed_precision=no` (YAML: false) as "no", and stage 3 refuses a folder without the
    record of its images' size before it reads any image."""
    from pcdms_aug.training.config import load_run_config
    from pcdms_aug.training.data import make_dataset

    cfg = load_run_config("tiny/train_refine.yaml", ["train.mixed_precision=no", f"data.root={tmp_path}",
                                                     f"data.annotations={tmp_path}/a.csv",
                                                     f"data.refine_inputs={tmp_path}"])
    assert cfg.train.mixed_precision == "no"
    with pytest.raises(DataError, match="not a folder of pcdms-aug make-refine-inputs"):
        make_dataset(cfg)
    with pytest.raises(DataError, match="train.mixed_precision must be one of no, bf16, fp16, got 'fp8'"):
        load_run_config("tiny/train_refine.yaml", ["train.mixed_precision=fp8"])


def test_pipeline_returns_working_size_images_on_request():
    """make-refine-inputs' images: the stages' own size, not resized back to the source's."""
    from pcdms_aug.pipelines.pipeline import PCDMsPipeline

    pipe = PCDMsPipeline.from_pretrained("tiny")
    src = torch.zeros(1, 3, 64, 32)
    pose = np.full((18, 2), -1.0)
    pose[[2, 5, 8, 11]] = [[10, 20], [22, 20], [12, 40], [20, 40]]
    kw = dict(num_inference_steps=1, output_type="pt", stages=("prior", "inpaint"),
              generator=torch.Generator().manual_seed(0))
    assert pipe(src, [pose], [pose], **kw).coarse_images.shape == (1, 3, 64, 32)
    # stage 2 of the tiny pipeline decodes at 64x32 inside its 128x64 pipeline
    assert pipe(src, [pose], [pose], output_size="working", **kw).coarse_images.shape == (1, 3, 64, 32)
    src = torch.zeros(1, 3, 256, 128)
    assert pipe(src, [pose], [pose], output_size="working", **kw).coarse_images.shape == (1, 3, 64, 32)
    with pytest.raises(ValueError, match="output_size"):
        pipe(src, [pose], [pose], output_size="big", **kw)


@pytest.mark.parametrize("name", ["prior", "inpaint"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name):
    """The memory switch changes how the backward pass is computed, not what it computes."""
    cfg = load_config(f"tiny/{name}.yaml")
    plain = build_stage(name, cfg).train()
    ckpt = build_stage(name, {**cfg, "gradient_checkpointing": True}).train()
    denoiser = ckpt.prior if name == "prior" else ckpt.unet
    assert getattr(denoiser, "gradient_checkpointing", None) or getattr(denoiser, "is_gradient_checkpointing", False)
    g = torch.Generator().manual_seed(0)
    img = lambda: torch.rand(2, 3, 128, 64, generator=g) * 2 - 1  # noqa: E731
    batch = {"source_image": img(), "target_image": img(), "source_pose_image": torch.rand(2, 3, 128, 64),
             "target_pose_image": torch.rand(2, 3, 128, 64), "source_pose": torch.rand(2, 54),
             "target_pose": torch.rand(2, 54)}
    grads = []
    for stage in (plain, ckpt):
        loss = stage.training_loss(batch, torch.Generator().manual_seed(1))
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in stage.trainable_parameters() if p.grad is not None]))
    assert torch.allclose(grads[0][0], grads[1][0])
    assert len(grads[0][1]) == len(grads[1][1]) > 0
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads[0][1], grads[1][1]))
