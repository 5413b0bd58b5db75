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


@pytest.fixture(scope="session")
def drawn_layouts(tmp_path_factory):
    """A torchreid ``root`` holding the synthetic people drawn as DukeMTMC-reID (``dukemtmc-reid/``, 160x72
    crops) and as MSMT17 (``msmt17/``, 192x80 crops), each with its annotation CSVs. Read-only for tests."""
    from pcdms_aug.data.synthetic_layouts import build_layout

    root = tmp_path_factory.mktemp("layouts")
    for folder, layout, crop in (("dukemtmc-reid", "dukemtmcreid", (160, 72)), ("msmt17", "msmt17", (192, 80))):
        build_layout(root / folder, layout, crop, train_ids=4, test_ids=3, seed=1, progress=False)
    return root
