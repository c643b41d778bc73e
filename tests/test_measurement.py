"""Statistics of the measurement object, the peak-memory measurement and the FLOP formula."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from implementations import Implementation
from implementations.flops import MODE_FACTOR, softmax_attention_flops
from suite.case import Case
from suite.measure.memory import peak_call_memory, running_peak
from suite.measure.settings import TimingPolicy
from suite.measure.timing import Measurement, RunningMedianInterval, measure


def test_median_and_iqr_from_raw_times():
    m = Measurement([1.0, 2.0, 3.0, 4.0, 100.0])
    assert m.median == 3.0 and m.repeats == 5
    assert m.iqr == pytest.approx(2.0)
    lo, hi = m.median_ci()
    assert lo <= m.median <= hi


def test_tight_median_stops_early_and_noise_does_not():
    assert Measurement([1.0] * 20).median_is_tight(0.01)
    assert not Measurement([1.0, 2.0] * 10).median_is_tight(0.01)


def test_measure_respects_repeat_bounds_and_runs_setup_outside():
    calls = []
    policy = TimingPolicy(warmup_calls=2, min_repeats=4, max_repeats=6, budget_s=10.0, target_relative_ci=0.0)
    result = measure(
        lambda: calls.append("call"), torch.device("cpu"), policy, before_each=lambda: calls.append("setup")
    )
    assert result.repeats == 6
    assert calls.count("call") == 2 + 6 and calls.count("setup") == 2 + 6
    assert all(t >= 0 for t in result.times_ms)


def test_the_timer_measures_a_call_of_known_length_and_leaves_the_setup_out(monkeypatch):
    """A call that takes 2 ms is measured at 2 ms, not less (a clock read after the call returned) and not more
    (the set-up before each call, which takes 3 ms, must stay outside). The clock is a fake one that only the call
    and the set-up advance, so that a loaded machine cannot change what is measured."""
    from types import SimpleNamespace

    from suite.measure import timing

    now = [0.0]

    def takes(ms: float):
        return lambda: now.__setitem__(0, now[0] + ms / 1e3)

    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    policy = TimingPolicy(warmup_calls=1, min_repeats=15, max_repeats=15, budget_s=10.0)
    result = measure(takes(2.0), torch.device("cpu"), policy, before_each=takes(3.0))
    assert result.repeats == 15 and result.times_ms == pytest.approx([2.0] * 15)
    assert now[0] == pytest.approx(16 * (2.0 + 3.0) / 1e3)  # the warm-up call and its set-up too


def test_running_peak_follows_allocations_and_frees_in_order():
    assert running_peak([]) == 0
    assert running_peak([100, -100, 50, 30, -80]) == 100
    assert running_peak([10, 20, -20, 40]) == 50


def test_cpu_peak_memory_sees_materialized_scores_and_fused_kernels_avoid_them(capfd):
    q = torch.randn(2, 3, 300, 64)
    cpu = torch.device("cpu")
    scores_bytes = 2 * 3 * 300 * 300 * 4  # one float32 (batch, heads, N, N) tensor
    naive, reason = peak_call_memory(lambda: (q @ q.transpose(-1, -2)).softmax(-1) @ q, cpu)
    assert reason is None and 2 * scores_bytes <= naive < 3 * scores_bytes  # scores and weights, both held at once
    fused, _ = peak_call_memory(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), cpu)
    assert q.nelement() * 4 <= fused < scores_bytes  # the output, not the N x N scores
    assert "profiler" not in capfd.readouterr().err  # the profiler's own start/stop lines stay out of the run's output


def test_cpu_peak_memory_leaves_a_running_profiler_alone_and_says_why():
    with torch.profiler.profile() as outer:
        peak, reason = peak_call_memory(lambda: torch.ones(1000) * 2, torch.device("cpu"))
        torch.ones(10).sum()
    assert peak is None and "another profiler" in reason
    assert any(event.name == "aten::sum" for event in outer.events())


def test_a_profiler_failure_costs_the_memory_figure_only_and_never_hides_the_calls_own_error(monkeypatch):
    import suite.measure.memory

    def broken_stop(profiler) -> None:
        profiler.__exit__(None, None, None)
        raise RuntimeError("kineto: trace buffer lost")

    monkeypatch.setattr(suite.measure.memory, "stop_quietly", broken_stop)
    peak, reason = peak_call_memory(lambda: torch.ones(100) * 2, torch.device("cpu"))
    assert peak is None and "could not be read" in reason and "trace buffer lost" in reason

    def failing_call():
        raise torch.OutOfMemoryError("out of memory in the call")

    with pytest.raises(torch.OutOfMemoryError, match="in the call"):
        peak_call_memory(failing_call, torch.device("cpu"))
    assert not torch.autograd._profiler_enabled()


def test_visible_pairs_and_flops():
    impl = Implementation("x")
    assert impl.visible_pairs(Case(1, 1, 4, 16, "float32", False, "fwd", "cpu")) == 16
    assert impl.visible_pairs(Case(1, 1, 4, 16, "float32", True, "fwd", "cpu")) == 10  # 1 + 2 + 3 + 4
    assert softmax_attention_flops(2, 3, 16, 8) == 4 * 2 * 3 * 16 * 8
    assert impl.forward_flops(Case(2, 3, 4, 8, "float32", True, "fwd", "cpu")) == 4 * 2 * 3 * 10 * 8
    assert MODE_FACTOR == {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def test_the_linear_families_count_their_key_side_per_key_value_head():
    """S = Σφ(k)vᵀ and the keys' random projections belong to the key/value heads: with 8 query heads sharing 2, a
    linear row counts the keys 2 times, not 8, and the queries 8 times; softmax attention counts every query head."""
    import implementations
    from suite.case import Case
    from suite.measure.flops import case_flops

    grouped, plain = (Case(2, 8, 64, 16, "float32", True, "fwd", "cpu", kv_heads) for kv_heads in (2, None))
    rows = lambda kv: kv * 64 + 8 * 64  # noqa: E731 - keys per key/value head, queries per query head
    assert case_flops(implementations.get("linear"), grouped) == 2 * 2 * rows(2) * 16 * 17
    assert case_flops(implementations.get("linear"), plain) == 2 * 2 * rows(8) * 16 * 17
    performer = implementations.get("performer", features=32)
    assert case_flops(performer, grouped) == 2 * 2 * rows(2) * (16 * 32 + 32 * 17)
    assert case_flops(implementations.get("naive"), grouped) == case_flops(implementations.get("naive"), plain)


def test_a_call_is_host_bound_when_issuing_it_took_as_long_as_the_gpu_ran_it():
    from suite.run.runner import host_figures

    assert host_figures(Measurement(times_ms=[1.0, 1.1, 0.9], host_ms=[1.2, 1.0, 1.3])) == {
        "host_ms": 1.2,
        "host_bound": True,
    }
    assert host_figures(Measurement(times_ms=[1.0, 1.1, 0.9], host_ms=[0.02, 0.03, 0.02])) == {
        "host_ms": 0.02,
        "host_bound": False,
    }
    # the GPU waited for the host, then ran its last kernel: timed a little longer than the issuing
    assert host_figures(Measurement(times_ms=[0.050], host_ms=[0.046]))["host_bound"] is True
    assert host_figures(Measurement(times_ms=[0.050], host_ms=[0.040]))["host_bound"] is False
    # on a CPU the host is the device: nothing to say
    assert host_figures(Measurement(times_ms=[1.0])) == {"host_ms": None, "host_bound": None}


def _recorded_sequences() -> dict[str, list[float]]:
    """Timings as runs produce them: log-normal noise, a second mode (a clock change), ties (a coarse clock),
    drifts up and down, and a constant."""
    rng = random.Random(29)
    noise = [rng.lognormvariate(0, 0.05) for _ in range(700)]
    return {
        "log-normal": noise,
        "two modes": [t * (1.3 if rng.random() < 0.2 else 1.0) for t in noise],
        "ties": [round(t, 2) for t in noise],
        "rising": sorted(noise),
        "falling": sorted(noise, reverse=True),
        "constant": [0.08] * 300,
    }


@pytest.mark.parametrize("name", sorted(_recorded_sequences()))
def test_the_running_stopping_rule_decides_as_sorting_every_repeat_did(name):
    samples = _recorded_sequences()[name]
    running = RunningMedianInterval()
    for n, sample in enumerate(samples, 1):
        running.add(sample)
        whole = Measurement(samples[:n])
        assert (running.median, running.interval()) == (whole.median, whole.median_ci()), n
        for relative in (0.0, 0.005, 0.01, 0.02, 0.05):
            assert running.is_tight(relative) == whole.median_is_tight(relative), (n, relative)


class _Counted(float):
    """A time whose comparisons are counted; arithmetic on it stays counted, as the timing loop's does."""

    comparisons = 0
    limit = math.inf

    def _count(self, other, compare):
        _Counted.comparisons += 1
        if _Counted.comparisons > _Counted.limit:
            raise AssertionError(f"more than {_Counted.limit} comparisons")
        return compare(float(self), float(other))

    def __lt__(self, other):
        return self._count(other, float.__lt__)

    def __le__(self, other):
        return self._count(other, float.__le__)

    def __gt__(self, other):
        return self._count(other, float.__gt__)

    def __ge__(self, other):
        return self._count(other, float.__ge__)

    def __sub__(self, other):
        return _Counted(float(self) - float(other))

    def __mul__(self, other):
        return _Counted(float(self) * float(other))

    __rmul__ = __mul__

    def __truediv__(self, other):
        return _Counted(float(self) / float(other))

    def __neg__(self):
        return _Counted(-float(self))


