"""Measuring one call: timing, memory, FLOPs and traffic, CUDA graphs, energy, peaks, GPU state, profiles; and
which failures are a row's, which stop the run."""
