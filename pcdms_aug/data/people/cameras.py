"""The six cameras: a street scene, light and optics each, and what a camera sees (``render``)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pcdms_aug.data import posegen as pg
from pcdms_aug.data.people.drawing import SHIFT, SS, canvas_point, draw_person
from pcdms_aug.data.people.looks import PALETTE, Look

H, W = pg.H, pg.W

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
        cv2.ellipse(shadow, canvas_point((skel.view.cx, feet)), (int(15 * scale * SS) << SHIFT, int(3.5 * scale * SS) << SHIFT),
                    0, 0, 360, (0, 0, 0), -1, cv2.LINE_AA, SHIFT)
        cv2.addWeighted(canvas, 0.72, shadow, 0.28, 0, dst=canvas)
        draw_person(canvas, skel, look, camera.light)
    img = cv2.resize(canvas, (W, H), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    gain = camera.gain * rng.uniform(0.94, 1.06)
    img = np.power(img, camera.gamma) * gain * np.array(camera.tint, np.float32)
    img = cv2.GaussianBlur(img, (0, 0), camera.blur)
    img = img * 255.0 + rng.normal(0, camera.noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
