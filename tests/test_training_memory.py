"""The training memory count that decides `gradient_checkpointing: auto`, and the attention kernels of our blocks."""
import pytest
import torch

from pcdms_aug.config.loading import load_config
from pcdms_aug.stages import build_stage
from pcdms_aug.training.memory import choose_checkpointing, largest_batch, meta_stage, step_memory
from pcdms_aug.utils.errors import DataError


@pytest.fixture(scope="module")
def fixture_cfgs(tmp_path_factory):
    from pcdms_aug.testing.paper_fixture import stage_overrides, write_folders

    root = tmp_path_factory.mktemp("weights")
    write_folders(root)
    return {n: load_config(f"paper/{n}.yaml", stage_overrides(root, stage=n)) for n in ("prior", "inpaint", "refine")}


def _counts(stage):
    return {n: sum(p.numel() for p in m.parameters()) for n, m in stage.components().items()}


def test_the_meta_stage_has_the_architectures_of_the_weight_folders(fixture_cfgs):
    """The plan is made for what trains: the folders' architectures (here reduced), not the inline paper ones."""
    for name, cfg in fixture_cfgs.items():
        assert _counts(meta_stage(name, cfg)) == _counts(build_stage(name, cfg)), name


def test_auto_checkpointing_is_off_when_the_step_fits_on_when_only_that_fits_and_refused_else(fixture_cfgs):
    cfg = fixture_cfgs["inpaint"]
    stage = meta_stage("inpaint", cfg)
    plain = step_memory(stage, 2, False, cached=True)
    ckpt = step_memory(stage, 2, True, cached=True)
    assert ckpt["total"] < plain["total"] and ckpt["largest_block_fp32"] > 0
    assert plain["frozen_weights"] == 0 and plain["cached"]  # the cache takes the frozen weights off the device
    assert choose_checkpointing("inpaint", cfg, 2, "cpu", True, budget=plain["total"] * 1.01)[0] is False
    assert choose_checkpointing("inpaint", cfg, 2, "cpu", True, budget=(plain["total"] + ckpt["total"]) / 2)[0]
    with pytest.raises(DataError, match=r"train.batch_size=2 does not fit cpu .* the largest batch that fits is 1"):
        choose_checkpointing("inpaint", cfg, 2, "cpu", True, budget=ckpt["total"] * 0.99)
    # the largest batch: the count grows linearly with the batch, so b fits and b + 1 does not
    budget = ckpt["total"] * 1.5
    b = largest_batch(stage, budget, True, cached=True)
    assert b >= 2 and step_memory(stage, b + 1, True, True)["total"] > budget


def test_every_attention_of_our_trainable_blocks_runs_pytorch_sdpa():
    """Flash / memory-efficient attention on a GPU: diffusers' AttnProcessor2_0 calls
    F.scaled_dot_product_attention; the prior transformer's blocks and the UNets' are diffusers Attention."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    seen = 0
    for name in ("prior", "inpaint", "refine"):
        stage = build_stage(name, load_config(f"tiny/{name}.yaml"))
        for comp in ("prior", "unet"):
            for module in getattr(stage, comp, torch.nn.Module()).modules():
                if isinstance(module, Attention):
                    assert isinstance(module.processor, AttnProcessor2_0), (name, comp)
                    seen += 1
    assert seen >= 3 * 2
