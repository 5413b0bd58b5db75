"""A pose model for synthetic pedestrians: a 3-D walking skeleton seen from any yaw, projected into a 128x64 crop.

Body frame (pixels of a 128x64 crop at scale 1): X towards the person's left, Y down, Z forward (where they face),
origin at the neck. The camera looks at the person horizontally (orthographic); image x = X cos(yaw) + Z sin(yaw),
depth towards the camera = -X sin(yaw) + Z cos(yaw). yaw 0 faces the camera, 180 shows the back.

Proportions, placement, the mix of views and which joints are annotated are fitted to the real Market-1501
annotations (docs/synthetic_pose_stats.md holds the comparison and the command that measures it).

Joint indices 14..17: the real annotation files put the person's RIGHT eye at 14, left eye at 15, right ear at 16
and left ear at 17 (OpenPose's COCO-18 order), whatever names pose.JOINTS gives them; we follow the files so that
synthetic and real keypoints mean the same thing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pcdms_aug.data.pose import NUM_JOINTS, Pose

H, W = 128, 64
NOSE, NECK, RSHO, RELB, RWRI, LSHO, LELB, LWRI, RHIP, RKNE, RANK, LHIP, LKNE, LANK, REYE, LEYE, REAR, LEAR = range(18)
FACE = (NOSE, REYE, LEYE, REAR, LEAR)


@dataclass(frozen=True)
class Body:
    """An identity's build, in pixels at scale 1."""

    shoulder: float  # half width between the shoulder joints
    hip: float  # half width between the hip joints
    depth: float  # half depth of the torso (front to back)
    torso: float  # neck to hip line
    thigh: float
    shin: float
    upper_arm: float
    forearm: float
    head: float  # head radius scale (1 = average)
    limb: float  # limb thickness scale
    height: float  # overall size in the crop (1 = average)


def sample_body(rng: np.random.Generator) -> Body:
    width = rng.uniform(0.84, 1.18)
    legs = rng.uniform(0.95, 1.05)
    return Body(shoulder=15.2 * width, hip=8.4 * width * rng.uniform(0.92, 1.1), depth=6.8 * width,
                torso=37.5 * rng.uniform(0.96, 1.04), thigh=28.6 * legs, shin=26.0 * legs,
                upper_arm=19.5 * rng.uniform(0.95, 1.05), forearm=16.5 * rng.uniform(0.95, 1.05),
                head=rng.uniform(0.92, 1.08), limb=width * rng.uniform(0.92, 1.08),
                height=rng.uniform(0.96, 1.04))


@dataclass(frozen=True)
class View:
    """One image's pose: orientation, gait and where the crop puts the person."""

    yaw: float  # radians
    head_yaw: float  # head turn relative to the body, radians
    phase: float  # gait phase, radians
    stride: float  # thigh swing amplitude, radians (0: standing)
    arm_swing: float
    arm_r: tuple  # (abduction, forearm flexion forwards, forearm inwards), radians / fractions
    arm_l: tuple
    head_roll: float  # sideways tilt of the head, radians
    stance: tuple  # (knee, ankle) lateral spread relative to the hips
    scale: float
    cx: float  # image x of the neck
    neck_y: float  # image y of the neck


# The view mix of the real annotations (shoulder order: 52% front, 40% back, the rest side or unclear).
VIEW_WEIGHTS = {"front": 0.545, "back": 0.415, "side": 0.04}
VIEW_YAW = {"front": 0.0, "back": math.pi, "side": math.pi / 2}


def sample_track_yaw(rng: np.random.Generator) -> float:
    """The walking direction of one person in one camera (a tracklet keeps it, with small wobble)."""
    kind = rng.choice(list(VIEW_WEIGHTS), p=list(VIEW_WEIGHTS.values()))
    yaw = VIEW_YAW[kind] + rng.normal(0, 0.52 if kind != "side" else 0.2)
    if kind == "side" and rng.random() < 0.5:
        yaw = -yaw
    return float(yaw)


