"""Procedural pedestrians for the synthetic Market-1501: an identity's look, a camera's scene, and the drawing.

A person is drawn from the 3-D skeleton of ``posegen`` at 4x resolution and reduced to 128x64, so that thin
parts keep their colour. The torso and head are shaded surfaces (an elliptic cylinder and an ellipsoid) whose
paint is fixed on the body: a print on the chest shows only from the front, a backpack from behind, the face
from the front and the hair from behind, and a side view is narrower. The same look in another pose or view is
therefore new information, as in real re-ID data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pcdms_aug.data import posegen as pg

SS = 4  # supersampling factor of the drawing
SHIFT = 3  # cv2 sub-pixel bits
H, W = pg.H, pg.W

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


# --------------------------------------------------------------------------------------------- cameras
WALLS = [(150, 146, 140), (168, 116, 92), (96, 120, 128), (196, 186, 160), (120, 124, 116), (80, 84, 92),
         (186, 180, 170), (140, 150, 120)]
GROUNDS = [(120, 118, 114), (168, 160, 140), (96, 96, 100), (150, 140, 124), (110, 124, 92), (136, 132, 128)]


@dataclass(frozen=True)
class Camera:
    """One of the six cameras: its scene, how big people appear, its light and its optics."""

    camid: int
    scene: np.ndarray  # (H*SS + 64, 3*W*SS, 3) uint8, cropped per image
    scale: float
    gain: float
    tint: tuple
    gamma: float
    light: tuple  # (x, z) direction of the key light in the camera frame
    blur: float  # Gaussian sigma at 128x64
    noise: float


def make_camera(camid: int, rng: np.random.Generator) -> Camera:
    return Camera(camid=camid, scene=_scene(rng), scale=float(rng.uniform(0.95, 1.04)),
                  gain=float(rng.uniform(0.78, 1.15)), tint=tuple(rng.uniform(0.86, 1.14, 3)),
                  gamma=float(rng.uniform(0.85, 1.2)),
                  light=tuple(np.array([rng.uniform(-0.8, 0.8), 1.0]) / math.hypot(0.8, 1.0)),
                  blur=float(rng.uniform(0.35, 0.8)), noise=float(rng.uniform(1.5, 4.5)))


def _jitter(rng, colour, amount=18):
    return tuple(int(v) for v in np.clip(np.array(colour) + rng.normal(0, amount, 3), 0, 255))


def _scene(rng: np.random.Generator) -> np.ndarray:
    """A street backdrop: a wall with panels and windows over a tiled ground, with poles and shrubs."""
    h, w = H * SS + 64, 3 * W * SS
    img = np.zeros((h, w, 3), np.uint8)
    wall, ground = WALLS[rng.integers(len(WALLS))], GROUNDS[rng.integers(len(GROUNDS))]
    horizon = int(h * rng.uniform(0.38, 0.62))
    x = 0
    while x < w:
        pw = int(rng.integers(60, 220))
        img[:horizon, x:x + pw] = _jitter(rng, wall, 14)
        for _ in range(int(rng.integers(0, 3))):
            wx, ww = x + int(rng.integers(0, max(1, pw - 30))), int(rng.integers(20, 70))
            wy, wh = int(rng.integers(0, max(1, horizon - 60))), int(rng.integers(30, 110))
            cv2.rectangle(img, (wx, wy), (wx + ww, min(horizon - 4, wy + wh)),
                          _jitter(rng, (60, 70, 80) if rng.random() < 0.6 else (200, 200, 190), 20), -1)
        x += pw
    img[horizon:] = ground
    shade = np.linspace(0.9, 1.1, h - horizon)[:, None, None]
    img[horizon:] = np.clip(img[horizon:] * shade, 0, 255).astype(np.uint8)
    step = int(rng.integers(40, 90))
    line = _jitter(rng, np.array(ground) * 0.8, 6)
    for y in range(horizon + step // 2, h, step):
        cv2.line(img, (0, y), (w, y), line, 2)
    for x in range(int(rng.integers(0, step)), w, step * 2):
        cv2.line(img, (x, horizon), (x + int(rng.normal(0, 60)), h), line, 2)
    cv2.line(img, (0, horizon), (w, horizon), _jitter(rng, (70, 70, 70), 10), 6)
    for _ in range(int(rng.integers(1, 4))):
        px = int(rng.integers(0, w))
        cv2.rectangle(img, (px, int(rng.integers(0, horizon // 2))), (px + int(rng.integers(6, 14)), horizon + 10),
                      _jitter(rng, (50, 50, 55), 15), -1)
    for _ in range(int(rng.integers(0, 4))):
        bx = int(rng.integers(0, w))
        cv2.ellipse(img, (bx, horizon), (int(rng.integers(30, 90)), int(rng.integers(20, 50))), 0, 180, 360,
                    _jitter(rng, (50, 100, 50), 20), -1)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    noise = rng.normal(0, 6, (h // 8, w // 8, 1))
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    return np.clip(img + noise, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- drawing
def _pt(xy) -> tuple:
    """Image pixel coordinates (pixel centres at integers) -> fixed-point coordinates of the 4x canvas."""
    x, y = xy
    return (int(round(((x + 0.5) * SS - 0.5) * (1 << SHIFT))), int(round(((y + 0.5) * SS - 0.5) * (1 << SHIFT))))


def _poly(points) -> np.ndarray:
    return np.array([_pt(p) for p in points], np.int32)


def _shade(colour, factor) -> tuple:
    return tuple(float(min(255.0, c * factor)) for c in colour)


def _line(canvas, a, b, colour, width_px, factor=1.0):
    cv2.line(canvas, _pt(a), _pt(b), _shade(colour, factor), max(1, int(round(width_px * SS))), cv2.LINE_AA, SHIFT)


def _circle(canvas, c, radius_px, colour, factor=1.0):
    cv2.circle(canvas, _pt(c), int(round(radius_px * SS * (1 << SHIFT))), _shade(colour, factor), -1, cv2.LINE_AA,
               SHIFT)


def _fill(canvas, points, colour, factor=1.0):
    cv2.fillConvexPoly(canvas, _poly(points), _shade(colour, factor), cv2.LINE_AA, SHIFT)


def _grid(canvas, x0, x1, y0, y1):
    """Canvas pixel grid of a box given in image pixels, clipped to the canvas; centres in image pixels."""
    hh, ww = canvas.shape[:2]
    cx0, cx1 = max(0, int(math.floor(x0 * SS))), min(ww, int(math.ceil(x1 * SS)) + SS)
    cy0, cy1 = max(0, int(math.floor(y0 * SS))), min(hh, int(math.ceil(y1 * SS)) + SS)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    ys, xs = np.mgrid[cy0:cy1, cx0:cx1].astype(np.float32)
    return (slice(cy0, cy1), slice(cx0, cx1)), (xs + 0.5) / SS - 0.5, (ys + 0.5) / SS - 0.5


def _lambert(nx, nz, light, ambient=0.62):
    return ambient + (1 - ambient) * np.clip(nx * light[0] + nz * light[1], 0, 1) + 0.12


def _torso(canvas, skel: pg.Skeleton, look: Look, light):
    b, v = skel.body, skel.view
    s = v.scale
    c, sn = math.cos(v.yaw), math.sin(v.yaw)
    top, length = v.neck_y - 1.5 * s, b.torso + 5.0
    bottom = top + length * s
    a_top, a_bot, depth = b.shoulder * 1.02, b.hip + 3.6, b.depth
    half = max(a_top, a_bot) * s + 2
    g = _grid(canvas, v.cx - half, v.cx + half, top, bottom)
    if g is None:
        return
    box, xs, ys = g
    vv = (ys - top) / (bottom - top)
    a = a_top + (a_bot - a_top) * np.clip(vv, 0, 1)
    # The shoulders round off at the top.
    a = a * np.sqrt(np.clip(1 - np.clip(0.1 - vv, 0, None) ** 2 * 40, 0.2, 1))
    wbody = np.sqrt((a * c) ** 2 + (depth * sn) ** 2)
    t = (xs - v.cx) / (wbody * s)
    inside = (np.abs(t) <= 1) & (vv >= 0) & (vv <= 1)
    if not inside.any():
        return
    # Only the pixels on the torso from here on, as flat arrays.
    t, vv, a, wbody = t[inside], vv[inside], a[inside], wbody[inside]
    cos_phi, sin_phi, shade = _torso_surface(t, a, wbody, depth, c, sn, light)
    paint = _torso_paint(look, a * cos_phi, depth * sin_phi, cos_phi, sin_phi, a, depth, vv * length, length)
    region = canvas[box]
    region[inside] = np.clip(paint * shade[:, None], 0, 255)


def _torso_surface(t, a, wbody, depth, c, sn, light):
    """The visible point of the torso's elliptic section (a cos phi, depth sin phi) under each pixel, as
    (cos phi, sin phi), and its shading; ``c``, ``sn``: cosine and sine of the yaw."""
    # That point is always phi = delta + arccos(t), with tan(delta) = depth sin(yaw) / (a cos(yaw)); expanded
    # to avoid trigonometry.
    cos_d, sin_d = a * c / wbody, depth * sn / wbody
    sin_p = np.sqrt(np.clip(1 - t * t, 0, 1))
    cos_phi, sin_phi = cos_d * t - sin_d * sin_p, sin_d * t + cos_d * sin_p
    nX, nZ = cos_phi / a, sin_phi / depth
    norm = np.sqrt(nX ** 2 + nZ ** 2)
    nX, nZ = nX / norm, nZ / norm
    return cos_phi, sin_phi, _lambert(nX * c + nZ * sn, -nX * sn + nZ * c, light)


def _torso_paint(look: Look, X, Z, cos_phi, sin_phi, a, depth, yb, length):
    """The top's colours at the torso points (X, Z) of the body frame, ``yb`` pixels below the collar: its
    pattern, a chest logo and a back print."""
    paint = np.empty(X.shape + (3,), np.float32)
    paint[:] = look.top
    second = None
    if look.top_pattern == "stripes":
        second = (np.floor(yb / look.period) % 2) == 1
    elif look.top_pattern == "checks":
        u = np.arctan2(sin_phi, cos_phi) * (a + depth) / 2  # arc length around the body
        second = ((np.floor(u / look.period) + np.floor(yb / look.period)) % 2) == 1
    elif look.top_pattern == "yoke":
        second = yb < 0.38 * length
    elif look.top_pattern == "jacket":
        second = (Z > 0) & (np.abs(X) < 0.32 * a)  # an open jacket shows the shirt from the front only
    if second is not None:
        paint[second] = look.top2
    if look.logo != "none":
        du, dv, size = X, yb - 0.33 * length, 4.2
        if look.logo == "circle":
            m = du ** 2 + dv ** 2 < size ** 2
        elif look.logo == "square":
            m = (np.abs(du) < size * 0.9) & (np.abs(dv) < size * 0.9)
        elif look.logo == "triangle":
            m = (dv < size * 0.8) & (dv > -size) & (np.abs(du) < (dv + size) * 0.6)
        else:
            m = (np.abs(du) < size * 1.5) & (np.abs(dv) < size * 0.45)
        paint[m & (Z > 0.4 * depth)] = look.logo_colour
    if look.back_print:
        m = (np.abs(X) < a * 0.55) & (np.abs(yb - 0.4 * length) < 0.15 * length) & (Z < -0.4 * depth)
        paint[m] = look.logo_colour
    return paint


def _head(canvas, skel: pg.Skeleton, look: Look, light):
    b, v = skel.body, skel.view
    s = v.scale
    centre_body = skel.head_rotation @ np.array([0.0, -15.6 * b.head, -0.5 * b.head])
    (cx, cy), _ = skel.project(centre_body)
    rx, ry = 7.0 * b.head * s, 8.2 * b.head * s
    g = _grid(canvas, cx - rx - 1, cx + rx + 1, cy - ry - 1, cy + ry + 1)
    if g is None:
        return
    box, xs, ys = g
    dx, dy = (xs - cx) / rx, (ys - cy) / ry
    r2 = dx ** 2 + dy ** 2
    inside = r2 <= 1
    if not inside.any():
        return
    dx, dy = dx[inside], dy[inside]
    dz = np.sqrt(np.clip(1 - r2[inside], 0, 1))
    c, sn = math.cos(v.yaw), math.sin(v.yaw)
    # Camera-frame normal -> body frame -> head frame.
    bx, bz = dx * c - dz * sn, dx * sn + dz * c
    n = np.stack([bx, dy, bz], -1) @ skel.head_rotation  # row vectors times R = R^T applied
    hx, hy, hz = n[..., 0], n[..., 1], n[..., 2]
    shade = _lambert(dx, dz, light)
    paint = np.empty(dx.shape + (3,), np.float32)
    paint[:] = look.skin
    hairline = -0.42 if look.hair_style != "long" else -0.3
    hair = (hy < hairline) | (hz < -0.05 - 0.25 * (hy > 0.45))
    if look.hair_style == "long":
        hair |= (np.abs(hx) > 0.72) & (hz < 0.6)
    paint[hair] = look.hair
    if look.hair_style == "cap":
        cap = hy < -0.3
        brim = (hz > 0.45) & (hy < -0.12) & (hy > -0.45)
        paint[cap | brim] = look.cap
    for side in (-1, 1):
        eye = np.array([0.43 * side, 0.04, 0.9])
        eye = eye / np.linalg.norm(eye)
        m = (hx * eye[0] + hy * eye[1] + hz * eye[2]) > 0.985
        paint[m & ~hair] = (40, 30, 30)
    region = canvas[box]
    region[inside] = np.clip(paint * shade[:, None], 0, 255)


def _box_parts(skel: pg.Skeleton, look: Look):
    """Bags as projected boxes: (depth, draw function)."""
    b = skel.body
    parts = []
    c = skel.facing()
    if look.bag == "backpack":
        bw, top, bot, d0, d1 = 0.72 * b.shoulder, 3.0, 0.62 * b.torso, -b.depth - 0.5, -b.depth - 6.0
        corners = np.array([[x, y, z] for x in (-bw, bw) for y in (top, bot) for z in (d0, d1)])
        xy, z = skel.project(corners)
        hull = cv2.convexHull(xy.astype(np.float32)).reshape(-1, 2)
        centre_z = float(z.mean())
        parts.append((centre_z, lambda cv, l: _fill(cv, hull, look.bag_colour, 0.9 + 0.15 * max(0.0, -c))))
        if c > -0.2:  # straps over the chest, seen from the front
            for side in (-1, 1):
                a, e = skel.project(np.array([[side * 0.55 * b.shoulder, 0.0, b.depth],
                                              [side * 0.62 * b.shoulder, 0.55 * b.torso, b.depth]]))[0]
                parts.append((0.02, lambda cv, l, a=a, e=e:
                              _line(cv, a, e, look.bag_colour, 1.6 * skel.view.scale, 0.8)))
    elif look.bag == "shoulder":
        side = look.bag_side
        x0, x1 = side * (b.hip + 2.5), side * (b.hip + 6.0)
        corners = np.array([[x, y, z] for x in (x0, x1) for y in (0.62 * b.torso, 1.02 * b.torso)
                            for z in (-4.5, 4.5)])
        xy, z = skel.project(corners)
        hull = cv2.convexHull(xy.astype(np.float32)).reshape(-1, 2)
        parts.append((float(z.mean()), lambda cv, l: _fill(cv, hull, look.bag_colour, 0.95)))
        zface = b.depth if c >= 0 else -b.depth
        a, e = skel.project(np.array([[-side * 0.6 * b.shoulder, 0.0, zface],
                                      [side * (b.hip + 3.5), 0.65 * b.torso, zface * 0.6]]))[0]
        parts.append((0.02, lambda cv, l: _line(cv, a, e, look.bag_colour, 1.3 * skel.view.scale, 0.75)))
    return parts


def _far(z: float) -> float:
    """Shade factor of a limb at body depth ``z``: the far side is in the body's own shadow."""
    return 0.82 if z < -1 else 1.0


