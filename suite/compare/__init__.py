"""Reading results against each other: regressions between runs, their views and chart, recommendations."""
