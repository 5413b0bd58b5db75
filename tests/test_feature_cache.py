"""The feature cache: a step's loss from cached frozen features equals the loss that runs the encoders; stale,
partial and sharded caches."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from pcdms_aug.config.loading import load_config
from pcdms_aug.data.pairs import PairDataset, pair_image_name
from pcdms_aug.stages import build_stage
from pcdms_aug.training.feature_build import build_cache, open_cache
from pcdms_aug.training.feature_cache import shard_files
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.runtime import Runtime

CPU = Runtime("cpu", torch.float32, 0, 1, 0)
# Same seed, same samples: the features are the same numbers computed in other batches (per image or pair
# instead of per training batch), so only float summation order differs.
RTOL, ATOL = 1e-5, 1e-6


def _pairs(root, size, n=6, coarse_dir=None):
    from pcdms_aug.data.market import MarketDataset, make_pairs
    from pcdms_aug.data.pose import read_annotations

    names = {it.filename for it in MarketDataset(root).train}
    pairs = make_pairs(read_annotations(root / "market-annotation-train.csv"), n, 0, names)
    if coarse_dir is not None:
        from PIL import Image

        coarse_dir.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        for frm, to in pairs:
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(coarse_dir / pair_image_name(frm, to))
    return PairDataset(root, root / "market-annotation-train.csv", pairs=pairs, image_size=size,
                       refine_inputs_dir=coarse_dir)


def _losses(stage, plain, cached, idx=(0, 1, 2, 3)):
    a = default_collate([plain[i] for i in idx])
    b = default_collate([cached[i] for i in idx])
    assert "frozen" in b and not any(k.endswith("image") and "pose" not in k for k in b)
    torch.manual_seed(0)
    stage.train()
    la = stage.training_loss(a, generator=torch.Generator().manual_seed(7))
    lb = stage.training_loss(b, generator=torch.Generator().manual_seed(7))
    return float(la.detach()), float(lb.detach())


@pytest.mark.parametrize("name", ["prior", "inpaint", "refine"])
def test_tiny_stages_cached_loss_equals_the_loss_that_runs_the_encoders(name, synth_market, tmp_path):
    torch.set_num_threads(1)
    stage = build_stage(name, load_config(f"tiny/{name}.yaml"))
    size = (128, 64)
    ds = _pairs(synth_market, size, coarse_dir=tmp_path / "coarse" if name == "refine" else None)
    build_cache(stage, ds, tmp_path / "cache", CPU, size, batch=3, shard_size=4, progress=False)
    la, lb = _losses(stage, ds, open_cache(stage, ds, tmp_path / "cache", size))
    assert lb == pytest.approx(la, rel=RTOL, abs=ATOL)


@pytest.fixture(scope="module")
def fixture_weights(tmp_path_factory):
    from pcdms_aug.testing.paper_fixture import write_folders

    root = tmp_path_factory.mktemp("paper_weights")
    write_folders(root)
    return root


@pytest.mark.parametrize("name", ["inpaint", "refine"])
def test_paper_layout_stages_with_a_vae_cached_loss_equals_the_uncached_one(name, fixture_weights, synth_market,
                                                                             tmp_path):
    """The reduced paper fixture: SD's VAE layout (mean and log-variance cached; stage 2's canvas per pair)."""
    from pcdms_aug.testing.paper_fixture import stage_overrides

    torch.set_num_threads(1)
    stage = build_stage(name, load_config(f"paper/{name}.yaml", stage_overrides(fixture_weights, stage=name)))
    size = (64, 32)
    ds = _pairs(synth_market, size, n=4, coarse_dir=tmp_path / "coarse" if name == "refine" else None)
    manifest = build_cache(stage, ds, tmp_path / "cache", CPU, size, batch=4, progress=False)
    assert manifest["complete"] and manifest["pairs"] == 4
    cached = open_cache(stage, ds, tmp_path / "cache", size)
    feats = cached[0]["frozen"]
    latent = feats["pair.canvas" if name == "inpaint" else "target.latent"]
    assert latent.shape[0] == 2 * stage.codec.channels  # mean and log-variance
    la, lb = _losses(stage, ds, cached)
    assert lb == pytest.approx(la, rel=RTOL, abs=ATOL)


def test_stale_partial_and_sharded_caches(synth_market, tmp_path):
    torch.set_num_threads(1)
    size = (128, 64)
    cfg = load_config("tiny/inpaint.yaml")
    stage = build_stage("inpaint", cfg)
    ds = _pairs(synth_market, size)
    folder = tmp_path / "cache"
    # two ranks, each its share (the main rank last: it checks the whole once every rank is done)
    for rank in (1, 0):
        build_cache(stage, ds, folder, Runtime("cpu", torch.float32, rank, 2, rank), size, shard_size=2,
                    progress=False)
    ranks = {p.name.split("-")[1] for p in shard_files(folder)}
    assert ranks == {"r000", "r001"}
    open_cache(stage, ds, folder, size)

    # other encoder weights, another loading size: refused in one line naming the folder
    other = build_stage("inpaint", load_config("tiny/inpaint.yaml", ["dino.seed=5"]))
    with pytest.raises(DataError, match="stale feature cache") as e:
        open_cache(other, ds, folder, size)
    assert str(folder) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="stale feature cache"):
        build_cache(other, ds, folder, CPU, size, progress=False)
    with pytest.raises(DataError, match="stale feature cache"):
        open_cache(stage, ds, folder, (64, 32))

    # resumable: a lost shard is computed again, nothing else
    from safetensors import safe_open

    def keys(shard):
        with safe_open(str(shard), "pt") as f:
            return set(f.keys())

    lost = shard_files(folder)[0]
    lost_keys = keys(lost)
    lost.unlink()
    before = {p.name for p in shard_files(folder)}
    build_cache(stage, ds, folder, CPU, size, shard_size=100, progress=False)
    new = [p for p in shard_files(folder) if p.name not in before]
    assert len(new) == 1 and keys(new[0]) == lost_keys

    # a replaced image file has a new key: the cache lacks it
    img = ds.image_path(ds.pairs[0][0])
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        with pytest.raises(DataError, match="feature cache lacks " + ds.pairs[0][0]):
            open_cache(stage, PairDataset(synth_market, synth_market / "market-annotation-train.csv",
                                          pairs=ds.pairs, image_size=size), folder, size)
    finally:
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_training_from_the_cache_takes_the_steps_of_training_without_it(synth_market, tmp_path):
    """Two steps of the tiny inpaint stage: the cache is built on first use, the frozen networks stay out of
    the stage while it trains, and the weights are those of the run that encodes every step."""
    from safetensors.torch import load_file

    from pcdms_aug.training.config import load_run_config
    from pcdms_aug.training.loop import train

    torch.set_num_threads(1)

    def run(out, *extra):
        cfg = load_run_config("tiny/train_inpaint.yaml", [
            f"data.root={synth_market}", f"data.annotations={synth_market}/market-annotation-train.csv",
            f"train.out={out}", "train.batch_size=2", "train.max_steps=2", "train.checkpoint_every=2",
            "train.sample_every=2", "train.sample_steps=2", "train.log_every=1", "data.max_pairs=8", *extra])
        return train(cfg, progress=False)

    plain = run(tmp_path / "plain")
    cached = run(tmp_path / "cached", f"train.feature_cache={tmp_path / 'features'}")
    assert (tmp_path / "features" / "manifest.json").is_file()
    a = load_file(str(tmp_path / "plain" / "checkpoint-2" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "cached" / "checkpoint-2" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    # the exported stage still holds its random frozen encoders, and the preview was drawn
    assert sorted(p.name for p in cached.glob("*.safetensors")) == sorted(p.name for p in plain.glob("*.safetensors"))
    assert (tmp_path / "cached" / "samples" / "step-000002.png").is_file()


def test_the_cache_features_command_builds_resumes_and_names_what_is_wrong(synth_market, tmp_path, capsys):
    from pcdms_aug.cli.main import main

    data = [f"data.root={synth_market}", f"data.annotations={synth_market}/market-annotation-train.csv",
            "data.max_pairs=6"]
    args = ["cache-features", "tiny/train_prior.yaml", *data, "--out", str(tmp_path / "c"), "--no-progress"]
    assert main(args) == 0
    assert "6 pairs" in capsys.readouterr().out
    shards = shard_files(tmp_path / "c")
    assert main(args) == 0 and shard_files(tmp_path / "c") == shards  # nothing left to encode
    assert main(["cache-features", "tiny/train_prior.yaml", *data]) == 2
    assert "give --out or train.feature_cache" in capsys.readouterr().err
    assert main([*args, "--dtype", "fp16"]) == 2
    assert "stored as fp32, not fp16" in capsys.readouterr().err