def draw_person(canvas: np.ndarray, skel: pg.Skeleton, look: Look, light) -> None:
    """Draw one person onto a 4x canvas (modified in place), far parts first."""
    b, v = skel.body, skel.view
    s = v.scale
    xy = skel.xy
    J = pg  # joint indices
    parts: list[tuple[float, object]] = []

    # Long hair hangs behind the head and over the upper back.
    if look.hair_style == "long":
        pts = np.array([[x, y, -3.0 * b.head] for x, y in ((-6.4, -15.0), (6.4, -15.0), (5.6, 8.0), (-5.6, 8.0))])
        pts = pts * np.array([b.head, 1, 1])
        hxy, hz = skel.project(pts @ skel.head_rotation.T)
        parts.append((float(hz.mean()), lambda cv, l: _fill(cv, hxy, look.hair, 0.9)))
    parts.append((0.0, lambda cv, l: _torso(cv, skel, look, l)))
    # Neck and pelvis sit just behind the torso so the shirt overlaps them.
    neck_top = skel.project(skel.head_rotation @ np.array([0.0, -8.0, 0.0]))[0]
    parts.append((-0.1, lambda cv, l: _line(cv, xy[J.NECK], neck_top, look.skin, 5.0 * s * b.head, 0.9)))
    pel = skel.project(np.array([[-(b.hip + 3.2), b.torso - 3, 0], [b.hip + 3.2, b.torso - 3, 0],
                                 [b.hip + 2.5, b.torso + 6, 0], [-(b.hip + 2.5), b.torso + 6, 0]]))[0]
    side_w = abs(math.sin(v.yaw)) * b.depth * s
    pel[:, 0] = np.where(pel[:, 0] < v.cx, np.minimum(pel[:, 0], v.cx - side_w), np.maximum(pel[:, 0], v.cx + side_w))
    parts.append((-0.05, lambda cv, l: _fill(cv, pel, look.bottom)))
    parts.extend(_leg_parts(skel, look))
    parts.extend(_arm_parts(skel, look))
    parts.extend(_box_parts(skel, look))
    parts.append((0.3, lambda cv, l: _head(cv, skel, look, l)))
    for _, fn in sorted(parts, key=lambda p: p[0]):
        fn(canvas, light)


