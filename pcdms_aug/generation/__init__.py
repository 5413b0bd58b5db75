"""`pcdms-aug generate`: augmented re-ID datasets, new-pose views of the training identities.

Public API::

    from pcdms_aug.generation import GenerateConfig, generate
    counts = generate(GenerateConfig(dataset=..., weights="tiny", out="gen", views=4, policy="random"))

Output folder: the images (Market-1501 names with sequence digit 9, see :mod:`.names`), ``manifest.csv``,
``plan.csv``, ``generate.json`` and ``shards/`` (see :mod:`.outputs`).

Room ``generation``: the run (``generate``) with its options (``config``), inputs (``inputs``), plan (``plan``),
output folder (``outputs``), the pipeline over crops of any size (``any_size``) and the identity filter
(``identity_filter``); the other generation commands:
`synthesize-pairs` (``pairs``) and `make-refine-inputs` (``refine_inputs``). May import every room below it:
``utils``, ``config``, ``data``, ``testing``, ``models``, ``stages``, ``pipelines``, ``metrics`` and ``training``.
"""
from pcdms_aug.generation.identity_filter import FilterConfig
from pcdms_aug.generation.command import config_from_args, configure, run
from pcdms_aug.generation.config import GenerateConfig
from pcdms_aug.generation.generate import generate, merge_manifest
from pcdms_aug.generation.inputs import weights_fingerprint
from pcdms_aug.generation.names import GENERATED_SEQUENCE, view_name, is_view_name
from pcdms_aug.generation.outputs import MANIFEST, MANIFEST_COLUMNS, PLAN, SETTINGS
from pcdms_aug.generation.plan import POLICIES, PlannedView, TargetPoses, collect_sources, make_plan, read_plan

__all__ = ["FilterConfig", "GenerateConfig", "generate", "merge_manifest", "weights_fingerprint", "configure", "run",
           "config_from_args", "GENERATED_SEQUENCE", "view_name", "is_view_name", "MANIFEST",
           "MANIFEST_COLUMNS", "PLAN", "SETTINGS", "POLICIES", "PlannedView", "TargetPoses", "collect_sources",
           "make_plan", "read_plan"]
