"""The correctness check every implementation must pass, as a library rather than only as tests.

Output and input gradients against the float64 exact twin (softmax attention, or an approximate
family's own maths) on seeded standard-normal inputs, at awkward sizes and over several seeds at
one and two tokens, where gradients cancel most. `attnbench check` runs it for any implementation,
including one another package declares; the test suite runs it for the registry.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import torch

import implementations
from implementations import Implementation

from ..case import Case
from ..measure import failures, stop_signals
from .accuracy import WrongOutput, check_output, judge
from .poison import poisoned_allocations
from .workload import packing_arguments, random_tensors

# (batch, heads, seq_len, head_dim, kv_heads): length 1, primes, one past a power of two and a
# length no chunk or block size divides; head dims 16, 64 and 128 (the commonest in models, and its own
# kernel path in most libraries); the last three are grouped-query attention, the last across 128-token
# chunk and block boundaries (3 query heads per key/value head).
AWKWARD_SHAPES = [
    (1, 2, 1, 16, None),
    (3, 2, 17, 64, None),
    (1, 3, 257, 64, None),
    (3, 1, 257, 16, None),
    (1, 2, 64, 64, None),
    (1, 2, 129, 128, None),
    (2, 4, 33, 16, 2),
    (1, 4, 70, 16, 1),
    (1, 6, 300, 16, 2),
]
# (batch, heads, q_len, seq_len, head_dim, kv_heads): fewer queries than keys, the last positions, as in
# decoding against a KV cache: one query, a few (speculative decoding) with grouped heads, and a chunked
# prefill whose 130 queries cross a 128-token chunk or block boundary and start at a position (170) that
# no chunk or block size divides.
DECODING_SHAPES = [(2, 2, 1, 17, 16, None), (1, 4, 5, 257, 64, 2), (1, 2, 130, 300, 32, None)]
SHORT_LENGTHS = (1, 2)
SHORT_LENGTH_SEEDS = range(1000, 1006)
# Logits q·k/√D of this spread (trained models reach tens): an exp taken without subtracting the row's
# maximum overflows even in float32 (the largest of 257 is ~3 spreads), and a stabilizer shared by all
# keys can underflow every key a causal query sees. Outputs and gradients must stay finite there, and in
# float32 agree with the exact twin: a stabilizer, shift or floor handled otherwise than in the twin's maths
# shows only at such logits (FAVOR+'s decoding once rescaled its cached keys' floor with their features:
# its chunked prefill was 24% off here, and right on unit-normal inputs). Half precision is held to
# finiteness alone: there, rounding scores or probabilities costs accuracy at these logits without a wrong
# formula (`naive`'s materialized bfloat16 scores put its key gradients 10% off).
LARGE_LOGIT_STD = 40.0
# (batch, heads, seq_len, head_dim, q_len): a full-length case, and a chunked prefill (see DECODING_SHAPES).
LARGE_LOGIT_SHAPES = [(1, 2, 257, 64, None), (1, 2, 300, 32, 130)]
LARGE_LOGIT_SEED = 4000
# Models hand attention q, k, v as (batch, seq, heads, dim) tensors transposed to (batch, heads, seq, dim):
# not contiguous. A kernel that assumes contiguous strides reads the wrong elements.
TRANSPOSED_SHAPE = (2, 3, 65, 32)
TRANSPOSED_SEED = 5000
TRANSPOSED_NOTE = "with q, k, v and the upstream gradient laid out (batch, seq, heads, dim) in memory"
DECODING_NOTE = (
    "q holds the last {q} of {n} positions: a causal mask must be aligned to the last key; an "
    "implementation that needs as many queries as keys says so in supports() (query_length_reasons)"
)
TENSORS = ("out", "dq", "dk", "dv")
# A relative RMS error from softmax attention at least this large is no rounding (bfloat16's allowance is 3e-2) and
# is what approximations show on the check's inputs (linear attention and Performer tens of percent, a sliding
# window 16% at 300 tokens): an exact-family implementation failing by it may be an undeclared approximation.
APPROXIMATION_SIZED_ERROR = 0.1


@dataclass(frozen=True)
class CheckResult:
    case: Case
    seed: int
    status: str  # "pass", "fail", "unsupported" or "error"
    detail: str = ""  # fail: the worst tensor's error and allowance; unsupported/error: why
    not_bitwise: tuple[str, ...] = ()  # pass: tensors a second call reproduced within tolerance, not bit for bit
    repeated: bool = False  # a second call on the same inputs was compared with the first
    forward_only: bool = False  # checked forward alone because the implementation has no backward here
    twin_rel_rms: float | None = None  # fail against the exact twin: the worst tensor's relative RMS error


def awkward_cases(device: str, dtypes: tuple[str, ...], shapes: list[tuple] | None = None) -> list[Case]:
    """Shapes are (batch, heads, seq_len, head_dim, kv_heads), or with a sixth element, q_len."""
    return [
        Case(batch, heads, seq_len, head_dim, dtype, causal, "fwd+bwd", device, kv_heads, *q_len)
        for batch, heads, seq_len, head_dim, kv_heads, *q_len in (AWKWARD_SHAPES if shapes is None else shapes)
        for dtype in dtypes
        for causal in (False, True)
    ]


def decoding_cases(device: str, dtypes: tuple[str, ...]) -> list[Case]:
    return [
        Case(batch, heads, seq_len, head_dim, dtype, causal, "fwd+bwd", device, kv_heads, q_len)
        for batch, heads, q_len, seq_len, head_dim, kv_heads in DECODING_SHAPES
        for dtype in dtypes
        for causal in (False, True)
    ]


def own_shapes(
    seq_lens: tuple[int, ...] = (),
    head_dims: tuple[int, ...] = (),
    q_lens: tuple[int, ...] = (),
    lengths_named: str = "--seq-len",
) -> list[tuple]:
    """Shapes of a model's own, checked like the awkward ones: each head dim at lengths 17 and 257 (a batch of
    three at 17) and grouped-query at 33; each length at every head dim asked for (64 if none), with
    grouped-query heads too; and each query length against every length asked for (257 if none) the same way.
    Raises ValueError for a query length longer than a length, naming the lengths as `lengths_named`."""
    shapes = [
        shape
        for head_dim in head_dims
        for shape in ((3, 2, 17, head_dim, None), (1, 2, 257, head_dim, None), (2, 4, 33, head_dim, 2))
    ]
    shapes += [
        shape
        for seq_len in seq_lens
        for head_dim in (head_dims or (64,))
        for shape in ((1, 2, seq_len, head_dim, None), (1, 4, seq_len, head_dim, 2))
    ]
    for q_len in q_lens:
        for seq_len in seq_lens or (257,):
            if q_len > seq_len:
                raise ValueError(
                    f"{q_len} exceeds the length {seq_len} (allowed: at most every {lengths_named} "
                    "value, 257 without one: the queries are the last positions)"
                )
            if q_len < seq_len:
                shapes += [
                    shape
                    for head_dim in (head_dims or (64,))
                    for shape in ((1, 2, seq_len, head_dim, None, q_len), (1, 4, seq_len, head_dim, 2, q_len))
                ]
    return list(dict.fromkeys(shapes))


def short_cases(device: str, dtypes: tuple[str, ...]) -> list[Case]:
    return [
        Case(1, 2, seq_len, 16, dtype, causal, "fwd+bwd", device)
        for seq_len in SHORT_LENGTHS
        for dtype in dtypes
        for causal in (False, True)
    ]


def transposed_cases(device: str, dtypes: tuple[str, ...]) -> list[Case]:
    batch, heads, seq_len, head_dim = TRANSPOSED_SHAPE
    return [
        Case(batch, heads, seq_len, head_dim, dtype, causal, "fwd+bwd", device)
        for dtype in dtypes
        for causal in (False, True)
    ]


def large_logit_cases(device: str, dtypes: tuple[str, ...]) -> list[Case]:
    return [
        Case(batch, heads, seq_len, head_dim, dtype, causal, "fwd+bwd", device, None, q_len)
        for batch, heads, seq_len, head_dim, q_len in LARGE_LOGIT_SHAPES
        for dtype in dtypes
        for causal in (False, True)
    ]


def input_seed(case: Case) -> int:
    """The awkward cases' seed: differs between shapes, fixed between runs."""
    return case.seq_len * 7 + case.head_dim + 13 * (case.q_len or 0)


