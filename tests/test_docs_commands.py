"""Every command block of README.md and docs/ runs as documented (see tests/doc_blocks.py for the fence markers).

Each page's blocks run in order in a fresh copy of the repository, with .venv/bin on PATH; pages run side by side.
A block exits 0, or with a status its fence names; `gpu-only` blocks and the set-up scripts are skipped, each with
its reason.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import doc_blocks

BLOCKS = doc_blocks.all_blocks()


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, doc_blocks.Outcome]:
    """Runs the pages of the blocks this session selected, each in its own copy, several at a time."""
    selected = {
        item.callspec.params["block"].page
        for item in request.session.items
        if item.originalname == "test_documented_command_runs" and hasattr(item, "callspec")
    }
    by_page = {page: [b for b in BLOCKS if b.page == page] for page in sorted(selected)}
    if not (doc_blocks.venv_bin() / "attnbench").exists():
        pytest.skip(f"no attnbench in {doc_blocks.venv_bin()}: run `bash scripts/setup-venv.sh` first")
    workdirs = {page: tmp_path_factory.mktemp(Path(page).stem) for page in by_page}
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(by_page)))) as pool:
        done = pool.map(lambda page: doc_blocks.run_page(by_page[page], workdirs[page]), by_page)
        return {block_id: outcome for results in done for block_id, outcome in results.items()}


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_documented_command_runs(block: doc_blocks.Block, outcomes):
    if block.not_run_reason:
        pytest.skip(f"{block.id} not run here: {block.not_run_reason}")
    outcome = outcomes[block.id]
    assert outcome.status in block.expected_statuses, (
        f"{block.id} exited {outcome.status} (documented: {', '.join(map(str, block.expected_statuses))}) after "
        f"{outcome.seconds:.0f} s\n--- script\n{block.script}--- output (end)\n{outcome.output[-4000:]}"
    )


def test_blocks_that_allow_a_failing_status_hold_one_command():
    """Otherwise an earlier command's failure would pass for the documented status of the last one."""
    several = [block.id for block in BLOCKS if block.expected_statuses != (0,) and len(block.commands) != 1]
    assert not several


def test_a_broken_command_fails_its_block(tmp_path):
    page = tmp_path / "README.md"
    page.write_text(
        "```bash\ntrue\nfalse\ntrue\n```\n\n```console exit=3\n$ echo ok\nok\n```\n\n"
        "```text\nnot a command\n```\n\n```console\n$ exit 3\n```\n\n```bash gpu-only\nnvidia-smi\n```\n"
    )
    found = doc_blocks.blocks(page, tmp_path)
    assert [(b.line, b.language, b.expected_statuses) for b in found] == [
        (1, "bash", (0,)),
        (7, "console", (3,)),
        (16, "console", (0,)),
        (20, "bash", (0,)),
    ]
    assert found[3].not_run_reason == "gpu-only: nvidia-smi"
    statuses = [doc_blocks.run(block, tmp_path).status for block in found[:3]]
    assert statuses[0] != 0  # `false` stops the script: bash -e
    assert statuses[1] not in found[1].expected_statuses  # exit 0 where 3 is documented
    assert statuses[2] == 3


def test_setup_scripts_are_listed_as_not_run():
    readme_reasons = {block.commands[0]: block.not_run_reason for block in BLOCKS if block.page == "README.md"}
    assert "CI runs it" in readme_reasons["bash scripts/test.sh"]
    assert "pip" in readme_reasons["bash scripts/bench.sh"]
