"""Where a ``--weights`` argument points: ``tiny`` (the shipped folder), a saved pipeline folder, or a pipeline
YAML (random weights). Imports no library, so that every command refuses a wrong path before torch loads."""
from __future__ import annotations

from pathlib import Path

from pcdms_aug.utils.errors import DataError

WEIGHTS_ROOT = Path(__file__).resolve().parents[1] / "weights"


def resolve_weights(directory: str | Path) -> Path:
    """The folder a weights argument names: ``"tiny"`` is the shipped tiny weights, anything else a path."""
    if str(directory) != "tiny":
        return Path(directory)
    directory = WEIGHTS_ROOT / "tiny"
    if not (directory / "pipeline.yaml").is_file():
        raise DataError("the shipped tiny weights are missing from this installation (scripts/train_tiny.sh "
                        "trains them on the synthetic Market-1501 and writes them here)", directory)
    return directory


def is_config_spec(weights: str | Path) -> bool:
    return str(weights).endswith((".yaml", ".yml"))


def check_weights_spec(weights: str | Path) -> Path | None:
    """The weights folder ``weights`` names (None for a pipeline YAML), refused by name when it is missing."""
    if is_config_spec(weights):
        from pcdms_aug.config.loading import resolve_config_path

        resolve_config_path(weights)  # refuses a missing file by name
        return None
    folder = resolve_weights(weights)
    if not folder.is_dir():
        raise DataError("weights folder not found (a folder written by save_pretrained, 'tiny' for the shipped "
                        "weights, or a pipeline YAML for random weights)", folder)
    return folder
