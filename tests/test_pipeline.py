import numpy as np
import pytest
import torch
from PIL import Image

from pcdms_aug import PCDMsPipeline
from pcdms_aug.errors import DataError
from pcdms_aug.pose import Pose

STEPS = {"prior": 2, "inpaint": 2, "refine": 2}


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return PCDMsPipeline.from_config("tiny/pipeline.yaml", seed=0)


def _pose(seed):
    rng = np.random.default_rng(seed)
    xy = np.stack([rng.uniform(5, 59, 18), rng.uniform(5, 123, 18)], 1)
    xy[14] = -1
    return xy


def _image(seed, size=(128, 64)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def test_end_to_end_pil_at_source_size(pipe):
    out = pipe([_image(0), _image(1)], [_pose(0), _pose(1)], [_pose(2), _pose(3)], num_inference_steps=STEPS,
               generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 2 and out.images[0].size == (64, 128)
    assert len(out.coarse_images) == 2 and out.coarse_images[0].size == (64, 128)
    big = pipe(_image(0, (256, 128)), _pose(0) * 2, [_pose(2) * 2], num_inference_steps=STEPS)
    assert big.images[0].size == (128, 256)


def test_same_generator_same_pixels_and_batching_does_not_matter(pipe):
    srcs, sps, tps = [_image(i) for i in range(3)], [_pose(i) for i in range(3)], [_pose(10 + i) for i in range(3)]
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(3)]  # noqa: E731
    a = pipe(srcs, sps, tps, num_inference_steps=STEPS, generator=gens(), output_type="np")
    b = pipe(srcs, sps, tps, num_inference_steps=STEPS, generator=gens(), output_type="np")
    assert np.array_equal(a.images, b.images)
    one = pipe(srcs[2:], sps[2:], tps[2:], num_inference_steps=STEPS, generator=gens()[2:], output_type="np")
    small = pipe(srcs, sps, tps, num_inference_steps=STEPS, generator=gens(), output_type="np", batch_size=1)
    assert np.abs(a.images[2].astype(int) - one.images[0].astype(int)).max() <= 1
    assert np.abs(a.images.astype(int) - small.images.astype(int)).max() <= 1


def test_one_source_many_targets_is_encoded_once(pipe, monkeypatch):
    calls = []
    for name, stage in pipe.stages.items():
        orig = stage.encode_source

        def counted(images, _orig=orig, _name=name):
            calls.append((_name, images.shape[0]))
            return _orig(images)
        monkeypatch.setattr(stage, "encode_source", counted)
    out = pipe(_image(0), _pose(0), [_pose(i) for i in range(5)], num_inference_steps=STEPS, batch_size=2)
    assert len(out.images) == 5
    assert sorted(calls) == [("inpaint", 1), ("prior", 1), ("refine", 1)]


def test_guidance_schedulers_and_stage_subsets(pipe):
    for sched in ("ddim", "unipc", "dpmsolver++"):
        for g in (1.0, 3.0):
            out = pipe(_image(0), _pose(0), [_pose(1)], num_inference_steps=STEPS, guidance_scale=g,
                       scheduler=sched, output_type="pt")
            assert out.images.shape == (1, 3, 128, 64)
    two = pipe(_image(0), _pose(0), [_pose(1)], num_inference_steps=STEPS, stages=("prior", "inpaint"),
               output_type="pt", generator=torch.Generator().manual_seed(0))
    assert torch.equal(two.images, two.coarse_images)
    emb = two.target_embeds
    forced = pipe(_image(0), _pose(0), [_pose(1)], num_inference_steps=STEPS, stages=("inpaint",),
                  target_embeds=emb, output_type="pt")
    assert forced.images.shape == (1, 3, 128, 64)


def test_bad_inputs_raise_value_error(pipe):
    with pytest.raises(ValueError, match=r"\(18, 2\)"):
        pipe(_image(0), np.zeros((17, 2)), [_pose(1)], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="2 source images for 3 target poses"):
        pipe([_image(0), _image(1)], [_pose(0), _pose(1)], [_pose(1)] * 3, num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="aspect ratio"):
        pipe(_image(0, (64, 64)), _pose(0), [_pose(1)], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="share one size"):
        pipe([_image(0), _image(1, (256, 128))], [_pose(0), _pose(1)], [_pose(1)] * 2)
    with pytest.raises(ValueError, match="scheduler"):
        pipe(_image(0), _pose(0), [_pose(1)], scheduler="euler")
    with pytest.raises(ValueError, match="target_embeds"):
        pipe(_image(0), _pose(0), [_pose(1)], stages=("inpaint",))
    with pytest.raises(ValueError, match="generators"):
        pipe(_image(0), _pose(0), [_pose(1)], generator=[torch.Generator()] * 2)


def test_pose_objects_are_scaled_to_the_source(pipe):
    p = Pose.from_array(_pose(1), (128, 64))
    a = pipe(_image(0), p, [p], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
             output_type="np")
    b = pipe(_image(0), _pose(1), [_pose(1)], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
             output_type="np")
    assert np.array_equal(a.images, b.images)


def test_save_and_from_pretrained(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    back = PCDMsPipeline.from_pretrained(tmp_path / "p")
    kw = dict(num_inference_steps=STEPS, output_type="np")
    a = pipe(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(1), **kw)
    b = back(_image(0), _pose(0), [_pose(1)], generator=torch.Generator().manual_seed(1), **kw)
    assert np.array_equal(a.images, b.images)
    with pytest.raises(DataError, match="pipeline.json missing"):
        PCDMsPipeline.from_pretrained(tmp_path)
