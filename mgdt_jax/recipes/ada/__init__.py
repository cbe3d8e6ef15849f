"""AdA-style memory-based meta-RL: agents (Transformer-XL, GRU RL²), PPO, kickstarting, the recipe."""
