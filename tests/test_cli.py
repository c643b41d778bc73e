"""The command line: bad input exits 2 with one clear line and writes nothing; good input runs."""

from __future__ import annotations

import contextlib
import json
import re

import pytest
import torch

from suite.cli import main
from suite.measure import failures
from suite.results import files as results
from tests.results_files import rewrite_headers, rewrite_rows

TINY = [
    "--impl",
    "naive,sdpa-cudnn",
    "--seq-len",
    "17",
    "--heads",
    "1",
    "--batch",
    "1",
    "--head-dim",
    "16",
    "--dtype",
    "float32",
    "--mode",
    "fwd",
    "--device",
    "cpu",
]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--seq-len", "0"], r"--seq-len: '0' is not a positive integer \(allowed: integers >= 1\)"),
        (["--seq-len", "-5"], r"--seq-len: '-5' is not a positive integer"),
        (["--seq-len", "12.5"], r"--seq-len: '12.5' is not a positive integer"),
        (["--seq-len", "128,,256"], r"--seq-len: '128,,256' has an empty item"),
        (["--heads", "many"], r"--heads: 'many' is not a positive integer"),
        (["--impl", "flashy"], r"--impl: unknown implementation 'flashy' \(valid: .*sdpa-flash"),
        (["--impl", "naive:window"], r"--impl: option 'window' in 'naive:window' is not KEY=VALUE"),
        (["--impl", "sdpa:window=3"], r"--impl: sdpa: unknown option 'window' \(allowed: none\)"),
        (
            ["--impl", "performer:features=64:features=32"],
            r"--impl: option 'features' is given twice in 'performer:features=64:features=32' \(allowed: once\)",
        ),
        (["--impl", "flash*"], r"--impl: 'flash\*' matches no implementation \(known: reference, naive, sdpa"),
        (["--impl", "sparse-*:window=3"], r"--impl: sparse-block: unknown option 'window'"),
        (["--dtype", "float8"], r"--dtype: unknown dtype 'float8' \(allowed: float16, bfloat16, float32\)"),
        (["--mode", "sideways"], r"--mode: unknown mode 'sideways' \(allowed: fwd, bwd, fwd\+bwd\)"),
        (["--causal", "maybe"], r"--causal: 'maybe' is not allowed \(allowed: true, false, both\)"),
        (["--device", "tpu"], r"--device: unknown device 'tpu' \(allowed: cpu, cuda\)"),
        (
            ["--preset", "huge"],
            r"--preset: unknown preset 'huge' \(allowed: smoke, quick, default, efficient, long, decode, varlen\)",
        ),
        (
            ["--timing", "repeats=20"],
            r"--timing: unknown key 'repeats' \(allowed: warmup_calls, min_repeats, max_repeats, ",
        ),
        (["--timing", "min_repeats"], r"--timing: 'min_repeats' is not KEY=VALUE"),
        (["--timing", "min_repeats=0"], r"--timing: min_repeats='0' is not allowed \(allowed: an integer >= 1: "),
        (["--timing", "min_repeats=2.5"], r"--timing: min_repeats='2.5' is not allowed \(allowed: an integer >= 1"),
        (["--timing", "budget_s=0"], r"--timing: budget_s='0' is not allowed \(allowed: a number > 0: "),
        (["--timing", "budget_s=nan"], r"--timing: budget_s='nan' is not allowed"),
        (
            ["--timing", "target_relative_ci=-0.1"],
            r"--timing: target_relative_ci='-0.1' is not allowed \(allowed: a number >= 0",
        ),
        (["--timing", "max_repeats=3"], r"--timing: max_repeats 3 is below min_repeats 7 \(allowed: max_repeats >= "),
        (["--timing", "warmup_calls=1,warmup_calls=2"], r"--timing: 'warmup_calls' is given twice in "),
        (["--timing", ""], r"--timing: '' has an empty item"),
        (["--threads", "0"], r"--threads: '0' is not a positive integer \(allowed: integers >= 1\)"),
        (["--threads=-2"], r"--threads: '-2' is not a positive integer \(allowed: integers >= 1\)"),
        (["--threads", "1.5"], r"--threads: '1.5' is not a positive integer \(allowed: integers >= 1\)"),
        (["--threads", "all"], r"--threads: 'all' is not a positive integer \(allowed: integers >= 1\)"),
        (["--threads", "1,2"], r"--threads: 2 values given \(1, 2\) \(allowed: exactly one\)"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "r.jsonl"
    assert main(["run", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("attnbench: error: ")
    assert re.search(message, err), err
    assert not out.exists()


def test_wildcards_name_every_implementation_they_match_in_registry_order():
    from suite.run.config import impl_specs

    assert impl_specs("--impl", "sdpa-*,naive") == ("sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "naive")
    assert impl_specs("--impl", "sparse-*,perf*:features=8") == (
        "sparse-window",
        "sparse-block",
        "performer:features=8",
    )
    everything = impl_specs("--impl", "*")
    assert "reference" not in everything and "naive" in everything and "performer" in everything
    assert impl_specs("--impl", "reference") == ("reference",)  # the float64 oracle only when named
    assert impl_specs("--impl", "naive,na?ve") == ("naive",)  # named twice: measured once


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_asked_for_without_cuda(tmp_path, capsys):
    assert main(["run", "--device", "cuda", "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "'cuda' was asked for but no CUDA device is available" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize(
    "content,message",
    [
        (None, r"--config: cannot read"),
        ("seq_len = [", r"--config: cannot read .*grid.toml"),
        ("seq_lens = [128]", r"--config: unknown key 'seq_lens'"),
        ("seq_len = [0]", r"--seq-len: '0' is not a positive integer"),
    ],
)
def test_unreadable_config_exits_2(tmp_path, capsys, content, message):
    config = tmp_path / "grid.toml"
    if content is not None:
        config.write_text(content)
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "r.jsonl")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "r.jsonl").exists()


def test_existing_out_without_resume_is_refused(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    out.write_text("")
    assert main(["run", *TINY, "--out", str(out)]) == 2
    assert "already exists (use --resume" in capsys.readouterr().err


def test_run_prints_a_table_and_writes_rows(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--causal", "both", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "B1-H1-N17-D16-fp32-dense-fwd" in printed and "B1-H1-N17-D16-fp32-causal-fwd" in printed
    assert "unsupp." in printed and f"results: {out}" in printed
    frame = results.load(out)
    assert sorted(frame.status) == ["ok", "ok", "unsupported", "unsupported"]
    header = json.loads(out.read_text().splitlines()[0])
    assert header["record"] == "run" and header["environment"]["torch"] == torch.__version__

    # --resume on a finished file runs nothing and keeps it intact
    assert main(["run", *TINY, "--causal", "both", "--out", str(out), "--resume"]) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert len(results.load(out)) == 4


@pytest.mark.parametrize("torn", [True, False])
def test_resume_after_a_kill_mid_write_keeps_the_file_readable(tmp_path, torn):
    """A killed run can leave its last line without a newline: torn (cut off, readers skip it anyway) or
    complete. Appending must not join the next record to it."""
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--causal", "both", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    last = lines[-1][: len(lines[-1]) // 2] if torn else lines[-1]
    out.write_text("\n".join(lines[:-1] + [last]))  # no newline at the end
    with pytest.warns(UserWarning, match="incomplete last line") if torn else contextlib.nullcontext():
        # one more length, so that rows are appended either way (the torn row's case runs again)
        assert main(["run", *TINY, "--seq-len", "17,20", "--causal", "both", "--out", str(out), "--resume"]) == 0
    frame = results.load(out)
    assert len(frame) == 8 and frame.status.notna().all()


def _as_if_naive_dense_ran_out_of_memory(row: dict) -> dict:
    if row["impl"] == "naive" and not row["causal"]:
        return {**row, "status": "oom", "reason": "CUDA out of memory (injected)", "time_ms": None}
    return row


def test_resume_with_retry_runs_failed_cases_again_and_the_new_row_replaces_the_old(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--causal", "both", "--out", str(out)]) == 0
    rewrite_rows(out, _as_if_naive_dense_ran_out_of_memory)
    lines = out.read_text().splitlines()
    assert main(["run", *TINY, "--causal", "both", "--out", str(out), "--resume"]) == 0
    assert "nothing to run" in capsys.readouterr().out  # without --retry, a failed row counts as done

    assert main(["run", *TINY, "--causal", "both", "--out", str(out), "--resume", "--retry", "oom,error"]) == 0
    assert "3 rows already there" in capsys.readouterr().err  # the out-of-memory row is not among them
    frame = results.load(out)
    assert len(frame) == 4 and sorted(frame.status) == ["ok", "ok", "unsupported", "unsupported"]
    naive = frame[frame.impl == "naive"]
    assert naive.time_ms.notna().all() and len(out.read_text().splitlines()) == len(lines) + 2  # header + new row
    # the replacing row keeps the replaced one's place
    assert list(frame.impl) == [json.loads(line)["impl"] for line in lines if '"result"' in line]


def test_a_run_stopped_by_an_unusable_device_exits_1_and_resume_runs_the_rest(
    tmp_path, capsys, monkeypatch, fake_registry
):

    fake_registry("crashing", fail_on_seq_len=33, error=RuntimeError("CUDA error: an illegal memory access"))
    out = tmp_path / "r.jsonl"
    grid = ["--impl", "crashing,naive", "--seq-len", "17,33,65", "--causal", "false", *TINY[4:]]
    grid.append("--in-process")  # where device_usable is replaced
    monkeypatch.setattr(failures, "device_usable", lambda device: False)  # asked only after an error row
    assert main(["run", *grid, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "stopped: crashing on B1-H1-N33-D16-fp32-dense-fwd left the device unusable" in err
    assert f"--resume --out {out}" in err
    assert [(r.impl, r.seq_len, r.status) for r in results.load(out).itertuples()] == [
        ("crashing", 17, "ok"),
        ("naive", 17, "ok"),
        ("crashing", 33, "error"),
    ]

    monkeypatch.setattr(failures, "device_usable", lambda device: True)  # a new process: a working device
    assert main(["run", *grid, "--out", str(out), "--resume"]) == 0
    frame = results.load(out)
    assert len(frame) == 6 and list(frame.status) == ["ok", "ok", "error", "ok", "ok", "ok"]


def _plan_table(printed: str) -> dict[str, list[int]]:
    """implementation -> [measure, unsupported, already in file], from the dry run's table."""
    rows = [line.split() for line in printed.splitlines()]
    return {
        cells[0]: [int(cell) for cell in cells[1:4]]
        for cells in rows
        if len(cells) >= 5 and all(cell.isdigit() for cell in cells[1:4])
    }


def test_dry_run_says_what_a_run_would_do_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--seq-len", "17,33", "--causal", "both", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert _plan_table(printed) == {"naive": [4, 0, 0], "sdpa-cudnn": [0, 4, 0], "total": [4, 4, 0]}
    assert "sdpa-cudnn (4): device=cpu (supported: cuda)" in printed
    assert not out.exists()

    assert main(["run", *TINY, "--causal", "both", "--out", str(out)]) == 0
    rewrite_rows(out, _as_if_naive_dense_ran_out_of_memory)
    before = out.read_bytes()
    capsys.readouterr()
    assert (
        main(
            [
                "run",
                *TINY,
                "--seq-len",
                "17,33",
                "--causal",
                "both",
                "--out",
                str(out),
                "--resume",
                "--retry",
                "oom",
                "--dry-run",
            ]
        )
        == 0
    )
    # naive: its N17 causal row is done, the out-of-memory N17 dense row runs again, N33 is new
    assert _plan_table(capsys.readouterr().out) == {"naive": [3, 0, 1], "sdpa-cudnn": [0, 2, 2], "total": [3, 2, 3]}
    assert out.read_bytes() == before


def _as_if_timed_on(machine: str):
    def change(header: dict) -> dict:
        return {**header, "environment": {**header["environment"], "cpu": machine}}

    return change


def test_resume_refuses_a_file_timed_on_another_machine(tmp_path, capsys):
    """Rows of two models in one file would read as one comparison (an H100 file resumed on an H200)."""
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--out", str(out)]) == 0
    rewrite_headers(out, _as_if_timed_on("Other CPU 9000"))
    before = out.read_bytes()
    for extra in ([], ["--dry-run"], ["--causal", "both"]):
        assert main(["run", *TINY, "--out", str(out), "--resume", *extra]) == 2
        assert re.search(
            r"--resume: '.*r\.jsonl' holds timings measured on Other CPU 9000 \(\d+ threads?\), and this run would "
            r"measure on .+ \(resume it there, or write these rows to another file with --out\)",
            capsys.readouterr().err,
        )
    assert out.read_bytes() == before

    # the same CPU model with another thread count times differently too
    from suite.results.environment import _cpu_name

    rewrite_headers(
        out, lambda header: {**header, "environment": {**header["environment"], "cpu": _cpu_name(), "cpu_threads": 64}}
    )
    assert main(["run", *TINY, "--out", str(out), "--resume"]) == 2
    assert re.search(
        r"holds timings measured on .+ \(64 threads\), and this run would measure on .+ \(\d+ threads?\)",
        capsys.readouterr().err,
    )

    # a header that only amended rows (local-errors) elsewhere does not count: it timed nothing
    rewrite_headers(out, lambda header: {**header, "amends": "local-inputs errors"})
    assert main(["run", *TINY, "--causal", "both", "--out", str(out), "--resume"]) == 0
    assert len(results.load(out)) == 4


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--retry", "oom"], r"--retry: only with --resume"),
        (
            ["--resume", "--retry", "ok"],
            r"--retry: unknown status 'ok' \(allowed: mismatch, unsupported, oom, timeout, error\)",
        ),
        (["--resume", "--retry", "oom,"], r"--retry: unknown status ''"),
    ],
)
def test_bad_retry_exits_2(tmp_path, capsys, flags, message):
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--out", str(out), *flags]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_config_file_defines_the_grid(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text(
        'impl = ["naive"]\nseq_len = [9, 10]\nheads = [1]\nbatch = [2]\nhead_dim = [8]\n'
        'dtype = ["float32"]\ncausal = [true, false]\nmode = ["fwd"]\ndevice = "cpu"\n'
    )
    out = tmp_path / "r.jsonl"
    assert main(["run", "--config", str(config), "--out", str(out)]) == 0
    frame = results.load(out)
    assert len(frame) == 4 and set(frame.seq_len) == {9, 10} and set(frame.batch) == {2}


def test_flags_override_the_preset(tmp_path):
    out = tmp_path / "r.jsonl"
    assert (
        main(
            [
                "run",
                "--preset",
                "smoke",
                "--impl",
                "sdpa-math",
                "--seq-len",
                "5",
                "--dtype",
                "bf16",
                "--no-causal",
                "--mode",
                "fwd",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    frame = results.load(out)
    assert frame[["impl", "seq_len", "dtype", "causal", "batch", "heads"]].values.tolist() == [
        ["sdpa-math", 5, "bfloat16", False, 2, 2]
    ]


def test_a_value_repeated_in_a_list_measures_its_cases_once(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    grid = [
        "run",
        "--preset",
        "smoke",
        "--impl",
        "naive,naive,performer,performer:features=256,performer:seed=0",
        "--seq-len",
        "5,5",
        "--dtype",
        "fp32,float32",
        "--no-causal",
        "--mode",
        "fwd,fwd",
        "--batch",
        "1,1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main([*grid, "--dry-run"]) == 0
    assert re.search(r"^total\s+2\s+0\s+0\s+–$", capsys.readouterr().out, re.M)  # one label, one implementation
    assert main(grid) == 0
    assert results.load(out).impl.tolist() == ["naive", "performer"]


def test_list_and_env(capsys):
    assert main(["list", "--device", "cpu"]) == 0
    listing = capsys.readouterr().out
    assert "naive" in listing and "sdpa-cudnn" in listing and "cannot run: device=cpu" in listing
    assert "options (performer:KEY=VALUE): features=256, seed=0, chunk=128, compile=False" in listing
    assert main(["env"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["torch"] == torch.__version__ and "gpu_state" in record


def test_grouped_query_run_and_bad_kv_heads(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert (
        main(
            [
                "run",
                "--impl",
                "naive,sdpa,xformers",
                "--seq-len",
                "33",
                "--heads",
                "4",
                "--kv-heads",
                "2,4",
                "--batch",
                "1",
                "--head-dim",
                "16",
                "--dtype",
                "float32",
                "--mode",
                "fwd+bwd",
                "--no-causal",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "B1-H4-KV2-N33-D16-fp32-dense-fwd+bwd" in printed and "B1-H4-N33-D16-fp32-dense-fwd+bwd" in printed
    frame = results.load(out)
    grouped = frame[frame.kv_heads == 2].set_index("impl")
    assert grouped.status["naive"] == "ok" and grouped.accuracy_ok["sdpa"] == True  # noqa: E712
    assert grouped.status["xformers"] == "unsupported"
    bad = tmp_path / "bad.jsonl"
    assert main(["run", "--heads", "4", "--kv-heads", "3", "--device", "cpu", "--out", str(bad)]) == 2
    assert "--kv-heads: kv_heads 3 does not divide heads 4" in capsys.readouterr().err and not bad.exists()


def test_results_file_is_named_by_the_machine_that_timed_it(tmp_path, monkeypatch):
    """Two CPU models' default files never share a name, as two GPU models' do not."""
    import datetime

    from suite.results import naming
    from suite.results.environment import machine_name

    monkeypatch.setattr(naming, "RESULTS_DIR", tmp_path)
    assert (
        main(
            [
                "run",
                "--impl",
                "naive",
                "--seq-len",
                "8",
                "--heads",
                "1",
                "--head-dim",
                "8",
                "--dtype",
                "float32",
                "--causal",
                "false",
                "--mode",
                "fwd",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    machine = re.sub(r"[^a-z0-9]+", "-", machine_name("cpu").lower()).strip("-")
    assert [p.name for p in tmp_path.iterdir()] == [f"{datetime.date.today().isoformat()}_{machine}_smoke.jsonl"]


def test_time_limit_stops_between_rows_and_resume_finishes(tmp_path, monkeypatch, capsys):
    import itertools
    import time

    out = tmp_path / "limited.jsonl"
    grid = [
        "--impl",
        "naive,sdpa",
        "--seq-len",
        "8,16",
        "--heads",
        "1",
        "--head-dim",
        "8",
        "--dtype",
        "float32",
        "--causal",
        "both",
        "--mode",
        "fwd",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    clock = itertools.count()  # each reading of the clock is one second later
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    grid.append("--in-process")  # the clock is this process's
    assert main(["run", *grid, "--time-limit", "6.5"]) == 3
    assert "stopped at --time-limit 6.5 s: the time limit passed after" in capsys.readouterr().err
    done = len(results.load(out))
    assert 0 < done < 8  # whole rows only: each one written, none cut
    monkeypatch.undo()
    assert main(["run", *grid, "--resume"]) == 0
    assert len(results.load(out)) == 8


def test_a_reader_that_goes_away_stops_the_command_quietly():
    """`attnbench check ... | head -1`: no BrokenPipeError traceback."""
    import subprocess
    import sys
    from pathlib import Path

    command = [
        sys.executable,
        "-m",
        "suite",
        "check",
        "--impl",
        "naive,sdpa,sdpa-math",
        "--dtype",
        "float32",
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(
        command, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().startswith("checking on cpu")
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141 and "Traceback" not in stderr, stderr


def test_a_run_records_the_settings_that_change_speed_and_the_report_shows_them(tmp_path, monkeypatch):
    from suite.results import speed_settings

    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.delenv("PYTORCH_NO_CUDA_MEMORY_CACHING", raising=False)
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--out", str(out)]) == 0
    header = json.loads(out.read_text().splitlines()[0])
    recorded = header["environment"]["speed_settings"]
    assert recorded["environment"] == {
        "CUDA_LAUNCH_BLOCKING": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    assert recorded["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    frame = results.load(out)
    assert set(frame.settings) == {"CUDA_LAUNCH_BLOCKING=1, PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"}
    assert set(frame.distorted_by) == {"CUDA_LAUNCH_BLOCKING"}
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    environment = (tmp_path / "report" / "report.md").read_text().split("## Summary")[0]
    assert "| settings |" in environment and "CUDA_LAUNCH_BLOCKING=1, PYTORCH_CUDA_ALLOC_CONF" in environment

    warnings = speed_settings.warnings_for(speed_settings.current())
    assert len(warnings) == 1 and warnings[0].startswith("CUDA_LAUNCH_BLOCKING=1: every kernel launch waits")
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "0")
    monkeypatch.setenv("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")
    assert [w.split("=")[0] for w in speed_settings.warnings_for(speed_settings.current())] == [
        "PYTORCH_NO_CUDA_MEMORY_CACHING"
    ]
    assert (
        speed_settings.summary(None) is None
        and speed_settings.summary(
            {"environment": {}, "float32_matmul_precision": "high", "deterministic_algorithms": True}
        )
        == "float32 matmul precision high, deterministic algorithms"
    )


@pytest.mark.parametrize(
    "command,flag",
    [
        (["run", *TINY, "--out", "{path}/r.jsonl"], "--out"),
        (["run", *TINY, "--out", "{path}/r.jsonl", "--dry-run"], "--out"),
        (["check", "--impl", "naive", "--json", "{path}/c.json"], "--json"),
        (
            [
                "profile",
                "--impl",
                "naive",
                "--seq-len",
                "16",
                "--heads",
                "2",
                "--head-dim",
                "16",
                "--trace",
                "{path}/t.json",
            ],
            "--trace",
        ),
        (["report", "{results}", "--out", "{path}/report"], "--out"),
    ],
)
def test_an_output_path_that_cannot_be_written_exits_2_before_any_work(tmp_path, capsys, command, flag):
    """Under a regular file no folder can be made, even by root: refused at once, in one line, not in a traceback
    after the measurements."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    results_file = tmp_path / "results.jsonl"
    results_file.write_text("")
    argv = [part.format(path=blocker / "sub", results=results_file) for part in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"attnbench: error: {flag}: cannot write ")
    assert f"{str(blocker)!r} is a file, not a directory" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "results.jsonl"]


def test_resume_with_another_seed_is_refused(tmp_path, capsys):
    """The seed makes a case's inputs: a file resumed with another would hold rows of one case on other inputs."""
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--out", str(out), "--seed", "7"]) == 0
    assert json.loads(out.read_text().splitlines()[0])["seed"] == 7
    before = out.read_text()
    more = ["--seq-len", "17,18"]
    assert main(["run", *TINY, *more, "--out", str(out), "--resume"]) == 2
    assert (
        f"--seed: {str(out)!r} was measured with seed 7, and this run would use 0 (resume with --seed 7"
        in capsys.readouterr().err
    )
    assert out.read_text() == before
    assert main(["run", *TINY, *more, "--out", str(out), "--resume", "--seed", "7"]) == 0
    assert set(results.load(out).seq_len) == {17, 18}


def test_timing_flag_sets_how_cases_are_timed_and_every_reader_says_so(tmp_path, capsys):
    """More repeats for a CI gate, fewer for a look around: the rows are timed that way, the header records it, and
    compare, report and a resume say where two runs were timed differently."""
    default, custom = tmp_path / "default.jsonl", tmp_path / "custom.jsonl"
    assert main(["run", *TINY, "--out", str(default)]) == 0
    fixed = "warmup_calls=0,min_repeats=4,max_repeats=4,target_relative_ci=0"
    assert main(["run", *TINY, "--out", str(custom), "--timing", fixed]) == 0
    header = json.loads(custom.read_text().splitlines()[0])
    assert header["timing_policy"] == {
        "warmup_calls": 0,
        "min_repeats": 4,
        "max_repeats": 4,
        "budget_s": 0.25,
        "target_relative_ci": 0.0,
        "noisy_relative_iqr": 0.1,
    }
    frame = results.load(custom)
    timed = frame[frame.status == "ok"]
    assert len(timed) == 2 and set(timed.repeats) == {4} and all(len(times) == 4 for times in timed.times_ms)
    assert set(frame.timing) == {"0 warm-up, 4-4 repeats, 0.25 s, ±0%, noisy >10%"}
    assert set(results.load(default).timing) == {"3 warm-up, 7-100 repeats, 0.25 s, ±1%, noisy >10%"}
    capsys.readouterr()

    main(["compare", str(default), str(custom)])
    assert (
        "note: the runs differ in timing policy: baseline 3 warm-up, 7-100 repeats, 0.25 s, ±1%, noisy >10%, "
        "current 0 warm-up, 4-4 repeats"
    ) in capsys.readouterr().out
    main(["compare", str(custom), str(custom)])
    assert "timing policy" not in capsys.readouterr().out
    assert main(["report", str(custom), "--out", str(tmp_path / "report")]) == 0
    environment = (tmp_path / "report" / "report.md").read_text().split("## Summary")[0]
    assert "| timing |" in environment and "| 0 warm-up, 4-4 repeats, 0.25 s, ±0%, noisy >10% |" in environment

    assert main(["run", *TINY, "--seq-len", "17,18", "--out", str(custom), "--resume"]) == 0
    assert (
        f"note: {custom} holds rows timed with 0 warm-up, 4-4 repeats, 0.25 s, ±0%, noisy >10%; these will be "
        "timed with 3 warm-up, 7-100 repeats"
    ) in capsys.readouterr().err
    assert main(["run", *TINY, "--seq-len", "17,19", "--out", str(custom), "--resume", "--timing", fixed]) == 0
    assert (
        f"note: {custom} holds rows timed with 3 warm-up, 7-100 repeats, 0.25 s, ±1%, noisy >10%; these "
        in capsys.readouterr().err
    )  # only the policy other than this run's
    repeats = results.load(custom).query("status == 'ok'").groupby("seq_len").repeats
    assert repeats.max()[[17, 19]].tolist() == [4, 4] and repeats.min()[18] >= 7


def test_a_grid_file_sets_timing_as_a_table_and_the_flag_overrides_it(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'impl = ["naive"]\nseq_len = [17]\nheads = [1]\nbatch = [1]\nhead_dim = [16]\n'
        'dtype = ["float32"]\nmode = ["fwd"]\ncausal = [false]\ndevice = "cpu"\n'
        "[timing]\nmin_repeats = 5\nmax_repeats = 5\n"
    )
    assert main(["run", "--config", str(grid), "--out", str(tmp_path / "a.jsonl")]) == 0
    assert list(results.load(tmp_path / "a.jsonl").repeats) == [5]
    assert (
        main(
            [
                "run",
                "--config",
                str(grid),
                "--out",
                str(tmp_path / "b.jsonl"),
                "--timing",
                "min_repeats=3,max_repeats=3",
            ]
        )
        == 0
    )
    assert list(results.load(tmp_path / "b.jsonl").repeats) == [3]
    grid.write_text(grid.read_text().replace("min_repeats = 5\nmax_repeats = 5\n", ""))  # an empty [timing] table
    assert main(["run", "--config", str(grid), "--out", str(tmp_path / "c.jsonl"), "--dry-run"]) == 0


def test_dry_run_says_how_long_the_rows_took_when_this_machine_model_measured_them(tmp_path, capsys, monkeypatch):
    """Each row records its wall time (`row_s`); a dry run sums them for the rows it would measure, from the
    newest results file of this machine model that has each, and says how many rows have none."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    earlier = tmp_path / "results" / "earlier.jsonl"
    assert main(["run", *TINY, "--no-causal", "--seq-len", "17,33", "--out", str(earlier)]) == 0
    assert all(row_s >= 0 for row_s in results.load(earlier).row_s)
    rewrite_rows(earlier, lambda row: {**row, "row_s": 30.0 if row["seq_len"] == 17 else 45.0})
    elsewhere = tmp_path / "results" / "elsewhere.jsonl"  # newer, but another machine model's: passed over
    elsewhere.write_text(earlier.read_text())
    rewrite_rows(elsewhere, lambda row: {**row, "row_s": 1000.0})
    rewrite_headers(elsewhere, lambda header: {**header, "environment": {**header["environment"], "cpu": "Other CPU"}})
    capsys.readouterr()

    assert (
        main(["run", *TINY, "--no-causal", "--seq-len", "17,33,65", "--out", str(tmp_path / "next.jsonl"), "--dry-run"])
        == 0
    )
    printed = capsys.readouterr().out
    naive = next(line.split() for line in printed.splitlines() if line.startswith("naive"))
    assert naive[1:] == ["3", "0", "0", "1m15s", "(2", "rows)"]
    assert (
        "took before: 2 of the 3 rows to measure were measured on this machine model, in results/earlier.jsonl; "
        "the column sums their wall times, and the other 1 rows have none" in printed
    )

    newer = tmp_path / "results" / "newer.jsonl"
    newer.write_text(earlier.read_text())
    rewrite_rows(newer, lambda row: {**row, "row_s": 60.0})
    assert (
        main(["run", *TINY, "--no-causal", "--seq-len", "17", "--out", str(tmp_path / "next.jsonl"), "--dry-run"]) == 0
    )
    printed = capsys.readouterr().out
    assert next(line.split() for line in printed.splitlines() if line.startswith("naive"))[4] == "1m00s"
    assert "measured on this machine model, in results/newer.jsonl; the column" in printed  # only the file used


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("kind", ["folder", "pipe"])
def test_an_out_path_that_is_not_a_regular_file_is_refused(tmp_path, capsys, kind, resume):
    """A named pipe would block `--resume`'s read for ever, a device such as /dev/full fill memory with its
    endless bytes: refused at once, like a folder."""
    import os
    import signal

    def blocked(signum, frame):  # a regression here would hang the test suite, not fail it
        raise TimeoutError("attnbench blocked on the pipe")

    out = tmp_path / "out"
    out.mkdir() if kind == "folder" else os.mkfifo(out)
    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(30)
    try:
        assert main(["run", *TINY, "--out", str(out), *(["--resume"] if resume else [])]) == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert f"--out: {str(out)!r} is not a regular file (allowed: a file, or a new path)" in capsys.readouterr().err
    assert main(["compare", str(out), str(out)]) == 2
    assert f"compare: {out}: not a regular file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    "command,flag",
    [
        (["check", "--impl", "naive", "--json", "{folder}"], "--json"),
        (
            [
                "profile",
                "--impl",
                "naive",
                "--seq-len",
                "16",
                "--heads",
                "2",
                "--head-dim",
                "16",
                "--trace",
                "{folder}",
            ],
            "--trace",
        ),
        (["compare", "{results}", "{results}", "--chart", "{folder}"], "--chart"),
    ],
)
def test_a_file_output_that_names_a_folder_exits_2_before_any_work(tmp_path, capsys, command, flag):
    """`check --json results/` ran every case, then ended in IsADirectoryError: refused at once now."""
    folder = tmp_path / "folder"
    folder.mkdir()
    results_file = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--out", str(results_file)]) == 0
    capsys.readouterr()
    assert main([part.format(folder=folder, results=results_file) for part in command]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"attnbench: error: {flag}: {str(folder)!r} is not a regular file (allowed: a file, or a new path)"]
    assert list(folder.iterdir()) == []


def test_runs_says_what_each_results_file_holds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["runs"]) == 2
    assert "runs: no results files in results/" in capsys.readouterr().err
    (tmp_path / "results").mkdir()
    first = tmp_path / "results" / "a.jsonl"
    assert main(["run", *TINY, "--out", str(first)]) == 0
    (tmp_path / "results" / "b.jsonl").write_text('{"record": "result"}\n')
    capsys.readouterr()
    assert main(["runs"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "results/a.jsonl"
    assert printed[1].startswith(f"  {results.load(first).machine[0]} · ") and " · preset smoke · torch " in printed[1]
    assert printed[2].startswith("  4 rows: 2 ok, 2 unsupported · 1 run · rows took ")
    assert printed[3] == "  2 implementations: naive, sdpa-cudnn"
    assert printed[4:] == [
        "results/b.jsonl",
        "  unreadable: results/b.jsonl:1: result record: impl is None (allowed: a non-empty string)",
    ]
    assert main(["runs", "--format", "json", str(first)]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["statuses"] == {"ok": 2, "unsupported": 2} and entry["presets"] == ["smoke"] and entry["runs"] == 1
    assert main(["runs", "nothere.jsonl"]) == 2
    assert "runs: 'nothere.jsonl' is not a file" in capsys.readouterr().err


def test_recommend_names_the_key_value_heads_of_a_grouped_shape(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--heads", "2", "--kv-heads", "1", "--no-causal", "--out", str(out)]) == 0
    capsys.readouterr()
    shape = ["--seq-len", "17", "--heads", "2", "--head-dim", "16", "--dtype", "float32", "--results", str(out)]
    assert main(["recommend", *shape, "--kv-heads", "1"]) == 0
    assert capsys.readouterr().out.startswith("shape: batch 1, seq_len 17, 2 heads (1 key/value), head dim 16, ")


def test_threads_sets_torchs_threads_for_the_run_only_and_the_file_is_named_by_them(tmp_path, monkeypatch):
    from suite.results import naming

    monkeypatch.setattr(naming, "RESULTS_DIR", tmp_path)
    before = torch.get_num_threads()
    assert main(["run", *TINY, "--threads", "1"]) == 0
    assert torch.get_num_threads() == before
    (out,) = tmp_path.iterdir()
    assert "-1-thread_" in out.name
    header = json.loads(out.read_text().splitlines()[0])
    assert header["threads"] == 1 and header["environment"]["cpu_threads"] == 1
