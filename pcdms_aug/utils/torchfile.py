"""The one way this package reads a PyTorch pickle file (``.pt``, ``.pth``, ``.pth.tar``): nothing in it runs.

Every read is ``torch.load(weights_only=True)``: tensors, numbers, strings, lists, dicts and the numpy scalars
torchreid stores beside its weights. Files from elsewhere (upstream DeepSpeed checkpoints, re-ID checkpoints) may
also pickle objects of their own (``argparse.Namespace`` of the training arguments, DeepSpeed classes); with
``inert_objects=True`` each such class is read as an empty placeholder whose constructor and ``__setstate__`` do
nothing, so the tensors can be taken and the rest is never executed. Globals that would run code (``os``,
``subprocess``, ``builtins`` and the like) stay blocked by torch itself: such a file is refused.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from pcdms_aug.utils.errors import DataError


def _numpy_scalars() -> list:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [np.dtype, core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray,
            *{type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool", "uint8")}]


def _placeholder(qualified: str) -> type:
    module, name = qualified.rsplit(".", 1)
    return type(name, (), {"__module__": module, "__init__": lambda self, *a, **k: None,
                           "__setstate__": lambda self, state: None,
                           "__repr__": lambda self: f"<unread {qualified}>"})


def load(path: str | Path, inert_objects: bool = False, mmap: bool = False, what: str = "the checkpoint"):
    """The object in ``path``; a DataError naming the file when it is missing, damaged or would run code."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what}: file not found", path)
    allowed = _numpy_scalars()
    try:
        if inert_objects:
            known = {f"{c.__module__}.{c.__name__}" for c in allowed}
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            allowed += [_placeholder(g) for g in unsafe if g not in known and "." in g]
        with torch.serialization.safe_globals(allowed):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as e:
                if not mmap or ("mmap" not in str(e) and "zipfile" not in str(e)):
                    raise
                # the legacy (non-zip) format cannot be memory-mapped
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "global" in ln]
        if lines:
            raise DataError(f"refused: {what} holds Python objects that reading would execute or that are not "
                            f"plain data [{lines[0][:200]}]", path) from None
        why = next((ln.strip() for ln in reversed(str(e).splitlines()) if ln.strip() and "documentation" not in ln),
                   "")
        raise DataError(f"cannot read {what} (not a PyTorch file, or damaged): {why[:200]}", path) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DataError(f"cannot read {what} (not a PyTorch file, or damaged): {first[:300]}", path) from None


def state_dict_of(obj, path: str | Path, keys=("state_dict", "module")) -> dict:
    """The state dict inside a loaded checkpoint (under one of ``keys`` or the object itself), ``module.``
    (DataParallel / DDP) prefixes removed."""
    state = obj
    if isinstance(obj, dict):
        state = next((obj[k] for k in keys if isinstance(obj.get(k), dict)), obj)
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise DataError("the file holds no state dict (tensors by name)", path)
    return without_wrapper_prefix(state)


def without_wrapper_prefix(state: dict) -> dict:
    """``state`` without the ``module.`` prefix a DataParallel / DDP / DeepSpeed wrapper puts on every key (only
    when every key has it: a model may have a submodule of that name)."""
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state
