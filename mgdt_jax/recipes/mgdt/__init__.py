"""The Multi-Game Decision Transformer recipe (Lee et al. 2022)."""
