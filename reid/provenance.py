"""What the generator of the views saw: was it trained on the experiment's people, and on its validation images?

The paper trains PCDMs on the whole Market-1501 training split and then augments low-data subsets of that same
split: the generator has seen every image of the subset's identities, the ones outside the subset included (the
"paper's protocol"). A user who applies a generator trained elsewhere to a new dataset augments people the
generator never saw. The two answer different questions, so every experiment states which one it measured.

People and images are compared by keys. A synthetic Market-1501 (``synthetic.json``) draws each person's looks
from (world seed, identity) and each image from the world's settings, so a person is ``("synthetic", seed,
pid)`` and an image ``("synthetic", settings, file name)``: two builds of one seed share the people they both
hold, and identical settings share every image. Any other folder: an image is the sha1 of its bytes, and a
person is known seen only through an image of theirs the generator trained on (a lower bound).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pcdms_aug.data.layouts import is_identity, open_dataset
from pcdms_aug.data.splits import load_split
from pcdms_aug.utils.errors import DataError

# The shipped tiny weights: every stage was trained on the default synthetic Market-1501 (`pcdms-aug
# synth-market data/synthetic`: seed 0, 60 training and 60 test identities), on pairs of its training split
# (docs/tiny_weights.md). The demo draws that same world.
TINY_TRAINED_ON = {"seed": 0, "train_ids": 60, "test_ids": 60}
STATES = ("this", "other", "unknown")  # besides null (inferred) and a dataset folder
PAPER = "paper"  # images of the subset's identities outside the subset
SAME_PEOPLE = "same people"  # some of the subset's people, none of their images outside the subset
OTHER = "other identities"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Seen:
    """The generator's training data as keys; ``None``: not known."""

    what: str  # in words, for the reports
    people: frozenset | None
    images: frozenset | None
    by_content: bool = False  # images keyed by the sha1 of their bytes (else by synthetic world and name)


def _synthetic_settings(root: Path) -> dict | None:
    meta = root / "synthetic.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"unreadable synthetic world settings ({e})", meta) from None


def _synthetic_keys(settings: dict, items) -> dict[str, tuple]:
    world = json.dumps(settings, sort_keys=True)  # hashable whatever the settings hold (a crop is a list)
    return {name: (("synthetic", int(settings["seed"]), pid), ("synthetic", world, name)) for name, pid in items}


def training_keys(data_dir: str | Path, by_content: bool = False) -> dict[str, tuple]:
    """file name -> (person key, image key) for the identified training images of a dataset folder."""
    ds = open_dataset(data_dir)
    items = [(it.filename, it.pid, it.path) for it in ds.train if is_identity(ds, it)]
    settings = _synthetic_settings(ds.root)
    if settings is not None and not by_content:
        return _synthetic_keys(settings, [(n, p) for n, p, _ in items])
    return {n: (("folder", str(ds.root.resolve()), p), ("sha1", hashlib.sha1(path.read_bytes()).hexdigest()))
            for n, p, path in items}


def _tiny() -> Seen:
    from pcdms_aug.data.synthetic import VERSION, plan

    s = TINY_TRAINED_ON
    keys = _synthetic_keys({**s, "version": VERSION},
                           [(it.name, it.pid) for it in plan(s["train_ids"], s["test_ids"], s["seed"])
                            if it.split == "train"])
    return Seen(f"the shipped tiny weights: the synthetic world of seed {s['seed']} ({s['train_ids']} training "
                "identities), its training images", frozenset(k[0] for k in keys.values()),
                frozenset(k[1] for k in keys.values()))


def generator_data(spec, data_dir: Path, weights: str | None) -> Seen:
    """What the views' generator was trained on, from the config's ``generator_trained_on`` and the views'
    weights hash (null: known for the shipped tiny weights, unknown for any other)."""
    if spec is None:
        from pcdms_aug.generation.inputs import weights_fingerprint

        return _tiny() if weights and weights == weights_fingerprint("tiny") else Seen(
            f"weights {weights or '?'}: not stated (set generator_trained_on)", None, None)
    if spec == "unknown":
        return Seen("not stated", None, None)
    if spec == "other":
        return Seen("other people only (stated in the config)", frozenset(), frozenset())
    folder = data_dir if spec == "this" else Path(str(spec))
    if spec not in STATES and not folder.is_dir():
        raise DataError(f"reid config: generator_trained_on must be null, {', '.join(STATES)} or the folder of "
                        f"the dataset the generator was trained on; got {spec!r} (no such folder)")
    # Two synthetic worlds compare by seed and identity; anything else by the images' bytes.
    by_content = any(_synthetic_settings(open_dataset(d).root) is None for d in (folder, data_dir))
    keys = training_keys(folder, by_content)
    where = "this dataset's training images" if spec == "this" else f"the training images of {folder}"
    return Seen(f"{where} (stated in the config)", frozenset(k[0] for k in keys.values()),
                frozenset(k[1] for k in keys.values()), by_content)


def views_weights(generated_dir: str | Path) -> str | None:
    """The weights hash ``generate`` recorded for a folder of views (generate.json), None when absent."""
    meta = Path(generated_dir) / "generate.json"
    try:
        return str(json.loads(meta.read_text(encoding="utf-8"))["settings"]["weights"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def describe(seen: Seen, data_dir: Path, split_file: str | Path, val_files: list[str]) -> dict:
    """The run's record: which protocol the views follow, and how much of the subset's people, the images
    outside the subset and the validation images the generator trained on (None: unknown)."""
    keys = training_keys(data_dir, seen.by_content)
    subset = set(load_split(split_file).files)
    people = {keys[f][0] for f in subset if f in keys}
    outside = [f for f in keys if f not in subset and keys[f][0] in people]
    out = {"generator_trained_on": seen.what, "generator_saw": UNKNOWN, "gen_seen_subset_ids": None,
           "gen_seen_outside_images": None, "gen_seen_val_images": None, "num_subset_ids": len(people)}
    if seen.people is None:
        return out
    seen_people = set(seen.people) | {keys[f][0] for f in keys if keys[f][1] in seen.images}
    seen_outside = [f for f in outside if keys[f][1] in seen.images]
    out.update(gen_seen_subset_ids=len(people & seen_people), gen_seen_outside_images=len(seen_outside),
               gen_seen_val_images=sum(keys[f][1] in seen.images for f in val_files if f in keys),
               generator_saw=PAPER if seen_outside else SAME_PEOPLE if people & seen_people else OTHER)
    return out
