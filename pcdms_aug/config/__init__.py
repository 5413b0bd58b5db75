"""Room ``config``: how configuration is read. YAML with ``_base_`` and ``key=value`` overrides into typed
dataclasses (``loading``), the stage configs' types and their defaults (``schema``), command-line flags declared
on dataclass fields (``options``).

May import ``utils``.
"""