def sample_view(rng: np.random.Generator, body: Body, track_yaw: float, camera_scale: float,
                phase: float) -> View:
    standing = rng.random() < 0.12
    loose = rng.random() < 0.07  # a loose detector box: smaller person, lower in the crop
    scale = camera_scale * body.height * rng.normal(1.0, 0.04)
    neck_y = rng.normal(25.0, 2.2)
    if loose:
        scale *= rng.uniform(0.68, 0.88)
        neck_y = 114.0 - 87.0 * scale + rng.normal(0, 2.0)
    return View(yaw=track_yaw + rng.normal(0, 0.12), head_yaw=rng.normal(0, 0.5), phase=phase,
                stride=0.05 if standing else rng.uniform(0.2, 0.6), arm_swing=rng.uniform(0.05, 0.4),
                arm_r=_arm(rng), arm_l=_arm(rng), head_roll=rng.normal(0, 0.25),
                stance=(rng.uniform(0.9, 1.2), rng.uniform(0.55, 1.4)),
                scale=float(scale), cx=rng.normal(31.8, 3.0), neck_y=float(neck_y))


def _arm(rng: np.random.Generator) -> tuple:
    """(abduction, forearm flexion, forearm inwards) of one arm: hanging and swinging mostly; sometimes
    carrying or holding a phone (forearm raised), a hand on a bag strap, a hand in a pocket."""
    style = rng.choice(4, p=[0.62, 0.18, 0.1, 0.1])
    if style == 0:
        return rng.uniform(0.25, 0.65), rng.uniform(0.05, 0.6), rng.uniform(0.0, 0.6)
    if style == 1:
        return rng.uniform(0.1, 0.45), rng.uniform(1.3, 2.3), rng.uniform(0.2, 0.7)
    if style == 2:
        return rng.uniform(0.15, 0.4), rng.uniform(1.2, 1.7), rng.uniform(0.6, 1.0)
    return rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.6), rng.uniform(0.6, 1.0)


def _head_rotation(yaw: float, roll: float) -> np.ndarray:
    cy, sy, cr, sr = math.cos(yaw), math.sin(yaw), math.cos(roll), math.sin(roll)
    turn = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    tilt = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return turn @ tilt


def _rot_x(v: np.ndarray, a: float) -> np.ndarray:
    """Rotate body-frame vectors about the X axis (swing in the sagittal plane; positive = forwards)."""
    c, s = math.cos(a), math.sin(a)
    return np.stack([v[..., 0], v[..., 1] * c - v[..., 2] * s, v[..., 1] * s + v[..., 2] * c], -1)


