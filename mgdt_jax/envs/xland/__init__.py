"""XLand-MiniGrid tasks for meta-RL (AdA): benchmarks generated here (generator.py), loaded with
`xminigrid.load_benchmark_from_path`, and episodes of k trials of one task (trials.py).

Needs the `ada` extra (xminigrid). Nothing here downloads anything.
"""
