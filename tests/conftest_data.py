"""Where the real third-party files live, and a skip marker for machines without them.

``PCDMS_REAL_MARKET`` names the folder of the real Market-1501 pose CSVs (``market-annotation-train.csv``,
``market-annotation-test.csv``, ``market-pairs-test.csv``); without it the tests look beside the repository
(``../shared/data/market1501``, where this project's machines keep them) and skip, saying so, when absent.
"""
import os
from pathlib import Path

import pytest

REAL = Path(os.environ.get("PCDMS_REAL_MARKET")
            or Path(__file__).resolve().parents[2] / "shared" / "data" / "market1501")
real_or_skip = pytest.mark.skipif(not (REAL / "market-annotation-train.csv").is_file(),
                                  reason=f"real Market-1501 annotations not found at {REAL} "
                                         "(set PCDMS_REAL_MARKET to their folder)")