def _leg_parts(skel: pg.Skeleton, look: Look):
    """Legs, shoes and a skirt: (depth, draw function)."""
    b, s = skel.body, skel.view.scale
    xy, z = skel.xy, skel.depth
    J = pg  # joint indices
    parts = []
    leg_colour = look.bottom
    for hip, knee, ankle, side in ((J.RHIP, J.RKNE, J.RANK, -1), (J.LHIP, J.LKNE, J.LANK, 1)):
        zt, zs = (z[hip] + z[knee]) / 2, (z[knee] + z[ankle]) / 2
        f = _far(zt)
        thigh_w, shin_w = 8.6 * b.limb * s, 6.6 * b.limb * s
        if look.bottom_kind == "trousers":
            parts.append((zt, lambda cv, l, a=xy[hip], e=xy[knee], f=f: _line(cv, a, e, leg_colour, thigh_w, f)))
            parts.append((zs, lambda cv, l, a=xy[knee], e=xy[ankle], f=f: _line(cv, a, e, leg_colour, shin_w, f)))
            if look.bottom_stripe:
                for a, e, zz in ((xy[hip], xy[knee], zt), (xy[knee], xy[ankle], zs)):
                    parts.append((zz + 0.01, lambda cv, l, a=a, e=e, f=f: _line(cv, a, e, look.bottom2, 1.3 * s, f)))
        else:
            parts.append((zt, lambda cv, l, a=xy[hip], e=xy[knee], f=f: _line(cv, a, e, look.skin, thigh_w * 0.85, f)))
            parts.append((zs, lambda cv, l, a=xy[knee], e=xy[ankle], f=f: _line(cv, a, e, look.skin, shin_w * 0.9, f)))
            if look.bottom_kind == "shorts":
                mid = xy[hip] + 0.6 * (xy[knee] - xy[hip])
                parts.append((zt + 0.01, lambda cv, l, a=xy[hip], e=mid, f=f:
                              _line(cv, a, e, leg_colour, thigh_w * 1.05, f)))
        toe = skel.project(skel.joints3d[ankle] + np.array([0.0, 2.5, 6.0]))[0]
        parts.append((z[ankle] + 0.02, lambda cv, l, a=xy[ankle], e=toe, f=f: _line(cv, a, e, look.shoes, 4.8 * s, f)))
    if look.bottom_kind == "skirt":
        pts = np.array([[x, y, zz] for x in (-(b.hip + 3.5), b.hip + 3.5) for y in (b.torso - 2, b.torso + 24)
                        for zz in (-b.depth, b.depth)])
        pts[[2, 3, 6, 7], 0] *= 1.45  # flared hem
        sxy, sz = skel.project(pts)
        hull = cv2.convexHull(sxy.astype(np.float32)).reshape(-1, 2)
        parts.append((max(z[J.RKNE], z[J.LKNE]) + 0.05, lambda cv, l: _fill(cv, hull, look.bottom)))
    return parts


