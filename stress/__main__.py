"""`python -m stress`: the load generator's entry point (see stress/README.md)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
