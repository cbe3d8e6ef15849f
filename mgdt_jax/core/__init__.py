"""The agent-agnostic core: decoder, sharding, train step and loop, optimizer, checkpoints, metrics, the recipe interface."""
