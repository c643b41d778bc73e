"""Every (implementation, case) becomes one row, whatever fails; results round-trip through pandas."""

from __future__ import annotations

import codecs
import json
import os
import re
import signal
import time

import pytest
import torch

import implementations
from suite.case import Case
from suite.measure import failures
from suite.measure.settings import RunSettings, TimingPolicy
from suite.results import files as results
from suite.results.files import ResultsWriter
from suite.run.runner import run_cases
from tests.conftest import ScriptedAttention, WithSession, rows_of

FAST = RunSettings(policies={"cpu": TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=5, budget_s=0.05)})


def cases(*seq_lens, mode="fwd"):
    return [Case(1, 2, n, 16, "float32", False, mode, "cpu") for n in seq_lens]


def run(impls, case_list, tmp_path, **kwargs):
    writer = ResultsWriter(tmp_path / "r.jsonl", {"device": "cpu"}, {"preset": "test"})
    rows = rows_of(impls, case_list, settings=FAST, on_row=writer.append, **kwargs)
    writer.close()
    return rows, tmp_path / "r.jsonl"


class WideningAttention(implementations.Implementation):
    """Right values, in float64 for float32 inputs, or transposed: not the computation the case asks for."""

    def __init__(self, name: str, transposed: bool = False):
        super().__init__(name)
        self.transposed = transposed

    def __call__(self, q, k, v, *, causal=False):
        out = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
        return out.to(q.dtype).transpose(1, 2) if self.transposed else out


def test_an_output_of_another_dtype_or_shape_is_an_error_row_that_says_so(tmp_path):
    """Timed, a float64 output for float32 inputs would stand for float32 attention: its row is an error naming
    both dtypes, as `check` fails it, and never ok; a transposed output says the same of shapes."""
    rows, _ = run(
        [WideningAttention("wide"), WideningAttention("turned", transposed=True), implementations.get("naive")],
        cases(17, mode="fwd") + cases(17, mode="fwd+bwd"),
        tmp_path,
    )
    by = {(r["impl"], r["mode"]): r for r in rows}
    for mode in ("fwd", "fwd+bwd"):
        assert by["wide", mode]["status"] == "error" and by["wide", mode]["reason"].endswith(
            "WrongOutput: output is (1, 2, 17, 16) torch.float64, expected (1, 2, 17, 16) torch.float32"
        )
        assert (
            by["turned", mode]["status"] == "error"
            and "output is (1, 17, 2, 16) torch.float32" in by["turned", mode]["reason"]
        )
        assert by["naive", mode]["status"] == "ok"


def test_injected_oom_becomes_a_row_and_the_run_goes_on(tmp_path):
    flaky = ScriptedAttention("flaky", fail_on_seq_len=33, error=torch.OutOfMemoryError("CUDA out of memory. Tried"))
    rows, path = run([flaky, implementations.get("naive")], cases(17, 33, 65), tmp_path)
    assert [(r["impl"], r["seq_len"], r["status"]) for r in rows] == [
        ("flaky", 17, "ok"),
        ("naive", 17, "ok"),
        ("flaky", 33, "oom"),
        ("naive", 33, "ok"),
        ("flaky", 65, "ok"),
        ("naive", 65, "ok"),
    ]
    assert (
        "out of memory" in rows[2]["reason"] and "after freeing the allocator cache and retrying" in rows[2]["reason"]
    )
    assert len(results.load(path)) == 6


def test_an_oom_that_goes_away_after_freeing_the_cache_is_not_an_oom(tmp_path):
    once = ScriptedAttention("once", fail_on_seq_len=33, error=torch.OutOfMemoryError("fragmented"), failures=1)
    rows, _ = run([once], cases(33), tmp_path)
    assert rows[0]["status"] == "ok" and once.failures_left == 0


