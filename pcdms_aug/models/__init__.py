"""Room ``models``: the networks of PCDMs. The prior transformer, pose encoder, image projection and patch
discriminator (``blocks``), the frozen encoders and image codec (``encoders``), the stages' UNets (``unet``).

May import ``utils``, ``config``, ``data`` and ``testing``.
"""
