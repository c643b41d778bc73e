"""What a results row may say of itself: its statuses (the columns' schema joins them here)."""
from __future__ import annotations

STATUSES = ("ok", "mismatch", "unsupported", "oom", "error")
# Statuses a resumed run may measure again (`--resume --retry`): every failed or skipped row.
RETRYABLE = tuple(status for status in STATUSES if status != "ok")
