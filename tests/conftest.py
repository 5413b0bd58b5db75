"""Shared fixtures. ``synth_market``: a small synthetic Market-1501 built once per test session."""
import pytest

SYNTH_SETTINGS = {"train_ids": 8, "test_ids": 6, "seed": 0}


@pytest.fixture(scope="session")
def synth_market(tmp_path_factory):
    """Folder ``<tmp>/market1501`` holding bounding_box_train, query, bounding_box_test, the annotation CSVs
    (train, test, query), market-pairs-test.csv and synthetic.json. Its parent is a torchreid ``root``.
    Read-only for tests: copy it before changing anything."""
    from pcdms_aug.data.synthetic import build_synthetic_market

    return build_synthetic_market(tmp_path_factory.mktemp("synth") / "market1501", progress=False,
                                  **SYNTH_SETTINGS)
