"""What a run would do, before it spends device time (`attnbench run --dry-run`).

Per implementation: the rows it would measure, those it would record as unsupported here (with
why), and those a resumed results file already holds. Nothing is measured or written.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from implementations import Implementation

from .case import Case
from .runner import row_key

_REASON_CHARS = 160  # an unsupported reason is shortened to this in the plan; the real row keeps it whole


@dataclass
class ImplementationPlan:
    label: str
    to_measure: int = 0
    already_done: int = 0
    unsupported_cases: int = 0
    unsupported: Counter = field(default_factory=Counter)  # each reason -> the cases it applies to


def plan_run(impls: list[Implementation], cases: list[Case], skip: set[tuple]) -> list[ImplementationPlan]:
    plans = []
    for impl in impls:
        plan = ImplementationPlan(impl.label)
        for case in cases:
            if row_key(impl.label, case) in skip:
                plan.already_done += 1
                continue
            try:
                reasons = impl.supports(case)
            except Exception as error:  # noqa: BLE001 - the run itself would record this as the case's row
                reasons = [f"supports() raised {type(error).__name__}: {error}"]
            if reasons:
                plan.unsupported_cases += 1
                plan.unsupported.update(reasons)
            else:
                plan.to_measure += 1
        plans.append(plan)
    return plans


def _shorten(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."


def format_plan(plans: list[ImplementationPlan], cases: list[Case], device: str) -> str:
    width = max([len("implementation"), *(len(plan.label) for plan in plans)])
    lines = [f"dry run on {device}: {len(plans)} implementations x {len(cases)} cases; nothing measured or written",
             f"{'implementation':<{width}}  {'measure':>8}  {'unsupported':>11}  {'already in file':>15}"]
    for plan in plans:
        lines.append(f"{plan.label:<{width}}  {plan.to_measure:>8}  {plan.unsupported_cases:>11}  "
                     f"{plan.already_done:>15}")
    totals = [sum(plan.to_measure for plan in plans), sum(plan.unsupported_cases for plan in plans),
              sum(plan.already_done for plan in plans)]
    lines.append(f"{'total':<{width}}  {totals[0]:>8}  {totals[1]:>11}  {totals[2]:>15}")
    unsupported = [(plan.label, reason, count) for plan in plans for reason, count in plan.unsupported.most_common()]
    if unsupported:
        lines.append("why not here (a case may have several reasons; its row records them all):")
        lines += [f"  {label} ({count}): {_shorten(reason)}" for label, reason, count in unsupported]
    return "\n".join(lines)