class _WroteIntoInputs(Exception):
    """The implementation changed q, k or v in place: a caller's tensors, and in a run every later
    implementation's inputs."""


def _leaves(case: Case, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Copies of q, k, v to call the implementation with (so that a write into them is seen), requiring grad
    where the mode has a backward."""
    return [t.clone().requires_grad_(case.mode != "fwd") for t in inputs[:3]]


def _call(
    impl: Implementation, case: Case, inputs: tuple[torch.Tensor, ...], leaves: list[torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """One forward (and backward) on `leaves` (fresh ones if none), in poisoned memory: an element left unwritten
    must fail."""
    q, k, v, grad_out = inputs
    with_grad = case.mode != "fwd"
    leaves = _leaves(case, inputs) if leaves is None else leaves
    with poisoned_allocations(case.device):
        with torch.set_grad_enabled(with_grad):
            out = impl(*leaves, causal=case.causal, **packing_arguments(impl, case))
        check_output(out, q)
        grads = torch.autograd.grad(out, leaves, grad_out) if with_grad else ()
    changed = [name for name, leaf, given in zip("qkv", leaves, (q, k, v)) if not torch.equal(leaf.detach(), given)]
    if changed:
        raise _WroteIntoInputs(f"it wrote into its inputs: {', '.join(changed)} changed during the call")
    return {name: t.detach() for name, t in zip(TENSORS, (out, *grads))}


def _called(
    impl: Implementation,
    case: Case,
    seed: int,
    inputs: tuple[torch.Tensor, ...],
    leaves: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor] | CheckResult:
    """The implementation's outputs and gradients, or the result that ends the case (refused, crashed, or an
    output of the wrong shape)."""
    reasons = impl.supports(case)
    if reasons:
        return CheckResult(case, seed, "unsupported", "; ".join(reasons))
    try:
        return _call(impl, case, inputs, leaves)
    except (WrongOutput, _WroteIntoInputs) as wrong:
        return CheckResult(case, seed, "fail", str(wrong))
    except implementations.Unsupported as unsupported:
        return CheckResult(case, seed, "unsupported", f"refused at run time: {unsupported}")
    except BaseException as error:  # noqa: BLE001 - a crash is a finding (SystemExit too), but Ctrl-C a stop
        stop_signals.raise_if_stop(error)
        return CheckResult(case, seed, "error", _described(error))


def _seq_major(t: torch.Tensor) -> torch.Tensor:
    """The same values, laid out (batch, seq, heads, dim) in memory and viewed as (batch, heads, seq, dim)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def check_case(impl: Implementation, case: Case, seed: int, transposed: bool = False) -> CheckResult:
    """One case: forward (and, unless the mode is "fwd", backward) of `impl` and of its exact twin on the
    same inputs; then `impl` once more on them, which must agree with its first call within the dtype's
    tolerance (a race, or a read of memory nothing wrote, moves the result between calls). `transposed`:
    q, k, v and the upstream gradient are non-contiguous views, as a model passes them."""
    q, k, v, grad_out = random_tensors(case, seed)
    if not transposed:
        result = _against_twin(impl, case, seed, (q, k, v, grad_out))
        note = DECODING_NOTE.format(q=case.q_len, n=case.seq_len) if case.q_len else None
    else:
        # The upstream gradient too: a model's output projection hands it back through the same transpose.
        result = _against_twin(impl, case, seed, (_seq_major(q), _seq_major(k), _seq_major(v), _seq_major(grad_out)))
        note = TRANSPOSED_NOTE
    return replace(result, detail=f"{note}: {result.detail}") if note and result.status in ("fail", "error") else result


