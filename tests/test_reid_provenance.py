"""What the generator saw: the paper's protocol (the subset's people, outside the subset too) or other people,
from the shipped weights' record or the config's statement, with the validation images it trained on."""
import shutil

import pytest

from pcdms_aug.data.splits import make_split, save_split
from pcdms_aug.data.market import MarketDataset
from pcdms_aug.data.synthetic import build_synthetic_market
from pcdms_aug.generation.inputs import weights_fingerprint
from pcdms_aug.utils.errors import DataError
from reid import provenance as pv
from tests.conftest import SYNTH_SETTINGS


@pytest.fixture(scope="module")
def world(synth_market, tmp_path_factory):
    """The test world, a half subset of it, and the validation images (the training images outside it)."""
    split = tmp_path_factory.mktemp("prov") / "split.json"
    subset = make_split(MarketDataset(synth_market).train, 0.5, 0)
    save_split(split, subset)
    val = [it.filename for it in MarketDataset(synth_market).train if it.filename not in set(subset.files)][:10]
    return synth_market, split, val


def test_the_shipped_weights_on_their_own_world_follow_the_papers_protocol(world, monkeypatch):
    data, split, val = world
    monkeypatch.setattr(pv, "TINY_TRAINED_ON", {k: SYNTH_SETTINGS[k] for k in ("seed", "train_ids", "test_ids")})
    seen = pv.generator_data(None, data, weights_fingerprint("tiny"))
    assert "shipped tiny weights" in seen.what and "seed 0" in seen.what
    rec = pv.describe(seen, data, split, val)
    assert rec["generator_saw"] == pv.PAPER
    assert rec["gen_seen_subset_ids"] == rec["num_subset_ids"] > 0
    assert rec["gen_seen_outside_images"] > 0 and rec["gen_seen_val_images"] == len(val) == 10


def test_the_shipped_weights_never_saw_a_world_of_another_seed(world, tmp_path):
    data, split, _ = world
    other = build_synthetic_market(tmp_path / "w", 4, 2, seed=7, progress=False)
    osplit = tmp_path / "s.json"
    save_split(osplit, make_split(MarketDataset(other).train, 0.5, 0))
    val = [it.filename for it in MarketDataset(other).train][:5]
    rec = pv.describe(pv.generator_data(None, other, weights_fingerprint("tiny")), other, osplit, val)
    assert rec["generator_saw"] == pv.OTHER and rec["gen_seen_val_images"] == 0 == rec["gen_seen_subset_ids"]
    # The test world (seed 0) against the shipped record (seed 0, 60 identities): people are (seed, identity),
    # so any identity both worlds drew is the same person.
    tiny = pv.generator_data(None, data, weights_fingerprint("tiny"))
    mine = {k[0] for k in pv.training_keys(data).values()}
    assert pv.describe(tiny, data, split, [])["gen_seen_subset_ids"] <= len(mine & tiny.people)


def test_stated_provenance_and_unknown_weights(world, tmp_path):
    data, split, val = world
    unknown = pv.describe(pv.generator_data(None, data, "0123456789ab"), data, split, val)
    assert unknown["generator_saw"] == pv.UNKNOWN and unknown["gen_seen_val_images"] is None
    assert "set generator_trained_on" in unknown["generator_trained_on"]
    assert pv.describe(pv.generator_data("unknown", data, None), data, split, val)["generator_saw"] == pv.UNKNOWN
    assert pv.describe(pv.generator_data("other", data, None), data, split, val)["generator_saw"] == pv.OTHER
    this = pv.describe(pv.generator_data("this", data, None), data, split, val)
    assert this["generator_saw"] == pv.PAPER and this["gen_seen_val_images"] == len(val)
    # A plain Market-layout copy (no synthetic.json): images match by their bytes.
    copy = tmp_path / "copy"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("synthetic.json", "bounding_box_test", "query"))
    for sub in ("bounding_box_test", "query"):
        (copy / sub).mkdir()
    stated = pv.describe(pv.generator_data(str(copy), data, None), data, split, val)
    assert stated["generator_saw"] == pv.PAPER and stated["gen_seen_val_images"] == len(val)
    assert str(copy) in pv.generator_data(str(copy), data, None).what
    with pytest.raises(DataError, match="generator_trained_on"):
        pv.generator_data("elsewhere", data, None)
