"""Room ``testing``: helpers that build local test inputs (random-weight model folders in the layouts of the
downloaded ones), for tests and GPU checks.

May import ``utils``, ``config`` and ``data``.
"""
