"""Synthesis metrics: SSIM/PSNR against closed forms and scikit-image, the Fréchet distance against closed forms,
LPIPS/Inception/re-ID networks built offline from temporary weight files, refusals, and the CLI end to end."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pcdms_aug.cli.main import main as cli_main
from pcdms_aug.data.market import MarketDataset
from pcdms_aug.utils.errors import DataError
from pcdms_aug.metrics import compute_metrics, frechet_distance, frechet_distance_of, psnr
from pcdms_aug.data.pairs import pair_image_name
from pcdms_aug.metrics import ssim_upstream
from pcdms_aug.metrics.pixels import SSIM_K1
from pcdms_aug.data.pose import read_pairs, write_pairs

RNG = np.random.default_rng(0)


def _noisy(img, sd, rng):
    return np.clip(img.astype(float) + rng.normal(0, sd, img.shape), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- SSIM, PSNR
def test_ssim_of_identical_images_is_one_and_falls_with_noise():
    img = RNG.integers(0, 256, (128, 64, 3), dtype=np.uint8)
    assert ssim_upstream(img, img) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(1)
    scores = [ssim_upstream(img, _noisy(img, sd, rng)) for sd in (5, 20, 60)]
    assert scores[0] > scores[1] > scores[2] > 0


def test_ssim_closed_form_on_constant_images():
    # constant images: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1) everywhere
    a, b, rng_ = 100.0, 160.0, 255.0
    c1 = (SSIM_K1 * rng_) ** 2
    got = ssim_upstream(np.full((32, 16, 3), a), np.full((32, 16, 3), b), data_range=rng_)
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)
    # a constant prediction has data range 0 (upstream: NaN); 255 is used instead
    assert math.isfinite(ssim_upstream(RNG.integers(0, 256, (32, 16, 3)), np.full((32, 16, 3), 7, np.uint8)))


def test_ssim_channels_are_averaged_and_grey_equals_stacked():
    grey = RNG.integers(0, 256, (40, 24), dtype=np.uint8)
    pred = _noisy(grey, 30, np.random.default_rng(2))
    rgb_gt, rgb_pred = np.stack([grey] * 3, -1), np.stack([pred] * 3, -1)
    assert ssim_upstream(rgb_gt, rgb_pred) == pytest.approx(ssim_upstream(grey, pred), abs=1e-12)
    with pytest.raises(ValueError, match="win_size exceeds image extent"):
        ssim_upstream(grey[:5, :5], pred[:5, :5])


def test_ssim_is_upstreams_scikit_image_call():
    """ssim_upstream is upstream PCDMs' call (metrics.py: float32 0..255 arrays, gaussian_weights, sigma 1.2,
    population covariance, the prediction's data range): the same numbers to float32 precision."""
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(3)
    for i in range(6):
        h, w = int(rng.integers(20, 129)), int(rng.integers(12, 65))
        gt = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pred = _noisy(gt, rng.uniform(2, 90), rng) if i % 3 else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        g, p = gt.astype(np.float32), pred.astype(np.float32)
        ref = structural_similarity(g, p, gaussian_weights=True, sigma=1.2, use_sample_covariance=False,
                                    channel_axis=2, data_range=p.max() - p.min())
        assert ssim_upstream(gt, pred) == pytest.approx(ref, abs=1e-5)
        # sigma 1.5 (Wang et al.) is a different number: the parameter matters
        assert ssim_upstream(gt, pred, sigma=1.5) != pytest.approx(ref, abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(16, 40), st.integers(12, 30), st.integers(0, 2 ** 32 - 1), st.floats(1.0, 80.0))
def test_psnr_closed_form_and_ssim_bounds(h, w, seed, sd):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pred = _noisy(gt, sd, rng)
    mse = np.mean((gt.astype(float) - pred) ** 2)
    want = math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    assert psnr(gt, pred) == pytest.approx(want, rel=1e-12)
    assert -1 <= ssim_upstream(gt, pred) <= 1 and ssim_upstream(gt, gt) == pytest.approx(1.0, abs=1e-12)


def test_psnr_known_values():
    gt = np.zeros((8, 8, 3), np.uint8)
    assert psnr(gt, np.full_like(gt, 10)) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert psnr(gt, gt) == math.inf
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(gt, gt[:4])