def _comparisons_timing(repeats: int, monkeypatch) -> int:
    """Comparisons between times that measure() makes over `repeats` timed calls whose times never tighten."""
    from suite.measure import timing

    rng, now = random.Random(repeats), [0.0, True]

    def perf_counter() -> _Counted:  # a call's start, then its end, a noisy 1 ms later
        now[1] = not now[1]
        now[0] += rng.uniform(0.5e-3, 1.5e-3) if now[1] else 0.0
        return _Counted(now[0])

    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=perf_counter))
    policy = TimingPolicy(warmup_calls=0, min_repeats=2, max_repeats=repeats, budget_s=1e9, target_relative_ci=0.0)
    _Counted.comparisons, _Counted.limit = 0, repeats * repeats / 8  # well below sorting at every repeat
    assert measure(lambda: None, torch.device("cpu"), policy).repeats == repeats
    return _Counted.comparisons


def test_the_stopping_rule_costs_n_log_n_comparisons_not_a_sort_per_repeat(monkeypatch):
    """`--timing max_repeats=1000000` on a fast kernel: each repeat must cost about log n comparisons, so that four
    times the repeats cost about four times the comparisons (sorting at every repeat: sixteen times)."""
    fewer, more = (_comparisons_timing(repeats, monkeypatch) for repeats in (1000, 4000))
    assert more / fewer < 4 * math.log(4000) / math.log(1000) * 1.25
