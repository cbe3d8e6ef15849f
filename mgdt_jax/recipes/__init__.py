"""Recipes: each agent's model, tokens, data and evaluation over the shared core."""
