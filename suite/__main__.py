"""`python -m suite` is the `attnbench` command."""

import sys

from .cli import main

sys.exit(main())
