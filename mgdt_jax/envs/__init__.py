"""Environments, apart from the agents that play them."""
