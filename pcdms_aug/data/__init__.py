"""Room ``data``: datasets and poses on disk and in memory. Market-1501 layout and names (``market``), every
torchreid layout (``layouts``), poses and the annotation CSV (``pose``), annotation by ViTPose (``vitpose``,
``annotate``) and its agreement with a reference (``pose_agreement``), training pairs as a torch Dataset
(``pairs``), low-data splits (``splits``), the synthetic Market-1501 (``synthetic``, drawn by ``people`` in poses
of ``posegen``; other layouts and sizes: ``synthetic_layouts``), the dataset doctor (``doctor``), pictures
(``viz``), the stage-3 inputs folder format (``refine_inputs``).

May import ``utils`` and ``config``.
"""