class Skeleton:
    """The 3-D joints of one view and their projection; also projects any body-frame point (bags, logos)."""

    def __init__(self, body: Body, view: View):
        self.body, self.view = body, view
        b = body
        j = np.zeros((NUM_JOINTS, 3), np.float64)
        j[NECK] = (0, 0, 0)
        j[RSHO], j[LSHO] = (-b.shoulder, 0, 0), (b.shoulder, 0, 0)
        j[RHIP], j[LHIP] = (-b.hip, b.torso, 0), (b.hip, b.torso, 0)
        hs = b.head
        j[NOSE] = (0, -12.5 * hs, 6.0 * hs)
        j[REYE], j[LEYE] = (-2.6 * hs, -15.2 * hs, 5.0 * hs), (2.6 * hs, -15.2 * hs, 5.0 * hs)
        j[REAR], j[LEAR] = (-6.7 * hs, -13.6 * hs, -1.0 * hs), (6.7 * hs, -13.6 * hs, -1.0 * hs)
        # The head turns and tilts about the neck on its own.
        self.head_rotation = _head_rotation(view.head_yaw, view.head_roll)
        j[list(FACE)] = j[list(FACE)] @ self.head_rotation.T
        # Legs: thigh swings +/- stride, the knee bends most while the leg swings forwards; feet converge
        # towards the body's midline as in real walking.
        s = math.sin(view.phase)
        for hip, knee, ankle, sign in ((RHIP, RKNE, RANK, 1.0), (LHIP, LKNE, LANK, -1.0)):
            swing = sign * view.stride * s
            bend = 0.1 + 1.6 * view.stride * max(0.0, sign * math.cos(view.phase))
            thigh = _rot_x(np.array([0.0, b.thigh, 0.0]), swing)
            shin = _rot_x(np.array([0.0, b.shin, 0.0]), swing - bend)
            j[knee] = j[hip] + thigh
            j[knee, 0] = j[hip, 0] * view.stance[0]
            j[ankle] = j[knee] + shin
            j[ankle, 0] = j[hip, 0] * view.stance[1]
        # Arms swing against the legs; elbows sit outside the shoulders, forearms bend forwards and inwards.
        for sho, elb, wri, side, arm, sign in ((RSHO, RELB, RWRI, -1.0, view.arm_r, -1.0),
                                                (LSHO, LELB, LWRI, 1.0, view.arm_l, 1.0)):
            abduct, flex, inward = arm
            swing = sign * view.arm_swing * s
            upper = _rot_x(b.upper_arm * np.array([side * math.sin(abduct), math.cos(abduct), 0.0]), swing)
            fore = _rot_x(b.forearm * np.array([-side * inward, 1.0, 0.0]) / math.hypot(1.0, inward),
                          swing + flex)
            j[elb] = j[sho] + upper
            j[wri] = j[elb] + fore
        self.joints3d = j
        self.xy, self.depth = self.project(j)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Body-frame points (..., 3) -> image (x, y) (..., 2) and depth towards the camera (...)."""
        v = self.view
        c, s = math.cos(v.yaw), math.sin(v.yaw)
        p = np.asarray(points, np.float64)
        x = v.cx + v.scale * (p[..., 0] * c + p[..., 2] * s)
        y = v.neck_y + v.scale * p[..., 1]
        z = v.scale * (-p[..., 0] * s + p[..., 2] * c)
        return np.stack([x, y], -1), z

    def facing(self) -> float:
        """cos(yaw): 1 faces the camera, -1 shows the back."""
        return math.cos(self.view.yaw)

    def far_side(self) -> int:
        """+1 when the person's left side is turned away from the camera, -1 when the right is."""
        return 1 if math.sin(self.view.yaw) > 0 else -1

    def pixel_joints(self) -> np.ndarray:
        """Joints rounded to integer pixels: the coordinates the drawing uses and the CSV states."""
        return np.rint(self.xy).astype(np.int64)


# Annotation probabilities (what a keypoint detector finds), as a function of how much the person faces the
# camera (cos yaw from -1 = back to 1 = front); the side turned away from the camera loses more.
_FACING = np.array([-1.0, -0.3, 0.0, 0.3, 1.0])
_P_NEAR = {
    NOSE: [0.12, 0.3, 0.8, 0.9, 0.97], NECK: [0.995] * 5,
    RSHO: [0.995] * 5, LSHO: [0.995] * 5, RHIP: [0.99] * 5, LHIP: [0.99] * 5,
    RELB: [0.9, 0.86, 0.8, 0.9, 0.95], LELB: [0.9, 0.86, 0.8, 0.9, 0.95],
    RWRI: [0.65, 0.63, 0.65, 0.83, 0.9], LWRI: [0.65, 0.63, 0.65, 0.83, 0.9],
    RKNE: [0.93] * 5, LKNE: [0.93] * 5, RANK: [0.82] * 5, LANK: [0.82] * 5,
    REYE: [0.06, 0.2, 0.7, 0.9, 0.95], LEYE: [0.06, 0.2, 0.7, 0.9, 0.95],
    REAR: [0.62, 0.7, 0.8, 0.78, 0.7], LEAR: [0.62, 0.7, 0.8, 0.78, 0.7],
}
_FAR_LOSS = {RELB: 0.6, RWRI: 0.6, LELB: 0.6, LWRI: 0.6, REYE: 0.6, LEYE: 0.6, REAR: 0.75, LEAR: 0.75}
_LEFT = (LSHO, LELB, LWRI, LHIP, LKNE, LANK, LEYE, LEAR)
ALL_MISSING_RATE = 0.032  # real: 3.2% of training crops have no keypoint at all


