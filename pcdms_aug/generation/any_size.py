"""The pipeline over source crops of any sizes: every view comes back at its own source's size.

The pipeline takes one batch of sources of one size and an aspect ratio near its working size's, and resizes
them in and out itself. A batch of another kind (MSMT17's or CUHK03's crops of many sizes, a Duke crop wider
than 1:2) is stretched to the working size here, as torchreid stretches every crop to its input size, with its
poses scaled alike; each view is resized back to its source's size (PIL bicubic both ways, as the pipeline
does). A batch the pipeline takes as it is goes to it unchanged, so Market-1501's views are those of the plain
call.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from pcdms_aug.data.pose import Pose
from pcdms_aug.pipelines.image_processing import check_size


def _taken_as_is(pipe, sizes: set) -> bool:
    if len(sizes) != 1:
        return False
    try:
        check_size(next(iter(sizes)), pipe.image_size)
    except ValueError:
        return False
    return True


def call_any_size(pipe, sources: Sequence, source_poses: Sequence[Pose], target_poses: Sequence[Pose],
                  output_size: str = "source", **kwargs):
    """``pipe(sources, source_poses, target_poses, output_type="pil", **kwargs)`` for PIL sources of any sizes
    (one source for every target, or one per target); each Pose is in the pixels of the image it names (its
    ``size``). ``output_size`` "source": each pair's images at its source's size; "working": at the pipeline's."""
    from PIL import Image

    sizes = {(im.height, im.width) for im in sources}
    if _taken_as_is(pipe, sizes):
        return pipe(list(sources), list(source_poses), list(target_poses), output_type="pil",
                    output_size=output_size, **kwargs)
    h, w = pipe.image_size
    work = [im if (im.height, im.width) == (h, w) else im.resize((w, h), Image.BICUBIC) for im in sources]
    result = pipe(work, [p.scaled((h, w)) for p in source_poses], [p.scaled((h, w)) for p in target_poses],
                  output_type="pil", output_size="working", **kwargs)
    if output_size == "working":
        return result
    own = [sources[0] if len(sources) == 1 else sources[i] for i in range(len(target_poses))]

    def back(images):
        return [im if im.size == src.size else im.resize(src.size, Image.BICUBIC) for im, src in zip(images, own)]

    return replace(result, images=back(result.images), coarse_images=back(result.coarse_images))
