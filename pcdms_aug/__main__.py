"""`python -m pcdms_aug COMMAND ...`: the same as the `pcdms-aug` command (torchrun needs a module)."""
import sys

from pcdms_aug.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
