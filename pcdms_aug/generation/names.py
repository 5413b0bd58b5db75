"""File names of generated views: Market-1501 names that no real image can have.

``<pid>_c<cam>s9_<NNNNNN>_<VV>.jpg``: the identity and camera of the source image (torchreid's
``([-\\d]+)_c(\\d)`` and :func:`pcdms_aug.data.market.parse_name` read them), sequence digit 9 (real Market-1501
and the synthetic set only use s1..s6, so a generated name never equals a real one), the source image's
ordinal among its identity's sources (sorted names, 0-based) as the frame, and the view number of that
source as the box. A source therefore holds at most 100 views.
"""
from __future__ import annotations

from pcdms_aug.data.market import MarketName, parse_name
from pcdms_aug.utils.errors import DataError

GENERATED_SEQUENCE = 9
MAX_VIEWS_PER_SOURCE = 100
MAX_SOURCES_PER_ID = 1_000_000


def view_name(pid: int, camid: int, source_ordinal: int, view: int, ext: str = "jpg") -> str:
    if not 0 <= view < MAX_VIEWS_PER_SOURCE:
        raise DataError(f"view {view} of one source image: a generated name holds at most "
                        f"{MAX_VIEWS_PER_SOURCE} views per source (2-digit box field); ask for fewer views")
    if not 0 <= source_ordinal < MAX_SOURCES_PER_ID:
        raise DataError(f"identity {pid:04d} has more than {MAX_SOURCES_PER_ID} source images")
    if not 1 <= camid <= 9:
        raise DataError(f"camera {camid} does not fit Market-1501's one-digit camera field")
    return str(MarketName(pid, camid, GENERATED_SEQUENCE, source_ordinal, view, ext))


def is_view_name(name: str) -> bool:
    """True for a name made by :func:`view_name` (sequence digit 9)."""
    return parse_name(name).sequence == GENERATED_SEQUENCE
