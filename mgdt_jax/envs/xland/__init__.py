"""XLand-MiniGrid tasks for meta-RL (AdA): benchmarks generated here (generator.py), loaded as
`xminigrid.load_benchmark_from_path` loads them but through a restricted unpickler, and episodes of
k trials of one task (trials.py).

Needs the `ada` extra (xminigrid). Nothing here downloads anything.
"""
