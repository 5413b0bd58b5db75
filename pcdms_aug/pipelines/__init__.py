"""Room ``pipelines``: the stages in order, used as a diffusers pipeline is (``pipeline``), its config and the
stages' order (``pipeline_config``), folders read and written (``loading``), where ``--weights`` points
(``weights_path``, no library imported), a call's checks (``call_inputs``), images and poses in and out
(``image_processing``); the commands that make pipeline folders (``assemble``, ``import_official``).

May import ``utils``, ``config``, ``data``, ``testing``, ``models`` and ``stages``.
"""
