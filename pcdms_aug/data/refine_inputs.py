"""The stage-3 inputs folder (what `pcdms-aug make-refine-inputs` writes): stage-2 outputs and ``inputs.json``,
which records the size they were made at. Training reads it; the generation driver writes it."""
from __future__ import annotations

from pathlib import Path

from pcdms_aug.utils.errors import DataError

INFO = "inputs.json"


def check_refine_inputs(folder: str | Path, image_size) -> list:
    """Stage 3 must train on what it refines at inference: stage-2 outputs at stage 2's size, loaded at
    ``image_size`` (data.image_size) and resized by stage 3 as its input is at inference. Refuses a folder of
    unknown size, and one made larger than the training size (it would be shrunk: not what inference gives).
    Returns the size the images were made at."""
    info = Path(folder) / INFO
    if not Path(folder).is_dir():
        raise DataError("stage-2 outputs folder not found (data.refine_inputs; make it with pcdms-aug "
                        "make-refine-inputs)", folder)
    if not info.is_file():
        raise DataError(f"no {INFO}: not a folder of pcdms-aug make-refine-inputs, which records there the size "
                        "of its images; run pcdms-aug make-refine-inputs again", folder)
    from pcdms_aug.config.loading import read_json

    recorded = read_json(info, INFO)
    made = list(recorded.get("image_size", []) if isinstance(recorded, dict) else [])
    if len(made) != 2 or not all(isinstance(v, int) and v > 0 for v in made):
        raise DataError(f"corrupt {INFO}: image_size must be [height, width], got {made}; run pcdms-aug "
                        "make-refine-inputs again", info)
    if made[0] > image_size[0] or made[1] > image_size[1]:
        raise DataError(f"stage-2 outputs are {made}, larger than data.image_size {list(image_size)}: stage 3 "
                        "would train on shrunk images; set data.image_size to the pipeline's image_size", info)
    return made
