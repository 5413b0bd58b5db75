"""Images and poses in and out of the pipeline: sources to tensors at the working size, poses to Pose objects,
pose vectors and pose images, results back to the source's size and the caller's type.

PIL and uint8 inputs go through diffusers' ``VaeImageProcessor`` (PIL bicubic, as the training data was resized by
``pcdms_aug.data.market.load_image``); outputs through its ``postprocess`` (pil; np: float (N, H, W, 3) in
[0, 1]; pt: float (N, 3, H, W) in [0, 1]), so they are what a diffusers pipeline returns.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from pcdms_aug.data.images import rgb
from pcdms_aug.data.pose import NUM_JOINTS, Pose, as_pose, render_pose

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@functools.lru_cache(maxsize=1)
def image_processor():
    from diffusers.image_processor import VaeImageProcessor

    # vae_scale_factor 1: sizes are the pipeline's own, not rounded to a latent grid.
    return VaeImageProcessor(vae_scale_factor=1, resample="bicubic", do_normalize=True, do_convert_rgb=True)


def images_to_tensor(images, image_size) -> tuple[torch.Tensor, tuple[int, int]]:
    """Source images (PIL, uint8 (H, W, 3) arrays, or a float (B, 3, H, W) tensor in [-1, 1]) -> (N, 3, H, W)
    in [-1, 1] at ``image_size``, and their own (H, W)."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        x = images[None] if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"a source tensor must be float (B, 3, H, W) in [-1, 1], got {tuple(images.shape)} "
                             f"{images.dtype}")
        if x.shape[0] == 0:
            raise ValueError("no source images given")
        if float(x.min()) < -1.001 or float(x.max()) > 1.001:
            raise ValueError("a source tensor must hold values in [-1, 1]")
        size = tuple(x.shape[-2:])
        check_size(size, image_size)
        return resize(x, image_size), size
    imgs = [images] if isinstance(images, (Image.Image, np.ndarray)) else list(images)
    if not imgs:
        raise ValueError("no source images given")
    pils = []
    for im in imgs:
        if isinstance(im, np.ndarray):
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"a source array must be uint8 (H, W, 3), got {im.dtype} {im.shape}")
            im = Image.fromarray(im)
        elif not isinstance(im, Image.Image):
            raise ValueError(f"a source image must be a PIL image, a uint8 array or a tensor, got {type(im)}")
        pils.append(rgb(im)[0])  # any mode: 16-bit scaled, transparency over grey (data.images)
    sizes = sorted({(im.height, im.width) for im in pils})
    if len(sizes) != 1:
        raise ValueError(f"source images must share one size, got {sizes}")
    size = sizes[0]
    check_size(size, image_size)
    return image_processor().preprocess(pils, height=image_size[0], width=image_size[1]), size


def check_size(size, image_size) -> None:
    h, w = size
    exp_h, exp_w = image_size
    if h < 8 or w < 8 or abs(h / w - exp_h / exp_w) > 0.1 * exp_h / exp_w:
        raise ValueError(f"source images are {h}x{w} (height x width); this pipeline takes images with the "
                         f"aspect ratio of {exp_h}x{exp_w} (e.g. Market-1501's 128x64 crops)")


def as_poses(poses, size, what: str) -> list[Pose]:
    """Pose objects of images of ``size``: one Pose / (18, 2) array, or a sequence / (N, 18, 2) array."""
    if isinstance(poses, Pose) or (isinstance(poses, np.ndarray) and poses.ndim == 2):
        poses = [poses]
    elif isinstance(poses, torch.Tensor):
        poses = list(poses.detach().cpu().numpy()) if poses.dim() == 3 else [poses.detach().cpu().numpy()]
    out = []
    for p in poses:
        if not isinstance(p, Pose):
            arr = np.asarray(p, dtype=np.float32)
            if arr.shape != (NUM_JOINTS, 2):
                raise ValueError(f"{what} must be Pose objects or ({NUM_JOINTS}, 2) arrays of (x, y) pixels, "
                                 f"got shape {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"{what}: coordinates must be finite (-1 marks a missing joint)")
            p = arr
        out.append(as_pose(p, size))
    if not out:
        raise ValueError(f"no {what} given")
    return out


def unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Identical images (by content) kept once, and each row's index among them: a source repeated for many
    targets is encoded once."""
    keys, first, index = {}, [], []
    for i in range(x.shape[0]):
        k = hashlib.sha1(x[i].numpy().tobytes()).hexdigest()
        if k not in keys:
            keys[k] = len(first)
            first.append(i)
        index.append(keys[k])
    return x[first], index


def pose_vectors(poses: list[Pose], device, dtype) -> torch.Tensor:
    return torch.from_numpy(np.stack([p.vector() for p in poses])).to(device, dtype)


def pose_images(poses: list[Pose], image_size, device, dtype) -> torch.Tensor:
    """Skeletons rendered at ``image_size`` as the training data was, (N, 3, H, W) in [0, 1]."""
    arr = np.stack([render_pose(p, image_size) for p in poses])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device, dtype) / 255.0


def resize(images: torch.Tensor, size) -> torch.Tensor:
    """Float32 CPU images in [-1, 1] at ``size`` (bicubic)."""
    images = images.float().cpu()
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=tuple(size), mode="bicubic", align_corners=False)
    return images.clamp(-1, 1)


def postprocess(images: torch.Tensor, output_type: str):
    """Images in [-1, 1] (or latents, for ``"latent"``) as the caller asked: see the module docstring."""
    if output_type == "latent":
        return images
    return image_processor().postprocess(images, output_type=output_type)