def _arm_parts(skel: pg.Skeleton, look: Look):
    """Arms in long or short sleeves, and hands: (depth, draw function)."""
    b, s = skel.body, skel.view.scale
    xy, z = skel.xy, skel.depth
    J = pg  # joint indices
    parts = []
    sleeve = look.top
    for sho, elb, wri in ((J.RSHO, J.RELB, J.RWRI), (J.LSHO, J.LELB, J.LWRI)):
        zu, zf = (z[sho] + z[elb]) / 2, (z[elb] + z[wri]) / 2
        f = _far(zu)
        up_w, fore_w = 5.6 * b.limb * s, 4.6 * b.limb * s
        if look.sleeves == "long":
            parts.append((zu, lambda cv, l, a=xy[sho], e=xy[elb], f=f: _line(cv, a, e, sleeve, up_w, f)))
            parts.append((zf, lambda cv, l, a=xy[elb], e=xy[wri], f=f: _line(cv, a, e, sleeve, fore_w, f)))
        else:
            mid = xy[sho] + 0.55 * (xy[elb] - xy[sho])
            parts.append((zu, lambda cv, l, a=xy[sho], e=xy[elb], f=f: _line(cv, a, e, look.skin, up_w * 0.85, f)))
            parts.append((zu + 0.01, lambda cv, l, a=xy[sho], e=mid, f=f: _line(cv, a, e, sleeve, up_w * 1.1, f)))
            parts.append((zf, lambda cv, l, a=xy[elb], e=xy[wri], f=f: _line(cv, a, e, look.skin, fore_w * 0.85, f)))
        parts.append((z[wri] + 0.01, lambda cv, l, c=xy[wri], f=f: _circle(cv, c, 2.2 * s, look.skin, f)))
    return parts


