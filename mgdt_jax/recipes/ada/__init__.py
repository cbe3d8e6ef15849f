"""AdA (Adaptive Agent Team 2023): memory-based meta-RL over XLand-MiniGrid tasks
(mgdt_jax.envs.xland), with an automatic curriculum (curriculum.py)."""
