"""Room ``training``: `pcdms-aug train`. The run config (``config``), the loop for the three stages on one
process or many (``loop``), this rank's micro-batches of the training pairs (``data``), checkpoints with EMA,
warm start and export (``checkpoints``, also `pcdms-aug export-checkpoint`), the frozen networks' outputs
cached once (``feature_cache`` format, ``feature_build``, `pcdms-aug cache-features`: ``cache_features``), the
step's memory (``memory``: gradient checkpointing where needed) and speed settings (``speed``).

May import every room below it: ``utils``, ``config``, ``data``, ``testing``, ``models``, ``stages``,
``pipelines`` and ``metrics``.
"""