def _object(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """A street object on the canvas: what a detector's false positive often boxes."""
    h, w = canvas.shape[:2]
    colour = _jitter(rng, PALETTE[list(PALETTE)[rng.integers(len(PALETTE))]], 20)
    x, y = int(rng.integers(0, w)), int(rng.integers(h // 4, h))
    kind = rng.integers(3)
    if kind == 0:  # a bin, a box, a sign
        cv2.rectangle(canvas, (x - int(rng.integers(20, 90)), y - int(rng.integers(40, 200))),
                      (x + int(rng.integers(20, 90)), y), colour, -1, cv2.LINE_AA)
    elif kind == 1:  # a wheel, a shrub, a ball
        r = int(rng.integers(20, 70))
        cv2.circle(canvas, (x, y), r, colour, int(rng.choice([-1, 8])), cv2.LINE_AA)
    else:  # a pole or railing
        cv2.line(canvas, (x, 0), (x + int(rng.normal(0, 30)), h), colour, int(rng.integers(6, 24)), cv2.LINE_AA)


def render(skel: pg.Skeleton | None, look: Look | None, camera: Camera, rng: np.random.Generator,
           clutter: int = 0) -> np.ndarray:
    """A 128x64 uint8 RGB crop: the camera's scene, ``clutter`` street objects (boxes, signs, wheels, poles),
    the person (if any) and the camera's light and optics."""
    scene = camera.scene
    ox = int(rng.integers(0, scene.shape[1] - W * SS + 1))
    oy = int(rng.integers(0, scene.shape[0] - H * SS + 1))
    canvas = scene[oy:oy + H * SS, ox:ox + W * SS].copy()
    for _ in range(clutter):
        _object(canvas, rng)
    if skel is not None:
        scale = skel.view.scale
        feet = max(skel.xy[pg.RANK, 1], skel.xy[pg.LANK, 1]) + 3 * scale
        shadow = canvas.copy()
        cv2.ellipse(shadow, _pt((skel.view.cx, feet)), (int(15 * scale * SS) << SHIFT, int(3.5 * scale * SS) << SHIFT),
                    0, 0, 360, (0, 0, 0), -1, cv2.LINE_AA, SHIFT)
        cv2.addWeighted(canvas, 0.72, shadow, 0.28, 0, dst=canvas)
        draw_person(canvas, skel, look, camera.light)
    img = cv2.resize(canvas, (W, H), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    gain = camera.gain * rng.uniform(0.94, 1.06)
    img = np.power(img, camera.gamma) * gain * np.array(camera.tint, np.float32)
    img = cv2.GaussianBlur(img, (0, 0), camera.blur)
    img = img * 255.0 + rng.normal(0, camera.noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
