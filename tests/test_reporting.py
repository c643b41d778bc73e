"""Reports, charts and `recommend`, on results produced by a CPU run in the test itself."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from suite.case import Case
from suite.cli import main
from suite.measure.settings import RunSettings, TimingPolicy
from suite.reporting import charts
from suite.reporting.data import colours, fmt_duration, fmt_num, impl_order, prepare
from suite.reporting.memory_glance import memory_summary
from suite.results.files import ResultsWriter, load
from suite.run import config
from suite.run.runner import run_cases

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = RunSettings(policies={"cpu": TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=5, budget_s=0.05)})
IMPLS = ["naive", "sdpa", "sdpa-cudnn", "sparse-window:window=8", "linear", "performer:features=32"]


def _run(path: Path, impls: list[str], seq_lens=(16, 32, 64)) -> Path:
    cases = [Case(1, 2, n, 16, "float32", causal, "fwd", "cpu") for n in seq_lens for causal in (False, True)]
    writer = ResultsWriter(path, {"device": "cpu", "cpu": "test cpu", "torch": "x"}, {"preset": "test"})
    run_cases([config.build_impl("--impl", spec) for spec in impls], cases, settings=FAST, on_row=writer.append)
    writer.close()
    return path


@pytest.fixture(scope="module")
def cpu_results(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("run") / "cpu.jsonl", IMPLS)


@pytest.fixture(scope="module")
def gpu_like_results(cpu_results, tmp_path_factory) -> Path:
    """The CPU run's rows with the memory a GPU run would record, and naive out of memory at 64, as if from
    another machine (a report keeps one row per case and machine)."""
    lines = cpu_results.read_text().splitlines()
    out = []
    for line in lines:
        record = json.loads(line)
        if record.get("record") == "run":
            record["environment"] = {**record["environment"], "device": "cuda", "gpu": "Test GPU"}
        if record.get("record") == "result" and record["status"] == "ok":
            n = record["seq_len"]
            record["peak_mem_bytes"] = 4 * n * n * 2 if record["impl"] == "naive" else 64 * n * 2
            if record["impl"] == "naive" and n == 64:
                record.update(status="oom", reason="CUDA out of memory (injected)", time_ms=None)
        out.append(json.dumps(record))
    path = tmp_path_factory.mktemp("gpu") / "gpu-like.jsonl"
    path.write_text("\n".join(out) + "\n")
    return path


def test_report_writes_charts_markdown_and_html(cpu_results, gpu_like_results, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(cpu_results), str(gpu_like_results), "--out", str(out), "--baseline", "naive"]) == 0
    pngs = sorted((out / "charts").glob("*.png"))
    names = {p.name.split("-")[0] for p in pngs}
    assert {"time", "tflops", "memory", "speedup", "roofline", "accuracy", "attention", "fastest"} <= names
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 5000
    html = (out / "index.html").read_text()
    assert html.count("<img ") == len(pngs) and html.count("data:image/png;base64,") == len(pngs)
    markdown = (out / "report.md").read_text()
    assert len(re.findall(r"!\[[^]]*\]\(charts/[^)]+\.png\)", markdown)) == len(pngs)
    frame = load(cpu_results)
    ok = frame[frame.status == "ok"].iloc[0]
    assert f"{fmt_num(ok.time_ms)} ms · {fmt_num(ok.tflops)} TF/s" in markdown  # measured numbers, not placeholders
    assert "unsupported" in markdown and "oom" in markdown
    assert "vs softmax" in markdown and "i.i.d. standard normal" in markdown
    assert "## Speed-up over naive" in markdown and "faster than naive from" in markdown
    assert "## How time grows with length" in markdown and "### Scaling: Test GPU" in markdown
    # the numbers behind it all, for a spreadsheet: one row per implementation and case, as measured
    data = pd.read_csv(out / "data.csv")
    both = pd.concat([load(cpu_results), load(gpu_like_results)], ignore_index=True)
    assert len(data) == len(both) and {"machine", "impl", "seq_len", "time_ms", "peak_mem_bytes"} <= set(data.columns)
    measured = data[data.status == "ok"].iloc[0]
    same_impl = both[(both.impl == measured.impl) & (both.seq_len == measured.seq_len)]
    assert min(abs(same_impl.time_ms - measured.time_ms)) < 1e-12
    raw = next(csv.DictReader((out / "data.csv").open()))
    assert raw["status"] == "ok" and raw["repeats"].isdigit()  # a count, not 5.0 beside the empty cells
    assert "## One-time costs" in markdown  # per machine: 6 rows of each file
    for machine in ("test cpu", "Test GPU"):
        assert f"| {machine} | performer:features=32 | fwd | 6 |" in markdown


def test_report_of_exact_implementations_only_has_no_approximation_caveat(tmp_path):
    results = _run(tmp_path / "exact.jsonl", ["naive", "sdpa"], seq_lens=(16,))
    assert main(["report", str(results), "--out", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Accuracy" in markdown and "i.i.d." not in markdown


def test_report_says_when_the_reference_covered_only_some_slices(cpu_results, tmp_path):
    lines = []
    for line in cpu_results.read_text().splitlines():
        record = json.loads(line)
        if record.get("record") == "result" and record["status"] == "ok" and record["seq_len"] == 64:
            record["accuracy_scope"] = "1 of 2 (batch, key/value head) slices"
        lines.append(json.dumps(record))
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines) + "\n")
    assert main(["report", str(partial), "--out", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "rows (from 64 tokens) the float64 reference covered only some (batch, key/value head) slices" in markdown
    assert main(["report", str(cpu_results), "--out", str(tmp_path / "full")]) == 0
    assert "covered only some" not in (tmp_path / "full" / "report.md").read_text()


def test_throughput_chart_has_one_line_per_measured_implementation(cpu_results):
    frame = prepare(load(cpu_results))
    part = frame[frame.causal == False]  # noqa: E712
    group = {"device": "cpu", "gpu": "test cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    fig = charts.throughput_chart(part, colours(frame.impl), group, "time_ms")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    measured = set(part[part.status == "ok"].impl)
    assert {line.get_label() for line in ax.get_lines()} == measured and len(ax.get_lines()) == len(measured)
    assert ax.get_xlabel() == "sequence length (tokens)" and "ms" in ax.get_ylabel()
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "Time" in fig._suptitle.get_text()
    legend = fig.legends[0]
    assert {t.get_text() for t in legend.get_texts()} == measured


def test_length_axes_name_lengths_as_the_tables_do(cpu_results):
    frame = prepare(load(cpu_results))
    part = frame[frame.causal == False].copy()  # noqa: E712
    lengths = sorted(part.seq_len.unique())
    part["seq_len"] = part.seq_len.map(dict(zip(lengths, [512, 1024, 65536][: len(lengths)])))
    group = {"device": "cpu", "gpu": "test cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    for chart in (charts.throughput_chart, charts.memory_chart):
        fig = chart(part, colours(frame.impl), group)
        (ax,) = [a for a in fig.axes if a.get_visible()]
        fig.canvas.draw()
        shown = [
            tick.label1.get_text()
            for tick in ax.xaxis.get_major_ticks()
            if 512 <= tick.get_loc() <= 65536 and tick.label1.get_visible()
        ]
        assert shown == ["512", "1K", "2K", "4K", "8K", "16K", "32K", "64K"], chart.__name__


def test_tflops_chart_starts_at_zero_and_draws_the_measured_peak_where_there_is_one(cpu_results):
    frame = prepare(load(cpu_results))
    part = frame[frame.causal == False].copy()  # noqa: E712
    part["tflops"] = part.tflops.max() * np.linspace(0.5, 1, len(part))  # within a decade of the peak drawn below
    group = {"device": "cpu", "gpu": "test cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    fig = charts.throughput_chart(part, colours(frame.impl), group, "tflops")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0 and "TFLOP/s" in ax.get_ylabel()
    assert not any(t.get_text().startswith("measured matmul peak") for t in fig.legends[0].get_texts())  # CPU: none
    peak = 4 * part.tflops.max()  # each run measures its own; rows carry tflops / peak
    part["peak_fraction"] = part.tflops / peak
    assert charts.measured_peak_tflops(part) == pytest.approx(peak)
    fig = charts.throughput_chart(part, colours(frame.impl), group, "tflops")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == 1 and dotted[0].get_ydata()[0] == pytest.approx(peak) and ax.get_ylim()[1] >= peak
    assert f"measured matmul peak ({fmt_num(peak)} TFLOP/s)" in {t.get_text() for t in fig.legends[0].get_texts()}


def test_throughput_spread_over_decades_is_drawn_on_a_log_axis(cpu_results):
    """On a linear axis from zero, a line a hundred times below the top lies flat along the axis."""
    frame = prepare(load(cpu_results))
    part = frame[(frame.causal == False) & (frame.status == "ok")].copy()  # noqa: E712
    part["tflops"] = np.where(part.impl == "linear", 0.001, 0.1)
    group = {"device": "cpu", "gpu": "test cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    fig = charts.throughput_chart(part, colours(frame.impl), group, "tflops")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    bottom, top = ax.get_ylim()
    assert ax.get_yscale() == "log" and 0 < bottom <= 0.001 and top >= 0.1
    assert {line.get_label() for line in ax.get_lines()} == set(part.impl)
    charts.plt.close(fig)
    below_a_peak = part.assign(tflops=0.1, peak_fraction=0.1 / 5.0)  # 50 times the rows: flat along the axis below it
    fig = charts.throughput_chart(below_a_peak, colours(frame.impl), group, "tflops")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert charts.measured_peak_tflops(below_a_peak) == pytest.approx(5.0)
    assert ax.get_yscale() == "log" and ax.get_ylim()[1] >= 5.0
    charts.plt.close(fig)


def test_bandwidth_chart_draws_the_measured_copy_bandwidth_where_there_is_one(cpu_results):
    frame = prepare(load(cpu_results))
    part = frame[frame.causal == False].copy()  # noqa: E712
    group = {"device": "cpu", "gpu": "test cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    part["gbytes_per_s"] = part.gbytes_per_s.max() * np.linspace(0.5, 1, len(part))  # within a decade of the ceiling
    bandwidth = 3 * part.gbytes_per_s.max()
    part["bandwidth_fraction"] = part.gbytes_per_s / bandwidth
    fig = charts.throughput_chart(part, colours(frame.impl), group, "gbytes_per_s")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert ax.get_ylim()[0] == 0 and "GB/s" in ax.get_ylabel() and ax.get_ylim()[1] >= bandwidth
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == 1 and dotted[0].get_ydata()[0] == pytest.approx(bandwidth)
    assert f"measured copy bandwidth ({fmt_num(bandwidth)} GB/s)" in {t.get_text() for t in fig.legends[0].get_texts()}


def test_memory_at_a_glance_compares_each_implementation_with_the_baseline_where_both_ran(gpu_like_results, tmp_path):
    frame = prepare(load(gpu_like_results))
    ((title, table),) = memory_summary(frame, "naive")
    assert "Test GPU" in title and table.header == ["implementation", "dense fwd", "causal fwd"]
    rows = {row[0]: row[1:] for row in table.rows}
    assert list(rows)[0] == "naive" and rows["naive"] == ["8.0 KiB at 32", "8.0 KiB at 32"]  # out of memory at 64
    assert rows["sdpa"] == ["0.5× · 4.0 KiB at 32"] * 2  # 64·32·2 bytes against 4·32²·2
    assert memory_summary(prepare(load(gpu_like_results)), "sdpa")[0][1].rows[0][0] == "sdpa"
    assert main(["report", str(gpu_like_results), "--out", str(tmp_path / "r"), "--baseline", "naive"]) == 0
    assert "### Peak memory at a glance: Test GPU" in (tmp_path / "r" / "report.md").read_text()


def test_a_chart_says_what_its_rows_were_measured_with(cpu_results):
    frame = prepare(load(cpu_results))
    assert set(frame.software) == {"torch x"}  # the fixture's header records torch "x" and no CUDA
    part = frame[frame.causal == False].copy()  # noqa: E712
    part["attnbench_commit"] = ["0123456789abcdef+dirty"] * (len(part) - 1) + ["fedcba9876543210"]
    group = {"device": "cpu", "gpu": "test cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    fig = charts.throughput_chart(part, colours(frame.impl), group, "time_ms")
    charts.stamp(fig, part)
    footers = [t.get_text() for t in fig.texts if t.get_text().startswith("measured with")]
    assert footers == ["measured with torch x · attnbench 0123456789ab+dirty, fedcba987654"]


def test_two_machines_are_set_side_by_side_over_the_cases_both_measured(cpu_results, tmp_path):
    from tests.results_files import rewrite_headers, rewrite_rows

    faster = tmp_path / "faster.jsonl"
    faster.write_text(cpu_results.read_text())
    rewrite_headers(faster, lambda h: {**h, "environment": {**h["environment"], "cpu": "Faster CPU 9000"}})
    rewrite_rows(faster, lambda r: {**r, "time_ms": r["time_ms"] / 2} if r.get("time_ms") else r)
    rewrite_rows(faster, lambda r: r if r["seq_len"] != 64 or r["impl"] != "naive" else {**r, "status": "oom"})
    assert main(["report", str(cpu_results), str(faster), "--out", str(tmp_path / "r"), "--baseline", "naive"]) == 0
    markdown = (tmp_path / "r" / "report.md").read_text()
    section = markdown[markdown.index("## Across machines") :]
    assert "### Faster CPU 9000 against test cpu" in section
    assert "| naive | 2× (2 cases) | 2× (2 cases) |" in section  # its 64-token rows did not run on both
    assert "| sdpa | 2× (3 cases) | 2× (3 cases) |" in section
    assert main(["report", str(cpu_results), "--out", str(tmp_path / "one")]) == 0
    assert "Across machines" not in (tmp_path / "one" / "report.md").read_text()


def test_memory_chart_is_log_log_and_marks_oom(gpu_like_results):
    frame = prepare(load(gpu_like_results))
    part = frame[frame.causal == False]  # noqa: E712
    group = {"device": "cpu", "gpu": "test cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    fig = charts.memory_chart(part, colours(frame.impl), group)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and "(KiB)" in ax.get_ylabel()  # 8 KiB at most
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert "out of memory (×)" in labels and "naive" in labels
    naive = [line for line in ax.get_lines() if line.get_color() == colours(frame.impl)["naive"]][0]
    assert list(naive.get_xdata()) == [16, 32]  # 64 ran out of memory: a marker, not a point
    assert list(naive.get_ydata()) == [4 * 16 * 16 * 2 / 1024, 4 * 32 * 32 * 2 / 1024]


@pytest.mark.parametrize(
    "largest,unit",
    [(3 * 2**30, "GiB"), (2**30, "GiB"), (2**30 - 1, "MiB"), (5 * 2**20, "MiB"), (2**20 - 1, "KiB"), (0, "KiB")],
)
def test_memory_axis_unit_keeps_the_largest_value_at_one_or_above(largest, unit):
    assert charts.memory_unit(largest) == (unit, {"GiB": 2**30, "MiB": 2**20, "KiB": 2**10}[unit])


@pytest.mark.parametrize(
    "limits,expected",
    [
        ((0.15, 3.0), ["0.2", "0.5", "1", "2"]),  # memory flat at a few hundred MiB: powers of ten alone give "1"
        ((1.2, 3.5), ["2", "3"]),  # under a decade: every minor tick
        ((0.01, 1000.0), ["0.01", "0.1", "1", "10", "100", "1000"]),  # many decades: powers of ten only
    ],
)
def test_log_axes_label_enough_ticks_to_read_a_value(limits, expected):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    charts.log_axis(ax.yaxis)
    ax.set_ylim(*limits)
    fig.canvas.draw()
    shown = [
        (tick.get_loc(), tick.label1.get_text())
        for tick in [*ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]
        if limits[0] <= tick.get_loc() <= limits[1] and tick.label1.get_text()
    ]
    plt.close(fig)
    assert [text for _, text in sorted(shown)] == expected


def test_speedup_chart_is_log_scaled_with_the_baseline_at_one(cpu_results):
    frame = prepare(load(cpu_results))
    part = frame[frame.causal == False]  # noqa: E712
    group = {"device": "cpu", "gpu": "test cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    fig = charts.speedup_chart(part, colours(frame.impl), group, "naive")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"  # 0.5x and 2x equally far from 1
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
    assert curves and all(ydata > 0 for line in curves for ydata in line.get_ydata())
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ax.get_lines())  # the baseline


def test_speedup_chart_marks_out_of_memory_lengths(gpu_like_results):
    frame = prepare(load(gpu_like_results))
    part = frame[frame.causal == False]  # noqa: E712
    group = {"device": "cpu", "gpu": "test cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    fig = charts.speedup_chart(part, colours(frame.impl), group, "sdpa")
    assert "out of memory (×)" in {t.get_text() for t in fig.legends[0].get_texts()}
    marked = [c for c in fig.axes[0].collections if c.get_offsets().shape[0] and c.get_offsets()[0][0] == 64]
    assert len(marked) == 1  # naive ran out of memory at 64 tokens


def test_failure_table_groups_out_of_memory_rows_and_names_their_cases():
    import pandas as pd

    from suite.reporting.build import _failure_table

    def row(impl, status, reason, seq_len, causal=False):
        return dict(
            impl=impl,
            status=status,
            reason=reason,
            batch=1,
            heads=16,
            kv_heads=16,
            seq_len=seq_len,
            head_dim=64,
            dtype="bfloat16",
            causal=causal,
            mode="fwd",
            device="cuda",
        )

    oom = (
        "CUDA out of memory. Tried to allocate 32.00 GiB. GPU 0 has a total capacity of 79.18 GiB of which {} GiB "
        "is free."
    )
    frame = pd.DataFrame(
        [
            row("sparse-block", "oom", oom.format(9.26), 65536),
            row("sparse-block", "oom", oom.format(12.57), 65536, causal=True),
            *[row("xformers", "unsupported", "no CUDA build", n) for n in (1024, 2048, 4096, 8192, 16384)],
        ]
    )
    table = _failure_table(frame)
    assert table.rows == [
        [
            "sparse-block",
            "oom",
            "CUDA out of memory. Tried to allocate 32.00 GiB.",
            "B1-H16-N65536-D64-bf16-dense-fwd; B1-H16-N65536-D64-bf16-causal-fwd",
        ],
        ["xformers", "unsupported", "no CUDA build", "5 cases"],
    ]


def test_report_on_only_failed_rows_says_so(tmp_path):
    path = _run(tmp_path / "failed.jsonl", ["sdpa-cudnn", "sdpa-efficient"])
    assert main(["report", str(path), "--out", str(tmp_path / "r")]) == 0
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "No case was measured" in markdown and "device=cpu (supported: cuda)" in markdown


def test_a_baseline_asked_for_must_have_been_measured(cpu_results, tmp_path, capsys):
    """A typo in --baseline exits 2 naming the measured implementations, and writes nothing; without the flag,
    results lacking the default baseline still get a report that says why it has no speed-ups."""
    out = tmp_path / "report"
    assert main(["report", str(cpu_results), "--out", str(out), "--baseline", "sdpa-flsh"]) == 2
    err = capsys.readouterr().err
    assert "--baseline: 'sdpa-flsh' was not measured in these results (measured: naive, sdpa," in err
    assert not out.exists()
    without_sdpa = tmp_path / "no-sdpa.jsonl"
    without_sdpa.write_text(
        "".join(line + "\n" for line in cpu_results.read_text().splitlines() if '"impl": "sdpa"' not in line)
    )
    assert main(["report", str(without_sdpa), "--out", str(out)]) == 0
    assert "No speed-up charts: the baseline 'sdpa' was not measured" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "content,message",
    [
        ("", r"no result rows"),
        ("{not json\n{}\n", r"not valid JSON"),
        ('{"record": "something"}\n', r"not an attnbench record"),
    ],
)
def test_empty_or_malformed_results_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert main(["report", str(path), "--out", str(tmp_path / "r")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert main(["recommend", "--seq-len", "32", "--heads", "2", "--head-dim", "16", "--results", str(path)]) == 2


def _recommend(capsys, path, *flags) -> str:
    assert (
        main(["recommend", "--heads", "2", "--head-dim", "16", "--dtype", "float32", "--results", str(path), *flags])
        == 0
    )
    return capsys.readouterr().out


def test_recommend_reads_only_results_timed_on_this_machine_model(capsys, cpu_results, tmp_path, monkeypatch):
    """Without --results: the newest file of this CPU (or GPU) model; another model's times would rank for the
    wrong machine, so it is named as a choice, never taken."""
    from suite.results import naming
    from suite.results.environment import machine_name
    from tests.results_files import rewrite_headers

    monkeypatch.setattr(naming, "RESULTS_DIR", tmp_path)
    elsewhere = tmp_path / "2099-01-01_other-cpu_smoke.jsonl"  # newer by name than the file of this machine
    elsewhere.write_text(cpu_results.read_text())
    rewrite_headers(elsewhere, lambda h: {**h, "environment": {**h["environment"], "cpu": "Another CPU 9000"}})
    ask = ["recommend", "--seq-len", "32", "--heads", "2", "--head-dim", "16", "--dtype", "float32"]
    assert main(ask) == 2
    err = capsys.readouterr().err
    assert "no results file timed on" in err and f"Another CPU 9000: {elsewhere}" in err

    here = tmp_path / "2000-01-01_this-cpu_smoke.jsonl"
    here.write_text(cpu_results.read_text())
    rewrite_headers(here, lambda h: {**h, "environment": {**h["environment"], "cpu": machine_name("cpu")}})
    assert main(ask) == 0
    assert f"results: {here}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ["--kv-heads", "1"],
            "no rows with 2 query heads per key/value head (--heads 2, --kv-heads 1) in the results "
            "(measured: ungrouped heads)",
        ),
        (
            ["--heads", "8", "--kv-heads", "2"],
            "no rows with 4 query heads per key/value head (--heads 8, --kv-heads 2)",
        ),
        (["--head-dim", "64"], "no rows with --head-dim 64 for ungrouped heads in the results (measured: 16)"),
        (
            ["--mode", "bwd"],
            "no rows with --mode bwd for ungrouped heads, --head-dim 16, --dtype float32, "
            "--causal true in the results (measured: fwd)",
        ),
        (["--seq-len", "32,64"], r"--seq-len: 2 values given (32, 64) (allowed: exactly one)"),
        (["--heads", "4", "--kv-heads", "3"], "--kv-heads: 3 does not divide --heads 4"),
    ],
)
def test_recommend_for_an_unmeasured_shape_names_what_was_measured(capsys, cpu_results, flags, message):
    ask = [
        "recommend",
        "--seq-len",
        "32",
        "--heads",
        "2",
        "--head-dim",
        "16",
        "--dtype",
        "float32",
        "--causal",
        "--results",
        str(cpu_results),
    ]
    assert main([*ask, *flags]) == 2
    assert message in capsys.readouterr().err


def test_recommend_ranks_and_respects_max_error(capsys, cpu_results):
    everything = _recommend(capsys, cpu_results, "--seq-len", "32")
    ranked = re.findall(r"^\d+\s+(\S+)", everything, re.M)
    assert {"naive", "sdpa", "linear", "sparse-window:window=8"} <= set(ranked)
    frame = load(cpu_results)
    at = frame[(frame.seq_len == 32) & (frame.causal == False) & (frame.status == "ok")].set_index("impl")  # noqa: E712
    assert ranked == sorted(ranked, key=lambda impl: at.time_ms[impl])  # fastest first
    assert "sdpa-cudnn: unsupported at seq_len 32: device=cpu" in everything
    first_calls = dict(re.findall(r"^\d+\s+(\S+)\s.*?\s(\S+ m?s)  measured", everything, re.M))
    assert first_calls == {impl: fmt_duration(at.first_call_ms[impl]) for impl in ranked}  # as measured, not scaled

    assert re.search(r"^\d+\s+naive\s.*\(rounding\)", everything, re.M)
    assert re.search(r"^\d+\s+linear\s.*\(local\)", everything, re.M) and "note:" not in everything

    strict = _recommend(capsys, cpu_results, "--seq-len", "32", "--max-error", "0.01")
    kept = re.findall(r"^\d+\s+(\S+)", strict, re.M)
    assert "linear" not in kept and "naive" in kept
    assert re.search(r"linear: error \S+ \(local\) above --max-error 0.01", strict)


def test_recommend_as_json_gives_the_same_ranking_and_exclusions(capsys, cpu_results):
    text = _recommend(capsys, cpu_results, "--seq-len", "32", "--max-error", "0.01")
    answer = json.loads(_recommend(capsys, cpu_results, "--seq-len", "32", "--max-error", "0.01", "--format", "json"))
    assert [c["impl"] for c in answer["ranked"]] == re.findall(r"^\d+\s+(\S+)", text, re.M)
    assert answer["query"]["seq_len"] == 32 and answer["query"]["max_error"] == 0.01
    times = [c["time_ms"] for c in answer["ranked"]]
    assert times == sorted(times) and all(t > 0 for t in times)
    excluded = {e["impl"]: e["why"] for e in answer["excluded"]}
    assert "above --max-error 0.01" in excluded["linear"] and "unsupported" in excluded["sdpa-cudnn"]


def test_recommend_respects_memory_budget(capsys, gpu_like_results):
    answer = _recommend(capsys, gpu_like_results, "--seq-len", "32", "--memory-budget", "4KiB")
    assert re.search(r"naive: peak memory 8\.0 KiB above --memory-budget 4\.0 KiB", answer)
    assert "sdpa" in re.findall(r"^\d+\s+(\S+)", answer, re.M)


def test_recommend_interpolates_between_measured_lengths_only(capsys, cpu_results):
    between = _recommend(capsys, cpu_results, "--seq-len", "48")
    assert "interpolated between seq_len 32 (batch 1) and 64 (batch 1)" in between
    frame = load(cpu_results)
    naive = frame[(frame.impl == "naive") & (frame.causal == False) & frame.seq_len.isin([32, 64])]  # noqa: E712
    assert re.search(
        rf"^\d+\s+naive\s.*\s{re.escape(fmt_duration(naive.first_call_ms.max()))}  interpolated", between, re.M
    )  # the larger of the two lengths' first calls
    assert (
        main(
            [
                "recommend",
                "--heads",
                "2",
                "--head-dim",
                "16",
                "--dtype",
                "float32",
                "--results",
                str(cpu_results),
                "--seq-len",
                "128",
            ]
        )
        == 1
    )  # none qualifies
    beyond = capsys.readouterr().out
    assert "no implementation qualifies" in beyond
    assert "naive: not measured around seq_len 128 (measured: [16, 32, 64]); no extrapolation" in beyond


def test_recommend_scales_from_the_measured_batch_nearest_the_asked_one(capsys, cpu_results, tmp_path):
    """A GPU is not 4x busier at batch 4 than at 1: the time measured at the asked batch beats a scaled one."""
    from tests.results_files import rewrite_rows

    at_four = tmp_path / "batch-4.jsonl"
    at_four.write_text(cpu_results.read_text())
    rewrite_rows(at_four, lambda r: {**r, "batch": 4, "time_ms": r["time_ms"] * 3 if r.get("time_ms") else None})
    both = tmp_path / "both.jsonl"
    both.write_text(at_four.read_text() + cpu_results.read_text())  # the batch-1 rows come last
    naive = load(cpu_results).query("impl == 'naive' and seq_len == 32 and not causal").iloc[0]

    def naive_line(batch: str) -> str:
        out = _recommend(capsys, both, "--seq-len", "32", "--batch", batch)
        return next(line for line in out.splitlines() if re.match(r"^\d+\s+naive\s", line))

    assert f"{fmt_num(naive.time_ms)} ms" in naive_line("1") and naive_line("1").endswith("batch 1")
    for batch, expected in (("4", naive.time_ms * 3), ("3", naive.time_ms * 3 * 3 / 4)):
        line = naive_line(batch)  # 3 is nearer 4 than 1 by ratio
        assert f"{fmt_num(expected)} ms" in line and line.endswith("measured at seq_len 32, batch 4"), (batch, line)


def test_recommend_scales_from_another_head_count_only_where_the_asked_one_was_not_measured(
    capsys, cpu_results, tmp_path
):
    """Heads are independent problems, as the batch is: rows at 2 heads answer for 4 (scaled by batch × heads),
    but rows at the asked head count, where there are any, answer alone."""
    from tests.results_files import rewrite_rows

    naive = load(cpu_results).query("impl == 'naive' and seq_len == 32 and not causal").iloc[0]

    def naive_line(path, *flags) -> str:
        assert (
            main(
                [
                    "recommend",
                    "--head-dim",
                    "16",
                    "--dtype",
                    "float32",
                    "--seq-len",
                    "32",
                    "--results",
                    str(path),
                    *flags,
                ]
            )
            == 0
        )
        return next(line for line in capsys.readouterr().out.splitlines() if re.match(r"^\d+\s+naive\s", line))

    line = naive_line(cpu_results, "--heads", "4")
    assert f"{fmt_num(naive.time_ms * 2)} ms" in line and line.endswith("measured at seq_len 32, batch 1, 2 heads")
    line = naive_line(cpu_results, "--heads", "2", "--batch", "3")
    assert f"{fmt_num(naive.time_ms * 3)} ms" in line and line.endswith("measured at seq_len 32, batch 1")

    at_eight = tmp_path / "heads-8.jsonl"
    at_eight.write_text(cpu_results.read_text())
    rewrite_rows(
        at_eight,
        lambda r: {**r, "heads": 8, "kv_heads": None, "time_ms": r["time_ms"] * 3 if r.get("time_ms") else None},
    )
    both = tmp_path / "both.jsonl"
    both.write_text(at_eight.read_text() + cpu_results.read_text())
    line = naive_line(both, "--heads", "8")
    assert f"{fmt_num(naive.time_ms * 3)} ms" in line and line.endswith("measured at seq_len 32, batch 1")
    line = naive_line(both, "--heads", "6")  # 6 problems: nearer 8 than 2 by ratio
    assert f"{fmt_num(naive.time_ms * 3 * 6 / 8)} ms" in line and line.endswith("batch 1, 8 heads")
    # 2 heads at batch 6 is 12 problems, nearer 8 heads at batch 1 than 2 heads at batch 1; yet the asked head
    # count's rows answer alone
    line = naive_line(both, "--heads", "2", "--batch", "6")
    assert f"{fmt_num(naive.time_ms * 6)} ms" in line and line.endswith("measured at seq_len 32, batch 1")
    between = naive_line(both, "--heads", "5", "--seq-len", "48")  # 5 problems: 8 heads (ratio 1.6) over 2 (2.5)
    assert between.endswith("interpolated between seq_len 32 (batch 1, 8 heads) and 64 (batch 1, 8 heads)")


def test_recommend_bad_memory_budget_exits_2(capsys, cpu_results):
    assert (
        main(
            [
                "recommend",
                "--seq-len",
                "32",
                "--heads",
                "2",
                "--head-dim",
                "16",
                "--memory-budget",
                "lots",
                "--results",
                str(cpu_results),
            ]
        )
        == 2
    )
    assert "--memory-budget: 'lots' is not a size" in capsys.readouterr().err


def test_attention_maps_draw_each_approximations_own_weights_on_a_log_scale():
    """A window's cut shows as the floor colour, and the difference row is its weights minus softmax's."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    import implementations
    from suite.reporting.attention_maps import WEIGHT_FLOOR, attention_map_chart, map_inputs

    window = implementations.get("sparse-window", window=8)
    fig = attention_map_chart([window], causal=False)
    q, k = map_inputs()
    exact = implementations.get("reference").attention_weights(q, k)[0, 0].numpy()
    weights = window.attention_weights(q, k)[0, 0].numpy()
    drawn = fig.axes[1].images[0]  # row 1: exact, window; row 2: (hidden), window − exact
    assert isinstance(drawn.norm, LogNorm) and drawn.norm.vmin == WEIGHT_FLOOR
    np.testing.assert_allclose(drawn.get_array(), np.clip(weights, WEIGHT_FLOOR, None))
    positions = np.arange(weights.shape[0])
    outside = np.abs(np.subtract.outer(positions, positions)) > 8
    assert (drawn.get_array()[outside] == WEIGHT_FLOOR).all() and (exact[outside] > WEIGHT_FLOOR).any()
    np.testing.assert_allclose(fig.axes[3].images[0].get_array(), weights - exact)
    plt.close(fig)


