"""JAT (Gallouédec et al. 2024, "Jack of All Trades, Master of Some", arXiv 2402.09844)."""