def annotate(skel: Skeleton, rng: np.random.Generator) -> Pose:
    """Which joints a detector reports for this view; coordinates are the exact pixels the person is drawn at."""
    xy = skel.pixel_joints()
    visible = np.zeros(NUM_JOINTS, bool)
    if rng.random() >= ALL_MISSING_RATE:
        f = skel.facing()
        head_f = math.cos(skel.view.yaw + skel.view.head_yaw)
        side_amount = abs(math.sin(skel.view.yaw))
        far = skel.far_side()
        for k, table in _P_NEAR.items():
            p = float(np.interp(head_f if k in FACE else f, _FACING, table))
            is_left = k in _LEFT
            if k in _FAR_LOSS and (1 if is_left else -1) == far:
                p *= 1.0 - _FAR_LOSS[k] * min(1.0, side_amount * 1.6)
            visible[k] = rng.random() < p
        # A wrist whose elbow was lost is usually lost too (the detector misses the whole arm).
        for elb, wri in ((RELB, RWRI), (LELB, LWRI)):
            if not visible[elb] and rng.random() < 0.6:
                visible[wri] = False
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
    visible &= inside
    return Pose(np.where(visible[:, None], xy, -1).astype(np.float32), visible, (H, W))


# ------------------------------------------------------------------------------ comparison with real annotations
def view_of(pose: Pose, margin: float = 6.0) -> str:
    """front / back / side from the shoulders' order in the image (a person's right shoulder is on the image's
    left when they face the camera); 'unclear' when a shoulder is missing."""
    r, l = pose.visible[RSHO], pose.visible[LSHO]
    if not (r and l):
        return "unclear"
    d = float(pose.xy[LSHO, 0] - pose.xy[RSHO, 0])
    return "front" if d > margin else "back" if d < -margin else "side"


def pose_statistics(poses) -> dict:
    """Per joint: annotated rate, mean and std of x and y over annotated joints; the view fractions."""
    poses = list(poses)
    xy = np.stack([p.xy for p in poses]).astype(np.float64)
    vis = np.stack([p.visible for p in poses])
    joints = []
    for k in range(NUM_JOINTS):
        v = vis[:, k]
        q = xy[v, k] if v.any() else np.full((1, 2), np.nan)
        joints.append({"visible": float(v.mean()), "x_mean": float(q[:, 0].mean()), "x_std": float(q[:, 0].std()),
                       "y_mean": float(q[:, 1].mean()), "y_std": float(q[:, 1].std())})
    views = [view_of(p) for p in poses]
    return {"images": len(poses), "missing": float(1 - vis.mean()), "no_keypoint": float((~vis.any(1)).mean()),
            "joints": joints,
            "views": {k: views.count(k) / len(views) for k in ("front", "back", "side", "unclear")}}


def compare_table(synthetic: dict, real: dict, names=None) -> str:
    """Markdown: synthetic versus real statistics (as ``pose_statistics`` returns them), joint by joint."""
    from pcdms_aug.data.pose import JOINTS
    names = names or [n + f" ({i})" for i, n in enumerate(JOINTS)]
    out = [f"images: synthetic {synthetic['images']}, real {real['images']}; joints marked -1: synthetic "
           f"{synthetic['missing']:.1%}, real {real['missing']:.1%}; crops with no keypoint: synthetic "
           f"{synthetic['no_keypoint']:.1%}, real {real['no_keypoint']:.1%}", "",
           "| joint | annotated (syn / real) | x mean ± std (syn) | x mean ± std (real) | y mean ± std (syn) "
           "| y mean ± std (real) |", "|---|---|---|---|---|---|"]
    for name, s, r in zip(names, synthetic["joints"], real["joints"]):
        out.append(f"| {name} | {s['visible']:.2f} / {r['visible']:.2f} | {s['x_mean']:.1f} ± {s['x_std']:.1f} "
                   f"| {r['x_mean']:.1f} ± {r['x_std']:.1f} | {s['y_mean']:.1f} ± {s['y_std']:.1f} "
                   f"| {r['y_mean']:.1f} ± {r['y_std']:.1f} |")
    out += ["", "| view (shoulder order, 6 px margin) | synthetic | real |", "|---|---|---|"]
    for k in ("front", "back", "side", "unclear"):
        out.append(f"| {k} | {synthetic['views'][k]:.1%} | {real['views'][k]:.1%} |")
    return "\n".join(out) + "\n"
