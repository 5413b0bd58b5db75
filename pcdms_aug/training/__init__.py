"""Room ``training``: `pcdms-aug train`. The run config (``config``), the loop for the three stages on one
process or many (``loop``), this rank's micro-batches of the training pairs (``data``), checkpoints with EMA,
warm start and export (``checkpoints``, also `pcdms-aug export-checkpoint`).

May import every room below it: ``utils``, ``config``, ``data``, ``testing``, ``models``, ``stages``,
``pipelines`` and ``metrics``.
"""
