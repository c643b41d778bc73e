"""From result files to a report: markdown tables, PNG charts and one self-contained HTML page."""

from .build import build_report

__all__ = ["build_report"]
