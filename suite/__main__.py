"""`python -m suite` is the `attnbench` command."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a worker process's start imports the run's main module
    sys.exit(main())
