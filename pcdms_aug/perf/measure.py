"""What the checks read off a run: training samples/s from the loop's step log, peak device memory, disk use."""
from __future__ import annotations

import logging
import re
from pathlib import Path


class StepClock(logging.Handler):
    """Times of the training loop's ``step N`` log records: samples/s from the first logged step on (step 1
    pays for lazy initialisation, autotuning and allocator growth)."""

    PATTERN = re.compile(r"^step (\d+) loss")

    def __init__(self):
        super().__init__()
        self.steps: list[tuple[int, float]] = []

    def emit(self, record):
        m = self.PATTERN.match(record.getMessage())
        if m:
            self.steps.append((int(m.group(1)), record.created))

    def rate(self, global_batch: int) -> float | None:
        if len(self.steps) < 2:
            return None
        (s0, t0), (s1, t1) = self.steps[0], self.steps[-1]
        return (s1 - s0) * global_batch / max(t1 - t0, 1e-9)


def reset_peak(device: str) -> None:
    """Start a stage's peak from what is still allocated, after the previous stage's objects are gone."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: str) -> tuple[float, str]:
    import torch

    from pcdms_aug.perf.bench import peak_memory_mb

    return peak_memory_mb(torch.device(device))


def folder_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e9
