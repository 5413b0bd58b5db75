"""torchreid's softmax and triplet engines for one epoch on a small Market-layout set, evaluation, weights."""
import math

import numpy as np
import pytest
import torch

from pcdms_aug.utils.errors import DataError
from reid import training
from reid.datasets import SYNTHETIC
from reid.evaluation import evaluate, rank_cap, rank_metrics
from tests.reid_fixtures import build_fake_generated

SMALL = dict(epochs=1, batch_size=8, height=32, width=16, batch_size_test=32)


@pytest.fixture(scope="module")
def data(synth_market, tmp_path_factory):
    return synth_market.parent, build_fake_generated(tmp_path_factory.mktemp("reid_engine") / "gen", synth_market)


@pytest.mark.parametrize("loss", ["softmax", "triplet"])
def test_one_epoch_of_each_engine_trains_and_evaluates(data, loss):
    root, gen = data
    cfg = training.TrainConfig(loss=loss, **SMALL)
    dm = training.build_datamanager(cfg, root, training.with_generated_views(SYNTHETIC, gen), use_gpu=False)
    model = training.build_model(cfg, dm.num_train_pids, "cpu")
    engine = training.build_engine(cfg, dm, model, "cpu")
    assert type(engine).__name__ == {"softmax": "ImageSoftmaxEngine", "triplet": "ImageTripletEngine"}[loss]
    before = [p.detach().clone() for p in model.parameters()]
    seconds = training.train_epochs(engine, cfg)
    assert len(seconds) == 1 and seconds[0] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    res = evaluate(model, dm)
    assert 0.0 <= res["mAP"] <= 100.0 and 0.0 <= res["rank1"] <= 100.0
    cmc = res["cmc"]
    assert np.all(np.diff(cmc) >= 0) and len(cmc) <= res["num_gallery"]
    assert res["num_query"] == len(dm.test_loader[dm.targets[0]]["query"].dataset)
    assert res["num_gallery"] == len(dm.test_loader[dm.targets[0]]["gallery"].dataset)


def test_train_and_evaluate_is_deterministic_for_a_seed(data):
    root, gen = data
    cfg = training.TrainConfig(**SMALL)
    a = training.train_and_evaluate(cfg, root, SYNTHETIC, seed=3, generated_dir=gen)
    b = training.train_and_evaluate(cfg, root, SYNTHETIC, seed=3, generated_dir=gen)
    assert a["cmc"] == b["cmc"] and a["mAP"] == b["mAP"]
    n = len(list((root / "market1501" / "bounding_box_train").glob("*.jpg")))
    assert a["num_train_real"] == n == a["num_train_generated"] and a["num_train_ids"] == 8


def test_ranking_protocol_ignores_same_camera_matches_and_keeps_distractors():
    # query: person 1, camera 0. Gallery by distance: same person same camera (ignored), a distractor,
    # the same person from camera 1, another person.
    qf = torch.tensor([[0.0]])
    gf = torch.tensor([[0.1], [0.2], [0.3], [0.4]])
    q_pids, q_cams = np.array([1]), np.array([0])
    g_pids, g_cams = np.array([1, 0, 1, 2]), np.array([0, 1, 1, 0])
    res = rank_metrics(qf, q_pids, q_cams, gf, g_pids, g_cams)
    assert res["cmc"] == [0.0, 100.0, 100.0]  # three ranks left once the same-camera image is ignored
    assert res["mAP"] == pytest.approx(50.0)
    assert math.isnan(res["rank5"]) and math.isnan(res["rank10"])
    assert rank_cap(q_pids, q_cams, g_pids, g_cams, max_rank=2) == 2


def test_weights_from_a_local_file_only(tmp_path):
    cfg = training.TrainConfig(**SMALL)
    torch.manual_seed(0)
    src = training.build_model(cfg, 5, "cpu")
    path = tmp_path / "w.pth"
    # torchreid's checkpoint layout: state_dict under a key, 'module.' prefixes, numpy scalars beside it
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}, "rank1": np.float64(0.5),
                "epoch": 3}, path)
    torch.manual_seed(1)
    cfg_w = training.TrainConfig(weights=str(path), pretrained=True, **SMALL)
    cfg_w.check()
    dst = training.build_model(cfg_w, 7, "cpu")  # other classifier size: skipped, the backbone is loaded
    own = dst.state_dict()
    for k, v in src.state_dict().items():
        if own[k].shape == v.shape:
            assert torch.equal(own[k], v), k
    assert own["classifier.weight"].shape[0] == 7
    with pytest.raises(DataError, match="needs weights"):
        training.TrainConfig(pretrained=True).check()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read weights"):
        training.load_weights(dst, junk)
    with pytest.raises(DataError, match="not found"):
        training.TrainConfig(weights=str(tmp_path / "absent.pth")).check()


def test_generated_share_sets_the_batches_composition(data):
    root, gen = data  # one view per real image: torchreid's uniform sampler draws about half views
    dm = training.build_datamanager(training.TrainConfig(**SMALL), root, training.with_generated_views(SYNTHETIC, gen),
                                    use_gpu=False)
    trainset = dm.train_loader.dataset
    for share in (0.2, 0.8):
        cfg = training.TrainConfig(generated_share=share, **SMALL)
        loader = training.share_loader(cfg, trainset, seed=0)
        drawn = [trainset.train[i][0] in trainset.generated_paths for _ in range(20) for i in loader.sampler]
        assert abs(np.mean(drawn) - share) < 0.05
        assert len(loader) == len(dm.train_loader)  # an epoch is still the images' count
        fresh = [list(training.share_loader(cfg, trainset, seed=0).sampler) for _ in range(2)]
        assert fresh[0] == fresh[1] != list(training.share_loader(cfg, trainset, seed=1).sampler)  # seeded
    run = training.train_and_evaluate(training.TrainConfig(generated_share=0.5, **SMALL), root, SYNTHETIC, seed=1,
                                      generated_dir=gen)
    assert run["num_train_generated"] == run["num_train_real"] > 0


@pytest.mark.parametrize("bad, match", [({"generated_share": 1.0}, "between 0 and 1"),
                                        ({"generated_share": 0}, "between 0 and 1"),
                                        ({"generated_share": 0.5, "loss": "triplet"}, "identity sampler")])
def test_generated_share_refuses_what_it_cannot_do(bad, match):
    with pytest.raises(DataError, match=match):
        training.TrainConfig(**{**SMALL, **bad}).check()
