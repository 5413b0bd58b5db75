"""File names of generated views: Market-1501-style names that no real image can have.

``<pid>_c<cam>s9_<NNNNNN>_<VV>.jpg``: the identity and the 1-based camera of the source image (torchreid's
``([-\\d]+)_c(\\d)`` reads them; for a camera below 10 :func:`pcdms_aug.data.market.parse_name` too), sequence digit 9
(real Market-1501 and the synthetic set only use s1..s6, and no other dataset's names have this shape, so a
generated name never equals a real one), the source image's ordinal among its identity's sources (sorted names,
0-based) as the frame, and the view number of that source as the box. A source therefore holds at most 100 views.
Cameras go up to 99 (MSMT17 has 15).
"""
from __future__ import annotations

import re

from pcdms_aug.utils.errors import DataError

GENERATED_SEQUENCE = 9
MAX_VIEWS_PER_SOURCE = 100
MAX_SOURCES_PER_ID = 1_000_000
MAX_CAMERA = 99
_VIEW = re.compile(rf"^\d{{4,}}_c\d{{1,2}}s{GENERATED_SEQUENCE}_\d{{6}}_\d{{2}}\.[A-Za-z]+$")


def view_name(pid: int, camid: int, source_ordinal: int, view: int, ext: str = "jpg") -> str:
    if not 0 <= view < MAX_VIEWS_PER_SOURCE:
        raise DataError(f"view {view} of one source image: a generated name holds at most "
                        f"{MAX_VIEWS_PER_SOURCE} views per source (2-digit box field); ask for fewer views")
    if not 0 <= source_ordinal < MAX_SOURCES_PER_ID:
        raise DataError(f"identity {pid:04d} has more than {MAX_SOURCES_PER_ID} source images")
    if not 1 <= camid <= MAX_CAMERA:
        raise DataError(f"camera {camid} does not fit a generated name's camera field (1 to {MAX_CAMERA})")
    if pid < 0:
        raise DataError(f"identity {pid} is junk: generated views belong to training identities")
    return f"{pid:04d}_c{camid}s{GENERATED_SEQUENCE}_{source_ordinal:06d}_{view:02d}.{ext}"


def is_view_name(name: str) -> bool:
    """True for a name made by :func:`view_name`."""
    return _VIEW.match(name) is not None