def test_one_time_costs_table_gives_each_implementations_first_calls():
    from suite.reporting.first_calls import first_call_table

    def row(impl, seq_len, first_call_ms, time_ms, status="ok"):
        return {
            "impl": impl,
            "batch": 1,
            "heads": 2,
            "seq_len": seq_len,
            "head_dim": 16,
            "dtype": "bfloat16",
            "causal": False,
            "mode": "fwd",
            "device": "cuda",
            "kv_heads": 2,
            "gpu": "GPU",
            "status": status,
            "first_call_ms": first_call_ms,
            "time_ms": time_ms,
        }

    frame = pd.DataFrame(
        [
            row("sparse-window", 1024, 2000.0, 1.0),
            row("sparse-window", 2048, 3000.0, 2.0),
            row("sparse-window", 4096, 9000.0, 3.0),
            row("naive", 1024, 5.0, 2.5),
            row("naive", 2048, None, None, status="oom"),
        ]
    )
    table = first_call_table(frame)
    assert table.rows == [
        ["naive", "fwd", "1", "5 ms", "5 ms (B1-H2-N1024-D16-bf16-dense-fwd)", "2×"],
        ["sparse-window", "fwd", "3", "3 s", "9 s (B1-H2-N4096-D16-bf16-dense-fwd)", "2000×"],
    ]
    assert first_call_table(frame[frame.status == "oom"]) is None