# ---------------------------------------------------------------------------------------------- Fréchet
def test_frechet_distance_closed_forms():
    # 2-D, independent coordinates: sum of (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance([1.0, 0.0], np.diag([4.0, 1.0]), [3.0, 0.0], np.diag([9.0, 1.0])) == pytest.approx(4 + 1)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        frechet_distance([1.0], [[4.0]], [3.0], [[9.0]])
    # commuting (diagonal) covariances: sum of (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want)
    # general SPD pair: Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) by eigendecompositions
    rng = np.random.default_rng(4)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T + np.eye(5), m2 @ m2.T + np.eye(5)

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r = psd_sqrt(s1)
    want = np.trace(s1) + np.trace(s2) - 2 * np.trace(psd_sqrt(r @ s2 @ r))
    assert frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(want, rel=1e-9)
    assert frechet_distance(np.ones(5), s1, np.ones(5), s1) == pytest.approx(0, abs=1e-8)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(5), s1, np.zeros(4), s2[:4, :4])


def test_frechet_of_samples_matches_the_gaussians_and_survives_few_samples():
    rng = np.random.default_rng(5)
    a = rng.normal(0, 1, (4000, 3))
    b = rng.normal(2, 1, (4000, 3))
    assert frechet_distance_of(a, b) == pytest.approx(3 * 4, rel=0.05)
    few = rng.normal(size=(6, 32))  # fewer samples than dimensions: singular covariances
    assert math.isfinite(frechet_distance_of(few, rng.normal(size=(6, 32))))
    assert abs(frechet_distance_of(few, few)) < 1e-3


# ---------------------------------------------------------------------------------------------- networks
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Weight files of the real structures with random values: AlexNet (torchvision's full state dict, as the
    official alexnet-owt-7be5be79.pth), LPIPS heads, osnet. Random values suffice for the equality tests: they
    check the computation and the loading, not the published numbers."""
    import torchreid
    import torchvision

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    alex = torchvision.models.alexnet(weights=None)
    torch.save(alex.state_dict(), d / "alexnet.pth")
    chans = (64, 192, 384, 256, 256)
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for i, c in enumerate(chans)},
               d / "lin.pth")
    reid = torchreid.models.build_model("osnet_x0_25", num_classes=5, loss="softmax", pretrained=False)
    # as torchreid's engine saves: a dict with the state dict (DataParallel prefix) and numpy scalars
    torch.save({"state_dict": {f"module.{k}": v for k, v in reid.state_dict().items()}, "epoch": 3,
                "rank1": np.float64(0.5)}, d / "osnet.pth.tar-3")
    return {"dir": d, "alex": alex, "alexnet": d / "alexnet.pth", "linear": d / "lin.pth",
            "reid": d / "osnet.pth.tar-3"}


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty torch hub (TORCH_HOME in a temp folder) whose downloader fails the test: whatever would fetch
    weights is caught. Returns the hub's checkpoints folder, where a library looks for cached files."""
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"a download was attempted: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    return hub


def test_lpips_loads_both_files_offline_zero_and_monotonic(weights, no_download):
    from pcdms_aug.metrics.perceptual import load_lpips

    net = load_lpips(str(weights["alexnet"]), str(weights["linear"]))
    # every backbone tensor is the file's, under lpips' slice<n>.<torchvision index> names; every head too
    alex = weights["alex"].features.state_dict()
    got = net.net.state_dict()
    assert len(got) == 10 and all(torch.equal(v, alex[k.split(".", 1)[1]]) for k, v in got.items())
    heads = torch.load(weights["linear"])
    assert all(torch.equal(net.lins[i].model[-1].weight, heads[f"lin{i}.model.1.weight"]) for i in range(5))
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 128, 64, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(net(a, a).flatten(), torch.zeros(3), atol=1e-7)
        d = [net(a, (a + s * torch.randn(a.shape, generator=g)).clamp(-1, 1)).flatten() for s in (0.05, 0.2, 0.6)]
    assert bool((d[0] < d[1]).all() and (d[1] < d[2]).all())
    assert not any(no_download.iterdir())  # nothing cached: nothing fetched


