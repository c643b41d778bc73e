"""Every `--help` renders, and answers without importing the heavy libraries a command needs when it runs."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from suite.cli import _parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommands_help_renders_and_exits_0(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert f"usage: attnbench {name}" in capsys.readouterr().out


def test_the_tools_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in _subcommands())


def test_help_imports_neither_torch_nor_pandas_nor_matplotlib():
    # A fresh interpreter: this test process has imported torch already. torch alone takes over a second.
    probe = (
        "import sys\nfrom suite.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    for argv in ([], *([name] for name in _subcommands())):
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv, "--help"], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip().splitlines()[-1] == "[]", (argv, done.stdout[-300:])