def test_injected_exception_becomes_an_error_row(tmp_path):
    broken = ScriptedAttention("broken", fail_on_seq_len=17, error=ZeroDivisionError("kernel bug"))
    rows, _ = run([broken], cases(17, 33), tmp_path)
    assert rows[0]["status"] == "error" and "ZeroDivisionError: kernel bug" in rows[0]["reason"]
    assert rows[1]["status"] == "ok"


def test_an_error_that_leaves_the_device_unusable_stops_the_run_after_writing_its_row(tmp_path, monkeypatch):
    """After a sticky CUDA error every later case would fail too, and be blamed on its implementation."""
    import suite.run.runner as runner

    crashing = ScriptedAttention(
        "crashing",
        fail_on_seq_len=33,
        failures=1,
        error=RuntimeError("CUDA error: an illegal memory access was encountered"),
    )
    monkeypatch.setattr(failures, "device_usable", lambda device: crashing.failures_left != 0)
    written = []
    with pytest.raises(runner.DeviceLost, match="crashing on B1-H2-N33-D16-fp32-dense-fwd left the device unusable"):
        run_cases([crashing, implementations.get("naive")], cases(17, 33, 65), settings=FAST, on_row=written.append)
    assert [(r["impl"], r["seq_len"], r["status"]) for r in written] == [
        ("crashing", 17, "ok"),
        ("naive", 17, "ok"),
        ("crashing", 33, "error"),
    ]
    assert "illegal memory access" in written[-1]["reason"] and "ran in a new process" in written[-1]["reason"]

    # an ordinary error leaves the device usable: the run goes on
    monkeypatch.setattr(failures, "device_usable", lambda device: True)
    broken = ScriptedAttention("broken", fail_on_seq_len=17, error=ZeroDivisionError("kernel bug"))
    rows, _ = run([broken], cases(17, 33), tmp_path)
    assert [r["status"] for r in rows] == ["error", "ok"] and "stopped" not in rows[0]["reason"]


def test_unsupported_case_is_a_row_with_reasons(tmp_path):
    rows, _ = run([implementations.get("sdpa-cudnn")], cases(17), tmp_path)
    assert rows[0]["status"] == "unsupported" and "device=cpu (supported: cuda)" in rows[0]["reason"]


def test_wrong_output_is_a_mismatch_not_a_crash(tmp_path):
    wrong = ScriptedAttention("wrong", scale_output=1.01)
    rows, _ = run([wrong], cases(17, mode="fwd+bwd"), tmp_path)
    row = rows[0]
    assert row["status"] == "mismatch" and row["accuracy_ok"] is False
    assert row["rel_rms_err"] == pytest.approx(0.01, rel=0.05)
    assert "rel_rms_err" in row["reason"] and row["time_ms"] > 0


