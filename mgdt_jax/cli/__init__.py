"""Thin command-line entry points; the work is in the core and the recipes. Every command's Ctrl-C
handling is mgdt_jax/core/commands.py; what the evaluation CLIs share (their ``--out``) is out_dir.py.

Nothing is imported here: the console scripts (scripts.py) import this package before their Ctrl-C
handling is in place, so an import of JAX here made an early Ctrl-C a traceback.
"""
