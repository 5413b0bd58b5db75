"""Hostile inputs by class: images of every mode, configs that would exhaust the machine, counts out of range,
and every refusal one line naming its cause (docs/security.md lists the promises)."""
import io
import json
import shutil
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from pcdms_aug.cli.main import main
from pcdms_aug.data.images import open_rgb
from pcdms_aug.data.market import load_image
from pcdms_aug.utils.errors import DataError


def _one_error_line(err: str, command: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"pcdms-aug {command}: error:"), err
    assert "Traceback" not in err, err
    return lines[-1]


# ----------------------------------------------------------------------------------------- image modes
def _grey16(path, value):
    Image.fromarray(np.full((16, 8), value, np.uint16)).save(path)


def _transparent(mode):
    """A picture whose visible half is red and whose transparent half hides white."""
    rgba = np.zeros((16, 8, 4), np.uint8)
    rgba[:8] = (255, 0, 0, 255)
    rgba[8:] = (255, 255, 255, 0)
    im = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        return Image.fromarray(np.stack([np.asarray(im.convert("L")), rgba[..., 3]], -1), "LA")
    if mode == "P":
        return im.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    return im


@pytest.mark.parametrize("value,expected", [(0, 0), (32768, 128), (65535, 255), (1000, 4)])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path, value, expected):
    path = tmp_path / "a.png"
    _grey16(path, value)
    assert Image.open(path).mode.startswith("I")  # PIL reads it as 16-bit samples, convert("RGB") clips them
    im, note = open_rgb(path)
    assert np.asarray(im).shape == (16, 8, 3) and abs(int(np.asarray(im)[0, 0, 0]) - expected) <= 1
    assert "16-bit" in note


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_not_dropped(tmp_path, mode):
    im = _transparent(mode)
    if mode == "P":
        im.info["transparency"] = next(i for i, c in enumerate(im.getpalette()[::3]) if c == 255
                                       and im.getpalette()[3 * i + 1] == 255)
    path = tmp_path / "a.png"
    im.save(path, transparency=im.info["transparency"]) if mode == "P" else im.save(path)
    out = np.asarray(load_image(path))
    assert tuple(out[12, 4]) == (128, 128, 128), "a transparent pixel shows the grey background"
    assert out[2, 4, 0] > 70  # the visible half keeps its colour (red, or its grey in LA)


def test_cmyk_is_decoded_to_its_colours(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (8, 16), (200, 30, 30)).convert("CMYK").save(path, quality=100)
    out = np.asarray(load_image(path)).astype(int)
    assert np.abs(out[8, 4] - [200, 30, 30]).max() < 12


@pytest.mark.parametrize("mode,said", [("F", "floating-point"), ("LAB", "CIELAB")])
def test_modes_without_a_faithful_conversion_are_refused_by_name(tmp_path, mode, said):
    path = tmp_path / "a.tif"
    Image.new(mode, (8, 16)).save(path)
    with pytest.raises(DataError, match=f"image mode {mode} .*{said}") as e:
        load_image(path)
    assert e.value.path == str(path)


def _png_header_only(path, w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("w,h", [(14000, 14000), (20000, 1000), (5000, 4000)])
def test_a_huge_picture_is_refused_from_its_header(tmp_path, w, h):
    path = tmp_path / "0001_c1s1_000001_00.png"
    _png_header_only(path, w, h)
    t = time.perf_counter()
    with pytest.raises(DataError, match="too large for a person crop") as e:
        load_image(path)
    assert time.perf_counter() - t < 1 and e.value.path == str(path)


def test_inspect_reports_the_modes_it_converts(synth_market, tmp_path, capsys):
    root = tmp_path / "m"
    shutil.copytree(synth_market, root)
    first, second = sorted((root / "bounding_box_train").iterdir())[:2]
    _grey16(first.with_suffix(".png"), 30000)
    first.unlink()
    Image.open(second).convert("CMYK").save(second)
    assert main(["inspect", str(root), "--json"]) == 0
    modes = json.loads(capsys.readouterr().out)["converted_modes"]
    assert modes == {"CMYK: converted without a colour profile": 1, "I;16: 16-bit samples scaled to 8 bits": 1}
    main(["inspect", str(root)])
    assert "converted to RGB: 1 image(s) of mode I;16" in capsys.readouterr().out
