"""Whatever an implementation raises is its row's, `BaseException`s too (a kernel's SystemExit(0) once ended a run
silently with exit status 0); only Ctrl-C or SIGTERM sent to the process stops a run, a check or an amendment."""

from __future__ import annotations

import os
import signal
import time

import pytest

import implementations
from implementations import Implementation
from suite import api
from suite.cli import main
from suite.measure.stop_signals import NOT_A_STOP
from suite.results import files as results
from suite.run.in_flight import InFlight
from tests.conftest import sdpa


class OwnStop(BaseException):
    """A library's own BaseException, as some raise to unwind."""


def _grid(impl: str) -> list[str]:
    return [
        *("--impl", f"naive,{impl}", "--seq-len", "17,33,65", "--heads", "1", "--batch", "1", "--head-dim", "16"),
        *("--dtype", "float32", "--mode", "fwd", "--no-causal", "--device", "cpu", "--timing", "max_repeats=7"),
    ]


@pytest.mark.parametrize(
    "error", [SystemExit(0), GeneratorExit(), OwnStop("unwinding"), KeyboardInterrupt()], ids=lambda e: type(e).__name__
)
def test_whatever_a_kernel_raises_is_its_row_and_the_run_goes_on(tmp_path, fake_registry, capsys, error):
    """An `error` row naming the exception, the rows after it measured, and the exit status of any run with an
    error row: no silent end, and nothing for `--resume` to run into again."""
    fake_registry("raises", fail_on_seq_len=33, error=error)
    out = tmp_path / "r.jsonl"
    assert main(["run", *_grid("raises"), "--out", str(out)]) == 0
    rows = {(row["impl"], row["seq_len"]): row for row in results.read(out)[1]}
    assert len(rows) == 6, sorted(rows)
    failed = rows.pop(("raises", 33))
    assert failed["status"] == "error" and type(error).__name__ in failed["reason"] and NOT_A_STOP in failed["reason"]
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert not InFlight(out).path.exists()
    assert f"results: {out}" in capsys.readouterr().out


class SignalledAt33(Implementation):
    """Correct attention that, at 33 tokens, is sent `signal_number` (as by Ctrl-C or `kill`) while it runs, and
    lets the interrupt through, swallows it, or turns it into a RuntimeError (`then`: raise, swallow or wrap)."""

    def __init__(self, name: str, signal_number: int = signal.SIGINT, then: str = "raise", **options):
        super().__init__(name, **options)
        self.signal_number, self.then = signal_number, then

    def __call__(self, q, k, v, *, causal=False):
        if q.shape[-2] == 33:
            try:
                os.kill(os.getpid(), self.signal_number)
                time.sleep(5)  # the handler raises within it
            except KeyboardInterrupt:
                if self.then == "raise":
                    raise
                if self.then == "wrap":
                    raise RuntimeError("the kernel's own error, after Ctrl-C") from None
        return sdpa(q, k, v, causal=causal)


@pytest.mark.parametrize(
    "signal_number,then,status,word",
    [
        (signal.SIGINT, "raise", 130, "interrupted"),
        (signal.SIGINT, "wrap", 130, "interrupted"),
        (signal.SIGINT, "swallow", 130, "interrupted"),
        (signal.SIGTERM, "wrap", 143, "terminated (SIGTERM)"),
    ],
)
def test_ctrl_c_and_sigterm_stop_the_run_whatever_the_kernel_makes_of_them(
    tmp_path, monkeypatch, capsys, signal_number, then, status, word
):
    """The row they interrupt is not written (a resume measures it), whether the kernel lets the interrupt through,
    swallows it or raises another exception instead."""
    monkeypatch.setitem(
        implementations.REGISTRY, "signalled", lambda name, **o: SignalledAt33(name, signal_number, then, **o)
    )
    out = tmp_path / "r.jsonl"
    assert main(["run", *_grid("signalled"), "--in-process", "--out", str(out)]) == status
    assert f"{word}: every finished row is in {out}" in capsys.readouterr().err
    assert [(row["impl"], row["seq_len"]) for row in results.read(out)[1]] == [
        ("naive", 17),
        ("signalled", 17),
        ("naive", 33),
    ]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored after the run
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _exits_at_33(q, k, v, *, causal=False):
    if q.shape[-2] == 33:
        raise SystemExit(0)
    return sdpa(q, k, v, causal=causal)


def test_a_kernels_system_exit_is_a_row_through_the_api_too(tmp_path):
    """The calling script gets its rows, the failed one among them, instead of exiting 0 in the middle."""
    frame = api.benchmark(
        [api.as_implementation(_exits_at_33, "exits"), "naive"],
        seq_len=[17, 33, 65],
        heads=1,
        head_dim=16,
        batch=1,
        device="cpu",
        timing={"max_repeats": 7},
        progress=False,
        out=tmp_path / "r.jsonl",
    )
    statuses = {(row.impl, row.seq_len): row.status for row in frame.itertuples()}
    assert statuses.pop(("exits", 33)) == "error" and set(statuses.values()) == {"ok"} and len(statuses) == 5
    assert "SystemExit: 0" in frame.set_index(["impl", "seq_len"]).loc[("exits", 33), "reason"]
    assert results.read(tmp_path / "r.jsonl")[0][0]["planned_rows"] == 6  # and all six are there: complete


def test_a_kernels_system_exit_is_a_finding_of_check(fake_registry, capsys):
    fake_registry("raises", fail_on_seq_len=17, error=SystemExit(0))
    assert main(["check", "--impl", "raises", "--device", "cpu", "--dtype", "float32"]) == 1
    printed = capsys.readouterr().out
    assert "raises: FAILED" in printed and "ERROR B3-H2-N17-D64-fp32-dense-fwd+bwd seed" in printed
    assert f"SystemExit: 0{NOT_A_STOP}" in printed
    summary = api.check("raises", "cpu", "float32")
    assert not summary.ok and summary.count("error") > 0 and summary.count("pass") > 0
