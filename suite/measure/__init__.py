"""Measuring one call: timing, memory, FLOPs and traffic, CUDA graphs, energy, peaks, GPU state, profiles."""
