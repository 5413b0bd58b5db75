"""Model parts of PCDMs (see blocks.py and encoders.py)."""