def test_ok_row_has_every_column_with_real_numbers(tmp_path):
    rows, path = run([implementations.get("naive")], cases(33, mode="fwd+bwd"), tmp_path)
    row = results.load(path).iloc[0]
    for column in results.ROW_COLUMNS:
        assert column in row.index
    assert row["status"] == "ok" and row["accuracy_ok"]
    assert row["repeats"] == len(row["times_ms"]) >= 3
    assert row["time_ms"] == pytest.approx(sorted(row["times_ms"])[len(row["times_ms"]) // 2], rel=0.5)
    assert row["tflops"] > 0 and row["tokens_per_s"] > 0
    assert set(row["errors"]) == {"out", "dq", "dk", "dv"}
    assert row["peak_mem_bytes"] >= 2 * 33 * 33 * 4 and row["peak_mem_reason"] is None  # naive's scores, on the CPU too


def test_bwd_mode_times_the_backward_alone(tmp_path):
    rows, _ = run([implementations.get("naive")], cases(65, mode="bwd"), tmp_path)
    assert rows[0]["status"] == "ok" and rows[0]["accuracy_ok"] and rows[0]["time_ms"] > 0


class CtrlCAt65(ScriptedAttention):
    """Correct attention, during whose call at 65 tokens the user presses Ctrl-C (SIGINT)."""

    def __call__(self, q, k, v, *, causal=False):
        if q.shape[-2] == 65:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # Python's handler raises KeyboardInterrupt within it
        return super().__call__(q, k, v, causal=causal)


def test_interrupted_run_keeps_finished_rows_and_resume_skips_them(tmp_path):
    stopper = CtrlCAt65("stopper")
    with pytest.raises(KeyboardInterrupt):
        run([stopper], cases(17, 33, 65, 129), tmp_path)
    path = tmp_path / "r.jsonl"
    frame = results.load(path)
    assert list(frame.seq_len) == [17, 33]
    for line in path.read_text().splitlines():
        json.loads(line)  # every line is whole
    done = results.finished_keys(results.read(path)[1])
    writer = ResultsWriter(path, {"device": "cpu"}, {"preset": "test"})
    rows = rows_of(
        [ScriptedAttention("stopper")], cases(17, 33, 65, 129), settings=FAST, on_row=writer.append, skip=done
    )
    writer.close()
    assert [r["seq_len"] for r in rows] == [65, 129]
    assert list(results.load(path).seq_len) == [17, 33, 65, 129]


def test_reference_is_skipped_when_not_one_slice_fits_its_limit(tmp_path):
    settings = RunSettings(policies=FAST.policies, max_reference_flops={"cpu": 10.0})
    writer = ResultsWriter(tmp_path / "r.jsonl", {}, {})
    rows = rows_of([implementations.get("naive")], cases(33), settings=settings, on_row=writer.append)
    assert rows[0]["status"] == "ok" and rows[0]["accuracy_ok"] is None
    assert rows[0]["reason"].startswith("accuracy not checked: one (batch, head) slice of the float64 reference needs")


class WrongInLastBatch(ScriptedAttention):
    """Correct except in the last batch element: the kind of offset bug a partial check must still catch."""

    def __call__(self, q, k, v, *, causal=False):
        out = super().__call__(q, k, v, causal=causal)
        return torch.cat([out[:-1], out[-1:] * 1.01])


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_above_its_budget_the_reference_covers_some_slices_first_and_last_included(tmp_path, kv_heads):
    case = Case(3, 4, 40, 16, "float32", False, "fwd+bwd", "cpu", kv_heads)
    per_slice = 4 * 40 * 40 * 16 * 3.5 * (4 // (kv_heads or 4))  # softmax FLOPs of one (batch, kv head) slice
    settings = RunSettings(policies=FAST.policies, max_reference_flops={"cpu": 2.5 * per_slice})
    writer = ResultsWriter(tmp_path / "r.jsonl", {}, {})
    rows = rows_of(
        [implementations.get("naive"), implementations.get("performer"), WrongInLastBatch("wrong")],
        [case],
        settings=settings,
        on_row=writer.append,
    )
    total = 3 * (kv_heads or 4)
    assert [row["status"] for row in rows] == ["ok", "ok", "mismatch"]
    assert {row["accuracy_scope"] for row in rows} == {f"2 of {total} (batch, key/value head) slices"}
    assert rows[1]["softmax_rel_rms_err"] > 0  # the approximation's distance from softmax, on the same slices


def test_within_its_budget_the_reference_covers_every_slice(tmp_path):
    rows, _ = run([implementations.get("naive")], [Case(3, 4, 40, 16, "float32", False, "fwd+bwd", "cpu", 2)], tmp_path)
    assert rows[0]["status"] == "ok" and rows[0]["accuracy_scope"] is None


def test_load_reads_many_files_and_rejects_garbage(tmp_path):
    _, path = run([implementations.get("naive")], cases(17), tmp_path)
    frame = results.load([path, path])
    assert len(frame) == 2 and frame.impl.tolist() == ["naive", "naive"]
    bad = tmp_path / "bad.jsonl"
    header, row = path.read_text().splitlines()
    bad.write_text(f"{header}\nnot json\n{row}\n")
    with pytest.raises(results.ResultsFormatError, match=r"bad.jsonl:2: not valid JSON"):
        results.load(bad)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"seq_len": "17"}, r"seq_len is '17' \(allowed: a positive integer\)"),
        ({"heads": True}, r"heads is True \(allowed: a positive integer\)"),
        ({"kv_heads": 0}, r"kv_heads is 0 \(allowed: a positive integer, or null for = heads\)"),
        ({"impl": None}, r"impl is None \(allowed: a non-empty string\)"),
        ({"causal": "false"}, r"causal is 'false' \(allowed: true or false\)"),
        ({"mode": "forward"}, r"mode is 'forward' \(allowed: fwd, bwd, fwd\+bwd\)"),
        ({"status": "great"}, r"status is 'great' \(allowed: ok, mismatch, unsupported, oom, timeout, error\)"),
        ({"time_ms": "fast"}, r"time_ms is 'fast' \(allowed: a number, or null\)"),
    ],
)
def test_a_row_edited_into_something_run_never_writes_is_refused_with_its_line(tmp_path, change, message):
    """Readers group, sort and compare by a row's case and status: a string length or an unknown status made
    report, compare and recommend end in tracebacks; every reader now refuses the file, naming line and field."""
    _, path = run([implementations.get("naive")], cases(17), tmp_path)
    header, row = path.read_text().splitlines()
    path.write_text(f"{header}\n{json.dumps({**json.loads(row), **change})}\n")
    with pytest.raises(results.ResultsFormatError, match=r"r.jsonl:2: result record: " + message):
        results.load(path)
    path.write_text(f"{json.dumps({**json.loads(header), 'run_id': 7})}\n{row}\n")
    with pytest.raises(results.ResultsFormatError, match=r"r.jsonl:1: run record: run_id is 7"):
        results.load(path)


