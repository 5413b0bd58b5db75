"""Room ``cli``: the `pcdms-aug` command table (``main``). It names each command's module as a string and imports
it only to run it, so it has no import arrow to the rooms it runs.

May import ``utils`` and ``config``.
"""
