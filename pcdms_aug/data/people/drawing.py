"""Drawing a person on the 4x canvas from a ``posegen`` skeleton: the torso and head as shaded surfaces whose
paint is fixed on the body, limbs and bags as lines and boxes, far parts first."""
from __future__ import annotations

import math

import cv2
import numpy as np

from pcdms_aug.data import posegen as pg
from pcdms_aug.data.people.looks import Look

SS = 4  # supersampling factor of the drawing
SHIFT = 3  # cv2 sub-pixel bits


def canvas_point(xy) -> tuple:
    """Image pixel coordinates (pixel centres at integers) -> fixed-point coordinates of the 4x canvas."""
    x, y = xy
    return (int(round(((x + 0.5) * SS - 0.5) * (1 << SHIFT))), int(round(((y + 0.5) * SS - 0.5) * (1 << SHIFT))))


def _poly(points) -> np.ndarray:
    return np.array([canvas_point(p) for p in points], np.int32)


def _shade(colour, factor) -> tuple:
    return tuple(float(min(255.0, c * factor)) for c in colour)


def _line(canvas, a, b, colour, width_px, factor=1.0):
    cv2.line(canvas, canvas_point(a), canvas_point(b), _shade(colour, factor), max(1, int(round(width_px * SS))), cv2.LINE_AA, SHIFT)


def _circle(canvas, c, radius_px, colour, factor=1.0):
    cv2.circle(canvas, canvas_point(c), int(round(radius_px * SS * (1 << SHIFT))), _shade(colour, factor), -1, cv2.LINE_AA,
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