def test_torn_last_line_is_ignored_with_a_warning(tmp_path):
    _, path = run([implementations.get("naive")], cases(17, 33), tmp_path)
    text = path.read_text()
    path.write_text(text[: len(text) - 40])
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert len(results.load(path)) == 1


def _resume_argv(out, seq_lens: str = "17") -> list[str]:
    """`attnbench run --resume` of `run`'s naive rows (cases(...)) into `out`."""
    grid = ["--impl", "naive", "--seq-len", seq_lens, "--heads", "2", "--batch", "1", "--head-dim", "16"]
    return [
        "run",
        *grid,
        "--dtype",
        "float32",
        "--no-causal",
        "--mode",
        "fwd",
        "--device",
        "cpu",
        "--resume",
        "--out",
        str(out),
    ]


def test_a_byte_order_mark_is_read_past_and_resumed(tmp_path):
    """An editor may save a results file with a UTF-8 byte-order mark; it is UTF-8 all the same."""
    from suite.cli import main

    _, path = run([implementations.get("naive")], cases(17), tmp_path)
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    assert results.load(path).impl.tolist() == ["naive"]
    assert main(_resume_argv(path, "17,33")) == 0
    assert results.load(path).seq_len.tolist() == [17, 33]


def test_invalid_utf8_names_its_line_and_how_to_keep_the_rows_before_it(tmp_path, capsys):
    from suite.cli import main

    _, path = run([implementations.get("naive")], cases(17, 33, 65), tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"naive"', b'"na\xefve"')  # Latin-1, as another tool might write it
    path.write_bytes(b"".join(lines))
    where = re.escape(f"{path}:3: not valid UTF-8 (byte ")
    kept = re.escape(f"the 2 lines before it are intact: keep them (head -n 2 {path} > KEPT.jsonl)")
    with pytest.raises(results.ResultsFormatError, match=where + ".*" + kept):
        results.load(path)
    assert main(_resume_argv(path)) == 2
    assert f"--resume: {path}:3: not valid UTF-8" in capsys.readouterr().err
    kept_path = tmp_path / "KEPT.jsonl"
    kept_path.write_bytes(b"".join(lines[:2]))  # as the message says; the resume measures the rest
    assert main(_resume_argv(kept_path, "17,33,65")) == 0
    assert results.load(kept_path).seq_len.tolist() == [17, 33, 65]


def test_a_torn_last_line_that_is_not_utf8_is_ignored_as_a_torn_one(tmp_path):
    _, path = run([implementations.get("naive")], cases(17), tmp_path)
    path.write_bytes(path.read_bytes() + b'{"record": "result", "impl": "na\xc3')
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert len(results.load(path)) == 1


def test_an_ended_last_line_that_is_not_json_is_not_taken_for_a_torn_one(tmp_path, capsys):
    """Only a line a killed run left without its newline is skipped: a file of other text must not be resumed,
    which would append records after it and leave a file no reader accepts."""
    from suite.cli import main

    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("hello\n")
    with pytest.raises(results.ResultsFormatError, match=r"notes.jsonl:1: not valid JSON"):
        results.load(foreign)
    argv = [
        "run",
        "--impl",
        "naive",
        "--seq-len",
        "9",
        "--heads",
        "1",
        "--batch",
        "1",
        "--head-dim",
        "8",
        "--dtype",
        "float32",
        "--no-causal",
        "--mode",
        "fwd",
        "--device",
        "cpu",
        "--resume",
        "--out",
        str(foreign),
    ]
    assert main(argv) == 2
    assert "--resume: " in capsys.readouterr().err and foreign.read_text() == "hello\n"


def test_minimum_traffic_counts_inputs_read_and_outputs_written_once():
    from suite.measure.traffic import minimum_bytes

    elements = 3 * 10 * 4  # batch × seq × head_dim per head
    assert minimum_bytes(Case(3, 2, 10, 4, "float32", False, "fwd", "cpu")) == (2 * 2 + 2 * 2) * elements * 4
    assert minimum_bytes(Case(3, 4, 10, 4, "bfloat16", True, "bwd", "cpu", 2)) == (3 * 4 + 4 * 2) * elements * 2
    assert minimum_bytes(Case(3, 4, 10, 4, "float16", True, "fwd+bwd", "cpu", 1)) == (4 * 4 + 4 * 1) * elements * 2


def test_rows_report_achieved_bandwidth_against_the_measured_peak(tmp_path):
    from suite.measure.traffic import minimum_bytes

    case = cases(64, mode="fwd+bwd")[0]
    settings = RunSettings(policies=FAST.policies, peak_gbytes_per_s=50.0)
    [row] = rows_of([implementations.get("naive")], [case], settings=settings, on_row=lambda r: None)
    assert row["gbytes_per_s"] == pytest.approx(minimum_bytes(case) / (row["time_ms"] * 1e-3) / 1e9)
    assert row["bandwidth_fraction"] == pytest.approx(row["gbytes_per_s"] / 50.0)
    [row] = rows_of([implementations.get("naive")], [case], settings=FAST, on_row=lambda r: None)
    assert row["gbytes_per_s"] > 0 and row["bandwidth_fraction"] is None  # no peak measured (CPU runs)


class RightOnlyWhenChecked(ScriptedAttention):
    """Right on its first call of a case, 1% off on every later one: what a kernel whose autotuner or plan cache
    switches to a wrong variant after the first call returns."""

    def __init__(self, name, **options):
        super().__init__(name, **options)
        self.seen: set[tuple] = set()

    def __call__(self, q, k, v, *, causal=False):
        out = super().__call__(q, k, v, causal=causal)
        key = (tuple(q.shape), causal)
        first = key not in self.seen
        self.seen.add(key)
        return out if first else out * 1.01


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd+bwd"])
def test_the_timed_kernel_must_compute_what_the_checked_one_did(tmp_path, mode):
    rows, _ = run([RightOnlyWhenChecked("switches"), implementations.get("naive")], cases(17, 33, mode=mode), tmp_path)
    for row in rows:
        if row["impl"] == "naive":
            assert row["status"] == "ok", row["reason"]
        else:
            assert row["status"] == "mismatch" and row["accuracy_ok"] is False
            assert row["reason"].startswith("a call after the timed ones disagrees with the checked first call"), row
            assert row["time_ms"] > 0  # measured, and marked: a speed that rests on a wrong result


def test_a_timed_row_survives_running_out_of_memory_in_the_call_after_timing(tmp_path, monkeypatch):
    from suite.check.workload import Workload

    original, calls = Workload.checked_call, []

    def second_call_out_of_memory(self):
        calls.append(1)
        if len(calls) == 2:  # the first checked call passed; the one after the timed calls finds no memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")
        return original(self)

    monkeypatch.setattr(Workload, "checked_call", second_call_out_of_memory)
    rows, _ = run([implementations.get("naive")], cases(17), tmp_path)
    assert rows[0]["status"] == "ok" and rows[0]["time_ms"] > 0 and rows[0]["accuracy_ok"]
    assert (
        rows[0]["reason"] == "the call after the timed ones ran out of memory: it was not compared with the checked one"
    )


class CountsItsSession(WithSession, ScriptedAttention):
    """Records whether each call ran inside its session."""

    calls_inside = calls_outside = 0

    def __call__(self, q, k, v, *, causal=False):
        if self.inside:
            self.calls_inside += 1
        else:
            self.calls_outside += 1
        return super().__call__(q, k, v, causal=causal)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd", "bwd"])
def test_a_row_enters_the_implementations_session_once_around_all_its_calls(tmp_path, mode):
    spy = CountsItsSession("spy")
    rows, _ = run([spy], cases(17, 33, mode=mode), tmp_path)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert spy.sessions == 2  # one per row: its set-up is not a cost of each timed call
    assert spy.calls_outside == 0 and spy.calls_inside >= 2 * 3


def test_every_row_records_its_wall_time_and_together_they_are_the_run(tmp_path):
    """`row_s`: what each row cost the run, everything included; a failed or unsupported row has one too. Rows
    are disjoint stretches of the run, so they add up to no more than it; a row whose calls sleep costs at
    least its sleeps."""
    import time

    class Sleepy(ScriptedAttention):
        calls_made = 0

        def __call__(self, q, k, v, *, causal=False):
            Sleepy.calls_made += 1
            time.sleep(0.01)
            return super().__call__(q, k, v, causal=causal)

    broken = ScriptedAttention("broken", fail_on_seq_len=16, error=RuntimeError("boom"))
    started = time.monotonic()
    rows, _ = run(
        [implementations.get("naive"), implementations.get("sdpa-cudnn"), broken, Sleepy("sleepy")],
        cases(16, 33),
        tmp_path,
    )
    wall = time.monotonic() - started
    assert [row["status"] for row in rows] == ["ok", "unsupported", "error", "ok", "ok", "unsupported", "ok", "ok"]
    assert all(isinstance(row["row_s"], float) and row["row_s"] >= 0 for row in rows)
    assert sum(row["row_s"] for row in rows) <= wall + 0.0005 * len(rows)  # each rounded to the millisecond
    assert sum(row["row_s"] for row in rows if row["impl"] == "sleepy") >= 0.01 * Sleepy.calls_made


def test_a_forward_run_of_every_cpu_family_leaves_torchdynamo_unimported(tmp_path):
    """Importing TorchDynamo costs every process that starts a run or a worker about 1.4 s on a CPU."""
    import subprocess
    import sys

    script = (
        "import sys\nfrom suite.cli import main\n"
        "status = main(['run', '--impl', 'naive,sdpa,linear,performer,sparse-window,sparse-block,linformer', "
        "'--seq-len', '16', '--heads', '1', '--batch', '1', '--head-dim', '16', '--dtype', 'float32', "
        f"'--mode', 'fwd', '--device', 'cpu', '--in-process', '--out', {str(tmp_path / 'r.jsonl')!r}])\n"
        "print(status, 'torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stdout[-1000:] + done.stderr[-2000:]