@pytest.mark.parametrize("value,text", [(1980.4, "1980"), (123.456, "123"), (0.0123456, "0.0123"), (None, "–")])
def test_numbers_keep_three_digits_without_exponent_notation(value, text):
    assert fmt_num(value) == text


def test_recommend_says_which_errors_are_on_iid_inputs(capsys, cpu_results, tmp_path):
    """Without the local-inputs figure an approximation's error is on i.i.d. inputs: labelled, and a note says why
    it is not comparable."""
    from tests.results_files import rewrite_rows

    path = tmp_path / "no-local.jsonl"
    path.write_text(cpu_results.read_text())
    rewrite_rows(path, lambda r: {**r, "softmax_local_rel_rms_err": None} if r["impl"] == "linear" else r)
    out = _recommend(capsys, path, "--seq-len", "32")
    frame = load(path)
    linear = frame[(frame.impl == "linear") & (frame.seq_len == 32) & (frame.causal == False)].iloc[0]  # noqa: E712
    assert re.search(rf"^\d+\s+linear\s.*\s{re.escape(fmt_num(linear.softmax_rel_rms_err))} \(i\.i\.d\.\)", out, re.M)
    assert re.search(r"^\d+\s+performer:features=32\s.*\(local\)", out, re.M)
    assert "note: the errors of linear are on i.i.d. inputs (no local-inputs figure):" in out
    # excluded by the i.i.d. figure: the note names it too, since that figure misranks windows and feature maps
    strict = _recommend(capsys, path, "--seq-len", "32", "--max-error", f"{linear.softmax_rel_rms_err / 2:g}")
    assert re.search(r"^  linear: error .* \(i\.i\.d\.\) above --max-error", strict, re.M)
    assert (
        "note: the errors of linear are on i.i.d. inputs (no local-inputs figure); linear excluded by them:" in strict
    )

    # with neither softmax figure, its error against its own twin must not stand in for one
    rewrite_rows(path, lambda r: {**r, "softmax_rel_rms_err": None} if r["impl"] == "linear" else r)
    out = _recommend(capsys, path, "--seq-len", "32")
    assert re.search(r"^\d+\s+linear\s.*\s– \(–\)", out, re.M), out
    assert "(rounding)" not in re.search(r"^\d+\s+linear\s.*$", out, re.M).group(0)
    strict = _recommend(capsys, path, "--seq-len", "32", "--max-error", "0.5")
    assert "linear: error not measured" in strict


