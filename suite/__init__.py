"""attnbench's harness: cases and grids, timing, memory, accuracy, results and the command line."""

from __future__ import annotations

__version__ = "0.1.0"
