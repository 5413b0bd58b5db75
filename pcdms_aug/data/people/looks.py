"""What an identity wears: clothing, hair, shoes and bag colours drawn from street-like frequencies."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Clothing colours (RGB) and how common they are: dark and neutral clothes dominate real street scenes.
PALETTE = {
    "black": (28, 28, 32), "charcoal": (62, 62, 68), "grey": (128, 128, 132), "white": (226, 226, 220),
    "navy": (32, 42, 92), "blue": (46, 86, 176), "sky": (126, 172, 222), "denim": (58, 80, 128),
    "red": (184, 34, 38), "maroon": (112, 24, 36), "pink": (230, 142, 172), "orange": (232, 124, 34),
    "yellow": (232, 204, 56), "green": (44, 132, 62), "olive": (102, 112, 52), "khaki": (182, 162, 112),
    "brown": (112, 72, 42), "purple": (104, 54, 134), "teal": (32, 140, 140), "beige": (214, 196, 160),
}
TOP_WEIGHTS = {"black": 4, "charcoal": 2, "grey": 2, "white": 4, "navy": 2, "blue": 2, "sky": 1.5, "red": 2,
               "maroon": 1, "pink": 1.5, "orange": 1, "yellow": 1.5, "green": 1.5, "olive": 1, "khaki": 1,
               "brown": 1, "purple": 1, "teal": 1, "beige": 1.5}
BOTTOM_WEIGHTS = {"black": 5, "charcoal": 3, "grey": 2, "white": 1, "navy": 2, "denim": 4, "blue": 1,
                  "khaki": 2, "brown": 1, "beige": 1, "red": 0.5, "green": 0.5, "olive": 0.7}
HAIR = {"black": (22, 20, 20), "dark brown": (56, 36, 26), "brown": (104, 68, 38), "blond": (196, 164, 104),
        "grey": (150, 148, 146)}
HAIR_WEIGHTS = {"black": 6, "dark brown": 3, "brown": 1.5, "blond": 0.8, "grey": 0.7}
SHOES = {"black": (26, 26, 28), "white": (232, 232, 228), "brown": (96, 62, 36), "grey": (120, 120, 124),
         "red": (180, 40, 40), "blue": (50, 80, 160)}
SHOE_WEIGHTS = {"black": 5, "white": 3, "brown": 1.5, "grey": 1, "red": 0.5, "blue": 0.5}


def _pick(rng: np.random.Generator, weights: dict, table: dict | None = None, avoid=None):
    names = [n for n in weights if n != avoid]
    p = np.array([weights[n] for n in names], float)
    name = names[int(rng.choice(len(names), p=p / p.sum()))]
    base = np.array((table or PALETTE)[name], float)
    return name, tuple(np.clip(base * rng.uniform(0.88, 1.12) + rng.normal(0, 6, 3), 0, 255))


@dataclass(frozen=True)
class Look:
    """What one identity wears; colours are RGB floats."""

    skin: tuple
    hair: tuple
    hair_style: str  # short | long | cap
    cap: tuple
    top: tuple
    top2: tuple
    top_pattern: str  # plain | stripes | checks | yoke | jacket
    period: float  # stripe / check size, body pixels
    sleeves: str  # long | short
    logo: str  # none | circle | square | triangle | bar
    logo_colour: tuple
    back_print: bool
    bottom: tuple
    bottom2: tuple
    bottom_kind: str  # trousers | shorts | skirt
    bottom_stripe: bool  # a side stripe down each leg
    shoes: tuple
    bag: str  # none | backpack | shoulder
    bag_colour: tuple
    bag_side: int  # +1 the person's left, -1 right (shoulder bag)


def sample_look(rng: np.random.Generator) -> Look:
    top_name, top = _pick(rng, TOP_WEIGHTS)
    _, top2 = _pick(rng, TOP_WEIGHTS, avoid=top_name)
    bottom_name, bottom = _pick(rng, BOTTOM_WEIGHTS)
    _, bottom2 = _pick(rng, TOP_WEIGHTS, avoid=bottom_name)
    _, hair = _pick(rng, HAIR_WEIGHTS, HAIR)
    _, shoes = _pick(rng, SHOE_WEIGHTS, SHOES)
    _, bag_colour = _pick(rng, TOP_WEIGHTS)
    _, cap = _pick(rng, TOP_WEIGHTS)
    _, logo_colour = _pick(rng, TOP_WEIGHTS, avoid=top_name)
    tone = rng.uniform(0, 1)
    skin = tuple(np.array([238, 198, 168]) * (1 - tone) + np.array([118, 80, 56]) * tone)
    return Look(
        skin=skin, hair=hair, hair_style=str(rng.choice(["short", "long", "cap"], p=[0.55, 0.3, 0.15])), cap=cap,
        top=top, top2=top2,
        top_pattern=str(rng.choice(["plain", "stripes", "checks", "yoke", "jacket"], p=[0.4, 0.18, 0.12, 0.12, 0.18])),
        period=float(rng.uniform(3.0, 5.5)), sleeves=str(rng.choice(["long", "short"], p=[0.55, 0.45])),
        logo=str(rng.choice(["none", "circle", "square", "triangle", "bar"], p=[0.35, 0.18, 0.17, 0.15, 0.15])),
        logo_colour=logo_colour, back_print=bool(rng.random() < 0.2),
        bottom=bottom, bottom2=bottom2,
        bottom_kind=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.68, 0.18, 0.14])),
        bottom_stripe=bool(rng.random() < 0.12), shoes=shoes,
        bag=str(rng.choice(["none", "backpack", "shoulder"], p=[0.4, 0.35, 0.25])), bag_colour=bag_colour,
        bag_side=int(rng.choice([-1, 1])))
