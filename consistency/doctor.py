"""`python -m consistency.doctor`: what this installation can do (consistency/cli/doctor.py)."""

import sys

from .cli.doctor import main

if __name__ == "__main__":
    sys.exit(main())