def test_lpips_matches_the_lpips_package_built_its_own_way(weights, no_download):
    """The reference is ``lpips.LPIPS(net='alex', model_path=...)`` built as a user with network builds it,
    torchvision loading AlexNet's ImageNet file through torch.hub: here from a hub cache holding the random-valued
    AlexNet under the official file name (the downloader is disabled)."""
    import lpips
    import torchvision

    from pcdms_aug.metrics.perceptual import load_lpips

    official = Path(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url).name
    shutil.copyfile(weights["alexnet"], no_download / official)
    ref = lpips.LPIPS(net="alex", model_path=str(weights["linear"]), verbose=False)
    ours = load_lpips(weights["alexnet"], weights["linear"])
    g = torch.Generator().manual_seed(2)
    a = torch.rand(4, 3, 128, 64, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        want = ref(a, b).flatten()
        assert float(want.min()) > 0
        assert torch.allclose(ours(a, b).flatten(), want, rtol=1e-6, atol=1e-8)


def test_lpips_installed_heads_lpips_and_torchmetrics_are_one_file(weights):
    from pcdms_aug.metrics.perceptual import INSTALLED, load_lpips

    a, b = INSTALLED["lpips"](), INSTALLED["torchmetrics"]()
    assert a is not None and b is not None and a.read_bytes() == b.read_bytes()
    net = load_lpips(weights["alexnet"], "lpips")
    assert torch.equal(net.lins[4].model[-1].weight, torch.load(a, map_location="cpu")["lin4.model.1.weight"])


def test_lpips_refusals_name_the_key_and_the_file(weights, tmp_path):
    from pcdms_aug.metrics.perceptual import load_lpips

    with pytest.raises(DataError, match="lpips.alexnet_weights is not set.*alexnet-owt-7be5be79"):
        load_lpips(None, weights["linear"])
    with pytest.raises(DataError, match="lpips.alexnet_weights: file not found") as e:
        load_lpips(tmp_path / "nope.pth", weights["linear"])
    assert "nope.pth" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="lpips.linear_weights: file not found"):
        load_lpips(weights["alexnet"], tmp_path / "nope.pth")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="not a torchvision AlexNet") as e:
        load_lpips(tmp_path / "bad.pth", weights["linear"])
    assert "bad.pth" in str(e.value)
    with pytest.raises(DataError, match="not an LPIPS AlexNet linear-layer file"):
        load_lpips(weights["alexnet"], weights["alexnet"])


