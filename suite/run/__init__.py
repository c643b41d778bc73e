"""Running a grid: cases and presets, flags and grid files, the plan, the runner, progress and stopping."""
