"""Training checkpoints: what a run needs to resume (and nothing a reader must execute), the EMA weights swapped
in for what should use them, a warm start from a saved stage (``train.init_from``), and the export of a stage
folder: OUT/final at the end of a run, or `pcdms-aug export-checkpoint` from a checkpoint while a run goes on
(`pcdms-aug assemble` takes the result like any OUT/final).

A checkpoint folder ``OUT/checkpoint-<step>/`` holds

- ``trainable.safetensors``: the weights of the trainable components only. The frozen ones (CLIP, DINOv2, VAE)
  are rebuilt from the run's config, which names their folders (or seeds): a paper-scale checkpoint does not copy
  gigabytes of weights nobody trains;
- ``ema.safetensors``: the EMA shadow of every trainable parameter, under the parameter's name;
- ``state.pt``: step, optimizer, LR schedule, EMA counters and RNG states, as tensors, numbers, strings, lists
  and dicts only, read with ``torch.load(weights_only=True)``: a file that holds anything else is refused;
- ``config.yaml``: the resolved run config.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from pcdms_aug.training.config import RunConfig, load_run_config
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_write_text, temp_dir_beside

FORMAT = 2  # 1: whole stage in model.safetensors + pickled state.pt (refused: it would run code to read)
FILES = ("trainable.safetensors", "ema.safetensors", "state.pt", "config.yaml")
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _CKPT.match(p.name)) and
             (p / "state.pt").is_file()]
    return sorted(found)


def trainable_state(stage) -> dict[str, torch.Tensor]:
    from pcdms_aug.stages.base import FROZEN

    return {f"{name}.{k}": v.detach().contiguous() for name, module in stage.components().items()
            if name not in FROZEN for k, v in module.state_dict().items()}


def trainable_names(stage) -> list[str]:
    """Names of ``stage.trainable_parameters()``, in the same order."""
    from pcdms_aug.stages.base import FROZEN

    return [f"{name}.{k}" for name, module in stage.components().items() if name not in FROZEN
            for k, _ in module.named_parameters()]


def save_checkpoint(out: Path, step: int, stage, optimizer, lr_scheduler, ema, keep: int, config_text: str) -> Path:
    """Written into a hidden folder and renamed into place in one step; older ones beyond ``keep`` removed."""
    from safetensors.torch import save_file

    final = out / f"checkpoint-{step}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(final)
    try:
        save_file(trainable_state(stage), str(tmp / "trainable.safetensors"))
        names = trainable_names(stage)
        shadow = {n: p.detach().contiguous() for n, p in zip(names, ema.shadow_params)}
        save_file(shadow, str(tmp / "ema.safetensors"))
        ema_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
        torch.save({"format": FORMAT, "step": step, "optimizer": optimizer.state_dict(),
                    "scheduler": lr_scheduler.state_dict(), "ema": ema_meta, "rng": rng_state()}, tmp / "state.pt")
        (tmp / "config.yaml").write_text(config_text)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == 28:
            raise DataError("no space left on device while writing a checkpoint; free space and run the same "
                            "command again (it resumes from the last complete checkpoint)", final) from e
        raise
    for _, old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: Path) -> dict:
    """``state.pt`` of a checkpoint folder, refusing anything but plain data (nothing in it is executed)."""
    from pcdms_aug.utils.torchfile import load

    file = Path(path) / "state.pt"
    state = load(file, what="the training state")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"not a checkpoint of this version (format {FORMAT}); an older run cannot be resumed: "
                        "export its final folder or start the run again", file)
    return state


def check_folder(path: Path) -> None:
    for name in FILES:
        if not (path / name).is_file():
            raise DataError(f"not a training checkpoint: no {name} (expected OUT/checkpoint-<step>/)", path)


def load_checkpoint(path: Path, stage, ema, device="cpu") -> dict:
    """Trainable and EMA weights of ``save_checkpoint``'s folder into ``stage`` and ``ema``; returns the rest of
    its state (step, optimizer, the LR schedule under "scheduler", rng). A tensor missing or of another shape is
    a DataError."""
    from safetensors.torch import load_file

    path = Path(path)
    check_folder(path)
    state = read_state(path)
    weights = _read_tensors(path / "trainable.safetensors")
    mine = trainable_state(stage)
    _same_keys(mine, weights, path / "trainable.safetensors")
    by_component: dict[str, dict] = {}
    for k, v in weights.items():
        comp, rest = k.split(".", 1)
        by_component.setdefault(comp, {})[rest] = v
    for comp, sd in by_component.items():
        getattr(stage, comp).load_state_dict(sd)
    shadow = load_file(str(path / "ema.safetensors"))
    names = trainable_names(stage)
    _same_keys(dict(zip(names, stage.trainable_parameters())), shadow, path / "ema.safetensors")
    ema.load_state_dict({**state["ema"], "shadow_params": [shadow[n] for n in names]})
    ema.to(device)
    stage.to(device)
    return state


def _read_tensors(file: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise DataError(f"cannot read weights ({e.__class__.__name__}: {str(e)[:200]})", file) from None


def _same_keys(mine: dict, theirs: dict, file: Path) -> None:
    missing, extra = sorted(mine.keys() - theirs.keys()), sorted(theirs.keys() - mine.keys())
    wrong = sorted(k for k in mine.keys() & theirs.keys() if tuple(mine[k].shape) != tuple(theirs[k].shape))
    if missing or extra or wrong:
        raise DataError(f"the checkpoint does not fit this config: {len(missing)} tensors missing, {len(extra)} "
                        f"unexpected, {len(wrong)} of another shape (e.g. {', '.join((missing + extra + wrong)[:3])})",
                        file)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": _python_rng()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_rng() -> list:
    version, internal, gauss_next = random.getstate()
    return [version, list(internal), gauss_next]


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ EMA, warm start
@contextlib.contextmanager
def ema_weights(ema, params):
    """``params`` hold the EMA weights of ``ema`` (a diffusers EMAModel) inside the block, their own after."""
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def _widened(mine: torch.Tensor, theirs: torch.Tensor) -> bool:
    """A convolution that takes more input channels than the saved one and is otherwise the same."""
    return (mine.dim() == 4 and theirs.dim() == 4 and mine.shape[1] > theirs.shape[1]
            and mine.shape[:1] + mine.shape[2:] == theirs.shape[:1] + theirs.shape[2:])


def warm_start(stage, name: str, source: str) -> tuple[list[str], list[str]]:
    """Copy every weight of a saved stage into ``stage`` (same architecture, or a DataError naming the
    first mismatching tensors). A convolution given more input channels than the saved one (e.g. a UNet's
    conv_in with a new conditioning image) keeps the saved weights and starts the new channels at zero, as SD's
    inpainting UNet was started from SD: the warm-started model then computes exactly what the saved one did.
    Components the saved stage lacks entirely (e.g. stage 3's discriminator) keep their initialisation.
    Returns the names of the widened tensors and of those new components."""
    from pcdms_aug.pipelines.loading import stage_folder
    from pcdms_aug.stages import stage_class

    folder = stage_folder(source, name)
    saved = stage_class(name).from_pretrained(folder)
    mine, theirs = stage.state_dict(), saved.state_dict()
    fresh = {k for k in mine if k.split(".", 1)[0] not in {n.split(".", 1)[0] for n in theirs}}
    widened = sorted(k for k in mine.keys() & theirs.keys() if _widened(mine[k], theirs[k]))
    bad = sorted(k for k in (mine.keys() - fresh) | theirs.keys()
                 if k not in widened and (k not in mine or k not in theirs or mine[k].shape != theirs[k].shape))
    if bad:
        raise DataError(f"train.init_from: the saved {name} stage does not match this config "
                        f"({len(bad)} tensors differ, e.g. {', '.join(bad[:3])})", folder)
    state = {k: v.to(mine[k].dtype) for k, v in theirs.items()}
    state.update({k: mine[k] for k in fresh})
    for k in widened:
        w = torch.zeros_like(mine[k])
        w[:, :theirs[k].shape[1]] = theirs[k]
        state[k] = w
    stage.load_state_dict(state)
    return widened, sorted({k.split(".", 1)[0] for k in fresh})


# ------------------------------------------------------------------------------------------ export
def export_final(stage, ema, params, final: Path, cfg: RunConfig, step: int) -> None:
    """OUT/final in our format, with the EMA weights (what inference should use)."""
    with ema_weights(ema, params):
        stage.save_pretrained(final)
        atomic_write_text(final / "training.json", json.dumps({"steps": step, "stage": cfg.stage,
                                                              "ema_decay": cfg.train.ema_decay}, indent=2))


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """A stage folder (as OUT/final: EMA weights, our format) from ``OUT/checkpoint-<step>/`` of a run, so an
    intermediate step can be assembled and measured while the run goes on."""
    from diffusers.training_utils import EMAModel

    from pcdms_aug.stages import build_stage

    ckpt, out = Path(checkpoint), Path(out)
    check_folder(ckpt)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError("export target exists and is not an empty folder", out)
    cfg = load_run_config(ckpt / "config.yaml")
    stage = build_stage(cfg.stage, cfg.model, seed=cfg.train.seed)
    if cfg.train.init_from:
        warm_start(stage, cfg.stage, cfg.train.init_from)
    params = list(stage.trainable_parameters())
    ema = EMAModel(params, decay=cfg.train.ema_decay)
    state = load_checkpoint(ckpt, stage, ema)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_final(stage, ema, params, out, cfg, int(state["step"]))
    return out


def configure(parser):
    parser.add_argument("checkpoint", help="OUT/checkpoint-<step>/ of `pcdms-aug train`")
    parser.add_argument("--out", required=True, help="new stage folder (refused if it exists and is not empty)")


def run(args):
    from pcdms_aug.utils.paths import check_new_dir

    check_new_dir(args.out, inputs=[("the checkpoint", args.checkpoint)])
    print(f"[export-checkpoint] wrote {export_checkpoint(args.checkpoint, args.out)}")
    return 0