def test_inception_both_weight_layouts_offline(tmp_path, no_download):
    import torchvision

    from pcdms_aug.metrics.inception import InceptionPool, load_inception

    torch.manual_seed(0)
    fid_net = InceptionPool("pytorch-fid")
    torch.save(fid_net.net.state_dict(), tmp_path / "pt_inception.pth")
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).eval()
    torch.save(tv.state_dict(), tmp_path / "inception_v3_google.pth")
    x = torch.rand(1, 3, 64, 32)
    a = load_inception(tmp_path / "pt_inception.pth")
    assert a.variant == "pytorch-fid" and "TF 2015-12-05" in a.label
    with torch.no_grad():
        assert a(x).shape == (1, 2048)
        assert all(torch.equal(v, fid_net.net.state_dict()[k]) for k, v in a.net.state_dict().items())
        b = load_inception(tmp_path / "inception_v3_google.pth")
        assert b.variant == "torchvision" and "upstream" in b.label
        # upstream's recipe: bilinear 299, transform_input on [0,1] images, trunk to Mixed_7c, global average
        y = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        y = torch.cat([y[:, c:c + 1] * (s / 0.5) + (m - 0.5) / 0.5 for c, (m, s) in
                       enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))], 1)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            y = getattr(tv, name)(y)
        want = y.mean(dim=(2, 3))
        got = b(x)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    with pytest.raises(DataError, match="inception_weights is not set.*inception_v3_google"):
        load_inception(None)
    with pytest.raises(DataError, match="fid.inception_weights: file not found") as e:
        load_inception(tmp_path / "absent.pth")
    assert "absent.pth" in str(e.value) and "\n" not in str(e.value)
    torch.save({"fc.weight": torch.zeros(10, 2048)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="10 classes"):
        load_inception(tmp_path / "other.pth")


def test_inception_tf_variant_matches_pytorch_fid_built_its_own_way(no_download):
    """The reference is pytorch-fid's own ``InceptionV3`` (its FID blocks, resize and input scaling), which loads
    pt_inception-2015-12-05-6726825d.pth through torch.hub, strictly: here from a hub cache holding random-valued
    weights of that layout under that name (the downloader is disabled)."""
    from pytorch_fid import inception as pfid

    from pcdms_aug.metrics.inception import InceptionPool, load_inception

    torch.manual_seed(0)
    cached = no_download / Path(pfid.FID_WEIGHTS_URL).name
    torch.save(InceptionPool("pytorch-fid").net.state_dict(), cached)
    ours = load_inception(cached)
    ref = pfid.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        want = ref(x)[0].flatten(1)
        assert want.shape == (2, 2048) and float(want.abs().max()) > 0
        assert torch.allclose(ours(x), want, atol=1e-6)


def test_reid_features_from_a_torchreid_checkpoint(weights, tmp_path):
    from pcdms_aug.metrics.reid_features import load_reid_features

    net = load_reid_features("osnet_x0_25", weights["reid"], (128, 64))
    assert "osnet_x0_25" in net.label and str(weights["reid"]) in net.label
    with torch.no_grad():
        f = net(torch.rand(3, 3, 64, 32))  # resized to 128x64 inside
    assert f.shape == (3, 512)
    state = torch.load(weights["reid"], weights_only=False)["state_dict"]
    state.pop(next(k for k in state if "conv1" in k))
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(DataError, match="does not fit torchreid model 'osnet_x0_25': 1 of") as e:
        load_reid_features("osnet_x0_25", tmp_path / "partial.pth", (128, 64))
    assert "partial.pth" in str(e.value)
    with pytest.raises(DataError, match="unknown torchreid model 'nonet'"):
        load_reid_features("nonet", weights["reid"], (128, 64))
    with pytest.raises(DataError, match="fid_reid.weights is not set"):
        load_reid_features("osnet_x0_25", None, (128, 64))


# ---------------------------------------------------------------------------------------------- end to end
N_PAIRS = 10


@pytest.fixture(scope="module")
def case(synth_market, tmp_path_factory):
    """A pairs CSV of N_PAIRS test pairs and a generated folder of noisy copies of their ground truths."""
    d = tmp_path_factory.mktemp("metrics_case")
    pairs = read_pairs(synth_market / "market-pairs-test.csv")[:N_PAIRS]
    write_pairs(d / "pairs.csv", pairs)
    ds = MarketDataset(synth_market)
    gen = d / "generated"
    gen.mkdir()
    rng = np.random.default_rng(0)
    for frm, to in pairs:
        gt = np.asarray(Image.open(ds.path_of(to)).convert("RGB"))
        Image.fromarray(_noisy(gt, 12, rng)).save(gen / pair_image_name(frm, to))
    return {"root": synth_market, "pairs": pairs, "csv": d / "pairs.csv", "gen": gen, "dir": d, "ds": ds}


def _overrides(weights, **extra):
    o = {"lpips.alexnet_weights": weights["alexnet"], "lpips.linear_weights": "lpips",
         "fid_reid.weights": weights["reid"], "fid.max_reference": 20, "batch_size": 4, "device": "cpu"}
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def test_cli_json_end_to_end(case, weights, capsys):
    out = case["dir"] / "report.json"
    rc = cli_main(["metrics", "--pairs", str(case["csv"]), "--generated", str(case["gen"]), "--dataset",
                   str(case["root"]), "--config", "tiny/metrics.yaml", "--json", "--out", str(out),
                   "--no-progress", *_overrides(weights)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert {**printed, "written_by": "pcdms-aug metrics"} == json.loads(out.read_text())  # the file is marked ours
    assert {"generated", "copy_source", "ground_truth", "refused", "n_pairs", "labels"} <= set(printed)
    assert printed["n_pairs"] == N_PAIRS and printed["n_missing"] == 0
    assert printed["protocol"]["size"] == [128, 64]
    gen, src = printed["generated"], printed["copy_source"]
    for row in (gen, src):
        assert set(row) == {"ssim", "psnr", "lpips", "fid", "fid_reid", "n_pairs"}
        assert row["fid"] is None and row["lpips"] is not None and row["fid_reid"] is not None
    assert set(printed["ground_truth"]) == {"fid", "fid_reid", "n_pairs"}
    assert printed["ground_truth"]["fid_reid"] > 0  # the true targets against training images of other people
    # noisy copies of the targets beat copying the source on every computed metric
    assert gen["ssim"] > src["ssim"] and gen["psnr"] > src["psnr"] and gen["lpips"] < src["lpips"]
    assert "fid.inception_weights is not set" in printed["refused"]["fid"]
    assert set(printed["refused"]) == {"fid"}
    assert "osnet_x0_25" in printed["labels"]["fid_reid"] and "20 training images" in printed["labels"]["fid_reid"]
    assert "source" in printed["labels"]["copy_source"]


def test_exact_copies_give_perfect_scores_and_table(case, weights, tmp_path):
    gen = tmp_path / "exact"
    gen.mkdir()
    for frm, to in case["pairs"]:
        Image.open(case["ds"].path_of(to)).convert("RGB").save(gen / pair_image_name(frm, to))
    cfg = {"lpips": {"alexnet_weights": str(weights["alexnet"])}, "fid": {"enabled": False},
           "fid_reid": {"enabled": False}, "batch_size": 8, "device": "cpu"}
    r = compute_metrics(case["csv"], gen, case["root"], cfg, progress=False)
    assert r["generated"]["ssim"] == pytest.approx(1.0) and r["generated"]["psnr"] == math.inf
    assert r["generated"]["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert r["refused"]["fid"].startswith("disabled")
    from pcdms_aug.metrics import format_table

    table = format_table(r)
    assert "| generated " in table and "| copy-source " in table and "refused" in table and "inf" in table
    assert "| ground truth" not in table  # it has FIDs only, and both are disabled here


def test_missing_generated_image_is_named(case, weights, tmp_path, capsys):
    gen = tmp_path / "partial"
    shutil.copytree(case["gen"], gen)
    frm, to = case["pairs"][3]
    (gen / pair_image_name(frm, to)).unlink()
    (gen / pair_image_name(*case["pairs"][7])).unlink()
    args = ["metrics", "--pairs", str(case["csv"]), "--generated", str(gen), "--dataset", str(case["root"]),
            "--no-progress", "fid_reid.enabled=false", "lpips.enabled=false", "fid.enabled=false"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert pair_image_name(frm, to) in err and f"2 of {N_PAIRS} pairs" in err and "--allow-missing" in err
    assert cli_main(args + ["--json", "--allow-missing"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_pairs"] == N_PAIRS - 2 and r["n_missing"] == 2 and r["generated"]["n_pairs"] == N_PAIRS - 2
    assert any("2 of" in n for n in r["notes"])


def test_other_size_is_resized_and_said(case, tmp_path):
    gen = tmp_path / "big"
    gen.mkdir()
    for p in case["gen"].iterdir():
        Image.open(p).resize((128, 256), Image.BICUBIC).save(gen / p.name)
    cfg = {"lpips": {"enabled": False}, "fid": {"enabled": False}, "fid_reid": {"enabled": False}}
    r = compute_metrics(case["pairs"], gen, case["root"], cfg, progress=False)
    assert r["protocol"]["size"] == [128, 64]
    assert any(f"resized {N_PAIRS} generated image(s) from 256x128 to" in n for n in r["notes"])
    assert r["generated"]["ssim"] > r["copy_source"]["ssim"]


def test_best_of_k_is_the_labelled_oracle(case, tmp_path):
    gen = tmp_path / "k"
    gen.mkdir()
    rng = np.random.default_rng(1)
    for i, (frm, to) in enumerate(case["pairs"]):
        gt = np.asarray(Image.open(case["ds"].path_of(to)).convert("RGB"))
        good, bad = gt, rng.integers(0, 256, gt.shape, dtype=np.uint8)
        samples = (good, bad) if i % 2 else (bad, good)
        for k, s in enumerate(samples):
            Image.fromarray(s).save(gen / pair_image_name(frm, to, k))
    cfg = {"lpips": {"enabled": False}, "fid": {"enabled": False}, "fid_reid": {"enabled": False}}
    r = compute_metrics(case["pairs"], gen, case["root"], cfg, best_of=2, progress=False)
    assert r["generated"]["ssim"] == pytest.approx(1.0)
    assert "oracle best-of-2" in r["labels"]["generated"] and "uses ground truth" in r["labels"]["generated"]
    assert r["protocol"]["best_of"] == 2
    # the default reads <from>_to_<to>.png only: these samples are not taken for it
    with pytest.raises(DataError, match=f"{N_PAIRS} of {N_PAIRS} pairs"):
        compute_metrics(case["pairs"], gen, case["root"], cfg, progress=False)


def test_pair_naming_an_unknown_image_is_an_error(case, tmp_path):
    gen = tmp_path / "g"
    gen.mkdir()
    frm = case["pairs"][0][0]
    ghost = "0999_c1s1_000001_00.jpg"
    Image.new("RGB", (64, 128)).save(gen / pair_image_name(frm, ghost))
    with pytest.raises(DataError, match=f"pair {frm},{ghost}.*{ghost}.*not found"):
        compute_metrics([(frm, ghost)], gen, case["root"], {"fid_reid": {"enabled": False}}, progress=False)


def test_fid_needs_two_pairs_and_the_rest_still_runs(case, weights):
    cfg = {"lpips": {"enabled": False}, "fid_reid": {"weights": str(weights["reid"])}}
    r = compute_metrics(case["pairs"][:1], case["gen"], case["root"], cfg, progress=False)
    assert "at least 2 evaluated pairs" in r["refused"]["fid_reid"] and r["generated"]["fid_reid"] is None
    assert r["n_pairs"] == 1 and 0 < r["generated"]["ssim"] < 1


def test_ground_truth_row_targets_reference_and_bootstrap(case, weights):
    """The ground-truth row is the generated row of a perfect generator; against the targets it is 0 and a noisy
    generator is above it; the bootstrap gives every FID a spread, the same for the same seed."""
    from pcdms_aug.metrics import format_table

    exact = case["dir"] / "exact_targets"
    exact.mkdir(exist_ok=True)
    for frm, to in case["pairs"]:
        shutil.copyfile(case["ds"].path_of(to), exact / pair_image_name(frm, to))
    cfg = {"lpips": {"enabled": False}, "fid": {"enabled": False}, "batch_size": 4,
           "fid_reid": {"weights": str(weights["reid"])}}
    r = compute_metrics(case["pairs"], exact, case["root"], cfg, progress=False)
    assert r["generated"]["fid_reid"] == pytest.approx(r["ground_truth"]["fid_reid"], rel=1e-9)
    assert r["protocol"]["reference"] == {"fid_reid": "train"}

    cfg["fid_reid"]["reference"] = "targets"
    cfg["fid_bootstrap"] = 6
    r = compute_metrics(case["pairs"], case["gen"], case["root"], cfg, progress=False)
    n_targets = len({to for _, to in case["pairs"]})
    assert f"the {n_targets} distinct true targets" in r["labels"]["fid_reid"]
    if n_targets == N_PAIRS:
        assert r["ground_truth"]["fid_reid"] == pytest.approx(0.0, abs=1e-4)
    assert r["generated"]["fid_reid"] > r["ground_truth"]["fid_reid"] + 1e-3
    for row in ("generated", "copy_source", "ground_truth"):
        assert r[row]["fid_reid_sd"] > 0
    assert sum("fid_reid: generated - copy-source" in n and "over 6 resamples" in n for n in r["notes"]) == 1
    again = compute_metrics(case["pairs"], case["gen"], case["root"], cfg, progress=False)
    assert again["generated"]["fid_reid_sd"] == r["generated"]["fid_reid_sd"]
    table = format_table(r)
    gt_line = next(line for line in table.splitlines() if line.startswith("| ground truth"))
    assert gt_line.split("|")[2].strip() == "-" and "±" in gt_line and "refused" in gt_line  # fid disabled


@pytest.mark.parametrize("override, message", [({"fid_reid": {"reference": "gallery"}}, "fid_reid.reference"),
                                               ({"fid": {"reference": 1}}, "fid.reference"),
                                               ({"fid_bootstrap": -1}, "fid_bootstrap")])
def test_bad_reference_or_bootstrap_is_named(case, override, message):
    with pytest.raises(DataError, match=message):
        compute_metrics(case["pairs"], case["gen"], case["root"], override, progress=False)