def _against_twin(impl: Implementation, case: Case, seed: int, inputs: tuple[torch.Tensor, ...]) -> CheckResult:
    leaves = _leaves(case, inputs)
    actual = _called(impl, case, seed, inputs, leaves)
    if isinstance(actual, CheckResult):
        return actual
    return _twin_disagrees(impl, case, seed, inputs, actual) or _repeated(impl, case, seed, inputs, leaves, actual)


def _twin_disagrees(
    impl: Implementation, case: Case, seed: int, inputs: tuple[torch.Tensor, ...], actual: dict[str, torch.Tensor]
) -> CheckResult | None:
    """The failing (or crashed) result where `actual` is beyond the tolerance of the exact twin on the same inputs;
    None where it agrees."""
    with_grad = case.mode != "fwd"
    q, k, v, grad_out = inputs
    exact = [t.detach().clone().requires_grad_(with_grad) for t in (q, k, v)]
    try:
        expected_out = impl.exact_twin(*exact, causal=case.causal, **packing_arguments(impl.exact_twin, case))
        expected_grads = torch.autograd.grad(expected_out, exact, grad_out.double()) if with_grad else ()
    except BaseException as error:  # noqa: BLE001 - an implementation's own twin can be broken too
        stop_signals.raise_if_stop(error)
        return CheckResult(case, seed, "error", f"exact_twin: {_described(error)}")
    expected = dict(zip(TENSORS, (expected_out, *expected_grads)))
    verdict = judge(actual, expected, case.dtype, case.seq_len, impl.atol_scale_for(case))
    if verdict.ok:
        return None
    return CheckResult(case, seed, "fail", verdict.reason() or "", twin_rel_rms=verdict.worst[1].rel_rms)


