"""`attnbench profile`: torch.profiler over the timed call only, with clear refusals."""

from __future__ import annotations

import json
import os
import re

import pytest

import implementations
from suite.case import Case
from suite.cli import main
from suite.measure.quiet_profiler import start_quietly, stop_quietly
from suite.run.profiling import profile_case

SMALL = ["--seq-len", "100", "--heads", "2", "--head-dim", "16", "--device", "cpu"]


def test_profile_marks_one_region_per_profiled_call(tmp_path):
    trace = tmp_path / "trace.json"
    case = Case(1, 2, 100, 16, "float32", True, "fwd+bwd", "cpu")
    result = profile_case(implementations.get("linear"), case, calls=4, trace=trace)
    events = json.loads(trace.read_text())["traceEvents"]
    marked = [e for e in events if e.get("name") == "attnbench: linear fwd+bwd"]
    assert len(marked) == 4
    assert result.first_call_ms > 0
    assert "aten::bmm" in result.table or "aten::matmul" in result.table


def test_profile_command_prints_the_heaviest_operators(tmp_path, capsys):
    trace = tmp_path / "t.json"
    assert (
        main(
            [
                "profile",
                "--impl",
                "performer:features=32",
                *SMALL,
                "--mode",
                "fwd",
                "--rows",
                "5",
                "--trace",
                str(trace),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("profile of performer:features=32 on B1-H2-N100-D16-fp32-dense-fwd: 3 timed calls")
    assert "Self CPU" in out and "aten::" in out
    assert str(trace) in out and trace.is_file()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--impl", "linear-fla", *SMALL], r"linear-fla cannot run B1-H2-N100-D16-fp32-dense-fwd: device=cpu"),
        (["--impl", "naive,sdpa", *SMALL], r"--impl: 'naive,sdpa' names 2 implementations \(allowed: exactly one\)"),
        (["--impl", "naive", *SMALL, "--causal", "both"], r"--causal: 'both' is not allowed here"),
        (["--impl", "naive", *SMALL, "--kv-heads", "3"], r"--kv-heads: 3 does not divide --heads 2"),
        (["--impl", "naive", *SMALL, "--calls", "0"], r"--calls: '0' is not a positive integer"),
        (
            ["--impl", "naive", *SMALL, "--seq-len", "100,200"],
            r"--seq-len: 2 values given \(100, 200\) \(allowed: exactly one\)",
        ),
        (["--impl", "naive", *SMALL, "--rows", "5,10"], r"--rows: 2 values given"),
        (["--impl", "performer:features=0", *SMALL], r"features='0' must be a positive integer"),
    ],
)
def test_bad_profile_input_exits_2(capsys, flags, message):
    assert main(["profile", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnbench: error: ")
    assert re.search(message, err[0]), err[0]


class _LoggingProfiler:
    """Stands in for a profiler (torch.profiler's or autograd's): logs from C++'s file descriptor 2, as kineto does."""

    def __enter__(self) -> None:
        os.write(
            2,
            b"USDT:2026-11-27 18:26:00 9705:9705 SyncActivityProfilerHandler.cpp:52] profiler_start\n"
            b"WARNING: CUPTI_ERROR_INSUFFICIENT_PRIVILEGES: no GPU activity will be recorded\n",
        )

    def __exit__(self, *exception) -> None:
        os.write(2, b"USDT:2026-11-27 18:26:00 9705:9705 SyncActivityProfilerHandler.cpp:59] profiler_stop\n")


def test_the_profilers_routine_lines_are_dropped_and_its_warnings_kept(capfd):
    profiler = _LoggingProfiler()
    start_quietly(profiler)
    stop_quietly(profiler)
    assert capfd.readouterr().err == "WARNING: CUPTI_ERROR_INSUFFICIENT_PRIVILEGES: no GPU activity will be recorded\n"