def test_accuracy_chart_leaves_out_an_approximation_without_the_charts_figure(cpu_results):
    """Its error against its own twin would place it beside the exact kernels."""
    frame = prepare(load(cpu_results))
    case = {"seq_len": 32, "heads": 2, "head_dim": 16, "dtype": "float32", "causal": False, "mode": "fwd"}
    at_case = frame[(frame.seq_len == 32) & (frame.causal == False) & frame.status.isin(["ok"])].copy()  # noqa: E712
    at_case.loc[at_case.impl == "linear", "softmax_local_rel_rms_err"] = None
    fig = charts.accuracy_speed_chart(at_case, colours(frame.impl), case)
    ax = fig.axes[0]
    assert "(local inputs)" in ax.get_ylabel()
    drawn = {text.get_text() for text in fig.legends[0].get_texts()}
    assert "linear" not in drawn and {"naive", "performer:features=32"} <= drawn
    assert any("not drawn (no such figure): linear" in text.get_text() for text in ax.texts)
    assert "i.i.d." not in ax.get_ylabel()
    naive = at_case[at_case.impl == "naive"].iloc[0]
    points = {tuple(collection.get_offsets()[0]) for collection in ax.collections}
    assert (naive.time_ms, naive.rel_rms_err) in points  # exact kernels: their rounding against float64

    # without any local figure the chart falls back to the i.i.d. one, and says so
    at_case["softmax_local_rel_rms_err"] = None
    iid_fig = charts.accuracy_speed_chart(at_case, colours(frame.impl), case)
    ax = iid_fig.axes[0]
    assert "(i.i.d. inputs" in ax.get_ylabel() and "local" not in ax.get_ylabel()
    performer = at_case[at_case.impl == "performer:features=32"].iloc[0]
    assert (performer.time_ms, performer.softmax_rel_rms_err) in {tuple(c.get_offsets()[0]) for c in ax.collections}
    exact_fig = charts.accuracy_speed_chart(at_case[at_case.family == "exact"], colours(frame.impl), case)
    assert (
        exact_fig.axes[0].get_ylabel() == "relative RMS error vs exact softmax attention"
    )  # rounding: no inputs named
    for figure in (fig, iid_fig, exact_fig):
        charts.plt.close(figure)