def check_large_logits(impl: Implementation, case: Case, seed: int) -> CheckResult:
    """Queries and keys scaled so that the logits spread LARGE_LOGIT_STD: every output and gradient finite, and
    in float32 within the tolerance of the exact twin."""
    q, k, v, grad_out = random_tensors(case, seed)
    scale = LARGE_LOGIT_STD**0.5  # q·k/√D of unit-normal q, k has spread 1; each factor scales it
    inputs = ((q.float() * scale).to(q.dtype), (k.float() * scale).to(k.dtype), v, grad_out)
    actual = _called(impl, case, seed, inputs)
    if isinstance(actual, CheckResult):
        return actual
    broken = [
        f"{name} has {int((~torch.isfinite(t)).sum())} of {t.numel()} values NaN or infinite"
        for name, t in actual.items()
        if not torch.isfinite(t).all()
    ]
    if broken:
        why = f"at logits of spread {LARGE_LOGIT_STD:g} (an exp that overflows, or features that all underflow)"
        return CheckResult(case, seed, "fail", f"{why}: {'; '.join(broken)}")
    disagrees = _twin_disagrees(impl, case, seed, inputs, actual) if case.dtype == "float32" else None
    if disagrees:
        why = f"at logits of spread {LARGE_LOGIT_STD:g}, in float32, against the exact twin"
        return replace(disagrees, detail=f"{why}: {disagrees.detail}")
    return CheckResult(case, seed, "pass")


def _repeated(
    impl: Implementation,
    case: Case,
    seed: int,
    inputs: tuple[torch.Tensor, ...],
    leaves: list[torch.Tensor],
    first: dict[str, torch.Tensor],
) -> CheckResult:
    """The passing first call, made as a program calls it alone, against a second one on the same tensors, made
    inside the implementation's session as `attnbench run` makes its timed calls: both ways are checked, and
    what an implementation keeps of its inputs from call to call (a carried decoding state) is used."""
    try:
        with impl.session():
            again = _call(impl, case, inputs, leaves)
    except BaseException as error:  # noqa: BLE001 - a crash on the second call is a finding too
        stop_signals.raise_if_stop(error)
        return CheckResult(case, seed, "error", f"second call: {_described(error)}")
    verdict = judge(again, first, case.dtype, case.seq_len, impl.atol_scale_for(case))
    if not verdict.ok:
        return CheckResult(
            case,
            seed,
            "fail",
            f"a second call on the same inputs, inside the implementation's "
            f"session, differs from the first beyond the tolerance (a race, memory "
            f"read before it is written, or a session that changes the result): "
            f"{verdict.reason()}",
        )
    # Within tolerance but not bit for bit: atomic accumulation (common in backward kernels), not a bug.
    moved = tuple(name for name in first if not torch.equal(first[name], again[name]))
    return CheckResult(case, seed, "pass", not_bitwise=moved, repeated=True)


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:500]}{stop_signals.not_a_stop_note(error)}"


