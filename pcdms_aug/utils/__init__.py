"""Room ``utils``, the ground floor: what every other room leans on. The one error type (``errors``), atomic
outputs and folder locks (``io``), where names and outputs may point (``paths``), device, dtype, seeding and
ranks (``runtime``), the safe reader of PyTorch pickle files (``torchfile``), argparse value types
(``argtypes``).

Imports nothing of pcdms_aug outside this room.
"""
