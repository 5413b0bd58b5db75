"""`pcdms-aug generate`: augmented re-ID datasets, new-pose views of the training identities.

Public API::

    from pcdms_aug.augment import GenerateConfig, generate
    counts = generate(GenerateConfig(dataset=..., weights="tiny", out="gen", views=4, policy="random"))

Output folder: the images (Market-1501 names with sequence digit 9, see :mod:`.names`), ``manifest.csv``,
``plan.csv``, ``generate.json`` and ``shards/`` (see :mod:`.outputs`).
"""
from ..consistency import FilterConfig
from .command import config_from_args, configure, run
from .generate import GenerateConfig, generate, merge_manifest, weights_fingerprint
from .names import GENERATED_SEQUENCE, view_name, is_view_name
from .outputs import MANIFEST, MANIFEST_COLUMNS, PLAN, SETTINGS
from .plan import POLICIES, PlannedView, TargetPoses, collect_sources, make_plan, read_plan

__all__ = ["FilterConfig", "GenerateConfig", "generate", "merge_manifest", "weights_fingerprint", "configure", "run",
           "config_from_args", "GENERATED_SEQUENCE", "view_name", "is_view_name", "MANIFEST",
           "MANIFEST_COLUMNS", "PLAN", "SETTINGS", "POLICIES", "PlannedView", "TargetPoses", "collect_sources",
           "make_plan", "read_plan"]
