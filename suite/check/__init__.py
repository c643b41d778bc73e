"""Correctness: float64 expectations, accuracy allowances, checked slices, poisoned memory, the conformance check."""
