"""Recipes: one package per agent (model, tokens, data, policy, evaluation) over the agent-agnostic core.

``config.recipe = "<name>"`` trains ``mgdt_jax.recipes.<name>.recipe.RECIPE`` (see mgdt_jax/core/recipe.py).
"""
