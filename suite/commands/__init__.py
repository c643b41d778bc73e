"""The subcommands of `attnbench`: one module each, owning its arguments (`add_to`) and its handler (`handle`).

Declaring arguments imports neither torch, pandas nor matplotlib, so that `--help` answers at once; a handler
imports what it needs when its command runs.
"""

from __future__ import annotations

from . import check, compare, env, listing, local_errors, profile, recommend, report, run, runs

# In the order `attnbench --help` lists them.
COMMANDS = (listing, env, run, check, local_errors, runs, report, compare, recommend, profile)