def _forward_only_if_need_be(impl: Implementation, case: Case) -> Case:
    """An inference kernel without a backward is still checked forward, rather than not at all."""
    if impl.supports(case):
        forward = replace(case, mode="fwd")
        if not impl.supports(forward):
            return forward
    return case


def check(
    impl: Implementation,
    device: str,
    dtypes: tuple[str, ...],
    seed: int = 0,
    extra_shapes: list[tuple] = (),
    starting: Callable[[Case, int], None] | None = None,
) -> Iterator[CheckResult]:
    """Every awkward case once (and `extra_shapes`, see own_shapes, the same way, and the decoding cases), then every
    short case for each of several seeds; forward and gradients, or the forward alone where the implementation
    supports only that.
    `seed` shifts every input seed, for other inputs than the default ones. `starting(case, seed)` is told of
    each case before it runs (a crash that ends the process then names its case)."""

    def checked(run: Callable[..., CheckResult], case: Case, case_seed: int, **options) -> CheckResult:
        forward = _forward_only_if_need_be(impl, case)
        if starting:
            starting(forward, case_seed)
        result = run(impl, forward, case_seed, **options)
        return replace(result, forward_only=True) if forward.mode != case.mode else result

    for case in [*awkward_cases(device, dtypes, [*AWKWARD_SHAPES, *extra_shapes]), *decoding_cases(device, dtypes)]:
        result = checked(check_case, case, input_seed(case) + seed)
        yield result
        if not result.forward_only:  # the inference path too: without autograd some libraries dispatch another kernel
            yield checked(check_case, replace(case, mode="fwd"), input_seed(case) + seed)
    for short_seed in SHORT_LENGTH_SEEDS:
        for case in short_cases(device, dtypes):
            yield checked(check_case, case, short_seed + seed)
    for case in transposed_cases(device, dtypes):
        yield checked(check_case, case, TRANSPOSED_SEED + seed, transposed=True)
    for case in large_logit_cases(device, dtypes):
        yield checked(check_large_logits, case, LARGE_LOGIT_SEED + seed)


