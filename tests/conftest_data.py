"""Where the real third-party files live (../shared/data), and a skip marker for machines without them."""
from pathlib import Path

import pytest

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "market1501"
real_or_skip = pytest.mark.skipif(not (REAL / "market-annotation-train.csv").is_file(),
                                  reason=f"real Market-1501 annotations not found at {REAL}")
