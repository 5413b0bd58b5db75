"""pcdms-aug: PCDMs (ICLR 2024) as a data-augmentation plugin for person re-identification."""
__version__ = "0.1.0"
__all__ = ["PCDMsPipeline", "Pose", "__version__"]


def __getattr__(name):
    # Lazy: `import pcdms_aug` for the pose toolkit or the CLI must not pay for torch/diffusers.
    if name == "PCDMsPipeline":
        from pcdms_aug.pipelines.pipeline import PCDMsPipeline
        return PCDMsPipeline
    if name == "Pose":
        from pcdms_aug.data.pose import Pose
        return Pose
    raise AttributeError(f"module 'pcdms_aug' has no attribute {name!r}")
