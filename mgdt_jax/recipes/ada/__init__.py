"""AdA (Adaptive Agent Team 2023): memory-based meta-RL over XLand-MiniGrid tasks (mgdt_jax.envs.xland):
agents (Transformer-XL, GRU RL²), PPO, kickstarting, an automatic curriculum (curriculum.py), the recipe."""
