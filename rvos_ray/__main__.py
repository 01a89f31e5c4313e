"""``python -m rvos_ray <command> ...``: the same entry point as the ``rvos-ray`` script."""

import sys

from rvos_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
