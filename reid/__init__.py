"""torchreid integration: datasets with generated views, the downstream experiment runner, the demo.

    import reid
    name = reid.with_generated_views("msmt17", "gen/f0.2_s0", split_file="runs/reid/splits/split_f0.2_s0.json")
    dm = torchreid.data.ImageDataManager(root="reid-data", sources=name, ...)
    df = reid.run_experiment(pcdms_aug.config.loading.load_config("tiny/reid.yaml", ["fractions=[0.2]"]))

Names that need torchreid (seconds to import) are loaded on first use. The low-data split files are a dataset
tool: :mod:`pcdms_aug.data.splits`.
"""
from __future__ import annotations

_LAZY = {
    "with_generated_views": "datasets", "dataset_name": "datasets", "WithGeneratedViews": "datasets",
    "LayoutDataset": "datasets", "read_manifest": "views",
    "REAL": "datasets", "SYNTHETIC": "datasets",
    "evaluate": "evaluation", "TrainConfig": "training", "train_and_evaluate": "training",
    "ExperimentConfig": "experiment", "run_experiment": "experiment",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'reid' has no attribute {name!r}")
