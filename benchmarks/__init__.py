"""Speed and memory benchmarks: each script prints its figures and ratios against a baseline measured
in the same run (docs/performance.md)."""
