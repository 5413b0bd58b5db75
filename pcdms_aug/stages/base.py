"""What every stage is made of: named components, trainable parameters, a loss, a sampler, save and load.

Saved format (one folder per stage, diffusers-style): ``config.json`` (the stage's resolved config, which is
what loads), ``stage.yaml`` (the same as YAML, to read) and one ``<component>.safetensors`` per component.
Frozen components loaded from a local pretrained folder are not copied (they are read from that folder again);
randomly initialised ones are saved like the rest. In a pipeline folder a frozen file identical to one another
stage already wrote is stored once: the later stage holds ``<component>.ref.json`` =
``{"same_as": "<stage>/<component>.safetensors", "sha256": "<hex of that file>"}`` instead (:mod:`.folder`).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pcdms_aug.utils.errors import DataError
from pcdms_aug.utils.io import atomic_dir
from pcdms_aug.stages.folder import (FROZEN, FolderOnly, check_shapes, class_of, component_file, same_weights,
                                    store_once)

MAX_PARAMETERS = 6e9  # per stage; the paper's largest (inpaint, with its frozen encoders) holds 2.7 billion


class Stage(nn.Module):
    name = ""
    FROZEN_IMAGE_KEYS = ("source_image", "target_image")
    CONDITION_KEYS = ("source_pose_image", "target_pose_image", "source_pose", "target_pose")  # those it reads

    def __init__(self, cfg: dict, cache: dict | None = None, load_weights: bool = True):
        """``cfg``: the config as given (what :meth:`save_pretrained` writes); the stage reads ``self.config``,
        its typed form with the defaults of :mod:`pcdms_aug.config.schema`. ``cache``: frozen components
        already built by other stages (shared when equal); ``load_weights=False``: architecture only, weights
        to be loaded from a saved stage."""
        from pcdms_aug.config.schema import stage_config

        super().__init__()
        self.cfg = cfg
        self.config = stage_config(cfg, self.name, f"{self.name} stage config")
        self.image_size = tuple(self.config.image_size)
        self._cache = cache
        self._load_weights = load_weights

    def frozen(self, name: str) -> nn.Module:
        from pcdms_aug.models.encoders import build_frozen

        return build_frozen(name, getattr(self.config, name), self.config, self._cache)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, cfg: dict, seed: int = 0, cache: dict | None = None,
                    load_weights: bool = True, _on_meta: bool = False) -> "Stage":
        """Trainable parts random (``seed``) or from SD-2.1-base; frozen parts as their config says."""
        cfg = copy.deepcopy(dict(cfg))
        cfg.pop("stage", None)
        if not _on_meta:
            cls.on_meta(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            stage = cls(cfg, cache=cache, load_weights=load_weights)
        del stage._cache
        if stage.config.gradient_checkpointing is True:  # "auto": the training loop decides (training/memory.py)
            stage.enable_gradient_checkpointing()
        for name in FROZEN:
            part = getattr(stage, name, None)
            if part is not None:
                part.requires_grad_(False).eval()
        return stage

    @classmethod
    def on_meta(cls, cfg: dict, where: str | Path | None = None) -> "Stage | None":
        """The stage ``cfg`` describes, built on the meta device (shapes, no memory): refused when it holds
        more than MAX_PARAMETERS, or when the config does not build at all. None when parts come from
        pretrained folders (their size is the folders')."""
        from pcdms_aug.config.schema import stage_config
        from pcdms_aug.models.encoders import pretrained_folder

        where = where or f"{cls.name} stage config"
        try:
            typed = stage_config(cfg, cls.name, str(where))
            for name in ("clip", "dino", "codec", "unet", "prior"):
                part = getattr(typed, name, None)
                if part is not None and getattr(part, "pretrained", None) \
                        and pretrained_folder(part, typed, "vae" if name == "codec" else name) is not None:
                    return None
            with torch.device("meta"):
                stage = cls(copy.deepcopy(cfg), cache={}, load_weights=False)
        except DataError as e:
            if e.path is not None and str(where).startswith(e.path):
                raise
            raise DataError(str(e), where) from None
        except Exception as e:  # noqa: BLE001 - whatever the libraries raise, the config is the cause
            raise DataError(f"the config does not build the {cls.name} stage ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]})", where) from None
        n = sum(p.numel() for p in stage.parameters())
        if n > MAX_PARAMETERS:
            raise DataError(f"the config asks for {n / 1e9:.1f} billion parameters (at most {MAX_PARAMETERS / 1e9:g} "
                            "billion per stage, over twice the paper's largest)", where)
        return stage

    def enable_gradient_checkpointing(self) -> list[str]:
        """Trade compute for memory in training: the trainable denoisers (UNet, prior transformer) recompute
        their blocks' activations in the backward pass instead of keeping them (about 1.3x the step time;
        the paper UNets' activations at batch 8, 512x512 canvas, drop from tens of GB to a few). Stage config
        ``gradient_checkpointing: true`` turns it on at construction; no effect without gradients. Returns the
        components it applies to."""
        done = []
        for name, module in self.components().items():
            if name not in FROZEN and hasattr(module, "enable_gradient_checkpointing"):
                module.enable_gradient_checkpointing()
                done.append(name)
        return done

    def components(self) -> dict[str, nn.Module]:
        return dict(self.named_children())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, m in self.components().items() if n not in FROZEN for p in m.parameters()]

    def train(self, mode: bool = True):
        super().train(mode)
        for name in FROZEN:  # frozen encoders stay in eval mode (no dropout) while the rest trains
            part = getattr(self, name, None)
            if part is not None:
                part.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    def resize(self, images: torch.Tensor, size=None, mode="bicubic") -> torch.Tensor:
        size = tuple(size or self.image_size)
        if tuple(images.shape[-2:]) == size:
            return images
        if mode == "area":
            return F.interpolate(images, size=size, mode="area")
        return F.interpolate(images, size=size, mode=mode, align_corners=False).clamp(-1, 1)

    # ---------------------------------------------------------------- save / load
    def _from_folder(self, name: str) -> bool:
        """Whether a frozen component is read from a local pretrained folder (then it is not saved)."""
        from pcdms_aug.models.encoders import pretrained_folder

        part = getattr(self.config, name)
        if part is None or (name == "codec" and part.type != "vae"):
            return False
        return pretrained_folder(part, self.config, "vae" if name == "codec" else name) is not None

    def _saved_components(self) -> dict[str, nn.Module]:
        return {n: m for n, m in self.components().items()
                if not (n in FROZEN and self._from_folder(n)) and any(True for _ in m.state_dict())}

    def save_pretrained(self, directory: str | Path, trainable_dtype: torch.dtype | None = None,
                        shared: dict | None = None) -> None:
        """``directory``: ``config.json`` (what loads), ``stage.yaml`` (the same, to read) and one
        ``<component>.safetensors`` each; written beside and renamed into place. ``trainable_dtype`` (e.g.
        fp16, for the shipped tiny weights) stores the trained components in that type; frozen ones keep
        theirs, so stages that share a random encoder still share it bit for bit. Loading casts back.
        ``shared`` (a pipeline's save, stage folders side by side): ``{(component, sha256): "<stage
        folder>/<component>.safetensors"}`` of the frozen files other stages wrote; a frozen file equal to one
        of them becomes a reference to it, and the others are added. Without it the folder is self-contained."""
        import yaml
        from safetensors.torch import save_model

        cfg = json.loads(json.dumps({"stage": self.name, **self.cfg}, default=list))
        with atomic_dir(directory) as tmp:
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
            (tmp / "stage.yaml").write_text(f"# resolved config of the {self.name} stage (config.json is what "
                                            "loads)\n" + yaml.safe_dump(cfg, sort_keys=False))
            for name, module in self._saved_components().items():
                if trainable_dtype is not None and name not in FROZEN:
                    from safetensors.torch import save_file
                    state = {k: v.detach().to(trainable_dtype).contiguous() for k, v in module.state_dict().items()}
                    save_file(state, str(tmp / f"{name}.safetensors"))
                else:
                    save_model(module, str(tmp / f"{name}.safetensors"))
                if shared is not None and name in FROZEN:
                    store_once(tmp / f"{name}.safetensors", f"{Path(directory).name}/{name}.safetensors", shared)

    @classmethod
    def read_config(cls, directory: str | Path) -> dict:
        directory = Path(directory)
        cfg_file = directory / "config.json"
        if not directory.is_dir():
            raise DataError(f"{cls.name or 'stage'} folder not found", directory)
        if not cfg_file.is_file():
            raise DataError(f"no {cls.name or 'stage'} weights here (config.json missing)", directory)
        from pcdms_aug.config.loading import read_json

        cfg = read_json(cfg_file, "config.json")
        if not isinstance(cfg, dict):
            raise DataError("corrupt config.json: not a mapping", cfg_file)
        return cfg

    @classmethod
    def check_folder(cls, directory: str | Path) -> tuple[dict, dict]:
        """(config, {component: weights file}) of a saved stage folder, every check made without building it:
        the config (sizes, keys), the stage on the meta device, each weights file's tensor shapes from its
        header. A pipeline checks all its stage folders this way before it loads any."""
        from pcdms_aug.config.schema import stage_config

        directory = Path(directory)
        cfg = cls.read_config(directory)
        name = cfg.pop("stage", cls.name)
        if cls.name and name != cls.name:
            raise DataError(f"this folder holds stage {name!r}, not {cls.name!r}", directory)
        if not cls.name:
            return class_of(name, directory).check_folder(directory)
        stage_config(cfg, cls.name, str(directory / "config.json"))
        files = {}
        meta = cls.on_meta(cfg, directory / "config.json")
        for comp, module in (meta._saved_components() if meta is not None else {}).items():
            files[comp] = component_file(directory, comp)
            check_shapes(module, files[comp])
        return cfg, files

    @classmethod
    def from_pretrained(cls, directory: str | Path, cache: dict | None = None) -> "Stage":
        """A folder written by :meth:`save_pretrained` (the weights are loaded exactly: a missing, corrupt or
        mismatched file is a DataError naming it). ``cache`` shares equal frozen parts between stages."""
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        from pcdms_aug.models.encoders import frozen_key

        directory = Path(directory)
        if not cls.name:
            return class_of(cls.read_config(directory).get("stage"), directory).from_pretrained(directory, cache)
        cfg, files = cls.check_folder(directory)
        # Frozen parts from pretrained folders can come from the cache; saved ones are loaded, then shared.
        stage = cls.from_config(cfg, seed=0, cache={} if cache is None else FolderOnly(cache),
                                load_weights=False, _on_meta=True)
        for comp, module in stage._saved_components().items():
            f = files.get(comp) or component_file(directory, comp)
            try:
                missing, unexpected = load_model(module, str(f), strict=False)
            except (SafetensorError, OSError, RuntimeError, ValueError) as e:
                raise DataError(f"cannot load weights of component {comp!r}: {e}", f) from None
            if missing or unexpected:
                raise DataError(f"weights do not match the config: missing {sorted(missing)[:3]}, "
                                f"unexpected {sorted(unexpected)[:3]}", f)
            if cache is not None and comp in FROZEN:
                key = frozen_key(comp, getattr(stage.config, comp), stage.config)
                other = cache.get(key)
                if other is not None and same_weights(other, module):
                    setattr(stage, comp, other)
                elif other is None:
                    cache[key] = module
        return stage.eval()

    # ---------------------------------------------------------------- input checks
    def check_inputs(self, **tensors) -> int:
        """Every named input must be a tensor of the expected kind, all with one batch size (returned):
        ``*_image`` (B, 3, H, W); ``*_pose`` (B, 54) pose vectors; ``*_embed`` (B, D)."""
        from pcdms_aug.data.pose import VECTOR_DIM

        sizes = {}
        for key, x in tensors.items():
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"{self.name}: {key} must be a tensor, got {type(x).__name__}")
            if key.endswith("image") and (x.dim() != 4 or x.shape[1] != 3):
                raise ValueError(f"{self.name}: {key} must be (B, 3, H, W), got {tuple(x.shape)}")
            if key.endswith("pose") and (x.dim() != 2 or x.shape[1] != VECTOR_DIM):
                raise ValueError(f"{self.name}: {key} must be (B, {VECTOR_DIM}) pose vectors, got {tuple(x.shape)}")
            if key.endswith("embed") and x.dim() != 2:
                raise ValueError(f"{self.name}: {key} must be (B, D), got {tuple(x.shape)}")
            sizes[key] = x.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{self.name}: inputs disagree on the batch size: {sizes}")
        if sizes and next(iter(sizes.values())) == 0:
            raise ValueError(f"{self.name}: empty batch")
        return next(iter(sizes.values()), 0)

    def batch_inputs(self, batch: dict, *keys: str) -> list[torch.Tensor]:
        """``batch[key]`` for each key, checked, on the stage's device (a clear error for a missing key)."""
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"{self.name}: the training batch lacks {', '.join(missing)}")
        self.check_inputs(**{k: batch[k] for k in keys})
        return [batch[k].to(self.device) for k in keys]

    # ---------------------------------------------------------------- frozen features of a training step
    def frozen_needs(self) -> dict[str, tuple[str, ...]]:
        """Per role the frozen networks' outputs one training step reads: ``source`` and ``target`` name
        features of one image (:meth:`image_features`), ``pair`` features of the pair (:meth:`pair_features`).
        What a feature cache holds (``pcdms_aug.training.feature_cache``)."""
        raise NotImplementedError

    def image_features(self, images: torch.Tensor, names) -> dict[str, torch.Tensor]:
        """The features ``names`` of dataset images (B, 3, H, W) in [-1, 1], as the data loader gives them."""
        raise NotImplementedError

    def pair_features(self, batch: dict, names) -> dict[str, torch.Tensor]:
        """The features ``names`` of a batch of pairs (its ``*_image`` entries)."""
        raise NotImplementedError

    def frozen_image_keys(self, batch: dict) -> tuple[str, ...]:
        """The batch's images the frozen features are computed from: none when it carries the features."""
        return () if "frozen" in batch else self.FROZEN_IMAGE_KEYS

    def frozen_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """``"<role>.<feature>"`` for every :meth:`frozen_needs` entry: the batch's own ``frozen`` entry (a
        feature cache's, as fp32 on the stage's device), or computed now from its images without gradients."""
        if "frozen" in batch:
            return {k: v.to(self.device, torch.float32 if v.is_floating_point() else v.dtype)
                    for k, v in batch["frozen"].items()}
        out = {}
        with torch.no_grad():
            for role, names in self.frozen_needs().items():
                if role == "pair":
                    feats = self.pair_features(batch, names)
                else:
                    feats = self.image_features(self.batch_inputs(batch, f"{role}_image")[0], names)
                out.update({f"{role}.{n}": v for n, v in feats.items()})
        return out

    def cache_keeps(self) -> tuple[str, ...]:
        """Frozen components the loss still runs when its features come from a cache (none by default)."""
        return ()

    def frozen_component(self, name: str) -> nn.Module | None:
        """A frozen component, registered or set aside by :meth:`set_frozen_aside`."""
        module = self._modules.get(name)
        return module if module is not None else self.__dict__.get(name)

    def set_frozen_aside(self) -> list[str]:
        """Unregister the frozen networks a cached training step does not run (all but :meth:`cache_keeps`):
        ``.to(device)``, ``parameters()``, DDP and checkpoints then leave them where they are (the CPU), while
        ``self.clip`` etc. still reach them (sizes; :meth:`frozen_back` for previews and the export).
        Returns their names."""
        aside = [n for n in FROZEN if n in self._modules and n not in self.cache_keeps()]
        for name in aside:
            object.__setattr__(self, name, self._modules.pop(name))
        return aside

    def frozen_back(self, names) -> None:
        """Register again what :meth:`set_frozen_aside` set aside (on the stage's device)."""
        for name in names:
            module = self.__dict__.pop(name, None)
            if module is not None:
                self._modules[name] = module.to(self.device)

    # ---------------------------------------------------------------- the stage's own parts
    def training_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def preview(self, batch: dict, num_inference_steps: int = 20, generator=None) -> list[dict]:
        """Rows of labelled images (uint8 HxWx3) for the training grid."""
        return []


def to_uint8(images: torch.Tensor) -> list:
    """[-1, 1] (B, 3, H, W) -> list of uint8 (H, W, 3) arrays."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [a.permute(1, 2, 0).cpu().numpy() for a in x]
