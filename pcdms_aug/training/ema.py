"""The EMA weights of a training run, swapped in for what should use them (previews, exported stages)."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def ema_weights(ema, params):
    """``params`` hold the EMA weights of ``ema`` (a diffusers EMAModel) inside the block, their own after."""
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)