@dataclass
class CheckSummary:
    """One implementation's results, counted, with what a reader needs to act on."""

    label: str
    results: list[CheckResult]
    seconds: float = 0.0
    family: str = "exact"  # the implementation's (implementations.base.FAMILIES)

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results)

    @property
    def checked(self) -> int:
        return len(self.results) - self.count("unsupported")

    @property
    def ok(self) -> bool:
        """Ran at least one case, and failed or crashed on none."""
        return self.checked > 0 and self.count("fail") == self.count("error") == 0

    def as_record(self) -> dict:
        """For `check --json`: the counts, and every case with its result."""
        return {
            "impl": self.label,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "counts": {status: self.count(status) for status in ("pass", "fail", "error", "unsupported")},
            "results": [
                {
                    **asdict(r.case),
                    "seed": r.seed,
                    "status": r.status,
                    "detail": r.detail,
                    "not_bitwise": list(r.not_bitwise),
                    "forward_only": r.forward_only,
                }
                for r in self.results
            ],
        }

    def format(self, max_findings: int = 20) -> str:
        counts = ", ".join(
            f"{self.count(status)} {word}"
            for status, word in (
                ("pass", "passed"),
                ("fail", "failed"),
                ("error", "errors"),
                ("unsupported", "unsupported"),
            )
        )
        forward_only = sum(r.forward_only and r.status != "unsupported" for r in self.results)
        if forward_only:
            counts += f"; {forward_only} forward only, no backward supported"
        verdict = "ok" if self.ok else ("NOT CHECKED" if self.checked == 0 else "FAILED")
        lines = [f"{self.label}: {verdict} ({counts}; {self.seconds:.1f} s)"]
        moved = Counter(name for r in self.results for name in r.not_bitwise)
        if moved:  # not a failure: kernels that accumulate with atomics (many backward passes) vary in the last bits
            tensors = ", ".join(
                f"{name} in {count}" for name, count in sorted(moved.items(), key=lambda i: TENSORS.index(i[0]))
            )
            repeated = sum(r.repeated for r in self.results)
            lines.append(
                f"  note: a second call on the same inputs agreed within tolerance but not bit for bit "
                f"({tensors} of {repeated} passing cases): accumulation order varies between calls"
            )
        if note := self._undeclared_approximation_note():
            lines.append(note)
        findings = [r for r in self.results if r.status in ("fail", "error")]
        for result in findings[:max_findings]:
            lines.append(f"  {result.status.upper():<5} {result.case.label} seed {result.seed}: {result.detail}")
        if len(findings) > max_findings:
            lines.append(f"  ... and {len(findings) - max_findings} more")
        reasons = sorted({r.detail for r in self.results if r.status == "unsupported"})
        for reason in reasons[:3]:
            lines.append(f"  unsupported: {reason}")
        if len(reasons) > 3:
            lines.append(f"  ... and {len(reasons) - 3} more reasons")
        return "\n".join(lines)

    def _undeclared_approximation_note(self) -> str | None:
        """For an exact-family implementation that failed against softmax attention by an approximation's error."""
        errors = [r.twin_rel_rms for r in self.results if r.twin_rel_rms is not None and math.isfinite(r.twin_rel_rms)]
        if self.family != "exact" or max(errors, default=0.0) < APPROXIMATION_SIZED_ERROR:
            return None
        return (
            f"  note: errors this large (up to {max(errors):.0%} relative RMS) are no rounding: an approximation "
            f"of softmax attention must declare its family and its exact twin, to be checked against its own maths "
            f"(as_implementation(..., family=..., exact_twin=...), or `family` and `exact_twin` on an "
            f"Implementation subclass); exact attention this far off is wrong"
        )


def default_check_dtypes(device: str) -> str:
    """Every dtype a GPU kernel is used at; on a CPU, float16 (rarely used there, and slow) is left out."""
    return "float16,bfloat16,float32" if device == "cuda" else "float32,bfloat16"


def checked(
    impl: Implementation,
    device: str,
    dtypes: tuple[str, ...],
    seed: int = 0,
    own: list[tuple] = (),
    starting: Callable[[Case, int], None] | None = None,
    moving: Callable[[str, int, float], None] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> tuple[CheckSummary, bool]:
    """One implementation's conformance check, summed up, and whether it left the device unusable (a sticky CUDA
    error: every later case would crash too, whatever its implementation, so the check stops there). `moving`
    is told (label, cases done, seconds) every 10 s: compiled kernels can take minutes; `on_result` is given each
    case's result as it comes."""
    with stop_signals.stop_signals_recorded():
        return _checked(impl, device, dtypes, seed, own, starting, moving, on_result)


def _checked(
    impl: Implementation,
    device: str,
    dtypes: tuple[str, ...],
    seed: int,
    own: list[tuple],
    starting: Callable[[Case, int], None] | None,
    moving: Callable[[str, int, float], None] | None,
    on_result: Callable[[CheckResult], None] | None,
) -> tuple[CheckSummary, bool]:
    started = last_note = time.perf_counter()
    results, device_lost = [], False
    for result in check(impl, device, dtypes, seed, own, starting):
        if (stop := stop_signals.stop_asked()) is not None:  # the implementation swallowed Ctrl-C: stop all the same
            raise stop
        results.append(result)
        if on_result:
            on_result(result)
        device_lost = result.status == "error" and not failures.device_usable(device)
        if device_lost:
            break
        if moving and time.perf_counter() - last_note > 10:
            last_note = time.perf_counter()
            moving(impl.label, len(results), last_note - started)
    return CheckSummary(impl.label, results, time.perf_counter() - started, impl.family), device_lost
