"""`pcdms-aug import-official`: the official PCDMs checkpoints (tencent-ailab/PCDMs) as our stage folders.

    pcdms-aug import-official --stage 2 ckpts/stage2/mp_rank_00_model_states.pt runs/official/inpaint \
        --set weights.sd21_base=/data/sd21 weights.dinov2=/data/dinov2-giant weights.clip_vit_h=/data/clip-vit-h

Inputs: DeepSpeed ``mp_rank_00_model_states.pt`` files (weights under ``"module"``; stage 1: the bare prior keys;
stages 2 and 3: ``unet.``, ``image_proj_model_p.`` and, in stage 2, ``pose_proj.``), and the released
stage-2-only ``PCDMs_ckpt.pt`` (``unet.``, ``pose_proj.``, ``image_proj_model.``; its UNet has no class
embedding and its attention tokens hold no global embedding: it is imported with ``target_embed: false``).
A bare state dict (e.g. after DeepSpeed's ``zero_to_fp32.py``) is read too.

Every upstream tensor goes to exactly one of ours through an explicit name map (:data:`LAYOUTS`), with its
shape checked; an upstream key without a counterpart, a tensor of ours that the file lacks and a shape mismatch
are each a DataError naming the key. The output is a folder of :meth:`Stage.save_pretrained`; its frozen parts
(CLIP, DINOv2, VAE) and everything else come from ``--config`` (default ``paper/<stage>.yaml``), with the
official conventions switched on where ours differ:

- stage 1: the pose input is the 36 coordinates, a missing joint at -1 (``prior.pose_dim: 36``; DWPose's
  value: the official pose files were never released);
- stage 2: pose images in [-1, 1] (``pose_encoder.signed_input``), the 3x3 output convolution of diffusers'
  ``ControlNetConditioningEmbedding``;
- stages 2 and 3: DINOv2 reads CLIP-normalised images (``dino.normalize: clip``), as upstream's
  ``CLIPImageProcessor`` fed it.

What does not carry over (said here so that nobody expects bit-equal images): upstream trained the dropped
conditions of the DeepSpeed stages as the encoders' output for an all-zero input image, ours are zero features,
so classifier-free guidance of an imported DeepSpeed stage 2 or 3 contrasts with a slightly different null;
upstream centre-cropped to 224 where we resize the whole image; the released ``PCDMs_ckpt.pt`` demo's null is
the projection of zero features, as ours.
"""
from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Callable, Sequence

import torch

from pcdms_aug.config.loading import load_config, resolve_config_path
from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import file_sha256

log = logging.getLogger(__name__)

STAGE_NAMES = {"1": "prior", "2": "inpaint", "3": "refine", "prior": "prior", "inpaint": "inpaint",
               "refine": "refine"}


# ------------------------------------------------------------------------------------------------ name maps
class Rename:
    """A bidirectional map between one upstream module's keys and one of ours: regex rules on the key's
    leading module path; keys that match no rule have no counterpart."""

    def __init__(self, rules: Sequence[tuple[str, str]] = ()):
        self.rules = list(rules)

    @staticmethod
    def _apply(key: str, rules) -> str | None:
        if not rules:
            return key
        for pattern, make in rules:
            m = re.fullmatch(pattern, key)
            if m:
                return make(m)
        return None

    def to_ours(self, key: str) -> str | None:
        return self._apply(key, [(a, b) for a, b, _, _ in self.rules])

    def to_upstream(self, key: str) -> str | None:
        return self._apply(key, [(c, d) for _, _, c, d in self.rules])


def _rule(up: str, ours: str, up_index: Callable[[int], int] | None = None,
          our_index: Callable[[int], int] | None = None):
    """``up``/``ours``: module paths with an optional ``{i}``; ``up_index``/``our_index`` convert the index."""
    def pattern(path):
        return re.escape(path).replace(r"\{i\}", r"(\d+)") + r"\.(.+)"

    def maker(target, convert):
        def make(m):
            if "{i}" in target:
                return target.format(i=convert(int(m.group(1)))) + "." + m.group(2)
            return target + "." + m.group(m.lastindex)
        return make

    return (pattern(up), maker(ours, up_index or (lambda i: i)), pattern(ours), maker(up, our_index or (lambda i: i)))


