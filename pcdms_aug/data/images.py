"""How an image file becomes the RGB picture every command works on, whatever its mode.

PIL's ``convert("RGB")`` alone is wrong for some modes: 16-bit samples are clipped (a 16-bit grayscale photo
turns pure white) and transparent pixels keep whatever colour they hold under the alpha. Here 16-bit samples
are scaled to 8 bits, transparency is composited over neutral grey (the middle of the models' [-1, 1] range),
CMYK goes through its embedded colour profile when it has one; modes without a faithful conversion are refused
by name. ``inspect`` reports the same notes (:func:`rgb`), so what it says is what the commands do.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pcdms_aug.utils.errors import DataError

# A person crop is a few hundred pixels a side; a larger "source" is refused before its pixels are decoded
# (a 14000x14000 file would take gigabytes to decode only to be resized to 128x64).
MAX_PIXELS = 4096 * 4096
BACKGROUND = (128, 128, 128)
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA = ("RGBA", "LA", "PA", "RGBa")
PLAIN = ("RGB", "L", "1", "P", "RGBX", "YCbCr", "HSV")
REFUSED = {"F": "floating-point samples", "LAB": "CIELAB colour"}


def check_size(im: Image.Image, path: str | Path | None) -> None:
    """Refuse a picture too large for a person crop, from its header (nothing decoded yet)."""
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise DataError(f"image is {h}x{w} pixels: too large for a person crop (at most {MAX_PIXELS} pixels)",
                        path)


def rgb(im: Image.Image, path: str | Path | None = None) -> tuple[Image.Image, str | None]:
    """``im`` as 8-bit RGB and a note saying how it was converted (None: it was RGB, or plain 8-bit)."""
    try:
        return _rgb(im, path)
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"image mode {im.mode} cannot be converted to RGB ({e})", path) from None


def _rgb(im: Image.Image, path: str | Path | None) -> tuple[Image.Image, str | None]:
    mode = im.mode
    if mode in REFUSED:
        raise DataError(f"image mode {mode} ({REFUSED[mode]}) has no faithful RGB conversion here; save it as "
                        "8-bit RGB", path)
    if mode == "RGB":
        return im, None
    if mode in SIXTEEN_BIT:
        a = np.asarray(im, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"image mode {mode} holds samples outside 0..65535; save it as 8-bit RGB", path)
        grey = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
        return grey.convert("RGB"), f"{mode}: 16-bit samples scaled to 8 bits"
    if mode in ALPHA or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        out.alpha_composite(rgba)
        return out.convert("RGB"), f"{mode}: transparency composited over grey {BACKGROUND}"
    if mode == "CMYK":
        profile = im.info.get("icc_profile")
        if profile:
            import io

            from PIL import ImageCms

            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
                return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB"), \
                    "CMYK: converted through its colour profile"
            except (ImageCms.PyCMSError, OSError) as e:
                raise DataError(f"CMYK image with an unreadable colour profile ({e})", path) from None
        return im.convert("RGB"), "CMYK: converted without a colour profile"
    if mode in PLAIN:
        return im.convert("RGB"), None
    raise DataError(f"image mode {mode} is not decoded here; save it as 8-bit RGB", path)


def open_rgb(path: str | Path) -> tuple[Image.Image, str | None]:
    """Decode an image file to RGB (see :func:`rgb`), failing with the file named."""
    from PIL import UnidentifiedImageError

    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused by check_size below
            im = Image.open(path)
        with im:
            check_size(im, path)
            im.load()
            return rgb(im, path)
    except FileNotFoundError:
        raise DataError("image not found", path) from None
    except Image.DecompressionBombError:
        raise DataError(f"image too large for a person crop (at most {MAX_PIXELS} pixels)", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"unreadable image ({e.__class__.__name__}: {e})", path) from None
