"""Shell blocks of the documentation (README.md and docs/**/*.md), and running them as a reader would.

A fenced block whose info string starts with `bash` or `console` holds commands: a bash block is a script, a console
block's commands are its lines after `$ ` (with their `\\` continuations; the other lines are output). `text` blocks
are synopses, never run. Words after the language in the info string:

    gpu-only     needs a CUDA GPU: not run by the tests, which list it as skipped
    exit=N[,M]   the statuses the block may end with (default 0); such a block holds one command, so that the
                 status is that command's
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND_LANGUAGES = ("bash", "console")
# Commands the tests never run, with the reason shown in their skip.
NOT_RUN = {
    "bash scripts/test.sh": "runs the whole test suite, this test included (CI runs it)",
    "bash scripts/bench.sh": "installs into .venv with pip, then runs the whole smoke preset; the `attnbench run` "
    "blocks run the same command on tiny grids",
}
_FENCE = re.compile(r"^```(\S*)(.*)$")


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    line: int  # line of the opening fence
    language: str
    flags: tuple[str, ...]
    body: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def commands(self) -> list[str]:
        """Each command, its continuation lines joined; comments and blank lines left out."""
        if self.language == "console":
            lines, found = self.body.splitlines(), []
            for i, line in enumerate(lines):
                if line.startswith("$ "):
                    command = [line[2:]]
                    while command[-1].endswith("\\") and i + len(command) < len(lines):
                        command.append(lines[i + len(command)])
                    found.append("\n".join(command))
            return found
        logical = re.sub(r"\\\n", " ", self.body).splitlines()
        return [line.strip() for line in logical if line.strip() and not line.strip().startswith("#")]

    @property
    def script(self) -> str:
        return "\n".join(self.commands) + "\n" if self.language == "console" else self.body

    @property
    def expected_statuses(self) -> tuple[int, ...]:
        for flag in self.flags:
            if flag.startswith("exit="):
                return tuple(int(status) for status in flag[len("exit=") :].split(","))
        return (0,)

    @property
    def gpu_only(self) -> bool:
        return "gpu-only" in self.flags

    @property
    def not_run_reason(self) -> str | None:
        """Why the tests do not run this block, or None where they do."""
        if self.gpu_only:
            return f"gpu-only: {self.commands[0] if self.commands else ''}"
        reasons = [NOT_RUN.get(command.split("#")[0].strip()) for command in self.commands]
        if reasons and all(reasons):
            return "; ".join(
                f"`{command.split('#')[0].strip()}`: {reason}" for command, reason in zip(self.commands, reasons)
            )
        return None


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def blocks(page: Path, root: Path = ROOT) -> list[Block]:
    """The command blocks of one markdown page, in order."""
    found, opening, body = [], None, []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        fence = _FENCE.match(line)
        if opening is None and fence:
            opening, body = (number, fence.group(1), tuple(fence.group(2).split())), []
        elif opening is not None and line.startswith("```"):
            number_open, language, flags = opening
            if language in COMMAND_LANGUAGES:
                found.append(Block(str(page.relative_to(root)), number_open, language, flags, "\n".join(body) + "\n"))
            opening = None
        elif opening is not None:
            body.append(line)
    return found


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [block for page in pages(root) for block in blocks(page, root)]


def venv_bin(root: Path = ROOT) -> Path:
    """The environment's bin folder: the repository's .venv, else the one running the tests."""
    local = root / ".venv" / "bin"
    return local if (local / "python").exists() else Path(sys.executable).parent


def fresh_copy(destination: Path, root: Path = ROOT) -> Path:
    """The repository's working tree as a checkout would have it (tracked and unignored files), with .venv linked."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True)
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            source = root / name
            if source.is_file():
                (destination / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination / name)
    else:  # not a git checkout (an unpacked archive): everything but environments and caches
        shutil.copytree(
            root,
            destination,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".benchmarks", "*.egg-info"),
        )
    (destination / ".venv").symlink_to(venv_bin(root).parent, target_is_directory=True)
    return destination


@dataclass(frozen=True)
class Outcome:
    status: int
    output: str
    seconds: float


def run(block: Block, workdir: Path, timeout_s: float = 300) -> Outcome:
    """The block in `workdir` under bash (-e, pipefail), with .venv/bin first on PATH and no GPU visible."""
    env = {
        **os.environ,
        "PATH": f"{workdir / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", block.script],
            cwd=workdir,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
        )
        return Outcome(done.returncode, done.stdout, time.monotonic() - started)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout if isinstance(expired.stdout, str) else (expired.stdout or b"").decode()
        return Outcome(124, output + f"\n(timed out after {timeout_s:g} s)", time.monotonic() - started)


def run_page(page_blocks: list[Block], workdir: Path) -> dict[str, Outcome]:
    """A page's runnable blocks in order, in one fresh copy, so that a block may use what an earlier one wrote."""
    fresh_copy(workdir)
    return {block.id: run(block, workdir) for block in page_blocks if block.not_run_reason is None}
