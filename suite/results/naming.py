"""File-name-safe words for results files, report folders and charts."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS_DIR = Path("results")  # where results files go without --out, and where `recommend` looks


def slug(*parts: object) -> str:
    """Lower-case letters and digits, every other run of characters one hyphen: 'NVIDIA H100 80GB', 'bf16' ->
    'nvidia-h100-80gb-bf16'."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(part) for part in parts).lower()).strip("-")