# diffusers' ControlNetConditioningEmbedding (upstream ``pose_proj``) -> our PoseEncoder: our ``body`` Sequential
# interleaves SiLUs, so upstream's ``blocks.{j}`` is ``body.{2j + 2}``.
POSE_PROJ = Rename([
    _rule("conv_in", "body.0"),
    _rule("blocks.{i}", "body.{i}", lambda j: 2 * j + 2,
          lambda b: (b - 2) // 2 if b >= 2 and b % 2 == 0 else -1),
    _rule("conv_out", "out"),
])
# Upstream's image projection has Dropout slots: Linear(0), GELU(1), Dropout(2), LayerNorm(3), Linear(4), Dropout(5).
IMAGE_PROJ = Rename([
    _rule("net.0", "net.0"),
    _rule("net.3", "net.2"),
    _rule("net.4", "net.3"),
])
SAME = Rename()  # diffusers' own modules (the UNets) and the prior, whose names we kept

# layout -> [(upstream key prefix, our component, name map)]
LAYOUTS = {
    "prior": [("", "prior", SAME)],
    "inpaint": [("unet.", "unet", SAME), ("pose_proj.", "pose_encoder", POSE_PROJ),
                ("image_proj_model_p.", "image_proj", IMAGE_PROJ)],
    "inpaint-released": [("unet.", "unet", SAME), ("pose_proj.", "pose_encoder", POSE_PROJ),
                         ("image_proj_model.", "image_proj", IMAGE_PROJ)],
    "refine": [("unet.", "unet", SAME), ("image_proj_model_p.", "image_proj", IMAGE_PROJ)],
}
STAGE_OF_LAYOUT = {"prior": "prior", "inpaint": "inpaint", "inpaint-released": "inpaint", "refine": "refine"}


# ------------------------------------------------------------------------------------------------ reading
def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict of an official checkpoint (memory-mapped where the format allows: a 3.5 GB UNet
    is not copied into memory to be renamed). Objects pickled beside the weights (DeepSpeed's training
    arguments) are read as inert placeholders: nothing in the file runs."""
    from pcdms_aug.utils.torchfile import load, without_wrapper_prefix

    path = Path(path)
    obj = load(path, inert_objects=True, mmap=True)
    if isinstance(obj, dict) and isinstance(obj.get("module"), dict):
        state = obj["module"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"no weights found: expected a DeepSpeed file (weights under 'module') or a state dict, "
                        f"got {keys}", path)
    if not state:
        raise DataError("the checkpoint holds no weights ('module' is empty)", path)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(f"entry {bad[0]!r} is not a tensor ({type(state[bad[0]]).__name__})", path)
    return without_wrapper_prefix(state)


def detect_layout(stage: str, state: dict, path=None) -> str:
    """Which upstream layout a checkpoint of ``stage`` has; a file of another stage is named as such."""
    prefixes = {k.split(".", 1)[0] for k in state}
    wrapped = {"unet", "pose_proj", "image_proj_model", "image_proj_model_p"} & prefixes
    if stage == "prior":
        if wrapped:
            raise DataError(f"this is not a stage-1 (prior) checkpoint: it holds {', '.join(sorted(wrapped))} "
                            "weights (a stage-2 or stage-3 file?)", path)
        return "prior"
    if "unet" not in prefixes:
        hint = " (a stage-1 prior file?)" if "transformer_blocks" in prefixes else ""
        raise DataError(f"no unet.* weights: not a stage-{'2' if stage == 'inpaint' else '3'} checkpoint{hint}", path)
    if stage == "refine":
        if "pose_proj" in prefixes:
            raise DataError("this checkpoint has pose_proj.* weights: a stage-2 (inpainting) file, not stage 3", path)
        return "refine"
    if "image_proj_model" in prefixes and "image_proj_model_p" not in prefixes:
        return "inpaint-released"
    if "pose_proj" not in prefixes:
        raise DataError("this checkpoint has no pose_proj.* weights: a stage-3 (refining) file, not stage 2", path)
    return "inpaint"


# ------------------------------------------------------------------------------------------------ mapping
def map_state(layout: str, state: dict[str, torch.Tensor], targets: dict[str, dict[str, torch.Tensor]],
              path=None) -> dict[str, dict[str, torch.Tensor]]:
    """Upstream ``state`` -> {component: {our key: tensor}} for the components and shapes in ``targets``
    ({component: our state dict}). Every upstream key must land on one of ours, with the same shape, and every
    one of ours must be filled."""
    parts = sorted(LAYOUTS[layout], key=lambda p: -len(p[0]))  # the longest prefix wins
    out: dict[str, dict[str, torch.Tensor]] = {comp: {} for _, comp, _ in parts}
    source: dict[tuple[str, str], str] = {}
    for key, tensor in state.items():
        part = next((p for p in parts if key.startswith(p[0])), None)
        if part is None:
            raise DataError(f"key {key!r} has no counterpart in our {STAGE_OF_LAYOUT[layout]} stage "
                            f"(expected prefixes: {', '.join(p[0] for p in parts)})", path)
        prefix, comp, rename = part
        ours = rename.to_ours(key[len(prefix):])
        if ours is None or ours not in targets[comp]:
            raise DataError(f"key {key!r} has no counterpart in our {STAGE_OF_LAYOUT[layout]} stage "
                            f"(component {comp!r}{', as ' + repr(ours) if ours else ''})", path)
        want = targets[comp][ours].shape
        if tuple(tensor.shape) != tuple(want):
            hint = (" (an empty tensor: a ZeRO-3 partitioned checkpoint; consolidate it with DeepSpeed's "
                    "zero_to_fp32.py first)" if tensor.numel() == 0 else
                    " (the --config's architecture differs from the checkpoint's)")
            raise DataError(f"key {key!r}: shape {tuple(tensor.shape)} does not fit {comp}.{ours} "
                            f"{tuple(want)}{hint}", path)
        if (comp, ours) in source:
            raise DataError(f"keys {source[(comp, ours)]!r} and {key!r} both map to {comp}.{ours}", path)
        source[(comp, ours)] = key
        out[comp][ours] = tensor
    for comp, wanted in targets.items():
        missing = [k for k in wanted if k not in out.get(comp, {})]
        if missing:
            prefix, _, rename = next(p for p in parts if p[1] == comp)
            up = rename.to_upstream(missing[0])
            raise DataError(f"the checkpoint lacks {comp}.{missing[0]} (upstream key {prefix + str(up)!r})"
                            + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""), path)
    return out


def official_config(stage: str, layout: str, config: str | Path | dict | None, overrides: Sequence[str] = ()) -> dict:
    """The stage config of an imported checkpoint: ``config`` (default paper/<stage>.yaml) with the official
    conventions switched on (see the module docstring)."""
    if config is None:
        config = f"paper/{stage}.yaml"
    if isinstance(config, dict):
        from pcdms_aug.config.loading import apply_overrides

        cfg = apply_overrides(copy.deepcopy(config), list(overrides))
    else:
        cfg = load_config(resolve_config_path(config), list(overrides))
    if cfg.get("stage") not in (None, stage):
        raise DataError(f"--config is a {cfg['stage']} stage config, not {stage}")
    if stage == "prior":
        cfg["prior"] = {**cfg["prior"], "pose_dim": 36, "pose_missing": -1.0, "pretrained": None}
    if stage in ("inpaint", "refine"):
        cfg["dino"] = {**cfg["dino"], "normalize": "clip"}
    if stage == "inpaint":
        cfg["pose_encoder"] = {**(cfg.get("pose_encoder") or {}), "signed_input": True, "out_kernel": 3}
        cfg["target_embed"] = layout != "inpaint-released"
        if layout == "inpaint-released":
            cfg["drop"] = {k: v for k, v in (cfg.get("drop") or {}).items() if k != "target_embed"}
    return cfg


def import_official(checkpoint: str | Path, out: str | Path, stage: str | int,
                    config: str | Path | dict | None = None, overrides: Sequence[str] = ()):
    """Convert an official checkpoint into a stage folder at ``out``; returns the loaded :class:`Stage`."""
    from pcdms_aug.stages import stage_class

    name = STAGE_NAMES.get(str(stage))
    if name is None:
        raise DataError(f"--stage must be 1, 2 or 3 (prior, inpaint, refine), got {stage!r}")
    checkpoint = Path(checkpoint)
    state = read_official(checkpoint)
    layout = detect_layout(name, state, checkpoint)
    cfg = official_config(name, layout, config, overrides)
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values()})
    cfg["origin"] = {"file": checkpoint.name, "sha256": file_sha256(checkpoint), "layout": layout,
                     "dtype": dtypes, "note": "imported by pcdms-aug import-official"}
    log.info("building the %s stage (%s layout)", name, layout)
    stage_obj = stage_class(name).from_config(cfg, seed=0, load_weights=False)
    comps = {comp for _, comp, _ in LAYOUTS[layout]}
    targets = {c: stage_obj.components()[c].state_dict() for c in comps}
    mapped = map_state(layout, state, targets, checkpoint)
    with torch.no_grad():
        for comp, tensors in mapped.items():
            own = targets[comp]
            for key, tensor in tensors.items():
                own[key].copy_(tensor.to(own[key].dtype))  # state_dict() tensors share storage with the module
    others = [c for c in stage_obj.components() if c not in comps and c not in ("clip", "dino", "codec")]
    if others:  # a trainable part the layout does not fill would be saved at random
        raise DataError(f"our {name} stage has trainable parts the checkpoint cannot fill: {others}", checkpoint)
    stage_obj.save_pretrained(out)
    log.info("wrote %s (%d tensors from %s)", out, len(state), checkpoint.name)
    return stage_obj.eval()


# ------------------------------------------------------------------------------------------------ CLI
def configure(parser) -> None:
    parser.add_argument("--stage", required=True, choices=sorted(STAGE_NAMES),
                        help="1 (prior), 2 (inpainting: DeepSpeed or the released PCDMs_ckpt.pt), 3 (refining)")
    parser.add_argument("checkpoint", help="mp_rank_00_model_states.pt, PCDMs_ckpt.pt or a bare state dict")
    parser.add_argument("out", help="stage folder to write (config.json, stage.yaml, <component>.safetensors)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set weights.sd21_base=/data/sd21 weights.dinov2=/data/dinov2")
    parser.add_argument("--config", help="stage YAML for everything the checkpoint does not hold "
                                         "(default: paper/<stage>.yaml)")


def run(args) -> int:
    from pcdms_aug.utils.paths import check_new_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_new_dir(args.out, "OUT", inputs=[("the checkpoint", args.checkpoint), ("the config", args.config)])
    import_official(args.checkpoint, args.out, args.stage, args.config, args.overrides)
    print(f"wrote {args.out}")
    return 0
