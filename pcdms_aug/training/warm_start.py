"""``train.init_from``: a new stage started from the weights of a saved one."""
from __future__ import annotations

import torch

from pcdms_aug.utils.errors import DataError


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