def test_report_marks_speed_ups_that_rest_on_a_mismatch(cpu_results, tmp_path):
    from tests.results_files import rewrite_rows

    path = tmp_path / "mismatch.jsonl"
    path.write_text(cpu_results.read_text())
    rewrite_rows(
        path,
        lambda r: (
            {**r, "status": "mismatch", "accuracy_ok": False, "reason": "injected"}
            if r["impl"] == "linear" and r["seq_len"] == 64 and not r["causal"]
            else r
        ),
    )
    assert main(["report", str(path), "--out", str(tmp_path / "report"), "--baseline", "naive"]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "! = it or naive failed its accuracy check there" in markdown
    assert re.search(r"^\| linear \|.*×! \|$", markdown, re.M)


def test_charts_ring_points_that_failed_their_accuracy_check(cpu_results):
    frame = prepare(load(cpu_results))
    part = frame[(frame.causal == False) & (frame["mode"] == "fwd")].copy()  # noqa: E712
    wrong = (part.impl == "linear") & (part.seq_len == 64)
    part.loc[wrong, "status"] = "mismatch"
    group = {"gpu": "cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    linear = part[wrong].iloc[0]
    naive = part[(part.impl == "naive") & (part.seq_len == 64)].iloc[0]
    expected = {"time": (64.0, linear.time_ms), "speed-up": (64.0, naive.time_ms / linear.time_ms)}
    for name, fig in (
        ("time", charts.throughput_chart(part, colours(frame.impl), group)),
        ("speed-up", charts.speedup_chart(part, colours(frame.impl), group, "naive")),
    ):
        assert "accuracy mismatch (red ring)" in {text.get_text() for text in fig.legends[0].get_texts()}, name
        rings = [c for c in fig.axes[0].collections if len(c.get_offsets()) and not c.get_facecolor().any()]
        assert [tuple(ring.get_offsets()[0]) for ring in rings] == [pytest.approx(expected[name])], name
        charts.plt.close(fig)


def test_results_of_two_batchings_are_compared_and_drawn_apart(tmp_path):
    """Files of two presets can hold the same case at different batches: each ratio and line is within one."""
    paths = []
    for tokens in (64, 256):
        path = tmp_path / f"tokens-{tokens}.jsonl"
        cases = [Case(tokens // n, 2, n, 16, "float32", False, "fwd", "cpu") for n in (16, 32)]
        writer = ResultsWriter(
            path, {"device": "cpu", "cpu": "test cpu"}, {"grid": {"batch": None, "tokens_per_batch": tokens}}
        )
        run_cases(
            [config.build_impl("--impl", spec) for spec in ("naive", "linear")],
            cases,
            settings=FAST,
            on_row=writer.append,
        )
        writer.close()
        paths.append(path)
    frame = prepare(load(paths))
    assert sorted(set(frame.batching)) == ["256 tokens per batch", "64 tokens per batch"]
    out = tmp_path / "report"
    assert main(["report", *map(str, paths), "--out", str(out), "--baseline", "naive"]) == 0
    markdown = (out / "report.md").read_text()
    for tokens in (64, 256):
        rows = frame[frame.batching == f"{tokens} tokens per batch"].set_index(["impl", "seq_len"]).time_ms
        ratio = fmt_num(rows["naive", 32] / rows["linear", 32], 3)
        section = markdown.split(f"### test cpu · {tokens} tokens per batch · H2 D16 · float32 · dense · fwd\n")[1]
        assert re.search(rf"^\| linear \| .* \| ≈?{re.escape(ratio)}× \|$", section.split("###")[0], re.M), section[
            :500
        ]
        assert (out / "charts" / f"speedup-test-cpu-{tokens}-tokens-per-batch-float32-dense-fwd.png").exists()

    # one batching alone needs no word in titles and file names
    assert main(["report", str(paths[0]), "--out", str(tmp_path / "one"), "--baseline", "naive"]) == 0
    assert "tokens per batch" not in (tmp_path / "one" / "report.md").read_text()


def test_a_case_in_two_files_of_one_machine_appears_once_from_the_last(cpu_results, tmp_path):
    from tests.results_files import rewrite_rows

    later = tmp_path / "later.jsonl"
    later.write_text(cpu_results.read_text())
    rewrite_rows(later, lambda r: {**r, "time_ms": r["time_ms"] * 2 if r.get("time_ms") else r.get("time_ms")})
    out = tmp_path / "report"
    assert main(["report", str(cpu_results), str(later), "--out", str(out), "--baseline", "naive"]) == 0
    markdown = (out / "report.md").read_text()
    rows = len(load(cpu_results))
    assert f"{rows} result rows" in markdown and f"{rows} rows measured a case that a later file measured" in markdown
    naive = load(later).query("impl == 'naive' and seq_len == 16 and not causal").iloc[0]
    section = markdown.split("## Tables")[1]
    assert f"| {fmt_num(naive.time_ms)} ms" in section  # the later file's time, not the earlier one's


def test_two_cpu_models_are_drawn_apart_and_named(cpu_results, tmp_path):
    """CPU rows are grouped by the CPU that timed them, as GPU rows are by their GPU."""
    from tests.results_files import rewrite_headers

    other = tmp_path / "other-cpu.jsonl"
    other.write_text(cpu_results.read_text())
    rewrite_headers(other, lambda h: {**h, "environment": {**h["environment"], "cpu": "Another CPU 9000"}})
    out = tmp_path / "report"
    assert main(["report", str(cpu_results), str(other), "--out", str(out), "--baseline", "naive"]) == 0
    markdown = (out / "report.md").read_text()
    for cpu, slug in (("test cpu", "test-cpu"), ("Another CPU 9000", "another-cpu-9000")):
        assert f"### {cpu} · H2 D16 · float32 · dense · fwd\n" in markdown
        assert (out / "charts" / f"speedup-{slug}-float32-dense-fwd.png").exists()
    assert "measured a case that a later file measured" not in markdown  # two machines: nothing set aside


def test_charts_for_publishing_are_vector_and_the_same_when_regenerated(cpu_results, tmp_path, capsys):
    import xml.etree.ElementTree as ElementTree

    out = tmp_path / "report"
    assert main(["report", str(cpu_results), "--out", str(out), "--chart-formats", "svg,pdf"]) == 0
    charts_written = sorted(p.name for p in (out / "charts").iterdir())
    stems = {name.rsplit(".", 1)[0] for name in charts_written}
    assert charts_written == sorted(f"{stem}.{fmt}" for stem in stems for fmt in ("png", "svg", "pdf"))
    assert ElementTree.parse(out / "charts" / "accuracy-vs-speed.svg").getroot().tag.endswith("svg")
    assert (out / "charts" / "accuracy-vs-speed.pdf").read_bytes().startswith(b"%PDF")
    assert ".png)" in (out / "report.md").read_text()  # the pages show the PNG
    # drawn again, each file is the same bytes: no creation dates or random element ids
    frame = prepare(load(cpu_results))
    group = {"device": "cpu", "gpu": "test cpu", "dtype": "float32", "causal": False, "mode": "fwd"}
    part = frame[(frame.causal == False) & (frame["mode"] == "fwd")]  # noqa: E712
    for name in ("one", "two"):
        charts.save(
            charts.throughput_chart(part, colours(frame.impl), group, "time_ms"), tmp_path / name, ("svg", "pdf")
        )
    for fmt in ("svg", "pdf"):
        assert (tmp_path / f"one.{fmt}").read_bytes() == (tmp_path / f"two.{fmt}").read_bytes(), fmt
    assert main(["report", str(cpu_results), "--out", str(tmp_path / "bad"), "--chart-formats", "svg,jpg"]) == 2
    assert "unknown format 'jpg' (allowed: png, svg, pdf)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def _timed_row(
    impl,
    time_ms,
    *,
    iqr=0.0,
    seq_len=1024,
    heads=8,
    causal=False,
    mode="fwd",
    status="ok",
    family="exact",
    backend=None,
    head_dim=64,
):
    return {
        "impl": impl,
        "family": family,
        "batch": 16384 // seq_len,
        "heads": heads,
        "kv_heads": heads,
        "seq_len": seq_len,
        "head_dim": head_dim,
        "dtype": "bfloat16",
        "causal": causal,
        "mode": mode,
        "device": "cuda",
        "gpu": "GPU",
        "batching": None,
        "queries": None,
        "status": status,
        "time_ms": time_ms,
        "time_iqr_ms": iqr,
        "backend": backend,
        "tflops": None,
        "peak_mem_bytes": None,
        "rel_rms_err": None,
        "softmax_rel_rms_err": None,
        "softmax_local_rel_rms_err": None,
    }


def test_the_fastest_exact_implementation_is_named_with_its_margin_and_whoever_ties_it():
    from suite.reporting.fastest import lead

    rows = lambda *r: pd.DataFrame(list(r))  # noqa: E731
    found = lead(rows(_timed_row("sdpa-flash", 2.0), _timed_row("sdpa-cudnn", 1.0), _timed_row("naive", 9.0)))
    assert found.describe() == "sdpa-cudnn · 2× over sdpa-flash"
    # within the two rows' summed relative IQRs: a tie, and the margin is over the next one outside it
    found = lead(
        rows(
            _timed_row("sdpa-flash", 1.04, iqr=0.03), _timed_row("sdpa-cudnn", 1.0, iqr=0.02), _timed_row("naive", 3.0)
        )
    )
    assert found.describe() == "sdpa-cudnn ≈ sdpa-flash · 3× over naive"
    # `sdpa` choosing cuDNN runs sdpa-cudnn's kernel: one lead, however far apart their medians
    found = lead(
        rows(_timed_row("sdpa", 1.0, backend="cudnn"), _timed_row("sdpa-cudnn", 1.2), _timed_row("sdpa-flash", 1.5))
    )
    assert found.describe() == "sdpa (cudnn) ≈ sdpa-cudnn · 1.5× over sdpa-flash" and found.kernels == ["sdpa-cudnn"]
    # a wrong result, an approximation or a row that did not run never leads
    found = lead(
        rows(
            _timed_row("naive", 3.0),
            _timed_row("sdpa", 1.0, status="mismatch"),
            _timed_row("linear", 0.1, family="linear"),
            _timed_row("sdpa-flash", None, status="oom"),
        )
    )
    assert found.describe() == "naive (alone)"
    assert lead(rows(_timed_row("linear", 0.1, family="linear"))) is None


def test_the_fastest_tables_cover_lengths_and_head_counts_per_head_dim():
    from suite.reporting.fastest import fastest_tables, win_counts

    rows = []
    for seq_len in (1024, 4096):
        for heads in (8, 32):
            for causal in (False, True):
                flash_time = 1.0 if (seq_len, heads) == (1024, 8) else 2.0  # flash wins one case of four
                rows += [
                    _timed_row("sdpa-flash", flash_time, seq_len=seq_len, heads=heads, causal=causal),
                    _timed_row("sdpa-cudnn", 1.6, seq_len=seq_len, heads=heads, causal=causal),
                    _timed_row("performer", 0.1, seq_len=seq_len, heads=heads, causal=causal, family="performer"),
                ]
    rows.append(_timed_row("naive", 1.0, head_dim=128))  # alone at its head dim: nothing to compare, no table
    frame = prepare(pd.DataFrame(rows))
    ((title, table),) = fastest_tables(frame)
    assert title == "GPU · D64 · bfloat16"
    assert table.header == ["length (batch) · heads", "dense fwd", "causal fwd"]
    assert [row[0] for row in table.rows] == ["1K (B16) · H8", "1K (B16) · H32", "4K (B4) · H8", "4K (B4) · H32"]
    assert table.rows[0][1:] == ["sdpa-flash · 1.6× over sdpa-cudnn"] * 2
    assert table.rows[3][1:] == ["sdpa-cudnn · 1.25× over sdpa-flash"] * 2
    assert win_counts(frame) == {"sdpa-cudnn": 6, "sdpa-flash": 2}


def test_a_report_says_which_exact_implementation_is_fastest_where(gpu_like_results, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(gpu_like_results), "--out", str(out), "--baseline", "naive"]) == 0
    markdown = (out / "report.md").read_text()
    assert "## Fastest exact implementation" in markdown
    section = markdown.split("## Fastest exact implementation")[1].split("\n## ")[0]
    assert "### Fastest: Test GPU · D16 · float32" in section and "performer" not in section


def test_recommend_notes_implementations_that_were_host_bound_where_measured(capsys, cpu_results, tmp_path):
    from tests.results_files import rewrite_rows

    path = tmp_path / "host-bound.jsonl"
    path.write_text(cpu_results.read_text())
    rewrite_rows(path, lambda r: {**r, "host_ms": 1.0, "host_bound": r["impl"] == "naive"})
    out = _recommend(capsys, path, "--seq-len", "32")
    assert "note: naive was host-bound where measured" in out
    between = _recommend(capsys, path, "--seq-len", "24")  # interpolated: either neighbour counts
    assert "note: naive was host-bound where measured" in between
    ranked = json.loads(_recommend(capsys, path, "--seq-len", "32", "--format", "json"))["ranked"]
    assert {c["impl"]: c["host_bound"] for c in ranked}["naive"] is True
    assert not any(c["host_bound"] for c in ranked if c["impl"] != "naive")
    assert "host-bound" not in _recommend(capsys, cpu_results, "--seq-len", "32")


def test_report_marks_host_bound_cells_and_says_what_the_mark_means(cpu_results, tmp_path):
    from tests.results_files import rewrite_rows

    path = tmp_path / "host-bound.jsonl"
    path.write_text(cpu_results.read_text())
    rewrite_rows(path, lambda r: {**r, "host_ms": 1.0, "host_bound": r["impl"] == "naive" and r["status"] == "ok"})
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    naive_rows = int((load(path).pipe(lambda f: (f.impl == "naive") & (f.status == "ok"))).sum())
    assert f"‡ = host-bound ({naive_rows} rows)" in markdown
    header, *_ = [line for line in markdown.splitlines() if line.startswith("| seq len (batch) | naive |")]
    table_rows = [line for line in markdown.splitlines() if re.match(r"\| \d+ \(B\d+\) \|", line)]
    assert table_rows and all(line.split("|")[2].strip().endswith("‡") for line in table_rows)
    assert all("‡" not in cell for line in table_rows for cell in line.split("|")[3:])


def test_scaling_exponents_are_fitted_per_sequence_over_the_longest_lengths():
    from suite.reporting.scaling import scaling_exponent, scaling_tables

    def rows(impl, time_of, lengths=(512, 1024, 2048, 4096, 8192), **extra):
        # 16K tokens per batch, as the presets run them: the batch shrinks as the length grows
        return [_timed_row(impl, time_of(n) * (16384 // n), seq_len=n, **extra) for n in lengths]

    frame = prepare(
        pd.DataFrame(
            [
                *rows("sdpa-flash", lambda n: 1e-6 * n * n),
                # fixed costs at short lengths must not pull the exponent of a linear-time kernel down
                *rows("linear", lambda n: 1e-3 * n + (5.0 if n < 2048 else 0.0), family="linear"),
                *rows("naive", lambda n: 1e-6 * n * n, lengths=(512, 1024, 2048, 4096)),
                _timed_row("naive", None, seq_len=8192, status="oom"),
                _timed_row("sdpa-cudnn", 1.0, seq_len=8192),
            ]
        )
    )
    flash = scaling_exponent(frame[frame.impl == "sdpa-flash"])
    assert flash == (pytest.approx(2.0), 2048, 8192)
    assert scaling_exponent(frame[frame.impl == "linear"]) == (pytest.approx(1.0), 2048, 8192)
    assert scaling_exponent(frame[frame.impl == "naive"])[1:] == (1024, 4096)  # out of memory at 8K: fitted below
    assert scaling_exponent(frame[frame.impl == "sdpa-cudnn"]) is None  # one length: nothing to fit
    ((title, table),) = scaling_tables(frame)
    assert title == "GPU · H8 D64 · bfloat16" and table.header == ["implementation", "dense fwd"]
    assert table.rows == [["naive", "2.00 (1K–4K)"], ["sdpa-flash", "2.00 (2K–8K)"], ["linear", "1.00 (2K–8K)"]]


def test_the_fastest_map_colours_each_case_by_the_kernel_that_led_and_labels_its_margin():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    from suite.reporting.fastest import lead_grids
    from suite.reporting.fastest_map import fastest_map

    rows = []
    for seq_len in (1024, 4096):
        for heads in (8, 32):
            cudnn_time = 1.0 if seq_len == 4096 else 3.0  # cuDNN leads at 4K, flash at 1K
            rows += [
                _timed_row("sdpa-flash", 2.0, iqr=0.01, seq_len=seq_len, heads=heads),
                _timed_row("sdpa", cudnn_time * 0.99, seq_len=seq_len, heads=heads, backend="cudnn"),
                _timed_row("sdpa-cudnn", cudnn_time, seq_len=seq_len, heads=heads),
            ]
    rows.append(_timed_row("sdpa-efficient", 2.0, iqr=0.01, seq_len=1024, heads=8))  # tied with flash there
    frame = prepare(pd.DataFrame(rows))
    colour_of = colours(frame.impl)
    ((group, grid, _),) = lead_grids(frame)
    fig = fastest_map(group, grid, colour_of)
    ax = fig.axes[0]
    cells = {(int(p.get_x()), int(p.get_y())): p for p in ax.patches}
    texts = {(round(t.get_position()[0] - 0.5), round(t.get_position()[1] - 0.5)): t.get_text() for t in ax.texts}
    # rows: 1K, 4K; columns: H8, H32
    assert texts == {(0, 0): "≈", (1, 0): "1.5×", (0, 1): "2×", (1, 1): "2×"}
    assert cells[(0, 0)].get_hatch() and not cells[(1, 0)].get_hatch()
    assert cells[(1, 0)].get_facecolor()[:3] == pytest.approx(to_rgb(colour_of["sdpa-flash"]))
    # sdpa choosing cuDNN is drawn as sdpa-cudnn, the kernel that ran, however it was called
    assert cells[(0, 1)].get_facecolor()[:3] == pytest.approx(to_rgb(colour_of["sdpa-cudnn"]))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1K (B16)", "4K (B4)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["H8", "H32"]
    plt.close(fig)


def test_a_roofline_places_each_row_by_its_intensity_under_the_roofs_its_run_measured():
    import matplotlib.pyplot as plt

    from suite.reporting.roofline import roofline_chart

    peak, bandwidth = 800.0, 3000.0  # TFLOP/s, GB/s: the ridge at 266.7 FLOPs per byte
    rows = []
    for impl, tflops, gbytes in (("sdpa-flash", 400.0, 400.0), ("linear", 20.0, 500.0)):
        row = _timed_row(impl, 1.0, family="exact" if impl == "sdpa-flash" else "linear")
        rows.append(
            {
                **row,
                "tflops": tflops,
                "gbytes_per_s": gbytes,
                "peak_fraction": tflops / peak,
                "bandwidth_fraction": gbytes / bandwidth,
            }
        )
    frame = prepare(pd.DataFrame(rows))
    group = {"gpu": "GPU", "dtype": "bfloat16", "causal": False, "mode": "fwd"}
    fig = roofline_chart(frame, colours(frame.impl), group)
    ax = fig.axes[0]
    points = {tuple(np.round(collection.get_offsets()[0], 6)) for collection in ax.collections}
    assert points == {(1000.0, 400.0), (40.0, 20.0)}  # FLOPs per byte = TFLOP/s × 1000 / GB/s
    ((x, y),) = [line.get_data() for line in ax.get_lines()]
    assert np.allclose(y, np.minimum(peak, bandwidth * x / 1e3))
    assert x.min() < 40 and x.max() > 1000  # the roof spans every point and the ridge
    plt.close(fig)
    # CPU rows have neither roof, and the chart says why there is none
    cpu = frame.assign(peak_fraction=None, bandwidth_fraction=None)
    fig = roofline_chart(cpu, colours(cpu.impl), group)
    assert not fig.axes[0].get_lines() and "no roofs" in fig.axes[0].get_title()
    plt.close(fig)


def test_report_says_how_far_it_has_got(cpu_results, tmp_path):
    from suite.reporting import build_report

    told: list[str] = []
    build_report([cpu_results], tmp_path / "report", baseline="naive", say=told.append)
    groups = [message for message in told if message.startswith("charts ")]
    assert told[0].endswith(" rows from 1 file") and told[-1] == "writing report.md, index.html and data.csv"
    assert (
        groups and groups[0].startswith(f"charts 1/{len(groups)}: ") and groups[-1].startswith(f"charts {len(groups)}/")
    )
    charts_drawn = {p.name.split("-")[0] for p in (tmp_path / "report" / "charts").glob("time-*.png")}
    assert len(list((tmp_path / "report" / "charts").glob("time-*.png"))) == len(groups) and charts_drawn == {"time"}


def test_report_of_some_implementations_keeps_their_colours(cpu_results, tmp_path, capsys, monkeypatch):
    """`--impl 'sdpa*,perf*'` reports those rows only, each in the colour the whole file's report gives it, so
    charts of several selections read alike; a pattern that matches nothing exits 2 and writes nothing."""
    from suite.reporting import build

    drawn: list[dict] = []
    throughput_chart = build.charts.throughput_chart
    monkeypatch.setattr(
        build.charts,
        "throughput_chart",
        lambda frame, colour_of, *rest: drawn.append(colour_of) or throughput_chart(frame, colour_of, *rest),
    )
    out = tmp_path / "report"
    assert main(["report", str(cpu_results), "--out", str(out), "--impl", "sdpa*,perf*"]) == 0
    data = pd.read_csv(out / "data.csv")
    assert impl_order(data.impl) == ["sdpa", "sdpa-cudnn", "performer:features=32"]
    whole = colours(IMPLS)
    assert drawn and all(colour_of["performer:features=32"] == whole["performer:features=32"] for colour_of in drawn)
    markdown = (out / "report.md").read_text()
    assert (
        "Implementations shown: sdpa, sdpa-cudnn, performer:features=32, selected with `--impl sdpa*,perf*` of "
        "the 6 implementations in these files."
    ) in markdown
    assert "| naive |" not in markdown

    with_baseline = tmp_path / "with-baseline"
    assert (
        main(["report", str(cpu_results), "--out", str(with_baseline), "--impl", "linear", "--baseline", "naive"]) == 0
    )
    assert impl_order(pd.read_csv(with_baseline / "data.csv").impl) == ["naive", "linear"]  # the speed-ups need it
    assert "## Speed-up over naive" in (with_baseline / "report.md").read_text()

    elsewhere = tmp_path / "elsewhere"
    assert main(["report", str(cpu_results), "--out", str(elsewhere), "--impl", "sdpa,flash"]) == 2
    assert (
        "--impl: 'flash' matches no implementation in these results (they have: naive, sdpa, sdpa-cudnn, "
        "sparse-window:window=8, linear, performer:features=32)"
    ) in capsys.readouterr().err
    assert not elsewhere.exists()


def test_an_implementation_pattern_names_labels_and_names_with_wildcards():
    label_matches = config.label_matches
    assert label_matches("performer:features=32", ["performer"]) and label_matches("performer:features=32", ["perf*"])
    assert label_matches("performer:features=32", ["performer:features=32"])
    assert not label_matches("performer:features=32", ["performer:features=64"])
    assert label_matches("sdpa-flash", ["sdpa-*"]) and not label_matches("sdpa", ["sdpa-*"])


def test_report_says_what_each_implementations_rows_cost_the_run(cpu_results, tmp_path):
    timed = tmp_path / "timed.jsonl"
    records = [json.loads(line) for line in cpu_results.read_text().splitlines()]
    for record in records:
        if record["record"] == "result":
            record["row_s"] = {"naive": 6.0, "sdpa": 3.0}.get(record["impl"], 0.5 if record["seq_len"] < 64 else 1.5)
    timed.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "report"
    assert main(["report", str(timed), "--out", str(out)]) == 0
    section = (out / "report.md").read_text().split("## Run time")[1].split("## Tables")[0]
    # 6 rows each: naive 36 s, sdpa 18 s, each of the other four 4 × 0.5 + 2 × 1.5 = 5 s (74 s in all)
    assert "| naive | 6 | 36 s | 48.6% | 6 s (B1-H2-N16-D16-fp32-dense-fwd, ok) |" in section
    assert "| sdpa-cudnn | 6 | 5 s | 6.76% | 1.5 s (B1-H2-N64-D16-fp32-dense-fwd, unsupported) |" in section
    assert main(["report", str(cpu_results), "--out", str(tmp_path / "untimed")]) == 0
    assert "## Run time" in (tmp_path / "untimed" / "report.md").read_text()  # this version's runs record it


def test_a_report_written_again_into_its_folder_leaves_no_stale_chart(cpu_results, tmp_path):
    """A report folder is published as it is: charts of an earlier report (other implementations, other formats)
    must not stay beside the new ones; files that are not charts stay."""
    out = tmp_path / "report"
    assert main(["report", str(cpu_results), "--out", str(out), "--chart-formats", "png,svg"]) == 0
    (out / "charts" / "notes.txt").write_text("mine")
    assert main(["report", str(cpu_results), "--out", str(out), "--impl", "sdpa"]) == 0
    linked = set(re.findall(r"charts/([^)\"]+\.png)", (out / "report.md").read_text()))
    assert linked and {p.name for p in (out / "charts").iterdir()} == linked | {"notes.txt"}


@pytest.mark.parametrize(
    "header,grid",
    [
        ({"preset": "smoke", "argv": ["run", "--device", "cpu", "--out", "r.jsonl"]}, "smoke"),
        (
            {
                "preset": "smoke",
                "argv": ["run", "--device", "cpu", "--impl", "naive,sdpa", "--seq-len=128,256", "--heads", "2"],
            },
            "custom: `--impl naive,sdpa --seq-len 128,256 --heads 2` (the rest as smoke)",
        ),
        (
            {
                "preset": "quick",
                "argv": ["run", "--preset", "quick", "--head-d", "128", "--causal", "--out", "r.jsonl"],
            },
            "custom: `--head-dim 128 --causal` (the rest as quick)",
        ),  # a prefix argparse took; a bare --causal
        (
            {"preset": "smoke", "argv": ["run", "--no-causal", "--causal", "both"]},
            "custom: `--no-causal --causal both` (the rest as smoke)",
        ),
        (
            {"preset": "smoke", "config": "grids/mine.toml", "argv": ["run", "--config", "grids/mine.toml"]},
            "config mine.toml",
        ),
        ({"preset": None, "argv": ["(suite.api.benchmark)"], "grid": {"impls": ["naive"]}}, "custom"),
        ({"amends": "local-inputs errors", "argv": ["local-errors", "r.jsonl"]}, "amendment: local-inputs errors"),
    ],
)
def test_the_environment_names_a_custom_grid_not_the_preset_it_started_from(cpu_results, tmp_path, header, grid):
    from suite.reporting.build import _environment_blocks
    from tests.results_files import rewrite_headers

    path = tmp_path / "custom.jsonl"
    path.write_text(cpu_results.read_text())
    rewrite_headers(path, lambda run: {**{k: v for k, v in run.items() if k not in ("preset", "grid")}, **header})
    _, table = _environment_blocks([path])
    assert table.header[-1] == "grid" and [row[-1] for row in table.rows] == [grid]


def test_the_throttle_mark_is_explained_only_where_rows_were_watched_for_it(cpu_results):
    from suite.reporting.build import _status_paragraph

    frame = prepare(load(cpu_results))
    assert frame.throttled.isna().all() and "†" not in _status_paragraph(frame).text  # a CPU: nothing to throttle
    watched = frame.assign(throttled=False)
    assert "†" not in _status_paragraph(watched).text
    assert "The GPU throttled during none of the cases." in _status_paragraph(watched).text
    watched.loc[watched.index[:2], "throttled"] = True
    assert "† = GPU throttled during the case (2 rows)." in _status_paragraph(watched).text


def test_accuracy_chart_labels_a_short_time_axis_legibly(cpu_results):
    """Matplotlib's own minor labels (3×10⁰, 4×10⁰) ran into each other under a decade of times."""
    from tests.chart_labels import overlapping_tick_labels, shown_tick_labels

    frame = prepare(load(cpu_results))
    case = {"seq_len": 32, "heads": 2, "head_dim": 16, "dtype": "float32", "causal": False, "mode": "fwd"}
    at_case = frame[(frame.seq_len == 32) & (frame.causal == False) & (frame.status == "ok")].copy()  # noqa: E712
    for times in (np.linspace(2.5, 4.5, len(at_case)), np.linspace(2.5, 2.9, len(at_case))):
        fig = charts.accuracy_speed_chart(at_case.assign(time_ms=times), colours(frame.impl), case)
        assert overlapping_tick_labels(fig) == []
        times_shown = [label.get_text() for label in shown_tick_labels(fig.axes[0].xaxis)]
        assert times_shown and not any("10^" in text or "$" in text for text in times_shown)  # plain numbers
        charts.plt.close(fig)


def test_a_difference_map_too_small_to_colour_says_so():
    """An empty panel would read as "not drawn" as well as "no difference"."""
    import implementations
    from suite.reporting.attention_maps import DIFFERENCE_FLOOR, attention_map_chart, map_inputs, too_small_to_see

    wide, narrow = implementations.get("sparse-window", window=256), implementations.get("sparse-window", window=8)
    q, k = map_inputs()
    exact = implementations.get("reference").attention_weights(q, k)[0, 0].numpy()
    assert np.abs(wide.attention_weights(q, k)[0, 0].numpy() - exact).max() < DIFFERENCE_FLOOR
    fig = attention_map_chart([wide, narrow], causal=False)
    wide_panel, narrow_panel = [ax for ax in fig.axes if ax.get_title().endswith("− exact")]
    words = [text.get_text() for text in wide_panel.texts]
    assert len(words) == 1 and f"all |differences| < {DIFFERENCE_FLOOR:g}" in words[0]
    assert len(narrow_panel.texts) == 0  # the window's cut shows in colour
    charts.plt.close(fig)
    assert too_small_to_see(np.zeros((2, 2))) == "no difference:\nthe same weights"


def test_html_shows_code_spans_as_code_that_breaks_at_spaces_and_commas_only(tmp_path):
    """As report.md shows them; a browser would also break a line after a hyphen, splitting --seq-len in two."""
    from suite.reporting.blocks import Paragraph, Report, Table, to_html

    report = Report("r")
    report.add(
        Paragraph("`sdpa (cudnn)` is `sdpa` <forced>"), Table(["grid"], [["custom: `--seq-len 1,2 --impl a-b`"]])
    )
    page = to_html(report, tmp_path)
    assert "`" not in page and "&lt;forced&gt;" in page
    assert "<code><span class='nobr'>sdpa</span> <span class='nobr'>(cudnn)</span></code>" in page
    assert (
        "<td>custom: <code><span class='nobr'>--seq-len</span> <span class='nobr'>1,</span><wbr>"
        "<span class='nobr'>2</span> <span class='nobr'>--impl</span> <span class='nobr'>a-b</span>"
        "</code></td>"
    ) in page
    assert ".nobr{white-space:nowrap}" in page
