"""Model parts of PCDMs: the prior transformer, pose encoder and image projection (blocks.py), the frozen
encoders and image codec (encoders.py), the stages' UNets (unet.py)."""
